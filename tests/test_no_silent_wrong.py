"""Ordinary code that used to return a wrong number with no error (issue 9's classes), each
checked against eager PyTorch / torch.func / the mathematically right value."""
import math

import pytest
import torch

import functx

X = torch.tensor([1.0, 2.0])


# ---------------------------------------------------------------- pytrees in the lax functions

def test_stop_gradient_of_a_pytree_stops_every_leaf():
    def f(x):
        a, b = functx.stop_gradient((x, 2 * x))
        return a.sum() + b.sum() + x.sum()
    torch.testing.assert_close(functx.grad(f)(X), torch.ones(2))
    d = functx.stop_gradient({"w": X})
    assert isinstance(d, dict) and torch.equal(d["w"], X)


def test_collectives_take_pytrees():
    v = torch.arange(4.0)
    mx, mn = functx.vmap(lambda v: functx.pmax((v, -v), "i"), axis_name="i")(v)
    torch.testing.assert_close(mx, torch.full((4,), 3.0))
    torch.testing.assert_close(mn, torch.zeros(4))
    s, t = functx.vmap(lambda v: functx.psum([v, 2 * v], "i"), axis_name="i")(v)
    torch.testing.assert_close(s, torch.full((4,), 6.0))
    torch.testing.assert_close(t, torch.full((4,), 12.0))
    m = functx.vmap(lambda v: functx.pmean({"a": v}, "i")["a"], axis_name="i")(v)
    torch.testing.assert_close(m, torch.full((4,), 1.5))
    g = functx.vmap(lambda v: functx.all_gather((v,), "i")[0], axis_name="i")(v)
    torch.testing.assert_close(g, v.expand(4, 4))
    # JAX's idiom for the axis size
    n = functx.vmap(lambda v: functx.psum(1, "i"), axis_name="i")(v)
    assert n.tolist() == [4, 4, 4, 4]


def test_lax_functions_reject_non_tensor_leaves_by_name():
    with pytest.raises(TypeError, match="functx.stop_gradient: expected a tensor"):
        functx.stop_gradient(("a", X))


# ---------------------------------------------------------------- jit cache keys

def test_jit_cache_tells_equal_python_numbers_of_other_types_apart():
    f = functx.jit(lambda x, s: torch.full(x.shape, s))     # the dtype follows the number's type
    for s in (1, True, 1.0, 2, 2.0):
        want = torch.full(X.shape, s)
        got = f(X, s)
        assert got.dtype == want.dtype and torch.equal(got, want), s


def test_jit_cache_tells_signed_zeros_apart_and_caches_nan():
    g = functx.jit(lambda x, s: x / s)
    torch.testing.assert_close(g(X, 0.0), X / 0.0)
    torch.testing.assert_close(g(X, -0.0), X / -0.0)      # -inf, not the cached +inf
    h = functx.jit(lambda x, s: x + s)
    for _ in range(3):
        assert torch.isnan(h(X, math.nan)).all()
    assert h.cache_size() == 1


def test_static_argnums_keys_by_type_too():
    f = functx.jit(lambda x, s: torch.full(x.shape, s), static_argnums=1)
    for s in (1, True, 1.0):
        assert f(X, s).dtype == torch.full(X.shape, s).dtype, s


# ---------------------------------------------------------------- invalid programs

@pytest.mark.parametrize("transform", [functx.grad, functx.jacrev, functx.jacfwd])
def test_repeated_argnums_raise(transform):
    with pytest.raises(ValueError, match="more than once"):
        transform(lambda a, b: (a * b).sum(), argnums=(0, 0))(X, X)
