"""The interface every backend's compiled graph implements (jit calls it, explain reports on it)."""
from __future__ import annotations

from typing import Callable

from ..core import Graph


class Compiled:
    """A graph compiled by a backend.

    backend: its name; graph: the graph it compiled (the pipeline's output); call: the
    plain callable jit calls with the input tensors (the constants are bound); kernels:
    generated kernel sources (none on the eager backend); groups: fusion groups, for
    explain; report(): what explain prints under "-- compiled --"; symbolic_sizes: whether
    it compiles graphs with jit's symbolic dims (sizes read at run time); jit traces a
    backend without it per size."""
    symbolic_sizes = False
    backend: str
    graph: Graph
    call: Callable
    kernels: list[str]
    groups: list

    def with_cuda_graphs(self, call, option):
        """The callable jit runs for this entry: `call`, or `call` replayed from a CUDA
        graph (backends that launch kernels; option: jit's cuda_graphs)."""
        return call

    def __call__(self, *inputs):
        return self.call(*inputs)

    def report(self) -> str:
        raise NotImplementedError
