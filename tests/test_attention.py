"""Fused attention (functx/kernels/attention*.py, frontend/lowerings/attention.py).

- the reference against torch's SDPA;
- F.scaled_dot_product_attention under every transform against oracles: torch.func (grad,
  vjp), torch.func.jvp of an explicit math attention in float64 (torch has no forward AD for
  SDPA's fused kernels, and its CPU SDPA always takes one) and float64 finite differences,
  a Python loop for vmap;
- jit on the eager and Triton backends (the latter with the kernels in the host wrapper).
"""
import math

import pytest
import torch
import torch.nn.functional as F

import functx
from functx.kernels import attention as A
from functx.kernels import attention_math as M

SDPA = F.scaled_dot_product_attention
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _qkv(lead, lq, lk, d, dv, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)  # noqa: E731
    return mk(*lead, lq, d), mk(*lead, lk, d), mk(*lead, lk, dv)


def _bias(kind, lead, lq, lk, dtype, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    if kind is None:
        return None
    if kind == "add":      # broadcast over the batch dim
        return torch.randn(1, *lead[1:], lq, lk, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    keep = torch.rand(lead[0], 1, lq, lk, generator=g) > 0.3
    keep[0, 0, 2] = False          # one query row with every key removed
    return torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep, float("-inf")).to(device)


def _close(got, want, tol, what):
    assert (got is None) == (want is None), what
    if got is None:
        return
    assert got.shape == want.shape, (what, got.shape, want.shape)
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), finite), f"{what}: infinities differ"
    err = (got[finite].double() - want[finite].double()).abs().max().item() if finite.any() else 0.0
    assert err <= tol, f"{what}: max error {err:.3g} > {tol:.3g}"


# ---------------------------------------------------------------- the reference vs torch

def _math_attention(q, k, v, mask=None, causal=False, scale=None):
    """The explicit composition, differentiable by torch.func in every mode."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ k.transpose(-2, -1) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    if causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(s, -1) @ v


@pytest.mark.parametrize("causal", [False, True])
def test_reference_matches_torch_sdpa(causal):
    q, k, v = _qkv((2, 3), 7, 9, 8, 5)
    _close(M.forward(q, k, v, None, causal, 0.3)[0], SDPA(q, k, v, is_causal=causal, scale=0.3), 1e-12, "out")


# ---------------------------------------------------------------- SDPA under the transforms

def _loss(fn):
    def loss(q, k, v, *m):
        weights = torch.linspace(-1, 1, v.shape[-1], dtype=v.dtype, device=v.device)
        return (fn(q, k, v, *m) * weights).sin().sum()
    return loss


MASKS = {
    "none": lambda: {},
    "causal": lambda: {"is_causal": True},
    "bool": lambda: {"attn_mask": torch.rand(7, 9, generator=torch.Generator().manual_seed(4)) > 0.3},
}


@pytest.mark.parametrize("mask", list(MASKS))
def test_grad_matches_torch_func(mask):
    q, k, v = _qkv((2, 3), 7, 9, 8, 5)
    kw = MASKS[mask]()
    f = _loss(lambda q, k, v: SDPA(q, k, v, **kw))
    got = functx.grad(f, argnums=(0, 1, 2))(q, k, v)
    want = torch.func.grad(f, argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want):
        _close(g, w, 1e-12, f"grad {mask}")
    ex = functx.explain(functx.grad(f, argnums=(0, 1, 2)))(q, k, v)
    names = {e.prim.name for e in ex.graph.eqns}
    assert {"attention", "attention_bwd"} <= names and "exp" not in names, names


def test_grad_of_a_float_mask():
    q, k, v = _qkv((2, 3), 7, 9, 8, 5)
    mask = torch.randn(3, 7, 9, dtype=q.dtype)      # broadcast over the batch dim
    f = _loss(lambda q, k, v, m: SDPA(q, k, v, attn_mask=m))
    got = functx.grad(f, argnums=(0, 3))(q, k, v, mask)
    want = torch.func.grad(f, argnums=(0, 3))(q, k, v, mask)
    for g, w in zip(got, want):
        _close(g, w, 1e-12, "grad mask")


@pytest.mark.parametrize("mask", list(MASKS))
def test_jvp_matches_math_attention_and_finite_differences(mask):
    q, k, v = _qkv((2, 3), 7, 9, 8, 5)
    t = _qkv((2, 3), 7, 9, 8, 5, seed=5)
    kw = MASKS[mask]()
    out, tan = functx.jvp(lambda q, k, v: SDPA(q, k, v, **kw), (q, k, v), t)
    m = {"attn_mask": kw.get("attn_mask"), "causal": kw.get("is_causal", False)}
    w_out, w_tan = torch.func.jvp(lambda q, k, v: _math_attention(q, k, v, m["attn_mask"], m["causal"]), (q, k, v), t)
    _close(out, w_out, 1e-12, "primal")
    _close(tan, w_tan, 1e-12, "tangent")
    eps = 1e-6
    plus = SDPA(*(x + eps * dx for x, dx in zip((q, k, v), t)), **kw)
    minus = SDPA(*(x - eps * dx for x, dx in zip((q, k, v), t)), **kw)
    _close(tan, (plus - minus) / (2 * eps), 1e-6, "finite differences")


def test_jvp_through_a_float_mask_and_gqa():
    q = _qkv((2, 4), 6, 6, 8, 8)[0]
    k, v = _qkv((2, 2), 6, 6, 8, 8, seed=6)[1:]
    mask = torch.randn(6, 6, dtype=q.dtype)
    prim = (q, k, v, mask)
    tans = tuple(torch.randn_like(x) for x in prim)
    f = lambda q, k, v, m: SDPA(q, k, v, attn_mask=m, enable_gqa=True)   # noqa: E731
    g = lambda q, k, v, m: _math_attention(q, k.repeat_interleave(2, -3), v.repeat_interleave(2, -3), m)  # noqa: E731
    _close(functx.jvp(f, prim, tans)[1], torch.func.jvp(g, prim, tans)[1], 1e-12, "jvp")
    for a, b in zip(functx.grad(_loss(f), argnums=(1, 3))(*prim), torch.func.grad(_loss(g), argnums=(1, 3))(*prim)):
        _close(a, b, 1e-12, "grad")


def test_vmap_over_batch_and_heads_matches_a_loop():
    q, k, v = _qkv((3, 2), 5, 6, 8, 4)
    f = lambda q, k, v: SDPA(q, k, v, is_causal=True)      # noqa: E731
    got = functx.vmap(f)(q, k, v)
    _close(got, torch.stack([f(q[i], k[i], v[i]) for i in range(3)]), 1e-12, "vmap batch")
    # heads of q mapped over dim 1; k and v shared
    got = functx.vmap(f, in_dims=(1, None, None), out_dims=1)(q, k[:, 0], v[:, 0])
    want = torch.stack([f(q[:, h], k[:, 0], v[:, 0]) for h in range(2)], 1)
    _close(got, want, 1e-12, "vmap heads")
    # per-example gradients, and jacfwd (vmap of the fused jvp over tangents)
    loss = _loss(f)
    got = functx.vmap(functx.grad(loss), in_dims=(0, None, None))(q, k[0], v[0])
    want = torch.stack([torch.func.grad(loss)(q[i], k[0], v[0]) for i in range(3)])
    _close(got, want, 1e-12, "vmap(grad)")
    small = lambda x: SDPA(x, k[0, 0], v[0, 0])            # noqa: E731
    _close(functx.jacfwd(small)(q[0, 0]), torch.func.jacrev(small)(q[0, 0]), 1e-12, "jacfwd")


def test_hessian_vector_products():
    q, k, v = _qkv((1, 2), 4, 5, 8, 3)
    t = torch.randn_like(q)
    f = lambda q: _loss(lambda q, k, v: SDPA(q, k, v, is_causal=True))(q, k, v)     # noqa: E731
    g = lambda q: _loss(lambda q, k, v: _math_attention(q, k, v, causal=True))(q, k, v)   # noqa: E731
    want = torch.func.jvp(torch.func.grad(g), (q,), (t,))[1]
    _close(functx.jvp(functx.grad(f), (q,), (t,))[1], want, 1e-10, "jvp(grad)")
    _close(functx.grad(lambda q: (functx.grad(f)(q) * t).sum())(q), want, 1e-10, "grad(grad . t)")


def test_linearize_jacrev_hessian():
    q, k, v = _qkv((1,), 3, 4, 2, 2)
    mask = torch.tensor([[True, False, True, True]] * 3)
    f = lambda q: SDPA(q, k, v, attn_mask=mask).sin()                 # noqa: E731
    g = lambda q: _math_attention(q, k, v, mask).sin()                 # noqa: E731
    t = torch.randn_like(q)
    out, f_jvp = functx.linearize(f, q)
    _close(f_jvp(t), torch.func.jvp(g, (q,), (t,))[1], 1e-12, "linearize")
    _close(functx.jacrev(f)(q), torch.func.jacrev(g)(q), 1e-12, "jacrev")
    h = functx.hessian(lambda q: f(q).sum())(q)
    _close(h, torch.func.hessian(lambda q: g(q).sum())(q), 1e-10, "hessian")


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_jit_matches_eager(backend, monkeypatch):
    if backend == "triton":
        pytest.importorskip("triton")
        monkeypatch.setattr(A, "INTERPRET_ON_CPU", True)     # the kernels, in the host wrapper
    dtype = torch.float64 if backend == "eager" else torch.float32
    tol = 1e-12 if backend == "eager" else 2e-5
    q, k, v = _qkv((2, 2), 9, 11, 16, 16, dtype, DEV)
    t = _qkv((2, 2), 9, 11, 16, 16, dtype, DEV, seed=7)
    mask = torch.rand(9, 11, generator=torch.Generator().manual_seed(8)).to(DEV) > 0.2
    f = lambda q, k, v: SDPA(q, k, v, attn_mask=mask)      # noqa: E731
    loss = _loss(f)
    jitted = functx.jit(lambda q, k, v: (f(q, k, v), functx.grad(loss, argnums=(0, 1, 2))(q, k, v),
                                         functx.jvp(f, (q, k, v), t)[1]), backend=backend)
    out, grads, tan = jitted(q, k, v)
    monkeypatch.setattr(A, "INTERPRET_ON_CPU", False)
    want_out, want_tan = torch.func.jvp(lambda q, k, v: _math_attention(q, k, v, mask), (q, k, v), t)
    _close(out, want_out, tol, "out")
    _close(tan, want_tan, 10 * tol, "jvp")
    for g, w in zip(grads, torch.func.grad(loss, argnums=(0, 1, 2))(q, k, v)):
        _close(g, w, 10 * tol, "grad")


def test_dropout_runs_torchs_decomposition():
    q, k, v = _qkv((2, 1), 4, 4, 8, 8)
    ex = functx.explain(lambda q: SDPA(q, k, v, dropout_p=0.5))(q)
    assert "attention" not in {e.prim.name for e in ex.graph.eqns}
    out = functx.jit(lambda q: SDPA(q, k, v, dropout_p=0.0))(q)
    _close(out, SDPA(q, k, v), 1e-12, "dropout 0")


# ---------------------------------------------------------------- the explicit pattern under jit

PATTERNS = {
    "scale and bias": (lambda q, k, v, m: torch.softmax(q @ k.transpose(-2, -1) * 0.3 + m, dim=-1) @ v, True),
    "divided": (lambda q, k, v, m: torch.softmax((q @ k.mT) / math.sqrt(8), dim=-1) @ v, True),
    "k given as (D, S)": (lambda q, k, v, m: torch.softmax(q @ k.mT.contiguous(), -1) @ v, True),
    "probabilities reused": (lambda q, k, v, m: (lambda p: (p @ v) + p.sum(-1, keepdim=True))(
        torch.softmax(q @ k.mT, -1)), False),
    "softmax over another dim": (lambda q, k, v, m: torch.softmax(q @ k.mT, -2).mT @ q, False),
}


@pytest.mark.parametrize("name", list(PATTERNS))
def test_explicit_pattern_becomes_attention_under_jit(name):
    f, fused = PATTERNS[name]
    q, k, v = _qkv((2, 3), 7, 7, 8, 5)
    m = torch.randn(7, 7, dtype=q.dtype)
    ex = functx.explain(f)(q, k, v, m)
    assert ("attention" in {e.prim.name for e in ex.graph.eqns}) == fused
    assert any("-> attention" in line for line in ex.rewrites) == fused and ("-> attention" in str(ex)) == fused
    _close(functx.jit(f)(q, k, v, m), f(q, k, v, m), 1e-12, name)
    # under a transform the pattern is differentiated before the passes run: values still right
    grads = functx.jit(functx.grad(lambda q: f(q, k, v, m).sum()))(q)
    _close(grads, torch.func.grad(lambda q: f(q, k, v, m).sum())(q), 1e-12, name)


def test_closed_over_parameters_that_require_grad():
    """SDPA on values computed from an nn.Module's own parameters (requires_grad=True, closed
    over, the way most model code runs): every transform runs (the custom op used to reach its
    torch autograd formula on wrappers and raise), and torch's backward through the transformed
    output gives the parameters the same gradient as eager torch."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 8).double()
    x, v = torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(2, 5, 8, dtype=torch.float64)

    def f(x):
        q = lin(x)
        return F.scaled_dot_product_attention(q, q.sin(), q, is_causal=True)
    ref = f(x)
    torch.testing.assert_close(functx.vmap(f)(x), ref)
    torch.testing.assert_close(functx.jit(f)(x), ref)
    eps = 1e-6
    torch.testing.assert_close(functx.jvp(f, (x,), (v,))[1], ((f(x + eps * v) - f(x - eps * v)) / (2 * eps)).detach(),
                               atol=1e-7, rtol=1e-6)
    g = functx.grad(lambda x: f(x).pow(2).sum())(x)
    torch.testing.assert_close(g, torch.autograd.grad(f(x.requires_grad_()).pow(2).sum(), x)[0])
    x = x.detach()
    ref.pow(2).sum().backward()
    want, lin.weight.grad = lin.weight.grad, None
    functx.vmap(f)(x).pow(2).sum().backward()
    torch.testing.assert_close(lin.weight.grad, want)


# ---------------------------------------------------------------- torch's CPU flash kernels

@pytest.mark.parametrize("lead,lq,lk", [((2, 3), 5, 7), ((2, 3), 7, 5), ((1, 4), 6, 6), ((1, 1), 1, 1)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_flash_kernels_match_the_reference(lead, lq, lk, causal, dtype):
    # attention_cpu runs torch's flash-attention CPU kernels in the primitives' impls where they
    # fit: the same out, lse (top-left causal alignment) and gradients
    from functx.kernels import attention_cpu as C
    q, k, v = _qkv(lead, lq, lk, 4, 4, dtype=dtype)
    assert C.fits(q, k, v, None)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    out, lse = C.forward(q, k, v, None, causal, 0.7)
    want_out, want_lse = M.forward(q, k, v, None, causal, 0.7)
    _close(out, want_out, tol, "out")
    _close(lse, want_lse, tol, "lse")
    dout = torch.randn_like(out)
    got = C.backward(q, k, v, None, out, lse, dout, None, causal, 0.7)
    want = M.backward(q, k, v, None, want_out, want_lse, dout, None, causal, 0.7)
    for name, a, b in zip(("dq", "dk", "dv"), got[:3], want[:3]):
        _close(a, b, 10 * tol, name)


def test_cpu_flash_kernels_decline_what_they_do_not_compute():
    from functx.kernels import attention_cpu as C
    q, k, v = _qkv((2, 3), 5, 7, 4, 4)
    assert not C.fits(q, k, v, torch.zeros(2, 3, 5, 7, dtype=q.dtype))     # an additive bias
    assert not C.fits(*_qkv((2, 3), 5, 7, 4, 6), None)                     # head sizes differ
    assert not C.fits(*_qkv((2, 3), 5, 7, 4, 4, dtype=torch.bfloat16), None)
    assert not C.fits(*_qkv((2, 3), 5, 0, 4, 4), None)                     # no keys
    assert not C.fits(*_qkv((6,), 5, 7, 4, 4), None)    # other ranks: torch's SDPA takes its math path


@pytest.mark.parametrize("mask", [None, "add"])
def test_grad_through_the_cpu_kernels_matches_finite_differences(mask):
    # the flash path (no mask) and the reference (a float mask) against float64 finite
    # differences of the explicit composition
    q, k, v = _qkv((2, 2), 4, 5, 3, 3)
    bias = _bias(mask, (2, 2), 4, 5, torch.float64)

    def f(q, k, v):
        return (SDPA(q, k, v, attn_mask=bias, is_causal=mask is None) ** 2).sum()

    got = functx.grad(f, argnums=(0, 1, 2))(q, k, v)
    gen = torch.Generator().manual_seed(3)
    d = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in (q, k, v)]
    eps = 1e-6
    fd = (f(*[t + eps * u for t, u in zip((q, k, v), d)]) - f(*[t - eps * u for t, u in zip((q, k, v), d)])) / (2 * eps)
    assert abs(sum((g * u).sum() for g, u in zip(got, d)).item() - fd.item()) < 1e-6 * max(1.0, abs(fd.item()))
    for i, g in enumerate(got):
        _close(g, torch.func.grad(f, argnums=i)(q, k, v), 1e-10, f"grad {i}")


def test_cpu_flash_kernels_on_operands_whose_last_dim_is_not_dense():
    # the kernels read the last dim as dense: a transposed key (softmax(x @ w) @ w, matched as
    # attention under jit) gave wrong values until such operands were copied
    from functx.kernels import attention_cpu as C
    g = torch.Generator().manual_seed(0)
    x, w, do = (torch.randn(1, 2, 16, 16, generator=g, dtype=torch.float64) for _ in range(3))
    t = lambda a: a.transpose(-2, -1)  # noqa: E731
    for q, k, v in ((x, t(w), w), (t(x), t(w), t(w)), (x, w, t(w))):
        out, lse = C.forward(q, k, v, None, False, 0.3)
        want_out, want_lse = M.forward(q, k, v, None, False, 0.3)
        _close(out, want_out, 1e-12, "out")
        _close(lse, want_lse, 1e-12, "lse")
        for name, a, b in zip("qkv", C.backward(q, k, v, None, out, lse, t(do), None, False, 0.3)[:3],
                              M.backward(q, k, v, None, want_out, want_lse, t(do), None, False, 0.3)[:3]):
            _close(a, b, 1e-11, "d" + name)
