"""Convolution and pooling on the fast path: the rules against plain loops over pixels, against
central differences at every geometry the fast path distinguishes (stride 1 on the padded grid,
larger strides on strided windows), the temporaries each rule declares (`workspace`) against what
tracemalloc sees, and maxpool's ties (PyTorch's convention: one element per window takes it)."""

import tracemalloc

import numpy as np
import pytest
from click.testing import CliRunner

from ckpt.backend import get_backend
from ckpt.cli import cli
from ckpt.ops import REGISTRY, Ctx
from ckpt.ops.nn import ufunc_buffer
from ckpt.session import jacobian, load_model
from helpers import gpu_reason

CONV = REGISTRY["conv2d"]
# (x shape, w shape, stride, padding): 3x3 and non-square kernels, padding 0..2, strides 1..3
GEOMETRIES = [
    ((2, 3, 6, 5), (4, 3, 3, 3), 1, 1),
    ((2, 3, 7, 6), (5, 3, 2, 3), 1, 0),
    ((1, 2, 5, 5), (3, 2, 1, 1), 1, 0),
    ((2, 3, 5, 5), (4, 3, 3, 3), 2, 1),
    ((2, 2, 9, 8), (3, 2, 3, 2), 3, 2),
    ((1, 2, 4, 4), (2, 2, 4, 4), 1, 2),
]
# (x shape, w shape, stride, padding, dilation): atrous kernels on both paths (stride 1 on the
# grid, where the taps' spill past a channel must add zeros; strided windows, at a larger stride or
# where the grid would waste more than GRID_WASTE), 1 x k kernels (conv1d's), dilation with no
# padding and with padding beyond the dilated kernel's half
DILATED = [
    ((2, 3, 12, 11), (4, 3, 3, 3), 1, 2, 2),
    ((2, 2, 1, 20), (3, 2, 1, 3), 1, 0, 2),
    ((2, 3, 9, 8), (4, 3, 3, 3), 1, 2, 2),
    ((1, 2, 11, 12), (3, 2, 3, 2), 1, 0, 3),
    ((2, 2, 1, 13), (3, 2, 1, 3), 1, 0, 4),
    ((2, 3, 10, 9), (4, 3, 3, 3), 2, 1, 2),
    ((1, 2, 12, 11), (2, 2, 2, 3), 3, 4, 3),
]


def test_dilated_geometries_take_both_paths():
    from ckpt.ops.nn import _padded_grid
    paths = {_padded_grid(xs, ws, {"stride": s, "padding": p, "dilation": d}) for xs, ws, s, p, d in DILATED if s == 1}
    assert paths == {True, False}
    # ASPP's rate 18 on a 33 x 33 map: the grid would compute 4.4 times the output
    assert not _padded_grid((1, 8, 33, 33), (8, 8, 3, 3), {"stride": 1, "padding": 18, "dilation": 18})


def _naive_conv(x, w, s, p, d=1):
    """The definition, one output pixel at a time."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp_ = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    oh, ow = (h + 2 * p - d * (kh - 1) - 1) // s + 1, (wd + 2 * p - d * (kw - 1) - 1) // s + 1
    y = np.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp_[:, :, i * s:i * s + d * (kh - 1) + 1:d, j * s:j * s + d * (kw - 1) + 1:d]
            y[:, :, i, j] = np.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3]))
    return y


@pytest.mark.parametrize("geom", GEOMETRIES + DILATED, ids=str)
def test_conv_forward_and_vjps_match_the_definition(geom):
    xs, ws, s, p, d = geom if len(geom) == 5 else geom + (1,)
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    a = {"stride": s, "padding": p, "dilation": d}
    y = CONV.forward(np, [x, w, b], a)
    np.testing.assert_allclose(y, _naive_conv(x, w, s, p, d) + b.reshape(1, -1, 1, 1), rtol=1e-12, atol=1e-12)
    assert y.flags.c_contiguous and y.base is None
    g = rng.standard_normal(y.shape)
    ctx = Ctx([x, w, b], y, [xs, ws, (ws[0],)], y.shape, a)
    h = 1e-6
    for i, arr in enumerate((x, w, b)):
        t = rng.standard_normal(arr.shape)
        ins = [x, w, b]
        plus, minus = list(ins), list(ins)
        plus[i], minus[i] = arr + h * t, arr - h * t
        numeric = (CONV.forward(np, plus, a) - CONV.forward(np, minus, a)) / (2 * h)
        vjp = CONV.vjp(np, i, g, ctx)
        assert vjp.shape == arr.shape and vjp.flags.c_contiguous and vjp.base is None
        np.testing.assert_allclose(np.sum(vjp * t), np.sum(g * numeric), rtol=1e-6, atol=1e-8)
        tangents = [np.zeros(xs), np.zeros(ws), np.zeros(ws[0])]
        tangents[i] = t
        np.testing.assert_allclose(np.sum(g * CONV.jvp(np, tangents, ctx)), np.sum(vjp * t), rtol=1e-10)


def _peak_beyond_output(f):
    """(result, tracemalloc's peak during f less the result's bytes): tracing starts inside, so
    the inputs, allocated before, do not count."""
    tracemalloc.start()
    try:
        out = f()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return out, peak - out.nbytes


# Python's own objects (array headers, iterators, tuples) that tracemalloc also sees: the slack
SLACK = 4096
WORKSPACE_CASES = [
    ("conv2d", [(4, 16, 16, 16), (16, 16, 3, 3), (16,)], {"stride": 1, "padding": 1}),
    ("conv2d", [(2, 8, 20, 18), (12, 8, 2, 3)], {"stride": 1, "padding": 0}),
    ("conv2d", [(4, 16, 16, 16), (16, 16, 3, 3), (16,)], {"stride": 2, "padding": 1}),
    ("conv2d", [(4, 6, 45, 42), (8, 6, 3, 2), (8,)], {"stride": 3, "padding": 2}),
    ("conv2d", [(4, 16, 16, 16), (16, 16, 3, 3), (16,)], {"stride": 1, "padding": 2, "dilation": 2}),
    ("conv2d", [(2, 6, 45, 42), (8, 6, 3, 2), (8,)], {"stride": 2, "padding": 3, "dilation": 3}),
    ("conv2d", [(4, 8, 12, 12), (8, 8, 3, 3), (8,)], {"stride": 1, "padding": 6, "dilation": 6}),
    ("maxpool2d", [(4, 16, 32, 32)], {"kernel": 2}),
    ("maxpool2d", [(4, 8, 48, 45)], {"kernel": 3}),
    ("maxpool2d", [(2, 8, 16, 16)], {"kernel": 1}),
    ("avgpool2d", [(4, 16, 32, 32)], {"kernel": 2}),
    ("upsample2d", [(4, 16, 16, 16)], {"scale": 2}),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", WORKSPACE_CASES, ids=lambda c: f"{c[0]}-{c[1][0]}-{c[2]}")
def test_declared_workspace_is_what_numpy_allocates(case, dtype):
    name, shapes, attrs = case
    op = REGISTRY[name]
    a = {**op.attrs, **attrs}
    rng = np.random.default_rng(1)
    ins = [rng.standard_normal(s).astype(dtype) for s in shapes]
    e = np.dtype(dtype).itemsize
    out_shape = op.shape(shapes, a)
    y, used = _peak_beyond_output(lambda: op.forward(np, ins, a))
    declared = op.workspace("forward", shapes, out_shape, a, e)
    assert abs(used - declared) <= SLACK, ("forward", used, declared)
    g = rng.standard_normal(out_shape).astype(dtype)
    ctx = Ctx(ins, y, shapes, out_shape, a)
    for i in range(len(shapes)):
        _, used = _peak_beyond_output(lambda: op.vjp(np, i, g, ctx))
        declared = op.workspace(i, shapes, out_shape, a, e)
        assert abs(used - declared) <= SLACK, (i, used, declared)


def test_the_workspace_is_large_enough_to_be_tested():
    # the cases above are large enough that a buffer of the output's size, or one of numpy's ufunc
    # buffers over it, left out of a declaration would exceed the slack
    for name, shapes, attrs in WORKSPACE_CASES:
        n = int(np.prod(REGISTRY[name].shape(shapes, {**REGISTRY[name].attrs, **attrs})))
        assert ufunc_buffer(n, 4) > 2 * SLACK


# ---- maxpool's ties -------------------------------------------------------------------------------
def test_maxpool_ties_send_the_gradient_to_the_first_maximum():
    mp = REGISTRY["maxpool2d"]
    x = np.array([[[[1.0, 3.0, 2.0, 2.0],
                    [3.0, 0.0, 2.0, 2.0],
                    [5.0, 5.0, 0.0, -1.0],
                    [5.0, 4.0, -1.0, 0.0]]]])
    a = {"kernel": 2}
    y = mp.forward(np, [x], a)
    np.testing.assert_array_equal(y, [[[[3.0, 2.0], [5.0, 0.0]]]])
    ctx = Ctx([x], y, [x.shape], y.shape, a)
    g = np.array([[[[10.0, 20.0], [30.0, 40.0]]]])
    expected = np.zeros_like(x)
    expected[0, 0, 0, 1], expected[0, 0, 0, 2], expected[0, 0, 2, 0], expected[0, 0, 2, 2] = 10, 20, 30, 40
    np.testing.assert_array_equal(mp.vjp(np, 0, g, ctx), expected)
    t = np.arange(16.0).reshape(x.shape)
    np.testing.assert_array_equal(mp.jvp(np, [t], ctx), [[[[1.0, 2.0], [8.0, 10.0]]]])


TIES = """
name: ties
dtype: float64
seed: 0
dims: {N: 2, C: 3, H: 2}
inputs:
  x: {shape: [N, C, H, H], init: normal, grad: true}
nodes:
  - {name: up, op: upsample2d, inputs: [x], attrs: {scale: 2}}
  - {name: pool, op: maxpool2d, inputs: [up], attrs: {kernel: 2}}
  - {name: total, op: sum, inputs: [pool]}
output: total
"""


@pytest.fixture
def ties_config(tmp_path):
    path = tmp_path / "ties.yaml"
    path.write_text(TIES)
    return str(path)


def test_upsample_then_maxpool_is_the_identity_in_both_modes(ties_config):
    model = load_model(ties_config)
    rev = jacobian(model, mode="reverse", backend=get_backend("cpu"))["jacobian"]
    fwd = jacobian(model, mode="forward", backend=get_backend("cpu"))["jacobian"]
    np.testing.assert_array_equal(np.asarray(rev), np.ones_like(np.asarray(rev)))
    np.testing.assert_array_equal(np.asarray(fwd), np.asarray(rev))


def test_check_passes_on_tied_maxima(ties_config):
    res = CliRunner().invoke(cli, ["check", ties_config])
    assert res.exit_code == 0, res.output
    assert "passed" in res.output


# ---- the same rules on cupy (skipped without a GPU; scripts/gpu_check.sh runs them) -------------
GPU_REASON = gpu_reason()
POOLS = [("maxpool2d", (2, 3, 8, 6), {"kernel": 2}), ("maxpool2d", (2, 3, 9, 6), {"kernel": 3}),
         ("avgpool2d", (2, 3, 8, 6), {"kernel": 2}), ("upsample2d", (2, 3, 4, 5), {"scale": 3})]


@pytest.mark.gpu
@pytest.mark.skipif(GPU_REASON is not None, reason=GPU_REASON or "")
def test_conv_and_pool_rules_on_cupy_match_numpy():
    xp = get_backend("cuda").xp
    rng = np.random.default_rng(3)
    cases = [("conv2d", [xs, ws, (ws[0],)], {"stride": s, "padding": p}) for xs, ws, s, p in GEOMETRIES]
    cases += [("conv2d", [xs, ws, (ws[0],)], {"stride": s, "padding": p, "dilation": d}) for xs, ws, s, p, d in DILATED]
    cases += [(name, [shape], attrs) for name, shape, attrs in POOLS]
    for name, shapes, attrs in cases:
        op = REGISTRY[name]
        a = {**op.attrs, **attrs}
        ins = [rng.standard_normal(s) for s in shapes]
        if name == "maxpool2d":  # ties in every window: the first maximum takes the gradient
            ins[0] = np.round(ins[0])
        y = op.forward(np, ins, a)
        d_ins = [xp.asarray(v) for v in ins]
        d_y = op.forward(xp, d_ins, a)
        np.testing.assert_allclose(xp.asnumpy(d_y), y, rtol=1e-10, atol=1e-12)
        g = rng.standard_normal(y.shape)
        ctx = Ctx(ins, y, shapes, y.shape, a)
        d_ctx = Ctx(d_ins, d_y, shapes, y.shape, a)
        for i in range(len(shapes)):
            np.testing.assert_allclose(xp.asnumpy(op.vjp(xp, i, xp.asarray(g), d_ctx)), op.vjp(np, i, g, ctx),
                                       rtol=1e-10, atol=1e-12, err_msg=f"{name} {shapes} vjp {i}")
        ts = [rng.standard_normal(s) for s in shapes]
        np.testing.assert_allclose(xp.asnumpy(op.jvp(xp, [xp.asarray(t) for t in ts], d_ctx)), op.jvp(np, ts, ctx),
                                   rtol=1e-10, atol=1e-12, err_msg=f"{name} {shapes} jvp")
