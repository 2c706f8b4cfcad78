"""Collapsed Taylor mode: functx.laplacian / divergence / taylor_operator and the Hutchinson
estimators against torch.func trace(hessian) / trace(jacfwd) and explicit sums of
directional derivatives, float64, on MLPs (tanh, softplus, relu), a ResNet-style block,
attention and piecewise-linear nets; under vmap, grad and jit.
"""
import pytest
import torch
import torch.nn.functional as F

import functx

DT = torch.float64


def _randn(*shape, seed=0):
    return torch.randn(tuple(shape), dtype=DT, generator=torch.Generator().manual_seed(seed))


def _mlp_params(sizes, seed=0):
    return [(_randn(i, o, seed=seed + 2 * k) / i ** 0.5, _randn(o, seed=seed + 2 * k + 1) * 0.1)
            for k, (i, o) in enumerate(zip(sizes[:-1], sizes[1:]))]


def mlp(params, act):
    def u(x):
        for k, (W, b) in enumerate(params):
            x = x @ W + b
            if k < len(params) - 1:
                x = act(x)
        return x.sum()
    return u


def resnet_block(d=4, seed=0):
    (W1, b1), (W2, b2) = _mlp_params([d, 6, d], seed)

    def u(x):
        h = x + torch.tanh(F.layer_norm(x, (d,)) @ W1 + b1) @ W2 + b2
        return (F.softplus(h) * h).sum()
    return u


def attention(d=4, seed=0):
    Wq, Wk, Wv = (_randn(d, d, seed=seed + i) / 2 for i in range(3))

    def u(x):
        tokens = x.reshape(2, d // 2).repeat(1, 2) * torch.arange(1, d + 1, dtype=DT)
        q, k, v = tokens @ Wq, tokens @ Wk, tokens @ Wv
        att = torch.softmax(q @ k.T / d ** 0.5, dim=-1)
        return torch.tanh(att @ v).sum()
    return u


def piecewise(d=4, seed=0):
    (W1, b1), (W2, b2) = _mlp_params([d, 8, 1], seed)

    def u(x):
        h = torch.relu(x @ W1 + b1)
        return (torch.maximum(h, torch.abs(x @ W1)) @ W2 + b2).sum() + (x.clamp(-0.3, 0.3) ** 2).sum()
    return u


MODELS = {
    "mlp_tanh": lambda: mlp(_mlp_params([4, 8, 8, 1]), torch.tanh),
    "mlp_softplus": lambda: mlp(_mlp_params([4, 8, 8, 1]), F.softplus),
    "mlp_relu": lambda: mlp(_mlp_params([4, 8, 8, 1]), torch.relu),
    "resnet_block": resnet_block,
    "attention": attention,
    "piecewise_linear": piecewise,
}


def trace_hessian(u):
    return torch.func.vmap(lambda x: torch.func.hessian(u)(x).trace())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_laplacian_matches_trace_hessian(name):
    u = MODELS[name]()
    X = _randn(5, 4, seed=9)
    want = trace_hessian(u)(X)
    torch.testing.assert_close(functx.vmap(functx.laplacian(u))(X), want)
    torch.testing.assert_close(functx.jit(functx.vmap(functx.laplacian(u)))(X), want)


def test_laplacian_single_point_matrix_input_and_vector_output():
    u = MODELS["mlp_tanh"]()
    x = _randn(4, seed=3)
    torch.testing.assert_close(functx.laplacian(u)(x), torch.func.hessian(u)(x).trace())
    # a matrix argument: every element is a coordinate
    f = lambda X: torch.tanh(X @ X.T).sum()       # noqa: E731
    X = _randn(2, 3)
    torch.testing.assert_close(functx.laplacian(f)(X), torch.func.hessian(f)(X).reshape(6, 6).trace())
    # a vector-valued function: one Laplacian per output element
    g = lambda x: torch.stack([torch.sin(x).prod(), (x ** 3).sum()])    # noqa: E731
    want = torch.func.hessian(g)(x).diagonal(dim1=1, dim2=2).sum(-1)
    torch.testing.assert_close(functx.laplacian(g)(x), want)


def test_laplacian_argnums_and_grad_through_it():
    params = _mlp_params([3, 8, 1])
    X = _randn(6, 3, seed=4)

    def u(params, x):
        return mlp(params, torch.tanh)(x)

    def loss(params, lap):
        return (lap(params, X) ** 2).mean()
    ours = lambda p, X: functx.vmap(functx.laplacian(u, argnums=1), in_axes=(None, 0))(p, X)   # noqa: E731
    ref = lambda p, X: torch.func.vmap(lambda x: torch.func.hessian(u, argnums=1)(p, x).trace())(X)  # noqa: E731
    torch.testing.assert_close(ours(params, X), ref(params, X))
    g = functx.grad(lambda p: loss(p, ours))(params)
    want = torch.func.grad(lambda p: loss(p, ref))(params)
    torch.testing.assert_close(g, want)
    torch.testing.assert_close(functx.jit(functx.grad(lambda p: loss(p, ours)))(params), want)


def test_taylor_operator_weighted_directions():
    u = MODELS["resnet_block"]()
    x = _randn(4, seed=5)
    V, w = _randn(3, 4, seed=6), torch.tensor([0.5, -2.0, 1.5], dtype=DT)
    H = torch.func.hessian(u)(x)
    want = sum(w[i] * V[i] @ H @ V[i] for i in range(3))
    torch.testing.assert_close(functx.taylor_operator(u, V, w)(x), want)
    torch.testing.assert_close(functx.taylor_operator(u, V)(x), sum(V[i] @ H @ V[i] for i in range(3)))
    X = _randn(3, 4, seed=7)
    torch.testing.assert_close(functx.vmap(functx.taylor_operator(u, V, w))(X),
                               torch.stack([functx.taylor_operator(u, V, w)(x) for x in X]))


def test_divergence_matches_trace_jacfwd():
    W = _randn(4, 4, seed=8)
    field = lambda x: torch.tanh(x @ W) * x + torch.sin(x).sum()     # noqa: E731
    X = _randn(5, 4, seed=9)
    want = torch.func.vmap(lambda x: torch.func.jacfwd(field)(x).trace())(X)
    torch.testing.assert_close(functx.vmap(functx.divergence(field))(X), want)
    torch.testing.assert_close(functx.jit(functx.vmap(functx.divergence(field)))(X), want)
    g = functx.grad(lambda W_: functx.vmap(functx.divergence(lambda x: torch.tanh(x @ W_) * x))(X).sum())(W)
    want_g = torch.func.grad(lambda W_: torch.func.vmap(
        lambda x: torch.func.jacfwd(lambda y: torch.tanh(y @ W_) * y)(x).trace())(X).sum())(W)
    torch.testing.assert_close(g, want_g)


def test_hutchinson_is_the_probe_average():
    u = MODELS["mlp_softplus"]()
    x = _randn(4, seed=1)
    S = 7
    est = functx.laplacian(u, num_samples=S, generator=torch.Generator().manual_seed(3))(x)
    probes = torch.randint(0, 2, (S, 4), generator=torch.Generator().manual_seed(3)).to(DT) * 2 - 1
    H = torch.func.hessian(u)(x)
    torch.testing.assert_close(est, sum(v @ H @ v for v in probes) / S)
    # the divergence estimator: (1/S) sum_s v_s^T J v_s, with Gaussian probes
    W = _randn(4, 4, seed=8)
    field = lambda x: torch.tanh(x @ W)        # noqa: E731
    est = functx.divergence(field, num_samples=S, generator=torch.Generator().manual_seed(4),
                            distribution="normal")(x)
    probes = torch.randn((S, 4), generator=torch.Generator().manual_seed(4), dtype=DT)
    J = torch.func.jacfwd(field)(x)
    torch.testing.assert_close(est, sum(v @ J @ v for v in probes) / S)


def test_hutchinson_random_probes_under_jit_and_vmap():
    u = MODELS["mlp_tanh"]()
    X = _randn(3, 4, seed=2)
    lap = functx.jit(functx.vmap(functx.laplacian(u, num_samples=2), randomness="different"))
    a, b = lap(X), lap(X)
    assert not torch.equal(a, b)            # fresh probes on every call of the jitted function
    # the estimate is unbiased: its mean over many probes approaches the Laplacian
    many = functx.vmap(functx.laplacian(u, num_samples=4000), randomness="same")(X)
    torch.testing.assert_close(many, trace_hessian(u)(X), rtol=0.1, atol=0.1)
    with pytest.raises(functx.FunctxError, match="randomness"):
        functx.vmap(functx.laplacian(u, num_samples=2))(X)


def test_operator_errors_name_the_argument():
    u = MODELS["mlp_tanh"]()
    x = _randn(4)
    with pytest.raises(ValueError, match="directions"):
        functx.taylor_operator(u, _randn(3, 5))(x)
    with pytest.raises(ValueError, match="weights"):
        functx.taylor_operator(u, _randn(3, 4), _randn(2))(x)
    with pytest.raises(TypeError, match="argnums"):
        functx.laplacian(u, argnums=(0,))(x)
    with pytest.raises(ValueError, match="num_samples"):
        functx.laplacian(u, num_samples=0)(x)
    with pytest.raises(functx.FunctxError, match="generator"):
        functx.jit(functx.laplacian(u, num_samples=2, generator=torch.Generator()))(x)
    with pytest.raises(ValueError, match="as many elements"):
        functx.divergence(lambda x: x.sum())(x)


def test_laplacian_through_rules_without_fast_paths():
    # primitives reached through the generic path (order-2 rule batched over directions or
    # nested jvp): sort, reductions, custom_jvp (its rule is differentiated), cond
    @functx.custom_jvp
    def softplus(x):
        return torch.log1p(torch.exp(x))
    softplus.defjvp(lambda p, t: (softplus(p[0]), torch.sigmoid(p[0]) * t[0]))
    ramp = torch.arange(4, dtype=DT)
    cases = [
        (lambda x: (torch.sort(torch.sin(x))[0] * ramp).sum(), None),
        (lambda x: torch.sin(x).amax() * x.sum() + torch.logsumexp(x * x, 0), None),
        (lambda x: ((x.abs() + 1) ** x).sum() + torch.atan2(x, x.flip(0) + 3).sum(), None),
        (lambda x: softplus(x).prod(), lambda x: F.softplus(x).prod()),
        (lambda x: functx.cond(x.sum() > 0, lambda y: torch.sin(y).prod(), lambda y: torch.cos(y).sum(), x),
         lambda x: torch.sin(x).prod() if x.sum() > 0 else torch.cos(x).sum()),
    ]
    X = _randn(3, 4, seed=11)
    for f, oracle in cases:
        want = torch.stack([torch.func.hessian(oracle or f)(x).trace() for x in X])
        torch.testing.assert_close(functx.vmap(functx.laplacian(f))(X), want)
