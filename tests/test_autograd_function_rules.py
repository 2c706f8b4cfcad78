"""torch.autograd.Function's own rules under functx transforms, as torch.func honours them
(https://pytorch.org/docs/stable/notes/extending.func.html): backward at every reverse
level, the `jvp` staticmethod in forward mode, the `vmap` staticmethod under vmap (forward
code that leaves torch, here numpy, as in the torch docs' example). Oracles: torch.func
where it supports the composition, else the closed form."""
import numpy as np
import pytest
import torch

import functx


class NumpySort(torch.autograd.Function):
    """The torch docs' example: forward in numpy, backward through NumpyTake, a vmap rule."""
    @staticmethod
    def forward(x, dim):
        ind = np.argsort(x.numpy(), axis=dim)
        ind_inv = np.argsort(ind, axis=dim)
        result = np.take_along_axis(x.numpy(), ind, axis=dim)
        return torch.tensor(result), torch.tensor(ind), torch.tensor(ind_inv)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, dim = inputs
        _, ind, ind_inv = output
        ctx.mark_non_differentiable(ind, ind_inv)
        ctx.save_for_backward(ind, ind_inv)
        ctx.dim = dim

    @staticmethod
    def backward(ctx, g, _0, _1):
        ind, ind_inv = ctx.saved_tensors
        return NumpyTake.apply(g, ind_inv, ind, ctx.dim), None

    @staticmethod
    def vmap(info, in_dims, x, dim):
        x = x.movedim(in_dims[0], 0)
        dim = dim if dim >= 0 else dim + x.dim() - 1
        return NumpySort.apply(x, dim + 1), (0, 0, 0)


class NumpyTake(torch.autograd.Function):
    @staticmethod
    def forward(x, ind, ind_inv, dim):
        return torch.tensor(np.take_along_axis(x.numpy(), ind.numpy(), dim))

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, ind, ind_inv, dim = inputs
        ctx.save_for_backward(ind, ind_inv)
        ctx.dim = dim

    @staticmethod
    def backward(ctx, g):
        ind, ind_inv = ctx.saved_tensors
        return NumpyTake.apply(g, ind_inv, ind, ctx.dim), None, None, None

    @staticmethod
    def vmap(info, in_dims, x, ind, ind_inv, dim):
        def front(t, d):
            return t.expand(info.batch_size, *t.shape) if d is None else t.movedim(d, 0)
        logical = x.dim() if in_dims[0] is None else x.dim() - 1
        dim = dim if dim >= 0 else dim + logical
        return NumpyTake.apply(front(x, in_dims[0]), front(ind, in_dims[1]), front(ind_inv, in_dims[2]),
                               dim + 1), 0


def numpy_sort(x, dim=-1):
    return NumpySort.apply(x, dim)[0]


@pytest.fixture
def x():
    return torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_vmap_staticmethod_runs_numpy_forward(x):
    torch.testing.assert_close(functx.vmap(numpy_sort)(x), x.sort(-1).values)
    torch.testing.assert_close(functx.vmap(numpy_sort, in_axes=1)(x), x.T.sort(-1).values)
    torch.testing.assert_close(functx.vmap(functx.vmap(numpy_sort))(x[None].repeat(2, 1, 1)),
                               x.sort(-1).values[None].repeat(2, 1, 1))


def test_vmap_staticmethod_under_grad_and_jacrev(x):
    w = torch.linspace(0.5, 2.5, 5, dtype=torch.float64)

    def loss(r):
        return (numpy_sort(r) * w).sum()
    want = torch.func.vmap(torch.func.grad(loss))(x)
    torch.testing.assert_close(functx.vmap(functx.grad(loss))(x), want)        # vmap above grad
    torch.testing.assert_close(functx.grad(lambda m: functx.vmap(loss)(m).sum())(x), want)   # below
    torch.testing.assert_close(functx.jacrev(numpy_sort)(x[0]), torch.func.jacrev(numpy_sort)(x[0]))
    # the gradient scatters w back to the sorted positions
    torch.testing.assert_close(want, torch.zeros_like(x).scatter(1, x.argsort(1), w.expand(3, 5)))


class SinWithJvp(torch.autograd.Function):
    """backward and jvp deliberately scaled differently from each other and from sin's
    derivative, so each test sees which rule ran."""
    @staticmethod
    def forward(x):
        return torch.sin(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors
        return 2 * g * torch.cos(x)

    @staticmethod
    def jvp(ctx, t):
        x, = ctx.saved_tensors
        return 3 * t * torch.cos(x)


def test_jvp_staticmethod_in_forward_mode(x):
    t = torch.randn_like(x)
    want = torch.func.jvp(SinWithJvp.apply, (x,), (t,))[1]
    torch.testing.assert_close(want, 3 * t * x.cos())
    torch.testing.assert_close(functx.jvp(SinWithJvp.apply, (x,), (t,))[1], want)
    torch.testing.assert_close(functx.jit(lambda a, b: functx.jvp(SinWithJvp.apply, (a,), (b,))[1])(x, t), want)
    torch.testing.assert_close(functx.jacfwd(lambda r: SinWithJvp.apply(r).sum())(x[0]), 3 * x[0].cos())
    torch.testing.assert_close(functx.vmap(lambda a, b: functx.jvp(SinWithJvp.apply, (a,), (b,))[1])(x, t), want)
    # reverse mode still runs backward
    torch.testing.assert_close(functx.grad(lambda r: SinWithJvp.apply(r).sum())(x), 2 * x.cos())


def test_jvp_of_grad_uses_jvp_for_the_function_and_differentiates_backward(x):
    t = torch.randn_like(x)

    def g(r):
        return functx.grad(lambda s: SinWithJvp.apply(s).sum())(r)
    # grad = 2 cos(x) (backward); its jvp differentiates backward's code: -2 sin(x) t
    torch.testing.assert_close(functx.jvp(g, (x,), (t,))[1], -2 * x.sin() * t)
    want = torch.func.jvp(torch.func.grad(lambda s: SinWithJvp.apply(s).sum()), (x,), (t,))[1]
    torch.testing.assert_close(functx.jvp(g, (x,), (t,))[1], want)


class Cube(torch.autograd.Function):
    """The torch docs' MyCube: no jvp staticmethod."""
    @staticmethod
    def forward(x):
        return x ** 3, 3 * x ** 2

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], output[1])

    @staticmethod
    def backward(ctx, g, g_dx):
        x, dx = ctx.saved_tensors
        return g * dx + g_dx * 6 * x


def test_without_jvp_staticmethod():
    x = torch.tensor([0.3, 1.7, -2.4], dtype=torch.float64)

    def f(r):
        return Cube.apply(r)[0].sum()
    torch.testing.assert_close(functx.grad(lambda r: functx.grad(f)(r).sum())(x), 6 * x)   # docs
    # hessian = jacfwd(jacrev): the forward-mode level differentiates forward's torch code
    # (torch.func refuses: no jvp / vmap staticmethod)
    torch.testing.assert_close(functx.hessian(f)(x), torch.diag(6 * x))
    with pytest.raises(functx.FunctxError, match="forward mode"):
        functx.jvp(f, (x,), (x,))


class BadVmap(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return x * 2

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return g * 2

    @staticmethod
    def vmap(info, in_dims, x):
        return BadVmap.apply(x), (0, 1)


def test_vmap_staticmethod_with_wrong_out_dims_is_named():
    with pytest.raises(functx.FunctxError, match="BadVmap.vmap returned out_dims"):
        functx.vmap(BadVmap.apply)(torch.ones(3, 2))
