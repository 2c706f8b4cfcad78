"""The trace(hessian(f)) -> laplacian(f) rewrite under jit (frontend/rewrites.py): values
against torch.func trace(hessian) in float64, the Hessian's equations gone from the compiled
graph, explain's report, and the cases that must not be rewritten."""
import pytest
import torch

import functx

DT = torch.float64


def _randn(*shape, seed=0):
    return torch.randn(tuple(shape), dtype=DT, generator=torch.Generator().manual_seed(seed))


W1, b1, W2 = _randn(5, 16, seed=1) / 2, _randn(16, seed=2) * 0.1, _randn(16, 1, seed=3) / 4


def u(x):
    return (torch.tanh(x @ W1 + b1) @ W2).squeeze(-1) + (x ** 3).sum()


def u2(p, x):
    return (torch.tanh(x @ p + b1) @ W2).squeeze(-1)


TRACES = {
    "torch.trace": lambda h: torch.trace(h),
    "method": lambda h: h.trace(),
    "diagonal().sum()": lambda h: h.diagonal().sum(),
    "torch.diagonal(dim1=-1, dim2=-2)": lambda h: torch.sum(torch.diagonal(h, dim1=-1, dim2=-2)),
    "einsum": lambda h: torch.einsum("ii", h),
    "einsum ->": lambda h: torch.einsum("i i ->", [h]),
}


def _oracle(x):
    return torch.vmap(lambda p: torch.trace(torch.func.hessian(u)(p)))(x)


@pytest.mark.parametrize("spelling", list(TRACES))
def test_vmapped_trace_of_hessian_is_the_laplacian(spelling):
    tr = TRACES[spelling]
    f = functx.vmap(lambda p: tr(functx.hessian(u)(p)))
    X = _randn(7, 5)
    e = functx.explain(f)(X)
    assert e.rewrites == ["rewrite: trace(hessian(u)) -> laplacian(u) (collapsed Taylor mode)"]
    assert "rewrite: trace(hessian(u)) -> laplacian(u)" in str(e)
    # dead-code elimination dropped the Hessian: the compiled graph is the Laplacian's
    lap = functx.explain(functx.vmap(functx.laplacian(u)))(X).graph
    assert [eq.prim.name for eq in e.graph.eqns] == [eq.prim.name for eq in lap.eqns]
    torch.testing.assert_close(functx.jit(f)(X), _oracle(X))


def test_argnums_and_grad_of_the_rewritten_laplacian():
    p, x = _randn(5, 16, seed=4) / 2, _randn(5, seed=5)

    def loss(p, x):
        return torch.trace(functx.hessian(u2, argnums=1)(p, x)) ** 2

    def oracle(p, x):
        return torch.trace(torch.func.hessian(u2, argnums=1)(p, x)) ** 2
    e = functx.explain(functx.grad(loss))(p, x)
    assert len(e.rewrites) == 1
    torch.testing.assert_close(functx.jit(functx.grad(loss))(p, x), torch.func.grad(oracle)(p, x))


def test_f_is_traced_once():
    calls = []

    def counted(x):
        calls.append(1)
        return u(x)
    f = functx.jit(functx.vmap(lambda p: torch.trace(functx.hessian(counted)(p))))
    X = _randn(7, 5)
    torch.testing.assert_close(f(X), _oracle(X))
    assert len(calls) == 1     # the Hessian and the Laplacian replay one staged graph of f
    assert functx.explain(f)(X).rewrites == [
        "rewrite: trace(hessian(counted)) -> laplacian(counted) (collapsed Taylor mode)"]


def _not_rewritten(f, oracle, *args):
    e = functx.explain(f)(*args)
    assert e.rewrites == []
    torch.testing.assert_close(functx.jit(f)(*args), oracle(*args))


def test_not_rewritten_when_not_exactly_the_trace():
    x = _randn(5, seed=6)
    H = lambda h: h    # noqa: E731
    for form in [lambda h: torch.trace(h * 2), lambda h: h.diagonal(1).sum(), lambda h: h.diagonal().sum(0),
                 lambda h: h.sum(), lambda h: torch.einsum("ij", h).sum(), lambda h: torch.trace(H(h) + 0)]:
        _not_rewritten(lambda x: form(functx.hessian(u)(x)), lambda x: form(torch.func.hessian(u)(x)), x)


def test_not_rewritten_after_a_write_into_the_hessian():
    x = _randn(5, seed=7)

    def written(T):
        def f(x):
            h = T.hessian(u)(x)
            h.add_(torch.eye(5, dtype=DT))
            return torch.trace(h)
        return f

    def written_diagonal(T):
        def f(x):
            d = T.hessian(u)(x).diagonal()
            d.mul_(2)
            return d.sum()
        return f
    _not_rewritten(written(functx), written(torch.func), x)
    _not_rewritten(written_diagonal(functx), written_diagonal(torch.func), x)


def test_not_rewritten_for_a_non_scalar_f_or_a_matrix_argument():
    x = _randn(5, seed=8)
    # f: R -> R^(2x2): its "Hessian" is 2-d too, but its trace is no Laplacian
    g = lambda s: torch.stack([s.sin(), s.cos(), s * s, s]).reshape(2, 2)   # noqa: E731
    s = _randn(seed=9).reshape(())
    _not_rewritten(lambda s: torch.trace(functx.hessian(g)(s)), lambda s: torch.trace(torch.func.hessian(g)(s)), s)
    _not_rewritten(lambda x: torch.trace(functx.hessian(u)(x).reshape(5, 5)),
                   lambda x: torch.trace(torch.func.hessian(u)(x).reshape(5, 5)), x)


def test_not_rewritten_when_f_has_effects():
    x = _randn(5, seed=10)
    seen = []

    def printing(x):
        functx.debug.callback(lambda v: seen.append(v.shape), x)
        return u(x)
    f = functx.jit(lambda x: torch.trace(functx.hessian(printing)(x)))
    e = functx.explain(f)(x)
    assert e.rewrites == []
    seen.clear()
    torch.testing.assert_close(f(x), torch.trace(torch.func.hessian(u)(x)))
    assert len(seen) == len(set(seen)) > 0     # each callback of f's one Hessian call, once


def test_eager_hessian_is_unchanged():
    x = _randn(5, seed=11)
    torch.testing.assert_close(torch.trace(functx.hessian(u)(x)), torch.trace(torch.func.hessian(u)(x)))


def test_not_rewritten_when_f_turns_grad_mode_off():
    # the Hessian (reverse mode inside) drops the no_grad term; a forward-mode Laplacian
    # would not, and a staged graph of f forgets grad mode: the Hessian runs as written
    def f(x):
        with torch.no_grad():
            c = (x ** 3).sum()
        return c * x.sum() + (x ** 2 * x.sum()).sum()

    def oracle(x):
        return torch.trace(torch.func.hessian(f)(x))
    _not_rewritten(lambda x: torch.trace(functx.hessian(f)(x)), oracle, _randn(4, seed=11))
