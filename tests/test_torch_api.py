"""The Python API (ckpt.load / plan / simulate / run): thin wrappers over what the CLI calls.
Needs no torch; named with the bridge's tests because it ships with them."""

import subprocess
import sys

import pytest

import ckpt
from conftest import config_path


def test_load_plan_simulate_run_agree():
    m = ckpt.load(config_path("mlp_deep"), {"B": 8, "D": 16, "L": 4})
    p = ckpt.plan(m, budget="0.95x")
    sim = ckpt.simulate(m, p)
    r = ckpt.run(m, p)
    assert p.strategy == "budget" and sim.recomputes > 0
    assert r.measured_managed == sim.peak_managed and r.resident == sim.resident
    assert ckpt.plan(m).strategy == "store-all"
    from ckpt.simulate import simulate  # the modules keep their contents
    assert simulate(m.joint, p.steps).peak == sim.peak


def test_import_ckpt_stays_light():
    out = subprocess.run([sys.executable, "-c", "import ckpt, sys; print('numpy' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _weights_config(tmp_path, weights):
    (tmp_path / "m.yaml").write_text(
        "name: m\ndtype: float64\nweights: " + weights + "\ninputs:\n  x: {shape: [2, 3]}\n"
        "params:\n  layer.0.weight: {shape: [3, 3]}\nnodes:\n"
        "  - {name: h, op: linear, inputs: [x, layer.0.weight]}\n  - {name: loss, op: sum, inputs: [h]}\noutput: loss\n")
    return str(tmp_path / "m.yaml")


def test_weights_key_loads_npz_by_name(tmp_path):
    import numpy as np
    w = np.arange(9.0).reshape(3, 3)
    np.savez(tmp_path / "m.npz", **{"layer.0.weight": w, "x": np.ones((2, 3))})
    m = ckpt.load(_weights_config(tmp_path, "m.npz"))
    r = ckpt.run(m, ckpt.plan(m))
    assert r.loss == float(np.ones((2, 3)).dot(w).sum())


@pytest.mark.parametrize("weights,arrays,needle", [
    ("nope.npz", None, "cannot read weights"),
    ("m.txt", None, "must name an .npz"),
    ("m.npz", {"layer.0.weight": (3, 4)}, "has shape (3, 4)"),
])
def test_bad_weights_are_exit_2(tmp_path, weights, arrays, needle):
    import numpy as np
    from click.testing import CliRunner

    from ckpt.cli import cli
    if arrays:
        np.savez(tmp_path / "m.npz", **{k: np.zeros(s) for k, s in arrays.items()})
    res = CliRunner().invoke(cli, ["run", _weights_config(tmp_path, weights)])
    assert res.exit_code == 2 and needle in res.output and res.output.count("\n") == 1
