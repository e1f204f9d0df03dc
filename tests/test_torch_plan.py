"""The plan shown and the plan applied in PyTorch: `plan --show-saved`, `plan --emit torch`,
`ckpt.torch.apply` and `ckpt torch-check`. For each of three models, at 0.5x and at the least
feasible budget, the applied plan trains with gradients equal (bitwise) to the unplanned model's
and the bytes held for backward, counted by unique storage, equal the prediction exactly."""

import json
import os

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch", reason="torch is not installed (optional: pip install 'ckpt-recompute[torch]')")

from ckpt.cli import cli  # noqa: E402

import torch_models  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(HERE, "torch_models.py")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    d = tmp_path_factory.mktemp("imported")
    out = {}
    for name in ("mlp", "gpt", "cnn"):
        path = d / f"{name}.yaml"
        res = invoke("import", f"{MODELS}:{name}", "-o", path,
                     *[a for i in torch_models.INPUTS[name] for a in ("--input", i)])
        assert res.exit_code == 0, res.output
        out[name] = path
    return out


def emit(config, budget, out, compare=False):
    res = invoke("plan", config, "--emit", "torch", "-o", out, "--memory-budget", budget, "--json", "--time-limit", 0.5,
                 "--compare" if compare else "--no-compare")
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


@pytest.mark.parametrize("name", ["mlp", "gpt", "cnn"])
def test_applied_plan_matches_prediction(imported, tmp_path, name):
    half = emit(imported[name], "0.5x", tmp_path / "half.json", compare=name != "cnn")  # cnn: an exact MILP
    assert half["ckpt_plan"]["feasible"] in (True, False) or name == "cnn"
    least = half["predicted"]["least_peak_bytes"]
    assert half["predicted"]["held_end_forward_bytes"] <= 0.5 * half["predicted"]["unplanned_held_bytes"]
    tight = emit(imported[name], str(least), tmp_path / "least.json")
    assert tight["predicted"]["peak_bytes"] <= least
    assert any(r["checkpoint"] for r in tight["regions"])
    for plan in ("half.json", "least.json"):
        res = invoke("torch-check", f"{MODELS}:{name}", "--plan", tmp_path / plan, "--steps", 1, "--json")
        assert res.exit_code == 0, res.output
        r = json.loads(res.output)
        assert r["gradients_equal"]
        for which in ("unplanned", "planned"):
            assert r["held_end_forward"][which]["predicted"] == r["held_end_forward"][which]["measured"]
    # one byte under the least is no plan: exit 3, naming the least
    res = invoke("plan", imported[name], "--emit", "torch", "-o", tmp_path / "x.json", "--memory-budget", least - 1,
                 "--no-compare")
    assert res.exit_code == 3 and "the least is" in res.output


def test_apply_in_a_training_loop(imported, tmp_path):
    """The user's loop is unchanged: apply, then step an optimizer as before."""
    import ckpt.torch
    emit(imported["mlp"], "0.3x", tmp_path / "p.json")
    ref, model = torch_models.mlp(), ckpt.torch.apply(torch_models.mlp(), str(tmp_path / "p.json"))
    x, y = torch.randn(8, 32, dtype=torch.float64), torch.randn(8, 32, dtype=torch.float64)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (ref, model)]
    for _ in range(3):
        for m, opt in zip((ref, model), opts):
            opt.zero_grad()
            m(x, y).backward()
            opt.step()
    for (k, a), (_, b) in zip(ref.named_parameters(), model.named_parameters()):
        assert torch.equal(a, b), k


def test_plan_for_another_model_is_exit_2(imported, tmp_path):
    emit(imported["mlp"], "0.5x", tmp_path / "p.json")
    res = invoke("torch-check", f"{MODELS}:cnn", "--plan", tmp_path / "p.json")
    assert res.exit_code == 2 and "another model" in res.output and res.output.count("\n") == 1
    res = invoke("torch-check", f"{MODELS}:mlp", "--plan", tmp_path / "p.json", "--input", "x=9x32")
    assert res.exit_code == 2 and "differs from the plan" in res.output
    (tmp_path / "bad.json").write_text("{}")
    res = invoke("torch-check", f"{MODELS}:mlp", "--plan", tmp_path / "bad.json")
    assert res.exit_code == 2 and "not a ckpt PyTorch plan" in res.output


def test_show_saved_lists_kept_and_recomputed_per_block(imported):
    res = invoke("plan", imported["mlp"], "--strategy", "sqrt-n", "--show-saved", "--json")
    assert res.exit_code == 0, res.output
    row = json.loads(res.output)["strategies"][0]
    assert row["steps"] and set(row["saved"]) >= {f"blocks.{i}" for i in range(16)}
    kept = sum(len(v["kept"]) for v in row["saved"].values())
    recomputed = sum(len(v["recomputed"]) for v in row["saved"].values())
    assert kept and 0 < recomputed <= row["recomputed"]  # distinct values vs recompute steps
    res = invoke("plan", imported["mlp"], "--strategy", "store-all", "--show-saved")
    assert "blocks.3: kept" in res.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_device_is_exit_2(imported, tmp_path):
    emit(imported["mlp"], "0.5x", tmp_path / "p.json")
    res = invoke("torch-check", f"{MODELS}:mlp", "--plan", tmp_path / "p.json", "--device", "cuda")
    assert res.exit_code == 2 and "no CUDA device" in res.output
