"""Reverse mode through a scan with binomial checkpointing (scan(..., remat='binomial',
checkpoints=k)): the backward pass holds at most k carries and recomputes forward steps by
Griewank's Revolve schedule (core/revolve.py), the fewest any k-slot schedule needs.

Under linearize a scan with remat=('binomial', k) splits (scan.py) into a plain primal scan,
which stores nothing per step, and one linear equation:

  scan_tangent(*consts, *init, *xs, *const_t, *carry_t, *x_t; body, masks, ...)
      the tangents of the carry out and of the ys: the primal loop rerun from init alongside
      the tangents (linear in the tangents; consts, init and xs are its residuals).
  transpose -> scan_revolve(*tconsts, *consts, *init, *xs, *ct_carry, *ct_ys; body, tbody, ...)
      the cotangents of the consts, init and xs: Revolve recomputes each step's input carry
      from at most k stored ones, and tbody, the body's vjp at that carry, takes one step back.

Both batch by batching every operand (vmap(grad(...)) stays one loop). Their own derivatives
(forward over reverse through a binomial scan) raise: use remat=True or 'sqrt' there.
"""
from __future__ import annotations

import torch

from ...core import STRUCTURAL, FunctxError, Primitive, Zero
from ...core import revolve
from ...core.trace import UndefinedPrimal, eval_graph, type_of
from ...prims.creation import instantiate, zeros_like_type
from ...prims.shape import bdim_to_front, moveaxis
from ..ad import jvp_flat, vjp_flat
from .common import closed_graph, dce_graph, run_batched, stacked_type

__all__ = ["scan_tangent_p", "scan_revolve_p"]


def _pick(seq, mask):
    return [s for s, m in zip(seq, mask) if m]


def _order(length, reverse):
    """The index of xs at execution position p."""
    return (lambda p: length - 1 - p) if reverse else (lambda p: p)


# ---------------------------------------------------------------- scan_tangent (forward)

def _tangent_type(*types, body, num_consts, num_carry, masks, length, reverse, slots):
    const_nz, carry_nz, x_nz, y_nz = masks
    out = body.out_types
    return _pick(out[:num_carry], carry_nz) + [stacked_type(t, length) for t in _pick(out[num_carry:], y_nz)]


def _tangent_impl(*args, body, num_consts, num_carry, masks, length, reverse, slots):
    const_nz, carry_nz, x_nz, y_nz = masks
    nx = len(body.invars) - num_consts - num_carry
    consts, carry, xs, ct, cart, xt = revolve.split_groups(
        args, [num_consts, num_carry, nx, sum(const_nz), sum(carry_nz), sum(x_nz)])
    types = body.in_types
    const_tf = _fill(ct, const_nz, types[:num_consts])
    y_types = _pick(body.out_types[num_carry:], y_nz)
    ys = [torch.zeros((length,) + tuple(t.shape), dtype=t.dtype, device=t.device) for t in y_types]
    carry_t = _fill(cart, carry_nz, types[num_consts:num_consts + num_carry])
    at = _order(length, reverse)
    for p in range(length):
        i = at(p)
        x_tf = _fill([x[i] for x in xt], x_nz, types[num_consts + num_carry:])
        out, t_out = jvp_flat(lambda a: eval_graph(body, [], a), consts + carry + [x[i] for x in xs],
                              const_tf + carry_t + x_tf)
        carry = out[:num_carry]
        carry_t = [instantiate(t) if m else Zero(type_of(o)) for t, o, m in zip(t_out[:num_carry], carry, carry_nz)]
        for buf, t in zip(ys, _pick(t_out[num_carry:], y_nz)):
            buf[i] = instantiate(t)
    return _pick(carry_t, carry_nz) + ys


def _fill(vals, mask, types):
    it = iter(vals)
    return [next(it) if m else Zero(t) for m, t in zip(mask, types)]


def _transpose_body(body, num_consts, num_carry, masks):
    """tbody(*consts, *carry, *x, *ct_carry, *ct_y) -> (ct_consts, ct_carry, ct_x) for the
    nonzero ones: the body's vjp at (consts, carry, x) with respect to its tangent inputs."""
    const_nz, carry_nz, x_nz, y_nz = masks
    types = body.in_types
    in_nz = const_nz + carry_nz + x_nz
    nc_nz = sum(carry_nz)
    body = dce_graph(body)

    def tstep(*a):
        prim, ct_c, ct_y = list(a[:len(types)]), list(a[len(types):len(types) + nc_nz]), list(a[len(types) + nc_nz:])

        def lin(nz_vals):
            it = iter(nz_vals)
            out = eval_graph(body, [], [next(it) if m else v for v, m in zip(prim, in_nz)])
            return _pick(out[:num_carry], carry_nz) + _pick(out[num_carry:], y_nz)
        _, pullback, _ = vjp_flat(lin, _pick(prim, in_nz))
        return [instantiate(c) for c in pullback(ct_c + ct_y)]
    in_types = (list(types) + _pick(body.out_types[:num_carry], carry_nz)
                + _pick(body.out_types[num_carry:], y_nz))
    tg, tconsts = closed_graph(tstep, in_types)
    return dce_graph(tg), tconsts


def _tangent_transpose(cts, *args, body, num_consts, num_carry, masks, length, reverse, slots):
    const_nz, carry_nz, x_nz, y_nz = masks
    nx = len(body.invars) - num_consts - num_carry
    consts, carry, xs, ct_in, cart_in, xt_in = revolve.split_groups(
        args, [num_consts, num_carry, nx, sum(const_nz), sum(carry_nz), sum(x_nz)])
    if any(isinstance(a, UndefinedPrimal) for a in consts + carry + xs):
        raise FunctxError("functx.scan(remat='binomial'): internal error: a residual of the tangent loop is linear")
    out_types = _tangent_type(*[], body=body, num_consts=num_consts, num_carry=num_carry, masks=masks,
                              length=length, reverse=reverse, slots=slots)
    cts = [instantiate(c) if not isinstance(c, Zero) else zeros_like_type(t) for c, t in zip(cts, out_types)]
    tbody, tconsts = _transpose_body(body, num_consts, num_carry, masks)
    outs = scan_revolve_p.bind(*tconsts, *consts, *carry, *xs, *cts, body=body, tbody=tbody,
                               num_tconsts=len(tconsts), num_consts=num_consts, num_carry=num_carry,
                               masks=masks, length=length, reverse=reverse, slots=slots)
    n_ct, n_cart = sum(const_nz), sum(carry_nz)
    ct_consts, ct_carry, ct_xs = outs[:n_ct], outs[n_ct:n_ct + n_cart], outs[n_ct + n_cart:]
    lin = lambda vals, grads: [g if isinstance(v, UndefinedPrimal) else None for v, g in zip(vals, grads)]
    return [None] * (num_consts + num_carry + nx) + lin(ct_in, ct_consts) + lin(cart_in, ct_carry) + lin(xt_in, ct_xs)


# ---------------------------------------------------------------- scan_revolve (backward)

def _revolve_type(*types, body, tbody, num_tconsts, num_consts, num_carry, masks, length, reverse, slots):
    const_nz, carry_nz, x_nz, _ = masks
    ins = body.in_types
    return (_pick(ins[:num_consts], const_nz) + _pick(ins[num_consts:num_consts + num_carry], carry_nz)
            + [stacked_type(t, length) for t in _pick(ins[num_consts + num_carry:], x_nz)])


def _revolve_impl(*args, body, tbody, **params):
    out_types = _revolve_type(body=body, tbody=tbody, **params)
    return revolve.run_scan_revolve(lambda *a: eval_graph(body, [], list(a)), lambda *a: eval_graph(tbody, [], list(a)),
                       args, out_types=out_types, **params)


# ---------------------------------------------------------------- batching (both)

def _batch_body(graph, axis, n):
    """graph with every input and output batched at dim 0."""
    types = [t.with_shape((n,) + tuple(t.shape)) for t in graph.in_types]
    g, consts = closed_graph(lambda *a: run_batched(lambda *v: eval_graph(graph, [], list(v)), axis,
                                                    [0] * len(a), list(a)), types)
    return g, consts


def _batched_operands(args, dims, stacked, n):
    """Every operand batched: a per-step (stacked) one at dim 1, the others at dim 0."""
    out = []
    for a, d, s in zip(args, dims, stacked):
        if s:
            a = moveaxis(bdim_to_front(a, None, n), 0, 1) if d is None else moveaxis(a, d, 1)
        else:
            a = bdim_to_front(a, d, n)
        out.append(a)
    return out


def _tangent_batch(axis, args, dims, *, body, num_consts, num_carry, masks, length, reverse, slots):
    const_nz, carry_nz, x_nz, y_nz = masks
    nx = len(x_nz)
    stacked = [False] * (num_consts + num_carry) + [True] * nx + [False] * (sum(const_nz) + sum(carry_nz)) \
        + [True] * sum(x_nz)
    args = _batched_operands(args, dims, stacked, axis.size)
    bbody, bconsts = _batch_body(body, axis, axis.size)
    if bconsts:
        raise FunctxError("functx.scan(remat='binomial') under vmap: internal error: the batched body has constants")
    outs = scan_tangent_p.bind(*args, body=bbody, num_consts=num_consts, num_carry=num_carry, masks=masks,
                               length=length, reverse=reverse, slots=slots)
    return outs, [0] * sum(carry_nz) + [1] * sum(y_nz)


def _revolve_batch(axis, args, dims, *, body, tbody, num_tconsts, num_consts, num_carry, masks, length, reverse,
                   slots):
    const_nz, carry_nz, x_nz, y_nz = masks
    nx = len(x_nz)
    stacked = [False] * (num_tconsts + num_consts + num_carry) + [True] * nx + [False] * sum(carry_nz) \
        + [True] * sum(y_nz)
    args = _batched_operands(args, dims, stacked, axis.size)
    bbody, c1 = _batch_body(body, axis, axis.size)
    btbody, c2 = _batch_body(tbody, axis, axis.size)
    if c1 or c2:
        raise FunctxError("functx.scan(remat='binomial') under vmap: internal error: a batched body has constants")
    outs = scan_revolve_p.bind(*args, body=bbody, tbody=btbody, num_tconsts=num_tconsts, num_consts=num_consts,
                               num_carry=num_carry, masks=masks, length=length, reverse=reverse, slots=slots)
    return outs, [0] * (sum(const_nz) + sum(carry_nz)) + [1] * sum(x_nz)


def _no_jvp(name):
    def rule(primals, tangents, **params):
        raise FunctxError(f"functx.scan(remat='binomial'): {name} has no forward-mode rule (forward over reverse "
                          "through a binomially checkpointed scan, e.g. a Hessian); use remat=True or 'sqrt'")
    return rule


scan_tangent_p = Primitive(
    "scan_tangent", kind=STRUCTURAL, multiple_results=True,
    abstract_eval=_tangent_type, impl=_tangent_impl, jvp=_no_jvp("scan_tangent"),
    transpose=_tangent_transpose, batch=_tangent_batch)

scan_revolve_p = Primitive(
    "scan_revolve", kind=STRUCTURAL, multiple_results=True,
    abstract_eval=_revolve_type, impl=_revolve_impl, jvp=_no_jvp("scan_revolve"), batch=_revolve_batch)
