"""jit with values that change every call (issue 10): traces and total time, side by side.

    python bench/bench_jit_dynamic.py                  # both workloads
    python bench/bench_jit_dynamic.py --quick          # smoke run
    python bench/bench_jit_dynamic.py --lengths 300    # more sequence lengths
    python bench/bench_jit_dynamic.py --torch-compile  # also torch.compile(dynamic=None)

1. A learning-rate schedule: 50 SGD steps of an MLP's value_and_grad with a Python-float
   lr that changes every step; functx.jit with lr dynamic (the default), with lr static
   (static_argnames, the old behaviour: a trace per step) and with a 0-d tensor lr.
2. Variable-length sequences: value_and_grad of a TransformerEncoderLayer called with N
   sequence lengths, each twice: functx.jit (the sequence dim becomes symbolic after the
   second length), functx.jit(dynamic=False) (a trace per length, the fully static graph),
   torch.compile(dynamic=None) with --torch-compile, and jax.jit of the same layer written
   in JAX with --jax (skipped when JAX is absent): traces, the cache's size under its limit,
   the cost of a new length and of a cached call, against eager torch.func.

    python bench/bench_jit_dynamic.py --torch-compile --jax   # every column

3. The CPU backend (fused C++ kernels, g++) on the same lengths, with --variants cpu
   cpu-static: a symbolic entry's sizes are C++ arguments, so one library serves every
   length; the static one builds a library per length. The "builds" column counts g++ runs
   (a fresh kernel cache directory; FUNCTX_CPU_BLOCK=1, so a new length's time includes its
   build). g++ costs seconds per build: keep --lengths small for cpu-static.

    python bench/bench_jit_dynamic.py --skip-schedule --variants cpu cpu-static --lengths 6

(The Triton backend with symbolic dims is not timed here: without a GPU it runs in
Triton's interpreter, which measures nothing; tests/test_jit_symbolic_kernels.py checks it.)
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import functx  # noqa: E402
from _models import init_mlp  # noqa: E402
from _timing import sync  # noqa: E402


def sgd_step(params, x, y, lr):
    def loss(params):
        h = torch.tanh(x @ params[0] + params[1])
        return F.mse_loss(h @ params[2] + params[3], y)
    value, grads = functx.value_and_grad(loss)(params)
    return value, [p - lr * g for p, g in zip(params, grads)]


def lr_schedule(steps=50, compile_torch=False):
    """{variant: (traces, seconds for `steps` steps, final loss)}."""
    torch.manual_seed(0)
    params0 = list(init_mlp([32, 64, 10]))
    x, y = torch.randn(64, 32), torch.randn(64, 10)
    lrs = [0.1 * 0.95 ** k for k in range(steps)]
    variants = {
        "functx.jit, lr a Python float (dynamic)": (functx.jit(sgd_step), lambda lr: lr),
        "functx.jit, lr static (static_argnames)": (functx.jit(sgd_step, static_argnames="lr", cache_limit=None),
                                                     lambda lr: lr),
        "functx.jit, lr a 0-d tensor": (functx.jit(sgd_step), torch.tensor),
        "eager (functx transforms, no jit)": (sgd_step, lambda lr: lr),
    }
    if compile_torch:
        variants["torch.compile(dynamic=None), torch.func"] = (torch.compile(_torch_sgd_step), lambda lr: lr)
    functx.jit(sgd_step)(params0, x, y, 0.1)       # warm-up: one-time imports and code caches
    rows = {}
    for name, (fn, as_lr) in variants.items():
        params = params0
        t0 = time.perf_counter()
        for lr in lrs:
            value, params = fn(params, x, y, as_lr(lr))
        sync()
        traces = fn.trace_count if isinstance(fn, functx.compile.JitFunction) else None
        rows[name] = (traces, time.perf_counter() - t0, float(value))
    return rows


def _torch_sgd_step(params, x, y, lr):
    def loss(params):
        h = torch.tanh(x @ params[0] + params[1])
        return F.mse_loss(h @ params[2] + params[3], y)
    grads, value = torch.func.grad_and_value(loss)(params)
    return value, [p - lr * g for p, g in zip(params, grads)]


def _transformer_loss(d_model):
    """A seeded TransformerEncoderLayer's parameters and loss(params, x)."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=64, dropout=0.0,
                                             batch_first=True)
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def loss(params, x):
        return torch.func.functional_call(layer, params, (x,)).pow(2).mean()
    return params, loss


def transformer_lengths(n_lengths=20, batch=4, d_model=32, repeat=2, cache_limit=32, variant="symbolic"):
    """Stats of value_and_grad of a TransformerEncoderLayer over n_lengths sequence lengths.
    variant: "symbolic" (functx.jit's default: a dim seen with two sizes becomes symbolic),
    "static" (functx.jit(dynamic=False): a trace per length), "torch.compile" (dynamic=None)."""
    params, loss = _transformer_loss(d_model)
    lengths = [8 + k for k in range(n_lengths)]
    eager = torch.func.grad_and_value(loss)
    builds = None
    if variant == "torch.compile":
        dynamo = importlib.import_module("torch._dynamo")
        dynamo.reset()
        dynamo.config.cache_size_limit = cache_limit
        compiled = torch.compile(eager, dynamic=None)
        step = lambda p, x: compiled(p, x)[::-1]        # noqa: E731
    elif variant in ("cpu", "cpu-static"):
        builds = _count_cpu_builds()
        step = functx.jit(functx.value_and_grad(loss), cache_limit=cache_limit, backend="cpu",
                          dynamic=False if variant == "cpu-static" else None)
    else:
        step = functx.jit(functx.value_and_grad(loss), cache_limit=cache_limit,
                          dynamic=False if variant == "static" else None)
        functx.jit(functx.value_and_grad(loss))(params, torch.randn(batch, 5, d_model))   # warm-up
    new_times, cached_times, eager_times = [], [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in lengths:
            x = torch.randn(batch, n, d_model)
            t0 = time.perf_counter()
            value, grads = step(params, x)
            new_times.append(time.perf_counter() - t0)
            for _ in range(repeat - 1):
                t0 = time.perf_counter()
                step(params, x)
                cached_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ref_grads, ref_value = eager(params, x)
            eager_times.append(time.perf_counter() - t0)
            torch.testing.assert_close(value, ref_value, rtol=1e-4, atol=1e-5)
    median = lambda xs: sorted(xs)[len(xs) // 2] if xs else float("nan")  # noqa: E731
    out = {"variant": variant, "lengths": n_lengths, "new_length_ms": 1e3 * median(new_times),
           "cached_ms": 1e3 * median(cached_times), "eager_ms": 1e3 * median(eager_times),
           "total_s": sum(new_times) + sum(cached_times), "warned": [], "last_retrace": ""}
    if variant == "torch.compile":
        from torch._dynamo.utils import counters
        out.update(traces=counters["stats"]["unique_graphs"], entries="-", evictions="-")
        return out
    info = step.cache_info()
    if builds is not None:
        out["builds"] = len(builds)
    out.update(traces=info.traces, entries=info.size, evictions=info.evictions,
               warned=[str(w.message) for w in caught
                       if "cache limit" in str(w.message) or "changed size" in str(w.message)][:2],
               last_retrace=str(info.retraces[-1]) if info.retraces else "")
    return out


def _count_cpu_builds():
    """The CPU backend from here on: a fresh kernel cache, fused tiers built before the first
    call; returns the list its g++ runs are appended to."""
    import tempfile
    from functx.compile.cpu import toolchain
    os.environ["FUNCTX_CACHE_DIR"] = tempfile.mkdtemp(prefix="functx_bench_")
    os.environ["FUNCTX_CPU_BLOCK"] = "1"
    builds = []
    real = getattr(toolchain._compile, "real", toolchain._compile)

    def counted(*args):
        builds.append(args[2])
        return real(*args)
    counted.real = real
    toolchain._compile = counted
    return builds


def cached_ratio(lengths=(20, 27), pairs=40, batch=4, d_model=32):
    """Cached-call time of the symbolic entry vs the fully static graph, interleaved call by
    call (so both see the same machine load): {length: (symbolic min, median, static min, median)}."""
    params, loss = _transformer_loss(d_model)
    sym = functx.jit(functx.value_and_grad(loss))
    sta = functx.jit(functx.value_and_grad(loss), dynamic=False)
    for n in (8, 9):                      # two lengths: the sequence dim is symbolic from here
        sym(params, torch.randn(batch, n, d_model))
    out = {}
    for n in lengths:
        x = torch.randn(batch, n, d_model)
        sym(params, x), sta(params, x)
        ts, tt = [], []
        for _ in range(pairs):
            t0 = time.perf_counter()
            sym(params, x)
            t1 = time.perf_counter()
            sta(params, x)
            t2 = time.perf_counter()
            ts.append(t1 - t0)
            tt.append(t2 - t1)
        ts.sort(), tt.sort()
        out[n] = (1e3 * ts[0], 1e3 * ts[pairs // 2], 1e3 * tt[0], 1e3 * tt[pairs // 2])
    return out, sym.trace_count


def transformer_lengths_jax(n_lengths=20, batch=4, d_model=32, repeat=2):
    """The same layer written in JAX (post-norm encoder layer, relu FFN), jax.jit(value_and_grad):
    jax.jit traces once per shape. None when JAX is not installed."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    heads, ff = 4, 64
    key = jax.random.PRNGKey(0)
    ks = jax.random.split(key, 4)
    params = {"w_in": jax.random.normal(ks[0], (3 * d_model, d_model)) * 0.1, "b_in": jnp.zeros(3 * d_model),
              "w_out": jax.random.normal(ks[1], (d_model, d_model)) * 0.1, "b_out": jnp.zeros(d_model),
              "w1": jax.random.normal(ks[2], (ff, d_model)) * 0.1, "b1": jnp.zeros(ff),
              "w2": jax.random.normal(ks[3], (d_model, ff)) * 0.1, "b2": jnp.zeros(d_model),
              "g1": jnp.ones(d_model), "n1": jnp.zeros(d_model), "g2": jnp.ones(d_model), "n2": jnp.zeros(d_model)}

    def norm(x, g, b):
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) / jnp.sqrt(v + 1e-5) * g + b

    def loss(p, x):
        B, L, D = x.shape
        qkv = x @ p["w_in"].T + p["b_in"]
        q, k, v = jnp.split(qkv, 3, -1)
        split = lambda t: t.reshape(B, L, heads, D // heads).transpose(0, 2, 1, 3)   # noqa: E731
        a = jax.nn.softmax(split(q) @ split(k).transpose(0, 1, 3, 2) / jnp.sqrt(D // heads), -1) @ split(v)
        h = norm(x + a.transpose(0, 2, 1, 3).reshape(B, L, D) @ p["w_out"].T + p["b_out"], p["g1"], p["n1"])
        h = norm(h + jax.nn.relu(h @ p["w1"].T + p["b1"]) @ p["w2"].T + p["b2"], p["g2"], p["n2"])
        return (h ** 2).mean()
    traces = [0]

    def counted(p, x):
        traces[0] += 1
        return jax.value_and_grad(loss)(p, x)
    step = jax.jit(counted)
    jax.block_until_ready(jax.jit(jax.value_and_grad(loss))(params, jnp.ones((batch, 5, d_model))))
    new_times, cached_times = [], []
    for n in [8 + k for k in range(n_lengths)]:
        x = jnp.asarray(torch.randn(batch, n, d_model).numpy())
        t0 = time.perf_counter()
        jax.block_until_ready(step(params, x))
        new_times.append(time.perf_counter() - t0)
        for _ in range(repeat - 1):
            t0 = time.perf_counter()
            jax.block_until_ready(step(params, x))
            cached_times.append(time.perf_counter() - t0)
    median = lambda xs: sorted(xs)[len(xs) // 2] if xs else float("nan")  # noqa: E731
    return {"variant": "jax.jit (same layer in JAX)", "lengths": n_lengths, "traces": traces[0], "entries": "-",
            "evictions": "-", "new_length_ms": 1e3 * median(new_times), "cached_ms": 1e3 * median(cached_times),
            "eager_ms": float("nan"), "total_s": sum(new_times) + sum(cached_times), "warned": [],
            "last_retrace": ""}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short smoke run")
    ap.add_argument("--lengths", type=int, action="append", help="numbers of sequence lengths (default 20, 300)")
    ap.add_argument("--torch-compile", action="store_true", help="add torch.compile(dynamic=None) to the schedule")
    ap.add_argument("--jax", action="store_true", help="add jax.jit of the same layer written in JAX")
    ap.add_argument("--variants", nargs="+", choices=["symbolic", "static", "torch.compile", "cpu", "cpu-static"],
                    help="Transformer rows to run (default: symbolic static [torch.compile])")
    ap.add_argument("--skip-schedule", action="store_true", help="only the Transformer table")
    ap.add_argument("--cached-ratio", action="store_true",
                    help="only: symbolic vs static cached calls, interleaved (lengths 20, 27)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, cpu count={os.cpu_count()}")
    steps = 5 if a.quick else 50
    if a.cached_ratio:
        rows, traces = cached_ratio()
        print(f"\ncached call, symbolic entry vs fully static graph, interleaved ({traces} symbolic-side traces)")
        print(f"{'length':>6} {'symbolic min/median':>20} {'static min/median':>20} {'ratio (min)':>11}")
        for n, (smin, smed, tmin, tmed) in rows.items():
            print(f"{n:>6} {smin:>9.2f}/{smed:.2f} ms {tmin:>9.2f}/{tmed:.2f} ms {smin / tmin:>10.2f}x")
        return
    if not a.skip_schedule:
        schedule(steps, a.torch_compile)
    transformer_table(a)


def schedule(steps, torch_compile):
    print(f"\n1. learning-rate schedule: {steps} SGD steps, lr = 0.1 * 0.95**step (MLP 64x32-64-10)")
    print(f"{'variant':<44} {'traces':>6} {'total':>9} {'final loss':>11}")
    for name, (traces, secs, loss) in lr_schedule(steps, torch_compile).items():
        print(f"{name:<44} {'-' if traces is None else traces:>6} {secs:>8.3f}s {loss:>11.5f}")


def transformer_table(a):
    print("\n2. TransformerEncoderLayer value_and_grad, batch 4, d_model 32, each length called twice")
    print(f"{'variant':<30} {'lengths':>7} {'traces':>6} {'entries':>7} {'evicted':>7} {'new length':>10} "
          f"{'cached':>8} {'eager':>8} {'total':>8} {'builds':>6}")
    variants = a.variants or (["symbolic", "static"] + (["torch.compile"] if a.torch_compile else []))
    for n in a.lengths or ([3] if a.quick else [20, 300]):
        rows = [transformer_lengths(n, variant=v) for v in variants]
        if a.jax:
            rows.append(transformer_lengths_jax(n))
        for r in rows:
            if r is None:
                continue
            name = {"symbolic": "functx.jit (symbolic dims)", "static": "functx.jit(dynamic=False)",
                    "torch.compile": "torch.compile(dynamic=None)", "cpu": "functx.jit cpu (symbolic dims)",
                    "cpu-static": "functx.jit cpu, dynamic=False"}.get(r["variant"], r["variant"])
            print(f"{name:<30} {r['lengths']:>7} {r['traces']:>6} {r['entries']:>7} {r['evictions']:>7} "
                  f"{r['new_length_ms']:>8.1f}ms {r['cached_ms']:>6.2f}ms {r['eager_ms']:>6.1f}ms "
                  f"{r['total_s']:>7.2f}s {r.get('builds', '-'):>6}", flush=True)
            for w in r["warned"]:
                print(f"        warning: {w[:160]}...", flush=True)


if __name__ == "__main__":
    main()
