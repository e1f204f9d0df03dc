"""The steps behind each command, shared by the CLI and the benchmark scripts: load a model,
plan it, run it, check its gradients. Errors are raised typed; the CLI turns them into one line."""

import os
import statistics
from dataclasses import dataclass

import numpy as np

from .backend import get_backend
from .errors import CheckFailed, ConfigError
from .execute import Executor
from .model import build_graph, leaf_values, load_config, lower, retarget
from .model.costgraph import load_cost_graph
from .ops import REGISTRY
from .ops import size as n_elements
from .plan import JointIndex, plan
from .sizes import fmt_bytes


@dataclass
class Model:
    path: str
    spec: object
    graph: object
    joint: object
    index: object


def load_model(path, overrides=None, dtype=None):
    """A YAML model config, a Python model function (`MODEL.py[:NAME]`, traced), or (for `.json`) a
    cost graph from another tool, which can be planned but not run."""
    if str(path).lower().endswith(".json"):
        if overrides or dtype:
            raise ConfigError("--set and --dtype apply to YAML model configs, not to cost graphs", file=path)
        j = load_cost_graph(path)
        return Model(path, None, None, j, JointIndex(j))
    overrides = dict(overrides or {})
    if dtype is not None:
        overrides["dtype"] = dtype
    if ".py" in str(path).lower() and _python_frontend().is_python_model(path):
        # MODEL.py[:NAME]: a Python function traced by operator overloading (the front end is
        # imported only for one: `run` of a YAML config starts without it)
        spec = _python_frontend().load_spec(path, overrides)
    else:
        spec = load_config(path, overrides=overrides)
    g = build_graph(spec)
    j = lower(g)
    return Model(path, spec, g, j, JointIndex(j))


def _python_frontend():
    from .frontends import python
    return python


def require_model(model, command):
    if model.graph is None:
        raise ConfigError(f"{command} needs a YAML model config; a cost graph can only be planned", file=model.path)


def require_memory(model, predicted_peak, backend, what="running this model", basis="the plan's predicted peak"):
    """Refuse, before allocating anything, work that cannot fit in the memory this process may
    really use: on the CPU the tightest of the cgroup limit, RLIMIT_AS and MemAvailable (see
    `memory_headroom`), on a GPU the device's memory. On the CPU one more copy of the largest
    value is counted, for the temporaries inside an op."""
    need = int(predicted_peak)
    if backend.name == "cpu":
        if model.graph is not None:
            need += max((d["bytes"] for _, d in model.graph.nodes(data=True)), default=0)
        have, source = memory_headroom()
    else:
        have, source = backend.memory_bytes(), f"{backend.name} memory"
    if have is not None and have > 0 and need > have:
        raise ConfigError(f"{what} needs {fmt_bytes(need)} ({basis}) but this process may use {fmt_bytes(have)} "
                          f"({source}); `ckpt plan` plans it without running it", file=model.path)


def require_yaml(path, command):
    """Commands that compute need a model config; say so before anything blames a flag."""
    if str(path).lower().endswith(".json"):
        raise ConfigError(f"{command} needs a YAML model config; a cost graph (.json) can only be planned", file=path)


def forward_bytes(g):
    """Bytes of every op value of one forward pass held at once: a bound for plain evaluation."""
    return sum(d["bytes"] for _, d in g.nodes(data=True) if d["kind"] == "op")


def store_all_peak(model):
    return plan(model.joint, "store-all", ix=model.index)[1].peak


def _read_int(path):
    try:
        with open(path) as f:
            text = f.read().strip()
        n = int(text)
    except (OSError, ValueError):  # missing, or "max" (no limit)
        return None
    return n if n < 2**60 else None  # cgroup v1 writes "no limit" as a page-rounded 2**63


def _stat_field(path, names):
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] in names:
                    return int(parts[1])
    except (OSError, ValueError):
        pass
    return 0


CGROUP_FILE, CGROUP_ROOT = "/proc/self/cgroup", "/sys/fs/cgroup"  # module constants so tests can redirect


def _cgroup_headroom():
    """(bytes, source) for each memory cgroup limit on this process or an ancestor (v2 memory.max,
    v1 memory.limit_in_bytes), less what is in use (reclaimable file cache not counted)."""
    out = []
    try:
        with open(CGROUP_FILE) as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":
            base, limit_f, usage_f, cache = CGROUP_ROOT, "memory.max", "memory.current", ("inactive_file",)
        elif "memory" in controllers.split(","):
            base, limit_f, usage_f, cache = (os.path.join(CGROUP_ROOT, "memory"), "memory.limit_in_bytes",
                                             "memory.usage_in_bytes",
                                             ("total_inactive_file", "inactive_file"))
        else:
            continue
        # the limit may sit on any ancestor; a container sees its own cgroup mounted at the root
        dirs, rel = {base}, rel.strip("/")
        while rel:
            dirs.add(os.path.join(base, rel))
            rel = os.path.dirname(rel)
        for d in sorted(dirs):
            limit = _read_int(os.path.join(d, limit_f))
            if limit is None:
                continue
            used = (_read_int(os.path.join(d, usage_f)) or 0) - _stat_field(os.path.join(d, "memory.stat"), cache)
            used = max(used, 0)
            out.append((max(limit - used, 0), f"cgroup limit {fmt_bytes(limit)}, {fmt_bytes(used)} in use: "
                                              f"{os.path.join(d, limit_f)}"))
    return out


def memory_headroom():
    """(bytes, source): the most this process may still allocate, the tightest of the cgroup
    limits, RLIMIT_AS less the address space in use, and MemAvailable; (None, None) if unknown."""
    found = _cgroup_headroom()
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            vm = _stat_field("/proc/self/status", ("VmSize:",)) * 1024
            found.append((max(soft - vm, 0), f"RLIMIT_AS {fmt_bytes(soft)}, {fmt_bytes(vm)} of address space in use"))
    except (ImportError, ValueError, OSError):
        pass
    avail = _stat_field("/proc/meminfo", ("MemAvailable:",)) * 1024
    if avail:
        found.append((avail, "MemAvailable in /proc/meminfo"))
    elif not found:
        try:
            found.append((os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "physical memory"))
        except (ValueError, OSError, AttributeError):
            pass
    return min(found) if found else (None, None)


def device_leaves(model, backend):
    if model.graph.graph["dtype"] == "bfloat16":
        raise ConfigError("run needs a dtype numpy can compute in: bfloat16 is for planning only "
                          "(use --dtype float32 to run)", file=model.path)
    return {k: backend.asarray(v) for k, v in leaf_values(model.graph).items()}


@dataclass
class RunResult:
    loss: float
    grads: dict  # leaf -> host array
    measured_managed: int
    resident: int
    allocator_peak: int
    times: list  # seconds per timed step
    timeline: list

    @property
    def time_s(self):
        return statistics.median(self.times)


def run_plan(model, steps, backend, n_steps=5, leaves=None, warmup=1):
    """Warm-up, then `n_steps` timed steps, then one step under the allocator meter."""
    ex = Executor(model.graph, model.joint, steps, backend)
    leaves = leaves if leaves is not None else device_leaves(model, backend)
    for _ in range(warmup):
        ex.step(leaves)
    times = []
    for _ in range(n_steps):
        t0 = backend.clock()
        ex.step(leaves)  # the step's gradients go at once, before the metered step, as in training
        times.append(backend.clock() - t0)
    backend.meter_start()
    try:
        # fresh copies under the meter, so that the allocator's figure includes the resident bytes
        metered = {k: v.copy() for k, v in leaves.items()}
        backend.meter_reset()
        r = ex.step(metered)
        backend.sync()
        alloc = backend.meter_peak()
    finally:
        backend.meter_stop()
    grads = {k: backend.to_host(v) for k, v in r.grads.items()}
    return RunResult(r.loss, grads, r.peak_managed, r.resident, alloc, times, r.timeline)


def time_side_by_side(model, plans, backend, n_steps=5, leaves=None, clock=None):
    """Step times of each schedule (a list per schedule), interleaved in one process after a
    warm-up, so that drift hits all alike: pair them up for ratios, one per round. Each round
    starts with a different schedule (the first to run after another's step meets a colder
    cache), so that the order favours none. `clock` defaults to the backend's (wall time, after
    synchronising)."""
    clock = clock or backend.clock
    leaves = leaves if leaves is not None else device_leaves(model, backend)
    exs = [Executor(model.graph, model.joint, s, backend) for s in plans]
    for ex in exs:
        ex.step(leaves)
    times = [[0.0] * n_steps for _ in exs]
    for r in range(n_steps):
        for k in range(len(exs)):
            n = (r + k) % len(exs)
            t0 = clock()
            exs[n].step(leaves)
            times[n][r] = clock() - t0
    return times


def measure_costs(model, backend, n_steps=3):
    """Seconds each joint node takes on `backend`: a store-all step (sqrt-n where store-all does not
    fit the device) with a synchronised clock read after every node, median over `n_steps` steps
    after a warm-up. Synchronising after every node adds the launch latency to each small node, as
    running it alone would."""
    p, sim = plan(model.joint, "store-all", ix=model.index)
    try:
        require_memory(model, sim.peak, backend, "profiling this model", "store-all's predicted peak")
    except ConfigError:
        p, sim = plan(model.joint, "sqrt-n", ix=model.index)
        require_memory(model, sim.peak, backend, "profiling this model", "sqrt-n's predicted peak")
    ex = Executor(model.graph, model.joint, p.steps, backend)
    leaves = device_leaves(model, backend)
    ex.step(leaves)
    samples = {x: [] for x in model.index.order}
    last = [0.0]

    def took(x, _value):
        now = backend.clock()
        samples[x].append(now - last[0])
        last[0] = now

    for _ in range(n_steps):
        last[0] = backend.clock()
        ex.step(leaves, on_value=took)
    return {x: statistics.median(ts) for x, ts in samples.items()}


def with_costs(model, costs):
    """The model with its joint graph's node costs replaced (seconds, from `measure_costs`)."""
    j = model.joint.copy()
    j.graph.pop("cache", None)  # measured seconds already hold their context, and are not ns
    for x, c in costs.items():
        j.nodes[x]["cost"] = float(c)
    return Model(model.path, model.spec, model.graph, j, JointIndex(j))


# ---- numeric check of the reverse-mode gradient (the seed's §1.1) ----------------------------------
def check_gradients(path, method="central", step=None, tol=None, overrides=None, seed=0, max_elements=16,
                    progress=None):
    """Reverse-mode gradients against numeric differences in float64, in one random direction per
    gradient and along every element of tensors of at most `max_elements`. `progress` (a
    report.Progress) is told the number of directions and each one done."""
    from .autodiff import DEFAULT_STEP, evaluate, numeric_derivative
    h = DEFAULT_STEP.get(method) if step is None else step
    if h is None:
        raise ConfigError(f"unknown method {method!r}: use central, forward or backward")
    tol = (1e-5 if method == "central" else 1e-3) if tol is None else tol
    require_yaml(path, "check")
    model = load_model(path, overrides, dtype="float64")
    backend = get_backend("cpu")
    sa, sa_sim = plan(model.joint, "store-all", ix=model.index)
    require_memory(model, sa_sim.peak + forward_bytes(model.graph), backend, "checking this model",
                   "a store-all step and a forward pass, in float64")
    host = leaf_values(model.graph)
    r = Executor(model.graph, model.joint, sa.steps, backend).step(dict(host))
    rng = np.random.default_rng(seed)
    # Below this absolute difference a finite difference cannot tell two slopes apart: the
    # rounding error of f, eps*|f|, divided by the step (the seed's round-off term).
    noise = float(4 * np.finfo(np.float64).eps * max(abs(r.loss), 1e-300) / h)
    # Reverse mode passes nothing back through stop_gradient: the numeric side holds its values at
    # the unperturbed ones, so both differentiate the same function (the residual nodes the model
    # graph adds are not held: their readers' VJPs are the total derivative through them)
    stops = [v for v in model.graph.graph["order"] if not REGISTRY[model.graph.nodes[v]["op"]].differentiable
             and not REGISTRY[model.graph.nodes[v]["op"]].internal]
    held = {v: evaluate(model.graph, host, backend, target=v) for v in stops}
    rows = []
    if progress is not None:
        progress.total = sum(1 + (host[k].size if host[k].size <= max_elements else 0) for k in r.grads)
    for name, grad in sorted(r.grads.items()):
        base = host[name]
        dirs = [("random", rng.standard_normal(base.shape))]
        dirs[0] = ("random", dirs[0][1] / max(np.linalg.norm(dirs[0][1]), 1e-300))
        if base.size <= max_elements:
            for idx in np.ndindex(base.shape):
                e = np.zeros(base.shape)
                e[idx] = 1.0
                dirs.append((str(list(idx)) if idx else "[]", e))
        for label, d in dirs:
            def f(t, name=name, d=d):
                shifted = dict(host)
                shifted[name] = base + t * d
                return float(backend.to_host(evaluate(model.graph, shifted, backend, held=held)))
            num = numeric_derivative(f, method, h)
            ana = float(np.sum(np.asarray(grad) * d))
            err = abs(num - ana) / max(abs(num), abs(ana), 1e-300)
            ok = bool(err <= tol or abs(num - ana) <= noise)
            rows.append({"name": name, "direction": label, "numeric": num, "reverse": ana, "rel_error": err,
                         "passed": ok})
            if progress is not None:
                progress.update()
    failed = [row for row in rows if not row["passed"]]
    worst = max((row["rel_error"] for row in (failed or rows)), default=0.0)
    return {"method": method, "step": h, "tolerance": tol, "roundoff": noise, "worst_rel_error": worst, "passed": not failed, "checks": rows}


def raise_if_failed(result):
    if not result["passed"]:
        raise CheckFailed(f"gradient check failed: worst relative error {result['worst_rel_error']:.3g} "
                          f"> tolerance {result['tolerance']:g}")


# ---- Jacobians in forward and reverse mode (the seed's §2.5) --------------------------------------
MAX_PASSES = 4096


def _wrt_leaves(g):
    return [v for v, d in g.nodes(data=True) if d["kind"] != "op" and d["grad"]]


def jacobian(model, of=None, wrt=None, mode="auto", backend=None):
    """The full Jacobian of node `of` (default: the output) with respect to the leaves `wrt`:
    a column per forward pass (J·e_j) or a row per reverse pass (e_i^T·J)."""
    from .autodiff import jvp
    require_model(model, "jacobian")
    backend = backend or get_backend("cpu")
    g = retarget(model.graph, of, wrt)
    cols = _wrt_leaves(g)
    if not cols:
        raise ConfigError("no input or parameter to differentiate with respect to: name one with --wrt",
                          file=model.path)
    out = g.graph["output"]
    n = sum(n_elements(g.nodes[v]["shape"]) for v in cols)
    m = n_elements(g.nodes[out]["shape"])
    if mode == "auto":
        mode = "forward" if n < m else "reverse"
        reason = (f"forward: {n} input elements < {m} output elements, so {n} columns cost fewer passes"
                  if mode == "forward" else
                  f"reverse: {m} output element{'s' if m != 1 else ''} <= {n} input elements, "
                  f"so {m} row{'s' if m != 1 else ''} cost fewer passes")
    elif mode in ("forward", "reverse"):
        reason = f"{mode}: as asked ({n} inputs, {m} outputs)"
    else:
        raise ConfigError(f"unknown mode {mode!r}: use forward, reverse or auto")
    passes = n if mode == "forward" else m
    if passes > MAX_PASSES:
        raise ConfigError(f"{mode} mode would take {passes} passes (over {MAX_PASSES}): narrow it with --of or --wrt",
                          file=model.path)
    joint = lower(g)
    sa_peak = plan(joint, "store-all", ix=JointIndex(joint))[1].peak
    require_memory(model, 8 * m * n + sa_peak + 2 * forward_bytes(g), backend, "this Jacobian",
                   f"the {m} x {n} float64 matrix, a store-all step and a forward pass with tangents")
    host = leaf_values(g)
    leaves = {k: backend.asarray(v) for k, v in host.items()}
    resident = sum(a.nbytes for a in host.values())
    J = np.zeros((m, n))
    t0 = backend.clock()
    if mode == "forward":
        peak = 0
        for j in range(n):
            e = np.zeros(n)
            e[j] = 1.0
            tangents, at = {}, 0
            for v in cols:
                k = host[v].size
                tangents[v] = backend.asarray(e[at:at + k].reshape(host[v].shape).astype(host[v].dtype))
                at += k
            r = jvp(g, leaves, tangents, backend, target=out)
            J[:, j] = backend.to_host(r.tangent).reshape(-1)
            peak = max(peak, r.peak_bytes)
        peak += resident + sum(host[v].nbytes for v in cols)  # the tangents of the inputs
    else:
        joint = lower(g)
        ix = JointIndex(joint)
        p, sim = plan(joint, "store-all", ix=ix)
        ex = Executor(g, joint, p.steps, backend)
        dtype = g.nodes[out]["dtype"]
        for i in range(m):
            e = np.zeros(m, dtype=dtype)
            e[i] = 1.0
            r = ex.step(leaves, seed=backend.asarray(e.reshape(g.nodes[out]["shape"])))
            J[i] = np.concatenate([backend.to_host(r.grads[v]).reshape(-1) for v in cols])
        peak = sim.peak
    elapsed = backend.clock() - t0
    # the other mode's peak, for comparison: forward mode holds no tape, reverse mode stores residuals
    if mode == "forward":
        joint = lower(g)
        other = plan(joint, "store-all", ix=JointIndex(joint))[1].peak
    else:
        tangents = {v: backend.asarray(np.zeros_like(host[v])) for v in cols}
        other = jvp(g, leaves, tangents, backend, target=out).peak_bytes + resident + \
            sum(host[v].nbytes for v in cols)
    memory = {mode: int(peak), ("reverse" if mode == "forward" else "forward"): int(other)}
    labels = [f"{v}{list(idx) if host[v].ndim else ''}" for v in cols for idx in np.ndindex(host[v].shape)]
    return {"of": out, "wrt": cols, "mode": mode, "reason": reason, "passes": passes, "inputs": n, "outputs": m,
            "time_s": elapsed, "peak_bytes": int(peak), "peak_bytes_by_mode": memory, "jacobian": J,
            "columns": labels}


# ---- the numeric-differentiation study (the seed's §1.1) ------------------------------------------
STEPS = [10.0 ** -k for k in range(1, 13)]


def numeric_study(path, wrt=None, overrides=None, seed=0):
    """Forward, backward and central differences at h = 1e-1 ... 1e-12, in float32 and float64,
    each against the exact derivative from reverse mode in float64, along one direction."""
    from .autodiff import evaluate, numeric_derivative
    require_yaml(path, "numeric")
    exact_model = load_model(path, overrides, dtype="float64")
    require_memory(exact_model, store_all_peak(exact_model) + forward_bytes(exact_model.graph), get_backend("cpu"),
                   "this study", "a store-all step and a forward pass, in float64")
    g64 = retarget(exact_model.graph, wrt=[wrt] if wrt else None)
    cols = _wrt_leaves(g64)
    if not cols:
        raise ConfigError("no input or parameter takes a gradient: name one with --wrt", file=path)
    name = wrt or cols[0]
    backend = get_backend("cpu")
    host64 = leaf_values(g64)
    rng = np.random.default_rng(seed)
    d = rng.standard_normal(host64[name].shape)
    d = d / np.linalg.norm(d) if d.ndim else np.float64(1.0)
    joint = lower(retarget(g64, wrt=[name]))
    p, _ = plan(joint, "store-all", ix=JointIndex(joint))
    r = Executor(retarget(g64, wrt=[name]), joint, p.steps, backend).step(dict(host64))
    exact = float(np.sum(backend.to_host(r.grads[name]) * d))
    f0 = r.loss
    rows = {h: {} for h in STEPS}
    best = {}
    for dtype in ("float32", "float64"):
        model = load_model(path, overrides, dtype=dtype)
        host = leaf_values(model.graph)
        base = host[name]
        dd = np.asarray(d, dtype=base.dtype)

        def f(t):
            shifted = dict(host)
            shifted[name] = (base + base.dtype.type(t) * dd).astype(base.dtype)
            return float(evaluate(model.graph, shifted, backend))

        for method in ("forward", "backward", "central"):
            errs = []
            for h in STEPS:
                num = numeric_derivative(f, method, h)
                err = abs(num - exact) / max(abs(exact), 1e-300)
                rows[h][f"{method}_{dtype}"] = err
                errs.append((err, h))
            e, h = min(errs)
            best[f"{method}_{dtype}"] = {"h": h, "rel_error": e}
    return {"wrt": name, "exact": exact, "value": f0, "direction": "random unit" if np.ndim(d) else "1",
            "steps": [{"h": h, **rows[h]} for h in STEPS], "best": best}


# ---- three ways to differentiate, side by side (the seed's §1) ----------------------------------
def reverse_op_count(g):
    """Operations reverse mode runs: every forward op, and one VJP term per (consumer, input) pair
    on the gradient's path."""
    ops = len(g.graph["order"])
    terms = sum(1 for w in g.graph["order"] if g.nodes[w]["grad"]
                for u in g.nodes[w]["inputs"] if g.nodes[u]["grad"])
    return ops + terms


# The sizes (expression-tree nodes) `methods CONFIG` takes symbolically. A closed form grows
# exponentially with the depth of a model that reads a value twice (the expression swell), and
# walking, differentiating and printing it grows with it: the seed chain at N=9 ran for minutes.
# sympy's simplify is slower still, and unbounded: 46 nodes took 0.5 s, 114 nodes 11 s, 202 over 15 s.
SYMBOLIC_LIMIT = 5_000
SYMBOLIC_MAX_OPS = 64  # sympy builds a deep closed form slowly itself: the seed chain at N=300 ran for minutes
SIMPLIFY_LIMIT = 80


def _bounded_size(sp, expr, limit):
    """tree_size, counted no further than limit + 1 (the tree of a shared DAG can be exponential)."""
    import itertools
    return sum(1 for _ in itertools.islice(sp.preorder_traversal(expr), limit + 1))


def methods(path, overrides=None, simplify_limit=SIMPLIFY_LIMIT):
    """For each input that takes a gradient: the derivative by central differences, by symbolic
    differentiation (sympy) and by reverse mode, their disagreements, times and sizes."""
    from .autodiff import evaluate, numeric_derivative
    import time as _time

    from .autodiff.symbolic import INSTALL, Unsupported, cse_size, load_sympy, to_sympy, tree_size
    require_yaml(path, "methods")
    model = load_model(path, overrides, dtype="float64")
    g = model.graph
    backend = get_backend("cpu")
    require_memory(model, store_all_peak(model) + forward_bytes(g), backend, "this comparison",
                   "a store-all step and a forward pass, in float64")
    host = leaf_values(g)
    names = _wrt_leaves(g)
    if not names:
        raise ConfigError("no input or parameter takes a gradient (grad: true)", file=path)
    p, _ = plan(model.joint, "store-all", ix=model.index)
    ex = Executor(g, model.joint, p.steps, backend)
    t0 = _time.perf_counter()
    r = ex.step(dict(host))
    t_rev = _time.perf_counter() - t0
    rev = {v: backend.to_host(r.grads[v]) for v in names}
    out = {"model": g.graph["name"], "value": r.loss, "reverse_ops": reverse_op_count(g), "inputs": [],
           "symbolic": None, "reverse_time_s": t_rev}
    sp = load_sympy()
    sym_note, expr, syms = None, None, None
    if sp is None:
        sym_note = INSTALL
    else:
        try:
            n_ops = sum(1 for _, d in g.nodes(data=True) if d["kind"] == "op")
            if n_ops > SYMBOLIC_MAX_OPS:
                raise Unsupported(f"the model has {n_ops} ops, more than the {SYMBOLIC_MAX_OPS} whose closed form "
                                  "this comparison builds (the expression swell: `ckpt methods --swell`)")
            expr, syms = to_sympy(sp, g)
            size = _bounded_size(sp, expr, SYMBOLIC_LIMIT)
            if size > SYMBOLIC_LIMIT:
                raise Unsupported(f"f as one closed-form expression has more than {SYMBOLIC_LIMIT} tree nodes "
                                  "(the expression swell: `ckpt methods --swell`)")
            out["symbolic"] = {"expression_size": size}
        except Unsupported as e:
            expr = None
            sym_note = f"symbolic differentiation skipped: {e}"
    out["symbolic_note"] = sym_note
    eps = np.finfo(np.float64).eps
    for v in names:
        x = host[v]
        if x.shape != ():
            d = np.random.default_rng(0).standard_normal(x.shape)
            d /= np.linalg.norm(d)
        else:
            d = np.float64(1.0)
        h = eps ** (1 / 3) * max(1.0, float(np.max(np.abs(x))))
        t0 = _time.perf_counter()

        def f(t, v=v, d=d):
            shifted = dict(host)
            shifted[v] = x + t * d
            return float(evaluate(g, shifted, backend))
        num = numeric_derivative(f, "central", h)
        t_num = _time.perf_counter() - t0
        exact = float(np.sum(rev[v] * d))
        row = {"name": v, "reverse": exact, "numeric": num, "numeric_step": h, "numeric_time_s": t_num,
               "numeric_vs_reverse": abs(num - exact) / max(abs(exact), 1e-300)}
        if expr is not None:
            t0 = _time.perf_counter()
            dexpr = sp.diff(expr, syms[v])
            if _bounded_size(sp, dexpr, SYMBOLIC_LIMIT) > SYMBOLIC_LIMIT:
                out["symbolic_note"] = (f"symbolic derivatives of more than {SYMBOLIC_LIMIT} tree nodes are not "
                                        "evaluated (the expression swell: `ckpt methods --swell`)")
                out["inputs"].append(row)
                continue
            value = float(dexpr.evalf(subs={syms[k]: float(host[k]) for k in syms}))
            row["symbolic_time_s"] = _time.perf_counter() - t0
            row.update(symbolic=value, symbolic_vs_reverse=abs(value - exact) / max(abs(exact), 1e-300),
                       numeric_vs_symbolic=abs(num - value) / max(abs(value), 1e-300),
                       derivative=str(dexpr), derivative_size=tree_size(sp, dexpr), derivative_cse_size=cse_size(sp, dexpr))
            if row["derivative_size"] <= simplify_limit:
                simple = sp.simplify(dexpr)
                row.update(simplified=str(simple), simplified_size=tree_size(sp, simple))
        out["inputs"].append(row)
    return out


SWELL_FAMILIES = {
    # x_{k+1} = sin(x_k) * x_k + x_k
    "sinx": ["  - {{name: s{k}, op: sin, inputs: [{x}]}}", "  - {{name: p{k}, op: mul, inputs: [s{k}, {x}]}}",
             "  - {{name: x{k1}, op: add, inputs: [p{k}, {x}]}}"],
    # the seed's f(x1, x2) = ln(x1) + x1*x2 - sin(x2) applied to (x_k, x_k)
    "seed": ["  - {{name: l{k}, op: log, inputs: [{x}]}}", "  - {{name: q{k}, op: mul, inputs: [{x}, {x}]}}",
             "  - {{name: s{k}, op: sin, inputs: [{x}]}}", "  - {{name: a{k}, op: add, inputs: [l{k}, q{k}]}}",
             "  - {{name: x{k1}, op: sub, inputs: [a{k}, s{k}]}}"],
}


def swell_config(family, depth):
    lines = [f"name: swell_{family}_{depth}", "dtype: float64", "inputs:", "  x0: {shape: [], value: 1.5, grad: true}",
             "nodes:"]
    for k in range(depth):
        lines += [t.format(k=k, k1=k + 1, x=f"x{k}") for t in SWELL_FAMILIES[family]]
    lines.append(f"output: x{depth}")
    return "\n".join(lines) + "\n"


def swell(depth, family="sinx"):
    """Depth against the size of the symbolic derivative (a tree, and after common-subexpression
    elimination) and against reverse mode's operation count."""
    from .autodiff.symbolic import INSTALL, cse_size, load_sympy, to_sympy, tree_size
    from .model import parse_config
    if family not in SWELL_FAMILIES:
        raise ConfigError(f"unknown family {family!r}: use {' or '.join(SWELL_FAMILIES)}")
    sp = load_sympy()
    if sp is None:
        raise ConfigError(INSTALL)
    rows = []
    for d in range(1, depth + 1):
        g = build_graph(parse_config(swell_config(family, d)))
        expr, syms = to_sympy(sp, g)
        dexpr = sp.diff(expr, syms["x0"])
        rows.append({"depth": d, "function_size": tree_size(sp, expr), "derivative_size": tree_size(sp, dexpr),
                     "derivative_cse_size": cse_size(sp, dexpr), "reverse_ops": reverse_op_count(g)})
    return {"family": family, "rows": rows}
