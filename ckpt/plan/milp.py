"""The Checkmate MILP (Jain et al. 2020) on the joint graph, solved by HiGHS through scipy.

Stages t = 0..n-1 follow the joint graph's topological order; stage t computes node t for the
first time (the frontier) and may recompute earlier nodes. Variables: R[t,i] (compute i in stage
t), S[t,i] (i is kept from stage t-1 into stage t), FREE[t,i,k] (i is dropped right after k is
computed in stage t) and U[t,k] (bytes live after computing k in stage t, at most the budget).
"""

import math
import os
import sys
import time
from contextlib import contextmanager

import numpy as np

from ..schedule import COMPUTE, FREE, Plan


class _Vars:
    def __init__(self):
        self.n = 0
        self.lb, self.ub, self.integer, self.cost = [], [], [], []

    def add(self, lb=0.0, ub=1.0, integer=True, cost=0.0):
        self.lb.append(lb)
        self.ub.append(ub)
        self.integer.append(1 if integer else 0)
        self.cost.append(cost)
        self.n += 1
        return self.n - 1


class _Rows:
    def __init__(self):
        self.r, self.c, self.v, self.lo, self.hi = [], [], [], [], []

    def add(self, terms, lo, hi):
        row = len(self.lo)
        for col, val in terms:
            self.r.append(row)
            self.c.append(col)
            self.v.append(val)
        self.lo.append(lo)
        self.hi.append(hi)


# HiGHS's branch and bound, bounded by a count of nodes rather than the clock, so that a plan does
# not depend on how busy the machine is; the time limit is only a safety net, reported if it strikes.
NODE_LIMIT = 1000


def solve_milp(ix, budget_managed, time_limit=120.0, node_limit=NODE_LIMIT, cutoff=None):
    """Returns (Plan or None, status text). The plan carries HiGHS's lower bound on the cost.

    `cutoff`: the cost of a schedule already known; the MILP then looks only for cheaper ones
    (by more than one part in 1e6), so "infeasible" proves that schedule optimal."""
    from scipy.optimize import Bounds, LinearConstraint, milp  # scipy.optimize is slow to import
    from scipy.sparse import coo_matrix

    order = ix.order
    n = len(order)
    idx = {x: i for i, x in enumerate(order)}
    deps = [[idx[u] for u in ix.preds[x]] for x in order]
    users = [[] for _ in range(n)]
    for k in range(n):
        for i in deps[k]:
            users[i].append(k)
    if any(ix.ram[x] + ix.ws[x] + sum(ix.ram[u] for u in ix.preds[x]) > budget_managed for x in order):
        return None, "infeasible (one step alone exceeds the budget)"
    # bytes in units of their gcd (exact) and costs relative to the largest: HiGHS is far faster
    # on small, well-scaled coefficients than on raw byte counts
    unit = math.gcd(*[b for x in order for b in (ix.ram[x], ix.ws[x]) if b]) or 1
    mem = [ix.ram[x] / unit for x in order]
    ws = [ix.ws[x] / unit for x in order]
    budget_managed = budget_managed // unit
    top = max(ix.cost[x] for x in order) or 1.0
    cost = [ix.cost[x] / top for x in order]

    V, rows = _Vars(), _Rows()
    # A gradient node runs once, at its own stage: recomputing a gradient never pays in practice,
    # and fixing these variables halves the search.
    once = [ix.joint.nodes[x]["kind"] == "backward" for x in order]
    # A value is of no use after the last stage in which something that reads it can still run
    # (a gradient runs only at its own stage; a forward value as late as its readers can).
    last = [0] * n
    for i in reversed(range(n)):
        last[i] = max([i] + [j if once[j] else last[j] for j in users[i]])
    R = [[V.add(lb=1.0 if i == t else 0.0, ub=0.0 if (once[i] and i != t) or t > last[i] else 1.0, cost=cost[i])
          for i in range(t + 1)] for t in range(n)]
    S = [[V.add(ub=0.0 if t > last[i] else 1.0) for i in range(t)] for t in range(n)]
    U = [[V.add(ub=float(budget_managed), integer=False) for k in range(t + 1)] for t in range(n)]

    def s(t, i):
        return S[t][i] if t < n and i < t else None

    for t in range(n):
        for k in range(t + 1):
            for i in deps[k]:  # operands are computed in this stage or kept from the last
                rows.add([(R[t][k], 1.0), (R[t][i], -1.0), (S[t][i], -1.0)], -np.inf, 0.0)
        if t:
            for i in range(t):
                terms = [(S[t][i], 1.0), (R[t - 1][i], -1.0)]
                if i < t - 1:
                    terms.append((S[t - 1][i], -1.0))
                rows.add(terms, -np.inf, 0.0)
        # memory after computing node 0 of the stage, then node by node
        rows.add([(U[t][0], 1.0), (R[t][0], -mem[0])] + [(S[t][i], -mem[i]) for i in range(t)], 0.0, 0.0)
        for k in range(t + 1):
            frees = []
            for i in deps[k] + [k]:
                later = [j for j in users[i] if k < j <= t]
                f = V.add()
                frees.append((f, i))
                # hazards: k not computed, i kept into the next stage, a later user in this stage
                haz = [(R[t][k], 1.0)] + ([(s(t + 1, i), -1.0)] if s(t + 1, i) is not None else []) + \
                      [(R[t][j], -1.0) for j in later]
                maxh = 2 + len(later)
                rows.add([(f, -1.0)] + haz, -np.inf, 0.0)  # no hazard -> free
                rows.add([(f, -float(maxh))] + haz, 1.0 - maxh, np.inf)  # any hazard -> keep
            if k < t:
                rows.add([(U[t][k + 1], 1.0), (U[t][k], -1.0), (R[t][k + 1], -mem[k + 1])]
                         + [(f, mem[i]) for f, i in frees], 0.0, 0.0)
            if ws[k]:  # k's workspace is held while k runs, on top of what is live after it
                rows.add([(U[t][k], 1.0), (R[t][k], ws[k])], -np.inf, float(budget_managed))

    if cutoff is not None:
        rows.add([(v, c) for v, c in zip(range(V.n), V.cost) if c], -np.inf, cutoff / top * (1 - 1e-6))
    A = coo_matrix((rows.v, (rows.r, rows.c)), shape=(len(rows.lo), V.n)).tocsr()
    start = time.perf_counter()
    with quiet_stdout():
        res = milp(c=np.array(V.cost), constraints=LinearConstraint(A, rows.lo, rows.hi),
                   integrality=np.array(V.integer), bounds=Bounds(V.lb, V.ub),
                   options={"time_limit": float(time_limit), "node_limit": int(node_limit), "disp": False,
                            "mip_rel_gap": 1e-6})
    elapsed = time.perf_counter() - start
    struck = "time limit" if res.status == 1 and elapsed >= time_limit * 0.99 else "node limit"
    if res.x is None:
        if res.status == 2:
            return None, "infeasible" if cutoff is None else "infeasible (nothing cheaper than the cutoff)"
        return None, f"no solution within the {struck}"
    x = np.round(res.x).astype(int)
    steps = _to_steps(order, deps, users, [[x[v] for v in row] for row in R], [[x[v] for v in row] for row in S])
    plan = Plan("budget", steps, solver="milp", solve_time_s=elapsed,
                lower_bound=float(getattr(res, "mip_dual_bound", None) or res.fun) * top)
    plan.notes["optimal"] = res.status == 0
    plan.notes["milp_size"] = {"variables": V.n, "constraints": len(rows.lo)}
    return plan, "optimal" if res.status == 0 else struck


@contextmanager
def quiet_stdout():
    """HiGHS (C++) may print to file descriptor 1 even with disp off: point it at stderr meanwhile,
    so that `--json` output stays one JSON document."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _to_steps(order, deps, users, R, S):
    n = len(order)
    live, steps = set(), []
    for t in range(n):
        keep_next = {i for i in range(t + 1) if t + 1 < n and i < t + 1 and S[t + 1][i]}
        computed = [k for k in range(t + 1) if R[t][k]]
        used = {i for k in computed for i in deps[k]}
        for i in sorted(live):  # carried in but neither used here nor kept further
            if not (i < t and S[t][i]) or (i not in used and i not in keep_next):
                steps.append((FREE, order[i]))
                live.discard(i)
        for pos, k in enumerate(computed):
            if k not in live:
                steps.append((COMPUTE, order[k]))
                live.add(k)
            later = set(computed[pos + 1:])
            for i in deps[k] + [k]:
                if i in live and i not in keep_next and not any(j in later for j in users[i]):
                    steps.append((FREE, order[i]))
                    live.discard(i)
    return steps
