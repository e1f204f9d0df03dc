"""Reductions, shape ops, concat and matrix products. One block per op."""

from . import OUT, REQUIRED, Op, broadcast_shapes, column_sum, iter_buffer, register, shape_error, size, unbroadcast
from .elementwise import arith
from ..errors import ShapeError


def _axes(op, axis, ndim):
    """Normalise an `axis` attr (None, int or list) to a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    items = [axis] if isinstance(axis, int) else list(axis)
    out = []
    for a in items:
        if not isinstance(a, int) or not -ndim <= a < max(ndim, 1):
            raise ShapeError(f"{op}: axis {a!r} is out of range for {ndim} dimensions")
        if ndim:  # a 0-d value has no axis to reduce: axis 0 there reduces over nothing, as numpy's sum
            out.append(a % ndim)
    return tuple(sorted(set(out)))


# ---- sum, mean ---------------------------------------------------------------------------------
def _reduce_shape(op):
    def rule(shapes, a):
        s = tuple(shapes[0])
        axes = _axes(op, a["axis"], len(s))
        if a["keepdims"]:
            return tuple(1 if i in axes else n for i, n in enumerate(s))
        return tuple(n for i, n in enumerate(s) if i not in axes)
    return rule


def _expand(xp, g, c):
    """Broadcast a reduced gradient back to the input's shape."""
    shape = tuple(c.in_shapes[0])
    axes = _axes("", c.attrs["axis"], len(shape))
    if not c.attrs["keepdims"]:
        g = g.reshape(tuple(1 if i in axes else n for i, n in enumerate(shape)))
    return xp.broadcast_to(g, shape)


def _count(c):
    shape = tuple(c.in_shapes[0])
    return size([shape[i] for i in _axes("", c.attrs["axis"], len(shape))])


def _reduce_flops(shapes, out, a):
    return size(shapes[0])


def _expand_flops(i, shapes, out, a):
    """The VJP broadcasts the reduced gradient back over the input (mean also scales it first)."""
    return size(shapes[0]) + size(out)


register(Op(
    name="sum", arity=(1, 1), shape=_reduce_shape("sum"), attrs={"axis": None, "keepdims": False},
    forward=lambda xp, ins, a: ins[0].sum(axis=_axes("sum", a["axis"], ins[0].ndim), keepdims=a["keepdims"]),
    vjp=lambda xp, i, g, c: _expand(xp, g, c),
    jvp=lambda xp, t, c: t[0].sum(axis=_axes("sum", c.attrs["axis"], t[0].ndim), keepdims=c.attrs["keepdims"]),
    needs=lambda i: (), flops=_reduce_flops, vjp_flops=_expand_flops,
    example={"shapes": [(3, 4, 5)], "attrs": {"axis": [0, 2]}},
))

def mean_buffers(n_out, itemsize):
    """numpy's mean divides the sum by an integer count in float64 and casts back: below 8-byte
    floats, that goes through two iteration buffers of float64."""
    return 2 * iter_buffer(n_out, 8) if itemsize < 8 else 0


def _mean_workspace(which, s, o, a, itemsize):
    """The forward: mean's division (above); the VJP: the scaled g before it is spread over the
    input (a view, copied)."""
    if which == "forward":
        return mean_buffers(size(o), itemsize)
    return size(o) * itemsize


register(Op(
    name="mean", arity=(1, 1), shape=_reduce_shape("mean"), attrs={"axis": None, "keepdims": False},
    forward=lambda xp, ins, a: ins[0].mean(axis=_axes("mean", a["axis"], ins[0].ndim), keepdims=a["keepdims"]),
    vjp=lambda xp, i, g, c: _expand(xp, g * (1.0 / _count(c)), c),
    jvp=lambda xp, t, c: t[0].mean(axis=_axes("mean", c.attrs["axis"], t[0].ndim), keepdims=c.attrs["keepdims"]),
    needs=lambda i: (), flops=_reduce_flops, vjp_flops=_expand_flops, workspace=_mean_workspace,
    example={"shapes": [(3, 4, 5)], "attrs": {"axis": 1, "keepdims": True}},
))


# ---- amax, amin: the largest (smallest) element over axes ---------------------------------------
# The gradient goes to the extremum; where several elements tie for it, PyTorch has two rules and
# so has ckpt: by default the gradient is spread equally among the tied elements (torch.amax,
# torch.max(x) over everything); with `first`, over one axis, the first extremum along it takes it
# all (torch.max(x, dim) and adaptive max pooling, which return that element's index). The VJP and
# the JVP of each rule are those of one function, so they stay each other's transpose at a tie.
def _extreme_shape(op):
    reduce = _reduce_shape(op)

    def rule(shapes, a):
        if a["first"] and len(_axes(op, a["axis"], len(shapes[0]))) > 1:
            raise shape_error(op, f"first takes the first {op[1:]} along one axis; axis {a['axis']} names several",
                              shapes)
        return reduce(shapes, a)
    return rule


def _kept(c, v):
    """A reduced value (the output, its gradient) with the reduced axes kept as axes of 1 (a view)."""
    shape = tuple(c.in_shapes[0])
    axes = _axes("", c.attrs["axis"], len(shape))
    return v.reshape(tuple(1 if i in axes else n for i, n in enumerate(shape)))


def _extreme_hits(xp, c, biggest):
    """Where x holds its extremum (booleans of x's shape), and how many do, per reduction (floats of
    the kept shape). With `first`, one per reduction: the first, by its index along the axis."""
    x = c.ins[0]
    axes = _axes("", c.attrs["axis"], x.ndim)
    if c.attrs["first"] and axes:
        ax, = axes
        pick = x.argmax(axis=ax) if biggest else x.argmin(axis=ax)
        where = xp.arange(x.shape[ax]).reshape((-1,) + (1,) * (x.ndim - 1 - ax))
        return xp.equal(where, xp.expand_dims(pick, ax)), None
    hit = xp.equal(x, _kept(c, c.out))
    return hit, hit.sum(axis=axes, keepdims=True, dtype=x.dtype) if not c.attrs["first"] else None


def _extreme_workspace(which, s, o, a, itemsize):
    """The forward: none. The VJP: the booleans of x's shape, and either the argmax (int64, the kept
    shape) and the positions along the axis it is compared with (int64), or the count of ties and
    g's share of each (floats of the kept shape), with the buffer numpy's sum casts the booleans
    through."""
    if which == "forward":
        return 0
    x = tuple(s[0])
    axes = _axes("", a["axis"], len(x))
    kept = size(o)
    if a["first"] and axes:
        return size(x) + 8 * kept + 8 * x[axes[0]]
    return size(x) + 2 * kept * itemsize + (iter_buffer(size(x), itemsize) if axes else 0)


def extreme(name, biggest):
    def forward(xp, ins, a):
        x = ins[0]
        return (x.max if biggest else x.min)(axis=_axes(name, a["axis"], x.ndim), keepdims=a["keepdims"])

    def vjp(xp, i, g, c):
        hit, count = _extreme_hits(xp, c, biggest)
        share = _kept(c, g) if count is None else _kept(c, g) / count
        dx = xp.zeros(c.in_shapes[0], dtype=g.dtype)
        xp.copyto(dx, share, where=hit)  # a masked copy: no ufunc buffers
        return dx

    def jvp(xp, t, c):
        hit, count = _extreme_hits(xp, c, biggest)
        picked = xp.zeros(t[0].shape, dtype=t[0].dtype)
        xp.copyto(picked, t[0], where=hit)
        total = picked.sum(axis=_axes(name, c.attrs["axis"], t[0].ndim), keepdims=True)
        if count is not None:
            total /= count
        return total.reshape(c.out_shape)

    register(Op(
        name=name, arity=(1, 1), shape=_extreme_shape(name), attrs={"axis": None, "keepdims": False, "first": False},
        forward=forward, vjp=vjp, jvp=jvp, needs=lambda i: (0, OUT), workspace=_extreme_workspace,
        flops=_reduce_flops,
        vjp_flops=lambda i, s, o, a: 2 * size(s[0]),  # find the extremum again, route g to it
        example={"shapes": [(3, 4, 5)], "attrs": {"axis": [0, 2]}} if biggest else
        {"shapes": [(3, 4, 5)], "attrs": {"axis": 1, "keepdims": True, "first": True}},
    ))


extreme("amax", True)
extreme("amin", False)


# ---- reshape, transpose ------------------------------------------------------------------------
def _reshape_shape(shapes, a):
    target = list(a["shape"])
    n = size(shapes[0])
    if any(not isinstance(d, int) or d < -1 or d == 0 for d in target) or target.count(-1) > 1:
        raise ShapeError(f"reshape: target shape {tuple(target)} must hold positive sizes and at most one -1")
    known = size([d for d in target if d != -1])
    if -1 in target:
        if n % known:
            raise shape_error("reshape", f"cannot reshape {n} elements to {tuple(target)}", shapes)
        target[target.index(-1)] = n // known
    if size(target) != n:
        raise shape_error("reshape", f"cannot reshape {n} elements to {tuple(target)}", shapes)
    return tuple(target)


register(Op(
    name="reshape", arity=(1, 1), shape=_reshape_shape, attrs={"shape": REQUIRED},
    forward=lambda xp, ins, a: ins[0].reshape(a["shape"]),
    vjp=lambda xp, i, g, c: g.reshape(c.in_shapes[0]),
    jvp=lambda xp, t, c: t[0].reshape(c.out_shape),
    needs=lambda i: (), flops=lambda s, o, a: 0, vjp_flops=lambda i, s, o, a: 0,
    example={"shapes": [(3, 4)], "attrs": {"shape": [2, -1]}},
))


def _perm(a, ndim):
    """The permutation an `axes` attr names (None: the axes reversed), non-negative. Checked once,
    by the shape rule: the forward and the VJP take it as it is."""
    axes = a["axes"]
    if axes is None:
        return tuple(reversed(range(ndim)))
    return tuple(x % ndim for x in axes)


def _transpose_shape(shapes, a):
    ndim, axes = len(shapes[0]), a["axes"]
    if axes is not None and sorted(x % ndim if isinstance(x, int) and -ndim <= x < ndim else -99
                                   for x in axes) != list(range(ndim)):
        raise ShapeError(f"transpose: axes {axes} are not a permutation of {ndim} dimensions")
    return tuple(shapes[0][p] for p in _perm(a, ndim))


def _contiguous(xp, x):
    """A C-ordered copy where x is a strided view; not ascontiguousarray on a 0-d value, which it
    returns with shape (1,)."""
    return xp.ascontiguousarray(x) if x.ndim else x.copy()


def _inverse(perm):
    """The permutation that undoes `perm` (in Python: np.argsort costs more than the copy it guides on
    small arrays)."""
    inv = [0] * len(perm)
    for k, p in enumerate(perm):
        inv[p] = k
    return tuple(inv)


register(Op(
    name="transpose", arity=(1, 1), attrs={"axes": None},
    shape=_transpose_shape,
    forward=lambda xp, ins, a: _contiguous(xp, ins[0].transpose(_perm(a, ins[0].ndim))),
    vjp=lambda xp, i, g, c: _contiguous(xp, g.transpose(_inverse(_perm(c.attrs, g.ndim)))),
    jvp=lambda xp, t, c: _contiguous(xp, t[0].transpose(_perm(c.attrs, t[0].ndim))),
    needs=lambda i: (), flops=lambda s, o, a: 0, vjp_flops=lambda i, s, o, a: 0,
    example={"shapes": [(2, 3, 4)], "attrs": {"axes": [1, 2, 0]}},
))


# ---- concat ------------------------------------------------------------------------------------
def _concat_shape(shapes, a):
    nd = len(shapes[0])
    if nd == 0 or any(len(s) != nd for s in shapes):
        raise shape_error("concat", "inputs need the same number of dimensions (at least 1)", shapes)
    ax = _axes("concat", a["axis"], nd)[0]
    if any(tuple(s[:ax]) + tuple(s[ax + 1:]) != tuple(shapes[0][:ax]) + tuple(shapes[0][ax + 1:]) for s in shapes):
        raise shape_error("concat", f"shapes differ off axis {ax}", shapes)
    return tuple(shapes[0][:ax]) + (sum(s[ax] for s in shapes),) + tuple(shapes[0][ax + 1:])


def _concat_slice(c, i):
    ax = _axes("concat", c.attrs["axis"], len(c.out_shape))[0]
    start = sum(s[ax] for s in c.in_shapes[:i])
    return (slice(None),) * ax + (slice(start, start + c.in_shapes[i][ax]),)


register(Op(
    name="concat", arity=(1, 64), shape=_concat_shape, attrs={"axis": 0},
    forward=lambda xp, ins, a: xp.concatenate(ins, axis=_axes("concat", a["axis"], ins[0].ndim)[0]),
    vjp=lambda xp, i, g, c: g[_concat_slice(c, i)],
    jvp=lambda xp, t, c: xp.concatenate(t, axis=_axes("concat", c.attrs["axis"], t[0].ndim)[0]),
    needs=lambda i: (), flops=lambda s, o, a: 0, vjp_flops=lambda i, s, o, a: 0,
    example={"shapes": [(2, 3), (2, 5)], "attrs": {"axis": 1}},
))


# ---- slice ------------------------------------------------------------------------------------
def _slice_shape(shapes, a):
    s = tuple(shapes[0])
    if not s:
        raise shape_error("slice", "the input needs at least 1 dimension", shapes)
    ax = _axes("slice", a["axis"], len(s))[0]
    start, stop, step = a["start"], a["stop"], a["step"]
    if not (isinstance(start, int) and isinstance(stop, int) and isinstance(step, int)) \
            or not 0 <= start < stop <= s[ax] or step < 1:
        raise shape_error("slice", f"[{start}:{stop}:{step}] is not a non-empty range of axis {ax} "
                                   f"(size {s[ax]})", shapes)
    return s[:ax] + (len(range(start, stop, step)),) + s[ax + 1:]


def _slice_index(a, ndim):
    ax = _axes("slice", a["axis"], ndim)[0]
    return (slice(None),) * ax + (slice(a["start"], a["stop"], a["step"]),)


def _slice_vjp(xp, i, g, c):
    """The gradient is g where the slice read and zero elsewhere (split, chunk and unbind are one
    slice per piece: each piece's VJP writes its part of a zero array)."""
    out = xp.zeros(c.in_shapes[0], dtype=g.dtype)
    out[_slice_index(c.attrs, len(c.in_shapes[0]))] = g
    return out


register(Op(
    name="slice", arity=(1, 1), shape=_slice_shape, attrs={"axis": REQUIRED, "start": 0, "stop": REQUIRED, "step": 1},
    forward=lambda xp, ins, a: ins[0][_slice_index(a, ins[0].ndim)],
    vjp=_slice_vjp,
    jvp=lambda xp, t, c: t[0][_slice_index(c.attrs, t[0].ndim)],
    needs=lambda i: (), flops=lambda s, o, a: 0, vjp_flops=lambda i, s, o, a: 0,
    example={"shapes": [(3, 7, 2)], "attrs": {"axis": 1, "start": 1, "stop": 7, "step": 2}},
))


# ---- matmul (batched), linear ------------------------------------------------------------------
def _matmul_shape(shapes, a):
    sa, sb = tuple(shapes[0]), tuple(shapes[1])
    if len(sa) < 2 or len(sb) < 2:
        raise shape_error("matmul", "both operands need at least 2 dimensions", shapes)
    if sa[-1] != sb[-2]:
        raise shape_error("matmul", f"inner sizes differ ({sa[-1]} vs {sb[-2]})", shapes)
    batch = broadcast_shapes("matmul", [sa[:-2], sb[:-2]], "batch dimensions", shapes)
    return tuple(batch) + (sa[-2], sb[-1])


def _matmul_vjp_flops(i, s, o, a):
    """One GEMM per operand, (M x N) by (N x K) for dA and (K x M) by (M x N) for dB over the
    batch: the forward's 2*M*N*K per batch element; an operand broadcast over the batch then sums
    the per-batch products down to its shape."""
    gemm = 2 * size(o) * s[0][-1]
    per_batch = size(o[:-2]) * size(s[i][-2:])
    return gemm + (per_batch if per_batch != size(s[i]) else 0)


def _matmul_workspace(which, s, o, a, itemsize):
    """The forward writes its output only. dA or dB over a batch that the operand was broadcast
    across is one product per batch element, summed down; where the rule takes the transpose of the
    product of the small ones, the result is a transposed view, copied to own its buffer."""
    if which == "forward":
        return 0
    i = which
    per_batch = size(o[:-2]) * size(s[i][-2:])
    if per_batch != size(s[i]):
        return per_batch * itemsize
    g = size(o)
    swapped = size(s[1 - i]) > g + size(s[i])  # the operand read is larger: see _matmul_vjp
    return size(s[i]) * itemsize if swapped else 0


def _matmul_vjp(xp, i, g, c):
    a, b = c.ins
    # dA = g B^T and dB = A^T g. A batched product copies a transposed operand first (cupy does), so
    # where that operand is the big one (attention's probabilities in dV = P^T dC), take the
    # transpose of the product of the small ones instead: dB = (g^T A)^T.
    if i == 0:
        if b.size > g.size + size(c.in_shapes[0]):
            return unbroadcast(xp, (b @ g.swapaxes(-1, -2)).swapaxes(-1, -2), c.in_shapes[0])
        return unbroadcast(xp, g @ b.swapaxes(-1, -2), c.in_shapes[0])
    if a.size > g.size + size(c.in_shapes[1]):
        return unbroadcast(xp, (g.swapaxes(-1, -2) @ a).swapaxes(-1, -2), c.in_shapes[1])
    return unbroadcast(xp, a.swapaxes(-1, -2) @ g, c.in_shapes[1])


register(Op(
    name="matmul", arity=(2, 2), shape=_matmul_shape,
    forward=lambda xp, ins, a: ins[0] @ ins[1], vjp=_matmul_vjp,
    jvp=lambda xp, t, c: t[0] @ c.ins[1] + c.ins[0] @ t[1],
    needs=lambda i: (1,) if i == 0 else (0,),
    flops=lambda s, o, a: 2 * size(o) * s[0][-1], vjp_flops=_matmul_vjp_flops, workspace=_matmul_workspace,
    example={"shapes": [(2, 3, 4), (4, 5)]},
))


def _linear_shape(shapes, a):
    x, w = tuple(shapes[0]), tuple(shapes[1])
    if len(x) < 1 or len(w) != 2 or x[-1] != w[0]:
        raise shape_error("linear", "needs x (..., in) and W (in, out)", shapes)
    if len(shapes) == 3 and tuple(shapes[2]) != (w[1],):
        raise shape_error("linear", f"bias must have shape ({w[1]},)", shapes)
    return x[:-1] + (w[1],)


def _rows(a):
    """a (..., k) as the 2-D (rows, k) it is laid out as (a itself when already 2-D)."""
    return a if a.ndim == 2 else a.reshape(-1, a.shape[-1])


def _rows_matmul(xp, a, b):
    """a (..., k) @ b (k, n) as one 2-D product (one GEMM, not one per leading index), in an array
    that owns its buffer. `dot`, not `matmul`: on 2-D operands it is the same BLAS call (the same
    bits) with a third less overhead per call, which shows where arrays are tiny; a 2-D a needs
    no reshape and no output buffer of our own."""
    if a.ndim == 2:
        return xp.dot(a, b)
    out = xp.empty(a.shape[:-1] + (b.shape[1],), dtype=xp.result_type(a.dtype, b.dtype))
    xp.dot(a.reshape(-1, a.shape[-1]), b, out=out.reshape(-1, b.shape[1]))
    return out


def _linear_forward(xp, ins, a):
    y = _rows_matmul(xp, ins[0], ins[1])
    if len(ins) == 3:  # in place: y is fresh, and this saves a temporary the size of the output
        y = arith(xp, "add", y, ins[2], out=y)
    return y


def _linear_vjp(xp, i, g, c):
    if i == 0:
        return _rows_matmul(xp, g, c.ins[1].T)
    if i == 1:
        return xp.dot(_rows(c.ins[0]).T, _rows(g))
    return column_sum(xp, _rows(g))


def _linear_vjp_flops(i, s, o, a):
    """dX = g W^T and dW = X^T g: one GEMM each (2*M*N*K with M rows, K inputs, N outputs); the
    bias gradient sums g over its rows (one addition per output element)."""
    return size(o) if i == 2 else 2 * size(o) * s[0][-1]


def _linear_jvp(xp, t, c):
    y = t[0] @ c.ins[1] + c.ins[0] @ t[1]
    return y + t[2] if len(t) == 3 else y


register(Op(
    name="linear", arity=(2, 3), shape=_linear_shape,
    forward=_linear_forward, vjp=_linear_vjp, jvp=_linear_jvp,
    needs=lambda i: ((1,), (0,), ())[i],
    flops=lambda s, o, a: 2 * size(o) * s[0][-1] + (size(o) if len(s) == 3 else 0),
    vjp_flops=_linear_vjp_flops,
    # adding the bias in place iterates it through numpy's buffer; the VJPs write their results only
    workspace=lambda w, s, o, a, itemsize: iter_buffer(size(o), itemsize) if w == "forward" and len(s) == 3 else 0,
    example={"shapes": [(2, 3, 4), (4, 5), (5,)]},
))
