"""Lowering a model graph to the joint forward+backward DAG: the planners' one input.

Every forward op node v that feeds the output becomes a node `v` (kind "forward"; ram = bytes of
its value). Every value that takes a gradient becomes a node `grad:v` (kind "backward") that
*pulls* its gradient from its consumers: it reads each consumer's gradient node and the residuals
that consumer's VJP saves for that input, and writes dL/dv (ram = bytes of v; 0 for inputs and
parameters, whose gradients are resident). The output's gradient node is the seed and reads the
output's value, so every schedule computes the loss. An edge u -> x means x reads u's output.

Cost model: a node's `cost` is its predicted time in nanoseconds on the machine the weights were
fitted on (scripts/calibrate_costs.py; ckpt/model/cost_weights.py holds them): per op and
direction, a weight per FLOP, per byte moved and per call, applied to what the node computes
(`features`). The weights are fixed data, so a plan never depends on the clock. `flops` keeps the
node's FLOPs. The graph's `cache` (capacity, ns per byte) is the simulator's term for values read
from memory rather than from a cache (simulate.cache_bytes): part of a schedule's predicted time,
not of any node's cost.

Memory model (Checkmate's): a node's output is live from the step that computes it to the step
that frees it; computing x needs every predecessor live and costs ram(x) more bytes. While x is
computed it also holds ws(x) bytes of temporaries that are gone when its step ends (the op rules'
workspace; for a gradient node, its consumers' VJPs one after another and the sum of their terms,
as the executor accumulates them).
"""

import networkx as nx

from ..ops import REGISTRY, iter_buffer
from .cost_weights import CACHE, WEIGHTS
from .graph import ITEMSIZE, residuals

GRAD = "grad:"


def grad_id(v):
    return GRAD + v


def lower(g):
    j = nx.DiGraph(name=g.graph["name"], output=g.graph["output"])
    out = g.graph["output"]
    needed = nx.ancestors(g, out) | {out}
    fwd = [v for v in g.graph["order"] if v in needed]
    for v in fwd:
        d = g.nodes[v]
        feats = forward_features(g, v)
        j.add_node(v, kind="forward", ref=v, cost=predict(feats), flops=d["flops"], features=feats,
                   ram=d["bytes"], ws=workspace(g, v, "forward"))
        for u in set(d["inputs"]):
            if g.nodes[u]["kind"] == "op":
                j.add_edge(u, v)
    index = {v: i for i, v in enumerate(fwd)}
    takes_grad = [v for v in g.nodes if g.nodes[v]["grad"] and (g.nodes[v]["kind"] != "op" or v in index)]

    def grad_consumers(v):
        return [(w, i) for w in g.successors(v) if g.nodes[w]["kind"] == "op" and g.nodes[w]["grad"]
                for i, u in enumerate(g.nodes[w]["inputs"]) if u == v]

    def key(v):  # gradients in reverse topological order; a leaf's right after its last consumer's
        if v in index:
            return index[v]
        return min(index[w] for w, _ in grad_consumers(v)) - 0.5

    bwd = sorted(takes_grad, key=lambda v: (-key(v), v))
    for v in bwd:
        d = g.nodes[v]
        b = grad_id(v)
        is_op = d["kind"] == "op"
        cons = grad_consumers(v)
        feats = gradient_features(g, v, cons)
        j.add_node(b, kind="backward", ref=v, cost=predict(feats), flops=sum(f for f, _, _ in feats.values()),
                   features=feats, ram=d["bytes"] if is_op else 0,
                   ws=gradient_workspace(d["bytes"], ITEMSIZE[d["dtype"]], [workspace(g, w, i) for w, i in cons]))
        if v == out:
            j.add_edge(v, b)
        for w, i in cons:
            j.add_edge(grad_id(w), b)
            for r in residuals(g, w, i):
                if g.nodes[r]["kind"] == "op":
                    j.add_edge(r, b)
    j.graph["order"] = fwd + [grad_id(v) for v in bwd]
    leaves = [v for v in g.nodes if g.nodes[v]["kind"] != "op"]
    j.graph["resident"] = sum(g.nodes[v]["bytes"] * (2 if g.nodes[v]["grad"] else 1) for v in leaves)
    j.graph["cache"] = CACHE  # (capacity, ns per byte read from memory): the simulator's time term
    return j


def forward_features(g, v):
    """{kind: (flops, bytes moved, calls)} of forward node v: its op reads its inputs, writes its
    output and writes and reads back its temporaries."""
    d = g.nodes[v]
    moved = sum(g.nodes[u]["bytes"] for u in d["inputs"]) + d["bytes"] + 2 * workspace(g, v, "forward")
    return {d["op"] + ":forward": (d["flops"], moved, 1)}


def gradient_features(g, v, cons):
    """{kind: (flops, bytes moved, calls)} of v's gradient node: each consumer's VJP for v reads
    the consumer's gradient and residuals, writes a term the size of v (and writes and reads back
    its temporaries); the node then sums its terms (and copies a term that is a view), kind
    "gradient"."""
    feats = {}
    nbytes = g.nodes[v]["bytes"]
    for w, i in cons:
        moved = g.nodes[w]["bytes"] + nbytes + sum(g.nodes[r]["bytes"] for r in residuals(g, w, i)) + \
            2 * workspace(g, w, i)
        key = g.nodes[w]["op"] + ":vjp"
        f, b, c = feats.get(key, (0, 0, 0))
        feats[key] = (f + vjp_flops(g, w, i), b + moved, c + 1)
    feats["gradient"] = (0, nbytes * max(len(cons) - 1, 1), 1)
    return feats


def predict(feats, weights=None):
    """Nanoseconds: each kind's weights (per FLOP, per byte, per call) applied to its features; a
    kind the table lacks (an op added since the fit) takes the table's weights for all ops."""
    weights = WEIGHTS if weights is None else weights
    total = 0.0
    for key, (f, b, c) in feats.items():
        w = weights.get(key)
        if w is None:
            w = weights.get("*:" + key.rpartition(":")[2], (0.0, 0.0, 0.0))
        total += w[0] * f + w[1] * b + w[2] * c
    return float(total)


def vjp_flops(g, w, i):
    """FLOPs of op node w's VJP for its input i, as the op states them (the forward's where an op
    does not): a gradient node is charged only for the products it computes."""
    d = g.nodes[w]
    op = REGISTRY[d["op"]]
    shapes = [g.nodes[u]["shape"] for u in d["inputs"]]
    if op.vjp_flops is None:
        return d["flops"]
    return int(op.vjp_flops(i, shapes, d["shape"], d["attrs"]))


def workspace(g, w, which):
    """Bytes op node w's rule ("forward", or the VJP for input i) holds beyond its result."""
    d = g.nodes[w]
    op = REGISTRY[d["op"]]
    if op.workspace is None:
        return 0
    shapes = [g.nodes[u]["shape"] for u in d["inputs"]]
    return int(op.workspace(which, shapes, d["shape"], d["attrs"], ITEMSIZE[d["dtype"]]))


def gradient_workspace(nbytes, itemsize, terms):
    """Temporaries of a gradient node of `nbytes` whose consumers' VJPs (workspace `terms`, in the
    executor's order) run one after another. The first term is the gradient so far; the second
    is added into a fresh buffer (both terms and the sum live at once); later terms are added in
    place. A sum iterates each broadcast view (a reduction's VJP) through numpy's buffer. The
    node's own bytes (its ram, or for a leaf the resident gradient) are not counted here."""
    if not terms:
        return 0
    if len(terms) == 1:
        return terms[0]
    buf = iter_buffer(nbytes // itemsize, itemsize)
    phases = [terms[0], nbytes + terms[1], 2 * nbytes + 2 * buf]
    phases += [nbytes + max(t, buf) for t in terms[2:]]
    return max(phases)

