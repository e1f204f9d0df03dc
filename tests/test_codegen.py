"""`ckpt compile`: the generated step runs the interpreter's arithmetic (gradients bitwise equal on
every example config and strategy), holds exactly the simulator's managed bytes between its
statements (tracemalloc), and imports nothing from ckpt."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from ckpt.backend import get_backend
from ckpt.backends.codegen import generate, load_module, managed_timeline, split_leaves
from ckpt.cli import cli
from ckpt.execute import Executor
from ckpt.plan import plan, smallest_peak
from ckpt.session import device_leaves, load_model

from conftest import ROOT, config_path

EXAMPLES = os.path.join(ROOT, "examples")
PY_MODELS = {"seed.py:f": {}, "seed.py:seed_chain": {"N": 6}, "seed.py:leaky": {}, "mlp.py": {"B": 4, "D": 8, "L": 3}}


def _cases(model):
    sa, sa_sim = plan(model.joint, "store-all", ix=model.index)
    low, _ = smallest_peak(model.joint, model.index, time_limit=5)
    out = [("store-all", None), ("sqrt-n", None)]
    out += [("budget", int(low + (sa_sim.peak_ws - low) * 0.3))]
    return out


def _check_model(model):
    backend = get_backend("cpu")
    leaves = device_leaves(model, backend)
    params, inputs = split_leaves(model.graph, leaves)
    for strategy, budget in _cases(model):
        p, sim = plan(model.joint, strategy, budget, time_limit=5, ix=model.index)
        ref = Executor(model.graph, model.joint, p.steps, backend).step(leaves)
        step = load_module(generate(model, p.steps, strategy, sim=sim)).step
        loss, grads, timeline = managed_timeline(step, params, inputs)
        assert loss == ref.loss, strategy
        assert sorted(grads) == sorted(ref.grads)
        for k in ref.grads:
            assert grads[k].dtype == ref.grads[k].dtype
            assert grads[k].tobytes() == ref.grads[k].tobytes(), (strategy, budget, k)
        assert max(timeline) == sim.peak_managed, (strategy, budget)
        assert timeline[-1] == 0  # everything managed is freed by the return


def test_generated_step_is_bitwise_equal_and_exact_on_every_config(small_config):
    name, path, dims = small_config
    _check_model(load_model(path, dims))


@pytest.mark.parametrize("spec", sorted(PY_MODELS))
def test_generated_step_on_python_models(spec):
    _check_model(load_model(os.path.join(EXAMPLES, spec), PY_MODELS[spec]))


def test_compile_writes_a_standalone_module(tmp_path):
    out = tmp_path / "step.py"
    r = CliRunner().invoke(cli, ["compile", config_path("mlp_deep"), "--set", "B=4", "--set", "D=8", "--set", "L=5",
                                 "--strategy", "sqrt-n", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["strategy"] == "sqrt-n" and doc["recomputes"] > 0
    text = out.read_text()
    assert "del " in text and "# recompute" in text
    # run it where ckpt cannot be imported: it must need numpy only
    script = ("import sys, numpy as np, step\n"
              "rng = np.random.default_rng(0)\n"
              "p = {f'body.{i}.{n}': rng.standard_normal(s).astype('float32') for i in range(5)"
              " for n, s in (('W', (8, 8)), ('b', (8,)))}\n"
              "x = {k: rng.standard_normal((4, 8)).astype('float32') for k in ('x', 'y')}\n"
              "loss, g = step.step(p, x)\n"
              "assert not [m for m in sys.modules if m.startswith('ckpt')]\n"
              "print(len(g), np.isfinite(loss))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["10", "True"]


def test_compile_keeps_the_mode_of_an_existing_file(tmp_path):
    out = tmp_path / "step.py"
    out.write_text("old")
    os.chmod(out, 0o640)
    r = CliRunner().invoke(cli, ["compile", config_path("seed_example"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert os.stat(out).st_mode & 0o777 == 0o640
    assert "def step(params, inputs, xp=numpy)" in out.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["step.py"]


def test_compile_bad_input(tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["compile", config_path("mlp_deep"), "--strategy", "budget", "--memory-budget", "1KiB",
                            "-o", str(tmp_path / "s.py")])
    assert r.exit_code == 3 and "smallest" in r.output
    r = runner.invoke(cli, ["compile", str(tmp_path / "missing.yaml"), "-o", str(tmp_path / "s.py")])
    assert r.exit_code == 2 and "no such file" in r.output
    r = runner.invoke(cli, ["compile", config_path("seed_example"), "-o", str(tmp_path / "no" / "dir" / "s.py")])
    assert r.exit_code == 2 and "cannot write" in r.output
    assert not (tmp_path / "s.py").exists()


@pytest.mark.skipif("cupy" not in sys.modules and not __import__("importlib").util.find_spec("cupy"),
                    reason="cupy is not installed (the generated step takes xp=cupy on a GPU)")
def test_generated_step_on_cupy():
    import cupy
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no GPU")
    except cupy.cuda.runtime.CUDARuntimeError:
        pytest.skip("no GPU")
    from ckpt.backend import CupyBackend
    model = load_model(config_path("gpt_small"), {"L": 2})
    backend = CupyBackend(cupy)
    leaves = device_leaves(model, backend)
    p, sim = plan(model.joint, "sqrt-n", ix=model.index)
    ref = Executor(model.graph, model.joint, p.steps, backend).step(leaves)
    params, inputs = split_leaves(model.graph, leaves)
    loss, grads = load_module(generate(model, p.steps, "sqrt-n", sim=sim)).step(params, inputs, xp=cupy)
    assert loss == ref.loss
    for k in ref.grads:
        assert np.array_equal(cupy.asnumpy(grads[k]), cupy.asnumpy(ref.grads[k])), k


@pytest.mark.parametrize("path, dims", [
    (os.path.join(EXAMPLES, "seed.py:seed_chain"), {"N": 7}),
    (config_path("mlp_deep"), {"B": 3, "D": 5, "L": 4}),
    (os.path.join(EXAMPLES, "mlp.py"), {"B": 3, "D": 5, "L": 4}),
    (config_path("gpt_small"), {"B": 2, "T": 8, "D": 16, "H": 2, "HD": 8, "V": 12, "L": 2}),
])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_hand_written_steps_agree_with_the_interpreter(path, dims, dtype):
    from ckpt.backends.handwritten import for_model
    model = load_model(path, dims, dtype=dtype)
    backend = get_backend("cpu")
    leaves = device_leaves(model, backend)
    p, _ = plan(model.joint, "store-all", ix=model.index)
    ref = Executor(model.graph, model.joint, p.steps, backend).step(leaves)
    loss, grads = for_model(model.graph)(leaves, model.graph)
    tol = 1e-10 if dtype == "float64" else 2e-4
    assert loss == pytest.approx(ref.loss, rel=tol)
    assert sorted(grads) == sorted(ref.grads)
    for k in grads:
        assert grads[k].dtype == ref.grads[k].dtype, k  # no silent float64 in a float32 model
        np.testing.assert_allclose(grads[k], ref.grads[k], rtol=tol, atol=tol * 1e-3)


def test_impl_command_reports_four_implementations():
    r = CliRunner().invoke(cli, ["impl", config_path("mlp_deep"), "--set", "B=2", "--set", "D=4", "--set", "L=3",
                                 "--rounds", "1", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    rows = {row["name"]: row for row in doc["implementations"]}
    assert sorted(rows) == ["generated", "hand-written", "interpreter", "oo-tape"]
    assert rows["generated"]["bitwise"] and rows["interpreter"]["vs_interpreter"] == 1.0
    assert rows["oo-tape"]["max_rel_diff"] < 1e-5 and rows["hand-written"]["max_rel_diff"] < 1e-5
    assert all(row["time_s"] > 0 for row in rows.values())
    r = CliRunner().invoke(cli, ["impl", config_path("seed_example"), "--rounds", "1"])
    assert r.exit_code == 0 and "no hand-written step" in r.output


def test_node_names_that_are_python_keywords_or_builtins(tmp_path):
    cfg = tmp_path / "names.yaml"
    cfg.write_text("name: names\ndtype: float64\ninputs:\n  x: {shape: [3], grad: true}\nnodes:\n"
                   "  - {name: float, op: sin, inputs: [x]}\n  - {name: class, op: exp, inputs: [float]}\n"
                   "  - {name: 1st, op: mul, inputs: [class, float]}\n  - {name: loss, op: sum, inputs: [1st]}\n"
                   "output: loss\n")
    _check_model(load_model(str(cfg)))


def test_compile_check_runs_the_written_step(tmp_path):
    r = CliRunner().invoke(cli, ["compile", config_path("gpt_small"), "--set", "L=1", "--set", "T=8", "--strategy",
                                 "sqrt-n", "--check", "-o", str(tmp_path / "s.py"), "--json"])
    assert r.exit_code == 0, r.output
    c = json.loads(r.output)["check"]
    assert c["passed"] and c["bitwise"] and c["measured_managed_bytes"] == c["predicted_managed_bytes"]
