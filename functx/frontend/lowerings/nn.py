"""Neural-network ops lowered natively so that their derivatives match torch's formulas
where the composite would differ (ties, boundaries, zeros): relu, hardtanh, softmax, norms and distances, std, sinc; and batch norm, whose running
statistics are written back into the buffers."""
from __future__ import annotations

import math

import torch
from torch._decomp.decompositions import native_batch_norm_helper
from torch._prims_common import ELEMENTWISE_TYPE_PROMOTION_KIND as KIND

from ...core.errors import BatchingError, FunctxError
from ...core.trace import Tracer, concrete, is_ancestor, staging, tracer_chain
from ... import prims as P
from ...prims.util import static_broadcast_shapes
from ..functionalize import unwrap, write
from ..promote import broadcast_shapes, float_dtype_of, prepare, result_type
from ..tensor import TracerTensor
from .common import _dims, _keep, _t, _zeros, aten, wrap_dim
from .elementwise import _clamp
from .registry import register, register_special
from ...prims.fused import fused_here
from ...prims.fused_activations import hardtanh
from ...prims.fused_losses import bce_decomposed, binary_cross_entropy, huber_loss, smooth_l1_loss
from ...prims.fused_norm import normalize_channels
from ...prims.fused_norm_affine import normalize_affine
from .torch_prims import _prims_var
from .attention import _fits, bias_and_scale
from ...kernels.attention import attention
from ...prims.opaque import OpaqueFunction, sample_reparam
from ..tensor import wrap

prims_ns = torch.ops.prims


# ---------------------------------------------------------------- relu

@register(aten.relu.default)
def _relu(x):
    return P.relu(x)        # torch's kernel under eager transforms (prims/fused.py)


@register(aten.gelu.default)
def _gelu(x, approximate="none"):
    if approximate not in ("none", "tanh"):
        raise RuntimeError("approximate argument must be either none or tanh.")
    dtype = _t(x).dtype
    if not dtype.is_floating_point:
        raise NotImplementedError(f"\"GeluKernelImpl\" not implemented for '{str(dtype)[6:].title()}'")
    if dtype in (torch.float16, torch.bfloat16):        # computed in float32, as torch's
        return P.convert(P.gelu(P.convert(x, torch.float32), approximate), dtype)
    return P.gelu(x, approximate)      # torch's kernel under eager transforms (prims/fused.py)


# ---------------------------------------------------------------- hardtanh (relu6)
# Native, not torch's decomposition (which is clamp): torch's hardtanh has derivative 0 at
# both boundaries (and at NaN), clamp has 1. NaN values pass through, as in torch.

@register(aten.hardtanh.default)
def _hardtanh(x, min_val=-1.0, max_val=1.0):
    """torch's kernels on eager levels (prims/fused_activations.py), else the clamp with
    derivative 0 at both ends and at NaN (torch's hardtanh_backward masks with lo < x < hi)."""
    if not _t(x).dtype.is_floating_point:
        return _clamp(x, min_val, max_val)
    return hardtanh(x, min_val=min_val, max_val=max_val)


# ---------------------------------------------------------------- _safe_softmax (SDPA with masks)
# softmax whose fully-masked (all -inf) rows are 0; written so that those rows also have
# zero (not nan) derivatives: no where() over a nan branch.

@register(aten._safe_softmax.default)
def _safe_softmax(x, dim, dtype=None):
    if dtype is not None:
        x = P.convert(x, dtype)
    t = _t(x)
    if t.ndim == 0:     # a row of one: 1, but nan for inf/nan (0 for -inf, a masked row)
        return P.reshape(_safe_softmax(P.reshape(x, (1,)), 0), ())
    d = wrap_dim(dim, t.ndim)
    kept = tuple(i for i in range(t.ndim) if i != d)
    m = P.reduce_max(P.stop_gradient(x), (d,))
    m = P.where(P.eq(m, -math.inf), P.full(_t(m).shape, 0.0, t.dtype, t.device), m)
    e = P.exp(P.sub(x, P.broadcast_in_dim(m, t.shape, kept)))
    s = P.reduce_sum(e, (d,))
    s = P.where(P.eq(s, 0.0), P.full(_t(s).shape, 1.0, t.dtype, t.device), s)
    return P.div(e, P.broadcast_in_dim(s, t.shape, kept))


# ---------------------------------------------------------------- softmax / log_softmax
# Native (PyTorch's decompositions reach elementwise_dtypes, which imports sympy): the fused
# primitives of prims/fused.py (torch's kernels under eager transforms, the decompositions,
# whose max is a stop_gradient'ed shift as in JAX, everywhere else).

# A 0-d input is a row of one: exp(x - x) is 1 only where x is finite (nan for inf/nan, as
# in torch), so it runs the general path rather than returning a constant.

@register(aten._softmax.default)
def _softmax(x, dim, half_to_float=False):
    if _t(x).ndim == 0:
        return P.reshape(_softmax(P.reshape(x, (1,)), 0, half_to_float), ())
    if half_to_float:
        x = P.convert(x, torch.float32)
    t = _t(x)
    d = wrap_dim(dim, t.ndim)
    if t.shape[d] == 0:     # empty rows: nothing to shift (a max of nothing does not exist)
        kept = tuple(i for i in range(t.ndim) if i != d)
        e = P.exp(x)
        return P.div(e, P.broadcast_in_dim(P.reduce_sum(e, (d,)), t.shape, kept))
    return P.softmax(x, d)       # torch's kernel under eager transforms (prims/fused.py)


@register(aten._log_softmax.default)
def _log_softmax(x, dim, half_to_float=False):
    if _t(x).ndim == 0:
        return P.reshape(_log_softmax(P.reshape(x, (1,)), 0, half_to_float), ())
    if half_to_float:
        x = P.convert(x, torch.float32)
    t = _t(x)
    d = wrap_dim(dim, t.ndim)
    if t.shape[d] == 0:     # empty rows: nothing to shift (a max of nothing does not exist)
        kept = tuple(i for i in range(t.ndim) if i != d)
        return P.sub(x, P.broadcast_in_dim(P.log(P.reduce_sum(P.exp(x), (d,))), t.shape, kept))
    return P.log_softmax(x, d)       # torch's kernel under eager transforms (prims/fused.py)


# ---------------------------------------------------------------- vector norms
# Native: the decomposition's sqrt(sum(x*x)) has a nan derivative at x = 0, where torch
# returns the subgradient 0. The double where keeps both the value and the derivatives
# finite: the root only ever sees a positive argument, and at 0 the constant branch wins.

_HALF = (torch.float16, torch.bfloat16)


def _upcast(x):
    """(x in its computation dtype, its dtype): half and bfloat16 reductions compute in
    float32 and round once, as torch's kernels accumulate (x*x of a float16 above 256
    overflows: a norm or std of such values was inf, normalize() gave 0)."""
    dtype = _t(x).dtype
    return (P.convert(x, torch.float32), dtype) if dtype in _HALF else (x, dtype)


@register(aten.linalg_vector_norm.default)
def _vector_norm(x, ord=2, dim=None, keepdim=False, dtype=None):
    if dtype is not None:
        x = P.convert(x, dtype)
    x, out_dtype = _upcast(x)
    out = _vector_norm_of(x, ord, dim, keepdim)
    return P.convert(out, out_dtype) if out_dtype != _t(x).dtype else out


def _vector_norm_of(x, ord, dim, keepdim):
    t = _t(x)
    axes = _dims(dim, t.ndim) if t.ndim else ()
    a = P.abs_(x)
    if ord != 0 and math.prod(t.shape[i] for i in axes) == 1:
        out = P.reduce_sum(a, axes)     # one element: |x| (as torch), where |x|^p may overflow
    elif ord == math.inf:
        out = P.reduce_max(a, axes)
    elif ord == -math.inf:
        out = P.reduce_min(a, axes)
    elif ord == 0:
        out = P.reduce_sum(P.convert(P.ne(x, 0.0), t.dtype), axes)
    elif ord == 1:
        out = P.reduce_sum(a, axes)
    else:
        if ord == 2:
            powered = P.mul(x, x)
        else:   # |x|^p with zero derivative at x = 0 (torch masks those), value 0 or inf there
            nonzero = P.ne(a, 0.0)      # not gt: a NaN must stay NaN
            powered = P.where(nonzero, P.pow_(P.where(nonzero, a, 1.0), float(ord)),
                              0.0 if ord > 0 else math.inf)
        s = P.reduce_sum(powered, axes)
        if ord < 0:
            out = P.pow_(s, 1.0 / ord)
        else:
            positive = P.ne(s, 0.0)     # s >= 0 or NaN, which must propagate
            safe = P.where(positive, s, 1.0)
            root = P.sqrt(safe) if ord == 2 else P.pow_(safe, 1.0 / ord)
            out = P.where(positive, root, 0.0)
    return _keep(out, t.shape, axes, keepdim)


# ---------------------------------------------------------------- distances, hypot

def _safe_root(s, p):
    """s ** (1/p) with a zero derivative at s == 0 (torch's norm/cdist backward convention);
    s >= 0 or NaN, and a NaN propagates (value and derivative), so the test is s != 0."""
    t = _t(s)
    pos = P.ne(s, 0.0)
    safe = P.where(pos, s, P.full(t.shape, 1.0, t.dtype, t.device))
    r = P.sqrt(safe) if p == 2 else P.pow_(safe, 1.0 / p)
    return P.where(pos, r, _zeros(t))


@register(aten._cdist_forward.default)
def _cdist(x1, x2, p, compute_mode=None):
    t1, t2 = _t(x1), _t(x2)
    dtype = result_type(x1, x2)
    batch = static_broadcast_shapes((tuple(t1.shape[:-2]), tuple(t2.shape[:-2])))
    n1, n2, m = t1.shape[-2], t2.shape[-2], t1.shape[-1]
    full = batch + (n1, n2, m)
    nb = len(batch)
    a = P.broadcast_in_dim(P.broadcast_to(P.convert(x1, dtype), batch + (n1, m)), full,
                           tuple(range(nb)) + (nb, nb + 2))
    b = P.broadcast_in_dim(P.broadcast_to(P.convert(x2, dtype), batch + (n2, m)), full,
                           tuple(range(nb)) + (nb + 1, nb + 2))
    signed = P.sub(a, b)
    diff = P.abs_(signed)
    last = (len(full) - 1,)
    if p == 0:      # the count of differing coordinates; nan where one is nan (as torch)
        nonzero = P.convert(P.ne(diff, 0.0), dtype)
        return P.reduce_sum(P.where(P.ne(diff, diff), diff, nonzero), last)
    if p == math.inf:
        return P.reduce_max(diff, last)
    if p == 1:
        return P.reduce_sum(diff, last)
    if p == 2:      # the difference squared, not |difference| squared: abs's derivative is 0
        # at 0, which zeroed the Hessian of cdist ** 2 along coordinates where the points agree
        return _safe_root(P.reduce_sum(P.mul(signed, signed), last), 2)
    return _safe_root(P.reduce_sum(P.pow_(diff, float(p)), last), p)


@register(aten._euclidean_dist.default)
def _euclidean_dist(x1, x2):
    """torch.cdist's matrix-product form (p = 2 with more than 25 rows): torch's arithmetic,
    sqrt(max([-2 x1, |x1|^2, 1] @ [x2, 1, |x2|^2]^T, 0)), with the root's derivative 0 where the
    distance is 0 (torch's _euclidean_dist_backward masks it); the decomposition's sqrt gave
    nan gradients for every pair of equal points."""
    t1, t2 = _t(x1), _t(x2)
    n1, n2 = tuple(t1.shape[:-1]) + (1,), tuple(t2.shape[:-1]) + (1,)
    last = (t1.ndim - 1,)
    sq1 = P.reshape(P.reduce_sum(P.mul(x1, x1), last), n1)
    sq2 = P.reshape(P.reduce_sum(P.mul(x2, x2), last), n2)
    a = P.concatenate([P.mul(x1, -2.0), sq1, P.full(n1, 1.0, t1.dtype, t1.device)], t1.ndim - 1)
    b = P.concatenate([x2, P.full(n2, 1.0, t2.dtype, t2.device), sq2], t2.ndim - 1)
    return _safe_root(P.max_(P.matmul(a, P.moveaxis(b, t2.ndim - 1, t2.ndim - 2)), 0.0), 2)


@register(prims_ns.hypot.default, aten.hypot.default)
def _hypot(a, b):
    dtype = result_type(a, b, kind=KIND.INT_TO_FLOAT)
    a, b = prepare((a, b), dtype, broadcast_shapes(a, b))
    # sqrt(a² + b²) overflows for |a| > ~1e19 in float32 and underflows for |a| < ~1e-19;
    # there (only) it is m * sqrt(1 + (n / m)²), m = max(|a|, |b|), n = min: the same
    # function. Elsewhere the plain form, whose derivatives of every order are torch's (abs
    # and max would lose the second derivative at a = 0 or |a| = |b|; at (0, 0) the first is
    # nan, as torch's a / hypot(a, b)). An infinite operand gives inf even beside a nan (IEEE).
    plain = P.sqrt(P.add(P.mul(a, a), P.mul(b, b)))
    aa, bb = P.abs_(a), P.abs_(b)
    m, n = P.max_(aa, bb), P.min_(aa, bb)
    tiny = math.sqrt(torch.finfo(dtype).tiny)
    r = P.div(n, P.where(P.eq(m, 0.0), 1.0, m))
    scaled = P.mul(m, P.sqrt(P.add(P.mul(r, r), 1.0)))
    rescale = P.bitwise_or(P.eq(plain, float("inf")), P.bitwise_and(P.lt(plain, tiny), P.gt(m, 0.0)))
    h = P.where(rescale, scaled, plain)
    return P.where(P.bitwise_or(P.eq(aa, float("inf")), P.eq(bb, float("inf"))), float("inf"), h)


# ---------------------------------------------------------------- finite derivatives at the edges
# torch's derivative formulas return 0 at points where the composite formula gives 0/0:
# std of constant data, sinc at 0.

def _safe_sqrt(v):
    """sqrt with derivative 0 (not inf*0 = nan) where v == 0; a NaN v stays NaN."""
    positive = P.ne(v, 0.0)
    return P.where(positive, P.sqrt(P.where(positive, v, 1.0)), 0.0)


def _float_only(x, what="std and var"):
    """torch's check (functx computed std/var of integer tensors)."""
    if not _t(x).dtype.is_floating_point:
        raise RuntimeError(f"{what} only support floating point and complex dtypes")


def _variance(x, dim, correction, keepdim, finish):
    """finish(variance) over dims, as aten's var/std: prims.var's form (torch's decomposition
    squared values above ~1e19 in float32: inf), computed in the upcast dtype."""
    _float_only(x)
    t = _t(x)
    axes = _dims(dim, t.ndim) if t.ndim else ()
    xf, dtype = _upcast(x)
    v = _prims_var(xf, axes, 1 if correction is None else correction)
    return _keep(P.convert(finish(v), dtype), t.shape, axes, keepdim)


@register(aten.std.correction)
def _std(x, dim=None, *, correction=None, keepdim=False):
    return _variance(x, dim, correction, keepdim, _safe_sqrt)


@register(aten.var.correction)
def _var(x, dim=None, *, correction=None, keepdim=False):
    return _variance(x, dim, correction, keepdim, lambda v: v)


@register(aten.var_mean.correction)
def _var_mean(x, dim=None, *, correction=None, keepdim=False):
    _float_only(x, "var_mean")
    t = _t(x)
    axes = _dims(dim, t.ndim) if t.ndim else ()
    mean = P.div(P.reduce_sum(x, axes), float(math.prod(t.shape[a] for a in axes)))
    return _var(x, dim, correction=correction, keepdim=keepdim), _keep(mean, t.shape, axes, keepdim)


@register(aten.std_mean.correction)
def _std_mean(x, dim=None, *, correction=None, keepdim=False):
    """(std, mean), std with std's zero derivative on constant data (torch's decomposition
    through var_mean and sqrt gave nan there, for the mean's cotangent too)."""
    _float_only(x, "std_mean")
    t = _t(x)
    axes = _dims(dim, t.ndim) if t.ndim else ()
    mean = P.div(P.reduce_sum(x, axes), float(math.prod(t.shape[a] for a in axes)))
    return (_std(x, dim, correction=correction, keepdim=keepdim), _keep(mean, t.shape, axes, keepdim))


@register(aten.sinc.default)
def _sinc(x):
    """sin(pi x) / (pi x); near 0 its Maclaurin series, so that derivatives of every order up
    to 7 are right at and near 0 (sinc''(0) = -pi^2/3; a where-guarded 1 gives 0 there)."""
    x = P.convert(x, float_dtype_of(x))
    px = P.mul(x, math.pi)
    small = P.lt(P.abs_(px), 1e-2)       # series truncation error < 1e-20 there
    near = P.where(small, px, 0.0)      # the series only sees small values: at |x| ~ 1e10 its
    u = P.mul(near, near)               # powers overflow, and inf * 0 made the derivative nan
    series = P.add(1.0, P.mul(u, P.add(-1.0 / 6, P.mul(u, P.add(1.0 / 120, P.mul(u, -1.0 / 5040))))))
    safe = P.where(small, 1.0, px)
    return P.where(small, series, P.div(P.sin(safe), safe))


# ---------------------------------------------------------------- nested-tensor fast path

@register_special(aten._nested_tensor_from_mask_left_aligned.default)
def _mask_left_aligned(src, mask):
    """TransformerEncoder's mask check (enable_nested_tensor=True), asked before its nested
    fast path: False, so the module runs its ordinary path on traced tensors (as under
    torch.func, or where an input requires grad); the fast path would be refused anyway (its
    arguments have __torch_function__). It returned a bool where a tensor was expected."""
    return False


# ---------------------------------------------------------------- batch norm
# Running statistics are updated like the ATen kernel does: with stop-gradient values, as
# a functionalized write when the buffer is traced, and concretely (as torch.func does)
# when it is a plain module buffer and the value is concrete (eager transforms).

_PLAIN_BUFFER = (torch.Tensor, torch.nn.Parameter)


def _update_buffer(buf, new, op):
    value = P.stop_gradient(unwrap(new))
    batching = _vmap_batching(buf, value)
    if batching is not None:
        raise BatchingError(
            f"functx: {op} in training mode under vmap computes per-example running statistics, but "
            f"the running_mean/running_var buffers it would update are not batched by that vmap "
            f"({batching!r}); torch.func raises here too. Use the module in eval mode, construct it "
            "with track_running_stats=False (functx.func.replace_all_batch_norm_modules_ does this to "
            "a model), or pass the buffers batched (in_axes=0) as inputs.")
    if isinstance(buf, TracerTensor):
        write(buf, value)
        return
    try:
        c = concrete(value)
    except FunctxError as e:
        raise FunctxError(
            f"functx: {op} in training mode updates running statistics held in plain tensors (module "
            "buffers), but the new value is not concrete here (under jit or vmap). Pass the buffers "
            "as inputs, e.g. functional_call(model, {**params, **buffers}, x), use the module in eval "
            "mode, or construct it with track_running_stats=False.") from e
    with torch.no_grad():
        buf.copy_(c)


def _vmap_batching(buf, value):
    """The vmap trace over which `value` is batched while the buffer `buf` is not (a wrapper
    from outside that vmap, or a plain tensor), else None. Walks the value's tracer chain
    (grad and jvp tracers carry their primal, a BatchTracer its per-batch value)."""
    home = unwrap(buf)
    home_trace = home._trace if isinstance(home, Tracer) else None
    for v in tracer_chain(value):
        if getattr(v, "bdim", None) is not None and v._trace.axis is not None and (
                home_trace is None or not is_ancestor(v._trace, home_trace)):
            return v._trace
    return None


@register_special(aten.native_batch_norm.default)
def _native_batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps):
    if not training and staging():
        # Eval mode under jit: the statistics are read by the graph on every call, not
        # computed from at trace time. The eager kernel updates them in training mode without
        # bumping their version (native_batch_norm's schema does not mark them written), so a
        # trace-time copy guarded by the version went stale after an eager training step.
        running_mean, running_var = (TracerTensor(t) if type(t) in _PLAIN_BUFFER else t
                                     for t in (running_mean, running_var))
    rows = _batch_norm_rows(input, weight, bias, running_mean, running_var, training, momentum, eps)
    out, save_mean, save_rstd, new_mean, new_var = rows if rows is not None else native_batch_norm_helper(
        input, weight, bias, running_mean, running_var, training, momentum, eps, functional=True)
    if training:
        for buf, new in ((running_mean, new_mean), (running_var, new_var)):
            if buf is not None:
                _update_buffer(buf, new, "batch_norm")
    return out, save_mean, save_rstd


def _batch_norm_rows(input, weight, bias, running_mean, running_var, training, momentum, eps):
    """Training-mode batch norm on eager levels as torch's batch-norm kernels
    (prims/fused_norm.normalize_channels: each channel's values one row, against the
    decomposition's ~10 kernels forward and ~15 backward). None where torch's decomposition
    serves (staged graphs, other dtypes, mismatched parameters)."""
    t = input.dtype if isinstance(input, TracerTensor) else None
    if not (training and t in (torch.float32, torch.float64) and fused_here() and input.dim() >= 2
            and input.numel()):
        return None
    c = input.shape[1]
    if not all(p is None or (isinstance(p, torch.Tensor) and tuple(p.shape) == (c,) and p.dtype == t)
               for p in (weight, bias, running_mean, running_var)):
        return None
    x = unwrap(input)
    shape = tuple(input.shape)
    n = math.prod(shape) // c
    if weight is not None and bias is not None:         # the affine inside the kernels
        out, mean, rstd = normalize_affine(x, unwrap(weight), unwrap(bias), eps, True)
    else:
        out, mean, rstd = normalize_channels(x, eps)
        if weight is not None:
            out = P.mul(out, P.broadcast_in_dim(unwrap(weight), shape, (1,)))
        if bias is not None:
            out = P.add(out, P.broadcast_in_dim(unwrap(bias), shape, (1,)))
    new_mean = new_var = None
    if running_mean is not None:
        new_mean = wrap(P.add(P.mul(mean, float(momentum)), P.mul(unwrap(running_mean), 1.0 - momentum)))
    if running_var is not None:         # the unbiased batch variance, two-pass as the decomposition's
        centered = P.sub(P.stop_gradient(x), P.broadcast_in_dim(P.stop_gradient(mean), shape, (1,)))
        others = tuple(i for i in range(len(shape)) if i != 1)
        var = P.div(P.reduce_sum(P.mul(centered, centered), others), float(max(n - 1, 0)) or math.nan)
        new_var = wrap(P.add(P.mul(var, float(momentum)), P.mul(unwrap(running_var), 1.0 - momentum)))
    return wrap(out), wrap(mean), wrap(rstd), new_mean, new_var


@register_special(aten._native_batch_norm_legit.default)
def _native_batch_norm_legit(input, weight, bias, running_mean, running_var, training, momentum, eps):
    return _native_batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps)


@register_special(aten._native_batch_norm_legit.no_stats)
def _native_batch_norm_legit_no_stats(input, weight, bias, training, momentum, eps):
    return _native_batch_norm(input, weight, bias, None, None, training, momentum, eps)


@register_special(aten._native_batch_norm_legit_no_training.default)
def _native_batch_norm_legit_no_training(input, weight, bias, running_mean, running_var, momentum, eps):
    return _native_batch_norm(input, weight, bias, running_mean, running_var, False, momentum, eps)


# ---------------------------------------------------------------- nll_loss
# Native, the same computation as torch._decomp's _nll_loss_forward (so the same values and
# derivatives) on lax values: the decomposition runs ~15 ATen ops on wrappers, each through the
# whole dispatch path, and every eager cross_entropy reaches it.

_NLL_NONE, _NLL_MEAN, _NLL_SUM = 0, 1, 2


@register(aten.nll_loss_forward.default)
def _nll_loss_forward(x, target, weight, reduction, ignore_index):
    # (torch's kernel checks raise RuntimeError, not the decomposition's AssertionError)
    t, tt = _t(x), _t(target)
    if not 0 < t.ndim <= 2:
        raise RuntimeError(f"input tensor should be 1D or 2D, got {t.ndim}D")
    if tt.ndim > 1:
        raise RuntimeError(f"0D or 1D target tensor expected, multi-target not supported, got {tt.ndim}D")
    if not (t.ndim == 1 and tt.ndim == 0) and t.shape[0] != tt.shape[0]:
        raise RuntimeError(f"size mismatch (got input: {list(t.shape)}, target: {list(tt.shape)})")
    if weight is not None and not (_t(weight).ndim == 1 and _t(weight).numel == t.shape[-1]):
        raise RuntimeError(f"weight tensor should be defined either for all {t.shape[-1]} classes or no "
                           f"classes but got weight tensor of shape: {torch.Size(_t(weight).shape)}")
    channel = 1 if t.ndim > 1 else 0
    if weight is not None:
        w = P.broadcast_in_dim(P.convert(weight, result_type(x, weight)), t.shape, (channel,))
        x = P.mul(P.convert(x, _t(w).dtype), w)
    if weight is None:
        # the loss as one primitive (torch's kernel under eager transforms: prims/fused.py);
        # total_weight as below (F.nll_loss and F.cross_entropy drop it, and so do their rules)
        xt = _t(x)
        loss = P.nll_loss(x, target, reduction, ignore_index)
        if reduction == _NLL_NONE and t.ndim > 1:
            return loss, P.full((), 0.0, xt.dtype, xt.device)
        return loss, P.nll_total_weight(target, ignore_index, xt.dtype)
    keep = P.ne(target, ignore_index)
    index_shape = tt.shape[:channel] + (1,)
    safe = P.reshape(P.where(keep, target, 0), index_shape)         # ignored targets read class 0
    result = P.where(keep, P.neg(P.reshape(P.take_along_axis(x, safe, channel), tt.shape)), 0.0)
    xt = _t(x)
    if reduction == _NLL_NONE and t.ndim > 1:
        return result, P.full((), 0.0, xt.dtype, xt.device)
    if weight is not None:
        picked = P.reshape(P.take_along_axis(w, safe, channel), tt.shape)
        total_weight = P.reduce_sum(P.where(keep, picked, 0.0), tuple(range(tt.ndim)))
    else:
        total_weight = P.convert(P.reduce_sum(P.convert(keep, torch.int64), tuple(range(tt.ndim))), xt.dtype)
    if reduction == _NLL_SUM:
        result = P.reduce_sum(result, tuple(range(tt.ndim)))
    elif reduction == _NLL_MEAN:
        result = P.div(P.reduce_sum(result, tuple(range(tt.ndim))), total_weight)
    return result, total_weight


# ---------------------------------------------------------------- binary_cross_entropy
# torch clamps the logs at -100 for the value and divides its derivative by
# max(x (1 - x), 1e-12), so saturated probabilities (sigmoid(20) is 1.0 in float32) give a
# finite loss and a finite derivative. torch._decomp's decomposition has the clamped value
# but differentiates through the clamp: 0 * inf = nan at x = 0 or 1, and 1/x instead of
# 1e12 below 1e-12. Here, where x (1 - x) >= 1e-12 the exact formula (every order of
# derivative exact); elsewhere torch's clamped value plus a term that is zero in value and
# whose derivative in x is torch's w (x - t) / 1e-12 (prims/fused_losses.bce_decomposed).
# (The target's derivative there is -(clamped log x - clamped log(1 - x)): torch's
# -logit(x), except that it stays finite, 100, at x exactly 0 or 1, where torch's is inf.)
# On eager levels, without weights: torch's kernels (prims/fused_losses.py).

@register_special(aten.binary_cross_entropy.default)
def _binary_cross_entropy(input, target, weight=None, reduction=1):
    if (weight is None and isinstance(target, torch.Tensor) and input.dtype in (torch.float32, torch.float64)
            and target.dtype == input.dtype and target.shape == input.shape and fused_here()):
        # eager levels: torch's kernels (prims/fused_losses.py), their range checks included
        return wrap(binary_cross_entropy(unwrap(input), unwrap(target), reduction))
    compute = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
    x, t = input.to(compute), target.to(compute)
    for name, v in (("input", x), ("target", t)):   # torch's kernel's checks (NaN fails them too);
        # under jit and vmap they run with the graph (fallback._run_check)
        if isinstance(v, torch.Tensor) and v.numel():
            torch._assert_async(((v >= 0) & (v <= 1)).all(), f"all elements of {name} should be between 0 and 1")
    if not isinstance(t, torch.Tensor):
        t = torch.full_like(x, float(t))
    loss = wrap(bce_decomposed(unwrap(x), unwrap(t), reduction=0))     # (prims/fused_losses.py)
    if weight is not None:
        loss = loss * weight
    if reduction == 1:
        loss = loss.mean()
    elif reduction == 2:
        loss = loss.sum()
    return loss.to(input.dtype)


# ---------------------------------------------------------------- huber / smooth_l1
# torch's decompositions square |x - y| (0.5 * z * z): through abs, whose derivative at 0 is
# 0, the Hessian at x == y was 0 where torch's formulas (and the function) give 1 / beta.
# The difference itself squared is the same value with every derivative right. At
# |x - y| == delta huber takes the quadratic branch, as torch's backward and double-backward
# formulas do (the residual clamped to [-delta, delta]; the Hessian there is 1 / n, where the
# linear branch gave 0); smooth_l1's double backward takes the linear one (|x - y| < beta).
# The formulas are prims/fused_losses.py's (with torch's kernels on eager levels).

def _regression_loss(loss, input, target, reduction, value):
    """loss (prims/fused_losses.py: torch's kernels on eager levels, else its elementwise
    formula) of input and target broadcast together, in the dtype torch computes in."""
    compute = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
    x, t = torch.broadcast_tensors(input.to(compute), target.to(compute))
    return wrap(loss(unwrap(x), unwrap(t), reduction, value)).to(input.dtype)


@register_special(aten.huber_loss.default)
def _huber_loss(input, target, reduction=1, delta=1.0):
    if not (isinstance(input, torch.Tensor) and isinstance(target, torch.Tensor)) or not delta > 0:
        return NotImplemented       # torch's decomposition and its checks
    return _regression_loss(huber_loss, input, target, reduction, delta)


@register_special(aten.smooth_l1_loss.default)
def _smooth_l1_loss(input, target, reduction=1, beta=1.0):
    if not (isinstance(input, torch.Tensor) and isinstance(target, torch.Tensor)) or not beta >= 0:
        return NotImplemented
    return _regression_loss(smooth_l1_loss, input, target, reduction, beta)


# ---------------------------------------------------------------- Gamma draws
# torch._standard_gamma(alpha) (Gamma, Chi2, StudentT rsample): drawn once from alpha with no
# derivative path (the opaque fallback, as before), then given alpha's derivative by implicit
# reparameterization at that sample (prims/opaque.sample_reparam with torch's
# _standard_gamma_grad). Through the fallback alone, the rules ran the sampler again and took
# the derivative at another sample.

_DRAWING_GAMMA = [False]
_GAMMA_SLOPE = OpaqueFunction(lambda alpha, sample: (torch._standard_gamma_grad(alpha, sample),),
                              "aten._standard_gamma_grad")


@register_special(aten._standard_gamma.default)
def _standard_gamma(alpha, generator=None):
    if _DRAWING_GAMMA[0]:
        return NotImplemented           # the draw itself: the general path (the opaque fallback)
    _DRAWING_GAMMA[0] = True
    try:
        sample = torch._standard_gamma(alpha.detach(), generator=generator)
    finally:
        _DRAWING_GAMMA[0] = False
    return wrap(sample_reparam(unwrap(alpha), unwrap(sample), _GAMMA_SLOPE))


# ---------------------------------------------------------------- multilabel_margin_loss
# Not torch._decomp's decomposition, which is wrong whenever a target row ends early (a -1):
# it masks the classes i that are targets but not the target slots j after the -1, which then
# add hinge terms for class 0 (tidx0 reads 0 there), and it gives a 1-D input's unreduced loss
# shape (1,) instead of (). Here the same computation with both fixed; the hinge is zero
# where 1 - x[y_j] + x[i] <= 0 with derivative 0 there, as torch's kernel and backward.

@register_special(aten.multilabel_margin_loss_forward.default)
def _multilabel_margin_loss_forward(input, target, reduction):
    orig_input_shape, orig_target_shape = tuple(input.shape), tuple(target.shape)
    input, target = torch.atleast_2d(input), torch.atleast_2d(target)
    dim = input.shape[1]
    torch._check(len(orig_input_shape) <= 2 and dim != 0, lambda: "Expected non-empty vector or matrix with "
                 f"optional 0-dim batch size, but got: {list(orig_input_shape)}")
    torch._check(orig_target_shape == orig_input_shape, lambda: f"inconsistent target size: "
                 f"{list(orig_target_shape)} for input of size: {list(orig_input_shape)}")
    idx = torch.arange(dim, device=target.device)
    end = torch.amin(torch.where(target == -1, idx, dim), dim=-1, keepdim=True)
    slot = idx < end                                            # [N, j]: y_j is a target (before the -1)
    u = torch.gather(input, -1, torch.where(slot, target, 0))   # [N, j]: x[y_j]
    is_target = torch.any(idx == torch.where(slot, target, -1).unsqueeze(-1), dim=1)   # [N, i]
    z = 1.0 - u.T.unsqueeze(-1) + input                         # [j, N, i]
    z = torch.where(z > 0, z, 0.0) / dim
    z = torch.where(is_target | ~slot.T.unsqueeze(-1), 0.0, z)
    per_row = z.sum(dim=(0, -1))
    if reduction == 1:
        loss = per_row.mean()
    elif reduction == 2:
        loss = per_row.sum()
    else:
        loss = per_row if len(orig_input_shape) == 2 else per_row.reshape(())
    return loss, is_target.to(input.dtype).reshape(orig_target_shape)


# ---------------------------------------------------------------- ATen's CPU flash attention
# nn.MultiheadAttention (and TransformerEncoderLayer) run F.multi_head_attention_forward with
# torch functions disabled, so its SDPA reaches dispatch as ATen's CPU flash op, whose
# decomposition (math attention) also imports sympy: the same primitive serves it, with its
# log-sum-exp as the op's second output.
@register_special(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default)
def _flash_attention_for_cpu(query, key, value, dropout_p=0.0, is_causal=False, *, attn_mask=None, scale=None):
    if not _fits(query, key, value, attn_mask, dropout_p, is_causal, False) or query.ndim != 4:
        return NotImplemented       # torch's decomposition (dispatch.py), as before
    bias, scale = bias_and_scale(query, attn_mask, scale)
    out, lse = attention(unwrap(query), unwrap(key), unwrap(value), unwrap(bias) if bias is not None else None,
                         bool(is_causal), float(scale), with_lse=True)
    return wrap(out), wrap(lse)
