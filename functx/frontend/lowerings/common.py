"""Helpers the lowering families share: types, dim normalization, keepdim, and running an
op through the opaque fallback from inside a lowering."""
from __future__ import annotations

import torch

from torch.utils._pytree import tree_map

from ...core.trace import type_of
from ... import prims as P
from ..fallback import opaque_fallback
from ..functionalize import unwrap
from ..promote import SCALARS
from ..tensor import wrap

aten = torch.ops.aten


def _t(x):
    return type_of(x)


def wrap_dim(dim, ndim):
    """torch's maybe_wrap_dim: dim in [-ndim, ndim) (a 0-d tensor takes -1 and 0) as a
    non-negative int, or torch's IndexError (never a silent wrap-around)."""
    n = max(ndim, 1)
    if not -n <= dim < n:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {dim})")
    return dim % n


def _dims(dim, ndim):
    """Normalize a dim / list of dims (None or [] = all) to sorted non-negative ints."""
    if dim is None:
        return tuple(range(ndim))
    if isinstance(dim, int):
        dim = [dim]
    if len(dim) == 0:
        return tuple(range(ndim))
    dims = [wrap_dim(d, ndim) for d in dim]
    for k, d in enumerate(dims):
        if d in dims[:k]:
            raise RuntimeError(f"dim {d} appears multiple times in the list of dims")
    return tuple(sorted(dims))


def _keep(out, in_shape, axes, keepdim):
    if not keepdim:
        return out
    return P.reshape(out, tuple(1 if i in axes else s for i, s in enumerate(in_shape)))


def _as_bool(x):
    if isinstance(x, SCALARS):
        return bool(x)
    return x if _t(x).dtype is torch.bool else P.ne(x, 0)


def _zeros(t, dtype=None):
    return P.full(t.shape, 0, dtype or t.dtype, t.device)


def _opaque(func, *args, **kwargs):
    """Run `func` through the opaque fallback from inside a lowering (for the cases a native
    lowering does not cover): correct under every transform, and reported by explain."""
    out = opaque_fallback(func, tree_map(wrap, args), tree_map(wrap, kwargs))
    return tree_map(unwrap, out)
