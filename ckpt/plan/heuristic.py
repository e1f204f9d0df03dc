"""The fast heuristic for graphs beyond the exact solvers: search over sets of kept values.

Two recompute policies span the range: `lazy` keeps a recomputed value until its last reader
(Chen's segments: each recomputed once), `eager` drops it as soon as the gradient that wanted it
is done (least memory, most recompute). The search tries checkpoint sets of growing size, evenly
spread over the articulation points and then over every value, and keeps the cheapest that fits.
"""

import math

from ..schedule import Plan
from ..simulate import simulate
from .basic import articulation_points
from .keepset import keep_schedule


def _spread(items, k):
    if k >= len(items):
        return list(items)
    if k <= 0:
        return []
    stride = len(items) / k
    return [items[min(len(items) - 1, int((i + 1) * stride) - 1)] for i in range(k)]


def candidates(ix):
    """Keep-sets to try, from least memory to most."""
    points = articulation_points(ix)
    res = [u for u in ix.fwd if u in ix.residuals]
    # values whose recompute is cheap for their size are dropped first
    by_value = sorted(res, key=lambda u: (ix.ram[u] / max(ix.cost[u], 1e-9), ix.pos[u]))
    seen = set()
    sizes = sorted({0, 1, 2, len(points)} | {round(len(points) ** e) for e in (0.25, 0.5, 0.75)}
                   | {int(len(points) * f) for f in (0.125, 0.25, 0.5, 0.75)})
    for k in sizes:
        key = ("points", k)
        if key not in seen:
            seen.add(key)
            yield frozenset(_spread(points, k))
    steps = sorted({int(len(by_value) * f / 16) for f in range(17)})
    for n in steps:  # drop the n values with the most bytes per unit of recompute cost
        yield frozenset(by_value[n:]) | frozenset(_spread(points, round(math.sqrt(len(points)))))
        yield frozenset(by_value[n:])


def heuristic(ix, budget_managed, joint):
    best = None
    tried = set()
    for keep in candidates(ix):
        for eager in (False, True):
            if (keep, eager) in tried:
                continue
            tried.add((keep, eager))
            steps = keep_schedule(ix, keep, eager=eager)
            sim = simulate(joint, steps, check=False)
            if sim.peak_managed <= budget_managed and (best is None or sim.cost < best[0]):
                best = (sim.cost, steps, len(keep), eager)
    if best is None:
        return None
    plan = Plan("budget", best[1], solver="heuristic")
    plan.notes.update(kept=best[2], policy="eager" if best[3] else "lazy")
    return plan


def least_memory(ix, joint):
    """The smallest peak the heuristic family reaches: keep nothing, recompute eagerly."""
    steps = keep_schedule(ix, frozenset(), eager=True)
    return steps, simulate(joint, steps, check=False)
