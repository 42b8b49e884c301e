"""The encrypted artifact format: AES-256-GCM over fixed-size chunks, a header in front.

Self-contained (standard library and ``cryptography`` only): the portal's artifact store
writes and reads it (models_app/storage.py), and every replica reads it
(deployments_app/model_server/server.py, which gets this file copied beside it with the
restricted loader, hence its place in this folder).

Layout of a stored file::

    header, HEADER_SIZE (512) bytes:
        magic            8   b"PMAENC01"
        chunk_size       4   big-endian, plaintext bytes per chunk
        nonce_prefix     7   random per file
        key_id_len       1   then key_id (ASCII), the master key that wrapped the data key
        wrapped_len      2   big-endian, then the wrapped data key (the key provider's bytes)
        zero padding up to 512
    body: one AES-256-GCM message per chunk: ciphertext || 16-byte tag

Each file has its own random 256-bit data key. Chunk ``i`` is sealed with the nonce
``nonce_prefix || i (4 bytes) || last (1 byte)`` and the header's first 19 bytes as associated
data (the STREAM construction): chunks cannot be reordered, dropped, truncated at a chunk
boundary or moved to another file without failing authentication. The wrapped key and its
key id are not in the associated data, so key rotation rewrites the header in place (one
512-byte write) and never touches the body; the wrap itself is authenticated by the key
provider. Every chunk but the last is exactly ``chunk_size`` plaintext bytes; the last is
1..chunk_size bytes (0 only for an empty file).
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator

MAGIC = b"PMAENC01"
HEADER_SIZE = 512
DEFAULT_CHUNK = 1024 * 1024
TAG = 16
KEY_BYTES = 32
_FIXED = struct.Struct(">8sI7s")  # magic, chunk size, nonce prefix: the associated data
MAX_CHUNK = 64 * 1024 * 1024


class ArtifactCipherError(Exception):
    """The file is not a valid encrypted artifact, or the key does not open it."""


class Header:
    __slots__ = ("chunk_size", "key_id", "nonce_prefix", "wrapped_key")

    def __init__(self, chunk_size: int, nonce_prefix: bytes, key_id: str, wrapped_key: bytes):
        self.chunk_size = chunk_size
        self.nonce_prefix = nonce_prefix
        self.key_id = key_id
        self.wrapped_key = wrapped_key

    def aad(self) -> bytes:
        return _FIXED.pack(MAGIC, self.chunk_size, self.nonce_prefix)

    def pack(self) -> bytes:
        kid = self.key_id.encode("ascii")
        if len(kid) > 255:
            raise ValueError("key id longer than 255 bytes")
        out = (
            self.aad()
            + bytes([len(kid)])
            + kid
            + struct.pack(">H", len(self.wrapped_key))
            + self.wrapped_key
        )
        if len(out) > HEADER_SIZE:
            raise ValueError(f"wrapped key too long for the {HEADER_SIZE}-byte header")
        return out + b"\0" * (HEADER_SIZE - len(out))

    @classmethod
    def unpack(cls, raw: bytes) -> Header:
        if len(raw) < HEADER_SIZE or raw[:8] != MAGIC:
            raise ArtifactCipherError("not an encrypted artifact (no header)")
        _magic, chunk_size, prefix = _FIXED.unpack_from(raw, 0)
        pos = _FIXED.size
        kid_len = raw[pos]
        pos += 1
        key_id = raw[pos : pos + kid_len].decode("ascii", errors="replace")
        pos += kid_len
        (wlen,) = struct.unpack_from(">H", raw, pos)
        pos += 2
        wrapped = raw[pos : pos + wlen]
        if not 0 < chunk_size <= MAX_CHUNK or pos + wlen > HEADER_SIZE:
            raise ArtifactCipherError("corrupt encrypted-artifact header")
        return cls(chunk_size, prefix, key_id, wrapped)


def is_encrypted(head: bytes) -> bool:
    """Whether these first bytes of a file are an encrypted artifact's header."""
    return head[:8] == MAGIC


def read_header(path: str | os.PathLike[str]) -> Header:
    with open(path, "rb") as fh:
        return Header.unpack(fh.read(HEADER_SIZE))


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if index >= 2**32:
        raise ArtifactCipherError("too many chunks")
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def _aesgcm(key: bytes):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(key) != KEY_BYTES:
        raise ArtifactCipherError(f"a data key is {KEY_BYTES} bytes, not {len(key)}")
    return AESGCM(key)


class Encryptor:
    """Seal a stream: ``header()`` first, then ``update(chunk)`` and ``finish()`` bodies."""

    def __init__(self, data_key: bytes, key_id: str, wrapped_key: bytes, chunk_size: int = 0):
        self._aes = _aesgcm(data_key)
        self.header = Header(chunk_size or DEFAULT_CHUNK, os.urandom(7), key_id, wrapped_key)
        self._aad = self.header.aad()
        self._buf = bytearray()
        self._index = 0

    def _seal(self, data: bytes, last: bool) -> bytes:
        nonce = _nonce(self.header.nonce_prefix, self._index, last)
        self._index += 1
        return self._aes.encrypt(nonce, data, self._aad)

    def update(self, data: bytes) -> bytes:
        """Sealed chunks completed by `data`. A full chunk is held back until more follows,
        since only then is it known not to be the last."""
        self._buf += data
        size = self.header.chunk_size
        out = []
        while len(self._buf) > size:
            out.append(self._seal(bytes(self._buf[:size]), False))
            del self._buf[:size]
        return b"".join(out)

    def finish(self) -> bytes:
        out = self._seal(bytes(self._buf), True)
        self._buf = bytearray()
        return out


def iter_plaintext(fh, data_key: bytes, header: Header | None = None) -> Iterator[bytes]:
    """Decrypt an open encrypted file (positioned at 0, or after its header when `header`
    is given) chunk by chunk; raises ArtifactCipherError if anything fails to authenticate."""
    from cryptography.exceptions import InvalidTag

    if header is None:
        header = Header.unpack(fh.read(HEADER_SIZE))
    aes = _aesgcm(data_key)
    aad = header.aad()
    step = header.chunk_size + TAG
    index = 0
    current = fh.read(step)
    while True:
        following = fh.read(step) if len(current) == step else b""
        last = not following
        if len(current) < TAG:
            raise ArtifactCipherError("the encrypted artifact is truncated")
        try:
            yield aes.decrypt(_nonce(header.nonce_prefix, index, last), current, aad)
        except InvalidTag:
            raise ArtifactCipherError(
                "the key does not decrypt this artifact (wrong key, or the file was altered "
                "or truncated)"
            ) from None
        if last:
            return
        index += 1
        current = following


def decrypt_to_memory(path: str | os.PathLike[str], data_key: bytes) -> io.BytesIO:
    """The whole plaintext in memory (a replica loads its model from it), at offset 0."""
    buf = io.BytesIO()
    with open(path, "rb") as fh:
        for part in iter_plaintext(fh, data_key):
            buf.write(part)
    buf.seek(0)
    return buf
