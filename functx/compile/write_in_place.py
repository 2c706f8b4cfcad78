"""A write into a buffer nothing else reads happens in place (the last pass of the pipeline).

`out[t] = h` in a loop traces to a chain of update_slice equations, each a copy of the whole
buffer with one block replaced: a T-step loop copies the buffer T times (O(T^2) for a
(T, ...) buffer: 200 steps of an (8, 256) state took longer under jit than torch.func's
eager in-place loop). An update_slice whose buffer another update_slice made in this graph
(a fresh tensor: no argument, constant or other value shares its memory) and which is that
buffer's only reader (so no view of it exists, nothing reads it later) and not an output
becomes update_slice_in_place, which writes the block into the buffer and returns it; its
backward, a chain of split_block (the cotangent with a block zeroed, and the block), so too.
Backends run it as any extern; their liveness already takes an extern's outputs to alias
its inputs."""
from __future__ import annotations

from ..core import Eqn, Graph, Var
from ..prims.indexing import IN_PLACE, written_over


def write_blocks_in_place(graph: Graph) -> Graph:
    over = written_over(graph.eqns, {a for a in graph.outvars if isinstance(a, Var)})
    if not over:
        return graph
    return graph.replace(eqns=[Eqn(IN_PLACE[e.prim], e.inputs, e.outputs, e.params, e.source) if id(e) in over else e
                               for e in graph.eqns])
