"""Network ops: softmax, layernorm, convolution, pooling, dropout and losses. One block per op."""

import numpy as np

from . import OUT, Op, column_sum, compiles, iter_buffer, kernel, register, shape_error, size
from ..errors import ShapeError


# ---- softmax, log_softmax ----------------------------------------------------------------------
# Softmax over the last axis as one CUDA block per row, where the array module compiles raw CUDA:
# the row's max, exponentials and sum in one kernel (the array rule makes four passes over memory
# and two reductions), and the VJP's row dot product and product in another. Layernorm's rules
# that read saved statistics are row kernels too (below), which read the (mean, 1/std) pairs
# where they lie; as elementwise kernels they needed them copied out into arrays of their own.
_ROWS_CUDA = """
__device__ __forceinline__ T ckpt_block_sum(T v, T* sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();  /* sh may still be read from the previous reduction */
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    v = sh[0];
    for (int k = 1; k < (int)(blockDim.x >> 5); k++) v += sh[k];
    return v;
}
__device__ __forceinline__ T ckpt_block_max(T v, T* sh) {
    for (int o = 16; o > 0; o >>= 1) { T w = __shfl_xor_sync(0xffffffffu, v, o); v = w > v ? w : v; }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    v = sh[0];
    for (int k = 1; k < (int)(blockDim.x >> 5); k++) v = sh[k] > v ? sh[k] : v;
    return v;
}
/* A row of at most ROWS_CACHED bytes is read from memory once: the block holds it in shared memory
   (dynamic, `cached` set by the launch) between the passes that a longer row makes over memory. */
extern "C" __global__ void ckpt_softmax_rows_T(const T* x, T* y, int n, int cached) {
    __shared__ T sh[32];
    extern __shared__ __align__(16) unsigned char ckpt_dyn[];
    T* row = (T*)ckpt_dyn;
    const T* xr = x + (long long)blockIdx.x * n;
    T* yr = y + (long long)blockIdx.x * n;
    T m = xr[0];
    if (cached) {
        for (int j = threadIdx.x; j < n; j += blockDim.x) { T v = xr[j]; row[j] = v; m = v > m ? v : m; }
        m = ckpt_block_max(m, sh);
        T s = 0;
        for (int j = threadIdx.x; j < n; j += blockDim.x) { T e = EXP(row[j] - m); row[j] = e; s += e; }
        s = ckpt_block_sum(s, sh);
        for (int j = threadIdx.x; j < n; j += blockDim.x) yr[j] = row[j] / s;
        return;
    }
    for (int j = threadIdx.x; j < n; j += blockDim.x) m = xr[j] > m ? xr[j] : m;
    m = ckpt_block_max(m, sh);
    T s = 0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) { T e = EXP(xr[j] - m); yr[j] = e; s += e; }
    s = ckpt_block_sum(s, sh);
    for (int j = threadIdx.x; j < n; j += blockDim.x) yr[j] = yr[j] / s;
}
extern "C" __global__ void ckpt_softmax_rows_vjp_T(const T* y, const T* g, T* dx, int n, int cached) {
    __shared__ T sh[32];
    long long base = (long long)blockIdx.x * n;
    T s = 0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) s += g[base + j] * y[base + j];
    s = ckpt_block_sum(s, sh);
    for (int j = threadIdx.x; j < n; j += blockDim.x) dx[base + j] = y[base + j] * (g[base + j] - s);
}
/* Layernorm's row statistics, (mean, 1/std) per row, as the array rule computes them: the mean,
   then the mean of squared deviations from it. */
extern "C" __global__ void ckpt_ln_stats_rows_T(const T* x, T* st, int n, int cached, T eps) {
    __shared__ T sh[32];
    extern __shared__ __align__(16) unsigned char ckpt_dyn[];
    T* row = (T*)ckpt_dyn;
    const T* xr = x + (long long)blockIdx.x * n;
    T s = 0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) { T v = xr[j]; if (cached) row[j] = v; s += v; }
    T mu = ckpt_block_sum(s, sh) / (T)n;
    T q = 0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) { T c = (cached ? row[j] : xr[j]) - mu; q += c * c; }
    q = ckpt_block_sum(q, sh) / (T)n;
    if (threadIdx.x == 0) {
        st[2 * (long long)blockIdx.x] = mu;
        st[2 * (long long)blockIdx.x + 1] = (T)1 / SQRT(q + eps);
    }
}
/* Layernorm from saved statistics, one row per block (the formulas of the ln_ elementwise kernels,
   which read the statistics as arrays of their own): the forward, and g * xhat for gamma's VJP. */
extern "C" __global__ void ckpt_ln_fwd_rows_T(const T* x, const T* gamma, const T* beta, const T* st, T* y,
                                              int n, int cached) {
    long long base = (long long)blockIdx.x * n;
    T mu = st[2 * (long long)blockIdx.x], rstd = st[2 * (long long)blockIdx.x + 1];
    for (int j = threadIdx.x; j < n; j += blockDim.x) y[base + j] = ((x[base + j] - mu) * rstd) * gamma[j] + beta[j];
}
extern "C" __global__ void ckpt_ln_gxhat_rows_T(const T* g, const T* x, const T* st, T* t, int n, int cached) {
    long long base = (long long)blockIdx.x * n;
    T mu = st[2 * (long long)blockIdx.x], rstd = st[2 * (long long)blockIdx.x + 1];
    for (int j = threadIdx.x; j < n; j += blockDim.x) t[base + j] = g[base + j] * ((x[base + j] - mu) * rstd);
}
/* Layernorm's VJP for x from saved statistics, one row per block: rstd * (gg - mean(gg) - xhat *
   mean(gg * xhat)) with gg = g * gamma; gg and xhat are held in shared memory between the passes. */
extern "C" __global__ void ckpt_ln_dx_rows_T(const T* g, const T* x, const T* gamma, const T* st, T* dx, int n,
                                             int cached) {
    __shared__ T sh[32];
    extern __shared__ __align__(16) unsigned char ckpt_dyn[];
    T* ggs = (T*)ckpt_dyn;
    T* xhs = ggs + n;
    long long base = (long long)blockIdx.x * n;
    T mu = st[2 * (long long)blockIdx.x], rstd = st[2 * (long long)blockIdx.x + 1];
    T s1 = 0, s2 = 0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        T gg = g[base + j] * gamma[j], xh = (x[base + j] - mu) * rstd;
        if (cached) { ggs[j] = gg; xhs[j] = xh; }
        s1 += gg;
        s2 += gg * xh;
    }
    T m1 = ckpt_block_sum(s1, sh) / (T)n;
    T m2 = ckpt_block_sum(s2, sh) / (T)n;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        T gg = cached ? ggs[j] : g[base + j] * gamma[j];
        T xh = cached ? xhs[j] : (x[base + j] - mu) * rstd;
        dx[base + j] = rstd * (gg - m1 - xh * m2);
    }
}
"""
_ROWS_CACHED = 32768  # bytes of shared memory a block may hold a row in (48 KiB without opting in)


def _rows_kernel(xp, fn, x, axis=-1):
    """The compiled row kernel `fn` for x's dtype, or None where the other rules must run."""
    if not compiles(xp) or x.ndim == 0 or axis not in (-1, x.ndim - 1) or x.size == 0:
        return None  # (asked first: on numpy, the dtype's name and the source cost 10-40 us a call)
    t = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}.get(x.dtype)
    if t is None:
        return None
    code = "typedef %s T;\n#define EXP %s\n#define SQRT %s\n" % (
        t, *(("expf", "sqrtf") if t == "float" else ("exp", "sqrt"))) + _ROWS_CUDA
    return kernel(xp, "RawKernel", f"{fn}_{t}", code.replace("_T(", f"_{t}("))


def _launch_rows(xp, k, arrays, n, out_shape=None, extra=(), cache_rows=1):
    """One block per row of n elements: `arrays` (contiguous) and a new output of `out_shape` (the
    first array's shape unless given), then n, whether the row is cached (`cache_rows` rows of
    arrays[0]'s dtype fit in shared memory) and `extra` arguments."""
    block = min(256, max(32, 1 << (n - 1).bit_length()))  # whole warps, at most 256 threads
    first = arrays[0]
    out = xp.empty(first.shape if out_shape is None else out_shape, dtype=first.dtype)
    nbytes = cache_rows * n * first.itemsize
    cached = 0 < nbytes <= _ROWS_CACHED
    k((first.size // n,), (block,), tuple(xp.ascontiguousarray(a) for a in arrays) +
      (out, xp.int32(n), xp.int32(cached)) + tuple(extra), shared_mem=nbytes if cached else 0)
    return out


def _row_dot(xp, x, value):
    """x summed over its last axis with every element weighted by `value` (kept as an axis of 1),
    as a product with a vector: one BLAS call, where numpy's reduction over short rows costs
    several times as much (rows of 32 or 64: a fifth of the time)."""
    v = xp.empty(x.shape[-1], dtype=x.dtype)
    v.fill(value)  # (xp.full is Python around these two calls: twice their time)
    return (x @ v).reshape(x.shape[:-1] + (1,))


def _row_sum(xp, x, axis):
    """Sums along `axis`, kept as an axis of 1."""
    if axis in (-1, x.ndim - 1):
        return _row_dot(xp, x, 1.0)
    return x.sum(axis=axis, keepdims=True)


def _softmax(xp, x, axis):
    rows = _rows_kernel(xp, "softmax_rows", x, axis)
    if rows:
        return _launch_rows(xp, rows, [x], x.shape[-1])
    m = x.max(axis=axis, keepdims=True)
    k = kernel(xp, "ElementwiseKernel", "exp_sub", "T x, T m", "T e", "e = exp(x - m)", dtype=x.dtype)
    if k:
        e = k(x, m)
    else:
        e = x - m
        xp.exp(e, out=e)
    e /= _row_sum(xp, e, axis)
    return e


def _softmax_vjp(xp, g, y, axis):
    """y * (g - sum(g * y)) along the axis: the VJP and the JVP of y = softmax(x)."""
    rows = _rows_kernel(xp, "softmax_rows_vjp", y, axis)
    if rows:
        return _launch_rows(xp, rows, [y, g], y.shape[-1], cache_rows=0)
    dot = kernel(xp, "ReductionKernel", "rowdot", "T g, T y", "T s", "g * y", "a + b", "s = a", "0", dtype=g.dtype)
    if dot:
        s = dot(g, y, axis=axis, keepdims=True)
        return kernel(xp, "ElementwiseKernel", "softmax_vjp", "T y, T g, T s", "T dx", "dx = y * (g - s)")(y, g, s)
    t = g * y
    xp.subtract(g, _row_sum(xp, t, axis), out=t)
    t *= y
    return t


def _log_softmax(xp, x, axis):
    z = x - x.max(axis=axis, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True))


def _check_axis(op):
    def rule(shapes, a):
        s = tuple(shapes[0])
        if not s or not -len(s) <= a["axis"] < len(s):
            raise shape_error(op, f"axis {a['axis']} is out of range", shapes)
        return s
    return rule


def _softmax_workspace(which, s, o, a, itemsize):
    """Array rules (numpy): the forward takes x - max and its exponential in the output's buffer,
    the VJP g * y and then g minus its row sums in the result's; each holds two row statistics and
    the vector the sums are taken with, and subtracting or dividing by a row statistic iterates
    through numpy's buffer."""
    n = size(o)
    rows = n // o[a["axis"]] * itemsize
    return iter_buffer(n, itemsize) + 2 * rows + o[-1] * itemsize


def _log_softmax_workspace(which, s, o, a, itemsize):
    """The forward holds x - max and its exponential, the VJP exp(out) and its product with g's
    row sums; each subtraction of a row statistic iterates through numpy's buffer."""
    n = size(o)
    rows = n // o[a["axis"]] * itemsize
    return n * itemsize + iter_buffer(n, itemsize) + 2 * rows


register(Op(
    name="softmax", arity=(1, 1), shape=_check_axis("softmax"), attrs={"axis": -1},
    forward=lambda xp, ins, a: _softmax(xp, ins[0], a["axis"]),
    vjp=lambda xp, i, g, c: _softmax_vjp(xp, g, c.out, c.attrs["axis"]),
    jvp=lambda xp, t, c: _softmax_vjp(xp, t[0], c.out, c.attrs["axis"]),
    needs=lambda i: (OUT,), flops=lambda s, o, a: 5 * size(o),
    vjp_flops=lambda i, s, o, a: 4 * size(o),  # g*y, its row sum, g minus it, times y
    workspace=_softmax_workspace,
    example={"shapes": [(3, 5)]},
))

register(Op(
    name="log_softmax", arity=(1, 1), shape=_check_axis("log_softmax"), attrs={"axis": -1},
    forward=lambda xp, ins, a: _log_softmax(xp, ins[0], a["axis"]),
    vjp=lambda xp, i, g, c: g - xp.exp(c.out) * g.sum(axis=c.attrs["axis"], keepdims=True),
    jvp=lambda xp, t, c: t[0] - (xp.exp(c.out) * t[0]).sum(axis=c.attrs["axis"], keepdims=True),
    needs=lambda i: (OUT,), flops=lambda s, o, a: 5 * size(o),
    vjp_flops=lambda i, s, o, a: 4 * size(o),  # g's row sum, exp(out), their product, g minus it
    workspace=_log_softmax_workspace,
    example={"shapes": [(3, 5)]},
))


# ---- layernorm over the last axis: y = (x - mean) / sqrt(var + eps) * gamma + beta --------------
# The model graph gives each layernorm node a `layernorm_stats` node of its x as a fourth input (the
# row mean and 1/std, two numbers a row), as PyTorch's layer_norm saves them: the forward and the
# VJPs then read the statistics instead of computing them again from x. A config writes three.
def _ln_shape(shapes, a):
    x = tuple(shapes[0])
    if not x or tuple(shapes[1]) != x[-1:] or tuple(shapes[2]) != x[-1:] or \
            (len(shapes) == 4 and tuple(shapes[3]) != x[:-1] + (2,)):
        raise shape_error("layernorm", "needs x (..., d), gamma (d,) and beta (d,)", shapes)
    return x


def _row_mean(xp, x):
    """The mean over the last axis, kept as an axis of 1."""
    return _row_dot(xp, x, 1.0 / x.shape[-1])


def _ln_stats(xp, x, eps):
    xc = x - _row_mean(xp, x)
    var = _row_mean(xp, xc * xc)
    var += eps
    rstd = 1.0 / xp.sqrt(var)
    xc *= rstd  # xhat, in the buffer of x - mean
    return xc, rstd


def _ln_saved(stats):
    """(mean, 1/std), each (..., 1), from a layernorm_stats value."""
    return stats[..., 0:1], stats[..., 1:2]


def _ln_xhat(xp, x, stats):
    """(xhat, 1/std) from saved statistics: the same values `_ln_stats` computes from x."""
    mu, rstd = _ln_saved(stats)
    xhat = x - mu
    xhat *= rstd
    return xhat, rstd


# Fused layernorm: the row statistics by the array module's reductions, every elementwise stretch as
# one kernel over x (xhat = (x - mu) * rstd is recomputed inside each kernel, never stored).
_XHAT = "((x - mu) * rstd)"


def _ln_kernels(xp, dtype):
    """The compiled kernels, or None where the array rules run (see ops.kernel)."""
    def k(name, params, out, body):
        return kernel(xp, "ElementwiseKernel", "ln_" + name, params, out, body, dtype=dtype)
    sqdev = k("sqdev", "T x, T mu", "T d", "T c = x - mu; d = c * c")
    if not sqdev:
        return None
    return {"sqdev": sqdev,
            "fwd": k("fwd", "T x, T mu, T rstd, T gamma, T beta", "T y", f"y = {_XHAT} * gamma + beta"),
            "gxhat": k("gxhat", "T g, T x, T mu, T rstd", "T t", f"t = g * {_XHAT}"),
            "dx": k("dx", "T gg, T x, T mu, T rstd, T m1, T m2", "T dx", f"dx = rstd * (gg - m1 - {_XHAT} * m2)")}


def _ln_fused(xp, ins, eps):
    """(mu, rstd, kernels) where kernels are compiled, else None."""
    ks = _ln_kernels(xp, ins[0].dtype)
    if not ks:
        return None
    if len(ins) == 4:  # (contiguous: the kernels then read them as one value per vector of x)
        return tuple(xp.ascontiguousarray(v) for v in _ln_saved(ins[3])) + (ks,)
    x = ins[0]
    mu = x.mean(axis=-1, keepdims=True)
    return mu, 1.0 / xp.sqrt(ks["sqdev"](x, mu).mean(axis=-1, keepdims=True) + eps), ks


def _ln_forward(xp, ins, a):
    rows = _rows_kernel(xp, "ln_fwd_rows", ins[0]) if len(ins) == 4 else None
    if rows:
        return _launch_rows(xp, rows, ins, ins[0].shape[-1], cache_rows=0)
    fused = _ln_fused(xp, ins, a["eps"])
    if fused:
        mu, rstd, k = fused
        return k["fwd"](ins[0], mu, rstd, ins[1], ins[2])
    xhat, _ = _ln_xhat(xp, ins[0], ins[3]) if len(ins) == 4 else _ln_stats(xp, ins[0], a["eps"])
    xhat *= ins[1]
    xhat += ins[2]
    return xhat


def _lead_sum(xp, g):
    return column_sum(xp, g.reshape(-1, g.shape[-1]))


def _ln_vjp(xp, i, g, c):
    """The total derivative through the statistics (they take no gradient of their own)."""
    if i == 2:
        return _lead_sum(xp, g)
    x = c.ins[0]
    rows = _rows_kernel(xp, ("ln_dx_rows", "ln_gxhat_rows")[i], x) if len(c.ins) == 4 else None
    if rows and i == 0:
        return _launch_rows(xp, rows, [g, x, c.ins[1], c.ins[3]], x.shape[-1], cache_rows=2)
    if rows:
        return _lead_sum(xp, _launch_rows(xp, rows, [g, x, c.ins[3]], x.shape[-1], cache_rows=0))
    fused = _ln_fused(xp, c.ins, c.attrs["eps"])
    if fused:
        mu, rstd, k = fused
        if i == 1:
            return _lead_sum(xp, k["gxhat"](g, x, mu, rstd))
        gg = g * c.ins[1]
        m1 = gg.mean(axis=-1, keepdims=True)
        m2 = k["gxhat"](gg, x, mu, rstd).mean(axis=-1, keepdims=True)
        return k["dx"](gg, x, mu, rstd, m1, m2)
    saved = len(c.ins) == 4
    xhat, rstd = _ln_xhat(xp, x, c.ins[3]) if saved else _ln_stats(xp, x, c.attrs["eps"])
    if i == 1:
        xhat *= g
        return _lead_sum(xp, xhat)
    # rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = g * gamma: in two buffers
    dx = g * c.ins[1]
    t = dx * xhat
    xp.multiply(xhat, _row_mean(xp, t), out=t)
    dx -= _row_mean(xp, dx)
    dx -= t
    dx *= rstd
    return dx


def _ln_workspace(which, s, o, a, itemsize):
    """Array rules (numpy): the statistics hold x - mean beside its square, the row means and the
    vector of 1/d they are taken with; x - mean then becomes xhat in place. gamma's VJP multiplies
    g into xhat and sums it; x's holds xhat, g * gamma and a third buffer for the row-centred term
    (its product with a row statistic iterating through numpy's buffer), and two row statistics;
    beta's only sums g. With saved statistics xhat is made from them (x - mean, then times 1/std,
    each row statistic iterating through numpy's buffer): no square, no row means."""
    n = size(o) * itemsize
    rows = size(o) // o[-1] * itemsize
    vec = o[-1] * itemsize
    saved = len(s) == 4
    buf = iter_buffer(size(o), itemsize)
    if which == "forward":
        return buf if saved else n + rows + vec
    if which == 2:
        return 0
    if which == 1:
        return n + buf if saved else 2 * n + rows
    return 2 * n + 2 * rows + vec + buf


def _ln_jvp(xp, t, c):
    xhat, rstd = _ln_stats(xp, c.ins[0], c.attrs["eps"])
    tx = t[0]
    dxhat = rstd * (tx - tx.mean(axis=-1, keepdims=True) - xhat * (xhat * tx).mean(axis=-1, keepdims=True))
    return dxhat * c.ins[1] + xhat * t[1] + t[2]


register(Op(
    name="layernorm", arity=(3, 3), shape=_ln_shape, attrs={"eps": 1e-5},
    forward=_ln_forward, vjp=_ln_vjp, jvp=_ln_jvp,
    needs=lambda i: ((0, 1, 3), (0, 3), (), ())[i], flops=lambda s, o, a: (8 if len(s) == 3 else 4) * size(o),
    # without saved statistics, every input's VJP but beta's computes them again (5 per element);
    # gamma's then takes g * xhat and its column sum, x's the seven elementwise and row-mean terms;
    # beta's is a column sum of g. With them, xhat costs 2 per element.
    vjp_flops=lambda i, s, o, a: ((12, 7, 1) if len(s) == 3 else (9, 4, 1))[i] * size(o),
    workspace=_ln_workspace,
    residual=lambda s, a: ("layernorm_stats", (0,), {"eps": a["eps"]}),
    example={"shapes": [(2, 3, 6), (6,), (6,)]},
))


def _ln_stats_forward(xp, x, eps):
    """Row mean and 1/std of x as (..., 2): the numbers `_ln_stats` (or the kernels) compute."""
    rows = _rows_kernel(xp, "ln_stats_rows", x)
    if rows:
        return _launch_rows(xp, rows, [x], x.shape[-1], x.shape[:-1] + (2,), (x.dtype.type(eps),))
    ks = _ln_kernels(xp, x.dtype)
    out = xp.empty(x.shape[:-1] + (2,), dtype=x.dtype)
    if ks:
        mu = x.mean(axis=-1, keepdims=True)
        rstd = 1.0 / xp.sqrt(ks["sqdev"](x, mu).mean(axis=-1, keepdims=True) + eps)
    else:
        mu = _row_mean(xp, x)
        xc = x - mu
        xc *= xc
        var = _row_mean(xp, xc)
        del xc
        var += eps
        rstd = 1.0 / xp.sqrt(var)
    out[..., 0:1] = mu
    out[..., 1:2] = rstd
    return out


def _ln_stats_workspace(which, s, o, a, itemsize):
    """(x - mean), squared in place, beside the row means, their vector of 1/d and the variance;
    the subtraction of the row means iterates through numpy's buffer."""
    n = size(s[0]) * itemsize
    rows = size(o) // 2 * itemsize
    return n + iter_buffer(size(s[0]), itemsize) + 2 * rows + s[0][-1] * itemsize


register(Op(
    name="layernorm_stats", arity=(1, 1), attrs={"eps": 1e-5}, differentiable=False, internal=True,
    shape=lambda s, a: tuple(s[0][:-1]) + (2,),
    forward=lambda xp, ins, a: _ln_stats_forward(xp, ins[0], a["eps"]),
    vjp=None, jvp=None, needs=lambda i: (), flops=lambda s, o, a: 5 * size(s[0]),
    workspace=_ln_stats_workspace,
    example={"shapes": [(2, 3, 6)]},
))


# ---- conv2d (NCHW, weights OCkk): one GEMM per rule against an im2col matrix ------------------
# Everything runs channel-major on a "grid" of output positions (N, GH, GW): the forward is
# y = w2 (O, C*kh*kw) @ cols (C*kh*kw, N*GH*GW), dW is cols @ g (N*GH*GW, O), and dX's columns are
# w2.T @ g (O, N*GH*GW), each ONE GEMM over the whole batch; dX's columns go back by kh*kw adds
# (one per kernel offset), never a loop over pixels.
# At stride 1 the grid is the padded input's own (Hp, Wp): the row of cols for (c, i, j) is then
# the flattened padded channel c shifted by i*Wp + j, so cols is one copy out of a strided view
# whose rows are long and contiguous, and col2im is kh*kw adds of whole rows. Positions of the grid
# that are no output pixel (the last kh-1 rows and kw-1 columns of each image) are computed and
# dropped by the forward and hold zero gradient in the VJPs: Hp*Wp / (OH*OW) more GEMM work (1.27
# at 16x16, 3x3, padding 1), paid back several times over by copies with long inner loops. At
# stride s that waste would be s*s: there the grid is (OH, OW) and the windows are strided.
# Dilation d (atrous convolution: DeepLab's ASPP, WaveNet) spaces the kernel's taps d apart: it is
# only a stride of the window view (the row of (c, i, j) is the channel shifted by d*(i*Wp + j)),
# so a dilated convolution is the same one copy and one GEMM.
def _conv_geometry(shapes, a):
    x, w = tuple(shapes[0]), tuple(shapes[1])
    if len(x) != 4 or len(w) != 4:
        raise shape_error("conv2d", "needs x (N, C, H, W) and weights (O, C, kh, kw)", shapes)
    if x[1] != w[1]:
        raise shape_error("conv2d", f"input has {x[1]} channels, weights expect {w[1]}", shapes)
    if len(shapes) == 3 and tuple(shapes[2]) != (w[0],):
        raise shape_error("conv2d", f"bias must have shape ({w[0]},)", shapes)
    s, p, d = a["stride"], a["padding"], a.get("dilation", 1)
    if any(not isinstance(v, int) or isinstance(v, bool) for v in (s, p, d)) or s < 1 or p < 0 or d < 1:
        raise ShapeError("conv2d: stride and dilation must be positive integers and padding a non-negative one")
    oh, ow = (x[2] + 2 * p - d * (w[2] - 1) - 1) // s + 1, (x[3] + 2 * p - d * (w[3] - 1) - 1) // s + 1
    if oh < 1 or ow < 1:
        raise shape_error("conv2d", "kernel is larger than the padded input" + (f" (dilation {d})" if d > 1 else ""),
                          shapes)
    return oh, ow


def _conv_shape(shapes, a):
    oh, ow = _conv_geometry(shapes, a)
    return (shapes[0][0], shapes[1][0], oh, ow)


# A dilated kernel makes the padded grid's dropped rows and columns d times as many: an atrous
# 3 x 3 of dilation 18 and padding 18 on a 33 x 33 map computes 4.4 times its output on the grid.
# Past twice the output, the strided windows of (OH, OW) cost less: on one thread 2.4 to 3.2 times
# less at 3 to 4.4 times (scripts/bench_dilated.py); below it the two were within noise of each other
# on a shared machine. Undilated kernels keep the grid (their waste is (Hp Wp) / (H W), 1.27 at
# 16 x 16 and padding 1).
GRID_WASTE = 2.0


def _padded_grid(x_shape, w_shape, a):
    """Whether the rules run on the padded input's grid (stride 1, little waste) or on strided windows."""
    if a["stride"] != 1:
        return False
    (_, _, h, w), (_, _, kh, kw), p, d = x_shape, w_shape, a["padding"], a.get("dilation", 1)
    hp, wp = h + 2 * p, w + 2 * p
    return d == 1 or hp * wp <= GRID_WASTE * (hp - d * (kh - 1)) * (wp - d * (kw - 1))


def _grid(x_shape, w_shape, out_shape, a):
    """(GH, GW, tail): the grid of output positions, and the zeros the stride-1 view reads past the
    padded input's end (its last row of windows starts at the last grid position)."""
    (_, _, h, w), (_, _, kh, kw), p, d = x_shape, w_shape, a["padding"], a.get("dilation", 1)
    if _padded_grid(x_shape, w_shape, a):
        return h + 2 * p, w + 2 * p, d * ((kh - 1) * (w + 2 * p) + kw - 1)
    return out_shape[2], out_shape[3], 0


def _cols(xp, x, w_shape, out_shape, a):
    """The im2col matrix (C*kh*kw, N*GH*GW): one copy out of a strided view of the padded input,
    laid out channel-major (C, N, Hp, Wp) and flattened, with `tail` zeros after it."""
    n, ch, h, w = x.shape
    _, _, kh, kw = w_shape
    s, p, d = a["stride"], a["padding"], a.get("dilation", 1)
    gh, gw, tail = _grid(x.shape, w_shape, out_shape, a)
    hp, wp = h + 2 * p, w + 2 * p
    m = n * hp * wp
    buf = xp.zeros((ch, m + tail), dtype=x.dtype)
    e = buf.itemsize
    image = xp.lib.stride_tricks.as_strided(buf, (ch, n, hp, wp), ((m + tail) * e, hp * wp * e, wp * e, e))
    image[:, :, p:p + h, p:p + w] = x.transpose(1, 0, 2, 3)  # (a view for certain, where reshape may copy)
    del image
    if _padded_grid(x.shape, w_shape, a):
        view = xp.lib.stride_tricks.as_strided(buf, (ch, kh, kw, m), ((m + tail) * e, d * wp * e, d * e, e))
    else:
        view = xp.lib.stride_tricks.as_strided(buf, (ch, kh, kw, n, gh, gw),
                                               ((m + tail) * e, d * wp * e, d * e, hp * wp * e, s * wp * e, s * e))
    return view.reshape(ch * kh * kw, n * gh * gw)  # a copy: the view is not contiguous


def _on_grid(xp, g, gh, gw, pixel_major):
    """g (N, O, OH, OW) placed on the grid, zeros elsewhere: (N*GH*GW, O) or (O, N*GH*GW)."""
    n, o, oh, ow = g.shape
    if pixel_major:
        out = xp.zeros((n, gh, gw, o), dtype=g.dtype) if (gh, gw) != (oh, ow) else xp.empty((n, gh, gw, o), g.dtype)
        out[:, :oh, :ow] = g.transpose(0, 2, 3, 1)
        return out.reshape(n * gh * gw, o)
    out = xp.zeros((o, n, gh, gw), dtype=g.dtype) if (gh, gw) != (oh, ow) else xp.empty((o, n, gh, gw), g.dtype)
    out[:, :, :oh, :ow] = g.transpose(1, 0, 2, 3)
    return out.reshape(o, n * gh * gw)


def _conv(xp, x, w, b, a, out_shape):
    n, o, oh, ow = out_shape
    gh, gw, _ = _grid(x.shape, w.shape, out_shape, a)
    cols = _cols(xp, x, w.shape, out_shape, a)
    y2 = xp.matmul(w.reshape(o, -1), cols)  # (O, N*GH*GW): the one GEMM
    del cols
    y = xp.empty(out_shape, dtype=y2.dtype)
    y[...] = y2.reshape(o, n, gh, gw)[:, :, :oh, :ow].transpose(1, 0, 2, 3)
    del y2
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


def _conv_forward(xp, ins, a):
    x, w = ins[0], ins[1]
    oh, ow = _conv_geometry([x.shape, w.shape], a)
    return _conv(xp, x, w, ins[2] if len(ins) == 3 else None, a, (x.shape[0], w.shape[0], oh, ow))


def _conv_vjp(xp, i, g, c):
    if i == 2:
        return g.sum(axis=(0, 2, 3))
    a, x_shape, w_shape = c.attrs, c.in_shapes[0], c.in_shapes[1]
    gh, gw, _ = _grid(x_shape, w_shape, c.out_shape, a)
    if i == 1:
        cols = _cols(xp, c.ins[0], w_shape, c.out_shape, a)
        dw_t = xp.matmul(cols, _on_grid(xp, g, gh, gw, pixel_major=True))  # (C*kh*kw, O): the one GEMM
        del cols
        dw = xp.empty(w_shape, dtype=g.dtype)
        dw.reshape(w_shape[0], -1)[...] = dw_t.T
        return dw
    return _conv_dx(xp, g, c.ins[1], x_shape, a, gh, gw)


def _conv_dx(xp, g, w, x_shape, a, gh, gw):
    """dX: its columns, weights (kh*kw*C or C*kh*kw, O) @ g on the grid (O, N*GH*GW) in one GEMM,
    then col2im onto the channel-major padded input (C, N, Hp, Wp), cropped to NCHW at the end."""
    n, ch, h, wd = x_shape
    o, _, kh, kw = w.shape
    s, p, d = a["stride"], a["padding"], a.get("dilation", 1)
    oh, ow = g.shape[2:]
    hp, wp = h + 2 * p, wd + 2 * p
    grid = _on_grid(xp, g, gh, gw, pixel_major=False)
    if _padded_grid(x_shape, w.shape, a):
        # Rows ordered (kh, kw, C): the columns of offset (r, q) are one contiguous block, which
        # lands on the flattened padded input shifted by d*(r*Wp + q). Within the block, the last
        # d*(r*Wp + q) values of each channel spill into the next channel's first ones: they belong
        # to grid positions that are no output pixel (rows past OH = Hp - d*(kh-1), or columns past
        # OW), whose gradient is zero, so they add zeros. Each add is then one 1-D contiguous pass
        # (numpy buffers none of its operands).
        m = n * hp * wp
        dcols = xp.matmul(xp.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(-1, o), grid)  # the one GEMM
        del grid
        flat = xp.zeros(ch * m + d * ((kh - 1) * wp + kw - 1), dtype=g.dtype)
        for r in range(kh):
            for q in range(kw):
                off, k = d * (r * wp + q), r * kw + q
                flat[off:off + ch * m] += dcols[k * ch:(k + 1) * ch].reshape(-1)
        dx = flat[:ch * m].reshape(ch, n, hp, wp)
    else:
        dcols = xp.matmul(w.reshape(o, -1).T, grid)  # (C*kh*kw, N*OH*OW): the one GEMM
        del grid
        dcols = dcols.reshape(ch, kh, kw, n, oh, ow)
        dx = xp.zeros((ch, n, hp, wp), dtype=g.dtype)
        for r in range(kh):  # one strided add per kernel offset
            for q in range(kw):
                dx[:, :, d * r:d * r + s * oh:s, d * q:d * q + s * ow:s] += dcols[:, r, q]
    del dcols
    out = xp.empty(x_shape, dtype=g.dtype)
    out[...] = dx[:, :, p:p + h, p:p + wd].transpose(1, 0, 2, 3)
    return out


def _conv_jvp(xp, t, c):
    x, w = c.ins[0], c.ins[1]
    y = _conv(xp, t[0], w, None, c.attrs, c.out_shape)
    y += _conv(xp, x, t[1], None, c.attrs, c.out_shape)
    return y + t[2].reshape(1, -1, 1, 1) if len(t) == 3 else y


def ufunc_buffer(n, itemsize):
    """Bytes numpy allocates for one strided or broadcast operand of a ufunc over n elements: it
    copies such an operand through a buffer of up to np.getbufsize() elements (8192 by default).
    (Copies, assignments and copyto with a mask need none; cupy needs none: there this bound is
    not reached.)"""
    return min(n, np.getbufsize()) * itemsize


def _conv_workspace(which, shapes, out_shape, a, itemsize):
    """The bytes each conv2d rule holds beyond its output at its high-water mark: the largest sum
    of buffers live at once, allocation by allocation as the rules above make them, less the
    output (tests/test_conv_speedpath.py measures them with tracemalloc)."""
    (n, ch, h, w), (o, _, kh, kw) = shapes[0], shapes[1]
    gh, gw, tail = _grid(shapes[0], shapes[1], out_shape, a)
    p, e = a["padding"], itemsize
    padded = n * ch * (h + 2 * p) * (w + 2 * p) * e
    buf = padded + ch * tail * e  # the padded input, channel-major, and the tail of zeros
    cols = ch * kh * kw * n * gh * gw * e
    grid = o * n * gh * gw * e  # the output, or its gradient, on the grid
    if which == "forward":
        out = size(out_shape) * e
        bias = ufunc_buffer(size(out_shape), e) if len(shapes) == 3 else 0  # b broadcast
        return max(buf + cols, cols + grid, grid + out, out + bias) - out
    if which == 1:  # the weights' gradient, and beside it dW transposed
        out, dw_t = size(shapes[1]) * e, ch * kh * kw * o * e
        return max(buf + cols, cols + grid + dw_t, dw_t + out) - out
    if which == 0:
        out = size(shapes[0]) * e
        if _padded_grid(shapes[0], shapes[1], a):  # the gradient on the grid, the weights reordered, the columns; the
            # columns and the flat padded dX (with its tail); then that and the output
            flat = padded + tail * e
            return max(grid + o * ch * kh * kw * e + cols, cols + flat, flat + out) - out
        # the columns and the padded dX, with numpy's buffers for the three operands of each
        # strided +=; then the padded dX and the output
        add = 3 * ufunc_buffer(ch * n * out_shape[2] * out_shape[3], e)
        return max(grid + cols, cols + padded + add, padded + out) - out
    return 0


register(Op(
    name="conv2d", arity=(2, 3), shape=_conv_shape, attrs={"stride": 1, "padding": 0, "dilation": 1},
    forward=_conv_forward, vjp=_conv_vjp, jvp=_conv_jvp, workspace=_conv_workspace,
    needs=lambda i: ((1,), (0,), ())[i],
    flops=lambda s, o, a: 2 * size(o) * s[1][1] * s[1][2] * s[1][3],
    # dX and dW are each one GEMM the size of the forward's (2*N*OH*OW*C*KH*KW*OC); the bias's a
    # sum of g over batch and pixels
    vjp_flops=lambda i, s, o, a: size(o) if i == 2 else 2 * size(o) * s[1][1] * s[1][2] * s[1][3],
    example={"shapes": [(2, 3, 5, 5), (4, 3, 3, 3), (4,)], "attrs": {"stride": 2, "padding": 1}},
))


# ---- pooling and upsampling over non-overlapping k x k windows ----------------------------------
# Each rule is k*k strided slices x[..., i::k, j::k] (one per window offset), combined elementwise:
# no Python loop over pixels, no reduction over non-contiguous axes, no reshaped copies.
def _pool_shape(op):
    def rule(shapes, a):
        x, k = tuple(shapes[0]), a["kernel"]
        if len(x) != 4 or not isinstance(k, int) or k < 1 or x[2] % k or x[3] % k:
            raise shape_error(op, f"needs (N, C, H, W) with H and W divisible by kernel {k}", shapes)
        return (x[0], x[1], x[2] // k, x[3] // k)
    return rule


def _offsets(k):
    return [(i, j) for i in range(k) for j in range(k)]  # row-major window order


def _maxpool(xp, x, k):
    out = x[:, :, 0::k, 0::k].copy()
    for i, j in _offsets(k)[1:]:
        xp.maximum(out, x[:, :, i::k, j::k], out=out)
    return out


def _maxpool_first(xp, x, out, k):
    """Yields (i, j, hit) for each window offset in row-major order, hit marking the windows whose
    FIRST maximum sits at that offset: PyTorch's convention, where a tie sends the gradient to one
    element, so that the VJP and the JVP are those of one function that picks one input per window.
    `hit` is one buffer, rewritten at each offset."""
    taken = xp.zeros(out.shape, dtype=bool)
    hit = xp.empty(out.shape, dtype=bool)
    for i, j in _offsets(k):
        xp.equal(x[:, :, i::k, j::k], out, out=hit)
        xp.greater(hit, taken, out=hit)  # on booleans: a maximum here, and none at an earlier offset
        taken |= hit
        yield i, j, hit


def _maxpool_vjp(xp, i, g, c):
    k = c.attrs["kernel"]
    dx = xp.zeros(c.in_shapes[0], dtype=g.dtype)
    for r, q, hit in _maxpool_first(xp, c.ins[0], c.out, k):
        xp.copyto(dx[:, :, r::k, q::k], g, where=hit)  # a masked copy: no ufunc buffers
    return dx


def _maxpool_jvp(xp, t, c):
    k = c.attrs["kernel"]
    out = xp.zeros(c.out_shape, dtype=t[0].dtype)
    for r, q, hit in _maxpool_first(xp, c.ins[0], c.out, k):
        xp.copyto(out, t[0][:, :, r::k, q::k], where=hit)
    return out


def _maxpool_workspace(which, shapes, o, a, itemsize):
    # forward: the strided operand of maximum(out, x[..], out=out); VJP: the masks `taken` and
    # `hit` (booleans of the output's shape) and the strided operand of equal(x[..], out)
    strided = ufunc_buffer(size(o), itemsize) if a["kernel"] > 1 else 0
    return strided if which == "forward" else 2 * size(o) + strided


register(Op(
    name="maxpool2d", arity=(1, 1), shape=_pool_shape("maxpool2d"), attrs={"kernel": 2},
    forward=lambda xp, ins, a: _maxpool(xp, ins[0], a["kernel"]),
    vjp=_maxpool_vjp, jvp=_maxpool_jvp, needs=lambda i: (0, OUT), workspace=_maxpool_workspace,
    flops=lambda s, o, a: size(s[0]), example={"shapes": [(2, 3, 4, 6)]},
    vjp_flops=lambda i, s, o, a: 2 * size(s[0]),  # find each window's maximum again, route g to it
))


def _window_sum(xp, x, k):
    """The sum of each k x k window (avgpool's forward, upsampling's VJP)."""
    out = x[:, :, 0::k, 0::k].copy()
    for i, j in _offsets(k)[1:]:
        out += x[:, :, i::k, j::k]
    return out


def _avgpool(xp, x, k):
    out = _window_sum(xp, x, k)
    out *= 1.0 / (k * k)
    return out


def _spread(xp, g, k, scale=None):
    """Each element of g copied to its k x k window (upsampling; avgpool's VJP with scale)."""
    n, ch, h, w = g.shape
    out = xp.empty((n, ch, h * k, w * k), dtype=g.dtype)
    for i, j in _offsets(k):
        out[:, :, i::k, j::k] = g
    if scale is not None:
        out *= scale
    return out


def _window_sum_workspace(n, k, itemsize):
    """_window_sum's strided operand of out += x[..] over its n outputs (spreading needs none)."""
    return ufunc_buffer(n, itemsize) if k > 1 else 0


register(Op(
    name="avgpool2d", arity=(1, 1), shape=_pool_shape("avgpool2d"), attrs={"kernel": 2},
    forward=lambda xp, ins, a: _avgpool(xp, ins[0], a["kernel"]),
    vjp=lambda xp, i, g, c: _spread(xp, g, c.attrs["kernel"], 1.0 / (c.attrs["kernel"] ** 2)),
    jvp=lambda xp, t, c: _avgpool(xp, t[0], c.attrs["kernel"]),
    workspace=lambda which, s, o, a, e: _window_sum_workspace(size(o), a["kernel"], e) if which == "forward" else 0,
    needs=lambda i: (), flops=lambda s, o, a: size(s[0]), example={"shapes": [(2, 3, 4, 6)]},
    vjp_flops=lambda i, s, o, a: size(s[0]) + size(o),  # scale g, spread it over each window
))


def _upsample_shape(shapes, a):
    x, k = tuple(shapes[0]), a["scale"]
    if len(x) != 4 or not isinstance(k, int) or k < 1:
        raise shape_error("upsample2d", "needs (N, C, H, W) and a positive integer scale", shapes)
    return (x[0], x[1], x[2] * k, x[3] * k)


register(Op(
    name="upsample2d", arity=(1, 1), shape=_upsample_shape, attrs={"scale": 2},
    forward=lambda xp, ins, a: _spread(xp, ins[0], a["scale"]),
    vjp=lambda xp, i, g, c: _window_sum(xp, g, c.attrs["scale"]),
    jvp=lambda xp, t, c: _spread(xp, t[0], c.attrs["scale"]),
    workspace=lambda which, s, o, a, e: 0 if which == "forward" else _window_sum_workspace(size(s[0]), a["scale"], e),
    needs=lambda i: (), flops=lambda s, o, a: size(o), example={"shapes": [(2, 3, 2, 3)]},
    vjp_flops=lambda i, s, o, a: size(o),  # sum g over each k x k block
))


# ---- dropout: the mask is a pure function of (seed, node, element), so a recompute redraws it ----
_GOLDEN, _M1, _M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _hash_params(seed, p):
    offset = (seed * _GOLDEN + _GOLDEN) % 2**64  # element k hashes k + offset
    return offset, min(int(p * 2**64), 2**64 - 1)  # kept where the hash >= threshold


def dropout_keep(xp, shape, seed, p):
    """Boolean keep-mask from splitmix64 of each element's index: identical on numpy and cupy.
    Two buffers of 8-byte integers, each step in place (the expression written out allocates one
    per operation: ten passes through the allocator, paid again by each recompute and the VJP)."""
    u64 = xp.uint64
    offset, threshold = _hash_params(seed, p)
    z = xp.arange(size(shape), dtype=u64).reshape(shape)  # so that the mask owns its buffer
    z += u64(offset)
    t = xp.empty_like(z)  # not `z >> 30`: on a 0-d value that is a numpy scalar, which `out=` refuses
    xp.right_shift(z, u64(30), out=t)
    z ^= t
    z *= u64(_M1)
    xp.right_shift(z, u64(27), out=t)
    z ^= t
    z *= u64(_M2)
    xp.right_shift(z, u64(31), out=t)
    z ^= t
    del t
    return z >= u64(threshold)


# The same splitmix64 and product as one kernel where the array module compiles CUDA: the
# array-at-a-time hash above makes ten passes over 8-byte integers per element, which on a GPU costs
# more than the attention matmuls around it. The kernel covers float16 too (it only multiplies).
_HASH_CUDA = """
unsigned long long z = (unsigned long long)i + offset;
z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
z = z ^ (z >> 31);
"""
_DROPOUT_CUDA = _HASH_CUDA + "y = x * (z >= threshold ? scale : (T)0);\n"
_MASK_CUDA = _HASH_CUDA + "m = z >= threshold;\n"
_MASKED_CUDA = "y = x * (m ? scale : (T)0);\n"  # the bits of `_masked` (x * 0 * scale is x * 0)


def _dropout(xp, x, a):
    """x times the keep-mask scaled by 1 / (1 - p), in x's dtype."""
    scale = x.dtype.type(1.0 / (1.0 - a["p"]))
    k = kernel(xp, "ElementwiseKernel", "dropout", "T x, uint64 offset, uint64 threshold, T scale", "T y",
               _DROPOUT_CUDA)
    if k:
        offset, threshold = _hash_params(a["_seed"], a["p"])
        return k(x, xp.uint64(offset), xp.uint64(threshold), scale)
    out = xp.where(dropout_keep(xp, x.shape, a["_seed"], a["p"]), scale, x.dtype.type(0))
    out *= x  # the scaled mask times x, in the mask's buffer: the kernel's bits (scale * x or 0 * x)
    return out


def _masked(xp, x, mask, a):
    """x times a saved keep-mask, then the scale: the bits of `_dropout` (x * 1 * scale, x * 0)."""
    scale = x.dtype.type(1.0 / (1.0 - a["p"]))
    k = kernel(xp, "ElementwiseKernel", "dropout_masked", "T x, bool m, T scale", "T y", _MASKED_CUDA)
    if k:
        return k(x, mask, scale)
    out = xp.multiply(x, mask)
    out *= scale
    return out


def _mask(xp, a):
    """The keep-mask of a dropout node: one kernel where the array module compiles them."""
    shape = tuple(a["shape"])
    k = kernel(xp, "ElementwiseKernel", "dropout_mask", "uint64 offset, uint64 threshold", "bool m", _MASK_CUDA)
    if k:
        offset, threshold = _hash_params(a["_seed"], a["p"])
        return k(xp.uint64(offset), xp.uint64(threshold), xp.empty(shape, dtype=bool))
    return dropout_keep(xp, shape, a["_seed"], a["p"])


def _dropout_rule(xp, x, ins, a):
    return _masked(xp, x, ins[1], a) if len(ins) == 2 else _dropout(xp, x, a)


def _dropout_shape(shapes, a):
    if not 0.0 <= a["p"] < 1.0:
        raise ShapeError(f"dropout: p must be in [0, 1), got {a['p']}")
    if len(shapes) == 2 and tuple(shapes[1]) != tuple(shapes[0]):
        raise shape_error("dropout", "the saved mask must have x's shape", shapes)
    return tuple(shapes[0])


def _dropout_workspace(which, s, o, a, itemsize):
    """The hash holds two 8-byte integers per element, then the boolean mask beside the scaled mask
    (the output, x multiplied into it in place); the forward and the VJP are the same rule. With a
    saved mask: one product, the booleans cast through numpy's buffer."""
    n = size(o)
    if len(s) == 2:
        return iter_buffer(n, itemsize)
    return max(16 * n, n + n * itemsize) - n * itemsize


# The model graph gives each dropout node its mask as a value of its own (a `dropout_mask` node, one
# byte an element, as PyTorch saves it), so that the VJP reads it instead of drawing it again; the
# planner may still drop it and draw it again, from nothing but the seed.
register(Op(
    name="dropout", arity=(1, 1), shape=_dropout_shape, attrs={"p": 0.1, "_seed": 0},
    forward=lambda xp, ins, a: _dropout_rule(xp, ins[0], ins, a),
    vjp=lambda xp, i, g, c: _dropout_rule(xp, g, c.ins, c.attrs),
    jvp=lambda xp, t, c: _dropout_rule(xp, t[0], c.ins, c.attrs),
    needs=lambda i: (1,), flops=lambda s, o, a: (2 if len(s) == 2 else 12) * size(o),
    vjp_flops=lambda i, s, o, a: (2 if len(s) == 2 else 12) * size(o),  # the same product with g
    workspace=_dropout_workspace,
    residual=lambda s, a: ("dropout_mask", (), {"shape": tuple(s[0]), "p": a["p"], "_seed": a["_seed"]}),
    example={"shapes": [(4, 8)], "attrs": {"p": 0.25, "_seed": 7}},
))


def _mask_workspace(which, s, o, a, itemsize):
    """The hash's two arrays of 8-byte integers, before the booleans are taken from them."""
    return 15 * size(o)


register(Op(
    name="dropout_mask", arity=(0, 0), attrs={"shape": (), "p": 0.1, "_seed": 0}, differentiable=False,
    dtype="bool", internal=True, shape=lambda s, a: tuple(a["shape"]),
    forward=lambda xp, ins, a: _mask(xp, a),
    vjp=None, jvp=None, needs=lambda i: (), flops=lambda s, o, a: 10 * size(o),
    workspace=_mask_workspace,
    example={"shapes": [], "attrs": {"shape": (4, 8), "p": 0.25, "_seed": 7}},
))


# ---- losses ------------------------------------------------------------------------------------
def _mse_shape(shapes, a):
    if tuple(shapes[0]) != tuple(shapes[1]):
        raise shape_error("mse", "prediction and target shapes differ", shapes)
    return ()


register(Op(
    name="mse", arity=(2, 2), shape=_mse_shape,
    forward=lambda xp, ins, a: ((ins[0] - ins[1]) ** 2).mean(),
    vjp=lambda xp, i, g, c: (c.ins[0] - c.ins[1]) * (g * ((2.0 if i == 0 else -2.0) / size(c.in_shapes[0]))),
    jvp=lambda xp, t, c: (2.0 * (c.ins[0] - c.ins[1]) * (t[0] - t[1])).mean(),
    needs=lambda i: (0, 1), flops=lambda s, o, a: 3 * size(s[0]),
    vjp_flops=lambda i, s, o, a: 2 * size(s[0]),  # the difference, times the scaled g
    # the forward holds the difference and its square, the VJP the difference
    workspace=lambda w, s, o, a, itemsize: size(s[0]) * itemsize * (2 if w == "forward" else 1),
    example={"shapes": [(3, 4), (3, 4)]},
))


def _xent_shape(shapes, a):
    logits, labels = tuple(shapes[0]), tuple(shapes[1])
    if len(logits) < 1 or logits[:-1] != labels:
        raise shape_error("softmax_cross_entropy", "needs logits (..., classes) and labels (...)", shapes)
    return ()


def _onehot(xp, labels, classes, dtype):
    return (labels[..., None] == xp.arange(classes)).astype(dtype)


def _xent_forward(xp, ins, a):
    logp = _log_softmax(xp, ins[0], -1)
    picked = xp.take_along_axis(logp, ins[1][..., None].astype(xp.int64), axis=-1)
    return -picked.mean()


def _xent_vjp(xp, i, g, c):
    logits = c.ins[0]
    n = size(c.in_shapes[1])
    p = _softmax(xp, logits, -1)
    p -= _onehot(xp, c.ins[1], logits.shape[-1], logits.dtype)
    p *= g * (1.0 / n)
    return p


def _xent_jvp(xp, t, c):
    logits = c.ins[0]
    p = _softmax(xp, logits, -1)
    tl = t[0] - (p * t[0]).sum(axis=-1, keepdims=True)
    return -(tl * _onehot(xp, c.ins[1], logits.shape[-1], logits.dtype)).sum(axis=-1).mean()


def _xent_workspace(which, s, o, a, itemsize):
    """The forward: log_softmax's temporaries beside its result, then the labels as int64 and the
    picked entries. The VJP: softmax's temporaries beside p, then the one-hot comparison (labels
    against arange, both broadcast: two buffers of int64) as booleans, then their float copy."""
    n = size(s[0])
    rows = size(s[1])
    if which == "forward":
        return n * itemsize + _log_softmax_workspace(which, s, s[0], {"axis": -1}, itemsize) + rows * (8 + itemsize)
    soft = _softmax_workspace(which, s, s[0], {"axis": -1}, itemsize)
    onehot = max(2 * iter_buffer(n, 8) + s[0][-1] * 8 + n, n + n * itemsize)
    return max(soft, onehot)


register(Op(
    name="softmax_cross_entropy", arity=(2, 2), shape=_xent_shape,
    forward=_xent_forward, vjp=_xent_vjp, jvp=_xent_jvp,
    needs=lambda i: (0, 1), flops=lambda s, o, a: 6 * size(s[0]), int_inputs=(1,),
    labels_below=lambda s: s[0][-1],  # a class
    # the logits' gradient: softmax again (5), minus the one-hot (2: compare, subtract), times g;
    # the labels take no gradient
    vjp_flops=lambda i, s, o, a: 8 * size(s[0]) if i == 0 else 0,
    workspace=_xent_workspace,
    example={"shapes": [(3, 5), (3,)]},
))


# ---- nll: the negative log-likelihood of integer labels, with class weights and an ignored label --
# PyTorch's nll_loss (and cross_entropy as log_softmax, then this): row r of log-probabilities logp
# (..., C) with label t_r counts w_r = weight[t_r] (1 without weights), 0 where t_r is ignore_index
# (padding, -100); the loss is -sum_r w_r logp[r, t_r], divided by sum_r w_r when `average`
# (reduction='mean'; every row ignored: 0 / 0, NaN, as in PyTorch) and not when summed. The VJP
# for logp reads only the labels and the weights: the log-probabilities are not kept for it.
# (PyTorch gives the weights no gradient; the front end passes them through stop_gradient where
# they are not constants. Their VJP here is the true derivative.)
def _nll_shape(shapes, a):
    logp, labels = tuple(shapes[0]), tuple(shapes[1])
    if len(logp) < 1 or logp[:-1] != labels:
        raise shape_error("nll", "needs log-probabilities (..., classes) and labels (...)", shapes)
    if len(shapes) == 3 and tuple(shapes[2]) != logp[-1:]:
        raise shape_error("nll", "needs class weights of shape (classes,)", shapes)
    return ()


def _nll_rows(xp, ins, classes, a, dtype):
    """(each row's label, an ignored row's made 0; the rows kept, None where none is ignored;
    each row's weight w_r; each label's position in the flattened logp)."""
    labels = ins[1].reshape(-1).astype(xp.int64)  # a copy: the ignored rows are rewritten
    keep = None if a["ignore_index"] is None else labels != a["ignore_index"]
    if keep is not None:
        labels *= keep
    w = ins[2].reshape(-1)[labels] if len(ins) == 3 else xp.ones(labels.shape, dtype=dtype)
    if keep is not None:
        w *= keep
    flat = xp.arange(0, labels.size * classes, classes, dtype=xp.int64)
    flat += labels
    return labels, keep, w, flat


def _nll_forward(xp, ins, a):
    _, _, w, flat = _nll_rows(xp, ins, ins[0].shape[-1], a, ins[0].dtype)
    picked = xp.take(ins[0].reshape(-1), flat)
    picked *= w
    total = -picked.sum()
    return total / w.sum() if a["average"] else total


def _nll_vjp(xp, i, g, c):
    if i == 1:  # the labels: no gradient
        return xp.zeros(tuple(c.in_shapes[1]), dtype=g.dtype)
    labels, keep, w, flat = _nll_rows(xp, c.ins, c.in_shapes[0][-1], c.attrs, g.dtype)
    if i == 0:
        w *= -g / w.sum() if c.attrs["average"] else -g
        dx = xp.zeros(tuple(c.in_shapes[0]), dtype=g.dtype)
        dx.reshape(-1)[flat] = w  # one label per row: each position is written once
        return dx
    # the weights: row r adds -logp_r (sum), or (-logp_r - loss) / sum_r w_r (mean), to its class
    per = -xp.take(c.ins[0].reshape(-1), flat)
    if c.attrs["average"]:
        total = w.sum()
        per -= (per * w).sum() / total  # (per * w).sum() / total is the loss
        per /= total
    if keep is not None:
        per *= keep
    dw = xp.zeros(tuple(c.in_shapes[2]), dtype=g.dtype)
    xp.add.at(dw, labels, per * g)
    return dw


def _nll_jvp(xp, t, c):
    labels, keep, w, flat = _nll_rows(xp, c.ins, c.in_shapes[0][-1], c.attrs, t[0].dtype)
    lp = xp.take(c.ins[0].reshape(-1), flat)
    dnum = -(xp.take(t[0].reshape(-1), flat) * w).sum()
    if len(t) == 3:
        tw = t[2].reshape(-1)[labels] * keep if keep is not None else t[2].reshape(-1)[labels]
        dnum = dnum - (lp * tw).sum()
    if not c.attrs["average"]:
        return dnum
    total = w.sum()
    loss = -(lp * w).sum() / total
    return (dnum - loss * tw.sum()) / total if len(t) == 3 else dnum / total


def _nll_workspace(which, s, o, a, itemsize):
    """Every rule holds the labels and their flat positions (int64 each), the kept rows' mask (a
    byte a row, with ignore_index) and the rows' weights; beside them the forward holds the picked
    log-probabilities, the weights' VJP the picked ones, their product with the weights and the
    contribution of each row (a row each)."""
    rows = size(s[1])
    held = 16 * rows + (rows if a["ignore_index"] is not None else 0) + rows * itemsize
    return held + rows * itemsize * {"forward": 1, 0: 0}.get(which, 3)


register(Op(
    name="nll", arity=(2, 3), shape=_nll_shape, attrs={"ignore_index": None, "average": True},
    forward=_nll_forward, vjp=_nll_vjp, jvp=_nll_jvp,
    needs=lambda i: ((1, 2), (), (0, 1, 2))[i], flops=lambda s, o, a: 3 * size(s[1]), int_inputs=(1,),
    labels_below=lambda s: s[0][-1],  # a class (ignore_index aside)
    # zero dx and write a row each; the weights': a few operations a row
    vjp_flops=lambda i, s, o, a: (size(s[0]) + 3 * size(s[1]), 0, 6 * size(s[1]))[i],
    workspace=_nll_workspace,
    example={"shapes": [(3, 5), (3,), (5,)], "attrs": {"ignore_index": 2}},
))
