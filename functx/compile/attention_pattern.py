"""The pass `fuse_attention`: softmax(q @ k^T * scale + bias) @ v, written out, becomes the
fused attention primitive (functx/kernels/attention.py).

Matched in the traced graph (so under jit, on the function as traced; a transform applied
before jit has already differentiated the pattern): two batched matmuls (dot_general, as
torch's matmul lowers them: directly, or between reshapes that merge the leading dims),
functx's softmax over the last dim (reduce_max, of stop_gradient or under it or, after
simplify, without it; sub, exp, reduce_sum, div),
an optional multiplication or division by a Python number and an optional added bias (a
tensor of q's dtype, broadcast to the scores). k may come transposed (`k.transpose(-2, -1)`
or `k.mT`) or already as (..., D, S). Every intermediate must be used only inside the
pattern (a returned or reused score or probability matrix keeps the explicit form). The
result equals the explicit one up to float rounding (half inputs: softmax in float32).
Each rewrite is recorded in graph.meta.rewrites, which functx.explain prints.
"""
from __future__ import annotations

import math
from dataclasses import replace

from ..core import Eqn, Graph, Literal, Var
from ..core.primitive import REGISTRY
from ..kernels.attention import attention_p
from .passes import use_counts

_FLOATS = {"float16", "bfloat16", "float32", "float64"}


def _def(defs, uses, var, name, n_uses=1):
    """The equation defining var if it is a `name` and var has exactly n_uses uses."""
    e = defs.get(var) if isinstance(var, Var) else None
    if e is None or e.prim.name != name or uses[var] != n_uses:
        return None
    return e


def _unmerge(x, lead, defs):
    """x itself if it is (*lead, m, n); the reshape's input if x merges lead into one dim."""
    if tuple(x.type.shape[:-2]) == tuple(lead):
        return x
    e = defs.get(x)
    if e is not None and e.prim.name == "reshape":
        src = e.inputs[0]
        if (isinstance(src, Var) and tuple(src.type.shape[:-2]) == tuple(lead)
                and src.type.shape[-2:] == x.type.shape[-2:]):
            return src
    return None


def _matmul(var, defs, uses):
    """(x, y, rhs_transposed) when var = x @ y over equal leading dims (rhs_transposed: y is
    (..., N, K), contracted on its last dim), possibly as reshape(dot_general(reshape(x),
    reshape(y)))."""
    e = defs.get(var) if isinstance(var, Var) else None
    lead = tuple(var.type.shape[:-2]) if isinstance(var, Var) else ()
    if e is not None and e.prim.name == "reshape" and uses[e.inputs[0]] == 1:
        e = defs.get(e.inputs[0])
    if e is None or e.prim.name != "dot_general":
        return None
    if tuple(e.outputs[0].type.shape[-2:]) != tuple(var.type.shape[-2:]):     # the reshape only splits the batch
        return None
    x, y = e.inputs
    (lc, rc), (lb, rb) = e.params["dimension_numbers"]
    nb = len(lb)
    if not (isinstance(x, Var) and isinstance(y, Var)) or lb != tuple(range(nb)) or rb != lb:
        return None
    if x.type.ndim != nb + 2 or y.type.ndim != nb + 2 or lc != (nb + 1,) or rc not in ((nb,), (nb + 1,)):
        return None
    x, y = _unmerge(x, lead, defs), _unmerge(y, lead, defs)
    if x is None or y is None:
        return None
    return x, y, rc == (nb + 1,)


def _softmax_input(p, defs, uses):
    """s when p = softmax(s, -1) as functx lowers it (every intermediate used only there)."""
    last, kept = (p.type.ndim - 1,), tuple(range(p.type.ndim - 1))
    div = defs.get(p)
    if div is None or div.prim.name != "div":
        return None
    e, bz = div.inputs
    b = _def(defs, uses, bz, "broadcast_in_dim")
    z = b and _def(defs, uses, b.inputs[0], "reduce_sum")
    ex = z and _def(defs, uses, e, "exp", 2)
    if not (ex and z.inputs[0] is e and z.params["axes"] == last and b.params["broadcast_dimensions"] == kept):
        return None
    sub = _def(defs, uses, ex.inputs[0], "sub")
    bm = sub and _def(defs, uses, sub.inputs[1], "broadcast_in_dim")
    # the max is taken of stop_gradient(s), or stop_gradient is applied to the max
    sg = bm and _def(defs, uses, bm.inputs[0], "stop_gradient")
    mx = sg and _def(defs, uses, sg.inputs[0], "reduce_max")
    max_of = mx and mx.inputs[0]
    if bm and not mx:
        mx = _def(defs, uses, bm.inputs[0], "reduce_max")
        sg = mx and _def(defs, uses, mx.inputs[0], "stop_gradient")
        max_of = sg.inputs[0] if sg else mx and mx.inputs[0]     # simplify drops stop_gradient
    s = sub and sub.inputs[0]
    if not (mx and max_of is s and mx.params["axes"] == last and uses[s] == 2
            and bm.params["broadcast_dimensions"] == kept):
        return None
    return s


def _scaled_scores(s, defs, uses, n_uses):
    """(x, y, rhs_transposed, scale) when s = (x @ y) * c, / c, or x @ y, and s has n_uses uses."""
    if not isinstance(s, Var) or uses[s] != n_uses:
        return None
    e = defs.get(s)
    scale = 1.0
    if e is not None and e.prim.name in ("mul", "div"):
        a, b = e.inputs
        if e.prim.name == "mul" and isinstance(a, Literal):
            a, b = b, a
        if isinstance(b, Literal) and isinstance(b.value, (int, float)) and not isinstance(b.value, bool):
            scale = float(b.value) if e.prim.name == "mul" else 1.0 / float(b.value)
            s = a
            if not isinstance(s, Var) or uses[s] != 1:
                return None
    m = _matmul(s, defs, uses)
    return None if m is None else (*m, scale)


def _bias_operand(b, full_shape, defs, new_eqns):
    """b (added to the scores) as a bias of the scores' rank whose dims are 1 or full."""
    n = len(full_shape)
    e = defs.get(b)
    if e is not None and e.prim.name == "broadcast_in_dim":
        src, dims = e.inputs[0], tuple(e.params["broadcast_dimensions"])
        if not isinstance(src, Var) or list(dims) != sorted(dims):
            return None
        shape = [1] * n
        for d, size in zip(dims, src.type.shape):
            shape[d] = size
        if any(s not in (1, f) for s, f in zip(shape, full_shape)):
            return None
        if tuple(shape) == tuple(src.type.shape):
            return src
        out = Var(src.type.with_shape(tuple(shape)))
        new_eqns.append(Eqn(REGISTRY["reshape"], [src], [out], {"shape": tuple(shape)}))
        return out
    return b if tuple(b.type.shape) == tuple(full_shape) else None


def _match(e, defs, uses):
    """(new equations, attention output) replacing e's output, or None."""
    out = e.outputs[0] if len(e.outputs) == 1 else None
    if out is None or e.prim.name not in ("dot_general", "reshape"):
        return None
    pv = _matmul(out, defs, uses)
    if pv is None or pv[2]:
        return None
    p, v, _ = pv
    if uses[p] != 1:
        return None
    s = _softmax_input(p, defs, uses)
    if s is None:
        return None
    bias, qk = None, _scaled_scores(s, defs, uses, 2)
    add = defs.get(s)
    if qk is None and add is not None and add.prim.name == "add" and all(isinstance(a, Var) for a in add.inputs):
        for a, b in (add.inputs, add.inputs[::-1]):
            qk = _scaled_scores(a, defs, uses, 1)
            if qk is not None:
                bias = b
                break
    if qk is None:
        return None
    q, k, k_is_rows, scale = qk
    if not (q.type.dtype == k.type.dtype == v.type.dtype and str(q.type.dtype)[6:] in _FLOATS):
        return None
    new_eqns = []
    if not k_is_rows:           # k came as (..., D, S): the primitive takes (..., S, D)
        perm = tuple(range(k.type.ndim - 2)) + (k.type.ndim - 1, k.type.ndim - 2)
        kt = Var(k.type.with_shape(tuple(k.type.shape[i] for i in perm)))
        new_eqns.append(Eqn(REGISTRY["transpose"], [k], [kt], {"permutation": perm}))
        k = kt
    args = [q, k, v]
    if bias is not None:
        if bias.type.dtype != q.type.dtype:
            return None
        b = _bias_operand(bias, s.type.shape, defs, new_eqns)
        if b is None:
            return None
        args.append(b)
    params = {"causal": False, "scale": scale, "has_bias": bias is not None}
    try:
        out_type, lse_type = attention_p.abstract_eval(*[a.type for a in args], **params)
    except TypeError:
        return None
    if out_type != out.type:
        return None
    att, lse = Var(out_type), Var(lse_type)
    new_eqns.append(Eqn(attention_p, args, [att, lse], params, e.source))
    return new_eqns, att


def fuse_attention(graph: Graph) -> Graph:
    """softmax(q @ k^T * scale + bias) @ v -> attention (module docstring)."""
    if not any(e.prim.name == "exp" for e in graph.eqns):
        return graph
    defs = {v: e for e in graph.eqns for v in e.outputs}
    uses = use_counts(graph)
    eqns, subst, lines = [], {}, []
    for e in graph.eqns:
        if subst:
            e = Eqn(e.prim, [subst.get(a, a) if isinstance(a, Var) else a for a in e.inputs],
                    e.outputs, e.params, e.source)
        m = _match(e, defs, uses)
        if m is None:
            eqns.append(e)
            continue
        new_eqns, att = m
        eqns += new_eqns
        subst[e.outputs[0]] = att
        a = new_eqns[-1]
        lines.append(f"rewrite: softmax(q @ k^T{'' if math.isclose(a.params['scale'], 1.0) else ' * scale'}"
                     f"{' + bias' if a.params['has_bias'] else ''}) @ v -> attention "
                     f"{tuple(att.type.shape)} (functx/kernels)")
    if not lines:
        return graph
    meta = replace(graph.meta, rewrites=tuple(graph.meta.rewrites) + tuple(lines))
    return graph.replace(eqns=eqns, outvars=[subst.get(a, a) if isinstance(a, Var) else a for a in graph.outvars],
                         meta=meta)
