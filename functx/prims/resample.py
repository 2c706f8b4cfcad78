"""upsample: torch's interpolation kernels (F.interpolate's nearest, nearest-exact, linear,
bilinear, bicubic and trilinear modes) as one primitive, linear in its input.

    upsample(x, op, output_size, rest) -> (N, C, *output_size)
    upsample_backward(ct, op, input_size, output_size, rest) -> (N, C, *input_size)

op names the ATen kernel (`upsample_bilinear2d`, `_upsample_nearest_exact1d`, ...), rest its
arguments after output_size (align_corners where the mode has one, the scales), passed as
given so the sampling positions are eager torch's. The transpose is the op's `_backward`
kernel, and that one's transpose the op: each is the other's, both linear, so the jvp of
either is itself. Eager transforms bind them where they bind the fused primitives
(prims/fused.py); torch._decomp's decomposition, which staged graphs keep, gathers the
corners with index arithmetic: ~60 kernels for a bilinear upsample and its transpose where
torch runs two.

The decomposition here (`Primitive.composite`, for a rule bound at a graph that does not keep
fused primitives) uses that every mode interpolates each spatial dim on its own: the op
applied to a one-hot basis along one dim gives that dim's (out, in) interpolation matrix, and
the upsample is one product with it per spatial dim.
"""
from __future__ import annotations

import functools

import torch

from ..core import EXTERN, Primitive, UndefinedPrimal, Zero
from ..core.trace import type_of
from ..core.types import TensorType
from . import elementwise as ew
from . import shape as sh
from .define import linear_first_jvp
from .fused import fused_or_decomposed
from .linalg import dot_general


def _kernel(op, backward=False):
    return getattr(torch.ops.aten, op + ("_backward" if backward else "")).default


def _n_flags(op):
    """1 where the op takes align_corners before its scales, else 0."""
    return 0 if "nearest" in op else 1


def _one_hot_basis(in_size, dim, dtype, device):
    """(k, 1, *spatial) one-hot inputs along spatial dim `dim` (k = in_size[dim]), every other
    spatial dim of size 1: an op that maps each dim on its own gives, applied to it, that
    dim's (k, out) matrix."""
    k = in_size[dim]
    shape = (k, 1) + tuple(k if i == dim else 1 for i in range(len(in_size)))
    return torch.eye(k, dtype=dtype, device=device).reshape(shape)


def _per_dim_products(x, matrices, backward):
    """x mapped one spatial dim at a time by its (in, out) matrices (transposed: backward)."""
    for d, a in enumerate(matrices):
        x = dot_general(x, a, (((2 + d,), (1 if backward else 0,)), ((), ())))
        x = sh.moveaxis(x, type_of(x).ndim - 1, 2 + d)
    return x


@functools.lru_cache(maxsize=256)
def _matrix(op, in_size, out_size, dim, rest, dtype, device):
    """The (in, out) interpolation matrix of spatial dim `dim` (every other dim's scale
    dropped: 1 to 1 is the identity whatever the mode)."""
    flags, scales = rest[:_n_flags(op)], rest[_n_flags(op):]
    sizes = [out_size[dim] if i == dim else 1 for i in range(len(in_size))]
    kept = tuple(s if i == dim else None for i, s in enumerate(scales))
    return _kernel(op)(_one_hot_basis(in_size, dim, dtype, device), sizes, *flags, *kept).reshape(
        in_size[dim], out_size[dim])


def _resampled(x, op, in_size, out_size, rest, backward):
    xt = type_of(x)
    return _per_dim_products(x, [_matrix(op, tuple(in_size), tuple(out_size), d, tuple(rest), xt.dtype,
                                         torch.device(xt.device)) for d in range(len(in_size))], backward)


def _upsample_decomposed(x, *, op, output_size, rest):
    return _resampled(x, op, type_of(x).shape[2:], output_size, rest, False)


def _backward_decomposed(ct, *, op, input_size, output_size, rest):
    return _resampled(ct, op, input_size, output_size, rest, True)


def _fold(x, d, size):
    """x with its batch dim (d) folded into N: (B*N, C, *spatial)."""
    x = sh.bdim_to_front(x, d, size)
    shape = type_of(x).shape
    return sh.reshape(x, (shape[0] * shape[1],) + tuple(shape[2:]))


def _unfold(y, size):
    shape = type_of(y).shape
    return sh.reshape(y, (size, shape[0] // size) + tuple(shape[1:])), 0


def _spatial_linear(prim):
    """prim, a linear map of (N, C, *spatial), with its jvp (itself on the tangent) and batch
    rule (the examples folded into N)."""
    def batch(axis_data, vals, dims, **params):
        return _unfold(prim.bind(_fold(vals[0], dims[0], axis_data.size), **params), axis_data.size)
    prim.jvp, prim.batch = linear_first_jvp(prim), batch
    return prim


def _upsample_transpose(ct, x, *, op, output_size, rest):
    assert isinstance(x, UndefinedPrimal)
    if isinstance(ct, Zero):
        return [None]
    return [upsample_backward_p.bind(ct, op=op, input_size=tuple(x.aval.shape[2:]), output_size=output_size,
                                     rest=rest)]


def _backward_transpose(g, ct, *, op, input_size, output_size, rest):
    if isinstance(g, Zero):
        return [None]
    return [upsample_p.bind(g, op=op, output_size=output_size, rest=rest)]


upsample_p = _spatial_linear(Primitive(
    "upsample", kind=EXTERN,
    abstract_eval=lambda t, *, op, output_size, rest: TensorType(tuple(t.shape[:2]) + tuple(output_size), t.dtype,
                                                                 t.device),
    impl=lambda x, *, op, output_size, rest: _kernel(op)(x, list(output_size), *rest),
    transpose=_upsample_transpose,
    composite=_upsample_decomposed))

upsample_backward_p = _spatial_linear(Primitive(
    "upsample_backward", kind=EXTERN,
    abstract_eval=lambda t, *, op, input_size, output_size, rest: TensorType(
        tuple(t.shape[:2]) + tuple(input_size), t.dtype, t.device),
    impl=lambda ct, *, op, input_size, output_size, rest: _kernel(op, True)(
        ct, list(output_size), list(ct.shape[:2]) + list(input_size), *rest),
    transpose=_backward_transpose,
    composite=_backward_decomposed))


def upsample(x, op, output_size, rest):
    """torch's `op` interpolation kernel of a float (N, C, *spatial) x: the primitive where the
    trace binds fused primitives, else its decomposition (module docstring)."""
    return fused_or_decomposed(upsample_p, _upsample_decomposed, x, op=op, output_size=tuple(output_size),
                               rest=tuple(rest))


# ---------------------------------------------------------------- average pooling, reflect and replicate padding
# spatial_map: avg_pool2d/3d, adaptive average pooling, reflection_pad and replication_pad
# (F.pad's reflect and replicate modes): linear as upsampling is, torch's kernel and its
# backward kernel (which reads only the input's size: it gets a one-element stand-in), each
# the other's transpose. The decomposition is again one product per spatial dim: each maps
# every dim on its own (an average pool's divisor, count_include_pad or not, is a product of
# per-dim counts; a divisor_override divides per-dim sums; a pad reflects or clamps each dim).

def _pool_call(op, x, args):
    return _kernel(op)(x, *args)


def _pool_backward_call(op, ct, input_shape, args):
    stand_in = ct.new_empty(()).expand(input_shape)
    return _kernel(op, True)(ct, stand_in, *(() if op.startswith("_adaptive") else args))


def _is_pad(op):
    return op.startswith(("reflection_pad", "replication_pad"))


def _pool_type(t, *, op, args):
    out = _pool_call(op, torch.empty(tuple(t.shape), dtype=t.dtype, device="meta"), args)
    return TensorType(tuple(out.shape), t.dtype, t.device)


def _pool_args_along(op, args, dim, n):
    """args for dim `dim` alone (every other spatial dim of size 1 left as it is), and the
    divisor to apply after (a divisor_override: per-dim sums, then one division)."""
    if op.startswith("_adaptive"):
        return ([args[0][i] if i == dim else 1 for i in range(n)],), 1.0
    if _is_pad(op):         # torch's order: the last dim's (left, right) first
        pad = list(args[0])
        return ([pad[j] if j // 2 == n - 1 - dim else 0 for j in range(2 * n)],), 1.0
    kernel, stride, padding, ceil_mode, count_include_pad, override = args
    along = ([kernel[i] if i == dim else 1 for i in range(n)], [stride[i] if i == dim else 1 for i in range(n)],
             [padding[i] if i == dim else 0 for i in range(n)], ceil_mode, count_include_pad,
             1 if override else None)
    return along, float(override) if override else 1.0


@functools.lru_cache(maxsize=256)
def _pool_matrix(op, in_size, dim, args, dtype, device):
    along, _ = _pool_args_along(op, args, dim, len(in_size))
    out = _pool_call(op, _one_hot_basis(in_size, dim, dtype, device), along)
    return out.reshape(in_size[dim], out.shape[2 + dim])


def _pool_resampled(x, op, in_size, args, backward):
    xt = type_of(x)
    x = _per_dim_products(x, [_pool_matrix(op, tuple(in_size), d, args, xt.dtype, torch.device(xt.device))
                              for d in range(len(in_size))], backward)
    _, divisor = _pool_args_along(op, args, 0, len(in_size))
    return x if divisor == 1.0 else ew.div(x, divisor)


def _pool_decomposed(x, *, op, args):
    return _pool_resampled(x, op, type_of(x).shape[2:], args, False)


def _pool_backward_decomposed(ct, *, op, input_size, args):
    return _pool_resampled(ct, op, input_size, args, True)


def _pool_transpose(ct, x, *, op, args):
    return [None if isinstance(ct, Zero) else
            spatial_map_backward_p.bind(ct, op=op, input_size=tuple(x.aval.shape[2:]), args=args)]


def _pool_backward_transpose(g, ct, *, op, input_size, args):
    return [None if isinstance(g, Zero) else spatial_map_p.bind(g, op=op, args=args)]


spatial_map_p = _spatial_linear(Primitive(
    "spatial_map", kind=EXTERN,
    abstract_eval=_pool_type,
    impl=lambda x, *, op, args: _pool_call(op, x, args),
    transpose=_pool_transpose,
    composite=_pool_decomposed))

spatial_map_backward_p = _spatial_linear(Primitive(
    "spatial_map_backward", kind=EXTERN,
    abstract_eval=lambda t, *, op, input_size, args: TensorType(tuple(t.shape[:2]) + tuple(input_size), t.dtype,
                                                                t.device),
    impl=lambda ct, *, op, input_size, args: _pool_backward_call(op, ct, tuple(ct.shape[:2]) + tuple(input_size),
                                                                 args),
    transpose=_pool_backward_transpose,
    composite=_pool_backward_decomposed))


def spatial_map(x, op, args):
    """torch's `op` (avg_pool2d/3d, _adaptive_avg_pool2d/3d, reflection_pad1d-3d,
    replication_pad1d-3d, with their arguments after the input) of a float (N, C, *spatial) x."""
    return fused_or_decomposed(spatial_map_p, _pool_decomposed, x, op=op, args=tuple(args))
