"""TorchOps: the ops handler that runs a kernel body with torch tensors.

Values are tensors broadcastable to [xnumel, rnumel]; pointwise operations call the
primitive's own eager impl, so running a KernelPlan here checks the compiler's fusion and
index logic (views folded into index math, reduction layouts, stores) independently of
Triton codegen.
"""
from __future__ import annotations

import contextlib

import torch

from ...core.dtypes import accumulation_dtype
from ...prims.util import static_broadcast_shapes
from .indexing import evaluate

COMBINE = {
    "add": lambda v: v.sum(1, keepdim=True),
    "mul": lambda v: v.prod(1, keepdim=True),
    "max": lambda v: v.amax(1, keepdim=True),
    "min": lambda v: v.amin(1, keepdim=True),
}


class TorchOps:
    def __init__(self, buffers: dict, xnumel: int, rnumel: int, device="cpu"):
        self.buffers = buffers          # name -> tensor (inputs filled in, outputs preallocated)
        self.shape = (xnumel, rnumel)
        self.env = {"xindex": torch.arange(xnumel, device=device)[:, None],
                    "rindex": torch.arange(rnumel, device=device)[None, :]}

    def _index(self, index):
        return torch.as_tensor(evaluate(index, self.env))

    def load(self, buffer, index, dtype):
        return self.buffers[buffer].reshape(-1)[self._index(index)]

    def constant(self, value, dtype):
        return torch.tensor(value, dtype=dtype)

    def index_value(self, index, dtype):
        return self._index(index).to(dtype)

    def pointwise(self, eqn, args):
        if args:
            shape = static_broadcast_shapes(tuple(tuple(a.shape) for a in args))
            args = [a.expand(shape) for a in args]
        return eqn.prim.impl(*args, **eqn.params).to(eqn.outputs[0].type.dtype)

    def reduction(self, combine, value, dtype):
        v = value.to(accumulation_dtype(dtype)).expand(self.shape)
        return COMBINE[combine](v).to(dtype)

    def store(self, buffer, index, value, dtype):
        idx = self._index(index)
        shape = static_broadcast_shapes((tuple(idx.shape), tuple(value.shape)))
        out = self.buffers[buffer].view(-1)
        out[idx.expand(shape).reshape(-1)] = value.expand(shape).reshape(-1).to(dtype)

    def rloop(self):
        return contextlib.nullcontext()
