"""functx's Triton backend against torch.func eager, torch.compile and JAX, on one GPU.

    python bench/bench_triton.py            # full run (~3-5 min on an H100, compile included)
    python bench/bench_triton.py --quick    # smaller sizes, fewer workloads
    python bench/bench_triton.py --only softmax,layer_norm

Every workload is the same function written once with torch (transformed by functx or by
torch.func) and, when JAX is importable with a GPU, once with jax.numpy. Times are medians
of CUDA-event-timed runs measured in this one process; ratios are against functx triton
(> 1 means functx is faster). The bandwidth section reports the achieved memory
bandwidth of a big fused pointwise kernel against the device's nominal peak and against
a measured device-to-device copy.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import functx  # noqa: E402
from _timing import cuda_time, jax_time  # noqa: E402

# Nominal HBM bandwidth (bytes/s) by device-name fragment; checked in order.
PEAK_BW = [("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100 NVL", 3.9e12), ("H100", 3.35e12),
           ("A100-SXM4-80GB", 2.04e12), ("A100", 1.55e12), ("L40S", 0.864e12), ("A10G", 0.6e12),
           ("RTX 4090", 1.01e12), ("V100", 0.9e12)]


def peak_bandwidth():
    name = torch.cuda.get_device_name()
    for frag, bw in PEAK_BW:
        if frag in name:
            return bw
    return None


# ---------------------------------------------------------------- workloads

def w_pointwise(n):
    def f(x, y):
        return torch.sigmoid(x) * y + torch.tanh(x) * 0.5
    x = torch.randn(n, device="cuda")
    y = torch.randn(n, device="cuda")

    def jf(jnp, jax):
        return lambda x, y: jax.nn.sigmoid(x) * y + jnp.tanh(x) * 0.5
    return dict(functx=f, torch=f, args=(x, y), jax=jf, bytes=3 * n * 4)


def w_softmax(rows, cols, dtype):
    def f(x):
        return torch.softmax(x, -1)
    x = torch.randn(rows, cols, device="cuda", dtype=dtype)

    def jf(jnp, jax):
        return lambda x: jax.nn.softmax(x, axis=-1)
    return dict(functx=f, torch=f, args=(x,), jax=jf, bytes=2 * x.numel() * x.element_size())


def w_layer_norm(rows, cols, dtype):
    w = torch.randn(cols, device="cuda", dtype=dtype)
    b = torch.randn(cols, device="cuda", dtype=dtype)

    def f(x, w, b):
        return F.layer_norm(x, (cols,), w, b)
    x = torch.randn(rows, cols, device="cuda", dtype=dtype)

    def jf(jnp, jax):
        def g(x, w, b):
            xf = x.astype(jnp.float32)
            mu = xf.mean(-1, keepdims=True)
            var = ((xf - mu) ** 2).mean(-1, keepdims=True)
            return ((xf - mu) * jax.lax.rsqrt(var + 1e-5) * w + b).astype(x.dtype)
        return g
    return dict(functx=f, torch=f, args=(x, w, b), jax=jf, bytes=2 * x.numel() * x.element_size())


def w_vmap_grad(batch, n):
    """Per-example gradient of an elementwise function summed: one fused kernel in functx."""
    def f(x):
        return (torch.sin(x) * torch.exp(-x * x) + x * torch.tanh(x)).sum()
    x = torch.randn(batch, n, device="cuda")

    def jf(jnp, jax):
        def g(x):
            return (jnp.sin(x) * jnp.exp(-x * x) + x * jnp.tanh(x)).sum()
        return jax.vmap(jax.grad(g))
    return dict(functx=functx.vmap(functx.grad(f)), torch=torch.func.vmap(torch.func.grad(f)),
                args=(x,), jax=jf, bytes=2 * x.numel() * 4)


def w_per_sample_grads(batch, d, h):
    """vmap(grad(loss)) of a 2-layer MLP: matmuls are externs, the rest fuses."""
    w1 = torch.randn(d, h, device="cuda") / d ** 0.5
    w2 = torch.randn(h, 1, device="cuda") / h ** 0.5
    x = torch.randn(batch, d, device="cuda")
    y = torch.randn(batch, 1, device="cuda")

    def loss(params, x, y):
        w1, w2 = params
        hdn = torch.tanh(x @ w1)
        return ((hdn @ w2 - y) ** 2).mean()

    def jf(jnp, jax):
        def jloss(params, x, y):
            w1, w2 = params
            return ((jnp.tanh(x @ w1) @ w2 - y) ** 2).mean()
        return lambda w1, w2, x, y: jax.vmap(jax.grad(jloss), in_axes=((None, None), 0, 0))((w1, w2), x, y)
    ft = functx.vmap(functx.grad(loss), in_axes=(None, 0, 0))
    tt = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))
    return dict(functx=lambda w1, w2, x, y: ft((w1, w2), x, y),
                torch=lambda w1, w2, x, y: tt((w1, w2), x, y),
                args=(w1, w2, x, y), jax=jf, bytes=None)


def workloads(quick):
    s = 4 if quick else 1
    return {
        "pointwise": lambda: w_pointwise((1 << 26) // s),
        "softmax_f32": lambda: w_softmax(8192 // s, 1024, torch.float32),
        "softmax_f16_4k": lambda: w_softmax(4096 // s, 4096, torch.float16),
        "layer_norm_bf16": lambda: w_layer_norm(16384 // s, 1024, torch.bfloat16),
        "vmap_grad_pointwise": lambda: w_vmap_grad(4096 // s, 2048),
        "per_sample_grads_mlp": lambda: w_per_sample_grads(1024 // s, 256, 256),
    }


# ---------------------------------------------------------------- runners

def try_jax():
    try:
        import jax
        import jax.numpy as jnp
        if not any(d.platform == "gpu" for d in jax.devices()):
            return None, "JAX has no GPU backend here"
        return (jax, jnp), None
    except Exception as e:     # not installed, or no CUDA plugin
        return None, f"JAX not usable: {type(e).__name__}: {str(e)[:80]}"


def to_jax(jax, t):
    import numpy as np
    if t.dtype == torch.bfloat16:
        import jax.numpy as jnp
        return jax.device_put(jnp.asarray(t.float().cpu().numpy()).astype(jnp.bfloat16))
    return jax.device_put(np.asarray(t.cpu()))


def bench_one(name, spec, jax_mods, results, check=True):
    row = {}
    args = spec["args"]
    fx = functx.jit(spec["functx"], backend="triton")
    t0 = time.perf_counter()
    out = fx(*args)
    torch.cuda.synchronize()
    row["functx compile s"] = time.perf_counter() - t0
    ref = spec["torch"](*args)
    if check:
        outs = out if isinstance(out, (tuple, list)) else [out]
        refs = ref if isinstance(ref, (tuple, list)) else [ref]
        err = max(float((a.float() - b.float()).abs().max()) for a, b in zip(outs, refs))
        row["max |functx - torch|"] = err
    row["functx triton"] = cuda_time(fx, *args)
    row["torch.func eager"] = cuda_time(spec["torch"], *args)
    try:
        tc = torch.compile(spec["torch"])
        t0 = time.perf_counter()
        tc(*args)
        torch.cuda.synchronize()
        row["torch.compile compile s"] = time.perf_counter() - t0
        row["torch.compile"] = cuda_time(tc, *args)
    except Exception as e:
        row["torch.compile"] = f"failed: {type(e).__name__}: {str(e)[:60]}"
    if jax_mods is not None:
        jax, jnp = jax_mods
        try:
            jf = jax.jit(spec["jax"](jnp, jax))
            jargs = [to_jax(jax, a) for a in args]
            row["jax.jit"] = jax_time(jax, jf, jargs)
        except Exception as e:
            row["jax.jit"] = f"failed: {type(e).__name__}: {str(e)[:60]}"
    if spec.get("bytes"):
        row["functx GB/s"] = spec["bytes"] / (row["functx triton"] * 1e-3) / 1e9
    results[name] = row


def bandwidth_section(quick):
    n = (1 << 28) // (4 if quick else 1)          # 1 GiB per fp32 tensor in the full run
    x = torch.randn(n, device="cuda")
    y = torch.empty_like(x)
    copy_ms = cuda_time(lambda: y.copy_(x), reps=10)
    copy_bw = 2 * n * 4 / (copy_ms * 1e-3)

    def f(x):
        return x * 2.0 + 1.0
    fx = functx.jit(f, backend="triton")
    fx(x)
    ms = cuda_time(fx, x, reps=10)
    bw = 2 * n * 4 / (ms * 1e-3)
    peak = peak_bandwidth()
    print(f"\n== bandwidth: fused pointwise y = x*2+1 over {n * 4 / 2**30:.2f} GiB fp32 ==")
    print(f"functx triton : {ms:8.3f} ms  {bw / 1e9:8.1f} GB/s")
    print(f"torch copy_   : {copy_ms:8.3f} ms  {copy_bw / 1e9:8.1f} GB/s")
    if peak:
        print(f"nominal peak  : {peak / 1e9:8.1f} GB/s  -> functx at {100 * bw / peak:.1f}% of peak "
              f"(target >= 80%), copy at {100 * copy_bw / peak:.1f}%")
    else:
        print("nominal peak  : unknown device; compare with the copy")
    print(f"functx / copy : {100 * bw / copy_bw:.1f}%")


def fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="")
    ap.add_argument("--no-jax", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_triton: no CUDA device; nothing to measure")
        return 0
    import triton
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
    jax_mods, why = (None, "--no-jax") if args.no_jax else try_jax()
    print("jax: " + ("available" if jax_mods else why))
    t_start = time.perf_counter()
    bandwidth_section(args.quick)
    results = {}
    only = set(filter(None, args.only.split(",")))
    for name, make in workloads(args.quick).items():
        if only and name not in only:
            continue
        try:
            bench_one(name, make(), jax_mods, results)
        except Exception:
            print(f"\n!! {name} failed:")
            traceback.print_exc()
        torch.cuda.empty_cache()
    print("\n== times (ms per call, median; ratio = other / functx, > 1 means functx is faster) ==")
    cols = ["functx triton", "torch.func eager", "torch.compile", "jax.jit"]
    print(f"{'workload':24s}" + "".join(f"{c:>18s}" for c in cols) + f"{'functx GB/s':>13s}{'max err':>10s}")
    for name, row in results.items():
        base = row.get("functx triton")
        cells = []
        for c in cols:
            v = row.get(c, "-")
            if isinstance(v, float) and isinstance(base, float):
                cells.append(f"{v:8.3f} ({v / base:4.2f}x)" if c != "functx triton" else f"{v:8.3f}")
            else:
                cells.append(str(v)[:17])
        gbs = row.get("functx GB/s")
        print(f"{name:24s}" + "".join(f"{c:>18s}" for c in cells) +
              f"{(f'{gbs:.0f}' if gbs else '-'):>13s}{fmt(row.get('max |functx - torch|', '-')):>10s}")
    print("\ncompile seconds: " + ", ".join(
        f"{n}: functx {r.get('functx compile s', 0):.1f} / torch.compile {r.get('torch.compile compile s', 0):.1f}"
        for n, r in results.items()))
    print(f"\nbench_triton total: {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
