"""Costs per gradient input (issue 12): every op states its VJP's FLOPs for each input, the joint
graph charges a gradient node for the products it computes, and hand counts for linear, matmul and
conv2d."""

import pytest

from ckpt.model import build_graph, lower, parse_config
from ckpt.model.joint import forward_features, gradient_features, predict
from ckpt.ops import REGISTRY, iter_buffer

OPS = sorted(REGISTRY)


def _example(op):
    attrs = dict(op.attrs)
    attrs.update(op.example.get("attrs", {}))
    shapes = [tuple(s) for s in op.example["shapes"]]
    return shapes, tuple(op.shape(shapes, attrs)), attrs


@pytest.mark.parametrize("name", [n for n in OPS if REGISTRY[n].differentiable])
def test_every_op_states_vjp_flops(name):
    op = REGISTRY[name]
    assert op.vjp_flops is not None, f"{name} does not state the cost of its VJPs"
    shapes, out, attrs = _example(op)
    for i in range(len(shapes)):
        f = op.vjp_flops(i, shapes, out, attrs)
        assert isinstance(f, int) and f >= 0, (name, i, f)
        if i in op.int_inputs:
            assert f == 0  # labels take no gradient


def test_linear_hand_count():
    op = REGISTRY["linear"]
    M, K, N = 6, 4, 5
    s, o = [(2, 3, K), (K, N), (N,)], (2, 3, N)
    assert op.vjp_flops(0, s, o, {}) == 2 * M * N * K  # dX = g W^T
    assert op.vjp_flops(1, s, o, {}) == 2 * M * N * K  # dW = X^T g
    assert op.vjp_flops(2, s, o, {}) == M * N  # db = column sums of g


def test_matmul_hand_count():
    op = REGISTRY["matmul"]
    # batched with B broadcast: dA is one GEMM per batch element; dB the same GEMMs and then the
    # sum of the 2 per-batch (K x N) products
    s, o = [(2, 3, 4), (4, 5)], (2, 3, 5)
    assert op.vjp_flops(0, s, o, {}) == 2 * 2 * 3 * 5 * 4
    assert op.vjp_flops(1, s, o, {}) == 2 * 2 * 3 * 5 * 4 + 2 * 4 * 5
    s, o = [(7, 3), (3, 9)], (7, 9)
    assert op.vjp_flops(0, s, o, {}) == op.vjp_flops(1, s, o, {}) == 2 * 7 * 9 * 3


def test_conv2d_hand_count():
    op = REGISTRY["conv2d"]
    N, C, H, W, OC, KH, KW = 2, 3, 8, 8, 4, 3, 3
    attrs = {"stride": 1, "padding": 1}
    s = [(N, C, H, W), (OC, C, KH, KW), (OC,)]
    o = op.shape(s, attrs)
    OH, OW = o[2:]
    gemm = 2 * N * OH * OW * C * KH * KW * OC
    assert op.vjp_flops(0, s, o, attrs) == gemm
    assert op.vjp_flops(1, s, o, attrs) == gemm
    assert op.vjp_flops(2, s, o, attrs) == N * OC * OH * OW


MLP = """
name: costs
dims: {B: 8, D: 16}
inputs:
  x: {shape: [B, D], init: normal}
  y: {shape: [B, D], init: normal}
params:
  W: {shape: [D, D], init: xavier}
  b: {shape: [D], init: zeros}
nodes:
  - {name: h, op: linear, inputs: [x, W, b]}
  - {name: a, op: relu, inputs: [h]}
  - {name: loss, op: mse, inputs: [a, y]}
output: loss
"""


def test_gradient_nodes_are_charged_their_own_vjp():
    j = lower(build_graph(parse_config(MLP)))
    B, D = 8, 16
    # the bias gradient is a reduction, not the GEMM the whole linear costs
    assert j.nodes["grad:b"]["flops"] == B * D
    assert j.nodes["grad:W"]["flops"] == 2 * B * D * D
    assert j.nodes["grad:h"]["flops"] == REGISTRY["relu"].vjp_flops(0, [(B, D)], (B, D), {})
    # and its cost is the weights applied to that reduction (on arrays this small the per-call
    # terms dominate, so it need not come out below the forward's: that is the weights' call)
    feats = j.nodes["grad:b"]["features"]
    assert feats["linear:vjp"][:2] == (B * D, 4 * (B * D + D)) and feats["linear:vjp"][2] == 1
    assert j.nodes["grad:b"]["cost"] == predict(feats)
    assert j.nodes["grad:b"]["cost"] < j.nodes["grad:W"]["cost"]


def test_costs_follow_the_weights():
    """A node's cost is the weights applied to what it computes: per FLOP, per byte, per call;
    an op the table lacks takes the all-ops weights."""
    g = build_graph(parse_config(MLP))
    feats = forward_features(g, "h")
    B, D = 8, 16
    # reads x, W and b, writes the output; its workspace (the bias added through numpy's buffer) is
    # written and read back
    moved = 4 * (B * D + D * D + D + B * D) + 2 * iter_buffer(B * D, 4)
    assert feats == {"linear:forward": (2 * B * D * D + B * D, moved, 1)}
    w = {"linear:forward": (2.0, 3.0, 5.0), "*:forward": (7.0, 0.0, 0.0)}
    f, b, c = feats["linear:forward"]
    assert predict(feats, w) == 2.0 * f + 3.0 * b + 5.0
    assert predict(forward_features(g, "a"), w) == 7.0 * B * D
    grad = gradient_features(g, "h", [("a", 0)])
    assert grad["relu:vjp"][0] == 2 * B * D and grad["gradient"][2] == 1
    assert predict(grad, {"*:vjp": (1.0, 0.0, 0.0)}) == 2 * B * D


# ---- the cache term of the predicted step time (simulate.cache_bytes) ----------------------------
def test_cache_bytes_counts_what_an_lru_cache_cannot_hold():
    """A chain a1 -> a2 -> a3 of 100-byte values under store-all: each forward read comes right
    after its write, each gradient reads a value (and the gradient before it) written some way
    back. Counted by hand for caches of 0, 250 and 1000 bytes."""
    from ckpt.plan import JointIndex, store_all
    from ckpt.simulate import cache_bytes
    from helpers import uniform_chain_joint

    j = uniform_chain_joint(3, size=100)
    steps = store_all(JointIndex(j)).steps
    reads = sum(j.in_degree(x) for k, x in steps if k == "compute")
    assert cache_bytes(j, steps, 0) == 100 * reads  # no cache: every read from memory
    assert cache_bytes(j, steps, 10 ** 9) == 0  # all of it fits
    # traffic: a1 [100] a2 (reads a1 at 0: hit) [200] a3 (a2 hit) [300] grad:a3 (a3 hit) [400]
    # grad:a2 reads grad:a3 (hit) and a2, last touched at 300 - 100... by hand at 250 bytes:
    # grad:a2: a2 was read at traffic 200 (by a3), now 400: d = 200, miss = min(100, 200 + 100 - 250) = 50
    #          traffic 450 (the miss) + 100 (its output) = 550
    # grad:a1: grad:a2 hit; a1 read at 100, d = 450: miss 100; traffic 650, then its output: 750
    # grad:x:  grad:a1 hit
    assert cache_bytes(j, steps, 250) == 150


def test_a_recomputed_value_is_read_from_cache_where_a_stored_one_is_not():
    """A chain whose odd values are small (10 bytes) and even ones large (100): store-all's
    gradients read the large values long after the forward wrote them, from memory; a plan that
    keeps the small ones and recomputes each large one right before its gradient reads it from
    the cache. The predicted time adds the weight per byte to the cost; no cache term without
    the graph's weights (a cost graph)."""
    from ckpt.plan import JointIndex, store_all
    from ckpt.simulate import cache_bytes, simulate
    from helpers import uniform_chain_joint

    j = uniform_chain_joint(6, size=100)
    for k in (1, 3, 5):
        j.nodes[f"a{k}"]["ram"] = j.nodes[f"grad:a{k}"]["ram"] = 10
    sa = store_all(JointIndex(j)).steps
    steps = [("compute", f"a{k}") for k in range(1, 7)] + [("free", "a2"), ("free", "a4")]
    steps += [("compute", "grad:a6"), ("free", "a6"), ("compute", "grad:a5"), ("free", "grad:a6"), ("free", "a5"),
              ("compute", "a4"), ("compute", "grad:a4"), ("free", "grad:a5"), ("free", "a4"),
              ("compute", "grad:a3"), ("free", "grad:a4"), ("free", "a3"),
              ("compute", "a2"), ("compute", "grad:a2"), ("free", "grad:a3"), ("free", "a2"),
              ("compute", "grad:a1"), ("free", "grad:a2"), ("free", "a1"), ("compute", "grad:x"), ("free", "grad:a1")]
    assert cache_bytes(j, steps, 150) < cache_bytes(j, sa, 150)
    j.graph["cache"] = (150, 0.5)
    for s in (sa, steps):
        sim = simulate(j, s)
        assert sim.time == sim.cost + 0.5 * cache_bytes(j, s, 150)
    del j.graph["cache"]
    assert simulate(j, steps).time == simulate(j, steps).cost


def test_model_graphs_carry_the_fitted_cache_term_and_measured_costs_drop_it():
    from ckpt.model.cost_weights import CACHE
    from ckpt.session import load_model, with_costs

    m = load_model("configs/seed_example.yaml")
    assert m.joint.graph["cache"] == CACHE
    measured = with_costs(m, {x: 1e-6 for x in m.joint.nodes})  # seconds: no ns-per-byte term
    assert "cache" not in measured.joint.graph
    assert "cache" in m.joint.graph


def test_plans_do_not_depend_on_the_cache_term():
    """The planners minimise the cost; the cache term only predicts the step time."""
    from ckpt.plan import plan
    from ckpt.session import load_model

    m = load_model("configs/gpt_small.yaml")
    sa, sa_sim = plan(m.joint, "store-all", ix=m.index)
    budget = int(0.7 * sa_sim.peak_ws)
    with_term = plan(m.joint, "budget", budget, ix=m.index)
    m.joint.graph["cache"] = (m.joint.graph["cache"][0], 0.0)
    without = plan(m.joint, "budget", budget, ix=m.index)
    assert with_term[0].steps == without[0].steps and with_term[1].cost == without[1].cost
    assert without[1].time == without[1].cost


def test_fit_cache_recovers_the_term_that_made_the_overheads():
    """Overheads made by a known capacity and weight, from plans that read different bytes from
    memory at each capacity: the fit finds that pair on its grid."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
    import calibrate_costs as cc

    caps = cc.CAPACITIES
    weights = {"x:forward": (0.0, 0.0, 1.0)}  # a node's cost: 1 ns per call
    true_k, true_w = 3, 0.35
    plans = []
    for n, (cs, cp) in enumerate([(1000, 1300), (1000, 1050), (2000, 2600), (500, 700)]):
        ms = [4000 - 300 * k + 50 * n for k in range(len(caps))]  # store-all: more misses
        mp = [900 + 150 * ((k * (n + 2)) % 5) for k in range(len(caps))]  # each plan its own pattern
        measured = (cp + true_w * mp[true_k]) / (cs + true_w * ms[true_k]) - 1.0
        plans.append({"case": f"p{n}", "features": [{"x:forward": (0, 0, cs)}, {"x:forward": (0, 0, cp)}],
                      "missed": [ms, mp], "measured": measured})
    cap, w = cc.fit_cache(plans, weights)
    assert cap == caps[true_k] and w == pytest.approx(true_w, abs=0.005)
