"""Cases ported from PyTorch's own torch.func suites (test/functorch/test_eager_transforms.py,
test_vmap.py, test_ops.py) and run on functx.func, each checked against an oracle: torch.func's
own result where it is right, float64 finite differences where it is not, a Python loop for
vmap. Errors must be of the type torch.func raises (pytest.raises(RuntimeError) in the ported
tests). Where functx deliberately differs, the case says so."""
import pytest
import torch
import torch.func as tf

import functx
import functx.func as ff
from torch.utils._pytree import tree_flatten, tree_structure

D = torch.float64


def _r(*shape, seed=0):
    return torch.randn(*shape, dtype=D, generator=torch.Generator().manual_seed(seed + sum(shape)))


def same(a, b, atol=1e-6):
    la, lb = tree_flatten(a)[0], tree_flatten(b)[0]
    assert tree_structure(a) == tree_structure(b), (a, b)
    for p, q in zip(la, lb):
        if isinstance(p, torch.Tensor):
            assert p.shape == q.shape and p.dtype == q.dtype, (p.shape, q.shape, p.dtype, q.dtype)
            torch.testing.assert_close(p, q, atol=atol, rtol=1e-6)
        else:
            assert p == q


def fd_jac(f, x, eps=1e-6):
    """Central differences of f (tensor -> tensor) at float64 x: shape f(x).shape + x.shape."""
    cols = []
    for i in range(x.numel()):
        e = torch.zeros_like(x).reshape(-1)
        e[i] = eps
        e = e.reshape(x.shape)
        cols.append((f(x + e) - f(x - e)) / (2 * eps))
    return torch.stack(cols, -1).reshape(*f(x).shape, *x.shape)


X, Y = _r(3), _r(3, seed=1)


# ---------------------------------------------------------------- argnums

VALID_ARGNUMS = [0, 1, (0,), (0, 1), (1, 0), -2, -1, (-2,), (-2, -1), (0, -1)]


@pytest.mark.parametrize("argnums", VALID_ARGNUMS, ids=str)
@pytest.mark.parametrize("name", ["grad", "grad_and_value", "jacrev", "jacfwd", "hessian"])
def test_argnums_valid(name, argnums):
    f = (lambda a, b: (a * b.sin()).sum()) if name in ("grad", "grad_and_value", "hessian") \
        else (lambda a, b: a * b.sin())
    got = getattr(ff, name)(f, argnums=argnums)(X, Y)
    negative = any(a < 0 for a in (argnums if isinstance(argnums, tuple) else (argnums,)))
    if name in ("jacfwd", "hessian") and negative:
        # torch.func's jacfwd (so its hessian) gives zeros or another argument's Jacobian for a
        # negative argnum: the oracle is jacrev, itself checked by float64 differences
        want = tf.jacrev(f, argnums=argnums)(X, Y) if name == "jacfwd" else \
            tf.jacrev(tf.jacrev(f, argnums=argnums), argnums=argnums)(X, Y)
        if name == "jacfwd" and argnums == -1:
            same(want, fd_jac(lambda b: f(X, b), Y))
    else:
        want = getattr(tf, name)(f, argnums=argnums)(X, Y)
    same(got, want)


def test_argnums_pytree_inputs():
    def f(a, b):
        x, y = a
        return 1 * x + 2 * y + 3 * b["foo"]
    x = torch.randn([])
    args = ((x, x), {"foo": x})
    for argnums in (0, (0,), (0, 1), -1):
        same(ff.grad(f, argnums=argnums)(*args), tf.grad(f, argnums=argnums)(*args))


BAD_ARGNUMS = [-3, 2, (0, 2), (), 1.0, "0", ("0",), (0, 0), (0, -2), (0, 1.0), None, ((0, 1), 2)]


@pytest.mark.parametrize("argnums", BAD_ARGNUMS, ids=repr)
@pytest.mark.parametrize("name", ["grad", "grad_and_value", "jacrev", "jacfwd", "hessian"])
def test_argnums_invalid_raise_like_torch_func(name, argnums):
    f = torch.mul if name in ("jacrev", "jacfwd") else (lambda a, b: (a * b).sum())
    with pytest.raises(RuntimeError, match="argnums"):
        getattr(ff, name)(f, argnums=argnums)(X, Y)
    # functx's own (JAX-style) API: the same error is a ValueError or TypeError too
    top = getattr(functx, name) if name != "grad_and_value" else functx.value_and_grad
    with pytest.raises((ValueError, TypeError), match="argnums"):
        top(f, argnums=argnums)(X, Y)


def test_argnums_list_and_bool():
    # Deliberate differences: a list is accepted as a tuple (as JAX does; torch.func raises),
    # and a bool is refused (torch.func reads True as 1: grad(f, True) meant has_aux=True)
    f = lambda a, b: (a * b).sum()  # noqa: E731
    same(ff.grad(f, argnums=[0, 1])(X, Y), tf.grad(f, argnums=(0, 1))(X, Y))
    with pytest.raises(RuntimeError, match="has_aux"):
        ff.grad(f, True)(X, Y)


# ---------------------------------------------------------------- chunk_size

@pytest.mark.parametrize("chunk_size", [0, -1, 1.5, True, "2"], ids=repr)
@pytest.mark.parametrize("name", ["vmap", "jacrev", "jacfwd"])
def test_chunk_size_invalid(name, chunk_size):
    with pytest.raises(ValueError, match="chunk_size"):
        if name == "vmap":
            ff.vmap(torch.sin, chunk_size=chunk_size)(_r(4, 3))
        elif name == "jacrev":
            ff.jacrev(torch.sin, chunk_size=chunk_size)(X)
        else:
            functx.jacfwd(torch.sin, chunk_size=chunk_size)(X)


@pytest.mark.parametrize("chunk_size", [None, 1, 2, 3, 5, 100])
def test_chunk_size_valid(chunk_size):
    xs, W = _r(5, 3), _r(3, 4)
    f = lambda x, w: (x @ w).tanh()  # noqa: E731
    same(ff.vmap(f, in_dims=(0, None), chunk_size=chunk_size)(xs, W), torch.stack([f(x, W) for x in xs]))
    same(ff.jacrev(f, argnums=(0, 1), chunk_size=chunk_size)(X, W), tf.jacrev(f, argnums=(0, 1))(X, W))
    same(functx.jacfwd(f, argnums=(0, 1), chunk_size=chunk_size)(X, W), tf.jacfwd(f, argnums=(0, 1))(X, W))
    # out_dims, a tuple output and an unbatched (out_dims None) one, chunked
    g = lambda x, w: (x.sum(), w * 2)  # noqa: E731
    same(ff.vmap(g, in_dims=(0, None), out_dims=(0, None), chunk_size=chunk_size)(xs, W),
         (xs.sum(1), W * 2))
