"""kernels/cpu_gemm.py: jit's CPU float32 products through oneDNN where a probe found it faster
than torch's BLAS (MKL ran at half of oneDNN's and XLA's rate on an AMD EPYC core)."""
import importlib

import pytest
import torch

import functx
from test_cpu_backend import needs_cxx

cpu_gemm = importlib.import_module("functx.kernels.cpu_gemm")


@pytest.fixture
def onednn(monkeypatch):
    """The choice forced each way (the probe's answer depends on the machine)."""
    def force(flag):
        monkeypatch.setattr(cpu_gemm, "_CHOICE", [flag])
    return force


def _operands(m, k, n, layout, dtype=torch.float32):
    g = torch.Generator().manual_seed(m + k + n)
    a = torch.randn(m, k, generator=g, dtype=dtype) if layout == "rows" else \
        torch.randn(k, m, generator=g, dtype=dtype).t()
    return a, torch.randn(k, n, generator=g, dtype=dtype)


@pytest.mark.parametrize("use", [True, False])
@pytest.mark.parametrize("m,k,n,layout", [(256, 64, 96, "rows"), (128, 512, 64, "columns"), (8, 64, 64, "rows"),
                                          (8192, 128, 4, "columns"), (256, 256, 256, "rows")])
def test_mm_into_is_torch_mm_up_to_rounding(onednn, use, m, k, n, layout):
    onednn(use)
    a, b = _operands(m, k, n, layout)
    for rhs in (b, b.t().contiguous().t()):         # a row-major and a transposed right operand
        out = torch.full((m, n), float("nan"))
        got = cpu_gemm.mm_into(a, rhs, out)
        assert got is out
        torch.testing.assert_close(out, (a.double() @ rhs.double()).float(), rtol=1e-5, atol=1e-4)


def test_mm_into_falls_back_to_torch_mm_where_onednn_does_not_win(onednn, monkeypatch):
    """Small products, float64, a column-major lhs past MAX_TRANSPOSED_ROWS, other layouts:
    torch.mm, bit for bit."""
    onednn(True)
    calls = []
    real = cpu_gemm._LINEAR
    monkeypatch.setattr(cpu_gemm, "_LINEAR", lambda *a: calls.append(a) or real(*a))
    for m, k, n, layout, dtype in [(8, 64, 64, "rows", torch.float32), (256, 64, 96, "rows", torch.float64),
                                   (8192, 256, 64, "columns", torch.float32)]:
        a, b = _operands(m, k, n, layout, dtype)
        out = torch.empty(m, n, dtype=dtype)
        assert torch.equal(cpu_gemm.mm_into(a, b, out), torch.mm(a, b))
    assert not calls
    a, b = _operands(256, 64, 96, "rows")
    cpu_gemm.mm_into(a, b, torch.empty(256, 96))
    assert len(calls) == 1


@needs_cxx
@pytest.mark.cpu_fused
@pytest.mark.usefixtures("module_kernel_cache")
def test_jitted_products_use_it_and_match_eager(onednn, monkeypatch):
    """The fused tier writes its 2-D products (and the products it reshapes after) through
    mm_into; grad of an MLP under jit then matches eager PyTorch as any other BLAS would."""
    from functx.compile.cpu import wait_for_fused
    onednn(True)
    calls = []
    real = cpu_gemm._LINEAR
    monkeypatch.setattr(cpu_gemm, "_LINEAR", lambda *a: calls.append(a) or real(*a))
    g = torch.Generator().manual_seed(0)
    W1, W2 = torch.randn(64, 128, generator=g) / 8, torch.randn(128, 64, generator=g) / 11
    x = torch.randn(512, 64, generator=g)

    def loss(W1, W2, x):
        return torch.tanh(torch.tanh(x @ W1) @ W2).pow(2).mean()
    f = functx.jit(functx.grad(loss, argnums=(0, 1)), backend="cpu")
    for _ in range(2):          # the eager tier, then the fused tier's build starts
        f(W1, W2, x)
    wait_for_fused()
    for _ in range(2):
        got = f(W1, W2, x)
    want = torch.func.grad(loss, argnums=(0, 1))(W1, W2, x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    entry = next(iter(f._cache.entries.values())).compiled
    assert entry.last_tier == "fused" and "_mm_into(" in entry.fused.source and calls
