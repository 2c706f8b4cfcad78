"""Scaled-dot-product attention in plain PyTorch: the reference every attention kernel is
tested against, and what the primitives run on the CPU.

Shapes: q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv), bias None or broadcastable to
(..., Lq, Lk) (an additive float mask; -inf removes a key). `causal` keeps key j for query i
when j <= i (top-left aligned, as torch's is_causal). S = scale * q k^T + bias, P = softmax(S)
over keys, out = P v, lse = logsumexp(S). A query row whose keys are all removed gives out = 0
and lse = -inf (torch's SDPA returns 0 there too), with zero derivatives.

Half-precision inputs are computed in float32 and rounded once, as the kernels do.
"""
from __future__ import annotations

import torch


def _compute_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _up(x, dtype):
    return None if x is None else x.to(dtype)


def scores(q, k, bias, causal, scale):
    """S = scale * q k^T + bias, causal positions set to -inf (compute dtype)."""
    s = (q @ k.transpose(-2, -1)) * scale
    if bias is not None:
        s = s + bias
    if causal:
        lq, lk = s.shape[-2], s.shape[-1]
        keep = torch.ones(lq, lk, dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~keep, float("-inf"))
    return s


def _probs(s, lse):
    """P = exp(S - lse), with P = 0 on rows whose keys are all removed (lse = -inf)."""
    safe = torch.where(torch.isneginf(lse), torch.full_like(lse, float("inf")), lse)
    return torch.exp(s - safe[..., None])


def forward(q, k, v, bias, causal, scale):
    """(out, lse)."""
    dt, in_dtype = _compute_dtype(q.dtype), q.dtype
    q, k, v, bias = _up(q, dt), _up(k, dt), _up(v, dt), _up(bias, dt)
    s = scores(q, k, bias, causal, scale)
    lse = torch.logsumexp(s, dim=-1)
    out = _probs(s, lse) @ v
    return out.to(in_dtype), lse


def jvp(q, k, v, bias, dq, dk, dv, dbias, causal, scale):
    """(out, lse, dout, dlse): the forward and its directional derivative along the tangents
    (any of dq, dk, dv, dbias may be None: zero). dS = scale (dq k^T + q dk^T) + dbias,
    dlse = rowsum(P dS), dout = (P (dS - dlse)) v + P dv."""
    dt = _compute_dtype(q.dtype)
    in_dtype = v.dtype
    q, k, v, bias = _up(q, dt), _up(k, dt), _up(v, dt), _up(bias, dt)
    dq, dk, dv, dbias = _up(dq, dt), _up(dk, dt), _up(dv, dt), _up(dbias, dt)
    s = scores(q, k, bias, causal, scale)
    lse = torch.logsumexp(s, dim=-1)
    p = _probs(s, lse)
    out = p @ v
    ds = torch.zeros_like(s)
    if dq is not None:
        ds = ds + (dq @ k.transpose(-2, -1)) * scale
    if dk is not None:
        ds = ds + (q @ dk.transpose(-2, -1)) * scale
    if dbias is not None:
        ds = ds + dbias
    pds = torch.where(p == 0, torch.zeros_like(p), p * ds)    # removed keys: no contribution
    dlse = pds.sum(-1)
    dout = pds @ v - dlse[..., None] * out
    if dv is not None:
        dout = dout + p @ dv
    return out.to(in_dtype), lse, dout.to(in_dtype), dlse


def backward(q, k, v, bias, out, lse, dout, dlse, causal, scale, need_dbias=False):
    """(dq, dk, dv, dS): the transpose of jvp's (dout, dlse) in (dq, dk, dv, dbias), i.e. the
    gradient of <dout, out> + <dlse, lse>. dS (..., Lq, Lk) is dbias before summing over
    bias's broadcast dims (None unless need_dbias)."""
    dt = _compute_dtype(q.dtype)
    in_dtype = q.dtype
    q, k, v, bias, out, dout = (_up(x, dt) for x in (q, k, v, bias, out, dout))
    s = scores(q, k, bias, causal, scale)
    p = _probs(s, lse.to(dt))
    delta = (dout * out).sum(-1)
    if dlse is not None:
        delta = delta - dlse.to(dt)
    dp = dout @ v.transpose(-2, -1)
    ds = p * (dp - delta[..., None])
    dv = p.transpose(-2, -1) @ dout
    dq = (ds @ k) * scale
    dk = (ds.transpose(-2, -1) @ q) * scale
    return dq.to(in_dtype), dk.to(in_dtype), dv.to(in_dtype), (ds if need_dbias else None)
