"""HTTP Content-Encoding of request bodies, undone within a size limit.

A compressed body is small on the wire and may be huge inside (1 GB of zeros gzips to 1 MB):
inflating goes through `zlib.decompressobj(...).decompress(data, max_length)`, so at most
`max_bytes + 1` bytes are ever produced and a bomb costs O(max_bytes) memory and time.
"""

from __future__ import annotations

import zlib

ACCEPTED = ("identity", "gzip", "deflate")
_GZIP = 16 + zlib.MAX_WBITS
_ZLIB = zlib.MAX_WBITS
_RAW = -zlib.MAX_WBITS


class EncodingError(Exception):
    """The body cannot be decoded: 400 (corrupt), 413 (over the limit), 415 (unknown coding)."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def decode_content(body: bytes, encoding: str, max_bytes: int) -> bytes:
    """`body` as sent under `Content-Encoding: encoding`, decoded; at most `max_bytes` long.

    Codings listed as "gzip, deflate" were applied in that order and are undone in reverse.
    """
    codings = [c.strip().lower() for c in (encoding or "").split(",")]
    data = body
    for coding in reversed([c for c in codings if c]):
        if coding == "identity":
            continue
        if coding == "gzip" or coding == "x-gzip":
            data = _gunzip(data, max_bytes)
        elif coding == "deflate":
            data = _inflate_all(data, _ZLIB if _is_zlib(data) else _RAW, max_bytes)
        else:
            raise EncodingError(
                f"unsupported Content-Encoding '{coding}': use {', '.join(ACCEPTED)}",
                status=415,
            )
    if len(data) > max_bytes:
        raise EncodingError(f"the body is larger than {max_bytes} bytes", status=413)
    return data


def _is_zlib(data: bytes) -> bool:
    # RFC 1950 header: method 8 (deflate) and the two bytes a multiple of 31. "deflate" is
    # meant to be zlib-wrapped, but some clients send raw deflate; both are accepted.
    return len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0


def _gunzip(data: bytes, max_bytes: int) -> bytes:
    # A gzip file may hold several members one after the other.
    out = bytearray()
    rest = data
    while True:
        rest = _inflate(rest, _GZIP, max_bytes, out)
        if not rest.strip(b"\0"):  # some writers pad the end with zeros
            return bytes(out)


def _inflate_all(data: bytes, wbits: int, max_bytes: int) -> bytes:
    out = bytearray()
    rest = _inflate(data, wbits, max_bytes, out)
    if rest:
        raise EncodingError("the compressed body has data after its end")
    return bytes(out)


def _inflate(data: bytes, wbits: int, max_bytes: int, out: bytearray) -> bytes:
    """Inflate one stream of `data` onto `out`; returns the bytes after the stream's end."""
    inflater = zlib.decompressobj(wbits)
    pending = data
    try:
        while not inflater.eof:
            # max_length 0 would mean "no limit": `out` is at most max_bytes here, so it is >= 1.
            chunk = inflater.decompress(pending, max_bytes + 1 - len(out))
            pending = inflater.unconsumed_tail
            out += chunk
            if len(out) > max_bytes:
                raise EncodingError(
                    f"the decompressed body is larger than {max_bytes} bytes", status=413
                )
            if not chunk and not pending:
                break
    except zlib.error as exc:
        raise EncodingError(f"the compressed body is corrupt: {exc}") from exc
    if not inflater.eof:
        raise EncodingError("the compressed body is truncated")
    return inflater.unused_data
