"""functx.while_loop: the while_loop primitive, holding the cond and body sub-graphs.

  while_loop(*cond_consts, *body_consts, *carry; cond_graph, body_graph, n_cc, n_bc)
      jvp: a while over (primal, tangent) carries.  batch: runs while any element's predicate
      holds, freezing finished elements with `where`.  Reverse mode (which JAX lacks): under
      linearize the forward loop records a tape of carries (max_steps long) and the tangent
      is a masked scan over that tape, transposed like any scan (while_reverse.py).

With a concrete predicate (eager use, or eager transforms), while_loop is a Python loop.
"""
from __future__ import annotations

import contextlib

import torch

from ...core import STRUCTURAL, FunctxError, Primitive, Zero
from ...core.ir import Graph, drop_effects
from ...core.trace import GraphTracer, Tracer, eval_graph, staged_or_batched, type_of
from ...frontend import unwrap, wrap
from ... import prims as P
from ...prims.creation import instantiate
from ...prims.debug import quiet_callbacks
from ...prims.shape import bdim_to_front
from ..ad import jvp_flat
from ...tree_util import tree_flatten, tree_unflatten
from .while_reverse import linearize_while
from .common import closed_graph, graph_fn, index_value, is_float, promote_weak, run_batched, trace_user, \
    weak_carry

__all__ = ["while_loop", "while_loop_p"]

def _while_type(*types, cond_graph, body_graph, n_cc, n_bc, max_steps):
    return list(types[n_cc + n_bc:])


def _while_impl(*args, cond_graph, body_graph, n_cc, n_bc, max_steps):
    cc, bc, carry = list(args[:n_cc]), list(args[n_cc:n_cc + n_bc]), list(args[n_cc + n_bc:])
    while bool(eval_graph(cond_graph, [], cc + carry)[0]):
        carry = eval_graph(body_graph, [], bc + carry)
    return carry


def _while_jvp(primals, tangents, *, cond_graph, body_graph, n_cc, n_bc, max_steps):
    if any(isinstance(t, GraphTracer) and not t._trace.stage_all for t in tangents):
        # under linearize: a forward loop recording a tape, then a scan over it (while_reverse.py)
        return linearize_while(while_loop_p, primals, tangents, cond_graph=cond_graph, body_graph=body_graph,
                               n_cc=n_cc, n_bc=n_bc, max_steps=max_steps)
    cc, bc, carry = primals[:n_cc], list(primals[n_cc:n_cc + n_bc]), list(primals[n_cc + n_bc:])
    bc_t, carry_t = tangents[n_cc:n_cc + n_bc], tangents[n_cc + n_bc:]
    bc_nz = [not isinstance(t, Zero) for t in bc_t]
    carry_types = [type_of(c) for c in carry]
    cf = [is_float(t) for t in carry_types]           # every float carry gets a tangent
    nb, nc = len(bc), len(carry)
    bc_types = [type_of(b) for b in bc]

    def body(*xs):
        b, bt, c, ct = (list(xs[:nb]), iter(xs[nb:nb + sum(bc_nz)]), list(xs[nb + sum(bc_nz):nb + sum(bc_nz) + nc]),
                        iter(xs[nb + sum(bc_nz) + nc:]))
        t_in = [next(bt) if m else Zero(t) for m, t in zip(bc_nz, bc_types)]
        t_in += [next(ct) if f else Zero(t) for f, t in zip(cf, carry_types)]
        out, t_out = jvp_flat(lambda a: eval_graph(body_graph, [], a), b + c, t_in)
        return list(out) + [instantiate(t) for t, f in zip(t_out, cf) if f]

    t_types = [t for t, f in zip(carry_types, cf) if f]
    bgraph, bconsts = closed_graph(body, bc_types + [type_of(t) for t, m in zip(bc_t, bc_nz) if m]
                              + carry_types + t_types)
    cgraph, cconsts = closed_graph(lambda *xs: eval_graph(cond_graph, [], list(xs[:n_cc + nc])),
                              [type_of(c) for c in cc] + carry_types + t_types)
    carry_t_vals = [instantiate(t) for t, f in zip(carry_t, cf) if f]
    b_ops = bconsts + bc + [t for t in bc_t if not isinstance(t, Zero)]
    c_ops = cconsts + list(cc)
    outs = while_loop_p.bind(*c_ops, *b_ops, *carry, *carry_t_vals, cond_graph=cgraph, body_graph=bgraph,
                             n_cc=len(c_ops), n_bc=len(b_ops), max_steps=max_steps)
    primal, tans = outs[:nc], iter(outs[nc:])
    return primal, [next(tans) if f else Zero(t) for f, t in zip(cf, carry_types)]


def _while_transpose(cts, *args, **params):
    raise FunctxError("functx.while_loop: internal error: a while_loop was recorded as linear; linearize "
                      "turns it into a forward loop with a tape and a linear scan")


def _while_batch(axis, args, dims, *, cond_graph, body_graph, n_cc, n_bc, max_steps):
    cc, bc, carry = list(args[:n_cc]), list(args[n_cc:n_cc + n_bc]), list(args[n_cc + n_bc:])
    ccd, bcd = list(dims[:n_cc]), list(dims[n_cc:n_cc + n_bc])
    carry = [bdim_to_front(c, d, axis.size) for c, d in zip(carry, dims[n_cc + n_bc:])]
    nc = len(carry)
    carry_d = [0] * nc
    quiet_cond = drop_effects(cond_graph)            # bbody's re-evaluation: bcond prints once a step

    def preds(c_consts, c, graph=cond_graph):
        (p,) = run_batched(graph_fn(graph), axis, ccd + carry_d, list(c_consts) + list(c))
        return p                                     # bool[B]

    def bcond(*xs):
        p = P.convert(preds(xs[:n_cc], xs[n_cc:]), torch.int32)
        return [P.gt(P.reduce_max(p, (0,)), 0)]      # loop while any element's predicate holds

    def bbody(*xs):
        c_consts, b_consts, c = xs[:n_cc], xs[n_cc:n_cc + n_bc], list(xs[n_cc + n_bc:])
        p = preds(c_consts, c, quiet_cond)
        new = run_batched(graph_fn(body_graph), axis, bcd + carry_d, list(b_consts) + c)
        return [P.where(P.broadcast_in_dim(p, type_of(n).shape, (0,)), n, o) for n, o in zip(new, c)]

    types = [type_of(x) for x in cc + bc + carry]
    cgraph, cconsts = closed_graph(lambda *xs: bcond(*xs[:n_cc], *xs[n_cc + n_bc:]), types)
    bgraph, bconsts = closed_graph(bbody, types)
    # both sub-graphs take (cond consts, body consts, carry); their own closures go in front
    c_ops = cconsts + cc + bc
    b_ops = bconsts + cc + bc
    cg = Graph(cgraph.invars, [], [], cgraph.eqns, cgraph.outvars)
    outs = while_loop_p.bind(*c_ops, *b_ops, *carry, cond_graph=cg, body_graph=bgraph,
                             n_cc=len(c_ops), n_bc=len(b_ops), max_steps=max_steps)
    return outs, [0] * nc


while_loop_p = Primitive(
    "while_loop", kind=STRUCTURAL, multiple_results=True,
    abstract_eval=_while_type,
    impl=_while_impl,
    jvp=_while_jvp,
    transpose=_while_transpose,
    batch=_while_batch)


def while_loop(cond_fun, body_fun, init_val, max_steps=None):
    """while cond_fun(val): val = body_fun(val); return val — traceable under jit and vmap
    (JAX's lax.while_loop). With a concrete predicate it is a Python loop (every transform
    sees ordinary code). With a traced one (jit, batched under vmap) it is a primitive:
    forward mode works as is; reverse mode (grad, vjp) needs max_steps, the size of the tape
    of carries the forward loop records (a loop running longer raises); the backward pass
    runs the steps taken (under vmap, max_steps masked steps: lanes stop at different steps).
    Python numbers in init_val are taken as in scan (0-d tensors, dtype following the body)."""
    what = "functx.while_loop"
    if max_steps is not None and (not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1):
        raise TypeError(f"{what}: max_steps must be a positive int or None, got {max_steps!r}")
    init_val, weak = weak_carry(init_val)
    leaves, tree = tree_flatten(init_val)
    args_tree = tree_flatten((init_val,))[1]         # _trace_user splats the argument tuple
    for i, l in enumerate(leaves):
        if not isinstance(l, (torch.Tensor, Tracer)):
            raise TypeError(f"{what}: init_val leaf {i} is a {type(l).__name__}; the carry must be tensors")
    quiet = staged_or_batched()

    def probe(val):
        # Is the predicate concrete? Under jit/vmap a traced probe's prints would be recorded
        # beside the loop's own evaluations of cond_fun: it runs quietly, and again if concrete.
        with quiet_callbacks() if quiet else contextlib.nullcontext():
            p = index_value(cond_fun(val), f"{what}: cond_fun")
        return index_value(cond_fun(val), f"{what}: cond_fun") if quiet and not isinstance(p, Tracer) else p
    p = probe(init_val)
    if not isinstance(p, Tracer):
        # A concrete predicate (eager use, eager transforms): a Python loop, so transforms see
        # the body as ordinary code (grad included). If the predicate becomes traced (batched
        # by the body under vmap), the primitive takes over from there.
        val = init_val
        while bool(p):
            val = body_fun(val)
            p = probe(val)
            if isinstance(p, Tracer):
                return while_loop(cond_fun, body_fun, val, max_steps)
        return val
    carry = [unwrap(l) for l in leaves]
    types = [type_of(c) for c in carry]
    cg, cconsts, ctree = trace_user(cond_fun, args_tree, types, f"{what}: cond_fun")
    if len(cg.outvars) != 1 or cg.out_types[0].shape not in ((), (1,)) or cg.out_types[0].dtype != torch.bool:
        raise TypeError(f"{what}: cond_fun must return a boolean scalar, got {cg.out_types}")
    if cg.out_types[0].shape == (1,):
        cg, cconsts = closed_graph(lambda *xs: [P.reshape(eval_graph(cg, [], list(xs))[0], ())],
                              [type_of(c) for c in cconsts] + types)
    bg, bconsts, btree = trace_user(body_fun, args_tree, types, f"{what}: body_fun", carry)
    if btree == tree and (promoted := promote_weak(init_val, weak, [t.dtype for t in bg.out_types])) is not None:
        return while_loop(cond_fun, body_fun, promoted, max_steps)
    if btree != tree or [str(t) for t in bg.out_types] != [str(t) for t in types]:
        raise TypeError(f"{what}: body_fun must return the carry's structure, shapes and dtypes: "
                        f"carry {tree} {types}, body_fun returned {btree} {bg.out_types}")
    outs = while_loop_p.bind(*cconsts, *bconsts, *carry, cond_graph=cg, body_graph=bg,
                             n_cc=len(cconsts), n_bc=len(bconsts), max_steps=max_steps)
    return tree_unflatten(tree, [wrap(o) for o in outs])


