"""Walk a schedule with byte sizes and costs: the predicted peak, compute cost and memory timeline."""

from dataclasses import dataclass

from .schedule import COMPUTE, validate


@dataclass
class Simulation:
    resident: int  # inputs, parameters and their gradients: live for the whole step
    peak_managed: int  # max over steps of live forward values and activation gradients
    cost: float  # sum of the computed nodes' costs
    timeline: list  # managed bytes live after each step
    forward_computes: int
    recomputes: int  # forward computes beyond one per forward node
    stored: int  # forward values kept from the first forward pass into the backward pass
    # peak_managed with each step's workspace (the temporaries an op holds while it runs, `ws` on
    # the joint node) counted at its step: what the allocator sees beyond the resident bytes
    peak_managed_ws: int = 0
    # the predicted step time: `cost` and the cache term (`cache_bytes`); cost alone where the
    # joint graph has no cache weights (a cost graph, measured costs)
    time: float = 0.0

    @property
    def peak(self):
        """The model's peak: resident + managed, what the executor counts (equal to the byte)."""
        return self.resident + self.peak_managed

    @property
    def peak_ws(self):
        """The peak with workspace: the figure a memory budget must bound for the allocator's."""
        return self.resident + self.peak_managed_ws


def simulate(joint, steps, check=True):
    if check:
        validate(joint, steps)
    nodes = joint.nodes
    live_bytes, peak, peak_ws, cost = 0, 0, 0, 0.0
    timeline = []
    fwd_computes, seen = 0, set()
    first_backward = None
    live = set()
    for n, (kind, x) in enumerate(steps):
        d = nodes[x]
        if kind == COMPUTE:
            live_bytes += d["ram"]
            peak = max(peak, live_bytes)
            # the output stays live after the step, the workspace does not
            peak_ws = max(peak_ws, live_bytes + d.get("ws", 0))
            cost += d["cost"]
            live.add(x)
            if d["kind"] == "forward":
                fwd_computes += 1
                seen.add(x)
            elif first_backward is None:
                first_backward = len([u for u in live if nodes[u]["kind"] == "forward"])
        else:
            live_bytes -= d["ram"]
            live.discard(x)
        timeline.append(live_bytes)
    cache = joint.graph.get("cache")
    time = cost + (cache[1] * cache_bytes(joint, steps, cache[0]) if cache else 0.0)
    return Simulation(joint.graph.get("resident", 0), peak, cost, timeline, fwd_computes,
                      fwd_computes - len(seen), first_backward or 0, max(peak, peak_ws), time)


def cache_bytes(joint, steps, capacity):
    """Bytes the compute steps read from memory rather than from a cache of `capacity` bytes. A
    node's cost is fitted over many contexts, but what it reads comes faster from the cache when
    it was written or read a short while before: a recomputed value read by the gradient right
    after it, against the same value stored since the forward pass under store-all. Node costs
    cannot see this (on gpt_small, recompute plans ran 2-6 points of store-all's time faster than
    their nodes' costs said), and the predicted time adds a weight per byte of this count.
    The cache is least-recently-used: a value of s bytes last touched when the traffic (bytes
    written by the steps, outputs and workspace, and bytes read from memory) stood d bytes lower
    is read with min(s, max(0, d + s - capacity)) bytes from memory."""
    nodes, pred = joint.nodes, joint.pred
    traffic, last, missed = 0, {}, 0
    for kind, x in steps:
        if kind != COMPUTE:
            continue
        for u in pred[x]:
            s = nodes[u]["ram"]
            miss = min(s, max(0, traffic - last[u] + s - capacity))
            missed += miss
            traffic += miss
            last[u] = traffic
        traffic += nodes[x]["ram"] + nodes[x].get("ws", 0)
        last[x] = traffic
    return missed
