"""The same executor and schedules on cupy (`--device cuda`). Marked `gpu`: skipped with a reason
where cupy or a GPU is missing; `scripts/gpu_check.sh` runs them on a machine with one."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from ckpt.backend import get_backend
from ckpt.cli import cli
from ckpt.errors import ConfigError
from ckpt.plan import plan
from ckpt.session import device_leaves, load_model, run_plan
from conftest import SMALL, config_path


def _gpu_reason():
    try:
        get_backend("cuda")
    except ConfigError as e:
        return str(e)
    return None


REASON = _gpu_reason()


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
    for strategy, budget in (("store-all", None), ("sqrt-n", None),
                             ("budget", sa_sim.resident + sa_sim.peak_managed * 3 // 4)):
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
def test_fused_dropout_kernel_gives_numpys_bits(dtype):
    from ckpt.ops.nn import _dropout
    xp = get_backend("cuda").xp
    x = np.random.default_rng(0).standard_normal((3, 257, 129)).astype(dtype)
    for a in ({"p": 0.3, "_seed": 12345}, {"p": 0.0, "_seed": 0}, {"p": 0.9, "_seed": 2**40 + 7}):
        want = _dropout(np, x, a)
        got = _dropout(xp, xp.asarray(x), a)
        assert got.dtype == want.dtype and np.array_equal(xp.asnumpy(got), want), a
    strided = xp.asarray(x).transpose(2, 0, 1)  # the mask follows the logical (C-order) index
    assert np.array_equal(xp.asnumpy(_dropout(xp, strided, a)), _dropout(np, x.transpose(2, 0, 1), a))


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
    return fake


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
