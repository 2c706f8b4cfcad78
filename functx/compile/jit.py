"""make_graph, jit and explain.

jit traces once per signature (pytree structure, shapes, dtypes, devices, static values),
runs passes, compiles the graph on a backend and caches the result. Under another
transform (a tracer among the arguments, or a non-eval trace current) jit inlines:
the enclosing transform sees the function's primitives directly.
"""
from __future__ import annotations

import functools

import torch

from ..core import EVAL_TRACE, GraphTrace, current_trace, set_current_trace
from ..core.trace import Tracer, type_of
from ..frontend import TracerTensor, record_fallbacks, unwrap, wrap
from ..transforms.tree import tree_flatten, tree_unflatten
from . import passes
from .eager import EagerCompiled

BACKENDS = {"eager": EagerCompiled}


def _triton_backend():
    from .triton import TritonCompiled
    return TritonCompiled


def resolve_backend(backend, leaves):
    if backend is None:
        on_cuda = any(isinstance(x, torch.Tensor) and x.is_cuda for x in leaves)
        backend = "triton" if on_cuda and _triton_available() else "eager"
    if backend == "triton":
        return _triton_backend()
    if backend not in BACKENDS:
        raise ValueError(f"functx: unknown backend {backend!r}; choose 'eager' or 'triton'")
    return BACKENDS[backend]


@functools.lru_cache(maxsize=1)
def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
        return True
    except ImportError:
        return False


def _split_static(args, static_argnums, what):
    nums = tuple(a % len(args) if args else a for a in static_argnums)
    for a in nums:
        if not 0 <= a < len(args):
            raise ValueError(f"{what}: static_argnums {static_argnums} out of range for {len(args)} arguments")
    dynamic = tuple(None if i in nums else a for i, a in enumerate(args))
    static = tuple(args[i] for i in nums)
    for i, s in zip(nums, static):
        try:
            hash(s)
        except TypeError:
            raise TypeError(f"{what}: static argument {i} ({type(s).__name__}) must be hashable") from None
    return dynamic, static, nums


def trace_graph(f, args, kwargs, static_argnums=(), what="functx.make_graph"):
    """Trace f at abstract versions of the tensor leaves of args/kwargs -> (graph, fallbacks)."""
    dynamic, static, nums = _split_static(args, static_argnums, what)
    leaves, treedef = tree_flatten((dynamic, kwargs))
    trace = GraphTrace(current_trace(), stage_all=True)
    tracers, vals = [], []
    for leaf in leaves:
        if isinstance(leaf, (torch.Tensor, Tracer)):
            t = trace.new_arg(type_of(unwrap(leaf)))
            tracers.append(t)
            vals.append(wrap(t))
        else:
            vals.append(leaf)
    dyn, kw = tree_unflatten(treedef, vals)
    full = list(dyn)
    for i, s in zip(nums, static):
        full[i] = s
    with record_fallbacks() as fallbacks, set_current_trace(trace):
        out = f(*full, **kw)
        out_leaves, out_tree = tree_flatten(out)
        for i, leaf in enumerate(out_leaves):
            if not isinstance(leaf, (torch.Tensor, Tracer)):
                raise TypeError(f"{what}: output leaf {i} of f is a {type(leaf).__name__}, not a tensor; "
                                "return tensors (or close over non-tensor values)")
        out_vals = [unwrap(l) for l in out_leaves]   # inside the trace: a stale view recomputes here
    graph = trace.to_graph(tracers, out_vals)
    graph.in_tree, graph.out_tree = treedef, out_tree
    return graph, list(fallbacks)


def make_graph(f, static_argnums=()):
    """make_graph(f)(*args) -> the Graph of f at these arguments; str(graph) prints it."""
    static_argnums = (static_argnums,) if isinstance(static_argnums, int) else tuple(static_argnums)

    @functools.wraps(f)
    def graph_of(*args, **kwargs):
        graph, fallbacks = trace_graph(f, args, kwargs, static_argnums)
        graph.fallbacks = fallbacks
        return graph
    return graph_of


def optimize(graph):
    return passes.dce(graph)


class _Entry:
    __slots__ = ("compiled", "out_tree", "fallbacks", "graph")

    def __init__(self, compiled, out_tree, fallbacks, graph):
        self.compiled, self.out_tree, self.fallbacks, self.graph = compiled, out_tree, fallbacks, graph


class JitFunction:
    """A jitted function. `.cache_size()` counts traced signatures; `.lower(*args)` gives the entry."""

    def __init__(self, f, static_argnums=(), backend=None):
        self.f = f
        self.static_argnums = (static_argnums,) if isinstance(static_argnums, int) else tuple(static_argnums)
        self.backend = backend
        self._cache: dict = {}
        self.trace_count = 0
        functools.update_wrapper(self, f)

    def _key(self, args, kwargs):
        nums = self.static_argnums
        if nums:
            dynamic, static, _ = _split_static(args, nums, "functx.jit")
        else:
            dynamic, static = args, ()
        leaves, treedef = tree_flatten((dynamic, kwargs))
        sig = []
        tensors = []
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                sig.append((leaf.shape, leaf.dtype, leaf.device))
                tensors.append(leaf)
            else:
                sig.append(leaf)
        try:
            key = (treedef, tuple(sig), static)
            hash(key)
        except TypeError:
            raise TypeError("functx.jit: non-tensor arguments must be hashable (they are part of the "
                            "cache key); mark them static or pass tensors") from None
        return key, tensors, leaves

    def lower(self, *args, **kwargs):
        key, tensors, leaves = self._key(args, kwargs)
        entry = self._cache.get(key)
        if entry is None:
            graph, fallbacks = trace_graph(self.f, args, kwargs, self.static_argnums, "functx.jit")
            self.trace_count += 1
            graph = optimize(graph)
            compiled = resolve_backend(self.backend, leaves)(graph)
            entry = _Entry(compiled, graph.out_tree, fallbacks, graph)
            self._cache[key] = entry
        return entry, tensors

    def __call__(self, *args, **kwargs):
        if current_trace() is not EVAL_TRACE or _has_tracer(args, kwargs):
            return self.f(*args, **kwargs)
        entry, tensors = self.lower(*args, **kwargs)
        outs = entry.compiled(*tensors)
        return tree_unflatten(entry.out_tree, list(outs))

    def cache_size(self) -> int:
        return len(self._cache)


def _has_tracer(args, kwargs) -> bool:
    leaves, _ = tree_flatten((args, kwargs))
    return any(isinstance(l, TracerTensor) for l in leaves)


def jit(f=None, *, static_argnums=(), backend=None):
    """Trace once per input signature, optimize, compile, cache. Usable as @jit or jit(f, ...)."""
    if f is None:
        return lambda g: JitFunction(g, static_argnums, backend)
    return JitFunction(f, static_argnums, backend)


class Explanation:
    """What functx.explain found: .graph, .fallbacks, .kernels, .backend; str() is the report."""

    def __init__(self, graph, fallbacks, compiled):
        self.graph = graph
        self.fallbacks = fallbacks
        self.compiled = compiled
        self.kernels = list(getattr(compiled, "kernels", []))
        self.backend = compiled.backend

    def __str__(self):
        lines = ["== functx.explain ==", f"backend: {self.backend}", "", "-- graph --", str(self.graph), ""]
        if self.fallbacks:
            lines.append("-- fallbacks (ATen ops run through the opaque torch.func fallback) --")
            lines += [f"  {name}" for name in self.fallbacks]
        else:
            lines.append("-- fallbacks: none --")
        lines.append("")
        lines.append("-- compiled --")
        lines.append(self.compiled.report())
        return "\n".join(lines)

    __repr__ = __str__


def explain(f, backend=None, static_argnums=()):
    """explain(f)(*args): the graph jit would compile, the fallbacks, the kernels."""
    static_argnums = (static_argnums,) if isinstance(static_argnums, int) else tuple(static_argnums)
    inner = f.f if isinstance(f, JitFunction) else f

    @functools.wraps(inner)
    def explained(*args, **kwargs):
        graph, fallbacks = trace_graph(inner, args, kwargs, static_argnums, "functx.explain")
        graph = optimize(graph)
        leaves, _ = tree_flatten((args, kwargs))
        compiled = resolve_backend(backend, leaves)(graph)
        return Explanation(graph, fallbacks, compiled)
    return explained
