"""Reference solvers and graph builders for the tests (exhaustive search, Revolve's model)."""

import heapq
import itertools
import math
import random

import networkx as nx
import numpy as np

from ckpt.model import build_graph, lower, parse_config


def exhaustive_cost(joint, budget_managed):
    """Least compute cost over every schedule of the joint graph in Checkmate's convention (the
    planners'): nodes are computed for the first time in the graph's topological order, forward
    nodes may be recomputed at any time, gradient nodes run once. Dijkstra over (live set, number
    of nodes computed so far); tiny graphs only."""
    order = joint.graph["order"]
    n = len(order)
    bit = {x: 1 << i for i, x in enumerate(order)}
    preds = [sum(bit[u] for u in joint.predecessors(x)) for x in order]
    ram = [joint.nodes[x]["ram"] for x in order]
    ws = [joint.nodes[x].get("ws", 0) for x in order]  # held only while the node is computed
    cost = [joint.nodes[x]["cost"] for x in order]
    is_b = [joint.nodes[x]["kind"] == "backward" for x in order]
    dist = {(0, 0): 0.0}
    tie = itertools.count()
    heap = [(0.0, next(tie), 0, 0)]
    while heap:
        d, _, live, front = heapq.heappop(heap)
        if dist.get((live, front), math.inf) < d:
            continue
        if front == n:
            return d
        used = sum(ram[i] for i in range(n) if live >> i & 1)
        for i in range(n):
            b = 1 << i
            if live & b:
                nxt = (live & ~b, front)
                nd = d
            elif i > front or (i < front and is_b[i]):
                continue
            elif preds[i] & live != preds[i] or used + ram[i] + ws[i] > budget_managed:
                continue
            else:
                nxt = (live | b, front + 1 if i == front else front)
                nd = d + cost[i]
            if nd < dist.get(nxt, math.inf):
                dist[nxt] = nd
                heapq.heappush(heap, (nd, next(tie), *nxt))
    return math.inf


def random_model(seed, n_ops=5):
    """A small random DAG of elementwise ops and reductions with mixed sizes, as a YAML config."""
    rng = random.Random(seed)
    lines = ["name: random", "dtype: float64", f"seed: {seed}", "inputs:",
             "  x: {shape: [6], init: normal, grad: true}", "  w: {shape: [1], init: normal, grad: true}",
             "nodes:"]
    shapes = {"x": 6, "w": 1}
    names = ["x", "w"]
    for k in range(n_ops):
        name = f"n{k}"
        kind = rng.choice(["unary", "binary", "binary", "reduce"])
        if kind == "unary":
            a = rng.choice(names)
            op = rng.choice(["sin", "tanh", "exp", "sigmoid"])
            lines.append(f"  - {{name: {name}, op: {op}, inputs: [{a}]}}")
            shapes[name] = shapes[a]
        elif kind == "binary":
            a, b = rng.choice(names), rng.choice(names)
            op = rng.choice(["add", "mul", "sub"])
            lines.append(f"  - {{name: {name}, op: {op}, inputs: [{a}, {b}]}}")
            shapes[name] = max(shapes[a], shapes[b])
        else:
            a = rng.choice(names)
            lines.append(f"  - {{name: {name}, op: mean, inputs: [{a}], attrs: {{keepdims: true}}}}")
            shapes[name] = 1
        names.append(name)
    # the loss reads the last two values so that most of the graph feeds it
    lines.append(f"  - {{name: prod, op: mul, inputs: [{names[-1]}, {names[-2]}]}}")
    lines.append("  - {name: loss, op: sum, inputs: [prod]}")
    lines.append("output: loss")
    return "\n".join(lines) + "\n"


def random_joint(seed, n_ops=5):
    return lower(build_graph(parse_config(random_model(seed, n_ops))))


def revolve_count(l, s):
    """Griewank & Walther's binomial optimum: forward steps to reverse l steps with s slots."""
    r = 1
    while math.comb(s + r, s) < l:
        r += 1
    return r * l - math.comb(s + r, s + 1)


def revolve_bruteforce(l, s):
    """The same optimum by search over Revolve's actions: advance (cost 1), take a snapshot into a
    free slot, restore one, drop one, reverse step r when the current state is r-1 (not counted).
    State 0 (the input) always holds one of the s slots."""
    start = (frozenset([0]), 0, l)  # (snapshots, current state or None, steps left to reverse)
    dist = {start: 0}
    tie = itertools.count()
    heap = [(0, next(tie), start)]
    while heap:
        d, _, st = heapq.heappop(heap)
        if dist[st] < d:
            continue
        snaps, cur, r = st
        if r == 0:
            return d
        moves = []
        if cur is not None and cur < r - 1:
            moves.append((1, (snaps, cur + 1, r)))
        if cur is not None and cur == r - 1:
            moves.append((0, (snaps, None, r - 1)))
        if cur is not None and cur not in snaps and len(snaps) < s:
            moves.append((0, (snaps | {cur}, cur, r)))
        for c in snaps:
            if c < r:
                moves.append((0, (snaps, c, r)))
            if c != 0:
                moves.append((0, (snaps - {c}, cur, r)))
        for cost, nxt in moves:
            if d + cost < dist.get(nxt, math.inf):
                dist[nxt] = d + cost
                heapq.heappush(heap, (d + cost, next(tie), nxt))
    return math.inf


def uniform_chain_joint(l, size=1):
    """Revolve's chain as a joint graph: reversing step k reads a_{k-1}; values and gradients
    take one unit each; the input is resident."""
    j = nx.DiGraph(name="chain", output=f"a{l}")
    fwd = [f"a{k}" for k in range(1, l + 1)]
    for k, a in enumerate(fwd):
        j.add_node(a, kind="forward", ref=a, cost=1.0, ram=size)
        if k:
            j.add_edge(fwd[k - 1], a)
    bwd = []
    for k in range(l, 0, -1):
        b = f"grad:a{k}"
        j.add_node(b, kind="backward", ref=f"a{k}", cost=0.0, ram=size)
        bwd.append(b)
        if k == l:
            j.add_edge(f"a{l}", b)
        else:
            j.add_edge(f"grad:a{k + 1}", b)
            j.add_edge(f"a{k}", b)
    j.add_node("grad:x", kind="backward", ref="x", cost=0.0, ram=0)
    j.add_edge("grad:a1", "grad:x")
    j.graph["order"] = fwd + bwd + ["grad:x"]
    j.graph["resident"] = 0
    return j


def invoke(args):
    """`ckpt ARGS` in-process; a crash (anything but a clean exit) fails the test with its repr."""
    from click.testing import CliRunner

    from ckpt.cli import cli
    res = CliRunner().invoke(cli, args)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res


def assert_one_line(res, code=2, needle=None):
    """The promise for bad input: the exit code, no traceback, and for exit 2 exactly one line."""
    out = res.output.strip()
    assert res.exit_code == code, out
    assert "Traceback" not in out
    if code == 2:
        assert out.count("\n") == 0 and out.startswith("ckpt: error:"), out
    if needle:
        assert needle in out, out


def gpu_reason():
    """Why the GPU tests cannot run here (no cupy, no device), or None when they can."""
    from ckpt.backend import get_backend
    from ckpt.errors import ConfigError
    try:
        get_backend("cuda")
    except ConfigError as e:
        return str(e)
    return None


def saved_residual(op, ins, attrs):
    """The residual op `op` reads as its last input (Op.residual), computed on numpy from `ins`, as
    the model graph's residual node computes it."""
    from ckpt.ops import REGISTRY
    rop, positions, rattrs = op.residual([np.shape(a) for a in ins], attrs)
    res = REGISTRY[rop]
    return res, np.asarray(res.forward(np, [ins[k] for k in positions], {**res.attrs, **rattrs}))
