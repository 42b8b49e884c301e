"""What an uploaded model may contain: the one policy every loader enforces.

Data and pure checks only (the standard library, no Django, no numpy): the
static scanner (:mod:`models_app.validation.scan`), the restricted loaders
(:mod:`models_app.validation.safe_load`, run by the sandbox and by the model
server in every image and process replica) and the validation pipeline all ask
this module. A reviewer changes what a model may contain here, and only here.

Two layers of names:

* :func:`check_global` is the *static gate*: the shape of a name, the denylist
  with its reasons, and the coarse families (scikit-learn classes, numpy
  reconstruction helpers, scipy sparse). The scanner applies it before any
  environment exists.
* The *exact allowlist* of one environment (:data:`AllowList`) is enumerated
  inside that environment by :func:`safe_load.build_allowlist` from the real
  objects (``sklearn.utils.all_estimators()`` and subclasses of
  :data:`SKLEARN_BASE_CLASSES`, the helper types of :data:`SKLEARN_HELPER_MODULES`
  and :data:`SKLEARN_HELPER_NAMES`, :data:`STATIC_ALLOWED`), each named by its
  real ``__module__`` and ``__qualname__`` (so a re-export under another module
  never matches). Every load refuses any other name, and the pipeline refuses a
  file whose scanned names are not all on it.

And rules for what the stream may do with those names (:func:`check_state`,
:func:`check_wrapper_fields`, :func:`check_estimator_params`): at most one
BUILD per object made by an allowed call, with a literal state whose keys are
plain ``str``, no dunder names and no names of the class's methods.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

# --------------------------------------------------------------------------
# The static gate
# --------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# scikit-learn classes (estimators, transformers, trees, losses, kernels...)
# are CamelCase, possibly with leading underscores for private ones.
_CLASS_NAME = re.compile(r"_*[A-Z][A-Za-z0-9_]*\Z")
# Cython's generated unpickling helper for cdef classes: __pyx_unpickle_X(type,
# checksum, state) checks that type is a subclass of X and that the checksum
# matches X's layout, then restores its fields.
_CYTHON_UNPICKLE = re.compile(r"__pyx_unpickle_[A-Za-z_][A-Za-z0-9_]*\Z")
_SKLEARN_METRIC = re.compile(r"[a-z][a-z0-9_]*_(score|error|loss|deviance)\Z")
_SCIPY_SPARSE_NAME = re.compile(r"(csr|csc|coo|bsr|dia|dok|lil)_(matrix|array)\Z")
_SCIPY_SPARSE_MODULES = frozenset(
    ["scipy.sparse"]
    + [
        f"scipy.sparse.{prefix}{kind}"
        for prefix in ("_", "")
        for kind in (
            "csr",
            "csc",
            "coo",
            "bsr",
            "dia",
            "dok",
            "lil",
            "arrays",
        )
    ]
)

NUMPY_ARRAY_WRAPPER = "joblib.numpy_pickle.NumpyArrayWrapper"

_ALLOWED: dict[str, str] = {
    # numpy arrays, dtypes and scalars (pickled by ndarray/dtype.__reduce__).
    "numpy.core.multiarray._reconstruct": "numpy array reconstruction",
    "numpy._core.multiarray._reconstruct": "numpy array reconstruction",
    "numpy.core.multiarray.scalar": "numpy scalar reconstruction",
    "numpy._core.multiarray.scalar": "numpy scalar reconstruction",
    "numpy.core.numeric._frombuffer": "numpy array from a protocol-5 buffer",
    "numpy._core.numeric._frombuffer": "numpy array from a protocol-5 buffer",
    "numpy.ndarray": "numpy array type",
    "numpy.matrix": "numpy matrix type",
    "numpy.dtype": "numpy dtype",
    # numpy random state (estimators may hold a RandomState/Generator).
    "numpy.random._pickle.__randomstate_ctor": "numpy RandomState unpickling helper",
    "numpy.random._pickle.__bit_generator_ctor": "numpy bit generator unpickling helper",
    "numpy.random._pickle.__generator_ctor": "numpy Generator unpickling helper",
    "numpy.random.__RandomState_ctor": "numpy < 1.17 RandomState unpickling helper",
    "numpy.random.mtrand.RandomState": "numpy RandomState",
    "numpy.random._generator.Generator": "numpy Generator",
    "numpy.random._mt19937.MT19937": "numpy bit generator",
    "numpy.random._pcg64.PCG64": "numpy bit generator",
    "numpy.random._pcg64.PCG64DXSM": "numpy bit generator",
    "numpy.random._philox.Philox": "numpy bit generator",
    "numpy.random._sfc64.SFC64": "numpy bit generator",
    "numpy.random.bit_generator.SeedSequence": "numpy seed sequence",
    "numpy.random.bit_generator.SeedlessSeedSequence": "numpy seed sequence",
    # Masked arrays (GridSearchCV.cv_results_ holds them).
    "numpy.ma.core._mareconstruct": "numpy masked array reconstruction",
    "numpy.ma.core.MaskedArray": "numpy masked array type",
    "numpy.ma.MaskedArray": "numpy masked array type",
    # Reductions FeatureAgglomeration keeps as its pooling function.
    "numpy.mean": "numpy reduction (FeatureAgglomeration pooling)",
    "numpy.median": "numpy reduction (FeatureAgglomeration pooling)",
    "numpy.max": "numpy reduction (FeatureAgglomeration pooling)",
    "numpy.min": "numpy reduction (FeatureAgglomeration pooling)",
    "numpy.sum": "numpy reduction (FeatureAgglomeration pooling)",
    # SplineTransformer's fitted splines.
    "scipy.interpolate._bsplines.BSpline": "B-spline (coefficients and knots)",
    "scipy._lib.array_api_compat.numpy._aliases.asarray": "array namespace a BSpline keeps",
    # joblib's inline array placeholder.
    NUMPY_ARRAY_WRAPPER: "joblib inline numpy array",
    # Python's own reconstruction helpers.
    "copyreg._reconstructor": "object reconstruction for protocols 0/1 (cls.__new__ + __init__)",
    "copyreg.__newobj__": "cls.__new__(cls, *args)",
    "_codecs.encode": "str -> bytes for protocol 0-2 bytes objects (numpy array data)",
    "collections.OrderedDict": "ordered dict",
}
for _name in (
    "object",
    "slice",
    "set",
    "frozenset",
    "complex",
    "bytearray",
    "bytes",
    "int",
    "float",
    "str",
    "bool",
    "list",
    "dict",
    "tuple",
    "range",
    "Ellipsis",
    "NotImplemented",
):
    _ALLOWED[f"builtins.{_name}"] = "plain built-in data type"
# numpy scalar types (e.g. ``dtype=np.float64`` estimator parameters).
for _name in (
    "bool_",
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "intp",
    "uintp",
    "intc",
    "uintc",
    "short",
    "ushort",
    "longlong",
    "ulonglong",
    "byte",
    "ubyte",
    "float16",
    "float32",
    "float64",
    "half",
    "single",
    "double",
    "longdouble",
    "complex64",
    "complex128",
    "csingle",
    "cdouble",
    "clongdouble",
    "str_",
    "bytes_",
    "object_",
    "void",
    "datetime64",
    "timedelta64",
    "number",
    "integer",
    "floating",
    "generic",
):
    _ALLOWED[f"numpy.{_name}"] = "numpy scalar type"
# Element-wise numpy ufuncs (FunctionTransformer / TransformedTargetRegressor
# ``func=np.log1p`` and friends). They compute on arrays and nothing else.
for _name in (
    "log",
    "log1p",
    "log2",
    "log10",
    "exp",
    "expm1",
    "exp2",
    "sqrt",
    "cbrt",
    "square",
    "absolute",
    "fabs",
    "sign",
    "negative",
    "positive",
    "reciprocal",
    "sin",
    "cos",
    "tan",
    "arcsin",
    "arccos",
    "arctan",
    "sinh",
    "cosh",
    "tanh",
    "arcsinh",
    "arccosh",
    "arctanh",
    "floor",
    "ceil",
    "rint",
    "trunc",
    "deg2rad",
    "rad2deg",
):
    _ALLOWED[f"numpy.{_name}"] = "element-wise numpy math function"
# scikit-learn functions that legitimately appear inside fitted models.
for _module in (
    "sklearn.neighbors._kd_tree",
    "sklearn.neighbors._ball_tree",
    "sklearn.neighbors._binary_tree",
    "sklearn.neighbors.kd_tree",
    "sklearn.neighbors.ball_tree",
    "sklearn.metrics._dist_metrics",
    "sklearn.neighbors._dist_metrics",
    "sklearn.neighbors.dist_metrics",
):
    _ALLOWED[f"{_module}.newObj"] = "tree/distance-metric unpickling helper: cls.__new__(cls)"
# Other scikit-learn helpers with lower-case names: SKLEARN_HELPER_NAMES below.

_CODE = "executes arbitrary Python code"
_IMPORT = "imports arbitrary modules"
_ATTR = "arbitrary attribute access: reaches any function (e.g. os.system) from an allowed object"

_DENIED_EXACT: dict[str, str] = {
    "builtins.eval": _CODE,
    "builtins.exec": _CODE,
    "builtins.compile": "compiles code objects (" + _CODE + ")",
    "builtins.__import__": _IMPORT,
    "builtins.getattr": _ATTR,
    "builtins.setattr": "sets arbitrary attributes (monkey-patches modules and classes)",
    "builtins.delattr": "deletes arbitrary attributes",
    "builtins.open": "opens, reads and overwrites files",
    "builtins.globals": "exposes interpreter globals",
    "builtins.locals": "exposes interpreter locals",
    "builtins.vars": "exposes object namespaces",
    "builtins.breakpoint": "starts a debugger",
    "builtins.input": "reads from the console",
    "builtins.type": "creates classes dynamically",
    "builtins.memoryview": "raw buffer access",
    "builtins.help": "starts the interactive help system (imports modules)",
    "collections.defaultdict": "calls its factory whenever a key is missing (an apply gadget)",
    "functools.partial": "wraps any callable with preset arguments, used to smuggle calls",
    "functools.reduce": "calls any callable repeatedly",
    "operator.attrgetter": _ATTR,
    "operator.methodcaller": "calls any method by name on any object",
    "operator.itemgetter": "item lookup gadget",
    "codecs.decode": "decodes attacker data (e.g. base64/rot13 payloads for eval)",
    "_codecs.decode": "decodes attacker data (e.g. base64/rot13 payloads for eval)",
    "numpy.core._ufunc_reconstruct": _IMPORT + " and returns any attribute",
    "numpy._core._ufunc_reconstruct": _IMPORT + " and returns any attribute",
    "numpy.load": "loads files, including pickles (allow_pickle)",
    "numpy.save": "writes files",
    "numpy.savez": "writes files",
    "numpy.fromfile": "reads files",
    "numpy.memmap": "maps files into memory",
    "numpy.loadtxt": "reads files",
    "numpy.genfromtxt": "reads files",
    "numpy.savetxt": "writes files",
    "numpy.frompyfunc": "wraps any callable",
    "numpy.vectorize": "wraps any callable",
    "joblib.load": "nested deserialisation that bypasses this scan",
    "joblib.numpy_pickle.load": "nested deserialisation that bypasses this scan",
    "joblib.numpy_pickle_compat.NDArrayWrapper": (
        "legacy joblib (< 0.10) array stored in a companion file: a single upload cannot "
        "carry it, and the loader opens the path named in the pickle with "
        "np.load(allow_pickle=True)"
    ),
    "joblib.numpy_pickle.NDArrayWrapper": (
        "legacy joblib (< 0.10) array stored in a companion file: a single upload cannot "
        "carry it, and the loader opens the path named in the pickle with "
        "np.load(allow_pickle=True)"
    ),
    "joblib.numpy_pickle.ZNDArrayWrapper": (
        "legacy joblib (< 0.10) compressed array stored in a companion file "
        "(the loader opens a path named in the pickle)"
    ),
}

_DENIED_MODULES: tuple[tuple[str, str], ...] = (
    ("os", "operating-system access: runs shell commands, reads/writes/deletes files"),
    ("posix", "operating-system access: runs shell commands, reads/writes/deletes files"),
    ("nt", "operating-system access: runs shell commands, reads/writes/deletes files"),
    ("posixpath", "file-system path functions"),
    ("ntpath", "file-system path functions"),
    ("subprocess", "starts arbitrary processes"),
    ("pty", "spawns processes"),
    ("commands", "runs shell commands"),
    ("runpy", "runs arbitrary Python code and modules"),
    ("code", _CODE),
    ("codeop", "compiles code"),
    ("shutil", "copies, moves and deletes files and directory trees"),
    ("tempfile", "creates files"),
    ("pathlib", "reads and writes files"),
    ("io", "opens files"),
    ("_io", "opens files"),
    ("glob", "lists the file system"),
    ("webbrowser", "opens URLs and launches programs"),
    ("importlib", _IMPORT),
    ("pkgutil", _IMPORT),
    ("imp", _IMPORT),
    ("zipimport", _IMPORT),
    (
        "codecs",
        "codec functions decode attacker data for eval-style tricks "
        "(only _codecs.encode is allowed)",
    ),
    (
        "_codecs",
        "codec functions decode attacker data for eval-style tricks "
        "(only _codecs.encode is allowed)",
    ),
    ("pickle", "nested deserialisation that bypasses this scan"),
    ("_pickle", "nested deserialisation that bypasses this scan"),
    ("cPickle", "nested deserialisation that bypasses this scan"),
    ("copy_reg", "extension registry manipulation"),
    ("copyreg", "extension registry manipulation"),
    ("shelve", "nested deserialisation that bypasses this scan"),
    ("dill", "nested deserialisation and code objects"),
    ("cloudpickle", "nested deserialisation and code objects"),
    ("marshal", "loads code objects"),
    ("types", "constructs code objects, functions and modules"),
    ("inspect", "introspection that reaches any object"),
    ("functools", "higher-order helpers that call or wrap arbitrary callables"),
    ("operator", "attribute/item/method lookup gadgets"),
    ("socket", "network access"),
    ("ssl", "network access"),
    ("urllib", "network access"),
    ("http", "network access"),
    ("ftplib", "network access"),
    ("smtplib", "network access"),
    ("telnetlib", "network access"),
    ("requests", "network access"),
    ("httpx", "network access"),
    ("asyncio", "runs subprocesses and network I/O"),
    ("multiprocessing", "starts processes"),
    ("threading", "starts threads"),
    ("signal", "installs signal handlers"),
    ("sys", "interpreter internals (module table, exit, tracing hooks)"),
    ("ctypes", "raw memory access and native function calls"),
    ("_ctypes", "raw memory access and native function calls"),
    ("platform", "runs commands (platform.popen)"),
    ("pdb", "starts a debugger"),
    ("bdb", "debugger internals"),
    ("timeit", _CODE),
    ("trace", _CODE),
    ("cProfile", _CODE),
    ("profile", _CODE),
    ("builtins", "built-in function that is not a plain data type"),
    ("__builtin__", "built-in function that is not a plain data type"),
    ("numpy.testing", "test helpers (run processes, write files)"),
    ("numpy.f2py", "compiles and imports native code"),
    ("numpy.distutils", "builds and runs compilers"),
    ("numpy.ctypeslib", "loads native libraries"),
    ("numpy.lib.npyio", "reads and writes files"),
    ("numpy.lib.format", "reads and writes files (including pickled arrays)"),
    (
        "joblib",
        "joblib machinery other than the inline array wrapper "
        "(Memory writes to disk, Parallel runs callables)",
    ),
)

# Non-scikit-learn classes that scikit-learn modules import under their own
# name (found by listing every module of sklearn 1.3-1.9): the pickle can reach
# them as e.g. ``sklearn.callback._transport.Client`` although they are
# multiprocessing, pathlib, io, tempfile, joblib... objects.
_SKLEARN_FOREIGN_NAMES = frozenset(
    {
        "Client", "Listener", "Connection", "Thread", "Timer", "Process", "Pool", "Queue",
        "SimpleQueue", "JoinableQueue", "Manager", "Popen", "Path", "PosixPath",
        "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath", "StringIO", "BytesIO",
        "FileIO", "TextIOWrapper", "NamedTemporaryFile", "TemporaryFile",
        "TemporaryDirectory", "SpooledTemporaryFile", "MethodType", "FunctionType",
        "CodeType", "ModuleType", "Memory", "Parallel", "ThreadpoolController", "Request",
        "GzipFile", "BZ2File", "LZMAFile", "ZipFile", "TarFile", "Pickler", "Unpickler",
        "Template", "ThreadPoolExecutor", "ProcessPoolExecutor", "Logger", "FileHandler",
    }
)  # fmt: skip
# Module-level constants (TREE_LEAF, SIMPLE_METHODS, _SCORERS...): not classes,
# and the mutable ones are shared process-wide state.
_CONSTANT_NAME = re.compile(r"_*[A-Z][A-Z0-9]*(_[A-Z0-9]*)+\Z|_+[A-Z][A-Z0-9]*\Z")

_SKLEARN_DENIED_MODULES: tuple[tuple[str, str], ...] = (
    ("sklearn.callback", "callbacks open listeners, threads and inter-process transports"),
    ("sklearn.utils._repr_html", "HTML rendering helpers (files, templates)"),
    ("sklearn.utils._estimator_html_repr", "HTML rendering helpers (files, templates)"),
    ("sklearn.datasets", "dataset loaders download from the network and write files"),
    ("sklearn.utils._testing", "test helpers (run scripts, create files)"),
    ("sklearn.utils.estimator_checks", "test helpers"),
    ("sklearn.utils._mocking", "test helpers"),
    ("sklearn.utils.testing", "test helpers"),
    ("sklearn.externals", "vendored third-party code (imports modules by name)"),
    ("sklearn.utils._joblib", "re-exports joblib (Memory writes to disk, Parallel runs callables)"),
    ("sklearn.utils.parallel", "runs callables in worker processes"),
    ("sklearn.utils.fixes", "compatibility shims"),
    ("sklearn._config", "changes process-wide configuration"),
    ("sklearn.utils._show_versions", "introspects the environment"),
    ("sklearn.utils.discovery", "imports every scikit-learn module"),
    ("sklearn.__check_build", "build helpers"),
    ("sklearn._build_utils", "build helpers"),
    ("sklearn.conftest", "test configuration"),
    ("sklearn.experimental", "import-time side effects"),
    ("sklearn.utils._response", "calls estimator methods named by a string (getattr gadget)"),
    ("sklearn.utils._available_if", "descriptors that call attributes by name"),
    ("sklearn.utils.metaestimators", "descriptors that call attributes by name"),
    ("sklearn.utils._array_api", "imports array libraries by name"),
    ("sklearn.utils._optional_dependencies", "imports modules by name"),
    ("sklearn.utils.deprecation", "decorators that wrap callables"),
    ("sklearn.utils._user_interface", "timing/printing helpers that wrap callables"),
)


def _module_matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _check_sklearn(module: str, name: str) -> str | None:
    """Allow scikit-learn classes, refuse its functions and risky modules.

    Classes are safe to reconstruct: estimators only store their parameters
    (callable parameters are themselves globals, checked separately). Module
    level *functions* are different: a pickle can call any of them with any
    arguments, and some reach getattr, imports, files or the network.
    """
    for prefix, reason in _SKLEARN_DENIED_MODULES:
        if _module_matches(module, prefix):
            return f"scikit-learn module {prefix}: {reason}"
    if any(part == "tests" or part.startswith("test") for part in module.split(".")):
        return "scikit-learn test code"
    if name in _SKLEARN_FOREIGN_NAMES:
        return (
            f"{name} is a non-scikit-learn class (file, process, network or I/O object) "
            "that scikit-learn modules import; it is not part of any model"
        )
    if _CONSTANT_NAME.match(name):
        return "scikit-learn module constant, not a class"
    if _CLASS_NAME.match(name) or _CYTHON_UNPICKLE.match(name):
        return None
    if module.startswith("sklearn.metrics") and _SKLEARN_METRIC.match(name):
        return None
    return (
        "scikit-learn function, not a class: a pickle can call it with any arguments "
        "(only estimator classes and a few pure helpers such as metric functions are allowed)"
    )


def check_global(module: str, name: str) -> str | None:
    """Return why importing ``module.name`` from a model is refused, or None if allowed.

    The allowlist covers what scikit-learn models are made of: scikit-learn
    classes, numpy array/dtype/scalar/random-state reconstruction helpers,
    scipy sparse matrices, joblib's inline array wrapper and a few plain
    built-in types. Everything else is refused; well-known dangerous globals
    get a specific reason. Loaders can reuse this in a restricted
    ``Unpickler.find_class`` as a second line of defence.
    """
    if not isinstance(module, str) or not isinstance(name, str):
        return "module/name are not strings"
    parts = module.split(".")
    if not all(_IDENTIFIER.match(part) for part in parts):
        return "module name is not a valid dotted Python identifier"
    if "." in name:
        return (
            "dotted attribute path in the name: pickle protocol 4+ follows it attribute "
            "by attribute and reaches anything the module imported (e.g. sklearn.base.os)"
        )
    if not _IDENTIFIER.match(name):
        return "name is not a valid Python identifier"
    full = f"{module}.{name}"
    denied = _DENIED_EXACT.get(full)
    if denied is not None:
        return denied
    if full in _ALLOWED or full in SKLEARN_HELPER_NAMES:
        return None
    for prefix, reason in _DENIED_MODULES:
        if _module_matches(module, prefix):
            return reason
    top = parts[0]
    if top == "sklearn":
        return _check_sklearn(module, name)
    if top == "scipy":
        if module in _SCIPY_SPARSE_MODULES and _SCIPY_SPARSE_NAME.match(name):
            return None
        return "scipy object other than a sparse matrix/array class"
    if top == "numpy":
        if module.startswith("numpy.random.") and _CYTHON_UNPICKLE.match(name):
            return None
        return (
            "numpy function not on the allowlist (only array/dtype/scalar reconstruction "
            "helpers, scalar types and element-wise math functions are allowed)"
        )
    return (
        f"module {module!r} is not on the allowlist (a model may only reference "
        "scikit-learn, numpy, scipy.sparse and joblib array classes)"
    )


# --------------------------------------------------------------------------
# The exact allowlist of one environment
# --------------------------------------------------------------------------

#: An environment's allowlist as :func:`safe_load.build_allowlist` writes it:
#: ``{"versions": {...}, "names": {"module.Name": {"kind": "class"|"function",
#: "methods": [...], "setstate": bool}}}``.
AllowList = Mapping[str, Any]

#: Classes defined in scikit-learn (by ``__module__``) that subclass one of these
#: are allowed: estimators (fitted models nest private ones such as ``_BinMapper``),
#: kernels, CV splitters and scorers (in search and calibration meta-estimators),
#: losses and links (in gradient boosting and linear models).
SKLEARN_BASE_CLASSES = (
    "sklearn.base.BaseEstimator",
    "sklearn.gaussian_process.kernels.Kernel",
    "sklearn.gaussian_process.kernels.Hyperparameter",
    "sklearn.model_selection._split.BaseCrossValidator",
    "sklearn.model_selection._split.BaseShuffleSplit",
    "sklearn.model_selection._split._RepeatedSplits",
    "sklearn.metrics._scorer._BaseScorer",
    "sklearn._loss.loss.BaseLoss",
    "sklearn._loss.link.BaseLink",
)
#: Modules whose own classes (and Cython ``__pyx_unpickle_*`` / ``newObj``
#: helpers) hold fitted state: trees, losses, distance metrics, neighbour trees,
#: the optimisers an MLP keeps. Pure data structures, each with a ``__setstate__``
#: that only restores arrays.
SKLEARN_HELPER_MODULES = (
    "sklearn.tree._tree",
    "sklearn._loss._loss",
    "sklearn._loss.link",
    "sklearn.metrics._dist_metrics",
    "sklearn.neighbors._dist_metrics",
    "sklearn.neighbors._kd_tree",
    "sklearn.neighbors._ball_tree",
    "sklearn.neighbors._binary_tree",
    "sklearn.ensemble._gb_losses",
    "sklearn.linear_model._sgd_fast",
    "sklearn.ensemble._hist_gradient_boosting.predictor",
    "sklearn.neural_network._stochastic_optimizers",
)
#: Single helper types and pure functions found inside fitted models.
SKLEARN_HELPER_NAMES = (
    "sklearn.utils._encode._nandict",
    "sklearn.utils._bunch.Bunch",
    "sklearn.compose._column_transformer.make_column_selector",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.cluster._bisect_k_means._BisectingTree",
    "sklearn.cluster._birch._CFNode",
    "sklearn.cluster._birch._CFSubcluster",
    "sklearn.utils._metadata_requests.MetadataRequest",
    "sklearn.utils._metadata_requests.MethodMetadataRequest",
    "sklearn.utils._metadata_requests.MetadataRouter",
    "sklearn.utils._metadata_requests.MethodMapping",
    "sklearn.utils._metadata_requests.MethodPair",
    "sklearn.utils._metadata_requests.RouterMappingPair",
    "sklearn.cluster._kmeans._kmeans_single_lloyd",
    "sklearn.cluster._kmeans._kmeans_single_elkan",
    "sklearn.feature_selection._univariate_selection.f_classif",
    "sklearn.feature_selection._univariate_selection.chi2",
    "sklearn.feature_selection._univariate_selection.f_regression",
    "sklearn.feature_selection._univariate_selection.r_regression",
    "sklearn.feature_selection._univariate_selection.f_oneway",
    "sklearn.feature_selection._mutual_info.mutual_info_classif",
    "sklearn.feature_selection._mutual_info.mutual_info_regression",
)
#: The metric functions that scikit-learn's named scorers wrap are allowed too
#: (enumerated from ``sklearn.metrics.get_scorer_names()``).

#: Non-scikit-learn names, version-independent; each must resolve in the
#: environment to be listed. Apply-like and identity-like helpers are absent:
#: nothing here returns an object it was given or calls a callable it was given.
STATIC_ALLOWED = tuple(name for name in _ALLOWED if not name.startswith("sklearn."))
#: scipy.sparse classes: resolved by attribute of ``scipy.sparse`` and named by
#: their real module (``scipy.sparse._csr.csr_matrix``).
SCIPY_SPARSE_CLASSES = tuple(
    f"{kind}_{box}"
    for kind in ("csr", "csc", "coo", "bsr", "dia", "dok", "lil")
    for box in ("matrix", "array")
)
#: numpy.random modules whose classes and Cython unpickling helpers are allowed.
NUMPY_RANDOM_MODULES = (
    "numpy.random._mt19937",
    "numpy.random._pcg64",
    "numpy.random._philox",
    "numpy.random._sfc64",
    "numpy.random.bit_generator",
    "numpy.random._generator",
    "numpy.random.mtrand",
)

#: Calls whose first argument is the class of the object they return; the
#: argument must itself be an allowed class (never a class made while loading).
CLASS_FIRST_ARG = frozenset(
    {
        "copyreg._reconstructor",
        "copyreg.__newobj__",
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.ma.core._mareconstruct",
    }
    | {name for name in _ALLOWED if name.endswith(".newObj")}
)
#: Functions that may be *called* while loading: the reconstruction helpers. Every
#: other allowed function (ufuncs, metrics, pooling and score functions) may only be
#: stored in a model, never called by the stream.
RECONSTRUCTORS = CLASS_FIRST_ARG | frozenset(
    {
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
        "numpy.core.numeric._frombuffer",
        "numpy._core.numeric._frombuffer",
        "numpy.random._pickle.__randomstate_ctor",
        "numpy.random._pickle.__bit_generator_ctor",
        "numpy.random._pickle.__generator_ctor",
        "numpy.random.__RandomState_ctor",
        "_codecs.encode",
    }
)


#: Reconstruction helpers whose result the stream then BUILDs (random generators get
#: their state that way); the loader checks the real type of what they returned.
BUILDABLE_RESULTS = frozenset(
    {
        "numpy.random._pickle.__randomstate_ctor",
        "numpy.random._pickle.__bit_generator_ctor",
        "numpy.random._pickle.__generator_ctor",
        "numpy.random.__RandomState_ctor",
    }
)


def _is_cython_unpickle(full: str) -> bool:
    return full.rpartition(".")[2].startswith("__pyx_unpickle_")


def _buildable(full: str) -> bool:
    return full in BUILDABLE_RESULTS or _is_cython_unpickle(full)


def may_call(full: str, kind: str) -> bool:
    """Whether the stream may call the allowed global ``full`` (of ``kind``) while loading."""
    return kind == "class" or full in RECONSTRUCTORS or _is_cython_unpickle(full)


#: Array types a joblib wrapper or ``_reconstruct`` may produce.
ARRAY_CLASSES = frozenset(
    {"numpy.ndarray", "numpy.matrix", "numpy.ma.core.MaskedArray", "numpy.memmap"}
)
#: Base types ``copyreg._reconstructor(cls, base, state)`` may start from.
RECONSTRUCTOR_BASES = frozenset(
    f"builtins.{name}" for name in ("object", "dict", "list", "tuple", "set", "int", "float", "str")
)
#: joblib's inline array placeholder: exactly these attributes, nothing else
#: (an extra key such as ``read_array`` would replace the method joblib calls).
WRAPPER_FIELDS = frozenset(
    {"subclass", "shape", "order", "dtype", "allow_mmap", "numpy_array_alignment_bytes"}
)
WRAPPER_REQUIRED = frozenset({"subclass", "shape", "order", "dtype"})

_DUNDER = re.compile(r"__.*__\Z", re.S)


#: Modules that pickles name by another name the interpreter also registers: Cython 3
#: builds of scikit-learn 1.4-1.5 write their loss helpers as ``_loss.__pyx_unpickle_*``.
#: Both the scanner and the loader judge (and resolve) such a name as the real module's.
MODULE_ALIASES = {"_loss": "sklearn._loss._loss"}


def canonical_module(module: str) -> str:
    """The module a pickled name really refers to (see :data:`MODULE_ALIASES`)."""
    return MODULE_ALIASES.get(module, module)


def allowlist_entry(allowlist: AllowList, full: str) -> Mapping[str, Any] | None:
    """The allowlist entry of ``module.name``, or None when it is not allowed."""
    return allowlist.get("names", {}).get(full)


def check_allowed(full: str, allowlist: AllowList) -> str | None:
    """Why ``full`` is refused by the environment's exact allowlist, or None."""
    if allowlist_entry(allowlist, full) is not None:
        return None
    versions = allowlist.get("versions") or {}
    where = f"scikit-learn {versions['scikit-learn']}" if "scikit-learn" in versions else "this"
    return (
        f"not on the allowlist of the {where} environment (only the public estimators, "
        "the helper types fitted models contain and numpy/scipy data types are)"
    )


def check_state(full: str, keys: Iterable[Any], allowlist: AllowList) -> str | None:
    """Why a BUILD state with these keys may not be applied to a ``full`` object, or None.

    Keys must be plain ``str`` (a ``str`` subclass can compare equal to a name it
    does not print as), never special names (``__class__``, ``__dict__``,
    ``__reduce__``...), and never the name of one of the class's methods or
    descriptors: an instance attribute of that name would replace the method for
    every caller, the loader's own calls included.
    """
    entry = allowlist_entry(allowlist, full) or {}
    methods = set(entry.get("methods") or ())
    for key in keys:
        if type(key) is not str:
            return f"a state key is a {type(key).__name__}, not a plain str"
        if _DUNDER.match(key):
            return f"the state sets the special attribute {key!r}"
        if key in methods:
            return f"the state key {key!r} would shadow the method {full}.{key}"
    return None


def check_wrapper_fields(keys: Iterable[Any]) -> str | None:
    """Why a joblib array wrapper with these attributes is refused, or None."""
    keys = list(keys)
    if any(type(key) is not str for key in keys):
        return "joblib array wrapper state has a key that is not a plain str"
    extra = set(keys) - WRAPPER_FIELDS
    if extra:
        return f"joblib array wrapper state has unexpected attributes {sorted(extra)}"
    missing = WRAPPER_REQUIRED - set(keys)
    if missing:
        return f"joblib array wrapper state lacks {sorted(missing)}"
    return None


#: Parameters that make ``predict``/``transform`` read files or reach outside:
#: ``{class name: {parameter: allowed values}}``. Text vectorizers read the path
#: a client sends when ``input`` is ``'filename'`` or ``'file'``.
SAFE_PARAMETER_VALUES: dict[str, dict[str, frozenset[Any]]] = {
    name: {"input": frozenset({"content"})}
    for name in ("CountVectorizer", "TfidfVectorizer", "HashingVectorizer")
}
#: Parameters holding a callable that runs at predict time: it must be a
#: function or class on the allowlist (a ufunc such as ``numpy.log1p``).
CALLABLE_PARAMETERS = frozenset(
    {"func", "inverse_func", "preprocessor", "tokenizer", "analyzer", "score_func", "metric",
     "kernel", "transformer", "selector", "strip_accents"}
)  # fmt: skip


def check_estimator_params(
    cls_name: str, params: Mapping[str, Any], callable_name: Any, allowlist: AllowList
) -> str | None:
    """Why an estimator with these parameters may not serve, or None.

    ``callable_name(value)`` names a callable parameter as pickle would
    (``module.qualname``), or returns None when it cannot.
    """
    for param, allowed in SAFE_PARAMETER_VALUES.get(cls_name, {}).items():
        value = params.get(param)
        if param in params and value not in allowed:
            return (
                f"{cls_name}({param}={value!r}) reads whatever path or file object a client "
                f"sends at predict time; only {sorted(allowed)} may be served"
            )
    for param in CALLABLE_PARAMETERS & set(params):
        value = params[param]
        if value is None or isinstance(value, (str, int, float, bool)) or not callable(value):
            continue
        name = callable_name(value)
        if name is None or allowlist_entry(allowlist, name) is None:
            return (
                f"{cls_name}({param}=...) calls {name or type(value).__name__}, which is "
                "not on the allowlist"
            )
    return None


def check_scanned(
    globals_found: Iterable[str],
    called: Iterable[str],
    state_keys: Mapping[str, Iterable[str]],
    allowlist: AllowList,
) -> list[tuple[str, str]]:
    """What the scanner found, against the environment's exact allowlist.

    Returns ``(name, reason)`` pairs: names not on the allowlist, allowed functions
    the stream calls although they may only be kept, and BUILD states whose keys
    shadow the class's methods.
    """
    problems: list[tuple[str, str]] = []
    for full in globals_found:
        reason = check_allowed(full, allowlist)
        if reason:
            problems.append((full, reason))
    for full in called:
        entry = allowlist_entry(allowlist, full)
        if entry is not None and not may_call(full, entry.get("kind", "")):
            problems.append((full, "may be kept in a model but not called while loading"))
    for full, keys in state_keys.items():
        entry = allowlist_entry(allowlist, full)
        if entry is not None and entry.get("kind") != "class" and not _buildable(full):
            problems.append((full, "BUILD on what a function returned (only objects of "
                             "allowed classes may have their state set)"))  # fmt: skip
        reason = check_state(full, keys, allowlist)
        if reason:
            problems.append((full, reason))
    return problems
