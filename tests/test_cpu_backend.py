"""The CPU backend (fused C++ kernels): differential tests against eager torch and the eager
backend, NaN/inf/-0.0/integer semantics, the disk cache across processes, tiering (eager
first, fused once built) and the fallback when there is no compiler."""
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import functx
import functx.compile.cpu.compiled as cpu_compiled
from functx.compile.cpu import CpuCompiled, wait_for_fused
from functx.compile.cpu.cpp_ops import XBLOCK
from functx.core import POINTWISE, REGISTRY
from functx.tree_util import tree_leaves

needs_cxx = pytest.mark.skipif(shutil.which(os.environ.get("FUNCTX_CXX", "g++")) is None,
                               reason="no C++ compiler")
pytestmark = [needs_cxx, pytest.mark.cpu_fused, pytest.mark.usefixtures("module_kernel_cache")]

# Pointwise primitives without a C++ expression, and why (their groups run through torch).
POINTWISE_WITHOUT_CPP = {
    "full": "a constant: kernels fold it in (Lowering._compute)",
    "iota": "kernels read it as an index",
    "erfinv": "the C library has no erfinv",
    "erfcx": "the C library has no erfcx (exp(x*x) * erfc(x) overflows where erfcx is finite)",
    "digamma": "the C library has no digamma",
    "polygamma": "the C library has no polygamma",
    "bessel": "torch.special's scaled and spherical Bessel functions are not in the C library",
    "idiv": "integer division by zero raises in torch; a kernel cannot",
}


@pytest.fixture(autouse=True)
def every_kernel_runs(monkeypatch):
    """Serve the fused tier even where no kernel fuses two operations (the kernels are what
    these tests check)."""
    monkeypatch.setattr(cpu_compiled, "SKIP_UNFUSED", False)


@pytest.fixture
def blocking(monkeypatch):
    monkeypatch.setenv("FUNCTX_CPU_BLOCK", "1")


def fused(f, *args) -> CpuCompiled:
    """jit(f, backend="cpu") with the fused tier built before the first call."""
    old = os.environ.get("FUNCTX_CPU_BLOCK")
    os.environ["FUNCTX_CPU_BLOCK"] = "1"
    try:
        jitted = functx.jit(f, backend="cpu")
        out = jitted(*args)
    finally:
        if old is None:
            del os.environ["FUNCTX_CPU_BLOCK"]
        else:
            os.environ["FUNCTX_CPU_BLOCK"] = old
    return jitted.lower(*args)[0].compiled, out


def check(f, *args, kernels=None, externs=None, exact=False, **tol):
    """The fused tier == eager torch == the eager backend; kernel/extern counts when given.
    exact: bitwise equality with eager torch (signs of zeros included)."""
    compiled, out = fused(f, *args)
    assert compiled.failure is None or "nothing to fuse" in compiled.failure, compiled.failure
    ref = f(*args)
    eager = functx.jit(f, backend="eager")(*args)
    outs, refs, eagers = tree_leaves(out), tree_leaves(ref), tree_leaves(eager)
    assert len(outs) == len(refs) == len(eagers)
    for o, r, e in zip(outs, refs, eagers):
        assert o.dtype == r.dtype and o.shape == r.shape, (o.dtype, r.dtype, o.shape, r.shape)
        if exact:
            assert_same_bits(o, r)
        else:
            torch.testing.assert_close(o, r, equal_nan=True, **tol)
            torch.testing.assert_close(o, e, equal_nan=True, **tol)
    if kernels is not None:
        assert len(compiled.kernels) == kernels, compiled.report()
    if externs is not None:
        assert sum(g.kind == "extern" for g in compiled.groups) == externs, compiled.report()
    return compiled


def assert_same_bits(a, b):
    """Equal values, NaN where torch has NaN, and the same sign on zeros."""
    if a.dtype.is_floating_point:
        same = (a == b) | (a.isnan() & b.isnan())
        assert same.all(), (a, b)
        assert torch.equal(torch.signbit(a[a == 0]), torch.signbit(b[a == 0])), (a, b)
    else:
        assert torch.equal(a, b), (a, b)


X = torch.randn(6, 10)


# ---------------------------------------------------------------- the fusion groups

def test_golden_programs_fuse_like_the_triton_backend():
    x, y = torch.randn(7), torch.randn(5)
    w, b = torch.randn(10), torch.randn(10)
    check(lambda x, y: torch.sigmoid(torch.sin(x) * y.exp() + 1.0).clamp(min=0.2) * x, X, X.flip(0),
          kernels=1, externs=0)
    check(lambda x: torch.softmax(x, -1), X, kernels=1)
    check(lambda x, w, b: F.layer_norm(x, (10,), w, b), X, w, b, kernels=1)
    check(lambda x, y: (x[:, None] * torch.tanh(y)[None, :]).sum(0), x, y, kernels=1)
    check(functx.vmap(functx.grad(lambda x: (torch.sin(x) * x.exp() + x * x).sum())), X, kernels=1)
    c = check(lambda x, w: torch.relu(x @ w + 1.0).sum(-1), X, torch.randn(10, 8), kernels=1, externs=1)
    assert c.groups[0].kind == "extern" and c.groups[0].name == "dot_general"
    check(lambda x: (x.sum(0), x.amax(1)), X, kernels=2)
    check(lambda x: (x * x.sum(0)[None, :]).sum(1), torch.randn(5, 5), kernels=2)
    check(lambda x: x.t().reshape(-1)[3:20:2].flip(0) * 2 + x.reshape(-1)[:9], torch.randn(4, 6), kernels=1)
    check(lambda x: (torch.sort(x * 2, dim=1).values + 1).t(), torch.randn(4, 5), kernels=2, externs=1)


def test_float64_and_math_functions():
    x = torch.rand(8) * 0.8 + 0.1
    fns = [torch.tanh, torch.log1p, torch.expm1, torch.erf, torch.rsqrt, torch.asinh, torch.atan,
           torch.lgamma, torch.round, torch.trunc, lambda v: v.pow(2.5), lambda v: torch.atan2(v, v + 1),
           lambda v: torch.fmod(v * 7, 0.3), torch.sign, torch.floor, torch.ceil, torch.exp2,
           lambda v: v ** 3, lambda v: v ** 0.5, torch.acos, torch.cosh, torch.sigmoid,
           lambda v: torch.xlogy(v, v + 0.5), torch.erfc, torch.sin, torch.cos, torch.tan, torch.sinh,
           torch.asin, torch.atanh, lambda v: torch.acosh(v + 1), torch.exp, torch.log, torch.sqrt,
           torch.special.entr]
    for dtype in (torch.float32, torch.float64):
        check(lambda x: [f(x) for f in fns], x.to(dtype), kernels=1)
    check(lambda x, w: F.layer_norm(x, (10,), w), X.double(), torch.randn(10, dtype=torch.float64), kernels=1)


def test_long_rows_and_column_reductions_on_two_threads():
    x = torch.randn(64, 3000)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        check(lambda x: (torch.softmax(x, -1), x.sum(0), x.amin(1), (x * x).mean()), x, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(old)


def test_bias_epilogues_run_blocked_and_bitwise_equal(monkeypatch):
    """A pointwise group reading a broadcast row (the bias of a matmul epilogue) loops over
    blocks of rows, so `bias[xb % 128 + xi]` is a vector load, not a gather per element;
    only the loop order changes, so results equal the row-by-row kernel's bit for bit; row
    lengths that are not a multiple of the block stay row by row."""
    x, w, b = torch.randn(300, 16), torch.randn(16, 128), torch.randn(128)
    f = lambda x, w, b: torch.tanh(x @ w + b) * (1.0 - b)       # noqa: E731
    c = check(f, x, w, b, kernels=1, externs=1)
    assert "xb % 128 + xi" in c.kernels[0], c.kernels[0]
    import functx.compile.cpu.compiled as cpu_compiled
    monkeypatch.setattr(cpu_compiled, "prefers_blocked", lambda plan: False)
    rows, _ = fused(f, x, w, b)
    assert "xb" not in rows.kernels[0]
    assert_same_bits(c.call(x, w, b)[0], rows.call(x, w, b)[0])
    monkeypatch.undo()
    c = check(f, x, w[:, :100], b[:100], kernels=1)               # rows of 100: not blocked
    assert "xb" not in c.kernels[0]


def test_reads_constant_on_a_block_through_nested_divisions_run_blocked(monkeypatch):
    """factor_dots' outer product of two weights, W1[i, h] * W2[h, k] as (h, i, k), reads W1
    at 64*((xindex // 64) % 16) + xindex // 1024: constant on a block of 32 rows, so the
    kernel runs blocked (a vector loop, not a scalar one of divisions), bit for bit equal to
    the row-by-row kernel; a read through `// 48` moves inside a block and stays row by row."""
    w1, w2, x = torch.randn(16, 64), torch.randn(64, 64), torch.randn(8, 64)
    f = lambda w1, w2, x: x @ (w1.t()[:, :, None] * w2[:, None, :]).reshape(64, 1024)   # noqa: E731
    c = check(f, w1, w2, x, atol=1e-4, rtol=1e-4)
    kernel = next(k for k in c.kernels if "xb" in k or "xindex / 1024" in k)
    assert "(xb / 64)" in kernel and "(xb / 1024)" in kernel, kernel
    monkeypatch.setattr(cpu_compiled, "prefers_blocked", lambda plan: False)
    rows, _ = fused(f, w1, w2, x)
    assert all("xb" not in k for k in rows.kernels)
    assert_same_bits(c.call(w1, w2, x)[0], rows.call(w1, w2, x)[0])
    monkeypatch.undo()
    g = lambda w1, w3, x: x @ (w1.t()[:, :, None] * w3[:, None, :]).reshape(64, 768)   # noqa: E731
    c = check(g, w1, torch.randn(64, 48), x, atol=1e-4, rtol=1e-4)            # rows of 48: (xindex // 48) % 16
    assert all("xb" not in k for k in c.kernels), c.kernels


def test_empty_scalar_and_strided_inputs():
    c = check(lambda x: (x.sum(1), x * 2), torch.randn(3, 0))
    assert "empty tensor" in c.failure or all("empty tensor" in g.reason for g in c.groups)
    check(lambda x: torch.sin(x) * 2 + x.sum(), torch.tensor(1.5), kernels=1)
    check(lambda x, y: (torch.tanh(x) * y, x.sum(0)), torch.randn(5, 3).t(), torch.randn(3, 5))
    check(lambda x: (x.sum((0, 2)), x.var(0)), torch.randn(33, 5, 70), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- semantics

def test_nan_inf_and_signed_zero_like_torch():
    nan, inf = math.nan, math.inf
    a = torch.tensor([nan, 1.0, -0.0, 0.0, -inf, inf, -2.5, 3.0])
    b = torch.tensor([0.0, nan, 0.0, -0.0, 1.0, nan, -2.5, -3.0])
    # max/min propagate NaN (ties between zeros of either sign are not compared: torch's own
    # vectorized and scalar kernels disagree there)
    check(lambda a, b: (torch.maximum(a, b), torch.minimum(a, b)), a[[0, 1, 4, 5, 6]], b[[0, 1, 4, 5, 6]],
          exact=True, kernels=1)
    check(lambda a: (-a, a.abs(), a * -0.0, a.sign(), torch.where(a > 0, a, -a), a.to(torch.bool),
                     (a != a)), a, exact=True)
    check(lambda a, b: (a / b, a * b, a - b, torch.fmod(a, b), torch.xlogy(a, b)), a, b, exact=True)
    check(lambda a: (torch.sin(a), torch.tanh(a), torch.expm1(a), torch.sqrt(a), torch.log(a), torch.exp(a),
                     torch.sigmoid(a), a.floor(), a.round()), a)
    check(lambda a: torch.sqrt(a) * 1.0, torch.tensor([-0.0, 0.0]), exact=True)
    for dtype in (torch.float32, torch.float64):      # entr: 0 at +-0, -inf below, nan kept
        check(lambda a: torch.special.entr(a) * 1.0, a[:7].to(dtype), exact=True)
    rows = torch.randn(3, 40)
    rows[1, 7] = nan
    rows[2, 3] = inf
    check(lambda x: (x.amax(1), x.amin(1), x.sum(1), x.amax(0), torch.softmax(x, -1)), rows)


def test_float32_tanh_within_5_ulp_everywhere():
    """fx_tanhf (XLA's rational approximation, cpp_ops.HELPERS) against tanh in float64, on
    every 509th float32 in [0, 9] (where tanh rounds to 1) and near 0, both signs: within 5
    ulp (the exhaustive check over all 2^31 positive floats gave 4.9), odd to the bit, and
    NaN/inf/-0 as torch; -0.0 keeps its sign."""
    import numpy as np
    bits = np.arange(0, np.float32(9.0).view(np.int32), 509, dtype=np.int32)
    x = torch.from_numpy(np.concatenate([bits.view(np.float32),
                                         np.float32([4e-4, 3.999e-4, 7.9988117, 7.99881, 20.0])]))
    compiled, y = fused(torch.tanh, x)
    assert "fx_tanhf" in compiled.fused.library_source
    want = torch.tanh(x.double())
    ulp = torch.from_numpy(np.spacing(want.float().numpy())).double()
    err = ((y.double() - want).abs() / ulp).max().item()
    assert err <= 5.0, err
    _, yn = fused(torch.tanh, -x)
    assert_same_bits(yn, -y)
    special = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-30, -1e-45, 88.0])
    check(torch.tanh, special, exact=False, rtol=0, atol=0)
    _, ys = fused(torch.tanh, special)
    assert_same_bits(ys[3:5], special[3:5])


def test_float32_row_sums_add_float_chunks_in_double():
    """A row's float32 sum adds float partial sums over chunks (128 elements when the loop is
    a SIMD reduction, 16 when a max shares it) into a double: on long rows with a large
    common offset (where a float running sum drifts) it stays as close to the float64 sum as
    torch's own float32 sum, and sums with a max beside them too."""
    x = torch.randn(3, 100_003, generator=torch.Generator().manual_seed(0)) + 1000.0
    want = x.double().sum(1)
    torch_err = (x.sum(1).double() - want).abs().max().item()
    compiled, got = fused(lambda x: (x * 1.0).sum(1), x)
    assert "accf" in compiled.fused.library_source
    assert (got.double() - want).abs().max().item() <= max(torch_err, 4 * want.abs().max().item() * 2 ** -24)
    # a sum and a max in one loop over the row: sequential float chunks
    compiled, (s, m) = fused(lambda x: ((x * 2.0).sum(1), (x * 2.0).amax(1)), x)
    src = compiled.fused.library_source
    assert "r0 += 16" in src, src
    torch.testing.assert_close(s.double(), 2 * want, rtol=2e-7, atol=0)
    torch.testing.assert_close(m, (x * 2.0).amax(1), rtol=0, atol=0)


def test_short_row_sums_unrolled_full_blocks_and_a_partial_one():
    """Rows of at most 16 terms (a forward Laplacian's sum over directions) run blocked, full
    blocks of 32 rows with a constant trip count, the last one with its own, and sum in float:
    both against float64, with 7 full blocks and a partial one of 18 rows."""
    x = torch.randn(83, 16, 3, generator=torch.Generator().manual_seed(1))
    s = torch.randn(83, 3, generator=torch.Generator().manual_seed(2))
    compiled, got = fused(lambda x, s: (x * x).sum(1) * torch.tanh(s), x, s)
    src = compiled.fused.library_source
    assert "const int64_t xn = 32;" in src and "float acc" in src, src
    want = (x.double() ** 2).sum(1) * torch.tanh(s.double())
    torch.testing.assert_close(got.double(), want, rtol=4e-6, atol=1e-7)


def test_integer_and_bool_semantics():
    big = torch.tensor([2**31 - 1, -2**31, 7, -7, 0, 3], dtype=torch.int32)
    small = torch.tensor([1, -1, 3, 2, 5, -4], dtype=torch.int32)
    check(lambda i, j: (i + j, i * j, i - j, i & j, i | j, i ^ j, ~i, i < j, i == j, -i, i.abs(),
                        torch.maximum(i, j), i.sum(), i.prod(), i.amax(), i.to(torch.float32),
                        i.to(torch.int64) * 3, torch.where(i > j, i, j)), big, small, exact=True)
    i64 = torch.tensor([2**62, -2**63, 5, -5], dtype=torch.int64)
    check(lambda i: (i * 4, i + i, i.sum(), i.amin(), (i > 0).sum(), (i > 0).all(), (i > 0).any(),
                     ~(i > 0), (i > 0) & (i < 6)), i64, exact=True)
    f = torch.tensor([2.7, -2.7, 0.5, -0.5, 1e9, -0.0])
    check(lambda x: (x.to(torch.int32), x.to(torch.int64), x.to(torch.bool), (x > 0).to(torch.float32)),
          f, exact=True)


def test_primitives_without_cpp_run_through_torch_with_their_reason():
    ints = torch.arange(1, 13).reshape(3, 4)
    c = check(lambda x: (x.exp() + 1.0, torch.special.digamma(x + 2.0)), X)
    reasons = {g.name: g.reason for g in c.groups if g.kind == "extern"}
    assert "digamma has no C++ expression" in reasons["digamma"]
    c = check(lambda i: (i // 3 + 1, i % 4 * 2, torch.div(i, 2, rounding_mode="trunc") - i), ints)
    assert c.kernels and any("idiv" in g.name for g in c.groups if g.kind == "extern"), c.report()
    c = check(lambda x: torch.erfinv(x * 0.5) + x.half().float(), X)
    assert "C++ lowering" in "\n".join(g.reason or "" for g in c.groups), c.report()


def test_every_pointwise_primitive_has_a_cpp_expression_or_a_reason():
    for name, p in REGISTRY.items():
        if p.kind == POINTWISE and name not in POINTWISE_WITHOUT_CPP:
            assert isinstance(p.cpp, str) or callable(p.cpp), f"pointwise {name} needs a C++ expression"
        if p.kind != POINTWISE:
            assert p.cpp is None, f"{name} is not pointwise but declares a C++ expression"
    for name in POINTWISE_WITHOUT_CPP:
        assert REGISTRY[name].cpp is None, name


# ---------------------------------------------------------------- tiers, cache, fallback

def test_first_calls_run_eager_then_the_fused_tier(monkeypatch):
    monkeypatch.delenv("FUNCTX_CPU_BLOCK", raising=False)
    monkeypatch.setenv("FUNCTX_CPU_HOT_CALLS", "2")
    f = functx.vmap(functx.grad(lambda x: (torch.cos(x) * x.exp() - x).sum()))
    x = torch.randn(5, 9)
    want = f(x)
    jitted = functx.jit(f, backend="cpu")
    torch.testing.assert_close(jitted(x), want)
    compiled = jitted.lower(x)[0].compiled
    assert compiled.tier == "eager" and compiled._thread is None     # call 1: no compile yet
    assert "tier: the last call ran the eager tier (call 1); fused tier: not started" in str(functx.explain(jitted)(x))
    torch.testing.assert_close(jitted(x), want)                       # call 2 starts the build
    assert compiled._thread is not None
    wait_for_fused()
    torch.testing.assert_close(jitted(x), want)
    assert compiled.tier == "fused" and compiled.eager_calls == 2
    text = str(functx.explain(jitted)(x))
    assert "tier: the last call ran the fused tier (calls 1-2 ran the eager tier); fused tier: ready" in text
    assert 'extern "C" void k0_poi' in text and "def call(" in text


def test_disk_cache_serves_a_fresh_process(tmp_path, monkeypatch):
    f_src = "lambda x: torch.tanh(x) * 2.0 + x.sum(1, keepdim=True)"
    monkeypatch.setenv("FUNCTX_CACHE_DIR", str(tmp_path))
    compiled, _ = fused(eval(f_src), torch.randn(4, 33))       # noqa: S307  (a fixed lambda)
    assert compiled.fused.compiled_now
    libs = sorted(tmp_path.rglob("*.so"))
    assert len(libs) == 1
    script = textwrap.dedent(f"""
        import torch, functx
        x = torch.randn(4, 33)
        f = {f_src}
        jitted = functx.jit(f, backend="cpu")
        torch.testing.assert_close(jitted(x), f(x))
        c = jitted.lower(x)[0].compiled
        print(c.tier, c.fused.compiled_now)
    """)
    env = dict(os.environ, FUNCTX_CPU_BLOCK="1", PYTHONPATH=os.pathsep.join(sys.path))
    fresh = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.split() == ["fused", "False"]                 # loaded from the disk cache
    assert sorted(tmp_path.rglob("*.so")) == libs


def test_explain_of_a_function_not_called_yet_shows_the_fused_tier():
    ex = functx.explain(lambda x: torch.softmax(x, -1) * 2.0, backend="cpu")(X)
    assert ex.backend == "cpu" and len(ex.kernels) == 1 and 'extern "C" void' in ex.kernels[0]
    assert "tier: no call yet; fused tier: ready" in str(ex) and "-- eager tier" in str(ex)


def test_missing_compiler_stays_eager_and_explain_says_so(monkeypatch, blocking):
    monkeypatch.setenv("FUNCTX_CXX", "/nonexistent/g++")
    f = lambda x: torch.exp(x) * 0.5 + 1.0   # noqa: E731
    jitted = functx.jit(f, backend="cpu")
    torch.testing.assert_close(jitted(X), f(X))
    compiled = jitted.lower(X)[0].compiled
    assert compiled.tier == "eager"
    assert "C++ compiler '/nonexistent/g++' not found" in str(functx.explain(jitted)(X))


# ---------------------------------------------------------------- random programs

UNARY = {
    "sin": torch.sin, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "abs": torch.abs, "neg": torch.neg,
    "half": lambda v: v * 0.5, "sq": lambda v: v * v, "exp": lambda v: torch.exp(-v * v),
}
BINARY = {
    "add": lambda v, y: v + y, "mul": lambda v, y: v * y, "max": torch.maximum,
    "where": lambda v, y: torch.where(v > y, v, y * 0.5),
    "rowsum": lambda v, y: v + v.sum(1, keepdim=True), "colmax": lambda v, y: v * v.amax(0, keepdim=True),
    "flip": lambda v, y: v.flip(0) + y, "t": lambda v, y: (v.t() * y.t()).t(),
}


@settings(max_examples=4)
@given(st.lists(st.sampled_from(sorted(UNARY) + sorted(BINARY)), min_size=1, max_size=5),
       st.sampled_from([torch.float32, torch.float64]), st.sampled_from(["value", "sum0", "grad"]),
       st.integers(0, 50))
def test_random_programs_match_eager(ops, dtype, out, seed):
    def f(x, y):
        v = x
        for name in ops:
            v = UNARY[name](v) if name in UNARY else BINARY[name](v, y)
        return v if out == "value" else v.sum(0)
    g = torch.Generator().manual_seed(seed)
    x, y = (torch.randn(4, 4, generator=g, dtype=dtype) for _ in range(2))
    fn = functx.grad(lambda x, y: f(x, y).sum()) if out == "grad" else f
    check(fn, x, y)


def test_a_matmul_reshaped_after_writes_into_its_pooled_buffer():
    """A dot_general whose torch.matmul result is reshaped after (factor_dots' per-point
    products in a forward Laplacian: (n, h) @ (h, d*h) -> (n, d, h)) writes into a view of
    its pooled buffer (kernels/cpu_gemm.mm_into), as plain matmuls do: a fresh 64 MB product
    per call cost ~35 ms of page faults at d=256."""
    torch.manual_seed(0)
    ws = [(torch.randn(a, b) / a ** 0.5, torch.randn(b) * 0.1) for a, b in [(5, 8), (8, 8), (8, 1)]]

    def u(p, x):
        for i, (w, b) in enumerate(p):
            x = x @ w + b
            x = torch.tanh(x) if i < 2 else x
        return x.squeeze(-1)
    lap = functx.vmap(functx.laplacian(u, argnums=1), in_axes=(None, 0))
    compiled = check(lap, ws, torch.randn(16, 5), atol=1e-5, rtol=1e-5)
    assert re.search(r"_mm_into\(.*, _slot\w+(\.view\(|_rows)", compiled.source), compiled.source


def test_reductions_over_a_middle_axis_run_blocked():
    """A sum over the middle axis of (n, r, d) (the forward Laplacian's sum over directions)
    loads x[n, r, j] at xindex % d + r*d + n*r*d: contiguous across a block of rows when d is a
    multiple of the block. Blocked, it vectorizes across rows (row by row it was a stride-d
    gather per element: 2x slower than torch at d = 256); sizes that are not multiples stay
    row by row. Against eager torch on both."""
    torch.manual_seed(0)
    for n, r, d in [(3, 256, 64), (2, 33, 96), (3, 17, 40)]:
        x, y = torch.randn(n, r, d), torch.randn(n, d)
        c = check(lambda x, y: (x * x).sum(1) * torch.tanh(y) + x.amax(1), x, y, atol=1e-5, rtol=1e-5)
        assert ("xb" in c.kernels[0]) == (d % XBLOCK == 0), c.kernels[0]


def test_float_to_int_conversions_match_torch_out_of_range():
    # A C++ cast of NaN or an out-of-range float is undefined; g++ folded float -> int64 ->
    # float into a truncation, so NaN stayed NaN (found by the fuzzer). torch gives the minimum.
    def f(x):
        return x.to(torch.int64), x.to(torch.int64).to(torch.float32), x.to(torch.int32).to(x.dtype)
    nan, inf = float("nan"), float("inf")
    for x in (torch.tensor(nan), torch.tensor([nan, 3.7, -3.7, -1e30, 1e30, 2.5e9, -2.5e9, inf, -inf]),
              torch.tensor([nan, 3.7, -1e300, 1e300], dtype=torch.float64)):
        compiled, out = fused(f, x)
        assert compiled.failure is None, compiled.failure
        for got, want in zip(out, f(x)):
            assert torch.equal(got, want), (x, got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_an_integer_converted_back_to_float_is_never_negative_zero(dtype):
    # g++ (-fno-trapping-math) folds float(int64(x)) into trunc(x), which keeps -0.0 for
    # -1 < x < 0: x // x.to(int64) was +inf where torch gives -inf (found by the fuzzer).
    def f(x):
        n = x.to(torch.int64)
        return n.to(dtype), x // n, x / x.to(torch.int32)
    x = torch.tensor([-0.5, -0.9, -1.6, 0.4, -0.0, 2.5] * 4, dtype=dtype)
    compiled, out = fused(f, x)
    assert compiled.failure is None, compiled.failure
    for got, want in zip(out, f(x)):
        assert_same_bits(got, want)
