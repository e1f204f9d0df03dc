"""Every strategy on every example config at several budgets: the measured managed peak equals the
prediction to the byte, stays in the budget, and the gradients are bitwise equal to store-all's."""

import numpy as np
import pytest

from ckpt.backend import get_backend
from ckpt.errors import BudgetError
from ckpt.plan import plan, plan_table, smallest_peak
from ckpt.plan.basic import sqrt_n
from ckpt.session import device_leaves, load_model, run_plan
from helpers import uniform_chain_joint
from ckpt.plan.keepset import JointIndex


def _run(model, steps, leaves):
    return run_plan(model, steps, get_backend("cpu"), n_steps=1, leaves=leaves, warmup=0)


def test_every_strategy_is_exact_and_bitwise_equal(small_config):
    name, path, dims = small_config
    model = load_model(path, dims)
    leaves = device_leaves(model, get_backend("cpu"))
    sa, sa_sim = plan(model.joint, "store-all", ix=model.index)
    ref = _run(model, sa.steps, leaves)
    assert ref.measured_managed == sa_sim.peak_managed
    assert ref.resident == sa_sim.resident
    assert ref.timeline == sa_sim.timeline
    low, _ = smallest_peak(model.joint, model.index, time_limit=5)
    cases = [("sqrt-n", None)] + [("budget", int(low + (sa_sim.peak_ws - low) * f)) for f in (0.0, 0.3, 0.7, 1.0)]
    for strategy, budget in cases:
        p, sim = plan(model.joint, strategy, budget, time_limit=5, ix=model.index)
        r = _run(model, p.steps, leaves)
        assert r.measured_managed == sim.peak_managed, (strategy, budget)
        assert r.timeline == sim.timeline
        if budget is not None:
            assert sim.peak_ws <= budget and r.resident + r.measured_managed <= budget
        assert r.loss == ref.loss
        for k in ref.grads:
            assert np.array_equal(r.grads[k], ref.grads[k]), (strategy, budget, k)


def test_a_plan_that_releases_kept_values_runs_exact_and_bitwise_equal():
    """gpt_small (small dims) at 0.6 (or less) of store-all's managed peak: the budget plan keeps values
    into the backward pass only up to the peak (releases) and recomputes them after; the executor
    measures the bytes the simulator predicts and the gradients are store-all's, bit for bit."""
    from conftest import SMALL, config_path
    model = load_model(config_path("gpt_small"), SMALL["gpt_small"])
    leaves = device_leaves(model, get_backend("cpu"))
    sa, sa_sim = plan(model.joint, "store-all", ix=model.index)
    ref = _run(model, sa.steps, leaves)
    for frac in (0.6, 0.5, 0.45):  # which budget's plan releases depends on where the search starts
        p, sim = plan(model.joint, "budget", sa_sim.resident + int(frac * sa_sim.peak_managed_ws), ix=model.index)
        if p.notes["released"] > 0:
            break
    assert p.notes["released"] > 0
    r = _run(model, p.steps, leaves)
    assert r.measured_managed == sim.peak_managed and r.timeline == sim.timeline
    assert r.loss == ref.loss
    for k in ref.grads:
        assert np.array_equal(r.grads[k], ref.grads[k]), k


def test_gpt_dropout_recompute_reproduces_the_mask():
    from conftest import SMALL, config_path
    model = load_model(config_path("gpt_small"), SMALL["gpt_small"])
    leaves = device_leaves(model, get_backend("cpu"))
    sa, _ = plan(model.joint, "store-all", ix=model.index)
    p, sim = plan(model.joint, "sqrt-n", ix=model.index)
    drops = [x for x in model.index.fwd if x.endswith(".drop")]
    recomputed = [x for kind, x in p.steps if kind == "compute" and x in drops]
    assert len(recomputed) > len(drops)  # some dropout really is recomputed
    a, b = _run(model, sa.steps, leaves), _run(model, p.steps, leaves)
    assert all(np.array_equal(a.grads[k], b.grads[k]) for k in a.grads)


def test_budget_below_any_schedule_is_exit_3_with_the_smallest_peak():
    from conftest import SMALL, config_path
    model = load_model(config_path("mlp_deep"), SMALL["mlp_deep"])
    low, exact = smallest_peak(model.joint, model.index)
    assert exact  # a chain: the DP knows the least peak exactly
    plan(model.joint, "budget", low, ix=model.index)
    with pytest.raises(BudgetError) as e:
        plan(model.joint, "budget", low - 1, ix=model.index)
    assert e.value.exit_code == 3 and e.value.min_peak == low and str(low) in str(e.value)


@pytest.mark.parametrize("n", [16, 64, 144])
def test_sqrt_n_keeps_order_sqrt_n_values_on_a_chain(n):
    ix = JointIndex(uniform_chain_joint(n))
    p = sqrt_n(ix)
    kept = p.notes["checkpoints"]
    assert abs(kept - round(n ** 0.5)) <= 1
    # and its peak grows like sqrt(n), far below store-all's n
    from ckpt.simulate import simulate
    assert simulate(ix.joint, p.steps).peak_managed <= 3 * n ** 0.5 + 4


@pytest.mark.parametrize("name", ["mlp_deep", "unet_small", "resnet_small"])
def test_frontier_is_monotone(name):
    from conftest import SMALL, config_path
    model = load_model(config_path(name), SMALL[name])
    low, _ = smallest_peak(model.joint, model.index, time_limit=5)
    _, sa_sim = plan(model.joint, "store-all", ix=model.index)
    budgets = sorted({int(low + (sa_sim.peak_ws - low) * k / 7) for k in range(8)})
    rows = plan_table(model.joint, ("budget",), None, time_limit=5, ix=model.index, budgets=budgets)
    overheads = [r["overhead"] for r in rows]
    assert all(r["feasible"] for r in rows)
    assert all(b <= a + 1e-12 for a, b in zip(overheads, overheads[1:])), overheads  # budget up, overhead down


def test_plan_with_costs_measured_on_the_cpu():
    """`plan --device cpu`: every joint node timed, and the plans' predicted times are sums of those
    times, so sqrt-n (store-all's computations and more) predicts a longer step."""
    import json
    from click.testing import CliRunner
    from ckpt.cli import cli
    from ckpt.session import measure_costs
    from conftest import SMALL, config_path
    model = load_model(config_path("gpt_small"), SMALL["gpt_small"])
    costs = measure_costs(model, get_backend("cpu"), n_steps=1)
    assert set(costs) == set(model.index.order) and all(c > 0 for c in costs.values())
    res = CliRunner().invoke(cli, ["plan", config_path("gpt_small"), "--device", "cpu", "--json",
                                   "--memory-budget", "0.8x"] + [f"--set={k}={v}" for k, v in SMALL["gpt_small"].items()])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["costs"] == "seconds measured on cpu"
    rows = {r["name"]: r for r in doc["strategies"]}
    assert 0 < rows["store-all"]["cost"] < rows["sqrt-n"]["cost"] < 10
    assert rows["budget"]["peak_bytes"] <= doc["budget_bytes"]
