"""Type promotion and broadcasting for the front end (primitives do neither)."""
from __future__ import annotations

import dataclasses
import functools

import torch
from torch._prims_common import ELEMENTWISE_TYPE_PROMOTION_KIND as KIND

from ..core.trace import GraphTracer, type_of
from ..prims.util import static_broadcast_shapes
from .. import prims as P

# SymInt/SymFloat/SymBool: sizes under jit's symbolic trace, Python numbers of their kind
SCALARS = (bool, int, float, complex, torch.SymInt, torch.SymFloat, torch.SymBool)
_SYM_KIND = {torch.SymInt: int, torch.SymFloat: float, torch.SymBool: bool}


def _category(dtype):
    return 3 if dtype.is_complex else 2 if dtype.is_floating_point else 0 if dtype is torch.bool else 1


_TO_COMPLEX = {torch.float16: torch.complex32, torch.float32: torch.complex64, torch.float64: torch.complex128}


def _combine(higher, lower):
    """torch's combine_categories: the higher-priority group wins unless the lower group is of
    a higher category (then the lower group's category is taken, as torch does)."""
    if higher is None:
        return lower
    if lower is None or higher.is_complex:
        return higher
    if lower.is_complex:
        return _TO_COMPLEX.get(higher, torch.complex64) if higher.is_floating_point else lower
    if higher.is_floating_point:
        return higher
    if higher is torch.bool or lower.is_floating_point:
        return torch.promote_types(higher, lower)
    return higher


def _scalar_dtype(kind_of_scalar):
    if kind_of_scalar is bool:
        return torch.bool
    if kind_of_scalar is int:
        return torch.int64
    if kind_of_scalar is float:
        return torch.get_default_dtype()
    return torch.complex128 if torch.get_default_dtype() is torch.float64 else torch.complex64


def _promoted(key, kind):
    """torch's ResultTypeState: dimensioned tensors, then 0-d tensors, then Python scalars.
    (torch._prims_common.elementwise_dtypes computes the same but imports sympy, ~0.6 s.)
    Cached by the default dtype too: a Python float promotes to it."""
    return _promoted_for(key, kind, torch.get_default_dtype())


@functools.lru_cache(maxsize=4096)
def _promoted_for(key, kind, default_dtype):
    groups = [None, None, None]
    for k in key:
        if isinstance(k, tuple):
            dtype, is_0d = k
            g = 1 if is_0d else 0
        else:
            dtype, g = _scalar_dtype(k), 2
        groups[g] = dtype if groups[g] is None else torch.promote_types(groups[g], dtype)
    result = _combine(groups[0], _combine(groups[1], groups[2]))
    if kind is KIND.INT_TO_FLOAT and not (result.is_floating_point or result.is_complex):
        return torch.get_default_dtype()
    if kind is KIND.ALWAYS_BOOL:
        return torch.bool
    return result


# ---- weak values: jit's dynamic Python numbers (TensorType.weak) promote as the Python
# scalar they stand for; arithmetic among only such values follows Python (int64, float64).

def _python_type(dtype):
    return complex if dtype.is_complex else float if dtype.is_floating_point else bool if dtype is torch.bool else int


_PY_DTYPE = {bool: torch.bool, int: torch.int64, float: torch.float64, complex: torch.complex128}
_PY_ORDER = (bool, int, float, complex)


def _operand_key(a, t):
    if t is None:
        return _SYM_KIND.get(type(a), type(a))
    if t.weak:
        return _python_type(t.dtype)
    return (t.dtype, not t.shape)


def _all_weak(types):
    return any(t is not None for t in types) and all(t is None or t.weak for t in types)


def _python_result(key, kind, bitwise=False):
    """The dtype Python's own arithmetic gives (int/int true division is a float64; bool
    arithmetic other than & | ^ gives an int)."""
    widest = max(key, key=_PY_ORDER.index)
    if kind is KIND.ALWAYS_BOOL:
        return torch.bool
    if kind is KIND.INT_TO_FLOAT and widest in (bool, int):
        return torch.float64
    if widest is bool and not bitwise:
        return torch.int64
    return _PY_DTYPE[widest]


def mark_weak(x):
    """x (a fresh result of arithmetic on weak values only) is weak too."""
    if isinstance(x, GraphTracer) and not x.var.type.weak:
        x.var.type = dataclasses.replace(x.var.type, weak=True)
    return x


def mark_strong(x):
    """x (a fresh value) promotes as a tensor of its dtype, no longer as a Python number
    (torch.as_tensor of a dynamic Python number)."""
    if isinstance(x, GraphTracer) and x.var.type.weak:
        x.var.type = dataclasses.replace(x.var.type, weak=False)
    return x


def is_weak(x):
    t = type_of(x) if not isinstance(x, SCALARS) else None
    return t is not None and t.weak


def result_type(*args, kind=KIND.DEFAULT):
    types = [None if isinstance(a, SCALARS) else type_of(a) for a in args]
    key = tuple([_operand_key(a, t) for a, t in zip(args, types)])
    if _all_weak(types):
        return _python_result(key, kind)
    return _promoted(key, kind)


def broadcast_shapes(*args):
    shapes = tuple([type_of(a).shape for a in args if not isinstance(a, SCALARS)])
    return static_broadcast_shapes(shapes) if shapes else ()


def cast_scalar(x, dtype):
    if isinstance(x, (torch.SymInt, torch.SymFloat)) and not dtype.is_complex and dtype is not torch.bool:
        # a symbolic size stays symbolic (float()/int() would specialize it)
        return torch.sym_float(x) if dtype.is_floating_point else torch.sym_int(x)
    if dtype.is_floating_point:
        return float(x)
    if dtype.is_complex:
        return complex(x)
    if dtype is torch.bool:
        return bool(x)
    return int(x)


def prepare(args, dtype, shape):
    """Convert every operand to dtype and broadcast tensors to shape."""
    return _prepare_typed(args, [None if isinstance(a, SCALARS) else type_of(a) for a in args], dtype, shape)


def _prepare_typed(args, types, dtype, shape):
    """prepare, given each operand's type (None for Python scalars)."""
    device = _CPU    # the first non-CPU operand's device: 0-d CPU tensors act as scalars
    for t in types:
        if t is not None and t.device.type != "cpu":
            device = t.device
            break
    out = []
    for a, t in zip(args, types):
        if t is None:
            out.append(cast_scalar(a, dtype))
            continue
        if t.device != device and not t.shape and isinstance(a, torch.Tensor):
            a = a.to(device)   # torch treats 0-d CPU tensors as scalars on any device
        if t.dtype != dtype:
            a = P.convert(a, dtype)
        if len(t.shape) != len(shape) or t.shape != shape:    # ranks first: no size guards across ranks
            a = P.broadcast_to(a, shape)
        out.append(a)
    if all(t is None for t in types):
        out[0] = P.full(shape, out[0], dtype, device)
    return out


def elementwise(fn, *args, kind=KIND.DEFAULT, compute_dtype=None):
    """fn over the operands promoted to a common dtype and broadcast to a common shape.
    (Each operand's type is computed once: this runs for every elementwise ATen op.)"""
    types = [None if isinstance(a, SCALARS) else type_of(a) for a in args]
    # The common case: tensor operands of one (interned, non-weak) type need no promotion,
    # conversion or broadcast, and compute in that dtype.
    t0 = types[0]
    if t0 is not None and compute_dtype is None and not t0.weak \
            and (kind is not KIND.INT_TO_FLOAT or t0.dtype.is_floating_point):
        for t in types:
            if t is not t0:
                break
        else:
            return fn(*args)
    weak = False        # _all_weak(types), inline (this runs for every elementwise ATen op)
    for t in types:
        if t is not None:
            if not t.weak:
                weak = False
                break
            weak = True
    if weak and compute_dtype is None:
        key = tuple([_operand_key(a, t) for a, t in zip(args, types)])
        dtype = _python_result(key, KIND.DEFAULT if kind is KIND.ALWAYS_BOOL else kind, fn in _BITWISE)
    elif compute_dtype is None or kind is KIND.ALWAYS_BOOL:
        key = tuple([_operand_key(a, t) for a, t in zip(args, types)])
        dtype = _promoted(key, KIND.DEFAULT if kind is KIND.ALWAYS_BOOL else kind)
    else:
        dtype = compute_dtype
    shapes = tuple([t.shape for t in types if t is not None])
    shape = static_broadcast_shapes(shapes) if shapes else ()
    if dtype in _HALF and kind is not KIND.ALWAYS_BOOL and any(t is not None and t.weak for t in types):
        # eager keeps a Python number at float32 precision against a half tensor and rounds
        # once, at the end; converting the number to half first would round it twice
        return P.convert(fn(*_prepare_typed(args, types, torch.float32, shape)), dtype)
    out = fn(*_prepare_typed(args, types, dtype, shape))
    return mark_weak(out) if weak else out


_CPU = torch.device("cpu")
_HALF = (torch.float16, torch.bfloat16)
_BITWISE = (P.bitwise_and, P.bitwise_or, P.bitwise_xor)


def float_dtype_of(x):
    """The dtype a float-valued unary op computes in (ints promote to the default float)."""
    t = type_of(x)
    if t.dtype.is_floating_point or t.dtype.is_complex:
        return t.dtype
    return torch.get_default_dtype()
