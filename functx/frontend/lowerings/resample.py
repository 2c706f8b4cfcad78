"""Lowerings of F.interpolate's kernels (upsample_*), adaptive average pooling and reflect /
replicate padding: torch's kernel and its backward on eager levels (prims/resample.py), torch._decomp's decomposition
elsewhere, with eager's handling of scales it ignores."""
from __future__ import annotations

import torch

from ... import prims as P
from ..functionalize import unwrap
from ..tensor import wrap
from .common import aten
from .registry import register_special

# (op, spatial dims, how many flags (align_corners) come before the scales, the dims where
# eager torch ignores a given scale: see below)
_same_size = lambda o, i: o == i                    # noqa: E731
_same_or_double = lambda o, i: o == i or o == 2 * i  # noqa: E731
_never = lambda o, i: False                         # noqa: E731
_OPS = [
    (aten.upsample_nearest1d.default, 1, 0, _never),
    (aten.upsample_nearest2d.default, 2, 0, _same_or_double),
    (aten.upsample_nearest3d.default, 3, 0, _never),
    (aten._upsample_nearest_exact1d.default, 1, 0, _never),
    (aten._upsample_nearest_exact2d.default, 2, 0, _never),
    (aten._upsample_nearest_exact3d.default, 3, 0, _never),
    (aten.upsample_linear1d.default, 1, 1, _same_size),
    (aten.upsample_bilinear2d.default, 2, 1, _same_size),
    (aten.upsample_bicubic2d.default, 2, 1, _never),
    (aten.upsample_trilinear3d.default, 3, 1, _same_size),
]


# ---------------------------------------------------------------- upsampling with a scale factor
# F.interpolate(x, scale_factor=s) passes s on, and source coordinates use 1/s. Eager torch's
# kernels ignore s along a dim whose output size equals its input size (a copy) for the
# linear modes, and for 2-D nearest also where the output is twice the input (index >> 1);
# torch._decomp's decompositions always use s (F.interpolate(x, scale_factor=1.1,
# mode="linear") moved every sample). Such dims go to the decomposition without their scale,
# which is then exactly eager's. (Measured on torch's CPU kernels: 1-D/3-D nearest, bicubic
# and nearest-exact use s everywhere, as the decompositions do; align_corners=True ignores s.)
# On eager levels torch's kernel itself runs (the same bits as eager, whatever the scales).

def _upsample(op, spatial, n_flags, ignored):
    names = [a.name for a in op._schema.arguments][2:]

    def special(input, output_size, *rest, **kwargs):
        given = dict(zip(names, rest), **kwargs)
        if (input.dim() == spatial + 2 and input.dtype in (torch.float32, torch.float64) and P.fused_here()
                and input.numel()):
            out = P.upsample(unwrap(input), op.__name__.split(".")[0], tuple(int(n) for n in output_size),
                             tuple(given.get(n) for n in names))
            return wrap(out)
        if n_flags and given.get(names[0]):          # align_corners=True: scales are not used
            return NotImplemented
        scale_names = names[n_flags:]
        sizes = zip(output_size, input.shape[input.dim() - len(scale_names):])
        dropped = {n: None for n, (o, i) in zip(scale_names, sizes) if given.get(n) is not None and ignored(o, i)}
        if not dropped:
            return NotImplemented                   # torch's decomposition, as given (dispatch.py)
        given.update(dropped)
        return op(input, output_size, **given)
    register_special(op)(special)


for _op, _spatial, _flags, _ignored in _OPS:
    _upsample(_op, _spatial, _flags, _ignored)


# ---------------------------------------------------------------- adaptive average pooling
# On eager levels torch's kernel and its backward kernel (prims/resample.py; the
# decomposition's gathers were 0.46x of torch.func's speed); elsewhere torch._decomp's.

def _adaptive_avg_pool(spatial):
    op = torch.ops.aten._adaptive_avg_pool2d.default if spatial == 2 else torch.ops.aten._adaptive_avg_pool3d.default

    def special(input, output_size):
        if not (input.dim() == spatial + 2 and input.dtype in (torch.float32, torch.float64) and P.fused_here()
                and input.numel()):
            return NotImplemented                   # torch's decomposition (dispatch.py)
        op(torch.empty(tuple(input.shape), dtype=input.dtype, device="meta"), output_size)   # torch's checks
        return wrap(P.spatial_map(unwrap(input), op.__name__.split(".")[0], (tuple(int(n) for n in output_size),)))
    register_special(op)(special)


_adaptive_avg_pool(2)
_adaptive_avg_pool(3)


# ---------------------------------------------------------------- reflect and replicate padding
# F.pad(mode="reflect" / "replicate") on eager levels: torch's kernel and its backward kernel
# (prims/resample.py; the decomposition's index arithmetic ran at 0.5x of torch.func's
# speed); elsewhere, and for negative pads, torch._decomp's.

def _spatial_pad(name, spatial):
    op = getattr(torch.ops.aten, f"{name}{spatial}d").default

    def special(input, padding):
        if not (input.dim() == spatial + 2 and input.dtype in (torch.float32, torch.float64) and P.fused_here()
                and input.numel() and all(int(p) >= 0 for p in padding)):
            return NotImplemented                   # torch's decomposition (dispatch.py)
        op(torch.empty(tuple(input.shape), dtype=input.dtype, device="meta"), padding)    # torch's checks
        return wrap(P.spatial_map(unwrap(input), f"{name}{spatial}d", (tuple(int(p) for p in padding),)))
    register_special(op)(special)


for _name in ("reflection_pad", "replication_pad"):
    for _spatial in (1, 2, 3):
        _spatial_pad(_name, _spatial)
