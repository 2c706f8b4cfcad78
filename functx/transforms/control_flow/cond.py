"""functx.cond / switch: the cond primitive, holding one closed sub-graph per branch.

  cond(index, *operands; branches)   branches[clamp(index)](*operands). Operands include the
      branches' closed-over values (closure conversion), so every trace sees them.
      jvp: a primal cond plus a tangent cond over the jvp'd branches (the tangent branches
      recompute the primal they need, so linearize records only the tangent cond). Effects
      (debug prints) run in the primal cond only: they are dropped from the tangent branches.
      transpose: a cond over the transposed branches (the index is never linear).
      batch: unbatched index -> a cond of the vmapped branches; batched index -> every branch
      runs and `where` selects per element (JAX's rule).

With a concrete predicate (eager use, or eager transforms), cond just runs the Python
function: only traced predicates build primitives.
"""
from __future__ import annotations

import torch

from ...core import STRUCTURAL, FunctxError, Primitive, Zero
from ...core.ir import drop_effects, live_eqns, random_draws
from ...core.trace import Tracer, UndefinedPrimal, eval_graph, type_of
from ...frontend import unwrap, wrap
from ... import prims as P
from ...prims.creation import instantiate
from ...prims.shape import bdim_to_front
from ..ad import jvp_flat, vjp_flat
from ...tree_util import tree_flatten, tree_unflatten
from .common import closed_graph, dce_graph, graph_fn, index_value, is_float, join_graphs, run_batched, trace_user, \
    weak_carry

__all__ = ["cond", "switch", "cond_p"]

def _cond_type(index_t, *types, branches):
    return list(branches[0].out_types)


def _cond_impl(index, *ops, branches):
    i = min(max(int(index), 0), len(branches) - 1)
    return eval_graph(branches[i], [], list(ops))


def _cond_jvp(primals, tangents, *, branches):
    index, ops, tans = primals[0], list(primals[1:]), list(tangents[1:])
    outs = cond_p.bind(index, *ops, branches=branches)
    nz = [not isinstance(t, Zero) for t in tans]
    out_types = branches[0].out_types
    float_out = [is_float(t) for t in out_types]
    op_types = [type_of(o) for o in ops]
    nz_types = [type_of(t) for t, m in zip(tans, nz) if m]

    def tangent_branch(g):
        def fn(*xs):
            prim, ts = list(xs[:len(ops)]), iter(xs[len(ops):])
            t_in = [next(ts) if m else Zero(t) for m, t in zip(nz, op_types)]
            _, t_out = jvp_flat(lambda a: eval_graph(g, [], a), prim, t_in)
            return [instantiate(t) for t, f in zip(t_out, float_out) if f]
        tg, cs = closed_graph(fn, op_types + nz_types)
        # the primal cond above runs the branch's prints and its draws
        tg = tg.replace(eqns=live_eqns(drop_effects(tg), keep_unused_draws=False)[0])
        draws = random_draws(tg)
        if draws:       # the tangent cond recomputes the branch: it would draw other numbers
            raise FunctxError(
                f"functx.cond: a branch draws random numbers ({', '.join(sorted(set(draws)))}) that its "
                "derivative needs; differentiating it would redraw them and give a wrong derivative. "
                "Draw the random values outside the cond and pass them in as operands.")
        return tg, cs
    tbranches, consts = join_graphs([tangent_branch(g) for g in branches])
    t_vals = iter(cond_p.bind(index, *consts, *ops, *[t for t in tans if not isinstance(t, Zero)],
                              branches=tbranches))
    return outs, [next(t_vals) if f else Zero(t) for f, t in zip(float_out, out_types)]


def _cond_transpose(cts, index, *args, branches):
    if isinstance(index, UndefinedPrimal):
        raise FunctxError("functx.cond: the branch index can't be a linear input")
    lin = [isinstance(a, UndefinedPrimal) for a in args]
    res = [a for a, l in zip(args, lin) if not l]
    res_types = [type_of(r) for r in res]
    lin_types = [a.aval for a, l in zip(args, lin) if l]
    out_types = branches[0].out_types
    cts = [instantiate(c) if isinstance(c, Zero) else c for c in cts]

    def transposed(g):
        def fn(*xs):
            r_vals, c = list(xs[:len(res)]), list(xs[len(res):])

            def linear(ts):               # the branch as a function of its linear inputs only
                it_t, it_r = iter(ts), iter(r_vals)
                return eval_graph(g, [], [next(it_t) if l else next(it_r) for l in lin])
            # g is linear in those inputs, so its vjp at zero is its transpose
            zeros = [P.full(t.shape, 0, t.dtype, t.device) for t in lin_types]
            _, pullback, _ = vjp_flat(linear, zeros)
            return [instantiate(x) for x in pullback(c)]
        g2, cs = closed_graph(fn, res_types + out_types)
        return dce_graph(g2), cs          # (the dead primal work on the zeros, as scan's transpose)
    tb, consts = join_graphs([transposed(g) for g in branches])
    lin_cts = iter(cond_p.bind(index, *consts, *res, *cts, branches=tb))
    return [None] + [next(lin_cts) if l else None for l in lin]


def _cond_batch(axis, args, dims, *, branches):
    index, ops = args[0], list(args[1:])
    idx_dim, op_dims = dims[0], list(dims[1:])
    if idx_dim is None:
        op_types = [type_of(o) for o in ops]
        bb, consts = join_graphs([closed_graph(lambda *xs, g=g: run_batched(graph_fn(g), axis, op_dims, xs), op_types)
                            for g in branches])
        outs = cond_p.bind(index, *consts, *ops, branches=bb)
        return outs, [0] * len(outs)
    # A batched index: run every branch, select per element.
    idx = bdim_to_front(index, idx_dim, axis.size)
    idx = P.convert(idx, torch.int64)
    n = len(branches)
    results = [run_batched(graph_fn(g), axis, op_dims, ops) for g in branches]
    outs = list(results[0])
    for i in range(1, n):
        hit = P.ge(idx, i) if i == n - 1 else P.eq(idx, i)     # clamp: indices past the end pick the last
        for k, o in enumerate(results[i]):
            t = type_of(o)
            mask = P.broadcast_in_dim(hit, t.shape, (0,))
            outs[k] = P.where(mask, o, outs[k])
    return outs, [0] * len(outs)


cond_p = Primitive(
    "cond", kind=STRUCTURAL, multiple_results=True,
    abstract_eval=_cond_type,
    impl=_cond_impl,
    jvp=_cond_jvp,
    transpose=_cond_transpose,
    batch=_cond_batch)


def switch(index, branches, *operands):
    """branches[clamp(index, 0, len-1)](*operands), traceable under jit and vmap (JAX's lax.switch)."""
    what = "functx.switch"
    branches = list(branches)
    if not branches:
        raise ValueError(f"{what}: needs at least one branch")
    operands = weak_carry(operands)[0]       # Python numbers: 0-d tensors, as JAX's weak values
    idx = index_value(index, what)
    if not isinstance(idx, Tracer):          # concrete: plain Python control flow
        i = min(max(int(idx), 0), len(branches) - 1)
        return weak_carry(branches[i](*operands), operands)[0]
    leaves, in_tree = tree_flatten(operands)
    for i, l in enumerate(leaves):
        if not isinstance(l, (torch.Tensor, Tracer)):
            raise TypeError(f"{what}: operand leaf {i} is a {type(l).__name__}; pass tensors as operands "
                            "and close over other values")
    ops = [unwrap(l) for l in leaves]
    types = [type_of(o) for o in ops]
    traced = [trace_user(b, in_tree, types, f"{what}: branch {i}", ops) for i, b in enumerate(branches)]
    trees = [t for _, _, t in traced]
    for i, (g, _, tree) in enumerate(traced[1:], 1):
        if tree != trees[0] or [str(t) for t in g.out_types] != [str(t) for t in traced[0][0].out_types]:
            raise TypeError(f"{what}: branches must return the same structure, shapes and dtypes: branch 0 "
                            f"returns {trees[0]} {traced[0][0].out_types}, branch {i} returns {tree} "
                            f"{g.out_types}")
    graphs, consts = join_graphs([(g, cs) for g, cs, _ in traced])
    outs = cond_p.bind(idx, *consts, *ops, branches=graphs)
    return tree_unflatten(trees[0], [wrap(o) for o in outs])


def cond(pred, true_fun, false_fun, *operands):
    """true_fun(*operands) if pred else false_fun(*operands), traceable under jit and vmap
    (JAX's lax.cond). Under vmap with a batched pred both branches run and results are selected.
    Python numbers among the operands are passed as 0-d tensors (JAX's weak values)."""
    idx = index_value(pred, "functx.cond")
    if not isinstance(idx, Tracer):
        ops = weak_carry(operands)[0]
        return weak_carry((true_fun if bool(idx) else false_fun)(*ops), ops)[0]
    return switch(P.convert(idx, torch.int64) if type_of(idx).dtype == torch.bool else idx,
                  [false_fun, true_fun], *operands)


