"""In-place writes of f into its inputs reach the caller's tensors under every transform.

torch.func writes them back under jvp, jacfwd and vmap; under grad, vjp, jacrev and hessian
it raises (an in-place op on a leaf that requires grad). functx writes them back under every
transform (before: grad/vjp/jvp/jacrev/jacfwd/hessian left the caller's tensor unchanged).
The oracle for the derivatives is torch.func of f on a clone of the input, and for the
caller's tensor, eager f on it."""
import pytest
import torch

import functx

D = torch.float64


def f(x):
    x.add_(1)
    x.mul_(2)
    return (x * x).sum()


def fv(x):
    x.add_(1)
    x.mul_(2)
    return x * x


def _x():
    return torch.arange(3.0, dtype=D)


def _after_eager(fn, x):
    y = x.clone()
    fn(y)
    return y


def _on_clone(fn):
    return lambda x: fn(x.clone())


T = torch.ones(3, dtype=D)

CASES = {
    "grad": (lambda m, x: m.grad(f)(x), lambda x: torch.func.grad(_on_clone(f))(x)),
    "vjp": (lambda m, x: m.vjp(fv, x)[1](T)[0], lambda x: torch.func.vjp(_on_clone(fv), x)[1](T)[0]),
    "jvp": (lambda m, x: m.jvp(fv, (x,), (T,)), lambda x: torch.func.jvp(_on_clone(fv), (x,), (T,))),
    "linearize": (lambda m, x: m.linearize(fv, x)[1](T), lambda x: torch.func.jvp(_on_clone(fv), (x,), (T,))[1]),
    "jacrev": (lambda m, x: m.jacrev(fv)(x), lambda x: torch.func.jacrev(_on_clone(fv))(x)),
    "jacfwd": (lambda m, x: m.jacfwd(fv)(x), lambda x: torch.func.jacfwd(_on_clone(fv))(x)),
    "jacfwd chunk_size=1": (lambda m, x: m.jacfwd(fv, chunk_size=1)(x),
                            lambda x: torch.func.jacfwd(_on_clone(fv))(x)),
    "jacfwd chunk_size=2": (lambda m, x: m.jacfwd(fv, chunk_size=2)(x),
                            lambda x: torch.func.jacfwd(_on_clone(fv))(x)),
    "hessian": (lambda m, x: m.hessian(f)(x), lambda x: torch.func.hessian(_on_clone(f))(x)),
}


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_writes_into_inputs_reach_the_callers_tensor(name, jit):
    run, oracle = CASES[name]
    x = _x()
    want = oracle(_x())
    got = functx.jit(lambda x: run(functx, x))(x) if jit else run(functx, x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(x, _after_eager(fv, _x()))        # written once, as eager f does


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_vmap_of_jvp_writes_into_the_batched_callers_tensor(jit):
    inner = lambda b: functx.vmap(lambda r: functx.jvp(fv, (r,), (T,))[1])(b)   # noqa: E731
    xb = torch.stack([_x(), _x() + 1])
    got = functx.jit(inner)(xb) if jit else inner(xb)
    # torch.func's vmap refuses this jvp's in-place ops (the tangent is unbatched): a loop
    want = torch.stack([torch.func.jvp(_on_clone(fv), (r,), (T,))[1] for r in (_x(), _x() + 1)])
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(xb, torch.stack([_after_eager(fv, _x()), _after_eager(fv, _x() + 1)]))


def test_torch_func_writes_back_under_jvp_and_jacfwd():
    """The behaviour matched (torch.func, where it does not raise)."""
    for run in (lambda m, x: m.jvp(fv, (x,), (T,)), lambda m, x: m.jacfwd(fv)(x)):
        a, b = _x(), _x()
        torch.testing.assert_close(run(functx, a), run(torch.func, b))
        torch.testing.assert_close(a, b)


def _reads_old_then_new(x):
    y = (x * x).sum()           # the linear graph keeps x itself as a residual
    x.add_(1)
    return y + (x * x * x).sum()


def _out_of_place(x):           # the oracle (torch autograd refuses the in-place form)
    return (x * x).sum() + ((x + 1) ** 3).sum()


def test_residuals_that_are_the_callers_tensor_keep_their_old_values():
    """vjp_fn runs after the write-back: its residual (the caller's x) must not have changed."""
    x = _x()
    out, vjp_fn = functx.vjp(_reads_old_then_new, x)
    (g,) = vjp_fn(torch.tensor(1.0, dtype=D))
    want_out, want_fn = torch.func.vjp(_out_of_place, _x())
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(g, want_fn(torch.tensor(1.0, dtype=D))[0])
    torch.testing.assert_close(x, _x() + 1)
    x = _x()
    out, lin = functx.linearize(_reads_old_then_new, x)
    torch.testing.assert_close(lin(T), torch.func.jvp(_out_of_place, (_x(),), (T,))[1])


def test_gradient_that_is_the_callers_tensor_keeps_its_value():
    """grad of (x * c) wrt c is x itself; x written afterwards must not change it."""
    def g(c, x):
        out = (x * c).sum()
        x.mul_(3)
        return out
    x, c = _x(), torch.ones(3, dtype=D)
    gc = functx.grad(g, argnums=(0, 1))(c, x)
    torch.testing.assert_close(gc[0], _x())
    torch.testing.assert_close(x, 3 * _x())


def test_write_that_differs_between_jacobian_rows_raises():
    def noisy(x):
        x.add_(torch.rand(()))
        return x * 2
    with pytest.raises(functx.FunctxError, match="jacfwd"):
        functx.jacfwd(noisy, randomness="different")(_x())
