"""Ops that index: rows gathered by integer labels. One block per op."""

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
