"""Benchmarks and their baselines: memory figures that compare exactly, times that compare as
ratios to store-all measured in the same run (a ratio holds from one machine to the next)."""

import math
import os
import statistics
from contextlib import nullcontext
import sys

import click

from .backend import get_backend
from .errors import BudgetError, ConfigError
from .jsonio import locked, read_json, write_json_atomic
from .plan import plan
from .session import device_leaves, load_model, require_memory, require_model, run_plan, time_side_by_side
from .sizes import parse_budget

SCHEMA = 1
# the allocator's figure includes a few interpreter objects, so it may wobble by a little
ALLOCATOR_SLACK, ALLOCATOR_SLACK_BYTES = 0.02, 4096


def entry_key(config, strategy, budget_spec):
    name = os.path.splitext(os.path.basename(config))[0]
    return f"{name}:{strategy}" + (f"@{budget_spec}" if strategy == "budget" else "")


def run_bench(configs, strategies, budgets, steps=5, time_limit=10.0, overrides=None, progress=True):
    """One entry per (config, strategy[, budget]): predicted and measured peaks, allocator peak,
    median step time, and that time over store-all's, interleaved in one process."""
    jobs = [(c, s, b) for c in configs for s in strategies for b in (budgets if s == "budget" else [None])]
    entries = {}
    backend = get_backend("cpu")
    progress = progress and sys.stderr.isatty()  # a bar only where someone watches it
    shown = click.progressbar(length=len(jobs), label="benchmarking", file=sys.stderr) if progress else nullcontext()
    with shown as bar:
        for config in configs:
            model = load_model(config, overrides)
            require_model(model, "bench")
            sa, sa_sim = plan(model.joint, "store-all", ix=model.index)
            require_memory(model, sa_sim.peak, backend)
            leaves = device_leaves(model, backend)
            for c, strategy, spec in [j for j in jobs if j[0] == config]:
                key = entry_key(c, strategy, spec)
                budget = parse_budget(spec, sa_sim.peak) if strategy == "budget" else None
                try:
                    p, sim = plan(model.joint, strategy, budget, time_limit=time_limit, ix=model.index)
                except BudgetError as e:
                    entries[key] = {"feasible": False, "error": str(e)}
                    if bar:
                        bar.update(1)
                    continue
                r = run_plan(model, p.steps, backend, n_steps=1, leaves=leaves, warmup=1)
                if strategy == "store-all":  # the reference: its ratio is 1 by definition
                    (mine,) = time_side_by_side(model, [p.steps], backend, n_steps=steps, leaves=leaves)
                    ratio = 1.0
                else:
                    mine, base = time_side_by_side(model, [p.steps, sa.steps], backend, n_steps=steps,
                                                   leaves=leaves)
                    ratio = statistics.median(a / b for a, b in zip(mine, base))
                t = statistics.median(mine)
                entries[key] = {
                    "feasible": True, "solver": p.solver, "budget_bytes": budget,
                    "peak_predicted": sim.peak, "peak_measured": r.resident + r.measured_managed,
                    "peak_allocator": r.allocator_peak, "time_s": t, "time_ratio": ratio,
                    "overhead_predicted": (sim.cost - sa_sim.cost) / sa_sim.cost if sa_sim.cost else 0.0,
                }
                if bar:
                    bar.update(1)
    return entries


_PEAKS = ("peak_predicted", "peak_measured", "peak_allocator")


def load_baseline(path):
    """The entries of a baseline file, every one checked: a corrupt baseline is one line (exit 2)
    and is never compared against or overwritten."""
    doc = read_json(path, "baseline")
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("entries"), dict):
        raise ConfigError(f"not a ckpt baseline (want an object with schema {SCHEMA} and entries)", file=path)
    for key, e in doc["entries"].items():
        problem = _entry_problem(e)
        if problem:
            raise ConfigError(f"baseline entry {key!r} {problem}", file=path)
    return doc["entries"]


def _entry_problem(e):
    """What is wrong with one baseline entry, or None."""
    if not isinstance(e, dict):
        return f"must be an object of figures, got {'null' if e is None else type(e).__name__}"
    feasible = e.get("feasible", True)
    if not isinstance(feasible, bool):
        return "has a 'feasible' that is not true or false"
    if not feasible:
        return None
    for k in _PEAKS:
        v = e.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            return f"lacks its figures ({k} must be a whole number of bytes >= 0)"
    ratio = e.get("time_ratio")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio <= 0:
        return "lacks its figures (time_ratio must be a finite number > 0)"
    return None


def save_baseline(path, entries):
    """Sorted keys, one figure per line: stable under version control. Written atomically."""
    keep = ("feasible", "solver", "budget_bytes", "peak_predicted", "peak_measured", "peak_allocator",
            "time_ratio", "overhead_predicted", "error")
    doc = {"schema": SCHEMA, "entries": {k: {f: v for f, v in e.items() if f in keep} for k, e in entries.items()}}
    write_json_atomic(path, doc, sort_keys=True)


def update_baseline(path, entries):
    """Merge `entries` into the baseline at `path` (created if missing) under a lock, re-reading it
    inside the lock, so that concurrent updates of one file lose no entry."""
    with locked(path):
        merged = load_baseline(path) if os.path.exists(path) else {}
        merged.update(entries)
        save_baseline(path, merged)
    return merged


def compare(current, baseline, time_tolerance):
    """Rows of (key, figure, baseline, current, status); status is regression, improved, same,
    new (not in the baseline) or not run (in the baseline only: a run may cover a subset)."""
    rows = []
    for key in sorted(set(current) | set(baseline)):
        cur, base = current.get(key), baseline.get(key)
        if base is None:
            rows.append((key, "-", None, None, "new"))
            continue
        if cur is None:
            rows.append((key, "-", None, None, "not run"))
            continue
        if not cur.get("feasible", True) or not base.get("feasible", True):
            same = cur.get("feasible", True) == base.get("feasible", True)
            status = "same" if same else ("regression" if not cur.get("feasible", True) else "improved")
            rows.append((key, "feasible", base.get("feasible", True), cur.get("feasible", True), status))
            continue
        for fig in ("peak_predicted", "peak_measured"):
            b, c = base[fig], cur[fig]
            rows.append((key, fig, b, c, "regression" if c > b else "improved" if c < b else "same"))
        b, c = base["peak_allocator"], cur["peak_allocator"]
        slack = b * ALLOCATOR_SLACK + ALLOCATOR_SLACK_BYTES
        status = "regression" if c > b + slack else "improved" if c < b - slack else "same"
        rows.append((key, "peak_allocator", b, c, status))
        b, c = base["time_ratio"], cur["time_ratio"]
        status = "regression" if c > b * (1 + time_tolerance) else "improved" if c < b * (1 - time_tolerance) else "same"
        rows.append((key, "time_ratio", b, c, status))
    return rows
