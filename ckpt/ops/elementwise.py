"""Elementwise ops: broadcasting binaries and unary maps. One block per op."""

import math

from . import OUT, Op, broadcast_shapes, compiles, iter_buffer, kernel, register, size, unbroadcast


def _same_shape(op):
    def rule(shapes, attrs):
        return tuple(shapes[0])
    return rule


def _ew_flops(k):
    return lambda shapes, out, attrs: k * size(out)


def _ew_vjp_flops(k):
    """A VJP of k operations per element of the output, the same for every input."""
    return lambda i, shapes, out, attrs: k * size(out)


def _unary_workspace(fwd, vjp):
    """`fwd` and `vjp` are the temporaries of the forward and the VJP in outputs' worth of bytes
    (sigmoid's forward holds tanh(x / 2) and its sum with 1; log's VJP 1 / x), or a function of
    (elements, itemsize) where a rule's temporaries are not whole outputs."""
    def rule(which, shapes, out, attrs, itemsize):
        k = fwd if which == "forward" else vjp
        return k(size(out), itemsize) if callable(k) else k * size(out) * itemsize
    return rule


def unary(name, f, df, needs, k=1, positive=False, vjp=None, vk=1, ws=(0, 0)):
    """A unary map y = f(x) whose derivative `df(xp, x, y)` reads x, y or neither (`needs`);
    `vjp(xp, g, x, y)`, where given, computes g * df in one go. `k` and `vk` are the forward's
    and the VJP's operations per element (the VJP: computing df, then the product with g); `ws`
    their temporaries (see _unary_workspace)."""
    if vjp is None:
        def vjp(xp, g, x, y):
            return g * df(xp, x, y)
    register(Op(
        name=name, arity=(1, 1), shape=_same_shape(name),
        forward=lambda xp, ins, a: f(xp, ins[0]),
        vjp=lambda xp, i, g, c: vjp(xp, g, c.ins[0], c.out),
        jvp=lambda xp, t, c: t[0] * df(xp, c.ins[0], c.out),
        needs=lambda i: needs, flops=_ew_flops(k), vjp_flops=_ew_vjp_flops(vk),
        workspace=_unary_workspace(*ws),
        example={"shapes": [(3, 4)], "positive": positive},
    ))


# ---- unary maps --------------------------------------------------------------------------------
unary("neg", lambda xp, x: -x, lambda xp, x, y: -1.0, needs=())
unary("exp", lambda xp, x: xp.exp(x), lambda xp, x, y: y, needs=(OUT,))
unary("log", lambda xp, x: xp.log(x), lambda xp, x, y: 1.0 / x, needs=(0,), positive=True, vk=2, ws=(0, 1))
unary("sin", lambda xp, x: xp.sin(x), lambda xp, x, y: xp.cos(x), needs=(0,), vk=2, ws=(0, 1))
unary("cos", lambda xp, x: xp.cos(x), lambda xp, x, y: -xp.sin(x), needs=(0,), vk=3, ws=(0, 1))
unary("tanh", lambda xp, x: xp.tanh(x), lambda xp, x, y: 1.0 - y * y, needs=(OUT,), vk=3, ws=(0, 1))
unary("sigmoid", lambda xp, x: 0.5 * (xp.tanh(0.5 * x) + 1.0), lambda xp, x, y: y * (1.0 - y), needs=(OUT,), k=4, vk=3,
      ws=(1, 1))
unary("relu", lambda xp, x: xp.maximum(x, 0), lambda xp, x, y: y > 0, needs=(OUT,), vk=2,
      vjp=lambda xp, g, x, y: g * (y > 0),  # one call fewer per step than g * df(...)
      ws=(0, lambda n, itemsize: n + iter_buffer(n, itemsize)))  # the boolean mask, cast in chunks

_C = math.sqrt(2.0 / math.pi)


_GELU_TANH_ARG = f"(T){_C!r} * (x + (T)0.044715 * x * x * x)"  # the same formulas as one kernel each


def _gelu(xp, x):  # the tanh approximation used by GPT-2
    k = kernel(xp, "ElementwiseKernel", "gelu", "T x", "T y",
               f"y = (T)0.5 * x * ((T)1 + tanh({_GELU_TANH_ARG}))", dtype=x.dtype)
    if k:
        return k(x)
    # 0.5 x (1 + tanh(C x (1 + 0.044715 x^2))), built in place in the one output buffer: the
    # expression written out allocates a temporary per operation (into a buffer, not `x * x`: on a
    # 0-d value that is a numpy scalar, which `out=` below refuses)
    y = xp.multiply(x, x, out=xp.empty_like(x))
    y *= 0.044715
    y += 1.0
    y *= x
    y *= _C
    xp.tanh(y, out=y)
    y += 1.0
    y *= x
    y *= 0.5
    return y


def _dgelu(xp, x, y):
    t = xp.tanh(_C * (x + 0.044715 * x * x * x))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _C * (1.0 + 3 * 0.044715 * x * x)


_GELU_VJP_BODY = (f"T t = tanh({_GELU_TANH_ARG}); "
                  f"dx = g * ((T)0.5 * ((T)1 + t) + (T)0.5 * x * ((T)1 - t * t) * (T){_C!r} * "
                  f"((T)1 + (T){3 * 0.044715!r} * x * x))")


def _gelu_vjp(xp, g, x, y):
    k = kernel(xp, "ElementwiseKernel", "gelu_vjp", "T x, T g", "T dx", _GELU_VJP_BODY, dtype=x.dtype)
    if k:
        return k(x, g)
    # _dgelu = 0.5 (1 + t) + a (1 - t)(1 + t) with a = 0.5 C x (1 + 3 * 0.044715 x^2), that is
    # (1 + t)(0.5 + a (2 - (1 + t))): three buffers (a, 1 + t, the result), each built in place
    a = xp.multiply(x, x, out=xp.empty_like(x))  # into buffers, not `x * x`: see _gelu
    tp = xp.multiply(a, 0.044715, out=xp.empty_like(a))
    tp += 1.0
    tp *= x
    tp *= _C
    xp.tanh(tp, out=tp)
    tp += 1.0
    a *= 3 * 0.044715
    a += 1.0
    a *= x
    a *= 0.5 * _C
    dx = 2.0 - tp
    dx *= a
    del a
    dx += 0.5
    dx *= tp
    dx *= g
    return dx


unary("gelu", _gelu, _dgelu, needs=(0,), k=8, vjp=_gelu_vjp, vk=16, ws=(0, 2))


# The exact GELU, x Phi(x) with Phi(x) = (1 + erf(x / sqrt 2)) / 2: nn.GELU()'s default (BERT, ViT,
# nn.TransformerEncoderLayer). numpy has no erf: scipy's ufunc (a dependency) on numpy, CUDA's erf
# in a kernel on cupy.
_R2, _RPI2 = 1.0 / math.sqrt(2.0), 1.0 / math.sqrt(2.0 * math.pi)


def _erf_ufunc():
    from scipy.special import erf
    return erf


def _gelu_erf(xp, x):
    k = kernel(xp, "ElementwiseKernel", "gelu_erf", "T x", "T y",
               f"y = (T)0.5 * x * ((T)1 + erf(x * (T){_R2!r}))", dtype=x.dtype)
    if k:
        return k(x)
    y = xp.multiply(x, _R2, out=xp.empty_like(x))  # built in place in the output buffer (see _gelu)
    _erf_ufunc()(y, out=y)
    y += 1.0
    y *= x
    y *= 0.5
    return y


def _dgelu_erf(xp, x, y):
    return 0.5 * (1.0 + _erf_ufunc()(x * _R2)) + x * _RPI2 * xp.exp(-0.5 * x * x)


def _gelu_erf_vjp(xp, g, x, y):
    k = kernel(xp, "ElementwiseKernel", "gelu_erf_vjp", "T x, T g", "T dx",
               f"dx = g * ((T)0.5 * ((T)1 + erf(x * (T){_R2!r})) + x * (T){_RPI2!r} * exp((T)-0.5 * x * x))",
               dtype=x.dtype)
    if k:
        return k(x, g)
    # Phi(x) + x phi(x), in two buffers: the result and the density term
    d = xp.multiply(x, _R2, out=xp.empty_like(x))
    _erf_ufunc()(d, out=d)
    d += 1.0
    d *= 0.5
    p = xp.multiply(x, x, out=xp.empty_like(x))
    p *= -0.5
    xp.exp(p, out=p)
    p *= x
    p *= _RPI2
    d += p
    del p
    d *= g
    return d


unary("gelu_erf", _gelu_erf, _dgelu_erf, needs=(0,), k=6, vjp=_gelu_erf_vjp, vk=14, ws=(0, 1))


def _scale_vjp(xp, i, g, c):
    return scaled(xp, g, c.attrs["factor"])


register(Op(
    name="scale", arity=(1, 1), shape=_same_shape("scale"), attrs={"factor": 1.0},
    forward=lambda xp, ins, a: scaled(xp, ins[0], a["factor"]), vjp=_scale_vjp,
    jvp=lambda xp, t, c: t[0] * c.attrs["factor"], needs=lambda i: (), flops=_ew_flops(1),
    vjp_flops=_ew_vjp_flops(1),
    example={"shapes": [(3, 4)], "attrs": {"factor": 0.5}},
))


# ---- stop_gradient: x itself, through which no gradient flows back (torch's detach) -------------
# Not differentiable: the model graph gives its output no gradient, so its consumers send it none
# and it sends none on (a DQN's target, a stabilising shift held constant). The forward's view is
# made to own its buffer by the executor, as reshape's is.
register(Op(
    name="stop_gradient", arity=(1, 1), shape=_same_shape("stop_gradient"), differentiable=False,
    forward=lambda xp, ins, a: ins[0].reshape(ins[0].shape),
    vjp=lambda xp, i, g, c: xp.zeros(tuple(c.in_shapes[0]), dtype=g.dtype),
    jvp=lambda xp, t, c: xp.zeros(tuple(c.out_shape), dtype=t[0].dtype),
    needs=lambda i: (), flops=lambda s, o, a: 0, vjp_flops=lambda i, s, o, a: 0,
    example={"shapes": [(3, 4)]},
))


# ---- broadcasting binaries ---------------------------------------------------------------------
# On a GPU, + - * and a scale by a constant run as ckpt's kernels (16 bytes per load: see
# ops.VectorKernel), the same IEEE operation as the array module's, so the same bits.
_ARITH_CUDA = {"add": "y = a + b", "sub": "y = a - b", "mul": "y = a * b"}
_UFUNCS = {"add": "add", "sub": "subtract", "mul": "multiply"}


def arith(xp, name, a, b, out=None):
    """a + b, a - b or a * b (`name`), into `out` when given (which may be a; use the result, as
    after `+=`): by the kernel where one compiles and both are arrays of one float dtype, else by
    the array module's operator."""
    if compiles(xp) and getattr(b, "dtype", None) == a.dtype:
        k = kernel(xp, "ElementwiseKernel", name, "T a, T b", "T y", _ARITH_CUDA[name], dtype=a.dtype)
        if k:
            return k(a, b) if out is None else k(a, b, out)
    f = getattr(xp, _UFUNCS[name])
    # (numpy makes a 0-d result a scalar, which cannot be written into: a new one, as `+=` does)
    return f(a, b) if out is None or not isinstance(out, xp.ndarray) else f(a, b, out=out)


def scaled(xp, x, factor):
    """x * factor, factor a Python number (in x's dtype, as numpy's operator takes it)."""
    k = kernel(xp, "ElementwiseKernel", "scale", "T x, T f", "T y", "y = x * f", dtype=x.dtype)
    return k(x, factor) if k else x * factor


def _binary_vjp_flops(k):
    """k operations per output element for input i (k[i]), and a reduction over the output where
    input i was broadcast (unbroadcast sums the gradient back down to its shape)."""
    def rule(i, shapes, out, attrs):
        return (k[i] + (tuple(shapes[i]) != tuple(out))) * size(out)
    return rule


def _binary_workspace(prod):
    """`prod(i, bcast)` -> (k, buffered): the VJP for input i holds k outputs' worth of bytes
    before the sum over broadcast dimensions (0 where it passes g on), and `buffered` says whether
    it multiplies by a broadcast operand, which numpy iterates through a buffer; bcast[j]: input j
    is broadcast. The forward buffers each broadcast input."""
    def rule(which, shapes, out, attrs, itemsize):
        n, o = size(out), size(out) * itemsize
        bcast = [tuple(s) != tuple(out) and size(s) > 1 for s in shapes]
        if which == "forward":
            return iter_buffer(n, itemsize) * sum(bcast)
        i = which
        k, buffered = prod(i, bcast)
        held = k * o + (iter_buffer(n, itemsize) if buffered else 0)
        if tuple(shapes[i]) == tuple(out):
            return max(held - o, 0)
        mine = size(shapes[i]) * itemsize  # the sum (keepdims), then the copy its reshape needs
        return max(held, k * o + mine, 2 * mine) - mine
    return rule


def binary(name, f, vjp, jvp, needs, vk, ws, positive=False):
    register(Op(
        name=name, arity=(2, 2), shape=lambda shapes, a: broadcast_shapes(name, shapes),
        forward=lambda xp, ins, a: f(xp, ins[0], ins[1]),
        vjp=lambda xp, i, g, c: unbroadcast(xp, vjp(xp, i, g, c), c.in_shapes[i]),
        jvp=jvp, needs=lambda i: needs[i], flops=_ew_flops(1), vjp_flops=_binary_vjp_flops(vk),
        workspace=_binary_workspace(ws),
        example={"shapes": [(3, 4), (4,)], "positive": positive},
    ))


binary("add", lambda xp, a, b: arith(xp, "add", a, b),
       lambda xp, i, g, c: g,
       lambda xp, t, c: t[0] + t[1], needs=((), ()), vk=(0, 0),
       ws=lambda i, b: (0, False))
binary("sub", lambda xp, a, b: arith(xp, "sub", a, b),
       lambda xp, i, g, c: g if i == 0 else -g,
       lambda xp, t, c: t[0] - t[1], needs=((), ()), vk=(0, 1),
       ws=lambda i, b: (i, False))  # -g
binary("mul", lambda xp, a, b: arith(xp, "mul", a, b),
       lambda xp, i, g, c: arith(xp, "mul", g, c.ins[1 - i]),
       lambda xp, t, c: t[0] * c.ins[1] + c.ins[0] * t[1], needs=((1,), (0,)), vk=(1, 1),
       ws=lambda i, b: (1, b[1 - i]))
binary("div", lambda xp, a, b: a / b,
       lambda xp, i, g, c: g / c.ins[1] if i == 0 else -g * c.out / c.ins[1],
       lambda xp, t, c: (t[0] - c.out * t[1]) / c.ins[1], needs=((1,), (1, OUT)), vk=(1, 3),
       ws=lambda i, b: (1 + i, b[1]), positive=True)  # g / b; -g and -g * out, / b


