"""functx.testing: the checkers pass on correct functions and catch wrong rules."""
import pytest
import torch

import functx
from functx.core import REGISTRY
from functx.core.trace import bind
from functx.frontend import unwrap, wrap
from functx.prims import elementwise as ew
from functx.testing import check_grads, check_transforms

X = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def _private_unary(name, impl, deriv, emit=None):
    """A test-only primitive (removed from the registry so completeness tests don't see it)."""
    p = ew.defunary(name, impl, None, deriv=deriv)
    if emit is not None:
        p.emit = emit
    REGISTRY.pop(name, None)
    return lambda x: wrap(bind(p, (unwrap(x),), {}))


# sin with a derivative 10% too large.
wrong_sin = _private_unary("test_wrong_sin", torch.sin, lambda x, y: ew.mul(ew.cos(x), 1.1))
# x**2 whose derivative rule says 3x (wrong); cube's rule 3 * wrong_sq(x) is right at first
# order and wrong at second.
wrong_sq = _private_unary("test_wrong_sq", torch.square, lambda x, y: ew.mul(x, 3.0))
cube = _private_unary("test_cube", lambda x: x ** 3, lambda x, y: ew.mul(unwrap(wrong_sq(x)), 3.0))
# Right derivative, but the jit backend's emitted code computes cos instead of sin.
bad_emit_sin = _private_unary("test_bad_emit_sin", torch.sin, lambda x, y: ew.cos(x),
                              emit=lambda eqn, srcs: f"torch.cos({srcs[0]})")

# A linear primitive (2x) with a correct jvp but a wrong transpose (3 ct): reverse mode only.
_scale_p = ew.defvectorized(functx.core.Primitive(
    "test_bad_transpose_scale", abstract_eval=lambda t: t, impl=lambda x: 2 * x,
    jvp=lambda primals, tangents: (_scale_p.bind(primals[0]), _scale_p.bind(tangents[0])),
    transpose=lambda ct, x: [ew.mul(ct, 3.0)]))
REGISTRY.pop("test_bad_transpose_scale", None)
bad_transpose = lambda x: wrap(_scale_p.bind(unwrap(x)))


def good(x, y):
    return (torch.tanh(x) * y.exp()).sum(), torch.sin(x) * y


def test_check_grads_passes_on_correct_functions():
    check_grads(good, (X, X.cos()), order=2)
    check_grads(lambda x: torch.softmax(x, 0) @ x, (X,), order=3, modes=("rev",))
    check_grads(lambda d: d["a"] * d["b"].sum(), ({"a": X, "b": X[:2]},), order=2)
    # float32 uses float32 tolerances
    check_grads(lambda x: (x.sin() ** 2).sum(), (X.float(),), order=2)


def test_check_grads_catches_wrong_jvp():
    with pytest.raises(AssertionError, match=r"fwd mode, order 1.*finite differences") as e:
        check_grads(lambda x: wrong_sin(x), (X,), order=1, modes=("fwd",))
    assert "max abs error" in str(e.value)
    with pytest.raises(AssertionError, match=r"rev mode, order 1.*finite differences"):
        check_grads(lambda x: wrong_sin(x), (X,), order=1, modes=("rev",))


def test_check_grads_catches_wrong_transpose():
    check_grads(bad_transpose, (X,), order=1, modes=("fwd",))     # the jvp is right
    with pytest.raises(AssertionError, match=r"rev mode, order 1"):
        check_grads(bad_transpose, (X,), order=1, modes=("rev",))
    with pytest.raises(AssertionError, match=r"rev mode"):
        check_grads(bad_transpose, (X,), order=1)


def test_check_grads_catches_wrong_second_derivative():
    check_grads(cube, (X,), order=1)
    with pytest.raises(AssertionError, match=r"fwd mode, order 2.*jvp\(f\)"):
        check_grads(cube, (X,), order=2, modes=("fwd",))
    with pytest.raises(AssertionError, match=r"order 2.*vjp\(f\)"):
        check_grads(cube, (X,), order=2, modes=("rev",))


def test_check_grads_argument_errors():
    with pytest.raises(ValueError, match="unknown modes"):
        check_grads(good, (X, X), modes=("fwd", "bwd"))
    with pytest.raises(TypeError, match="tuple of arguments"):
        check_grads(torch.sin, X)


def test_check_transforms_report():
    report = check_transforms(good, X, X.cos())
    assert report.ok and bool(report)
    text = str(report)
    for line in ("jacfwd vs finite differences", "jacrev vs finite differences", "jacfwd vs jacrev",
                 "jit vs eager"):
        assert line in text
    # integer arguments are not differentiated
    r = check_transforms(lambda x, i: x[i].sum() * x, X, torch.tensor([0, 2]))
    assert r.ok


def test_check_transforms_catches_wrong_rules():
    r = check_transforms(wrong_sin, X, raise_on_error=False)
    assert not r.ok
    failed = {row[0] for row in r.failures}
    assert "jacfwd vs finite differences" in failed and "jacrev vs finite differences" in failed
    assert "jit vs eager" not in failed
    with pytest.raises(AssertionError, match="MISMATCH"):
        check_transforms(wrong_sin, X)

    r = check_transforms(bad_transpose, X, raise_on_error=False)
    failed = {row[0] for row in r.failures}
    assert failed == {"jacrev vs finite differences", "jacfwd vs jacrev"}, str(r)

    r = check_transforms(bad_emit_sin, X, raise_on_error=False)
    assert {row[0] for row in r.failures} == {"jit vs eager"}, str(r)


def test_check_transforms_reports_exceptions():
    def needs_concrete(x):
        return x * 2 if x.sum() > 0 else x * 3      # fine eagerly, not under jit
    r = check_transforms(needs_concrete, X.abs(), raise_on_error=False)
    (row,) = r.failures
    assert row[0] == "jit vs eager" and "ConcretizationError" in row[4]
