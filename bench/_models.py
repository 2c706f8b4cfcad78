"""Model code shared by the CPU benchmarks."""
from __future__ import annotations

import torch


def init_mlp(sizes, seed=0, dtype=torch.float32):
    """(W0, b0, W1, b1, ...) with W of shape (in, out), as a tuple (a flat jit signature)."""
    g = torch.Generator().manual_seed(seed)
    params = []
    for i, o in zip(sizes[:-1], sizes[1:]):
        params.append(torch.randn(i, o, generator=g, dtype=dtype) / i ** 0.5)
        params.append(torch.randn(o, generator=g, dtype=dtype) * 0.1)
    return tuple(params)


def mlp(params, x, act=torch.tanh):
    """Works on torch tensors and on JAX arrays alike (only @, + and act)."""
    n = len(params) // 2
    for k in range(n):
        x = x @ params[2 * k] + params[2 * k + 1]
        if k < n - 1:
            x = act(x)
    return x


def rnn_loss(W, xs):
    """An RNN as a Python loop filling its outputs in place (`out[t] = h`)."""
    h, out = xs.new_zeros(xs.shape[1:]), xs.new_zeros(xs.shape)
    for t in range(xs.shape[0]):
        h = torch.tanh(h @ W + xs[t])
        out[t] = h
    return out.pow(2).mean()
