"""Research code written by strangers (optimizer steps, MAML, NTK, PINNs, ...), transformed
eagerly and under functx.jit: each test pins a divergence that was found there, with a
float64 oracle (torch.func / torch.autograd on the same code, finite differences where those
disagree, Python loops for vmap)."""
import pytest
import torch

import functx
from fd_oracles import central_differences

D = torch.float64


# ---------------------------------------------------------------- foreach in-place ops

def _foreach_update(a, b):
    """An EMA / momentum step the way torch.optim's foreach paths write it."""
    xs = [a * 1, b * 1]
    torch._foreach_mul_(xs, 2.0)
    torch._foreach_add_(xs, [a.sin(), b.cos()], alpha=0.5)
    ys = torch._foreach_exp(xs)
    torch._foreach_addcmul_(xs, ys, xs, value=0.1)
    torch._foreach_lerp_(xs, ys, 0.3)
    return xs[0].sum() + xs[1].sum() + ys[1].sum()


@pytest.mark.parametrize("jit", [False, True])
def test_foreach_in_place_ops_differentiate(jit):
    """torch._foreach_add_ and friends took their list target for a tensor (AttributeError:
    'list' object has no attribute 'shape'); torch.func's gradient here is wrong (FD decides)."""
    torch.manual_seed(0)
    a, b = torch.randn(3, dtype=D), torch.randn(2, 2, dtype=D)
    g = functx.grad(_foreach_update, argnums=(0, 1))
    got = (functx.jit(g) if jit else g)(a, b)
    torch.testing.assert_close(got[0], central_differences(lambda a: _foreach_update(a, b), a))
    torch.testing.assert_close(got[1], central_differences(lambda b: _foreach_update(a, b), b))


def test_foreach_in_place_step_under_jit_writes_its_arguments_back():
    def step(ps, bufs, gs):
        torch._foreach_mul_(bufs, 0.9)
        torch._foreach_add_(bufs, gs)
        torch._foreach_add_(ps, bufs, alpha=-0.1)
        return ps[0].sum()

    torch.manual_seed(0)
    state = [[torch.randn(3, dtype=D), torch.randn(2, dtype=D)] for _ in range(3)]
    mine = [[t.clone() for t in s] for s in state]
    want = step(*state)
    got = functx.jit(step)(*mine)
    torch.testing.assert_close(got, want)
    for m, s in zip(mine[:2], state[:2]):
        for x, y in zip(m, s):
            torch.testing.assert_close(x, y)


def test_foreach_write_of_a_traced_value_into_closed_over_tensors_names_the_op():
    bufs = [torch.zeros(3, dtype=D)]

    def f(p):
        torch._foreach_add_(bufs, [p])
        return p.sum()

    with pytest.raises(functx.FunctxError, match="_foreach_add_"):
        functx.jit(f)(torch.ones(3, dtype=D))


# ---------------------------------------------------------------- logsigmoid's second derivative

_LOGITS_LOSSES = {
    "logsigmoid": lambda x: torch.nn.functional.logsigmoid(x).sum(),
    "bce_with_logits pos_weight": lambda x: torch.nn.functional.binary_cross_entropy_with_logits(
        x, torch.tensor([0.3, 0.1, 0.9, 1.0, 0.0], dtype=D), pos_weight=torch.arange(1.0, 6.0, dtype=D)),
    "Bernoulli(logits=).log_prob": lambda x: torch.distributions.Bernoulli(logits=x).log_prob(
        torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0], dtype=D)).sum(),
}


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("name", sorted(_LOGITS_LOSSES))
def test_logsigmoid_hessian_at_zero_logits(name, jit):
    """torch's decomposition min(x, 0) - log1p(exp(-|x|)) has cancelling kinks at 0: the
    Hessian there was 0 instead of -sigmoid'(0) = -1/4 (a Newton / Laplace step on a logistic
    model whose logits start at 0 divided by it)."""
    f = _LOGITS_LOSSES[name]
    x = torch.tensor([0.0, -0.0, 2.0, -1.5, 0.5], dtype=D)
    want = torch.func.hessian(f)(x)
    fd = torch.stack([central_differences(lambda x: torch.func.grad(f)(x)[i], x) for i in range(5)])
    torch.testing.assert_close(want, fd, atol=1e-6, rtol=1e-6)
    h = functx.hessian(f)
    torch.testing.assert_close((functx.jit(h) if jit else h)(x), want)


# ---------------------------------------------------------------- one row's norm under vmap(jvp)

@pytest.mark.parametrize("norm", ["layer_norm", "group_norm"])
def test_jacfwd_of_a_norm_over_one_row(norm):
    """Per-example forward-mode Jacobians of a LayerNorm / GroupNorm(1) model (one row of
    statistics): the batch rule broadcast the row's mean and rstd with stride 0, which ATen's
    layer_norm backward kernel reads as dense arrays, so examples past the first got garbage."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, dtype=D)
    if norm == "layer_norm":
        f = lambda x: torch.nn.functional.layer_norm(x, (3, 4)).tanh()  # noqa: E731
    else:
        f = lambda x: torch.nn.functional.group_norm(x[None], 1).tanh()  # noqa: E731
    want = torch.func.jacrev(f)(x)
    torch.testing.assert_close(functx.jacfwd(f)(x), want)
    torch.testing.assert_close(functx.hessian(lambda x: f(x).sum())(x), torch.func.hessian(lambda x: f(x).sum())(x))
    # ... and per example, the NTK-style vmap(jacfwd) of a model with a LayerNorm
    xs = torch.randn(2, 3, 4, dtype=D)
    torch.testing.assert_close(functx.vmap(functx.jacfwd(f))(xs), torch.stack([torch.func.jacrev(f)(x) for x in xs]))


# ---------------------------------------------------------------- second derivatives through |x - y|

_ROBUST = {
    "huber_loss": lambda x, y: torch.nn.functional.huber_loss(x, y, reduction="sum", delta=1.0),
    "smooth_l1_loss": lambda x, y: torch.nn.functional.smooth_l1_loss(x, y, reduction="sum", beta=0.5),
    "cdist ** 2": lambda x, y: (torch.cdist(x.view(1, -1), y.view(1, -1)) ** 2).sum(),
}


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("name", sorted(_ROBUST))
def test_hessian_where_prediction_equals_target(name, jit):
    """A Gauss-Newton / Laplace step on a robust regression loss: the decompositions squared
    |x - y|, and abs's derivative 0 at 0 made the Hessian 0 where x == y (huber: 1,
    smooth_l1: 1 / beta, cdist ** 2: 2; torch.func agrees for the losses, FD for all)."""
    y = torch.tensor([0.5, 1.3, 0.2, 1.0, -1.0], dtype=D)
    x = torch.tensor([0.3, 1.3, -0.1, 1.0, 0.2], dtype=D)      # equal at 1 and 3
    f = lambda x: _ROBUST[name](x, y)  # noqa: E731
    want = torch.stack([central_differences(lambda x: torch.func.grad(f)(x)[i], x) for i in range(5)])
    h = functx.hessian(f)
    torch.testing.assert_close((functx.jit(h) if jit else h)(x), want, atol=1e-6, rtol=1e-6)
    if name != "cdist ** 2":     # torch has no second derivative of cdist
        torch.testing.assert_close(torch.func.hessian(f)(x), want, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------- torch.linalg's error checks

_NOT_PD = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=D)
_LINALG_CHECKED = {
    "cholesky": (torch.linalg.cholesky, _NOT_PD),
    "inv": (torch.linalg.inv, torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=D)),
    "solve": (lambda A: torch.linalg.solve(A, torch.ones(2, dtype=D)), torch.zeros(2, 2, dtype=D)),
}


@pytest.mark.parametrize("how", ["jit", "jit(grad)", "vmap", "jit(vmap)"])
@pytest.mark.parametrize("name", sorted(_LINALG_CHECKED))
def test_linalg_errors_raise_under_jit_and_vmap(name, how):
    """A GP's Cholesky of a kernel matrix that lost positive-definiteness: eager torch (and
    torch.func.vmap) raise; under jit and vmap functx skipped the check (its values were
    abstract or batched) and returned the factorization's garbage."""
    f, A = _LINALG_CHECKED[name]
    with pytest.raises(torch.linalg.LinAlgError):
        f(A)
    g = {"jit": lambda: functx.jit(f)(A),
         "jit(grad)": lambda: functx.jit(functx.grad(lambda A: f(A).sum()))(A),
         "vmap": lambda: functx.vmap(f)(torch.stack([torch.eye(2, dtype=D), A])),
         "jit(vmap)": lambda: functx.jit(functx.vmap(f))(torch.stack([torch.eye(2, dtype=D), A]))}[how]
    with pytest.raises(torch.linalg.LinAlgError):
        g()
    # and valid inputs still run through the same trace
    if how.startswith("jit") and "vmap" not in how:
        torch.testing.assert_close(functx.jit(f)(torch.eye(2, dtype=D) * 4), f(torch.eye(2, dtype=D) * 4))


@pytest.mark.parametrize("how", ["grad", "jit", "jit(grad)", "vmap"])
@pytest.mark.parametrize("bad", ["input", "target"])
def test_binary_cross_entropy_outside_0_1_raises_as_torch(bad, how):
    """A sigmoid output pushed past 1 by a stranger's label smoothing: eager torch raises, functx
    returned a loss (NaN) and finite gradients."""
    x = torch.tensor([0.2, 0.7, 0.9], dtype=D)
    y = torch.tensor([0.0, 1.0, 1.0], dtype=D)
    if bad == "input":
        f = lambda x: torch.nn.functional.binary_cross_entropy(x * 1.2, y)  # noqa: E731
    else:
        f = lambda x: torch.nn.functional.binary_cross_entropy(x, y * 1.1)  # noqa: E731
    with pytest.raises(RuntimeError, match=f"all elements of {bad} should be between 0 and 1"):
        f(x)
    g = {"grad": functx.grad(f), "jit": functx.jit(f), "jit(grad)": functx.jit(functx.grad(f)),
         "vmap": lambda x: functx.vmap(f)(x[None])}[how]
    with pytest.raises(RuntimeError, match=f"all elements of {bad} should be between 0 and 1"):
        g(x)


# ---------------------------------------------------------------- heteroscedastic regression under jit

@pytest.mark.parametrize("how", ["jit", "jit(grad)", "vmap"])
def test_gaussian_nll_loss_under_jit_and_vmap(how):
    """F.gaussian_nll_loss tests `torch.any(var < 0)` in Python: under jit that raised
    ConcretizationError for every call. Values and gradients as eager torch; a negative
    variance still raises (when the program runs)."""
    torch.manual_seed(0)
    m, t = torch.randn(4, 3, dtype=D), torch.randn(4, 3, dtype=D)
    v = torch.rand(4, 3, dtype=D) + 0.1
    f = lambda m, v: torch.nn.functional.gaussian_nll_loss(m, t, v, full=True)  # noqa: E731
    g = {"jit": functx.jit(f), "jit(grad)": functx.jit(functx.grad(f, argnums=(0, 1))),
         "vmap": lambda m, v: functx.vmap(f)(m[None], v[None])[0]}[how]
    want = torch.func.grad(f, argnums=(0, 1))(m, v) if how == "jit(grad)" else f(m, v)
    torch.testing.assert_close(g(m, v), want)
    with pytest.raises(ValueError):
        g(m, -v)
