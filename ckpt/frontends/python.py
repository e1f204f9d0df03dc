"""The operator-overloading front end: a Python function becomes a model (the seed's §3, "OO").

    import ckpt
    from ckpt import log, sin

    @ckpt.traced(inputs={"x1": {"shape": [], "value": 2.0, "grad": True},
                         "x2": {"shape": [], "value": 5.0, "grad": True}}, dtype="float64")
    def f(x1, x2):
        return log(x1) + x1 * x2 - sin(x2)

`ckpt run model.py:f` calls f once with `Traced` values. Each overloaded operator, each `ckpt.<op>`
function and each method records one node and nothing else: the recording becomes the very config
document the YAML loader reads (`ckpt export-config` writes it out), so shapes, dtypes, FLOPs and
residuals come from ckpt/ops and ckpt/model as for YAML. Python loops unroll while tracing; a Python
`if` on a traced value cannot be recorded and stops with a message that points to `ckpt.where`.
Op nodes are named v1..vn in the seed's numbering: each as soon as its operands exist (ties in the
order recorded), so `log(x1) + x1 * x2 - sin(x2)` numbers sin before the add, as the seed does.

The decorator's `inputs` and `params` take the YAML leaf keys (shape, init, scale, value, grad,
dtype, high); shapes may name `dims`, which arrive as the function's keyword-only arguments and
which `--set` overrides. The function's positional arguments name its inputs and parameters;
`ckpt.param(name, shape, ...)` declares more parameters while tracing (one per layer in a loop).

The same value type runs eagerly too (`value_and_grad`): each operator computes its value at once
and appends to a tape, and the reverse pass walks the tape backwards with the registry's VJPs.
That is the classic OO tape, recorded anew every step; `ckpt impl` times it against the others.
"""

import contextlib
import importlib.util
import inspect
import os
import re
import sys
import traceback
import zlib

import numpy as np

from ..errors import CkptError, ConfigError, ShapeError
from ..ops import REGISTRY, REQUIRED, Ctx
from ..sizes import MAX_NODES, joint_nodes_error

_ACTIVE = []  # the tape being recorded (a stack: tracing is not re-entrant across threads)
_NUMBERED = re.compile(r"^(v|c)\d+$")


# ---- the declaration ---------------------------------------------------------------------------------
class ModelDecl:
    def __init__(self, fn, inputs, params, dims, dtype, seed, name):
        self.fn, self.inputs, self.params, self.dims = fn, dict(inputs or {}), dict(params or {}), dict(dims or {})
        self.dtype, self.seed, self.name = dtype, seed, name or fn.__name__


def traced(inputs=None, params=None, dims=None, dtype="float32", seed=0, name=None):
    """Declare a function as a model: its inputs and parameters (YAML leaf mappings), named sizes
    (`dims`, passed as keyword-only arguments), dtype, seed and name. (`traced`, since
    `ckpt.model` is the graph package.)"""
    if callable(inputs):  # @ckpt.traced without its arguments
        code = getattr(inputs, "__code__", None)
        raise ConfigError("@ckpt.traced needs the inputs: @ckpt.traced(inputs={\"x\": {\"shape\": [...]}})",
                          file=code and code.co_filename, line=code and code.co_firstlineno)

    def mark(fn):
        for what, m in (("inputs", inputs), ("params", params), ("dims", dims)):
            if m is not None and not isinstance(m, dict):
                raise ConfigError(f"@ckpt.traced({what}=...) must be a mapping of names, got {type(m).__name__}",
                                  file=getattr(getattr(fn, "__code__", None), "co_filename", None),
                                  line=_first_line(fn))
        fn.__ckpt_model__ = ModelDecl(fn, inputs, params, dims, dtype, seed, name)
        return fn
    return mark


def _first_line(fn):
    """The line of a model function's decorator (a class or a callable object has no code: None)."""
    code = getattr(fn, "__code__", None)
    return code.co_firstlineno if code is not None else None


def param(name, shape, init="xavier", scale=1.0, value=None, grad=True):
    """A parameter declared while tracing: `W = ckpt.param(f"W{i}", (D, D))` inside a loop."""
    tape = _ACTIVE[-1] if _ACTIVE else None
    if tape is None:
        raise ConfigError("ckpt.param is called inside a model function while ckpt traces it")
    if not isinstance(shape, (list, tuple)):
        raise _error(f"ckpt.param({name!r}, shape): shape must be a list or tuple of sizes, got {shape!r}")
    # sizes as given (numpy integers as Python ones): the config reader refuses 2.5, not int() rounding it
    m = {"shape": [_plain(d) for d in shape], "init": init}
    if scale != 1.0:
        m["scale"] = scale
    if value is not None:
        m["value"], m["init"] = _plain(value), "value"
    if not grad:
        m["grad"] = False
    return tape.leaf(name, "param", m)


def _plain(v):
    """Config-document form of an attr or constant: lists, not tuples or arrays."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


# ---- the traced value ------------------------------------------------------------------------------
_CONTROL_FLOW = ("a Python `if`, `while`, `and`, `or` or `not` on a traced value cannot be recorded: "
                 "operator overloading records one straight line of operations, so the branch taken "
                 "while tracing would be baked in for every input (the seed, section 3). Compute both "
                 "branches and choose elementwise with ckpt.where(condition, a, b); Python loops over "
                 "plain numbers (range) unroll and are fine")


class Traced:
    """A value in a model being traced: its shape and dtype, and in eager mode its array."""

    __slots__ = ("tape", "ref", "shape", "dtype", "value", "grad")
    __array_ufunc__ = None  # numpy defers to our reflected operators: array * traced records a mul

    def __init__(self, tape, ref, shape, dtype, value=None, grad=False):
        self.tape, self.ref, self.shape, self.dtype, self.value, self.grad = tape, ref, shape, dtype, value, grad

    def __repr__(self):
        return f"Traced({self.ref}, shape={self.shape}, dtype={self.dtype})"

    # arithmetic: each operator records one op; a plain number or array becomes a constant input
    def __add__(self, o): return _record("add", [self, o])
    def __radd__(self, o): return _record("add", [o, self])
    def __sub__(self, o): return _record("sub", [self, o])
    def __rsub__(self, o): return _record("sub", [o, self])
    def __truediv__(self, o): return _record("div", [self, o])
    def __rtruediv__(self, o): return _record("div", [o, self])
    def __matmul__(self, o): return _record("matmul", [self, o])
    def __rmatmul__(self, o): return _record("matmul", [o, self])
    def __neg__(self): return _record("neg", [self])
    def __pos__(self): return self
    def __gt__(self, o): return _record("greater", [self, o])
    def __ge__(self, o): return _record("greater_equal", [self, o])
    def __lt__(self, o): return _record("less", [self, o])
    def __le__(self, o): return _record("less_equal", [self, o])

    def __mul__(self, o):
        if _is_number(o):  # a scale by a constant needs no constant input
            return _record("scale", [self], {"factor": float(o)})
        return _record("mul", [self, o])

    def __rmul__(self, o):
        return self.__mul__(o) if _is_number(o) else _record("mul", [o, self])

    def __pow__(self, o):
        if _is_number(o):
            return _record("pow", [self], {"exponent": float(o)})
        return exp(o * log(self))  # x ** y = exp(y log x), for x > 0

    def __rpow__(self, o):
        if not _is_number(o) or o <= 0:
            raise ConfigError(f"{o!r} ** traced value: the base must be a positive number")
        return exp(self * float(np.log(o)))

    # what a traced value does not have while tracing
    def __bool__(self):
        raise _error(_CONTROL_FLOW)

    def __float__(self):
        raise _error("a traced value has no number while tracing (it stands for every input); keep "
                     "computing with it, or read numbers after `ckpt run`")

    __int__ = __index__ = __float__

    def __iter__(self):
        raise _error("a traced value cannot be iterated while tracing: index it with ops, not a Python loop")

    def __eq__(self, o):  # never a silent identity test: `if x == 0` would quietly take one branch
        raise _error("== and != on traced values are not recorded (equality of floats is rarely meant); "
                     "compare with > >= < <= and choose with ckpt.where")

    __ne__ = __eq__
    __hash__ = object.__hash__

    # numpy-style methods
    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def T(self):
        return _record("transpose", [self])

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return _record("transpose", [self], {"axes": list(axes)} if axes else {})

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return _record("reshape", [self], {"shape": [int(d) for d in shape]})

    def sum(self, axis=None, keepdims=False):
        return _record("sum", [self], {"axis": _plain(axis), "keepdims": keepdims})

    def mean(self, axis=None, keepdims=False):
        return _record("mean", [self], {"axis": _plain(axis), "keepdims": keepdims})


def _is_number(o):
    return isinstance(o, (int, float, np.integer, np.floating)) and not isinstance(o, bool)


def where(condition, a, b):
    """Elementwise choice, recorded as one op: a where `condition` holds (nonzero), else b. Both
    branches are computed; the gradient flows into the branch each element took."""
    return _record("where", [condition, a, b])


def _op_function(name):
    def fn(*inputs, **attrs):
        if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)):  # ckpt.concat([a, b], axis=1)
            inputs = inputs[0]
        return _record(name, list(inputs), attrs)
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"Record the `{name}` op (ckpt/ops) on traced values; on arrays, compute it with numpy."
    return fn


_FUNCTIONS = {}


def __getattr__(name):
    """ckpt.sin, ckpt.linear, ...: one function per op in the registry, made on first use."""
    if name in REGISTRY and not REGISTRY[name].internal:
        if name not in _FUNCTIONS:
            _FUNCTIONS[name] = _op_function(name)
        return _FUNCTIONS[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def exp(x):
    return __getattr__("exp")(x)


def log(x):
    return __getattr__("log")(x)


def _record(name, inputs, attrs=None):
    attrs = {k: _plain(v) for k, v in (attrs or {}).items()}
    tape = next((a.tape for a in inputs if isinstance(a, Traced)), None)
    if tape is None:  # no traced value: compute at once with numpy, through the same rule
        op = REGISTRY[name]
        full = {k: v for k, v in op.attrs.items() if v is not REQUIRED}
        full.update(attrs)
        return op.forward(np, [np.asarray(a) for a in inputs], full)
    if any(isinstance(a, Traced) and a.tape is not tape for a in inputs):
        raise _error(f"{name}: values from two different traces are mixed")
    return tape.record(name, [a if isinstance(a, Traced) else tape.constant(a) for a in inputs], attrs)


def _user_line(tape):
    """The line of the model file being run, for messages and for the recorded node."""
    f = sys._getframe(1)
    while f is not None:
        if tape is not None and f.f_code.co_filename == tape.file:
            return f.f_lineno
        f = f.f_back
    return None


def _error(message):
    tape = _ACTIVE[-1] if _ACTIVE else None
    return ConfigError(message, file=tape.file if tape else None, line=_user_line(tape))


# ---- recording into a config document ---------------------------------------------------------------
class GraphTape:
    """Records leaves and op nodes; `document()` is the config the YAML loader would read."""

    def __init__(self, file, dtype):
        self.file, self.dtype = file, dtype
        self.leaves = {}  # name -> (kind, YAML leaf mapping)
        self.nodes = []  # {"op", "inputs", "attrs", "line"}; inputs name leaves or "#k" (node k)
        self.n_const = 0
        # A bound on the joint forward+gradient graph, kept while recording so that a runaway loop
        # stops at its line: each op's value and residual, a gradient for each op that depends on
        # a leaf taking one, and for each such leaf a differentiable op reads. It is the exact
        # count when every recorded op feeds the loss and no stop_gradient cuts off a gradient;
        # it can only be more, and the loader counts exactly after the trace.
        self.joint, self.grad_refs, self.grad_leaves = 0, set(), set()

    def leaf(self, name, kind, m, shape=None):
        if not isinstance(name, str) or not name or any(c in name for c in ":./ #"):
            raise _error(f"bad name {name!r}: no ':', '.', '/', '#' or spaces")
        if name in self.leaves:
            raise _error(f"repeated name {name!r}")
        if shape is None:
            try:
                shape = _leaf_shape(self.file, name, m, kind, self.dtype)
            except ConfigError as e:
                if e.line is None:  # the line of the ckpt.param call
                    e.line = _user_line(self)
                raise
        self.leaves[name] = (kind, m)
        if isinstance(m, dict) and m.get("grad", kind == "param"):
            self.grad_refs.add(name)
        dtype = m.get("dtype", self.dtype) if str(m.get("dtype", "")).startswith("int") else self.dtype
        return Traced(self, name, tuple(shape), dtype)

    def constant(self, value):
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise _error(f"cannot use {value!r} in a traced computation: only numbers and numeric arrays")
        self.n_const += 1
        while f"c{self.n_const}" in self.leaves:
            self.n_const += 1
        name = f"c{self.n_const}"
        return self.leaf(name, "input", {"shape": list(arr.shape), "value": _plain(arr.astype(float))}, arr.shape)

    def record(self, name, ins, attrs):
        op = REGISTRY.get(name)
        lo, hi = op.arity
        if not lo <= len(ins) <= hi:
            raise _error(f"{name} takes {lo if lo == hi else f'{lo} to {hi}'} inputs, got {len(ins)}")
        known = {k: v for k, v in op.attrs.items() if not k.startswith("_")}
        for k in attrs:
            if k not in known:
                raise _error(f"{name}: unknown attr {k!r} ({name} takes {', '.join(known) or 'no attrs'})")
        full = {k: attrs.get(k, v) for k, v in known.items()}
        for k, v in full.items():
            if v is REQUIRED:
                raise _error(f"{name} needs attr {k!r}")
        try:
            shape = tuple(int(s) for s in op.shape([a.shape for a in ins], full))
        except ShapeError as e:
            raise _error(f"shape mismatch: {e.message}") from None
        dtype = next((a.dtype for a in ins if not a.dtype.startswith("int")), self.dtype)
        if len(self.nodes) >= MAX_NODES:  # stop a runaway loop here, at its line, not after recording it all
            raise _error(f"the model records more than {MAX_NODES} ops, more than ckpt handles")
        if op.differentiable:
            used = {a.ref for a in ins if a.ref in self.grad_refs and not a.ref.startswith("#")} - self.grad_leaves
            self.grad_leaves |= used
            self.joint += len(used)
        takes_grad = op.differentiable and any(a.ref in self.grad_refs for a in ins)
        self.joint += 1 + (op.residual is not None) + takes_grad
        if self.joint > MAX_NODES:
            raise joint_nodes_error(None, file=self.file, line=_user_line(self), at_least=True, limit=MAX_NODES)
        self.nodes.append({"op": name, "inputs": [a.ref for a in ins], "attrs": attrs, "line": _user_line(self)})
        if takes_grad:
            self.grad_refs.add(f"#{len(self.nodes) - 1}")
        return Traced(self, f"#{len(self.nodes) - 1}", shape, dtype)

    def document(self, decl, dims, out):
        """The config document, op nodes numbered v1..vn as in the seed's traces, in the order
        that computes each as soon as its operands exist (ties in the order recorded)."""
        if not isinstance(out, Traced) or out.tape is not self:
            raise ConfigError(f"{decl.name} must return one traced value (the loss), not {type(out).__name__}",
                              file=self.file, line=_first_line(decl.fn))
        if not out.ref.startswith("#"):
            raise ConfigError(f"{decl.name} returns {out.ref!r} unchanged: a model computes its loss with at least "
                              "one op", file=self.file, line=_first_line(decl.fn))
        keep, stack = set(), [out.ref]  # only what the output reads
        while stack:
            r = stack.pop()
            if r.startswith("#") and r not in keep:
                keep.add(r)
                stack.extend(self.nodes[int(r[1:])]["inputs"])
        depth = {}
        for k, n in enumerate(self.nodes):
            if f"#{k}" in keep:
                depth[f"#{k}"] = 1 + max((depth[u] for u in n["inputs"] if u.startswith("#")), default=0)
        order = sorted(depth, key=lambda r: (depth[r], int(r[1:])))
        clash = any(_NUMBERED.match(v) for v, (kind, _) in self.leaves.items() if not v.startswith("c"))
        names = {r: f"{'op' if clash else 'v'}{i + 1}" for i, r in enumerate(order)}
        used = {u for r in order for u in self.nodes[int(r[1:])]["inputs"]} | {out.ref}
        doc = {"name": decl.name, "dtype": self.dtype, "seed": decl.seed}
        if dims:
            doc["dims"] = dict(dims)
        for kind in ("input", "param"):
            group = {v: m for v, (k, m) in self.leaves.items()
                     if k == kind and (v in used or v in decl.inputs or v in decl.params)}
            if group:
                doc[kind + "s"] = group
        doc["nodes"] = []
        self.lines = {}
        for r in order:
            n = self.nodes[int(r[1:])]
            item = {"name": names[r], "op": n["op"], "inputs": [names.get(u, u) for u in n["inputs"]]}
            if n["attrs"]:
                item["attrs"] = n["attrs"]
            doc["nodes"].append(item)
            self.lines[names[r]] = n["line"]
        doc["output"] = names.get(out.ref, out.ref)
        return doc


def _leaf_shape(file, name, m, kind, dtype, dims=None):
    from ..model.config import _Reader
    r = _Reader(file, {"dims": dims or {}}, {})
    r.read_dims()
    if not isinstance(m, dict):
        raise ConfigError("must be a mapping with shape and init or value", file=file, key=f"{kind}s.{name}")
    return r.leaf(name, m, kind, dtype).shape


# ---- loading MODEL.py[:NAME] --------------------------------------------------------------------------
def split_path(path):
    """("examples/seed.py", "f") from "examples/seed.py:f"; the name is None when not given."""
    path = str(path)
    if ":" in path and path.rsplit(":", 1)[0].lower().endswith(".py"):
        file, name = path.rsplit(":", 1)
        return file, name or None
    return path, None


def is_python_model(path):
    return split_path(path)[0].lower().endswith(".py")


def _user_error(e, file):
    """A ConfigError naming the model file's line where the exception came from."""
    line = None
    for fr in traceback.extract_tb(e.__traceback__):
        if os.path.abspath(fr.filename) == os.path.abspath(file):
            line = fr.lineno
    return ConfigError(f"{e.__class__.__name__}: {e}", file=file, line=line)


def load_function(path):
    """The decorated function named by MODEL.py[:NAME]."""
    file, name = split_path(path)
    if not os.path.isfile(file):
        raise ConfigError("no such file", file=file)
    mod_name = f"ckpt_model_{zlib.crc32(os.path.abspath(file).encode()):08x}"
    spec = importlib.util.spec_from_file_location(mod_name, file)
    module = importlib.util.module_from_spec(spec)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries --json documents only
            spec.loader.exec_module(module)
    except CkptError as e:
        if e.file is None:  # ckpt.param or the like called while the file loads, not while tracing
            e.file, e.line = file, _user_error(e, file).line
        raise
    except SyntaxError as e:
        raise ConfigError(f"SyntaxError: {e.msg}", file=file, line=e.lineno) from None
    except SystemExit as e:
        raise ConfigError(f"the model file exits while it is loaded (SystemExit {e.code!r})", file=file) from None
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # the user's file failed: one line, where it failed
        raise _user_error(e, file) from None
    models = {k: v for k, v in vars(module).items() if callable(v) and hasattr(v, "__ckpt_model__")
              and getattr(v, "__module__", None) == mod_name}
    if name is None:
        if len(models) != 1:
            listed = ", ".join(sorted(models)) or "none"
            raise ConfigError(f"name the model function as {file}:NAME (functions marked @ckpt.traced: {listed})",
                              file=file)
        name = next(iter(models))
    fn = getattr(module, name, None)
    if fn is None or not callable(fn):
        near = ", ".join(sorted(models)) or "none"
        raise ConfigError(f"no function {name!r} (functions marked @ckpt.traced: {near})", file=file)
    if not hasattr(fn, "__ckpt_model__") and getattr(fn, "__module__", None) != mod_name:
        # imported into the file (`from ckpt import log`): its line is another file's
        raise ConfigError(f"{name} is imported into this file from {getattr(fn, '__module__', None) or 'elsewhere'}, "
                          f"not a model function defined in it (functions marked @ckpt.traced: "
                          f"{', '.join(sorted(models)) or 'none'})", file=file)
    if not hasattr(fn, "__ckpt_model__"):
        # a file that uses PyTorch holds a module factory, which `ckpt import` reads instead
        torch_hint = f"; for a PyTorch model, `ckpt import {file}:{name} --input NAME=SHAPE... -o model.yaml` " \
                     f"makes a config" if "torch" in sys.modules and any(
                         v is sys.modules["torch"] for v in vars(module).values()) else ""
        raise ConfigError(f"{name}: declare its inputs with @ckpt.traced(inputs={{...}}) above `def {name}`"
                          + torch_hint, file=file, line=_first_line(fn))
    return file, fn


def _arguments(fn, decl, file, dims):
    """Positional parameters name inputs or parameters; keyword-only ones name dims."""
    sig = inspect.signature(fn)
    leaves, kw = [], {}
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            if p.name not in decl.inputs and p.name not in decl.params:
                raise ConfigError(f"{decl.name}: argument {p.name!r} is not a declared input or param "
                                  f"(inputs: {', '.join(decl.inputs) or 'none'})", file=file,
                                  line=_first_line(fn))
            leaves.append(p.name)
        elif p.kind == p.KEYWORD_ONLY:
            if p.name in dims:
                kw[p.name] = dims[p.name]
            elif p.default is p.empty:
                raise ConfigError(f"{decl.name}: keyword-only argument {p.name!r} is not a dim "
                                  f"(dims: {', '.join(dims) or 'none'})", file=file, line=_first_line(fn))
        else:
            raise ConfigError(f"{decl.name}: *args and **kwargs cannot be traced; name each input", file=file)
    return leaves, kw


def _dims(decl, file, overrides):
    from ..model.config import _Reader
    for k in overrides:
        if k not in decl.dims:
            raise ConfigError(f"--set {k}: no such dim in the model (dims: {', '.join(decl.dims) or 'none'})",
                              file=file)
    r = _Reader(file, {"dims": decl.dims}, overrides)
    r.read_dims()
    return r.dims


def trace_document(path, overrides=None):
    """(config document, file, node lines) of the model function MODEL.py[:NAME]."""
    overrides = dict(overrides or {})
    dtype_override = overrides.pop("dtype", None)
    file, fn = load_function(path)
    decl = fn.__ckpt_model__
    try:  # what the decorator declares (dims, leaves): its errors name the decorator's line
        dims = _dims(decl, file, overrides)
        dtype = dtype_override or decl.dtype
        tape = GraphTape(file, dtype)
        names, kw = _arguments(fn, decl, file, dims)
        args = []
        for kind, group in (("input", decl.inputs), ("param", decl.params)):
            for leaf, m in group.items():
                t = tape.leaf(leaf, kind, m, _leaf_shape(file, leaf, m, kind, dtype, dims))
                if leaf in names:
                    args.append((names.index(leaf), t))
    except ConfigError as e:
        if e.line is None:
            e.line = _first_line(fn)
        raise
    args = [t for _, t in sorted(args, key=lambda x: x[0])]
    _ACTIVE.append(tape)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            out = fn(*args, **kw)
    except CkptError:
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # SystemExit and GeneratorExit from the model too: one line, where
        raise _user_error(e, file) from None
    finally:
        _ACTIVE.pop()
    doc = tape.document(decl, dims, out)
    lines = dict(tape.lines)
    lines[None] = _first_line(fn)  # for what the decorator declares (seed, name, dtype)
    return doc, file, lines


def load_spec(path, overrides=None):
    """The ModelSpec of a Python model function, read by the YAML loader's own reader."""
    from ..model.config import _Reader
    doc, file, lines = trace_document(path, overrides)
    try:
        spec = _Reader(file, doc, {}).spec()
    except ConfigError as e:  # the recorded node's line, or the decorator's
        if e.line is None:
            e.line = lines.get(e.key, lines[None])
        raise
    for n in spec.nodes:
        n.line = lines.get(n.name)
    spec.file = file
    return spec


def to_yaml(doc, source=None):
    """The config document as YAML in the style of configs/: one flow mapping per leaf and node."""
    import yaml

    def flow(v):  # one value in flow style; a scalar inside a list, so no end-of-document marker
        text = yaml.safe_dump([v], default_flow_style=True, width=10**9, sort_keys=False).strip()
        return text[1:-1]

    out = [f"# Traced from {source} by `ckpt export-config`; loops are unrolled, values numbered as in the seed."
           if source else "# Exported by `ckpt export-config`."]
    for key in ("name", "dtype", "seed"):
        out.append(f"{key}: {flow(doc[key])}")
    if doc.get("dims"):
        out.append(f"dims: {flow(doc['dims'])}")
    for group in ("inputs", "params"):
        if doc.get(group):
            out.append(f"{group}:")
            out += [f"  {flow(k)}: {flow(v)}" for k, v in doc[group].items()]
    out.append("nodes:")
    out += [f"  - {flow(n)}" for n in doc["nodes"]]
    out.append(f"output: {flow(doc['output'])}")
    return "\n".join(out) + "\n"


# ---- the eager tape: record and run every step ---------------------------------------------------------
class EagerTape:
    """Operator overloading as autograd libraries do it: each op runs at once and is appended to a
    tape; `backward` walks the tape in reverse with the registry's VJPs. Nothing is planned or freed:
    the tape holds every value until the step ends (store-all)."""

    def __init__(self, xp, dtype, seed=0, values=None):
        self.xp, self.dtype, self.seed = xp, dtype, seed
        self.values = values or {}  # name -> (array, takes_grad), for ckpt.param inside the function
        self.entries = []
        self.made = {}  # leaf name -> its traced value
        self.n = 0

    def leaf(self, name, kind, m, shape=None, value=None, grad=None):
        if value is None:
            if name not in self.values:
                raise ConfigError(f"ckpt.param({name!r}): no value given for it to the eager run")
            value, grad = self.values[name]
        self.n += 1
        t = Traced(self, self.n, value.shape, str(value.dtype), value, grad=bool(grad))
        if name is not None:
            self.made[name] = t
        return t

    def constant(self, value):
        self.n += 1
        arr = self.xp.asarray(np.asarray(value, dtype=self.dtype))
        return Traced(self, self.n, arr.shape, self.dtype, arr)

    def record(self, name, ins, attrs):
        op = REGISTRY[name]
        full = {k: v for k, v in op.attrs.items() if v is not REQUIRED}
        full.update(attrs)
        if "_seed" in op.attrs and "_seed" not in attrs:  # a per-node seed: each random op its own stream
            full["_seed"] = (self.seed * 1_000_003 + len(self.entries)) % 2**63
        value = op.forward(self.xp, [a.value for a in ins], full)
        if not isinstance(value, self.xp.ndarray):
            value = self.xp.asarray(value)
        self.n += 1
        out = Traced(self, self.n, value.shape, str(value.dtype), value,
                     grad=op.differentiable and any(a.grad for a in ins))
        if out.grad:
            self.entries.append((op, ins, full, out))
        return out

    def backward(self, out):
        xp = self.xp
        grads = {out.ref: xp.ones(out.value.shape, dtype=out.value.dtype)}
        for op, ins, attrs, y in reversed(self.entries):
            g = grads.pop(y.ref, None)
            if g is None:
                continue
            ctx = Ctx([a.value for a in ins], y.value, [a.shape for a in ins], y.shape, attrs)
            for i, a in enumerate(ins):
                if a.grad:
                    c = op.vjp(xp, i, g, ctx)
                    grads[a.ref] = grads[a.ref] + c if a.ref in grads else c
        return grads


def value_and_grad(fn, leaves, dims=None, xp=np, seed=0):
    """One eager step of `fn` on arrays: (loss, {leaf name: gradient}). `leaves` maps every input
    and parameter (those made by ckpt.param included) to (array, takes_grad); the function's
    positional arguments are looked up there by name, `dims` are its keyword-only arguments."""
    dtype = next((str(a.dtype) for a, _ in leaves.values() if a.dtype.kind == "f"), "float64")
    tape = EagerTape(xp, dtype, seed, leaves)
    args = [tape.leaf(p, None, None) for p in _positional(fn)]
    _ACTIVE.append(tape)
    try:
        out = fn(*args, **(dims or {}))
    finally:
        _ACTIVE.pop()
    grads = tape.backward(out)
    made = {t.ref: k for k, t in tape.made.items()}
    return float(out.value), {made[r]: gr for r, gr in grads.items() if r in made}


def _positional(fn):
    return [p.name for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def graph_function(g):
    """A Python function that replays graph g's nodes through the traced value type, so that any
    model (YAML included) can be run by the eager tape: f(**leaves) -> the output."""
    nodes = [(v, g.nodes[v]["op"], g.nodes[v]["inputs"], g.nodes[v]["attrs"]) for v in g.graph["order"]]
    out = g.graph["output"]

    def replay(**vals):
        for v, op, inputs, attrs in nodes:
            vals[v] = _record(op, [vals[u] for u in inputs], attrs)
        return vals[out]
    return replay


def eager_step(g, leaves, xp=np):
    """One eager OO step of graph g (leaves: name -> array): (loss, gradients of the grad leaves)."""
    f = graph_function(g)
    tape = EagerTape(xp, g.graph["dtype"], g.graph["seed"])
    traced = {k: tape.leaf(k, None, None, value=a, grad=g.nodes[k]["grad"]) for k, a in leaves.items()}
    out = f(**traced)
    grads = tape.backward(out)
    return float(out.value), {k: grads[t.ref] for k, t in traced.items() if t.grad and t.ref in grads}
