"""Reductions over static axes (no keepdims: the front end reshapes), argmax/argmin and
cumulative sums. Half types accumulate in float32 inside the eager impl and the compiler.
"""
from __future__ import annotations

import torch

from ..core import EXTERN, REDUCTION, Primitive, bind
from ..core.trace import type_of
from . import elementwise as ew
from .creation import full
from . import shape as sh
from .define import defjvp_zero, deflinear
from .util import shift_axes_for_bdim


def _reduced_type(t, *, axes):
    for a in axes:
        if not 0 <= a < t.ndim:
            raise TypeError(f"reduction axis {a} out of range for {t}")
    return t.with_shape(tuple(s for i, s in enumerate(t.shape) if i not in axes))


def _kept_dims(ndim, axes):
    return tuple(i for i in range(ndim) if i not in axes)


def defreducer(name, impl, combine, emit=None):
    """A reduction over static `axes`: type, impl, batch rule and Triton combine op."""
    def batch(axis, args, dims, *, axes):
        (x,), (d,) = args, dims
        out_dim = d - sum(1 for a in axes if a < d)
        return p.bind(x, axes=shift_axes_for_bdim(axes, d)), out_dim
    p = Primitive(name, kind=REDUCTION, abstract_eval=_reduced_type, impl=impl, batch=batch,
                  emit=emit, combine=combine)
    return p


def _torch_reduction(fn_name):
    def emit(eqn, srcs):
        axes = eqn.params["axes"]
        return f"{fn_name}({srcs[0]}, {axes!r})" if axes else srcs[0]
    return emit


# ---------------------------------------------------------------- sum

def _sum_impl(x, *, axes):
    if not axes:
        return x
    out = torch.sum(x, axes)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def _sum_emit(eqn, srcs):
    axes = eqn.params["axes"]
    if not axes:
        return srcs[0]
    dtype = eqn.outputs[0].type.dtype
    expr = f"torch.sum({srcs[0]}, {axes!r})"
    if not (dtype.is_floating_point or dtype.is_complex or dtype == torch.int64):
        expr = f"{expr}.to({dtype})"      # torch.sum promotes ints and bools to int64
    return expr


def _sum_transpose(ct, x, *, axes):
    shape = x.aval.shape
    return [sh.broadcast_in_dim(ct, shape, _kept_dims(len(shape), axes))]


reduce_sum_p = deflinear(defreducer("reduce_sum", _sum_impl, "add", _sum_emit), _sum_transpose)


def reduce_sum(x, axes):
    axes = tuple(sorted(axes))
    if not axes:
        return x
    return bind(reduce_sum_p, (x,), {"axes": axes})


# ---------------------------------------------------------------- max / min

def _extremum_jvp(primals, tangents, *, axes, reducer):
    # The tangent is averaged over the positions that attain the extremum (JAX's rule).
    (x,), (t,) = primals, tangents
    out = reducer(x, axes)
    shape = type_of(x).shape
    kept = _kept_dims(len(shape), axes)
    at = sh.broadcast_in_dim(out, shape, kept)
    hit = ew.eq(x, at)
    if type_of(x).dtype.is_floating_point:      # a NaN extremum is attained by the NaNs (torch)
        hit = ew.bitwise_or(hit, ew.bitwise_and(ew.ne(x, x), ew.ne(at, at)))
    location = ew.convert(hit, type_of(x).dtype)
    counts = reduce_sum(location, axes)
    return out, ew.div(reduce_sum(ew.mul(t, location), axes), counts)


reduce_max_p = defreducer("reduce_max", lambda x, *, axes: torch.amax(x, axes) if axes else x, "max",
                          _torch_reduction("torch.amax"))
reduce_max_p.jvp = lambda primals, tangents, *, axes: _extremum_jvp(primals, tangents, axes=axes,
                                                                   reducer=reduce_max)
reduce_min_p = defreducer("reduce_min", lambda x, *, axes: torch.amin(x, axes) if axes else x, "min",
                          _torch_reduction("torch.amin"))
reduce_min_p.jvp = lambda primals, tangents, *, axes: _extremum_jvp(primals, tangents, axes=axes,
                                                                   reducer=reduce_min)


def reduce_max(x, axes):
    axes = tuple(sorted(axes))
    return bind(reduce_max_p, (x,), {"axes": axes}) if axes else x


def reduce_min(x, axes):
    axes = tuple(sorted(axes))
    return bind(reduce_min_p, (x,), {"axes": axes}) if axes else x


# ---------------------------------------------------------------- prod

def _prod_impl(x, *, axes):
    if not axes:
        return x
    out = x
    for a in sorted(axes, reverse=True):
        out = torch.prod(out, a)
    return out if out.dtype == x.dtype else out.to(x.dtype)


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
    if n == 0:              # the product of no elements is the constant 1
        return out, full(kept_shape, 0, tx.dtype, tx.device)
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


reduce_prod_p = defreducer("reduce_prod", _prod_impl, "mul")
reduce_prod_p.jvp = _prod_jvp


def reduce_prod(x, axes):
    axes = tuple(sorted(axes))
    return bind(reduce_prod_p, (x,), {"axes": axes}) if axes else x


# ---------------------------------------------------------------- argmax / argmin

def _arg_type(t, *, axis, index_dtype):
    return t.with_shape(tuple(s for i, s in enumerate(t.shape) if i != axis)).with_dtype(index_dtype)


def _defarg(name, fn):
    """argmax/argmin along one axis: integer-valued (zero derivative), extern on every backend."""
    def batch(axis_data, args, dims, *, axis, index_dtype):
        (x,), (d,) = args, dims
        new_axis = axis + (axis >= d)
        return p.bind(x, axis=new_axis, index_dtype=index_dtype), d - (new_axis < d)
    p = defjvp_zero(Primitive(
        name, kind=EXTERN,
        abstract_eval=_arg_type,
        impl=lambda x, *, axis, index_dtype: fn(x, axis).to(index_dtype),
        batch=batch,
        emit=lambda eqn, srcs: f"torch.{name}({srcs[0]}, {eqn.params['axis']}).to({eqn.params['index_dtype']})"))
    return p


argmax_p = _defarg("argmax", torch.argmax)
argmin_p = _defarg("argmin", torch.argmin)


def argmax(x, axis, index_dtype=torch.int64):
    return bind(argmax_p, (x,), {"axis": axis, "index_dtype": index_dtype})


def argmin(x, axis, index_dtype=torch.int64):
    return bind(argmin_p, (x,), {"axis": axis, "index_dtype": index_dtype})


# ---------------------------------------------------------------- cumsum

def _cumsum_impl(x, *, axis, reverse):
    if reverse:
        return torch.flip(torch.cumsum(torch.flip(x, (axis,)), axis), (axis,)).to(x.dtype)
    return torch.cumsum(x, axis).to(x.dtype)


cumsum_p = deflinear(Primitive(
    "cumsum", kind=EXTERN,
    abstract_eval=lambda t, *, axis, reverse: t,
    impl=_cumsum_impl,
    batch=lambda axis_data, args, dims, *, axis, reverse: (
        cumsum(args[0], axis + (axis >= dims[0]), reverse), dims[0])),
    lambda ct, x, *, axis, reverse: [cumsum(ct, axis, not reverse)])


def cumsum(x, axis, reverse=False):
    return bind(cumsum_p, (x,), {"axis": axis, "reverse": reverse})
