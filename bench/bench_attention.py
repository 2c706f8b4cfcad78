"""Attention forward / jvp / backward: functx's fused kernels against torch and JAX.

    python bench/bench_attention.py            # on a GPU: B=4, H=16, L=1024/4096, D=64, fp16/bf16
    python bench/bench_attention.py --quick    # small sizes (on the CPU: checks the script runs)

Side by side in one process, per shape and dtype (medians of timed loops, ms per call):
- forward: torch SDPA (flash backend when it is available), functx.jit(SDPA) (the attention
  primitive: the Triton forward kernel on CUDA), JAX's dot_product_attention under jax.jit;
- jvp (forward mode, what sCM-style consistency training needs): functx.jit(functx.jvp(SDPA))
  (the one-pass jvp kernel), torch.func.jvp of math attention (SDPA has no forward-mode AD,
  pytorch/pytorch#128971; softmax(q k^T) v is the best torch.func can do), JAX's jvp;
- backward (value and vjp of q, k, v): torch SDPA + autograd, functx.jit(functx.vjp),
  JAX's vjp.
The ratio column is each row's time over functx's (> 1: functx faster). Rows that fail print
why. On the CPU functx's attention runs the PyTorch reference (the kernels need CUDA).
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import functx  # noqa: E402
from _timing import per_call  # noqa: E402

SDPA = F.scaled_dot_product_attention


def math_attention(q, k, v, causal):
    s = (q @ k.transpose(-2, -1)) * (1 / math.sqrt(q.shape[-1]))
    if causal:
        keep = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~keep, float("-inf"))
    return torch.softmax(s.float(), -1).to(v.dtype) @ v


def _flash(fn):
    """fn under torch's flash SDPA backend when CUDA has it, else as is."""
    if not torch.cuda.is_available():
        return fn
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run(*args):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            return fn(*args)
    return run


def _jax_cases(q, k, v, t, causal):
    try:
        import jax
        import jax.numpy as jnp
    except Exception:
        return {}
    if torch.cuda.is_available() and not any(d.platform == "gpu" for d in jax.devices()):
        return {}
    dtype = {torch.float16: jnp.float16, torch.bfloat16: jnp.bfloat16, torch.float32: jnp.float32}[q.dtype]

    def to_jax(x):      # (B, H, L, D) -> JAX's (B, L, H, D)
        return jnp.asarray(x.transpose(1, 2).float().cpu().numpy(), dtype=dtype)
    jq, jk, jv = to_jax(q), to_jax(k), to_jax(v)
    jt = tuple(to_jax(x) for x in t)

    def attn(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal)
    fwd = jax.jit(attn)
    jvp = jax.jit(lambda q, k, v, a, b, c: jax.jvp(attn, (q, k, v), (a, b, c)))
    bwd = jax.jit(lambda q, k, v, g: jax.vjp(attn, q, k, v)[1](g))

    def run(f, *a):
        return lambda: jax.block_until_ready(f(*a))
    return {"forward": ("jax.jit(dot_product_attention)", run(fwd, jq, jk, jv)),
            "jvp": ("jax.jit(jax.jvp(attention))", run(jvp, jq, jk, jv, *jt)),
            "backward": ("jax.jit(jax.vjp(attention))", run(bwd, jq, jk, jv, jq))}


def cases(b, h, length, d, dtype, device, causal):
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v, tq, tk, tv, gout = (torch.randn(b, h, length, d, device=device, dtype=dtype, generator=g)
                                 for _ in range(7))
    t = (tq, tk, tv)
    f = lambda q, k, v: SDPA(q, k, v, is_causal=causal)      # noqa: E731
    m = lambda q, k, v: math_attention(q, k, v, causal)      # noqa: E731
    fx_fwd = functx.jit(f)
    fx_jvp = functx.jit(lambda q, k, v, a, b, c: functx.jvp(f, (q, k, v), (a, b, c)))

    def fx_vjp_fn(q, k, v, g):
        out, pull = functx.vjp(f, q, k, v)
        return out, pull(g)
    fx_vjp = functx.jit(fx_vjp_fn)

    def torch_bwd():
        qq, kk, vv = (x.detach().requires_grad_() for x in (q, k, v))
        out = _flash(f)(qq, kk, vv)
        return torch.autograd.grad(out, (qq, kk, vv), gout)
    out = {
        "forward": [("functx.jit(SDPA)", lambda: fx_fwd(q, k, v)),
                    ("torch SDPA (flash)", lambda: _flash(f)(q, k, v))],
        "jvp": [("functx.jit(functx.jvp(SDPA))", lambda: fx_jvp(q, k, v, *t)),
                ("torch.func.jvp(math attention)", lambda: torch.func.jvp(m, (q, k, v), t))],
        "backward": [("functx.jit(functx.vjp(SDPA))", lambda: fx_vjp(q, k, v, gout)),
                     ("torch SDPA (flash) + autograd", torch_bwd)],
    }
    for kind, row in _jax_cases(q, k, v, t, causal).items():
        out[kind].append(row)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if cuda and not args.quick:
        shapes = [(4, 16, 1024, 64), (2, 16, 4096, 64)]
        dtypes = [torch.float16, torch.bfloat16]
    elif cuda:
        shapes, dtypes = [(4, 16, 1024, 64)], [torch.bfloat16]
    else:
        shapes, dtypes = [(2, 2, 64, 32)], [torch.float32]
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'} | torch {torch.__version__}")
    print(f"{'shape (B,H,L,D) dtype causal':38s} {'op':9s} {'implementation':34s} {'ms':>9s} {'ratio':>7s}")
    for shape in shapes:
        for dtype in dtypes:
            for causal in (False, True):
                rows = cases(*shape, dtype, device, causal)
                label = f"{shape} {str(dtype)[6:]} {'causal' if causal else 'full'}"
                for kind, impls in rows.items():
                    base = None
                    for name, fn in impls:
                        try:
                            ms = per_call(fn, repeat=5, min_time=0.05 if cuda else 0.02) * 1e3
                        except Exception as e:      # a missing backend or rule: say so, go on
                            print(f"{label:38s} {kind:9s} {name:34s} failed: {type(e).__name__}: {str(e)[:80]}")
                            continue
                        base = ms if base is None else base
                        print(f"{label:38s} {kind:9s} {name:34s} {ms:9.3f} {ms / base:7.2f}", flush=True)


if __name__ == "__main__":
    main()
