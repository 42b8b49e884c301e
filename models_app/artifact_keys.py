"""Services of encryption at rest: key rotation and encrypting a store from before it.

Both are operator actions (manage.py rotate_artifact_key / encrypt_artifacts), both audited.
Rotation rewraps each artifact's data key under the current master key: one 512-byte header
write per artifact (journalled, see storage.artifact_rewrap), bodies and content hashes
untouched, so images, deployments and deduplication are unaffected.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from models_app import storage
from models_app.keyprovider import KeyProvider
from portal.audit import Actor, audit_record


@dataclass
class RotationResult:
    key_id: str
    rewrapped: int = 0
    unchanged: int = 0
    restored: list[str] = field(default_factory=list)  # torn headers put back first
    failed: dict[str, str] = field(default_factory=dict)  # sha -> why


def artifacts_rotate_key(*, provider: KeyProvider, actor: Actor) -> RotationResult:
    """Rewrap every data key under `provider`'s current key; each rewrapped header is read
    back and must yield the same data key, or the command reports it."""
    result = RotationResult(key_id=provider.key_id)
    result.restored = storage.artifact_rewrap_recover(provider)
    previous: dict[str, int] = {}
    for sha in storage.iter_artifact_shas():
        try:
            header = storage.artifact_header(sha)
            if header is None:
                result.failed[sha] = "stored in plaintext: run manage.py encrypt_artifacts"
                continue
            before = storage.artifact_data_key(sha, provider)
            old_id = header.key_id
            if storage.artifact_rewrap(sha, provider):
                if storage.artifact_data_key(sha, provider) != before:  # pragma: no cover
                    result.failed[sha] = "the rewrapped header does not give the same data key"
                    continue
                result.rewrapped += 1
                previous[old_id] = previous.get(old_id, 0) + 1
            else:
                result.unchanged += 1
        except storage.ArtifactUnreadable as exc:
            result.failed[sha] = exc.message
    audit_record(
        actor=actor,
        action="artifacts.key_rotated",
        target_type="artifact_store",
        target_name=str(storage.artifact_root()),
        outcome="failure" if result.failed else "success",
        details={
            "key_id": result.key_id,
            "rewrapped": result.rewrapped,
            "unchanged": result.unchanged,
            "from_keys": previous,
            "restored_torn_headers": len(result.restored),
            "failed": {sha[:12]: why for sha, why in list(result.failed.items())[:20]},
        },
    )
    return result


@dataclass
class EncryptResult:
    encrypted: list[str] = field(default_factory=list)
    already: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def artifacts_encrypt_existing(*, actor: Actor) -> EncryptResult:
    """Encrypt each plaintext artifact (from before encryption at rest) in place."""
    result = EncryptResult()
    for sha in storage.iter_artifact_shas():
        try:
            if storage.artifact_encrypt_existing(sha):
                result.encrypted.append(sha)
            else:
                result.already += 1
        except storage.ArtifactUnreadable as exc:
            result.failed[sha] = exc.message
    if result.encrypted or result.failed:
        audit_record(
            actor=actor,
            action="artifacts.encrypted",
            target_type="artifact_store",
            target_name=str(storage.artifact_root()),
            outcome="failure" if result.failed else "success",
            details={
                "encrypted": len(result.encrypted),
                "already": result.already,
                "artifacts": [sha[:12] for sha in result.encrypted[:50]],
                "failed": {sha[:12]: why for sha, why in list(result.failed.items())[:20]},
            },
        )
    return result
