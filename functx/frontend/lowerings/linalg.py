"""Matrix products, convolution, average pooling (a convolution with a ones kernel), and det,
slogdet, solve and cholesky_inverse through the LU / Cholesky factors, triangular_solve as
linalg.solve_triangular."""
from __future__ import annotations

import math

import torch
from torch._meta_registrations import pooling_output_shape

from ... import prims as P
from ...core.trace import tracer_chain
from ...core.types import TensorType
from ..promote import elementwise, result_type
from ..functionalize import unwrap
from ..tensor import wrap
from .common import _t, aten
from .registry import register, register_special


# ---------------------------------------------------------------- linear algebra

def _checked_matmul(a, b, rank, rank_errors, size_ok, size_error):
    """P.matmul after torch's own checks (and messages) for mm/bmm: equal dtypes (torch does
    not promote here), operand ranks, matching sizes."""
    ta, tb = _t(a), _t(b)
    if ta.dtype != tb.dtype:
        raise RuntimeError(f"expected m1 and m2 to have the same dtype, but got: {ta.dtype} != {tb.dtype}")
    for t, message in zip((ta, tb), rank_errors):
        if t.ndim != rank:
            raise RuntimeError(message)
    if not size_ok(ta.shape, tb.shape):
        raise RuntimeError(size_error(ta.shape, tb.shape))
    return _sparse_product(a, b) if rank == 2 and (_is_sparse(a) or _is_sparse(b)) else P.matmul(a, b)


def _is_sparse(x):
    return isinstance(x, torch.Tensor) and x.layout != torch.strided


def _coo_entries(m):
    rows, cols = m._indices()
    return rows, cols, m._values()


def _csr_entries(m):
    counts = m.crow_indices().diff()
    return torch.repeat_interleave(torch.arange(len(counts), device=m.device), counts), m.col_indices(), m.values()


# A sparse matrix's (rows, cols, values), each nonzero once or (an uncoalesced COO tensor) its
# duplicates, which the product sums as torch's does. Read by an opaque op from the sparse
# tensor itself when the graph runs: jit's graph holds the tensor (as it holds a dense
# constant) and so sees an in-place update of it (adj.mul_(2), adj._values().clamp_(...)),
# where entries read at trace time would silently keep the old weights.
_SPARSE_2D = {torch.sparse_coo: P.OpaqueFunction(_coo_entries, "sparse_coo_entries"),
              torch.sparse_csr: P.OpaqueFunction(_csr_entries, "sparse_csr_entries")}


def _sparse_entries(m):
    nnz = m._nnz()
    types = [TensorType((nnz,), torch.int64, m.device)] * 2 + [TensorType((nnz,), m.dtype, m.device)]
    return P.opaque(_SPARSE_2D[m.layout], (m,), types)


def _sparse_product(a, b):
    """A matrix product (or matrix-vector) with one sparse operand: a graph network's
    closed-over adjacency (torch.sparse.mm(adj, h), adj @ h, h @ adj, torch.mv(adj, v)).
    P.matmul took the sparse tensor as a dense constant, and torch has no dense-times-sparse
    kernels for the transposed and batched products that the derivative rules and vmap run
    (grad, jacfwd, hessian and vmap raised "expand is unsupported for Sparse tensors"). Here
    the product is a sum over the nonzeros, gathered, scaled and added into place: O(nnz), and
    made of primitives, so exact to every order under every transform. Sparse values are
    concrete only (functx's traced values are dense): both operands sparse stay torch's."""
    sparse = a if _is_sparse(a) else b
    if (_is_sparse(a) and _is_sparse(b)) or sparse.dense_dim() or sparse.layout not in _SPARSE_2D:
        return P.matmul(a, b)
    rows, cols, vals = _sparse_entries(sparse)
    if _is_sparse(a):           # out[r] += v * b[c]: gather b's rows by column, add by row
        n, tail = a.shape[0], _t(b).shape[1:]
        src = elementwise(P.mul, P.take(b, cols, 0), P.reshape(vals, (sparse._nnz(),) + (1,) * len(tail)))
        return P.scatter_add(P.full((n, *tail), 0, _t(b).dtype, _t(b).device), rows, src, 0)
    ta = _t(a)                  # out[:, c] += a[:, r] * v
    src = elementwise(P.mul, P.take(a, rows, ta.ndim - 1), vals)
    return P.scatter_add(P.full((*ta.shape[:-1], b.shape[1]), 0, ta.dtype, ta.device), cols, src, ta.ndim - 1)


@register(aten.mm.default)
def _mm(a, b):
    return _checked_matmul(
        a, b, 2, ("self must be a matrix", "mat2 must be a matrix"), lambda x, y: x[1] == y[0],
        lambda x, y: f"mat1 and mat2 shapes cannot be multiplied ({x[0]}x{x[1]} and {y[0]}x{y[1]})")


@register(aten.bmm.default)
def _bmm(a, b):
    return _checked_matmul(
        a, b, 3, ("batch1 must be a 3D tensor", "batch2 must be a 3D tensor"),
        lambda x, y: y[:2] == (x[0], x[2]),
        lambda x, y: (f"Expected size for first two dimensions of batch2 tensor to be: [{x[0]}, {x[2]}] "
                      f"but got: [{y[0]}, {y[1]}]."))


@register(aten.addmm.default, aten._sparse_addmm.default)
def _addmm(bias, a, b, beta=1, alpha=1):
    return _scaled_add(_mm(a, b), bias, beta, alpha)


def _scaled_add(out, bias, beta, alpha):
    """alpha * out + beta * bias (addmm/baddbmm); beta == 0 ignores bias, NaN included."""
    if alpha != 1:
        out = P.mul(out, alpha)
    if beta == 0:
        return out
    if beta != 1:
        bias = elementwise(P.mul, bias, beta)
    return elementwise(P.add, out, bias)


@register(aten.dot.default, aten.vdot.default)
def _dot(a, b):
    ta, tb = _t(a), _t(b)
    if ta.ndim != 1 or tb.ndim != 1:
        raise RuntimeError(f"1D tensors expected, but got {ta.ndim}D and {tb.ndim}D tensors")
    if ta.shape != tb.shape:
        raise RuntimeError(f"inconsistent tensor size, expected tensor [{ta.shape[0]}] and src [{tb.shape[0]}] to "
                           f"have the same number of elements, but got {ta.shape[0]} and {tb.shape[0]} elements "
                           "respectively")
    if ta.dtype != tb.dtype:
        raise RuntimeError(f"dot : expected both vectors to have same dtype, but found {ta.dtype} and {tb.dtype}")
    return P.dot_general(a, b, (((0,), (0,)), ((), ())))


@register(aten.mv.default)
def _mv(a, b):
    ta, tb = _t(a), _t(b)
    if ta.dtype != tb.dtype:
        raise RuntimeError(f"expected m1 and m2 to have the same dtype, but got: {ta.dtype} != {tb.dtype}")
    if ta.ndim != 2 or tb.ndim != 1:
        raise RuntimeError(f"vector + matrix @ vector expected, got 1, {ta.ndim}, {tb.ndim}")
    if ta.shape[1] != tb.shape[0]:
        raise RuntimeError(f"size mismatch, got input ({ta.shape[0]}), mat ({ta.shape[0]}x{ta.shape[1]}), "
                           f"vec ({tb.shape[0]})")
    if _is_sparse(a):
        return _sparse_product(a, b)
    return P.dot_general(a, b, (((1,), (0,)), ((), ())))


@register(aten.baddbmm.default)
def _baddbmm(bias, a, b, beta=1, alpha=1):
    return _scaled_add(_bmm(a, b), bias, beta, alpha)


# ---------------------------------------------------------------- convolution

def _expand_param(p, n):
    p = [p] if isinstance(p, int) else list(p)
    return tuple(p * n if len(p) == 1 else p)


@register(aten.convolution.default, aten._convolution.deprecated, aten._convolution.default)
def _convolution(x, w, bias, stride, padding, dilation, transposed, output_padding, groups, *unused):
    nsp = _t(w).ndim - 2
    dtype = result_type(x, w)
    x, w = P.convert(x, dtype), P.convert(w, dtype)
    unbatched = _t(x).ndim == nsp + 1
    if unbatched:
        x = P.reshape(x, (1,) + _t(x).shape)
    out = P.conv(x, w, _expand_param(stride, nsp), _expand_param(padding, nsp),
                 _expand_param(dilation, nsp), transposed, _expand_param(output_padding, nsp), groups)
    if bias is not None:
        ot = _t(out)
        out = P.add(out, P.broadcast_in_dim(P.convert(bias, dtype), ot.shape, (1,)))
    return P.reshape(out, _t(out).shape[1:]) if unbatched else out


# ---------------------------------------------------------------- average pooling (a conv with a ones kernel)

def _pool_params(nd, kernel_size, stride, padding):
    ks = _expand_param(kernel_size, nd)
    st = _expand_param(stride, nd) if stride not in (None, [], ()) else ks
    pa = _expand_param(padding, nd)
    return ks, st, pa


def _avg_pool(nd):
    def lower(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
              divisor_override=None):
        ks, st, pa = _pool_params(nd, kernel_size, stride, padding)
        t = _t(x)
        if nd > 1 and t.ndim == nd + 2 and t.dtype in (torch.float32, torch.float64) and P.fused_here() \
                and all(type(n) is int and n for n in t.shape):
            # eager levels: torch's kernel and its backward kernel (prims/resample.py)
            return P.spatial_map(x, f"avg_pool{nd}d", (ks, st, pa, bool(ceil_mode), bool(count_include_pad),
                                                         divisor_override or None))
        unbatched = t.ndim == nd + 1
        if unbatched:
            x = P.reshape(x, (1,) + t.shape)
            t = _t(x)
        lead, sizes = t.shape[:-nd], t.shape[-nd:]
        outs = [pooling_output_shape(n, k, p, s, 1, ceil_mode) for n, k, p, s in zip(sizes, ks, pa, st)]
        # pad so that exactly the windows torch visits fit (ceil_mode may need more on the right)
        cfg = [(0, 0, 0)] * len(lead) + [(p, (o - 1) * s + k - n - p, 0)
                                          for n, k, p, s, o in zip(sizes, ks, pa, st, outs)]
        xp = P.pad(P.reshape(x, (math.prod(lead), 1) + sizes), [(0, 0, 0), (0, 0, 0)] + cfg[len(lead):], 0.0)
        ones = P.full((1, 1) + ks, 1.0, t.dtype, t.device)
        summed = P.conv(xp, ones, st, (0,) * nd, (1,) * nd, False, None, 1)
        if divisor_override:
            out = P.div(summed, float(divisor_override))
        elif any(isinstance(n, torch.SymInt) for n in list(sizes) + list(outs)):
            out = P.div(summed, P.broadcast_to(_symbolic_pool_divisor(sizes, outs, ks, st, pa, count_include_pad,
                                                                      t.dtype, t.device), _t(summed).shape))
        else:
            divisor = torch.ones((), dtype=torch.float64)
            for d, (n, k, p, s, o) in enumerate(zip(sizes, ks, pa, st, outs)):
                start = torch.arange(o) * s - p
                end = torch.clamp(start + k, max=n + p)
                size = (end - start) if count_include_pad else (
                    torch.clamp(end, max=n) - torch.clamp(start, min=0))
                shape = [1] * nd
                shape[d] = o
                divisor = divisor * size.reshape(shape)
            divisor = divisor.expand(outs).to(t.dtype).reshape((1, 1) + tuple(outs)).to(t.device)
            out = P.div(summed, P.broadcast_to(divisor, _t(summed).shape))
        out = P.reshape(out, lead + tuple(outs))
        return P.reshape(out, _t(out).shape[1:]) if unbatched else out
    return lower


def _symbolic_pool_divisor(sizes, outs, ks, st, pa, count_include_pad, dtype, device):
    """avg_pool's divisor (the window sizes torch divides by) with symbolic sizes (jit): the same
    arithmetic as the constant one below, on traced values of the symbolic output sizes."""
    divisor = None
    nd = len(sizes)
    for d, (n, k, p, s, o) in enumerate(zip(sizes, ks, pa, st, outs)):
        start = P.sub(P.mul(P.iota((o,), 0, torch.int64, device), s), p)
        end = P.min_(P.add(start, k), n + p)
        size = P.sub(end, start) if count_include_pad else \
            P.sub(P.min_(end, n), P.max_(start, 0))
        shape = [1] * nd
        shape[d] = o
        size = P.reshape(size, tuple(shape))
        if divisor is None:
            divisor = size
        else:
            both = tuple(outs[:d + 1]) + (1,) * (nd - d - 1)
            divisor = P.mul(P.broadcast_to(divisor, both), P.broadcast_to(size, both))
    divisor = P.convert(P.broadcast_to(divisor, tuple(outs)), dtype)
    return P.reshape(divisor, (1, 1) + tuple(outs))


register(aten.avg_pool1d.default)(_avg_pool(1))
register(aten.avg_pool2d.default)(_avg_pool(2))
register(aten.avg_pool3d.default)(_avg_pool(3))


# ---------------------------------------------------------------- det, slogdet, solve through LU
# torch's forward-mode formulas for det, slogdet and solve read the LU factors they saved as
# constants, so forward over forward (jvp of jvp, jacfwd(jacfwd), taylor_operator, the
# Laplacian under jit's trace(hessian) rewrite) missed terms: torch.func.jvp twice gave
# d^2/dt^2 det(A + tV) = 5.9 where it is -25.5, and the opaque fallback inherited that.
# Written as torch's kernels compute them, from linalg_lu_factor_ex and linalg_lu_solve,
# whose rules are exact to every order, the same values come out with right derivatives.

def _square(A, what):
    torch._check(A.dim() >= 2 and A.shape[-1] == A.shape[-2], lambda: f"linalg.{what}: A must be batches of "
                 f"square matrices, but they are {A.shape[-2]} by {A.shape[-1]} matrices")


def _permutation_sign(pivots, dtype):
    """(-1)^(number of row swaps) of LAPACK's 1-based pivots."""
    n = pivots.shape[-1]
    swaps = (pivots != torch.arange(1, n + 1, dtype=pivots.dtype, device=pivots.device)).sum(-1)
    return 1 - 2 * (swaps % 2).to(dtype)


def _lu_det(A):
    """(det, LU, pivots) through the LU factors of A^T, as torch's kernel computes det
    (det(A^T) = det(A))."""
    LU, pivots, _ = torch.linalg.lu_factor_ex(A.mT)
    return _permutation_sign(pivots, A.dtype) * torch.diagonal(LU, dim1=-2, dim2=-1).prod(-1), LU, pivots


def _frozen(x):
    """x's value without its derivative."""
    return wrap(P.stop_gradient(unwrap(x)))


def _shift_nodes(n):
    """Nodes c_k > 0 and weights v_k with p(0) = sum_k v_k (p(c_k) + p(-c_k)) for every
    polynomial p of degree <= n: p(c) + p(-c) is a polynomial in c^2 of degree n // 2, taken at
    0 through its values at the squares of the positive Chebyshev points of [-1, 1] (Lagrange
    weights; their absolute sum, the error's amplification, stays small). Pairing c and -c
    cancels the odd powers exactly."""
    m = n // 2 + 1
    c = [math.cos((2 * k + 1) * math.pi / (4 * m)) for k in range(m)]
    v = [0.5 * math.prod(-c[j] ** 2 / (c[k] ** 2 - c[j] ** 2) for j in range(m) if j != k) for k in range(m)]
    return c, v


@register_special(aten._linalg_det.default)
def _linalg_det(A):
    # det's derivative through the LU factors (det A^{-T}) has no value at a singular matrix
    # (the factors' derivatives divide by U's zero pivot: nan), where torch gives the adjugate
    # (an SVD formula). Here a singular matrix takes its derivatives, of every order, from
    # det(A) = r^n sum_k v_k (det(A / r + c_k I) + det(A / r - c_k I)) (det(B + tI) is a
    # polynomial of degree n in t; r = max |A_ij|), whose shifted matrices are nonsingular,
    # through the same LU factors: exact to every order like the rest (torch.func's hessian of
    # det at the zero matrix is nan, through the SVD's derivative; finite differences agree
    # with this one). Each branch sees a harmless input where the other one is selected (the
    # double where), and the value is det's own (torch's) in both. When the values are known
    # (eager transforms) and no matrix is singular, the plain LU path is all there is; under
    # jit both branches are computed up to 4 x 4 (the cofactor expansion of det(A / r):
    # elementwise products), and past it only the LU path (below).
    _square(A, "det")
    det, LU, pivots = _lu_det(A)
    if A.numel() == 0:
        return det, LU, pivots
    n = int(A.shape[-1])
    frozen = _frozen(A)
    # singular to working precision: a pivot at rounding level against A's largest entry
    scale = frozen.abs().amax((-2, -1))
    pivot = torch.diagonal(_frozen(LU), dim1=-2, dim2=-1).abs().amin(-1)
    finite = torch.isfinite(scale)      # inf and nan entries: the LU path's values, as torch's
    singular = (pivot <= 100 * n * torch.finfo(A.dtype).eps * scale) & finite
    *_, known = tracer_chain(unwrap(singular))         # every example's, if the values are known
    if isinstance(known, torch.Tensor) and not bool(known.any()):
        return det, LU, pivots
    if not isinstance(known, torch.Tensor) and n > _EXPANDED_UP_TO:
        # staged (jit) above 4 x 4: the shifted factorizations cost 5x (8 x 8) to 25x (100 x 100)
        # a call in every graph, singular matrix or not, so a staged det there keeps the LU
        # derivative (nan at an exactly singular matrix, as before; eager levels are exact)
        return det, LU, pivots
    square = singular[..., None, None]
    det_nonsingular = _lu_det(torch.where(square, torch.eye(n, dtype=A.dtype, device=A.device), A))[0]
    # the singular branch in float64 for float32 matrices: r^n overflows float32 soon
    work = torch.float64 if A.dtype == torch.float32 else A.dtype
    scale = scale.to(work)
    scale = torch.where((scale == 0) | ~finite, 1, scale)
    B = torch.where(square, A, 0).to(work) / scale[..., None, None]
    if n <= _EXPANDED_UP_TO:
        q = _expanded_det(B)
    else:
        c, v = _shift_nodes(n)
        c = torch.tensor(c, dtype=work, device=A.device)[:, None, None] * torch.eye(n, dtype=work, device=A.device)
        dets = _lu_det(torch.cat((B.unsqueeze(-3) + c, B.unsqueeze(-3) - c), -3))[0]
        q = ((dets[..., :len(v)] + dets[..., len(v):]) * torch.tensor(v, dtype=work, device=A.device)).sum(-1)
    power = scale ** n
    fits = torch.isfinite(power)        # else the chain rule's r^n overflows: a non-finite derivative
    derivative_only = (q - _frozen(q)) * torch.where(fits, power, 0) + _nonfinite_derivative(~fits, q)
    return torch.where(singular, _frozen(det) + derivative_only.to(A.dtype), det_nonsingular), LU, pivots


# up to this size the singular branch is the cofactor expansion itself (a polynomial of
# elementwise products, which jit fuses) instead of shifted factorizations
_EXPANDED_UP_TO = 4


def _expanded_det(B):
    """det(B) by cofactor expansion along the first row."""
    n = B.shape[-1]
    if n == 1:
        return B[..., 0, 0]
    rest = B[..., 1:, :]
    terms = [B[..., 0, j] * _expanded_det(torch.cat((rest[..., :j], rest[..., j + 1:]), -1)) for j in range(n)]
    out = terms[0]
    for j in range(1, n):
        out = out - terms[j] if j % 2 else out + terms[j]
    return out


def _nonfinite_derivative(where, x):
    """0, with a non-finite derivative (x's through sqrt at 0) where `where` holds; elsewhere
    sqrt sees 1 (the double where)."""
    return torch.where(where, torch.where(where, x - _frozen(x), 1).sqrt(), 0)


@register_special(aten._linalg_slogdet.default)
def _linalg_slogdet(A):
    _square(A, "slogdet")
    LU, pivots, _ = torch.linalg.lu_factor_ex(A.mT)
    diagonal = torch.diagonal(LU, dim1=-2, dim2=-1)
    sign = _permutation_sign(pivots, A.dtype) * torch.sgn(diagonal).prod(-1)
    return sign, diagonal.abs().log().sum(-1), LU, pivots


@register_special(aten._linalg_solve_ex.default)
def _linalg_solve_ex(A, B, *, left=True, check_errors=False):
    _square(A, "solve")
    LU, pivots, info = torch.linalg.lu_factor_ex(A, check_errors=check_errors)
    # torch's linalg_solve_is_vector_rhs: B is a (batch of) vector(s)
    vector = B.dim() == 1 or (A.dim() - 1 == B.dim() and tuple(B.shape) == tuple(A.shape[:-1]))
    X = torch.linalg.lu_solve(LU, pivots, B.unsqueeze(-1) if vector else B, left=left)
    return (X.squeeze(-1) if vector else X), LU, pivots, info


@register_special(aten.cholesky_inverse.default)
def _cholesky_inverse(L, upper=False):
    eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device).expand(L.shape)
    return torch.cholesky_solve(eye, L, upper)


@register_special(aten.triangular_solve.default)
def _triangular_solve(b, A, upper=True, transpose=False, unitriangular=False):
    """The deprecated torch.triangular_solve as linalg.solve_triangular (A^T X = b when
    transpose): torch's forward-mode formula for triangular_solve is wrong with transpose=True
    or unitriangular=True (the tangent reads dA's other triangle and diagonal) and its second
    order raises ("a forward gradient that has a different size"), so the opaque op's jvp and
    hessian were wrong or crashed."""
    for name, t in (("b", b), ("A", A)):
        torch._check(t.dim() >= 2, lambda: f"torch.triangular_solve: Expected {name} to have at least 2 "
                     f"dimensions, but it has {t.dim()} dimensions instead")
    torch._check(b.dtype == A.dtype, lambda: "Expected b and A to have the same dtype, but found b of type "
                 f"{b.dtype} and A of type {A.dtype} instead.")
    X = torch.linalg.solve_triangular(A.mT if transpose else A, b, upper=upper != transpose,
                                      unitriangular=unitriangular)
    batch = torch.broadcast_shapes(b.shape[:-2], A.shape[:-2])
    return X, A.expand(*batch, *A.shape[-2:]).clone()      # torch's copy of A, broadcast
