"""The operator-overloading front end: a Python function traced into the graph the YAML loader
builds; the seed example's values and traces; loops unroll; `if` on a traced value stops clearly;
export-config round-trips; the eager tape agrees with the executor."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

import ckpt
from ckpt.backend import get_backend
from ckpt.cli import cli
from ckpt.execute import Executor
from ckpt.frontends.python import eager_step, value_and_grad
from ckpt.model import leaf_values
from ckpt.ops import REGISTRY
from ckpt.plan import plan
from ckpt.session import check_gradients, device_leaves, load_model, run_plan

from conftest import ROOT, config_path

SEED = os.path.join(ROOT, "examples", "seed.py")
MLP = os.path.join(ROOT, "examples", "mlp.py")


def _write(tmp_path, body, name="m.py"):
    p = tmp_path / name
    p.write_text("import ckpt\nimport numpy as np\n" + textwrap.dedent(body))
    return str(p)


def _step(model):
    p, sim = plan(model.joint, "store-all", ix=model.index)
    return run_plan(model, p.steps, get_backend("cpu"), n_steps=1, warmup=0), sim


def test_seed_example_values():
    r, sim = _step(load_model(SEED + ":f"))
    assert round(r.loss, 3) == 11.652
    assert r.grads["x1"] == pytest.approx(5.5)
    assert round(float(r.grads["x2"]), 3) == 1.716
    assert r.measured_managed == sim.peak_managed


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_seed_example_traces_match_the_yaml_config(mode):
    runner = CliRunner()
    yaml_out = runner.invoke(cli, ["trace", config_path("seed_example"), "--mode", mode])
    py_out = runner.invoke(cli, ["trace", SEED + ":f", "--mode", mode])
    assert yaml_out.exit_code == 0 and py_out.exit_code == 0, py_out.output
    assert py_out.output == yaml_out.output


def test_same_graph_as_the_yaml_config():
    a = load_model(SEED + ":f").graph
    b = load_model(config_path("seed_example")).graph
    assert a.graph["order"] == b.graph["order"]
    for v in b.nodes:
        for key in ("kind", "shape", "dtype", "bytes", "grad", "op", "inputs", "attrs", "flops", "needs"):
            assert a.nodes[v].get(key) == b.nodes[v].get(key), (v, key)


def test_every_command_accepts_a_python_model(tmp_path):
    runner = CliRunner()
    for args in (["run", MLP, "--set", "L=3", "--set", "B=4", "--set", "D=8", "--strategy", "sqrt-n", "--json"],
                 ["plan", MLP, "--set", "L=3", "--json"],
                 ["check", SEED + ":f"],
                 ["jacobian", SEED + ":f", "--json"]):
        r = runner.invoke(cli, args)
        assert r.exit_code == 0, (args, r.output)


def test_loops_unroll_and_params_per_layer():
    model = load_model(MLP, {"L": 5, "B": 2, "D": 3})
    g = model.graph
    assert [g.nodes[v]["op"] for v in g.graph["order"]] == ["linear", "relu"] * 5 + ["mse"]
    assert sorted(v for v, d in g.nodes(data=True) if d["kind"] == "param") == sorted(
        [f"W{i}" for i in range(5)] + [f"b{i}" for i in range(5)])
    assert g.nodes["W3"]["shape"] == (3, 3) and g.nodes["x"]["shape"] == (2, 3)


def test_operators_methods_and_constants_record_the_right_ops(tmp_path):
    path = _write(tmp_path, """
        @ckpt.traced(inputs={"a": {"shape": [2, 3], "grad": True}, "b": {"shape": [3, 2], "grad": True},
                             "s": {"shape": [], "value": 1.5, "grad": True}}, dtype="float64")
        def f(a, b, s):
            x = (a @ b).T.reshape(4) + 1.0       # matmul, transpose, reshape, add a constant
            y = 2.0 - x / s                       # reflected sub, div
            z = -y * 3 + s ** 2 + 2 ** s          # neg, scale, pow, rpow
            w = ckpt.tanh(z) * x                  # a registry function, mul
            c = ckpt.concat([w, x], axis=0)       # a list of inputs, as numpy takes it
            return c.mean() + (a.sum(axis=0) * 0.5).sum() + ckpt.exp(s) / s
    """)
    g = load_model(path).graph
    ops = [g.nodes[v]["op"] for v in g.graph["order"]]
    for op in ("matmul", "transpose", "reshape", "add", "sub", "div", "neg", "scale", "pow", "exp", "tanh", "mul",
               "mean", "sum", "concat"):
        assert op in ops, op
    consts = [v for v, d in g.nodes(data=True) if d["kind"] == "input" and v.startswith("c")]
    assert consts and all(not g.nodes[c]["grad"] for c in consts)
    res = check_gradients(path)
    assert res["passed"], res["worst_rel_error"]


@pytest.mark.parametrize("name", sorted(n for n, op in REGISTRY.items() if op.arity == (1, 1) and not op.internal
                                         and op.dtype is None and not op.int_inputs))  # floats in, floats out
def test_every_unary_op_is_a_ckpt_function(name, tmp_path):
    op = REGISTRY[name]
    shape = list(op.example["shapes"][0])
    attrs = {k: v for k, v in op.example.get("attrs", {}).items() if not k.startswith("_")}
    path = _write(tmp_path, f"""
        @ckpt.traced(inputs={{"x": {{"shape": {shape}, "init": "uniform", "grad": True}}}}, dtype="float64")
        def f(x):
            return ckpt.{name}(ckpt.exp(x), **{attrs!r}).sum()
    """)
    g = load_model(path).graph
    written = [v for v in g.graph["order"] if not REGISTRY[g.nodes[v]["op"]].internal]  # not the residuals
    assert [g.nodes[v]["op"] for v in written] == ["exp", name, "sum"]
    recorded = {k: v for k, v in g.nodes[written[1]]["attrs"].items() if not k.startswith("_")}
    assert recorded == {**{k: v for k, v in op.attrs.items() if not k.startswith("_")}, **attrs}
    # on plain arrays the same function computes with the op's own rule
    x = np.full(shape, 0.5)
    full = {k: v for k, v in op.attrs.items()}
    full.update(attrs)
    assert np.array_equal(getattr(ckpt, name)(x, **attrs), op.forward(np, [x], full))


def test_if_on_a_traced_value_says_why_and_points_to_where(tmp_path):
    path = _write(tmp_path, """
        @ckpt.traced(inputs={"x": {"shape": [3], "grad": True}})
        def f(x):
            if x.sum() > 0:
                return x.sum()
            return (x * 2).sum()
    """)
    r = CliRunner().invoke(cli, ["run", path])
    assert r.exit_code == 2
    assert r.output.count("\n") == 1 and "Traceback" not in r.output
    assert f"{path}:6:" in r.output  # the line of the `if`
    assert "ckpt.where" in r.output and "branch taken while tracing" in r.output


def test_where_covers_the_data_dependent_case():
    r, _ = _step(load_model(SEED + ":leaky"))
    assert r.loss == pytest.approx(0.1 * -2.5 + 2.5)
    np.testing.assert_allclose(r.grads["x"], [0.1, 0.1, 1.0, 1.0])


def test_export_config_round_trips(tmp_path):
    out = tmp_path / "mlp.yaml"
    runner = CliRunner()
    r = runner.invoke(cli, ["export-config", MLP, "--set", "L=3", "--set", "B=4", "--set", "D=5", "-o", str(out)])
    assert r.exit_code == 0, r.output
    a = load_model(MLP, {"L": 3, "B": 4, "D": 5})
    b = load_model(str(out))
    assert a.graph.graph["order"] == b.graph.graph["order"]
    for v in a.graph.nodes:
        for key in ("kind", "shape", "dtype", "op", "inputs", "attrs", "grad"):
            assert a.graph.nodes[v].get(key) == b.graph.nodes[v].get(key), (v, key)
    la, lb = leaf_values(a.graph), leaf_values(b.graph)
    assert all(np.array_equal(la[k], lb[k]) for k in la)
    assert _step(a)[0].loss == _step(b)[0].loss
    r = runner.invoke(cli, ["export-config", config_path("seed_example"), "-o", str(tmp_path / "x.yaml")])
    assert r.exit_code == 2 and "MODEL.py" in r.output


@pytest.mark.parametrize("body, message", [
    ("def f(x):\n    return x.sum()\n", "declare its inputs with @ckpt.traced"),
    ("@ckpt.traced(inputs={'x': {'shape': [3]}})\ndef f(x):\n    return x * 2\n", "must be a scalar"),
    ("@ckpt.traced(inputs={'x': {'shape': []}})\ndef f(x):\n    return x\n", "unchanged"),
    ("@ckpt.traced(inputs={'x': {'shape': [3]}})\ndef f(x):\n    return 1.0\n", "must return one traced value"),
    ("@ckpt.traced(inputs={'x': {'shape': [3]}})\ndef f(x):\n    return (x @ x).sum()\n", "shape mismatch"),
    ("@ckpt.traced(inputs={'x': {'shape': [3]}})\ndef f(x):\n    return undefined_name\n", "NameError"),
    ("@ckpt.traced(inputs={'x': {'shape': [3]}})\ndef f(y):\n    return y.sum()\n", "not a declared input"),
    ("@ckpt.traced(inputs={'x': {'shape': [3], 'init': 'nope'}})\ndef f(x):\n    return x.sum()\n", "unknown init"),
    ("@ckpt.traced(inputs={'x': {'shape': [3]}})\ndef f(x):\n    return float(x)\n", "has no number"),
    ("@ckpt.traced(inputs={'x': {'shape': [3]}})\ndef f(x):\n    return ckpt.sum(x, axs=0)\n", "unknown attr"),
    ("def f(:\n", "SyntaxError"),
    ("@ckpt.traced(inputs={'x': {'shape': []}})\ndef f(x):\n    return x * 2 if x == 0 else x * 3\n",
     "== and != on traced values"),
    ("@ckpt.traced\ndef f(x):\n    return x.sum()\n", "@ckpt.traced needs the inputs"),
    ("import sys\nsys.exit(3)\n", "exits while it is loaded"),
    ("@ckpt.traced(inputs={'x': {'shape': [3]}})\ndef f(x):\n    return ckpt.param('W', (3,)).sum() + x\n",
     "must be a scalar"),
])
def test_bad_python_models_give_one_line_and_exit_2(tmp_path, body, message):
    path = _write(tmp_path, body)
    r = CliRunner().invoke(cli, ["plan", path + ":f"])
    assert r.exit_code == 2, r.output
    assert message in r.output and r.output.count("\n") == 1, r.output


def test_model_file_selection(tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["plan", SEED])  # three models in the file: name one
    assert r.exit_code == 2 and "f, leaky, seed_chain" in r.output
    r = runner.invoke(cli, ["plan", SEED + ":nope"])
    assert r.exit_code == 2 and "no function 'nope'" in r.output
    r = runner.invoke(cli, ["plan", str(tmp_path / "missing.py")])
    assert r.exit_code == 2 and "no such file" in r.output
    r = runner.invoke(cli, ["plan", MLP, "--set", "Q=3"])
    assert r.exit_code == 2 and "no such dim" in r.output


def test_eager_tape_agrees_with_the_executor():
    backend = get_backend("cpu")
    for path, dims in ((SEED + ":seed_chain", {"N": 20}), (config_path("gpt_small"), {"L": 1, "T": 8})):
        model = load_model(path, dims)
        leaves = device_leaves(model, backend)
        p, _ = plan(model.joint, "store-all", ix=model.index)
        ref = Executor(model.graph, model.joint, p.steps, backend).step(leaves)
        loss, grads = eager_step(model.graph, leaves)
        assert loss == pytest.approx(ref.loss, rel=1e-6)
        assert sorted(grads) == sorted(ref.grads)
        for k in grads:
            np.testing.assert_allclose(grads[k], ref.grads[k], rtol=2e-4, atol=1e-6)


def test_value_and_grad_runs_the_python_function_eagerly():
    model = load_model(MLP, {"L": 2, "B": 3, "D": 4})
    leaves = leaf_values(model.graph)
    fn = ckpt.frontends.python.load_function(MLP)[1]
    loss, grads = value_and_grad(fn, {k: (a, model.graph.nodes[k]["grad"]) for k, a in leaves.items()},
                                 dims={"D": 4, "L": 2})
    r, _ = _step(model)
    assert loss == pytest.approx(r.loss, rel=1e-6)
    for k in r.grads:
        np.testing.assert_allclose(grads[k], r.grads[k], rtol=1e-5, atol=1e-7)


def test_import_ckpt_stays_light():
    code = "import sys, ckpt; assert 'numpy' not in sys.modules; ckpt.sin; assert 'numpy' in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_a_model_that_prints_keeps_stdout_for_json(tmp_path):
    path = _write(tmp_path, """
        print("loading")

        @ckpt.traced(inputs={"x": {"shape": [2], "grad": True}}, dtype="float64")
        def f(x):
            print("tracing")
            return (x * x).sum()
    """)
    try:
        runner = CliRunner(mix_stderr=False)  # click 8.1; later versions keep stderr apart by default
    except TypeError:
        runner = CliRunner()
    r = runner.invoke(cli, ["run", path, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["loss"] >= 0
    assert "loading" in r.stderr and "tracing" in r.stderr
