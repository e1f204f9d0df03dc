"""Strategies: functions from the joint graph (and a budget) to a Plan holding a plain schedule.

The planners see only the joint forward+backward graph (ckpt.model.joint): node costs, output
bytes and edges. Nothing here allocates a tensor.
"""

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
                _fail(joint, ix, budget, resident, chain_min=p.notes.get("min_managed"), exact=p.notes["exact"])
            return p
        status = "chain too long for the DP table"
    elif len(ix.order) <= MILP_MAX_NODES:
        p, status = solve_milp(ix, managed, time_limit=time_limit)
        if p is not None:
            return p
        if status.startswith("infeasible"):
            _fail(joint, ix, budget, resident)
    p = heuristic(ix, managed, joint)
    if p is None:
        _fail(joint, ix, budget, resident)
    p.lower_bound = sa_sim.cost  # nothing recomputed: a bound every schedule respects
    if status:
        p.notes["exact_solver"] = status
    return p


def _fail(joint, ix, budget, resident, chain_min=None, exact=True):
    if chain_min is not None:
        best = resident + chain_min
        how = "the smallest feasible peak is" if exact else "the smallest peak the chain DP reaches is"
    else:
        _, sim = least_memory(ix, joint)
        best = sim.peak
        how = "the smallest peak ckpt can schedule is"
    raise BudgetError(f"no schedule fits a memory budget of {fmt_bytes(budget)} ({budget} bytes): {how} "
                      f"{fmt_bytes(best)} ({best} bytes; {fmt_bytes(resident)} of it resident)", min_peak=best)


__all__ = ["STRATEGIES", "plan", "JointIndex"]
