"""Transform benchmarks (issues 3 and 13): functx eager, functx.jit (the default: the tiered
cpu backend), functx.jit on the eager backend, torch.func eager, torch.compile over
torch.func, and jax.jit when importable, measured side by side in one process
(interleaved rounds, medians).

    python bench/bench_transforms.py --threads 1 2   # everything (torch.compile takes minutes)
    python bench/bench_transforms.py --quick         # small sizes checked, short timing, no torch.compile
    python bench/bench_transforms.py --only hvp --only pinn_laplacian --no-compile
    python bench/bench_transforms.py --no-fresh      # skip the fresh-process first calls

Workloads (each written once in PyTorch and transformed by functx and by torch.func with
the same code; the JAX version mirrors it in jax.numpy):
  per_sample_grads   vmap(grad(cross-entropy of an MLP 784-256-256-10)), batch 128
  hvp                jvp(grad(f)) for f: R^1000 -> R, one tanh hidden layer of 1000
  pinn_laplacian     vmap(trace(hessian(u))), u an MLP 2-64-64-64-1 (tanh), 1024 points
  score_matching     grad of the exact score-matching loss  mean(tr(jacfwd(s)) + |s|^2/2),
                     s an MLP 2-128-128-2 (tanh), 512 points
  dsm_step           denoising score matching training step (value_and_grad + SGD), batch 4096
  vmap_grad_elementwise  vmap(grad(f)) of an elementwise-heavy f, 128 x 512

Per workload: the median per-call time of each variant and its speed relative to
torch.func eager (>1 is faster), the first call in this process, and (unless --quick or
--no-fresh) the first call in a fresh process per variant (a child process imports,
builds the function and times its first call). "functx.jit" (the default for CPU tensors,
the tiered cpu backend) is timed on its fused tier (the background build is waited for);
its first call in this process is the tiered one (eager tier); in a fresh process it is
measured twice, with an empty disk cache (eager tier) and with the graph in the disk cache
(fused from the first call), the cell naming the tier that ran. The last
column of the summary is the goal of issue 13: best functx.jit / best of torch.compile and
jax.jit (<= 1 met). Then the fixed per-call overhead of each system on a trivial function.
Results of every variant are checked against torch.func before timing. Several --threads
values run one child process each (XLA fixes its thread count when it is imported).
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _cores():
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "all"


def _set_threads_env(threads):
    # XLA's CPU thread pool follows these; they must be set before jax is imported. With one
    # thread the process is pinned to one core too (_timing.pin_to_one_core: XLA's YNNPACK
    # fusions would use every core otherwise).
    if threads == 1:
        os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
        if os.environ.get("FUNCTX_BENCH_ALL_CORES", "") in ("", "0"):
            pin_to_one_core()


import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import functx  # noqa: E402
from _models import init_mlp, mlp  # noqa: E402
from _timing import first_call, fmt_time, interleaved, pin_to_one_core, settle_fused, use_cpu_time  # noqa: E402

DTYPE = torch.float32


# ---------------------------------------------------------------- shared model code

def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


# ---------------------------------------------------------------- workloads
# build(T, small) -> (fn, args): T is functx or torch.func (same transform names).

def per_sample_grads(T, small):
    sizes = [784, 256, 256, 10] if not small else [20, 16, 16, 10]
    batch = 128 if not small else 8
    params = init_mlp(sizes)
    x = randn(batch, sizes[0], seed=1)
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(2))

    def loss(params, x, y):
        logits = mlp(params, x[None], torch.relu)
        return F.cross_entropy(logits, y[None])

    return T.vmap(T.grad(loss), in_dims=(None, 0, 0)), (params, x, y)


def hvp(T, small):
    n = 1000 if not small else 16
    W1, b1, w2 = randn(n, n, seed=0) / n ** 0.5, randn(n, seed=1) * 0.1, randn(n, seed=2) / n ** 0.5
    x, v = randn(n, seed=3), randn(n, seed=4)

    def f(x, W1, b1, w2):
        return (torch.tanh(x @ W1 + b1) * w2).sum()

    def hvp_fn(x, v, W1, b1, w2):
        return T.jvp(lambda x: T.grad(f)(x, W1, b1, w2), (x,), (v,))[1]

    return hvp_fn, (x, v, W1, b1, w2)


def pinn_laplacian(T, small):
    params = init_mlp([2, 64, 64, 64, 1] if not small else [2, 8, 8, 1])
    X = randn(1024 if not small else 16, 2, seed=5)

    def u(params, x):
        return mlp(params, x).squeeze(-1)

    def laplacian(params, x):
        return torch.trace(T.hessian(u, argnums=1)(params, x))

    return T.vmap(laplacian, in_dims=(None, 0)), (params, X)


def score_matching(T, small):
    params = init_mlp([2, 128, 128, 2] if not small else [2, 8, 8, 2])
    X = randn(512 if not small else 16, 2, seed=6)

    def s(params, x):
        return mlp(params, x)

    def per_point(params, x):
        J = T.jacfwd(s, argnums=1)(params, x)
        return torch.trace(J) + 0.5 * (s(params, x) ** 2).sum()

    def loss(params, X):
        return T.vmap(per_point, in_dims=(None, 0))(params, X).mean()

    return T.grad(loss), (params, X)


def dsm_step(T, small):
    params = init_mlp([2, 128, 128, 2] if not small else [2, 8, 8, 2])
    n = 4096 if not small else 32
    X, eps = randn(n, 2, seed=7), randn(n, 2, seed=8)
    sigma, lr = 0.1, 1e-3

    def loss(params, X, eps):
        pred = mlp(params, X + sigma * eps)
        return ((pred + eps / sigma) ** 2).sum(-1).mean()

    def step(params, X, eps):
        if T is torch.func:
            grads, value = T.grad_and_value(loss)(params, X, eps)
        else:
            value, grads = T.value_and_grad(loss)(params, X, eps)
        return value, tuple(p - lr * g for p, g in zip(params, grads))

    return step, (params, X, eps)


def vmap_grad_elementwise(T, small):
    X = randn(128, 512, seed=9) if not small else randn(4, 8, seed=9)

    def f(x):
        y = torch.sin(x) * torch.exp(-x * x) + torch.tanh(x) ** 3
        y = y + torch.log1p(x * x) / (1.0 + torch.cos(x) ** 2) + torch.sigmoid(x) * x
        return (y * y + torch.sqrt(1.0 + x * x)).sum()

    return T.vmap(T.grad(f)), (X,)


WORKLOADS = {
    "per_sample_grads": per_sample_grads,
    "hvp": hvp,
    "pinn_laplacian": pinn_laplacian,
    "score_matching": score_matching,
    "dsm_step": dsm_step,
    "vmap_grad_elementwise": vmap_grad_elementwise,
}


# ---------------------------------------------------------------- JAX versions

def jax_workload(name, small):
    """(jitted fn, args as jax arrays) mirroring the torch workload, or None without JAX."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    _, targs = WORKLOADS[name](functx, small)
    conv = lambda t: jnp.asarray(t.numpy()) if isinstance(t, torch.Tensor) else t  # noqa: E731
    args = tuple(tuple(conv(p) for p in a) if isinstance(a, tuple) else conv(a) for a in targs)

    def jmlp(params, x, act=jnp.tanh):      # the same code runs on JAX arrays
        return mlp(params, x, act)

    if name == "per_sample_grads":
        def loss(params, x, y):
            logits = jmlp(params, x, jax.nn.relu)
            return -jax.nn.log_softmax(logits)[y]
        fn = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))
    elif name == "hvp":
        def f(x, W1, b1, w2):
            return (jnp.tanh(x @ W1 + b1) * w2).sum()

        def fn(x, v, W1, b1, w2):
            return jax.jvp(lambda x: jax.grad(f)(x, W1, b1, w2), (x,), (v,))[1]
    elif name == "pinn_laplacian":
        def u(params, x):
            return jmlp(params, x)[0]
        fn = jax.vmap(lambda p, x: jnp.trace(jax.hessian(u, argnums=1)(p, x)), in_axes=(None, 0))
    elif name == "score_matching":
        def per_point(params, x):
            return jnp.trace(jax.jacfwd(jmlp, argnums=1)(params, x)) + 0.5 * (jmlp(params, x) ** 2).sum()
        fn = jax.grad(lambda p, X: jax.vmap(per_point, in_axes=(None, 0))(p, X).mean())
    elif name == "dsm_step":
        def loss(params, X, eps):
            return ((jmlp(params, X + 0.1 * eps) + eps / 0.1) ** 2).sum(-1).mean()

        def fn(params, X, eps):
            value, grads = jax.value_and_grad(loss)(params, X, eps)
            return value, tuple(p - 1e-3 * g for p, g in zip(params, grads))
    elif name == "vmap_grad_elementwise":
        def f(x):
            y = jnp.sin(x) * jnp.exp(-x * x) + jnp.tanh(x) ** 3
            y = y + jnp.log1p(x * x) / (1.0 + jnp.cos(x) ** 2) + jax.nn.sigmoid(x) * x
            return (y * y + jnp.sqrt(1.0 + x * x)).sum()
        fn = jax.vmap(jax.grad(f))
    else:
        return None
    jfn = jax.jit(fn)
    return (lambda *a: jax.block_until_ready(jfn(*a))), args


# ---------------------------------------------------------------- running

class _FunctxNS:
    """functx under torch.func's names (in_dims, grad_and_value) so one workload body serves both."""
    grad, jvp, jacfwd, jacrev, hessian, value_and_grad = (functx.grad, functx.jvp, functx.jacfwd,
                                                           functx.jacrev, functx.hessian,
                                                           functx.value_and_grad)
    vmap = staticmethod(functx.vmap)


def _leaves(x):
    return [t for t in torch.utils._pytree.tree_leaves(x) if isinstance(t, torch.Tensor)]


def assert_matches(got, want, what, rtol=1e-4, atol=1e-5):
    g, w = _leaves(got), _leaves(want)
    assert len(g) == len(w), f"{what}: {len(g)} outputs, expected {len(w)}"
    for a, b in zip(g, w):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


# Columns, in print order. "functx.jit" is the default for CPU tensors, the tiered cpu
# backend (timed on its fused tier, after the background build; its first call in this
# process is the tiered one, which runs the eager tier); "functx.jit eager" names the
# eager backend (generated PyTorch code only, the bit-stable choice).
VARIANTS = ["functx eager", "functx.jit", "functx.jit eager", "torch.func eager",
            "torch.compile", "jax.jit"]
JIT_VARIANTS = ("functx.jit", "functx.jit eager")
PEERS = ("torch.compile", "jax.jit")
FRESH_COLD = "functx.jit (empty disk cache)"      # first calls in a fresh process
FRESH_WARM = "functx.jit (graph in the disk cache)"


def build_variant(name, v, small):
    """(fn, args) of one variant of workload `name`, or None (JAX missing)."""
    build = WORKLOADS[name]
    if v == "functx eager":
        return build(_FunctxNS, small)
    if v in JIT_VARIANTS:
        fn, args = build(_FunctxNS, small)
        return functx.jit(fn, backend=None if v == "functx.jit" else v.split()[-1]), args
    if v == "torch.func eager":
        return build(torch.func, small)
    if v == "torch.compile":
        torch._dynamo.reset()
        fn, args = build(torch.func, small)
        return torch.compile(fn), args
    if v == "jax.jit":
        return jax_workload(name, small)
    raise ValueError(v)


def _settle_tier(v, fn, args):
    """functx.jit (the cpu backend): timed on its fused tier (see _timing.settle_fused)."""
    return settle_fused(fn, args) if v == "functx.jit" else None


def variants(name, small, with_compile=True, with_jax=True, only=None):
    """name -> (fn, args) for every variant that could be built; notes on the others."""
    out, notes = {}, {}
    for v in only or VARIANTS:
        if (v == "torch.compile" and not with_compile) or (v == "jax.jit" and not with_jax):
            continue
        try:
            built = build_variant(name, v, small)
        except Exception as e:  # noqa: BLE001
            notes[v] = f"failed: {type(e).__name__}: {e}"
            continue
        if built is None:
            notes[v] = "not installed"
        else:
            out[v] = built
    return out, notes


def check(name, small=True):
    """Correctness only: functx eager and functx.jit (both backends, both cpu tiers) agree
    with torch.func."""
    vs, _ = variants(name, small, with_compile=False, with_jax=False)
    fn, args = vs["torch.func eager"]
    want = fn(*args)
    for v in ("functx eager",) + JIT_VARIANTS:
        fn, args = vs[v]
        assert_matches(fn(*args), want, f"{name}: {v}")
        _settle_tier(v, fn, args)
        assert_matches(fn(*args), want, f"{name}: {v} (second call)")
    return True


def _jax_leaves(out):
    import numpy as np
    return [np.asarray(t) for t in __import__("jax").tree_util.tree_leaves(out)]


def run_workload(name, quick, with_compile, with_jax):
    vs, notes = variants(name, small=False, with_compile=with_compile, with_jax=with_jax)
    firsts, ok = {}, {}
    want = None
    for v, (fn, args) in vs.items():
        try:
            t, out = first_call(fn, *args)
            status = _settle_tier(v, fn, args)
            if status:
                notes[v] = status
        except Exception as e:  # noqa: BLE001
            notes[v] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            if os.environ.get("FUNCTX_BENCH_TRACEBACK"):
                traceback.print_exc()
            continue
        firsts[v] = t
        if v == "torch.func eager":
            want = out
        ok[v] = (fn, args, out)
    for v, (fn, args, out) in list(ok.items()):
        if want is None or v == "jax.jit":
            continue
        try:
            assert_matches(out, want, f"{name}: {v}", rtol=1e-3, atol=1e-4)
            assert_matches(fn(*args), want, f"{name}: {v} (steady state)", rtol=1e-3, atol=1e-4)
        except AssertionError as e:
            notes[v] = f"wrong result: {str(e).splitlines()[0][:120]}"
            del ok[v]
    if "jax.jit" in ok and want is not None:
        import numpy as np
        jl, tl = _jax_leaves(ok["jax.jit"][2]), [t.numpy() for t in _leaves(want)]
        if len(jl) != len(tl) or not all(np.allclose(a, b, rtol=2e-3, atol=2e-4) for a, b in zip(jl, tl)):
            notes["jax.jit"] = "result differs from torch.func (timed anyway)"
    times = interleaved({v: ok[v][0] for v in ok}, {v: ok[v][1] for v in ok},
                        repeat=3 if quick else 7, min_time=0.02 if quick else 0.2)
    return times, firsts, notes


# ---------------------------------------------------------------- fixed per-call overhead

def overhead_fns(with_compile, with_jax):
    """The fixed cost of one call: f(x) = x + 1 on 4 floats (one tensor in and out), and the
    same with a 6-tensor parameter tuple beside x (the workloads' pytree signature)."""
    x = torch.randn(4)
    params = tuple(torch.randn(4) for _ in range(6))

    def one(x):
        return x + 1

    def tree(params, x):
        return x + params[0]
    rows = {"x + 1": (one, (x,)), "(params[6], x) -> x + p0": (tree, (params, x))}
    out = {}
    for row, (f, args) in rows.items():
        fns = {"torch eager": (f, args),
               "functx.jit": (functx.jit(f), args),
               "functx.jit eager": (functx.jit(f, backend="eager"), args)}
        if with_compile:
            torch._dynamo.reset()
            fns["torch.compile"] = (torch.compile(f), args)
        if with_jax:
            try:
                import jax
                import jax.numpy as jnp
                jf = jax.jit(f)
                jargs = tuple(tuple(jnp.asarray(p.numpy()) for p in a) if isinstance(a, tuple)
                              else jnp.asarray(a.numpy()) for a in args)
                fns["jax.jit"] = (lambda *a, _jf=jf: _jf(*a).block_until_ready(), jargs)
            except ImportError:
                pass
        for v, (fn, a) in fns.items():
            fn(*a)
            _settle_tier(v, fn, a)
        out[row] = interleaved({v: fn for v, (fn, _) in fns.items()}, {v: a for v, (_, a) in fns.items()},
                               repeat=7, min_time=0.05)
    return out


# ---------------------------------------------------------------- first call in a fresh process

def _first_call_here(name, v, threads):
    """Child process: import, build variant v, time its first call; print the seconds."""
    import time
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    built = build_variant(name, v, False)
    if built is None:
        print("FIRST_CALL none")
        return
    fn, args = built
    t1 = time.perf_counter()
    first_call(fn, *args)
    t2 = time.perf_counter()
    tier = ""
    if v == "functx.jit" and fn.lower(*args)[0].compiled.backend == "cpu":
        tier = fn.lower(*args)[0].compiled.last_tier     # the tier the first call ran
    print(f"FIRST_CALL {t2 - t1:.6f} {t1 - t0:.6f} {tier}")


def fresh_first_call(name, v, threads, timeout=900, cache_dir=None):
    """Seconds of the first call of variant v in a fresh Python process (after imports), or a
    note; for functx.jit "<seconds> s (<tier it ran>)". cache_dir: the child's functx disk
    cache (an empty one: a machine that never compiled the graph)."""
    import subprocess
    cmd = [sys.executable, os.path.abspath(__file__), "--first-call-of", name, v, "--threads", str(threads)]
    env = os.environ.copy()
    if cache_dir is not None:
        env["FUNCTX_CACHE_DIR"] = cache_dir
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return f"> {timeout} s"
    for line in r.stdout.splitlines():
        if line.startswith("FIRST_CALL"):
            parts = line.split()
            if parts[1] == "none":
                return None
            return f"{fmt_time(float(parts[1]))} ({parts[3]})" if len(parts) > 3 else float(parts[1])
    return f"failed: {(r.stderr.strip().splitlines() or ['?'])[-1][:100]}"


# ---------------------------------------------------------------- report

def _cell(t):
    return t if isinstance(t, str) else fmt_time(t)


def print_tables(summary, overhead, fresh, threads, load):
    print(f"\n== summary (threads={threads}, load average before/after: {load[0]:.2f} / {load[1]:.2f})")
    print("median per call; (x) = torch.func eager / variant, > 1 is faster than torch.func")
    cols = [v for v in VARIANTS if any(v in t for _, t, _, _ in summary)]
    print("| workload | " + " | ".join(cols) + " | best functx.jit / best peer |")
    print("| --- |" + " --- |" * (len(cols) + 1))
    for name, t, fc, notes in summary:
        base = t.get("torch.func eager")
        cells = []
        for v in cols:
            if v in t:
                cells.append(f"{fmt_time(t[v])}" + (f" ({base / t[v]:.2f}x)" if base and v != "torch.func eager" else ""))
            else:
                cells.append(notes.get(v, "-")[:40])
        jits = [t[v] for v in JIT_VARIANTS if v in t]
        peers = [t[v] for v in PEERS if v in t]
        goal = f"{min(jits) / min(peers):.2f}" if jits and peers else "-"
        print(f"| {name} | " + " | ".join(cells) + f" | {goal} |")
    print("\nfirst call in this process (after other variants ran; jit: trace + passes + codegen)")
    print("| workload | " + " | ".join(cols) + " |")
    print("| --- |" + " --- |" * len(cols))
    for name, t, fc, notes in summary:
        print(f"| {name} | " + " | ".join(_cell(fc.get(v)) for v in cols) + " |")
    if fresh:
        fcols = [v for v in [FRESH_COLD, FRESH_WARM] + VARIANTS if any(v in f for f in fresh.values())]
        print("\nfirst call in a fresh process (after imports and building the function)")
        print("| workload | " + " | ".join(fcols) + " |")
        print("| --- |" + " --- |" * len(fcols))
        for name, f in fresh.items():
            print(f"| {name} | " + " | ".join(_cell(f.get(v)) for v in fcols) + " |")
    if overhead:
        ocols = list(next(iter(overhead.values())))
        print("\nfixed per-call overhead (median per call of a trivial function)")
        print("| function | " + " | ".join(ocols) + " |")
        print("| --- |" + " --- |" * len(ocols))
        for row, t in overhead.items():
            print(f"| {row} | " + " | ".join(fmt_time(t.get(v)) for v in ocols) + " |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes checked, short timing, no torch.compile, "
                    "no fresh-process first calls")
    ap.add_argument("--threads", type=int, nargs="+", default=[1],
                    help="thread counts (default 1); several run one child process each")
    ap.add_argument("--only", action="append", choices=sorted(WORKLOADS), help="run only these workloads")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--compile", action="store_true", help="include torch.compile even with --quick")
    ap.add_argument("--no-jax", action="store_true", help="skip JAX")
    ap.add_argument("--no-fresh", action="store_true", help="skip first calls in fresh processes")
    ap.add_argument("--no-overhead", action="store_true", help="skip the fixed per-call overhead rows")
    ap.add_argument("--cpu-time", action="store_true", help="time by process CPU time, not wall time "
                    "(steadier on a loaded machine; meaningful with --threads 1)")
    ap.add_argument("--first-call-of", nargs=2, metavar=("WORKLOAD", "VARIANT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if len(a.threads) > 1:           # XLA's thread count is fixed at import: one process per count
        import subprocess
        rest = [x for x in (argv if argv is not None else sys.argv[1:])]
        i = rest.index("--threads")
        j = i + 1
        while j < len(rest) and not rest[j].startswith("--"):
            j += 1
        for n in a.threads:
            subprocess.run([sys.executable, os.path.abspath(__file__)] + rest[:i] + ["--threads", str(n)] + rest[j:],
                           check=False)
        return
    threads = a.threads[0]
    _set_threads_env(threads)
    torch.set_num_threads(threads)
    if a.first_call_of:
        _first_call_here(*a.first_call_of, threads)
        return
    if a.cpu_time:
        use_cpu_time()
    with_compile = (not a.no_compile) and (a.compile or not a.quick)
    names = a.only or list(WORKLOADS)
    if a.quick:
        for n in names:
            check(n, small=True)
        print("correctness (small sizes): functx eager and functx.jit (eager, cpu) match torch.func on",
              ", ".join(names))
    load0 = os.getloadavg()[0]
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, cpu count={os.cpu_count()}, "
          f"cores={_cores()}, "
          f"load average {load0:.2f}, clock: {'process CPU time' if a.cpu_time else 'wall'}" + (f", XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}" if not a.no_jax else ""))
    summary = []
    for name in names:
        times, firsts, notes = run_workload(name, a.quick, with_compile, not a.no_jax)
        base = times.get("torch.func eager")
        print(f"\n== {name}  (load average {os.getloadavg()[0]:.2f})")
        print(f"  {'variant':<18} {'first call':>11} {'per call':>11} {'vs torch.func':>14}")
        for v in VARIANTS:
            if v in times:
                rel = f"{base / times[v]:.2f}x" if base else "-"
                print(f"  {v:<18} {fmt_time(firsts.get(v)):>11} {fmt_time(times[v]):>11} {rel:>14}")
            elif v in notes:
                print(f"  {v:<18} {notes[v]}")
        for v, n in notes.items():
            if v in times:
                print(f"  note: {v}: {n}")
        sys.stdout.flush()
        summary.append((name, times, firsts, notes))
    overhead = None if a.no_overhead else overhead_fns(with_compile, not a.no_jax)
    fresh = {}
    if not a.quick and not a.no_fresh:
        import tempfile
        cold = tempfile.mkdtemp(prefix="functx_cold_cache_")
        for name in names:
            fresh[name] = {}
            for v in VARIANTS:
                if (v == "torch.compile" and not with_compile) or (v == "jax.jit" and a.no_jax) \
                        or v == "functx eager":
                    continue
                if v == "functx.jit":     # a machine that never built the graph, and one whose disk cache has it
                    fresh[name][FRESH_COLD] = fresh_first_call(name, v, threads, cache_dir=cold)
                    r = fresh_first_call(name, v, threads)
                    fresh[name][FRESH_WARM] = r
                    continue
                r = fresh_first_call(name, v, threads)
                if r is not None:
                    fresh[name][v] = r
    print_tables(summary, overhead, fresh, threads, (load0, os.getloadavg()[0]))


if __name__ == "__main__":
    main()
