#!/usr/bin/env python3
"""The kept C heap (ckpt/cli/common.py: keep_heap) against glibc's default malloc, as users meet it:
each measurement is a fresh `ckpt run CONFIG --strategy S --steps N --json` process (the setting is
process-wide, so the two cannot share one), CKPT_MALLOC=kept or default, the two back to back in
each round and their order alternated from round to round. Per config and strategy it prints the
median over rounds of the per-round ratio of step times (default / kept: above 1, the kept heap is
faster), the range of those ratios, sqrt-n's measured overhead over store-all under each setting
(the ratio `ckpt bench`'s gate compares), and whether every memory figure `run` reports was the same
to the byte under both. Run once with the default threads and once with OPENBLAS_NUM_THREADS,
OMP_NUM_THREADS and MKL_NUM_THREADS=1 (the control: a ratio that moves there was the thread pool's).

    python scripts/bench_malloc.py [--rounds 5] [--steps 15] [--configs gpt_small resnet_small mlp_deep]
        [--strategies store-all sqrt-n] [--threads default 1]

Step times are wall clock (what `ckpt run` reports: the median of its steps); on a shared machine
the per-round ratio is the figure to read, not either time.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
MODES = ("kept", "default")
# every memory figure of `run --json`: the kept heap must leave each unchanged to the byte
MEMORY_KEYS = ("peak_bytes", "resident_bytes", "managed_peak_bytes")


def run_once(config, strategy, steps, mode, threads):
    env = dict(os.environ, CKPT_MALLOC=mode)
    for v in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_"):
        env.pop(v, None)  # glibc's own settings would turn the kept heap off (keep_heap leaves them be)
    if threads != "default":
        env.update({v: threads for v in THREAD_VARS})
    cmd = [sys.executable, "-m", "ckpt", "run", os.path.join(ROOT, "configs", config + ".yaml"),
           "--strategy", strategy, "--steps", str(steps), "--json"]
    doc = json.loads(subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout)
    if doc["malloc"] != mode:  # e.g. no glibc here: the comparison would be of nothing
        sys.exit(f"bench_malloc: asked for CKPT_MALLOC={mode}, the run reports {doc['malloc']!r}")
    return doc


def measure(args, threads):
    docs = {}  # (config, strategy, mode) -> [run documents, one per round]
    for r in range(args.rounds):
        for config in args.configs:
            for strategy in args.strategies:
                for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                    docs.setdefault((config, strategy, mode), []).append(
                        run_once(config, strategy, args.steps, mode, threads))
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
                   "default_over_kept": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                   "memory_figures_identical": same, "allocator_peak": kept[0]["peak_bytes"]["allocator"]}
            if strategy != "store-all":
                for mode, ds in (("kept", kept), ("default", default)):
                    row[f"overhead_{mode}"] = statistics.median(d["overhead"]["measured"] for d in ds)
            rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--configs", nargs="+", default=["gpt_small", "resnet_small", "mlp_deep"])
    ap.add_argument("--strategies", nargs="+", default=["store-all", "sqrt-n"])
    ap.add_argument("--threads", nargs="+", default=["default", "1"], help="default, or a thread count")
    ap.add_argument("--json", dest="json_file", help="Also write the rows here.")
    args = ap.parse_args()
    rows = [row for threads in args.threads for row in measure(args, threads)]
    print(f"{'config':<14}{'strategy':<11}{'threads':<9}{'kept':>9}{'default':>9}{'default/kept':>14}"
          f"{'range':>14}{'overhead kept':>15}{'default':>9}  memory figures")
    for r in rows:
        over = (f"{r['overhead_kept']:>+15.1%}{r['overhead_default']:>+9.1%}" if "overhead_kept" in r
                else f"{'-':>15}{'-':>9}")
        print(f"{r['config']:<14}{r['strategy']:<11}{r['threads']:<9}{r['time_kept_s'] * 1e3:>7.2f}ms"
              f"{r['time_default_s'] * 1e3:>7.2f}ms{r['default_over_kept']:>14.3f}"
              f"{r['ratio_min']:>7.2f}-{r['ratio_max']:<6.2f}{over}  "
              f"{'identical' if r['memory_figures_identical'] else 'DIFFER'}")
    print(f"(medians of {args.rounds} interleaved rounds, each a fresh process per setting, {args.steps} steps; "
          "overhead: sqrt-n's measured overhead over store-all, side by side in its process)")
    if args.json_file:
        with open(args.json_file, "w") as f:
            json.dump(rows, f, indent=1)
    if not all(r["memory_figures_identical"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
