"""Truncated Taylor series arithmetic and the Taylor-rule definers (JAX's jet rules).

A primitive's `taylor` rule is `taylor(primals, series, **params) -> (out, out_series)`:
`series[i]` holds the K higher coefficients of operand i and `out_series` those of the
output (a list per output for multiple results). Coefficients follow JAX's jet convention:
x(t) = x0 + sum_k x_k t^k / k!, so x_k is the k-th derivative along the path, and the
product rule is Leibniz's, z_k = sum_j C(k, j) x_j y_{k-j}. A zero coefficient is None.
A rule may return NotImplemented for a case it does not cover; transforms/jet.py then
derives the coefficients by nesting the primitive's jvp rule (as it does with no rule).

A "full series" below is the list [c0, c1, ..., cK] (c0 the primal). The arithmetic looks
`add`/`mul`/`div` up by name when it runs: they are defined in elementwise.py, which uses
these definers (define.add_tangents does the same).
"""
from __future__ import annotations

import math

from ..core.primitive import REGISTRY
from ..core.trace import bind, type_of
from .creation import zeros_like_type
from .util import is_scalar


def _op(name, *args):
    return bind(REGISTRY[name], args, {})


def add_terms(terms):
    """The sum of the non-None terms; None when there are none."""
    live = [t for t in terms if t is not None]
    if not live:
        return None
    total = live[0]
    for t in live[1:]:
        total = _op("add", total, t)
    return total


def scale(x, c):
    return x if c == 1 else _op("mul", x, c)


def cauchy(a, b, k, product=None):
    """Coefficient k of the product of full series a and b (Leibniz's rule); product(x, y)
    is the bilinear operation (default: elementwise mul)."""
    product = product or (lambda x, y: _op("mul", x, y))
    return add_terms([scale(product(a[j], b[k - j]), math.comb(k, j))
                      for j in range(k + 1) if a[j] is not None and b[k - j] is not None])


def s_mul(a, b):
    return [cauchy(a, b, k) for k in range(len(a))]


def s_add(a, b):
    return [add_terms([x, y]) for x, y in zip(a, b)]


def s_scale(a, c):
    return [None if x is None else scale(x, c) for x in a]


def s_shift(a, c):
    """a + c for a Python number c (only the primal coefficient moves)."""
    return [_op("add", a[0], c)] + a[1:]


def s_div(a, b):
    """The full series of a / b (a may be a Python number): from a = q b,
    q_k = (a_k - sum_{j<k} C(k, j) q_j b_{k-j}) / b_0."""
    if is_scalar(a):
        a = [a] + [None] * (len(b) - 1)
    q = [_op("div", a[0], b[0])]
    for k in range(1, len(b)):
        rest = add_terms([scale(_op("mul", q[j], b[k - j]), math.comb(k, j))
                          for j in range(k) if q[j] is not None and b[k - j] is not None])
        num = a[k] if rest is None else (_op("neg", rest) if a[k] is None else _op("sub", a[k], rest))
        q.append(None if num is None else _op("div", num, b[0]))
    return q


def s_apply(prim, a, **params):
    """The full series of prim(a) by prim's own Taylor rule."""
    out, series = prim.taylor([a[0]], [a[1:]], **params)
    return [out] + list(series)


# ---------------------------------------------------------------- definers

def taylor_zero(prim):
    """Piecewise constant or integer valued: every higher coefficient is zero."""
    def rule(primals, series, **params):
        out = prim.bind(*primals, **params)
        order = len(series[0]) if series else 0
        if prim.multiple_results:
            return out, [[None] * order for _ in out]
        return out, [None] * order
    prim.taylor = rule
    return prim


def _zeros_for(primal):
    return 0 if is_scalar(primal) else zeros_like_type(type_of(primal))


def taylor_linear(prim, fixed=()):
    """Linear in every operand except those at the indices `fixed` (integer indices,
    predicates), which stay at their primal: coefficient k applies prim to coefficient k."""
    def rule(primals, series, **params):
        out = prim.bind(*primals, **params)
        order = max(len(s) for s in series)
        coeffs = []
        for k in range(order):
            ks = [None if i in fixed else s[k] for i, s in enumerate(series)]
            if all(c is None for c in ks):
                coeffs.append(None)
                continue
            args = [p if i in fixed else (_zeros_for(p) if c is None else c)
                    for i, (p, c) in enumerate(zip(primals, ks))]
            coeffs.append(prim.bind(*args, **params))
        return out, coeffs
    rule.linear_fixed = tuple(fixed)      # lets the collapsed operators skip the generic path
    prim.taylor = rule
    return prim


def taylor_bilinear(prim):
    """Linear in each of two operands separately (mul, dot_general, conv): Leibniz's rule."""
    def rule(primals, series, **params):
        (x, y), (xs, ys) = primals, series
        out = prim.bind(x, y, **params)
        a, b = [x] + list(xs), [y] + list(ys)
        product = lambda u, v: prim.bind(u, v, **params)    # noqa: E731
        return out, [cauchy(a, b, k, product) for k in range(1, len(a))]
    rule.bilinear = True
    prim.taylor = rule
    return prim


def unary_series(x, xs, y, dseries, uses_output=True, **params):
    """The higher coefficients of y = g(x) where g'(x) = h(x, y): from y' = h x',
    y_{k+1} = sum_j C(k, j) h_j x_{k-j+1}. dseries(xs, ys) -> the full series of h from the
    full series of x and y (as long as they are given); uses_output=False: h depends on x
    alone and is computed once."""
    order = len(xs)
    if all(c is None for c in xs):
        return [None] * order
    xf, ys = [x] + list(xs), [y]
    h = None if uses_output else dseries(xf[:order], None, **params)
    for k in range(order):
        if uses_output:
            h = dseries(xf[:k + 1], ys, **params)
        ys.append(add_terms([scale(_op("mul", h[j], xf[k - j + 1]), math.comb(k, j))
                             for j in range(k + 1) if h[j] is not None and xf[k - j + 1] is not None]))
    return ys[1:]


def taylor_unary(prim, dseries, uses_output=True):
    """A unary primitive's rule from the series of its derivative (see unary_series)."""
    def rule(primals, series, **params):
        (x,), (xs,) = primals, series
        y = prim.bind(x, **params)
        return y, unary_series(x, xs, y, dseries, uses_output, **params)
    rule.unary = True
    prim.taylor = rule
    return prim
