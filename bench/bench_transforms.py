"""Transform benchmarks (issue 3): functx eager, functx.jit, torch.func eager,
torch.compile over torch.func, and JAX jit when importable, measured side by side.

    python bench/bench_transforms.py                 # everything (torch.compile takes minutes)
    python bench/bench_transforms.py --quick         # small sizes, no torch.compile, few repeats
    python bench/bench_transforms.py --only hvp --only pinn_laplacian --no-compile
    python bench/bench_transforms.py --threads 2

Workloads (each written once in PyTorch and transformed by functx and by torch.func with
the same code; the JAX version mirrors it in jax.numpy):
  per_sample_grads   vmap(grad(cross-entropy of an MLP 784-256-256-10)), batch 128
  hvp                jvp(grad(f)) for f: R^1000 -> R, one tanh hidden layer of 1000
  pinn_laplacian     vmap(trace(hessian(u))), u an MLP 2-64-64-64-1 (tanh), 1024 points
  score_matching     grad of the exact score-matching loss  mean(tr(jacfwd(s)) + |s|^2/2),
                     s an MLP 2-128-128-2 (tanh), 512 points
  dsm_step           denoising score matching training step (value_and_grad + SGD), batch 4096
  vmap_grad_elementwise  vmap(grad(f)) of an elementwise-heavy f, 128 x 512

Each row: first-call latency (trace + compile for the jitted variants) and the median
per-call time, and its speed relative to torch.func eager (>1 is faster). Results of
every variant are checked against torch.func before timing.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _set_threads_env(threads):
    # XLA's CPU thread pool follows these; they must be set before jax is imported.
    if threads == 1:
        os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")


import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import functx  # noqa: E402
from _models import init_mlp, mlp  # noqa: E402
from _timing import first_call, fmt_time, interleaved  # noqa: E402

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

    jmlp = mlp          # the same code runs on JAX arrays

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


def variants(name, small, with_compile=True, with_jax=True):
    """name -> (fn, args) for every variant that could be built; failures are reported."""
    build = WORKLOADS[name]
    fx_fn, args = build(_FunctxNS, small)
    tf_fn, _ = build(torch.func, small)
    out = {
        "functx eager": (fx_fn, args),
        "functx.jit": (functx.jit(fx_fn), args),
        "torch.func eager": (tf_fn, args),
    }
    notes = {}
    if with_compile:
        torch._dynamo.reset()
        out["torch.compile(torch.func)"] = (torch.compile(build(torch.func, small)[0]), args)
    if with_jax:
        try:
            j = jax_workload(name, small)
        except Exception as e:  # noqa: BLE001
            j, notes["jax.jit"] = None, f"failed: {type(e).__name__}: {e}"
        if j is not None:
            out["jax.jit"] = j
        elif "jax.jit" not in notes:
            notes["jax.jit"] = "not installed"
    return out, notes


def check(name, small=True):
    """Correctness only: functx eager and functx.jit agree with torch.func."""
    vs, _ = variants(name, small, with_compile=False, with_jax=False)
    fn, args = vs["torch.func eager"]
    want = fn(*args)
    for v in ("functx eager", "functx.jit"):
        fn, args = vs[v]
        assert_matches(fn(*args), want, f"{name}: {v}")
        assert_matches(fn(*args), want, f"{name}: {v} (second call)")
    return True


def run_workload(name, quick, with_compile, with_jax):
    vs, notes = variants(name, small=False, with_compile=with_compile, with_jax=with_jax)
    firsts, ok = {}, {}
    want = None
    for v, (fn, args) in vs.items():
        try:
            t, out = first_call(fn, *args)
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
        except AssertionError as e:
            notes[v] = f"wrong result: {str(e).splitlines()[0][:120]}"
            del ok[v]
    if "jax.jit" in ok and want is not None:
        import numpy as np
        jl = [np.asarray(t) for t in __import__("jax").tree_util.tree_leaves(ok["jax.jit"][2])]
        tl = [t.numpy() for t in _leaves(want)]
        if len(jl) != len(tl) or not all(np.allclose(a, b, rtol=2e-3, atol=2e-4) for a, b in zip(jl, tl)):
            notes["jax.jit"] = "result differs from torch.func (timed anyway)"
    times = interleaved({v: ok[v][0] for v in ok}, {v: ok[v][1] for v in ok},
                        repeat=3 if quick else 7, min_time=0.02 if quick else 0.2)
    return times, firsts, notes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, no torch.compile, short timing")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--only", action="append", choices=sorted(WORKLOADS), help="run only these workloads")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--compile", action="store_true", help="include torch.compile even with --quick")
    ap.add_argument("--no-jax", action="store_true", help="skip JAX")
    a = ap.parse_args(argv)
    _set_threads_env(a.threads)
    torch.set_num_threads(a.threads)
    with_compile = (not a.no_compile) and (a.compile or not a.quick)
    names = a.only or list(WORKLOADS)
    if a.quick:
        for n in names:
            check(n, small=True)
        print("correctness (small sizes): functx eager and functx.jit match torch.func on", ", ".join(names))
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, cpu count={os.cpu_count()}"
          + (f", XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}" if not a.no_jax else ""))
    summary = []
    for name in names:
        times, firsts, notes = run_workload(name, a.quick, with_compile, not a.no_jax)
        base = times.get("torch.func eager")
        print(f"\n== {name}")
        print(f"  {'variant':<28} {'first call':>11} {'per call':>11} {'vs torch.func':>14}")
        for v in ["functx eager", "functx.jit", "torch.func eager", "torch.compile(torch.func)", "jax.jit"]:
            if v in times:
                rel = f"{base / times[v]:.2f}x" if base else "-"
                print(f"  {v:<28} {fmt_time(firsts.get(v)):>11} {fmt_time(times[v]):>11} {rel:>14}")
            elif v in notes:
                print(f"  {v:<28} {notes[v]}")
        for v, n in notes.items():
            if v in times:
                print(f"  note: {v}: {n}")
        summary.append((name, times, firsts))
    print("\n== summary: functx.jit speedup (per call)")
    print(f"  {'workload':<24} {'vs torch.func':>14} {'vs torch.compile':>17} {'vs jax.jit':>11} {'jit 1st call':>13}")
    for name, t, fc in summary:
        j = t.get("functx.jit")

        def r(k):
            return f"{t[k] / j:.2f}x" if j and k in t else "-"
        print(f"  {name:<24} {r('torch.func eager'):>14} {r('torch.compile(torch.func)'):>17} {r('jax.jit'):>11} "
              f"{fmt_time(fc.get('functx.jit')):>13}")


if __name__ == "__main__":
    main()
