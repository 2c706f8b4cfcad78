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


# ---------------------------------------------------------------- custom functions made inside a body
# A custom function defined inside an eager loop / cond / checkpoint body, closing over a value w
# the body computes: w = 2 * z from a constant z (no grad: the rule is used with w held constant),
# or w = 2 * c from the carry (requires grad: custom_jvp differentiates its rule's primal output
# with respect to w, custom_vjp's backward raises: its bwd has no cotangent for w).

def make_closing(kind, w, k=K):
    if kind == "custom_vjp":
        @functx.custom_vjp
        def f(x):
            return torch.sin(x) * w
        f.defvjp(lambda x: (torch.sin(x) * w, (torch.cos(x),)), lambda res, g: (g * res[0] * w * k,))
        return f

    @functx.custom_jvp
    def f(x):
        return torch.sin(x) * w

    @f.defjvp
    def rule(primals, tangents):
        return torch.sin(primals[0]) * w, torch.cos(primals[0]) * w * tangents[0] * k
    return f


def closing_programs(kind, dep, k=K):
    """Two steps c -> f(c) with f closing over w = 2 * c (dep) or w = 2 * z, z a value the body
    computes or gets that does not require grad (a scanned slice, from the loop index, an
    operand): z at the second step is z + 0.5."""
    z = torch.linspace(0.5, 1.5, 4, dtype=F64)

    def step(c, zz):
        w = 2 * (c if dep else zz)
        return make_closing(kind, w, k)(c)
    return {
        "scan": lambda x: lax.scan(lambda c, zz: (step(c, zz), None), x, torch.stack([z, z + 0.5]))[0],
        "fori_loop": lambda x: lax.fori_loop(0, 2, lambda i, c: step(c, z + 0.5 * i), x),
        "while_loop": lambda x: lax.while_loop(lambda s: s[1] < 2, lambda s: (step(s[0], z + 0.5 * s[1]), s[1] + 1),
                                               (x, torch.tensor(0)), max_steps=3)[0],
        "cond": lambda x: lax.cond(x.sum() > -100, lambda v, zz: step(step(v, zz), zz + 0.5),
                                   lambda v, zz: v, x, z),
        "checkpoint": lambda x: functx.checkpoint(lambda v, zz: step(step(v, zz), zz + 0.5))(x, z),
    }, z


class _Oracle(torch.autograd.Function):
    """The same rule as a torch.autograd.Function of (x, w): the rule's derivative for x, the
    true one (of sin(x) * w) for w."""
    @staticmethod
    def forward(ctx, x, w, k):
        ctx.save_for_backward(x, w)
        ctx.k = k
        return torch.sin(x) * w

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g * torch.cos(x) * w * ctx.k, g * torch.sin(x), None


def oracle(x, z, dep, k=K):
    c = x
    for zz in (z, z + 0.5):
        c = _Oracle.apply(c, 2 * (c if dep else zz), k)
    return c


CLOSING = pytest.mark.parametrize("name", list(closing_programs("custom_vjp", False)[0]))
KINDS = pytest.mark.parametrize("kind", ["custom_vjp", "custom_jvp"])


@KINDS
@CLOSING
@pytest.mark.parametrize("dep", [False, True], ids=["constant", "requires_grad"])
def test_closing_over_body_values_forward(kind, name, dep):
    progs, z = closing_programs(kind, dep)
    x = torch.linspace(-1.0, 1.2, 4, dtype=F64)
    want = oracle(x, z, dep)
    torch.testing.assert_close(progs[name](x.clone().requires_grad_()), want)
    torch.testing.assert_close(progs[name](x), want)
    with torch.no_grad():
        torch.testing.assert_close(progs[name](x.clone().requires_grad_()), want)


@KINDS
@CLOSING
def test_closing_over_constant_body_values_uses_the_rule(kind, name):
    progs, z = closing_programs(kind, False)
    x = torch.linspace(-1.0, 1.2, 4, dtype=F64).requires_grad_()
    (g,) = torch.autograd.grad(progs[name](x).sum(), x)
    x0 = x.detach().clone().requires_grad_()
    (want,) = torch.autograd.grad(oracle(x0, z, False).sum(), x0)
    torch.testing.assert_close(g, want)


@CLOSING
def test_custom_jvp_closing_over_values_that_require_grad(name):
    progs, z = closing_programs("custom_jvp", True)
    x = torch.linspace(-1.0, 1.2, 4, dtype=F64).requires_grad_()
    x.grad = None
    progs[name](x).sum().backward()
    x0 = x.detach().clone().requires_grad_()
    oracle(x0, z, True).sum().backward()
    torch.testing.assert_close(x.grad, x0.grad)
    # with the true rule (k = 1): float64 finite differences of the function itself
    progs1, _ = closing_programs("custom_jvp", True, k=1.0)
    (g,) = torch.autograd.grad(progs1[name](x).sum(), x)
    eps, fd = 1e-6, torch.zeros(4, dtype=F64)
    for i in range(4):
        e = torch.zeros(4, dtype=F64)
        e[i] = eps
        fd[i] = (progs1[name](x.detach() + e).sum() - progs1[name](x.detach() - e).sum()) / (2 * eps)
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-8)


@CLOSING
def test_custom_vjp_closing_over_values_that_require_grad_raises_at_backward(name):
    progs, z = closing_programs("custom_vjp", True)
    x = torch.linspace(-1.0, 1.2, 4, dtype=F64).requires_grad_()
    out = progs[name](x)                    # the forward runs
    torch.testing.assert_close(out, oracle(x.detach(), z, True))
    with pytest.raises(functx.FunctxError, match="'f' closes over a tensor that requires grad"):
        out.sum().backward()


@KINDS
@CLOSING
def test_closing_over_body_values_under_functx_transforms_unchanged(kind, name):
    # functx.grad refuses a rule closing over a value traced in the loop body (as before; JAX
    # refuses closed-over tracers under differentiation too) and uses it where the body runs as
    # Python (while_loop and cond with concrete predicates); vmap and jit of the forward work,
    # and jit's outputs carry the rule for torch's autograd
    x = torch.linspace(-1.0, 1.2, 4, dtype=F64)
    progs, z = closing_programs(kind, False)
    x0 = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(oracle(x0, z, False).sum(), x0)
    if name in ("while_loop", "cond"):
        torch.testing.assert_close(functx.grad(lambda v: progs[name](v).sum())(x), want)
    else:
        with pytest.raises(functx.FunctxError, match="closes over"):
            functx.grad(lambda v: progs[name](v).sum())(x)
    xr = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(functx.jit(progs[name])(xr).sum(), xr)
    torch.testing.assert_close(g, want)
    for dep in (False, True):
        progs, z = closing_programs(kind, dep)
        xs = torch.stack([x, x + 0.1])
        torch.testing.assert_close(functx.vmap(progs[name])(xs), torch.stack([oracle(v, z, dep) for v in xs]))
        torch.testing.assert_close(functx.jit(progs[name])(x), oracle(x, z, dep))
    with pytest.raises(functx.FunctxError, match="closes over"):
        functx.grad(lambda v: progs[name](v).sum())(x)


@KINDS
def test_eager_call_closing_over_a_parameter(kind):
    # no loop: a parameter p (requires grad) closed over; x's gradient by the rule, p's through
    # f for custom_jvp (torch's answer for a Function of (x, w) with the true w-derivative),
    # an error naming the function for custom_vjp
    p = torch.linspace(0.5, 1.5, 4, dtype=F64).requires_grad_()
    x = torch.linspace(-1.0, 1.2, 4, dtype=F64).requires_grad_()
    f = make_closing(kind, p * 2)
    out = f(x)
    torch.testing.assert_close(out, torch.sin(x.detach()) * 2 * p.detach())
    if kind == "custom_vjp":
        with pytest.raises(functx.FunctxError, match="'f' closes over a tensor that requires grad"):
            out.sum().backward()
        return
    out.sum().backward()
    x0, p0 = x.detach().clone().requires_grad_(), p.detach().clone().requires_grad_()
    _Oracle.apply(x0, p0 * 2, K).sum().backward()
    torch.testing.assert_close(x.grad, x0.grad)
    torch.testing.assert_close(p.grad, p0.grad)
    # only p requires grad: the same for p
    p.grad = None
    make_closing(kind, p * 2)(x.detach()).sum().backward()
    torch.testing.assert_close(p.grad, p0.grad)


def test_custom_vjp_in_a_body_with_a_data_dependent_bwd():
    # bwd can't be traced (Python control flow on values): it runs as written in the backward
    # pass, reading the closed-over value from its residuals
    def body(c, zz):
        w = 2 * zz

        @functx.custom_vjp
        def f(x):
            return torch.sin(x) * w
        f.defvjp(lambda x: (torch.sin(x) * w, (torch.cos(x), w)),
                 lambda res, g: (g * res[0] * res[1] * K if float(g.abs().sum()) >= 0 else None,))
        return f(c), None
    z = torch.linspace(0.5, 1.5, 4, dtype=F64)
    x = torch.linspace(-1.0, 1.2, 4, dtype=F64).requires_grad_()
    out = lax.scan(body, x, torch.stack([z, z + 0.5]))[0]
    torch.testing.assert_close(out, oracle(x.detach(), z, False))
    (g,) = torch.autograd.grad(out.sum(), x)
    x0 = x.detach().clone().requires_grad_()
    (want,) = torch.autograd.grad(oracle(x0, z, False).sum(), x0)
    torch.testing.assert_close(g, want)


@KINDS
def test_closing_over_an_outer_loop_body_value_in_a_nested_loop(kind):
    z = torch.linspace(0.5, 1.5, 4, dtype=F64)

    def outer(c, zz):
        w = 2 * zz
        return lax.scan(lambda c2, _: (make_closing(kind, w)(c2), None), c, None, length=1)[0], None
    x = torch.linspace(-1.0, 1.2, 4, dtype=F64).requires_grad_()
    out = lax.scan(outer, x, torch.stack([z, z + 0.5]))[0]
    torch.testing.assert_close(out, oracle(x.detach(), z, False))
    (g,) = torch.autograd.grad(out.sum(), x)
    x0 = x.detach().clone().requires_grad_()
    (want,) = torch.autograd.grad(oracle(x0, z, False).sum(), x0)
    torch.testing.assert_close(g, want)


def test_custom_vjp_in_a_body_whose_bwd_alone_closes_over_body_values():
    # JAX's clip_gradient with bounds the body computes: only bwd reads them
    def body(c, zz):
        lo, hi = -zz, zz

        @functx.custom_vjp
        def clip_gradient(x):
            return x
        clip_gradient.defvjp(lambda x: (x, None), lambda _, g: (g.clamp(lo, hi),))
        return torch.sin(clip_gradient(c)) * 3, None
    z = torch.tensor([0.1, 0.5, 1.0, 4.0], dtype=F64)
    x = torch.linspace(-1.0, 1.2, 4, dtype=F64).requires_grad_()
    (g,) = torch.autograd.grad(lax.scan(body, x, torch.stack([z, 2 * z]))[0].sum(), x)

    class Clip(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, lo, hi):
            ctx.lo, ctx.hi = lo, hi
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return g.clamp(ctx.lo, ctx.hi), None, None
    c = x.detach().clone().requires_grad_()
    out = c
    for zz in (z, 2 * z):
        out = torch.sin(Clip.apply(out, -zz, zz)) * 3
    (want,) = torch.autograd.grad(out.sum(), c)
    torch.testing.assert_close(g, want)


def test_custom_jvp_rule_with_data_dependent_python_closing_over_a_body_value():
    # a rule that can't be traced can't have the body's value passed in: the forward runs,
    # the backward raises the closure error (not a wrong gradient)
    def body(c, zz):
        w = 2 * zz

        @functx.custom_jvp
        def f(x):
            return torch.sin(x) * w

        @f.defjvp
        def rule(primals, tangents):
            (x,), (t,) = primals, tangents
            scale = K if float(x.abs().sum()) >= 0 else 1.0
            return torch.sin(x) * w, torch.cos(x) * w * t * scale
        return f(c), None
    z = torch.linspace(0.5, 1.5, 4, dtype=F64)
    x = torch.linspace(-1.0, 1.2, 4, dtype=F64).requires_grad_()
    out = lax.scan(body, x, torch.stack([z, z + 0.5]))[0]
    torch.testing.assert_close(out, oracle(x.detach(), z, False))
    with pytest.raises(functx.FunctxError, match="closes over"):
        out.sum().backward()
