"""Run a schedule with real arrays: the measured counterpart of `simulate`.

The executor never decides what to keep; it walks the steps it is given. It counts the bytes of
every forward value and activation gradient it holds (managed), separately from the resident inputs,
parameters and parameter gradients, and records the managed bytes after every step.
"""

from dataclasses import dataclass

from .errors import ScheduleError
from .model.joint import GRAD
from .ops import OUT, REGISTRY, Ctx
from .schedule import COMPUTE, validate


@dataclass
class StepResult:
    loss: float
    grads: dict  # leaf name -> array on the backend
    peak_managed: int
    timeline: list
    resident: int


class Executor:
    """Compiles (graph, joint, steps) once; `step(leaves)` runs one forward+backward pass."""

    def __init__(self, g, joint, steps, backend):
        validate(joint, steps)
        self.g, self.backend, self.xp = g, backend, backend.xp
        self.out = g.graph["output"]
        self.program = [self._compile(kind, x, joint) for kind, x in steps]

    def _compile(self, kind, x, joint):
        g = self.g
        d = joint.nodes[x]
        v = d["ref"]
        nd = g.nodes[v]
        if kind != COMPUTE:  # a parameter's gradient stays resident: freeing its node drops nothing
            return (0, x, None) if nd["kind"] == "op" else (4, x, None)
        if d["kind"] == "forward":
            return (1, v, (REGISTRY[nd["op"]], nd["inputs"], nd["attrs"], nd["shape"]))
        terms = []
        for w in g.successors(v):
            wd = g.nodes[w]
            if wd["kind"] != "op" or not wd["grad"]:
                continue
            op = REGISTRY[wd["op"]]
            shapes = [g.nodes[u]["shape"] for u in wd["inputs"]]
            for i, u in enumerate(wd["inputs"]):
                if u == v:
                    need = set(wd["needs"][i])
                    ins = [u2 if k in need else None for k, u2 in enumerate(wd["inputs"])]
                    terms.append((op, i, w, ins, OUT in need, shapes, wd["shape"], wd["attrs"]))
        seed_spec = (nd["shape"], nd["dtype"]) if v == self.out else None
        return (2 if nd["kind"] == "op" else 3, GRAD + v, (terms, seed_spec, nd["shape"]))

    def _owned(self, arr, others=()):
        """Each held value owns its buffer, so that counting nbytes is counting memory."""
        if getattr(arr, "base", None) is not None or any(arr is o for o in others):
            return arr.copy()
        return arr

    def step(self, leaves, on_value=None, seed=None):
        """One pass; `on_value(node, array)`, when given, sees every value and gradient computed.
        `seed` is the output's cotangent (default ones: the gradient of a scalar loss)."""
        xp = self.xp
        vals = {}  # forward values and activation gradients (managed), by joint node id
        leaf_grads = {}
        live, peak, timeline, loss = 0, 0, [], None
        for code, x, data in self.program:
            if code == 0:
                live -= vals.pop(x).nbytes
            elif code == 4:
                pass
            elif code == 1:
                op, inputs, attrs, shape = data
                out = op.forward(xp, [vals[u] if u in vals else leaves[u] for u in inputs], attrs)
                if not isinstance(out, xp.ndarray):
                    out = xp.asarray(out)
                if out.shape != shape:
                    raise ScheduleError(f"{x}: {op.name} produced shape {out.shape}, its shape rule says {shape}")
                out = self._owned(out, [vals.get(u) for u in inputs])
                vals[x] = out
                live += out.nbytes
                if x == self.out and out.ndim == 0:
                    loss = float(self.backend.to_host(out))
            else:
                terms, seed_spec, shape = data
                grad = None
                if seed_spec is not None:
                    grad = xp.ones(*seed_spec) if seed is None else seed.copy()
                parents = []
                for op, i, w, ins, need_out, shapes, wshape, attrs in terms:
                    gw = vals[GRAD + w]
                    parents.append(gw)
                    ctx = Ctx([None if u is None else (vals[u] if u in vals else leaves[u]) for u in ins],
                              vals[w] if need_out else None, shapes, wshape, attrs)
                    c = op.vjp(xp, i, gw, ctx)
                    if grad is None:
                        grad = c
                    elif len(parents) == 2 and seed_spec is None:
                        grad = grad + c  # a fresh buffer: later terms may add in place
                    else:
                        grad += c
                if not isinstance(grad, xp.ndarray):
                    grad = xp.asarray(grad)
                if grad.shape != shape:
                    raise ScheduleError(f"{x}: gradient has shape {grad.shape}, value has {shape}")
                grad = self._owned(grad, parents)
                if code == 2:
                    vals[x] = grad
                    live += grad.nbytes
                else:
                    leaf_grads[x[len(GRAD):]] = grad
            if on_value is not None and code in (1, 2, 3):
                on_value(x, vals[x] if code != 3 else leaf_grads[x[len(GRAD):]])
            peak = max(peak, live)
            timeline.append(live)
        resident = sum(a.nbytes for a in leaves.values()) + sum(a.nbytes for a in leaf_grads.values())
        return StepResult(loss, leaf_grads, peak, timeline, resident)
