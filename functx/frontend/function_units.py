"""A whole torch function as one unit under an eager transform (issue 13).

Below `TracerTensor.__torch_function__` every ATen op of a torch function walks the C++
dispatcher, torch's Python dispatch, `dispatch` and a new wrapper, and a torch function can
be several ATen ops (a per-example `x @ W` is unsqueeze, mm and squeeze_, two of them views
with aliasing bookkeeping). Under a trace that takes ATen ops as cached lowerings
(`Trace.lowered_ops`: eager grad/jvp/vmap levels), `__torch_function__` instead looks the
function up by its static signature (the function; each tensor operand's shape, dtype,
device and kind; every other argument's value; the default dtype and grad mode), tracing it
once through the usual front end on fresh abstract wrappers, and hands the resulting graph
to the trace as one `LoweredOp` (`process_lowered`: one cached, generated rule).

A signature is cached only where that is exactly what the front end would do: a tensor
operand that torch lays out non-contiguously (a transposed view, a strided result) keys the
unit by its strides and is traced on a wrapper that reports them (results then get the
traced layouts), the results are fresh tensors or views of operands (no operand returned as
is; None entries in a tuple of results are kept as such: `WithNones`), no operand is
written but the first, the trace reads no layout (as_strided,
storage_offset), and the graph has no effects (random numbers), structural or opaque
primitives. A view result gets
the wrapper the ATen path's make_view gives it (root, chain, version, torch's layout: "view
units" below); a write into the first operand, where that is a root made inside the function
(out[t] = h, buf.add_(x)), gives it its new value ("write units" below). Anything else
(writes into views or arguments, values read, errors, debug_nans) takes the usual path, as
does a function whose result is not a tensor (`x.shape`, `x.item()`: remembered per
function, so it costs one lookup afterwards).
"""
from __future__ import annotations

import functools
import types

import torch

from ..core import nan_check
from .. import prims as P
from ..core.trace import EVAL_TRACE, GraphTrace, Tracer, _reverse, trace_state, type_of
from . import composites, tensor as _tensor
from .functionalize import check_level, recorded_value_of, value_of
from .lowered_ops import UNCACHEABLE, FloatSignatures, op_of_graph
from .tensor import (_STRIDED, TracerTensor, _make_wrapper, fresh_wrapper, is_contiguous_layout,
                     record_user_layout_reads, root_of, unit_key)
from .unit_batches import BELOW_DISPATCH as _BELOW_DISPATCH, LazyTracer

CACHE: dict = {}
# id(func) -> func: functions that returned something other than tensors (x.shape, x.dim(),
# x.item()); they take the usual path without building a key
NOT_TENSOR_VALUED: dict = {}
_MAX = 4096
FLOATS = FloatSignatures()     # floats key units by value (see FloatSignatures)
# View and write units built per function (id): an index keys a view unit by value (a write
# unit too: out[t] = h), and building one costs ~1.5 ms against ~0.1 ms for the usual path, so
# indices that differ on every call (a random offset) would build a unit per call, and a
# loop over 5,000 rows would, past the cache's size, rebuild them on every call. Past the
# limit a function's new signatures take the usual path (the units built still serve). The
# function is Tensor.__getitem__ / __setitem__ for all of a program's indexing: a 200-step RNN
# reading xs[t] and writing out[t] needs 400 (at 64 it ran 0.6x of torch.func, past the
# limit op by op; at 512, 1.1x).
VIEW_BUILDS: dict = {}
VIEW_BUILD_LIMIT = 512
_NANS = nan_check.STATE
_disabled_torch_function = torch._C._disabled_torch_function_impl
_autocast_on = torch._C._is_any_autocast_enabled
_fwd_enabled = torch._C._is_fwd_grad_enabled
_ExcludeKeys = torch._C._ExcludeDispatchKeyGuard
_METHOD_WRAPPER = type(torch.Tensor.T.__get__)
_PY_FUNCTION = types.FunctionType
_F = "torch.nn.functional"      # Python functions whose units key on operand identity


class _Uncacheable(Exception):
    pass


def run_unit(func, types, args, kwargs):
    """func(*args, **kwargs) through its cached unit at the current trace, or NotImplemented
    (the usual path then serves)."""
    trace = trace_state.trace
    if not trace.lowered_ops or _NANS.on or _autocast_on() or not _fwd_enabled():
        return NotImplemented       # autocast casts below this level; no units with forward AD off
    fid = id(func) if type(func) is not _METHOD_WRAPPER else id(func.__self__)   # x.T: a new T.__get__ each read
    if fid in NOT_TENSOR_VALUED:
        return NotImplemented
    leaves = []
    FLOATS.seen = False
    try:
        keys = []
        for a in args:      # _key's commonest cases inline: a fresh wrapper, a plain contiguous tensor
            ta = type(a)
            if ta is TracerTensor:
                k = a._unit_key
                if k is not None and a._root is None:
                    v = a._value
                    if type(v) is torch.Tensor and v.layout is not _STRIDED:
                        raise _Uncacheable      # a sparse tensor the function made: not a unit's input
                    leaves.append(v)
                    keys.append(k)
                    continue
            elif ta is torch.Tensor and not a.requires_grad and a.layout is _STRIDED and a.is_contiguous():
                leaves.append(a)
                keys.append((ta, a.shape, a.dtype, a.device))
                continue
            keys.append(_key(a, leaves))
        # _reverse.stack (reverse_mode_active()): a write under no_grad inside the function (ATen's
        # cosine_similarity clamps its norms so) keeps the root's derivative while a reverse
        # level runs and changes the tangent otherwise (functionalize._writes_values_only), so
        # a unit traced under grad gave jvp the wrong tangent, and one traced under jvp gave
        # grad the wrong gradient
        key = (fid, torch.get_default_dtype(), torch.is_grad_enabled(), bool(_reverse.stack), tuple(keys),
               _key(tuple(kwargs.items()), leaves) if kwargs else None)
        if (len(args) == 2 and args[0] is args[1]) or (type(func) is _PY_FUNCTION and func.__module__ == _F):
            shared = _sharing(func, args, kwargs)       # (the test inline: this runs for every unit)
            if shared is not None:
                key += (shared,)
        entry = CACHE.get(key)
    except (_Uncacheable, TypeError):
        return NotImplemented
    if entry is None or (entry[0] is not func and entry[0] != func):
        if VIEW_BUILDS.get(fid, 0) >= VIEW_BUILD_LIMIT or not FLOATS.may_build(fid):
            return NotImplemented
        op = _build(func, types, args, kwargs, leaves)
        if op is None:
            NOT_TENSOR_VALUED[fid] = func
            return NotImplemented
        if len(CACHE) >= _MAX:
            CACHE.clear()
            FLOATS.builds.clear()
            VIEW_BUILDS.clear()
        if op is not UNCACHEABLE and (op.views is not None or op.outputs in _WRITES):
            VIEW_BUILDS[fid] = VIEW_BUILDS.get(fid, 0) + 1
        types = None if op is UNCACHEABLE else [a.type for a in op.out_atoms]
        make_one = None     # a single fresh result's wrapper maker: the short path below
        if types and op.outputs == "one" and op.views is None:
            t = types[0]
            make_one = functools.partial(_make_wrapper, TracerTensor, t.shape, None, None, None, t.dtype, _STRIDED,
                                         t.device)
        entry = CACHE[key] = (func, op, types, types and [unit_key(t) for t in types], make_one)
    make_one = entry[4]
    if make_one is not None:
        batch = trace.pending
        if batch is not None:       # the common case: one fresh result, recorded into the batch
            r = make_one()
            r._value = batch.record_one(entry[1], leaves, entry[2][0], key[2], key[1])
            r._unit_key = entry[3][0]
            return r
    op = entry[1]
    if op is UNCACHEABLE:
        return NotImplemented
    writes = op.outputs in _WRITES
    if writes and (not _writable(args[0]) or _reads_target(args)):
        return NotImplemented       # (an operand that is a view of the target: the ATen path checks overlap)
    views = op.views
    if views is not None:        # results that alias an operand: their bases' layouts first
        bases = _view_bases(views, args, kwargs)
        if bases is None:
            return NotImplemented
    types = entry[2]
    batch = trace.pending
    if batch is not None:        # recorded, run with the level's next batch (unit_batches.py)
        outs = batch.record(op, leaves, types, key[2], key[1])
    else:
        for i, v in enumerate(leaves):
            if type(v) is LazyTracer:       # an enclosing level's batched result
                leaves[i] = v.resolve()
        with _ExcludeKeys(_BELOW_DISPATCH):
            outs = trace.process_lowered(op, leaves)
        if outs is NotImplemented:
            return NotImplemented
        for o, t in zip(outs, types):
            # the unit's output types are known: a level's tracer (BatchTracer, JVPTracer) takes
            # its type from here instead of computing it from its value when next asked
            if getattr(o, "_aval", 0) is None:
                o._aval = t
    if writes:      # operand 0's new value (a write unit)
        target = args[0]
        new = outs[0]
        if isinstance(new, Tracer) and new._trace is not getattr(target._value, "_trace", target._made_in):
            # a write from an inner transform into a tensor of an enclosing level: refused as
            # functionalize.assign refuses it (it leaked out of the inner transform otherwise)
            check_level(target._value, new, target._made_in, target._argument, target)
        target._value = new
        target._version_ += 1
        target._unit_key = entry[3][0]
        return target if op.outputs == "write, returns it" else None
    if views is not None:
        results = [fresh_wrapper(o, t) if b is None else _strided_result(o, t, b.strides) if type(b) is StridedResult
                   else _view_result(o, t, b) for o, t, b in zip(outs, types, bases)]
        return results[0] if op.outputs == "one" else op.outputs(results)
    if op.outputs == "one":
        return fresh_wrapper(outs[0], types[0], entry[3][0])
    return op.outputs([fresh_wrapper(o, t, k) for o, t, k in zip(outs, types, entry[3])])


# ---------------------------------------------------------------- view units
# A function whose results are views of its operands (x[None], x[:, 1:], x.t(), x.unsqueeze(0),
# x.transpose(0, 1), x.expand(...), split) is a unit too: its value is computed like any
# unit's, and each view result gets the wrapper the ATen path's make_view would give it: the
# base's root, the base's chain followed by the ATen view ops the trace recorded, the root's
# version, and torch's layout of the view. That layout is the traced one (strides, and the
# storage offset relative to the base's) whenever the base reports the strides the trace's
# contiguous abstract operand had; otherwise the usual path runs.

class ViewSpec:
    """How one result of a unit aliases an operand: the operand's position among the tensor
    operands, the ATen view chain from it, the strides the traced (contiguous) operand had,
    and the view's strides and storage offset relative to its base's."""
    __slots__ = ("operand", "chain", "base_strides", "strides", "offset", "strided")

    def __init__(self, operand, chain, base_strides, strides, offset, strided):
        self.operand, self.chain, self.base_strides = operand, chain, base_strides
        self.strides, self.offset, self.strided = strides, offset, strided


class StridedResult:
    """A fresh result torch lays out non-contiguously (attention's of a transposed query, an
    elementwise op's of a transposed operand): its strides."""
    __slots__ = ("strides",)

    def __init__(self, strides):
        self.strides = strides


def _strided_result(value, t, strides):
    w = _make_wrapper(TracerTensor, t.shape, strides, 0, None, t.dtype, _STRIDED, t.device)
    w._value = value
    w._strided = True
    return w


def _view_bases(views, args, kwargs):
    """Per result: None (fresh) or (base wrapper, spec, storage offset); None where a base's
    layout differs from the traced one."""
    operands = None
    out = []
    for spec in views:
        if spec is None or type(spec) is StridedResult:
            out.append(spec)
            continue
        if spec.operand == 0 and args and type(args[0]) is TracerTensor:    # x[None], x.t(): the usual case
            base = args[0]
        else:
            if operands is None:
                operands = []
                _operands(args, operands)
                if kwargs:
                    _operands(tuple(kwargs.values()), operands)
            base = operands[spec.operand]
        if _disabled_torch_function(_STRIDE, _TYPES, (base,), {}) != spec.base_strides:
            return None
        out.append((base, spec, _disabled_torch_function(_OFFSET, _TYPES, (base,), {}) + spec.offset))
    return out


def _view_result(value, t, base_spec_offset):
    """TracerTensor(value, strides, offset) as make_view's wrapper (its type t known)."""
    base, spec, offset = base_spec_offset
    root = root_of(base)
    w = _make_wrapper(TracerTensor, t.shape, spec.strides, offset, None, t.dtype, _STRIDED, t.device)
    w._value = value
    if spec.strided:
        w._strided = True
    w._root, w._chain, w._seen = root, list(base._chain or ()) + spec.chain, root._version_
    root._viewed = True
    return w


_STRIDE, _OFFSET, _TYPES = torch.Tensor.stride, torch.Tensor.storage_offset, (TracerTensor,)


def _layout_of(w):
    """(strides, storage offset) a wrapper reports, past __torch_function__."""
    return (_disabled_torch_function(_STRIDE, _TYPES, (w,), {}),
            _disabled_torch_function(_OFFSET, _TYPES, (w,), {}))


def _operands(x, out):
    """The tensor operands, in the order _key appends their values to leaves."""
    t = type(x)
    if t is TracerTensor or t is torch.Tensor or t is torch.nn.Parameter:
        out.append(x)
    elif t is list or t is tuple:
        for v in x:
            _operands(v, out)
    elif t is slice:
        _operands((x.start, x.stop, x.step), out)


def _static_chain(chain) -> bool:
    """Whether a traced view chain holds only static arguments (no tensor or traced value, no
    as_strided, whose offset is absolute) and so holds for every call of the signature."""
    def static(x):
        if isinstance(x, (torch.Tensor, Tracer)):
            return False
        if type(x) in (list, tuple):
            return all(static(v) for v in x)
        if type(x) is dict:
            return all(static(v) for v in x.values())
        return True
    return all("as_strided" not in str(func) and static(args) and static(kwargs) for func, args, kwargs, _ in chain)


def _key(x, leaves):
    """The static signature of an argument (tensors append their values to leaves)."""
    t = type(x)
    if t is TracerTensor:
        k = x._unit_key
        if k is not None and x._root is None:     # a fresh wrapper (a unit's result), as made
            if type(x._value) is torch.Tensor and x._value.layout is not _STRIDED:
                raise _Uncacheable
            leaves.append(x._value)
            return k
        root = root_of(x)
        if root._layout == "unknown":
            raise _Uncacheable
        v = recorded_value_of(x)        # a batched value stays lazy, for the batch to read
        leaves.append(v)
        if isinstance(v, Tracer):
            a = v.aval
            k = (a.shape, a.dtype, a.device, a.weak)
        else:
            if v.requires_grad or v.layout is not _STRIDED:
                raise _Uncacheable
            k = (v.shape, v.dtype, v.device)
        if root is not x or x._strided:     # a view, a transposed result: traced with its strides
            strides = _disabled_torch_function(_STRIDE, _TYPES, (x,), {})
            if not is_contiguous_layout(tuple(k[0]), strides):
                return k + (strides,)
        return k
    if t is float:
        FLOATS.seen = True
        return (float, x.hex())
    if t is int or t is bool or x is None or t is str or t is torch.dtype or t is torch.device \
            or t is torch.memory_format or t is torch.layout or x is Ellipsis:
        return (t, x)
    if t is list or t is tuple or t is torch.Size:
        return (t, tuple([_key(v, leaves) for v in x]))
    if t is torch.Tensor or t is torch.nn.Parameter:
        if x.requires_grad or x.layout is not _STRIDED:     # a sparse operand: the lowering's
            raise _Uncacheable                              # (a constant, never a unit's input)
        leaves.append(x)
        if not x.is_contiguous():       # (a batch-first input transposed): traced with its layout
            return (t, x.shape, x.dtype, x.device, x.stride(), x.storage_offset())
        return (t, x.shape, x.dtype, x.device)
    if t is slice:
        return (slice, _key(x.start, leaves), _key(x.stop, leaves), _key(x.step, leaves))
    raise _Uncacheable


def _sharing(func, args, kwargs):
    """What a unit's key says about operands that are the same tensor (None: nothing; they are
    then traced as separate operands): a torch.nn.functional body may branch on identity, and
    x * x (torch.mul(x, x)) traced on one operand differentiates as a square (prims' mul:
    2 t x, one product fewer than t x + x t)."""
    if type(func) is _PY_FUNCTION and func.__module__ == _F:
        return _identity_pattern(args, kwargs)
    if len(args) == 2 and args[0] is args[1] and isinstance(args[0], torch.Tensor):
        return "x, x"
    return None


def _identity_pattern(args, kwargs):
    """None, or per tensor passed as an argument (positional, then keyword), the position of
    the first that is the same object: a torch.nn.functional body may branch on identity
    (F.multi_head_attention_forward projects q, k and v with one packed matmul when
    `query is key is value`), so such units key on it."""
    ws = [a for a in args if isinstance(a, torch.Tensor)]
    if kwargs:
        ws += [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
    if len(ws) < 2:
        return None
    ids = [id(w) for w in ws]
    return None if len(set(ids)) == len(ids) else tuple([ids.index(i) for i in ids])


def _shared_operands(args, kwargs, n):
    """Per tensor operand (in _operands' order), the first operand that is the same tensor
    passed as an argument (_identity_pattern's), else itself."""
    same, first, pos = list(range(n)), {}, 0
    for a in (*args, *(kwargs or {}).values()):
        if isinstance(a, torch.Tensor):
            same[pos] = first.setdefault(id(a), pos)
        found = []
        _operands(a, found)
        pos += len(found)
    return same


def _rebuild(x, it):
    t = type(x)
    if t is TracerTensor or t is torch.Tensor or t is torch.nn.Parameter:
        return next(it)
    if t is list or t is tuple:
        return t([_rebuild(v, it) for v in x])
    if t is torch.Size:
        return x
    if t is slice:
        return slice(_rebuild(x.start, it), _rebuild(x.stop, it), _rebuild(x.step, it))
    return x


def _build(func, types, args, kwargs, leaves):
    """func traced once on fresh abstract wrappers into a LoweredOp; UNCACHEABLE where the
    unit would not do exactly what the front end does (or where telling fails: the usual
    path then runs, and raises what it raises); None when the result is not tensors."""
    try:
        return _trace_unit(func, types, args, kwargs, leaves)
    except Exception:
        return UNCACHEABLE


def _trace_unit(func, types, args, kwargs, leaves):
    g = GraphTrace(EVAL_TRACE, stage_all=True)
    g.keeps_fused = True       # fused primitives stay whole (prims/fused.py)
    tracers = [g.new_arg(type_of(x)) for x in leaves]
    operands = []
    _operands(args, operands)
    if kwargs:
        _operands(tuple(kwargs.values()), operands)
    wrappers = [_abstract_operand(t, x, o) for t, x, o in zip(tracers, leaves, operands)]
    same = (_shared_operands(args, kwargs, len(wrappers)) if _sharing(func, args, kwargs) is not None
            else range(len(wrappers)))
    wrappers = [wrappers[i] for i in same]      # one operand passed twice: one wrapper (in the key)
    it = iter(wrappers)
    a_args = _rebuild(args, it)
    a_kwargs = dict(_rebuild(tuple(kwargs.items()), it)) if kwargs else {}
    direct = _DIRECT.get(func)
    if direct is None and type(func) is _PY_FUNCTION:
        # F.multi_head_attention_forward: its body as user code (the calls inside reach
        # __torch_function__, so composites such as the folding F.linear apply)
        direct = python_body(func)
    prev, trace_state.trace = trace_state.trace, g
    try:
        with record_user_layout_reads() as layouts:
            out = NotImplemented if direct is None else direct(*a_args, **a_kwargs)
            if out is NotImplemented:
                out = _disabled_torch_function(func, types, a_args, a_kwargs)
    except Exception:
        return UNCACHEABLE
    finally:
        trace_state.trace = prev
    if layouts.read:        # the user's as_strided, storage_offset(): whole layouts, not in the key
        return UNCACHEABLE
    written = [i for i, (w, t) in enumerate(zip(wrappers, tracers))
               if same[i] == i and (w._version_ or w._value is not t)]
    if written:
        return _write_unit(func, g, tracers, wrappers, written, args, out)
    if type(out) is TracerTensor:
        outputs, outs = "one", [out]
    elif type(out) in (tuple, list) or type(out).__module__ == "torch.return_types":
        outputs, outs = type(out), list(out)
        if not any(isinstance(o, torch.Tensor) for o in outs):
            return None
        if any(o is None for o in outs) and type(out) in (tuple, list):    # MHA's (output, None)
            outputs = WithNones(type(out), tuple(o is None for o in outs))
            outs = [o for o in outs if o is not None]
        if not all(type(o) is TracerTensor for o in outs):
            return UNCACHEABLE
    elif isinstance(out, torch.Tensor):
        return UNCACHEABLE
    else:
        return None
    ins = {id(w): i for i, w in enumerate(wrappers)}
    operands = []
    _operands(args, operands)
    if kwargs:
        _operands(tuple(kwargs.values()), operands)
    views = []
    for o in outs:     # fresh, contiguous results, or views of operands the caller passed as wrappers
        if id(o) in ins or o._layout is not None:
            return UNCACHEABLE
        if o._root is None:
            if o._strided:      # laid out as torch lays it out (its operands' layouts are in the key)
                strides, offset = _layout_of(o)
                if offset:
                    return UNCACHEABLE
                views.append(StridedResult(strides))
            else:
                views.append(None)
            continue
        i = ins.get(id(o._root))
        if i is None:       # a view of a value the function made (torch.stack's of its cat, a
            strides, offset = _layout_of(o)     # batch-first RNN's transposed output): nothing else
            if offset:                          # holds that value, so laid out as a fresh one, it is one
                return UNCACHEABLE
            contiguous = not o._strided and is_contiguous_layout(tuple(o.shape), strides)
            views.append(None if contiguous else StridedResult(strides))
            continue
        if type(operands[i]) is not TracerTensor or not _static_chain(o._chain):
            return UNCACHEABLE
        views.append(ViewSpec(i, list(o._chain), _layout_of(o._root)[0], *_layout_of(o), o._strided))
    values = [value_of(o) for o in outs]
    if not all(isinstance(v, (torch.Tensor, Tracer)) for v in values):
        return UNCACHEABLE
    op = op_of_graph(getattr(func, "__name__", str(func)), g, tracers, values, outputs)
    if op is not UNCACHEABLE and any(v is not None for v in views):
        op.views = views
    return op


class WithNones:
    """A unit's result structure with None entries (F.multi_head_attention_forward's (output,
    None) without attention weights): its tensor results put back in place."""
    __slots__ = ("type", "nones")

    def __init__(self, type_, nones):
        self.type, self.nones = type_, nones

    def __call__(self, results):
        it = iter(results)
        return self.type([None if n else next(it) for n in self.nones])


# ---------------------------------------------------------------- write units
# A function that writes into its first operand (out[t] = h, y.add_(x), buf.copy_(v)) is a unit
# too where that operand is a root made inside the function (its value's type is all its
# layout: no views of it are written through, no argument's memory): the unit maps the
# root's value and the other operands to the root's new value, and run_unit stores it as a
# write does (a new value, the version bumped, so the root's views recompute when read).
# Writes with grad mode off take the usual path (they keep the root's derivative).
_WRITES = ("write", "write, returns it")


def _reads_target(args) -> bool:
    """An operand after the first is a view of the written root args[0] (y.add_(y.t()))."""
    target = args[0]
    return any(type(a) is TracerTensor and a._root is not None and root_of(a) is target for a in args[1:])


def _writable(w) -> bool:
    return type(w) is TracerTensor and w._root is None and w._layout is None and not w._strided \
        and w._read_only is None and torch.is_grad_enabled()


def _write_unit(func, g, tracers, wrappers, written, args, out):
    target = wrappers[0]
    if written != [0] or not args or not _writable(args[0]) or target._root is not None:
        return UNCACHEABLE
    if out is None:
        outputs = "write"
    elif out is target:
        outputs = "write, returns it"
    else:
        return UNCACHEABLE
    new = value_of(target)
    if not isinstance(new, Tracer) or type_of(new) != type_of(tracers[0]):
        return UNCACHEABLE
    return op_of_graph(getattr(func, "__name__", str(func)), g, tracers, [new], outputs)


def _abstract_operand(tracer, value, operand):
    """The unit's abstract wrapper for one tensor operand: contiguous, or laid out as a plain
    non-contiguous tensor or a non-contiguous view is (a transposed view's .view(...) and
    reshape then trace as the ATen path runs them on it)."""
    if type(value) is torch.Tensor and not value.is_contiguous():
        return _laid_out(tracer, value)
    if type(operand) is TracerTensor and (operand._root is not None or operand._strided):
        strides = _disabled_torch_function(_STRIDE, _TYPES, (operand,), {})
        if not is_contiguous_layout(tuple(tracer.aval.shape), strides):
            return TracerTensor(tracer, tuple(strides), 0, False)
    return TracerTensor(tracer)


def _laid_out(tracer, x):
    """The unit's abstract operand for a plain non-contiguous tensor: it reports x's layout (as
    an argument's wrapper does), so the front end gives results torch's layouts."""
    w = TracerTensor(tracer, tuple(x.stride()), x.storage_offset(), False)
    w._layout = (tuple(x.stride()), x.storage_offset())
    return w


def _vector_matmul(x, y, *rest, **kwargs):
    """x @ y with a 1-D operand as one dot_general. ATen decomposes it (below
    __torch_function__) into unsqueeze, mm and squeeze, which vmap batches as three ops; as
    one contraction a per-example vector-matrix product batches into one matmul (torch.func's
    batching rule for matmul does the same). NotImplemented for every other case (torch's
    own checks and messages then serve)."""
    if rest or kwargs or type(x) is not TracerTensor or type(y) is not TracerTensor:
        return NotImplemented
    xn, yn = x.dim(), y.dim()
    if x.dtype != y.dtype or not x.dtype.is_floating_point or 0 in (xn, yn) or 1 not in (xn, yn):
        return NotImplemented
    if xn == 1:          # (k) @ (..., k, n) -> (..., n); (k) @ (k) -> ()
        dims = (((0,), (max(yn - 2, 0),)), ((), ()))
        ok = x.shape[0] == y.shape[max(yn - 2, 0)]
    else:                # (..., m, k) @ (k) -> (..., m)
        dims = (((xn - 1,), (0,)), ((), ()))
        ok = x.shape[-1] == y.shape[0]
    if not ok:
        return NotImplemented
    return TracerTensor(P.dot_general(value_of(x), value_of(y), dims))


def _matmul(x, y, *rest, **kwargs):
    out = _vector_matmul(x, y, *rest, **kwargs)
    return composites.matmul(x, y, *rest, **kwargs) if out is NotImplemented else out


# torch functions whose unit is traced from a direct lowering (NotImplemented: the usual path)
_DIRECT = {**{f: composites.COMPOSITES[f] for f in composites.UNITS_FIRST},
           torch.matmul: _matmul, torch.Tensor.matmul: _matmul, torch.Tensor.__matmul__: _matmul}


# ---------------------------------------------------------------- Python bodies
# torch.nn.functional's Python functions check for __torch_function__ before anything else.
# One that no unit serves (F.multi_head_attention_forward where a unit declines it, F.dropout
# that samples) ran as torch's default pass-through runs it, its body with subclass
# __torch_function__ off, so every op inside took the ATen path one by one: a
# TransformerEncoderLayer's grad ran at 0.22x of torch.func's speed. Under an eager transform
# level its body runs instead as the user's own code would, each torch call a unit: a copy of
# the function whose torch-function checks answer False (the check that brought the call here
# has been answered).
_BODIES: dict = {}
_CHECKS = {name: (lambda *args: False) for name in
           ("has_torch_function", "has_torch_function_unary", "has_torch_function_variadic")}


def run_python_body(func, args, kwargs):
    if not trace_state.trace.lowered_ops or _NANS.on:
        return NotImplemented
    body = python_body(func)
    return NotImplemented if body is None else body(*args, **kwargs)


def python_body(func):
    """func's body with its torch-function checks answering False, cached; None where it has
    none (not a torch.nn.functional function that checks)."""
    body = _BODIES.get(func)
    if body is None:
        body = _BODIES[func] = _body_of(func)
    return body or None


def _body_of(func):
    code = func.__code__
    if func.__module__ != "torch.nn.functional" or func.__closure__ or not set(code.co_names) & set(_CHECKS):
        return False
    body = types.FunctionType(code, dict(func.__globals__, **_CHECKS), func.__name__, func.__defaults__)
    body.__kwdefaults__ = func.__kwdefaults__
    return body


_tensor.run_function_unit = run_unit
_tensor.run_python_body = run_python_body
