"""explain: what jit would compile for some arguments, as an Explanation."""
from __future__ import annotations

import functools

from ..core.errors import user_facing
from ..tree_util import tree_flatten
from .jit import JitFunction
from .pipeline import compile_graph
from .tracing import normalize_argnums, trace_graph


class Explanation:
    """What functx.explain found; str() is the report.

    .graph: the optimized graph the backend compiled (the same object as .compiled.graph);
    .traced: the graph before the passes; .passes: [(pass name, graph after it, or '' if
    the pass changed nothing)]; .fallbacks: ATen ops run through the opaque fallback;
    .compiled, .backend, .kernels, .groups (fusion groups, triton backend)."""

    def __init__(self, compiled, traced, passes):
        self.compiled = compiled
        self.graph = compiled.graph
        self.traced = traced
        self.passes = passes
        self.fallbacks = list(self.graph.meta.fallbacks)
        self.backend = compiled.backend
        self.kernels = list(compiled.kernels)
        self.groups = list(compiled.groups)

    def __str__(self):
        lines = ["== functx.explain ==", f"backend: {self.backend}", "", "-- graph --", str(self.graph), ""]
        if self.fallbacks:
            lines.append("-- fallbacks (ATen ops run through the opaque torch.func fallback) --")
            lines += [f"  {name}" for name in self.fallbacks]
        else:
            lines.append("-- fallbacks: none --")
        lines += ["", "-- passes --", "traced:"] + _indent(str(self.traced))
        for name, text in self.passes:
            lines.append(f"after {name}:" + ("" if text else " (unchanged)"))
            lines += _indent(text)
        lines += ["", "-- compiled --", self.compiled.report()]
        return "\n".join(lines)

    __repr__ = __str__


def _indent(text):
    return ["  " + line for line in text.splitlines()]


def explain(f, backend=None, static_argnums=()):
    """Report what jit would compile for these arguments: explain(f)(*args) -> Explanation.

    The Explanation has .graph (the optimized graph the backend compiled), .passes (the
    graph after each pass), .fallbacks (ATen ops run through the opaque torch.func
    fallback: fusion barriers), .kernels and .backend; print() shows the whole report,
    including the generated code or the fusion groups and Triton kernels.

    Example:
      >>> print(functx.explain(lambda x: torch.softmax(x, -1))(torch.randn(4, 8)))
    """
    static_argnums = normalize_argnums(static_argnums, "functx.explain")
    inner = f.f if isinstance(f, JitFunction) else f
    if isinstance(f, JitFunction):
        backend = backend or f.backend
        static_argnums = static_argnums or f.static_argnums

    @functools.wraps(inner)
    def explained(*args, **kwargs):
        with user_facing():       # traced as jit traces, so the graphs are the same
            traced = trace_graph(inner, args, kwargs, static_argnums, "functx.explain", mutations=True)
        leaves, _ = tree_flatten((args, kwargs))
        compiled, passes = compile_graph(traced, backend, leaves, record=True)
        ran = _entry_that_ran(f, args, kwargs)
        if ran is not None and ran.compiled.backend == compiled.backend:
            compiled = ran.compiled      # report the state of what jit runs (the CPU backend's tier)
        return Explanation(compiled, traced, passes)
    return explained


def _entry_that_ran(f, args, kwargs):
    """The cached jit entry of a JitFunction for these arguments, if it has been called."""
    if not isinstance(f, JitFunction):
        return None
    key, _, _ = f._key(args, kwargs)
    return f._cache.get(key) if key is not None else None
