"""Where an eager transform's time goes: a SIGPROF sampling profile of one small-MLP row of
bench_eager_transforms.py, by function (self and inclusive) and by layer.

    python bench/profile_eager.py grad            # rows: grad, vmap(grad), vmap, jvp, jacrev, hvp
    python bench/profile_eager.py vmap --seconds 5 --top 40

The Python stack is sampled every 0.2 ms of CPU time (signal handlers run between bytecodes,
so a torch kernel's time lands on the Python function that called it). Also prints the
Python call count of one call (cProfile, builtins included), the number issue 13 tracks.
"""
from __future__ import annotations

import argparse
import collections
import cProfile
import os
import pstats
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import functx  # noqa: E402
import bench_eager_transforms as B  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(functx.__file__)))
_SITE = os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))


def _where(code):
    f = code.co_filename
    for prefix in (_ROOT + os.sep, _SITE + os.sep):
        if f.startswith(prefix):
            f = f[len(prefix):]
    return f"{f}:{code.co_firstlineno}({code.co_name})"


def _layer(where):
    f = where.split(":")[0]
    if f.startswith(("<functx", "functx/prims", "functx/kernels")):
        return "primitive impls in generated rules (torch kernels)"
    if f.startswith("functx/frontend"):
        return "functx front end (dispatch, lowered-op keys, wrappers, views)"
    if f.startswith("torch/"):
        return "torch's Python dispatch"
    if f.startswith(("functx/transforms", "functx/core")):
        return "transforms + core (traces, rule lookup, backward_pass)"
    return "other (benchmark, pytrees)"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("row", help="a small-MLP row of bench_eager_transforms.py")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    fn, args = B.small_mlp_rows(functx)[a.row]
    for _ in range(20):
        fn(*args)
    prof = cProfile.Profile()
    prof.enable()
    fn(*args)
    prof.disable()
    print(f"Python calls per call: {pstats.Stats(prof).total_calls}")

    own, incl, n = collections.Counter(), collections.Counter(), [0]

    def sample(sig, frame):
        n[0] += 1
        own[_where(frame.f_code)] += 1
        seen = set()
        while frame is not None:
            w = _where(frame.f_code)
            if w not in seen:
                incl[w] += 1
                seen.add(w)
            frame = frame.f_back
    signal.signal(signal.SIGPROF, sample)
    signal.setitimer(signal.ITIMER_PROF, 0.0002, 0.0002)
    t0 = time.process_time()
    while time.process_time() - t0 < a.seconds:
        fn(*args)
    signal.setitimer(signal.ITIMER_PROF, 0, 0)
    layers = collections.Counter()
    for w, c in own.items():
        layers[_layer(w)] += c
    print(f"{n[0]} samples; load average {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\n-- self time by layer")
    for k, c in layers.most_common():
        print(f"{100 * c / n[0]:5.1f}%  {k}")
    print("\n-- self time")
    for k, c in own.most_common(a.top):
        print(f"{100 * c / n[0]:5.1f}%  {k}")
    print("\n-- inclusive time")
    for k, c in incl.most_common(a.top):
        print(f"{100 * c / n[0]:5.1f}%  {k}")


if __name__ == "__main__":
    main()
