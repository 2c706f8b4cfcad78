"""Loops at scale (issue 11): a scan of a small MLP update, its grad and its vmap, side by
side with a torch eager loop, jax.lax.scan (when JAX is installed) and torch.compile, in one
process.

    python bench/bench_loops.py             # 10/100/1000/10000 steps
    python bench/bench_loops.py --quick     # 10/100 steps (smoke run)
    python bench/bench_loops.py --compile   # also torch.compile at 10 steps (slow: it unrolls)

The step: h <- h + 0.1 * tanh(h @ W1 + b1 + x_t) @ W2 for a batch of 16 states of width 32;
the loss is mean(h_n ** 2). For each length: functx.jit's first call (trace + compile + one
run; trace+cc is the first call minus the steady time) and steady per-call time, for the forward, grad (w.r.t. W1, b1, W2) and vmap (over 8 initial
states); the torch eager loop's steady time (loss.backward() for grad, torch.func.vmap for
vmap); jax.jit of the same lax.scan (first call = trace + XLA compile + one run; steady).
Then the memory of grad through 1000 steps by remat option: the bytes the linearized graph
holds between the forward and the backward pass (its residuals), those beyond the scan's own
inputs (xs, weights, h0), what the backward pass holds on top of them at its peak (counted:
one segment's residuals for 'sqrt', k carries for 'binomial'), and the forward steps the
backward pass recomputes.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import functx  # noqa: E402
from functx.frontend import unwrap, wrap  # noqa: E402
from functx.transforms.ad import linearize_flat  # noqa: E402
from _timing import first_call, fmt_time, interleaved, per_call, pin_to_one_core  # noqa: E402

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


def loss_scan(params, h0, xs, remat=False, k=None):
    h, _ = functx.scan(step(params), h0, xs, remat=remat, checkpoints=k)
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


def residual_bytes(n, remat, k=None):
    """Bytes of the residuals reverse mode keeps between the forward and backward pass."""
    params, h0, xs = make(n)
    _, graph, _ = linearize_flat(lambda a: [unwrap(loss_scan(tuple(wrap(p) for p in a[:3]), a[3], xs, remat, k))],
                                 list(params) + [h0])
    return sum(c.numel() * c.element_size() for c in graph.consts)


def jax_cases(n):
    """jax.jit'ed lax.scan forward, grad and vmap on the same numbers, or None without JAX."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    params, h0, xs = make(n)
    jp = tuple(jnp.asarray(p.numpy()) for p in params)
    jh0, jxs, jh0s = jnp.asarray(h0.numpy()), jnp.asarray(xs.numpy()), jnp.asarray(torch.randn(V, B, D).numpy())

    def loss(params, h0, xs):
        W1, b1, W2 = params
        h, _ = jax.lax.scan(lambda h, x: (h + 0.1 * jnp.tanh(h @ W1 + b1 + x) @ W2, None), h0, xs)
        return jnp.mean(h ** 2)
    ready = lambda f: (lambda *a: jax.block_until_ready(f(*a)))
    return {"forward": (ready(jax.jit(loss)), (jp, jh0, jxs)),
            "grad": (ready(jax.jit(jax.grad(loss))), (jp, jh0, jxs)),
            "vmap": (ready(jax.jit(jax.vmap(loss, in_axes=(None, 0, None)))), (jp, jh0s, jxs))}


def run(lengths, with_compile):
    try:
        import jax
        jax_note = f"jax {jax.__version__} (CPU)"
    except ImportError:
        jax_note = "JAX not installed (not measured)"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; {jax_note}")
    head = (f"{'steps':>6} {'what':>8} | {'functx 1st':>10} {'trace+cc':>9} {'functx':>9} | {'eager loop':>10} "
            f"{'ratio':>6} | {'jax 1st':>9} {'jax':>9} {'ratio':>6}")
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
        jcases = jax_cases(n)
        for what, (fx, fargs, ref, rargs) in cases.items():
            first, _ = first_call(fx, *fargs)
            fns, args_of = {"fx": fx, "ref": ref}, {"fx": fargs, "ref": rargs}
            if jcases is not None:
                j_first, _ = first_call(*jcases[what][0:1], *jcases[what][1])
                fns["jax"], args_of["jax"] = jcases[what]
            repeat = 3 if n >= 1000 else 7
            # interleaved rounds: machine noise hits all alike
            t = interleaved(fns, args_of, repeat=repeat, min_time=0.2 if n < 10000 else 1.0)
            t_fx, t_ref = t["fx"], t["ref"]
            line = (f"{n:>6} {what:>8} | {fmt_time(first):>10} {fmt_time(max(first - t_fx, 0)):>9} "
                    f"{fmt_time(t_fx):>9} | {fmt_time(t_ref):>10} "
                    f"{t_fx / t_ref:>5.2f}x | ")
            line += (f"{fmt_time(j_first):>9} {fmt_time(t['jax']):>9} {t_fx / t['jax']:>5.2f}x" if jcases is not None
                     else f"{'-':>9} {'-':>9} {'-':>6}")
            if with_compile and what != "vmap" and n <= 10:
                torch._dynamo.reset()
                compiled = torch.compile(ref)
                c_first, _ = first_call(compiled, *rargs)
                line += f" | {fmt_time(c_first):>11} {fmt_time(per_call(compiled, *rargs, repeat=repeat)):>9}"
            print(line, flush=True)
    memory_table(1000)
    remat_times(1000)


def remat_times(n):
    """jit(grad) through n steps by remat option: first call and steady time."""
    params, h0, xs = make(n)
    print(f"\njit(grad) through {n} steps by remat option:")
    for remat, k in ((False, None), (True, None), ("sqrt", None), ("binomial", 10), ("binomial", None)):
        fx = functx.jit(functx.grad(loss_scan), static_argnums=(3, 4))
        first, _ = first_call(fx, params, h0, xs, remat, k)
        steady = per_call(fx, params, h0, xs, remat, k, repeat=3, min_time=0.2)
        label = f"{remat!r}" + (f", k={k}" if k else "")
        print(f"  {label:>18}: first call {fmt_time(first):>9}, steady {fmt_time(steady):>9}")


def memory_table(n):
    """Residuals, their part beyond the inputs, the backward pass's extra peak and its
    recomputed forward steps, by remat option (residuals measured on the linearized graph;
    the peak and the steps counted from the schemes: one step's or one segment's residuals
    at a time, k carries + the step running for 'binomial')."""
    from functx.core import revolve
    params, h0, xs = make(n)
    inputs = sum(t.numel() * t.element_size() for t in (*params, h0, xs))
    carry = h0.numel() * h0.element_size()
    per_step = residual_bytes(n, False) - residual_bytes(0, False) if n else 0
    per_step //= max(n, 1)                         # the body's residuals per step
    seg = max(1, int(n ** 0.5))
    k = 45                                         # the default for 1000 steps: C(k + 2, 2) >= n
    print(f"\nmemory of grad through {n} steps (MiB; a carry is {carry / 1024:.0f} KiB, one step's residuals "
          f"{per_step / 1024:.0f} KiB):")
    print(f"  {'remat':>22} | {'residuals':>9} {'beyond inputs':>13} | {'backward peak extra':>19} | "
          f"{'recomputed steps':>16}")
    rows = [(False, "False", 0, 0), (True, "True", per_step, n), ("sqrt", "'sqrt'", seg * per_step, n),
            # the schedule's advances, plus each step back's own forward (as remat=True's)
            (("binomial", 10), "'binomial', k=10", (10 + 2) * carry + per_step, revolve.forward_cost(n, 10) + n),
            (("binomial", k), f"'binomial', k={k}", (k + 2) * carry + per_step, revolve.forward_cost(n, k) + n)]
    for remat, label, extra, recomputed in rows:
        kw = dict(remat=remat[0], k=remat[1]) if isinstance(remat, tuple) else dict(remat=remat)
        nbytes = residual_bytes(n, **kw)
        print(f"  {label:>22} | {nbytes / 2 ** 20:9.2f} {(nbytes - inputs) / 2 ** 20:13.2f} | "
              f"{extra / 2 ** 20:19.2f} | {recomputed:>16}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also torch.compile the eager loop (10 steps)")
    ap.add_argument("--memory", action="store_true", help="only the memory table")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: tiny ops, and a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen={'true' if args.threads > 1 else 'false'}")
    if args.threads == 1 and os.environ.get("FUNCTX_BENCH_ALL_CORES", "") in ("", "0"):
        pin_to_one_core()      # XLA's YNNPACK pool ignores XLA_FLAGS (_timing.pin_to_one_core)
    check()
    if args.memory:
        memory_table(1000)
        return remat_times(1000)
    run([10, 100] if args.quick else [10, 100, 1000, 10000], args.compile)


if __name__ == "__main__":
    main()
