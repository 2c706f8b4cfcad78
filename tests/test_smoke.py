"""End-to-end checks that the core transforms agree with torch.func (float64)."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._pytree import tree_leaves

import functx


def assert_close(a, b, atol=1e-8, rtol=1e-6):
    la, lb = tree_leaves(a), tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol)


def f(x):
    return (torch.tanh(x) ** 2 * x.exp()).sum()


X = torch.randn(4, 5, dtype=torch.float64)


def test_grad_hessian_vmap():
    x = X[0]
    assert_close(functx.grad(f)(x), torch.func.grad(f)(x))
    assert_close(functx.hessian(f)(x), torch.func.hessian(f)(x))
    assert_close(functx.vmap(functx.grad(f))(X), torch.func.vmap(torch.func.grad(f))(X))
    assert_close(functx.jacfwd(functx.jacrev(f))(x), torch.func.hessian(f)(x))


def test_per_sample_grads_module_jit():
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xb, yb):
        return F.cross_entropy(functx.functional_call(model, p, (xb[None],)), yb[None])

    xb, yb = torch.randn(6, 8, dtype=torch.float64), torch.randint(0, 3, (6,))
    ref = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, xb, yb)
    assert_close(functx.vmap(functx.grad(loss), in_axes=(None, 0, 0))(params, xb, yb), ref)
    jitted = functx.jit(functx.vmap(functx.grad(loss), in_axes=(None, 0, 0)))
    assert_close(jitted(params, xb, yb), ref)
