"""A lower bound on the cost of every schedule that fits a budget: how far from optimal a plan can be.

Take one backward step b_k. Gradients are computed once each, in graph order (every planner in
ckpt schedules them so, the MILP included), so at that step the managed memory holds b_k's output
and workspace, every gradient computed before it and read at or after it, and each forward value
that b_k or a later gradient reads, unless that value is computed again after b_k. A value
computed again needs each of its operands live at b_k or computed again too. Every forward value
that some gradient up to b_k depends on was computed before b_k, so computing it again after b_k
is extra cost.

With x_v = "v is live at b_k" and r_v = "v is computed after b_k", relaxed to [0, 1]:

    minimise  sum cost_v r_v
    such that x_u + r_u >= 1                for each forward u read at or after b_k
              r_v <= x_p + r_p              for each operand p of v
              sum ram_v x_v <= budget - (b_k's output, workspace and the gradients live then)
              x_p = 1                       for b_k's own forward operands

is a linear program whose optimum no schedule beats: store-all's cost plus it is a lower bound,
and an infeasible program proves that no schedule fits. Each step gives its own bound; the best of
those tried is reported. Steps are tried in order of the bytes that must be missing there (the
tightest first), at most MAX_POINTS of them and MAX_VARS variables in all, and a program is only
built over the ancestors of the values it must account for, so the work is bounded and the bound
is the same on every machine.
"""

import math

import numpy as np

MAX_POINTS = 8  # backward steps whose program is solved (the best was among the first 3 on every graph tried)
MAX_VARS = 100_000  # variables of the programs solved, all steps together...
PROGRAM_VARS = 20_000  # ...and in one: HiGHS takes seconds on a 10,000-layer MLP's 40,000
INTEGER_POINTS = 2  # the steps with the best relaxed bounds are solved again in integers...
INTEGER_VARS = 2_000  # ...where the program is this small (a second at most)
INTEGER_NODES = 1_000  # branch-and-bound nodes: a work limit, so the bound is the same on every machine
SAFETY = 1e-6  # relative: HiGHS's tolerances must not turn the bound into an overestimate


def lower_bound(ix, managed, goal=None):
    """(extra, infeasible): a lower bound on the cost that any schedule fitting `managed` bytes
    adds to store-all's, and whether some step proved that none fits. (0.0, False) when no step
    is under pressure. `goal`: the extra cost of a plan in hand; once the bound meets it, nothing
    more is solved.

    Each step's program is solved relaxed (fast at any size); on small graphs the steps with the
    best relaxed bounds are solved again with x and r in {0, 1}, which is still a relaxation of the
    scheduling problem (a schedule gives such an x and r) and often closes the gap to the optimum:
    HiGHS's dual bound is taken, which holds even where its node limit stops it."""
    if not ix.bwd:
        return 0.0, False
    first = _first_needed(ix)
    held = _gradients_held(ix)
    found, size = [], 0
    for k in _points(ix, managed, held):
        if size >= MAX_VARS:  # a work limit: a 10,000-layer MLP's programs take seconds each
            break
        prog = _program(ix, managed, k, first, held[k])
        if prog is None:
            continue
        size += len(prog[0])
        extra = _solve(prog, integral=False)
        if extra == math.inf:
            return math.inf, True
        if extra is not None:
            found.append((extra, k, prog))
    best = max((e for e, _, _ in found), default=0.0)
    found.sort(key=lambda t: (-t[0], t[1]))
    for _, _, prog in found[:INTEGER_POINTS]:
        if goal is not None and best >= goal * (1 - 2 * SAFETY):
            break
        if len(prog[0]) <= INTEGER_VARS:
            extra = _solve(prog, integral=True)
            if extra == math.inf:
                return math.inf, True
            if extra is not None:
                best = max(best, extra)
    return best, False


def _points(ix, managed, held):
    """The backward steps where most bytes must be missing, tightest first (ties: the earlier)."""
    bwd = ix.bwd
    n = len(bwd)
    bpos = {b: i for i, b in enumerate(bwd)}
    # forward values read at or after step k: each counts for every k up to its last reader
    need = np.zeros(n + 1)
    for u in ix.fwd:
        last = max((bpos[c] for c in ix.breaders[u]), default=-1)
        if last >= 0:
            need[0] += ix.ram[u]
            need[last + 1] -= ix.ram[u]
    need = np.cumsum(need)[:n]
    excess = [need[k] + held[k] + ix.ram[b] + ix.ws[b] - managed for k, b in enumerate(bwd)]
    order = sorted((k for k in range(n) if excess[k] > 0), key=lambda k: (-excess[k], k))
    return order[:MAX_POINTS]


def _first_needed(ix):
    """For each forward value, the first backward step it is an ancestor of: it has been computed
    before that step, so computing it after is extra. A value no gradient depends on is absent:
    its first computation may come late, so it costs nothing in the programs."""
    first = {}
    for j, b in enumerate(ix.bwd):
        stack = [p for p in ix.fpreds[b] if p not in first]
        while stack:
            u = stack.pop()
            if u not in first:
                first[u] = j
                stack.extend(p for p in ix.fpreds[u] if p not in first)
    return first


def _gradients_held(ix):
    """Bytes of gradients computed before step k and read at or after it, for each k."""
    n = len(ix.bwd)
    bpos = {b: i for i, b in enumerate(ix.bwd)}
    held = np.zeros(n + 1)
    for i, g in enumerate(ix.bwd):
        last = max((bpos[c] for c in ix.breaders[g] if c in bpos), default=-1)
        if last > i:
            held[i + 1] += ix.ram[g]
            held[last + 1] -= ix.ram[g]
    return [int(v) for v in np.cumsum(held)[:n]]


def _program(ix, managed, k, first, held):
    """Step k's program as (cost vector, A, rhs, lower, upper, cost scale) for A z <= rhs, or None
    when it is too large. Its cost is the extra cost at z; its rows are in units that HiGHS handles
    well (costs relative to the largest, bytes to the budget)."""
    from scipy.sparse import coo_matrix  # scipy is slow to import

    bwd = ix.bwd
    bk = bwd[k]
    later = set(bwd[k:])
    must = [u for u in ix.fwd if any(c in later for c in ix.breaders[u])]
    cap = managed - ix.ram[bk] - ix.ws[bk] - held  # may be negative: the program is then infeasible
    # the values that matter: what must be accounted for, and its ancestors
    inside, stack = set(), list(must)
    while stack:
        u = stack.pop()
        if u not in inside:
            inside.add(u)
            stack.extend(ix.fpreds[u])
    vals = [u for u in ix.fwd if u in inside]
    n = len(vals)
    if 2 * n > PROGRAM_VARS:
        return None
    idx = {u: i for i, u in enumerate(vals)}
    top = max((ix.cost[u] for u in vals), default=0.0) or 1.0
    c = np.zeros(2 * n)  # x (live at b_k), then r (computed after b_k)
    c[n:] = [ix.cost[u] / top if first.get(u, math.inf) <= k else 0.0 for u in vals]
    rows, cols, coef, rhs = [], [], [], []
    r = 0
    must_set = set(must)
    for u in vals:
        i = idx[u]
        if u in must_set:  # -x_u - r_u <= -1
            rows += [r, r]
            cols += [i, n + i]
            coef += [-1.0, -1.0]
            rhs.append(-1.0)
            r += 1
        for p in ix.fpreds[u]:  # r_u - r_p - x_p <= 0
            j = idx[p]
            rows += [r, r, r]
            cols += [n + i, n + j, j]
            coef += [1.0, -1.0, -1.0]
            rhs.append(0.0)
            r += 1
    scale = max(managed, 1)
    for u in vals:
        rows.append(r)
        cols.append(idx[u])
        coef.append(ix.ram[u] / scale)
    rhs.append(cap / scale)
    r += 1
    A = coo_matrix((coef, (rows, cols)), shape=(r, 2 * n)).tocsr()
    lo, hi = np.zeros(2 * n), np.ones(2 * n)
    for p in ix.fpreds[bk]:
        lo[idx[p]] = 1.0
    return c * top, A, np.array(rhs), lo, hi, top


def _solve(prog, integral):
    """The program's optimum (relaxed) or HiGHS's dual bound on it (integral), as extra cost;
    math.inf where it is infeasible, None where HiGHS gave no bound."""
    from scipy.optimize import Bounds, LinearConstraint, linprog, milp

    c, A, rhs, lo, hi, top = prog
    if not len(c):  # nothing to account for but the step's own bytes
        return math.inf if rhs[-1] < 0 else 0.0
    c = c / top
    if not integral:
        res = linprog(c, A_ub=A, b_ub=rhs, bounds=np.column_stack([lo, hi]), method="highs")
        if res.status == 2:
            return math.inf
        return None if res.status != 0 else max(0.0, res.fun * top * (1 - SAFETY))
    res = milp(c, constraints=[LinearConstraint(A, -np.inf, rhs)], bounds=Bounds(lo, hi),
               integrality=np.ones(len(c)), options={"node_limit": INTEGER_NODES, "disp": False})
    if res.status == 2:
        return math.inf
    dual = getattr(res, "mip_dual_bound", None)
    if dual is None or not math.isfinite(dual):
        return None
    return max(0.0, dual * top * (1 - SAFETY))
