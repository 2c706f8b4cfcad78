"""Divergences from eager torch / torch.func on ordinary code, one test (or a few) each, the
oracle beside it."""
import os

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


# ---------------------------------------------------------------- jit-only divergences

def _jit_backends(f, *args):
    """f under jit: the eager backend, the CPU backend's fused tier (built before the call,
    served even where nothing fuses) and vmap (the eager transforms' path)."""
    import functx.compile.cpu.compiled as cpu_compiled
    outs = {"eager backend": functx.jit(f, backend="eager")(*args)}
    old_env, old_skip = os.environ.get("FUNCTX_CPU_BLOCK"), cpu_compiled.SKIP_UNFUSED
    os.environ["FUNCTX_CPU_BLOCK"], cpu_compiled.SKIP_UNFUSED = "1", False
    try:
        outs["cpu fused"] = functx.jit(f, backend="cpu")(*args)
    finally:
        cpu_compiled.SKIP_UNFUSED = old_skip
        if old_env is None:
            del os.environ["FUNCTX_CPU_BLOCK"]
        else:
            os.environ["FUNCTX_CPU_BLOCK"] = old_env
    outs["vmap"] = functx.tree_util.tree_map(lambda o: o[0], functx.vmap(f)(*[a[None] for a in args]))
    return outs


_OUT_OF_RANGE = {
    "x < 300": lambda a: a < 300, "x == 256": lambda a: a == 256, "x >= -1": lambda a: a >= -1,
    "x + 300": lambda a: a + 300, "x * 300": lambda a: a * 300, "fmod(x, 300)": lambda a: torch.fmod(a, 300),
    "x & 257": lambda a: a & 257, "x - 1000": lambda a: a - 1000,
    "300 - x": lambda a: 300 - a, "x // 300": lambda a: a // 300, "remainder(x, -300)": lambda a: torch.remainder(a, -300),
}


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
@pytest.mark.parametrize("name", sorted(_OUT_OF_RANGE))
def test_python_int_outside_the_dtypes_range_wraps_as_in_eager(name, dtype):
    """jit raised 'value cannot be converted to type uint8_t without overflow' (and the C++
    tier compared in int): eager torch wraps the number into the dtype (x_u8 < 300 is x < 44)."""
    f = _OUT_OF_RANGE[name]
    x = torch.tensor([0, 44, 200, 255] if dtype == torch.uint8 else [0, 1, -24, 127], dtype=dtype)
    want = f(x)
    for where, got in _jit_backends(f, x).items():
        assert got.dtype == want.dtype and torch.equal(got, want), (where, got, want)


@pytest.mark.parametrize("op", ["fmod", "remainder", "floor_divide"])
def test_integer_division_by_zero_of_an_empty_tensor_is_empty(op):
    """jit raised ZeroDivisionError ('eager PyTorch rejects ... for these dtypes'); eager
    returns the empty result, and raises for a non-empty tensor (so does jit)."""
    f = lambda a: getattr(torch, op)(a, 0)     # noqa: E731
    x = torch.tensor([], dtype=torch.int64)
    want = f(x)
    got = functx.jit(f, backend="eager")(x)
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(functx.jit(f)(x.reshape(0, 3)), f(x.reshape(0, 3)))
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        f(torch.tensor([3]))
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        functx.jit(f)(torch.tensor([3]))


_BIG = torch.tensor([1e19, 3e19, 2e19, 5e19, 4e19, 2.5e19], dtype=torch.float32)
_VARS = {
    "var": lambda a: a.var(), "var(dim)": lambda a: a.reshape(2, 3).var(1), "std": lambda a: a.std(),
    "var_mean": lambda a: torch.var_mean(a, correction=0), "std_mean": lambda a: torch.std_mean(a, 0, keepdim=True),
    "var keepdim": lambda a: a.reshape(3, 2).var(0, keepdim=True),
}


@pytest.mark.parametrize("name", sorted(_VARS))
def test_float32_variance_of_values_above_1e19_is_finite_as_in_eager(name):
    """The squares overflowed float32 (inf) where torch's float64 accumulation is finite."""
    f = _VARS[name]
    want = f(_BIG)
    for where, got in _jit_backends(f, _BIG).items():
        for g, w in zip(functx.tree_util.tree_leaves(got), functx.tree_util.tree_leaves(want)):
            assert g.dtype == w.dtype and g.shape == w.shape, where
            torch.testing.assert_close(g, w, rtol=1e-5, atol=0, msg=where)
    x = torch.randn(6, dtype=torch.float32)     # the normal case, and its derivative
    torch.testing.assert_close(functx.jit(f)(x), f(x))
    loss = lambda a: sum(t.sum() for t in functx.tree_util.tree_leaves(f(a)))   # noqa: E731
    torch.testing.assert_close(functx.grad(loss)(x.double()), torch.func.grad(loss)(x.double()))


@pytest.mark.parametrize("fn", [torch.var, torch.std, torch.var_mean, torch.std_mean])
def test_variance_of_an_integer_tensor_raises_as_in_eager(fn):
    """functx returned a number."""
    x = torch.tensor([1, 2, 4])
    with pytest.raises(RuntimeError, match="only support floating point"):
        fn(x)
    with pytest.raises(RuntimeError, match="only support floating point"):
        functx.jit(fn)(x)


# ---------------------------------------------------------------- TransformerEncoder's nested fast path

def _encoder():
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    return torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()


def test_transformer_encoder_with_padding_mask_and_nested_tensors_runs_under_transforms():
    """_nested_tensor_from_mask_left_aligned (its mask check) returned a bool that functx's
    dispatch took for a tensor: TypeError 'bool' object is not iterable under grad/vmap/jit."""
    enc = _encoder()
    x = torch.randn(3, 5, 8)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[0, 3:] = True
    mask[2, 4:] = True
    params = dict(enc.named_parameters())

    def loss(p, x):
        out = torch.func.functional_call(enc, p, (x,), dict(src_key_padding_mask=mask))
        return out.masked_fill(mask[..., None], 0).sum()
    got, want = functx.grad(loss)(params, x), torch.func.grad(loss)(params, x)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)
    # vmap (torch.func's has no batching rule for the mask check): a loop is the oracle
    one = lambda xi, mi: enc(xi[None], src_key_padding_mask=mi[None])[0]    # noqa: E731
    torch.testing.assert_close(functx.vmap(one)(x, mask), torch.stack([one(a, m) for a, m in zip(x, mask)]))
    torch.testing.assert_close(functx.jit(lambda x: enc(x, src_key_padding_mask=mask))(x),
                               enc(x, src_key_padding_mask=mask))
    with torch.no_grad():     # eager's nested fast path: padded positions are 0 there (documented)
        want = enc(x, src_key_padding_mask=mask)
        got = functx.jit(lambda x: enc(x, src_key_padding_mask=mask))(x)
    torch.testing.assert_close(got[~mask], want[~mask])
