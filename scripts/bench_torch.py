"""ckpt's PyTorch plan against what PyTorch users do today, at the same measured activation memory.

For each model (the tests' three, at benchmark sizes, float32):
  1. checkpoint every block (every block wrapped, nothing saved: `torch.utils.checkpoint` per
     block); measure H, the bytes held for backward at the end of the forward;
  2. ckpt's region plan (`plan --emit torch`) at the budget resident + H, measured the same way;
  3. torch.compile with the min-cut partitioner's `activation_memory_budget` at a grid of budgets
     (the `aot_eager_decomp_partition` path: inductor's decompositions and its partitioner, whose
     choice of saved tensors is inductor's, the graphs run by the fx interpreter so that their
     FLOPs can be counted), and at each point ckpt's plan planned for torch.compile's measured
     held bytes -- the like-for-like comparison: ckpt must hold no more and should recompute less.
Held bytes are one quantity for all: the unique storages held for backward at the end of the
forward, excluding parameters and inputs (eager: live storages the forward made, see
ckpt.backends.torch_apply.Census; compiled: storages packed through saved_tensors_hooks, which see
a compiled graph's ctx.save_for_backward). On the unplanned eager model both counts are taken and
printed side by side, which shows they measure the same thing.
Recompute is counted by torch.utils.flop_counter over the whole step (forward + backward) minus
the unplanned step's FLOPs (torch.compile's against its own budget-1.0 step, counted inside its
compiled graphs, as its decompositions count a little differently). The flop counter counts
matrix products, convolutions and attention: recomputed elementwise ops are free in this figure,
which favours torch.compile (its partitioner recomputes elementwise ops first); CPU attention,
which torch's counter leaves out, is counted as the CUDA kernels are. ckpt's own
prediction of those FLOPs is printed beside the measurement. Step times: medians of interleaved
steps, with all threads and with one thread (the control).

    python scripts/bench_torch.py [--models mlp gpt cnn] [--steps 7] [--no-compile]
        [--budgets 1.0 0.8 ...]
"""

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import torch  # noqa: E402

import torch_models  # noqa: E402


# ---- the models at benchmark sizes (factories for `ckpt import`) --------------------------------
def mlp():
    torch.manual_seed(0)
    return torch_models.MLP(d=256, depth=16)


def gpt():
    torch.manual_seed(0)
    return torch_models.GPT(vocab=256, seq=128, c=128, heads=4, layers=4, p=0.0)


def cnn():
    torch.manual_seed(0)
    return torch_models.CNN(ch=32, blocks=4, classes=10)


INPUTS = {"mlp": ["x=256x256", "y=256x256"], "gpt": ["idx=8x128:int64", "targets=8x128:int64"],
          "cnn": ["x=16x3x32x32", "y=16:int64"]}


def counter():
    """torch's flop counter, CPU attention counted as the CUDA kernels are (the profile ckpt
    plans from counts it the same way: ckpt.backends.torch_apply.extra_flop_formulas)."""
    from ckpt.backends.torch_apply import extra_flop_formulas
    from torch.utils.flop_counter import FlopCounterMode
    return FlopCounterMode(display=False, custom_mapping=extra_flop_formulas())


def step_flops(model, args):
    with counter() as fc:
        model(*args).backward()
    model.zero_grad(set_to_none=True)
    return fc.get_total_flops()


def held_compiled(model, args):
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    params |= {a.untyped_storage().data_ptr() for a in args}
    seen = {}

    def pack(x):
        seen[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return x
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss = model(*args)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(n for p, n in seen.items() if p not in params)


COMPILED_FLOPS = [0]


def _counting_nop(gm, example_inputs):
    """aot_eager's nop compiler, counting the FLOPs of each run of the compiled forward and
    backward graphs (a FlopCounterMode around the whole step does not see inside them)."""
    def run(args):
        with counter() as fc:
            out = torch.fx.Interpreter(gm).boxed_run(args)
        COMPILED_FLOPS[0] += fc.get_total_flops()
        return out
    run._boxed_call = True
    return run


def _decomp_partition(gm, example_inputs):
    """What the `aot_eager_decomp_partition` backend does (inductor's decompositions and its
    min-cut partitioner, which reads activation_memory_budget), with counting compilers."""
    import functools
    from importlib import import_module

    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.partitioners import min_cut_rematerialization_partition
    return aot_autograd(fw_compiler=_counting_nop, bw_compiler=_counting_nop,
                        decompositions=lambda: import_module("torch._inductor.compile_fx").select_decomp_table(),
                        partition_fn=functools.partial(min_cut_rematerialization_partition, compiler="inductor"),
                        )(gm, example_inputs)


def compiled(model, budget):
    import torch._functorch.config as fconfig
    torch._dynamo.reset()
    fconfig.activation_memory_budget = budget
    return torch.compile(model, backend=_decomp_partition)


def compiled_step_flops(model, args):
    model(*args).backward()  # compile first
    model.zero_grad(set_to_none=True)
    COMPILED_FLOPS[0] = 0
    model(*args).backward()
    model.zero_grad(set_to_none=True)
    return COMPILED_FLOPS[0]


def times(models, args, steps):
    """Interleaved steps, median seconds per model."""
    ts = [[] for _ in models]
    for m in models:  # warm-up (and compilation)
        m(*args).backward()
        m.zero_grad(set_to_none=True)
    for _ in range(steps):
        for m, t in zip(models, ts):
            t0 = time.perf_counter()
            m(*args).backward()
            t.append(time.perf_counter() - t0)
            m.zero_grad(set_to_none=True)
    return [statistics.median(t) for t in ts]


def describe(plan):
    """Wrapped units and what their policies keep, for the table."""
    return {r["name"]: (f"keeps {len(r['save'])}" if r["save"] else "full") for r in plan["regions"] if r["checkpoint"]}


def ckpt_at(model, factory, budget, args, out):
    """ckpt's plan at `budget` (resident + held bytes), applied and measured: (plan, module,
    measurement, step FLOPs)."""
    from ckpt.backends.torch_apply import apply, measure_step
    from ckpt.backends.torch_plan import emit_torch_plan
    plan = emit_torch_plan(model, budget, out, compare=False)
    m = apply(factory(), plan)
    return plan, m, measure_step(m, args), step_flops(m, args)


def bench(name, steps, with_compile, tmp, budgets):
    from ckpt.backends.torch_apply import apply, measure_step
    from ckpt.backends.torch_check import example_args
    from ckpt.backends.torch_plan import emit_torch_plan
    from ckpt.errors import BudgetError
    from ckpt.frontends.torch_import import import_model
    from ckpt.session import load_model
    config = os.path.join(tmp, f"{name}.yaml")
    import_model(f"{os.path.abspath(__file__)}:{name}", INPUTS[name], config)
    model = load_model(config)
    factory = globals()[name]
    # 1. every block checkpointed: the least-recompute "full" segmentation is one region each
    import json
    meta = json.load(open(config[:-5] + ".torch.json"))
    blocks = [r for r in meta["regions"] if r.rpartition(".")[2].isdigit()]
    plan_any = emit_torch_plan(model, None, os.path.join(tmp, "none.json"), compare=False)
    every = dict(copy.deepcopy(plan_any), regions=[{"name": b, "members": [b], "option": "full", "checkpoint": True,
                                                    "save": []} for b in blocks])
    args = example_args(plan_any, (), 0)
    base_m, every_m = factory(), apply(factory(), every)
    base, ev = measure_step(base_m, args), measure_step(every_m, args)
    target = ev["held_end_forward"]
    # 2. ckpt's plan at the same activation memory
    resident = plan_any["predicted"]["resident_bytes"]
    plan, ckpt_m, ck, f_ckpt = ckpt_at(model, factory, resident + target, args, os.path.join(tmp, "ckpt.json"))
    f_base, f_every = (step_flops(m, args) for m in (base_m, every_m))
    row = {"model": name, "unplanned_held": base["held_end_forward"],
           "unplanned_held_hooks": held_compiled(base_m, args),
           "every_block_held": target, "ckpt_held": ck["held_end_forward"],
           "ckpt_predicted_held": plan["predicted"]["held_end_forward_bytes"],
           "every_block_recompute_flops": f_every - f_base, "ckpt_recompute_flops": f_ckpt - f_base,
           "ckpt_predicted_recompute_flops": plan["predicted"]["recompute_flops"],
           "ckpt_regions": describe(plan)}
    models = [base_m, every_m, ckpt_m]
    labels = ["unplanned", "every block", "ckpt"]
    if with_compile:
        row["compile"] = []
        try:
            f_c1 = compiled_step_flops(compiled(factory(), 1.0), args)
            seen = set()
            for budget in budgets:
                cm = compiled(factory(), budget)
                h = held_compiled(cm, args)
                if h in seen:
                    continue
                seen.add(h)
                point = {"budget": budget, "held": h, "recompute_flops": compiled_step_flops(cm, args) - f_c1}
                # ckpt at torch.compile's measured memory, the like-for-like comparison
                try:
                    p, m, r, f = ckpt_at(model, factory, resident + h, args, os.path.join(tmp, "ckpt_c.json"))
                    point.update(ckpt_held=r["held_end_forward"],
                                 ckpt_predicted_held=p["predicted"]["held_end_forward_bytes"],
                                 ckpt_recompute_flops=f - f_base,
                                 ckpt_predicted_recompute_flops=p["predicted"]["recompute_flops"],
                                 ckpt_regions=describe(p))
                except BudgetError as e:
                    point["ckpt_error"] = str(e)
                row["compile"].append(point)
        except Exception as e:  # noqa: BLE001 -- report what did not run, and why
            row["compile_error"] = f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    row["times_s"] = dict(zip(labels, times(models, args, steps)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        row["times_1thread_s"] = dict(zip(labels, times(models, args, steps)))
    finally:
        torch.set_num_threads(threads)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["mlp", "gpt", "cnn"], choices=["mlp", "gpt", "cnn"])
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--budgets", nargs="+", type=float, default=[1.0, 0.9, 0.8, 0.6, 0.4, 0.3, 0.2, 0.1, 0.0],
                    help="torch.compile activation_memory_budget values to compare at")
    a = ap.parse_args()
    from ckpt.sizes import fmt_bytes
    mf = lambda f: f"{f / 1e6:9.2f}"  # noqa: E731
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; recompute in MFLOP (flop counter), "
          "held = bytes held for backward at the end of the forward")
    if not a.no_compile:
        print("torch.compile: dynamo + AOTAutograd with inductor's decompositions and min-cut partitioner "
              "(activation_memory_budget); the partitioned graphs run in the fx interpreter, not as inductor's "
              "generated C++, so that their FLOPs can be counted (the saved tensors are the partitioner's either way)")
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models:
            r = bench(name, a.steps, not a.no_compile, tmp, a.budgets)
            print(f"\n{name}: unplanned holds {fmt_bytes(r['unplanned_held'])} for backward (census); "
                  f"{fmt_bytes(r['unplanned_held_hooks'])} packed through saved_tensors_hooks")
            print(f"  every block checkpointed  held {fmt_bytes(r['every_block_held']):>11}  recompute "
                  f"{mf(r['every_block_recompute_flops'])}")
            print(f"  ckpt plan                 held {fmt_bytes(r['ckpt_held']):>11}  recompute "
                  f"{mf(r['ckpt_recompute_flops'])}  (predicted: held {fmt_bytes(r['ckpt_predicted_held'])}, "
                  f"recompute {mf(r['ckpt_predicted_recompute_flops']).strip()}; {r['ckpt_regions']})")
            if r.get("compile"):
                print("  torch.compile (aot_eager_decomp_partition) at each budget, and ckpt at its measured "
                      "held bytes:")
                print(f"  {'budget':>8} {'compile held':>13} {'recompute':>10}   {'ckpt held':>11} {'recompute':>10} "
                      f"{'predicted':>10}  ckpt - compile")
                wins = 0
                for c in r["compile"]:
                    if "ckpt_error" in c:
                        print(f"  {c['budget']:8.3f} {fmt_bytes(c['held']):>13} {mf(c['recompute_flops']):>10}   "
                              f"ckpt: {c['ckpt_error']}")
                        continue
                    d = c["ckpt_recompute_flops"] - c["recompute_flops"]
                    wins += d <= 0 and c["ckpt_held"] <= c["held"]
                    print(f"  {c['budget']:8.3f} {fmt_bytes(c['held']):>13} {mf(c['recompute_flops']):>10}   "
                          f"{fmt_bytes(c['ckpt_held']):>11} {mf(c['ckpt_recompute_flops']):>10} "
                          f"{mf(c['ckpt_predicted_recompute_flops']):>10}  {d / 1e6:+9.2f}  {c['ckpt_regions']}")
                print(f"  ckpt holds no more and recomputes no more at {wins} of {len(r['compile'])} points")
            elif "compile_error" in r:
                print(f"  torch.compile did not run: {r['compile_error']}")
            print("  step time (median, all threads): " +
                  ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in r["times_s"].items()))
            print("  step time (median, 1 thread):    " +
                  ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in r["times_1thread_s"].items()))


if __name__ == "__main__":
    main()
