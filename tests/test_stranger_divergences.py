"""Divergences from eager torch / torch.func on ordinary code, one test (or a few) each, the
oracle beside it."""
import pytest
import torch

import functx

D = torch.float64


# ---------------------------------------------------------------- vmap's non-tensor outputs

_NON_TENSOR = {
    "float": (lambda x: (x.sum(), 1.5), (0, None)),
    "int alone": (lambda x: 3, None),
    "str and bool": (lambda x: (x * 2, "a", True), (0, None, None)),
    "dict": (lambda x: {"a": x, "b": 2.0}, {"a": 0, "b": None}),
}


@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("name", sorted(_NON_TENSOR))
def test_vmap_returns_non_tensor_outputs_with_out_dims_none(name, chunk_size):
    """As torch.func.vmap (functx raised TypeError: output of f: expected tensors)."""
    f, out_dims = _NON_TENSOR[name]
    x = torch.randn(4, 3, dtype=D)
    # (torch.func's chunk_size path raises here: it concatenates the numbers; the oracle is
    # its unchunked vmap)
    want = torch.func.vmap(f, out_dims=out_dims)(x)
    for vm in (functx.func.vmap, lambda f, **kw: functx.vmap(f, **kw)):
        got = vm(f, out_dims=out_dims, chunk_size=chunk_size)(x)
        assert type(got) is type(want)
        for g, w in zip(functx.tree_util.tree_leaves(got), functx.tree_util.tree_leaves(want)):
            if isinstance(w, torch.Tensor):
                torch.testing.assert_close(g, w)
            else:
                assert g == w and type(g) is type(w)


def test_vmap_non_tensor_output_with_a_batch_dim_raises_naming_it():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError):
        torch.func.vmap(lambda x: (x, 3))(x)
    with pytest.raises(TypeError, match=r"leaf 1 at \(1,\) is a int.*out_axes \(out_dims\) None"):
        functx.vmap(lambda x: (x, 3))(x)


# ---------------------------------------------------------------- autograd.Function's ctx

class _Two(torch.autograd.Function):
    """A backward written for set_materialize_grads(False) and needs_input_grad: it records
    what it saw and answers differently for None (a contract test, not a derivative)."""
    generate_vmap_rule = True
    seen: list = []

    @staticmethod
    def forward(x, y):
        return x * 2, y * 3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, g1, g2):
        _Two.seen.append((g1 is None, g2 is None, tuple(ctx.needs_input_grad)))
        gx = g1 * 2 if g1 is not None and ctx.needs_input_grad[0] else None
        gy = g2 * 3 if g2 is not None and ctx.needs_input_grad[1] else None
        return gx, gy


def _first(x, y):
    return _Two.apply(x, y)[0].sum()


def _both(x, y):
    a, b = _Two.apply(x, y)
    return (a * b).sum()


_X, _Y = torch.tensor([1.0, 2.0], dtype=D), torch.tensor([3.0, 4.0], dtype=D)
_CTX_CASES = {
    "grad, output 1 unused": lambda m: m.grad(_first)(_X, _Y),
    "grad argnums=1": lambda m: m.grad(_first, argnums=1)(_X, _Y),
    "grad argnums=0, both used": lambda m: m.grad(_both)(_X, _Y),
    "grad argnums=(0,1)": lambda m: m.grad(_both, argnums=(0, 1))(_X, _Y),
    "vmap(grad)": lambda m: m.vmap(m.grad(_first))(torch.stack([_X, _X]), torch.stack([_Y, _Y])),
    "vjp": lambda m: m.vjp(_Two.apply, _X, _Y)[1]((torch.ones(2, dtype=D), torch.ones(2, dtype=D))),
}


@pytest.mark.parametrize("name", sorted(_CTX_CASES))
def test_autograd_function_ctx_materialize_grads_and_needs_input_grad_as_torch_func(name):
    """functx gave backward zeros instead of None and needs_input_grad all True."""
    run = _CTX_CASES[name]
    _Two.seen.clear()
    want = run(torch.func)
    want_seen = list(_Two.seen)
    _Two.seen.clear()
    got = run(functx)
    torch.testing.assert_close(got, want)
    assert _Two.seen == want_seen
