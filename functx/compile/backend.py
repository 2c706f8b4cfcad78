"""Which backends there are. A backend is a class built from an optimized graph
(backend(graph)) implementing `Compiled` (compiled.py), which jit caches and calls and
explain reports on."""
from __future__ import annotations

import functools

import torch

from .compiled import Compiled
from .cpu import CpuCompiled
from .cpu.settings import default_backend
from .eager import EagerCompiled


def _triton():
    from .triton import TritonCompiled    # only when chosen: importing triton is slow, or it is absent
    return TritonCompiled


BACKENDS = {"eager": lambda: EagerCompiled, "triton": _triton, "cpu": lambda: CpuCompiled}


@functools.lru_cache(maxsize=1)
def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
        return True
    except ImportError:
        return False


def resolve_backend(backend, leaves) -> type[Compiled]:
    """The backend class named `backend`; None picks triton for CUDA tensors when Triton
    is installed, the tiered cpu backend when every tensor is on the CPU
    (functx.compile.cpu.CONFIG.default_backend: "cpu" or "eager"), else eager."""
    if backend is None:
        devices = {x.device.type for x in leaves if isinstance(x, torch.Tensor)}
        if "cuda" in devices:
            backend = "triton" if _triton_available() else "eager"
        elif devices <= {"cpu"}:
            backend = default_backend()
        else:
            backend = "eager"
    if backend not in BACKENDS:
        raise ValueError(f"functx: unknown backend {backend!r}; choose 'eager', 'cpu' or 'triton'")
    return BACKENDS[backend]()
