"""Tracing real PyTorch code: every case runs in plain torch, under functx.jit, under
make_graph (checked), and, where it is differentiable, under functx.grad against
torch.func.grad. Inputs are cloned per run, so in-place code sees fresh tensors."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._pytree import tree_leaves, tree_map

import functx

torch.manual_seed(0)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _clone(args):
    return tree_map(lambda a: a.clone() if isinstance(a, torch.Tensor) else a, args)


def assert_tree_close(a, b, **kw):
    la, lb = tree_leaves(a), tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert type(x) is torch.Tensor, f"output is a {type(x).__name__}, not a plain tensor"
        assert x.dtype == y.dtype and x.shape == y.shape and x.device == y.device, (x, y)
        torch.testing.assert_close(x, y, equal_nan=True, **kw)


def _float_argnums(args):
    return tuple(i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.dtype.is_floating_point)


def _scalarize(f):
    def g(*args):
        return sum(o.double().sum() for o in tree_leaves(f(*args)) if o.dtype.is_floating_point)
    return g


def check(f, *args, grad=True, atol=None, rtol=None):
    tol = {} if atol is None else dict(atol=atol, rtol=rtol)
    ref = f(*_clone(args))
    assert_tree_close(functx.jit(f)(*_clone(args)), ref, **tol)
    functx.make_graph(f)(*_clone(args)).check()
    nums = _float_argnums(args)
    if grad and nums and any(o.dtype.is_floating_point for o in tree_leaves(ref)):
        s = _scalarize(f)
        expected = torch.func.grad(s, argnums=nums)(*_clone(args))
        assert_tree_close(functx.grad(s, argnums=nums)(*_clone(args)), expected, **tol)
        assert_tree_close(functx.jit(functx.grad(s, argnums=nums))(*_clone(args)), expected, **tol)


X = torch.randn(4, 6, dtype=torch.float64)
Y = torch.randn(4, 6, dtype=torch.float64)
W = torch.randn(6, 3, dtype=torch.float64)
I = torch.arange(24).reshape(4, 6) - 7


# ---------------------------------------------------------------- operators and methods

OPERATORS = {
    "add_mul_sub": lambda x, y: x * y - x + 1.5,
    "rsub": lambda x: 2 - x,
    "rdiv": lambda x: 2 / (x.abs() + 1),
    "rpow": lambda x: 2 ** x,
    "pow_tensor": lambda x, y: x.abs() ** y,
    "pow_scalar": lambda x: x ** 3 + x ** 0.5 * 0 + x.abs() ** 0.5,
    "matmul": lambda x: x @ W,
    "rmatmul_vec": lambda x: x[0] @ x.t(),
    "mod": lambda x: x % 0.7 + (-x) % 0.7 + x % -0.7,
    "neg_abs": lambda x: -abs(x),
    "compare": lambda x, y: ((x < y) | (x >= 0.5)) & ~(y == x) ^ (x != 0.1),
    "where": lambda x, y: torch.where(x > 0, x, y),
    "where_scalar": lambda x: torch.where(x > 0, x, 0.0),
    "minmax": lambda x, y: torch.maximum(x, y) + torch.minimum(x, 0.2 * y),
    "clamp": lambda x: x.clamp(-0.5, 0.5) + x.clamp(min=0) + x.clamp_max(0.1),
    "relu": lambda x: torch.relu(x) + F.relu6(x * 4),
    "unary_math": lambda x: x.sin() * x.cos() + x.exp().log1p() + torch.tanh(x) + x.sigmoid() + torch.erf(x),
    "sqrt_rsqrt": lambda x: (x.abs() + 1).sqrt() + (x.abs() + 1).rsqrt(),
    "atan2": lambda x, y: torch.atan2(x, y),
    "reductions": lambda x: x.sum() + x.mean(0).sum() + x.amax(1).sum() + x.std(0).sum() + x.var(1).sum(),
    "max_dim": lambda x: x.max(1).values + x.min(0).values.sum(),
    "logsumexp_norm": lambda x: torch.logsumexp(x, 1) + torch.linalg.vector_norm(x, dim=1),
    "cumsum_prod": lambda x: x.cumsum(1).sum(0) + x.prod(1).sum(),
    "sort_topk": lambda x: x.sort(1).values.sum(0) + x.topk(2, dim=1).values.sum(),
    "shape_ops": lambda x: torch.cat(x.chunk(2, 1)[::-1], 1).t().reshape(-1, 4).flip(0),
    "stack_expand": lambda x: torch.stack([x, x * 2], 0) + x[:, None].expand(4, 3, 6).sum(1)[None],
    "einsum": lambda x: torch.einsum("ij,jk->ik", x, W),
    "tril_roll_repeat": lambda x: x.tril().roll(1, 1).repeat(2, 1),
    "type_convert": lambda x: x.float().double() + x.to(torch.float32).sum().to(torch.float64),
    "masked_fill": lambda x: x.masked_fill(x > 0, 0.0) + x.masked_fill(x < -1, float("-inf")).exp(),
}


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_operators_and_methods(name):
    f = OPERATORS[name]
    args = (X, Y)[: f.__code__.co_argcount]
    check(f, *args)


def test_floor_divide_is_piecewise_constant():
    f = lambda x: x // 0.7 + torch.floor_divide(x, -0.3)
    check(f, X, grad=False)            # torch.func has no derivative for floor_divide
    assert torch.equal(functx.grad(lambda x: f(x).sum())(X), torch.zeros_like(X))


def test_integer_and_boolean_tensors():
    b = X > 0
    check(lambda a: (a * 3 // 2) % 5 - a.abs() + (a << 1 if False else a) * -1, I)
    check(lambda a: (a // 4, a % -4, torch.div(a, 4, rounding_mode="trunc"), a.sum(), a.argmax(1)), I)
    check(lambda a: (a & 3) | (a ^ 5), I)
    check(lambda b: (b + b, b * True, ~b, b & b.t().t(), b.sum(), b.any(1), b.all()), b)
    check(lambda x, a: x * a + (a > 0), X, I)       # int + float, bool arithmetic
    check(lambda x, b: x * b, X, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_float_dtypes(dtype):
    x, y = X.to(dtype), Y.to(dtype)
    tol = dict(atol=1e-2, rtol=1e-2) if dtype in (torch.float16, torch.bfloat16) else {}
    check(lambda x, y: (x * y + 1.5, torch.tanh(x).sum(1), F.softmax(x, -1), x @ y.t()), x, y, **tol)


def test_type_promotion():
    h, f, d = X.half(), X.float(), X
    i, b = I, X > 0
    cases = [
        (lambda h: h + 1.5, (h,)),                            # half + python float stays half
        (lambda i: i + 1.5, (i,)),                            # int + python float -> default float
        (lambda i: i * 2, (i,)),                              # int + python int stays int
        (lambda i, f: i + f, (i, f)),                         # int tensor + float tensor
        (lambda h, f: h + f, (h, f)),                         # half + float tensor
        (lambda h, s: h * s, (h, torch.tensor(2.0))),         # 0-d float32 does not promote n-d half
        (lambda f, s: f * s, (f, torch.tensor(2.0, dtype=torch.float64))),  # same category 0-d: stays f32
        (lambda i, s: i * s, (torch.arange(6), torch.tensor(2.5))),         # int n-d * 0-d float -> float
        (lambda b: b + 1, (b,)),                              # bool + int -> int64
        (lambda b: b * 1.5, (b,)),                            # bool * float -> float
        (lambda b, h: b + h, (b, h)),                         # bool tensor + half tensor -> half
        (lambda s, t: s + t, (torch.tensor(1, dtype=torch.int32), torch.tensor(2.0, dtype=torch.float16))),
    ]
    for f, args in cases:
        ref = f(*args)
        out = functx.jit(f)(*args)
        assert out.dtype == ref.dtype, (out.dtype, ref.dtype)
        torch.testing.assert_close(out, ref)


# ---------------------------------------------------------------- torch.nn.functional

def test_functional_ops():
    target = torch.tensor([0, 1, 2, 5])
    check(lambda x: F.softmax(x, -1) + F.log_softmax(x, 1), X)
    check(lambda x: F.cross_entropy(x, target), X)
    check(lambda x: F.cross_entropy(x, target, label_smoothing=0.1, reduction="sum"), X)
    check(lambda x: F.nll_loss(F.log_softmax(x, 1), target), X)
    check(lambda x, y: F.mse_loss(x, y) + F.l1_loss(x, y) + F.smooth_l1_loss(x, y), X, Y)
    check(lambda x: F.binary_cross_entropy_with_logits(x, (Y > 0).double()), X)
    check(lambda x: F.gelu(x) + F.gelu(x, approximate="tanh") + F.silu(x) + F.softplus(x) + F.elu(x), X)
    check(lambda x: F.layer_norm(x, (6,)) + F.normalize(x, dim=-1), X)
    check(lambda x: F.linear(x, W.t(), torch.ones(3, dtype=torch.float64)), X)
    check(lambda x: F.dropout(x, 0.5, training=False) + F.pad(x, (1, 2))[:, 1:-2], X)
    check(lambda x: F.scaled_dot_product_attention(x[None], x[None], x[None], is_causal=True), X)


# ---------------------------------------------------------------- nn.Modules via functional_call

class Block(nn.Module):
    """A pre-norm transformer block: LayerNorm, scaled_dot_product_attention, GELU MLP."""

    def __init__(self, d=16, heads=2):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.heads = heads

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).chunk(3, -1)
        split = lambda t: t.view(B, T, self.heads, D // self.heads).transpose(1, 2)
        a = F.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.ln2(x))


class ConvBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU()

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


MODULES = {
    "mlp": (lambda: nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)),
            (5, 6)),
    "transformer_block": (Block, (2, 5, 16)),
    "conv_block": (ConvBlock, (2, 3, 6, 6)),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_through_functional_call(name):
    make, shape = MODULES[name]
    model = make().double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(*shape, dtype=torch.float64)

    def forward(p, x):
        return functx.functional_call(model, p, (x,))

    def loss(p, x):
        return forward(p, x).square().mean()

    assert_tree_close(functx.jit(forward)(params, x), torch.func.functional_call(model, params, (x,)))
    expected = torch.func.grad(loss)(params, x)
    assert_tree_close(functx.grad(loss)(params, x), expected)
    assert_tree_close(functx.jit(functx.grad(loss))(params, x), expected)
    functx.make_graph(functx.grad(loss))(params, x).check()


# ---------------------------------------------------------------- in-place ops and views

def inplace_ops(x):
    y = x.clone()
    y.add_(1)
    y.mul_(x)
    y[..., 0] = 5.0
    y[1:, ::2] *= 2
    return y


def write_through_views(x):
    y = x.clone()
    y.view(24)[3] = 100.0
    y.t()[0, 1] = -1.0
    y.transpose(0, 1)[2] += 3
    y.unsqueeze(0)[0, 1, 2] = 7.0
    y.select(1, 3).mul_(0.5)
    y.narrow(0, 1, 2).add_(1.5)
    return y


def write_diagonal(x):
    y = x[:, :4].clone()
    y.diagonal().zero_()
    y.diagonal(1).add_(x[0, :3])
    return y


def view_read_after_base_mutated(x):
    y = x.clone()
    row, col = y[1], y[:, 2]
    y.mul_(2)
    y[1, 2] = 0.0
    return row + 0, col * 1, y


def write_into_view_of_view(x):
    y = x.clone()
    v = y[1:].t()[::2]
    v[0] += x[0, :3]
    return y


def mutate_input(x):
    x.mul_(2)
    x[0] = x[1]
    return x + 1


def _mutated(x):
    x = x.clone()
    mutate_input(x)
    return x


def test_mutating_an_input():
    check(mutate_input, X, grad=False)   # torch.func.grad refuses in-place writes to its inputs
    g = lambda x: mutate_input(x).sin().sum()
    x = X.clone()
    torch.testing.assert_close(functx.grad(g)(x), torch.func.grad(lambda x: g(x.clone()))(X))
    torch.testing.assert_close(x, _mutated(X))      # grad writes the new value back too
    x = X.clone()
    mutate_input(x)
    y = X.clone()
    functx.jit(mutate_input)(y)           # jit writes the new value back, as eager torch does
    torch.testing.assert_close(y, x)


def index_assign(x):
    y = x.clone()
    y[torch.tensor([1, 3])] = torch.zeros(6, dtype=x.dtype)
    y[torch.tensor([0, -1]), torch.tensor([2, 5])] = x[0, :2]
    y[:, torch.tensor([0, 1])] = 3.0
    return y


def index_add_duplicates(x):
    # y[idx] += v with duplicate indices is gather, add, then non-accumulating put: torch
    # writes the same value twice (no accumulation); index_put_(accumulate=True) does accumulate.
    y, z = x.clone(), x.clone()
    idx = torch.tensor([0, 2, 0])
    y[idx] += 1.0
    z.index_put_((idx,), x[:3] * 2, accumulate=True)
    return y, z


def zeros_like_buffer(x):
    buf = torch.zeros_like(x)
    buf[0] = x[1]
    out = x.new_zeros(3)
    out[1] = x[0, 0]
    return buf, out


def bool_mask_assign(x):
    y = x.clone()
    y[x > 0] = 0.0
    y[x[:, 0] > 0.5] = x[0, 0]
    return y


INPLACE = [inplace_ops, write_through_views, write_diagonal, view_read_after_base_mutated,
           write_into_view_of_view, index_assign, index_add_duplicates,
           zeros_like_buffer, bool_mask_assign]


@pytest.mark.parametrize("f", INPLACE, ids=lambda f: f.__name__)
def test_inplace_and_views(f):
    check(f, X)


def test_duplicate_index_semantics_match_torch():
    y, z = index_add_duplicates(X.clone())
    assert torch.equal(y[0], X[0] + 1)            # not + 2
    torch.testing.assert_close(z[0], X[0] + 2 * X[0] + 2 * X[2])   # accumulates both writes
    torch.testing.assert_close(z[2], X[2] + 2 * X[1])


# ---------------------------------------------------------------- indexing

INDEXING = {
    "int_tensor": lambda x: x[torch.tensor([0, 2, -1])],
    "slice_step": lambda x: x[1:, ::2],
    "ellipsis": lambda x: x[..., 0],
    "none": lambda x: x[None] + x[:, None, :].sum(1),
    "negative": lambda x: x[-1, -2] + x[-2:, -3:].sum(),
    "two_index_tensors": lambda x: x[torch.tensor([0, 1]), torch.tensor([2, -3])],
    "index_middle": lambda x: x[:, torch.tensor([0, 1, 5])],
    "index_2d_index": lambda x: x[torch.tensor([[0, 1], [2, 3]])],
    "gather": lambda x: x.gather(1, torch.tensor([[0, 1]] * 4)),
    "index_select": lambda x: x.index_select(1, torch.tensor([5, 0])),
    "take_along_dim": lambda x: torch.take_along_dim(x, x.argsort(1), 1),
}


@pytest.mark.parametrize("name", sorted(INDEXING))
def test_indexing(name):
    check(INDEXING[name], X)


def test_boolean_mask_indexing_in_eager_transforms():
    def f(x):
        return (x[x > 0] ** 2).sum()
    torch.testing.assert_close(functx.grad(f)(X), torch.func.grad(f)(X))
    torch.testing.assert_close(functx.jacrev(lambda x: x[x[:, 0] > 0].sum(0))(X),
                               torch.func.jacrev(lambda x: x[x[:, 0] > 0].sum(0))(X))


def test_python_control_flow_on_values_in_eager_transforms():
    def f(x):
        if x.sum() > 0:
            return (x ** 2).sum()
        return x.sin().sum()
    for x in (X, -X.abs()):
        torch.testing.assert_close(functx.grad(f)(x), torch.func.grad(f)(x))
    g = lambda x: x * int(x.abs().argmax()) + float(x[0].detach()) * x.tolist()[1]
    torch.testing.assert_close(functx.jacrev(g)(X[0]), torch.func.jacrev(g)(X[0]))


# ---------------------------------------------------------------- the opaque fallback

def test_unmapped_op_becomes_opaque_and_is_differentiable():
    """aten.special_i0e has no lowering; its torch._refs decomposition ends in a prims op
    with no derivative formula, so the aten op itself becomes one opaque primitive.
    (special_erfcx, beside it, is a primitive of its own now.)"""
    x = torch.rand(5, dtype=torch.float64) + 0.5

    def f(x):
        return torch.special.i0e(x * 2).sum() + torch.special.erfcx(x).sum()

    ex = functx.explain(f)(x)
    assert "aten.special_i0e.default" in ex.fallbacks and "aten.special_erfcx.default" not in ex.fallbacks
    assert "opaque" in str(ex.graph)
    torch.testing.assert_close(functx.jit(f)(x), f(x))
    torch.testing.assert_close(functx.grad(f)(x), torch.func.grad(f)(x))
    torch.testing.assert_close(functx.jit(functx.grad(f))(x), torch.func.grad(f)(x))
    t = torch.randn(5, dtype=torch.float64)
    torch.testing.assert_close(functx.jvp(f, (x,), (t,))[1], torch.func.jvp(f, (x,), (t,))[1])
    torch.testing.assert_close(functx.hessian(f)(x), torch.func.hessian(f)(x))
    xs = torch.rand(3, 5, dtype=torch.float64)
    torch.testing.assert_close(functx.vmap(functx.grad(f))(xs), torch.func.vmap(torch.func.grad(f))(xs))


def test_fallback_list_is_empty_for_mapped_code():
    assert functx.explain(lambda x: F.softmax(x @ W, -1).sum())(X).fallbacks == []


def test_multi_output_opaque_op():
    def f(x):
        return torch.kthvalue(x, 2, dim=1).values.sum()
    assert "aten.kthvalue.default" in functx.explain(f)(X).fallbacks
    torch.testing.assert_close(functx.grad(f)(X), torch.func.grad(f)(X))


# ---------------------------------------------------------------- CUDA

@pytest.mark.gpu
@needs_cuda
def test_cuda_tracing_and_jit():
    x, w = X.cuda(), W.cuda()

    def f(x, w):
        y = F.gelu(x @ w)
        y[:, 0] = 1.0
        return F.log_softmax(y, -1).sum()
    out = functx.jit(f, backend="eager")(x, w)
    assert out.device.type == "cuda"
    torch.testing.assert_close(out, f(x, w))
    torch.testing.assert_close(functx.grad(f)(x, w), torch.func.grad(f)(x, w))


# ---------------------------------------------------------------- regressions

def test_vector_matrix_product_keeps_torch_shape():
    # matmul(vector, matrix) goes through in-place shape-only ops (squeeze_); they must
    # change the wrapper's shape, not be treated as value writes.
    W = torch.randn(2, 3, dtype=torch.float64)
    y = torch.randn(2, dtype=torch.float64)
    assert functx.jit(lambda v: v @ W)(y).shape == (3,)
    torch.testing.assert_close(functx.jit(lambda v: v @ W)(y), y @ W)
    Y = torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(functx.vmap(lambda v: v @ W)(Y), Y @ W)
    torch.testing.assert_close(functx.jacfwd(lambda v: v @ W)(y), W.T)


def test_returning_a_view_whose_base_was_written_through_another_view():
    def f(y):
        z = y.clone().reshape(2, 3)
        z[0].mul_(2)
        return z
    x = torch.randn(6, dtype=torch.float64)
    torch.testing.assert_close(functx.jit(f)(x), f(x))
    X = torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(functx.vmap(f)(X), torch.stack([f(r) for r in X]))


def test_trace_is_lowered_not_decomposed():
    """torch.trace maps to a diagonal slice + sum (torch._refs.trace imported sympy, seconds
    on a fresh process's first jit of a score-matching loss); values and grad as torch's."""
    import subprocess
    import sys
    for shape in [(3, 3), (2, 5), (5, 2), (1, 1)]:
        for dtype in (torch.float32, torch.int32):
            x = (torch.randn(shape) * 5).to(dtype)
            a, b = functx.jit(torch.trace)(x), torch.trace(x)
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b)
    torch.testing.assert_close(functx.grad(torch.trace)(torch.randn(4, 4)), torch.eye(4))
    with pytest.raises(RuntimeError, match="expected a matrix"):
        functx.jit(torch.trace)(torch.randn(3))
    code = ("import sys, torch, functx; functx.jit(functx.grad(lambda x: torch.trace(x @ x)))(torch.randn(3, 3)); "
            "print('sympy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_first_jit_of_a_transformer_layer_imports_neither_sympy_nor_dynamo():
    """A fresh process's first jit of a TransformerEncoderLayer's value_and_grad took 1.3 s, most
    of it importing sympy and torch._dynamo: layer_norm's and CPU flash attention's
    decompositions, and the meta kernels asked for result layouts of strided operands. Now
    layer_norm and ATen's CPU flash attention are lowered natively and pointwise layouts
    follow TensorIterator's rule here (its strides, checked against torch's below)."""
    import subprocess
    import sys
    code = ("import sys, torch, functx\n"
            "layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)\n"
            "p = {k: v.detach() for k, v in layer.named_parameters()}\n"
            "f = functx.jit(functx.value_and_grad(lambda p, x: functx.func.functional_call(layer, p, (x,)).pow(2).mean()))\n"
            "f(p, torch.randn(2, 5, 16))\n"
            "print('sympy' in sys.modules, 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"


def test_pointwise_result_strides_follow_torch():
    """dispatch._pointwise_strides (TensorIterator's dim ordering) against torch's own results
    for permuted, sliced and expanded operands (dims of size > 1: torch's strides of size-1
    dims are not observable through indexing)."""
    import random
    from functx.frontend.dispatch import _pointwise_strides
    rng = random.Random(0)

    def operand(shape):
        kind = rng.choice(["contiguous", "permuted", "sliced", "expanded"])
        if kind == "permuted":
            p = list(range(len(shape)))
            rng.shuffle(p)
            return torch.randn([shape[i] for i in p]).permute(*[p.index(i) for i in range(len(shape))])
        if kind == "sliced":
            return torch.randn([2 * n for n in shape])[tuple(slice(0, n) for n in shape)]
        if kind == "expanded":
            small = list(shape)
            small[rng.randrange(len(shape))] = 1
            return torch.randn(small).expand(shape)
        return torch.randn(shape)
    for _ in range(400):
        shape = [rng.choice([1, 2, 3, 4]) for _ in range(rng.randint(1, 4))]
        a, b = operand(shape), operand(shape[rng.randint(0, len(shape)):] or [1])
        for args, out in (((a, b), torch.add(a, b)), ((a,), torch.sin(a)), ((b, a), torch.mul(b, a))):
            got = _pointwise_strides(args, {}, out)
            assert all(g == w for g, w, n in zip(got, out.stride(), out.shape) if n > 1), (args, got, out.stride())
