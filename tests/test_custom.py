"""functx.custom_jvp / functx.custom_vjp under every transform, against hand-derived oracles."""
import pytest
import torch

import functx
from functx.core import FunctxError
from functx.testing import check_grads

F64 = torch.float64
G = torch.Generator().manual_seed(0)
X = torch.randn(5, dtype=F64, generator=G)
XS = torch.randn(3, 5, dtype=F64, generator=G)
calls = {"jvp": 0, "bwd": 0}


# ---------------------------------------------------------------- functions under test

@functx.custom_jvp
def log1pexp(x):
    return torch.log1p(torch.exp(x))


@log1pexp.defjvp
def _log1pexp_jvp(primals, tangents):
    calls["jvp"] += 1
    (x,), (t,) = primals, tangents
    return log1pexp(x), t * torch.sigmoid(x)


def log1pexp_d1(x):
    return torch.sigmoid(x)


def log1pexp_d2(x):
    s = torch.sigmoid(x)
    return s * (1 - s)


@functx.custom_vjp
def clip_gradient(x, lo, hi):
    return x


def _clip_fwd(x, lo, hi):
    return x, (lo, hi)


def _clip_bwd(res, g):
    calls["bwd"] += 1
    lo, hi = res
    return (g.clamp(lo, hi), None, None)


clip_gradient.defvjp(_clip_fwd, _clip_bwd)


@functx.custom_vjp
def ste_round(x):                      # straight-through estimator: round forward, identity back
    return torch.round(x)


ste_round.defvjp(lambda x: (torch.round(x), None), lambda res, g: (g,))


@functx.custom_jvp
def ste_sign(x):                       # the same idea as a custom_jvp
    return torch.sign(x)


ste_sign.defjvp(lambda p, t: (ste_sign(p[0]), t[0]))


@functx.custom_vjp
def scaled_mul(x, w):                  # two differentiable args, residuals, a wrong-looking but
    return x * w                       # deliberate backward: d/dw scaled by 2


scaled_mul.defvjp(lambda x, w: (x * w, (x, w)), lambda res, g: (g * res[1], 2 * (g * res[0]).sum(0)))


# ---------------------------------------------------------------- custom_jvp

def test_custom_jvp_eager_and_value():
    big = torch.tensor([100.0, -100.0, 0.0])        # float32: the naive derivative is nan at 100
    naive = torch.func.grad(lambda x: torch.log1p(torch.exp(x)).sum())(big)
    assert torch.isnan(naive[0])
    g = functx.grad(lambda x: log1pexp(x).sum())(big)
    torch.testing.assert_close(g, torch.tensor([1.0, 0.0, 0.5]))
    torch.testing.assert_close(log1pexp(X), torch.log1p(torch.exp(X)))


def test_custom_jvp_rule_is_used_in_every_transform():
    d1, d2 = log1pexp_d1(X), log1pexp_d2(X)
    s = lambda x: log1pexp(x).sum()
    n = calls["jvp"]
    torch.testing.assert_close(functx.grad(s)(X), d1)
    assert calls["jvp"] > n
    torch.testing.assert_close(functx.jvp(log1pexp, (X,), (torch.ones_like(X),))[1], d1)
    torch.testing.assert_close(functx.jacfwd(log1pexp)(X), torch.diag(d1))
    torch.testing.assert_close(functx.jacrev(log1pexp)(X), torch.diag(d1))
    torch.testing.assert_close(functx.hessian(s)(X), torch.diag(d2))
    torch.testing.assert_close(functx.grad(functx.grad(lambda x: log1pexp(x)))(X[0]), d2[0])
    torch.testing.assert_close(functx.vmap(functx.grad(s))(XS), log1pexp_d1(XS))
    torch.testing.assert_close(functx.jacrev(functx.vmap(log1pexp))(X), torch.diag(d1))
    torch.testing.assert_close(functx.grad(lambda x: functx.vmap(log1pexp)(x).sum())(XS), log1pexp_d1(XS))
    torch.testing.assert_close(functx.jvp(functx.vmap(log1pexp), (XS,), (torch.ones_like(XS),))[1],
                               log1pexp_d1(XS))
    torch.testing.assert_close(functx.jit(functx.vmap(functx.grad(s)))(XS), log1pexp_d1(XS))
    torch.testing.assert_close(functx.jit(log1pexp)(X), log1pexp(X))
    check_grads(log1pexp, (X,), order=2)


def test_custom_jvp_rule_not_function_is_differentiated():
    # The rule (not the function) defines the derivative: a deliberately different rule shows it.
    @functx.custom_jvp
    def f(x):
        return torch.sin(x)
    f.defjvp(lambda p, t: (f(p[0]), 2 * t[0]))
    torch.testing.assert_close(functx.grad(lambda x: f(x).sum())(X), torch.full_like(X, 2.0))
    torch.testing.assert_close(functx.vmap(functx.jacrev(f))(XS), 2 * torch.eye(5, dtype=F64).expand(3, 5, 5))
    # and check_grads catches such a rule when it is wrong
    with pytest.raises(AssertionError, match="fwd mode, order 1"):
        check_grads(f, (X,), order=1)


def test_custom_jvp_multiple_args_pytrees_and_nondiff():
    @functx.custom_jvp
    def f(d, y):
        return {"s": d["a"] * y, "c": d["b"].cos()}

    @f.defjvp
    def f_jvp(p, t):
        (d, y), (dd, dy) = p, t
        return f(d, y), {"s": dd["a"] * y + d["a"] * dy, "c": -d["b"].sin() * dd["b"]}

    d = {"a": X, "b": X.flip(0)}
    ga = functx.grad(lambda d, y: (f(d, y)["s"] + f(d, y)["c"]).sum(), argnums=(0, 1))(d, X.exp())
    torch.testing.assert_close(ga[0]["a"], X.exp())
    torch.testing.assert_close(ga[0]["b"], -X.flip(0).sin())
    torch.testing.assert_close(ga[1], X)
    # in_axes=None for one argument: its tangent stays unbatched inside the batched rule
    jac = functx.vmap(functx.jacrev(lambda y, d: f(d, y)["s"]), in_axes=(0, None))(XS, d)
    torch.testing.assert_close(jac, torch.diag_embed(X.expand(3, 5)))

    @functx.custom_jvp
    def power(n, x):
        return x ** n
    power_nd = functx.custom_jvp(power.fun, nondiff_argnums=(0,))
    power_nd.defjvp(lambda n, p, t: (p[0] ** n, n * p[0] ** (n - 1) * t[0]))
    torch.testing.assert_close(functx.grad(lambda x: power_nd(3, x).sum())(X), 3 * X ** 2)
    torch.testing.assert_close(functx.hessian(lambda x: power_nd(3, x).sum())(X), torch.diag(6 * X))


def test_custom_jvp_errors():
    @functx.custom_jvp
    def f(x):
        return x * 2
    with pytest.raises(AttributeError, match="No JVP defined.*'f'"):
        f(X)
    f.defjvp(lambda p, t: (f(p[0]), t[0][:2]))
    with pytest.raises(ValueError, match="tangent from the jvp rule.*shape"):
        functx.jvp(f, (X,), (X,))
    f.defjvp(lambda p, t: f(p[0]))
    with pytest.raises(TypeError, match="pair"):
        functx.grad(lambda x: f(x).sum())(X)


def test_straight_through_estimators():
    x = torch.tensor([0.2, 1.7, -0.6], dtype=F64)
    w = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    loss = lambda x: (ste_round(x) * w).sum()
    torch.testing.assert_close(loss(x), torch.tensor(0.0 + 4.0 - 3.0, dtype=F64))
    torch.testing.assert_close(functx.grad(loss)(x), w)
    torch.testing.assert_close(functx.vmap(functx.grad(loss))(x.expand(2, 3)), w.expand(2, 3))
    torch.testing.assert_close(functx.grad(lambda x: (ste_sign(x) * w).sum())(x), w)
    torch.testing.assert_close(functx.jacfwd(lambda x: ste_sign(x) * w)(x), torch.diag(w))
    torch.testing.assert_close(functx.jit(functx.grad(loss))(x), w)


# ---------------------------------------------------------------- custom_vjp

def test_gradient_clipping():
    w = torch.tensor([0.5, -3.0, 2.0, 10.0, -0.1], dtype=F64)
    loss = lambda x: (clip_gradient(x, -1.0, 1.0) * w).sum()
    want = w.clamp(-1, 1)
    n = calls["bwd"]
    torch.testing.assert_close(functx.grad(loss)(X), want)
    assert calls["bwd"] == n + 1
    torch.testing.assert_close(clip_gradient(X, -1.0, 1.0), X)
    torch.testing.assert_close(functx.jacrev(lambda x: clip_gradient(x, -1.0, 1.0) * w)(X), torch.diag(want))
    torch.testing.assert_close(functx.jit(functx.grad(loss))(X), want)
    # grad of a custom_vjp function inside vmap, and vmap inside grad
    torch.testing.assert_close(functx.vmap(functx.grad(loss))(XS), want.expand(3, 5))
    torch.testing.assert_close(functx.jit(functx.vmap(functx.grad(loss)))(XS), want.expand(3, 5))
    torch.testing.assert_close(functx.grad(lambda xs: functx.vmap(loss)(xs).sum())(XS), want.expand(3, 5))
    # second order (forward over reverse): fwd and bwd are differentiated as ordinary code
    # d/dx clamp(3x^2, -1, 1) = 6x where 3x^2 <= 1, else 0
    torch.testing.assert_close(functx.jacfwd(functx.grad(lambda x: (clip_gradient(x, -1.0, 1.0) ** 3).sum()))(X),
                               torch.diag(torch.where(3 * X ** 2 <= 1, 6 * X, torch.zeros_like(X))))


def test_custom_vjp_two_args_and_unbatched_cotangent_sum():
    w = torch.randn(5, dtype=F64, generator=G)
    xs = torch.randn(4, 5, dtype=F64, generator=G)
    loss = lambda x, w: scaled_mul(x[None], w).sum()
    gx, gw = functx.grad(loss, argnums=(0, 1))(X, w)
    torch.testing.assert_close(gx, w)
    torch.testing.assert_close(gw, 2 * X)
    # vmap with w unbatched: per-example grads w.r.t. w from the batched bwd
    pgx, pgw = functx.vmap(functx.grad(loss, argnums=(0, 1)), in_axes=(0, None))(xs, w)
    torch.testing.assert_close(pgw, 2 * xs)
    # grad through vmap with w unbatched: bwd's per-example cotangents for w are summed
    gw_total = functx.grad(lambda w: functx.vmap(lambda x: scaled_mul(x[None], w).sum())(xs).sum())(w)
    torch.testing.assert_close(gw_total, 2 * xs.sum(0))
    # in_axes=1 for x: the cotangent comes back in x's layout
    gxT = functx.grad(lambda xT: functx.vmap(lambda x: scaled_mul(x[None], w).sum(), in_axes=1)(xT).sum())(xs.T)
    torch.testing.assert_close(gxT, w[:, None].expand(5, 4))


def test_custom_vjp_forward_mode_is_a_clear_error():
    for t in (lambda: functx.jvp(lambda x: clip_gradient(x, -1.0, 1.0), (X,), (X,)),
              lambda: functx.jacfwd(lambda x: clip_gradient(x, -1.0, 1.0))(X)):
        with pytest.raises(FunctxError, match="custom_vjp function 'clip_gradient'.*forward mode"):
            t()
    # forward over reverse (hessian = jacfwd(jacrev)) differentiates fwd and bwd themselves, as in JAX
    h = functx.hessian(lambda x: (clip_gradient(x, -1.0, 1.0) ** 2).sum())(X)
    torch.testing.assert_close(h, torch.diag(torch.where((2 * X).abs() <= 1, 2.0, 0.0).to(F64)))


def test_custom_vjp_errors():
    @functx.custom_vjp
    def f(x, y):
        return x * y
    with pytest.raises(AttributeError, match="No VJP defined"):
        f(X, X)
    f.defvjp(lambda x, y: (x * y, (x, y)), lambda res, g: (g * res[1],))
    with pytest.raises(TypeError, match="one cotangent per differentiable argument \\(2\\)"):
        functx.grad(lambda x: f(x, X).sum())(X)
    f.defvjp(lambda x, y: (x * y, (x, y)), lambda res, g: (g[:2], None))
    with pytest.raises(ValueError, match="cotangent for argument leaf 0 has shape"):
        functx.grad(lambda x: f(x, X).sum())(X)
    f.defvjp(lambda x, y: (x * y, (x, y)), lambda res, g: (g * res[1], g * res[0]))
    check_grads(lambda x, y: f(x, y), (X, X.cos()), order=1, modes=("rev",))
    # a wrong bwd is caught by check_grads
    f.defvjp(lambda x, y: (x * y, (x, y)), lambda res, g: (g * res[1], g))
    with pytest.raises(AssertionError, match="rev mode"):
        check_grads(lambda x, y: f(x, y), (X, X.cos()), order=1, modes=("rev",))


def test_jit_stages_the_body():
    g = functx.make_graph(lambda x: log1pexp(x) + clip_gradient(x, -1.0, 1.0))(X)
    names = [e.prim.name for e in g.eqns]
    assert "custom_jvp_call" not in names and "custom_vjp_call" not in names
    assert "exp" in names and "log1p" in names
    jf = functx.jit(lambda x: functx.grad(lambda x: (clip_gradient(x, -1.0, 1.0) * 5 + log1pexp(x)).sum())(x))
    torch.testing.assert_close(jf(X), torch.ones_like(X) + log1pexp_d1(X))


def test_closing_over_a_traced_value_is_a_clear_error():
    def loss(w):
        @functx.custom_jvp
        def f(x):
            return x * w                 # w is traced by grad/vmap but isn't an argument of f
        f.defjvp(lambda p, t: (f(p[0]), t[0] * w))

        @functx.custom_vjp
        def g(x):
            return x * w
        g.defvjp(lambda x: (x * w, None), lambda r, ct: (ct * w,))
        return f(X).sum() + g(X).sum()
    for run in (lambda: functx.grad(loss)(X), lambda: functx.jit(functx.grad(loss))(X)):
        with pytest.raises(FunctxError, match="closes over it.*pass it as an explicit argument"):
            run()
    # a value batched by vmap is fine to close over (test_custom_batch.py)
    torch.testing.assert_close(functx.vmap(loss)(XS), torch.stack([loss(w) for w in XS]))
    # closing over a constant is fine
    torch.testing.assert_close(loss(X), 2 * (X * X).sum())


def test_check_transforms_on_custom_functions():
    from functx.testing import check_transforms
    assert check_transforms(log1pexp, X).ok
    # custom_vjp has no forward mode: check_transforms reports jacfwd as raising, not a crash
    r = check_transforms(lambda x: clip_gradient(x, -10.0, 10.0) * 2, X, raise_on_error=False)
    rows = {row[0]: row for row in r.rows}
    assert rows["jacrev vs finite differences"][3] and rows["jit vs eager"][3]
    assert not rows["jacfwd"][3] and "forward mode" in rows["jacfwd"][4]


def test_custom_vjp_nondiff_argnums():
    import functools

    @functools.partial(functx.custom_vjp, nondiff_argnums=(0, 1))
    def clip(lo, hi, x):
        return x
    clip.defvjp(lambda lo, hi, x: (x, None), lambda lo, hi, res, g: (g.clamp(lo, hi),))
    loss = lambda x: (clip(-1.0, 1.0, x) * 5).sum()
    ones = torch.ones_like(X)
    torch.testing.assert_close(functx.grad(loss)(X), ones)
    torch.testing.assert_close(functx.vmap(functx.grad(loss))(XS), ones.expand(3, 5))
    torch.testing.assert_close(functx.jit(functx.grad(loss))(X), ones)
