"""Improvement search over keep-sets, for any DAG beyond the exact solvers' reach.

A plan here is a keep-set (the forward values held from the first forward pass into the backward
pass) and a recompute policy (lazy or eager, see keepset.py); `keep_schedule` turns it into steps
and `simulate` gives its peak and cost. The search is deterministic: it counts evaluations, never
reads the clock, so a plan is a function of the graph, the budget and the options alone.

Two phases:
- *descent*: from store-all's keep-set, repeatedly drop the kept value, live at the peak, that
  frees the most bytes per unit of recompute it causes. The sequence of keep-sets does not depend
  on the budget, so the best of its members that fit is monotone in the budget.
- *improvement*: from the best start (the descent's, the heuristic families', sqrt-n's), local
  moves — keep one more value, or swap a value live at the peak for one that saves recompute —
  accepted when the plan still fits and costs less. It never returns worse than where it started.

Values of repeated blocks are tied into classes (`body.3.probs` and `body.7.probs`, same size and
cost): a move drops or keeps a whole class at once, so a 96-layer transformer is searched as one
layer is. An untied pass follows where the evaluation budget allows.
"""

from ..schedule import COMPUTE, Plan
from .keepset import keep_schedule

# Evaluations cost time linear in the graph: the budget is in node-visits, so that a small graph
# gets many moves and a large one few, and the same graph always gets the same number.
WORK = 1_500_000
MIN_EVALS = 40


def value_classes(ix):
    """Forward values grouped by the name they share across repeated blocks (every integer part
    of a dotted name replaced), their size and their cost; ungrouped names stay alone."""
    groups = {}
    for u in ix.fwd:
        parts = str(u).split(".")
        pattern = ".".join("#" if p.isdigit() else p for p in parts)
        if pattern == str(u) or all(p == "#" for p in pattern.split(".")):
            key = ("", u)
        else:
            key = (pattern, ix.ram[u], ix.cost[u], len(ix.fpreds[u]))
        groups.setdefault(key, []).append(u)
    return list(groups.values())


class Evaluator:
    """(peak_managed, cost) of a keep-set under a policy, memoised, counting evaluations."""

    def __init__(self, ix, joint, max_evals):
        self.ix, self.joint, self.max_evals = ix, joint, max_evals
        self.seen = {}
        self.evals = 0

    @property
    def exhausted(self):
        return self.evals >= self.max_evals

    def __call__(self, keep, eager):
        key = (keep, eager)
        if key not in self.seen:
            self.evals += 1
            self.seen[key] = walk(self.ix, keep_schedule(self.ix, keep, eager=eager))
        return self.seen[key]


def walk(ix, steps):
    """(peak_managed, cost, forward values live at the peak): simulate's figures, from the index's
    plain dicts (the search's inner loop; tests hold it equal to simulate)."""
    ram, ws, cost = ix.ram, ix.ws, ix.cost
    live = total = peak = 0
    at = -1
    for n, (kind, x) in enumerate(steps):
        if kind == COMPUTE:
            if live + ram[x] + ws[x] > peak:
                peak, at = live + ram[x] + ws[x], n
            live += ram[x]
            total += cost[x]
        else:
            live -= ram[x]
    held = set()
    for kind, x in steps[:at + 1]:
        if kind == COMPUTE:
            held.add(x)
        else:
            held.discard(x)
    fwd = ix.fwd_set
    return peak, total, frozenset(u for u in held if u in fwd)


def _recompute_cost(ix, u, keep):
    """What dropping u costs at the least: u itself and what it reads that is not kept."""
    return ix.cost[u] + sum(ix.cost[p] for p in ix.fpreds[u] if p not in keep)


def descent(ix, ev, classes, eager, budget_managed):
    """The budget-independent sequence of keep-sets from store-all's down, walked until one fits
    (or nothing at the peak can be dropped). Returns the cheapest that fits, or None."""
    of = {u: c for c in map(tuple, classes) for u in c}
    keep = frozenset(ix.residuals)
    best = None
    while not ev.exhausted:
        peak, cost, live = ev(keep, eager)
        if peak <= budget_managed:
            if best is None or cost < best[1]:
                best = (keep, cost)
            break
        scores = {}
        for u in live & keep:
            c = of[u]
            if c in scores:
                continue
            freed = sum(ix.ram[v] for v in c if v in live and v in keep)
            extra = sum(_recompute_cost(ix, v, keep) for v in c if v in keep)
            scores[c] = (freed / max(extra, 1e-12), -ix.pos[c[0]])
        if not scores:
            break
        drop = max(scores, key=scores.__getitem__)
        keep = keep - set(drop)
    return best


def improve(ix, ev, classes, keep, eager, budget_managed):
    """Local moves from a fitting keep-set until none helps or the evaluations run out."""
    peak, cost, live = ev(keep, eager)
    assert peak <= budget_managed
    classes = [tuple(c) for c in classes]
    improved = True
    while improved and not ev.exhausted:
        improved = False
        # keep one more class: the ones whose recompute costs most first
        outside = [c for c in classes if any(u not in keep for u in c)]
        outside.sort(key=lambda c: (-sum(ix.cost[u] for u in c if u not in keep), ix.pos[c[0]]))
        for c in outside:
            if ev.exhausted:
                break
            k2 = keep | set(c)
            p2, c2, l2 = ev(k2, eager)
            if p2 <= budget_managed and c2 < cost:
                keep, peak, cost, live = k2, p2, c2, l2
                improved = True
        if improved:
            continue
        # swap: free bytes at the peak for a class whose recompute costs more
        at_peak = [c for c in classes if any(u in live and u in keep for u in c)]
        at_peak.sort(key=lambda c: (-sum(ix.ram[u] for u in c if u in keep), ix.pos[c[0]]))
        outside = outside[:12]
        for out_c in at_peak[:12]:
            for in_c in outside:
                if ev.exhausted or set(in_c) == set(out_c):
                    continue
                k2 = (keep - set(out_c)) | set(in_c)
                p2, c2, l2 = ev(k2, eager)
                if p2 <= budget_managed and c2 < cost:
                    keep, peak, cost, live = k2, p2, c2, l2
                    improved = True
                    break
            if improved:
                break
    return keep, cost


def search(ix, joint, budget_managed, starts=(), max_evals=None):
    """The cheapest keep-set plan found that fits, or None. `starts`: (keep, eager) pairs from
    other planners to improve on; the result costs no more than the best of them that fits."""
    if max_evals is None:
        max_evals = max(MIN_EVALS, WORK // max(len(ix.order), 1))
    ev = Evaluator(ix, joint, max_evals)
    tied = value_classes(ix)
    cands = []
    for eager in (False, True):
        d = descent(ix, ev, tied, eager, budget_managed)
        if d is not None:
            cands.append((d[1], d[0], eager, "descent"))
    for keep, eager in starts:
        peak, cost, _ = ev(frozenset(keep), eager)
        if peak <= budget_managed:
            cands.append((cost, frozenset(keep), eager, "start"))
    if not cands:
        return None
    cands.sort(key=lambda t: (t[0], t[3], t[2]))
    cost, keep, eager, _ = cands[0]
    keep, cost = improve(ix, ev, tied, keep, eager, budget_managed)
    singles = [[u] for u in ix.fwd]
    if len(singles) > len(tied):
        keep, cost = improve(ix, ev, singles, keep, eager, budget_managed)
    steps = keep_schedule(ix, keep, eager=eager)
    plan = Plan("budget", steps, solver="search")
    plan.notes.update(kept=len(keep), policy="eager" if eager else "lazy", evaluations=ev.evals,
                      evaluation_budget=max_evals)
    return plan
