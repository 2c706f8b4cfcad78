"""The benchmarks run and compute the right thing (correctness only, never timings)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import bench_jit_overhead  # noqa: E402
import bench_taylor  # noqa: E402
import bench_loops  # noqa: E402
import bench_transforms  # noqa: E402
import bench_eager_models  # noqa: E402


@pytest.mark.parametrize("name", list(bench_transforms.WORKLOADS))
def test_transform_workload_matches_torch_func(name):
    assert bench_transforms.check(name, small=True)


@pytest.mark.parametrize("section", list(bench_eager_models.SECTIONS))
def test_eager_model_rows_match_torch_func(section):
    """bench_eager_models' rows (model blocks, activations, losses): functx.grad is torch.func.grad
    (from one seed: the same dropout masks)."""
    import functx
    for name, (loss, args) in bench_eager_models.SECTIONS[section]().items():
        got, want = (bench_eager_models._seeded(fn, args) for fn in (functx.grad(loss), torch.func.grad(loss)))
        for u, v in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
            torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5, msg=name)


def test_jit_overhead_mlp_matches_eager():
    params = bench_jit_overhead.init_mlp([8, 16, 16, 4])
    x = torch.randn(5, 8)
    import functx
    torch.testing.assert_close(functx.jit(bench_jit_overhead.mlp)(x, *params), bench_jit_overhead.mlp(x, *params))


def test_taylor_bench_variants_agree():
    fns, args = bench_taylor.variants(d=3, points=4, width=8)
    ref = fns["torch.func vmap(trace(hessian))"](*args)
    for name, fn in fns.items():
        torch.testing.assert_close(fn(*args), ref, rtol=1e-4, atol=1e-4, msg=name)


def test_jit_dynamic_bench_runs_and_matches():
    import bench_jit_dynamic
    rows = bench_jit_dynamic.lr_schedule(steps=3)
    losses = {round(loss, 5) for _, _, loss in rows.values()}
    assert len(losses) == 1                                     # every variant computes the same steps
    assert rows["functx.jit, lr a Python float (dynamic)"][0] == 1
    assert rows["functx.jit, lr static (static_argnames)"][0] == 3
    r = bench_jit_dynamic.transformer_lengths(n_lengths=3, cache_limit=2, variant="static")   # checks values
    assert r["traces"] == 3 and r["entries"] == 2 and r["evictions"] == 1 and "cache limit" in r["warned"][0]
    r = bench_jit_dynamic.transformer_lengths(n_lengths=4, cache_limit=2)      # symbolic after two lengths
    assert r["traces"] == 2 and r["evictions"] == 0 and not r["warned"]


def test_loops_bench_matches_the_torch_loop():
    assert bench_loops.check(n=5)


def test_score_matching_bench_variants_agree():
    fns, args = bench_taylor.score_variants(d=3, points=4, width=8)
    ref = fns["torch.func grad(vmap(trace(jacfwd)))"](*args)
    for name, fn in fns.items():
        torch.testing.assert_close(fn(*args), ref, rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize("name", ["per_sample_grads_mlp", "dsm_step", "transformer_vmap_grad"])
def test_matmul_bench_steps_match_torch_func(name):
    """bench_matmul's transformed steps compute what their torch.func versions do (eager
    backend here; `python bench/bench_matmul.py --cpu` runs the Triton interpreter)."""
    import bench_matmul
    import functx
    spec = bench_matmul.step_workloads(True, "cpu")[name]()
    out = functx.jit(spec["functx"], backend="eager")(*spec["args"])
    ref = spec["torch"](*spec["args"])
    if spec.get("swap_torch"):
        ref = (ref[1], ref[0])
    assert bench_matmul.max_err(out, ref) < 1e-5


def test_eager_transforms_bench_rows_match_torch_func():
    import functx
    import bench_eager_transforms
    fx = bench_eager_transforms.small_mlp_rows(functx)
    tf = bench_eager_transforms.small_mlp_rows(torch.func)
    for name in fx:
        bench_transforms.assert_matches(fx[name][0](*fx[name][1]), tf[name][0](*tf[name][1]), name)


def test_count_instructions_names_real_rows():
    # (the counts need valgrind; the rows they count are bench_eager_transforms' own)
    import count_instructions
    rows = count_instructions._rows("functx")
    assert set(count_instructions.DEFAULT_ROWS) <= set(rows)
    assert set(rows) == set(count_instructions._rows("torch.func"))
