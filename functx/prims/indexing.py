"""Indexing primitives: take / scatter_add / scatter along one axis with an n-d index
(index_select / index_add / index_copy generalised), update_slice (a strided block
replaced), take_along_axis / scatter_add_along
(torch.gather / torch.scatter_add), sort and topk. Indices are in range (the front end wraps
negative ones). Gathers are linear in the operand; scatters are linear in (operand, updates).
"""
from __future__ import annotations

import functools

import torch

from ..core import EXTERN, Primitive, Var, Zero, bind
from ..core.trace import type_of
from . import elementwise as ew
from . import shape as sh
from .creation import instantiate, iota, zeros_like_type
from .define import is_undefined
from .series import taylor_linear
from .shape import bdim_to_front, moveaxis


def _check_index(name, idx):
    if idx.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name}: index must be int32/int64, got {idx.dtype}")


def _aval(x):
    return x.aval if is_undefined(x) else type_of(x)


def _jointly_linear_jvp(fn):
    """Scatters are linear in (operand, updates) together: the tangent is the same scatter
    of the tangents, at the same indices."""
    def jvp(primals, tangents, *, axis):
        x, idx, v = primals
        tx, _, tv = tangents
        out = fn(x, idx, v, axis)
        if isinstance(tx, Zero) and isinstance(tv, Zero):
            return out, Zero(type_of(out))
        return out, fn(instantiate(tx), idx, instantiate(tv), axis)
    return jvp


# ---------------------------------------------------------------- take (index_select, n-d index)

def _take_type(x, idx, *, axis):
    _check_index("take", idx)
    return x.with_shape(x.shape[:axis] + idx.shape + x.shape[axis + 1:])


def _take_impl(x, idx, *, axis):
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape(x.shape[:axis] + idx.shape + x.shape[axis + 1:])


def _merge_batch(x, idx, axis, size):
    """x: (B, *xs) and idx: (B, *I) -> per-row index into x with B merged into `axis`."""
    xs = type_of(x).shape[1:]
    n = xs[axis]
    x = moveaxis(x, axis + 1, 1)
    x = sh.reshape(x, (size * n,) + xs[:axis] + xs[axis + 1:])
    it = type_of(idx)
    offsets = ew.mul(iota(it.shape, 0, it.dtype, it.device), n)
    return x, ew.add(idx, offsets), n


def _take_batch(axis_data, args, dims, *, axis):
    (x, idx), (dx, di) = args, dims
    if di is None:
        ax = axis + (axis >= dx)
        n_idx = type_of(idx).ndim
        return take(x, idx, ax), (dx if dx < ax else dx + n_idx - 1)
    idx = moveaxis(idx, di, 0)
    if dx is None:
        return take(x, idx, axis), axis
    size = axis_data.size
    x = moveaxis(x, dx, 0)
    xs = type_of(x).shape[1:]
    xm, idxm, _ = _merge_batch(x, idx, axis, size)
    out = take(xm, idxm, 0)                        # (B, *I, *pre, *post)
    n_i, n_pre, n_post = type_of(idx).ndim - 1, axis, len(xs) - axis - 1
    perm = ([0] + [1 + n_i + k for k in range(n_pre)] + [1 + k for k in range(n_i)]
            + [1 + n_i + n_pre + k for k in range(n_post)])
    return sh.transpose(out, tuple(perm)), 0


# Gathers are linear in the operand only: the index's tangent is always Zero.
take_p = Primitive(
    "take", kind=EXTERN,
    abstract_eval=_take_type,
    impl=_take_impl,
    jvp=lambda primals, tangents, *, axis: (take(primals[0], primals[1], axis),
                                            take(tangents[0], primals[1], axis)),
    transpose=lambda ct, x, idx, *, axis: [scatter_add(zeros_like_type(x.aval), idx, ct, axis), None],
    batch=_take_batch)


taylor_linear(take_p, fixed=(1,))


def take(x, idx, axis):
    return bind(take_p, (x, idx), {"axis": axis})


# ---------------------------------------------------------------- scatter_add / scatter (index_add / index_copy)

def _scatter_type(name):
    def abstract_eval(x, idx, v, *, axis):
        _check_index(name, idx)
        expect = x.shape[:axis] + idx.shape + x.shape[axis + 1:]
        if v.shape != expect or v.dtype != x.dtype:
            raise TypeError(f"{name}: updates must be {x.with_shape(expect)}, got {v}")
        return x
    return abstract_eval


def _flat_updates(x, idx, v, axis):
    # idx.numel(), not -1: with an empty x the -1 is ambiguous (torch refuses to infer it)
    return idx.reshape(-1).long(), v.reshape(x.shape[:axis] + (idx.numel(),) + x.shape[axis + 1:])


def _scatter_add_impl(x, idx, v, *, axis):
    i, u = _flat_updates(x, idx, v, axis)
    return x.index_add(axis, i, u)


def _scatter_impl(x, idx, v, *, axis):
    i, u = _flat_updates(x, idx, v, axis)
    return x.index_copy(axis, i, u)


def _scatter_batch(p):
    def rule(axis_data, args, dims, *, axis):
        (x, idx, v), (dx, di, dv) = args, dims
        size = axis_data.size
        x, v = bdim_to_front(x, dx, size), bdim_to_front(v, dv, size)
        if di is None:
            return p.bind(x, idx, v, axis=axis + 1), 0
        idx = moveaxis(idx, di, 0)
        xs = type_of(x).shape[1:]
        xm, idxm, n = _merge_batch(x, idx, axis, size)
        # updates (B, *pre, *I, *post) -> (B, *I, *pre, *post)
        n_i, n_pre, n_post = type_of(idx).ndim - 1, axis, len(xs) - axis - 1
        perm = ([0] + [1 + n_pre + k for k in range(n_i)] + [1 + k for k in range(n_pre)]
                + [1 + n_pre + n_i + k for k in range(n_post)])
        vm = sh.transpose(v, tuple(perm))
        out = p.bind(xm, idxm, vm, axis=0)          # (B*N, *pre, *post)
        out = sh.reshape(out, (size, n) + xs[:axis] + xs[axis + 1:])
        return moveaxis(out, 1, axis + 1), 0
    return rule


scatter_add_p = Primitive(
    "scatter_add", kind=EXTERN,
    abstract_eval=_scatter_type("scatter_add"),
    impl=_scatter_add_impl,
    jvp=_jointly_linear_jvp(lambda *a: scatter_add(*a)),
    transpose=lambda ct, x, idx, v, *, axis: [ct if is_undefined(x) else None, None,
                                              take(ct, idx, axis) if is_undefined(v) else None])
scatter_add_p.batch = _scatter_batch(scatter_add_p)
taylor_linear(scatter_add_p, fixed=(1,))


def scatter_add(x, idx, v, axis):
    return bind(scatter_add_p, (x, idx, v), {"axis": axis})


def _scatter_transpose(ct, x, idx, v, *, axis):
    ct_x = ct_v = None
    if is_undefined(x):
        ct_x = scatter(ct, idx, zeros_like_type(_aval(v)), axis)
    if is_undefined(v):
        ct_v = take(ct, idx, axis)
    return [ct_x, None, ct_v]


scatter_p = Primitive(
    "scatter", kind=EXTERN,
    abstract_eval=_scatter_type("scatter"),
    impl=_scatter_impl,
    jvp=_jointly_linear_jvp(lambda *a: scatter(*a)),
    transpose=_scatter_transpose)
scatter_p.batch = _scatter_batch(scatter_p)
taylor_linear(scatter_p, fixed=(1,))


def scatter(x, idx, v, axis):
    """x with x[..., idx[j], ...] = v[..., j, ...] along axis (last write wins on duplicates)."""
    return bind(scatter_p, (x, idx, v), {"axis": axis})


# ---------------------------------------------------------------- update_slice (a write into a strided block)

@functools.lru_cache(maxsize=4096)
def _block(start, shape, strides):
    """The basic index of the block: dim k holds start[k], start[k] + strides[k], ... (shape[k] of them)."""
    return tuple(slice(s, s + n * st, st) for s, n, st in zip(start, shape, strides))


def _update_slice_type(x, v, *, start, strides):
    if v.ndim != x.ndim or v.dtype != x.dtype or any(
            n and not (0 <= s and s + (n - 1) * st < size) for s, n, st, size in zip(start, v.shape, strides, x.shape)):
        raise TypeError(f"update_slice: updates {v} do not fit {x} at start={start} strides={strides}")
    return x


def _update_slice_impl(x, v, *, start, strides):
    out = x.clone()
    out[_block(start, v.shape, strides)] = v
    return out


def _update_slice_in_place(x, v, *, start, strides):
    x[_block(start, v.shape, strides)] = v
    return x



def _limit(start, shape, strides):
    return tuple(s + (n - 1) * st + 1 if n else s for s, n, st in zip(start, shape, strides))


def _update_slice_transpose(ct, x, v, *, start, strides):
    ct = instantiate(ct)
    vt = _aval(v)
    if is_undefined(x) and is_undefined(v):     # both from one split (its block a copy: the
        return split_block(ct, start, strides, vt.shape)    # rest may then be zeroed in place)
    ct_x = update_slice(ct, zeros_like_type(vt), start, strides) if is_undefined(x) else None
    ct_v = sh.slice_(ct, start, _limit(start, vt.shape, strides), strides) if is_undefined(v) else None
    return [ct_x, ct_v]


def _update_slice_batch(axis_data, args, dims, *, start, strides):
    (x, v), (dx, dv) = args, dims
    size = axis_data.size
    x, v = bdim_to_front(x, dx, size), bdim_to_front(v, dv, size)
    return update_slice(x, v, (0,) + start, (1,) + strides), 0


def _update_slice_jvp(primals, tangents, *, start, strides):
    (x, v), (tx, tv) = primals, tangents
    out = update_slice(x, v, start, strides)
    if isinstance(tx, Zero) and isinstance(tv, Zero):
        return out, Zero(type_of(out))
    return out, update_slice(instantiate(tx), instantiate(tv), start, strides)


# x with its block x[start[k] :: strides[k], ...] (v's shape) replaced by v: a write through
# a view made of select/slice ops (out[t] = h), without scatter's flat index tensor
# (XLA's dynamic_update_slice, with static starts and strides). Linear in (x, v) together.
update_slice_p = Primitive(
    "update_slice", kind=EXTERN,
    abstract_eval=_update_slice_type,
    impl=_update_slice_impl,
    jvp=_update_slice_jvp,
    transpose=_update_slice_transpose,
    batch=_update_slice_batch)
taylor_linear(update_slice_p)


def update_slice(x, v, start, strides):
    return bind(update_slice_p, (x, v), {"start": tuple(start), "strides": tuple(strides)})


# Backend-internal (compile/write_in_place.py): the block written into x itself, x a buffer
# nothing else reads. No trace meets it, so it has no rules.
update_slice_in_place_p = Primitive(
    "update_slice_in_place", kind=EXTERN,
    abstract_eval=_update_slice_type,
    impl=_update_slice_in_place)


# ---------------------------------------------------------------- split_block (update_slice's transpose)

def _split_block_type(x, *, start, strides, shape):
    _update_slice_type(x, x.with_shape(shape), start=start, strides=strides)
    return [x, x.with_shape(shape)]


def _split_block_impl(x, *, start, strides, shape):
    index = _block(start, shape, strides)
    rest = x.clone()
    rest[index].zero_()         # (zero_ of the view: a setitem of 0 costs twice as much)
    return [rest, x[index].clone()]


def _split_block_in_place(x, *, start, strides, shape):
    region = x[_block(start, shape, strides)]
    block = region.clone()
    region.zero_()
    return [x, block]



def _split_block_jvp(primals, tangents, *, start, strides, shape):
    outs = split_block(primals[0], start, strides, shape)
    if isinstance(tangents[0], Zero):
        return outs, [Zero(type_of(o)) for o in outs]
    return outs, split_block(tangents[0], start, strides, shape)


def _split_block_transpose(cts, x, *, start, strides, shape):
    ct_rest, ct_block = cts
    if isinstance(ct_rest, Zero) and isinstance(ct_block, Zero):
        return [None]
    return [update_slice(instantiate(ct_rest), instantiate(ct_block), start, strides)]


def _split_block_batch(axis_data, args, dims, *, start, strides, shape):
    x = bdim_to_front(args[0], dims[0], axis_data.size)
    return split_block(x, (0,) + start, (1,) + strides, (axis_data.size,) + shape), [0, 0]


def _split_block_taylor(primals, series, *, start, strides, shape):
    outs = split_block(primals[0], start, strides, shape)
    coeffs = [None if c is None else split_block(c, start, strides, shape) for c in series[0]]
    return outs, [[None if c is None else c[k] for c in coeffs] for k in range(2)]


# x -> (x with its block zeroed, a copy of the block): the cotangents update_slice sends to
# its buffer and its updates. Linear; its transpose is update_slice. A backward loop over
# `out[t] = h` is a chain of them, which a rule or jit runs in place (no copy of the
# cotangent buffer per step).
split_block_p = Primitive(
    "split_block", kind=EXTERN, multiple_results=True,
    abstract_eval=_split_block_type,
    impl=_split_block_impl,
    jvp=_split_block_jvp,
    transpose=_split_block_transpose,
    batch=_split_block_batch)
split_block_p.taylor = _split_block_taylor


def split_block(x, start, strides, shape):
    return bind(split_block_p, (x,), {"start": tuple(start), "strides": tuple(strides), "shape": tuple(shape)})


split_block_in_place_p = Primitive(     # backend-internal, as update_slice_in_place
    "split_block_in_place", kind=EXTERN, multiple_results=True,
    abstract_eval=_split_block_type,
    impl=_split_block_in_place)


# ---------------------------------------------------------------- writing over a dying buffer

# each primitive whose first output is a fresh buffer -> its variant that writes over its first operand
IN_PLACE = {update_slice_p: update_slice_in_place_p, split_block_p: split_block_in_place_p}
_MAKES_BUFFERS = frozenset(IN_PLACE) | frozenset(IN_PLACE.values())


def written_over(eqns, live) -> set:
    """ids of the equations of eqns (in program order) that may run their IN_PLACE variant:
    their first operand is a buffer such an equation made (a fresh tensor no argument shares),
    nothing else reads it (no other equation, so no view of it exists) and it is not in `live`
    (returned, or read by code outside eqns). A loop's `out[t] = h` then costs its block, not a
    copy of the buffer each step. Generated eager rules (transforms/rule_cache.py) and jit's
    last pass (compile/write_in_place.py) both decide with this."""
    reads, made = {}, set()
    for e in eqns:
        for a in e.inputs:
            if isinstance(a, Var):
                reads[a] = reads.get(a, 0) + 1
        if e.prim in _MAKES_BUFFERS:
            made.add(e.outputs[0])
    return {id(e) for e in eqns if e.prim in IN_PLACE and e.inputs[0] in made
            and reads[e.inputs[0]] == 1 and e.inputs[0] not in live}


# ---------------------------------------------------------------- take_along_axis / scatter_add_along

def _along_type(x, idx, *, axis):
    _check_index("take_along_axis", idx)
    if idx.ndim != x.ndim:
        raise TypeError(f"take_along_axis: index rank {idx.ndim} != operand rank {x.ndim}")
    return x.with_shape(idx.shape)


def _along_batch(p):
    def rule(axis_data, args, dims, *, axis):
        moved = [bdim_to_front(a, d, axis_data.size) for a, d in zip(args, dims)]
        return p.bind(*moved, axis=axis + 1), 0
    p.batch = rule
    return p


take_along_axis_p = _along_batch(Primitive(
    "take_along_axis", kind=EXTERN,
    abstract_eval=_along_type,
    impl=lambda x, idx, *, axis: torch.gather(x, axis, idx.long()),
    jvp=lambda primals, tangents, *, axis: (take_along_axis(primals[0], primals[1], axis),
                                            take_along_axis(tangents[0], primals[1], axis)),
    transpose=lambda ct, x, idx, *, axis: [scatter_add_along(zeros_like_type(x.aval), idx, ct, axis), None],
    emit=lambda eqn, srcs: f"torch.gather({srcs[0]}, {eqn.params['axis']}, {srcs[1]}.long())"))


taylor_linear(take_along_axis_p, fixed=(1,))


def take_along_axis(x, idx, axis):
    return bind(take_along_axis_p, (x, idx), {"axis": axis})


def _scatter_along_type(x, idx, v, *, axis):
    _check_index("scatter_add_along", idx)
    if v.shape != idx.shape or v.dtype != x.dtype:
        raise TypeError(f"scatter_add_along: updates must be {x.with_shape(idx.shape)}, got {v}")
    return x


scatter_add_along_p = _along_batch(Primitive(
    "scatter_add_along", kind=EXTERN,
    abstract_eval=_scatter_along_type,
    impl=lambda x, idx, v, *, axis: torch.scatter_add(x, axis, idx.long(), v),
    jvp=_jointly_linear_jvp(lambda *a: scatter_add_along(*a)),
    transpose=lambda ct, x, idx, v, *, axis: [ct if is_undefined(x) else None, None,
                                              take_along_axis(ct, idx, axis) if is_undefined(v) else None],
    emit=lambda eqn, srcs: (f"torch.scatter_add({srcs[0]}, {eqn.params['axis']}, {srcs[1]}.long(), "
                            f"{srcs[2]})")))


taylor_linear(scatter_add_along_p, fixed=(1,))


def scatter_add_along(x, idx, v, axis):
    return bind(scatter_add_along_p, (x, idx, v), {"axis": axis})


# ---------------------------------------------------------------- sort

def _sort_impl(x, *, axis, descending, stable):
    r = torch.sort(x, dim=axis, descending=descending, stable=stable)
    return [r.values, r.indices]


def _sort_jvp(primals, tangents, *, axis, descending, stable):
    values, indices = sort(primals[0], axis, descending, stable)
    return [values, indices], [take_along_axis(tangents[0], indices, axis),
                               Zero(type_of(indices))]


def _sort_batch(axis_data, args, dims, *, axis, descending, stable):
    (x,), (d,) = args, dims
    return sort(x, axis + (axis >= d), descending, stable), [d, d]


sort_p = Primitive(
    "sort", kind=EXTERN, multiple_results=True,
    abstract_eval=lambda t, *, axis, descending, stable: [t, t.with_dtype(torch.int64)],
    impl=_sort_impl,
    jvp=_sort_jvp,
    batch=_sort_batch)


def sort(x, axis=-1, descending=False, stable=False):
    axis = axis % max(type_of(x).ndim, 1)
    return bind(sort_p, (x,), {"axis": axis, "descending": descending, "stable": stable})


# ---------------------------------------------------------------- topk
# torch.topk itself, not a sort and a slice: its order among equal values, and with
# sorted=False the order of the k it returns, are torch's own, and programs read them by
# position (a stable sort put tied values, and unsorted results, elsewhere).

def _topk_impl(x, *, k, axis, largest, sorted_):
    r = torch.topk(x, k, dim=axis, largest=largest, sorted=sorted_)
    return [r.values, r.indices]


def _topk_type(t, *, k, axis, largest, sorted_):
    shape = list(t.shape)
    shape[axis] = k
    values = t.with_shape(tuple(shape))
    return [values, values.with_dtype(torch.int64)]


def _topk_jvp(primals, tangents, *, k, axis, largest, sorted_):
    values, indices = topk(primals[0], k, axis, largest, sorted_)
    return [values, indices], [take_along_axis(tangents[0], indices, axis), Zero(type_of(indices))]


def _topk_batch(axis_data, args, dims, *, k, axis, largest, sorted_):
    (x,), (d,) = args, dims
    return topk(x, k, axis + (axis >= d), largest, sorted_), [d, d]


topk_p = Primitive(
    "topk", kind=EXTERN, multiple_results=True,
    abstract_eval=_topk_type,
    impl=_topk_impl,
    jvp=_topk_jvp,
    batch=_topk_batch)


def topk(x, k, axis=-1, largest=True, sorted_=True):
    axis = axis % max(type_of(x).ndim, 1)
    return bind(topk_p, (x,), {"k": k, "axis": axis, "largest": largest, "sorted_": sorted_})
