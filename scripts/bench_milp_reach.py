#!/usr/bin/env python3
"""The exact DAG solver's reach: the Checkmate MILP under HiGHS on joint graphs of growing size,
at 70% of store-all's managed peak, with a time limit (default 60 s). Prints size, status, time.

    python scripts/bench_milp_reach.py [--time-limit 60]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from ckpt.plan import plan  # noqa: E402
from ckpt.plan.milp import solve_milp  # noqa: E402
from ckpt.session import load_model  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-limit", type=float, default=60.0)
    args = ap.parse_args()
    cases = [("mlp_deep", {"L": n, "B": 4, "D": 4}) for n in (4, 8, 12, 16, 24)]
    cases += [("unet_small", {"N": 1, "C": 2, "H": 8}), ("gpt_small", {"L": 1, "B": 1, "T": 4, "D": 8,
                                                                       "H": 2, "HD": 4, "V": 8})]
    print(f"{'graph':<28} {'joint nodes':>11} {'status':<14} {'time':>8} {'gap':>8}")
    for name, dims in cases:
        m = load_model(os.path.join(ROOT, "configs", name + ".yaml"), dims)
        _, sa = plan(m.joint, "store-all", ix=m.index)
        t0 = time.perf_counter()
        p, status = solve_milp(m.index, int(sa.peak_managed * 0.7), time_limit=args.time_limit)
        t = time.perf_counter() - t0
        gap = "-"
        if p is not None and p.lower_bound:
            from ckpt.simulate import simulate
            cost = simulate(m.joint, p.steps).cost
            gap = f"{(cost - p.lower_bound) / cost:.1%}"
        label = f"{name} {','.join(f'{k}={v}' for k, v in dims.items() if k in ('L', 'H'))}"
        print(f"{label:<28} {len(m.index.order):>11} {status:<14} {t:>7.1f}s {gap:>8}", flush=True)


if __name__ == "__main__":
    main()
