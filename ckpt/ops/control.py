"""Data-dependent choice and comparisons: what a Python `if` on a value becomes in a traced model.

Operator overloading records a straight line: a Python `if` on a traced value cannot be recorded
(the tape holds one branch, the one taken while tracing). `where(c, a, b)` computes both branches
and picks elementwise, so the choice itself is in the graph and a recompute makes the same choice.
Conditions are masks in the model's float dtype (nonzero = true), so they travel through the graph,
the planner and the executor like any other value. Comparisons make such masks; they are flat
almost everywhere, so their gradient is zero. `pow` raises to a constant exponent (`x ** 2.5`).
One block per op.
"""

from . import Op, broadcast_shapes, iter_buffer, register, size, unbroadcast


# ---- where: pick a where c != 0, else b ------------------------------------------------------------
def _where_vjp(xp, i, g, c):
    if i == 0:  # the condition is a choice, not a quantity: no gradient flows into it
        return xp.zeros(tuple(c.in_shapes[0]), dtype=g.dtype)
    zero = g.dtype.type(0)
    picked = xp.where(c.ins[0] != 0, g, zero) if i == 1 else xp.where(c.ins[0] != 0, zero, g)
    return unbroadcast(xp, picked, c.in_shapes[i])


def _where_workspace(which, in_shapes, out_shape, attrs, itemsize):
    mask = size(in_shapes[0])  # the boolean c != 0, one byte per element
    if which == 0:
        return 0
    # numpy's iteration buffer for each operand it broadcasts
    n = size(out_shape)
    buffers = sum(iter_buffer(n, itemsize) for s in in_shapes if tuple(s) != tuple(out_shape) and size(s) > 1)
    if which == "forward":
        return mask + buffers
    # the picked gradient has the output's shape; it is a temporary when the input was broadcast
    return mask + buffers + (n * itemsize if tuple(in_shapes[which]) != tuple(out_shape) else 0)


register(Op(
    name="where", arity=(3, 3), shape=lambda shapes, a: broadcast_shapes("where", shapes),
    forward=lambda xp, ins, a: xp.where(ins[0] != 0, ins[1], ins[2]),
    vjp=_where_vjp,
    jvp=lambda xp, t, c: xp.where(c.ins[0] != 0, t[1], t[2]),
    needs=lambda i: () if i == 0 else (0,),
    flops=lambda s, o, a: size(o),
    vjp_flops=lambda i, s, o, a: 0 if i == 0 else size(o) + (size(o) if tuple(s[i]) != tuple(o) else 0),
    workspace=_where_workspace,
    example={"shapes": [(3, 4), (3, 4), (4,)]},
))


# ---- comparisons: a float mask, 1 where the relation holds ------------------------------------------
def comparison(name, relation):
    register(Op(
        name=name, arity=(2, 2), shape=lambda shapes, a: broadcast_shapes(name, shapes),
        forward=lambda xp, ins, a: relation(ins[0], ins[1]).astype(xp.result_type(ins[0], ins[1])),
        vjp=lambda xp, i, g, c: xp.zeros(tuple(c.in_shapes[i]), dtype=g.dtype),
        jvp=lambda xp, t, c: xp.zeros(tuple(c.out_shape), dtype=t[0].dtype),
        needs=lambda i: (),
        flops=lambda s, o, a: size(o),
        vjp_flops=lambda i, s, o, a: 0,
        workspace=lambda which, s, o, a, itemsize: size(o) if which == "forward" else 0,  # the bool result
        example={"shapes": [(3, 4), (4,)]},
    ))


comparison("greater", lambda a, b: a > b)
comparison("greater_equal", lambda a, b: a >= b)
comparison("less", lambda a, b: a < b)
comparison("less_equal", lambda a, b: a <= b)


# ---- pow: x ** p for a constant exponent p --------------------------------------------------------
def _pow_vjp(xp, i, g, c):
    p = c.attrs["exponent"]
    return g * (p * c.ins[0] ** (p - 1))


register(Op(
    name="pow", arity=(1, 1), shape=lambda shapes, a: tuple(shapes[0]), attrs={"exponent": 2.0},
    forward=lambda xp, ins, a: ins[0] ** a["exponent"],
    vjp=_pow_vjp,
    jvp=lambda xp, t, c: t[0] * (c.attrs["exponent"] * c.ins[0] ** (c.attrs["exponent"] - 1)),
    needs=lambda i: (0,),
    flops=lambda s, o, a: 2 * size(o),
    vjp_flops=lambda i, s, o, a: 4 * size(o),
    workspace=lambda which, s, o, a, itemsize: 0 if which == "forward" else size(o) * itemsize,
    example={"shapes": [(3, 4)], "attrs": {"exponent": 2.5}, "positive": True},
))
