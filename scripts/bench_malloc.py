#!/usr/bin/env python3
"""The kept C heap (ckpt/cli/common.py: keep_heap) against glibc's default malloc: each measurement
is a fresh process (the setting is process-wide, so the two cannot share one) that calls keep_heap
as the command line does, with CKPT_MALLOC=kept or default, then runs and times steps as `ckpt run` does
(session.run_plan, and for a plan other than store-all session.time_side_by_side after it). The
two settings run back to back in each round, their order alternated from round to round. Per
config and strategy it prints the median over rounds of the per-round ratio of median step times
(default / kept: above 1, the kept heap is faster), the range of those ratios, sqrt-n's overhead
over store-all under each setting (the ratio `ckpt bench`'s gate compares), and whether the memory
figures `run` reports (resident, managed peak, allocator peak) were the same to the byte under both.
Run once with the default threads and once with OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and
MKL_NUM_THREADS=1 (the control: a ratio that moves there was the thread pool's).

    python scripts/bench_malloc.py [--rounds 5] [--steps 10] [--configs gpt_small resnet_small mlp_deep]
        [--strategies store-all sqrt-n] [--threads default 1] [--clock cpu|wall]

--clock wall (the default) is what `ckpt run` reports. --clock cpu times with the process's CPU
time, as `ckpt bench` does: waiting for a core is then not the step's, while the page faults and
system calls of glibc's trimming are (system time); but with several BLAS threads it counts their
spinning too, so it is for the 1-thread control. Each row also gives the minor page faults per step
(getrusage, over every step the process ran), the mechanism itself, which the machine's load does not move.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
MODES = ("kept", "default")
MEMORY_KEYS = ("resident", "managed_peak", "allocator_peak")


def child(config, strategy, steps, clock):
    """One process's figures, as JSON on stdout."""
    sys.path.insert(0, ROOT)
    from ckpt.cli.common import keep_heap
    kept = keep_heap()  # first, as the commands do
    from ckpt.backend import get_backend
    from ckpt.plan import plan
    from ckpt.session import load_model, run_plan, time_side_by_side

    model = load_model(os.path.join(ROOT, "configs", config + ".yaml"))
    backend = get_backend("cpu")
    p, _ = plan(model.joint, strategy, ix=model.index)
    sa, _ = plan(model.joint, "store-all", ix=model.index)
    if clock == "cpu":
        backend.clock = time.process_time
    # in `run`'s order: the C heap's state, and with it what glibc trims, depends on what ran before
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    if strategy == "store-all":  # a warm-up, the timed steps, then the metered step
        r = run_plan(model, p.steps, backend, n_steps=steps)
        times, n_run = [r.times], steps + 2
    else:  # a warm-up and the metered step, then side by side with store-all (a warm-up each first)
        r = run_plan(model, p.steps, backend, n_steps=0)
        times = time_side_by_side(model, [p.steps, sa.steps], backend, n_steps=steps)
        n_run = 2 + 2 * (steps + 1)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    doc = {"malloc": "kept" if kept else "default", "time_s": statistics.median(times[0]),
           "faults_per_step": faults / n_run,
           "resident": r.resident, "managed_peak": r.measured_managed, "allocator_peak": r.allocator_peak}
    if strategy != "store-all":
        doc["overhead"] = statistics.median(a / b for a, b in zip(*times)) - 1.0
    print(json.dumps(doc))


def run_once(args, config, strategy, mode, threads):
    env = dict(os.environ, CKPT_MALLOC=mode)
    for v in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
              "GLIBC_TUNABLES"):
        env.pop(v, None)  # glibc's own settings would turn the kept heap off (keep_heap leaves them be)
    if threads != "default":
        env.update({v: threads for v in THREAD_VARS})
    cmd = [sys.executable, os.path.abspath(__file__), "--child", config, strategy, str(args.steps), args.clock]
    doc = json.loads(subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout)
    if doc["malloc"] != mode:  # e.g. no glibc here: the comparison would be of nothing
        sys.exit(f"bench_malloc: asked for CKPT_MALLOC={mode}, the process reports {doc['malloc']!r}")
    return doc


def measure(args, threads):
    docs = {}  # (config, strategy, mode) -> [run documents, one per round]
    for r in range(args.rounds):
        for config in args.configs:
            for strategy in args.strategies:
                for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                    docs.setdefault((config, strategy, mode), []).append(
                        run_once(args, config, strategy, mode, threads))
        print(f"  threads {threads}: round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
    rows = []
    for config in args.configs:
        for strategy in args.strategies:
            kept, default = docs[(config, strategy, "kept")], docs[(config, strategy, "default")]
            ratios = [d["time_s"] / k["time_s"] for k, d in zip(kept, default)]
            same = all(d[key] == kept[0][key] for d in kept + default for key in MEMORY_KEYS)
            row = {"config": config, "strategy": strategy, "threads": threads,
                   "time_kept_s": statistics.median(k["time_s"] for k in kept),
                   "time_default_s": statistics.median(d["time_s"] for d in default),
                   "default_over_kept": statistics.median(ratios),
                   "faults_kept": statistics.median(k["faults_per_step"] for k in kept),
                   "faults_default": statistics.median(d["faults_per_step"] for d in default),
                   "ratio_min": min(ratios), "ratio_max": max(ratios),
                   "memory_figures_identical": same, "allocator_peak": kept[0]["allocator_peak"]}
            if strategy != "store-all":
                for mode, ds in (("kept", kept), ("default", default)):
                    row[f"overhead_{mode}"] = statistics.median(d["overhead"] for d in ds)
            rows.append(row)
    return rows


def print_table(rows, args):
    print(f"{'config':<14}{'strategy':<11}{'threads':<9}{'kept':>9}{'default':>9}{'default/kept':>14}"
          f"{'range':>14}{'overhead kept':>15}{'default':>9}{'faults/step kept':>18}{'default':>9}  memory figures")
    for r in rows:
        over = (f"{r['overhead_kept']:>+15.1%}{r['overhead_default']:>+9.1%}" if "overhead_kept" in r
                else f"{'-':>15}{'-':>9}")
        print(f"{r['config']:<14}{r['strategy']:<11}{r['threads']:<9}{r['time_kept_s'] * 1e3:>7.2f}ms"
              f"{r['time_default_s'] * 1e3:>7.2f}ms{r['default_over_kept']:>14.3f}"
              f"{r['ratio_min']:>7.2f}-{r['ratio_max']:<6.2f}{over}"
              f"{r['faults_kept']:>18.0f}{r['faults_default']:>9.0f}  "
              f"{'identical' if r['memory_figures_identical'] else 'DIFFER'}")
    print(f"(medians of {args.rounds} interleaved rounds, each a fresh process per setting, {args.steps} steps, "
          f"{args.clock} time; overhead: sqrt-n's over store-all, side by side in its process)")


def main():
    if sys.argv[1:2] == ["--child"]:
        config, strategy, steps, clock = sys.argv[2:6]
        return child(config, strategy, int(steps), clock)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--configs", nargs="+", default=["gpt_small", "resnet_small", "mlp_deep"])
    ap.add_argument("--strategies", nargs="+", default=["store-all", "sqrt-n"])
    ap.add_argument("--threads", nargs="+", default=["default", "1"], help="default, or a thread count")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument("--json", dest="json_file", help="Also write the rows here.")
    args = ap.parse_args()
    rows = []
    for threads in args.threads:  # each pass's table as soon as it is measured
        new = measure(args, threads)
        rows += new
        print_table(new, args)
    if args.json_file:
        with open(args.json_file, "w") as f:
            json.dump(rows, f, indent=1)
    if not all(r["memory_figures_identical"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
