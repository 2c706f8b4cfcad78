"""Facts about a traced graph that jit needs for calls torch autograd records (jit.py), read
from the graph as traced, before the pipeline: simplify drops stop_gradient (a marker for
transforms), but such a call differentiates the compiled torch code, where that marker was
the only sign that a value carries no derivative (a written buffer's) or a part of one (an
embedding's scale_grad_by_freq, torch.normal's mean, det's singular branch)."""
from __future__ import annotations

import torch

from ..core import Var
from ..core.ir import sub_graphs


def writes_without_derivative(graph) -> frozenset:
    """Positions (among the inputs) of the mutated inputs whose new value depends on no input
    and no constant except through stop_gradient: batch norm's running statistics, written
    into buffers passed as arguments (functional_call(model, (params, buffers), x)). jit
    copies those under no_grad, as torch's kernel updates them: the buffer got a CopyBackwards
    history from the parameters (and every step's graph stayed alive through it)."""
    mutated = graph.meta.mutated_inputs
    if not mutated:
        return frozenset()
    carries = set(graph.invars) | set(graph.constvars)     # values with a derivative path
    for e in graph.eqns:
        if e.prim.name == "stop_gradient":
            continue
        if any(isinstance(a, Var) and a in carries for a in e.inputs) or (
                sub_graphs(e.params) and any(g.consts for g in sub_graphs(e.params))):
            carries.update(e.outputs)
    news = graph.outvars[len(graph.outvars) - len(mutated):]
    return frozenset(k for k, v in zip(mutated, news) if not (isinstance(v, Var) and v in carries))


def unread_inputs(graph) -> frozenset:
    """Positions of the inputs no equation (or output) of the graph reads."""
    read = {a for e in graph.eqns for a in e.inputs if isinstance(a, Var)}
    read.update(a for a in graph.outvars if isinstance(a, Var))
    return frozenset(k for k, v in enumerate(graph.invars) if v not in read)


# Readers of a stop_gradient that make it a constant shift of the value (softmax's and
# logsumexp's max): dropping it changes no derivative.
_SHIFT_READERS = frozenset({"reduce_max", "reduce_min", "argmax", "argmin"})


def cuts_derivatives(graph) -> bool:
    """Whether the graph (or a sub-graph) holds a stop_gradient that changes a derivative
    torch autograd would take of the compiled code: one read other than by a max."""
    readers: dict = {}
    for e in graph.eqns:
        for a in e.inputs:
            if isinstance(a, Var):
                readers.setdefault(a, set()).add(e.prim.name)
    outs = {a for a in graph.outvars if isinstance(a, Var)}
    for e in graph.eqns:
        if e.prim.name == "stop_gradient" and (e.outputs[0] in outs or
                                               not readers.get(e.outputs[0], set()) <= _SHIFT_READERS):
            return True
        if any(cuts_derivatives(g) for g in sub_graphs(e.params)):
            return True
    return False


def with_autograd_variant(call, compile_variant, consts):
    """call, except for calls torch autograd records (grad mode on and an input or a constant
    requires grad): those run the graph compiled with its stop_gradients (compile_variant(),
    built at the first such call), whose torch code autograd then differentiates as torch
    would have differentiated f."""
    consts_grad = any(isinstance(c, torch.Tensor) and c.requires_grad for c in consts)
    variant = []

    def routed(*inputs):
        if torch.is_grad_enabled() and (consts_grad or any(
                isinstance(x, torch.Tensor) and x.requires_grad for x in inputs)):
            if not variant:
                variant.append(compile_variant())
            return variant[0](*inputs)
        return call(*inputs)
    return routed
