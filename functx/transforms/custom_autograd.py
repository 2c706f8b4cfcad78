"""custom_vjp / custom_jvp functions under PyTorch's own autograd.

A custom function evaluated eagerly on tensors that require grad while torch records (outside
functx's transforms, or on values they hold constant: a closed-over parameter) runs as a
torch.autograd.Function, so `loss.backward()` uses its rule, as it would a Function's:
  custom_vjp: forward is fwd (its residuals saved), backward is bwd;
  custom_jvp: backward is functx's vjp of the call, i.e. the jvp rule transposed.
Its backward is once_differentiable: a second derivative through torch's autograd raises
(functx's transforms differentiate the rules to any order).

functx.jit compiles a custom call's body (Primitive.inline) when no transform above it
differentiates, and torch's autograd would differentiate that body, not the rule: a trace
that inlines one notes it (core.trace.record_autograd_reads), so calls torch autograd
records run f as plain torch, through the Functions here.

A custom function made inside an eager loop / cond / checkpoint body that torch's autograd
reads (its graph keeps custom calls, core.trace.KEEP_CUSTOM_CALLS) may close over values the
body computes: tracers of the body's trace, gone when the graph runs. close_jvp_call /
close_vjp_call (Primitive.close_over) trace its callables to graphs and pass those values
as extra operands (closure conversion). A closed-over value that requires grad when the
graph runs: custom_jvp differentiates the jvp rule's primal output with respect to it (the
rule gives the derivative for the arguments only; JAX's outer levels do the same);
custom_vjp's bwd gives no cotangent for it, so its backward raises naming the function
(JAX refuses closed-over tracers there too); values that don't require grad are constants.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..core import FunctxError, current_trace, set_current_trace
from ..core.trace import GraphTrace, Tracer, eval_graph, note_autograd_read, record_autograd_reads, \
    torch_autograd_records, type_of
from .. import prims as P
from ..prims.creation import instantiate
from .ad import vjp_flat
from .jvp import JVPTrace, JVPTracer

__all__ = ["autograd_records", "note_inlined", "torch_custom_vjp", "torch_custom_jvp", "close_jvp_call",
           "close_vjp_call", "closure_grad_error", "closure_records", "jvp_of_code"]


def autograd_records(args) -> bool:
    """Whether torch's autograd records this eager call (an operand requires grad)."""
    return any(isinstance(a, torch.Tensor) and a.requires_grad for a in args) and torch_autograd_records()


def closure_records(outs) -> bool:
    """Whether outputs of a call on arguments torch's autograd does not record do require grad
    (the function closes over tensors that do, and torch records)."""
    return any(isinstance(o, torch.Tensor) and o.requires_grad for o in outs) and torch_autograd_records()


def note_inlined():
    """jit is compiling a custom call's body: calls torch autograd records must run plainly."""
    if record_autograd_reads.active:
        note_autograd_read()


def _float(t):
    return t.dtype.is_floating_point or t.dtype.is_complex


def _full_cts(cts, outs_meta):
    """torch's output gradients, a zero for each one it gives none (non-float outputs)."""
    return [c if c is not None else torch.zeros(shape, dtype=dtype, device=device)
            for c, (shape, dtype, device) in zip(cts, outs_meta)]


def _in_grads(ctx, grads, skip=2):
    return tuple(None if g is None or not ctx.needs_input_grad[i + skip] else g for i, g in enumerate(grads))


def closure_grad_error(name):
    return FunctxError(
        f"functx.custom_vjp function '{name}' closes over a tensor that requires grad (a value it does "
        "not take as an argument: computed outside it, e.g. in the enclosing scan / fori_loop / "
        "while_loop / cond / checkpoint body, or a parameter), and torch's autograd differentiates "
        "through it: its bwd rule gives no cotangent for that value, so the gradient would be wrong. "
        "Pass the value as an explicit argument of the function (bwd then returns its cotangent), "
        ".detach() it if it is a constant, or use functx.custom_jvp (closed-over values are "
        "differentiated through its body).")


def _detached(args):
    return [a.detach() if isinstance(a, torch.Tensor) else a for a in args]


def _grad_carriers(outs):
    """The outputs of a call on detached arguments that require grad: they depend on tensors the
    function closes over that require grad (computed with torch's autograd recording)."""
    return [k for k, o in enumerate(outs) if isinstance(o, torch.Tensor) and o.requires_grad]


class _CustomVJP(torch.autograd.Function):
    # inputs: outs, res (fwd's, computed on the detached arguments), bwd, closed, name, *args,
    # *carriers (outputs that carry the gradient of closed-over tensors, last: with the last
    # `closed` args, values bwd gives no cotangent for)
    @staticmethod
    def forward(ctx, outs, res, bwd, closed, name, *args):
        ctx.bwd, ctx.closed, ctx.name = bwd, closed, name
        ctx.outs_meta = [(o.shape, o.dtype, o.device) for o in outs]
        ctx.save_for_backward(*res)
        ctx.mark_non_differentiable(*[o for o in outs if not _float(o)])
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *cts):
        if ctx.closed and any(ctx.needs_input_grad[len(ctx.needs_input_grad) - ctx.closed:]):
            raise closure_grad_error(ctx.name)
        grads = ctx.bwd(list(ctx.saved_tensors), _full_cts(cts, ctx.outs_meta))
        return (None,) * 5 + _in_grads(ctx, grads, 5)


class _CustomJVP(torch.autograd.Function):
    # inputs: outs (fun's, on the detached arguments), carried (the outputs' indices whose
    # carriers follow), call, n, *args (n of them), *carriers: outputs of fun that depend on
    # closed-over tensors requiring grad, whose cotangent is the output's (fun's derivative)
    @staticmethod
    def forward(ctx, outs, carried, call, n, *args):
        ctx.call, ctx.carried, ctx.n = call, carried, n
        ctx.outs_meta = [(o.shape, o.dtype, o.device) for o in outs]
        ctx.save_for_backward(*args[:n])
        ctx.mark_non_differentiable(*[o for o in outs if not _float(o)])
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *cts):
        cts = _full_cts(cts, ctx.outs_meta)
        args = [a.detach() for a in ctx.saved_tensors]
        grads = [None] * len(args)
        if any(ctx.needs_input_grad[4:4 + ctx.n]):
            _, pullback, _ = vjp_flat(lambda xs: ctx.call(*xs), args)
            grads = pullback(cts)
            grads = [g if isinstance(g, torch.Tensor) and _float(type_of(a)) else None for g, a in zip(grads, args)]
        return (None,) * 4 + _in_grads(ctx, grads, 4) + tuple(cts[j] for j in ctx.carried)


def torch_custom_vjp(fwd, bwd, args, closed=0, name="custom_vjp"):
    """custom_vjp_call's outputs, recorded by torch's autograd with bwd as their backward
    (closed: how many of args, last, are closed-over values bwd gives no cotangent for; so
    are tensors fwd closes over that require grad: their gradient raises)."""
    with torch.enable_grad():
        outs, res = fwd(*_detached(args))
    carriers = [outs[k] for k in _grad_carriers(outs)]
    outs, res = _detached(outs), _detached(res)
    return list(_CustomVJP.apply(outs, res, bwd, closed + len(carriers), name, *args, *carriers))


def torch_custom_jvp(call, fun, args):
    """custom_jvp_call's outputs, recorded by torch's autograd with the transposed jvp rule
    (call: the call itself, which functx's vjp differentiates by its rule); tensors fun closes
    over that require grad are differentiated through fun, as torch would."""
    with torch.enable_grad():
        outs = fun(*_detached(args))
    carried = _grad_carriers(outs)
    carriers = [outs[k] for k in carried]
    return list(_CustomJVP.apply(_detached(outs), carried, call, len(args), *args, *carriers))


# ---------------------------------------------------------------- closure conversion

class _Traced:
    """A flat callable traced at types below the current trace: its graph, which of its
    outputs were None, and its constants (values it closes over)."""

    def __init__(self, fn, in_types):
        trace = GraphTrace(current_trace(), stage_all=True)
        ins = [trace.new_arg(t) for t in in_types]
        with set_current_trace(trace):
            outs = list(fn(*ins))
        self.none = [o is None for o in outs]
        self.graph = trace.to_graph(ins, [o for o in outs if o is not None])
        self.out_types = [v.type for v in self.graph.outvars]

    def closure(self):
        return [c for c in self.graph.consts if isinstance(c, Tracer)]

    def runner(self, index):
        """fn(closed, args): the graph at args, with the closed-over values (by index) given."""
        graph = self.graph
        slots = [index.get(id(c)) for c in graph.consts]
        none = self.none if any(self.none) else None

        def run(closed, args):
            consts = [c if k is None else closed[k] for k, c in zip(slots, graph.consts)]
            outs = eval_graph(graph, consts, list(args))
            if none is None:
                return outs
            it = iter(outs)
            return [None if n else next(it) for n in none]
        return run


def _closure_of(traced):
    closed, index = [], {}
    for t in traced:
        for c in t.closure():
            if id(c) not in index:
                index[id(c)] = len(closed)
                closed.append(c)
    return closed, index


def jvp_of_code(fn, primals, tangents):
    """fn(*primals) and its forward derivative along tangents, fn differentiated as ordinary code."""
    trace = JVPTrace(current_trace())
    ins = [JVPTracer(trace, p, instantiate(t)) for p, t in zip(primals, tangents)]
    with set_current_trace(trace):
        outs = fn(*ins)
    pairs = [trace.pair(o) for o in outs]
    return [p for p, _ in pairs], [instantiate(t) for _, t in pairs]


def _try_traced(fn, in_types):
    """_Traced, or None where fn can't be traced (Python control flow on values): it then runs
    as written, and a body value it closes over raises the closure error there."""
    try:
        return _Traced(fn, in_types)
    except Exception:
        return None


def close_jvp_call(args, params):
    """custom_jvp_call's Primitive.close_over: the values fun and the jvp rule close over
    become operands; fun is differentiated with respect to them (the rule gives the
    derivative for the arguments)."""
    n, fun, jvp = len(args), params["fun"], params["jvp"]
    in_types = [type_of(a) for a in args]
    t_fun = _Traced(fun, in_types)

    def both(*xs):
        outs, t_outs = jvp(list(xs[:n]), list(xs[n:]))
        return list(outs) + list(t_outs)
    t_jvp = _try_traced(both, in_types + in_types)
    closed, index = _closure_of([t for t in (t_fun, t_jvp) if t is not None])
    if not closed:
        return args, params
    run_fun, k = t_fun.runner(index), len(t_fun.out_types)
    run_jvp = t_jvp.runner(index) if t_jvp is not None else lambda _, xs: both(*xs)

    def fun2(*ops):
        return run_fun(ops[n:], ops[:n])

    def jvp2(primals, tangents):
        closed_vals = primals[n:]
        res = run_jvp(closed_vals, list(primals[:n]) + list(tangents[:n]))
        outs, t_outs = res[:k], res[k:]
        _, d = jvp_of_code(lambda *cs: run_fun(cs, primals[:n]), closed_vals, tangents[n:])
        return outs, [P.add(t, dt) if _float(type_of(o)) else t for o, t, dt in zip(outs, t_outs, d)]
    return list(args) + closed, dict(params, fun=fun2, jvp=jvp2)


def close_vjp_call(args, params):
    """custom_vjp_call's Primitive.close_over: the values fun, fwd and bwd close over become
    operands (passed on to bwd as residuals), marked `closed` (their cotangent is unknown)."""
    n, fun, fwd, bwd = len(args), params["fun"], params["fwd"], params["bwd"]
    in_types = [type_of(a) for a in args]
    t_fun = _Traced(fun, in_types)
    n_out = []

    def fwd_flat(*xs):
        outs, res = fwd(*xs)
        n_out[:] = [len(outs)]
        return list(outs) + list(res)
    t_fwd = _try_traced(fwd_flat, in_types)
    t_bwd = None
    if t_fwd is not None:        # bwd at the residuals' and cotangents' types
        k = n_out[0]
        n_res = len(t_fwd.out_types) - k
        t_bwd = _try_traced(lambda *xs: bwd(list(xs[:n_res]), list(xs[n_res:])),
                            t_fwd.out_types[k:] + t_fwd.out_types[:k])
    closed, index = _closure_of([t for t in (t_fun, t_fwd, t_bwd) if t is not None])
    if not closed:
        return args, params
    run_fun = t_fun.runner(index)
    run_fwd = t_fwd.runner(index) if t_fwd is not None else None
    run_bwd = t_bwd.runner(index) if t_bwd is not None else None
    m = len(closed)

    def fun2(*ops):
        return run_fun(ops[n:], ops[:n])

    def fwd2(*ops):
        if run_fwd is None:
            outs, res = fwd(*ops[:n])
            return list(outs), list(res) + list(ops[n:])
        r = run_fwd(ops[n:], ops[:n])
        return r[:k], r[k:] + list(ops[n:])

    def bwd2(res, cts):
        own, closed_vals = list(res[:len(res) - m]), res[len(res) - m:]
        grads = run_bwd(closed_vals, own + list(cts)) if run_bwd is not None else bwd(own, list(cts))
        return list(grads) + [None] * m
    return list(args) + closed, dict(params, fun=fun2, fwd=fwd2, bwd=bwd2, lin_jvp=None,
                                     closed=params.get("closed", 0) + m)
