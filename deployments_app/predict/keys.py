"""API keys: create (shown once), revoke, and the fast check done on every prediction call.

A key is `mp_<prefix>_<secret>`: the prefix finds the row, a SHA-256 of the whole key is
compared in constant time. What a check needs is cached (Django's cache: Redis when
configured) for a minute and dropped on revoke, so a call costs one cache read.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from deployments_app.models import ApiKey, Deployment
from models_app.models import RegisteredModel
from portal.audit import Actor, audit_record
from portal.errors import ApplicationError, NotFoundError, PermissionDeniedError
from portal.roles import user_can

CACHE_SECONDS = 60
DEFAULT_RATE_LIMIT = 6000  # calls per minute, when the creator names none
LAST_USED_EVERY = 60  # seconds between last_used_at writes per key


@dataclass(frozen=True)
class KeyInfo:
    id: int
    prefix: str
    key_hash: str
    user_id: int
    username: str
    deployment_ids: frozenset[int]
    model_id: int | None
    expires_at: datetime | None
    revoked: bool
    active_user: bool
    rate_limit_per_minute: int

    def allows(self, deployment_id: int, model_id: int) -> bool:
        return deployment_id in self.deployment_ids or (self.model_id == model_id)


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def _cache_key(prefix: str) -> str:
    return f"portal:apikey:{prefix}"


def api_key_create(
    *,
    user: Any,
    actor: Actor,
    name: str,
    deployment_names: list[str],
    model_name: str = "",
    expires_at: datetime | None = None,
    rate_limit_per_minute: int | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for some deployments or for all of a model's; returns (row, raw key).

    The rate limit defaults to DEFAULT_RATE_LIMIT within PORTAL_MAX_KEY_RATE_LIMIT; only an
    admin may give a key more than that cap."""
    if not user_can(user, "predict"):
        raise PermissionDeniedError("your role may not call predictions, so it may not hold keys")
    cap = settings.PORTAL_MAX_KEY_RATE_LIMIT
    rate = min(DEFAULT_RATE_LIMIT, cap) if rate_limit_per_minute is None else rate_limit_per_minute
    if rate < 1:
        raise ApplicationError("the rate limit must be at least 1 call per minute")
    if rate > cap and not user_can(user, "admin"):
        raise PermissionDeniedError(
            f"a key may allow at most {cap} calls per minute (PORTAL_MAX_KEY_RATE_LIMIT); "
            "only an admin may go beyond it"
        )
    if not deployment_names and not model_name:
        raise ApplicationError("a key needs at least one deployment or a model")
    if expires_at is not None and expires_at <= timezone.now():
        raise ApplicationError("the expiry must be in the future")
    deployments = list(Deployment.objects.filter(name__in=deployment_names))
    missing = set(deployment_names) - {d.name for d in deployments}
    if missing:
        raise NotFoundError(f"no deployment named {', '.join(sorted(missing))}")
    model = None
    if model_name:
        model = RegisteredModel.objects.filter(name=model_name).first()
        if model is None:
            raise NotFoundError(f"no model named {model_name}")
    prefix = secrets.token_hex(5)
    raw = f"mp_{prefix}_{secrets.token_urlsafe(32)}"
    with transaction.atomic():
        key = ApiKey.objects.create(
            name=name[:100] or "key",
            prefix=prefix,
            key_hash=_hash(raw),
            user=user,
            model=model,
            expires_at=expires_at,
            rate_limit_per_minute=rate,
        )
        key.deployments.set(deployments)
        audit_record(
            actor=actor,
            action="api_key.created",
            target=key,
            details={
                "prefix": prefix,
                "deployments": sorted(d.name for d in deployments),
                "model": model_name or None,
                "expires_at": expires_at.isoformat() if expires_at else None,
                "rate_limit_per_minute": rate,
                "above_cap": rate > cap,
            },
        )
    return key, raw


def api_key_revoke(*, key: ApiKey, actor: Actor) -> ApiKey:
    if key.revoked_at is not None:
        return key
    with transaction.atomic():
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        audit_record(
            actor=actor, action="api_key.revoked", target=key, details={"prefix": key.prefix}
        )
        # Now, and again after commit: a check racing the commit may re-cache the old row.
        cache.delete(_cache_key(key.prefix))
        forget_local(key.prefix)
        transaction.on_commit(
            lambda: (cache.delete(_cache_key(key.prefix)), forget_local(key.prefix))
        )
    return key


def _load(prefix: str) -> KeyInfo | None:
    key = ApiKey.objects.select_related("user").filter(prefix=prefix).first()
    if key is None:
        return None
    return KeyInfo(
        id=key.pk,
        prefix=key.prefix,
        key_hash=key.key_hash,
        user_id=key.user_id,
        username=key.user.get_username(),
        deployment_ids=frozenset(key.deployments.values_list("id", flat=True)),
        model_id=key.model_id,
        expires_at=key.expires_at,
        revoked=key.revoked_at is not None,
        active_user=user_can(key.user, "predict"),
        rate_limit_per_minute=key.rate_limit_per_minute,
    )


# Per-process memory of key checks: the hot path then costs no round trip at all. Revoking
# clears this process's entry at once and the shared cache's; other processes follow within
# LOCAL_SECONDS.
LOCAL_SECONDS = 2.0
_local: dict[str, tuple[float, KeyInfo]] = {}
_last_used: dict[str, float] = {}


def forget_local(prefix: str) -> None:
    _local.pop(prefix, None)


def _info(prefix: str) -> KeyInfo | None:
    now = time.monotonic()
    hit = _local.get(prefix)
    if hit is not None and now - hit[0] < LOCAL_SECONDS:
        return hit[1]
    info = cache.get(_cache_key(prefix))
    if info is None:
        info = _load(prefix)
        if info is None:
            return None
        cache.set(_cache_key(prefix), info, CACHE_SECONDS)
    _local[prefix] = (now, info)
    return info


MISS = object()  # what the *_local checks answer when only I/O can tell


def _split(raw: str) -> str | None:
    parts = raw.split("_")
    if len(parts) < 3 or parts[0] != "mp":
        return None
    return parts[1]


def _verdict(info: KeyInfo | None, raw: str) -> KeyInfo | None:
    if info is None or not hmac.compare_digest(info.key_hash, _hash(raw)):
        return None
    if info.revoked or not info.active_user:
        return None
    if info.expires_at is not None and info.expires_at <= timezone.now():
        return None
    return info


def key_check(raw: str) -> KeyInfo | None:
    """The key's info when it is valid now; None for unknown, wrong, revoked or expired."""
    prefix = _split(raw)
    if prefix is None:
        return None
    info = _verdict(_info(prefix), raw)
    if info is None:
        return None
    now = time.monotonic()
    if now - _last_used.get(prefix, -LAST_USED_EVERY) >= LAST_USED_EVERY:
        _last_used[prefix] = now
        ApiKey.objects.filter(pk=info.id).update(last_used_at=timezone.now())
    return info


def key_check_local(raw: str) -> KeyInfo | None | object:
    """key_check from this process's memory alone, for the event loop: MISS when the answer
    needs the cache, the database or a last-used write (then call key_check in a thread)."""
    prefix = _split(raw)
    if prefix is None:
        return None
    now = time.monotonic()
    hit = _local.get(prefix)
    if hit is None or now - hit[0] >= LOCAL_SECONDS:
        return MISS
    if now - _last_used.get(prefix, -LAST_USED_EVERY) >= LAST_USED_EVERY:
        return MISS
    return _verdict(hit[1], raw)


_redis_client = None


def _redis():
    """One long-lived client (Django's RedisCache builds a new one for every command)."""
    global _redis_client
    if _redis_client is None and settings.REDIS_URL:
        import redis

        _redis_client = redis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2
        )
    return _redis_client


LEASE_PARTS = 20  # a process reserves up to 1/20 of a key's per-minute limit at a time
_leases: dict[str, int] = {}  # window counter -> calls this process may still admit
_exhausted: set[str] = set()  # window counters known to be used up
_lease_lock = threading.Lock()
_refill_locks: dict[str, threading.Lock] = {}  # key prefix -> one Redis lease request at a time


def rate_limited(info: KeyInfo) -> int:
    """0 when the call may go on, else the seconds to wait (fixed one-minute windows).

    With Redis the window's counter is shared by every process and host, but a process does
    not ask Redis on every call: it reserves a lease of calls (INCRBY, limit / LEASE_PARTS,
    at least 1) and admits that many locally. No more than the limit is ever admitted per
    window; a lease unused by one process when the window closes may deny others up to
    (processes - 1) x lease calls early. Limits under LEASE_PARTS per minute are exact.
    """
    now = int(time.time())
    counter = f"portal:rate:{info.prefix}:{now // 60}"
    wait = 60 - now % 60 or 1
    limit = info.rate_limit_per_minute
    client = _redis()
    if client is None:
        return wait if _count_in_cache(counter) > limit else 0
    local = rate_limited_local(info)
    if local is not MISS:
        return local  # type: ignore[return-value]
    # One lease request per key at a time in this process: a thread never answers 429 while
    # another thread's lease for the same window is on its way back from Redis.
    with _refill_lock(info.prefix):
        local = rate_limited_local(info)
        if local is not MISS:
            return local  # type: ignore[return-value]
        lease = max(1, limit // LEASE_PARTS)
        pipe = client.pipeline(transaction=False)
        pipe.incrby(counter, lease)
        pipe.expire(counter, 70)
        count = pipe.execute()[0]
        granted = min(lease, max(0, limit - (count - lease)))
        with _lease_lock:
            if len(_leases) > 10_000 or len(_exhausted) > 10_000:  # old windows: drop them
                _leases.clear()
                _exhausted.clear()
                _refill_locks.clear()
            if granted == 0:
                _exhausted.add(counter)
                return wait
            _leases[counter] = _leases.get(counter, 0) + granted - 1
        return 0


def explain_rate_limited(caller: str) -> int:
    """0 when `caller` (a key or a user) may make another call with explain this minute, else
    the seconds to wait. Exact (one INCR per explain call: each costs far more model time than
    the round trip); PORTAL_EXPLAIN_RATE_PER_MINUTE, shared by every process and host."""
    count, wait = _count_this_minute("explainrate", caller)
    return 0 if count <= settings.PORTAL_EXPLAIN_RATE_PER_MINUTE else wait


def _refill_lock(prefix: str) -> threading.Lock:
    with _lease_lock:
        lock = _refill_locks.get(prefix)
        if lock is None:
            lock = _refill_locks[prefix] = threading.Lock()
        return lock


def rate_limited_local(info: KeyInfo) -> int | object:
    """rate_limited from this process's lease alone: MISS when Redis must be asked."""
    if _redis() is None:
        return MISS
    now = int(time.time())
    counter = f"portal:rate:{info.prefix}:{now // 60}"
    with _lease_lock:
        # Leases held first, then the exhausted mark (set by a refill that found the window
        # used up; refills are one at a time per key, so none can be on its way back then).
        left = _leases.get(counter, 0)
        if left > 0:
            _leases[counter] = left - 1
            return 0
        if counter in _exhausted:
            return 60 - now % 60 or 1
    return MISS


def forget_leases() -> None:
    with _lease_lock:
        _leases.clear()
        _exhausted.clear()


# --------------------------------------------------------------------------- invalid keys
# An address that sent more than PORTAL_INVALID_KEY_LIMIT invalid keys in a minute gets 429
# until the minute ends, without its keys being checked. The count is shared (Redis); the
# refusal is remembered per process, so a valid call costs no extra round trip.
_blocked: dict[str, float] = {}  # address -> time.monotonic() until which it is refused


def address_blocked(address: str | None) -> int:
    """Seconds `address` must still wait after too many invalid keys; 0 when it may call."""
    until = _blocked.get(address or "")
    if until is None:
        return 0
    left = until - time.monotonic()
    if left <= 0:
        _blocked.pop(address or "", None)
        return 0
    return int(left) + 1


def bad_key_note(address: str | None) -> int:
    """Count one invalid-key call from `address` in this minute: the seconds to wait once the
    address is over the limit, else 0."""
    count, wait = _count_this_minute("badkey", address or "-")
    if count <= settings.PORTAL_INVALID_KEY_LIMIT:
        return 0
    if len(_blocked) > 10_000:  # a flood from many addresses: forget the old ones
        _blocked.clear()
    _blocked[address or ""] = time.monotonic() + wait
    return wait


def _count_this_minute(kind: str, who: str) -> tuple[int, int]:
    """Count one more `kind` event of `who` in this minute, shared by every process and host
    (Redis, else the cache): (the minute's count so far, seconds until the minute ends)."""
    now = int(time.time())
    counter = f"portal:{settings.PORTAL_INSTANCE}:{kind}:{who}:{now // 60}"
    client = _redis()
    if client is None:
        count = _count_in_cache(counter)
    else:
        pipe = client.pipeline(transaction=False)
        pipe.incr(counter)
        pipe.expire(counter, 70)
        count = pipe.execute()[0]
    return count, 60 - now % 60 or 1


def _count_in_cache(counter: str) -> int:
    if cache.add(counter, 1, 70):
        return 1
    try:
        return cache.incr(counter)
    except ValueError:  # expired between add and incr
        cache.add(counter, 1, 70)
        return 1
