"""torch's flash-attention CPU kernels for the attention primitives' impls, where they fit.

`aten._scaled_dot_product_flash_attention_for_cpu` and its backward compute exactly what
attention_math's forward and backward do (the same lse, top-left causal alignment) in one
blocked kernel each, against ~10 and ~12 separate torch calls for the reference (a
TransformerEncoderLayer's grad spent a sixth of its time there). They take (B, H, L, D)
operands with one head size for q, k and v, no additive bias on this path, and float32 or
float64 (half precision stays on the reference, which rounds once from float32), and
operands whose last dim is not dense are copied. Other ranks stay on the reference as torch's
SDPA keeps them on its math path: at extreme scales (saturated float32 softmax, inf inputs)
the two round differently, and functx then agrees with eager torch. The backward has no lse
cotangent and no dS output, so those cases stay on attention_math too.
"""
from __future__ import annotations

import torch

_aten = torch.ops.aten
_FORWARD = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_BACKWARD = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)


def fits(q, k, v, bias) -> bool:
    return (_BACKWARD is not None and bias is None and q.device.type == "cpu"
            and q.dtype in (torch.float32, torch.float64) and q.ndim == 4
            and v.shape[-1] == q.shape[-1] and q.numel() > 0 and k.numel() > 0)


def _dense(x):
    # the kernels read the last dim as dense (torch's SDPA picks them only where its stride is
    # 1): a transposed key (softmax(x @ w) @ w matched as attention under jit) gave wrong values
    return x if x.stride(-1) == 1 else x.contiguous()


def forward(q, k, v, bias, causal, scale):
    """(out, lse), as attention_math.forward."""
    return list(_FORWARD(_dense(q), _dense(k), _dense(v), 0.0, causal, scale=scale))


def backward(q, k, v, bias, out, lse, dout, dlse, causal, scale, need_dbias=False):
    """(dq, dk, dv, None), as attention_math.backward without dlse and dS."""
    dq, dk, dv = _BACKWARD(_dense(dout), _dense(q), _dense(k), _dense(v), _dense(out), lse, 0.0, causal,
                           scale=scale)
    return dq, dk, dv, None
