"""Taylor mode: `jet` (JAX's jax.experimental.jet API) and the JetTrace behind it.

A JetTracer carries a primal and its K higher Taylor coefficients in JAX's convention
(x(t) = x0 + sum_k x_k t^k / k!; None is a zero coefficient). A primitive's coefficients
come from its `taylor` rule (prims/series.py). A primitive without one, or whose rule
answers NotImplemented (max/min, sort, cond, while_loop, custom_jvp functions, opaque
ops, ...), gets them from its jvp rule nested K times (`taylor_by_nested_jvp`): exact, and
it follows the jvp rule's choices (the primal picks the branch of piecewise ops, a
custom_jvp function's own rule is differentiated), at 2^K-fold cost.
"""
from __future__ import annotations

import functools
import math

from ..core import MissingRuleError, Trace, current_trace, set_current_trace
from ..core.trace import PrimalTracer, process_on_parent, refuse_inside_torch_func, type_of
from .. import prims as P
from ..prims.creation import zeros_like_type
from ..prims.util import is_scalar
from ..frontend import wrap
from .api import _flat_fun, _flatten_tensors, _OutStore
from .jvp import JVPTrace, JVPTracer
from ..tree_util import tree_unflatten


class JetTracer(PrimalTracer):
    __slots__ = ("series",)

    def __init__(self, trace, primal, series):
        self._trace = trace
        self.primal = primal
        self.series = series
        self._aval = None

    def __repr__(self):
        return f"JetTracer({self.aval}, order={len(self.series)})"


class JetTrace(Trace):
    def __init__(self, parent, order: int):
        self.parent = parent
        self.order = order

    def __repr__(self):
        return f"JetTrace(order={self.order})"

    def split(self, x):
        if isinstance(x, JetTracer) and x._trace is self:
            return x.primal, x.series
        return x, [None] * self.order

    def wrap(self, primal, series):
        return primal if all(c is None for c in series) else JetTracer(self, primal, list(series))

    def process_primitive(self, prim, args, params):
        if not any(isinstance(a, JetTracer) and a._trace is self for a in args):
            return process_on_parent(self, prim, args, params)
        primals, series = zip(*[self.split(a) for a in args])
        with set_current_trace(self.parent):
            out = NotImplemented if prim.taylor is None else prim.taylor(list(primals), list(series), **params)
            if out is NotImplemented:
                out = taylor_by_nested_jvp(prim, primals, series, params)
        primal_out, series_out = out
        if prim.multiple_results:
            return [self.wrap(p, s) for p, s in zip(primal_out, series_out)]
        return self.wrap(primal_out, series_out)


def taylor_by_nested_jvp(prim, primals, series, params):
    """The Taylor coefficients of prim from its jvp rule nested K times (hyper-dual numbers).

    Along the path x(t), f(x(t + e_1 + ... + e_K)) with e_i^2 = 0 has the coefficient
    f_{|S|} (the |S|-th derivative) at the product of the e_i in S; so an operand enters as
    nested JVP tracers whose component at subset S is x_{|S|}, and f_k is read off the
    component that takes the tangent at k levels. Runs at the current trace."""
    order = max(len(s) for s in series)
    if prim.jvp is None:
        raise MissingRuleError(f"functx.jet: primitive '{prim.name}' has neither a Taylor rule nor a JVP rule, "
                               "so its Taylor coefficients can't be computed")
    levels = [JVPTrace(current_trace())]
    for _ in range(order - 1):
        levels.append(JVPTrace(levels[-1]))

    def operand(primal, coeffs):
        full = [primal] + list(coeffs)

        @functools.lru_cache(maxsize=None)
        def build(level, depth):         # the value at levels[:level] with `depth` tangents taken
            if level == 0:
                c = full[depth]
                return c if c is not None or depth == 0 else None
            p, t = build(level - 1, depth), build(level - 1, depth + 1)
            if t is None:
                return p
            if p is None:
                p = 0 if is_scalar(primal) else zeros_like_type(type_of(primal))
            return JVPTracer(levels[level - 1], p, t)
        return build(order, 0)

    vals = [operand(p, s) for p, s in zip(primals, series)]
    with set_current_trace(levels[-1]):
        out = prim.bind(*vals, **params)

    def coefficient(x, k):
        for i in range(order - 1, -1, -1):       # outermost level first
            take_tangent = i >= order - k
            if isinstance(x, JVPTracer) and x._trace is levels[i]:
                x = x.tangent if take_tangent else x.primal
            elif take_tangent:
                return None
        return x

    def unpack(o):
        return coefficient(o, 0), [coefficient(o, k) for k in range(1, order + 1)]
    if prim.multiple_results:
        pairs = [unpack(o) for o in out]
        return [p for p, _ in pairs], [s for _, s in pairs]
    return unpack(out)


# ---------------------------------------------------------------- the public API

def jet(fun, primals, series, factorial_scaled=True):
    """Taylor-mode higher-order differentiation (JAX's jax.experimental.jet).

    Args:
      fun: a function of tensors returning a tensor or a pytree of tensors.
      primals: a tuple of tensors, the point x0 (one per positional argument).
      series: a tuple with one sequence per primal, each of the same length K: the input's
        Taylor coefficients (x_1, ..., x_K). With factorial_scaled=True (JAX's default) they
        are derivatives along the path x(t) = x0 + sum_k x_k t^k / k!; with False, plain
        Taylor coefficients, x(t) = x0 + sum_k x_k t^k.

    Returns:
      (primal_out, series_out): fun(*primals), and for each output leaf the list of its K
      coefficients in the same convention (f_k = d^k/dt^k fun(x(t)) at t = 0).

    Example:
      >>> y, (y1, y2) = functx.jet(torch.sin, (x,), ((v, torch.zeros_like(v)),))
      >>> # y1 = cos(x) v, y2 = -sin(x) v^2: the first two derivatives along x + t v
    """
    if not isinstance(primals, (tuple, list)) or not isinstance(series, (tuple, list)):
        raise TypeError("functx.jet: primals and series must be tuples (one entry per argument), got "
                        f"{type(primals).__name__} and {type(series).__name__}")
    if len(primals) != len(series):
        raise ValueError(f"functx.jet: series must have one entry per primal: {len(primals)} primals, "
                         f"{len(series)} series")
    p_flat, p_tree = _flatten_tensors(tuple(primals), "functx.jet: primals")
    if len(p_flat) != len(primals):
        raise TypeError("functx.jet: each primal must be a single tensor (as in JAX's jet)")
    orders = set()
    coeffs = []
    for i, (p, terms) in enumerate(zip(p_flat, series)):
        if not isinstance(terms, (tuple, list)):
            raise TypeError(f"functx.jet: series[{i}] must be a sequence of Taylor coefficients, got "
                            f"{type(terms).__name__}")
        orders.add(len(terms))
        t_flat, _ = _flatten_tensors(tuple(terms), f"functx.jet: series[{i}]")
        pt = type_of(p)
        for k, c in enumerate(t_flat):
            ct = type_of(c)
            if ct.shape != pt.shape or ct.dtype != pt.dtype:
                raise ValueError(f"functx.jet: series[{i}][{k}] is {ct}, its primal is {pt}: the coefficients "
                                 "must have the primal's shape and dtype")
        if not factorial_scaled:
            t_flat = [_scaled(c, math.factorial(k + 1)) for k, c in enumerate(t_flat)]
        coeffs.append(t_flat)
    if len(orders) > 1:
        raise ValueError(f"functx.jet: every series must have the same length, got lengths {sorted(orders)}")
    order = orders.pop() if orders else 0
    store = _OutStore()
    trace = JetTrace(current_trace(), order)
    args = [trace.wrap(p, c) for p, c in zip(p_flat, coeffs)] if order else list(p_flat)
    refuse_inside_torch_func("functx.jet")
    with set_current_trace(trace):
        outs = _flat_fun(fun, p_tree, store, "functx.jet", sources=list(primals))(args)
    out_p, out_s = [], []
    for o in outs:
        p, s = trace.split(o)
        s = [zeros_like_type(type_of(p)) if c is None else c for c in s]
        if not factorial_scaled:
            s = [_scaled(c, 1.0 / math.factorial(k + 1)) for k, c in enumerate(s)]
        out_p.append(wrap(p))
        out_s.append([wrap(c) for c in s])
    return tree_unflatten(store.tree, out_p), tree_unflatten(store.tree, out_s)


def _scaled(c, factor):
    return c if factor == 1 else P.mul(c, factor)
