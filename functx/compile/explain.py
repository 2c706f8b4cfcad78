"""explain: what jit would compile for some arguments, as an Explanation."""
from __future__ import annotations

import functools

from ..core.errors import user_facing
from .jit import JitFunction
from .pipeline import compile_graph
from ..frontend.staging import normalize_argnums, trace_graph


class Explanation:
    """What functx.explain found; str() is the report.

    .graph: the optimized graph the backend compiled (the same object as .compiled.graph);
    .traced: the graph before the passes; .passes: [(pass name, graph after it, or '' if
    the pass changed nothing)]; .fallbacks: ATen ops run through the opaque fallback;
    .compiled, .backend, .kernels, .groups (fusion groups, triton backend); for a jitted
    function, .cache (its cache_info()), .retrace (why this call would retrace, or None) and
    .dims (the entry's symbolic dims, their guards with the lines that made them, and why a
    dim stayed static). With a symbolic entry, .graph is its graph (sizes as symbols);
    .traced and .passes are a static trace at this call's sizes."""

    def __init__(self, compiled, traced, passes):
        self.compiled = compiled
        self.graph = compiled.graph
        self.traced = traced
        self.passes = passes
        self.fallbacks = list(self.graph.meta.fallbacks)
        self.rewrites = list(self.graph.meta.rewrites)     # the trace's and the passes' (fuse_attention)
        self.backend = compiled.backend
        self.kernels = list(compiled.kernels)
        self.groups = list(compiled.groups)
        self.cache = None        # explain(jitted): its CacheInfo
        self.retrace = None      # explain(jitted): why this call would retrace (a Retrace), if it would
        self.dims = []           # explain(jitted): the entry's symbolic dims, guards, static fallbacks

    def __str__(self):
        lines = ["== functx.explain ==", f"backend: {self.backend}", "", "-- graph --", str(self.graph), ""]
        if self.fallbacks:
            lines.append("-- fallbacks (ATen ops run through the opaque torch.func fallback) --")
            lines += [f"  {name}" for name in self.fallbacks]
        else:
            lines.append("-- fallbacks: none --")
        lines += ["-- rewrites --"] + [f"  {line}" for line in self.rewrites] if self.rewrites else []
        lines += ["", "-- passes --", "traced:"] + _indent(str(self.traced))
        for name, text in self.passes:
            lines.append(f"after {name}:" + ("" if text else " (unchanged)"))
            lines += _indent(text)
        lines += ["", "-- compiled --", self.compiled.report()]
        if self.dims:
            lines += ["", "-- dynamic shapes (this call's entry) --"] + [f"  {line}" for line in self.dims]
        if self.cache is not None:
            lines += ["", "-- jit cache --", str(self.cache),
                      f"this call: {'retraces: ' + str(self.retrace) if self.retrace else 'cached or first trace'}"]
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
    jitted = f if isinstance(f, JitFunction) else JitFunction(f, static_argnums, backend)

    @functools.wraps(jitted.f)
    def explained(*args, **kwargs):
        nums = jitted._static_nums(args, False)
        kwargs = jitted.with_buffers(args, kwargs)
        key, _, leaves = jitted._key(args, kwargs, nums)
        paths = key[0].paths() if key is not None else None
        with user_facing():       # traced as jit traces, so the graphs are the same
            traced = trace_graph(jitted._fn, args, kwargs, nums, "functx.explain", mutations=True,
                                 static_argnames=jitted.static_argnames, dynamic_scalars=True,
                                 arg_names=paths and (lambda k: jitted._namer(paths[k])))
        compiled, passes = compile_graph(traced, backend or jitted.backend, leaves, record=True)
        ran = None
        if f is jitted and key is not None:
            ran = jitted._cache.entries.get(key) or jitted._dims.lookup(key, leaves, jitted._cache, count=False)
            if ran is not None and ran.compiled.backend == compiled.backend:
                compiled = ran.compiled      # report what jit runs (the CPU backend's tier, a symbolic graph)
        explanation = Explanation(compiled, traced, passes)
        if ran is not None:
            explanation.dims = list(ran.notes)
        if f is jitted:       # explain(a jitted function): its cache, and whether this call hits it
            explanation.cache = jitted.cache_info()
            explanation.retrace = None if ran is not None else jitted._cache.why_miss(key)
        return explanation
    return explained

