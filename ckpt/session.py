"""The steps behind each command, shared by the CLI and the benchmark scripts: load a model,
plan it, run it, check its gradients. Errors are raised typed; the CLI turns them into one line."""

import statistics
from dataclasses import dataclass

import numpy as np

from .backend import get_backend
from .errors import CheckFailed, ConfigError
from .execute import Executor, forward_value
from .model import build_graph, leaf_values, load_config, lower
from .model.costgraph import load_cost_graph
from .plan import JointIndex, plan
from .simulate import simulate  # noqa: F401  (re-exported for scripts)
from .sizes import fmt_bytes


@dataclass
class Model:
    path: str
    spec: object
    graph: object
    joint: object
    index: object


def load_model(path, overrides=None, dtype=None):
    """A YAML model config, or (for `.json`) a cost graph from another tool, which can be planned
    but not run."""
    if str(path).lower().endswith(".json"):
        if overrides or dtype:
            raise ConfigError("--set and --dtype apply to YAML model configs, not to cost graphs", file=path)
        j = load_cost_graph(path)
        return Model(path, None, None, j, JointIndex(j))
    overrides = dict(overrides or {})
    if dtype is not None:
        overrides["dtype"] = dtype
    spec = load_config(path, overrides=overrides)
    g = build_graph(spec)
    j = lower(g)
    return Model(path, spec, g, j, JointIndex(j))


def require_model(model, command):
    if model.graph is None:
        raise ConfigError(f"{command} needs a YAML model config; a cost graph can only be planned", file=model.path)


def require_memory(model, predicted_peak, backend):
    """Refuse, before allocating anything, a step that cannot fit in this machine's memory."""
    have = backend.memory_bytes()
    if have and predicted_peak > have:
        raise ConfigError(f"running this model needs {fmt_bytes(predicted_peak)} (the plan's predicted peak) but "
                          f"{backend.name} memory is {fmt_bytes(have)}; `ckpt plan` plans it without running it",
                          file=model.path)


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
        r = ex.step(leaves)
        times.append(backend.clock() - t0)
    del r  # drop the last step's gradients before the metered step, as a training loop would
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


def time_side_by_side(model, plans, backend, n_steps=5, leaves=None):
    """Median step time of each schedule, interleaved in one process so that drift hits all alike."""
    leaves = leaves if leaves is not None else device_leaves(model, backend)
    exs = [Executor(model.graph, model.joint, s, backend) for s in plans]
    for ex in exs:
        ex.step(leaves)
    times = [[] for _ in exs]
    for _ in range(n_steps):
        for ex, ts in zip(exs, times):
            t0 = backend.clock()
            ex.step(leaves)
            ts.append(backend.clock() - t0)
    return [statistics.median(ts) for ts in times]


# ---- numeric check of the reverse-mode gradient (the seed's §1.1) ----------------------------------
DEFAULT_STEP = {"central": 1e-6, "forward": 1e-8, "backward": 1e-8}


def numeric_derivative(f, method, h):
    if method == "central":
        return (f(h) - f(-h)) / (2 * h)
    if method == "forward":
        return (f(h) - f(0.0)) / h
    if method == "backward":
        return (f(0.0) - f(-h)) / h
    raise ConfigError(f"unknown method {method!r}: use central, forward or backward")


def check_gradients(path, method="central", step=None, tol=None, overrides=None, seed=0, max_elements=16):
    """Reverse-mode gradients against numeric differences in float64, in one random direction per
    gradient and along every element of tensors of at most `max_elements`."""
    h = DEFAULT_STEP.get(method) if step is None else step
    if h is None:
        raise ConfigError(f"unknown method {method!r}: use central, forward or backward")
    tol = (1e-5 if method == "central" else 1e-3) if tol is None else tol
    model = load_model(path, overrides, dtype="float64")
    backend = get_backend("cpu")
    host = leaf_values(model.graph)
    sa, _ = plan(model.joint, "store-all", ix=model.index)
    r = Executor(model.graph, model.joint, sa.steps, backend).step({k: v for k, v in host.items()})
    rng = np.random.default_rng(seed)
    # Below this absolute difference a finite difference cannot tell two slopes apart: the
    # rounding error of f, eps*|f|, divided by the step (the seed's round-off term).
    noise = 4 * np.finfo(np.float64).eps * max(abs(r.loss), 1e-300) / h
    rows = []
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
                return forward_value(model.graph, shifted, backend)
            num = numeric_derivative(f, method, h)
            ana = float(np.sum(np.asarray(grad) * d))
            err = abs(num - ana) / max(abs(num), abs(ana), 1e-300)
            ok = err <= tol or abs(num - ana) <= noise
            rows.append({"name": name, "direction": label, "numeric": num, "reverse": ana, "rel_error": err,
                         "passed": ok})
    failed = [row for row in rows if not row["passed"]]
    worst = max((row["rel_error"] for row in (failed or rows)), default=0.0)
    return {"method": method, "step": h, "tolerance": tol, "roundoff": noise, "worst_rel_error": worst, "passed": not failed, "checks": rows}


def raise_if_failed(result):
    if not result["passed"]:
        raise CheckFailed(f"gradient check failed: worst relative error {result['worst_rel_error']:.3g} "
                          f"> tolerance {result['tolerance']:g}")
