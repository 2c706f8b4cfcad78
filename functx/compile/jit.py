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
from ..core.errors import user_facing
from ..core.trace import Tracer, type_of
from ..core.trace import _state as _trace_state
from ..frontend import TracerTensor, record_fallbacks, unwrap, wrap
from ..frontend.random_mode import intercept_random
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


def _normalize_argnums(static_argnums, what):
    """static_argnums as a tuple of ints (an int is one position)."""
    nums = (static_argnums,) if isinstance(static_argnums, int) else static_argnums
    try:
        nums = tuple(nums)
    except TypeError:
        raise TypeError(f"{what}: static_argnums must be an int or a sequence of ints, got "
                        f"{type(static_argnums).__name__}") from None
    for a in nums:
        if not isinstance(a, int) or isinstance(a, bool):
            raise TypeError(f"{what}: static_argnums must be an int or a sequence of ints, got "
                            f"{static_argnums!r}")
    return nums


def _split_static(args, static_argnums, what):
    for a in static_argnums:
        if not -len(args) <= a < len(args):
            raise ValueError(f"{what}: static_argnums={static_argnums!r} refers to argument {a}, but "
                             f"f was called with {len(args)} positional arguments")
    nums = tuple(a % len(args) for a in static_argnums)
    dynamic = tuple(None if i in nums else a for i, a in enumerate(args))
    static = tuple(args[i] for i in nums)
    for i, s in zip(nums, static):
        if isinstance(s, (torch.Tensor, Tracer)):
            raise TypeError(f"{what}: static argument {i} is a tensor; static arguments are compared by "
                            "value as part of the cache key, so they must be hashable Python values. "
                            "Pass tensors as ordinary (traced) arguments.")
        try:
            hash(s)
        except TypeError:
            raise TypeError(f"{what}: static argument {i} is a {type(s).__name__}, which is not hashable; "
                            "static arguments are part of the cache key. Pass a hashable value "
                            "(e.g. a tuple instead of a list), or make it a traced argument.") from None
    return dynamic, static, nums


def trace_graph(f, args, kwargs, static_argnums=(), what="functx.make_graph", mutations=False):
    """Trace f at abstract versions of the tensor leaves of args/kwargs -> (graph, fallbacks).

    mutations=True: the final values of inputs that f writes in place are extra outputs, and
    graph.mutated_inputs lists their positions among the tensor leaves (jit copies them back)."""
    dynamic, static, nums = _split_static(args, static_argnums, what)
    leaves, treedef = tree_flatten((dynamic, kwargs))
    trace = GraphTrace(current_trace(), stage_all=True)
    tracers, vals, in_wrappers = [], [], []
    for leaf in leaves:
        if isinstance(leaf, (torch.Tensor, Tracer)):
            t = trace.new_arg(type_of(unwrap(leaf)))
            tracers.append(t)
            vals.append(wrap(t))
            in_wrappers.append(vals[-1])
        else:
            vals.append(leaf)
    dyn, kw = tree_unflatten(treedef, vals)
    full = list(dyn)
    for i, s in zip(nums, static):
        full[i] = s
    # intercept_random: torch.randn(shape) etc. are staged as random primitives, not baked in
    with record_fallbacks() as fallbacks, set_current_trace(trace), intercept_random():
        out = f(*full, **kw)
        out_leaves, out_tree = tree_flatten(out)
        for i, leaf in enumerate(out_leaves):
            if not isinstance(leaf, (torch.Tensor, Tracer)):
                paths = out_tree.paths() if hasattr(out_tree, "paths") else None
                where = f" (at {paths[i]})" if paths else ""
                raise TypeError(f"{what}: output leaf {i}{where} of f is a {type(leaf).__name__} "
                                f"({leaf!r:.40}), not a tensor; return tensors (or close over "
                                "non-tensor values)")
        out_vals = [unwrap(l) for l in out_leaves]   # inside the trace: a stale view recomputes here
        mutated = [k for k, w in enumerate(in_wrappers)
                   if mutations and isinstance(w, TracerTensor) and w._version_]
        out_vals += [unwrap(in_wrappers[k]) for k in mutated]
    graph = trace.to_graph(tracers, out_vals)
    graph.in_tree, graph.out_tree = treedef, out_tree
    graph.mutated_inputs = tuple(mutated)
    return graph, list(fallbacks)


def make_graph(f, static_argnums=()):
    """Trace f into a functx Graph: make_graph(f)(*args) -> Graph (JAX's make_jaxpr).

    Tensor leaves of the arguments become graph inputs (only their shape, dtype and device
    matter); non-tensor arguments and static_argnums are fixed at trace time; closed-over
    tensors become constants. str(graph) prints it (`t3 = mul(t1, t2)  # f32[8,16]`);
    graph.fallbacks lists ATen ops that went through the opaque fallback.

    Example:
      >>> print(functx.make_graph(functx.grad(lambda x: torch.sin(x).sum()))(torch.randn(3)))
    """
    static_argnums = _normalize_argnums(static_argnums, "functx.make_graph")

    @functools.wraps(f)
    def graph_of(*args, **kwargs):
        with user_facing():
            graph, fallbacks = trace_graph(f, args, kwargs, static_argnums)
        graph.fallbacks = fallbacks
        return graph
    return graph_of


def optimize(graph):
    return passes.dce(graph)


class _Entry:
    __slots__ = ("compiled", "out_tree", "fallbacks", "graph", "call", "unflatten")

    def __init__(self, compiled, out_tree, fallbacks, graph):
        self.compiled, self.out_tree, self.fallbacks, self.graph = compiled, out_tree, fallbacks, graph
        # The hot path: the backend's plain callable (the generated function itself on the
        # eager backend) and the cheapest way to rebuild the output structure.
        self.call = getattr(compiled, "call", compiled)
        if out_tree.is_leaf():
            self.unflatten = _first
        else:
            self.unflatten = functools.partial(tree_unflatten, out_tree)
        mutated = getattr(graph, "mutated_inputs", ())
        if mutated:
            self.call = _writing_back(self.call, mutated)


def _writing_back(call, mutated):
    """f wrote into some of its inputs: the graph returns their new values last; copy them
    into the caller's tensors, as running f eagerly would have."""
    n = len(mutated)

    def call_and_write_back(*tensors):
        outs = call(*tensors)
        for k, value in zip(mutated, outs[-n:]):
            tensors[k].copy_(value)
        return outs[:-n]
    return call_and_write_back


def _first(outs):
    return outs[0]


# Exact types that take the fast path (TracerTensor and other subclasses do not).
_PLAIN_TENSORS = frozenset({torch.Tensor, torch.nn.Parameter})


class JitFunction:
    """A jitted function. `.cache_size()` counts traced signatures; `.lower(*args)` gives the entry.

    Calls with positional plain tensors only (the common case) take a fast path: the key is
    the tuple of (shape, dtype, device) per argument, checked first against the last call's
    key. Everything else goes through the general key (pytree structure + per-leaf
    signature + static values)."""

    def __init__(self, f, static_argnums=(), backend=None):
        self.f = f
        self.static_argnums = _normalize_argnums(static_argnums, "functx.jit")
        self.backend = backend
        self._cache: dict = {}
        self._fast: dict = {}          # flat-tensor key -> entry (same entries as _cache)
        self._last_key = None
        self._last_entry = None
        self.trace_count = 0
        # Name and docstring only: merging f's __dict__ would let a wrapped JitFunction's own
        # state (its f, caches) overwrite ours, e.g. jit(grad(jit(f))) ran f, not grad(f).
        functools.update_wrapper(self, f, updated=())

    def _key(self, args, kwargs):
        """(key, tensor leaves, all leaves); key is None when a TracerTensor is among them."""
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
                if isinstance(leaf, TracerTensor):
                    return None, None, leaves
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

    def _entry(self, key, args, kwargs, leaves):
        entry = self._cache.get(key)
        if entry is None:
            with user_facing():
                graph, fallbacks = trace_graph(self.f, args, kwargs, self.static_argnums, "functx.jit",
                                               mutations=True)
            self.trace_count += 1
            mutated = graph.mutated_inputs
            graph = optimize(graph)
            graph.mutated_inputs = mutated
            compiled = resolve_backend(self.backend, leaves)(graph)
            entry = _Entry(compiled, graph.out_tree, fallbacks, graph)
            self._cache[key] = entry
        return entry

    def lower(self, *args, **kwargs):
        key, tensors, leaves = self._key(args, kwargs)
        if key is None:
            raise TypeError("functx.jit: lower() needs concrete tensors, not traced values")
        return self._entry(key, args, kwargs, leaves), tensors

    def __call__(self, *args, **kwargs):
        if _trace_state.trace is not EVAL_TRACE:
            return self.f(*args, **kwargs)
        if not kwargs and not self.static_argnums:
            sig = []
            for a in args:
                if type(a) not in _PLAIN_TENSORS:
                    break
                sig.append((a.shape, a.dtype, a.device))
            else:
                key = tuple(sig)
                if key == self._last_key:
                    entry = self._last_entry
                else:
                    entry = self._fast.get(key)
                    if entry is None:
                        gkey, _, leaves = self._key(args, kwargs)
                        entry = self._fast[key] = self._entry(gkey, args, kwargs, leaves)
                    self._last_key, self._last_entry = key, entry
                return entry.unflatten(entry.call(*args))
        key, tensors, leaves = self._key(args, kwargs)
        if key is None:       # traced arguments: inline into the enclosing transform
            return self.f(*args, **kwargs)
        entry = self._entry(key, args, kwargs, leaves)
        return entry.unflatten(entry.call(*tensors))

    def cache_size(self) -> int:
        return len(self._cache)


def jit(f=None, *, static_argnums=(), backend=None):
    """Compile f: trace once per input signature, optimize, compile, cache (JAX's jit).

    The cache key is the pytree structure of the arguments, the shape/dtype/device of each
    tensor leaf, and the values of the non-tensor leaves (which are static: a new Python
    number traces again). Closed-over tensors are constants of the graph: pass anything
    that changes (parameters) as an argument. Under another transform, or when called
    with tracers, a jitted function inlines into the enclosing trace. Usable as @jit or
    jit(f, ...).

    Args:
      f: a function of tensors (pytrees of tensors) returning tensors.
      static_argnums: positions of arguments treated as static (hashable, part of the key).
      backend: 'eager' (generated PyTorch code; the default on CPU) or 'triton' (fused
        Triton kernels; the default for CUDA tensors when Triton is installed).

    Returns:
      A JitFunction: call it like f; .cache_size() counts the traced signatures.

    Example:
      >>> step = functx.jit(functx.value_and_grad(loss))
      >>> loss_value, grads = step(params, x, y)
    """
    if f is None:
        return lambda g: JitFunction(g, static_argnums, backend)
    return JitFunction(f, static_argnums, backend)


class Explanation:
    """What functx.explain found: .graph, .fallbacks, .kernels, .backend, .groups (fusion
    groups, triton backend) and .passes ((pass, graph after it) pairs); str() is the report."""

    def __init__(self, graph, fallbacks, compiled):
        self.graph = graph
        self.fallbacks = fallbacks
        self.compiled = compiled
        self.kernels = list(getattr(compiled, "kernels", []))
        self.groups = list(getattr(compiled, "groups", []))
        self.passes = list(getattr(compiled, "pass_trace", []))
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
    """Report what jit would compile for these arguments: explain(f)(*args) -> Explanation.

    The Explanation has .graph (the optimized graph), .fallbacks (ATen ops run through the
    opaque torch.func fallback: fusion barriers), .kernels and .backend; print() shows the
    whole report, including the generated code or the fusion groups and Triton kernels.

    Example:
      >>> print(functx.explain(lambda x: torch.softmax(x, -1))(torch.randn(4, 8)))
    """
    static_argnums = _normalize_argnums(static_argnums, "functx.explain")
    inner = f.f if isinstance(f, JitFunction) else f

    @functools.wraps(inner)
    def explained(*args, **kwargs):
        with user_facing():
            graph, fallbacks = trace_graph(inner, args, kwargs, static_argnums, "functx.explain")
        graph = optimize(graph)
        leaves, _ = tree_flatten((args, kwargs))
        compiled = resolve_backend(backend, leaves)(graph)
        return Explanation(graph, fallbacks, compiled)
    return explained
