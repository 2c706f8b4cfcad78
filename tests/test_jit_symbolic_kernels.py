"""jit's symbolic dimensions on the kernel backends: one trace and one kernel set serve every
size, the sizes being kernel arguments. Oracles: eager PyTorch at every size, and a static
(per-size) trace of the same function; the symbolic index math is checked against the static
one at concrete sizes. Triton kernels run in the interpreter on CPU (conftest.py)."""
import itertools
import os
import shutil

import pytest
import sympy
import torch
import torch.nn.functional as F
from hypothesis import Phase, given, settings

import functx
from functx.compile.fusion import indexing
from functx.testing import check_against_torch
from functx.testing import strategies as fst
from functx.compile.fusion.indexing import Index, Sym, evaluate, flatten, nonneg, unflatten

pytest.importorskip("torch.fx.experimental.symbolic_shapes")
triton = pytest.importorskip("triton")
from functx.compile.triton import runtime  # noqa: E402

interp = pytest.mark.skipif(not runtime.interpreting(),
                            reason="Triton was imported without TRITON_INTERPRET=1 (CPU kernels need it)")
# The interpreter computes masked-off lanes too (on zeros): numpy warns about their nan/inf.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, equal_nan=True)


def _symbolic_entries(jf):
    return [e for e in jf._cache.entries.values() if e.symbolic is not None]


# ---------------------------------------------------------------- index math over sizes

S0, S1 = sympy.Symbol("s0", positive=True, integer=True), sympy.Symbol("s1", positive=True, integer=True)


def test_nonneg_proves_only_what_holds_for_every_size():
    assert nonneg(S0 - 2) and nonneg(S0 * S1 - S0) and nonneg(S0 * S1 - 2 * S1)
    assert not nonneg(S0 - 3) and not nonneg(S1 - S0) and not nonneg(-S0)


@pytest.mark.parametrize("view", ["unflatten", "transpose", "rev", "bcast_inner", "reshape_split"])
def test_symbolic_index_equals_the_static_one_at_every_size(view):
    """An index built with symbolic sizes, evaluated at concrete sizes, is the index built
    with those sizes (for every xindex): the rewrites made symbolically hold for all sizes."""
    def build(n, m, x):
        shape = (n, m)
        if view == "unflatten":
            i, j = unflatten(x, shape)
            return flatten([i, j], shape)
        if view == "transpose":                  # read x.T[j, i] of an (m, n) buffer
            i, j = unflatten(x, shape)
            return flatten([j, i], (m, n))
        if view == "rev":
            i, j = unflatten(x, shape)
            return flatten([i, (m - 1) - j], shape)
        if view == "bcast_inner":               # a [n, 1] operand of an [n, m] kernel
            i, _ = unflatten(x, shape)
            return flatten([i, 0], (n, 1))
        i, j = unflatten(x, (n * 2, m))          # [n, m] viewed as [2n, m/...]: split rows
        return flatten([i // 2, i % 2 * m + j], (n, 2 * m))

    sym = build(S0, S1, Index.of(Sym("xindex", S0 * S1 * (2 if view == "reshape_split" else 1))))
    for n, m in itertools.product([2, 3, 5], [2, 4, 7]):
        numel = n * m * (2 if view == "reshape_split" else 1)
        static = build(n, m, Index.of(Sym("xindex", numel)))
        xs = torch.arange(numel)
        env = {"xindex": xs, "s0": n, "s1": m}
        assert torch.equal(torch.as_tensor(evaluate(sym, env)), torch.as_tensor(evaluate(static, env))), (n, m, sym)


def test_identity_views_simplify_symbolically():
    x = Index.of(Sym("xindex", S0 * S1))
    assert flatten(unflatten(x, (S0, S1)), (S0, S1)) == x
    i, j = unflatten(Index.of(Sym("xindex", 6 * S0)), (S0, 6))
    assert indexing.render(i) == "xindex // 6" and indexing.render(j) == "xindex % 6"


# ---------------------------------------------------------------- the Triton backend

TRITON_FUNCTIONS = {
    # reductions over the dynamic dim (rows of symbolic length)
    "sum_dynamic": lambda x, b: x.sum(0) * b,
    "softmax_dynamic": lambda x, b: torch.softmax(x, 0) * b,
    "mean_dynamic": lambda x, b: x.mean(0) + x.mean() * b,
    # reductions over the static dim of a dynamic number of rows, broadcasting against it
    "softmax_rows": lambda x, b: torch.softmax(x * b, -1),
    "layer_norm": lambda x, b: F.layer_norm(x, (x.shape[1],), b, None) + x.var(1, keepdim=True),
    "broadcast": lambda x, b: (x + b) * x[:, :1] - x.flip(0) + x.t().sum(0)[:, None],
}


@interp
@pytest.mark.parametrize("name", list(TRITON_FUNCTIONS))
def test_triton_one_trace_one_kernel_set_for_every_size(name):
    f = TRITON_FUNCTIONS[name]
    jf = functx.jit(f, backend="triton", dynamic_dims={"x": 0})
    static = functx.jit(f, backend="triton", dynamic=False)
    b = torch.randn(6)
    xs = [torch.randn(n, 6) for n in [3, 5, 9, 17, 4]]
    outs, loaded = [], None
    for x in xs:
        outs.append(jf(x, b))
        if loaded is None:
            loaded = len(runtime._modules)
    assert len(runtime._modules) == loaded         # no kernel module loaded after the first size
    for x, out in zip(xs, outs):
        _close(out, f(x, b))
        _close(out, static(x, b))
    assert jf.trace_count == 1, jf.cache_info()
    (entry,) = _symbolic_entries(jf)
    compiled = entry.compiled
    assert compiled.backend == "triton" and compiled.kernels
    assert ".shape[0]" in compiled.source       # the wrapper reads the size at call time
    assert static.trace_count == 5


@interp
def test_triton_both_dims_dynamic_sizes_as_kernel_arguments():
    f = lambda x: F.layer_norm(x, x.shape[1:]) * x.mean(0) - x.flip(1).amax(1, keepdim=True)  # noqa: E731
    jf = functx.jit(f, backend="triton", dynamic=True)
    for n, m in [(3, 4), (5, 7), (2, 33), (12, 3), (4, 1500)]:
        x = torch.randn(n, m)
        _close(jf(x), f(x))
    assert jf.trace_count == 1, jf.cache_info()
    compiled = _symbolic_entries(jf)[0].compiled
    assert "ks0" in "\n".join(compiled.kernels)   # a size (a row stride, a mean's count) is an argument
    from functx.compile.cuda_graphs import capture_blockers
    assert any("symbolic sizes" in r for r in capture_blockers(compiled.graph))   # a capture replays one size
    report = str(functx.explain(jf)(torch.randn(6, 5)))
    assert "symbolic: argument 'x' dim 0" in report
    assert "persistent for rows up to 1024 elements, looped beyond" in report


@interp
def test_triton_float64_counts_pass_as_exact_ints():
    # var's divisor Max(0.0, ToFloat(n - 1)) is an int-valued size: an int argument, exact in
    # float64 (a float argument would be float32 in Triton)
    f = lambda x: x.var(0) + x.std(1, correction=0).sum() - x.mean(0)    # noqa: E731
    jf = functx.jit(f, backend="triton", dynamic=True)
    for n in [3, 4, 7]:
        x = torch.randn(n, 5, dtype=torch.float64)
        torch.testing.assert_close(jf(x), f(x), rtol=1e-12, atol=1e-12)
    assert jf.trace_count == 1 and _symbolic_entries(jf), jf.cache_info()


@interp
@settings(max_examples=10, phases=(Phase.explicit, Phase.generate))
@given(fst.programs(max_ops=4))
def test_triton_random_programs_with_every_dim_symbolic(case):
    # the differential fuzzer's programs (test_fuzz.py), every dim symbolic from the first call
    check_against_torch(case.program, *case.args(), backends=("triton",), signed_zeros=False,
                        jit_options={"dynamic": True})


@interp
def test_triton_sizes_0_and_1_specialize_and_stay_correct():
    f = lambda x: torch.softmax(x, 0).sum(1) + x.sum(0).mean()       # noqa: E731
    jf = functx.jit(f, backend="triton", dynamic_dims={"x": 0})
    for n in [3, 1, 5, 0, 7, 1]:
        x = torch.randn(n, 4)
        _close(jf(x), f(x))
    info = str(jf.cache_info())
    assert jf.trace_count == 3, info
    assert "sizes 0 and 1 are traced as constants" in info


@interp
def test_triton_grad_through_a_symbolic_graph():
    w = torch.randn(8, 8)

    def loss(w, x):
        h = F.layer_norm(torch.tanh(x @ w), (8,))
        return (torch.softmax(h, 0) * h).sum()
    g = functx.jit(functx.grad(loss), backend="triton", dynamic_dims={"x": 0})
    for n in [4, 6, 11]:
        x = torch.randn(n, 8)
        _close(g(w, x), torch.func.grad(loss)(w, x))
    assert g.trace_count == 1, g.cache_info()
    report = str(functx.explain(g)(w, torch.randn(5, 8)))
    assert "not the matmul template: symbolic sizes" in report


@interp
@pytest.mark.slow
def test_triton_transformer_layer_value_and_grad_one_trace():
    """The issue's workload: value_and_grad of a TransformerEncoderLayer over sequence lengths,
    one symbolic trace and kernel set on the Triton backend (about 10 s in the interpreter)."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def loss(params, x):
        return torch.func.functional_call(layer, params, (x,)).pow(2).mean()
    step = functx.jit(functx.value_and_grad(loss), backend="triton", dynamic_dims={"x": 1})
    for n in [5, 7, 12]:
        x = torch.randn(2, n, 16)
        value, grads = step(params, x)
        want = torch.func.grad(loss)(params, x)
        torch.testing.assert_close(value, loss(params, x), rtol=1e-4, atol=1e-5)
        for k in grads:
            torch.testing.assert_close(grads[k], want[k], rtol=1e-4, atol=1e-5)
    assert step.trace_count == 1, step.cache_info()
    assert sum(g.kind == "kernel" for g in _symbolic_entries(step)[0].compiled.groups) > 10


# ---------------------------------------------------------------- the CPU backend (g++: few, small)

needs_cxx = pytest.mark.skipif(shutil.which(os.environ.get("FUNCTX_CXX", "g++")) is None,
                               reason="no C++ compiler")


@needs_cxx
@pytest.mark.cpu_fused
def test_cpu_one_library_for_every_size(monkeypatch, tmp_path):
    """Sizes are C++ arguments: after the first symbolic compile no size compiles again, and the
    fused tier (built in the background, after the trace's guards were frozen) serves them all."""
    from functx.compile.cpu import toolchain, wait_for_fused
    monkeypatch.setenv("FUNCTX_CACHE_DIR", str(tmp_path))
    built = []
    real = toolchain._compile
    monkeypatch.setattr(toolchain, "_compile", lambda *a: (built.append(a[2]), real(*a))[1])

    def f(x, b):
        return F.layer_norm(x, (x.shape[1],)) * b + torch.softmax(x, 0) - x.mean(0) * x.shape[0]
    jf = functx.jit(f, backend="cpu", dynamic_dims={"x": (0, 1), "b": 0})
    for n, m in [(3, 4), (5, 7), (5, 7)]:
        x, b = torch.randn(n, m), torch.randn(m)
        _close(jf(x, b), f(x, b))
    wait_for_fused()
    (entry,) = _symbolic_entries(jf)
    assert entry.compiled.tier == "fused", entry.compiled.status()
    for n, m in [(2, 2), (9, 3), (40, 65), (4, 1500), (3, 4)]:
        x, b = torch.randn(n, m), torch.randn(m)
        _close(jf(x, b), f(x, b))
    assert len(built) == 1 and jf.trace_count == 1, (built, jf.cache_info())
    assert "int64_t ks0" in entry.compiled.fused.library_source
    for n in [1, 0]:           # sizes 1 and 0 specialize: static entries (on the eager tier here)
        x, b = torch.randn(n, 5), torch.randn(5)
        _close(jf(x, b), f(x, b))
    assert jf.trace_count == 3 and "sizes 0 and 1 are traced as constants" in str(jf.cache_info())
