"""The scan primitive: a loop over the leading axis of its xs, holding its body graph once
(JAX's lax.scan), so tracing a 1000-step scan records one equation.

  scan(*consts, *carry, *xs; body, num_consts, num_carry, length, reverse, unroll, remat, trip_count)
      body: (consts, carry, x) -> (carry, y), a closed graph; ys come back stacked.
      trip_count: None, or the index of a const holding a 0-d integer n: the builder's promise
      that steps n.. (in xs order) are identities on the carry with zero ys, so loops run only
      the first n (while_loop's masked tangent scan over its tape, and that scan's transpose,
      run the steps taken, not max_steps). An optimization only: rules that cannot keep the
      promise track drop it.
  jvp: the fused form is one scan over (primal, tangent) carries. Under linearize (the
      tangents belong to a partial-evaluation trace) the rule splits instead, as JAX's
      _scan_partial_eval does: a primal scan that also stacks, per iteration, the residuals
      of the linearized body, and a linear tangent scan over those residuals, which is what
      linearize records. Residuals that are loop-invariant (consts, closed-over values) or
      already stacked (xs) are passed as they are, not stacked again. With remat=True the
      residuals are the body's inputs only and the tangent body recomputes the rest.
  transpose: a scan in the opposite direction whose body is the body's transpose (its vjp
      with respect to the linear inputs); cotangents of linear consts accumulate in the carry.
  batch: one scan with a batched body; every carry is batched, batched xs move their batch
      dim behind the scanned axis.
"""
from __future__ import annotations

import torch

from ...core import STRUCTURAL, FunctxError, Primitive, Zero
from ...core.ir import Eqn, Graph, Var, drop_effects, has_effects, live_eqns, random_draws
from ...core.trace import GraphTracer, UndefinedPrimal, eval_graph, type_of
from ... import prims as P
from ...prims.creation import instantiate, zeros_like_type
from ...prims.shape import bdim_to_front, moveaxis
from ..ad import jvp_flat, linearize_flat, vjp_flat
from .common import PRUNE, closed_graph, dce_graph, is_float, run_batched, slice_type, stacked_type
from .scan_revolve import scan_tangent_p

__all__ = ["scan_p", "run_scan"]


def _split(seq, num_consts, num_carry):
    seq = list(seq)
    return seq[:num_consts], seq[num_consts:num_consts + num_carry], seq[num_consts + num_carry:]


def _nonzero(t):
    return not isinstance(t, Zero)


def _scan_type(*types, body, num_consts, num_carry, length, reverse, unroll, remat, trip_count=None):
    out = body.out_types
    return list(out[:num_carry]) + [stacked_type(t, length) for t in out[num_carry:]]


def run_scan(body_fn, consts, carry, xs, ys_types, length, reverse, trips=None):
    """The loop itself: body_fn(*consts, *carry, *x) -> carry + y, ys written in place into
    buffers allocated once (no list of per-step tensors to stack). trips: run only the steps
    before it (the rest are identities with zero ys)."""
    nc = len(carry)
    new = torch.empty if trips is None else torch.zeros
    ys = [new(tuple(t.shape), dtype=t.dtype, device=t.device) for t in ys_types]
    n = length if trips is None else max(0, min(length, int(trips)))
    for i in (range(n - 1, -1, -1) if reverse else range(n)):
        out = body_fn(*consts, *carry, *[x[i] for x in xs])
        carry = out[:nc]
        for buf, y in zip(ys, out[nc:]):
            buf[i] = y
    return list(carry) + ys


def _scan_impl(*args, body, num_consts, num_carry, length, reverse, unroll, remat, trip_count=None):
    consts, carry, xs = _split(args, num_consts, num_carry)
    ys_types = _scan_type(*[type_of(a) for a in args], body=body, num_consts=num_consts, num_carry=num_carry,
                          length=length, reverse=reverse, unroll=unroll, remat=remat)[num_carry:]
    return run_scan(lambda *a: eval_graph(body, body.consts, list(a)), consts, carry, xs, ys_types, length, reverse,
                    None if trip_count is None else consts[trip_count])


# ---------------------------------------------------------------- jvp

def _jvp_body(body, in_nz, out_inst):
    """The body's jvp as a closed graph (primals..., nonzero tangents...) -> (primal outs...,
    tangent outs that are nonzero or in out_inst), and which tangent outs are nonzero."""
    types = body.in_types
    n = len(types)
    pattern = {}

    def fn(*xs):
        ts = iter(xs[n:])
        t_in = [next(ts) if m else Zero(t) for m, t in zip(in_nz, types)]
        out, t_out = jvp_flat(lambda a: eval_graph(body, [], a), list(xs[:n]), t_in)
        pattern["nz"] = nz = [_nonzero(t) for t in t_out]
        return list(out) + [instantiate(t) for t, a, b in zip(t_out, nz, out_inst) if a or b]
    g, consts = closed_graph(fn, types + [t for t, m in zip(types, in_nz) if m])
    return g, consts, pattern["nz"]


def _carry_pattern(body, const_nz, carry_nz, x_nz, num_carry):
    """Which carries have nonzero tangents: the fixpoint of 'nonzero in or nonzero out'."""
    carry_types = body.in_types[len(const_nz):len(const_nz) + num_carry]
    while True:
        _, _, out_nz = _jvp_body(body, const_nz + carry_nz + x_nz, [False] * len(body.outvars))
        new = [a or (b and is_float(t)) for a, b, t in zip(carry_nz, out_nz[:num_carry], carry_types)]
        if new == carry_nz:
            return carry_nz
        carry_nz = new


def _reorder(graph, in_order, out_order):
    return Graph([graph.invars[i] for i in in_order], [], [], graph.eqns, [graph.outvars[i] for i in out_order])


def _under_linearize(tangents):
    """Tangents of a partial-evaluation trace: linearize is recording the tangent program."""
    return any(isinstance(t, GraphTracer) and not t._trace.stage_all for t in tangents)


def _scan_jvp(primals, tangents, *, body, num_consts, num_carry, length, reverse, unroll, remat, trip_count=None):
    # trip_count is dropped: the jvp'd scans run every step (correct, as the promise is only an optimization)
    consts, carry, xs = _split(primals, num_consts, num_carry)
    const_t, carry_t, x_t = _split(tangents, num_consts, num_carry)
    const_nz = [_nonzero(t) for t in const_t]
    x_nz = [_nonzero(t) for t in x_t]
    carry_nz = _carry_pattern(body, const_nz, [_nonzero(t) for t in carry_t], x_nz, num_carry)
    carry_t = [instantiate(t) if m else t for t, m in zip(carry_t, carry_nz)]
    params = dict(length=length, reverse=reverse, unroll=unroll, remat=remat)
    split = _scan_partial_eval if _under_linearize(tangents) else _scan_jvp_fused
    return split(body, num_consts, num_carry, consts, carry, xs, const_t, carry_t, x_t,
                 const_nz, carry_nz, x_nz, params)


def _scan_jvp_fused(body, num_consts, num_carry, consts, carry, xs, const_t, carry_t, x_t,
                    const_nz, carry_nz, x_nz, params):
    """One scan over (primal, tangent): forward mode, or jvp under jit/vmap/another jvp."""
    ny = len(body.outvars) - num_carry
    g, gconsts, out_nz = _jvp_body(body, const_nz + carry_nz + x_nz, carry_nz + [False] * ny)
    nk, nc, nx = len(gconsts), num_carry, len(xs)
    n_ct, n_cart = sum(const_nz), sum(carry_nz)
    # g's inputs: closure, consts, carry, xs, const tangents, carry tangents, x tangents
    t0 = nk + num_consts + nc + nx
    in_order = (list(range(nk + num_consts)) + list(range(t0, t0 + n_ct))
                + list(range(nk + num_consts, nk + num_consts + nc)) + list(range(t0 + n_ct, t0 + n_ct + n_cart))
                + list(range(nk + num_consts + nc, t0)) + list(range(t0 + n_ct + n_cart, len(g.invars))))
    y_nz = out_nz[nc:]
    n_yt = sum(y_nz)
    # g's outputs: carry, ys, carry tangents, y tangents
    out_order = (list(range(nc)) + list(range(nc + ny, nc + ny + n_cart)) + list(range(nc, nc + ny))
                 + list(range(nc + ny + n_cart, nc + ny + n_cart + n_yt)))
    fused = _reorder(g, in_order, out_order)
    nz_t = lambda ts, mask: [t for t, m in zip(ts, mask) if m]
    outs = scan_p.bind(*gconsts, *consts, *nz_t(const_t, const_nz), *carry, *nz_t(carry_t, carry_nz),
                       *xs, *nz_t(x_t, x_nz), body=fused, num_consts=nk + num_consts + n_ct,
                       num_carry=nc + n_cart, **params)
    carry_out, cart_out = outs[:nc], iter(outs[nc:nc + n_cart])
    ys, yt_out = outs[nc + n_cart:nc + n_cart + ny], iter(outs[nc + n_cart + ny:])
    out_types = [type_of(o) for o in list(carry_out) + list(ys)]
    tans = [next(cart_out) if m else Zero(t) for m, t in zip(carry_nz, out_types[:nc])]
    tans += [next(yt_out) if m else Zero(t) for m, t in zip(y_nz, out_types[nc:])]
    return list(carry_out) + list(ys), tans


def _scan_partial_eval(body, num_consts, num_carry, consts, carry, xs, const_t, carry_t, x_t,
                       const_nz, carry_nz, x_nz, params):
    """Under linearize: a primal scan stacking residuals, then a linear tangent scan."""
    remat = params["remat"]
    if isinstance(remat, tuple):
        return _scan_partial_eval_binomial(body, num_consts, num_carry, consts, carry, xs, const_t, carry_t, x_t,
                                           const_nz, carry_nz, x_nz, params)
    in_nz = const_nz + carry_nz + x_nz
    types = body.in_types
    nc = num_carry
    ny = len(body.outvars) - nc
    store = {}

    if remat:
        # Residuals: the body's own inputs; the tangent body recomputes the primal from them.
        fwd, fconsts = Graph(body.invars, [], [], body.eqns, body.outvars + body.invars), []
    else:
        def fwd_fn(*vals):
            out, lin, nonzero = linearize_flat(lambda a: eval_graph(body, [], a), list(vals), has_tangent=in_nz)
            store["lin"], store["nonzero"] = lin, nonzero
            return list(out) + list(lin.consts)
        fwd, fconsts = closed_graph(fwd_fn, types)
    nk = len(fconsts)
    invariant_vars = fwd.invars[:nk + num_consts]
    invariant_vals = list(fconsts) + list(consts)
    x_vars = fwd.invars[nk + num_consts + nc:]
    # Each residual: loop-invariant (passed once), an xs (already stacked) or stacked per iteration.
    res_kind, stacked_out = [], []
    for r in fwd.outvars[nc + ny:]:
        if r in invariant_vars:
            res_kind.append(("const", invariant_vars.index(r)))
        elif r in x_vars:
            res_kind.append(("x", x_vars.index(r)))
        else:
            res_kind.append(("stacked", len(stacked_out)))
            stacked_out.append(r)
    primal_body = Graph(fwd.invars, [], [], fwd.eqns, fwd.outvars[:nc + ny] + stacked_out)
    outs = scan_p.bind(*fconsts, *consts, *carry, *xs, body=primal_body, num_consts=nk + num_consts,
                       num_carry=nc, **params)
    primal_out, stacked = outs[:nc + ny], outs[nc + ny:]

    # The tangent scan's inputs: residual consts, tangent consts/carry/xs, residual xs.
    res_c_idx = sorted({k for kind, k in res_kind if kind == "const"})
    res_x_idx = sorted({k for kind, k in res_kind if kind == "x"})
    res_c = [invariant_vals[k] for k in res_c_idx]
    res_x = [xs[k] for k in res_x_idx] + list(stacked)
    nz_types = [t for t, m in zip(types, in_nz) if m]
    n_t = len(nz_types)
    n_rc = len(res_c)
    res_x_types = [slice_type(type_of(v)) for v in res_x]

    def residuals(rc, rx):
        """The residual values inside the tangent body, in the order the body wants them."""
        vals = []
        for kind, k in res_kind:
            if kind == "const":
                vals.append(rc[res_c_idx.index(k)])
            elif kind == "x":
                vals.append(rx[res_x_idx.index(k)])
            else:
                vals.append(rx[len(res_x_idx) + k])
        return vals

    def tangent_body(*a):
        rc, ts, rx = list(a[:n_rc]), list(a[n_rc:n_rc + n_t]), list(a[n_rc + n_t:])
        it = iter(ts)
        t_full = [next(it) if m else Zero(t) for m, t in zip(in_nz, types)]
        if remat:
            primal = residuals(rc, rx)[:len(types)]
            _, t_out = jvp_flat(lambda q: eval_graph(body, [], q), primal, t_full)
        else:
            lin, nonzero = store["lin"], store["nonzero"]
            vals = iter(eval_graph(lin, residuals(rc, rx), ts))
            t_out = [next(vals) if m else Zero(t) for m, t in zip(nonzero, body.out_types)]
        if any(_nonzero(t) and not m for t, m in zip(t_out[:nc], carry_nz)):
            raise FunctxError("functx.scan: internal error: a carry's tangent pattern did not converge")
        store["y_nz"] = [_nonzero(t) for t in t_out[nc:]]
        return ([instantiate(t) for t, m in zip(t_out[:nc], carry_nz) if m]
                + [t for t in t_out[nc:] if _nonzero(t)])
    tan_g, tconsts = closed_graph(tangent_body, [type_of(v) for v in res_c] + nz_types + res_x_types)
    # the primal scan runs the body's prints and draws (remat recomputes the body)
    tan_g = tan_g.replace(eqns=live_eqns(drop_effects(tan_g), keep_unused_draws=False)[0])
    draws = random_draws(tan_g)
    if draws:
        raise FunctxError(
            f"functx.scan(remat={remat!r}): the body draws random numbers ({', '.join(sorted(set(draws)))}) "
            "that its derivative needs, and remat recomputes the body, which would redraw them and give "
            "a wrong derivative. Use remat=False, or draw the numbers outside the scan and pass them in xs.")
    n_ct, n_cart = sum(const_nz), sum(carry_nz)
    nz_t = lambda ts, mask: [t for t, m in zip(ts, mask) if m]
    # reorder inputs to (tconsts, res_c, const tangents) | carry tangents | x tangents, res_x
    nt0 = len(tconsts) + n_rc
    in_order = (list(range(nt0 + n_ct)) + list(range(nt0 + n_ct, nt0 + n_ct + n_cart))
                + list(range(nt0 + n_ct + n_cart, len(tan_g.invars))))
    tan_g = _reorder(tan_g, in_order, range(len(tan_g.outvars)))
    t_outs = scan_p.bind(*tconsts, *res_c, *nz_t(const_t, const_nz), *nz_t(carry_t, carry_nz),
                         *nz_t(x_t, x_nz), *res_x, body=tan_g, num_consts=nt0 + n_ct, num_carry=n_cart, **params)
    cart_out, yt_out = iter(t_outs[:n_cart]), iter(t_outs[n_cart:])
    out_types = [type_of(o) for o in primal_out]
    tans = [next(cart_out) if m else Zero(t) for m, t in zip(carry_nz, out_types[:nc])]
    tans += [next(yt_out) if m else Zero(t) for m, t in zip(store["y_nz"], out_types[nc:])]
    return list(primal_out), tans


def _scan_partial_eval_binomial(body, num_consts, num_carry, consts, carry, xs, const_t, carry_t, x_t,
                                const_nz, carry_nz, x_nz, params):
    """remat=('binomial', k) under linearize: a primal scan storing nothing per step, and one
    linear scan_tangent equation whose residuals are the scan's own inputs; its transpose
    recomputes carries by Revolve (scan_revolve.py)."""
    draws = random_draws(body)
    if draws:
        raise FunctxError(
            f"functx.scan(remat='binomial'): the body draws random numbers ({', '.join(sorted(set(draws)))}), "
            "and binomial checkpointing recomputes the body, which would redraw them and give a wrong "
            "derivative. Draw the numbers outside the scan and pass them in xs.")
    nc = num_carry
    ny = len(body.outvars) - nc
    _, _, out_nz = _jvp_body(body, const_nz + carry_nz + x_nz, carry_nz + [False] * ny)
    y_nz = out_nz[nc:]
    primal_out = scan_p.bind(*consts, *carry, *xs, body=body, num_consts=num_consts, num_carry=nc,
                             **dict(params, remat=False))
    quiet = drop_effects(body)                  # the primal scan runs the body's prints
    masks = (tuple(const_nz), tuple(carry_nz), tuple(x_nz), tuple(y_nz))
    nz_t = lambda ts, mask: [t for t, m in zip(ts, mask) if m]
    t_outs = scan_tangent_p.bind(*consts, *carry, *xs, *nz_t(const_t, const_nz), *nz_t(carry_t, carry_nz),
                                 *nz_t(x_t, x_nz), body=quiet, num_consts=num_consts, num_carry=nc, masks=masks,
                                 length=params["length"], reverse=params["reverse"], slots=params["remat"][1])
    out_types = [type_of(o) for o in primal_out]
    cart_out, yt_out = iter(t_outs[:sum(carry_nz)]), iter(t_outs[sum(carry_nz):])
    tans = [next(cart_out) if m else Zero(t) for m, t in zip(carry_nz, out_types[:nc])]
    tans += [next(yt_out) if m else Zero(t) for m, t in zip(y_nz, out_types[nc:])]
    return list(primal_out), tans


# ---------------------------------------------------------------- transpose

def _scan_transpose(cts, *args, body, num_consts, num_carry, length, reverse, unroll, remat, trip_count=None):
    consts, carry, xs = _split(args, num_consts, num_carry)
    # A linear scan carries only tangents; a carry that is not an UndefinedPrimal is a constant
    # tangent (an instantiated zero), transposed like the others but given no cotangent.
    lin_c = [isinstance(c, UndefinedPrimal) for c in consts]
    lin_x = [isinstance(x, UndefinedPrimal) for x in xs]
    res_c = [c for c, l in zip(consts, lin_c) if not l]
    res_x = [x for x, l in zip(xs, lin_x) if not l]
    types = body.in_types
    const_types, carry_types, x_types = _split(types, num_consts, num_carry)
    lc_types = [t for t, l in zip(const_types, lin_c) if l]
    lx_types = [t for t, l in zip(x_types, lin_x) if l]
    y_types = body.out_types[num_carry:]
    ct_carry = [instantiate(c) for c in cts[:num_carry]]
    ct_ys = list(cts[num_carry:])
    y_nz = [_nonzero(c) for c in ct_ys]
    n_rc, n_lc, nc = len(res_c), len(lc_types), num_carry
    n_yc = sum(y_nz)

    def transposed_body(*a):
        rc, acc = a[:n_rc], a[n_rc:n_rc + n_lc]
        ct_c, ct_y, rx = a[n_rc + n_lc:n_rc + n_lc + nc], iter(a[n_rc + n_lc + nc:n_rc + n_lc + nc + n_yc]), \
            a[n_rc + n_lc + nc + n_yc:]

        def linear(lin_vals):         # the body as a function of its linear inputs only
            it, irc, irx = iter(lin_vals), iter(rc), iter(rx)
            ins = ([next(it) if l else next(irc) for l in lin_c] + [next(it) for _ in carry_types]
                   + [next(it) if l else next(irx) for l in lin_x])
            return eval_graph(body, [], ins)
        # linear in those inputs, so its vjp at zero is its transpose
        _, pullback, _ = vjp_flat(linear, [zeros_like_type(t) for t in lc_types + carry_types + lx_types])
        cts_in = pullback(list(ct_c) + [next(ct_y) if m else Zero(t) for m, t in zip(y_nz, y_types)])
        cts_in = [instantiate(c) for c in cts_in]
        return ([P.add(s, c) for s, c in zip(acc, cts_in[:n_lc])] + cts_in[n_lc:n_lc + nc] + cts_in[n_lc + nc:])
    in_types = ([type_of(r) for r in res_c] + lc_types + carry_types + [t for t, m in zip(y_types, y_nz) if m]
                + [slice_type(type_of(r)) for r in res_x])
    tg, tconsts = closed_graph(transposed_body, in_types)
    tg = dce_graph(tg)
    outs = scan_p.bind(*tconsts, *res_c, *[zeros_like_type(t) for t in lc_types], *ct_carry,
                       *[c for c, m in zip(ct_ys, y_nz) if m], *res_x, body=tg,
                       num_consts=len(tconsts) + n_rc, num_carry=n_lc + nc, length=length,
                       reverse=not reverse, unroll=unroll, remat=remat,
                       # the count is a residual const: its place among the transposed scan's consts
                       trip_count=(None if trip_count is None or lin_c[trip_count]
                                   else len(tconsts) + sum(1 for l in lin_c[:trip_count] if not l)))
    ct_consts, ct_init, ct_xs = iter(outs[:n_lc]), outs[n_lc:n_lc + nc], iter(outs[n_lc + nc:])
    return ([next(ct_consts) if l else None for l in lin_c]
            + [c if isinstance(a, UndefinedPrimal) else None for a, c in zip(carry, ct_init)]
            + [next(ct_xs) if l else None for l in lin_x])


# ---------------------------------------------------------------- batch

def _scan_batch(axis, args, dims, *, body, num_consts, num_carry, length, reverse, unroll, remat, trip_count=None):
    consts, carry, xs = _split(args, num_consts, num_carry)
    const_d, _, x_d = _split(dims, num_consts, num_carry)
    # every carry batched at 0; batched xs as (length, batch, ...)
    carry = [bdim_to_front(c, d, axis.size) for c, d in zip(carry, dims[num_consts:num_consts + num_carry])]
    xs = [x if d is None else moveaxis(x, d, 1) for x, d in zip(xs, x_d)]
    x_dims = [None if d is None else 0 for d in x_d]
    in_types = [type_of(c) for c in consts] + [type_of(c) for c in carry] + [slice_type(type_of(x)) for x in xs]
    bg, bconsts = closed_graph(
        lambda *a: run_batched(lambda *v: eval_graph(body, [], list(v)), axis,
                               const_d + [0] * num_carry + x_dims, list(a)), in_types)
    outs = scan_p.bind(*bconsts, *consts, *carry, *xs, body=bg, num_consts=len(bconsts) + num_consts,
                       num_carry=num_carry, length=length, reverse=reverse, unroll=unroll, remat=remat,
                       # a per-lane count (batched) is dropped: lanes run every step
                       trip_count=(None if trip_count is None or const_d[trip_count] is not None
                                   else len(bconsts) + trip_count))
    return outs, [0] * num_carry + [1] * (len(outs) - num_carry)


scan_p = Primitive(
    "scan", kind=STRUCTURAL, multiple_results=True,
    abstract_eval=_scan_type,
    impl=_scan_impl,
    jvp=_scan_jvp,
    transpose=_scan_transpose,
    batch=_scan_batch)


def _scan_prune(eqn, used):
    """The scan computing only the used outputs (dce_graph): a carry stays while its output is
    used or the kept body reads it (a fixpoint); unread consts and xs go too."""
    p = eqn.params
    body, nk, nc = p["body"], p["num_consts"], p["num_carry"]
    carry_in = body.invars[nk:nk + nc]
    live_c, used_y = list(used[:nc]), list(used[nc:])
    while True:
        g = dce_graph(Graph(body.invars, [], [], body.eqns, [o for o, m in zip(body.outvars, live_c + used_y) if m]))
        reads = {a for e in g.eqns for a in e.inputs if isinstance(a, Var)} | {a for a in g.outvars if isinstance(a, Var)}
        new = [m or v in reads for m, v in zip(live_c, carry_in)]
        if new == live_c:
            break
        live_c = new
    if not any(live_c) and not any(used_y) and not any(has_effects(e) for e in g.eqns):
        return None
    tc = p.get("trip_count")
    keep_in = [v in reads or (i == tc) for i, v in enumerate(body.invars[:nk])] + live_c \
        + [v in reads for v in body.invars[nk + nc:]]
    if all(keep_in) and all(used):
        return eqn
    invars = [v for v, k in zip(body.invars, keep_in) if k]
    params = dict(p, body=g.replace(invars=invars), num_consts=sum(keep_in[:nk]), num_carry=sum(live_c))
    if tc is not None:
        params["trip_count"] = sum(keep_in[:tc])
    outputs = [o for o, m in zip(eqn.outputs, live_c + used_y) if m]
    return Eqn(eqn.prim, [a for a, k in zip(eqn.inputs, keep_in) if k], outputs, params, eqn.source)


PRUNE[scan_p] = _scan_prune
