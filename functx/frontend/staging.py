"""Tracing a Python function into a Graph: make_graph, and the trace jit and explain share.

Tensor leaves of the arguments become graph inputs; non-tensor leaves and static
arguments are fixed at trace time. What the trace learns besides the equations (pytree
structures, inputs written in place, fallback ops) goes into graph.meta.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools

import torch
from torch.overrides import TorchFunctionMode

from ..core import GraphMeta, GraphTrace, TensorType, current_trace, nan_check, set_current_trace
from ..core.errors import ConcretizationError, user_facing
from ..core.trace import Tracer, refuse_inside_torch_func, type_of
from . import TracerTensor, record_fallbacks, record_rewrites, unwrap, wrap, wrap_input
from .functionalize import RESULT_LAYOUTS
from .dispatch import PIN_SIZES, PinSizesOnConstants
from .promote import is_weak, mark_strong
from .. import prims as P
from .random_mode import active_mode, intercept_random
from ..tree_util import tree_flatten, tree_unflatten

_CPU = torch.device("cpu")


def normalize_argnums(static_argnums, what):
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


def split_static(args, static_argnums, what):
    for a in static_argnums:
        if not -len(args) <= a < len(args):
            raise ValueError(f"{what}: static_argnums={static_argnums!r} refers to argument {a}, but "
                             f"f was called with {len(args)} positional arguments")
    nums = tuple(a % len(args) for a in static_argnums)
    dynamic = tuple(None if i in nums else a for i, a in enumerate(args))
    static = tuple(args[i] for i in nums)
    for i, s in zip(nums, static):
        _check_static(s, f"static argument {i}", what)
    return dynamic, static, nums


def _check_static(s, name, what):
    if isinstance(s, (torch.Tensor, Tracer)):
        raise TypeError(f"{what}: {name} is a tensor; static arguments are compared by "
                        "value as part of the cache key, so they must be hashable Python values. "
                        "Pass tensors as ordinary (traced) arguments.")
    try:
        hash(s)
    except TypeError:
        raise TypeError(f"{what}: {name} is a {type(s).__name__}, which is not hashable; "
                        "static arguments are part of the cache key. Pass a hashable value "
                        "(e.g. a tuple instead of a list), or make it a traced argument.") from None


class _naming_scalars:
    """A ConcretizationError on a value computed from dynamic Python numbers names them and
    says how to make them static; one computed from tensor arguments alone names those (a
    module buffer jit passes as an argument: BatchNorm(momentum=None) reads
    float(num_batches_tracked) in training mode)."""

    def __init__(self, scalar_vars, arg_names, tensor_vars=None):
        self.scalar_vars, self.arg_names, self.tensor_vars = scalar_vars, arg_names, tensor_vars or {}

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        if not isinstance(exc, ConcretizationError):
            return False
        depends = getattr(exc, "depends_on", ())
        culprits = [k for v, k in self.scalar_vars.items() if v in depends]
        if not culprits:
            tensors = sorted(k for v, k in self.tensor_vars.items() if v in depends)
            if not tensors or self.arg_names is None:
                return False
            # the same exception, its traceback ending at the user's line
            exc.args = (f"{exc}\n\nThe value Python needed is computed from "
                        f"{', '.join(map(self.arg_names, tensors))}, traced (abstract) under jit.",)
            return False
        names = ", ".join(self.arg_names(k) if self.arg_names else f"leaf {k}" for k in culprits)
        raise ConcretizationError(
            f"{exc}\n\nThe value Python needed comes from {names}: functx.jit traces Python ints "
            "and floats as dynamic values (one trace serves every value). An argument used as a "
            "shape, a dimension, an index or in Python control flow must be static: "
            "functx.jit(f, static_argnames=(...)) or static_argnums=(...).") from None


class _NumbersAsTensors(TorchFunctionMode):
    """torch.as_tensor(s) / torch.asarray(s) / torch.tensor(s) of a dynamic Python number s
    (or of arithmetic on such numbers alone, a weak 0-d value): eager torch makes a tensor of
    the default dtype (int64 for an int) that promotes as a tensor, no longer as a Python
    number. These functions take no __torch_function__ from their data, so without this mode
    as_tensor returned the weak float64 value itself (another dtype than eager's, its value
    unrounded) and torch.tensor read it with .item()."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FROM_NUMBER and len(args) == 1 and _is_traced_number(args[0]) \
                and not kwargs.get("requires_grad") and kwargs.get("device") in (None, args[0].device):
            data, dtype = args[0], kwargs.get("dtype")
            if dtype is None:
                dtype = torch.get_default_dtype() if data.dtype.is_floating_point else data.dtype
            value = P.convert(unwrap(data), dtype)
            return wrap(mark_strong(P.mul(value, 1) if is_weak(value) else value))    # a fresh value
        return func(*args, **kwargs)


def _is_traced_number(data):
    return isinstance(data, TracerTensor) and data.dim() == 0 and is_weak(unwrap(data))


_FROM_NUMBER = {torch.as_tensor, torch.asarray, torch.tensor}


_INT64 = (-2 ** 63, 2 ** 63)
_SCALAR_DTYPE = {int: torch.int64, float: torch.float64}


def is_dynamic_scalar(leaf) -> bool:
    """Python ints (that fit int64) and floats are traced, not baked in (JAX's weak types);
    bools (flags, at most two traces) and complex numbers stay static."""
    kind = type(leaf)
    return kind is float or (kind is int and _INT64[0] <= leaf < _INT64[1])


def is_sparse_constant(leaf) -> bool:
    """A sparse tensor argument that nothing differentiates (a GCN's adjacency passed to
    model(x, adj)): jit traces with it as a constant of the graph, as if closed over, since
    functx's traced values are dense (traced, its sparse methods, elementwise ops and
    torch.sparse functions raised torch's layout errors). The cache keys it by identity."""
    return type(leaf) in _PLAIN and leaf.layout is not torch.strided and not leaf.requires_grad


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def scalar_device(leaves):
    """Where jit puts dynamic Python numbers: with the first tensor argument (CPU if none)."""
    return next((leaf.device for leaf in leaves if isinstance(leaf, torch.Tensor)), _CPU)


def scalar_as_tensor(value, device):
    return torch.tensor(value, dtype=_SCALAR_DTYPE[type(value)], device=device)


def split_static_kwargs(kwargs, static_argnames):
    if not static_argnames:
        return kwargs, {}
    dynamic = {k: v for k, v in kwargs.items() if k not in static_argnames}
    static = {k: v for k, v in kwargs.items() if k in static_argnames}
    for k, v in static.items():
        _check_static(v, f"static argument {k!r}", "functx.jit")
    return dynamic, static


@contextlib.contextmanager
def _result_layouts(on):
    """Symbolic traces keep every fresh value contiguous (functionalize.RESULT_LAYOUTS)."""
    saved, RESULT_LAYOUTS[0] = RESULT_LAYOUTS[0], on and RESULT_LAYOUTS[0]
    try:
        yield
    finally:
        RESULT_LAYOUTS[0] = saved


@contextlib.contextmanager
def _pin_sizes(on):
    """Symbolic traces: torch functions of constants and a size pin that size (the user's own
    code here, decompositions in dispatch._decompose; dispatch.PinSizesOnConstants)."""
    if not on:
        yield
        return
    saved, PIN_SIZES[0] = PIN_SIZES[0], True
    try:
        with PinSizesOnConstants():
            yield
    finally:
        PIN_SIZES[0] = saved


def _numbers_as_tensors(scalar_vars):
    return _NumbersAsTensors() if scalar_vars else contextlib.nullcontext()


def trace_graph(f, args, kwargs, static_argnums=(), what="functx.make_graph", mutations=False,
                static_argnames=(), dynamic_scalars=False, arg_names=None, shapes=None):
    """Trace f at abstract versions of the tensor leaves of args/kwargs -> Graph.

    mutations=True: the final values of inputs that f writes in place are extra outputs, and
    graph.meta.mutated_inputs lists their positions among the tensor leaves (jit copies
    them back). dynamic_scalars=True (jit): Python ints and floats among the leaves are graph
    inputs too, weakly typed 0-d tensors (is_dynamic_scalar); arg_names(leaf index) names
    one for the error when Python needs its value. shapes(leaf index, shape) -> the shape to
    trace that tensor leaf at (jit's symbolic dims: SymInts for the dynamic dims)."""
    dynamic, static, nums = split_static(args, static_argnums, what)
    kwargs, static_kw = split_static_kwargs(kwargs, static_argnames)
    leaves, treedef = tree_flatten((dynamic, kwargs))
    trace = GraphTrace(current_trace(), stage_all=True)
    tracers, vals, in_wrappers = [], [], []
    scalar_vars, tensor_vars = {}, {}
    device = scalar_device(leaves) if dynamic_scalars else None
    symbolic_leaves = set()
    for k, leaf in enumerate(leaves):
        if isinstance(leaf, (torch.Tensor, Tracer)) and not is_sparse_constant(leaf):
            typ = type_of(unwrap(leaf))
            if shapes is not None:
                typ = typ.with_shape(shapes(k, typ.shape))
                if any(isinstance(n, torch.SymInt) for n in typ.shape):
                    if not leaf.is_contiguous():
                        raise NotImplementedError("a non-contiguous argument (its strides would pin its sizes)")
                    symbolic_leaves.add(k)    # contiguous wrapper; as_strided notes a layout read
            t = trace.new_arg(typ)
            tensor_vars[t.var] = k
        elif dynamic_scalars and is_dynamic_scalar(leaf):
            t = trace.new_arg(TensorType((), _SCALAR_DTYPE[type(leaf)], device, weak=True))
            scalar_vars[t.var] = k
        else:
            vals.append(leaf)
            continue
        tracers.append(t)
        vals.append(wrap(t) if t.var in scalar_vars or k in symbolic_leaves else wrap_input(t, leaf))
        in_wrappers.append(vals[-1])
    dyn, kw = tree_unflatten(treedef, vals)
    full = list(dyn)
    for i, s in zip(nums, static):
        full[i] = s
    kw.update(static_kw)
    # intercept_random: torch.randn(shape) etc. are staged as random primitives, not baked in
    refuse_inside_torch_func(what)
    with record_fallbacks() as fallbacks, record_rewrites() as rewrites, set_current_trace(trace), \
            intercept_random(), _naming_scalars(scalar_vars, arg_names, tensor_vars), _result_layouts(shapes is None), \
            _pin_sizes(bool(symbolic_leaves)), _numbers_as_tensors(scalar_vars):
        mode = active_mode()
        first_read = len(mode.closure_reads) if mode is not None else 0
        traced_with_grad = torch.is_grad_enabled()
        out = f(*full, **kw)
        out_leaves, out_tree = tree_flatten(out)
        for i, leaf in enumerate(out_leaves):
            if not isinstance(leaf, (torch.Tensor, Tracer)):
                where = f" (at {out_tree.paths()[i]})"
                hint = ("; it is not a registered pytree type: register it (functx.tree_util."
                        "register_dataclass / register_pytree_node) or return its tensors in a tuple or dict"
                        if dataclasses.is_dataclass(leaf) or isinstance(leaf, dict) else "")
                raise TypeError(f"{what}: output leaf {i}{where} of f is a {type(leaf).__name__} "
                                f"({leaf!r:.40}), not a tensor; return tensors (or close over "
                                f"non-tensor values){hint}")
        out_vals = [unwrap(l) for l in out_leaves]   # inside the trace: a stale view recomputes here
        mutated = [k for k, w in enumerate(in_wrappers)
                   if mutations and isinstance(w, TracerTensor) and w._version_]
        out_vals += [unwrap(in_wrappers[k]) for k in mutated]
    reads = tuple(mode.closure_reads[first_read:]) if mode is not None else ()
    meta = GraphMeta(in_tree=treedef, out_tree=out_tree, mutated_inputs=tuple(mutated),
                     fallbacks=tuple(fallbacks), rewrites=tuple(rewrites), check_nans=nan_check.STATE.on,
                     closure_reads=reads, traced_with_grad=traced_with_grad)
    return trace.to_graph(tracers, out_vals).replace(meta=meta)


def make_graph(f, static_argnums=()):
    """Trace f into a functx Graph: make_graph(f)(*args) -> Graph (JAX's make_jaxpr).

    Tensor leaves of the arguments become graph inputs (only their shape, dtype and device
    matter); non-tensor arguments and static_argnums are fixed at trace time; closed-over
    tensors become constants. str(graph) prints it (`t3 = mul(t1, t2)  # f32[8,16]`);
    graph.fallbacks lists ATen ops that went through the opaque fallback.

    Example:
      >>> print(functx.make_graph(functx.grad(lambda x: torch.sin(x).sum()))(torch.randn(3)))
    """
    static_argnums = normalize_argnums(static_argnums, "functx.make_graph")

    @functools.wraps(f)
    def graph_of(*args, **kwargs):
        with user_facing():
            return trace_graph(f, args, kwargs, static_argnums)
    return graph_of
