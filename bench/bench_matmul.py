"""functx's matmul template and CUDA graphs against cuBLAS, torch.compile and jax.jit.

    python bench/bench_matmul.py                  # GPU: full sizes (~3-4 min on an H100/H200)
    python bench/bench_matmul.py --quick          # GPU: smaller sizes
    python bench/bench_matmul.py --cpu            # CPU, Triton interpreter, tiny sizes: checks
                                                  # every variant runs and agrees (times meaningless)
    python bench/bench_matmul.py --budget 200     # skip torch.compile once 200 s are spent

Two tables, everything measured side by side in this one process:
1. matmul + epilogue (`gelu(x @ w + b)` and friends, on the shapes the scheduler chooses the
   template for): functx with the template, functx with it off (cuBLAS + a fused epilogue
   kernel), torch.matmul alone (the cuBLAS floor), torch eager, torch.compile.
2. per-sample gradients of an MLP, a denoising-score-matching training step and a
   Transformer block's vmap(grad): functx with and without CUDA graphs, with the template
   off, torch.func eager, torch.compile (mode=--compile-mode, default max-autotune) and
   jax.jit when JAX has a GPU. Ratios are other / functx (> 1: functx is faster).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import traceback

if "--cpu" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")      # before triton is imported

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import functx  # noqa: E402
from _timing import cuda_time, jax_time  # noqa: E402
from functx.kernels import matmul as mm_template  # noqa: E402
from functx.tree_util import tree_leaves, tree_map  # noqa: E402


# ---------------------------------------------------------------- timing

def cpu_time(fn, *args, warmup=1, reps=3):
    for _ in range(warmup):
        fn(*args)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(*args)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def max_err(a, b):
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(tree_leaves(a), tree_leaves(b)))


# ---------------------------------------------------------------- table 1: matmul + epilogue

def matmul_cases(quick, device):
    if device == "cpu":
        return [("gelu(x@w+b) f32 37x45x29", (37, 45, 29), torch.float32, False),
                ("bmm 8x[12x16x10] f32", (12, 16, 10), torch.float32, 8)]
    s = 2 if quick else 1
    return [
        ("gelu(x@w+b) f16 4096^3", (4096 // s, 4096 // s, 4096 // s), torch.float16, False),
        ("gelu(x@w+b) bf16 8192x1024x4096", (8192 // s, 1024, 4096 // s), torch.bfloat16, False),
        ("gelu(x@w+b) f32/tf32 2048x1024x1024", (2048, 1024, 1024), torch.float32, False),
        ("tanh(x@w+b) f16 256x512x512", (256, 512, 512), torch.float16, False),
        ("bmm 4096x[32x32x32] f16", (32, 32, 32), torch.float16, 4096 // s),
        ("outer prods 1024x[256x1x256] f32", (256, 1, 256), torch.float32, 1024 // s),
    ]


def matmul_row(name, shape, dtype, batch, device, timer):
    m, k, n = shape
    if batch:
        x, w = torch.randn(batch, m, k, device=device, dtype=dtype), torch.randn(batch, k, n, device=device, dtype=dtype)
        b = torch.randn(n, device=device, dtype=dtype)
        f = lambda x, w, b: x @ w      # noqa: E731   (a batch of small matmuls: no epilogue needed)
        floor = lambda x, w, b: x @ w  # noqa: E731
    else:
        x, w = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype) / k ** 0.5
        b = torch.randn(n, device=device, dtype=dtype)
        act = torch.tanh if name.startswith("tanh") else F.gelu
        f = lambda x, w, b: act(x @ w + b)      # noqa: E731
        floor = lambda x, w, b: x @ w          # noqa: E731
    args = (x, w, b)
    row = {}
    ex = functx.explain(f, backend="triton")(*args)
    row["chosen"] = "template" if any(g.kind == "template" for g in ex.groups) else "cuBLAS"
    fx = functx.jit(f, backend="triton", cuda_graphs=False)
    row["max err"] = max_err(fx(*args), f(*args))
    row["functx template"] = timer(fx, *args)
    mm_template.CONFIG.enabled = False
    try:
        off = functx.jit(f, backend="triton", cuda_graphs=False)
        off(*args)
        row["functx cuBLAS+epi"] = timer(off, *args)
    finally:
        mm_template.CONFIG.enabled = True
    row["torch.matmul only"] = timer(floor, *args)
    row["torch eager"] = timer(f, *args)
    if device == "cuda":
        flops = 2 * (batch or 1) * m * n * k
        row["template TFLOP/s"] = flops / (row["functx template"] * 1e-3) / 1e12
    return row


# ---------------------------------------------------------------- table 2: transformed steps

def mlp_params(sizes, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [((torch.randn(i, o, generator=g) / i ** 0.5).to(device, dtype), (torch.randn(o, generator=g) * 0.1).to(device, dtype))
            for i, o in zip(sizes[:-1], sizes[1:])]


def w_per_sample_grads(batch, sizes, device):
    """vmap(grad) of a classifier MLP's cross-entropy: five batched mat-vecs per example."""
    params = mlp_params(sizes, device)
    x = torch.randn(batch, sizes[0], device=device)
    y = torch.randint(0, sizes[-1], (batch,), device=device)

    def loss(params, x, y):
        h = x
        for i, (w, b) in enumerate(params):
            h = h @ w + b
            if i < len(params) - 1:
                h = torch.tanh(h)
        return F.cross_entropy(h[None], y[None])

    def jax_fn(jax, jnp):
        def jloss(params, x, y):
            h = x
            for i, (w, b) in enumerate(params):
                h = h @ w + b
                if i < len(params) - 1:
                    h = jnp.tanh(h)
            return -jax.nn.log_softmax(h)[y]
        return jax.vmap(jax.grad(jloss), in_axes=(None, 0, 0))
    return dict(functx=functx.vmap(functx.grad(loss), in_axes=(None, 0, 0)),
                torch=torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0)),
                jax=jax_fn, args=(params, x, y))


def w_dsm_step(batch, d, hidden, device):
    """A denoising-score-matching step: value_and_grad of the loss of a SiLU score MLP
    (noise drawn outside, so the step is a pure function)."""
    params = mlp_params([d + 1, hidden, hidden, d], device)
    x = torch.randn(batch, d, device=device)
    eps = torch.randn(batch, d, device=device)
    sigma = torch.rand(batch, 1, device=device) + 0.05

    def loss(params, x, eps, sigma):
        h = torch.cat([x + sigma * eps, sigma.log()], -1)
        for i, (w, b) in enumerate(params):
            h = h @ w + b
            if i < len(params) - 1:
                h = F.silu(h)
        return ((h * sigma + eps) ** 2).sum(-1).mean()

    def jax_fn(jax, jnp):
        def jloss(params, x, eps, sigma):
            h = jnp.concatenate([x + sigma * eps, jnp.log(sigma)], -1)
            for i, (w, b) in enumerate(params):
                h = h @ w + b
                if i < len(params) - 1:
                    h = jax.nn.silu(h)
            return ((h * sigma + eps) ** 2).sum(-1).mean()
        return jax.value_and_grad(jloss)
    return dict(functx=functx.value_and_grad(loss), torch=torch.func.grad_and_value(loss),
                jax=jax_fn, args=(params, x, eps, sigma), swap_torch=True)


def w_transformer_vmap_grad(batch, seq, dim, heads, device):
    """Per-example gradients of a pre-LN Transformer block (attention written out as
    softmax(QK^T/sqrt(d))V, GELU MLP) under vmap(grad)."""
    g = torch.Generator().manual_seed(0)

    def p(*shape):
        return (torch.randn(*shape, generator=g) / shape[0] ** 0.5).to(device)
    params = dict(wq=p(dim, dim), wk=p(dim, dim), wv=p(dim, dim), wo=p(dim, dim),
                  w1=p(dim, 4 * dim), b1=torch.zeros(4 * dim, device=device), w2=p(4 * dim, dim),
                  b2=torch.zeros(dim, device=device))
    x = torch.randn(batch, seq, dim, device=device)
    y = torch.randn(batch, seq, dim, device=device)
    dh = dim // heads

    def block(P, x):
        h = F.layer_norm(x, (dim,))
        q, k, v = [(h @ P[n]).reshape(seq, heads, dh).transpose(0, 1) for n in ("wq", "wk", "wv")]
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), -1)
        x = x + (a @ v).transpose(0, 1).reshape(seq, dim) @ P["wo"]
        return x + F.gelu(F.layer_norm(x, (dim,)) @ P["w1"] + P["b1"]) @ P["w2"] + P["b2"]

    def loss(P, x, y):
        return ((block(P, x) - y) ** 2).mean()

    def jax_fn(jax, jnp):
        def ln(x):
            mu = x.mean(-1, keepdims=True)
            return (x - mu) / jnp.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5)

        def jloss(P, x, y):
            h = ln(x)
            q, k, v = [(h @ P[n]).reshape(seq, heads, dh).transpose(1, 0, 2) for n in ("wq", "wk", "wv")]
            a = jax.nn.softmax(q @ k.transpose(0, 2, 1) / math.sqrt(dh), -1)
            x2 = x + (a @ v).transpose(1, 0, 2).reshape(seq, dim) @ P["wo"]
            out = x2 + jax.nn.gelu(ln(x2) @ P["w1"] + P["b1"], approximate=False) @ P["w2"] + P["b2"]
            return ((out - y) ** 2).mean()
        return jax.vmap(jax.grad(jloss), in_axes=(None, 0, 0))
    return dict(functx=functx.vmap(functx.grad(loss), in_axes=(None, 0, 0)),
                torch=torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0)),
                jax=jax_fn, args=(params, x, y))


def step_workloads(quick, device):
    if device == "cpu":
        return {"per_sample_grads_mlp": lambda: w_per_sample_grads(6, [8, 16, 16, 4], device),
                "dsm_step": lambda: w_dsm_step(6, 3, 16, device),
                "transformer_vmap_grad": lambda: w_transformer_vmap_grad(2, 4, 8, 2, device)}
    s = 4 if quick else 1
    return {"per_sample_grads_mlp": lambda: w_per_sample_grads(1024 // s, [784, 256, 256, 10], device),
            "dsm_step": lambda: w_dsm_step(4096 // s, 2, 256, device),
            "transformer_vmap_grad": lambda: w_transformer_vmap_grad(64 // s, 64, 128, 4, device)}


def try_jax(device):
    try:
        import jax
        import jax.numpy as jnp
        if device == "cuda" and not any(d.platform == "gpu" for d in jax.devices()):
            return None, "JAX has no GPU backend here"
        return (jax, jnp), None
    except Exception as e:        # not installed, or no CUDA plugin
        return None, f"JAX not usable: {type(e).__name__}: {str(e)[:80]}"


def to_jax(jax, t):
    import numpy as np
    return jax.device_put(np.asarray(t.detach().cpu()))


def step_row(spec, device, timer, jax_mods, compile_mode, budget_left):
    args = spec["args"]
    ref = spec["torch"](*args)
    if spec.get("swap_torch"):          # torch.func.grad_and_value returns (grad, value)
        ref = (ref[1], ref[0])
    row = {}
    variants = [("functx graphs", dict()), ("functx no graphs", dict(cuda_graphs=False))]
    for name, opts in variants:
        t0 = time.perf_counter()
        fx = functx.jit(spec["functx"], backend="triton", **opts)
        out = fx(*args)
        if device == "cuda":
            torch.cuda.synchronize()
        row[f"{name} compile s"] = time.perf_counter() - t0
        row.setdefault("max err", max_err(out, ref))
        row[name] = timer(fx, *args)
        if name == "functx graphs" and device == "cuda":
            entry = next(iter(fx._cache.entries.values()))
            runner = getattr(entry.compiled, "_graph_runner", None)
            row["graph"] = "captured" if runner is not None and runner.graph is not None else \
                (getattr(entry.compiled, "_graph_reason", None) or (runner.status if runner else "?"))[:40]
    mm_template.CONFIG.enabled = False
    try:
        off = functx.jit(spec["functx"], backend="triton", cuda_graphs=False)
        off(*args)
        row["functx no template"] = timer(off, *args)
    finally:
        mm_template.CONFIG.enabled = True
    row["torch.func eager"] = timer(spec["torch"], *args)
    if device == "cuda":
        if budget_left() > 60:
            try:
                t0 = time.perf_counter()
                tc = torch.compile(spec["torch"], mode=compile_mode)
                tc(*args)
                torch.cuda.synchronize()
                row["torch.compile s"] = time.perf_counter() - t0
                row["torch.compile"] = timer(tc, *args)
            except Exception as e:
                row["torch.compile"] = f"failed: {type(e).__name__}"
        else:
            row["torch.compile"] = "skipped (budget)"
    if jax_mods is not None:
        jax, jnp = jax_mods
        try:
            jf = jax.jit(spec["jax"](jax, jnp))
            jargs = tree_map(lambda t: to_jax(jax, t), args)
            if device == "cpu":
                jax.block_until_ready(jf(*jargs))
                row["jax.jit"] = cpu_time(lambda *a: jax.block_until_ready(jf(*a)), *jargs)
            else:
                row["jax.jit"] = jax_time(jax, jf, jargs, reps=25, min_s=0.15)
        except Exception as e:
            row["jax.jit"] = f"failed: {type(e).__name__}"
    return row


# ---------------------------------------------------------------- output

def print_table(title, rows, cols, base, extra=()):
    print(f"\n== {title} (ms per call, median; (ratio) = other / {base}, > 1: functx faster) ==")
    head = f"{'workload':36s}" + "".join(f"{c:>20s}" for c in cols) + "".join(f"{c:>18s}" for c in extra)
    print(head)
    for name, row in rows.items():
        b = row.get(base)
        cells = []
        for c in cols:
            v = row.get(c, "-")
            if isinstance(v, float) and isinstance(b, float) and c != base:
                cells.append(f"{v:8.3f} ({v / b:4.2f}x)")
            elif isinstance(v, float):
                cells.append(f"{v:8.3f}")
            else:
                cells.append(str(v)[:19])
        ex = [f"{row[c]:.3g}" if isinstance(row.get(c), float) else str(row.get(c, "-"))[:15] for c in extra]
        print(f"{name:36s}" + "".join(f"{c:>20s}" for c in cells) + "".join(f"{c:>18s}" for c in ex))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cpu", action="store_true", help="CPU + Triton interpreter, tiny sizes (a check, not a benchmark)")
    ap.add_argument("--no-jax", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated: matmul, per_sample_grads_mlp, dsm_step, ...")
    ap.add_argument("--compile-mode", default="max-autotune")
    ap.add_argument("--budget", type=float, default=1e9, help="seconds; torch.compile is skipped once spent")
    args = ap.parse_args()
    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("bench_matmul: no CUDA device (use --cpu for the interpreter check)")
        return 0
    t_start = time.perf_counter()
    budget_left = lambda: args.budget - (time.perf_counter() - t_start)      # noqa: E731
    timer = cuda_time if device == "cuda" else cpu_time
    only = set(filter(None, args.only.split(",")))
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu (Triton interpreter)'}  "
          f"torch {torch.__version__}  allow_tf32={torch.backends.cuda.matmul.allow_tf32}")
    status = 0
    if not only or "matmul" in only:
        rows = {}
        for name, shape, dtype, batch in matmul_cases(args.quick, device):
            try:
                rows[name] = matmul_row(name, shape, dtype, batch, device, timer)
            except Exception:
                print(f"!! {name} failed:")
                traceback.print_exc()
                status = 1
        print_table("matmul + epilogue: template vs cuBLAS", rows,
                    ["functx template", "functx cuBLAS+epi", "torch.matmul only", "torch eager"],
                    "functx template", extra=("chosen", "template TFLOP/s", "max err"))
    jax_mods, why = (None, "--no-jax") if args.no_jax else try_jax(device)
    print("\njax: " + ("available" if jax_mods else why))
    rows = {}
    for name, make in step_workloads(args.quick, device).items():
        if only and name not in only:
            continue
        try:
            rows[name] = step_row(make(), device, timer, jax_mods, args.compile_mode, budget_left)
        except Exception:
            print(f"!! {name} failed:")
            traceback.print_exc()
            status = 1
        if device == "cuda":
            torch.cuda.empty_cache()
    cols = ["functx graphs", "functx no graphs", "functx no template", "torch.func eager", "torch.compile", "jax.jit"]
    print_table(f"transformed steps (torch.compile mode={args.compile_mode})", rows, cols, "functx graphs",
                extra=("graph", "max err"))
    print("\ncompile seconds: " + "; ".join(
        f"{n}: functx {r.get('functx graphs compile s', 0):.1f}, torch.compile {r.get('torch.compile s', 0):.1f}"
        for n, r in rows.items()))
    print(f"\nbench_matmul total: {time.perf_counter() - t_start:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
