"""Dtype rules that live in PyTorch's kernels, not in its meta functions: "hypot_cpu" not
implemented for 'Long', subtraction or relu of bools, bitwise ops on floats. functx's
lowerings compute in dtypes of their own and would accept them, so before a pointwise op
is lowered, torch's own kernel runs once on one-element tensors of the same dtypes, ranks
and device (cached per signature), and what it raises is raised here."""
from __future__ import annotations

import torch
from torch.utils._pytree import tree_map

from ..core.errors import user_frame_summary

# Probe values: an error that some of them avoid depends on values (mvlgamma's domain,
# integer powers), which a trace does not know, so only an error raised for all is a rule.
_PROBE_VALUES = (1, 2, 100)
_VERDICTS: dict = {}


def _leaf_key(x):
    kind = type(x)
    if kind is float:
        return float        # a float's value never decides a dtype rule (and changes per call:
    if kind is int or kind is bool:          # learning rates, schedules); an int's can (pow)
        return kind, x
    if isinstance(x, torch.Tensor):
        return x.dtype, x.ndim, x.device
    if kind is list or kind is tuple:
        return tuple([_leaf_key(v) for v in x])
    return x if isinstance(x, (str, torch.dtype, type(None))) else repr(x)


def _signature(args, kwargs):
    key = []
    for a in args:      # tensors and numbers inline: this runs for every pointwise ATen op
        kind = type(a)
        if isinstance(a, torch.Tensor):
            key.append((a.dtype, a.ndim, a.device))
        elif kind is float:
            key.append(float)
        elif kind is int or kind is bool:
            key.append((kind, a))
        else:
            key.append(_leaf_key(a))
    if kwargs:
        key += [(k, _leaf_key(v)) for k, v in kwargs.items()]
    return tuple(key)


def _probe(func, args, kwargs, value):
    def one(x):
        if isinstance(x, torch.Tensor):
            return torch.full((1,) * x.dim(), value, dtype=x.dtype, device=x.device)
        return x
    with torch.no_grad():
        func(*tree_map(one, args), **tree_map(one, kwargs))


def _verdict(func, args, kwargs):
    """None if torch's kernel accepts these dtypes, else the (type, message) it raises."""
    first = None
    for value in _PROBE_VALUES:
        try:
            _probe(func, args, kwargs, value)
            return None
        except Exception as e:     # torch's kernel rejected the probe: remember why
            first = first or (type(e), str(e).splitlines()[0] if str(e) else type(e).__name__)
    return first


def check_kernel_accepts(func, args, kwargs):
    """Raise what eager PyTorch raises for this pointwise op's dtypes, if it does."""
    key = (id(func), _signature(args, kwargs))     # id: OpOverload.__hash__ is Python code
    found = _VERDICTS.get(key)
    if found is None or found[0] is not func:
        if len(_VERDICTS) >= 4096:
            _VERDICTS.clear()
        found = _VERDICTS[key] = (func, _verdict(func, args, kwargs))
    verdict = found[1]
    if verdict is not None and not _runs_on_empty(func, args, kwargs):
        kind, message = verdict
        message = f"{message}\n(eager PyTorch rejects {func} for these dtypes)\n{user_frame_summary()}"
        try:
            error = kind(message)
        except Exception:          # an exception type with another constructor
            error = RuntimeError(message)
        raise error


def _runs_on_empty(func, args, kwargs) -> bool:
    """Whether some tensor operand has no elements and torch's kernel runs on empty tensors of
    these shapes: a rule about values (integer division by zero) holds for no element then,
    and eager torch returns the empty result."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)] + \
        [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
    if not any(type(n) is int and n == 0 for n in (t.numel() for t in tensors)):
        return False

    def empty(x):
        if isinstance(x, torch.Tensor):
            return torch.empty(tuple(int(n) for n in x.shape), dtype=x.dtype, device=x.device)
        return x
    try:
        with torch.no_grad():
            func(*tree_map(empty, args), **tree_map(empty, kwargs))
    except Exception:      # noqa: BLE001  a dtype rule: it holds for empty tensors too
        return False
    return True


_POINTWISE: dict = {}


# Elementwise in torch's kernels but not tagged pointwise in its schema.
_UNTAGGED_POINTWISE = frozenset({torch.ops.aten.floor_divide.default, torch.ops.aten.floor_divide.Scalar})


def is_pointwise(func) -> bool:
    answer = _POINTWISE.get(func)
    if answer is None:
        answer = _POINTWISE[func] = torch.Tag.pointwise in func.tags or func in _UNTAGGED_POINTWISE
    return answer
