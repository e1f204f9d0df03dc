#!/usr/bin/env python3
"""Planning time and plan cost on long chain cost graphs (scripts/planner_graphs.chain_cost_graph),
for two checkouts side by side: each run is `python -m ckpt plan GRAPH ...` in a child process
whose cwd is the checkout, so both are timed under the same machine state, interleaved.

    python scripts/bench_chain.py [--before DIR] [--sizes 1000,3000] [--repeats 3] [--cap 300]

Prints, per graph and mode (0.5x, --sweep): the median wall time of each checkout and the
overhead it planned (the sweep's: the largest and the smallest budget's). A run over --cap
seconds is stopped and counted as such; slow cases are run once (--repeats applies below 60 s).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from planner_graphs import chain_cost_graph  # noqa: E402


def run(checkout, args, cap):
    t = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-m", "ckpt", "plan"] + args + ["--json"], cwd=checkout,
                             capture_output=True, text=True, timeout=cap)
    except subprocess.TimeoutExpired:
        return cap, None
    wall = time.perf_counter() - t
    if out.returncode != 0:
        return wall, "exit %d: %s" % (out.returncode, out.stderr.strip()[:80])
    doc = json.loads(out.stdout)
    if "sweep" in doc:
        rows = [r for r in doc["sweep"] if r.get("overhead") is not None]
        return wall, "min budget %.0f B %+.1f%% (bound %+.1f%%) .. %+.1f%%" % (
            rows[0]["budget_bytes"], 100 * rows[0]["overhead"], 100 * (rows[0]["lower_bound_overhead"] or 0),
            100 * rows[-2]["overhead"] if len(rows) > 1 else 0)
    row = [r for r in doc["strategies"] if r["name"] == "budget"][0]
    return wall, "%+.2f%% (bound %s) %s" % (100 * row["overhead"], "-" if row.get("lower_bound_overhead") is None
                                            else "%+.2f%%" % (100 * row["lower_bound_overhead"]), row["solver"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", help="a checkout to compare with (e.g. from git archive)")
    ap.add_argument("--sizes", default="1000,3000,10000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cap", type=float, default=300)
    ap.add_argument("--modes", default="0.5x,sweep")
    args = ap.parse_args()
    checkouts = [("after", ROOT)] + ([("before", os.path.abspath(args.before))] if args.before else [])
    tmp = tempfile.mkdtemp()
    for n in map(int, args.sizes.split(",")):
        for uniform in (False, True):
            path = os.path.join(tmp, f"chain{n}{'u' if uniform else ''}.json")
            with open(path, "w") as f:
                json.dump(chain_cost_graph(n, seed=0, uniform=uniform), f)
            for mode in args.modes.split(","):
                flags = [path] + (["--sweep"] if mode == "sweep" else ["--memory-budget", mode])
                times = {name: [] for name, _ in checkouts}
                result = {}
                for rep in range(args.repeats):
                    for name, where in checkouts:
                        if rep and (max(times[name]) > 60 or result[name] is None):
                            continue  # slow: once is enough
                        wall, res = run(where, flags, args.cap)
                        times[name].append(wall)
                        result[name] = res
                for name, _ in checkouts:
                    ts = times[name]
                    print(f"{n:6d} {'uniform' if uniform else 'unlike ':7s} {mode:6s} {name:6s} "
                          f"median {statistics.median(ts):7.2f} s over {len(ts)} run(s)  "
                          f"{'stopped at the cap' if result[name] is None else result[name]}", flush=True)


if __name__ == "__main__":
    main()
