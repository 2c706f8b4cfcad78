"""Fused primitives of eager transforms (prims/fused.py): log_softmax and nll_loss run torch's
kernels under eager grad/jvp/vmap, compute what torch.func computes there, and never reach a
staged graph (jit, make_graph), which keeps the decomposition."""
import importlib
import math

import pytest
import torch
import torch.func
import torch.nn.functional as F

import functx
from functx.core.primitive import REGISTRY
from functx.transforms import ad

function_units = importlib.import_module("functx.frontend.function_units")
FUSED = {REGISTRY["log_softmax"], REGISTRY["softmax"], REGISTRY["nll_loss"], REGISTRY["nll_loss_backward"], REGISTRY["tanh_backward"],
         REGISTRY["sigmoid_backward"], REGISTRY["relu"], REGISTRY["threshold_backward"], REGISTRY["max_pool"],
         REGISTRY["conv_weight_grad"], REGISTRY["gelu"], REGISTRY["gelu_backward"], REGISTRY["tanh_gelu_backward"]}


def _close(a, b, rtol=1e-5, atol=1e-6):
    la, lb = torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, equal_nan=True)


def _data(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 4, generator=g, dtype=dtype)
    x = torch.randn(6, 5, generator=g, dtype=dtype)
    y = torch.tensor([0, 3, -100, 2, 1, -100])
    v = torch.randn(5, 4, generator=g, dtype=dtype)
    return w, x, y, v


LOSSES = {
    "mean": lambda logits, y: F.cross_entropy(logits, y),
    "sum": lambda logits, y: F.cross_entropy(logits, y, reduction="sum"),
    "none": lambda logits, y: F.cross_entropy(logits, y, reduction="none").square().sum(),
    "ignore_index 3": lambda logits, y: F.cross_entropy(logits, y.clamp(min=0), ignore_index=3),
    "weight": lambda logits, y: F.cross_entropy(logits, y, weight=torch.arange(1.0, 5.0, dtype=logits.dtype)),
    "label_smoothing": lambda logits, y: F.cross_entropy(logits, y, label_smoothing=0.1),
    "nll of log_softmax dim 0": lambda logits, y: F.nll_loss(F.log_softmax(logits.T, 0).T, y),
    "one example": lambda logits, y: F.cross_entropy(logits[1], y[1]),
}


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_losses_match_torch_func(loss, dtype):
    w, x, y, v = _data(dtype)
    lf = LOSSES[loss]

    def f(w, x):
        return lf(torch.tanh(x @ w), y)

    def one(w, xi, yi):
        return lf(torch.tanh(xi[None] @ w), yi[None])
    for T in (functx,):
        cases = {
            "grad": lambda T: T.grad(f, argnums=(0, 1))(w, x),
            "jvp": lambda T: T.jvp(lambda w: f(w, x), (w,), (v,)),
            "hvp": lambda T: T.jvp(lambda w: T.grad(f)(w, x), (w,), (v,))[1],
            "jacrev": lambda T: T.jacrev(lambda x: F.log_softmax(x @ w, -1))(x),
        }
        if loss != "one example":
            keep = y >= 0
            cases["vmap(grad)"] = lambda T: T.vmap(T.grad(one), in_dims=(None, 0, 0))(w, x[keep], y[keep])
        for name, case in cases.items():
            want = case(torch.func)
            for _ in range(2):          # traced, then the cached rules
                _close(case(T), want)


def test_eager_levels_run_the_fused_kernels(monkeypatch):
    """Under eager grad the units of log_softmax / cross_entropy hold the fused primitives."""
    w, x, y, _ = _data()
    function_units.CACHE.clear()
    functx.grad(lambda w: F.cross_entropy(x @ w, y) + F.log_softmax(x @ w, 1).sum())(w)
    prims = {e.prim for _, op, *_ in function_units.CACHE.values() if op != "uncacheable" for e in op.graph_eqns}
    assert {REGISTRY["log_softmax"], REGISTRY["nll_loss"]} <= prims      # (nll_loss_backward: in its transpose)


@pytest.mark.parametrize("wrap", ["jit", "make_graph", "jit(grad)", "jit(vmap)"])
def test_staged_graphs_keep_the_decomposition(wrap):
    w, x, y, _ = _data()

    def f(w):
        return F.cross_entropy(x @ w, y) + F.log_softmax(x @ w, 0).mean() + torch.tanh(x @ w).sum() \
            + torch.sigmoid(x @ w).mean() + F.relu(x @ w).pow(2).sum() + F.gelu(x @ w).sum() \
            + F.gelu(x @ w, approximate="tanh").sum()
    fn = {"jit": f, "make_graph": f, "jit(grad)": functx.grad(f),
          "jit(vmap)": functx.vmap(f)}[wrap]
    arg = w if wrap != "jit(vmap)" else torch.stack([w, -w])
    graph = functx.make_graph(fn)(arg)
    assert not any(e.prim in FUSED for e in graph.eqns), str(graph)
    if wrap != "make_graph":
        _close(functx.jit(fn)(arg), {"jit": f, "jit(grad)": torch.func.grad(f),
                                      "jit(vmap)": torch.func.vmap(f)}[wrap](arg))


def test_a_rule_bound_at_a_graph_trace_records_the_decomposition():
    """A fused primitive bound at a GraphTrace that does not keep it (a rule's bind variant under
    jit, say) is recorded as what it stands for."""
    x = torch.randn(3, 4)
    graph = functx.make_graph(lambda x: functx.frontend.wrap(REGISTRY["log_softmax"].bind(
        functx.frontend.unwrap(x), axis=1)))(x)
    assert [e.prim.name for e in graph.eqns][-1] == "sub" and not any(e.prim in FUSED for e in graph.eqns)
    _close(functx.jit(lambda x: F.log_softmax(x, 1))(x), F.log_softmax(x, 1))


def test_all_ignored_targets_give_nan_as_torch():
    w, x, _, _ = _data()
    y = torch.full((6,), -100)
    f = lambda w: F.cross_entropy(x @ w, y)     # noqa: E731
    _close(functx.grad(f)(w), torch.func.grad(f)(w))
    assert torch.isnan(functx.vjp(f, w)[0])


ACTIVATIONS = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu, "gelu": F.gelu,
               "gelu_tanh": lambda z: F.gelu(z, approximate="tanh")}
DERIVATIVE_KERNEL = {"tanh": "tanh_backward", "sigmoid": "sigmoid_backward", "relu": "threshold_backward",
                     "gelu": "gelu_backward", "gelu_tanh": "tanh_gelu_backward"}


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_activation_derivatives_at_every_order(act):
    """tanh / sigmoid / relu / gelu differentiate through tanh_backward / sigmoid_backward /
    threshold_backward / gelu_backward (torch's derivative kernels) on eager levels: first to third order, forward and reverse, batched, against
    torch.func, and against float64 central differences for the third order."""
    a = ACTIVATIONS[act]
    g = torch.Generator().manual_seed(3)
    w = torch.randn(5, 4, generator=g, dtype=torch.float64)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    v = torch.randn(5, 4, generator=g, dtype=torch.float64)

    def f(w):
        return (a(x @ w) * a(2.0 * (x @ w))).sum()
    cases = {
        "grad": lambda T: T.grad(f)(w),
        "jvp": lambda T: T.jvp(f, (w,), (v,)),
        "hvp": lambda T: T.jvp(T.grad(f), (w,), (v,))[1],
        "hessian": lambda T: T.hessian(lambda z: a(z).pow(3).sum())(x[0]),
        "vmap(grad)": lambda T: T.vmap(T.grad(lambda xi: (a(xi @ w) ** 2).sum()))(x),
        "jacfwd(jacrev)": lambda T: T.jacfwd(T.jacrev(lambda z: a(z) * z))(x[0]),
    }
    for name, case in cases.items():
        for _ in range(3):          # a structure's first sighting, its combined unit, the cached one
            torch.testing.assert_close(case(functx), case(torch.func), rtol=1e-10, atol=1e-12)
    # third order: d/dt of the hvp along v, against central differences of the hvp
    hvp = lambda w: functx.jvp(functx.grad(f), (w,), (v,))[1]       # noqa: E731
    third = functx.jvp(hvp, (w,), (v,))[1]
    eps = 1e-5
    fd = (hvp(w + eps * v) - hvp(w - eps * v)) / (2 * eps)
    torch.testing.assert_close(third, fd, rtol=1e-6, atol=1e-7)
    # grad's linear graph holds the fused primitive (y its residual), a staged one the decomposition
    wrap, unwrap = functx.frontend.wrap, functx.frontend.unwrap
    _, graph, _ = ad.linearize_flat(lambda ws: [unwrap(f(wrap(ws[0])))], [w], reverse=True)
    assert REGISTRY[DERIVATIVE_KERNEL[act]] in {e.prim for e in graph.eqns}, str(graph)
    assert not FUSED & {e.prim for e in functx.make_graph(functx.grad(f))(w).eqns}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relu_is_torch_s_kernel_with_torch_s_derivative_at_zero_and_nan(dtype):
    """relu runs torch.relu on eager levels (it was two comparisons and two selects each way)
    and its derivative threshold_backward: 0 at 0 and -0.0 (relu(-0.0) is -0.0), 1 at NaN and
    inf, an infinite cotangent where x <= 0 gives 0 (a select, not a product): as torch.func,
    forward and reverse, batched and jitted."""
    x = torch.tensor([-1.0, 0.0, -0.0, 2.0, float("nan"), float("inf"), -float("inf")], dtype=dtype)
    ct = torch.tensor([1.0, float("inf"), 3.0, 4.0, 5.0, float("inf"), -float("inf")], dtype=dtype)
    out, pull = functx.vjp(torch.relu, x)
    torch.testing.assert_close(out, torch.relu(x), rtol=0, atol=0, equal_nan=True)       # NaN propagates
    assert torch.equal(out.signbit(), torch.relu(x).signbit())
    torch.testing.assert_close(pull(ct)[0], torch.func.vjp(torch.relu, x)[1](ct)[0], equal_nan=True)
    torch.testing.assert_close(functx.jvp(torch.relu, (x,), (ct,)), torch.func.jvp(torch.relu, (x,), (ct,)),
                               equal_nan=True)
    f = lambda x: F.relu(x).sum()           # noqa: E731
    torch.testing.assert_close(functx.vmap(functx.grad(f))(x[None]), torch.func.vmap(torch.func.grad(f))(x[None]),
                               equal_nan=True)
    torch.testing.assert_close(functx.jit(functx.grad(f))(x), torch.func.grad(f)(x), equal_nan=True)
    function_units.CACHE.clear()
    functx.grad(f)(x)
    prims = {e.prim for _, op, *_ in function_units.CACHE.values() if op != "uncacheable" for e in op.graph_eqns}
    assert REGISTRY["relu"] in prims


# ---------------------------------------------------------------- layer_norm / group_norm (prims/fused_norm.py)

def _norm_losses():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 8, 2, 3, generator=g, dtype=torch.float64)
    w, b = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    wl, bl = torch.randn(2, 3, generator=g, dtype=torch.float64), torch.randn(2, 3, generator=g, dtype=torch.float64)
    scale = torch.linspace(-1, 2, 3, dtype=torch.float64)

    def group(x, w):
        return (F.group_norm(x, 4, w, b).sin() * scale).sum()

    def layer(x, w):
        return (F.layer_norm(x, (2, 3), w, bl).tanh() * scale).sum()

    def layer_weight_only(x, w):
        return (F.layer_norm(x, (2, 3), w).tanh() * scale).sum()

    def batch(x, w):
        return (F.batch_norm(x, None, None, w, b, training=True).sin() * scale).sum()
    return {"group_norm": (group, x, w), "layer_norm": (layer, x, wl), "layer_norm(weight only)": (layer_weight_only, x, wl),
            "batch_norm": (batch, x, w)}


# which fused primitives each runs: the norm and its affine in one kernel where both weight
# and bias are given (prims/fused_norm_affine.py), the norm and a separate affine otherwise
_NORM_PRIMS = {"group_norm": {"normalize_rows", "normalize_tangent"},
               "layer_norm(weight only)": {"normalize_rows", "normalize_tangent"},
               "layer_norm": {"normalize_affine", "normalize_affine_cotangent"},
               "batch_norm": {"normalize_affine", "normalize_affine_cotangent"}}


@pytest.mark.parametrize("which", sorted(_NORM_PRIMS))
def test_norms_run_torch_kernels_on_eager_levels_and_match(which, monkeypatch):
    # eager levels bind normalize_rows (native_layer_norm) and normalize_tangent
    # (native_layer_norm_backward, its own transpose), or normalize_affine and its cotangent;
    # checked at every order against torch.func, forward mode against float64 finite
    # differences, and jit (the decomposition)
    fused_norm = importlib.import_module("functx.prims.fused_norm")
    fused_affine = importlib.import_module("functx.prims.fused_norm_affine")
    f, x, w = _norm_losses()[which]
    ran = []
    for p in (fused_norm.normalize_rows_p, fused_norm.normalize_tangent_p, fused_affine.normalize_affine_p,
              fused_affine.normalize_affine_cotangent_p, fused_affine.normalize_affine_tangent_p):
        monkeypatch.setattr(p, "impl", (lambda impl, name: lambda *a, **k: ran.append(name) or impl(*a, **k))(p.impl, p.name))
    function_units.CACHE.clear()
    _close(functx.grad(f, argnums=(0, 1))(x, w), torch.func.grad(f, argnums=(0, 1))(x, w))
    assert _NORM_PRIMS[which] <= set(ran), ran
    _close(functx.hessian(f)(x, w), torch.func.hessian(f)(x, w))
    _close(functx.jacfwd(functx.jacrev(f))(x, w), torch.func.hessian(f)(x, w))
    _close(functx.vmap(functx.grad(f), in_dims=(0, None))(x[:, None], w),
           torch.func.vmap(torch.func.grad(f), in_dims=(0, None))(x[:, None], w))
    t, eps = torch.randn_like(x), 1e-6
    fd = (f(x + eps * t, w) - f(x - eps * t, w)) / (2 * eps)
    torch.testing.assert_close(functx.jvp(lambda x: f(x, w), (x,), (t,))[1], fd, rtol=1e-6, atol=1e-6)
    graph = functx.make_graph(functx.grad(f))(x, w)
    assert "normalize" not in str(graph)
    _close(functx.jit(functx.grad(f))(x, w), torch.func.grad(f)(x, w))


@pytest.mark.parametrize("which", ["layer_norm", "layer_norm(no affine)", "batch_norm"])
def test_forward_over_forward_of_norms_matches_the_formula_and_finite_differences(which):
    """jvp of jvp through layer_norm / training batch_norm, the inner tangent depending on the
    point (normalize_affine_tangent's and normalize_tangent's own jvp rules): the same as the
    norm written out as a formula (under functx and torch.func) and as float64 central
    differences of the inner directional derivative. torch.func's F.layer_norm / F.batch_norm
    give other numbers here (torch 2.13: -0.364 and -1.892 where the formula and the
    differences give -0.183 and -0.604; its fused norms' forward-over-forward formula is
    wrong when the inner tangent depends on the point); the differences decide."""
    g = torch.Generator().manual_seed(4)
    D = torch.float64
    x = torch.randn(3, 4, generator=g, dtype=D)
    w, b = torch.randn(4, generator=g, dtype=D), torch.randn(4, generator=g, dtype=D)
    fused = {"layer_norm": lambda x: F.layer_norm(x, (4,), w, b), "layer_norm(no affine)": lambda x: F.layer_norm(x, (4,)),
             "batch_norm": lambda x: F.batch_norm(x, None, None, w, b, training=True)}[which]
    dims = 0 if which == "batch_norm" else -1
    affine = which != "layer_norm(no affine)"

    def formula(x):
        xc = x - x.mean(dims, keepdim=True)
        y = xc / torch.sqrt((xc * xc).mean(dims, keepdim=True) + 1e-5)
        return y * w + b if affine else y

    def inner(T, norm):
        return lambda x: T.jvp(lambda y: (norm(y) ** 3).sum(), (x,), (x.cos(),))[1]
    got = functx.jvp(inner(functx, fused), (x,), (x.sin(),))[1]
    for want in (functx.jvp(inner(functx, formula), (x,), (x.sin(),))[1],
                 torch.func.jvp(inner(torch.func, formula), (x,), (x.sin(),))[1]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    eps = 1e-6
    fd = (inner(torch.func, formula)(x + eps * x.sin()) - inner(torch.func, formula)(x - eps * x.sin())) / (2 * eps)
    torch.testing.assert_close(got, fd, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float64), (torch.float64, torch.float32),
                                    (torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)])
def test_norm_parameter_dtypes_follow_torch_s_cpu_rule(dtypes):
    # torch's CPU kernels take parameters of the input's dtype (or float32 for a bfloat16 input)
    # and raise otherwise; the decompositions computed anyway
    xd, wd = dtypes
    x, w = torch.randn(2, 8, 3, dtype=xd), torch.randn(8, dtype=wd)

    def losses(x):
        return F.group_norm(x, 4, w).float().sum() + F.layer_norm(x, (3,), None, w[:3]).float().sum()
    try:
        want = losses(x)
    except RuntimeError as e:
        for how in (functx.grad(losses), functx.jit(losses), functx.jit(functx.grad(losses))):
            with pytest.raises(RuntimeError, match="mixed dtype"):
                how(x)
        assert "mixed dtype" in str(e)
        return
    torch.testing.assert_close(functx.jit(losses)(x), want, rtol=2e-2, atol=2e-2)
    functx.grad(losses)(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_under_eager_transforms_is_torch_s_kernel(dtype):
    # the decomposition's division rounded 1 ulp from torch's kernel on some rows (AVX-512),
    # so eager functx's softmax differed from eager torch's in the last bit
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(8, 33, generator=g, dtype=dtype), torch.randn(8, 33, generator=g, dtype=dtype)
    f = lambda x: torch.softmax(x, -1)  # noqa: E731
    assert torch.equal(functx.vmap(f)(x), f(x))
    out, tan = functx.jvp(f, (x,), (t,))
    assert torch.equal(out, f(x))
    _close(tan, torch.func.jvp(f, (x,), (t,))[1])
    out, pull = functx.vjp(f, x)
    assert torch.equal(out, f(x))
    _close(pull(t), torch.func.vjp(f, x)[1](t))
    h = lambda x: (torch.softmax(x, 0) ** 3).sum()  # noqa: E731
    _close(functx.hessian(h)(x[0]), torch.func.hessian(h)(x[0]))
    _close(functx.vmap(functx.grad(h))(x), torch.func.vmap(torch.func.grad(h))(x))
    _close(functx.jit(functx.grad(h))(x[0]), torch.func.grad(h)(x[0]))


# ---------------------------------------------------------------- max pooling (prims/pool.py)

_POOLS = [((2, 3, 9, 9), dict(kernel_size=3, stride=2, padding=1)), ((2, 3, 8, 8), dict(kernel_size=2)),
          ((2, 3, 9, 9), dict(kernel_size=3, stride=2, ceil_mode=True)),
          ((1, 2, 9, 9), dict(kernel_size=2, dilation=2, padding=1)),
          ((1, 2, 5, 6, 7), dict(kernel_size=2, stride=(1, 2, 2))), ((1, 2, 6, 6, 6), dict(kernel_size=3, padding=1))]


def _pool_input(shape, ties):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    return x.round(decimals=0) if ties else x          # ties: torch sends the cotangent to the first maximum


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape,kw", _POOLS)
def test_max_pool_under_eager_transforms_is_torch_s_kernel(shape, kw, ties, monkeypatch):
    """max_pool2d/3d under eager grad/vmap/jvp run torch's kernel (the decomposition was ~12
    kernels each way, 0.4x of torch.func on a conv net's pooling), the cotangent torch's
    backward kernel (max_pool_cotangent), which sends it to each window's first maximum."""
    x = _pool_input(shape, ties)
    pool = F.max_pool2d if len(shape) == 4 else F.max_pool3d
    f = lambda x: pool(x, **kw).pow(3).sum()    # noqa: E731
    cases = {"grad": lambda T: T.grad(f)(x), "vmap(grad)": lambda T: T.vmap(T.grad(f))(torch.stack([x, -x])),
             "jvp": lambda T: T.jvp(lambda x: pool(x, **kw), (x,), (x.cos(),)),
             "indices": lambda T: T.vmap(lambda x: pool(x, return_indices=True, **kw)[1])(x[None])}
    for name, case in cases.items():
        for _ in range(2):
            torch.testing.assert_close(case(functx), case(torch.func), rtol=1e-12, atol=1e-12, msg=name)
    function_units.CACHE.clear()
    backward = REGISTRY["max_pool_cotangent"]
    ran = []
    monkeypatch.setattr(backward, "impl", (lambda impl: lambda *a, **k: ran.append(1) or impl(*a, **k))(backward.impl))
    functx.grad(f)(x)
    prims = {e.prim for _, op, *_ in function_units.CACHE.values() if op != "uncacheable" for e in op.graph_eqns}
    assert REGISTRY["max_pool"] in prims and ran
    # torch's argument checks: padding past half the kernel raises as in torch
    with pytest.raises(RuntimeError, match="pad should be"):
        functx.grad(lambda x: pool(x, kernel_size=2, padding=2).sum())(x)


@pytest.mark.parametrize("shape,kw", _POOLS)
def test_max_pool_decomposition_matches_torch_s_values_indices_and_derivative(shape, kw):
    """The decomposition staged graphs hold (the primitive bound at a GraphTrace that does not
    keep fused primitives): torch's values and indices, ties to the first maximum, NaN
    propagated, and the same derivatives."""
    x = _pool_input(shape, ties=True)
    x.view(-1)[5] = float("nan")
    nsp = len(shape) - 2
    n = lambda v: tuple([v] * nsp if isinstance(v, int) else v)      # noqa: E731
    params = dict(kernel=n(kw["kernel_size"]), stride=n(kw.get("stride", kw["kernel_size"])),
                  padding=n(kw.get("padding", 0)), dilation=n(kw.get("dilation", 1)), ceil_mode=kw.get("ceil_mode", False))
    prim = REGISTRY["max_pool"]
    wrap, unwrap = functx.frontend.wrap, functx.frontend.unwrap
    staged = lambda x: [wrap(o) for o in prim.bind(unwrap(x), **params)]        # noqa: E731
    graph = functx.make_graph(staged)(x)
    assert prim not in {e.prim for e in graph.eqns}
    pool = F.max_pool2d if nsp == 2 else F.max_pool3d
    values, indices = functx.jit(staged)(x)
    want_values, want_indices = pool(x, return_indices=True, **kw)
    torch.testing.assert_close(values, want_values, equal_nan=True)
    assert torch.equal(indices, want_indices)
    x = _pool_input(shape, ties=True)
    f = lambda x: staged(x)[0].pow(2).sum()         # noqa: E731
    torch.testing.assert_close(functx.jit(functx.grad(f))(x), torch.func.grad(lambda x: pool(x, **kw).pow(2).sum())(x))


def _aten_ops(f, *args):
    """The names of the ATen ops f(*args) runs (the profiler's: functx's own dispatch mode
    runs kernels below a user's mode)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        f(*args)
    return {e.key.removeprefix("aten::") for e in prof.key_averages()}


def test_eager_grad_runs_torch_s_backward_kernels_for_batch_norm_and_softmaxes():
    """A classifier's eager grad runs the kernels torch's autograd runs: native_batch_norm and
    its backward (no transposed copies), _log_softmax_backward_data for cross_entropy and
    _softmax_backward_data for an attention's softmax (one kernel each where the tangents'
    primitives transposed were four); the gradients are torch.func's."""
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3, track_running_stats=False)
    x, y = torch.randn(4, 3, 5, 5), torch.randint(0, 3, (4,))

    def loss(p, x):
        h = torch.func.functional_call(bn, p, (x,)).mean((2, 3))                # (4, 3)
        attn = torch.softmax(h[:, :, None] * h[:, None, :], -1) @ h[:, :, None]  # (4, 3, 1)
        return F.cross_entropy(h + attn[..., 0], y)
    P = dict(bn.named_parameters())
    function_units.CACHE.clear()
    ops = _aten_ops(functx.grad(loss, argnums=(0, 1)), P, x)
    assert {"native_batch_norm", "native_batch_norm_backward", "_log_softmax_backward_data",
            "_softmax_backward_data"} <= ops, sorted(ops)
    _close(functx.grad(loss, argnums=(0, 1))(P, x), torch.func.grad(loss, argnums=(0, 1))(P, x))


@pytest.mark.parametrize("track", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_training_batch_norm_runs_channel_rows_through_torch_s_norm_kernels(track, dtype):
    """Training-mode batch norm on eager levels: torch's batch-norm kernels with the affine
    (prims/fused_norm_affine.py) instead of the decomposition; gradients, Hessians and
    vmap(grad) as torch.func's, the running statistics (passed as inputs) updated as torch's."""
    torch.manual_seed(0)
    m = torch.nn.BatchNorm2d(4, track_running_stats=track).to(dtype)
    x = torch.randn(5, 4, 3, 3, dtype=dtype)
    P = dict(m.named_parameters())
    B = {k: v.clone() for k, v in m.named_buffers()}
    f = lambda p, b, x: torch.func.functional_call(m, {**p, **b}, (x,)).sin().sum()      # noqa: E731
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    mine, theirs = {k: v.clone() for k, v in B.items()}, {k: v.clone() for k, v in B.items()}
    got, want = functx.grad(f)(P, mine, x), torch.func.grad(f)(P, theirs, x)
    for k in P:
        torch.testing.assert_close(got[k], want[k], **tol)
    for k in B:
        torch.testing.assert_close(mine[k], theirs[k], **tol)
    hess = lambda T: T.hessian(lambda w: f({**P, "weight": w}, {k: v.clone() for k, v in B.items()}, x))(P["weight"])  # noqa: E731
    torch.testing.assert_close(hess(functx), hess(torch.func), **tol)
    if not track:
        xs = torch.stack([x, x.cos()])
        torch.testing.assert_close(functx.vmap(functx.grad(f, argnums=2), in_dims=(None, None, 0))(P, B, xs),
                                   torch.func.vmap(torch.func.grad(f, argnums=2), in_dims=(None, None, 0))(P, B, xs), **tol)
    if not track:       # (a buffer update is a write: the ATen path, not a unit)
        function_units.CACHE.clear()
        functx.grad(f)(P, B, x)
        prims = {e.prim for _, op, *_ in function_units.CACHE.values() if op != "uncacheable" for e in op.graph_eqns}
        assert REGISTRY["normalize_affine"] in prims        # the affine in the kernel (fused_norm_affine.py)


# ---------------------------------------------------------------- F.interpolate (prims/resample.py)

@pytest.mark.parametrize("mode,dims,align", [("nearest", 2, None), ("nearest-exact", 1, None), ("linear", 1, False),
                                             ("bilinear", 2, False), ("bilinear", 2, True), ("bicubic", 2, False),
                                             ("trilinear", 3, True), ("nearest", 3, None)])
@pytest.mark.parametrize("size", [dict(scale_factor=2), dict(scale_factor=1.7), dict(size=2)])
def test_interpolate_runs_torch_s_kernels_on_eager_levels_and_matches(mode, dims, align, size):
    """F.interpolate on eager levels is torch's upsample kernel and its backward kernel (one
    each way, where torch._decomp's gathers and scatters were ~60 for a bilinear upsample):
    values, grad, jvp, vmap, vmap(grad), a Hessian-vector product and jit (the decomposition)
    as torch.func's, in float64; the kernels ran."""
    x = torch.randn((2, 3) + (4,) * dims, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    kw = dict(size, **({} if align is None else {"align_corners": align}))
    if "size" in kw:
        kw["size"] = (kw["size"],) * dims
    f = lambda x: F.interpolate(x, mode=mode, **kw)             # noqa: E731

    def g(x):
        y = f(x)
        return (y.sin() * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum()
    checks = [
        (functx.vjp(f, x)[0], f(x)),
        (functx.grad(g)(x), torch.func.grad(g)(x)),
        (functx.jvp(f, (x,), (x.cos(),))[1], torch.func.jvp(f, (x,), (x.cos(),))[1]),
        (functx.vmap(f)(x[:, None]), torch.func.vmap(f)(x[:, None])),
        (functx.vmap(functx.grad(g))(x[:, None]), torch.func.vmap(torch.func.grad(g))(x[:, None])),
        (functx.jvp(functx.grad(g), (x,), (x.exp(),))[1], torch.func.jvp(torch.func.grad(g), (x,), (x.exp(),))[1]),
        (functx.jit(functx.grad(g))(x), torch.func.grad(g)(x)),
    ]
    for got, want in checks:
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    ops = _aten_ops(functx.grad(g), x)
    assert any(o.startswith(("upsample", "_upsample")) and o.endswith("_backward") for o in ops), sorted(ops)
    assert "index_select" not in ops and "scatter_add_" not in ops


def test_interpolate_decomposition_is_the_kernel():
    """prims/resample.py's decomposition (one product per spatial dim with the interpolation
    matrix the kernel gives on a one-hot basis) is the kernel and its backward, for every mode,
    align_corners and given scales."""
    from functx.prims import resample
    g = torch.Generator().manual_seed(2)
    for op, dims, rests in [("upsample_nearest2d", 2, [(None, None), (2.0, 1.5)]),
                            ("_upsample_nearest_exact3d", 3, [(1.3, 2.0, 0.7)]),
                            ("upsample_linear1d", 1, [(True, None), (False, 1.7)]),
                            ("upsample_bilinear2d", 2, [(False, None, None), (False, 1.6, 2.5)]),
                            ("upsample_bicubic2d", 2, [(True, None, None), (False, 1.6, 2.5)]),
                            ("upsample_trilinear3d", 3, [(False, None, None, None)])]:
        for rest in rests:
            for in_s, out_s in [((4,) * dims, (7,) * dims), ((5,) * dims, (3,) * dims)]:
                x = torch.randn((2, 3) + in_s, dtype=torch.float64, generator=g)
                params = {"op": op, "output_size": out_s, "rest": rest}
                want = resample.upsample_p.impl(x, **params)
                torch.testing.assert_close(resample._upsample_decomposed(x, **params), want, rtol=1e-12, atol=1e-12)
                ct = torch.randn(want.shape, dtype=torch.float64, generator=g)
                torch.testing.assert_close(resample._backward_decomposed(ct, input_size=in_s, **params),
                                           resample.upsample_backward_p.impl(ct, input_size=in_s, **params),
                                           rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- activations with parameters (prims/fused_activations.py)

_ACTIVATIONS = {
    "leaky_relu": lambda x: F.leaky_relu(x, 0.2),
    "relu6": F.relu6,
    "hardtanh": lambda x: F.hardtanh(x, -2.0, 0.5),
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "elu": F.elu,
    "selu": F.selu,
    "celu": lambda x: F.celu(x, 0.5),
    "softplus": F.softplus,
    "softplus(beta=2, threshold=3)": lambda x: F.softplus(x, 2.0, 3.0),
    "logsigmoid": F.logsigmoid,
}
# the kinks and thresholds of all of them, NaN and infinities, and ordinary points
_POINTS = [-math.inf, -30.0, -3.0, -2.0, -1.5, -1.0, -0.0, 0.0, 0.5, 1.0, 1.5, 3.0, 6.0, 20.0, 25.0, math.inf, math.nan]


@pytest.mark.parametrize("name", list(_ACTIVATIONS))
def test_activations_run_torch_s_kernels_on_eager_levels_and_match(name):
    """leaky_relu, hardtanh (relu6), hardswish, hardsigmoid, elu (selu, celu), softplus and
    logsigmoid run
    torch's kernel and its backward kernel on eager levels (they were decomposed into
    comparisons and selects: 0.17-0.4x of torch.func's speed); values, gradients, second
    derivatives, vmap and jit (the decomposition) are torch.func's at every kink, threshold
    and infinity, in float64, and so are the values at NaN (torch's derivatives at NaN depend
    on whether its kernel's loop was vectorized: elu_backward gives NaN in a long tensor, the
    positive side's slope in a short one). torch's hardsigmoid_backward multiplies by 1/6
    rounded to float32, so there exact 1/6 decides (the definition; torch.func is 3e-8 off)."""
    f = _ACTIVATIONS[name]
    x = torch.tensor(_POINTS + list(torch.linspace(-4, 4, 9).tolist()), dtype=torch.float64)
    torch.testing.assert_close(functx.vjp(f, x)[0], f(x), rtol=1e-12, atol=1e-12, equal_nan=True)
    x = x[~x.isnan()]
    loss = lambda x: (f(x) * torch.linspace(0.5, 1.5, x.numel(), dtype=x.dtype)).sum()  # noqa: E731
    tol = dict(rtol=1e-12, atol=1e-12)
    want = torch.func.grad(loss)(x)
    if name == "hardsigmoid":
        want = torch.linspace(0.5, 1.5, x.numel(), dtype=x.dtype) * ((x > -3) & (x < 3)).to(x.dtype) / 6
    torch.testing.assert_close(functx.grad(loss)(x), want, **tol)
    torch.testing.assert_close(functx.jit(functx.grad(loss))(x), want, **tol)
    torch.testing.assert_close(functx.vmap(functx.grad(loss))(x[None]), want[None], **tol)
    v = torch.ones_like(x)
    torch.testing.assert_close(functx.jvp(f, (x,), (v,))[1], functx.grad(loss)(x) / torch.linspace(
        0.5, 1.5, x.numel(), dtype=x.dtype), **tol)
    if name != "hardsigmoid":       # (torch.func has no forward-over-reverse for it; its f'' is 0)
        second = lambda T: T.jvp(T.grad(loss), (x,), (v,))[1]       # noqa: E731
        torch.testing.assert_close(second(functx), second(torch.func), **tol)
    else:
        torch.testing.assert_close(functx.jvp(functx.grad(loss), (x,), (v,))[1], torch.zeros_like(x), **tol)
    ops = _aten_ops(functx.grad(loss), x)
    assert any(o.endswith("_backward") and o != "threshold_backward" for o in ops), sorted(ops)
    assert "where" not in ops, sorted(ops)


@pytest.mark.parametrize("op", [F.leaky_relu, F.hardswish, F.hardsigmoid, F.elu, F.softplus, F.logsigmoid])
def test_activations_of_integer_tensors_raise_as_torch(op):
    """torch has no integer kernels for these; functx raised nothing (or computed)."""
    x = torch.arange(4)
    with pytest.raises(NotImplementedError, match="not implemented for 'Long'"):
        functx.grad(lambda y: (op(x) * y).sum())(torch.ones(4))


# ---------------------------------------------------------------- binary_cross_entropy (prims/fused_losses.py)

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_cross_entropy_runs_torch_s_kernels_on_eager_levels_and_matches(reduction):
    """F.binary_cross_entropy (the classic VAE's loss) runs torch's kernel and its backward
    kernel on eager levels (the decomposition with its range checks ran ~130 kernels and two
    host reads: 0.1x of torch.func's speed); values, gradients in input and target (at 0, 1
    and below torch's 1e-12 floor too), vmap and jit are torch.func's, Hessians inside (0, 1)
    too (torch's double backward adds 1e-12 to x and 1 - x: 1e-11 relative), in float64;
    out-of-range inputs raise torch's error."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 5, generator=g, dtype=torch.float64) * 0.98 + 0.01
    x[0, :4] = torch.tensor([0.0, 1.0, 1e-14, 1 - 1e-14], dtype=torch.float64)
    t = torch.rand(6, 5, generator=g, dtype=torch.float64).round()
    t[1] = torch.rand(5, generator=g, dtype=torch.float64)

    def s(x, t):
        o = F.binary_cross_entropy(x, t, reduction=reduction)
        return (o * torch.linspace(0.5, 1.5, o.numel(), dtype=o.dtype).reshape(o.shape)).sum()
    tol = dict(rtol=1e-12, atol=1e-12)
    want_x, want_t = torch.func.grad(s, argnums=(0, 1))(x, t)
    # the target's derivative at x = 0 and 1: torch's is -logit(x), +-inf; the loss (its logs
    # clamped at -100) is linear in t there with slope +-100 (finite differences decide)
    w = torch.linspace(0.5, 1.5, x.numel(), dtype=x.dtype).reshape(x.shape) if reduction == "none" else \
        torch.full_like(x, 0.5 / x.numel() if reduction == "mean" else 0.5)      # (linspace of one: 0.5)
    want_t[0, :2] = torch.tensor([100.0, -100.0], dtype=x.dtype) * w[0, :2]
    for grad in (functx.grad, lambda f, **k: functx.jit(functx.grad(f, **k))):
        _close(grad(s, argnums=(0, 1))(x, t), (want_x, want_t), **tol)
    _close(functx.jvp(lambda x: s(x, t), (x,), (x.cos(),)), torch.func.jvp(lambda x: s(x, t), (x,), (x.cos(),)), **tol)
    _close(functx.vmap(functx.grad(s))(x, t), torch.func.vmap(torch.func.grad(s))(x, t), **tol)
    _close(functx.vmap(functx.grad(s), in_dims=(0, None))(x, t[1]),
           torch.func.vmap(torch.func.grad(s), in_dims=(0, None))(x, t[1]), **tol)
    _close(functx.hessian(s, argnums=(0, 1))(x[1:], t[1:]), torch.func.hessian(s, argnums=(0, 1))(x[1:], t[1:]),
           rtol=1e-9, atol=1e-9)
    ops = _aten_ops(functx.grad(s), x, t)
    assert {"binary_cross_entropy", "binary_cross_entropy_backward"} <= ops and "where" not in ops, sorted(ops)
    with pytest.raises(RuntimeError, match="all elements of input should be between 0 and 1"):
        functx.grad(s)(x + 1, t)
    with pytest.raises(RuntimeError, match="all elements of target should be between 0 and 1"):
        functx.grad(s)(x, t + 1)


@pytest.mark.parametrize("loss", [lambda x, y, r: F.huber_loss(x, y, reduction=r, delta=1.0),
                                  lambda x, y, r: F.huber_loss(x, y, reduction=r, delta=0.5),
                                  lambda x, y, r: F.smooth_l1_loss(x, y, reduction=r, beta=1.0),
                                  lambda x, y, r: F.smooth_l1_loss(x, y, reduction=r, beta=0.0)],
                         ids=["huber", "huber(delta=0.5)", "smooth_l1", "smooth_l1(beta=0)"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_huber_and_smooth_l1_run_torch_s_kernels_on_eager_levels_and_match(loss, reduction):
    """huber_loss and smooth_l1_loss on eager levels are torch's kernel and its backward kernel
    (0.6-0.75x of torch.func's speed decomposed); gradients in both operands, vmap, jit and
    Hessians are torch.func's in float64, at the branch boundaries too (huber's curvature is 1
    for |d| <= delta, smooth_l1's 1 / beta for |d| < beta: torch's double backward)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 5, generator=g, dtype=torch.float64) * 2, torch.randn(6, 5, generator=g, dtype=torch.float64)
    x[0] = y[0] + torch.tensor([0.0, 1.0, -1.0, 0.5, 2.0], dtype=torch.float64)

    def s(x, y):
        o = loss(x, y, reduction)
        return (o * torch.linspace(0.5, 1.5, o.numel(), dtype=o.dtype).reshape(o.shape)).sum()
    tol = dict(rtol=1e-12, atol=1e-12)
    want = torch.func.grad(s, argnums=(0, 1))(x, y)
    _close(functx.grad(s, argnums=(0, 1))(x, y), want, **tol)
    _close(functx.jit(functx.grad(s, argnums=(0, 1)))(x, y), want, **tol)
    _close(functx.vmap(functx.grad(s), in_dims=(0, None))(x, y[0]),
           torch.func.vmap(torch.func.grad(s), in_dims=(0, None))(x, y[0]), **tol)
    _close(functx.hessian(s, argnums=(0, 1))(x, y), torch.func.hessian(s, argnums=(0, 1))(x, y), **tol)
    ops = _aten_ops(functx.grad(s), x, y)
    if "l1_loss" not in ops:        # (F.smooth_l1_loss with beta=0 calls torch's l1_loss)
        assert any(o.endswith("_loss_backward") for o in ops) and "where" not in ops, sorted(ops)


@pytest.mark.parametrize("pool", [lambda x: F.avg_pool2d(x, 2), lambda x: F.avg_pool2d(x, 3, 2, 1),
                                  lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
                                  lambda x: F.avg_pool2d(x, (3, 2), (2, 1), (1, 0), divisor_override=4),
                                  lambda x: F.avg_pool3d(x[..., None].expand(-1, -1, -1, -1, 4), 2),
                                  lambda x: F.adaptive_avg_pool2d(x, 3), lambda x: F.adaptive_avg_pool2d(x, (7, 9)),
                                  lambda x: F.adaptive_avg_pool3d(x[..., None].expand(-1, -1, -1, -1, 3), 2),
                                  lambda x: F.pad(x, (1, 2, 2, 0), mode="reflect"),
                                  lambda x: F.pad(x, (3, 1, 0, 2), mode="replicate"),
                                  lambda x: F.pad(x[:, :, 0], (2, 1), mode="reflect"),
                                  lambda x: F.pad(x[..., None].expand(-1, -1, -1, -1, 3), (1, 1, 0, 2, 1, 0),
                                                  mode="replicate")],
                         ids=["2", "3-2-1", "ceil-no-pad-count", "override", "3d", "adaptive", "adaptive-up", "adaptive3d",
                              "reflect", "replicate", "reflect1d", "replicate3d"])
def test_average_pooling_and_padding_run_torch_s_kernels_on_eager_levels_and_match(pool):
    """avg_pool2d/3d, adaptive average pooling and reflect / replicate padding on eager levels
    are torch's kernel and its backward kernel (a padded conv with a ones kernel, or
    torch._decomp's gathers, before: 0.33x, 0.46x and 0.5x of torch.func's speed); grad, jvp, vmap(grad), a Hessian-vector product
    and jit (the decomposition) as torch.func's in float64."""
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    def s(x):
        o = pool(x)
        return (o.sin() * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).reshape(o.shape)).sum()
    tol = dict(rtol=1e-10, atol=1e-12)
    _close(functx.vjp(pool, x)[0], pool(x), **tol)
    _close(functx.grad(s)(x), torch.func.grad(s)(x), **tol)
    _close(functx.jvp(pool, (x,), (x.cos(),)), torch.func.jvp(pool, (x,), (x.cos(),)), **tol)
    _close(functx.vmap(functx.grad(s))(x[:, None]), torch.func.vmap(torch.func.grad(s))(x[:, None]), **tol)
    _close(functx.jvp(functx.grad(s), (x,), (x.exp(),)), torch.func.jvp(torch.func.grad(s), (x,), (x.exp(),)), **tol)
    _close(functx.jit(functx.grad(s))(x), torch.func.grad(s)(x), **tol)
    ops = _aten_ops(functx.grad(s), x)
    assert any(("avg_pool" in o or "_pad" in o) and o.endswith("_backward") for o in ops), sorted(ops)
