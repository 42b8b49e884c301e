"""Restricted loaders for uploaded models: the authority on what a file may do when loaded.

The static scanner is a first line; it reads bytes and can be wrong about how joblib
and numpy will interpret them. So every unpickling of an uploaded artifact, in the
sandbox (``inspect_model.py``) and in every model server (Docker image or process
replica), goes through :func:`load_model` here, which enforces :mod:`policy` itself:

* ``find_class`` returns only names on the environment's exact allowlist
  (:func:`build_allowlist`), checked against the real object's ``__module__`` and
  ``__qualname__``; nothing else is imported, not even to refuse it.
* REDUCE / NEWOBJ / OBJ / INST call only objects that ``find_class`` returned:
  never an object made while loading (which could be anything: an allowed helper
  that hands back its argument launders a class). Calls that take a class as
  their first argument get an allowed, non-meta class.
* BUILD: at most once per object made by such a call, never on a class, function
  or module, with a literal ``dict``/``tuple`` state (not one returned by a call),
  plain ``str`` keys, no dunder keys, no keys shadowing the class's methods.
* joblib's array wrapper must be exactly ``NumpyArrayWrapper`` with exactly its
  data fields; its dtype must be consistent; object arrays are read by a nested
  restricted unpickler (joblib < 1.6 used a plain ``pickle.load`` there).
* dtypes whose flags, size or object-ness disagree with their fields are refused
  (a lying dtype makes numpy read bytes as object pointers), as are structured
  dtypes with object fields.
* After loading, :func:`check_model` refuses estimators whose parameters make
  ``predict`` read files (``input='filename'``) or call non-allowlisted code.
* skops files: ``trusted`` is exactly the allowlisted subset of the file's types;
  a type outside the allowlist refuses the file.

Standalone: the standard library plus the environment's numpy/joblib/skops, and
:mod:`policy` (imported as a sibling when copied beside a script).

    python safe_load.py --allowlist OUT.json    # enumerate this environment's allowlist
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import importlib
import inspect
import io
import json
import os
import pickle
import sys
import types
import warnings
from typing import Any

if __package__:
    from . import policy
else:  # copied beside inspect_model.py or the model server (run with -I: no script dir)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import policy  # type: ignore[no-redef]

__all__ = ["UnsafeModelError", "build_allowlist", "check_model", "load_allowlist", "load_model"]


class UnsafeModelError(pickle.UnpicklingError):
    """The file tried something the policy forbids; loading stopped there."""


# --------------------------------------------------------------------------- allowlist


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _describe(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, type):
        return {"kind": "function"}
    setstate = inspect.getattr_static(obj, "__setstate__", None)
    # A Python-level (or absent) __setstate__ ends in __dict__.update: its keys become
    # attributes, so they must not shadow methods. C/Cython ones parse their own state.
    dict_state = setstate is None or isinstance(setstate, types.FunctionType)
    methods: list[str] = []
    if dict_state:
        for name in dir(obj):
            if _is_dunder(name):
                continue
            try:
                attr = inspect.getattr_static(obj, name)
            except AttributeError:
                continue
            if callable(attr) or hasattr(type(attr), "__get__"):
                methods.append(name)
    return {"kind": "class", "setstate": "dict" if dict_state else "custom", "methods": methods}


def _pickled_name(obj: Any) -> str | None:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        return f"{policy.canonical_module(module)}.{qualname}"
    return None


def _resolve(full: str) -> Any:
    module, _, name = full.rpartition(".")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy.core's deprecation shim, old sklearn modules
        return getattr(importlib.import_module(module), name)


def _try_resolve(full: str) -> Any:
    try:
        return _resolve(full)
    except Exception:  # noqa: BLE001 - a name this version does not have is simply absent
        return None


def _excluded(cls: type) -> bool:
    """Type factories and array-wrapper look-alikes are never allowed, whatever their base."""
    if issubclass(cls, type):
        return True
    wrapper = sys.modules.get("joblib.numpy_pickle")
    base = getattr(wrapper, "NumpyArrayWrapper", None)
    return base is not None and issubclass(cls, base) and cls is not base


def _sklearn_modules() -> list[types.ModuleType]:
    import pkgutil

    import sklearn

    found = []
    for info in pkgutil.walk_packages(sklearn.__path__, prefix="sklearn."):
        name = info.name
        parts = name.split(".")
        if any(p == "tests" or p.startswith("test") for p in parts) or "externals" in parts:
            continue
        if any(policy._module_matches(name, p) for p, _ in policy._SKLEARN_DENIED_MODULES):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found.append(importlib.import_module(name))
        except Exception:  # noqa: BLE001, S112 - optional dependencies (matplotlib...) missing
            continue
    return found


def build_allowlist() -> dict[str, Any]:
    """Enumerate this environment's exact allowlist from the real objects (see policy)."""
    names: dict[str, dict[str, Any]] = {}

    def add(obj: Any, full: str | None = None, *, check_name: bool = True) -> None:
        real = _pickled_name(obj)
        full = full or real
        if full is None:
            return
        if isinstance(obj, type):
            if _excluded(obj) or (check_name and real != full):
                return  # a re-export under another module's name is not that name
        elif not callable(obj):
            return
        names[full] = _describe(obj)

    import numpy
    import sklearn
    from sklearn.utils import all_estimators

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for full in policy.STATIC_ALLOWED:
            obj = _try_resolve(full)
            if obj is not None:
                add(obj, full, check_name=not full.startswith("builtins."))
        modules = _sklearn_modules()
        bases = tuple(b for b in map(_try_resolve, policy.SKLEARN_BASE_CLASSES) if b is not None)
        for _name, cls in all_estimators():
            add(cls)
        for module in modules:
            helper = module.__name__ in policy.SKLEARN_HELPER_MODULES
            for attr, obj in list(vars(module).items()):
                if isinstance(obj, type):
                    defined_here = policy.canonical_module(getattr(obj, "__module__", ""))
                    if defined_here == module.__name__ and (helper or issubclass(obj, bases)):
                        add(obj)
                elif (
                    helper
                    and callable(obj)
                    and (attr == "newObj" or attr.startswith("__pyx_unpickle_"))
                ):
                    add(obj, f"{module.__name__}.{attr}", check_name=False)
        for full in policy.SKLEARN_HELPER_NAMES:
            obj = _try_resolve(full)
            if obj is not None:
                add(obj, full, check_name=isinstance(obj, type))
        try:
            from sklearn.metrics import get_scorer, get_scorer_names

            for scorer_name in get_scorer_names():
                func = getattr(get_scorer(scorer_name), "_score_func", None)
                if func is not None:
                    add(func)
        except Exception:  # noqa: BLE001, S110 - very old versions have no scorer registry
            pass
        import scipy.sparse

        for attr in policy.SCIPY_SPARSE_CLASSES:
            obj = getattr(scipy.sparse, attr, None)
            if isinstance(obj, type):
                add(obj)
        for modname in policy.NUMPY_RANDOM_MODULES:
            module = sys.modules.get(modname) or _try_resolve_module(modname)
            if module is None:
                continue
            for attr, obj in list(vars(module).items()):
                if isinstance(obj, type) and obj.__module__ == modname:
                    add(obj)
                elif attr.startswith("__pyx_unpickle_") and callable(obj):
                    add(obj, f"{modname}.{attr}", check_name=False)
    versions = {"scikit-learn": sklearn.__version__, "numpy": numpy.__version__}
    return {"versions": versions, "names": dict(sorted(names.items()))}


def _try_resolve_module(name: str) -> types.ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


_ALLOWLIST: dict[str, Any] | None = None


def load_allowlist(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """This environment's allowlist: from ``path`` when given (written by
    ``--allowlist`` for the same environment), else enumerated once per process."""
    global _ALLOWLIST
    if path is not None:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    if _ALLOWLIST is None:
        _ALLOWLIST = build_allowlist()
    return _ALLOWLIST


# --------------------------------------------------------------------------- unpickler


_GLOBAL_TYPES = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)


class _Guard:
    """The policy as opcode handlers, mixed into a pure-Python unpickler."""

    allowlist: dict[str, Any]

    def _guard_init(self, allowlist: dict[str, Any]) -> None:
        self.allowlist = allowlist
        self._globals: dict[int, str] = {}  # id -> name of objects find_class returned
        # id -> (object, the allowed global that made it): objects made by allowed calls,
        # kept alive so that an id is never reused while loading.
        self._made: dict[int, tuple[Any, Any]] = {}
        self._built: set[int] = set()

    def refuse(self, why: str) -> UnsafeModelError:
        return UnsafeModelError(f"refused by the loader: {why}")

    # -- names
    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:  # type: ignore[attr-defined]
            # Python 3 writes protocols 0-2 with Python 2 names (__builtin__...).
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        module = policy.canonical_module(module)
        full = f"{module}.{name}"
        reason = policy.check_global(module, name) or policy.check_allowed(full, self.allowlist)
        if reason:
            raise self.refuse(f"{full}: {reason}")
        try:
            obj = _resolve(full)
        except Exception as exc:  # noqa: BLE001
            raise self.refuse(f"{full} does not resolve in this environment ({exc})") from None
        if isinstance(obj, type) and _pickled_name(obj) != full and not module == "builtins":
            raise self.refuse(f"{full} resolves to {_pickled_name(obj)}, a different object")
        self._globals[id(obj)] = full
        return obj

    def _entry_name(self, obj: Any) -> str | None:
        return self._globals.get(id(obj))

    def _made_obj(self, obj: Any, producer: Any) -> Any:
        """Remember ``obj`` as made by calling the allowed global ``producer``."""
        self._made[id(obj)] = (obj, producer)
        return obj

    # -- calls
    def _check_call(self, func: Any, args: Any, opcode: str) -> None:
        full = self._entry_name(func)
        if full is None:
            raise self.refuse(
                f"{opcode} calls {type(func).__name__!s} made while loading, not an allowed global"
            )
        if type(args) is not tuple:
            raise self.refuse(f"{opcode} arguments of {full} are not a tuple")
        kind = (policy.allowlist_entry(self.allowlist, full) or {}).get("kind", "")
        if not policy.may_call(full, kind):
            raise self.refuse(f"{full} may be kept in a model but not called while loading")
        if full in policy.CLASS_FIRST_ARG:
            cls = args[0] if args else None
            cls_name = self._entry_name(cls)
            entry = policy.allowlist_entry(self.allowlist, cls_name or "") or {}
            if cls_name is None or not isinstance(cls, type) or entry.get("kind") != "class":
                raise self.refuse(f"{full} is given a class that is not a literal allowed class")
            if full.endswith("_reconstruct") and not _is_array_class(cls):
                raise self.refuse(f"{full} is given {cls_name}, not a numpy array type")
            if full == "copyreg._reconstructor":
                base = args[1] if len(args) > 1 else None
                base_name = self._entry_name(base)
                if base_name not in policy.RECONSTRUCTOR_BASES or not issubclass(cls, base):
                    raise self.refuse(f"{full} is given the base {base_name or base!r}")
        elif full.endswith(".scalar") and full.startswith("numpy"):
            dtype = args[0] if args else None
            if getattr(dtype, "hasobject", True) or (len(args) > 1 and type(args[1]) is not bytes):
                raise self.refuse(f"{full} is only allowed for plain (non-object) scalars")
        elif full == "_codecs.encode" and (
            len(args) != 2 or type(args[0]) is not str or args[1] not in ("latin1", "latin-1")
        ):
            raise self.refuse("_codecs.encode is only allowed as latin-1 bytes")

    def load_reduce(self) -> None:
        stack = self.stack  # type: ignore[attr-defined]
        args = stack.pop()
        func = stack[-1]
        self._check_call(func, args, "REDUCE")
        producer = args[0] if self._entry_name(func) in policy.CLASS_FIRST_ARG else func
        stack[-1] = self._made_obj(func(*args), producer)

    def _check_class(self, cls: Any, opcode: str) -> None:
        name = self._entry_name(cls)
        entry = policy.allowlist_entry(self.allowlist, name or "")
        if name is None or not isinstance(cls, type) or (entry or {}).get("kind") != "class":
            raise self.refuse(f"{opcode} on {type(cls).__name__} that is not an allowed class")

    def load_newobj(self) -> None:
        stack = self.stack  # type: ignore[attr-defined]
        args = stack.pop()
        cls = stack.pop()
        self._check_class(cls, "NEWOBJ")
        if type(args) is not tuple:
            raise self.refuse("NEWOBJ arguments are not a tuple")
        stack.append(self._made_obj(cls.__new__(cls, *args), cls))

    def load_newobj_ex(self) -> None:
        stack = self.stack  # type: ignore[attr-defined]
        kwargs = stack.pop()
        args = stack.pop()
        cls = stack.pop()
        self._check_class(cls, "NEWOBJ_EX")
        if type(args) is not tuple or type(kwargs) is not dict:
            raise self.refuse("NEWOBJ_EX arguments are not a tuple and a dict")
        stack.append(self._made_obj(cls.__new__(cls, *args, **kwargs), cls))

    def _instantiate(self, klass: Any, args: Any) -> None:  # INST and OBJ
        self._check_class(klass, "INST/OBJ")
        super()._instantiate(klass, args)  # type: ignore[misc]
        self._made_obj(self.stack[-1], klass)  # type: ignore[attr-defined]

    # -- state
    def _check_build(self, inst: Any, state: Any) -> None:
        if isinstance(
            inst, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)
        ):
            raise self.refuse(f"BUILD would set attributes of {inst!r} (a global)")
        if id(inst) in self._globals:
            raise self.refuse("BUILD on an imported global")
        made, producer = self._made.get(id(inst), (None, None))
        if made is not inst:
            raise self.refuse(f"BUILD on a {type(inst).__name__} not made by an allowed call")
        if id(inst) in self._built:
            raise self.refuse(f"a second BUILD on the same {type(inst).__name__}")
        self._built.add(id(inst))
        cls_name = _pickled_name(type(inst)) or ""
        entry = policy.allowlist_entry(self.allowlist, cls_name)
        if entry is None and isinstance(producer, type) and isinstance(inst, producer):
            # numpy.dtype('f8') is a numpy.dtypes.Float64DType: judged as the allowed
            # class that made it.
            cls_name = self._entry_name(producer) or ""
            entry = policy.allowlist_entry(self.allowlist, cls_name)
        if entry is None or entry.get("kind") != "class":
            raise self.refuse(f"BUILD on an instance of {cls_name}, not an allowed class")
        if id(state) in self._made:
            raise self.refuse(f"the state of {cls_name} is made by a call, not a literal")
        if state is not None and type(state) not in (dict, tuple, list):
            raise self.refuse(f"the state of {cls_name} is a {type(state).__name__}")
        parts = [state]
        if type(state) is tuple and len(state) == 2 and entry.get("setstate") == "dict":
            parts = list(state)  # (dict state, slot state)
        for part in parts:
            if type(part) is dict:
                reason = policy.check_state(cls_name, part.keys(), self.allowlist)
                if reason:
                    raise self.refuse(f"{cls_name}: {reason}")
            elif part is not None and entry.get("setstate") == "dict":
                raise self.refuse(f"the state of {cls_name} is a {type(part).__name__}")

    def load_build(self) -> None:
        stack = self.stack  # type: ignore[attr-defined]
        self._check_build(stack[-2], stack[-1])
        pickle._Unpickler.load_build(self)  # type: ignore[arg-type]
        _check_dtype_if_dtype(stack[-1], self.refuse)


def _is_array_class(cls: type) -> bool:
    import numpy

    return issubclass(cls, numpy.ndarray)


def _check_dtype_if_dtype(obj: Any, refuse: Any) -> None:
    """A dtype restored from a state must be the dtype numpy would build from its fields."""
    import numpy

    if not isinstance(obj, numpy.dtype):
        return
    try:
        if obj.fields is None and obj.subdtype is None:
            canonical = numpy.dtype(obj.str)
        elif obj.fields is not None:
            names = list(obj.names)
            canonical = numpy.dtype(
                {
                    "names": names,
                    "formats": [obj.fields[n][0] for n in names],
                    "offsets": [obj.fields[n][1] for n in names],
                    "itemsize": obj.itemsize,
                },
                align=obj.isalignedstruct,
            )
        else:
            base, shape = obj.subdtype
            canonical = numpy.dtype((base, shape))
    except Exception as exc:  # noqa: BLE001
        raise refuse(f"dtype {obj!r} cannot be rebuilt from its own fields ({exc})") from None
    if (obj.flags, obj.itemsize, obj.hasobject) != (
        canonical.flags,
        canonical.itemsize,
        canonical.hasobject,
    ):
        raise refuse(
            f"dtype {obj!r} states flags {obj.flags}/size {obj.itemsize} but its fields "
            f"give {canonical.flags}/{canonical.itemsize}"
        )
    if obj.hasobject and (obj.fields is not None or obj.subdtype is not None):
        raise refuse(f"structured dtype {obj!r} holds Python objects")


class _GuardedUnpickler(_Guard, pickle._Unpickler):  # type: ignore[name-defined]
    dispatch = pickle._Unpickler.dispatch.copy()  # type: ignore[attr-defined]

    def __init__(self, file: Any, allowlist: dict[str, Any]) -> None:
        pickle._Unpickler.__init__(self, file)  # type: ignore[attr-defined]
        self._guard_init(allowlist)


def _install(dispatch: dict[int, Any]) -> None:
    dispatch[pickle.REDUCE[0]] = _Guard.load_reduce
    dispatch[pickle.NEWOBJ[0]] = _Guard.load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _Guard.load_newobj_ex
    dispatch[pickle.BUILD[0]] = _Guard.load_build


_install(_GuardedUnpickler.dispatch)


def _joblib_unpickler_class() -> type:
    from joblib.numpy_pickle import NumpyArrayWrapper, NumpyUnpickler

    native_order = "ensure_native_byte_order" in inspect.signature(NumpyUnpickler).parameters

    class _GuardedNumpyUnpickler(_Guard, NumpyUnpickler):
        dispatch = NumpyUnpickler.dispatch.copy()

        def __init__(self, filename: str, fobj: Any, allowlist: dict[str, Any]) -> None:
            if native_order:  # joblib >= 1.5 coerces arrays to the native byte order
                NumpyUnpickler.__init__(self, filename, fobj, ensure_native_byte_order=True)
            else:
                NumpyUnpickler.__init__(self, filename, fobj)
            self._guard_init(allowlist)

        def load_build(self) -> None:
            _Guard.load_build(self)
            wrapper = self.stack[-1]
            if not isinstance(wrapper, NumpyArrayWrapper):
                return
            if type(wrapper) is not NumpyArrayWrapper:
                raise self.refuse("a subclass of joblib's array wrapper")
            reason = policy.check_wrapper_fields(vars(wrapper).keys())
            if reason:
                raise self.refuse(reason)
            subclass_name = self._entry_name(wrapper.subclass)
            if subclass_name not in policy.ARRAY_CLASSES:
                raise self.refuse(f"joblib array wrapper of {subclass_name or wrapper.subclass!r}")
            dtype, shape = wrapper.dtype, wrapper.shape
            if not isinstance(dtype, self.np.dtype):
                raise self.refuse("joblib array wrapper without a numpy dtype")
            if type(shape) is not tuple or not all(type(d) is int and d >= 0 for d in shape):
                raise self.refuse("joblib array wrapper without a valid shape")
            if wrapper.order not in ("C", "F"):
                raise self.refuse("joblib array wrapper with an invalid order")
            self.stack.pop()
            if dtype.hasobject:
                # The nested stream is loaded under the same policy (joblib itself used a
                # plain pickle.load here before 1.6).
                inner = _GuardedUnpickler(self.file_handle, self.allowlist)
                array = inner.load()
                if not isinstance(array, self.np.ndarray):
                    raise self.refuse("object-array payload is not an array")
            else:
                args = (self.ensure_native_byte_order,) if native_order else ()
                array = NumpyArrayWrapper.read(wrapper, self, *args)
            self.stack.append(array)

    _install(_GuardedNumpyUnpickler.dispatch)
    _GuardedNumpyUnpickler.dispatch[pickle.BUILD[0]] = _GuardedNumpyUnpickler.load_build
    return _GuardedNumpyUnpickler


# --------------------------------------------------------------------------- entry points


def _opened(source: Any) -> Any:
    """An open binary file for a path, or the caller's own file object (not closed here)."""
    if hasattr(source, "read"):
        return contextlib.nullcontext(source)
    return open(source, "rb")  # noqa: SIM115 - the caller's with closes it


def load_model(path: Any, fmt: str, *, allowlist: dict[str, Any] | None = None) -> Any:
    """Load an uploaded model under the policy, then :func:`check_model` it.

    `path` is a file name, or a binary file object at offset 0 (a replica decrypts its model
    into memory and loads it from there): the same policy applies to both."""
    allowlist = allowlist if allowlist is not None else load_allowlist()
    if fmt == "pickle":
        with _opened(path) as fh:
            model = _GuardedUnpickler(fh, allowlist).load()
            if fh.read(1):
                raise UnsafeModelError("refused by the loader: data after the pickle stream")
    elif fmt == "joblib":
        model = _load_joblib(path, allowlist)
    elif fmt == "skops":
        model = _load_skops(path, allowlist)
    else:
        raise ValueError(f"unknown model format {fmt!r}")
    check_model(model, allowlist)
    return model


def _load_joblib(path: Any, allowlist: dict[str, Any]) -> Any:
    from joblib import numpy_pickle_utils as utils

    # joblib's own decompressing reader (the name changed in joblib 1.5).
    opener = getattr(utils, "_validate_fileobject_and_memmap", None) or utils._read_fileobject
    cls = _joblib_unpickler_class()
    name = path if isinstance(path, (str, os.PathLike)) else "<memory>"
    with _opened(path) as f, opener(f, name, None) as opened:
        fobj = opened[0] if isinstance(opened, tuple) else opened
        if isinstance(fobj, str):
            # joblib < 0.10 single-file container: a zlib stream of one pickle.
            import zlib

            from joblib.numpy_pickle_compat import read_zfile

            with _opened(path) as raw:
                raw.seek(0)
                data = read_zfile(raw) if callable(read_zfile) else zlib.decompress(raw.read())
            fobj = io.BytesIO(data)
        unpickler = cls(name, fobj, allowlist)
        model = unpickler.load()
        if fobj.read(1):
            raise UnsafeModelError("refused by the loader: data after the pickle stream")
        return model


def _load_skops(path: Any, allowlist: dict[str, Any]) -> Any:
    import skops.io as sio

    if hasattr(path, "read"):
        data = path.read()
        untrusted = sio.get_untrusted_types(data=data)
        path = io.BytesIO(data)
    else:
        untrusted = sio.get_untrusted_types(file=path)
    refused = [t for t in untrusted if policy.check_allowed(t, allowlist)]
    if refused:
        raise UnsafeModelError(
            f"refused by the loader: skops types not on the allowlist: {', '.join(refused[:10])}"
        )
    return sio.load(path, trusted=list(untrusted))


def check_model(model: Any, allowlist: dict[str, Any]) -> None:
    """Refuse estimators whose parameters make prediction reach outside (policy)."""
    seen: set[int] = set()

    def walk(obj: Any, depth: int) -> None:
        if id(obj) in seen or depth > 50:
            return
        seen.add(id(obj))
        get_params = getattr(type(obj), "get_params", None)
        if get_params is None:
            if isinstance(obj, (list, tuple)):
                for item in obj:
                    walk(item, depth + 1)
            return
        try:
            params = obj.get_params(deep=False)
        except Exception:  # noqa: BLE001 - not an estimator after all
            return
        reason = policy.check_estimator_params(type(obj).__name__, params, _pickled_name, allowlist)
        if reason:
            raise UnsafeModelError(f"refused by the loader: {reason}")
        for value in list(params.values()) + [
            v for k, v in vars(obj).items() if k.endswith("_") and not k.startswith("__")
        ]:
            walk(value, depth + 1)

    walk(model, 0)


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--allowlist":
        data = build_allowlist()
        tmp = f"{argv[1]}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, separators=(",", ":"))
        os.replace(tmp, argv[1])
        return 0
    print("usage: safe_load.py --allowlist OUT.json", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
