"""vmap of custom_jvp / custom_vjp rules that close over batched values.

A custom function made inside a vmapped function may close over a value the vmap batches
(`scale` below); its rules (fun, fwd, bwd, jvp) then run later, under a fresh BatchTrace
for the same axis (run_batched), on the trace below the vmap, or in the backward pass:

    def per_example(x, scale):
        @functx.custom_vjp
        def f(x): return torch.sin(x) * scale
        f.defvjp(lambda x: (f(x), x), lambda x, g: (g * torch.cos(x) * scale,))
        return f(x)
    functx.grad(lambda xs, ss: functx.vmap(per_example)(xs, ss).sum())(xs, ss)

Two pieces make that right (JAX's batch_subtrace: a subtrace shares its trace's tag):
- a BatchTrace treats a tracer of another BatchTrace over the same axis (AxisData, one per
  vmap call) as its own (batching.BatchTrace.process_primitive and unpack), so the closed-over
  value is batched inside the fresh trace, with its own batch dim;
- a custom call none of whose operands is batched still goes through its batch rule when
  its callables close over a value batched along the axis (`closes_over`, registered in
  batching.CLOSURE_BATCHED), instead of running unbatched on the trace below, where the
  closed-over tracer would leak.
"""
from __future__ import annotations

import functools
import types

import torch

from ..core import current_trace, set_current_trace
from ..core.ir import sub_graphs
from ..core.trace import Tracer
from ..frontend import TracerTensor, unwrap
from ..prims.shape import bdim_to_front
from .batching import CLOSURE_BATCHED, SUB_GRAPHS, BatchTrace, BatchTracer

__all__ = ["run_batched", "closes_over", "register"]


def run_batched(fn, axis, dims, vals):
    """fn(*vals) under a fresh BatchTrace for `axis` with the given batch dims; every output
    comes back batched along dim 0 (None outputs stay None). Values fn closes over that are
    batched along the same axis are batched here too (the trace recognizes them)."""
    trace = BatchTrace(current_trace(), axis)
    ins = [v if d is None else BatchTracer(trace, v, d) for v, d in zip(vals, dims)]
    with set_current_trace(trace):
        outs = fn(*ins)
    res = []
    for o in outs:
        if o is None:
            res.append(None)
            continue
        v, d = trace.unpack(o)
        res.append(bdim_to_front(v, d, axis.size))
    return res


_BUDGET = 400       # objects visited per question; past it, answer yes (the batch rule is right anyway)
_SKIP = (type, types.ModuleType, types.BuiltinFunctionType, str, bytes, int, float, complex, bool,
         type(None), torch.dtype, torch.device)


def closes_over(fns, axis) -> bool:
    """Whether the callables fns reach (through closure cells, defaults, functools.partial,
    bound methods, containers and objects' attributes) a tracer batched along `axis`, at any
    depth of nested tracers."""
    seen, stack, budget = set(), list(fns), _BUDGET
    while stack:
        x = stack.pop()
        if x is None or isinstance(x, _SKIP) or id(x) in seen:
            continue
        seen.add(id(x))
        budget -= 1
        if budget < 0:
            return True
        if isinstance(x, TracerTensor):
            stack.append(unwrap(x))
        elif isinstance(x, Tracer):
            if isinstance(x, BatchTracer):
                if x._trace.axis is axis:
                    return True
                stack.append(x.val)
            else:
                stack.append(getattr(x, "primal", None))
        elif isinstance(x, torch.Tensor):
            continue
        elif isinstance(x, types.FunctionType):
            stack.extend(c.cell_contents for c in (x.__closure__ or ()) if _filled(c))
            stack.extend(x.__defaults__ or ())
            stack.extend((x.__kwdefaults__ or {}).values())
            stack.append(getattr(x, "__wrapped__", None))
        elif isinstance(x, functools.partial):
            stack += [x.func, *x.args, *x.keywords.values()]
        elif isinstance(x, types.MethodType):
            stack += [x.__func__, x.__self__]
        elif isinstance(x, (list, tuple, set, frozenset)):
            stack.extend(x)
        elif isinstance(x, dict):
            stack.extend(x.values())
        else:
            d = getattr(x, "__dict__", None)
            if isinstance(d, dict):
                stack.extend(d.values())
            slots = getattr(type(x), "__slots__", ())
            for name in (slots,) if isinstance(slots, str) else slots:
                stack.append(getattr(x, name, None))
    return False


def _filled(cell):
    try:
        cell.cell_contents
    except ValueError:      # an empty cell (a name assigned later)
        return False
    return True


def register(prim, callable_params):
    """Batch prim's calls whose callables (the params named) close over a batched value."""
    def closes(params, axis):
        return closes_over([params.get(k) for k in callable_params], axis)
    CLOSURE_BATCHED[prim] = closes


def _sub_graphs_close_over(params, axis) -> bool:
    """Whether a custom call in the sub-graphs (a loop body, a branch: their closure conversion
    does not see into its callables) closes over a value batched along axis."""
    for g in sub_graphs(params):
        for e in g.eqns:
            rule = CLOSURE_BATCHED.get(e.prim)
            if rule is not None and rule is not _sub_graphs_close_over and rule(e.params, axis):
                return True
            if sub_graphs(e.params) and _sub_graphs_close_over(e.params, axis):
                return True
    return False


CLOSURE_BATCHED[SUB_GRAPHS] = _sub_graphs_close_over
