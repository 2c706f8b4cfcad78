"""View ops (dispatch records each as a step of a view chain, functionalize.py), as_strided,
and the shape ops that copy (cat, flip, constant padding)."""
from __future__ import annotations

import math

import torch

from ...core.errors import FunctxError, user_frame_summary
from ... import prims as P
from ..functionalize import value_of, view_wrapper
from ..promote import result_type
from ..tensor import TracerTensor, is_contiguous_layout, note_layout_read, root_of
from .common import _t, aten, wrap_dim
from .registry import DECOMPOSING, register, register_special


# ---------------------------------------------------------------- views

def _infer_shape(shape, numel):
    shape = list(shape)
    if -1 in shape:
        i = shape.index(-1)
        rest = math.prod(s for j, s in enumerate(shape) if j != i)
        shape[i] = numel // rest if rest else 0
    return tuple(shape)


@register(aten.view.default, aten._unsafe_view.default, aten.reshape.default)
def _view(x, size):
    return P.reshape(x, _infer_shape(size, _t(x).numel))


@register(aten.expand.default)
def _expand(x, size, implicit=False):
    t = _t(x)
    lead = len(size) - t.ndim
    shape = tuple(t.shape[i - lead] if s == -1 else s for i, s in enumerate(size))
    return P.broadcast_in_dim(x, shape, tuple(range(lead, len(shape))))


@register(aten.permute.default)
def _permute(x, dims):
    nd = _t(x).ndim
    return P.transpose(x, tuple(wrap_dim(d, nd) for d in dims))


@register(aten.t.default)
def _t_op(x):
    nd = _t(x).ndim
    if nd > 2:
        raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self is {nd}D")
    return P.transpose(x, (1, 0)) if nd == 2 else x


@register(aten.transpose.int)
def _transpose(x, dim0, dim1):
    nd = _t(x).ndim
    if nd == 0:
        return x
    perm = list(range(nd))
    perm[wrap_dim(dim0, nd)], perm[wrap_dim(dim1, nd)] = perm[wrap_dim(dim1, nd)], perm[wrap_dim(dim0, nd)]
    return P.transpose(x, tuple(perm))


@register(aten.unsqueeze.default)
def _unsqueeze(x, dim):
    shape = list(_t(x).shape)
    shape.insert(wrap_dim(dim, len(shape) + 1), 1)
    return P.reshape(x, tuple(shape))


@register(aten.squeeze.default, aten.squeeze.dim, aten.squeeze.dims)
def _squeeze(x, dim=None):
    t = _t(x)
    if t.ndim == 0:
        return x
    dims = set(range(t.ndim)) if dim is None else {wrap_dim(d, t.ndim) for d in ([dim] if isinstance(dim, int) else dim)}
    return P.reshape(x, tuple(s for i, s in enumerate(t.shape) if not (i in dims and s == 1)))


@register(aten.select.int)
def _select(x, dim, index):
    t = _t(x)
    d = wrap_dim(dim, t.ndim)
    i = index % t.shape[d] if t.shape[d] else index
    sl = P.slice_in_dim(x, i, i + 1, 1, d)
    return P.reshape(sl, t.shape[:d] + t.shape[d + 1:])


@register(aten.slice.Tensor)
def _slice(x, dim=0, start=None, end=None, step=1):
    t = _t(x)
    d = wrap_dim(dim, t.ndim)
    start, end, step = _slice_indices(start, end, step, t.shape[d])
    return P.slice_in_dim(x, start, end, step, d)


def _slice_indices(start, end, step, n):
    """slice(start, end, step).indices(n) with end >= start, for a positive step; written with
    comparisons, so a symbolic size n (jit) stays symbolic where the bounds allow (each
    comparison Python decides is a guard of the trace)."""
    if not isinstance(n, torch.SymInt) or step is None or step <= 0:
        start, end, step = slice(start, end, step).indices(n)
        return start, max(start, end), step

    def clamp(i, default):
        if i is None:
            return default
        if i < 0:
            i = i + n
            return 0 if i < 0 else i
        return n if i > n else i
    start, end = clamp(start, 0), clamp(end, n)
    return start, (start if end < start else end), step


@register(aten.narrow.default)
def _narrow(x, dim, start, length):
    return _slice(x, dim, start, start + length)


@register(aten.alias.default)
def _alias(x):
    return x


@register(aten.diagonal.default)
def _diagonal(x, offset=0, dim1=0, dim2=1):
    t = _t(x)
    d1, d2 = wrap_dim(dim1, t.ndim), wrap_dim(dim2, t.ndim)
    rest = [i for i in range(t.ndim) if i not in (d1, d2)]
    y = P.transpose(x, tuple(rest) + (d1, d2))
    n, m = t.shape[d1], t.shape[d2]
    batch = tuple(t.shape[i] for i in rest)
    count = max(0, min(n, m - offset) if offset >= 0 else min(n + offset, m))
    flat = P.reshape(y, batch + (n * m,))
    if count == 0:
        return P.slice_in_dim(flat, 0, 0, 1, len(batch))
    start = offset if offset >= 0 else -offset * m
    return P.slice_in_dim(flat, start, start + (count - 1) * (m + 1) + 1, m + 1, len(batch))


@register_special(aten.size.int, aten.sym_size.int)
def _size(x, dim):
    """x.size(d) called from C++ (torch's composite kernels: upsample reads its input's sizes
    this way): the traced size, symbolic under jit's dynamic dims."""
    shape = x.shape
    return shape[wrap_dim(dim, len(shape))]


@register_special(aten.size.default, aten.sym_size.default)
def _sizes(x):
    return tuple(x.shape)


@register(aten.unbind.int)
def _unbind(x, dim=0):
    t = _t(x)
    d = wrap_dim(dim, t.ndim)
    return [_select(x, d, i) for i in range(t.shape[d])]


@register(aten.split.Tensor)
def _split(x, split_size, dim=0):
    t = _t(x)
    d = wrap_dim(dim, t.ndim)
    n = t.shape[d]
    if isinstance(n, torch.SymInt) or isinstance(split_size, torch.SymInt):
        # A symbolic size (jit): the number of pieces is the one thing Python must know (a
        # guard on ceil(n / split_size), which many sizes share: x.chunk(2) is 2 pieces for
        # every n >= 2); the bounds stay symbolic, the last piece ending at n.
        count = max(int((n + split_size - 1) // split_size), 1)
        return [_slice(x, d, i * split_size, (i + 1) * split_size) for i in range(count - 1)] + \
            [_slice(x, d, (count - 1) * split_size, n)]
    return [_slice(x, d, s, min(s + split_size, n)) for s in range(0, max(n, 1), max(split_size, 1))]


@register(aten.split_with_sizes.default)
def _split_with_sizes(x, split_sizes, dim=0):
    d = wrap_dim(dim, _t(x).ndim)
    outs, s = [], 0
    for size in split_sizes:
        outs.append(_slice(x, d, s, s + size))
        s += size
    return outs


# ---------------------------------------------------------------- as_strided
# A traced value has no storage. Wrappers report the layout torch would give them (an
# argument's real strides and offset, a view's from its root's; fresh values contiguous), so
# as_strided reads the storage positions it asks for through that layout: a slice or gather
# of the root when the root is contiguous from offset 0, else positions mapped back to the
# root's elements. Positions are static, so a gather's transpose (scatter_add) accumulates
# where windows overlap.
# Dispatch takes the SPECIAL entry (it makes the view); the lowering replays it in view chains.

@register(aten.as_strided.default)
def _as_strided_value(x, size, stride, storage_offset=0):
    t = _t(x)
    size, stride, off = tuple(size), tuple(stride), storage_offset or 0
    n = math.prod(size)
    flat = P.reshape(x, (t.numel,))
    expect, acc = [], 1
    for s in reversed(size):
        expect.insert(0, acc)
        acc *= s
    if all(st == e or sz == 1 for sz, st, e in zip(size, stride, expect)):
        return P.reshape(P.slice_in_dim(flat, off, off + n, 1, 0), size)
    positions = torch.zeros((), dtype=torch.int64)
    for k, (sz, st) in enumerate(zip(size, stride)):
        shape = [1] * len(size)
        shape[k] = sz
        positions = positions + torch.arange(sz).reshape(shape) * st
    positions = (positions + off).expand(size).contiguous().to(t.device)
    if n and int(positions.max()) >= t.numel:
        raise FunctxError(f"functx: aten.as_strided: size {list(size)}, stride {list(stride)}, offset {off} "
                          f"reads past the end of a tensor of {t.numel} elements")
    return P.take(flat, positions, 0)


@register_special(aten.as_strided.default)
def _as_strided(x, size, stride, storage_offset=None):
    if not isinstance(x, TracerTensor):
        return torch.as_strided(x, size, stride, storage_offset)
    root = root_of(x)
    note_layout_read(_in_decomposition())     # the result depends on the arguments' layouts: jit keys on them
    if root._layout == "unknown" and not _in_decomposition():
        raise FunctxError(
            f"functx: aten.as_strided of a tensor whose memory layout functx does not know:\n"
            f"{user_frame_summary()}\nas_strided reads raw storage, which functx's traced values don't "
            "have; functx follows the layout of arguments and of views of them, but not of this "
            "value. Call .contiguous() on it first, or use view ops (unfold, narrow, expand, "
            "diagonal) that say what they read.")
    offset = torch.Tensor.storage_offset(x) if storage_offset is None else storage_offset
    # storage offsets count from the start of the storage: a contiguous root that starts at
    # position r (an argument sliced from a bigger tensor; under vmap, every example starts at
    # the batched tensor's offset) holds element k at position r + k
    start = offset - torch.Tensor.storage_offset(root)
    if is_contiguous_layout(root.shape, root.stride()) and start >= 0:
        chain = [(aten.as_strided.default, (tuple(size), tuple(stride), start), {}, None)]
        return view_wrapper(_as_strided_value(value_of(root), size, stride, start), root, chain)
    return _as_strided_of_strided_root(root, size, stride, offset)


def _in_decomposition():
    """True while torch's own decompositions (torch._refs) run on wrappers: they lay out
    values from the strides a wrapper reports (contiguous for a value of unknown layout) or
    call .contiguous() first (which returns the wrapper itself when it reports contiguous
    strides), so their as_strided means the reported layout. native_group_norm's does this."""
    return DECOMPOSING[0] > 0


def _as_strided_of_strided_root(root, size, stride, offset):
    """as_strided of a tensor whose root is not laid out contiguously from the start of its
    storage (a transposed, sliced or expanded tensor passed in): the storage positions asked
    for are mapped back to the root's elements through its strides. The result is a copy that
    refuses writes (in torch it is a view whose writes reach the argument)."""
    t = _t(value_of(root))
    strides, root_offset = root.stride(), torch.Tensor.storage_offset(root)
    at = torch.zeros((), dtype=torch.int64)
    for k, (n, st) in enumerate(zip(t.shape, strides)):    # storage position of each element
        at = at + torch.arange(n).reshape([n if i == k else 1 for i in range(t.ndim)]) * st
    at = (at + root_offset).expand(t.shape).reshape(-1)
    element = torch.full((int(at.max()) + 1 if t.numel else 0,), -1, dtype=torch.int64)
    element[at] = torch.arange(t.numel)         # an expanded root: a position's last element
    wanted = torch.zeros((), dtype=torch.int64) + offset
    for k, (n, st) in enumerate(zip(size, stride)):
        wanted = wanted + torch.arange(n).reshape([n if i == k else 1 for i in range(len(size))]) * st
    wanted = wanted.expand(tuple(size))
    if wanted.numel() and (int(wanted.min()) < 0 or int(wanted.max()) >= len(element)
                           or bool((element[wanted] < 0).any())):
        raise FunctxError(f"functx: aten.as_strided(size={list(size)}, stride={list(stride)}, "
                          f"storage_offset={offset}) reads memory outside the argument it is applied "
                          f"to (or the argument it is a view of):\n{user_frame_summary()}")
    flat = P.reshape(value_of(root), (t.numel,))
    count = torch.bincount(at, minlength=len(element))
    if t.dtype.is_floating_point and int(count.max()) > 1:
        # elements that share memory (an expanded argument): a position holds their common
        # value; its derivative is shared among them, as torch's as_strided backward does
        storage = P.scatter_add(P.full((len(element),), 0.0, t.dtype, t.device), at.to(t.device), flat, 0)
        share = (1.0 / count.clamp(min=1).to(t.dtype))[wanted].reshape(-1).to(t.device)
        value = P.reshape(P.mul(P.take(storage, wanted.reshape(-1).to(t.device), 0), share), tuple(size))
    else:
        value = P.take(flat, element[wanted].to(t.device), 0)
    out = TracerTensor(value)
    out._read_only = ("writing through as_strided of a non-contiguous argument is not supported "
                      "(functx computes it as a copy); call .contiguous() on the argument first")
    return out


# ---------------------------------------------------------------- shape ops that copy

@register(aten.cat.default)
def _cat(tensors, dim=0):
    dtype = result_type(*tensors)       # skipped legacy empties still promote, as in torch
    tensors = [x for x in tensors if not (_t(x).ndim == 1 and _t(x).shape[0] == 0)] or list(tensors[:1])
    nd = _t(tensors[0]).ndim
    axis = wrap_dim(dim, nd)
    first = _t(tensors[0]).shape
    for k, x in enumerate(tensors[1:], 1):
        # torch's own messages, in the shapes the user sees (under vmap the primitive's
        # operands carry the batch dimension, so its error would name another dimension)
        shape = _t(x).shape
        if len(shape) != nd:
            raise RuntimeError(f"Tensors must have same number of dimensions: got {nd} and {len(shape)}")
        for d in range(nd):
            if d != axis and shape[d] != first[d]:
                raise RuntimeError(f"Sizes of tensors must match except in dimension {axis}. Expected size "
                                   f"{first[d]} but got size {shape[d]} for tensor number {k} in the list.")
    return P.concatenate([P.convert(x, dtype) for x in tensors], axis)


@register(aten.flip.default)
def _flip(x, dims):
    nd = _t(x).ndim
    return P.rev(x, tuple(sorted(wrap_dim(d, nd) for d in dims)))


@register(aten.constant_pad_nd.default)
def _constant_pad_nd(x, pad, value=0):
    t = _t(x)
    config = [(0, 0, 0)] * t.ndim
    for i in range(len(pad) // 2):
        config[t.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1], 0)
    return P.pad(x, config, value)
