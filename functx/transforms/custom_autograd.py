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
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..core.trace import note_autograd_read, record_autograd_reads, torch_autograd_records, type_of
from .ad import vjp_flat

__all__ = ["autograd_records", "note_inlined", "torch_custom_vjp", "torch_custom_jvp"]


def autograd_records(args) -> bool:
    """Whether torch's autograd records this eager call (an operand requires grad)."""
    return any(isinstance(a, torch.Tensor) and a.requires_grad for a in args) and torch_autograd_records()


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


def _in_grads(ctx, grads):
    return tuple(None if g is None or not ctx.needs_input_grad[i + 2] else g for i, g in enumerate(grads))


class _CustomVJP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fwd, bwd, *args):
        outs, res = fwd(*args)
        ctx.bwd, ctx.num_res = bwd, len(res)
        ctx.outs_meta = [(o.shape, o.dtype, o.device) for o in outs]
        ctx.save_for_backward(*res)
        ctx.mark_non_differentiable(*[o for o in outs if not _float(o)])
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *cts):
        grads = ctx.bwd(list(ctx.saved_tensors), _full_cts(cts, ctx.outs_meta))
        return (None, None) + _in_grads(ctx, grads)


class _CustomJVP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, call, fun, *args):
        outs = fun(*args)
        ctx.call = call
        ctx.outs_meta = [(o.shape, o.dtype, o.device) for o in outs]
        ctx.save_for_backward(*args)
        ctx.mark_non_differentiable(*[o for o in outs if not _float(o)])
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *cts):
        args = [a.detach() for a in ctx.saved_tensors]
        _, pullback, _ = vjp_flat(lambda xs: ctx.call(*xs), args)
        grads = pullback(_full_cts(cts, ctx.outs_meta))
        grads = [g if isinstance(g, torch.Tensor) and _float(type_of(a)) else None for g, a in zip(grads, args)]
        return (None, None) + _in_grads(ctx, grads)


def torch_custom_vjp(fwd, bwd, args):
    """custom_vjp_call's outputs, recorded by torch's autograd with bwd as their backward."""
    return list(_CustomVJP.apply(fwd, bwd, *args))


def torch_custom_jvp(call, fun, args):
    """custom_jvp_call's outputs, recorded by torch's autograd with the transposed jvp rule
    (call: the call itself, which functx's vjp differentiates by its rule)."""
    return list(_CustomJVP.apply(call, fun, *args))
