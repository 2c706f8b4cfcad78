"""Indexing: index_select, gather, advanced indexing and index_put, scatter and
scatter_reduce, sort/topk, and masked_select (a data-dependent shape, eager only)."""
from __future__ import annotations

import math

import torch

from ...core.errors import ConcretizationError, FunctxError, user_frame_summary
from ...core.trace import concrete
from ... import prims as P
from ..promote import SCALARS, broadcast_shapes
from .common import _as_bool, _opaque, _t, _zeros, aten, wrap_dim
from ..functionalize import unwrap
from ..tensor import TracerTensor
from ..composites import COMPOSITES
from .registry import register


# ---------------------------------------------------------------- indexing

def _wrap_index(idx, size):
    """Negative indices count from the end (static size)."""
    return P.where(P.lt(idx, 0), P.add(idx, size), idx)


@register(aten.index_select.default)
def _index_select(x, dim, index):
    t, it = _t(x), _t(index)
    d = wrap_dim(dim, t.ndim)
    if it.ndim > 1:
        raise IndexError("index_select(): Index is supposed to be a vector")
    if t.ndim == 0:
        return x
    if it.ndim == 0:    # a 0-d index selects a length-1 dim, as torch's (take would drop it)
        index = P.reshape(index, (1,))
    return P.take(x, index, d)


@register(aten.embedding.default)
def _embedding(weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    """weight's rows at indices, with torch's derivative: none for rows looked up at
    padding_idx, and with scale_grad_by_freq each row's cotangent divided by how often its
    index occurs in this batch. (Both change only the derivative, so they are written as
    value + (derivative-only term), the value term stopped.)"""
    t, it = _t(weight), _t(indices)
    out = P.take(weight, indices, 0)
    out_t = _t(out)
    if scale_grad_by_freq:
        flat = P.reshape(indices, (it.numel,))
        ones = P.full((it.numel,), 1.0, t.dtype, t.device)
        counts = P.scatter_add(P.full((t.shape[0],), 0.0, t.dtype, t.device), flat, ones, 0)
        per_row = P.broadcast_in_dim(P.take(counts, indices, 0), out_t.shape, tuple(range(it.ndim)))
        frozen = P.stop_gradient(out)
        out = P.add(frozen, P.div(P.sub(out, frozen), per_row))
    if padding_idx is not None and padding_idx >= 0:
        pad = P.broadcast_in_dim(P.eq(indices, padding_idx), out_t.shape, tuple(range(it.ndim)))
        out = P.where(pad, P.stop_gradient(out), out)
    return out


@register(aten.gather.default)
def _gather(x, dim, index, sparse_grad=False):
    t = _t(x)
    if _t(index).numel == 0:    # torch skips its dtype and rank checks for an empty index
        return P.full(tuple(_t(index).shape), 0, t.dtype, t.device)
    if _vector_like(x, index):      # torch reads a 0-d input or index as one element
        wrap_dim(dim, 1)
        return P.reshape(P.take_along_axis(_as_vector(x), _as_vector(index), 0), _t(index).shape)
    return P.take_along_axis(x, index, wrap_dim(dim, t.ndim))


def _vector_like(*operands) -> bool:
    """Whether gather/scatter operands mix 0-d and 1-d tensors, which torch reads alike (its
    ensure_nonempty_dim): a 0-d one is a 1-element vector there. (The primitives and their
    batching rules take equal ranks.)"""
    ranks = [_t(v).ndim for v in operands]
    return 0 in ranks and max(ranks) <= 1


def _as_vector(v):
    return P.reshape(v, (_t(v).numel,)) if _t(v).ndim == 0 else v


@register(aten.scatter_add.default)
def _scatter_add(x, dim, index, src):
    t = _t(x)
    if _vector_like(x, index, src) and _t(index).numel:
        wrap_dim(dim, 1)
        return P.reshape(_scatter_add(_as_vector(x), 0, _as_vector(index), _as_vector(src)), t.shape)
    it = _t(index)
    if _t(src).shape != it.shape:
        src = P.slice_(src, (0,) * it.ndim, it.shape)
    return P.scatter_add_along(x, index, P.convert(src, t.dtype), wrap_dim(dim, t.ndim))


def _linear_index(x, indices):
    """Advanced indexing -> (x with indexed dims flattened to one axis at `pos`,
    flat index tensor, pos, whether result dims go first)."""
    t = _t(x)
    full = list(indices) + [None] * (t.ndim - len(indices))
    # Boolean masks become integer indices (data-dependent: needs concrete values).
    expanded = []
    for i, ix in enumerate(full):
        if ix is not None and _t(ix).dtype in (torch.bool, torch.uint8):
            nz = torch.nonzero(_concrete_mask(ix))
            expanded += [nz[:, k] for k in range(nz.shape[1])]
        else:
            expanded.append(ix)
    full = expanded + [None] * (t.ndim - len(expanded))
    dims = [i for i, ix in enumerate(full) if ix is not None]
    adjacent = dims == list(range(dims[0], dims[-1] + 1))
    idx_shape = broadcast_shapes(*[full[d] for d in dims])
    perm = dims + [i for i in range(t.ndim) if i not in dims]
    y = P.transpose(x, tuple(perm))
    sizes = [t.shape[d] for d in dims]
    rest = tuple(t.shape[i] for i in range(t.ndim) if i not in dims)
    y = P.reshape(y, (math.prod(sizes),) + rest)
    lin = ok = None
    for d, size in zip(dims, sizes):
        ix = P.broadcast_to(P.convert(_wrap_index(full[d], size), torch.int64), idx_shape)
        lin = ix if lin is None else P.add(P.mul(lin, size), ix)
        if len(dims) > 1:   # one index out of range could still make a valid flat position
            valid = P.bitwise_and(P.ge(ix, 0), P.lt(ix, size))
            ok = valid if ok is None else P.bitwise_and(ok, valid)
    if ok is not None:      # torch raises there: a position no batching offset makes valid
        lin = P.where(ok, lin, _INVALID)
    return y, lin, dims, adjacent, rest, idx_shape


# A flat position for an index out of range: negative even after vmap's batching rules add
# an example's offset, so take/scatter (index_select, index_copy) raise as torch does.
_INVALID = -(2 ** 62)


@register(aten.index.Tensor)
def _index(x, indices):
    y, lin, dims, adjacent, rest, idx_shape = _linear_index(x, indices)
    out = P.take(y, lin, 0)                         # idx_shape + rest
    if adjacent and dims[0] > 0:
        k = len(idx_shape)
        lead = dims[0]
        perm = list(range(k, k + lead)) + list(range(k)) + list(range(k + lead, k + len(rest)))
        out = P.transpose(out, tuple(perm))
    return out


def _concrete_mask(mask):
    try:
        return concrete(mask)
    except ConcretizationError:
        raise ConcretizationError(
            f"Indexing with a boolean mask ({_t(mask)}) selects a number of elements that depends "
            f"on the mask's values, so the result has no static shape to trace:\n{user_frame_summary()}\n"
            "Under functx.jit values are abstract. Use torch.where(mask, x, other) or "
            "x.masked_fill(mask, value) instead of x[mask]; assigning a single value, "
            "x[mask] = v, is supported.") from None


def _mask_put(x, mask, values, accumulate):
    """x[mask] = v / x[mask] += v with a boolean mask over x's leading dims and one value:
    a select, so it traces without the mask's values."""
    t, m = _t(x), _t(mask)
    if m.shape != t.shape[:m.ndim] or isinstance(values, SCALARS) or _t(values).numel != 1:
        return None
    mask = P.broadcast_in_dim(_as_bool(mask), t.shape, tuple(range(m.ndim)))
    v = P.broadcast_to(P.convert(P.reshape(values, ()), t.dtype), t.shape)
    if accumulate:
        v = P.add(x, v) if t.dtype is not torch.bool else P.bitwise_or(x, v)
    return P.where(mask, v, x)


def _dtype_name(dtype):
    # torch's messages spell dtypes by their C++ scalar type names (Float, Long, ...)
    return torch.empty((), dtype=dtype).type().split(".")[-1].replace("Tensor", "")


@register(aten.index_put.default)
def _index_put(x, indices, values, accumulate=False):
    t = _t(x)
    if _t(values).dtype != t.dtype:       # torch's index_put never converts (x[i] = v converts first)
        raise RuntimeError(f"Index put requires the source and destination dtypes match, got "
                           f"{_dtype_name(t.dtype)} for the destination and {_dtype_name(_t(values).dtype)} "
                           "for the source.")
    live = [ix for ix in indices if ix is not None]
    if (len(indices) == 1 and live and _t(live[0]).dtype in (torch.bool, torch.uint8)):
        out = _mask_put(x, live[0], values, accumulate)
        if out is not None:
            return out
    y, lin, dims, adjacent, rest, idx_shape = _linear_index(x, indices)
    # values broadcast against the indexing result (in its natural layout).
    if adjacent and dims[0] > 0:
        lead = dims[0]
        k = len(idx_shape)
        result_shape = rest[:lead] + idx_shape + rest[lead:]
        v = P.broadcast_to(P.convert(values, t.dtype), result_shape)
        perm = list(range(lead, lead + k)) + list(range(lead)) + list(range(lead + k, len(result_shape)))
        v = P.transpose(v, tuple(perm))
    else:
        v = P.broadcast_to(P.convert(values, t.dtype), idx_shape + rest)
    scatter = P.scatter_add if accumulate else P.scatter
    out = scatter(y, lin, v, 0)
    sizes = [t.shape[d] for d in dims]
    out = P.reshape(out, tuple(sizes) + rest)
    perm = dims + [i for i in range(t.ndim) if i not in dims]
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return P.transpose(out, tuple(inv))


# ---------------------------------------------------------------- sort, topk

@register(aten.sort.default)
def _sort(x, dim=-1, descending=False):
    if _t(x).ndim == 0:
        return x, P.full((), 0, torch.int64, _t(x).device)
    return tuple(P.sort(x, dim, descending, False))


@register(aten.sort.stable)
def _sort_stable(x, *, stable=False, dim=-1, descending=False):
    if _t(x).ndim == 0:
        return x, P.full((), 0, torch.int64, _t(x).device)
    return tuple(P.sort(x, dim, descending, bool(stable)))


@register(aten.topk.default)
def _topk(x, k, dim=-1, largest=True, sorted=True):
    t = _t(x)
    if t.ndim == 0:     # torch: (x, 0) for k = 0 or 1 (as sort of a 0-d tensor)
        return x, P.full((), 0, torch.int64, t.device)
    return P.topk(x, k, wrap_dim(dim, t.ndim), largest, sorted)     # torch's order of ties and of sorted=False


# ---------------------------------------------------------------- scatter (gather-style index), scatter_reduce

def _scatter_positions(x, dim, index):
    """Flat positions in x of the elements `index` addresses along dim (torch.scatter)."""
    t, it = _t(x), _t(index)
    strides, acc = [0] * t.ndim, 1
    for k in range(t.ndim - 1, -1, -1):
        strides[k], acc = acc, acc * t.shape[k]
    index = P.convert(index, torch.int64)
    pos = P.mul(index, strides[dim])
    for k in range(t.ndim):
        if k != dim and strides[k] and it.shape[k] > 1:
            pos = P.add(pos, P.iota(it.shape, k, torch.int64, t.device) if strides[k] == 1 else
                        P.mul(P.iota(it.shape, k, torch.int64, t.device), strides[k]))
    # An index outside [0, size) (torch.scatter raises for it, negative ones included) would
    # land on another element of the flat tensor, silently: it gets a position no batching
    # offset makes valid, so the flat write raises as torch's does.
    ok = P.bitwise_and(P.ge(index, 0), P.lt(index, t.shape[dim]))
    return P.where(ok, pos, _INVALID)


def _src_for(src, index, dtype):
    it = _t(index)
    if isinstance(src, SCALARS):
        return P.full(it.shape, src, dtype, _t(index).device)
    src = P.convert(src, dtype)
    if _t(src).shape != it.shape:
        src = P.slice_(src, (0,) * it.ndim, it.shape)
    return src


@register(aten.scatter.src, aten.scatter.value)
def _scatter_lower(x, dim, index, src):
    t = _t(x)
    if t.ndim == 0 or _t(index).numel == 0:
        return x if t.ndim or _t(index).numel == 0 else P.reshape(
            _src_for(src, P.reshape(index, (1,)), t.dtype), ())
    d = wrap_dim(dim, t.ndim)
    pos = _scatter_positions(x, d, index)
    flat = P.reshape(x, (t.numel,))
    return P.reshape(P.scatter(flat, pos, _src_for(src, index, t.dtype), 0), t.shape)


@register(aten.scatter_reduce.two)
def _scatter_reduce(x, dim, index, src, reduce, include_self=True):
    t = _t(x)
    if reduce not in ("sum", "mean") or t.ndim == 0 or not t.dtype.is_floating_point:
        return _opaque(aten.scatter_reduce.two, x, dim, index, src, reduce, include_self=include_self)
    d = wrap_dim(dim, t.ndim)
    src = _src_for(src, index, t.dtype)
    ones = P.full(_t(index).shape, 1.0, t.dtype, t.device)
    count = P.scatter_add_along(_zeros(t), index, ones, d)      # how many updates land on each element
    touched = P.gt(count, 0.0)
    base = x if include_self else P.where(touched, _zeros(t), x)
    out = P.scatter_add_along(base, index, src, d)
    if reduce == "mean":
        n = P.add(count, 1.0) if include_self else P.where(touched, count, P.full(t.shape, 1.0, t.dtype, t.device))
        out = P.div(out, n)
    return out


# ---------------------------------------------------------------- data-dependent shapes (eager only)

@register(aten.masked_select.default)
def _masked_select(x, mask):
    shape = broadcast_shapes(x, mask)
    try:
        m = concrete(P.broadcast_to(mask, shape))
    except FunctxError as e:
        raise ConcretizationError(
            "functx: aten.masked_select: the output's shape depends on the mask's values, which are "
            "not known here (under jit or vmap). Use torch.where(mask, x, 0) (fixed shape), or call "
            "masked_select outside the jitted/vmapped function.") from e
    idx = torch.nonzero(m.reshape(-1)).reshape(-1)
    return P.take(P.reshape(P.broadcast_to(x, shape), (math.prod(shape),)), idx, 0)


# F.one_hot: ATen's one_hot reaches functx already decomposed (unsqueeze, eq with arange),
# without the kernel's checks, so a class out of range gave an all-zero row (a negative one
# too) where eager raises. Caught as a torch function (frontend/composites.py): with concrete
# classes (eager transforms) the checks run as torch's; traced ones (jit, vmap) pick rows of
# an identity with take, whose index_select raises at run time.
def _one_hot(tensor, num_classes=-1):
    try:
        classes = concrete(unwrap(tensor))
    except FunctxError:
        classes = None
    if classes is not None and classes.numel() and classes.dtype == torch.int64:
        if classes.min() < 0:
            raise RuntimeError("Class values must be non-negative.")
        if num_classes != -1 and classes.max() >= num_classes:
            raise RuntimeError("Class values must be smaller than num_classes.")
    if classes is not None or num_classes == -1 or not tensor.numel() or tensor.dtype != torch.int64:
        return NotImplemented       # torch's own (its checks of num_classes and the dtype)
    eye = torch.eye(num_classes, dtype=torch.int64, device=tensor.device)
    return TracerTensor(P.take(eye, unwrap(tensor), 0))


COMPOSITES[torch.nn.functional.one_hot] = _one_hot
