"""An ATen op's lowering, traced once per static signature into a small graph (issue 13).

A lowering (frontend/lowerings/) turns an ATen op on lax values into primitives, with
torch's promotion and broadcasting decided in Python on every call. Under an eager
transform that opts in (`Trace.lowered_ops`: eager grad/vjp/jvp levels), dispatch instead
looks up the op's `LoweredOp` by its static signature (the op; its tensor operands' shapes,
dtypes, devices; every other argument's value; the default dtype), tracing the lowering
once on abstract operands, and hands it to the trace (`process_lowered`), which runs it as
one unit: JVPTrace through one cached, generated jvp rule for the whole op
(transforms/rule_cache.py), so an op costs one rule call instead of one per primitive.
A lowering that needs values, has effects or fails to trace is marked uncacheable and runs
as written; so does every op under a trace that does not opt in (jit, vmap, nested levels).
"""
from __future__ import annotations

import torch

from ..core.ir import Literal, Var
from ..core.trace import EVAL_TRACE, GraphTrace, Tracer, trace_state, type_of

UNCACHEABLE = "uncacheable"
CACHE: dict = {}
_MAX = 4096


class FloatSignatures:
    """Python floats key a unit by value (exactly: -0.0 and nan included). A float that
    changes on every call (a learning rate, a sampler's sigma, a time step) would build a unit
    per call, each costing more than running the op as written: past `limit` builds with a
    float in the key, a function's new float signatures run as written (the units already
    built still serve). `seen` is set by the keying of the current call."""
    limit = 64

    def __init__(self):
        self.builds: dict = {}
        self.seen = False

    def may_build(self, fid, key=None) -> bool:
        """Whether a unit for this signature may be built; key: a signature to scan for floats
        (instead of `seen`)."""
        if not (self.seen if key is None else _has_float(key)):
            return True
        n = self.builds.get(fid, 0)
        if n >= self.limit:
            return False
        self.builds[fid] = n + 1
        return True


def _has_float(key) -> bool:
    for k in key:
        if k is float or type(k) is float or (type(k) is tuple and _has_float(k)):
            return True
    return False


FLOATS = FloatSignatures()


class LoweredOp:
    """The graph of one ATen op's lowering for one signature. outputs: "one", or the
    sequence type of the lowering's result. rules: filled by the traces that run it."""
    __slots__ = ("name", "graph_eqns", "invars", "constvars", "consts", "out_atoms", "outputs", "rules", "views",
                 "reads_ints")

    def __init__(self, name, eqns, invars, constvars, consts, out_atoms, outputs):
        # whether an equation reads an integer tensor: indices, targets, integer division may
        # raise on their values (an index out of range), so a batch always computes this op
        # (frontend/unit_batches.py), even when nothing reads its results
        self.reads_ints = any(isinstance(a, Var) and not a.type.dtype.is_floating_point
                              and a.type.dtype not in (torch.bool, torch.complex64, torch.complex128)
                              for e in eqns for a in e.inputs)
        self.name = name
        self.graph_eqns = eqns
        self.invars = invars
        self.constvars = constvars
        self.consts = consts
        self.out_atoms = out_atoms
        self.outputs = outputs
        self.rules = {}
        self.views = None       # function units: how results alias operands (function_units.ViewSpec)

    def eval(self, args):
        """Bind the equations one by one at the current trace (what the lowering does)."""
        env = dict(zip(self.constvars, self.consts))
        env.update(zip(self.invars, args))
        for e in self.graph_eqns:
            out = e.prim.bind(*[a.value if isinstance(a, Literal) else env[a] for a in e.inputs], **e.params)
            if e.prim.multiple_results:
                env.update(zip(e.outputs, out))
            else:
                env[e.outputs[0]] = out
        return [a.value if isinstance(a, Literal) else env[a] for a in self.out_atoms]

    def eval_at(self, trace, args):
        """eval with `trace` current (a transform's trace built above the one tracing a rule)."""
        prev, trace_state.trace = trace_state.trace, trace
        try:
            return self.eval(args)
        finally:
            trace_state.trace = prev


def run_lowered(op, args):
    """op's outputs at the current trace: as one unit where the trace takes it
    (process_lowered), else its equations bound one by one."""
    outs = trace_state.trace.process_lowered(op, args)
    return op.eval(args) if outs is NotImplemented else outs


class _Uncacheable(Exception):
    pass


def _key(x, leaves):
    if isinstance(x, torch.Tensor):
        if x.requires_grad or x.layout != torch.strided:    # a sparse operand: the lowering
            raise _Uncacheable                               # reads it (a constant, not an input)
        leaves.append(x)
        return (x.shape, x.dtype, x.device)
    if isinstance(x, Tracer):
        t = x.aval
        leaves.append(x)
        return (t.shape, t.dtype, t.device, t.weak)
    t = type(x)
    if t is float:
        FLOATS.seen = True
        return (float, x.hex())
    if t is int or t is bool or x is None or t is str or t is torch.dtype or t is torch.device \
            or t is torch.memory_format or t is torch.layout:
        return (t, x)
    if t is list or t is tuple:
        return (t, tuple([_key(v, leaves) for v in x]))
    raise _Uncacheable


def _rebuild(x, it):
    if isinstance(x, (torch.Tensor, Tracer)):
        return next(it)
    if type(x) is list or type(x) is tuple:
        return type(x)(_rebuild(v, it) for v in x)
    return x


def run_cached(func, lowering, args, kwargs):
    """lowering(*args, **kwargs) (lax values) through the op's LoweredOp at the current trace,
    or NotImplemented where that does not apply."""
    leaves = []
    FLOATS.seen = False
    try:
        # id(func): OpOverload.__hash__ is Python code (the entry keeps func, checked on a hit)
        key = (id(func), torch.get_default_dtype(), _key(args, leaves), _key(tuple(kwargs.items()), leaves))
        entry = CACHE.get(key)
    except (_Uncacheable, TypeError):     # a value that can't key (SymInts under jit are unhashable)
        return NotImplemented
    if entry is None or entry[0] is not func:
        if not FLOATS.may_build(id(func)):
            return NotImplemented
        entry = (func, _build(func, lowering, args, kwargs, leaves))
        if len(CACHE) >= _MAX:
            CACHE.clear()
            FLOATS.builds.clear()
        CACHE[key] = entry
    op = entry[1]
    if op is UNCACHEABLE:
        return NotImplemented
    outs = trace_state.trace.process_lowered(op, leaves)
    if outs is NotImplemented:
        return NotImplemented
    if op.outputs == "one":
        return outs[0]
    return op.outputs(outs)


def _build(func, lowering, args, kwargs, leaves):
    g = GraphTrace(EVAL_TRACE, stage_all=True)
    g.keeps_fused = True       # fused primitives stay whole (prims/fused.py)
    tracers = [g.new_arg(type_of(x)) for x in leaves]
    it = iter(tracers)
    a_args, a_kwargs = _rebuild(args, it), dict(_rebuild(tuple(kwargs.items()), it))
    prev, trace_state.trace = trace_state.trace, g
    try:
        out = lowering(*a_args, **a_kwargs)
        if type(out) in (list, tuple):
            outputs, outs = type(out), list(out)
        else:
            outputs, outs = "one", [out]
        if not all(isinstance(o, (torch.Tensor, Tracer)) for o in outs):
            return UNCACHEABLE
    except Exception:
        return UNCACHEABLE
    finally:
        trace_state.trace = prev
    return op_of_graph(str(func), g, tracers, outs, outputs)


def op_of_graph(name, g, tracers, outs, outputs):
    """The LoweredOp of what g recorded from tracers to outs (lax values), or UNCACHEABLE
    where running it as one unit would differ (effects, structural or opaque primitives)."""
    for e in g.eqns:
        p = e.prim
        if p.effectful or p.inline is not None or p.kind == "structural" or p.collective or p.name == "opaque":
            return UNCACHEABLE
    try:
        out_atoms = [g.atom(o) for o in outs]
    except Exception:
        return UNCACHEABLE
    return LoweredOp(name, g.eqns, [t.var for t in tracers], g.constvars, g.consts, out_atoms, outputs)

