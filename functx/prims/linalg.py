"""dot_general: JAX's general contraction (batch dims, contracting dims), bilinear.

Output dims are ordered (batch, lhs free, rhs free). The eager impl maps common layouts to
torch.matmul and everything else to einsum.
"""
from __future__ import annotations

import string

import torch

from ..core import EXTERN, Primitive, Zero, bind
from ..core.trace import UndefinedPrimal, type_of
from . import shape as sh
from .util import moveaxis

dot_general_p = Primitive("dot_general")
dot_general_p.kind = EXTERN


def _free(ndim, contract, batch):
    return [i for i in range(ndim) if i not in contract and i not in batch]


def _dot_type(lt, rt, *, dimension_numbers):
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


def einsum_spec(lndim, rndim, dimension_numbers):
    (lc, rc), (lb, rb) = dimension_numbers
    letters = iter(string.ascii_letters)
    lhs = [None] * lndim
    rhs = [None] * rndim
    for a, b in zip(lb, rb):
        lhs[a] = rhs[b] = next(letters)
    for a, b in zip(lc, rc):
        lhs[a] = rhs[b] = next(letters)
    for i in range(lndim):
        lhs[i] = lhs[i] or next(letters)
    for i in range(rndim):
        rhs[i] = rhs[i] or next(letters)
    out = ([lhs[a] for a in lb] + [lhs[i] for i in _free(lndim, lc, lb)]
           + [rhs[i] for i in _free(rndim, rc, rb)])
    return f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}"


def _is_matmul(lndim, rndim, dimension_numbers):
    """(b..., m, k) x (b..., k, n) with batch dims leading and in order."""
    (lc, rc), (lb, rb) = dimension_numbers
    nb = len(lb)
    return (lndim == rndim == nb + 2 and tuple(lb) == tuple(rb) == tuple(range(nb))
            and tuple(lc) == (nb + 1,) and tuple(rc) == (nb,))


def _dot_impl(x, y, *, dimension_numbers):
    """One torch.matmul: x permuted to (batch, free, contract) and y to (batch, contract, free),
    each flattened to three groups, the result reshaped to (batch, x free, y free). (What
    torch.einsum does internally, without its ~30 us of Python planning per call.)"""
    xn, yn = x.ndim, y.ndim
    if _is_matmul(xn, yn, dimension_numbers):
        return torch.matmul(x, y)
    (lc, rc), (lb, rb) = dimension_numbers
    if not lb and len(lc) == 1 and len(rc) == 1 and xn <= 2 and yn <= 2:
        # vector/matrix layouts: a transpose (a view) where needed, then matmul
        if xn == 2 and lc[0] == 0:
            x = x.mT
        if yn == 2 and rc[0] == 1:
            y = y.mT
        return torch.matmul(x, y)
    lfree, rfree = _free(xn, lc, lb), _free(yn, rc, rb)
    xs, ys = x.shape, y.shape
    lperm = (*lb, *lfree, *lc)
    rperm = (*rb, *rc, *rfree)
    if lperm != tuple(range(xn)):
        x = x.permute(lperm)
    if rperm != tuple(range(yn)):
        y = y.permute(rperm)
    batch = [xs[i] for i in lb]
    m = [xs[i] for i in lfree]
    n = [ys[i] for i in rfree]
    k = 1
    for i in lc:
        k *= xs[i]
    mm, nn = 1, 1
    for d in m:
        mm *= d
    for d in n:
        nn *= d
    lshape, rshape = (*batch, mm, k), (*batch, k, nn)
    if x.shape != lshape:
        x = x.reshape(lshape)
    if y.shape != rshape:
        y = y.reshape(rshape)
    out = torch.matmul(x, y)
    oshape = (*batch, *m, *n)
    return out if out.shape == oshape else out.reshape(oshape)


def _ranges_like(*xs):
    start = 0
    for x in xs:
        yield list(range(start, start + len(x)))
        start += len(x)


def _transpose_lhs(g, x_type, y, dimension_numbers, swap_ans=False):
    (x_contract, y_contract), (x_batch, y_batch) = dimension_numbers
    y_ndim = type_of(y).ndim if not isinstance(y, UndefinedPrimal) else y.aval.ndim
    x_kept = _free(x_type.ndim, x_contract, x_batch)
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
    return sh.transpose(dot_general(g, y, dims), tuple(out_axes))


def _dot_transpose(ct, x, y, *, dimension_numbers):
    (lc, rc), (lb, rb) = dimension_numbers
    if isinstance(x, UndefinedPrimal) and isinstance(y, UndefinedPrimal):
        raise ValueError("dot_general is not linear in both operands at once")
    if isinstance(x, UndefinedPrimal):
        return [_transpose_lhs(ct, x.aval, y, dimension_numbers), None]
    swapped = ((rc, lc), (rb, lb))
    return [None, _transpose_lhs(ct, y.aval, x, swapped, swap_ans=True)]


def _dot_jvp(primals, tangents, *, dimension_numbers):
    x, y = primals
    tx, ty = tangents
    out = dot_general(x, y, dimension_numbers)
    terms = []
    if not isinstance(tx, Zero):
        terms.append(dot_general(tx, y, dimension_numbers))
    if not isinstance(ty, Zero):
        terms.append(dot_general(x, ty, dimension_numbers))
    from . import elementwise as ew
    return out, terms[0] if len(terms) == 1 else ew.add(*terms)


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


dot_general_p.abstract_eval = _dot_type
dot_general_p.impl = _dot_impl
dot_general_p.jvp = _dot_jvp
dot_general_p.transpose = _dot_transpose
dot_general_p.batch = _dot_batch


def dot_general(x, y, dimension_numbers):
    (lc, rc), (lb, rb) = dimension_numbers
    dn = ((tuple(lc), tuple(rc)), (tuple(lb), tuple(rb)))
    return bind(dot_general_p, (x, y), {"dimension_numbers": dn})


def matmul(x, y):
    """(..., m, k) @ (..., k, n) with equal leading dims."""
    nd = type_of(x).ndim
    nb = nd - 2
    return dot_general(x, y, (((nd - 1,), (nb,)), (tuple(range(nb)), tuple(range(nb)))))
