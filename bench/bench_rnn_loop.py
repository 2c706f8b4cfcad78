"""An RNN written as a Python loop that fills its outputs in place (`out[t] = h`), its gradient
under functx.jit, functx.grad (eager) and torch.func.grad: process CPU time, first call and the
median of the calls after two.

    python bench/bench_rnn_loop.py                 # 200 steps, an (8, 256) state
    python bench/bench_rnn_loop.py --steps 20 --width 32

A long unrolled loop is what functx.scan avoids; this measures the loop as researchers first
write it (issue 13: in-place block writes, the fused tier's size limit).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.func

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import functx  # noqa: E402
from _models import rnn_loss  # noqa: E402


def timed(fn, args, calls):
    times = []
    for _ in range(calls):
        start = time.process_time()
        fn(*args)
        times.append(time.process_time() - start)
    rest = sorted(times[2:])
    return times[0], rest[len(rest) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--calls", type=int, default=9)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    W, xs = torch.randn(a.width, a.width) * 0.1, torch.randn(a.steps, 8, a.width)
    want = torch.func.grad(rnn_loss)(W, xs)
    rows = {"functx.jit(grad)": functx.jit(functx.grad(rnn_loss)), "functx.grad": functx.grad(rnn_loss),
            "torch.func.grad": torch.func.grad(rnn_loss)}
    print(f"torch {torch.__version__}, threads=1, {a.steps} steps, state (8, {a.width}); CPU time")
    for name, fn in rows.items():
        first, steady = timed(fn, (W, xs), a.calls)
        torch.testing.assert_close(fn(W, xs), want, rtol=1e-4, atol=1e-6)
        print(f"  {name:<18} first call {first * 1e3:8.1f} ms   then {steady * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
