"""torch.autograd.Function under functx transforms: its backward is honoured, never the
forward differentiated in its place, as in torch.func.

A Function written for torch.func (a `setup_context` staticmethod; forward without ctx)
becomes a functx.custom_vjp: fwd applies the Function one level down (so every level of
grad(grad(...)) uses backward, as torch.func's levels do) and runs `setup_context`, whose
saved tensors are the residuals; bwd calls `backward`. Forward mode (jvp, jacfwd) calls
the `jvp` staticmethod where the Function defines one (with the tensors saved by
`ctx.save_for_forward`), else raises as custom_vjp does. vmap calls the `vmap`
staticmethod where the Function defines one (unless generate_vmap_rule=True), so forward
code that leaves torch (numpy, a custom kernel) batches as its author wrote; otherwise it
batches forward and backward as ordinary code (torch.func's generate_vmap_rule=True; where
torch.func refuses such a Function under vmap, functx runs it). A Function in the older
style (forward(ctx, ...)) raises a clear error, as it does in torch.func.

torch's Function.apply has no dispatch hook for tensor subclasses, so functx wraps it:
calls with a TracerTensor argument come here, all others go to torch's own apply.
"""
from __future__ import annotations

import inspect
from typing import NamedTuple

import torch
from torch.autograd.function import _is_setup_context_defined
from torch.utils.checkpoint import CheckpointFunction

from ..core import EVAL_TRACE, current_trace, set_current_trace
from ..core.errors import FunctxError
from ..core.trace import enclosing_traces
from ..frontend import TracerTensor, unwrap, wrap
from ..tree_util import tree_flatten, tree_leaves_with_none, tree_unflatten
from .batching import BatchTrace, BatchTracer
from .jvp import JVPTrace
from .custom import ZERO_COTANGENTS, custom_vjp
from .control_flow.checkpoint import checkpoint


class FunctionCtx:
    """The ctx that setup_context and backward see (the part of torch's that applies)."""

    def __init__(self, inputs, needs_input_grad):
        self.saved_tensors = ()
        self.saved_for_forward = ()
        self.needs_input_grad = needs_input_grad
        self.materialize_grads = True

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors

    def save_for_forward(self, *tensors):
        self.saved_for_forward = tensors

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

    user_vmap = _defines(cls, "vmap") and not getattr(cls, "generate_vmap_rule", False)
    # as torch.func: whether the input carries a gradient of a reverse level (requires_grad)
    needs_input_grad = tuple(isinstance(x, torch.Tensor) and x.requires_grad for x in args)

    def forward(*inputs):
        if user_vmap:
            trace = current_trace()
            if isinstance(trace, BatchTrace):
                return _run_user_vmap(cls, trace, inputs)
        return cls.forward(*inputs)

    has_jvp = _defines(cls, "jvp")

    def fwd(*inputs):
        # The Function again, at the level below (its backward serves that level too, as in
        # torch.func), unless a forward-mode level below would need a jvp staticmethod the
        # Function lacks: then forward's code is differentiated there (hessian works).
        if any(isinstance(x, TracerTensor) for x in inputs) and (has_jvp or not _forward_mode_below()):
            out = cls.apply(*inputs)
        else:
            out = forward(*inputs)
        ctx = FunctionCtx(inputs, needs_input_grad)
        cls.setup_context(ctx, inputs, out)
        return out, (tuple(ctx.saved_tensors), tuple(ctx.saved_for_forward), ctx)

    def bwd(residuals, cotangent):
        saved, _, ctx = residuals
        ctx.saved_tensors = saved
        cts = tuple(cotangent) if isinstance(cotangent, (tuple, list)) else (cotangent,)
        if not ctx.materialize_grads and ZERO_COTANGENTS:
            # set_materialize_grads(False): None for an output without a cotangent, as torch
            # (where vmap's batching made the zeros anew, backward gets the zeros: same numbers)
            zeros = ZERO_COTANGENTS[-1]
            cts = tuple(None if id(unwrap(c)) in zeros else c for c in cts)
        grads = cls.backward(ctx, *cts)
        grads = tuple(grads) if isinstance(grads, (tuple, list)) else (grads,)
        if len(grads) != len(args):
            raise FunctxError(f"functx: {name}.backward returned {len(grads)} gradients for "
                              f"{len(args)} inputs of forward")
        return tuple(g if isinstance(a, torch.Tensor) else None for g, a in zip(grads, args))

    def fwd_jvp(residuals, tangents):
        _, saved, ctx = residuals
        ctx.saved_tensors = saved
        return cls.jvp(ctx, *tangents)

    forward.__name__ = name
    f = custom_vjp(forward)
    f.defvjp(fwd, bwd)
    if has_jvp:
        f.fwd_jvp = fwd_jvp
    return f(*args)


def _forward_mode_below():
    return any(isinstance(t, JVPTrace) and not t.reverse for t in enclosing_traces())


def _defines(cls, method):
    """Whether the Function overrides torch's `jvp` / `vmap` staticmethod (which raise)."""
    return getattr(cls, method) is not getattr(torch.autograd.Function, method)


class VmapInfo(NamedTuple):
    """The `info` a Function's vmap staticmethod gets (torch.func's VmapInfo)."""
    batch_size: int
    randomness: str


def _run_user_vmap(cls, trace, inputs):
    """The Function's vmap staticmethod for the vmap level `trace`: called one level down
    with each input's batch dim (None: unbatched; non-tensors None), its outputs wrapped
    back at their declared out_dims."""
    vals, in_dims = [], []
    for x in inputs:
        v, d = trace.unpack(unwrap(x)) if isinstance(x, TracerTensor) else (x, None)
        vals.append(wrap(v))
        in_dims.append(d)
    if all(d is None for d in in_dims):
        with set_current_trace(trace.parent):
            return cls.forward(*vals)
    info = VmapInfo(trace.axis.size, trace.axis.randomness)
    with set_current_trace(trace.parent):
        got = cls.vmap(info, tuple(in_dims), *vals)
    if not (isinstance(got, (tuple, list)) and len(got) == 2):
        raise FunctxError(f"functx: {cls.__name__}.vmap must return (outputs, out_dims), got "
                          f"{type(got).__name__}")
    outs, out_dims = got
    leaves, tree = tree_flatten(outs)
    dims = ([out_dims] * len(leaves) if out_dims is None or isinstance(out_dims, int)
            else tree_leaves_with_none(out_dims))
    if len(dims) != len(leaves):
        raise FunctxError(f"functx: {cls.__name__}.vmap returned out_dims {out_dims!r} for "
                          f"{len(leaves)} outputs")
    res = []
    for o, d in zip(leaves, dims):
        if d is None or not isinstance(o, torch.Tensor):
            res.append(o)
            continue
        if not -o.dim() <= d < o.dim():
            raise FunctxError(f"functx: {cls.__name__}.vmap returned out_dim {d} for an output "
                              f"with {o.dim()} dims")
        res.append(wrap(BatchTracer(trace, unwrap(o), d % o.dim())))
    return tree_unflatten(tree, res)


_torch_apply = torch.autograd.Function.__dict__["apply"].__func__


def _apply(cls, *args, **kwargs):
    if any(isinstance(a, TracerTensor) for a in args) or any(isinstance(v, TracerTensor) for v in kwargs.values()):
        return apply_function(cls, args, kwargs)
    if cls is CheckpointFunction and current_trace() is not EVAL_TRACE:
        # checkpoint(layer, x, use_reentrant=True) with a plain x inside a transform, the layer
        # closing over traced parameters (functional_call): torch's apply would run the layer
        # under no_grad, cutting their derivatives (zero gradients); functx.checkpoint keeps them
        return apply_function(cls, args, kwargs)
    return _torch_apply(cls, *args, **kwargs)


_apply.__doc__ = _torch_apply.__doc__
torch.autograd.Function.apply = classmethod(_apply)
