"""Improvement search over keep-sets, for any DAG beyond the exact solvers' reach.

A plan here is a keep-set (the forward values held from the first forward pass into the backward
pass) and a hold-set (the recomputed values kept until their last reader; the others are dropped
as soon as the gradient that wanted them is done: see keepset.py); `keep_schedule` turns the pair
into steps and `walk` gives its peak and cost. The search is deterministic: it counts evaluations, never
reads the clock, so a plan is a function of the graph, the budget and the options alone.

Two phases:
- *descent*: from store-all's keep-set, repeatedly drop the kept value, live at the peak, that
  frees the most bytes per unit of recompute it causes. The sequence of keep-sets does not depend
  on the budget, so the best of its members that fit is monotone in the budget.
- *starts*: besides the descent, families of checkpoint sets spread evenly over the articulation
  points or over the values by bytes per unit of cost (a bisection in each finds the largest that
  fits), and sqrt-n's.
- *improvement*: from the best start, local
  moves — keep one more value, hold or release a recomputed one, or swap a value live at the peak
  for one that saves recompute — accepted when the plan still fits and costs less. It never
  returns worse than where it started.

Values of repeated blocks are tied into classes (`body.3.probs` and `body.7.probs`, same size and
cost): a move drops or keeps a whole class at once, so a 96-layer transformer is searched as one
layer is. An untied pass follows where the evaluation budget allows.
"""

import math

from ..schedule import COMPUTE, Plan
from .basic import articulation_points
from .keepset import keep_schedule

# The search's budget is counted in schedule steps walked (time is about linear in them), so a
# small graph gets many moves and a large one few, and the same graph always gets the same ones.
WORK = 1_500_000


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
    return [tuple(c) for c in groups.values()]


class Evaluator:
    """(peak_managed, cost, forward values live at the peak) of a (keep, hold) pair, memoised,
    counting evaluations."""

    def __init__(self, ix, work):
        self.ix, self.work = ix, work
        self.seen = {}
        self.evals = self.walked = 0

    @property
    def exhausted(self):
        return self.walked >= self.work

    def __call__(self, keep, hold):
        key = (keep, hold)
        if key not in self.seen:
            # at least one evaluation (a start) is always made, however large the graph
            steps = keep_schedule(self.ix, keep, hold=hold, max_steps=max(self.work - self.walked, 4 * len(self.ix.order)))
            self.evals += 1
            if steps is None:  # beyond what is left of the budget: as good as not fitting
                self.walked = self.work
                self.seen[key] = (math.inf, math.inf, frozenset())
            else:
                self.walked += len(steps)
                self.seen[key] = walk(self.ix, steps)
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


def _spread(items, k):
    if k >= len(items):
        return list(items)
    if k <= 0:
        return []
    stride = len(items) / k
    return [items[min(len(items) - 1, int((i + 1) * stride) - 1)] for i in range(k)]


def families(ix):
    """Families of keep-sets, each ordered from least memory to most."""
    points = articulation_points(ix)
    res = [u for u in ix.fwd if u in ix.residuals]
    # values whose recompute is cheap for their size are dropped first
    by_value = sorted(res, key=lambda u: (ix.ram[u] / max(ix.cost[u], 1e-9), ix.pos[u]))
    counts = sorted({0, 1, 2, len(points)} | {round(len(points) ** e) for e in (0.25, 0.5, 0.75)}
                    | {int(len(points) * f) for f in (0.125, 0.25, 0.5, 0.75)})
    spread = [frozenset(_spread(points, k)) for k in counts]
    drops = sorted({int(len(by_value) * f / 16) for f in range(17)}, reverse=True)
    root = frozenset(_spread(points, round(math.sqrt(len(points)))))
    return [spread, [frozenset(by_value[n:]) for n in drops], [frozenset(by_value[n:]) | root for n in drops]]


def family_starts(ix, ev, budget_managed):
    """The largest set of each family that fits, under either policy: [(cost, keep, hold)].
    Within a family memory grows along the list and cost falls, so a bisection finds it; its
    neighbours are tried too, since neither trend is strict."""
    found = []
    for family in families(ix):
        for hold in _policies(ix):
            lo, hi = 0, len(family) - 1
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if ev(family[mid], hold)[0] <= budget_managed:
                    lo = mid
                else:
                    hi = mid - 1
            for k in range(max(0, lo - 1), min(len(family), lo + 2)):
                peak, cost, _ = ev(family[k], hold)
                if peak <= budget_managed:
                    found.append((cost, family[k], hold))
    return found


def descent(ix, ev, classes, hold, budget_managed=-1):
    """The budget-independent sequence of keep-sets from store-all's down, walked until one fits
    (or nothing at the peak can be dropped): [(keep, peak, cost)]. It does not depend on the
    budget, so the cheapest of its members that fit is monotone in the budget."""
    of = {u: c for c in classes for u in c}
    keep = frozenset(ix.residuals)
    seq = []
    while not ev.exhausted:
        peak, cost, live = ev(keep, hold)
        seq.append((keep, peak, cost))
        if peak <= budget_managed:
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
    return seq


def _policies(ix):
    return (ix.fwd_set, frozenset())  # lazy, eager


def lowest(ix, work=None):
    """(peak_managed, keep, hold): the least peak the search reaches. Both descents to their
    end, then keeping one more value wherever that lowers the peak (a checkpoint shortens what
    a backward step must recompute and hold)."""
    ev = Evaluator(ix, work or WORK)
    classes = value_classes(ix)
    best = None
    for hold in reversed(_policies(ix)):
        for keep, peak, _ in descent(ix, ev, classes, hold) + [(frozenset(), ev(frozenset(), hold)[0], 0)]:
            if best is None or peak < best[0]:
                best = (peak, keep, hold)
    peak, keep, hold = best
    improved = True
    while improved and not ev.exhausted:
        improved = False
        for u in ix.fwd:
            if u in keep or ev.exhausted:
                continue
            p2 = ev(keep | {u}, hold)[0]
            if p2 < peak:
                peak, keep, improved = p2, keep | {u}, True
    return peak, keep, hold


def improve(ix, ev, classes, keep, hold, budget_managed):
    """Local moves from a fitting plan until none helps or the evaluations run out."""
    peak, cost, live = ev(keep, hold)
    assert peak <= budget_managed
    improved = True

    def accept(k2, h2):
        nonlocal keep, hold, peak, cost, live
        p2, c2, l2 = ev(k2, h2)
        if p2 <= budget_managed and c2 < cost:
            keep, hold, peak, cost, live = k2, h2, p2, c2, l2
            return True
        return False

    while improved and not ev.exhausted:
        improved = False
        # keep one more class, the ones whose recompute costs most first; or hold it once recomputed
        outside = [c for c in classes if any(u not in keep for u in c)]
        outside.sort(key=lambda c: (-sum(ix.cost[u] for u in c if u not in keep), ix.pos[c[0]]))
        for c in outside:
            if ev.exhausted:
                break
            if accept(keep | set(c), hold):
                improved = True
            elif any(u not in hold for u in c) and accept(keep, hold | set(c)):
                improved = True
        if improved:
            continue
        # release held classes live at the peak; swap a kept class at the peak for one outside
        at_peak = [c for c in classes if any(u in live for u in c)]
        at_peak.sort(key=lambda c: (-sum(ix.ram[u] for u in c if u in live), ix.pos[c[0]]))
        for c in at_peak[:12]:
            if ev.exhausted:
                break
            if any(u in hold and u not in keep for u in c) and accept(keep, hold - set(c)):
                improved = True
                break
            if not any(u in keep for u in c):
                continue
            for in_c in outside[:12]:
                if ev.exhausted or in_c == c:
                    continue
                if accept((keep - set(c)) | set(in_c), hold):
                    improved = True
                    break
            if improved:
                break
    return keep, hold, cost


def search(ix, budget_managed, starts=(), work=None):
    """The cheapest plan found that fits, or None. `starts`: (keep, eager) pairs from other
    planners to improve on; the result costs no more than the best of them that fits."""
    ev = Evaluator(ix, work or WORK)
    tied = value_classes(ix)
    lazy, eager = _policies(ix)
    cands = []
    for hold in (lazy, eager):
        for keep, peak, cost in descent(ix, ev, tied, hold, budget_managed):
            if peak <= budget_managed:
                cands.append((cost, len(cands), keep, hold))
    for cost, keep, hold in family_starts(ix, ev, budget_managed):
        cands.append((cost, len(cands), keep, hold))
    for keep, is_eager in starts:
        hold = eager if is_eager else lazy
        peak, cost, _ = ev(frozenset(keep), hold)
        if peak <= budget_managed:
            cands.append((cost, len(cands), frozenset(keep), hold))
    if not cands:  # below every descent: the plan of the least peak, if it fits
        peak, keep, hold = lowest(ix)
        if peak > budget_managed:
            return None
        cands.append((ev(keep, hold)[1], 0, keep, hold))
    cost, _, keep, hold = min(cands)
    keep, hold, cost = improve(ix, ev, tied, keep, hold, budget_managed)
    if len(ix.fwd) > len(tied):
        keep, hold, cost = improve(ix, ev, [(u,) for u in ix.fwd], keep, hold, budget_managed)
    steps = keep_schedule(ix, keep, hold=hold)
    plan = Plan("budget", steps, solver="search")
    plan.notes.update(kept=len(keep), keep=keep, held=len(hold - keep), evaluations=ev.evals,
                      steps_walked=ev.walked, work=ev.work)
    return plan
