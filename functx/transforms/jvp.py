"""Forward mode: JVPTrace carries (primal, tangent) pairs; tangents may be symbolic Zero."""
from __future__ import annotations

from ..core import MissingRuleError, Trace, Tracer, Zero, set_current_trace
from ..core.trace import type_of
from ..prims.util import is_scalar


class JVPTracer(Tracer):
    __slots__ = ("primal", "tangent")

    def __init__(self, trace, primal, tangent):
        self._trace = trace
        self.primal = primal
        self.tangent = tangent

    @property
    def aval(self):
        return type_of(self.primal)

    def concrete(self):
        p = self.primal
        return p.concrete() if isinstance(p, Tracer) else p

    def __repr__(self):
        return f"JVPTracer({self.aval})"


class JVPTrace(Trace):
    def __init__(self, parent):
        self.parent = parent

    def __repr__(self):
        return "JVPTrace"

    def pair(self, x):
        if isinstance(x, JVPTracer) and x._trace is self:
            return x.primal, x.tangent
        return x, Zero(None if is_scalar(x) else type_of(x))

    def wrap(self, primal, tangent):
        return primal if isinstance(tangent, Zero) else JVPTracer(self, primal, tangent)

    def process_primitive(self, prim, args, params):
        primals, tangents = [], []
        nonzero = False
        for a in args:
            if isinstance(a, JVPTracer) and a._trace is self:
                primals.append(a.primal)
                tangents.append(a.tangent)
                nonzero = True
            else:
                primals.append(a)
                tangents.append(Zero(None if is_scalar(a) else type_of(a)))
        if not nonzero:
            with set_current_trace(self.parent):
                return prim.bind(*primals, **params)
        if prim.jvp is None:
            raise MissingRuleError(f"functx: primitive '{prim.name}' has no JVP rule, so it can't be "
                                   "differentiated")
        with set_current_trace(self.parent):
            out, tangent_out = prim.jvp(primals, tangents, **params)
        if prim.multiple_results:
            return [self.wrap(o, t) for o, t in zip(out, tangent_out)]
        return self.wrap(out, tangent_out)
