"""The same executor and schedules on cupy (`--device cuda`). Marked `gpu`: skipped with a reason
where cupy or a GPU is missing; `scripts/gpu_check.sh` runs them on a machine with one."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from ckpt.backend import get_backend
from ckpt.cli import cli
from ckpt.plan import plan, smallest_peak
from ckpt.session import device_leaves, load_model, run_plan
from conftest import SMALL, config_path
from helpers import gpu_reason


REASON = gpu_reason()


def test_without_a_gpu_cuda_is_one_line_and_exit_2():
    if REASON is None:
        pytest.skip("a GPU is present")
    res = CliRunner().invoke(cli, ["run", config_path("seed_example"), "--device", "cuda"])
    assert res.exit_code == 2 and res.output.strip().count("\n") == 0
    assert "cupy" in res.output or "no GPU" in res.output


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.gpu
@pytest.mark.skipif(REASON is not None, reason=REASON or "")
def test_gpu_matches_prediction_and_cpu(name):
    model = load_model(config_path(name), SMALL[name])
    cpu, cuda = get_backend("cpu"), get_backend("cuda")
    cpu_leaves, gpu_leaves = device_leaves(model, cpu), device_leaves(model, cuda)
    sa, sa_sim = plan(model.joint, "store-all", ix=model.index)
    ref = run_plan(model, sa.steps, cpu, n_steps=1, leaves=cpu_leaves, warmup=0)
    gpu_ref = None
    budget = max(sa_sim.resident + sa_sim.peak_managed * 3 // 4, smallest_peak(model.joint, model.index)[0])
    for strategy in ("store-all", "sqrt-n", "budget"):
        p, sim = plan(model.joint, strategy, budget, time_limit=5, ix=model.index)
        r = run_plan(model, p.steps, cuda, n_steps=1, leaves=gpu_leaves, warmup=1)
        assert r.measured_managed == sim.peak_managed and r.timeline == sim.timeline
        assert r.allocator_peak > 0
        tol = 1e-6 if model.graph.graph["dtype"] == "float64" else 2e-4
        assert r.loss == pytest.approx(ref.loss, rel=tol)
        for k, g in ref.grads.items():
            scale = max(np.linalg.norm(g), 1e-12)
            assert np.linalg.norm(r.grads[k] - g) <= tol * scale + 1e-7, (strategy, k)
        if gpu_ref is None:
            gpu_ref = r
        else:  # on one device, recompute reproduces store-all bit for bit
            assert all(np.array_equal(r.grads[k], gpu_ref.grads[k]) for k in gpu_ref.grads)


@pytest.mark.gpu
@pytest.mark.skipif(REASON is not None, reason=REASON or "")
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_fused_dropout_kernels_give_numpys_bits(dtype):
    """Dropout drawn in the kernel, the saved mask's kernel and the masked product: numpy's bits."""
    from ckpt.ops.nn import _dropout, _mask, _masked
    xp = get_backend("cuda").xp
    x = np.random.default_rng(0).standard_normal((3, 257, 129)).astype(dtype)
    for a in ({"p": 0.3, "_seed": 12345}, {"p": 0.0, "_seed": 0}, {"p": 0.9, "_seed": 2**40 + 7}):
        want = _dropout(np, x, a)
        got = _dropout(xp, xp.asarray(x), a)
        assert got.dtype == want.dtype and np.array_equal(xp.asnumpy(got), want), a
        m = dict(a, shape=x.shape)
        want, got = _mask(np, m), _mask(xp, m)
        assert got.dtype == want.dtype == np.bool_ and np.array_equal(xp.asnumpy(got), want), a
        y = _masked(xp, xp.asarray(x), got, m)
        assert y.dtype == x.dtype and np.array_equal(xp.asnumpy(y), _masked(np, x, want, m)), a
    strided = xp.asarray(x).transpose(2, 0, 1)  # the mask follows the logical (C-order) index
    assert np.array_equal(xp.asnumpy(_dropout(xp, strided, a)), _dropout(np, x.transpose(2, 0, 1), a))


@pytest.mark.gpu
@pytest.mark.skipif(REASON is not None, reason=REASON or "")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_kernels_give_the_array_rules_on_cuda(dtype):
    """Each op with a kernel (gelu, softmax by rows and along other axes, layernorm), forward and
    VJP, against the same op's array rule on the same device."""
    from ckpt.ops import REGISTRY, Ctx, use_kernels
    xp = get_backend("cuda").xp
    rng = np.random.default_rng(1)
    tol = 2e-6 if dtype == "float32" else 1e-13
    # rows held in shared memory (up to ops.nn._ROWS_CACHED bytes) and rows too long for it
    cases = [("gelu", [(4, 300)], {}), ("gelu_erf", [(4, 300)], {}), ("softmax", [(3, 1)], {"axis": -1}),
             ("softmax", [(2, 5, 7)], {"axis": -1}), ("softmax", [(2, 20000)], {"axis": -1}),
             ("softmax", [(4, 1024)], {"axis": -1}), ("softmax", [(2, 1500)], {"axis": -1}),
             ("layernorm_stats", [(8, 1024)], {"eps": 1e-5}), ("layernorm_stats", [(2, 9000)], {"eps": 1e-5}),
             ("layernorm", [(4, 2, 1024), (1024,), (1024,), "stats"], {"eps": 1e-5}),
             ("layernorm", [(3, 5000), (5000,), (5000,), "stats"], {"eps": 1e-5}),
             ("layernorm", [(3, 7), (7,), (7,), "stats"], {"eps": 1e-5}),
             ("softmax", [(6, 5, 4)], {"axis": 1}), ("layernorm", [(3, 4, 40), (40,), (40,)], {"eps": 1e-5}),
             ("layernorm_stats", [(3, 4, 40)], {"eps": 1e-5}), ("layernorm", [(3, 4, 40), (40,), (40,), "stats"],
                                                               {"eps": 1e-5})]
    for name, shapes, attrs in cases:
        op = REGISTRY[name]
        ins = [xp.asarray(rng.standard_normal(s).astype(dtype)) for s in shapes if s != "stats"]
        if "stats" in shapes:  # the statistics as the model graph saves them (array rule, numpy)
            ins.append(xp.asarray(REGISTRY["layernorm_stats"].forward(np, [xp.asnumpy(ins[0])], attrs)))
            shapes = shapes[:-1] + [ins[-1].shape]
        runs = []
        for on in (True, False):
            use_kernels(on)
            try:
                y = op.forward(xp, ins, attrs)
                g = xp.asarray(np.random.default_rng(2).standard_normal(y.shape).astype(dtype))
                ctx = Ctx(ins, y, shapes, y.shape, attrs)
                runs.append([y] + [op.vjp(xp, i, g, ctx) for i in range(min(len(ins), op.arity[1]))
                                   if op.differentiable])
            finally:
                use_kernels(True)
        for a, b in zip(*runs):
            a, b = xp.asnumpy(a), xp.asnumpy(b)
            assert a.dtype == b.dtype and a.shape == b.shape, name
            assert np.abs(a - b).max() <= tol * max(np.abs(b).max(), 1.0), (name, shapes)


@pytest.mark.gpu
@pytest.mark.skipif(REASON is not None, reason=REASON or "")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_vector_kernels_give_cupys_bits_on_cuda(dtype):
    """ckpt's 16-byte elementwise kernels on every layout (tails, biases, masks, row statistics,
    misaligned views, in place) against cupy's own operators."""
    from test_vector_kernels import check_arith_layouts
    xp = get_backend("cuda").xp
    check_arith_layouts(xp, dtype, xp.asnumpy)


@pytest.mark.gpu
@pytest.mark.skipif(REASON is not None, reason=REASON or "")
def test_cli_run_on_cuda_reports_device_memory():
    res = CliRunner().invoke(cli, ["run", config_path("gpt_small"), "--device", "cuda", "--json", "--steps", "2"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["device"] == "cuda"
    assert doc["peak_bytes"]["predicted"] == doc["peak_bytes"]["measured"] and doc["peak_bytes"]["allocator"] > 0


def _numpy_standing_in_for_cupy():
    """A module with numpy's arrays and cupy's extra names (pool, hooks, streams, asnumpy)."""
    import types
    fake = types.ModuleType("cupy")
    fake.__dict__.update({k: getattr(np, k) for k in dir(np) if not k.startswith("__")})

    class Pool:
        def used_bytes(self):
            return 1024

    class MemoryHook:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    stream = types.SimpleNamespace(synchronize=lambda: None)
    fake.cuda = types.SimpleNamespace(
        MemoryHook=MemoryHook, get_current_stream=lambda: stream,
        Device=lambda: types.SimpleNamespace(mem_info=(2**30, 2**34)))
    fake.get_default_memory_pool = lambda: Pool()
    fake.asnumpy = np.asarray
    fake.ElementwiseKernel = _InterpretedKernel
    fake.ReductionKernel = _InterpretedReduction
    return fake


def _python(body):
    """The C of ckpt's kernel bodies as numpy expressions: casts and declarations dropped, the
    ternary as `where`, the element index as `i`."""
    import re
    body = body.replace("(T)", "").replace("(unsigned long long)", "").replace("unsigned long long ", "")
    body = re.sub(r"\bT (\w+ =)", r"\1", body)
    body = re.sub(r"0x([0-9A-Fa-f]+)ull", lambda m: str(int(m.group(1), 16)), body)
    body = re.sub(r"\(([^?()]+)\?([^:()]+):([^()]+)\)", r"where(\1, \2, \3)", body)
    return [st.strip() for st in body.split(";") if st.strip()]


def _names(params):
    return [p.split()[-1] for p in params.split(",")]


class _InterpretedKernel:
    """cupy.ElementwiseKernel run by numpy: arguments broadcast, `i` the C-order element index,
    T the dtype of the first T argument. Lets the CPU suite run each kernel body's formula."""

    def __init__(self, params, out, body, name):
        self.params, self.out, self.body = params, _names(out)[0], _python(body)
        self.out_type = out.split()[0]
        self.ttype = [p.split()[-1] for p in params.split(",") if p.split()[0] == "T"]

    def __call__(self, *args):
        from scipy.special import erf
        env = dict(zip(_names(self.params), args), tanh=np.tanh, exp=np.exp, where=np.where, erf=erf)
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        shape = np.broadcast_shapes(*[a.shape for a in arrays])
        env["i"] = np.arange(int(np.prod(shape)), dtype=np.uint64).reshape(shape)
        dtype = env[self.ttype[0]].dtype if self.ttype else np.dtype(self.out_type)  # a mask: bool
        for st in self.body:
            name, expr = (t.strip() for t in st.split("=", 1))
            env[name] = eval(expr, {}, env)
        return np.broadcast_to(env[self.out], shape).astype(dtype)  # a copy of its own, C order, 0-d kept


class _InterpretedReduction:
    """cupy.ReductionKernel run by numpy, for sums (`a + b`) of a mapped expression."""

    def __init__(self, params, out, map_expr, reduce_expr, post, identity, name):
        assert reduce_expr == "a + b" and identity == "0"
        self.params, self.map = params, map_expr

    def __call__(self, *args, axis=None, keepdims=False):
        env = dict(zip(_names(self.params), args))
        return eval(self.map, {}, env).sum(axis=axis, keepdims=keepdims).astype(args[0].dtype)


def test_cupy_handle_plumbing_on_a_numpy_stand_in():
    """Runs the cupy handle's code paths (meter hook, sync, asnumpy, device memory) on the CPU, so
    that a GPU session starts from plumbing that has run."""
    from ckpt.backend import CupyBackend
    backend = CupyBackend(_numpy_standing_in_for_cupy())
    model = load_model(config_path("gpt_small"), SMALL["gpt_small"])
    p, sim = plan(model.joint, "sqrt-n", ix=model.index)
    r = run_plan(model, p.steps, backend, n_steps=1, leaves=device_leaves(model, backend), warmup=0)
    assert r.measured_managed == sim.peak_managed and r.allocator_peak == 1024
    assert backend.memory_bytes() == 2**34


@pytest.mark.gpu
@pytest.mark.skipif(REASON is not None, reason=REASON or "")
def test_cli_plan_with_costs_measured_on_cuda():
    res = CliRunner().invoke(cli, ["plan", config_path("gpt_small"), "--device", "cuda", "--json",
                                   "--memory-budget", "0.6x"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    rows = {r["name"]: r for r in doc["strategies"]}
    assert doc["costs"] == "seconds measured on cuda"
    assert 0 < rows["store-all"]["cost"] < rows["sqrt-n"]["cost"] < 10
    assert rows["budget"]["peak_bytes"] <= doc["budget_bytes"]


def check_models_against_the_array_rules(backend, dtype):
    """gpt_small and unet_small, sqrt-n, on `backend` against numpy's array rules: the same bytes
    step by step, gradients equal to rounding. Shared with test_vector_kernels."""
    from ckpt.backend import Backend
    for name in ("gpt_small", "unet_small"):
        model = load_model(config_path(name), SMALL[name], dtype=dtype)
        p, sim = plan(model.joint, "sqrt-n", ix=model.index)
        ref = run_plan(model, p.steps, Backend(), n_steps=0, warmup=0)
        r = run_plan(model, p.steps, backend, n_steps=0, leaves=device_leaves(model, backend), warmup=0)
        assert r.measured_managed == sim.peak_managed and r.timeline == ref.timeline
        tol = 1e-12 if dtype == "float64" else 1e-5
        assert r.loss == pytest.approx(ref.loss, rel=tol)
        for k, g in ref.grads.items():
            assert r.grads[k].dtype == g.dtype
            assert np.linalg.norm(r.grads[k] - g) <= tol * max(np.linalg.norm(g), 1e-12), (name, k)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fused_kernels_give_the_array_rules_on_a_numpy_interpreter(dtype):
    """The kernels' formulas and the Python around them (arguments, broadcasting, axes), checked on
    the CPU: every op of gpt_small and unet_small through the stand-in, whose kernels numpy
    interprets, against the array rules; the same bytes, gradients equal to rounding."""
    from ckpt.backend import CupyBackend
    fake = CupyBackend(_numpy_standing_in_for_cupy())
    check_models_against_the_array_rules(fake, dtype)
    from ckpt.ops import _kernels
    used = {n for (xp, n), k in _kernels.items() if xp is fake.xp and k}
    assert used == {"dropout_mask", "dropout_masked", "gelu", "gelu_vjp", "exp_sub", "rowdot", "softmax_vjp",
                    "ln_sqdev", "ln_fwd", "ln_gxhat", "ln_dx", "add", "scale"}


def test_gelu_erf_kernels_on_a_numpy_interpreter():
    """The exact GELU's kernels (no config of the suite uses it): forward and VJP through the
    stand-in's interpreter against the array rules (scipy's erf)."""
    from ckpt.backend import CupyBackend
    from ckpt.ops import REGISTRY, Ctx
    fake = CupyBackend(_numpy_standing_in_for_cupy()).xp
    op = REGISTRY["gelu_erf"]
    x = np.random.default_rng(0).standard_normal((3, 50))
    g = np.random.default_rng(1).standard_normal((3, 50))
    for xp_ in (fake, np):
        y = op.forward(xp_, [x], {})
        dx = op.vjp(xp_, 0, g, Ctx([x], y, [x.shape], y.shape, {}))
        if xp_ is fake:
            ky, kdx = y, dx
    np.testing.assert_allclose(ky, y, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(kdx, dx, rtol=1e-13, atol=1e-15)
    from ckpt.ops import _kernels
    assert {n for (m, n), k in _kernels.items() if m is fake and k} >= {"gelu_erf", "gelu_erf_vjp"}
