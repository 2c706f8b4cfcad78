"""The benchmarks run and compute the right thing (correctness only, never timings)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import bench_jit_overhead  # noqa: E402
import bench_loops  # noqa: E402
import bench_transforms  # noqa: E402


@pytest.mark.parametrize("name", list(bench_transforms.WORKLOADS))
def test_transform_workload_matches_torch_func(name):
    assert bench_transforms.check(name, small=True)


def test_jit_overhead_mlp_matches_eager():
    params = bench_jit_overhead.init_mlp([8, 16, 16, 4])
    x = torch.randn(5, 8)
    import functx
    torch.testing.assert_close(functx.jit(bench_jit_overhead.mlp)(x, *params), bench_jit_overhead.mlp(x, *params))


def test_loops_bench_matches_the_torch_loop():
    assert bench_loops.check(n=5)
