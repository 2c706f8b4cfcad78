"""Ordinary code that used to return a wrong number with no error (issue 9's classes), each
checked against eager PyTorch / torch.func / the mathematically right value."""
import math

import pytest
import torch

import functx
from fd_oracles import central_differences

X = torch.tensor([1.0, 2.0])


# ---------------------------------------------------------------- pytrees in the lax functions

def test_stop_gradient_of_a_pytree_stops_every_leaf():
    def f(x):
        a, b = functx.stop_gradient((x, 2 * x))
        return a.sum() + b.sum() + x.sum()
    torch.testing.assert_close(functx.grad(f)(X), torch.ones(2))
    d = functx.stop_gradient({"w": X})
    assert isinstance(d, dict) and torch.equal(d["w"], X)


def test_collectives_take_pytrees():
    v = torch.arange(4.0)
    mx, mn = functx.vmap(lambda v: functx.pmax((v, -v), "i"), axis_name="i")(v)
    torch.testing.assert_close(mx, torch.full((4,), 3.0))
    torch.testing.assert_close(mn, torch.zeros(4))
    s, t = functx.vmap(lambda v: functx.psum([v, 2 * v], "i"), axis_name="i")(v)
    torch.testing.assert_close(s, torch.full((4,), 6.0))
    torch.testing.assert_close(t, torch.full((4,), 12.0))
    m = functx.vmap(lambda v: functx.pmean({"a": v}, "i")["a"], axis_name="i")(v)
    torch.testing.assert_close(m, torch.full((4,), 1.5))
    g = functx.vmap(lambda v: functx.all_gather((v,), "i")[0], axis_name="i")(v)
    torch.testing.assert_close(g, v.expand(4, 4))
    # JAX's idiom for the axis size
    n = functx.vmap(lambda v: functx.psum(1, "i"), axis_name="i")(v)
    assert n.tolist() == [4, 4, 4, 4]


def test_lax_functions_reject_non_tensor_leaves_by_name():
    with pytest.raises(TypeError, match="functx.stop_gradient: expected a tensor"):
        functx.stop_gradient(("a", X))


# ---------------------------------------------------------------- jit cache keys

def test_jit_cache_tells_equal_python_numbers_of_other_types_apart():
    # the dtype follows the number's type: bool + 1 is int64, bool + True is bool, bool + 1.0 float32
    f = functx.jit(lambda x, s: torch.zeros(x.shape, dtype=torch.bool) + s)
    for s in (1, True, 1.0, 2, 2.0):
        want = torch.zeros(X.shape, dtype=torch.bool) + s
        got = f(X, s)
        assert got.dtype == want.dtype and torch.equal(got, want), s


def test_jit_cache_tells_signed_zeros_apart_and_caches_nan():
    g = functx.jit(lambda x, s: x / s)
    torch.testing.assert_close(g(X, 0.0), X / 0.0)
    torch.testing.assert_close(g(X, -0.0), X / -0.0)      # -inf, not the cached +inf
    h = functx.jit(lambda x, s: x + s)
    for _ in range(3):
        assert torch.isnan(h(X, math.nan)).all()
    assert h.cache_size() == 1


def test_static_argnums_keys_by_type_too():
    f = functx.jit(lambda x, s: torch.full(x.shape, s), static_argnums=1)
    for s in (1, True, 1.0):
        assert f(X, s).dtype == torch.full(X.shape, s).dtype, s


# ---------------------------------------------------------------- invalid programs

@pytest.mark.parametrize("transform", [functx.grad, functx.jacrev, functx.jacfwd])
def test_repeated_argnums_raise(transform):
    with pytest.raises(ValueError, match="more than once"):
        transform(lambda a, b: (a * b).sum(), argnums=(0, 0))(X, X)


# ---------------------------------------------------------------- grad mode (torch.func's semantics)

def _no_grad_term(x):
    with torch.no_grad():
        c = x ** 2
    return (x ** 2 - c + x * c).sum()


def _enable_inside_no_grad(x):
    with torch.no_grad():
        with torch.enable_grad():
            c = x ** 2
    return (x * c).sum()


def _set_grad_enabled(x):
    torch.set_grad_enabled(False)
    try:
        c = x ** 2
    finally:
        torch.set_grad_enabled(True)
    return (x * c).sum()


def _set_grad_enabled_ctx(x):
    with torch.set_grad_enabled(False):
        c = x.sin()
    return (x * c).sum()


def _inplace_under_no_grad(x):
    y = x * 2
    with torch.no_grad():
        y.clamp_(max=1.5)          # the value changes; the derivative stays y's (torch autograd)
        y[0] = 0.25
    return (y * y * x).sum()


def _no_grad_around_inner_grad(x, tf):
    inner = tf.grad(lambda y: (y ** 3).sum())
    with torch.no_grad():
        a = inner(x)
    return (a * x).sum()


def _per_row(f):
    return lambda r: f(r[None])


GRAD_MODE_CASES = {
    "grad": lambda tf: tf.grad(_no_grad_term),
    "jacrev": lambda tf: tf.jacrev(_no_grad_term),
    "vjp": lambda tf: lambda x: tf.vjp(_no_grad_term, x)[1](torch.tensor(1.0))[0],
    "jvp (ignores grad mode)": lambda tf: lambda x: tf.jvp(_no_grad_term, (x,), (torch.ones_like(x),))[1],
    "jacfwd (ignores grad mode)": lambda tf: tf.jacfwd(_no_grad_term),
    "enable_grad inside no_grad": lambda tf: tf.grad(_enable_inside_no_grad),
    "set_grad_enabled(False)": lambda tf: tf.grad(_set_grad_enabled),
    "set_grad_enabled as a context": lambda tf: tf.grad(_set_grad_enabled_ctx),
    "no_grad around an inner grad": lambda tf: tf.grad(lambda x: _no_grad_around_inner_grad(x, tf)),
    "grad(vmap)": lambda tf: tf.grad(lambda x: tf.vmap(_per_row(_no_grad_term))(x).sum()),
    "vmap(grad)": lambda tf: tf.vmap(tf.grad(_per_row(_no_grad_term))),
    "grad(jvp)": lambda tf: tf.grad(lambda x: tf.jvp(_no_grad_term, (x,), (torch.ones_like(x),))[1]),
    "jvp(grad)": lambda tf: lambda x: tf.jvp(tf.grad(_no_grad_term), (x,), (torch.ones_like(x),))[1],
    "hessian": lambda tf: tf.hessian(_no_grad_term),
    # a no_grad inside f stops every reverse level (torch.func: the inner one disables grad on
    # the way out); forward over reverse still differentiates it (hessian above)
    "grad(grad)": lambda tf: tf.grad(lambda x: tf.grad(_no_grad_term)(x).pow(2).sum()),
    "no_grad around an inner grad of grad": lambda tf: tf.grad(
        lambda x: tf.grad(lambda y: _no_grad_around_inner_grad(y, tf))(x).pow(2).sum()),
    "in-place writes under no_grad": lambda tf: tf.grad(_inplace_under_no_grad),
    "cosine_similarity (ATen clamps under no_grad)": lambda tf: tf.grad(
        lambda x: torch.nn.functional.cosine_similarity(x[None], torch.ones(1, 3, dtype=x.dtype)).sum()),
}


@pytest.mark.parametrize("case", sorted(GRAD_MODE_CASES))
@pytest.mark.parametrize("outer_no_grad", [False, True])
def test_grad_mode_inside_transforms_matches_torch_func(case, outer_no_grad):
    x = torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64)
    build = GRAD_MODE_CASES[case]
    with torch.set_grad_enabled(not outer_no_grad):     # an outer no_grad is ignored by both
        want = build(torch.func)(x)
        got = build(functx)(x)
        jitted = functx.jit(build(functx))(x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(jitted, want)
    assert torch.is_grad_enabled()                     # the mode is restored afterwards


def test_an_outer_no_grad_keeps_torch_autograd_off_for_a_vjp_inside():
    """Reverse levels enable grad for the user's function; torch's own autograd recorded the
    primal of a vjp under an outer no_grad (out.grad_fn set, as if no_grad were not there).
    The expectations are torch.func's (not run here: its first pullback under no_grad takes
    seconds)."""
    for lib in (functx,):
        x = torch.tensor([3.0, -1.5], dtype=torch.float64, requires_grad=True)
        w = torch.nn.Parameter(torch.tensor([0.5, 2.0], dtype=torch.float64))
        with torch.no_grad():
            out, vjp_fn = lib.vjp(lambda x: (x * w) ** 2, x)
            (y,) = vjp_fn(torch.ones(2, dtype=torch.float64))
            g = lib.grad(lambda w: ((x * w) ** 2).sum())(w)
        assert not out.requires_grad and not y.requires_grad and not g.requires_grad, lib
        with torch.no_grad():
            _, vjp_fn = lib.vjp(lambda x: x ** 2, x)
        (y,) = vjp_fn(torch.ones(2, dtype=torch.float64))     # the pullback outside no_grad records
        assert y.requires_grad, lib
        torch.testing.assert_close(torch.autograd.grad(y.sum(), x)[0], torch.full((2,), 2.0, dtype=torch.float64))


# ---------------------------------------------------------------- NaN and edge values

NAN = float("nan")
EDGE_CASES = {
    # name: (f, input); compared with torch.func (where torch's value is the right one)
    "max() at NaN": (lambda v: v.max(), torch.tensor([NAN, 1.0, 3.0])),
    "min() at NaN": (lambda v: v.min(), torch.tensor([1.0, NAN, -3.0])),
    "clamp at NaN": (lambda v: v.clamp(0, 2).sum(), torch.tensor([NAN, 1.0, 3.0, -1.0])),
    "clamp_min at NaN": (lambda v: v.clamp_min(0.5).sum(), torch.tensor([NAN, 1.0, 0.5])),
    "xlogy at p = 0": (lambda p: torch.xlogy(p, torch.tensor([0.3, 0.2, 2.0])).sum(), torch.tensor([0.0, 0.5, 0.0])),
    "hypot at 0 (nan, as torch)": (lambda v: torch.hypot(v, v).sum(), torch.zeros(2)),
    "embedding padding_idx": (lambda w: torch.nn.functional.embedding(
        torch.tensor([[0, 2], [0, 1]]), w, padding_idx=0).pow(2).sum(), torch.randn(4, 3)),
    "embedding scale_grad_by_freq": (lambda w: torch.nn.functional.embedding(
        torch.tensor([[0, 2], [0, 0]]), w, scale_grad_by_freq=True).pow(2).sum(), torch.randn(4, 3)),
    "embedding max_norm": (lambda w: torch.nn.functional.embedding(
        torch.tensor([0, 2, 0]), w.clone(), max_norm=1.0).pow(2).sum(), 3 * torch.randn(4, 3)),
    "write through detach()": (lambda v: _detached_write(v), torch.tensor([1.0, 2.0])),
}


def _detached_write(v):
    y = v * 2
    y.detach().mul_(3)              # the values change; y's derivative stays 2
    return (y * v).sum()


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_edge_value_derivatives_match_torch(case):
    f, x = EDGE_CASES[case]
    want = torch.func.grad(f)(x)
    torch.testing.assert_close(functx.grad(f)(x), want, equal_nan=True)
    torch.testing.assert_close(functx.jit(functx.grad(f))(x), want, equal_nan=True)


def test_sinc_derivatives_at_and_near_zero():
    """sinc''(0) = -pi^2/3 (torch.func says nan there: float64 finite differences decide)."""
    g = functx.grad
    d1, d2, d3 = g(torch.sinc), g(g(torch.sinc)), g(g(g(torch.sinc)))
    zero = torch.tensor(0.0, dtype=torch.float64)
    torch.testing.assert_close(d2(zero), torch.tensor(-math.pi ** 2 / 3, dtype=torch.float64))
    torch.testing.assert_close(d1(zero), zero)
    for v in (1e-5, 3e-3, 0.3, 2.5):          # both branches, against finite differences
        x = torch.tensor(v, dtype=torch.float64)
        h = 1e-5
        torch.testing.assert_close(d1(x), (torch.sinc(x + h) - torch.sinc(x - h)) / (2 * h), rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(d2(x), (d1(x + h) - d1(x - h)) / (2 * h), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(d3(x), (d2(x + h) - d2(x - h)) / (2 * h), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(functx.jit(torch.sinc)(torch.linspace(-3, 3, 101)),
                               torch.sinc(torch.linspace(-3, 3, 101)))


# ---------------------------------------------------------------- what eager torch rejects, functx rejects

A23 = torch.randn(2, 3)
V3 = torch.randn(3)
INVALID = {
    "sum over an out-of-range dim": (lambda a: a.sum(5), (A23,)),
    "mean over a repeated dim": (lambda a: a.mean((0, 0)), (A23,)),
    "squeeze of an out-of-range dim": (lambda a: a.squeeze(5), (A23,)),
    "unsqueeze past the end": (lambda a: a.unsqueeze(4), (A23,)),
    "transpose of an out-of-range dim": (lambda a: a.transpose(0, 4), (A23,)),
    "select on an out-of-range dim": (lambda a: a.select(3, 0), (A23,)),
    "softmax over an out-of-range dim": (lambda a: a.softmax(-3), (A23,)),
    "cumsum over an out-of-range dim": (lambda a: a.cumsum(2), (A23,)),
    "cat along an out-of-range dim": (lambda a: torch.cat([a, a], 3), (A23,)),
    "argmax over an out-of-range dim": (lambda a: a.argmax(2), (A23,)),
    "flip of an out-of-range dim": (lambda a: a.flip(2), (A23,)),
    "dot of a matrix": (torch.dot, (A23, V3)),
    "dot of different lengths": (torch.dot, (V3, torch.randn(4))),
    "mm of a vector": (torch.mm, (V3, A23.t())),
    "mm of mismatched shapes": (torch.mm, (A23, A23)),
    "mm of mixed dtypes": (torch.mm, (A23, A23.t().double())),
    "bmm of matrices": (torch.bmm, (A23, A23)),
    "mv of two vectors": (torch.mv, (V3, V3)),
    "view of a transposed tensor": (lambda a: a.t().view(6), (A23,)),
    "view of a strided slice": (lambda a: a[:, ::2].view(-1), (A23,)),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_programs_eager_torch_rejects_are_rejected(case):
    f, args = INVALID[case]
    with pytest.raises((RuntimeError, IndexError)) as want:
        f(*args)
    for transform in (functx.jit, functx.vmap, lambda g: functx.grad(lambda *a: g(*a).float().sum())):
        batched = transform is functx.vmap
        xs = tuple(torch.stack([a, a]) for a in args) if batched else args
        with pytest.raises(type(want.value)):
            transform(f)(*xs)


def test_valid_views_and_reshapes_still_work():
    for f in (lambda a: a.t().contiguous().view(6), lambda a: a.t().reshape(6), lambda a: a.view(3, 2).view(6),
              lambda a: a[0].contiguous().view(3), lambda a: a.t().view(-1, 2), lambda a: a.unsqueeze(0).view(6)):
        torch.testing.assert_close(functx.jit(f)(A23), f(A23))
        torch.testing.assert_close(functx.grad(lambda a: (f(a) ** 2).sum())(A23),
                                   torch.func.grad(lambda a: (f(a) ** 2).sum())(A23))


def test_contiguous_of_a_transposed_view_is_a_copy():
    """torch's contiguous() of a transposed tensor copies; writing into the copy must not
    change the original (wrappers report contiguous strides, so it was an alias)."""
    def f(y):
        z = y.t().contiguous()
        z.mul_(2)
        return y * 1, z
    want_y, want_z = f(A23)
    for got_y, got_z in (functx.jit(f)(A23), [o[0] for o in functx.vmap(f)(torch.stack([A23, A23]))]):
        torch.testing.assert_close(got_y, want_y)
        torch.testing.assert_close(got_z, want_z)
    grad = functx.grad(lambda y: sum(o.sum() for o in f(y)))(A23)
    torch.testing.assert_close(grad, torch.func.grad(lambda y: sum(o.sum() for o in f(y)))(A23))


# ---------------------------------------------------------------- data-dependent shapes

DATA_DEPENDENT = {
    "x[torch.where(mask)]": lambda a: a[torch.where(a > 0)],
    "nonzero": lambda a: a.nonzero(),
    "argwhere": lambda a: torch.argwhere(a),
    "unique": lambda a: torch.unique(a),
    "masked_select": lambda a: torch.masked_select(a, a > 0),
    "boolean mask": lambda a: a[a > 0],
}


@pytest.mark.parametrize("case", sorted(DATA_DEPENDENT))
def test_data_dependent_shapes_raise_under_jit_and_vmap(case):
    """Under jit there are no values to size the output with (a shape guessed at trace time
    was silently wrong); eager transforms have the values and run. Under an eager vmap each
    example's shape comes from its values: where they agree, the result is a loop's over the
    examples; where they differ, functx raises (the loop fails at torch.stack)."""
    f = DATA_DEPENDENT[case]
    a = torch.tensor([1.0, -1.0, 2.0, 0.0])
    with pytest.raises(functx.ConcretizationError):
        functx.jit(f)(a)
    for batch in (torch.stack([a, -a]), torch.stack([a, 3 * a])):
        try:
            want = torch.stack([f(x) for x in batch])
        except RuntimeError:
            want = None
        try:
            got = functx.vmap(f)(batch)
        except (functx.ConcretizationError, functx.FunctxError, RuntimeError):
            continue
        assert want is not None
        torch.testing.assert_close(got, want)
    if case != "unique":        # torch has no derivative for unique, in either mode
        out = functx.jvp(lambda a: f(a).float(), (a,), (torch.ones_like(a),))[0]
        torch.testing.assert_close(out, f(a).float())


def test_eager_grad_through_boolean_indexing():
    a = torch.tensor([1.0, -1.0, 2.0, 0.0])
    for f in (lambda a: (a[torch.where(a > 0)] ** 2).sum(), lambda a: (a[a > 0] ** 2).sum()):
        torch.testing.assert_close(functx.grad(f)(a), torch.func.grad(f)(a))
    torch.testing.assert_close(functx.jit(lambda a: torch.nonzero_static(a > 0, size=3))(a),
                               torch.nonzero_static(a > 0, size=3))


# ---------------------------------------------------------------- torch.autograd.Function

class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return torch.round(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return g * 2


class _ScaledSin(torch.autograd.Function):
    """A backward that is not the forward's derivative (x10), saved tensors, a non-tensor
    argument with a default, two outputs."""
    @staticmethod
    def forward(x, scale=3.0):
        return x.sin() * scale, x.exp()

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, scale = inputs
        ctx.save_for_backward(x, output[1])
        ctx.scale = scale

    @staticmethod
    def backward(ctx, g_sin, g_exp):
        x, ex = ctx.saved_tensors
        return g_sin * 10 * x.cos() * ctx.scale + g_exp * ex, None


class _OldStyle(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.sin()

    @staticmethod
    def backward(ctx, g):
        return g * 10


FUNCTION_CASES = {
    "straight-through estimator": lambda x: _StraightThrough.apply(x).pow(2).sum(),
    "saved tensors, two outputs": lambda x: sum(o.sum() for o in _ScaledSin.apply(x)),
    "non-tensor argument": lambda x: _ScaledSin.apply(x, 0.5)[0].sum(),
}


@pytest.mark.parametrize("case", sorted(FUNCTION_CASES))
def test_autograd_function_backward_is_honoured(case):
    f = FUNCTION_CASES[case]
    x = torch.tensor([0.3, 1.7, -0.4], dtype=torch.float64)
    want = torch.func.grad(f)(x)
    xx = x.clone().requires_grad_()
    f(xx).backward()
    torch.testing.assert_close(want, xx.grad)                   # torch.func and autograd agree
    torch.testing.assert_close(functx.grad(f)(x), want)
    torch.testing.assert_close(functx.jit(functx.grad(f))(x), want)
    rows = functx.vmap(functx.grad(lambda r: f(r[None])))(x)
    torch.testing.assert_close(rows, want)


def test_autograd_function_second_order_differentiates_backward():
    f = FUNCTION_CASES["saved tensors, two outputs"]
    x = torch.tensor([0.3, 1.7], dtype=torch.float64)
    torch.testing.assert_close(functx.grad(lambda v: functx.grad(f)(v).sum())(x),
                               torch.func.grad(lambda v: torch.func.grad(f)(v).sum())(x))


def test_autograd_function_backward_serves_every_reverse_level():
    # grad of grad through a straight-through estimator: torch.func applies the Function's
    # backward (g * 2) at both levels, so d2/dx2 of round(x)^3 is 2 * 2 * 6 round(x); functx
    # differentiated the second level through round and gave 0
    x = torch.tensor([0.3, 1.7, -2.4], dtype=torch.float64)

    def f(r):
        return _StraightThrough.apply(r).pow(3).sum()
    want = torch.func.grad(lambda r: torch.func.grad(f)(r).sum())(x)
    torch.testing.assert_close(want, 24 * x.round())
    torch.testing.assert_close(functx.grad(lambda r: functx.grad(f)(r).sum())(x), want)
    torch.testing.assert_close(functx.jit(functx.grad(lambda r: functx.grad(f)(r).sum()))(x), want)


def test_autograd_function_without_setup_context_raises():
    with pytest.raises(functx.FunctxError, match="setup_context"):
        functx.grad(lambda x: _OldStyle.apply(x).sum())(torch.ones(2))
    # outside transforms torch's own apply runs, untouched
    x = torch.ones(2, requires_grad=True)
    _OldStyle.apply(x).sum().backward()
    assert torch.equal(x.grad, torch.full((2,), 10.0))


def test_autograd_function_forward_mode_raises_instead_of_differentiating_forward():
    with pytest.raises(functx.FunctxError, match="forward mode"):
        functx.jvp(lambda x: _StraightThrough.apply(x), (torch.ones(2),), (torch.ones(2),))


# ---------------------------------------------------------------- PyTorch autograd through functx outputs

def _param_grads(loss, params):
    return [torch.zeros_like(p) if g is None else g
            for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True))]


def test_autograd_through_a_grad_of_a_closed_over_parameter():
    w = torch.tensor(3.0, requires_grad=True)
    x = torch.tensor(1.5)
    for tf in (functx, torch.func):
        g = tf.grad(lambda x: w * x * x)(x)           # 2 w x
        assert torch.autograd.grad(g, w)[0].item() == pytest.approx(2 * 1.5)


@pytest.mark.parametrize("transform", ["vmap(grad)", "grad", "jvp", "hessian", "jacfwd", "jacrev"])
def test_score_matching_style_losses_backpropagate_into_module_parameters(transform):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    xs = torch.randn(5, 2, dtype=torch.float64)
    params = list(m.parameters())

    def energy(x):
        return m(x).sum()

    def loss(tf):
        if transform == "vmap(grad)":
            return tf.vmap(tf.grad(energy))(xs).pow(2).mean()
        if transform == "grad":
            return tf.grad(energy)(xs[0]).pow(2).sum()
        if transform == "jvp":
            return tf.jvp(energy, (xs[0],), (torch.ones(2, dtype=torch.float64),))[1]
        return getattr(tf, transform)(energy)(xs[0]).pow(2).sum()
    want = _param_grads(loss(torch.func), params)
    for got in (_param_grads(loss(functx), params),
                _param_grads(functx.jit(lambda: loss(functx))(), params) if transform == "vmap(grad)" else None):
        if got is not None:
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w)


def test_detach_inside_a_transform_stops_torch_autograd_through_closed_over_parameters():
    w = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    x = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)

    def f(x):
        h = x * w
        return (h.detach() * h).sum()
    for build in (lambda tf: tf.grad(f)(x).sum(), lambda tf: tf.vjp(f, x)[0],
                  lambda tf: tf.jvp(f, (x,), (torch.ones_like(x),))[1]):
        want = torch.autograd.grad(build(torch.func), w)[0]
        torch.testing.assert_close(torch.autograd.grad(build(functx), w)[0], want)


def _detached_factor(x):
    return (x.detach() * x).sum()


def _no_grad_factor(x):
    with torch.no_grad():
        c = x * 3
    return (c * x).sum()


def _hook_if_required(x):
    h = x.sin()
    if h.requires_grad:
        h.register_hook(lambda g: g * 0)
    return (h * x).sum()


def _unconditional_hook(x):
    h = x.sin()
    h.register_hook(lambda g: g * 0)
    return (h * x).sum()


@pytest.mark.parametrize("f", [_detached_factor, _no_grad_factor, _hook_if_required, _unconditional_hook])
def test_torch_autograd_through_jit_honours_detach_no_grad_and_requires_grad(f):
    """The compiled graph does not detach for torch autograd, replay no_grad blocks or run
    hooks, and the trace answers requires_grad=False: a function that does any of these runs
    as plain torch for calls torch autograd records (jit's plain_for_autograd), compiled for
    the others."""
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    want = torch.autograd.grad(f(x), x)[0]
    jf = functx.jit(f)
    for _ in range(2):
        torch.testing.assert_close(torch.autograd.grad(jf(x), x)[0], want)
    # (eager torch refuses a hook on a tensor without grad: compare with the hook-free value)
    value = (lambda x: (x.sin() * x).sum()) if f is _unconditional_hook else f
    torch.testing.assert_close(jf(x.detach() + 1), value(x.detach() + 1))
    assert [e.plain_for_autograd for e in jf._cache.entries.values()] == [True]
    with torch.no_grad():                   # no autograd: the compiled graph
        torch.testing.assert_close(jf(x), value(x))
    plain = functx.jit(lambda x: (x.sin() * x).sum())
    plain(x)
    assert [e.plain_for_autograd for e in plain._cache.entries.values()] == [False]


# ---------------------------------------------------------------- linear algebra, second order

_SPD = lambda a: a @ a.mT + torch.eye(a.shape[-1], dtype=a.dtype)  # noqa: E731
LINALG_SECOND_ORDER = {
    "det": lambda a: torch.linalg.det(a),
    "det_batched": lambda a: torch.linalg.det(torch.stack([a, a.mT @ a])).sum(),
    "slogdet": lambda a: torch.linalg.slogdet(a).logabsdet * torch.linalg.slogdet(a).sign,
    "logdet": lambda a: torch.logdet(_SPD(a)),
    "solve": lambda a: torch.linalg.solve(a, torch.linspace(-1, 1, 8, dtype=a.dtype).reshape(4, 2)).sum(),
    "solve_vector": lambda a: torch.linalg.solve(a, torch.linspace(-1, 1, 4, dtype=a.dtype)).sum(),
    "solve_left_false": lambda a: torch.linalg.solve(a, torch.linspace(-1, 1, 8, dtype=a.dtype).reshape(2, 4),
                                                     left=False).sum(),
    "cholesky_inverse": lambda a: torch.cholesky_inverse(torch.linalg.cholesky(_SPD(a))).sum(),
}


@pytest.mark.parametrize("name", list(LINALG_SECOND_ORDER))
def test_linalg_second_directional_derivatives_match_finite_differences(name):
    # torch's forward-mode formulas of det, slogdet, solve and cholesky_inverse treat the LU /
    # Cholesky factors they saved as constants: forward over forward (torch.func.jvp twice,
    # which the opaque fallback ran) gave d^2/dt^2 det(A + tV) = 5.9 where it is -25.5, and
    # jit's trace(hessian) -> Laplacian rewrite inherited it
    f = LINALG_SECOND_ORDER[name]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, dtype=torch.float64, generator=g)
    v = torch.randn(4, 4, dtype=torch.float64, generator=g)
    h = 1e-4
    want = (f(a + h * v) - 2 * f(a) + f(a - h * v)) / h ** 2
    fwd_fwd = functx.jvp(lambda b: functx.jvp(f, (b,), (v,))[1], (a,), (v,))[1]
    torch.testing.assert_close(fwd_fwd, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(functx.taylor_operator(f, v[None])(a), want, rtol=1e-4, atol=1e-4)
    hess = torch.autograd.functional.hessian(f, a)          # reverse over reverse: torch is right
    torch.testing.assert_close(functx.hessian(f)(a), hess)
    torch.testing.assert_close(functx.jit(f)(a), f(a))


@pytest.mark.parametrize("op", ["scatter_reduce_prod", "householder_product"])
def test_opaque_ops_whose_torch_forward_mode_is_wrong_take_it_from_reverse_mode(op):
    # torch's forward-mode tangent of scatter_reduce(..., "prod") is 0, and householder_product's
    # tangent is not itself differentiable; both went through the opaque fallback's torch.func.jvp
    g = torch.Generator().manual_seed(0)
    src = torch.randn(3, 4, dtype=torch.float64, generator=g)
    v = torch.randn(3, 4, dtype=torch.float64, generator=g)
    if op == "scatter_reduce_prod":
        index = torch.tensor([[0, 1, 0, 1], [1, 1, 0, 0], [2, 0, 2, 1]])
        f = lambda s: (torch.zeros(3, 3, dtype=s.dtype).scatter_reduce(1, index, s, "prod", include_self=False)  # noqa: E731
                       * torch.arange(9.0, dtype=s.dtype).reshape(3, 3)).sum()
    else:
        tau = torch.tensor([0.3, 0.5, 1.2], dtype=torch.float64)
        f = lambda a: (torch.linalg.householder_product(a.T, tau) ** 2  # noqa: E731
                       * torch.arange(12.0, dtype=a.dtype).reshape(4, 3)).sum()
    h = 1e-4
    first = (f(src + 1e-6 * v) - f(src - 1e-6 * v)) / 2e-6
    second = (f(src + h * v) - 2 * f(src) + f(src - h * v)) / h ** 2
    torch.testing.assert_close(functx.jvp(f, (src,), (v,))[1], first, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(functx.jvp(lambda b: functx.jvp(f, (b,), (v,))[1], (src,), (v,))[1], second,
                               rtol=1e-4, atol=1e-4)
    hess = torch.autograd.functional.hessian(f, src)
    torch.testing.assert_close(functx.hessian(f)(src), hess)


# ---------------------------------------------------------------- tensor hooks

def _zeroed_through_hook(x):
    h = x.sin()
    h.register_hook(lambda g: g * 0)        # torch.func runs it: the gradient is x.sin()
    return (h * x).sum()


@pytest.mark.parametrize("transform", ["grad", "jit(grad)", "vmap(grad)"])
def test_register_hook_on_a_traced_value_runs_as_in_torch_func(transform):
    # (tests/test_requires_grad.py has the whole matrix)
    x = torch.randn(3, 2, dtype=torch.float64)
    build = {"grad": lambda tf: tf.grad(_zeroed_through_hook),
             "jit(grad)": lambda tf: (functx.jit if tf is functx else (lambda f: f))(tf.grad(_zeroed_through_hook)),
             "vmap(grad)": lambda tf: tf.vmap(tf.grad(_zeroed_through_hook))}[transform]
    torch.testing.assert_close(build(functx)(x), build(torch.func)(x))
    torch.testing.assert_close(build(functx)(x), x.sin())


def test_requires_grad_inside_grad_matches_torch_func():
    seen = {}

    def f(x, lib):
        h = x.sin()
        seen[lib] = (x.requires_grad, h.requires_grad)
        return (h * x).sum()
    x = torch.randn(3, dtype=torch.float64)
    torch.func.grad(lambda x: f(x, "torch.func"))(x)
    functx.grad(lambda x: f(x, "functx"))(x)
    assert seen["functx"] == seen["torch.func"] == (True, True)


# ---------------------------------------------------------------- torch autograd switched on inside a transform

def _autograd_functional(kind):
    u = lambda x: (x.sin() * x).sum()
    if kind == "jacobian":
        return lambda x: torch.autograd.functional.jacobian(u, x)
    if kind == "vjp":
        return lambda x: torch.autograd.functional.vjp(u, x)[1]
    if kind == "jvp":
        return lambda x: torch.autograd.functional.jvp(u, (x,), (torch.ones_like(x),))[1]
    return lambda x: torch.autograd.functional.hessian(u, x).sum(0)


@pytest.mark.parametrize("kind", ["jacobian", "vjp", "jvp", "hessian"])
@pytest.mark.parametrize("transform", ["vmap", "grad", "jit"])
def test_torch_autograd_functional_inside_a_transform_raises(kind, transform):
    """torch.autograd.functional detaches its input and calls requires_grad_(); on a traced
    value the output then looks independent of it and torch returned zero derivatives."""
    f = _autograd_functional(kind)
    x = torch.randn(4, 3, dtype=torch.float64)
    run = {"vmap": lambda: functx.vmap(f)(x), "grad": lambda: functx.grad(lambda v: f(v).sum())(x[0]),
           "jit": lambda: functx.jit(f)(x[0])}[transform]
    with pytest.raises(functx.FunctxError, match="torch.autograd.functional"):
        run()


def test_torch_autograd_functional_of_a_closed_over_traced_value_raises():
    """The input is a plain tensor, the function closes over a traced one: the output was
    dropped as not requiring grad and the Jacobian was zeros."""
    y0 = torch.randn(3, dtype=torch.float64)
    f = lambda t: torch.autograd.functional.jacobian(lambda y: (y * t).sin().sum(), y0)
    with pytest.raises(functx.FunctxError, match="torch.autograd.functional"):
        functx.vmap(f)(torch.randn(4, 3, dtype=torch.float64))
    torch.testing.assert_close(f(y0), torch.cos(y0 * y0) * y0)      # outside transforms: torch's


# ---------------------------------------------------------------- randomness

@pytest.mark.parametrize("jit", [False, True])
def test_vmap_randomness_same_is_shared_across_chunks(jit):
    def f(r):
        return torch.randn(()) + torch.rand(2).sum() + 0 * r
    chunked = functx.vmap(f, randomness="same", chunk_size=2)
    chunked = functx.jit(chunked) if jit else chunked
    torch.manual_seed(0)
    got = chunked(torch.zeros(5))
    after = torch.rand(())
    torch.manual_seed(0)
    want = functx.vmap(f, randomness="same")(torch.zeros(5))
    assert torch.equal(got, want) and torch.equal(got, got[:1].expand(5))
    assert torch.equal(after, torch.rand(()))        # the generator advanced as for one draw
    different = functx.vmap(f, randomness="different", chunk_size=2)(torch.zeros(5))
    assert len(set(different.tolist())) == 5


# ---------------------------------------------------------------- mutation of closed-over tensors under jit

def test_jit_refuses_in_place_updates_of_closed_over_tensors():
    """Under jit the function runs once, at trace time: an update of a closed-over counter or
    buffer would silently not repeat. Tensors the function makes itself may be updated."""
    buf = torch.zeros(2)

    def counter(x):
        buf.add_(1)
        return x + buf

    def through_a_view(x):
        buf[0] = 3.0
        return x + buf

    for f in (counter, through_a_view):
        with pytest.raises(functx.FunctxError, match="closes over"):
            functx.jit(f)(X)
    assert torch.equal(buf, torch.zeros(2))

    def own_constant(x):
        m = torch.zeros(2)
        m[0] = 5.0
        m[1:].mul_(2)
        m.add_(1)
        return x + m
    torch.testing.assert_close(functx.jit(own_constant)(X), own_constant(X))
    # eager transforms run the function every call, so the update happens each time, as in torch
    functx.grad(lambda x: counter(x).sum())(X)
    functx.grad(lambda x: counter(x).sum())(X)
    assert torch.equal(buf, torch.full((2,), 2.0))


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_adding_zero_keeps_the_sign_of_zero_as_torch(backend):
    # simplify used to drop x + 0.0, so -0.0 + 0.0 came out -0.0 (torch: +0.0)
    x = torch.tensor([-0.0, 0.0, 1.5, float("nan")])
    for fn in (lambda x: x + 0.0, lambda x: 0.0 + x, lambda x: x - 0.0, lambda x: x + (-0.0),
               lambda x: x - (-0.0)):
        got, want = functx.jit(fn, backend=backend)(x), fn(x)
        torch.testing.assert_close(got, want, equal_nan=True)
        assert torch.equal(torch.signbit(got), torch.signbit(want))


def test_random_draws_in_recomputed_branches_and_bodies_raise_or_match():
    # A cond's tangent branch and a remat scan's backward body recompute the primal; a draw
    # there would be a new number, so d(x * r)/dx came out as another r. Now: raise when the
    # derivative needs the draw, and agree with the value when it does not.
    f = lambda x, p: functx.cond(p > 0, lambda x: x * torch.randn(()), lambda x: x * 2.0, x)  # noqa: E731
    with pytest.raises(functx.FunctxError, match="cond: a branch draws random numbers"):
        functx.jit(functx.value_and_grad(f))(torch.tensor(1.0), torch.tensor(1.0))
    g = lambda x, p: functx.cond(p > 0, lambda x: x + torch.randn(()), lambda x: x * 2.0, x)  # noqa: E731
    assert functx.jit(functx.grad(g))(torch.tensor(1.0), torch.tensor(1.0)).item() == 1.0

    def chain(x, remat):
        c, _ = functx.scan(lambda c, _: (c * torch.randn(()), None), x, None, length=3, remat=remat)
        return c
    v, d = functx.jit(functx.value_and_grad(lambda x: chain(x, False)))(torch.tensor(1.0))
    torch.testing.assert_close(v, d)                 # d(x * r1 r2 r3)/dx at x = 1 is the value
    for remat in (True, "sqrt"):
        with pytest.raises(functx.FunctxError, match="redraw"):
            functx.jit(functx.value_and_grad(lambda x: chain(x, remat)))(torch.tensor(1.0))


def test_a_differentiated_value_made_a_python_number_warns():
    """torch.full_like(plain, t) converts a traced t with .item() in torch's argument parser
    (no tensor argument for __torch_function__ to see): the derivative through it is lost, as
    torch's autograd loses it, and torch warns for a tensor that requires grad. functx warns,
    naming the line, where it used to return a silent zero; with the tensor spelling the
    derivative is right. Comparisons for Python control flow don't warn."""
    import warnings as w

    base = torch.ones(3)     # closed over (a tensor made inside f is a wrapper: exact, see below)

    def f(t):
        return torch.full_like(base, t).pow(2).sum()
    with pytest.warns(UserWarning, match="converted to a Python number"):
        functx.grad(f)(torch.tensor(2.0))
    g = functx.grad(lambda t: (torch.zeros(3) + t).pow(2).sum())(torch.tensor(2.0))
    torch.testing.assert_close(g, torch.tensor(12.0))
    with w.catch_warnings():
        w.simplefilter("error")
        functx.grad(lambda x: x if x > 0 else -x)(torch.tensor(2.0))
    x = torch.ones(3)          # a traced fill value whose tensor argument is traced too: exact
    torch.testing.assert_close(functx.grad(lambda t: torch.full_like(x * t, t).sum())(torch.tensor(2.0)),
                               torch.tensor(3.0))


def test_cat_promotes_over_skipped_empty_tensors():
    # torch skips legacy 1-D empties in cat but still promotes over them (found by the fuzzer)
    def f(x):
        return torch.cat([torch.eq(x, 0.5), x])
    for x in (torch.tensor([]), torch.tensor([0.5, 2.0])):
        want = f(x)
        got = functx.jit(f, backend="eager")(x)
        assert got.dtype == want.dtype and torch.equal(got, want)
    a, b = torch.tensor([], dtype=torch.float64), torch.ones(2, 3)
    assert functx.jit(lambda a, b: torch.cat([a, b]))(a, b).dtype == torch.cat([a, b]).dtype


def test_out_arguments_inside_transforms():
    # out= into a tensor the function made (spectral_norm's F.normalize(..., out=u) does it
    # into a buffer) runs the functional op and copies, as torch does
    def f(x):
        y = torch.empty_like(x)
        torch.mul(x, 2.0, out=y)
        z = torch.zeros(x.shape[0], dtype=torch.float64)
        torch.sum(x, 1, out=z)
        v, i = torch.empty(x.shape[0]), torch.empty(x.shape[0], dtype=torch.long)
        torch.max(x, 1, out=(v, i))
        return y + z.float()[:, None] + v[:, None] + i[:, None]

    def same(x):
        v, i = x.max(1)
        return x * 2.0 + x.sum(1).double().float()[:, None] + v[:, None] + i[:, None]
    x = torch.randn(3, 4)
    torch.testing.assert_close(functx.jit(f)(x), same(x))
    torch.testing.assert_close(functx.vmap(f)(x[None].repeat(2, 1, 1)), same(x)[None].repeat(2, 1, 1))
    torch.testing.assert_close(functx.grad(lambda x: f(x).sum())(x), functx.grad(lambda x: same(x).sum())(x))

    def resized(x):
        y = torch.empty(2)
        torch.mul(x, 2.0, out=y)
        return y
    with pytest.raises(functx.FunctxError, match="would resize"):
        functx.jit(resized)(x)


# ---------------------------------------------------------------- writes into expanded views

_TRANSFORMS = {"grad": lambda f: functx.grad(lambda a: f(a).sum()), "vmap": lambda f: functx.vmap(f),
               "jit": lambda f: functx.jit(f)}


@pytest.mark.parametrize("transform", sorted(_TRANSFORMS))
@pytest.mark.parametrize("write", ["add_", "copy_", "setitem_all", "out=", "column_add_"])
def test_writes_into_elements_sharing_memory_raise_as_in_torch(transform, write):
    # x.expand(2, 3).add_(1) raises in torch (the result would depend on the order of the writes)
    ops = {"add_": lambda v: v.add_(1), "copy_": lambda v: v.copy_(torch.ones(2, 3)),
           "setitem_all": lambda v: v.__setitem__(slice(None), 1.0),
           "out=": lambda v: torch.add(torch.ones(2, 3), 1, out=v), "column_add_": lambda v: v[:, 0].add_(1)}

    def f(a):
        v = (a * 2).expand(2, 3)
        ops[write](v)
        return v * v
    with pytest.raises(RuntimeError, match="more than one element of the written-to tensor"):
        f(torch.zeros(3))
    with pytest.raises(RuntimeError, match="more than one element of the written-to tensor"):
        _TRANSFORMS[transform](f)(torch.zeros(4, 3) if transform == "vmap" else torch.zeros(3))


@pytest.mark.parametrize("transform", sorted(_TRANSFORMS))
def test_writes_torch_allows_on_elements_sharing_memory(transform):
    # fills write every element alike; a row of an expanded view does not overlap itself; index
    # and mask writes (deprecated in torch) wrote the whole view back: b came out unchanged
    def fills(a):
        b = a * 2 + 1
        v = b.expand(2, 3)
        v.fill_(3.0)
        v[1].mul_(2)
        return v * b
    x = torch.tensor([1.0, 2.0, 3.0])
    xs = torch.stack([x, -x])
    out = _TRANSFORMS[transform](fills)(xs if transform == "vmap" else x)
    if transform == "grad":
        torch.testing.assert_close(out, torch.zeros(3))     # every element is overwritten
    else:
        want = torch.stack([fills(x), fills(-x)]) if transform == "vmap" else fills(x)
        torch.testing.assert_close(out, want)
        assert (want == 36).all()

    def partial(a):
        b = a * 2 + 1
        b.expand(2, 3).index_put_((torch.tensor([0]),), torch.tensor(1.0))
        return b
    with pytest.raises(Exception, match="index_put_.*share memory"):
        _TRANSFORMS[transform](partial)(xs if transform == "vmap" else x)


@pytest.mark.parametrize("name", ["norm", "norm3", "std", "normalize", "cosine_similarity", "pairwise_distance"])
def test_half_precision_norms_accumulate_in_float32_as_torch(name):
    # x*x of a float16 above 256 overflows: these were inf (or normalize 0) under jit, grad
    # and vmap where torch's kernels, which accumulate in float32, give finite values.
    import torch.nn.functional as F
    fns = {"norm": lambda x: x.norm(dim=1), "norm3": lambda x: torch.linalg.vector_norm(x, 3, dim=1),
           "std": lambda x: x.std(1), "normalize": lambda x: F.normalize(x, dim=1),
           "cosine_similarity": lambda x: F.cosine_similarity(x, x.flip(0), dim=1),
           "pairwise_distance": lambda x: F.pairwise_distance(x, x.flip(0))}
    f = fns[name]
    x = (torch.randn(3, 8, generator=torch.Generator().manual_seed(0)) * 400).half()
    want = f(x)
    assert want.isfinite().all()
    torch.testing.assert_close(functx.jit(f)(x), want, rtol=2e-3, atol=1e-3)
    # the derivative against float64 (torch's own float16 backward of the 3-norm is nan)
    g = functx.grad(lambda x: f(x.half()).float().sum())(x.float())
    want_g = torch.func.grad(lambda x: f(x).sum())(x.double())
    torch.testing.assert_close(g.double(), want_g, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("reduce", ["all", "any", "all_dim", "any_empty"])
def test_all_and_any_of_uint8_stay_uint8_as_torch(reduce):
    # functx returned bool: x.all() - y then raised where torch subtracts (found by fuzzing)
    f = {"all": lambda x: x.all(), "any": lambda x: x.any(), "all_dim": lambda x: x.all(0, keepdim=True),
         "any_empty": lambda x: x[:0].any()}[reduce]
    x = torch.tensor([2, 0, 7], dtype=torch.uint8)
    want = f(x)
    for got in (functx.jit(f)(x), functx.vmap(f)(x.reshape(1, 3))[0]):
        assert got.dtype == want.dtype == torch.uint8 and torch.equal(got, want)


@pytest.mark.parametrize("divisor", [-1, -3, 7])
def test_remainder_of_uint8_by_a_python_int_casts_it_as_torch(divisor):
    # torch casts the int to uint8 (-1 is 255); functx applied the negative-divisor correction
    # to the uncast -1: 252 % -1 gave 251 (found by the fuzzer)
    x = torch.tensor([252, 3, 0, 128, 255], dtype=torch.uint8)
    f = lambda x: torch.remainder(x, divisor)
    assert torch.equal(functx.jit(f)(x), f(x))
    assert torch.equal(functx.vmap(f)(x[None])[0], f(x))


def test_logcumsumexp_over_an_empty_tensor_differentiates():
    # the opaque fallback's derivative reduced a max over the empty dim: grad/jvp raised
    x = torch.zeros(0, 1, dtype=torch.float64)
    f = lambda x: torch.logcumsumexp(x, 0).sum() + 1
    assert functx.jit(functx.grad(f))(x).shape == (0, 1)
    assert functx.jvp(f, (x,), (x,))[1].item() == 0.0


def test_grad_of_det_at_a_singular_matrix_is_the_adjugate():
    A = torch.zeros(2, 2, dtype=torch.float64)
    torch.testing.assert_close(functx.grad(torch.linalg.det)(A), torch.func.grad(torch.linalg.det)(A))   # 0
    B = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64)      # rank 1: adj(B)^T = [[4, -2], [-2, 1]]
    torch.testing.assert_close(functx.grad(torch.linalg.det)(B), torch.tensor([[4.0, -2.0], [-2.0, 1.0]],
                                                                              dtype=torch.float64))


def _cofactors(a):
    """det's gradient from values only: the cofactor matrix, each entry a minor's determinant."""
    n = a.shape[-1]
    out = torch.empty_like(a)
    for i in range(n):
        for j in range(n):
            keep_i, keep_j = [k for k in range(n) if k != i], [k for k in range(n) if k != j]
            minor = a[..., keep_i, :][..., :, keep_j]
            out[..., i, j] = (-1) ** (i + j) * (torch.linalg.det(minor) if n > 1 else torch.ones_like(a[..., 0, 0]))
    return out


_SINGULAR = {
    "zero_2": torch.zeros(2, 2),
    "zero_3": torch.zeros(3, 3),
    "zero_1": torch.zeros(1, 1),
    "rank1_2": torch.tensor([[1.0, 2.0], [2.0, 4.0]]),
    "rank1_3": torch.outer(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, -1.0, 2.0])),   # adj = 0
    "rank2_3": torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]),             # adj != 0
    "rank2_3_scaled": 1000 * torch.tensor([[2.0, 0.0, 1.0], [1.0, 3.0, 0.0], [3.0, 3.0, 1.0]]),
    "rank3_4": torch.tensor([[1.0, 2.0, 0.0, 1.0], [0.0, 1.0, 1.0, 2.0], [1.0, 3.0, 1.0, 3.0], [2.0, 0.0, 1.0, 1.0]]),
    # past 4 x 4 the singular branch interpolates det(A / r + tI) instead of expanding cofactors
    "zero_5": torch.zeros(5, 5),
    "rank4_5": torch.tensor([[2.0, -1.0, 0.0, 1.0, 3.0], [1.0, 1.0, 2.0, 0.0, -1.0], [3.0, 0.0, 2.0, 1.0, 2.0],
                             [0.0, 2.0, -1.0, 1.0, 1.0], [1.0, 0.0, 1.0, -2.0, 0.5]]),
    "rank4_6": torch.tensor([[1.0, 0, 2, 1], [0, 1, 1, 0], [2, 1, 0, 1], [1, 1, 1, 1], [0, 2, 1, -1], [1, 0, 0, 2]])
    @ torch.tensor([[1.0, 2, 0, 1, 0, 1], [0, 1, 1, 0, 2, 1], [1, 0, 1, 1, 1, 0], [2, 1, 0, 0, 1, 1]]),   # adj = 0
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(_SINGULAR))
def test_det_derivatives_at_singular_matrices(name, dtype):
    # grad: the adjugate transpose, as torch.func (torch's SVD formula) and finite differences;
    # rank n-2 (rank1_3) has adjugate 0, rank n-1 a nonzero one
    a64 = _SINGULAR[name].double()
    a = a64.to(dtype)
    det = torch.linalg.det
    scale = a64.abs().max().clamp(min=1) ** (a.shape[-1] - 1)
    tol = dict(rtol=0, atol=(1e-12 if dtype == torch.float64 else 1e-5) * scale)
    want = _cofactors(a64)
    torch.testing.assert_close(central_differences(det, a64, 1e-3 * a64.abs().max().clamp(min=1)), want, **tol)
    torch.testing.assert_close(functx.grad(det)(a).double(), want, **tol)
    torch.testing.assert_close(torch.func.grad(det)(a).double(), want, **tol)
    if name == "rank1_3":
        assert want.abs().max() < 1e-12
    if name == "rank2_3":
        assert want.abs().max() > 1
    torch.testing.assert_close(functx.grad(torch.det)(a).double(), want, **tol)           # the aliases
    torch.testing.assert_close(functx.grad(lambda m: m.det())(a).double(), want, **tol)
    if a.shape[-1] <= 4:    # (staged past 4 x 4, det keeps the LU derivative: linalg.py, _linalg_det)
        torch.testing.assert_close(functx.jit(functx.grad(det))(a).double(), want, **tol)
    torch.testing.assert_close(functx.jit(det)(a), det(a))                # the value is torch's
    torch.testing.assert_close(functx.vmap(det)(a[None])[0], det(a))
    # jvp: <cofactors, v>. torch.func.jvp gives 0 at these matrices (its forward formula is
    # tr(A^{-1} V) det(A) through perturbed LU factors): finite differences decide, for functx
    v = torch.linspace(-1, 1, a.numel(), dtype=torch.float64).reshape(a.shape)
    torch.testing.assert_close(functx.jvp(det, (a,), (v.to(dtype),))[1].double(), (want * v).sum(), **tol)
    if dtype == torch.float64:
        # second order, from the cofactors' finite differences: hessian (reverse over reverse)
        # and jvp of jvp (forward over forward). torch.func.hessian agrees where it is finite
        # and is nan at the zero matrices (the SVD's derivative at repeated singular values)
        h = 1e-3 * a64.abs().max().clamp(min=1)
        want2 = central_differences(_cofactors, a64, h)
        tol2 = dict(rtol=0, atol=1e-8 * scale)
        torch.testing.assert_close(functx.hessian(det)(a), want2, **tol2)
        torch.testing.assert_close(functx.jacfwd(functx.jacrev(det))(a), want2, **tol2)
        fwd_fwd = functx.jvp(lambda b: functx.jvp(det, (b,), (v,))[1], (a,), (v,))[1]
        torch.testing.assert_close(fwd_fwd, torch.einsum("ij,ijkl,kl->", v, want2, v), **tol2)
        theirs = torch.func.hessian(det)(a)
        if name.startswith("zero") and a.shape[-1] > 1:
            assert theirs.isnan().all()
        else:
            torch.testing.assert_close(theirs, want2, **tol2)


@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_det_gradient_of_a_batch_with_singular_and_nonsingular_matrices(dtype, size):
    # one batch, some matrices singular: each gets its own formula (the double where), under
    # grad, vmap(grad), jit(grad) (one graph for every value), jit(vmap(grad)) and vmap(grad(jit))
    g = torch.Generator().manual_seed(0)
    first, second = ("rank2_3", "rank1_3") if size == 3 else ("rank4_5", "zero_5")
    a64 = torch.stack([_SINGULAR[first].double(), torch.randn(size, size, dtype=torch.float64, generator=g),
                       _SINGULAR[second].double(), torch.zeros(size, size, dtype=torch.float64),
                       torch.randn(size, size, dtype=torch.float64, generator=g)])
    a = a64.to(dtype)
    want = _cofactors(a64)
    tol = dict(rtol=0, atol=1e-12 if dtype == torch.float64 else 2e-5)
    total = lambda m: torch.linalg.det(m).sum()     # noqa: E731
    per_matrix = functx.grad(torch.linalg.det)
    jitted = functx.jit(functx.grad(total))
    staged = (jitted(a), functx.jit(functx.vmap(per_matrix))(a), functx.vmap(functx.grad(functx.jit(torch.linalg.det)))(a))
    for got in (functx.grad(total)(a), functx.vmap(per_matrix)(a)) + (staged if size <= 4 else ()):
        torch.testing.assert_close(got.double(), want, **tol)
    if size > 4:        # staged past 4 x 4: the LU derivative (right where the matrix is not singular)
        for got in staged:
            torch.testing.assert_close(got[[1, 4]].double(), want[[1, 4]], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.stack([torch.func.grad(torch.linalg.det)(m) for m in a]).double(), want, **tol)
    nonsingular = a[[1, 4]]
    torch.testing.assert_close(jitted(nonsingular).double(), want[[1, 4]], **tol)
    assert len(jitted._cache.entries) <= 2
    if dtype == torch.float64:
        hess = functx.vmap(functx.hessian(torch.linalg.det))(a)
        torch.testing.assert_close(hess, torch.stack([central_differences(_cofactors, m, 1e-3) for m in a64]),
                                   rtol=0, atol=1e-7)


def test_det_gradient_at_singular_matrices_with_large_entries():
    # the singular branch scales A by r = max |A_ij| and multiplies by r^n; float32 matrices
    # take it in float64, so |A|^n past float32's range still gives the adjugate
    a = torch.tensor([[1e20, 2e20], [2e20, 4e20]])
    torch.testing.assert_close(functx.grad(torch.linalg.det)(a), torch.func.grad(torch.linalg.det)(a))
    torch.testing.assert_close(functx.grad(torch.linalg.det)(a), torch.tensor([[4e20, -2e20], [-2e20, 1e20]]))
    # past float64's range (r^n = 1e400) functx's derivative is not finite (torch.func's SVD
    # formula gives the adjugate, 4e200); the value is still torch's
    b = a.double() * 1e180
    torch.testing.assert_close(functx.jit(torch.linalg.det)(b), torch.linalg.det(b))
    assert not functx.grad(torch.linalg.det)(b).isfinite().any()


@pytest.mark.parametrize("size", [2, 5])
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_det_of_matrices_with_non_finite_entries_keeps_torchs_values(bad, size):
    # an inf entry made the (zero or identity) matrix look singular against max |A_ij| = inf: the
    # singular branch turned det's value into nan (torch: inf) and its gradient into a finite
    # one (torch.func: nan). Such matrices take the LU path, as before
    for base in (torch.eye(size, dtype=torch.float64), torch.zeros(size, size, dtype=torch.float64)):
        a = base.clone()
        a[0, 0] = bad
        want = torch.linalg.det(a)
        for got in (functx.jit(torch.linalg.det)(a), functx.vmap(torch.linalg.det)(a[None])[0]):
            torch.testing.assert_close(got, want, equal_nan=True)
        for grad in (functx.grad(torch.linalg.det), functx.jit(functx.grad(torch.linalg.det))):
            assert not grad(a).isfinite().any()


def test_slogdet_and_logdet_derivatives_at_a_singular_matrix_are_not_finite_as_torch():
    # log|det| has no derivative at a singular matrix (A^{-T} does not exist): torch.func raises
    # (linalg.solve: singular), torch.autograd returns infs and nans; functx's values match
    # torch's (-inf) and its gradient is nan: no finite, silently wrong number
    a = _SINGULAR["rank1_2"].double()
    for f in (lambda m: torch.linalg.slogdet(m).logabsdet, torch.logdet, lambda m: torch.linalg.slogdet(m)[1]):
        torch.testing.assert_close(functx.jit(f)(a), f(a))
        assert f(a).item() == float("-inf")
        with pytest.raises(Exception, match="singular"):
            torch.func.grad(f)(a)
        leaf = a.clone().requires_grad_()
        assert not torch.autograd.grad(f(leaf), leaf)[0].isfinite().any()
        assert not functx.grad(f)(a).isfinite().any()
    # the sign's gradient is 0 everywhere, as torch.func's
    sign = lambda m: torch.linalg.slogdet(m).sign       # noqa: E731
    torch.testing.assert_close(functx.grad(sign)(a), torch.func.grad(sign)(a))


def test_nan_to_num_of_xlogy_where_it_was_nan_has_zero_derivative():
    """nan_to_num(xlogy(x, x)) is 0 near a negative x (x log x is nan there): its derivative
    is 0, and a program's other outputs keep theirs. xlogy's jvp in x was t * log(y), so the
    zero cotangent nan_to_num sends back met log(-0.43) = nan and the whole gradient was nan
    (found by the nightly fuzzer); it is xlogy(t, y), 0 where t is 0, as torch's formula.
    torch.func and float64 central differences agree."""
    x = torch.tensor([-0.42720461466349374, 0.7], dtype=torch.float64)
    f = lambda x: (torch.nan_to_num(torch.xlogy(x, x)) + torch.exp(x)).sum()     # noqa: E731
    want = central_differences(f, x)
    torch.testing.assert_close(torch.func.grad(f)(x), want)
    for got in (functx.grad(f)(x), functx.jit(functx.grad(f))(x), functx.vmap(functx.grad(f))(x[None])[0],
                functx.jacfwd(f)(x)):
        torch.testing.assert_close(got, want)
