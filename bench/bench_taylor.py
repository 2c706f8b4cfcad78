"""Laplacian benchmarks (issue 12): functx's collapsed Taylor mode (functx.laplacian) against
nested AD (torch.func vmap(trace(hessian)) and functx's own, eager and jitted), side by side
in one process, plus the peak memory each variant allocates (torch profiler, CPU); and the
gradient of the exact score-matching loss, functx.divergence against vmap(trace(jacfwd)).

    python bench/bench_taylor.py                  # MLP 2-64-64-64-1 and d = 16/64/256, 1024 points
    python bench/bench_taylor.py --quick          # small sizes, few repeats
    python bench/bench_taylor.py --points 256 --dims 16 64
    python bench/bench_taylor.py --only score     # the score-matching loss gradient alone
    python bench/bench_taylor.py --cpu-time       # CPU time instead of wall time (a loaded machine)

Models: u(x) = MLP d-64-64-64-1 with tanh, float32, per point (vmap over the points); the
score s(x) = MLP d-64-64-64-d, loss(params) = mean over the points of 0.5 |s(x)|^2 + div s(x)
(Hyvarinen's exact score matching), differentiated in the parameters.
"no fold_identity" / "no factor_dots": the same jitted function compiled without the
fold_identity_dots / factor_broadcast_dots pass (before/after of that pass); "no buffer
reuse": without the eager backend's out= into dead and kept temporaries
(compile/buffer_reuse.py). Plain functx.jit is jit's default for CPU tensors, the cpu backend
(fused C++ kernels; FUNCTX_CPU_BLOCK=1 builds them before the first call, so it is timed on
that tier), functx.jit(eager) the eager backend (generated PyTorch code).
The functx nested anchors spell the Hessian jacfwd(jacrev(u)), which jit keeps as written;
"functx.hessian rewritten" is the same code with functx.hessian, whose trace jit turns into
the Laplacian. Every variant's result is checked against torch.func before timing.

JAX anchors (when jax is installed; folx too when it is), same weights copied to JAX
arrays, float32, jitted: jax.jit(vmap(trace(jax.hessian(u)))), a jet-based Laplacian (jet
along each e_i, summed), folx.forward_laplacian; for the score loss jax.grad over
trace(jax.jacfwd(s)) and over folx's Jacobian trace. Every system runs on one thread by
default (torch.set_num_threads, XLA's --xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1, set before jax is imported) and the process on one core
(XLA's YNNPACK fusions ignore those flags and use every core; FUNCTX_BENCH_ALL_CORES=1 keeps
all cores); --threads N changes torch's.
Peak memory: torch profiler (allocations minus frees in time order) for torch/functx; for
JAX, XLA's buffer assignment of the compiled executable (temporaries + outputs): not the
same measure, see docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# one thread for XLA too; read once, when jax's CPU client starts, so before any jax import
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("FUNCTX_CPU_BLOCK", "1")     # backend="cpu": fused C++ tier from the first call

import torch  # noqa: E402

import functx  # noqa: E402
from _models import init_mlp, mlp  # noqa: E402
from _timing import fmt_time, interleaved, pin_to_one_core, settle_fused, use_cpu_time  # noqa: E402

try:
    import _jax_anchors as jax_anchors  # noqa: E402
except ImportError:       # jax absent: no JAX rows
    jax_anchors = None


def variants(d, points, width):
    params = init_mlp([d, width, width, width, 1])
    X = torch.randn(points, d, generator=torch.Generator().manual_seed(1))

    def u(params, x):
        return mlp(params, x).squeeze(-1)

    def nested(T, hessian=None):
        # jacfwd(jacrev): the Hessian as written, which jit does not rewrite (functx.hessian's is)
        hessian = hessian or (lambda f, argnums: T.jacfwd(T.jacrev(f, argnums=argnums), argnums=argnums))
        return T.vmap(lambda p, x: torch.trace(hessian(u, argnums=1)(p, x)), in_dims=(None, 0))

    collapsed = functx.vmap(functx.laplacian(u, argnums=1), in_axes=(None, 0))
    # "functx.jit": jit's default for CPU tensors, the tiered cpu backend, timed on its fused
    # tier; "functx.jit(eager)": the eager backend (generated PyTorch code)
    fns = {
        "torch.func vmap(trace(hessian))": nested(torch.func),
        "functx vmap(trace(hessian))": nested(functx),
        "functx.jit vmap(trace(hessian))": functx.jit(nested(functx)),
        "functx.jit(eager) vmap(trace(hessian))": functx.jit(nested(functx), backend="eager"),
        "functx vmap(laplacian)": collapsed,
        "functx.jit vmap(laplacian)": functx.jit(collapsed),
        "functx.jit(eager) vmap(laplacian)": functx.jit(collapsed, backend="eager"),
        "functx.jit vmap(laplacian), no fold_identity": without_pass(functx.jit(collapsed), (params, X),
                                                                     "fold_identity_dots"),
        "functx.jit vmap(laplacian), no factor_dots": without_pass(functx.jit(collapsed), (params, X),
                                                                   "factor_broadcast_dots"),
        "functx.jit(eager) vmap(laplacian), no buffer reuse": without_buffer_reuse(
            functx.jit(collapsed, backend="eager"), (params, X)),
        "functx.jit, functx.hessian rewritten": functx.jit(nested(functx, functx.hessian)),
    }
    return fns, (params, X)


def score_variants(d, points, width):
    """grad over the parameters of mean(0.5 |s(x)|^2 + div s(x)); each returns one flat vector."""
    params = init_mlp([d, width, width, width, d], seed=2)
    X = torch.randn(points, d, generator=torch.Generator().manual_seed(3))

    def s(params, x):
        return mlp(params, x)

    def loss_grad(T, div):
        def per_point(p, x):
            return 0.5 * (s(p, x) ** 2).sum() + div(p, x)

        def loss(p, X):
            return T.vmap(per_point, in_dims=(None, 0))(p, X).mean()
        g = T.grad(loss)
        return lambda p, X: torch.cat([t.reshape(-1) for t in g(p, X)])

    def trace_jacfwd(T):
        return lambda p, x: torch.trace(T.jacfwd(s, argnums=1)(p, x))

    collapsed = loss_grad(functx, functx.divergence(s, argnums=1))
    fns = {
        "torch.func grad(vmap(trace(jacfwd)))": loss_grad(torch.func, trace_jacfwd(torch.func)),
        "functx grad(vmap(trace(jacfwd)))": loss_grad(functx, trace_jacfwd(functx)),
        "functx.jit grad(vmap(trace(jacfwd)))": functx.jit(loss_grad(functx, trace_jacfwd(functx))),
        "functx.jit(eager) grad(vmap(trace(jacfwd)))": functx.jit(loss_grad(functx, trace_jacfwd(functx)),
                                                                  backend="eager"),
        "functx grad(vmap(divergence))": collapsed,
        "functx.jit grad(vmap(divergence))": functx.jit(collapsed),
        "functx.jit(eager) grad(vmap(divergence))": functx.jit(collapsed, backend="eager"),
        "functx.jit grad(vmap(div)), no fold_identity": without_pass(functx.jit(collapsed), (params, X),
                                                                     "fold_identity_dots"),
        "functx.jit grad(vmap(div)), no factor_dots": without_pass(functx.jit(collapsed), (params, X),
                                                                   "factor_broadcast_dots"),
        "functx.jit(eager) grad(vmap(div)), no buffer reuse": without_buffer_reuse(
            functx.jit(collapsed, backend="eager"), (params, X)),
    }
    return fns, (params, X)


def peak_bytes(fn, args):
    """Peak of the CPU memory the call allocates (allocations minus frees, in time order).
    The buffers jitted functions keep between calls are released first, so that this call
    allocates them again and they count."""
    functx.compile.release_buffers()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(*args)
    # each op's own allocations (self_...) and the frees outside ops ([memory]), in time order
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    level = peak = 0
    for e in events:
        level += e.self_cpu_memory_usage
        peak = max(peak, level)
    return peak


def without_pass(fn, args, name):
    """fn (a functx.jit function) compiled without the pipeline pass `name`, for a before/after
    row: the first call compiles (and caches) its graph with the pass removed."""
    from functx.compile import pipeline
    saved = list(pipeline.PIPELINE)
    pipeline.PIPELINE[:] = [(n, p) for n, p in saved if n != name]
    try:
        fn(*args)
    finally:
        pipeline.PIPELINE[:] = saved
    return fn


def without_buffer_reuse(fn, args):
    """fn (a functx.jit function) compiled with the eager backend's buffer reuse off (no
    out= into dead or kept temporaries): the before/after row of compile/buffer_reuse.py."""
    from functx.compile import buffer_reuse
    saved = buffer_reuse.MIN_BYTES
    buffer_reuse.MIN_BYTES = float("inf")
    try:
        fn(*args)
    finally:
        buffer_reuse.MIN_BYTES = saved
    return fn


def _load():
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _with_jax(fns, args, score):
    """fns, args_of, memory_of: the torch variants plus the JAX/folx anchors if installed."""
    args_of = {name: args for name in fns}
    memory_of = {name: (lambda f=fn: peak_bytes(f, args)) for name, fn in fns.items()}
    if jax_anchors is not None and jax_anchors.available():
        jfns, jargs = (jax_anchors.score_variants if score else jax_anchors.laplacian_variants)(*args)
        for name, jf in jfns.items():
            fns[name] = jax_anchors.blocking(jf)
            args_of[name] = jargs
            memory_of[name] = lambda f=jf: jax_anchors.memory(f, jargs)
    return fns, args_of, memory_of


def run(d, points, width, repeat, min_time, score=False):
    fns, args = (score_variants if score else variants)(d, points, width)
    fns, args_of, memory_of = _with_jax(fns, args, score)
    ref = next(iter(fns.values()))(*args)          # the torch.func anchor comes first
    for name, fn in fns.items():
        out = torch.as_tensor(fn(*args_of[name])).clone()
        torch.testing.assert_close(out, ref, rtol=2e-3, atol=2e-3 * float(ref.abs().max()), msg=name)
        why = settle_fused(fn, args_of[name])
        if why:
            print(f"  ({name}: timed on the eager tier: {why})")
    times = interleaved(fns, args_of, repeat=repeat, min_time=min_time)
    nested_best = min(t for name, t in times.items() if "trace(" in name)     # the nested-AD anchors
    if score:
        print(f"\nScore-matching loss gradient, score MLP {d}-{width}-{width}-{width}-{d} (tanh), "
              f"{points} points, float32, load average {_load()}")
    else:
        print(f"\nLaplacian of MLP {d}-{width}-{width}-{width}-1 (tanh), {points} points, float32, "
              f"load average {_load()}")
    print(f"{'variant':42s} {'per call':>10s} {'vs best nested':>15s} {'peak alloc':>11s}")
    for name, t in times.items():
        b = memory_of[name]()
        mb = "-" if b is None else f"{b / 2 ** 20:.1f}"
        print(f"{name:42s} {fmt_time(t):>10s} {nested_best / t:>14.2f}x {mb:>9s} MB", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    ap.add_argument("--points", type=int, default=None)
    ap.add_argument("--dims", type=int, nargs="*", default=None, help="input dimensions (default 2 16 64 256)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (XLA runs on one)")
    ap.add_argument("--only", choices=["laplacian", "score"], default=None, help="one of the two benchmarks")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with the process's CPU time (less inflated by a loaded machine), not wall time")
    a = ap.parse_args()
    if a.cpu_time:
        use_cpu_time()
    torch.set_num_threads(a.threads)
    if a.threads == 1 and os.environ.get("FUNCTX_BENCH_ALL_CORES", "") in ("", "0"):
        pin_to_one_core()      # before XLA's client starts: its fusions' pool takes every core
    points = a.points or (32 if a.quick else 1024)
    dims = a.dims or ([2, 16] if a.quick else [2, 16, 64, 256])
    width = 8 if a.quick else 64
    jax_line = "jax absent"
    if jax_anchors is not None and jax_anchors.available():
        jax_line = f"jax {jax_anchors.jax.__version__} ({os.environ.get('XLA_FLAGS')}), folx " + \
            ("absent" if jax_anchors.folx is None else jax_anchors.folx.__version__)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {jax_line}; "
          f"load average {_load()}; cores "
          f"{sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else 'all'}")
    repeat, min_time = (3, 0.02) if a.quick else (5, 0.2)
    for score in [False, True]:
        if a.only not in (None, "score" if score else "laplacian"):
            continue
        for d in dims:
            run(d, points, width, repeat, min_time, score=score)


if __name__ == "__main__":
    main()
