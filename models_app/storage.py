"""Content-addressed artifact storage on the local filesystem.

Artifacts live at `<PORTAL_ARTIFACT_DIR>/sha256/<2 hex>/<64 hex>`, written through a temporary
file in the same directory and renamed into place, so a failed or interrupted write (disk full,
killed process) never leaves a half-written artifact under its final name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from portal.errors import ApplicationError

CHUNK = 1024 * 1024


class UploadTooLarge(ApplicationError):
    status_code = 413


@dataclass(frozen=True)
class StoredArtifact:
    sha256: str
    size: int
    path: Path


def artifact_root() -> Path:
    return Path(settings.PORTAL_ARTIFACT_DIR)


def artifact_path(sha256: str) -> Path:
    return artifact_root() / "sha256" / sha256[:2] / sha256


def max_upload_bytes() -> int:
    return settings.PORTAL_MAX_UPLOAD_MB * 1024 * 1024


def artifact_store(chunks: Iterable[bytes], *, max_bytes: int | None = None) -> StoredArtifact:
    """Stream chunks to storage, hashing as we go; never holds the whole file in memory."""
    limit = max_upload_bytes() if max_bytes is None else max_bytes
    root = artifact_root()
    tmp_dir = root / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise UploadTooLarge(
                        f"the file is larger than the limit of {limit // (1024 * 1024)} MB "
                        "(PORTAL_MAX_UPLOAD_MB)"
                    )
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size == 0:
            raise ApplicationError("the file is empty")
        sha = digest.hexdigest()
        final = artifact_path(sha)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            os.unlink(tmp_name)
        else:
            os.chmod(tmp_name, 0o440)
            os.replace(tmp_name, final)
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


def _discard(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)
