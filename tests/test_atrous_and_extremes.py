"""Dilated convolution and the max/min reductions from a config: `ckpt check` holds the model's
gradients to central differences, every strategy runs with managed bytes equal to the prediction
(and gradients bitwise equal to store-all's), the allocator stays within the model's peak with
workspace; a bad attr is one line and exit 2."""

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
