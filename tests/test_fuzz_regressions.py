"""Disagreements the differential fuzzer (test_fuzz.py) found, each pinned by its smallest
program and checked against eager PyTorch / torch.func."""
import math

import pytest
import torch

import functx

NAN = math.nan


# ---------------------------------------------------------------- NaN through the safe roots
# norm / std / cdist guard their root with a where on "s > 0" for a finite derivative at 0;
# a NaN s failed the test and came out as 0.

@pytest.mark.parametrize("p", [2, 3, 0.5])
@pytest.mark.parametrize("transform", ["jit", "vmap"])
def test_norm_propagates_nan(p, transform):
    x = torch.tensor([[1e-6, NAN, -2.5], [1.0, 2.0, 3.0]], dtype=torch.float64)
    f = lambda x: torch.norm(x, dim=(0,), p=p)
    want = torch.stack([f(r) for r in x])
    got = functx.vmap(f)(x) if transform == "vmap" else torch.stack([functx.jit(f)(r) for r in x])
    torch.testing.assert_close(got, want, equal_nan=True)


def test_std_and_cdist_propagate_nan():
    one = torch.tensor([0.5], dtype=torch.float64)          # std of one element: nan
    t = torch.tensor([1.0], dtype=torch.float64)
    got = functx.jvp(lambda x: torch.std(x), (one,), (t,))
    want = torch.func.jvp(lambda x: torch.std(x), (one,), (t,))
    torch.testing.assert_close(got, want, equal_nan=True)
    a, b = torch.tensor([[NAN, 1.0]]), torch.tensor([[0.0, 1.0]])
    torch.testing.assert_close(functx.jit(torch.cdist)(a, b), torch.cdist(a, b), equal_nan=True)


# ---------------------------------------------------------------- relu keeps -0.0

@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_relu_of_negative_zero_is_negative_zero(backend):
    x = torch.tensor([-0.0, 0.0, -1.0, 2.0, NAN])
    got = functx.jit(torch.relu, backend=backend)(x)
    want = torch.relu(x)
    torch.testing.assert_close(got, want, equal_nan=True)
    assert torch.equal(got.signbit(), want.signbit())
    # and its derivative stays torch's: 0 at zero and at NaN
    xd = x.double()
    g = functx.grad(lambda x: torch.relu(x).sum())(xd)
    _, pull = torch.func.vjp(torch.relu, xd)
    torch.testing.assert_close(g, pull(torch.ones_like(xd))[0])


# ---------------------------------------------------------------- Triton: reductions over size-0 dims

@pytest.mark.parametrize("f", [lambda x: torch.prod(x, 0), lambda x: (torch.sum(x, 0) + 1, x * 2),
                               lambda x: torch.sum(x.reshape(0, 3), 0).exp()])
def test_triton_reduction_over_an_empty_dimension(f):
    x = torch.tensor([], dtype=torch.int64)
    got, want = functx.jit(f, backend="triton")(x), f(x)
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        assert g.dtype == w.dtype and torch.equal(g, w)


# ---------------------------------------------------------------- what eager PyTorch rejects, functx rejects

def _raises_like_torch(f, *args):
    with pytest.raises(Exception) as want:
        f(*args)
    with pytest.raises(want.type) as got:
        functx.jit(f)(*args)
    assert str(want.value).splitlines()[0] in str(got.value)


L, B, D = torch.tensor([1, 2]), torch.tensor([True, False]), torch.tensor([1.0, 2.0], dtype=torch.float64)


@pytest.mark.parametrize("f, args", [
    (torch.hypot, (L, L)),                                     # kernel not implemented for Long
    (lambda b: b.clone().relu_(), (B,)),
    (lambda a, b: a & b, (D, L)),                              # bitwise ops on floats
    (lambda b, n: b.clone().sub_(n), (B, L)),                  # bool subtraction
    (lambda b: b ** b, (B,)),
    (lambda b: b // True, (B,)),
    (lambda b: b % b, (B,)),
    (lambda n: n.clone().add_(1.5), (L,)),                     # in-place result can't be cast
], ids=["hypot-long", "relu-bool", "and-double", "sub-bool", "pow-bool", "floordiv-bool", "rem-bool",
        "add_-cast"])
def test_kernel_dtype_rules(f, args):
    _raises_like_torch(f, *args)


def test_kernel_dtype_check_ignores_value_dependent_errors():
    f = lambda d: torch.mvlgamma(d + 10, 5)     # a domain check on values: fine for these
    torch.testing.assert_close(functx.jit(f)(D), f(D))


@pytest.mark.parametrize("f", [lambda x: torch.max(x), lambda x: torch.amax(x, 0), lambda x: torch.argmax(x),
                               lambda x: torch.argmax(x, 0), lambda x: torch.max(x, 0),
                               lambda x: torch.amax(x, ()), lambda x: torch.amin(x, -2)])
def test_extrema_of_nothing_raise(f):
    _raises_like_torch(f, torch.empty(0, 3))
    f(torch.empty(2, 3))        # and are fine with elements


@pytest.mark.parametrize("fn", [torch.softmax, torch.log_softmax])
@pytest.mark.parametrize("shape, dim", [((0,), 0), ((2, 0), 1), ((0, 3), 0)])
def test_softmax_over_an_empty_dimension_under_grad(fn, shape, dim):
    x = torch.randn(shape, dtype=torch.float64)
    f = lambda x: fn(x, dim)
    got = functx.vjp(f, x)[1](torch.ones(shape, dtype=torch.float64))
    want = torch.func.vjp(f, x)[1](torch.ones(shape, dtype=torch.float64))
    assert got[0].shape == want[0].shape
    assert torch.equal(functx.jit(f)(x), f(x))


# ---------------------------------------------------------------- floor division at the edges

@pytest.mark.parametrize("transform", ["jit", "vmap"])
def test_floor_divide_matches_torch_at_infinities_zeros_and_signs(transform):
    inf = math.inf
    a = torch.tensor([3.0, -inf, inf, 5.0, -5.0, 0.0, -0.0, 7.0, 1e-30, 3.0, NAN, 2.5, -7.0])
    b = torch.tensor([-inf, 1.0, 1.0, 0.0, 0.0, 3.0, 3.0, -2.0, 3.0, inf, 1.0, 0.5, 2.0])
    for f in (lambda a, b: a // b, lambda a, b: torch.div(a, b, rounding_mode="floor"),
              lambda a, b: a // 2.0, lambda a, b: 3.0 // b):
        got = functx.jit(f)(a, b) if transform == "jit" else functx.vmap(f)(a, b)
        want = f(a, b)
        torch.testing.assert_close(got, want, equal_nan=True)
        zeros = want == 0
        assert torch.equal(got[zeros].signbit(), want[zeros].signbit())
    g = functx.grad(lambda a: (a // 2.0).sum() + (3.0 // a).sum())(torch.tensor([3.0, 4.0]))
    assert torch.equal(g, torch.zeros(2))       # piecewise constant, as torch's formula says


# ---------------------------------------------------------------- constant folding of where with a literal

def test_constant_folding_gives_where_literals_the_value_dtype():
    def f(x):
        ones = torch.ones_like(x, dtype=torch.float32)       # a constant: the graph folds it
        return torch.clamp(ones, -0.5, 0.5), torch.where(ones < 0, ones, -0.5), torch.full_like(ones, 2) >= 1.5
    x = torch.tensor(-4)
    for got, want in zip(functx.jit(f)(x), f(x)):
        assert got.dtype == want.dtype and torch.equal(got, want)


# ---------------------------------------------------------------- cummax/cummin: NaN and empty inputs

@pytest.mark.parametrize("fn", [torch.cummax, torch.cummin])
def test_cumulative_extrema_propagate_nan_and_accept_empty_inputs(fn):
    x = torch.tensor([[1.0, NAN, 3.0, NAN, -1.0], [2.0, 0.5, 4.0, 4.0, -math.inf]], dtype=torch.float64)
    for arg in (x, torch.empty(0, 3), torch.empty(3, 0)):
        want = fn(arg, 1 if arg.dim() > 1 and arg.shape[1] else 0)
        got = functx.jit(lambda a: tuple(fn(a, 1 if a.dim() > 1 and a.shape[1] else 0)))(arg)
        torch.testing.assert_close(got[0], want.values, equal_nan=True)
        assert torch.equal(got[1], want.indices)
    g = functx.grad(lambda a: fn(a, 1).values.nan_to_num().sum())(x)
    _, pull = torch.func.vjp(lambda a: fn(a, 1).values.nan_to_num(), x)
    torch.testing.assert_close(g, pull(torch.ones_like(x))[0])


@pytest.mark.parametrize("fn", [torch.any, torch.all])
@pytest.mark.parametrize("shape, dim", [((0,), -1), ((2, 0), 1), ((0, 3), 1), ((0, 3), None), ((1, 0, 4), 0)])
def test_any_all_of_empty_tensors(fn, shape, dim):
    x = torch.zeros(shape)
    for keepdim in (False, True):
        f = (lambda a: fn(a)) if dim is None else (lambda a: fn(a, dim=dim, keepdim=keepdim))
        got, want = functx.jit(f)(x), f(x)
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_hypot_at_extremes_and_nan_beside_inf_like_torch():
    # sqrt(a*a + b*b) overflowed at 3e20 (float32) and gave nan for hypot(nan, inf); torch: 5e20, inf
    a = torch.tensor([0.0, 3e20, 1e-30, float("nan"), float("inf"), -3.0, 0.0, 2.0])
    b = torch.tensor([0.0, 4e20, 1e-30, float("inf"), float("nan"), 4.0, -5.0, 2.0])
    for fn in (functx.jit(torch.hypot, backend="eager"), functx.vmap(torch.hypot)):
        torch.testing.assert_close(fn(a, b), torch.hypot(a, b), equal_nan=True)
    pts = torch.tensor([[-3.0, 4.0], [0.0, -5.0], [2.0, 2.0], [1e-3, 7.0]], dtype=torch.float64)
    h = lambda v: torch.hypot(v[0], v[1])   # noqa: E731  second derivatives at a = 0 and |a| = |b| too
    torch.testing.assert_close(functx.vmap(functx.hessian(h))(pts), torch.func.vmap(torch.func.hessian(h))(pts))


def test_t_of_more_than_two_dims_raises_under_jit_even_unused():
    with pytest.raises(RuntimeError, match="t\\(\\) expects a tensor with <= 2 dimensions"):
        functx.jit(lambda x: (x.t(), x)[1])(torch.zeros(1, 1, 1))


def test_floor_divide_of_bools_raises_under_jit_even_unused():
    # aten.floor_divide is not tagged pointwise, so its dtype check only ran when the graph ran
    with pytest.raises(NotImplementedError, match="not implemented for 'Bool'"):
        functx.jit(lambda x: (x // x, x)[1])(torch.tensor([False, True]))


def test_fallback_ops_on_empty_inputs_raise_as_torch_under_jit():
    # median over an empty dim passed torch's meta function; its kernel raises
    x = torch.zeros(0, 1)
    with pytest.raises(IndexError, match="median\\(\\): Expected reduction dim 0 to have non-zero size"):
        functx.jit(lambda x: (torch.median(x, dim=0).values, x.exp())[1])(x)
    torch.testing.assert_close(functx.jit(lambda x: torch.median(x, dim=1).values)(x), torch.median(x, dim=1).values)


def test_in_place_results_must_keep_the_written_shape():
    # masked_fill_ through a view with a mask of more dims was broadcast down silently under jit
    def f(x):
        v = torch.exp(x)
        v.select(0, 0).masked_fill_(x < 0, 0.5)
        return v
    with pytest.raises(RuntimeError, match="doesn't match the broadcast shape"):
        f(torch.zeros(1, 1, 1))
    with pytest.raises(RuntimeError, match="doesn't match the broadcast shape"):
        functx.jit(f)(torch.zeros(1, 1, 1))


# ---------------------------------------------------------------- reductions over no elements

@pytest.mark.parametrize("shape, dim", [((0,), 0), ((3, 0), 1), ((0, 2), 0)])
def test_derivatives_of_prod_over_no_elements(shape, dim):
    """The product of no elements is the constant 1: its derivatives are zeros (the jvp rule
    reshaped an empty tangent to the output shape and raised)."""
    from functx.testing import check_derivatives
    x = torch.zeros(shape, dtype=torch.float64)
    f = lambda x: (torch.prod(x, dim=dim),)          # noqa: E731
    check_derivatives(f, (x,))
    g = lambda x: torch.prod(x, dim=dim).sum()       # noqa: E731
    torch.testing.assert_close(functx.jit(functx.grad(g))(x), torch.func.grad(g)(x))
    torch.testing.assert_close(functx.vmap(functx.grad(g))(x[None]), torch.func.vmap(torch.func.grad(g))(x[None]))


def test_checker_does_not_compare_tangents_at_nan_values():
    """jvp of var over no elements: the value is nan in both; torch.func's tangent is 0 (its
    formula sums no terms), functx's nan (it divides by the count, as JAX does). A function has
    no derivative at a nan value and finite differences cannot decide, so check_derivatives
    compares tangents only where the value is finite; elsewhere they must still agree."""
    from functx.testing import check_derivatives
    empty = torch.zeros(0, dtype=torch.float64)
    f = lambda x: (torch.var(x, dim=0, correction=0),)      # noqa: E731
    assert torch.isnan(functx.jvp(f, (empty,), (empty,))[0][0])
    check_derivatives(f, (empty,))
    wrong = lambda x: (torch.stack([x.sum() * 0 + NAN, x.sum()]),)    # noqa: E731
    with pytest.raises(AssertionError):      # a finite element's tangent is still compared
        from functx.testing.differential import _where_finite
        got = _where_finite([torch.tensor([1.0, 2.0])], [torch.tensor([NAN, 1.0])])
        want = _where_finite([torch.tensor([5.0, 3.0])], [torch.tensor([NAN, 1.0])])
        torch.testing.assert_close(got, want)
    check_derivatives(wrong, (torch.ones(2, dtype=torch.float64),))


def test_checker_has_no_oracle_where_torch_func_raises_and_no_output_is_finite():
    """rsqrt of a negative number, then an in-place add: torch.func's vjp raises (a saved tensor
    was modified in place), the output is nan, so finite differences cannot decide either;
    functx's nan is accepted. With a finite output, finite differences still decide."""
    from functx.testing import check_derivatives

    def program(x0):
        v0 = torch.rsqrt(x0)
        v0.add_(x0)
        return (v0,)
    check_derivatives(program, (torch.tensor(-0.48678075071242677, dtype=torch.float64),))
    x = torch.tensor(0.7, dtype=torch.float64)
    got = functx.grad(lambda x: program(x)[0])(x)
    torch.testing.assert_close(got, -0.5 * x ** -1.5 + 1)


def test_a_tangent_has_its_primals_dtype():
    """An in-place add of a float64 value into a float32 tensor: functx's tangent is float32
    (its primal's dtype); torch.func's forward AD keeps float64. The checker compares values in
    the primal's dtype (float32 finite differences are too coarse to decide)."""
    from functx.testing import check_derivatives
    f = lambda x: (torch.ones_like(x, dtype=torch.float32).add_(x),)      # noqa: E731
    x, t = torch.tensor(0.66, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    _, (tangent,) = functx.jvp(f, (x,), (t,))
    assert tangent.dtype == torch.float32
    torch.testing.assert_close(tangent, torch.tensor(0.3))
    check_derivatives(f, (x,))


def test_index_put_with_another_dtype_raises_as_torch():
    # nightly fuzz (invalid programs): jit converted the source to the destination's dtype
    def program(x, v):
        y = x + 1
        y.index_put_((torch.tensor([], dtype=torch.int64),), v)
        return y
    x, v = torch.randn(4), torch.tensor(4)
    with pytest.raises(RuntimeError, match="dtypes match"):
        program(x, v)
    with pytest.raises(RuntimeError, match="dtypes match"):
        functx.jit(program)(x, v)
