"""Shared test configuration: hypothesis profiles.

HYPOTHESIS_PROFILE=ci (default) keeps the property tests small and fast;
HYPOTHESIS_PROFILE=dev runs many more examples for local bug hunting.
HYPOTHESIS_PROFILE=nightly (with --runslow) is the nightly-size run.
"""
import os

from hypothesis import HealthCheck, settings

# Without a GPU, Triton kernels run in its interpreter; the mode is fixed when triton is
# first imported, so it is set here, before any test module imports it.
if "TRITON_INTERPRET" not in os.environ:
    import torch
    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much,
                                       HealthCheck.differing_executors])
# ci draws the same examples every run (a CI failure is reproducible, never a coin flip);
# dev draws new ones each run, for bug hunting.
settings.register_profile("ci", max_examples=6, derandomize=True, **_COMMON)
settings.register_profile("dev", max_examples=60, derandomize=False, **_COMMON)
settings.register_profile("nightly", max_examples=500, derandomize=False, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run tests marked slow (nightly-size variants)")


def pytest_collection_modifyitems(config, items):
    # CI runs the bounded variants; `pytest --runslow` (or FUNCTX_SLOW=1) adds the long ones.
    if config.getoption("--runslow") or os.environ.get("FUNCTX_SLOW") == "1":
        return
    import pytest
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow or FUNCTX_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
