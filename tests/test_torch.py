"""Whole-model gradients against PyTorch on the CPU (an optional cross-check: skipped without torch).

Each op maps to its PyTorch counterpart here, independently of ckpt's own VJP rules."""

import numpy as np
import pytest

from ckpt.backend import get_backend
from ckpt.model import leaf_values
from ckpt.ops.nn import dropout_keep
from ckpt.plan import plan
from ckpt.session import load_model, run_plan
from conftest import SMALL, config_path

torch = pytest.importorskip("torch", reason="torch is not installed (optional: pip install torch)")
F = torch.nn.functional


def _axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    return tuple(a % ndim for a in ([axis] if isinstance(axis, int) else axis))


TORCH = {
    "add": lambda x, a: x[0] + x[1], "sub": lambda x, a: x[0] - x[1], "mul": lambda x, a: x[0] * x[1],
    "div": lambda x, a: x[0] / x[1], "neg": lambda x, a: -x[0], "exp": lambda x, a: torch.exp(x[0]),
    "log": lambda x, a: torch.log(x[0]), "sin": lambda x, a: torch.sin(x[0]), "cos": lambda x, a: torch.cos(x[0]),
    "tanh": lambda x, a: torch.tanh(x[0]), "sigmoid": lambda x, a: torch.sigmoid(x[0]),
    "relu": lambda x, a: torch.relu(x[0]), "gelu": lambda x, a: F.gelu(x[0], approximate="tanh"),
    "scale": lambda x, a: x[0] * a["factor"], "matmul": lambda x, a: x[0] @ x[1],
    "linear": lambda x, a: x[0] @ x[1] + (x[2] if len(x) == 3 else 0),
    "sum": lambda x, a: x[0].sum(dim=_axes(a["axis"], x[0].ndim), keepdim=a["keepdims"]),
    "mean": lambda x, a: x[0].mean(dim=_axes(a["axis"], x[0].ndim), keepdim=a["keepdims"]),
    "reshape": lambda x, a: x[0].reshape(a["shape"]),
    "transpose": lambda x, a: x[0].permute(*(a["axes"] or reversed(range(x[0].ndim)))),
    "concat": lambda x, a: torch.cat(x, dim=a["axis"]),
    "softmax": lambda x, a: torch.softmax(x[0], dim=a["axis"]),
    "log_softmax": lambda x, a: torch.log_softmax(x[0], dim=a["axis"]),
    "layernorm": lambda x, a: F.layer_norm(x[0], x[0].shape[-1:], x[1], x[2], a["eps"]),
    "conv2d": lambda x, a: F.conv2d(x[0], x[1], x[2] if len(x) == 3 else None, a["stride"], a["padding"]),
    "maxpool2d": lambda x, a: F.max_pool2d(x[0], a["kernel"]),
    "avgpool2d": lambda x, a: F.avg_pool2d(x[0], a["kernel"]),
    "upsample2d": lambda x, a: F.interpolate(x[0], scale_factor=a["scale"], mode="nearest"),
    "dropout": lambda x, a: x[0] * torch.from_numpy(
        dropout_keep(np, tuple(x[0].shape), a["_seed"], a["p"]).astype(np.float64)) / (1 - a["p"]),
    "mse": lambda x, a: F.mse_loss(x[0], x[1]),
    "softmax_cross_entropy": lambda x, a: F.cross_entropy(x[0].reshape(-1, x[0].shape[-1]), x[1].reshape(-1)),
}


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
    for v in g.graph["order"]:
        d = g.nodes[v]
        vals[v] = TORCH[d["op"]]([vals[u] for u in d["inputs"]], d["attrs"])
    loss = vals[g.graph["output"]]
    loss.backward()
    assert loss.item() == pytest.approx(ours.loss, rel=1e-12)
    for k, grad in ours.grads.items():
        np.testing.assert_allclose(grad, vals[k].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=k)
