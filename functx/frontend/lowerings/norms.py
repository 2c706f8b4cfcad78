"""Lowerings of layer_norm and group_norm: torch's kernels on eager levels (prims/fused_norm.py),
the decomposition elsewhere (layer norm's written here; group norm's torch's own)."""
from __future__ import annotations

import math

import torch

from ... import prims as P
from ...prims.fused import fused_here
from ...prims.fused_norm import normalize_rows
from ...prims.fused_norm_affine import normalize_affine
from ..functionalize import unwrap
from ..tensor import TracerTensor, wrap
from .common import _t, aten
from .registry import register, register_special


# ---------------------------------------------------------------- layer norm
# Native, the computation of torch._refs.native_layer_norm (so the same values and
# derivatives): the decomposition's shape checks import sympy, over a second of the first jit
# call of any model with a LayerNorm. Half inputs compute in float32; on the CPU mean and
# rstd come back in the input's dtype, as torch's do.

def _check_param_dtypes(t, params):
    """torch's CPU norm kernels' dtype rule: parameters of the input's dtype, or float32 for a
    bfloat16/float16 input; otherwise they raise (the decompositions would compute)."""
    if torch.device(t.device).type != "cpu":
        return
    for p in params:
        d = None if p is None else p.dtype if isinstance(p, torch.Tensor) else _t(p).dtype
        if d is None or d == t.dtype or (t.dtype in (torch.bfloat16, torch.float16) and d == torch.float32):
            continue
        raise RuntimeError("mixed dtype (CPU): all inputs must share same datatype." if t.dtype == torch.float64
                           else "mixed dtype (CPU): expect parameter to have scalar type of Float")


@register(aten.native_layer_norm.default)
def _native_layer_norm(x, normalized_shape, weight, bias, eps):
    t = _t(x)
    _check_param_dtypes(t, (weight, bias))
    n = len(normalized_shape)
    if tuple(t.shape[t.ndim - n:]) != tuple(normalized_shape) or n == 0:
        raise RuntimeError(f"Given normalized_shape={list(normalized_shape)}, expected input with shape "
                           f"[*, {', '.join(str(s) for s in normalized_shape)}], but got input of size "
                           f"{list(t.shape)}")
    axes = tuple(range(t.ndim - n, t.ndim))
    kept = tuple(range(t.ndim - n))
    stat_shape = tuple(t.shape[:t.ndim - n]) + (1,) * n
    compute = torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype
    if fused_here() and t.dtype == compute:     # eager levels: torch's kernels (prims/fused_norm.py)
        rows, m = math.prod(t.shape[:t.ndim - n]), math.prod(normalized_shape)
        x2 = P.reshape(x, (rows, m))
        if weight is not None and bias is not None:     # the affine inside the kernels
            y, mean, rstd = normalize_affine(x2, P.reshape(weight, (m,)), P.reshape(bias, (m,)), eps, False)
            return P.reshape(y, t.shape), P.reshape(mean, stat_shape), P.reshape(rstd, stat_shape)
        xhat, mean, rstd = normalize_rows(x2, eps)
        return (_affine(P.reshape(xhat, t.shape), weight, bias, axes, t.dtype),
                P.reshape(mean, stat_shape), P.reshape(rstd, stat_shape))
    xc = P.convert(x, compute)
    count = torch.sym_float(math.prod(t.shape[a] for a in axes))
    mean = P.div(P.reduce_sum(xc, axes), count)
    centered = P.sub(xc, P.broadcast_in_dim(mean, t.shape, kept))
    var = P.div(P.reduce_sum(P.mul(centered, centered), axes), count)
    rstd = P.rsqrt(P.add(var, float(eps)))
    out = _affine(P.mul(centered, P.broadcast_in_dim(rstd, t.shape, kept)), weight, bias, axes, compute)
    stat_dtype = t.dtype if t.device.type == "cpu" else compute
    return (P.convert(out, t.dtype), P.convert(P.reshape(mean, stat_shape), stat_dtype),
            P.convert(P.reshape(rstd, stat_shape), stat_dtype))


def _affine(xhat, weight, bias, dims, dtype):
    """xhat * weight + bias, weight and bias broadcast along dims (absent: skipped)."""
    shape = _t(xhat).shape
    if weight is not None:
        xhat = P.mul(xhat, P.broadcast_in_dim(P.convert(weight, dtype), shape, dims))
    if bias is not None:
        xhat = P.add(xhat, P.broadcast_in_dim(P.convert(bias, dtype), shape, dims))
    return xhat


# ---------------------------------------------------------------- group norm
# On eager levels, torch's kernels as for layer norm (each (example, group) a row); elsewhere
# torch's decomposition, as before.

@register_special(aten.native_group_norm.default)
def _native_group_norm(x, weight, bias, N, C, HxW, group, eps):
    if isinstance(x, torch.Tensor):
        _check_param_dtypes(x, (weight, bias))
    t = x.dtype if isinstance(x, torch.Tensor) else None
    if not (isinstance(x, TracerTensor) and t in (torch.float32, torch.float64) and fused_here()
            and type(N) is int and type(C) is int and type(HxW) is int and type(group) is int
            and group > 0 and C % group == 0 and N * C * HxW == x.numel() and N * HxW and C
            and all(p is None or (isinstance(p, torch.Tensor) and tuple(p.shape) == (C,) and p.dtype == t)
                    for p in (weight, bias))):
        return NotImplemented       # torch's decomposition (and its checks and errors)
    v = unwrap(x)
    xhat, mean, rstd = normalize_rows(P.reshape(v, (N * group, (C // group) * HxW)), eps)
    out = _affine(P.reshape(xhat, (N, C, HxW)), unwrap(weight) if weight is not None else None,
                  unwrap(bias) if bias is not None else None, (1,), t)
    return wrap(P.reshape(out, tuple(x.shape))), wrap(P.reshape(mean, (N, group))), wrap(P.reshape(rstd, (N, group)))
