"""Random number primitives. They are effectful: never folded, CSE'd or hoisted.
Under vmap their batching follows vmap's `randomness` argument (see transforms/batching.py).
"""
from __future__ import annotations

import torch

from ..core import Primitive, TensorType, bind

random_p = Primitive("random", effectful=True)
random_p.kind = "extern"


def _random_type(*, shape, dtype, device, dist):
    return TensorType(tuple(shape), dtype, device)


def _random_impl(*, shape, dtype, device, dist):
    if dist == "normal":
        return torch.randn(shape, dtype=dtype, device=device)
    if dist == "uniform":
        return torch.rand(shape, dtype=dtype, device=device)
    raise ValueError(f"unknown distribution {dist!r}")


random_p.abstract_eval = _random_type
random_p.impl = _random_impl
random_p.emit = lambda srcs, p: (f"torch.{'randn' if p['dist'] == 'normal' else 'rand'}("
                                 f"{p['shape']!r}, dtype={p['dtype']}, device={str(p['device'])!r})")


def random(shape, dtype, device, dist="normal"):
    return bind(random_p, (), {"shape": tuple(shape), "dtype": dtype, "device": torch.device(device),
                               "dist": dist})
