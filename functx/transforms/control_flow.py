"""Structured control flow: functx.cond / switch, functx.while_loop, functx.scan.

Python `if`/`while` on tensor values works in eager transforms but not under jit (values are
abstract) nor per element under vmap. These functions trace their branches/bodies into
closed sub-graphs held by a primitive, JAX's lax.cond / lax.while_loop:

  cond(index, *operands; branches)   branches[clamp(index)](*operands). Operands include the
      branches' closed-over values (closure conversion), so every trace sees them.
      jvp: a primal cond plus a tangent cond over the jvp'd branches (the tangent branches
      recompute the primal they need, so linearize records only the tangent cond).
      transpose: a cond over the transposed branches (the index is never linear).
      batch: unbatched index -> a cond of the vmapped branches; batched index -> every branch
      runs and `where` selects per element (JAX's rule).
  while_loop(*cond_consts, *body_consts, *carry; cond_graph, body_graph, n_cc, n_bc)
      jvp: a while over (primal, tangent) carries.  batch: runs while any element's predicate
      holds, freezing finished elements with `where`.  No transpose: reverse mode raises a
      clear error (the trip count is dynamic), as in JAX.
  scan: a Python loop over the leading axis (unrolled when traced), so it works under every
      transform, reverse mode included; graph size grows with the length.

With a concrete predicate (eager use, or eager transforms), cond and while_loop just run the
Python functions: only traced predicates build primitives.
"""
from __future__ import annotations

import torch

from ..core import STRUCTURAL, FunctxError, Primitive, Zero, current_trace, set_current_trace
from ..core.ir import Graph, Var
from ..core.trace import GraphTrace, GraphTracer, Tracer, UndefinedPrimal, eval_graph, type_of
from ..frontend import TracerTensor, unwrap, wrap
from ..frontend.random_mode import intercept_random
from .. import prims as P
from ..prims.creation import instantiate
from ..prims.shape import bdim_to_front
from .ad import jvp_flat, vjp_flat
from .batching import BatchTrace, BatchTracer
from ..tree_util import tree_flatten, tree_unflatten

__all__ = ["cond", "switch", "while_loop", "scan", "cond_p", "while_loop_p"]


def _float(t):
    return t is not None and (t.dtype.is_floating_point or t.dtype.is_complex)


# ---------------------------------------------------------------- tracing sub-graphs

def _closed(fn, in_types):
    """Trace fn (flat lax values -> flat lax values) at in_types -> (graph, consts): the graph's
    invars are its constvars (closure conversion) followed by the inputs; it has no consts."""
    trace = GraphTrace(current_trace(), stage_all=True)
    tracers = [trace.new_arg(t) for t in in_types]
    with set_current_trace(trace), intercept_random():
        outs = fn(*tracers)
    g = trace.to_graph(tracers, outs)
    closed = Graph(list(g.constvars) + list(g.invars), [], [], g.eqns, g.outvars)
    return closed, list(g.consts)


def _join(closed_list):
    """Branches traced separately -> graphs sharing one operand list: (all consts) + inputs."""
    consts, index = [], {}
    for _, cs in closed_list:
        for c in cs:
            if id(c) not in index:
                index[id(c)] = len(consts)
                consts.append(c)
    graphs = []
    for g, cs in closed_list:
        n_own = len(cs)
        own = {index[id(c)]: v for c, v in zip(cs, g.invars[:n_own])}
        head = [own.get(k) or Var(type_of(consts[k])) for k in range(len(consts))]
        graphs.append(Graph(head + list(g.invars[n_own:]), [], [], g.eqns, g.outvars))
    return tuple(graphs), consts


def _run_batched(fn, axis, dims, vals):
    """fn(*vals) under a fresh BatchTrace; outputs come back batched along dim 0."""
    trace = BatchTrace(current_trace(), axis)
    ins = [v if d is None else BatchTracer(trace, v, d) for v, d in zip(vals, dims)]
    with set_current_trace(trace):
        outs = fn(*ins)
    return [bdim_to_front(*trace.unpack(o), axis.size) for o in outs]


def _run(g):
    return lambda *xs: eval_graph(g, [], list(xs))


def _trace_user(fn, args_tree, types, what):
    """A user function over a pytree of tensors -> (closed graph, consts, out tree)."""
    store = {}

    def flat(*xs):
        out = fn(*tree_unflatten(args_tree, [wrap(x) for x in xs]))
        leaves, tree = tree_flatten(out)
        for i, l in enumerate(leaves):
            if not isinstance(l, (torch.Tensor, Tracer)):
                raise TypeError(f"{what}: output leaf {i} is a {type(l).__name__}; return tensors")
        store["tree"] = tree
        return [unwrap(l) for l in leaves]
    g, consts = _closed(flat, types)
    return g, consts, store["tree"]


# ---------------------------------------------------------------- cond



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
    float_out = [_float(t) for t in out_types]
    op_types = [type_of(o) for o in ops]
    nz_types = [type_of(t) for t, m in zip(tans, nz) if m]

    def tangent_branch(g):
        def fn(*xs):
            prim, ts = list(xs[:len(ops)]), iter(xs[len(ops):])
            t_in = [next(ts) if m else Zero(t) for m, t in zip(nz, op_types)]
            _, t_out = jvp_flat(lambda a: eval_graph(g, [], a), prim, t_in)
            return [instantiate(t) for t, f in zip(t_out, float_out) if f]
        return _closed(fn, op_types + nz_types)
    tbranches, consts = _join([tangent_branch(g) for g in branches])
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
        return _closed(fn, res_types + out_types)
    tb, consts = _join([transposed(g) for g in branches])
    lin_cts = iter(cond_p.bind(index, *consts, *res, *cts, branches=tb))
    return [None] + [next(lin_cts) if l else None for l in lin]


def _cond_batch(axis, args, dims, *, branches):
    index, ops = args[0], list(args[1:])
    idx_dim, op_dims = dims[0], list(dims[1:])
    if idx_dim is None:
        op_types = [type_of(o) for o in ops]
        bb, consts = _join([_closed(lambda *xs, g=g: _run_batched(_run(g), axis, op_dims, xs), op_types)
                            for g in branches])
        outs = cond_p.bind(index, *consts, *ops, branches=bb)
        return outs, [0] * len(outs)
    # A batched index: run every branch, select per element.
    idx = bdim_to_front(index, idx_dim, axis.size)
    idx = P.convert(idx, torch.int64)
    n = len(branches)
    results = [_run_batched(_run(g), axis, op_dims, ops) for g in branches]
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


def _index_value(pred, what):
    if isinstance(pred, (bool, int)):
        return pred
    if isinstance(pred, TracerTensor) or isinstance(pred, Tracer):
        v = unwrap(pred)
    elif isinstance(pred, torch.Tensor):
        v = pred
    else:
        raise TypeError(f"{what}: the predicate/index must be a bool, an int or a scalar tensor, "
                        f"got {type(pred).__name__}")
    t = type_of(v)
    if t.shape not in ((), (1,)):
        raise TypeError(f"{what}: the predicate/index must be a scalar, got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype.is_complex:
        raise TypeError(f"{what}: the predicate/index must be bool or integer, got {t.dtype}")
    if t.shape == (1,):
        v = P.reshape(v, ())
    return v


def switch(index, branches, *operands):
    """branches[clamp(index, 0, len-1)](*operands), traceable under jit and vmap (JAX's lax.switch)."""
    what = "functx.switch"
    branches = list(branches)
    if not branches:
        raise ValueError(f"{what}: needs at least one branch")
    idx = _index_value(index, what)
    if not isinstance(idx, Tracer):          # concrete: plain Python control flow
        i = min(max(int(idx), 0), len(branches) - 1)
        return branches[i](*operands)
    leaves, in_tree = tree_flatten(operands)
    for i, l in enumerate(leaves):
        if not isinstance(l, (torch.Tensor, Tracer)):
            raise TypeError(f"{what}: operand leaf {i} is a {type(l).__name__}; pass tensors as operands "
                            "and close over other values")
    ops = [unwrap(l) for l in leaves]
    types = [type_of(o) for o in ops]
    traced = [_trace_user(b, in_tree, types, f"{what}: branch {i}") for i, b in enumerate(branches)]
    trees = [t for _, _, t in traced]
    for i, (g, _, tree) in enumerate(traced[1:], 1):
        if tree != trees[0] or [str(t) for t in g.out_types] != [str(t) for t in traced[0][0].out_types]:
            raise TypeError(f"{what}: branches must return the same structure, shapes and dtypes: branch 0 "
                            f"returns {trees[0]} {traced[0][0].out_types}, branch {i} returns {tree} "
                            f"{g.out_types}")
    graphs, consts = _join([(g, cs) for g, cs, _ in traced])
    outs = cond_p.bind(idx, *consts, *ops, branches=graphs)
    return tree_unflatten(trees[0], [wrap(o) for o in outs])


def cond(pred, true_fun, false_fun, *operands):
    """true_fun(*operands) if pred else false_fun(*operands), traceable under jit and vmap
    (JAX's lax.cond). Under vmap with a batched pred both branches run and results are selected."""
    idx = _index_value(pred, "functx.cond")
    if not isinstance(idx, Tracer):
        return (true_fun if bool(idx) else false_fun)(*operands)
    return switch(P.convert(idx, torch.int64) if type_of(idx).dtype == torch.bool else idx,
                  [false_fun, true_fun], *operands)


# ---------------------------------------------------------------- while_loop



def _while_type(*types, cond_graph, body_graph, n_cc, n_bc):
    return list(types[n_cc + n_bc:])


def _while_impl(*args, cond_graph, body_graph, n_cc, n_bc):
    cc, bc, carry = list(args[:n_cc]), list(args[n_cc:n_cc + n_bc]), list(args[n_cc + n_bc:])
    while bool(eval_graph(cond_graph, [], cc + carry)[0]):
        carry = eval_graph(body_graph, [], bc + carry)
    return carry


def _while_jvp(primals, tangents, *, cond_graph, body_graph, n_cc, n_bc):
    if any(isinstance(t, GraphTracer) and not t._trace.stage_all for t in tangents):
        raise FunctxError(
            "functx.while_loop: reverse-mode differentiation (grad, vjp, jacrev) of a while_loop with "
            "a traced predicate is not supported: its trip count is dynamic. Use functx.scan for a "
            "fixed number of steps, or forward mode (jvp, jacfwd).")
    cc, bc, carry = primals[:n_cc], list(primals[n_cc:n_cc + n_bc]), list(primals[n_cc + n_bc:])
    bc_t, carry_t = tangents[n_cc:n_cc + n_bc], tangents[n_cc + n_bc:]
    bc_nz = [not isinstance(t, Zero) for t in bc_t]
    carry_types = [type_of(c) for c in carry]
    cf = [_float(t) for t in carry_types]           # every float carry gets a tangent
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
    bgraph, bconsts = _closed(body, bc_types + [type_of(t) for t, m in zip(bc_t, bc_nz) if m]
                              + carry_types + t_types)
    cgraph, cconsts = _closed(lambda *xs: eval_graph(cond_graph, [], list(xs[:n_cc + nc])),
                              [type_of(c) for c in cc] + carry_types + t_types)
    carry_t_vals = [instantiate(t) for t, f in zip(carry_t, cf) if f]
    b_ops = bconsts + bc + [t for t in bc_t if not isinstance(t, Zero)]
    c_ops = cconsts + list(cc)
    outs = while_loop_p.bind(*c_ops, *b_ops, *carry, *carry_t_vals, cond_graph=cgraph, body_graph=bgraph,
                             n_cc=len(c_ops), n_bc=len(b_ops))
    primal, tans = outs[:nc], iter(outs[nc:])
    return primal, [next(tans) if f else Zero(t) for f, t in zip(cf, carry_types)]


def _while_transpose(cts, *args, **params):
    raise FunctxError("functx.while_loop: reverse-mode differentiation is not supported (dynamic trip "
                      "count); use functx.scan for a fixed number of steps")


def _while_batch(axis, args, dims, *, cond_graph, body_graph, n_cc, n_bc):
    cc, bc, carry = list(args[:n_cc]), list(args[n_cc:n_cc + n_bc]), list(args[n_cc + n_bc:])
    ccd, bcd = list(dims[:n_cc]), list(dims[n_cc:n_cc + n_bc])
    carry = [bdim_to_front(c, d, axis.size) for c, d in zip(carry, dims[n_cc + n_bc:])]
    nc = len(carry)
    carry_d = [0] * nc

    def preds(c_consts, c):
        (p,) = _run_batched(_run(cond_graph), axis, ccd + carry_d, list(c_consts) + list(c))
        return p                                     # bool[B]

    def bcond(*xs):
        p = P.convert(preds(xs[:n_cc], xs[n_cc:]), torch.int32)
        return [P.gt(P.reduce_max(p, (0,)), 0)]      # loop while any element's predicate holds

    def bbody(*xs):
        c_consts, b_consts, c = xs[:n_cc], xs[n_cc:n_cc + n_bc], list(xs[n_cc + n_bc:])
        p = preds(c_consts, c)
        new = _run_batched(_run(body_graph), axis, bcd + carry_d, list(b_consts) + c)
        return [P.where(P.broadcast_in_dim(p, type_of(n).shape, (0,)), n, o) for n, o in zip(new, c)]

    types = [type_of(x) for x in cc + bc + carry]
    cgraph, cconsts = _closed(lambda *xs: bcond(*xs[:n_cc], *xs[n_cc + n_bc:]), types)
    bgraph, bconsts = _closed(bbody, types)
    # both sub-graphs take (cond consts, body consts, carry); their own closures go in front
    c_ops = cconsts + cc + bc
    b_ops = bconsts + cc + bc
    cg = Graph(cgraph.invars, [], [], cgraph.eqns, cgraph.outvars)
    outs = while_loop_p.bind(*c_ops, *b_ops, *carry, cond_graph=cg, body_graph=bgraph,
                             n_cc=len(c_ops), n_bc=len(b_ops))
    return outs, [0] * nc


while_loop_p = Primitive(
    "while_loop", kind=STRUCTURAL, multiple_results=True,
    abstract_eval=_while_type,
    impl=_while_impl,
    jvp=_while_jvp,
    transpose=_while_transpose,
    batch=_while_batch)


def while_loop(cond_fun, body_fun, init_val):
    """while cond_fun(val): val = body_fun(val); return val — traceable under jit and vmap
    (JAX's lax.while_loop). With a traced predicate (jit, batched under vmap) it is forward-mode
    differentiable and reverse mode raises (use scan); with a concrete one it is a Python loop."""
    what = "functx.while_loop"
    leaves, tree = tree_flatten(init_val)
    args_tree = tree_flatten((init_val,))[1]         # _trace_user splats the argument tuple
    for i, l in enumerate(leaves):
        if not isinstance(l, (torch.Tensor, Tracer)):
            raise TypeError(f"{what}: init_val leaf {i} is a {type(l).__name__}; the carry must be tensors")
    p = _index_value(cond_fun(init_val), f"{what}: cond_fun")
    if not isinstance(p, Tracer):
        # A concrete predicate (eager use, eager transforms): a Python loop, so transforms see
        # the body as ordinary code (grad included). If the predicate becomes traced (batched
        # by the body under vmap), the primitive takes over from there.
        val = init_val
        while bool(p):
            val = body_fun(val)
            p = _index_value(cond_fun(val), f"{what}: cond_fun")
            if isinstance(p, Tracer):
                return while_loop(cond_fun, body_fun, val)
        return val
    carry = [unwrap(l) for l in leaves]
    types = [type_of(c) for c in carry]
    cg, cconsts, ctree = _trace_user(cond_fun, args_tree, types, f"{what}: cond_fun")
    if len(cg.outvars) != 1 or cg.out_types[0].shape not in ((), (1,)) or cg.out_types[0].dtype != torch.bool:
        raise TypeError(f"{what}: cond_fun must return a boolean scalar, got {cg.out_types}")
    if cg.out_types[0].shape == (1,):
        cg, cconsts = _closed(lambda *xs: [P.reshape(eval_graph(cg, [], list(xs))[0], ())],
                              [type_of(c) for c in cconsts] + types)
    bg, bconsts, btree = _trace_user(body_fun, args_tree, types, f"{what}: body_fun")
    if btree != tree or [str(t) for t in bg.out_types] != [str(t) for t in types]:
        raise TypeError(f"{what}: body_fun must return the carry's structure, shapes and dtypes: "
                        f"carry {tree} {types}, body_fun returned {btree} {bg.out_types}")
    outs = while_loop_p.bind(*cconsts, *bconsts, *carry, cond_graph=cg, body_graph=bg,
                             n_cc=len(cconsts), n_bc=len(bconsts))
    return tree_unflatten(tree, [wrap(o) for o in outs])


# ---------------------------------------------------------------- scan

def scan(f, init, xs=None, length=None, reverse=False):
    """(carry, ys) with carry, y = f(carry, x) over the leading axis of xs (JAX's lax.scan).
    A Python loop: unrolled under tracing, so every transform (grad included) applies."""
    x_leaves, x_tree = tree_flatten(xs)
    if length is None:
        if not x_leaves:
            raise ValueError("functx.scan: pass xs or length")
        length = x_leaves[0].shape[0]
    for i, l in enumerate(x_leaves):
        if l.shape[0] != length:
            raise ValueError(f"functx.scan: xs leaf {i} has leading size {l.shape[0]}, expected {length}")
    carry, ys = init, []
    steps = range(length - 1, -1, -1) if reverse else range(length)
    for i in steps:
        x = tree_unflatten(x_tree, [l[i] for l in x_leaves]) if x_leaves else None
        carry, y = f(carry, x)
        ys.append(y)
    if reverse:
        ys.reverse()
    if not ys:
        return carry, None
    y_leaves = [tree_flatten(y)[0] for y in ys]
    y_tree = tree_flatten(ys[0])[1]
    stacked = [torch.stack([yl[k] for yl in y_leaves]) for k in range(len(y_leaves[0]))]
    return carry, tree_unflatten(y_tree, stacked)
