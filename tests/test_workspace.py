"""Workspace in the memory model (issue 16): every op's stated temporaries against the allocator
(tracemalloc, which numpy reports its buffers to), generated from the registry; the joint graph's
`ws` per node; the simulator counts it; the allocator's peak stays within the budget."""

import tracemalloc

import numpy as np
import pytest

from ckpt.ops import REGISTRY, Ctx, iter_buffer, size

# Ops whose rules another change rewrites (convolution, pooling, upsampling): they state their own.
OWN_WORKSPACE_ELSEWHERE = {"conv2d", "maxpool2d", "avgpool2d", "upsample2d"}
OPS = sorted(set(REGISTRY) - OWN_WORKSPACE_ELSEWHERE)
# Interpreter objects the allocator also counts (array headers, iterator state, closures): not
# part of any rule's stated bytes (softmax builds its 2 KB CUDA source string even on numpy).
SLACK = 8192


def _scaled(op, k):
    """The example's shapes with every dimension but the unit ones times k."""
    return [tuple(d * k if d > 1 else d for d in s) for s in op.example["shapes"]]


def _owned(arr, others):
    if getattr(arr, "base", None) is not None or any(arr is o for o in others):
        return arr.copy()
    return arr


def measure(name, shapes, dtype=np.float32):
    """{which: (measured, stated)} for the forward and each VJP: the allocator's high-water mark
    while the rule runs and its result is made to own its buffer (as the executor does), less the
    result's bytes."""
    op = REGISTRY[name]
    attrs = dict(op.attrs)
    attrs.update(op.example.get("attrs", {}))
    rng = np.random.default_rng(0)
    ins = []
    for i, s in enumerate(shapes):
        if i in op.int_inputs:
            ins.append(rng.integers(0, shapes[0][-1], s))
        elif op.example.get("positive"):
            ins.append(rng.uniform(0.5, 2.0, s).astype(dtype))
        else:
            ins.append(rng.standard_normal(s).astype(dtype))
    out = np.asarray(op.forward(np, ins, attrs))
    g = rng.standard_normal(out.shape).astype(dtype)
    itemsize = np.dtype(dtype).itemsize
    result = {}
    tracemalloc.start()
    try:
        for which in ["forward"] + [i for i in range(len(shapes)) if i not in op.int_inputs]:
            need = set(op.needs(0 if which == "forward" else which))
            ctx = Ctx([x if k in need else None for k, x in enumerate(ins)], out, list(shapes), out.shape, attrs)
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            if which == "forward":
                r = _owned(np.asarray(op.forward(np, ins, attrs)), ins)
            else:
                r = _owned(np.asarray(op.vjp(np, which, g, ctx)), [g])
            peak = tracemalloc.get_traced_memory()[1]
            measured = peak - before - r.nbytes
            del r
            stated = op.workspace(which, list(shapes), out.shape, attrs, itemsize) if op.workspace else 0
            result[which] = (measured, stated)
    finally:
        tracemalloc.stop()
    return result


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("k", [1, 8])
def test_stated_workspace_matches_the_allocator(name, k):
    """Under 256 KiB per array (numpy reuses no temporary): the stated bytes are what the rule
    allocates, to the interpreter's objects and at most one iteration buffer beyond."""
    for dtype in (np.float32, np.float64):
        shapes = _scaled(REGISTRY[name], k)
        for which, (measured, stated) in measure(name, shapes, dtype).items():
            assert measured <= stated + SLACK, (name, k, dtype.__name__, which, measured, stated)
            loose = iter_buffer(np.getbufsize(), np.dtype(dtype).itemsize)
            assert stated <= measured + loose + SLACK, (name, k, dtype.__name__, which, measured, stated)


@pytest.mark.parametrize("name", OPS)
def test_stated_workspace_bounds_large_arrays(name):
    """Larger arrays: the stated bytes stay an upper bound (numpy may reuse temporaries)."""
    shapes = _scaled(REGISTRY[name], 40)
    for which, (measured, stated) in measure(name, shapes).items():
        assert measured <= stated + SLACK, (name, which, measured, stated)
