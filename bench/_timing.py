"""Shared timing helpers for the functx benchmarks (CPU-friendly, noise-aware).

Timings are medians over several repeats of a timed loop, measured side by side in one
process; first-call latency is the wall time of the very first call (trace + compile).
"""
from __future__ import annotations

import statistics
import time

import torch

# The clock every timing here reads: wall time by default; `use_cpu_time()` switches to the
# process's CPU time, which a loaded machine inflates far less (for one-thread runs).
CLOCK = [time.perf_counter]


def pin_to_one_core():
    """Run this process, every thread of every system in it, on one core; returns the core.

    "One thread" must mean one core for JAX: the XLA flags the benchmarks set
    (--xla_cpu_multi_thread_eigen=false) do not bound the thread pool of XLA's YNNPACK
    fusions, which takes every core the process may use (measured on a 2-core box: folx's
    Laplacian at d=16 used 6.4 ms of CPU time per 3.7 ms call; dsm_step's jax.jit 9.4 ms per
    6.6 ms). XLA sizes its pools from the affinity mask when its CPU client starts (at the
    first JAX computation), so call this before any. Without sched_setaffinity (macOS) it
    does nothing and returns None.
    """
    import os
    if not hasattr(os, "sched_setaffinity"):
        return None
    core = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return core


def settle_fused(fn, args):
    """A functx.jit function on the cpu backend (jit's default for CPU tensors): build its
    fused tier now and wait, so that it is timed on that tier, not on a mix of the eager
    tier's first calls and the fused one. Returns None, or why the fused tier does not run
    (no compiler, nothing to fuse). Other functions: None."""
    lower = getattr(fn, "lower", None)
    if lower is None:
        return None
    compiled = lower(*args)[0].compiled
    if getattr(compiled, "backend", None) != "cpu":
        return None
    compiled.wait()
    return None if compiled.fused_state == "ready" else compiled.status()


def use_cpu_time():
    CLOCK[0] = time.process_time


def now():
    return CLOCK[0]()


def sync(out=None):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out


def first_call(fn, *args):
    """(seconds, output) of the first call of fn."""
    t0 = time.perf_counter()
    out = fn(*args)
    sync()
    return time.perf_counter() - t0, out


def _timed_loop(fn, args, number):
    t0 = now()
    for _ in range(number):
        fn(*args)
    sync()
    return now() - t0


def _calibrate(fn, args, target):
    """(number of calls, seconds they took): grow the loop until it runs for `target` seconds."""
    number = 1
    while True:
        dt = _timed_loop(fn, args, number)
        if dt >= target or number >= 1 << 20:
            return number, dt
        number *= 2 if dt == 0 else max(2, min(10, int(target / dt) + 1))


def per_call(fn, *args, repeat=7, min_time=0.05, number=None):
    """Median seconds per call over `repeat` timed loops of `number` calls each."""
    fn(*args)
    if number is None:
        number, _ = _calibrate(fn, args, min_time)
    return statistics.median(_timed_loop(fn, args, number) / number for _ in range(repeat))


def interleaved(fns: dict, args_of: dict, repeat=7, min_time=0.05):
    """Median per-call seconds of several functions, measured in interleaved rounds so
    that machine noise hits all of them alike. fns: name -> fn; args_of: name -> args."""
    numbers = {}
    for name, fn in fns.items():
        fn(*args_of[name])
        number, dt = _calibrate(fn, args_of[name], min_time / 4)
        numbers[name] = max(1, int(number * min_time / 4 / max(dt, 1e-9)))
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            times[name].append(_timed_loop(fn, args_of[name], numbers[name]) / numbers[name])
    return {name: statistics.median(ts) for name, ts in times.items()}


def fmt_time(s):
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def cuda_time(fn, *args, warmup=5, reps=30, min_ms=200.0):
    """Median milliseconds per call on the GPU (CUDA events around enough calls to span
    min_ms over the repetitions)."""
    for _ in range(warmup):
        fn(*args)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn(*args)
    end.record()
    torch.cuda.synchronize()
    inner = max(1, min(1000, int(min_ms / reps / max(start.elapsed_time(end), 1e-3))))
    times = []
    for _ in range(reps):
        start.record()
        for _ in range(inner):
            fn(*args)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def jax_time(jax, jf, jargs, reps=30, min_s=0.2):
    """Median milliseconds per call of a jitted JAX function (blocking on its result)."""
    jax.block_until_ready(jf(*jargs))
    t0 = time.perf_counter()
    jax.block_until_ready(jf(*jargs))
    inner = max(1, min(1000, int(min_s / reps / max(time.perf_counter() - t0, 1e-6))))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            out = jf(*jargs)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / inner * 1e3)
    return statistics.median(times)
