"""Content-addressed artifact storage on the local filesystem, encrypted at rest.

Artifacts live at `<PORTAL_ARTIFACT_DIR>/sha256/<2 hex>/<64 hex>`, named by the SHA-256 of
their *plaintext* (so identical uploads deduplicate), and hold only ciphertext: AES-256-GCM
over 1 MiB chunks under a random data key of their own, wrapped by the master key of the
configured key provider (models_app.keyprovider) in a 512-byte header
(models_app/validation/artifact_cipher.py has the format). Writes go through a temporary file
in the same folder, renamed into place, so a failed or interrupted write (disk full, killed
process) never leaves a half-written artifact under its final name; uploads are streamed and
encrypted chunk by chunk, never held whole in memory.

Everyone reads plaintext through this module only: `artifact_open` (a streaming file-like
that checks the hash at its end), `artifact_read` (bytes), `artifact_plaintext_file` (a
private temporary file for tools that need a path, removed after) and `artifact_data_key`
(the unwrapped key a replica gets through its runtime's secret file). A file written before
encryption (no header) is refused with what to run (`manage.py encrypt_artifacts`), never
read silently.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from django.conf import settings

from models_app.keyprovider import ArtifactKeyError, KeyProvider, get_provider
from models_app.validation import artifact_cipher as cipher
from portal.errors import ApplicationError

CHUNK = 1024 * 1024


class UploadTooLarge(ApplicationError):
    status_code = 413


class ArtifactUnreadable(ApplicationError):
    """The stored artifact cannot be decrypted here (key missing or wrong, file altered,
    or written before encryption at rest): an operator's problem, not the caller's."""

    status_code = 503


@dataclass(frozen=True)
class StoredArtifact:
    sha256: str
    size: int
    path: Path


def artifact_root() -> Path:
    return Path(settings.PORTAL_ARTIFACT_DIR)


def artifact_path(sha256: str) -> Path:
    """Where the *encrypted* file is; read plaintext with artifact_open/artifact_read."""
    return artifact_root() / "sha256" / sha256[:2] / sha256


def max_upload_bytes() -> int:
    return settings.PORTAL_MAX_UPLOAD_MB * 1024 * 1024


def artifact_store(chunks: Iterable[bytes], *, max_bytes: int | None = None) -> StoredArtifact:
    """Stream chunks to storage, hashing and encrypting as we go; never holds the whole file
    in memory, never writes plaintext to disk."""
    limit = max_upload_bytes() if max_bytes is None else max_bytes
    provider = get_provider()
    data_key = os.urandom(cipher.KEY_BYTES)
    key_id, wrapped = provider.wrap(data_key)
    sealer = cipher.Encryptor(data_key, key_id, wrapped, CHUNK)
    root = artifact_root()
    tmp_dir = root / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(sealer.header.pack())
            for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise UploadTooLarge(
                        f"the file is larger than the limit of {limit // (1024 * 1024)} MB "
                        "(PORTAL_MAX_UPLOAD_MB)"
                    )
                digest.update(chunk)
                out.write(sealer.update(chunk))
            out.write(sealer.finish())
            out.flush()
            os.fsync(out.fileno())
        if size == 0:
            raise ApplicationError("the file is empty")
        sha = digest.hexdigest()
        final = _place(tmp_name, sha)
        return StoredArtifact(sha256=sha, size=size, path=final)
    except OSError as exc:
        _discard(tmp_name)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ApplicationError(
                "the artifact store is full: the upload was discarded, nothing was saved"
            ) from exc
        raise
    except BaseException:
        _discard(tmp_name)
        raise


def _place(tmp_name: str, sha: str) -> Path:
    """Rename a finished temporary file to its final name, unless the same content (as an
    encrypted file) is there already. A plaintext file from before encryption is replaced."""
    final = artifact_path(sha)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and _is_sealed(final):
        os.unlink(tmp_name)
    else:
        os.chmod(tmp_name, 0o440)
        os.replace(tmp_name, final)
    return final


def _is_sealed(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            cipher.Header.unpack(fh.read(cipher.HEADER_SIZE))
    except (OSError, cipher.ArtifactCipherError):
        return False
    return True


def _discard(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)


# --------------------------------------------------------------------------- reading


def artifact_header(sha256: str) -> cipher.Header | None:
    """The file's header; None for a plaintext file written before encryption at rest."""
    with open(artifact_path(sha256), "rb") as fh:
        head = fh.read(cipher.HEADER_SIZE)
    if not cipher.is_encrypted(head):
        return None
    try:
        return cipher.Header.unpack(head)
    except cipher.ArtifactCipherError as exc:
        raise ArtifactUnreadable(f"artifact {sha256[:12]}: {exc}") from exc


def _unencrypted(sha256: str) -> ArtifactUnreadable:
    return ArtifactUnreadable(
        f"artifact {sha256[:12]} is stored in plaintext (written before encryption at rest); "
        "an operator must run `manage.py encrypt_artifacts`"
    )


def artifact_data_key(sha256: str, provider: KeyProvider | None = None) -> bytes:
    """The artifact's own data key, unwrapped (what a replica needs to decrypt its copy)."""
    header = artifact_header(sha256)
    if header is None:
        raise _unencrypted(sha256)
    try:
        return (provider or get_provider()).unwrap(header.key_id, header.wrapped_key)
    except ArtifactKeyError as exc:
        raise ArtifactUnreadable(f"artifact {sha256[:12]}: {exc}") from exc


class _PlainReader(io.RawIOBase):
    """Decrypts chunk by chunk as it is read; checks the plaintext hash at the end."""

    def __init__(self, sha256: str):
        header = artifact_header(sha256)
        if header is None:
            raise _unencrypted(sha256)
        key = artifact_data_key(sha256)
        self._sha = sha256
        self._fh = open(artifact_path(sha256), "rb")  # noqa: SIM115 - closed by close()
        self._fh.seek(cipher.HEADER_SIZE)
        self._parts = cipher.iter_plaintext(self._fh, key, header)
        self._digest = hashlib.sha256()
        self._pending = memoryview(b"")
        self._done = False

    def readable(self) -> bool:
        return True

    def _next_part(self) -> bool:
        """Decrypt the next chunk into _pending; False at the (hash-checked) end."""
        try:
            part = next(self._parts)
        except StopIteration:
            self._done = True
            if self._digest.hexdigest() != self._sha:
                raise ArtifactUnreadable(
                    f"artifact {self._sha[:12]} does not match its hash"
                ) from None
            return False
        except cipher.ArtifactCipherError as exc:
            raise ArtifactUnreadable(f"artifact {self._sha[:12]}: {exc}") from exc
        self._digest.update(part)
        self._pending = memoryview(part)
        return True

    def readinto(self, buffer) -> int:
        while not self._pending and not self._done:
            self._next_part()
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def readall(self) -> bytes:
        parts = [bytes(self._pending)]
        while not self._done:
            if self._next_part():
                parts.append(bytes(self._pending))
        self._pending = memoryview(b"")
        return b"".join(parts)

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
        super().close()


def artifact_open(sha256: str) -> BinaryIO:
    """The plaintext as a read-only binary stream (not seekable); close it when done."""
    return io.BufferedReader(_PlainReader(sha256), buffer_size=CHUNK)  # type: ignore[return-value]


def artifact_iter(sha256: str) -> Iterator[bytes]:
    """The plaintext in chunks of about 1 MiB."""
    with artifact_open(sha256) as fh:
        while part := fh.read(CHUNK):
            yield part


def artifact_read(sha256: str) -> bytes:
    """The whole plaintext (small files: bundles, tests)."""
    with artifact_open(sha256) as fh:
        return fh.read()


@contextlib.contextmanager
def artifact_plaintext_file(sha256: str, suffix: str = "") -> Iterator[Path]:
    """The plaintext in a private temporary file (its folder is 0700, outside the store),
    for tools that need a path (the validation scanner and sandbox); removed on exit."""
    folder = Path(tempfile.mkdtemp(prefix="portal-plain-"))
    try:
        os.chmod(folder, 0o700)
        path = folder / f"model{suffix}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out, artifact_open(sha256) as src:
            shutil.copyfileobj(src, out, CHUNK)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------- maintenance


def iter_artifact_shas() -> Iterator[str]:
    """Every artifact file in the store, by name."""
    base = artifact_root() / "sha256"
    if not base.is_dir():
        return
    for prefix in sorted(base.iterdir()):
        if not prefix.is_dir():
            continue
        for path in sorted(prefix.iterdir()):
            if len(path.name) == 64 and path.is_file():
                yield path.name


def artifact_encrypt_existing(sha256: str) -> bool:
    """Encrypt a plaintext artifact from before encryption at rest (checking its hash first);
    False when it is encrypted already."""
    path = artifact_path(sha256)
    if artifact_header(sha256) is not None:
        return False

    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as fh:
            while part := fh.read(CHUNK):
                yield part

    stored = artifact_store(chunks(), max_bytes=path.stat().st_size)
    if stored.sha256 != sha256:  # it stored the bytes under their real name: undo that
        _discard(str(stored.path))
        raise ArtifactUnreadable(f"artifact {sha256[:12]} does not match its hash; left as is")
    return True


def artifact_rewrap(sha256: str, provider: KeyProvider) -> bool:
    """Rewrap the data key under the provider's current master key: one in-place write of
    the 512-byte header, the body untouched. False when it was under that key already."""
    header = artifact_header(sha256)
    if header is None:
        raise _unencrypted(sha256)
    if header.key_id == provider.key_id:
        return False
    try:
        data_key = provider.unwrap(header.key_id, header.wrapped_key)
    except ArtifactKeyError as exc:
        raise ArtifactUnreadable(f"artifact {sha256[:12]}: {exc}") from exc
    header.key_id, header.wrapped_key = provider.wrap(data_key)
    path = artifact_path(sha256)
    journal = _journal_dir() / sha256
    journal.parent.mkdir(mode=0o700, exist_ok=True)
    with open(path, "rb") as fh:
        old = fh.read(cipher.HEADER_SIZE)
    _write_synced(journal, old)  # the old header, until the new one is on disk
    _pwrite_header(path, header.pack())
    journal.unlink()
    return True


def _journal_dir() -> Path:
    return artifact_root() / "rewrap-journal"


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _pwrite_header(path: Path, packed: bytes) -> None:
    mode = path.stat().st_mode & 0o777
    os.chmod(path, mode | 0o200)
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, packed, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        os.chmod(path, mode)


def artifact_rewrap_recover(provider: KeyProvider) -> list[str]:
    """After a rotation that was killed mid-write: put back the journalled old header of any
    artifact whose header no longer opens (a torn write). Returns the artifacts restored."""
    restored = []
    folder = _journal_dir()
    if not folder.is_dir():
        return restored
    for journal in sorted(folder.iterdir()):
        path = artifact_path(journal.name)
        try:
            with open(path, "rb") as fh:
                header = cipher.Header.unpack(fh.read(cipher.HEADER_SIZE))
            provider.unwrap(header.key_id, header.wrapped_key)
        except (cipher.ArtifactCipherError, ArtifactKeyError):
            _pwrite_header(path, journal.read_bytes())
            restored.append(journal.name)
        except FileNotFoundError:
            pass
        journal.unlink()
    return restored
