"""The CPU fused tier's row_products pass (functx/compile/cpu/row_products.py): products of a
few rows with a shared matrix as one C++ pass over it. Kernels against torch for 1..4 rows,
float32/float64, `X @ W` and `X @ W.mT`, sizes that are no multiple of the vector width;
layouts the kernel does not take fall back to torch.matmul; inside grad/jvp/vmap graphs
against torch.func; the grouping of hvp's two forward products (the test fails without it);
the thresholds that keep torch.matmul where the kernel does not win."""
import os
import shutil

import pytest
import torch

import functx
from functx.compile.cpu import row_products as rows
from functx.core import Eqn, Graph, Var
from functx.core.primitive import REGISTRY
from functx.core.types import TensorType

pytestmark = [pytest.mark.skipif(shutil.which(os.environ.get("FUNCTX_CXX", "g++")) is None,
                                 reason="no C++ compiler"), pytest.mark.cpu_fused,
              pytest.mark.usefixtures("module_kernel_cache")]


@pytest.fixture(autouse=True)
def fused_before_first_call(monkeypatch):
    monkeypatch.setenv("FUNCTX_CPU_BLOCK", "1")


@pytest.fixture
def any_size(monkeypatch):
    """The kernels for every size (the measured thresholds would send small ones to MKL)."""
    monkeypatch.setattr(rows, "wins", lambda dtype, transposed, m, k, n: True)


def compiled_of(jitted, *args):
    c = jitted.lower(*args)[0].compiled
    assert c.tier == "fused", c.status()
    return c


def randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


K, N = 37, 29       # no multiple of 8 (float32 lanes) or 4 (float64); K below two vectors of 16


def test_kernels_equal_torch_for_1_to_4_rows_both_dtypes_and_orientations(any_size):
    """One graph, one library: X[M,K] @ W[K,N] and X[M,K] @ V[N,K].mT for M = 1..4 (M = 1
    also as a 1-D vector), float32 and float64, each with its own matrix."""
    cases = [(dt, m, t) for dt in (torch.float32, torch.float64) for m in (0, 1, 2, 3, 4) for t in (False, True)]
    mats = [randn(*((N, K) if t else (K, N)), dtype=dt, seed=i) for i, (dt, m, t) in enumerate(cases)]
    xs = [randn(*((m, K) if m else (K,)), dtype=dt, seed=100 + i) for i, (dt, m, t) in enumerate(cases)]
    transposed = [t for _, _, t in cases]

    def f(mats, xs):
        return [x @ (w.mT if t else w) for w, x, t in zip(mats, xs, transposed)]

    jitted = functx.jit(f, backend="cpu")
    got = jitted(mats, xs)
    fused = compiled_of(jitted, mats, xs).fused
    assert len(fused.row_eqns) == len(cases), fused.report()
    for g, w, x, t in zip(got, mats, xs, transposed):
        want = x @ (w.mT if t else w)
        assert g.dtype == want.dtype and g.shape == want.shape
        torch.testing.assert_close(g, want, rtol=1e-5 if g.dtype == torch.float32 else 1e-12, atol=1e-5)
    # the same bits as float64 math rounded, to the accuracy of a float32 sum of K products
    w, x = mats[4], xs[4]           # float32, 2 rows, X @ W
    torch.testing.assert_close(got[4].double(), x.double() @ w.double(), rtol=0, atol=K * 2e-7 * 10)


def test_layouts_the_kernel_does_not_take_fall_back_to_torch(any_size):
    """A matrix that is not contiguous in the traced orientation (a transposed view, an
    expanded row) runs torch.matmul; non-contiguous rows are copied; results as torch's."""
    w, x = randn(K, N), randn(2, K, seed=1)
    jitted = functx.jit(lambda w, x: x @ w, backend="cpu")
    torch.testing.assert_close(jitted(w, x), x @ w)
    assert compiled_of(jitted, w, x).fused.row_eqns
    for w2 in (randn(N, K, seed=2).mT, randn(1, N, seed=3).expand(K, N), randn(K, 2 * N, seed=4)[:, ::2]):
        torch.testing.assert_close(jitted(w2, x), x @ w2)
    x2 = randn(2, 2 * K, seed=5)[:, ::2]
    torch.testing.assert_close(jitted(w, x2), x2 @ w)
    xb = randn(K, seed=6).expand(2, K)
    torch.testing.assert_close(jitted(w, xb), xb @ w)


def test_the_primitive_impl_and_type_are_the_products():
    """cpu_row_products' impl (what the eager code and run_torch run) and abstract_eval."""
    w, v = randn(K, N), randn(N, K, seed=1)
    xs = [randn(2, K, seed=2), randn(K, seed=3), randn(3, 1, K, seed=4)]
    for m, t in ((w, False), (v, True)):
        outs = rows.row_products_p.impl(m, *xs, transposed=t, rows=(2, 1, 3), kernel="k")
        types = rows.row_products_p.abstract_eval(*[functx.TensorType.of(a) for a in (m, *xs)],
                                                  transposed=t, rows=(2, 1, 3), kernel="k")
        for o, ty, x in zip(outs, types, xs):
            torch.testing.assert_close(o, x @ (m.mT if t else m))
            assert tuple(ty.shape) == tuple(o.shape) and ty.dtype == o.dtype


def test_more_than_one_thread_runs_torch_matmul():
    """The thresholds are one-core measurements: with more torch threads the launcher leaves
    the products to torch.matmul (the kernel is not called)."""
    class NoKernel:
        def __getattr__(self, name):
            return self

        def __call__(self, *args):
            raise AssertionError("the kernel ran")
    w, xs = randn(K, N), [randn(2, K, seed=1), randn(K, seed=2)]
    run = rows.make_launcher(NoKernel(), "k", torch.float32, False, (K, N), [(2, N), (N,)], lambda: 2)
    for got, x in zip(run(w, *xs), xs):
        torch.testing.assert_close(got, x @ w)
    with pytest.raises(AssertionError, match="the kernel ran"):
        rows.make_launcher(NoKernel(), "k", torch.float32, False, (K, N), [(2, N), (N,)], lambda: 1)(w, *xs)


def test_inside_grad_jvp_vmap_graphs(any_size):
    """grad (X @ W.mT backward), jvp of grad (hvp: rows grouped), vmap (3 rows) against
    torch.func, float64 (the fused tier's kernels replace every matmul here)."""
    dt = torch.float64
    w, b, u = randn(K, N, dtype=dt), randn(N, dtype=dt, seed=1), randn(N, dtype=dt, seed=2)
    x, v, batch = randn(K, dtype=dt, seed=3), randn(K, dtype=dt, seed=4), randn(3, K, dtype=dt, seed=5)

    def f(x, w):
        return (torch.tanh(x @ w + b) * u).sum()

    def hvp(T):
        return lambda x, v, w: T.jvp(lambda x: T.grad(f)(x, w), (x,), (v,))[1]

    for fn, args, ref in [
            (functx.grad(f), (x, w), torch.func.grad(f)),
            (hvp(functx), (x, v, w), hvp(torch.func)),
            (functx.vmap(lambda x, w: torch.tanh(x @ w), in_dims=(0, None)), (batch, w),
             torch.func.vmap(lambda x, w: torch.tanh(x @ w), in_dims=(0, None)))]:
        jitted = functx.jit(fn, backend="cpu")
        torch.testing.assert_close(jitted(*args), ref(*args), rtol=1e-12, atol=1e-12)
        assert compiled_of(jitted, *args).fused.row_eqns


def test_hvp_reads_the_matrix_twice_its_forward_products_grouped():
    """The benchmark's hvp (bench_transforms.py), at its size and the measured thresholds:
    x @ W and v @ W become one pass (2 rows), the backward g @ W.mT another: W is read twice,
    no torch.matmul is left; explain says so."""
    n = 1000
    W1, b1, w2 = randn(n, n) / n ** 0.5, randn(n, seed=1) * 0.1, randn(n, seed=2) / n ** 0.5
    x, v = randn(n, seed=3), randn(n, seed=4)

    def f(x, W1, b1, w2):
        return (torch.tanh(x @ W1 + b1) * w2).sum()

    def hvp(T):
        return lambda x, v, W1, b1, w2: T.jvp(lambda x: T.grad(f)(x, W1, b1, w2), (x,), (v,))[1]

    jitted = functx.jit(hvp(functx), backend="cpu")
    args = (x, v, W1, b1, w2)
    torch.testing.assert_close(jitted(*args), hvp(torch.func)(*args), rtol=1e-4, atol=1e-5)
    fused = compiled_of(jitted, *args).fused
    assert [(e.params["rows"], e.params["transposed"]) for e in fused.row_eqns] == [((1, 1), False), ((1,), True)]
    assert [g.name for g in fused.groups if g.kind == "extern"] == ["cpu_row_products"] * 2
    report = str(functx.explain(jitted)(*args))
    assert "row_products: 2 C++ pass(es)" in report and "2 product(s) sharing [1000, 1000]" in report


# ---------------------------------------------------------------- the pass (no compiler)

def _var(shape, dtype=torch.float32):
    return Var(TensorType(tuple(shape), dtype, torch.device("cpu")))


def _dot(eqns, x, w, transposed=False):
    dims = (((x.type.ndim - 1,), (1 if transposed else 0,)), ((), ()))
    p = REGISTRY["dot_general"]
    out = Var(p.abstract_eval(x.type, w.type, dimension_numbers=dims))
    eqns.append(Eqn(p, [x, w], [out], {"dimension_numbers": dims}))
    return out


def _graph(ins, eqns, outs):
    return Graph(ins, [], [], eqns, outs)


def test_groups_only_products_whose_rows_are_ready_and_fit():
    """Rows computed from an earlier product's result wait for it (a pass of their own);
    more than MAX_ROWS rows split; the other orientation is another pass."""
    w, x, v = _var((1000, 1000)), _var((1, 1000)), _var((3, 1000))
    eqns = []
    a, b = _dot(eqns, x, w), _dot(eqns, v, w)           # 1 + 3 rows: one pass
    c = _dot(eqns, x, w)                                # a fifth row: its own pass
    t = Var(a.type)
    eqns.append(Eqn(REGISTRY["tanh"], [a], [t], {}))
    d = _dot(eqns, t, w)                                # reads a's result: after it
    y = _var((2, 1000))
    e = _dot(eqns, y, w, transposed=True)               # W.mT: another pass
    g = rows.row_products(_graph([w, x, v, y], eqns, [b, c, d, e]))
    found = [(e.params["rows"], e.params["transposed"]) for e in g.eqns if e.prim is rows.row_products_p]
    assert found == [((1, 3), False), ((1,), False), ((1,), False), ((2,), True)]
    assert not any(e.prim.name == "dot_general" for e in g.eqns)
    g.check()


@pytest.mark.parametrize("shape,dtype,m,transposed,rewritten", [
    ((1000, 1000), torch.float32, 1, False, True),
    ((1000, 1000), torch.float32, 1, True, True),
    ((600, 600), torch.float32, 1, True, False),        # a single row of a small matrix: a tie
    ((128, 128), torch.float32, 2, False, False),       # call overhead: MKL as fast
    ((512, 512), torch.float32, 1, False, False),       # one row of a small matrix: a tie
    ((300, 300), torch.float32, 2, False, True),
    ((300, 300), torch.float32, 2, True, False),
    ((600, 600), torch.float32, 2, True, True),
    ((2000, 2000), torch.float32, 1, False, False),     # 16 MB: one row loses to MKL
    ((2000, 2000), torch.float32, 2, False, True),
    ((1000, 1000), torch.float64, 1, False, False),     # a float64 single row: MKL streams as fast
    ((1000, 1000), torch.float64, 2, True, True),
    ((3000, 3000), torch.float32, 2, False, False),     # 36 MB: from DRAM, MKL's territory
    ((8192, 64), torch.float32, 2, True, False),        # row dots of 64: MKL as fast
    ((4096, 128), torch.float32, 2, True, True),
    ((1000, 1000), torch.float32, 5, False, False),     # more rows than a pass holds
])
def test_thresholds_keep_torch_matmul_where_the_kernel_does_not_win(shape, dtype, m, transposed, rewritten):
    w, x = _var(shape, dtype), _var((m, shape[1] if transposed else shape[0]), dtype)
    eqns = []
    out = _dot(eqns, x, w, transposed)
    g = rows.row_products(_graph([w, x], eqns, [out]))
    assert any(e.prim is rows.row_products_p for e in g.eqns) == rewritten


def test_batched_and_integer_products_are_left_alone():
    """A dot_general with batch dims (bmm) and integer products keep torch."""
    w, x = _var((2, 1000, 1000)), _var((2, 1, 1000))
    eqns = []
    p = REGISTRY["dot_general"]
    dims = (((2,), (1,)), ((0,), (0,)))
    out = Var(p.abstract_eval(x.type, w.type, dimension_numbers=dims))
    eqns.append(Eqn(p, [x, w], [out], {"dimension_numbers": dims}))
    wi, xi = _var((1000, 1000), torch.int64), _var((2, 1000), torch.int64)
    out2 = _dot(eqns, xi, wi)
    g = rows.row_products(_graph([w, x, wi, xi], eqns, [out, out2]))
    assert not any(e.prim is rows.row_products_p for e in g.eqns)
