"""Benchmarks and their baselines: memory figures that compare exactly, times that compare as
ratios to store-all measured in the same run (a ratio holds from one machine to the next).

A time regression must not be load: on a shared machine one round can be slowed by anything. The
ratio is the median over interleaved rounds of per-round ratios; a regression is called only when
the lower confidence bound of that median (order statistics: no assumption on the noise) is above
the baseline's ratio times 1 + tolerance. A ratio whose median is beyond that (a suspect, proven
or not) is measured again at once with twice the rounds, and the verdict rests on all of them:
a burst of load in the first rounds is outvoted, a real slowdown is confirmed with a tighter
bound. On the CPU, steps are timed in the process's CPU time, which waiting for a core does not
inflate (a multi-threaded BLAS spinning for its share under load does: run with one BLAS thread,
OPENBLAS_NUM_THREADS=1, for the steadiest figures)."""

import math
import os
import time
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
MIN_ROUNDS = 15  # interleaved rounds per time ratio: the median's 95% bounds are the 4th values from each end
CONFIDENCE = 0.95


def median_bounds(samples, confidence=CONFIDENCE):
    """(low, high): a distribution-free confidence interval for the median, by order statistics:
    the k-th smallest and k-th largest samples, k the largest with P(Binomial(n, 1/2) < k) <=
    (1 - confidence) / 2 (at least 1: the extremes)."""
    xs = sorted(samples)
    n = len(xs)
    if not n:
        raise ValueError("no samples")
    alpha, below, k = (1.0 - confidence) / 2, 0.0, 0
    while k < n // 2:
        below += math.comb(n, k) / 2 ** n  # P(Binomial(n, 1/2) <= k)
        if below > alpha:
            break
        k += 1
    k = max(k, 1)
    return xs[k - 1], xs[n - k]


def gate_ratios(measure, rounds, base, tolerance):
    """(per-round ratios, rechecked): `measure(n)` gives n interleaved rounds' ratios; a suspect
    (median above base * (1 + tolerance)) is measured again with 2n more."""
    ratios = list(measure(rounds))
    if base is None or statistics.median(ratios) <= base * (1 + tolerance):
        return ratios, False
    return ratios + list(measure(2 * rounds)), True


def time_status(samples, base, tolerance, confidence=CONFIDENCE):
    """regression, improved or same, for per-round time ratios against a baseline ratio: only a
    confidence bound beyond the tolerance counts."""
    lo, hi = median_bounds(samples, confidence)
    if lo > base * (1 + tolerance):
        return "regression"
    if hi < base * (1 - tolerance):
        return "improved"
    return "same"


def entry_key(config, strategy, budget_spec):
    """`STEM:STRATEGY[@BUDGET]`: a YAML config is named by its file's stem, a Python model
    (MODEL.py:NAME) by its stem and function, `m:f`, so that two functions of one file are two
    entries."""
    from .frontends.python import split_path
    file, function = split_path(config)
    name = os.path.splitext(os.path.basename(file))[0] + (f":{function}" if function else "")
    return f"{name}:{strategy}" + (f"@{budget_spec}" if strategy == "budget" else "")


def run_bench(configs, strategies, budgets, steps=5, time_limit=10.0, overrides=None, progress=True,
              baseline=None, time_tolerance=None, check_budgets=()):
    """One entry per (config, strategy[, budget]): predicted and measured peaks, allocator peak,
    median step time (by step_clock: CPU time on the CPU), and that time over store-all's: the median of per-round ratios over at least
    MIN_ROUNDS interleaved rounds, with its confidence bounds. Given a baseline, a ratio that
    looks like a regression is measured again at once (gate_ratios; `rechecked`). `check_budgets`:
    budgets (`512MiB`, `0.8x`) each store-all and sqrt-n entry is checked against, by its peak with
    workspace (`budget_check`: per budget its bytes and whether the plan meets it)."""
    rounds = max(steps, MIN_ROUNDS)
    jobs = [(c, s, b) for c in configs for s in strategies for b in (budgets if s == "budget" else [None])]
    entries = {}
    backend = get_backend("cpu")
    progress = progress and sys.stderr.isatty()  # a bar only where someone watches it
    shown = click.progressbar(length=len(jobs), label="benchmarking", file=sys.stderr) if progress else nullcontext()
    # every config is loaded and checked against the memory this process may use before any is
    # measured: one that cannot run is one line at once, not after the others' minutes of timing
    loaded = []
    for config in configs:
        model = load_model(config, overrides)
        require_model(model, "bench")
        sa, sa_sim = plan(model.joint, "store-all", ix=model.index)
        require_memory(model, sa_sim.peak, backend)
        loaded.append((config, model, sa, sa_sim))
    with shown as bar:
        for config, model, sa, sa_sim in loaded:
            leaves = device_leaves(model, backend)
            for c, strategy, spec in [j for j in jobs if j[0] == config]:
                key = entry_key(c, strategy, spec)
                # `0.8x` as everywhere: of store-all's peak with its workspace (what a budget bounds)
                budget = parse_budget(spec, sa_sim.peak_ws) if strategy == "budget" else None
                try:
                    p, sim = plan(model.joint, strategy, budget, time_limit=time_limit, ix=model.index)
                except BudgetError as e:
                    entries[key] = {"feasible": False, "error": str(e)}
                    if bar:
                        bar.update(1)
                    continue
                r = run_plan(model, p.steps, backend, n_steps=1, leaves=leaves, warmup=1)
                rechecked = False
                if strategy == "store-all":  # the reference: its ratio is 1 by definition
                    (mine,) = time_side_by_side(model, [p.steps], backend, n_steps=steps, leaves=leaves,
                                                clock=step_clock(backend))
                    ratios = [1.0]
                else:
                    mine = []

                    def measure(n, steps=p.steps):
                        t, ratios = _ratios(model, steps, sa.steps, backend, n, leaves)
                        mine.extend(t)
                        return ratios

                    old = (baseline or {}).get(key)
                    known = old is not None and old.get("feasible", True) and time_tolerance is not None
                    ratios, rechecked = gate_ratios(measure, rounds, old["time_ratio"] if known else None,
                                                    time_tolerance)
                ratio = statistics.median(ratios)
                t = statistics.median(mine)
                entries[key] = {
                    "feasible": True, "solver": p.solver, "budget_bytes": budget,
                    "peak_predicted": sim.peak, "peak_measured": r.resident + r.measured_managed,
                    "peak_allocator": r.allocator_peak, "time_s": t, "time_ratio": ratio,
                    "time_ratios": ratios, "time_ratio_bounds": list(median_bounds(ratios)), "rechecked": rechecked,
                    "overhead_predicted": sim.time / sa_sim.time - 1.0 if sa_sim.time else 0.0,
                    "peak_with_workspace": sim.peak_ws,
                }
                if check_budgets and strategy != "budget":
                    entries[key]["budget_check"] = {
                        s: {"budget_bytes": b, "met": sim.peak_ws <= b}
                        for s, b in ((s, parse_budget(s, sa_sim.peak_ws)) for s in check_budgets)}
                if bar:
                    bar.update(1)
    return entries


_PEAKS = ("peak_predicted", "peak_measured", "peak_allocator")


def step_clock(backend):
    """The clock bench times steps with: CPU time of the process on the CPU, the backend's
    synchronised wall clock on a GPU (whose work is not this process's CPU time)."""
    return time.process_time if backend.name == "cpu" else backend.clock


def _ratios(model, steps, sa_steps, backend, rounds, leaves):
    """(step times of `steps`, per-round ratios to store-all's), interleaved."""
    mine, base = time_side_by_side(model, [steps, sa_steps], backend, n_steps=rounds, leaves=leaves,
                                   clock=step_clock(backend))
    return mine, [a / b for a, b in zip(mine, base)]


def load_baseline(path):
    """The entries of a baseline file, every one checked: a corrupt baseline is one line (exit 2)
    and is never compared against or overwritten."""
    doc = read_json(path, "baseline")
    # (`true` and `1.0` equal 1 in Python: the schema must be the integer itself)
    if not isinstance(doc, dict) or type(doc.get("schema")) is not int or doc["schema"] != SCHEMA \
            or not isinstance(doc.get("entries"), dict):
        raise ConfigError(f"not a ckpt baseline (want an object with schema {SCHEMA} and entries)", file=path)
    for key, e in doc["entries"].items():
        # entry names are printed in the comparison table, a row each
        problem = _entry_problem(e) if key.isprintable() else "has a name with a control character"
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
    new (not in the baseline) or not run (in the baseline only: a run may cover a subset). A time
    ratio measured with its per-round samples is judged by their median's confidence bounds."""
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
        if cur.get("time_ratios"):  # measured here: the confidence bounds decide
            status = time_status(cur["time_ratios"], b, time_tolerance)
        else:  # a single figure (an older results file): the point comparison
            status = "regression" if c > b * (1 + time_tolerance) else "improved" if c < b * (1 - time_tolerance) else "same"
        rows.append((key, "time_ratio", b, c, status))
    return rows
