"""Reductions: sum, mean, extrema and their indices, prod, any/all, and the cumulative
ops (cumsum native; cummax/cummin/logcumsumexp as masked O(n^2) reductions)."""
from __future__ import annotations

import math

import torch

from ... import prims as P
from ...core.trace import concrete, tracer_chain
from ...prims import debug_callback
from ..functionalize import unwrap
from ..tensor import TracerTensor
from .common import _as_bool, _dims, _keep, _opaque, _t, aten, wrap_dim
from .registry import register, register_special


# ---------------------------------------------------------------- reductions

def _reduce(reducer, x, dim, keepdim):
    """reducer over dim (None or [] = all dims), reduced dims kept as size 1 if keepdim."""
    t = _t(x)
    axes = _dims(dim, t.ndim) if t.ndim else ()
    return _keep(reducer(x, axes), t.shape, axes, keepdim)


def _sum_dtype(x, dtype):
    if dtype is not None:
        return P.convert(x, dtype)
    t = _t(x)
    if not (t.dtype.is_floating_point or t.dtype.is_complex):
        return P.convert(x, torch.int64)
    return x


@register(aten.sum.dim_IntList)
def _sum(x, dim=None, keepdim=False, dtype=None):
    return _reduce(P.reduce_sum, _sum_dtype(x, dtype), dim, keepdim)


@register(aten.sum.default)
def _sum_all(x, dtype=None):
    return _sum(x, None, False, dtype)


@register(aten.trace.default)
def _trace(x):
    """The sum of a matrix's diagonal (a strided slice of the flat matrix). Without this,
    torch._refs.trace ran, whose imports (sympy) cost seconds on a process's first trace."""
    t = _t(x)
    if t.ndim != 2:
        raise RuntimeError(f"trace: expected a matrix, but got tensor with dim {t.ndim}")
    n, m = t.shape
    flat = P.reshape(x, (n * m,))
    count = min(n, m)
    diag = P.slice_in_dim(flat, 0, (count - 1) * (m + 1) + 1 if count else 0, m + 1, 0)
    return _sum_all(diag)


@register(aten.mean.dim)
def _mean(x, dim=None, keepdim=False, dtype=None):
    if dtype is not None:
        x = P.convert(x, dtype)
    t = _t(x)
    axes = _dims(dim, t.ndim) if t.ndim else ()
    n = math.prod(t.shape[a] for a in axes)
    return _keep(P.div(P.reduce_sum(x, axes), torch.sym_float(n)), t.shape, axes, keepdim)


@register(aten.mean.default)
def _mean_all(x, dtype=None):
    return _mean(x, None, False, dtype)


@register(aten.logsumexp.default)
def _logsumexp(x, dim, keepdim=False):
    """log(sum(exp(x - m))) + m with the shift m = max(x) a constant (stop_gradient), as in
    torch's backward formula (the softmax) and JAX's logsumexp. torch's decomposition, which
    ran before, differentiates through its amax: that adds (1 - sum(softmax)) / ties on the
    argmax, zero in exact arithmetic, but a float32 rounding error of sum(softmax) (~1 ulp of
    1 over a large row) where the softmax itself is small: 4% off at the argmax of a 1e6-wide
    row, 0.3% for a 32k vocabulary."""
    t = _t(x)
    if not t.dtype.is_floating_point:
        x = P.convert(x, torch.get_default_dtype())
        t = _t(x)
    axes = _dims(dim, t.ndim) if t.ndim else ()
    if t.numel == 0:
        return _keep(P.log(P.reduce_sum(P.exp(x), axes)), t.shape, axes, keepdim)
    m = P.reduce_max(P.stop_gradient(x), axes)
    m = P.where(P.eq(P.abs_(m), math.inf), P.full(_t(m).shape, 0.0, t.dtype, t.device), m)
    kept = tuple(i for i in range(t.ndim) if i not in axes)
    s = P.reduce_sum(P.exp(P.sub(x, P.broadcast_in_dim(m, t.shape, kept))), axes)
    return _keep(P.add(P.log(s), m), t.shape, axes, keepdim)


def _require_nonempty(name, x, dim):
    """torch's check (and exception type): an extremum (or its index) of no elements does not exist."""
    t = _t(x)
    if dim is None or (isinstance(dim, (tuple, list)) and not dim):
        if t.numel == 0:
            raise (IndexError if name.startswith("arg") else RuntimeError)(f"{name}(): Expected reduction dim to be specified for input.numel() == 0. "
                               "Specify the reduction dim with the 'dim' argument.")
        return
    for d in (dim if isinstance(dim, (tuple, list)) else (dim,)):
        if t.ndim and t.shape[wrap_dim(d, t.ndim)] == 0:
            raise IndexError(f"{name}(): Expected reduction dim {d} to have non-zero size.")


def _extremum(name, reducer):
    def lower(x, dim=None, keepdim=False):
        _require_nonempty(name, x, dim)
        return _reduce(reducer, x, dim, keepdim)
    return lower


def _extremum_all(name, reducer):
    def lower(x):
        _require_nonempty(name, x, None)
        return reducer(x, tuple(range(_t(x).ndim)))
    return lower


register(aten.amax.default)(_extremum("amax", P.reduce_max))
register(aten.amin.default)(_extremum("amin", P.reduce_min))
register(aten.max.default)(_extremum_all("max", P.reduce_max))
register(aten.min.default)(_extremum_all("min", P.reduce_min))


def _arg(name, fn):
    def lower(x, dim=None, keepdim=False):
        _require_nonempty(name, x, dim)
        t = _t(x)
        if dim is None:
            out = fn(P.reshape(x, (t.numel,)), 0)
            return P.reshape(out, (1,) * t.ndim) if keepdim else out
        if t.ndim == 0:
            return P.full((), 0, torch.int64, t.device)
        d = wrap_dim(dim, t.ndim)
        return _keep(fn(x, d), t.shape, (d,), keepdim)
    return lower


register(aten.argmax.default)(_arg("argmax", P.argmax))
register(aten.argmin.default)(_arg("argmin", P.argmin))


@register(aten.prod.dim_int)
def _prod(x, dim, keepdim=False, dtype=None):
    return _reduce(P.reduce_prod, _sum_dtype(x, dtype), dim, keepdim)


@register(aten.prod.default)
def _prod_all(x, dtype=None):
    x = _sum_dtype(x, dtype)
    return P.reduce_prod(x, tuple(range(_t(x).ndim)))


def _bool_reduce(reducer, of_nothing):
    def lower(x, dim=None, keepdim=False):
        t = _t(x)
        # torch keeps uint8 for a uint8 input (0 or 1), bool for every other dtype
        dtype = torch.uint8 if t.dtype == torch.uint8 else torch.bool
        if t.numel == 0:     # any() of nothing is False, all() True (amax would raise)
            axes = _dims(dim, t.ndim) if t.ndim else ()
            shape = tuple(1 if i in axes else s for i, s in enumerate(t.shape) if keepdim or i not in axes)
            return P.full(shape, of_nothing, dtype, t.device)
        out = _reduce(reducer, _as_bool(x), dim, keepdim)
        return P.convert(out, dtype) if dtype != torch.bool else out
    return lower


register(aten.any.default, aten.any.dim, aten.any.dims)(_bool_reduce(P.reduce_max, False))
register(aten.all.default, aten.all.dim, aten.all.dims)(_bool_reduce(P.reduce_min, True))


@register(aten.cumsum.default)
def _cumsum(x, dim, dtype=None):
    x = _sum_dtype(x, dtype)
    t = _t(x)
    return P.cumsum(x, wrap_dim(dim, t.ndim)) if t.ndim else x


# ---------------------------------------------------------------- max/min over a dim: values at the index
# torch sends the gradient of max(dim)/min(dim) to the index it returns (amax/amin split it
# among ties); taking the values with a gather at that index gives exactly that.

def _extremum_at_index(name, arg):
    def lower(x, dim, keepdim=False):
        _require_nonempty(name, x, dim)
        t = _t(x)
        if t.ndim == 0:
            return x, P.full((), 0, torch.int64, t.device)
        d = wrap_dim(dim, t.ndim)
        # torch's max/min(dim) take bools (constraints' checks do), its argmax/argmin do not
        idx = arg(P.convert(x, torch.uint8) if t.dtype == torch.bool else x, d)
        kept = tuple(1 if i == d else s for i, s in enumerate(t.shape))
        vals = P.take_along_axis(x, P.reshape(idx, kept), d)
        if not keepdim:
            vals = P.reshape(vals, _t(idx).shape)
        return vals, _keep(idx, t.shape, (d,), keepdim)
    return lower


register(aten.max.dim)(_extremum_at_index("max", P.argmax))
register(aten.min.dim)(_extremum_at_index("min", P.argmin))


# ---------------------------------------------------------------- cumulative ops (masked, O(n^2) along the axis)

_CUM_BUDGET = 1 << 22      # elements of the masked (…, n, n) intermediate; above it: opaque


def _cum_masked(x, dim, fill):
    """x with `dim` moved last and expanded to (..., n_i, n_j), entries j > i set to fill."""
    t = _t(x)
    d = wrap_dim(dim, t.ndim)
    perm = tuple(i for i in range(t.ndim) if i != d) + (d,)
    xl = P.transpose(x, perm)
    shape = _t(xl).shape
    n = shape[-1]
    full = shape[:-1] + (n, n)
    xb = P.broadcast_in_dim(xl, full, tuple(range(len(shape) - 1)) + (len(shape),))
    mask = P.ge(P.iota(full, len(full) - 2, torch.int64, t.device), P.iota(full, len(full) - 1, torch.int64, t.device))
    return P.where(mask, xb, P.full(full, fill, t.dtype, t.device)), mask, perm


def _cum_restore(y, perm):
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return P.transpose(y, tuple(inv))


def _cum_too_big(x, dim):
    t = _t(x)
    return t.ndim == 0 or t.numel * t.shape[wrap_dim(dim, t.ndim)] > _CUM_BUDGET


def _cum_extremum(name, is_max):
    op = getattr(aten, name).default

    def lower(x, dim):
        t = _t(x)
        if _cum_too_big(x, dim) or t.dtype is torch.bool or t.numel == 0:
            if t.ndim == 0:
                return x, P.full((), 0, torch.int64, t.device)
            return _opaque(op, x, dim)
        fill = -math.inf if is_max else math.inf
        if not t.dtype.is_floating_point:
            info = torch.iinfo(t.dtype)
            fill = info.min if is_max else info.max
        masked, mask, perm = _cum_masked(x, dim, fill)
        best = (P.reduce_max if is_max else P.reduce_min)(masked, (len(perm),))
        full = _t(masked).shape
        hit = P.bitwise_and(mask, P.eq(masked, P.broadcast_in_dim(best, full, tuple(range(len(full) - 1)))))
        # torch picks the last position that attains the running extremum
        j = P.iota(full, len(full) - 1, torch.int64, t.device)
        idx = P.reduce_max(P.where(hit, j, P.full(full, -1, torch.int64, t.device)), (len(full) - 1,))
        if t.dtype.is_floating_point:    # torch: from a NaN on, the NaN (the last one seen) wins
            at_nan = P.reduce_max(P.where(P.ne(masked, masked), j, P.full(full, -1, torch.int64, t.device)),
                                  (len(full) - 1,))
            idx = P.where(P.ge(at_nan, 0), at_nan, idx)
        idx = _cum_restore(idx, perm)
        return P.take_along_axis(x, idx, wrap_dim(dim, t.ndim)), idx
    return lower


register(aten.cummax.default)(_cum_extremum("cummax", True))
register(aten.cummin.default)(_cum_extremum("cummin", False))


@register(aten.logcumsumexp.default)
def _logcumsumexp(x, dim):
    t = _t(x)
    if t.ndim == 0:
        return x
    if t.numel == 0 and t.dtype.is_floating_point:
        # nothing to compute (and no derivative: torch's backward formula reduces a max over
        # the empty dim and raised under grad/jvp)
        return P.add(x, 0.0)
    if _cum_too_big(x, dim) or not t.dtype.is_floating_point:
        return _opaque(aten.logcumsumexp.default, x, dim)
    masked, mask, perm = _cum_masked(x, dim, -math.inf)
    last = len(perm)
    full = _t(masked).shape
    m = P.reduce_max(P.stop_gradient(masked), (last,))
    m = P.where(P.eq(P.abs_(m), math.inf), P.full(_t(m).shape, 0.0, t.dtype, t.device), m)
    mb = P.broadcast_in_dim(m, full, tuple(range(len(full) - 1)))
    s = P.reduce_sum(P.exp(P.sub(masked, mb)), (last,))
    return _cum_restore(P.add(P.log(s), m), perm)


# ---------------------------------------------------------------- truth tests for Python
# torch._is_all_true(x) / _is_any_true(x) return a bool tensor that Python code then tests
# (`if not torch._is_all_true(valid): raise ValueError`): torch.distributions' argument
# validation, among others. Like torch.func's batching rule, the test covers every example
# under vmap (so Python gets one answer). Under jit the values are not known when f is
# traced: an all-true test is assumed to hold and checked each time the program runs (a
# failed check raises there, as the validation would have); an any-true test needs values.

def _truth_test(x, kind):
    if not isinstance(x, TracerTensor):
        v = x
    else:
        *_, v = tracer_chain(unwrap(x))    # the primal, every example: the values, if known
        if not isinstance(v, torch.Tensor):
            if kind == "any":
                v = concrete(unwrap(x))        # raises: Python needs the values here
            else:
                debug_callback(_check_all_true, unwrap(x))
                return torch.tensor(True, device=x.device)
    return torch.tensor(bool(v.all() if kind == "all" else v.any()), device=v.device)


def _check_all_true(value):
    if not bool(value.all()):
        raise ValueError("functx.jit: torch._is_all_true was False when the program ran; it was "
                         "assumed True when the function was traced (a validation check, e.g. a "
                         "torch.distributions argument constraint, failed)")


_check_all_true.size_free = True       # reads only its argument: symbolic traces may hold it


@register_special(aten._is_all_true.default)
def _is_all_true(x):
    return _truth_test(x, "all")


@register_special(aten._is_any_true.default)
def _is_any_true(x):
    return _truth_test(x, "any")
