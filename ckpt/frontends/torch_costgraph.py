"""A cost graph from a traced PyTorch module, for models ckpt cannot run: planning needs only
shapes and costs. Forward nodes are the aten ops (FLOPs from torch.utils.flop_counter, bytes from
the output's shape); each op whose output takes a gradient gets a backward node that reads the
gradients of its consumers and the forward values those consumers' backward reads (their inputs,
a conservative stand-in for what each op saves)."""

import numpy as np

from ..errors import ConfigError
from ..jsonio import write_json_atomic


def _bytes(val):
    import torch
    if not isinstance(val, torch.Tensor):
        return 0
    return int(np.prod(val.shape, dtype=np.int64)) * val.element_size()


def _flops(node):
    """FLOPs of one aten node, counted by PyTorch's own flop counter on the fake tensors of the trace."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    def val(a):
        return a.meta.get("val") if isinstance(a, torch.fx.Node) else a
    args = torch.utils._pytree.tree_map(val, node.args)
    kwargs = torch.utils._pytree.tree_map(val, node.kwargs)
    try:
        with FlopCounterMode(display=False) as fc:
            node.target(*args, **kwargs)
        return int(fc.get_total_flops())
    except Exception:  # noqa: BLE001 -- an op the fake kernels cannot replay costs its output's elements
        out = node.meta.get("val")
        return int(np.prod(out.shape)) if hasattr(out, "shape") else 0


def write_cost_graph(ep, model, output):
    import torch
    sig = ep.graph_signature
    params = {s.arg.name for s in sig.input_specs if s.kind.name in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR")}
    resident = sum(p.numel() * p.element_size() * (2 if p.requires_grad else 1) for p in model.parameters())
    resident += sum(b.numel() * b.element_size() for b in model.buffers())
    nodes, links, grad = [], [], {}
    fx_nodes = [n for n in ep.graph_module.graph.nodes if n.op == "call_function"]
    for n in ep.graph_module.graph.nodes:
        if n.op == "placeholder" and n.name not in params:
            resident += _bytes(n.meta.get("val"))
    ids = {n.name for n in fx_nodes}
    for n in fx_nodes:
        val = n.meta.get("val")
        nodes.append({"id": n.name, "cost_cpu": _flops(n) + (_bytes(val) and int(np.prod(val.shape))),
                      "cost_ram": _bytes(val), "backward": False})
        for a in n.all_input_nodes:
            if a.name in ids:
                links.append({"source": a.name, "target": n.name})
        grad[n.name] = isinstance(val, torch.Tensor) and val.requires_grad
    consumers = {n.name: [u for u in n.users if u.name in ids] for n in fx_nodes}
    for n in reversed(fx_nodes):
        if not grad[n.name]:
            continue
        gid = "grad:" + n.name
        val = n.meta.get("val")
        cost = sum(2 * next(x["cost_cpu"] for x in nodes if x["id"] == u.name) for u in consumers[n.name])
        nodes.append({"id": gid, "cost_cpu": cost, "cost_ram": _bytes(val), "backward": True})
        for u in consumers[n.name]:
            if grad.get(u.name):
                links.append({"source": "grad:" + u.name, "target": gid})
            for a in u.all_input_nodes:
                if a.name in ids:
                    links.append({"source": a.name, "target": gid})
    links = [dict(t) for t in {tuple(sorted(x.items())) for x in links}]
    doc = {"directed": True, "multigraph": False, "graph": {"name": type(model).__name__, "resident_bytes": resident},
           "nodes": nodes, "links": sorted(links, key=lambda x: (x["source"], x["target"]))}
    try:
        write_json_atomic(output, doc)
    except OSError as e:
        raise ConfigError(f"cannot write: {e.strerror}", file=output) from None
    return {"cost_graph": output, "nodes": len(nodes), "forward": len(fx_nodes), "links": len(links)}
