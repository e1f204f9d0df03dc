"""Three ordinary PyTorch models for the bridge tests (`ckpt import tests/torch_models.py:gpt ...`).
Each forward returns the loss. float64, so that ckpt and PyTorch agree to round-off."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class MLPBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return torch.relu(self.fc(x))


class MLP(nn.Module):
    def __init__(self, d=32, depth=16):
        super().__init__()
        self.blocks = nn.Sequential(*[MLPBlock(d) for _ in range(depth)])

    def forward(self, x, y):
        return F.mse_loss(self.blocks(x), y)


class Attention(nn.Module):
    def __init__(self, c, heads):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(c, c) for _ in range(4))

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (p(x).view(b, t, self.heads, c // self.heads).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, c))


class GPTBlock(nn.Module):
    def __init__(self, c, heads, p):
        super().__init__()
        self.ln1, self.attn, self.ln2 = nn.LayerNorm(c), Attention(c, heads), nn.LayerNorm(c)
        self.fc, self.act, self.proj = nn.Linear(c, 4 * c), nn.GELU(approximate="tanh"), nn.Linear(4 * c, c)
        self.drop = nn.Dropout(p)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.drop(self.proj(self.act(self.fc(self.ln2(x)))))


class GPT(nn.Module):
    def __init__(self, vocab=50, seq=16, c=32, heads=4, layers=4, p=0.1):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, c), nn.Embedding(seq, c)
        self.layers = nn.ModuleList([GPTBlock(c, heads, p) for _ in range(layers)])
        self.ln_f, self.head = nn.LayerNorm(c), nn.Linear(c, vocab, bias=False)

    def forward(self, idx, targets):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for layer in self.layers:
            x = layer(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


class ResBlock(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class CNN(nn.Module):
    def __init__(self, ch=8, blocks=3, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, ch, 3, padding=1)
        self.blocks = nn.Sequential(*[ResBlock(ch) for _ in range(blocks)])
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(ch, classes)

    def forward(self, x, y):
        h = self.pool(self.blocks(torch.relu(self.stem(x))))
        h = F.adaptive_avg_pool2d(h, (1, 1)).flatten(1)
        return F.cross_entropy(self.head(h), y)


def mlp():
    torch.manual_seed(0)
    return MLP().double()


def gpt():
    """In eval mode: dropout's masks come from PyTorch's RNG, which ckpt's counter-based dropout
    cannot reproduce, so equality is tested with dropout off (gpt_train keeps it on)."""
    torch.manual_seed(0)
    return GPT().double().eval()


def gpt_train():
    torch.manual_seed(0)
    return GPT().double()


def cnn():
    torch.manual_seed(0)
    return CNN().double()


class Misc(nn.Module):
    """The mapped ops the three models do not use: cat, softmax, log_softmax, scalar arithmetic,
    matmul with a transpose, silu, sum and mean, average pooling, permute."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)

    def forward(self, x, img, y):
        h = self.a(x)
        h2 = torch.cat([h, torch.tanh(h)], dim=1)
        s = torch.softmax(h2, dim=-1) * 2.0 - 0.5
        lsm = torch.log_softmax(h2 / 3.0, dim=-1)
        m = s @ lsm.t()
        z = F.silu(m).sum(dim=1, keepdim=True) + torch.sigmoid(m).mean()
        p = F.avg_pool2d(img.permute(0, 1, 3, 2), 2)
        return z.sum() + p.mean() * 0.1 + F.mse_loss(h, y) - torch.exp(-h).mean()


def misc():
    torch.manual_seed(0)
    return Misc().double()


INPUTS = {"mlp": ["x=8x32", "y=8x32"], "gpt": ["idx=2x16:int64", "targets=2x16:int64"],
          "cnn": ["x=4x3x8x8", "y=4:int64"], "misc": ["x=4x6", "img=2x3x4x4", "y=4x6"]}


def broken():
    raise RuntimeError("factory failed on purpose")


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.sort(self.fc(x), dim=0).values.sum()


def unsupported():
    return Unsupported().double()


class StillUnsupported(nn.Module):
    """torch.sort imports now; median does not."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.median(self.fc(x), dim=0).values.sum()


def still_unsupported():
    return StillUnsupported().double()


def gpt_meta():
    """Built on the meta device: shapes without values, as a model too large for this machine."""
    with torch.device("meta"):
        return GPT().double().eval()


# ---- real-model shapes, as PyTorch users write them (tests/test_torch_real.py) ---------------------
# torchvision-style ResNet (BatchNorm in train and eval mode, ReLU(inplace=True), a 3x3/2 max pool
# with padding), a VGG (adaptive pooling to 2x2, dropout, label smoothing), UNets (transposed
# convolutions, bilinear and nearest up-sampling, torch.cat, per-pixel cross entropy), nanoGPT
# (split, masked_fill from a buffer, tied embeddings, ModuleDict), nn.MultiheadAttention, hand-written
# LSTM and GRU cells (chunk, select, stack, nll_loss), and a layer used twice with a buffer.


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inp, out, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or inp != out:
            self.downsample = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, widths=(8, 16), classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        layers, inp = [], widths[0]
        for i, w in enumerate(widths):
            layers.append(nn.Sequential(BasicBlock(inp, w, 1 if i == 0 else 2), BasicBlock(w, w)))
            inp = w
        self.layer1, self.layer2 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inp, classes)

    def forward(self, x, y):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        x = torch.flatten(self.avgpool(x), 1)
        return F.cross_entropy(self.fc(x), y)


def resnet_train():
    torch.manual_seed(0)
    return ResNet().double()

def resnet_eval():
    torch.manual_seed(0)
    m = ResNet().double()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5); mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


class VGG(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        cfg = [8, "M", 16, "M", 16, 16, "M"]
        layers, c = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(nn.Linear(c * 4, 32), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, classes))

    def forward(self, x, y):
        x = self.avgpool(self.features(x))
        x = torch.flatten(x, 1)
        return F.cross_entropy(self.classifier(x), y, label_smoothing=0.1)


def vgg():
    torch.manual_seed(0)
    return VGG().double().eval()


class DoubleConv(nn.Sequential):
    def __init__(self, i, o):
        super().__init__(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                         nn.Conv2d(o, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))


class UNet(nn.Module):
    def __init__(self, bilinear=False):
        super().__init__()
        self.inc = DoubleConv(3, 8)
        self.down1 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(8, 16))
        self.down2 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(16, 16))
        if bilinear:
            self.up1 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.up2 = nn.Upsample(scale_factor=2, mode="nearest")
            self.conv1, self.conv2 = DoubleConv(32, 8), DoubleConv(16, 8)
        else:
            self.up1 = nn.ConvTranspose2d(16, 16, 2, stride=2)
            self.up2 = nn.ConvTranspose2d(8, 8, 2, stride=2)
            self.conv1, self.conv2 = DoubleConv(32, 8), DoubleConv(16, 8)
        self.outc = nn.Conv2d(8, 2, 1)

    def forward(self, x, y):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        u = self.conv1(torch.cat([x2, self.up1(x3)], dim=1))
        u = self.conv2(torch.cat([x1, self.up2(u)], dim=1))
        return F.cross_entropy(self.outc(u), y)


def unet():
    torch.manual_seed(0)
    return UNet().double()

def unet_up():
    torch.manual_seed(0)
    return UNet(True).double()


class CausalSelfAttention(nn.Module):   # nanoGPT
    def __init__(self, c, heads, T, p):
        super().__init__()
        self.c_attn = nn.Linear(c, 3 * c)
        self.c_proj = nn.Linear(c, c)
        self.attn_dropout, self.resid_dropout = nn.Dropout(p), nn.Dropout(p)
        self.n_head, self.n_embd = heads, c
        self.register_buffer("bias", torch.tril(torch.ones(T, T)).view(1, 1, T, T))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        att = self.attn_dropout(att)
        y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class SDPAAttention(nn.Module):
    def __init__(self, c, heads, T, p):
        super().__init__()
        self.qkv = nn.Linear(c, 3 * c, bias=False)
        self.proj = nn.Linear(c, c)
        self.h, self.p = heads, p

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(B, T, self.h, -1).permute(0, 2, 1, 3) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.p if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MHA(nn.Module):
    def __init__(self, c, heads, T, p):
        super().__init__()
        self.mha = nn.MultiheadAttention(c, heads, dropout=p, batch_first=True)
        self.register_buffer("mask", torch.triu(torch.ones(T, T, dtype=torch.bool), 1))

    def forward(self, x):
        T = x.shape[1]
        return self.mha(x, x, x, attn_mask=self.mask[:T, :T], need_weights=False)[0]


class GPT2MLP(nn.Module):
    def __init__(self, c, p, approx):
        super().__init__()
        self.c_fc, self.gelu, self.c_proj, self.dropout = (nn.Linear(c, 4 * c), nn.GELU(approximate=approx),
                                                            nn.Linear(4 * c, c), nn.Dropout(p))

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class GPT2Block(nn.Module):
    def __init__(self, c, heads, T, p, attn, approx):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.attn = attn(c, heads, T, p)
        self.mlp = GPT2MLP(c, p, approx)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    def __init__(self, attn=CausalSelfAttention, approx="tanh", vocab=40, T=8, c=16, heads=2, layers=2, p=0.1,
                 smoothing=0.0):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, c), wpe=nn.Embedding(T, c), drop=nn.Dropout(p),
            h=nn.ModuleList([GPT2Block(c, heads, T, p, attn, approx) for _ in range(layers)]), ln_f=nn.LayerNorm(c)))
        self.lm_head = nn.Linear(c, vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied
        self.smoothing = smoothing

    def forward(self, idx, targets):
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1,
                               label_smoothing=self.smoothing)


def gpt2():
    torch.manual_seed(0)
    return GPT2().double().eval()

def gpt2_mha():
    """nn.MultiheadAttention with a boolean causal mask, and the exact (erf) GELU."""
    torch.manual_seed(0)
    return GPT2(MHA, "none").double().eval()

def gpt2_f32():
    torch.manual_seed(0)
    return GPT2().eval()


class LSTMCell(nn.Module):
    def __init__(self, i, h):
        super().__init__()
        self.ih, self.hh = nn.Linear(i, 4 * h), nn.Linear(h, 4 * h)

    def forward(self, x, state):
        h, c = state
        i, f, g, o = (self.ih(x) + self.hh(h)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class GRUCell(nn.Module):
    def __init__(self, i, h):
        super().__init__()
        self.ih, self.hh = nn.Linear(i, 3 * h), nn.Linear(h, 3 * h)

    def forward(self, x, h):
        xr, xz, xn = self.ih(x).chunk(3, dim=-1)
        hr, hz, hn = self.hh(h).chunk(3, dim=-1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h


class RNN(nn.Module):
    def __init__(self, i=6, h=8, classes=5):
        super().__init__()
        self.lstm, self.gru, self.h = LSTMCell(i, h), GRUCell(h, h), h
        self.out = nn.Linear(h, classes)

    def forward(self, x, y):
        B, T, _ = x.shape
        h = c = x.new_zeros(B, self.h)
        g = torch.zeros(B, self.h, dtype=x.dtype)
        outs = []
        for t in range(T):
            h, c = self.lstm(x[:, t], (h, c))
            g = self.gru(h, g)
            outs.append(g)
        hs = torch.stack(outs, dim=1)
        logp = F.log_softmax(self.out(hs), dim=-1)
        return F.nll_loss(logp.reshape(-1, logp.shape[-1]), y.reshape(-1))


def rnn():
    torch.manual_seed(0)
    return RNN().double()


class Shared(nn.Module):
    """Parameters shared between layers, a buffer, ModuleDict, scalar ops, keepdim reductions."""
    def __init__(self, d=8):
        super().__init__()
        self.shared = nn.Linear(d, d)
        self.layers = nn.ModuleList([self.shared, nn.Linear(d, d), self.shared])
        self.heads = nn.ModuleDict({"a": nn.Linear(d, 3), "b": nn.Linear(d, 3)})
        self.register_buffer("scale", torch.linspace(0.5, 1.5, d))
        self.w = nn.Parameter(torch.randn(d))

    def forward(self, x, y):
        for layer in self.layers:
            x = F.relu(layer(x)) * self.scale + self.w
        x = x - x.mean(dim=-1, keepdim=True)
        x = x / (x.pow(2).sum(-1, keepdim=True) + 1e-5).sqrt()
        a = self.heads["a"](x)
        b = self.heads["b"](x) * 0.5 / math.sqrt(8)
        return F.mse_loss(a, y) + F.mse_loss(b, y, reduction="sum") * 0.01 + torch.log_softmax(a, -1).mean()


def shared():
    torch.manual_seed(0)
    return Shared().double()



REAL_INPUTS = {
    "resnet_train": ["x=2x3x16x16", "y=2:int64"], "resnet_eval": ["x=2x3x16x16", "y=2:int64"],
    "vgg": ["x=2x3x16x16", "y=2:int64"], "unet": ["x=2x3x8x8", "y=2x8x8:int64"],
    "unet_up": ["x=2x3x8x8", "y=2x8x8:int64"], "gpt2": ["idx=2x8:int64", "targets=2x8:int64"],
    "gpt2_mha": ["idx=2x8:int64", "targets=2x8:int64"],
    "gpt2_f32": ["idx=2x8:int64", "targets=2x8:int64"], "rnn": ["x=2x4x6", "y=2x4:int64"],
    "shared": ["x=4x8", "y=4x3"],
}
INPUTS.update(REAL_INPUTS)


class TorchLSTM(nn.Module):
    """nn.LSTM (two layers, bidirectional, batch first) into nn.GRU: PyTorch's fused recurrent ops,
    unrolled over time by the import."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 3, num_layers=2, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(6, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x, y):
        h, (h_n, c_n) = self.lstm(x)
        g, g_n = self.gru(h.transpose(0, 1))  # time-major
        return F.mse_loss(self.head(g[-1]), y) + h_n.pow(2).mean() + c_n.mean() + g_n.mean()


def torch_lstm():
    torch.manual_seed(0)
    return TorchLSTM().double()


class TorchRNN(nn.Module):
    """nn.RNN (tanh): not a ckpt op; the import names it, its module and line."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(4, 4, batch_first=True)

    def forward(self, x):
        return self.rnn(x)[0].mean()


def torch_rnn():
    return TorchRNN().double()


class MedianOverDim(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x).median(dim=-1).values.mean()


def median_over_dim():
    return MedianOverDim().double()


class BadPools(nn.Module):
    """Geometries PyTorch itself refuses (caught while tracing) and what ckpt refuses: the indices
    torch.max(x, dim) or max pooling returns, read as a value (integers made from floats: no ckpt
    value)."""

    def __init__(self, which):
        super().__init__()
        self.which = which
        self.conv = nn.Conv2d(2, 2, 3, dilation=0 if which == "conv_dilation_0" else 1)

    def forward(self, x):
        if self.which == "pool_padding":
            return F.max_pool2d(x, 2, 2, padding=2, ceil_mode=True).sum()
        if self.which == "pool_dilation_0":
            return F.max_pool2d(x, 3, 2, dilation=0).sum()
        if self.which == "max_indices":
            return (x.max(dim=1).indices * 1.0).sum() + x.sum()
        if self.which == "unpool":  # SegNet's decoder reads max pooling's indices
            return F.max_unpool2d(*F.max_pool2d(self.conv(x), 2, return_indices=True), 2).sum()
        return self.conv(x).sum()


def bad_pools(which):
    return lambda: BadPools(which).double()


pool_padding, pool_dilation_0, max_indices, unpool, conv_dilation_0 = (
    bad_pools(w) for w in ("pool_padding", "pool_dilation_0", "max_indices", "unpool", "conv_dilation_0"))


class SliceWrite(nn.Module):
    """A write into a slice (`h[:, :2] *= 2`): the trace is functionalized, the write a slice_scatter."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc(x)
        h[:, :2] *= 2.0
        h.relu_()
        return (h * h).mean()


def slice_write():
    torch.manual_seed(0)
    return SliceWrite().double()


# ---- more real-model shapes: MobileNet, Llama, ViT, a 1-D conv net --------------------------------
class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand, 3x3 depthwise (groups = channels), 1x1 project, ReLU6."""

    def __init__(self, c, expand, stride):
        super().__init__()
        h = c * expand
        self.use_res = stride == 1
        self.conv = nn.Sequential(
            nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(inplace=True),
            nn.Conv2d(h, h, 3, stride, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(inplace=True),
            nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1, bias=False), nn.BatchNorm2d(4), nn.Hardtanh(0.0, 6.0))
        self.blocks = nn.Sequential(InvertedResidual(4, 2, 1), InvertedResidual(4, 2, 2))
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(4, classes))

    def forward(self, x, y):
        h = self.blocks(self.stem(x))
        return F.cross_entropy(self.head(nn.functional.adaptive_avg_pool2d(h, 1).flatten(1)), y)


def mobilenet():
    """BatchNorm in train mode; the dropout in eval mode (PyTorch's masks are not ckpt's)."""
    torch.manual_seed(0)
    m = MobileNet().double()
    m.head[0].eval()
    return m


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(d) + 0.1 * torch.randn(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate(x, cos, sin):
    """Rotary embedding on interleaved pairs: x[..., ::2] and x[..., 1::2]."""
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class LlamaBlock(nn.Module):
    def __init__(self, d, heads, T):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = RMSNorm(d), nn.RMSNorm(d, eps=1e-6)
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.w1, self.w2, self.w3 = nn.Linear(d, 2 * d, bias=False), nn.Linear(2 * d, d, bias=False), \
            nn.Linear(d, 2 * d, bias=False)
        hd = d // heads
        freqs = 1.0 / (10000 ** (torch.arange(0, hd, 2).double() / hd))
        angles = torch.outer(torch.arange(T).double(), freqs)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x):
        B, T, D = x.shape
        h = self.norm1(x)
        q, k, v = (w(h).view(B, T, self.heads, -1).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        q, k = rotate(q, self.cos[:T], self.sin[:T]), rotate(k, self.cos[:T], self.sin[:T])
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.wo(att.transpose(1, 2).reshape(B, T, D))
        h = self.norm2(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class Llama(nn.Module):
    def __init__(self, vocab=30, d=16, heads=2, T=8, layers=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=0)
        self.layers = nn.ModuleList([LlamaBlock(d, heads, T) for _ in range(layers)])
        self.norm, self.out = RMSNorm(d), nn.Linear(d, vocab, bias=False)

    def forward(self, idx, targets):
        x = self.emb(idx)
        for layer in self.layers:
            x = layer(x)
        logits = self.out(self.norm(x))
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), targets[:, 1:].reshape(-1))


def llama():
    torch.manual_seed(0)
    m = Llama().double()
    with torch.no_grad():
        m.emb.weight[0] = 0.5  # a padding row that is not zero: it takes no gradient, keeps its value
    return m


class ViT(nn.Module):
    """Patches by a strided conv, a class token expanded over the batch, learned positions, and
    nn.TransformerEncoderLayer (norm_first, exact GELU)."""

    def __init__(self, d=16, patch=4, image=8, classes=3):
        super().__init__()
        self.patch = nn.Conv2d(3, d, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, d) * 0.1)
        self.enc = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.1, activation="gelu", batch_first=True,
                                              norm_first=True)
        self.head = nn.Linear(d, classes)

    def forward(self, x, y):
        h = self.patch(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), h], dim=1) + self.pos
        h = self.enc(h)
        return F.cross_entropy(self.head(h[:, 0]), y)


def vit():
    torch.manual_seed(0)
    return ViT().double().eval()


class TCN(nn.Module):
    """1-D convolutions: causal (left padding by F.pad), 'same' padding, a depthwise one, LeakyReLU,
    GroupNorm, 1-D pooling (max with padding, average, adaptive), cumsum, flip, rows of a
    parameter by integer ids; a regression loss with the L1 and the mse summed."""

    def __init__(self, c=4):
        super().__init__()
        self.table = nn.Parameter(torch.randn(5, 2, c))
        self.c1 = nn.Conv1d(2, c, 3)
        self.c2 = nn.Conv1d(c, c, 3, padding="same", groups=c)
        self.c3 = nn.Conv1d(c, c, 2, stride=2)
        self.norm = nn.GroupNorm(2, c)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x, y, ids):
        h = self.act(self.c1(F.pad(x, (2, 0))))
        h = self.act(self.norm(self.c2(h)))
        h = h + F.max_pool1d(h, 3, stride=1, padding=1) + torch.cumsum(h, -1) * 0.1 + h.flip(-1)
        h = self.c3(h)
        q = F.adaptive_avg_pool1d(h, 3) + F.avg_pool1d(h, 2, 1)
        rows = self.table[ids]  # (2, 3, 2, c): rows of a parameter by integer ids
        return (F.l1_loss(h.mean(1), y) + F.mse_loss(h.mean(1), y, reduction="sum") * 0.1 + q.pow(2).mean()
                + rows.pow(2).mean())


def tcn():
    torch.manual_seed(0)
    return TCN().double()


REAL_INPUTS.update({"mobilenet": ["x=2x3x8x8", "y=2:int64"], "llama": ["idx=2x8:int64", "targets=2x8:int64"],
                    "vit": ["x=2x3x8x8", "y=2:int64"], "tcn": ["x=2x2x8", "y=2x4", "ids=2x3:int64"]})
INPUTS.update(REAL_INPUTS)


def llama_meta():
    """On the meta device: buffers (the rotary tables) have shapes and no values."""
    with torch.device("meta"):
        return Llama().double()


class Zoo(nn.Module):
    """The activations, norms and losses of everyday models, each once: comparisons and where,
    softplus, ELU, SELU, Hardswish, Mish, LogSigmoid, LeakyReLU, clamp, LayerNorm over (C, H, W),
    InstanceNorm2d, F.normalize, std, logsumexp, a matrix-vector product, BCE with logits, BCE,
    smooth L1 and Huber."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.conv = nn.Conv2d(2, 3, 3, padding=(1, 0))
        self.ln = nn.LayerNorm([3, 4, 2])
        self.inorm = nn.InstanceNorm2d(3, affine=True)
        self.v = nn.Parameter(torch.randn(6))
        self.acts = nn.ModuleList([nn.Softplus(), nn.ELU(0.5), nn.SELU(), nn.Hardswish(), nn.Mish(),
                                   nn.LogSigmoid(), nn.LeakyReLU(0.2)])

    def forward(self, x, img, y):
        h = self.fc(x)
        h = torch.where(h > 0, h, 0.1 * h) + (h <= -0.5).float() * h * h
        for act in self.acts:
            h = h + act(h) * 0.1
        h = torch.clamp(h, -3.0, 3.0)
        n = F.normalize(h, dim=-1)
        score = torch.logsumexp(h, dim=-1) + h @ self.v + n.std(dim=-1)
        c = self.inorm(self.ln(self.conv(img)))
        p, y = torch.sigmoid(score), torch.sigmoid(y)  # BCE takes targets in [0, 1]
        return (F.binary_cross_entropy_with_logits(score, y) + F.binary_cross_entropy(p, y)
                + F.smooth_l1_loss(h, x, beta=0.5) + F.huber_loss(h, x, delta=2.0) + c.pow(2).mean())


def zoo():
    torch.manual_seed(0)
    return Zoo().double()


REAL_INPUTS["zoo"] = ["x=4x6", "img=2x2x4x4", "y=4"]
INPUTS.update(REAL_INPUTS)


class EinsumAttention(nn.Module):
    """Attention written with torch.einsum, grouped-query keys by repeat_interleave, a tiled
    bias by repeat, a matrix-vector product; forward returns (loss, logits), as many models do."""

    def __init__(self, d=8, heads=4, kv_heads=2):
        super().__init__()
        self.h, self.kv = heads, kv_heads
        self.q = nn.Linear(d, d)
        self.kv_proj = nn.Linear(d, 2 * d * kv_heads // heads)
        self.bias = nn.Parameter(torch.randn(1, 2) * 0.1)
        self.out = nn.Linear(d, 3)

    def forward(self, x, y):
        B, T, D = x.shape
        hd = D // self.h
        q = self.q(x).view(B, T, self.h, hd)
        k, v = self.kv_proj(x).view(B, T, 2 * self.kv, hd).chunk(2, dim=2)
        k, v = k.repeat_interleave(self.h // self.kv, dim=2), v.repeat_interleave(self.h // self.kv, dim=2)
        s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
        a = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v).reshape(B, T, D)
        logits = self.out(a + self.bias.repeat(1, D // 2))
        pooled = torch.einsum("btc->bc", logits)
        return F.cross_entropy(pooled, y), logits


def einsum_attention():
    torch.manual_seed(0)
    return EinsumAttention().double()


REAL_INPUTS["einsum_attention"] = ["x=2x5x8", "y=2:int64"]
REAL_INPUTS["torch_lstm"] = ["x=2x3x4", "y=2x2"]
INPUTS.update(REAL_INPUTS)


class ASPP(nn.Module):
    """DeepLab's atrous spatial pyramid pooling: parallel 3 x 3 convolutions of dilation 2 and 3
    (padding equal to the dilation), one of padding 'same', an image-pooling branch, a strided
    atrous convolution and a depthwise atrous one (DeepLab on MobileNet); per-pixel cross entropy."""

    def __init__(self, c=4, classes=3):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.b1 = nn.Conv2d(c, c, 1)
        self.b2 = nn.Conv2d(c, c, 3, padding=2, dilation=2)
        self.b3 = nn.Conv2d(c, c, 3, padding=3, dilation=3)
        self.b4 = nn.Conv2d(c, c, (3, 2), padding="same", dilation=2)
        self.proj = nn.Conv2d(5 * c, classes, 1)
        self.down = nn.Conv2d(c, c, 3, stride=2, padding=1, dilation=2)
        self.dw = nn.Conv2d(c, c, 3, padding=2, dilation=2, groups=c)

    def forward(self, x, y):
        h = torch.relu(self.stem(x))
        pooled = F.adaptive_avg_pool2d(h, 1).expand_as(h)
        a = torch.cat([self.b1(h), self.b2(h), self.b3(h), self.b4(h), pooled], 1)
        logits = self.proj(torch.relu(a))
        d = self.dw(torch.relu(self.down(h)))
        return F.cross_entropy(logits, y) + d.pow(2).mean()


def aspp():
    torch.manual_seed(0)
    return ASPP().double()


class InceptionPools(nn.Module):
    """GoogLeNet's and SqueezeNet's ceil-mode pooling: a 3 x 3 / 2 max pool whose last window runs
    past the input, an inception block with a 3 x 3 / 1 max-pool branch, an average pool of padding
    1 that does not count the padding, one that does with a window past the input, one of a window
    larger than the input, a dilated max pool, a global max pool (adaptive, to 1) and one to uneven
    bins (adaptive, to 3 x 2)."""

    def __init__(self, c=4, classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.b1, self.b3 = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 3, padding=1)
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, padding=1, ceil_mode=True), nn.Conv2d(c, c, 1))
        self.pool2 = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False)
        self.pool3 = nn.AvgPool2d(2, ceil_mode=True)
        self.pool4 = nn.MaxPool2d(2, 1, padding=1, dilation=2)
        self.fc = nn.Linear(3 * c, classes)

    def forward(self, x, y):
        h = self.pool1(torch.relu(self.stem(x)))
        h = torch.relu(torch.cat([self.b1(h), self.b3(h), self.bp(h)], 1))
        g = F.adaptive_max_pool2d(self.pool2(h), 1).flatten(1)
        q = self.pool3(h) + 0.5 * F.avg_pool2d(h, 3, 2, padding=1, ceil_mode=True, divisor_override=4)
        u = F.adaptive_max_pool2d(self.pool4(h), (3, 2))
        whole = F.avg_pool2d(h, 7, ceil_mode=True)  # one window, larger than the input
        return F.cross_entropy(self.fc(g), y) + q.pow(2).mean() + u.mean() + whole.pow(2).mean()


def inception_pools():
    torch.manual_seed(0)
    return InceptionPools().double()


class WaveNet(nn.Module):
    """Causal dilated 1-D convolutions (dilations 1, 2, 4, 8: WaveNet, TCN) in gated tanh x sigmoid
    units with residual and skip paths, a dilated 'same' convolution, then global max and min over
    time (torch.max(dim), amax, amin), ceil-mode, dilated and average 1-D pooling, and adaptive max
    pooling to uneven bins."""

    def __init__(self, c=4, dilations=(1, 2, 4, 8)):
        super().__init__()
        self.dilations = dilations
        self.inp = nn.Conv1d(2, c, 1)
        self.filt = nn.ModuleList([nn.Conv1d(c, c, 2, dilation=d) for d in dilations])
        self.gate = nn.ModuleList([nn.Conv1d(c, c, 2, dilation=d) for d in dilations])
        self.res = nn.ModuleList([nn.Conv1d(c, c, 1) for _ in dilations])
        self.same = nn.Conv1d(c, c, 3, padding="same", dilation=3)
        self.head = nn.Linear(c, 3)

    def forward(self, x, y):
        h, skip = self.inp(x), 0
        for d, f, g, r in zip(self.dilations, self.filt, self.gate, self.res):
            z = F.pad(h, (d, 0))
            u = torch.tanh(f(z)) * torch.sigmoid(g(z))
            h, skip = h + r(u), skip + u
        s = self.same(torch.relu(skip))
        m = s.max(dim=-1).values + s.amax(-1) - 0.5 * s.amin(-1)
        p = F.max_pool1d(s, 3, 2, ceil_mode=True)
        q = F.max_pool1d(s, 2, 1, dilation=3)
        a = F.adaptive_max_pool1d(s, 3)
        v = F.avg_pool1d(s, 3, 2, padding=1, ceil_mode=True, count_include_pad=False)
        return (F.mse_loss(self.head(m), y) + p.pow(2).mean() + q.mean() + a.pow(2).mean() + v.pow(2).mean()
                + torch.max(h) + 0.1 * torch.min(s))


def wavenet():
    torch.manual_seed(0)
    return WaveNet().double()


class Ties(nn.Module):
    """Equal values from different parameters: two layers with the same weights. Their outputs side
    by side tie in every window and along every reduced axis, so each of PyTorch's rules shows in the
    gradients: the first maximum takes it (max pooling, adaptive max pooling, torch.max(x, dim)), or
    the tied elements share it (torch.amax, amin, torch.max(x))."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(2, 3, 3, padding=1)
        self.b.load_state_dict(self.a.state_dict())
        self.fa, self.fb = nn.Linear(4, 4), nn.Linear(4, 4)
        self.fb.load_state_dict(self.fa.state_dict())

    def forward(self, x, v):
        img = torch.stack([self.a(x), self.b(x)], -1).flatten(-2)  # columns alternate a, b
        pools = (F.max_pool2d(img, 2).mean() + F.max_pool2d(img, 3, 2, padding=1, ceil_mode=True).pow(2).mean()
                 + F.adaptive_max_pool2d(img, 1).sum() + F.adaptive_max_pool2d(img, (2, 3)).pow(2).mean())
        fa, fb = self.fa(v), self.fb(v)
        both = torch.stack([fb, fa], 1)  # (N, 2, 4): fb first
        return (pools + both.amax(1).pow(2).mean() + both.max(1).values.mean() + both.min(1).values.pow(2).mean()
                + both.amin((1, 2)).sum() + torch.max(both) + 0.3 * torch.min(fa - fb + fb))


def ties():
    torch.manual_seed(0)
    return Ties().double()


REAL_INPUTS.update({"aspp": ["x=2x3x10x10", "y=2x10x10:int64"], "inception_pools": ["x=2x3x11x11", "y=2:int64"],
                    "wavenet": ["x=2x2x16", "y=2x3"], "ties": ["x=2x2x5x3", "v=3x4"]})
INPUTS.update(REAL_INPUTS)


class PolicyGather(nn.Module):
    """Losses that pick by integer positions: the log-probability of each taken action
    (log_softmax(...).gather(-1, actions.unsqueeze(-1)), policy gradients), torch.gather along axis
    1 by an integer input whose index is shorter than x off that axis, a constant index from a
    buffer (with a repeated position: its gradient is the sum), take_along_dim with an index
    broadcast over the batch, and take_along_dim of the flattened tensor (dim None)."""

    def __init__(self):
        super().__init__()
        self.fc, self.seq = nn.Linear(5, 6), nn.Linear(5, 4)
        self.register_buffer("order", torch.tensor([[2, 0], [1, 1], [0, 3]]))
        self.register_buffer("cols", torch.tensor([[0, 5, 5]]))
        self.register_buffer("flat", torch.tensor([3, 7, 7, 12]))

    def forward(self, x, actions, pos, adv):
        logp = F.log_softmax(self.fc(x), -1)
        chosen = logp.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        h = torch.tanh(self.seq(x))
        pairs = h.unsqueeze(1) * h.unsqueeze(2)  # (B, 4, 4)
        picked = torch.gather(pairs, 1, pos)  # pos (B, 2, 3): the first 3 of the last axis
        const = torch.gather(h[:3], 1, self.order)
        cols = torch.take_along_dim(logp, self.cols, dim=1)  # (1, 3) broadcast over the batch
        flat = torch.take_along_dim(h, self.flat)
        return (-(chosen * adv).mean() + picked.pow(2).mean() + const.sum() + cols.pow(2).mean()
                + flat.sum())


def policy_gather():
    torch.manual_seed(0)
    return PolicyGather().double()


REAL_INPUTS["policy_gather"] = ["x=4x5", "actions=4:int64", "pos=4x2x3:int64", "adv=4"]
INPUTS.update(REAL_INPUTS)


class PoolZoo(nn.Module):
    """Pooling geometries side by side on one non-square input (9 x 10), each weighted differently:
    ceil mode where the last window starts in the input, where it would start in the right padding
    (PyTorch drops it), with dilation, with padding counted or not in the average, a divisor
    override, windows larger than the input, their 1-D forms, and max pooling that returns its
    indices (unused)."""

    MAX = [(3, 2, 0, 1, True), (3, 2, 1, 1, True), (2, 2, 1, 1, True), (3, 3, 1, 2, True), (2, 3, 0, 2, False),
           (4, 3, 2, 1, True), ((2, 3), (3, 2), (1, 0), (2, 1), True)]
    AVG = [(3, 2, 0, True, True, None), (3, 2, 1, True, False, None), (2, 2, 1, True, True, None),
           (4, 3, 2, True, False, None), (3, 2, 1, True, True, 5), ((3, 2), (2, 3), (1, 1), True, False, None),
           (10, 10, 0, True, True, None)]

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 1)
        self.indexed = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True, return_indices=True)
        self.indexed1d = nn.MaxPool1d(3, 2, return_indices=True)

    def forward(self, x):
        h = self.conv(x)
        values, _ = self.indexed(h)  # return_indices=True, the indices unused
        total = values.pow(2).mean() + self.indexed1d(h.flatten(2))[0].mean()
        for n, (k, s, p, d, ceil) in enumerate(self.MAX):
            total = total + (n + 1) * F.max_pool2d(h, k, s, p, d, ceil_mode=ceil).pow(2).mean()
        for n, (k, s, p, ceil, count, div) in enumerate(self.AVG):
            total = total + (n + 2) * F.avg_pool2d(h, k, s, p, ceil, count, div).pow(2).mean()
        row = h.flatten(2)  # (N, C, 90) as a sequence
        total = total + F.max_pool1d(row, 4, 3, 2, 2, ceil_mode=True).pow(2).mean()
        total = total + F.avg_pool1d(row, 5, 4, 2, ceil_mode=True, count_include_pad=False).pow(2).mean()
        return total + F.adaptive_max_pool1d(row, 7).pow(2).mean() + F.adaptive_max_pool2d(h, (4, 3)).pow(2).mean()


def pool_zoo():
    torch.manual_seed(0)
    return PoolZoo().double()


REAL_INPUTS["pool_zoo"] = ["x=2x2x9x10"]
INPUTS.update(REAL_INPUTS)


class DQN(nn.Module):
    """Q-learning's loss: the Q-value of each taken action (gather) against r + 0.9 times the best
    next Q-value of a target network (torch.max(dim)), detached, so that the target network's
    parameters take no gradient (PyTorch leaves their .grad None); and a log-sum-exp stabilised by
    its detached row maximum (amax), less a detached best next Q-value of the online network. Each
    detach changes the gradients: a detach read as the identity fails against PyTorch."""

    def __init__(self):
        super().__init__()
        self.q = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        self.target = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, s, a, r, s2):
        qs = self.q(s)
        q = qs.gather(1, a.unsqueeze(1)).squeeze(1)
        y = r + 0.9 * self.target(s2).max(1).values.detach()
        m = qs.amax(1, keepdim=True).detach()
        lse = m.squeeze(1) + torch.log(torch.exp(qs - m).sum(1))
        online_best = self.q(s2).max(1).values.detach()
        return F.smooth_l1_loss(q, y) + 0.1 * (lse - online_best).pow(2).mean()


def dqn():
    torch.manual_seed(0)
    return DQN().double()


REAL_INPUTS["dqn"] = ["s=5x4", "a=5:int64", "r=5", "s2=5x4"]
INPUTS.update(REAL_INPUTS)


# ---- transposed convolutions in general, unequal strides ---------------------------------------
class DCGANGenerator(nn.Module):
    """DCGAN's generator (Radford et al. 2016, the PyTorch example): z (N, nz, 1, 1) up to an image
    by ConvTranspose2d of kernel 4, stride 1 then stride 2 with padding 1, BatchNorm, ReLU, Tanh."""

    def __init__(self, nz=4, ngf=4, nc=3):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 2, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, z):
        return self.main(z)


class DCGANDiscriminator(nn.Module):
    def __init__(self, nc=3, ndf=4):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, 1, 4, 1, 0, bias=False))

    def forward(self, x):
        return self.main(x).view(-1)


class DCGAN(nn.Module):
    """One step's losses of both players on a 16 x 16 image: the discriminator's on real and fake
    images, the generator's on its fakes (non-saturating), as one scalar."""

    def __init__(self):
        super().__init__()
        self.netG, self.netD = DCGANGenerator(), DCGANDiscriminator()

    def forward(self, z, real):
        fake = self.netG(z)
        d_real, d_fake = self.netD(real), self.netD(fake)
        ones, zeros = torch.ones_like(d_real), torch.zeros_like(d_fake)
        return (F.binary_cross_entropy_with_logits(d_real, ones) + F.binary_cross_entropy_with_logits(d_fake, zeros)
                + F.binary_cross_entropy_with_logits(d_fake, ones))


def dcgan():
    torch.manual_seed(0)
    return DCGAN().double()


class ConvTransposeZoo(nn.Module):
    """Transposed convolutions of every geometry a decoder uses: output padding, dilation, groups,
    unequal kernels and strides, padding past the kernel's reach (a crop); ConvTranspose1d (a
    vocoder's up-sampler); Conv2d with unequal strides (2, 1)."""

    def __init__(self):
        super().__init__()
        self.up_op = nn.ConvTranspose2d(2, 4, 3, stride=2, padding=1, output_padding=1)
        self.up_g = nn.ConvTranspose2d(4, 4, (3, 2), stride=(1, 2), groups=2, dilation=(2, 1), bias=False)
        self.crop = nn.ConvTranspose2d(4, 2, 2, stride=3, padding=2)
        self.down = nn.Conv2d(2, 3, 3, stride=(2, 1), padding=1)
        self.up1d = nn.ConvTranspose1d(3, 2, 5, stride=3, padding=2, output_padding=1, dilation=2)

    def forward(self, x, y):
        h = torch.tanh(self.up_op(x))
        h = torch.relu(self.up_g(h))
        h = self.down(self.crop(h))
        s = self.up1d(h.mean(2))
        return F.mse_loss(s, y) + h.pow(2).mean()


def conv_transpose_zoo():
    torch.manual_seed(0)
    return ConvTransposeZoo().double()


REAL_INPUTS.update({"dcgan": ["z=2x4x1x1", "real=2x3x16x16"], "conv_transpose_zoo": ["x=2x2x3x4", "y=2x2x132"]})
INPUTS.update(REAL_INPUTS)


# ---- masks from integer inputs, ignore_index, class weights ---------------------------------------
class BertAttention(nn.Module):
    """Self-attention under a padding mask, in one of the three ways BERT code writes it:
    masked_fill of the scores with -inf where the key is padding; a boolean attn_mask to
    scaled_dot_product_attention (True: attend); Hugging Face's additive mask,
    (1 - mask) * finfo.min."""

    def __init__(self, d, heads, how):
        super().__init__()
        self.heads, self.how = heads, how
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x, keep):  # keep: (B, T) bool, True at real tokens
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in self.qkv(x).split(d, dim=2))
        if self.how == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        else:
            att = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)
            if self.how == "masked_fill":
                att = att.masked_fill(~keep[:, None, None, :], float("-inf"))
            else:
                att = att + (1.0 - keep[:, None, None, :].to(att.dtype)) * torch.finfo(att.dtype).min
            y = att.softmax(-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class BertLayer(nn.Module):
    def __init__(self, d, heads, how):
        super().__init__()
        self.attn, self.ln1 = BertAttention(d, heads, how), nn.LayerNorm(d)
        self.ff, self.ln2 = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)), nn.LayerNorm(d)

    def forward(self, x, keep):
        x = self.ln1(x + self.attn(x, keep))
        return self.ln2(x + self.ff(x))


class Bert(nn.Module):
    """A small BERT encoder for masked-language modelling: token, position and segment embeddings,
    post-LN layers whose attention masks the padding tokens (idx == pad), an MLM head tied to the
    token embedding, and the cross entropy of the labels with ignore_index = pad (padding positions
    count nothing). A small vocabulary, so that random example tokens include padding."""

    def __init__(self, vocab=6, d=8, heads=2, t=8, pad=0, ignore_index=None):
        super().__init__()
        self.pad = pad
        self.ignore_index = pad if ignore_index is None else ignore_index
        self.tok, self.pos, self.seg = nn.Embedding(vocab, d, padding_idx=pad), nn.Embedding(t, d), nn.Embedding(2, d)
        self.ln = nn.LayerNorm(d)
        self.layers = nn.ModuleList([BertLayer(d, heads, how) for how in ("masked_fill", "sdpa", "additive")])
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, idx, labels):
        keep = idx != self.pad
        t = idx.shape[1]
        segment = (torch.arange(t, device=idx.device) >= t // 2).long()
        h = self.ln(self.tok(idx) + self.pos(torch.arange(t, device=idx.device)) + self.seg(segment))
        for layer in self.layers:
            h = layer(h, keep)
        logits = self.head(h)
        # the mean over real tokens of each sequence, as a sentence embedding: a count from the mask
        sent = (h * keep[..., None].float()).sum(1) / keep.sum(1, keepdim=True).to(h.dtype)
        return (F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1), ignore_index=self.ignore_index)
                + 0.1 * sent.pow(2).mean())


def bert():
    torch.manual_seed(0)
    return Bert().double()


def bert_default_ignore():
    """The labels' ignore_index is PyTorch's default, -100 (Hugging Face's unmasked positions)."""
    torch.manual_seed(0)
    return Bert(ignore_index=-100).double()


class WeightedClassifier(nn.Module):
    """Class-weighted losses on an imbalanced problem: cross entropy with weight= (mean: over the
    weights of the rows), the same summed with label smoothing, NLL summed, and a segmentation
    head's per-pixel weighted cross entropy that ignores one label."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
        self.register_buffer("class_weight", torch.tensor([0.5, 1.0, 2.0, 4.0]))
        self.seg = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x, y, img, pixels):
        logits = self.body(x)
        loss = F.cross_entropy(logits, y, weight=self.class_weight)
        loss = loss + 0.5 * F.cross_entropy(logits, y, weight=self.class_weight, label_smoothing=0.1, reduction="sum")
        loss = loss + F.nll_loss(F.log_softmax(logits, -1), y, reduction="sum") / 8
        loss = loss + F.cross_entropy(logits, y, label_smoothing=0.2, ignore_index=1)
        # a multi-label head on the same logits: positives weighted per class, and per sample
        tags = (F.one_hot(y, 4) + (x[:, :4] > 0.5).long()).clamp(max=1).to(logits.dtype)
        loss = loss + F.binary_cross_entropy_with_logits(logits, tags, weight=torch.linspace(0.5, 1.5, 8)[:, None].to(
            logits.dtype), pos_weight=self.class_weight)
        loss = loss + F.binary_cross_entropy(torch.sigmoid(logits), tags, weight=self.class_weight, reduction="sum") / 8
        return loss + F.cross_entropy(self.seg(img), pixels, weight=self.class_weight, ignore_index=3)


def weighted_classifier():
    torch.manual_seed(0)
    return WeightedClassifier().double()


REAL_INPUTS.update({"bert": ["idx=2x8:int64", "labels=2x8:int64"],
                    "weighted_classifier": ["x=8x6", "y=8:int64", "img=2x3x4x4", "pixels=2x4x4:int64"]})
INPUTS.update(REAL_INPUTS)
INPUTS["bert_default_ignore"] = INPUTS["bert"]


# ---- indices the model computes: top-k routing, sorting, argmax -----------------------------------
class Expert(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.up, self.down = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class MoELayer(nn.Module):
    """A top-2 mixture-of-experts layer as dense implementations write it (every expert on every
    token, weighted by sparse gates): the router's top-k logits, softmax over the kept ones, the
    gates scattered back to their experts (zeros elsewhere) and the experts' outputs combined, or
    the chosen experts' outputs gathered by the top-k indices; Switch's load-balancing loss from
    the top-1 choice (argmax, or topk's first: one_hot) and the mean router probability; each
    token's routing weight of its chosen experts gathered from the probabilities; the expert load
    summed by scatter_add."""

    def __init__(self, d=8, experts=4, k=2, hidden=12, combine="scatter"):
        super().__init__()
        self.k, self.n, self.combine = k, experts, combine
        self.router = nn.Linear(d, experts, bias=False)
        self.experts = nn.ModuleList([Expert(d, hidden) for _ in range(experts)])

    def forward(self, x):  # (B, T, d)
        logits = self.router(x)
        top_v, top_i = torch.topk(logits, self.k, dim=-1)
        out = torch.stack([e(x) for e in self.experts], dim=-2)  # (B, T, E, d)
        if self.combine == "scatter":  # the gates scattered to their experts
            gates = torch.zeros_like(logits).scatter(-1, top_i, F.softmax(top_v, dim=-1))
            y = (gates.unsqueeze(-1) * out).sum(-2)
            top1 = logits.argmax(-1)
        else:  # the chosen experts' outputs gathered by the indices, expanded over the features
            picked = out.gather(-2, top_i.unsqueeze(-1).expand(*top_i.shape, out.size(-1)))
            y = (F.softmax(top_v, dim=-1).unsqueeze(-1) * picked).sum(-2)
            top1 = top_i[..., 0]
        probs = logits.softmax(-1)
        frac = F.one_hot(top1, self.n).to(probs.dtype).mean((0, 1))
        aux = self.n * (frac * probs.mean((0, 1))).sum()
        chosen = probs.gather(-1, top_i).sum(-1).mean()
        load = torch.zeros_like(probs).scatter_add(-1, top_i, torch.ones_like(top_v)).mean((0, 1))
        return y, aux + 0.1 * chosen + 0.01 * (load * probs.mean((0, 1))).sum()


class MoETransformer(nn.Module):
    """Pre-LN blocks whose MLP is the top-2 MoE layer; a language-model head and loss, plus the
    layers' auxiliary losses."""

    def __init__(self, vocab=11, d=8, layers=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.lns = nn.ModuleList([nn.LayerNorm(d) for _ in range(layers)])
        self.moes = nn.ModuleList([MoELayer(d, combine=("scatter", "gather")[k % 2]) for k in range(layers)])
        self.head = nn.Linear(d, vocab)

    def forward(self, idx, targets):
        h = self.emb(idx)
        aux = 0.0
        for ln, moe in zip(self.lns, self.moes):
            y, a = moe(ln(h))
            h, aux = h + y, aux + a
        logits = self.head(h)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten()) + 0.01 * aux


def moe():
    torch.manual_seed(0)
    return MoETransformer().double()


class SortAndRank(nn.Module):
    """Values by sorting: a trimmed mean (sort, drop the extremes), top-k pooling over time along a
    middle axis, the smallest k distances (topk largest=False), the kth value by sort along dim 0;
    argmax/argmin and torch.max(dim)'s indices read as values (a hard accuracy-like term, which
    takes no gradient); knowledge distillation against a teacher's argmax labels; messages summed
    at graph nodes (index_add) and rows picked by index_select."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 6)
        self.teacher = nn.Linear(5, 6)

    def forward(self, x, y, seq, src, dst):
        h = torch.tanh(self.fc(x))  # (8, 6)
        trimmed = h.sort(dim=-1).values[:, 1:-1].mean()
        pooled = torch.topk(seq * self.fc.weight[0, :4], 2, dim=1).values.sum()  # seq (2, 7, 4): over time
        near = torch.topk((h[:, None, :] - h[None, :, :]).pow(2).sum(-1), 3, largest=False).values.mean()
        kth = torch.sort(h, dim=0, descending=True).values[2].sum()
        hits = (h.argmax(-1) == y).double().mean() + h.argmin(dim=1, keepdim=True).double().mean()
        idx_term = (h.max(dim=1).indices.to(h.dtype) * 0.5).sum()
        distill = F.cross_entropy(h, self.teacher(x).detach().argmax(-1))
        msgs = torch.zeros(4, 6, dtype=h.dtype).index_add(0, dst, h[src] * 0.5, alpha=2.0)
        picked = h.index_select(1, src[:3])
        return (trimmed + pooled + near + kth + 0.1 * hits + 0.01 * idx_term + distill
                + msgs.pow(2).mean() + picked.mean())


def sort_and_rank():
    torch.manual_seed(0)
    return SortAndRank().double()


REAL_INPUTS.update({"moe": ["idx=2x6:int64", "targets=2x6:int64"],
                    "sort_and_rank": ["x=8x5", "y=8:int64", "seq=2x7x4", "src=10:int64", "dst=10:int64"]})
INPUTS.update(REAL_INPUTS)


class EncoderWithPadding(nn.Module):
    """PyTorch's own nn.TransformerEncoder with src_key_padding_mask from the data loader's
    attention_mask (an integer input, 1 at real tokens, as Hugging Face tokenizers give it), and
    the loss ignoring the padding id."""

    def __init__(self, vocab=6, d=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=0)
        layer = nn.TransformerEncoderLayer(d, 2, 16, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx, attention_mask, labels):
        h = self.enc(self.emb(idx), src_key_padding_mask=attention_mask == 0)
        return F.cross_entropy(self.head(h).flatten(0, 1), labels.flatten(), ignore_index=0)


def encoder_padding():
    torch.manual_seed(0)
    return EncoderWithPadding().double()


REAL_INPUTS["encoder_padding"] = ["idx=2x8:int64", "attention_mask=2x8:int64", "labels=2x8:int64"]
INPUTS.update(REAL_INPUTS)


# ---- integers the model computes from integers -------------------------------------------------------
class RobertaStyle(nn.Module):
    """RoBERTa's embeddings (Hugging Face's create_position_ids_from_input_ids: the positions count
    real tokens only, cumsum(mask) * mask + pad), token types from zeros_like, the labels masked
    with -100 at the padding inside the model, a masked-LM loss with the default ignore_index, and
    a sequence classifier reading each sequence's last real token (a count of real tokens, less 1,
    expanded to gather the row)."""

    def __init__(self, vocab=6, d=8, t=8, pad=1):
        super().__init__()
        self.pad = pad
        self.tok = nn.Embedding(vocab, d, padding_idx=pad)
        self.pos = nn.Embedding(t + pad + 1, d, padding_idx=pad)
        self.typ = nn.Embedding(1, d)
        self.ln = nn.LayerNorm(d)
        self.layer = BertLayer(d, 2, "additive")
        self.lm = nn.Linear(d, vocab)
        self.cls = nn.Linear(d, 3)

    def forward(self, idx, labels, y):
        mask = idx.ne(self.pad).int()
        positions = (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + self.pad
        h = self.ln(self.tok(idx) + self.pos(positions) + self.typ(torch.zeros_like(idx)))
        h = self.layer(h, mask.bool())
        labels = labels.masked_fill(idx == self.pad, -100)
        mlm = F.cross_entropy(self.lm(h).flatten(0, 1), labels.flatten())
        last = mask.sum(1) - 1
        pooled = h.gather(1, last[:, None, None].expand(-1, 1, h.size(-1))).squeeze(1)
        return mlm + F.cross_entropy(self.cls(pooled), y)


def roberta_style():
    torch.manual_seed(0)
    return RobertaStyle().double()


REAL_INPUTS["roberta_style"] = ["idx=2x8:int64", "labels=2x8:int64", "y=2:int64"]
INPUTS.update(REAL_INPUTS)


class PerElementLosses(nn.Module):
    """Losses with reduction='none', reduced by the model: a focal loss (Lin et al. 2017) from the
    per-sample cross entropy; a sequence loss averaged over real tokens only (the per-token loss
    times the padding mask, over the mask's sum), with class weights and label smoothing; per-pixel
    NLL ignoring a label; per-sample weighted BCE, mse, L1 and smooth L1."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 5)
        self.register_buffer("w", torch.tensor([1.0, 2.0, 0.5, 1.5, 1.0]))
        self.seg = nn.Conv2d(2, 5, 1)

    def forward(self, x, y, seq, tokens, img, pixels):
        logits = self.fc(x)
        ce = F.cross_entropy(logits, y, reduction="none")
        focal = (0.25 * (1 - torch.exp(-ce)) ** 2 * ce).mean()
        tok_logits = self.fc(seq)  # (B, T, 5)
        mask = (tokens != 0).to(seq.dtype)
        per_tok = F.cross_entropy(tok_logits.transpose(1, 2), tokens, weight=self.w, reduction="none",
                                  label_smoothing=0.1, ignore_index=0)
        seq_loss = (per_tok * mask).sum() / mask.sum()
        pix = F.nll_loss(F.log_softmax(self.seg(img), 1), pixels, reduction="none", ignore_index=2)
        t = torch.sigmoid(x[:, :5])
        bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none").mean(1)
        rows = torch.linspace(0.5, 1.5, x.size(0), dtype=x.dtype)
        other = (F.mse_loss(logits, t, reduction="none") + F.l1_loss(logits, t, reduction="none")
                 + F.smooth_l1_loss(logits, t, reduction="none")).sum(1)
        return focal + seq_loss + pix.pow(2).mean() + (bce * rows).sum() + (other * rows).mean()


def per_element_losses():
    torch.manual_seed(0)
    return PerElementLosses().double()


REAL_INPUTS["per_element_losses"] = ["x=4x6", "y=4:int64", "seq=2x5x6", "tokens=2x5:int64", "img=2x2x3x3",
                                     "pixels=2x3x3:int64"]
INPUTS.update(REAL_INPUTS)
