"""The Triton fusion compiler: `functx.jit(f, backend="triton")`.

    optimized graph (compile/pipeline.py) -> scheduler.py (fusion groups) -> kernel.py
    (loop nests over an ops handler) -> triton_ops.py (Triton source) -> runtime.py (cache,
    launch) -> compiled.py (host wrapper, explain report)

See docs/compiler.md for how to read `functx.explain(f, backend="triton")`.
"""
from .compiled import TritonCompiled

__all__ = ["TritonCompiled"]
