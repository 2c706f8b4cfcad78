"""The opaque fallback: an ATen op with no mapping and no decomposition runs as itself,
and transforms reach it through torch.func (prims/opaque.py). Every use is recorded so
that functx.explain can report it.
"""
from __future__ import annotations

import torch
import torch._library.custom_ops as _custom_ops
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from ..core.errors import ConcretizationError, FunctxError, user_frame_summary
from ..core.trace import PrimalTracer, Tracer, concrete
from ..core.types import TensorType
from ..prims.debug import debug_callback
from ..prims.opaque import OpaqueFunction, opaque
from .functionalize import unwrap
from .tensor import TracerTensor

_recorders: list = []


class record_fallbacks:
    """Context manager collecting the names of ATen ops that hit the fallback."""

    def __enter__(self):
        self.ops: list[str] = []
        _recorders.append(self.ops)
        return self.ops

    def __exit__(self, *exc):
        # by identity: nested recorders (a graph traced inside a trace) hold equal lists
        del _recorders[next(i for i, r in enumerate(_recorders) if r is self.ops)]


_FUNCTIONS: dict = {}

aten = torch.ops.aten
# ATen ops whose forward-mode formulas in torch are wrong, silently: their jvp is taken from
# reverse mode instead (prims/opaque.py, OpaqueFunction.reverse_jvp). scatter_reduce's "prod"
# tangent is 0; householder_product's is right, but its own derivative is not (second order).
FORWARD_AD_WRONG = frozenset({aten.scatter_reduce.two, aten.linalg_householder_product.default})


_PYTHON_RESULTS = frozenset({"bool", "int", "float", "Scalar", "SymInt", "SymFloat", "SymBool"})


def opaque_fallback(func, args, kwargs):
    if not func._schema.returns:
        return _run_check(func, args, kwargs)
    if all(str(r.type) in _PYTHON_RESULTS for r in func._schema.returns):
        # torch.allclose, is_same_size, ...: a Python value, computed from the inputs' values
        # (as torch.equal is; under jit or vmap, a ConcretizationError), not an opaque tensor op
        a, k = tree_map(lambda x: concrete(unwrap(x)) if isinstance(x, torch.Tensor) else x, (args, kwargs))
        return func(*a, **k)
    flat, spec = tree_flatten((args, kwargs))
    positions = [i for i, a in enumerate(flat) if isinstance(a, torch.Tensor)]
    values = [unwrap(flat[i]) for i in positions]
    statics = [None if i in set(positions) else a for i, a in enumerate(flat)]
    try:
        out_types, single = _output_types(func, flat, positions, spec)
    except _SparseResult as r:
        out_types, single = r.types
        _refuse_abstract_sparse(func, values)
    name = str(func)
    for ops in _recorders:
        if name not in ops:
            ops.append(name)

    def fn(*tensors):
        leaves = list(statics)
        for i, t in zip(positions, tensors):
            leaves[i] = t
        a, k = tree_unflatten(leaves, spec)
        out = func(*a, **k)
        return (out,) if single else tuple(out)

    outs = opaque(OpaqueFunction(fn, name, reverse_jvp=func in FORWARD_AD_WRONG,
                                 no_derivative=_custom_op_without_derivative(func)), values, out_types)
    outs = [TracerTensor(o) if not isinstance(o, TracerTensor) else o for o in outs]
    return outs[0] if single else tuple(outs)


# ATen ops torch does not differentiate although they are differentiable (their results do
# not require grad: torch.func gives zero derivatives, autograd drops the term). The Bessel
# functions have derivatives here (lowerings/special.py); these raise instead of a zero.
NOT_DIFFERENTIATED = frozenset({"aten::special_airy_ai"} | {
    f"aten::special_{p}_polynomial_{k}" for p, ks in (
        ("chebyshev", "tuvw"), ("shifted_chebyshev", "tuvw"), ("hermite", ("h", "he")), ("laguerre", "l"),
        ("legendre", "p")) for k in ks})


def _custom_op_without_derivative(func):
    """Why a torch.library custom op (torch.library.custom_op) has no derivative here, or
    None for other ops: torch.func, which the opaque rules use, gives its forward-mode tangent
    as zeros, silently, and raises in reverse mode (its register_autograd formula included)."""
    if func._schema.name in NOT_DIFFERENTIATED:
        return (f"functx: {func} has no derivative in PyTorch (torch treats its result as a constant: "
                "torch.func gives a zero derivative and torch.autograd drops the term, silently), so functx "
                "raises for any derivative of it rather than return zero. Write the function with "
                "differentiable torch ops (a recurrence) or as a torch.autograd.Function with its derivative")
    if func.namespace in ("aten", "prims") or _custom_ops.OPDEFS.get(func._schema.name) is None:
        return None
    return (f"functx: {func} is a torch.library custom op, which functx runs opaquely through "
            "torch.func; torch.func does not differentiate such ops (its jvp gives zero tangents, "
            "silently; its grad raises, also with a register_autograd formula), so functx raises for "
            "any derivative of it. Write the function with torch ops, or as a torch.autograd.Function "
            "with setup_context (and jvp for forward mode), which functx's transforms honour")


def _run_check(func, args, kwargs):
    """An op with no outputs (_linalg_check_errors, _assert_async, ...) only checks its
    inputs: run it on concrete values when there are some (eager). On abstract or batched
    values (jit, vmap) it runs when the program does, per example under vmap, as a debug
    callback, which no pass removes (skipping it returned torch.linalg.cholesky's garbage
    for a matrix that is not positive-definite, where eager torch raises)."""
    try:
        a, k = tree_map(lambda x: concrete(unwrap(x)) if isinstance(x, torch.Tensor) else x, (args, kwargs))
    except FunctxError:
        flat, spec = tree_flatten((args, kwargs))
        positions = [i for i, x in enumerate(flat) if isinstance(x, torch.Tensor)]

        def check(*tensors):
            for i, t in zip(positions, tensors):
                flat[i] = t
            a, k = tree_unflatten(flat, spec)
            func(*a, **k)
        debug_callback(check, *[unwrap(flat[i]) for i in positions])
        return None
    return func(*a, **k)


def _lstsq_values(args, kwargs, device):
    # Only gelsd and gelss make a shape depend on values: their residuals are returned when A
    # is tall and of full rank (the rank is computed). gels (CUDA's default and only driver)
    # returns them whenever A is tall, gelsy (CPU's default) never: shapes from shapes alone.
    driver = kwargs.get("driver", args[3] if len(args) > 3 else None)
    return () if driver in (None, "gels", "gelsy") else None


# Dynamic-shape ops whose output shapes depend on the values of only some arguments (or, in
# some cases, of none): op -> (args, kwargs, device) -> the names of those arguments, or None
# for all of them. The others may be abstract: ctc_loss's log_alpha is (batch, time,
# 2 * max(target_lengths) + 1), so a jitted loss over traced log-probabilities needs only
# concrete target lengths.
_SHAPE_DETERMINING = {torch.ops.aten._ctc_loss.Tensor: lambda *_: ("target_lengths",),
                      torch.ops.aten.bincount.default: lambda *_: ("self",),      # not the weights
                      torch.ops.aten.linalg_lstsq.default: _lstsq_values}


def _repeat_interleave_sized(args, kwargs, device):
    size = kwargs.get("output_size", args[1] if len(args) > 1 else None)
    return None if size is None else [TensorType((size,), args[0].dtype, device)]


# Dynamic-shape ops whose caller may give the output's size (torch checks it when the op
# runs): repeat_interleave(repeats, output_size=n), what torch.repeat_interleave(x, repeats,
# dim, output_size=n) calls for its indices, so that jit (and torch.compile) can trace it.
_SIZED = {torch.ops.aten.repeat_interleave.Tensor: _repeat_interleave_sized}


def _shape_determining(func, flat, spec, device):
    """ids of the tensors whose values decide func's output shapes (None: all of them)."""
    rule = _SHAPE_DETERMINING.get(func)
    if rule is None:
        return None
    args, kwargs = tree_unflatten(flat, spec)
    names = rule(args, kwargs, device)
    if names is None:
        return None
    schema = [a.name for a in func._schema.arguments]
    named = {**dict(zip(schema, args)), **kwargs}
    return {id(named[n]) for n in names if isinstance(named.get(n), torch.Tensor)}


def _output_types(func, flat, positions, spec):
    device = next((flat[i].device for i in positions), torch.device("cpu"))
    if torch.Tag.dynamic_output_shape in func.tags:
        return _types_from_values(func, flat, positions, spec, device)
    if any(0 in tuple(flat[i].shape) for i in positions):
        # An empty operand: torch's kernel checks what its meta function may not (median over
        # an empty dim), and running it on no data costs nothing, so its answer is the type.
        empty = list(flat)
        for i in positions:
            empty[i] = torch.zeros(flat[i].shape, dtype=flat[i].dtype)
        a, k = tree_unflatten(empty, spec)
        return _types_of(func, func(*a, **k), device)
    meta = list(flat)
    for i in positions:
        meta[i] = torch.empty(flat[i].shape, dtype=flat[i].dtype, device="meta")
    a, k = tree_unflatten(meta, spec)
    try:
        out = func(*a, **k)
    except Exception:
        cpu = list(flat)
        for i in positions:
            cpu[i] = torch.zeros(flat[i].shape, dtype=flat[i].dtype)
        a, k = tree_unflatten(cpu, spec)
        out = func(*a, **k)
    return _types_of(func, out, device)


def _types_from_values(func, flat, positions, spec, device):
    """nonzero, unique, masked_select, ...: the output's shape depends on the input's values,
    so it comes from running the op on them (eager transforms); abstract values (jit, vmap)
    have none, and a shape guessed from placeholder data would be silently wrong."""
    sized = _SIZED.get(func)
    if sized is not None:
        args, kwargs = tree_unflatten(flat, spec)
        types = sized(args, kwargs, device)
        if types is not None:
            return types, True
    determining = _shape_determining(func, flat, spec, device)
    values, unknown = list(flat), []
    for i in positions:
        if determining is None or id(flat[i]) in determining:
            try:
                values[i] = concrete(unwrap(flat[i]))
            except FunctxError:
                unknown.append(i)
        else:
            # placeholders on the operands' device: an op's shapes may depend on it (lstsq's
            # default driver: gelsy on the CPU, no residuals; gels on CUDA, residuals)
            values[i] = torch.zeros(flat[i].shape, dtype=flat[i].dtype, device=flat[i].device)
    if not unknown:
        a, k = tree_unflatten(values, spec)
        return _types_of(func, func(*a, **k), device)
    examples = _examples(unwrap(flat[unknown[0]])) if len(unknown) == 1 else None
    if not examples:
        raise ConcretizationError(
            f"functx: {func}'s output shape depends on the values of its input, which are not known "
            f"here (under jit, or per example under vmap):\n{user_frame_summary()}\n"
            + _STATIC_HINTS.get(func, _STATIC_HINT))
    # One operand holds a value per example under eager vmaps (a batch of graphs' edge indices
    # counted by bincount): the type is each example's, as a loop over the examples finds it,
    # where all of them agree (torch.func.vmap's batching of the op answers the same).
    first = None
    for e in examples:
        values[unknown[0]] = e
        a, k = tree_unflatten(values, spec)
        out_types, single = _types_of(func, func(*a, **k), device)
        if first is None:
            first = out_types
        elif out_types != first:
            shapes = f"{list(first[0].shape)} and {list(out_types[0].shape)}"
            raise ConcretizationError(
                f"functx.vmap: {func}'s output shape depends on its input's values, and differs "
                f"between examples ({shapes}), so the results can't be stacked (a loop over the "
                f"examples fails at torch.stack too):\n{user_frame_summary()}\n"
                + _STATIC_HINTS.get(func, _STATIC_HINT))
    return out_types, single


_STATIC_HINT = ("Keep shapes static: select with torch.where(mask, x, 0) instead of x[mask] or "
                "x[torch.where(mask)], use the fixed-size form where there is one "
                "(torch.nonzero_static(mask, size=n)), or run this step outside jit/vmap.")
_STATIC_HINTS = {torch.ops.aten.repeat_interleave.Tensor: (
    "Give the output's size: torch.repeat_interleave(x, repeats, dim=d, output_size=n) (n the "
    "sum of repeats) traces, or run this step outside jit/vmap."),
    torch.ops.aten.bincount.default: (
    "Count into a tensor of a static length n instead: torch.zeros(n).index_add_(0, index, "
    "torch.ones(len(index))) (or scatter_add_, with weights in place of the ones), or run this "
    "step outside jit/vmap.")}


def _examples(v):
    """The concrete values, one per example, beneath a value of eager vmap levels (a batch
    tracer's whole batch, sliced along its batch dim, below each level's, beneath any JVP
    primal); None where something beneath is abstract (jit)."""
    while True:
        if isinstance(v, torch.Tensor):
            return [v]
        if hasattr(v, "resolve"):                 # an eager unit's pending result
            v = v.resolve()
        elif isinstance(v, PrimalTracer):
            v = v.primal
        elif isinstance(v, Tracer) and hasattr(v, "bdim"):
            below = _examples(v.val)
            if below is None or v.bdim is None:
                return below
            return [e.select(v.bdim, i) for e in below for i in range(e.shape[v.bdim])]
        else:
            try:
                return [concrete(v)]
            except FunctxError:
                return None


def _types_of(func, out, device):
    single = isinstance(out, torch.Tensor)
    outs = [out] if single else list(out)
    if not all(isinstance(o, torch.Tensor) for o in outs):
        raise FunctxError(f"functx: {func} has no mapping to primitives, and its outputs are not "
                          "all tensors, so it can't run through the opaque fallback")
    types = [TensorType(tuple(o.shape), o.dtype, device) for o in outs], single
    if any(o.layout != torch.strided for o in outs):
        raise _SparseResult(types)
    return types


class _SparseResult(Exception):
    """An op whose result is sparse: the fallback runs it on values, never on abstract ones."""

    def __init__(self, types):
        self.types = types


def _refuse_abstract_sparse(func, values):
    """A sparse tensor made from traced values (torch.sparse_coo_tensor(edge_index, weights)
    with learned weights): eager grad and jvp carry it as an opaque value, but under jit and
    vmap the value is abstract and functx's abstract values are dense, so the compiled code
    failed inside torch ("unsupported memory format option Contiguous", "expand is
    unsupported for Sparse tensors")."""
    try:
        for v in values:
            concrete(v)
    except FunctxError:
        raise FunctxError(
            f"functx: {func} makes a sparse tensor from traced values, here:\n{user_frame_summary()}\n"
            "functx's traced values are dense, so under jit and vmap (jacfwd, hessian) a sparse "
            "result can't be represented. Build the sparse tensor outside the transformed function "
            "(a closed-over sparse tensor, or a sparse argument of jit, stays sparse), or aggregate "
            "over the edges directly: torch.zeros(n, d).index_add_(0, dst, w[:, None] * x[src]) is "
            "the same product, differentiable to every order.") from None
