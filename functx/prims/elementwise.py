"""Elementwise primitives: unary math, binary arithmetic, comparisons, select, convert,
and the nullary constants (full, iota). Operands have equal shapes and dtypes; Python
scalars are the only operands broadcast implicitly.

Each primitive is one `defunary` / `defbinary` line (impl, derivative, Triton expression);
linear ones carry a transpose rule.
"""
from __future__ import annotations

import math

import torch

from ..core import POINTWISE, Primitive, TensorType, Zero, bind
from ..core.trace import UndefinedPrimal, type_of
from .util import bdim_to_front, is_scalar, same_type_check


# ---------------------------------------------------------------- shared rules

def elementwise_type(name, out_dtype=None):
    def abstract_eval(*types, **params):
        t = same_type_check(name, types)
        return t if out_dtype is None else t.with_dtype(out_dtype)
    return abstract_eval


def elementwise_batch(prim):
    def rule(axis, args, dims, **params):
        tensor_dims = {d for a, d in zip(args, dims) if not is_scalar(a)}
        if len(tensor_dims) == 1 and None not in tensor_dims:
            return prim.bind(*args, **params), tensor_dims.pop()
        moved = [a if is_scalar(a) else bdim_to_front(a, d, axis.size) for a, d in zip(args, dims)]
        return prim.bind(*moved, **params), 0
    return rule


def _is_literal_src(src: str) -> bool:
    """Whether an emitted operand is a Python literal (an IR Literal) rather than a name."""
    import ast
    if src.lstrip("-").startswith("math."):
        return True
    try:
        ast.literal_eval(src)
        return True
    except (ValueError, SyntaxError):
        return False


# torch functions that take Python numbers in both operand positions; every other binary
# torch function gets a literal operand as a 0-dim tensor of the other operand's dtype.
_NUMBER_OK = {"torch.add", "torch.sub", "torch.mul", "torch.div", "torch.pow"}


def _torch_emit(fn_name):
    def emit(srcs, params):
        if len(srcs) == 2 and fn_name not in _NUMBER_OK:
            lit = [_is_literal_src(s) for s in srcs]
            if lit[0] != lit[1]:
                other = srcs[lit.index(False)]
                srcs = [f"torch.scalar_tensor({s}, dtype={other}.dtype, device={other}.device)" if is_lit
                        else s for s, is_lit in zip(srcs, lit)]
        return f"{fn_name}({', '.join(srcs)})"
    return emit


def _scalar_first_operand(impl):
    """torch's comparison/fmod/bitwise functions want a tensor first: a Python scalar first
    operand (an IR literal) becomes a 0-dim tensor of the other operand's dtype."""
    def wrapped(x, y, **params):
        if is_scalar(x) and not is_scalar(y):
            x = torch.scalar_tensor(x, dtype=y.dtype, device=y.device)
        return impl(x, y, **params)
    return wrapped


def _define(name, impl, nargs, *, out_dtype=None, torch_name=None, triton=None):
    p = Primitive(name)
    p.kind = POINTWISE
    p.abstract_eval = elementwise_type(name, out_dtype)
    p.impl = _scalar_first_operand(impl) if nargs == 2 else impl
    p.batch = elementwise_batch(p)
    p.triton = triton
    if torch_name:
        p.emit = _torch_emit(torch_name)
    p.nargs = nargs
    return p


def defunary(name, torch_fn, deriv=None, *, triton=None, torch_name=None, zero_deriv=False):
    """deriv(x, y) -> dy/dx as primitives; zero_deriv for piecewise-constant functions."""
    p = _define(name, torch_fn, 1, torch_name=torch_name, triton=triton)
    if deriv is not None:
        def jvp(primals, tangents):
            (x,), (t,) = primals, tangents
            y = p.bind(x)
            return y, mul(t, deriv(x, y))
        p.jvp = jvp
    elif zero_deriv:
        p.jvp = lambda primals, tangents: (p.bind(*primals), Zero(type_of(primals[0])))
    return p


def _unary(p):
    return lambda x: bind(p, (x,), {})


def _binary(p):
    return lambda x, y: bind(p, (x, y), {})


# ---------------------------------------------------------------- unary math

neg_p = defunary("neg", torch.neg, torch_name="torch.neg", triton="-{0}")
neg_p.jvp = lambda primals, tangents: (neg(primals[0]), neg(tangents[0]))
neg_p.transpose = lambda ct, x: [neg(ct)]

exp_p = defunary("exp", torch.exp, lambda x, y: y, torch_name="torch.exp", triton="tl.exp({0})")
exp2_p = defunary("exp2", torch.exp2, lambda x, y: mul(y, math.log(2.0)), torch_name="torch.exp2",
                  triton="tl.exp2({0})")
log_p = defunary("log", torch.log, lambda x, y: reciprocal(x), torch_name="torch.log", triton="tl.log({0})")
log1p_p = defunary("log1p", torch.log1p, lambda x, y: reciprocal(add(x, 1.0)), torch_name="torch.log1p",
                   triton="libdevice.log1p({0})")
expm1_p = defunary("expm1", torch.expm1, lambda x, y: add(y, 1.0), torch_name="torch.expm1",
                   triton="libdevice.expm1({0})")
sin_p = defunary("sin", torch.sin, lambda x, y: cos(x), torch_name="torch.sin", triton="tl.sin({0})")
cos_p = defunary("cos", torch.cos, lambda x, y: neg(sin(x)), torch_name="torch.cos", triton="tl.cos({0})")
tan_p = defunary("tan", torch.tan, lambda x, y: add(mul(y, y), 1.0), torch_name="torch.tan",
                 triton="libdevice.tan({0})")
tanh_p = defunary("tanh", torch.tanh, lambda x, y: sub(1.0, mul(y, y)), torch_name="torch.tanh",
                  triton="libdevice.tanh({0})")
asin_p = defunary("asin", torch.asin, lambda x, y: rsqrt(sub(1.0, mul(x, x))), torch_name="torch.asin",
                  triton="libdevice.asin({0})")
acos_p = defunary("acos", torch.acos, lambda x, y: neg(rsqrt(sub(1.0, mul(x, x)))),
                  torch_name="torch.acos", triton="libdevice.acos({0})")
atan_p = defunary("atan", torch.atan, lambda x, y: reciprocal(add(mul(x, x), 1.0)),
                  torch_name="torch.atan", triton="libdevice.atan({0})")
sinh_p = defunary("sinh", torch.sinh, lambda x, y: cosh(x), torch_name="torch.sinh",
                  triton="libdevice.sinh({0})")
cosh_p = defunary("cosh", torch.cosh, lambda x, y: sinh(x), torch_name="torch.cosh",
                  triton="libdevice.cosh({0})")
asinh_p = defunary("asinh", torch.asinh, lambda x, y: rsqrt(add(mul(x, x), 1.0)),
                   torch_name="torch.asinh", triton="libdevice.asinh({0})")
acosh_p = defunary("acosh", torch.acosh, lambda x, y: rsqrt(sub(mul(x, x), 1.0)),
                   torch_name="torch.acosh", triton="libdevice.acosh({0})")
atanh_p = defunary("atanh", torch.atanh, lambda x, y: reciprocal(sub(1.0, mul(x, x))),
                   torch_name="torch.atanh", triton="libdevice.atanh({0})")
sqrt_p = defunary("sqrt", torch.sqrt, lambda x, y: div(0.5, y), torch_name="torch.sqrt",
                  triton="tl.sqrt({0})")
rsqrt_p = defunary("rsqrt", torch.rsqrt, lambda x, y: mul(div(y, x), -0.5), torch_name="torch.rsqrt",
                   triton="libdevice.rsqrt({0})")
abs_p = defunary("abs", torch.abs, lambda x, y: sign(x), torch_name="torch.abs", triton="tl.abs({0})")
logistic_p = defunary("logistic", torch.sigmoid, lambda x, y: mul(y, sub(1.0, y)),
                      torch_name="torch.sigmoid", triton="tl.sigmoid({0})")
erf_p = defunary("erf", torch.erf, lambda x, y: mul(exp(neg(mul(x, x))), 2.0 / math.sqrt(math.pi)),
                 torch_name="torch.erf", triton="libdevice.erf({0})")
erfinv_p = defunary("erfinv", torch.erfinv, lambda x, y: mul(exp(mul(y, y)), math.sqrt(math.pi) / 2.0),
                    torch_name="torch.erfinv", triton="libdevice.erfinv({0})")
lgamma_p = defunary("lgamma", torch.lgamma, lambda x, y: digamma(x), torch_name="torch.lgamma",
                    triton="libdevice.lgamma({0})")
digamma_p = defunary("digamma", torch.digamma, lambda x, y: polygamma(x, 1), torch_name="torch.digamma",
                     triton=None)
sign_p = defunary("sign", torch.sign, zero_deriv=True, torch_name="torch.sign",
                  triton="tl.where({0} > 0, 1, tl.where({0} < 0, -1, 0)).to({0}.dtype)")
floor_p = defunary("floor", torch.floor, zero_deriv=True, torch_name="torch.floor", triton="tl.floor({0})")
ceil_p = defunary("ceil", torch.ceil, zero_deriv=True, torch_name="torch.ceil", triton="tl.ceil({0})")
round_p = defunary("round", torch.round, zero_deriv=True, torch_name="torch.round",
                   triton="libdevice.nearbyint({0})")
trunc_p = defunary("trunc", torch.trunc, zero_deriv=True, torch_name="torch.trunc",
                   triton="libdevice.trunc({0})")
logical_not_p = defunary("logical_not", torch.logical_not, torch_name="torch.logical_not",
                         triton="({0} == 0)")
logical_not_p.abstract_eval = lambda t: t.with_dtype(torch.bool)
bitwise_not_p = defunary("bitwise_not", torch.bitwise_not, torch_name="torch.bitwise_not", triton="~{0}")

# polygamma carries its order as a parameter.
polygamma_p = Primitive("polygamma")
polygamma_p.kind = POINTWISE
polygamma_p.abstract_eval = lambda t, *, n: t
polygamma_p.impl = lambda x, *, n: torch.special.polygamma(n, x)
polygamma_p.emit = lambda srcs, params: f"torch.special.polygamma({params['n']}, {srcs[0]})"
polygamma_p.jvp = lambda primals, tangents, *, n: (polygamma(primals[0], n),
                                                   mul(tangents[0], polygamma(primals[0], n + 1)))
polygamma_p.batch = elementwise_batch(polygamma_p)

neg, exp, exp2, log, log1p, expm1 = map(_unary, (neg_p, exp_p, exp2_p, log_p, log1p_p, expm1_p))
sin, cos, tan, tanh, asin, acos, atan = map(_unary, (sin_p, cos_p, tan_p, tanh_p, asin_p, acos_p, atan_p))
sinh, cosh, asinh, acosh, atanh = map(_unary, (sinh_p, cosh_p, asinh_p, acosh_p, atanh_p))
sqrt, rsqrt, abs_, logistic, erf, erfinv = map(_unary, (sqrt_p, rsqrt_p, abs_p, logistic_p, erf_p, erfinv_p))
lgamma, digamma, sign, floor, ceil, round_, trunc = map(
    _unary, (lgamma_p, digamma_p, sign_p, floor_p, ceil_p, round_p, trunc_p))
logical_not, bitwise_not = _unary(logical_not_p), _unary(bitwise_not_p)


def polygamma(x, n):
    return bind(polygamma_p, (x,), {"n": n})


def reciprocal(x):
    return div(1.0, x)


# ---------------------------------------------------------------- binary arithmetic

add_p = _define("add", torch.add, 2, torch_name="torch.add", triton="({0} + {1})")
sub_p = _define("sub", torch.sub, 2, torch_name="torch.sub", triton="({0} - {1})")
mul_p = _define("mul", torch.mul, 2, torch_name="torch.mul", triton="({0} * {1})")
div_p = _define("div", torch.div, 2, torch_name="torch.div", triton="({0} / {1})")
pow_p = _define("pow", torch.pow, 2, torch_name="torch.pow", triton="libdevice.pow({0}, {1})")
def _scalar_operands(torch_fn, scalar_fn=None):
    """torch.maximum/minimum/atan2 take tensors only: a Python scalar operand (an IR literal)
    becomes a 0-dim tensor of the other operand's dtype; scalar_fn(x, s) handles x op s
    directly (clamp for max/min) when the scalar is on the right."""
    def impl(x, y):
        if is_scalar(y):
            if scalar_fn is not None:
                return scalar_fn(x, y)
            y = torch.scalar_tensor(y, dtype=x.dtype, device=x.device)
        elif is_scalar(x):
            x = torch.scalar_tensor(x, dtype=y.dtype, device=y.device)
        return torch_fn(x, y)
    return impl


max_p = _define("max", _scalar_operands(torch.maximum, torch.clamp_min), 2, torch_name="torch.maximum",
                triton="tl.maximum({0}, {1})")
min_p = _define("min", _scalar_operands(torch.minimum, torch.clamp_max), 2, torch_name="torch.minimum",
                triton="tl.minimum({0}, {1})")
atan2_p = _define("atan2", _scalar_operands(torch.atan2), 2, torch_name="torch.atan2",
                  triton="libdevice.atan2({0}, {1})")


def _scalar_operands_emit(torch_name, scalar_name=None):
    """The emitted-source twin of _scalar_operands (generated code gets literals inline)."""
    def emit(srcs, params):
        x, y = srcs
        if _is_literal_src(y):
            if scalar_name is not None:
                return f"{scalar_name}({x}, {y})"
            return f"{torch_name}({x}, torch.scalar_tensor({y}, dtype={x}.dtype, device={x}.device))"
        if _is_literal_src(x):
            return f"{torch_name}(torch.scalar_tensor({x}, dtype={y}.dtype, device={y}.device), {y})"
        return f"{torch_name}({x}, {y})"
    return emit


max_p.emit = _scalar_operands_emit("torch.maximum", "torch.clamp_min")
min_p.emit = _scalar_operands_emit("torch.minimum", "torch.clamp_max")
atan2_p.emit = _scalar_operands_emit("torch.atan2")
rem_p = _define("rem", torch.fmod, 2, torch_name="torch.fmod", triton="libdevice.fmod({0}, {1})")
# Integer division rounding toward zero / -inf (torch's rounding_mode), no derivative.
idiv_p = _define("idiv", lambda x, y, *, mode: torch.div(x, y, rounding_mode=mode), 2)
idiv_p.abstract_eval = lambda x, y, *, mode: same_type_check("idiv", (x, y))
idiv_p.emit = lambda srcs, params: f"torch.div({srcs[0]}, {srcs[1]}, rounding_mode={params['mode']!r})"
bitwise_and_p = _define("bitwise_and", torch.bitwise_and, 2, torch_name="torch.bitwise_and",
                        triton="({0} & {1})")
bitwise_or_p = _define("bitwise_or", torch.bitwise_or, 2, torch_name="torch.bitwise_or", triton="({0} | {1})")
bitwise_xor_p = _define("bitwise_xor", torch.bitwise_xor, 2, torch_name="torch.bitwise_xor",
                        triton="({0} ^ {1})")

for _p in (add_p, mul_p, max_p, min_p, bitwise_and_p, bitwise_or_p, bitwise_xor_p):
    _p.commutative = True

add, sub, mul, div, pow_, max_, min_, atan2, rem = map(
    _binary, (add_p, sub_p, mul_p, div_p, pow_p, max_p, min_p, atan2_p, rem_p))
bitwise_and, bitwise_or, bitwise_xor = map(_binary, (bitwise_and_p, bitwise_or_p, bitwise_xor_p))


def idiv(x, y, mode):
    return bind(idiv_p, (x, y), {"mode": mode})


def _add_jvp(primals, tangents):
    x, y = primals
    tx, ty = tangents
    out = add(x, y)
    if isinstance(tx, Zero):
        return out, ty
    if isinstance(ty, Zero):
        return out, tx
    return out, add(tx, ty)


def _sub_jvp(primals, tangents):
    x, y = primals
    tx, ty = tangents
    out = sub(x, y)
    if isinstance(ty, Zero):
        return out, tx
    if isinstance(tx, Zero):
        return out, neg(ty)
    return out, sub(tx, ty)


def _mul_jvp(primals, tangents):
    x, y = primals
    tx, ty = tangents
    out = mul(x, y)
    terms = [mul(tx, y)] if not isinstance(tx, Zero) else []
    if not isinstance(ty, Zero):
        terms.append(mul(x, ty))
    return out, terms[0] if len(terms) == 1 else add(*terms)


def _div_jvp(primals, tangents):
    x, y = primals
    tx, ty = tangents
    out = div(x, y)
    terms = [div(tx, y)] if not isinstance(tx, Zero) else []
    if not isinstance(ty, Zero):
        terms.append(neg(mul(ty, div(out, y))))
    return out, terms[0] if len(terms) == 1 else add(*terms)


def _pow_jvp(primals, tangents):
    x, y = primals
    tx, ty = tangents
    out = pow_(x, y)
    terms = []
    if not isinstance(tx, Zero):
        # d/dx x^y = y * x^(y-1); written with where so that y == 0 gives 0, not nan.
        if is_scalar(y):
            dx = mul(pow_(x, y - 1), y) if y != 0 else None
        else:
            safe = pow_(x, sub(y, 1.0))
            dx = mul(safe, y)
            dx = where(eq(y, 0.0), 0.0, dx)
        if dx is not None:
            terms.append(mul(tx, dx))
    if not isinstance(ty, Zero):
        # d/dy x^y = x^y log x, taken as 0 where x == 0 (the limit for y > 0).
        logx = (log(where(eq(x, 0.0), 1.0, x)) if not is_scalar(x)
                else math.log(x) if x > 0 else 0.0)
        terms.append(mul(ty, mul(out, logx)))
    if not terms:
        return out, Zero(type_of(out))
    return out, terms[0] if len(terms) == 1 else add(*terms)


def _minmax_jvp(op, pick_first_when):
    def jvp(primals, tangents):
        x, y = primals
        tx, ty = tangents
        out = op(x, y)
        # Ties split the tangent evenly, as JAX and torch do.
        tx, ty = _tangent_or_zero(tx, x, y), _tangent_or_zero(ty, y, x)
        take_x = pick_first_when(x, y)
        tie = eq(x, y)
        t = where(take_x, tx, ty)
        t = where(tie, mul(add(tx, ty), 0.5), t)
        return out, t
    return jvp


def _tangent_or_zero(t, x, other):
    if isinstance(t, Zero):
        return 0.0
    return t


def _atan2_jvp(primals, tangents):
    x, y = primals
    tx, ty = tangents
    out = atan2(x, y)
    denom = add(mul(x, x), mul(y, y))
    if not is_scalar(denom):   # at (0, 0) the derivative is taken as 0, as torch does
        denom = where(eq(denom, 0.0), 1.0, denom)
    terms = []
    if not isinstance(tx, Zero):
        terms.append(mul(tx, div(y, denom)))
    if not isinstance(ty, Zero):
        terms.append(mul(ty, neg(div(x, denom))))
    return out, terms[0] if len(terms) == 1 else add(*terms)


def _rem_jvp(primals, tangents):
    x, y = primals
    tx, ty = tangents
    out = rem(x, y)
    terms = [] if isinstance(tx, Zero) else [tx]
    if not isinstance(ty, Zero):
        terms.append(mul(ty, neg(trunc(div(x, y)))))
    return out, terms[0] if len(terms) == 1 else add(*terms)


add_p.jvp, sub_p.jvp, mul_p.jvp, div_p.jvp, pow_p.jvp = _add_jvp, _sub_jvp, _mul_jvp, _div_jvp, _pow_jvp
max_p.jvp = _minmax_jvp(max_, lambda x, y: gt(x, y))
min_p.jvp = _minmax_jvp(min_, lambda x, y: lt(x, y))
atan2_p.jvp, rem_p.jvp = _atan2_jvp, _rem_jvp
idiv_p.jvp = lambda primals, tangents, *, mode: (idiv(*primals, mode), Zero(_first_type(primals)))


def _first_type(args):
    return next(type_of(a) for a in args if not is_scalar(a))


def _undefined(x):
    return isinstance(x, UndefinedPrimal)


add_p.transpose = lambda ct, x, y: [ct if _undefined(x) else None, ct if _undefined(y) else None]
sub_p.transpose = lambda ct, x, y: [ct if _undefined(x) else None, neg(ct) if _undefined(y) else None]


def _mul_transpose(ct, x, y):
    if _undefined(x) and _undefined(y):
        raise ValueError("mul is not linear in both operands at once")
    return [mul(ct, y), None] if _undefined(x) else [None, mul(x, ct)]


def _div_transpose(ct, x, y):
    if _undefined(y):
        raise ValueError("div is linear in its numerator only")
    return [div(ct, y), None]


mul_p.transpose, div_p.transpose = _mul_transpose, _div_transpose


# ---------------------------------------------------------------- comparisons and select

def _compare(name, fn, torch_name, triton):
    p = _define(name, fn, 2, out_dtype=torch.bool, torch_name=torch_name, triton=triton)
    p.jvp = lambda primals, tangents: (p.bind(*primals), Zero(_first_type(primals).with_dtype(torch.bool)))
    return p


eq_p = _compare("eq", torch.eq, "torch.eq", "({0} == {1})")
ne_p = _compare("ne", torch.ne, "torch.ne", "({0} != {1})")
lt_p = _compare("lt", torch.lt, "torch.lt", "({0} < {1})")
le_p = _compare("le", torch.le, "torch.le", "({0} <= {1})")
gt_p = _compare("gt", torch.gt, "torch.gt", "({0} > {1})")
ge_p = _compare("ge", torch.ge, "torch.ge", "({0} >= {1})")
eq, ne, lt, le, gt, ge = map(_binary, (eq_p, ne_p, lt_p, le_p, gt_p, ge_p))
eq_p.commutative = ne_p.commutative = True

for _p in (bitwise_and_p, bitwise_or_p, bitwise_xor_p, bitwise_not_p, logical_not_p):
    _p.jvp = (lambda p: lambda primals, tangents: (p.bind(*primals), Zero(_first_type(primals))))(_p)
logical_not_p.jvp = lambda primals, tangents: (logical_not(primals[0]),
                                               Zero(type_of(primals[0]).with_dtype(torch.bool)))


def _where_type(pred, x, y):
    t = same_type_check("where", (x, y))
    if not is_scalar(pred) and (pred.dtype != torch.bool or pred.shape != t.shape):
        raise TypeError(f"where: predicate must be bool{list(t.shape)}, got {pred}")
    return t


def _where_impl(pred, x, y):
    return torch.where(pred, x, y)


where_p = Primitive("where")
where_p.kind = POINTWISE
where_p.abstract_eval = _where_type
where_p.impl = _where_impl
where_p.emit = _torch_emit("torch.where")
where_p.triton = "tl.where({0}, {1}, {2})"
where_p.batch = elementwise_batch(where_p)


def where(pred, x, y):
    if is_scalar(x) and is_scalar(y):
        t = type_of(pred)
        dtype = torch.get_default_dtype() if isinstance(x, float) or isinstance(y, float) else torch.int64
        x = full(t.shape, x, dtype, t.device)
    return bind(where_p, (pred, x, y), {})


def _where_jvp(primals, tangents):
    pred, x, y = primals
    _, tx, ty = tangents
    out = where(pred, x, y)
    if isinstance(tx, Zero) and isinstance(ty, Zero):
        return out, Zero(type_of(out))
    return out, where(pred, 0.0 if isinstance(tx, Zero) else tx, 0.0 if isinstance(ty, Zero) else ty)


def zeros_like(x):
    t = type_of(x)
    return full(t.shape, 0, t.dtype, t.device)


def _where_transpose(ct, pred, x, y):
    zeros = zeros_like(ct)
    return [None,
            where(pred, ct, zeros) if _undefined(x) else None,
            where(pred, zeros, ct) if _undefined(y) else None]


where_p.jvp = _where_jvp
where_p.transpose = _where_transpose


# ---------------------------------------------------------------- convert, stop_gradient

convert_p = Primitive("convert_element_type")
convert_p.kind = POINTWISE
convert_p.abstract_eval = lambda t, *, dtype: t.with_dtype(dtype)
convert_p.impl = lambda x, *, dtype: x.to(dtype)
convert_p.emit = lambda srcs, params: f"{srcs[0]}.to({params['dtype']})"
convert_p.triton = "{0}.to({dtype})"


def convert(x, dtype):
    if type_of(x).dtype == dtype:
        return x
    return bind(convert_p, (x,), {"dtype": dtype})


def _convert_jvp(primals, tangents, *, dtype):
    (x,), (t,) = primals, tangents
    out = convert(x, dtype)
    if not (dtype.is_floating_point or dtype.is_complex):
        return out, Zero(type_of(out))
    return out, convert(t, dtype)


convert_p.jvp = _convert_jvp
convert_p.transpose = lambda ct, x, *, dtype: [convert(ct, x.aval.dtype)]
convert_p.batch = lambda axis, args, dims, *, dtype: (convert(args[0], dtype), dims[0])

stop_gradient_p = Primitive("stop_gradient")
stop_gradient_p.kind = POINTWISE
stop_gradient_p.abstract_eval = lambda t: t
stop_gradient_p.impl = lambda x: x
stop_gradient_p.emit = lambda srcs, params: srcs[0]
stop_gradient_p.triton = "{0}"
stop_gradient_p.jvp = lambda primals, tangents: (stop_gradient(primals[0]), Zero(type_of(primals[0])))
stop_gradient_p.batch = lambda axis, args, dims: (stop_gradient(args[0]), dims[0])


def stop_gradient(x):
    return bind(stop_gradient_p, (x,), {})


# ---------------------------------------------------------------- constants

def _value_src(value) -> str:
    """Source for a Python scalar; inf and nan have no literal spelling."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    return repr(value)


full_p = Primitive("full")
full_p.kind = POINTWISE
full_p.abstract_eval = lambda *, shape, value, dtype, device: TensorType(tuple(shape), dtype, device)
full_p.impl = lambda *, shape, value, dtype, device: torch.full(shape, value, dtype=dtype, device=device)
full_p.emit = lambda srcs, p: (f"torch.full({p['shape']!r}, {_value_src(p['value'])}, dtype={p['dtype']}, "
                               f"device={str(p['device'])!r})")
full_p.triton = "{value!r}"


def full(shape, value, dtype, device):
    return bind(full_p, (), {"shape": tuple(shape), "value": value, "dtype": dtype,
                             "device": torch.device(device)})


iota_p = Primitive("iota")
iota_p.kind = POINTWISE
iota_p.abstract_eval = lambda *, shape, dim, dtype, device: TensorType(tuple(shape), dtype, device)


def _iota_impl(*, shape, dim, dtype, device):
    r = torch.arange(shape[dim], dtype=dtype, device=device)
    view = [1] * len(shape)
    view[dim] = shape[dim]
    return r.reshape(view).expand(shape)


iota_p.impl = _iota_impl


def iota(shape, dim, dtype, device):
    return bind(iota_p, (), {"shape": tuple(shape), "dim": dim, "dtype": dtype,
                             "device": torch.device(device)})
