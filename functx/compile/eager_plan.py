"""Eager code generation planning: what the PyTorch code generator does differently from
a literal, one-call-per-primitive translation of the graph. It is not a graph pass: the
graph is unchanged, only how it is printed.

The IR keeps its explicit broadcasts and general dot_generals (the Triton backend and the
transforms need them); only the generated torch code relies on torch's own broadcasting
and matmul forms, because every extra torch call costs a few microseconds on the CPU.
`plan` finds which broadcast_in_dim results torch can broadcast implicitly (every use is a
broadcasting elementwise op whose result shape comes out right without it), and which
`add(dot_general(x, W), b)` pairs become one `torch.addmm(b, x, W)`.
"""
from __future__ import annotations

from ..core import Graph, Var
from ..prims.linalg import is_2d_matmul
from ..prims.util import static_broadcast_shapes



def implicit_shape(in_shape, shape, broadcast_dimensions):
    """The shape torch broadcasts like broadcast_in_dim(x, shape, dims): x's dims in place,
    ones elsewhere, leading ones dropped (torch aligns trailing dims)."""
    view = [1] * len(shape)
    for i, d in enumerate(broadcast_dimensions):
        view[d] = in_shape[i]
    while view and view[0] == 1:
        view.pop(0)
    return tuple(view)


class Plan:
    """implicit: broadcast output var -> shape its operand is used at (no expand emitted);
    addmm: index of an add eqn -> (index of the dot eqn, position of the bias operand);
    skip: eqn indices not emitted (implicit broadcasts that need no line, fused dots)."""

    def __init__(self):
        self.implicit: dict = {}
        self.addmm: dict = {}
        self.skip: set = set()


def plan(graph: Graph) -> Plan:
    p = Plan()
    uses: dict = {}
    for k, eqn in enumerate(graph.eqns):
        for a in eqn.inputs:
            if isinstance(a, Var):
                uses.setdefault(a, []).append(k)
    outs = {a for a in graph.outvars if isinstance(a, Var)}
    producer = {}
    for k, eqn in enumerate(graph.eqns):
        for v in eqn.outputs:
            producer[v] = k

    # Implicit broadcasts: start from every candidate, drop those that break a consumer.
    cand = {}
    for k, eqn in enumerate(graph.eqns):
        if eqn.prim.name != "broadcast_in_dim" or eqn.outputs[0] in outs:
            continue
        out = eqn.outputs[0]
        if all(graph.eqns[u].prim.emit_broadcasts for u in uses.get(out, ())):
            cand[out] = implicit_shape(eqn.inputs[0].type.shape, eqn.params["shape"],
                                       eqn.params["broadcast_dimensions"])
    changed = True
    while changed:
        changed = False
        for k, eqn in enumerate(graph.eqns):
            if not eqn.prim.emit_broadcasts or not any(a in cand for a in eqn.inputs):
                continue
            shapes = [cand.get(a, a.type.shape) for a in eqn.inputs if isinstance(a, Var)]
            try:
                ok = static_broadcast_shapes(tuple(tuple(sh) for sh in shapes)) == tuple(eqn.outputs[0].type.shape)
            except RuntimeError:
                ok = False
            if not ok:
                for a in eqn.inputs:
                    cand.pop(a, None)
                changed = True
    p.implicit = cand

    # add(dot(x, W), b) -> addmm(b, x, W) when the dot's only use is this add.
    for k, eqn in enumerate(graph.eqns):
        if eqn.prim.name != "add" or not all(isinstance(a, Var) for a in eqn.inputs):
            continue
        if eqn.outputs[0].type.ndim != 2:
            continue
        for pos in (0, 1):
            d = eqn.inputs[pos]
            j = producer.get(d)
            if (j is not None and is_2d_matmul(graph.eqns[j]) and d not in outs
                    and len(uses.get(d, ())) == 1 and eqn.inputs[1 - pos] is not d):
                p.addmm[k] = (j, 1 - pos)
                p.skip.add(j)
                break
    return p
