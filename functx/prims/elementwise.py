"""Elementwise primitives: unary math, binary arithmetic, comparisons, select, convert and
stop_gradient. Operands have equal shapes and dtypes; Python scalars (IR literals) are the
only operands broadcast implicitly.

A unary math primitive is one `defunary` line (impl, PyTorch spelling, Triton expression,
derivative); the others are one `Primitive(...)` block each, with defjvp / deflinear /
defbilinear for their derivatives.
"""
from __future__ import annotations

import math

import torch

from ..core import POINTWISE, Literal, Primitive, Zero, bind
from ..core.primitive import Unsupported
from ..core.trace import type_of
from .creation import full, zeros_like  # noqa: F401  (zeros_like is part of this module's lax API)
from .define import (cpp_float, defbilinear, defjvp, defjvp_zero, deflinear, is_undefined, libm,
                      unsupported_unless_float as float_only)
from .series import (s_add, s_apply, s_div, s_mul, s_scale, s_shift, taylor_linear, taylor_unary,
                      unary_series)
from .shape import bdim_to_front
from .util import SCALAR_TYPES, is_scalar, same_type_check


# ---------------------------------------------------------------- shared rules

def elementwise_type(name, out_dtype=None):
    def abstract_eval(*types, **params):
        t = same_type_check(name, types)
        return t if out_dtype is None else t.with_dtype(out_dtype)
    return abstract_eval


def defvectorized(prim):
    """The batch rule of an elementwise primitive: operands batched along one common dim
    stay where they are; otherwise every operand moves (or broadcasts) its batch dim to 0."""
    def rule(axis, args, dims, **params):
        common, mixed = None, False      # the one batch dim every tensor operand has, if any
        for a, d in zip(args, dims):
            if isinstance(a, SCALAR_TYPES):
                continue
            if d is None or (common is not None and d != common):
                mixed = True
                break
            common = d
        if not mixed and common is not None:
            return prim.bind(*args, **params), common
        moved = [a if is_scalar(a) else bdim_to_front(a, d, axis.size) for a, d in zip(args, dims)]
        return prim.bind(*moved, **params), 0
    prim.batch = rule
    return prim


def _tensor_first(impl):
    """torch's comparison/fmod/bitwise functions want a tensor first: a Python scalar first
    operand (an IR literal) becomes a 0-dim tensor of the other operand's dtype."""
    def wrapped(x, y, **params):
        if is_scalar(x) and not is_scalar(y):
            x = torch.scalar_tensor(x, dtype=y.dtype, device=y.device)
        return impl(x, y, **params)
    wrapped.tensor_first = impl     # generated code with a tensor first calls it directly
    return wrapped


def _tensors_only(torch_fn, scalar_fn=None):
    """torch.maximum/minimum/atan2 take tensors only: a Python scalar operand becomes a 0-dim
    tensor of the other operand's dtype; scalar_fn(x, s) handles x op s directly (clamp for
    max/min) when the scalar is on the right."""
    def impl(x, y):
        if is_scalar(y):
            if scalar_fn is not None:
                return scalar_fn(x, y)
            y = torch.scalar_tensor(y, dtype=x.dtype, device=x.device)
        elif is_scalar(x):
            x = torch.scalar_tensor(x, dtype=y.dtype, device=y.device)
        return torch_fn(x, y)
    return impl


# torch functions that take Python numbers in both operand positions; every other binary
# torch function gets a literal operand as a 0-dim tensor of the other operand's dtype.
_NUMBER_OK = {"torch.add", "torch.sub", "torch.mul", "torch.div", "torch.pow"}


def torch_call(fn_name):
    """emit rule: `fn_name(srcs...)`, literal operands wrapped where torch wants tensors."""
    def emit(eqn, srcs):
        if len(srcs) == 2 and fn_name not in _NUMBER_OK:
            lit = [isinstance(a, Literal) for a in eqn.inputs]
            if lit[0] != lit[1]:
                other = srcs[lit.index(False)]
                srcs = [f"torch.scalar_tensor({s}, dtype={other}.dtype, device={other}.device)" if is_lit
                        else s for s, is_lit in zip(srcs, lit)]
        return f"{fn_name}({', '.join(srcs)})"
    return emit


def defpointwise(name, impl, torch_name=None, *, nargs=1, out_dtype=None, triton=None, emit=None,
                 commutative=False, cpp=None):
    """A vectorized pointwise primitive (no derivative yet: add one with defjvp & co)."""
    p = Primitive(name, kind=POINTWISE, commutative=commutative, emit_broadcasts=nargs == 2,
                  abstract_eval=elementwise_type(name, out_dtype),
                  impl=_tensor_first(impl) if nargs == 2 else impl,
                  emit=emit or (torch_call(torch_name) if torch_name else None),
                  triton=triton, cpp=cpp)
    return defvectorized(p)


def defunary(name, impl, torch_name, triton=None, deriv=None, cpp=None):
    """A unary math primitive; deriv(x, y) -> dy/dx as primitives (y is the output)."""
    p = defpointwise(name, impl, torch_name, triton=triton, cpp=cpp)
    if deriv is not None:
        defjvp(p, lambda t, y, x: mul(t, deriv(x, y)))
    return p


def _unary(p):
    return lambda x: bind(p, (x,), {})


def _binary(p):
    return lambda x, y: bind(p, (x, y), {})


# ---------------------------------------------------------------- C++ lowerings needing dtypes
# (the fx_* helpers are defined in the CPU backend's kernel header, compile/cpu/cpp_ops.py)

def _cpp_bitwise_not(eqn):
    return "(!{0})" if eqn.outputs[0].type.dtype == torch.bool else "(~{0})"


def _cpp_pow(eqn):
    """torch computes x**2 and x**3 by multiplication and x**0.5 as sqrt; so do kernels."""
    y = eqn.inputs[1]
    if isinstance(y, Literal) and y.value in (2, 3) and not isinstance(y.value, bool):
        return "({0} * {0})" if y.value == 2 else "({0} * {0} * {0})"
    if isinstance(y, Literal) and y.value == 0.5:
        return libm("sqrt")(eqn)
    return libm("pow", 2)(eqn)


def _cpp_convert(eqn):
    """A C++ cast; to bool is `!= 0` (NaN is true, as in torch); float to int32/int64 through
    fx_to_i32/fx_to_i64 (cpp_ops.HELPERS: torch's result for NaN and out-of-range values)."""
    dtype = eqn.params["dtype"]
    if dtype == torch.bool:
        return "({0} != 0)"
    ctype = {torch.float32: "float", torch.float64: "double", torch.int32: "int32_t", torch.int64: "int64_t"}
    if dtype not in ctype:
        return Unsupported(f"convert to {dtype} has no C++ expression")
    source = eqn.inputs[0].type.dtype
    if source.is_floating_point and dtype in (torch.int32, torch.int64):
        return f"fx_to_i{32 if dtype == torch.int32 else 64}({{0}})"
    if dtype.is_floating_point and source in (torch.int32, torch.int64):
        # With -fno-trapping-math g++ folds float(int64(x)) into trunc(x), which keeps -0.0
        # (x = -0.5: trunc is -0.0, the integer 0 converts to +0.0, and y / it was +inf, not
        # -inf). It knows an int converts to no -0.0, so `+ 0.0` would be folded away too;
        # the select on the integer itself stays.
        zero = "0.0f" if dtype == torch.float32 else "0.0"
        return f"(({{0}}) == 0 ? {zero} : static_cast<{ctype[dtype]}>({{0}}))"
    return f"static_cast<{ctype[dtype]}>({{0}})"


# cos(x + 0) == cos(x) for every x (it only turns -0 into +0, and cos is even), but g++ then
# cannot merge sin(x) and cos(x) into one sincos call, which no loop vectorizes.
_CPP_COS = cpp_float("cosf({0} + 0.0f)", "cos({0} + 0.0)")


# ---------------------------------------------------------------- unary math

neg_p = defpointwise("neg", torch.neg, "torch.neg", triton="-{0}", cpp="(-{0})")
deflinear(neg_p, lambda ct, x: [neg(ct)])

exp_p = defunary("exp", torch.exp, "torch.exp", float_only("tl.exp({0})"), lambda x, y: y, cpp=libm("exp"))
exp2_p = defunary("exp2", torch.exp2, "torch.exp2", float_only("tl.exp2({0})"), lambda x, y: mul(y, math.log(2.0)), cpp=libm("exp2"))
log_p = defunary("log", torch.log, "torch.log", float_only("tl.log({0})"), lambda x, y: reciprocal(x), cpp=libm("log"))
log1p_p = defunary("log1p", torch.log1p, "torch.log1p", float_only("libdevice.log1p({0})"),
                   lambda x, y: reciprocal(add(x, 1.0)), cpp=libm("log1p"))
# expm1' = exp(x), not y + 1 (torch's formula), which cancels below x ~ -20: at -30 it was off
# by 1.7e-4 relative in float64 (finite differences decide)
expm1_p = defunary("expm1", torch.expm1, "torch.expm1", float_only("libdevice.expm1({0})"), lambda x, y: exp(x), cpp=libm("expm1"))
sin_p = defunary("sin", torch.sin, "torch.sin", float_only("tl.sin({0})"), lambda x, y: cos(x), cpp=libm("sin"))
cos_p = defunary("cos", torch.cos, "torch.cos", float_only("tl.cos({0})"), lambda x, y: neg(sin(x)), cpp=_CPP_COS)
tan_p = defunary("tan", torch.tan, "torch.tan", float_only("libdevice.tan({0})"), lambda x, y: add(mul(y, y), 1.0), cpp=libm("tan"))
tanh_p = defunary("tanh", torch.tanh, "torch.tanh", float_only("libdevice.tanh({0})"),
                  lambda x, y: sub(1.0, mul(y, y)), cpp=cpp_float("fx_tanhf({0})", "tanh({0})"))
asin_p = defunary("asin", torch.asin, "torch.asin", float_only("libdevice.asin({0})"),
                  lambda x, y: rsqrt(sub(1.0, mul(x, x))), cpp=libm("asin"))
acos_p = defunary("acos", torch.acos, "torch.acos", float_only("libdevice.acos({0})"),
                  lambda x, y: neg(rsqrt(sub(1.0, mul(x, x)))), cpp=libm("acos"))
atan_p = defunary("atan", torch.atan, "torch.atan", float_only("libdevice.atan({0})"),
                  lambda x, y: reciprocal(add(mul(x, x), 1.0)), cpp=libm("atan"))
sinh_p = defunary("sinh", torch.sinh, "torch.sinh", float_only("libdevice.sinh({0})"), lambda x, y: cosh(x), cpp=libm("sinh"))
cosh_p = defunary("cosh", torch.cosh, "torch.cosh", float_only("libdevice.cosh({0})"), lambda x, y: sinh(x), cpp=libm("cosh"))
asinh_p = defunary("asinh", torch.asinh, "torch.asinh", float_only("libdevice.asinh({0})"),
                   lambda x, y: rsqrt(add(mul(x, x), 1.0)), cpp=libm("asinh"))
acosh_p = defunary("acosh", torch.acosh, "torch.acosh", float_only("libdevice.acosh({0})"),
                   lambda x, y: rsqrt(sub(mul(x, x), 1.0)), cpp=libm("acosh"))
atanh_p = defunary("atanh", torch.atanh, "torch.atanh", float_only("libdevice.atanh({0})"),
                   lambda x, y: reciprocal(sub(1.0, mul(x, x))), cpp=libm("atanh"))
sqrt_p = defunary("sqrt", torch.sqrt, "torch.sqrt", float_only("tl.sqrt({0})"), lambda x, y: div(0.5, y), cpp=libm("sqrt"))
rsqrt_p = defunary("rsqrt", torch.rsqrt, "torch.rsqrt", float_only("libdevice.rsqrt({0})"),
                   cpp=cpp_float("(1.0f / sqrtf({0}))", "(1.0 / sqrt({0}))"))
# (t / x) * (-y / 2), not t * (y / x * -1/2): y / x = x^-1.5 underflows float32 to subnormals
# for x > ~1e25 (layer_norm of inputs ~1e13 lost every digit of its gradient)
defjvp(rsqrt_p, lambda t, y, x: mul(div(t, x), mul(y, -0.5)))
abs_p = defunary("abs", torch.abs, "torch.abs", "tl.abs({0})", lambda x, y: sign(x), cpp="fx_abs({0})")
logistic_p = defunary("logistic", torch.sigmoid, "torch.sigmoid", float_only("tl.sigmoid({0})"),
                      lambda x, y: mul(y, sub(1.0, y)), cpp=cpp_float("(1.0f / (1.0f + expf(-{0})))", "(1.0 / (1.0 + exp(-{0})))"))
erf_p = defunary("erf", torch.erf, "torch.erf", float_only("libdevice.erf({0})"),
                 lambda x, y: mul(exp(neg(mul(x, x))), 2.0 / math.sqrt(math.pi)), cpp=libm("erf"))
# erfc and erfcx as primitives, not 1 - erf(x) and exp(x^2) erfc(x): those lose every digit
# where the function is small (erfc(10) = 2e-45 became 0) or overflow (erfcx(30)).
erfc_p = defunary("erfc", torch.erfc, "torch.erfc", float_only("libdevice.erfc({0})"),
                  lambda x, y: mul(exp(neg(mul(x, x))), -2.0 / math.sqrt(math.pi)), cpp=libm("erfc"))
erfcx_p = defunary("erfcx", torch.special.erfcx, "torch.special.erfcx", float_only("libdevice.erfcx({0})"),
                   lambda x, y: sub(mul(mul(x, y), 2.0), 2.0 / math.sqrt(math.pi)))
# entr(x) = -x log x (0 at 0, -inf below 0, nan stays nan) as a primitive: its derivative is
# torch's -(log x + 1), +inf at 0 and nan below (the where-decomposition differentiated to
# nan at 0 and to 0 below).
entr_p = defunary("entr", torch.special.entr, "torch.special.entr",
                  float_only('tl.where({0} != {0}, {0}, tl.where({0} > 0, -{0} * tl.log({0}), '
                             'tl.where({0} == 0, 0.0, float("-inf"))))'),
                  lambda x, y: neg(add(log(x), 1.0)),
                  cpp=cpp_float("(({0}) != ({0}) ? ({0}) : ({0}) > 0.0f ? -({0}) * logf({0}) : "
                                "({0}) == 0.0f ? 0.0f : -INFINITY)",
                                "(({0}) != ({0}) ? ({0}) : ({0}) > 0.0 ? -({0}) * log({0}) : "
                                "({0}) == 0.0 ? 0.0 : -(double)INFINITY)"))
erfinv_p = defunary("erfinv", torch.erfinv, "torch.erfinv", float_only("libdevice.erfinv({0})"),
                    lambda x, y: mul(exp(mul(y, y)), math.sqrt(math.pi) / 2.0))
lgamma_p = defunary("lgamma", torch.lgamma, "torch.lgamma", float_only("libdevice.lgamma({0})"),
                    lambda x, y: digamma(x), cpp=cpp_float("fx_lgamma({0})", "fx_lgamma({0})"))
digamma_p = defunary("digamma", torch.digamma, "torch.digamma", None, lambda x, y: polygamma(x, 1))

# Piecewise-constant: zero derivative.
sign_p = defjvp_zero(defpointwise("sign", torch.sign, "torch.sign",
                                  triton="tl.where({0} > 0, 1, tl.where({0} < 0, -1, 0)).to({0}.dtype)", cpp=cpp_float("fx_sign({0})", "fx_sign({0})")))
floor_p = defjvp_zero(defpointwise("floor", torch.floor, "torch.floor", triton=float_only("tl.floor({0})"), cpp=libm("floor")))
ceil_p = defjvp_zero(defpointwise("ceil", torch.ceil, "torch.ceil", triton=float_only("tl.ceil({0})"), cpp=libm("ceil")))
round_p = defjvp_zero(defpointwise("round", torch.round, "torch.round", triton=float_only("libdevice.nearbyint({0})"), cpp=libm("nearbyint")))
trunc_p = defjvp_zero(defpointwise("trunc", torch.trunc, "torch.trunc", triton=float_only("libdevice.trunc({0})"), cpp=libm("trunc")))
logical_not_p = defjvp_zero(defpointwise("logical_not", torch.logical_not, "torch.logical_not",
                                         out_dtype=torch.bool, triton="({0} == 0)", cpp="({0} == 0)"))
bitwise_not_p = defjvp_zero(defpointwise("bitwise_not", torch.bitwise_not, "torch.bitwise_not", triton="~{0}", cpp=_cpp_bitwise_not))

# polygamma carries its order as a parameter.
polygamma_p = defvectorized(Primitive(
    "polygamma", kind=POINTWISE,
    abstract_eval=lambda t, *, n: t,
    impl=lambda x, *, n: torch.special.polygamma(n, x),
    emit=lambda eqn, srcs: f"torch.special.polygamma({eqn.params['n']}, {srcs[0]})"))
defjvp(polygamma_p, lambda t, y, x, *, n: mul(t, polygamma(x, n + 1)))

# torch.special's Bessel functions, the function's name a parameter. torch has no derivative
# for them (their results do not require grad: torch.func gives zero, autograd drops the
# term); these are the textbook recurrences, written with the same primitive to every order.
bessel_p = defvectorized(Primitive(
    "bessel", kind=POINTWISE,
    abstract_eval=lambda t, *, kind: t,
    impl=lambda x, *, kind: getattr(torch.special, kind)(x),
    emit=lambda eqn, srcs: f"torch.special.{eqn.params['kind']}({srcs[0]})"))


def _minus_over_x(x, a, b, at_zero):
    """a - b / x, and its limit at_zero where x = 0."""
    zero = eq(x, 0.0)
    safe = where(zero, full(type_of(x).shape, 1.0, type_of(x).dtype, type_of(x).device), x)
    return where(zero, full(type_of(x).shape, at_zero, type_of(x).dtype, type_of(x).device), sub(a, div(b, safe)))


_BESSEL_DERIVATIVES = {
    "bessel_j0": lambda x, y: neg(bessel(x, "bessel_j1")),
    "bessel_j1": lambda x, y: _minus_over_x(x, bessel(x, "bessel_j0"), y, 0.5),
    "bessel_y0": lambda x, y: neg(bessel(x, "bessel_y1")),
    "bessel_y1": lambda x, y: sub(bessel(x, "bessel_y0"), div(y, x)),
    "modified_bessel_i0": lambda x, y: bessel(x, "modified_bessel_i1"),
    "modified_bessel_i1": lambda x, y: _minus_over_x(x, bessel(x, "modified_bessel_i0"), y, 0.5),
    "modified_bessel_k0": lambda x, y: neg(bessel(x, "modified_bessel_k1")),
    "modified_bessel_k1": lambda x, y: neg(add(bessel(x, "modified_bessel_k0"), div(y, x))),
    "scaled_modified_bessel_k0": lambda x, y: sub(y, bessel(x, "scaled_modified_bessel_k1")),
    "scaled_modified_bessel_k1": lambda x, y: sub(sub(y, bessel(x, "scaled_modified_bessel_k0")), div(y, x)),
    # (sin x / x)' = (cos x - sin x / x) / x
    "spherical_bessel_j0": lambda x, y: _minus_over_x(x, full(type_of(x).shape, 0.0, type_of(x).dtype,
                                                              type_of(x).device), sub(y, cos(x)), 0.0),
}
defjvp(bessel_p, lambda t, y, x, *, kind: mul(t, _BESSEL_DERIVATIVES[kind](x, y)))


def bessel(x, kind):
    return bind(bessel_p, (x,), {"kind": kind})

neg, exp, exp2, log, log1p, expm1 = map(_unary, (neg_p, exp_p, exp2_p, log_p, log1p_p, expm1_p))
sin, cos, tan, tanh, asin, acos, atan = map(_unary, (sin_p, cos_p, tan_p, tanh_p, asin_p, acos_p, atan_p))
sinh, cosh, asinh, acosh, atanh = map(_unary, (sinh_p, cosh_p, asinh_p, acosh_p, atanh_p))
sqrt, rsqrt, abs_, logistic, erf, erfinv = map(_unary, (sqrt_p, rsqrt_p, abs_p, logistic_p, erf_p, erfinv_p))
erfc, erfcx, entr = map(_unary, (erfc_p, erfcx_p, entr_p))
lgamma, digamma, sign, floor, ceil, round_, trunc = map(
    _unary, (lgamma_p, digamma_p, sign_p, floor_p, ceil_p, round_p, trunc_p))
logical_not, bitwise_not = _unary(logical_not_p), _unary(bitwise_not_p)


def polygamma(x, n):
    return bind(polygamma_p, (x,), {"n": n})


def reciprocal(x):
    return div(1.0, x)


# Taylor rules of the unary math: the full series of g'(x) = h(x, y) from those of x and y
# (prims/series.py turns it into g's coefficients). h independent of y: computed once.
def _s_square(xs):
    return s_mul(xs, xs)


for _p, _h in [
        (exp_p, lambda xs, ys: ys),
        (exp2_p, lambda xs, ys: s_scale(ys, math.log(2.0))),
        (expm1_p, lambda xs, ys: s_shift(ys, 1.0)),
        (tan_p, lambda xs, ys: s_shift(_s_square(ys), 1.0)),
        (tanh_p, lambda xs, ys: s_shift(s_scale(_s_square(ys), -1.0), 1.0)),
        (sqrt_p, lambda xs, ys: s_div(0.5, ys)),
        (rsqrt_p, lambda xs, ys: s_scale(s_div(ys, xs), -0.5)),
        (logistic_p, lambda xs, ys: s_add(ys, s_scale(_s_square(ys), -1.0))),
        (erfcx_p, lambda xs, ys: s_shift(s_scale(s_mul(xs, ys), 2.0), -2.0 / math.sqrt(math.pi))),
        (erfinv_p, lambda xs, ys: s_scale(s_apply(exp_p, _s_square(ys)), math.sqrt(math.pi) / 2.0))]:
    taylor_unary(_p, _h)
for _p, _h in [
        (log_p, lambda xs, ys: s_div(1.0, xs)),
        (log1p_p, lambda xs, ys: s_div(1.0, s_shift(xs, 1.0))),
        (sin_p, lambda xs, ys: s_apply(cos_p, xs)),
        (cos_p, lambda xs, ys: s_scale(s_apply(sin_p, xs), -1.0)),
        (asin_p, lambda xs, ys: s_apply(rsqrt_p, s_shift(s_scale(_s_square(xs), -1.0), 1.0))),
        (acos_p, lambda xs, ys: s_scale(s_apply(rsqrt_p, s_shift(s_scale(_s_square(xs), -1.0), 1.0)), -1.0)),
        (atan_p, lambda xs, ys: s_div(1.0, s_shift(_s_square(xs), 1.0))),
        (sinh_p, lambda xs, ys: s_apply(cosh_p, xs)),
        (cosh_p, lambda xs, ys: s_apply(sinh_p, xs)),
        (asinh_p, lambda xs, ys: s_apply(rsqrt_p, s_shift(_s_square(xs), 1.0))),
        (acosh_p, lambda xs, ys: s_apply(rsqrt_p, s_shift(_s_square(xs), -1.0))),
        (atanh_p, lambda xs, ys: s_div(1.0, s_shift(s_scale(_s_square(xs), -1.0), 1.0))),
        (abs_p, lambda xs, ys: s_apply(sign_p, xs)),
        (erf_p, lambda xs, ys: s_scale(s_apply(exp_p, s_scale(_s_square(xs), -1.0)), 2.0 / math.sqrt(math.pi))),
        (erfc_p, lambda xs, ys: s_scale(s_apply(exp_p, s_scale(_s_square(xs), -1.0)), -2.0 / math.sqrt(math.pi))),
        (entr_p, lambda xs, ys: s_scale(s_shift(s_apply(log_p, xs), 1.0), -1.0)),
        (lgamma_p, lambda xs, ys: s_apply(digamma_p, xs)),
        (digamma_p, lambda xs, ys: s_apply(polygamma_p, xs, n=1)),
        (polygamma_p, lambda xs, ys, *, n: s_apply(polygamma_p, xs, n=n + 1))]:
    taylor_unary(_p, _h, uses_output=False)


# ---------------------------------------------------------------- binary arithmetic

add_p = defpointwise("add", torch.add, "torch.add", nargs=2, triton="({0} + {1})", commutative=True, cpp="({0} + {1})")
defjvp(add_p, lambda t, out, x, y: t, lambda t, out, x, y: t)
add_p.transpose = lambda ct, x, y: [ct if is_undefined(x) else None, ct if is_undefined(y) else None]

sub_p = defpointwise("sub", torch.sub, "torch.sub", nargs=2, triton="({0} - {1})", cpp="({0} - {1})")
defjvp(sub_p, lambda t, out, x, y: t, lambda t, out, x, y: neg(t))
sub_p.transpose = lambda ct, x, y: [ct if is_undefined(x) else None, neg(ct) if is_undefined(y) else None]
taylor_linear(add_p)
taylor_linear(sub_p)

mul_p = defpointwise("mul", torch.mul, "torch.mul", nargs=2, triton="({0} * {1})", commutative=True, cpp="({0} * {1})")
defbilinear(mul_p, lambda ct, x, y: mul(ct, y), lambda ct, x, y: mul(x, ct))
_bilinear_mul_jvp = mul_p.jvp


def _mul_jvp(primals, tangents):
    # x * x (x ** 2, an MSE's square): t*x + x*t is 2 (t*x), the same value (products commute,
    # doubling is exact), one product fewer, and its transpose one kernel fewer
    (x, y), (tx, ty) = primals, tangents
    if x is y and tx is ty and not isinstance(tx, Zero):
        return mul_p.bind(x, x), mul(mul(tx, x), 2.0)
    return _bilinear_mul_jvp(primals, tangents)


mul_p.jvp = _mul_jvp


def _div_transpose(ct, x, y):
    if is_undefined(y):
        raise ValueError("div is linear in its numerator only")
    return [div(ct, y), None]


def _integer_semantics_differ(template):
    """Triton's integer division and remainder follow C (truncation), torch's differ."""
    def lower(eqn):
        if eqn.outputs[0].type.dtype.is_floating_point:
            return template
        return Unsupported(f"integer {eqn.prim.name} (Triton's C semantics differ from torch's)")
    return lower


div_p = defpointwise("div", torch.div, "torch.div", nargs=2, triton=_integer_semantics_differ("({0} / {1})"), cpp=cpp_float("({0} / {1})", "({0} / {1})"))
defjvp(div_p, lambda t, out, x, y: div(t, y), lambda t, out, x, y: neg(mul(t, div(out, y))))
div_p.transpose = _div_transpose


def _div_taylor(primals, series):
    (x, y), (xs, ys) = primals, series
    if all(c is None for c in ys):          # linear in the numerator
        return div(x, y), [None if c is None else div(c, y) for c in xs]
    q = s_div(x if is_scalar(x) else [x] + list(xs), [y] + list(ys))
    return q[0], q[1:]


div_p.taylor = _div_taylor


def _pow_dx(t, out, x, y):
    # d/dx x^y = y * x^(y-1); written with where so that y == 0 gives 0, not nan.
    if is_scalar(y):
        return mul(t, mul(pow_(x, y - 1), y)) if y != 0 else Zero(type_of(out))
    dx = where(eq(y, 0.0), 0.0, mul(pow_(x, sub(y, 1.0)), y))
    return mul(t, dx)


def _pow_dy(t, out, x, y):
    # d/dy x^y = x^y log x, taken as 0 where x == 0 (the limit for y > 0).
    logx = log(where(eq(x, 0.0), 1.0, x)) if not is_scalar(x) else math.log(x) if x > 0 else 0.0
    return mul(t, mul(out, logx))


pow_p = defpointwise("pow", torch.pow, "torch.pow", nargs=2, triton=float_only("libdevice.pow({0}, {1})"), cpp=_cpp_pow)
defjvp(pow_p, _pow_dx, _pow_dy)


def _pow_series(xf, a):
    """The full series of x ** a for a Python number a: g' = a x^(a-1), the same rule one
    power lower, down to a == 0 (a constant)."""
    y = pow_(xf[0], a)
    if a == 0:
        return [y] + [None] * (len(xf) - 1)
    return [y] + unary_series(xf[0], xf[1:], y, lambda xs, ys: s_scale(_pow_series(xs, a - 1), a), False)


def _pow_taylor(primals, series):
    (x, a), (xs, as_) = primals, series
    if not is_scalar(a) or any(c is not None for c in as_):
        return NotImplemented         # a traced exponent: transforms/jet.py nests the jvp rule
    ys = _pow_series([x] + list(xs), a)
    return ys[0], ys[1:]


pow_p.taylor = _pow_taylor


def _minmax_emit(clamp, full_name):
    """x op literal as torch.clamp_min/clamp_max (relu for max(x, 0)), else torch.maximum."""
    def emit(eqn, srcs):
        x, y = eqn.inputs
        if isinstance(y, Literal):
            if clamp == "clamp_min" and y.value == 0 and not isinstance(y.value, bool):
                return f"torch.relu({srcs[0]})"
            return f"torch.{clamp}({srcs[0]}, {srcs[1]})"
        if isinstance(x, Literal):
            return f"torch.{clamp}({srcs[1]}, {srcs[0]})"
        return f"torch.{full_name}({srcs[0]}, {srcs[1]})"
    return emit


def _minmax_jvp(op, pick_first_when):
    def jvp(primals, tangents):
        x, y = primals
        tx, ty = (0.0 if isinstance(t, Zero) else t for t in tangents)
        out = op(x, y)
        # Ties split the tangent evenly, as JAX and torch do.
        t = where(pick_first_when(x, y), tx, ty)
        return out, where(eq(x, y), mul(add(tx, ty), 0.5), t)
    return jvp


def _nan_propagating(fn):
    """Triton's maximum/minimum drop NaN unless asked; torch's propagate it (floats)."""
    def lower(eqn):
        nan = eqn.outputs[0].type.dtype.is_floating_point
        return f"{fn}({{0}}, {{1}}{', propagate_nan=tl.PropagateNan.ALL' if nan else ''})"
    return lower


max_p = defpointwise("max", _tensors_only(torch.maximum, torch.clamp_min), nargs=2, commutative=True,
                     emit=_minmax_emit("clamp_min", "maximum"), triton=_nan_propagating("tl.maximum"), cpp="fx_max({0}, {1})")
max_p.jvp = _minmax_jvp(lambda x, y: max_(x, y), lambda x, y: gt(x, y))
min_p = defpointwise("min", _tensors_only(torch.minimum, torch.clamp_max), nargs=2, commutative=True,
                     emit=_minmax_emit("clamp_max", "minimum"), triton=_nan_propagating("tl.minimum"), cpp="fx_min({0}, {1})")
min_p.jvp = _minmax_jvp(lambda x, y: min_(x, y), lambda x, y: lt(x, y))


def _atan2_denominator(x, y):
    denom = add(mul(x, x), mul(y, y))
    # at (0, 0) the derivative is taken as 0, as torch does
    return denom if is_scalar(denom) else where(eq(denom, 0.0), 1.0, denom)


atan2_p = defpointwise("atan2", _tensors_only(torch.atan2), "torch.atan2", nargs=2,
                       triton=float_only("libdevice.atan2({0}, {1})"), cpp=libm("atan2", 2))
defjvp(atan2_p, lambda t, out, x, y: mul(t, div(y, _atan2_denominator(x, y))),
       lambda t, out, x, y: mul(t, neg(div(x, _atan2_denominator(x, y)))))

rem_p = defpointwise("rem", torch.fmod, "torch.fmod", nargs=2, triton=float_only("libdevice.fmod({0}, {1})"), cpp=libm("fmod", 2))
defjvp(rem_p, lambda t, out, x, y: t, lambda t, out, x, y: mul(t, neg(trunc(div(x, y)))))

# x * log(y), 0 where x == 0 (unless y is NaN). Its derivatives are torch's formulas, log(y)
# and x / y, also at x == 0 (a where-guarded composite would give 0 for the first).
xlogy_p = defpointwise("xlogy", torch.xlogy, "torch.xlogy", nargs=2,
                       triton=float_only("tl.where(({0} == 0) & ({1} == {1}), 0.0, {0} * tl.log({1}))"), cpp=cpp_float("fx_xlogy({0}, {1})", "fx_xlogy({0}, {1})"))
# x's part is xlogy(t, y), not t * log(y): 0 where t is 0, as torch's formula, so a zero
# cotangent (nan_to_num's where x*log(x) was nan) does not pick up the nan log of a
# negative y (finite differences agree: the function is constant there). xlogy is linear in
# x alone: its transpose there is itself.
defjvp(xlogy_p, lambda t, out, x, y: xlogy(t, y), lambda t, out, x, y: mul(t, div(x, y)))


def _xlogy_transpose(ct, x, y):
    if not is_undefined(x) or is_undefined(y):
        raise ValueError("xlogy is linear in its first operand only")
    return [xlogy(ct, y), None]


xlogy_p.transpose = _xlogy_transpose


# Integer division rounding toward zero / -inf (torch's rounding_mode), no derivative.
idiv_p = defjvp_zero(defvectorized(Primitive(
    "idiv", kind=POINTWISE, emit_broadcasts=True,
    abstract_eval=lambda x, y, *, mode: same_type_check("idiv", (x, y)),
    impl=_tensor_first(lambda x, y, *, mode: torch.div(x, y, rounding_mode=mode)),
    emit=lambda eqn, srcs: f"torch.div({srcs[0]}, {srcs[1]}, rounding_mode={eqn.params['mode']!r})")))

bitwise_and_p = defjvp_zero(defpointwise("bitwise_and", torch.bitwise_and, "torch.bitwise_and", nargs=2,
                                         triton="({0} & {1})", commutative=True, cpp="({0} & {1})"))
bitwise_or_p = defjvp_zero(defpointwise("bitwise_or", torch.bitwise_or, "torch.bitwise_or", nargs=2,
                                        triton="({0} | {1})", commutative=True, cpp="({0} | {1})"))
bitwise_xor_p = defjvp_zero(defpointwise("bitwise_xor", torch.bitwise_xor, "torch.bitwise_xor", nargs=2,
                                         triton="({0} ^ {1})", commutative=True, cpp="({0} ^ {1})"))

add, sub, mul, div, pow_, max_, min_, atan2, rem, xlogy = map(
    _binary, (add_p, sub_p, mul_p, div_p, pow_p, max_p, min_p, atan2_p, rem_p, xlogy_p))
bitwise_and, bitwise_or, bitwise_xor = map(_binary, (bitwise_and_p, bitwise_or_p, bitwise_xor_p))


def idiv(x, y, mode):
    return bind(idiv_p, (x, y), {"mode": mode})


# ---------------------------------------------------------------- comparisons

def _compare(name, fn, op, commutative=False):
    return defjvp_zero(defpointwise(name, fn, f"torch.{name}", nargs=2, out_dtype=torch.bool,
                                    triton=f"({{0}} {op} {{1}})", cpp=f"({{0}} {op} {{1}})",
                                    commutative=commutative))


eq_p = _compare("eq", torch.eq, "==", commutative=True)
ne_p = _compare("ne", torch.ne, "!=", commutative=True)
lt_p = _compare("lt", torch.lt, "<")
le_p = _compare("le", torch.le, "<=")
gt_p = _compare("gt", torch.gt, ">")
ge_p = _compare("ge", torch.ge, ">=")
eq, ne, lt, le, gt, ge = map(_binary, (eq_p, ne_p, lt_p, le_p, gt_p, ge_p))


# ---------------------------------------------------------------- select

def _where_type(pred, x, y):
    t = same_type_check("where", (x, y))
    if not is_scalar(pred) and (pred.dtype != torch.bool or pred.shape != t.shape):
        raise TypeError(f"where: predicate must be bool{list(t.shape)}, got {pred}")
    return t


def _where_transpose(ct, pred, x, y):
    zeros = zeros_like(ct)
    return [None,
            where(pred, ct, zeros) if is_undefined(x) else None,
            where(pred, zeros, ct) if is_undefined(y) else None]


where_p = defvectorized(Primitive(
    "where", kind=POINTWISE, emit_broadcasts=True,
    abstract_eval=_where_type,
    impl=lambda pred, x, y: torch.where(pred, x, y),
    transpose=_where_transpose,
    emit=torch_call("torch.where"),
    triton="tl.where({0}, {1}, {2})", cpp="({0} ? {1} : {2})"))


def _where_jvp(primals, tangents):
    pred, x, y = primals
    _, tx, ty = tangents
    out = where(pred, x, y)
    if isinstance(tx, Zero) and isinstance(ty, Zero):
        return out, Zero(type_of(out))
    return out, where(pred, 0.0 if isinstance(tx, Zero) else tx, 0.0 if isinstance(ty, Zero) else ty)


where_p.jvp = _where_jvp
taylor_linear(where_p, fixed=(0,))      # the branch the primal predicate picks, per coefficient


def where(pred, x, y):
    if is_scalar(x) and is_scalar(y):
        t = type_of(pred)
        dtype = torch.get_default_dtype() if isinstance(x, float) or isinstance(y, float) else torch.int64
        x = full(t.shape, x, dtype, t.device)
    return bind(where_p, (pred, x, y), {})


# ---------------------------------------------------------------- convert, stop_gradient

def _convert_jvp(primals, tangents, *, dtype):
    (x,), (t,) = primals, tangents
    out = convert(x, dtype)
    if not (dtype.is_floating_point or dtype.is_complex):
        return out, Zero(type_of(out))
    return out, convert(t, dtype)


def _convert_taylor(primals, series, *, dtype):
    (x,), (xs,) = primals, series
    keep = dtype.is_floating_point or dtype.is_complex
    return convert(x, dtype), [convert(c, dtype) if keep and c is not None else None for c in xs]


# (Kernels round half types and booleans specially: the Triton ops handler lowers converts.)
convert_p = Primitive(
    "convert_element_type", kind=POINTWISE,
    abstract_eval=lambda t, *, dtype: t.with_dtype(dtype),
    impl=lambda x, *, dtype: x.to(dtype),
    jvp=_convert_jvp,
    taylor=_convert_taylor,
    transpose=lambda ct, x, *, dtype: [convert(ct, x.aval.dtype)],
    batch=lambda axis, args, dims, *, dtype: (convert(args[0], dtype), dims[0]),
    emit=lambda eqn, srcs: f"{srcs[0]}.to({eqn.params['dtype']})",
    triton="{0}.to({dtype})", cpp=_cpp_convert)


def convert(x, dtype):
    if type_of(x).dtype == dtype:
        return x
    return bind(convert_p, (x,), {"dtype": dtype})


stop_gradient_p = defjvp_zero(Primitive(
    "stop_gradient", kind=POINTWISE,
    abstract_eval=lambda t: t,
    # a closed-over parameter's torch autograd history stops here too (x.detach() of a value
    # computed from one, inside an eager transform); other values pass as they are
    impl=lambda x: x.detach() if x.requires_grad else x,
    batch=lambda axis, args, dims: (stop_gradient(args[0]), dims[0]),
    emit=lambda eqn, srcs: f"{srcs[0]}.detach()",      # (generated rules run with torch's autograd on
    triton="{0}", cpp="{0}"))                           # for operands that require grad)


def stop_gradient(x):
    return bind(stop_gradient_p, (x,), {})
