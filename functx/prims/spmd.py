"""The primitives that give functx.spmd JAX's replicated-value semantics (shard_map with
check_rep) on top of per-rank collectives.

Per rank every value is its own variable, so psum transposes to psum (prims/collective.py).
A value that is *replicated* (equal on every rank) is one global value, so where one
crosses between the two views the derivative needs a correction:
- replicated_in: a replicated spmd input, copied onto every rank. Transpose: psum (the
  global cotangent is the sum of the ranks' cotangents).
- replicated_out: a replicated spmd output, leaving as one value. Transpose: ct / size
  (each rank's share of the one cotangent), which the psums inside sum back up.
- invariant_ct: the same two corrections for grad/vjp running *inside* spmd, where only the
  SpmdTrace knows whether a primal is replicated: it resolves invariant_ct(ct, primal) to
  psum(ct) (reduce="sum", an input) or ct / size (reduce="mean", an output) when the primal is
  replicated, else to ct.
- pvary: marks a replicated value as varying (per rank) so grad inside spmd treats it as a
  per-rank variable (per-rank or per-example gradients; JAX's lax.pvary). Identity otherwise.
replicated_in/out carry the resolved axis (AxisData with its group); pvary and invariant_ct
carry the axis name and are resolved by the SpmdTrace of that name (transforms/spmd.py).
"""
from __future__ import annotations

from ..core import Primitive, Zero, bind
from . import elementwise as ew
from .collective import _unbound, axis_size, is_process_axis, psum
from .define import deflinear


def _identity_prim(name, transpose):
    def impl(x, *, axis_name):
        if not is_process_axis(axis_name):
            _unbound(name, axis_name)
        return x

    def abstract_eval(t, *, axis_name):
        axis_size(name, axis_name)
        return t
    p = Primitive(name, abstract_eval=abstract_eval, impl=impl, emit=lambda eqn, srcs: srcs[0],
                  batch=lambda axis, args, dims, **params: (bind(p, args, params), dims[0]))
    return deflinear(p, transpose)


replicated_in_p = _identity_prim("replicated_in", lambda ct, x, *, axis_name: [psum(ct, axis_name)])
replicated_out_p = _identity_prim(
    "replicated_out", lambda ct, x, *, axis_name: [ew.mul(ct, 1.0 / axis_name.size)])
# pvary's transpose is the identity: per rank, marking a value varying changes no number.
pvary_p = _identity_prim("pvary", lambda ct, x, *, axis_name: [ct])


def _invariant_ct_impl(ct, primal, *, axis_name, reduce):
    _unbound("grad under functx.spmd (a pullback used outside its spmd)", axis_name)


def _invariant_ct_jvp(primals, tangents, *, axis_name, reduce):
    (ct, primal), (t, _) = primals, tangents
    out = invariant_ct(ct, primal, axis_name, reduce)
    return out, t if isinstance(t, Zero) else invariant_ct(t, primal, axis_name, reduce)


def _invariant_ct_batch(axis, args, dims, *, axis_name, reduce):
    return invariant_ct(args[0], args[1], axis_name, reduce), dims[0]


# Linear in ct and self-adjoint per rank (psum is its own transpose; so is a scaling).
invariant_ct_p = Primitive(
    "invariant_ct", abstract_eval=lambda ct, primal, **params: ct, impl=_invariant_ct_impl,
    jvp=_invariant_ct_jvp, batch=_invariant_ct_batch,
    transpose=lambda ct, ct_in, primal, *, axis_name, reduce: [invariant_ct(ct, primal, axis_name, reduce), None])


def replicated_in(x, axis):
    return bind(replicated_in_p, (x,), {"axis_name": axis})


def replicated_out(x, axis):
    return bind(replicated_out_p, (x,), {"axis_name": axis})


def pvary(x, axis_name):
    return bind(pvary_p, (x,), {"axis_name": axis_name})


def invariant_ct(ct, primal, axis_name, reduce):
    return bind(invariant_ct_p, (ct, primal), {"axis_name": axis_name, "reduce": reduce})


def resolve_invariant_ct(ct, primal_varies, axis, reduce):
    """invariant_ct at the SpmdTrace that owns its axis (ct and the result at that trace)."""
    if primal_varies:
        return ct
    return psum(ct, axis.name) if reduce == "sum" else ew.mul(ct, 1.0 / axis.size)

