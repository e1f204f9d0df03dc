#!/usr/bin/env python3
"""Fit the default cost model's weights on this machine and check how well they predict time.

    python scripts/calibrate_costs.py fit [--steps 5] [--write]
    python scripts/calibrate_costs.py check [--rounds 7] [--repeats 3] [--config NAME ...]

`fit` times every computed node of steps of the example configs (at their sizes and a few others,
so that shapes vary; store-all and plans that recompute, so that contexts vary), the clock read
after every node, medians over --steps steps; then
fits, per op and direction, nanoseconds per FLOP, per byte moved and per call by non-negative
least squares (each node's time is the sum of its kinds' terms). Then the cache term of the
predicted step time (ckpt/simulate.py:cache_bytes): the cache capacity and the weight per byte
read from memory whose predicted overheads come closest to the overheads of the same plans
measured in plain steps, side by side with store-all (`fit_cache`); `--only cache` fits it alone,
the table held. --write stores both in ckpt/model/cost_weights.py, which lower() reads: plans
then depend on fixed data, never on the clock at plan time.

Each case (a config at one size) is timed in a process of its own, as `ckpt run` would run it:
the C allocator's state carries over from one model to the next in a process (glibc raises its
mmap and trim thresholds to the largest block freed so far), which changed gpt_small's measured
sqrt-n overhead from 10% to 25% after mlp_deep had run, and the per-node times the fit sees with it.
Within a process, glibc's default also hands the heap's top back to the system whenever more than
twice the largest freed block is free there, and takes it back with page faults at the next
forward: a cost of the schedule's memory shape, not of what it computes (it made resnet_small's
0.9x budget plan measure -1% against store-all's +7%, the plan faster for recomputing). So by
default (--malloc kept) the timed processes keep their heap: blocks up to 32 MiB come from it and
none of it is handed back, as a caching allocator would; --malloc default measures glibc as it is.

On a shared machine, wall-clock times swing with the load; `--clock cpu` (the default) times with
the process's CPU time instead, and `--threads 1` runs BLAS on one thread so that CPU time is
step time (the 1-thread control).

`check` measures, per config and strategy (sqrt-n, budget at 0.9x/0.7x/0.5x), the overhead over
store-all side by side in one process (interleaved rounds, median of per-round ratios), --repeats
times, and prints the median measured overhead beside the predicted one (of the step time:
cost and cache term), their relative error and
their difference in percentage points (a small overhead's relative error is mostly the noise).
"""

import argparse
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
import time

if "--threads" in sys.argv:  # BLAS reads its thread count when numpy loads
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = sys.argv[sys.argv.index("--threads") + 1]

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from ckpt.backend import get_backend  # noqa: E402
from ckpt.errors import BudgetError  # noqa: E402
from ckpt.plan import plan  # noqa: E402
from ckpt.execute import Executor  # noqa: E402
from ckpt.model.cost_weights import WEIGHTS  # noqa: E402
from ckpt.schedule import COMPUTE  # noqa: E402
from ckpt.simulate import cache_bytes  # noqa: E402
from ckpt.session import device_leaves, load_model, time_side_by_side  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")
CASES = [  # (config, overrides): the example configs and some other sizes of them
    ("mlp_deep", {}), ("mlp_deep", {"B": 64, "D": 256}), ("mlp_deep", {"B": 512, "D": 128, "L": 16}),
    ("gpt_small", {}), ("gpt_small", {"B": 8, "T": 64}),
    ("resnet_small", {}), ("unet_small", {}), ("seed_example", {}),
]
OUT = os.path.join(ROOT, "ckpt", "model", "cost_weights.py")
CAPACITIES = [1 << k for k in range(17, 26)]  # cache sizes the fit of the cache term tries: 128 KiB-32 MiB
FLOOR = 0.05  # the cache term's fit weighs relative errors, of overheads of at least 5% (below, points)
FRACTIONS = (0.9, 0.7, 0.5)  # the budgets (of store-all's peak) that fit and check plan at


def config(name):
    return os.path.join(ROOT, "configs", name + ".yaml")


def step_times(model, steps, backend, n_steps):
    """Seconds of each compute step of a schedule ((node, occurrence) -> median over n_steps
    steps after a warm-up), the clock read after every node as measure_costs does. Reading the
    clock and keeping the sample take time of their own (about a microsecond with the CPU clock,
    5% of a gpt_small step) that a plain step does not spend: the same callback is timed on its
    own, and its cost taken off each sample. (Timing plain steps beside the instrumented ones and
    sharing out the difference gave the same figure on small models, but on mlp_deep the
    difference of two 60 ms steps swings by tens of microseconds per node.)"""
    ex = Executor(model.graph, model.joint, steps, backend)
    leaves = device_leaves(model, backend)
    ex.step(leaves)
    samples = {}

    def recorder():
        seen, last = {}, [backend.clock()]

        def took(x, _value):
            now = backend.clock()
            k = seen[x] = seen.get(x, -1) + 1
            samples.setdefault((x, k), []).append(now - last[0])
            last[0] = now
        return took

    took, n = recorder(), 20000
    t0 = backend.clock()
    for i in range(n):
        took(i, None)
    per_call = (backend.clock() - t0) / n
    samples.clear()
    for _ in range(n_steps):
        ex.step(leaves, on_value=recorder())
    return {k: max(statistics.median(v) - per_call, 0.0) for k, v in samples.items()}


def collect_case(case, steps, backend):
    """Rows (features, seconds, config) of one case: per-node times in store-all steps and in
    steps of plans that recompute (sqrt-n, budgets at FRACTIONS): a node's time depends on what the
    allocator and the caches hold around it, and the fit should see both the generous and the
    lean context."""
    name, overrides = CASES[case]
    model = load_model(config(name), overrides)
    sa, sa_sim = plan(model.joint, "store-all", ix=model.index)
    schedules = [sa, plan(model.joint, "sqrt-n", ix=model.index)[0]]
    for f in FRACTIONS:
        try:
            schedules.append(plan(model.joint, "budget", int(f * sa_sim.peak_ws), ix=model.index)[0])
        except BudgetError:
            pass
    rows, total = [], 0
    label = name + "".join(f" {k}={v}" for k, v in overrides.items())
    for p in schedules:
        times = step_times(model, p.steps, backend, steps)
        for (x, _), t in times.items():
            rows.append((model.joint.nodes[x]["features"], t, label))
        total += len(times)
    plans = plan_rows(model, schedules, backend, label)
    print(f"  timed {name} {overrides or ''}: {total} node computes in {len(schedules)} schedules",
          file=sys.stderr)
    return {"nodes": rows, "plans": plans}


def plan_rows(model, schedules, backend, label):
    """One record per schedule that recomputes, for the cache term: the summed features of its
    computes and of store-all's (so that their costs follow any weights), the bytes each reads
    from memory at every capacity in CAPACITIES, and its measured overhead over store-all in
    plain steps side by side (medians of per-round ratios, as `check` measures it)."""
    def summary(p):
        feats = {}
        for kind, x in p.steps:
            if kind == COMPUTE:
                for k, v in model.joint.nodes[x]["features"].items():
                    feats[k] = [a + b for a, b in zip(feats.get(k, (0, 0, 0)), v)]
        return feats, [cache_bytes(model.joint, p.steps, c) for c in CAPACITIES]

    sa, out = schedules[0], []
    base = summary(sa)
    for p in schedules[1:]:
        runs = []
        for _ in range(3):  # as `check` measures: the median of three medians of 41 rounds
            mine, ref = time_side_by_side(model, [p.steps, sa.steps], backend, n_steps=41)
            runs.append(statistics.median(a / b for a, b in zip(mine, ref)) - 1.0)
        feats, missed = summary(p)
        out.append({"case": label, "features": [base[0], feats], "missed": [base[1], missed],
                    "measured": statistics.median(runs)})
    return out


def child_env(args):
    """The timed processes' environment: glibc keeps its heap unless --malloc default."""
    env = dict(os.environ)
    if args.malloc == "kept":
        env.update(MALLOC_MMAP_THRESHOLD_=str(32 << 20), MALLOC_TRIM_THRESHOLD_=str(1 << 40))
    return env


def collect(args):
    """The node rows and plan records of every case (or of --cases), each case timed in a fresh
    process (see the module's note)."""
    import json
    rows, plans = [], []
    for case in [n for n, (name, _) in enumerate(CASES) if not args.cases or name in args.cases]:
        cmd = [sys.executable, os.path.abspath(__file__), "collect", str(case), "--steps", str(args.steps),
               "--clock", args.clock] + (["--threads", args.threads] if args.threads else [])
        out = json.loads(subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True, env=child_env(args)).stdout)
        rows += [({k: tuple(v) for k, v in feats.items()}, t, c) for feats, t, c in out["nodes"]]
        plans += out["plans"]
    return rows, plans


# A kind gets weights of its own only where the samples cover it: enough nodes, and some that move
# real amounts of memory; others (and ops added later) take the weights fitted to all ops at once.
MIN_SAMPLES, MIN_BYTES = 6, 256 * 1024


def _nnls(X, y, w):
    from scipy.optimize import nnls
    scale = np.maximum(np.abs(X).max(axis=0), 1e-30)
    sol, _ = nnls(X * w[:, None] / scale, y * w, maxiter=50 * X.shape[1])
    return sol / scale


def _generic(key):
    return key if ":" not in key else "*:" + key.rpartition(":")[2]


def fit(rows, power=0.0, only=None):
    """NNLS over columns (kind, per FLOP | per byte | per call); rows weighted by time**-power
    (0: absolute errors, so the totals that overheads are made of come out right) and by one over
    their case's total time: an overhead is relative to its own model's step, so each case's
    error counts relative to that step (unweighted, mlp_deep's millisecond GEMMs outweighed every
    node of gpt_small, whose store-all step came out 14% over its measured time). First one
    kind per direction over every sample (the fallback), then a kind of its own for each op the
    samples cover, the others held at the fallback. `only`: refit just these kinds, every other
    held at the stored table's weights (an op whose rules changed, without moving the rest)."""
    y = np.array([t * 1e9 for _, t, _ in rows])
    w = np.maximum(y, 1.0) ** -power
    case_total = {}
    for (_, _, c), t in zip(rows, y):
        case_total[c] = case_total.get(c, 0.0) + t
    w /= np.array([case_total[c] for _, _, c in rows])

    def design(kinds, mapping):
        col = {k: 3 * n for n, k in enumerate(kinds)}
        X = np.zeros((len(rows), 3 * len(kinds)))
        rest = np.zeros(len(rows))
        for r, (feats, _, _) in enumerate(rows):
            for k, v in feats.items():
                m = mapping(k)
                if m in col:
                    X[r, col[m]:col[m] + 3] += v
                else:
                    rest[r] += _predict({k: v}, weights, fallback=True)
        return X, col, rest

    if only:
        weights = dict(WEIGHTS)
        X, col, rest = design(sorted(only), lambda k: k)
        sol = _nnls(X, np.maximum(y - rest, 0.0), w)
        weights.update({k: tuple(float(sol[col[k] + m]) for m in range(3)) for k in col})
        pred = np.array([_predict(f, weights, fallback=True) for f, _, _ in rows])
        return weights, pred, y
    weights = {}
    generic = sorted({_generic(k) for f, _, _ in rows for k in f})
    X, col, _ = design(generic, _generic)
    sol = _nnls(X, y, w)
    weights.update({k: tuple(float(sol[col[k] + m]) for m in range(3)) for k in generic})
    seen = {}
    for feats, _, _ in rows:
        for k, (_, b, c) in feats.items():
            n, big = seen.get(k, (0, 0))
            seen[k] = (n + c, max(big, b / max(c, 1)))
    own = sorted(k for k, (n, big) in seen.items() if ":" in k and n >= MIN_SAMPLES and big >= MIN_BYTES)
    X, col, rest = design(own + ["gradient"], lambda k: k)
    sol = _nnls(X, np.maximum(y - rest, 0.0), w)
    weights.update({k: tuple(float(sol[col[k] + m]) for m in range(3)) for k in col})
    pred = np.array([_predict(f, weights, fallback=True) for f, _, _ in rows])
    return weights, pred, y


def _predict(feats, weights, fallback=False):
    total = 0.0
    for k, (f, b, c) in feats.items():
        a = weights.get(k) or (weights.get(_generic(k)) if fallback else None) or (0.0, 0.0, 0.0)
        total += a[0] * f + a[1] * b + a[2] * c
    return total


def write(weights, only=None, cache=None):
    """The table as ckpt/model/cost_weights.py; with `only`, the stored header is kept and a line
    names the kinds refitted today (only=["cache"]: the cache term alone, the table kept)."""
    if only:
        with open(OUT) as f:
            head = f.read().split('"""')[1].rstrip("\n").split("\n")
        what = "the cache term" if only == ["cache"] else ", ".join(sorted(only)) + " and the cache term"
        head.append(f"Refitted {datetime.date.today().isoformat()} (fit --only): {what}.")
        _write_table(['"""' + head[0]] + head[1:] + ['"""', "", "WEIGHTS = {"], weights, cache)
        return
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    lines = ['"""Cost weights: nanoseconds per FLOP, per byte moved and per call, by op and direction;',
             "and the cache term of the predicted step time (ckpt/simulate.py:cache_bytes).",
             "",
             "Written by scripts/calibrate_costs.py fit --write: fitted on " + cpu + ",",
             f"numpy {np.__version__}, {datetime.date.today().isoformat()}. Fixed data: a plan never depends on the clock.",
             '"""', "", "WEIGHTS = {"]
    _write_table(lines, weights, cache)


def _write_table(lines, weights, cache):
    for k in sorted(weights, key=lambda k: (k.startswith("*"), k)):
        a, b, c = weights[k]
        lines.append(f"    {k!r}: ({a:.6g}, {b:.6g}, {c:.6g}),")
    lines += ["}", "", "# (cache capacity in bytes, ns per byte read from memory rather than from the cache)",
              f"CACHE = ({cache[0]}, {cache[1]:.6g})"]
    with open(OUT, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {os.path.relpath(OUT)}", file=sys.stderr)


def backend_for(args):
    backend = get_backend("cpu")
    if args.clock == "cpu":
        backend.clock = time.process_time  # CPU time of this process: what the load does not inflate
    return backend


def fit_cache(plans, weights):
    """(capacity, ns per byte) of the simulator's cache term (simulate.cache_bytes): the pair, of
    CAPACITIES and a grid of weights, whose predicted overheads (store-all's and each plan's costs
    under `weights`, plus the weight times the bytes each reads from memory) come closest to the
    overheads measured in plain steps: least squares of relative errors, an overhead under FLOOR
    counted as FLOOR (so mlp_deep's overheads of 100-240% weigh no more than gpt_small's 1-10%,
    and no 1% overhead's noise weighs more)."""
    grid = np.linspace(0.0, 2.0, 401)
    costs = [[_predict(f, weights, fallback=True) for f in r["features"]] for r in plans]
    best = (math.inf, CAPACITIES[0], 0.0)
    for k, cap in enumerate(CAPACITIES):
        err = np.zeros_like(grid)
        for r, (cs, cp) in zip(plans, costs):
            ms, mp = r["missed"][0][k], r["missed"][1][k]
            err += (((cp + grid * mp) / (cs + grid * ms) - 1.0 - r["measured"]) / max(abs(r["measured"]), FLOOR)) ** 2
        n = int(np.argmin(err))
        best = min(best, (float(err[n]), cap, float(grid[n])))
    return best[1], best[2]


def cmd_fit(args):
    import json
    if args.samples:
        with open(args.samples) as f:
            saved = json.load(f)
        rows = [({k: tuple(v) for k, v in feats.items()}, t, c) for feats, t, c in saved["nodes"]]
        plans = saved["plans"]
    else:
        rows, plans = collect(args)
    if args.save_samples:
        with open(args.save_samples, "w") as f:
            json.dump({"nodes": rows, "plans": plans}, f)
    if args.only == ["cache"]:
        weights, pred, y = dict(WEIGHTS), np.array([_predict(f, WEIGHTS, True) for f, _, _ in rows]), \
            np.array([t * 1e9 for _, t, _ in rows])
    else:
        weights, pred, y = fit(rows, args.power, args.only)
    print(f"{'case':28} {'nodes':>6} {'measured ms':>12} {'predicted ms':>13}  ratio")
    for name in dict.fromkeys(c for _, _, c in rows):
        idx = [n for n, r in enumerate(rows) if r[2] == name]
        m, p = y[idx].sum() / 1e6, pred[idx].sum() / 1e6
        print(f"{name:28} {len(idx):6d} {m:12.2f} {p:13.2f}  {p / m:.3f}")
    for k, (a, b, c) in sorted(weights.items()):
        print(f"  {k:32} {a:10.4g} ns/flop {b:10.4g} ns/byte {c:10.4g} ns/call")
    cache = fit_cache(plans, weights)
    k = CAPACITIES.index(cache[0])
    print(f"cache term: {cache[0] >> 10} KiB, {cache[1]:.3g} ns per byte read from memory")
    print(f"{'case':28} {'measured':>9} {'nodes only':>11} {'with cache':>11}")
    for r in plans:
        cs, cp = (_predict(f, weights, fallback=True) for f in r["features"])
        ms, mp = r["missed"][0][k], r["missed"][1][k]
        print(f"{r['case']:28} {r['measured']:+9.1%} {cp / cs - 1:+11.1%} "
              f"{(cp + cache[1] * mp) / (cs + cache[1] * ms) - 1:+11.1%}")
    if args.write:
        write(weights, args.only, cache)


def cmd_collect(args):
    import json
    json.dump(collect_case(args.case, args.steps, backend_for(args)), sys.stdout)


def cmd_check(args):
    if not args.child:  # each config in a fresh process (see the module's note)
        print(f"{'config':14} {'strategy':14} {'predicted':>10} {'measured':>10} {'rel. error':>10} {'points':>9}   runs",
              flush=True)
        for name in args.config:
            subprocess.run([sys.executable, os.path.abspath(__file__), "check", "--child", "--config", name,
                            "--rounds", str(args.rounds), "--repeats", str(args.repeats), "--clock", args.clock]
                           + (["--set", *args.set] if args.set else [])
                           + (["--threads", args.threads] if args.threads else []), check=True, env=child_env(args))
        return
    backend = backend_for(args)
    for name in args.config:
        model = load_model(config(name), {k: int(v) for k, v in (s.split("=", 1) for s in args.set)})
        sa, sa_sim = plan(model.joint, "store-all", ix=model.index)
        leaves = device_leaves(model, backend)
        cases = [("sqrt-n", None)] + [("budget", f) for f in FRACTIONS]
        for strategy, f in cases:
            try:
                p, sim = plan(model.joint, strategy, None if f is None else int(f * sa_sim.peak_ws), ix=model.index)
            except BudgetError:
                continue
            predicted = sim.time / sa_sim.time - 1.0
            runs = []
            for _ in range(args.repeats):
                mine, base = time_side_by_side(model, [p.steps, sa.steps], backend, n_steps=args.rounds, leaves=leaves)
                runs.append(statistics.median(a / b for a, b in zip(mine, base)) - 1.0)
            measured = statistics.median(runs)
            err = (predicted - measured) / measured if measured else float("nan")
            label = strategy + (f"@{f}x" if f else "")
            print(f"{name:14} {label:14} {predicted:+10.1%} {measured:+10.1%} {err:+10.1%} "
                  f"{100 * (predicted - measured):+9.1f}   "
                  + " ".join(f"{r:+.1%}" for r in runs), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit")
    f.add_argument("--steps", type=int, default=5)
    f.add_argument("--write", action="store_true")
    f.add_argument("--power", type=float, default=0.0, help="rows weighted by time**-power")
    f.add_argument("--save-samples", help="also write the timed samples (JSON) for refitting")
    f.add_argument("--samples", help="fit these samples instead of timing again")
    f.add_argument("--only", nargs="+", metavar="KIND",
                   help="refit only these kinds (e.g. layernorm:vjp), the rest held at the stored table; "
                        "`cache`: only the cache term (the cache term is refitted with any kinds)")
    f.add_argument("--cases", nargs="+", metavar="CONFIG", help="time only these configs' cases")
    c = sub.add_parser("check")
    c.add_argument("--rounds", type=int, default=7)
    c.add_argument("--repeats", type=int, default=3)
    c.add_argument("--config", nargs="+", default=["mlp_deep", "gpt_small", "resnet_small"])
    c.add_argument("--set", nargs="+", default=[], metavar="DIM=N",
                   help="check the configs at other sizes (sizes the fit did not time)")
    c.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    k = sub.add_parser("collect", help="(internal) time one case; its rows as JSON on stdout")
    k.add_argument("case", type=int)
    k.add_argument("--steps", type=int, default=5)
    for p in (f, c, k):
        p.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
        p.add_argument("--malloc", choices=["kept", "default"], default="kept",
                       help="kept: the timed processes keep their heap (glibc thresholds fixed); default: glibc's own")
        p.add_argument("--threads", help="BLAS threads (set before numpy loads)")
    args = ap.parse_args()
    {"fit": cmd_fit, "check": cmd_check, "collect": cmd_collect}[args.cmd](args)


if __name__ == "__main__":
    main()
