"""PyTorch plans for models with in-place ops (ReLU(inplace=True), `out += identity`, BatchNorm, a
cell called once per time step), and a forward returning (loss, logits). A selective-checkpoint
policy never keeps an output that a later op writes in place (PyTorch refuses the written cache
entry), a unit whose argument is written from its start is never wrapped (the checkpoint saves it
with its version), and a module called more than once is a checkpoint per call. Whatever PyTorch
still raises in `torch-check` is one line and an exit code. Skipped without torch."""

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


def example(name):
    """Inputs for a model of torch_models: floats in its dtype, integer labels/ids in {0, 1}."""
    g = torch.Generator().manual_seed(0)
    args = []
    for item in torch_models.INPUTS[name]:
        shape, _, dt = item.partition("=")[2].partition(":")
        shape = [int(d) for d in shape.split("x")]
        args.append(torch.randint(0, 2, shape, generator=g) if dt == "int64" else
                    torch.randn(shape, generator=g, dtype=torch.float64))
    return args


def regions_of(model):
    """The units `ckpt import` would list: each top-level module, or the items of a Sequential."""
    out = []
    for k, m in model.named_children():
        out += [f"{k}.{i}" for i, _ in m.named_children()] if isinstance(m, torch.nn.Sequential) else [k]
    return out


def profiled(name):
    """The profile of one training forward (real tensors), the region profile planned from it."""
    from ckpt.backends.torch_apply import profile
    from ckpt.plan.torch_regions import RegionProfile
    model = getattr(torch_models, name)()
    regions = regions_of(model)
    prof = profile(model, example(name), regions)
    seq = [k for k, m in model.named_modules() if k and isinstance(m, torch.nn.Sequential)]
    return prof, RegionProfile(prof, regions, seq)


def step_flops(model, args):
    from torch.utils.flop_counter import FlopCounterMode

    from ckpt.backends.torch_apply import extra_flop_formulas, loss_of
    with FlopCounterMode(display=False, custom_mapping=extra_flop_formulas()) as fc:
        loss_of(model(*args)).backward()
    model.zero_grad(set_to_none=True)
    return fc.get_total_flops()


def run_choice(name, rp, choice):
    """Apply a choice to a fresh model: held bytes and recomputed FLOPs measured == predicted,
    gradients and buffers (BatchNorm's running statistics, updated once per step, not again by
    the recompute) bitwise the unplanned model's."""
    from ckpt.backends.torch_apply import apply, measure_step
    from ckpt.backends.torch_plan import _regions_doc
    factory = getattr(torch_models, name)
    args = example(name)
    doc = {"format": "ckpt-torch-plan", "regions": _regions_doc(rp, choice)}
    base, planned = factory(), apply(factory(), doc)
    b, p = measure_step(base, args), measure_step(planned, args)
    assert b["held_end_forward"] == rp.held_bytes({})
    assert p["held_end_forward"] == rp.held_bytes(choice)
    assert step_flops(planned, args) - step_flops(base, args) == sum(rp.unit_flops(u, k) for u, k in choice.items())
    assert set(b["grads"]) == set(p["grads"])
    for k, g in b["grads"].items():
        assert torch.equal(g, p["grads"][k]), k
    buffers = dict(planned.named_buffers())
    for k, v in base.named_buffers():
        assert torch.equal(v, buffers[k]), k


@pytest.mark.parametrize("name", ["vgg", "unet", "resnet_train", "llama", "mobilenet", "rnn"])
def test_in_place_models_plan_exactly(name):
    """At 0.6x and at the least the planner can hold, the applied plan runs (no written cache
    entry, no written checkpoint argument) with the held bytes and recompute predicted."""
    from ckpt.plan.torch_regions import plan_regions
    prof, rp = profiled(name)
    written = {s for o in prof["ops"] for s in o.get("mutated", ())}
    assert bool(written) == (name != "rnn")  # in-place writes recorded (nn.RMSNorm: add_)
    for u in rp.units:
        for o in u.keepable:  # never a kept output that a later op writes
            assert not any(j > o["i"] for s in o["made"] for j in rp.writes.get(s, ())), (u.name, o)
    least = rp.held_bytes(rp.solve(least=True))
    for limit in (int(0.6 * rp.held_bytes({})), least):
        choice, _ = plan_regions(rp, limit)
        assert choice and rp.held_bytes(choice) <= limit
        run_choice(name, rp, choice)


def test_kept_output_written_later_is_not_keepable():
    """VGG: a convolution's output is written by the ReLU(inplace=True) after it, so no unit may
    keep it; the ReLU wrapped alone would write its own argument, so it is never wrapped."""
    prof, rp = profiled("vgg")
    convs = [o for o in rp.ops if o["op"] == "aten.convolution.default" and o["region"].startswith("features")]
    assert convs and all(o["i"] in rp.written for o in convs)
    assert all(o["i"] not in [k["i"] for u in rp.units for k in u.keepable] for o in convs)
    assert not rp.unit(("features.1",)).wrappable and rp.unit(("features.0",)).wrappable
    assert rp.unit(("features.0", "features.1")).wrappable  # the conv and its ReLU together are fine


def test_cell_called_per_step_is_a_checkpoint_per_call():
    """rnn's LSTM and GRU cells run once per time step: each call is a checkpoint holding its own
    arguments, recomputing up to its own last pack (held bytes and FLOPs exact), wrapped whole."""
    prof, rp = profiled("rnn")
    assert len(prof["calls"]["gru"]) == 4
    for members in (("gru",), ("lstm",), ("lstm.ih",)):
        u = rp.unit(members)
        assert u.wrappable and u.keepable == []
        run_choice("rnn", rp, {u: []})
    run_choice("rnn", rp, {rp.unit(("gru",)): [], rp.unit(("out",)): rp.unit(("out",)).keepable})


@pytest.fixture(scope="module")
def vgg_plan(tmp_path_factory):
    d = tmp_path_factory.mktemp("vgg")
    res = invoke("import", f"{MODELS}:vgg", "-o", d / "v.yaml", *[a for i in torch_models.INPUTS["vgg"]
                                                                   for a in ("--input", i)])
    assert res.exit_code == 0, res.output
    res = invoke("plan", d / "v.yaml", "--memory-budget", "0.6x", "--emit", "torch", "-o", d / "p.json",
                 "--no-compare", "--json")
    assert res.exit_code == 0, res.output
    return d / "p.json"


def test_torch_check_passes_on_vgg(vgg_plan):
    res = invoke("torch-check", f"{MODELS}:vgg", "--plan", vgg_plan, "--steps", 1, "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert r["passed"] and r["gradients_equal"] and r["checkpointed_regions"]


def test_what_pytorch_refuses_is_one_line(vgg_plan, tmp_path):
    """A hand-edited plan keeping a convolution whose output ReLU(inplace=True) writes: PyTorch
    refuses it in the backward; torch-check says so in one line, exit 1. A forward that fails on
    the plan's inputs is exit 2; a malformed plan is exit 2."""
    doc = json.loads(vgg_plan.read_text())
    unit = next(r for r in doc["regions"] if r["checkpoint"] and r["members"][0].startswith("features"))
    unit["save"] = [{"region": unit["members"][0], "op": "aten.convolution.default", "k": 0}]
    unit["members"] = ["features.0", "features.1"]
    unit["name"] = "features.0..features.1"
    doc["regions"] = [r for r in doc["regions"] if r is unit or not r["checkpoint"]]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    res = invoke("torch-check", f"{MODELS}:vgg", "--plan", bad, "--steps", 1)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("ckpt: error: the training step with the plan raised RuntimeError:"), last
    doc = json.loads(vgg_plan.read_text())
    doc["inputs"]["x"]["shape"] = [2, 5, 16, 16]  # a shape the first convolution cannot take
    (tmp_path / "shape.json").write_text(json.dumps(doc))
    res = invoke("torch-check", f"{MODELS}:vgg", "--plan", tmp_path / "shape.json", "--steps", 1)
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "training step raised RuntimeError" in res.output
    for broken in ({"regions": [{"name": 3}]}, {"regions": [{"name": "features.0", "checkpoint": True, "save": [{}]}]},
                   {"predicted": None}, {"inputs": {"x": {"shape": [2], "dtype": "nope"}}}):
        (tmp_path / "m.json").write_text(json.dumps({**json.loads(vgg_plan.read_text()), **broken}))
        res = invoke("torch-check", f"{MODELS}:vgg", "--plan", tmp_path / "m.json", "--steps", 1)
        assert res.exit_code == 2 and res.output.count("\n") == 1 and "Traceback" not in res.output, res.output


def test_forward_returning_loss_and_logits(tmp_path):
    """(loss, logits): apply, measure_step and torch-check take the loss, as the import does."""
    import ckpt.torch
    res = invoke("import", f"{MODELS}:einsum_attention", "-o", tmp_path / "e.yaml",
                 *[a for i in torch_models.INPUTS["einsum_attention"] for a in ("--input", i)])
    assert res.exit_code == 0, res.output
    res = invoke("plan", tmp_path / "e.yaml", "--memory-budget", "0.5x", "--emit", "torch", "-o", tmp_path / "p.json",
                 "--no-compare", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert any(r["checkpoint"] for r in doc["regions"])
    res = invoke("torch-check", f"{MODELS}:einsum_attention", "--plan", tmp_path / "p.json", "--steps", 1, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["passed"]
    model = ckpt.torch.apply(torch_models.einsum_attention(), str(tmp_path / "p.json"))
    x, y = torch.randn(2, 5, 8, dtype=torch.float64), torch.randint(0, 2, (2,))
    loss, logits = model(x, y)
    assert logits.shape[0] == 2
    r = ckpt.torch.measure_step(model, [x, y])
    assert r["held_end_forward"] == doc["predicted"]["held_end_forward_bytes"] and r["loss"] == float(loss.detach())
