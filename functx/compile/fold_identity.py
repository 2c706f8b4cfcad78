"""The pass fold_identity_dots: a dot_general against a (scaled, broadcast) identity matrix
is a selection, not a matmul.

Forward-mode and Taylor-mode transforms seed their directions with an identity basis
(marked by transforms/basis.mark_identity_basis: only those constants are folded, never a
user's tensor, which may change in place after compiling)
for jacfwd, hessian, laplacian, divergence, and the transposes of those contractions meet it
again in reverse mode: the cotangent of sum_i <e_i, J e_i> is s * eye broadcast over the
points, and its products with a layer's weight, dot_general(s*I, W), cost N*d*d*h
multiply-adds for a result that is s * W's columns. This pass finds operands whose value is
s * delta(axis p, axis q), constant along every other axis (an identity graph constant
through reshapes that add or drop unit dims, broadcast_in_dim, transpose, and products with
a scalar `full` or literal), and rewrites the contraction with the other operand X:

  - one of p, q contracted (with X's axis c): X summed over its other contracted axes,
    axis c moved to the output position of the free one, broadcast over the identity
    operand's remaining free axes, times s;
  - both contracted, or either a batch axis: left as it is.

Exact for finite values (each output element is one product s * x, the rest of the sum
is zeros). Like JAX's symbolic zeros, the skipped products 0 * x no longer turn an inf or
NaN elsewhere in X's row into NaN (docs/sharp_bits.md).
"""
from __future__ import annotations

import torch

from ..core import Eqn, Graph, Literal, Var
from ..core.primitive import REGISTRY
from ..core.types import TensorType
from .passes import _Subst


class _Identity:
    """A value equal to scale * delta(axis p, axis q), constant along the other axes."""
    __slots__ = ("scale", "p", "q")

    def __init__(self, scale, p, q):
        self.scale, self.p, self.q = scale, p, q


def _is_identity_constant(c) -> bool:
    """A basis the transforms made (transforms/basis.mark_identity_basis), never a user's
    tensor: a closed-over tensor may be written in place after jit compiled against it."""
    if type(c) is not torch.Tensor or not getattr(c, "_functx_identity_basis", False):
        return False
    if c.dim() != 2 or c.shape[0] != c.shape[1] or c.shape[0] < 2:
        return False
    if not (c.dtype.is_floating_point or c.dtype.is_complex):
        return False
    return bool(torch.equal(c, torch.eye(c.shape[0], dtype=c.dtype, device=c.device)))


def _scalar(atom, defs):
    """The value of a scalar literal or a `full` (through views), else None."""
    if isinstance(atom, Literal):
        return atom.value if isinstance(atom.value, (int, float)) and not isinstance(atom.value, bool) else None
    e = defs.get(atom)
    while e is not None and e.prim.name in ("broadcast_in_dim", "reshape", "transpose"):
        e = defs.get(e.inputs[0]) if isinstance(e.inputs[0], Var) else None
    if e is not None and e.prim.name == "full" and isinstance(e.params["value"], (int, float)) \
            and not isinstance(e.params["value"], bool):
        return e.params["value"]
    return None


def _unit_positions(shape):
    return [i for i, n in enumerate(shape) if n != 1]


def _structure(atom, defs, ident) -> _Identity | None:
    """atom's identity structure, if it has one (ident: constvars equal to an identity)."""
    if not isinstance(atom, Var):
        return None
    if atom in ident:
        return _Identity(1, 0, 1)
    e = defs.get(atom)
    if e is None or not e.inputs or not isinstance(e.inputs[0], Var):
        return None
    name, x = e.prim.name, e.inputs[0]
    if name == "mul":
        a, b = e.inputs
        for s_atom, v_atom in ((a, b), (b, a)):
            if isinstance(v_atom, Var) and v_atom.type == e.outputs[0].type:
                s, inner = _scalar(s_atom, defs), _structure(v_atom, defs, ident)
                if s is not None and inner is not None:
                    return _Identity(inner.scale * s, inner.p, inner.q)
        return None
    inner = _structure(x, defs, ident)
    if inner is None:
        return None
    if name == "transpose":
        perm = list(e.params["permutation"])
        return _Identity(inner.scale, perm.index(inner.p), perm.index(inner.q))
    if name == "broadcast_in_dim":
        dims = e.params["broadcast_dimensions"]
        return _Identity(inner.scale, dims[inner.p], dims[inner.q])
    if name == "reshape":           # only unit dims inserted or dropped: the others keep their order
        src, dst = _unit_positions(x.type.shape), _unit_positions(e.outputs[0].type.shape)
        if [x.type.shape[i] for i in src] != [e.outputs[0].type.shape[i] for i in dst]:
            return None
        if inner.p not in src or inner.q not in src:
            return None
        return _Identity(inner.scale, dst[src.index(inner.p)], dst[src.index(inner.q)])
    return None


def _new(prim, inputs, shape, like, params, source):
    out = Var(TensorType(tuple(shape), like.type.dtype, like.type.device))
    return Eqn(REGISTRY[prim], inputs, [out], params, source), out


def _selection(e, ident_side, ident: _Identity, other: Var):
    """Equations computing dot_general e from `other` alone (or `other` itself, when it is
    the result), or None when the rule does not apply. ident_side: 0 if the identity
    operand is the lhs."""
    (lc, rc), (lb, rb) = e.params["dimension_numbers"]
    ic, oc = (lc, rc) if ident_side == 0 else (rc, lc)
    ib, ob = (lb, rb) if ident_side == 0 else (rb, lb)
    p, q = ident.p, ident.q
    if p in ib or q in ib or (p in ic) == (q in ic):
        return None
    free_ident, contracted = (p, q) if q in ic else (q, p)
    c = oc[list(ic).index(contracted)]                       # the other operand's selected axis
    out = e.outputs[0]
    eqns = []
    # 1. sum the other operand over its other contracted axes (the identity is constant there)
    summed = sorted(a for a in oc if a != c)
    x = other
    if summed:
        shape = [n for i, n in enumerate(x.type.shape) if i not in summed]
        eq, x = _new("reduce_sum", [x], shape, out, {"axes": tuple(summed)}, e.source)
        eqns.append(eq)
    kept = [i for i in range(other.type.ndim) if i not in summed]     # x's axes, as other's
    # 2. where each of x's axes goes in the output: batch axes first, then the lhs's free
    # axes, then the rhs's (dot_general's order)
    ident_ndim = len(e.inputs[ident_side].type.shape)
    ident_free = [i for i in range(ident_ndim) if i not in ic and i not in ib]
    other_free = [i for i in range(other.type.ndim) if i not in oc and i not in ob]
    nb = len(ob)
    free_start_ident = nb if ident_side == 0 else nb + len(other_free)
    free_start_other = nb + len(ident_free) if ident_side == 0 else nb
    dest = {}
    for k, a in enumerate(ob):
        dest[a] = k
    dest[c] = free_start_ident + ident_free.index(free_ident)
    for k, a in enumerate(other_free):
        dest[a] = free_start_other + k
    dims = [dest[a] for a in kept]
    # broadcast_in_dim needs increasing dims: transpose x first so that they are
    order = sorted(range(len(kept)), key=lambda i: dims[i])
    if order != list(range(len(kept))):
        shape = [x.type.shape[i] for i in order]
        eq, x = _new("transpose", [x], shape, out, {"permutation": tuple(order)}, e.source)
        eqns.append(eq)
        dims = sorted(dims)
    if ident.scale != 1:          # on the small operand, before the broadcast
        eq, x = _new("mul", [x, Literal(float(ident.scale))], x.type.shape, out, {}, e.source)
        eqns.append(eq)
    if tuple(x.type.shape) != tuple(out.type.shape) or dims != list(range(out.type.ndim)):
        eq, x = _new("broadcast_in_dim", [x], out.type.shape, out,
                     {"shape": tuple(out.type.shape), "broadcast_dimensions": tuple(dims)}, e.source)
        eqns.append(eq)
    if not eqns:
        return x          # the other operand is the result itself
    last = eqns[-1]
    eqns[-1] = Eqn(last.prim, last.inputs, [out], last.params, last.source)
    return eqns


def fold_identity_dots(graph: Graph) -> Graph:
    """dot_general against a scaled broadcast identity becomes a sum/transpose/broadcast of
    the other operand (see the module docstring)."""
    ident = {v for v, c in zip(graph.constvars, graph.consts) if _is_identity_constant(c)}
    if not ident:
        return graph
    sub, defs, eqns, changed = _Subst(), {}, [], False
    for e in graph.eqns:
        e = sub.eqn(e)
        repl = None
        if e.prim.name == "dot_general" and e.outputs[0].type.dtype.is_floating_point:
            for side in (0, 1):
                s = _structure(e.inputs[side], defs, ident)
                other = e.inputs[1 - side]
                if s is not None and isinstance(other, Var) and other.type.dtype == e.outputs[0].type.dtype:
                    repl = _selection(e, side, s, other)
                    if repl is not None:
                        break
        if isinstance(repl, Var):
            sub.map[e.outputs[0]] = repl
            changed = True
            continue
        for r in repl or [e]:
            for v in r.outputs:
                defs[v] = r
            eqns.append(r)
        changed = changed or repl is not None
    return sub.finish(graph, eqns) if changed else graph
