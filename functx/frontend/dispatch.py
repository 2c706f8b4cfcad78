"""ATen op -> primitives: the order in which an op is handled.

1. special ops that need the wrappers themselves (copy_, item, ...); then, for pointwise
   ops, the dtype rules of torch's kernels (kernel_check.py);
2. our lowering table (frontend/lowerings/); view ops there also record aliasing
   (frontend/functionalize.py);
3. in-place ops: the functional variant, then a functionalized write;
4. PyTorch's decomposition table (torch._decomp), then CompositeImplicit decomposition;
5. the opaque fallback (frontend/fallback.py), which explain() reports.
"""
from __future__ import annotations

import torch
from torch._decomp import decomposition_table

from ..core.errors import FunctxError, user_frame_summary
from ..core.trace import Tracer, concrete
from .fallback import opaque_fallback
from .kernel_check import check_kernel_accepts, is_pointwise
from .functionalize import make_view, unwrap, unwrap_tree, value_of, write
from .lowerings.registry import LOWERINGS, PLANS, SPECIAL, register_special
from .tensor import TracerTensor

aten = torch.ops.aten


def wrap_result(x):
    """Every tensor a dispatched op returns is a TracerTensor, so later in-place
    writes into it are tracked, even when its value is a constant."""
    if isinstance(x, Tracer):
        return TracerTensor(x)
    if isinstance(x, (list, tuple)):
        return type(x)(wrap_result(v) for v in x)
    if x is None or isinstance(x, (bool, int, float, complex, torch.dtype, torch.device)):
        return x
    if isinstance(x, TracerTensor):
        return x
    return TracerTensor(x)


def _plan(func):
    """What dispatch does with func, decided once per op (OpOverload hashes in Python, and
    this runs for every traced ATen op): (func, special, pointwise, lowering, is_view)."""
    special = SPECIAL.get(func)
    lowering = LOWERINGS.get(func)
    plan = (func, special, is_pointwise(func), lowering, lowering is not None and func.is_view)
    PLANS[id(func)] = plan
    return plan


def dispatch(func, args, kwargs):
    plan = PLANS.get(id(func))
    if plan is None or plan[0] is not func:
        plan = _plan(func)
    _, special, pointwise, lowering, is_view = plan
    if special is not None:
        return special(*args, **kwargs)
    if pointwise:
        check_kernel_accepts(func, args, kwargs)
    if lowering is not None:
        if is_view:
            return make_view(func, lowering, args, kwargs)
        if kwargs:
            return wrap_result(lowering(*unwrap_tree(args), **unwrap_tree(kwargs)))
        return wrap_result(lowering(*unwrap_tree(args)))
    return _unlowered(func, args, kwargs)


def _unlowered(func, args, kwargs):
    """Ops without a lowering: in-place variants, then decompositions, then the fallback."""
    schema = func._schema
    if _is_inplace(func, schema):
        return _inplace(func, args, kwargs)
    if any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments if a.kwarg_only):
        raise FunctxError(f"functx: {func} writes into an out= argument, which transformed functions "
                          f"cannot do:\n{user_frame_summary()}\nCall the functional form instead "
                          "(y = torch.add(a, b) rather than torch.add(a, b, out=y)).")
    decomp = decomposition_table.get(func)
    if decomp is not None:
        out = _decompose(decomp, args, kwargs)
        if out is not NotImplemented:
            return out
    out = _decompose(func.decompose, args, kwargs)
    if out is not NotImplemented:
        return out
    if func.namespace == "prims" and _decomposing[0]:
        raise _UnmappedPrim(func)
    return opaque_fallback(func, args, kwargs)


class _UnmappedPrim(Exception):
    """A decomposition reached a torch.ops.prims op with no lowering. prims ops have no
    derivative formulas, so the op being decomposed runs through the fallback instead."""


_decomposing = [0]


def _decompose(decomp, args, kwargs):
    _decomposing[0] += 1
    try:
        return decomp(*args, **kwargs)
    except _UnmappedPrim:
        return NotImplemented
    finally:
        _decomposing[0] -= 1


# ---------------------------------------------------------------- in-place ops

def _is_inplace(func, schema) -> bool:
    if not schema.arguments:
        return False
    a0 = schema.arguments[0]
    return (a0.alias_info is not None and a0.alias_info.is_write
            and func.overloadpacket.__name__.endswith("_"))


_FUNCTIONAL_CACHE: dict = {}


def functional_variant(func):
    if func not in _FUNCTIONAL_CACHE:
        name = func.overloadpacket.__name__[:-1]
        packet = getattr(aten, name, None)
        found = getattr(packet, func._overloadname, None) if packet is not None else None
        if found is None and packet is not None:     # transpose_.default <-> transpose.int
            names = [a.name for a in func._schema.arguments]
            found = next((getattr(packet, o) for o in packet.overloads()
                          if [a.name for a in getattr(packet, o)._schema.arguments] == names), None)
        _FUNCTIONAL_CACHE[func] = found
    return _FUNCTIONAL_CACHE[func]


def _inplace(func, args, kwargs):
    target = args[0]
    functional = functional_variant(func)
    if functional is None:
        raise FunctxError(f"functx: in-place op {func} has no functional variant to functionalize")
    if torch.Tag.inplace_view in func.tags:
        return _inplace_view(func, functional, args, kwargs)
    result = dispatch(functional, args, kwargs)
    write(target, unwrap(result))
    return target


def _inplace_view(func, functional, args, kwargs):
    """squeeze_, unsqueeze_, transpose_, t_, ...: they change the target's shape, not its
    values. The wrapper's own sizes/strides are updated by running the op on it with
    dispatch off (as torch's FunctionalTensor does); its value becomes the view's."""
    target = args[0]
    view = dispatch(functional, args, kwargs)
    with torch.utils._mode_utils.no_dispatch():
        func(*args, **kwargs)
    if target._root is None:
        target._value = value_of(view)     # a root stays a root, with the new shape
    else:
        target._value, target._chain, target._seen = view._value, view._chain, view._seen
    return target


# ---------------------------------------------------------------- special ops on wrappers

@register_special(aten.copy_.default)
def _copy_(target, src, non_blocking=False):
    write(target, unwrap(src))
    return target


@register_special(aten._local_scalar_dense.default)
def _item(x):
    return concrete(unwrap(x)).item()


register_special(aten.equal.default)(lambda a, b: bool(torch.equal(concrete(unwrap(a)), concrete(unwrap(b)))))
