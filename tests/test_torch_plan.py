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


def test_an_edited_plan_that_would_compute_something_else_is_refused(imported, tmp_path):
    """A unit of several members runs them in the listed order as one function: listed in another
    order (or with a gap) it computes another function, and gave gradients that differ (exit 1)
    instead of a refusal. A module in two units, or inside another unit, is refused too."""
    emit(imported["mlp"], "0.6x", tmp_path / "p.json")
    doc = json.loads((tmp_path / "p.json").read_text())
    seg = next(i for i, r in enumerate(doc["regions"]) if r["checkpoint"] and len(r.get("members", [])) > 2)
    free = next(i for i, r in enumerate(doc["regions"]) if not r["checkpoint"])
    members = doc["regions"][seg]["members"]

    def edited(change):
        d = json.loads(json.dumps(doc))
        change(d["regions"])
        (tmp_path / "e.json").write_text(json.dumps(d))
        return invoke("torch-check", f"{MODELS}:mlp", "--plan", tmp_path / "e.json", "--steps", 1)

    def also(name):
        return lambda rs: rs[free].update(checkpoint=True, members=[name])

    for change, needle in [(lambda rs: rs[seg].update(members=members[::-1]), "not consecutive items"),
                           (lambda rs: rs[seg].update(members=[members[0], members[2]]), "not consecutive items"),
                           (also(members[1]), "checkpointed already"), (also(""), "checkpointed already")]:
        res = edited(change)
        assert res.exit_code == 2 and needle in res.output and res.output.count("\n") == 1, res.output
    res = edited(lambda rs: None)
    assert res.exit_code == 0, res.output


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


def _plan_for(config, choose, tmp_path):
    """A plan doc for a hand-picked choice {members: number of ops kept} (the planner's own doc
    writer), and the RegionProfile it was made from."""
    from ckpt.backends.torch_apply import read_meta
    from ckpt.backends.torch_plan import _regions_doc, emit_torch_plan
    from ckpt.plan.torch_regions import RegionProfile
    from ckpt.session import load_model
    meta = read_meta(str(config))
    prof = meta["profile"]
    rp = RegionProfile(prof, [r for r in meta["regions"] if r in prof["inputs"]], meta["sequential"])
    choice = {}
    for members, n in choose.items():
        u = rp.unit(members)
        choice[u] = u.keepable[:n]
    doc = emit_torch_plan(load_model(str(config)), None, tmp_path / "none.json", compare=False)
    doc["regions"] = _regions_doc(rp, choice)
    return doc, rp, choice


def _step_flops(model, args):
    from torch.utils.flop_counter import FlopCounterMode

    from ckpt.backends.torch_apply import extra_flop_formulas
    with FlopCounterMode(display=False, custom_mapping=extra_flop_formulas()) as fc:
        model(*args).backward()
    model.zero_grad(set_to_none=True)
    return fc.get_total_flops()


@pytest.mark.parametrize("name,choose", [
    ("gpt", {("layers.0.attn",): 0, ("layers.1",): 2, ("layers.2.ln2",): 0}),   # submodules at any depth
    ("mlp", {("blocks.2", "blocks.3", "blocks.4"): 1, ("blocks.7.fc",): 0, ("blocks.9",): 0}),  # runs, kept outputs
    ("cnn", {("blocks.0.conv2",): 0, ("blocks.1", "blocks.2"): 2, ("pool",): 0}),
    ("gpt", {("",): 3}),  # the whole model, recomputed in one go
])
def test_any_unit_is_predicted_exactly(imported, tmp_path, name, choose):
    """Whatever units are wrapped (nested submodules, Sequential runs, kept outputs), the held bytes
    and the recomputed FLOPs measured in PyTorch are the planner's, to the byte and to the FLOP
    (the checkpoint's early stop included), and the gradients are the unplanned model's."""
    from ckpt.backends.torch_apply import apply, measure_step
    from ckpt.backends.torch_check import example_args
    doc, rp, choice = _plan_for(imported[name], choose, tmp_path)
    factory = getattr(torch_models, name)
    args = example_args(doc, (), 0)
    base, planned = factory(), apply(factory(), doc)
    b, p = measure_step(base, args), measure_step(planned, args)
    assert p["held_end_forward"] == rp.held_bytes(choice) < b["held_end_forward"] == rp.held_bytes({})
    predicted = sum(rp.unit_flops(u, kept) for u, kept in choice.items())
    assert _step_flops(planned, args) - _step_flops(base, args) == predicted > 0
    for k, g in b["grads"].items():
        assert torch.equal(g, p["grads"][k]), k


def test_plans_are_deterministic(imported, tmp_path):
    a = emit(imported["cnn"], "0.4x", tmp_path / "a.json")
    b = emit(imported["cnn"], "0.4x", tmp_path / "b.json")
    assert a["regions"] == b["regions"] and a["predicted"] == b["predicted"]


@pytest.mark.parametrize("name", ["mlp", "gpt", "cnn"])
def test_plan_recomputes_no_more_than_every_block(imported, tmp_path, name):
    """At the bytes that checkpointing every block holds, ckpt's plan holds no more and is
    predicted to recompute no more (the same exact predictions the tests above measure)."""
    from ckpt.plan.torch_regions import plan_regions
    blocks = {"mlp": [f"blocks.{i}" for i in range(16)], "gpt": [f"layers.{i}" for i in range(4)],
              "cnn": [f"blocks.{i}" for i in range(3)]}[name]
    _, rp, every = _plan_for(imported[name], {(b,): 0 for b in blocks}, tmp_path)
    choice, _ = plan_regions(rp, rp.held_bytes(every))
    assert rp.held_bytes(choice) <= rp.held_bytes(every)
    assert rp.recompute(choice) <= rp.recompute(every)
    assert rp.recompute(choice) < rp.recompute(every)
