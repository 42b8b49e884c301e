"""Latency histograms with fixed buckets, the way Prometheus computes quantiles.

Rolled-up prediction figures cannot keep every latency, so each rollup keeps a histogram
over fixed bucket bounds, and p50/p95/p99 are read from the merged histograms by linear
interpolation inside the bucket that holds the rank (Prometheus' `histogram_quantile`).

Bounds: 20 buckets per decade from 0.1 ms to 100 s (each bound 10^(1/20), about 12 %,
above the previous), plus one bucket below 0.1 ms and one at or above 100 s. A percentile
read from buckets is therefore within one bucket (at most 12 % of the value) of the exact
one; in practice interpolation lands much closer.

A histogram is a sparse dict {bucket index: count}; JSON keeps keys as strings, so every
function here accepts both.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

LOWEST_MS = 0.1
PER_DECADE = 20
DECADES = 6
# Index 0: [0, 0.1 ms); index i in 1..120: [bound(i), bound(i + 1)); index 121: [100 s, inf).
TOP_INDEX = PER_DECADE * DECADES + 1


def bound(i: int) -> float:
    """The lower bound of bucket i (i >= 1), in ms."""
    return LOWEST_MS * 10 ** ((i - 1) / PER_DECADE)


def bucket_of(latency_ms: float) -> int:
    """The bucket index of one latency; the same rule as `bucket_sql`."""
    if latency_ms < LOWEST_MS:
        return 0
    if latency_ms >= bound(TOP_INDEX):
        return TOP_INDEX
    return 1 + math.floor(PER_DECADE * math.log(latency_ms / LOWEST_MS) / math.log(10))


def bucket_sql(vendor: str, column: str = "latency_ms") -> str:
    """SQL for `bucket_of(column)`: `ln` exists on PostgreSQL and in Django's SQLite."""
    top = bound(TOP_INDEX)
    if vendor == "postgresql":
        inner = f"floor({PER_DECADE} * ln({column} / {LOWEST_MS}) / ln(10))::int"
    else:  # a positive value: CAST truncates, which is floor
        inner = f"CAST({PER_DECADE} * ln({column} / {LOWEST_MS}) / ln(10) AS INTEGER)"
    return (
        f"CASE WHEN {column} < {LOWEST_MS} THEN 0 WHEN {column} >= {top} THEN {TOP_INDEX} "
        f"ELSE 1 + {inner} END"
    )


def merge(into: dict[int, int], histogram: Mapping[int | str, int]) -> dict[int, int]:
    for key, count in histogram.items():
        i = int(key)
        into[i] = into.get(i, 0) + int(count)
    return into


def merged(histograms: Iterable[Mapping[int | str, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for h in histograms:
        merge(out, h)
    return out


def quantile(histogram: Mapping[int | str, int], q: float) -> float | None:
    """The q-quantile of a histogram (None when it is empty), interpolated in its bucket."""
    counts = sorted((int(k), int(v)) for k, v in histogram.items() if int(v) > 0)
    total = sum(v for _, v in counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, count in counts:
        if seen + count >= rank:
            if i == TOP_INDEX:
                return bound(TOP_INDEX)
            low = 0.0 if i == 0 else bound(i)
            high = bound(i + 1) if i else LOWEST_MS
            return low + (high - low) * max(0.0, rank - seen) / count
        seen += count
    return bound(counts[-1][0])


def quantiles(histogram: Mapping[int | str, int], qs: Iterable[float]) -> list[float | None]:
    return [quantile(histogram, q) for q in qs]
