"""TracerTensor: the torch.Tensor that user code sees while functx traces it.

It is a wrapper subclass with the real shape, dtype and device of the value it stands
for, and `__torch_dispatch__` maps each ATen op onto primitives (frontend/aten.py), then
PyTorch's decomposition tables, then the opaque fallback (frontend/fallback.py).

In-place ops and views are functionalized here: a view remembers its root and the chain
of view ops that produced it; writing into a view scatters the new values into the root
and bumps the root's version; other views of that root recompute lazily when read.
"""
from __future__ import annotations

import torch
from torch.utils._pytree import tree_map

from ..core.errors import FunctxError
from ..core.trace import Tracer, concrete, type_of


_disabled_torch_function = torch._C._disabled_torch_function_impl


class TracerTensor(torch.Tensor):
    """The torch.Tensor a function sees while functx transforms or traces it: real shape,
    dtype and device, and a traced value inside. Ordinary PyTorch code runs on it unchanged;
    each ATen op becomes functx primitives. Users never construct one."""
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        # A pass-through: its presence makes has_torch_function() true, which keeps
        # nn modules off fused inference fast paths (_transformer_encoder_layer_fwd,
        # _native_multi_head_attention) that have no derivative formulas.
        # torch's own pass-through (in C++), as if the subclass had no __torch_function__.
        return _disabled_torch_function(func, types, args, kwargs or {})

    @staticmethod
    def __new__(cls, value):
        if isinstance(value, torch.Tensor):     # no TensorType needed: read the tensor directly
            shape, dtype, device = value.shape, value.dtype, value.device
        else:
            t = value.aval
            shape, dtype, device = t.shape, t.dtype, t.device
        if dtype.is_complex:
            _unsupported_dtype(type_of(value))
        r = torch.Tensor._make_wrapper_subclass(cls, shape, dtype=dtype, device=device,
                                                requires_grad=False)
        r._value = value
        r._root = None          # root TracerTensor when this is a view
        r._chain = None         # view ops from the root: [(func, args, kwargs, output_index)]
        r._seen = 0             # root version this view's value was computed at
        r._version_ = 0         # bumped on each write (roots only)
        return r

    def __repr__(self, *, tensor_contents=None):
        return f"TracerTensor({type_of(self._value)}, {type(self._value).__name__})"

    def __format__(self, spec):
        return repr(self)

    # torch refuses these for tensor subclasses; they need the concrete value, which exists
    # in eager transforms and raises ConcretizationError under jit.
    def tolist(self):
        return concrete(value_of(self)).tolist()

    def numpy(self, *, force=False):
        return concrete(value_of(self)).numpy(force=force)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        from .dispatch import dispatch
        return dispatch(func, args, kwargs or {})


def _unsupported_dtype(t):
    from ..core.errors import user_frame_summary
    raise FunctxError(
        f"functx does not support complex tensors yet: a traced value of type {t} was created "
        f"here:\n{user_frame_summary()}\nfunctx's primitives and derivative rules are real-valued "
        "(complex results would be silently wrong). Keep real and imaginary parts as separate real "
        "tensors inside the transformed function (torch.view_as_real on inputs, outside it).")


def value_of(w: TracerTensor):
    """The current lax value of a wrapper (recomputing a stale view)."""
    root = w._root
    if root is not None and w._seen != root._version_:
        from .dispatch import apply_view_chain
        w._value = apply_view_chain(value_of(root), w._chain)
        w._seen = root._version_
    return w._value


def unwrap(x):
    if isinstance(x, TracerTensor):
        return value_of(x)
    return x


def wrap(x):
    if isinstance(x, Tracer):
        return TracerTensor(x)
    return x


def unwrap_tree(tree):
    """unwrap over the containers ATen arguments use (tuples, lists, dicts), without the
    generic pytree machinery on the hot path; other container types go through tree_map."""
    t = type(tree)
    if t is tuple:
        return tuple([_unwrap_any(x) for x in tree])
    if t is list:
        return [_unwrap_any(x) for x in tree]
    if t is dict:
        return {k: _unwrap_any(v) for k, v in tree.items()}
    return _unwrap_any(tree)


def _unwrap_any(x):
    t = type(x)
    if t is TracerTensor:
        return value_of(x)
    if t is tuple or t is list or t is dict:
        return unwrap_tree(x)
    if t in _PLAIN_LEAVES:
        return x
    return tree_map(unwrap, x)


_PLAIN_LEAVES = frozenset({int, float, bool, type(None), str, torch.Tensor, torch.dtype, torch.device,
                           torch.layout, torch.memory_format})


def wrap_tree(tree):
    return tree_map(wrap, tree)


def assign(w, new_value) -> None:
    """Functionalized write of a whole value into wrapper `w` (same shape and dtype)."""
    if not isinstance(w, TracerTensor):
        from ..core.errors import user_frame_summary
        raise FunctxError(
            f"An in-place operation writes a traced value into a plain tensor ({type_of(w)}), one "
            "created inside the transformed function (for example with torch.zeros(...)) or "
            f"captured from outside it:\n{user_frame_summary()}\nfunctx cannot track writes into that "
            "tensor. Create it from a traced input instead (x.new_zeros(...), torch.zeros_like(x)), "
            "or build the result out of place (torch.stack, torch.cat, torch.where).")
    root = w._root
    if root is None:
        w._value = new_value
        w._version_ += 1
        return
    from .dispatch import scatter_into_view
    assign(root, scatter_into_view(value_of(root), root, w._chain, new_value))
    w._value = new_value
    w._seen = root._version_
