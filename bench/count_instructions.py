"""Instructions per call of bench_eager_transforms' rows (and grad of bench_eager_models' models), functx against torch.func, counted by
valgrind's callgrind: unlike CPU time on a shared machine, a count does not move with the
load, so small changes to the per-op path can be compared between runs.

    python bench/count_instructions.py                                # the default rows
    python bench/count_instructions.py --rows vmap "grad TransformerEncoderLayer"
    python bench/count_instructions.py --list

Each (row, system) runs in its own process under callgrind with instrumentation switched on
(callgrind_control) only around the timed calls, twice (n1 and n2 calls after a warm-up);
the difference over n2 - n1 cancels the start and stop. Counts are not times: Python's
interpreter and a BLAS kernel retire instructions at different rates, so a ratio of counts
is a noise-free signal for the Python path, not a speed ratio. Needs valgrind (Linux).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile

DEFAULT_ROWS = ("grad", "vmap(grad)", "vmap", "jvp", "grad nn.Sequential MLP", "grad TransformerEncoderLayer")


def _rows(system):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch
    import functx
    import bench_eager_models as M
    import bench_eager_transforms as E
    T = functx if system == "functx" else torch.func
    rows = dict(E.small_mlp_rows(T))
    rows.update(E.module_rows(T))
    rows.update({f"grad {name}": (T.grad(loss), args) for name, (loss, args) in M.model_rows().items()})
    return rows


def _child(row, system, n):
    """Run inside callgrind: warm up, then n calls with instrumentation on."""
    import torch
    torch.set_num_threads(1)
    fn, args = _rows(system)[row]
    for _ in range(20):
        fn(*args)
    pid = str(os.getpid())
    subprocess.run(["callgrind_control", "-i", "on", pid], stdout=subprocess.DEVNULL, check=True)
    for _ in range(n):
        fn(*args)
    subprocess.run(["callgrind_control", "-i", "off", pid], stdout=subprocess.DEVNULL, check=True)


def _count(row, system, n):
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={tmp}/out",
               sys.executable, os.path.abspath(__file__), "--child", row, system, str(n)]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        m = re.search(r"Collected : (\d+)", res.stderr)
        if res.returncode or not m:
            raise RuntimeError(f"callgrind failed for {row!r} ({system}):\n{res.stderr[-2000:]}")
        return int(m.group(1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="*", default=list(DEFAULT_ROWS))
    ap.add_argument("--calls", type=int, nargs=2, default=(5, 25), metavar=("N1", "N2"))
    ap.add_argument("--jobs", type=int, default=2, help="callgrind processes at once (default 2)")
    ap.add_argument("--list", action="store_true", help="print the row names")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return _child(a.child[0], a.child[1], int(a.child[2]))
    if a.list:
        print("\n".join(_rows("functx")))
        return
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("count_instructions.py needs valgrind (callgrind) on PATH")
    n1, n2 = a.calls
    print(f"instructions per call (callgrind, calls {n1} and {n2}, difference over {n2 - n1})")
    print(f"  {'row':<32} {'functx':>12} {'torch.func':>12} {'functx/torch.func':>18}")
    systems = ("functx", "torch.func")
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        runs = {(row, s, n): pool.submit(_count, row, s, n) for row in a.rows for s in systems for n in (n1, n2)}
        for row in a.rows:
            per = {s: (runs[row, s, n2].result() - runs[row, s, n1].result()) / (n2 - n1) for s in systems}
            print(f"  {row:<32} {per['functx'] / 1e3:>10.0f} K {per['torch.func'] / 1e3:>10.0f} K "
                  f"{per['functx'] / per['torch.func']:>18.2f}", flush=True)


if __name__ == "__main__":
    main()
