"""Functionalization: views and in-place writes on TracerTensors, in terms of pure values.

A view wrapper remembers its root and the chain of view ops that produced it
[(func, args, kwargs, output_index)]. Writing into a view scatters the new values into the
root (positions found by replaying the chain on an iota of the root) and bumps the root's
version; other views of that root recompute lazily when read (value_of). So reading a
wrapper's value (unwrap) lives here too.

In-place ops reach this module through dispatch.py, which turns them into their functional
variant followed by `write`.
"""
from __future__ import annotations

import torch
from torch.utils._pytree import tree_map

from ..core.errors import FunctxError, OuterWriteError, PlainWriteError, unbatched_argument, unbatched_write_message
from ..core.errors import user_frame_summary
from ..core.trace import GraphTrace, Tracer, current_trace, is_ancestor, reverse_mode_active, type_of
from .. import prims as P
from .lowerings.registry import LOWERINGS
from .tensor import TracerTensor, root_of
from .unit_batches import LazyTracer

aten = torch.ops.aten


# ---------------------------------------------------------------- reading a wrapper

def value_of(w: TracerTensor):
    """The current lax value of a wrapper (recomputing a stale view)."""
    root = w._root
    if root is not None and root._root is not None:     # its root became a view (root_of)
        root = root_of(w)
    if root is not None and w._seen != root._version_:
        w._value = apply_view_chain(value_of(root), w._chain)
        w._seen = root._version_
    v = w._value
    if type(v) is LazyTracer:       # a batched unit's result: its batch runs now (unit_batches.py)
        lazy, v = v, v.resolve()
        w._value = v
        if not isinstance(v, Tracer):       # a constant: the level it was made at (check_level)
            w._made_in = lazy._trace
    return v


def recorded_value_of(w):
    """w's value as recorded: a batched unit's result stays a LazyTracer (its batch runs when
    the value is read); a stale view recomputes (value_of)."""
    root = root_of(w)
    return w._value if root is w or w._seen == root._version_ else value_of(w)


def unwrap(x):
    if isinstance(x, TracerTensor):
        return value_of(x)
    return x


def unwrap_tree(tree):
    """unwrap over the containers ATen arguments use (tuples, lists, dicts), without the
    generic pytree machinery on the hot path; other container types go through tree_map."""
    t = type(tree)
    if t is tuple:
        return tuple([_unwrap_any(x) for x in tree])
    if t is list:
        return [_unwrap_any(x) for x in tree]
    if t is dict:
        return {k: _unwrap_any(v) for k, v in tree.items()}
    return _unwrap_any(tree)


def _unwrap_any(x):
    t = type(x)
    if t is TracerTensor:
        return value_of(x)
    if t is tuple or t is list or t is dict:
        return unwrap_tree(x)
    if t in _PLAIN_LEAVES:
        return x
    return tree_map(unwrap, x)


_PLAIN_LEAVES = frozenset({int, float, bool, type(None), str, torch.Tensor, torch.dtype, torch.device,
                           torch.layout, torch.memory_format})


# ---------------------------------------------------------------- views

def make_view(func, lowering, args, kwargs):
    """A view op with a lowering: the result wrappers are views of base's root."""
    base = args[0]
    rest = unwrap_tree(args[1:])
    chain = list(base._chain or ())
    out = lowering(value_of(base), *rest, **kwargs)
    root = root_of(base)
    if not RESULT_LAYOUTS[0]:     # a symbolic trace: wrappers report contiguous strides
        meta = [None] * len(out) if isinstance(out, (list, tuple)) else None
    else:
        layouts = _view_layouts(func, base, rest, kwargs)
        if layouts is not None:       # torch's layout of this view, known from an earlier one
            if isinstance(out, (list, tuple)):
                return [_laid_out_view(o, root, chain + [(func, rest, kwargs, i)], layouts[i])
                        for i, o in enumerate(out)]
            return _laid_out_view(out, root, chain + [(func, rest, kwargs, None)], layouts)
        with _no_python_dispatch():
            meta = func(meta_of(base), *_hints(rest), **kwargs)      # torch's layout of the view
        _remember_view_layouts(func, base, rest, kwargs, meta)
    if isinstance(out, (list, tuple)):
        return [view_wrapper(o, root, chain + [(func, rest, kwargs, i)], meta[i]) for i, o in enumerate(out)]
    return view_wrapper(out, root, chain + [(func, rest, kwargs, None)], meta)


# A view's layout (strides, storage offset) follows from its base's layout, dtype and the
# view's arguments: meta kernels are slow, so each signature's answer is kept.
_VIEW_LAYOUTS: dict = {}


def _view_key(func, base, rest, kwargs):
    try:
        key = (func, base.shape, base.stride(), torch.Tensor.storage_offset(base), base.dtype,
               _frozen(rest), _frozen(kwargs))
        hash(key)
    except TypeError:         # a symbolic size, or an argument that can't key
        return None
    return key


def _frozen(x):
    t = type(x)
    if t is list or t is tuple:
        return (t, tuple([_frozen(v) for v in x]))
    if t is dict:
        return (dict, tuple([(k, _frozen(v)) for k, v in x.items()]))
    if t is float:
        return (float, x.hex())
    if isinstance(x, torch.Tensor):
        raise TypeError("a tensor argument")
    return (t, x)


def _view_layouts(func, base, rest, kwargs):
    key = _view_key(func, base, rest, kwargs)
    return None if key is None else _VIEW_LAYOUTS.get(key)


def _remember_view_layouts(func, base, rest, kwargs, meta):
    key = _view_key(func, base, rest, kwargs)
    if key is None:
        return
    if len(_VIEW_LAYOUTS) >= 4096:
        _VIEW_LAYOUTS.clear()
    if isinstance(meta, (list, tuple)):
        _VIEW_LAYOUTS[key] = [(m.stride(), m.storage_offset()) for m in meta]
    else:
        _VIEW_LAYOUTS[key] = (meta.stride(), meta.storage_offset())


def _laid_out_view(value, root, chain, layout):
    """view_wrapper with the layout known: its meta tensor is built only if asked for."""
    w = TracerTensor(value, layout[0], layout[1])
    w._root, w._chain, w._seen = root, chain, root._version_
    root._viewed = True
    return w


def meta_of(w):
    """A meta tensor laid out as torch lays out w (the strides w reports): a root's from its
    strides and offset, a view's by its chain replayed on its root's. Cached."""
    if w._meta is None:
        with _no_python_dispatch():
            w._meta = _meta_of(w)
    return w._meta


def _meta_of(w):
    if w._root is not None:
        return _replay(meta_of(root_of(w)), _hints(w._chain))
    shape, strides, offset = _hints((tuple(w.shape), w.stride(), torch.Tensor.storage_offset(w)))
    extent = 1 + sum((n - 1) * st for n, st in zip(shape, strides)) if w.numel() else 0
    return torch.empty(offset + extent, dtype=w.dtype, device="meta").as_strided(shape, strides, offset)


def check_viewable(view, args, kwargs):
    """x.view(shape) fails in torch when x's strides don't allow it (a transposed or sliced
    tensor); torch's own view check (and message) decides, on the meta layout."""
    with _no_python_dispatch():
        meta_of(view).view(*_hints(args), **kwargs)


def contiguous(view):
    """x.contiguous() of a view: x itself where torch's layout is contiguous, else a copy (a
    new root holding the same value), so later writes don't reach the original. Of a value
    whose layout functx does not know: a copy, whose layout is then known (contiguous), so
    as_strided after .contiguous() works as the error for as_strided advises; writes into it
    don't reach x (torch's would if x happened to be contiguous already)."""
    root = root_of(view)
    if root._layout != "unknown" and meta_of(view).is_contiguous():
        return view
    return TracerTensor(recorded_value_of(view))     # the copy reads a batched value when read


# Whether results take torch's layouts (dispatch.torch_layout). Off in jit's symbolic traces
# (frontend/staging.py): there every fresh value is contiguous and a view's layout follows
# from its root's, which is all symbolic entries serve (non-contiguous arguments and any
# read of a layout, as_strided or storage_offset(), make jit trace statically).
RESULT_LAYOUTS = [True]


def _no_python_dispatch():
    # Layouts are computed on plain meta tensors: not through the dispatch mode functx runs
    # while tracing (torch asserts when a mode sees meta tensors of symbolic size).
    return torch._C._DisableTorchDispatch()


def _hints(tree):
    """Symbolic sizes (jit's symbolic trace) replaced by the sizes traced with: torch cannot
    lay out meta tensors of symbolic size here, and a view's layout (viewable? contiguous?)
    does not depend on the sizes a symbolic entry serves (0 and 1 are traced statically)."""
    if not _has_symint(tree):       # the common case, without torch's tree_map
        return tree
    return tree_map(lambda n: n.node.hint if isinstance(n, torch.SymInt) else n, tree)


def _has_symint(x) -> bool:
    t = type(x)
    if t is torch.SymInt:
        return True
    if t is tuple or t is list or t is torch.Size:
        for v in x:
            if _has_symint(v):
                return True
        return False
    if t is dict:
        for v in x.values():
            if _has_symint(v):
                return True
        return False
    if t in _PLAIN_LEAVES or isinstance(x, torch._ops.OpOverload):
        return False
    return True         # anything else: let tree_map look inside


def view_wrapper(value, root, chain, meta=None):
    if not RESULT_LAYOUTS[0]:
        # a symbolic trace: the wrapper reports contiguous strides, as every value there
        # does (its meta, if asked for, replays the chain at the traced sizes)
        w = TracerTensor(value)
        w._root, w._chain, w._seen = root, chain, root._version_
        root._viewed = True
        return w
    if meta is None:
        with _no_python_dispatch():
            meta = _replay(meta_of(root), _hints(chain))
    w = TracerTensor(value, meta.stride(), meta.storage_offset())
    w._root, w._chain, w._seen, w._meta = root, chain, root._version_, meta
    root._viewed = True
    return w


def apply_view_chain(value, chain):
    """The view of a lax value: the chain's lowerings applied to it."""
    return _replay(value, chain, lambda func: LOWERINGS[func])


def _replay(value, chain, op=lambda func: func):
    """The view chain applied to `value`: each op (the ATen op itself on tensors, or its
    lowering on lax values), picking the output index of multi-output views."""
    for func, args, kwargs, index in chain:
        value = op(func)(value, *args, **kwargs)
        if index is not None:
            value = value[index]
    return value


def scatter_into_view(root_value, root, chain, new_value):
    """The root's value with the view's elements replaced by new_value.

    The view's element positions come from replaying the view chain on an iota of the
    root (concrete, at trace time), so every view op is handled the same way.
    """
    t = type_of(root_value)
    block = _strided_block(t.shape, chain)
    if block is not None:       # out[t] = h, x[:, 1:] = v: the block replaced, no index tensor
        start, strides, shape = block
        return P.update_slice(root_value, P.reshape(new_value, shape), start, strides)
    positions = _replay(torch.arange(t.numel, device=t.device).reshape(t.shape), chain)
    flat = P.reshape(root_value, (t.numel,))
    updates = P.reshape(new_value, (positions.numel(),))
    out = P.scatter(flat, positions.reshape(-1).contiguous(), updates, 0)
    return P.reshape(out, t.shape)


_SELECT, _SLICE = aten.select.int, aten.slice.Tensor


def _strided_block(shape, chain):
    """(start, strides, block shape) in the root's dims where the chain is select and slice
    ops on static sizes (a view that is a strided block of the root), else None."""
    if not chain or not all(type(n) is int for n in shape):
        return None
    start, strides, sizes = [0] * len(shape), [1] * len(shape), list(shape)
    dims = list(range(len(shape)))          # the view's dims -> the root's
    for func, args, kwargs, index in chain:
        if index is not None or kwargs:
            return None
        if func is _SELECT and len(args) == 2 and type(args[0]) is int and type(args[1]) is int:
            (dim, i), steps = args, None
        elif func is _SLICE and all(a is None or type(a) is int for a in args) and 1 <= len(args) <= 4:
            dim, lo, hi, steps = (tuple(args) + (None, None, 1))[:4]
            steps = 1 if steps is None else steps
            if steps < 1:
                return None
        else:
            return None
        if not -len(dims) <= dim < len(dims):
            return None
        r = dims[dim]
        n = sizes[r]
        if steps is None:
            i = i + n if i < 0 else i
            if not 0 <= i < n:
                return None
            start[r] += i * strides[r]
            sizes[r] = 1
            del dims[dim]
            continue
        lo = 0 if lo is None else (lo + n if lo < 0 else lo)
        hi = n if hi is None else (hi + n if hi < 0 else hi)
        lo, hi = min(max(lo, 0), n), min(max(hi, 0), n)
        start[r] += lo * strides[r]
        sizes[r] = max(0, -(-(hi - lo) // steps))
        strides[r] *= steps
    return tuple(start), tuple(strides), tuple(sizes)


# ---------------------------------------------------------------- writes

def assign(w, new_value) -> None:
    """Functionalized write of a whole value into wrapper `w` (same shape and dtype)."""
    if not isinstance(w, TracerTensor):
        raise PlainWriteError(unbatched_write_message("an in-place operation", w) or
            f"An in-place operation writes a traced value into a plain tensor ({type_of(w)}), one "
            "created inside the transformed function (for example with torch.zeros(...)) or "
            f"captured from outside it:\n{user_frame_summary()}\nfunctx cannot track writes into that "
            "tensor. Create it from a traced input instead (x.new_zeros(...), torch.zeros_like(x)), "
            "or build the result out of place (torch.stack, torch.cat, torch.where).")
    root = None if w._root is None else root_of(w)
    if (root if root is not None else w)._read_only:
        raise FunctxError(f"functx: {(root if root is not None else w)._read_only}, here:\n{user_frame_summary()}")
    if root is None:
        if isinstance(new_value, Tracer) and new_value._trace is not getattr(w._value, "_trace", w._made_in):
            check_level(w._value, new_value, w._made_in, w._argument, w)
        w._value = new_value
        w._unit_key = None
        w._version_ += 1
        return
    assign(root, scatter_into_view(value_of(root), root, w._chain, new_value))
    w._value = new_value
    w._seen = root._version_


_KIND = {"BatchTrace": "functx.vmap", "JVPTrace": "grad/vjp/jvp/jacrev/jacfwd",
         "GraphTrace": "functx.jit or a traced body (scan, fori_loop, while_loop, cond, checkpoint)"}


def check_level(old, new, made_in=None, argument=False, w=None) -> None:
    """A write inside an inner transform of a value that depends on its inputs, into a tensor
    of an enclosing level (old's trace is a strict ancestor of new's): refused, naming it. The
    value would otherwise leak out of the inner transform (a wrong or stale result later)."""
    outer = old._trace if isinstance(old, Tracer) else made_in     # (a plain value: where it was made)
    if outer is None or not is_ancestor(outer, new._trace) \
            or not is_ancestor(new._trace, current_trace()):
        return
    if type(outer).__name__ == "GraphTrace" and not argument:
        # under jit, constants made inside the inner transform (x.new_zeros(...)) are values of
        # the jit level too, and writing into those is fine: not told apart from the jit
        # function's other values, so only its arguments are checked
        return
    inner = _KIND.get(type(new._trace).__name__, repr(new._trace))
    name = unbatched_argument(w)        # vmap's argument with in_axes None, when it is one
    raise OuterWriteError(
        f"functx: an in-place operation inside {inner} writes a value that depends on that "
        f"transform's inputs into {name + ', ' if name else ''}a tensor of an enclosing level "
        f"({_KIND.get(type(outer).__name__, repr(outer))}: "
        "its argument, a value it computed, or one computed inside from those alone, such as "
        f"a.clone() of an unbatched a), here:\n{user_frame_summary()}\n"
        "That tensor exists at the outer level, where the inner transform's per-example (or "
        "differentiated) values do not; torch.func raises a RuntimeError here too. Return the "
        "value from the inner transform and write it outside (x.add_(vmap(f)(ys).sum(0))), or "
        "compute out of place.")


def check_no_partial_overlap(target, operands) -> None:
    """torch refuses an in-place op reading a tensor that shares some, not all, of the written
    tensor's memory (x[1:] += x[:-1]); where its overlap check gives up (strided views,
    b.add_(a[1]) with a[1] inside b) its result depends on the kernel's order. functx reads the
    operands before writing, which is neither: both raise, with torch's message."""
    if not isinstance(target, TracerTensor):
        return
    root = root_of(target)
    others = [o for o in operands if isinstance(o, TracerTensor) and o is not target and root_of(o) is root]
    if not others or not all(type(n) is int for n in root.shape):
        return
    ids = torch.arange(root.numel(), device="cpu").reshape(tuple(root.shape))
    mine = ids if target._root is None else _replay(ids, target._chain)
    for o in others:
        theirs = ids if o._root is None else _replay(ids, o._chain)
        if theirs.shape == mine.shape and torch.equal(theirs, mine):
            continue
        if torch.isin(theirs.reshape(-1), mine.reshape(-1)).any():
            raise RuntimeError(
                "unsupported operation: some elements of the input tensor and the written-to tensor "
                "refer to a single memory location. Please clone() the tensor before performing the "
                f"operation.\n{user_frame_summary()}")


# View ops after which a tensor's elements can share memory (a zero stride)
_MAY_OVERLAP = frozenset({aten.expand.default, aten.as_strided.default})


def check_no_internal_overlap(w, partial_write=None) -> None:
    """torch refuses an in-place op on a tensor whose elements share memory (x.expand(2, 3)
    .add_(1): the result would depend on the order of the writes); so does functx, with
    torch's message, judged on the layout torch would give w. partial_write: an op that torch
    runs there (deprecated) but functx cannot functionalize exactly (it names it)."""
    if not isinstance(w, TracerTensor):
        return
    root = root_of(w)
    layout = root._layout
    if not (isinstance(layout, tuple) and 0 in layout[0]) \
            and not any(func in _MAY_OVERLAP for func, *_ in (w._chain or ())):
        return
    if torch._debug_has_internal_overlap(meta_of(w)) != 1:      # 1: YES (2 is "too hard")
        return
    if partial_write is not None:
        raise FunctxError(f"functx: {partial_write} writes into a tensor whose elements share memory (an "
                          f"expanded view), which torch deprecates and functx does not support:\n"
                          f"{user_frame_summary()}\nclone() the tensor before writing into it.")
    raise RuntimeError("unsupported operation: more than one element of the written-to tensor refers to a "
                       "single memory location. Please clone() the tensor before performing the operation.\n"
                       f"{user_frame_summary()}")


def write(target, value):
    """copy_ semantics: value is converted and broadcast to target's dtype and shape."""
    t = type_of(unwrap(target)) if isinstance(target, TracerTensor) else type_of(target)
    if isinstance(value, (bool, int, float)):
        value = P.full(t.shape, value, t.dtype, t.device)
    elif isinstance(value, torch.Tensor) and value.device != t.device:
        value = value.to(t.device)   # copy_ moves concrete values across devices, as torch does
    v_shape = tuple(type_of(unwrap(value)).shape)
    if len(v_shape) > len(t.shape) or any(a != 1 and a != b for a, b in zip(reversed(v_shape), reversed(t.shape))):
        # torch's in-place rule: the result's broadcast shape must be the written tensor's
        full = torch.broadcast_shapes(v_shape, tuple(t.shape))
        raise RuntimeError(f"output with shape {list(t.shape)} doesn't match the broadcast shape {list(full)}")
    value = P.broadcast_to(P.convert(value, t.dtype), t.shape)
    if not (isinstance(target, TracerTensor) and t.dtype.is_floating_point and _writes_values_only(target)):
        assign(target, value)
        return
    # A write under no_grad, or through a detached alias, changes the values but keeps the
    # derivative the written tensor (its root, for a view) had, as torch's autograd does:
    # ATen's cosine_similarity clamps its norms under no_grad, F.embedding(max_norm=)
    # renormalizes weight.detach() in place. The new root is old + (new - old), the change a
    # constant: through a detached alias for every level (stop_gradient); under no_grad for
    # the reverse levels only, as the subtraction computed in that mode is when the levels
    # process it, since forward levels ignore grad mode (torch's forward AD updates the
    # tangent of a write under no_grad: hessian = jacfwd(jacrev) of one lost the forward
    # level's part of the change). A graph traced for the levels to differentiate later (a
    # function unit, a loop body) does not record grad mode: stop_gradient there.
    root = root_of(target)
    old = value_of(root)
    assign(target, value)
    change = P.sub(root._value, old)
    if _through_detach(target) or isinstance(current_trace(), GraphTrace):
        change = P.stop_gradient(change)
    with torch.enable_grad():
        root._value = P.add(old, change)
        root._unit_key = None


def _through_detach(target) -> bool:
    return any(func is aten.detach.default for func, *_ in (target._chain or ()))


def _writes_values_only(target) -> bool:
    return (not torch.is_grad_enabled() and reverse_mode_active()) or _through_detach(target)

