"""Facts about a traced graph's writes into its inputs that jit's write-back needs (jit.py),
read from the graph as traced, before the pipeline: simplify drops stop_gradient (a marker
for transforms), but a call torch autograd records runs the compiled torch code, where that
marker was the only sign that a written value carries no derivative."""
from __future__ import annotations

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
