"""The fast heuristic for graphs beyond the exact solvers: search over sets of kept values.

Two recompute policies span the range: `lazy` keeps a recomputed value until its last reader
(Chen's segments: each recomputed once), `eager` drops it as soon as the gradient that wanted it
is done (least memory, most recompute). The search tries checkpoint sets of growing size, evenly
spread over the articulation points and then over every value, and keeps the cheapest that fits.
"""

import math

from ..schedule import Plan
from .basic import articulation_points
from .keepset import keep_schedule
from .search import walk


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


def heuristic(ix, budget_managed, joint):
    """The cheapest plan that fits among the families, both policies. Within a family, memory
    grows along the list and cost falls, so a bisection finds the first that fits; its
    neighbours are tried too, since neither trend is strict. Only figures are kept per try (a
    long chain has thousands of tries); the winner's steps are made again at the end."""
    best, seen = None, {}

    def evaluate(keep, eager):
        if (keep, eager) not in seen:
            seen[(keep, eager)] = walk(ix, keep_schedule(ix, keep, eager=eager))[:2]
        return seen[(keep, eager)]

    for family in families(ix):
        for eager in (False, True):
            lo, hi = 0, len(family) - 1
            while lo < hi:  # the last set that fits (most memory within the budget)
                mid = (lo + hi + 1) // 2
                if evaluate(family[mid], eager)[0] <= budget_managed:
                    lo = mid
                else:
                    hi = mid - 1
            for k in range(max(0, lo - 1), min(len(family), lo + 2)):
                peak, cost = evaluate(family[k], eager)
                if peak <= budget_managed and (best is None or cost < best[0]):
                    best = (cost, family[k], eager)
    if best is None:
        return None
    plan = Plan("budget", keep_schedule(ix, best[1], eager=best[2]), solver="heuristic")
    plan.notes.update(kept=len(best[1]), keep=best[1], policy="eager" if best[2] else "lazy")
    return plan
