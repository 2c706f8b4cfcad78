"""Shared test configuration: hypothesis profiles.

HYPOTHESIS_PROFILE=ci (default) keeps the property tests small and fast;
HYPOTHESIS_PROFILE=dev runs many more examples for local bug hunting.
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
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
