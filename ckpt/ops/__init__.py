"""The op registry: every op's rules live in one `Op` record, declared once.

An op declares its forward, its VJP (one input at a time: the joint graph computes each value's
gradient by pulling from the value's consumers), its JVP, its shape rule, its FLOP estimate and,
for each input, the residuals that input's VJP reads (`needs`). The executor, the planners and the
tests all read these records, so the memory model cannot drift from the code.
"""

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import ShapeError

OUT = "out"  # in `needs`: the op's own output is a residual


class Ctx:
    """What a VJP/JVP rule may read: the residual arrays (others are None), static shapes, attrs.
    A plain class with slots, not a dataclass: the generated step builds one per gradient term,
    and a dataclass's __init__ costs twice as much, which shows on models of tiny tensors."""

    __slots__ = ("ins", "out", "in_shapes", "out_shape", "attrs")

    def __init__(self, ins, out, in_shapes, out_shape, attrs):
        self.ins = ins
        self.out = out
        self.in_shapes = in_shapes
        self.out_shape = out_shape
        self.attrs = attrs

    def __repr__(self):
        return f"Ctx(in_shapes={self.in_shapes!r}, out_shape={self.out_shape!r}, attrs={self.attrs!r})"


@dataclass(frozen=True)
class Op:
    name: str
    arity: tuple  # (least, most) inputs
    shape: Callable  # (in_shapes, attrs) -> out_shape; raises ShapeError
    forward: Callable  # (xp, ins, attrs) -> out
    vjp: Callable  # (xp, i, g, ctx) -> gradient with respect to input i
    jvp: Callable  # (xp, tangents, ctx) -> output tangent (tangents are arrays, zeros where constant)
    needs: Callable  # i -> tuple of input indices and/or OUT read by vjp for input i
    flops: Callable  # (in_shapes, out_shape, attrs) -> int
    # The VJP's cost for input i, (i, in_shapes, out_shape, attrs) -> int flops; None: not yet
    # stated, the forward's flops are charged (matmul: one GEMM per operand; bias: a reduction).
    vjp_flops: Callable | None = None
    # Bytes a rule allocates beyond its output while it runs (im2col buffers, reductions, masks):
    # (which, in_shapes, out_shape, attrs, itemsize) -> int, `which` is "forward" or the input
    # index i of a VJP; None: nothing beyond the output. The simulator adds it at the op's step.
    # Measured as the executor runs a rule: the allocator's high-water mark while the rule runs
    # and its result is made to own its buffer (a view is copied), less the result's bytes, on
    # numpy with arrays under 256 KiB (above that numpy may reuse a temporary in place, so the
    # figure is an upper bound there). tests/test_workspace.py holds every op to it.
    workspace: Callable | None = None
    attrs: dict = field(default_factory=dict)  # name -> default; REQUIRED marks a required attr
    int_inputs: tuple = ()  # input positions that hold integer labels and take no gradient
    # (in_shapes) -> n: every integer label must lie in 0..n-1 (a class, a row); a label outside
    # would index out of bounds, or from the end when negative, so it is refused before the op runs
    labels_below: Callable | None = None
    # A residual the forward computes on the way and the VJPs would otherwise compute again
    # (layernorm's row statistics, dropout's mask), made a value of its own so that the planner
    # chooses whether to keep it: (in_shapes, attrs) -> (op, input positions, attrs) of the node
    # that computes it. The model graph gives every such node that node as an extra last input,
    # beyond `arity` (which is what a config writes); its rules then read it instead of computing
    # it, and their VJPs stay the total derivative through it, since it takes no gradient.
    residual: Callable | None = None
    differentiable: bool = True  # False: the output takes no gradient (a residual, a mask)
    dtype: str | None = None  # the output's dtype; None: the first floating-point input's
    internal: bool = False  # made by the model graph only: not an op a config or front end writes
    # For the registry-generated tests: input shapes, attrs, and whether inputs must be positive.
    example: dict = field(default_factory=dict)


REQUIRED = object()
REGISTRY: dict[str, Op] = {}


def register(op):
    assert op.name not in REGISTRY, op.name
    REGISTRY[op.name] = op
    return op


def size(shape):
    """Elements of a shape, an exact Python int (numpy's int64 product wraps around silently)."""
    n = 1
    for d in shape:
        n *= int(d)
    return n


def shape_error(op, msg, shapes):
    return ShapeError(f"{op}: {msg} (input shapes {', '.join(str(tuple(s)) for s in shapes)})")


def broadcast_shapes(op, shapes, what="shapes", shown=None):
    """numpy's broadcasting rule in Python integers (numpy's own refuses sizes past its index type,
    which planning a model larger than the machine must not)."""
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for k in range(-rank, 0):
        dims = {int(s[k]) for s in shapes if len(s) >= -k} - {1}
        if len(dims) > 1:
            raise shape_error(op, f"{what} do not broadcast", shown or shapes)
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def iter_buffer(n, itemsize):
    """Bytes of one buffer of numpy's buffered iteration, which a ufunc allocates per operand that
    it broadcasts (non-scalar) or casts: chunks of at most np.getbufsize() elements. A stated upper
    bound for `workspace`: numpy skips the buffer where the inner dimension alone exceeds it."""
    return itemsize * min(int(n), np.getbufsize())


def unbroadcast(xp, g, shape):
    """Sum a broadcast gradient back down to `shape` (the inverse of numpy broadcasting)."""
    shape = tuple(shape)
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape) if n == 1 and g.shape[i + lead] != 1)
    return g.sum(axis=axes, keepdims=True).reshape(shape) if axes else g.reshape(shape)


# ---- fused kernels ---------------------------------------------------------------------------
# Array-at-a-time rules make one pass over memory per operation; on a GPU the elementwise and
# row-wise parts of gelu, softmax, layernorm and dropout cost more in those passes than in
# arithmetic. Where the array module compiles CUDA (cupy's ElementwiseKernel, ReductionKernel and
# RawKernel), such an op gives the same formula as one kernel next to its array rule; on numpy the
# array rule runs. tests/test_gpu.py holds each kernel to its array rule (on the CPU through a numpy
# interpreter of the kernel bodies, on a GPU against the array rule on the device).
_kernels = {}
_enabled = [True]


def use_kernels(on):
    """Switch fused kernels off (False) or on: for timing them side by side with the array rules."""
    _enabled[0] = bool(on)


_compiles = {}


def compiles(xp):
    """Whether kernels may run on this array module (one that compiles them, such as cupy, with
    kernels on): asked once per module, since numpy answers a missing attribute through a slow
    module __getattr__. (A module without a given kind of kernel still gets None from `kernel`.)"""
    if xp not in _compiles:
        _compiles[xp] = hasattr(xp, "ElementwiseKernel")
    return _compiles[xp] and _enabled[0]


def kernel(xp, maker, name, *spec, dtype=None):
    """`xp.<maker>(*spec, "ckpt_" + name)` compiled once, or None where the array rule must run:
    numpy, kernels switched off, or (when `dtype` is given) a dtype other than float32/float64.
    An ElementwiseKernel is a `VectorKernel` where the module also compiles raw CUDA."""
    if not compiles(xp) or (dtype is not None and dtype not in (np.float32, np.float64)):
        return None
    key = (xp, name)
    if key not in _kernels:
        make = getattr(xp, maker, None)
        if maker == "ElementwiseKernel" and hasattr(xp, "RawKernel"):
            make = lambda *a: VectorKernel(xp, *a)  # noqa: E731
        _kernels[key] = make(*spec, "ckpt_" + name) if make is not None else None
    return _kernels[key]


def column_sum(xp, a):
    """A 2-D `a` summed over its rows (a bias's gradient): where kernels compile, as the product
    of a vector of ones with it, which cuBLAS reads at the device's bandwidth (cupy's reduction over
    the leading axis reached a third of PyTorch's column sum: scripts/bench_kernels.py on an H200);
    else numpy's (pairwise) sum."""
    if compiles(xp) and a.dtype in (np.float32, np.float64):
        ones = xp.empty(a.shape[0], dtype=a.dtype)
        ones.fill(1)
        return ones @ a
    return a.sum(axis=0)


# An ElementwiseKernel's body as a raw kernel that moves 16 bytes per load and store: cupy's own
# elementwise kernels load one element at a time through a general indexer and reach about half of
# the bandwidth PyTorch's vectorised kernels do (measured by scripts/bench_kernels.py on an H200:
# 1.3 against 2.7 TB/s on attention scores). Each thread takes V consecutive elements (V * itemsize
# = 16 bytes of T); an operand of the output's shape is read as vectors, one broadcast along the
# leading axes (a bias, a mask) at i % size, one along the trailing axes (a row statistic) at
# i / (n / size). Any other layout, a misaligned view or another dtype runs cupy's kernel, which
# gives the same values: the body is the same C.
_VEC_TYPES = {"T": None, "bool": "bool", "uint8": "unsigned char", "int32": "int", "int64": "long long",
              "uint64": "unsigned long long", "float32": "float", "float64": "double"}
_VEC_HEAD = """template <typename E, int V> struct alignas(sizeof(E) * V) ckpt_vec { E v[V]; };
"""


def _address(a):
    """The device address of an array's first element (numpy's, where the CPU suite runs these)."""
    ptr = getattr(a.data, "ptr", None)
    return a.ctypes.data if ptr is None else ptr


class VectorKernel:
    """cupy.ElementwiseKernel's interface (parameters, output, body, name; called with the
    arguments, the output optional): each layout of the arguments compiled once as a raw kernel."""

    def __init__(self, xp, params, out, body, name):
        self.xp, self.body, self.name = xp, body, name
        self.fallback = xp.ElementwiseKernel(params, out, body, name)
        self.params = [tuple(p.split()) for p in params.split(",")]
        self.out = tuple(out.split())
        self.compiled = {}

    def __call__(self, *args):
        xp = self.xp
        launch = self._layout(args)
        if launch is None:
            return self.fallback(*args)
        key, t, out, n, kargs = launch
        if key not in self.compiled:
            self.compiled[key] = xp.RawKernel(self._source(key), self.name + "_vec")
        v = 16 // t.itemsize
        threads = 256
        self.compiled[key](((n + threads * v - 1) // (threads * v),), (threads,), kargs)
        return out

    def _layout(self, args):
        """(variant key, T, output, n, kernel arguments), or None where cupy's kernel must run."""
        xp = self.xp
        given = len(args) == len(self.params) + 1
        if len(args) != len(self.params) + given:
            return None
        t = next((np.dtype(a.dtype) for (ty, _), a in zip(self.params, args) if ty == "T" and hasattr(a, "dtype")),
                 None if any(ty == "T" for ty, _ in self.params) else np.dtype(np.float32))  # (a mask's kernel)
        if t not in (np.float32, np.float64):
            return None
        arrays = [a for a in args if isinstance(a, xp.ndarray)]
        if given:
            shape = args[-1].shape
        else:
            try:
                shape = np.broadcast_shapes(*[a.shape for a in arrays])
            except ValueError:
                return None
        n = size(shape)
        if n == 0:
            return None
        v = 16 // t.itemsize
        layout, kargs = [], []
        for (ty, _), a in zip(self.params, args):
            if ty not in _VEC_TYPES:
                return None
            if not isinstance(a, xp.ndarray):  # a scalar, in the parameter's type
                layout.append("c")
                kargs.append(np.dtype(t if ty == "T" else ty).type(a))
                continue
            if (t if ty == "T" else np.dtype(ty)) != a.dtype or not a.flags.c_contiguous:
                return None
            if a.shape == shape:
                if _address(a) % (v * a.itemsize):
                    return None
                layout.append("v")
                kargs.append(a)
                continue
            full = (1,) * (len(shape) - a.ndim) + tuple(a.shape)  # at the output's rank
            lead = next((j for j, d in enumerate(full) if d != 1), len(full))
            last = len(full) - next((j for j, d in enumerate(reversed(full)) if d != 1), len(full))
            # capitals: every vector lies in one period (one row), so its index is taken once
            if full[lead:] == tuple(shape[lead:]):  # broadcast along the leading axes: a bias, a mask
                layout.append("M" if a.size % v == 0 and _address(a) % (v * a.itemsize) == 0 else "m")
                kargs += [a, np.int64(a.size)]
            elif full[:last] == tuple(shape[:last]):  # along the trailing axes: a row statistic
                layout.append("D" if (n // a.size) % v == 0 else "d")
                kargs += [a, np.int64(n // a.size)]
            else:
                return None
        odt = t if self.out[0] == "T" else np.dtype(self.out[0])
        if given:
            out = args[-1]
            if out.dtype != odt or not out.flags.c_contiguous or _address(out) % (v * out.itemsize):
                return None
        else:
            out = xp.empty(shape, dtype=odt)
        kargs += [out, np.int64(n)]
        return (t.name, tuple(layout)), t, out, n, tuple(kargs)

    def _source(self, key):
        tname, layout = key
        c = {"float32": "float", "float64": "double"}[tname]
        v = 16 // np.dtype(tname).itemsize

        def ctype(ty):
            return c if ty == "T" else _VEC_TYPES[ty]
        sig, loads, lane, one = [], [], [], []  # lane: an operand in the vector loop; one: at the tail
        for (ty, nm), how in zip(self.params, layout):
            if how == "c":
                sig.append(f"{ctype(ty)} {nm}")
                continue
            sig.append(f"const {ctype(ty)}* {nm}_p")
            if how != "v":
                sig.append(f"long long {nm}_k")
            at = {"v": "i", "m": f"i % {nm}_k", "M": f"i % {nm}_k", "d": f"i / {nm}_k", "D": f"i / {nm}_k"}[how]
            one.append(f"{ctype(ty)} {nm} = {nm}_p[{at}];")
            vt = f"ckpt_vec<{ctype(ty)}, {v}>"
            if how in "vM":  # a whole vector: the operand's own, or the bias's part under it
                start = "ckpt_base" if how == "v" else f"ckpt_base % {nm}_k"
                loads.append(f"{vt} {nm}_v = *(const {vt}*)({nm}_p + {start});")
                lane.append(f"{ctype(ty)} {nm} = {nm}_v.v[ckpt_l];")
            elif how == "D":  # one value under the whole vector
                loads.append(f"{ctype(ty)} {nm}_1 = {nm}_p[ckpt_base / {nm}_k];")
                lane.append(f"{ctype(ty)} {nm} = {nm}_1;")
            else:
                lane.append(one[-1])
        ot, on = self.out
        ov = f"ckpt_vec<{ctype(ot)}, {v}>"
        sig += [f"{ctype(ot)}* {on}_p", "long long ckpt_n"]
        body = f"{ctype(ot)} {on}; {{ {self.body}; }}"
        return "\n".join([
            f"typedef {c} T;", _VEC_HEAD,
            f'extern "C" __global__ void {self.name}_vec({", ".join(sig)}) {{',
            f"  long long ckpt_base = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * {v};",
            "  if (ckpt_base >= ckpt_n) return;",
            f"  if (ckpt_base + {v} <= ckpt_n) {{", *loads, f"    {ov} {on}_v;",
            "#pragma unroll",
            f"    for (int ckpt_l = 0; ckpt_l < {v}; ckpt_l++) {{",
            "      long long i = ckpt_base + ckpt_l;", *lane, body, f"      {on}_v.v[ckpt_l] = {on};", "    }",
            f"    *({ov}*)({on}_p + ckpt_base) = {on}_v;",
            "  } else {",
            "    for (long long i = ckpt_base; i < ckpt_n; i++) {", *one, body, f"      {on}_p[i] = {on};", "    }",
            "  }", "}", ""])


from . import elementwise, tensor, nn, index  # noqa: E402,F401  (each module registers its ops)
from . import control  # noqa: E402,F401  (where, comparisons, pow: the Python front end's ops)
