"""Ops that index: rows gathered by integer labels, elements picked along the last axis. One
block per op."""

from . import Op, register, shape_error, size


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
