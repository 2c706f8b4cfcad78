"""torch's flash-attention CPU kernels for the attention primitives' impls, where they fit.

`aten._scaled_dot_product_flash_attention_for_cpu` and its backward compute exactly what
attention_math's forward and backward do (the same lse, top-left causal alignment) in one
blocked kernel each, against ~10 and ~12 separate torch calls for the reference (a
TransformerEncoderLayer's grad spent a sixth of its time there). They take (B, H, L, D)
operands with one head size for q, k and v, no additive bias on this path, and float32 or
float64 (half precision stays on the reference, which rounds once from float32); other
leading dims are folded into B, and operands whose last dim is not dense are copied. The
backward has no lse cotangent and no dS output, so those cases (and everything else) stay
on attention_math.
"""
from __future__ import annotations

import torch

_aten = torch.ops.aten
_FORWARD = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_BACKWARD = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)


def fits(q, k, v, bias) -> bool:
    return (_BACKWARD is not None and bias is None and q.device.type == "cpu"
            and q.dtype in (torch.float32, torch.float64) and q.ndim >= 2
            and v.shape[-1] == q.shape[-1] and q.numel() > 0 and k.numel() > 0)


def _as_4d(x):
    # the kernels read the last dim as dense (torch's SDPA picks them only where its stride is
    # 1): a transposed key (softmax(x @ w) @ w matched as attention under jit) gave wrong values
    if x.stride(-1) != 1:
        x = x.contiguous()
    return x if x.ndim == 4 else x.reshape((-1, 1) + tuple(x.shape[-2:]))


def forward(q, k, v, bias, causal, scale):
    """(out, lse), as attention_math.forward."""
    out, lse = _FORWARD(_as_4d(q), _as_4d(k), _as_4d(v), 0.0, causal, scale=scale)
    return out.reshape(q.shape[:-1] + v.shape[-1:]), lse.reshape(q.shape[:-1])


def backward(q, k, v, bias, out, lse, dout, dlse, causal, scale, need_dbias=False):
    """(dq, dk, dv, None), as attention_math.backward without dlse and dS."""
    lse4 = lse if lse.ndim == 3 else lse.reshape((-1, 1, lse.shape[-1]))
    dq, dk, dv = _BACKWARD(_as_4d(dout), _as_4d(q), _as_4d(k), _as_4d(v), _as_4d(out), lse4, 0.0, causal,
                           scale=scale)
    return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape), None
