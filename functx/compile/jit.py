"""jit: trace once per signature (pytree structure, shapes, dtypes, devices, static
values), optimize, compile on a backend, cache. Under another transform (a tracer among the
arguments, or a non-eval trace current) jit inlines: the enclosing transform sees the
function's primitives directly.
"""
from __future__ import annotations

import functools
import struct

import torch

from ..core import EVAL_TRACE
from ..core.errors import FunctxError, user_facing
from ..core.trace import _state as _trace_state
from ..frontend import TracerTensor
from ..frontend.tensor import record_layout_reads
from ..tree_util import tree_flatten, tree_unflatten
from .pipeline import compile_graph
from .tracing import normalize_argnums, split_static, trace_graph


class _Entry:
    """One cached signature: the compiled graph (entry.compiled.graph is what ran through
    the pipeline, with its meta) and what the hot path calls."""
    __slots__ = ("compiled", "call", "unflatten")

    def __init__(self, compiled):
        self.compiled = compiled
        meta = compiled.graph.meta
        # The hot path: the backend's plain callable (the generated function itself on the
        # eager backend) and the cheapest way to rebuild the output structure.
        self.call = compiled.call
        if meta.out_tree.is_leaf():
            self.unflatten = _first
        else:
            self.unflatten = functools.partial(tree_unflatten, meta.out_tree)
        if meta.mutated_inputs:
            self.call = _writing_back(self.call, meta.mutated_inputs)


def _writing_back(call, mutated):
    """f wrote into some of its inputs: the graph returns their new values last; copy them
    into the caller's tensors, as running f eagerly would have."""
    n = len(mutated)

    def call_and_write_back(*tensors):
        _refuse_aliased_writes(tensors, mutated)
        outs = call(*tensors)
        for k, value in zip(mutated, outs[-n:]):
            tensors[k].copy_(value)
        return outs[:-n]
    return call_and_write_back


def _refuse_aliased_writes(tensors, mutated):
    """The graph treats its inputs as separate tensors: a write into one that shares memory
    with another (the same tensor passed twice, a view of another argument) would not be
    seen through the other, unlike eager PyTorch."""
    storages = [t.untyped_storage().data_ptr() if t.numel() else None for t in tensors]
    for k in mutated:
        for j, s in enumerate(storages):
            if j != k and s is not None and s == storages[k]:
                raise FunctxError(
                    f"functx.jit: tensor argument {k} is written in place and shares memory with tensor "
                    f"argument {j} (the same tensor passed twice, or a view of another argument). The "
                    "compiled function treats its arguments as separate tensors, so the other would not "
                    "see the write, unlike eager PyTorch. Pass separate tensors (e.g. b.clone()), or "
                    "return the new value instead of writing into an aliased argument.")


def _first(outs):
    return outs[0]


def _layout_key(t):
    """Part of a tensor's key once the function reads its arguments' layouts (as_strided)."""
    return t.stride(), t.storage_offset()


def value_key(value):
    """The cache key of a non-tensor argument: its type and value, with floats by their bits
    (Python says 2 == 2.0 == True and 0.0 == -0.0, and nan != nan; a trace specialized to one
    of those must not serve the others, and a nan must hit the cache)."""
    if isinstance(value, float):
        return float, struct.pack("<d", value)
    return type(value), value


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
        self.static_argnums = normalize_argnums(static_argnums, "functx.jit")
        self.backend = backend
        self._cache: dict = {}
        self._fast: dict = {}          # flat-tensor key -> entry (same entries as _cache)
        self._last_key = None
        self._last_entry = None
        self.trace_count = 0
        self._reads_layouts = False     # set once a trace reads an argument's layout (as_strided)
        # Name and docstring only: merging f's __dict__ would let a wrapped JitFunction's own
        # state (its f, caches) overwrite ours, e.g. jit(grad(jit(f))) ran f, not grad(f).
        functools.update_wrapper(self, f, updated=())

    def _key(self, args, kwargs):
        """(key, tensor leaves, all leaves); key is None when a TracerTensor is among them."""
        nums = self.static_argnums
        if nums:
            dynamic, static, _ = split_static(args, nums, "functx.jit")
        else:
            dynamic, static = args, ()
        leaves, treedef = tree_flatten((dynamic, kwargs))
        sig = []
        tensors = []
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                if isinstance(leaf, TracerTensor):
                    return None, None, leaves
                sig.append((leaf.shape, leaf.dtype, leaf.device, _layout_key(leaf))
                           if self._reads_layouts else (leaf.shape, leaf.dtype, leaf.device))
                tensors.append(leaf)
            else:
                sig.append(value_key(leaf))
        try:
            key = (treedef, tuple(sig), tuple(value_key(s) for s in static))
            hash(key)
        except TypeError:
            raise TypeError("functx.jit: non-tensor arguments must be hashable (they are part of the "
                            "cache key); mark them static or pass tensors") from None
        return key, tensors, leaves

    def _entry(self, key, args, kwargs, leaves):
        entry = self._cache.get(key)
        if entry is None:
            with user_facing(), record_layout_reads() as layouts:
                graph = trace_graph(self.f, args, kwargs, self.static_argnums, "functx.jit",
                                    mutations=True)
            self.trace_count += 1
            if layouts.read and not self._reads_layouts:
                # The graph depends on its arguments' strides and offsets: from now on they are
                # part of every key (and the fast path, which omits them, is off).
                self._reads_layouts = True
                self._fast.clear()
                self._last_key = self._last_entry = None
                key = self._key(args, kwargs)[0]
            compiled, _ = compile_graph(graph, self.backend, leaves)
            entry = _Entry(compiled)
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
        if not kwargs and not self.static_argnums and not self._reads_layouts:
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
