"""The Python API (ckpt.load / plan / simulate / run): thin wrappers over what the CLI calls.
Needs no torch; named with the bridge's tests because it ships with them."""

import subprocess
import sys

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
