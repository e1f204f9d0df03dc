#!/usr/bin/env python3
"""ckpt's store-all step on the convolutional configs (resnet_small, unet_small) against the same
network in PyTorch (ckpt/torchref.py, forward and loss.backward()) on the CPU: interleaved steps in
one process, the median of per-step ratios, two repeats; once with one thread (OMP_NUM_THREADS,
OPENBLAS_NUM_THREADS, MKL_NUM_THREADS=1 and torch.set_num_threads(1), set in a subprocess before
numpy is imported: the control that machine load disturbs least) and once with the default threads.
`--ops` adds the time of each conv/pool rule against its torch counterpart.

    python scripts/bench_conv.py [--steps 20] [--configs resnet_small unet_small] [--ops]

Needs torch (an optional extra); without it the script says so and stops.
"""

import argparse
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def measure(args):
    import statistics
    import time

    import numpy as np
    import torch

    sys.path.insert(0, ROOT)
    from ckpt import torchref
    from ckpt.backend import get_backend
    from ckpt.execute import Executor
    from ckpt.plan import plan
    from ckpt.session import device_leaves, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    backend = get_backend("cpu")
    for name in args.configs:
        model = load_model(os.path.join(ROOT, "configs", name + ".yaml"))
        g = model.graph
        leaves = device_leaves(model, backend)
        p, _ = plan(model.joint, "store-all", ix=model.index)
        ex = Executor(g, model.joint, p.steps, backend)
        wrt = [u for u in leaves if np.issubdtype(leaves[u].dtype, np.floating)]
        tleaves = {u: torch.from_numpy(a.copy()) for u, a in leaves.items()}

        def torch_step():
            vals = {u: (t.detach().requires_grad_(True) if u in wrt else t) for u, t in tleaves.items()}
            loss = torchref.forward(g, vals)
            loss.backward()
            return loss, vals

        loss, vals = torch_step()
        r = ex.step(leaves)
        assert abs(r.loss - float(loss.detach())) <= 1e-4 * max(1.0, abs(r.loss)), (r.loss, float(loss.detach()))
        for k, gr in r.grads.items():
            ref = vals[k].grad.numpy()
            assert np.linalg.norm(gr - ref) <= 1e-3 * max(np.linalg.norm(ref), 1e-6), k
        for repeat in range(2):
            tc, tt = [], []
            for _ in range(args.steps):  # interleaved: load on the machine hits both alike
                t0 = time.perf_counter()
                ex.step(leaves)
                tc.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                torch_step()
                tt.append(time.perf_counter() - t0)
            ratio = statistics.median(a / b for a, b in zip(tc, tt))
            print(f"  {name:13s} repeat {repeat}: ckpt {statistics.median(tc) * 1e3:7.2f} ms   torch "
                  f"{statistics.median(tt) * 1e3:7.2f} ms   ckpt/torch {ratio:5.2f}")
        if args.ops:
            op_table(g, leaves, ex, args.steps)


def op_table(g, leaves, ex, steps):
    """Each conv/pool node's forward and VJPs against torch's forward and backward of the same op."""
    import statistics
    import time

    import torch

    from ckpt import torchref
    from ckpt.ops import REGISTRY, Ctx

    values = {}
    ex.step(leaves, on_value=lambda x, a: values.__setitem__(x, a))
    xp = ex.xp
    for v in g.graph["order"]:
        d = g.nodes[v]
        if d["op"] not in ("conv2d", "maxpool2d", "avgpool2d", "upsample2d"):
            continue
        op = REGISTRY[d["op"]]
        ins = [values.get(u, leaves.get(u)) for u in d["inputs"]]
        out = values[v]
        ctx = Ctx(ins, out, [a.shape for a in ins], out.shape, d["attrs"])
        gy = xp.ones_like(out)

        def ours():
            op.forward(xp, ins, d["attrs"])
            for i in range(len(ins)):
                op.vjp(xp, i, gy, ctx)

        tins = [torch.from_numpy(a.copy()).requires_grad_(True) for a in ins]
        tg = torch.from_numpy(gy.copy())

        def theirs():
            y = torchref.TORCH[d["op"]](tins, d["attrs"])
            torch.autograd.grad(y, tins, tg)

        ta, tb = [], []
        for _ in range(steps):
            t0 = time.perf_counter()
            ours()
            ta.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            theirs()
            tb.append(time.perf_counter() - t0)
        shapes = " ".join("x".join(map(str, a.shape)) for a in ins)
        print(f"    {v:14s} {d['op']:10s} {shapes:28s} ours {statistics.median(ta) * 1e3:6.3f} ms   torch "
              f"{statistics.median(tb) * 1e3:6.3f} ms   {statistics.median(a / b for a, b in zip(ta, tb)):5.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--configs", nargs="+", default=["resnet_small", "unet_small"])
    ap.add_argument("--ops", action="store_true", help="also time each conv/pool op against torch's")
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)  # set by the parent
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return measure(args)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("bench_conv: needs torch (an optional extra: pip install torch); nothing measured", file=sys.stderr)
        return 2
    rest = ["--steps", str(args.steps), "--configs", *args.configs] + (["--ops"] if args.ops else [])
    for threads in (1, 0):
        env = dict(os.environ)
        if threads:
            env.update({k: str(threads) for k in THREAD_VARS})
        print(f"{'1 thread' if threads else 'default threads'} ({args.steps} interleaved steps each, medians):",
              flush=True)
        rc = subprocess.run([sys.executable, __file__, "--child", "--threads", str(threads)] + rest, env=env).returncode
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
