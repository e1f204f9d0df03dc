"""Every op's VJP and JVP against central differences in float64, and the adjoint identity
<vjp(g), t> = <g, jvp(t)>, generated from the registry: a new op is tested without a new test."""

import numpy as np
import pytest

from ckpt.ops import OUT, REGISTRY, Ctx, size
from helpers import saved_residual

OPS = sorted(REGISTRY)
DIFFERENTIABLE = [n for n in OPS if REGISTRY[n].differentiable]


def _inputs(op, rng):
    ex = op.example
    shapes = ex["shapes"]
    ins = []
    for i, s in enumerate(shapes):
        if i in op.int_inputs:
            ins.append(rng.integers(0, shapes[0][-1], s))
        elif ex.get("positive"):
            ins.append(rng.uniform(0.5, 2.0, s))
        else:
            ins.append(rng.standard_normal(s))
    return ins


def _attrs(op):
    attrs = {k: v for k, v in op.attrs.items()}
    attrs.update(op.example.get("attrs", {}))
    return attrs


def _ctx(op, ins, out, attrs):
    return Ctx(ins, out, [np.shape(a) for a in ins], np.shape(out), attrs)


def _case(name, seed):
    """An op, its example inputs and output, a context holding everything, and a cotangent."""
    op = REGISTRY[name]
    rng = np.random.default_rng(seed)
    ins = _inputs(op, rng)
    attrs = _attrs(op)
    out = np.asarray(op.forward(np, ins, attrs))
    return op, rng, ins, attrs, out, _ctx(op, ins, out, attrs), rng.standard_normal(out.shape)


def _float_positions(op, ins):
    return [i for i in range(len(ins)) if i not in op.int_inputs]


@pytest.mark.parametrize("name", OPS)
def test_op_declares_example_and_shape(name):
    op = REGISTRY[name]
    rng = np.random.default_rng(0)
    ins = _inputs(op, rng)
    attrs = _attrs(op)
    out = np.asarray(op.forward(np, ins, attrs))
    assert out.shape == tuple(op.shape([np.shape(a) for a in ins], attrs))
    assert op.flops([np.shape(a) for a in ins], out.shape, attrs) >= 0


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_vjp_and_jvp_match_central_differences(name):
    op, rng, ins, attrs, out, ctx, g = _case(name, 1)
    h = 1e-6
    for i in _float_positions(op, ins):
        t = rng.standard_normal(np.shape(ins[i]))

        def f(eps):
            shifted = list(ins)
            shifted[i] = ins[i] + eps * t
            return np.asarray(op.forward(np, shifted, attrs))

        numeric = (f(h) - f(-h)) / (2 * h)  # directional derivative of the output along t
        # only the residuals the op declares are handed to its VJP: a wrong `needs` fails here
        need = set(op.needs(i))
        vctx = Ctx([a if k in need else None for k, a in enumerate(ins)], out if OUT in need else None,
                   ctx.in_shapes, ctx.out_shape, attrs)
        vjp = np.asarray(op.vjp(np, i, g, vctx))
        assert vjp.shape == np.shape(ins[i])
        np.testing.assert_allclose(np.sum(vjp * t), np.sum(g * numeric), rtol=1e-6, atol=1e-8)
        tangents = [np.zeros(np.shape(a)) for a in ins]
        tangents[i] = t
        jvp = np.asarray(op.jvp(np, tangents, ctx))
        np.testing.assert_allclose(jvp, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_adjoint_identity(name):
    op, rng, ins, attrs, out, ctx, g = _case(name, 2)
    tangents = [np.zeros(np.shape(a)) if i in op.int_inputs else rng.standard_normal(np.shape(a))
                for i, a in enumerate(ins)]
    lhs = sum(np.sum(np.asarray(op.vjp(np, i, g, ctx)) * tangents[i]) for i in _float_positions(op, ins))
    rhs = np.sum(g * np.asarray(op.jvp(np, tangents, ctx)))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", [n for n in OPS if REGISTRY[n].residual is not None])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_saved_residual_changes_no_bit(name, seed):
    """An op given its residual (as the model graph gives it) computes the very bits it computes
    without: the forward, the JVP and each VJP, whose context holds only what `needs` declares.
    So its VJPs are the total derivative, which the central differences above check."""
    for dtype in (np.float32, np.float64):
        op, rng, ins, attrs, out, ctx, g = _case(name, seed)
        ins = [a.astype(dtype) if i not in op.int_inputs else a for i, a in enumerate(ins)]
        g = g.astype(dtype)
        shapes = [np.shape(a) for a in ins]
        rop, positions, rattrs = op.residual(shapes, attrs)
        res, value = saved_residual(op, ins, attrs)
        saved = ins + [value]
        assert saved[-1].shape == tuple(res.shape([shapes[k] for k in positions], {**res.attrs, **rattrs}))
        assert not res.differentiable
        assert tuple(op.shape([np.shape(a) for a in saved], attrs)) == tuple(op.shape(shapes, attrs))
        y, y_saved = (np.asarray(op.forward(np, a, attrs)) for a in (ins, saved))
        assert y.dtype == y_saved.dtype and np.array_equal(y, y_saved, equal_nan=True), name
        t = [rng.standard_normal(s).astype(dtype) for s in shapes]
        jvps = [np.asarray(op.jvp(np, t + [np.zeros_like(a[-1])] * (len(a) - len(ins)), _ctx(op, a, y, attrs)))
                for a in (ins, saved)]
        assert np.array_equal(*jvps), name
        for i in _float_positions(op, ins):
            vjps = []
            for a in (ins, saved):
                need = set(op.needs(i))
                c = Ctx([v if k in need else None for k, v in enumerate(a)], y if OUT in need else None,
                        [np.shape(v) for v in a], y.shape, attrs)
                vjps.append(np.asarray(op.vjp(np, i, g, c)))
            assert vjps[0].dtype == vjps[1].dtype and np.array_equal(*vjps), (name, i)


def test_dropout_mask_is_reproducible_and_has_the_right_rate():
    from ckpt.ops.nn import dropout_keep
    a = dropout_keep(np, (1000, 100), seed=42, p=0.3)
    b = dropout_keep(np, (1000, 100), seed=42, p=0.3)
    c = dropout_keep(np, (1000, 100), seed=43, p=0.3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert abs(a.mean() - 0.7) < 0.01
    assert size((2, 3)) == 6


@pytest.mark.parametrize("sa,sb", [((2, 9, 9), (2, 9, 2)), ((2, 2, 9), (9, 9)), ((2, 2, 9), (2, 9, 9)), ((9, 9), (3, 9, 2)), ((2, 9, 9), (9, 2))])
def test_matmul_vjp_by_the_transposed_product_where_an_operand_is_big(sa, sb):
    """dA = g B^T and dB = A^T g, also where the VJP takes the transpose of the smaller product."""
    from ckpt.ops import REGISTRY, Ctx
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    y = a @ b
    g = rng.standard_normal(y.shape)
    op = REGISTRY["matmul"]
    da = op.vjp(np, 0, g, Ctx([None, b], None, [sa, sb], y.shape, {}))
    db = op.vjp(np, 1, g, Ctx([a, None], None, [sa, sb], y.shape, {}))
    want_a = np.einsum("...mn,...kn->...mk", g, np.broadcast_to(b, y.shape[:-2] + sb[-2:]))
    want_b = np.einsum("...mk,...mn->...kn", np.broadcast_to(a, y.shape[:-2] + sa[-2:]), g)
    np.testing.assert_allclose(da, want_a.reshape((-1,) + sa).sum(axis=0) if want_a.shape != sa else want_a, rtol=1e-12)
    np.testing.assert_allclose(db, want_b.reshape((-1,) + sb).sum(axis=0) if want_b.shape != sb else want_b, rtol=1e-12)


# ---- the lean array rules against the formulas they rearrange -------------------------------------
# The rules build their results in place, take row sums as BLAS products and skip reshapes on 2-D
# operands; these tests hold each rearrangement to the plain formula (float64, tight tolerances),
# on 2-D and batched shapes and along a non-last axis where a rule has a path for each.
_GELU_C = np.sqrt(2.0 / np.pi)


def _textbook(name, ins, g, attrs):
    """(forward, [VJP for each input]) written out as the formulas read, in float64."""
    if name == "gelu":
        (x,) = ins
        t = np.tanh(_GELU_C * (x + 0.044715 * x ** 3))
        d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_C * (1 + 3 * 0.044715 * x * x)
        return 0.5 * x * (1 + t), [g * d]
    if name == "softmax":
        (x,), ax = ins, attrs["axis"]
        e = np.exp(x - x.max(axis=ax, keepdims=True))
        y = e / e.sum(axis=ax, keepdims=True)
        return y, [y * (g - (g * y).sum(axis=ax, keepdims=True))]
    if name == "layernorm":
        x, gamma, beta = ins
        mu = x.mean(axis=-1, keepdims=True)
        rstd = 1 / np.sqrt(((x - mu) ** 2).mean(axis=-1, keepdims=True) + attrs["eps"])
        xhat = (x - mu) * rstd
        dxhat = g * gamma
        dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
        lead = tuple(range(x.ndim - 1))
        return xhat * gamma + beta, [dx, (g * xhat).sum(axis=lead), g.sum(axis=lead)]
    if name == "linear":
        x, w, b = ins
        lead = tuple(range(x.ndim - 1))
        return x @ w + b, [g @ w.T, np.tensordot(x, g, axes=(lead, lead)), g.sum(axis=lead)]
    raise KeyError(name)


@pytest.mark.parametrize("name, shapes, attrs", [
    ("gelu", [(5, 7)], {}), ("gelu", [(2, 3, 9)], {}),
    ("softmax", [(4, 6)], {"axis": -1}), ("softmax", [(2, 3, 5)], {"axis": 2}), ("softmax", [(2, 3, 5)], {"axis": 1}),
    ("softmax", [(7,)], {"axis": 0}),
    ("layernorm", [(4, 6), (6,), (6,)], {"eps": 1e-5}), ("layernorm", [(2, 3, 5), (5,), (5,)], {"eps": 1e-3}),
    ("linear", [(4, 6), (6, 3), (3,)], {}), ("linear", [(2, 3, 6), (6, 3), (3,)], {}),
])
def test_lean_rules_equal_the_formulas_they_rearrange(name, shapes, attrs):
    op = REGISTRY[name]
    rng = np.random.default_rng(3)
    ins = [rng.standard_normal(s) * 3 for s in shapes]
    y = op.forward(np, ins, attrs)
    g = rng.standard_normal(y.shape)
    want_y, want_vjps = _textbook(name, ins, g, attrs)
    np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-13)
    ctx = Ctx(ins, y, shapes, y.shape, attrs)
    for i, want in enumerate(want_vjps):
        got = op.vjp(np, i, g, ctx)
        assert got.shape == want.shape and got.base is None, (name, i)  # owns its buffer
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12, err_msg=f"{name} VJP {i}")
    # rules that work in place do so in their own buffers: the inputs, g and the output are untouched
    kept = [a.copy() for a in ins + [g, y]]
    op.forward(np, ins, attrs)
    for i in range(len(ins)):
        op.vjp(np, i, g, ctx)
    assert all(np.array_equal(a, k) for a, k in zip(ins + [g, y], kept)), f"{name} wrote into an operand"


def test_linear_gives_the_same_bits_on_2d_and_batched_inputs():
    """The 2-D path (no reshape, no output buffer of its own) and the batched one are one product."""
    op = REGISTRY["linear"]
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        x, w, b = (rng.standard_normal(s).astype(dtype) for s in ((2, 3, 6), (6, 4), (4,)))
        x2 = x.reshape(6, 6)
        y3, y2 = op.forward(np, [x, w, b], {}), op.forward(np, [x2, w, b], {})
        assert y3.dtype == y2.dtype == dtype and y3.tobytes() == y2.tobytes()
        g = rng.standard_normal(y3.shape).astype(dtype)
        for i in range(3):
            c3 = Ctx([x, w, b], None, [x.shape, w.shape, b.shape], y3.shape, {})
            c2 = Ctx([x2, w, b], None, [x2.shape, w.shape, b.shape], y2.shape, {})
            assert op.vjp(np, i, g, c3).tobytes() == op.vjp(np, i, g.reshape(6, 4), c2).tobytes(), i


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_dropout_gives_the_bits_of_its_formula(dtype):
    """x * (keep ? 1 / (1 - p) : 0), element by element: what the fused CUDA kernel computes, so a
    GPU step and a CPU step draw and scale alike. The rule builds it in the mask's buffer."""
    from ckpt.ops.nn import _GOLDEN, _M1, _M2, _dropout, dropout_keep
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 17, 9)) * 4).astype(dtype)
    x[0, 0, :3] = [0.0, -0.0, np.inf]
    for a in ({"p": 0.3, "_seed": 12345}, {"p": 0.0, "_seed": 0}, {"p": 0.9, "_seed": 2**40 + 7}):
        k = np.arange(x.size, dtype=object) + (a["_seed"] * _GOLDEN + _GOLDEN)  # splitmix64 in Python ints
        z = [int(v) % 2**64 for v in k]
        z = [((v ^ (v >> 30)) * _M1) % 2**64 for v in z]
        z = [((v ^ (v >> 27)) * _M2) % 2**64 for v in z]
        keep = np.array([(v ^ (v >> 31)) >= min(int(a["p"] * 2**64), 2**64 - 1) for v in z]).reshape(x.shape)
        scale = x.dtype.type(1.0 / (1.0 - a["p"]))
        with np.errstate(invalid="ignore"):
            want = x * np.where(keep, scale, x.dtype.type(0))
        with np.errstate(invalid="ignore"):  # inf * 0, as the kernel computes it
            got = _dropout(np, x, a)
        assert got.dtype == x.dtype and got.tobytes() == want.tobytes(), a
        t = x.transpose(2, 0, 1)  # the mask follows the logical (C-order) index of a strided input
        t_keep = dropout_keep(np, t.shape, a["_seed"], a["p"])
        with np.errstate(invalid="ignore"):
            assert _dropout(np, t, a).tobytes() == (t * np.where(t_keep, scale, t.dtype.type(0))).tobytes()


# ---- amax / amin: every attr combination, and PyTorch's two rules at ties ------------------------
EXTREMES = [(name, attrs) for name in ("amax", "amin") for attrs in (
    {"axis": None}, {"axis": -1}, {"axis": [0, 2], "keepdims": True}, {"axis": 1, "first": True},
    {"axis": 0, "keepdims": True, "first": True}, {"axis": None, "first": True})]


def _extreme_ctx(name, x, attrs):
    op = REGISTRY[name]
    a = {**op.attrs, **attrs}
    out = np.asarray(op.forward(np, [x], a))
    return op, a, out, Ctx([x], out, [x.shape], out.shape, a)


@pytest.mark.parametrize("name,attrs", EXTREMES, ids=str)
def test_extremes_match_central_differences(name, attrs):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 5)) if attrs != {"axis": None, "first": True} else rng.standard_normal(7)
    op, a, out, ctx = _extreme_ctx(name, x, attrs)
    assert out.shape == tuple(op.shape([x.shape], a))
    ref = (np.max if name == "amax" else np.min)(x, axis=None if a["axis"] is None else tuple(np.atleast_1d(a["axis"])),
                                                 keepdims=a["keepdims"])
    np.testing.assert_array_equal(out, ref)
    g, t, h = rng.standard_normal(out.shape), rng.standard_normal(x.shape), 1e-6
    numeric = (op.forward(np, [x + h * t], a) - op.forward(np, [x - h * t], a)) / (2 * h)
    vjp = op.vjp(np, 0, g, Ctx([x], out, [x.shape], out.shape, a))
    np.testing.assert_allclose(np.sum(vjp * t), np.sum(g * numeric), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(op.jvp(np, [t], ctx), numeric, rtol=1e-5, atol=1e-7)


TIED = np.array([[1.0, 3.0, 3.0, -1.0],
                 [2.0, 2.0, 0.0, 2.0],
                 [-4.0, 5.0, -4.0, -4.0]])


@pytest.mark.parametrize("first", [False, True])
@pytest.mark.parametrize("name", ["amax", "amin"])
def test_extremes_at_ties_share_or_pick_the_first(name, first):
    """Rows with two and three tied extrema: amax/amin share the gradient equally among them
    (torch.amax), `first` gives it all to the first along the axis (torch.max(x, dim)); the JVP
    is the VJP's transpose at the ties too."""
    op, a, out, ctx = _extreme_ctx(name, TIED, {"axis": 1, "first": first})
    g = np.array([10.0, 20.0, 30.0])
    big = name == "amax"
    np.testing.assert_array_equal(out, [3.0, 2.0, 5.0] if big else [-1.0, 0.0, -4.0])
    if big:
        expected = [[0, 5, 5, 0], [20 / 3, 20 / 3, 0, 20 / 3], [0, 30, 0, 0]] if not first else \
                   [[0, 10, 0, 0], [20, 0, 0, 0], [0, 30, 0, 0]]
    else:
        expected = [[0, 0, 0, 10], [0, 0, 20, 0], [10, 0, 10, 10]] if not first else \
                   [[0, 0, 0, 10], [0, 0, 20, 0], [30, 0, 0, 0]]
    np.testing.assert_allclose(op.vjp(np, 0, g, ctx), expected, rtol=1e-15)
    t = np.arange(12.0).reshape(3, 4)
    jvp = op.jvp(np, [t], ctx)
    np.testing.assert_allclose(np.sum(op.vjp(np, 0, g, ctx) * t), np.sum(g * jvp), rtol=1e-13)


def test_extremes_at_ties_are_pytorchs():
    torch = pytest.importorskip("torch", reason="torch is not installed (optional)")
    g = np.array([10.0, 20.0, 30.0])
    for name, spread, first in (("amax", torch.amax, torch.max), ("amin", torch.amin, torch.min)):
        for use_first in (False, True):
            op, a, out, ctx = _extreme_ctx(name, TIED, {"axis": 1, "first": use_first})
            x = torch.tensor(TIED, requires_grad=True)
            y = first(x, dim=1).values if use_first else spread(x, dim=1)
            y.backward(torch.tensor(g))
            np.testing.assert_allclose(op.vjp(np, 0, g, ctx), x.grad.numpy(), rtol=1e-15, err_msg=(name, use_first))
        # over every element: torch.max(x) shares the gradient, as amax with no axis does
        op, a, out, ctx = _extreme_ctx(name, TIED, {"axis": None})
        x = torch.tensor(TIED, requires_grad=True)
        (first(x) * 7.0).backward()
        np.testing.assert_allclose(op.vjp(np, 0, np.array(7.0), ctx), x.grad.numpy(), rtol=1e-15)


def test_extremes_refuse_first_over_several_axes():
    from ckpt.errors import ShapeError
    for name in ("amax", "amin"):
        op = REGISTRY[name]
        with pytest.raises(ShapeError, match="first takes the first"):
            op.shape([(2, 3, 4)], {**op.attrs, "axis": [0, 2], "first": True})
        with pytest.raises(ShapeError, match="out of range"):
            op.shape([(2, 3)], {**op.attrs, "axis": 2})
        assert op.shape([()], dict(op.attrs)) == ()  # a 0-d value: its own extremum


def test_gather_picks_along_the_last_axis_and_sums_repeated_picks():
    op = REGISTRY["gather"]
    x = np.arange(24.0).reshape(2, 3, 4)
    idx = np.array([[[0, 3, 3], [1, 1, 1], [2, 0, 2]], [[3, 3, 0], [0, 1, 2], [2, 2, 2]]])
    out = op.forward(np, [x, idx], {})
    np.testing.assert_array_equal(out, np.take_along_axis(x, idx, -1))
    g = np.arange(1.0, 19.0).reshape(2, 3, 3)
    dx = op.vjp(np, 0, g, Ctx([None, idx], None, [x.shape, idx.shape], out.shape, {}))
    expected = np.zeros_like(x)
    for b, r, j in np.ndindex(idx.shape):
        expected[b, r, idx[b, r, j]] += g[b, r, j]
    np.testing.assert_array_equal(dx, expected)
    assert dx[1, 2, 2] == 16 + 17 + 18  # one element picked three times
    np.testing.assert_array_equal(op.jvp(np, [x * 2, np.zeros(idx.shape)], Ctx([x, idx], out, [x.shape, idx.shape],
                                                                           out.shape, {})), 2 * out)
    from ckpt.errors import ShapeError
    with pytest.raises(ShapeError, match="same leading axes"):
        op.shape([(2, 3, 4), (3, 3, 1)], {})
    assert op.labels_below([(2, 3, 4), (2, 3, 5)]) == 4
