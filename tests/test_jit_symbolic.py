"""jit's symbolic dimensions: one trace serves many sizes, only where that is provably right.
The oracle is eager PyTorch running the same function at every size."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import functx

pytest.importorskip("torch.fx.experimental.symbolic_shapes")


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, equal_nan=True)


def _sweep(f, make, sizes, max_traces, **jit_options):
    """jit(f) equals f at every size, with at most max_traces traces."""
    jf = functx.jit(f, **jit_options)
    for n in sizes:
        args = make(n)
        _close(jf(*args), f(*args))
    assert jf.trace_count <= max_traces, str(jf.cache_info())
    return jf


SHAPE_FUNCTIONS = {
    # reshape/view with computed sizes, reductions over the dynamic dim
    "reshape": lambda x: x.reshape(x.shape[0] * 2, -1).sum(1) + x.view(-1).mean(),
    # broadcasting where the dynamic dim meets size 1, softmax over it
    "broadcast": lambda x: (x[:, None, :] * x[None, :, :1]).softmax(0).sum(1),
    "concat": lambda x: torch.cat([x, x.flip(0), x[: x.shape[0] // 2]], 0).cumsum(0),
    "pad": lambda x: F.pad(x, (1, 2, x.shape[0] // 2, 1)) * 2,
    "slices": lambda x: x[1: x.shape[0] - 1] - x[: x.shape[0] - 2] + x[2:].mean(0),
    "new_tensors": lambda x: x + x.new_ones(x.shape) * x.new_full((x.shape[0], 1), 2.0),
    "norms": lambda x: F.layer_norm(x, x.shape[1:]) + x.var(0) + x.std(0, keepdim=True),
    "matmul": lambda x: (x @ x.T).logsumexp(1),
}


@pytest.mark.parametrize("name", list(SHAPE_FUNCTIONS))
def test_shape_functions_reuse_one_trace(name):
    f = SHAPE_FUNCTIONS[name]
    jf = _sweep(f, lambda n: (torch.randn(n, 6),), [4, 5, 7, 9, 12, 16], max_traces=2)
    assert any("symbolic" in e for e in jf.cache_info().entries), jf.cache_info()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(2, 40), min_size=3, max_size=8))
def test_hypothesis_sizes_grad_vmap_jvp_inside_jit(sizes):
    w = torch.randn(5, 3, dtype=torch.float64)

    def loss(x):
        return (torch.tanh(x @ w) ** 2).mean() + x[: x.shape[0] // 2].sum()

    def f(x):
        g = functx.grad(loss)(x)
        per_row = functx.vmap(lambda r: (r * r).sum())(x)
        _, tangent = functx.jvp(loss, (x,), (torch.ones_like(x),))
        return g, per_row, tangent

    def reference(x):
        g = torch.func.grad(loss)(x)
        per_row = torch.func.vmap(lambda r: (r * r).sum())(x)
        _, tangent = torch.func.jvp(loss, (x,), (torch.ones_like(x),))
        return g, per_row, tangent
    jf = functx.jit(f)
    for n in sizes:
        x = torch.randn(n, 5, dtype=torch.float64)
        for a, b in zip(jf(x), reference(x)):
            _close(a, b)
    # the first size, then symbolic; x[:n//2] of one row (n = 2, 3) may be its own guarded entry
    assert jf.trace_count <= 3, str(jf.cache_info())


def test_arange_and_factories_of_a_size_stay_symbolic():
    # torch.arange(n), torch.zeros(n, ...) with a symbolic n have no traced argument: they are
    # lowered to primitives of that size instead of running once at the traced size
    def f(x):
        n = x.shape[0]
        return (x + torch.arange(n, dtype=x.dtype)[:, None] * torch.arange(2, n + 2)[:, None]
                + torch.zeros(n, 1) + torch.full((n, 1), 2.5) - torch.ones(n, x.shape[1]).cumsum(0))
    jf = _sweep(f, lambda n: (torch.randn(n, 3),), [3, 4, 5, 9, 4], max_traces=2)
    assert "specialized to this size" not in str(jf.cache_info())


def test_constants_times_a_size_are_right_at_every_size():
    # torch turned a size into a number without a guard when it met a plain tensor (a
    # constant the function builds): x.shape[0] * torch.arange(3.0) was wrong at every other size
    f = lambda x: x + torch.arange(3.0) * x.shape[0]      # noqa: E731
    jf = _sweep(f, lambda n: (torch.randn(n, 3),), [4, 5, 6, 7, 5], max_traces=2)     # and symbolic
    assert "specialized" not in str(jf.cache_info())
    e = lambda x: x - torch.ones(3).reshape(1, 3).expand(x.shape[0], 3)      # noqa: E731
    _sweep(e, lambda n: (torch.randn(n, 3),), [4, 5, 6, 7, 5], max_traces=5)     # pinned per size
    # torch's own decompositions do it too (adaptive pooling's window starts); guarded there
    g = lambda x: F.adaptive_avg_pool1d(x, 4) + F.adaptive_max_pool1d(x, 3).sum(-1, keepdim=True)  # noqa: E731
    _sweep(g, lambda n: (torch.randn(2, 3, n),), [4, 5, 6, 9, 13, 5], max_traces=6)


def test_avg_pool_over_a_symbolic_length():
    # the divisor (window sizes) is computed from the symbolic output size, not a constant
    f = lambda x: F.avg_pool1d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)   # noqa: E731
    jf = _sweep(f, lambda n: (torch.randn(2, 3, n),), [4, 5, 7, 9, 12], max_traces=2)
    g = lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)     # noqa: E731
    _sweep(functx.grad(lambda x: g(x).pow(2).sum()), lambda n: (torch.randn(3, n + 1, n),), [4, 5, 7, 9],
           max_traces=2)
    assert "specialized" not in str(jf.cache_info())


def test_interpolate_specializes_with_a_guard_at_the_users_line():
    # upsample reads its input's sizes through aten.size.int from C++ (was: the symbolic
    # trace failed); its output size goes through int(): pinned, and explain says where
    f = lambda x: F.interpolate(x, size=7, mode="nearest") + F.interpolate(x, scale_factor=2.0, mode="linear")[..., :7]  # noqa: E501,E731
    jf = _sweep(f, lambda n: (torch.randn(2, 3, n),), [4, 5, 6, 5], max_traces=3)
    text = str(jf.cache_info())
    assert "specialized to this size" in text and "F.interpolate" in text and "static: the symbolic" not in text


def test_split_and_chunk_keep_the_size_symbolic_unbind_specializes():
    chunks = _sweep(lambda x: [t.sum(0) for t in x.chunk(2)], lambda n: (torch.randn(n, 3),),
                    [3, 4, 5, 9, 12], max_traces=2)          # two pieces for every n >= 2
    assert "specialized to this size" not in str(chunks.cache_info())
    split = _sweep(lambda x: [t.sum(0) for t in x.split(3)], lambda n: (torch.randn(n, 3),),
                   [3, 4, 5, 6, 4], max_traces=3)           # 4..6: two pieces, one entry
    assert "Eq(((argument 'x' dim 0 + 2)//3), 2)" in str(split.cache_info())
    unbind = _sweep(lambda x: sum(x.unbind(0)), lambda n: (torch.randn(n, 3),), [3, 4, 5, 4], max_traces=3)
    text = str(unbind.cache_info())   # one result per row: pinned, and the user's line says why
    assert "specialized to this size" in text and "x.unbind(0)" in text


def test_python_if_on_a_size_is_guarded():
    def f(x):
        if x.shape[0] > 5:
            return x * 2
        return x - 1
    jf = functx.jit(f)
    for n in [3, 4, 7, 8, 2, 6, 5, 9, 3]:
        x = torch.randn(n)
        _close(jf(x), f(x))
    info = jf.cache_info()
    assert info.traces == 3, info          # size 3 static, then one symbolic entry per side
    text = str(info)
    assert "guard: argument 'x' dim 0 > 5" in text and "guard: argument 'x' dim 0 <= 5" in text
    assert "test_jit_symbolic.py" in text        # the line that decided


def test_sizes_0_and_1_are_static_and_explained():
    jf = functx.jit(lambda x: x.sum(0) / x.shape[0], dynamic=True)
    for n in [3, 1, 4, 0, 1, 6]:
        x = torch.randn(n, 2)
        _close(jf(x), x.sum(0) / n)
    info = jf.cache_info()
    assert info.traces == 3, info
    assert "sizes 0 and 1 are traced as constants" in str(info)


def test_specializing_use_of_a_size_is_correct_and_visible():
    # int(n) feeds a Python range: the trace is pinned to that size (a guard dim == size)
    def f(x):
        return sum(x[i] * i for i in range(int(x.shape[0])))
    jf = functx.jit(f, dynamic=True)
    for n in [3, 4, 3, 5]:
        x = torch.randn(n)
        _close(jf(x), f(x))
    assert jf.trace_count == 3
    assert "specialized to this size" in str(jf.cache_info()) or "Eq(" in str(jf.cache_info())


def test_equal_dims_of_two_arguments():
    jf = functx.jit(lambda x, y: (x + y).sum(0))
    for n in [3, 4, 5, 8]:
        x, y = torch.randn(n, 2), torch.randn(n, 2)
        _close(jf(x, y), (x + y).sum(0))
    assert jf.trace_count == 2
    # sizes that break the equality the trace assumed: torch's own error, not a reused graph
    with pytest.raises(Exception):
        jf(torch.randn(5, 2), torch.randn(6, 2))
    x, y = torch.randn(5, 2), torch.randn(1, 2)      # broadcasting: a new (static) trace
    _close(jf(x, y), (x + y).sum(0))


def test_dynamic_dims_option_and_dynamic_false():
    f = lambda x: x.mean(1)                                   # noqa: E731
    marked = functx.jit(f, dynamic_dims={"x": 1})
    static = functx.jit(f, dynamic=False)
    for n in [3, 4, 5]:
        x = torch.randn(2, n)
        _close(marked(x), f(x))
        _close(static(x), f(x))
    assert marked.trace_count == 1 and static.trace_count == 3
    with pytest.raises(ValueError, match="dynamic"):
        functx.jit(f, dynamic="yes")


def test_python_closure_in_graph_falls_back_to_static_and_explains():
    def f(x):
        functx.debug.print("n={}", x.shape[0])      # a callback closing over a size
        return x * 2
    jf = functx.jit(f, dynamic=True)
    import contextlib, io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for n in [3, 4]:
            _close(jf(torch.ones(n)), torch.ones(n) * 2)
    assert "n=3" in out.getvalue() and "n=4" in out.getvalue()
    assert "static: the symbolic trace" in str(jf.cache_info())


def test_growing_buffer_and_explain():
    def step(buf, x):
        return torch.cat([buf, x[None]], 0) * 0.5
    jf = functx.jit(step)
    buf = torch.zeros(2, 3)
    for _ in range(10):
        x = torch.randn(3)
        ref = step(buf, x)
        buf = jf(buf, x)
        _close(buf, ref)
    assert jf.trace_count == 2
    e = functx.explain(jf)(buf, torch.randn(3))
    text = str(e)
    assert "symbolic: argument 'buf' dim 0" in text and e.retrace is None


def test_cache_limit_is_not_filled_by_sizes():
    jf = functx.jit(lambda x: torch.softmax(x, -1), cache_limit=4)
    for n in range(2, 60):
        x = torch.randn(3, n)
        _close(jf(x), torch.softmax(x, -1))
    assert jf.cache_info().size <= 2 and jf.cache_info().evictions == 0


def test_transformer_value_and_grad_reuses_one_trace():
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def loss(params, x):
        return torch.func.functional_call(layer, params, (x,)).pow(2).mean()
    step = functx.jit(functx.value_and_grad(loss))
    for n in [5, 6, 9, 13]:
        x = torch.randn(2, n, 16)
        value, grads = step(params, x)
        ref_grads, ref_value = torch.func.grad_and_value(loss)(params, x)
        _close(value, ref_value)
        for k in grads:
            _close(grads[k], ref_grads[k])
    assert step.trace_count == 2, step.cache_info()


def test_scan_over_a_symbolic_length():
    def f(xs):
        c, ys = functx.scan(lambda c, x: (c + x.sum(), c * x), torch.zeros(()), xs)
        return c, ys.mean(0)

    def ref(xs):
        c, ys = torch.zeros(()), []
        for x in xs:
            ys.append(c * x)
            c = c + x.sum()
        return c, torch.stack(ys).mean(0)
    jf = functx.jit(f)
    for n in [3, 4, 6, 9]:
        xs = torch.randn(n, 5)
        for a, b in zip(jf(xs), ref(xs)):
            _close(a, b)
    assert jf.trace_count == 2 and "symbolic: argument 'xs' dim 0" in str(jf.cache_info())


def test_debug_nans_falls_back_to_static_and_explains():
    jf = functx.jit(lambda x: (torch.tanh(x) ** 2).sum(0))
    with functx.debug_nans():
        for n in [3, 4, 6]:
            x = torch.randn(n, 4)
            _close(jf(x), (torch.tanh(x) ** 2).sum(0))
    info = str(jf.cache_info())
    assert jf.trace_count == 3 and "static: debug_nans re-runs" in info


def test_cond_with_symbolic_branches_falls_back_to_static():
    # cond's branches are interpreted at run time with their trace-time parameters: static
    def f(x):
        return functx.cond(x.sum() > 0, lambda x: x.reshape(-1, 2).sum(1), lambda x: (x * 2).reshape(-1, 2).mean(1), x)
    jf = functx.jit(f)
    for n in [4, 6, 8]:
        x = torch.randn(n)
        _close(jf(x), f(x))
    assert jf.trace_count == 3 and "cond's sub-graph has symbolic sizes" in str(jf.cache_info())


def test_a_symbolic_entry_that_raises_at_run_time_falls_back_to_static():
    f = lambda x: torch.tanh(x).sum(0)          # noqa: E731
    jf = functx.jit(f)
    jf(torch.randn(3, 2)), jf(torch.randn(4, 2))
    entry = next(e for e in jf._cache.entries.values() if e.symbolic is not None)

    def broken(*inputs):
        raise RuntimeError("simulated: a size mishandled at run time")
    entry.call = broken
    for n in [5, 6]:
        x = torch.randn(n, 2)
        _close(jf(x), f(x))
    assert "raised at run time" in str(jf.cache_info())
    assert all(e.symbolic is None for e in jf._cache.entries.values())
    # the function's own errors still reach the user
    g = functx.jit(lambda x, i: x[i.long()], dynamic=True)
    with pytest.raises(Exception):
        g(torch.randn(3), torch.tensor(7))


def test_without_a_usable_shape_env_jit_stays_static(monkeypatch):
    from functx.compile import symbolic

    def missing():
        raise symbolic.Unavailable("torch.fx.experimental.symbolic_shapes.ShapeEnv has no create_symbol")
    monkeypatch.setattr(symbolic, "_shape_env_api", missing)
    jf = functx.jit(lambda x: x.sum(0))
    for n in [3, 4, 5]:
        x = torch.randn(n, 2)
        _close(jf(x), x.sum(0))
    assert jf.trace_count == 3 and "symbolic dims are off" in str(jf.cache_info())


def test_torch_distributions_stay_symbolic():
    """torch.distributions broadcast a Python number against the parameters (a constant the
    function makes meets a symbolic size), validate them (a jit-time check), and rsample
    with torch.empty(shape).normal_(): one symbolic trace serves every batch size."""
    D = torch.distributions
    f = functx.jit(lambda m: D.Normal(m, 2.0).log_prob(m.cos()) + D.Normal(m, 1.0).rsample() * 0)
    for n in (3, 5, 7, 11):
        m = torch.randn(n)
        torch.testing.assert_close(f(m), D.Normal(m, 2.0).log_prob(m.cos()))
    assert f.cache_info().traces == 2
