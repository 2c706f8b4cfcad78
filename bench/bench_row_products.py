"""Where the CPU backend's row_products kernels (functx/compile/cpu/row_products.py) beat
torch.matmul: X[M, K] @ W and X[M, K] @ W.mT for M = 1..4 rows, float32 and float64, one
call each, W warm in cache as in a training or solver loop (side by side: the best of
interleaved rounds, so that other processes' bursts on a shared machine do not decide).

    python bench/bench_row_products.py                  # one thread (pinned to one core)
    python bench/bench_row_products.py --threads 2      # MKL on 2 threads against the kernel on one
    python bench/bench_row_products.py --sizes 256 1000 --rows 1 2

    python bench/bench_row_products.py --hvp            # bench_transforms' hvp: backward g @ W.mT by MKL or the kernel

Columns: the kernel as the fused tier's wrapper calls it (ctypes, outputs allocated), one
torch.matmul of the M rows, and M torch.matmuls of one row each (what a graph of M separate
products ran before the pass grouped them); ratio = kernel / best torch (< 1: the kernel
wins). row_products.MIN_ELEMENTS is read off this table.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _timing import fmt_time, pin_to_one_core  # noqa: E402
from functx.compile.cpu import row_products as rp  # noqa: E402
from functx.compile.cpu.cpp_ops import header, link_flags  # noqa: E402
from functx.compile.cpu.toolchain import load_library  # noqa: E402


def best_of(fns: dict, rounds: int, window: float = 0.004) -> dict:
    """Per-call seconds of each function: the best of `rounds` interleaved windows of about
    `window` seconds each (a shared machine's bursts of load hit some windows; the best one
    is the function's own speed)."""
    counts = {}
    for name, fn in fns.items():
        fn()
        n, t0 = 1, time.perf_counter()
        fn()
        dt = max(time.perf_counter() - t0, 1e-7)
        counts[name] = max(1, int(window / dt))
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            n = counts[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / n)
    return best


def hvp_backward_ab(rounds: int):
    """bench_transforms' hvp jitted twice, side by side: its single-row backward g @ W.mT on
    MKL (float32 X @ W.mT single rows switched off) and on the kernel (the thresholds)."""
    import functx
    import bench_transforms as bt
    fn, args = bt.hvp(functx, False)
    key = (torch.float32, True)
    saved = rp.MIN_ELEMENTS[key][1]
    variants = {}
    for name, least in (("backward on MKL", None), ("backward on the kernel", saved)):
        rp.MIN_ELEMENTS[key][1] = least
        jitted = functx.jit(lambda *a: fn(*a))      # its own jit entry per variant
        jitted(*args)
        fused = jitted.lower(*args)[0].compiled.fused
        rows = [e.params["rows"] for e in fused.row_eqns]
        variants[f"{name} {rows}"] = jitted
    rp.MIN_ELEMENTS[key][1] = saved
    outs = [j(*args) for j in variants.values()]
    torch.testing.assert_close(outs[0], outs[1])
    times = best_of({n: (lambda j=j: j(*args)) for n, j in variants.items()}, rounds, window=0.01)
    print(f"hvp (bench_transforms), load average {os.getloadavg()[0]:.2f}, best of {rounds} rounds")
    for n, t in times.items():
        print(f"  {n:40s} {fmt_time(t)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", type=int, nargs="*", default=[128, 256, 512, 1000, 2000, 4000])
    ap.add_argument("--rows", type=int, nargs="*", default=[1, 2, 3, 4])
    ap.add_argument("--dtypes", nargs="*", default=["float32", "float64"])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--shapes", nargs="*", default=[], help="KxN matrices (X @ W: W is KxN) instead of --sizes")
    ap.add_argument("--hvp", action="store_true", help="only the hvp A/B (hvp_backward_ab)")
    a = ap.parse_args()
    if a.threads == 1:
        pin_to_one_core()
    torch.set_num_threads(a.threads)
    if a.hvp:
        os.environ.setdefault("FUNCTX_CPU_BLOCK", "1")
        return hvp_backward_ab(max(a.rounds, 30))
    dtypes = [getattr(torch, d) for d in a.dtypes]
    entries = [(f"b_{d}_{m}_{int(t)}", dt, m, t) for dt in dtypes for d in [str(dt)[6:]]
               for m in a.rows for t in (False, True)]
    source = header() + rp.TEMPLATES + "".join(rp.entry_source(n, dt, (m,), t) for n, dt, m, t in entries)
    lib, _ = load_library(source, link_flags())
    print(f"threads={a.threads}, load average {os.getloadavg()[0]:.2f}")
    shapes = [tuple(int(v) for v in sh.split("x")) for sh in a.shapes] or [(n, n) for n in a.sizes]
    print("| dtype | form | M | K x N | kernel | matmul (M rows) | M x matmul (1 row) | kernel / best torch |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, dt, m, t in entries:
        for k, n in shapes:
            g = torch.Generator().manual_seed(0)
            w = torch.randn(*((n, k) if t else (k, n)), generator=g, dtype=dt)
            x = torch.randn(m, k, generator=g, dtype=dt)
            rows = [x[i:i + 1].clone() for i in range(m)]
            mat = w.mT if t else w
            run = rp.make_launcher(lib, name, dt, t, tuple(w.shape), [(m, n)], lambda: 1)
            got, want = run(w, x)[0], x @ mat
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * k ** 0.5)
            times = best_of({"kernel": lambda: run(w, x), "one": lambda: x @ mat,
                             "rows": lambda: [r @ mat for r in rows]}, a.rounds)
            best = min(times["one"], times["rows"])
            print(f"| {str(dt)[6:]} | {'X @ W.mT' if t else 'X @ W'} | {m} | {k} x {n} | {fmt_time(times['kernel'])} | "
                  f"{fmt_time(times['one'])} | {fmt_time(times['rows'])} | {times['kernel'] / best:.2f} |")


if __name__ == "__main__":
    main()
