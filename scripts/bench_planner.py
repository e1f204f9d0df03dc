#!/usr/bin/env python3
"""Planner speed: the budget strategy on chains of growing length (exact chain DP, or the heuristic
beyond the DP's table limit) and on transformer DAGs of growing size (MILP within its reach, else
the heuristic). Prints graph sizes, solver and median wall time of several runs.

    python scripts/bench_planner.py [--runs 3] [--time-limit 30]
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from ckpt.plan import plan  # noqa: E402
from ckpt.session import load_model  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")


def bench(model, frac, runs, time_limit):
    _, sa = plan(model.joint, "store-all", ix=model.index)
    budget = int(sa.resident + frac * sa.peak_managed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        p, sim = plan(model.joint, "budget", budget, time_limit=time_limit, ix=model.index)
        times.append(time.perf_counter() - t0)
    over = (sim.cost - sa.cost) / sa.cost
    return statistics.median(times), p.solver, over


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--time-limit", type=float, default=30.0)
    args = ap.parse_args()
    print(f"{'graph':<34} {'fwd':>5} {'joint':>6} {'budget':>8} {'solver':<20} {'overhead':>9} {'time':>9}")
    for layers in (16, 32, 64, 128, 500):
        m = load_model(os.path.join(ROOT, "configs", "mlp_deep.yaml"), {"L": layers, "B": 8, "D": 8})
        for frac in (0.5,):
            t, solver, over = bench(m, frac, args.runs, args.time_limit)
            print(f"{'mlp chain, ' + str(2 * layers) + ' ops':<34} {len(m.index.fwd):>5} {len(m.index.order):>6} "
                  f"{frac:>7.0%} {solver:<20} {over:>+8.1%} {t:>8.3f}s")
    for blocks in (1, 2, 4, 8):
        m = load_model(os.path.join(ROOT, "configs", "gpt_small.yaml"), {"L": blocks})
        t, solver, over = bench(m, 0.6, 1 if blocks > 1 else args.runs, args.time_limit)
        print(f"{'gpt_small, ' + str(blocks) + ' blocks (DAG)':<34} {len(m.index.fwd):>5} {len(m.index.order):>6} "
              f"{0.6:>7.0%} {solver:<20} {over:>+8.1%} {t:>8.3f}s")


if __name__ == "__main__":
    main()
