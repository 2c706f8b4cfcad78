"""functx.checkpoint / remat / checkpoint_name: results equal the un-checkpointed function
(torch.func of the plain code as the oracle) under grad, jvp, vmap, hessian and jit, and the
linearized graph holds only the residuals the policy allows (counted)."""
import pytest
import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint

import functx
from functx.frontend import unwrap, wrap
from functx.transforms.ad import linearize_flat

F64 = torch.float64
G = torch.Generator().manual_seed(0)
W1 = torch.randn(4, 4, dtype=F64, generator=G)
W2 = torch.randn(4, 4, dtype=F64, generator=G)
X = torch.randn(3, 4, dtype=F64, generator=G)
P = functx.checkpoint_policies
POLICIES = [None, P.nothing_saveable, P.dots_saveable, P.save_only_these_names("h"), P.everything_saveable]


def block(x):
    h = functx.checkpoint_name(torch.tanh(x @ W1), "h")
    return torch.sin(h @ W2 + x).sum()


def plain(x):
    return torch.sin(torch.tanh(x @ W1) @ W2 + x).sum()


def residuals(f, x):
    """The constants (residuals) of f's linearized graph at x."""
    _, graph, _ = linearize_flat(lambda a: [unwrap(f(wrap(a[0])))], [x])
    return graph.consts


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
def test_checkpoint_equals_the_plain_function_under_every_transform(policy):
    f = functx.checkpoint(block, policy=policy)
    close(f(X), plain(X))
    close(functx.grad(f)(X), torch.func.grad(plain)(X))
    close(functx.jit(functx.grad(f))(X), torch.func.grad(plain)(X))
    t = torch.randn(3, 4, dtype=F64, generator=G)
    close(functx.jvp(f, (X,), (t,))[1], torch.func.jvp(plain, (X,), (t,))[1])
    xs = torch.randn(2, 3, 4, dtype=F64, generator=G)
    close(functx.vmap(functx.grad(f))(xs), torch.func.vmap(torch.func.grad(plain))(xs))
    close(functx.hessian(f)(X), torch.func.hessian(plain)(X))


def test_residuals_follow_the_policy():
    inputs = {id(W1), id(W2), id(X)}
    # save nothing: the only residuals are the inputs (and the weights it closes over)
    assert {id(c) for c in residuals(functx.checkpoint(block), X)} <= inputs
    assert len(residuals(functx.remat(block), X)) < len(residuals(block, X))
    # named values: the inputs and h, and nothing else
    named = [c for c in residuals(functx.checkpoint(block, P.save_only_these_names("h")), X) if id(c) not in inputs]
    assert len(named) == 1
    close(named[0], torch.tanh(X @ W1))
    # dots: the two matmul outputs
    dots = [c for c in residuals(functx.checkpoint(block, P.dots_saveable), X) if id(c) not in inputs]
    assert sorted(tuple(c.shape) for c in dots) == [(3, 4), (3, 4)]
    assert any(torch.equal(c, X @ W1) for c in dots)


def test_torch_utils_checkpoint_inside_a_transform():
    for reentrant in (True, False):
        f = lambda x: torch_checkpoint(plain, x, use_reentrant=reentrant)
        close(functx.grad(f)(X), torch.func.grad(plain)(X))
        close(functx.jit(functx.grad(f))(X), torch.func.grad(plain)(X))
    g = functx.make_graph(functx.grad(lambda x: torch_checkpoint(plain, x, use_reentrant=True)))(X)
    assert "checkpoint" in [e.prim.name for e in g.eqns]


def test_checkpoint_errors():
    with pytest.raises(TypeError, match="policy must be one of functx.checkpoint_policies"):
        functx.checkpoint(block, policy="dots")
    with pytest.raises(TypeError, match="checkpoint_name: name must be a string"):
        functx.checkpoint_name(X, 3)
