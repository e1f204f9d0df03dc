"""Source transformation (the seed's §3, "SCT"): a schedule becomes a standalone Python module.

`generate(model, steps)` writes the module that `ckpt compile` saves. Its `step(params, inputs,
xp=numpy)` is the schedule unrolled into straight-line code: one statement per forward compute
(a recompute is the same statement again, marked), one per gradient, and a `del` at every free, so
the plan is there to read. Nothing in it imports ckpt: the op rules it calls are the source of
ckpt/ops, copied in below the step function. That keeps one place per op rule (a rule changed in
ckpt/ops is in the next compiled step), and the generated step runs the very arithmetic of the
interpreter (ckpt/execute.py), so its gradients are bitwise equal to the interpreter's. What it
leaves out is the interpreter's work per step: dispatch on step kinds, dictionaries of live
values, byte counting.

The statements mirror the interpreter exactly: the same VJP terms in the same order and the same
accumulation (`a = t1`, `a = a + t2`, `a += t3`), and each held value owns its buffer (`_own`
copies views), so the bytes live between two statements are the simulator's managed bytes.
`managed_timeline` measures them with tracemalloc, line by line.
"""

import ast
import builtins
import keyword
import math
import os
import re
import sys
import types
import unicodedata

from ..errors import ConfigError
from ..model.joint import GRAD
from ..ops import OUT, REGISTRY
from ..schedule import COMPUTE, validate

# names the step uses besides its values (and the builtins, such as the `float` it calls)
_RESERVED = {"xp", "params", "inputs", "grads", "loss", "step", "numpy", "np", "Ctx", "REGISTRY", "ATTRS", "SHAPES",
             "_own"} | set(dir(builtins))


class _Namer:
    """Readable, unique Python names for node names such as `body.0.h`."""

    def __init__(self, taken=()):
        self.used = set(_RESERVED) | set(taken)
        self.names = {}

    def __call__(self, key, base):
        if key in self.names:
            return self.names[key]
        # Python reads identifiers in NFKC form ('ﬁ' is 'fi') and takes fewer characters than \w
        # matches ('²'): a name compared or kept in any other form collides or does not parse
        name = "".join(c if ("_" + c).isidentifier() else "_" for c in unicodedata.normalize("NFKC", base))
        if not name.isidentifier() or keyword.iskeyword(name):
            name = "v_" + name
        if name in self.used:
            k = 2
            while f"{name}_{k}" in self.used:
                k += 1
            name = f"{name}_{k}"
        self.used.add(name)
        self.names[key] = name
        return name


def _literal(v):
    """Python source for an attr value (repr, with infinities and NaN spelled out)."""
    if isinstance(v, float) and not math.isfinite(v):
        return f"float({str(v)!r})"
    if isinstance(v, (list, tuple)):
        inner = ", ".join(_literal(x) for x in v)
        return f"[{inner}]" if isinstance(v, list) else f"({inner}{',' if len(v) == 1 else ''})"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k!r}: {_literal(x)}" for k, x in v.items()) + "}"
    return repr(v)


# ---- the op rules, copied from ckpt/ops -------------------------------------------------------------
def _ops_sources(used_ops):
    """[(module path, source)] of ckpt/ops/__init__.py and the modules that define the ops used (and
    those they import from), relative imports removed: they all share the generated module's names."""
    from .. import ops as ops_pkg
    folder = os.path.dirname(ops_pkg.__file__)
    wanted = {sys.modules[REGISTRY[o].forward.__module__].__name__.rsplit(".", 1)[-1] for o in used_ops}
    texts, order, deps, stubs = {}, [], {}, set()
    init_tree = ast.parse(_read(os.path.join(folder, "__init__.py")))
    for node in init_tree.body:  # the submodules, in the order the package imports them
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module is None:
            order += [a.name for a in node.names]
    for name in ["__init__"] + order:
        src = _read(os.path.join(folder, name + ".py"))
        texts[name], deps[name], more = _strip_relative_imports(src, name)
        stubs |= more
    closure, stack = set(), list(wanted)
    while stack:
        m = stack.pop()
        if m not in closure:
            closure.add(m)
            stack += deps[m]
    chosen = ["__init__"] + [m for m in order if m in closure]
    return [(f"ckpt/ops/{m}.py", texts[m]) for m in chosen], sorted(stubs)


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _strip_relative_imports(src, name):
    """The source without its relative imports; the sibling modules it imports from; the names it
    takes from ckpt.errors (the generated module defines those)."""
    tree = ast.parse(src)
    lines = src.splitlines()
    drop, deps, stubs = set(), [], set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ImportFrom) and node.level > 0):
            continue
        if node not in tree.body:
            raise ConfigError(f"ckpt/ops/{name}.py imports {'.' * node.level}{node.module or ''} inside a "
                              "function: the generated step cannot carry that import")
        if node.level == 1 and node.module is None:
            pass  # names from ckpt/ops/__init__.py, which comes first in the generated module
        elif node.level == 1:
            deps.append(node.module)
        elif node.level == 2 and node.module == "errors":
            stubs |= {a.name for a in node.names}
        else:
            raise ConfigError(f"ckpt/ops/{name}.py imports {'.' * node.level}{node.module}: the generated step "
                              "carries only ckpt/ops and numpy")
        drop |= set(range(node.lineno - 1, node.end_lineno))
    kept = [line for i, line in enumerate(lines) if i not in drop]
    return "\n".join(kept).strip("\n") + "\n", deps, stubs


_ERROR_STUB = '''class {name}(ValueError):
    """ckpt.errors.{name}, for the shape rules copied below."""

    def __init__(self, message, **where):
        super().__init__(message)
        self.message = message
'''

_OWN = '''def _own(xp, a, *others):
    """The array as one that owns its buffer: a view would keep its base alive after `del`, and an
    operand handed back must not be shared (both as the interpreter, ckpt/execute.py, does)."""
    if not isinstance(a, xp.ndarray):
        return xp.asarray(a)
    if a.base is not None:
        return a.copy()
    for o in others:
        if a is o:
            return a.copy()
    return a
'''


# ---- the step function ------------------------------------------------------------------------------
def generate(model, steps, strategy="store-all", source=None, sim=None):
    """Source of a standalone module whose `step(params, inputs, xp=numpy)` runs `steps` (a
    validated schedule over model.joint) and returns (loss, {leaf: gradient})."""
    g, joint = model.graph, model.joint
    validate(joint, steps)
    out = g.graph["output"]
    leaves = [v for v, d in g.nodes(data=True) if d["kind"] != "op"]
    used_ops = sorted({g.nodes[v]["op"] for v in g.graph["order"]})
    sources, stubs = _ops_sources(used_ops)
    taken = set()
    for _, src in sources:
        for node in ast.parse(src).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                taken.add(node.name)
            elif isinstance(node, ast.Assign):
                taken |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    taken |= set(stubs)
    name = _Namer(taken | {f"op_{o}" for o in used_ops})
    body = []
    for v in leaves:
        src_dict = "params" if g.nodes[v]["kind"] == "param" else "inputs"
        body.append(f"{name(v, v)} = {src_dict}[{v!r}]")

    def value(u):
        return name(u, u)

    def grad(u):
        return name(GRAD + u, "d_" + u)

    computed, started_backward = set(), False
    shapes, attrs = {}, {}
    for kind, x in steps:
        d = joint.nodes[x]
        v = d["ref"]
        nd = g.nodes[v]
        if kind != COMPUTE:
            if nd["kind"] == "op":  # a leaf's gradient stays in `grads`: nothing to free
                body.append(f"del {grad(v) if x.startswith(GRAD) else value(v)}")
            continue
        if d["kind"] == "forward":
            ins = [value(u) for u in nd["inputs"]]
            managed = [value(u) for u in dict.fromkeys(nd["inputs"]) if g.nodes[u]["kind"] == "op"]
            attrs[v] = nd["attrs"]
            note = "  # recompute" if v in computed else ""
            computed.add(v)
            body.append(f"{value(v)} = _own(xp, op_{nd['op']}.forward(xp, [{', '.join(ins)}], ATTRS[{v!r}])"
                        f"{''.join(', ' + m for m in managed)}){note}")
            if v == out:
                body.append(f"loss = float({value(v)})")
            continue
        if not started_backward:
            body.append("# backward: each gradient pulls from its consumers' gradients")
            started_backward = True
        # a leaf's gradient is resident (the simulator counts it so): it is summed in `grads` itself
        target = grad(v) if nd["kind"] == "op" else f"grads[{v!r}]"
        lines, parents = [], []
        if v == out:
            lines.append(f"{target} = xp.ones({_literal(tuple(nd['shape']))}, dtype={nd['dtype']!r})")
        for w in g.successors(v):
            wd = g.nodes[w]
            if wd["kind"] != "op" or not wd["grad"]:
                continue
            for i, u in enumerate(wd["inputs"]):
                if u != v:
                    continue
                need = set(wd["needs"][i])
                ins = [value(u2) if k in need else "None" for k, u2 in enumerate(wd["inputs"])]
                shapes[w] = ([tuple(g.nodes[u2]["shape"]) for u2 in wd["inputs"]], tuple(wd["shape"]))
                attrs[w] = wd["attrs"]
                term = (f"op_{wd['op']}.vjp(xp, {i}, {grad(w)}, Ctx([{', '.join(ins)}], "
                        f"{value(w) if OUT in need else 'None'}, *SHAPES[{w!r}], ATTRS[{w!r}]))")
                parents.append(grad(w))
                if not lines:
                    lines.append(f"{target} = {term}")
                elif len(parents) == 2 and v != out:
                    # a fresh buffer that later terms add into; one statement, so that the first term
                    # (which may be a view of a larger buffer) is gone before the next statement
                    lines[-1] = f"{lines[-1]} + {term}"
                else:
                    lines.append(f"{target} += {term}")
        if not parents and v != out:
            raise ConfigError(f"{x}: no consumer passes a gradient to {v}")
        owners = "".join(", " + p for p in dict.fromkeys(parents))
        if len(lines) == 1 and v != out:  # one term (or the first two): owned in the same statement
            lines = [f"{target} = _own(xp, {lines[0].split(' = ', 1)[1]}{owners})"]
        elif len(lines) > 1 or v != out:  # (the seed alone is a fresh array: it owns its buffer)
            lines.append(f"{target} = _own(xp, {target}{owners})")
        body += lines
    body.append("return loss, grads")
    return _module(model, strategy, source, sim, body, sources, stubs, used_ops, shapes, attrs)


def _module(model, strategy, source, sim, body, sources, stubs, used_ops, shapes, attrs):
    from ..sizes import fmt_bytes
    g = model.graph
    params = [v for v, d in g.nodes(data=True) if d["kind"] == "param"]
    inputs = [v for v, d in g.nodes(data=True) if d["kind"] == "input"]
    wrt = sorted(v for v, d in g.nodes(data=True) if d["kind"] != "op" and d["grad"])
    memory = (f"\nPredicted by the simulator: resident {fmt_bytes(sim.resident)}, managed peak "
              f"{fmt_bytes(sim.peak_managed)} ({sim.peak_managed} bytes), {sim.recomputes} recomputes.\n"
              if sim is not None else "")
    head = f'''"""One training step of {_doc(g.graph["name"])}, planned by the {strategy} strategy.
Generated by `ckpt compile`{f" from {_doc(source)}" if source else ""}.

    loss, grads = step(params, inputs)            # numpy arrays, by name
    loss, grads = step(params, inputs, xp=cupy)   # cupy arrays on a GPU

{_wrapped("params: ", params)}
{_wrapped("inputs: ", inputs)}
{_wrapped("grads:  ", wrt)}
{memory}
The step is the schedule unrolled: forward values, the gradients pulled from each value's
consumers, a `del` where the plan frees a value and the same line again where it recomputes one.
It needs numpy (or cupy) and nothing from ckpt: the op rules it calls are ckpt/ops's own source,
copied in below the step.
"""

import numpy


'''
    lines = ["def step(params, inputs, xp=numpy):",
             '    """One forward and backward pass: (loss, {input or parameter: gradient})."""',
             "    grads = {}"]
    lines += ["    " + s for s in body]
    rules = ["", "", "# " + "=" * 98, "# The op rules: copied from ckpt/ops by `ckpt compile` (one place per rule).",
             "# " + "=" * 98]
    for name in stubs:
        rules += ["", "", _ERROR_STUB.format(name=name).rstrip("\n")]
    seen_imports = set()
    for path, src in sources:  # each module's imports once
        kept = []
        for line in src.rstrip("\n").split("\n"):
            if re.match(r"^(import \w|from \w[\w.]* import )", line):
                if line in seen_imports:
                    continue
                seen_imports.add(line)
            kept.append(line)
        rules += ["", "", f"# ---- {path} " + "-" * max(4, 93 - len(path))] + kept
    rules += ["", "", _OWN.rstrip("\n"), "", ""]
    rules += [f"op_{o} = REGISTRY[{o!r}]" for o in used_ops]
    rules += ["", "# each op's attrs, and the static shapes its VJP reads, by node"]
    rules.append("ATTRS = {")
    rules += [f"    {k!r}: {_literal(v)}," for k, v in attrs.items()]
    rules.append("}")
    rules.append("SHAPES = {")
    rules += [f"    {k!r}: ({_literal(v[0])}, {_literal(v[1])})," for k, v in shapes.items()]
    rules.append("}")
    return head + "\n".join(lines) + "\n" + "\n".join(rules) + "\n"


def _doc(text):
    """Text from the user (a model, file or node name) as it may stand inside the module's
    docstring: a quote or backslash in it would end the string or start an escape, and the
    module is run (`compile --check`)."""
    text = str(text).replace("\\", "\\\\").replace('"', '\\"')
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _wrapped(label, names):
    import textwrap
    return textwrap.fill(", ".join(map(_doc, names)) or "none", width=100, initial_indent=label,
                         subsequent_indent=" " * len(label), break_on_hyphens=False)


def load_module(source, name="ckpt_generated_step"):
    """The generated source as a module (registered while it runs, as an import would)."""
    module = types.ModuleType(name)
    module.__file__ = f"<{name}>"
    sys.modules[name] = module
    try:
        exec(compile(source, module.__file__, "exec"), module.__dict__)
    finally:
        del sys.modules[name]
    return module


def split_leaves(g, leaves):
    """(params, inputs) dictionaries of a model's leaf arrays, as `step` takes them."""
    params = {k: a for k, a in leaves.items() if g.nodes[k]["kind"] == "param"}
    inputs = {k: a for k, a in leaves.items() if g.nodes[k]["kind"] == "input"}
    return params, inputs


# ---- measuring the generated step's memory ----------------------------------------------------------
def managed_timeline(step, params, inputs):
    """Run `step` once under tracemalloc and read, before each of its statements and at its return,
    the bytes numpy holds beyond the leaves and the leaf gradients so far: the managed bytes live
    between statements (what the simulator predicts). Returns (loss, grads, [bytes per line])."""
    import tracemalloc

    import numpy as np

    only_numpy = [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)]
    code = step.__code__
    samples = []
    started = tracemalloc.is_tracing()
    if not started:
        tracemalloc.start()

    def held():
        return sum(t.size for t in tracemalloc.take_snapshot().filter_traces(only_numpy).traces)

    def local(frame, event, arg):
        if event in ("line", "return"):
            grads = frame.f_locals.get("grads") or {}
            samples.append(held() - base - sum(a.nbytes for a in grads.values()))
        return local

    def outer(frame, event, arg):
        return local if frame.f_code is code else None

    try:
        base = held()
        sys.settrace(outer)
        try:
            loss, grads = step(params, inputs)
        finally:
            sys.settrace(None)
    finally:
        if not started:
            tracemalloc.stop()
    return loss, grads, samples
