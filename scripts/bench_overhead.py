#!/usr/bin/env python3
"""The executor's per-node overhead: ckpt's store-all step on a tiny MLP (mlp_deep with B=4, D=16,
L=64: 386 nodes whose arrays are so small that the step is nearly all interpreter) against the same
forward and backward written by hand in numpy (scripts/bench_mlp.py's), interleaved rounds of
several steps each, medians of per-round figures, two repeats; run in a subprocess with
OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=MKL_NUM_THREADS=1 set before numpy is imported (the 1-thread
control), then with the default threads. Prints the ratio and the overhead in microseconds per node.

    python scripts/bench_overhead.py [--rounds 40] [--steps 10] [--set B=4 --set D=16 --set L=64]
"""

import argparse
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
DEFAULT_SETS = ["B=4", "D=16", "L=64"]


def measure(args):
    import statistics
    import time

    import numpy as np

    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_mlp import hand_written
    from ckpt.backend import get_backend
    from ckpt.execute import Executor
    from ckpt.plan import plan
    from ckpt.session import device_leaves, load_model

    overrides = {k: int(v) for k, v in (s.split("=") for s in args.sets)}
    model = load_model(os.path.join(ROOT, "configs", "mlp_deep.yaml"), overrides)
    backend = get_backend("cpu")
    leaves = device_leaves(model, backend)
    layers = [(leaves[f"body.{i}.W"], leaves[f"body.{i}.b"]) for i in range(model.spec.dims["L"])]
    p, _ = plan(model.joint, "store-all", ix=model.index)
    ex = Executor(model.graph, model.joint, p.steps, backend)
    nodes = model.joint.number_of_nodes()  # forward and gradient nodes: each is one step's rule(s)
    rules = recorded_rules(ex, leaves)

    ref_loss, ref_grads = hand_written(leaves, layers)
    r = ex.step(leaves)
    assert abs(r.loss - ref_loss) <= 1e-5 * abs(ref_loss), (r.loss, ref_loss)
    np.testing.assert_allclose(r.grads["body.0.W"], ref_grads[-1][0], rtol=1e-4, atol=1e-6)

    def per_step(f):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            f()
        return (time.perf_counter() - t0) / args.steps

    def run_rules():
        for f, a in rules:
            f(*a)

    med = statistics.median
    for repeat in range(2):
        tc, th, tr = [], [], []
        for _ in range(args.rounds):  # interleaved rounds: load on the machine hits all alike
            tc.append(per_step(lambda: ex.step(leaves)))
            th.append(per_step(lambda: hand_written(leaves, layers)))
            tr.append(per_step(run_rules))
        over = med((a - b) / nodes for a, b in zip(tc, th))
        print(f"  repeat {repeat}: ckpt {med(tc) * 1e3:6.3f} ms   numpy {med(th) * 1e3:6.3f} ms   ckpt/numpy "
              f"{med(a / b for a, b in zip(tc, th)):5.2f}   overhead {over * 1e6:5.2f}"
              f" us per node ({nodes} joint nodes), of which the executor "
              f"{med((a - b) / nodes for a, b in zip(tc, tr)) * 1e6:5.2f} and the op rules "
              f"{med((a - b) / nodes for a, b in zip(tr, th)) * 1e6:5.2f}")


def recorded_rules(ex, leaves):
    """Every rule call of one step, with its arguments as that step saw them: calling them in a
    row is the floor for any interpreter of these rules, so that ckpt's overhead over numpy splits
    into the executor's part and the op rules' part."""
    import numpy as np

    from ckpt.execute import FORWARD, GENERAL, GRADIENT
    from ckpt.ops import Ctx

    seen = {}
    ex.step(leaves, on_value=seen.__setitem__)
    vals = [None] * (len(ex._slots) + 1)
    for name, k in ex._slots.items():
        vals[k] = seen.get(name, leaves.get(name))

    def vjp_call(vjp, i, g_slot, read, out_slot, ctx, nones):
        ins = nones if read is None else read(vals)
        return vjp, (np, i, vals[g_slot], Ctx(ins, vals[out_slot], ctx.in_shapes, ctx.out_shape, ctx.attrs))

    calls = []
    for e in ex.program:
        if e[0] == FORWARD:
            forward, read, attrs = e[1:4]
            calls.append((forward, (np, read(vals), attrs)))
        elif e[0] == GRADIENT:
            calls.append(vjp_call(*e[1:8]))
        elif e[0] == GENERAL and e[1] == "loss":
            forward, _, read, attrs, _ = e[2]
            calls.append((forward, (np, read(vals), attrs)))
        elif e[0] == GENERAL:
            calls.extend(vjp_call(*t) for t in e[2][0])
    return calls


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--steps", type=int, default=10, help="steps per round")
    ap.add_argument("--set", dest="sets", action="append", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.sets = args.sets or DEFAULT_SETS
    if args.child:
        return measure(args)
    rest = ["--rounds", str(args.rounds), "--steps", str(args.steps)] + [a for s in args.sets for a in ("--set", s)]
    print(f"mlp_deep {' '.join(args.sets)}, store-all, {args.rounds} interleaved rounds of {args.steps} steps"
          " (medians)")
    for threads in (1, 0):
        env = dict(os.environ)
        if threads:
            env.update({k: "1" for k in THREAD_VARS})
        print("1 thread:" if threads else "default threads:", flush=True)
        rc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child"] + rest, env=env).returncode
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
