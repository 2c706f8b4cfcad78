"""Laplacian benchmarks (issue 12): functx's collapsed Taylor mode (functx.laplacian) against
nested AD (torch.func vmap(trace(hessian)) and functx's own, eager and jitted), side by side
in one process, plus the peak memory each variant allocates (torch profiler, CPU).

    python bench/bench_taylor.py                  # MLP 2-64-64-64-1 and d = 16/64/256, 1024 points
    python bench/bench_taylor.py --quick          # small sizes, few repeats
    python bench/bench_taylor.py --points 256 --dims 16 64

Models: u(x) = MLP d-64-64-64-1 with tanh, float32, per point (vmap over the points).
Every variant's result is checked against torch.func before timing. JAX and folx are not
installed here, so their anchors are not measured.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import functx  # noqa: E402
from _models import init_mlp, mlp  # noqa: E402
from _timing import fmt_time, interleaved  # noqa: E402


def variants(d, points, width):
    params = init_mlp([d, width, width, width, 1])
    X = torch.randn(points, d, generator=torch.Generator().manual_seed(1))

    def u(params, x):
        return mlp(params, x).squeeze(-1)

    def nested(T):
        return T.vmap(lambda p, x: torch.trace(T.hessian(u, argnums=1)(p, x)), in_dims=(None, 0))

    collapsed = functx.vmap(functx.laplacian(u, argnums=1), in_axes=(None, 0))
    fns = {
        "torch.func vmap(trace(hessian))": nested(torch.func),
        "functx vmap(trace(hessian))": nested(functx),
        "functx.jit vmap(trace(hessian))": functx.jit(nested(functx)),
        "functx vmap(laplacian)": collapsed,
        "functx.jit vmap(laplacian)": functx.jit(collapsed),
    }
    return fns, (params, X)


def peak_bytes(fn, args):
    """Peak of the CPU memory the call allocates (allocations minus frees, in time order)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(*args)
    # each op's own allocations (self_...) and the frees outside ops ([memory]), in time order
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    level = peak = 0
    for e in events:
        level += e.self_cpu_memory_usage
        peak = max(peak, level)
    return peak


def run(d, points, width, repeat, min_time):
    fns, args = variants(d, points, width)
    ref = fns["torch.func vmap(trace(hessian))"](*args)
    for name, fn in fns.items():
        out = fn(*args)
        torch.testing.assert_close(out, ref, rtol=2e-3, atol=2e-3 * float(ref.abs().max()), msg=name)
    times = interleaved(fns, {name: args for name in fns}, repeat=repeat, min_time=min_time)
    nested_best = min(t for name, t in times.items() if "hessian" in name)
    print(f"\nLaplacian of MLP {d}-{width}-{width}-{width}-1 (tanh), {points} points, float32")
    print(f"{'variant':34s} {'per call':>10s} {'vs best nested':>15s} {'peak alloc':>11s}")
    for name, t in times.items():
        mb = peak_bytes(fns[name], args) / 2 ** 20
        print(f"{name:34s} {fmt_time(t):>10s} {nested_best / t:>14.2f}x {mb:>9.1f} MB")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    ap.add_argument("--points", type=int, default=None)
    ap.add_argument("--dims", type=int, nargs="*", default=None, help="input dimensions (default 2 16 64 256)")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    points = a.points or (32 if a.quick else 1024)
    dims = a.dims or ([2, 16] if a.quick else [2, 16, 64, 256])
    width = 8 if a.quick else 64
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for d in dims:
        run(d, points, width, repeat=3 if a.quick else 5, min_time=0.02 if a.quick else 0.2)


if __name__ == "__main__":
    main()
