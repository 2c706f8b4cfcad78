"""The one pipeline: jit and explain run the passes once per trace and hand the optimized
graph to the backend, which compiles it as it is; graph.meta rides through every pass."""
import pytest
import torch

import functx
from functx.compile import pipeline
from functx.compile.backend import BACKENDS, resolve_backend
from functx.compile.compiled import Compiled

X = torch.randn(3, 4, dtype=torch.float64)
BACKEND_NAMES = ["eager", pytest.param("triton", marks=pytest.mark.filterwarnings("ignore::RuntimeWarning"))]


def _needs(backend):
    if backend == "triton":
        pytest.importorskip("triton")
        from functx.compile.triton import runtime
        if not runtime.interpreting() and not torch.cuda.is_available():
            pytest.skip("Triton was imported without TRITON_INTERPRET=1 (CPU kernels need it)")


def f(x, w):
    h = torch.tanh(x) * 1.0 + torch.tanh(x)           # simplify and cse both have work
    return (h.t().t() @ w).sum(0), h


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_explain_shows_the_graph_the_backend_compiled(backend):
    _needs(backend)
    w = torch.randn(4, 2, dtype=torch.float64)
    ex = functx.explain(f, backend=backend)(X, w)
    assert isinstance(ex.compiled, Compiled) and ex.compiled.backend == backend
    assert ex.graph is ex.compiled.graph
    assert [name for name, _ in ex.passes] == [name for name, _ in pipeline.PIPELINE]
    assert str(ex.graph) == [text for _, text in ex.passes if text][-1]     # the last change
    assert len(ex.graph.eqns) < len(ex.traced.eqns)
    text = str(ex)
    assert "-- passes --" in text and "after cse:" in text and str(ex.graph) in text
    entry, _ = functx.jit(f, backend=backend).lower(X, w)
    assert str(entry.compiled.graph) == str(ex.graph)           # jit compiles what explain shows
    for got, want in zip(entry.compiled.call(X, w), f(X, w)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_passes_run_once_per_trace(backend, monkeypatch):
    _needs(backend)
    runs = []

    def counted(name, fn):
        def run(graph):
            runs.append(name)
            return fn(graph)
        return run
    monkeypatch.setattr(pipeline, "PIPELINE", [(n, counted(n, fn)) for n, fn in pipeline.PIPELINE])
    j = functx.jit(lambda x: torch.sin(x) * 2.0 + 0.0, backend=backend)
    for _ in range(3):
        j(X)
    assert runs == [n for n, _ in pipeline.PIPELINE]
    j(X[:2])                                                    # a new signature traces again
    assert runs == [n for n, _ in pipeline.PIPELINE] * 2 and j.trace_count == 2


def test_every_pass_keeps_graph_meta():
    g = functx.make_graph(lambda d: {"s": (d["a"] * 1.0).sum(), "t": d["a"].t().t()})({"a": X})
    assert g.meta.in_tree is not None and g.meta.out_tree is not None
    for name, fn in pipeline.PIPELINE:
        assert fn(g).meta is g.meta, name
    assert pipeline.optimize(g)[0].meta is g.meta


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_meta_survives_the_pipeline_mutation_and_fallbacks(backend):
    _needs(backend)
    x = torch.rand(5, dtype=torch.float64) + 0.5

    def g(x, buf):
        buf.mul_(2.0)                                           # written back after each call
        return torch.special.i0e(x * 2).sum() + buf.sum()      # i0e: an opaque fallback

    j = functx.jit(g, backend=backend)
    entry, _ = j.lower(x, x.clone())
    meta = entry.compiled.graph.meta
    assert meta.mutated_inputs == (1,) and "aten.special_i0e.default" in meta.fallbacks
    for _ in range(2):
        a, b = x.clone(), x.clone()
        torch.testing.assert_close(j(x, a), g(x, b))
        torch.testing.assert_close(a, b)
    ex = functx.explain(g, backend=backend)(x, x.clone())
    assert "aten.special_i0e.default" in ex.fallbacks and ex.graph.meta.mutated_inputs == (1,)
    assert functx.make_graph(g)(x, x.clone()).fallbacks == ["aten.special_i0e.default"]


def test_backends_are_declared_in_one_registry():
    assert sorted(BACKENDS) == ["cpu", "eager", "triton"]
    cls = resolve_backend("eager", [X])
    assert cls.backend == "eager" and issubclass(cls, Compiled)
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("cuda", [X])


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_constants_are_bound_into_call(backend):
    _needs(backend)
    c = torch.randn(4, dtype=torch.float64)
    j = functx.jit(lambda x: x * c + 1.0, backend=backend)
    entry, _ = j.lower(X)
    assert entry.compiled.graph.consts
    torch.testing.assert_close(entry.compiled.call(X)[0], X * c + 1.0)
    torch.testing.assert_close(entry.compiled(X)[0], X * c + 1.0)
    torch.testing.assert_close(j(X), X * c + 1.0)
