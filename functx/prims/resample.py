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
from .fused import fused_or_decomposed
from .linalg import dot_general


def _kernel(op, backward=False):
    return getattr(torch.ops.aten, op + ("_backward" if backward else "")).default


def _n_flags(op):
    """1 where the op takes align_corners before its scales, else 0."""
    return 0 if "nearest" in op else 1


@functools.lru_cache(maxsize=256)
def _matrix(op, in_size, out_size, dim, rest, dtype, device):
    """The (in, out) interpolation matrix of spatial dim `dim`: the op applied to the one-hot
    basis of that dim, every other spatial dim of size 1 (its scale dropped: 1 to 1 is the
    identity whatever the mode)."""
    n = len(in_size)
    flags, scales = rest[:_n_flags(op)], rest[_n_flags(op):]
    k = in_size[dim]
    basis = torch.eye(k, dtype=dtype, device=device).reshape((k, 1) + tuple(k if i == dim else 1 for i in range(n)))
    sizes = [out_size[dim] if i == dim else 1 for i in range(n)]
    kept = tuple(s if i == dim else None for i, s in enumerate(scales))
    return _kernel(op)(basis, sizes, *flags, *kept).reshape(k, out_size[dim])


def _resampled(x, op, in_size, out_size, rest, backward):
    """x resampled one spatial dim at a time by the interpolation matrices (transposed for the
    backward)."""
    xt = type_of(x)
    for d in range(len(in_size)):
        a = _matrix(op, tuple(in_size), tuple(out_size), d, tuple(rest), xt.dtype, torch.device(xt.device))
        axis = 2 + d
        x = dot_general(x, a, (((axis,), (1 if backward else 0,)), ((), ())))
        x = sh.moveaxis(x, type_of(x).ndim - 1, axis)
    return x


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


def _upsample_batch(axis_data, args, dims, **params):
    return _unfold(upsample_p.bind(_fold(args[0], dims[0], axis_data.size), **params), axis_data.size)


def _backward_batch(axis_data, args, dims, **params):
    return _unfold(upsample_backward_p.bind(_fold(args[0], dims[0], axis_data.size), **params), axis_data.size)


def _linear_jvp(prim):
    def jvp(primals, tangents, **params):
        out = prim.bind(primals[0], **params)
        t = tangents[0]
        return out, Zero(type_of(out)) if isinstance(t, Zero) else prim.bind(t, **params)
    return jvp


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


upsample_p = Primitive(
    "upsample", kind=EXTERN,
    abstract_eval=lambda t, *, op, output_size, rest: TensorType(tuple(t.shape[:2]) + tuple(output_size), t.dtype,
                                                                 t.device),
    impl=lambda x, *, op, output_size, rest: _kernel(op)(x, list(output_size), *rest),
    transpose=_upsample_transpose,
    batch=_upsample_batch,
    composite=_upsample_decomposed)
upsample_p.jvp = _linear_jvp(upsample_p)

upsample_backward_p = Primitive(
    "upsample_backward", kind=EXTERN,
    abstract_eval=lambda t, *, op, input_size, output_size, rest: TensorType(
        tuple(t.shape[:2]) + tuple(input_size), t.dtype, t.device),
    impl=lambda ct, *, op, input_size, output_size, rest: _kernel(op, True)(
        ct, list(output_size), list(ct.shape[:2]) + list(input_size), *rest),
    transpose=_backward_transpose,
    batch=_backward_batch,
    composite=_backward_decomposed)
upsample_backward_p.jvp = _linear_jvp(upsample_backward_p)


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
    n = len(in_size)
    k = in_size[dim]
    basis = torch.eye(k, dtype=dtype, device=device).reshape((k, 1) + tuple(k if i == dim else 1 for i in range(n)))
    along, _ = _pool_args_along(op, args, dim, n)
    out = _pool_call(op, basis, along)
    return out.reshape(k, out.shape[2 + dim])


def _pool_resampled(x, op, in_size, args, backward):
    xt = type_of(x)
    for d in range(len(in_size)):
        a = _pool_matrix(op, tuple(in_size), d, args, xt.dtype, torch.device(xt.device))
        x = sh.moveaxis(dot_general(x, a, (((2 + d,), (1 if backward else 0,)), ((), ()))), type_of(x).ndim - 1, 2 + d)
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


spatial_map_p = Primitive(
    "spatial_map", kind=EXTERN,
    abstract_eval=_pool_type,
    impl=lambda x, *, op, args: _pool_call(op, x, args),
    transpose=_pool_transpose,
    batch=lambda axis_data, vals, dims, **params: _unfold(
        spatial_map_p.bind(_fold(vals[0], dims[0], axis_data.size), **params), axis_data.size),
    composite=_pool_decomposed)
spatial_map_p.jvp = _linear_jvp(spatial_map_p)

spatial_map_backward_p = Primitive(
    "spatial_map_backward", kind=EXTERN,
    abstract_eval=lambda t, *, op, input_size, args: TensorType(tuple(t.shape[:2]) + tuple(input_size), t.dtype,
                                                                t.device),
    impl=lambda ct, *, op, input_size, args: _pool_backward_call(op, ct, tuple(ct.shape[:2]) + tuple(input_size),
                                                                 args),
    transpose=_pool_backward_transpose,
    batch=lambda axis_data, vals, dims, **params: _unfold(
        spatial_map_backward_p.bind(_fold(vals[0], dims[0], axis_data.size), **params), axis_data.size),
    composite=_pool_backward_decomposed)
spatial_map_backward_p.jvp = _linear_jvp(spatial_map_backward_p)


def spatial_map(x, op, args):
    """torch's `op` (avg_pool2d/3d, _adaptive_avg_pool2d/3d, reflection_pad1d-3d,
    replication_pad1d-3d, with their arguments after the input) of a float (N, C, *spatial) x."""
    return fused_or_decomposed(spatial_map_p, _pool_decomposed, x, op=op, args=tuple(args))
