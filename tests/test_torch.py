"""Whole-model gradients against PyTorch on the CPU (an optional cross-check: skipped without torch).

Each op maps to its PyTorch counterpart here, independently of ckpt's own VJP rules."""

import numpy as np
import pytest

from ckpt.backend import get_backend
from ckpt.model import leaf_values
from ckpt.plan import plan
from ckpt.session import load_model, run_plan
from conftest import SMALL, config_path

torch = pytest.importorskip("torch", reason="torch is not installed (optional: pip install torch)")
from ckpt.torchref import TORCH, forward  # noqa: E402


def test_every_op_has_a_torch_counterpart():
    from ckpt.ops import REGISTRY
    assert set(REGISTRY) == set(TORCH)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_gradients_match_pytorch(name):
    model = load_model(config_path(name), SMALL[name], dtype="float64")
    g = model.graph
    host = leaf_values(g)
    sa, _ = plan(model.joint, "store-all", ix=model.index)
    ours = run_plan(model, sa.steps, get_backend("cpu"), n_steps=1, warmup=0,
                    leaves={k: v for k, v in host.items()})
    vals = {k: torch.tensor(v, requires_grad=bool(g.nodes[k]["grad"])) for k, v in host.items()}
    loss = forward(g, vals)
    loss.backward()
    assert loss.item() == pytest.approx(ours.loss, rel=1e-12)
    for k, grad in ours.grads.items():
        np.testing.assert_allclose(grad, vals[k].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=k)
