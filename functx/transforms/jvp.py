"""Forward mode: JVPTrace carries (primal, tangent) pairs; tangents may be symbolic Zero.

Grad mode (torch.func's semantics): a JVPTrace that serves reverse mode (grad, vjp, jacrev)
runs the user's function with grad enabled, and does not differentiate operations that run
while grad is disabled *as that level sees it* (torch.no_grad(), set_grad_enabled(False),
inference_mode inside the function). The level sees the current grad mode, disabled as well
where a reverse level inside it was entered with grad disabled; so an outer no_grad around
functx.grad is ignored, a no_grad around an inner grad stops the outer one, and a no_grad
inside grad(grad(f))'s f stops both (core/trace.grad_enabled_for). Forward mode (jvp, jacfwd, linearize) ignores grad mode, as torch.func's does,
and honours torch's forward-AD switch instead (forward_ad._set_fwd_grad_enabled(False): values
computed under it are constants of the forward levels).
"""
from __future__ import annotations

import torch

from ..core import STRUCTURAL, MissingRuleError, Trace, Tracer, Zero, set_current_trace
from ..core import nan_check
from ..core.errors import FunctxError
from ..core.trace import _reverse, is_ancestor
from ..core.trace import (AUTOGRAD_ON_KEYS, EVAL_TRACE, GraphTrace, GraphTracer, PrimalTracer, grad_enabled_for, process_on_parent,
                          torch_autograd_records, trace_state, transform_level, type_of, value_repr)
from ..prims.util import is_scalar
from . import rule_cache
from .batching import BatchTrace


class JVPTracer(PrimalTracer):
    __slots__ = ("tangent",)

    def __init__(self, trace, primal, tangent):
        self._trace = trace
        self.primal = primal
        self.tangent = tangent
        self._aval = None

    def tracks_grad(self):
        # torch.func's GradTrackingTensor: a float value of a grad/vjp/jacrev level that carries
        # a tangent (detached, no_grad and integer results are the primal, no JVPTracer)
        return self._trace.reverse and not isinstance(self.tangent, Zero) and self.aval.dtype.is_floating_point

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


_fwd_enabled = torch._C._is_fwd_grad_enabled


def _fwd_off(level):
    """A forward level under torch.autograd.forward_ad._set_fwd_grad_enabled(False): its values
    are constants there, as in torch.func. With a reverse level nested inside it (hessian,
    jacfwd(jacrev(f))), torch.func's answer depends on where its backward recomputes what it
    saved (outside the block), which functx's linearize does not follow: that raises."""
    for rev, _ in _reverse.stack:
        if rev is not level and is_ancestor(level, rev):
            raise FunctxError(
                "functx: torch.autograd.forward_ad._set_fwd_grad_enabled(False) inside a reverse-mode "
                "transform nested in a forward-mode one (hessian, jacfwd(jacrev(f)), jvp(grad(f))) is not "
                "supported: use x.detach() or functx.stop_gradient for the values that should be "
                "constants of the forward level")
    return True


class ForwardADOn:
    """Around a user's forward level (jvp, linearize): torch.func's jvp turns forward AD on for
    f (as grad turns grad mode on), so an outer _set_fwd_grad_enabled(False) is turned off
    inside. Entered so inside another forward level, what torch.func then does for that
    level is not followed: that raises."""
    __slots__ = ("what", "off")

    def __init__(self, what):
        self.what = what

    def __enter__(self):
        self.off = not _fwd_enabled()
        if self.off:
            t = trace_state.trace
            while t is not None:
                if isinstance(t, JVPTrace) and t.user:
                    raise FunctxError(
                        f"{self.what} entered under torch.autograd.forward_ad._set_fwd_grad_enabled(False) inside "
                        "another forward-mode transform is not supported: use x.detach() or "
                        "functx.stop_gradient for the values that should be constants of the outer level")
                t = t.parent
            torch._C._set_fwd_grad_enabled(True)

    def __exit__(self, *exc):
        if self.off:
            torch._C._set_fwd_grad_enabled(False)


class JVPTrace(Trace):
    is_level = True
    batches_units = True
    uses_custom_rules = True      # graphs staged below it keep custom_jvp/vjp calls (GraphTrace.inlines)
    user = False        # a user's forward level (jvp, jacfwd, linearize): honours the forward-AD switch

    def __init__(self, parent, reverse: bool = False):
        self.parent = parent
        self.reverse = reverse        # serves grad/vjp: honours grad mode (module docstring)
        # Primitives run cached, generated jvp rules (transforms/rule_cache.py): "linearize" when
        # the tangents live in linearize's partial-eval trace, else "forward"; impls are called
        # directly when the primal work runs on the eager trace (eager), else bound there.
        if type(parent) is GraphTrace and not parent.stage_all:
            self.fast, self.eager = "linearize", parent.parent is EVAL_TRACE
        else:
            self.fast, self.eager = "forward", parent is EVAL_TRACE
        # Whole ATen ops as cached lowerings (process_lowered): on eager levels, and on levels
        # nested in other eager transforms (vmap(grad), jvp(grad)), never inside jit
        self.lowered_ops = self.eager or _eager_chain(parent)

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
        if (not grad_enabled_for(self)) if self.reverse else (self.user and not _fwd_enabled() and _fwd_off(self)):
            # no_grad (reverse level) / _set_fwd_grad_enabled(False) (forward): a constant here
            primals = [a.primal if isinstance(a, JVPTracer) and a._trace is self else a for a in args]
            return process_on_parent(self, prim, primals, params)
        if self.fast is not None and not _NANS.on:
            out = self._cached_jvp(prim, args, params)
            if out is not NotImplemented:
                return out
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

    def _cached_jvp(self, prim, args, params):
        """The primitive's jvp through its cached, generated rule (rule_cache.JvpRule), or
        NotImplemented where that does not apply (the rule then runs as written)."""
        ok = _ALLOWED.get(prim)
        if not (ok or (ok is None and rule_cache.allowed(prim))):
            return NotImplemented
        if len(args) == 2 and args[0] is args[1]:
            return NotImplemented       # x * x: the primitive's own jvp sees one operand (mul's 2 t x)
        linearize = self.fast == "linearize"
        eager = self.eager
        key = [prim, torch.get_default_dtype()]      # lax helpers read it (scalar operands)
        P, T = [], []
        for a in args:
            if type(a) is JVPTracer and a._trace is self:
                p, t = a.primal, a.tangent
                sig = rule_cache.operand_key(p, eager, True)
                if sig is None:
                    return NotImplemented
                if linearize:
                    if type(t) is not GraphTracer or t._trace is not self.parent or t.var.type.dtype != sig[1]:
                        return NotImplemented
                    T.append(t.var)
                elif isinstance(t, torch.Tensor):
                    if t.dtype != sig[1] or t.requires_grad:     # a tangent torch's autograd records:
                        return NotImplemented                    # the rule as written (EvalTrace records)
                    T.append(t)
                elif not eager and isinstance(t, Tracer) and t.aval.dtype == sig[1]:
                    T.append(t)
                else:
                    return NotImplemented
                key.append(sig)
                P.append(p)
            else:
                k = rule_cache.operand_key(a, eager, False)
                if k is None:
                    return NotImplemented
                key.append(k)
                if isinstance(a, (torch.Tensor, Tracer)):
                    P.append(a)
        rule = rule_cache.cached_rule(_JVP_RULES, prim, key, params, lambda: self._build_rule(prim, args, params))
        if rule is NotImplemented or rule is _UNCACHEABLE:
            return NotImplemented
        ran = self._run_rule(rule, P, T, linearize, eager)
        if ran is NotImplemented:
            return NotImplemented
        out, tangent = ran
        if rule.multiple:
            return [o if t is None else JVPTracer(self, o, t) for o, t in zip(out, tangent)]
        return out if tangent is None else JVPTracer(self, out, tangent)

    def process_lowered(self, op, args):
        """An ATen op's cached lowering (frontend/lowered_ops.py) on an eager level: one
        generated jvp rule for the whole op, cached on the op by which operands carry
        tangents; NotImplemented where it does not apply (dispatch runs the lowering)."""
        if (not grad_enabled_for(self)) if self.reverse else (self.user and not _fwd_enabled()):
            return NotImplemented
        linearize = self.fast == "linearize"
        eager = self.eager
        mask, P, T = [], [], []
        recorded = False        # an operand requires grad: torch's autograd records the rule
        for a in args:
            if type(a) is JVPTracer and a._trace is self:
                p, t = a.primal, a.tangent
                if isinstance(p, torch.Tensor):
                    recorded = recorded or p.requires_grad
                    dtype = p.dtype
                elif not eager and isinstance(p, Tracer):
                    dtype = p.aval.dtype
                else:
                    return NotImplemented
                if linearize:
                    if type(t) is not GraphTracer or t._trace is not self.parent or t.var.type.dtype != dtype:
                        return NotImplemented
                    T.append(t.var)
                elif isinstance(t, torch.Tensor) and t.dtype == dtype:
                    recorded = recorded or t.requires_grad      # a tangent that requires grad
                    T.append(t)
                elif not eager and isinstance(t, Tracer) and t.aval.dtype == dtype:
                    T.append(t)
                else:
                    return NotImplemented
                mask.append(True)
                P.append(p)
            elif isinstance(a, torch.Tensor) or (not eager and isinstance(a, Tracer)):
                recorded = recorded or (type(a) is not JVPTracer and isinstance(a, torch.Tensor) and a.requires_grad)
                mask.append(False)
                P.append(a)
            else:
                return NotImplemented
        if not T:         # no tangents: the whole op at the trace below (process_on_parent)
            return _lowered_on_parent(self, op, P)
        key = (self.fast, tuple(mask))
        rule = op.rules.get(key)
        if rule is None:
            rule = op.rules[key] = self._build_lowered_rule(op, args, mask)
        if rule is _UNCACHEABLE:
            return NotImplemented
        # _run_rule, inline (every eager unit comes here)
        fn = rule.fns[(self.fast, not eager)]
        prev, trace_state.trace = trace_state.trace, (self.parent.parent if linearize else self.parent)
        try:
            if recorded and torch_autograd_records():
                with torch._C._ForceDispatchKeyGuard(*AUTOGRAD_ON_KEYS):
                    outs, tangents = fn(self.parent, P, T) if linearize else fn(P, T)
            else:
                outs, tangents = fn(self.parent, P, T) if linearize else fn(P, T)
        except Exception:
            return NotImplemented
        finally:
            trace_state.trace = prev
        return [o if t is None else JVPTracer(self, o, t) for o, t in zip(outs, tangents)]

    def _run_rule(self, rule, P, T, linearize, eager):
        """(outputs, tangents) of a cached rule, or NotImplemented where it raised (the rule as
        written then runs, and raises and names the error). The primal work runs where the
        rule would run it: on the eager trace (impls) or bound at the trace below this
        level's (the partial-eval trace's parent)."""
        below = self.parent.parent if linearize else self.parent
        prev, trace_state.trace = trace_state.trace, below
        try:
            if linearize:
                return rule.fns[("linearize", not eager)](self.parent, P, T)
            return rule.fns[("forward", not eager)](P, T)
        except Exception:
            return NotImplemented
        finally:
            trace_state.trace = prev

    def _build_lowered_rule(self, op, args, mask):
        specs = [(type_of(a.primal if type(a) is JVPTracer and a._trace is self else a), m)
                 for a, m in zip(args, mask)]

        def jvp(primals, tangents):     # the op's equations under a JVPTrace above the graph trace
            jt = JVPTrace(trace_state.trace)
            xs = [p if isinstance(t, Zero) else JVPTracer(jt, p, t) for p, t in zip(primals, tangents)]
            pairs = [jt.pair(o) for o in op.eval_at(jt, xs)]
            return [p for p, _ in pairs], [t for _, t in pairs]
        return rule_cache.build_jvp_of(jvp, op.name, True, specs, _ZeroOf)

    def _build_rule(self, prim, args, params):
        specs = []
        for a in args:
            if isinstance(a, JVPTracer) and a._trace is self:
                specs.append((type_of(a.primal), True))
            elif isinstance(a, (torch.Tensor, Tracer)):
                specs.append((type_of(a), False))
            else:
                specs.append(a)
        return rule_cache.build_jvp(prim, params, specs, _ZeroOf)

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


def _lowered_on_parent(trace, op, args):
    """op's outputs with trace's parent current, as one unit where a trace below takes it (a
    partial-eval trace hands it on when none of the operands are its own); NotImplemented
    where it raises (the usual path then raises and names the error)."""
    parent = trace.parent
    if type(parent) is GraphTrace and not parent.stage_all:
        for a in args:
            if isinstance(a, GraphTracer) and a._trace is parent:
                return NotImplemented
        return _lowered_on_parent(parent, op, args)
    prev, trace_state.trace = trace_state.trace, parent
    try:
        return parent.process_lowered(op, args)
    except Exception:
        return NotImplemented
    finally:
        trace_state.trace = prev


def _eager_chain(trace) -> bool:
    """Whether every trace from here down is an eager one or a transform level over it (JVP,
    linearize's partial evaluation, vmap over no process group): no graph is being staged."""
    while trace is not None:
        t = type(trace)
        if not (trace is EVAL_TRACE or t is JVPTrace or (t is GraphTrace and not trace.stage_all)
                or (t is BatchTrace and trace.axis.group is None)):
            return False
        trace = trace.parent
    return True


_NANS = nan_check.STATE
_JVP_RULES = rule_cache.JVP_RULES
_ALLOWED = rule_cache.ALLOWED
_UNCACHEABLE = rule_cache.UNCACHEABLE
