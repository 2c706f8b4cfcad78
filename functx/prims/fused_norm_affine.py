"""Normalization with its affine as torch's kernels run it: layer_norm's and training
batch_norm's `xhat * w + b` folded into native_layer_norm / native_batch_norm forward and into
one native_*_backward for the input's, the weight's and the bias's cotangents together
(nn.LayerNorm's and nn.BatchNorm's autograd), where the separate affine cost a product and a
sum forward and a product and two reductions backward (ResNet and transformer blocks run
several per call).

The data is laid out as prims/fused_norm.py's: `channels=False` the rows of a 2-D (R, M)
tensor (w, b: (M,)), `channels=True` the channels of an (N, C, *spatial) one (w, b: (C,)); in
both w and b lie along dim 1, and their cotangents sum every other dim.

    normalize_affine(x, w, b)               -> [y, mean, rstd],  y = xhat * w + b
    normalize_affine_tangent(dx, dw, db; x, w, mean, rstd) = w * J dx + xhat * dw + db
    normalize_affine_cotangent(ct; x, w, mean, rstd)       -> [J (w * ct), sum(ct * xhat), sum(ct)]

J is fused_norm's (d xhat / dx, symmetric; w commutes with it per channel, and the layer-norm
kernel applies it to w * ct), so the cotangent primitive is the tangent's transpose and the
other way round; `mask` says which of the three cotangents are wanted (only they are
outputs). As fused_norm's primitives they are bound only where `fused_here()`; staged graphs
get the decomposition (fused_norm's, then the affine as a product and a sum).
"""
from __future__ import annotations

import torch

from ..core import EXTERN, Primitive, Zero, bind
from ..core.trace import type_of
from . import elementwise as ew
from . import shape as sh
from .creation import zeros_like_type
from .define import add_tangents, is_undefined, sum_terms
from .fused_norm import (_batch_norm, _batch_norm_backward, _flatten_batch, _fusable, _layer_norm,
                         _layer_norm_backward, _normalize_tangent_terms, _rows, _stats_type, _unflatten,
                         normalize_channels, normalize_rows, normalize_rows_p, normalize_tangent, normalize_tangent_p,
                         stat_tangents, unflatten_all, xhat_tangent)
from .reduce import reduce_sum
from .shape import bdim_to_front


def _vec(v, shape):
    """A weight-like (K,) vector broadcast along dim 1 of the data's shape."""
    return sh.broadcast_in_dim(v, shape, (1,))


def _sum_but_1(v):
    return reduce_sum(v, tuple(i for i in range(type_of(v).ndim) if i != 1))


def _xhat(x, mean, rstd, channels):
    shape = type_of(x).shape
    return ew.mul(ew.sub(x, _rows(mean, shape, channels)), _rows(rstd, shape, channels))


def _per_example(v, shape):
    """Per-example (B, M) vectors broadcast over (B, R, M) rows."""
    return sh.broadcast_in_dim(v, shape, (0, 2))


def _stacked(a):
    """A batched rows operand (batch dim first) with the examples' rows stacked: (B*R, ...)."""
    shape = type_of(a).shape
    return sh.reshape(a, (shape[0] * shape[1],) + tuple(shape[2:]))


def _fused_affine(x, *vectors):
    t = type_of(x)
    return _fusable(t) and all(type_of(v).dtype == t.dtype for v in vectors)


# ---------------------------------------------------------------- forward

def normalize_affine(x, w, b, eps, channels):
    """[xhat * w + b, mean, rstd] (module docstring): torch's kernel on eager levels."""
    if _fused_affine(x, w, b):
        return bind(normalize_affine_p, (x, w, b), {"eps": float(eps), "channels": channels})
    return normalize_affine_decomposed(x, w, b, eps=eps, channels=channels)


def normalize_affine_decomposed(x, w, b, *, eps, channels):
    xhat, mean, rstd = (normalize_channels if channels else normalize_rows)(x, eps)
    shape = type_of(x).shape
    return [ew.add(ew.mul(xhat, _vec(w, shape)), _vec(b, shape)), mean, rstd]


def _normalize_affine_impl(x, w, b, *, eps, channels):
    if channels:
        return list(_batch_norm(x, w, b, None, None, True, 0.0, eps))
    n, m = x.shape
    out, mean, rstd = _layer_norm(x, (m,), w, b, eps)
    return [out, mean.reshape(n), rstd.reshape(n)]


def _normalize_affine_jvp(primals, tangents, *, eps, channels):
    (x, w, b), (dx, dw, db) = primals, tangents
    y, mean, rstd = outs = normalize_affine_p.bind(x, w, b, eps=eps, channels=channels)
    dy = affine_tangent(dx, dw, db, x, w, mean, rstd, channels)
    if isinstance(dx, Zero):
        return outs, [dy, Zero(type_of(mean)), Zero(type_of(rstd))]
    return outs, [dy, *stat_tangents(_xhat(x, mean, rstd, channels), dx, rstd, channels)]


def _normalize_affine_batch(axis_data, args, dims, *, eps, channels):
    size = axis_data.size
    x, w, b = args
    if channels or (dims[1] is None and dims[2] is None):
        if channels:        # the examples' channels side by side: (N, B*C, *), w and b (B*C,)
            x, w, b = _flatten_batch(args, dims, size, True)
        else:               # the examples' rows stacked: (B*R, M), the same w and b
            x = _flatten_batch([x], dims[:1], size, False)[0]
        return unflatten_all(normalize_affine_p.bind(x, w, b, eps=eps, channels=channels), size, channels)
    # rows with per-example w or b: the rows normalized together, each example's affine after
    x, w, b = (bdim_to_front(a, d, size) for a, d in zip(args, dims))
    shape = type_of(x).shape
    xhat, mean, rstd = unflatten_all(normalize_rows_p.bind(_stacked(x), eps=eps, channels=False), size, False)[0]
    y = ew.add(ew.mul(xhat, _per_example(w, shape)), _per_example(b, shape))
    return [y, mean, rstd], [0, 0, 0]


normalize_affine_p = Primitive(
    "normalize_affine", kind=EXTERN, multiple_results=True,
    abstract_eval=lambda t, w, b, *, eps, channels: [t, _stats_type(t, channels), _stats_type(t, channels)],
    impl=_normalize_affine_impl,
    jvp=_normalize_affine_jvp,
    batch=_normalize_affine_batch,
    composite=normalize_affine_decomposed)


# ---------------------------------------------------------------- its tangent
# Operands (dx, dw, db, x, w, mean, rstd), or without dx where the data carries no tangent
# (`with_dx=False`: a pre-norm transformer's first LayerNorm, of the input): its transpose is
# then the weight's and bias's cotangents alone, still one kernel.

def _operands(args, with_dx):
    """(dx or None, dw, db, x, w, mean, rstd) of the tangent's operands."""
    return tuple(args) if with_dx else (None, *args)


def _present(dx, rest):
    return (dx, *rest) if dx is not None else tuple(rest)


def affine_tangent(dx, dw, db, x, w, mean, rstd, channels):
    """w * J dx + xhat * dw + db, any of dx, dw, db a symbolic Zero (module docstring)."""
    zero = [isinstance(d, Zero) for d in (dx, dw, db)]
    if all(zero):
        return Zero(type_of(x))
    fused = _fused_affine(x, w, *(d for d, z in zip((dw, db), zero[1:]) if not z)) and (
        zero[0] or _fused_affine(dx) and type_of(dx) == type_of(x))
    if not fused:
        shape = type_of(x).shape
        terms = []
        if not zero[0]:
            terms.append(ew.mul(_vec(w, shape), normalize_tangent(dx, x, mean, rstd, channels)))
        if not zero[1]:
            terms.append(ew.mul(_xhat(x, mean, rstd, channels), _vec(dw, shape)))
        if not zero[2]:
            terms.append(_vec(db, shape))
        return sum_terms(terms, x)
    dw, db = (zeros_like_type(type_of(w)) if isinstance(d, Zero) else d for d in (dw, db))
    operands = _present(None if zero[0] else dx, (dw, db, x, w, mean, rstd))
    return bind(normalize_affine_tangent_p, operands, {"channels": channels, "with_dx": not zero[0]})


def _affine_tangent_decomposed(*args, channels, with_dx):
    dx, *rest = _operands(args, with_dx)
    return affine_tangent(Zero(type_of(rest[2])) if dx is None else dx, *rest, channels)


def _affine_tangent_impl(*args, channels, with_dx):
    dx, dw, db, x, w, mean, rstd = _operands(args, with_dx)
    view, stat = [1] * x.dim(), [1] * x.dim()
    view[1] = stat[1 if channels else 0] = -1
    mean, rstd = mean.contiguous(), rstd.contiguous()
    xhat = (x - mean.view(stat)).mul_(rstd.view(stat))
    if dx is None:
        return torch.addcmul(db.view(view), xhat, dw.view(view))
    if channels:        # w per channel commutes with J: the backward kernel's w * J dx
        g = _batch_norm_backward(dx, x, w, None, None, mean, rstd, True, 0.0, [True, False, False])[0]
    else:
        n, m = x.shape
        g = _layer_norm_backward(dx, x, (m,), mean.reshape(n, 1), rstd.reshape(n, 1), None, None,
                                 [True, False, False])[0].mul_(w)
    return g.add_(db.view(view)).addcmul_(xhat, dw.view(view))


def _affine_tangent_jvp(primals, tangents, *, channels, with_dx):
    dx, dw, db, x, w, mean, rstd = _operands(primals, with_dx)
    ddx, ddw, ddb, tx, tw, tmean, trstd = _operands(tangents, with_dx)
    out = normalize_affine_tangent_p.bind(*primals, channels=channels, with_dx=with_dx)
    shape = type_of(x).shape
    terms = [affine_tangent(Zero(type_of(x)) if ddx is None else ddx, ddw, ddb, x, w, mean, rstd, channels)]
    if not all(isinstance(d, Zero) for d in (tx, tmean, trstd)):      # through J and xhat
        if dx is not None:
            terms.extend(ew.mul(_vec(w, shape), t) for t in _normalize_tangent_terms(dx, x, mean, rstd, tx, tmean,
                                                                                     trstd, channels))
        d_xhat = xhat_tangent(ew.sub(x, _rows(mean, shape, channels)), rstd, tx, tmean, trstd, channels)
        terms.append(ew.mul(d_xhat, _vec(dw, shape)))
    if dx is not None and not isinstance(tw, Zero):
        terms.append(ew.mul(_vec(tw, shape), normalize_tangent(dx, x, mean, rstd, channels)))
    return out, sum_terms([t for t in terms if not isinstance(t, Zero)], out)


def _affine_tangent_transpose(ct, *args, channels, with_dx):
    dx, dw, db, x, w, mean, rstd = _operands(args, with_dx)
    mask = (dx is not None and is_undefined(dx), is_undefined(dw), is_undefined(db))
    if isinstance(ct, Zero) or not any(mask):
        return [None] * len(args)
    got = iter(affine_cotangent(ct, x, w, mean, rstd, channels, mask))
    cts = [next(got) if m else None for m in mask]
    return (cts if with_dx else cts[1:]) + [None] * 4


def _affine_tangent_batch(axis_data, args, dims, *, channels, with_dx):
    size = axis_data.size
    if channels:        # every operand's channels side by side, as the forward's
        flat = _flatten_batch(args, dims, size, True)
        return _unflatten(normalize_affine_tangent_p.bind(*flat, channels=True, with_dx=with_dx), size, True)
    dx, dw, db, x, w, mean, rstd = _operands([bdim_to_front(a, d, size) for a, d in zip(args, dims)], with_dx)
    vector_dims = _operands(dims, with_dx)[1:3] + _operands(dims, with_dx)[4:5]
    if all(d is None for d in vector_dims):     # the examples' rows stacked, the same vectors
        _, dw, db, _, w, _, _ = _operands(args, with_dx)
        dx, x, mean, rstd = (None if a is None else _stacked(a) for a in (dx, x, mean, rstd))
        out = normalize_affine_tangent_p.bind(*_present(dx, (dw, db, x, w, mean, rstd)), channels=False,
                                              with_dx=with_dx)
        return _unflatten(out, size, False)
    # per-example vectors: J dx for all rows at once, each example's vectors after
    shape = type_of(x).shape
    stacked = [_stacked(a) for a in (x, mean, rstd)]
    xhat = sh.reshape(_xhat(*stacked, False), shape)
    out = ew.add(ew.mul(xhat, _per_example(dw, shape)), _per_example(db, shape))
    if dx is not None:
        jdx = sh.reshape(normalize_tangent_p.bind(_stacked(dx), *stacked, channels=False), shape)
        out = ew.add(out, ew.mul(_per_example(w, shape), jdx))
    return out, 0


normalize_affine_tangent_p = Primitive(
    "normalize_affine_tangent", kind=EXTERN,
    abstract_eval=lambda *args, channels, with_dx: _operands(args, with_dx)[3],
    impl=_affine_tangent_impl,
    jvp=_affine_tangent_jvp,
    transpose=_affine_tangent_transpose,
    batch=_affine_tangent_batch,
    composite=_affine_tangent_decomposed)


# ---------------------------------------------------------------- its transpose: one backward kernel

def affine_cotangent(ct, x, w, mean, rstd, channels, mask):
    """The cotangents mask asks for, of (x, w, b) against ct (module docstring)."""
    mask = tuple(bool(m) for m in mask)
    if _fused_affine(ct, x, w) and type_of(ct) == type_of(x):
        return bind(normalize_affine_cotangent_p, (ct, x, w, mean, rstd), {"channels": channels, "mask": mask})
    return _affine_cotangent_decomposed(ct, x, w, mean, rstd, channels=channels, mask=mask)


def _affine_cotangent_decomposed(ct, x, w, mean, rstd, *, channels, mask):
    out = []
    if mask[0]:
        out.append(normalize_tangent(ew.mul(ct, _vec(w, type_of(x).shape)), x, mean, rstd, channels))
    if mask[1]:
        out.append(_sum_but_1(ew.mul(ct, _xhat(x, mean, rstd, channels))))
    if mask[2]:
        out.append(_sum_but_1(ct))
    return out


def _affine_cotangent_impl(ct, x, w, mean, rstd, *, channels, mask):
    mean, rstd = mean.contiguous(), rstd.contiguous()
    if channels:
        got = _batch_norm_backward(ct, x, w, None, None, mean, rstd, True, 0.0, list(mask))
    else:               # the bias operand only sizes the bias cotangent: w serves
        n, m = x.shape
        got = _layer_norm_backward(ct, x, (m,), mean.reshape(n, 1), rstd.reshape(n, 1), w, w, list(mask))
    return [g for g, wanted in zip(got, mask) if wanted]


def _affine_cotangent_jvp(primals, tangents, *, channels, mask):
    (ct, x, w, mean, rstd), (dct, tx, tw, tmean, trstd) = primals, tangents
    outs = normalize_affine_cotangent_p.bind(*primals, channels=channels, mask=mask)
    wanted = [k for k in range(3) if mask[k]]
    tans = list(affine_cotangent(dct, x, w, mean, rstd, channels, mask)) if not isinstance(dct, Zero) \
        else [Zero(type_of(o)) for o in outs]
    shape = type_of(x).shape
    moved = not all(isinstance(d, Zero) for d in (tx, tmean, trstd))
    for i, k in enumerate(wanted):
        if k == 0:      # J (w ct): through J, and through w
            u = ew.mul(ct, _vec(w, shape))
            terms = _normalize_tangent_terms(u, x, mean, rstd, tx, tmean, trstd, channels) if moved else []
            if not isinstance(tw, Zero):
                terms.append(normalize_tangent(ew.mul(ct, _vec(tw, shape)), x, mean, rstd, channels))
            tans[i] = add_tangents(tans[i], sum_terms(terms, outs[i]))
        elif k == 1 and moved:      # sum(ct xhat): through xhat
            d_xhat = xhat_tangent(ew.sub(x, _rows(mean, shape, channels)), rstd, tx, tmean, trstd, channels)
            tans[i] = add_tangents(tans[i], _sum_but_1(ew.mul(ct, d_xhat)))
    return outs, tans


def _affine_cotangent_transpose(cts, ct, x, w, mean, rstd, *, channels, mask):
    full = iter(cts)
    gx, gw, gb = (next(full) if m else Zero(None) for m in mask)
    if all(isinstance(g, Zero) for g in (gx, gw, gb)):
        return [None] * 5
    out = affine_tangent(gx, gw, gb, x, w, mean, rstd, channels)
    return [None if isinstance(out, Zero) else out, None, None, None, None]


def _affine_cotangent_batch(axis_data, args, dims, *, channels, mask):
    size = axis_data.size
    if channels:        # channels side by side; the vector cotangents (B*C,) split per example
        return unflatten_all(normalize_affine_cotangent_p.bind(*_flatten_batch(args, dims, size, True), channels=True,
                                                               mask=mask), size, True)
    ct, x, w, mean, rstd = (bdim_to_front(a, d, size) for a, d in zip(args, dims))
    shape = type_of(x).shape
    flat = [_stacked(a) for a in (ct, x, mean, rstd)]
    out = []
    if mask[0]:
        if dims[2] is None:     # one w for all rows: the kernel on the rows stacked
            gx = normalize_affine_cotangent_p.bind(flat[0], flat[1], args[2], flat[2], flat[3], channels=False,
                                                   mask=(True, False, False))[0]
        else:
            u = ew.mul(flat[0], sh.reshape(_per_example(w, shape), type_of(flat[0]).shape))
            gx = normalize_tangent_p.bind(u, flat[1], flat[2], flat[3], channels=False)
        out.append(sh.reshape(gx, shape))
    if mask[1]:         # each example's own sums over its rows
        xhat = sh.reshape(_xhat(flat[1], flat[2], flat[3], False), shape)
        out.append(reduce_sum(ew.mul(ct, xhat), (1,)))
    if mask[2]:
        out.append(reduce_sum(ct, (1,)))
    return out, [0] * len(out)


normalize_affine_cotangent_p = Primitive(
    "normalize_affine_cotangent", kind=EXTERN, multiple_results=True,
    abstract_eval=lambda ct, x, w, mean, rstd, *, channels, mask: [t for t, m in zip((x, w, w), mask) if m],
    impl=_affine_cotangent_impl,
    jvp=_affine_cotangent_jvp,
    transpose=_affine_cotangent_transpose,
    batch=_affine_cotangent_batch,
    composite=_affine_cotangent_decomposed)
