"""What debug_nans costs (issue 16): off, it must cost nothing measurable; on, it costs a
NaN/inf check per operation (eager transforms) or per equation (jit's checked artifact).

    python bench/bench_debug_overhead.py            # off vs on, side by side
    python bench/bench_debug_overhead.py --off-only # only the plain API: run it with
                                                    # PYTHONPATH=<a tree before issue 16> too

Workloads are a small MLP's loss (per-op overhead dominates, so a per-op cost shows):
eager grad, eager vmap(grad) (per-example gradients) and jit(grad). Times are medians of
interleaved rounds (bench/_timing.py), one thread.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import functx  # noqa: E402
from _models import init_mlp  # noqa: E402
from _timing import fmt_time, interleaved  # noqa: E402


def loss(params, x):
    W1, b1, W2, b2, W3, b3 = params
    h = torch.tanh(x @ W1 + b1)
    h = torch.relu(h @ W2 + b2)
    return ((h @ W3 + b3) ** 2).mean()


def workloads():
    params = init_mlp([16, 32, 32, 4])
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    grad = functx.grad(loss)
    per_example = functx.vmap(functx.grad(lambda p, xi: loss(p, xi[None])), in_axes=(None, 0))
    jitted = functx.jit(functx.grad(loss))
    return {"eager grad": (grad, (params, x)), "eager vmap(grad)": (per_example, (params, x)),
            "jit(grad)": (jitted, (params, x))}


def with_debug_nans(fn):
    def checked(*args):
        with functx.debug_nans():
            return fn(*args)
    return checked


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--off-only", action="store_true", help="time the plain API only (no debug_nans)")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    fns, args_of = {}, {}
    for name, (fn, a) in workloads().items():
        fns[f"{name}, off"], args_of[f"{name}, off"] = fn, a
        if not args.off_only:
            fns[f"{name}, on"], args_of[f"{name}, on"] = with_debug_nans(fn), a
    times = interleaved(fns, args_of, repeat=args.repeat)
    print(f"{'workload':<28} {'median per call':>16} {'on / off':>9}")
    for name, t in times.items():
        base = times.get(name.replace(", on", ", off"))
        ratio = f"{t / base:.2f}x" if name.endswith(", on") else ""
        print(f"{name:<28} {fmt_time(t):>16} {ratio:>9}")


if __name__ == "__main__":
    main()
