"""custom_jvp / custom_vjp rules closing over values an enclosing functx.vmap batches
(transforms/custom_batch.py), under grad / jvp / vjp / jit in every order, against a Python
loop over the batch with the rules' own (deliberately non-true) derivatives."""
import pytest
import torch

import functx
from functx import grad, jit, jvp, lax, vmap
from functx.core import FunctxError

F64 = torch.float64
G = torch.Generator().manual_seed(0)
XS = torch.randn(3, 4, dtype=F64, generator=G)
SS = torch.randn(3, 4, dtype=F64, generator=G)
TS = torch.randn(3, 4, dtype=F64, generator=G)
X1 = torch.randn(4, dtype=F64, generator=G)
K = 3.0         # the rules' derivative is K times the true one: the rule must be the one used


def make_vjp(scale):
    @functx.custom_vjp
    def f(x):
        return torch.sin(x) * scale

    def fwd(x):
        return torch.sin(x) * scale, (x, scale)

    def bwd(res, g):
        x, s = res
        return (g * torch.cos(x) * scale * K,)      # scale closed over, s a residual
    f.defvjp(fwd, bwd)
    return f


def make_jvp(scale):
    @functx.custom_jvp
    def f(x):
        return torch.sin(x) * scale

    @f.defjvp
    def f_jvp(p, t):
        return torch.sin(p[0]) * scale, K * torch.cos(p[0]) * scale * t[0]
    return f


def d_rule(x, s):
    return K * torch.cos(x) * s


MAKERS = pytest.mark.parametrize("make", [make_vjp, make_jvp], ids=["custom_vjp", "custom_jvp"])


def per_example(x, s, make):
    return make(s)(x)


@MAKERS
def test_vmap_of_grad_matches_a_loop(make):
    loss = lambda x, s: per_example(x, s, make).sum()
    want = torch.stack([d_rule(x, s) for x, s in zip(XS, SS)])
    for f in (vmap(grad(loss)), jit(vmap(grad(loss))), vmap(jit(grad(loss)))):
        torch.testing.assert_close(f(XS, SS), want)
    want1 = torch.stack([d_rule(X1, s) for s in SS])        # the custom call's operand unbatched
    for f in (vmap(grad(loss), in_axes=(None, 0)), jit(vmap(grad(loss), in_axes=(None, 0)))):
        torch.testing.assert_close(f(X1, SS), want1)


@MAKERS
def test_grad_of_vmap_matches_a_loop(make):
    """The custom call reaches vmap's trace before grad's: its batch rule runs the rules under
    a fresh trace for the axis, which must see `scale` as batched (it failed: leaked tracer)."""
    loss = lambda xs, ss: vmap(lambda x, s: per_example(x, s, make))(xs, ss).sum()
    want = torch.stack([d_rule(x, s) for x, s in zip(XS, SS)])
    for f in (grad(loss), jit(grad(loss)), grad(jit(loss))):
        torch.testing.assert_close(f(XS, SS), want)
    # no operand of the custom call is batched, only the value its rules close over
    loss1 = lambda x, ss: vmap(lambda s: per_example(x, s, make))(ss).sum()
    want1 = sum(d_rule(X1, s) for s in SS)
    for f in (grad(loss1), jit(grad(loss1))):
        torch.testing.assert_close(f(X1, SS), want1)
    jac = functx.jacrev(lambda xs: vmap(lambda x, s: per_example(x, s, make))(xs, SS))(XS)
    want_jac = torch.stack([torch.stack([torch.diag(d_rule(XS[i], SS[i])) if i == j else torch.zeros(4, 4, dtype=F64)
                                         for j in range(3)], 1) for i in range(3)])
    torch.testing.assert_close(jac, want_jac)


@MAKERS
def test_vmap_without_derivatives_and_nested_vmaps(make):
    f = lambda s: per_example(X1, s, make)
    want = torch.stack([torch.sin(X1) * s for s in SS])
    for g in (vmap(f), jit(vmap(f)), vmap(jit(f))):
        torch.testing.assert_close(g(SS), want)
    loss = lambda x, s: per_example(x, s, make).sum()
    SS2 = torch.randn(2, 3, 4, dtype=F64, generator=G)
    want2 = torch.stack([torch.stack([d_rule(x, s) for x, s in zip(XS, s2)]) for s2 in SS2])
    torch.testing.assert_close(vmap(vmap(grad(loss)), in_axes=(None, 0))(XS, SS2), want2)
    got = grad(lambda xs: vmap(vmap(lambda x, s: per_example(x, s, make)), in_axes=(None, 0))(xs, SS2).sum())(XS)
    torch.testing.assert_close(got, sum(torch.stack([d_rule(x, s) for x, s in zip(XS, s2)]) for s2 in SS2))


def test_jvp_through_vmap_matches_a_loop():
    want = torch.stack([d_rule(x, s) * t for x, s, t in zip(XS, SS, TS)])
    f = lambda xs: vmap(lambda x, s: per_example(x, s, make_jvp))(xs, SS)
    torch.testing.assert_close(jvp(f, (XS,), (TS,))[1], want)
    torch.testing.assert_close(jit(lambda xs, ts: jvp(f, (xs,), (ts,))[1])(XS, TS), want)
    g = lambda x, s, t: jvp(lambda x: per_example(x, s, make_jvp), (x,), (t,))[1]
    torch.testing.assert_close(vmap(g)(XS, SS, TS), want)
    torch.testing.assert_close(jit(vmap(g))(XS, SS, TS), want)
    want1 = torch.stack([d_rule(X1, s) * TS[0] for s in SS])
    torch.testing.assert_close(jvp(lambda x: vmap(lambda s: per_example(x, s, make_jvp))(SS), (X1,), (TS[0],))[1],
                               want1)


@MAKERS
def test_vmap_of_vjp_matches_a_loop(make):
    g = lambda x, s, c: functx.vjp(make(s), x)[1](c)[0]
    want = torch.stack([d_rule(x, s) * c for x, s, c in zip(XS, SS, TS)])
    torch.testing.assert_close(vmap(g)(XS, SS, TS), want)
    torch.testing.assert_close(jit(vmap(g))(XS, SS, TS), want)


def test_closure_inside_an_object_and_a_partial():
    import functools

    class Holder:
        def __init__(self, s):
            self.s = s

        def fwd(self, x):
            return torch.sin(x) * self.s, x

        def bwd(self, x, g):
            return (g * torch.cos(x) * self.s * K,)

    def per(x, s):
        h = Holder(s)
        f = functx.custom_vjp(functools.partial(lambda h, x: torch.sin(x) * h.s, h))
        f.defvjp(h.fwd, h.bwd)
        return f(x)
    want = torch.stack([d_rule(X1, s) for s in SS]).sum(0)
    torch.testing.assert_close(grad(lambda x: vmap(lambda s: per(x, s))(SS).sum())(X1), want)


def test_a_differentiated_closed_over_value_is_still_a_clear_error():
    """grad with respect to the closed-over value: the rule can't give it a cotangent."""
    loss = lambda xs, ss: vmap(lambda x, s: per_example(x, s, make_vjp))(xs, ss).sum()
    with pytest.raises(FunctxError, match="closes over it"):
        grad(loss, argnums=1)(XS, SS)


LOOPS = {
    "scan": lambda f, x: lax.scan(lambda c, _: (f(c), None), x, None, length=2)[0],
    "fori_loop": lambda f, x: lax.fori_loop(0, 2, lambda i, c: f(c), x),
    "scan(remat=True)": lambda f, x: lax.scan(lambda c, _: (f(c), None), x, None, length=2, remat=True)[0],
    "checkpoint": lambda f, x: functx.checkpoint(lambda v: f(v))(x),
    "cond": lambda f, x: lax.cond(x.sum() > -100, lambda v: f(v), lambda v: v, x),
}


@MAKERS
@pytest.mark.parametrize("loop", list(LOOPS))
def test_a_loop_whose_body_calls_a_closing_custom_function_is_batched(make, loop):
    """grad(vmap) where only the closed-over `scale` is batched: the loop (no batched operand)
    went to the trace below with the custom call in its body closing over the batched value
    (leaked tracer). A structural equation whose sub-graphs hold such a call is batched now."""
    body = lambda x, s: LOOPS[loop](make(s), x)  # noqa: E731
    want = sum(grad(lambda x: body(x, s).sum())(X1) for s in SS)
    for f in (grad(lambda x: vmap(lambda s: body(x, s))(SS).sum()),
              jit(grad(lambda x: vmap(lambda s: body(x, s))(SS).sum()))):
        torch.testing.assert_close(f(X1), want)
    torch.testing.assert_close(vmap(lambda s: body(X1, s))(SS), torch.stack([body(X1, s) for s in SS]))
