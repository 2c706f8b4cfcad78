"""The corpus of real PyTorch code that tests/test_corpus.py runs under every transform.

A case is a function `build() -> Case`: `f(params, x)` returns a tensor or a tuple of
tensors, `params` is a dict of float64 tensors (what grad differentiates; nn modules go
through torch.func.functional_call), `x` is one example (the argument vmap batches), `xs`
a batch of examples (stacked along a new dim 0).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.distributions as td
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

D = torch.float64


@dataclasses.dataclass
class Case:
    f: Callable
    params: dict
    x: torch.Tensor
    xs: torch.Tensor
    skip: tuple = ()          # checks that do not apply, each with its reason in `why`
    why: str = ""
    # torch's forward-mode formula disagrees with its own backward (embedding's padding_idx
    # rows): functx's jvp is the transpose of its vjp, so J t comes from reverse mode
    jvp_from_reverse: bool = False


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0):
    return torch.randn(*shape, dtype=D, generator=_gen(seed))


def _batch(x, n=3):
    """n distinct examples shaped like x (float: scaled and shifted; int: rolled)."""
    if x.dtype.is_floating_point:
        return torch.stack([x * (1 - 0.1 * k) + 0.05 * k for k in range(n)])
    return torch.stack([x.roll(k, -1) for k in range(n)])


def module(make, x, *, train=False, kwargs=None, out=None, skip=(), why=""):
    """An nn.Module as f(params, x); `out` picks and post-processes the module's outputs."""
    def build():
        torch.manual_seed(0)
        m = make().double().train(train)
        params = {k: v.detach().clone() for k, v in m.named_parameters()}
        kw = kwargs or {}

        def f(p, x):
            y = functional_call(m, p, (x,), kw)
            return out(y) if out is not None else y
        xx = x()
        return Case(f, params, xx, _batch(xx), skip, why)
    return build


# ---------------------------------------------------------------- transformer layers

def _encoder(norm_first, batch_first, mask):
    def make():
        return nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0, norm_first=norm_first, batch_first=batch_first)
    shape = (2, 3, 8) if batch_first else (3, 2, 8)
    kw = {}
    if mask == "causal":
        kw = {"src_mask": nn.Transformer.generate_square_subsequent_mask(3, dtype=D)}
    elif mask == "padding":
        kw = {"src_key_padding_mask": torch.tensor([[False, False, True], [False, False, False]])}
    return module(make, lambda: _randn(*shape), train=True, kwargs=kw)


def _decoder(norm_first, batch_first):
    mem_shape = (2, 4, 8) if batch_first else (4, 2, 8)
    memory = _randn(*mem_shape, seed=7)
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(3, dtype=D)

    class Dec(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.TransformerDecoderLayer(8, 2, 12, dropout=0.0, norm_first=norm_first,
                                                    batch_first=batch_first)

        def forward(self, tgt):
            return self.layer(tgt, memory.to(tgt.dtype), tgt_mask=tgt_mask, tgt_is_causal=True)
    shape = (2, 3, 8) if batch_first else (3, 2, 8)
    return module(Dec, lambda: _randn(*shape), train=True)


# ---------------------------------------------------------------- attention

class _MHA(nn.Module):
    def __init__(self, mask_kind, need_weights, average=True):
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True, dropout=0.0)
        self.mask_kind, self.need_weights, self.average = mask_kind, need_weights, average

    def forward(self, x):
        kw = {}
        if "kpm" in self.mask_kind:
            kw["key_padding_mask"] = torch.tensor([[False, False, False, True], [False, True, False, False]])
            if "float" in self.mask_kind:
                kw["key_padding_mask"] = torch.where(kw["key_padding_mask"], -1e4, 0.0).to(x.dtype)
        if "attn" in self.mask_kind:
            causal = torch.ones(4, 4, dtype=torch.bool).triu(1)
            kw["attn_mask"] = causal if "bool" in self.mask_kind else torch.where(causal, -3.0, 0.5).to(x.dtype)
        out, w = self.mha(x, x, x, need_weights=self.need_weights, average_attn_weights=self.average, **kw)
        return (out, w) if self.need_weights else out


def _mha(mask_kind, need_weights, average=True):
    return module(lambda: _MHA(mask_kind, need_weights, average), lambda: _randn(2, 4, 8), train=True)


# ---------------------------------------------------------------- recurrent

def _rnn(kind, layers, bidirectional, batch_first=True):
    def make():
        return getattr(nn, kind)(4, 3, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
    shape = (2, 5, 4) if batch_first else (5, 2, 4)
    return module(make, lambda: _randn(*shape), out=lambda y: (y[0], y[1]) if kind != "LSTM" else (y[0], *y[1]))


class _Packed(nn.Module):
    """An RNN over a padded batch with lengths known when the model is built (the common
    pattern: lengths come from the data loader, concrete)."""

    def __init__(self, kind, bidirectional):
        super().__init__()
        self.rnn = getattr(nn, kind)(4, 3, bidirectional=bidirectional, batch_first=True)
        self.lengths = torch.tensor([5, 3])

    def forward(self, x):
        packed = nn.utils.rnn.pack_padded_sequence(x, self.lengths, batch_first=True, enforce_sorted=True)
        out, _ = self.rnn(packed)
        padded, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return padded


def _packed(kind, bidirectional):
    return module(lambda: _Packed(kind, bidirectional), lambda: _randn(2, 5, 4))


# ---------------------------------------------------------------- normalization, embeddings

def _batchnorm_eval(make, shape):
    def make_eval():
        m = make()
        with torch.no_grad():          # non-trivial running statistics
            m.running_mean.uniform_(-0.5, 0.5, generator=_gen(2))
            m.running_var.uniform_(0.5, 1.5, generator=_gen(3))
        return m
    return module(make_eval, lambda: _randn(*shape))


def _batchnorm_train(make, shape):
    """Training mode with copies of the running statistics, updated in place and returned (what
    torch.func does with module buffers under functional_call: the update is not differentiated)."""
    def build():
        torch.manual_seed(0)
        m = make().double().train()
        params = {k: v.detach().clone() for k, v in m.named_parameters()}
        buffers = {k: v.detach().clone() for k, v in m.named_buffers()}

        def f(p, x):
            bufs = {k: v.clone() for k, v in buffers.items()}
            y = functional_call(m, {**p, **bufs}, (x,))
            return y, bufs["running_mean"] * 1, bufs["running_var"] * 1
        x = _randn(*shape)
        return Case(f, params, x, _batch(x), ("vmap", "vmap_grad", "jit_grad"),
                    "vmap: per-example batch statistics can't update shared running stats (torch.func "
                    "raises too); jit: the statistics are closed over, so their update would happen once "
                    "(jit raises; test_corpus_fixes passes them as arguments)")
    return build


def _embedding(**kw):
    skip, why = ("jvp_x", "jac"), "integer input"
    if "max_norm" in kw:
        skip, why = skip + ("vmap",), why + "; vmap: max_norm renormalizes the shared weight in place per " \
            "example, which functx refuses (a clear error)"
    build = module(lambda: nn.Embedding(6, 3, **kw), lambda: torch.tensor([[0, 2, 5], [1, 0, 0]]),
                   skip=skip, why=why)
    return lambda: dataclasses.replace(build(), jvp_from_reverse="padding_idx" in kw)


class _Bag(nn.Module):
    def __init__(self, mode, offsets, weighted):
        super().__init__()
        self.bag = nn.EmbeddingBag(6, 3, mode=mode)
        self.offsets, self.weighted = offsets, weighted
        self.psw = torch.tensor([0.5, 1.0, 2.0, -1.0, 0.25, 3.0], dtype=D)

    def forward(self, idx):
        psw = self.psw.to(self.bag.weight.dtype) if self.weighted else None
        if self.offsets:
            return self.bag(idx.reshape(-1), torch.tensor([0, 2, 2]), per_sample_weights=psw)
        return self.bag(idx, per_sample_weights=None if psw is None else psw.reshape(idx.shape))


def _bag(mode, offsets=False, weighted=False):
    return module(lambda: _Bag(mode, offsets, weighted), lambda: torch.tensor([[0, 2, 5], [1, 4, 4]]),
                  skip=("jvp_x", "jac"), why="integer input")


# ---------------------------------------------------------------- resampling, conv

def _fn(fn, *param_shapes, x_shape, skip=(), why=""):
    """A functional op: params are its tensor arguments besides x."""
    def build():
        params = {f"a{i}": _randn(*s, seed=10 + i) for i, s in enumerate(param_shapes)}
        x = _randn(*x_shape, seed=1)
        return Case(lambda p, x: fn(x, *p.values()), params, x, _batch(x), skip, why)
    return build


def _grid_sample(mode, padding, align):
    def f(x, theta):
        grid = F.affine_grid(theta, (1, 2, 3, 4), align_corners=align)
        return F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=align)
    # No sample point lands exactly on the border (align_corners=True put one there), where the
    # derivative is a kink and torch's kernel and functx's clamp pick different sides (sharp_bits).
    theta = [[[1.1, 0.2, 0.151], [-0.3, 0.9, -0.199]]]

    def build():
        params = {"theta": torch.tensor(theta, dtype=D)}
        x = _randn(1, 2, 4, 5, seed=1)
        return Case(lambda p, x: f(x, p["theta"]), params, x, _batch(x))
    return build


# ---------------------------------------------------------------- distributions

def _dist(make, what, x_shape, skip=(), why=""):
    """A distribution's log_prob / entropy / rsample as a function of its parameters."""
    def build():
        params, x = make()

        def f(p, x):
            d = _DISTS[what[0]](p)
            if what[1] == "log_prob":
                return d.log_prob(x)
            if what[1] == "entropy":
                return d.entropy() + 0 * x.sum()
            if what[1] == "rsample":           # reparameterized: a fixed noise argument
                return d.loc + (d.scale_tril @ x.unsqueeze(-1)).squeeze(-1) if what[0].startswith("mvn") \
                    else d.loc + d.scale * x
            if what[1] == "kl":
                q = _DISTS[what[0]]({k: v * 0.8 + 0.1 for k, v in p.items()})
                return td.kl_divergence(d, q) + 0 * x.sum()
            raise ValueError(what)
        return Case(f, params, x, _batch(x), skip, why)
    return build


def _tril(n, seed):
    a = _randn(n, n, seed=seed)
    return torch.linalg.cholesky(a @ a.T + n * torch.eye(n, dtype=D))


_DISTS = {
    "normal": lambda p: td.Normal(p["loc"], p["scale"].exp(), validate_args=False),
    "mvn_tril": lambda p: td.MultivariateNormal(p["loc"], scale_tril=p["tril"], validate_args=False),
    "mvn_cov": lambda p: td.MultivariateNormal(p["loc"], covariance_matrix=p["tril"] @ p["tril"].mT,
                                               validate_args=False),
    "cat_logits": lambda p: td.Categorical(logits=p["logits"], validate_args=False),
    "cat_probs": lambda p: td.Categorical(probs=p["logits"].softmax(-1), validate_args=False),
    "bernoulli": lambda p: td.Bernoulli(logits=p["logits"], validate_args=False),
    "independent": lambda p: td.Independent(td.Normal(p["loc"], p["scale"].exp(), validate_args=False), 1,
                                            validate_args=False),
}


def _normal_params():
    return {"loc": _randn(3), "scale": _randn(3, seed=1) * 0.3}, _randn(3, seed=2)


def _mvn_params():
    return {"loc": _randn(3), "tril": _tril(3, 1)}, _randn(3, seed=2)


def _cat_params():
    return {"logits": _randn(2, 4)}, torch.tensor([3, 1])


def _bern_params():
    return {"logits": _randn(4)}, torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=D)


INT_X = dict(skip=("jvp_x", "jac"), why="integer input")
CASES = {
    **{f"encoder_nf{int(nf)}_bf{int(bf)}_{mask}": _encoder(nf, bf, mask)
       for nf in (False, True) for bf in (False, True) for mask in ("none", "causal", "padding")},
    **{f"decoder_nf{int(nf)}_bf{int(bf)}": _decoder(nf, bf) for nf in (False, True) for bf in (False, True)},
    **{f"mha_{m}_w{int(w)}": _mha(m, w) for m in ("none", "kpm", "kpm_float", "attn_bool", "attn_float",
                                                  "kpm_attn_bool") for w in (False, True)},
    "mha_per_head_weights": _mha("kpm_attn_bool", True, average=False),
    **{f"{k}_l{n}_bi{int(b)}": _rnn(k, n, b) for k in ("RNN", "LSTM", "GRU") for n in (1, 2) for b in (False, True)},
    "LSTM_seq_first": _rnn("LSTM", 1, False, batch_first=False),
    **{f"packed_{k}_bi{int(b)}": _packed(k, b) for k in ("RNN", "LSTM", "GRU") for b in (False, True)},
    "BatchNorm1d_eval": _batchnorm_eval(lambda: nn.BatchNorm1d(3), (4, 3)),
    "BatchNorm2d_eval": _batchnorm_eval(lambda: nn.BatchNorm2d(3), (2, 3, 2, 3)),
    "BatchNorm1d_train": _batchnorm_train(lambda: nn.BatchNorm1d(3), (4, 3)),
    "BatchNorm2d_train": _batchnorm_train(lambda: nn.BatchNorm2d(3), (2, 3, 2, 3)),
    "LayerNorm": module(lambda: nn.LayerNorm((2, 3)), lambda: _randn(4, 2, 3)),
    "GroupNorm": module(lambda: nn.GroupNorm(2, 4), lambda: _randn(2, 4, 3)),
    "Embedding": _embedding(),
    "Embedding_padding_idx": _embedding(padding_idx=0),
    "Embedding_max_norm": _embedding(max_norm=1.0),
    **{f"EmbeddingBag_{m}": _bag(m) for m in ("sum", "mean", "max")},
    **{f"EmbeddingBag_{m}_offsets": _bag(m, offsets=True) for m in ("sum", "mean", "max")},
    "EmbeddingBag_sum_weighted": _bag("sum", weighted=True),
    "EmbeddingBag_sum_offsets_weighted": _bag("sum", offsets=True, weighted=True),
    "interp_nearest": _fn(lambda x: F.interpolate(x, scale_factor=2, mode="nearest"), x_shape=(1, 2, 3, 4)),
    "interp_nearest_size": _fn(lambda x: F.interpolate(x, size=(5, 7), mode="nearest"), x_shape=(1, 2, 3, 4)),
    **{f"interp_{m}_ac{int(a)}": _fn(lambda x, m=m, a=a: F.interpolate(x, size=(5, 6), mode=m, align_corners=a),
                                     x_shape=(1, 2, 3, 4)) for m in ("bilinear", "bicubic") for a in (False, True)},
    **{f"grid_sample_{m}_{p}_ac{int(a)}": _grid_sample(m, p, a) for m in ("bilinear", "nearest")
       for p in ("zeros", "border", "reflection") for a in (False, True)},
    "Conv2d": module(lambda: nn.Conv2d(2, 3, 3, padding=1, stride=2), lambda: _randn(1, 2, 5, 4)),
    "Conv1d_dilated": module(lambda: nn.Conv1d(2, 4, 3, dilation=2, groups=2), lambda: _randn(2, 2, 7)),
    "ConvTranspose2d": module(lambda: nn.ConvTranspose2d(2, 3, 3, stride=2, output_padding=1),
                              lambda: _randn(1, 2, 3, 3)),
    "ConvTranspose1d": module(lambda: nn.ConvTranspose1d(2, 2, 4, stride=3, padding=1), lambda: _randn(1, 2, 4)),
    **{f"{d}_{w}": _dist(make, (d, w), None) for d, make in
       (("normal", _normal_params), ("independent", _normal_params), ("mvn_tril", _mvn_params),
        ("mvn_cov", _mvn_params)) for w in ("log_prob", "entropy", "kl")},
    "normal_rsample": _dist(_normal_params, ("normal", "rsample"), None),
    "mvn_tril_rsample": _dist(_mvn_params, ("mvn_tril", "rsample"), None),
    **{f"{d}_{w}": _dist(_cat_params, (d, w), None, **INT_X) for d in ("cat_logits", "cat_probs")
       for w in ("log_prob", "entropy", "kl")},
    **{f"bernoulli_{w}": _dist(_bern_params, ("bernoulli", w), None) for w in ("log_prob", "entropy", "kl")},
}
