"""The seed's three implementations of AD on one model, measured side by side (`ckpt impl`,
scripts/bench_impl.py): the interpreter walking a schedule (the elemental library's runtime), the
operator-overloading tape recorded and run eagerly every step, the generated step (source
transformation), and a hand-written numpy step where the model family has one. All run store-all
on the CPU with the same leaf arrays; each is checked against the interpreter before it is timed.
"""

import statistics
import time

import numpy as np

from ..backend import get_backend
from ..execute import Executor
from ..plan import plan
from .codegen import generate, load_module, split_leaves
from .handwritten import for_model

NAMES = ("interpreter", "oo-tape", "generated", "hand-written")


def implementations(model):
    """{name: step()} for each implementation this model has; each step returns (loss, grads)."""
    from ..frontends import python
    from ..session import device_leaves
    g = model.graph
    backend = get_backend("cpu")
    leaves = device_leaves(model, backend)
    p, sim = plan(model.joint, "store-all", ix=model.index)
    ex = Executor(g, model.joint, p.steps, backend)

    def interpreter():
        r = ex.step(leaves)
        return r.loss, r.grads

    # A random op draws from a seed per graph node, named only once the trace is complete, so a
    # function with one is replayed from its graph, where the nodes have their names.
    random = any("_seed" in g.nodes[v]["attrs"] for v in g.graph["order"])
    if python.is_python_model(model.path) and not random:  # the user's own function, traced anew every step
        file, fn = python.load_function(model.path)
        _, kw = python._arguments(fn, fn.__ckpt_model__, file, model.spec.dims)
        marked = {k: (a, g.nodes[k]["grad"]) for k, a in leaves.items()}

        def oo_tape():
            return python.value_and_grad(fn, marked, dims=kw, seed=g.graph["seed"])
    else:  # a YAML model: its nodes replayed through the traced value type every step
        def oo_tape():
            return python.eager_step(g, leaves)

    module = load_module(generate(model, p.steps, "store-all", source=model.path, sim=sim))
    params, inputs = split_leaves(g, leaves)

    def generated():
        return module.step(params, inputs)

    out = {"interpreter": interpreter, "oo-tape": oo_tape, "generated": generated}
    hand = for_model(g)
    if hand is not None:
        out["hand-written"] = lambda: hand(leaves, g)
    return out


def agreement(ref, got):
    """(largest relative difference over the gradients, bitwise equal?) of got against ref."""
    (_, rg), (_, gg) = ref, got
    if sorted(rg) != sorted(gg):
        return float("inf"), False
    worst, same = 0.0, True
    for k in rg:
        a, b = np.asarray(rg[k]), np.asarray(gg[k])
        same = same and a.dtype == b.dtype and a.tobytes() == b.tobytes()
        scale = float(np.max(np.abs(a))) if a.size else 0.0
        worst = max(worst, float(np.max(np.abs(a - b))) / scale if scale else float(np.max(np.abs(b), initial=0.0)))
    # a loss of nan from both is the same loss (nan == nan is False)
    same_loss = ref[0] == got[0] or (np.isnan(ref[0]) and np.isnan(got[0]))
    return worst, bool(same and same_loss)


def measure(steps, rounds=7, sample_s=0.05, reference="hand-written"):
    """Per-step times of each implementation, interleaved: every round times each once (in a
    rotated order), a sample repeating the step enough times to last about `sample_s`. Returns
    {name: {"time_s": median per step, "ratio": {other: median over rounds of self/other}}}."""
    names = list(steps)
    for f in steps.values():  # warm-up: caches, first-call costs
        f()
    reps = {}
    for n, f in steps.items():  # the fastest of three single steps sets the repeats per sample
        one = []
        for _ in range(3):
            t0 = time.perf_counter()
            f()
            one.append(time.perf_counter() - t0)
        reps[n] = max(1, min(10_000, int(sample_s / max(min(one), 1e-7))))
    samples = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            f, k = steps[n], reps[n]
            t0 = time.perf_counter()
            for _ in range(k):
                f()
            samples[n].append((time.perf_counter() - t0) / k)
    out = {}
    for n in names:
        out[n] = {"time_s": statistics.median(samples[n]), "repeats": reps[n],
                  "ratio": {m: statistics.median(a / b for a, b in zip(samples[n], samples[m])) for m in names}}
    return out


def compare(model, rounds=7, sample_s=0.05):
    """The document behind `ckpt impl`: for each implementation its agreement with the interpreter
    and its median step time, and the ratios to the interpreter and to hand-written numpy."""
    steps = implementations(model)
    ref = steps["interpreter"]()
    rows = []
    checks = {}
    for n, f in steps.items():
        got = f()
        worst, bitwise = agreement(ref, got)
        checks[n] = {"loss": got[0], "max_rel_diff": worst, "bitwise": bitwise}
    times = measure(steps, rounds=rounds, sample_s=sample_s)
    for n in steps:
        row = {"name": n, **checks[n], **{k: v for k, v in times[n].items() if k != "ratio"},
               "vs_interpreter": times[n]["ratio"]["interpreter"],
               "vs_hand_written": times[n]["ratio"].get("hand-written")}
        rows.append(row)
    g = model.graph
    return {"model": g.graph["name"], "config": model.path, "ops": len(g.graph["order"]),
            "elements": int(sum(np.prod(g.nodes[v]["shape"], dtype=np.int64) for v in g.graph["order"])),
            "rounds": rounds, "implementations": rows}
