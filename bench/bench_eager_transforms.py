"""Eager (un-jitted) transforms: functx vs torch.func (and JAX op by op), side by side.

    python bench/bench_eager_transforms.py            # small-MLP rows, tiny-fn overhead, the six
                                                      # bench_transforms workloads at full size
    python bench/bench_eager_transforms.py --quick    # the six at small sizes, fewer rounds
    python bench/bench_eager_transforms.py --no-six --no-jax --rounds 30

Rows (one thread for every system; each row's variants run in interleaved rounds, so machine
noise hits them alike; the time is the median, and the minimum, of per-round CPU time per call):
  small MLP 16x32-64-64-10 (tanh, cross-entropy):  grad, vmap(grad) per example, vmap (the
      MLP per example), jvp,
      jacrev (one example's logits w.r.t. its input), hvp = jvp(grad)
  tiny: grad of sin(x).sum() on a 3-vector, the fixed cost of one transformed call
  nn.Modules through functional_call with named_parameters() (they require grad): an MLP, a
      TransformerEncoderLayer, a conv denoiser, nn.GRU, a conv classifier block (BatchNorm,
      ReLU, MaxPool); an RNN loop writing out[t] = h
  the six workloads of bench_transforms.py, un-jitted (their builders are reused)
and the Python function calls per call of grad (cProfile), the count issue 13 quotes, and
what one more op costs inside vmap / vjp (the per-op floor the small-MLP rows pay).
Results of every functx variant are checked against torch.func before timing.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import torch  # noqa: E402
import torch.func  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import functx  # noqa: E402
from _timing import pin_to_one_core  # noqa: E402
from _models import init_mlp, mlp, rnn_loss  # noqa: E402
import bench_transforms as BT  # noqa: E402


# ---------------------------------------------------------------- small-MLP rows

def small_mlp_rows(T):
    """name -> (fn, args), written once for functx and torch.func (same transform names)."""
    params = init_mlp([32, 64, 64, 10])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 32, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    v = tuple(torch.randn(p.shape, generator=g) for p in params)

    def loss(params, x, y):
        return F.cross_entropy(mlp(params, x), y)

    def one(params, x, y):          # one example: x (32,), y ()
        return F.cross_entropy(mlp(params, x[None]), y[None])

    def hvp(params, v, x, y):
        return T.jvp(lambda p: T.grad(loss)(p, x, y), (params,), (v,))[1]

    return {
        "grad": (T.grad(loss), (params, x, y)),
        "vmap(grad)": (T.vmap(T.grad(one), in_dims=(None, 0, 0)), (params, x, y)),
        "vmap": (T.vmap(mlp, in_dims=(None, 0)), (params, x)),
        "jvp": ((lambda p, v: T.jvp(lambda q: loss(q, x, y), (p,), (v,))), (params, v)),
        "jacrev": ((lambda p, x0: T.jacrev(lambda z: mlp(p, z))(x0)), (params, x[0])),
        "hvp": (hvp, (params, v, x, y)),
        "tiny grad (overhead)": (T.grad(lambda z: torch.sin(z).sum()), (torch.randn(3, generator=g),)),
    }


def module_rows(T):
    """Model code as researchers write it: nn.Modules through functional_call with
    dict(model.named_parameters()) (parameters that require grad: an MLP, a transformer layer,
    a small conv denoiser, nn.GRU, a conv classifier block), and an RNN filling its outputs in
    place (20 and 200 steps)."""
    torch.manual_seed(0)
    mlp_m = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
                                torch.nn.Tanh(), torch.nn.Linear(64, 10))
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    x, y, seq = torch.randn(16, 32), torch.randint(0, 10, (16,)), torch.randn(2, 5, 32)
    W, xs = torch.randn(32, 32) * 0.1, torch.randn(20, 8, 32)
    long_xs = torch.randn(200, 8, 32)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.GroupNorm(4, 16), torch.nn.SiLU(),
                               torch.nn.Conv2d(16, 16, 3, stride=2, padding=1), torch.nn.GroupNorm(4, 16),
                               torch.nn.SiLU(), torch.nn.ConvTranspose2d(16, 3, 4, stride=2, padding=1))
    img, noise = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    gru, seq_in = torch.nn.GRU(16, 32, batch_first=True), torch.randn(8, 10, 16)
    # a classifier's conv block (batch statistics: no running buffers, which torch.func cannot write)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8, track_running_stats=False),
                              torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 10))
    images, labels = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))

    def mlp_loss(p):
        return F.cross_entropy(torch.func.functional_call(mlp_m, p, (x,)), y)

    def layer_loss(p):
        return torch.func.functional_call(layer, p, (seq,)).pow(2).mean()

    def denoise_loss(p):
        return (torch.func.functional_call(conv, p, (img + noise,)) - noise).pow(2).mean()

    def gru_loss(p):
        return torch.func.functional_call(gru, p, (seq_in,))[0].pow(2).mean()

    def cnn_loss(p):
        return F.cross_entropy(torch.func.functional_call(cnn, p, (images,)), labels)

    return {
        "grad nn.Sequential MLP": (T.grad(mlp_loss), (dict(mlp_m.named_parameters()),)),
        "grad TransformerEncoderLayer": (T.grad(layer_loss), (dict(layer.named_parameters()),)),
        "grad conv net (GroupNorm, SiLU)": (T.grad(denoise_loss), (dict(conv.named_parameters()),)),
        "grad nn.GRU (10 steps)": (T.grad(gru_loss), (dict(gru.named_parameters()),)),
        "grad CNN (BatchNorm, ReLU, MaxPool)": (T.grad(cnn_loss), (dict(cnn.named_parameters()),)),
        "grad RNN writing out[t]": (T.grad(rnn_loss), (W, xs)),
        "grad RNN writing out[t], 200 steps": (T.grad(rnn_loss), (W, long_xs)),
    }


def jax_rows():
    """The same rows in JAX, un-jitted (op-by-op dispatch), or {} without JAX."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return {}
    params = tuple(jnp.asarray(p.numpy()) for p in init_mlp([32, 64, 64, 10]))
    g = torch.Generator().manual_seed(0)
    x = jnp.asarray(torch.randn(16, 32, generator=g).numpy())
    y = jnp.asarray(torch.randint(0, 10, (16,), generator=g).numpy())
    v = tuple(jnp.asarray(torch.randn(p.shape, generator=g).numpy()) for p in params)

    def loss(params, x, y):
        logp = jax.nn.log_softmax(mlp(params, x, jnp.tanh))
        return -jnp.take_along_axis(logp, y[:, None], 1).mean()

    def one(params, x, y):
        return loss(params, x[None], y[None])

    def ready(f):
        return lambda *a: jax.block_until_ready(f(*a))
    return {
        "grad": (ready(jax.grad(loss)), (params, x, y)),
        "vmap(grad)": (ready(jax.vmap(jax.grad(one), in_axes=(None, 0, 0))), (params, x, y)),
        "vmap": (ready(jax.vmap(lambda p, x: mlp(p, x, jnp.tanh), in_axes=(None, 0))), (params, x)),
        "jvp": (ready(lambda p, v: jax.jvp(lambda q: loss(q, x, y), (p,), (v,))), (params, v)),
        "jacrev": (ready(lambda p, x0: jax.jacrev(lambda z: mlp(p, z, jnp.tanh))(x0)), (params, x[0])),
        "hvp": (ready(lambda p, v: jax.jvp(lambda q: jax.grad(loss)(q, x, y), (p,), (v,))[1]), (params, v)),
        "tiny grad (overhead)": (ready(jax.grad(lambda z: jnp.sin(z).sum())), (jnp.ones(3),)),
    }


# ---------------------------------------------------------------- timing

def _cpu_per_call(fn, args, number):
    t0 = time.process_time()
    for _ in range(number):
        fn(*args)
    return (time.process_time() - t0) / number


def interleaved_cpu(fns, rounds, min_time):
    """name -> (median, min) CPU seconds per call over interleaved rounds."""
    numbers = {}
    for name, (fn, args) in fns.items():
        fn(*args)
        number, dt = 1, 0.0
        while dt < min_time and number < 1 << 16:
            number *= 2
            dt = _cpu_per_call(fn, args, number) * number
        numbers[name] = number
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, (fn, args) in fns.items():
            times[name].append(_cpu_per_call(fn, args, numbers[name]))
    return {name: (statistics.median(ts), min(ts)) for name, ts in times.items()}


def python_calls(fn, args):
    """Python-level function calls (cProfile's count, builtins included) in one call of fn."""
    fn(*args)
    prof = cProfile.Profile()
    prof.enable()
    fn(*args)
    prof.disable()
    return pstats.Stats(prof).total_calls


def per_op_costs(rounds):
    """Marginal CPU time of one more torch function inside an eager transform: a chain of 22
    ops minus a chain of 2, over 20 (16x64 float32; plain torch: the kernel alone)."""
    p, w = torch.randn(16, 64), torch.randn(64, 64) / 8

    def chain(k, op):
        def f(x):
            for _ in range(k):
                x = op(x)
            return x
        return f
    ops = {"tanh": torch.tanh, "x @ W": lambda h: h @ w}
    print(f"  {'op':<8} {'transform':<10} {'functx':>8} {'torch.func':>11} {'plain torch':>12}")
    for name, op in ops.items():
        for how in ("vmap", "vjp"):
            per = {}
            for T in (functx, torch.func):
                run = (lambda f, T=T: T.vmap(f)(p)) if how == "vmap" else (lambda f, T=T: T.vjp(f, p))
                t = interleaved_cpu({2: (run, (chain(2, op),)), 22: (run, (chain(22, op),))}, rounds, 0.05)
                per[T.__name__] = (t[22][0] - t[2][0]) / 20
            plain = interleaved_cpu({0: (chain(20, op), (p,))}, rounds, 0.05)[0][0] / 20
            print(f"  {name:<8} {how:<10} {fmt(per['functx']):>8} {fmt(per['torch.func']):>11} {fmt(plain):>12}")


def fmt(s):
    return f"{s * 1e6:.0f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"


# ---------------------------------------------------------------- main

def run_rows(rows, rounds, min_time):
    """rows: name -> {variant: (fn, args)}; prints one table line per row."""
    print(f"  {'workload':<24} {'functx':>10} {'torch.func':>11} {'jax (no jit)':>13} "
          f"{'speed vs torch.func':>20} {'min: functx/torch.func':>23}")
    out = {}
    for name, variants in rows.items():
        t = interleaved_cpu(variants, rounds, min_time)
        fx, tf = t["functx"], t["torch.func"]
        jx = fmt(t["jax"][0]) if "jax" in t else "-"
        print(f"  {name:<24} {fmt(fx[0]):>10} {fmt(tf[0]):>11} {jx:>13} {tf[0] / fx[0]:>19.2f}x "
              f"{fmt(fx[1]) + ' / ' + fmt(tf[1]):>23}", flush=True)
        out[name] = t
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the six workloads at small sizes, fewer rounds")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 15, quick 5)")
    ap.add_argument("--no-six", action="store_true", help="skip the six bench_transforms workloads")
    ap.add_argument("--no-jax", action="store_true", help="skip JAX")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if os.environ.get("FUNCTX_BENCH_ALL_CORES", "") in ("", "0"):
        pin_to_one_core()      # XLA's YNNPACK pool ignores XLA_FLAGS (_timing.pin_to_one_core)
    rounds = a.rounds or (5 if a.quick else 15)
    min_time = 0.01 if a.quick else 0.05
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"torch {torch.__version__}, threads=1, cpu count={os.cpu_count()}, load average "
          f"{'/'.join(f'{x:.2f}' for x in load) if load else '?'}; CPU time per call, median of "
          f"{rounds} interleaved rounds (speed > 1: functx faster)")

    fx, tf = small_mlp_rows(functx), small_mlp_rows(torch.func)
    jx = {} if a.no_jax else jax_rows()
    rows = {}
    for name in fx:
        BT.assert_matches(fx[name][0](*fx[name][1]), tf[name][0](*tf[name][1]), name)
        rows[name] = {"functx": fx[name], "torch.func": tf[name]}
        if name in jx:
            rows[name]["jax"] = jx[name]
    print("\n== small MLP 16x32-64-64-10, eager")
    run_rows(rows, rounds, min_time)

    fx, tf = module_rows(functx), module_rows(torch.func)
    rows = {}
    for name in fx:
        BT.assert_matches(fx[name][0](*fx[name][1]), tf[name][0](*tf[name][1]), name, rtol=1e-4, atol=1e-5)
        rows[name] = {"functx": fx[name], "torch.func": tf[name]}
    print("\n== nn.Modules (parameters that require grad) and an in-place RNN loop, eager")
    run_rows(rows, rounds, min_time)
    fx, tf = small_mlp_rows(functx), small_mlp_rows(torch.func)

    print("\n== Python calls per call (cProfile, builtins included)")
    for name in ("grad", "vmap(grad)", "vmap", "jvp", "tiny grad (overhead)"):
        print(f"  {name:<24} functx {python_calls(*fx[name]):>6}   torch.func {python_calls(*tf[name]):>6}")

    print("\n== one more op inside the transform (marginal CPU time per op)")
    per_op_costs(min(rounds, 5))

    if not a.no_six:
        rows = {}
        for name, build in BT.WORKLOADS.items():
            f_fn, args = build(BT._FunctxNS, a.quick)
            t_fn, _ = build(torch.func, a.quick)
            BT.assert_matches(f_fn(*args), t_fn(*args), name, rtol=1e-3, atol=1e-4)
            rows[name] = {"functx": (f_fn, args), "torch.func": (t_fn, args)}
        print(f"\n== bench_transforms workloads, eager ({'small' if a.quick else 'full'} sizes)")
        run_rows(rows, rounds, min_time)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load:
        print(f"\nload average at the end: {'/'.join(f'{x:.2f}' for x in load)}")


if __name__ == "__main__":
    main()
