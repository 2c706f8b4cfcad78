"""binary_cross_entropy on eager levels: torch's kernel for the value and its backward kernel
for the slope, where the decomposition (frontend/lowerings/nn.py: clamped logs, an exact
region and torch's 1e-12 floor) with its two range checks ran ~130 kernels and two host
reads under grad (0.1x of torch.func's speed; the classic VAE's `F.binary_cross_entropy(
recon, x, reduction="sum")`).

    binary_cross_entropy(x, t, reduction) -> loss      (no class weights)
    bce_slope(x, t) = (x - t) / max(x (1 - x), 1e-12)   (d loss / dx per element, torch's)

The kernel checks that x and t are in [0, 1] and raises torch's error. The loss's tangent is
the reduction of tx * bce_slope(x, t) (a product and a sum: its transpose is one product,
the slope kept from the forward pass) plus, for a target that has a tangent, tt times the
clamped -logit(x) (torch's target derivative, finite at x = 0 and 1 as the decomposition's).
bce_slope's own derivatives are the exact ones where x (1 - x) >= 1e-12 ((x^2 - 2 x t + t) /
(x (1 - x))^2 in x, -1 / (x (1 - x)) in t) and those of (x - t) / 1e-12 below: the
decomposition's (torch's double backward adds 1e-12 to x and 1 - x; finite differences
decide). Staged graphs, weights and other dtypes keep the decomposition.
"""
from __future__ import annotations

import math

import torch

from ..core import EXTERN, Primitive, Zero, bind
from ..core.trace import type_of
from ..core.types import TensorType
from . import elementwise as ew
from . import shape as sh
from .fused import _FUSED_DTYPES, NLL_MEAN, NLL_NONE, fused_here
from .reduce import reduce_sum

_BCE_EPS = float(torch.tensor(1e-12, dtype=torch.float32))     # torch's EPSILON, a float
_aten = torch.ops.aten


def _exact(x):
    return ew.ge(ew.mul(x, ew.sub(1.0, x)), _BCE_EPS)


def bce_decomposed(x, t, *, reduction):
    """The decomposition: the exact formula where x (1 - x) >= 1e-12, else torch's clamped
    value plus a term that is zero in value and whose derivative in x is (x - t) / 1e-12."""
    sx = ew.stop_gradient(x)
    exact = _exact(sx)
    xa = ew.where(exact, x, 0.5)             # the unselected branch sees a harmless input
    inside = ew.sub(ew.mul(ew.sub(t, 1.0), ew.log1p(ew.neg(xa))), ew.mul(t, ew.log(xa)))
    clamped = ew.sub(ew.mul(ew.sub(t, 1.0), ew.max_(ew.log1p(ew.neg(sx)), -100.0)),
                     ew.mul(t, ew.max_(ew.log(sx), -100.0)))

    def q(v):                               # dq/dx = (x - t) / eps
        return ew.div(ew.sub(ew.div(ew.mul(v, v), 2.0), ew.mul(v, t)), _BCE_EPS)
    loss = ew.where(exact, inside, ew.sub(clamped, ew.sub(q(sx), q(x))))
    return _reduced(loss, reduction)


def _reduced(v, reduction):
    if reduction == NLL_NONE:
        return v
    shape = type_of(v).shape
    total = reduce_sum(v, tuple(range(len(shape))))
    return ew.div(total, float(math.prod(shape))) if reduction == NLL_MEAN else total


def binary_cross_entropy(x, t, reduction):
    """F.binary_cross_entropy without weights of float x and t of one shape and dtype."""
    tx, tt = type_of(x), type_of(t)
    if tx.dtype in _FUSED_DTYPES and tt == tx and fused_here() and tx.shape and all(tx.shape):
        return bind(bce_p, (x, t), {"reduction": reduction})
    return bce_decomposed(x, t, reduction=reduction)


def _target_slope(x):
    """d loss / dt per element: clamp(log(1 - x), -100) - clamp(log(x), -100)."""
    return ew.sub(ew.max_(ew.log1p(ew.neg(x)), -100.0), ew.max_(ew.log(x), -100.0))


def _bce_jvp(primals, tangents, *, reduction):
    (x, t), (dx, dt) = primals, tangents
    out = bce_p.bind(x, t, reduction=reduction)
    terms = []
    if not isinstance(dx, Zero):
        terms.append(ew.mul(dx, bce_slope_p.bind(x, t)))
    if not isinstance(dt, Zero):
        terms.append(ew.mul(dt, _target_slope(x)))
    if not terms:
        return out, Zero(type_of(out))
    return out, _reduced(terms[0] if len(terms) == 1 else ew.add(terms[0], terms[1]), reduction)


def _elementwise_pair(args, dims, size):
    return [sh.bdim_to_front(a, d, size) for a, d in zip(args, dims)]


def _bce_batch(axis_data, args, dims, *, reduction):
    """Every example's elements at once, unreduced, then each example's reduction."""
    x, t = _elementwise_pair(args, dims, axis_data.size)
    per = bce_p.bind(x, t, reduction=NLL_NONE)
    if reduction == NLL_NONE:
        return per, 0
    shape = type_of(per).shape
    total = reduce_sum(per, tuple(range(1, len(shape))))
    return (ew.div(total, float(math.prod(shape[1:]))) if reduction == NLL_MEAN else total), 0


bce_p = Primitive(
    "binary_cross_entropy", kind=EXTERN,
    abstract_eval=lambda x, t, *, reduction: TensorType(tuple(x.shape) if reduction == NLL_NONE else (), x.dtype,
                                                        x.device),
    impl=lambda x, t, *, reduction: _aten.binary_cross_entropy.default(x, t, None, reduction),
    jvp=_bce_jvp,
    batch=_bce_batch,
    composite=bce_decomposed)


# ---------------------------------------------------------------- the slope (x - t) / max(x (1 - x), eps)

def bce_slope_decomposed(x, t):
    return ew.div(ew.sub(x, t), ew.max_(ew.mul(x, ew.sub(1.0, x)), _BCE_EPS))


def _slope_impl(x, t):
    ones = torch.ones((), dtype=x.dtype, device=x.device).expand(x.shape)
    return _aten.binary_cross_entropy_backward.default(ones, x, t, None, NLL_NONE)


def _slope_jvp(primals, tangents):
    (x, t), (dx, dt) = primals, tangents
    out = bce_slope_p.bind(x, t)
    if isinstance(dx, Zero) and isinstance(dt, Zero):
        return out, Zero(type_of(out))
    exact = _exact(x)
    v = ew.where(exact, ew.mul(x, ew.sub(1.0, x)), 1.0)          # x (1 - x), where it is used
    terms = []
    if not isinstance(dx, Zero):
        num = ew.add(ew.sub(ew.mul(x, x), ew.mul(ew.mul(x, t), 2.0)), t)
        terms.append(ew.mul(dx, ew.where(exact, ew.div(num, ew.mul(v, v)), 1.0 / _BCE_EPS)))
    if not isinstance(dt, Zero):
        terms.append(ew.mul(dt, ew.where(exact, ew.neg(ew.div(1.0, v)), -1.0 / _BCE_EPS)))
    return out, terms[0] if len(terms) == 1 else ew.add(*terms)


def _slope_batch(axis_data, args, dims):
    if dims[0] == dims[1]:
        return bce_slope_p.bind(*args), dims[0]
    return bce_slope_p.bind(*_elementwise_pair(args, dims, axis_data.size)), 0


bce_slope_p = Primitive(
    "bce_slope", kind=EXTERN,
    abstract_eval=lambda x, t: TensorType(x.shape, x.dtype, x.device),
    impl=_slope_impl,
    jvp=_slope_jvp,
    batch=_slope_batch,
    composite=bce_slope_decomposed)
