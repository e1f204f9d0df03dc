"""Forward mode (the seed's §2.3): one pass carries each value and its tangent, so it yields J·r
for a tangent r. It keeps no tape: a value and its tangent are dropped after their last reader,
so memory stays at the forward pass's live set (counted and reported)."""

from dataclasses import dataclass

from ..ops import REGISTRY, Ctx


@dataclass
class ForwardResult:
    value: object  # the target node's value
    tangent: object  # its tangent J·r (zeros when no leaf with a tangent reaches it)
    peak_bytes: int  # most bytes of op values and tangents live at once
    trace: list  # [(node, value, tangent)] for every op node, when asked for


def _last_readers(g, target):
    order = g.graph["order"]
    stop = order.index(target) + 1
    last = {}
    for i, v in enumerate(order[:stop]):
        for u in g.nodes[v]["inputs"]:
            last[u] = i
    return order[:stop], last


def evaluate(g, leaves, backend, target=None, held=None):
    """The value of `target` (default: the output) by a plain forward pass."""
    return jvp(g, leaves, {}, backend, target=target, held=held).value


def jvp(g, leaves, tangents, backend, target=None, record=False, held=None):
    """Forward mode through the graph: `tangents` maps leaf names to arrays shaped like them.
    `held` maps op nodes to values taken as given rather than computed (stop_gradient's, held at
    their unperturbed values while a gradient check perturbs the leaves)."""
    xp = backend.xp
    target = target or g.graph["output"]
    order, last = _last_readers(g, target)
    vals, tans = {}, {}
    live = peak = 0
    trace = []

    def get(u):
        return vals[u] if u in vals else leaves[u]

    def tan(u):
        if u in tans:
            return tans[u]
        if u in tangents:
            return tangents[u]
        return None

    for i, v in enumerate(order):
        d = g.nodes[v]
        op = REGISTRY[d["op"]]
        ins = [get(u) for u in d["inputs"]]
        out = held[v] if held and v in held else xp.asarray(op.forward(xp, ins, d["attrs"]))
        ts = [tan(u) for u in d["inputs"]]
        t_out = None
        if op.differentiable and any(t is not None for t in ts):  # a residual carries no tangent
            ts = [xp.zeros(a.shape, dtype=a.dtype) if t is None else t for a, t in zip(ins, ts)]
            ctx = Ctx(ins, out, [a.shape for a in ins], out.shape, d["attrs"])
            t_out = xp.asarray(op.jvp(xp, ts, ctx))
        vals[v] = out
        live += out.nbytes
        if t_out is not None:
            tans[v] = t_out
            live += t_out.nbytes
        peak = max(peak, live)
        if record:
            trace.append((v, out, t_out))
        for u in set(d["inputs"]):
            if last.get(u) == i and u in vals and u != target:
                live -= vals.pop(u).nbytes
                if u in tans:
                    live -= tans.pop(u).nbytes
    value = vals[target]
    tangent = tans.get(target)
    if tangent is None:
        tangent = xp.zeros(value.shape, dtype=value.dtype)
    return ForwardResult(value, tangent, peak, trace)
