"""Plain-Python helpers shared by primitive rules: scalar checks, type checks, axis
arithmetic, static broadcasting. (Helpers that bind primitives live with those primitives:
zeros in creation.py, batching moves in shape.py.)"""
from __future__ import annotations

import functools

import torch

SCALAR_TYPES = (bool, int, float, complex, torch.SymInt, torch.SymFloat, torch.SymBool)


def is_scalar(x) -> bool:
    return isinstance(x, SCALAR_TYPES)


def shift_axes_for_bdim(axes, bdim):
    """Axes of the per-example value, renumbered for a value with a batch dim at `bdim`."""
    return tuple(a + (a >= bdim) for a in axes)


def same_type_check(name, types):
    t0 = None
    for t in types:         # one loop, no helper calls: every recorded elementwise op runs this
        if isinstance(t, SCALAR_TYPES):
            continue
        if t0 is None:
            t0 = t
            continue
        if t.shape != t0.shape:
            raise TypeError(f"{name}: operand shapes differ: {t0.shape} vs {t.shape} "
                            "(primitives do not broadcast; broadcast_in_dim first)")
        if t.dtype != t0.dtype:
            raise TypeError(f"{name}: operand dtypes differ: {t0.dtype} vs {t.dtype} "
                            "(primitives do not promote; convert_element_type first)")
    if t0 is None:
        raise TypeError(f"{name}: needs at least one tensor operand")
    return t0


def cached_unless_symbolic(maxsize=4096):
    """functools.lru_cache for a function of static facts (shapes, types, dimension numbers),
    computed uncached when an argument holds a symbolic size (SymInt, under jit's symbolic
    trace): SymInts are not hashable, and each size comparison must record its guard."""
    def wrap(f):
        cached = functools.lru_cache(maxsize=maxsize)(f)

        @functools.wraps(f)
        def call(*args):
            try:
                return cached(*args)
            except TypeError:
                try:
                    hash(args)
                except TypeError:
                    return f(*args)
                raise
        call.cache_clear = cached.cache_clear
        return call
    return wrap


@cached_unless_symbolic()
def static_broadcast_shapes(shapes: tuple) -> tuple:
    """torch.broadcast_shapes for a tuple of shapes. (torch's goes through symbolic-shape
    machinery: ~100 us a call, and its first call imports sympy, ~0.8 s.)"""
    return _broadcast_shapes(shapes)


def _broadcast_shapes(shapes: tuple) -> tuple:
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
