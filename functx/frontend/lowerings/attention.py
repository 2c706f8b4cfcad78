"""F.scaled_dot_product_attention onto the fused attention primitive (functx/kernels/attention.py).

ATen decomposes SDPA below the Python dispatch key (into matmuls and a safe softmax, or a
CPU flash kernel), so functx catches the call one level up: TracerTensor.__torch_function__
sends `F.scaled_dot_product_attention` to `scaled_dot_product_attention` below (a composite,
frontend/composites.py), which normalizes torch's arguments with torch ops on the wrappers
(a boolean mask becomes an additive 0/-inf bias, enable_gqa repeats key/value heads) and calls
the custom op `functx::attention`, whose lowering binds the primitive. Calls the primitive
does not cover run torch's own decomposition as before: dropout_p > 0 (its random numbers
follow jit's and vmap's random machinery there), leading dims that differ between q, k and v
(torch broadcasts them), masks larger than the output, empty dims, and invalid calls (torch
raises its own error).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ...kernels import attention_math
from ...kernels.attention import attention
from .registry import register

_SDPA = torch.nn.functional.scaled_dot_product_attention


@torch.library.custom_op("functx::attention", mutates_args=())
def attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor],
                 causal: bool, scale: float) -> torch.Tensor:
    """softmax(scale q k^T + bias) v on plain tensors (functx only calls it on wrappers)."""
    return attention_math.forward(q, k, v, bias, causal, scale)[0]


@attention_op.register_fake
def _attention_layout(q, k, v, bias, causal, scale):
    """The result's layout, as torch's CPU kernel lays it out (what x.stride() reports): a 4-D
    query's layout where it is dense with unit last stride and v's head size is q's (a
    (B, L, H, E) query transposed to (B, H, L, E) keeps its strides), else contiguous."""
    if q.dim() == 4 and v.shape[-1] == q.shape[-1] and q.stride(-1) == 1 and _dense(q):
        return torch.empty_like(q)
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


def _dense(t) -> bool:
    """Whether t's elements fill its memory without gaps or overlap (a permuted contiguous tensor)."""
    expected = 1
    for stride, size in sorted((st, s) for s, st in zip(t.shape, t.stride()) if s != 1):
        if stride != expected:
            return False
        expected *= size
    return True


@register(torch.ops.functx.attention.default)
def _attention(q, k, v, bias, causal, scale):
    return attention(q, k, v, bias, causal, scale)


def _torch_sdpa(*args, **kwargs):
    with torch._C.DisableTorchFunctionSubclass():
        return _SDPA(*args, **kwargs)


def _fits(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa):
    """Whether the call is one the primitive computes exactly as torch does."""
    ts = (query, key, value)
    if not all(isinstance(t, torch.Tensor) for t in ts) or dropout_p != 0.0:
        return False
    if not query.dtype.is_floating_point or any(t.dtype != query.dtype for t in ts):
        return False
    if query.ndim < 2 or not (query.ndim == key.ndim == value.ndim) or 0 in (*query.shape, *key.shape, *value.shape):
        return False
    if key.shape[-1] != query.shape[-1] or value.shape[-2] != key.shape[-2]:
        return False
    lead_q, lead_k = query.shape[:-2], key.shape[:-2]
    if key.shape[:-2] != value.shape[:-2]:
        return False
    if enable_gqa and query.ndim >= 3 and lead_q[:-1] == lead_k[:-1] and lead_k[-1] and lead_q[-1] % lead_k[-1] == 0:
        pass
    elif lead_q != lead_k:
        return False
    if attn_mask is not None:
        if is_causal or attn_mask.ndim > query.ndim:
            return False
        if attn_mask.dtype != torch.bool and attn_mask.dtype != query.dtype:
            return False
        full = (*lead_q, query.shape[-2], key.shape[-2])
        shape = (1,) * (query.ndim - attn_mask.ndim) + tuple(attn_mask.shape)
        if any(m not in (1, n) for m, n in zip(shape, full)):
            return False
    return True


def bias_and_scale(query, attn_mask, scale):
    """torch's SDPA mask and scale as the primitive takes them: an additive bias of q's rank
    (a boolean mask becomes 0/-inf) or None, and 1/sqrt(head dim) when scale is None."""
    bias = None
    if attn_mask is not None:
        bias = attn_mask.reshape((1,) * (query.ndim - attn_mask.ndim) + tuple(attn_mask.shape))
        if bias.dtype == torch.bool:
            bias = torch.where(bias, 0.0, float("-inf")).to(query.dtype)
    return bias, 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, enable_gqa=False):
    if not _fits(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa):
        return _torch_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                           scale=scale, enable_gqa=enable_gqa)
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        groups = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(groups, dim=-3)
        value = value.repeat_interleave(groups, dim=-3)
    bias, scale = bias_and_scale(query, attn_mask, scale)
    # Below torch's autograd key: wrappers of values computed from closed-over parameters that
    # require grad would otherwise send the op to its torch autograd formula (an
    # autograd.Function, refused on wrappers); torch's autograd still records the op where it
    # runs on real tensors (core/trace.py's EvalTrace), so backward through the result works.
    with torch._C._AutoDispatchBelowAutograd():
        return torch.ops.functx.attention(query, key, value, bias, bool(is_causal), float(scale))

