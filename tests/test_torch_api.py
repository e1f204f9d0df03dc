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


# ---- the PyTorch region planner against brute force (a profile written by hand: no torch) -------
def _chain_profile():
    """Four blocks of an nn.Sequential `b`, each a matrix product and a relu (mm saves its input,
    relu its output), the second block's product inside a submodule `b.1.fc`; what `ckpt import`
    records. Storage 2i is block i's product, 2i+1 its relu (the next block's input)."""
    flops, ops, holders, inputs = [10, 30, 20, 40], [], {}, {}
    last = {}
    for i, f in enumerate(flops):
        region = "b.1.fc" if i == 1 else f"b.{i}"
        if i:
            holders.setdefault(2 * i - 1, []).append(region)  # mm packs its input before it runs
            last[region] = len(ops)
            inputs[f"b.{i}"] = [2 * i - 1]
        else:
            inputs["b.0"] = []
        ops.append({"region": region, "op": "aten.mm.default", "k": 0, "made": [2 * i], "flops": f, "bytes": 8})
        ops.append({"region": f"b.{i}", "op": "aten.relu.default", "k": 0, "made": [2 * i + 1], "flops": 0, "bytes": 8})
        holders.setdefault(2 * i + 1, []).append(f"b.{i}")  # relu packs its output after it runs
        last[f"b.{i}"] = len(ops)
    holders.setdefault(7, []).append("")  # the loss reads the last block's output
    inputs["b.1.fc"] = [1]
    return {"storages": [8] * 8, "alive": [1, 3, 5, 7], "holders": {str(k): v for k, v in holders.items()},
            "ops": ops, "inputs": inputs, "nested": ["b.1.fc"], "last_pack": last, "resident_bytes": 0}


def _brute_force(rp):
    """Every choice: non-overlapping wrapped units, each keeping any subset of its ops."""
    import itertools
    best = {}

    def walk(i, used, choice):
        if i == len(rp.units):
            held, cost = rp.held_bytes(choice), rp.recompute(choice)
            if held not in best or cost < best[held]:
                best[held] = cost
            return
        walk(i + 1, used, choice)
        u = rp.units[i]
        if u.scope & used:
            return
        for n in range(len(u.keepable) + 1):
            for kept in itertools.combinations(u.keepable, n):
                walk(i + 1, used | u.scope, {**choice, u: list(kept)})
    walk(0, frozenset(), {})
    return best


def test_region_planner_is_exact_on_a_small_chain():
    from ckpt.errors import BudgetError
    from ckpt.plan.torch_regions import RegionProfile, plan_regions
    rp = RegionProfile(_chain_profile(), ["b.0", "b.1", "b.2", "b.3"], ["b"])
    assert {u.name for u in rp.units} >= {"b.1.fc", "b.0..b.3", "b.1..b.2"}
    fc = rp.unit(("b.1.fc",))
    assert fc.rerun == []  # early stop: its product packs its input before it runs
    best = _brute_force(rp)
    for limit in sorted(best):
        want = min(c for h, c in best.items() if h <= limit)
        choice, least = plan_regions(rp, limit)
        assert rp.held_bytes(choice) <= limit and rp.recompute(choice) == want, limit
        assert least == min(best)
    with pytest.raises(BudgetError):
        plan_regions(rp, min(best) - 1)
    assert plan_regions(rp, None)[0] == {}
