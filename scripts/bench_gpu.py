#!/usr/bin/env python3
"""GPU benchmark (issue 4): each example config under store-all, sqrt-n and budget at half of
store-all's managed peak (step time, predicted and measured model peak, allocator peak), then the
store-all step of a large gpt_small against the same network in PyTorch eager on the same GPU,
interleaved in one process, and where each one's time goes.

    python scripts/bench_gpu.py [--steps 10] [--no-torch] [--device cpu] [--gpt-set B=8 ...]

`--device cpu` and small `--gpt-set` sizes are for trying the script on a machine without a GPU.
"""

import argparse
import os
import statistics
import sys
import time
import traceback
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from ckpt.backend import get_backend  # noqa: E402
from ckpt.errors import BudgetError  # noqa: E402
from ckpt.execute import Executor  # noqa: E402
from ckpt.model import leaf_values  # noqa: E402
from ckpt.ops import use_kernels  # noqa: E402
from ckpt.plan import plan  # noqa: E402
from ckpt.report import fmt_bytes, fmt_time, table  # noqa: E402
from ckpt.session import device_leaves, load_model, measure_costs, run_plan  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")
CONFIGS = ["seed_example", "mlp_deep", "resnet_small", "gpt_small", "unet_small"]
# GPT-2-medium-like width and context; the batch is chosen to fill the device (see large_gpt)
LARGE_GPT = {"T": 1024, "D": 1024, "H": 16, "HD": 64, "V": 8192, "L": 8}


def config(name):
    return os.path.join(ROOT, "configs", name + ".yaml")


def strategy_table(backend, steps):
    rows = []
    for name in CONFIGS:
        try:
            model = load_model(config(name))
            leaves = device_leaves(model, backend)
            _, sa_sim = plan(model.joint, "store-all", ix=model.index)
        except Exception as e:  # one broken config is a row, not the end of the check
            traceback.print_exc()
            rows.append((name, "-", "-", "-", "-", "-", "-", f"ERROR {type(e).__name__}: {str(e)[:60]}"))
            continue
        for strategy, budget in (("store-all", None), ("sqrt-n", None),
                                 ("budget", sa_sim.resident + sa_sim.peak_managed // 2)):
            note = ""
            try:
                try:
                    p, sim = plan(model.joint, strategy, budget, time_limit=10, ix=model.index)
                except BudgetError as e:  # half is below every schedule: plan at the smallest peak
                    p, sim = plan(model.joint, strategy, e.min_peak, time_limit=10, ix=model.index)
                    note = f"half ({fmt_bytes(budget)}) is infeasible: budget = smallest peak"
                r = run_plan(model, p.steps, backend, n_steps=steps, leaves=leaves, warmup=2)
            except Exception as e:
                traceback.print_exc()
                rows.append((name, strategy, "-", "-", "-", "-", "-", f"ERROR {type(e).__name__}: {str(e)[:60]}"))
                continue
            ok = "yes" if r.measured_managed == sim.peak_managed and r.timeline == sim.timeline else "NO"
            rows.append((name, strategy, fmt_time(r.time_s), fmt_bytes(sim.peak),
                         fmt_bytes(r.resident + r.measured_managed), fmt_bytes(r.allocator_peak), ok, note))
    print(table(rows, ["config", "strategy", "step (median)", "peak predicted", "peak measured",
                       "allocator peak", "exact", ""], align=["<", "<", ">", ">", ">", ">", ">", "<"]))


def large_gpt(backend, fixed):
    """gpt_small at LARGE_GPT, with the largest batch (8, 16, 32, ...) whose predicted store-all peak
    is at most a quarter of the device's memory: ckpt and PyTorch hold a model each, side by side,
    and PyTorch's eager step holds about 1.5 times ckpt's bytes (measured on an H200)."""
    if "B" in fixed:
        return load_model(config("gpt_small"), fixed)
    have, b, model = backend.memory_bytes(), 8, None
    while True:
        m = load_model(config("gpt_small"), {**fixed, "B": b})
        if model is not None and plan(m.joint, "store-all", ix=m.index)[1].peak > 0.25 * have:
            return model
        model, b = m, b * 2


def where_time_goes(costs, model, top=12):
    """Measured seconds summed by op, forward and gradient nodes apart."""
    by = defaultdict(float)
    for x, s in costs.items():
        d = model.joint.nodes[x]
        op = model.graph.nodes[d["ref"]].get("op") or "leaf"
        if d["kind"] == "forward":
            by[f"{op} forward"] += s
        else:  # a gradient node pulls through its consumers' VJPs
            cons = sorted({model.graph.nodes[w]["op"] for w in model.graph.successors(d["ref"])
                           if model.graph.nodes[w]["kind"] == "op"})
            by[f"grad via {'+'.join(cons) or '(seed)'}"] += s
    total = sum(by.values())
    rows = [(k, fmt_time(v), f"{100 * v / total:.1f}%") for k, v in sorted(by.items(), key=lambda kv: -kv[1])[:top]]
    print(table(rows, ["ckpt nodes (store-all, synchronised per node)", "time", "share"]))
    print(f"sum of node times {fmt_time(total)}")


def release(backend):
    """Hand cached blocks back to the device, so that the next framework can allocate them."""
    import gc
    gc.collect()
    if backend.name == "cuda":
        backend.xp.get_default_memory_pool().free_all_blocks()
        try:
            import torch
            torch.cuda.empty_cache()
        except ImportError:
            pass


def torch_comparison(backend, steps, fixed):
    try:
        import torch
        from ckpt.torchref import forward
    except ImportError:
        print("torch is not installed: no PyTorch comparison")
        return
    model = large_gpt(backend, fixed)
    while True:
        try:
            return compare(torch, forward, backend, steps, model)
        except Exception as e:  # both frameworks hold a model: halve the batch if they do not fit
            b = model.spec.dims["B"]
            if "OutOfMemory" not in type(e).__name__ or b < 2:
                raise
            print(f"out of device memory at B={b}: {e}; trying B={b // 2}")
            model = None
            release(backend)
            model = load_model(config("gpt_small"), {**fixed, "B": b // 2})


def compare(torch, forward, backend, steps, model):
    F = torch.nn.functional
    dev = "cuda" if backend.name == "cuda" else "cpu"
    dims = ", ".join(f"{k}={v}" for k, v in model.spec.dims.items())
    leaves = device_leaves(model, backend)
    sa, sa_sim = plan(model.joint, "store-all", ix=model.index)
    ex = Executor(model.graph, model.joint, sa.steps, backend)
    host = leaf_values(model.graph)
    tvals = {k: torch.tensor(v, device=dev, requires_grad=bool(model.graph.nodes[k]["grad"]))
             for k, v in host.items()}
    del host
    # PyTorch as its users write it: its own fused dropout (other masks, the same work)
    native = {"dropout": lambda x, a: F.dropout(x[0], a["p"], training=True)}

    def torch_step():
        for t in tvals.values():
            t.grad = None
        forward(model.graph, dict(tvals), ops=native).backward()

    def ckpt_step():
        ex.step(leaves)

    def ckpt_array_rules():  # the same step with the fused kernels switched off
        use_kernels(False)
        try:
            ex.step(leaves)
        finally:
            use_kernels(True)

    def sync():
        backend.sync()
        if dev == "cuda":
            torch.cuda.synchronize()

    runs = {"ckpt": ckpt_step, "ckpt, array rules only": ckpt_array_rules, "torch": torch_step}
    times = {k: [] for k in runs}
    for _ in range(2):
        for fn in runs.values():
            fn()
    for _ in range(steps):  # interleaved, so that clocks and drift hit all alike
        for key, fn in runs.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[key].append(time.perf_counter() - t0)

    def ratio(a, b):
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"gpt_small ({dims}), store-all step, {model.graph.graph['dtype']}, {steps} interleaved steps "
          f"on {backend.name}; predicted peak {fmt_bytes(sa_sim.peak)} of {fmt_bytes(backend.memory_bytes())}; "
          f"torch matmul precision {torch.get_float32_matmul_precision()}")
    print(f"  ckpt {fmt_time(med['ckpt'])}, ckpt without fused kernels {fmt_time(med['ckpt, array rules only'])}, "
          f"PyTorch {torch.__version__} eager {fmt_time(med['torch'])}")
    print(f"  median per-step ratios: ckpt / PyTorch {ratio('ckpt', 'torch'):.3f}, "
          f"ckpt without fused kernels / PyTorch {ratio('ckpt, array rules only', 'torch'):.3f}")
    if dev == "cuda":
        print(f"allocators after the runs: cupy pool {fmt_bytes(backend.xp.get_default_memory_pool().total_bytes())}, "
              f"torch max allocated {fmt_bytes(torch.cuda.max_memory_allocated())}")
    ex = tvals = leaves = None  # free both models before profiling
    release(backend)
    where_time_goes(measure_costs(model, backend), model)
    release(backend)
    try:  # PyTorch's side of the same question
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
        tvals = {k: torch.tensor(v, device=dev, requires_grad=bool(model.graph.nodes[k]["grad"]))
                 for k, v in leaf_values(model.graph).items()}
        torch_step()
        with profile(activities=acts) as prof:
            torch_step()
            sync()
        key = "cuda_time_total" if dev == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=14, max_name_column_width=40))
    except Exception as e:
        print(f"torch profile skipped: {type(e).__name__}: {e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--gpt-set", action="append", default=[], metavar="KEY=VALUE",
                    help="Override a dim of the large gpt_small (B fixes the batch).")
    args = ap.parse_args()
    backend = get_backend(args.device)
    fixed = dict(LARGE_GPT, **{k: int(v) for k, v in (s.split("=", 1) for s in args.gpt_set)})
    t0 = time.perf_counter()
    strategy_table(backend, args.steps)
    print(f"(table in {time.perf_counter() - t0:.1f} s)")
    if not args.no_torch:
        try:
            torch_comparison(backend, args.steps, fixed)
        except Exception:  # the table above stands on its own
            traceback.print_exc()
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
