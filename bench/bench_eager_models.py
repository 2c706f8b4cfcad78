"""Eager functx.grad against torch.func.grad over a spread of model code (issue 13): small
models of the kinds researchers train (a ResNet block with batch norm, a GPT block with
hand-written attention, an LSTM language model, a UNet-like block with interpolation, an
MLP-Mixer block, a depthwise-separable block, a feed-forward block with dropout), every torch.nn.functional activation, and
the common losses. Each row is the grad of a scalar loss, checked against torch.func's
before timing; speed is torch.func time / functx time, the two measured in interleaved
rounds in one process (so machine noise hits both alike).

    OMP_NUM_THREADS=1 python bench/bench_eager_models.py [--only models|activations|losses]
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import functx  # noqa: E402
from _timing import fmt_time, interleaved  # noqa: E402


# ---------------------------------------------------------------- models

class _Res(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c, track_running_stats=False)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c, track_running_stats=False)

    def forward(self, x):
        return F.relu(x + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))


class _ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.blocks, self.fc = nn.Conv2d(3, 16, 3, padding=1), nn.Sequential(_Res(), _Res()), nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


class _GPTBlock(nn.Module):
    def __init__(self, d=32, h=4):
        super().__init__()
        self.h, self.qkv, self.o = h, nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = (t.view(B, T, self.h, D // self.h).transpose(1, 2) for t in self.qkv(self.ln1(x)).chunk(3, -1))
        a = (q @ k.transpose(-2, -1)) / (D // self.h) ** 0.5
        a = a.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf")).softmax(-1)
        x = x + self.o((a @ v).transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.ln2(x))


class _LSTMLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.lstm, self.head = nn.Embedding(100, 32), nn.LSTM(32, 32, batch_first=True), nn.Linear(32, 100)

    def forward(self, t):
        return self.head(self.lstm(self.emb(t))[0])


class _UNetBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.down, self.norm = nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.GroupNorm(4, 16)
        self.up, self.out = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1), nn.Conv2d(8 + 3, 3, 3, padding=1)

    def forward(self, x):
        h = F.silu(self.norm(self.down(x)))
        h = F.silu(self.up(h)) + F.interpolate(h[:, :8], scale_factor=2, mode="bilinear", align_corners=False)
        return self.out(torch.cat([h, x], 1))


class _Mixer(nn.Module):
    def __init__(self):
        super().__init__()
        self.tokens, self.channels, self.norm = nn.Linear(16, 16), nn.Linear(32, 32), nn.LayerNorm(32)

    def forward(self, x):
        x = x + self.tokens(self.norm(x).mT).mT
        return x + F.gelu(self.channels(self.norm(x)))


class _Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.dw, self.pw = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 32, 1)
        self.bn = nn.BatchNorm2d(32, track_running_stats=False)

    def forward(self, x):
        return F.hardswish(self.bn(self.pw(self.dw(x)))).mean((2, 3))


class _DropoutMLP(nn.Module):
    """A transformer's feed-forward block while training (dropout after each layer)."""
    def __init__(self, d=64):
        super().__init__()
        self.up, self.down, self.drop = nn.Linear(d, 4 * d), nn.Linear(4 * d, d), nn.Dropout(0.1)

    def forward(self, x):
        return x + self.drop(self.down(self.drop(F.gelu(self.up(x)))))


def model_rows():
    torch.manual_seed(0)
    rows = {
        "ResNet blocks (BatchNorm)": (_ResNet(), torch.randn(8, 3, 16, 16),
                                      lambda o: F.cross_entropy(o, torch.arange(8) % 10)),
        "GPT block (masked softmax)": (_GPTBlock(), torch.randn(4, 16, 32), lambda o: o.pow(2).mean()),
        "LSTM language model": (_LSTMLM(), torch.randint(0, 100, (4, 12)),
                                lambda o: F.cross_entropy(o.reshape(-1, 100), torch.arange(48) % 100)),
        "UNet block (interpolate)": (_UNetBlock(), torch.randn(4, 3, 16, 16), lambda o: o.pow(2).mean()),
        "MLP-Mixer block": (_Mixer(), torch.randn(8, 16, 32), lambda o: o.pow(2).mean()),
        "depthwise block (hardswish)": (_Depthwise(), torch.randn(8, 16, 8, 8), lambda o: o.pow(2).mean()),
        "feed-forward with dropout": (_DropoutMLP(), torch.randn(8, 16, 64), lambda o: o.pow(2).mean()),
    }
    out = {}
    for name, (m, x, loss_of) in rows.items():
        def loss(p, x, m=m, loss_of=loss_of):
            return loss_of(torch.func.functional_call(m, p, (x,)))
        out[name] = (loss, (dict(m.named_parameters()), x))
    return out


# ---------------------------------------------------------------- activations and losses

def activation_rows():
    acts = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "mish": F.mish, "hardswish": F.hardswish,
            "hardsigmoid": F.hardsigmoid, "elu": F.elu, "selu": F.selu, "celu": F.celu, "leaky_relu": F.leaky_relu,
            "relu6": F.relu6, "hardtanh": F.hardtanh, "softplus": F.softplus, "sigmoid": torch.sigmoid,
            "tanh": torch.tanh, "logsigmoid": F.logsigmoid, "softsign": F.softsign, "tanhshrink": F.tanhshrink}
    x = torch.randn(8, 32, 16, 16, generator=torch.Generator().manual_seed(0))
    return {name: ((lambda x, a=a: (a(x) * x).sum()), (x,)) for name, a in acts.items()}


def loss_rows():
    g = torch.Generator().manual_seed(0)
    x, yr = torch.randn(64, 100, generator=g), torch.randn(64, 100, generator=g)
    y01, yc = torch.rand(64, 100, generator=g).round(), torch.randint(0, 100, (64,), generator=g)
    losses = {
        "binary_cross_entropy_with_logits": lambda x: F.binary_cross_entropy_with_logits(x, y01),
        "binary_cross_entropy(sigmoid)": lambda x: F.binary_cross_entropy(torch.sigmoid(x), y01),
        "mse_loss": lambda x: F.mse_loss(x, yr),
        "l1_loss": lambda x: F.l1_loss(x, yr),
        "smooth_l1_loss": lambda x: F.smooth_l1_loss(x, yr),
        "huber_loss": lambda x: F.huber_loss(x, yr),
        "kl_div(log_softmax)": lambda x: F.kl_div(F.log_softmax(x, -1), F.softmax(yr, -1), reduction="batchmean"),
        "cross_entropy(label_smoothing)": lambda x: F.cross_entropy(x, yc, label_smoothing=0.1),
        "nll_loss(log_softmax)": lambda x: F.nll_loss(F.log_softmax(x, -1), yc),
        "gaussian_nll_loss": lambda x: F.gaussian_nll_loss(x, yr, torch.ones_like(yr)),
        "poisson_nll_loss": lambda x: F.poisson_nll_loss(x, yr.abs()),
        "cosine_embedding_loss": lambda x: F.cosine_embedding_loss(x, yr, yr[:, 0].sign()),
        "logsumexp": lambda x: torch.logsumexp(x, -1).mean(),
    }
    return {name: (loss, (x,)) for name, loss in losses.items()}


SECTIONS = {"models": model_rows, "activations": activation_rows, "losses": loss_rows}


def _seeded(fn, args):
    """fn(*args) from one seed: functx and torch.func draw the same dropout masks."""
    torch.manual_seed(0)
    return fn(*args)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=sorted(SECTIONS), nargs="*", default=list(SECTIONS))
    ap.add_argument("--repeat", type=int, default=9)
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    for section in a.only:
        print(f"\n{section}: grad, functx / torch.func (speed = torch.func time / functx time)")
        for name, (loss, args) in SECTIONS[section]().items():
            fns = {"functx": functx.grad(loss), "torch.func": torch.func.grad(loss)}
            got, want = (_seeded(fn, args) for fn in fns.values())
            for u, v in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
                torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5, msg=name)
            t = interleaved(fns, {k: args for k in fns}, repeat=a.repeat)
            print(f"  {name:<34} {fmt_time(t['functx']):>10} {fmt_time(t['torch.func']):>10} "
                  f"{t['torch.func'] / t['functx']:6.2f}x", flush=True)


if __name__ == "__main__":
    main()
