"""The CPU fusion backend: `functx.jit(f, backend="cpu")`.

    optimized graph -> fusion/scheduler.py (the Triton backend's fusion groups) ->
    cpp_ops.py (each group one C++ loop nest) -> toolchain.py (g++, disk cache, ctypes) ->
    compiled.py (CppFused: host wrapper; CpuCompiled: eager tier first, fused when built)

See docs/compiler.md, "The CPU backend".
"""
from .compiled import CppFused, CpuCompiled, wait_for_fused

__all__ = ["CppFused", "CpuCompiled", "wait_for_fused"]
