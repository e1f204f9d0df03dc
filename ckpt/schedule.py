"""The schedule IR: a flat list of steps over the joint graph's nodes, and its validator.

`("compute", x)` runs node x (a forward op, or a value's gradient when x is `grad:v`): every
predecessor of x must be live, and x's output becomes live. `("free", x)` drops x's output.
Every strategy, however clever, produces such a list; the simulator and the executor only walk it.
"""

from dataclasses import dataclass, field

from .errors import ScheduleError

COMPUTE, FREE = "compute", "free"


@dataclass
class Plan:
    """A strategy's result record: the steps, and how they were found."""

    strategy: str
    steps: list  # [(COMPUTE | FREE, node)]
    solver: str = "-"
    solve_time_s: float = 0.0
    lower_bound: float | None = None  # best known lower bound on compute cost, when a solver gives one
    notes: dict = field(default_factory=dict)


def describe(joint, step):
    kind, x = step
    d = joint.nodes[x]
    if kind == COMPUTE:
        return f"backward {d['ref']}" if d["kind"] == "backward" else f"compute {x}"
    return f"free {x}"


def validate(joint, steps):
    """Raise ScheduleError at the first step whose operands are not live; return the steps."""
    live, done = set(), set()
    for n, (kind, x) in enumerate(steps):
        if x not in joint:
            raise ScheduleError(f"step {n} ({kind} {x}): no such node")
        if kind == COMPUTE:
            if x in live:
                raise ScheduleError(f"step {n} ({describe(joint, (kind, x))}): {x} is already live")
            for u in joint.predecessors(x):
                if u not in live:
                    raise ScheduleError(f"step {n} ({describe(joint, (kind, x))}): operand {u} is not live")
            live.add(x)
            done.add(x)
        elif kind == FREE:
            if x not in live:
                raise ScheduleError(f"step {n} (free {x}): {x} is not live")
            live.discard(x)
        else:
            raise ScheduleError(f"step {n}: unknown step kind {kind!r}")
    missing = [x for x in joint if x not in done]
    if missing:
        raise ScheduleError(f"schedule never computes {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    return steps
