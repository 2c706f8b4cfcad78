"""In-place writes into a transform's inputs reach the caller's tensors (torch.func's jvp
writes the primal part back; vmap's are in api.py). f runs on wrappers of the caller's
values; `record` notes the inputs f wrote (inside the level), `write_back` copies their
primal values into the caller's tensors once the level has ended."""
from __future__ import annotations

import torch

from ..core import current_trace
from ..core.errors import FunctxError
from ..core.trace import Tracer
from ..frontend import TracerTensor, unwrap, wrap
from .jvp import JVPTracer


def record(store, wrapped_inputs):
    """Inside f's level: the inputs f wrote in place, as (index, value, level)."""
    written = [i for i, w in enumerate(wrapped_inputs) if type(w) is TracerTensor and w._version_]
    if written:
        level = current_trace()
        store.written = [(i, unwrap(wrapped_inputs[i]), level) for i in written]


def primal_values(store):
    """After the level ended: [(index, the written input's primal value)]."""
    out = []
    for i, v, level in getattr(store, "written", None) or ():
        while isinstance(v, JVPTracer) and v._trace is level:
            v = v.primal
        out.append((i, v))
    return out


def _storage(t):
    if isinstance(t, torch.Tensor) and not isinstance(t, TracerTensor) and t.layout == torch.strided:
        try:
            return t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):
            return None
    return None


def write_back(writes, sources, keep=()):
    """Copy each written input's new value into the caller's tensor (sources[i]). keep: lists
    of values the transform hands out later (outputs, a linear graph's residuals); a plain
    tensor among them that shares memory with a caller's tensor about to be written keeps
    its old values (it is cloned first), as the function computed with them."""
    if not writes:
        return
    refuse_aliased(writes, sources)
    targets = {_storage(sources[i]) for i, _ in writes} - {None}
    if targets:
        for values in keep:
            for k, c in enumerate(values):
                if _storage(c) in targets:
                    values[k] = c.clone()
    for i, v in writes:
        src = sources[i]
        if isinstance(src, torch.Tensor):
            src.copy_(wrap(v))


def refuse_aliased(writes, sources):
    """f ran on one wrapper per input, each its own tensor: a write into an input that shares
    memory with another input (the same tensor passed twice, a view of another argument) was
    not seen through the other, unlike eager PyTorch and torch.func. Raise, as jit does."""
    storages = [_storage(s) if isinstance(s, torch.Tensor) and s.numel() else None for s in sources]
    for i, _ in writes:
        for j, s in enumerate(storages):
            if j != i and s is not None and s == storages[i]:
                raise FunctxError(
                    f"functx: the function wrote in place into its tensor input {i}, which shares memory "
                    f"with its tensor input {j} (the same tensor passed twice, or a view of another "
                    "argument). Inside the transform they are separate tensors, so the other did not see "
                    "the write, unlike eager PyTorch. Pass separate tensors (e.g. b.clone()), or return "
                    "the new value instead of writing into an aliased argument.")


def outside_vmap(writes, who):
    """jacfwd's collected writes, computed inside its vmap over the basis: values of the
    caller's level (a primal never depends on the tangents), or an error naming who."""
    active, t = set(), current_trace()
    while t is not None:
        active.add(id(t))
        t = t.parent
    for i, v in writes:
        if isinstance(v, Tracer) and id(v._trace) not in active:
            raise FunctxError(f"{who}: f writes into its input {i} in place a value that differs between "
                              "the rows of the Jacobian (a random draw?); functx cannot write it back to "
                              "the caller's tensor. Write into a clone of the input.")
    return writes
