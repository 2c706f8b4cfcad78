"""jit: trace once per signature (pytree structure, shapes, dtypes, devices, the types of
Python numbers, static values), optimize, compile on a backend, cache (jit_cache.py). Under another transform (a tracer among the
arguments, or a non-eval trace current) jit inlines: the enclosing transform sees the
function's primitives directly.
"""
from __future__ import annotations

import functools
import types
import warnings

import torch

from ..core import EVAL_TRACE
from ..core.nan_check import STATE as _NANS
from ..core.errors import FunctxError, PlainWriteError, user_facing
from ..core.trace import _functorch_level, record_autograd_reads, refuse_inside_torch_func
from ..core.trace import _state as _trace_state
from ..frontend import TracerTensor
from ..frontend.generators import generator_arguments
from ..frontend.random_mode import storage_address
from ..frontend.tensor import record_layout_reads
from ..tree_util import tree_flatten, tree_unflatten
from .backend import resolve_backend
from .closure_guard import RUN_PLAIN, ClosureGuard, ModuleGuard, PythonValues, ReachedModules, module_flags
from .module_buffers import SwappedBuffers, buffer_arguments, leaked_into, leaked_into_reached
from .object_values import called_modules
from .write_back import cuts_derivatives, unread_inputs, with_autograd_variant, writes_without_derivative
from .eager import EagerCompiled
from .pipeline import compile_graph
from .jit_cache import DEFAULT_CACHE_LIMIT, ArgNamer, SignatureCache, dict_orders, make_key, torch_state, value_key  # noqa: F401,E501
from .dynamic_dims import DynamicDims
from ..frontend.staging import (is_dynamic_scalar, is_sparse_constant, normalize_argnums, scalar_as_tensor, scalar_device, split_static,
                      split_static_kwargs, trace_graph)


class _Entry:
    """One cached signature: the compiled graph (entry.compiled.graph is what ran through
    the pipeline, with its meta) and what the hot path calls."""
    __slots__ = ("compiled", "call", "unflatten", "key", "symbolic", "notes", "pattern", "generators", "guard",
                 "module_guard", "plain_for_autograd")

    def __init__(self, compiled, key, symbolic=None, notes=(), cuda_graphs=None, generators=(), untracked=(),
                 plain_for_autograd=False, unread=frozenset(), autograd_variant=None):
        self.compiled = compiled
        self.key = key
        self.symbolic = symbolic      # a SymbolicShapes when one trace serves many sizes
        self.notes = list(notes)      # lines for cache_info/explain (symbolic dims, fallbacks)
        self.pattern = None           # symbolic: the leaf keys with the dynamic dims masked
        self.generators = generators  # [(leaf index, GeneratorSlot)]: bound before each call
        meta = compiled.graph.meta
        self.guard = ClosureGuard.of(meta.closure_reads, meta.traced_with_grad)   # None: nothing to check
        self.module_guard = None       # set by JitFunction._entry: f reaches modules or Python values
        if self.guard is not None:
            self.notes.append(self.guard.note())
        # f read requires_grad, detached, ran ops under no_grad, registered a tensor hook or
        # called a custom_jvp / custom_vjp function whose body the graph holds
        # (core/trace.record_autograd_reads): calls torch autograd records run f as plain torch
        self.plain_for_autograd = plain_for_autograd
        if plain_for_autograd:
            self.notes.append("reads requires_grad, detaches, runs ops under no_grad, registers tensor hooks or "
                              "calls custom_jvp / custom_vjp functions: calls that torch autograd records (an "
                              "argument requires grad) run f as plain torch")
        # The hot path: the backend's plain callable (the generated function itself on the
        # eager backend; on the Triton backend replayed from a CUDA graph where safe) and
        # the cheapest way to rebuild the output structure.
        self.call = compiled.with_cuda_graphs(compiled.call, cuda_graphs)
        if meta.out_tree.is_leaf():
            self.unflatten = _first
        else:
            self.unflatten = functools.partial(tree_unflatten, meta.out_tree)
        if autograd_variant is not None:      # the graph cuts derivatives (write_back.py)
            self.call = with_autograd_variant(self.call, autograd_variant, compiled.graph.consts)
        if meta.mutated_inputs:
            self.call = _writing_back(self.call, meta.mutated_inputs, untracked, _constant_storages(compiled.graph),
                                      unread)


def _records_autograd(args, kwargs):
    """Whether torch autograd records a call with these arguments."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                           for t in tree_flatten((args, kwargs))[0])


def _holds_state(v) -> bool:
    """A static argument whose attributes a trace may read (a jitted method's self: a module
    or any object with a __dict__), not a function, class or Python module."""
    return isinstance(v, torch.nn.Module) or (
        hasattr(v, "__dict__") and not isinstance(v, (type, types.FunctionType, types.MethodType,
                                                      types.ModuleType, functools.partial)))


def _constant_storages(graph) -> frozenset:
    """The storages of the tensors a graph holds as constants or read at trace time (closed
    over): fixed while the entry lives (new data retraces, closure_guard)."""
    tensors = [c for c in graph.consts if isinstance(c, torch.Tensor)]
    tensors += [r.tensor for r in graph.meta.closure_reads]
    return frozenset(storage_address(t) for t in tensors
                     if type(t) in (torch.Tensor, torch.nn.Parameter) and t.numel())


def _writing_back(call, mutated, untracked=(), constants=frozenset(), unread=frozenset()):
    """f wrote into some of its inputs: the graph returns their new values last; copy them
    into the caller's tensors, as running f eagerly would have. Writes to the leaves in
    `untracked` (the reached modules' buffers, and inputs whose new value has no derivative:
    writes_without_derivative) are not recorded by autograd, as torch's own
    running-statistics updates are not. `unread`: inputs the graph never reads."""
    n = len(mutated)

    def call_and_write_back(*tensors):
        _refuse_aliased_writes(tensors, mutated, constants, unread)
        if torch.is_grad_enabled():
            # autograd may save an input the call reads (torch.mv saves its vector); the write
            # below would then break backward ("modified by an inplace operation"): give the
            # call copies, as eager code that updates a buffer (spectral_norm's u, v) reads clones
            ins = list(tensors)
            for k in mutated:
                ins[k] = ins[k].clone()
            outs = call(*ins)
        else:
            outs = call(*tensors)
        for k, value in zip(mutated, outs[-n:]):
            if k in untracked:
                with torch.no_grad():
                    tensors[k].copy_(value)
            else:
                tensors[k].copy_(value)
        return outs[:-n]
    return call_and_write_back


def _autograd_call(graph, leaves):
    """The graph compiled for calls torch autograd records: the eager backend's torch code
    with the stop_gradients kept (.detach()), so that autograd cuts what torch cuts."""
    return compile_graph(graph, "eager", leaves, keep_stop_gradient=True)[0].call


def _refuse_aliased_writes(tensors, mutated, constants=frozenset(), unread=frozenset()):
    """The graph treats its inputs as separate tensors: a write into one that shares memory
    with another (the same tensor passed twice, a view of another argument) or with a tensor
    f closes over (passing `w` to a function that also reads `w`) would not be seen through
    the other, unlike eager PyTorch. Another input the graph never reads cannot see a stale
    value: a reached module's buffer that functional_call(model, (params, buffers)) replaced
    by the same tensor passed as an argument."""
    storages = [storage_address(t) if t.numel() else None for t in tensors]
    for k in mutated:
        if storages[k] in constants:
            raise FunctxError(
                f"functx.jit: tensor argument {k} is written in place and shares memory with a tensor "
                "the function closes over (a global, a closure variable, a module's parameter or "
                "buffer). The compiled function reads that tensor as it was before the call, so it "
                "would not see the write, unlike eager PyTorch. Pass a separate tensor (e.g. w.clone()).")
        for j, s in enumerate(storages):
            if j != k and s is not None and s == storages[k] and (j not in unread or j in mutated):
                raise FunctxError(
                    f"functx.jit: tensor argument {k} is written in place and shares memory with tensor "
                    f"argument {j} (the same tensor passed twice, or a view of another argument). The "
                    "compiled function treats its arguments as separate tensors, so the other would not "
                    "see the write, unlike eager PyTorch. Pass separate tensors (e.g. b.clone()), or "
                    "return the new value instead of writing into an aliased argument.")


def _first(outs):
    return outs[0]


def _layout_key(t):
    """Part of a tensor's key once the function reads its arguments' storage offsets
    (as_strided, x.storage_offset()); strides are always in the key."""
    return t.storage_offset()



# Exact types that take the fast path (TracerTensor and other subclasses do not).
_PLAIN_TENSORS = frozenset({torch.Tensor, torch.nn.Parameter})
_SHALLOW = _PLAIN_TENSORS | {int, float}


def _plain_tensors(seq) -> bool:
    for t in seq:
        if type(t) not in _PLAIN_TENSORS or t.layout is not torch.strided:
            return False
    return True


def normalize_argnames(static_argnames):
    names = (static_argnames,) if isinstance(static_argnames, str) else static_argnames
    try:
        names = tuple(names)
    except TypeError:
        names = None
    if names is None or not all(isinstance(n, str) for n in names):
        raise TypeError("functx.jit: static_argnames must be a str or a sequence of str, got "
                        f"{static_argnames!r}")
    return names


class JitFunction:
    """A jitted function. `.cache_info()` lists the traced signatures and why each retrace
    happened; `.cache_size()` counts them; `.lower(*args)` gives the entry.

    Calls with positional plain tensors and Python numbers only (the common case) take a
    fast path: the key is the tuple of (shape, dtype, device) per tensor and the type of each
    number, checked first against the last call's key. Everything else goes through the
    general key (pytree structure + per-leaf signature + static values)."""

    def __init__(self, f, static_argnums=(), backend=None, static_argnames=(),
                 cache_limit=DEFAULT_CACHE_LIMIT, warn_on_retrace=False, dynamic=None, dynamic_dims=None,
                 cuda_graphs=None):
        self.f = f
        self.cuda_graphs = cuda_graphs
        namer = ArgNamer(f)
        nums = normalize_argnums(static_argnums, "functx.jit")
        names = normalize_argnames(static_argnames)
        # As in JAX, each names the other where f's signature says which is which.
        self.static_argnums = nums
        self._named_nums = tuple(i for i in namer.argnums_of(names) if i not in nums)
        self.static_argnames = names + tuple(n for n in namer.argnames_of(nums) if n not in names)
        self._namer = namer
        self.backend = backend
        self._cache = SignatureCache(cache_limit, namer, warn_on_retrace, getattr(f, "__name__", "f"))
        self._fast: dict = {}          # flat positional key -> entry (same entries as _cache)
        self._last_key = None
        self._last_entry = None
        self._reads_layouts = False     # set once a trace reads an argument's storage offset
        self._dims = DynamicDims(dynamic, dynamic_dims, namer)   # symbolic dims (dynamic_dims.py)
        self._warned_closure = False    # warned once that a closure guard retraced
        # The modules f reaches (closure_guard.ReachedModules): their train/eval flags are part
        # of the key; their buffers, and those of the modules passed as arguments, are
        # arguments while they may be written (a keyword the traced wrapper takes), so in-place
        # updates (BatchNorm's running statistics, a KV cache) are written back each call;
        # ModuleGuard checks their identity and tensors.
        self._modes = ReachedModules.of(f)
        self._fn = _buffers_as_arguments(f, self._modes)
        self._writes_buffers = False    # a reached module's forward writes buffers in eval mode too
        # Name and docstring only: merging f's __dict__ would let a wrapped JitFunction's own
        # state (its f, caches) overwrite ours, e.g. jit(grad(jit(f))) ran f, not grad(f).
        functools.update_wrapper(self, f, updated=())

    @property
    def trace_count(self) -> int:
        return self._cache.traces

    def _static_nums(self, args, method):
        # a static parameter passed by keyword is static by name (static_argnames names it)
        nums = tuple(i for i in self.static_argnums
                     if i < len(args) or not self._namer.argnames_of((i,)) or i < 0) \
            + tuple(i for i in self._named_nums if i < len(args))
        return ((0,) + tuple(i for i in nums if i != 0)) if method else nums

    def _key(self, args, kwargs, nums):
        """(key, graph inputs, all leaves); key is None when a TracerTensor is among them.
        The graph inputs are the tensor leaves and the dynamic Python numbers (as 0-d
        tensors), in leaf order, as trace_graph makes them."""
        if nums:
            dynamic, static, nums = split_static(args, nums, "functx.jit")
        else:
            dynamic, static = args, ()
        kwargs, static_kw = split_static_kwargs(kwargs, self.static_argnames)
        leaves, treedef = tree_flatten((dynamic, kwargs))
        inputs = []
        device = None
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                if isinstance(leaf, TracerTensor):
                    return None, None, leaves
                if not is_sparse_constant(leaf):
                    inputs.append(leaf)
            elif is_dynamic_scalar(leaf):
                device = device or scalar_device(leaves)
                inputs.append(scalar_as_tensor(leaf, device))
        try:
            # debug_nans compiles a checked artifact: the flag is part of the key
            key = make_key(treedef, leaves, list(zip(nums, static)) + sorted(static_kw.items())) + (_NANS.on,
                                                                                                   torch_state())
            if self._modes is not None:
                key += (self._modes.flags(),)
            # modules among the static arguments (a jitted method's self) and passed as arguments
            flags = module_flags(tuple(static) + tuple(l for l in leaves if isinstance(l, torch.nn.Module)))
            if flags is not None:
                key += (flags,)
            if self._reads_layouts:       # a trace read storage offsets (as_strided, storage_offset())
                key += (tuple(_layout_key(t) for t in inputs),)
            orders = dict_orders(treedef, (dynamic, [kwargs[k] for k in sorted(kwargs)]))
            if orders is not None:
                key += (("dict key order", orders),)
            hash(key)
        except TypeError:
            raise TypeError("functx.jit: non-tensor arguments must be hashable (they are part of the "
                            "cache key); mark them static or pass tensors") from None
        return key, inputs, leaves

    def _entry(self, key, args, kwargs, leaves, nums, reason=None):
        entry = self._cache.get(key)
        if entry is None:
            entry = self._dims.lookup(key, leaves, self._cache)
        if entry is None:
            # the Python values the trace may bake in, as they are before it (closure_guard)
            passed = [args[i] for i in nums if -len(args) <= i < len(args) and _holds_state(args[i])]
            passed += [l for l in leaves if isinstance(l, torch.nn.Module) and not any(l is p for p in passed)]
            values = PythonValues.of(self.f, (self._modes.modules() if self._modes is not None else []) + passed)
            before = values.capture() if values is not None else None
            paths = key[0].paths()
            backend = resolve_backend(self.backend, leaves)
            static_why = ("debug_nans re-runs the graph's equations with their trace-time parameters"
                          if _NANS.on else None if getattr(backend, "symbolic_sizes", False) else
                          f"symbolic dims run on the eager and triton backends; the {backend.backend} "
                          "backend compiles one kernel set per size")
            symbolic, notes = self._dims.plan(key, leaves, static_why, lambda k: self._namer(paths[k]))
            layouts = None
            if symbolic is not None:
                try:
                    graph, layouts, generators = self._trace(args, kwargs, nums, paths, symbolic.shape, leaves)
                    compiled, _ = compile_graph(graph, self.backend, leaves)
                    symbolic.finish()
                    if not symbolic.holds(leaves):
                        raise RuntimeError("the guards do not hold for the traced sizes")
                except Exception as e:    # any part that cannot take a symbolic size: trace statically
                    notes = self._dims.failed(key, symbolic, e)
                    symbolic = None
            if symbolic is None:
                with user_facing():       # here, so that the error's traceback has no functx frames below
                    graph, layouts, generators = self._trace(args, kwargs, nums, paths, None, leaves)
            if layouts.read and not self._reads_layouts:
                # The graph depends on its arguments' strides and offsets: from now on they are
                # part of every key (and the fast path, which omits them, is off).
                self._reads_layouts = True
                self._fast.clear()
                self._last_key = self._last_entry = None
                if symbolic is not None:
                    notes = self._dims.failed(key, symbolic, RuntimeError("it reads its arguments' strides"))
                key = self._key(args, kwargs, nums)[0]
                if symbolic is not None:
                    with user_facing():
                        graph, layouts, generators = self._trace(args, kwargs, nums, paths, None, leaves)
                    symbolic = None
            if symbolic is None:
                compiled, _ = compile_graph(graph, self.backend, leaves)
            entry = _Entry(compiled, key, symbolic, notes, self.cuda_graphs, generators,
                           _buffer_inputs(key, leaves) | writes_without_derivative(graph),
                           plain_for_autograd=layouts.autograd, unread=unread_inputs(graph),
                           autograd_variant=(functools.partial(_autograd_call, graph, leaves)
                                             if cuts_derivatives(graph) else None))
            # modules the call passes (a static self, a module as an argument, part of the key by
            # identity) are guarded like reached modules; values the trace changed are not
            if values is not None:
                values.take(before)
            if self._modes is not None or values is not None or layouts.called:
                entry.module_guard = ModuleGuard(self._modes, values, passed, layouts.called)
            if symbolic is not None:
                entry.key = self._dims.add(entry, key)     # the key with its dims symbolic
            evicted = self._cache.add(entry.key, entry, reason_key=key, reason=reason)
            if evicted:
                for e in evicted:      # the cpu backend's kept buffers go now, not at garbage collection
                    release = getattr(e.compiled, "release", None)
                    if release is not None:
                        release()
                self._fast = {k: e for k, e in self._fast.items() if e not in evicted}
                if self._last_entry in evicted:
                    self._last_key = self._last_entry = None
        return entry

    def _leaf_name(self, path):
        if len(path) == 4 and path[:2] == (1, _BUFFERS):     # what _buffers_as_arguments passes
            return (f"the buffer {path[3]!r} of a module f reaches or is passed (jit passes the buffers of a "
                    "module that trains as arguments, so their updates are written back)")
        return self._namer(path)

    def _state_tracers(self, args, kwargs):
        """(where, value) for the traced values in the state of objects f is passed or reaches."""
        kwargs = {k: v for k, v in kwargs.items() if k != _BUFFERS}
        yield from leaked_into(args, kwargs, lambda a: tree_flatten(a)[0])
        yield from leaked_into_reached(self.f, _all_modules(self._modes, args, kwargs))

    def _trace(self, args, kwargs, nums, paths, shapes, leaves):
        before = {id(t) for _, t in self._state_tracers(args, kwargs)}
        with record_layout_reads() as layouts, generator_arguments(leaves) as generators, \
                record_autograd_reads() as autograd, called_modules() as called:
            graph = trace_graph(self._fn, args, kwargs, nums, "functx.jit", mutations=True,
                                static_argnames=self.static_argnames, dynamic_scalars=True,
                                arg_names=lambda k: self._leaf_name(paths[k]), shapes=shapes)
        layouts.autograd, layouts.called = autograd.read, list(called.values())
        for where, t in self._state_tracers(args, kwargs):
            if id(t) in before:
                continue
            raise FunctxError(
                f"functx.jit: f stored a value it computed in an object passed to it or reached ({where}). Under jit "
                "f's Python code runs once, when traced: later calls run the compiled graph, which "
                "neither updates that object nor reads it (a cache appended to would stay as the trace "
                "left it, silently). Keep such state in tensors f takes and returns (or writes in "
                "place: jit writes mutated arguments back), or call f without jit.")
        return graph, layouts, generators

    def lower(self, *args, **kwargs):
        nums = self._static_nums(args, False)
        key, inputs, leaves = self._key(args, kwargs, nums)
        if key is None:
            raise TypeError("functx.jit: lower() needs concrete tensors, not traced values")
        return self._entry(key, args, kwargs, leaves, nums), inputs

    def with_buffers(self, args, kwargs, always=None):
        """kwargs plus the buffers of the modules f reaches or is passed (the traced wrapper's
        keyword) while they may be written; in eval mode they are closed over (only read)."""
        modules = _all_modules(self._modes, args, kwargs)
        if modules:
            buffers = buffer_arguments(modules, self._writes_buffers if always is None else always)
            if buffers:
                return {**kwargs, _BUFFERS: buffers}
        return kwargs

    def __call__(self, *args, **kwargs):
        if _trace_state.trace is not EVAL_TRACE:
            return self.f(*args, **kwargs)
        if _functorch_level() is not None:       # inside torch.func: raise, naming the fix
            refuse_inside_torch_func("functx.jit")
        if self._modes is not None:
            kwargs = self.with_buffers(args, kwargs)
        try:
            if not kwargs and not self.static_argnums and not self._named_nums and not _NANS.on \
                    and not self._reads_layouts:
                sig = []
                scalars = nested = False
                for a in args:
                    kind = type(a)
                    if kind in _PLAIN_TENSORS and a.layout is torch.strided:
                        sig.append((a.shape, a.dtype, a.device, a.stride()))
                    elif kind is float or kind is int and is_dynamic_scalar(a):
                        sig.append(kind)
                        scalars = True
                    elif (kind is tuple or kind is list) and _plain_tensors(a):
                        # a parameter tuple: its tensors are graph inputs in order (tree_flatten's)
                        sig.append((kind, tuple([(t.shape, t.dtype, t.device, t.stride()) for t in a])))
                        nested = True
                    else:
                        break
                else:
                    sig.append(torch_state())
                    if self._modes is not None:
                        sig.append(self._modes.flags())
                    key = tuple(sig)
                    if key == self._last_key:
                        entry = self._last_entry
                        self._cache.hits += 1
                    else:
                        entry = self._fast.get(key)
                        if entry is None or self._cache.get(entry.key) is None:
                            gkey, _, leaves = self._key(args, kwargs, ())
                            if len(self._fast) > 4 * (self._cache.limit or 256):
                                self._fast.clear()     # symbolic entries serve many exact keys
                            entry = self._fast[key] = self._entry(gkey, args, kwargs, leaves, ())
                        self._last_key, self._last_entry = key, entry
                    if entry.guard is not None or entry.module_guard is not None or entry.plain_for_autograd:
                        entry = self._guarded(entry, args, kwargs, (), stacklevel=3)
                        if entry is None:
                            return self.f(*args)
                    inputs = args
                    if nested:
                        inputs = [t for a in args for t in (a if type(a) in (tuple, list) else (a,))]
                    if scalars:
                        device = scalar_device(inputs)
                        inputs = [scalar_as_tensor(a, device) if type(a) in (float, int) else a for a in inputs]
                    try:
                        return entry.unflatten(entry.call(*inputs))
                    except Exception as e:
                        if entry.symbolic is None:
                            raise
                        entry, inputs = self._symbolic_failed(entry, args, kwargs, (), e)
                        return entry.unflatten(entry.call(*inputs))
            if self._modes is None:     # (the fast path above takes no module arguments)
                kwargs = self.with_buffers(args, kwargs)
            return self._call(args, kwargs, False)
        except PlainWriteError:
            if not self._buffers_written(args, kwargs):
                raise
            return self(*args, **kwargs)

    def _buffers_written(self, args, kwargs) -> bool:
        """After a trace raised PlainWriteError: whether a reached or passed module's eval-mode
        forward may have written a buffer (a KV cache); if so, from now on the buffers are
        arguments (with_buffers), and the call traces again."""
        kwargs.pop(_BUFFERS, None)
        if self._writes_buffers or _BUFFERS not in self.with_buffers(args, kwargs, True):
            return False
        self._writes_buffers = True
        return True

    def _call(self, args, kwargs, method):
        nums = self._static_nums(args, method)
        key, inputs, leaves = self._key(args, kwargs, nums)
        if key is None:       # traced arguments: inline into the enclosing transform
            return self._fn(*args, **kwargs)
        entry = self._entry(key, args, kwargs, leaves, nums)
        if entry.guard is not None or entry.module_guard is not None or entry.plain_for_autograd:
            entry = self._guarded(entry, args, kwargs, nums)
            if entry is None:
                return self._fn(*args, **kwargs)
        return self._run(entry, inputs, leaves, args, kwargs, nums)

    def _guarded(self, entry, args, kwargs, nums, stacklevel=4):
        """The entry to run after its ClosureGuard's check: itself, a new trace, or None (run
        f as plain torch)."""
        if entry.plain_for_autograd and _records_autograd(args, kwargs):
            return None
        why = entry.guard.check() if entry.guard is not None else None
        if why is None and entry.module_guard is not None:
            why = entry.module_guard.why()
        if why is None:
            return entry
        if why == RUN_PLAIN:
            return None
        if not self._warned_closure:
            self._warned_closure = True
            advice = ("Python values the function reads from its closure, globals or modules are "
                      "constants of the traced graph; pass numbers that change as arguments (a Python "
                      "float or int argument is dynamic: no retrace)"
                      if "Python " in why or "attribute" in why or "hook" in why else
                      "A value computed from closed-over tensors is a constant of the traced graph; pass "
                      "tensors that change (a module's parameters: functional_call(model, params, x)) "
                      "as arguments to avoid retracing")
            warnings.warn(f"functx.jit: retracing {getattr(self.f, '__name__', 'f')}: {why}. {advice}.",
                          stacklevel=stacklevel)
        return self._retrace(entry, args, kwargs, nums, reason=why)[0]

    def _run(self, entry, inputs, leaves, args, kwargs, nums):
        for k, slot in entry.generators:      # draws read this call's generators
            slot.current = leaves[k]
        try:
            return entry.unflatten(entry.call(*inputs))
        except Exception as e:
            if entry.symbolic is None:
                raise
            entry, inputs = self._symbolic_failed(entry, args, kwargs, nums, e)
            return self._run(entry, inputs, leaves, args, kwargs, nums)

    def _symbolic_failed(self, entry, args, kwargs, nums, error):
        """A symbolic entry raised at run time (a part of functx that mishandled a symbolic
        size and slipped past the compile-time checks): drop it and trace this signature
        statically (which raises again if the error is the function's own)."""
        self._dims.discard(entry, error)
        return self._retrace(entry, args, kwargs, nums)

    def _retrace(self, entry, args, kwargs, nums, reason=None):
        """Drop entry from the caches and trace this call's signature again -> (entry, inputs)."""
        self._cache.entries.pop(entry.key, None)
        self._fast = {k: e for k, e in self._fast.items() if e is not entry}
        self._last_key = self._last_entry = None
        key, inputs, leaves = self._key(args, kwargs, nums)
        return self._entry(key, args, kwargs, leaves, nums, reason=reason), inputs

    def __get__(self, obj, objtype=None):
        """@jit on a method: self is bound and static (keyed by its own hash: identity for
        most objects, nn.Modules included), as JAX recommends; see docs/sharp_bits.md."""
        if obj is None:
            return self
        return BoundJitMethod(self, obj)

    def cache_size(self) -> int:
        return len(self._cache.entries)

    def cache_info(self):
        """A CacheInfo: entries (one description per traced signature), retraces (which
        argument changed and how, per trace after the first), traces, hits, evictions."""
        return self._cache.info()


_BUFFERS = "_functx_module_buffers"


def _buffer_inputs(key, leaves) -> frozenset:
    """Positions, among the graph's inputs (the tensor and dynamic-number leaves, as _key
    collects them), of the reached modules' buffers passed by keyword."""
    paths = key[0].paths()
    inputs = [p for p, leaf in zip(paths, leaves)
              if (isinstance(leaf, torch.Tensor) and not is_sparse_constant(leaf)) or is_dynamic_scalar(leaf)]
    return frozenset(k for k, p in enumerate(inputs) if _BUFFERS in p)


def _passed_modules(args, kwargs) -> list:
    """The nn.Modules among the arguments (a model passed to a jitted step, a jitted
    method's self), in leaf order; plain tensors and numbers are not looked into."""
    if not kwargs:
        for a in args:
            if type(a) not in _SHALLOW:
                break
        else:
            return []
    return [leaf for leaf in tree_flatten((args, kwargs))[0] if isinstance(leaf, torch.nn.Module)]


def _all_modules(reached, args, kwargs) -> list:
    """The modules f reaches, then those passed to it that it does not reach, each once (a
    module twice would pass its buffers twice, as aliasing arguments)."""
    out = reached.modules() if reached is not None else []
    for m in _passed_modules(args, kwargs):
        if not any(m is o for o in out):
            out.append(m)
    return out


def _buffers_as_arguments(f, reached):
    """The traced function: f with the reached and passed modules holding the buffers given
    by keyword (tracers), so their in-place updates are writes to arguments."""
    @functools.wraps(f)
    def run(*args, **kwargs):
        buffers = kwargs.pop(_BUFFERS, None)
        if buffers is None:
            return f(*args, **kwargs)
        with SwappedBuffers(_all_modules(reached, args, kwargs), buffers):
            return f(*args, **kwargs)
    return run


class BoundJitMethod:
    """A jitted method bound to an instance: calls the JitFunction with self static."""
    __slots__ = ("jitted", "obj")

    def __init__(self, jitted, obj):
        self.jitted, self.obj = jitted, obj

    def __call__(self, *args, **kwargs):
        if _trace_state.trace is not EVAL_TRACE:
            return self.jitted.f(self.obj, *args, **kwargs)
        try:
            hash(self.obj)
        except TypeError:
            raise TypeError(f"functx.jit on a method: self (a {type(self.obj).__name__}) is a static "
                            "argument, part of the cache key, so it must be hashable; define __hash__ "
                            "(identity is fine) or jit a function that takes the state as an argument") from None
        full = (self.obj,) + args
        try:
            return self.jitted._call(full, self.jitted.with_buffers(full, kwargs), True)
        except PlainWriteError:
            if not self.jitted._buffers_written(full, dict(kwargs)):
                raise
            return self(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.jitted, name)


def jit(f=None, *, static_argnums=(), static_argnames=(), backend=None, cache_limit=DEFAULT_CACHE_LIMIT,
        warn_on_retrace=False, dynamic=None, dynamic_dims=None, cuda_graphs=None):
    """Compile f: trace once per input signature, optimize, compile, cache (JAX's jit).

    The cache key is the pytree structure of the arguments, the shape/dtype/device of each
    tensor leaf, the *type* of each Python int and float, and the values of the other
    non-tensor leaves and of the static arguments. Python ints and floats are dynamic
    (JAX's weak types): traced as 0-d inputs that promote as the Python number would, so a
    learning rate that changes every step reuses one trace; if Python needs the value
    (a shape, an index, an `if`), a ConcretizationError names the argument: mark it static.
    bools and other Python values are static. Closed-over tensors are constants of the
    graph: pass anything that changes (parameters) as an argument. Under another transform,
    or when called with tracers, a jitted function inlines into the enclosing trace. Usable
    as @jit (on functions and methods; self is static) or jit(f, ...).

    Args:
      f: a function of tensors (pytrees of tensors) and Python numbers returning tensors.
      static_argnums: positions of arguments treated as static (hashable, part of the key).
      static_argnames: names of arguments treated as static (f's signature maps names and
        positions both ways, as in JAX).
      backend: None (default): 'cpu' for CPU tensors, 'triton' for CUDA tensors when Triton
        is installed. 'cpu': the generated PyTorch code at once, fused C++ kernels (built in
        the background, cached on disk) from the first call after they are ready, or from the
        first call when the disk cache has them; the tiers may differ in the last bits (see
        docs/sharp_bits.md). 'eager': the generated PyTorch code only, bit-stable
        (functx.compile.cpu.CONFIG.default_backend = 'eager' makes it the CPU default).
        'triton': fused Triton kernels.
      cache_limit: the most traced signatures kept (least recently used evicted, with one
        warning naming the argument that keeps changing); None for no limit.
      warn_on_retrace: warn on every retrace, saying which argument changed and how.
      dynamic: None (default): a tensor dimension seen with two different sizes is traced
        symbolically from then on, so one graph serves every size (where the decisions
        Python made on the size still hold; see docs/compiler.md, "Dynamic shapes"); every
        backend compiles such a graph once, its sizes read at call time (kernel arguments);
        True: every dimension of every tensor argument is symbolic from the first call;
        False: every size traces again (static shapes).
      dynamic_dims: {argument name or position: dim or dims} marked symbolic from the first
        call (torch's mark_dynamic), for every tensor in that argument.
      cuda_graphs: on the Triton backend with CUDA tensors, capture each cache entry's host
        wrapper into a CUDA graph after two warm-up calls and replay it (inputs copied into
        static buffers, outputs returned as fresh clones), where the graph is safe to capture
        (no host callbacks, collectives, random draws, host-read control flow, opaque ops or
        symbolic sizes; explain says which). None: the default, `functx.compile.cuda_graphs.CONFIG.enabled`
        (on; FUNCTX_CUDA_GRAPHS=0 turns it off); False: never.

    Returns:
      A JitFunction: call it like f; .cache_info() lists the signatures and the retraces.

    Example:
      >>> step = functx.jit(functx.value_and_grad(loss))
      >>> loss_value, grads = step(params, x, y)
    """
    options = dict(static_argnums=static_argnums, static_argnames=static_argnames, backend=backend,
                   cache_limit=cache_limit, warn_on_retrace=warn_on_retrace, dynamic=dynamic,
                   dynamic_dims=dynamic_dims, cuda_graphs=cuda_graphs)
    if f is None:
        return lambda g: JitFunction(g, **options)
    return JitFunction(f, **options)
