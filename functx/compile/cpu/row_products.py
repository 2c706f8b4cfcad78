"""The CPU fused tier's pass row_products: products of a few rows with a matrix, the rows of
several products that share the matrix in one pass over it, as generated C++ kernels.

A matrix-vector product streams its matrix from memory (or L3) once; its time is that
stream (a 1000x1000 float32 matrix: ~70 us on one core). Hessian-vector products,
jvp-of-grad and forward-mode graphs multiply the SAME matrix by several vectors: the hvp
of tanh(x @ W + b) reads W for x @ W and for the tangent v @ W, two GEMVs whose operands are
both known at the same point of the graph. MKL cannot share the pass (two calls read W twice,
and one (2, K) @ W call measured no faster), and its single-row GEMV is itself no faster
than a plain streaming loop on AMD CPUs. This pass:

  - finds dot_generals `X[..., K] @ W` (W a 2-D matrix, or a transpose of one, contracted
    on either axis: `X @ W` or `X @ W.mT`; X's M = prod(...) rows contiguous in K; no batch
    dims; float32 or float64);
  - groups those that read the same W in the same orientation and whose rows are all
    computed before the first of them, up to MAX_ROWS rows in all (the accumulators of
    every row live in L1 beside the matrix stripe);
  - replaces each group by one `cpu_row_products` equation (multiple results), which the
    wrapper runs as one C++ kernel: for `X @ W` the axpy order (k outer, n inner over a
    stripe of W's row, every row's accumulators updated from the same loaded W values, g++
    vectorizes the n loop), for `X @ W.mT` row dots (each row of W loaded once and dotted
    with every X row, vector accumulators). W is read once for all the rows.

Only where it wins, by measurement (bench/bench_row_products.py, one core, AMD EPYC,
docs/benchmarks.md "Shared-weight GEMV"; the constants below say where each comes from):
the matrix holds between MIN_ELEMENTS elements (per dtype, orientation and rows: below, call
overheads decide) and MAX_BYTES (beyond the last-level cache it streams from DRAM, where
MKL's prefetching wins); a single row only for float32 (MKL's float64 GEMV is as fast as
this loop); everything else (a symbolic size, more rows, other dtypes, batch dims) keeps
torch.matmul.
At run time a matrix that is not contiguous in the traced orientation (a transposed or
expanded input) falls back to torch.matmul per product, and so does a call with more than
one torch thread (the thresholds are one-core measurements: on the shared 2-core test box an
OpenMP split of a ~100 us pass was at the mercy of the other core); X operands are copied
contiguous (M*K elements). Float sums are in the operand dtype with fused multiply-adds, as BLAS
computes them (the order of accumulation differs, as for any change of matmul shape).

`cpu_row_products` is an internal primitive: it exists only in the fused tier's graph
(after every transform), so it has an impl (the torch reference: one matmul per product,
what the eager tier and `run_torch` run) and no transformation rules.
"""
from __future__ import annotations

import ctypes
import math

import torch

from ...core import Eqn, Graph, Var
from ...core.primitive import Primitive
from ...core.types import TensorType
from ..passes import _Subst, dce

MAX_ROWS = 4        # rows per pass: their accumulators (4 x 4 KB) stay in L1 beside the stripe of W
# Where the kernel beats torch.matmul, measured by bench/bench_row_products.py (one core, AMD
# EPYC, MKL; best of interleaved rounds; docs/benchmarks.md "Shared-weight GEMV"). Per
# (dtype, X @ W.mT?) and rows: the fewest matrix elements from which it wins clearly (None:
# never; below, call overheads decide and MKL is as fast or faster). A single float32 row
# wins for X @ W (0.67-0.96x of MKL from 512K elements; a tie at 512x512) and for X @ W.mT
# where it counts: alone it ties MKL's GEMV (0.93-1.05x), but right after a pass over the
# same matrix (hvp's backward g @ W.mT after its forward pass) it took 11-16 us off a ~197 us
# hvp (`bench_row_products.py --hvp`); float64 single rows tie MKL. 2-4 rows win from 256x256 (X @ W.mT
# float32: from 512x512, a tie at 256) since MKL reads the matrix once per row; non-square
# matrices alike (64x4096 to 4096x256: 0.4-0.96x), but for short row dots (MIN_DOT).
MIN_ELEMENTS = {(torch.float32, False): {1: 512 * 1024, 2: 256 * 256, 3: 256 * 256, 4: 256 * 256},
                (torch.float32, True): {1: 512 * 1024, 2: 512 * 512, 3: 512 * 512, 4: 512 * 512},
                (torch.float64, False): {1: None, 2: 256 * 256, 3: 256 * 256, 4: 256 * 256},
                (torch.float64, True): {1: None, 2: 256 * 256, 3: 256 * 256, 4: 256 * 256}}
# The most matrix bytes: a single row beyond 8 MB loses to MKL (2000x2000 float32: 1.17x);
# 2-4 rows still win at the last-level cache's 32 MB (2800x2800 float32, 2048x2048 float64:
# 0.5-0.9x) and lost at 64 MB (4000x4000 float32, 2 rows), where both stream from DRAM.
MAX_BYTES = {1: 8 << 20, 2: 32 << 20, 3: 32 << 20, 4: 32 << 20}
# X @ W.mT: dot products shorter than this tie or lose (K = 64: 0.97-1.10x of MKL; the
# horizontal sum per output costs as much as the products); from 128 they win (0.55-0.99x).
MIN_DOT = 128


def wins(dtype, transposed: bool, rows: int, k: int, n: int) -> bool:
    """Does one pass of `rows` rows over a K x N matrix (N x K for X @ W.mT) beat torch.matmul?"""
    least = MIN_ELEMENTS[dtype, transposed].get(rows)
    elements = k * n
    return least is not None and least <= elements and elements * dtype.itemsize <= MAX_BYTES[rows] \
        and (not transposed or k >= MIN_DOT)


DTYPES = {torch.float32: "float", torch.float64: "double"}


# ---------------------------------------------------------------- the primitive

def _impl(w, *xs, transposed, rows, kernel):
    m = w.mT if transposed else w
    return [x @ m for x in xs]


def _abstract_eval(w, *xs, transposed, rows, kernel):
    n = w.shape[0] if transposed else w.shape[1]
    return [TensorType(tuple(x.shape[:-1]) + (n,), x.dtype, x.device) for x in xs]


def _emit(eqn, srcs):
    """The fused tier's launcher of this equation (CppFused binds it by name)."""
    return f"{eqn.params['kernel']}({', '.join(srcs)})"


row_products_p = Primitive("cpu_row_products", multiple_results=True, abstract_eval=_abstract_eval,
                           impl=_impl, emit=_emit)


# ---------------------------------------------------------------- the pass

def _matrix(w, producers):
    """(matrix, transposed): w itself, or the 2-D value w is a transpose of (x @ W.mT is
    traced as a transpose view and a product; the kernel reads W's own layout)."""
    e = producers.get(w)
    if e is not None and e.prim.name == "transpose" and isinstance(e.inputs[0], Var) \
            and tuple(e.params["permutation"]) == (1, 0):
        return e.inputs[0], True
    return w, False


def _candidate(e, producers):
    """(matrix var, rows var, transposed, rows count) of a dot_general `X @ W` / `X @ W.mT`
    this pass may run, or None."""
    if e.prim.name != "dot_general" or len(e.inputs) != 2 or not all(isinstance(a, Var) for a in e.inputs):
        return None
    (lc, rc), (lb, rb) = e.params["dimension_numbers"]
    if lb or rb or len(lc) != 1:
        return None
    out = e.outputs[0].type
    if out.dtype not in DTYPES or any(a.type.dtype != out.dtype for a in e.inputs) or out.device.type != "cpu":
        return None
    if not all(type(n) is int for a in e.inputs for n in a.type.shape):
        return None     # a symbolic size: the thresholds are for known sizes
    lhs, rhs = e.inputs
    for x, w, xc, wc, x_first in ((lhs, rhs, lc[0], rc[0], True), (rhs, lhs, rc[0], lc[0], False)):
        if w.type.ndim != 2 or xc != x.type.ndim - 1:
            continue        # X's rows must be contiguous in K
        if not x_first and x.type.ndim != 1:
            continue        # the output would be [N, M]: rows are not contiguous in it
        rows = math.prod(x.type.shape[:-1])       # vmap's [B, 1, K] rows too
        if not 1 <= rows <= MAX_ROWS or 0 in w.type.shape or x.type.shape[-1] == 0:
            continue
        base, flipped = _matrix(w, producers)
        transposed = (wc == 1) != flipped
        k, n = x.type.shape[-1], w.type.shape[1 - wc]
        if not any(wins(out.dtype, transposed, m, k, n) for m in range(rows, MAX_ROWS + 1)):
            continue
        return base, x, transposed, rows
    return None


def row_products(graph: Graph, notes: list | None = None) -> Graph:
    """Rewrite small-row products (module docstring) into cpu_row_products equations, each
    group placed at its first product; notes receive one line per group for explain."""
    producers = {v: e for e in graph.eqns for v in e.outputs}
    cands = {}
    for i, e in enumerate(graph.eqns):
        c = _candidate(e, producers)
        if c is not None:
            cands[i] = c
    if not cands:
        return graph
    # which equations come before which: a later product joins a group if its rows are
    # defined before the group's first product
    position = {}
    for i, e in enumerate(graph.eqns):
        for v in e.outputs:
            position[v] = i
    groups, taken = [], set()
    for i in sorted(cands):
        if i in taken:
            continue
        w, x, transposed, rows = cands[i]
        members = [i]
        for j in sorted(cands):
            if j <= i or j in taken:
                continue
            w2, x2, t2, r2 = cands[j]
            if w2 is w and t2 == transposed and rows + r2 <= MAX_ROWS \
                    and graph.eqns[j].outputs[0].type.dtype == graph.eqns[i].outputs[0].type.dtype \
                    and position.get(x2, -1) < i:
                members.append(j)
                rows += r2
        k = x.type.shape[-1]
        if wins(graph.eqns[i].outputs[0].type.dtype, transposed, rows, k, math.prod(w.type.shape) // k):
            taken.update(members)
            groups.append(members)
    if not groups:
        return graph
    sub, eqns = _Subst(), []
    first = {g[0]: g for g in groups}
    replaced = {j for g in groups for j in g}
    for i, e in enumerate(graph.eqns):
        if i not in replaced:
            eqns.append(sub.eqn(e))
            continue
        if i not in first:
            continue            # computed by its group's equation, placed earlier
        members = first[i]
        w, _, transposed, _ = cands[i]
        xs = [sub(cands[j][1]) for j in members]
        outs = [graph.eqns[j].outputs[0] for j in members]
        rows = tuple(cands[j][3] for j in members)
        eqns.append(Eqn(row_products_p, [sub(w)] + xs, outs,
                        {"transposed": transposed, "rows": rows, "kernel": f"_rows{len(eqns)}"},
                        e.source))
        if notes is not None:
            kind = "X @ W.mT (row dots)" if transposed else "X @ W (axpy order)"
            shapes = ", ".join(str(list(graph.eqns[j].inputs[0].type.shape)) + " @ " +
                               str(list(graph.eqns[j].inputs[1].type.shape)) for j in members)
            notes.append(f"{len(members)} product(s) sharing {list(w.type.shape)} {w.type.dtype}, "
                         f"{sum(rows)} row(s), one pass over the matrix, {kind}: {shapes}")
    return dce(sub.finish(graph, eqns))       # a transpose the kernel reads through goes


def equations(graph: Graph) -> list:
    return [e for e in graph.eqns if e.prim is row_products_p]


# ---------------------------------------------------------------- C++ kernels

TEMPLATES = r"""
// fx_rows_*: X[M, K] @ W (row pointers xs[m], outputs outs[m]), one pass over W
// (functx/compile/cpu/row_products.py). Vector code through GCC/Clang vector extensions;
// FX_FMAF / FX_FMA are cpp_ops.HELPERS' (the library's header).
static inline float fx_fma(float a, float b, float c) { return FX_FMAF(a, b, c); }
static inline double fx_fma(double a, double b, double c) { return FX_FMA(a, b, c); }
typedef float fx_v8f __attribute__((vector_size(32)));
typedef double fx_v4d __attribute__((vector_size(32)));
#if defined(__FMA__) && defined(__AVX__)
static inline fx_v8f fx_vfma(fx_v8f a, fx_v8f b, fx_v8f c) { return __builtin_ia32_vfmaddps256(a, b, c); }
static inline fx_v4d fx_vfma(fx_v4d a, fx_v4d b, fx_v4d c) { return __builtin_ia32_vfmaddpd256(a, b, c); }
#else
template <class V> static inline V fx_vfma(V a, V b, V c) { return a * b + c; }
#endif
template <class T> struct fx_vec;
template <> struct fx_vec<float> { typedef fx_v8f type; };
template <> struct fx_vec<double> { typedef fx_v4d type; };

// X @ W, W[K, N] row-major: for each stripe of NB columns, k outer (4 rows of W per step),
// n inner; acc[M][NB] stays in L1, each W element is loaded once for all M rows.
template <class T, int M>
static void fx_rows_nn(const T* const* xs, const T* __restrict__ W, T* const* outs,
                       int64_t K, int64_t N, int64_t n0, int64_t n1) {
    constexpr int64_t NB = 4096 / sizeof(T);
    T acc[M][NB];
    for (int64_t s = n0; s < n1; s += NB) {
        const int64_t nb = n1 - s < NB ? n1 - s : NB;
        for (int m = 0; m < M; ++m)
            for (int64_t n = 0; n < nb; ++n) acc[m][n] = 0;
        int64_t k = 0;
        for (; k + 4 <= K; k += 4) {
            const T* __restrict__ w = W + k * N + s;
            T a[M][4];
            for (int m = 0; m < M; ++m)
                for (int j = 0; j < 4; ++j) a[m][j] = xs[m][k + j];
            for (int64_t n = 0; n < nb; ++n) {
                const T b0 = w[n], b1 = w[N + n], b2 = w[2 * N + n], b3 = w[3 * N + n];
                #pragma GCC unroll 4
                for (int m = 0; m < M; ++m)
                    acc[m][n] = fx_fma(a[m][3], b3, fx_fma(a[m][2], b2, fx_fma(a[m][1], b1,
                                fx_fma(a[m][0], b0, acc[m][n]))));
            }
        }
        for (; k < K; ++k) {
            const T* __restrict__ w = W + k * N + s;
            T a[M];
            for (int m = 0; m < M; ++m) a[m] = xs[m][k];
            for (int64_t n = 0; n < nb; ++n) {
                const T b0 = w[n];
                #pragma GCC unroll 4
                for (int m = 0; m < M; ++m) acc[m][n] = fx_fma(a[m], b0, acc[m][n]);
            }
        }
        for (int m = 0; m < M; ++m)
            for (int64_t n = 0; n < nb; ++n) outs[m][s + n] = acc[m][n];
    }
}

// X @ W.mT, W[N, K] row-major: each row of W loaded once and dotted with every X row
// (two vector accumulators per row, summed in a fixed order).
template <class T, int M>
static void fx_rows_nt(const T* const* xs, const T* __restrict__ W, T* const* outs,
                       int64_t K, int64_t N, int64_t n0, int64_t n1) {
    typedef typename fx_vec<T>::type V;
    constexpr int L = 32 / sizeof(T);
    (void)N;
    for (int64_t n = n0; n < n1; ++n) {
        const T* __restrict__ w = W + n * K;
        V a0[M], a1[M];
        for (int m = 0; m < M; ++m) { a0[m] = V{} ; a1[m] = V{}; }
        int64_t k = 0;
        for (; k + 2 * L <= K; k += 2 * L) {
            V w0, w1;
            __builtin_memcpy(&w0, w + k, sizeof(V));
            __builtin_memcpy(&w1, w + k + L, sizeof(V));
            for (int m = 0; m < M; ++m) {
                V x0, x1;
                __builtin_memcpy(&x0, xs[m] + k, sizeof(V));
                __builtin_memcpy(&x1, xs[m] + k + L, sizeof(V));
                a0[m] = fx_vfma(x0, w0, a0[m]);
                a1[m] = fx_vfma(x1, w1, a1[m]);
            }
        }
        for (int m = 0; m < M; ++m) {
            const V a = a0[m] + a1[m];
            T s = 0;
            for (int l = 0; l < L; ++l) s += a[l];
            for (int64_t kk = k; kk < K; ++kk) s = fx_fma(xs[m][kk], w[kk], s);
            outs[m][n] = s;
        }
    }
}

// One thread: the launcher runs torch.matmul when torch has more (row_products.py).
template <class T, int M, bool TRANSPOSED>
static void fx_rows(const T* const* xs, const T* W, T* const* outs, int64_t K, int64_t N) {
    if (TRANSPOSED) fx_rows_nt<T, M>(xs, W, outs, K, N, 0, N);
    else fx_rows_nn<T, M>(xs, W, outs, K, N, 0, N);
}
"""


def entry_source(name: str, dtype, rows: tuple, transposed: bool) -> str:
    """The extern "C" entry `name(W, X_1.., OUT_1.., K, N)` of a pass over W for
    operands of `rows` rows each (their rows contiguous, K apart)."""
    t = DTYPES[dtype]
    nx = len(rows)
    args = [f"const {t}* W"] + [f"const {t}* x{i}" for i in range(nx)] + [f"{t}* o{i}" for i in range(nx)]
    xs = [f"x{i} + {j} * K" for i, r in enumerate(rows) for j in range(r)]
    outs = [f"o{i} + {j} * N" for i, r in enumerate(rows) for j in range(r)]
    m = sum(rows)
    return (f'extern "C" void {name}({", ".join(args)}, int64_t K, int64_t N) {{\n'
            f"    const {t}* xs[{m}] = {{{', '.join(xs)}}};\n"
            f"    {t}* outs[{m}] = {{{', '.join(outs)}}};\n"
            f"    fx_rows<{t}, {m}, {'true' if transposed else 'false'}>(xs, W, outs, K, N);\n"
            "}\n")


def kernel_source(eqn) -> str:
    p = eqn.params
    return entry_source(p["kernel"], eqn.outputs[0].type.dtype, p["rows"], p["transposed"])


def library_source(eqns) -> str:
    return TEMPLATES + "\n" + "\n".join(kernel_source(e) for e in eqns) if eqns else ""


def launcher(lib, eqn, threads):
    """The wrapper's callable for one cpu_row_products equation: (W, *xs) -> [outputs]."""
    p = eqn.params
    return make_launcher(lib, p["kernel"], eqn.outputs[0].type.dtype, p["transposed"],
                         tuple(eqn.inputs[0].type.shape), [tuple(v.type.shape) for v in eqn.outputs], threads)


def make_launcher(lib, name, dtype, transposed, wshape, out_shapes, threads):
    """(W, *xs) -> [outputs]: the kernel `name` of `lib`, or torch.matmul per product where it
    does not apply: a matrix not contiguous in the traced orientation (a transposed or
    expanded input: MKL reads it as it is), or more than one torch thread (the thresholds are
    one-core measurements; MKL threads its GEMVs as it sees fit)."""
    fn = getattr(lib, name)
    nx = len(out_shapes)
    fn.argtypes = [ctypes.c_void_p] * (1 + 2 * nx) + [ctypes.c_int64, ctypes.c_int64]
    fn.restype = None
    k_size, n_size = (wshape[1], wshape[0]) if transposed else wshape
    empty = torch.empty

    def run(w, *xs):
        if not w.is_contiguous() or threads() != 1:
            m = w.mT if transposed else w
            return [x @ m for x in xs]
        xs = [x.contiguous() for x in xs]
        outs = [empty(s, dtype=dtype) for s in out_shapes]
        fn(w.data_ptr(), *[x.data_ptr() for x in xs], *[o.data_ptr() for o in outs], k_size, n_size)
        return outs
    return run
