"""Forward mode: JVPTrace carries (primal, tangent) pairs; tangents may be symbolic Zero.

Grad mode (torch.func's semantics): a JVPTrace that serves reverse mode (grad, vjp, jacrev)
runs the user's function with grad enabled, and does not differentiate operations that run
while grad is disabled *as that level sees it* (torch.no_grad(), set_grad_enabled(False),
inference_mode inside the function). The level sees the grad mode the next reverse level
inside it was entered with, or the current mode if it is the innermost; so an outer
no_grad around functx.grad is ignored and a no_grad around an inner grad stops the outer
one. Forward mode (jvp, jacfwd, linearize) ignores grad mode, as torch.func's does.
"""
from __future__ import annotations

import warnings

from ..core import STRUCTURAL, MissingRuleError, Trace, Zero, set_current_trace
from ..core import nan_check
from ..core.errors import user_frame_summary
from ..core.trace import (PrimalTracer, grad_enabled_for, process_on_parent, trace_state, transform_level, type_of,
                          value_repr)
from ..prims.util import is_scalar


class JVPTracer(PrimalTracer):
    __slots__ = ("tangent",)

    def __init__(self, trace, primal, tangent):
        self._trace = trace
        self.primal = primal
        self.tangent = tangent
        self._aval = None

    def concrete(self):
        # A value being differentiated becomes a Python number (.item(), float(), a number
        # argument such as torch.full_like's fill value, which torch's argument parser
        # converts): the derivative through it is dropped, and torch warns when that happens
        # to a tensor that requires grad. So does functx.
        if not isinstance(self.tangent, Zero) and self.aval.dtype.is_floating_point:
            warnings.warn(
                "functx: a value being differentiated was converted to a Python number here:\n"
                f"{user_frame_summary()}\nThe derivative through that number is dropped (torch's autograd "
                "drops it too). Keep it a tensor: e.g. torch.full_like(x, 0) + value instead of "
                "torch.full_like(x, value).", UserWarning, stacklevel=2)
        return PrimalTracer.concrete(self)

    def __repr__(self):
        # torch.func's names: grad levels show their primal; forward levels the tangent too.
        lvl = transform_level(self._trace)
        if self._trace.reverse:
            return f"GradTrackingTensor(lvl={lvl}, value={value_repr(self.primal)}\n)"
        return f"DualTensor(lvl={lvl}, value={value_repr(self.primal)},\n tangent={value_repr(self.tangent)}\n)"


class _ZeroOf(Zero):
    """The symbolic zero tangent of a constant operand; its aval is computed only if a rule
    asks for it (most don't)."""
    __slots__ = ("_of",)

    def __init__(self, x):
        self._of = x

    @property
    def aval(self):
        x = self._of
        return None if is_scalar(x) else type_of(x)


class JVPTrace(Trace):
    is_level = True

    def __init__(self, parent, reverse: bool = False):
        self.parent = parent
        self.reverse = reverse        # serves grad/vjp: honours grad mode (module docstring)

    def __repr__(self):
        return "JVPTrace"

    def pair(self, x):
        if isinstance(x, JVPTracer) and x._trace is self:
            return x.primal, x.tangent
        return x, Zero(None if is_scalar(x) else type_of(x))

    def wrap(self, primal, tangent):
        return primal if isinstance(tangent, Zero) else JVPTracer(self, primal, tangent)

    def process_primitive(self, prim, args, params):
        for a in args:
            if isinstance(a, JVPTracer) and a._trace is self:
                break
        else:                    # no tangents: straight to the parent
            return process_on_parent(self, prim, args, params)
        if self.reverse and not grad_enabled_for(self):     # no_grad: a constant for this level
            primals = [a.primal if isinstance(a, JVPTracer) and a._trace is self else a for a in args]
            return process_on_parent(self, prim, primals, params)
        primals, tangents = [], []
        for a in args:
            if isinstance(a, JVPTracer) and a._trace is self:
                primals.append(a.primal)
                tangents.append(a.tangent)
            else:
                primals.append(a)
                tangents.append(_ZeroOf(a))
        if prim.jvp is None:
            raise MissingRuleError(f"functx: primitive '{prim.name}' has no JVP rule, so it can't be "
                                   "differentiated")
        if _NANS.on:
            out, tangent_out = self._jvp_checked(prim, primals, tangents, params)
        else:
            prev, trace_state.trace = trace_state.trace, self.parent
            try:
                out, tangent_out = prim.jvp(primals, tangents, **params)
            finally:
                trace_state.trace = prev
        if prim.multiple_results:
            return [self.wrap(o, t) for o, t in zip(out, tangent_out)]
        return out if isinstance(tangent_out, Zero) else JVPTracer(self, out, tangent_out)   # wrap, inline

    def _jvp_checked(self, prim, primals, tangents, params):
        """debug_nans: the primal first, on its own (so a NaN there is named a primal
        computation), then the rule as tangent work. The primal returned is the first one,
        so under jit the rule's copy is the one CSE merges away or DCE drops."""
        with set_current_trace(self.parent):
            if prim.effectful or prim.kind == STRUCTURAL:     # running those twice would repeat effects
                with nan_check.computing("tangent", prim.name):
                    return prim.jvp(primals, tangents, **params)
            out = prim.bind(*primals, **params)
            with nan_check.computing("tangent", prim.name):
                return out, prim.jvp(primals, tangents, **params)[1]


_NANS = nan_check.STATE
