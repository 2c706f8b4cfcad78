"""torch.special's Bessel functions (bessel_j0/j1/y0/y1, modified_bessel_i0/i1/k0/k1,
scaled_modified_bessel_k0/k1, spherical_bessel_j0) as the `bessel` primitive, which has their
derivatives: torch treats their results as constants (torch.func gives a zero derivative,
torch.autograd drops the term), so through the opaque fallback functx's grad of a
Bessel-function model was zero. Integer inputs compute in the default float dtype, as torch's."""
from __future__ import annotations

import torch

from ... import prims as P
from .common import _t, aten
from .registry import register

KINDS = ("bessel_j0", "bessel_j1", "bessel_y0", "bessel_y1", "modified_bessel_i0", "modified_bessel_i1",
         "modified_bessel_k0", "modified_bessel_k1", "scaled_modified_bessel_k0", "scaled_modified_bessel_k1",
         "spherical_bessel_j0")


def _lowering(kind):
    def lowering(x):
        if not _t(x).dtype.is_floating_point:
            x = P.convert(x, torch.get_default_dtype())
        return P.bessel(x, kind)
    return lowering


for _kind in KINDS:
    register(getattr(aten, "special_" + _kind).default)(_lowering(_kind))
