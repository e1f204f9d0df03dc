#!/usr/bin/env python3
"""ckpt's store-all step on configs/mlp_deep.yaml against a hand-written numpy forward/backward of
the same network, in one process, interleaved, several runs; prints both medians and the ratio.

    python scripts/bench_mlp.py [--steps 15] [--set B=256 ...]
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from ckpt.backend import get_backend  # noqa: E402
from ckpt.execute import Executor  # noqa: E402
from ckpt.plan import plan  # noqa: E402
from ckpt.session import device_leaves, load_model  # noqa: E402


def hand_written(leaves, layers):
    """Forward and backward of linear+relu layers and an mse loss, as one would write it by hand."""
    x, y = leaves["x"], leaves["y"]
    acts = [x]
    for W, b in layers:
        h = acts[-1] @ W
        h += b
        acts.append(np.maximum(h, 0))
    a = acts[-1]
    diff = a - y
    loss = float((diff * diff).mean())
    g = diff * (2.0 / diff.size)
    grads = []
    for k in range(len(layers) - 1, -1, -1):
        W, _ = layers[k]
        gh = g * (acts[k + 1] > 0)
        grads.append((acts[k].T @ gh, gh.sum(axis=0)))
        if k:
            g = gh @ W.T
    return loss, grads


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    overrides = {k: int(v) for k, v in (s.split("=") for s in args.sets)}
    root = os.path.join(os.path.dirname(__file__), "..")
    model = load_model(os.path.join(root, "configs", "mlp_deep.yaml"), overrides)
    backend = get_backend("cpu")
    leaves = device_leaves(model, backend)
    n_layers = model.spec.dims["L"]
    layers = [(leaves[f"body.{i}.W"], leaves[f"body.{i}.b"]) for i in range(n_layers)]
    p, _ = plan(model.joint, "store-all", ix=model.index)
    ex = Executor(model.graph, model.joint, p.steps, backend)

    ref_loss, ref_grads = hand_written(leaves, layers)
    r = ex.step(leaves)
    assert abs(r.loss - ref_loss) <= 1e-5 * abs(ref_loss), (r.loss, ref_loss)
    np.testing.assert_allclose(r.grads["body.0.W"], ref_grads[-1][0], rtol=1e-4, atol=1e-6)

    t_ckpt, t_hand = [], []
    for _ in range(args.steps):  # interleaved, so that machine noise hits both alike
        t0 = time.perf_counter()
        ex.step(leaves)
        t_ckpt.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        hand_written(leaves, layers)
        t_hand.append(time.perf_counter() - t0)
    a, b = statistics.median(t_ckpt), statistics.median(t_hand)
    ratios = sorted(x / y for x, y in zip(t_ckpt, t_hand))
    dims = ", ".join(f"{k}={v}" for k, v in model.spec.dims.items())
    print(f"mlp_deep ({dims}), float32, {args.steps} interleaved steps each")
    print(f"  ckpt store-all step : median {a * 1e3:8.2f} ms")
    print(f"  hand-written numpy  : median {b * 1e3:8.2f} ms")
    print(f"  ratio ckpt / numpy  : {a / b:.3f} (median of per-pair ratios {statistics.median(ratios):.3f})")


if __name__ == "__main__":
    main()
