"""custom_vjp functions inside rematerialized control flow (functx.checkpoint in and around
lax.scan / fori_loop / cond) under grad, eagerly, under functx.jit and under vmap, against
torch.autograd on the same program written with plain Python loops and a
torch.autograd.Function with the same (deliberately non-true) backward: the custom rule must
be the one used, and DCE of the bodies must keep what it needs (a forward-mode scan inside a
checkpoint, linearized at zero in the transpose, carries custom_lin's value: scan's DCE rule
drops that dead carry, control_flow/common.dce_graph)."""
import pytest
import torch

import functx
from functx import grad, jit, lax, vmap

F64 = torch.float64
G = torch.Generator().manual_seed(0)
K = 3.0
W = torch.randn(4, 4, dtype=F64, generator=G) * 0.5
C0 = torch.randn(2, 4, dtype=F64, generator=G)
XS = torch.randn(3, 2, 4, dtype=F64, generator=G)


@functx.custom_vjp
def f(x):
    return torch.sin(x)


f.defvjp(lambda x: (torch.sin(x), (torch.cos(x),)), lambda res, g: (g * res[0] * K,))


class TorchF(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return torch.sin(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.cos(x) * K


class PyLax:
    """lax's loops as Python, for the oracle."""
    @staticmethod
    def scan(body, c, xs, remat=False, checkpoints=None):
        ys = []
        for x in xs:
            c, y = body(c, x)
            ys.append(y)
        return c, (None if ys[0] is None else torch.stack(ys))

    @staticmethod
    def fori_loop(lo, hi, body, c):
        for i in range(lo, hi):
            c = body(i, c)
        return c

    @staticmethod
    def cond(p, a, b, x):
        return a(x) if p else b(x)


def programs(F, lx, ckpt, policy_ckpt):
    step = lambda c, x: F(c @ W + x)

    def scan_body(c, x):
        c = ckpt(step)(c, x)
        return c, c.sum()
    return {
        "scan(checkpoint)": lambda c0, xs: sum(o.sum() for o in lx.scan(scan_body, c0, xs)),
        "scan(remat=True)": lambda c0, xs: lx.scan(lambda c, x: (step(c, x), (c * 2).sum()), c0, xs, remat=True)[0].sum(),
        "checkpoint(scan)": lambda c0, xs: ckpt(lambda c0, xs: lx.scan(lambda c, x: (step(c, x), None), c0, xs)[0])(c0, xs).sum(),
        "checkpoint(scan ys)": lambda c0, xs: ckpt(
            lambda c0, xs: lx.scan(lambda c, x: (step(c, x), F(c).sum()), c0, xs)[1])(c0, xs).sum(),
        "checkpoint(fori_loop)": lambda c0, xs: ckpt(lambda c0: lx.fori_loop(0, 3, lambda i, c: step(c, xs[i]), c0))(c0).sum(),
        "fori_loop(checkpoint)": lambda c0, xs: lx.fori_loop(0, 3, lambda i, c: ckpt(lambda c: step(c, xs[i]))(c), c0).sum(),
        "cond(checkpoint)": lambda c0, xs: lx.cond(True, lambda c: ckpt(lambda c: step(c, xs[0]))(c), lambda c: c * 2, c0).sum(),
        "checkpoint(cond)": lambda c0, xs: ckpt(lambda c: lx.cond(True, lambda c: step(c, xs[0]), lambda c: c * 2, c))(c0).sum(),
        "checkpoint(checkpoint(scan))": lambda c0, xs: ckpt(lambda c: ckpt(
            lambda c: lx.scan(lambda c, x: (step(c, x), None), c, xs)[0])(c) * 2)(c0).sum(),
        "scan(cond(checkpoint))": lambda c0, xs: lx.scan(lambda c, x: (lx.cond(
            True, lambda c: ckpt(lambda c: step(c, x))(c), lambda c: c, c), None), c0, xs)[0].sum(),
        "scan(remat='sqrt')": lambda c0, xs: lx.scan(lambda c, x: (step(c, x), None), c0, xs, remat="sqrt")[0].sum(),
        "scan(remat=True)(scan)": lambda c0, xs: lx.scan(lambda c, x: (lx.scan(
            lambda c, x: (step(c, x), None), c, xs[:2])[0], None), c0, xs, remat=True)[0].sum(),
        "scan(remat='binomial')(scan)": lambda c0, xs: lx.scan(lambda c, x: (lx.scan(
            lambda c, x: (step(c, x), None), c, xs[:2])[0], None), c0, xs, remat="binomial", checkpoints=1)[0].sum(),
        "checkpoint dots_saveable(scan)": lambda c0, xs: policy_ckpt(
            lambda c: lx.scan(lambda c, x: (step(c, x), None), c, xs)[0])(c0).sum(),
    }


IDENTITY = lambda fn: fn
OURS = programs(f, lax, functx.checkpoint,
                lambda fn: functx.checkpoint(fn, policy=functx.checkpoint_policies.dots_saveable))
ORACLE = programs(TorchF.apply, PyLax, IDENTITY, IDENTITY)


def _want(name):
    c, xs = C0.clone().requires_grad_(), XS.clone().requires_grad_()
    return torch.autograd.grad(ORACLE[name](c, xs), (c, xs))


@pytest.mark.parametrize("mode", ["eager", "jit(grad)", "grad(jit)", "vmap(grad)"])
@pytest.mark.parametrize("name", list(OURS))
def test_custom_vjp_in_remat_control_flow_matches_torch(name, mode):
    fn, want = OURS[name], _want(name)
    g = grad(fn, argnums=(0, 1))
    if mode == "eager":
        got = g(C0, XS)
    elif mode == "jit(grad)":
        got = jit(g)(C0, XS)
    elif mode == "grad(jit)":
        got = grad(jit(fn), argnums=(0, 1))(C0, XS)
    else:
        got = vmap(g, in_axes=(0, None))(torch.stack([C0, 2 * C0]), XS)
        want2 = grad(fn, argnums=(0, 1))(2 * C0, XS)
        torch.testing.assert_close(got[0][1], want2[0])
        got = (got[0][0], got[1][0])
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


def test_scan_dce_drops_dead_carries_only():
    """dce_graph's scan rule: an unused carry that nothing live reads goes, with its body work;
    a carry a live one reads stays."""
    from functx.core.trace import GraphTrace
    from functx.transforms.control_flow.common import closed_graph, dce_graph

    def prog(c0, d0, e0, xs):
        def body(carry, x):
            c, d, e = carry
            return (c * x, d + c, torch.exp(e)), None
        (c, d, e), _ = lax.scan(body, (c0, d0, e0), xs)
        return [functx.frontend.unwrap(d)]
    t = C0[0]
    from functx.core.trace import type_of
    from functx.frontend import wrap
    g, _ = closed_graph(lambda *a: prog(*[wrap(x) for x in a]), [type_of(t)] * 3 + [type_of(XS[:, 0])])
    pruned = dce_graph(g)
    (scan_eqn,) = [e for e in pruned.eqns if e.prim.name == "scan"]
    assert scan_eqn.params["num_carry"] == 2            # d, and c which d reads; e is dead
    assert "exp" not in str(scan_eqn.params["body"])
    assert len(scan_eqn.outputs) == 2
