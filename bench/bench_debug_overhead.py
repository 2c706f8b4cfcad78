"""What debug_nans costs (issue 16): off, it must cost nothing measurable; on, it costs a
NaN/inf check per operation (eager transforms) or per equation (jit's checked artifact).

    python bench/bench_debug_overhead.py                        # off vs on
    git archive a858c8d functx | tar -x -C /tmp/base              # functx before issue 16
    python bench/bench_debug_overhead.py --baseline /tmp/base     # off vs that tree

Workloads are a small MLP's loss (per-op overhead dominates, so a per-op cost shows):
eager grad, eager vmap(grad) (per-example gradients) and jit(grad). --baseline loads the
other tree's functx package under another name in the same process, so both versions are
timed in the same interleaved rounds: on a shared machine that is the only comparison
whose noise cancels. --cpu-time measures process CPU time instead of wall time (same
rounds; a loaded machine inflates it less). One thread.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

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


def workloads(fx):
    """The workloads built with the functx package `fx`."""
    params = init_mlp([16, 32, 32, 4])
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    grad = fx.grad(loss)
    per_example = fx.vmap(fx.grad(lambda p, xi: loss(p, xi[None])), in_axes=(None, 0))
    jitted = fx.jit(fx.grad(loss))
    return {"eager grad": (grad, (params, x)), "eager vmap(grad)": (per_example, (params, x)),
            "jit(grad)": (jitted, (params, x))}


def load_baseline(tree):
    """The functx package of another source tree, imported as `functx_baseline`."""
    init = os.path.join(tree, "functx", "__init__.py")
    spec = importlib.util.spec_from_file_location("functx_baseline", init,
                                                  submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["functx_baseline"] = module
    spec.loader.exec_module(module)
    return module


def interleaved_cpu(fns, args_of, repeat, seconds=0.05):
    """bench/_timing.interleaved with process CPU time: median per-call seconds over
    interleaved rounds."""
    numbers = {}
    for name, fn in fns.items():
        fn(*args_of[name])
        t0 = time.process_time()
        fn(*args_of[name])
        numbers[name] = max(1, int(seconds / max(time.process_time() - t0, 1e-6)))
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.process_time()
            for _ in range(numbers[name]):
                fn(*args_of[name])
            times[name].append((time.process_time() - t0) / numbers[name])
    return {name: statistics.median(ts) for name, ts in times.items()}


def with_debug_nans(fn):
    def checked(*args):
        with functx.debug_nans():
            return fn(*args)
    return checked


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", metavar="TREE", help="compare 'off' with the functx of this source tree "
                    "(before issue 16) instead of with 'on'")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--cpu-time", action="store_true", help="time process CPU time, not wall time")
    args = ap.parse_args()
    torch.set_num_threads(1)
    other = load_baseline(args.baseline) if args.baseline else None
    fns, args_of = {}, {}
    for name, (fn, a) in workloads(functx).items():
        fns[f"{name}, off"], args_of[f"{name}, off"] = fn, a
        if other is None:
            fns[f"{name}, on"], args_of[f"{name}, on"] = with_debug_nans(fn), a
    if other is not None:
        for name, (fn, a) in workloads(other).items():
            fns[f"{name}, baseline"], args_of[f"{name}, baseline"] = fn, a
    times = (interleaved_cpu if args.cpu_time else interleaved)(fns, args_of, repeat=args.repeat)
    print(f"{'workload':<28} {'median per call':>16} {'/ off':>9}")
    for name, t in times.items():
        base = times[name.rsplit(", ", 1)[0] + ", off"]
        ratio = "" if name.endswith(", off") else f"{t / base:.2f}x"
        print(f"{name:<28} {fmt_time(t):>16} {ratio:>9}")


if __name__ == "__main__":
    main()
