"""torch.autograd.forward_ad._set_fwd_grad_enabled(False) inside f: the values computed under
it are constants of the forward levels (jvp, jacfwd, linearize), as in torch.func; reverse
levels ignore it. Before, functx ignored the switch (tangents flowed through the block)."""
import pytest
import torch
import torch.nn.functional as F
from torch.autograd.forward_ad import _set_fwd_grad_enabled

import functx

D = torch.float64
W = torch.randn(2, 2, dtype=D, generator=torch.Generator().manual_seed(0))


def f(x):
    h = torch.tanh(x @ W)                   # a whole-function unit before the block
    with _set_fwd_grad_enabled(False):
        c = x ** 2 + h                      # reads h: its pending batch runs here
        d = torch.sin(F.linear(x, W))       # units inside the block
    return x * c + d + h


X = torch.tensor([1.0, 2.0], dtype=D)
T = torch.tensor([1.0, -0.5], dtype=D)

CASES = {
    "jvp": lambda m: m.jvp(f, (X,), (T,)),
    "jacfwd": lambda m: m.jacfwd(f)(X),
    "linearize": lambda m: m.linearize(f, X)[1](T),
    "vmap(jvp)": lambda m: m.vmap(lambda t: m.jvp(f, (X,), (t,))[1])(torch.eye(2, dtype=D)),
    "grad (reverse: ignores it)": lambda m: m.grad(lambda x: f(x).sum())(X),
    "jacrev": lambda m: m.jacrev(f)(X),
    "grad(jvp)": lambda m: m.grad(lambda x: m.jvp(f, (x,), (T,))[1].sum())(X),
}


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_ad_switch_matches_torch_func(name, jit):
    run = CASES[name]
    want = run(torch.func)
    got = functx.jit(lambda: run(functx))() if jit else run(functx)
    torch.testing.assert_close(got, want)
    got = run(functx)           # again: cached units and rules
    torch.testing.assert_close(got, want)


def test_jvp_entered_with_forward_ad_off_turns_it_on_as_torch_func():
    with _set_fwd_grad_enabled(False):
        want = torch.func.jvp(torch.sin, (X,), (T,))
        got = functx.jvp(torch.sin, (X,), (T,))
        got_jit = functx.jit(lambda x, t: functx.jvp(torch.sin, (x,), (t,)))(X, T)
        assert not torch._C._is_fwd_grad_enabled()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_jit, want)


def test_switch_under_a_reverse_level_inside_a_forward_one_raises():
    """torch.func's answer there depends on where its backward recomputes what it saved."""
    with pytest.raises(functx.FunctxError, match="_set_fwd_grad_enabled"):
        functx.hessian(lambda x: f(x).sum())(X)
    assert torch._C._is_fwd_grad_enabled()
