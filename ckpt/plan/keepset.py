"""From a set of values to keep to a schedule: the common core of store-all, sqrt-n and the heuristic.

The forward pass computes every forward node once, keeping the values in `keep` and freeing every
other one after its last forward reader. The backward pass computes the gradient nodes in order;
a gradient whose operands were dropped recomputes them from the nearest live ancestors. After every
step a value is freed as soon as nothing still to come demands it: a later gradient reads it, or
it is needed to recompute a dropped value that a later gradient reads.
"""

from ..schedule import COMPUTE, FREE


class JointIndex:
    """Adjacency of the joint graph as plain lists, built once per graph (planners call this often)."""

    def __init__(self, joint):
        order = joint.graph["order"]
        self.joint = joint
        self.order = order
        self.fwd = [x for x in order if joint.nodes[x]["kind"] == "forward"]
        self.bwd = [x for x in order if joint.nodes[x]["kind"] == "backward"]
        self.pos = {x: i for i, x in enumerate(order)}
        self.preds = {x: list(joint.predecessors(x)) for x in order}
        self.fpreds = {x: [u for u in self.preds[x] if joint.nodes[u]["kind"] == "forward"] for x in order}
        self.fsuccs = {u: [x for x in joint.successors(u) if joint.nodes[x]["kind"] == "forward"] for u in self.fwd}
        self.breaders = {u: [x for x in joint.successors(u) if joint.nodes[x]["kind"] == "backward"] for u in order}
        self.ram = {x: joint.nodes[x]["ram"] for x in order}
        self.cost = {x: joint.nodes[x]["cost"] for x in order}
        self.residuals = {u for u in self.fwd if self.breaders[u]}


def keep_schedule(ix, keep, eager=False):
    """`eager`: a recomputed value outside `keep` is dropped once the gradient that wanted it is
    computed, instead of being kept until its last reader."""
    steps = []
    live = set()
    fpos = {u: i for i, u in enumerate(ix.fwd)}
    last_fwd_reader = {u: max((fpos[c] for c in ix.fsuccs[u]), default=-1) for u in ix.fwd}

    for i, x in enumerate(ix.fwd):
        steps.append((COMPUTE, x))
        live.add(x)
        for u in ix.fpreds[x] + [x]:
            if u in live and u not in keep and last_fwd_reader[u] <= i:
                steps.append((FREE, u))
                live.discard(u)

    remaining = {u: len(ix.breaders[u]) for u in ix.order}  # gradient readers not yet computed

    current = set()  # operands of the gradient being computed (the eager policy's only demand)

    def sweep():
        demanded, now = {}, {}
        for u in reversed(ix.fwd):
            d, e = remaining[u] > 0, u in current
            for c in ix.fsuccs[u]:
                if c not in live:
                    e = e or now[c]
                # under the eager policy a live value outside `keep` is about to be dropped, so
                # what it was recomputed from stays demanded
                if c not in live or (eager and c not in keep):
                    d = d or demanded[c]
            demanded[u], now[u] = d, e
            if u in live and not (d if (u in keep or not eager) else e):
                steps.append((FREE, u))
                live.discard(u)

    sweep()
    for b in ix.bwd:
        current = set(ix.fpreds[b])
        missing, stack = set(), [u for u in ix.fpreds[b] if u not in live]
        while stack:
            u = stack.pop()
            if u not in missing:
                missing.add(u)
                stack.extend(p for p in ix.fpreds[u] if p not in live and p not in missing)
        for u in sorted(missing, key=ix.pos.__getitem__):
            steps.append((COMPUTE, u))
            live.add(u)
            sweep()
        steps.append((COMPUTE, b))
        live.add(b)
        for u in ix.preds[b]:
            remaining[u] -= 1
            if ix.joint.nodes[u]["kind"] == "backward" and remaining[u] == 0:
                steps.append((FREE, u))
                live.discard(u)
        if remaining[b] == 0:
            steps.append((FREE, b))
            live.discard(b)
        current = set()
        sweep()
    return steps
