"""The drift statistics, on plain lists (numpy and scipy; no monitoring framework).

A feature's reference *profile* is what the comparison needs, small enough for a JSON column:
numbers keep quantile bin edges with the reference's share per bin, the range and a sample
for the Kolmogorov-Smirnov test; categories keep their shares (the rarest folded into OTHER).
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
from scipy import stats

BINS = 10
SAMPLE = 1000  # reference values kept per feature for the KS test
TOP_CATEGORIES = 50
OTHER = "(other)"
EPSILON = 1e-4  # an empty bin's share, so the PSI's logarithm stays finite


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def kind_of(values: list[Any], declared: str | None = None) -> str:
    if declared in ("number", "category"):
        return declared
    present = [v for v in values if v is not None]
    return "number" if present and all(_is_number(v) for v in present) else "category"


def profile(values: list[Any], kind: str) -> dict[str, Any]:
    """The reference profile of one feature's values (None: missing)."""
    present = [v for v in values if v is not None]
    out: dict[str, Any] = {"kind": kind, "count": len(values)}
    if kind == "number":
        data = np.asarray([float(v) for v in present if _is_number(v)], dtype=float)
        if data.size == 0:
            return out | {"edges": [], "shares": [1.0], "sample": []}
        edges = sorted(set(np.quantile(data, np.linspace(0, 1, BINS + 1)[1:-1]).tolist()))
        shares = _bin_shares(data, edges)
        sample = data.tolist()
        if len(sample) > SAMPLE:
            sample = random.Random(0).sample(sample, SAMPLE)  # noqa: S311 - not security
        return out | {
            "edges": edges,
            "shares": shares,
            "min": float(data.min()),
            "max": float(data.max()),
            "sample": sorted(sample),
        }
    counts: dict[str, int] = {}
    for v in present:
        counts[str(v)] = counts.get(str(v), 0) + 1
    total = max(len(present), 1)
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:TOP_CATEGORIES]
    shares = {k: c / total for k, c in top}
    rest = 1.0 - sum(shares.values())
    if rest > 1e-12:
        shares[OTHER] = rest
    return out | {"shares": shares}


def _bin_shares(data: np.ndarray, edges: list[float]) -> list[float]:
    # Bins (-inf, e1], (e1, e2], ..., (ek, inf): searchsorted "left" puts a value equal to
    # an edge in the bin below it.
    counts = np.bincount(np.searchsorted(edges, data, side="left"), minlength=len(edges) + 1)
    return (counts / max(data.size, 1)).tolist()


def psi(reference: list[float], current: list[float]) -> float:
    """Population stability index of two share vectors (the same bins)."""
    r = np.clip(np.asarray(reference, dtype=float), EPSILON, None)
    c = np.clip(np.asarray(current, dtype=float), EPSILON, None)
    r, c = r / r.sum(), c / c.sum()
    return float(np.sum((c - r) * np.log(c / r)))


def compare(ref: dict[str, Any], values: list[Any]) -> dict[str, Any]:
    """One feature's drift in a window of `values` against its reference profile."""
    n = len(values)
    present = [v for v in values if v is not None]
    missing = (n - len(present)) / n if n else 0.0
    if ref["kind"] == "number":
        data = np.asarray([float(v) for v in present if _is_number(v)], dtype=float)
        if data.size == 0 or not ref.get("sample"):
            return {"psi": 0.0, "ks": None, "chi2_p": None, "missing_share": missing,
                    "out_of_range_share": 0.0, "count": n, "detail": {}}  # fmt: skip
        shares = _bin_shares(data, ref["edges"])
        out_of_range = float(np.mean((data < ref["min"]) | (data > ref["max"])))
        ks = float(stats.ks_2samp(np.asarray(ref["sample"]), data).statistic)
        return {
            "psi": psi(ref["shares"], shares),
            "ks": ks,
            "chi2_p": None,
            "missing_share": missing,
            "out_of_range_share": out_of_range,
            "count": n,
            "detail": {
                "reference_median": float(np.median(ref["sample"])),
                "median": float(np.median(data)),
                "shares": [round(s, 4) for s in shares],
                "reference_shares": [round(s, 4) for s in ref["shares"]],
            },
        }
    categories = list(ref["shares"])
    counts = dict.fromkeys(categories, 0)
    unseen = 0
    for v in present:
        key = str(v)
        if key in counts:
            counts[key] += 1
        elif OTHER in counts:
            counts[OTHER] += 1
        else:
            unseen += 1
    total = max(len(present), 1)
    current = [counts[c] / total for c in categories]
    reference = [ref["shares"][c] for c in categories]
    if unseen:  # values the reference never had: their own bin, absent from the reference
        current.append(unseen / total)
        reference.append(0.0)
    chi2_p = None
    if len(present) and len(reference) > 1:
        expected = np.clip(np.asarray(reference), EPSILON, None)
        expected = expected / expected.sum() * len(present)
        observed = np.asarray(current) * len(present)
        chi2_p = float(stats.chisquare(observed, expected).pvalue)
    return {
        "psi": psi(reference, current),
        "ks": None,
        "chi2_p": chi2_p,
        "missing_share": missing,
        "out_of_range_share": unseen / total if present else 0.0,
        "count": n,
        "detail": {
            "shares": dict(zip(categories, (round(s, 4) for s in current), strict=False)),
            "reference_shares": ref["shares"],
        },
    }
