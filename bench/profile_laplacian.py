"""Where a jitted forward Laplacian's time goes: every statement of the fused tier's host
wrapper (each product, kernel, view) timed inside the real call, one thread, one core.

    python bench/profile_laplacian.py               # d=16, MLP 16-64-64-64-1, 1024 points
    python bench/profile_laplacian.py --dims 64 --calls 50

The wrapper's source is re-executed with a timer call after every statement (`del` lines
dropped), so the numbers include ~0.3 µs of timer per line; the C++ kernels' time shows here
(torch.profiler sees only the torch calls). docs/benchmarks.md, "Forward Laplacian d=16".
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("FUNCTX_CPU_BLOCK", "1")

import torch  # noqa: E402

import functx  # noqa: E402
from _models import init_mlp, mlp  # noqa: E402
from _timing import pin_to_one_core, settle_fused  # noqa: E402


def line_profile(jitted, args, calls):
    """[(seconds per call, statement)] of the fused tier's wrapper, and the whole call."""
    compiled = jitted.lower(*args)[0].compiled
    fused = compiled.fused
    captured = {}
    target, inner = compiled._target, compiled._target[0]

    def grab(*inputs):
        captured["inputs"] = inputs
        return inner(*inputs)
    target[0] = grab
    try:
        jitted(*args)
    finally:
        target[0] = inner
    labels, lines = [], []
    for line in fused.source.split("\n"):
        text = line.strip()
        if text.startswith("del "):
            continue
        lines.append(line)
        if line.startswith("    ") and text and not text.startswith(("#", "return")):
            labels.append(text)
            lines.append(f"    _tick({len(labels) - 1})")
    spent = [0.0] * len(labels)
    last = [0.0]

    def tick(i):
        t = time.perf_counter()
        spent[i] += t - last[0]
        last[0] = t
    namespace = dict(fused._globals, _tick=tick)
    exec(compile("\n".join(lines).replace("def call(", "def _profiled("), "<profiled wrapper>", "exec"), namespace)
    run = namespace["_profiled"]
    for _ in range(3):
        last[0] = time.perf_counter()
        run(*captured["inputs"])
    spent[:] = [0.0] * len(labels)
    t0 = time.perf_counter()
    for _ in range(calls):
        last[0] = time.perf_counter()
        run(*captured["inputs"])
    total = (time.perf_counter() - t0) / calls
    return [(t / calls, label) for t, label in zip(spent, labels)], total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, default=16)
    ap.add_argument("--points", type=int, default=1024)
    ap.add_argument("--calls", type=int, default=100)
    a = ap.parse_args()
    torch.set_num_threads(1)
    pin_to_one_core()
    params = init_mlp([a.dims, 64, 64, 64, 1])
    x = torch.randn(a.points, a.dims, generator=torch.Generator().manual_seed(1))
    lap = functx.jit(functx.vmap(functx.laplacian(lambda p, x: mlp(p, x).squeeze(-1), argnums=1),
                                 in_axes=(None, 0)))
    why = settle_fused(lap, (params, x))
    if why:
        sys.exit(f"the fused tier does not run: {why}")
    rows, total = line_profile(lap, (params, x), a.calls)
    print(f"MLP {a.dims}-64-64-64-1, {a.points} points, one thread; load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; wrapper {total * 1e3:.3f} ms per call")
    for t, label in rows:
        print(f"{t * 1e6:9.1f} us  {label[:110]}")


if __name__ == "__main__":
    main()
