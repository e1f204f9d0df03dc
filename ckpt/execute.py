"""Run a schedule with real arrays: the measured counterpart of `simulate`.

The executor never decides what to keep; it walks the steps it is given. It counts the bytes of
every forward value and activation gradient it holds (managed), separately from the resident inputs,
parameters and parameter gradients, and records the managed bytes after every step.

Everything a step needs is decided once, when the schedule is compiled: which rule runs, which
slots of the value list it reads and writes, which residuals each VJP gets (a `Ctx` built once per
gradient term and refilled at each step). The loop in `step` then does per step only the work the
step itself is: a list lookup per operand, the rule, the byte count.
"""

from dataclasses import dataclass
from operator import itemgetter

from .errors import ScheduleError
from .model.joint import GRAD
from .ops import OUT, REGISTRY, Ctx
from .schedule import COMPUTE, validate

FREE, NOOP, FORWARD, GRADIENT, LEAF_GRADIENT = range(5)
_NONE = 0  # the slot that always holds None: a residual a VJP does not read


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
        # Every leaf, forward value and activation gradient has a slot in one list of values.
        self._slots = {}
        self._leaf_slots = []  # (leaf name, slot), filled from `leaves` at the start of a step
        for v in g.graph["order"]:
            for u in g.nodes[v]["inputs"]:
                self._slot_of(u)
        self.program = []
        for kind, x in steps:
            code, x, data = self._compile(kind, x, joint)
            if code == FREE and self.program and self.program[-1][0] == FREE:
                self.program[-1][2].append(data)  # a run of frees is one entry: one dispatch
            else:
                self.program.append((code, x, [data] if code == FREE else data))

    def _slot_of(self, name):
        if name not in self._slots:
            self._slots[name] = len(self._slots) + 1  # slot 0 is _NONE
            if name in self.g.nodes and self.g.nodes[name]["kind"] != "op":
                self._leaf_slots.append((name, self._slots[name]))
        return self._slots[name]

    def _reader(self, names_or_slots):
        """A function from the value list to the tuple of values at these slots (one C call)."""
        slots = tuple(k if isinstance(k, int) else self._slot_of(k) for k in names_or_slots)
        if len(slots) == 1:
            return lambda vals, k=slots[0]: (vals[k],)
        return itemgetter(*slots) if slots else (lambda vals: ())

    def _compile(self, kind, x, joint):
        g = self.g
        d = joint.nodes[x]
        v = d["ref"]
        nd = g.nodes[v]
        if kind != COMPUTE:  # a parameter's gradient stays resident: freeing its node drops nothing
            return (FREE, x, self._slot_of(x)) if nd["kind"] == "op" else (NOOP, x, None)
        if d["kind"] == "forward":
            op = REGISTRY[nd["op"]]
            return (FORWARD, x, (op.forward, op.name, self._reader(nd["inputs"]), nd["attrs"], tuple(nd["shape"]),
                                 self._slot_of(x), v == self.out))
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
                    ins = self._reader([self._slot_of(u2) if k in need else _NONE for k, u2 in enumerate(wd["inputs"])])
                    out_slot = self._slot_of(w) if OUT in need else _NONE
                    ctx = Ctx(None, None, shapes, wd["shape"], wd["attrs"])
                    terms.append((op.vjp, i, self._slot_of(GRAD + w), ins, out_slot, ctx))
        seed_spec = (nd["shape"], nd["dtype"]) if v == self.out else None
        code = GRADIENT if nd["kind"] == "op" else LEAF_GRADIENT
        return (code, x, (tuple(terms), seed_spec, tuple(nd["shape"]), self._slot_of(x)))

    def step(self, leaves, on_value=None, seed=None):
        """One pass; `on_value(node, array)`, when given, sees every value and gradient computed.
        `seed` is the output's cotangent (default ones: the gradient of a scalar loss)."""
        xp = self.xp
        ndarray = xp.ndarray
        vals = [None] * (len(self._slots) + 1)  # by slot; forward values and activation gradients are managed
        for name, k in self._leaf_slots:
            vals[k] = leaves[name]
        leaf_grads = {}
        live, peak, timeline, loss = 0, 0, [], None
        for code, x, data in self.program:
            if code == FREE:
                for k in data:
                    live -= vals[k].nbytes
                    vals[k] = None
                    timeline.append(live)  # a free lowers live bytes: the peak is not here
                continue
            if code == FORWARD:
                forward, name, read, attrs, shape, slot, is_loss = data
                ins = read(vals)
                out = forward(xp, ins, attrs)
                if type(out) is not ndarray:
                    out = xp.asarray(out)
                if out.shape != shape:
                    raise ScheduleError(f"{x}: {name} produced shape {out.shape}, its shape rule says {shape}")
                owned = out.base is None  # each value owns its buffer, so that counting nbytes is
                for a in ins:  # counting memory: a view, or an input handed back, is copied
                    if a is out:
                        owned = False
                if not owned:
                    out = out.copy()
                vals[slot] = out
                live += out.nbytes
                if is_loss and out.ndim == 0:
                    loss = float(self.backend.to_host(out))
                if on_value is not None:
                    on_value(x, out)
                ins = out = a = None  # a local naming a value would keep it past its free
            elif code != NOOP:
                terms, seed_spec, shape, slot = data
                grad = None
                if seed_spec is not None:
                    grad = xp.ones(*seed_spec) if seed is None else seed.copy()
                fresh = seed_spec is not None  # grad is a buffer of its own: later terms add in place
                for vjp, i, g_slot, read, out_slot, ctx in terms:
                    ctx.ins = read(vals)
                    ctx.out = vals[out_slot]
                    c = vjp(xp, i, vals[g_slot], ctx)
                    ctx.ins = ctx.out = None  # hold no residual past its step
                    if grad is None:
                        grad = c
                    elif not fresh:
                        grad = grad + c
                        fresh = True
                    else:
                        grad += c
                    c = None  # nor may a term outlive its sum
                if type(grad) is not ndarray:
                    grad = xp.asarray(grad)
                if grad.shape != shape:
                    raise ScheduleError(f"{x}: gradient has shape {grad.shape}, value has {shape}")
                if not fresh:  # a view of, or the very, gradient it came from (add passes g on) is copied
                    owned = grad.base is None
                    for t in terms:
                        if grad is vals[t[2]]:
                            owned = False
                    if not owned:
                        grad = grad.copy()
                if code == GRADIENT:
                    vals[slot] = grad
                    live += grad.nbytes
                else:
                    leaf_grads[x[len(GRAD):]] = grad
                if on_value is not None:
                    on_value(x, grad)
                grad = None
            if live > peak:
                peak = live
            timeline.append(live)
        resident = sum(a.nbytes for a in leaves.values()) + sum(a.nbytes for a in leaf_grads.values())
        return StepResult(loss, leaf_grads, peak, timeline, resident)
