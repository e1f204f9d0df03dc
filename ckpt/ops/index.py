"""Ops that index: rows gathered by integer labels, elements picked along the last axis. One
block per op."""

from . import REQUIRED, Op, register, shape_error, size
from ..errors import ConfigError


# ---- embedding: out[..., :] = W[idx[...], :] -----------------------------------------------------
def _embedding_shape(shapes, a):
    w, idx = tuple(shapes[0]), tuple(shapes[1])
    if len(w) != 2:
        raise shape_error("embedding", "needs a table W (rows, dim) and integer indices (...)", shapes)
    return idx + (w[1],)


def _embedding_vjp(xp, i, g, c):
    # Rows picked more than once take the sum of their gradients: add.at accumulates repeated
    # indices where a plain fancy-index assignment would keep only the last.
    rows, dim = c.in_shapes[0]
    dw = xp.zeros((rows, dim), dtype=g.dtype)
    xp.add.at(dw, c.ins[1].reshape(-1), g.reshape(-1, dim))
    return dw


register(Op(
    name="embedding", arity=(2, 2), shape=_embedding_shape,
    forward=lambda xp, ins, a: ins[0][ins[1]],
    vjp=_embedding_vjp,
    jvp=lambda xp, t, c: t[0][c.ins[1]],
    # The gradient of the table reads only the indices (integers, resident inputs in practice).
    needs=lambda i: (1,),
    flops=lambda s, o, a: size(o),  # a copy per element
    vjp_flops=lambda i, s, o, a: 0 if i == 1 else size(o) + size(s[0]),  # zero the table, scatter-add every row
    workspace=lambda which, s, o, a, itemsize: 0,
    int_inputs=(1,), labels_below=lambda s: s[0][0],  # a row of the table
    example={"shapes": [(7, 3), (2, 4)]},
))


# ---- gather along the last axis: out[..., j] = x[..., idx[..., j]] ------------------------------
# torch.gather and take_along_dim (log-probabilities at the taken actions, the logit of each
# target): the front end moves the gathered axis last. Each pick is one element of the flattened x,
# at row * n + idx, so the forward is one `take` and the VJP one scatter-add of g (an element picked
# twice takes the sum of its gradients).
def _gather_shape(shapes, a):
    x, idx = tuple(shapes[0]), tuple(shapes[1])
    if not x or len(idx) != len(x) or idx[:-1] != x[:-1]:
        raise shape_error("gather", "needs x (..., n) and integer indices (..., k) with the same leading axes", shapes)
    return idx


def _flat_picks(xp, idx, n):
    """Each index's position in the flattened x: row * n + idx (int64, idx's shape). The row starts
    are repeated to idx's shape first: a sum of arrays of one shape and dtype runs through no
    iteration buffer, whose size numpy chooses by the operands' layout."""
    k = idx.shape[-1]
    flat = idx.astype(xp.int64)
    flat += xp.repeat(xp.arange(0, idx.size // k * n, n, dtype=xp.int64), k).reshape(idx.shape)
    return flat


def _gather_vjp(xp, i, g, c):
    x_shape = tuple(c.in_shapes[0])
    dx = xp.zeros(x_shape, dtype=g.dtype)
    xp.add.at(dx.reshape(-1), _flat_picks(xp, c.ins[1], x_shape[-1]).reshape(-1), g.reshape(-1))
    return dx


def _gather_workspace(which, s, o, a, itemsize):
    """Both rules: the flat positions (int64, the output's shape), and while they are made the row
    starts (int64, a row each) and their repeat to the output's shape; the forward makes its output
    after them (the VJP its dx before: the peak is theirs either way), less the output."""
    making = 16 * size(o) + 8 * (size(o) // o[-1])
    if which == "forward":
        return max(making, 8 * size(o) + size(o) * itemsize) - size(o) * itemsize
    return making


register(Op(
    name="gather", arity=(2, 2), shape=_gather_shape,
    forward=lambda xp, ins, a: xp.take(ins[0].reshape(-1), _flat_picks(xp, ins[1], ins[0].shape[-1])),
    vjp=_gather_vjp,
    jvp=lambda xp, t, c: xp.take(t[0].reshape(-1), _flat_picks(xp, c.ins[1], t[0].shape[-1])),
    needs=lambda i: (1,),  # the indices only (integers, resident inputs in practice)
    flops=lambda s, o, a: size(o),  # a copy per element
    vjp_flops=lambda i, s, o, a: 0 if i == 1 else size(o) + size(s[0]),  # zero dx, scatter-add g
    workspace=_gather_workspace,
    int_inputs=(1,), labels_below=lambda s: s[0][-1],  # a position along the last axis
    example={"shapes": [(3, 4, 6), (3, 4, 2)]},
))


# ---- label_float: integer labels read as the model's floats -------------------------------------
# What a model computes from its integer inputs as data: a padding mask `(idx != pad)`, token ids
# cast to float. The second input, a 0-d constant of the model's float dtype, gives the dtype (ckpt's
# values are floats; this is the one op whose only data are integers). The result is a mask or a
# count, not a quantity of the parameters: it takes no gradient. Integers up to 2^24 (float32) or
# 2^53 (float64) are read exactly.
def _label_float_shape(shapes, a):
    if tuple(shapes[1]) != ():
        raise shape_error("label_float", "needs integer labels and a 0-d float constant (the dtype)", shapes)
    return tuple(shapes[0])


register(Op(
    name="label_float", arity=(2, 2), shape=_label_float_shape, differentiable=False,
    forward=lambda xp, ins, a: ins[0].astype(ins[1].dtype),
    vjp=lambda xp, i, g, c: xp.zeros(tuple(c.in_shapes[i]), dtype=g.dtype),
    jvp=lambda xp, t, c: xp.zeros(tuple(c.out_shape), dtype=t[1].dtype),
    needs=lambda i: (), flops=lambda s, o, a: size(o), vjp_flops=lambda i, s, o, a: 0,
    workspace=lambda which, s, o, a, itemsize: 0,
    int_inputs=(0,),
    example={"shapes": [(3, 4), ()]},
))


# ---- topk_indices: the positions of the k largest (or smallest) along the last axis ---------------
# torch.topk, sort, argmax and max(dim)'s indices: integers the model computes from floats, which
# gather (topk's values), scatter_add (a router's gates) or a comparison (a one-hot) then read. In
# order (largest first, or smallest first), equal values by position (numpy's stable sort): the
# first of tied maxima, as torch.max(x, dim) picks it. They take no gradient; the values gathered
# by them do, exactly as torch.topk's.
def _topk_shape(shapes, a):
    x, k = tuple(shapes[0]), a["k"]
    if not x or not isinstance(k, int) or not 1 <= k <= x[-1]:
        raise shape_error("topk_indices", f"needs x (..., n) with 1 <= k ({k}) <= n", shapes)
    return x[:-1] + (k,)


def _topk_forward(xp, ins, a):
    x = -ins[0] if a["largest"] else ins[0]
    order = xp.argsort(x, axis=-1, kind="stable")
    del x
    return order[..., :a["k"]] if a["k"] < order.shape[-1] else order


def _topk_workspace(which, s, o, a, itemsize):
    """The negated x (largest first) and the whole order (int64, x's shape) beside it; where k < n
    the output is then copied out of the order, which is held until it is."""
    if which != "forward":
        return 0
    n, out = size(s[0]), 8 * size(o)
    held = (n * itemsize if a["largest"] else 0) + 8 * n
    return held - out if a["k"] == s[0][-1] else max(held, 8 * n + out) - out


register(Op(
    name="topk_indices", arity=(1, 1), shape=_topk_shape, attrs={"k": REQUIRED, "largest": True},
    differentiable=False, dtype="int64",
    forward=_topk_forward,
    vjp=lambda xp, i, g, c: xp.zeros(tuple(c.in_shapes[0]), dtype=g.dtype),
    jvp=lambda xp, t, c: xp.zeros(tuple(c.out_shape), dtype=xp.int64),
    needs=lambda i: (), flops=lambda s, o, a: size(s[0]) * max(1, int(size(s[0][-1:])).bit_length()),
    vjp_flops=lambda i, s, o, a: 0,
    workspace=_topk_workspace,
    example={"shapes": [(3, 5)], "attrs": {"k": 2}},
))


# ---- labels_view: integer labels the model computed, permuted and reshaped -------------------------
# Views of indices that an op made (topk's, moved back to their axis; argmax's without the axis):
# integer inputs have views of their own (leaves whose values are the input's, rearranged).
def _labels_view_shape(shapes, a):
    x, axes, shape = tuple(shapes[0]), a["axes"], list(a["shape"])
    if sorted(axes) != list(range(len(x))):
        raise shape_error("labels_view", f"axes {axes} are no permutation of the input's", shapes)
    if shape.count(-1) == 1 and size(d for d in shape if d != -1) > 0:  # one size inferred, as reshape's
        shape[shape.index(-1)] = size(x) // size(d for d in shape if d != -1)
    if size(shape) != size(x) or any(d < 1 for d in shape):
        raise shape_error("labels_view", f"shape {tuple(shape)} holds other than the input's elements", shapes)
    return tuple(shape)


def _moves(shape, axes):
    """Whether the permutation reorders axes of more than one element: then the reshape copies
    (numpy returns a view of its copy, which the executor copies again to own it)."""
    kept = [k for k in axes if shape[k] > 1]
    return kept != sorted(kept)


register(Op(
    name="labels_view", arity=(1, 1), shape=_labels_view_shape, attrs={"axes": REQUIRED, "shape": REQUIRED},
    differentiable=False, dtype="int64", int_inputs=(0,),
    forward=lambda xp, ins, a: ins[0].transpose(a["axes"]).reshape(_labels_view_shape([ins[0].shape], a)),
    vjp=lambda xp, i, g, c: xp.zeros(tuple(c.in_shapes[0]), dtype=g.dtype),
    jvp=lambda xp, t, c: xp.zeros(tuple(c.out_shape), dtype=xp.int64),
    needs=lambda i: (), flops=lambda s, o, a: 0, vjp_flops=lambda i, s, o, a: 0,
    workspace=lambda which, s, o, a, itemsize: 8 * size(o) if which == "forward" and _moves(s[0], a["axes"]) else 0,
    example={"shapes": [(3, 4, 2)], "attrs": {"axes": [1, 0, 2], "shape": [-1, 2]}},
))


# ---- scatter_add along the last axis: out = base, plus src[..., j] added at idx[..., j] -----------
# torch.scatter_add (and scatter into zeros, by distinct indices: a router's gates at its top-k
# experts), the transpose of gather: the base's gradient is g, src's is g gathered at idx.
def _scatter_shape(shapes, a):
    base, idx, src = (tuple(s) for s in shapes)
    if not base or idx != src or len(idx) != len(base) or idx[:-1] != base[:-1]:
        raise shape_error("scatter_add", "needs base (..., n), integer indices (..., k) and src (..., k)", shapes)
    return base


def _scatter_forward(xp, ins, a):
    out = ins[0].copy()
    xp.add.at(out.reshape(-1), _flat_picks(xp, ins[1], out.shape[-1]).reshape(-1), ins[2].reshape(-1))
    return out


def _scatter_vjp(xp, i, g, c):
    if i == 0:
        return g
    if i == 1:
        return xp.zeros(tuple(c.in_shapes[1]), dtype=g.dtype)
    return xp.take(g.reshape(-1), _flat_picks(xp, c.ins[1], g.shape[-1]))


def _scatter_jvp(xp, t, c):
    out = t[0].copy()
    xp.add.at(out.reshape(-1), _flat_picks(xp, c.ins[1], out.shape[-1]).reshape(-1), t[2].reshape(-1))
    return out


def _scatter_workspace(which, s, o, a, itemsize):
    """The flat positions, as gather makes them (int64, idx's shape: 16 bytes each and the row
    starts while made); the forward's copy of the base is its output; src's VJP is gather's."""
    k = size(s[1])
    making = 16 * k + 8 * (k // s[1][-1])
    if which == "forward":
        return making
    if which == 2:
        return max(making, 8 * k + k * itemsize) - k * itemsize
    return 0


register(Op(
    name="scatter_add", arity=(3, 3), shape=_scatter_shape,
    forward=_scatter_forward, vjp=_scatter_vjp, jvp=_scatter_jvp,
    needs=lambda i: (1,) if i == 2 else (),  # the indices only
    flops=lambda s, o, a: size(o) + size(s[2]), vjp_flops=lambda i, s, o, a: size(s[2]) if i == 2 else 0,
    workspace=_scatter_workspace,
    int_inputs=(1,), labels_below=lambda s: s[0][-1],
    example={"shapes": [(3, 4, 6), (3, 4, 2), (3, 4, 2)]},
))


# ---- labels_slice, labels_expand: more views of indices the model computed -----------------------
# topk's first choice `idx[..., 0]`, the indices expanded over a feature axis to gather whole rows
# (`idx[..., None].expand(..., d)`): integer inputs have such views as leaves of their own.
def _labels_slice_shape(shapes, a):
    s = tuple(shapes[0])
    ax, start, stop, step = a["axis"], a["start"], a["stop"], a["step"]
    if not s or not -len(s) <= ax < len(s) or not 0 <= start < stop <= s[ax] or step < 1:
        raise shape_error("labels_slice", f"[{start}:{stop}:{step}] of axis {ax} is no non-empty range", shapes)
    ax %= len(s)
    return s[:ax] + (len(range(start, stop, step)),) + s[ax + 1:]


register(Op(
    name="labels_slice", arity=(1, 1), shape=_labels_slice_shape,
    attrs={"axis": REQUIRED, "start": 0, "stop": REQUIRED, "step": 1},
    differentiable=False, dtype="int64", int_inputs=(0,),
    forward=lambda xp, ins, a: ins[0][(slice(None),) * (a["axis"] % ins[0].ndim)
                                      + (slice(a["start"], a["stop"], a["step"]),)],
    vjp=lambda xp, i, g, c: xp.zeros(tuple(c.in_shapes[0]), dtype=g.dtype),
    jvp=lambda xp, t, c: xp.zeros(tuple(c.out_shape), dtype=xp.int64),
    needs=lambda i: (), flops=lambda s, o, a: 0, vjp_flops=lambda i, s, o, a: 0,
    workspace=lambda which, s, o, a, itemsize: 0,  # a view, copied once to be the output
    example={"shapes": [(3, 7, 2)], "attrs": {"axis": 1, "start": 1, "stop": 7, "step": 2}},
))


def _labels_expand_shape(shapes, a):
    """torch.expand's sizes: -1 keeps the input's."""
    s, shape = tuple(shapes[0]), tuple(a["shape"])
    if len(shape) != len(s):
        raise shape_error("labels_expand", f"the input does not broadcast to {shape}", shapes)
    shape = tuple(n if d == -1 else d for d, n in zip(shape, s))
    if any(d != n and n != 1 for d, n in zip(shape, s)) or min(shape, default=1) < 1:
        raise shape_error("labels_expand", f"the input does not broadcast to {shape}", shapes)
    return shape


register(Op(
    name="labels_expand", arity=(1, 1), shape=_labels_expand_shape, attrs={"shape": REQUIRED},
    differentiable=False, dtype="int64", int_inputs=(0,),
    forward=lambda xp, ins, a: xp.broadcast_to(ins[0], _labels_expand_shape([ins[0].shape], a)),
    vjp=lambda xp, i, g, c: xp.zeros(tuple(c.in_shapes[0]), dtype=g.dtype),
    jvp=lambda xp, t, c: xp.zeros(tuple(c.out_shape), dtype=xp.int64),
    needs=lambda i: (), flops=lambda s, o, a: 0, vjp_flops=lambda i, s, o, a: 0,
    workspace=lambda which, s, o, a, itemsize: 0,  # a view, copied once to be the output
    example={"shapes": [(1, 2)], "attrs": {"shape": [4, -1]}},
))


# ---- float_labels: whole numbers the model computed as floats, read as integer labels -------------
# What PyTorch computes in integers from integers, ckpt computes in the model's floats (exact for
# magnitudes up to 2^24 in float32, 2^53 in float64): RoBERTa's position ids, cumsum(mask) * mask +
# pad; labels masked with -100; a count of real tokens. Where such a value indexes (an embedding, a
# gather, a loss's labels), this op reads it back as int64 labels, each below `high` (what the
# reader indexes; `ignore_index` aside): computed labels are checked as they are made, as inputs
# are before the step (one outside would index from the end, or past it, silently). No gradient.
def _float_labels(xp, ins, a):
    out = xp.rint(ins[0]).astype(xp.int64)
    if out.size and (int(out.min()) < 0 or int(out.max()) >= a["high"]):
        rest = out[out != a["ignore_index"]] if a["ignore_index"] is not None else out
        if rest.size and (int(rest.min()) < 0 or int(rest.max()) >= a["high"]):
            bad = int(rest.min()) if int(rest.min()) < 0 else int(rest.max())
            raise ConfigError(f"the model computed label {bad}, outside 0..{a['high'] - 1}, the range its reader "
                              f"indexes")
    return out


def _float_labels_workspace(which, s, o, a, itemsize):
    """The rounded floats, before their integer copy; with ignore_index, where a label lies outside
    the range, the mask of the others (a byte each) and their copy (int64)."""
    n = size(o)
    return max(n * itemsize, 9 * n if a["ignore_index"] is not None else 0) if which == "forward" else 0


register(Op(
    name="float_labels", arity=(1, 1), shape=lambda shapes, a: tuple(shapes[0]),
    attrs={"high": REQUIRED, "ignore_index": None}, differentiable=False, dtype="int64",
    forward=_float_labels,
    vjp=lambda xp, i, g, c: xp.zeros(tuple(c.in_shapes[0]), dtype=g.dtype),
    jvp=lambda xp, t, c: xp.zeros(tuple(c.out_shape), dtype=xp.int64),
    needs=lambda i: (), flops=lambda s, o, a: 3 * size(o), vjp_flops=lambda i, s, o, a: 0,
    workspace=_float_labels_workspace,
    example={"shapes": [(3, 4)], "attrs": {"high": 1000}, "positive": True},
))
