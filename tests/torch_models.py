"""Three ordinary PyTorch models for the bridge tests (`ckpt import tests/torch_models.py:gpt ...`).
Each forward returns the loss. float64, so that ckpt and PyTorch agree to round-off."""

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
        return torch.cumsum(self.fc(x), dim=0).sum()


def unsupported():
    return Unsupported().double()


def gpt_meta():
    """Built on the meta device: shapes without values, as a model too large for this machine."""
    with torch.device("meta"):
        return GPT().double().eval()
