"""From a set of values to keep to a schedule: the common core of store-all, sqrt-n and the search.

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
        self.fwd_set = frozenset(self.fwd)
        self.bwd = [x for x in order if joint.nodes[x]["kind"] == "backward"]
        self.pos = {x: i for i, x in enumerate(order)}
        # neighbours in graph order, so that a plan does not depend on how the graph was built
        self.preds = {x: sorted(joint.predecessors(x), key=self.pos.__getitem__) for x in order}
        self.fpreds = {x: [u for u in self.preds[x] if joint.nodes[u]["kind"] == "forward"] for x in order}
        succs = {x: sorted(joint.successors(x), key=self.pos.__getitem__) for x in order}
        self.fsuccs = {u: [x for x in succs[u] if joint.nodes[x]["kind"] == "forward"] for u in self.fwd}
        self.breaders = {u: [x for x in succs[u] if joint.nodes[x]["kind"] == "backward"] for u in order}
        self.ram = {x: joint.nodes[x]["ram"] for x in order}
        self.ws = {x: joint.nodes[x].get("ws", 0) for x in order}  # bytes held only while x runs
        fpos = {u: i for i, u in enumerate(self.fwd)}
        self.last_fwd_reader = {u: max((fpos[c] for c in self.fsuccs[u]), default=-1) for u in self.fwd}
        self.cost = {x: joint.nodes[x]["cost"] for x in order}
        self.residuals = {u for u in self.fwd if self.breaders[u]}
        self.n_breaders = {u: len(self.breaders[u]) for u in order}
        self.views = {}  # what planners derive from the graph once (blocks.py's block views)


def keep_schedule(ix, keep, eager=False, hold=None, refetch=frozenset(), max_steps=None, release=()):
    """`eager`: a recomputed value outside `keep` is dropped once the gradient that wanted it is
    computed, instead of being kept until its last reader. `hold`, where given, says it value by
    value: the recomputed values in `hold` are kept until their last reader, the others dropped
    eagerly (eager=True is hold=nothing, eager=False is hold=everything). With few values kept a
    schedule grows quadratically in a long chain: past `max_steps` steps it returns None.
    `refetch`: values (outside `keep`) freed after each forward reader and recomputed before the
    next, rather than held across the forward pass (a U-Net's skip connections, for one).
    `release`: (u, b) pairs: a kept value u is dropped once gradient b is computed, and recomputed
    for the readers still to come (kept for a first gradient that needs it beside little else, and
    not through a later peak).

    Demand is kept up to date incrementally, so a schedule costs time linear in the graph:
    `support[u]` counts the reasons u is still demanded (a gradient still to come reads it, or a
    consumer that will have to be recomputed is demanded); it only ever falls, and u is freed
    the moment it reaches zero."""
    steps = []
    live = set()
    fwd, fpreds, fsuccs = ix.fwd, ix.fpreds, ix.fsuccs
    last_fwd_reader = ix.last_fwd_reader
    fwd_set = ix.fwd_set

    def drop(u):
        steps.append((FREE, u))
        live.discard(u)

    def missing(wanted):
        """What must be recomputed, in order, for `wanted` to be live: from the nearest live ancestors."""
        out, stack = set(), [u for u in wanted if u not in live]
        while stack:
            u = stack.pop()
            if u not in out:
                out.add(u)
                stack.extend(p for p in fpreds[u] if p not in live and p not in out)
        return sorted(out, key=ix.pos.__getitem__)

    def recompute(wanted):
        batch = missing(wanted)
        for u in batch:
            steps.append((COMPUTE, u))
            live.add(u)
        return batch

    refetch = refetch - keep
    for i, x in enumerate(fwd):
        batch = recompute(fpreds[x]) if refetch else ()
        steps.append((COMPUTE, x))
        live.add(x)
        for u in (*batch, *fpreds[x]):
            if u not in keep and (last_fwd_reader[u] <= i or u in refetch) and u in live:
                drop(u)
        if x not in keep and last_fwd_reader[x] <= i:
            drop(x)

    remaining = dict(ix.n_breaders)  # gradient readers not yet computed
    if hold is None:
        hold = frozenset() if eager else ix.fwd_set
    eager = len(hold) < len(fwd)  # some values are dropped by the eager rule

    released = {}
    for u, b in release:
        if u in keep:
            released.setdefault(b, []).append(u)
    keep = set(keep) if released else keep  # a released value leaves it

    def by_demand(u):  # freed when `support` runs out (else by the eager rule)
        return u in keep or u in hold

    def counts(c):  # does demand on c pass on to what c is computed from?
        return c not in live or not by_demand(c)

    support = {}
    for u in reversed(fwd):
        support[u] = (remaining[u] > 0) + sum(1 for c in fsuccs[u] if counts(c) and support[c] > 0)

    def lose(u):
        """One reason for demanding u is gone (iteratively: chains of values can be long)."""
        stack = [u]
        while stack:
            u = stack.pop()
            support[u] -= 1
            if support[u]:
                continue
            if u in live and by_demand(u):
                drop(u)
            else:
                # a value no longer demanded (live outside `keep` under the eager policy, or
                # already dropped) no longer demands what it is computed from
                stack.extend(fpreds[u])

    def gain(u):
        """A reason for demanding u is back (a consumer released): as `lose`, the other way."""
        stack = [u]
        while stack:
            u = stack.pop()
            support[u] += 1
            if support[u] == 1 and counts(u):
                stack.extend(fpreds[u])

    for u in fwd:
        if u in live and support[u] == 0 and by_demand(u):
            drop(u)

    for b in ix.bwd:
        if max_steps is not None and len(steps) > max_steps:
            return None
        batch = missing(fpreds[b])
        current = set(fpreds[b])
        if eager:  # the last batch step that reads each value: after it, the value may go
            last_use = {}
            for n, u in enumerate(batch):
                for p in fpreds[u]:
                    last_use[p] = n
        for n, u in enumerate(batch):
            steps.append((COMPUTE, u))
            live.add(u)
            if support[u] > 0 and by_demand(u):  # u live now: its sources lose u's demand
                for p in fpreds[u]:
                    lose(p)
            if eager:
                for p in fpreds[u]:
                    if last_use[p] == n and p in live and not by_demand(p) and p not in current:
                        drop(p)
        steps.append((COMPUTE, b))
        live.add(b)
        for u in ix.preds[b]:
            remaining[u] -= 1
            if u not in fwd_set:
                if remaining[u] == 0:
                    drop(u)
            elif remaining[u] == 0:
                lose(u)
        if remaining[b] == 0:
            drop(b)
        if eager:
            for u in current:
                if u in live and not by_demand(u):
                    drop(u)
        for u in released.get(b, ()):
            keep.discard(u)
            if u in live:  # still demanded (else it went when its support ran out)
                drop(u)
                for p in fpreds[u]:
                    gain(p)
    return steps
