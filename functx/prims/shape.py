"""Shape primitives: broadcast_in_dim, reshape, transpose, slice, pad, concatenate, rev,
and the batching moves built on them (moveaxis, bdim_to_front).

All are linear; each has a transpose rule. Static shapes only: every size and index is a
Python int parameter. The views (broadcast_in_dim, reshape, transpose, slice, rev) carry an
`index_map`: out index -> operand index, on ints, tensors and symbolic indices alike.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..core import EXTERN, VIEW, Primitive, bind
from ..core.trace import type_of
from .creation import instantiate
from .define import deflinear, is_undefined
from .series import taylor_linear


# ---------------------------------------------------------------- broadcast_in_dim

def _broadcast_in_dim_type(t, *, shape, broadcast_dimensions):
    if len(broadcast_dimensions) != t.ndim:
        raise TypeError(f"broadcast_in_dim: operand rank {t.ndim} != len(broadcast_dimensions) "
                        f"{len(broadcast_dimensions)}")
    if any(b <= a for a, b in zip(broadcast_dimensions, broadcast_dimensions[1:])):
        raise TypeError(f"broadcast_in_dim: broadcast_dimensions {broadcast_dimensions} must increase")
    for i, d in enumerate(broadcast_dimensions):
        if t.shape[i] not in (1, shape[d]):
            raise TypeError(f"broadcast_in_dim: operand dim {i} of size {t.shape[i]} can't broadcast "
                            f"to size {shape[d]}")
    return t.with_shape(shape)


def _broadcast_view(in_shape, shape, broadcast_dimensions):
    """The operand's shape with ones inserted at the new dims (what `expand` needs)."""
    view = [1] * len(shape)
    for i, d in enumerate(broadcast_dimensions):
        view[d] = in_shape[i]
    return tuple(view)


def _broadcast_in_dim_transpose(ct, x, *, shape, broadcast_dimensions):
    from .reduce import reduce_sum   # reduce.py builds on this module; the two are mutual transposes
    in_shape = x.aval.shape
    new_dims = [d for d in range(len(shape)) if d not in broadcast_dimensions]
    expanded = [d for i, d in enumerate(broadcast_dimensions) if in_shape[i] == 1 and shape[d] != 1]
    summed = reduce_sum(ct, tuple(sorted(new_dims + expanded)))
    return [reshape(summed, in_shape)]


def _broadcast_in_dim_batch(axis, args, dims, *, shape, broadcast_dimensions):
    (x,), (d,) = args, dims
    x = moveaxis(x, d, 0)
    return broadcast_in_dim(x, (axis.size,) + tuple(shape),
                            (0,) + tuple(b + 1 for b in broadcast_dimensions)), 0


def _broadcast_in_dim_emit(eqn, srcs):
    x = eqn.inputs[0]
    view = _broadcast_view(x.type.shape, eqn.params["shape"], eqn.params["broadcast_dimensions"])
    src = srcs[0] if view == tuple(x.type.shape) else f"{srcs[0]}.reshape({view!r})"
    if view != tuple(eqn.params["shape"]):
        # a permuted source (a transpose's view) would make the expanded operand's strides
        # decide the layout of the elementwise results that read it (torch follows operand
        # strides): copy the small source to row-major order first (free when it is already)
        src = f"{src}.contiguous()"
    return f"{src}.expand({tuple(eqn.params['shape'])!r})"


broadcast_in_dim_p = Primitive(
    "broadcast_in_dim", kind=VIEW,
    abstract_eval=_broadcast_in_dim_type,
    impl=lambda x, *, shape, broadcast_dimensions: x.reshape(
        _broadcast_view(x.shape, shape, broadcast_dimensions)).expand(shape),
    batch=_broadcast_in_dim_batch,
    emit=_broadcast_in_dim_emit,
    index_map=lambda idx, in_shape, *, shape, broadcast_dimensions: [
        0 if n == 1 else idx[d] for n, d in zip(in_shape, broadcast_dimensions)])
deflinear(broadcast_in_dim_p, _broadcast_in_dim_transpose)


def broadcast_in_dim(x, shape, broadcast_dimensions):
    shape = tuple(shape)
    old = type_of(x).shape
    if len(old) == len(shape) and tuple(broadcast_dimensions) == tuple(range(len(shape))) and old == shape:
        return x
    return bind(broadcast_in_dim_p, (x,), {"shape": shape, "broadcast_dimensions": tuple(broadcast_dimensions)})


def broadcast_to(x, shape):
    """numpy-style broadcast (trailing dims aligned)."""
    t = type_of(x)
    shape = tuple(shape)
    if len(t.shape) == len(shape) and t.shape == shape:
        return x
    lead = len(shape) - t.ndim
    return broadcast_in_dim(x, shape, tuple(range(lead, len(shape))))


# ---------------------------------------------------------------- reshape

def _reshape_type(t, *, shape):
    if math.prod(shape) != t.numel:
        raise TypeError(f"reshape: can't reshape {t} to {list(shape)}")
    return t.with_shape(shape)


def _reshape_index_map(idx, in_shape, *, shape):
    flat, stride = 0, 1
    for i, n in zip(reversed(idx), reversed(shape)):
        flat, stride = flat + i * stride, stride * n
    out, stride = [], 1
    for n in reversed(in_shape):
        out.append((flat // stride) % n)
        stride *= n
    return out[::-1]


reshape_p = Primitive(
    "reshape", kind=VIEW,
    abstract_eval=_reshape_type,
    impl=lambda x, *, shape: x.reshape(shape),
    batch=lambda axis, args, dims, *, shape: (
        reshape(moveaxis(args[0], dims[0], 0), (axis.size,) + tuple(shape)), 0),
    emit=lambda eqn, srcs: f"{srcs[0]}.reshape({eqn.params['shape']!r})",
    index_map=_reshape_index_map)
deflinear(reshape_p, lambda ct, x, *, shape: [reshape(ct, x.aval.shape)])


def reshape(x, shape):
    shape = tuple(shape)
    old = type_of(x).shape
    if len(old) == len(shape) and old == shape:
        return x
    return bind(reshape_p, (x,), {"shape": shape})


# ---------------------------------------------------------------- transpose (permute)

def _transpose_type(t, *, permutation):
    if sorted(permutation) != list(range(t.ndim)):
        raise TypeError(f"transpose: {permutation} is not a permutation of {t.ndim} dims")
    return t.with_shape(tuple(t.shape[p] for p in permutation))


def inverse_permutation(perm):
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def permute_steps(perm):
    """Layout steps for permuting a tensor: none, ("mT",) for a swap of the last two dims,
    else ("permute", perm). (Steps are what dot_general's matmul layout is made of.)"""
    if perm == tuple(range(len(perm))):
        return []
    n = len(perm)
    if n >= 2 and perm == tuple(range(n - 2)) + (n - 1, n - 2):
        return [("mT",)]
    return [("permute", perm)]


def render_steps(src, steps):
    """PyTorch source applying layout steps ("mT",) / ("permute", p) / ("reshape", s) to src."""
    for op, *arg in steps:
        src = f"{src}.mT" if op == "mT" else f"{src}.{op}({arg[0]!r})"
    return src


def permute_source(src, perm):
    """PyTorch source for permuting `src`: nothing, `.mT`, or `.permute(...)`."""
    return render_steps(src, permute_steps(perm))


transpose_p = Primitive(
    "transpose", kind=VIEW,
    abstract_eval=_transpose_type,
    impl=lambda x, *, permutation: x.permute(permutation),
    batch=lambda axis, args, dims, *, permutation: (
        transpose(args[0], (dims[0],) + tuple(p + (p >= dims[0]) for p in permutation)), 0),
    emit=lambda eqn, srcs: permute_source(srcs[0], tuple(eqn.params["permutation"])),
    index_map=lambda idx, in_shape, *, permutation: [
        idx[permutation.index(d)] for d in range(len(in_shape))])
deflinear(transpose_p, lambda ct, x, *, permutation: [transpose(ct, inverse_permutation(permutation))])


def transpose(x, permutation):
    permutation = tuple(permutation)
    if permutation == tuple(range(len(permutation))):
        return x
    return bind(transpose_p, (x,), {"permutation": permutation})


def moveaxis(x, src: int, dst: int):
    if src == dst:
        return x
    nd = type_of(x).ndim
    perm = [i for i in range(nd) if i != src]
    perm.insert(dst, src)
    return transpose(x, tuple(perm))


def bdim_to_front(x, d, size: int):
    """Batched value with its batch dim first; unbatched values are broadcast."""
    if d is None:
        t = type_of(x)
        return broadcast_in_dim(x, (size,) + t.shape, tuple(range(1, t.ndim + 1)))
    return moveaxis(x, d, 0)


def aligned_batch(prim):
    """The batch rule of a primitive applied elementwise to operands of one shape: the
    primitive itself where their batch dims agree, else on all of them moved to the front."""
    def batch(axis_data, args, dims, **params):
        if all(d == dims[0] for d in dims):
            return prim.bind(*args, **params), dims[0]
        return prim.bind(*(bdim_to_front(a, d, axis_data.size) for a, d in zip(args, dims)), **params), 0
    return batch


# ---------------------------------------------------------------- slice

def _slice_type(t, *, start, limit, strides):
    shape = []
    for d, (s, l, st) in enumerate(zip(start, limit, strides)):
        if not (0 <= s <= l <= t.shape[d]) or st < 1:
            raise TypeError(f"slice: bad bounds start={start} limit={limit} strides={strides} for {t}")
        shape.append(max(0, -(-(l - s) // st)))
    return t.with_shape(shape)


def _slice_emit(eqn, srcs):
    p = eqn.params
    if not p["start"]:
        return srcs[0]
    idx = ", ".join(f"{s}:{l}" + (f":{st}" if st != 1 else "") for s, l, st in
                    zip(p["start"], p["limit"], p["strides"]))
    return f"{srcs[0]}[{idx}]"


def _slice_transpose(ct, x, *, start, limit, strides):
    in_shape = x.aval.shape
    ct_shape = type_of(ct).shape
    config = []
    for s, n, size, st in zip(start, ct_shape, in_shape, strides):
        real_limit = s + (0 if n == 0 else 1 + (n - 1) * st)
        config.append((s, size - real_limit, st - 1))
    return [pad(ct, tuple(config), 0)]


def _slice_batch(axis, args, dims, *, start, limit, strides):
    (x,), (d,) = args, dims
    size = type_of(x).shape[d]
    return slice_(x, start[:d] + (0,) + start[d:], limit[:d] + (size,) + limit[d:],
                  strides[:d] + (1,) + strides[d:]), d


slice_p = Primitive(
    "slice", kind=VIEW,
    abstract_eval=_slice_type,
    impl=lambda x, *, start, limit, strides: x[tuple(slice(s, l, st) for s, l, st in zip(start, limit, strides))],
    batch=_slice_batch,
    emit=_slice_emit,
    index_map=lambda idx, in_shape, *, start, limit, strides: [
        s + i * st for i, s, st in zip(idx, start, strides)])
deflinear(slice_p, _slice_transpose)


def slice_(x, start, limit, strides=None):
    t = type_of(x)
    start, limit = tuple(start), tuple(limit)
    strides = tuple(strides) if strides is not None else (1,) * t.ndim
    if start == (0,) * t.ndim and limit == t.shape and strides == (1,) * t.ndim:
        return x
    return bind(slice_p, (x,), {"start": start, "limit": limit, "strides": strides})


def slice_in_dim(x, start, limit, stride=1, axis=0):
    t = type_of(x)
    starts = [0] * t.ndim
    limits = list(t.shape)
    strides = [1] * t.ndim
    starts[axis], limits[axis], strides[axis] = start, limit, stride
    return slice_(x, starts, limits, strides)


# ---------------------------------------------------------------- pad (lo, hi, interior; negative crops)

def _pad_type(t, *, config, value):
    shape = []
    for size, (lo, hi, interior) in zip(t.shape, config):
        if interior < 0:
            raise TypeError("pad: interior padding must be >= 0")
        n = lo + hi + size + max(0, size - 1) * interior
        if n < 0:
            raise TypeError(f"pad: negative output size for {t} with {config}")
        shape.append(n)
    return t.with_shape(shape)


def _pad_impl(x, *, config, value):
    lo, hi, interior = zip(*config) if config else ((), (), ())
    if any(interior):
        dilated = [s + max(0, s - 1) * i for s, i in zip(x.shape, interior)]
        out = x.new_full(dilated, value)
        out[tuple(slice(None, None, i + 1) for i in interior)] = x
        x = out
    # Pad first, then crop: a negative hi (lo) may crop into the lo (hi) padding (XLA's pad).
    if any(l > 0 or h > 0 for l, h in zip(lo, hi)):
        flat = []
        for l, h in reversed(list(zip(lo, hi))):
            flat += [max(l, 0), max(h, 0)]
        if x.dtype == torch.bool:
            x = F.pad(x.to(torch.uint8), flat, value=int(value)).to(torch.bool)
        else:
            x = F.pad(x, flat, value=value)
    if any(l < 0 or h < 0 for l, h in zip(lo, hi)):
        x = x[tuple(slice(max(-l, 0), x.shape[k] - max(-h, 0)) for k, (l, h) in enumerate(zip(lo, hi)))]
    return x


def _pad_transpose(ct, x, *, config, value):
    unpad = tuple((-lo, -hi, 0) for lo, hi, _ in config)
    unpadded = pad(ct, unpad, 0)
    t = type_of(unpadded)
    return [slice_(unpadded, (0,) * t.ndim, t.shape, tuple(i + 1 for _, _, i in config))]


def _pad_batch(axis, args, dims, *, config, value):
    (x,), (d,) = args, dims
    return pad(x, config[:d] + ((0, 0, 0),) + config[d:], value), d


# The padding value is a parameter, so pad is affine, not linear: its jvp pads with zeros.
pad_p = Primitive(
    "pad", kind=EXTERN,
    abstract_eval=_pad_type,
    impl=_pad_impl,
    jvp=lambda primals, tangents, *, config, value: (pad(primals[0], config, value),
                                                     pad(tangents[0], config, 0)),
    transpose=_pad_transpose,
    batch=_pad_batch)


pad_p.taylor = lambda primals, series, *, config, value: (
    pad(primals[0], config, value), [None if c is None else pad(c, config, 0) for c in series[0]])


def pad(x, config, value=0):
    config = tuple(tuple(c) for c in config)
    if all(c == (0, 0, 0) for c in config):
        return x
    return bind(pad_p, (x,), {"config": config, "value": value})


# ---------------------------------------------------------------- concatenate

def _concatenate_type(*ts, axis):
    t0 = ts[0]
    for t in ts[1:]:
        if t.ndim != t0.ndim or t.dtype != t0.dtype or any(
                a != b for i, (a, b) in enumerate(zip(t.shape, t0.shape)) if i != axis):
            raise TypeError(f"concatenate: incompatible operands {ts} along axis {axis}")
    shape = list(t0.shape)
    shape[axis] = sum(t.shape[axis] for t in ts)
    return t0.with_shape(shape)


def _concatenate_transpose(ct, *xs, axis):
    outs, offset = [], 0
    for x in xs:
        n = x.aval.shape[axis] if is_undefined(x) else type_of(x).shape[axis]
        outs.append(slice_in_dim(ct, offset, offset + n, 1, axis) if is_undefined(x) else None)
        offset += n
    return outs


concatenate_p = Primitive(
    "concatenate", kind=EXTERN,
    abstract_eval=_concatenate_type,
    impl=lambda *xs, axis: torch.cat(xs, axis),
    jvp=lambda primals, tangents, *, axis: (concatenate(primals, axis),
                                            concatenate([instantiate(t) for t in tangents], axis)),
    transpose=_concatenate_transpose,
    # (the AxisData argument is not called `axis`: that is concatenate's own parameter)
    batch=lambda axis_data, args, dims, *, axis: (
        concatenate([bdim_to_front(a, d, axis_data.size) for a, d in zip(args, dims)], axis + 1), 0),
    emit=lambda eqn, srcs: f"torch.cat([{', '.join(srcs)}], {eqn.params['axis']})")
taylor_linear(concatenate_p)


def concatenate(xs, axis):
    xs = list(xs)
    if len(xs) == 1:
        return xs[0]
    return bind(concatenate_p, tuple(xs), {"axis": axis})


# ---------------------------------------------------------------- rev (flip)

rev_p = Primitive(
    "rev", kind=VIEW,
    abstract_eval=lambda t, *, dims: t,
    impl=lambda x, *, dims: torch.flip(x, dims),
    batch=lambda axis, args, dims_, *, dims: (rev(args[0], tuple(d + (d >= dims_[0]) for d in dims)), dims_[0]),
    emit=lambda eqn, srcs: f"torch.flip({srcs[0]}, {eqn.params['dims']!r})",
    index_map=lambda idx, in_shape, *, dims: [
        (n - 1) - i if d in dims else i for d, (i, n) in enumerate(zip(idx, in_shape))])
deflinear(rev_p, lambda ct, x, *, dims: [rev(ct, dims)])


def rev(x, dims):
    dims = tuple(dims)
    if not dims:
        return x
    return bind(rev_p, (x,), {"dims": dims})
