"""Strategies: functions from the joint graph (and a budget) to a Plan holding a plain schedule.

The planners see only the joint forward+backward graph (ckpt.model.joint): node costs, output
bytes and edges. Nothing here allocates a tensor.
"""

import time

from ..errors import BudgetError, ConfigError
from ..simulate import simulate
from ..sizes import fmt_bytes
from .basic import sqrt_n, store_all
from .blocks import block_views, chain_view, solve_blocks
from .bound import lower_bound
from .chain import Chain, solve_chain
from .keepset import JointIndex
from .milp import solve_milp
from .search import kicked, lowest, search, walk

STRATEGIES = ("store-all", "sqrt-n", "budget")
MILP_MAX_NODES = 80  # joint nodes; beyond this HiGHS rarely closes the Checkmate MILP within its node limit
MILP_MIN_GAP = 1e-3  # relative: a plan proved this close to optimal is not worth a MILP's minute...
MILP_QUICK_NODES = 40  # ...except on graphs this small, where HiGHS closes the gap in a second
LONG_CHAIN = 300  # layers: a chain this long that the blocks DP plans gets no keep-set search beside it
MILP_CHAIN_NODES = 24  # joint nodes: a chain this small gets the MILP beside the chain DP
PROOF_TOLERANCE = 1e-5  # relative: a plan this close to the lower bound is optimal up to HiGHS's tolerances


def plan(joint, strategy, budget=None, time_limit=120.0, ix=None):
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
    """The cheapest of every planner's plan that fits: exact ones (chain DP, MILP) where they
    prove optimality, the keep-set search everywhere, the simple strategies as a floor. The plan
    carries a lower bound on the optimum (bound.py, or the MILP's), so a report can say how far
    from optimal it can be."""
    resident = joint.graph.get("resident", 0)
    managed = budget - resident
    sa = store_all(ix)
    sa_peak, sa_cost, _ = walk(ix, sa.steps)
    if managed >= sa_peak:
        sa.strategy, sa.solver, sa.lower_bound = "budget", "store-all fits", sa_cost
        return sa
    if managed < 0:
        _fail(joint, ix, budget, resident, time_limit)
    cands, notes = [], {}  # (cost, order, plan); order breaks ties the same way every time
    chain_exact = False

    def consider(p, name):
        if p is None or p.steps is None:
            return
        peak, cost, _ = walk(ix, p.steps)
        if peak <= managed:
            cands.append((cost, len(cands), p))
            notes[name] = cost

    chain = Chain.of(ix)
    views = block_views(ix)
    if chain is not None:
        # the DP is exact over its family (checkpoints on a stack), not over every schedule: the
        # search may still find a cheaper one in the joint graph, so the DP's plan is a candidate.
        # Where its slots would be coarse (a long chain of unlike layers), the block DP does better.
        # (a chain whose layers carry side values, however, is one of like layers: their sizes
        # only make the common unit small)
        coarse = not (views or chain_view(chain)) or bool(chain.side)
        p = solve_chain(chain, managed, coarse=coarse, least=False)
        if p is None:
            notes["chain-dp"] = "chain too long for the DP table"
        else:
            consider(p, p.solver)
            chain_exact = p.solver in notes and p.notes["exact"]  # exact, and fits when walked
        # where layers save residuals, families that keep them apart from their stages: all of
        # them, or only those computed after their stage's value (statistics, a few numbers a row;
        # at tight budgets the masks, a byte an element, are better recomputed with their stage).
        # On an 8-layer chain of layernorm / dropout layers at 0.7x: +6.7% and +7.2%, where the
        # family above gives +10.4% (the optimum: +5.7%).
        for which, name in ((lambda s, first: True, "all"), (lambda s, first: not first, "statistics")):
            kept = chain.with_kept_sides(which)
            if kept is not None and (name == "all" or len(kept.keep) < len(chain.side)):
                consider(solve_chain(kept, managed, least=False), f"chain-dp (residuals kept: {name})")
    long_chain = False
    if chain is not None and not chain_exact and not views and chain_view(chain) is not None:
        # a chain the DP does not answer exactly (thousands of unlike layers: its slots would be
        # far coarser than the values) is planned as runs of layers by the blocks DP
        view = chain_view(chain)
        p = solve_blocks(view, managed)
        consider(p, f"blocks-dp (chain in {view.n} blocks)")
        # beside it the search, walking whole schedules of thousands of steps, ran out of work
        # near sqrt-n's plan (+32.7% where the blocks DP finds +6.6% and the bound +6.3%, 3,000
        # unlike layers at 0.5x) after ten seconds: on long chains it is left out
        long_chain = p.steps is not None and chain.l >= LONG_CHAIN
    sq = sqrt_n(ix)
    consider(sq, "sqrt-n")
    found = None  # the search's plan
    if not chain_exact and not long_chain:
        # beside a DP plan exact over its family (checkpoints on a stack), neither the block DP nor
        # the search found more than ties on chains (mlp_deep at L=30..200, 0.9x..0.2x; uniform
        # chains at Revolve's count): they would only double a long chain's planning time
        for view in views:
            consider(solve_blocks(view, managed), f"blocks-dp ({view.n} blocks)")
        found = search(ix, managed, starts=[(sq.notes["keep"], False)])
        consider(found, "search")
    # no schedule costs less than store-all plus the bound of bound.py (nor fits where it is
    # infinite); beside an exact chain DP plan the bound is not worth its time (a second or so on a
    # 1,000-layer chain, half of it importing scipy.optimize)
    best = min(cands, key=lambda c: c[:2])[0] if cands else None
    extra, infeasible = (0.0, False) if chain_exact else lower_bound(
        ix, managed, goal=None if best is None else best - sa_cost)
    if infeasible and not cands:
        _fail(joint, ix, budget, resident, time_limit)
    lower = sa_cost + (0.0 if infeasible else extra)
    if best is not None and best <= lower * (1 + PROOF_TOLERANCE):
        lower = best  # the bound meets the best plan: it is optimal, and the MILP has nothing to add
    elif found is not None:  # room left: kick the search out of its local optimum
        consider(kicked(ix, managed, found.notes["state"]), "search (kicked)")
        best = min(cands, key=lambda c: c[:2])[0]
        if best <= lower * (1 + PROOF_TOLERANCE):
            lower = best
    # the MILP runs where the bound leaves room for a real gain (it can take a minute on 70 nodes),
    # and on small graphs, where it is quick, wherever the bound has not proved the plan optimal
    gap = MILP_MIN_GAP if len(ix.order) > MILP_QUICK_NODES else 0.0
    # the chain DP is exact over checkpoints kept on a stack only: a schedule that drops a_1 while
    # recomputing a_2 from it and recomputes a_1 later is outside (5 unlike layers at 0.6x: 893
    # against the DP's 997), so the MILP checks it where it is quick. Not on a chain of like layers,
    # where the stack's binomial schedule is optimal (Griewank) and HiGHS takes seconds to agree
    # (on mlp_deep's 38 nodes it takes seconds a budget: only smaller chains)
    quick_chain = chain is not None and len(ix.order) <= MILP_CHAIN_NODES and not _alike(chain)
    if (chain is None or chain.side or quick_chain) and len(ix.order) <= MILP_MAX_NODES and \
            (best is None or best > lower * (1 + gap)):
        m, status = solve_milp(ix, managed, time_limit=time_limit, cutoff=best)
        notes["milp"] = status
        if m is not None and m.notes["optimal"]:
            m.notes["candidates"] = notes
            return m
        if m is None and status.startswith("infeasible") and best is None:
            _fail(joint, ix, budget, resident, time_limit)
        if m is None and status.startswith("infeasible"):  # nothing cheaper exists: the best is optimal
            lower = best
        if m is not None:
            m.solver = f"milp ({status})"
            lower = max(lower, m.lower_bound or lower)
            consider(m, "milp")
    if not cands:
        _fail(joint, ix, budget, resident, time_limit)
    cost, _, p = min(cands, key=lambda c: c[:2])
    p.strategy = "budget"
    # a candidate's own bound holds over its family only (the chain DP's: checkpoints on a stack)
    p.lower_bound = min(lower, cost)
    if p.lower_bound == cost and p.solver == "search":
        p.solver = "search (proved optimal by the milp)" if "milp" in notes else "search (proved optimal)"
    p.notes["candidates"] = notes
    return p


def _alike(chain):
    """Every layer of the chain the same: its value's size and cost, its gradient's size."""
    return len({(chain.x[k], chain.c[k], chain.gsz[k]) for k in range(2, chain.l)}) <= 1


def smallest_peak(joint, ix, time_limit=120.0):
    """(bytes, exact): the least peak of a schedule ckpt can build (exact for chains whose DP
    proves it and small DAGs the MILP settles). Never above any schedule ckpt builds: the budget
    strategy fits every budget at or above it."""
    resident = joint.graph.get("resident", 0)
    sa_peak = walk(ix, store_all(ix).steps)[0]
    # no step can run with less than its operands, its output and its workspace live
    floor = max(ix.ram[x] + ix.ws[x] + sum(ix.ram[u] for u in ix.preds[x]) for x in ix.order)
    chain = Chain.of(ix)
    if chain is not None and chain.l >= LONG_CHAIN and not block_views(ix) and chain_view(chain) is not None:
        # the search's descent to the least peak walks thousands of schedules of thousands of
        # steps (11 s on 3,000 layers); the blocks DP over runs of layers, below, goes lower
        hi, exact = min(walk(ix, sqrt_n(ix).steps)[0], sa_peak), False
    else:
        hi, exact = min(lowest(ix)[0], sa_peak), False
    if chain is not None:
        p = solve_chain(chain, sa_peak)
        if p is not None and p.notes["min_managed"] is not None:
            steps = p.notes["min_steps"]
            peak = walk(ix, steps)[0]
            if peak <= hi:
                hi, exact = peak, p.notes["min_exact"] and peak == p.notes["min_managed"]
    views = block_views(ix) or ([chain_view(chain)] if chain is not None and chain_view(chain) is not None else [])
    for view in views:  # whole blocks recomputed, several levels deep, go lower
        steps = solve_blocks(view, sa_peak).notes.get("min_steps")
        if steps is not None and walk(ix, steps)[0] < hi:
            hi, exact = walk(ix, steps)[0], False
    if hi == floor:
        return resident + hi, True
    if exact or (chain is not None and not chain.side) or len(ix.order) > MILP_MAX_NODES // 2:
        return resident + hi, exact
    lo = floor
    while lo < hi:  # bisect on the MILP's feasibility; a node limit, not the clock, bounds each try
        mid = (lo + hi) // 2
        p, status = solve_milp(ix, mid, time_limit=time_limit)
        if p is not None:
            hi = min(hi, walk(ix, p.steps)[0])
        elif status.startswith("infeasible"):
            lo = mid + 1
        else:
            return resident + hi, False
    return resident + hi, True


def plan_table(joint, names, budget, time_limit=120.0, ix=None, strict=False, budgets=None):
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
            lower = p.lower_bound  # this budget's: a smaller budget's bound may exceed it
            if budgets is not None:
                if carried is not None and carried[1].cost < sim.cost:
                    p, sim = carried
                carried = (p, sim)
        except BudgetError as e:
            if strict:
                raise
            row.update(feasible=False, peak_bytes=None, managed_bytes=None, overhead=None, time_overhead=None,
                       cost=None, stored=None,
                       recomputed=None, solver="-", solve_time_s=0.0, error=str(e), min_peak_bytes=e.min_peak)
            rows.append(row)
            continue
        overhead = (sim.cost - sa_sim.cost) / sa_sim.cost if sa_sim.cost else 0.0
        lb = None if lower is None else (min(lower, sim.cost) - sa_sim.cost) / sa_sim.cost if sa_sim.cost else 0.0
        row.update(feasible=b is None or sim.peak_ws <= b, peak_bytes=sim.peak, managed_bytes=sim.peak_managed,
                   peak_with_workspace_bytes=sim.peak_ws,
                   overhead=overhead, cost=sim.cost, stored=sim.stored, recomputed=sim.recomputes,
                   # the predicted step time's overhead: the cost's and the cache term's (simulate)
                   time_overhead=sim.time / sa_sim.time - 1.0 if sa_sim.time else 0.0,
                   solver=p.solver, solve_time_s=p.solve_time_s, lower_bound_overhead=lb,
                   planners=_planner_costs(p.notes.get("candidates"), sa_sim.cost))
        rows.append(row)
    return rows


def _planner_costs(cands, sa_cost):
    """What each planner found, for the report: its overhead, or why it gave none."""
    if not cands:
        return None
    return {k: (v if isinstance(v, str) else (v - sa_cost) / sa_cost if sa_cost else 0.0) for k, v in cands.items()}


def _fail(joint, ix, budget, resident, time_limit):
    best, exact = smallest_peak(joint, ix, time_limit=time_limit)
    proved = None if exact else _proved_infeasible_below(ix, max(0, budget - resident), best - resident)
    if proved == best - resident:
        exact = True
    how = "the smallest feasible peak is" if exact else "the smallest peak ckpt can schedule is"
    below = "" if exact or proved is None else \
        f", and none fits under {fmt_bytes(resident + proved)} ({resident + proved} bytes; a lower bound)"
    raise BudgetError(f"no schedule fits a memory budget of {fmt_bytes(budget)} ({budget} bytes): {how} "
                      f"{fmt_bytes(best)} ({best} bytes; {fmt_bytes(resident)} of it resident){below}",
                      min_peak=best)


def _proved_infeasible_below(ix, lo, hi, tries=12):
    """The largest managed budget in [lo, hi] under which the lower bound proves that nothing fits
    (bisection on its infeasibility, which is monotone in the budget; `tries` programs at most, a
    work limit), or None when it proves nothing even at `lo`. `hi` is known to fit."""
    if not lower_bound(ix, lo)[1]:
        return None
    lo += 1  # every budget below lo is proved infeasible; hi fits
    for _ in range(tries):
        if lo >= hi:
            break
        mid = (lo + hi) // 2
        if lower_bound(ix, mid)[1]:
            lo = mid + 1
        else:
            hi = mid
    return lo


__all__ = ["STRATEGIES", "plan", "plan_table", "smallest_peak", "JointIndex"]
