"""Recognise what an uploaded model file is, from its bytes alone.

The upload's file name and the browser's content type are chosen by the
uploader, so they are never trusted: a ``model.pkl`` may be a zip, a PDF or a
compressed joblib dump. :func:`detect_format` looks only at the content and
answers one of

* ``pickle`` -- a plain pickle stream (protocol 0 to 5);
* ``joblib`` -- a pickle written by ``joblib.dump``: either compressed (zlib,
  gzip, bz2, xz, lzma, or the legacy ``ZF`` container of joblib < 0.10), or
  uncompressed with numpy arrays stored inline as ``NumpyArrayWrapper``
  objects followed by raw array bytes (which ``pickle.load`` cannot read);
* ``skops`` -- a zip archive holding ``schema.json``;
* ``rejected`` -- anything else, with a message saying what was found.

The detection is deliberately cheap (it reads a small head of the file, plus a
``find`` over a memory map for the joblib marker) and it decides nothing about
safety: :mod:`models_app.validation.scan` does that. It must however classify
files *exactly the way the loaders will*, because the scanner decides how to
walk the bytes from this answer: the compression prefixes below are the ones
``joblib.load`` itself tests, in the same order.
"""

from __future__ import annotations

import bz2
import io
import lzma
import mmap
import os
import pickletools
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

FORMAT_PICKLE = "pickle"
FORMAT_JOBLIB = "joblib"
FORMAT_SKOPS = "skops"
FORMAT_REJECTED = "rejected"

#: How many bytes of the file (or of its decompressed stream) are examined.
HEAD_BYTES = 64 * 1024

# Magic numbers, as joblib.compressor defines and tests them (joblib checks
# the legacy "ZF" container first, then the compressors in registration order:
# zlib, gzip, bz2, lzma, xz, lz4).
ZFILE_PREFIX = b"ZF"
ZLIB_PREFIX = b"\x78"
GZIP_PREFIX = b"\x1f\x8b"
BZ2_PREFIX = b"BZ"
LZMA_PREFIX = b"\x5d\x00"
XZ_PREFIX = b"\xfd\x37\x7a\x58\x5a\x00"
LZ4_PREFIX = b"\x04\x22\x4d\x18"
ZIP_PREFIXES = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")

#: Length of the hexadecimal size field after "ZF" in joblib < 0.10 files
#: (``len(hex(2**64))``, see joblib.numpy_pickle_compat).
ZFILE_LENGTH_FIELD = 19

#: Byte strings that only appear in joblib dumps which stored numpy arrays.
JOBLIB_MARKERS = (b"NumpyArrayWrapper", b"NDArrayWrapper")

# Opcodes a protocol 0/1 pickle can start with (protocol 2+ starts with PROTO).
_PICKLE_OPCODES = frozenset(op.code.encode("latin-1") for op in pickletools.opcodes)

# Well-known file signatures, used only to write a helpful rejection message.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"\x7fELF", "an ELF executable"),
    (b"MZ", "a Windows executable"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (e.g. a Keras .h5 model)"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"PAR1", "a Parquet file"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\xca\xfe\xba\xbe", "a Java class or Mach-O binary"),
    (b"#!", "a script"),
    (b"<?xml", "an XML document"),
    (b"<!DOCTYPE", "an HTML document"),
    (b"<html", "an HTML document"),
    (b"{", "JSON or other text"),
)


@dataclass(frozen=True)
class FormatInfo:
    """What :func:`detect_format` found.

    ``format`` is one of ``pickle``, ``joblib``, ``skops`` or ``rejected``;
    ``message`` explains the decision (for a rejection: what the file looks
    like instead). ``compression`` names the joblib compressor (``zlib``,
    ``gzip``, ``bz2``, ``xz``, ``lzma``) or is ``None``; ``legacy_zfile`` marks
    joblib < 0.10 "ZF" files, whose loader reads arrays from companion files
    rather than inline. ``pickle_protocol`` is the protocol announced by the
    first PROTO opcode, when there is one.
    """

    format: str
    message: str
    compression: str | None = None
    pickle_protocol: int | None = None
    legacy_zfile: bool = False

    @property
    def ok(self) -> bool:
        """True unless the file was rejected."""
        return self.format != FORMAT_REJECTED


def describe_bytes(head: bytes) -> str:
    """Say in words what a file starting with *head* looks like.

    Used for rejection messages, so that a user who uploaded the wrong file
    ("a PDF document") understands the problem without a hex dump.
    """
    if not head:
        return "empty"
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return what
    if len(head) > 262 and head[257:262] == b"ustar":
        return "a tar archive"
    if len(head) >= 10 and head[8:10] == b'{"':
        return "a safetensors file"
    if head.startswith(ZIP_PREFIXES):
        return "a zip archive"
    sample = head[:4096]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        # The sample may end in the middle of a multi-byte character.
        try:
            text = sample[:-3].decode("utf-8")
        except UnicodeDecodeError:
            text = ""
    if text and sum(ch.isprintable() or ch in "\r\n\t" for ch in text) >= 0.95 * len(text):
        stripped = text.lstrip()
        if stripped.startswith(("{", "[")):
            return "JSON text"
        if "," in text and "\n" in text:
            return "a text file (CSV?)"
        return "a text file"
    return "unrecognised binary data"


def _rejected(head: bytes, why: str | None = None) -> FormatInfo:
    """Build a rejection naming the first bytes and what they look like."""
    shown = head[:8]
    what = describe_bytes(head)
    message = (
        f"file starts with {shown!r} \u2014 looks like {what}, not a pickle/joblib/skops model"
    )
    if why:
        message = f"{message} ({why})"
    return FormatInfo(FORMAT_REJECTED, message)


def looks_like_pickle(head: bytes, *, complete: bool) -> tuple[bool, int | None, str]:
    """Decide whether *head* is the start of a pickle stream.

    Protocol 2+ pickles start with ``PROTO`` (``0x80`` then the protocol
    number). Protocol 0/1 pickles have no header, so the first opcodes are
    decoded with :func:`pickletools.genops` (which only parses, never
    executes): text, PDFs or random bytes fail within a few opcodes.
    *complete* says whether *head* is the whole stream, in which case running
    out of data after several good opcodes still counts as "a (truncated)
    pickle" -- the scanner then reports the truncation precisely.

    Returns ``(is_pickle, protocol, reason_if_not)``; the protocol is None
    for header-less (protocol 0/1) streams.
    """
    if not head:
        return False, None, "no data"
    if head[0] == 0x80:
        if len(head) < 2:
            return True, None, ""
        proto = head[1]
        if proto <= 5:  # the loaders accept any protocol up to 5 here
            return True, proto, ""
        return False, None, f"PROTO opcode announces unsupported pickle protocol {proto}"
    if head[:1] not in _PICKLE_OPCODES:
        return False, None, f"first byte {head[:1]!r} is not a pickle opcode"
    parsed = 0
    try:
        for opcode, _arg, _pos in pickletools.genops(io.BytesIO(head)):
            parsed += 1
            # Stop early: protocol 0/1 streams never contain joblib's raw
            # array bytes, but BUILD is where they would start.
            if opcode.name in ("STOP", "BUILD") or parsed >= 64:
                break
    except ValueError as exc:
        message = str(exc)
        ran_out = "remain" in message or "newline" in message or "EOF" in message
        if ran_out and (not complete or parsed >= 3):
            return True, None, ""
        return False, None, f"not a valid pickle opcode sequence: {message}"
    return True, None, ""


def _check_zlib_header(head: bytes) -> str | None:
    """Validate the two-byte zlib header (RFC 1950), returning a problem or None."""
    if len(head) < 2:
        return "truncated zlib header"
    cmf, flg = head[0], head[1]
    if cmf & 0x0F != 8 or ((cmf << 8) | flg) % 31 != 0:
        return "invalid zlib header"
    return None


def _decompress_head(data: bytes, compression: str) -> bytes:
    """Decompress at most :data:`HEAD_BYTES` of output from the start of *data*.

    The output bound makes this safe against decompression bombs.
    """
    if compression == "zlib":
        return zlib.decompressobj(zlib.MAX_WBITS).decompress(data, HEAD_BYTES)
    if compression == "gzip":
        return zlib.decompressobj(31).decompress(data, HEAD_BYTES)
    if compression == "bz2":
        return bz2.BZ2Decompressor().decompress(data, HEAD_BYTES)
    if compression in ("xz", "lzma"):
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_AUTO, memlimit=256 * 2**20)
        return decompressor.decompress(data, HEAD_BYTES)
    raise ValueError(f"unknown compression {compression!r}")


def _compression_of(head: bytes) -> str | None:
    """Return joblib's name for the compressor whose prefix *head* starts with."""
    if head.startswith(ZLIB_PREFIX):
        return "zlib"
    if head.startswith(GZIP_PREFIX):
        return "gzip"
    if head.startswith(BZ2_PREFIX):
        return "bz2"
    if head.startswith(LZMA_PREFIX):
        return "lzma"
    if head.startswith(XZ_PREFIX[:5]):
        return "xz"
    if head.startswith(LZ4_PREFIX):
        return "lz4"
    return None


def parse_zfile_header(head: bytes) -> tuple[int, int] | None:
    """Parse the legacy joblib "ZF" header: ``(declared_length, data_offset)``.

    Layout (joblib.numpy_pickle_compat.write_zfile): ``b"ZF"``, the
    uncompressed length as ``hex()`` left-justified to 19 characters, then
    (for files written by joblib <= 0.8.4 under Python 2) an optional extra
    space, then a zlib stream. Returns ``None`` if the header is not valid.
    """
    field = head[len(ZFILE_PREFIX) : len(ZFILE_PREFIX) + ZFILE_LENGTH_FIELD]
    if len(field) != ZFILE_LENGTH_FIELD:
        return None
    try:
        text = field.decode("ascii").strip()
        length = int(text, 16)
    except (UnicodeDecodeError, ValueError):
        return None
    if length < 0:
        return None
    offset = len(ZFILE_PREFIX) + ZFILE_LENGTH_FIELD
    if head[offset : offset + 1] == b" ":
        offset += 1
    return length, offset


def _has_joblib_marker(path: Path) -> bool:
    """Whether the file contains a joblib array-wrapper class name anywhere."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mem:
        return any(mem.find(marker) != -1 for marker in JOBLIB_MARKERS)


def _detect_zip(path: Path, head: bytes) -> FormatInfo:
    """Classify a zip archive: a skops model if it holds ``schema.json``."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        return FormatInfo(FORMAT_REJECTED, f"file starts like a zip archive but is not one: {exc}")
    if "schema.json" in names:
        return FormatInfo(FORMAT_SKOPS, f"skops archive with {len(names)} entries")
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    listing = f"entries: {shown}" if names else "the archive is empty"
    return FormatInfo(
        FORMAT_REJECTED,
        f"zip archive without schema.json ({listing}) \u2014 not a skops model",
    )


def _detect_compressed(path: Path, head: bytes, compression: str) -> FormatInfo:
    """Classify a compressed joblib dump: its decompressed start must be a pickle."""
    if compression == "lz4":
        return FormatInfo(
            FORMAT_REJECTED,
            "file is lz4-compressed (joblib compress='lz4'); lz4 dumps are not "
            "supported \u2014 re-save with compress=('zlib', 3) or another compressor",
        )
    if compression == "zlib":
        problem = _check_zlib_header(head)
        if problem:
            return _rejected(head, problem)
    if compression == "bz2" and not (len(head) >= 4 and head[2:3] == b"h" and head[3:4].isdigit()):
        return _rejected(head, "starts with 'BZ' but is not a bz2 stream")
    try:
        inner = _decompress_head(head, compression)
    except (zlib.error, OSError, lzma.LZMAError, EOFError, ValueError) as exc:
        return FormatInfo(
            FORMAT_REJECTED, f"file looks {compression}-compressed but does not decompress: {exc}"
        )
    is_pickle, proto, why = looks_like_pickle(inner, complete=False)
    if not is_pickle:
        return FormatInfo(
            FORMAT_REJECTED,
            f"{compression}-compressed data starts with {inner[:8]!r} \u2014 looks like "
            f"{describe_bytes(inner)}, not a joblib/pickle model ({why})",
        )
    return FormatInfo(
        FORMAT_JOBLIB,
        f"{compression}-compressed joblib dump",
        compression=compression,
        pickle_protocol=proto,
    )


def _detect_zfile(path: Path, head: bytes) -> FormatInfo:
    """Classify a joblib < 0.10 "ZF" file (zlib with a length header)."""
    parsed = parse_zfile_header(head)
    if parsed is None:
        return _rejected(head, "starts with 'ZF' but has no valid joblib length header")
    _length, offset = parsed
    problem = _check_zlib_header(head[offset:])
    if problem:
        return _rejected(head, f"legacy joblib 'ZF' file with {problem}")
    try:
        inner = _decompress_head(head[offset:], "zlib")
    except zlib.error as exc:
        return FormatInfo(FORMAT_REJECTED, f"legacy joblib 'ZF' file does not decompress: {exc}")
    is_pickle, proto, why = looks_like_pickle(inner, complete=False)
    if not is_pickle:
        return FormatInfo(
            FORMAT_REJECTED, f"legacy joblib 'ZF' file does not contain a pickle ({why})"
        )
    return FormatInfo(
        FORMAT_JOBLIB,
        "legacy joblib (< 0.10) zlib 'ZF' dump",
        compression="zlib",
        pickle_protocol=proto,
        legacy_zfile=True,
    )


def detect_format(path: str | os.PathLike[str]) -> FormatInfo:
    """Detect the model format of the file at *path* from its content.

    Never raises for bad content: every problem is a ``rejected`` result with
    a message meant for the uploader. (An unreadable path still raises
    ``OSError``: that is a server problem, not a bad upload.)
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return FormatInfo(FORMAT_REJECTED, "file is empty (0 bytes)")
    with open(path, "rb") as fh:
        head = fh.read(HEAD_BYTES)

    if head.startswith(ZIP_PREFIXES):
        return _detect_zip(path, head)
    if head.startswith(ZFILE_PREFIX):
        return _detect_zfile(path, head)
    compression = _compression_of(head)
    if compression is not None:
        return _detect_compressed(path, head, compression)

    is_pickle, proto, why = looks_like_pickle(head, complete=size <= len(head))
    if not is_pickle:
        return _rejected(head, why)
    if _has_joblib_marker(path):
        return FormatInfo(
            FORMAT_JOBLIB,
            "uncompressed joblib dump with inline numpy arrays",
            pickle_protocol=proto,
        )
    label = f"protocol {proto}" if proto is not None else "protocol 0/1, no PROTO header"
    return FormatInfo(FORMAT_PICKLE, f"pickle stream ({label})", pickle_protocol=proto)
