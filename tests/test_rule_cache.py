"""Cached, generated jvp / transpose / batch rules of eager transforms (transforms/rule_cache.py):
they compute what the rules compute, are built once per static signature, and fall back to
the rule where they do not apply."""
import importlib

import pytest
import torch
import torch.func
import torch.nn.functional as F

import functx
from functx import prims as P
from functx.core.primitive import REGISTRY
from functx.transforms import impl_rewrites

rule_cache = importlib.import_module("functx.transforms.rule_cache")
batch_rule_cache = importlib.import_module("functx.transforms.batch_rule_cache")
lowered_ops = importlib.import_module("functx.frontend.lowered_ops")
function_units = importlib.import_module("functx.frontend.function_units")
tensor_module = importlib.import_module("functx.frontend.tensor")


def _clear_caches():
    """Rules are cached per primitive and per ATen op: a test that swaps a rule starts afresh."""
    rule_cache.JVP_RULES.clear()
    batch_rule_cache.BATCH_RULES.clear()
    lowered_ops.CACHE.clear()
    function_units.CACHE.clear()


def _close(a, b):
    # a few float32 ulps: generated impl code runs `x @ W + b` as one addmm, which rounds the
    # bias's add apart from mm-then-add (impl_rewrites.fuse_bias_matmuls)
    torch.testing.assert_close(a, b, rtol=4e-6, atol=4e-7)


@pytest.fixture
def uncached(monkeypatch):
    """Run transforms with every rule as written (no cached rules)."""
    def run(fn, *args):
        with monkeypatch.context() as m:
            m.setattr(rule_cache, "allowed", lambda prim: False)
            for prim in REGISTRY.values():
                m.setitem(rule_cache.ALLOWED, prim, False)
            m.setattr(lowered_ops, "run_cached", lambda *a: NotImplemented)
            m.setattr(importlib.import_module("functx.frontend.dispatch"), "run_cached", lambda *a: NotImplemented)
            m.setattr(tensor_module, "run_function_unit", lambda *a: NotImplemented)
            return fn(*args)
    return run


def _mlp(params, x):
    w1, b1, w2, b2 = params
    h = torch.tanh(x @ w1 + b1)
    return F.log_softmax(h @ w2 + b2, -1)


def _loss(params, x, y):
    return F.cross_entropy(_mlp(params, x), y) + 0.5 * sum((p ** 2).sum() for p in params)


def _odd_ops(x):
    # scalars on either side, pow, where, clamp, sort (multiple results), reductions, views
    y = (2.0 - x) * x ** 3 / (1.5 + x.abs()) + torch.where(x > 0, x.sin(), -x.cos())
    s, _ = torch.sort(y, dim=-1)
    return (s.cumsum(-1)[..., ::2].clamp(-1, 1).exp().T @ y).logsumexp(0).sum() + y.max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cached_rules_compute_what_the_rules_compute(uncached, dtype):
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(5, 7, generator=g, dtype=dtype), torch.randn(7, generator=g, dtype=dtype),
              torch.randn(7, 3, generator=g, dtype=dtype), torch.randn(3, generator=g, dtype=dtype)]
    x = torch.randn(4, 5, generator=g, dtype=dtype)
    y = torch.tensor([0, 2, 1, 2])
    v = [torch.randn_like(p) for p in params]
    one = lambda p, x, y: _loss(p, x[None], y[None])  # noqa: E731
    cases = {
        "grad": lambda: functx.grad(_loss)(params, x, y),
        "jvp": lambda: functx.jvp(lambda p: _loss(p, x, y), (params,), (v,)),
        "vmap": lambda: functx.vmap(_mlp, in_dims=(None, 0))(params, x),
        "vmap(grad)": lambda: functx.vmap(functx.grad(one), in_dims=(None, 0, 0))(params, x, y),
        "hvp": lambda: functx.jvp(lambda p: functx.grad(_loss)(p, x, y), (params,), (v,))[1],
        "jacrev": lambda: functx.jacrev(_odd_ops)(x),
        "jacfwd": lambda: functx.jacfwd(_odd_ops)(x),
        "vmap(jvp)": lambda: functx.vmap(lambda t: functx.jvp(_odd_ops, (x,), (t,))[1])(torch.stack([x, -x])),
        "grad(grad)": lambda: functx.grad(lambda z: functx.grad(_odd_ops)(z).sin().sum())(x),
    }
    for name, case in cases.items():
        for _ in range(2):          # the second call runs the cached rules
            got = case()
        want = uncached(case)
        for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
            _close(a, b)
    # and the oracle
    _close(functx.grad(_odd_ops)(x), torch.func.grad(_odd_ops)(x))
    _close(functx.jacfwd(_odd_ops)(x), torch.func.jacfwd(_odd_ops)(x))


def test_rules_are_traced_once_per_signature(monkeypatch):
    calls = []
    jvp, batch = REGISTRY['sin'].jvp, REGISTRY['sin'].batch
    monkeypatch.setattr(REGISTRY['sin'], "jvp", lambda *a, **k: calls.append("jvp") or jvp(*a, **k))
    monkeypatch.setattr(REGISTRY['sin'], "batch", lambda *a, **k: calls.append("batch") or batch(*a, **k))
    _clear_caches()
    f = functx.grad(lambda x: torch.sin(x).sum())
    for _ in range(3):
        _close(f(torch.ones(3)), torch.ones(3).cos())
    assert calls == ["jvp"]          # traced on the first call, generated code after
    f(torch.ones(4))                 # a new shape is a new signature
    assert calls == ["jvp", "jvp"]
    vf = functx.vmap(torch.sin)
    for _ in range(3):
        _close(vf(torch.ones(2, 3)), torch.ones(2, 3).sin())
    assert calls.count("batch") <= 1


@pytest.mark.parametrize("c", [0.0, -0.0, float("nan"), float("inf"), 2, True])
def test_scalar_operands_key_on_their_exact_value(c):
    # -0.0 == 0.0 and 2 == 2.0 == True as dict keys: the cache must still tell them apart
    x = torch.tensor([1.0, -2.0, 3.0])
    for d in (0.0, -0.0, float("nan"), c):
        got = functx.grad(lambda x: (x * d).sum())(x)
        want = torch.func.grad(lambda x: (x * d).sum())(x)
        torch.testing.assert_close(got, want, equal_nan=True)
        assert torch.equal(torch.signbit(got), torch.signbit(want))
    got = functx.jvp(lambda x: x * c, (x,), (torch.ones(3),))[1]
    want = torch.func.jvp(lambda x: x * c, (x,), (torch.ones(3),))[1]
    torch.testing.assert_close(got, want, equal_nan=True)
    assert got.dtype == want.dtype


def test_a_rule_that_needs_values_falls_back(monkeypatch):
    """A jvp rule that reads a concrete value can't be traced abstractly: it is marked
    uncacheable and runs as written on every call."""
    jvp = REGISTRY['sin'].jvp

    def value_dependent(primals, tangents, **params):
        scale = 2.0 if float(functx.core.trace.concrete(primals[0]).sum()) > 0 else 3.0
        out, t = jvp(primals, tangents, **params)
        return out, P.mul(t, scale)
    monkeypatch.setattr(REGISTRY['sin'], "jvp", value_dependent)
    _clear_caches()
    f = functx.grad(lambda x: torch.sin(x).sum())
    _close(f(torch.ones(3)), 2 * torch.ones(3).cos())
    _close(f(-torch.ones(3)), 3 * torch.ones(3).cos())
    assert rule_cache.UNCACHEABLE in rule_cache.JVP_RULES.values()


def test_errors_and_leaks_are_reported_as_before():
    leaked = []

    def f(x):
        leaked.append(x * 2)
        return torch.sin(x).sum()
    functx.grad(f)(torch.ones(3))
    with pytest.raises(functx.FunctxError, match="leaked tracer"):
        functx.grad(lambda y: (torch.sin(leaked[0]) * y).sum())(torch.ones(3))
    with pytest.raises(RuntimeError):
        functx.grad(lambda x: (x @ torch.ones(4, 2)).sum())(torch.ones(2, 3))


def test_closed_over_parameters_keep_torch_autograd():
    w = torch.nn.Parameter(torch.randn(3))
    g = functx.grad(lambda x: (torch.sin(x * w)).sum())(torch.ones(3))
    _close(g, torch.cos(w.detach()) * w.detach())
    assert g.requires_grad          # PyTorch autograd sees through functx's result, as before


def test_the_default_dtype_is_part_of_every_signature():
    # promotion (an int tensor times a Python float) and torch.where of two Python numbers
    # give the default dtype: the cached lowering and rules of the same op on the same
    # operands differ by it
    x, t = torch.tensor([1.0, -2.0, 3.0]), torch.ones(3)
    f = lambda x: torch.where(x > 0, 0.5, 2.0) * x  # noqa: E731
    prev = torch.get_default_dtype()
    try:
        for dtype in (torch.float32, torch.float64, torch.float32):
            torch.set_default_dtype(dtype)
            got = functx.jvp(f, (x,), (t,))
            want = torch.func.jvp(f, (x,), (t,))
            for a, b in zip(got, want):
                assert a.dtype == b.dtype
                _close(a, b)
            _close(functx.vmap(f)(x[:, None]), torch.func.vmap(f)(x[:, None]))
            ints = torch.arange(6).reshape(3, 2)     # int * float: the default dtype (promotion)
            _close(functx.vmap(lambda i: i * 0.5)(ints), torch.func.vmap(lambda i: i * 0.5)(ints))
    finally:
        torch.set_default_dtype(prev)


def test_generated_impl_code_passes_broadcasts_unexpanded():
    """impl_rewrites.elide_broadcasts: an operand broadcast only for a pointwise op is passed
    as is (or reshaped to the result's rank when the new dims are not leading); a broadcast
    that is also returned or read elsewhere is kept."""
    g = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(4, 3, generator=g), torch.randn(4, generator=g), torch.randn(3, generator=g)

    def f(x, w, b):
        y = x * w[:, None] + b                       # new trailing dim; new leading dim
        z = torch.where(y > 0, y, b) - y.mean(1, keepdim=True) / y.sum(0)
        return (z * z.tanh()).sum() + (z.exp() * b).mean()
    cases = {
        "grad": (functx.grad(f, argnums=(0, 1, 2)), torch.func.grad(f, argnums=(0, 1, 2)), (x, w, b)),
        "jvp": (lambda *a: functx.jvp(f, a, (x.cos(), w.sin(), b)),
                lambda *a: torch.func.jvp(f, a, (x.cos(), w.sin(), b)), (x, w, b)),
        "vmap over dim 1": (functx.vmap(f, in_dims=(1, None, 0)), torch.func.vmap(f, in_dims=(1, None, 0)),
                            (torch.randn(4, 5, 3, generator=g), w, torch.randn(5, 3, generator=g))),
        "vmap(grad)": (functx.vmap(functx.grad(f), in_dims=(0, None, None)),
                       torch.func.vmap(torch.func.grad(f), in_dims=(0, None, None)),
                       (torch.randn(2, 4, 3, generator=g), w, b)),
    }
    for name, (fx, tf, args) in cases.items():
        for _ in range(2):           # the second call runs the generated code
            got = fx(*args)
        for a, b_ in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(tf(*args))):
            torch.testing.assert_close(a, b_, rtol=1e-5, atol=1e-6, msg=name)
    # on IR: the broadcast read only by mul goes, the one also returned stays
    from functx.core import Var
    from functx.core.ir import Eqn
    from functx.core.types import TensorType
    t3, t43 = TensorType((3,), torch.float32, torch.device("cpu")), TensorType((4, 3), torch.float32, torch.device("cpu"))
    a, v, bb, m = Var(t3), Var(t43), Var(t43), Var(t43)
    eqns = [Eqn(REGISTRY["broadcast_in_dim"], [a], [bb], {"shape": (4, 3), "broadcast_dimensions": (1,)}),
            Eqn(REGISTRY["mul"], [v, bb], [m], {})]
    out = impl_rewrites.elide_broadcasts(eqns, {m})
    assert [e.prim.name for e in out] == ["mul"] and out[0].inputs == [v, a]
    out = impl_rewrites.elide_broadcasts(eqns, {m, bb})
    assert [e.prim.name for e in out] == ["broadcast_in_dim", "mul"]


def _second_calls_match(cases, rtol=1e-10, atol=1e-12):
    """cases: name -> (functx function, torch.func function, args); each function's second
    call (which runs the generated code) gives torch.func's values."""
    for name, (fx, tf, args) in cases.items():
        for _ in range(2):
            got = fx(*args)
        for a, b_ in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(tf(*args))):
            torch.testing.assert_close(a, b_, rtol=rtol, atol=atol, msg=name)


def test_generated_impl_code_runs_a_bias_matmul_as_one_addmm():
    """impl_rewrites.fuse_bias_matmuls: `x @ W + b` (2-D, one dtype, the product read by the add
    alone) runs as torch.addmm in generated impl code, under every transform, with the same
    values as torch.func; a product that is also read elsewhere, returned, or added to an
    operand of another dtype keeps its two kernels."""
    g = torch.Generator().manual_seed(5)
    x, W, b = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64), \
        torch.randn(3, generator=g, dtype=torch.float64)
    col = torch.randn(6, 1, generator=g, dtype=torch.float64)

    def f(x, W, b):
        h = torch.tanh(x @ W + b)                    # a row bias
        k = col + h @ W.T[:3, :3]                    # a column bias, first operand; a transposed rhs
        return (k * k).sum() + (x.T @ x + 1.0).sum()   # a literal bias: not fused
    cases = {
        "grad": (functx.grad(f, argnums=(0, 1, 2)), torch.func.grad(f, argnums=(0, 1, 2)), (x, W, b)),
        "jvp": (lambda *a: functx.jvp(f, a, (x.cos(), W.sin(), b)),
                lambda *a: torch.func.jvp(f, a, (x.cos(), W.sin(), b)), (x, W, b)),
        "vmap": (functx.vmap(f, in_dims=(0, None, None)), torch.func.vmap(f, in_dims=(0, None, None)),
                 (torch.randn(2, 6, 4, generator=g, dtype=torch.float64), W, b)),
        "hessian": (functx.hessian(f, argnums=2), torch.func.hessian(f, argnums=2), (x, W, b)),
    }
    _second_calls_match(cases)
    # on IR
    from functx.core import Var
    from functx.core.ir import Eqn
    from functx.core.types import TensorType
    cpu = torch.device("cpu")
    tx, tw, tb, to = (TensorType(s, torch.float32, cpu) for s in ((6, 4), (4, 3), (3,), (6, 3)))
    xv, wv, bv, d, o = Var(tx), Var(tw), Var(tb), Var(to), Var(to)
    dn = {"dimension_numbers": (((1,), (0,)), ((), ()))}
    eqns = [Eqn(REGISTRY["dot_general"], [xv, wv], [d], dn), Eqn(REGISTRY["add"], [d, bv], [o], {})]
    out = impl_rewrites.fuse_bias_matmuls(eqns, {o})
    assert [e.prim.name for e in out] == ["addmm"] and out[0].inputs == [bv, xv, wv]
    assert out[0].prim.emit(out[0], ["b", "x", "w"]) == "torch.addmm(b, x, w)"
    assert [e.prim.name for e in impl_rewrites.fuse_bias_matmuls(eqns, {o, d})] == ["dot_general", "add"]
    b64 = Var(TensorType((3,), torch.float64, cpu))
    mixed = [eqns[0], Eqn(REGISTRY["add"], [d, b64], [Var(TensorType((6, 3), torch.float64, cpu))], {})]
    assert [e.prim.name for e in impl_rewrites.fuse_bias_matmuls(mixed, set())] == ["dot_general", "add"]


def test_generated_impl_code_runs_a_conv_and_its_bias_as_one_convolution():
    """impl_rewrites.fuse_bias_convs: `conv(x, w) + b` with b a per-channel bias (nn.Conv's
    bias, reshaped or broadcast along dim 1) runs as torch.convolution(x, w, b) in generated
    impl code, under every transform, with torch.func's values; a conv result also read
    elsewhere, or a bias along another dim, keeps its add."""
    g = torch.Generator().manual_seed(7)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1).double()
    tconv = torch.nn.ConvTranspose1d(4, 2, 3, stride=2).double()
    x = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64)
    row = torch.randn(5, generator=g, dtype=torch.float64)

    def f(p, x):
        h = torch.func.functional_call(conv, {k[2:]: v for k, v in p.items() if k.startswith("c.")}, (x,))
        y = torch.func.functional_call(tconv, {k[2:]: v for k, v in p.items() if k.startswith("t.")},
                                       (h.tanh().mean(3),))
        raw = F.conv2d(x, p["c.weight"]) + row[:3]              # a bias along the last dim: kept
        return y.pow(2).sum() + raw.sin().sum()
    p = {**{"c." + k: v for k, v in conv.named_parameters()}, **{"t." + k: v for k, v in tconv.named_parameters()}}
    cases = {
        "grad": (functx.grad(f, argnums=(0, 1)), torch.func.grad(f, argnums=(0, 1)), (p, x)),
        "jvp": (lambda p, x: functx.jvp(lambda x: f(p, x), (x,), (x.cos(),)),
                lambda p, x: torch.func.jvp(lambda x: f(p, x), (x,), (x.cos(),)), (p, x)),
        "vmap": (functx.vmap(f, in_dims=(None, 0)), torch.func.vmap(f, in_dims=(None, 0)), (p, x[:, None])),
    }
    _second_calls_match(cases)
    # on IR
    from functx.core import Var
    from functx.core.ir import Eqn
    from functx.core.types import TensorType
    cpu = torch.device("cpu")
    tx, tw, tb, to, tv = (TensorType(s, torch.float32, cpu)
                          for s in ((2, 3, 5, 5), (4, 3, 3, 3), (4,), (2, 4, 3, 3), (1, 4, 1, 1)))
    xv, wv, bv, d, v, o = Var(tx), Var(tw), Var(tb), Var(to), Var(tv), Var(to)
    params = {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "transposed": False,
              "output_padding": (0, 0), "groups": 1}
    eqns = [Eqn(REGISTRY["conv"], [xv, wv], [d], params), Eqn(REGISTRY["reshape"], [bv], [v], {"shape": (1, 4, 1, 1)}),
            Eqn(REGISTRY["add"], [d, v], [o], {})]
    out = impl_rewrites.fuse_bias_convs(eqns, {o})
    assert [e.prim.name for e in out] == ["conv_bias"] and out[0].inputs == [xv, wv, bv]
    assert out[0].prim.emit(out[0], ["x", "w", "b"]).startswith("torch.convolution(x, w, b, ")
    assert [e.prim.name for e in impl_rewrites.fuse_bias_convs(eqns, {o, d})] == ["conv", "reshape", "add"]
    assert [e.prim.name for e in impl_rewrites.fuse_bias_convs(eqns, {o, v})] == ["reshape", "conv_bias"]


def test_generated_impl_code_runs_a_convs_two_cotangents_as_one_convolution_backward():
    """impl_rewrites.fuse_conv_backwards: a conv's input and weight cotangents of one cotangent
    run as one torch convolution_backward (autograd's kernel) in generated transpose code,
    for strided (odd sizes: output_padding recovers the rows the stride skipped), grouped,
    dilated, transposed, 1-d and 3-d convs, with torch.func's values under grad, vmap(grad)
    and the Hessian-vector product."""
    from torch.profiler import profile
    g = torch.Generator().manual_seed(11)
    D = torch.float64
    cases = [
        (F.conv2d, (2, 4, 7, 7), (6, 2, 3, 3), dict(stride=2, padding=1, groups=2)),
        (F.conv2d, (2, 3, 8, 8), (4, 3, 3, 3), dict(dilation=2)),
        (F.conv1d, (3, 2, 10), (4, 2, 3), dict(stride=3)),                     # the last row skipped
        (F.conv3d, (1, 2, 4, 5, 4), (3, 2, 2, 3, 2), dict(padding=1)),
        (F.conv_transpose2d, (2, 4, 5, 5), (4, 3, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ]
    for op, xs, ws, kw in cases:
        x, w = torch.randn(*xs, generator=g, dtype=D), torch.randn(*ws, generator=g, dtype=D)

        def f(x, w, op=op, kw=kw):
            return op(x, w, **kw).tanh().pow(2).sum()
        grads = {
            "grad": (functx.grad(f, argnums=(0, 1)), torch.func.grad(f, argnums=(0, 1)), (x, w)),
            "vmap(grad)": (functx.vmap(functx.grad(f, argnums=(0, 1)), in_dims=(0, None)),
                           torch.func.vmap(torch.func.grad(f, argnums=(0, 1)), in_dims=(0, None)), (x[:, None], w)),
            "hvp": (lambda x, w: functx.jvp(functx.grad(f, argnums=(0, 1)), (x, w), (x.cos(), w.sin()))[1],
                    lambda x, w: torch.func.jvp(torch.func.grad(f, argnums=(0, 1)), (x, w), (x.cos(), w.sin()))[1],
                    (x, w)),
        }
        _second_calls_match(grads)
        with profile() as prof:
            functx.grad(f, argnums=(0, 1))(x, w)
        names = [e.name for e in prof.events()]
        assert names.count("aten::convolution_backward") == 1, (op, names)
        assert names.count("aten::convolution") == 1, (op, names)       # the forward


def test_a_float_that_changes_every_call_stops_building_units():
    """Units and rules are keyed by a Python float's value: a learning rate or a sampler's
    sigma that changes on every call would build (and keep) one per call. Past a budget per
    function, new float signatures run as written; results stay exact."""
    from functx.frontend import function_units, kernel_check, lowered_ops
    from functx.transforms import rule_cache
    x, w = torch.randn(8, 4, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64)
    f = lambda x, s: (torch.tanh(x @ w * s + s) * s).sum()  # noqa: E731
    g = functx.grad(f)
    verdicts = len(kernel_check._VERDICTS)
    for i in range(3 * lowered_ops.FloatSignatures.limit):
        s = 0.5 + i * 1e-3
        torch.testing.assert_close(g(x, s), torch.func.grad(f)(x, s))
    for budget in (function_units.FLOATS, lowered_ops.FLOATS, rule_cache.RULE_FLOATS):
        assert budget.builds and max(budget.builds.values()) <= lowered_ops.FloatSignatures.limit
    assert len(kernel_check._VERDICTS) - verdicts < 10       # dtype verdicts key a float by its type


def test_scalar_operands_as_0d_tensors_give_torch_s_bits():
    """Generated impl code passes a literal of add/sub/mul/div as a 0-dim tensor of the
    result's dtype (rule_cache._scalar_as_tensor): the same ATen kernel (a CPU scalar, div by
    its reciprocal), so the primal is bit for bit what plain torch computes."""
    def f(x):
        return (3.0 / (1.0 - x * 0.1) + x / 3.0 - 7 + 1e-7 * x) / 0.3

    for dtype in (torch.float32, torch.float64):
        x = torch.randn(5, 7, dtype=dtype)
        t = torch.randn(5, 7, dtype=dtype)
        for _ in range(2):
            out, tangent = functx.jvp(f, (x,), (t,))
            assert torch.equal(out, f(x))
            want = torch.func.jvp(f, (x,), (t,))[1]
            torch.testing.assert_close(tangent, want)
            torch.testing.assert_close(functx.grad(lambda x: f(x).sum())(x), torch.func.grad(lambda x: f(x).sum())(x))
    assert rule_cache._scalar_as_tensor is not None


def test_generated_impl_code_sums_adjacent_zero_pads_as_one_cat():
    """impl_rewrites.concat_summed_pads: slicing a value into adjacent pieces (chunk, split, a
    packed q/k/v projection) transposes to one zero pad per piece, summed; generated impl code
    runs them as one torch.cat (and one pad where the pieces leave zeros). Values as
    torch.func's under grad, vmap(grad) and hessian; on IR, pads read elsewhere, with a
    nonzero padding value or not side by side are kept."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 9, generator=g, dtype=torch.float64)

    def f(x):
        a, b, c = x.chunk(3, dim=1)
        d, e = x[:, 1:4], x[:, 4:6]                  # leaves zeros around: cat, then one pad
        return (a.sin() * b + c.exp()).sum() + (d * d).sum() + e.tanh().sum()
    cases = {"grad": (functx.grad(f), torch.func.grad(f), x),
             "vmap(grad)": (functx.vmap(functx.grad(f)), torch.func.vmap(torch.func.grad(f)), torch.stack([x, x.cos()])),
             "hessian": (functx.hessian(f), torch.func.hessian(f), x[:2])}
    for name, (fx, tf, arg) in cases.items():
        for _ in range(2):           # the second call runs the generated code
            got = fx(arg)
        torch.testing.assert_close(got, tf(arg), rtol=1e-12, atol=1e-12, msg=name)
    # on IR
    from functx.core import Var
    from functx.core.ir import Eqn
    from functx.core.types import TensorType
    cpu = torch.device("cpu")
    t = lambda *s: TensorType(s, torch.float64, cpu)      # noqa: E731
    a, b, c = Var(t(4, 3)), Var(t(4, 3)), Var(t(4, 2))
    pa, pb, pc, s1, s2 = Var(t(4, 9)), Var(t(4, 9)), Var(t(4, 9)), Var(t(4, 9)), Var(t(4, 9))
    pad = lambda x, out, lo, hi, value=0: Eqn(REGISTRY["pad"], [x], [out], {"config": ((0, 0, 0), (lo, hi, 0)),  # noqa: E731
                                                                             "value": value})
    add = lambda x, y, out: Eqn(REGISTRY["add"], [x, y], [out], {})     # noqa: E731
    eqns = [pad(a, pa, 0, 6), pad(b, pb, 3, 3), add(pb, pa, s1), pad(c, pc, 6, 1), add(s1, pc, s2)]
    out = impl_rewrites.concat_summed_pads(eqns, {s2})
    assert [e.prim.name for e in out] == ["concatenate", "pad"]
    assert out[0].inputs == [a, b, c] and out[1].params["config"] == ((0, 0, 0), (0, 1, 0)) and out[1].outputs == [s2]
    assert [e.prim.name for e in impl_rewrites.concat_summed_pads(eqns[:3], {s1})] == ["concatenate", "pad"]
    assert impl_rewrites.concat_summed_pads(eqns[:3], {s1, pa}) == eqns[:3]                  # pa read elsewhere
    assert impl_rewrites.concat_summed_pads([pad(a, pa, 0, 6, 1.0)] + eqns[1:3], {s1})[0].prim.name == "pad"
    apart = [pad(a, pa, 0, 6), pad(c, pc, 6, 1), add(pa, pc, s1)]                            # a gap at 3:6
    assert impl_rewrites.concat_summed_pads(apart, {s1}) == apart


def test_a_square_s_tangent_is_one_product_doubled():
    """mul(x, x) (x * x, x ** 2: every MSE): its tangent was t*x + x*t, two products and a sum
    forward and three kernels in the transpose; it is 2 (t*x), the same value (products
    commute, doubling is exact). Inside units and one op at a time; values as torch.func's."""
    x = torch.randn(4, 3, dtype=torch.float64)
    for f in (lambda x: (x * x).sum(), lambda x: (x ** 2).sum(), lambda x: (x.pow(2) * x.sin()).sum()):
        for _ in range(2):
            torch.testing.assert_close(functx.grad(f)(x), torch.func.grad(f)(x), rtol=0, atol=0)
            torch.testing.assert_close(functx.hessian(f)(x), torch.func.hessian(f)(x), rtol=1e-15, atol=0)
            torch.testing.assert_close(functx.jvp(f, (x,), (x.cos(),)), torch.func.jvp(f, (x,), (x.cos(),)), rtol=0, atol=0)
    ad = importlib.import_module("functx.transforms.ad")
    wrap, unwrap = functx.frontend.wrap, functx.frontend.unwrap
    def square(xs):
        w = wrap(xs[0])
        return [unwrap((w * w).sum())]
    _, graph, _ = ad.linearize_flat(square, [x], reverse=True)
    assert "add" not in [e.prim.name for e in graph.eqns], str(graph)
