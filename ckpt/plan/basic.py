"""store-all and sqrt-n (Chen, Xu, Zhang, Guestrin 2016)."""

import math

from ..schedule import COMPUTE, Plan
from .keepset import keep_schedule


def store_all(ix):
    """Keep every value a gradient reads; free everything else after its last forward reader."""
    return Plan("store-all", keep_schedule(ix, ix.residuals), solver="direct")


def articulation_points(ix):
    """Forward nodes that every path from the earlier to the later part of the order runs through:
    the only candidates for a checkpoint that splits the network into independent segments."""
    fpos = {u: i for i, u in enumerate(ix.fwd)}
    reach = -1  # furthest position that an edge from before the current node reaches
    points = []
    for i, u in enumerate(ix.fwd):
        if reach <= i:
            points.append(u)
        reach = max([reach] + [fpos[c] for c in ix.fsuccs[u]])
    return points[:-1] if points and points[-1] == ix.fwd[-1] else points


def sqrt_n(ix):
    """About sqrt(n) checkpoints, evenly spaced among the articulation points; each segment is
    recomputed once in the backward pass."""
    points = articulation_points(ix)
    k = max(1, round(math.sqrt(len(ix.fwd))))
    if len(points) <= k:
        chosen = set(points)
    else:
        stride = len(points) / k
        chosen = {points[min(len(points) - 1, int((i + 1) * stride) - 1)] for i in range(k)}
    # The last segment is reversed right after the forward pass: keep what its gradients read
    # instead of dropping it and recomputing it at once.
    last = max((ix.fwd.index(u) for u in chosen), default=-1)
    chosen |= {u for u in ix.fwd[last + 1:] if u in ix.residuals}
    chosen = _recomputed_from(ix, chosen)
    steps = keep_schedule(ix, chosen)
    # Even spacing counts values, not bytes: a boundary larger than the residuals behind it, or
    # recomputed while other values are live, can hold more than storing them would. sqrt-n
    # exists to lower the peak; where its segments do not (higher on either figure, or equal on
    # both), store-all's plan is as low and recomputes nothing.
    sa = store_all(ix)
    mine, theirs = _peaks(ix, steps), _peaks(ix, sa.steps)
    if not (all(a <= b for a, b in zip(mine, theirs)) and mine != theirs):
        sa.strategy, sa.solver = "sqrt-n", "store-all (sqrt-n no lower)"
        sa.notes.update(checkpoints=0, keep=frozenset(ix.residuals))
        return sa
    plan = Plan("sqrt-n", steps, solver="direct")
    plan.notes.update(checkpoints=len(chosen), keep=frozenset(chosen))
    return plan


def _recomputed_from(ix, keep):
    """The kept values a gradient reads, or that a value a gradient reads is recomputed from.
    On a graph of several components or outputs, the end of one component (an output no gradient
    reads) is a boundary of the order but starts no segment: held, it is memory for nothing."""
    used, seen = set(), set()
    stack = [u for u in ix.residuals if u not in keep]
    while stack:
        for p in ix.fpreds[stack.pop()]:
            if p in keep:
                used.add(p)
            elif p not in seen:
                seen.add(p)
                stack.append(p)
    return frozenset(u for u in keep if u in ix.residuals or u in used)


def _peaks(ix, steps):
    """(managed peak, managed peak with each step's workspace) of a schedule: simulate's figures."""
    live = peak = peak_ws = 0
    for kind, x in steps:
        if kind == COMPUTE:
            peak_ws = max(peak_ws, live + ix.ram[x] + ix.ws[x])
            live += ix.ram[x]
            peak = max(peak, live)
        else:
            live -= ix.ram[x]
    return peak, peak_ws
