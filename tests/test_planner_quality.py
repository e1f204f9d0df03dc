"""Planner quality (issue 12): the same plan on a busy machine, a monotone frontier, never worse
than sqrt-n or the plain greedy, and a smallest feasible peak never above the true least peak.
Speed is measured by scripts/bench_planner.py, not here."""

import math
import os
import subprocess
import sys

import pytest

from ckpt.errors import BudgetError
from ckpt.plan import JointIndex, plan, smallest_peak
from ckpt.session import load_model
from conftest import ROOT, SMALL, config_path
from helpers import exhaustive_cost, random_joint

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import planner_graphs as pg  # noqa: E402

# The planners' own safety net; their work limits, not this, should decide every plan here.
TIME_LIMIT = 20.0


def _model(name):
    m = load_model(config_path(name), SMALL[name])
    return m.joint, m.index


def _store_all(joint, ix):
    return plan(joint, "store-all", ix=ix)[1]


def _budget(joint, ix, budget):
    return plan(joint, "budget", budget, time_limit=TIME_LIMIT, ix=ix)


def _hog(seconds):
    """A process spinning on one core, for as long as the plan beside it could take."""
    spin = f"import time\nt = time.time()\nwhile time.time() - t < {seconds}: pass"
    return subprocess.Popen([sys.executable, "-c", spin])


def test_kicks_lead_the_search_out_of_a_held_local_optimum():
    """On a 2-block transformer at 0.45x, improve() stops at +19.9%: recomputed values it chose
    to hold block the keep-set that Checkmate's MILP proves optimal (+6.8%). The kicks (holds
    released, a kept value at the peak swapped) find +7.2%, by counted work alone."""
    from ckpt.plan.basic import sqrt_n, store_all
    from ckpt.plan.search import kicked, search, walk
    joint = pg.joint_of(pg.transformer_config(2, 2))
    ix = JointIndex(joint)
    sa_peak, sa_cost, _ = walk(ix, store_all(ix).steps)
    budget = int(0.45 * sa_peak)
    p = search(ix, budget, starts=[(sqrt_n(ix).notes["keep"], False)])
    assert walk(ix, p.steps)[1] / sa_cost - 1 > 0.19
    k = kicked(ix, budget, p.notes["state"])
    peak, cost, _ = walk(ix, k.steps)
    assert peak <= budget and cost / sa_cost - 1 < 0.073
    # and the budget strategy takes it (the MILP, given it as its cutoff, may still beat it)
    _, sim = plan(joint, "budget", joint.graph.get("resident", 0) + budget, ix=ix, time_limit=1)
    assert sim.cost <= cost


@pytest.mark.parametrize("seed", range(6))
def test_a_released_value_is_off_the_peak_and_recomputed_for_its_later_readers(seed):
    """keep_schedule's releases on random training DAGs, under both hold policies: every schedule
    is valid and computes each gradient once; a released value is not live once its gradient is
    done (until a later step recomputes it); a release after the value's last use changes nothing."""
    import random

    from ckpt.plan.keepset import keep_schedule
    from ckpt.schedule import COMPUTE, validate
    joint = pg.random_training_dag(60, seed)
    ix = JointIndex(joint)
    rng = random.Random(seed)
    dropped = 0  # releases that took a live value off
    for _ in range(20):
        keep = frozenset(u for u in ix.fwd if rng.random() < 0.6)
        hold = rng.choice([ix.fwd_set, frozenset(), frozenset(u for u in ix.fwd if rng.random() < 0.5)])
        release = frozenset((u, rng.choice(ix.bwd)) for u in keep if rng.random() < 0.4)
        steps = keep_schedule(ix, keep, hold=hold, release=release)
        validate(joint, steps)
        assert sorted(x for k, x in steps if k == COMPUTE and x in ix.bwd) == sorted(ix.bwd)
        for u, b in release:
            at = steps.index((COMPUTE, b))
            nxt = next((n for n in range(at + 1, len(steps)) if steps[n][0] == COMPUTE), len(steps))
            mine = [k for k, x in steps[:nxt] if x == u]
            assert not mine or mine[-1] != COMPUTE, (u, b)
            dropped += ("free", u) in steps[at + 1:nxt]
        # a release after everything that could read the value: the same schedule
        late = frozenset((u, ix.bwd[-1]) for u in keep)
        assert keep_schedule(ix, keep, hold=hold, release=late) == keep_schedule(ix, keep, hold=hold)
    assert dropped


def test_released_values_lead_to_checkmates_optimum_on_a_random_dag():
    """A random 41-node training DAG at 0.7x: the keep-set search stops at +48.9% (kicked: +45.1%),
    where Checkmate's MILP proves +12.46% (147 s of HiGHS). Its schedule keeps some values into
    the backward pass only up to the peak and recomputes them after: as (value, gradient) releases
    the search's plans express it exactly, and the release descent finds it."""
    from ckpt.plan.basic import sqrt_n, store_all
    from ckpt.plan.search import Evaluator, State, kicked, search, walk
    joint = pg.random_training_dag(40, 5)
    ix = JointIndex(joint)
    sa_peak, sa_cost, _ = walk(ix, store_all(ix).steps)
    budget = int(0.7 * sa_peak)
    # the optimum, as a plan of the search's kind: keep these, release three of them
    optimum = State(frozenset("f1 f2 f3 f4 f7 f8 f10 f11 f12 f13 f14 f15".split()), ix.fwd_set, frozenset(),
                    frozenset({("f3", "grad:f11"), ("f11", "grad:f10"), ("f10", "grad:f9")}))
    peak, cost, _ = Evaluator(ix, math.inf)(optimum)
    assert peak <= budget and cost / sa_cost - 1 == pytest.approx(0.12462, abs=1e-5)
    p = search(ix, budget, starts=[(sqrt_n(ix).notes["keep"], False)])
    k = kicked(ix, budget, p.notes["state"])
    peak, cost, _ = walk(ix, k.steps)
    assert peak <= budget and cost / sa_cost - 1 == pytest.approx(0.12462, abs=1e-5)


def test_near_the_least_peak_the_overshoot_descent_goes_on_where_the_peak_is_shared():
    """The same DAG at 0.58x (its least peak is 0.55x): with held values, four steps share the
    peak at 6,656 B, no single move lowers it, and the descent by peak stops there, over the
    budget; without, it stops too. Measured by the bytes over the budget summed over all steps, the
    descent without held values goes on to a plan that fits; kicked then plans at +61.2% (the
    search alone: +153%)."""
    from ckpt.plan.basic import sqrt_n, store_all
    from ckpt.plan.search import Overshoot, kicked, release_descent, search, value_classes, walk
    ix = JointIndex(pg.random_training_dag(40, 5))
    sa_peak, sa_cost, _ = walk(ix, store_all(ix).steps)
    budget = int(0.58 * sa_peak)
    classes = value_classes(ix)
    eager = frozenset()
    for hold in (ix.fwd_set, eager):  # (work enough for any descent on 41 nodes)
        assert release_descent(ix, Overshoot(ix, 10**9, budget), classes, hold, budget, overshoot=False) is None
    ev = Overshoot(ix, 10**9, budget)
    s = release_descent(ix, ev, classes, eager, budget, overshoot=True)
    assert s is not None and ev(s)[0] <= budget and ev.over[s] == 0
    p = search(ix, budget, starts=[(sqrt_n(ix).notes["keep"], False)])
    k = kicked(ix, budget, p.notes["state"])
    peak, cost, _ = walk(ix, k.steps)
    assert peak <= budget and cost / sa_cost - 1 < 0.613 < walk(ix, p.steps)[1] / sa_cost - 1


def test_near_the_least_peak_values_kept_up_to_a_high_step_make_plans_cheaper():
    """A 43-node DAG at 0.5x (its least peak: 0.49x): the search and its kicks plan at +117%.
    Keeping a value again, released after a gradient before one of the highest steps, fits where
    keeping it to its last reader does not: kicked plans at +71.4%, with releases."""
    from ckpt.plan.basic import sqrt_n, store_all
    from ckpt.plan.search import Evaluator, improve_releasing, kicked, search, walk
    ix = JointIndex(pg.random_training_dag(40, 4))
    sa_peak, sa_cost, _ = walk(ix, store_all(ix).steps)
    budget = int(0.5 * sa_peak)
    p = search(ix, budget, starts=[(sqrt_n(ix).notes["keep"], False)])
    start = p.notes["state"]
    s, cost = improve_releasing(ix, Evaluator(ix, 10**9), start, budget)
    assert s.release and Evaluator(ix, 10**9)(s)[0] <= budget and cost < walk(ix, p.steps)[1]
    k = kicked(ix, budget, start)
    peak, cost, _ = walk(ix, k.steps)
    assert peak <= budget and cost / sa_cost - 1 < 0.715 and k.notes["released"] > 0


@pytest.mark.parametrize("n,seed", [(30, 2), (60, 4), (120, 3)])
def test_the_overshoot_is_the_bytes_over_the_budget_summed_over_steps(n, seed):
    """Overshoot.over equals the simulated timeline's excess over the budget, step by step, for
    plans of every kind the descents make (kept, held, released), and is 0 exactly when they fit."""
    import random
    from ckpt.plan.search import Overshoot, State, gradient_before_peak
    from ckpt.schedule import COMPUTE
    ix = JointIndex(pg.random_training_dag(n, seed))
    rng = random.Random(seed)
    fwd = sorted(ix.fwd, key=lambda u: ix.pos[u])
    for _ in range(10):
        keep = frozenset(u for u in fwd if rng.random() < 0.5)
        s = State(keep, frozenset(u for u in fwd if rng.random() < 0.5))
        b = gradient_before_peak(ix, s.steps(ix))
        if b is not None and keep:
            s = s._replace(release=frozenset({(min(keep, key=lambda u: ix.pos[u]), b)}))
        steps = s.steps(ix)
        live, levels = 0, []
        for kind, x in steps:
            if kind == COMPUTE:
                levels.append(live + ix.ram[x] + ix.ws[x])
                live += ix.ram[x]
            else:
                live -= ix.ram[x]
        for budget in (max(levels), max(levels) - 1, int(0.7 * max(levels))):
            ev = Overshoot(ix, math.inf, budget)
            assert ev(s)[0] == max(levels)
            assert ev.over[s] == sum(v - budget for v in levels if v > budget)
            assert (ev.over[s] == 0) == (max(levels) <= budget)


@pytest.mark.parametrize("name,frac", [("gpt_small", 0.6), ("resnet_small", 0.9)])
def test_plan_is_the_same_beside_a_cpu_hog(name, frac):
    joint, ix = _model(name)
    sa = _store_all(joint, ix)
    least, _ = smallest_peak(joint, ix, time_limit=TIME_LIMIT)
    budget = max(least, sa.resident + int(frac * sa.peak_managed_ws))
    # plan's own default time limit: a safety net that a deterministic planner never reaches here
    quiet, _ = plan(joint, "budget", budget, ix=ix)
    hogs = [_hog(60) for _ in range(os.cpu_count() or 1)]
    try:
        busy, _ = plan(joint, "budget", budget, ix=ix)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert busy.steps == quiet.steps
    assert busy.solver == quiet.solver


@pytest.mark.parametrize("name", sorted(SMALL))
def test_frontier_is_monotone_at_ten_budgets(name):
    """From the smallest peak ckpt states up to store-all's, every budget gets a plan and more
    memory never costs more recompute."""
    joint, ix = _model(name)
    sa = _store_all(joint, ix)
    least, _ = smallest_peak(joint, ix, time_limit=TIME_LIMIT)
    top = sa.peak_ws
    costs = []
    for k in range(10):
        b = least + (top - least) * k // 9
        p, sim = _budget(joint, ix, b)  # the smallest peak is a promise: every budget above it fits
        assert sim.peak_ws <= b
        costs.append(sim.cost)
    rises = [(k, a, b) for k, (a, b) in enumerate(zip(costs, costs[1:])) if b > a * (1 + 1e-12)]
    assert not rises, f"{name}: cost rises with the budget at {rises} (costs {costs})"


@pytest.mark.parametrize("frac", [0.9, 0.7, 0.5, "sqrt-n-peak"])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_never_worse_than_sqrt_n_where_it_fits(name, frac):
    """At 0.9/0.7/0.5 of store-all's managed peak where sqrt-n fits, and at sqrt-n's own peak,
    where it fits by definition."""
    joint, ix = _model(name)
    sa = _store_all(joint, ix)
    _, sq = plan(joint, "sqrt-n", ix=ix)
    budget = sq.peak_ws if isinstance(frac, str) else sa.resident + int(frac * sa.peak_managed_ws)
    if sq.peak_ws > budget:
        pytest.skip(f"sqrt-n needs {sq.peak_ws} bytes, over the budget {budget}")
    _, sim = _budget(joint, ix, budget)
    assert sim.peak_ws <= budget
    assert sim.cost <= sq.cost * (1 + 1e-12), f"{name} at {frac}: budget {sim.cost} vs sqrt-n {sq.cost}"


@pytest.mark.parametrize("budget", ["sqrt-n-peak", 3.25 * 2 ** 20])
def test_gpt_small_at_full_size_never_worse_than_sqrt_n(budget):
    """Issue 12's case: gpt_small's default dims where sqrt-n fits (2.75 MiB in the issue, before
    budgets counted workspace; sqrt-n's peak with workspace is 3.03 MiB)."""
    m = load_model(config_path("gpt_small"))
    _, sq = plan(m.joint, "sqrt-n", ix=m.index)
    budget = sq.peak_ws if isinstance(budget, str) else int(budget)
    assert sq.peak_ws <= budget
    _, sim = _budget(m.joint, m.index, budget)
    assert sim.peak_ws <= budget
    assert sim.cost <= sq.cost * (1 + 1e-12), f"budget {sim.cost} vs sqrt-n {sq.cost} at {budget} bytes"


@pytest.mark.parametrize("n,seed,frac", [(100, 4, 0.7), (130, 1, 0.8), (130, 1, 0.7), (180, 2, 0.8), (180, 2, 0.7),
                                         (250, 3, 0.8), (250, 3, 0.7)])
def test_never_worse_than_the_plain_greedy(n, seed, frac):
    joint = pg.random_training_dag(n, seed)
    ix = JointIndex(joint)
    sa = _store_all(joint, ix)
    managed = int(frac * sa.peak_managed_ws)
    greedy = pg.plain_greedy(joint, ix, managed)
    assert greedy is not None  # the greedy ends at keep-nothing, which fits these budgets
    _, sim = _budget(joint, ix, sa.resident + managed)
    assert sim.peak_managed_ws <= managed
    assert sim.cost <= greedy[0] * (1 + 1e-12), f"random{n}_s{seed} at {frac}: {sim.cost} vs greedy {greedy[0]}"


@pytest.mark.parametrize("frac", [0.8, 0.7])
def test_never_worse_than_the_plain_greedy_on_a_resnet50_shape(frac):
    """The floor holds where the keep-set descent and the bisections of the search's families
    miss the greedy's own plan (its drop order is scanned one value at a time)."""
    joint = pg.joint_of(pg.resnet50_config())
    ix = JointIndex(joint)
    sa = _store_all(joint, ix)
    managed = int(frac * sa.peak_managed_ws)
    greedy = pg.plain_greedy(joint, ix, managed)
    _, sim = _budget(joint, ix, sa.resident + managed)
    assert sim.peak_managed_ws <= managed
    assert sim.cost <= greedy[0] * (1 + 1e-12)


def _true_least_managed(joint, ix):
    """The least managed budget at which some schedule exists, by exhaustive search (feasibility
    only grows with the budget, so bisect)."""
    lo = max(ix.ram[x] + ix.ws[x] + sum(ix.ram[u] for u in ix.preds[x]) for x in ix.order)
    hi = _store_all(joint, ix).peak_managed_ws
    assert not math.isinf(exhaustive_cost(joint, hi))
    while lo < hi:
        mid = (lo + hi) // 2
        if math.isinf(exhaustive_cost(joint, mid)):
            lo = mid + 1
        else:
            hi = mid
    return lo


@pytest.mark.parametrize("seed", range(8))
def test_smallest_peak_is_never_above_the_true_least(seed):
    joint = random_joint(seed, n_ops=4 + seed % 3) if seed < 6 else pg.random_training_dag(12, seed)
    ix = JointIndex(joint)
    resident = joint.graph["resident"]
    true_least = resident + _true_least_managed(joint, ix)
    least, exact = smallest_peak(joint, ix, time_limit=TIME_LIMIT)
    assert least <= true_least, f"seed {seed}: ckpt states {least}, a schedule exists at {true_least}"
    for b in sorted({least, true_least}):
        try:
            _, sim = _budget(joint, ix, b)
        except BudgetError as e:
            pytest.fail(f"seed {seed}: no plan at {b} bytes (true least {true_least}): {e}")
        assert sim.peak_ws <= b
    if exact:
        assert least == true_least


@pytest.mark.xfail(strict=False, reason="known gap: the keep-set search recomputes a value at most once "
                                        "per gradient step; the MILP, at most once per stage")
def test_a_schedule_that_recomputes_a_value_twice_in_one_stage_counts():
    """An 18-node training DAG whose least peak needs f0 recomputed twice between two frontier
    steps (once to rebuild f4 through f1..f3, once more for grad:f0, which reads f0 and f4):
    Checkmate's MILP computes a node at most once per stage, so its "infeasible" below 7692 bytes
    is no proof. Exhaustive search finds a schedule at 7404 bytes (3308 managed)."""
    joint = pg.random_training_dag(14, 0)
    ix = JointIndex(joint)
    managed = 3308
    assert not math.isinf(exhaustive_cost(joint, managed))
    budget = joint.graph["resident"] + managed
    least, _ = smallest_peak(joint, ix, time_limit=TIME_LIMIT)
    assert least <= budget, f"ckpt states {least} bytes as the least, a schedule exists at {budget}"
    try:
        _, sim = _budget(joint, ix, budget)
    except BudgetError as e:
        pytest.fail(f"no plan at {budget} bytes, where exhaustive search finds one: {e}")
    assert sim.peak_ws <= budget


def test_chain_dp_counts_workspace_on_mlp_deep():
    """mlp_deep's gradient nodes hold workspace. The chain DP once left it out: its plans did not fit
    when walked, the budget strategy fell back to the search, and 0.3 of store-all's peak cost
    +191% where 0.2 cost +48%. Each plan straight from `plan` (no frontier carrying plans over)
    must fit, and more memory must never cost more."""
    from ckpt.plan.chain import Chain, peak_managed, solve_chain

    m = load_model(config_path("mlp_deep"))
    joint, ix = m.joint, m.index
    sa = _store_all(joint, ix)
    chain = Chain.of(ix)
    costs = []
    for k in range(2, 10):
        managed = sa.peak_managed_ws * k // 10
        p = solve_chain(chain, managed, least=False)
        if p.steps is not None:
            assert peak_managed(ix, p.steps) <= managed
        q, sim = _budget(joint, ix, sa.resident + managed)
        assert sim.peak_ws <= sa.resident + managed
        costs.append(sim.cost)
    assert all(a >= b * (1 - 1e-12) for a, b in zip(costs, costs[1:])), costs


@pytest.mark.parametrize("frac", [0.8, 0.6])
def test_plan_does_not_depend_on_the_cost_unit(frac):
    """Costs in seconds, in FLOPs or in anything else: the same plan. The search once floored
    costs at 1e-9, so costs of 1e-300 each reordered its drops."""
    plans = []
    for scale in (1.0, 1e-300, 1e290):
        joint = pg.random_training_dag(120, 3)  # beyond the MILP: the search decides
        for x in joint.nodes:
            joint.nodes[x]["cost"] *= scale
        ix = JointIndex(joint)
        sa = _store_all(joint, ix)
        p, _ = _budget(joint, ix, sa.resident + int(frac * sa.peak_managed_ws))
        plans.append(p.steps)
    assert plans[0] == plans[1] == plans[2]
