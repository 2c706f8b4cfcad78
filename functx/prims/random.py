"""Random number primitives. They are effectful: never folded, CSE'd, hoisted or removed.
Under vmap their batching follows vmap's `randomness` argument (see transforms/batching.py):
'error' raises, 'same' binds once unbatched, 'different' binds once with the batch size
prepended to `shape` — so every distribution's impl must accept leading batch dims.

`random_p` is nullary; `shape`, `dtype`, `device`, `dist` and `args` are its params:
  normal    standard normal                      args ()
  uniform   U[0, 1)                              args ()
  randint   integers in [low, high)              args (low, high)
  bernoulli 0/1 with probability p               args (p,)
  randperm  a permutation of range(n) per row    args (n,)        shape (..., n)
  call      any other seeded torch op            args (fn, base_ndim): fn() -> one sample
Distributions with tensor parameters (normal(mean_t, std_t), bernoulli(p_t)) are built by
the front end from these and deterministic primitives.
"""
from __future__ import annotations

import math

import torch

from ..core import EXTERN, Primitive, TensorType, bind
from ..core.errors import FunctxError
from ..core.trace import seeded_while_staging

DISTRIBUTIONS = ("normal", "uniform", "randint", "bernoulli", "randperm", "call")


def _random_type(*, shape, dtype, device, dist, args=()):
    if dist not in DISTRIBUTIONS:
        raise ValueError(f"random: unknown distribution {dist!r}; one of {DISTRIBUTIONS}")
    if dist == "randperm" and (not shape or shape[-1] != args[0]):
        raise TypeError(f"random: randperm({args[0]}) needs shape (..., {args[0]}), got {shape}")
    return TensorType(tuple(shape), dtype, device)


def _random_impl(*, shape, dtype, device, dist, args=()):
    if dist == "normal":
        return torch.randn(shape, dtype=dtype, device=device)
    if dist == "uniform":
        return torch.rand(shape, dtype=dtype, device=device)
    if dist == "randint":
        low, high = args
        return torch.randint(low, high, shape, dtype=dtype, device=device)
    if dist == "bernoulli":     # torch's kernel for a number p (its own stream: MKL's on CPU)
        return torch.empty(shape, dtype=dtype, device=device).bernoulli_(args[0])
    if dist == "randperm":
        if len(shape) == 1:
            return torch.randperm(args[0], dtype=dtype, device=device)
        # a batch of independent permutations: argsort of iid uniforms is a uniform permutation
        return torch.rand(shape, device=device).argsort(dim=-1).to(dtype)
    if dist == "call":
        fn, base_ndim = args
        batch = tuple(shape[:len(shape) - base_ndim])
        if not batch:
            return fn()
        # vmap(randomness='different') over an op we only know as a black box: one call per element
        n = math.prod(batch)
        samples = [fn() for _ in range(n)]
        return torch.stack(samples).reshape(tuple(shape))
    raise ValueError(f"random: unknown distribution {dist!r}")


def _random_emit(eqn, srcs):
    p = eqn.params
    if p["dist"] not in ("normal", "uniform"):
        return None                               # the eager backend calls the impl
    fn = "randn" if p["dist"] == "normal" else "rand"
    return f"torch.{fn}({tuple(p['shape'])!r}, dtype={p['dtype']}, device={str(p['device'])!r})"


# No operands: nothing to differentiate or batch (vmap applies its `randomness` mode).
random_p = Primitive("random", kind=EXTERN, effectful=True,
                     abstract_eval=_random_type, impl=_random_impl, emit=_random_emit)


def random(shape, dtype, device, dist="normal", args=()):
    """A fresh sample of `dist` with this shape (see the module docstring for `args`)."""
    seeded = seeded_while_staging()
    if seeded is not None:
        raise FunctxError(
            f"functx.jit: a random draw after torch.manual_seed (or torch.set_rng_state) inside the "
            f"jitted function, which seeded here:\n{seeded}\njit runs the function once, at trace time, "
            "so the seed would be set once, not on every call as eager PyTorch does, and later calls "
            "would draw different numbers. Seed outside the jitted function, or pass a generator as "
            "an argument: "
            "functx.jit(f)(x, torch.Generator().manual_seed(seed)).")
    return bind(random_p, (), {"shape": tuple(shape), "dtype": dtype, "device": torch.device(device),
                               "dist": dist, "args": tuple(args)})
