"""Fused activations of eager transforms with parameters: leaky_relu, hardtanh (relu6),
hardswish, hardsigmoid, elu (selu, celu), softplus and log_sigmoid as torch's kernels, each
with its tangent `<name>_backward(t, x)` as torch's backward kernel.

Decomposed, each is a few comparisons and selects forward and ~5-10 kernels for its tangent
(leaky_relu's grad of a conv feature map ran at 0.2x of torch.func's speed, elu's at 0.17x).
As the other fused primitives (prims/fused.py) they are bound where the trace binds fused
primitives (eager levels, their units and rules) and decomposed everywhere else. The tangent
is t * f'(x): linear in t and diagonal, so its own transpose; its tangent in x is t * f''(x) dx
with f'' in primitives (zero for the piecewise-linear ones), the second derivative torch's
double-backward formulas give. Every decomposition gives torch's values and derivatives,
boundaries included: hardtanh's, hardsigmoid's and hardswish's (open) intervals, elu's second derivative at 0 is the positive
side's, softplus is linear above its threshold; where a branch overflows (exp of a large x)
it sees a harmless input instead.
"""
from __future__ import annotations

import torch

from ..core import EXTERN, Primitive, Zero
from ..core.trace import type_of
from ..core.types import TensorType
from . import elementwise as ew
from .creation import full
from .define import linear_first_jvp
from .fused import fused_or_decomposed
from .shape import aligned_batch

_aten = torch.ops.aten


# ---------------------------------------------------------------- f(x), f'(x), f''(x) dx in primitives

def _leaky_relu(x, *, negative_slope):
    return ew.where(ew.gt(x, 0.0), x, ew.mul(x, negative_slope))


def _ones(x):
    """1 in x's type (a select of two literals would take the default dtype)."""
    t = type_of(x)
    return full(t.shape, 1.0, t.dtype, t.device)


def _leaky_relu_slope(x, *, negative_slope):
    return ew.where(ew.gt(x, 0.0), _ones(x), negative_slope)


def _hardtanh(x, *, min_val, max_val):
    """The clamp, with derivative 1 only strictly inside (0 at both ends and at NaN, which
    passes through as torch's)."""
    clamped = ew.where(ew.le(x, min_val), min_val, ew.where(ew.ge(x, max_val), max_val, x))
    return ew.where(_inside(x, min_val, max_val), x, ew.stop_gradient(clamped))


def _inside(x, lo, hi):
    return ew.bitwise_and(ew.gt(x, lo), ew.lt(x, hi))


def _hardtanh_slope(x, *, min_val, max_val):
    return ew.where(_inside(x, min_val, max_val), _ones(x), 0.0)


def _hardswish(x):
    """x (x + 3) / 6 strictly inside (-3, 3) (which alone sees x: at +-inf its derivative
    was inf * 0), 0 from -3 down, x from 3 up (NaN: x, derivative 1, as torch's)."""
    inside = _inside(x, -3.0, 3.0)
    safe = ew.where(inside, x, 0.0)
    return ew.where(inside, ew.div(ew.mul(safe, ew.add(safe, 3.0)), 6.0), ew.where(ew.le(x, -3.0), 0.0, x))


def _hardswish_slope(x):
    return ew.where(_inside(x, -3.0, 3.0), ew.add(ew.div(x, 3.0), 0.5), ew.where(ew.le(x, -3.0), 0.0, _ones(x)))


def _hardswish_curvature(x, dx):
    return ew.where(_inside(x, -3.0, 3.0), ew.div(dx, 3.0), 0.0)


def _hardsigmoid(x):
    """(x + 3) / 6 strictly inside (-3, 3), its constant ends outside (derivative 0 there and
    at NaN, which passes through)."""
    line = ew.add(ew.div(x, 6.0), 0.5)
    outside = ew.where(ew.le(x, -3.0), 0.0, ew.where(ew.ge(x, 3.0), 1.0, line))
    return ew.where(_inside(x, -3.0, 3.0), line, ew.stop_gradient(outside))


def _hardsigmoid_slope(x):
    return ew.where(_inside(x, -3.0, 3.0), ew.div(_ones(x), 6.0), 0.0)


def _elu(x, *, alpha, scale, input_scale):
    """scale x above 0, scale alpha expm1(input_scale x) below; at 0 a line of the negative
    side's slope (torch's first derivative there) whose second derivative is 0 (torch's)."""
    negative = ew.lt(x, 0.0)
    safe = ew.where(negative, x, 0.0)
    below = ew.where(negative, ew.mul(ew.expm1(ew.mul(safe, input_scale)), alpha * scale),
                     ew.mul(x, alpha * scale * input_scale))
    return ew.where(ew.gt(x, 0.0), ew.mul(x, scale), below)


def _elu_slope(x, *, alpha, scale, input_scale):
    nonpositive = ew.le(x, 0.0)
    return ew.where(nonpositive, ew.mul(ew.exp(ew.mul(ew.where(nonpositive, x, 0.0), input_scale)),
                                        alpha * scale * input_scale), scale)


def _elu_curvature(x, dx, *, alpha, scale, input_scale):
    negative = ew.lt(x, 0.0)
    k = ew.mul(ew.exp(ew.mul(ew.where(negative, x, 0.0), input_scale)), alpha * scale * input_scale * input_scale)
    return ew.where(negative, ew.mul(k, dx), 0.0)


def _softplus(x, *, beta, threshold):
    """x where beta x > threshold (torch's linear region), else log1p(exp(beta x)) / beta."""
    z = ew.mul(x, beta)
    linear = ew.gt(z, threshold)
    return ew.where(linear, x, ew.div(ew.log1p(ew.exp(ew.where(linear, 0.0, z))), beta))


def _softplus_sigmoid(x, beta, threshold):
    z = ew.mul(x, beta)
    linear = ew.gt(z, threshold)
    return linear, ew.logistic(ew.where(linear, 0.0, z))


def _softplus_slope(x, *, beta, threshold):
    linear, s = _softplus_sigmoid(x, beta, threshold)
    return ew.where(linear, 1.0, s)


def _softplus_curvature(x, dx, *, beta, threshold):
    """0 from beta x = threshold up: torch's double backward masks with beta x < threshold,
    where its first derivative switches above it."""
    _, s = _softplus_sigmoid(x, beta, threshold)
    return ew.where(ew.lt(ew.mul(x, beta), threshold), ew.mul(ew.mul(ew.mul(s, ew.sub(1.0, s)), beta), dx), 0.0)


# ---------------------------------------------------------------- the primitives

def _call(op, layout, operands, params):
    """op's arguments from a layout: "t"/"x" the operands, other strings params, the rest literals."""
    return op(*[operands[a] if a in operands else params[a] if isinstance(a, str) else a for a in layout])


def _emit(op_name, layout, srcs, params):
    args = [srcs[a] if a in srcs else repr(params[a]) if isinstance(a, str) else repr(a) for a in layout]
    return f"torch.ops.aten.{op_name}.default({', '.join(args)})"


class Activation:
    """One activation: `name` (torch's kernel `aten.<name>`, its arguments `forward`) and its
    tangent `<name>_backward` (`aten.<name>_backward`, arguments `backward`), with f, f' and
    f'' dx in primitives (curvature None: f'' is 0)."""

    def __init__(self, name, forward, backward, decomposed, slope, curvature=None, backward_impl=None):
        self.decomposed, self.slope, self.curvature = decomposed, slope, curvature
        fwd_op, bwd_op = getattr(_aten, name).default, getattr(_aten, name + "_backward").default
        grad_impl = backward_impl or (lambda t, x, **params: _call(bwd_op, backward, {"t": t, "x": x}, params))
        self.p = Primitive(
            name, kind=EXTERN,
            abstract_eval=lambda t, **params: TensorType(t.shape, t.dtype, t.device),
            impl=lambda x, **params: _call(fwd_op, forward, {"x": x}, params),
            jvp=self._jvp,
            composite=decomposed,
            emit=lambda eqn, srcs: _emit(name, forward, {"x": srcs[0]}, eqn.params))
        self.p.batch = aligned_batch(self.p)
        self.grad_p = Primitive(
            name + "_backward", kind=EXTERN,
            abstract_eval=lambda t, x, **params: TensorType(t.shape, t.dtype, t.device),
            impl=grad_impl,
            transpose=lambda ct, t, x, **params: [None if isinstance(ct, Zero) else self.grad_p.bind(ct, x, **params),
                                                  None],
            composite=lambda t, x, **params: ew.mul(t, slope(x, **params)),
            emit=None if backward_impl else (
                lambda eqn, srcs: _emit(name + "_backward", backward, {"t": srcs[0], "x": srcs[1]}, eqn.params)))
        self.grad_p.batch = aligned_batch(self.grad_p)
        if curvature is not None:       # (t f'(x))' in x: t f''(x) dx
            self.grad_p.jvp = linear_first_jvp(
                self.grad_p, lambda primals, tangents, **params: ew.mul(primals[0], curvature(primals[1], tangents[1],
                                                                                              **params)))
        else:
            self.grad_p.jvp = linear_first_jvp(self.grad_p)

    def __call__(self, x, **params):
        """f(x): the primitive where the trace binds fused primitives (float32/64), else in primitives."""
        return fused_or_decomposed(self.p, self.decomposed, x, **{k: float(v) for k, v in params.items()})

    def _jvp(self, primals, tangents, **params):
        (x,), (t,) = primals, tangents
        y = self.p.bind(x, **params)
        return y, Zero(type_of(y)) if isinstance(t, Zero) else self.grad_p.bind(t, x, **params)


leaky_relu = Activation("leaky_relu", ("x", "negative_slope"), ("t", "x", "negative_slope", False),
                        _leaky_relu, _leaky_relu_slope)
hardtanh = Activation("hardtanh", ("x", "min_val", "max_val"), ("t", "x", "min_val", "max_val"),
                      _hardtanh, _hardtanh_slope)
hardswish = Activation("hardswish", ("x",), ("t", "x"), _hardswish, _hardswish_slope, _hardswish_curvature)
# ATen's hardsigmoid_backward multiplies by 1/6 rounded to float32 in every dtype (a relative
# error of 3e-8 in float64); float64 gets the exact sixth back with one more product
_SIXTH_CORRECTION = (1 / 6) / float(torch.tensor(1 / 6, dtype=torch.float32))


def _hardsigmoid_backward(t, x):
    g = _aten.hardsigmoid_backward.default(t, x)
    return g * _SIXTH_CORRECTION if g.dtype == torch.float64 else g


hardsigmoid = Activation("hardsigmoid", ("x",), ("t", "x"), _hardsigmoid, _hardsigmoid_slope,
                         backward_impl=_hardsigmoid_backward)
elu = Activation("elu", ("x", "alpha", "scale", "input_scale"), ("t", "alpha", "scale", "input_scale", False, "x"),
                 _elu, _elu_slope, _elu_curvature)
softplus = Activation("softplus", ("x", "beta", "threshold"), ("t", "x", "beta", "threshold"),
                      _softplus, _softplus_slope, _softplus_curvature)


# ---------------------------------------------------------------- log_sigmoid (out, buffer)
# torch's log_sigmoid_forward returns the buffer its backward kernel reads (exp(-|x|) on the
# CPU, empty elsewhere); the buffer has no derivative. The tangent t sigmoid(-x) is
# log_sigmoid_backward(t, x, buffer), its own transpose; its tangent in x is
# -t sigmoid(x) sigmoid(-x) dx.

def log_sigmoid_decomposed(x):
    """-log1p(exp(-x)) for x >= 0, x - log1p(exp(x)) below (each branch fed a harmless
    input: torch's min(x, 0) - log1p(exp(-|x|)) has kinks at 0 that cancel in the value and
    first derivative, not the second); the CPU buffer exp(-|x|)."""
    t = type_of(x)
    positive = ew.ge(x, 0.0)
    above = ew.neg(ew.log1p(ew.exp(ew.neg(ew.where(positive, x, 0.0)))))
    below_x = ew.where(positive, 0.0, x)
    out = ew.where(positive, above, ew.sub(below_x, ew.log1p(ew.exp(below_x))))
    if torch.device(t.device).type != "cpu":
        return [out, full((0,), 0.0, t.dtype, t.device)]
    return [out, ew.exp(ew.neg(ew.abs_(x)))]


def _log_sigmoid_grad_decomposed(t, x, buffer):
    return ew.mul(t, ew.logistic(ew.neg(x)))


def _log_sigmoid_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    out, buffer = log_sigmoid_p.bind(x)
    tangent = Zero(type_of(out)) if isinstance(t, Zero) else log_sigmoid_backward_p.bind(t, x, buffer)
    return [out, buffer], [tangent, Zero(type_of(buffer))]


def _buffer_type(t):
    return TensorType(t.shape if torch.device(t.device).type == "cpu" else (0,), t.dtype, t.device)


log_sigmoid_p = Primitive(
    "log_sigmoid", kind=EXTERN, multiple_results=True,
    abstract_eval=lambda t: [TensorType(t.shape, t.dtype, t.device), _buffer_type(t)],
    impl=lambda x: list(_aten.log_sigmoid_forward.default(x)),
    jvp=_log_sigmoid_jvp,
    composite=log_sigmoid_decomposed)
log_sigmoid_backward_p = Primitive(
    "log_sigmoid_backward", kind=EXTERN,
    abstract_eval=lambda t, x, buffer: TensorType(t.shape, t.dtype, t.device),
    impl=lambda t, x, buffer: _aten.log_sigmoid_backward.default(t, x, buffer),
    transpose=lambda ct, t, x, buffer: [None if isinstance(ct, Zero) else log_sigmoid_backward_p.bind(ct, x, buffer),
                                        None, None],
    composite=_log_sigmoid_grad_decomposed,
    emit=lambda eqn, srcs: f"torch.ops.aten.log_sigmoid_backward.default({srcs[0]}, {srcs[1]}, {srcs[2]})")


def _log_sigmoid_batch(axis_data, args, dims):
    """Elementwise; the CPU buffer is batched with the output (elsewhere it is empty)."""
    out, buffer = log_sigmoid_p.bind(args[0])
    return [out, buffer], [dims[0], dims[0] if type_of(buffer).shape else None]


log_sigmoid_p.batch = _log_sigmoid_batch
log_sigmoid_backward_p.batch = aligned_batch(log_sigmoid_backward_p)


def _log_sigmoid_grad_in_x(primals, tangents):
    """(t sigmoid(-x))' in x: -t sigmoid(x) sigmoid(-x) dx (the buffer has no derivative)."""
    (t, x, _), dx = primals, tangents[1]
    if isinstance(dx, Zero):
        return None
    return ew.neg(ew.mul(ew.mul(t, ew.mul(ew.logistic(x), ew.logistic(ew.neg(x)))), dx))


log_sigmoid_backward_p.jvp = linear_first_jvp(log_sigmoid_backward_p, _log_sigmoid_grad_in_x)


def log_sigmoid(x):
    """[F.logsigmoid(x), torch's buffer]: the primitive where the trace binds fused primitives
    (float32/64), else in primitives."""
    return fused_or_decomposed(log_sigmoid_p, log_sigmoid_decomposed, x)
