"""Hand-written numpy steps: the baseline every implementation of AD is measured against.

Each is the forward and backward pass of one model family written out by hand, as a person would
without an AD tool (every derivative worked out on paper, every intermediate kept: store-all). They
read the same leaf arrays as the model (by the config's names) and return (loss, {leaf: gradient}).
`ckpt impl` checks each against the interpreter before timing it.
"""

import math

import numpy as np

from ..model.graph import node_seed


# ---- the seed example, repeated (examples/seed.py:seed_chain) ------------------------------------------
def seed_chain(leaves, g):
    x1, x2 = leaves["x1"], leaves["x2"]
    n = 1 + sum(1 for v in g.graph["order"] if g.nodes[v]["op"] == "sigmoid")
    sin2, cos2 = np.sin(x2), np.cos(x2)
    a = [x1]
    s = []
    y = np.log(x1) + x1 * x2 - sin2
    for _ in range(n - 1):
        sk = 0.5 * (np.tanh(0.5 * y) + 1.0)
        s.append(sk)
        a.append(x1 + sk)
        y = np.log(a[-1]) + a[-1] * x2 - sin2
    dy = np.ones_like(y)
    dx1 = np.zeros_like(x1)
    dx2 = np.zeros_like(x2)
    for k in range(n - 1, -1, -1):
        da = dy * (1.0 / a[k] + x2)
        dx2 = dx2 + dy * (a[k] - cos2)
        dx1 = dx1 + da
        if k:
            dy = da * s[k - 1] * (1.0 - s[k - 1])
    return float(y), {"x1": dx1, "x2": dx2}


# ---- mlp_deep: L x (linear + relu), mse (configs/mlp_deep.yaml; examples/mlp.py names W0, b0, ...) -----
def mlp(leaves, g):
    names = [(f"body.{i}.W", f"body.{i}.b") for i in range(len(g.graph["order"]))]
    if "W0" in leaves:
        names = [(f"W{i}", f"b{i}") for i in range(len(g.graph["order"]))]
    layers = [(leaves[w], leaves[b]) for w, b in names if w in leaves]
    acts = [leaves["x"]]
    for W, b in layers:
        h = acts[-1] @ W
        h += b
        acts.append(np.maximum(h, 0))
    diff = acts[-1] - leaves["y"]
    loss = float((diff * diff).mean())
    d = diff * (2.0 / diff.size)
    grads = {}
    for k in range(len(layers) - 1, -1, -1):
        dh = d * (acts[k + 1] > 0)
        grads[names[k][0]] = acts[k].T @ dh
        grads[names[k][1]] = dh.sum(axis=0)
        if k:
            d = dh @ layers[k][0].T
    return loss, grads


# ---- gpt_small: pre-norm transformer blocks, dropout on attention, softmax cross-entropy -------------
_GOLDEN, _M1, _M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _keep(shape, seed, p):
    """The dropout mask of node seed `seed`: splitmix64 of each element's index (so it is the mask
    the model's dropout op draws)."""
    u = np.uint64
    z = np.arange(int(np.prod(shape)), dtype=u) + u((seed * _GOLDEN + _GOLDEN) % 2**64)
    z = (z ^ (z >> u(30))) * u(_M1)
    z = (z ^ (z >> u(27))) * u(_M2)
    z = z ^ (z >> u(31))
    return (z >= u(min(int(p * 2**64), 2**64 - 1))).reshape(shape)


def _ln(x, gamma, beta, eps=1e-5):
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    rstd = 1.0 / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)
    xhat = xc * rstd
    return xhat * gamma + beta, (xhat, rstd)


def _ln_back(dy, gamma, saved):
    xhat, rstd = saved
    rows = dy.reshape(-1, dy.shape[-1])
    dgamma = (rows * xhat.reshape(rows.shape)).sum(axis=0)
    dbeta = rows.sum(axis=0)
    dxhat = dy * gamma
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, dgamma, dbeta


_C = math.sqrt(2.0 / math.pi)  # a Python float: it keeps float32 arrays float32 (NEP 50)


def _mm(a, w):  # (..., k) @ (k, n) as one 2-D product
    return (a.reshape(-1, a.shape[-1]) @ w).reshape(a.shape[:-1] + (w.shape[1],))


def _wgrad(a, d):  # a^T d over all leading axes
    return a.reshape(-1, a.shape[-1]).T @ d.reshape(-1, d.shape[-1])


def gpt(leaves, g):
    """The forward and backward of configs/gpt_small.yaml (any dims)."""
    B, T, V = leaves["tokens"].shape
    n_layers = sum(1 for v in g.graph["order"] if v.endswith(".ln1"))
    blocks = [{k: leaves[f"body.{i}.{k}"] for k in ("ln1_g", "ln1_b", "w_q", "w_k", "w_v", "w_o", "b_o", "ln2_g",
                                                    "ln2_b", "w_fc", "b_fc", "w_proj", "b_proj")}
              for i in range(n_layers)]
    H = g.nodes["body.0.q4"]["shape"][2]
    factor = g.nodes["body.0.scaled"]["attrs"]["factor"]
    p = g.nodes["body.0.drop"]["attrs"]["p"]
    seeds = [node_seed(g.graph["seed"], f"body.{i}.drop") for i in range(n_layers)]
    D = leaves["w_in"].shape[1]
    hd = D // H
    dt = leaves["w_in"].dtype
    inv_keep = dt.type(1.0 / (1.0 - p))

    x = _mm(leaves["tokens"], leaves["w_in"]) + leaves["pos"]
    saved = []
    for blk, seed in zip(blocks, seeds):
        ln1, s1 = _ln(x, blk["ln1_g"], blk["ln1_b"])
        q = _mm(ln1, blk["w_q"]).reshape(B, T, H, hd).transpose(0, 2, 1, 3)
        k = _mm(ln1, blk["w_k"]).reshape(B, T, H, hd).transpose(0, 2, 1, 3)
        v = _mm(ln1, blk["w_v"]).reshape(B, T, H, hd).transpose(0, 2, 1, 3)
        s = (q @ k.transpose(0, 1, 3, 2)) * factor + leaves["mask"]
        s -= s.max(axis=-1, keepdims=True)
        P = np.exp(s)
        P /= P.sum(axis=-1, keepdims=True)
        mask = _keep(P.shape, seed, p).astype(dt) * inv_keep
        Pd = P * mask
        ctx = (Pd @ v).transpose(0, 2, 1, 3).reshape(B, T, D)
        r1 = x + _mm(ctx, blk["w_o"]) + blk["b_o"]
        ln2, s2 = _ln(r1, blk["ln2_g"], blk["ln2_b"])
        fc = _mm(ln2, blk["w_fc"]) + blk["b_fc"]
        t = np.tanh(_C * (fc + 0.044715 * fc * fc * fc))
        act = 0.5 * fc * (1.0 + t)
        x_next = r1 + _mm(act, blk["w_proj"]) + blk["b_proj"]
        saved.append((ln1, s1, q, k, v, P, mask, Pd, ctx, r1, ln2, s2, fc, t, act))
        x = x_next
    lnf, sf = _ln(x, leaves["lnf_g"], leaves["lnf_b"])
    logits = _mm(lnf, leaves["w_out"])
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    probs = e / e.sum(axis=-1, keepdims=True)
    targets = leaves["targets"].astype(np.int64)
    picked = np.take_along_axis(z - np.log(e.sum(axis=-1, keepdims=True)), targets[..., None], axis=-1)
    loss = float(-picked.mean())

    grads = {}
    dlogits = probs
    np.put_along_axis(dlogits, targets[..., None], np.take_along_axis(dlogits, targets[..., None], axis=-1) - 1, -1)
    dlogits *= dt.type(1.0 / (B * T))
    grads["w_out"] = _wgrad(lnf, dlogits)
    dx, grads["lnf_g"], grads["lnf_b"] = _ln_back(_mm(dlogits, leaves["w_out"].T), leaves["lnf_g"], sf)
    for i in range(n_layers - 1, -1, -1):
        blk, (ln1, s1, q, k, v, P, mask, Pd, ctx, r1, ln2, s2, fc, t, act) = blocks[i], saved[i]
        pre = f"body.{i}."
        grads[pre + "w_proj"] = _wgrad(act, dx)
        grads[pre + "b_proj"] = dx.reshape(-1, D).sum(axis=0)
        dact = _mm(dx, blk["w_proj"].T)
        dfc = dact * (0.5 * (1.0 + t) + 0.5 * fc * (1.0 - t * t) * _C * (1.0 + 3 * 0.044715 * fc * fc))
        grads[pre + "w_fc"] = _wgrad(ln2, dfc)
        grads[pre + "b_fc"] = dfc.reshape(-1, dfc.shape[-1]).sum(axis=0)
        dln2, grads[pre + "ln2_g"], grads[pre + "ln2_b"] = _ln_back(_mm(dfc, blk["w_fc"].T), blk["ln2_g"], s2)
        dr1 = dx + dln2
        grads[pre + "w_o"] = _wgrad(ctx, dr1)
        grads[pre + "b_o"] = dr1.reshape(-1, D).sum(axis=0)
        dctx = _mm(dr1, blk["w_o"].T).reshape(B, T, H, hd).transpose(0, 2, 1, 3)
        dPd = dctx @ v.transpose(0, 1, 3, 2)
        dv = Pd.transpose(0, 1, 3, 2) @ dctx
        dP = dPd * mask
        ds = P * (dP - (dP * P).sum(axis=-1, keepdims=True))
        ds *= factor
        dq = ds @ k
        dk = ds.transpose(0, 1, 3, 2) @ q
        dq, dk, dv = (a.transpose(0, 2, 1, 3).reshape(B, T, D) for a in (dq, dk, dv))
        grads[pre + "w_q"] = _wgrad(ln1, dq)
        grads[pre + "w_k"] = _wgrad(ln1, dk)
        grads[pre + "w_v"] = _wgrad(ln1, dv)
        dln1 = _mm(dq, blk["w_q"].T) + _mm(dk, blk["w_k"].T) + _mm(dv, blk["w_v"].T)
        dx1, grads[pre + "ln1_g"], grads[pre + "ln1_b"] = _ln_back(dln1, blk["ln1_g"], s1)
        dx = dr1 + dx1
    grads["pos"] = dx.sum(axis=0)
    grads["w_in"] = _wgrad(leaves["tokens"], dx)
    return loss, grads


STEPS = {"seed_chain": seed_chain, "mlp_deep": mlp, "mlp": mlp, "gpt_small": gpt}


def for_model(g):
    """The hand-written step for graph g's model family (by its name), or None."""
    return STEPS.get(g.graph["name"])
