"""Run a schedule with real arrays: the measured counterpart of `simulate`.

The executor never decides what to keep; it walks the steps it is given. It counts the bytes of
every forward value and activation gradient it holds (managed), separately from the resident inputs,
parameters and parameter gradients, and records the managed bytes after every step.

Everything a step needs that does not depend on the step's arrays is decided once, when the
schedule is compiled: which rule runs, which slots of the value list it reads and writes, which
residuals each VJP gets (a `Ctx` built once per gradient term and refilled at each step; a VJP
that reads no input is not refilled at all), which steps are the common kinds (a gradient with one
term, a forward value) and which need the general path (the loss, the seed, a sum of terms), and
which slots the frees after each compute drop. A leaf's gradient is a value with a slot like any
other, so one hand-off serves every kind. The loop in `step` then does per step only the work the
step itself is: a list lookup per operand, the rule, the checks that its result shares no live buffer,
the byte count, the frees. A result's shape follows from its operands' shapes, and so from the
leaves': the leaves' shapes are checked at every step, and each result's against its shape rule
at the first step that runs to the end.
"""

from array import array
from functools import cached_property
from operator import attrgetter, itemgetter
from sys import getrefcount

from .errors import ScheduleError, ShapeError
from .model.joint import GRAD
from .ops import OUT, REGISTRY, Ctx
from .ops.elementwise import arith
from .schedule import COMPUTE, validate

# Program entries, one per compute step, by their first field. Each ends with the same four
# fields: the slot its result goes to; k, where its bytes go in the step's record of sizes (None
# for a leaf's gradient, which is resident); the slots the schedule frees right after it; and x,
# the joint node (for on_value and errors).
#   (GRADIENT, vjp, i, g_slot, read, out_slot, ctx, nones, shape, slot, k, frees, x)   a gradient of one term
#   (FORWARD, forward, read, attrs, shape, slot, k, frees, x)                        a forward value
#   (GENERAL, kind, data, slot, k, frees, x)                          the loss, the seed, a sum of terms
# A VJP term's read is None where it reads no input: its Ctx keeps `nones` as its inputs.
GRADIENT, FORWARD, GENERAL = range(3)
_NONE = 0  # the slot that always holds None and 0 bytes: a residual a VJP does not read
_shape = attrgetter("shape")


def _alone():
    a = object()
    return getrefcount(a)


_ALONE = _alone()  # the count of an object that only a local names, as `step` reads it


class StepResult:
    """A step's loss and leaf gradients (by name, in the order computed), and its memory figures:
    the managed bytes after every step of the schedule (`timeline`), their maximum
    (`peak_managed`) and the resident bytes. The step records only the bytes of each managed value
    it computes, as numpy reports them, and the leaf gradients as one tuple; the figures are summed
    from those, in schedule order, and the gradients named, when first read (a timed step pays
    nothing for them)."""

    def __init__(self, loss, grad_names, grads, sizes, events, leaves):
        self.loss = loss
        self._grad_names, self._grads = grad_names, grads
        self._sizes, self._events, self._leaves = sizes, events, leaves

    @cached_property
    def grads(self):
        return dict(zip(self._grad_names, self._grads))

    @cached_property
    def timeline(self):
        sizes, live, out = self._sizes, 0, []
        for sign, k in self._events:  # (+1, k): the k-th managed value computed; (-1, k): its free
            if sign:
                live += sign * sizes[k]
            out.append(live)
        return out

    @cached_property
    def peak_managed(self):
        return max(self.timeline, default=0)

    @cached_property
    def resident(self):
        return sum(a.nbytes for a in self._leaves) + sum(a.nbytes for a in self.grads.values())


class Executor:
    """Compiles (graph, joint, steps) once; `step(leaves)` runs one forward+backward pass."""

    def __init__(self, g, joint, steps, backend):
        validate(joint, steps)
        self.g, self.backend, self.xp = g, backend, backend.xp
        self.out = g.graph["output"]
        # Every leaf, forward value, activation gradient and leaf gradient has a slot in one list of
        # values; the leaves take slots 1..L, filled at the start of a step by one call.
        self._slots = {}
        leaves = [u for v in g.graph["order"] for u in g.nodes[v]["inputs"] if g.nodes[u]["kind"] != "op"]
        self._leaf_names = tuple(dict.fromkeys(leaves))
        for name in self._leaf_names:
            self._slot_of(name)
        self._read_leaves = lambda leaves, names=self._leaf_names: [leaves[name] for name in names]
        if len(self._leaf_names) > 1:
            self._read_leaves = itemgetter(*self._leaf_names)  # one C call
        # The leaves' shapes are checked at every step, the results' only until a step has run to
        # the end: a rule that breaks its shape rule shows there, as with the same operand shapes
        # it gives the same shape.
        self._leaf_shapes = [tuple(g.nodes[name]["shape"]) for name in self._leaf_names]
        self._checked = False
        # the memory timeline's events, one per step: (+1, k) computes the k-th managed value of
        # the step, (-1, k) frees it, (0, 0) changes no managed bytes (a leaf's gradient)
        self._events, made, n = [], {}, 0
        for kind, x in steps:
            if g.nodes[joint.nodes[x]["ref"]]["kind"] != "op":  # a leaf's gradient: resident
                self._events.append((0, 0))
            elif kind == COMPUTE:
                made[x], n = n, n + 1
                self._events.append((1, made[x]))
            else:
                self._events.append((-1, made.pop(x)))
        # Each managed compute writes its value's bytes at its index here: a buffer made once, so
        # that a step allocates nothing for its bookkeeping however long the schedule (the
        # allocator's peak would count it); each StepResult takes a copy.
        self._sizes = array("q", bytes(8 * n))
        index = iter(k for sign, k in self._events if sign > 0)
        self.program, grads = [], {}
        for kind, x in steps:
            leaf = g.nodes[joint.nodes[x]["ref"]]["kind"] != "op"
            if kind != COMPUTE:  # a leaf's gradient stays resident: freeing its node drops nothing
                if not leaf:  # joins the entry before it (validated: some compute made x live)
                    e = self.program[-1]
                    self.program[-1] = e[:-2] + (e[-2] + (self._slot_of(x),), e[-1])
                continue
            if leaf:
                grads.setdefault(x[len(GRAD):], self._slot_of(x))
            self.program.append(self._compile(x, joint) + (None if leaf else next(index), (), x))
        self._grad_names = tuple(grads)
        self._read_grads = self._reader(grads.values())

    def _slot_of(self, name):
        if name not in self._slots:
            self._slots[name] = len(self._slots) + 1  # slot 0 is _NONE
        return self._slots[name]

    def _reader(self, names_or_slots):
        """A function from the value list to the values at these slots, a tuple (a list of one
        for one slot), in one C call."""
        slots = tuple(k if isinstance(k, int) else self._slot_of(k) for k in names_or_slots)
        if len(slots) == 1:
            return itemgetter(slice(slots[0], slots[0] + 1))  # a list of one
        return itemgetter(*slots) if slots else (lambda vals: ())

    def _compile(self, x, joint):
        """The entry of a compute step, up to its slot."""
        g = self.g
        v = joint.nodes[x]["ref"]
        nd = g.nodes[v]
        shape = tuple(nd["shape"])
        if joint.nodes[x]["kind"] == "forward":
            op = REGISTRY[nd["op"]]
            if v == self.out:  # the loss: read back to the host
                return (GENERAL, "loss", (op.forward, op.name, self._reader(nd["inputs"]), nd["attrs"], shape),
                        self._slot_of(x))
            return (FORWARD, op.forward, self._reader(nd["inputs"]), nd["attrs"], shape, self._slot_of(x))
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
                    nones = (None,) * len(wd["inputs"])
                    read = None
                    if need - {OUT}:
                        read = self._reader([self._slot_of(u2) if k in need else _NONE
                                             for k, u2 in enumerate(wd["inputs"])])
                    out_slot = self._slot_of(w) if OUT in need else _NONE
                    ctx = Ctx(nones, None, shapes, wd["shape"], wd["attrs"])
                    terms.append((op.vjp, i, self._slot_of(GRAD + w), read, out_slot, ctx, nones))
        if len(terms) == 1 and v != self.out:
            return (GRADIENT,) + terms[0] + (shape, self._slot_of(x))
        seed_spec = (nd["shape"], nd["dtype"]) if v == self.out else None
        return (GENERAL, "gradient", (tuple(terms), seed_spec, shape), self._slot_of(x))

    def step(self, leaves, on_value=None, seed=None):
        """One pass; `on_value(node, array)`, when given, sees every value and gradient computed.
        `seed` is the output's cotangent (default ones: the gradient of a scalar loss)."""
        xp = self.xp
        ndarray = xp.ndarray
        vals = [None] * (len(self._slots) + 1)  # by slot
        given = self._read_leaves(leaves)
        vals[1:len(self._leaf_names) + 1] = given
        try:
            if list(map(_shape, given)) != self._leaf_shapes:
                raise AttributeError
        except AttributeError:
            self._leaf_error(vals)
        checking = not self._checked
        # the record of sizes through a memoryview: its stores take no format parsing, as the
        # array's own do, and allocate nothing
        sizes, loss = memoryview(self._sizes), None
        for e in self.program:
            code = e[0]
            if code is GRADIENT:
                _, vjp, i, g_slot, read, out_slot, ctx, nones, shape, slot, k, frees, x = e
                if read is not None:
                    ctx.ins = read(vals)
                ctx.out = vals[out_slot]
                out = vjp(xp, i, vals[g_slot], ctx)
                ctx.ins, ctx.out = nones, None  # hold no residual past its step
                # no two live values share a buffer, so that counting nbytes is counting memory: a
                # view, or an operand handed back, is copied (as is anything not an array of the
                # backend), unless the operand is freed right after this step (see _owned)
                if (type(out) is not ndarray or out.base is not None or out is vals[g_slot]
                        or checking and out.shape != shape):
                    out = self._owned(x, out, (vals[g_slot],), shape, frees, vals)
            elif code is FORWARD:
                _, forward, read, attrs, shape, slot, k, frees, x = e
                out = forward(xp, read(vals), attrs)
                # an operand handed back is held by the value list as well: only a result that
                # something else references can be one (numpy's elision of temporaries reads the
                # count in the same way), and the slow path compares it with the operands
                if (type(out) is not ndarray or out.base is not None or getrefcount(out) > _ALONE
                        or checking and out.shape != shape):
                    out = self._owned(x, out, read(vals), shape, frees, vals)
            else:
                _, kind, data, slot, k, frees, x = e
                if kind == "loss":
                    out = self._forward(x, data, vals)
                    if out.ndim == 0:
                        loss = float(self.backend.to_host(out))
                else:
                    out = self._gradient(x, data, vals, seed)
            vals[slot] = out
            if k is not None:
                sizes[k] = out.nbytes
            if on_value is not None:
                on_value(x, out)
            out = None
            if frees:  # half the computes free nothing: no iterator for them
                for k in frees:
                    vals[k] = None
        self._checked = True
        return StepResult(loss, self._grad_names, self._read_grads(vals), self._sizes[:], self._events,
                          list(leaves.values()))

    def _leaf_error(self, vals):
        """Name the first leaf whose shape is not the graph's (the slow path of the check in `step`)."""
        for k, (name, shape) in enumerate(zip(self._leaf_names, self._leaf_shapes)):
            got = getattr(vals[k + 1], "shape", None)
            if got is None or tuple(got) != shape:
                what = f"shape {tuple(got)}" if got is not None else f"a {type(vals[k + 1]).__name__}, not an array"
                raise ShapeError(f"{name}: the step was given {what}; the graph says shape {shape}")

    def _owned(self, x, out, sources, shape, frees=(), vals=None):
        """`out` as an array of the backend that owns its buffer and is none of `sources`, with the
        shape its shape rule gives (the slow path of the checks in `step`). Where `out` is a value
        the schedule frees right after this step (at a slot in `frees`), or a contiguous view of
        the whole of one, it takes that buffer over instead of copying it (add's VJP handing g on,
        a reshape): the bytes the step records are the same, and the memory one buffer less."""
        xp = self.xp
        if type(out) is not xp.ndarray:
            out = xp.asarray(out)
        if out.shape != shape:
            what = "gradient" if x.startswith(GRAD) else "value"
            raise ScheduleError(f"{x}: {what} has shape {out.shape}, its shape rule says {shape}")
        if out.base is not None or any(out is s for s in sources):
            owner = out if out.base is None else out.base
            if not (any(owner is vals[k] for k in frees) and owner.base is None and out.nbytes == owner.nbytes
                    and out.flags.c_contiguous):
                out = out.copy()
        return out

    def _forward(self, x, data, vals):
        forward, name, read, attrs, shape = data
        ins = read(vals)
        out = forward(self.xp, ins, attrs)
        return self._owned(x, out, ins, shape)

    def _gradient(self, x, data, vals, seed):
        """A gradient by the general path: the seed, or the sum of several terms. The first term
        is the gradient so far; the second is added into a fresh buffer; later terms are added in
        place (the order and the buffers the memory model's `gradient_workspace` counts)."""
        xp = self.xp
        terms, seed_spec, shape = data
        grad = None
        if seed_spec is not None:
            grad = xp.ones(*seed_spec) if seed is None else seed.copy()
        fresh = seed_spec is not None  # grad is a buffer of its own: later terms add in place
        for vjp, i, g_slot, read, out_slot, ctx, nones in terms:
            if read is not None:
                ctx.ins = read(vals)
            ctx.out = vals[out_slot]
            c = vjp(xp, i, vals[g_slot], ctx)
            ctx.ins, ctx.out = nones, None
            if grad is None:
                grad = c
            elif not fresh:
                grad = arith(xp, "add", grad, c)
                fresh = True
            else:
                grad = arith(xp, "add", grad, c, out=grad)
            c = None  # nor may a term outlive its sum
        if fresh:
            return self._owned(x, grad, (), shape)
        # a view of, or the very, gradient it came from (add passes g on) is copied
        return self._owned(x, grad, [vals[t[2]] for t in terms], shape)
