"""Tensor.register_hook on values traced by reverse-mode transforms (grad, vjp, jacrev).

torch runs a tensor's hooks on the gradient flowing into it during the backward pass, in
registration order, each seeing the previous one's result (a hook returning None keeps it),
and passes the result on. Here that is `tensor_hook`, an identity on the value's tangent:

    h.register_hook(fn)    inside grad(f): h's tangent t becomes tensor_hook(t; hooks)

linearize records it into the linear graph like any linear equation, and its transpose runs
the hooks on the cotangent the backward pass has accumulated for h (every use of h after the
registration), as torch's user code on wrappers of that cotangent: so under vmap(grad) or
jacrev a hook sees one example's cotangent (as torch.func's do), under grad(grad) its torch
ops are differentiated by the outer level, and under jit it runs once, at trace time, on
traced cotangents (its ops are staged; Python side effects happen at trace time only).

Like torch.func, a hook attaches to the innermost level's value, and only where
requires_grad is True there (frontend/tensor.py): forward mode, vmap inside grad, detached
values and values that do not depend on the differentiated inputs raise torch's error.
A hook registered after h was already used would miss those uses' cotangents (torch's
covers them): that raises too, naming the fix (register the hook where h is made); so does a
tensor sharing h's tangent (h.clone(), h.reshape(h.shape): no equation of their own) used after
the hook, which linearize checks when f returns (check_hooked_tangents).
Several hooks on one value share one equation and one `Hooks` (torch's dict of hooks, which
the returned RemovableHandle removes from, so a removed hook stops running).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch.utils.hooks import RemovableHandle

from ..core import STRUCTURAL, FunctxError, Primitive, Zero
from ..core.errors import user_frame_summary
from ..core.trace import GraphTracer, Tracer, note_autograd_read, record_autograd_reads, trace_state, type_of
from ..frontend import TracerTensor, composites, unwrap, wrap
from ..frontend.functionalize import value_of
from ..frontend.unit_batches import run_pending
from ..prims.shape import moveaxis
from .custom_batch import run_batched as _run_batched
from .jvp import JVPTracer


class Hooks:
    """The hooks registered on one value, in order (torch's Tensor._backward_hooks)."""
    __slots__ = ("fns", "where")

    def __init__(self, where):
        self.fns = OrderedDict()    # RemovableHandle ids -> hooks (handle.remove() deletes; it needs
                                    # a weakly referenceable dict, as torch's _backward_hooks is)
        self.where = where          # the user's line, for errors

    def __repr__(self):
        return f"Hooks({[getattr(f, '__name__', repr(f)) for f in self.fns.values()]})"

    def __call__(self, ct):
        """The hooks run on a cotangent (a lax value): the cotangent they pass on."""
        t = type_of(ct)
        for fn in list(self.fns.values()):
            g = wrap(ct)
            if type(g) is torch.Tensor:     # eager: the backward pass may share it with other cotangents
                g = g.clone()
            before = _version(g)
            out = fn(g)
            if out is None:
                if _version(g) == before:
                    continue
                out = g                     # modified in place: its new value is the hook's result
            if not isinstance(out, (torch.Tensor, Tracer)):
                raise FunctxError(f"functx: tensor hook {_name(fn)} returned {type(out).__name__}, not a tensor "
                                  f"or None (registered here:\n{self.where})")
            new = unwrap(out)
            nt = type_of(new)
            if tuple(nt.shape) != tuple(t.shape):       # torch's checks and messages
                raise FunctxError(f"functx: hook {_name(fn)} has changed the size of value (was {tuple(t.shape)}, "
                                  f"got {tuple(nt.shape)}); registered here:\n{self.where}")
            if nt.dtype != t.dtype or nt.device != t.device:
                raise FunctxError(f"functx: hook {_name(fn)} has changed the type of value (was {t.dtype} on "
                                  f"{t.device}, got {nt.dtype} on {nt.device}); registered here:\n{self.where}")
            ct = new
        return ct


def _version(g):
    return g._version_ if isinstance(g, TracerTensor) else g._version


def _name(fn):
    return repr(getattr(fn, "__name__", fn))


class _BatchedHooks:
    """A tensor_hook's hooks once the equation itself was vmapped (its cotangent is then
    batched along `dim`): each example's cotangent goes through them, as under vmap(grad)."""
    __slots__ = ("hooks", "axis", "dim")

    def __init__(self, hooks, axis, dim):
        self.hooks, self.axis, self.dim = hooks, axis, dim

    def __call__(self, ct):
        out = _run_batched(lambda c: [self.hooks(c)], self.axis, [self.dim], [ct])[0]    # batched at 0
        return moveaxis(out, 0, self.dim) if self.dim else out


def _hook_type(t, *, hooks):
    return t


def _hook_impl(x, *, hooks):
    return x                        # an identity on values: hooks act on cotangents only


def _hook_jvp(primals, tangents, *, hooks):
    (x,), (t,) = primals, tangents
    # linear: the primal and its tangent keep the hooks for a later transpose
    out = tensor_hook_p.bind(x, hooks=hooks)
    return out, (t if isinstance(t, Zero) else tensor_hook_p.bind(t, hooks=hooks))


def _hook_batch(axis, args, dims, *, hooks):
    (x,), (d,) = args, dims
    return tensor_hook_p.bind(x, hooks=_BatchedHooks(hooks, axis, d)), d


def _hook_transpose(ct, x, *, hooks):
    return [hooks(ct)]


tensor_hook_p = Primitive(
    "tensor_hook", kind=STRUCTURAL,
    abstract_eval=_hook_type,
    impl=_hook_impl,
    jvp=_hook_jvp,
    batch=_hook_batch,
    transpose=_hook_transpose)


def register_hook(self, hook):
    """Tensor.register_hook(hook) on a TracerTensor (from TracerTensor.__torch_function__)."""
    if not callable(hook):
        raise TypeError(f"register_hook expects a callable, got {type(hook).__name__}")
    run_pending()       # every use so far recorded (a pending batch may use it: _hooked checks)
    value = value_of(self)
    if type(value) is GraphTracer and record_autograd_reads.active:
        # functx.jit(f) alone: the compiled graph serves calls no backward pass can follow, and
        # jit runs the calls torch autograd records as plain torch, where torch runs the hook
        note_autograd_read()
        return RemovableHandle(OrderedDict())
    if not (isinstance(value, JVPTracer) and value.tracks_grad()):
        raise _no_grad_error(self, value)
    where = user_frame_summary()
    own = self._hooks
    if own is not None and own[0] is value:     # more hooks on the same value: run after the others
        hooks = own[1]
    else:
        hooks = Hooks(where)
        self._value = _hooked(value, hooks, where)
        self._hooks = (self._value, hooks)
    handle = RemovableHandle(hooks.fns)
    hooks.fns[handle.id] = hook
    return handle


def _hooked(value, hooks, where):
    """value with tensor_hook on its tangent, recorded where linearize records the tangent."""
    jt, t = value._trace, value.tangent
    pe = jt.parent
    if isinstance(t, GraphTracer) and t._trace is pe:
        var = t.var
        if any(a is var for eqn in pe.eqns for a in eqn.inputs):
            raise FunctxError(
                "functx: Tensor.register_hook on a value that was already used, here:\n"
                f"{where}\nThe hook would not see the gradient flowing back through the uses before "
                "this line (torch's would). Register the hook right where the tensor is made, before "
                "it is used (for a transform's argument: first thing in the function).")
    prev, trace_state.trace = trace_state.trace, pe
    try:
        new_t = tensor_hook_p.bind(t, hooks=hooks)
    finally:
        trace_state.trace = prev
    if isinstance(t, GraphTracer) and t._trace is pe:
        if pe.hooked is None:
            pe.hooked = []
        pe.hooked.append((t.var, len(pe.eqns) - 1, where))
    out = JVPTracer(jt, value.primal, new_t)
    out._aval = value._aval
    return out


def check_hooked_tangents(pe, out_tangents):
    """After linearize ran f: no equation after a tensor_hook (and no output) reads the tangent
    it replaced. One that does belongs to a tensor sharing the hooked value's tangent, made
    before the hook without an equation of its own (h.clone(), h.reshape(h.shape), h[:] are
    the same tangent here): torch would pass its gradient through h's hook (or not, if h was
    made from it), which the hook here cannot tell apart, so that raises."""
    outs = {id(t.var) for t in out_tangents if isinstance(t, GraphTracer) and t._trace is pe}
    for var, k, where in pe.hooked:
        if id(var) in outs or any(a is var for eqn in pe.eqns[k + 1:] for a in eqn.inputs):
            raise FunctxError(
                "functx: a tensor hook was registered here:\n"
                f"{where}\non a tensor that shares its value with another tensor made before the hook "
                "(h.clone(), h.reshape(h.shape), h[:], h.permute(...) with nothing to move, h + 0, or h "
                "itself made so from another tensor), and that other tensor was used after the hook. "
                "torch's hook would see its gradient (functx's cannot tell the two apart). Register "
                "the hook right where the tensor is made, before anything is derived from it.")


def _no_grad_error(w, value):
    if w.requires_grad:         # requires_grad_() on a tensor made inside the function
        why = ("it was marked with requires_grad_() inside the function, which functx does not "
               "differentiate through (torch.func refuses requires_grad_() there): functx "
               "differentiates a transform's arguments")
    elif isinstance(value, JVPTracer) and not value._trace.reverse:
        why = ("it is traced by a forward-mode transform (jvp, jacfwd, linearize), which has no "
               "backward pass (torch.func raises here too)")
    elif isinstance(value, Tracer) and _reverse_below(value):
        why = ("its innermost transform is not reverse mode (e.g. vmap inside grad: torch.func reports "
               "requires_grad=False there and raises too); put the reverse-mode transform innermost, "
               "e.g. vmap(grad(f)) instead of grad(vmap(f))")
    elif isinstance(value, GraphTracer):
        why = ("it is traced into a graph: the body of functx.scan / while_loop / checkpoint (or cond "
               "with a traced predicate), or functx.make_graph, whose values are staged once; register "
               "the hook outside the body")
    else:
        why = ("it does not depend on an input that an enclosing grad/vjp/jacrev differentiates (a "
               "constant, a detached or no_grad value, an integer tensor, or a value under vmap alone)")
    return FunctxError(
        f"functx: cannot register a hook on a tensor that doesn't require gradient, here:\n"
        f"{user_frame_summary()}\n{w.__class__.__name__} requires_grad is False because {why}.")


def _reverse_below(value):
    """Whether a reverse-mode level differentiates the value below its innermost level."""
    while isinstance(value, Tracer):
        if isinstance(value, JVPTracer) and value._trace.reverse:
            return True
        value = getattr(value, "primal", getattr(value, "val", None))
    return False


composites.COMPOSITES[torch.Tensor.register_hook] = register_hook

__all__ = ["tensor_hook_p", "register_hook", "Hooks", "check_hooked_tangents"]
