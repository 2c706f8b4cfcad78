"""The differential fuzzer (issue 9): random PyTorch programs from functx.testing.strategies,
run as eager PyTorch vs functx.jit (eager and Triton-interpreter backends), vmap vs a
Python loop, vjp/jvp vs torch.func (float64 finite differences decide where the two
disagree); where eager PyTorch raises, functx must raise too.

CI runs a bounded sample (the "ci" profile draws the same examples every run); the @slow
variants are the nightly size (pytest --runslow). A failure prints the program as Python."""
import pytest
import torch
from hypothesis import Phase, given, settings

import functx
from functx.testing import assert_same, check_against_torch, check_derivatives, check_vmap
from functx.testing import strategies as fst
from functx.testing.programs import NAMESPACE, run_eager

# The interpreter computes masked-off lanes too; programs make nan/inf on purpose.
pytestmark = pytest.mark.filterwarnings("ignore")
# CI does not shrink: a failure prints its program as drawn (bounded time); the nightly
# variants shrink to the smallest program.
CI_PHASES = (Phase.explicit, Phase.generate)


def _nightly(n):
    """At least n examples, more if the profile (HYPOTHESIS_PROFILE) asks for more."""
    return settings(max_examples=max(n, settings().max_examples))


# ---------------------------------------------------------------- the checks, one per path

# The sign of a zero that a reduction returns (sum/mean/min of +-0) follows torch's kernels'
# accumulation order, which functx does not copy (docs/sharp_bits.md): zeros compare equal
# here; elementwise signed zeros are pinned in test_fuzz_regressions.py.
SIGNED_ZEROS = False


def _jit_eager(case):
    check_against_torch(case.program, *case.args(), backends=("eager",), signed_zeros=SIGNED_ZEROS)


def _jit_triton(case):
    check_against_torch(case.program, *case.args(), backends=("triton",), signed_zeros=SIGNED_ZEROS)


def _vmap(case):
    check_vmap(case.program, case.args(), signed_zeros=SIGNED_ZEROS)


def _derivatives(case):
    check_derivatives(case.program, case.args())


def _invalid(case):
    want = run_eager(case.program, case.args())
    assert isinstance(want, Exception), "invalid_programs() made a program eager PyTorch runs"
    if "ZeroDivisionError" in str(want):
        # Integer division by a zero element: a check on values, which a trace does not have
        # (docs/sharp_bits.md); eager transforms see values, so they check it.
        return
    check_against_torch(case.program, *case.args(), signed_zeros=SIGNED_ZEROS)


# ---------------------------------------------------------------- CI: bounded

@settings(max_examples=40, phases=CI_PHASES)
@given(fst.programs())
def test_programs_jit_eager_backend(case):
    _jit_eager(case)


@settings(max_examples=8, phases=CI_PHASES)
@given(fst.programs(max_ops=4))
def test_programs_jit_triton_backend(case):
    _jit_triton(case)


@settings(max_examples=30, phases=CI_PHASES)
@given(fst.vmap_cases())
def test_programs_vmap_vs_loop(case):
    _vmap(case)


@settings(max_examples=20, phases=CI_PHASES)
@given(fst.programs(differentiable=True))
def test_programs_vjp_jvp_vs_torch_func(case):
    _derivatives(case)


@settings(max_examples=25, phases=CI_PHASES)
@given(fst.invalid_programs())
def test_invalid_programs_raise(case):
    _invalid(case)


# ---------------------------------------------------------------- nightly size

@pytest.mark.slow
@_nightly(3000)
@given(fst.programs(max_ops=8))
def test_nightly_jit_eager_backend(case):
    _jit_eager(case)


@pytest.mark.slow
@_nightly(300)
@given(fst.programs())
def test_nightly_jit_triton_backend(case):
    _jit_triton(case)


@pytest.mark.slow
@_nightly(1500)
@given(fst.vmap_cases())
def test_nightly_vmap_vs_loop(case):
    _vmap(case)


@pytest.mark.slow
@_nightly(1000)
@given(fst.programs(differentiable=True, max_ops=8))
def test_nightly_vjp_jvp_vs_torch_func(case):
    _derivatives(case)


@pytest.mark.slow
@_nightly(1000)
@given(fst.invalid_programs())
def test_nightly_invalid_programs_raise(case):
    _invalid(case)


# ---------------------------------------------------------------- the strategies and checkers themselves

@settings(max_examples=15)
@given(fst.programs())
def test_a_case_prints_a_script_that_reproduces_it(case):
    scope = dict(NAMESPACE)
    exec(repr(case).rsplit("\n", 1)[0], scope)       # everything but the final call
    again = scope["program"](*[scope[n] for n in case.program.arg_names])
    assert_same(again, case.program(*case.args()), "the printed script")


@settings(max_examples=10)
@given(fst.tensors(shape=(3, 2), dtypes=(torch.float32,)))
def test_tensors_strategy_respects_shape_and_dtype(x):
    assert x.shape == (3, 2) and x.dtype == torch.float32


def test_assert_same_catches_each_kind_of_difference():
    x = torch.tensor([0.0, 1.0])
    assert_same(x.clone(), x)
    for wrong in (torch.tensor([-0.0, 1.0]), torch.tensor([0.0, float("nan")]), x.double(), x[:1],
                  torch.tensor([0.0, 1.001])):
        with pytest.raises(AssertionError):
            assert_same(wrong, x)
    assert_same(torch.tensor([float("nan")]), torch.tensor([float("nan")]))


def test_check_against_torch_catches_a_wrong_derivative_and_a_wrong_value():
    @functx.custom_jvp
    def bad_sin(x):
        return torch.sin(x)
    bad_sin.defjvp(lambda primals, tangents: (torch.sin(primals[0]), 2 * tangents[0]))  # wrong: not cos
    x = torch.tensor([0.3, 1.2], dtype=torch.float64)
    with pytest.raises(AssertionError, match="disagrees with torch.func"):
        check_derivatives(lambda x: bad_sin(x), (x,))

    def differs_under_jit(x):
        return x + (1.0 if isinstance(x, functx.TracerTensor) else 0.0)
    with pytest.raises(AssertionError, match="jit"):
        check_against_torch(differs_under_jit, x)
    check_against_torch(torch.sin, x, vmap_args=(x.reshape(2, 1),), derivatives=True)
