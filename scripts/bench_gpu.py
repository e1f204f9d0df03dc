#!/usr/bin/env python3
"""GPU benchmark: each example config under store-all, sqrt-n and budget at half of store-all's
managed peak on --device cuda (step time, predicted = measured model peak, allocator peak), then
the store-all step of a larger gpt_small against the same network in PyTorch eager on the GPU.

    python scripts/bench_gpu.py [--steps 10] [--no-torch]
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from ckpt.backend import get_backend  # noqa: E402
from ckpt.execute import Executor  # noqa: E402
from ckpt.model import leaf_values  # noqa: E402
from ckpt.plan import plan  # noqa: E402
from ckpt.report import fmt_bytes, table  # noqa: E402
from ckpt.session import device_leaves, load_model, run_plan  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")
CONFIGS = ["seed_example", "mlp_deep", "resnet_small", "gpt_small", "unet_small"]
LARGE_GPT = {"B": 8, "T": 1024, "D": 1024, "H": 16, "HD": 64, "V": 8192, "L": 8}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    cuda = get_backend("cuda")
    rows = []
    for name in CONFIGS:
        model = load_model(os.path.join(ROOT, "configs", name + ".yaml"))
        leaves = device_leaves(model, cuda)
        sa, sa_sim = plan(model.joint, "store-all", ix=model.index)
        for strategy, budget in (("store-all", None), ("sqrt-n", None),
                                 ("budget", sa_sim.resident + sa_sim.peak_managed // 2)):
            try:
                p, sim = plan(model.joint, strategy, budget, time_limit=10, ix=model.index)
            except Exception as e:  # an infeasible budget is a row, not the end of the check
                rows.append((name, strategy, "-", "-", "-", "-", str(e)[:40]))
                continue
            r = run_plan(model, p.steps, cuda, n_steps=args.steps, leaves=leaves, warmup=2)
            ok = "yes" if r.measured_managed == sim.peak_managed else "NO"
            rows.append((name, strategy, f"{r.time_s * 1e3:.2f} ms", fmt_bytes(sim.peak),
                         fmt_bytes(r.resident + r.measured_managed), fmt_bytes(r.allocator_peak), ok))
    print(table(rows, ["config", "strategy", "step", "peak predicted", "peak measured", "allocator", "exact"]))
    if args.no_torch:
        return
    try:
        import torch
        from ckpt.torchref import forward
    except ImportError:
        print("torch is not installed: no PyTorch comparison")
        return
    model = load_model(os.path.join(ROOT, "configs", "gpt_small.yaml"), LARGE_GPT)
    leaves = device_leaves(model, cuda)
    sa, sa_sim = plan(model.joint, "store-all", ix=model.index)
    ex = Executor(model.graph, model.joint, sa.steps, cuda)
    host = leaf_values(model.graph)
    tvals = {k: torch.tensor(v, device="cuda", requires_grad=bool(model.graph.nodes[k]["grad"]))
             for k, v in host.items()}

    def torch_step():
        vals = dict(tvals)
        for t in tvals.values():
            t.grad = None
        forward(model.graph, vals).backward()

    def ckpt_step():
        ex.step(leaves)

    times = {"ckpt": [], "torch": []}
    for _ in range(2):
        ckpt_step()
        torch_step()
    for _ in range(args.steps):  # interleaved
        for key, fn in (("ckpt", ckpt_step), ("torch", torch_step)):
            torch.cuda.synchronize()
            cuda.sync()
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            cuda.sync()
            times[key].append(time.perf_counter() - t0)
    a, b = statistics.median(times["ckpt"]), statistics.median(times["torch"])
    dims = ", ".join(f"{k}={v}" for k, v in LARGE_GPT.items())
    print(f"gpt_small ({dims}) store-all step, float32: ckpt {a * 1e3:.2f} ms, PyTorch eager {b * 1e3:.2f} ms, "
          f"ratio {a / b:.3f}; predicted peak {fmt_bytes(sa_sim.peak)}")


if __name__ == "__main__":
    main()
