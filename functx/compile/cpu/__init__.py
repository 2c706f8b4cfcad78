"""The CPU fusion backend, the default of `functx.jit` for CPU tensors (`backend="cpu"`;
settings: `CONFIG`, settings.py).

    optimized graph -> fusion/scheduler.py (the Triton backend's fusion groups) ->
    cpp_ops.py (each group one C++ loop nest) -> toolchain.py (g++, disk cache, ctypes) ->
    compiled.py (CppFused: host wrapper; CpuCompiled: eager tier first, fused when built)

See docs/compiler.md, "The CPU backend".
"""
from .compiled import CppFused, CpuCompiled, wait_for_fused
from .settings import CONFIG

__all__ = ["CONFIG", "CppFused", "CpuCompiled", "wait_for_fused"]
