"""max_pool: torch's max pooling with indices (aten.max_pool2d/3d_with_indices) as one primitive.

    max_pool(x, kernel, stride, padding, dilation, ceil_mode) -> (values, indices)
    x: (N, C, *spatial); indices: each value's flat offset in its (N, C) plane (torch's).

Eager transforms bind it where they bind the fused primitives (prims/fused.py): torch's
kernel forward, and the values' tangent reads the tangent at the indices
(`max_pool_tangent`: a gather over the flattened plane), whose transpose
`max_pool_cotangent` scatters to the first maximum of each window in torch's own
max_pool2d/3d_with_indices_backward kernel (one kernel where a zero fill, reshapes and a
scatter ran); each is the other's transpose. Elsewhere the tangent is take_along_axis and its
transpose scatter_add_along. The decomposition (`Primitive.composite`,
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
from .creation import zeros_like_type
from .define import linear_first_jvp
from .fused import fused_or_decomposed
from .indexing import scatter_add_along, take_along_axis
from .reduce import argmax

_KERNELS = {2: torch.ops.aten.max_pool2d_with_indices.default, 3: torch.ops.aten.max_pool3d_with_indices.default}
_BACKWARD_KERNELS = {2: torch.ops.aten.max_pool2d_with_indices_backward.default,
                     3: torch.ops.aten.max_pool3d_with_indices_backward.default}


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
    tangent = Zero(type_of(values)) if isinstance(t, Zero) else fused_or_decomposed(
        max_pool_tangent_p, _tangent_decomposed, t, indices, **params)
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


# ---------------------------------------------------------------- the tangent and its transpose
# Linear in their first operand; params: the pooling's, so the cotangent knows the window
# geometry torch's backward kernel takes (and the input's spatial size: `spatial`).

def _tangent_decomposed(t, indices, **_):
    return take_at(t, indices)


def _tangent_impl(t, indices, **_):
    n, c = indices.shape[:2]
    return t.reshape(n, c, -1).gather(2, indices.reshape(n, c, -1)).view(indices.shape)


def _tangent_transpose(ct, t, indices, **params):
    if isinstance(ct, Zero):
        return [None, None]
    spatial = tuple((t.aval if hasattr(t, "aval") else type_of(t)).shape[2:])
    return [fused_or_decomposed(max_pool_cotangent_p, _cotangent_decomposed, ct, indices, spatial=spatial, **params),
            None]


def _cotangent_decomposed(ct, indices, *, spatial, **_):
    """ct scattered (summed) into a zero plane of the input's spatial size at the indices."""
    ctt = type_of(ct)
    n, c = ctt.shape[:2]
    flat = zeros_like_type(ctt.with_shape((n, c, math.prod(spatial))))
    it = type_of(indices)
    out = scatter_add_along(flat, sh.reshape(indices, (n, c, math.prod(it.shape[2:]))),
                            sh.reshape(ct, (n, c, math.prod(ctt.shape[2:]))), 2)
    return sh.reshape(out, (n, c) + tuple(spatial))


def _cotangent_impl(ct, indices, *, spatial, kernel, stride, padding, dilation, ceil_mode):
    shape = tuple(ct.shape[:2]) + tuple(spatial)
    like = torch.empty((), dtype=ct.dtype, device=ct.device).expand(shape)      # read for its shape only
    return _BACKWARD_KERNELS[len(kernel)](ct, like, kernel, stride, padding, dilation, ceil_mode, indices)


def _cotangent_transpose(g, ct, indices, *, spatial, **params):
    if isinstance(g, Zero):
        return [None, None]
    return [fused_or_decomposed(max_pool_tangent_p, _tangent_decomposed, g, indices, **params), None]


def _linear_in_first(name, abstract_eval, impl, transpose, composite):
    """A primitive linear in its first operand (the tangent or cotangent; the second is the
    indices), vmap folding the examples into N (the indices broadcast where only the values
    are batched)."""
    prim = Primitive(name, kind=EXTERN, abstract_eval=abstract_eval, impl=impl, transpose=transpose,
                     composite=composite)

    def batch(axis, args, dims, **params):
        size = axis.size
        v, idx = (sh.bdim_to_front(a, d, size) for a, d in zip(args, dims))
        flat = [sh.reshape(a, (size * type_of(a).shape[1],) + tuple(type_of(a).shape[2:])) for a in (v, idx)]
        out = prim.bind(*flat, **params)
        return sh.reshape(out, (size,) + tuple(type_of(v).shape[1:2]) + tuple(type_of(out).shape[1:])), 0
    prim.jvp, prim.batch = linear_first_jvp(prim), batch
    return prim


def _tangent_type(t, indices, **_):
    return t.with_shape(indices.shape)


def _cotangent_type(ct, indices, *, spatial, **_):
    return ct.with_shape(tuple(ct.shape[:2]) + tuple(spatial))


max_pool_tangent_p = _linear_in_first("max_pool_tangent", _tangent_type, _tangent_impl, _tangent_transpose,
                                      _tangent_decomposed)
max_pool_cotangent_p = _linear_in_first("max_pool_cotangent", _cotangent_type, _cotangent_impl, _cotangent_transpose,
                                        _cotangent_decomposed)
