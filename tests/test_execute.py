"""The interpreter's checks, now that its decisions are taken when a schedule is compiled: no two
live values share a buffer at any step, a rule that breaks its shape rule is caught, leaves of the
wrong shape are refused with the leaf's name, and a step after the first (which checks every
result's shape) gives the same bits and figures."""

import dataclasses
import os

import numpy as np
import pytest

from ckpt import ops
from ckpt.backend import get_backend
from ckpt.errors import ScheduleError, ShapeError
from ckpt.execute import Executor
from ckpt.plan import plan
from ckpt.session import device_leaves, load_model

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def _mlp():
    return load_model(os.path.join(CONFIGS, "mlp_deep.yaml"), {"B": 3, "D": 5, "L": 3})


def _executor(m, strategy="store-all"):
    p, sim = plan(m.joint, strategy, ix=m.index)
    backend = get_backend("cpu")
    return Executor(m.graph, m.joint, p.steps, backend), device_leaves(m, backend), sim


def _with_rule(monkeypatch, name, **rules):
    monkeypatch.setitem(ops.REGISTRY, name, dataclasses.replace(ops.REGISTRY[name], **rules))


@pytest.mark.parametrize("strategy", ["store-all", "sqrt-n"])
def test_later_steps_give_the_same_bits_and_figures(strategy):
    m = _mlp()
    ex, leaves, sim = _executor(m, strategy)
    first, second = ex.step(leaves), ex.step(leaves)
    assert first.loss == second.loss
    assert list(first.grads) == list(second.grads)
    for k in first.grads:
        assert first.grads[k].tobytes() == second.grads[k].tobytes()
    assert first.timeline == second.timeline == sim.timeline
    assert first.resident == second.resident == sim.resident


def test_leaf_gradients_are_handed_off_in_the_order_computed():
    m = _mlp()
    ex, leaves, _ = _executor(m)
    seen = []
    r = ex.step(leaves, on_value=lambda x, a: seen.append(x))
    order = [x[len("grad:"):] for x in seen if x.startswith("grad:") and x[len("grad:"):] in leaves]
    assert list(r.grads) == order and len(order) == len(set(order)) == 2 * 3  # W and b per layer
    assert all(r.grads[k].shape == leaves[k].shape for k in r.grads)


@pytest.mark.parametrize("rule", ["its input", "a view", "a list", "a result it keeps"])
def test_no_two_live_values_share_a_buffer(monkeypatch, rule):
    # relu as the identity, written three wrong ways and one odd one (a fresh result that the rule
    # also holds: the executor's reference count sees it held, and finds it is no operand); its
    # VJP hands g back (as add's does). A result that is, or views the whole of, an operand the
    # schedule frees right after its step takes that buffer over; any other is copied.
    kept = []
    forward = {"its input": lambda xp, ins, a: ins[0], "a view": lambda xp, ins, a: ins[0][...],
               "a list": lambda xp, ins, a: ins[0].tolist(),
               "a result it keeps": lambda xp, ins, a: kept.append(ins[0].copy()) or kept[-1]}[rule]
    _with_rule(monkeypatch, "relu", forward=forward, vjp=lambda xp, i, g, c: g)
    m = _mlp()
    ex, leaves, sim = _executor(m)
    for _ in range(2):  # the first step checks shapes; the second takes the path of every later one
        held = []
        r = ex.step(leaves, on_value=lambda x, a: held.append(a))
        assert all(type(a) is np.ndarray and (a.base is None or a.flags.c_contiguous and a.nbytes == a.base.nbytes)
                   for a in held)
        taken = 0
        for i, a in enumerate(held):  # `held` keeps every value alive: overlaps are real sharing
            for j in range(i):
                if np.shares_memory(a, held[j]):  # only from a value freed right after this step
                    assert ex.program[j][-4] in ex.program[i][-2], (ex.program[j][-1], ex.program[i][-1])
                    taken += 1
        assert taken >= (3 if rule in ("its input", "a view") else 1)  # h after relu; g after relu's VJP
        assert not any(np.shares_memory(a, v) for a in held for v in leaves.values())
        if rule != "a list":  # numpy reads a list of floats as float64: twice the bytes, measured
            assert r.timeline == sim.timeline


@pytest.mark.parametrize("which", ["forward", "vjp"])
def test_a_rule_that_breaks_its_shape_rule_is_caught(monkeypatch, which):
    if which == "forward":
        _with_rule(monkeypatch, "relu", forward=lambda xp, ins, a: xp.maximum(ins[0], 0).reshape(-1).copy())
    else:
        _with_rule(monkeypatch, "relu", vjp=lambda xp, i, g, c: (g * (c.out > 0))[:, :1].copy())
    m = _mlp()
    ex, leaves, _ = _executor(m)
    with pytest.raises(ScheduleError, match="shape rule says"):
        ex.step(leaves)
    with pytest.raises(ScheduleError, match="shape rule says"):  # a step that failed checks again
        ex.step(leaves)


def test_leaves_of_the_wrong_shape_are_refused_by_name():
    m = _mlp()
    ex, leaves, _ = _executor(m)
    ex.step(leaves)
    bad = dict(leaves, **{"body.1.W": np.zeros((5, 4), np.float32)})
    with pytest.raises(ShapeError, match=r"body\.1\.W: .*shape \(5, 4\).*\(5, 5\)"):
        ex.step(bad)
    with pytest.raises(ShapeError, match=r"body\.2\.b: .*not an array"):
        ex.step(dict(leaves, **{"body.2.b": [0.0] * 5}))
    leaves["body.0.W"].shape = (25,)  # in place, on an array the last step was given
    with pytest.raises(ShapeError, match=r"body\.0\.W"):
        ex.step(leaves)
    leaves["body.0.W"].shape = (5, 5)
    assert ex.step(leaves).loss == ex.step(dict(leaves)).loss
