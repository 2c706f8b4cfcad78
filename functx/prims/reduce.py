"""Reductions over static axes (no keepdims: the front end reshapes), argmax/argmin and
cumulative sums. Half types accumulate in float32 inside the eager impl and the compiler.
"""
from __future__ import annotations

import torch

from ..core import REDUCTION, Primitive, Zero, bind
from ..core.trace import type_of
from . import elementwise as ew
from . import shape as sh
from .util import shift_axes_for_bdim


def _reduced_type(t, *, axes):
    for a in axes:
        if not 0 <= a < t.ndim:
            raise TypeError(f"reduction axis {a} out of range for {t}")
    return t.with_shape(tuple(s for i, s in enumerate(t.shape) if i not in axes))


def _kept_dims(ndim, axes):
    return tuple(i for i in range(ndim) if i not in axes)


def _reduction_batch(fn):
    def rule(axis, args, dims, *, axes):
        (x,), (d,) = args, dims
        new_axes = shift_axes_for_bdim(axes, d)
        out_dim = d - sum(1 for a in axes if a < d)
        return fn(x, new_axes), out_dim
    return rule


def _define(name, impl, emit_name):
    p = Primitive(name)
    p.kind = REDUCTION
    p.abstract_eval = _reduced_type
    p.impl = impl
    # dtype=: torch.sum of an integer or bool tensor returns int64; primitives keep the dtype.
    dt = ", dtype={0}.dtype" if emit_name == "torch.sum" else ""
    p.emit = lambda srcs, params: (f"{emit_name}({srcs[0]}, {params['axes']!r}{dt.format(srcs[0])})"
                                   if params["axes"] else srcs[0])
    return p


# ---------------------------------------------------------------- sum

def _sum_impl(x, *, axes):
    if not axes:
        return x
    out = torch.sum(x, axes)
    return out if out.dtype == x.dtype else out.to(x.dtype)


reduce_sum_p = _define("reduce_sum", _sum_impl, "torch.sum")
reduce_sum_p.combine = "add"


def reduce_sum(x, axes):
    axes = tuple(sorted(axes))
    if not axes:
        return x
    return bind(reduce_sum_p, (x,), {"axes": axes})


reduce_sum_p.jvp = lambda primals, tangents, *, axes: (reduce_sum(primals[0], axes),
                                                      reduce_sum(tangents[0], axes))


def _sum_transpose(ct, x, *, axes):
    shape = x.aval.shape
    return [sh.broadcast_in_dim(ct, shape, _kept_dims(len(shape), axes))]


reduce_sum_p.transpose = _sum_transpose
reduce_sum_p.batch = _reduction_batch(reduce_sum)


# ---------------------------------------------------------------- max / min

def _amax_impl(x, *, axes):
    return torch.amax(x, axes) if axes else x


def _amin_impl(x, *, axes):
    return torch.amin(x, axes) if axes else x


reduce_max_p = _define("reduce_max", _amax_impl, "torch.amax")
reduce_min_p = _define("reduce_min", _amin_impl, "torch.amin")
reduce_max_p.combine, reduce_min_p.combine = "max", "min"


def reduce_max(x, axes):
    axes = tuple(sorted(axes))
    return bind(reduce_max_p, (x,), {"axes": axes}) if axes else x


def reduce_min(x, axes):
    axes = tuple(sorted(axes))
    return bind(reduce_min_p, (x,), {"axes": axes}) if axes else x


def _extremum_jvp(reducer):
    # The tangent is averaged over the positions that attain the extremum (JAX's rule).
    def jvp(primals, tangents, *, axes):
        (x,), (t,) = primals, tangents
        out = reducer(x, axes)
        shape = type_of(x).shape
        kept = _kept_dims(len(shape), axes)
        location = ew.convert(ew.eq(x, sh.broadcast_in_dim(out, shape, kept)), type_of(x).dtype)
        counts = reduce_sum(location, axes)
        return out, ew.div(reduce_sum(ew.mul(t, location), axes), counts)
    return jvp


reduce_max_p.jvp = _extremum_jvp(reduce_max)
reduce_min_p.jvp = _extremum_jvp(reduce_min)
reduce_max_p.batch = _reduction_batch(reduce_max)
reduce_min_p.batch = _reduction_batch(reduce_min)


# ---------------------------------------------------------------- prod

def _prod_impl(x, *, axes):
    if not axes:
        return x
    out = x
    for a in sorted(axes, reverse=True):
        out = torch.prod(out, a)
    return out if out.dtype == x.dtype else out.to(x.dtype)


reduce_prod_p = _define("reduce_prod", _prod_impl, "_prod")
reduce_prod_p.combine = "mul"
reduce_prod_p.emit = None


def reduce_prod(x, axes):
    axes = tuple(sorted(axes))
    return bind(reduce_prod_p, (x,), {"axes": axes}) if axes else x


def _prod_jvp(primals, tangents, *, axes):
    """Forward mode through a pairwise product tree: exact where inputs are zero."""
    (x,), (t,) = primals, tangents
    out = reduce_prod(x, axes)
    tx = type_of(x)
    kept = _kept_dims(tx.ndim, axes)
    perm = kept + tuple(axes)
    n = 1
    for a in axes:
        n *= tx.shape[a]
    kept_shape = tuple(tx.shape[k] for k in kept)
    p = sh.reshape(sh.transpose(x, perm), kept_shape + (n,))
    tp = sh.reshape(sh.transpose(t, perm), kept_shape + (n,))
    last = len(kept_shape)
    while n > 1:
        if n % 2:
            cfg = tuple((0, 0, 0) for _ in kept_shape) + ((0, 1, 0),)
            p, tp = sh.pad(p, cfg, 1), sh.pad(tp, cfg, 0)
            n += 1
        a, b = (sh.slice_in_dim(p, 0, n, 2, last), sh.slice_in_dim(p, 1, n, 2, last))
        ta, tb = (sh.slice_in_dim(tp, 0, n, 2, last), sh.slice_in_dim(tp, 1, n, 2, last))
        p, tp = ew.mul(a, b), ew.add(ew.mul(ta, b), ew.mul(a, tb))
        n //= 2
    return out, sh.reshape(tp, kept_shape)


reduce_prod_p.jvp = _prod_jvp
reduce_prod_p.batch = _reduction_batch(reduce_prod)


# ---------------------------------------------------------------- argmax / argmin

def _arg_type(t, *, axis, index_dtype):
    return t.with_shape(tuple(s for i, s in enumerate(t.shape) if i != axis)).with_dtype(index_dtype)


def _define_arg(name, fn):
    p = Primitive(name)
    p.kind = REDUCTION
    p.abstract_eval = _arg_type
    p.impl = lambda x, *, axis, index_dtype: fn(x, axis).to(index_dtype)
    p.jvp = lambda primals, tangents, **params: (p.bind(*primals, **params),
                                                 Zero(_arg_type(type_of(primals[0]), **params)))

    def batch(axis_data, args, dims, *, axis, index_dtype):
        (x,), (d,) = args, dims
        new_axis = axis + (axis >= d)
        return p.bind(x, axis=new_axis, index_dtype=index_dtype), d - (new_axis < d)
    p.batch = batch
    return p


argmax_p = _define_arg("argmax", torch.argmax)
argmin_p = _define_arg("argmin", torch.argmin)
argmax_p.emit = lambda srcs, p: f"torch.argmax({srcs[0]}, {p['axis']}).to({p['index_dtype']})"
argmin_p.emit = lambda srcs, p: f"torch.argmin({srcs[0]}, {p['axis']}).to({p['index_dtype']})"


def argmax(x, axis, index_dtype=torch.int64):
    return bind(argmax_p, (x,), {"axis": axis, "index_dtype": index_dtype})


def argmin(x, axis, index_dtype=torch.int64):
    return bind(argmin_p, (x,), {"axis": axis, "index_dtype": index_dtype})


# ---------------------------------------------------------------- cumsum

cumsum_p = Primitive("cumsum")
cumsum_p.kind = "extern"
cumsum_p.abstract_eval = lambda t, *, axis, reverse: t


def _cumsum_impl(x, *, axis, reverse):
    if reverse:
        return torch.flip(torch.cumsum(torch.flip(x, (axis,)), axis), (axis,)).to(x.dtype)
    return torch.cumsum(x, axis).to(x.dtype)


cumsum_p.impl = _cumsum_impl
cumsum_p.jvp = lambda primals, tangents, **p: (cumsum(primals[0], **p), cumsum(tangents[0], **p))
cumsum_p.transpose = lambda ct, x, *, axis, reverse: [cumsum(ct, axis, not reverse)]
cumsum_p.batch = lambda axis_data, args, dims, *, axis, reverse: (
    cumsum(args[0], axis + (axis >= dims[0]), reverse), dims[0])


def cumsum(x, axis, reverse=False):
    return bind(cumsum_p, (x,), {"axis": axis, "reverse": reverse})
