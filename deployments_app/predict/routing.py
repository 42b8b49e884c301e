"""Which version serves a call: a pinned one, else the rollout's split (sticky or random).

Pure: the pipeline calls `choose` with what it knows of the call. The split is laid out in
basis points: candidate 1 holds [0, w1), candidate 2 [w1, w1 + w2), ..., the stable version
the rest. A sticky caller's point is a hash of (rollout id, caller), so it lands on the same
version on every call of that rollout, and raising a candidate's weight only widens its
span: callers already on it stay. A candidate with no healthy replica yet (still starting)
lends its span to the stable version; weight 0 has no span at all.
"""

from __future__ import annotations

import hashlib
import random

from deployments_app.predict.proxy import Backend, Target

BASIS_POINTS = 10_000


def point(rollout_id: int, caller: str) -> int:
    """Where a sticky caller falls in [0, 10000) for one rollout."""
    digest = hashlib.sha256(f"{rollout_id}\0{caller}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BASIS_POINTS


def choose(target: Target, *, caller: str = "") -> Backend:
    """The backend for an unpinned call; `caller` is its sticky key ("" = none: random)."""
    if not target.candidates:
        return target.stable
    if caller and target.rollout_id is not None:
        at = point(target.rollout_id, caller)
    else:
        at = random.randrange(BASIS_POINTS)  # noqa: S311 - traffic split, not a secret
    edge = 0
    for backend, weight in target.candidates:
        edge += weight * (BASIS_POINTS // 100)
        if at < edge:
            return backend if backend.endpoints else target.stable
    return target.stable


def shares(target: Target) -> dict[int, int]:
    """The share in percent each version gets now (a starting candidate's goes to stable)."""
    out = {target.stable.version_number: 100}
    for backend, weight in target.candidates:
        if backend.endpoints and weight:
            out[backend.version_number] = weight
            out[target.stable.version_number] -= weight
    return out
