"""Per-call time of functx.jit(f) against f called eagerly (issue 2's benchmark); functx.jit
is the default (on CPU the tiered cpu backend, timed once its fused tier is built), with
backend="eager" beside it.

    python bench/bench_jit_overhead.py            # full run
    python bench/bench_jit_overhead.py --quick    # smoke run
    python bench/bench_jit_overhead.py --threads 2

f is an MLP forward written in plain PyTorch (x @ W + b, tanh/relu, F.linear); "small"
is dominated by per-op overhead, "medium" by the matmuls. All variants run side by side
in one process, interleaved, and the table prints median per-call times and ratios
against eager PyTorch, plus first-call latency (trace + compile).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import functx  # noqa: E402
from _models import init_mlp  # noqa: E402
from _timing import first_call, fmt_time, interleaved  # noqa: E402

CONFIGS = {
    # name: (batch, sizes)
    "small": (16, [32, 64, 64, 10]),
    "medium": (256, [512, 1024, 1024, 10]),
}


def mlp(x, W1, b1, W2, b2, W3, b3):
    h = torch.tanh(x @ W1 + b1)
    h = torch.relu(F.linear(h, W2.T, b2))
    return h @ W3 + b3


def mlp_loss(x, W1, b1, W2, b2, W3, b3):
    return (mlp(x, W1, b1, W2, b2, W3, b3) ** 2).mean()


def run(quick=False, threads=1, configs=None, verbose=True):
    torch.set_num_threads(threads)
    rows = []
    for name in configs or CONFIGS:
        batch, sizes = CONFIGS[name]
        params = init_mlp(sizes)
        x = torch.randn(batch, sizes[0], generator=torch.Generator().manual_seed(1))
        args = (x,) + params
        jf = functx.jit(mlp)                 # the default: the tiered cpu backend
        t_first, out = first_call(jf, *args)
        ref = mlp(*args)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
        jf.lower(*args)[0].compiled.wait()   # timed on the steady state (its fused tier once built)
        torch.testing.assert_close(jf(*args), ref, rtol=1e-4, atol=1e-5)
        jeager = functx.jit(mlp, backend="eager")
        jeager(*args)
        fns = {"eager torch": mlp, "functx.jit": jf, "jit eager": jeager}
        times = interleaved(fns, {k: args for k in fns}, repeat=3 if quick else 9,
                            min_time=0.01 if quick else 0.1)
        rows.append((name, batch, sizes, times, t_first))
    if verbose:
        print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, cpu count={os.cpu_count()}")
        print(f"{'config':<8} {'shape':<24} {'eager torch':>12} {'functx.jit':>12} {'jit/eager':>10} "
              f"{'jit 1st call':>12} {'backend=eager':>14}")
        for name, batch, sizes, t, t_first in rows:
            shape = f"{batch}x" + "-".join(map(str, sizes))
            print(f"{name:<8} {shape:<24} {fmt_time(t['eager torch']):>12} {fmt_time(t['functx.jit']):>12} "
                  f"{t['functx.jit'] / t['eager torch']:>9.2f}x {fmt_time(t_first):>12} "
                  f"{fmt_time(t['jit eager']):>14}")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short smoke run")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--config", action="append", choices=sorted(CONFIGS), help="run only these configs")
    a = ap.parse_args(argv)
    run(a.quick, a.threads, a.config)


if __name__ == "__main__":
    main()
