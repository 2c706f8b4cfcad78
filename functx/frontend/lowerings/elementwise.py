"""Elementwise lowerings: unary math, arithmetic, comparisons, logical and bitwise ops,
where, clamp. Operands are promoted and broadcast explicitly (promote.py); primitives do
neither."""
from __future__ import annotations

import math

import torch
from torch._prims_common import ELEMENTWISE_TYPE_PROMOTION_KIND as KIND

from ... import prims as P
from ..promote import (SCALARS, broadcast_shapes, elementwise, float_dtype_of, is_weak, mark_weak, prepare,
                       result_type)
from ...core.trace import concrete, note_autograd_read
from .common import _as_bool, _t, aten
from .registry import register


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
    return P.erfc(P.convert(x, float_dtype_of(x)))


@register(aten.special_erfcx.default)
def _erfcx(x):
    return P.erfcx(P.convert(x, float_dtype_of(x)))


@register(aten.special_entr.default)
def _entr(x):
    return P.entr(P.convert(x, float_dtype_of(x)))


@register(aten.neg.default)
def _neg(x):
    return mark_weak(P.neg(x)) if is_weak(x) else P.neg(x)    # -n of a dynamic Python number


@register(aten.abs.default)
def _abs(x):
    if _t(x).dtype is torch.bool:
        return x
    return mark_weak(P.abs_(x)) if is_weak(x) else P.abs_(x)   # abs(n) of a dynamic Python number


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


@register(aten.lift_fresh.default)
def _lift_fresh(x):
    # A constant made inside the function (torch.tensor(1.0), the value of x[i] = 1.0): it
    # has no derivative, and staying a plain tensor lets copy_ move a 0-d CPU one to x's device.
    return x


@register(aten.detach.default)
def _detach(x):
    note_autograd_read()        # jit: the compiled graph does not detach for torch autograd
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
    if any(isinstance(a, bool) or (_t(a) is not None and _t(a).dtype is torch.bool) for a in (x, y)):
        raise RuntimeError("Subtraction, the `-` operator, with a bool tensor is not supported. If you are "
                           "trying to invert a mask, use the `~` or `logical_not()` operator instead.")
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
        if rounding_mode == "floor":
            return _weak_if(x, y, elementwise(_floor_div_float, x, y))
        q = elementwise(P.div, x, y)
        return _weak_if(q, P.trunc(q))
    return elementwise(lambda a, b: P.idiv(a, b, rounding_mode), x, y)


def _floor_div_float(a, b):
    """torch's div_floor_floating (c10/util/generic_math.h), not floor(a / b): the quotient
    of a - fmod(a, b), so 3 // -inf is -1 and inf // 1 is nan; a / b when b == 0; a zero
    quotient carries the sign of a / b. Piecewise constant: derivative 0, as in torch."""
    t = _t(b) if isinstance(a, (int, float)) else _t(a)
    a, b = (P.full(t.shape, float(v), t.dtype, t.device) if isinstance(v, (int, float)) else v
            for v in (a, b))
    q = P.div(a, b)
    mod = P.rem(a, b)
    d = P.div(P.sub(a, mod), b)
    d = P.where(P.bitwise_and(P.ne(mod, 0.0), P.ne(P.lt(b, 0.0), P.lt(mod, 0.0))), P.sub(d, 1.0), d)
    fl = P.floor(d)
    fl = P.where(P.gt(P.sub(d, fl), 0.5), P.add(fl, 1.0), fl)
    out = P.where(P.eq(b, 0.0), q, P.where(P.ne(d, 0.0), fl, P.mul(q, 0.0)))
    return P.stop_gradient(out)


def _weak_if(*args_then_out):
    """out (last) is weak when every tensor operand is (a dynamic Python number's arithmetic)."""
    *args, out = args_then_out
    tensors = [a for a in args if not isinstance(a, SCALARS)]
    return mark_weak(out) if tensors and all(is_weak(a) for a in tensors) else out


@register(aten.floor_divide.default, aten.floor_divide.Scalar)
def _floor_divide(x, y):
    return _div_mode(x, y, "floor")


@register(aten.remainder.Tensor, aten.remainder.Scalar)
def _remainder(x, y):
    # Python-style modulo: x - floor(x / y) * y.
    dtype = result_type(x, y)
    operands = (x, y)
    x, y = prepare((x, y), dtype, broadcast_shapes(x, y))
    if not dtype.is_floating_point and dtype is not torch.bool:
        # a Python int is the tensor's dtype's value, as torch casts it: -1 is 255 for uint8
        # (whose remainder is then never "negative-divisor" corrected)
        x, y = (torch.tensor(v).to(dtype).item() if type(v) is int else v for v in (x, y))
    zero = 0.0 if dtype.is_floating_point else 0
    r = P.rem(x, y)
    y_neg = y < zero if isinstance(y, SCALARS) else P.lt(y, zero)   # a scalar divisor stays a literal
    fix = P.bitwise_and(P.ne(r, zero), P.ne(P.lt(r, zero), y_neg))
    return _weak_if(*operands, P.where(fix, P.add(r, y), r))


@register(aten.fmod.Tensor, aten.fmod.Scalar)
def _fmod(x, y):
    return elementwise(P.rem, x, _int_wrapped(x, y))


@register(aten.pow.Tensor_Tensor, aten.pow.Tensor_Scalar, aten.pow.Scalar)
def _pow(x, y):
    if isinstance(y, (int, float)) and not isinstance(y, bool) and result_type(x, y) is _t(x).dtype:
        if y == 1:
            return x
        if y == 2:
            return elementwise(P.mul, x, x)
        if y == 0.5 and _t(x).dtype.is_floating_point:
            return P.sqrt(x)
    base = _t(x).dtype if _t(x) is not None else (torch.int64 if isinstance(x, int) else torch.float64)
    if is_weak(y) and _t(y).dtype is torch.int64 and base not in (torch.float32, torch.float64):
        # torch refuses negative and unrepresentable int exponents of such bases by value;
        # a dynamic exponent's value is unknown, so it must be static (this raises under jit).
        concrete(y)
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


@register(aten.xlogy.Tensor, aten.xlogy.Scalar_Self, aten.xlogy.Scalar_Other)
def _xlogy(x, y):
    return elementwise(P.xlogy, x, y, kind=KIND.INT_TO_FLOAT)


def _int_wrapped(x, y):
    """y, a Python int beside an integer tensor x, as torch's binary kernels take it: cast to
    x's dtype, wrapping outside its range (x_u8 < 300 compares with 44). functx's generated
    code raised there ('value cannot be converted to type uint8_t') and its C++ compared in int."""
    if type(y) is int and not isinstance(x, SCALARS):
        dtype = _t(x).dtype
        if dtype in _INT_RANGE:
            lo, hi = _INT_RANGE[dtype]
            if not lo <= y <= hi:
                return (y - lo) % (hi - lo + 1) + lo
    return y


_INT_RANGE = {d: (torch.iinfo(d).min, torch.iinfo(d).max)
              for d in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)}

for _op, _fn in {aten.eq: P.eq, aten.ne: P.ne, aten.lt: P.lt, aten.le: P.le, aten.gt: P.gt, aten.ge: P.ge}.items():
    register(_op.Tensor, _op.Scalar)(
        (lambda fn: lambda x, y: elementwise(fn, x, _int_wrapped(x, y), kind=KIND.ALWAYS_BOOL))(_fn))


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
    register(_op.Tensor, _op.Scalar)((lambda fn: lambda x, y: elementwise(fn, x, _int_wrapped(x, y)))(_fn))


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
    # included), min's where x < min, max's where x > max; a NaN x propagates, with derivative 0.
    if min is not None:
        x = elementwise(lambda a, m: P.where(P.ge(a, m), a, _nan_or(a, m)), x, min)
    if max is not None:
        x = elementwise(lambda a, m: P.where(P.le(a, m), a, _nan_or(a, m)), x, max)
    return x


def _nan_or(a, bound):
    """a where a is NaN (as a constant: torch's clamp passes no derivative there), else bound."""
    return P.where(P.ne(a, a), P.stop_gradient(a), bound) if _t(a).dtype.is_floating_point else bound


@register(aten.clamp_min.default, aten.clamp_min.Tensor)
def _clamp_min(x, min):
    return _clamp(x, min=min)


@register(aten.clamp_max.default, aten.clamp_max.Tensor)
def _clamp_max(x, max):
    return _clamp(x, max=max)
