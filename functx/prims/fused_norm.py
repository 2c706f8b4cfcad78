"""Fused normalization of eager transforms (layer_norm, group_norm, training batch_norm):
torch's native_layer_norm / native_batch_norm kernels for the forward and their backward
kernels for the tangent and its transpose, where the decomposition is ~10 kernels forward and
~15 backward.

`normalize_rows(x, eps)` normalizes each row of a 2-D float tensor: (xhat, mean, rstd), xhat =
(x - mean) * rstd, rstd = 1 / sqrt(var + eps), the biased variance; layer_norm is its rows over
the normalized dims, group_norm over each (example, group). `normalize_channels(x, eps)` is the
same with each channel of an (N, C, *spatial) tensor as one row (the statistics over every dim
but 1): training-mode batch norm, in place, where a transposed copy each way made the channels
rows (2-3.5x slower than torch's batch-norm kernels). One primitive serves both, its static
`channels` saying which dim holds the statistics.

Its tangent is `normalize_tangent` (t, x, mean, rstd) = J t with J = d xhat / dx = rstd (I -
11^T / M - xhat xhat^T / M): linear in t, and J is symmetric, so the primitive is its own
transpose; both run the kernel torch's autograd runs for the norm's backward. As the other
fused primitives (prims/fused.py), they are bound only where `fused_here()` (eager levels,
their units and rules); staged graphs get the decomposition.
"""
from __future__ import annotations

import math

import torch

from ..core import EXTERN, Primitive, Zero, bind
from ..core.trace import type_of
from ..core.types import TensorType
from . import elementwise as ew
from . import shape as sh
from .define import sum_terms
from .fused import _FUSED_DTYPES, fused_here
from .reduce import reduce_sum
from .shape import bdim_to_front

_layer_norm = torch.ops.aten.native_layer_norm.default
_layer_norm_backward = torch.ops.aten.native_layer_norm_backward.default
_batch_norm = torch.ops.aten.native_batch_norm.default
_batch_norm_backward = torch.ops.aten.native_batch_norm_backward.default


def _stat_dim(channels):
    return 1 if channels else 0


def _rows(v, shape, channels=False):
    """A per-row (or per-channel) statistic broadcast over the data's shape."""
    return sh.broadcast_in_dim(v, shape, (_stat_dim(channels),))


def _row_mean(v, channels=False):
    """Each row's (each channel's) mean."""
    shape = type_of(v).shape
    dims = tuple(i for i in range(len(shape)) if i != _stat_dim(channels))
    return ew.div(reduce_sum(v, dims), torch.sym_float(math.prod(shape[i] for i in dims)))


def _fusable(t):
    return t.dtype in _FUSED_DTYPES and fused_here() and all(t.shape)


def normalize_rows_decomposed(x, eps, channels=False):
    shape = type_of(x).shape
    mean = _row_mean(x, channels)
    xc = ew.sub(x, _rows(mean, shape, channels))
    rstd = ew.rsqrt(ew.add(_row_mean(ew.mul(xc, xc), channels), float(eps)))
    return [ew.mul(xc, _rows(rstd, shape, channels)), mean, rstd]


def normalize_rows(x, eps):
    """[xhat, mean, rstd] of the rows of a 2-D float tensor (module docstring)."""
    if _fusable(type_of(x)):
        return bind(normalize_rows_p, (x,), {"eps": float(eps), "channels": False})
    return normalize_rows_decomposed(x, eps)


def normalize_channels(x, eps):
    """[xhat, mean, rstd] of each channel of a float (N, C, *spatial) tensor, the statistics
    (C,) over every dim but 1: training-mode batch norm without its affine (module docstring)."""
    if _fusable(type_of(x)):
        return bind(normalize_rows_p, (x,), {"eps": float(eps), "channels": True})
    return normalize_rows_decomposed(x, eps, channels=True)


def _normalize_rows_impl(x, *, eps, channels):
    if channels:
        return list(_batch_norm(x, None, None, None, None, True, 0.0, eps))
    n, m = x.shape
    out, mean, rstd = _layer_norm(x, (m,), None, None, eps)
    return [out, mean.reshape(n), rstd.reshape(n)]


def _stats_type(t, channels):
    return TensorType((t.shape[_stat_dim(channels)],), t.dtype, t.device)


def _normalize_rows_jvp(primals, tangents, *, eps, channels):
    (x,), (t,) = primals, tangents
    xhat, mean, rstd = outs = normalize_rows_p.bind(x, eps=eps, channels=channels)
    if isinstance(t, Zero):
        return outs, [Zero(type_of(o)) for o in outs]
    return outs, [normalize_tangent(t, x, mean, rstd, channels), *stat_tangents(xhat, t, rstd, channels)]


def stat_tangents(xhat, t, rstd, channels):
    """[d mean, d rstd] for a tangent t of the data: d mean = mean(t), d rstd = -rstd^3
    mean(xc t) = -rstd^2 mean(xhat t)."""
    return [_row_mean(t, channels), ew.neg(ew.mul(ew.mul(rstd, rstd), _row_mean(ew.mul(xhat, t), channels)))]


def _flatten_batch(args, dims, size, channels):
    """Operands with the batch dim folded into their rows: data (B*N, M), statistics (B*N,);
    for channels, into the channels: data (N, B*C, *spatial), statistics (B*C,) (a copy where
    the batch dim is not next to the channels)."""
    out = []
    for a, d in zip(args, dims):
        a = bdim_to_front(a, d, size)
        if channels and type_of(a).ndim > 2:            # data, not statistics
            a = sh.moveaxis(a, 0, 1)
            shape = type_of(a).shape
            out.append(sh.reshape(a, (shape[0], shape[1] * shape[2]) + tuple(shape[3:])))
        else:
            shape = type_of(a).shape
            out.append(sh.reshape(a, (shape[0] * shape[1],) + tuple(shape[2:])))
    return out


def _unflatten(o, size, channels):
    """The inverse of _flatten_batch for one result, and its batch dim."""
    shape = type_of(o).shape
    if channels and len(shape) > 1:
        return sh.reshape(o, (shape[0], size, shape[1] // size) + tuple(shape[2:])), 1
    return sh.reshape(o, (size, shape[0] // size) + tuple(shape[1:])), 0


def _normalize_rows_batch(axis_data, args, dims, *, eps, channels):
    size = axis_data.size
    return unflatten_all(normalize_rows_p.bind(*_flatten_batch(args, dims, size, channels), eps=eps,
                                               channels=channels), size, channels)


def unflatten_all(outs, size, channels):
    """_unflatten for each of a primitive's results: (results, their batch dims)."""
    results = [_unflatten(o, size, channels) for o in outs]
    return [r for r, _ in results], [d for _, d in results]


normalize_rows_p = Primitive(
    "normalize_rows", kind=EXTERN, multiple_results=True,
    abstract_eval=lambda t, *, eps, channels: [t, _stats_type(t, channels), _stats_type(t, channels)],
    impl=_normalize_rows_impl,
    jvp=_normalize_rows_jvp,
    batch=_normalize_rows_batch,
    composite=normalize_rows_decomposed)


# ---------------------------------------------------------------- its tangent (and transpose)

def normalize_tangent_decomposed(t, x, mean, rstd, channels=False):
    shape = type_of(x).shape

    def rows(v):
        return _rows(v, shape, channels)
    xhat = ew.mul(ew.sub(x, rows(mean)), rows(rstd))
    inner = ew.sub(ew.sub(t, rows(_row_mean(t, channels))), ew.mul(xhat, rows(_row_mean(ew.mul(t, xhat), channels))))
    return ew.mul(rows(rstd), inner)


def normalize_tangent(t, x, mean, rstd, channels=False):
    tt = type_of(t)
    if _fusable(tt) and tt == type_of(x):
        return bind(normalize_tangent_p, (t, x, mean, rstd), {"channels": channels})
    return normalize_tangent_decomposed(t, x, mean, rstd, channels)


def _normalize_tangent_impl(t, x, mean, rstd, *, channels):
    if channels:        # train=True reads the saved statistics; eps is unused
        return _batch_norm_backward(t, x, None, None, None, mean.contiguous(), rstd.contiguous(), True, 0.0,
                                    [True, False, False])[0]
    n, m = x.shape
    # ATen's CPU kernel reads mean and rstd as dense arrays, whatever their strides: the batch
    # rule's broadcast of one row's stats (vmap(jvp(layer_norm)) of a single example, stride 0)
    # was read past its one element
    return _layer_norm_backward(t, x, (m,), mean.reshape(n, 1).contiguous(), rstd.reshape(n, 1).contiguous(),
                                None, None, [True, False, False])[0]


def _normalize_tangent_jvp(primals, tangents, *, channels):
    (t, x, mean, rstd), (dt, dx, dmean, drstd) = primals, tangents
    out = normalize_tangent_p.bind(t, x, mean, rstd, channels=channels)
    terms = [] if isinstance(dt, Zero) else [normalize_tangent_p.bind(dt, x, mean, rstd, channels=channels)]
    terms.extend(_normalize_tangent_terms(t, x, mean, rstd, dx, dmean, drstd, channels))
    return out, sum_terms(terms, out)


def _normalize_tangent_terms(t, x, mean, rstd, dx, dmean, drstd, channels):
    """The terms of d(J t) for tangents of x, mean and rstd (any a symbolic Zero) at fixed t."""
    if all(isinstance(d, Zero) for d in (dx, dmean, drstd)):
        return []
    # J t = rstd (t - mean(t) - xhat mean(t xhat)), differentiated in x, mean, rstd
    shape = type_of(x).shape

    def rows(v):
        return _rows(v, shape, channels)

    def mean_of(v):
        return _row_mean(v, channels)
    xc = ew.sub(x, rows(mean))
    xhat = ew.mul(xc, rows(rstd))
    m1, m2 = mean_of(t), mean_of(ew.mul(t, xhat))
    terms = []
    d_xhat = xhat_tangent(xc, rstd, dx, dmean, drstd, channels)
    inner = ew.sub(ew.sub(t, rows(m1)), ew.mul(xhat, rows(m2)))
    if not isinstance(d_xhat, Zero):
        d_m2 = mean_of(ew.mul(t, d_xhat))
        d_inner = ew.neg(ew.add(ew.mul(d_xhat, rows(m2)), ew.mul(xhat, rows(d_m2))))
        terms.append(ew.mul(rows(rstd), d_inner))
    if not isinstance(drstd, Zero):
        terms.append(ew.mul(rows(drstd), inner))
    return terms


def xhat_tangent(xc, rstd, dx, dmean, drstd, channels):
    """d xhat, xhat = xc * rstd with xc = x - mean, for tangents of x, mean and rstd (any a
    symbolic Zero; a Zero where all are)."""
    shape = type_of(xc).shape
    d_xc = dx if isinstance(dmean, Zero) else (ew.neg(_rows(dmean, shape, channels)) if isinstance(dx, Zero)
                                               else ew.sub(dx, _rows(dmean, shape, channels)))
    terms = [] if isinstance(d_xc, Zero) else [ew.mul(d_xc, _rows(rstd, shape, channels))]
    if not isinstance(drstd, Zero):
        terms.append(ew.mul(xc, _rows(drstd, shape, channels)))
    return sum_terms(terms, xc)


def _normalize_tangent_batch(axis_data, args, dims, *, channels):
    size = axis_data.size
    return _unflatten(normalize_tangent_p.bind(*_flatten_batch(args, dims, size, channels), channels=channels),
                      size, channels)


def _normalize_tangent_transpose(ct, t, x, mean, rstd, *, channels):
    return [None if isinstance(ct, Zero) else normalize_tangent_p.bind(ct, x, mean, rstd, channels=channels),
            None, None, None]


normalize_tangent_p = Primitive(
    "normalize_tangent", kind=EXTERN,
    abstract_eval=lambda t, x, mean, rstd, *, channels: TensorType(t.shape, t.dtype, t.device),
    impl=_normalize_tangent_impl,
    jvp=_normalize_tangent_jvp,
    transpose=_normalize_tangent_transpose,
    batch=_normalize_tangent_batch,
    composite=normalize_tangent_decomposed)
