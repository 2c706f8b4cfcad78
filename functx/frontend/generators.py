"""Explicit torch.Generators (`torch.randn(..., generator=g)`) under functx.

Eager transforms draw from a generator as torch does. Under jit the function runs once, at
trace time: a generator passed as an argument of the jitted function gets a slot that jit
binds to the generator of each call, and the traced sampler draws from it when the compiled
function runs (its state read then and advanced, as eager PyTorch's is). Any other generator
(created inside the function, which eager PyTorch recreates on every call, or closed over)
raises: the trace-time object would make results depend on call history.
"""
from __future__ import annotations

import contextlib

import torch

from ..core.errors import FunctxError, user_frame_summary
from ..core.trace import staging, staging_trace


class GeneratorSlot:
    """The torch.Generator one generator argument of a jitted function holds in this call."""
    __slots__ = ("current",)

    def __init__(self, generator):
        self.current = generator


_ARGUMENT_GENERATORS: list = []     # while jit traces: {generator argument's _cdata: slot}


@contextlib.contextmanager
def generator_arguments(leaves):
    """While jit traces f: the torch.Generators among its argument leaves get slots. Yields
    [(leaf index, slot)], which jit binds before each call of the compiled function."""
    slots, by_id = [], {}
    for k, leaf in enumerate(leaves):
        if isinstance(leaf, torch.Generator):
            slot = by_id.setdefault(leaf._cdata, GeneratorSlot(leaf))
            slots.append((k, slot))
    _ARGUMENT_GENERATORS.append(by_id)
    try:
        yield slots
    finally:
        _ARGUMENT_GENERATORS.pop()


def drawing_from(draw, generator, name):
    """draw(generator) -> a sample, as a function of no arguments run afresh on every call:
    eagerly with `generator` itself; staged (jit), with the generator argument of each call."""
    if generator is None or not staging():
        return lambda: draw(generator)
    # (the dispatcher hands an op a new Python object for the same C++ generator: _cdata)
    slot = _ARGUMENT_GENERATORS[-1].get(generator._cdata) if _ARGUMENT_GENERATORS else None
    if slot is None:
        raise FunctxError(
            f"functx.jit: {name} draws from a torch.Generator that is not an argument of the jitted "
            f"function, here:\n{user_frame_summary()}\njit runs the function once, at trace time, so "
            "a generator created inside it (which eager PyTorch recreates on every call) or closed "
            "over would be that one object on every call, and results would depend on call history. "
            "Pass the generator as an argument: functx.jit(f)(x, gen) draws from gen's state at each "
            "call and advances it, as eager PyTorch does (for the same numbers on every call, pass "
            "torch.Generator().manual_seed(seed) made outside, or use the global generator).")
    return lambda: draw(slot.current)


# torch.manual_seed inside a jitted function runs once, at trace time: eager PyTorch reseeds on
# every call (the same numbers each call), a compiled call would not. torch has no hook for it
# (not an ATen op), so functx wraps it, as it wraps autograd.Function.apply: while a graph is
# staged it marks the trace, and a draw from the global generator after it raises
# (prims/random.py); a seed nothing draws after (OpInfo's wrapper_set_seed around a
# deterministic op) changes nothing. torch.set_rng_state (a state saved with get_rng_state and
# restored to draw the same numbers again; fork_rng's exit) the same: the draws after it would
# replay the trace-time state once, not the state of each call.
def _marking_the_trace(torch_fn):
    def wrapper(*args, **kwargs):
        trace = staging_trace()
        if trace is not None:
            trace.seeded_at = trace.seeded_at or user_frame_summary()
        return torch_fn(*args, **kwargs)

    wrapper.__doc__, wrapper.__name__, wrapper.__wrapped__ = torch_fn.__doc__, torch_fn.__name__, torch_fn
    return wrapper


_manual_seed = _marking_the_trace(torch.manual_seed)
torch.manual_seed = torch.random.manual_seed = _manual_seed
torch.set_rng_state = torch.random.set_rng_state = _marking_the_trace(torch.set_rng_state)
