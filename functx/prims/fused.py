"""Fused primitives of eager transforms: log_softmax and nll_loss (F.cross_entropy's two halves),
softmax, relu, gelu, and the tanh / sigmoid / relu / gelu derivatives (torch's tanh_backward /
sigmoid_backward / threshold_backward / gelu_backward kernels).

Without jit every primitive is one torch kernel call, and a decomposed log_softmax + nll_loss
is ~22 of them where torch runs two (each ~2-5 us on small tensors: most of an eager
cross_entropy's cost under grad). These primitives run torch's fused kernels, with rules of
their own: log_softmax's and softmax's tangents are linear primitives whose transposes run
torch's backward kernels (_log_softmax_backward_data, _softmax_backward_data); nll_loss is
linear in its input (its tangent is itself), transposed by nll_loss_backward.

Only eager levels see them. `log_softmax` / `nll_loss` bind the primitive where the current
trace runs ATen ops as cached lowerings (an eager grad/jvp/vmap level, `Trace.lowered_ops`) or
traces an eager unit or rule (`Trace.keeps_fused`), and bind the decomposition everywhere else
(jit staging, Taylor mode, spmd, make_graph): those graphs stay exactly what they were. A
GraphTrace that does not keep fused primitives records the decomposition instead
(`Primitive.composite`), so a rule bound at a jit trace never stages one either.
"""
from __future__ import annotations

import math

import torch

from ..core import EXTERN, Primitive, Zero, bind
from .define import defjvp, linear_first_jvp
from ..core.trace import trace_state, type_of
from ..core.types import TensorType
from . import elementwise as ew
from . import shape as sh
from .creation import zeros_like_type
from .indexing import scatter_add_along, take_along_axis
from .reduce import reduce_max, reduce_sum
from .shape import bdim_to_front

_FUSED_DTYPES = (torch.float32, torch.float64)
# ATen's nll_loss_forward's loss, and nll_loss_backward, called without the op packet's
# overload resolution (~20 us a call)
_nll_forward = torch._C._nn.nll_loss
_nll_backward = torch.ops.aten.nll_loss_backward.default
NLL_NONE, NLL_MEAN, NLL_SUM = 0, 1, 2       # ATen's reduction codes


def fused_here() -> bool:
    """Whether the current trace binds fused primitives as themselves (module docstring)."""
    t = trace_state.trace
    return t.lowered_ops or t.keeps_fused


# ---------------------------------------------------------------- log_softmax

def _rows(x, axis):
    """(x's shape, the dims other than axis): a row-wise result broadcasts back through them."""
    shape = type_of(x).shape
    return shape, tuple(i for i in range(len(shape)) if i != axis)


def _shifted(x, axis):
    """x - m along axis, m = max(stop_gradient(x)): the max is a constant shift (softmax is
    shift-invariant), so derivatives never build its tie-averaging rule (as in JAX)."""
    shape, kept = _rows(x, axis)
    m = reduce_max(ew.stop_gradient(x), (axis,))
    return ew.sub(x, sh.broadcast_in_dim(m, shape, kept))


def fused_or_decomposed(prim, decomposed, *operands, **params):
    """prim itself where the current trace binds fused primitives (float32/64 operands), else
    what it stands for: decomposed(*operands, **params)."""
    if type_of(operands[0]).dtype in _FUSED_DTYPES and fused_here():
        return bind(prim, operands, params)
    return decomposed(*operands, **params)


def log_softmax_decomposed(x, axis):
    """z - log(sum(exp(z))) along axis, z = x - max(x) (_shifted)."""
    shape, kept = _rows(x, axis)
    z = _shifted(x, axis)
    lse = ew.log(reduce_sum(ew.exp(z), (axis,)))
    return ew.sub(z, sh.broadcast_in_dim(lse, shape, kept))


def log_softmax(x, axis):
    """log_softmax of a float tensor along axis (non-empty, ndim >= 1)."""
    return fused_or_decomposed(log_softmax_p, log_softmax_decomposed, x, axis=axis)


def _log_softmax_jvp(primals, tangents, *, axis):
    (x,), (t,) = primals, tangents
    y = log_softmax_p.bind(x, axis=axis)
    if isinstance(t, Zero):
        return y, Zero(type_of(y))
    return y, log_softmax_tangent_p.bind(t, y, axis=axis)


def _rowwise_batch(prim):
    """The batch rule of a primitive of one operand along `axis` (log_softmax, softmax): the
    mapped dim stays where it is and the axis moves past it."""
    def batch(axis_data, args, dims, *, axis):
        (x,), (d,) = args, dims
        if d is None:
            return prim().bind(x, axis=axis), None
        return prim().bind(x, axis=axis + 1 if d <= axis else axis), d
    return batch


log_softmax_p = Primitive(
    "log_softmax", kind=EXTERN,
    abstract_eval=lambda t, *, axis: TensorType(t.shape, t.dtype, t.device),
    impl=lambda x, *, axis: torch.log_softmax(x, axis),
    jvp=_log_softmax_jvp,
    batch=_rowwise_batch(lambda: log_softmax_p),
    composite=log_softmax_decomposed,
    emit=lambda eqn, srcs: f"torch.log_softmax({srcs[0]}, {eqn.params['axis']})")


# ---------------------------------------------------------------- softmax

def softmax_decomposed(x, axis):
    """exp(z) / sum(exp(z)) along axis, z = x - max(x) (_shifted)."""
    shape, kept = _rows(x, axis)
    e = ew.exp(_shifted(x, axis))
    return ew.div(e, sh.broadcast_in_dim(reduce_sum(e, (axis,)), shape, kept))


def softmax(x, axis):
    """softmax of a float tensor along axis (non-empty, ndim >= 1): torch's kernel under eager
    transforms (one call for five, and the bits eager torch computes: the decomposition's
    division rounds 1 ulp from the kernel's on some rows)."""
    return fused_or_decomposed(softmax_p, softmax_decomposed, x, axis=axis)


def _softmax_jvp(primals, tangents, *, axis):
    (x,), (t,) = primals, tangents
    y = softmax_p.bind(x, axis=axis)
    if isinstance(t, Zero):
        return y, Zero(type_of(y))
    return y, softmax_tangent_p.bind(t, y, axis=axis)


softmax_p = Primitive(
    "softmax", kind=EXTERN,
    abstract_eval=lambda t, *, axis: TensorType(t.shape, t.dtype, t.device),
    impl=lambda x, *, axis: torch.softmax(x, axis),
    jvp=_softmax_jvp,
    batch=_rowwise_batch(lambda: softmax_p),
    composite=softmax_decomposed,
    emit=lambda eqn, srcs: f"torch.softmax({srcs[0]}, {eqn.params['axis']})")


# ---------------------------------------------------------------- their tangents and cotangents
# Linear in their first operand, y being the output. log_softmax's Jacobian along the axis is
# J = I - 1 s^T (s = exp(y)): J t = t - sum(t s), and J^T c = c - s sum(c), torch's
# _log_softmax_backward_data. softmax's, J = diag(y) - y y^T, is symmetric: J t = y (t -
# sum(t y)), torch's _softmax_backward_data, its own transpose. As primitives a reverse pass
# runs torch's one backward kernel where the tangent's primitives transposed were four
# (and an exp of y kept from the forward pass).

def _along(v, y, axis):
    """A row statistic of y's rows broadcast back over them."""
    shape, kept = _rows(y, axis)
    return sh.broadcast_in_dim(v, shape, kept)


def log_softmax_tangent_decomposed(t, y, *, axis):
    return ew.sub(t, _along(reduce_sum(ew.mul(t, ew.exp(y)), (axis,)), y, axis))


def log_softmax_cotangent_decomposed(c, y, *, axis):
    return ew.sub(c, ew.mul(ew.exp(y), _along(reduce_sum(c, (axis,)), y, axis)))


def softmax_tangent_decomposed(t, y, *, axis):
    return ew.mul(y, ew.sub(t, _along(reduce_sum(ew.mul(t, y), (axis,)), y, axis)))


def _log_softmax_tangent_in_y(t, y, dy, axis):
    """d/dy of t - sum(t exp(y)) is -sum(t exp(y) dy)."""
    return ew.neg(_along(reduce_sum(ew.mul(ew.mul(t, ew.exp(y)), dy), (axis,)), y, axis))


def _log_softmax_cotangent_in_y(c, y, dy, axis):
    """d/dy of c - exp(y) sum(c) is -exp(y) dy sum(c)."""
    return ew.neg(ew.mul(ew.mul(ew.exp(y), dy), _along(reduce_sum(c, (axis,)), y, axis)))


def _softmax_tangent_in_y(t, y, dy, axis):
    """d/dy of y (t - sum(t y)) is dy (t - sum(t y)) - y sum(t dy)."""
    inner = ew.sub(t, _along(reduce_sum(ew.mul(t, y), (axis,)), y, axis))
    return ew.sub(ew.mul(dy, inner), ew.mul(y, _along(reduce_sum(ew.mul(t, dy), (axis,)), y, axis)))


def _rowwise_linear(name, impl, in_y, transpose_to, decomposed):
    """A (linear operand, y) primitive along `axis`, in_y(t, y, dy, axis) its tangent in y; its
    batch rule moves both batch dims first."""
    prim = Primitive(
        name, kind=EXTERN,
        abstract_eval=lambda t, y, *, axis: TensorType(t.shape, t.dtype, t.device),
        impl=impl,
        transpose=lambda ct, t, y, *, axis: [None if isinstance(ct, Zero) else transpose_to().bind(ct, y, axis=axis),
                                              None],
        composite=decomposed)
    prim.jvp = linear_first_jvp(prim, lambda primals, tangents, *, axis: in_y(*primals, tangents[1], axis))

    def batch(axis_data, args, dims, *, axis):
        a, y = (bdim_to_front(v, d, axis_data.size) for v, d in zip(args, dims))
        return prim.bind(a, y, axis=axis + 1), 0
    prim.batch = batch
    return prim


log_softmax_tangent_p = _rowwise_linear(
    "log_softmax_tangent", lambda t, y, *, axis: t - (t * y.exp()).sum(axis, keepdim=True),
    _log_softmax_tangent_in_y, lambda: log_softmax_cotangent_p, log_softmax_tangent_decomposed)
log_softmax_cotangent_p = _rowwise_linear(
    "log_softmax_cotangent", lambda c, y, *, axis: torch.ops.aten._log_softmax_backward_data(c, y, axis, y.dtype),
    _log_softmax_cotangent_in_y, lambda: log_softmax_tangent_p, log_softmax_cotangent_decomposed)
softmax_tangent_p = _rowwise_linear(
    "softmax_tangent", lambda t, y, *, axis: torch.ops.aten._softmax_backward_data(t, y, axis, y.dtype),
    _softmax_tangent_in_y, lambda: softmax_tangent_p, softmax_tangent_decomposed)


# ---------------------------------------------------------------- nll_loss (no class weights)

def _keep_and_index(target, ignore_index, channel):
    keep = ew.ne(target, ignore_index)
    tt = type_of(target)
    safe = sh.reshape(ew.where(keep, target, 0), tt.shape[:channel] + (1,))     # ignored rows read class 0
    return keep, safe


def nll_total_weight(target, ignore_index, dtype, keep=None):
    """The number of targets not ignored, as ATen's nll_loss_forward's total_weight (dtype);
    keep: ne(target, ignore_index) where already computed."""
    tt = type_of(target)
    if keep is None:
        keep = ew.ne(target, ignore_index)
    return ew.convert(reduce_sum(ew.convert(keep, torch.int64), tuple(range(tt.ndim))), dtype)


def nll_loss_decomposed(x, target, *, reduction, ignore_index):
    """torch._decomp's _nll_loss_forward without weights, its loss only: -x[i, target[i]] over
    the targets not ignored, summed, averaged over them, or per target."""
    t, tt = type_of(x), type_of(target)
    channel = 1 if t.ndim > 1 else 0
    keep, safe = _keep_and_index(target, ignore_index, channel)
    result = ew.where(keep, ew.neg(sh.reshape(take_along_axis(x, safe, channel), tt.shape)), 0.0)
    if reduction == NLL_NONE:
        return result
    total = reduce_sum(result, tuple(range(tt.ndim)))
    if reduction == NLL_SUM:
        return total
    return ew.div(total, nll_total_weight(target, ignore_index, t.dtype, keep))


def nll_loss(x, target, reduction, ignore_index):
    """nll_loss_forward's loss for a float x (C) or (N, C), integer class targets, no weights."""
    if type_of(x).dtype in _FUSED_DTYPES and fused_here():
        return bind(nll_loss_p, (x, target), {"reduction": reduction, "ignore_index": ignore_index})
    return nll_loss_decomposed(x, target, reduction=reduction, ignore_index=ignore_index)


def _nll_type(x, target, *, reduction, ignore_index):
    shape = tuple(target.shape) if reduction == NLL_NONE else ()
    return TensorType(shape, x.dtype, x.device)


def _nll_jvp(primals, tangents, *, reduction, ignore_index):
    (x, target), (t, _) = primals, tangents
    out = nll_loss_p.bind(x, target, reduction=reduction, ignore_index=ignore_index)
    if isinstance(t, Zero):
        return out, Zero(type_of(out))
    return out, nll_loss_p.bind(t, target, reduction=reduction, ignore_index=ignore_index)     # linear in x


def _nll_transpose(ct, x, target, *, reduction, ignore_index):
    return [nll_loss_backward_p.bind(ct, target, shape=tuple(x.aval.shape), reduction=reduction,
                                     ignore_index=ignore_index), None]


def _nll_batch_rows(target, dt, size):
    """target with its batch dim first, and the number of rows of all examples together."""
    target = bdim_to_front(target, dt, size)
    n = 1
    for k in type_of(target).shape:
        n *= k
    return target, n


def _per_example_count(target, ignore_index, dtype):
    """Each example's number of targets not ignored (target: batch dim first)."""
    tt = type_of(target)
    keep = ew.convert(ew.ne(target, ignore_index), torch.int64)
    axes = tuple(range(1, tt.ndim))
    return ew.convert(reduce_sum(keep, axes) if axes else keep, dtype)


def _nll_batch(axis_data, args, dims, *, reduction, ignore_index):
    """Per example: the unreduced loss of all examples' rows at once, then each example's sum
    (and mean over its targets not ignored)."""
    (x, target), (dx, dt) = args, dims
    size = axis_data.size
    x = bdim_to_front(x, dx, size)
    target, n = _nll_batch_rows(target, dt, size)
    xt, tt = type_of(x), type_of(target)
    rows = sh.reshape(x, (n, xt.shape[-1]))             # (B*N, C), or (B, C)
    flat = sh.reshape(target, (n,))
    per = sh.reshape(nll_loss_p.bind(rows, flat, reduction=NLL_NONE, ignore_index=ignore_index), tt.shape)
    if reduction == NLL_NONE:
        return per, 0
    axes = tuple(range(1, tt.ndim))
    total = reduce_sum(per, axes) if axes else per
    if reduction == NLL_SUM:
        return total, 0
    return ew.div(total, _per_example_count(target, ignore_index, xt.dtype)), 0


nll_loss_p = Primitive(
    "nll_loss", kind=EXTERN,
    abstract_eval=_nll_type,
    impl=lambda x, target, *, reduction, ignore_index: _nll_forward(x, target, None, reduction, ignore_index),
    jvp=_nll_jvp,
    transpose=_nll_transpose,
    batch=_nll_batch,
    composite=nll_loss_decomposed,
    emit=lambda eqn, srcs: (f"torch._C._nn.nll_loss({srcs[0]}, {srcs[1]}, None, {eqn.params['reduction']}, "
                            f"{eqn.params['ignore_index']})"))


# ---------------------------------------------------------------- nll_loss's transpose

def nll_loss_backward_decomposed(ct, target, *, shape, reduction, ignore_index):
    """-ct (over the targets' count for a mean) at each kept target's class, 0 elsewhere: the
    decomposition's transpose, equation by equation."""
    xt, tt = TensorType(tuple(shape), type_of(ct).dtype, type_of(ct).device), type_of(target)
    channel = 1 if xt.ndim > 1 else 0
    keep, safe = _keep_and_index(target, ignore_index, channel)
    ct = ew.neg(ct)             # (negated before it is broadcast: one element, for a reduction)
    if reduction == NLL_MEAN:
        ct = ew.div(ct, nll_total_weight(target, ignore_index, xt.dtype, keep))
    if reduction != NLL_NONE:
        ct = sh.broadcast_in_dim(ct, tt.shape, ())
    per = sh.reshape(ew.where(keep, ct, 0.0), tt.shape[:channel] + (1,))
    return scatter_add_along(zeros_like_type(xt), safe, per, channel)


def _nll_backward_impl(ct, target, *, shape, reduction, ignore_index):
    # ATen's kernel reads only the input's size and dtype, and total_weight only for a mean
    total = (target != ignore_index).sum().to(ct.dtype) if reduction == NLL_MEAN else ct.new_ones(())
    return _nll_backward(ct, ct.new_empty(shape), target, None, reduction, ignore_index, total)


def _nll_backward_jvp(primals, tangents, **params):
    (ct, target), (t, _) = primals, tangents
    out = nll_loss_backward_p.bind(ct, target, **params)
    if isinstance(t, Zero):
        return out, Zero(type_of(out))
    return out, nll_loss_backward_p.bind(t, target, **params)      # linear in ct


def _nll_backward_transpose(g, ct, target, *, shape, reduction, ignore_index):
    return [nll_loss_p.bind(g, target, reduction=reduction, ignore_index=ignore_index), None]


def _nll_backward_batch(axis_data, args, dims, *, shape, reduction, ignore_index):
    """Per example: every example's rows at once, unreduced, each row's cotangent being its
    example's (over its count of targets not ignored, for a mean)."""
    (ct, target), (dc, dt) = args, dims
    size = axis_data.size
    ct = bdim_to_front(ct, dc, size)
    target, n = _nll_batch_rows(target, dt, size)
    tt = type_of(target)
    if reduction != NLL_NONE:
        if reduction == NLL_MEAN:
            ct = ew.div(ct, _per_example_count(target, ignore_index, type_of(ct).dtype))
        ct = sh.broadcast_in_dim(ct, tt.shape, (0,))
    rows = nll_loss_backward_p.bind(sh.reshape(ct, (n,)), sh.reshape(target, (n,)), shape=(n, shape[-1]),
                                    reduction=NLL_NONE, ignore_index=ignore_index)
    return sh.reshape(rows, (size, *shape)), 0


nll_loss_backward_p = Primitive(
    "nll_loss_backward", kind=EXTERN,
    abstract_eval=lambda ct, target, *, shape, reduction, ignore_index: TensorType(tuple(shape), ct.dtype, ct.device),
    impl=_nll_backward_impl,
    jvp=_nll_backward_jvp,
    transpose=_nll_backward_transpose,
    batch=_nll_backward_batch,
    composite=nll_loss_backward_decomposed)


# ---------------------------------------------------------------- tanh / sigmoid derivatives
# tanh's tangent t * (1 - y*y) and sigmoid's t * y * (1 - y) (y: the output) are three kernels
# as primitives, and under linearize the factor is a residual computed in the forward pass.
# As one primitive, linear in t with y as its residual, they are torch's own derivative
# kernels (tanh_backward, sigmoid_backward): nothing extra in the forward pass, one kernel in
# the backward (the tangent's transpose is itself). Bound where log_softmax is (fused_here).

def _activation_backward(name, kernel, factor, factor_jvp, decomposed=None, emit_args="", aten_name=None):
    """The primitive t * factor(y), linear in t; factor(y) and its tangent factor_jvp(y, dy)
    in primitives (None: a mask, whose tangent is zero; `decomposed` then says how it applies)."""
    if decomposed is None:
        def decomposed(t, y):
            return ew.mul(t, factor(y))

    def jvp(primals, tangents):
        (t, y), (dt, dy) = primals, tangents
        out = p.bind(t, y)
        terms = []
        if not isinstance(dt, Zero):
            terms.append(p.bind(dt, y))
        if not isinstance(dy, Zero) and factor_jvp is not None:
            terms.append(ew.mul(t, factor_jvp(y, dy)))
        if not terms:
            return out, Zero(type_of(out))
        return out, terms[0] if len(terms) == 1 else ew.add(terms[0], terms[1])

    def batch(axis_data, args, dims):
        (t, y), (dt, dy) = args, dims
        if dt == dy:
            return p.bind(t, y), dt
        if not fused_here():
            # a staged graph (jit of vmap(jacfwd)): the factor on y as it is, then the product's
            # own batch rule, so the factor is not computed over the broadcast batch
            return (ew.mul_p.batch(axis_data, [t, factor(y)], [dt, dy]) if factor is not None else
                    (decomposed(bdim_to_front(t, dt, axis_data.size), bdim_to_front(y, dy, axis_data.size)), 0))
        size = axis_data.size       # (eager: an unbatched y is broadcast by the kernel itself)
        return p.bind(bdim_to_front(t, dt, size), bdim_to_front(y, dy, size)), 0

    p = Primitive(
        name, kind=EXTERN,
        abstract_eval=lambda t, y: TensorType(t.shape, t.dtype, t.device),
        impl=kernel,
        jvp=jvp,
        transpose=lambda ct, t, y: [p.bind(ct, y), None],
        batch=batch,
        composite=decomposed,
        emit=lambda eqn, srcs: f"torch.ops.aten.{aten_name or name}.default({srcs[0]}, {srcs[1]}{emit_args})")

    def apply(t, y):
        tt, ty = type_of(t), type_of(y)
        if tt.dtype in _FUSED_DTYPES and tt == ty and fused_here():
            return bind(p, (t, y), {})
        return decomposed(t, y)
    return p, apply


tanh_backward_p, tanh_backward = _activation_backward(
    "tanh_backward", torch.ops.aten.tanh_backward.default,
    lambda y: ew.sub(1.0, ew.mul(y, y)), lambda y, dy: ew.mul(ew.mul(y, dy), -2.0))
sigmoid_backward_p, sigmoid_backward = _activation_backward(
    "sigmoid_backward", torch.ops.aten.sigmoid_backward.default,
    lambda y: ew.mul(y, ew.sub(1.0, y)), lambda y, dy: ew.mul(ew.sub(1.0, ew.mul(y, 2.0)), dy))
defjvp(ew.tanh_p, lambda t, y, x: tanh_backward(t, y))
defjvp(ew.logistic_p, lambda t, y, x: sigmoid_backward(t, y))


# ---------------------------------------------------------------- relu
# torch's relu is one kernel, and its derivative threshold_backward(t, y, 0) another (t where
# y > 0 or y is NaN, else 0, read from the output). As primitives relu is two comparisons and
# two selects forward (x itself at 0, NaN propagated), and its tangent two selects with
# materialized zeros each way. Bound where log_softmax is (fused_here).

def relu_decomposed(x):
    """torch's relu (clamp_min(x, 0)): x itself at x == 0 (relu(-0.0) is -0.0) with derivative
    0 there (not max's tie split); NaN propagates with derivative 1 (threshold_backward's)."""
    zero = 0.0 if type_of(x).dtype.is_floating_point else 0
    return ew.where(ew.lt(x, zero), zero, ew.where(ew.eq(x, zero), ew.stop_gradient(x), x))


def relu(x):
    return fused_or_decomposed(relu_p, relu_decomposed, x)


def _relu_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    y = relu_p.bind(x)
    return y, Zero(type_of(y)) if isinstance(t, Zero) else threshold_backward(t, y)


relu_p = Primitive(
    "relu", kind=EXTERN,
    abstract_eval=lambda t: TensorType(t.shape, t.dtype, t.device),
    impl=torch.relu,
    jvp=_relu_jvp,
    batch=lambda axis_data, args, dims: (relu_p.bind(args[0]), dims[0]),
    composite=relu_decomposed,
    emit=lambda eqn, srcs: f"torch.relu({srcs[0]})")

threshold_backward_p, threshold_backward = _activation_backward(
    "threshold_backward", lambda t, y: torch.ops.aten.threshold_backward.default(t, y, 0), None, None,
    decomposed=lambda t, y: ew.where(ew.le(y, 0.0), 0.0, t), emit_args=", 0")


# ---------------------------------------------------------------- gelu
# torch's gelu is one kernel and its derivative gelu_backward(t, x) another; as primitives
# (torch._refs' formula) it is ~6 kernels forward and its tangent ~10 through erf / tanh. The
# derivative's own tangent (second order) is gelu''(x) in primitives.
_ALPHA = 1 / math.sqrt(2)                         # torch._refs' kAlpha
_BETA = math.sqrt(2) * (2 / math.sqrt(math.pi)) * 0.5    # kBeta = sqrt(2 / pi)
_KAPPA = 0.044715
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def _tanh_inner(x):
    """kBeta * (x + kKappa * x^3): the tanh approximation's argument."""
    return ew.mul(ew.add(x, ew.mul(ew.mul(ew.mul(x, x), x), _KAPPA)), _BETA)


def gelu_decomposed(x, approximate="none"):
    """torch._refs.nn.functional.gelu's formula."""
    if approximate == "tanh":
        return ew.mul(ew.mul(x, 0.5), ew.add(ew.tanh(_tanh_inner(x)), 1.0))
    return ew.mul(ew.mul(x, 0.5), ew.add(ew.erf(ew.mul(x, _ALPHA)), 1.0))


def _normal_pdf(x):
    return ew.mul(ew.exp(ew.mul(ew.mul(x, x), -0.5)), _INV_SQRT_2PI)


def _gelu_slope(x):
    """gelu'(x) = Phi(x) + x phi(x)."""
    return ew.add(ew.mul(ew.add(ew.erf(ew.mul(x, _ALPHA)), 1.0), 0.5), ew.mul(x, _normal_pdf(x)))


def _gelu_curvature(x, dx):
    """gelu''(x) dx = phi(x) (2 - x^2) dx."""
    return ew.mul(ew.mul(_normal_pdf(x), ew.sub(2.0, ew.mul(x, x))), dx)


def _tanh_gelu_parts(x):
    """(T, 1 - T^2, u') of the tanh approximation: T = tanh(u), u' = kBeta (1 + 3 kKappa x^2)."""
    t = ew.tanh(_tanh_inner(x))
    return t, ew.sub(1.0, ew.mul(t, t)), ew.mul(ew.add(ew.mul(ew.mul(x, x), 3 * _KAPPA), 1.0), _BETA)


def _tanh_gelu_slope(x):
    """0.5 (1 + T) + 0.5 x (1 - T^2) u'."""
    t, s, du = _tanh_gelu_parts(x)
    return ew.mul(ew.add(ew.add(t, 1.0), ew.mul(ew.mul(x, s), du)), 0.5)


def _tanh_gelu_curvature(x, dx):
    """(1 - T^2) (u' + 0.5 x (u'' - 2 T u'^2)) dx, u'' = 6 kBeta kKappa x."""
    t, s, du = _tanh_gelu_parts(x)
    d2u = ew.mul(x, 6 * _BETA * _KAPPA)
    inner = ew.sub(d2u, ew.mul(ew.mul(t, ew.mul(du, du)), 2.0))
    return ew.mul(ew.mul(s, ew.add(du, ew.mul(ew.mul(x, inner), 0.5))), dx)


gelu_backward_p, _gelu_backward = _activation_backward(
    "gelu_backward", lambda t, x: torch.ops.aten.gelu_backward.default(t, x), _gelu_slope, _gelu_curvature)
tanh_gelu_backward_p, _tanh_gelu_backward = _activation_backward(
    "tanh_gelu_backward", lambda t, x: torch.ops.aten.gelu_backward.default(t, x, approximate="tanh"),
    _tanh_gelu_slope, _tanh_gelu_curvature, emit_args=", approximate='tanh'", aten_name="gelu_backward")


def gelu(x, approximate="none"):
    return fused_or_decomposed(gelu_p, gelu_decomposed, x, approximate=approximate)


def _gelu_jvp(primals, tangents, *, approximate):
    (x,), (t,) = primals, tangents
    y = gelu_p.bind(x, approximate=approximate)
    if isinstance(t, Zero):
        return y, Zero(type_of(y))
    return y, (_tanh_gelu_backward if approximate == "tanh" else _gelu_backward)(t, x)


gelu_p = Primitive(
    "gelu", kind=EXTERN,
    abstract_eval=lambda t, *, approximate: TensorType(t.shape, t.dtype, t.device),
    impl=lambda x, *, approximate: torch.nn.functional.gelu(x, approximate=approximate),
    jvp=_gelu_jvp,
    batch=lambda axis_data, args, dims, *, approximate: (gelu_p.bind(args[0], approximate=approximate), dims[0]),
    composite=gelu_decomposed,
    emit=lambda eqn, srcs: f"torch.nn.functional.gelu({srcs[0]}, approximate={eqn.params['approximate']!r})")
