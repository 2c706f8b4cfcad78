"""The Triton fusion compiler: `functx.jit(f, backend="triton")`.

    optimized graph (compile/pipeline.py) -> fusion/scheduler.py (fusion groups) ->
    fusion/kernel.py (loop nests over an ops handler) -> triton_ops.py (Triton source) ->
    runtime.py (cache, launch) -> compiled.py (on fusion/compiled.py: host wrapper, report)

See docs/compiler.md for how to read `functx.explain(f, backend="triton")`.
"""
from .compiled import TritonCompiled

__all__ = ["TritonCompiled"]
