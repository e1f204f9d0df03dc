"""Real-model shapes through `ckpt import` (tests/torch_models.py, REAL_INPUTS): a torchvision-style
ResNet with BatchNorm in train and eval mode, a VGG, UNets with transposed convolutions and
up-sampling, nanoGPT and nn.MultiheadAttention GPT-2 blocks with tied embeddings, hand-written LSTM
and GRU cells, a layer used twice, DeepLab's ASPP (dilated convolutions), GoogLeNet's ceil-mode
pools, a WaveNet (causal dilated 1-D convolutions, max over time), PyTorch's tie rules for max
pooling and max/min reductions, policy-gradient picks by gather and take_along_dim, and a zoo of
pooling geometries (ceil mode, dilation, the average's divisors), and a DQN whose targets are
detached (a target network's parameters take no gradient). `ckpt run` reproduces PyTorch's loss and gradients (float64:
relative 1e-9; float32: 1e-4), plans under a budget run with predicted == measured bytes and
gradients bitwise equal to store-all's; an op ckpt cannot run is one line naming it and its source
line. Skipped without torch."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch", reason="torch is not installed (optional: pip install 'ckpt-recompute[torch]')")

import ckpt  # noqa: E402
from ckpt.cli import cli  # noqa: E402

import torch_models  # noqa: E402
from test_torch_import import do_import  # noqa: E402

REAL = sorted(torch_models.REAL_INPUTS)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Each model imported once for the module's tests: name -> the config's path."""
    done, where = {}, tmp_path_factory.mktemp("real")

    def get(name):
        if name not in done:
            res, out = do_import(where, name)
            assert res.exit_code == 0, res.output
            done[name] = out
        return done[name]
    return get


def torch_step(name, stem):
    with open(stem + ".torch.json") as f:
        meta = json.load(f)
    z = np.load(stem + ".npz")
    model = getattr(torch_models, name)()
    loss = model(*[torch.from_numpy(z[a]) for a in meta["arg_order"]])
    loss = loss[0] if isinstance(loss, tuple) else loss  # (loss, logits): ckpt takes the scalar
    loss.backward()
    # a parameter the loss reads only through detach has no gradient (None), in ckpt as in PyTorch
    return loss.item(), {k: p.grad.numpy() if p.grad is not None else None for k, p in model.named_parameters()}, meta


@pytest.mark.parametrize("name", REAL)
def test_real_model_matches_pytorch(imported, name):
    out = imported(name)
    m = ckpt.load(out)
    ours = ckpt.run(m, ckpt.plan(m))
    loss, grads, meta = torch_step(name, out[:-5])
    tol = 1e-9 if meta["dtype"] == "float64" else 1e-4
    assert abs(ours.loss - loss) <= tol * abs(loss)
    # every parameter by the name model.named_parameters() gives it (a tied weight once)
    assert {k for k, g in grads.items() if g is not None} <= set(ours.grads)
    assert not {k for k, g in grads.items() if g is None} & set(ours.grads)
    grads = {k: g for k, g in grads.items() if g is not None}
    scale = max(np.abs(g).max() for g in grads.values())
    for k, ref in grads.items():
        got = ours.grads[k].T if k in meta["transposed"] else ours.grads[k]
        assert got.shape == ref.shape, k
        assert np.abs(got - ref).max() <= tol * max(np.abs(ref).max(), 1e-3 * scale), k


@pytest.mark.parametrize("name,strategy", [("gpt2", "budget"), ("unet", "sqrt-n"), ("resnet_train", "sqrt-n"),
                                           ("rnn", "tight"), ("wavenet", "budget"),
                                           ("inception_pools", "sqrt-n")])
def test_real_model_plans_and_runs_with_recompute(imported, name, strategy):
    """A plan that recomputes (budget: 80% of store-all's managed bytes; sqrt-n: its checkpoints)
    runs with managed bytes equal to the prediction and store-all's gradients bit for bit. (The
    budget planner takes seconds to prove a budget infeasible on the 150-node UNet and RNN, so they
    run sqrt-n's plans here. sqrt-n's segments do not lower the RNN's peak, so it takes store-all's
    plan: the RNN runs a budget plan a byte under store-all's peak.)"""
    m = ckpt.load(imported(name))
    sa = ckpt.simulate(m, ckpt.plan(m))
    ref = ckpt.run(m, ckpt.plan(m))
    if strategy == "budget":
        p = ckpt.plan(m, budget=sa.resident + int(0.8 * sa.peak_managed), time_limit=0.5)
    elif strategy == "tight":
        p = ckpt.plan(m, budget=sa.peak_ws - 1, time_limit=0.5)
    else:
        p = ckpt.plan(m, strategy=strategy)
    sim = ckpt.simulate(m, p)
    r = ckpt.run(m, p)
    assert sim.recomputes > 0 and sim.peak <= sa.peak and r.measured_managed == sim.peak_managed
    assert all(np.array_equal(r.grads[k], ref.grads[k]) for k in ref.grads)


def test_batch_norm_and_slices_become_ckpt_ops(imported):
    """BatchNorm in train mode is batch statistics from ckpt's reductions (its running statistics
    are no node: the loss does not read them); nanoGPT's split is three slices; the tied weight is
    one parameter."""
    ops = [n.op for n in ckpt.load(imported("resnet_train")).spec.nodes]
    assert "mean" in ops and "pow" in ops and "slice" in ops  # the 3x3/2 max pool's windows too
    out = imported("gpt2")
    spec = ckpt.load(out).spec
    assert sum(n.op == "slice" for n in spec.nodes) == 3 * 2  # q, k, v in each of the 2 layers
    params = [k for k, v in spec.leaves.items() if getattr(v, "kind", "param") == "param"]
    with open(out) as f:
        text = f.read()
    assert "transformer.wte.weight" in text and '"lm_head.weight"' not in text, params
    assert "gelu_erf" in {n.op for n in ckpt.load(imported("gpt2_mha")).spec.nodes}  # nn.GELU()


@pytest.mark.parametrize("factory,inputs,needle", [
    ("torch_rnn", ["x=2x3x4"], "aten.rnn_tanh.input in rnn (node rnn_tanh, torch_models.py:"),
    ("median_over_dim", ["x=3x4"], "aten.median.dim in the top-level module (node median, torch_models.py:"),
])
def test_unsupported_op_names_op_module_and_line(tmp_path, factory, inputs, needle):
    res, _ = do_import(tmp_path, "x", factory=factory, inputs=inputs)
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "Traceback" not in res.output
    assert needle in res.output, res.output


@pytest.mark.parametrize("factory,needle", [
    ("pool_padding", "pad should be at most half of effective kernel size"),
    ("pool_dilation_0", "dilation should be greater than zero"),
    ("conv_dilation_0", "conv2d with dilation (0, 0) (each must be at least 1)"),
    ("unpool", "unsupported op aten.max_unpool2d.default"),
])
def test_bad_pooling_and_dilation_are_one_line(tmp_path, factory, needle):
    res, _ = do_import(tmp_path, "x", factory=factory, inputs=["x=2x2x7x7"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "Traceback" not in res.output, res.output
    assert needle in res.output, res.output


def test_shared_layer_has_no_region_of_its_own(imported, tmp_path):
    """A layer used twice is one module under two names: PyTorch cannot wrap one use in a checkpoint
    and not the other, so its ops fall in no region; the PyTorch plan is still made."""
    out = imported("shared")
    with open(out[:-5] + ".torch.json") as f:
        meta = json.load(f)
    assert "layers.0" not in meta["regions"] and "layers.1" in meta["regions"]
    res = CliRunner().invoke(cli, ["plan", out, "--emit", "torch", "-o", str(tmp_path / "p.json"),
                                   "--memory-budget", "0.8x", "--time-limit", "0.5", "--json"])
    assert res.exit_code == 0, res.output


def test_write_into_a_slice_is_functionalized(tmp_path):
    """`h[:, :2] *= 2` then `h.relu_()`: a mutation through a view, which the trace must
    functionalize (slice_scatter); loss and gradients are still PyTorch's."""
    res, out = do_import(tmp_path, "slice_write", inputs=["x=3x4"])
    assert res.exit_code == 0, res.output
    m = ckpt.load(out)
    ours = ckpt.run(m, ckpt.plan(m))
    loss, grads, meta = torch_step("slice_write", out[:-5])
    assert abs(ours.loss - loss) <= 1e-12 * abs(loss)
    for k, ref in grads.items():
        got = ours.grads[k].T if k in meta["transposed"] else ours.grads[k]
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)


def test_meta_model_with_buffers_imports_and_plans(tmp_path):
    """Buffers on the meta device have no values: zeros stand in (and ops folded from them run on
    meta tensors), which is enough to plan."""
    res, out = do_import(tmp_path, "llama_meta", inputs=torch_models.INPUTS["llama"])
    assert res.exit_code == 0, res.output
    m = ckpt.load(out)
    sa = ckpt.simulate(m, ckpt.plan(m))
    assert ckpt.simulate(m, ckpt.plan(m, strategy="sqrt-n")).peak_managed < sa.peak_managed
