"""functx.jit: one trace per signature, static arguments, pytrees, kwargs, closures,
randomness, plain-tensor outputs, and composition with the other transforms."""
import pytest
import torch
import torch.nn.functional as F

import functx
from functx import TracerTensor

torch.manual_seed(0)
X = torch.randn(3, 4)


def test_traces_once_per_signature():
    calls = []

    def f(x):
        calls.append(type(x))
        return x * 2 + 1

    j = functx.jit(f)
    for _ in range(3):
        x = torch.randn(3, 4)
        torch.testing.assert_close(j(x), x * 2 + 1)
    assert j.trace_count == 1 and j.cache_size() == 1 and len(calls) == 1
    assert calls[0] is TracerTensor             # traced once, with a tracer; later calls skip f
    j(torch.randn(5, 4))                        # new shape
    assert j.trace_count == 2
    j(torch.randn(3, 4, dtype=torch.float64))   # new dtype
    assert j.trace_count == 3
    j(torch.randn(3, 4).to(torch.int32))
    assert j.trace_count == 4
    j(torch.randn(3, 4))                        # an old signature is still cached
    j(torch.randn(5, 4))
    assert j.trace_count == 4 and j.cache_size() == 4 and len(calls) == 4


def test_retrace_on_pytree_structure_and_non_tensor_leaves():
    j = functx.jit(lambda xs: sum(x.sum() for x in xs))
    j([X, X])
    j([X, X])
    assert j.trace_count == 1
    j([X, X, X])
    j((X, X))                                   # tuple vs list: a different structure
    assert j.trace_count == 3

    k = functx.jit(lambda x, scale: x * scale)  # a Python number's type is part of the key, not its value
    torch.testing.assert_close(k(X, 2.0), X * 2)
    torch.testing.assert_close(k(X, 3.0), X * 3)
    assert k.trace_count == 1
    torch.testing.assert_close(k(X, 3), X * 3)
    assert k.trace_count == 2
    m = functx.jit(lambda x, mode: x * 2 if mode == "double" else x)   # other non-tensor leaves: by value
    torch.testing.assert_close(m(X, "double"), X * 2)
    torch.testing.assert_close(m(X, "same"), X)
    m(X, "same")
    assert m.trace_count == 2


def test_parameter_tuples_take_the_fast_path_and_stay_exact():
    """A tuple or list of plain tensors (a parameter tuple) is keyed on the fast path: each
    of its tensors' (shape, dtype, device), and tuple vs list; the graph gets its tensors in
    pytree order, Python numbers beside it on the first tensor's device."""
    def f(params, x, scale):
        w, b = params
        return (x @ w + b) * scale
    j = functx.jit(f)
    w, b = torch.randn(4, 2), torch.randn(2)
    for _ in range(2):
        torch.testing.assert_close(j((w, b), X, 0.5), f((w, b), X, 0.5))
    w2 = torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(j((w2, b.double()), X.double(), 3.0), f((w2, b.double()), X.double(), 3.0))
    assert j.trace_count == 2
    torch.testing.assert_close(j([w, b], X, 2.0), f([w, b], X, 2.0))       # a list: another structure
    assert j.trace_count == 3
    torch.testing.assert_close(j((w, b), X, 0.25), f((w, b), X, 0.25))     # old signatures still cached
    assert j.trace_count == 3 and j._cache.hits == 2
    g = functx.jit(lambda ps, x: x * ps[0] + ps[1])                         # a non-tensor inside: general path
    torch.testing.assert_close(g((X, 2.0), X), X * X + 2.0)
    torch.testing.assert_close(g((X, 3.0), X), X * X + 3.0)
    assert g.trace_count == 1


def test_static_argnums():
    j = functx.jit(lambda x, n, dims: x.sum(dims) * n, static_argnums=(1, 2))
    torch.testing.assert_close(j(X, 2, (0,)), X.sum(0) * 2)
    torch.testing.assert_close(j(X, 2, (0,)), X.sum(0) * 2)
    assert j.trace_count == 1
    torch.testing.assert_close(j(X, 3, (0,)), X.sum(0) * 3)   # a new static value retraces
    torch.testing.assert_close(j(X, 3, (1,)), X.sum(1) * 3)
    assert j.trace_count == 3

    # static values may steer Python control flow
    def g(x, mode):
        if mode == "relu":
            return torch.relu(x)
        return torch.tanh(x)
    jg = functx.jit(g, static_argnums=1)
    torch.testing.assert_close(jg(X, "relu"), torch.relu(X))
    torch.testing.assert_close(jg(X, "tanh"), torch.tanh(X))
    neg = functx.jit(g, static_argnums=-1)
    torch.testing.assert_close(neg(X, "relu"), torch.relu(X))


def test_static_args_must_be_hashable():
    j = functx.jit(lambda x, dims: x.sum(dims), static_argnums=1)
    with pytest.raises(TypeError, match=r"static argument 1 is a list, which is not hashable"):
        j(X, [0])
    with pytest.raises(TypeError, match=r"static argument 1 is a tensor"):
        functx.jit(lambda x, y: x * y, static_argnums=1)(X, X)


def test_pytrees_in_and_out():
    def f(params, batch):
        h = batch["x"] @ params["w"] + params["b"]
        return {"out": h, "stats": (h.mean(), [h.max()])}

    params = {"w": torch.randn(4, 5), "b": torch.randn(5)}
    batch = {"x": X}
    out = functx.jit(f)(params, batch)
    ref = f(params, batch)
    assert set(out) == {"out", "stats"} and isinstance(out["stats"], tuple) and isinstance(out["stats"][1], list)
    torch.testing.assert_close(out["out"], ref["out"])
    torch.testing.assert_close(out["stats"][0], ref["stats"][0])
    torch.testing.assert_close(out["stats"][1][0], ref["stats"][1][0])
    assert functx.jit(lambda x: None)(X) is None


def test_kwargs():
    def f(x, scale=1.0, shift=None):
        return x * scale + (0 if shift is None else shift)

    j = functx.jit(f)
    torch.testing.assert_close(j(X), X)
    torch.testing.assert_close(j(X, scale=2.0), X * 2)
    torch.testing.assert_close(j(X, shift=X), 2 * X)
    torch.testing.assert_close(j(x=X, shift=X), 2 * X)
    n = j.trace_count
    torch.testing.assert_close(j(X, shift=X + 1), 2 * X + 1)   # same signature: cached
    assert j.trace_count == n


def test_closures_over_tensors_are_constants():
    w = torch.randn(4, 4)
    j = functx.jit(lambda x: x @ w)
    torch.testing.assert_close(j(X), X @ w)
    g = functx.make_graph(lambda x: x @ w)(X)
    assert len(g.consts) == 1 and g.consts[0] is w
    assert "consts(c0: f32[4,4])" in str(g)


def test_outputs_are_plain_tensors():
    j = functx.jit(lambda x: (x + 1, {"a": x.sum()}, x))
    outs = j(X)
    for o in (outs[0], outs[1]["a"], outs[2]):
        assert type(o) is torch.Tensor
    torch.testing.assert_close(outs[2], X)
    g = functx.jit(functx.grad(lambda x: (x ** 2).sum()))(X)
    assert type(g) is torch.Tensor


def test_fresh_random_numbers_per_call():
    j = functx.jit(lambda x: x + torch.randn_like(x))
    a, b = j(X), j(X)
    assert j.trace_count == 1 and not torch.equal(a, b)
    d = functx.jit(lambda x: F.dropout(x, 0.5, training=True))
    a, b = d(torch.ones(64, 64)), d(torch.ones(64, 64))
    assert not torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0.0, 2.0}
    r = functx.jit(lambda x: x * torch.rand_like(x))
    assert not torch.equal(r(X), r(X))


def test_random_factories_without_tensor_arguments_are_not_baked_in():
    """torch.randn(shape) takes no traced argument; it must still draw fresh numbers per call."""
    j = functx.jit(lambda x: x + torch.randn(3, 4))
    a, b = j(X), j(X)
    assert not torch.equal(a, b)
    k = functx.jit(lambda x: x + torch.rand(3, 4) + torch.randint(0, 5, (3, 4)))
    assert not torch.equal(k(X), k(X))


def test_seeded_randomness_is_reproducible():
    j = functx.jit(lambda x: x + torch.randn_like(x))
    torch.manual_seed(123)
    a = j(X)
    torch.manual_seed(123)
    assert torch.equal(a, j(X))


def test_transforms_inside_jit():
    f = lambda x: (x.sin() * x).sum()
    xs = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(functx.jit(functx.vmap(functx.grad(f)))(xs),
                               torch.func.vmap(torch.func.grad(f))(xs))
    torch.testing.assert_close(functx.jit(functx.hessian(f))(xs[0]), torch.func.hessian(f)(xs[0]))
    j = functx.jit(functx.value_and_grad(f))
    v, g = j(xs[0])
    torch.testing.assert_close(v, f(xs[0]))
    torch.testing.assert_close(g, torch.func.grad(f)(xs[0]))


def test_jit_inside_transforms():
    f = lambda x: (x.sin() * x).sum()
    jf = functx.jit(f)
    xs = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(functx.grad(jf)(xs[0]), torch.func.grad(f)(xs[0]))
    torch.testing.assert_close(functx.vmap(jf)(xs), torch.func.vmap(f)(xs))
    torch.testing.assert_close(functx.vmap(functx.grad(jf))(xs), torch.func.vmap(torch.func.grad(f))(xs))
    assert jf.trace_count == 0          # under a transform a jitted function inlines
    torch.testing.assert_close(functx.jit(functx.grad(jf))(xs[0]), torch.func.grad(f)(xs[0]))
    torch.testing.assert_close(functx.jit(functx.jit(f))(xs[0]), f(xs[0]))


def test_mutated_inputs_are_written_back():
    def f(x, d):
        x.mul_(2)
        d["buf"][0] = 7.0
        d["buf"].t()[1, 0] += 1.0
        return x + d["buf"]

    j = functx.jit(f)
    for _ in range(2):                  # the trace and a cached call
        a, da = X.clone(), {"buf": X.clone()}
        b, db = X.clone(), {"buf": X.clone()}
        torch.testing.assert_close(j(a, da), f(b, db))
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(da["buf"], db["buf"])
    assert j.trace_count == 1


def test_make_graph_and_explain():
    def f(x, n):
        return (x * n).relu().sum(1)
    g = functx.make_graph(f, static_argnums=1)(X, 3)
    assert "mul(t0, 3" in str(g)
    g.check()
    e = functx.explain(f, static_argnums=1, backend="eager")(X, 3)
    assert e.fallbacks == [] and e.kernels == [] and e.backend == "eager"
    text = str(e)
    assert "-- graph --" in text and "fallbacks: none" in text


def test_eager_backend_runs_generated_code_without_tracers():
    seen = []
    j = functx.jit(lambda x: seen.append(1) or x.exp(), backend="eager")
    j(X)
    j(X)
    assert len(seen) == 1
    entry, tensors = j.lower(X)
    assert "torch.exp(a0)" in entry.compiled.source
    assert not any(isinstance(t, TracerTensor) for t in tensors)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_jit_cuda_device_is_part_of_the_signature():
    j = functx.jit(lambda x: x * 2, backend="eager")
    j(X)
    out = j(X.cuda())
    assert out.device.type == "cuda" and j.trace_count == 2
    torch.testing.assert_close(out.cpu(), X * 2)


def test_eager_backend_outputs_carry_torch_autograd():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.GELU(), torch.nn.LayerNorm(16),
                            torch.nn.Linear(16, 2))
    x = torch.randn(5, 3)
    functx.jit(m, backend="eager")(x).pow(2).sum().backward()
    jit_grads = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m(x).pow(2).sum().backward()
    for a, b in zip(jit_grads, [p.grad for p in m.parameters()]):
        torch.testing.assert_close(a, b)


def test_default_dtype_and_autocast_are_part_of_the_key():
    # a graph traced under one default dtype or autocast state served calls in another:
    # torch.zeros(3) inside f stayed float32 after set_default_dtype(float64); a graph traced
    # under autocast returned bfloat16 to plain calls (and the fused CPU tier ignores autocast)
    f = lambda x: x + torch.ones(3) + torch.arange(3.0)
    jitted = functx.jit(f)
    x = torch.ones(3)
    jitted(x)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert jitted(x).dtype == f(x).dtype == torch.float64
    finally:
        torch.set_default_dtype(old)
    assert "default dtype torch.float32 -> torch.float64" in str(jitted.cache_info())

    lin = torch.nn.Linear(3, 3)
    g = lambda x: lin(x).relu() * 2
    jitted = functx.jit(g)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert jitted(x[None]).dtype == g(x[None]).dtype == torch.bfloat16
        assert jitted(x[None]).dtype == g(x[None]).dtype == torch.float32
