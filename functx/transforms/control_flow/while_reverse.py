"""Reverse mode through while_loop (JAX has none): linearize records a tape.

The forward loop carries, besides the user's carry, a step counter and a tape of
max_steps carries (tape[i] = the carry step i started from), and stops early with a clear
error if the loop would need more. The trip count n is then known (a value, not a Python
int, so this works under jit and vmap too), and the tangent is a scan over the tape of
max_steps steps whose step k applies the body's jvp at tape[k] when k < n and is the
identity otherwise; linearize records that scan, whose transpose is the reverse scan. The
scan's trip_count names n, so both loops run the n steps taken, not max_steps (under vmap
the lanes' counts differ and every lane runs max_steps, masked).
Unused tape entries hold the initial carry, so masked steps differentiate the body at a
value it accepts (never 0 * inf).

The tape is written by `tape_write` (tape[step] = carry): functionally a scatter, but jit's
generated code writes it in place (`index_copy_`) into a buffer the generated while loop
copies once before it starts (compile/loops.emit_while), so a step costs one carry's copy,
not the whole tape's.
"""
from __future__ import annotations

import torch

from ...core import EXTERN, FunctxError, Primitive, Zero
from ...core.ir import drop_effects
from ...core.trace import eval_graph, type_of
from ... import prims as P
from ...prims.creation import instantiate
from ..ad import jvp_flat
from .common import closed_graph, dce_graph, is_float, run_batched
from .scan import scan_p

__all__ = ["linearize_while", "tape_check_p", "tape_write_p"]


def _check_impl(steps, exceeded, *, max_steps):
    if bool(exceeded):
        raise FunctxError(f"functx.while_loop: the loop ran more than max_steps={max_steps} steps, the size "
                          "of the tape reverse mode records; pass a larger max_steps")
    return steps


def _check_batch(axis, args, dims, *, max_steps):
    steps, exceeded = args
    if dims[1] is not None:           # any lane past the tape is an error
        exceeded = P.gt(P.reduce_max(P.convert(exceeded, torch.int32), (dims[1],)), 0)
    return tape_check_p.bind(steps, exceeded, max_steps=max_steps), dims[0]


tape_check_p = Primitive(
    "while_tape_check", kind=EXTERN,
    abstract_eval=lambda steps, exceeded, *, max_steps: steps,
    impl=_check_impl,
    jvp=lambda primals, tangents, *, max_steps: (tape_check_p.bind(*primals, max_steps=max_steps),
                                                 Zero(type_of(primals[0]))),
    batch=_check_batch)


def _write_as_scatter(tape, step, value):
    return P.scatter(tape, P.reshape(step, (1,)), P.reshape(value, (1,) + tuple(type_of(value).shape)), 0)


def _write_jvp(primals, tangents):
    (tape, step, _), (t_tape, _, t_value) = primals, tangents
    if isinstance(t_tape, Zero) and isinstance(t_value, Zero):
        return tape_write_p.bind(*primals), Zero(type_of(tape))
    return tape_write_p.bind(*primals), _write_as_scatter(instantiate(t_tape), step, instantiate(t_value))


def _write_batch(axis, args, dims):
    # batched (per-lane steps under vmap): the functional scatter, batched by its own rule
    return run_batched(lambda *a: [_write_as_scatter(*a)], axis, list(dims), list(args))[0], 0


def _write_emit(eqn, srcs):
    """In place: only a loop that owns the buffer may run this (compile/loops.emit_while
    copies the tape once before its loop; the tape is read by nothing else in the body)."""
    tape, step, value = srcs
    return f"{tape}.index_copy_(0, {step}.reshape(1), {value}.unsqueeze(0))"


tape_write_p = Primitive(
    "while_tape_write", kind=EXTERN,
    abstract_eval=lambda tape, step, value: tape,
    impl=lambda tape, step, value: tape.index_copy(0, step.reshape(1), value.unsqueeze(0)),
    jvp=_write_jvp, batch=_write_batch, emit=_write_emit)


def linearize_while(while_loop_p, primals, tangents, *, cond_graph, body_graph, n_cc, n_bc, max_steps):
    if max_steps is None:
        raise FunctxError(
            "functx.while_loop: reverse-mode differentiation (grad, vjp, jacrev) of a while_loop with a "
            "traced predicate needs max_steps=N, the size of the tape of carries the forward loop "
            "records (a loop running longer raises). Or use functx.scan / fori_loop for a fixed count.")
    cc, bc, carry = list(primals[:n_cc]), list(primals[n_cc:n_cc + n_bc]), list(primals[n_cc + n_bc:])
    bc_t = list(tangents[n_cc:n_cc + n_bc])
    carry_t = list(tangents[n_cc + n_bc:])
    nc = len(carry)
    cc_types, bc_types = [type_of(c) for c in cc], [type_of(b) for b in bc]
    carry_types = [type_of(c) for c in carry]
    tape_types = [t.with_shape((max_steps,) + tuple(t.shape)) for t in carry_types]
    device = carry_types[0].device
    step_type = type_of(P.full((), 0, torch.int64, device))
    aug_types = [step_type] + carry_types + tape_types

    def aug_cond(*xs):                     # (cond consts, step, carry, tapes)
        c = list(xs[n_cc + 1:n_cc + 1 + nc])
        (p,) = eval_graph(cond_graph, [], list(xs[:n_cc]) + c)
        return [P.bitwise_and(p, P.lt(xs[n_cc], max_steps))]

    def aug_body(*xs):                     # (body consts, step, carry, tapes): record, then step
        step, c, tapes = xs[n_bc], list(xs[n_bc + 1:n_bc + 1 + nc]), xs[n_bc + 1 + nc:]
        new = eval_graph(body_graph, [], list(xs[:n_bc]) + c)
        tapes = [tape_write_p.bind(tp, step, v) for tp, v in zip(tapes, c)]
        return [P.add(step, 1)] + list(new) + tapes
    cg, cconsts = closed_graph(aug_cond, cc_types + aug_types)
    bg, bconsts = closed_graph(aug_body, bc_types + aug_types)
    tapes0 = [P.broadcast_in_dim(c, t.shape, tuple(range(1, t.ndim))) for c, t in zip(carry, tape_types)]
    outs = while_loop_p.bind(*cconsts, *cc, *bconsts, *bc, P.full((), 0, torch.int64, device), *carry, *tapes0,
                             cond_graph=cg, body_graph=bg, n_cc=len(cconsts) + n_cc, n_bc=len(bconsts) + n_bc,
                             max_steps=max_steps)
    steps, carry_out, tapes = outs[0], list(outs[1:1 + nc]), list(outs[1 + nc:])
    (exceeded,) = eval_graph(drop_effects(cond_graph), [], cc + carry_out)     # the loop ran cond's prints
    steps = tape_check_p.bind(steps, exceeded, max_steps=max_steps)

    # The tangent: a masked scan over the tape, linear in the tangents.
    cf = [is_float(t) for t in carry_types]
    bc_nz = [not isinstance(t, Zero) for t in bc_t]
    n_bt = sum(bc_nz)
    nb = len(bc)

    def tangent_step(*xs):                 # (body consts, steps, body tangents, carry tangents, tape[k], k)
        b, n = list(xs[:nb]), xs[nb]
        bt = iter(xs[nb + 1:nb + 1 + n_bt])
        ct = list(xs[nb + 1 + n_bt:nb + 1 + n_bt + sum(cf)])
        primal_c, k = list(xs[nb + 1 + n_bt + sum(cf):-1]), xs[-1]
        it = iter(ct)
        t_in = ([next(bt) if m else Zero(t) for m, t in zip(bc_nz, bc_types)]
                + [next(it) if f else Zero(t) for f, t in zip(cf, carry_types)])
        _, t_out = jvp_flat(lambda a: eval_graph(body_graph, [], a), b + primal_c, t_in)
        active = P.lt(k, n)
        new = [instantiate(t) for t, f in zip(t_out, cf) if f]
        return [P.where(P.broadcast_in_dim(active, type_of(o).shape, ()), v, o) for v, o in zip(new, ct)]
    float_types = [t for t, f in zip(carry_types, cf) if f]
    in_types = (bc_types + [step_type] + [type_of(t) for t, m in zip(bc_t, bc_nz) if m] + float_types
                + carry_types + [step_type])
    tg, tconsts = closed_graph(tangent_step, in_types)
    tg = dce_graph(drop_effects(tg))                  # the forward loop ran the body's prints, once a step
    ks = P.iota((max_steps,), 0, torch.int64, device)
    t_outs = scan_p.bind(*tconsts, *bc, steps, *[t for t, m in zip(bc_t, bc_nz) if m],
                         *[instantiate(t) for t, f in zip(carry_t, cf) if f], *tapes, ks, body=tg,
                         num_consts=len(tconsts) + nb + 1 + n_bt, num_carry=sum(cf), length=max_steps,
                         reverse=False, unroll=1, remat=False,
                         trip_count=len(tconsts) + nb)      # steps k >= n are masked identities: skip them
    it = iter(t_outs)
    return carry_out, [next(it) if f else Zero(t) for f, t in zip(cf, carry_types)]
