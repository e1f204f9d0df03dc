"""Every op's VJP and JVP against central differences in float64, and the adjoint identity
<vjp(g), t> = <g, jvp(t)>, generated from the registry: a new op is tested without a new test."""

import numpy as np
import pytest

from ckpt.ops import OUT, REGISTRY, Ctx, size

OPS = sorted(REGISTRY)


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


@pytest.mark.parametrize("name", OPS)
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


@pytest.mark.parametrize("name", OPS)
def test_adjoint_identity(name):
    op, rng, ins, attrs, out, ctx, g = _case(name, 2)
    tangents = [np.zeros(np.shape(a)) if i in op.int_inputs else rng.standard_normal(np.shape(a))
                for i, a in enumerate(ins)]
    lhs = sum(np.sum(np.asarray(op.vjp(np, i, g, ctx)) * tangents[i]) for i in _float_positions(op, ins))
    rhs = np.sum(g * np.asarray(op.jvp(np, tangents, ctx)))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-9, atol=1e-10)


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
