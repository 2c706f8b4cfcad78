"""Activations whose torch decompositions select between a safe value and an overflowing
branch (frontend/lowerings/activations.py). Differentiating those decompositions gave NaN
gradients for large inputs (softplus at x = 100: NaN where torch gives 1). Oracle: eager
torch autograd, orders 1 to 3, at large, small and boundary inputs, eager and under jit.

Not compared: softplus at exactly beta * x == threshold, where torch's first derivative
takes the smooth branch and its second the linear one (functx is smooth at both orders,
~2e-9 apart); mish's second derivative at x >= 100, where torch's is NaN and functx's is 0
(float64 finite differences give 0)."""
import pytest
import torch
import torch.nn.functional as F

import functx

POINTS = [-1000.0, -100.0, -30.0, -1.0, -1e-3, -0.0, 0.0, 1e-3, 1.0, 19.9, 20.5, 30.0, 60.0]
BIG = [100.0, 1000.0]

ACTIVATIONS = {
    "softplus": F.softplus,
    "softplus_beta": lambda x: F.softplus(x, beta=2.0, threshold=5.0),
    "elu": F.elu,
    "elu_alpha": lambda x: F.elu(x, alpha=0.5),
    "selu": F.selu,
    "celu": lambda x: F.celu(x, alpha=2.0),
    "mish": F.mish,
}


def _torch_derivatives(f, x, orders):
    x = x.clone().requires_grad_()
    y, out = f(x).sum(), []
    for _ in range(orders):
        (g,) = torch.autograd.grad(y, x, create_graph=True)
        out.append(g.detach())
        y = g.sum()
    return out


def _functx_derivatives(f, orders, jit):
    fns, g = [], lambda x: f(x).sum()
    for _ in range(orders):
        g = functx.grad(g)
        fns.append(functx.jit(g) if jit else g)
        g = (lambda h: lambda x: h(x).sum())(g)
    return fns


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_derivatives_match_torch_at_extreme_inputs(name, dtype, jit):
    f = ACTIVATIONS[name]
    points = POINTS + (BIG if name != "mish" else [])
    x = torch.tensor(points, dtype=dtype)
    torch.testing.assert_close((functx.jit(f) if jit else f)(x), f(x))
    orders = 3 if dtype is torch.float64 else 2       # float32's third derivatives are noise here
    for k, (got_fn, want) in enumerate(zip(_functx_derivatives(f, orders, jit), _torch_derivatives(f, x, orders))):
        got = got_fn(x)
        assert torch.isfinite(got).all(), f"order {k + 1}: {got}"
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5, msg=f"order {k + 1}")


def test_mish_at_large_inputs_is_finite_where_torch_is_nan():
    x = torch.tensor([100.0, 1000.0], dtype=torch.float64)
    g = functx.grad(lambda x: functx.grad(lambda x: F.mish(x).sum())(x).sum())(x)
    assert torch.equal(g, torch.zeros(2, dtype=torch.float64))
    assert torch.equal(functx.grad(lambda x: F.mish(x).sum())(x), torch.ones(2, dtype=torch.float64))


def test_half_inputs_compute_in_float32():
    x = torch.linspace(-30, 30, 41).half()
    for f in ACTIVATIONS.values():
        torch.testing.assert_close(functx.jit(f)(x), f(x))


def test_log_ndtr_and_erfc_in_the_tails():
    """log_ndtr's decomposition gave NaN gradients for x <= -10 and x >= 40, and erfc was
    1 - erf(x) (erfc(10) = 2e-45 became 0). Oracle: float64 eager torch; in float32 functx's
    gradient is compared with float64 truth (torch's own float32 gradient is 4% off at -1000)."""
    x = torch.tensor([-1000.0, -100.0, -40.0, -10.0, -1.0, 0.0, 1.0, 10.0, 40.0, 100.0], dtype=torch.float64)

    def f(x):
        return torch.special.log_ndtr(x).sum()
    truth = torch.func.grad(f)(x)
    for jit in (False, True):
        g = functx.jit(functx.grad(f)) if jit else functx.grad(f)
        torch.testing.assert_close(g(x), truth, rtol=1e-9, atol=1e-30)
        torch.testing.assert_close(g(x.float()).double(), truth, rtol=1e-6, atol=1e-30)
    torch.testing.assert_close(functx.grad(lambda x: functx.grad(f)(x).sum())(x[1:]),
                               torch.func.grad(lambda x: torch.func.grad(f)(x).sum())(x[1:]), rtol=1e-7, atol=1e-12)
    big = torch.tensor([5.0, 10.0, 20.0, 26.0], dtype=torch.float64)
    torch.testing.assert_close(functx.jit(torch.erfc)(big), torch.erfc(big), rtol=1e-12, atol=0)
    torch.testing.assert_close(functx.jit(torch.special.erfcx)(big * 10), torch.special.erfcx(big * 10))
    torch.testing.assert_close(functx.grad(lambda x: torch.erfc(x).sum())(big), torch.func.grad(lambda x: torch.erfc(x).sum())(big),
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_entr_is_a_primitive_with_torchs_derivative(dtype):
    """torch.special.entr (-x log x; 0 at 0, -inf below 0) is prims' entr: its derivative is
    torch's -(1 + log x), +inf at 0 and nan below 0, in every mode (the where-decomposition
    gave nan at 0 and 0 below). Oracle: torch.autograd; the second derivative: torch.func."""
    x = torch.tensor([0.0, -0.0, -1.0, -1e-3, 1e-30, 1e-3, 0.5, 1.0, 2.0, 30.0, float("nan"), float("inf")], dtype=dtype)
    xr = x.clone().requires_grad_()
    torch.special.entr(xr).sum().backward()
    want = xr.grad
    loss = lambda x: torch.special.entr(x).sum()
    got = {"grad": functx.grad(loss)(x), "jit(grad)": functx.jit(functx.grad(loss))(x),
           "vmap(grad)": functx.vmap(functx.grad(loss))(x[:, None])[:, 0],
           "jvp": functx.jvp(torch.special.entr, (x,), (torch.ones_like(x),))[1],
           "jit(jvp)": functx.jit(lambda x: functx.jvp(torch.special.entr, (x,), (torch.ones_like(x),))[1])(x)}
    for mode, g in got.items():
        torch.testing.assert_close(g, want, equal_nan=True, msg=mode)
    for f in (torch.special.entr, functx.jit(torch.special.entr), functx.vmap(torch.special.entr)):
        torch.testing.assert_close(f(x), torch.special.entr(x), equal_nan=True)
    pos = x[5:10]
    torch.testing.assert_close(functx.hessian(loss)(pos), torch.func.hessian(loss)(pos))
    ex = functx.explain(torch.special.entr)(pos)
    assert not ex.fallbacks and "entr" in str(ex)
