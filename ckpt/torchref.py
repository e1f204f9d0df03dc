"""A PyTorch mirror of a model graph, op by op, written independently of ckpt's VJP rules: the
reference that the tests compare gradients with and the GPU benchmark compares speed with.
Needs torch (optional); import this module only where torch is wanted."""

import numpy as np
import torch

from .ops.nn import dropout_keep

F = torch.nn.functional


def _axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    return tuple(a % ndim for a in ([axis] if isinstance(axis, int) else axis))


def _extreme(spread, first, x, a):
    """torch.amax (ties share the gradient) or, with `first`, torch.max(x, dim) (the first takes it)."""
    axes = _axes(a["axis"], x.ndim)
    if a.get("first") and axes:
        return first(x, dim=axes[0], keepdim=a["keepdims"]).values
    return spread(x, dim=axes, keepdim=a["keepdims"]) if axes else x.clone()


TORCH = {
    "add": lambda x, a: x[0] + x[1], "sub": lambda x, a: x[0] - x[1], "mul": lambda x, a: x[0] * x[1],
    "div": lambda x, a: x[0] / x[1], "neg": lambda x, a: -x[0], "exp": lambda x, a: torch.exp(x[0]),
    "log": lambda x, a: torch.log(x[0]), "sin": lambda x, a: torch.sin(x[0]), "cos": lambda x, a: torch.cos(x[0]),
    "tanh": lambda x, a: torch.tanh(x[0]), "sigmoid": lambda x, a: torch.sigmoid(x[0]),
    "relu": lambda x, a: torch.relu(x[0]), "gelu": lambda x, a: F.gelu(x[0], approximate="tanh"),
    "gelu_erf": lambda x, a: F.gelu(x[0]),
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
    "conv2d": lambda x, a: F.conv2d(x[0], x[1], x[2] if len(x) == 3 else None, a["stride"], a["padding"],
                                    a.get("dilation", 1)),
    "maxpool2d": lambda x, a: F.max_pool2d(x[0], a["kernel"]),
    "avgpool2d": lambda x, a: F.avg_pool2d(x[0], a["kernel"]),
    "upsample2d": lambda x, a: F.interpolate(x[0], scale_factor=a["scale"], mode="nearest"),
    "dropout": lambda x, a: x[0] * torch.from_numpy(
        dropout_keep(np, tuple(x[0].shape), a["_seed"], a["p"]).astype(np.float32)).to(x[0].device, x[0].dtype)
    / (1 - a["p"]),
    "mse": lambda x, a: F.mse_loss(x[0], x[1]),
    "softmax_cross_entropy": lambda x, a: F.cross_entropy(x[0].reshape(-1, x[0].shape[-1]), x[1].reshape(-1)),
    "nll": lambda x, a: F.nll_loss(x[0].reshape(-1, x[0].shape[-1]), x[1].reshape(-1).long(),
                                   x[2] if len(x) == 3 else None, reduction="mean" if a["average"] else "sum",
                                   ignore_index=-100 if a["ignore_index"] is None else a["ignore_index"]),
    "label_float": lambda x, a: x[0].to(x[1].dtype),
    "topk_indices": lambda x, a: torch.topk(x[0], a["k"], dim=-1, largest=a["largest"]).indices,
    "labels_view": lambda x, a: x[0].permute(*a["axes"]).reshape(a["shape"]),
    "labels_slice": lambda x, a: x[0].narrow(a["axis"], a["start"], a["stop"] - a["start"])[
        (slice(None),) * (a["axis"] % x[0].ndim) + (slice(None, None, a["step"]),)],
    "labels_expand": lambda x, a: x[0].expand(*a["shape"]),
    "float_labels": lambda x, a: torch.round(x[0]).long(),
    "scatter_add": lambda x, a: x[0].scatter_add(-1, x[1].long(), x[2]),
    "embedding": lambda x, a: F.embedding(x[1], x[0]),
    "gather": lambda x, a: torch.gather(x[0], -1, x[1].long()),
    "stop_gradient": lambda x, a: x[0].detach(),
    "where": lambda x, a: torch.where(x[0] != 0, x[1], x[2]),
    "greater": lambda x, a: (x[0] > x[1]).to(torch.result_type(x[0], x[1])),
    "greater_equal": lambda x, a: (x[0] >= x[1]).to(torch.result_type(x[0], x[1])),
    "less": lambda x, a: (x[0] < x[1]).to(torch.result_type(x[0], x[1])),
    "less_equal": lambda x, a: (x[0] <= x[1]).to(torch.result_type(x[0], x[1])),
    "pow": lambda x, a: x[0] ** a["exponent"],
    "slice": lambda x, a: x[0].narrow(a["axis"], a["start"], a["stop"] - a["start"])[
        (slice(None),) * (a["axis"] % x[0].ndim) + (slice(None, None, a["step"]),)],
    "amax": lambda x, a: _extreme(torch.amax, torch.max, x[0], a),
    "amin": lambda x, a: _extreme(torch.amin, torch.min, x[0], a),
    # the residuals the model graph saves for layernorm and dropout: their readers above ignore them
    # (torch's layer_norm saves its own statistics, and the mask is drawn above), so they are nothing
    # here, and cost a timed PyTorch step nothing
    "layernorm_stats": lambda x, a: None,
    "dropout_mask": lambda x, a: None,
}


def forward(g, values, ops=None):
    """Evaluate the graph's ops in torch; `values` maps leaf names to tensors and gains every node.
    `ops` replaces some of TORCH's rules (the GPU benchmark times torch's own dropout)."""
    rules = {**TORCH, **(ops or {})}
    for v in g.graph["order"]:
        d = g.nodes[v]
        values[v] = rules[d["op"]]([values[u] for u in d["inputs"]], d["attrs"])
    return values[g.graph["output"]]
