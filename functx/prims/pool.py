"""max_pool: torch's max pooling with indices (aten.max_pool2d/3d_with_indices) as one primitive.

    max_pool(x, kernel, stride, padding, dilation, ceil_mode) -> (values, indices)
    x: (N, C, *spatial); indices: each value's flat offset in its (N, C) plane (torch's).

Eager transforms bind it where they bind the fused primitives (prims/fused.py): torch's
kernel forward, and the values' tangent reads the tangent at the indices (take_along_axis
over the flattened plane), so the cotangent scatters to the first maximum of each window,
as torch's max_pool2d_with_indices_backward does. The decomposition (`Primitive.composite`,
for graphs that stage it) takes the same maximum out of strided slices of the input padded
with -inf: argmax (the first maximum, NaN included, as torch's kernel) picks the index, and
the value is read there, so it has the same derivative.
"""
from __future__ import annotations

import itertools
import math

import torch
from torch._meta_registrations import pooling_output_shape

from ..core import EXTERN, Primitive, Zero
from ..core.trace import type_of
from . import elementwise as ew
from . import shape as sh
from .fused import fused_or_decomposed
from .indexing import take_along_axis
from .reduce import argmax

_KERNELS = {2: torch.ops.aten.max_pool2d_with_indices.default, 3: torch.ops.aten.max_pool3d_with_indices.default}


def _out_spatial(spatial, kernel, stride, padding, dilation, ceil_mode):
    return tuple(pooling_output_shape(n, k, p, s, d, ceil_mode)
                 for n, k, s, p, d in zip(spatial, kernel, stride, padding, dilation))


def _pool_type(xt, *, kernel, stride, padding, dilation, ceil_mode):
    shape = tuple(xt.shape[:2]) + _out_spatial(xt.shape[2:], kernel, stride, padding, dilation, ceil_mode)
    return [xt.with_shape(shape), xt.with_shape(shape).with_dtype(torch.int64)]


def _pool_impl(x, *, kernel, stride, padding, dilation, ceil_mode):
    return list(_KERNELS[len(kernel)](x, kernel, stride, padding, dilation, ceil_mode))


def take_at(t, indices):
    """t's values at a pooling's indices: (N, C, *spatial) -> indices' shape."""
    tt, it = type_of(t), type_of(indices)
    flat = sh.reshape(t, tuple(tt.shape[:2]) + (math.prod(tt.shape[2:]),))
    idx = sh.reshape(indices, tuple(it.shape[:2]) + (math.prod(it.shape[2:]),))
    return sh.reshape(take_along_axis(flat, idx, 2), tuple(it.shape))


def _pool_jvp(primals, tangents, **params):
    (x,), (t,) = primals, tangents
    values, indices = max_pool_p.bind(x, **params)
    tangent = Zero(type_of(values)) if isinstance(t, Zero) else take_at(t, indices)
    return [values, indices], [tangent, Zero(type_of(indices))]


def _pool_batch(axis, args, dims, **params):
    """The examples folded into N."""
    (x,), (d,) = args, dims
    x = sh.moveaxis(x, d, 0)
    xt = type_of(x)
    outs = max_pool_p.bind(sh.reshape(x, (xt.shape[0] * xt.shape[1],) + tuple(xt.shape[2:])), **params)
    return [sh.reshape(o, tuple(xt.shape[:2]) + tuple(type_of(o).shape[1:])) for o in outs], [0, 0]


def _pool_decomposed(x, *, kernel, stride, padding, dilation, ceil_mode):
    xt = type_of(x)
    spatial = tuple(xt.shape[2:])
    out = _out_spatial(spatial, kernel, stride, padding, dilation, ceil_mode)
    # -inf padding on both sides, past the input as far as the last window reaches
    high = tuple((o - 1) * s + d * (k - 1) + 1 - n - p
                 for o, s, d, k, n, p in zip(out, stride, dilation, kernel, spatial, padding))
    padded = sh.pad(x, ((0, 0, 0), (0, 0, 0)) + tuple((p, max(h, 0), 0) for p, h in zip(padding, high)),
                    -math.inf)
    windows = []
    for offset in itertools.product(*(range(k) for k in kernel)):
        start = (0, 0) + tuple(o * d for o, d in zip(offset, dilation))
        limit = tuple(xt.shape[:2]) + tuple(b + (o - 1) * s + 1 for b, o, s in zip(start[2:], out, stride))
        w = sh.slice_(padded, start, limit, (1, 1) + tuple(stride))
        windows.append(sh.reshape(w, tuple(type_of(w).shape) + (1,)))
    which = argmax(sh.concatenate(windows, len(out) + 2), len(out) + 2)         # (N, C, *out)
    # the flat input offset of window position `which` at each output position
    plane = [math.prod(spatial[i + 1:]) for i in range(len(spatial))]
    base = torch.zeros(out, dtype=torch.int64)
    for i, (o, s, p) in enumerate(zip(out, stride, padding)):
        view = [1] * len(out)
        view[i] = o
        base = base + (torch.arange(o) * s - p).reshape(view) * plane[i]
    offsets = torch.tensor([sum(k * d * m for k, d, m in zip(offset, dilation, plane))
                            for offset in itertools.product(*(range(k) for k in kernel))], dtype=torch.int64)
    shape = tuple(xt.shape[:2]) + out
    offset = take_along_axis(sh.broadcast_in_dim(offsets.to(xt.device), shape + (len(offsets),), (len(shape),)),
                             sh.reshape(which, shape + (1,)), len(shape))
    indices = ew.add(sh.broadcast_in_dim(base.to(xt.device), shape, tuple(range(2, len(shape)))),
                     sh.reshape(offset, shape))
    return [take_at(x, indices), indices]


max_pool_p = Primitive(
    "max_pool", kind=EXTERN, multiple_results=True,
    abstract_eval=_pool_type,
    impl=_pool_impl,
    jvp=_pool_jvp,
    batch=_pool_batch,
    composite=_pool_decomposed)


def max_pool(x, kernel, stride, padding, dilation, ceil_mode):
    """(values, indices) of torch's max pooling of a float (N, C, *spatial) x (2 or 3 spatial
    dims): the primitive where the trace binds fused primitives, else its decomposition."""
    return fused_or_decomposed(max_pool_p, _pool_decomposed, x, kernel=tuple(kernel), stride=tuple(stride),
                               padding=tuple(padding), dilation=tuple(dilation), ceil_mode=bool(ceil_mode))
