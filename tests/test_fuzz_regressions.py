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
