"""jit with dynamic Python numbers (weakly typed, keyed by type), static_argnames, methods,
and explained retraces. The oracle is always eager PyTorch running the same function."""
import math
import operator
import warnings

import pytest
import torch

import functx

DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int32, torch.int64, torch.float16, torch.bfloat16,
          torch.float32, torch.float64]
SCALARS = [2, 2.0, True, -0.0, math.nan, -7, 3.5, 2 ** 40, 0.1]
OPS = [operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.pow,
       operator.lt, operator.eq]


def _tensor(dtype, shape):
    x = torch.tensor([3, -2, 5, 1][:max(1, math.prod(shape))], dtype=torch.float64).reshape(shape)
    return (x > 0) if dtype is torch.bool else x.to(dtype)


def _same(eager, jitted):
    """Same dtype and shape, values equal (to the dtype's rounding for half types)."""
    assert jitted.dtype == eager.dtype and jitted.shape == eager.shape, (eager, jitted)
    tol = {torch.float16: 1e-3, torch.bfloat16: 1e-2}.get(eager.dtype, 1e-6)
    torch.testing.assert_close(jitted.double(), eager.double(), rtol=tol, atol=tol, equal_nan=True)


def _check(f, *args):
    try:
        eager = f(*args)
    except Exception as e:       # eager raises (bool - bool, int ** negative): jit must raise too
        with pytest.raises(type(e) if not isinstance(e, RuntimeError) else Exception):
            functx.jit(f)(*args)
        return
    _same(eager, functx.jit(f)(*args))


def _promotion_matches_eager(op, dtypes, scalars):
    jf = functx.jit(op, cache_limit=None)
    jr = functx.jit(lambda s, x: op(s, x), cache_limit=None)
    for dtype in dtypes:
        for shape in [(), (4,)]:
            x = _tensor(dtype, shape)
            for s in scalars:
                if s == 2 ** 40 and dtype in (torch.float16, torch.bfloat16):
                    continue   # known gap, static or dynamic: the number is rounded to the half type first
                for f, j, args in [(op, jf, (x, s)), (lambda s, x: op(s, x), jr, (s, x))]:
                    try:
                        eager = f(*args)
                    except Exception:
                        with pytest.raises(Exception):
                            j(*args)
                        continue
                    try:
                        _same(eager, j(*args))
                    except functx.ConcretizationError:
                        # int/half ** a dynamic int: torch checks the exponent's value, so it must be static
                        assert op is operator.pow and type(s) is int and not dtype in (torch.float32, torch.float64)
                        _same(eager, functx.jit(f, static_argnums=0 if args[0] is s else 1)(*args))
    assert jf.cache_size() <= len(dtypes) * 2 * 4     # per dtype/shape: int, float, True, 2**40 (by value)


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.__name__)
def test_scalar_promotion_matches_eager(op):
    _promotion_matches_eager(op, [torch.bool, torch.int32, torch.float16, torch.float32],
                             [2, 2.0, True, -0.0, math.nan, 2 ** 40])


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS, ids=lambda op: op.__name__)
def test_scalar_promotion_matches_eager_for_every_dtype_and_scalar(op):
    _promotion_matches_eager(op, DTYPES, SCALARS)


def test_arithmetic_among_python_numbers_is_pythons():
    def f(x, a, b):
        return x * (a / 3) + (a // 2) * b - (-a) * abs(b) + (a > 1) * x + (a > 0) + (b > 0)
    for x in [torch.randn(3, dtype=torch.float64), torch.tensor(2.0), torch.arange(3, dtype=torch.int32)]:
        for a, b in [(7, 2), (7.5, -3), (-3, 0.25), (2, True)]:
            _same(f(x, a, b), functx.jit(f)(x, a, b))


def test_tensors_made_from_dynamic_python_numbers_are_eagers():
    # torch.as_tensor(lr) is a float32 tensor that promotes as a tensor: under jit it was the
    # traced float64 number itself (unrounded, and float64 where it decides the dtype), and
    # torch.tensor(lr) raised ConcretizationError
    def f(x, s, n):
        a, b, c = torch.as_tensor(s), torch.tensor(s), torch.asarray(n)
        return (a, b, c, torch.as_tensor(s, dtype=torch.float64), torch.stack([a, b]), x * a, a + 1,
                c + torch.tensor(2, dtype=torch.int32), a.expand(2) * x.half(), torch.as_tensor(-s * 2))
    x = torch.ones(2, dtype=torch.float64)
    jf = functx.jit(f)
    for s, n in [(0.3, 3), (0.7, -5)]:
        for e, j in zip(f(x, s, n), jf(x, s, n)):
            assert e.dtype == j.dtype and torch.equal(e, j), (e, j)
    assert jf.trace_count == 1


def test_scalar_values_keyed_by_type_not_value():
    step = functx.jit(lambda p, g, lr: p - lr * g)
    p, g = torch.randn(5), torch.randn(5)
    for k in range(50):
        lr = 0.1 * 0.9 ** k
        torch.testing.assert_close(step(p, g, lr), p - lr * g)
    assert step.trace_count == 1
    for s in [2, 2.0, -0.0, math.nan, math.inf]:
        f = functx.jit(lambda x, s: x / s + s)
        _same(torch.ones(2) / s + s, f(torch.ones(2), s))
    f = functx.jit(lambda x, s: x / s)
    _same(torch.ones(2) / -0.0, f(torch.ones(2), -0.0))     # -inf: the sign of zero survives
    _same(torch.ones(2) / 0.0, f(torch.ones(2), 0.0))
    assert f.trace_count == 1
    _same(torch.ones(2) / True, f(torch.ones(2), True))     # bools are static
    assert f.trace_count == 2


def test_scalars_under_transforms_inside_jit():
    def loss(w, x, lr):
        return ((w * x).sum() * lr) ** 2
    w, x = torch.randn(4), torch.randn(4)
    g = functx.jit(functx.grad(loss))
    for lr in [0.5, 2.0]:
        torch.testing.assert_close(g(w, x, lr), torch.func.grad(loss)(w, x, lr))
    v = functx.jit(functx.vmap(lambda x, s: x * s, in_axes=(0, None)))
    torch.testing.assert_close(v(torch.randn(3, 2), 1.5).shape, torch.Size([3, 2]))
    assert g.trace_count == 1


def test_concrete_use_names_the_argument_and_static_argnames_fixes_it():
    def f(x, n, scale=1.0):
        return x.reshape(n, -1) * scale
    x = torch.randn(6)
    with pytest.raises(functx.ConcretizationError, match="argument 'n'.*static_argnames"):
        functx.jit(f)(x, 2)
    with pytest.raises(functx.ConcretizationError, match="argument 'lr'"):
        functx.jit(lambda x, lr: x if lr > 0 else -x)(x, 0.5)
    by_name = functx.jit(f, static_argnames="n")
    torch.testing.assert_close(by_name(x, 2, 3.0), f(x, 2, 3.0))
    torch.testing.assert_close(by_name(x, 2, 0.5), f(x, 2, 0.5))
    assert by_name.trace_count == 1                                     # scale is dynamic
    torch.testing.assert_close(by_name(x, 3, 0.5), f(x, 3, 0.5))
    assert by_name.trace_count == 2                                     # n is static
    torch.testing.assert_close(by_name(x, n=3), f(x, n=3))             # static by keyword too
    torch.testing.assert_close(by_name(x, n=2, scale=0.5), f(x, n=2, scale=0.5))
    by_num = functx.jit(f, static_argnums=1)
    torch.testing.assert_close(by_num(x, n=3), f(x, n=3))              # the number names 'n' too
    with pytest.raises(TypeError, match="static argument 'n'.*not hashable"):
        functx.jit(lambda x, n: x, static_argnames="n")(x, n=[1])
    with pytest.raises(TypeError, match="static_argnames"):
        functx.jit(f, static_argnames=3)


def test_jit_on_methods_binds_self_statically():
    class Scaler(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(3))

        @functx.jit
        def forward(self, x, lr):
            return x * self.w * lr

    a, b, x = Scaler(), Scaler(), torch.randn(3)
    with torch.no_grad():
        for m in (a, b, a):
            torch.testing.assert_close(m(x, 0.5), x * m.w * 0.5)
        a.w.mul_(2)                                   # in-place updates of self's tensors are seen
        torch.testing.assert_close(a(x, 0.5), x * a.w * 0.5)
    assert Scaler.forward.cache_size() == 2           # one entry per instance

    class Unhashable:
        __hash__ = None

        @functx.jit
        def f(self, x):
            return x
    with pytest.raises(TypeError, match="self .*must be hashable"):
        Unhashable().f(x)


def test_retraces_are_explained_and_the_cache_is_bounded():
    f = functx.jit(lambda x, s: x.sum(0) * s, dynamic=False)   # static shapes: one trace per size
    f(torch.randn(3, 4), 1.0)
    f(torch.randn(5, 4), 1.0)
    f(torch.randn(5, 4, dtype=torch.float64), 1.0)
    f(torch.randn(5, 4, dtype=torch.float64), 1)
    retraces = [str(r) for r in f.cache_info().retraces]
    assert retraces == ["argument 'x': dim 0 size 3 -> 5", "argument 'x': dtype torch.float32 -> torch.float64",
                        "argument 's': Python float (dynamic) -> Python int (dynamic)"]
    e = functx.explain(f)(torch.randn(7, 4, dtype=torch.float64), 1)
    assert str(e.retrace) == "argument 'x': dim 0 size 5 -> 7" and "-- jit cache --" in str(e)
    assert functx.explain(f)(torch.randn(5, 4, dtype=torch.float64), 2).retrace is None

    with pytest.warns(UserWarning, match="retracing .*argument 'x': dim 1 size 4 -> 2"):
        functx.jit(lambda x: x + 1, warn_on_retrace=True)(torch.randn(3, 4)), \
            functx.jit(lambda x: x + 1, warn_on_retrace=True)
        w = functx.jit(lambda x: x + 1, warn_on_retrace=True, dynamic=False)
        w(torch.randn(3, 4))
        w(torch.randn(3, 2))

    g = functx.jit(lambda x: x * 2, cache_limit=3, dynamic=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(1, 9):
            torch.testing.assert_close(g(torch.ones(n)), torch.ones(n) * 2)
        torch.testing.assert_close(g(torch.ones(1)), torch.ones(1) * 2)   # evicted: traced again, right
    limit = [w for w in caught if "cache limit" in str(w.message)]
    assert len(limit) == 1 and "argument 'x'" in str(limit[0].message)
    info = g.cache_info()
    assert info.size == 3 and info.evictions == 6 and info.traces == 9
    with pytest.raises(ValueError, match="cache_limit"):
        functx.jit(lambda x: x, cache_limit=0)


def test_transforms_accept_python_floats():
    """grad/jvp/vjp/jacobians of Python floats: the float becomes torch.tensor(x) (a 0-d
    default-dtype tensor), so torch.func on that tensor is the oracle."""
    def f(x):
        return torch.sin(x) * x ** 2
    t = torch.tensor(3.0)
    ref_grad = torch.func.grad(f)(t)
    torch.testing.assert_close(functx.grad(f)(3.0), ref_grad)
    torch.testing.assert_close(functx.jit(functx.grad(f))(3.0), ref_grad)      # traced float: same dtype
    torch.testing.assert_close(functx.value_and_grad(f)(3.0), (f(t), ref_grad))
    torch.testing.assert_close(functx.jvp(f, (3.0,), (1.0,)), torch.func.jvp(f, (t,), (torch.tensor(1.0),)))
    torch.testing.assert_close(functx.vjp(f, 3.0)[1](1.0), (ref_grad,))
    torch.testing.assert_close(functx.linearize(f, 3.0)[1](1.0), ref_grad)
    for jac in (functx.jacfwd, functx.jacrev):
        torch.testing.assert_close(jac(f)(3.0), ref_grad)
    torch.testing.assert_close(functx.hessian(f)(3.0), torch.func.hessian(f)(t))
    torch.testing.assert_close(functx.grad(lambda x, y: x * y, argnums=(0, 1))(2.0, torch.tensor(3.0)),
                               (torch.tensor(3.0), torch.tensor(2.0)))
    assert functx.grad(f)(3.0).dtype == torch.get_default_dtype() and functx.grad(f)(3.0).shape == ()
    with pytest.raises(TypeError, match="pass 3.0, not 3"):
        functx.grad(f)(3)


def test_a_dimension_that_keeps_changing_is_named_before_the_cache_fills():
    from functx.compile.jit_cache import DIM_WARN_AFTER
    f = functx.jit(lambda x, y: (x * y).sum(1), dynamic=False)     # static shapes: a trace per size
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(1, DIM_WARN_AFTER + 4):
            torch.testing.assert_close(f(torch.ones(2, n), torch.ones(2, n)), torch.full((2,), float(n)))
    dim = [str(w.message) for w in caught if "changed size" in str(w.message)]
    assert len(dim) == 2 and "dim 1 of argument 'x'" in dim[0] and "dim 1 of argument 'y'" in dim[1]
    assert f.cache_size() == DIM_WARN_AFTER + 3 <= f.cache_info().limit


def test_python_float_to_the_power_of_a_dynamic_int():
    """Adam's bias correction, 1 - b1 ** t, with the step t a dynamic Python int: a float base
    with a traced exponent (it raised an AttributeError); one trace serves every step."""
    f = functx.jit(lambda x, t: x / (1 - 0.9 ** t) + 2.0 ** t)
    for t in (1, 2, 7):
        torch.testing.assert_close(f(torch.ones(3), t), torch.ones(3) / (1 - 0.9 ** t) + 2.0 ** t)
    assert f.cache_info().traces == 1
