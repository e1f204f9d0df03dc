"""store-all and sqrt-n (Chen, Xu, Zhang, Guestrin 2016)."""

import math

from ..schedule import Plan
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
    plan = Plan("sqrt-n", keep_schedule(ix, chosen), solver="direct")
    plan.notes.update(checkpoints=len(chosen), keep=frozenset(chosen))
    return plan
