"""Graph passes. Each takes a Graph and returns a new Graph; none mutates its input."""
from __future__ import annotations

from ..core import Graph, Var


def dce(graph: Graph) -> Graph:
    """Dead-code elimination: drop equations whose outputs are unused (effects are kept)."""
    live = {a for a in graph.outvars if isinstance(a, Var)}
    kept = []
    for eqn in reversed(graph.eqns):
        if eqn.prim.effectful or any(v in live for v in eqn.outputs):
            kept.append(eqn)
            live.update(a for a in eqn.inputs if isinstance(a, Var))
    kept.reverse()
    used = [(v, c) for v, c in zip(graph.constvars, graph.consts) if v in live]
    out = Graph(graph.invars, [v for v, _ in used], [c for _, c in used], kept, graph.outvars)
    out.in_tree, out.out_tree = graph.in_tree, graph.out_tree
    return out
