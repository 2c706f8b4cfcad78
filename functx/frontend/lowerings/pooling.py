"""Lowerings of max pooling: with indices as torch's kernel on eager levels (prims/pool.py),
torch._decomp's elsewhere; global adaptive max pooling reading the value at the first maximum."""
from __future__ import annotations

import torch

from ... import prims as P
from ..functionalize import unwrap
from ..tensor import wrap
from .common import aten
from .registry import register_special


# ---------------------------------------------------------------- max pooling with indices
# Under eager transforms torch's kernel (prims/pool.py; the decomposition was ~12 kernels each
# way: 0.4x of torch.func's speed on a small conv net's pooling); elsewhere torch._decomp's.

def _max_pool_with_indices(spatial):
    def special(input, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
        if input.dim() != spatial + 2 or input.dtype not in (torch.float32, torch.float64) or not P.fused_here():
            return NotImplemented                   # torch's decomposition (dispatch.py)
        # torch's argument checks and messages, on a stand-in
        kernel = _pool_arg(kernel_size, spatial)
        meta = torch.empty(tuple(input.shape), dtype=input.dtype, device="meta")
        (torch.ops.aten.max_pool2d_with_indices.default if spatial == 2 else torch.ops.aten.max_pool3d_with_indices.default)(
            meta, kernel_size, stride, padding, dilation, ceil_mode)
        values, indices = P.max_pool(unwrap(input), kernel, _pool_arg(stride, spatial) if stride else kernel,
                                     _pool_arg(padding, spatial), _pool_arg(dilation, spatial), ceil_mode)
        return wrap(values), wrap(indices)
    return special


def _pool_arg(v, n):
    v = [v] if isinstance(v, int) else list(v)
    return tuple(v * n if len(v) == 1 else v)


register_special(aten.max_pool2d_with_indices.default)(_max_pool_with_indices(2))
register_special(aten.max_pool3d_with_indices.default)(_max_pool_with_indices(3))


# ---------------------------------------------------------------- global adaptive max pooling
# AdaptiveMaxPool2d(1) / 3d(1): torch._decomp takes the amax over the plane, whose derivative
# splits among tied maxima; torch's kernel sends it to the index it returns (the first
# maximum), as max_pool does. The value read at that index has torch's derivative.

def _global_adaptive_max_pool(spatial):
    def special(input, output_size):
        if any(o != 1 for o in output_size) or input.dim() <= spatial or \
                any(n == 0 for n in input.shape[input.dim() - spatial:]):
            return NotImplemented                   # torch's decomposition (dispatch.py)
        flat = input.flatten(-spatial)
        index = torch.argmax(flat, dim=-1, keepdim=True)
        value = torch.gather(flat, -1, index)
        shape = tuple(input.shape[:input.dim() - spatial]) + (1,) * spatial
        return value.reshape(shape), index.reshape(shape)
    return special


register_special(aten.adaptive_max_pool2d.default)(_global_adaptive_max_pool(2))
register_special(aten.adaptive_max_pool3d.default)(_global_adaptive_max_pool(3))
