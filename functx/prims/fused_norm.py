"""Fused row normalization of eager transforms (layer_norm, group_norm): torch's
native_layer_norm kernel for the forward and native_layer_norm_backward for the tangent and
its transpose, where the decomposition is ~10 kernels forward and ~15 backward.

`normalize_rows(x, eps)` normalizes each row of a 2-D float tensor: (xhat, mean, rstd), xhat =
(x - mean) * rstd, rstd = 1 / sqrt(var + eps), the biased variance; layer_norm is its rows over
the normalized dims, group_norm over each (example, group). Its tangent is `normalize_tangent`
(t, x, mean, rstd) = J t with J = d xhat / dx = rstd (I - 11^T / M - xhat xhat^T / M): linear in
t, and J is symmetric, so the primitive is its own transpose; both run the kernel torch's
autograd runs for layer_norm's backward. As the other fused primitives (prims/fused.py), they
are bound only where `fused_here()` (eager levels, their units and rules); staged graphs get
the decomposition.
"""
from __future__ import annotations

import torch

from ..core import EXTERN, Primitive, Zero, bind
from ..core.trace import type_of
from ..core.types import TensorType
from . import elementwise as ew
from . import shape as sh
from .fused import _FUSED_DTYPES, fused_here
from .reduce import reduce_sum
from .shape import bdim_to_front

_layer_norm = torch.ops.aten.native_layer_norm.default
_layer_norm_backward = torch.ops.aten.native_layer_norm_backward.default


def _rows(v, shape):
    """A per-row (N,) value broadcast over (N, M)."""
    return sh.broadcast_in_dim(v, shape, (0,))


def _row_mean(v):
    t = type_of(v)
    return ew.div(reduce_sum(v, (1,)), torch.sym_float(t.shape[1]))


def normalize_rows_decomposed(x, eps):
    shape = type_of(x).shape
    mean = _row_mean(x)
    xc = ew.sub(x, _rows(mean, shape))
    rstd = ew.rsqrt(ew.add(_row_mean(ew.mul(xc, xc)), float(eps)))
    return [ew.mul(xc, _rows(rstd, shape)), mean, rstd]


def normalize_rows(x, eps):
    """[xhat, mean, rstd] of the rows of a 2-D float tensor (module docstring)."""
    t = type_of(x)
    if t.dtype in _FUSED_DTYPES and fused_here() and t.shape[0] and t.shape[1]:
        return bind(normalize_rows_p, (x,), {"eps": float(eps)})
    return normalize_rows_decomposed(x, eps)


def _normalize_rows_impl(x, *, eps):
    n, m = x.shape
    out, mean, rstd = _layer_norm(x, (m,), None, None, eps)
    return [out, mean.reshape(n), rstd.reshape(n)]


def _stats_type(t):
    return TensorType((t.shape[0],), t.dtype, t.device)


def _normalize_rows_jvp(primals, tangents, *, eps):
    (x,), (t,) = primals, tangents
    xhat, mean, rstd = outs = normalize_rows_p.bind(x, eps=eps)
    if isinstance(t, Zero):
        return outs, [Zero(type_of(o)) for o in outs]
    # d mean = mean(t); d rstd = -rstd^3 mean(xc t) = -rstd^2 mean(xhat t)
    d_rstd = ew.neg(ew.mul(ew.mul(rstd, rstd), _row_mean(ew.mul(xhat, t))))
    return outs, [normalize_tangent(t, x, mean, rstd), _row_mean(t), d_rstd]


def _flatten_batch(args, dims, size):
    """Operands with the batch dim folded into their rows: (B*N, M) and (B*N,)."""
    out = []
    for a, d in zip(args, dims):
        a = bdim_to_front(a, d, size)
        shape = type_of(a).shape
        out.append(sh.reshape(a, (shape[0] * shape[1],) + tuple(shape[2:])))
    return out


def _unflatten(o, size):
    shape = type_of(o).shape
    return sh.reshape(o, (size, shape[0] // size) + tuple(shape[1:]))


def _normalize_rows_batch(axis_data, args, dims, *, eps):
    size = axis_data.size
    outs = normalize_rows_p.bind(*_flatten_batch(args, dims, size), eps=eps)
    return [_unflatten(o, size) for o in outs], [0, 0, 0]


normalize_rows_p = Primitive(
    "normalize_rows", kind=EXTERN, multiple_results=True,
    abstract_eval=lambda t, *, eps: [t, _stats_type(t), _stats_type(t)],
    impl=_normalize_rows_impl,
    jvp=_normalize_rows_jvp,
    batch=_normalize_rows_batch,
    composite=normalize_rows_decomposed)


# ---------------------------------------------------------------- its tangent (and transpose)

def normalize_tangent_decomposed(t, x, mean, rstd):
    shape = type_of(x).shape
    xhat = ew.mul(ew.sub(x, _rows(mean, shape)), _rows(rstd, shape))
    inner = ew.sub(ew.sub(t, _rows(_row_mean(t), shape)), ew.mul(xhat, _rows(_row_mean(ew.mul(t, xhat)), shape)))
    return ew.mul(_rows(rstd, shape), inner)


def normalize_tangent(t, x, mean, rstd):
    tt = type_of(t)
    if tt.dtype in _FUSED_DTYPES and fused_here() and tt == type_of(x) and tt.shape[0] and tt.shape[1]:
        return bind(normalize_tangent_p, (t, x, mean, rstd), {})
    return normalize_tangent_decomposed(t, x, mean, rstd)


def _normalize_tangent_impl(t, x, mean, rstd):
    n, m = x.shape
    # ATen's CPU kernel reads mean and rstd as dense arrays, whatever their strides: the batch
    # rule's broadcast of one row's stats (vmap(jvp(layer_norm)) of a single example, stride 0)
    # was read past its one element
    return _layer_norm_backward(t, x, (m,), mean.reshape(n, 1).contiguous(), rstd.reshape(n, 1).contiguous(),
                                None, None, [True, False, False])[0]


def _normalize_tangent_jvp(primals, tangents):
    (t, x, mean, rstd), (dt, dx, dmean, drstd) = primals, tangents
    out = normalize_tangent_p.bind(t, x, mean, rstd)
    terms = [] if isinstance(dt, Zero) else [normalize_tangent_p.bind(dt, x, mean, rstd)]
    if not all(isinstance(d, Zero) for d in (dx, dmean, drstd)):
        # J t = rstd (t - mean(t) - xhat mean(t xhat)), differentiated in x, mean, rstd
        shape = type_of(x).shape
        xc = ew.sub(x, _rows(mean, shape))
        xhat = ew.mul(xc, _rows(rstd, shape))
        m1, m2 = _row_mean(t), _row_mean(ew.mul(t, xhat))
        d_xhat = None
        if not (isinstance(dx, Zero) and isinstance(dmean, Zero)):
            d_xc = dx if isinstance(dmean, Zero) else (ew.neg(_rows(dmean, shape)) if isinstance(dx, Zero)
                                                       else ew.sub(dx, _rows(dmean, shape)))
            d_xhat = ew.mul(d_xc, _rows(rstd, shape))
        if not isinstance(drstd, Zero):
            part = ew.mul(xc, _rows(drstd, shape))
            d_xhat = part if d_xhat is None else ew.add(d_xhat, part)
        inner = ew.sub(ew.sub(t, _rows(m1, shape)), ew.mul(xhat, _rows(m2, shape)))
        d_inner = None
        if d_xhat is not None:
            d_m2 = _row_mean(ew.mul(t, d_xhat))
            d_inner = ew.neg(ew.add(ew.mul(d_xhat, _rows(m2, shape)), ew.mul(xhat, _rows(d_m2, shape))))
            terms.append(ew.mul(_rows(rstd, shape), d_inner))
        if not isinstance(drstd, Zero):
            terms.append(ew.mul(_rows(drstd, shape), inner))
    if not terms:
        return out, Zero(type_of(out))
    total = terms[0]
    for term in terms[1:]:
        total = ew.add(total, term)
    return out, total


def _normalize_tangent_batch(axis_data, args, dims):
    size = axis_data.size
    return _unflatten(normalize_tangent_p.bind(*_flatten_batch(args, dims, size)), size), 0


normalize_tangent_p = Primitive(
    "normalize_tangent", kind=EXTERN,
    abstract_eval=lambda t, x, mean, rstd: TensorType(t.shape, t.dtype, t.device),
    impl=_normalize_tangent_impl,
    jvp=_normalize_tangent_jvp,
    transpose=lambda ct, t, x, mean, rstd: [None if isinstance(ct, Zero) else normalize_tangent_p.bind(ct, x, mean, rstd),
                                            None, None, None],
    batch=_normalize_tangent_batch,
    composite=normalize_tangent_decomposed)
