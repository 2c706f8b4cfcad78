"""Shared test configuration: hypothesis profiles, and which tier of the default CPU backend
the suite runs.

HYPOTHESIS_PROFILE=ci (default) keeps the property tests small and fast;
HYPOTHESIS_PROFILE=dev runs many more examples for local bug hunting.
HYPOTHESIS_PROFILE=nightly (with --runslow) is the nightly-size run.

FUNCTX_TEST_CPU_TIER: functx.jit on CPU tensors defaults to the tiered cpu backend, whose
fused tier is a g++ build per function called twice. CI must not pay that in every jit test:
  eager (default)  FUNCTX_CPU_FUSED=0: every jit test runs the default (cpu) backend on its
                   eager tier, no g++ and no disk-cache lookups; tests marked `cpu_fused`
                   (the CPU backend's own modules, tests/test_cpu_default.py for the default
                   path end to end) build fused tiers;
  fused            FUNCTX_CPU_BLOCK=1: every jit entry is built fused before its first call
                   (the whole suite on the fused tier: a nightly job, minutes of g++);
  tiered           the product's default (fused tiers built in the background from call 2).
"""
import os

import pytest
from hypothesis import HealthCheck, settings

_CPU_TIER = os.environ.get("FUNCTX_TEST_CPU_TIER", "eager")
if _CPU_TIER not in ("eager", "fused", "tiered"):
    raise ValueError(f"FUNCTX_TEST_CPU_TIER must be eager, fused or tiered, got {_CPU_TIER!r}")
if _CPU_TIER == "eager":
    os.environ["FUNCTX_CPU_FUSED"] = "0"      # read at each compile, also by subprocesses the tests start
elif _CPU_TIER == "fused":
    os.environ["FUNCTX_CPU_BLOCK"] = "1"

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


@pytest.fixture(scope="module")
def module_kernel_cache(tmp_path_factory):
    """One kernel cache directory per test module (request it with
    pytest.mark.usefixtures): equal graphs compile once, and no test reads another
    module's (or the user's) cache."""
    old = os.environ.get("FUNCTX_CACHE_DIR")
    os.environ["FUNCTX_CACHE_DIR"] = str(tmp_path_factory.mktemp("functx_cache"))
    yield os.environ["FUNCTX_CACHE_DIR"]
    if old is None:
        del os.environ["FUNCTX_CACHE_DIR"]
    else:
        os.environ["FUNCTX_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def _cpu_fused_tier(request):
    """Tests marked cpu_fused build fused tiers whatever FUNCTX_TEST_CPU_TIER says (set here,
    not with monkeypatch, which a test's monkeypatch.undo() would undo)."""
    if request.node.get_closest_marker("cpu_fused") is None:
        yield
        return
    old = os.environ.get("FUNCTX_CPU_FUSED")
    os.environ["FUNCTX_CPU_FUSED"] = "1"
    yield
    if old is None:
        os.environ.pop("FUNCTX_CPU_FUSED", None)
    else:
        os.environ["FUNCTX_CPU_FUSED"] = old


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
