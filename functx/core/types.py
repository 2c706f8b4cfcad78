"""The abstract value of a tensor: shape, dtype, device. Every Var and Tracer has one."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .dtypes import short_name


@dataclass(frozen=True, slots=True)
class TensorType:
    shape: tuple
    dtype: torch.dtype
    device: torch.device
    # A jit argument that was a Python number (or arithmetic on only such values): it
    # promotes as the Python scalar would (JAX's weak type). Not part of equality: the
    # graph computes the same thing either way; only the front end's promotion reads it.
    weak: bool = field(default=False, compare=False)

    def __eq__(self, other):
        # ranks before sizes: a symbolic size (jit) compared with another rank's sizes would
        # record a needless guard
        if not isinstance(other, TensorType):
            return NotImplemented
        return (self.dtype == other.dtype and self.device == other.device
                and len(self.shape) == len(other.shape) and self.shape == other.shape)

    @staticmethod
    def of(x: torch.Tensor) -> "TensorType":
        return TensorType(tuple(x.shape), x.dtype, x.device)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def with_shape(self, shape) -> "TensorType":
        return TensorType(tuple(shape), self.dtype, self.device)

    def with_dtype(self, dtype) -> "TensorType":
        return TensorType(self.shape, dtype, self.device)

    def __str__(self) -> str:
        weak = "weak " if self.weak else ""
        return f"{weak}{short_name(self.dtype)}[{','.join(map(str, self.shape))}]"

    def __repr__(self) -> str:
        return str(self)
