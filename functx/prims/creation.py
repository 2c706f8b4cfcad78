"""Nullary primitives: constants (`full`) and index ramps (`iota`), and the zeros built on
them. They take no operands, so they have no derivative or batching work; the fusion
compiler folds them into every kernel that reads them.
"""
from __future__ import annotations

import math

import torch

from ..core import POINTWISE, Primitive, TensorType, Zero, bind
from ..core.trace import type_of


def value_source(value) -> str:
    """Source for a Python scalar; inf and nan have no literal spelling."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    return repr(value)


full_p = Primitive(
    "full", kind=POINTWISE,
    abstract_eval=lambda *, shape, value, dtype, device: TensorType(tuple(shape), dtype, device),
    impl=lambda *, shape, value, dtype, device: torch.full(shape, value, dtype=dtype, device=device),
    emit=lambda eqn, srcs: (f"torch.full({eqn.params['shape']!r}, {value_source(eqn.params['value'])}, "
                            f"dtype={eqn.params['dtype']}, device={str(eqn.params['device'])!r})"),
    triton="{value!r}")


def full(shape, value, dtype, device):
    return bind(full_p, (), {"shape": tuple(shape), "value": value, "dtype": dtype,
                             "device": torch.device(device)})


def _iota_impl(*, shape, dim, dtype, device):
    r = torch.arange(shape[dim], dtype=dtype, device=device)
    view = [1] * len(shape)
    view[dim] = shape[dim]
    return r.reshape(view).expand(shape)


# Kernels read an iota as its index along `dim` (no Triton template needed).
iota_p = Primitive(
    "iota", kind=POINTWISE,
    abstract_eval=lambda *, shape, dim, dtype, device: TensorType(tuple(shape), dtype, device),
    impl=_iota_impl)


def iota(shape, dim, dtype, device):
    return bind(iota_p, (), {"shape": tuple(shape), "dim": dim, "dtype": dtype,
                             "device": torch.device(device)})


def zeros_like_type(t):
    return full(t.shape, 0, t.dtype, t.device)


def zeros_like(x):
    return zeros_like_type(type_of(x))


def instantiate(t):
    """Turn a symbolic Zero into a real zero tensor."""
    return zeros_like_type(t.aval) if isinstance(t, Zero) else t
