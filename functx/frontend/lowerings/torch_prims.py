"""Lowerings for the torch.ops.prims ops that torch._refs decompositions emit (a
decomposition reaching an unmapped prims op falls back to the op it decomposes).
prims.hypot shares aten.hypot's lowering in nn.py."""
from __future__ import annotations

import math

import torch

from ... import prims as P
from ..promote import elementwise, result_type
from . import elementwise as _aten_elementwise  # noqa: F401  (registers the aten lowerings reused below)
from .common import _t, aten, wrap_dim
from .registry import LOWERINGS, register

prims_ns = torch.ops.prims


@register(prims_ns.broadcast_in_dim.default)
def _prims_broadcast_in_dim(x, shape, broadcast_dimensions):
    return P.broadcast_in_dim(x, tuple(shape), tuple(broadcast_dimensions))


@register(prims_ns.convert_element_type.default)
def _prims_convert(x, dtype):
    return P.convert(x, dtype)


@register(prims_ns.sum.default)
def _prims_sum(x, dims, output_dtype=None):
    x = P.convert(x, output_dtype) if output_dtype is not None else x
    return P.reduce_sum(x, tuple(sorted(wrap_dim(d, _t(x).ndim) for d in dims)))


@register(prims_ns.var.default)
def _prims_var(x, dims, correction=1, output_dtype=None):
    t = _t(x)
    axes = tuple(sorted(wrap_dim(d, t.ndim) for d in dims))
    n = math.prod(t.shape[a] for a in axes)
    mean = P.div(P.reduce_sum(x, axes), torch.sym_float(n))
    kept = tuple(i for i in range(t.ndim) if i not in axes)
    centered = P.sub(x, P.broadcast_in_dim(mean, t.shape, kept))
    d = torch.sym_max(n - correction, 0)
    if type(d) is int and d > 0:
        # sum((c / sqrt(d))^2): no term exceeds the result, so squares of values above ~1e19
        # (float32) do not overflow where the variance itself is finite (torch accumulates in
        # float64: var of 1e19-sized data was inf here, finite in eager)
        scaled = P.mul(centered, 1.0 / math.sqrt(d))
        return P.reduce_sum(P.mul(scaled, scaled), axes)
    return P.div(P.reduce_sum(P.mul(centered, centered), axes), torch.sym_float(d))


@register(prims_ns.div.default)
def _prims_div(x, y):
    dtype = result_type(x, y)
    if dtype.is_floating_point or dtype.is_complex:
        return elementwise(P.div, x, y)
    return elementwise(lambda a, b: P.idiv(a, b, "trunc"), x, y)


for _name in ("add", "sub", "mul", "neg", "exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "abs",
              "eq", "ne", "lt", "le", "gt", "ge", "where", "maximum", "minimum", "pow", "sigmoid"):
    _prim_op = getattr(prims_ns, _name, None)
    _aten_op = getattr(aten, _name)
    if _prim_op is not None:
        _lowering = LOWERINGS.get(getattr(_aten_op, "Tensor", None)) or LOWERINGS.get(
            getattr(_aten_op, "default", None)) or LOWERINGS.get(getattr(_aten_op, "self", None))
        if _lowering is not None:
            register(_prim_op.default)(_lowering)


@register(prims_ns.amax.default)
def _prims_amax(x, dims, output_dtype=None):
    return P.reduce_max(x, tuple(sorted(wrap_dim(d, _t(x).ndim) for d in dims)))


@register(prims_ns.amin.default)
def _prims_amin(x, dims, output_dtype=None):
    return P.reduce_min(x, tuple(sorted(wrap_dim(d, _t(x).ndim) for d in dims)))


@register(prims_ns.prod.default)
def _prims_prod(x, dims, output_dtype=None):
    x = P.convert(x, output_dtype) if output_dtype is not None else x
    return P.reduce_prod(x, tuple(sorted(wrap_dim(d, _t(x).ndim) for d in dims)))
