"""Float32 matrix products on the CPU through oneDNN where it beats torch's BLAS.

torch's float32 `mm` is MKL's sgemm. On some CPUs that is far from the core's peak: on an
AMD EPYC core it ran at 76-91 GFLOP/s where oneDNN's matmul in the same torch build
(`torch.ops.mkldnn._linear_pointwise`, Inductor's CPU linear) and XLA reach 130-200
(docs/benchmarks.md, round 13), which left functx.jit behind jax.jit on its GEMM-bound
workloads. On a Xeon MKL is at its peak. So the choice is measured, once per process, on
the machine: `onednn_faster()` times one 256 x 256 x 256 product both ways.

`mm_into(a, b, out)` is `torch.mm(a, b, out=out)`, through oneDNN where that was measured
faster and the product is one it wins: float32 on the CPU, 2-D, at least 64 rows and a
million multiply-adds (its fixed cost is ~9 us: 1.8 us against 11 us for 8 x 64 x 64), `a`
row-major, or column-major (a weight gradient's x.mT: 1.3-2x up to 4096 rows, ~3x slower
at 16384). The result is copied into `out` (the jit backends write products into pooled
buffers; oneDNN's op has no out=).
oneDNN sums in another order than MKL: results differ in the last bits, as any other BLAS.
FUNCTX_ONEDNN_GEMM=0 / 1 forces the choice.
"""
from __future__ import annotations

import os
import time

import torch

_LINEAR = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
MIN_ROWS = 64
MIN_MACS = 1 << 20
MAX_TRANSPOSED_ROWS = 4096      # a column-major `a` (a weight gradient's x.mT) wins up to here
_CHOICE = [None]        # None: not measured yet


def _probe() -> bool:
    if _LINEAR is None or not torch.backends.mkldnn.is_available():
        return False
    forced = os.environ.get("FUNCTX_ONEDNN_GEMM")
    if forced in ("0", "1"):
        return forced == "1"
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 256, generator=g), torch.randn(256, 256, generator=g)
    out, w = torch.empty(256, 256), b.t()

    def best(fn):
        fn()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)
    try:
        mkl = best(lambda: torch.mm(a, b, out=out))
        dnn = best(lambda: out.copy_(_LINEAR(a, w, None, "none", [], "")))
    except RuntimeError:            # a build whose op refuses dense tensors
        return False
    return dnn < 0.8 * mkl


def onednn_faster() -> bool:
    """Whether oneDNN's float32 GEMM beat torch.mm on this machine (measured once)."""
    if _CHOICE[0] is None:
        _CHOICE[0] = _probe()
    return _CHOICE[0]


def mm_into(a, b, out):
    """torch.mm(a, b, out=out), through oneDNN where that is faster (module docstring)."""
    if (a.dtype is torch.float32 and b.dtype is torch.float32 and a.device.type == "cpu" and a.dim() == 2
            and b.dim() == 2 and a.shape[0] >= MIN_ROWS and a.shape[0] * a.shape[1] * b.shape[1] >= MIN_MACS
            and (a.stride(1) == 1 or (a.stride(0) == 1 and a.shape[0] <= MAX_TRANSPOSED_ROWS)) and onednn_faster()):
        return out.copy_(_LINEAR(a, b.t(), None, "none", [], ""))
    return torch.mm(a, b, out=out)
