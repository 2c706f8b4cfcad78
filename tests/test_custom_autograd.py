"""custom_vjp / custom_jvp functions differentiated by PyTorch's own autograd
(transforms/custom_autograd.py): called eagerly on tensors that require grad, through
functx.jit (which runs f as plain torch for such calls when it compiled a custom call's
body), and inside eager lax.scan / fori_loop / while_loop / cond / checkpoint bodies. The
rules' derivatives are K times the true ones, so torch.autograd must use them: it silently
differentiated the functions' bodies before."""
import pytest
import torch

import functx
from functx import lax

F64 = torch.float64
K = 3.0


@functx.custom_vjp
def sin_vjp(x):
    return torch.sin(x)


sin_vjp.defvjp(lambda x: (torch.sin(x), (torch.cos(x),)), lambda res, g: (g * res[0] * K,))


@functx.custom_jvp
def sin_jvp(x):
    return torch.sin(x)


@sin_jvp.defjvp
def _sin_jvp_rule(primals, tangents):
    return torch.sin(primals[0]), torch.cos(primals[0]) * tangents[0] * K


@functx.custom_vjp
def sin_and_argmax(x):
    return torch.sin(x), torch.argmax(x)


sin_and_argmax.defvjp(lambda x: ((torch.sin(x), torch.argmax(x)), x), lambda x, g: (g[0] * torch.cos(x) * K,))

FUNS = pytest.mark.parametrize("fun", [sin_vjp, sin_jvp], ids=["custom_vjp", "custom_jvp"])


def programs(fun):
    return {
        "plain": lambda x: fun(x) * 2,
        "scan": lambda x: lax.scan(lambda c, _: (fun(c), None), x, None, length=1)[0] * 2,
        "fori_loop": lambda x: lax.fori_loop(0, 1, lambda i, c: fun(c), x) * 2,
        "while_loop": lambda x: lax.while_loop(lambda s: s[1] < 1, lambda s: (fun(s[0]), s[1] + 1),
                                               (x, torch.tensor(0)), max_steps=2)[0] * 2,
        "cond": lambda x: lax.cond(x.sum() > -100, fun, lambda v: v, x) * 2,
        "checkpoint": lambda x: functx.checkpoint(lambda v: fun(v))(x) * 2,
        "closure": lambda x: lax.scan(lambda c, w: (fun(c * w), None), x, torch.ones(1, 4, dtype=F64))[0] * 2,
    }


@FUNS
@pytest.mark.parametrize("name", list(programs(sin_vjp)))
@pytest.mark.parametrize("jit", [None, "eager", "default"])
def test_torch_autograd_uses_the_custom_rule(fun, name, jit):
    prog = programs(fun)[name]
    if jit == "eager":
        prog = functx.jit(prog, backend="eager")
    elif jit == "default":
        prog = functx.jit(prog)
    x = torch.randn(4, dtype=F64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    for _ in range(2):              # the second call: jit's cached entry
        x.grad = None
        out = prog(x)
        torch.testing.assert_close(out, 2 * torch.sin(x.detach()))
        out.sum().backward()
        torch.testing.assert_close(x.grad, 2 * K * torch.cos(x.detach()))


def test_without_autograd_the_compiled_graph_runs():
    f = functx.jit(lambda x: lax.scan(lambda c, _: (sin_vjp(c), None), x, None, length=1)[0])
    x = torch.randn(4, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(f(x.requires_grad_()), torch.sin(x.detach()))
    torch.testing.assert_close(f(x.detach()), torch.sin(x.detach()))


def test_non_float_outputs_and_a_parameter_held_constant_by_functx_grad():
    x = torch.randn(5, dtype=F64).requires_grad_()
    y, i = sin_and_argmax(x)
    assert not i.requires_grad and i == torch.argmax(x.detach())
    y.sum().backward()
    torch.testing.assert_close(x.grad, K * torch.cos(x.detach()))
    # functx.grad with respect to t only: w (a parameter) is a constant there, and torch's
    # autograd records the custom call on it with its rule
    w = torch.randn(3, dtype=F64).requires_grad_()
    t = torch.tensor(2.0, dtype=F64)
    g = functx.grad(lambda t: (sin_vjp(w) * t).sum())(t)
    torch.testing.assert_close(g, torch.sin(w.detach()).sum())
    g.backward()
    torch.testing.assert_close(w.grad, K * torch.cos(w.detach()))


def test_a_second_derivative_through_torch_autograd_raises():
    x = torch.randn(3, dtype=F64).requires_grad_()
    (g,) = torch.autograd.grad(sin_vjp(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad|twice"):
        g.sum().backward()
