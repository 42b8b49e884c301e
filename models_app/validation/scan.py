"""Static safety scan of uploaded scikit-learn model files.

Loading a pickle runs code: the stream names importable callables (GLOBAL,
STACK_GLOBAL, INST...) and calls them (REDUCE, OBJ, NEWOBJ, BUILD). So an
uploaded model is never loaded to find out what it is. Instead this module
walks the pickle opcodes with a *symbolic* stack machine -- it mirrors what
``pickle.Unpickler`` / ``joblib``'s ``NumpyUnpickler`` would do, but pushes
descriptions of values instead of values and never imports or calls anything
-- and checks every global the stream could import against an allowlist of
the classes needed to rebuild scikit-learn models.

Why a symbolic machine rather than a grep for GLOBAL opcodes:

* STACK_GLOBAL takes its module and name from the stack, and they may have
  been stored in the memo long before (``BINGET``): only tracking the stack
  and memo resolves them; anything not statically a string is an offence.
* joblib writes raw numpy array bytes *inside* the stream, right after the
  ``BUILD`` of each ``NumpyArrayWrapper``. Their length follows from the
  wrapper's shape and dtype, which are themselves pickled objects; read them
  wrong and an attacker can hide opcodes in "array data" (or array data can
  pose as opcodes). Object-dtype arrays are a nested pickle instead.
* A file may hold more than one stream (a clean model followed by an appended
  payload), may be truncated, or may use pickle frames to make the pure-Python
  unpickler joblib uses read bytes in a different order than a naive linear
  scan. All of these are walked, or rejected when ambiguous.

Anything the walker cannot model exactly is rejected rather than guessed at:
the scan answers "safe to hand to the loader" only for ordinary model files.
It is a first line of defence; loading should still happen with a restricted
``find_class`` (see :func:`check_global`) in an isolated process.

skops files are zip archives whose ``schema.json`` describes the objects;
they are audited with ``skops.io.get_untrusted_types`` against the same
allowlist, after checking the archive itself (zip bombs, path traversal).
"""

from __future__ import annotations

import _compat_pickle
import json
import lzma
import os
import pickletools
import re
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from models_app.validation.formats import (
    FORMAT_JOBLIB,
    FORMAT_PICKLE,
    FORMAT_SKOPS,
    FormatInfo,
    detect_format,
    parse_zfile_header,
)
from models_app.validation.policy import (
    ARRAY_CLASSES,
    CLASS_FIRST_ARG,
    NUMPY_ARRAY_WRAPPER,
    canonical_module,
    check_global,
    check_wrapper_fields,
)

__all__ = [
    "DEFAULT_MAX_DECOMPRESSED_BYTES",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_OPCODES",
    "DEFAULT_MAX_RATIO",
    "Offence",
    "ScanReport",
    "check_global",
    "scan_file",
]

# --------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------

#: Largest total of decompressed bytes (joblib compression, skops zip members).
DEFAULT_MAX_DECOMPRESSED_BYTES = 1024**3
#: Largest decompressed/compressed size ratio, enforced once the output
#: exceeds :data:`RATIO_GRACE_BYTES` (small files legitimately compress well).
DEFAULT_MAX_RATIO = 1000.0
RATIO_GRACE_BYTES = 1024**2
#: Most opcodes walked in one file, nested streams included.
DEFAULT_MAX_OPCODES = 5_000_000
#: Deepest MARK nesting and deepest nesting of built containers/objects.
#: Real models nest a few dozen levels; deeper structures are a DoS vector
#: for every recursive consumer (repr, deepcopy, json) downstream.
DEFAULT_MAX_DEPTH = 200
#: Most pickle streams walked in one file (only one is legitimate).
MAX_STREAMS = 16
#: Deepest chain of joblib object-array sub-pickles.
MAX_NESTED_PICKLES = 4
#: Longest text line (protocol 0 opcodes) and longest string kept in memory.
MAX_LINE_BYTES = 64 * 1024**2
MAX_KEPT_STRING = 1024**2
#: Most entries in a skops archive.
MAX_ZIP_ENTRIES = 100_000

_CHUNK = 1024**2
_MAX_READ = 16 * 1024**2

# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


@dataclass
class Offence:
    """One reason the file is unsafe: a global (``module.name``) or an opcode."""

    name: str
    reason: str
    offset: int | None = None

    def __str__(self) -> str:
        where = f" (offset {self.offset})" if self.offset is not None else ""
        return f"{self.name}: {self.reason}{where}"


@dataclass
class ScanReport:
    """Result of :func:`scan_file`; ``ok`` is True only with no offence and no error.

    * ``format`` -- ``pickle``, ``joblib`` or ``skops`` (None if unrecognised).
      ``joblib`` means the file MUST be loaded with ``joblib.load``: it is
      compressed or holds inline array bytes that ``pickle.load`` would
      misread as opcodes. ``pickle`` files hold no array wrapper, so
      ``pickle.load`` and ``joblib.load`` read exactly the opcodes scanned.
    * ``compression`` -- joblib compressor (``zlib``, ``gzip``, ``bz2``,
      ``xz``, ``lzma``) or None.
    * ``globals_found`` -- every ``module.name`` the file would import, sorted.
    * ``offending`` -- refused globals and dangerous opcodes, with reasons.
    * ``errors`` -- format, integrity and limit problems (truncated stream,
      trailing data, decompression bomb, too deep...).
    * ``streams`` -- number of top-level pickle streams (1 for a valid file).
    * ``sklearn_version`` -- the ``_sklearn_version`` recorded in the pickled
      estimator state (or skops schema), if any.
    * ``numpy_major`` -- 2 if the pickle references ``numpy._core``, 1 if
      ``numpy.core``, else None.
    * ``estimator_class`` -- class of the top-level object, e.g.
      ``sklearn.pipeline.Pipeline``; None for plain containers such as a dict.
    * ``opcodes`` / ``decompressed_bytes`` -- work done, for diagnostics.
    * ``called`` -- every global the stream calls (REDUCE, NEWOBJ, OBJ, INST);
      ``state_keys`` -- per class, the keys its BUILD states set. The pipeline checks
      both against the environment's exact allowlist (:func:`policy.check_scanned`).
    * ``skops_untrusted_types`` -- what ``skops.io.get_untrusted_types``
      listed; when ``ok`` these were all allowlisted and can be passed as
      ``trusted=`` to ``skops.io.load``.
    """

    ok: bool
    format: str | None
    compression: str | None = None
    globals_found: list[str] = field(default_factory=list)
    offending: list[Offence] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    streams: int = 0
    sklearn_version: str | None = None
    numpy_major: int | None = None
    estimator_class: str | None = None
    opcodes: int = 0
    decompressed_bytes: int | None = None
    skops_untrusted_types: list[str] = field(default_factory=list)
    called: list[str] = field(default_factory=list)
    state_keys: dict[str, list[str]] = field(default_factory=dict)

    @property
    def problems(self) -> list[str]:
        """All reasons for rejection, as human-readable lines."""
        return [str(offence) for offence in self.offending] + list(self.errors)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (for storing on the model version)."""
        return asdict(self)


# --------------------------------------------------------------------------
# Errors raised while walking
# --------------------------------------------------------------------------


class _ScanError(Exception):
    """The walk cannot continue; the message is shown to the uploader."""


class _Truncated(_ScanError):
    pass


class _Malformed(_ScanError):
    pass


class _LimitExceeded(_ScanError):
    pass


class _Bomb(_ScanError):
    pass


# --------------------------------------------------------------------------
# Byte sources
# --------------------------------------------------------------------------


class _DecompressingReader:
    """A ``read(n)`` over a compressed stream, bounded in size and ratio.

    joblib's zlib/gzip readers accept a single stream; bz2/xz/lzma accept
    concatenated streams like the stdlib file classes joblib uses. Data after
    the end of the compressed stream(s) is rejected rather than ignored: the
    loader would skip it, so it can only be there to confuse tools.
    """

    def __init__(
        self,
        raw: BinaryIO,
        compression: str,
        *,
        compressed_size: int,
        max_bytes: int,
        max_ratio: float,
    ) -> None:
        self._raw = raw
        self._compression = compression
        self._zlib = compression in ("zlib", "gzip")
        self._multi = not self._zlib
        self._dec = self._new_decompressor()
        self._pending = b""
        self._done = False
        self._compressed_size = max(compressed_size, 1)
        self._max_bytes = max_bytes
        self._max_ratio = max_ratio
        self.total = 0

    def _new_decompressor(self) -> Any:
        if self._compression == "zlib":
            return zlib.decompressobj(zlib.MAX_WBITS)
        if self._compression == "gzip":
            return zlib.decompressobj(31)
        if self._compression == "bz2":
            import bz2

            return bz2.BZ2Decompressor()
        # lzma.FORMAT_AUTO reads both .xz and legacy .lzma, as lzma.LZMAFile does.
        # The memory limit stops an xz header from demanding a huge dictionary.
        return lzma.LZMADecompressor(format=lzma.FORMAT_AUTO, memlimit=512 * 1024**2)

    def _account(self, size: int) -> None:
        self.total += size
        if self.total > self._max_bytes:
            raise _Bomb(
                f"decompression bomb: {self._compression} data expands beyond the limit of "
                f"{self._max_bytes:,} bytes (file is {self._compressed_size:,} bytes)"
            )
        if self.total > RATIO_GRACE_BYTES and self.total > self._max_ratio * self._compressed_size:
            raise _Bomb(
                f"decompression bomb: {self._compression} data expands more than "
                f"{self._max_ratio:g} times ({self.total:,} bytes from a "
                f"{self._compressed_size:,}-byte file)"
            )

    def read(self, n: int) -> bytes:
        """Return up to *n* decompressed bytes; ``b""`` at the end."""
        try:
            return self._read(n)
        except (zlib.error, OSError, lzma.LZMAError, EOFError, ValueError) as exc:
            raise _Malformed(f"corrupt {self._compression} data: {exc}") from exc

    def _read(self, n: int) -> bytes:
        # Never produce more than one byte past the limit, however big the ask.
        n = max(1, min(n, self._max_bytes - self.total + 1))
        while not self._done:
            dec = self._dec
            if dec.eof:
                leftover = dec.unused_data + self._pending
                self._pending = b""
                if not leftover:
                    leftover = self._raw.read(_CHUNK)
                if not leftover:
                    self._done = True
                    break
                if not self._multi:
                    raise _Malformed(
                        f"{len(leftover)}+ bytes of data after the end of the "
                        f"{self._compression} stream"
                    )
                self._dec = self._new_decompressor()
                self._pending = leftover
                continue
            out = dec.decompress(self._pending, n)
            if self._zlib:
                self._pending = dec.unconsumed_tail
                needs_input = not self._pending
            else:
                self._pending = b""
                needs_input = dec.needs_input
            if out:
                self._account(len(out))
                return out
            if dec.eof:
                continue
            if needs_input:
                chunk = self._raw.read(_CHUNK)
                if not chunk:
                    raise _Truncated(
                        f"truncated: the {self._compression} stream ends before its end marker"
                    )
                self._pending += chunk
        return b""


class _Source:
    """Buffered reader over a raw byte stream that knows its absolute offset.

    Big payloads (array bytes, long strings) are skipped, never read into
    memory at once -- by seeking when the raw stream is a plain file of known
    *size*, in bounded chunks otherwise -- and a length field larger than what
    is left simply ends in a "truncated" error.
    """

    __slots__ = ("_raw", "_buf", "_i", "_base", "_eof", "_size")

    def __init__(self, raw: Any, size: int | None = None) -> None:
        self._raw = raw
        self._size = size
        self._buf = b""
        self._i = 0
        self._base = 0
        self._eof = False

    @property
    def pos(self) -> int:
        return self._base + self._i

    def _truncated(self, needed: int) -> _Truncated:
        return _Truncated(
            f"truncated: the data ends at offset {self.pos + len(self._buf) - self._i:,} "
            f"but {needed:,} more bytes were expected from offset {self.pos:,}"
        )

    def _fill(self, need: int) -> None:
        """Make at least *need* unread bytes available, unless the stream ends."""
        rest = self._buf[self._i :]
        parts = [rest]
        have = len(rest)
        while have < need and not self._eof:
            chunk = self._raw.read(min(max(_CHUNK, need - have), _MAX_READ))
            if not chunk:
                self._eof = True
                break
            parts.append(chunk)
            have += len(chunk)
        self._base += self._i
        self._buf = b"".join(parts)
        self._i = 0

    def read(self, n: int) -> bytes:
        i = self._i
        end = i + n
        if end <= len(self._buf):
            self._i = end
            return self._buf[i:end]
        if self._size is not None and self.pos + n > self._size:
            raise self._truncated(n)
        self._fill(n)
        if len(self._buf) < n:
            raise self._truncated(n)
        self._i = n
        return self._buf[:n]

    def read_byte(self) -> int:
        """Next byte as an int, or -1 at the end of the stream."""
        if self._i < len(self._buf):
            byte = self._buf[self._i]
            self._i += 1
            return byte
        self._fill(1)
        if not self._buf:
            return -1
        self._i = 1
        return self._buf[0]

    def skip(self, n: int) -> None:
        available = len(self._buf) - self._i
        if n <= available:
            self._i += n
            return
        if self._size is not None and self.pos + n > self._size:
            raise self._truncated(n)
        start = self.pos
        n -= available
        self._base += len(self._buf)
        self._buf = b""
        self._i = 0
        if self._size is not None:
            self._raw.seek(n, os.SEEK_CUR)
            self._base += n
            return
        while n > 0:
            chunk = self._raw.read(min(n, _MAX_READ))
            if not chunk:
                self._eof = True
                raise _Truncated(
                    f"truncated: the data ends inside a block of {n:,} bytes that starts at "
                    f"offset {start:,}"
                )
            n -= len(chunk)
            self._base += len(chunk)

    def readline(self) -> bytes:
        """Read through the next newline (included); error if there is none."""
        idx = self._buf.find(b"\n", self._i)
        if idx >= 0:
            line = self._buf[self._i : idx + 1]
            self._i = idx + 1
            return line
        # Long line: collect chunks without re-joining the buffer each time.
        start = self.pos
        parts = [self._buf[self._i :]]
        have = len(parts[0])
        self._base += len(self._buf)
        self._buf = b""
        self._i = 0
        while True:
            if have > MAX_LINE_BYTES:
                raise _LimitExceeded(
                    f"text line at offset {start:,} is longer than {MAX_LINE_BYTES:,} bytes"
                )
            chunk = b"" if self._eof else self._raw.read(_CHUNK)
            if not chunk:
                self._eof = True
                raise _Truncated(f"truncated: no newline after offset {start:,}")
            idx = chunk.find(b"\n")
            if idx >= 0:
                parts.append(chunk[: idx + 1])
                self._buf = chunk
                self._i = idx + 1
                return b"".join(parts)
            parts.append(chunk)
            have += len(chunk)
            self._base += len(chunk)

    def at_eof(self) -> bool:
        if self._i < len(self._buf):
            return False
        self._fill(1)
        return not self._buf


# --------------------------------------------------------------------------
# Symbolic values
# --------------------------------------------------------------------------


class _Global:
    """An importable object named by the pickle (never imported here)."""

    __slots__ = ("module", "name", "full")

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name
        self.full = f"{module}.{name}"


class _Tuple:
    __slots__ = ("items",)

    def __init__(self, items: tuple[Any, ...]) -> None:
        self.items = items


class _List:
    __slots__ = ("items",)

    def __init__(self, items: list[Any]) -> None:
        self.items = items


class _Dict:
    __slots__ = ("items",)

    def __init__(self, items: list[tuple[Any, Any]]) -> None:
        self.items = items

    def get(self, key: str) -> Any:
        """Value of the last entry for *key* (dict semantics), or None."""
        found = None
        for k, v in self.items:
            if k == key and type(k) is str:
                found = v
        return found

    def has(self, key: str) -> bool:
        return any(type(k) is str and k == key for k, _ in self.items)


class _Set:
    __slots__ = ("items", "frozen")

    def __init__(self, items: list[Any], frozen: bool) -> None:
        self.items = items
        self.frozen = frozen


class _Blob:
    """A bytes/str/int payload that was skipped rather than kept."""

    __slots__ = ("kind", "size")

    def __init__(self, kind: str, size: int) -> None:
        self.kind = kind
        self.size = size


class _Opaque:
    """A value the scan cannot know (persistent id, extension code...)."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what


class _Obj:
    """An object the loader would create by calling a global.

    ``cls`` is the ``module.name`` of its class when statically known.
    ``attrs`` is only used for joblib's NumpyArrayWrapper: its attributes, as
    the real loader would see them, decide how many array bytes follow.
    """

    __slots__ = ("cls", "func", "args", "state", "extra", "attrs")

    def __init__(self, cls: str | None, func: Any, args: Any) -> None:
        self.cls = cls
        self.func = func
        self.args = args
        self.state: Any = None
        self.extra: list[Any] = []
        self.attrs: dict[str, Any] | None = None


_CONTAINERS = (_Tuple, _List, _Dict, _Set, _Obj)
_DTYPE_STR = re.compile(r"[<>|=]?([biufcOSUVMm])([0-9]+)")
_WRAPPER_INIT_PARAMS = (
    "subclass",
    "shape",
    "order",
    "dtype",
    "allow_mmap",
    "numpy_array_alignment_bytes",
)


def _is_object_dtype(value: Any) -> bool:
    """Whether a symbolic value is ``numpy.dtype('O...')``."""
    return (
        isinstance(value, _Obj)
        and isinstance(value.func, _Global)
        and value.func.full == "numpy.dtype"
        and isinstance(value.args, _Tuple)
        and bool(value.args.items)
        and type(value.args.items[0]) is str
        and value.args.items[0].lstrip("<>|=").startswith("O")
    )


def _describe(value: Any) -> str:
    """What a symbolic value is, with an article, for messages."""
    if isinstance(value, _Global):
        return f"the global {value.full}"
    if isinstance(value, _Obj):
        if isinstance(value.func, _Global):
            return f"an object made by {value.func.full}(...)"
        return f"an instance of {value.cls or 'an unknown class'}"
    if isinstance(value, _Blob):
        return f"a {value.kind} payload"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "None"
    return {
        _Tuple: "a tuple",
        _List: "a list",
        _Dict: "a dict",
        _Set: "a set",
        _Opaque: "an opaque value",
    }.get(type(value), f"a {type(value).__name__}")


def _children(value: Any) -> list[Any]:
    if isinstance(value, (_Tuple, _List, _Set)):
        return list(value.items)
    if isinstance(value, _Dict):
        return [item for pair in value.items for item in pair]
    if isinstance(value, _Obj):
        return [value.args, value.state, *value.extra]
    return []


def _nesting_depth(root: Any, limit: int) -> int:
    """Longest chain of nested containers/objects under *root* (iterative).

    Raises :class:`_LimitExceeded` as soon as a chain deeper than *limit* is
    seen. Cycles (legal in pickles) are cut.
    """
    if not isinstance(root, _CONTAINERS):
        return 0
    depth_of: dict[int, int] = {}
    on_path = {id(root)}
    frames: list[list[Any]] = [[root, iter(_children(root)), 0]]
    while frames:
        frame = frames[-1]
        for child in frame[1]:
            if not isinstance(child, _CONTAINERS):
                continue
            key = id(child)
            if key in depth_of:
                frame[2] = max(frame[2], depth_of[key])
                continue
            if key in on_path:
                continue
            on_path.add(key)
            frames.append([child, iter(_children(child)), 0])
            if len(frames) > limit:
                raise _LimitExceeded(f"objects are nested more than {limit} levels deep")
            break
        else:
            frames.pop()
            on_path.discard(id(frame[0]))
            depth = frame[2] + 1
            depth_of[id(frame[0])] = depth
            if frames:
                frames[-1][2] = max(frames[-1][2], depth)
    return depth_of[id(root)]


# --------------------------------------------------------------------------
# The walker
# --------------------------------------------------------------------------

_STOP = object()
_OPCODE_NAMES = {ord(op.code): op.name for op in pickletools.opcodes}


class _ScanState:
    """What one file's walk has found so far, shared by all its streams."""

    def __init__(self, *, max_opcodes: int, max_depth: int, max_array_bytes: int) -> None:
        self.max_opcodes = max_opcodes
        self.max_depth = max_depth
        self.max_array_bytes = max_array_bytes
        self.opcodes = 0
        self.globals_found: set[str] = set()
        self.offences: dict[tuple[str, str], Offence] = {}
        self.versions: list[str] = []
        self.called: set[str] = set()
        self.state_keys: dict[str, set[str]] = {}
        self.saw_wrapper = False
        self._globals: dict[tuple[str, str], _Global] = {}

    def offend(self, name: str, reason: str, offset: int | None) -> None:
        self.offences.setdefault((name, reason), Offence(name, reason, offset))

    def resolve_global(self, module: str, name: str, offset: int) -> _Global:
        key = (module, name)
        glob = self._globals.get(key)
        if glob is None:
            glob = _Global(module, name)
            self._globals[key] = glob
            self.globals_found.add(glob.full)
            reason = check_global(module, name)
            if reason is not None:
                self.offend(glob.full, reason, offset)
            if glob.full == NUMPY_ARRAY_WRAPPER:
                self.saw_wrapper = True
        return glob


class _StreamWalker:
    """Walks one pickle stream symbolically, from its first opcode to STOP.

    Mirrors ``pickle._Unpickler`` (which joblib subclasses), opcode by
    opcode, including its memo, MARK stack and framing rules. With
    ``joblib_arrays`` it also mirrors ``NumpyUnpickler.load_build``: after a
    ``BUILD`` that leaves a NumpyArrayWrapper on the stack, the array bytes
    (or a nested object-array pickle) are consumed from the stream.
    """

    def __init__(self, scan: _ScanState, src: _Source, *, joblib_arrays: bool, level: int) -> None:
        self.scan = scan
        self.src = src
        self.joblib_arrays = joblib_arrays
        self.level = level
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.proto = 0
        self.frame_end: int | None = None
        self.op_start = 0
        self.root: Any = None
        self.dispatch: dict[int, Callable[[], Any]] = {
            ord(code): getattr(self, f"op_{name}") for code, name in _HANDLERS.items()
        }

    # -- driver -------------------------------------------------------------

    def run(self) -> Any:
        """Walk to STOP and return the symbolic top-level object."""
        src = self.src
        scan = self.scan
        dispatch = self.dispatch
        code = -1
        try:
            while True:
                start = self.op_start = src.pos
                code = src.read_byte()
                if code < 0:
                    raise _Truncated(
                        f"truncated: the pickle stream ends at offset {start:,} without a "
                        "STOP opcode"
                    )
                scan.opcodes += 1
                if scan.opcodes > scan.max_opcodes:
                    raise _LimitExceeded(f"more than {scan.max_opcodes:,} pickle opcodes")
                handler = dispatch.get(code)
                if handler is None:
                    raise _Malformed(
                        f"malformed: unknown pickle opcode {bytes([code])!r} at offset {start:,}"
                    )
                result = handler()
                frame_end = self.frame_end
                if frame_end is not None:
                    end = src.pos
                    if end > frame_end:
                        raise _Malformed(
                            f"malformed: {_OPCODE_NAMES[code]} at offset {start:,} crosses the "
                            "end of its pickle frame"
                        )
                    if end == frame_end:
                        self.frame_end = None
                if result is _STOP:
                    if self.frame_end is not None:
                        raise _Malformed(
                            f"malformed: STOP at offset {start:,} comes "
                            f"{self.frame_end - src.pos:,} bytes before the end of its frame"
                        )
                    return self.root
        except _ScanError:
            raise
        except RecursionError as exc:
            raise _LimitExceeded("structure too deeply nested to analyse") from exc
        except (
            IndexError,
            KeyError,
            ValueError,
            TypeError,
            struct.error,
            UnicodeDecodeError,
            OverflowError,
            MemoryError,
        ) as exc:
            name = _OPCODE_NAMES.get(code, "?")
            raise _Malformed(
                f"malformed: {name} at offset {self.op_start:,} cannot be executed "
                f"({type(exc).__name__}: {exc})"
            ) from exc

    # -- helpers ------------------------------------------------------------

    def pop_mark(self) -> list[Any]:
        items = self.stack
        if not self.metastack:
            raise _Malformed(f"malformed: no MARK before offset {self.op_start:,}")
        self.stack = self.metastack.pop()
        return items

    def offend(self, name: str, reason: str) -> None:
        self.scan.offend(name, reason, self.op_start)

    def make_global(self, module: str, name: str) -> _Global:
        # Same renaming as Unpickler.find_class (fix_imports) for protocols < 3.
        if self.proto < 3:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        return self.scan.resolve_global(canonical_module(module), name, self.op_start)

    def read_str(self, size: int) -> Any:
        if size > MAX_KEPT_STRING:
            self.src.skip(size)
            return _Blob("str", size)
        return str(self.src.read(size), "utf-8", "surrogatepass")

    def read_bytes(self, size: int, kind: str = "bytes") -> _Blob:
        self.src.skip(size)
        return _Blob(kind, size)

    def decode_string(self, data: bytes) -> Any:
        # Unpickler(encoding="ASCII") turns protocol 0-2 byte strings into str.
        try:
            return data.decode("ascii")
        except UnicodeDecodeError:
            return _Blob("bytes", len(data))

    def uint(self, size: int) -> int:
        return int.from_bytes(self.src.read(size), "little")

    def int4(self) -> int:
        return int.from_bytes(self.src.read(4), "little", signed=True)

    def callable_global(self, func: Any, opcode: str) -> _Global | None:
        if isinstance(func, _Global):
            return func
        self.offend(
            opcode,
            f"calls {_describe(func)}, not an importable global (only allowlisted "
            "classes and functions may be called)",
        )
        return None

    def new_object(self, func: Any, args: Any, opcode: str, *, init: bool) -> _Obj:
        """The object created by calling *func* (REDUCE, OBJ, INST, NEWOBJ)."""
        glob = self.callable_global(func, opcode)
        if glob is None:
            return _Obj(None, func, args)
        cls = glob.full
        self.scan.called.add(cls)
        items = args.items if isinstance(args, (_Tuple, _List)) else ()
        if cls.endswith("multiarray.scalar") and items and _is_object_dtype(items[0]):
            self.offend(
                opcode,
                f"{cls} of an object dtype hands back its argument unchanged (launders a "
                "global into an object made while loading)",
            )
        if cls in CLASS_FIRST_ARG:
            # These helpers create the instance without calling cls.__init__.
            cls = items[0].full if items and isinstance(items[0], _Global) else None
            init = False
            if cls is None:
                self.offend(
                    opcode,
                    f"{glob.full} is given {_describe(items[0]) if items else 'nothing'} as "
                    "its class, not a literal allowed global (a class made while loading "
                    "could be anything)",
                )
            else:
                self.scan.called.add(cls)
        obj = _Obj(cls, func, args)
        if cls == NUMPY_ARRAY_WRAPPER:
            attrs: dict[str, Any] = {}
            if init:
                defaults = {"allow_mmap": False, "numpy_array_alignment_bytes": 16}
                attrs.update(defaults)
                attrs.update(zip(_WRAPPER_INIT_PARAMS, items, strict=False))
            obj.attrs = attrs
        return obj

    # -- opcodes: constants -------------------------------------------------

    def op_INT(self) -> None:
        data = self.src.readline()
        if data == b"00\n":
            value: Any = False
        elif data == b"01\n":
            value = True
        else:
            value = int(data, 0)
        self.stack.append(value)

    def op_BININT(self) -> None:
        self.stack.append(self.int4())

    def op_BININT1(self) -> None:
        self.stack.append(self.src.read(1)[0])

    def op_BININT2(self) -> None:
        self.stack.append(self.uint(2))

    def op_LONG(self) -> None:
        value = self.src.readline()[:-1]
        if value and value[-1] == ord("L"):
            value = value[:-1]
        self.stack.append(int(value, 0))

    def op_LONG1(self) -> None:
        size = self.src.read(1)[0]
        self.stack.append(int.from_bytes(self.src.read(size), "little", signed=True))

    def op_LONG4(self) -> None:
        size = self.int4()
        if size < 0:
            raise _Malformed(f"malformed: LONG4 with negative size at offset {self.op_start:,}")
        if size > MAX_KEPT_STRING:
            self.stack.append(self.read_bytes(size, "int"))
        else:
            self.stack.append(int.from_bytes(self.src.read(size), "little", signed=True))

    def op_STRING(self) -> None:
        import codecs

        data = self.src.readline()[:-1]
        if len(data) >= 2 and data[0] == data[-1] and data[0] in b"\"'":
            data = data[1:-1]
        else:
            raise _Malformed(f"malformed: unquoted STRING argument at offset {self.op_start:,}")
        self.stack.append(self.decode_string(codecs.escape_decode(data)[0]))

    def op_BINSTRING(self) -> None:
        size = self.int4()
        if size < 0:
            raise _Malformed(f"malformed: BINSTRING with negative size at offset {self.op_start:,}")
        if size > MAX_KEPT_STRING:
            self.stack.append(self.read_bytes(size))
        else:
            self.stack.append(self.decode_string(self.src.read(size)))

    def op_SHORT_BINSTRING(self) -> None:
        self.stack.append(self.decode_string(self.src.read(self.src.read(1)[0])))

    def op_BINBYTES(self) -> None:
        self.stack.append(self.read_bytes(self.uint(4)))

    def op_SHORT_BINBYTES(self) -> None:
        self.stack.append(self.read_bytes(self.src.read(1)[0]))

    def op_BINBYTES8(self) -> None:
        self.stack.append(self.read_bytes(self.uint(8)))

    def op_BYTEARRAY8(self) -> None:
        self.stack.append(self.read_bytes(self.uint(8), "bytearray"))

    def op_NEXT_BUFFER(self) -> None:
        raise _Malformed(
            f"malformed: NEXT_BUFFER at offset {self.op_start:,} refers to out-of-band data "
            "that a model file cannot carry"
        )

    def op_READONLY_BUFFER(self) -> None:
        self.stack[-1]  # noqa: B018 - the real loader fails on an empty stack too

    def op_NONE(self) -> None:
        self.stack.append(None)

    def op_NEWTRUE(self) -> None:
        self.stack.append(True)

    def op_NEWFALSE(self) -> None:
        self.stack.append(False)

    def op_UNICODE(self) -> None:
        self.stack.append(str(self.src.readline()[:-1], "raw-unicode-escape"))

    def op_SHORT_BINUNICODE(self) -> None:
        self.stack.append(self.read_str(self.src.read(1)[0]))

    def op_BINUNICODE(self) -> None:
        self.stack.append(self.read_str(self.uint(4)))

    def op_BINUNICODE8(self) -> None:
        self.stack.append(self.read_str(self.uint(8)))

    def op_FLOAT(self) -> None:
        self.stack.append(float(self.src.readline()[:-1]))

    def op_BINFLOAT(self) -> None:
        self.stack.append(struct.unpack(">d", self.src.read(8))[0])

    # -- opcodes: containers ------------------------------------------------

    def op_EMPTY_LIST(self) -> None:
        self.stack.append(_List([]))

    def op_APPEND(self) -> None:
        value = self.stack.pop()
        self.append_to(self.stack[-1], [value], "APPEND")

    def op_APPENDS(self) -> None:
        items = self.pop_mark()
        self.append_to(self.stack[-1], items, "APPENDS")

    def append_to(self, target: Any, items: list[Any], opcode: str) -> None:
        if isinstance(target, _List):
            target.items.extend(items)
        elif isinstance(target, _Obj):
            target.extra.extend(items)
        else:
            self.offend(opcode, f"appends to {_describe(target)}, not a list or an object")

    # Note: pop_mark() rebinds self.stack, so it must run before self.stack
    # is looked up for the append.

    def op_LIST(self) -> None:
        items = self.pop_mark()
        self.stack.append(_List(items))

    def op_EMPTY_TUPLE(self) -> None:
        self.stack.append(_Tuple(()))

    def op_TUPLE(self) -> None:
        items = self.pop_mark()
        self.stack.append(_Tuple(tuple(items)))

    def op_TUPLE1(self) -> None:
        self.stack[-1] = _Tuple((self.stack[-1],))

    def op_TUPLE2(self) -> None:
        second = self.stack.pop()
        self.stack[-1] = _Tuple((self.stack[-1], second))

    def op_TUPLE3(self) -> None:
        third = self.stack.pop()
        second = self.stack.pop()
        self.stack[-1] = _Tuple((self.stack[-1], second, third))

    def op_EMPTY_DICT(self) -> None:
        self.stack.append(_Dict([]))

    def op_DICT(self) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise _Malformed(f"malformed: DICT with an odd item count at offset {self.op_start:,}")
        self.stack.append(_Dict(list(zip(items[::2], items[1::2], strict=True))))

    def op_SETITEM(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self.set_items(self.stack[-1], [(key, value)], "SETITEM")

    def op_SETITEMS(self) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise _Malformed(
                f"malformed: SETITEMS with an odd item count at offset {self.op_start:,}"
            )
        self.set_items(self.stack[-1], list(zip(items[::2], items[1::2], strict=True)), "SETITEMS")

    def set_items(self, target: Any, pairs: list[tuple[Any, Any]], opcode: str) -> None:
        if isinstance(target, _Dict):
            target.items.extend(pairs)
        elif isinstance(target, _Obj):
            target.extra.extend(item for pair in pairs for item in pair)
        else:
            self.offend(opcode, f"sets items on {_describe(target)}, not a dict or an object")

    def op_EMPTY_SET(self) -> None:
        self.stack.append(_Set([], frozen=False))

    def op_ADDITEMS(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if isinstance(target, _Set) and not target.frozen:
            target.items.extend(items)
        elif isinstance(target, _Obj):
            target.extra.extend(items)
        else:
            self.offend("ADDITEMS", f"adds items to {_describe(target)}, not a set")

    def op_FROZENSET(self) -> None:
        items = self.pop_mark()
        self.stack.append(_Set(items, frozen=True))

    # -- opcodes: stack and memo --------------------------------------------

    def op_POP(self) -> None:
        if self.stack:
            self.stack.pop()
        else:
            self.pop_mark()

    def op_DUP(self) -> None:
        self.stack.append(self.stack[-1])

    def op_MARK(self) -> None:
        if len(self.metastack) >= self.scan.max_depth:
            raise _LimitExceeded(f"MARKs nested more than {self.scan.max_depth} levels deep")
        self.metastack.append(self.stack)
        self.stack = []

    def op_POP_MARK(self) -> None:
        self.pop_mark()

    def memo_get(self, index: int) -> None:
        try:
            self.stack.append(self.memo[index])
        except KeyError:
            raise _Malformed(
                f"malformed: memo entry {index} read at offset {self.op_start:,} was never stored"
            ) from None

    def memo_put(self, index: int) -> None:
        if index < 0:
            raise _Malformed(f"malformed: negative memo index at offset {self.op_start:,}")
        self.memo[index] = self.stack[-1]

    def op_GET(self) -> None:
        self.memo_get(int(self.src.readline()[:-1]))

    def op_BINGET(self) -> None:
        self.memo_get(self.src.read(1)[0])

    def op_LONG_BINGET(self) -> None:
        self.memo_get(self.uint(4))

    def op_PUT(self) -> None:
        self.memo_put(int(self.src.readline()[:-1]))

    def op_BINPUT(self) -> None:
        self.memo_put(self.src.read(1)[0])

    def op_LONG_BINPUT(self) -> None:
        self.memo_put(self.uint(4))

    def op_MEMOIZE(self) -> None:
        self.memo[len(self.memo)] = self.stack[-1]

    # -- opcodes: what makes pickles dangerous ------------------------------

    def ext(self, code: int, opcode: str) -> None:
        self.offend(
            f"{opcode} {code}",
            "extension-registry opcode: copyreg maps the code to a global that cannot be "
            "checked statically",
        )
        self.stack.append(_Opaque(opcode))

    def op_EXT1(self) -> None:
        self.ext(self.src.read(1)[0], "EXT1")

    def op_EXT2(self) -> None:
        self.ext(self.uint(2), "EXT2")

    def op_EXT4(self) -> None:
        self.ext(self.int4(), "EXT4")

    def op_PERSID(self) -> None:
        pid = self.src.readline()[:-1]
        self.offend(
            "PERSID",
            f"persistent id {pid[:40]!r}: resolved by a loader hook, cannot be checked statically",
        )
        self.stack.append(_Opaque("PERSID"))

    def op_BINPERSID(self) -> None:
        self.stack.pop()
        self.offend(
            "BINPERSID", "persistent id: resolved by a loader hook, cannot be checked statically"
        )
        self.stack.append(_Opaque("BINPERSID"))

    def read_global_names(self, encoding: str) -> tuple[str, str]:
        module = self.src.readline()[:-1].decode(encoding)
        name = self.src.readline()[:-1].decode(encoding)
        return module, name

    def op_GLOBAL(self) -> None:
        self.stack.append(self.make_global(*self.read_global_names("utf-8")))

    def op_STACK_GLOBAL(self) -> None:
        name = self.stack.pop()
        module = self.stack.pop()
        if type(module) is str and type(name) is str:
            self.stack.append(self.make_global(module, name))
            return
        self.offend(
            "STACK_GLOBAL",
            f"module/name cannot be resolved to string constants ({_describe(module)}, "
            f"{_describe(name)})",
        )
        self.stack.append(_Opaque("STACK_GLOBAL"))

    def op_REDUCE(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        self.stack[-1] = self.new_object(func, args, "REDUCE", init=True)

    def op_INST(self) -> None:
        module, name = self.read_global_names("ascii")
        klass = self.make_global(module, name)
        args = self.pop_mark()
        self.stack.append(self.new_object(klass, _Tuple(tuple(args)), "INST", init=bool(args)))

    def op_OBJ(self) -> None:
        args = self.pop_mark()
        klass = args.pop(0)
        self.stack.append(self.new_object(klass, _Tuple(tuple(args)), "OBJ", init=bool(args)))

    def op_NEWOBJ(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.stack.append(self.new_object(cls, args, "NEWOBJ", init=False))

    def op_NEWOBJ_EX(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        obj = self.new_object(cls, args, "NEWOBJ_EX", init=False)
        obj.extra.append(kwargs)
        self.stack.append(obj)

    def op_BUILD(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, _Obj):
            self.offend(
                "BUILD",
                f"sets the state of {_describe(inst)} (would monkey-patch a class, "
                "function or container)",
            )
            return
        self.scan.state_keys.setdefault(inst.cls or "?", set())  # every BUILD target
        if inst.cls is None:
            self.offend(
                "BUILD",
                "sets the state of an object whose class cannot be named as a literal "
                "allowed global (it was made by calling something built while loading)",
            )
        if inst.state is not None or inst.extra:
            self.offend(
                "BUILD",
                f"a second BUILD on the same {inst.cls or 'object'} (the loader would apply "
                "a state this scan already read differently)",
            )
        if not (state is None or isinstance(state, (_Dict, _Tuple, _List))):
            self.offend(
                "BUILD",
                f"the state of {inst.cls or 'an object'} is {_describe(state)}, not a literal",
            )
        dict_state, slot_state = state, None
        if isinstance(state, _Tuple) and len(state.items) == 2:
            dict_state, slot_state = state.items
        for part in (dict_state, slot_state):
            if isinstance(part, _Dict):
                keys = self.scan.state_keys.setdefault(inst.cls or "?", set())
                for key, _value in part.items:
                    if type(key) is not str:
                        self.offend(
                            "BUILD",
                            f"a state key of {inst.cls or 'an object'} is {_describe(key)}, "
                            "not a plain str (a str subclass can hide the name it sets)",
                        )
                    elif key.startswith("__") and key.endswith("__"):
                        self.offend("BUILD", f"state sets the special attribute {key!r}")
                    else:
                        keys.add(key)
        if isinstance(dict_state, _Dict):
            version = dict_state.get("_sklearn_version")
            if type(version) is str:
                self.scan.versions.append(version)
        if inst.state is None:
            inst.state = state
        else:
            inst.extra.append(state)
        if isinstance(inst.func, _Global) and inst.func.full == "numpy.dtype":
            # Every dtype, not only an array wrapper's: a dtype whose flags say it holds
            # objects makes numpy read plain bytes as object pointers.
            self.dtype_layout(inst, f"numpy.dtype at offset {self.op_start:,}")
        if inst.cls == NUMPY_ARRAY_WRAPPER:
            self.update_wrapper(inst, dict_state, slot_state)
            if self.joblib_arrays:
                self.stack[-1] = self.read_joblib_array(inst)

    # -- opcodes: protocol and framing --------------------------------------

    def op_PROTO(self) -> None:
        proto = self.src.read(1)[0]
        if proto > 5:
            raise _Malformed(f"malformed: unsupported pickle protocol {proto}")
        self.proto = proto

    def op_FRAME(self) -> None:
        size = self.uint(8)
        if self.frame_end is not None:
            raise _Malformed(
                f"malformed: FRAME at offset {self.op_start:,} starts inside another frame"
            )
        self.frame_end = self.src.pos + size

    def op_STOP(self) -> object:
        self.root = self.stack.pop()
        return _STOP

    # -- joblib inline arrays -------------------------------------------------

    def update_wrapper(self, inst: _Obj, dict_state: Any, slot_state: Any) -> None:
        """Apply BUILD to a NumpyArrayWrapper's attributes like the loader does."""
        attrs = inst.attrs if inst.attrs is not None else {}
        for part in (dict_state, slot_state):
            if part is None:
                continue
            if not isinstance(part, _Dict):
                raise _Malformed(
                    f"malformed: NumpyArrayWrapper state at offset {self.op_start:,} is "
                    f"{_describe(part)}, not a dict"
                )
            for key, value in part.items:
                if type(key) is not str:
                    raise _Malformed("malformed: NumpyArrayWrapper state has a non-string key")
                attrs[key] = value
        inst.attrs = attrs

    def read_joblib_array(self, wrapper: _Obj) -> _Obj:
        """Consume the array that joblib wrote after the wrapper; return a placeholder.

        Mirrors ``NumpyArrayWrapper.read_array``: for object dtypes a nested
        pickle follows (read by a fresh, plain Unpickler); otherwise an
        optional alignment padding (one length byte, then that many bytes)
        and ``prod(shape) * dtype.itemsize`` raw bytes.
        """
        where = f"NumpyArrayWrapper at offset {self.op_start:,}"
        # joblib reads the array straight from the file, bypassing the pickle
        # frame buffer: the array must start exactly where the frame ends.
        if self.frame_end is not None:
            if self.src.pos != self.frame_end:
                raise _Malformed(
                    f"malformed: array data of {where} starts inside a pickle frame "
                    "(the loader would read the frame and the array in a different order)"
                )
            self.frame_end = None
        attrs = wrapper.attrs or {}
        problem = check_wrapper_fields(attrs.keys())
        if problem:
            raise _Malformed(f"malformed: {where}: {problem}")
        subclass = attrs.get("subclass")
        if not (isinstance(subclass, _Global) and subclass.full in ARRAY_CLASSES):
            raise _Malformed(f"malformed: {where} wraps {_describe(subclass)}, not a numpy array")
        shape = attrs.get("shape")
        if not isinstance(shape, _Tuple) or not all(
            type(dim) is int and dim >= 0 for dim in shape.items
        ):
            raise _Malformed(f"malformed: {where} has no valid shape ({_describe(shape)})")
        itemsize, has_object = self.dtype_layout(attrs.get("dtype"), where)
        if has_object:
            if self.level + 1 > MAX_NESTED_PICKLES:
                raise _LimitExceeded(f"object arrays nested more than {MAX_NESTED_PICKLES} deep")
            nested = _StreamWalker(self.scan, self.src, joblib_arrays=False, level=self.level + 1)
            nested.run()
        else:
            count = 1
            for dim in shape.items:
                count *= dim
            if attrs.get("numpy_array_alignment_bytes") is not None:
                self.src.skip(self.src.read(1)[0])
            nbytes = count * itemsize
            if nbytes > self.scan.max_array_bytes:
                raise _LimitExceeded(
                    f"{where} declares {nbytes:,} bytes of array data, more than the limit"
                )
            self.src.skip(nbytes)
        return _Obj("numpy.ndarray", None, None)

    def dtype_layout(self, dtype: Any, where: str) -> tuple[int, bool]:
        """``(itemsize, hasobject)`` of a pickled ``numpy.dtype``, or reject it.

        Only simple type strings are accepted (``'<f8'``, ``'U5'``,
        ``'V16'``...), and the sizes and object flag recorded in the dtype's
        state must agree with them and with its fields: a disagreement is the
        kind of ambiguity that makes the loader and this scan read the array
        bytes differently, so it is refused.
        """
        if not (
            isinstance(dtype, _Obj)
            and isinstance(dtype.func, _Global)
            and dtype.func.full == "numpy.dtype"
            and isinstance(dtype.args, _Tuple)
            and dtype.args.items
            and type(dtype.args.items[0]) is str
        ):
            raise _Malformed(f"malformed: {where} has no valid numpy dtype ({_describe(dtype)})")
        # Kind letter plus size, as dtype.__reduce__ writes it. Bare type
        # characters are refused: 'b' alone means int8 but 'b1' means bool.
        match = _DTYPE_STR.fullmatch(dtype.args.items[0])
        if match is None:
            raise _Malformed(f"malformed: {where} has an unsupported dtype {dtype.args.items[0]!r}")
        kind, digits = match.group(1), int(match.group(2))
        state = dtype.state
        elsize, flags, fields_obj, subarray = -1, None, False, False
        if state is not None:
            if not isinstance(state, _Tuple) or len(state.items) not in (8, 9):
                raise _Malformed(f"malformed: {where} has an unexpected dtype state")
            items = state.items
            if type(items[5]) is not int or type(items[7]) is not int:
                raise _Malformed(f"malformed: {where} has an unexpected dtype state")
            elsize, flags = items[5], items[7]
            fields_obj = self.fields_have_object(items[4], where)
            if items[2] is not None:
                subarray = self.subarray_has_object(items[2], where)
        expected = digits * 4 if kind == "U" else digits
        if elsize > 0 and elsize != expected:
            raise _Malformed(f"malformed: {where} has inconsistent dtype sizes")
        itemsize = elsize if elsize > 0 else expected
        if fields_obj or subarray:
            raise _Malformed(
                f"malformed: {where} is a structured dtype holding Python objects (never "
                "part of a scikit-learn model, and a way to make numpy read bytes as pointers)"
            )
        has_object = kind == "O"
        if flags is not None and bool(flags & 1) != has_object:
            raise _Malformed(
                f"malformed: {where} dtype flags disagree with its fields about holding objects"
            )
        return itemsize, has_object

    def fields_have_object(self, fields: Any, where: str) -> bool:
        if fields is None:
            return False
        if not isinstance(fields, _Dict):
            raise _Malformed(f"malformed: {where} has unexpected dtype fields")
        found = False
        for _name, spec in fields.items:
            if not isinstance(spec, _Tuple) or not spec.items:
                raise _Malformed(f"malformed: {where} has unexpected dtype fields")
            found = self.dtype_layout(spec.items[0], where)[1] or found
        return found

    def subarray_has_object(self, sub: Any, where: str) -> bool:
        if not isinstance(sub, _Tuple) or len(sub.items) != 2:
            raise _Malformed(f"malformed: {where} has an unexpected sub-array dtype")
        return self.dtype_layout(sub.items[0], where)[1]


_HANDLERS: dict[str, str] = {op.code: op.name for op in pickletools.opcodes}


# --------------------------------------------------------------------------
# Pickle / joblib files
# --------------------------------------------------------------------------


def _root_class(root: Any) -> str | None:
    return root.cls if isinstance(root, _Obj) else None


def _root_version(root: Any) -> str | None:
    if isinstance(root, _Obj):
        for state in (root.state, *root.extra):
            candidate = state.items[0] if isinstance(state, _Tuple) and state.items else state
            if isinstance(candidate, _Dict):
                version = candidate.get("_sklearn_version")
                if type(version) is str:
                    return version
    return None


def _walk_streams(
    src: _Source, scan: _ScanState, report: ScanReport, *, joblib_arrays: bool
) -> None:
    """Walk every pickle stream until the end of the data, filling *report*."""
    streams = 0
    while True:
        start = src.pos
        try:
            if src.at_eof():
                break
            if streams >= MAX_STREAMS:
                report.errors.append(f"more than {MAX_STREAMS} pickle streams; stopped scanning")
                break
            walker = _StreamWalker(scan, src, joblib_arrays=joblib_arrays, level=0)
            root = walker.run()
            _nesting_depth(root, scan.max_depth)
        except (_Bomb, _LimitExceeded) as exc:
            report.errors.append(str(exc))
            break
        except _ScanError as exc:
            if streams == 0:
                report.errors.append(str(exc))
            else:
                report.errors.append(
                    f"malformed: the data after the end of the pickle (offset {start:,}) is "
                    f"not a valid pickle stream: {exc}"
                )
            break
        streams += 1
        if streams == 1:
            report.estimator_class = _root_class(root)
            report.sklearn_version = _root_version(root) or (
                scan.versions[0] if scan.versions else None
            )
    report.streams = streams
    if streams == 0 and not report.errors:
        report.errors.append("no pickle stream found")
    if streams > 1:
        report.errors.append(
            f"the file holds {streams} pickle streams: only the first is the model, the "
            "loader ignores the rest, so appended streams are refused"
        )


def _scan_pickle(
    path: Path,
    info: FormatInfo,
    report: ScanReport,
    *,
    max_bytes: int,
    max_ratio: float,
    max_opcodes: int,
    max_depth: int,
) -> None:
    size = path.stat().st_size
    scan = _ScanState(max_opcodes=max_opcodes, max_depth=max_depth, max_array_bytes=max_bytes)
    with open(path, "rb") as fh:
        reader: Any = fh
        declared: int | None = None
        if info.legacy_zfile:
            parsed = parse_zfile_header(fh.read(64))
            if parsed is None:  # detect_format checked it; the file changed?
                report.errors.append("legacy joblib 'ZF' header is invalid")
                return
            declared, offset = parsed
            if declared > max_bytes:
                report.errors.append(
                    f"decompression bomb: legacy joblib header declares {declared:,} bytes, "
                    f"more than the limit of {max_bytes:,}"
                )
                return
            fh.seek(offset)
        if info.compression is not None:
            reader = _DecompressingReader(
                fh, info.compression, compressed_size=size, max_bytes=max_bytes, max_ratio=max_ratio
            )
        # Seeking over array bytes is only possible in the uncompressed file.
        src = _Source(reader, size if reader is fh else None)
        # The legacy ZF loader (ZipNumpyUnpickler) has no inline arrays.
        _walk_streams(src, scan, report, joblib_arrays=not info.legacy_zfile)
        if isinstance(reader, _DecompressingReader):
            report.decompressed_bytes = reader.total
            if declared is not None and not report.errors and reader.total != declared:
                report.errors.append(
                    f"legacy joblib header declares {declared:,} bytes but the data "
                    f"decompresses to {reader.total:,}"
                )
    report.opcodes = scan.opcodes
    report.globals_found = sorted(scan.globals_found)
    report.called = sorted(scan.called)
    report.state_keys = {cls: sorted(keys) for cls, keys in sorted(scan.state_keys.items())}
    report.offending = list(scan.offences.values())
    if info.compression is not None or scan.saw_wrapper:
        report.format = FORMAT_JOBLIB
    else:
        report.format = FORMAT_PICKLE
    if any(name.startswith("numpy._core.") for name in scan.globals_found):
        report.numpy_major = 2
    elif any(name.startswith("numpy.core.") for name in scan.globals_found):
        report.numpy_major = 1


# --------------------------------------------------------------------------
# skops files
# --------------------------------------------------------------------------


def _check_zip_entries(
    archive: zipfile.ZipFile, report: ScanReport, *, max_bytes: int, max_ratio: float
) -> None:
    """Refuse archive tricks before anything reads the members."""
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_ENTRIES:
        report.errors.append(f"zip archive has {len(infos):,} entries (limit {MAX_ZIP_ENTRIES:,})")
        return
    seen: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        parts = re.split(r"[/\\]", name)
        if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name) or ".." in parts:
            report.errors.append(f"zip entry {name!r} has an absolute or parent-directory path")
        if "\x00" in name:
            report.errors.append(f"zip entry {name!r} has a NUL byte in its name")
        if name in seen:
            report.errors.append(f"zip entry {name!r} appears more than once")
        seen.add(name)
        if info.flag_bits & 0x1:
            report.errors.append(f"zip entry {name!r} is encrypted")
        total += info.file_size
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_GRACE_BYTES and ratio > max_ratio:
            report.errors.append(
                f"zip bomb: entry {name!r} expands {ratio:,.0f} times (limit {max_ratio:g})"
            )
    if total > max_bytes:
        report.errors.append(
            f"zip bomb: entries add up to {total:,} bytes uncompressed, more than the limit "
            f"of {max_bytes:,}"
        )


def _walk_schema(schema: Any) -> tuple[set[str], str | None]:
    """Types named in a skops schema, and the first ``_sklearn_version`` value."""
    names: set[str] = set()
    version: str | None = None
    pending = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        module, cls = node.get("__module__"), node.get("__class__")
        if isinstance(module, str) and isinstance(cls, str):
            names.add(f"{module}.{cls}")
        content = node.get("content")
        if isinstance(content, dict):
            if "module_path" in content and "function" in content:
                names.add(f"{content['module_path']}.{content['function']}")
            entry = content.get("_sklearn_version")
            if (
                version is None
                and isinstance(entry, dict)
                and isinstance(entry.get("content"), str)
            ):
                try:
                    value = json.loads(entry["content"])
                except ValueError:
                    value = entry["content"]
                if isinstance(value, str):
                    version = value
        pending.extend(value for value in node.values() if isinstance(value, (dict, list)))
    return names, version


def _scan_skops(path: Path, report: ScanReport, *, max_bytes: int, max_ratio: float) -> None:
    report.format = FORMAT_SKOPS
    try:
        with zipfile.ZipFile(path) as archive:
            _check_zip_entries(archive, report, max_bytes=max_bytes, max_ratio=max_ratio)
            if report.errors:
                return
            raw = archive.read("schema.json")
    except (
        zipfile.BadZipFile,
        OSError,
        KeyError,
        ValueError,
        EOFError,
        NotImplementedError,
    ) as exc:
        report.errors.append(f"cannot read the skops archive: {exc}")
        return
    try:
        schema = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        report.errors.append(f"skops schema.json is not valid JSON: {exc}")
        return
    if not isinstance(schema, dict):
        report.errors.append("skops schema.json is not a JSON object")
        return
    names, version = _walk_schema(schema)
    report.sklearn_version = version
    module, cls = schema.get("__module__"), schema.get("__class__")
    if isinstance(module, str) and isinstance(cls, str) and module != "builtins":
        report.estimator_class = f"{module}.{cls}"
    try:
        from skops.io import get_untrusted_types

        untrusted = get_untrusted_types(file=path)
    except RecursionError:
        report.errors.append(f"skops schema nested more than {sys.getrecursionlimit()} deep")
        return
    except Exception as exc:  # skops raises many types for bad schemas
        report.errors.append(f"skops cannot audit the file: {type(exc).__name__}: {exc}")
        return
    report.skops_untrusted_types = list(untrusted)
    for full in untrusted:
        module_name, _, name = full.rpartition(".")
        reason = check_global(module_name, name)
        if reason is not None:
            report.offending.append(Offence(full, reason))
    report.globals_found = sorted(names | set(untrusted))


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def scan_file(
    path: str | os.PathLike[str],
    *,
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES,
    max_ratio: float = DEFAULT_MAX_RATIO,
    max_opcodes: int = DEFAULT_MAX_OPCODES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> ScanReport:
    """Statically scan an uploaded model file; never loads or imports its content.

    *max_decompressed_bytes* bounds the decompressed size of joblib data and
    the uncompressed size of skops archives (and any single array); a
    decompressed/compressed ratio above *max_ratio* (checked once more than
    1 MiB has been produced) is treated as a decompression bomb.
    *max_opcodes* and *max_depth* bound the work and the nesting.
    Problems in the content are reported, never raised.
    """
    path = Path(path)
    info = detect_format(path)
    report = ScanReport(
        ok=False, format=info.format if info.ok else None, compression=info.compression
    )
    if not info.ok:
        report.errors.append(info.message)
        return report
    try:
        if info.format == FORMAT_SKOPS:
            _scan_skops(path, report, max_bytes=max_decompressed_bytes, max_ratio=max_ratio)
        else:
            _scan_pickle(
                path,
                info,
                report,
                max_bytes=max_decompressed_bytes,
                max_ratio=max_ratio,
                max_opcodes=max_opcodes,
                max_depth=max_depth,
            )
    except Exception as exc:  # a scanner bug must reject the file, never pass it
        report.errors.append(f"the scanner could not analyse the file: {type(exc).__name__}: {exc}")
    report.ok = not report.errors and not report.offending
    return report
