"""conv: torch's `aten.convolution` (without bias) as one bilinear primitive.

    conv(x, w, stride, padding, dilation, transposed, output_padding, groups)
    x: (N, C, *spatial); w: (O, C/groups, *k), or (C, O/groups, *k) when transposed.

Every rule is written with conv itself, so grad-of-grad, hessians and vmap-of-grad stay
native (PyTorch's convolution_backward math):
  * input cotangent: a transposed conv of the cotangent (or a plain conv, for a transposed
    conv), with output_padding recovering the rows the forward stride skipped;
  * weight cotangent: a conv of the input with the cotangent, batch folded into channels
    (stride and dilation swap roles), one group per conv group, cropped to the kernel
    (under eager transforms one primitive, conv_weight_grad: torch's convolution_backward
    kernel, which the unfolded conv took ~2x as long as on a small conv net's shapes);
  * batching: a vmapped input folds into N, a vmapped weight into the output channels
    (and groups), both at once into groups (torch.func's conv batch rule).
"""
from __future__ import annotations

import torch

from ..core import EXTERN, Primitive, Zero, bind
from ..core.trace import type_of
from . import shape as sh
from .define import defbilinear, is_undefined
from .fused import fused_or_decomposed
from .shape import moveaxis


def _out_size(n, k, s, p, d, transposed, op):
    if transposed:
        return (n - 1) * s - 2 * p + d * (k - 1) + 1 + op
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _conv_type(xt, wt, *, stride, padding, dilation, transposed, output_padding, groups):
    nsp = len(stride)
    if xt.ndim != nsp + 2 or wt.ndim != nsp + 2:
        raise TypeError(f"conv: expected input and weight of rank {nsp + 2}, got {xt} and {wt}")
    if xt.dtype != wt.dtype:
        raise TypeError(f"conv: dtypes differ: {xt.dtype} vs {wt.dtype}")
    c = xt.shape[1]
    if transposed:
        if wt.shape[0] != c or c % groups:
            raise TypeError(f"conv (transposed): input {xt} and weight {wt} with groups={groups} "
                            "don't match: weight must be (C_in, C_out/groups, *kernel)")
        out_c = wt.shape[1] * groups
    else:
        if wt.shape[1] * groups != c or wt.shape[0] % groups:
            raise TypeError(f"conv: input {xt} and weight {wt} with groups={groups} don't match: "
                            "weight must be (C_out, C_in/groups, *kernel)")
        out_c = wt.shape[0]
    spatial = tuple(_out_size(n, k, s, p, d, transposed, op) for n, k, s, p, d, op in
                    zip(xt.shape[2:], wt.shape[2:], stride, padding, dilation, output_padding))
    if any(n < 0 for n in spatial):
        raise TypeError(f"conv: kernel {wt.shape[2:]} (dilation {dilation}) is larger than the "
                        f"padded input {xt.shape[2:]} (padding {padding})")
    return xt.with_shape((xt.shape[0], out_c) + spatial)


def _conv_impl(x, w, *, stride, padding, dilation, transposed, output_padding, groups):
    return torch.convolution(x, w, None, stride, padding, dilation, transposed, output_padding, groups)


def conv_emit(eqn, srcs):
    """torch.convolution of the operands (x, w), or (x, w, bias) for impl code's conv with its
    bias added as the kernel writes (transforms/impl_rewrites.BIAS_CONV)."""
    p = eqn.params
    bias = srcs[2] if len(srcs) > 2 else None
    return (f"torch.convolution({srcs[0]}, {srcs[1]}, {bias}, {list(p['stride'])}, {list(p['padding'])}, "
            f"{list(p['dilation'])}, {p['transposed']}, {list(p['output_padding'])}, {p['groups']})")


def conv(x, w, stride, padding, dilation, transposed=False, output_padding=None, groups=1):
    n = len(stride)
    output_padding = tuple(output_padding) if output_padding is not None else (0,) * n
    return bind(conv_p, (x, w), {"stride": tuple(stride), "padding": tuple(padding),
                                 "dilation": tuple(dilation), "transposed": bool(transposed),
                                 "output_padding": output_padding, "groups": int(groups)})


def _crop_spatial(y, sizes):
    t = type_of(y)
    if t.shape[2:] == tuple(sizes):
        return y
    return sh.slice_(y, (0,) * t.ndim, t.shape[:2] + tuple(sizes))


def _plain_weight_grad(inp, cot, kernel, stride, padding, dilation, groups):
    """d/dw of conv(inp, w) against cotangent cot, as a conv: (O, C/g, *kernel).

    grad[o, c, k] = sum_{n, i} cot[n, o, i] * inp[n, c, i*s + k*d - p]: a conv over the
    spatial dims with inp as input (channels <- batch), cot as weight, stride d, dilation s.
    """
    it, ct = type_of(inp), type_of(cot)
    n, c = it.shape[:2]
    o = ct.shape[1]
    g = groups
    nsp = it.ndim - 2
    sp = tuple(range(3, 3 + nsp))
    # inp (N, g, C/g, S) -> (C/g, g*N, S); cot (N, g, O/g, S') -> (g*O/g, N, S')
    a = sh.reshape(inp, (n, g, c // g) + it.shape[2:])
    a = sh.reshape(sh.transpose(a, (2, 1, 0) + sp), (c // g, g * n) + it.shape[2:])
    b = sh.reshape(cot, (n, g, o // g) + ct.shape[2:])
    b = sh.reshape(sh.transpose(b, (1, 2, 0) + sp), (o, n) + ct.shape[2:])
    r = conv(a, b, dilation, padding, stride, False, None, g)      # (C/g, O, K')
    r = _crop_spatial(r, kernel)
    return sh.transpose(r, (1, 0) + tuple(range(2, 2 + nsp)))


def _conv_transpose_rule(ct, x, w, *, stride, padding, dilation, transposed, output_padding, groups):
    if isinstance(ct, Zero):
        return [None, None]
    xt = x.aval if is_undefined(x) else type_of(x)
    wt = w.aval if is_undefined(w) else type_of(w)
    kernel = wt.shape[2:]
    if is_undefined(x):
        if transposed:
            gx = conv(ct, w, stride, padding, dilation, False, None, groups)
            return [_crop_spatial(gx, xt.shape[2:]), None]
        # rows of x the forward stride never reached come back through output_padding
        cts = type_of(ct).shape[2:]
        op = tuple(n - _out_size(m, k, s, p, d, True, 0) for n, m, k, s, p, d in
                   zip(xt.shape[2:], cts, kernel, stride, padding, dilation))
        if all(0 <= o < max(s, d) for o, s, d in zip(op, stride, dilation)):
            return [conv(ct, w, stride, padding, dilation, True, op, groups), None]
        gx = conv(ct, w, stride, padding, dilation, True, None, groups)
        return [_pad_spatial_to(gx, xt.shape[2:]), None]
    return [None, weight_grad(ct, x, wt.shape, stride, padding, dilation, transposed, output_padding, groups)]


def _pad_spatial_to(y, sizes):
    t = type_of(y)
    cfg = ((0, 0, 0), (0, 0, 0)) + tuple((0, n - m, 0) for n, m in zip(sizes, t.shape[2:]))
    return sh.pad(y, cfg, 0)


def _conv_batch(axis, args, dims, *, stride, padding, dilation, transposed, output_padding, groups):
    (x, w), (dx, dw) = args, dims
    b = axis.size
    p = dict(stride=stride, padding=padding, dilation=dilation, transposed=transposed,
             output_padding=output_padding)
    if dw is None:                                   # fold the batch into N
        x = moveaxis(x, dx, 0)
        xt = type_of(x)
        y = conv_p.bind(sh.reshape(x, (b * xt.shape[1],) + xt.shape[2:]), w, groups=groups, **p)
        yt = type_of(y)
        return sh.reshape(y, (b, xt.shape[1]) + yt.shape[1:]), 0
    w = moveaxis(w, dw, 0)
    wt = type_of(w)
    nsp = wt.ndim - 3
    k = wt.shape[3:]
    g = groups
    if dx is None:                                   # fold the batch into output channels
        if transposed:
            # (B, g*Cg, Og, K) -> (g, Cg, B, Og, K) -> (g*Cg, B*Og, K)
            cg, og = wt.shape[1] // g, wt.shape[2]
            w2 = sh.reshape(w, (b, g, cg, og) + k)
            w2 = sh.reshape(sh.transpose(w2, (1, 2, 0, 3) + tuple(range(4, 4 + nsp))),
                            (g * cg, b * og) + k)
        else:
            # (B, g*Og, Cg, K) -> (g, B, Og, Cg, K) -> (g*B*Og, Cg, K)
            og, cg = wt.shape[1] // g, wt.shape[2]
            w2 = sh.reshape(w, (b, g, og, cg) + k)
            w2 = sh.reshape(sh.transpose(w2, (1, 0, 2, 3) + tuple(range(4, 4 + nsp))),
                            (g * b * og, cg) + k)
        y = conv_p.bind(x, w2, groups=g, **p)        # (N, g*B*Og, S')
        yt = type_of(y)
        n, s = yt.shape[0], yt.shape[2:]
        y = sh.reshape(y, (n, g, b, og) + s)
        y = sh.transpose(y, (0, 2, 1, 3) + tuple(range(4, 4 + len(s))))
        return sh.reshape(y, (n, b, g * og) + s), 1
    # both batched: the batch becomes B*groups groups
    x = moveaxis(x, dx, 0)
    xt = type_of(x)
    n, c = xt.shape[1], xt.shape[2]
    x2 = sh.reshape(sh.transpose(x, (1, 0) + tuple(range(2, xt.ndim))), (n, b * c) + xt.shape[3:])
    w2 = sh.reshape(w, (b * wt.shape[1],) + wt.shape[2:])
    y = conv_p.bind(x2, w2, groups=b * g, **p)       # (N, B*O, S')
    yt = type_of(y)
    return sh.reshape(y, (n, b, yt.shape[1] // b) + yt.shape[2:]), 1


conv_p = defbilinear(Primitive(
    "conv", kind=EXTERN,
    abstract_eval=_conv_type,
    impl=_conv_impl,
    batch=_conv_batch,
    emit=conv_emit),
    lambda ct, x, w, **params: _conv_transpose_rule(ct, x, w, **params)[0],
    lambda ct, x, w, **params: _conv_transpose_rule(ct, x, w, **params)[1])


# ---------------------------------------------------------------- the weight cotangent as torch's kernel

def weight_grad(ct, x, shape, stride, padding, dilation, transposed, output_padding, groups):
    """d/dw of conv(x, w) (w of `shape`) against cotangent ct: conv_weight_grad where the
    current trace binds fused primitives (prims/fused.py), else as a conv (_plain_weight_grad)."""
    return fused_or_decomposed(conv_weight_grad_p, _weight_grad_decomposed, ct, x, shape=tuple(shape), stride=stride,
                               padding=padding, dilation=dilation, transposed=transposed,
                               output_padding=output_padding, groups=groups)


def _weight_grad_decomposed(ct, x, *, shape, stride, padding, dilation, transposed, output_padding, groups):
    if transposed:
        return _plain_weight_grad(ct, x, shape[2:], stride, padding, dilation, groups)
    return _plain_weight_grad(x, ct, shape[2:], stride, padding, dilation, groups)


def _weight_grad_impl(ct, x, *, shape, stride, padding, dilation, transposed, output_padding, groups):
    w = torch.empty(shape, dtype=x.dtype, device=x.device)      # read for its shape only
    return torch.ops.aten.convolution_backward.default(ct, x, w, None, stride, padding, dilation, transposed,
                                                       output_padding, groups, [False, True, False])[1]


def conv_backward_both(ct, x, w, *, stride, padding, dilation, transposed, output_padding, groups):
    """(input cotangent, weight cotangent) of conv(x, w) at ct, in one torch kernel (generated
    impl code's pairing of the two: transforms/impl_rewrites.CONV_BACKWARD)."""
    gx, gw, _ = torch.ops.aten.convolution_backward.default(ct, x, w, None, stride, padding, dilation, transposed,
                                                            output_padding, groups, [True, True, False])
    return gx, gw


def _weight_grad_transpose_ct(g, ct, x, *, shape, stride, padding, dilation, transposed, output_padding, groups):
    """<g, weight_grad(ct, x)> is <conv(x, g), ct>: the forward conv with g as its weight."""
    return conv(x, g, stride, padding, dilation, transposed, output_padding, groups)


def _weight_grad_transpose_x(g, ct, x, *, shape, stride, padding, dilation, transposed, output_padding, groups):
    """... and <x, the input cotangent of conv(., g) at ct>."""
    return _conv_transpose_rule(ct, x, g, stride=stride, padding=padding, dilation=dilation,
                                transposed=transposed, output_padding=output_padding, groups=groups)[0]


def _weight_grad_batch(axis, args, dims, *, shape, stride, padding, dilation, transposed, output_padding, groups):
    """Per example, the examples as groups: x (B, N, C, S) -> (N, B*C, S), ct likewise, groups
    B*g; the (B*O, C/g, K) result (transposed: (B*C, O/g, K)) splits back per example."""
    (ct, x), (dc, dx) = args, dims
    b = axis.size
    ct, x = sh.bdim_to_front(ct, dc, b), sh.bdim_to_front(x, dx, b)
    folded = []
    for v in (ct, x):
        t = type_of(v)
        v = sh.transpose(v, (1, 0) + tuple(range(2, t.ndim)))
        folded.append(sh.reshape(v, (t.shape[1], b * t.shape[2]) + t.shape[3:]))
    out = conv_weight_grad_p.bind(*folded, shape=(b * shape[0],) + tuple(shape[1:]), stride=stride, padding=padding,
                                  dilation=dilation, transposed=transposed, output_padding=output_padding,
                                  groups=b * groups)
    return sh.reshape(out, (b,) + tuple(shape)), 0


conv_weight_grad_p = defbilinear(Primitive(
    "conv_weight_grad", kind=EXTERN,
    abstract_eval=lambda ct, x, *, shape, **_: x.with_shape(tuple(shape)),
    impl=_weight_grad_impl,
    batch=_weight_grad_batch,
    composite=_weight_grad_decomposed),
    _weight_grad_transpose_ct, _weight_grad_transpose_x)
