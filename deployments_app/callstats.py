"""Prediction figures over a time window: rollups for what is folded, raw rows for the rest.

`deployments_app.rollups` folds the prediction log into minute, hour and day rollups up to
a watermark. A window [since, now) is read as: raw rows of the partial minute at its start,
the fewest rollups that tile the folded part (days where whole days fit, then hours, then
minutes), and raw rows from the watermark on. So a page reads a few hundred rollups plus a
minute or two of raw rows, whatever the history, and its numbers equal a count over the raw
rows. Before the first fold everything is read raw.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Q

from deployments_app.models import PredictionLog, PredictionRollup, PredictionRollupState
from portal import latency

ERROR_STATUS = 400
SERVER_ERROR_STATUS = 500
# (seconds, resolution), largest first.
LEVELS = ((86400, "day"), (3600, "hour"), (60, "minute"))


def floor_to(moment: datetime, seconds: int) -> datetime:
    epoch = int(moment.timestamp()) // seconds * seconds
    return datetime.fromtimestamp(epoch, tz=UTC)


def ceil_to(moment: datetime, seconds: int) -> datetime:
    low = floor_to(moment, seconds)
    return low if low == moment else low + timedelta(seconds=seconds)


@dataclass
class Totals:
    """Figures of one group, added up from raw rows or rollups."""

    requests: int = 0
    errors_4xx: int = 0
    errors_5xx: int = 0
    rows: int = 0
    input_bytes: int = 0
    latency_ms_sum: float = 0.0
    histogram: dict[int, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return self.errors_4xx + self.errors_5xx

    def add(self, other: Any) -> None:
        self.requests += other.requests
        self.errors_4xx += other.errors_4xx
        self.errors_5xx += other.errors_5xx
        self.rows += other.rows
        self.input_bytes += other.input_bytes
        self.latency_ms_sum += other.latency_ms_sum
        latency.merge(self.histogram, other.histogram)


def raw_totals(
    *,
    ranges: list[tuple[datetime, datetime | None]],
    group_sql: str,
    deployment_name: str | None = None,
) -> dict[Any, Totals]:
    """Raw log rows with created_at in any of `ranges` ([start, end), end None: open),
    added up per `group_sql` (an SQL expression over the log table) in one query."""
    if not ranges:
        return {}
    adapt = connection.ops.adapt_datetimefield_value
    conditions, params = [], []
    for start, end in ranges:
        if end is None:
            conditions.append("created_at >= %s")
            params.append(adapt(start))
        else:
            conditions.append("(created_at >= %s AND created_at < %s)")
            params += [adapt(start), adapt(end)]
    where = "(" + " OR ".join(conditions) + ")"
    if deployment_name:
        where += " AND deployment_name = %s"
        params.append(deployment_name)
    table = connection.ops.quote_name(PredictionLog._meta.db_table)
    bucket = latency.bucket_sql(connection.vendor)
    # Only constants and a quoted table name are interpolated; values travel as parameters.
    sql = (
        f"SELECT {group_sql} AS g, {bucket} AS lb, COUNT(*), "  # noqa: S608
        f"SUM(CASE WHEN status_code >= {ERROR_STATUS} AND status_code < "
        f"{SERVER_ERROR_STATUS} THEN 1 ELSE 0 END), "
        f"SUM(CASE WHEN status_code >= {SERVER_ERROR_STATUS} THEN 1 ELSE 0 END), "
        f"SUM(rows), SUM(input_bytes), SUM(latency_ms) "
        f"FROM {table} WHERE {where} GROUP BY g, lb"
    )
    out: dict[Any, Totals] = defaultdict(Totals)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for g, lb, n, e4, e5, rows, size, lat in cursor.fetchall():
            t = out[g]
            t.requests += int(n)
            t.errors_4xx += int(e4 or 0)
            t.errors_5xx += int(e5 or 0)
            t.rows += int(rows or 0)
            t.input_bytes += int(size or 0)
            t.latency_ms_sum += float(lat or 0.0)
            t.histogram[int(lb)] = t.histogram.get(int(lb), 0) + int(n)
    return dict(out)


def tiles(
    start: datetime, end: datetime, *, largest: int, at_watermark: bool = False
) -> dict[str, list[tuple[int, int]]]:
    """The fewest rollups of at most `largest` seconds that tile [start, end) (both on
    minute bounds), as epoch ranges per resolution.

    With `at_watermark` (end is the fold's watermark) the last tile may run past `end`: the
    hour and day rollups that hold the watermark count exactly the minutes before it, since
    the fold rebuilds them from minute rollups, which exist only below the watermark."""
    out: dict[str, list[tuple[int, int]]] = {}
    t, stop = int(start.timestamp()), int(end.timestamp())
    while t < stop:
        # A minute always fits: both ends are on minute bounds.
        seconds, name = next(
            (s, n)
            for s, n in LEVELS
            if s <= largest and t % s == 0 and (t + s <= stop or at_watermark)
        )
        spans = out.setdefault(name, [])
        if spans and spans[-1][1] == t:
            spans[-1] = (spans[-1][0], t + seconds)
        else:
            spans.append((t, t + seconds))
        t += seconds
    return out


def _folded_until() -> datetime | None:
    return PredictionRollupState.objects.filter(pk=1).values_list("folded_until", flat=True).first()


def window_totals(
    *,
    since: datetime,
    now: datetime,
    deployment_name: str | None,
    raw_group_sql: str,
    rollup_key: Callable[[datetime, str, int | None], Any],
    largest: int = 86400,
) -> dict[Any, Totals]:
    """Totals per group for [since, now). `raw_group_sql` groups raw rows and `rollup_key`
    (bucket start, deployment name, version number) groups rollups the same way (a
    version of None, no version known, is stored as 0 in rollups); rollups are at most
    `largest` seconds long, so that one never straddles two groups."""
    for _ in range(3):
        folded = _folded_until()
        out = _window_once(since, now, folded, deployment_name, raw_group_sql, rollup_key, largest)
        # Before the first fold everything was read raw, which a fold does not change; later,
        # a fold committed between reading the watermark and the rollups would count twice.
        if folded is None or _folded_until() == folded:
            return out
    return out


def _window_once(since, now, folded, deployment_name, raw_group_sql, rollup_key, largest):
    if folded is None or folded <= since:
        return raw_totals(
            ranges=[(since, None)], group_sql=raw_group_sql, deployment_name=deployment_name
        )
    head_end = min(ceil_to(since, 60), folded)
    raw_ranges: list[tuple[datetime, datetime | None]] = [(folded, None)]
    if head_end > since:
        raw_ranges.insert(0, (since, head_end))
    out: dict[Any, Totals] = defaultdict(Totals)
    for key, t in raw_totals(
        ranges=raw_ranges, group_sql=raw_group_sql, deployment_name=deployment_name
    ).items():
        out[key].add(t)
    query = Q()
    for resolution, spans in tiles(head_end, folded, largest=largest, at_watermark=True).items():
        for a, b in spans:
            query |= Q(
                resolution=resolution,
                bucket_start__gte=datetime.fromtimestamp(a, tz=UTC),
                bucket_start__lt=datetime.fromtimestamp(b, tz=UTC),
            )
    if query:
        rollups = PredictionRollup.objects.filter(query)
        if deployment_name:
            rollups = rollups.filter(deployment_name=deployment_name)
        fields = (
            "bucket_start",
            "deployment_name",
            "version_number",
            "requests",
            "errors_4xx",
            "errors_5xx",
            "rows",
            "input_bytes",
            "latency_ms_sum",
            "histogram",
        )
        for row in rollups.order_by().values_list(*fields):
            t = out[rollup_key(row[0], row[1], row[2] or None)]
            t.requests += row[3]
            t.errors_4xx += row[4]
            t.errors_5xx += row[5]
            t.rows += row[6]
            t.input_bytes += row[7]
            t.latency_ms_sum += row[8]
            latency.merge(t.histogram, row[9])
    return dict(out)
