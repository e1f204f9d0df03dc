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

    @property
    def peak(self):
        return self.resident + self.peak_managed


def simulate(joint, steps, check=True):
    if check:
        validate(joint, steps)
    nodes = joint.nodes
    live_bytes, peak, cost = 0, 0, 0.0
    timeline = []
    fwd_computes, seen = 0, set()
    first_backward = None
    live = set()
    for n, (kind, x) in enumerate(steps):
        d = nodes[x]
        if kind == COMPUTE:
            live_bytes += d["ram"]
            peak = max(peak, live_bytes)
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
    return Simulation(joint.graph.get("resident", 0), peak, cost, timeline, fwd_computes,
                      fwd_computes - len(seen), first_backward or 0)
