"""What a backend is, and which backends there are.

A backend is a class built from an optimized graph (backend(graph)) that jit caches and
calls and explain reports on; `Compiled` declares what they use."""
from __future__ import annotations

import functools
from typing import Callable

import torch

from ..core import Graph


class Compiled:
    """A graph compiled by a backend.

    backend: its name; graph: the graph it compiled (the pipeline's output); call: the
    plain callable jit calls with the input tensors (the constants are bound); kernels:
    generated kernel sources (none on the eager backend); groups: fusion groups, for
    explain; report(): what explain prints under "-- compiled --"."""
    backend: str
    graph: Graph
    call: Callable
    kernels: list[str]
    groups: list

    def __call__(self, *inputs):
        return self.call(*inputs)

    def report(self) -> str:
        raise NotImplementedError


def _eager():
    from .eager import EagerCompiled      # eager.py imports Compiled from here
    return EagerCompiled


def _triton():
    # Imported only when chosen: importing triton is slow, and it may be absent.
    from .triton import TritonCompiled
    return TritonCompiled


BACKENDS = {"eager": _eager, "triton": _triton}


@functools.lru_cache(maxsize=1)
def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
        return True
    except ImportError:
        return False


def resolve_backend(backend, leaves) -> type[Compiled]:
    """The backend class named `backend`; None picks triton for CUDA tensors when Triton
    is installed, else eager."""
    if backend is None:
        on_cuda = any(isinstance(x, torch.Tensor) and x.is_cuda for x in leaves)
        backend = "triton" if on_cuda and _triton_available() else "eager"
    if backend not in BACKENDS:
        raise ValueError(f"functx: unknown backend {backend!r}; choose 'eager' or 'triton'")
    return BACKENDS[backend]()
