"""ckpt's vectorised elementwise kernels (ops.VectorKernel) on the CPU: the CUDA source each one
generates is compiled as C++ by g++ and its threads run one after another, so the layouts (vectors,
tails, operands broadcast along leading or trailing axes, misaligned views, writing in place) and the
index arithmetic are checked here against numpy, where CI has no GPU. tests/test_gpu.py checks the
same kernels on a device. Skipped where g++ is missing."""

import ctypes
import hashlib
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from test_gpu import _numpy_standing_in_for_cupy, check_models_against_the_array_rules

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to run the kernels on the CPU")

_PRELUDE = """#include <cmath>
#include <cstdint>
using namespace std;
struct ckpt_dim3 { unsigned x, y, z; };
static ckpt_dim3 blockIdx, blockDim, threadIdx;
#define __global__
"""
_C = {"float": ctypes.c_float, "double": ctypes.c_double, "bool": ctypes.c_bool, "long long": ctypes.c_longlong,
      "unsigned long long": ctypes.c_ulonglong, "int": ctypes.c_int, "unsigned char": ctypes.c_ubyte}


class _EmulatedRawKernel:
    """cupy.RawKernel for ckpt's thread-independent kernels, run on the CPU: the source compiled by
    g++ with a driver that calls the kernel for every block and thread in turn. Kernels that
    synchronise threads (the row kernels) cannot run so: None, and the ops take their other path."""

    cache = {}

    def __new__(cls, code, name, folder=None):
        if "__syncthreads" in code:
            return None
        return super().__new__(cls)

    def __init__(self, code, name, folder=None):
        sig = re.search(r'extern "C" __global__ void (\w+)\(([^)]*)\)', code)
        self.params = [p.strip().rsplit(" ", 1) for p in sig.group(2).split(",")]
        names = ", ".join(n for _, n in self.params)
        driver = (f'extern "C" void ckpt_run(unsigned grid, unsigned block, {sig.group(2)}) {{\n'
                  f"  blockDim.x = block;\n"
                  f"  for (unsigned b = 0; b < grid; b++) for (unsigned t = 0; t < block; t++) {{\n"
                  f"    blockIdx.x = b; threadIdx.x = t; {name}({names});\n  }}\n}}\n")
        src = _PRELUDE + code + driver
        key = hashlib.sha1(src.encode()).hexdigest()
        if key not in self.cache:
            folder = _EmulatedRawKernel.folder
            path = os.path.join(folder, key + ".so")
            cu = os.path.join(folder, key + ".cpp")
            with open(cu, "w") as f:
                f.write(src)
            r = subprocess.run(["g++", "-std=c++17", "-O1", "-ffp-contract=off", "-shared", "-fPIC", "-w", "-o",
                                path, cu], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr + src
            self.cache[key] = ctypes.CDLL(path).ckpt_run
        self.fn = self.cache[key]

    def __call__(self, grid, block, args, shared_mem=0):
        conv = []
        for (ty, _), a in zip(self.params, args):
            conv.append(ctypes.c_void_p(a.ctypes.data) if ty.endswith("*") else _C[ty.replace("const ", "")](a.item()))
        self.fn(ctypes.c_uint(grid[0]), ctypes.c_uint(block[0]), *conv)


@pytest.fixture(scope="module")
def xp(tmp_path_factory):
    _EmulatedRawKernel.folder = str(tmp_path_factory.mktemp("kernels"))
    fake = _numpy_standing_in_for_cupy()
    fake.RawKernel = _EmulatedRawKernel
    return fake


def _views(xp, rng, shape, dtype):
    """The same values as a fresh array and as a view 1 element into a larger buffer (misaligned)."""
    a = rng.standard_normal(shape).astype(dtype)
    big = xp.empty(a.size + 1, dtype=dtype)
    off = big[1:].reshape(shape)
    off[...] = xp.asarray(a)
    return xp.asarray(a), off


def check_arith_layouts(xp, dtype, host=np.asarray):
    """arith and scaled on every layout the vector kernels take, and on ones they hand to cupy's
    kernel, against the array module's own operators: the same bits. Shared with test_gpu."""
    from ckpt.ops.elementwise import arith, scaled
    rng = np.random.default_rng(0)
    cases = [((5, 7), (5, 7)),  # a tail: 35 elements
             ((4, 8), (4, 8)),  # whole vectors
             ((3, 4, 8), (8,)),  # a bias, one vector per period
             ((3, 4, 6), (6,)),  # a bias whose period splits vectors
             ((2, 3, 5, 5), (5, 5)),  # a mask over the leading axes
             ((3, 5, 8), (3, 5, 1)),  # a row statistic, one per vector
             ((3, 5, 6), (3, 5, 1)),  # a row statistic across vectors
             ((6, 1, 4), (6, 1, 4)),
             ((3, 4), ()),  # a 0-d operand
             ((3, 4), (1, 1)),
             ((), ()),
             ((4, 3), (4, 1, 3)),  # the output is the broadcast of both
             ((3, 1000, 64), (1000, 64))]  # many blocks
    ops = {"add": xp.add, "sub": xp.subtract, "mul": xp.multiply}
    for sa, sb in cases:
        for name, f in ops.items():
            a, a_off = _views(xp, rng, sa, dtype)
            b, b_off = _views(xp, rng, sb, dtype)
            for x, y in ((a, b), (a_off, b), (a, b_off), (b, a)):
                got, ref = arith(xp, name, x, y), f(x, y)
                assert got.shape == ref.shape and got.dtype == ref.dtype, (sa, sb, name)
                assert np.array_equal(host(got), host(ref)), (sa, sb, name)
            want = f(a, b)
            if want.shape == a.shape:  # in place, as the executor sums gradient terms
                out = a.copy()
                got = arith(xp, name, out, b, out=out)
                assert got is out and np.array_equal(host(out), host(want)), (sa, sb, name)
        assert np.array_equal(host(scaled(xp, a, 0.3)), host(a * 0.3))
    # a strided operand goes to cupy's kernel (on the CPU numpy's interpreter of it): the same values
    a = xp.asarray(rng.standard_normal((6, 8)).astype(dtype))
    assert np.array_equal(host(arith(xp, "add", a.T, a.T)), host(a.T + a.T))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_arith_through_the_vector_kernel_gives_numpys_bits_for_every_layout(xp, dtype):
    from ckpt.ops import _kernels
    check_arith_layouts(xp, dtype)
    assert {n for (m, n), k in _kernels.items() if m is xp and k} >= {"add", "sub", "mul", "scale"}


def test_every_variant_ran_on_the_vector_path(xp):
    """The layouts above did reach the raw kernels (not only cupy's fallback)."""
    from ckpt.ops import _kernels
    layouts = set()
    for (m, n), k in _kernels.items():
        if m is xp and k is not None and hasattr(k, "compiled"):
            layouts |= {how for _, lay in k.compiled for how in lay}
    assert layouts >= {"v", "m", "M", "d", "D"}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_models_through_the_vector_kernels_match_the_array_rules(xp, dtype):
    """gpt_small and unet_small (gelu, layernorm, dropout and its mask, softmax's VJP, the
    arithmetic) with every elementwise kernel on the vector path: the bytes of the plan, the
    dropout masks' bits, and gradients equal to the array rules' to rounding."""
    from ckpt.backend import CupyBackend
    check_models_against_the_array_rules(CupyBackend(xp), dtype)
    from ckpt.ops import _kernels
    vec = {n for (m, n), k in _kernels.items() if m is xp and getattr(k, "compiled", None)}
    assert vec >= {"dropout_mask", "dropout_masked", "gelu", "gelu_vjp", "ln_fwd", "ln_gxhat", "ln_dx", "add"}


def test_the_mask_kernel_gives_numpys_bits_in_every_lane(xp):
    from ckpt.ops.nn import _dropout, _mask, _masked
    for shape in ((3, 257, 129), (7,), (4, 8)):
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        for a in ({"p": 0.3, "_seed": 12345}, {"p": 0.9, "_seed": 2**40 + 7}):
            m = dict(a, shape=shape)
            assert np.array_equal(_mask(xp, m), _mask(np, m))
            assert np.array_equal(_dropout(xp, x, a), _dropout(np, x, a))
            assert np.array_equal(_masked(xp, x, _mask(np, m), m), _masked(np, x, _mask(np, m), m))
