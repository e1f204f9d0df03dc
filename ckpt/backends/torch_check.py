"""The proof in PyTorch: the training step with and without a ckpt plan, measured side by side
with the plan's prediction (bytes held for backward by unique storage; step times; gradients)."""

import statistics
import time

from ..errors import CheckFailed, CkptError, ConfigError
from ..sizes import fmt_bytes


def example_args(plan, inputs, seed):
    """Tensors for the plan's inputs (shapes from --input, which must match the plan's)."""
    import torch
    from ..frontends.torch_import import parse_inputs
    want = plan["inputs"]
    given = parse_inputs(inputs) if inputs else {}
    for k, (shape, dt) in given.items():
        if k not in want:
            raise ConfigError(f"--input {k}: the plan's model takes ({', '.join(want)})")
        if list(shape) != want[k]["shape"]:
            raise ConfigError(f"--input {k}: shape {'x'.join(map(str, shape))} differs from the plan's "
                              f"{'x'.join(map(str, want[k]['shape']))}: plan again for these shapes")
    g = torch.Generator().manual_seed(seed)
    args = []
    for k, v in want.items():
        dt = getattr(torch, v["dtype"], None)
        if not isinstance(dt, torch.dtype):
            raise ConfigError(f"the plan's input {k} has dtype {v['dtype']!r}, not a torch dtype")
        if dt.is_floating_point:
            args.append(torch.randn(v["shape"], generator=g, dtype=dt))
        else:
            args.append(torch.randint(0, v.get("high", 2), v["shape"], generator=g, dtype=dt))
    return args


def check(target, plan_file, inputs=(), steps=3, seed=0, device="cpu"):
    from ..frontends.torch_import import load_factory, torch_or_error
    torch = torch_or_error()  # without the extra: one line saying how to install it, not an ImportError
    from .torch_apply import apply, check_plan, load_plan, loss_of, measure_step
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available to PyTorch here")
    plan = load_plan(plan_file)
    p = plan.get("predicted")
    if not isinstance(p, dict) or not all(isinstance(p.get(k), int) for k in
                                          ("unplanned_held_bytes", "held_end_forward_bytes", "resident_bytes")) \
            or "inputs" not in plan:
        raise ConfigError("a malformed ckpt PyTorch plan: no inputs, or no predicted held and resident bytes",
                          file=plan_file)
    model = load_factory(target)
    check_plan(model, plan_file)
    args = [a.to(device) for a in example_args(plan, inputs, seed)]
    model.to(device)
    cuda = device == "cuda"
    peaks = []
    regions = [r["name"] for r in plan["regions"] if r["checkpoint"]]

    def run(n):
        """One step under the census, then `n` plain timed steps (the census's Python dispatch
        mode would dominate a small model's time)."""
        torch.manual_seed(seed)  # the same dropout masks in both runs
        out = [measure_step(model, args)]
        times = []
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(n):
            t0 = time.perf_counter()
            loss_of(model(*args)).backward()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
        if cuda:
            peaks.append(torch.cuda.max_memory_allocated())
        for o in out:
            o["time_s"] = statistics.median(times)
        return out
    # the model's forward failing on the plan's inputs (not this model's plan) is bad input
    base = _step(run, steps, lambda e: ConfigError(
        f"{target}: the model's forward fails on the plan's inputs ({', '.join(plan['inputs']) or 'none'}): "
        f"the training step raised {e}"))
    apply(model, plan)
    planned = _step(run, steps, lambda e: CheckFailed(f"the training step with the plan raised {e}"))
    p = plan["predicted"]
    b, q = base[-1], planned[-1]
    worst = 0.0
    equal = set(b["grads"]) == set(q["grads"])
    for k, g in b["grads"].items():
        if k in q["grads"]:
            d = (q["grads"][k] - g).abs().max().item()
            worst = max(worst, d)
            equal = equal and d == 0.0
    r = {"model": plan.get("model"), "plan": plan_file, "checkpointed_regions": regions,
         "held_end_forward": {"unplanned": {"predicted": p["unplanned_held_bytes"], "measured": b["held_end_forward"]},
                              "planned": {"predicted": p["held_end_forward_bytes"], "measured": q["held_end_forward"]}},
         "live_peak_forward": {"unplanned": b["live_peak_forward"], "planned": q["live_peak_forward"]},
         "live_peak_step": {"unplanned": b["live_peak_step"], "planned": q["live_peak_step"]},
         "resident_bytes": p["resident_bytes"],
         "time_s": {"unplanned": statistics.median(x["time_s"] for x in base),
                    "planned": statistics.median(x["time_s"] for x in planned)},
         "loss": {"unplanned": b["loss"], "planned": q["loss"]},
         "gradients_equal": equal, "gradient_max_abs_diff": worst}
    if cuda:  # the allocator's peak over the timed steps (gradients and temporaries included)
        r["cuda_max_memory_allocated"] = {"unplanned": peaks[0], "planned": peaks[1]}
    failures = []
    for which in ("unplanned", "planned"):
        h = r["held_end_forward"][which]
        if h["predicted"] != h["measured"]:
            failures.append(f"{which}: held bytes measured {h['measured']} != predicted {h['predicted']}")
    if not equal:
        failures.append(f"gradients differ (max abs difference {worst:.3g})")
    r["failures"], r["passed"] = failures, not failures
    return r


def _step(run, steps, error):
    """run(steps), with what PyTorch raises (the model's own code, or a checkpoint refusing the
    plan) as one line: `error` makes the typed error from "Name: first line"."""
    try:
        return run(steps)
    except CkptError:
        raise
    except Exception as e:  # noqa: BLE001 -- the user's model and PyTorch: any failure is one line
        text = str(e).strip().splitlines()
        raise error(f"{e.__class__.__name__}: {text[0] if text else '(no message)'}") from None


def report_lines(r):
    h = r["held_end_forward"]
    t = r["time_s"]
    rows = [("held for backward at end of forward", h["unplanned"]["predicted"], h["unplanned"]["measured"],
             h["planned"]["predicted"], h["planned"]["measured"])]
    out = [f"model {r['model']}: plan {r['plan']} checkpoints {', '.join(r['checkpointed_regions']) or 'nothing'}",
           f"{'':38} {'unplanned':>24} {'planned':>24}", f"{'':38} {'predicted':>11} {'measured':>12} "
           f"{'predicted':>11} {'measured':>12}"]
    for name, a, b, c, d in rows:
        out.append(f"{name:38} {fmt_bytes(a):>11} {fmt_bytes(b):>12} {fmt_bytes(c):>11} {fmt_bytes(d):>12}")
    lp = r["live_peak_forward"]
    out.append(f"{'live activation peak in forward':38} {'':>11} {fmt_bytes(lp['unplanned']):>12} {'':>11} "
               f"{fmt_bytes(lp['planned']):>12}")
    lp = r["live_peak_step"]
    out.append(f"{'live activation peak in the step':38} {'':>11} {fmt_bytes(lp['unplanned']):>12} {'':>11} "
               f"{fmt_bytes(lp['planned']):>12}")
    out.append(f"{'step time (median)':38} {'':>11} {t['unplanned'] * 1e3:>10.2f}ms {'':>11} {t['planned'] * 1e3:>10.2f}ms")
    if "cuda_max_memory_allocated" in r:
        cm = r["cuda_max_memory_allocated"]
        out.append(f"{'torch.cuda.max_memory_allocated':38} {'':>11} {fmt_bytes(cm['unplanned']):>12} {'':>11} "
                   f"{fmt_bytes(cm['planned']):>12}")
    out.append(f"resident (parameters, their gradients, inputs): {fmt_bytes(r['resident_bytes'])}")
    out.append("gradients: " + ("equal (bitwise)" if r["gradients_equal"]
                                else f"DIFFER (max abs difference {r['gradient_max_abs_diff']:.3g})"))
    for f in r["failures"]:
        out.append(f"FAILED: {f}")
    return out
