"""vmap: BatchTrace carries (value, batch_dim) pairs; batch_dim None means unbatched."""
from __future__ import annotations

from ..core import FunctxError, MissingRuleError, Trace, Tracer, set_current_trace
from ..core.errors import library_hint, user_frame_summary
from ..core.trace import AxisData, process_on_parent, trace_state, transform_level, type_of, value_repr
from ..prims import collective
from ..prims.util import is_scalar


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
            t = type_of(self.val)
            d = self.bdim
            self._aval = t.with_shape(t.shape[:d] + t.shape[d + 1:])
        return self._aval

    def concrete(self):
        raise FunctxError(
            "functx.vmap: Python needs a single value here (bool(), int(), .item(), or if/while on a "
            f"tensor), but under vmap the tensor holds one value per batch element:\n{user_frame_summary()}\n"
            "Use torch.where to select per element, or move the control flow outside vmap." + library_hint())

    def __repr__(self):
        # torch.func's BatchedTensor: the whole batch, with the dim that indexes examples.
        return f"BatchedTensor(lvl={transform_level(self._trace)}, bdim={self.bdim}, value={value_repr(self.val)}\n)"


class BatchTrace(Trace):
    is_level = True

    def __init__(self, parent, axis: AxisData):
        self.parent = parent
        self.axis = axis

    def __repr__(self):
        return f"BatchTrace(size={self.axis.size}, name={self.axis.name!r})"

    def unpack(self, x):
        if isinstance(x, BatchTracer) and x._trace is self:
            return x.val, x.bdim
        return x, None

    def process_primitive(self, prim, args, params):
        vals, dims, batched = [], [], False
        for a in args:
            if isinstance(a, BatchTracer) and a._trace is self:
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
            return process_on_parent(self, prim, vals, params)
        if prim.batch is None:
            raise MissingRuleError(f"functx: primitive '{prim.name}' has no batching rule, so it can't be "
                                   "vmapped")
        prev, trace_state.trace = trace_state.trace, self.parent
        try:
            out, out_dim = prim.batch(self.axis, vals, dims, **params)
        finally:
            trace_state.trace = prev
        return self.wrap(out, out_dim, prim.multiple_results)

    def wrap(self, out, out_dim, multiple):
        if multiple:
            return [o if d is None else BatchTracer(self, o, d) for o, d in zip(out, out_dim)]
        return out if out_dim is None else BatchTracer(self, out, out_dim)

    def _random(self, prim, params):
        mode = self.axis.randomness
        if mode == "error":
            raise FunctxError(
                "functx.vmap: a random operation ran under vmap with randomness='error' (the default):\n"
                f"{user_frame_summary()}\nPass randomness='different' for independent samples per batch "
                "element, or randomness='same' to share one sample across the batch.")
        with set_current_trace(self.parent):
            if mode == "same":
                return prim.bind(**params)
            shape = (self.axis.size,) + tuple(params["shape"])
            return BatchTracer(self, prim.bind(**dict(params, shape=shape)), 0)


def is_batched_by(x, trace) -> bool:
    return isinstance(x, BatchTracer) and x._trace is trace


__all__ = ["AxisData", "BatchTrace", "BatchTracer", "is_scalar"]
