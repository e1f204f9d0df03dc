"""ckpt's PyTorch plan against what PyTorch users do today, at the same measured activation memory.

For each model (the tests' three, at benchmark sizes, float32):
  1. checkpoint every block (every region wrapped, nothing saved: `torch.utils.checkpoint` per
     block), and measure the bytes held for backward at the end of the forward (H);
  2. ckpt's plan (`plan --emit torch`) at the budget resident + H, measured the same way;
  3. torch.compile with the min-cut partitioner's `activation_memory_budget` (what the backend
     `aot_eager_decomp_partition` does: inductor's decompositions and partitioner, graphs run by
     the fx interpreter instead of generated C++), at the
     largest budget whose measured saved bytes are <= H (bisection).
Recompute is counted by torch.utils.flop_counter over the whole step (forward + backward) minus
the unplanned step's FLOPs (torch.compile's against its own budget-1.0 step, counted inside its
compiled graphs, as its decompositions count a little differently). The flop counter counts
matrix products, convolutions and attention: recomputed elementwise ops are free in this figure,
which favours torch.compile (its partitioner recomputes elementwise ops first) and plans that
recompute norms and activations. Step times: medians of interleaved steps, with all threads and with
one thread (the control). Held bytes: unique storages alive after the forward (eager; see
ckpt.backends.torch_apply.Census) or packed through saved_tensors_hooks (compiled: a compiled
graph saves through ctx.save_for_backward, which the hooks see).

    python scripts/bench_torch.py [--models mlp gpt cnn] [--steps 7] [--no-compile]
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


def step_flops(model, args):
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
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
    from torch.utils.flop_counter import FlopCounterMode

    def run(args):
        with FlopCounterMode(display=False) as fc:
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


def bench(name, steps, with_compile, tmp):
    from ckpt.backends.torch_apply import apply, measure_step
    from ckpt.backends.torch_check import example_args
    from ckpt.backends.torch_plan import emit_torch_plan
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
    every = copy.deepcopy(plan_any)
    for r in every["regions"]:
        if r["name"] in blocks:
            r.update(option="full", checkpoint=True, save=[])
    args = example_args(plan_any, (), 0)
    base_m, every_m = factory(), apply(factory(), every)
    base, ev = measure_step(base_m, args), measure_step(every_m, args)
    target = ev["held_end_forward"]
    # 2. ckpt's plan at the same activation memory
    plan = emit_torch_plan(model, plan_any["predicted"]["resident_bytes"] + target, os.path.join(tmp, "ckpt.json"),
                           compare=False)
    ckpt_m = apply(factory(), plan)
    ck = measure_step(ckpt_m, args)
    f_base, f_every, f_ckpt = (step_flops(m, args) for m in (base_m, every_m, ckpt_m))
    row = {"model": name, "unplanned_held": base["held_end_forward"], "every_block_held": target,
           "ckpt_held": ck["held_end_forward"], "ckpt_predicted_held": plan["predicted"]["held_end_forward_bytes"],
           "every_block_recompute_flops": f_every - f_base, "ckpt_recompute_flops": f_ckpt - f_base,
           "ckpt_regions": {r["name"] if len(r["members"]) == 1 else f"{r['members'][0]}..{r['members'][-1]}":
                            r["option"] for r in plan["regions"] if r["checkpoint"]}}
    models = [base_m, every_m, ckpt_m]
    labels = ["unplanned", "every block", "ckpt"]
    if with_compile:
        try:
            full = compiled(factory(), 1.0)
            f_c1 = compiled_step_flops(full, args)
            lo, hi, best = 0.0, 1.0, None
            for _ in range(5):
                mid = (lo + hi) / 2
                cm = compiled(factory(), mid)
                h = held_compiled(cm, args)
                if h <= target:
                    best, lo = (mid, h, cm), mid
                else:
                    hi = mid
            if best is None:
                cm = compiled(factory(), 0.0)
                best = (0.0, held_compiled(cm, args), cm)
            row.update(compile_budget=best[0], compile_held=best[1],
                       compile_recompute_flops=compiled_step_flops(best[2], args) - f_c1)
            models.append(best[2])
            labels.append(f"compile@{best[0]:.3f}")
            # ckpt at torch.compile's measured memory, for the like-for-like comparison
            from ckpt.errors import BudgetError
            try:
                plan_c = emit_torch_plan(model, plan_any["predicted"]["resident_bytes"] + best[1],
                                         os.path.join(tmp, "ckpt_c.json"), compare=False)
                ckpt_c = apply(factory(), plan_c)
                row.update(ckpt_at_compile_held=measure_step(ckpt_c, args)["held_end_forward"],
                           ckpt_at_compile_recompute_flops=step_flops(ckpt_c, args) - f_base)
            except BudgetError as e:
                row["ckpt_at_compile_error"] = str(e)
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
    a = ap.parse_args()
    from ckpt.sizes import fmt_bytes
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models:
            r = bench(name, a.steps, not a.no_compile, tmp)
            print(f"\n{name}: unplanned holds {fmt_bytes(r['unplanned_held'])} for backward")
            print(f"  every block checkpointed  held {fmt_bytes(r['every_block_held']):>11}  recompute "
                  f"{r['every_block_recompute_flops'] / 1e6:10.2f} MFLOP")
            print(f"  ckpt plan                 held {fmt_bytes(r['ckpt_held']):>11}  recompute "
                  f"{r['ckpt_recompute_flops'] / 1e6:10.2f} MFLOP  (predicted held "
                  f"{fmt_bytes(r['ckpt_predicted_held'])}; {r['ckpt_regions']})")
            if "compile_held" in r:
                print(f"  torch.compile budget {r['compile_budget']:.3f} held {fmt_bytes(r['compile_held']):>11}  "
                      f"recompute {r['compile_recompute_flops'] / 1e6:10.2f} MFLOP")
                if "ckpt_at_compile_held" in r:
                    print(f"  ckpt plan at that memory  held {fmt_bytes(r['ckpt_at_compile_held']):>11}  recompute "
                          f"{r['ckpt_at_compile_recompute_flops'] / 1e6:10.2f} MFLOP")
                else:
                    print(f"  ckpt plan at that memory: {r['ckpt_at_compile_error']}")
            elif "compile_error" in r:
                print(f"  torch.compile did not run: {r['compile_error']}")
            print("  step time (median, all threads): " +
                  ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in r["times_s"].items()))
            print("  step time (median, 1 thread):    " +
                  ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in r["times_1thread_s"].items()))


if __name__ == "__main__":
    main()
