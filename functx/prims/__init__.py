"""The primitive set and its lax-style functions: the one home of the lax API (`P.add(x, y)`).

Modules by family, in dependency order (each imports only those before it; shape.py's
broadcast_in_dim transpose is the one deferred import, of reduce_sum):
  util, creation (full, iota), series (Taylor series arithmetic and rules), define (definer
  helpers), shape (views, pad, concatenate), elementwise, reduce, linalg (dot_general),
  indexing, fused (log_softmax, softmax, nll_loss, relu, gelu, their and tanh/sigmoid's derivatives:
  torch's kernels under eager transforms), fused_activations (leaky_relu, hardtanh, hardswish,
  hardsigmoid, elu, softplus, log_sigmoid as torch's kernels), fused_losses (binary_cross_entropy,
  huber_loss, smooth_l1_loss as torch's kernels), conv (and its weight cotangent as torch's kernel),
  pool (max pooling with indices), resample (F.interpolate's, average pooling's and
  reflect / replicate padding's kernels), random,
  collective (+ distributed, its torch.distributed calls), spmd (replicated-value corrections
  for functx.spmd), opaque, debug (debug_callback).
"""
from . import (util, creation, define, shape, elementwise, reduce, linalg, indexing, fused, fused_activations,  # noqa: F401
               fused_losses, conv, pool, resample)
from . import random as random_module, collective, spmd as spmd_module, opaque as opaque_module  # noqa: F401
from .creation import full, iota, zeros_like, zeros_like_type, instantiate  # noqa: F401
from .shape import (broadcast_in_dim, broadcast_to, reshape, transpose, slice_, slice_in_dim, pad,  # noqa: F401
                    concatenate, rev, moveaxis, bdim_to_front)
from .elementwise import (  # noqa: F401
    neg, exp, exp2, log, log1p, expm1, sin, cos, tan, tanh, asin, acos, atan, sinh, cosh, asinh, acosh,
    atanh, sqrt, rsqrt, abs_, logistic, erf, erfc, erfcx, entr, erfinv, lgamma, digamma, polygamma, bessel, sign, floor,
    ceil, round_, trunc, logical_not, bitwise_not, reciprocal, add, sub, mul, div, pow_, max_, min_, atan2, rem, xlogy, idiv,
    bitwise_and, bitwise_or, bitwise_xor, eq, ne, lt, le, gt, ge, where, convert, stop_gradient)
from .reduce import reduce_sum, reduce_max, reduce_min, reduce_prod, argmax, argmin, cumsum  # noqa: F401
from .linalg import dot_general, matmul  # noqa: F401
from .conv import conv, conv_p  # noqa: F401  (P.conv is the function)
from .indexing import take, scatter_add, scatter, update_slice, take_along_axis, scatter_add_along, sort, topk  # noqa: F401
from .fused import fused_here, gelu, log_softmax, nll_loss, nll_total_weight, relu, softmax  # noqa: F401
from .pool import max_pool  # noqa: F401
from .resample import spatial_map, upsample  # noqa: F401
from .collective import psum, pmax, all_gather, axis_index  # noqa: F401
from .random import random, random_p  # noqa: F401  (P.random is the function, like P.add)
from .opaque import OpaqueFunction, opaque  # noqa: F401
from .debug import debug_callback, debug_callback_p  # noqa: F401
