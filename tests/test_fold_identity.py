"""fold_identity_dots: dot_general against a (scaled, broadcast) identity basis becomes a
selection of the other operand. Checked on the graphs the transforms produce (jacfwd,
hessian, laplacian, divergence and their gradients), jit against torch.func in float64,
and by counting the dot_generals left; plus operand layouts, and a user's own identity
(never folded: it may be written in place after compiling)."""
import pytest
import torch

import functx
from functx.compile.fold_identity import fold_identity_dots

DT = torch.float64


def _randn(*shape, seed=0):
    return torch.randn(tuple(shape), dtype=DT, generator=torch.Generator().manual_seed(seed))


def _params(sizes, seed=0):
    return tuple(t for k, (i, o) in enumerate(zip(sizes[:-1], sizes[1:]))
                 for t in (_randn(i, o, seed=seed + 2 * k) / i ** 0.5, _randn(o, seed=seed + 2 * k + 1)))


def _mlp(p, x):
    for k in range(0, len(p), 2):
        x = x @ p[k] + p[k + 1]
        if k < len(p) - 2:
            x = torch.tanh(x)
    return x


def _dots(f, *args):
    return sum(e.prim.name == "dot_general" for e in functx.explain(f)(*args).graph.eqns)


def _div_loss(T, div):
    def loss(p, X):
        return T.vmap(lambda p, x: 0.5 * (_mlp(p, x) ** 2).sum() + div(p, x), in_dims=(None, 0))(p, X).mean()
    return T.grad(loss)


def test_score_matching_gradient_drops_the_identity_matmuls():
    p, X = _params([5, 7, 7, 5]), _randn(6, 5, seed=9)
    ref = _div_loss(torch.func, lambda p, x: torch.trace(torch.func.jacfwd(_mlp, argnums=1)(p, x)))(p, X)
    for div in (functx.divergence(_mlp, argnums=1),
                lambda p, x: torch.trace(functx.jacfwd(_mlp, argnums=1)(p, x))):
        f = _div_loss(functx, div)
        got = functx.jit(f)(p, X)
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r)
    # the output layer's transposed contractions with the cotangent s * I (two N*d*d*h
    # matmuls) and the first layer's I @ W0 are selections now
    before = sum(e.prim.name == "dot_general" for e in functx.explain(f)(p, X).traced.eqns)
    assert _dots(f, p, X) <= before - 3


@pytest.mark.parametrize("order", ["jacfwd", "hessian", "laplacian"])
def test_forward_bases_fold_and_match(order):
    p, X = _params([4, 6, 6, 1]), _randn(5, 4, seed=3)

    def u(p, x):
        return _mlp(p, x).sum()
    fx = {"jacfwd": lambda p, x: functx.jacfwd(u, argnums=1)(p, x),
          "hessian": lambda p, x: functx.jacfwd(functx.jacrev(u, argnums=1), argnums=1)(p, x),
          "laplacian": functx.laplacian(u, argnums=1)}[order]
    tf = {"jacfwd": lambda p, x: torch.func.jacfwd(u, argnums=1)(p, x),
          "hessian": lambda p, x: torch.func.hessian(u, argnums=1)(p, x),
          "laplacian": lambda p, x: torch.trace(torch.func.hessian(u, argnums=1)(p, x))}[order]
    f = functx.vmap(fx, in_dims=(None, 0))
    torch.testing.assert_close(functx.jit(f)(p, X), torch.func.vmap(tf, in_dims=(None, 0))(p, X))
    ex = functx.explain(f)(p, X)
    assert not any(e.prim.name == "dot_general" and any(
        isinstance(a, functx.core.Var) and a in ex.graph.constvars for a in e.inputs) for e in ex.graph.eqns)


@pytest.mark.parametrize("case", range(2))
def test_basis_layouts(case):
    # a basis as the transforms mark it, in the operand positions a user's code could give it
    from functx.transforms.api import mark_identity_basis
    x, w = _randn(5, 3, 4), _randn(4, 6, seed=1)
    E4 = mark_identity_basis(torch.eye(4, dtype=DT))
    f = [lambda x, w: E4 @ w, lambda x, w: x @ E4][case]
    torch.testing.assert_close(functx.jit(f)(x, w), f(x, w))
    assert _dots(f, x, w) == 0


def test_a_users_identity_is_not_folded():
    # a closed-over tensor may be written in place after jit compiled against its value
    x, E = _randn(4, 3), torch.eye(4, dtype=DT)
    f = functx.jit(lambda x: E @ x)
    torch.testing.assert_close(f(x), x)
    E.mul_(2)
    torch.testing.assert_close(f(x), 2 * x)
    assert _dots(lambda x: E @ x, x) == 1


def test_left_alone_when_not_a_selection():
    x, w = _randn(4, 4), _randn(4, 4, seed=1)
    E, near = torch.eye(4, dtype=DT), torch.eye(4, dtype=DT) + 1e-9
    trace = lambda x: torch.einsum("ij,ij->", E, x)          # noqa: E731  both axes contracted
    assert _dots(trace, x) == 1 and _dots(lambda x: near @ x, x) == 1
    # a 3-d constant (expand of a constant runs at trace time) is not an identity matrix
    assert _dots(lambda x: torch.einsum("bij,bjk->bik", E.expand(4, 4, 4), x.expand(4, 4, 4)), x) == 1
    torch.testing.assert_close(functx.jit(trace)(x), torch.trace(x))
    g = functx.explain(lambda x: near @ x)(x).graph
    assert fold_identity_dots(g) is g
