"""Indexing primitives: take / scatter_add / scatter along one axis with an n-d index
(index_select / index_add / index_copy generalised), take_along_axis / scatter_add_along
(torch.gather / torch.scatter_add), and sort. Indices are in range (the front end wraps
negative ones). Gathers are linear in the operand; scatters are linear in (operand, updates).
"""
from __future__ import annotations

import torch

from ..core import EXTERN, Primitive, Zero, bind
from ..core.trace import UndefinedPrimal, type_of
from . import elementwise as ew
from . import shape as sh
from .util import bdim_to_front, instantiate, moveaxis


def _check_index(name, idx):
    if idx.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name}: index must be int32/int64, got {idx.dtype}")


def _aval(x):
    return x.aval if isinstance(x, UndefinedPrimal) else type_of(x)


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
    offsets = ew.mul(ew.iota(it.shape, 0, it.dtype, it.device), n)
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


take_p = Primitive("take")
take_p.kind = EXTERN
take_p.abstract_eval = _take_type
take_p.impl = _take_impl
take_p.jvp = lambda primals, tangents, *, axis: (take(primals[0], primals[1], axis),
                                                take(tangents[0], primals[1], axis))
take_p.transpose = lambda ct, x, idx, *, axis: [
    scatter_add(_zeros(x.aval), idx, ct, axis), None]
take_p.batch = _take_batch


def _zeros(t):
    return ew.full(t.shape, 0, t.dtype, t.device)


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
    return idx.reshape(-1).long(), v.reshape(x.shape[:axis] + (-1,) + x.shape[axis + 1:])


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


scatter_add_p = Primitive("scatter_add")
scatter_add_p.kind = EXTERN
scatter_add_p.abstract_eval = _scatter_type("scatter_add")
scatter_add_p.impl = _scatter_add_impl
scatter_add_p.batch = _scatter_batch(scatter_add_p)


scatter_add_p.jvp = _jointly_linear_jvp(lambda *a: scatter_add(*a))
scatter_add_p.transpose = lambda ct, x, idx, v, *, axis: [
    ct if isinstance(x, UndefinedPrimal) else None, None,
    take(ct, idx, axis) if isinstance(v, UndefinedPrimal) else None]


def scatter_add(x, idx, v, axis):
    return bind(scatter_add_p, (x, idx, v), {"axis": axis})


scatter_p = Primitive("scatter")
scatter_p.kind = EXTERN
scatter_p.abstract_eval = _scatter_type("scatter")
scatter_p.impl = _scatter_impl
scatter_p.batch = _scatter_batch(scatter_p)


def _scatter_transpose(ct, x, idx, v, *, axis):
    ct_x = ct_v = None
    if isinstance(x, UndefinedPrimal):
        vt = _aval(v)
        ct_x = scatter(ct, idx, _zeros(vt), axis)
    if isinstance(v, UndefinedPrimal):
        ct_v = take(ct, idx, axis)
    return [ct_x, None, ct_v]


scatter_p.jvp = _jointly_linear_jvp(lambda *a: scatter(*a))
scatter_p.transpose = _scatter_transpose


def scatter(x, idx, v, axis):
    """x with x[..., idx[j], ...] = v[..., j, ...] along axis (last write wins on duplicates)."""
    return bind(scatter_p, (x, idx, v), {"axis": axis})


# ---------------------------------------------------------------- take_along_axis / scatter_add_along

def _along_type(x, idx, *, axis):
    _check_index("take_along_axis", idx)
    if idx.ndim != x.ndim:
        raise TypeError(f"take_along_axis: index rank {idx.ndim} != operand rank {x.ndim}")
    return x.with_shape(idx.shape)


take_along_axis_p = Primitive("take_along_axis")
take_along_axis_p.kind = EXTERN
take_along_axis_p.abstract_eval = _along_type
take_along_axis_p.impl = lambda x, idx, *, axis: torch.gather(x, axis, idx.long())
take_along_axis_p.emit = lambda srcs, p: f"torch.gather({srcs[0]}, {p['axis']}, {srcs[1]}.long())"
take_along_axis_p.jvp = lambda primals, tangents, *, axis: (
    take_along_axis(primals[0], primals[1], axis), take_along_axis(tangents[0], primals[1], axis))
take_along_axis_p.transpose = lambda ct, x, idx, *, axis: [
    scatter_add_along(_zeros(x.aval), idx, ct, axis), None]


def _along_batch(p):
    def rule(axis_data, args, dims, *, axis):
        size = axis_data.size
        moved = []
        for a, d in zip(args, dims):
            moved.append(bdim_to_front(a, d, size))
        return p.bind(*moved, axis=axis + 1), 0
    return rule


take_along_axis_p.batch = _along_batch(take_along_axis_p)


def take_along_axis(x, idx, axis):
    return bind(take_along_axis_p, (x, idx), {"axis": axis})


def _scatter_along_type(x, idx, v, *, axis):
    _check_index("scatter_add_along", idx)
    if v.shape != idx.shape or v.dtype != x.dtype:
        raise TypeError(f"scatter_add_along: updates must be {x.with_shape(idx.shape)}, got {v}")
    return x


scatter_add_along_p = Primitive("scatter_add_along")
scatter_add_along_p.kind = EXTERN
scatter_add_along_p.abstract_eval = _scatter_along_type
scatter_add_along_p.impl = lambda x, idx, v, *, axis: torch.scatter_add(x, axis, idx.long(), v)
scatter_add_along_p.emit = lambda srcs, p: (
    f"torch.scatter_add({srcs[0]}, {p['axis']}, {srcs[1]}.long(), {srcs[2]})")


scatter_add_along_p.jvp = _jointly_linear_jvp(lambda *a: scatter_add_along(*a))
scatter_add_along_p.transpose = lambda ct, x, idx, v, *, axis: [
    ct if isinstance(x, UndefinedPrimal) else None, None,
    take_along_axis(ct, idx, axis) if isinstance(v, UndefinedPrimal) else None]
scatter_add_along_p.batch = _along_batch(scatter_add_along_p)


def scatter_add_along(x, idx, v, axis):
    return bind(scatter_add_along_p, (x, idx, v), {"axis": axis})


# ---------------------------------------------------------------- sort

sort_p = Primitive("sort", multiple_results=True)
sort_p.kind = EXTERN
sort_p.abstract_eval = lambda t, *, axis, descending, stable: [t, t.with_dtype(torch.int64)]


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


sort_p.impl = _sort_impl
sort_p.jvp = _sort_jvp
sort_p.batch = _sort_batch


def sort(x, axis=-1, descending=False, stable=False):
    axis = axis % max(type_of(x).ndim, 1)
    return bind(sort_p, (x,), {"axis": axis, "descending": descending, "stable": stable})
