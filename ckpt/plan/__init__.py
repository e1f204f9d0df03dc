"""Strategies: functions from the joint graph (and a budget) to a Plan holding a plain schedule.

The planners see only the joint forward+backward graph (ckpt.model.joint): node costs, output
bytes and edges. Nothing here allocates a tensor.
"""

import time

from ..errors import BudgetError, ConfigError
from ..simulate import simulate
from ..sizes import fmt_bytes
from .basic import sqrt_n, store_all
from .chain import Chain, solve_chain
from .heuristic import heuristic, least_memory
from .keepset import JointIndex
from .milp import solve_milp

STRATEGIES = ("store-all", "sqrt-n", "budget")
MILP_MAX_NODES = 120  # joint nodes; beyond this HiGHS rarely closes the Checkmate MILP in a minute


def plan(joint, strategy, budget=None, time_limit=30.0, ix=None):
    """(Plan, Simulation) for one strategy. `budget` bounds the whole peak, resident included."""
    ix = ix or JointIndex(joint)
    start = time.perf_counter()
    if strategy == "store-all":
        p = store_all(ix)
    elif strategy == "sqrt-n":
        p = sqrt_n(ix)
    elif strategy == "budget":
        if budget is None:
            raise ConfigError("the budget strategy needs --memory-budget")
        p = _budget(joint, ix, budget, time_limit)
    else:
        raise ConfigError(f"unknown strategy {strategy!r} (use one of {', '.join(STRATEGIES)})")
    if not p.solve_time_s:
        p.solve_time_s = time.perf_counter() - start
    return p, simulate(joint, p.steps)


def _budget(joint, ix, budget, time_limit):
    resident = joint.graph.get("resident", 0)
    managed = budget - resident
    sa = store_all(ix)
    sa_sim = simulate(joint, sa.steps, check=False)
    if managed >= sa_sim.peak_managed:
        sa.strategy, sa.solver, sa.lower_bound = "budget", "store-all fits", sa_sim.cost
        return sa
    if managed < 0:
        _fail(joint, ix, budget, resident)
    chain = Chain.of(ix)
    status = None
    if chain is not None:
        p = solve_chain(chain, managed)
        if p is not None:
            if p.steps is None:
                _fail(joint, ix, budget, resident, chain_min=p.notes.get("min_managed"), exact=p.notes["min_exact"])
            if p.notes["exact"]:
                return p
            # not proved optimal: the heuristic may do better where the slots were rounded
            h = heuristic(ix, managed, joint)
            if h is None or simulate(joint, p.steps, check=False).cost <= simulate(joint, h.steps, check=False).cost:
                return p
            h.lower_bound = p.lower_bound
            h.notes["exact_solver"] = "chain-dp (rounded) was costlier"
            return h
        status = "chain too long for the DP table"
    h = heuristic(ix, managed, joint)
    if chain is None and len(ix.order) <= MILP_MAX_NODES:
        m, status = solve_milp(ix, managed, time_limit=time_limit)
        if m is not None and m.notes["optimal"]:
            return m
        if m is None and status.startswith("infeasible"):
            _fail(joint, ix, budget, resident)
        if m is not None:  # the time limit struck: the better of the incumbent and the heuristic
            m.solver = "milp (time limit)"
            if h is None or simulate(joint, m.steps, check=False).cost <= simulate(joint, h.steps, check=False).cost:
                return m
            h.lower_bound = m.lower_bound
    if h is None:
        _fail(joint, ix, budget, resident)
    if h.lower_bound is None:
        h.lower_bound = sa_sim.cost  # nothing recomputed: a bound every schedule respects
    if status:
        h.notes["exact_solver"] = status
    return h


def smallest_peak(joint, ix, time_limit=30.0):
    """(bytes, exact): the least peak any schedule reaches, exact for chains and small DAGs."""
    resident = joint.graph.get("resident", 0)
    sa_sim = simulate(joint, store_all(ix).steps, check=False)
    chain = Chain.of(ix)
    if chain is not None:
        p = solve_chain(chain, sa_sim.peak_managed)
        if p is not None:
            return resident + p.notes["min_managed"], p.notes["min_exact"]
    _, sim = least_memory(ix, joint)
    hi = min(sim.peak_managed, sa_sim.peak_managed)
    if chain is not None or len(ix.order) > MILP_MAX_NODES // 2:
        return resident + hi, False
    # no step can run with less than its operands and its output live
    lo = max(ix.ram[x] + sum(ix.ram[u] for u in ix.preds[x]) for x in ix.order)
    deadline = time.perf_counter() + time_limit
    while lo < hi:  # bisect on the MILP's feasibility, within the time limit overall
        left = deadline - time.perf_counter()
        if left <= 0.5:
            return resident + hi, False
        mid = (lo + hi) // 2
        p, status = solve_milp(ix, mid, time_limit=min(left, 10.0))
        if p is not None:
            hi = simulate(joint, p.steps, check=False).peak_managed
        elif status.startswith("infeasible"):
            lo = mid + 1
        else:
            return resident + hi, False
    return resident + hi, True


def plan_table(joint, names, budget, time_limit=30.0, ix=None, strict=False, budgets=None):
    """One row per strategy (or, with `budgets`, one budget-strategy row per budget) for reports."""
    ix = ix or JointIndex(joint)
    sa_sim = simulate(joint, store_all(ix).steps, check=False)
    # A sweep runs from the smallest budget up and keeps the best plan so far: a plan that fits a
    # smaller budget fits a larger one, so the frontier is monotone even where a solver stopped
    # at its time limit.
    jobs = [("budget", b) for b in sorted(budgets)] if budgets is not None else [(n, budget) for n in names]
    rows, carried = [], None
    for name, b in jobs:
        row = {"name": name, "budget_bytes": b, "resident_bytes": joint.graph.get("resident", 0)}
        try:
            p, sim = plan(joint, name, b, time_limit=time_limit, ix=ix)
            if budgets is not None:
                if carried is not None and carried[1].cost < sim.cost:
                    p, sim = carried
                carried = (p, sim)
        except BudgetError as e:
            if strict:
                raise
            row.update(feasible=False, peak_bytes=None, managed_bytes=None, overhead=None, cost=None, stored=None,
                       recomputed=None, solver="-", solve_time_s=0.0, error=str(e), min_peak_bytes=e.min_peak)
            rows.append(row)
            continue
        overhead = (sim.cost - sa_sim.cost) / sa_sim.cost if sa_sim.cost else 0.0
        lb = None if p.lower_bound is None else (p.lower_bound - sa_sim.cost) / sa_sim.cost if sa_sim.cost else 0.0
        row.update(feasible=b is None or sim.peak <= b, peak_bytes=sim.peak, managed_bytes=sim.peak_managed,
                   overhead=overhead, cost=sim.cost, stored=sim.stored, recomputed=sim.recomputes,
                   solver=p.solver, solve_time_s=p.solve_time_s, lower_bound_overhead=lb)
        rows.append(row)
    return rows


def _fail(joint, ix, budget, resident, chain_min=None, exact=True):
    if chain_min is not None:
        best = resident + chain_min
    else:
        best, exact = smallest_peak(joint, ix)
    how = "the smallest feasible peak is" if exact else "the smallest peak ckpt can schedule is"
    raise BudgetError(f"no schedule fits a memory budget of {fmt_bytes(budget)} ({budget} bytes): {how} "
                      f"{fmt_bytes(best)} ({best} bytes; {fmt_bytes(resident)} of it resident)", min_peak=best)


__all__ = ["STRATEGIES", "plan", "plan_table", "smallest_peak", "JointIndex"]
