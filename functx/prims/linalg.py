"""dot_general: JAX's general contraction (batch dims, contracting dims), bilinear.

Output dims are ordered (batch, lhs free, rhs free). Every layout runs as one torch.matmul
(`matmul_layout`): the eager impl applies that layout to tensors, and the code generators
print the same layout as source (`x @ W.mT`).
"""
from __future__ import annotations

import functools
import math

import torch

from ..core import EXTERN, Primitive, Var, bind
from ..core.trace import type_of
from . import shape as sh
from .define import defbilinear, is_undefined
from .shape import moveaxis, permute_steps, render_steps
from .util import cached_unless_symbolic


def _free(ndim, contract, batch):
    return [i for i in range(ndim) if i not in contract and i not in batch]


def _dot_type(lt, rt, *, dimension_numbers):
    return _dot_type_cached(lt, rt, dimension_numbers)


@cached_unless_symbolic()      # recorded for every tangent product
def _dot_type_cached(lt, rt, dimension_numbers):
    (lc, rc), (lb, rb) = dimension_numbers
    for a, b in zip(lc, rc):
        if lt.shape[a] != rt.shape[b]:
            raise TypeError(f"dot_general: contracting sizes differ: {lt} dim {a} vs {rt} dim {b}")
    for a, b in zip(lb, rb):
        if lt.shape[a] != rt.shape[b]:
            raise TypeError(f"dot_general: batch sizes differ: {lt} dim {a} vs {rt} dim {b}")
    if lt.dtype != rt.dtype:
        raise TypeError(f"dot_general: dtypes differ: {lt.dtype} vs {rt.dtype}")
    shape = ([lt.shape[i] for i in lb] + [lt.shape[i] for i in _free(lt.ndim, lc, lb)]
             + [rt.shape[i] for i in _free(rt.ndim, rc, rb)])
    return lt.with_shape(shape)


# ---------------------------------------------------------------- one matmul for every layout

@cached_unless_symbolic()      # every eager dot_general asks; the answer is static
def matmul_layout(xs, ys, dimension_numbers):
    """dot_general as one torch.matmul: (lhs steps, rhs steps, output shape or None), each
    step ("mT",), ("permute", perm) or ("reshape", shape).

    Vector/matrix layouts with one contraction need at most a transpose (`x @ W.mT`; matmul
    broadcasts a 2-D rhs over any leading lhs dims). Everything else permutes the operands to
    (batch, free, contract) and (batch, contract, free), flattens them to three groups and
    reshapes the result to (batch, lhs free, rhs free): what torch.einsum does internally,
    without its ~30 us of Python planning per call."""
    (lc, rc), (lb, rb) = dimension_numbers
    xn, yn = len(xs), len(ys)
    rhs_t = [("mT",)] if yn == 2 and len(rc) == 1 and rc[0] == 1 else []
    if not lb and len(lc) == 1 and len(rc) == 1 and yn in (1, 2):
        if xn >= 1 and lc[0] == xn - 1:
            return (), tuple(rhs_t), None
        if xn == 2 and lc[0] == 0:
            return (("mT",),), tuple(rhs_t), None
    lfree, rfree = _free(xn, lc, lb), _free(yn, rc, rb)
    batch = [xs[i] for i in lb]
    m, n = [xs[i] for i in lfree], [ys[i] for i in rfree]
    k = math.prod(xs[i] for i in lc)
    lhs, rhs = permute_steps((*lb, *lfree, *lc)), permute_steps((*rb, *rc, *rfree))
    lshape, rshape = (*batch, math.prod(m), k), (*batch, k, math.prod(n))
    if tuple(batch + m + [xs[i] for i in lc]) != lshape:
        lhs.append(("reshape", lshape))
    if tuple(batch + [ys[i] for i in rc] + n) != rshape:
        rhs.append(("reshape", rshape))
    out = (*batch, *m, *n)
    return tuple(lhs), tuple(rhs), (out if out != (*batch, math.prod(m), math.prod(n)) else None)


def apply_steps(x, steps):
    for op, *arg in steps:
        x = x.mT if op == "mT" else x.permute(arg[0]) if op == "permute" else x.reshape(arg[0])
    return x


def _dot_impl(x, y, *, dimension_numbers):
    lhs, rhs, out_shape = matmul_layout(tuple(x.shape), tuple(y.shape), dimension_numbers)
    out = torch.matmul(apply_steps(x, lhs), apply_steps(y, rhs))
    return out if out_shape is None else out.reshape(out_shape)


def is_2d_matmul(eqn) -> bool:
    """Whether eqn is a dot_general of two 2-D float Vars with one contraction and no batch
    dims: a plain matmul, which BLAS can add a bias to as it writes (addmm)."""
    if eqn.prim.name != "dot_general":
        return False
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    a, b = eqn.inputs
    return (not lb and len(lc) == 1 and len(rc) == 1 and isinstance(a, Var) and isinstance(b, Var)
            and a.type.ndim == 2 and b.type.ndim == 2 and a.type.dtype.is_floating_point)


def matmul_sources(eqn, srcs):
    """(lhs source, rhs source, output shape or None) of a dot_general equation as one
    torch.matmul (the eager backend's addmm fusion reuses it)."""
    x, y = eqn.inputs
    lhs, rhs, out_shape = matmul_layout(tuple(x.type.shape), tuple(y.type.shape),
                                        eqn.params["dimension_numbers"])
    return render_steps(srcs[0], lhs), render_steps(srcs[1], rhs), out_shape


def _dot_emit(eqn, srcs):
    lhs, rhs, out_shape = matmul_sources(eqn, srcs)
    return f"{lhs} @ {rhs}" if out_shape is None else f"({lhs} @ {rhs}).reshape({out_shape!r})"


# ---------------------------------------------------------------- derivatives and batching

def _ranges_like(*xs):
    start = 0
    for x in xs:
        yield list(range(start, start + len(x)))
        start += len(x)


def _transpose_lhs(g, x_type, y, dimension_numbers, swap_ans=False):
    y_ndim = y.aval.ndim if is_undefined(y) else type_of(y).ndim
    dims, out_axes = _transpose_lhs_dims(x_type.ndim, y_ndim, dimension_numbers, swap_ans)
    return sh.transpose(dot_general(g, y, dims), out_axes)


@functools.lru_cache(maxsize=4096)      # static, and asked for every reverse-mode dot_general
def _transpose_lhs_dims(x_ndim, y_ndim, dimension_numbers, swap_ans):
    """(dimension numbers of the product g . y, permutation to x's dim order)."""
    (x_contract, y_contract), (x_batch, y_batch) = dimension_numbers
    x_kept = _free(x_ndim, x_contract, x_batch)
    y_kept = _free(y_ndim, y_contract, y_batch)
    if swap_ans:
        ans_batch, ans_y, _ = _ranges_like(x_batch, y_kept, x_kept)
    else:
        ans_batch, _, ans_y = _ranges_like(x_batch, x_kept, y_kept)
    dims = ((tuple(ans_y), tuple(y_kept)), (tuple(ans_batch), tuple(y_batch)))
    order = sorted(range(len(y_contract)), key=lambda i: y_contract[i])
    x_contract_sorted_by_y = [x_contract[i] for i in order]
    pre = list(x_batch) + x_kept + x_contract_sorted_by_y
    out_axes = sorted(range(len(pre)), key=lambda i: pre[i])
    return dims, tuple(out_axes)


def _dot_transpose_lhs(ct, x, y, *, dimension_numbers):
    return _transpose_lhs(ct, x.aval, y, dimension_numbers)


def _dot_transpose_rhs(ct, x, y, *, dimension_numbers):
    (lc, rc), (lb, rb) = dimension_numbers
    return _transpose_lhs(ct, y.aval, x, ((rc, lc), (rb, lb)), swap_ans=True)


def _dot_batch(axis, args, dims, *, dimension_numbers):
    (x, y), (dx, dy) = args, dims
    (lc, rc), (lb, rb) = dimension_numbers
    xn = type_of(x).ndim

    def shift(ds):
        return tuple(d + 1 for d in ds)
    if dx is not None and dy is not None:
        x, y = moveaxis(x, dx, 0), moveaxis(y, dy, 0)
        dn = ((shift(lc), shift(rc)), ((0,) + shift(lb), (0,) + shift(rb)))
        return dot_general(x, y, dn), 0
    if dx is not None:
        x = moveaxis(x, dx, 0)
        dn = ((shift(lc), tuple(rc)), (shift(lb), tuple(rb)))
        return dot_general(x, y, dn), len(lb)
    y = moveaxis(y, dy, 0)
    dn = ((tuple(lc), shift(rc)), (tuple(lb), shift(rb)))
    n_lhs_free = len(_free(xn, lc, lb))
    return dot_general(x, y, dn), len(lb) + n_lhs_free


dot_general_p = defbilinear(Primitive(
    "dot_general", kind=EXTERN,
    abstract_eval=_dot_type,
    impl=_dot_impl,
    batch=_dot_batch,
    emit=_dot_emit), _dot_transpose_lhs, _dot_transpose_rhs)


def dot_general(x, y, dimension_numbers):
    (lc, rc), (lb, rb) = dimension_numbers
    dn = ((tuple(lc), tuple(rc)), (tuple(lb), tuple(rb)))
    return bind(dot_general_p, (x, y), {"dimension_numbers": dn})


def matmul(x, y):
    """(..., m, k) @ (..., k, n) with equal leading dims."""
    nd = type_of(x).ndim
    nb = nd - 2
    return dot_general(x, y, (((nd - 1,), (nb,)), (tuple(range(nb)), tuple(range(nb)))))
