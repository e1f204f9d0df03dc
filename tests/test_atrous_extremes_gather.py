"""Dilated convolution, the max/min reductions and gather from a config: `ckpt check` holds the
model's gradients to central differences, every strategy runs with managed bytes equal to the
prediction (and gradients bitwise equal to store-all's), the allocator stays within the model's
peak with workspace; a bad attr or label is one line and exit 2."""

import numpy as np
import pytest

from ckpt.backend import get_backend
from ckpt.plan import plan, smallest_peak
from ckpt.session import load_model, run_plan
from helpers import assert_one_line, invoke
from test_workspace import _slack

CONFIG = """
name: atrous
dtype: float64
seed: 0
dims: {N: 2, C: 3, H: 9, F: 4}
inputs:
  x: {shape: [N, C, H, H], init: normal}
  y: {shape: [N, F], init: normal}
params:
  w1: {shape: [F, C, 3, 3]}
  b1: {shape: [F], init: zeros}
  w2: {shape: [F, F, 3, 2]}
  w3: {shape: [F, F, 2, 2]}
nodes:
  - {name: c1, op: conv2d, inputs: [x, w1, b1], attrs: {padding: 2, dilation: 2}}
  - {name: r1, op: tanh, inputs: [c1]}
  - {name: c2, op: conv2d, inputs: [r1, w2], attrs: {stride: 2, padding: 1, dilation: 3}}
  - {name: c3, op: conv2d, inputs: [r1, w3], attrs: {padding: 4, dilation: 4}}
  - {name: gmax, op: amax, inputs: [c3], attrs: {axis: [2, 3]}}
  - {name: rows, op: amax, inputs: [c2], attrs: {axis: 3, first: true}}
  - {name: low, op: amin, inputs: [rows], attrs: {axis: -1, keepdims: true}}
  - {name: lsum, op: sum, inputs: [low], attrs: {axis: [2]}}
  - {name: feat, op: add, inputs: [gmax, lsum]}
  - {name: loss, op: mse, inputs: [feat, y]}
output: loss
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "atrous.yaml"
    path.write_text(CONFIG)
    return str(path)


def test_check_passes(config):
    res = invoke(["check", config])
    assert res.exit_code == 0 and "passed" in res.output, res.output


def test_every_strategy_is_exact_to_the_byte(config):
    m = load_model(config)
    backend = get_backend("cpu")
    sa, sa_sim = plan(m.joint, "store-all", ix=m.index)
    ref = run_plan(m, sa.steps, backend, n_steps=0)
    low, _ = smallest_peak(m.joint, m.index, time_limit=5)
    cases = [("store-all", None), ("sqrt-n", None), ("budget", low), ("budget", (low + sa_sim.peak_ws) // 2)]
    recomputed = False
    for strategy, budget in cases:
        p, sim = plan(m.joint, strategy, budget, time_limit=5, ix=m.index)
        r = run_plan(m, p.steps, backend, n_steps=0)
        assert r.measured_managed == sim.peak_managed, (strategy, budget)
        assert r.allocator_peak <= sim.peak_ws + _slack(m, p.steps), (strategy, budget)
        assert all(np.array_equal(r.grads[k], ref.grads[k]) for k in ref.grads), (strategy, budget)
        recomputed |= sim.recomputes > 0
    assert recomputed


@pytest.mark.parametrize("old,new,needle", [
    ("padding: 2, dilation: 2}", "padding: 2, dilation: 0}", "conv2d attr 'dilation' must be an integer >= 1"),
    ("padding: 2, dilation: 2}", "padding: 2, dilation: -2}", "conv2d attr 'dilation' must be an integer >= 1"),
    ("padding: 2, dilation: 2}", "padding: 2, dilation: 1.5}", "conv2d attr 'dilation' must be an integer >= 1"),
    ("padding: 4, dilation: 4}", "padding: 0, dilation: 9}", "kernel is larger than the padded input (dilation 9)"),
    ("axis: 3, first: true}", "axis: [2, 3], first: true}", "first takes the first max along one axis"),
    ("axis: 3, first: true}", "axis: 3, first: 1}", "amax attr 'first' must be true or false"),
    ("axis: -1, keepdims: true}", "axis: 5, keepdims: true}", "amin: axis 5 is out of range"),
])
def test_bad_attrs_are_one_line(tmp_path, old, new, needle):
    assert old in CONFIG
    path = tmp_path / "bad.yaml"
    path.write_text(CONFIG.replace(old, new))
    for cmd in ("run", "plan"):
        assert_one_line(invoke([cmd, str(path)]), 2, needle)


GATHER = """
name: gather
dtype: float64
seed: 0
inputs:
  x: {shape: [4, 5], init: normal}
  actions: {shape: [4, 2], dtype: int64, init: randint, high: 6}
  adv: {shape: [4, 2], init: normal}
params:
  w: {shape: [5, 6]}
nodes:
  - {name: logits, op: linear, inputs: [x, w]}
  - {name: logp, op: log_softmax, inputs: [logits]}
  - {name: taken, op: gather, inputs: [logp, actions]}
  - {name: weighted, op: mul, inputs: [taken, adv]}
  - {name: loss, op: mean, inputs: [weighted]}
output: loss
"""


@pytest.fixture
def gather_config(tmp_path):
    path = tmp_path / "gather.yaml"
    path.write_text(GATHER)
    return str(path)


def test_gather_checks_and_is_exact(gather_config):
    res = invoke(["check", gather_config])
    assert res.exit_code == 0 and "passed" in res.output, res.output
    m = load_model(gather_config)
    for strategy in ("store-all", "sqrt-n"):
        p, sim = plan(m.joint, strategy, ix=m.index)
        r = run_plan(m, p.steps, get_backend("cpu"), n_steps=0)
        assert r.measured_managed == sim.peak_managed
        assert r.allocator_peak <= sim.peak_ws + _slack(m, p.steps)


@pytest.mark.parametrize("old,new,needle", [
    ("high: 6}", "high: 7}", "gather reads labels below 6, but 'actions' draws them below high 7"),
    ("init: randint, high: 6}", "value: [[0, 1], [2, 6], [1, 1], [0, 0]]}", "label 6 is outside 0..5"),
    ("init: randint, high: 6}", "value: [[0, 1], [2, -1], [1, 1], [0, 0]]}", "label -1 is outside 0..5"),
    ("actions: {shape: [4, 2]", "actions: {shape: [3, 2]", "gather: needs x (..., n) and integer indices (..., k)"),
    ("adv: {shape: [4, 2], init: normal}\n", "adv: {shape: [4, 2], init: normal}\n  f: {shape: [4, 2], init: normal}\n",
     None),
])
def test_bad_gather_is_one_line(tmp_path, old, new, needle):
    path = tmp_path / "bad.yaml"
    text = GATHER.replace(old, new)
    if needle is None:  # float positions: the op takes integer labels
        text = text.replace("inputs: [logp, actions]", "inputs: [logp, f]")
        needle = "gather input 2 ('f') must hold integer labels"
    path.write_text(text)
    assert_one_line(invoke(["run", str(path)]), 2, needle)


STOP = """
name: stop
dtype: float64
seed: 0
inputs:
  x: {shape: [3, 4], init: normal}
params:
  w: {shape: [4, 4]}
  t: {shape: [4, 4]}
nodes:
  - {name: h, op: linear, inputs: [x, w]}
  - {name: target, op: linear, inputs: [x, t]}
  - {name: held, op: stop_gradient, inputs: [target]}
  - {name: shift, op: amax, inputs: [h], attrs: {axis: -1, keepdims: true}}
  - {name: fixed, op: stop_gradient, inputs: [shift]}
  - {name: centred, op: sub, inputs: [h, fixed]}
  - {name: loss, op: mse, inputs: [centred, held]}
output: loss
"""


def test_stop_gradient_holds_a_value_constant(tmp_path):
    """Gradients flow around stop_gradient, never through it: t (read only through it) takes none,
    and w's is that of h - c with c a constant, by central differences (`check`) and by hand."""
    path = tmp_path / "stop.yaml"
    path.write_text(STOP)
    res = invoke(["check", str(path)])
    assert res.exit_code == 0 and "passed" in res.output, res.output
    m = load_model(str(path))
    assert not m.graph.nodes["t"]["grad"] and m.graph.nodes["w"]["grad"]
    p, sim = plan(m.joint, "store-all", ix=m.index)
    r = run_plan(m, p.steps, get_backend("cpu"), n_steps=0)
    assert set(r.grads) == {"w"} and r.measured_managed == sim.peak_managed
    from ckpt.model import leaf_values
    v = leaf_values(m.graph)
    h, target = v["x"] @ v["w"], v["x"] @ v["t"]
    d = h - h.max(-1, keepdims=True) - target
    np.testing.assert_allclose(r.grads["w"], v["x"].T @ (2 * d / d.size), rtol=1e-12)
