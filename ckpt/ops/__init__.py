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
    numpy, kernels switched off, or (when `dtype` is given) a dtype other than float32/float64."""
    if not compiles(xp) or (dtype is not None and dtype not in (np.float32, np.float64)):
        return None
    key = (xp, name)
    if key not in _kernels:
        make = getattr(xp, maker, None)
        _kernels[key] = make(*spec, "ckpt_" + name) if make is not None else None
    return _kernels[key]


from . import elementwise, tensor, nn, index  # noqa: E402,F401  (each module registers its ops)
from . import control  # noqa: E402,F401  (where, comparisons, pow: the Python front end's ops)
