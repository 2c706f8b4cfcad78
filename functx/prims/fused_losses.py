"""binary_cross_entropy, huber_loss and smooth_l1_loss on eager levels (the last two at the
end of this module). binary_cross_entropy: torch's kernel for the value and its backward kernel
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


def _reduced(v, reduction, first=0):
    """An elementwise loss reduced over its dims from `first` on (1: each example's, vmap)."""
    if reduction == NLL_NONE:
        return v
    shape = type_of(v).shape
    total = reduce_sum(v, tuple(range(first, len(shape))))
    return ew.div(total, float(math.prod(shape[first:]))) if reduction == NLL_MEAN else total


def _fusable(x, t):
    """Operands the kernels take: float32/64 of one type, not empty, on a trace binding fused
    primitives."""
    tx = type_of(x)
    return tx.dtype in _FUSED_DTYPES and type_of(t) == tx and fused_here() and tx.shape and all(tx.shape)


def binary_cross_entropy(x, t, reduction):
    """F.binary_cross_entropy without weights of float x and t of one shape and dtype."""
    if _fusable(x, t):
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


def _per_example_batch(prim):
    """The batch rule of a loss of two operands of one shape: every example's elements at
    once, unreduced, then each example's reduction."""
    def batch(axis_data, args, dims, *, reduction, **params):
        x, y = (sh.bdim_to_front(a, d, axis_data.size) for a, d in zip(args, dims))
        return _reduced(prim.bind(x, y, reduction=NLL_NONE, **params), reduction, first=1), 0
    return batch


bce_p = Primitive(
    "binary_cross_entropy", kind=EXTERN,
    abstract_eval=lambda x, t, *, reduction: TensorType(tuple(x.shape) if reduction == NLL_NONE else (), x.dtype,
                                                        x.device),
    impl=lambda x, t, *, reduction: _aten.binary_cross_entropy.default(x, t, None, reduction),
    jvp=_bce_jvp,
    composite=bce_decomposed)
bce_p.batch = _per_example_batch(bce_p)


# ---------------------------------------------------------------- the slope (x - t) / max(x (1 - x), eps)

def bce_slope_decomposed(x, t):
    return ew.div(ew.sub(x, t), ew.max_(ew.mul(x, ew.sub(1.0, x)), _BCE_EPS))


def _unit_cotangent(x):
    """A cotangent of ones like x (one element, expanded): a backward kernel given it returns
    the loss's slope per element."""
    return torch.ones((), dtype=x.dtype, device=x.device).expand(x.shape)


def _slope_impl(x, t):
    return _aten.binary_cross_entropy_backward.default(_unit_cotangent(x), x, t, None, NLL_NONE)


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


bce_slope_p = Primitive(
    "bce_slope", kind=EXTERN,
    abstract_eval=lambda x, t: TensorType(x.shape, x.dtype, x.device),
    impl=_slope_impl,
    jvp=_slope_jvp,
    composite=bce_slope_decomposed)
bce_slope_p.batch = sh.aligned_batch(bce_slope_p)


# ---------------------------------------------------------------- huber_loss, smooth_l1_loss
# torch's kernel for the value and its backward kernel (a ones cotangent) for the slope per
# element, d loss / dx = -d loss / dy: huber's clamp(d, -delta, delta), smooth_l1's d / beta
# inside (-beta, beta) and sign(d) outside; the slope's derivative is torch's double
# backward's: 1 for |d| <= delta (huber), 1 / beta for |d| < beta (smooth_l1).

class _RegressionLoss:
    def __init__(self, name, param, elementwise, slope, curvature):
        self.param, self.elementwise, self.slope_of, self.curvature = param, elementwise, slope, curvature
        fwd, bwd = getattr(_aten, name).default, getattr(_aten, name + "_backward").default
        self.p = Primitive(
            name, kind=EXTERN,
            abstract_eval=lambda x, y, *, reduction, **k: TensorType(tuple(x.shape) if reduction == NLL_NONE else (),
                                                                     x.dtype, x.device),
            impl=lambda x, y, *, reduction, **k: fwd(x, y, reduction, k[param]),
            jvp=self._jvp,
            composite=lambda x, y, *, reduction, **k: _reduced(elementwise(ew.sub(x, y), k[param]), reduction))
        self.p.batch = _per_example_batch(self.p)

        def slope_impl(x, y, **k):
            return bwd(_unit_cotangent(x), x, y, NLL_NONE, k[param])
        self.slope_p = Primitive(
            name + "_slope", kind=EXTERN,
            abstract_eval=lambda x, y, **k: TensorType(x.shape, x.dtype, x.device),
            impl=slope_impl,
            jvp=self._slope_jvp,
            composite=lambda x, y, **k: slope(ew.sub(x, y), k[param]))
        self.slope_p.batch = sh.aligned_batch(self.slope_p)

    def __call__(self, x, y, reduction, value):
        if _fusable(x, y):
            return bind(self.p, (x, y), {"reduction": reduction, self.param: float(value)})
        return _reduced(self.elementwise(ew.sub(x, y), float(value)), reduction)

    @staticmethod
    def _difference(dx, dy):
        """dx - dy, None where both are Zero."""
        if isinstance(dy, Zero):
            return None if isinstance(dx, Zero) else dx
        return ew.neg(dy) if isinstance(dx, Zero) else ew.sub(dx, dy)

    def _jvp(self, primals, tangents, *, reduction, **k):
        out = self.p.bind(*primals, reduction=reduction, **k)
        dd = self._difference(*tangents)
        if dd is None:
            return out, Zero(type_of(out))
        return out, _reduced(ew.mul(dd, self.slope_p.bind(*primals, **k)), reduction)

    def _slope_jvp(self, primals, tangents, **k):
        out = self.slope_p.bind(*primals, **k)
        dd = self._difference(*tangents)
        if dd is None:
            return out, Zero(type_of(out))
        return out, ew.mul(dd, self.curvature(ew.sub(*primals), k[self.param]))


def _huber(d, delta):
    """0.5 d^2 for |d| <= delta (at delta both branches round alike), delta (|d| - delta / 2)
    beyond."""
    z = ew.abs_(d)
    return ew.where(ew.le(z, delta), ew.mul(ew.mul(d, d), 0.5), ew.mul(ew.sub(z, 0.5 * delta), delta))


def _huber_slope(d, delta):
    return ew.where(ew.le(ew.abs_(d), delta), d, ew.mul(ew.sign(d), delta))


def _huber_curvature(d, delta):
    return ew.convert(ew.le(ew.abs_(d), delta), type_of(d).dtype)


def _smooth_l1(d, beta):
    """|d| for beta == 0 (the L1 loss), else 0.5 d^2 / beta inside (-beta, beta), |d| - beta / 2
    outside."""
    z = ew.abs_(d)
    if beta == 0:
        return z
    return ew.where(ew.lt(z, beta), ew.div(ew.mul(ew.mul(d, d), 0.5), beta), ew.sub(z, 0.5 * beta))


def _smooth_l1_slope(d, beta):
    if beta == 0:
        return ew.sign(d)
    return ew.where(ew.lt(ew.abs_(d), beta), ew.div(d, beta), ew.sign(d))


def _smooth_l1_curvature(d, beta):
    if beta == 0:
        return ew.mul(d, 0.0)
    return ew.div(ew.convert(ew.lt(ew.abs_(d), beta), type_of(d).dtype), beta)


huber_loss = _RegressionLoss("huber_loss", "delta", _huber, _huber_slope, _huber_curvature)
smooth_l1_loss = _RegressionLoss("smooth_l1_loss", "beta", _smooth_l1, _smooth_l1_slope, _smooth_l1_curvature)
