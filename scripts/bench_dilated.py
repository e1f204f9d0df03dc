#!/usr/bin/env python3
"""Dilated (atrous) conv2d on the CPU: ckpt's rules (forward, dX, dW) on the padded grid against
strided windows, the two paths ckpt/ops/nn.py chooses between by GRID_WASTE (the grid's positions
per output pixel), and, where torch is installed, against torch's conv2d forward and backward.
Interleaved in one process, the median of per-run ratios, two repeats; once with one thread
(set in a subprocess before numpy is imported: the control machine load disturbs least) and once
with the default threads.

    python scripts/bench_dilated.py [--runs 9]
"""

import argparse
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# (x, w, padding, dilation), stride 1: DeepLab's ASPP rates on a 33 x 33 map (output stride 16),
# small maps of dilation 2 to 4, a WaveNet layer (a 1 x 2 kernel of dilation 16 over 256 steps)
CASES = [((4, 32, 33, 33), (32, 32, 3, 3), 6, 6), ((4, 32, 33, 33), (32, 32, 3, 3), 12, 12),
         ((4, 32, 33, 33), (32, 32, 3, 3), 18, 18), ((8, 16, 16, 16), (16, 16, 3, 3), 2, 2),
         ((8, 16, 32, 32), (16, 16, 3, 3), 2, 2), ((4, 64, 17, 17), (64, 64, 3, 3), 4, 4),
         ((4, 32, 24, 24), (32, 32, 3, 3), 3, 3), ((8, 32, 1, 256), (32, 32, 1, 2), 0, 16)]


def measure(args):
    import statistics
    import time

    import numpy as np

    sys.path.insert(0, ROOT)
    import ckpt.ops.nn as nn
    from ckpt.ops import REGISTRY, Ctx
    try:
        import torch
        torch.set_num_threads(args.threads or torch.get_num_threads())
    except ImportError:
        torch = None
    op, chosen = REGISTRY["conv2d"], nn.GRID_WASTE
    rng = np.random.default_rng(0)
    for xs, ws, p, d in CASES:
        x, w = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)
        a = {"stride": 1, "padding": p, "dilation": d}
        y = op.forward(np, [x, w], a)
        g = rng.standard_normal(y.shape).astype(np.float32)
        ctx = Ctx([x, w], y, [xs, ws], y.shape, a)

        def ours(waste):
            nn.GRID_WASTE = waste
            op.forward(np, [x, w], a), op.vjp(np, 0, g, ctx), op.vjp(np, 1, g, ctx)

        def theirs():
            tx, tw = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(w).requires_grad_(True)
            torch.nn.functional.conv2d(tx, tw, None, 1, p, d).backward(torch.from_numpy(g))

        runs = {"grid": lambda: ours(float("inf")), "windows": lambda: ours(0.0)}
        if torch is not None:
            runs["torch"] = theirs
        waste = (xs[2] + 2 * p) * (xs[3] + 2 * p) / (y.shape[2] * y.shape[3])
        path = "grid" if nn._padded_grid(xs, ws, a) else "windows"
        for repeat in range(2):
            times = {k: [] for k in runs}
            for _ in range(args.runs):  # interleaved: load on the machine hits each alike
                for k, f in runs.items():
                    t0 = time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            ratio = statistics.median(a_ / b for a_, b in zip(times["grid"], times["windows"]))
            line = (f"  {str(xs):17s} d={d:2d} p={p:2d} waste {waste:4.2f} (takes {path:7s}) repeat {repeat}: "
                    f"grid {med['grid']:7.2f} ms  windows {med['windows']:7.2f} ms  grid/windows {ratio:4.2f}")
            if torch is not None:
                line += (f"  torch {med['torch']:7.2f} ms  ckpt's path/torch "
                         f"{statistics.median(t / u for t, u in zip(times[path], times['torch'])):4.2f}")
            print(line)
        nn.GRID_WASTE = chosen


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        return measure(args)
    for threads in (1, 0):
        print("one thread:" if threads == 1 else "default threads:", flush=True)
        env = dict(os.environ)
        if threads == 1:
            env.update({v: "1" for v in THREAD_VARS})
        subprocess.run([sys.executable, __file__, "--runs", str(args.runs), "--threads", str(threads or os.cpu_count())],
                       env=env, check=True)


if __name__ == "__main__":
    main()
