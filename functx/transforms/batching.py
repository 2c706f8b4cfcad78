"""vmap: BatchTrace carries (value, batch_dim) pairs; batch_dim None means unbatched."""
from __future__ import annotations

import torch

from ..core import STRUCTURAL, MissingRuleError, Trace, Tracer, nan_check, set_current_trace
from ..core.errors import BatchingError, RandomnessError, library_hint, user_frame_summary
from ..core.trace import (AUTOGRAD_ON_KEYS, EVAL_TRACE, AxisData, process_on_parent, tensor_type, trace_state, transform_level, type_of,
                          torch_autograd_records, value_repr)
from ..prims import collective
from ..prims.util import is_scalar
from . import batch_rule_cache, rule_cache


class BatchTracer(Tracer):
    __slots__ = ("val", "bdim", "_aval")

    def __init__(self, trace, val, bdim):
        self._trace = trace
        self.val = val
        self.bdim = bdim
        self._aval = None

    @property
    def aval(self):
        if self._aval is None:
            v, d = self.val, self.bdim
            if isinstance(v, torch.Tensor):     # one shared TensorType per type (eager vmap)
                s = tuple(v.shape)
                self._aval = tensor_type(s[:d] + s[d + 1:], v.dtype, v.device)
            else:
                t = type_of(v)
                self._aval = t.with_shape(t.shape[:d] + t.shape[d + 1:])
        return self._aval

    def concrete(self):
        raise BatchingError(
            "functx.vmap: Python needs a single value here (bool(), int(), .item(), or if/while on a "
            f"tensor), but under vmap the tensor holds one value per batch element:\n{user_frame_summary()}\n"
            "Use torch.where to select per element, or move the control flow outside vmap." + library_hint())

    def __repr__(self):
        # torch.func's BatchedTensor: the whole batch, with the dim that indexes examples.
        return f"BatchedTensor(lvl={transform_level(self._trace)}, bdim={self.bdim}, value={value_repr(self.val)}\n)"


class BatchTrace(Trace):
    is_level = True
    batches_units = True

    def __init__(self, parent, axis: AxisData):
        self.parent = parent
        self.axis = axis
        # an eager vmap takes whole ATen ops as cached lowerings (process_lowered)
        self.lowered_ops = parent is EVAL_TRACE

    def __repr__(self):
        return f"BatchTrace(size={self.axis.size}, name={self.axis.name!r})"

    def unpack(self, x):
        if isinstance(x, BatchTracer) and (x._trace is self or x._trace.axis is self.axis):
            return x.val, x.bdim
        return x, None

    def process_primitive(self, prim, args, params):
        vals, dims, batched = [], [], False
        for a in args:
            # a tracer of another trace over this same axis: a value a custom rule closed over,
            # run under a fresh trace for the axis (custom_batch.py); it is batched here too
            if isinstance(a, BatchTracer) and (a._trace is self or a._trace.axis is self.axis):
                vals.append(a.val)
                dims.append(a.bdim)
                batched = True
            else:
                vals.append(a)
                dims.append(None)
        if prim.collective:
            rule = (collective.collective_batch if params["axis_name"] == self.axis.name
                    else collective.foreign_collective_batch)
            with set_current_trace(self.parent):
                out, out_dim = rule(prim, self.axis, vals, dims, params)
            return self.wrap(out, out_dim, prim.multiple_results)
        if not batched:
            if prim.effectful and prim.batch is None:
                return self._random(prim, params)       # random numbers: vmap's randomness decides
            closes = CLOSURE_BATCHED.get(prim, CLOSURE_BATCHED.get(SUB_GRAPHS) if prim.kind is STRUCTURAL else None)
            if closes is None or not closes(params, self.axis):
                return process_on_parent(self, prim, vals, params)
        if prim.batch is None:
            raise MissingRuleError(f"functx: primitive '{prim.name}' has no batching rule, so it can't be "
                                   "vmapped")
        if not _NANS.on and rule_cache.allowed(prim):
            out = self._cached_batch(prim, vals, dims, params)
            if out is not NotImplemented:
                return out
        prev, trace_state.trace = trace_state.trace, self.parent
        try:
            out, out_dim = prim.batch(self.axis, vals, dims, **params)
        finally:
            trace_state.trace = prev
        return self.wrap(out, out_dim, prim.multiple_results)

    def _cached_batch(self, prim, vals, dims, params):
        """The batch rule through its cached, generated form (batch_rule_cache.BatchRule): impls
        called directly when the trace below is the eager one, else bound there; or
        NotImplemented where that does not apply (the rule then runs as written)."""
        eager = self.parent is EVAL_TRACE
        key = [prim, self.axis.size, torch.get_default_dtype()]      # lax helpers read it
        V = []
        for v, d in zip(vals, dims):
            k = rule_cache.operand_key(v, eager, d)
            if k is None:
                return NotImplemented
            key.append(k)
            if isinstance(v, (torch.Tensor, Tracer)):
                V.append(v)
        rule = rule_cache.cached_rule(_BATCH_RULES, prim, key, params, lambda: batch_rule_cache.build_batch(
            prim, params, self.axis,
            [(type_of(v), d) if isinstance(v, (torch.Tensor, Tracer)) else v for v, d in zip(vals, dims)]))
        if rule is NotImplemented or rule is _UNCACHEABLE:
            return NotImplemented
        prev, trace_state.trace = trace_state.trace, self.parent
        try:
            out = rule.fns[not eager](V)
        except Exception:       # the rule's own path raises (and names) the error
            return NotImplemented
        finally:
            trace_state.trace = prev
        return self.wrap(out, rule.out_dims, rule.multiple)

    def process_lowered(self, op, args):
        """An ATen op's cached lowering (frontend/lowered_ops.py) under an eager vmap: one
        generated batch rule for the whole op, cached on the op by its operands' batch dims;
        NotImplemented where it does not apply (dispatch runs the lowering)."""
        dims, V = [], []
        recorded = False        # an operand requires grad: torch's autograd records the rule
        for a in args:
            if type(a) is BatchTracer and a._trace is self:
                v = a.val
                if not isinstance(v, torch.Tensor):
                    return NotImplemented
                recorded = recorded or v.requires_grad
                dims.append(a.bdim)
                V.append(v)
            elif isinstance(a, torch.Tensor):
                recorded = recorded or a.requires_grad
                dims.append(None)
                V.append(a)
            else:
                return NotImplemented
        key = (self.axis.size, tuple(dims))
        rule = op.rules.get(key)
        if rule is None:
            rule = op.rules[key] = self._build_lowered_rule(op, V, dims)
        if rule is _UNCACHEABLE:
            return NotImplemented
        prev, trace_state.trace = trace_state.trace, EVAL_TRACE
        try:
            if recorded and torch_autograd_records():
                with torch._C._ForceDispatchKeyGuard(*AUTOGRAD_ON_KEYS):
                    outs = rule.fns[False](V)
            else:
                outs = rule.fns[False](V)
        except Exception:       # the lowering's own path raises (and names) the error
            return NotImplemented
        finally:
            trace_state.trace = prev
        return self.wrap(outs, rule.out_dims, True)

    def _build_lowered_rule(self, op, vals, dims):
        axis = self.axis
        specs = [(type_of(v), d) for v, d in zip(vals, dims)]

        def batch(xs, ds):     # the op's equations under a BatchTrace above the graph trace
            bt = BatchTrace(trace_state.trace, axis)
            ins = [x if d is None else BatchTracer(bt, x, d) for x, d in zip(xs, ds)]
            pairs = [bt.unpack(o) for o in op.eval_at(bt, ins)]
            return [v for v, _ in pairs], [d for _, d in pairs]
        return batch_rule_cache.build_batch_of(batch, op.name, True, specs)

    def wrap(self, out, out_dim, multiple):
        if multiple:
            return [o if d is None else BatchTracer(self, o, d) for o, d in zip(out, out_dim)]
        return out if out_dim is None else BatchTracer(self, out, out_dim)

    def _random(self, prim, params):
        mode = self.axis.randomness
        if mode == "error":
            raise RandomnessError(
                "functx.vmap: a random operation ran under vmap with randomness='error' (the default):\n"
                f"{user_frame_summary()}\nPass randomness='different' for independent samples per batch "
                "element, or randomness='same' to share one sample across the batch.")
        with set_current_trace(self.parent):
            if mode == "same":
                return prim.bind(**params)
            shape = (self.axis.size,) + tuple(params["shape"])
            return BatchTracer(self, prim.bind(**dict(params, shape=shape)), 0)


# Primitives holding user callables (custom_jvp_call, custom_vjp_call) -> closes(params, axis):
# whether those callables close over values batched along axis. Such a call is batched by its
# rule even when none of its operands is (custom_batch.py registers them); under SUB_GRAPHS,
# the check for other structural primitives: whether such a call in their sub-graphs does.
CLOSURE_BATCHED: dict = {}
SUB_GRAPHS = "sub-graphs"
_NANS = nan_check.STATE
_BATCH_RULES = batch_rule_cache.BATCH_RULES
_UNCACHEABLE = rule_cache.UNCACHEABLE


def is_batched_by(x, trace) -> bool:
    return isinstance(x, BatchTracer) and x._trace is trace


__all__ = ["AxisData", "BatchTrace", "BatchTracer", "is_scalar"]
