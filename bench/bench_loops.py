"""Loops at scale (issue 11): a scan of a small MLP update, its grad and its vmap, side by
side with a torch eager loop and torch.compile, in one process.

    python bench/bench_loops.py             # 10/100/1000/10000 steps
    python bench/bench_loops.py --quick     # 10/100 steps (smoke run)
    python bench/bench_loops.py --compile   # also torch.compile at 10 steps (slow: it unrolls)

The step: h <- h + 0.1 * tanh(h @ W1 + b1 + x_t) @ W2 for a batch of 16 states of width 32;
the loss is mean(h_n ** 2). For each length: functx.jit's first call (trace + compile + one
run; trace+cc is the first call minus the steady time) and steady per-call time, for the forward, grad (w.r.t. W1, b1, W2) and vmap (over 8 initial
states); the torch eager loop's steady time (loss.backward() for grad, torch.func.vmap for
vmap). Then the residual memory reverse mode stores for 1000 steps, by remat option: the
bytes held by the linearized graph between the forward and the backward pass.
JAX is not installed here, so jax.lax.scan is not measured.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import functx  # noqa: E402
from functx.frontend import unwrap, wrap  # noqa: E402
from functx.transforms.ad import linearize_flat  # noqa: E402
from _timing import first_call, fmt_time, interleaved, per_call  # noqa: E402

B, D, V = 16, 32, 8


def make(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = (torch.randn(D, D, generator=g) / D ** 0.5, torch.zeros(D), torch.randn(D, D, generator=g) / D ** 0.5)
    return params, torch.randn(B, D, generator=g), torch.randn(n, B, D, generator=g) * 0.1


def step(params):
    W1, b1, W2 = params

    def f(h, x):
        return h + 0.1 * torch.tanh(h @ W1 + b1 + x) @ W2, None
    return f


def loss_scan(params, h0, xs, remat=False):
    h, _ = functx.scan(step(params), h0, xs, remat=remat)
    return (h ** 2).mean()


def loss_loop(params, h0, xs):
    h, f = h0, step(params)
    for x in xs:
        h, _ = f(h, x)
    return (h ** 2).mean()


def torch_grad(params, h0, xs):
    ps = [p.detach().requires_grad_() for p in params]
    return torch.autograd.grad(loss_loop(ps, h0, xs), ps)


def check(n=20):
    """functx's forward, grad and vmap against the torch loop (the smoke test's oracle)."""
    params, h0, xs = make(n)
    torch.testing.assert_close(functx.jit(loss_scan)(params, h0, xs), loss_loop(params, h0, xs))
    for a, b in zip(functx.jit(functx.grad(loss_scan))(params, h0, xs), torch_grad(params, h0, xs)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    h0s = torch.randn(V, B, D)
    got = functx.jit(functx.vmap(loss_scan, in_axes=(None, 0, None)))(params, h0s, xs)
    torch.testing.assert_close(got, torch.func.vmap(loss_loop, in_dims=(None, 0, None))(params, h0s, xs))
    return True


def residual_bytes(n, remat):
    """Bytes of the residuals reverse mode keeps between the forward and backward pass."""
    params, h0, xs = make(n)
    _, graph, _ = linearize_flat(lambda a: [unwrap(loss_scan(tuple(wrap(p) for p in a[:3]), a[3], xs, remat))],
                                 list(params) + [h0])
    return sum(c.numel() * c.element_size() for c in graph.consts)


def run(lengths, with_compile):
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; JAX not installed (not measured)")
    head = (f"{'steps':>6} {'what':>8} | {'functx 1st':>10} {'trace+cc':>9} {'functx':>9} | {'eager loop':>10} "
            f"{'ratio':>6}")
    if with_compile:
        head += f" | {'compile 1st':>11} {'compiled':>9}"
    print(head)
    for n in lengths:
        params, h0, xs = make(n)
        h0s = torch.randn(V, B, D)
        cases = {
            "forward": (functx.jit(loss_scan), (params, h0, xs), loss_loop, (params, h0, xs)),
            "grad": (functx.jit(functx.grad(loss_scan)), (params, h0, xs), torch_grad, (params, h0, xs)),
            "vmap": (functx.jit(functx.vmap(loss_scan, in_axes=(None, 0, None))), (params, h0s, xs),
                     torch.func.vmap(loss_loop, in_dims=(None, 0, None)), (params, h0s, xs)),
        }
        for what, (fx, fargs, ref, rargs) in cases.items():
            first, _ = first_call(fx, *fargs)
            repeat = 3 if n >= 1000 else 7
            # interleaved rounds: machine noise hits both alike
            t = interleaved({"fx": fx, "ref": ref}, {"fx": fargs, "ref": rargs}, repeat=repeat,
                            min_time=0.2 if n < 10000 else 1.0)
            t_fx, t_ref = t["fx"], t["ref"]
            line = (f"{n:>6} {what:>8} | {fmt_time(first):>10} {fmt_time(max(first - t_fx, 0)):>9} "
                    f"{fmt_time(t_fx):>9} | {fmt_time(t_ref):>10} "
                    f"{t_fx / t_ref:>5.2f}x")
            if with_compile and what != "vmap" and n <= 10:
                torch._dynamo.reset()
                compiled = torch.compile(ref)
                c_first, _ = first_call(compiled, *rargs)
                line += f" | {fmt_time(c_first):>11} {fmt_time(per_call(compiled, *rargs, repeat=repeat)):>9}"
            print(line, flush=True)
    print("\nresidual memory of grad through 1000 steps (bytes kept for the backward pass):")
    for remat in (False, True, "sqrt"):
        t0 = time.perf_counter()
        nbytes = residual_bytes(1000, remat)
        print(f"  remat={remat!s:>5}: {nbytes / 2 ** 20:8.2f} MiB  (linearize {time.perf_counter() - t0:.2f} s)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also torch.compile the eager loop (10 steps)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: tiny ops, and a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    check()
    run([10, 100] if args.quick else [10, 100, 1000, 10000], args.compile)


if __name__ == "__main__":
    main()
