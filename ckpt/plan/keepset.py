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


def keep_schedule(ix, keep):
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

    def sweep():
        demanded = {}
        for u in reversed(ix.fwd):
            d = remaining[u] > 0
            if not d:
                for c in ix.fsuccs[u]:
                    if c not in live and demanded[c]:
                        d = True
                        break
            demanded[u] = d
            if u in live and not d:
                steps.append((FREE, u))
                live.discard(u)

    sweep()
    for b in ix.bwd:
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
        sweep()
    return steps
