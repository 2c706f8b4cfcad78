"""functx.cond / switch / while_loop / scan: eager, under jit (traced predicates), vmap
(batched predicates), and derivatives (jit(grad), jit(jacrev), jit(jacfwd)) vs hand oracles.

With a concrete predicate cond is plain Python; the cond primitive's rules run when the
predicate is traced: inside jit, or batched under vmap."""
import pytest
import torch

import functx
from functx.core import ConcretizationError, FunctxError

F64 = torch.float64
G = torch.Generator().manual_seed(0)
X = torch.randn(4, dtype=F64, generator=G)
W = torch.randn(4, dtype=F64, generator=G)
XS = torch.stack([X, -X, X.abs(), -X.abs()])


def f(x, w):
    # pos: sin(x) * w ; neg: x * exp(w) - x**2   (w is closed over by the branches)
    return functx.cond(x.sum() > 0, lambda x: torch.sin(x) * w, lambda x: x * torch.exp(w) - x ** 2, x)


def f_ref(x, w):
    return torch.sin(x) * w if x.sum() > 0 else x * torch.exp(w) - x ** 2


def df_dx(x, w):
    return torch.cos(x) * w if x.sum() > 0 else torch.exp(w) - 2 * x


def df_dw(x, w):
    return torch.sin(x) if x.sum() > 0 else x * torch.exp(w)


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_cond_eager_jit_and_graph():
    jf = functx.jit(f)
    for x in XS:
        close(f(x, W), f_ref(x, W))
        close(jf(x, W), f_ref(x, W))
    assert jf.cache_size() == 1
    g = functx.make_graph(f)(X, W)
    assert [e.prim.name for e in g.eqns].count("cond") == 1
    g.check()
    # a Python bool or concrete tensor predicate is plain Python control flow
    assert functx.cond(True, lambda: torch.ones(1), lambda: torch.zeros(1)).item() == 1.0


def test_cond_grad_jacobians_under_jit():
    loss = lambda x, w: (f(x, w) * torch.arange(1.0, 5.0, dtype=F64)).sum()
    c = torch.arange(1.0, 5.0, dtype=F64)
    jg = functx.jit(functx.grad(loss, argnums=(0, 1)))
    jr = functx.jit(functx.jacrev(f, argnums=0))
    jf = functx.jit(functx.jacfwd(f, argnums=1))
    for x in XS:
        gx, gw = jg(x, W)
        close(gx, c * df_dx(x, W))
        close(gw, c * df_dw(x, W))
        close(jr(x, W), torch.diag(df_dx(x, W)))
        close(jf(x, W), torch.diag(df_dw(x, W)))
    # second order through a traced cond
    h = functx.jit(functx.hessian(lambda x: f(x, W).sum()))
    for x in XS:
        d2 = -torch.sin(x) * W if x.sum() > 0 else torch.full_like(x, -2.0)
        close(h(x), torch.diag(d2))


def test_cond_vmap_batched_predicate_selects():
    out = functx.vmap(f, in_axes=(0, None))(XS, W)
    close(out, torch.stack([f_ref(x, W) for x in XS]))
    g = functx.vmap(functx.grad(lambda x, w: f(x, w).sum()), in_axes=(0, None))(XS, W)
    close(g, torch.stack([df_dx(x, W) for x in XS]))
    # grad through vmap: the closed-over w gets the sum over the batch of per-element cotangents
    gw = functx.grad(lambda w: functx.vmap(f, in_axes=(0, None))(XS, w).sum())(W)
    close(gw, sum(df_dw(x, W) for x in XS))
    close(functx.jit(functx.vmap(f, in_axes=(0, None)))(XS, W), out)
    # unbatched predicate, batched operands (under jit, so the predicate is traced)
    h = functx.jit(lambda p, xs: functx.vmap(lambda x: functx.cond(p.sum() > 0, torch.sin, torch.cos, x))(xs))
    close(h(X.abs(), XS), XS.sin())
    close(h(-X.abs(), XS), XS.cos())


def test_switch_and_integer_outputs():
    branches = [lambda x: (x * 1, torch.tensor(0)), lambda x: (x * 2, torch.tensor(1)),
                lambda x: (x * 3, torch.tensor(2))]
    sw = functx.jit(lambda i, x: functx.switch(i, branches, x))
    for i, k in ((0, 1), (1, 2), (2, 3), (7, 3), (-1, 1)):         # out-of-range indices clamp
        y, j = sw(torch.tensor(i), X)
        close(y, k * X)
        assert j.item() == k - 1
    ys, js = functx.vmap(lambda i, x: functx.switch(i, branches, x))(torch.tensor([2, 0, 1, 5]), XS)
    close(ys, torch.stack([3 * XS[0], XS[1], 2 * XS[2], 3 * XS[3]]))
    assert js.tolist() == [2, 0, 1, 2]


def test_cond_errors():
    with pytest.raises(TypeError, match="same structure, shapes and dtypes"):
        functx.jit(lambda x: functx.cond(x.sum() > 0, lambda x: x, lambda x: x[:2], x))(X)
    with pytest.raises(TypeError, match="scalar"):
        functx.jit(lambda x: functx.cond(x > 0, lambda x: x, lambda x: x, x))(X)
    with pytest.raises(TypeError, match="bool or integer"):
        functx.jit(lambda x: functx.cond(x.sum(), lambda x: x, lambda x: x, x))(X)
    # Python control flow under jit points to functx.cond
    with pytest.raises(ConcretizationError, match="functx.cond"):
        functx.jit(lambda x: x if x.sum() > 0 else -x)(X)


def collatz_steps(n):
    return functx.while_loop(lambda c: c[0] != 1,
                             lambda c: (torch.where(c[0] % 2 == 0, c[0] // 2, 3 * c[0] + 1), c[1] + 1),
                             (n, torch.zeros_like(n)))[1]


def test_while_loop_jit_and_vmap():
    ref = {1: 0, 6: 8, 7: 16, 27: 111}
    j = functx.jit(collatz_steps)
    for n, k in ref.items():
        assert j(torch.tensor(n)).item() == k
        assert collatz_steps(torch.tensor(n)).item() == k          # eager: a Python loop
    # per-element trip counts under vmap (and jit(vmap))
    ns = torch.tensor(list(ref))
    assert functx.vmap(collatz_steps)(ns).tolist() == list(ref.values())
    assert functx.jit(functx.vmap(collatz_steps))(ns).tolist() == list(ref.values())


def newton_sqrt(a):
    # x <- (x + a/x)/2 until converged; the converged x depends smoothly on a: d sqrt(a)/da
    return functx.while_loop(lambda c: (c[0] * c[0] - a).abs().max() > 1e-12,
                             lambda c: ((c[0] + a / c[0]) / 2, c[1] + 1), (a + 1.0, torch.tensor(0)))[0]


def test_while_loop_forward_mode_and_reverse_error():
    a = torch.tensor([2.0, 9.0, 0.5], dtype=F64)
    close(functx.jit(newton_sqrt)(a), a.sqrt())
    _, t = functx.jit(lambda a: functx.jvp(newton_sqrt, (a,), (torch.ones_like(a),)))(a)
    torch.testing.assert_close(t, 0.5 / a.sqrt(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(functx.jit(functx.jacfwd(newton_sqrt))(a), torch.diag(0.5 / a.sqrt()),
                               atol=1e-6, rtol=1e-6)
    batched = functx.jit(functx.vmap(newton_sqrt))(torch.stack([a, a * 4]))
    close(batched, torch.stack([a, a * 4]).sqrt())
    with pytest.raises(FunctxError, match="while_loop: reverse-mode"):
        functx.jit(functx.grad(lambda a: newton_sqrt(a).sum()))(a)


def test_scan_matches_loop_and_differentiates():
    def cumprod_scan(x):
        return functx.scan(lambda c, xi: (c * xi, c * xi), torch.ones((), dtype=F64), x)

    carry, ys = cumprod_scan(X)
    close(ys, torch.cumprod(X, 0))
    close(carry, X.prod())
    g = functx.jit(functx.grad(lambda x: cumprod_scan(x)[0]))(X)
    close(g, X.prod() / X)
    gs = functx.vmap(functx.grad(lambda x: cumprod_scan(x)[1].sum()))(XS)
    close(gs, torch.stack([torch.func.grad(lambda x: torch.cumprod(x, 0).sum())(x) for x in XS]))
    c, ys = functx.scan(lambda c, x: (c + x, c), torch.zeros(()), torch.arange(4.0), reverse=True)
    assert ys.tolist() == [6.0, 5.0, 3.0, 0.0] and c.item() == 6.0


def test_while_loop_with_concrete_predicate_is_python():
    # Eager transforms see concrete predicates: the loop is plain Python, so reverse mode works.
    a = torch.tensor([2.0, 9.0, 0.5], dtype=F64)
    g = functx.grad(lambda a: newton_sqrt(a).sum())(a)
    torch.testing.assert_close(g, 0.5 / a.sqrt(), atol=1e-6, rtol=1e-6)
    # under vmap a predicate that only depends on an unbatched counter stays concrete
    pw = functx.vmap(lambda x: functx.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] * 2),
                                                 (torch.tensor(0), x))[1])(XS)
    close(pw, 8 * XS)
    # a batched predicate from the start, and one the body makes batched (the primitive takes over)
    steps = functx.vmap(lambda n: functx.while_loop(lambda c: c[1] < c[0], lambda c: (c[0], c[1] + 1),
                                                    (n, torch.tensor(0)))[1])(torch.tensor([3, 5, 1]))
    assert steps.tolist() == [3, 5, 1]
    def body(c):
        return c[0] + 1, c[2], c[2]
    ends = functx.vmap(lambda n: functx.while_loop(lambda c: c[0] < c[1], body,
                                                   (torch.tensor(0), torch.tensor(1), n))[0])(torch.tensor([3, 5, 1]))
    assert ends.tolist() == [3, 5, 1]
