#!/usr/bin/env python3
"""Op-by-op: each elementwise and row-wise rule gpt_small runs, ckpt's against PyTorch's own op on
the same device and shapes, timed side by side (interleaved rounds, medians), with the bandwidth
each reaches counting the bytes it must read and write once. Where the per-step ratio of
scripts/bench_gpu.py comes from, op by op.

    python scripts/bench_kernels.py [--rounds 20] [--device cuda|cpu] [--B 4 --T 1024 --D 1024 --H 16]

PyTorch is an optional extra: without it the ckpt column alone is printed. `--device cpu` with
small sizes is for trying the script on a machine without a GPU.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from ckpt.backend import get_backend  # noqa: E402
from ckpt.ops import REGISTRY, Ctx  # noqa: E402
from ckpt.report import table  # noqa: E402


def rule(name, which, ins, attrs=None, out=None, g=None):
    """A thunk running op `name`'s forward (which="f") or its VJP for input `which`."""
    op = REGISTRY[name]
    a = {k: v for k, v in op.attrs.items()}
    a.update(attrs or {})
    if which == "f":
        return lambda xp: op.forward(xp, ins, a)
    ctx = Ctx(ins, out, [tuple(x.shape) for x in ins], tuple(out.shape) if out is not None else None, a)
    return lambda xp: op.vjp(xp, which, g, ctx)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--D", type=int, default=1024)
    ap.add_argument("--H", type=int, default=16)
    args = ap.parse_args()
    be = get_backend(args.device)
    xp = be.xp
    B, T, D, H = args.B, args.T, args.D, args.H
    rng = np.random.default_rng(0)

    def arr(*shape, dtype=np.float32):
        return be.asarray(rng.standard_normal(shape).astype(dtype))

    try:
        import torch
        import torch.nn.functional as F
        dev = "cuda" if args.device == "cuda" else "cpu"

        def tt(a):
            return torch.as_tensor(be.to_host(a), device=dev)
    except ImportError:
        torch = None
        print("torch is not installed: ckpt's column only")

    x, y = arr(B, T, D), arr(B, T, D)
    h = arr(B, T, 4 * D)
    s = arr(B, H, T, T)
    mask = be.asarray(np.triu(np.full((T, T), -1e9, np.float32), 1))
    gam, bet = arr(D), arr(D)
    stats = REGISTRY["layernorm_stats"].forward(xp, [x], {"eps": 1e-5})
    sm = REGISTRY["softmax"].forward(xp, [s], {"axis": -1})
    keep = REGISTRY["dropout_mask"].forward(xp, [], {"shape": s.shape, "p": 0.1, "_seed": 3})
    E = 4  # bytes per float32
    n, nh, ns = B * T * D, B * T * 4 * D, B * H * T * T
    # name: (ckpt thunk, torch thunk or None, bytes read and written once)
    cases = {
        "copy (ceiling)": (lambda xp: x.copy(), "x.clone()", 2 * n * E),
        "add (B,T,D)": (rule("add", "f", [x, y]), "x + y", 3 * n * E),
        "scale scores": (rule("scale", "f", [s], {"factor": 0.125}), "s * 0.125", 2 * ns * E),
        "add mask (T,T)": (rule("add", "f", [s, mask]), "s + mask", 2 * ns * E),
        "softmax": (rule("softmax", "f", [s]), "torch.softmax(s, -1)", 2 * ns * E),
        "softmax vjp": (rule("softmax", 0, [s], out=sm, g=s), "torch._softmax_backward_data(s, sm, -1, s.dtype)",
                        3 * ns * E),
        "dropout mask": (rule("dropout_mask", "f", [], {"shape": s.shape, "p": 0.1, "_seed": 3}), None, ns),
        "dropout (saved mask)": (rule("dropout", "f", [s, keep], {"p": 0.1}), "F.dropout(s, 0.1)",
                                 2 * ns * E + ns),
        "gelu": (rule("gelu", "f", [h]), "F.gelu(h, approximate='tanh')", 2 * nh * E),
        "gelu vjp": (rule("gelu", 0, [h], out=h, g=h), "torch.ops.aten.gelu_backward(h, h, approximate='tanh')",
                     3 * nh * E),
        "layernorm stats": (rule("layernorm_stats", "f", [x], {"eps": 1e-5}), None, n * E),
        "layernorm (saved stats)": (rule("layernorm", "f", [x, gam, bet, stats]),
                                    "F.layer_norm(x, (D,), gam, bet)", 2 * n * E),
        "layernorm vjp x": (rule("layernorm", 0, [x, gam, bet, stats], out=x, g=y),
                            "torch.ops.aten.native_layer_norm_backward(y, x, (D,), mu, rs, gam, bet, "
                            "[True, False, False])", 3 * n * E),
        "layernorm vjp gamma": (rule("layernorm", 1, [x, gam, bet, stats], out=x, g=y), None, 2 * n * E),
        "linear bias vjp (column sum)": (rule("linear", 2, [x, arr(D, 4 * D), arr(4 * D)], out=h, g=h),
                                        "h.sum(dim=(0, 1))", nh * E),
        "linear+bias (B,T,D)x(D,4D)": (rule("linear", "f", [x, arr(D, 4 * D), arr(4 * D)]),
                                       "F.linear(x, w.t(), bfc)", (n + nh + 4 * D * D) * E),
    }
    env = {}
    if torch is not None:
        env = {"torch": torch, "F": F, "x": tt(x), "y": tt(y), "h": tt(h), "s": tt(s), "mask": tt(mask),
               "gam": tt(gam), "bet": tt(bet), "sm": tt(sm), "D": D, "w": tt(arr(4 * D, D).T.copy()),
               "bfc": tt(arr(4 * D))}
        _, mu, rs = torch.native_layer_norm(env["x"], (D,), env["gam"], env["bet"], 1e-5)
        env.update(mu=mu, rs=rs)

    def sync():
        be.sync()
        if torch is not None and args.device == "cuda":
            torch.cuda.synchronize()

    rows = []
    for name, (ck, tcode, nbytes) in cases.items():
        fns = {"ckpt": lambda: ck(xp)}
        if torch is not None and tcode:
            code = compile(tcode, name, "eval")
            fns["torch"] = lambda: eval(code, env)
        times = {k: [] for k in fns}
        for f in fns.values():
            f()
        for _ in range(args.rounds):
            for k, f in fns.items():
                sync()
                t0 = time.perf_counter()
                f()
                sync()
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = (f"{statistics.median(a / b for a, b in zip(times['ckpt'], times['torch'])):.2f}"
                 if "torch" in times else "-")
        rows.append((name, f"{med['ckpt'] * 1e6:.0f}", f"{nbytes / med['ckpt'] / 1e9:.0f}",
                     f"{med['torch'] * 1e6:.0f}" if "torch" in med else "-",
                     f"{nbytes / med['torch'] / 1e9:.0f}" if "torch" in med else "-", ratio))
    print(f"B={B} T={T} D={D} H={H}, float32, {args.rounds} interleaved rounds on {args.device}")
    print(table(rows, ["op", "ckpt us", "ckpt GB/s", "torch us", "torch GB/s", "ckpt/torch"],
                align=["<", ">", ">", ">", ">", ">"]))


if __name__ == "__main__":
    sys.exit(main())
