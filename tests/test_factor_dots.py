"""factor_broadcast_dots: dot(g * f, V) -> dot(g, f * V) when f * V is the smaller product.
Checked on the graphs the transforms produce (laplacian, divergence, jacfwd and their
gradients) on MLPs, a ResNet-style block, attention and a piecewise-linear network, jit
against torch.func in float64 and against the same jit without the pass; plus the cases
it must leave alone."""
import pytest
import torch

import functx
from functx.compile import pipeline
from functx.compile.factor_dots import factor_broadcast_dots

DT = torch.float64
POINTS = 160                     # > 2 * width: the per-point product is the larger one


def _randn(*shape, seed=0):
    return torch.randn(tuple(shape), dtype=DT, generator=torch.Generator().manual_seed(seed))


def _params(sizes, seed=0):
    return tuple(t for k, (i, o) in enumerate(zip(sizes[:-1], sizes[1:]))
                 for t in (_randn(i, o, seed=seed + 2 * k) / i ** 0.5, _randn(o, seed=seed + 2 * k + 1)))


def _mlp(p, x, act=torch.tanh):
    for k in range(0, len(p), 2):
        x = x @ p[k] + p[k + 1]
        if k < len(p) - 2:
            x = act(x)
    return x


def _resnet(p, x):
    h = torch.tanh(x @ p[0] + p[1])
    h = h + torch.tanh(h @ p[2] + p[3])          # a residual block
    return (h @ p[4] + p[5]).sum(-1)


def _attention(p, x):
    h = torch.tanh(x @ p[0] + p[1]).reshape(4, -1)        # 4 tokens
    a = torch.softmax(h @ h.T / h.shape[-1] ** 0.5, -1) @ h
    return (torch.tanh(a.reshape(-1) @ p[2] + p[3]) @ p[4] + p[5]).sum()


def _without_pass():
    saved = list(pipeline.PIPELINE)
    pipeline.PIPELINE[:] = [(n, p) for n, p in saved if n != "factor_broadcast_dots"]
    return saved


def _jit_both(f, *args):
    """(with the pass, without it, the graph after the pass or '' when it changed nothing)
    of jit(f)(*args); explain's pass trace shows the pass like every other."""
    got = functx.jit(f)(*args)
    rewrites = dict(functx.explain(functx.jit(f))(*args).passes)["factor_broadcast_dots"]
    saved = _without_pass()
    try:
        plain = functx.jit(f)(*args)
    finally:
        pipeline.PIPELINE[:] = saved
    return got, plain, rewrites


def _lap_ref(u):
    return torch.func.vmap(lambda p, x: torch.trace(torch.func.hessian(u, argnums=1)(p, x)), in_dims=(None, 0))


@pytest.mark.parametrize("net", ["mlp", "relu_mlp", "resnet", "attention"])
def test_laplacian_matches_torch_func_and_the_unrewritten_graph(net):
    if net == "mlp":
        p, d, u = _params([6, 12, 12, 1]), 6, lambda p, x: _mlp(p, x).squeeze(-1)
    elif net == "relu_mlp":
        p, d, u = _params([6, 12, 12, 1]), 6, lambda p, x: _mlp(p, x, torch.relu).squeeze(-1)
    elif net == "resnet":
        p, d, u = _params([6, 12, 12, 3]), 6, _resnet
    else:
        p, d, u = _params([8, 16, 12, 1]), 8, _attention
    X = _randn(POINTS, d, seed=7)
    lap = functx.vmap(functx.laplacian(u, argnums=1), in_axes=(None, 0))
    got, plain, rewrites = _jit_both(lap, p, X)
    torch.testing.assert_close(got, _lap_ref(u)(p, X))
    torch.testing.assert_close(got, plain)
    if net in ("mlp", "resnet"):          # (a piecewise-linear net's Laplacian folds to zeros)
        assert rewrites, "the first layer's scaled weight times the next weight"


@pytest.mark.parametrize("act", [torch.tanh, torch.relu])
def test_jacfwd_and_divergence_gradient(act):
    p, X = _params([5, 12, 12, 5]), _randn(POINTS, 5, seed=3)
    net = lambda p, x: _mlp(p, x, act)          # noqa: E731
    jac = functx.vmap(functx.jacfwd(net, argnums=1), in_axes=(None, 0))
    got, plain, rewrites = _jit_both(jac, p, X)
    torch.testing.assert_close(got, torch.func.vmap(torch.func.jacfwd(net, argnums=1), in_dims=(None, 0))(p, X))
    torch.testing.assert_close(got, plain)
    if act is torch.relu:     # relu's tangent is where(x < 0, 0, t), not a product: left alone
        assert not rewrites
        return
    assert rewrites

    def loss(T, div):
        return T.grad(lambda p, X: T.vmap(lambda p, x: 0.5 * (_mlp(p, x) ** 2).sum() + div(p, x),
                                          in_dims=(None, 0))(p, X).mean())
    got, plain, _ = _jit_both(loss(functx, functx.divergence(_mlp, argnums=1)), p, X)
    ref = loss(torch.func, lambda p, x: torch.trace(torch.func.jacfwd(_mlp, argnums=1)(p, x)))(p, X)
    for g, q, r in zip(got, plain, ref):
        torch.testing.assert_close(g, r)
        torch.testing.assert_close(g, q)


def test_direct_product_of_broadcasts():
    # dot(s[b, None, k] * W[None, i, k], V) over k, per point under vmap. (Written as one
    # 3-d torch matmul it is left alone: torch flattens (b, i) into one axis first, and the
    # pass follows only reshapes that add or drop unit dims.)
    s, W, V = _randn(100, 8, seed=1), _randn(5, 8, seed=2), _randn(8, 3, seed=3)
    f = functx.vmap(lambda s, W, V: (s * W) @ V, in_axes=(0, None, None))
    got, plain, rewrites = _jit_both(f, s, W, V)
    torch.testing.assert_close(got, (s[:, None, :] * W[None]) @ V)
    torch.testing.assert_close(got, plain)
    assert "f64[8,5,3]" in rewrites            # f * V: (k, i, j)
    final = functx.explain(functx.jit(f))(s, W, V).graph
    assert not any(e.prim.name == "mul" and e.outputs[0].type.shape == (100, 5, 8) for e in final.eqns)


def test_left_alone():
    s, W, V = _randn(100, 8, seed=1), _randn(5, 8, seed=2), _randn(8, 3, seed=3)

    def used_twice(s, W, V):           # the product is needed anyway
        m = s * W
        return m @ V, m.sum()

    def not_smaller(s, W, V):          # 4 points: f * V is no smaller than the product
        return (s * W) @ V

    def shared_free_axis(s, W, V):     # both factors vary along a free axis (a batch axis)
        return (s * torch.tanh(s)) @ V

    for f, n in ((used_twice, 100), (not_smaller, 4), (shared_free_axis, 100)):
        vf = functx.vmap(f, in_axes=(0, None, None))
        got, _, rewrites = _jit_both(vf, s[:n], W, V)
        assert not rewrites, f.__name__
        want = torch.func.vmap(f, in_dims=(0, None, None))(s[:n], W, V)
        for g, r in zip(*(x if isinstance(x, tuple) else (x,) for x in (got, want))):
            torch.testing.assert_close(g, r)


def test_pass_returns_its_input_when_nothing_matches():
    g = functx.explain(functx.jit(lambda x: torch.sin(x) @ x))(_randn(4, 4)).graph
    assert factor_broadcast_dots(g) is g
