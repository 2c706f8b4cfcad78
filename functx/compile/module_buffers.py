"""The module state jit passes as arguments, so that in-place updates of it are written back
each call (jit.py's `_buffers_as_arguments`): the buffers of the modules f reaches
(closure_guard.ReachedModules) and of the modules passed to it (gpt-fast's
`decode_one_token(model, x, input_pos)`, a jitted method's self), while one of their
buffer owners trains (BatchNorm's running statistics) or, once a trace raised
PlainWriteError, always (an eval-mode forward that writes a KV cache). Then the plain tensor
attributes of those modules count too (Meta's Llama reference keeps its cache as
`self.cache_k = torch.zeros(...)`, unregistered, and writes `self.cache_k[:b, s:s+t] = xk`).
"""
from __future__ import annotations

import torch

from .closure_guard import _trains_buffers


def tensor_attributes(module) -> dict:
    """The plain tensors (not parameters, not registered buffers) held as attributes of
    module and its submodules, by dotted name."""
    out = {}
    for prefix, sub in module.named_modules():
        for name, value in vars(sub).items():
            if type(value) is torch.Tensor:
                out[f"{prefix}.{name}" if prefix else name] = value
    return out


def buffer_arguments(modules, always) -> dict | None:
    """{module index: its buffers by name} for the modules whose buffers may be written now
    (always, or a submodule owning buffers trains); None when there are none (eval: buffers
    are only read, closed over). With always, plain tensor attributes count as buffers."""
    out = {}
    for i, m in enumerate(modules):
        if isinstance(m, torch.nn.Module) and (always or _trains_buffers(m)):
            buffers = dict(m.named_buffers())
            if always:
                buffers.update(tensor_attributes(m))
            if buffers:
                out[i] = buffers
    return out or None


class SwappedBuffers:
    """Puts given tensors in place of module buffers (or plain tensor attributes) for the
    duration of a trace (what torch.func.functional_call does, for buffers only), and
    restores them."""

    def __init__(self, modules, buffers):
        self.modules, self.buffers, self.saved = modules, buffers, []

    def __enter__(self):
        for i, named in self.buffers.items():
            for name, value in named.items():
                owner_name, _, leaf = name.rpartition(".")
                owner = self.modules[i].get_submodule(owner_name) if owner_name else self.modules[i]
                store = owner._buffers if leaf in owner._buffers else owner.__dict__
                self.saved.append((store, leaf, store[leaf]))
                store[leaf] = value

    def __exit__(self, *exc):
        for store, leaf, old in reversed(self.saved):
            store[leaf] = old
        self.saved = []
