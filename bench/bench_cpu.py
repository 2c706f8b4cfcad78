"""CPU backend benchmark (issue 13): the six transformed workloads of bench_transforms.py
under functx.jit's eager tier (generated PyTorch code), its fused tier (C++ kernels),
torch.func eager and torch.compile, side by side in one process, one thread for every
system, interleaved repetitions, medians; plus first-call latencies.

    python bench/bench_cpu.py                      # everything (torch.compile takes minutes)
    python bench/bench_cpu.py --no-compile --only hvp
    python bench/bench_cpu.py --threads 2
    python bench/bench_cpu.py --profile --only dsm_step   # time per fused kernel and extern

First-call columns: "tiered" is what `functx.jit(f, backend="cpu")` costs on its first call
(trace + passes + the eager tier; the fused tier is built later in the background);
"fused build" is trace + passes + C++ generation + g++ with an empty kernel cache (what
the background thread does, or a blocking first call costs); torch.compile's is its first
call. Every variant's result is checked against torch.func before timing.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import functx  # noqa: E402
from _timing import first_call, fmt_time, interleaved  # noqa: E402
from bench_transforms import WORKLOADS, _FunctxNS, assert_matches  # noqa: E402

VARIANTS = ["jit eager tier", "jit fused tier", "torch.func eager", "torch.compile"]


def jit_with_tier(fn, args, tier):
    """A jitted fn serving `tier` from its first timed call, and the first-call seconds."""
    if tier == "eager":
        jitted = functx.jit(fn, backend="eager")
        t, _ = first_call(jitted, *args)
        return jitted, t
    os.environ["FUNCTX_CPU_BLOCK"] = "1"
    try:
        jitted = functx.jit(fn, backend="cpu")
        t, _ = first_call(jitted, *args)
    finally:
        del os.environ["FUNCTX_CPU_BLOCK"]
    compiled = jitted.lower(*args)[0].compiled
    assert compiled.tier == "fused" or compiled.failure, compiled.status()
    return jitted, t


def run(name, with_compile):
    fx_fn, args = WORKLOADS[name](_FunctxNS, False)
    tf_fn, _ = WORKLOADS[name](torch.func, False)
    want = tf_fn(*args)
    fns, firsts, notes = {}, {}, {}
    tiered = functx.jit(fx_fn, backend="cpu")
    firsts["tiered"], _ = first_call(tiered, *args)
    fns["jit eager tier"], _ = jit_with_tier(fx_fn, args, "eager")
    fns["jit fused tier"], firsts["fused build"] = jit_with_tier(fx_fn, args, "fused")
    compiled = fns["jit fused tier"].lower(*args)[0].compiled
    notes["fused"] = f"{len(compiled.kernels)} kernel(s), " \
        f"{sum(g.kind == 'extern' for g in compiled.groups)} extern(s); {compiled.status()}"
    fns["torch.func eager"] = tf_fn
    if with_compile:
        torch._dynamo.reset()
        compiled_fn = torch.compile(WORKLOADS[name](torch.func, False)[0])
        firsts["torch.compile"], _ = first_call(compiled_fn, *args)
        fns["torch.compile"] = compiled_fn
    for v, fn in fns.items():
        assert_matches(fn(*args), want, f"{name}: {v}", rtol=1e-3, atol=1e-4)
    times = interleaved(fns, {v: args for v in fns}, repeat=7, min_time=0.2)
    return times, firsts, notes


def kernel_profile(name, calls=5):
    """CPU seconds per call spent in each kernel and extern of the fused tier's host wrapper
    (each callable in its globals wrapped in a timer), largest first (process time: one
    thread, so what the kernels cost, not what a loaded machine's scheduler adds)."""
    fx_fn, args = WORKLOADS[name](_FunctxNS, False)
    jitted, _ = jit_with_tier(fx_fn, args, "fused")
    fused = jitted.lower(*args)[0].compiled.fused
    spent = collections.Counter()
    for key, fn in list(fused._globals.items()):
        if callable(fn) and key not in ("torch", "math", "_threads", "call"):
            def timed(*a, _fn=fn, _key=key, **kw):
                t0 = time.process_time()
                out = _fn(*a, **kw)
                spent[_key] += time.process_time() - t0
                return out
            fused._globals[key] = timed
    t0 = time.process_time()
    for _ in range(calls):
        jitted(*args)
    print(f"  {(time.process_time() - t0) / calls * 1e3:9.3f} ms  whole call (the rest: externs, allocation, Python)")
    spaces = {g.name: g.space for g in fused.groups}
    for key, t in spent.most_common():
        print(f"  {t / calls * 1e3:9.3f} ms  {key}  {spaces.get(key, '')}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", action="append", choices=sorted(WORKLOADS))
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--profile", action="store_true", help="time each fused kernel and extern instead")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.profile:
        for name in a.only or list(WORKLOADS):
            print(f"== {name}: fused tier, per call")
            kernel_profile(name)
        return
    os.environ.setdefault("FUNCTX_CACHE_DIR", tempfile.mkdtemp(prefix="functx_bench_"))  # cold g++
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, cpu count={os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}, kernel cache {os.environ['FUNCTX_CACHE_DIR']}")
    rows = []
    for name in a.only or list(WORKLOADS):
        t0 = time.perf_counter()
        times, firsts, notes = run(name, not a.no_compile)
        base = times["torch.func eager"]
        print(f"\n== {name}  ({time.perf_counter() - t0:.0f} s)   fused tier: {notes['fused']}")
        print(f"  {'variant':<18} {'median/call':>12} {'vs torch.func':>14}")
        for v in VARIANTS:
            if v in times:
                print(f"  {v:<18} {fmt_time(times[v]):>12} {base / times[v]:>13.2f}x")
        print("  first call: " + ", ".join(f"{k} {fmt_time(t)}" for k, t in firsts.items()))
        rows.append((name, times, firsts))
    print("\n| workload | jit eager tier | jit fused tier | torch.func eager | torch.compile | "
          "fused vs eager tier | first call: tiered / fused build / torch.compile |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, t, fc in rows:
        cells = [fmt_time(t.get(v)) for v in VARIANTS]
        ratio = t["jit eager tier"] / t["jit fused tier"]
        firsts = " / ".join(fmt_time(fc.get(k)) for k in ("tiered", "fused build", "torch.compile"))
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f}x | {firsts} |")


if __name__ == "__main__":
    main()
