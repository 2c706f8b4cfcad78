"""The ATen -> primitive table. Each lowering receives lax values (tracers, tensors,
Python scalars), inserts the broadcasts and converts that primitives never do, and
returns lax values. Ops not here go to torch._decomp, then to the opaque fallback.
"""
from __future__ import annotations

import math

import torch
from torch._prims_common import ELEMENTWISE_TYPE_PROMOTION_KIND as KIND

from ..core.errors import FunctxError
from ..core.trace import type_of
from .. import prims as P
from ..prims.util import static_broadcast_shapes
from .dispatch import LOWERINGS
from .promote import SCALARS, broadcast_shapes, elementwise, float_dtype_of, prepare, result_type

aten = torch.ops.aten


def register(*ops):
    def deco(fn):
        for op in ops:
            LOWERINGS[op] = fn
        return fn
    return deco


def _t(x):
    return type_of(x)


def _dims(dim, ndim):
    """Normalize a dim / list of dims (None or [] = all) to sorted non-negative ints."""
    if dim is None:
        return tuple(range(ndim))
    if isinstance(dim, int):
        dim = [dim]
    if len(dim) == 0:
        return tuple(range(ndim))
    return tuple(sorted(d % max(ndim, 1) for d in dim))


def _keep(out, in_shape, axes, keepdim):
    if not keepdim:
        return out
    return P.reshape(out, tuple(1 if i in axes else s for i, s in enumerate(in_shape)))


# ---------------------------------------------------------------- unary

_FLOAT_UNARY = {
    aten.exp: P.exp, aten.exp2: P.exp2, aten.log: P.log, aten.log1p: P.log1p, aten.expm1: P.expm1,
    aten.sin: P.sin, aten.cos: P.cos, aten.tan: P.tan, aten.tanh: P.tanh, aten.asin: P.asin,
    aten.acos: P.acos, aten.atan: P.atan, aten.sinh: P.sinh, aten.cosh: P.cosh, aten.asinh: P.asinh,
    aten.acosh: P.acosh, aten.atanh: P.atanh, aten.sqrt: P.sqrt, aten.rsqrt: P.rsqrt,
    aten.sigmoid: P.logistic, aten.erf: P.erf, aten.erfinv: P.erfinv, aten.lgamma: P.lgamma,
    aten.digamma: P.digamma,
}
for _op, _fn in _FLOAT_UNARY.items():
    register(_op.default)((lambda fn: lambda x: fn(P.convert(x, float_dtype_of(x))))(_fn))


@register(aten.log2.default)
def _log2(x):
    return P.mul(P.log(P.convert(x, float_dtype_of(x))), 1 / math.log(2.0))


@register(aten.log10.default)
def _log10(x):
    return P.mul(P.log(P.convert(x, float_dtype_of(x))), 1 / math.log(10.0))


@register(aten.reciprocal.default)
def _reciprocal(x):
    return P.div(1.0, P.convert(x, float_dtype_of(x)))


@register(aten.erfc.default)
def _erfc(x):
    return P.sub(1.0, P.erf(P.convert(x, float_dtype_of(x))))


@register(aten.neg.default)
def _neg(x):
    return P.neg(x)


@register(aten.abs.default)
def _abs(x):
    return P.abs_(x) if _t(x).dtype is not torch.bool else x


@register(aten.sign.default, aten.sgn.default)
def _sign(x):
    return P.sign(x) if _t(x).dtype is not torch.bool else x


for _op, _fn in {aten.floor: P.floor, aten.ceil: P.ceil, aten.round: P.round_, aten.trunc: P.trunc}.items():
    register(_op.default)((lambda fn: lambda x: x if not _t(x).dtype.is_floating_point else fn(x))(_fn))


@register(aten.logical_not.default)
def _logical_not(x):
    return P.logical_not(x) if _t(x).dtype is torch.bool else P.eq(x, 0 if not _t(x).dtype.is_floating_point else 0.0)


@register(aten.bitwise_not.default)
def _bitwise_not(x):
    return P.logical_not(x) if _t(x).dtype is torch.bool else P.bitwise_not(x)


@register(aten.isnan.default)
def _isnan(x):
    return P.ne(x, x) if _t(x).dtype.is_floating_point else P.full(_t(x).shape, False, torch.bool, _t(x).device)


@register(aten.isinf.default)
def _isinf(x):
    if not _t(x).dtype.is_floating_point:
        return P.full(_t(x).shape, False, torch.bool, _t(x).device)
    return P.eq(P.abs_(x), math.inf)


@register(aten.relu.default)
def _relu(x):
    # torch's relu: derivative 0 at x == 0 (not max's tie split); NaN propagates.
    zero = 0.0 if _t(x).dtype.is_floating_point else 0
    return P.where(P.le(x, zero), zero, x)


@register(aten.lift_fresh.default)
def _lift_fresh(x):
    # A constant made inside the function (torch.tensor(1.0), the value of x[i] = 1.0): it
    # has no derivative, and staying a plain tensor lets copy_ move a 0-d CPU one to x's device.
    return x


@register(aten.detach.default)
def _detach(x):
    return P.stop_gradient(x) if _t(x).dtype.is_floating_point else x


@register(aten.clone.default, aten.lift_fresh_copy.default, aten.alias_copy.default)
def _clone(x, memory_format=None):
    return x


@register(aten.positive.default)
def _positive(x):
    return x


# ---------------------------------------------------------------- binary

@register(aten.add.Tensor, aten.add.Scalar)
def _add(x, y, alpha=1):
    if alpha != 1:
        y = elementwise(P.mul, y, alpha)
    if _t(x) is not None and _t(x).dtype is torch.bool and (isinstance(y, bool) or (_t(y) and _t(y).dtype is torch.bool)):
        return elementwise(P.bitwise_or, x, y)
    return elementwise(P.add, x, y)


@register(aten.sub.Tensor, aten.sub.Scalar)
def _sub(x, y, alpha=1):
    if alpha != 1:
        y = elementwise(P.mul, y, alpha)
    return elementwise(P.sub, x, y)


@register(aten.rsub.Tensor, aten.rsub.Scalar)
def _rsub(x, y, alpha=1):
    return _sub(y, x, alpha) if alpha == 1 else elementwise(P.sub, y, elementwise(P.mul, x, alpha))


@register(aten.mul.Tensor, aten.mul.Scalar)
def _mul(x, y):
    dtype = result_type(x, y)
    if dtype is torch.bool:
        return elementwise(P.bitwise_and, x, y)
    return elementwise(P.mul, x, y)


@register(aten.div.Tensor, aten.div.Scalar, aten.true_divide.Tensor)
def _div(x, y):
    return elementwise(P.div, x, y, kind=KIND.INT_TO_FLOAT)


@register(aten.div.Tensor_mode, aten.div.Scalar_mode)
def _div_mode(x, y, rounding_mode=None):
    if rounding_mode is None:
        return _div(x, y)
    dtype = result_type(x, y)
    if dtype.is_floating_point:
        q = elementwise(P.div, x, y)
        return P.floor(q) if rounding_mode == "floor" else P.trunc(q)
    return elementwise(lambda a, b: P.idiv(a, b, rounding_mode), x, y)


@register(aten.floor_divide.default, aten.floor_divide.Scalar)
def _floor_divide(x, y):
    return _div_mode(x, y, "floor")


@register(aten.remainder.Tensor, aten.remainder.Scalar)
def _remainder(x, y):
    # Python-style modulo: x - floor(x / y) * y.
    dtype = result_type(x, y)
    x, y = prepare((x, y), dtype, broadcast_shapes(x, y))
    zero = 0.0 if dtype.is_floating_point else 0
    r = P.rem(x, y)
    y_neg = y < zero if isinstance(y, SCALARS) else P.lt(y, zero)   # a scalar divisor stays a literal
    fix = P.bitwise_and(P.ne(r, zero), P.ne(P.lt(r, zero), y_neg))
    return P.where(fix, P.add(r, y), r)


@register(aten.fmod.Tensor, aten.fmod.Scalar)
def _fmod(x, y):
    return elementwise(P.rem, x, y)


@register(aten.pow.Tensor_Tensor, aten.pow.Tensor_Scalar, aten.pow.Scalar)
def _pow(x, y):
    if isinstance(y, (int, float)) and not isinstance(y, bool):
        if y == 1:
            return x
        if y == 2:
            return elementwise(P.mul, x, x)
        if y == 0.5 and _t(x).dtype.is_floating_point:
            return P.sqrt(x)
    return elementwise(P.pow_, x, y)


@register(aten.maximum.default)
def _maximum(x, y):
    return elementwise(P.max_, x, y)


@register(aten.minimum.default)
def _minimum(x, y):
    return elementwise(P.min_, x, y)


@register(aten.atan2.default)
def _atan2(x, y):
    return elementwise(P.atan2, x, y, kind=KIND.INT_TO_FLOAT)


for _op, _fn in {aten.eq: P.eq, aten.ne: P.ne, aten.lt: P.lt, aten.le: P.le, aten.gt: P.gt, aten.ge: P.ge}.items():
    register(_op.Tensor, _op.Scalar)((lambda fn: lambda x, y: elementwise(fn, x, y, kind=KIND.ALWAYS_BOOL))(_fn))


def _as_bool(x):
    if isinstance(x, SCALARS):
        return bool(x)
    return x if _t(x).dtype is torch.bool else P.ne(x, 0)


@register(aten.logical_and.default)
def _logical_and(x, y):
    return elementwise(P.bitwise_and, _as_bool(x), _as_bool(y))


@register(aten.logical_or.default)
def _logical_or(x, y):
    return elementwise(P.bitwise_or, _as_bool(x), _as_bool(y))


@register(aten.logical_xor.default)
def _logical_xor(x, y):
    return elementwise(P.bitwise_xor, _as_bool(x), _as_bool(y))


for _op, _fn in {aten.bitwise_and: P.bitwise_and, aten.bitwise_or: P.bitwise_or,
                 aten.bitwise_xor: P.bitwise_xor}.items():
    register(_op.Tensor, _op.Scalar)((lambda fn: lambda x, y: elementwise(fn, x, y))(_fn))


@register(aten.where.self, aten.where.ScalarSelf, aten.where.ScalarOther, aten.where.Scalar)
def _where(cond, x, y):
    dtype = result_type(x, y)
    shape = broadcast_shapes(cond, x, y)
    cond = P.broadcast_to(_as_bool(cond), shape)
    x, y = prepare((x, y), dtype, shape)
    return P.where(cond, x, y)


@register(aten.clamp.default, aten.clamp.Tensor)
def _clamp(x, min=None, max=None):
    # torch's clamp, not maximum/minimum: x's derivative passes where min <= x <= max (ties
    # included), min's where x < min, max's where x > max; NaN propagates.
    if min is not None:
        x = elementwise(lambda a, m: P.where(P.lt(a, m), m, a), x, min)
    if max is not None:
        x = elementwise(lambda a, m: P.where(P.gt(a, m), m, a), x, max)
    return x


@register(aten.clamp_min.default, aten.clamp_min.Tensor)
def _clamp_min(x, min):
    return _clamp(x, min=min)


@register(aten.clamp_max.default, aten.clamp_max.Tensor)
def _clamp_max(x, max):
    return _clamp(x, max=max)


# ---------------------------------------------------------------- reductions

def _sum_dtype(x, dtype):
    if dtype is not None:
        return P.convert(x, dtype)
    t = _t(x)
    if not (t.dtype.is_floating_point or t.dtype.is_complex):
        return P.convert(x, torch.int64)
    return x


@register(aten.sum.dim_IntList)
def _sum(x, dim=None, keepdim=False, dtype=None):
    x = _sum_dtype(x, dtype)
    t = _t(x)
    axes = _dims(dim, t.ndim) if t.ndim else ()
    return _keep(P.reduce_sum(x, axes), t.shape, axes, keepdim)


@register(aten.sum.default)
def _sum_all(x, dtype=None):
    return _sum(x, None, False, dtype)


@register(aten.mean.dim)
def _mean(x, dim=None, keepdim=False, dtype=None):
    if dtype is not None:
        x = P.convert(x, dtype)
    t = _t(x)
    axes = _dims(dim, t.ndim) if t.ndim else ()
    n = math.prod(t.shape[a] for a in axes)
    return _keep(P.div(P.reduce_sum(x, axes), float(n)), t.shape, axes, keepdim)


@register(aten.mean.default)
def _mean_all(x, dtype=None):
    return _mean(x, None, False, dtype)


def _extremum(reducer):
    def lower(x, dim=None, keepdim=False):
        t = _t(x)
        axes = _dims(dim, t.ndim) if t.ndim else ()
        return _keep(reducer(x, axes), t.shape, axes, keepdim)
    return lower


register(aten.amax.default)(_extremum(P.reduce_max))
register(aten.amin.default)(_extremum(P.reduce_min))
register(aten.max.default)(lambda x: P.reduce_max(x, tuple(range(_t(x).ndim))))
register(aten.min.default)(lambda x: P.reduce_min(x, tuple(range(_t(x).ndim))))


def _extremum_dim(reducer, arg):
    def lower(x, dim, keepdim=False):
        t = _t(x)
        if t.ndim == 0:
            return x, P.full((), 0, torch.int64, t.device)
        d = dim % t.ndim
        return (_keep(reducer(x, (d,)), t.shape, (d,), keepdim),
                _keep(arg(x, d), t.shape, (d,), keepdim))
    return lower


register(aten.max.dim)(_extremum_dim(P.reduce_max, P.argmax))
register(aten.min.dim)(_extremum_dim(P.reduce_min, P.argmin))


def _arg(fn):
    def lower(x, dim=None, keepdim=False):
        t = _t(x)
        if dim is None:
            out = fn(P.reshape(x, (t.numel,)), 0)
            return P.reshape(out, (1,) * t.ndim) if keepdim else out
        if t.ndim == 0:
            return P.full((), 0, torch.int64, t.device)
        d = dim % t.ndim
        return _keep(fn(x, d), t.shape, (d,), keepdim)
    return lower


register(aten.argmax.default)(_arg(P.argmax))
register(aten.argmin.default)(_arg(P.argmin))


@register(aten.prod.dim_int)
def _prod(x, dim, keepdim=False, dtype=None):
    x = _sum_dtype(x, dtype)
    t = _t(x)
    axes = _dims(dim, t.ndim) if t.ndim else ()
    return _keep(P.reduce_prod(x, axes), t.shape, axes, keepdim)


@register(aten.prod.default)
def _prod_all(x, dtype=None):
    x = _sum_dtype(x, dtype)
    return P.reduce_prod(x, tuple(range(_t(x).ndim)))


def _bool_reduce(reducer):
    def lower(x, dim=None, keepdim=False):
        x = _as_bool(x)
        t = _t(x)
        axes = _dims(dim, t.ndim) if t.ndim else ()
        return _keep(reducer(x, axes), t.shape, axes, keepdim)
    return lower


register(aten.any.default, aten.any.dim, aten.any.dims)(_bool_reduce(P.reduce_max))
register(aten.all.default, aten.all.dim, aten.all.dims)(_bool_reduce(P.reduce_min))


@register(aten.cumsum.default)
def _cumsum(x, dim, dtype=None):
    x = _sum_dtype(x, dtype)
    t = _t(x)
    return P.cumsum(x, dim % max(t.ndim, 1)) if t.ndim else x


# ---------------------------------------------------------------- views

def _infer_shape(shape, numel):
    shape = list(shape)
    if -1 in shape:
        i = shape.index(-1)
        rest = math.prod(s for j, s in enumerate(shape) if j != i)
        shape[i] = numel // rest if rest else 0
    return tuple(shape)


@register(aten.view.default, aten._unsafe_view.default, aten.reshape.default)
def _view(x, size):
    return P.reshape(x, _infer_shape(size, _t(x).numel))


@register(aten.expand.default)
def _expand(x, size, implicit=False):
    t = _t(x)
    lead = len(size) - t.ndim
    shape = tuple(t.shape[i - lead] if s == -1 else s for i, s in enumerate(size))
    return P.broadcast_in_dim(x, shape, tuple(range(lead, len(shape))))


@register(aten.permute.default)
def _permute(x, dims):
    nd = _t(x).ndim
    return P.transpose(x, tuple(d % nd for d in dims))


@register(aten.t.default)
def _t_op(x):
    return P.transpose(x, (1, 0)) if _t(x).ndim == 2 else x


@register(aten.transpose.int)
def _transpose(x, dim0, dim1):
    nd = _t(x).ndim
    if nd == 0:
        return x
    perm = list(range(nd))
    perm[dim0 % nd], perm[dim1 % nd] = perm[dim1 % nd], perm[dim0 % nd]
    return P.transpose(x, tuple(perm))


@register(aten.unsqueeze.default)
def _unsqueeze(x, dim):
    shape = list(_t(x).shape)
    shape.insert(dim % (len(shape) + 1), 1)
    return P.reshape(x, tuple(shape))


@register(aten.squeeze.default, aten.squeeze.dim, aten.squeeze.dims)
def _squeeze(x, dim=None):
    t = _t(x)
    if t.ndim == 0:
        return x
    dims = set(range(t.ndim)) if dim is None else {d % t.ndim for d in ([dim] if isinstance(dim, int) else dim)}
    return P.reshape(x, tuple(s for i, s in enumerate(t.shape) if not (i in dims and s == 1)))


@register(aten.select.int)
def _select(x, dim, index):
    t = _t(x)
    d = dim % t.ndim
    i = index % t.shape[d] if t.shape[d] else index
    sl = P.slice_in_dim(x, i, i + 1, 1, d)
    return P.reshape(sl, t.shape[:d] + t.shape[d + 1:])


@register(aten.slice.Tensor)
def _slice(x, dim=0, start=None, end=None, step=1):
    t = _t(x)
    d = dim % t.ndim
    start, end, step = slice(start, end, step).indices(t.shape[d])
    end = max(start, end)
    return P.slice_in_dim(x, start, end, step, d)


@register(aten.narrow.default)
def _narrow(x, dim, start, length):
    return _slice(x, dim, start, start + length)


@register(aten.alias.default)
def _alias(x):
    return x


@register(aten.diagonal.default)
def _diagonal(x, offset=0, dim1=0, dim2=1):
    t = _t(x)
    d1, d2 = dim1 % t.ndim, dim2 % t.ndim
    rest = [i for i in range(t.ndim) if i not in (d1, d2)]
    y = P.transpose(x, tuple(rest) + (d1, d2))
    n, m = t.shape[d1], t.shape[d2]
    batch = tuple(t.shape[i] for i in rest)
    count = max(0, min(n, m - offset) if offset >= 0 else min(n + offset, m))
    flat = P.reshape(y, batch + (n * m,))
    if count == 0:
        return P.slice_in_dim(flat, 0, 0, 1, len(batch))
    start = offset if offset >= 0 else -offset * m
    return P.slice_in_dim(flat, start, start + (count - 1) * (m + 1) + 1, m + 1, len(batch))


@register(aten.unbind.int)
def _unbind(x, dim=0):
    t = _t(x)
    d = dim % t.ndim
    return [_select(x, d, i) for i in range(t.shape[d])]


@register(aten.split.Tensor)
def _split(x, split_size, dim=0):
    t = _t(x)
    d = dim % t.ndim
    n = t.shape[d]
    return [_slice(x, d, s, min(s + split_size, n)) for s in range(0, max(n, 1), max(split_size, 1))]


@register(aten.split_with_sizes.default)
def _split_with_sizes(x, split_sizes, dim=0):
    d = dim % _t(x).ndim
    outs, s = [], 0
    for size in split_sizes:
        outs.append(_slice(x, d, s, s + size))
        s += size
    return outs


# ---------------------------------------------------------------- shape ops that copy

@register(aten.cat.default)
def _cat(tensors, dim=0):
    tensors = [x for x in tensors if not (_t(x).ndim == 1 and _t(x).shape[0] == 0)] or list(tensors[:1])
    dtype = result_type(*tensors)
    nd = _t(tensors[0]).ndim
    return P.concatenate([P.convert(x, dtype) for x in tensors], dim % max(nd, 1))


@register(aten.flip.default)
def _flip(x, dims):
    nd = _t(x).ndim
    return P.rev(x, tuple(sorted(d % nd for d in dims)))


@register(aten.constant_pad_nd.default)
def _constant_pad_nd(x, pad, value=0):
    t = _t(x)
    config = [(0, 0, 0)] * t.ndim
    for i in range(len(pad) // 2):
        config[t.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1], 0)
    return P.pad(x, config, value)


@register(aten._to_copy.default)
def _to_copy(x, dtype=None, layout=None, device=None, pin_memory=None, non_blocking=False,
             memory_format=None):
    t = _t(x)
    if device is not None and torch.device(device) != t.device:
        if not isinstance(x, torch.Tensor):
            from ..core.errors import user_frame_summary
            raise FunctxError(f"functx: moving a traced value from {t.device} to {device} is not "
                              f"supported:\n{user_frame_summary()}\nMove the inputs to {device} before "
                              "calling the transformed function.")
        x = x.to(device)
    return P.convert(x, dtype) if dtype is not None else x


@register(aten.fill.Scalar)
def _fill(x, value):
    t = _t(x)
    return P.full(t.shape, value, t.dtype, t.device)


@register(aten.fill.Tensor)
def _fill_tensor(x, value):
    t = _t(x)
    if isinstance(value, torch.Tensor) and value.device != t.device:
        value = value.to(t.device)   # x_cuda[i] = 1.0 fills from a 0-d CPU tensor
    return P.broadcast_to(P.convert(value, t.dtype), t.shape)


@register(aten.zero.default)
def _zero(x):
    t = _t(x)
    return P.full(t.shape, 0, t.dtype, t.device)


@register(aten.copy.default)
def _copy(x, src, non_blocking=False):
    t = _t(x)
    if isinstance(src, SCALARS):
        return P.full(t.shape, src, t.dtype, t.device)
    return P.broadcast_to(P.convert(src, t.dtype), t.shape)


# ---------------------------------------------------------------- creation

def _like(x, value, dtype=None, device=None):
    t = _t(x)
    return P.full(t.shape, value, dtype or t.dtype, device or t.device)


register(aten.zeros_like.default)(lambda x, dtype=None, layout=None, device=None, pin_memory=None,
                                  memory_format=None: _like(x, 0, dtype, device))
register(aten.ones_like.default)(lambda x, dtype=None, layout=None, device=None, pin_memory=None,
                                 memory_format=None: _like(x, 1, dtype, device))
register(aten.empty_like.default)(lambda x, dtype=None, layout=None, device=None, pin_memory=None,
                                  memory_format=None: _like(x, 0, dtype, device))
register(aten.full_like.default)(lambda x, fill_value, dtype=None, layout=None, device=None,
                                 pin_memory=None, memory_format=None: _like(x, fill_value, dtype, device))


def _new(value):
    def lower(x, size, dtype=None, layout=None, device=None, pin_memory=None):
        t = _t(x)
        return P.full(tuple(size), value, dtype or t.dtype, device or t.device)
    return lower


register(aten.new_zeros.default)(_new(0))
register(aten.new_ones.default)(_new(1))
register(aten.new_empty.default)(_new(0))
register(aten.new_empty_strided.default)(lambda x, size, stride, dtype=None, layout=None, device=None,
                                         pin_memory=None: _new(0)(x, size, dtype))


@register(aten.new_full.default)
def _new_full(x, size, fill_value, dtype=None, layout=None, device=None, pin_memory=None):
    t = _t(x)
    return P.full(tuple(size), fill_value, dtype or t.dtype, device or t.device)


@register(aten.randn_like.default)
def _randn_like(x, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    t = _t(x)
    return P.random(t.shape, dtype or t.dtype, device or t.device, "normal")


@register(aten.rand_like.default)
def _rand_like(x, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    t = _t(x)
    return P.random(t.shape, dtype or t.dtype, device or t.device, "uniform")


@register(aten.normal.Tensor_float)
def _normal_tf(mean, std=1.0, generator=None):
    t = _t(mean)
    return P.add(P.mul(P.random(t.shape, t.dtype, t.device, "normal"), std), mean)


@register(aten.normal_functional.default)
def _normal_functional(x, mean=0.0, std=1.0, generator=None):
    t = _t(x)
    return P.add(P.mul(P.random(t.shape, t.dtype, t.device, "normal"), std), mean)


@register(aten.uniform.default)
def _uniform(x, from_=0.0, to=1.0, generator=None):
    t = _t(x)
    return P.add(P.mul(P.random(t.shape, t.dtype, t.device, "uniform"), to - from_), from_)


@register(aten.bernoulli.p)
def _bernoulli_p(x, p=0.5, generator=None):
    t = _t(x)
    return P.convert(P.lt(P.random(t.shape, t.dtype, t.device, "uniform"), p), t.dtype)


@register(aten.bernoulli.default)
def _bernoulli(x, generator=None):
    t = _t(x)
    return P.convert(P.lt(P.random(t.shape, t.dtype, t.device, "uniform"), x), t.dtype)


# ---------------------------------------------------------------- linear algebra

@register(aten.mm.default, aten.bmm.default)
def _mm(a, b):
    dtype = result_type(a, b)
    return P.matmul(P.convert(a, dtype), P.convert(b, dtype))


@register(aten.addmm.default)
def _addmm(bias, a, b, beta=1, alpha=1):
    out = _mm(a, b)
    if alpha != 1:
        out = P.mul(out, alpha)
    if beta == 0:
        return out
    if beta != 1:
        bias = elementwise(P.mul, bias, beta)
    return elementwise(P.add, out, bias)


@register(aten.dot.default, aten.vdot.default)
def _dot(a, b):
    return P.dot_general(a, b, (((0,), (0,)), ((), ())))


@register(aten.mv.default)
def _mv(a, b):
    return P.dot_general(a, b, (((1,), (0,)), ((), ())))


@register(aten.baddbmm.default)
def _baddbmm(bias, a, b, beta=1, alpha=1):
    return _addmm(bias, a, b, beta, alpha)


# ---------------------------------------------------------------- indexing

def _wrap_index(idx, size):
    """Negative indices count from the end (static size)."""
    return P.where(P.lt(idx, 0), P.add(idx, size), idx)


@register(aten.index_select.default)
def _index_select(x, dim, index):
    t = _t(x)
    d = dim % max(t.ndim, 1)
    if t.ndim == 0:
        return x
    return P.take(x, index, d)


@register(aten.gather.default)
def _gather(x, dim, index, sparse_grad=False):
    t = _t(x)
    return P.take_along_axis(x, index, dim % max(t.ndim, 1))


@register(aten.scatter_add.default)
def _scatter_add(x, dim, index, src):
    t = _t(x)
    it = _t(index)
    if _t(src).shape != it.shape:
        src = P.slice_(src, (0,) * it.ndim, it.shape)
    return P.scatter_add_along(x, index, P.convert(src, t.dtype), dim % max(t.ndim, 1))


def _linear_index(x, indices):
    """Advanced indexing -> (x with indexed dims flattened to one axis at `pos`,
    flat index tensor, pos, whether result dims go first)."""
    t = _t(x)
    full = list(indices) + [None] * (t.ndim - len(indices))
    # Boolean masks become integer indices (data-dependent: needs concrete values).
    expanded = []
    for i, ix in enumerate(full):
        if ix is not None and _t(ix).dtype in (torch.bool, torch.uint8):
            nz = torch.nonzero(_concrete_mask(ix))
            expanded += [nz[:, k] for k in range(nz.shape[1])]
        else:
            expanded.append(ix)
    full = expanded + [None] * (t.ndim - len(expanded))
    dims = [i for i, ix in enumerate(full) if ix is not None]
    adjacent = dims == list(range(dims[0], dims[-1] + 1))
    idx_shape = broadcast_shapes(*[full[d] for d in dims])
    perm = dims + [i for i in range(t.ndim) if i not in dims]
    y = P.transpose(x, tuple(perm))
    sizes = [t.shape[d] for d in dims]
    rest = tuple(t.shape[i] for i in range(t.ndim) if i not in dims)
    y = P.reshape(y, (math.prod(sizes),) + rest)
    lin = None
    for d, size in zip(dims, sizes):
        ix = P.broadcast_to(P.convert(_wrap_index(full[d], size), torch.int64), idx_shape)
        lin = ix if lin is None else P.add(P.mul(lin, size), ix)
    return y, lin, dims, adjacent, rest, idx_shape


@register(aten.index.Tensor)
def _index(x, indices):
    y, lin, dims, adjacent, rest, idx_shape = _linear_index(x, indices)
    out = P.take(y, lin, 0)                         # idx_shape + rest
    if adjacent and dims[0] > 0:
        k = len(idx_shape)
        lead = dims[0]
        perm = list(range(k, k + lead)) + list(range(k)) + list(range(k + lead, k + len(rest)))
        out = P.transpose(out, tuple(perm))
    return out


def _concrete_mask(mask):
    from ..core.errors import ConcretizationError, user_frame_summary
    from ..core.trace import concrete
    try:
        return concrete(mask)
    except ConcretizationError:
        raise ConcretizationError(
            f"Indexing with a boolean mask ({_t(mask)}) selects a number of elements that depends "
            f"on the mask's values, so the result has no static shape to trace:\n{user_frame_summary()}\n"
            "Under functx.jit values are abstract. Use torch.where(mask, x, other) or "
            "x.masked_fill(mask, value) instead of x[mask]; assigning a single value, "
            "x[mask] = v, is supported.") from None


def _mask_put(x, mask, values, accumulate):
    """x[mask] = v / x[mask] += v with a boolean mask over x's leading dims and one value:
    a select, so it traces without the mask's values."""
    t, m = _t(x), _t(mask)
    if m.shape != t.shape[:m.ndim] or isinstance(values, SCALARS) or _t(values).numel != 1:
        return None
    mask = P.broadcast_in_dim(_as_bool(mask), t.shape, tuple(range(m.ndim)))
    v = P.broadcast_to(P.convert(P.reshape(values, ()), t.dtype), t.shape)
    if accumulate:
        v = P.add(x, v) if t.dtype is not torch.bool else P.bitwise_or(x, v)
    return P.where(mask, v, x)


@register(aten.index_put.default)
def _index_put(x, indices, values, accumulate=False):
    t = _t(x)
    live = [ix for ix in indices if ix is not None]
    if (len(indices) == 1 and live and _t(live[0]).dtype in (torch.bool, torch.uint8)):
        out = _mask_put(x, live[0], values, accumulate)
        if out is not None:
            return out
    y, lin, dims, adjacent, rest, idx_shape = _linear_index(x, indices)
    # values broadcast against the indexing result (in its natural layout).
    if adjacent and dims[0] > 0:
        lead = dims[0]
        k = len(idx_shape)
        result_shape = rest[:lead] + idx_shape + rest[lead:]
        v = P.broadcast_to(P.convert(values, t.dtype), result_shape)
        perm = list(range(lead, lead + k)) + list(range(lead)) + list(range(lead + k, len(result_shape)))
        v = P.transpose(v, tuple(perm))
    else:
        v = P.broadcast_to(P.convert(values, t.dtype), idx_shape + rest)
    scatter = P.scatter_add if accumulate else P.scatter
    out = scatter(y, lin, v, 0)
    sizes = [t.shape[d] for d in dims]
    out = P.reshape(out, tuple(sizes) + rest)
    perm = dims + [i for i in range(t.ndim) if i not in dims]
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return P.transpose(out, tuple(inv))


@register(aten.sort.default)
def _sort(x, dim=-1, descending=False):
    if _t(x).ndim == 0:
        return x, P.full((), 0, torch.int64, _t(x).device)
    return tuple(P.sort(x, dim, descending, False))


@register(aten.sort.stable)
def _sort_stable(x, *, stable=False, dim=-1, descending=False):
    if _t(x).ndim == 0:
        return x, P.full((), 0, torch.int64, _t(x).device)
    return tuple(P.sort(x, dim, descending, bool(stable)))


@register(aten.topk.default)
def _topk(x, k, dim=-1, largest=True, sorted=True):
    t = _t(x)
    d = dim % max(t.ndim, 1)
    values, indices = P.sort(x, d, largest, True)
    return P.slice_in_dim(values, 0, k, 1, d), P.slice_in_dim(indices, 0, k, 1, d)


# ---------------------------------------------------------------- torch.ops.prims (emitted by torch._refs decompositions)

prims_ns = torch.ops.prims


@register(prims_ns.broadcast_in_dim.default)
def _prims_broadcast_in_dim(x, shape, broadcast_dimensions):
    return P.broadcast_in_dim(x, tuple(shape), tuple(broadcast_dimensions))


@register(prims_ns.convert_element_type.default)
def _prims_convert(x, dtype):
    return P.convert(x, dtype)


@register(prims_ns.sum.default)
def _prims_sum(x, dims, output_dtype=None):
    x = P.convert(x, output_dtype) if output_dtype is not None else x
    return P.reduce_sum(x, tuple(sorted(d % max(_t(x).ndim, 1) for d in dims)))


@register(prims_ns.var.default)
def _prims_var(x, dims, correction=1, output_dtype=None):
    t = _t(x)
    axes = tuple(sorted(d % max(t.ndim, 1) for d in dims))
    n = math.prod(t.shape[a] for a in axes)
    mean = P.div(P.reduce_sum(x, axes), float(n))
    kept = tuple(i for i in range(t.ndim) if i not in axes)
    centered = P.sub(x, P.broadcast_in_dim(mean, t.shape, kept))
    return P.div(P.reduce_sum(P.mul(centered, centered), axes), float(max(n - correction, 0)))


@register(prims_ns.div.default)
def _prims_div(x, y):
    dtype = result_type(x, y)
    if dtype.is_floating_point or dtype.is_complex:
        return elementwise(P.div, x, y)
    return elementwise(lambda a, b: P.idiv(a, b, "trunc"), x, y)


for _name in ("add", "sub", "mul", "neg", "exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "abs",
              "eq", "ne", "lt", "le", "gt", "ge", "where", "maximum", "minimum", "pow", "sigmoid"):
    _prim_op = getattr(prims_ns, _name, None)
    _aten_op = getattr(aten, _name)
    if _prim_op is not None:
        _lowering = LOWERINGS.get(getattr(_aten_op, "Tensor", None)) or LOWERINGS.get(
            getattr(_aten_op, "default", None)) or LOWERINGS.get(getattr(_aten_op, "self", None))
        if _lowering is not None:
            register(_prim_op.default)(_lowering)


@register(prims_ns.amax.default)
def _prims_amax(x, dims, output_dtype=None):
    return P.reduce_max(x, tuple(sorted(d % max(_t(x).ndim, 1) for d in dims)))


@register(prims_ns.amin.default)
def _prims_amin(x, dims, output_dtype=None):
    return P.reduce_min(x, tuple(sorted(d % max(_t(x).ndim, 1) for d in dims)))


# ---------------------------------------------------------------- convolution

def _expand_param(p, n):
    p = [p] if isinstance(p, int) else list(p)
    return tuple(p * n if len(p) == 1 else p)


@register(aten.convolution.default, aten._convolution.deprecated, aten._convolution.default)
def _convolution(x, w, bias, stride, padding, dilation, transposed, output_padding, groups, *unused):
    nsp = _t(w).ndim - 2
    dtype = result_type(x, w)
    x, w = P.convert(x, dtype), P.convert(w, dtype)
    unbatched = _t(x).ndim == nsp + 1
    if unbatched:
        x = P.reshape(x, (1,) + _t(x).shape)
    out = P.conv(x, w, _expand_param(stride, nsp), _expand_param(padding, nsp),
                 _expand_param(dilation, nsp), transposed, _expand_param(output_padding, nsp), groups)
    if bias is not None:
        ot = _t(out)
        out = P.add(out, P.broadcast_in_dim(P.convert(bias, dtype), ot.shape, (1,)))
    return P.reshape(out, _t(out).shape[1:]) if unbatched else out


# ---------------------------------------------------------------- as_strided
# A traced value has no storage: it is read as its contiguous layout (what the wrapper's
# strides report). On a view, torch reads the root's storage, so the view is taken from
# the root. Positions are static, so this is a slice when contiguous, else a gather
# (whose transpose, scatter_add, accumulates where windows overlap).

def _as_strided_value(x, size, stride, storage_offset=0):
    t = _t(x)
    size, stride, off = tuple(size), tuple(stride), storage_offset or 0
    n = math.prod(size)
    flat = P.reshape(x, (t.numel,))
    expect, acc = [], 1
    for s in reversed(size):
        expect.insert(0, acc)
        acc *= s
    if all(st == e or sz == 1 for sz, st, e in zip(size, stride, expect)):
        return P.reshape(P.slice_in_dim(flat, off, off + n, 1, 0), size)
    positions = torch.zeros((), dtype=torch.int64)
    for k, (sz, st) in enumerate(zip(size, stride)):
        shape = [1] * len(size)
        shape[k] = sz
        positions = positions + torch.arange(sz).reshape(shape) * st
    positions = (positions + off).expand(size).contiguous().to(t.device)
    if n and int(positions.max()) >= t.numel:
        raise FunctxError(f"functx: aten.as_strided: size {list(size)}, stride {list(stride)}, offset {off} "
                          f"reads past the end of a tensor of {t.numel} elements")
    return P.take(flat, positions, 0)


LOWERINGS[aten.as_strided.default] = _as_strided_value


def _as_strided(x, size, stride, storage_offset=None):
    from .dispatch import _view_wrapper
    from .tensor import TracerTensor, value_of
    if not isinstance(x, TracerTensor):
        return torch.as_strided(x, size, stride, storage_offset)
    root = x._root if x._root is not None else x
    chain = [(aten.as_strided.default, (tuple(size), tuple(stride), storage_offset), {}, None)]
    return _view_wrapper(_as_strided_value(value_of(root), size, stride, storage_offset), root, chain)


def _register_special():
    from .dispatch import SPECIAL
    SPECIAL[aten.as_strided.default] = _as_strided


_register_special()


# ---------------------------------------------------------------- helpers: opaque from a lowering

def _opaque(func, *args, **kwargs):
    """Run `func` through the opaque fallback from inside a lowering (for the cases a native
    lowering does not cover): correct under every transform, and reported by explain."""
    from .fallback import opaque_fallback
    from .tensor import TracerTensor, unwrap
    from ..core.trace import Tracer
    wrap = lambda a: TracerTensor(a) if isinstance(a, Tracer) else a  # noqa: E731
    out = opaque_fallback(func, torch.utils._pytree.tree_map(wrap, args),
                          torch.utils._pytree.tree_map(wrap, kwargs))
    return torch.utils._pytree.tree_map(unwrap, out)


def _zeros(t, dtype=None):
    return P.full(t.shape, 0, dtype or t.dtype, t.device)


# ---------------------------------------------------------------- batch norm
# Running statistics are updated like the ATen kernel does: with stop-gradient values, as
# a functionalized write when the buffer is traced, and concretely (as torch.func does)
# when it is a plain module buffer and the value is concrete (eager transforms).

def _update_buffer(buf, new, op):
    from .dispatch import write
    from .tensor import TracerTensor, unwrap
    from ..core.trace import concrete
    value = P.stop_gradient(unwrap(new))
    if isinstance(buf, TracerTensor):
        write(buf, value)
        return
    try:
        c = concrete(value)
    except FunctxError as e:
        raise FunctxError(
            f"functx: {op} in training mode updates running statistics held in plain tensors (module "
            "buffers), but the new value is not concrete here (under jit or vmap). Pass the buffers "
            "as inputs, e.g. functional_call(model, {**params, **buffers}, x), use the module in eval "
            "mode, or construct it with track_running_stats=False.") from e
    with torch.no_grad():
        buf.copy_(c)


def _native_batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps):
    from torch._decomp.decompositions import native_batch_norm_helper
    out, save_mean, save_rstd, new_mean, new_var = native_batch_norm_helper(
        input, weight, bias, running_mean, running_var, training, momentum, eps, functional=True)
    if training:
        for buf, new in ((running_mean, new_mean), (running_var, new_var)):
            if buf is not None:
                _update_buffer(buf, new, "batch_norm")
    return out, save_mean, save_rstd


def _native_batch_norm_legit(input, weight, bias, running_mean, running_var, training, momentum, eps):
    return _native_batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps)


def _native_batch_norm_legit_no_stats(input, weight, bias, training, momentum, eps):
    return _native_batch_norm(input, weight, bias, None, None, training, momentum, eps)


def _native_batch_norm_legit_no_training(input, weight, bias, running_mean, running_var, momentum, eps):
    return _native_batch_norm(input, weight, bias, running_mean, running_var, False, momentum, eps)


def _register_batch_norm():
    from .dispatch import SPECIAL
    SPECIAL[aten.native_batch_norm.default] = _native_batch_norm
    SPECIAL[aten._native_batch_norm_legit.default] = _native_batch_norm_legit
    SPECIAL[aten._native_batch_norm_legit.no_stats] = _native_batch_norm_legit_no_stats
    SPECIAL[aten._native_batch_norm_legit_no_training.default] = _native_batch_norm_legit_no_training


_register_batch_norm()


# ---------------------------------------------------------------- average pooling (a conv with a ones kernel)

def _pool_params(nd, kernel_size, stride, padding):
    ks = _expand_param(kernel_size, nd)
    st = _expand_param(stride, nd) if stride not in (None, [], ()) else ks
    pa = _expand_param(padding, nd)
    return ks, st, pa


def _avg_pool(nd):
    def lower(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
              divisor_override=None):
        from torch._meta_registrations import pooling_output_shape
        ks, st, pa = _pool_params(nd, kernel_size, stride, padding)
        t = _t(x)
        unbatched = t.ndim == nd + 1
        if unbatched:
            x = P.reshape(x, (1,) + t.shape)
            t = _t(x)
        lead, sizes = t.shape[:-nd], t.shape[-nd:]
        outs = [pooling_output_shape(n, k, p, s, 1, ceil_mode) for n, k, p, s in zip(sizes, ks, pa, st)]
        # pad so that exactly the windows torch visits fit (ceil_mode may need more on the right)
        cfg = [(0, 0, 0)] * len(lead) + [(p, (o - 1) * s + k - n - p, 0)
                                          for n, k, p, s, o in zip(sizes, ks, pa, st, outs)]
        xp = P.pad(P.reshape(x, (math.prod(lead), 1) + sizes), [(0, 0, 0), (0, 0, 0)] + cfg[len(lead):], 0.0)
        ones = P.full((1, 1) + ks, 1.0, t.dtype, t.device)
        summed = P.conv(xp, ones, st, (0,) * nd, (1,) * nd, False, None, 1)
        if divisor_override:
            out = P.div(summed, float(divisor_override))
        else:
            divisor = torch.ones((), dtype=torch.float64)
            for d, (n, k, p, s, o) in enumerate(zip(sizes, ks, pa, st, outs)):
                start = torch.arange(o) * s - p
                end = torch.clamp(start + k, max=n + p)
                size = (end - start) if count_include_pad else (
                    torch.clamp(end, max=n) - torch.clamp(start, min=0))
                shape = [1] * nd
                shape[d] = o
                divisor = divisor * size.reshape(shape)
            divisor = divisor.expand(outs).to(t.dtype).reshape((1, 1) + tuple(outs)).to(t.device)
            out = P.div(summed, P.broadcast_to(divisor, _t(summed).shape))
        out = P.reshape(out, lead + tuple(outs))
        return P.reshape(out, _t(out).shape[1:]) if unbatched else out
    return lower


register(aten.avg_pool1d.default)(_avg_pool(1))
register(aten.avg_pool2d.default)(_avg_pool(2))
register(aten.avg_pool3d.default)(_avg_pool(3))


# ---------------------------------------------------------------- max/min over a dim: values at the index
# torch sends the gradient of max(dim)/min(dim) to the index it returns (amax/amin split it
# among ties); taking the values with a gather at that index gives exactly that.

def _extremum_at_index(arg):
    def lower(x, dim, keepdim=False):
        t = _t(x)
        if t.ndim == 0:
            return x, P.full((), 0, torch.int64, t.device)
        d = dim % t.ndim
        idx = arg(x, d)
        kept = tuple(1 if i == d else s for i, s in enumerate(t.shape))
        vals = P.take_along_axis(x, P.reshape(idx, kept), d)
        if not keepdim:
            vals = P.reshape(vals, _t(idx).shape)
        return vals, _keep(idx, t.shape, (d,), keepdim)
    return lower


register(aten.max.dim)(_extremum_at_index(P.argmax))
register(aten.min.dim)(_extremum_at_index(P.argmin))


# ---------------------------------------------------------------- cumulative ops (masked, O(n^2) along the axis)

_CUM_BUDGET = 1 << 22      # elements of the masked (…, n, n) intermediate; above it: opaque


def _cum_masked(x, dim, fill):
    """x with `dim` moved last and expanded to (..., n_i, n_j), entries j > i set to fill."""
    t = _t(x)
    d = dim % t.ndim
    perm = tuple(i for i in range(t.ndim) if i != d) + (d,)
    xl = P.transpose(x, perm)
    shape = _t(xl).shape
    n = shape[-1]
    full = shape[:-1] + (n, n)
    xb = P.broadcast_in_dim(xl, full, tuple(range(len(shape) - 1)) + (len(shape),))
    mask = P.ge(P.iota(full, len(full) - 2, torch.int64, t.device), P.iota(full, len(full) - 1, torch.int64, t.device))
    return P.where(mask, xb, P.full(full, fill, t.dtype, t.device)), mask, perm


def _cum_restore(y, perm):
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return P.transpose(y, tuple(inv))


def _cum_too_big(x, dim):
    t = _t(x)
    return t.ndim == 0 or t.numel * t.shape[dim % t.ndim] > _CUM_BUDGET


@register(prims_ns.prod.default)
def _prims_prod(x, dims, output_dtype=None):
    x = P.convert(x, output_dtype) if output_dtype is not None else x
    return P.reduce_prod(x, tuple(sorted(d % max(_t(x).ndim, 1) for d in dims)))


def _cum_extremum(name, is_max):
    op = getattr(aten, name).default

    def lower(x, dim):
        t = _t(x)
        if _cum_too_big(x, dim) or t.dtype is torch.bool:
            if t.ndim == 0:
                return x, P.full((), 0, torch.int64, t.device)
            return _opaque(op, x, dim)
        fill = -math.inf if is_max else math.inf
        if not t.dtype.is_floating_point:
            info = torch.iinfo(t.dtype)
            fill = info.min if is_max else info.max
        masked, mask, perm = _cum_masked(x, dim, fill)
        best = (P.reduce_max if is_max else P.reduce_min)(masked, (len(perm),))
        full = _t(masked).shape
        hit = P.bitwise_and(mask, P.eq(masked, P.broadcast_in_dim(best, full, tuple(range(len(full) - 1)))))
        # torch picks the last position that attains the running extremum
        j = P.iota(full, len(full) - 1, torch.int64, t.device)
        idx = P.reduce_max(P.where(hit, j, P.full(full, -1, torch.int64, t.device)), (len(full) - 1,))
        idx = _cum_restore(idx, perm)
        return P.take_along_axis(x, idx, dim % t.ndim), idx
    return lower


register(aten.cummax.default)(_cum_extremum("cummax", True))
register(aten.cummin.default)(_cum_extremum("cummin", False))


@register(aten.logcumsumexp.default)
def _logcumsumexp(x, dim):
    t = _t(x)
    if t.ndim == 0:
        return x
    if _cum_too_big(x, dim) or not t.dtype.is_floating_point:
        return _opaque(aten.logcumsumexp.default, x, dim)
    masked, mask, perm = _cum_masked(x, dim, -math.inf)
    last = len(perm)
    full = _t(masked).shape
    m = P.stop_gradient(P.reduce_max(masked, (last,)))
    m = P.where(P.eq(P.abs_(m), math.inf), P.full(_t(m).shape, 0.0, t.dtype, t.device), m)
    mb = P.broadcast_in_dim(m, full, tuple(range(len(full) - 1)))
    s = P.reduce_sum(P.exp(P.sub(masked, mb)), (last,))
    return _cum_restore(P.add(P.log(s), m), perm)


# ---------------------------------------------------------------- scatter (gather-style index), scatter_reduce

def _scatter_positions(x, dim, index):
    """Flat positions in x of the elements `index` addresses along dim (torch.scatter)."""
    t, it = _t(x), _t(index)
    strides, acc = [0] * t.ndim, 1
    for k in range(t.ndim - 1, -1, -1):
        strides[k], acc = acc, acc * t.shape[k]
    pos = P.mul(P.convert(index, torch.int64), strides[dim])
    for k in range(t.ndim):
        if k != dim and strides[k] and it.shape[k] > 1:
            pos = P.add(pos, P.iota(it.shape, k, torch.int64, t.device) if strides[k] == 1 else
                        P.mul(P.iota(it.shape, k, torch.int64, t.device), strides[k]))
    return pos


def _src_for(src, index, dtype):
    it = _t(index)
    if isinstance(src, SCALARS):
        return P.full(it.shape, src, dtype, _t(index).device)
    src = P.convert(src, dtype)
    if _t(src).shape != it.shape:
        src = P.slice_(src, (0,) * it.ndim, it.shape)
    return src


@register(aten.scatter.src, aten.scatter.value)
def _scatter_lower(x, dim, index, src):
    t = _t(x)
    if t.ndim == 0 or _t(index).numel == 0:
        return x if t.ndim or _t(index).numel == 0 else P.reshape(
            _src_for(src, P.reshape(index, (1,)), t.dtype), ())
    d = dim % t.ndim
    pos = _scatter_positions(x, d, index)
    flat = P.reshape(x, (t.numel,))
    return P.reshape(P.scatter(flat, pos, _src_for(src, index, t.dtype), 0), t.shape)


@register(aten.scatter_reduce.two)
def _scatter_reduce(x, dim, index, src, reduce, include_self=True):
    t = _t(x)
    if reduce not in ("sum", "mean") or t.ndim == 0 or not t.dtype.is_floating_point:
        return _opaque(aten.scatter_reduce.two, x, dim, index, src, reduce, include_self=include_self)
    d = dim % t.ndim
    src = _src_for(src, index, t.dtype)
    ones = P.full(_t(index).shape, 1.0, t.dtype, t.device)
    count = P.scatter_add_along(_zeros(t), index, ones, d)      # how many updates land on each element
    touched = P.gt(count, 0.0)
    base = x if include_self else P.where(touched, _zeros(t), x)
    out = P.scatter_add_along(base, index, src, d)
    if reduce == "mean":
        n = P.add(count, 1.0) if include_self else P.where(touched, count, P.full(t.shape, 1.0, t.dtype, t.device))
        out = P.div(out, n)
    return out


# ---------------------------------------------------------------- data-dependent shapes (eager only)

@register(aten.masked_select.default)
def _masked_select(x, mask):
    from ..core.trace import concrete
    shape = broadcast_shapes(x, mask)
    try:
        m = concrete(P.broadcast_to(mask, shape))
    except FunctxError as e:
        from ..core.errors import ConcretizationError
        raise ConcretizationError(
            "functx: aten.masked_select: the output's shape depends on the mask's values, which are "
            "not known here (under jit or vmap). Use torch.where(mask, x, 0) (fixed shape), or call "
            "masked_select outside the jitted/vmapped function.") from e
    idx = torch.nonzero(m.reshape(-1)).reshape(-1)
    return P.take(P.reshape(P.broadcast_to(x, shape), (math.prod(shape),)), idx, 0)


# ---------------------------------------------------------------- distances, hypot

def _safe_root(s, p):
    """s ** (1/p) with a zero derivative at s == 0 (torch's norm/cdist backward convention)."""
    t = _t(s)
    pos = P.gt(s, 0.0)
    safe = P.where(pos, s, P.full(t.shape, 1.0, t.dtype, t.device))
    r = P.sqrt(safe) if p == 2 else P.pow_(safe, 1.0 / p)
    return P.where(pos, r, _zeros(t))


@register(aten._cdist_forward.default)
def _cdist(x1, x2, p, compute_mode=None):
    t1, t2 = _t(x1), _t(x2)
    dtype = result_type(x1, x2)
    batch = static_broadcast_shapes((tuple(t1.shape[:-2]), tuple(t2.shape[:-2])))
    n1, n2, m = t1.shape[-2], t2.shape[-2], t1.shape[-1]
    full = batch + (n1, n2, m)
    nb = len(batch)
    a = P.broadcast_in_dim(P.broadcast_to(P.convert(x1, dtype), batch + (n1, m)), full,
                           tuple(range(nb)) + (nb, nb + 2))
    b = P.broadcast_in_dim(P.broadcast_to(P.convert(x2, dtype), batch + (n2, m)), full,
                           tuple(range(nb)) + (nb + 1, nb + 2))
    diff = P.abs_(P.sub(a, b))
    last = (len(full) - 1,)
    if p == 0:
        return P.reduce_sum(P.convert(P.ne(diff, 0.0), dtype), last)
    if p == math.inf:
        return P.reduce_max(diff, last)
    if p == 1:
        return P.reduce_sum(diff, last)
    if p == 2:
        return _safe_root(P.reduce_sum(P.mul(diff, diff), last), 2)
    return _safe_root(P.reduce_sum(P.pow_(diff, float(p)), last), p)


@register(prims_ns.hypot.default, aten.hypot.default)
def _hypot(a, b):
    dtype = result_type(a, b, kind=KIND.INT_TO_FLOAT)
    a, b = prepare((a, b), dtype, broadcast_shapes(a, b))
    return _safe_root(P.add(P.mul(a, a), P.mul(b, b)), 2)


# ---------------------------------------------------------------- _safe_softmax (SDPA with masks)
# softmax whose fully-masked (all -inf) rows are 0; written so that those rows also have
# zero (not nan) derivatives: no where() over a nan branch.

@register(aten._safe_softmax.default)
def _safe_softmax(x, dim, dtype=None):
    if dtype is not None:
        x = P.convert(x, dtype)
    t = _t(x)
    if t.ndim == 0:
        return P.full((), 1.0, t.dtype, t.device)
    d = dim % t.ndim
    kept = tuple(i for i in range(t.ndim) if i != d)
    m = P.stop_gradient(P.reduce_max(x, (d,)))
    m = P.where(P.eq(m, -math.inf), P.full(_t(m).shape, 0.0, t.dtype, t.device), m)
    e = P.exp(P.sub(x, P.broadcast_in_dim(m, t.shape, kept)))
    s = P.reduce_sum(e, (d,))
    s = P.where(P.eq(s, 0.0), P.full(_t(s).shape, 1.0, t.dtype, t.device), s)
    return P.div(e, P.broadcast_in_dim(s, t.shape, kept))


# ---------------------------------------------------------------- softmax / log_softmax
# Native (PyTorch's decompositions reach elementwise_dtypes, which imports sympy). The max
# is a constant shift (softmax is shift-invariant), so it is stop_gradient'ed as in JAX:
# derivatives don't pay for the max's tie-averaging rule.

def _shifted_rows(x, dim, half_to_float):
    if half_to_float:
        x = P.convert(x, torch.float32)
    t = _t(x)
    d = dim % t.ndim
    kept = tuple(i for i in range(t.ndim) if i != d)
    m = P.stop_gradient(P.reduce_max(x, (d,)))
    return P.sub(x, P.broadcast_in_dim(m, t.shape, kept)), d, kept, t


@register(aten._softmax.default)
def _softmax(x, dim, half_to_float=False):
    if _t(x).ndim == 0:
        return P.full((), 1.0, torch.float32 if half_to_float else _t(x).dtype, _t(x).device)
    z, d, kept, t = _shifted_rows(x, dim, half_to_float)
    e = P.exp(z)
    return P.div(e, P.broadcast_in_dim(P.reduce_sum(e, (d,)), t.shape, kept))


@register(aten._log_softmax.default)
def _log_softmax(x, dim, half_to_float=False):
    if _t(x).ndim == 0:
        return P.full((), 0.0, torch.float32 if half_to_float else _t(x).dtype, _t(x).device)
    z, d, kept, t = _shifted_rows(x, dim, half_to_float)
    lse = P.log(P.reduce_sum(P.exp(z), (d,)))
    return P.sub(z, P.broadcast_in_dim(lse, t.shape, kept))


# ---------------------------------------------------------------- hardtanh (relu6)
# Native, not torch's decomposition (which is clamp): torch's hardtanh has derivative 0 at
# both boundaries (and at NaN), clamp has 1. NaN values pass through, as in torch.

@register(aten.hardtanh.default)
def _hardtanh(x, min_val=-1.0, max_val=1.0):
    t = _t(x)
    if not t.dtype.is_floating_point:
        return _clamp(x, min_val, max_val)
    lo, hi = float(min_val), float(max_val)
    clamped = P.where(P.le(x, lo), P.full(t.shape, lo, t.dtype, t.device),
                      P.where(P.ge(x, hi), P.full(t.shape, hi, t.dtype, t.device), x))
    # torch's hardtanh_backward masks with lo < x < hi: 0 at the boundaries and at NaN.
    interior = P.bitwise_and(P.gt(x, lo), P.lt(x, hi))
    return P.where(interior, x, P.stop_gradient(clamped))


# ---------------------------------------------------------------- vector norms
# Native: the decomposition's sqrt(sum(x*x)) has a nan derivative at x = 0, where torch
# returns the subgradient 0. The double where keeps both the value and the derivatives
# finite: the root only ever sees a positive argument, and at 0 the constant branch wins.

@register(aten.linalg_vector_norm.default)
def _vector_norm(x, ord=2, dim=None, keepdim=False, dtype=None):
    if dtype is not None:
        x = P.convert(x, dtype)
    t = _t(x)
    axes = _dims(dim, t.ndim) if t.ndim else ()
    a = P.abs_(x)
    if ord == math.inf:
        out = P.reduce_max(a, axes)
    elif ord == -math.inf:
        out = P.reduce_min(a, axes)
    elif ord == 0:
        out = P.reduce_sum(P.convert(P.ne(x, 0.0), t.dtype), axes)
    elif ord == 1:
        out = P.reduce_sum(a, axes)
    else:
        if ord == 2:
            powered = P.mul(x, x)
        else:   # |x|^p with zero derivative at x = 0 (torch masks those), value 0 or inf there
            nonzero = P.gt(a, 0.0)
            powered = P.where(nonzero, P.pow_(P.where(nonzero, a, 1.0), float(ord)),
                              0.0 if ord > 0 else math.inf)
        s = P.reduce_sum(powered, axes)
        if ord < 0:
            out = P.pow_(s, 1.0 / ord)
        else:
            positive = P.gt(s, 0.0)
            safe = P.where(positive, s, 1.0)
            root = P.sqrt(safe) if ord == 2 else P.pow_(safe, 1.0 / ord)
            out = P.where(positive, root, 0.0)
    return _keep(out, t.shape, axes, keepdim)


# ---------------------------------------------------------------- finite derivatives at the edges
# torch's derivative formulas return 0 at points where the composite formula gives 0/0:
# std of constant data, sinc at 0, hardsigmoid/hardswish at +-3 (strict boundaries).

def _safe_sqrt(v):
    """sqrt with derivative 0 (not inf*0 = nan) where v == 0."""
    positive = P.gt(v, 0.0)
    return P.where(positive, P.sqrt(P.where(positive, v, 1.0)), 0.0)


@register(aten.std.correction)
def _std(x, dim=None, *, correction=None, keepdim=False):
    t = _t(x)
    axes = _dims(dim, t.ndim) if t.ndim else ()
    v = _prims_var(P.convert(x, float_dtype_of(x)), axes, 1 if correction is None else correction)
    return _keep(_safe_sqrt(v), t.shape, axes, keepdim)


@register(aten.sinc.default)
def _sinc(x):
    x = P.convert(x, float_dtype_of(x))
    t = _t(x)
    zero = P.eq(x, 0.0)
    px = P.mul(P.where(zero, 1.0, x), math.pi)
    return P.where(zero, P.full(t.shape, 1.0, t.dtype, t.device), P.div(P.sin(px), px))


@register(aten.hardsigmoid.default)
def _hardsigmoid(x):
    return P.div(_hardtanh(P.add(x, 3.0), 0.0, 6.0), 6.0)


@register(aten.hardswish.default)
def _hardswish(x):
    return P.mul(x, _hardsigmoid(x))
