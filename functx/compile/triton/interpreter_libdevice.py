"""libdevice for the Triton interpreter.

Under TRITON_INTERPRET=1 (Triton 3.9 at least) `triton.language.extra.libdevice` functions
are stubs that return None. Kernels compiled for the interpreter import this module as
`libdevice` instead: each function applies the equivalent torch function to the
interpreter's numpy block. On a GPU kernels use the real libdevice.
"""
from __future__ import annotations

import numpy as np
import torch
import triton.language as tl
from triton.runtime.interpreter import TensorHandle

_TORCH = {
    "tanh": torch.tanh, "log1p": torch.log1p, "expm1": torch.expm1, "tan": torch.tan,
    "asin": torch.asin, "acos": torch.acos, "atan": torch.atan, "sinh": torch.sinh,
    "cosh": torch.cosh, "asinh": torch.asinh, "acosh": torch.acosh, "atanh": torch.atanh,
    "rsqrt": torch.rsqrt, "erf": torch.erf, "erfc": torch.erfc, "erfcx": torch.special.erfcx, "erfinv": torch.erfinv, "lgamma": torch.lgamma,
    "nearbyint": torch.round, "rint": torch.round, "trunc": torch.trunc, "pow": torch.pow,
    "atan2": torch.atan2, "fmod": torch.fmod, "exp": torch.exp, "log": torch.log,
    "sqrt": torch.sqrt, "isnan": torch.isnan, "isinf": torch.isinf, "signbit": torch.signbit,
}
_BOOL_RESULT = ("isnan", "isinf", "signbit")


def _as_torch(a):
    if isinstance(a, tl.tensor):
        return torch.from_numpy(np.array(a.handle.data))
    return a


def _make(name, fn):
    def f(*args):
        ref = next(a for a in args if isinstance(a, tl.tensor))
        out = fn(*(_as_torch(a) for a in args))
        scalar = tl.int1 if name in _BOOL_RESULT else ref.type.scalar
        if name not in _BOOL_RESULT:
            out = out.to(torch.from_numpy(np.array(ref.handle.data)).dtype)
        data = out.numpy()
        ty = tl.block_type(scalar, list(data.shape)) if data.ndim and isinstance(ref.type, tl.block_type) \
            else scalar
        return tl.tensor(TensorHandle(data, scalar), ty)
    f.__name__ = name
    return f


for _name, _fn in _TORCH.items():
    globals()[_name] = _make(_name, _fn)
