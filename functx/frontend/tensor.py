"""TracerTensor: the torch.Tensor that user code sees while functx traces it.

It is a wrapper subclass with the real shape, dtype and device of the value it stands
for, and `__torch_dispatch__` hands each ATen op to frontend/dispatch.py. The view fields
set here (root, chain, versions) are read and written by frontend/functionalize.py, which
also reads a wrapper's current value (unwrap).

This is the bottom of the front end: the modules that implement the class's behaviour
import it, so the class reaches them with function-level imports.
"""
from __future__ import annotations

import torch
import torch.autograd.functional as _autograd_functional
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from ..core.errors import ConcretizationError, FunctxError, TorchAutogradError, user_frame_summary
from ..core.trace import GraphTracer, ReadRecorder, Tracer, concrete, note_autograd_read, type_of
from ..core.trace import record_autograd_reads as _autograd_reads
from .composites import COMPOSITES, UNITS_FIRST
from .kernel_check import kernel_error
from .lowerings.registry import DECOMPOSING
from .rewrites import REWRITTEN, grad_mode_watchers, rewrite


_disabled_torch_function = torch._C._disabled_torch_function_impl
_FunctionType = type(lambda: None)


def run_function_unit(func, types, args, kwargs):
    """Replaced by frontend/function_units.run_unit when that module loads (it imports this one)."""
    return NotImplemented


def run_python_body(func, args, kwargs):
    """Replaced by frontend/function_units.run_python_body when that module loads."""
    return NotImplemented

_CONTIGUOUS, _VIEW, _GETITEM, _SETITEM = (torch.Tensor.contiguous, torch.Tensor.view, torch.Tensor.__getitem__,
                                         torch.Tensor.__setitem__)


class TracerTensor(torch.Tensor):
    """The torch.Tensor a function sees while functx transforms or traces it: real shape,
    dtype and device, and a traced value inside. Ordinary PyTorch code runs on it unchanged;
    each ATen op becomes functx primitives. Users never construct one. `requires_grad` is
    torch.func's answer (True where the innermost transform differentiates the value in
    reverse mode) and `register_hook` runs in that transform's backward pass
    (docs/transforms.md, "requires_grad and tensor hooks")."""
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        # A pass-through: its presence makes has_torch_function() true, which keeps
        # nn modules off fused inference fast paths (_transformer_encoder_layer_fwd,
        # _native_multi_head_attention) that have no derivative formulas.
        # torch's own pass-through (in C++), as if the subclass had no __torch_function__.
        # Wrappers report torch's strides, but torch checks them in kernels that never run
        # here: contiguous() of a transposed or sliced view copies (it was an alias), and
        # .view() of one raises as in torch. One set lookup for every other torch function
        # (and, while functx.hessian stages f, a watcher that must see every function run
        # with grad mode off). A call that fails raises what eager PyTorch raises for operands
        # of these shapes where torch rejects them itself (kernel_check.kernel_error).
        try:
            if func in _SPECIAL_FUNCTIONS or grad_mode_watchers:
                return _special_function(func, types, args, kwargs)
            # Under an eager transform, the whole function as one cached unit where that is exactly
            # what the ATen ops below would do (frontend/function_units.py).
            out = run_function_unit(func, types, args, kwargs)
            if out is not NotImplemented:
                return out
            if func in UNITS_FIRST:     # F.linear where no unit serves: its composite
                return _special_function(func, types, args, kwargs)
            if type(func) is _FunctionType:     # F.multi_head_attention_forward: its body, as user code
                out = run_python_body(func, args, kwargs or {})
                if out is not NotImplemented:
                    return out
            return _disabled_torch_function(func, types, args, kwargs or {})
        except (RuntimeError, TypeError, ValueError, IndexError) as e:
            if isinstance(e, FunctxError):
                raise
            if isinstance(e, TypeError):
                _needs_numbers(args, kwargs, e)
            better = kernel_error(func, args, kwargs or {}, e)     # torch's own error, if it has one
            if better is None:
                raise
            raise better from e

    @staticmethod
    def __new__(cls, value, strides=None, storage_offset=0, contiguous=None):
        # strides/storage_offset: the layout torch would give this tensor (an argument's real
        # one, a view's), which x.stride() reports; fresh values are contiguous. contiguous:
        # whether that layout is, if the caller knows.
        if isinstance(value, torch.Tensor):     # no TensorType needed: read the tensor directly
            shape, dtype, device = value.shape, value.dtype, value.device
        else:
            t = value.aval
            shape, dtype, device = t.shape, t.dtype, t.device
        if dtype.is_complex:
            _unsupported_dtype(type_of(value))
        if strides is not None and not storage_offset and _default_strides(shape) == strides:
            strides = None      # what the wrapper gets without them (passing them costs ~2.5 us)
        if strides is None:
            r = _make_wrapper(cls, shape, None, None, None, dtype, _STRIDED, device)
        else:
            r = _make_wrapper(cls, shape, strides, storage_offset, None, dtype, _STRIDED, device)
        r._value = value        # the other fields keep the class defaults below until set
        if strides is not None and not (contiguous if contiguous is not None else is_contiguous_layout(shape, strides)):
            # torch would lay this tensor out non-contiguously: ops on it then take their
            # result's layout from torch's meta kernels (frontend/dispatch.py)
            r._strided = True
        return r

    # Per-wrapper state, read through these class-level defaults until a wrapper sets its own
    # (a fresh wrapper sets only _value: this runs for every traced op's result).
    _root = None        # root TracerTensor when this is a view
    _chain = None       # view ops from the root: [(func, args, kwargs, output_index)]
    _seen = 0           # root version this view's value was computed at
    _version_ = 0       # bumped on each write (roots only)
    # Where the layout came from: (strides, storage offset) of an argument (the wrapper
    # reports the same), "unknown" (not known: as_strided raises; the wrapper reports
    # contiguous strides), or None: a value made inside the function (contiguous).
    _layout = None
    _meta = None        # a meta tensor with this wrapper's layout (views replay on it)
    _strided = False    # True when torch would lay this tensor out non-contiguously
    _read_only = None   # why writes into this root are refused
    _unit_key = None    # a fresh wrapper's value's type as function units key it (fresh_wrapper)
    _viewed = False     # True once a view of this root was made (dispatch._inplace_view reads it)
    _hooks = None       # (hooked value, its Hooks) once register_hook ran (transforms/hooks.py)
    _marked = False     # requires_grad_() / requires_grad = flag set on this wrapper (also torch's flag)
    _argument = False   # a transform's or jit's argument (wrap_input): in-place view ops refuse it
    _made_in = None     # the trace a fill factory (torch.zeros(...)) made this wrapper under

    # torch.func's answer (docs/transforms.md, "requires_grad and tensor hooks"): True for a
    # value the innermost transform level differentiates in reverse mode (grad, vjp, jacrev),
    # False under forward mode and vmap alone, for detached, no_grad and integer values. A
    # Python property: the C++ flag stays False, so torch's autograd never records traced ops,
    # and reading it costs nothing on the per-op path (nothing there reads it).
    @property
    def requires_grad(self):
        v = self._value if self._root is None else _functionalize().value_of(self)
        if v.tracks_grad() if isinstance(v, Tracer) else v.requires_grad:
            return True
        if _autograd_reads.active and type(v) is GraphTracer:
            note_autograd_read()    # jit: plain torch would say True in calls autograd records
        return self._marked     # requires_grad_() on a tensor made inside the function

    @requires_grad.setter
    def requires_grad(self, flag):
        v = self._value if self._root is None else _functionalize().value_of(self)
        if not flag and isinstance(v, Tracer) and v.tracks_grad():
            # torch refuses this on a computed tensor ("only change requires_grad flags of leaf
            # variables"), torch.func on any; ignoring it would silently keep the derivative
            raise FunctxError(
                f"functx: requires_grad_(False) on a value a functx transform differentiates, here:\n"
                f"{user_frame_summary()}\nIt would not stop the derivative. Use x.detach() (or "
                "functx.stop_gradient) for a value without derivative, or argnums to choose what "
                "grad differentiates.")
        if self._made_in is not None and type(v) is torch.Tensor and v.is_leaf:
            # a tensor the function made holds a plain value (x = x0.clone().requires_grad_()):
            # torch's autograd records its uses, and torch.autograd.grad on such values is
            # plain torch (_special_function, _plain_values)
            v.requires_grad_(flag)
        _set_own_requires_grad(self, flag)
        self._marked = bool(flag)

    def requires_grad_(self, requires_grad=True):
        self.requires_grad = requires_grad
        return self

    def __repr__(self, *, tensor_contents=None):
        # The traced value's repr (print, str, pdb's p): the values where the transform has
        # them (eager grad: the primal; eager vmap: the batch), with the transform levels, as
        # torch.func shows them; under jit, that there are none and how to print them.
        return repr(_functionalize().value_of(self))

    __str__ = __repr__

    def __format__(self, spec):
        # torch's Tensor.__format__: a 0-d tensor formats its number (f"{loss:.4f}": .item(),
        # which raises under vmap and jit as torch.func's and .item() do), others their repr
        # (a format spec for them is a TypeError)
        if self.dim() == 0:
            return self.detach().item().__format__(spec)     # (detach: no warning, as torch)
        return object.__format__(self, spec)

    # torch refuses these for tensor subclasses; they need the concrete value, which exists
    # in eager transforms and raises ConcretizationError under jit.
    def storage_offset(self):
        # A Python number baked into a jit trace: jit then keys its cache on offsets.
        note_layout_read(DECOMPOSING[0] > 0)
        return super().storage_offset()

    def data_ptr(self):
        # a traced tensor has no memory of its own (torch.func's wrappers raise here too); the
        # wrapper's placeholder storage would answer 0, silently
        raise ConcretizationError(
            f"functx: data_ptr() of a tensor inside a functx transform, here:\n{user_frame_summary()}\n"
            "A traced tensor has no memory of its own (torch.func raises here too). Compare "
            "tensors by identity (a is b), or read data_ptr() outside the transform.")

    def tolist(self):
        return _concrete(self).tolist()

    def numpy(self, *, force=False):
        if not force and self.requires_grad:      # torch's check (the derivative would be lost)
            raise RuntimeError("Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() instead.")
        return _concrete(self).numpy(force=force)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        from .dispatch import dispatch      # dispatch.py imports this module (a cycle otherwise)
        return dispatch(func, args, kwargs or {})


def fresh_wrapper(value, t, key=None):
    """TracerTensor(value) for a fresh, contiguous result whose type t is known (a cached
    unit's output: frontend/function_units.py), without asking the value for it. key: its
    unit_key(t), if the caller has it."""
    r = _make_wrapper(TracerTensor, t.shape, None, None, None, t.dtype, _STRIDED, t.device)
    r._value = value
    r._unit_key = unit_key(t) if key is None else key
    return r


def root_of(w):
    """The root wrapper holding w's storage: w itself, or its view's root. An in-place view op
    on a root that has views (x.t_()) makes it a view of a new root holding its storage
    (dispatch._inplace_view); its earlier views, relative to that storage, move to the new root
    when next asked."""
    r = w._root
    if r is None:
        return w
    if r._root is not None:
        r = w._root = r._root
    return r


def unit_key(t):
    """A value's type (TensorType) as function units key it (function_units._key)."""
    return (t.shape, t.dtype, t.device, t.weak)


_make_wrapper = torch.Tensor._make_wrapper_subclass
_STRIDED = torch.strided


_set_own_requires_grad = torch._C.TensorBase.requires_grad.__set__


def _special_function(func, types, args, kwargs):
    if func in _TORCH_AUTOGRAD:
        plain = _plain_values(args, kwargs) if func is torch.autograd.grad else None
        if plain is None:
            _refuse_torch_autograd(func)
        return func(*plain[0], **plain[1])
    if func == _DATA_SET:
        return _set_data(*args)
    composite = COMPOSITES.get(func)
    if composite is not None:
        out = composite(*args, **(kwargs or {}))
        if out is not NotImplemented:          # NotImplemented: torch's own function serves
            return out
        if (func is _GETITEM or func is _SETITEM) and not grad_mode_watchers:   # x[None]: a view unit; out[t] = h: a write unit
            out = run_function_unit(func, types, args, kwargs)
            if out is not NotImplemented:
                return out
    out = rewrite(func, args, kwargs, lambda: _disabled_torch_function(func, types, args, kwargs or {}))
    if out is not NotImplemented:         # trace(hessian(f)) under jit (frontend/rewrites.py)
        return out
    if func in REWRITTEN and not grad_mode_watchers:     # x.sum() not of a marked Hessian
        out = run_function_unit(func, types, args, kwargs)
        if out is not NotImplemented:
            return out
    if func is _CONTIGUOUS and _plain_format(args, kwargs) and (
            args[0]._chain or args[0]._layout == "unknown"):
        return _functionalize().contiguous(args[0])
    if func is _VIEW and not (len(args) == 2 and isinstance(args[1], torch.dtype)):
        if args[0]._chain or not args[0].is_contiguous():
            _functionalize().check_viewable(args[0], args[1:], kwargs or {})
        if not grad_mode_watchers:          # x.view(shape): a view unit
            out = run_function_unit(func, types, args, kwargs)
            if out is not NotImplemented:
                return out
    return _disabled_torch_function(func, types, args, kwargs or {})


def _plain_format(args, kwargs):
    fmt = args[1] if len(args) > 1 else (kwargs or {}).get("memory_format")
    return fmt is None or fmt is torch.contiguous_format


_TORCH_AUTOGRAD = {torch.autograd.grad: "torch.autograd.grad", torch.autograd.backward: "torch.autograd.backward",
                   torch.Tensor.backward: "Tensor.backward"}


def _plain_values(args, kwargs):
    """(args, kwargs) with each wrapper replaced by its plain value, or None where one holds a
    traced value (tensors the function made hold plain values until a traced one is written)."""
    leaves, spec = tree_flatten((args, kwargs or {}))
    out = []
    for leaf in leaves:
        if type(leaf) is TracerTensor:
            leaf = _functionalize().value_of(leaf)
            if not isinstance(leaf, torch.Tensor) or isinstance(leaf, TracerTensor):
                return None
        out.append(leaf)
    return tree_unflatten(out, spec)


def _refuse_torch_autograd(func, name=None):
    # Traced values carry no torch autograd graph (their requires_grad is functx's answer, the
    # C++ flag stays False), so torch would fail with "does not require grad", or silently give
    # None with allow_unused.
    name = name or _TORCH_AUTOGRAD[func]
    raise TorchAutogradError(
        f"functx: {name} on a value traced by a functx transform, here:\n{user_frame_summary()}\n"
        "Traced values have no PyTorch autograd graph, even where requires_grad is True (torch.func "
        "refuses backward() too; its grad levels do run torch.autograd.grad, functx's cannot: it "
        "differentiates by tracing, not with autograd's tape). Take the "
        "derivative with functx instead: functx.grad(lambda x: u(x).sum())(x) for "
        "torch.autograd.grad(u(x).sum(), x), functx.vjp(u, x)[1](v) for grad_outputs=v, and "
        "functx.jacrev / functx.hessian / functx.laplacian for higher derivatives; they compose "
        "with jit and vmap.")


def _guard_autograd_functional():
    """torch.autograd.functional (jacobian, hessian, vjp, jvp, hvp, vhp) on traced values
    raises as torch.autograd.grad does. It drops the outputs that do not require grad before
    calling torch.autograd.grad and fills their derivatives with zeros; traced values never
    require torch grad, so inside a transform it returned zero derivatives with no error (an
    input made with x.detach().requires_grad_(), or a traced value it closes over). torch
    has no hook for tensor subclasses there: its two helpers are wrapped (functx also wraps
    torch.autograd.Function.apply and torch.manual_seed)."""
    functional = _autograd_functional

    def traced(*trees):
        return any(isinstance(x, TracerTensor) for x in tree_flatten(trees)[0])

    preprocess, autograd_grad = functional._grad_preprocess, functional._autograd_grad

    def _grad_preprocess(inputs, create_graph, need_graph):
        if traced(inputs):
            _refuse_torch_autograd(torch.autograd.grad, "torch.autograd.functional")
        return preprocess(inputs, create_graph, need_graph)

    def _autograd_grad(outputs, inputs, grad_outputs=None, *args, **kwargs):
        if traced(outputs, inputs, grad_outputs):
            _refuse_torch_autograd(torch.autograd.grad, "torch.autograd.functional")
        return autograd_grad(outputs, inputs, grad_outputs, *args, **kwargs)
    functional._grad_preprocess, functional._autograd_grad = _grad_preprocess, _autograd_grad


_guard_autograd_functional()


# `y.data = v`: torch replaces y's values and keeps its autograd identity (torch.func
# raises); passed through, it set the wrapper's own storage and functx kept the old values,
# so the function went on with them silently. As a write through a detached alias it is
# torch's meaning: the values change, the derivative y had stays.
_DATA_SET = torch.Tensor.data.__set__


def _set_data(target, value):
    if not isinstance(value, torch.Tensor) or value.shape != target.shape or value.dtype != target.dtype \
            or target._chain:
        raise FunctxError(
            "functx: `tensor.data = value` inside a transformed function is supported for a value "
            f"of the tensor's own shape and dtype ({tuple(target.shape)}, {target.dtype}), not a view, "
            f"here:\n{user_frame_summary()}\nWrite `with torch.no_grad(): tensor.copy_(value)` "
            "(or build a new tensor) instead.")
    target.detach().copy_(value)


# The torch functions TracerTensor.__torch_function__ does more for than pass them through.
_SPECIAL_FUNCTIONS = (frozenset(COMPOSITES) - UNITS_FIRST) | REWRITTEN | {_CONTIGUOUS, _VIEW, _DATA_SET} | \
    frozenset(_TORCH_AUTOGRAD)


def _concrete(w):
    return concrete(_functionalize().value_of(w))


def _needs_numbers(args, kwargs, error):
    """A torch function rejected its arguments' types (TypeError), and one of them is a Python
    number jit traces as a 0-d tensor (F.interpolate(x, scale_factor=s) with s a float
    argument: "upsample_bilinear2d() received an invalid combination of arguments"): the
    function needs that number's value, which a trace does not know. Raise that (naming the
    argument, with the fix: static_argnums) instead of the parser's message."""
    for a in tree_flatten((args, kwargs or {}))[0]:
        if type(a) is TracerTensor and not a._chain and type_of(a._value).weak:
            try:
                _concrete(a)
            except ConcretizationError as c:
                raise c from error


def _functionalize():
    from . import functionalize     # functionalize.py imports this module (a cycle otherwise)
    return functionalize


class ComplexUnsupported(FunctxError):
    """A traced value of a complex dtype; dispatch names the op that made it (made_by)."""

    def __init__(self, t, op=None):
        self.t, self.op, self.where = t, op, user_frame_summary()
        by = f" by {op}" if op is not None else ""
        super().__init__(
            f"functx does not support complex tensors yet: a traced value of type {t} was created{by} "
            f"here:\n{self.where}\nfunctx's primitives and derivative rules are real-valued "
            "(complex results would be silently wrong). Keep real and imaginary parts as separate real "
            "tensors inside the transformed function (torch.view_as_real on inputs, outside it).")

    def made_by(self, op):
        if self.op is not None:
            return self
        e = ComplexUnsupported.__new__(ComplexUnsupported)
        e.t, e.op, e.where = self.t, op, self.where
        FunctxError.__init__(e, str(self).replace(" was created here:", f" was created by {op} here:", 1))
        return e


def _unsupported_dtype(t):
    raise ComplexUnsupported(t)


def wrap(x):
    if isinstance(x, Tracer):
        return TracerTensor(x)
    return x


def wrap_input(value, source, bdim=None):
    """wrap() for a transform's or jit's argument, with the memory layout of `source`, the
    tensor the caller passed (its example along `bdim` under vmap): the wrapper reports its
    strides (as torch.func's wrappers do) and as_strided reads its storage through them."""
    if not isinstance(value, Tracer):
        return value
    if type(source) is torch.Tensor and (bdim is None or bdim == 0) and source.is_contiguous() \
            and not source.storage_offset():
        # the commonest argument (a plain contiguous tensor, batched along dim 0): what the
        # general path below makes of it, without building its layout twice
        strides = source.stride()
        if bdim == 0:
            strides = strides[1:]
        t = value.aval
        if _default_strides(t.shape) == strides and not t.dtype.is_complex:
            w = _make_wrapper(TracerTensor, t.shape, None, None, None, t.dtype, _STRIDED, t.device)
            w._value = value
            w._unit_key = unit_key(t)
            w._layout = (strides, 0)
            w._argument = True
            return w
    # no source: a traced value of unknown origin (as_strided of it raises)
    layout = storage_layout(source, bdim) if source is not None else "unknown"
    if isinstance(layout, tuple):
        # (a plain tensor passed as it is: torch knows whether its layout is contiguous)
        plain = bdim is None and (type(source) is torch.Tensor or type(source) is torch.nn.Parameter)
        w = TracerTensor(value, layout[0], layout[1], source.is_contiguous() if plain else None)
        if not w._strided:      # keyed by function units as a fresh result is (its type)
            w._unit_key = unit_key(value.aval)
    else:
        w = TracerTensor(value)
        w._strided = layout == "unknown"
    w._layout = layout
    w._argument = True
    return w


def storage_layout(t, bdim=None):
    """(strides, storage offset) of t as torch lays it out, or of one example along bdim (the
    batch dim's stride dropped; the storage offset of the whole batched tensor, which
    torch.func reports for every example and measures as_strided's offset from); "unknown"
    where functx cannot know
    it (a value computed from non-contiguous ones in a way it could not follow); None when t
    is not a tensor (a bare traced value: contiguous)."""
    if isinstance(t, TracerTensor):
        root = root_of(t)
        if root._layout == "unknown":
            return "unknown"
        # (torch.Tensor's storage_offset: passing a layout on is not reading it)
        layout = (tuple(t.stride()), torch.Tensor.storage_offset(t))
    elif isinstance(t, torch.Tensor):
        layout = (tuple(t.stride()), t.storage_offset())
    else:
        return None
    if bdim is None:
        return layout
    return layout[0][:bdim] + layout[0][bdim + 1:], layout[1]


def _default_strides(shape, _cache={}):
    """The strides of a contiguous tensor of this shape (torch's, size-1 dims included); None
    for a symbolic shape (jit's dynamic dims: not hashable, and not to be compared here)."""
    try:
        strides = _cache.get(shape)
    except TypeError:
        return None
    if strides is None:
        if len(_cache) >= 4096:
            _cache.clear()
        strides = _cache[tuple(shape)] = torch.empty(tuple(shape), device="meta").stride()
    return strides


def is_contiguous_layout(shape, strides) -> bool:
    expected = 1
    for n, st in zip(reversed(shape), reversed(strides)):
        if n != 1 and st != expected:
            return False
        expected *= n
    return True


class record_layout_reads(ReadRecorder):
    """While jit traces: notes whether an argument's memory layout was read (as_strided), so
    that jit keys that function's cache on its arguments' strides and offsets."""


class record_user_layout_reads(ReadRecorder):
    """While a function unit traces (function_units._trace_unit): notes a layout read outside
    torch's own decompositions (the user's as_strided with an offset read from a tensor), which
    a unit keyed by strides alone cannot serve. A decomposition's as_strided (native_group_norm's)
    means the wrapper's reported layout, relative to itself, which the unit's operand reports."""


def note_layout_read(in_decomposition=False):
    record_layout_reads.note()
    if not in_decomposition:
        record_user_layout_reads.note()


def wrap_tree(tree):
    return tree_map(wrap, tree)


def _positional_wrappers_work() -> bool:
    """Wrappers are made with _make_wrapper_subclass's arguments by position (cls, size,
    strides, storage_offset, memory_format, dtype, layout, device): parsing keywords cost a
    quarter of each wrapper (~0.7 us, one per traced op's result). Checked once; a torch whose
    order differs gets a keyword shim. (Run once the module is complete: the check reads the
    wrapper through __torch_function__.)"""
    try:
        w = _make_wrapper(TracerTensor, (2, 3), (1, 2), 0, None, torch.float64, _STRIDED,
                          torch.device("cpu"))
        return w.dtype == torch.float64 and w.stride() == (1, 2) and w.device.type == "cpu"
    except Exception:
        return False


if not _positional_wrappers_work():
    def _make_wrapper(cls, size, strides=None, storage_offset=None, memory_format=None, dtype=None,
                      layout=_STRIDED, device=None):
        return torch.Tensor._make_wrapper_subclass(cls, size, strides=strides, storage_offset=storage_offset,
                                                   dtype=dtype, layout=layout, device=device)
