"""Graphs and reference planners for measuring the budget planner (scripts/bench_planner.py and
tests/test_planner_quality.py).

- Checkmate-style training graphs built from real ckpt ops (YAML configs lowered by ckpt itself):
  a linear chain, a U-Net (concat skips), a ResNet (residual adds), a 2-block transformer and a
  ResNet-50-like network ([3, 4, 6, 3] bottleneck blocks with small channel counts: planning
  needs shapes only). Widths are drawn from a seeded generator, so sizes and costs differ node
  to node.
- Random training DAGs written directly as joint graphs, lowered the way ckpt/model/joint.py
  lowers a model: a gradient node per forward value that reads its consumers' gradient nodes and
  the residuals their VJPs save, and a gradient node (0 bytes: parameter gradients are resident)
  for the parameter of about half the ops.
- The plain greedy baseline of issue 12 and a content hash for caching exact optima.
"""

import hashlib
import json
import random

import networkx as nx

from ckpt.model import build_graph, lower, parse_config
from ckpt.plan.keepset import keep_schedule
from ckpt.simulate import simulate


def joint_of(text):
    return lower(build_graph(parse_config(text)))


def _header(name, seed, inputs, params):
    lines = [f"name: {name}", "dtype: float32", f"seed: {seed}", "inputs:"]
    lines += [f"  {k}: {{shape: {list(s)}, init: normal}}" for k, s in inputs]
    lines.append("params:")
    lines += [f"  {k}: {{shape: {list(s)}, init: xavier}}" for k, s in params]
    lines.append("nodes:")
    return lines


def _node(name, op, inputs, attrs=None):
    a = "" if not attrs else ", attrs: {" + ", ".join(f"{k}: {v}" for k, v in attrs.items()) + "}"
    return f"  - {{name: {name}, op: {op}, inputs: [{', '.join(inputs)}]{a}}}"


def chain_config(layers, seed=0):
    """An MLP chain: linear layers of random widths, each followed by a random activation."""
    rng = random.Random(seed)
    b = rng.choice([2, 4, 8])
    widths = [rng.choice([4, 8, 16, 24, 32, 48]) for _ in range(layers + 1)]
    params, nodes, prev = [], [], "x"
    for i in range(layers):
        params += [(f"w{i}", (widths[i], widths[i + 1])), (f"b{i}", (widths[i + 1],))]
        nodes.append(_node(f"h{i}", "linear", [prev, f"w{i}", f"b{i}"]))
        nodes.append(_node(f"a{i}", rng.choice(["relu", "tanh", "sigmoid", "gelu"]), [f"h{i}"]))
        prev = f"a{i}"
    nodes.append(_node("loss", "mse", [prev, "y"]))
    lines = _header(f"chain{layers}_s{seed}", seed, [("x", (b, widths[0])), ("y", (b, widths[-1]))], params)
    return "\n".join(lines + nodes + ["output: loss"]) + "\n"


def unet_config(levels=2, seed=0):
    """A U-Net: conv encoder halving the resolution `levels` times, decoder doubling it back,
    concat skips from each encoder level to the decoder level of the same size."""
    rng = random.Random(seed)
    n, h = rng.choice([1, 2]), 4 * 2 ** levels
    ch = [rng.choice([2, 3, 4])] + [rng.choice([2, 4, 6, 8]) for _ in range(levels + 1)]
    params, nodes, prev, c_prev = [], [], "image", 3
    skips = []
    for i in range(levels):
        params += [(f"e{i}_w", (ch[i], c_prev, 3, 3)), (f"e{i}_b", (ch[i],))]
        nodes.append(_node(f"e{i}", "conv2d", [prev, f"e{i}_w", f"e{i}_b"], {"padding": 1}))
        nodes.append(_node(f"e{i}a", rng.choice(["relu", "tanh"]), [f"e{i}"]))
        skips.append((f"e{i}a", ch[i]))
        nodes.append(_node(f"p{i}", rng.choice(["maxpool2d", "avgpool2d"]), [f"e{i}a"], {"kernel": 2}))
        prev, c_prev = f"p{i}", ch[i]
    params += [("m_w", (ch[levels], c_prev, 3, 3)), ("m_b", (ch[levels],))]
    nodes.append(_node("m", "conv2d", [prev, "m_w", "m_b"], {"padding": 1}))
    nodes.append(_node("ma", "relu", ["m"]))
    prev, c_prev = "ma", ch[levels]
    for i in reversed(range(levels)):
        skip, cs = skips[i]
        nodes.append(_node(f"u{i}", "upsample2d", [prev], {"scale": 2}))
        nodes.append(_node(f"cat{i}", "concat", [f"u{i}", skip], {"axis": 1}))
        co = rng.choice([2, 4, 6])
        params += [(f"d{i}_w", (co, c_prev + cs, 3, 3)), (f"d{i}_b", (co,))]
        nodes.append(_node(f"d{i}", "conv2d", [f"cat{i}", f"d{i}_w", f"d{i}_b"], {"padding": 1}))
        nodes.append(_node(f"d{i}a", rng.choice(["relu", "sigmoid", "gelu"]), [f"d{i}"]))
        prev, c_prev = f"d{i}a", co
    params += [("out_w", (1, c_prev, 1, 1)), ("out_b", (1,))]
    nodes.append(_node("pred", "conv2d", [prev, "out_w", "out_b"]))
    nodes.append(_node("loss", "mse", ["pred", "target"]))
    lines = _header(f"unet{levels}_s{seed}", seed, [("image", (n, 3, h, h)), ("target", (n, 1, h, h))], params)
    return "\n".join(lines + nodes + ["output: loss"]) + "\n"


def resnet_config(blocks=3, seed=0, pool=True):
    """A ResNet: conv stem, residual blocks (conv-relu-conv + skip add, relu), a pooling step
    halfway (with `pool`), global average pooling and a linear head."""
    rng = random.Random(seed)
    n, h, c, k = rng.choice([1, 2]), rng.choice([8, 12, 16]), rng.choice([2, 3, 4, 6]), rng.choice([3, 5, 10])
    params = [("stem_w", (c, 3, 3, 3)), ("stem_b", (c,)), ("fc_w", (c, k)), ("fc_b", (k,))]
    nodes = [_node("stem", "conv2d", ["image", "stem_w", "stem_b"], {"padding": 1}),
             _node("stem_a", "relu", ["stem"])]
    prev = "stem_a"
    for i in range(blocks):
        if pool and i == blocks // 2:
            nodes.append(_node("pool", "maxpool2d", [prev], {"kernel": 2}))
            prev = "pool"
        mid = rng.choice([c, 2 * c, max(1, c // 2)])
        params += [(f"r{i}_w1", (mid, c, 3, 3)), (f"r{i}_b1", (mid,)), (f"r{i}_w2", (c, mid, 3, 3)), (f"r{i}_b2", (c,))]
        nodes += [_node(f"r{i}_c1", "conv2d", [prev, f"r{i}_w1", f"r{i}_b1"], {"padding": 1}),
                  _node(f"r{i}_a1", rng.choice(["relu", "tanh"]), [f"r{i}_c1"]),
                  _node(f"r{i}_c2", "conv2d", [f"r{i}_a1", f"r{i}_w2", f"r{i}_b2"], {"padding": 1}),
                  _node(f"r{i}_add", "add", [f"r{i}_c2", prev]),
                  _node(f"r{i}_out", "relu", [f"r{i}_add"])]
        prev = f"r{i}_out"
    nodes += [_node("gap", "mean", [prev], {"axis": [2, 3]}),
              _node("logits", "linear", ["gap", "fc_w", "fc_b"]),
              _node("loss", "mse", ["logits", "target"])]
    lines = _header(f"resnet{blocks}_s{seed}" + ("" if pool else "_flat"), seed,
                    [("image", (n, 3, h, h)), ("target", (n, k))], params)
    return "\n".join(lines + nodes + ["output: loss"]) + "\n"


def transformer_config(blocks=2, seed=0):
    """A transformer of single-head blocks: q, k, v projections, softmax attention, output
    projection and residual add, then a relu/gelu MLP and a second residual add."""
    rng = random.Random(seed)
    t, d = rng.choice([4, 6, 8, 12]), rng.choice([4, 6, 8, 12, 16])
    params, nodes, prev = [("w_in", (d, d))], [_node("x0", "linear", ["tokens", "w_in"])], "x0"
    for i in range(blocks):
        f = d * rng.choice([2, 3, 4])
        p = f"b{i}_"
        params += [(p + "wq", (d, d)), (p + "wk", (d, d)), (p + "wv", (d, d)), (p + "wo", (d, d)),
                   (p + "wfc", (d, f)), (p + "wpr", (f, d))]
        nodes += [_node(p + "q", "linear", [prev, p + "wq"]),
                  _node(p + "k", "linear", [prev, p + "wk"]),
                  _node(p + "v", "linear", [prev, p + "wv"]),
                  _node(p + "kt", "transpose", [p + "k"], {"axes": [1, 0]}),
                  _node(p + "scores", "matmul", [p + "q", p + "kt"]),
                  _node(p + "probs", "softmax", [p + "scores"]),
                  _node(p + "ctx", "matmul", [p + "probs", p + "v"]),
                  _node(p + "attn", "linear", [p + "ctx", p + "wo"]),
                  _node(p + "res", "add", [prev, p + "attn"]),
                  _node(p + "fc", "linear", [p + "res", p + "wfc"]),
                  _node(p + "act", rng.choice(["relu", "gelu"]), [p + "fc"]),
                  _node(p + "proj", "linear", [p + "act", p + "wpr"]),
                  _node(p + "out", "add", [p + "res", p + "proj"])]
        prev = p + "out"
    nodes.append(_node("loss", "mse", [prev, "target"]))
    lines = _header(f"transformer{blocks}_s{seed}", seed, [("tokens", (t, d)), ("target", (t, d))], params)
    return "\n".join(lines + nodes + ["output: loss"]) + "\n"


def resnet50_config(stages=(3, 4, 6, 3), width=4, seed=0):
    """ResNet-50's shape: a stem, bottleneck blocks (1x1 reduce, 3x3, 1x1 expand, a projection
    on the first block of each stage, add, relu) in stages of [3, 4, 6, 3] with stride 2 between
    stages, global pooling and a linear head; channels scaled down (`width` for ResNet-50's 64) so
    shapes stay cheap. `seed` only names the config: the network has no random part."""
    n, h = 1, 64
    c = width  # ResNet-50's proportions: stem 64 channels, then 64 -> 256, 128 -> 512, ...
    params = [("stem_w", (c, 3, 3, 3)), ("stem_b", (c,))]
    nodes = [_node("stem", "conv2d", ["image", "stem_w", "stem_b"], {"padding": 1, "stride": 2}),
             _node("stem_a", "relu", ["stem"]), _node("stem_p", "maxpool2d", ["stem_a"], {"kernel": 2})]
    prev, c_in = "stem_p", c
    for s, count in enumerate(stages):
        mid = width * 2 ** s
        out = 4 * mid
        for b in range(count):
            p = f"s{s}b{b}_"
            stride = 2 if (b == 0 and s > 0) else 1
            params += [(p + "w1", (mid, c_in, 1, 1)), (p + "b1", (mid,)), (p + "w2", (mid, mid, 3, 3)),
                       (p + "b2", (mid,)), (p + "w3", (out, mid, 1, 1)), (p + "b3", (out,))]
            nodes += [_node(p + "c1", "conv2d", [prev, p + "w1", p + "b1"]),
                      _node(p + "a1", "relu", [p + "c1"]),
                      _node(p + "c2", "conv2d", [p + "a1", p + "w2", p + "b2"], {"padding": 1, "stride": stride}),
                      _node(p + "a2", "relu", [p + "c2"]),
                      _node(p + "c3", "conv2d", [p + "a2", p + "w3", p + "b3"])]
            skip = prev
            if b == 0:
                params += [(p + "wp", (out, c_in, 1, 1))]
                nodes.append(_node(p + "proj", "conv2d", [prev, p + "wp"], {"stride": stride}))
                skip = p + "proj"
            nodes += [_node(p + "add", "add", [p + "c3", skip]), _node(p + "out", "relu", [p + "add"])]
            prev, c_in = p + "out", out
    k = 10
    params += [("fc_w", (c_in, k)), ("fc_b", (k,))]
    nodes += [_node("gap", "mean", [prev], {"axis": [2, 3]}),
              _node("logits", "linear", ["gap", "fc_w", "fc_b"]),
              _node("loss", "mse", ["logits", "target"])]
    lines = _header("resnet50_like", seed, [("image", (n, 3, h, h)), ("target", (n, k))], params)
    return "\n".join(lines + nodes + ["output: loss"]) + "\n"


def random_training_dag(n_joint, seed=0, skip=0.35):
    """A random training DAG of about `n_joint` joint nodes: a forward DAG of n_joint / 2.5 ops
    (each reads the one before it and, with probability `skip`, an earlier one), a gradient node
    per op that reads its consumers' gradient nodes and one or two residuals of their VJPs, and
    for about half the ops a parameter-gradient node (0 bytes, resident) reading the op's
    gradient and its input. Sizes and costs are drawn per op."""
    rng = random.Random(seed)
    m = max(3, round(n_joint / 2.5))
    f = [f"f{i}" for i in range(m)]
    j = nx.DiGraph(name=f"random{n_joint}_s{seed}", output=f[-1])
    inputs = {}
    for i, v in enumerate(f):
        ins = [f[i - 1]] if i else []
        if i >= 2 and rng.random() < skip:
            ins.append(f[rng.randrange(0, i - 1)])
        inputs[v] = ins
        j.add_node(v, kind="forward", ref=v, cost=float(rng.randint(1, 100)), ram=4 * rng.randint(1, 256))
        for u in ins:
            j.add_edge(u, v)
    consumers = {v: [w for w in f if v in inputs[w]] for v in f}
    bwd = []
    for i in reversed(range(m)):
        v = f[i]
        b = "grad:" + v
        cons = consumers[v]
        cost = sum(j.nodes[w]["cost"] for w in cons) or j.nodes[v]["cost"]
        j.add_node(b, kind="backward", ref=v, cost=float(cost), ram=j.nodes[v]["ram"])
        bwd.append(b)
        if not cons:
            j.add_edge(v, b)
        pool = sorted({u for w in cons for u in inputs[w] + [w]}, key=f.index)
        for w in cons:
            j.add_edge("grad:" + w, b)
        for r in rng.sample(pool, min(len(pool), rng.choice([1, 2]))):
            j.add_edge(r, b)
        if rng.random() < 0.5:  # the op's parameter: its gradient reads dL/dv and the op's input
            pb = f"grad:p{i}"
            j.add_node(pb, kind="backward", ref=f"p{i}", cost=float(j.nodes[v]["cost"]), ram=0)
            j.add_edge(b, pb)
            for u in inputs[v][:1]:
                j.add_edge(u, pb)
            bwd.append(pb)
    j.graph["order"] = f + bwd
    j.graph["resident"] = 4096
    return j


def content_hash(joint):
    """Hash of what a planner sees: nodes in order with kind, cost and bytes, edges, resident."""
    order = joint.graph["order"]
    doc = [[x, joint.nodes[x]["kind"], joint.nodes[x]["cost"], joint.nodes[x]["ram"],
            sorted(joint.predecessors(x))] for x in order]
    doc.append(joint.graph.get("resident", 0))
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def plain_greedy(joint, ix, budget_managed):
    """Issue 12's floor: from store-all's keep-set, drop kept values one at a time, most bytes
    per unit of recompute cost first; schedule each keep-set with keep_schedule, lazy and eager,
    and stop at the first that fits. Returns (cost, peak_managed, eager, steps) or None."""
    keep = set(ix.residuals)
    order = sorted(keep, key=lambda u: (-(ix.ram[u] / ix.cost[u]) if ix.cost[u] else -float("inf"), ix.pos[u]))

    def best_of(k):
        fits = []
        for eager in (False, True):
            steps = keep_schedule(ix, frozenset(k), eager=eager)
            sim = simulate(joint, steps, check=False)
            if sim.peak_managed_ws <= budget_managed:
                fits.append((sim.cost, sim.peak_managed_ws, eager, steps))
        return min(fits, key=lambda c: c[:3]) if fits else None

    found = best_of(keep)
    for u in order:
        if found is not None:
            return found
        keep.discard(u)
        found = best_of(keep)
    return found


def chain_cost_graph(n, seed=0, uniform=False, plain=False):
    """A plain chain as a cost graph document (networkx node-link JSON, README "Cost graphs from
    other tools"): forward nodes f0 -> f1 -> ... -> f{n-1}, and gradient nodes b{n-1} -> ... -> b0,
    where b_i reads f_i and b_{i+1}. Sizes and costs are drawn per node from a seeded generator
    (`uniform`: all alike). `plain`: no `backward` flags (Checkmate's form: ckpt finds the loss)."""
    rng = random.Random(seed)

    def draw(lo, hi):
        return lo if uniform else rng.randint(lo, hi)

    nodes = [{"id": f"f{i}", "cost_cpu": float(draw(1, 100)), "cost_ram": 4 * draw(16, 4096)} for i in range(n)]
    for i in range(n):
        b = {"id": f"b{i}", "cost_cpu": float(draw(1, 200)), "cost_ram": nodes[i]["cost_ram"]}
        if not plain:
            b["backward"] = True
        nodes.append(b)
    links = [(f"f{i}", f"f{i + 1}") for i in range(n - 1)] + [(f"b{i + 1}", f"b{i}") for i in range(n - 1)]
    links += [(f"f{i}", f"b{i}") for i in range(n)]
    return {"graph": {"name": f"chain{n}{'u' if uniform else ''}_s{seed}"}, "nodes": nodes,
            "links": [{"source": u, "target": v} for u, v in links]}
