"""Helpers shared by primitive rules: scalar checks, zeros, batching moves."""
from __future__ import annotations

import functools

from ..core.trace import Zero, type_of

SCALAR_TYPES = (bool, int, float, complex)


def is_scalar(x) -> bool:
    return isinstance(x, SCALAR_TYPES)


def zeros_like_type(t):
    from . import elementwise as ew
    return ew.full(t.shape, 0, t.dtype, t.device)


def instantiate(t):
    """Turn a symbolic Zero into a real zero tensor."""
    return zeros_like_type(t.aval) if isinstance(t, Zero) else t


def moveaxis(x, src: int, dst: int):
    from . import shape
    if src == dst:
        return x
    nd = type_of(x).ndim
    perm = [i for i in range(nd) if i != src]
    perm.insert(dst, src)
    return shape.transpose(x, tuple(perm))


def bdim_to_front(x, d, size: int):
    """Batched value with its batch dim first; unbatched values are broadcast."""
    from . import shape
    if d is None:
        t = type_of(x)
        return shape.broadcast_in_dim(x, (size,) + t.shape, tuple(range(1, t.ndim + 1)))
    return moveaxis(x, d, 0)


def shift_axes_for_bdim(axes, bdim):
    """Axes of the per-example value, renumbered for a value with a batch dim at `bdim`."""
    return tuple(a + (a >= bdim) for a in axes)


def same_type_check(name, types):
    tensors = [t for t in types if not is_scalar(t)]
    t0 = tensors[0]
    for t in tensors[1:]:
        if t.shape != t0.shape:
            raise TypeError(f"{name}: operand shapes differ: {t0.shape} vs {t.shape} "
                            "(primitives do not broadcast; broadcast_in_dim first)")
        if t.dtype != t0.dtype:
            raise TypeError(f"{name}: operand dtypes differ: {t0.dtype} vs {t.dtype} "
                            "(primitives do not promote; convert_element_type first)")
    return t0


@functools.lru_cache(maxsize=4096)
def static_broadcast_shapes(shapes: tuple) -> tuple:
    """torch.broadcast_shapes for a tuple of static shapes, cached. (torch's goes through
    symbolic-shape machinery: ~100 us a call, and its first call imports sympy, ~0.8 s.)"""
    ndim = max(len(s) for s in shapes)
    out = [1] * ndim
    for s in shapes:
        for i, d in enumerate(s, ndim - len(s)):
            if d != 1:
                if out[i] != 1 and out[i] != d:
                    raise RuntimeError(f"The size of tensor a ({out[i]}) must match the size of tensor b "
                                       f"({d}) at non-singleton dimension {i}")
                out[i] = d
    return tuple(out)
