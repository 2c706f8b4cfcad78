"""CUDA graphs for the Triton host wrapper (functx/compile/cuda_graphs.py): the decision
whether a graph is safe to capture, and the runner's warm-up / capture / fallback logic,
on the CPU; capture and replay themselves under the `gpu` marker."""
import pytest
import torch

import functx
from functx.compile import cuda_graphs

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICE_REASON = "an input is on cpu (a CUDA graph replays CUDA work only)"


def blockers(f, *args):
    return cuda_graphs.capture_blockers(functx.explain(f, backend="eager")(*args).graph)


def test_a_plain_graph_is_blocked_only_by_its_cpu_inputs():
    assert blockers(lambda x, w: torch.tanh(x @ w).sum(), torch.randn(3, 4), torch.randn(4, 2)) == [DEVICE_REASON]


@pytest.mark.parametrize("name,f,needle", [
    ("print", lambda x: (functx.debug.print("x={}", x), x * 2)[1], "host callback"),
    ("random", lambda x: x + torch.randn(3), "random draws"),
    ("cond", lambda x: functx.cond(x.sum() > 0, lambda v: v * 2, lambda v: v - 1, x), "cond picks its branch"),
    ("while", lambda x: functx.while_loop(lambda c: c.abs().sum() < 100, lambda c: c * 2 + 1, x), "while_loop reads its predicate"),
    ("opaque", lambda x: torch.angle(x) + 1, "opaque fallback op"),
    ("cpu constant", lambda x: x * torch.arange(3.0), None),
])
def test_what_blocks_capture(name, f, needle):
    reasons = blockers(f, torch.randn(3))
    if needle is None:      # a closed-over tensor: a constant; on the CPU here, like the inputs
        assert any("constant tensor is on the CPU" in r for r in reasons) or reasons == [DEVICE_REASON]
        return
    assert any(needle in r for r in reasons), reasons


def test_sub_graphs_are_searched():
    def f(x):
        def body(c, xi):
            functx.debug.print("{}", xi)
            return c + xi, xi
        return functx.scan(body, torch.zeros(()), x)[0]
    assert any("host callback" in r for r in blockers(f, torch.randn(4)))


def test_debug_nans_blocks_capture():
    with functx.debug.debug_nans():
        reasons = blockers(lambda x: torch.log(x), torch.rand(3) + 1)
    assert any("debug_nans" in r for r in reasons)


def test_wrap_follows_the_option_and_the_config():
    g = functx.explain(lambda x: x * 2, backend="eager")(torch.randn(3)).graph
    call = lambda x: (x * 2,)        # noqa: E731
    assert cuda_graphs.wrap(call, g, False)[0] is call and "off" in cuda_graphs.wrap(call, g, False)[2]
    out, runner, reason = cuda_graphs.wrap(call, g, None)       # CPU inputs: blocked
    assert out is call and runner is None and reason.startswith("not captured")
    old = cuda_graphs.CONFIG.enabled
    cuda_graphs.CONFIG.enabled = False
    try:
        assert cuda_graphs.wrap(call, g, None)[2].startswith("off")
    finally:
        cuda_graphs.CONFIG.enabled = old


def test_runner_warms_up_captures_once_and_replays(monkeypatch):
    calls, captured = [], []

    def fake_capture(call, inputs, pool=None):
        captured.append(inputs)
        static_in = [x.clone() for x in inputs]
        return "graph", static_in, call(*static_in)

    def fake_replay(graph, static_in, static_out, inputs):
        for s, x in zip(static_in, inputs):
            s.copy_(x)
        return tuple(o.clone() for o in static_out)     # a real replay recomputes in place
    monkeypatch.setattr(cuda_graphs, "capture", fake_capture)
    monkeypatch.setattr(cuda_graphs, "replay", fake_replay)
    runner = cuda_graphs.CudaGraphRunner(lambda x: (calls.append(1), x + 1)[1:], warmup=2)
    for i in range(5):
        runner(torch.full((2,), float(i)))
    assert len(captured) == 1 and runner.graph == "graph" and runner.replays == 3
    assert runner.calls == 2 and "captured after 2" in runner.status


def test_runner_leaves_autograd_calls_to_the_plain_wrapper(monkeypatch):
    monkeypatch.setattr(cuda_graphs, "capture", lambda call, inputs, pool=None: ("graph", [], ()))
    monkeypatch.setattr(cuda_graphs, "replay", lambda *a: ("replayed",))
    runner = cuda_graphs.CudaGraphRunner(lambda x: (x * 2,), warmup=0)
    x = torch.ones(2, requires_grad=True)
    out = runner(x)[0]
    out.sum().backward()          # recorded by autograd: the plain call ran
    assert torch.equal(x.grad, torch.full((2,), 2.0)) and runner.graph is None
    with torch.no_grad():
        assert runner(x) == ("replayed",)


def test_runner_falls_back_when_capture_fails(monkeypatch):
    def failing(call, inputs, pool=None):
        raise RuntimeError("operation not permitted when stream is capturing")
    monkeypatch.setattr(cuda_graphs, "capture", failing)
    runner = cuda_graphs.CudaGraphRunner(lambda x: (x + 1,), warmup=1)
    outs = [runner(torch.ones(2))[0] for _ in range(4)]
    assert all(torch.equal(o, torch.full((2,), 2.0)) for o in outs)
    assert runner.failed and "capture failed" in runner.status and runner.graph is None


triton = pytest.importorskip("triton")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter path (CPU)")
def test_explain_reports_cuda_graphs_on_the_triton_backend():
    x = torch.randn(8)
    text = str(functx.explain(lambda x: x.sin() * 2, backend="triton")(x))
    assert "-- CUDA graphs --" in text and "jit would not capture: an input is on cpu" in text
    j = functx.jit(lambda x: x.sin() * 2, backend="triton", cuda_graphs=False)
    j(x)
    assert "off (functx.jit(..., cuda_graphs=False)" in str(functx.explain(j)(x))


# ---------------------------------------------------------------- capture and replay (GPU)

def _mlp_step(w, b, x):
    return torch.tanh(x @ w + b).square().mean(), (x @ w).sum(0)


@pytest.mark.gpu
@needs_cuda
def test_gpu_captures_after_warmup_and_matches_eager():
    w, b = torch.randn(16, 8, device="cuda"), torch.randn(8, device="cuda")
    j = functx.jit(_mlp_step, backend="triton")
    results = []
    for i in range(5):
        x = torch.randn(32, 16, device="cuda")
        out = j(w, b, x)
        results.append((out, _mlp_step(w, b, x)))
    entry = next(iter(j._cache.entries.values()))
    assert entry.compiled._graph_runner.graph is not None, entry.compiled._graph_runner.status
    for out, ref in results:            # earlier outputs are not overwritten by later replays
        for a, r in zip(out, ref):
            torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)
    assert "captured after 2" in str(functx.explain(j)(w, b, x))


@pytest.mark.gpu
@needs_cuda
def test_gpu_in_place_writes_are_copied_back_with_a_graph():
    def step(p, g):
        p.sub_(0.1 * g)
        return p.norm()
    j = functx.jit(step, backend="triton")
    p, q = torch.randn(10, device="cuda"), None
    q = p.clone()
    for _ in range(4):
        g = torch.randn(10, device="cuda")
        n = j(p, g)
        step(q, g)
        torch.testing.assert_close(p, q)
        torch.testing.assert_close(n, q.norm())


@pytest.mark.gpu
@needs_cuda
def test_gpu_debug_print_is_not_captured(capsys):
    j = functx.jit(lambda x: (functx.debug.print("s={}", x.sum()), x * 2)[1], backend="triton")
    x = torch.ones(3, device="cuda")
    for _ in range(4):
        j(x)
    assert capsys.readouterr().out.count("s=") == 4
    entry = next(iter(j._cache.entries.values()))
    assert entry.compiled._graph_runner is None and "host callback" in entry.compiled._graph_reason
