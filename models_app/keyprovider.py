"""Master keys for artifact encryption at rest: the key-provider interface and its env version.

Every stored artifact has its own random data key (models_app/validation/artifact_cipher.py);
a key provider wraps it under a master key and unwraps it again. The portal never needs the
master key itself, only these three operations, so a KMS or Vault transit engine fits behind
the same interface: set PORTAL_ARTIFACT_KEY_PROVIDER to a dotted path of a class with a
``from_settings()`` class method returning a :class:`KeyProvider`.

The default, :class:`EnvKeyProvider`, holds the master key given by PORTAL_ARTIFACT_KEY (or
the file PORTAL_ARTIFACT_KEY_FILE; in local mode a key file made once under the data dir)
plus any previous keys (PORTAL_ARTIFACT_KEY_PREVIOUS, comma-separated) that artifacts not yet
rewrapped (manage.py rotate_artifact_key) still need. Wrapping is AES-256-GCM with a random
nonce and the key id as associated data.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import secrets
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

MASTER_KEY_BYTES = 32
HOW_TO_MAKE = "python -c 'import secrets; print(secrets.token_hex(32))'"


class ArtifactKeyError(Exception):
    """A data key cannot be unwrapped: its master key is not configured, or is not this one."""


@runtime_checkable
class KeyProvider(Protocol):
    @property
    def key_id(self) -> str:
        """The id of the master key new data keys are wrapped under."""

    def wrap(self, data_key: bytes) -> tuple[str, bytes]:
        """Wrap under the current master key: (key id, wrapped bytes)."""

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        """The data key; ArtifactKeyError when this provider cannot open it."""

    def knows(self, key_id: str) -> bool:
        """Whether a data key wrapped under `key_id` can be unwrapped here."""


def parse_master_key(text: str, what: str) -> bytes:
    """32 bytes from 64 hex digits or (URL-safe) base64; ImproperlyConfigured otherwise."""
    value = text.strip()
    raw: bytes | None = None
    if len(value) == 2 * MASTER_KEY_BYTES:
        with contextlib.suppress(ValueError):
            raw = bytes.fromhex(value)
    if raw is None:
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                raw = decode(value + "=" * (-len(value) % 4))
            except (binascii.Error, ValueError):
                continue
            if len(raw) == MASTER_KEY_BYTES:
                break
            raw = None
    if raw is None or len(raw) != MASTER_KEY_BYTES:
        raise ImproperlyConfigured(
            f"{what} must be {MASTER_KEY_BYTES} random bytes as 64 hex digits or base64 "
            f"(make one with: {HOW_TO_MAKE})"
        )
    return raw


def master_key_id(key: bytes) -> str:
    """Names a master key without revealing it (stored in every artifact header)."""
    return "env:" + hmac.new(key, b"portal artifact key id", hashlib.sha256).hexdigest()[:16]


class EnvKeyProvider:
    """Master keys held in the portal's memory (from the environment or a key file)."""

    def __init__(self, current: bytes, previous: list[bytes] | tuple[bytes, ...] = ()):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._raw = (current, tuple(previous))
        self._keys = {master_key_id(k): AESGCM(k) for k in [*previous, current]}
        self._current = master_key_id(current)

    def with_previous(self, keys: list[bytes]) -> EnvKeyProvider:
        """The same current key, opening artifacts under `keys` too (rotation options)."""
        current, previous = self._raw
        return EnvKeyProvider(current, [*previous, *keys])

    @property
    def key_id(self) -> str:
        return self._current

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    def wrap(self, data_key: bytes) -> tuple[str, bytes]:
        nonce = os.urandom(12)
        sealed = self._keys[self._current].encrypt(nonce, data_key, self._current.encode())
        return self._current, nonce + sealed

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        aes = self._keys.get(key_id)
        if aes is None:
            raise ArtifactKeyError(
                f"the artifact's data key is wrapped under master key {key_id}, which is not "
                f"configured (current: {self._current}); set PORTAL_ARTIFACT_KEY (or "
                "PORTAL_ARTIFACT_KEY_PREVIOUS during a rotation) to the key that wrote it"
            )
        try:
            return aes.decrypt(wrapped[:12], wrapped[12:], key_id.encode())
        except InvalidTag:
            raise ArtifactKeyError(
                f"the data key wrapped under {key_id} does not authenticate (altered header)"
            ) from None

    def knows(self, key_id: str) -> bool:
        return key_id in self._keys

    @classmethod
    def from_settings(cls) -> EnvKeyProvider:
        current = _configured_key()
        previous = [
            parse_master_key(part, "each PORTAL_ARTIFACT_KEY_PREVIOUS entry")
            for part in str(settings.PORTAL_ARTIFACT_KEY_PREVIOUS or "").split(",")
            if part.strip()
        ]
        return cls(current, previous)


def _configured_key() -> bytes:
    if settings.PORTAL_ARTIFACT_KEY:
        return parse_master_key(settings.PORTAL_ARTIFACT_KEY, "PORTAL_ARTIFACT_KEY")
    path = Path(settings.PORTAL_ARTIFACT_KEY_FILE)
    if settings.PORTAL_ARTIFACT_KEY_FILE_CREATE and not path.exists():
        _create_key_file(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ImproperlyConfigured(
            f"PORTAL_ARTIFACT_KEY_FILE {path} cannot be read ({exc.strerror}): artifacts are "
            "encrypted at rest and the portal needs their master key"
        ) from exc
    return parse_master_key(text, f"the artifact key file {path}")


def _create_key_file(path: Path) -> None:
    """Local mode: a random master key made once (0600); the first of racing processes wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".artifact-key-")
    try:
        os.write(fd, (secrets.token_hex(MASTER_KEY_BYTES) + "\n").encode())
        os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


@lru_cache(maxsize=1)
def _provider(dotted: str, fingerprint: tuple) -> KeyProvider:
    cls = import_string(dotted)
    provider = cls.from_settings()
    if not isinstance(provider, KeyProvider):
        raise ImproperlyConfigured(f"PORTAL_ARTIFACT_KEY_PROVIDER {dotted} is not a key provider")
    return provider


def get_provider() -> KeyProvider:
    """The configured provider (cached per configuration, so tests may override settings)."""
    fingerprint = (
        settings.PORTAL_ARTIFACT_KEY,
        str(settings.PORTAL_ARTIFACT_KEY_FILE),
        settings.PORTAL_ARTIFACT_KEY_PREVIOUS,
    )
    return _provider(settings.PORTAL_ARTIFACT_KEY_PROVIDER, fingerprint)
