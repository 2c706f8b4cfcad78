"""Definer helpers: a primitive's rules from a few declarative lines (JAX's ad.defjvp,
ad.deflinear, ad.defbilinear, batching.defvectorized).

They absorb symbolic zeros: a rule written with them never sees a Zero tangent it has to
special-case, and a tangent that is Zero in every term stays symbolic.
"""
from __future__ import annotations

import torch

from ..core.ir import Var
from ..core.primitive import REGISTRY, Unsupported
from ..core.trace import UndefinedPrimal, Zero, bind, type_of
from .creation import zeros_like_type
from .series import taylor_bilinear, taylor_linear, taylor_zero
from .util import is_scalar


def add_tangents(x, y):
    """x + y where either may be a symbolic Zero. (`add` is looked up by name when a rule
    runs: it is defined with these helpers, in elementwise.py, which imports this module.)"""
    if isinstance(x, Zero):
        return y
    if isinstance(y, Zero):
        return x
    return bind(REGISTRY["add"], (x, y), {})


def sum_terms(terms, out):
    """The sum of tangent contributions to `out`, a symbolic Zero when there are none."""
    if not terms:
        return Zero(type_of(out))
    total = terms[0]
    for term in terms[1:]:
        total = add_tangents(total, term)
    return total


def linear_first_jvp(prim, others=None):
    """The jvp rule of a primitive linear in its first operand: prim(dt, *rest) for that
    operand's tangent, plus others(primals, tangents, **params) for the rest's (others None,
    or returning None: their tangents contribute nothing)."""
    def jvp(primals, tangents, **params):
        out = prim.bind(*primals, **params)
        terms = [] if isinstance(tangents[0], Zero) else [prim.bind(tangents[0], *primals[1:], **params)]
        if others is not None and not all(isinstance(d, Zero) for d in tangents[1:]):
            term = others(primals, tangents, **params)
            if term is not None:
                terms.append(term)
        return out, sum_terms(terms, out)
    return jvp


def is_undefined(x) -> bool:
    return isinstance(x, UndefinedPrimal)


def defjvp(prim, *partials):
    """jvp from one rule per operand: partial(t, out, *primals, **params) -> the tangent
    contribution of operand i's tangent t (out is the primal output). A None partial marks
    an operand the primitive is not differentiable in (integer parameters, predicates)."""
    # One or two operands (most primitives) without the list of terms and their sum: eager
    # transforms run this once per primitive.
    if len(partials) == 1:
        (rule,) = partials

        def jvp(primals, tangents, **params):
            out = prim.bind(*primals, **params)
            t = tangents[0]
            if rule is None or isinstance(t, Zero):
                return out, Zero(type_of(out))
            return out, rule(t, out, *primals, **params)
    elif len(partials) == 2:
        rule0, rule1 = partials

        def jvp(primals, tangents, **params):
            out = prim.bind(*primals, **params)
            t0, t1 = tangents[0], tangents[1]
            a = None if rule0 is None or isinstance(t0, Zero) else rule0(t0, out, *primals, **params)
            b = None if rule1 is None or isinstance(t1, Zero) else rule1(t1, out, *primals, **params)
            if a is None:
                return out, (Zero(type_of(out)) if b is None else b)
            return out, (a if b is None else add_tangents(a, b))
    else:
        def jvp(primals, tangents, **params):
            out = prim.bind(*primals, **params)
            terms = [rule(t, out, *primals, **params)
                     for rule, t in zip(partials, tangents) if rule is not None and not isinstance(t, Zero)]
            return out, sum_terms(terms, out)
    prim.jvp = jvp
    return prim


def defjvp_zero(prim):
    """Piecewise-constant or integer-valued: the tangent is always zero."""
    def jvp(primals, tangents, **params):
        out = prim.bind(*primals, **params)
        return out, (Zero(type_of(out)) if not prim.multiple_results else [Zero(type_of(o)) for o in out])
    prim.jvp = jvp
    return taylor_zero(prim)


def deflinear(prim, transpose):
    """A primitive linear in all its tensor operands: its jvp applies it to the tangents
    (Zero tangents instantiated only when some other operand's tangent is not Zero)."""
    def jvp(primals, tangents, **params):
        out = prim.bind(*primals, **params)
        live = [t for t in tangents if not isinstance(t, Zero)]
        if not live:
            return out, Zero(type_of(out))
        ts = [_zeros_of(t, p) if isinstance(t, Zero) else t for t, p in zip(tangents, primals)]
        return out, prim.bind(*ts, **params)
    prim.jvp = jvp
    prim.transpose = transpose
    return taylor_linear(prim)


def _zeros_of(t, primal):
    if is_scalar(primal):
        return 0
    return zeros_like_type(t.aval if t.aval is not None else type_of(primal))


def defbilinear(prim, lhs_transpose, rhs_transpose):
    """A primitive linear in each of its two operands separately (mul, dot_general, conv):
    d(x*y) = dx*y + x*dy, and the transpose for whichever operand is the linear input.
    lhs_transpose(ct, x, y, **params) -> cotangent of x (x undefined), rhs likewise for y."""
    def jvp(primals, tangents, **params):
        x, y = primals
        tx, ty = tangents
        out = prim.bind(x, y, **params)
        terms = []
        if not isinstance(tx, Zero):
            terms.append(prim.bind(tx, y, **params))
        if not isinstance(ty, Zero):
            terms.append(prim.bind(x, ty, **params))
        return out, sum_terms(terms, out)

    def transpose(ct, x, y, **params):
        if isinstance(x, UndefinedPrimal):
            if isinstance(y, UndefinedPrimal):
                raise ValueError(f"{prim.name} is not linear in both operands at once")
            return [lhs_transpose(ct, x, y, **params), None]
        return [None, rhs_transpose(ct, x, y, **params)]
    prim.jvp = jvp
    prim.transpose = transpose
    return taylor_bilinear(prim)


def unsupported_unless_float(template):
    """A Triton template valid for floating operands only (libdevice and the transcendental
    tl.* functions have no integer forms)."""
    def lower(eqn):
        dtypes = [a.type.dtype for a in eqn.inputs if isinstance(a, Var)]
        if all(d.is_floating_point for d in dtypes):
            return template
        return Unsupported(f"{eqn.prim.name} on {dtypes[0]} (its Triton expression is float-only)")
    return lower


def cpp_float(f32, f64):
    """A C++ template for floating operands only: f32 for float32 (float math with the
    f-suffixed libm functions, as torch computes float32 in float), f64 for float64."""
    def lower(eqn):
        dtypes = {a.type.dtype for a in eqn.inputs if isinstance(a, Var)}
        if dtypes == {torch.float32}:
            return f32
        if dtypes == {torch.float64}:
            return f64
        return Unsupported(f"{eqn.prim.name} on {', '.join(sorted(map(str, dtypes)))} "
                           "(its C++ expression is float32/float64 only)")
    return lower


def libm(name, nargs=1):
    """The C math library's `name` (sinf on float32, sin on float64)."""
    args = ", ".join(f"{{{i}}}" for i in range(nargs))
    return cpp_float(f"{name}f({args})", f"{name}({args})")
