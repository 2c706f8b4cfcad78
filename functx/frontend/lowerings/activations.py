"""Activations with parameters as torch's kernels on eager levels (prims/fused_activations.py:
softplus, the elu family, leaky_relu, hardswish, hardsigmoid); elsewhere, and for log_ndtr and
log_sigmoid, decompositions whose torch counterparts select with where() between a safe value
and a branch that overflows (softplus's log1p(exp(x)), the elu family's expm1(x) for large x). torch's own
backward formulas never differentiate the unselected branch; differentiating the
decomposition does, and 0 * inf gives NaN gradients (JAX's "double where" trap). Here the
unselected branch sees a harmless input instead, so values and derivatives of every order
are torch's. Native lowerings also skip torch's type promotion, which imports sympy (1.5 s
of a first jit call)."""
from __future__ import annotations

import torch

from ... import prims as P
from ...prims.fused_activations import elu, hardsigmoid, hardswish, leaky_relu, log_sigmoid, softplus
from ..promote import float_dtype_of
from .common import _t, aten
from .registry import register

_HALF = (torch.float16, torch.bfloat16)
_SQRT1_2 = 0.7071067811865476


def _compute(x):
    """x in the dtype torch computes the activation in (float32 for half inputs), and the
    dtype of the result."""
    dtype = float_dtype_of(x)
    return P.convert(x, torch.float32 if dtype in _HALF else dtype), dtype


def _float_input(op, x, *args):
    """torch's own error for a non-float input (its kernels have none), raised by the op on an
    empty tensor of x's dtype; x in the dtype torch computes in, and the result's dtype."""
    if not _t(x).dtype.is_floating_point:
        op(torch.empty(0, dtype=_t(x).dtype), *args)
    return _compute(x)


@register(aten.softplus.default)
def _softplus(x, beta=1, threshold=20):
    """torch's kernels on eager levels, else x where beta * x > threshold (torch's linear
    region), log1p(exp(beta x)) / beta elsewhere (prims/fused_activations.py)."""
    x, dtype = _float_input(aten.softplus.default, x, beta, threshold)
    return P.convert(softplus(x, beta=beta, threshold=threshold), dtype)


@register(aten.elu.default)
def _elu(x, alpha=1, scale=1, input_scale=1):
    """scale * x for x > 0, scale * alpha * expm1(input_scale * x) for x < 0; at 0 torch's
    first derivative takes the negative branch and its second the positive one (0)."""
    x, dtype = _float_input(aten.elu.default, x, alpha, scale, input_scale)
    return P.convert(elu(x, alpha=alpha, scale=scale, input_scale=input_scale), dtype)


@register(aten.leaky_relu.default)
def _leaky_relu(x, negative_slope=0.01):
    x, dtype = _float_input(aten.leaky_relu.default, x, negative_slope)
    return P.convert(leaky_relu(x, negative_slope=negative_slope), dtype)


@register(aten.hardswish.default)
def _hardswish(x):
    """torch's hardswish_backward's derivative: -0.5 at -3 and 1.5 at 3 (its closed interval)."""
    x, dtype = _float_input(aten.hardswish.default, x)
    return P.convert(hardswish(x), dtype)


@register(aten.hardsigmoid.default)
def _hardsigmoid(x):
    """Derivative 1/6 strictly inside (-3, 3), 0 at the ends (torch's)."""
    x, dtype = _float_input(aten.hardsigmoid.default, x)
    return P.convert(hardsigmoid(x), dtype)


@register(aten.selu.default)
def _selu(x):
    return _elu(x, 1.6732632423543772848170429916717, 1.0507009873554804934193349852946)


@register(aten.celu.default)
def _celu(x, alpha=1.0):
    return _elu(x, alpha, 1.0, 1.0 / alpha)        # ATen's celu is this elu


@register(aten.special_log_ndtr.default)
def _log_ndtr(x):
    """log Phi(x): log(erfcx(-x/sqrt 2) / 2) - x^2/2 below 1, log1p(-erfc(x/sqrt 2) / 2) above
    (torch's split); each branch sees an input where it is finite."""
    x, dtype = _compute(x)
    low = P.lt(x, 1.0)
    t_low = P.mul(P.where(low, x, 0.0), _SQRT1_2)
    t_high = P.mul(P.where(low, 1.0, x), _SQRT1_2)
    below = P.sub(P.log(P.mul(P.erfcx(P.neg(t_low)), 0.5)), P.mul(t_low, t_low))
    above = P.log1p(P.mul(P.erfc(t_high), -0.5))
    return P.convert(P.where(low, below, above), dtype)


@register(aten.log_sigmoid_forward.default)
def _log_sigmoid(x):
    """F.logsigmoid (and Bernoulli(logits=)): torch's kernel on eager levels, else its smooth
    form per sign (prims/fused_activations.log_sigmoid_decomposed: torch's decomposition
    min(x, 0) - log1p(exp(-|x|)) has Hessian 0 at x = 0, where it is -1/4). The buffer is
    torch's (exp(-|x|) on the CPU, empty on CUDA), which only its backward kernel reads."""
    x, dtype = _float_input(aten.log_sigmoid_forward.default, x)
    out, buffer = log_sigmoid(x)
    return P.convert(out, dtype), P.convert(buffer, dtype)
