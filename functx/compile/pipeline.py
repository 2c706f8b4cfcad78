"""The one pass pipeline: jit and explain run it once per trace (compile_graph) and hand
its result to the backend, which compiles that graph as it is; so explain shows exactly
the graph that was compiled."""
from __future__ import annotations

from ..core import Eqn, Graph, map_sub_graphs
from .backend import resolve_backend
from .compiled import Compiled
from .attention_pattern import fuse_attention
from .factor_dots import factor_broadcast_dots
from .fold_identity import fold_identity_dots
from .passes import KEEP_STOP_GRADIENT, cse, dce, fold_constants, fold_dot_transposes, fold_transposes, fold_views, simplify
from .write_in_place import write_blocks_in_place

# cse matters most: transform rules recompute values (tanh(x) for the primal and again for
# its derivative). fold_identity_dots turns the contractions of identity bases (jacfwd,
# laplacian, divergence and their transposes) into selections; factor_broadcast_dots then
# multiplies the weight they leave with the next weight before the per-point scale (a
# forward-mode Jacobian's largest elementwise pass). The last dce drops what the rewrites
# before it orphaned. write_blocks_in_place comes last: it needs each buffer's readers final.
PIPELINE = [("dce", dce), ("fold_views", fold_views), ("fold_constants", fold_constants),
            ("simplify", simplify), ("fold_identity_dots", fold_identity_dots),
            ("factor_broadcast_dots", factor_broadcast_dots), ("fuse_attention", fuse_attention),
            ("cse", cse), ("dce", dce),
            ("fold_transposes", fold_transposes),
            ("fold_dot_transposes", fold_dot_transposes),
            ("write_blocks_in_place", write_blocks_in_place)]


def optimize_bodies(graph: Graph) -> Graph:
    """Run the pipeline on the sub-graphs equations hold (loop bodies, branches): the
    backends compile them separately, so the passes above never see inside them."""
    eqns = []
    for e in graph.eqns:
        params = map_sub_graphs(e.params, lambda g: optimize(g)[0])
        eqns.append(e if params is e.params else Eqn(e.prim, e.inputs, e.outputs, params, e.source))
    return graph.replace(eqns=eqns)


PIPELINE.append(("optimize_bodies", optimize_bodies))


def optimize(graph: Graph, record: bool = False):
    """Run the pipeline once -> (optimized graph, pass trace).

    With record=True the trace is [(pass name, printed graph after it, or '' if the pass
    changed nothing)], which explain shows; otherwise it is empty and nothing is printed."""
    steps = []
    prev = str(graph) if record else None
    for name, fn in PIPELINE:
        graph = fn(graph)
        if record:
            text = str(graph)
            steps.append((name, "" if text == prev else text))
            prev = text
    return graph, steps


def compile_graph(graph: Graph, backend, leaves, record: bool = False, keep_stop_gradient: bool = False):
    """Optimize a traced graph and compile it -> (compiled, pass trace). backend: a name or
    None (chosen from the devices of `leaves`, the call's arguments). keep_stop_gradient: the
    variant for calls torch autograd records (simplify keeps stop_gradient)."""
    KEEP_STOP_GRADIENT[0] = keep_stop_gradient
    try:
        graph, steps = optimize(graph, record)
    finally:
        KEEP_STOP_GRADIENT[0] = False
    compiled: Compiled = resolve_backend(backend, leaves)(graph)
    return compiled, steps
