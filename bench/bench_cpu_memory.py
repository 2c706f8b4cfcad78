"""Issue 13, CPU memory effects: CPU time per call and minor page faults per call of
functx.jit (eager backend and the cpu backend's fused tier) on the six workloads of
bench_transforms.py, one thread, each variant in this process only (no other system in
the process: their threads and allocations change the allocator's state).

    python bench/bench_cpu_memory.py                      # this tree
    python bench/bench_cpu_memory.py --functx /tmp/base   # a functx tree exported elsewhere
                                                          # (git archive REV functx | tar -x -C /tmp/base)
Run both, alternating, to A/B two trees (the commands in docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--functx", default=os.path.dirname(HERE), help="directory holding the functx package")
    ap.add_argument("--only", action="append")
    a = ap.parse_args()
    sys.path.insert(0, a.functx)
    sys.path.insert(1, HERE)
    import torch
    import functx
    from bench_transforms import WORKLOADS, _FunctxNS
    torch.set_num_threads(1)
    os.environ["FUNCTX_CPU_BLOCK"] = "1"
    print(f"functx from {os.path.dirname(functx.__file__)}, load average {os.getloadavg()[0]:.2f}")
    print("| workload | jit eager: CPU ms/call | faults/call | jit cpu (fused): CPU ms/call | faults/call |")
    print("| --- | --- | --- | --- | --- |")
    for name in a.only or list(WORKLOADS):
        cells = []
        for backend in ("eager", "cpu"):
            fn, args = WORKLOADS[name](_FunctxNS, False)
            f = functx.jit(fn, backend=backend)
            for _ in range(3):
                f(*args)
            t = time.thread_time()
            f(*args)
            n = max(1, int(0.05 / max(1e-6, time.thread_time() - t)))
            times, f0 = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(7):
                t = time.thread_time()
                for _ in range(n):
                    f(*args)
                times.append((time.thread_time() - t) / n)
            faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / (7 * n)
            cells += [f"{sorted(times)[3] * 1e3:.3f}", f"{faults:.0f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
