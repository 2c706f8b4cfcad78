"""torch.autograd.Function under functx transforms: its backward is honoured, never the
forward differentiated in its place.

A Function written for torch.func (a `setup_context` staticmethod; forward without ctx)
becomes a functx.custom_vjp: fwd runs `forward` and `setup_context`, whose saved tensors
are the residuals; bwd calls `backward`. So grad/vjp use the user's backward (to any
order, as its ops are differentiated in turn), vmap batches forward and backward as
ordinary code (torch.func's generate_vmap_rule), and forward mode raises as custom_vjp
does. A Function in the older style (forward(ctx, ...)) raises a clear error, as it does in
torch.func.

torch's Function.apply has no dispatch hook for tensor subclasses, so functx wraps it:
calls with a TracerTensor argument come here, all others go to torch's own apply.
"""
from __future__ import annotations

import inspect

import torch
from torch.autograd.function import _is_setup_context_defined
from torch.utils.checkpoint import CheckpointFunction

from ..core.errors import FunctxError
from ..frontend import TracerTensor
from .custom import custom_vjp
from .control_flow.checkpoint import checkpoint


class FunctionCtx:
    """The ctx that setup_context and backward see (the part of torch's that applies)."""

    def __init__(self, inputs):
        self.saved_tensors = ()
        self.needs_input_grad = tuple(isinstance(x, torch.Tensor) and x.dtype.is_floating_point
                                      for x in inputs)
        self.materialize_grads = True

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors

    def save_for_forward(self, *tensors):
        pass

    def mark_non_differentiable(self, *outputs):
        pass        # integer outputs already have no cotangent; float ones get zeros, as in torch

    def set_materialize_grads(self, value):
        self.materialize_grads = value

    def mark_dirty(self, *tensors):
        raise FunctxError("functx: an autograd.Function that modifies its inputs in place (mark_dirty) "
                          "is not supported inside functx transforms; return a new tensor instead")


def apply_function(cls, args, kwargs):
    name = cls.__name__
    if cls is CheckpointFunction:
        # torch.utils.checkpoint(fn, *args, use_reentrant=True): apply(fn, preserve_rng_state, *args)
        return checkpoint(args[0])(*args[2:])
    if not _is_setup_context_defined(cls.setup_context):
        raise FunctxError(
            f"functx: the torch.autograd.Function {name} defines forward(ctx, ...) without a "
            "setup_context staticmethod. Its backward can only be honoured inside functx (and "
            "torch.func) transforms in the newer form: forward(*args) without ctx, plus "
            "setup_context(ctx, inputs, output) that calls ctx.save_for_backward. See "
            "https://pytorch.org/docs/stable/notes/extending.func.html")
    bound = inspect.signature(cls.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    args = bound.args

    def forward(*inputs):
        return cls.forward(*inputs)

    def fwd(*inputs):
        out = cls.forward(*inputs)
        ctx = FunctionCtx(inputs)
        cls.setup_context(ctx, inputs, out)
        return out, (tuple(ctx.saved_tensors), ctx)

    def bwd(residuals, cotangent):
        saved, ctx = residuals
        ctx.saved_tensors = saved
        cts = tuple(cotangent) if isinstance(cotangent, (tuple, list)) else (cotangent,)
        grads = cls.backward(ctx, *cts)
        grads = tuple(grads) if isinstance(grads, (tuple, list)) else (grads,)
        if len(grads) != len(args):
            raise FunctxError(f"functx: {name}.backward returned {len(grads)} gradients for "
                              f"{len(args)} inputs of forward")
        return tuple(g if isinstance(a, torch.Tensor) else None for g, a in zip(grads, args))

    forward.__name__ = name
    f = custom_vjp(forward)
    f.defvjp(fwd, bwd)
    return f(*args)


_torch_apply = torch.autograd.Function.__dict__["apply"].__func__


def _apply(cls, *args, **kwargs):
    if any(isinstance(a, TracerTensor) for a in args) or any(isinstance(v, TracerTensor) for v in kwargs.values()):
        return apply_function(cls, args, kwargs)
    return _torch_apply(cls, *args, **kwargs)


_apply.__doc__ = _torch_apply.__doc__
torch.autograd.Function.apply = classmethod(_apply)
