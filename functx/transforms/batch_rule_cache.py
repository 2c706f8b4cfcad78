"""Cached, generated batch rules for vmap without jit (issue 13): a primitive's batch rule
(or an ATen op's cached lowering under a BatchTrace) traced once per static signature
(operand types with their batch dims, params, axis size) and generated as one Python
function, with rule_cache's code generator (impl and bind variants, as its jvp rules)."""
from __future__ import annotations

from ..core import Var
from ..core.trace import EVAL_TRACE, GraphTrace, trace_state
from .impl_rewrites import impl_eqns
from .rule_cache import _GLOBALS, UNCACHEABLE, _Codegen, _plain, bind_at_current

BATCH_RULES: dict = {}     # key (see BatchTrace._cached_batch) -> BatchRule | UNCACHEABLE


class BatchRule:
    """One primitive's batch rule for one static signature (operand types with their batch
    dims, params, axis size): fns[bind](V) -> outputs (V the operand values), out_dims static."""
    __slots__ = ("fns", "out_dims", "multiple")

    def __init__(self, fns, out_dims, multiple):
        self.fns = fns
        self.out_dims = out_dims
        self.multiple = multiple


def build_batch(prim, params, axis, specs):
    """specs: per operand, a Python scalar or (TensorType of the value, batch dim or None)."""
    def batch(vals, dims):
        out, out_dim = prim.batch(axis, vals, dims, **params)
        if prim.multiple_results:
            return list(out), list(out_dim)
        return [out], out_dim
    return build_batch_of(batch, prim.name, prim.multiple_results, specs)


def build_batch_of(batch, name, multiple, specs):
    """The BatchRule of batch(vals, dims) -> (outputs, their batch dims) (a primitive's rule,
    or an ATen op's cached lowering under a BatchTrace), or UNCACHEABLE."""
    g = GraphTrace(EVAL_TRACE, stage_all=True)
    g.keeps_fused = True       # fused primitives stay whole (prims/fused.py)
    vals, dims, in_vars = [], [], []
    for s in specs:
        if not isinstance(s, tuple):
            vals.append(s)
            dims.append(None)
            continue
        v = g.new_arg(s[0])
        vals.append(v)
        dims.append(s[1])
        in_vars.append(v.var)
    prev, trace_state.trace = trace_state.trace, g
    try:
        outs, out_dims = batch(vals, dims)
        out_atoms = [g.atom(o) for o in outs]
    except Exception:
        return UNCACHEABLE
    finally:
        trace_state.trace = prev
    if not _plain(g.eqns):
        return UNCACHEABLE
    fns = {}
    for bind in (False, True):
        gen = _Codegen(bind=bind)
        for k, v in enumerate(in_vars):
            gen.names[v] = f"V[{k}]"
        for v, c in zip(g.constvars, g.consts):
            gen.names[v] = gen.const(c)
        eqns = g.eqns if bind else impl_eqns(g.eqns, {a for a in out_atoms if isinstance(a, Var)})
        lines = [gen.call(e) for e in eqns]
        outs_src = ", ".join(gen.ref(a) for a in out_atoms)
        ret = f"[{outs_src}]" if multiple else outs_src
        src = "\n".join(["def batch(V):"] + lines + [f"    return {ret}"])
        ns = dict(_GLOBALS, **gen.ns, B=bind_at_current)
        exec(compile(src, f"<functx batch rule {name} ({'bind' if bind else 'impl'})>", "exec"), ns)
        fns[bind] = ns["batch"]
    return BatchRule(fns, out_dims, multiple)
