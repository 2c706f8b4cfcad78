"""The eager backend's buffer reuse (compile/buffer_reuse.py): large results written into
dead temporaries with out=, checked against the same functions run eagerly, plus the
aliasing cases where a write would be wrong and torch autograd through the jitted call."""
import pytest
import torch

import functx
from functx.compile import buffer_reuse
from functx.compile.eager import EagerCompiled

N = 256          # (256, 256) float32 = 256 KiB, above buffer_reuse.MIN_BYTES


def source(f, *args):
    """The eager source jit compiled for f at args."""
    return str(functx.explain(functx.jit(f, backend="eager"))(*args)).split("-- compiled --", 1)[1]


def mlp_like(x, w):
    h = torch.tanh(x @ w)
    g = (1 - h * h) * torch.cos(x)       # into h*h's buffer; cos(x)'s dies here
    return ((g * h) @ w).sum(0) + h.sum(1)      # the matmul writes into cos(x)'s buffer


def test_large_intermediates_reuse_and_match():
    x, w = torch.randn(N, N, dtype=torch.float64), torch.randn(N, N, dtype=torch.float64) / 16
    src = source(mlp_like, x, w)
    assert "in place" in src and "dead buffer" in src and "def fn_plain" in src
    torch.testing.assert_close(functx.jit(mlp_like)(x, w), mlp_like(x, w))


def test_small_graph_unchanged():
    x = torch.randn(8, 8)
    assert "out=" not in source(mlp_like, x, x) and "_plain_tensors" not in source(mlp_like, x, x)


def test_returned_intermediate_is_not_overwritten():
    def f(x):
        h = torch.sin(x)
        return h, (h * 2 + 1) * h.exp()
    x = torch.randn(N, N)
    for got, want in zip(functx.jit(f)(x), f(x)):
        torch.testing.assert_close(got, want)


def test_operand_read_through_a_view_is_not_written_in_place():
    # h * h.T: writing the product into h would change h.T's elements still to be read
    def f(x):
        h = torch.tanh(x)
        return (h * h.T + 1) * h.T.exp()
    x = torch.randn(N, N)
    torch.testing.assert_close(functx.jit(f)(x), f(x))


def test_stop_gradient_alias_keeps_its_buffer():
    def f(x):
        h = torch.cos(x)
        d = h.detach()            # the same tensor in the generated code
        return d * 3 + h * h
    x = torch.randn(N, N)
    torch.testing.assert_close(functx.jit(f)(x), f(x))


def test_repeated_calls_do_not_share_returned_buffers():
    f = functx.jit(mlp_like)
    x, w = torch.randn(N, N), torch.randn(N, N) / 16
    first = f(x, w)
    kept = first.clone()
    torch.testing.assert_close(f(x * 2, w), mlp_like(x * 2, w))
    torch.testing.assert_close(first, kept)


def test_buffers_kept_between_calls_and_released():
    f = functx.jit(mlp_like)
    x, w = torch.randn(N, N), torch.randn(N, N) / 16
    assert "_keep.pop(" in source(mlp_like, x, w)
    f(x, w)
    assert functx.compile.release_buffers() >= N * N * 4       # what the call left for the next
    assert functx.compile.release_buffers() == 0
    for k in range(3):        # allocated afresh, then taken from the kept ones: same values
        torch.testing.assert_close(f(x + k, w), mlp_like(x + k, w))


def test_torch_autograd_through_the_call_uses_the_plain_function():
    x = torch.randn(N, N, dtype=torch.float64, requires_grad=True)
    w = torch.randn(N, N, dtype=torch.float64) / 16
    out = functx.jit(mlp_like)(x, w)
    assert out.grad_fn is not None
    (g,) = torch.autograd.grad(out.sum(), x)
    (want,) = torch.autograd.grad(mlp_like(x, w).sum(), x)
    torch.testing.assert_close(g, want)
    with torch.no_grad():         # nothing recorded: the rewritten function serves the call
        torch.testing.assert_close(functx.jit(mlp_like)(x, w), mlp_like(x, w))


def test_tensor_subclass_argument_uses_the_plain_function():
    class Tagged(torch.Tensor):
        pass
    x, w = torch.randn(N, N), torch.randn(N, N) / 16
    assert not buffer_reuse.plain_tensors(x.as_subclass(Tagged), w)
    assert buffer_reuse.plain_tensors(x, w, 3)
    with torch.enable_grad():
        assert not buffer_reuse.plain_tensors(x, w.requires_grad_())


def test_laplacian_of_an_mlp_matches_torch_func():
    d, h, points = 32, 64, 64              # the (points, d, h) Jacobians: 512 KiB
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(a, b, generator=g, dtype=torch.float64) / a ** 0.5 for a, b in [(d, h), (h, h), (h, 1)]]

    def u(x):
        return (torch.tanh(torch.tanh(x @ ws[0]) @ ws[1]) @ ws[2]).squeeze(-1)
    X = torch.randn(points, d, generator=g, dtype=torch.float64)
    lap = functx.vmap(functx.laplacian(u))
    assert "in place" in source(lap, X)
    want = torch.func.vmap(lambda x: torch.trace(torch.func.hessian(u)(x)))(X)
    torch.testing.assert_close(functx.jit(lap)(X), want)


@pytest.mark.parametrize("expr,prefix", [
    ("torch.mul(t1, t2)", "torch.mul(t1, t2"),
    ("torch.mul(t1, t2).reshape((4,))", None),          # not one call
    ("torch.relu(t1)", None),                           # no out= variant
    ("torch.where(t0, t1, 0.0)", None),                 # a scalar operand: no out= variant
    ("t1.to(torch.float32)", None),                     # may return its operand itself
])
def test_call_prefix(expr, prefix):
    assert buffer_reuse.call_prefix(expr, tensor_operands="0.0" not in expr) == prefix


def test_dead_buffer_of_another_shape_is_reshaped():
    lines = ["def fn(a0):",
             "    t0 = torch.sin(a0)  # f32[64,64]",
             "    t1 = torch.cos(t0)  # f32[64,64]",
             "    t2 = a0.reshape((4096,))  # f32[4096]",
             "    t3 = torch.exp(t2)  # f32[4096]",
             "    t4 = torch.exp(t3)  # f32[4096]",
             "    return (t1, t4)"]
    cands = {1: buffer_reuse.Candidate("t0", (64, 64), torch.float32, 1, "torch.sin(a0", [], "f32[64,64]"),
             2: buffer_reuse.Candidate("t1", (64, 64), torch.float32, 1, "torch.cos(t0", [], "f32[64,64]"),
             4: buffer_reuse.Candidate("t3", (4096,), torch.float32, 1, "torch.exp(t2", [], "f32[4096]"),
             5: buffer_reuse.Candidate("t4", (4096,), torch.float32, 1, "torch.exp(t3", [("t3", (4096,), torch.float32)],
                                       "f32[4096]")}
    out, n = buffer_reuse.reuse_buffers(lines, cands, min_bytes=0, keep=False)
    assert n == 1 and out[4].startswith("    t3 = torch.exp(t2, out=t0.reshape((4096,)))")
    assert out[5] == lines[5]         # returned: made as torch makes it, not in place


def test_concurrent_calls_get_their_own_buffers():
    import threading
    f = functx.jit(mlp_like)
    w = torch.randn(N, N) / 16
    xs = [torch.randn(N, N) for _ in range(4)]
    f(xs[0], w)                           # compiled, buffers kept
    results = {}

    def run(k):
        for _ in range(5):
            results[k] = f(xs[k], w)
    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        torch.testing.assert_close(results[k], mlp_like(xs[k], w))
