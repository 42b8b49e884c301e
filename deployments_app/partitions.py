"""Daily range partitions of the prediction log on PostgreSQL.

The log table is `PARTITION BY RANGE (created_at)` (migration 0005) with one partition per
UTC day, named `<table>_pYYYYMMDD`, and a default partition that catches any row no daily
partition holds (so a write never fails because beat was down). Expired days are dropped
whole, which is instant, where a DELETE of a day's rows would rewrite and vacuum the table.

Creating a day's partition moves whatever the default partition holds for that day into
it first, then attaches it: the same statement sequence whether the default is empty (the
usual case: partitions are made days ahead) or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.db import connection, transaction

TABLE = "deployments_app_predictionlog"
DEFAULT = f"{TABLE}_default"
PREFIX = f"{TABLE}_p"


@dataclass(frozen=True)
class Partition:
    name: str
    day: date

    @property
    def start(self) -> datetime:
        return datetime.combine(self.day, time.min, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=1)


def is_partitioned() -> bool:
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
            "WHERE c.relname = %s",
            [TABLE],
        )
        return cursor.fetchone() is not None


def partition_name(day: date) -> str:
    return f"{PREFIX}{day:%Y%m%d}"


def partitions() -> list[Partition]:
    """The daily partitions, oldest first (the default partition is not listed)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s",
            [TABLE],
        )
        names = [row[0] for row in cursor.fetchall()]
    out = []
    for name in names:
        if name.startswith(PREFIX):
            out.append(Partition(name, datetime.strptime(name[len(PREFIX) :], "%Y%m%d").date()))
    return sorted(out, key=lambda p: p.day)


def partition_create(*, day: date) -> bool:
    """Make the partition of `day` (UTC) unless it exists; True when it was made."""
    part = Partition(partition_name(day), day)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [part.name])
        if cursor.fetchone()[0] is not None:
            return False
        q = connection.ops.quote_name
        cursor.execute(
            f"CREATE TABLE {q(part.name)} (LIKE {q(TABLE)} INCLUDING DEFAULTS "
            "INCLUDING CONSTRAINTS)"
        )
        cursor.execute(
            f"WITH moved AS (DELETE FROM {q(DEFAULT)} WHERE created_at >= %s "  # noqa: S608
            f"AND created_at < %s RETURNING *) INSERT INTO {q(part.name)} SELECT * FROM moved",
            [part.start, part.end],
        )
        cursor.execute(
            f"ALTER TABLE {q(TABLE)} ATTACH PARTITION {q(part.name)} FOR VALUES FROM (%s) TO (%s)",
            [part.start, part.end],
        )
    return True


def partitions_ensure(*, today: date, ahead: int = 3) -> list[str]:
    """Partitions for today and `ahead` days after it; the names of those made now."""
    made = []
    for offset in range(ahead + 1):
        day = today + timedelta(days=offset)
        if partition_create(day=day):
            made.append(partition_name(day))
    return made


def partition_rows(part: Partition) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {connection.ops.quote_name(part.name)}")  # noqa: S608
        return int(cursor.fetchone()[0])


def partition_drop(part: Partition) -> None:
    """Detach, then drop: the parent is locked only for the detach's catalog change."""
    q = connection.ops.quote_name
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {q(TABLE)} DETACH PARTITION {q(part.name)}")
        cursor.execute(f"DROP TABLE {q(part.name)}")
