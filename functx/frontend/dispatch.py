"""ATen op -> primitives: the order in which an op is handled.

1. the dtype rules of torch's kernels (kernel_check.py: pointwise ops, and the index,
   scatter, softmax, mean, convolution ops whose rules functx's lowerings skip); special ops
   that need the wrappers themselves (copy_, item, ...);
2. our lowering table (frontend/lowerings/); view ops there also record aliasing
   (frontend/functionalize.py);
3. in-place ops: the functional variant, then a functionalized write;
4. PyTorch's decomposition table (torch._decomp), then CompositeImplicit decomposition;
5. the opaque fallback (frontend/fallback.py), which explain() reports.
"""
from __future__ import annotations

import warnings

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch._decomp import decomposition_table
from torch.utils._pytree import tree_map

from ..core.errors import FunctxError, PlainWriteError, unbatched_write_message, user_frame_summary
from ..core import Zero, nan_check
from ..core.trace import Tracer, concrete, trace_state, type_of
from .. import prims as P
from .generators import drawing_from
from .fallback import opaque_fallback
from .kernel_check import SHAPE_CHECKS, check_kernel_accepts, is_pointwise
from .functionalize import (RESULT_LAYOUTS, check_no_internal_overlap, check_no_partial_overlap, make_view,
                            meta_of, unwrap, unwrap_tree, value_of, write)
from .lowered_ops import run_cached
from .lowerings.registry import DECOMPOSING as _decomposing, LOWERINGS, PLANS, SPECIAL, register_special
from .promote import mark_weak
from .tensor import ComplexUnsupported, TracerTensor, root_of

aten = torch.ops.aten
_NANS = nan_check.STATE


def wrap_result(x):
    """Every tensor a dispatched op returns is a TracerTensor, so later in-place
    writes into it are tracked, even when its value is a constant."""
    if isinstance(x, Tracer):
        return TracerTensor(x)
    if isinstance(x, (list, tuple)):
        return type(x)(wrap_result(v) for v in x)
    if x is None or isinstance(x, (bool, int, float, complex, torch.dtype, torch.device)):
        return x
    if isinstance(x, TracerTensor):
        return x
    return TracerTensor(x)


def _plan(func):
    """What dispatch does with func, decided once per op (OpOverload hashes in Python, and
    this runs for every traced ATen op): (func, special, pointwise, lowering, is_view, check)."""
    special = SPECIAL.get(func)
    lowering = LOWERINGS.get(func)
    pointwise = is_pointwise(func)
    check = check_kernel_accepts if pointwise else SHAPE_CHECKS.get(func)     # torch's dtype rules
    plan = (func, special, pointwise, lowering, lowering is not None and func.is_view, check)
    PLANS[id(func)] = plan
    return plan


def dispatch(func, args, kwargs):
    try:
        plan = PLANS.get(id(func))
        if plan is None or plan[0] is not func:
            plan = _plan(func)
        _, special, pointwise, lowering, is_view, check = plan
        if check is not None:
            check(func, args, kwargs)
        if special is not None:
            if torch.is_grad_enabled():
                args, kwargs = _lift_parameters(args, kwargs)
            out = _reading_plain(special, args, kwargs)
            if out is not NotImplemented:           # NotImplemented: the general path serves
                return out
        if is_view:
            return make_view(func, lowering, args, kwargs)
        if lowering is not None:
            out = NotImplemented
            if trace_state.trace.lowered_ops and not _NANS.on:     # eager grad/jvp: one cached unit
                out = run_cached(func, lowering, unwrap_tree(args), unwrap_tree(kwargs) if kwargs else {})
            if out is NotImplemented:
                if kwargs:
                    out = lowering(*unwrap_tree(args), **unwrap_tree(kwargs))
                else:
                    out = lowering(*unwrap_tree(args))
            out = wrap_result(out)
        else:
            schema = func._schema
            if _is_inplace(func, schema):
                return _inplace(func, args, kwargs)
            out = _dispatch_functional(func, schema, args, kwargs)
        if RESULT_LAYOUTS[0] and func not in _CONTIGUOUS_RESULTS and (
                func in _NON_CONTIGUOUS_RESULTS or kwargs.get("memory_format") not in _PLAIN_FORMATS
                or _strided_inputs(args, kwargs)):
            out = torch_layout(func, args, kwargs, out, pointwise)
        return out
    except ComplexUnsupported as e:     # name the op that made the complex value
        raise e.made_by(func) from None


def _dispatch_functional(func, schema, args, kwargs):
    """Ops without a lowering: decompositions, then the fallback."""
    if any(_writes_out(a) for a in schema.arguments):
        return _out_argument(func, schema, args, kwargs)
    if torch.is_grad_enabled():
        args, kwargs = _lift_parameters(args, kwargs)
    decomp = decomposition_table.get(func)
    if decomp is not None:
        out = _reading_plain(_decompose, (decomp, args, kwargs, True), {}, args, kwargs)
        if out is not NotImplemented:
            return out
    out = _reading_plain(_decompose, (func.decompose, args, kwargs), {}, args, kwargs)
    if out is not NotImplemented:
        return out
    if func.namespace == "prims" and _decomposing[0]:
        raise _UnmappedPrim(func)
    return opaque_fallback(func, args, kwargs)


# ---------------------------------------------------------------- result layouts
# x.stride() and as_strided see the layout torch would give a tensor. A fresh result is
# contiguous unless an input is not (torch keeps a transposed input's layout through
# elementwise ops) or the op returns column-major results (linalg): then torch's meta kernel
# says what the layout is, and a value whose layout it cannot say is marked unknown.
_NON_CONTIGUOUS_RESULTS = frozenset(
    op for name in dir(aten) if any(k in name for k in ("linalg", "cholesky", "triangular_solve", "svd",
                                                        "qr", "lu_", "eig", "lstsq", "geqrf", "orgqr",
                                                        "empty_strided", "empty_permuted"))
    for op in (getattr(getattr(aten, name), o) for o in getattr(aten, name).overloads()))
# Matrix products: torch allocates their results contiguous whatever the operands' strides
# (F.linear's weight arrives transposed). Asking the meta kernel would also import sympy
# (torch's type promotion does), about 1.5 s of a first jit call.
_CONTIGUOUS_RESULTS = frozenset({aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
                                 aten.mv.default, aten.addmv.default, aten.dot.default})
# x.contiguous(memory_format=torch.channels_last), x.to(memory_format=...): the layout asked for
_PLAIN_FORMATS = (None, torch.preserve_format, torch.contiguous_format)


def _strided_inputs(args, kwargs):
    for a in (*args, *kwargs.values()):
        for b in (a if isinstance(a, (list, tuple)) else (a,)):
            if type(b) is TracerTensor:
                root = root_of(b)
                if b._strided or root._layout == "unknown":
                    return True
            elif isinstance(b, torch.Tensor) and not b.is_contiguous():
                return True
    return False


def torch_layout(func, args, kwargs, out, pointwise=False):
    """out's fresh tensors, re-wrapped with the strides torch gives func's results (its meta
    kernel on inputs laid out as torch lays them out), or marked unknown."""
    if isinstance(out, torch.Tensor) and out.dim() == 0:
        # a 0-d result has one layout; asking torch.trace's meta kernel (score matching's
        # trace of a Jacobian) imported torch._refs and sympy in a first jit call: 0.3-0.5 s
        return out
    strides = (pointwise and _pointwise_strides(args, kwargs, out)) or _result_strides(func, args, kwargs)
    inputs = {id(a) for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}

    def relayout(w, st):
        if not isinstance(w, TracerTensor) or w._root is not None or id(w) in inputs or w._layout is not None:
            return w
        if st is None or len(st) != w.dim():
            w._layout, w._strided, w._unit_key = "unknown", True, None
            return w
        if st == w.stride():
            return w
        return TracerTensor(value_of(w), st, 0)
    if isinstance(out, (list, tuple)):
        ss = strides if isinstance(strides, list) and len(strides) == len(out) else [None] * len(out)
        items = [relayout(w, st) for w, st in zip(out, ss)]
        if all(a is b for a, b in zip(items, out)):
            return out
        return type(out)(items) if type(out) in (list, tuple) or not hasattr(out, "_fields") \
            else type(out)(*items)         # torch.return_types take one sequence, namedtuples fields
    return relayout(out, strides)


def _pointwise_strides(args, kwargs, out):
    """The strides torch's TensorIterator gives a pointwise op's fresh result: its dims
    ordered by the operands' strides (reorder_dimensions: the first operand that tells two
    dims apart decides; a broadcast dim tells nothing), then laid out densely in that order.
    Computed here rather than by the meta kernel, whose Python decompositions import
    torch._dynamo and sympy on first use (over a second of a first jit call). None where this
    does not apply (a memory_format asked for, an operand of unknown layout, several outputs)."""
    if kwargs.get("memory_format", torch.preserve_format) is not torch.preserve_format:
        return None
    if not isinstance(out, torch.Tensor):
        return None
    shape = tuple(out.shape)
    nd = len(shape)
    operands = []
    for a in (*args, *kwargs.values()):
        if not isinstance(a, torch.Tensor):
            continue
        if type(a) is TracerTensor and root_of(a)._layout == "unknown":
            return None
        if a.dim() > nd or any(type(n) is not int for n in a.shape):
            return None
        pad = nd - a.dim()
        st = [0] * pad + [0 if n == 1 and shape[pad + k] != 1 else s
                          for k, (n, s) in enumerate(zip(a.shape, a.stride()))]
        operands.append([s * a.element_size() for s in st])

    def order(d0, d1):
        for st in operands:
            s0, s1 = st[d0], st[d1]
            if s0 == 0 or s1 == 0:
                continue
            if s0 != s1:
                return 1 if s0 > s1 else -1
            if shape[d0] > shape[d1]:
                return 1
        return 0
    perm = list(range(nd - 1, -1, -1))          # perm[0]: the innermost dim
    for i in range(1, nd):
        dim1 = i
        for dim0 in range(i - 1, -1, -1):
            c = order(perm[dim0], perm[dim1])
            if c > 0:
                perm[dim0], perm[dim1] = perm[dim1], perm[dim0]
                dim1 = dim0
            elif c < 0:
                break
    strides, acc = [0] * nd, 1
    for d in perm:
        strides[d] = acc
        acc *= shape[d]
    return tuple(strides)


_LAYOUTS: dict = {}     # (op, its arguments' types and layouts) -> result strides: meta kernels are slow


def _result_strides(func, args, kwargs):
    """The strides of func's result(s) (a tuple, or a list of them; None where a result is not a
    tensor or its layout is unknown), from torch's meta kernel, cached by signature."""
    try:
        key = (func, _signature(args), _signature(tuple(kwargs.items())))
        hash(key)
    except (TypeError, _UnknownLayout):
        key = None
    if key is not None and key in _LAYOUTS:
        return _LAYOUTS[key]

    def meta(a):
        if isinstance(a, TracerTensor):
            root = root_of(a)
            if root._layout == "unknown":
                raise _UnknownLayout
            return meta_of(a)
        return a.to("meta") if isinstance(a, torch.Tensor) else a
    try:
        m_args, m_kwargs = tree_map(meta, args), tree_map(meta, kwargs)
        with torch._C._DisablePythonDispatcher():
            # ATen's C++ meta kernels where they exist: the Python ones (decompositions under
            # torch._disable_dynamo, type promotion) import torch._dynamo and sympy on first
            # use, over a second of a first jit call
            metas = func(*m_args, **m_kwargs)
    except Exception:           # an unknown input, or an op with no meta kernel
        metas = None
    if isinstance(metas, (list, tuple)):
        strides = [m.stride() if isinstance(m, torch.Tensor) else None for m in metas]
    else:
        strides = metas.stride() if isinstance(metas, torch.Tensor) else None
    if key is not None:
        if len(_LAYOUTS) > 4096:      # new shapes keep coming: start again
            _LAYOUTS.clear()
        _LAYOUTS[key] = strides
    return strides


def _signature(args):
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            if isinstance(a, TracerTensor) and root_of(a)._layout == "unknown":
                raise _UnknownLayout
            out.append((tuple(a.shape), a.stride(), a.dtype, a.device.type))
        elif isinstance(a, (list, tuple)):
            out.append((type(a), _signature(a)))
        else:
            out.append(a)
    return tuple(out)


# random_mode.reading_closed_over, set there (it imports this module): the mode that stages a
# lowering's plain ops on closed-over tensors while jit traces, or None.
READING_CLOSED_OVER = [lambda: None]
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _reading_plain(fn, args, kwargs, operands=None, operand_kwargs=None):
    """fn(*args, **kwargs) for a special lowering or a decomposition of an op whose operands
    (default: args, kwargs) include a plain tensor (closed over: a module's buffer): while jit
    traces, under random_mode's _PlainReadsMode, so that the torch code it runs on that
    tensor is recorded as closure reads (guarded: a trace-time result is a constant)."""
    if operands is None:
        operands, operand_kwargs = args, kwargs
    if any(type(a) in _PLAIN or (type(a) is list or type(a) is tuple) and any(type(b) in _PLAIN for b in a)
           for a in operands) or any(type(a) in _PLAIN for a in operand_kwargs.values()):
        mode = READING_CLOSED_OVER[0]()
        if mode is not None:
            with mode:
                return fn(*args, **kwargs)
    return fn(*args, **kwargs)


def _lift_parameters(args, kwargs):
    """Plain tensors that require grad (an nn.Module's closed-over parameters) as wrappers of
    themselves, for ops that run torch code on their arguments (decompositions, special
    lowerings such as batch norm's). That code runs below torch's autograd key, so reshaping
    a parameter there would drop it from torch's autograd graph (a model's GroupNorm weight
    got no .grad); as a wrapper, its uses become functx primitives, whose eager evaluation
    runs where torch's autograd records it (core/trace.py's EvalTrace)."""
    def lift(a):
        if type(a) is torch.Tensor or type(a) is torch.nn.Parameter:
            return TracerTensor(a) if a.requires_grad else a
        if type(a) is list or type(a) is tuple:
            return type(a)(lift(b) for b in a)
        return a
    return tuple(lift(a) for a in args), {k: lift(v) for k, v in kwargs.items()}


class _UnknownLayout(Exception):
    pass


class _UnmappedPrim(Exception):
    """A decomposition reached a torch.ops.prims op with no lowering. prims ops have no
    derivative formulas, so the op being decomposed runs through the fallback instead."""


def _decompose(decomp, args, kwargs, python=False):
    _decomposing[0] += 1
    try:
        if python and PIN_SIZES[0]:     # a symbolic trace: a decomposition's constants may read a size
            with PinSizesOnConstants():
                return decomp(*args, **kwargs)
        return decomp(*args, **kwargs)
    except _UnmappedPrim:
        return NotImplemented
    finally:
        _decomposing[0] -= 1


# ---------------------------------------------------------------- symbolic sizes on constants
PIN_SIZES = [False]      # jit's symbolic traces (staging.trace_graph) turn it on


def pinned(v):
    """A symbolic size as the number it is in this trace (a guard the trace records)."""
    if isinstance(v, torch.SymInt):
        return int(v)
    if isinstance(v, torch.SymFloat):
        return float(v)
    if isinstance(v, torch.SymBool):
        return bool(v)
    return v


class PinSizesOnConstants(TorchFunctionMode):
    """While jit traces with symbolic sizes: a torch function of plain tensors (constants the
    function builds) and a symbolic size would have torch turn the size into a number in C++
    without a guard (`torch.arange(4.0) * x.shape[0]`: a constant that is wrong at every other
    size). In arithmetic the size becomes a traced 0-d value instead (it promotes as the Python
    number would), so the result stays symbolic; anywhere else it is pinned (a guard of the
    trace, which explain lists with the user's line). Factories of a size alone
    (torch.arange(n)) pass through to RandomMode, which lowers them (SIZED_FACTORIES)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = tree_flatten((args, kwargs))[0]
        if any(isinstance(v, (torch.SymInt, torch.SymFloat, torch.SymBool)) for v in leaves) and \
                not any(isinstance(v, TracerTensor) for v in leaves):
            tensors = [v for v in leaves if isinstance(v, torch.Tensor)]
            if func in _ARITHMETIC and tensors:
                device = tensors[0].device
                args, kwargs = tree_map(lambda v: _traced_number(v, device), (args, kwargs))
            elif func in _FROM_DATA or tensors:
                args, kwargs = tree_map(pinned, (args, kwargs))
        return func(*args, **kwargs)


def _traced_number(v, device):
    """A size as a weakly typed 0-d value: it promotes as the Python number it stands for."""
    if isinstance(v, torch.SymInt):
        return TracerTensor(mark_weak(P.full((), v, torch.int64, device)))
    if isinstance(v, torch.SymFloat):
        return TracerTensor(mark_weak(P.full((), v, torch.float64, device)))
    return pinned(v)


_FROM_DATA = {torch.tensor, torch.as_tensor, torch.asarray}
_ARITHMETIC = {getattr(torch.Tensor, n) for n in (
    "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
    "__floordiv__", "__rfloordiv__", "__mod__", "__pow__", "__rpow__", "add", "sub", "mul", "div",
    "true_divide", "floor_divide", "remainder", "pow", "minimum", "maximum")} | {
    torch.add, torch.sub, torch.mul, torch.div, torch.true_divide, torch.floor_divide, torch.remainder,
    torch.pow, torch.minimum, torch.maximum, torch.where, torch.clamp, torch.Tensor.clamp}


# ---------------------------------------------------------------- in-place ops

def _is_inplace(func, schema) -> bool:
    if not schema.arguments:
        return False
    a0 = schema.arguments[0]
    return (a0.alias_info is not None and a0.alias_info.is_write
            and func.overloadpacket.__name__.endswith("_"))


_FUNCTIONAL_CACHE: dict = {}


def functional_variant(func):
    """The functional overload of an in-place op: the one taking the same arguments (names and
    types: pow_.Scalar is pow.Tensor_Scalar, not pow.Scalar, whose self is a number), or None."""
    if func not in _FUNCTIONAL_CACHE:
        name = func.overloadpacket.__name__[:-1]
        signature = _schema_types(func._schema.arguments)
        found = None
        for packet in (getattr(aten, name, None), getattr(aten, name + "_functional", None)):  # normal_functional
            if packet is not None:
                same = getattr(packet, func._overloadname, None)      # add_.Tensor <-> add.Tensor
                found = same if same is not None and _schema_types(same._schema.arguments) == signature \
                    else _overload_taking(packet, signature)        # transpose_.default <-> transpose.int
                if found is not None:
                    break
        _FUNCTIONAL_CACHE[func] = found
    return _FUNCTIONAL_CACHE[func]


def out_functional(func):
    """The functional overload of an out= op (div.out -> div.Tensor): the same arguments
    without the out= ones, and nothing written; None if the packet has none."""
    if func not in _FUNCTIONAL_CACHE:
        signature = _schema_types([a for a in func._schema.arguments if not _writes_out(a)])
        _FUNCTIONAL_CACHE[func] = _overload_taking(func.overloadpacket, signature)
    return _FUNCTIONAL_CACHE[func]


def _schema_types(arguments):
    return [(a.name, str(a.type)) for a in arguments]


def _overload_taking(packet, signature):
    """The overload of packet that takes exactly the arguments `signature` (names and types)
    and writes none of them, or None."""
    for o in packet.overloads():
        arguments = getattr(packet, o)._schema.arguments
        if _schema_types(arguments) == signature and not any(_writes(a) for a in arguments):
            return getattr(packet, o)
    return None


def _writes(arg) -> bool:
    return arg.alias_info is not None and arg.alias_info.is_write


def _writes_out(arg) -> bool:
    return arg.kwarg_only and _writes(arg)


def _out_argument(func, schema, args, kwargs):
    """torch.div(a, b, out=y) (what F.normalize(..., out=u) in spectral_norm's power
    iteration calls): the functional op, then a copy into each out= tensor (functionalized
    like any in-place write; cast to its dtype as torch does). A result of another shape
    would resize the out= tensor, which functx does not follow: an error names the op."""
    names = [a.name for a in schema.arguments if _writes_out(a)]
    functional = out_functional(func)
    if functional is None:
        raise FunctxError(f"functx: {func} writes into an out= argument and has no functional form "
                          f"to run instead:\n{user_frame_summary()}\nCall the functional form "
                          "(y = torch.add(a, b) rather than torch.add(a, b, out=y)).")
    targets = [kwargs[n] for n in names]
    for target in targets:
        check_no_partial_overlap(target, args)
    result = dispatch(functional, args, {k: v for k, v in kwargs.items() if k not in names})
    results = result if isinstance(result, (tuple, list)) else (result,)
    for target, value in zip(targets, results):
        if tuple(target.shape) != tuple(value.shape):
            raise FunctxError(f"functx: {func} writes a result of shape {tuple(value.shape)} into an out= "
                              f"tensor of shape {tuple(target.shape)}, which torch would resize; functx "
                              f"does not:\n{user_frame_summary()}\nCall the functional form instead.")
        dispatch(aten.copy_.default, (target, value), {})
    return targets[0] if len(targets) == 1 else tuple(targets)


# In-place ops torch runs on a tensor whose elements share memory (an expanded view): fills
# write every element alike, so the functionalized write (the view's new value scattered into
# its root) is exact; torch also runs index and mask writes there (deprecated), which write
# some of the elements that share memory and not others: the scatter would be wrong, so they raise.
_WRITES_ONE_VALUE = frozenset({aten.fill_.Scalar, aten.zero_.default})
_WRITES_SOME = frozenset({aten.masked_fill_.Scalar, aten.masked_fill_.Tensor, aten.index_put_.default,
                          aten._index_put_impl_.default, aten.index_fill_.int_Scalar, aten.index_fill_.int_Tensor})


def _inplace(func, args, kwargs):
    target = args[0]
    functional = functional_variant(func)
    if functional is None:
        raise FunctxError(f"functx: in-place op {func} has no functional variant to functionalize")
    if torch.Tag.inplace_view in func.tags:
        return _inplace_view(func, functional, args, kwargs)
    if isinstance(target, (list, tuple)):
        return _inplace_foreach(func, functional, args, kwargs)
    if func not in _WRITES_ONE_VALUE:
        check_no_internal_overlap(target, func if func in _WRITES_SOME else None)
    if len(args) > 1 or kwargs:     # (tensor operands are positional or keyword, not nested)
        check_no_partial_overlap(target, (*args[1:], *kwargs.values()))
    if LOWERINGS.get(functional) is None and torch.Tag.nondeterministic_seeded in func.tags and (
            kwargs.get("generator") is not None
            or not any(isinstance(a, TracerTensor) for a in (*args[1:], *kwargs.values()))):
        result = _random_fill(func, args, kwargs)       # traced parameters: torch's decomposition
    else:
        result = dispatch(functional, args, kwargs)
    _write_traced(func, target, result)
    return target


def _write_traced(func, target, result):
    if not isinstance(target, TracerTensor):
        # a traced result written into a plain tensor: one the function closes over (a module's
        # weight: nn.Embedding(max_norm=) renormalizes it with embedding_renorm_) or made itself
        raise PlainWriteError(unbatched_write_message(func, target) or
            f"functx: {func} writes a traced value in place into a plain tensor ({tuple(target.shape)}, "
            f"{target.dtype}), one the transformed function closes over (a module's parameter or "
            f"buffer) or created itself (torch.zeros(...)), here:\n{user_frame_summary()}\nfunctx cannot "
            "track writes into that tensor. Pass it as an argument (a module's parameters: "
            "functional_call(model, params, x)), create it from a traced input (x.new_zeros(...)), or "
            "build the result out of place (torch.stack, torch.cat, torch.where).")
    write(target, unwrap(result))


def _inplace_foreach(func, functional, args, kwargs):
    """torch._foreach_add_(xs, ys) (torch.optim's foreach paths, EMA updates): the functional
    foreach op, then each result written into its tensor as a one-tensor in-place op is
    (the target is a list, which the one-tensor path read as a tensor)."""
    targets = args[0]
    for target in targets:
        if isinstance(target, TracerTensor):
            check_no_internal_overlap(target, None)
    results = dispatch(functional, args, kwargs)
    for target, result in zip(targets, results):
        if isinstance(target, TracerTensor) or isinstance(result, TracerTensor):
            _write_traced(func, target, result)
        else:
            target.copy_(result)                # a plain tensor and a plain result
    return None


def _random_fill(func, args, kwargs):
    """x.exponential_() and other random fills of a traced tensor that functx has no lowering
    for: the values depend only on x's type, so torch's own op fills a fresh tensor, drawing
    from the global generator or from g (under jit: the generator argument of each call).
    (torch's decompositions refuse generators, and draw other numbers than its kernels:
    exponential's takes -log(u) where the kernel takes -log1p(-u), so F.gumbel_softmax
    sampled other noise than eager torch under the same seed.)"""
    target, rest = args[0], args[1:]
    if any(isinstance(a, TracerTensor) for a in (*rest, *kwargs.values())):
        raise FunctxError(f"functx: {func} with a generator and traced parameters is not supported:\n"
                          f"{user_frame_summary()}\nDraw from the global generator, or pass the "
                          "parameters as plain numbers.")
    t = type_of(unwrap(target))
    draw = lambda g: func(torch.empty(t.shape, dtype=t.dtype, device=t.device), *rest,  # noqa: E731
                          **(dict(kwargs, generator=g) if g is not None else kwargs))
    return P.random(t.shape, t.dtype, t.device, "call",
                    (drawing_from(draw, kwargs.get("generator"), func), len(t.shape)))


def _inplace_view(func, functional, args, kwargs):
    """squeeze_, unsqueeze_, transpose_, t_, ...: they change the target's shape, not its
    values. The wrapper's own sizes/strides are updated by running the op on it with
    dispatch off (as torch's FunctionalTensor does); its value becomes the view's."""
    target = args[0]
    if target._root is None and target._argument and _changes_layout(func, functional, args, kwargs):
        raise FunctxError(
            f"functx: {func} changes the shape or strides of an argument of the transformed function in "
            f"place, here:\n{user_frame_summary()}\nEager PyTorch (and torch.func.vmap) would change the "
            "caller's tensor too; functx's transforms pass back written values, not new shapes, so the "
            "caller would silently keep the old one. Use the out-of-place op (x = x.unsqueeze(0)), or "
            "clone the argument first (x = x.clone()).")
    if target._root is None and target._viewed:
        _move_storage(target)
    view = dispatch(functional, args, kwargs)
    with torch.utils._mode_utils.no_dispatch():
        func(*args, **kwargs)
    if target._root is None:
        target._value = value_of(view)     # a root stays a root, with the new shape
        target._unit_key = None
        target._meta = None                # and the layout torch just gave the wrapper
        target._strided = not target.is_contiguous()
    else:
        target._value, target._chain, target._seen = view._value, view._chain, view._seen
        target._meta = view._meta
    return target


def _changes_layout(func, functional, args, kwargs) -> bool:
    """Whether in-place view op func would give its target another shape or strides (t_ of a
    1-D tensor does not)."""
    target = args[0]
    view = dispatch(functional, args, kwargs)
    return tuple(view.shape) != tuple(target.shape) or view.stride() != target.stride()


def _move_storage(root):
    """Before an in-place view op on a root that has views (y = x[0]; x.t_()): those views are
    relative to x's storage, not to x's new shape, so a new root takes the storage (value,
    layout, version) and x becomes its view; root_of moves the views to it when next asked."""
    storage = TracerTensor(value_of(root))
    storage._meta = meta_of(root)
    storage._layout, storage._strided, storage._read_only = root._layout, root._strided, root._read_only
    storage._version_, storage._viewed = root._version_, True
    root._root, root._chain, root._seen = storage, [], storage._version_


# ---------------------------------------------------------------- special ops on wrappers

@register_special(aten.copy_.default)
def _copy_(target, src, non_blocking=False):
    check_no_internal_overlap(target)
    check_no_partial_overlap(target, (src,))
    write(target, unwrap(src))
    return target


@register_special(aten._local_scalar_dense.default)
def _item(x):
    v = unwrap(x)
    if getattr(v, "tangent", None) is not None and not isinstance(v.tangent, Zero) \
            and type_of(v).dtype.is_floating_point:
        # A value being differentiated becomes a Python number (.item(), float(), a number
        # argument such as torch.full_like's fill value, which torch's argument parser
        # converts): the derivative through it is dropped, and torch warns when that happens
        # to a tensor that requires grad. So does functx.
        warnings.warn(
            "functx: a value being differentiated was converted to a Python number here:\n"
            f"{user_frame_summary()}\nThe derivative through that number is dropped (torch's autograd "
            "drops it too). Keep it a tensor: e.g. torch.full_like(x, 0) + value instead of "
            "torch.full_like(x, value).", UserWarning, stacklevel=2)
    return concrete(v).item()


register_special(aten.equal.default)(lambda a, b: bool(torch.equal(concrete(unwrap(a)), concrete(unwrap(b)))))
