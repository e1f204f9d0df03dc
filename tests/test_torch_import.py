"""`ckpt import`: three ordinary PyTorch models traced into ckpt configs; `ckpt run` reproduces
PyTorch's loss and gradients in float64; bad input is one line and exit 2. Skipped without torch."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch", reason="torch is not installed (optional: pip install 'ckpt-recompute[torch]')")

from ckpt.backend import get_backend  # noqa: E402
from ckpt.cli import cli  # noqa: E402
from ckpt.plan import plan  # noqa: E402
from ckpt.session import load_model, run_plan  # noqa: E402

import torch_models  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(HERE, "torch_models.py")


def do_import(tmp_path, name, factory=None, inputs=None, out=None):
    out = str(tmp_path / (out or f"{name}.yaml"))
    res = CliRunner().invoke(cli, ["import", f"{MODELS}:{factory or name}", "-o", out]
                             + [a for i in (inputs or torch_models.INPUTS[name]) for a in ("--input", i)])
    return res, out


def torch_step(name, stem):
    meta = json.load(open(stem + ".torch.json"))
    z = np.load(stem + ".npz")
    model = getattr(torch_models, name)()
    loss = model(*[torch.from_numpy(z[a]) for a in meta["arg_order"]])
    loss.backward()
    loss = loss.detach()
    grads = {k: p.grad.numpy() for k, p in model.named_parameters()}
    return loss.item(), grads, meta


@pytest.mark.parametrize("name", ["mlp", "gpt", "cnn", "misc"])
def test_run_reproduces_pytorch(tmp_path, name):
    res, out = do_import(tmp_path, name)
    assert res.exit_code == 0, res.output
    model = load_model(out)
    sa, _ = plan(model.joint, "store-all", ix=model.index)
    ours = run_plan(model, sa.steps, get_backend("cpu"), n_steps=1, warmup=0)
    loss, grads, meta = torch_step(name, out[:-5])
    assert abs(ours.loss - loss) <= 1e-9 * abs(loss)
    # Relative to each gradient's largest entry; a gradient that is zero in exact arithmetic (the
    # key projection's bias: softmax ignores a shift shared by a row) is held to 1e-9 of the
    # largest gradient entry of the model, as its round-off is all either side computes.
    scale = max(np.abs(g).max() for g in grads.values())
    assert set(grads) <= set(ours.grads)
    for k, ref in grads.items():
        got = ours.grads[k].T if k in meta["transposed"] else ours.grads[k]
        assert got.shape == ref.shape, k
        err = np.abs(got - ref).max()
        assert err <= 1e-9 * max(np.abs(ref).max(), 1e-3 * scale), (k, err)


def test_names_and_regions(tmp_path):
    res, out = do_import(tmp_path, "gpt")
    text = open(out).read()
    assert '"layers.3.attn.q_proj.weight"' in text
    meta = json.load(open(out[:-5] + ".torch.json"))
    assert [r for r in meta["regions"] if r.startswith("layers.")] == [f"layers.{i}" for i in range(4)]
    ops = {n.op for n in load_model(out).spec.nodes}
    assert {"embedding", "layernorm", "softmax", "gelu", "linear", "matmul", "log_softmax", "nll"} <= ops
    assert "dropout" not in ops  # eval mode: dropout is the identity


def test_train_mode_dropout_becomes_ckpt_dropout(tmp_path):
    res, out = do_import(tmp_path, "gpt", factory="gpt_train")
    assert res.exit_code == 0, res.output
    drops = [n for n in load_model(out).spec.nodes if n.op == "dropout"]
    assert len(drops) == 4 and all(n.attrs["p"] == 0.1 for n in drops)


def test_unsupported_op_is_one_line_and_a_cost_graph_plans(tmp_path):
    res, _ = do_import(tmp_path, "x", factory="still_unsupported", inputs=["x=3x4"])
    assert res.exit_code == 2
    line = res.output.strip()
    assert "\n" not in line and "aten.median" in line and "node median" in line
    res, out = do_import(tmp_path, "x", factory="still_unsupported", inputs=["x=3x4"], out="graph.json")
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["plan", out, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert {r["name"] for r in doc["strategies"]} >= {"store-all"}
    cg = json.load(open(out))
    mm = [n for n in cg["nodes"] if n["id"] == "linear"]
    assert mm and mm[0]["cost_cpu"] >= 2 * 3 * 4 * 4  # the flop counter's GEMM count


@pytest.mark.parametrize("factory,inputs,needle", [
    ("broken", ["x=2"], "factory failed on purpose"),
    ("mlp", ["x=8x31", "y=8x32"], "tracing the module failed"),
    ("mlp", ["x=8x32"], "give one --input per argument"),
    ("mlp", ["x=8xq", "y=8x32"], "--input"),
    ("nope", ["x=2"], "no callable 'nope'"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, factory, inputs, needle):
    res, _ = do_import(tmp_path, "x", factory=factory, inputs=inputs)
    assert res.exit_code == 2, res.output
    assert needle in res.output and res.output.count("\n") == 1


def test_meta_model_imports_and_plans_without_weights(tmp_path):
    """A model built on the meta device (no values anywhere) imports and plans: the trace and the
    profile run on fake tensors; parameters get inits instead of saved values."""
    res, out = do_import(tmp_path, "gpt", factory="gpt_meta")
    assert res.exit_code == 0, res.output
    import numpy as np
    assert "layers.0.fc.weight" not in np.load(out[:-5] + ".npz").files
    res = CliRunner().invoke(cli, ["plan", out, "--emit", "torch", "-o", str(tmp_path / "p.json"),
                                   "--memory-budget", "0.5x", "--time-limit", "0.5", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["predicted"]["held_end_forward_bytes"] > 0


def test_a_model_with_no_parameters_imports_and_runs(tmp_path):
    """Nothing to train (a loss of the inputs alone): the profile has no backward graph to release;
    it was a PyTorch traceback."""
    src = tmp_path / "noparam.py"
    src.write_text("import torch\n\nclass M(torch.nn.Module):\n    def forward(self, x):\n"
                   "        return (x * x).sum()\n\ndef model():\n    return M()\n")
    out = str(tmp_path / "m.yaml")
    res = CliRunner().invoke(cli, ["import", f"{src}:model", "--input", "x=4x3", "-o", out])
    assert res.exit_code == 0, res.output
    m = load_model(out)
    sa, _ = plan(m.joint, "store-all", ix=m.index)
    x = np.load(out[:-5] + ".npz")["x"]
    assert run_plan(m, sa.steps, get_backend("cpu"), n_steps=1, warmup=0).loss == pytest.approx(float((x * x).sum()))


def test_import_writes_through_the_shared_writer(tmp_path):
    """The config goes through ckpt's one atomic writer: a symlink stays a link (its target is
    written), and a read-only config is refused in one line, untouched (it was replaced)."""
    target = tmp_path / "real.yaml"
    link = tmp_path / "link.yaml"
    link.symlink_to(target)
    res, _ = do_import(tmp_path, "mlp", out="link.yaml")
    assert res.exit_code == 0, res.output
    assert link.is_symlink() and "nodes:" in target.read_text()
    ro = tmp_path / "ro.yaml"
    ro.write_text("mine\n")
    ro.chmod(0o444)
    res, _ = do_import(tmp_path, "mlp", out="ro.yaml")
    if os.geteuid() != 0:  # root may write anything
        assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
        assert ro.read_text() == "mine\n"


def test_run_on_a_pytorch_factory_points_to_import():
    res = CliRunner().invoke(cli, ["run", f"{MODELS}:mlp"])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert f"ckpt import {MODELS}:mlp --input" in res.output
