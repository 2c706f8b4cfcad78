"""The module state jit passes as arguments, so that in-place updates of it are written back
each call (jit.py's `_buffers_as_arguments`): the buffers of the modules f reaches
(closure_guard.ReachedModules) and of the modules passed to it (gpt-fast's
`decode_one_token(model, x, input_pos)`, a jitted method's self), while one of their
buffer owners trains (BatchNorm's running statistics) or, once a trace raised
PlainWriteError, always (an eval-mode forward that writes a KV cache). Then the plain tensor
attributes of those modules count too (Meta's Llama reference keeps its cache as
`self.cache_k = torch.zeros(...)`, unregistered, and writes `self.cache_k[:b, s:s+t] = xk`).

And `leaked_into` / `leaked_into_reached`: the traced values in the state of a plain object
passed to f or reached by it (an HF-style cache whose lists f appends to); one that a trace
left there, later calls, running the compiled graph, would neither update nor read.
"""
from __future__ import annotations

import types

import torch

from ..core.errors import FunctxError
from ..frontend import TracerTensor
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
                self.saved.append((store, leaf, store[leaf], value, f"{type(self.modules[i]).__name__}.{name}"))
                store[leaf] = value

    def __exit__(self, kind, *exc):
        rebound = [name for store, leaf, _, value, name in self.saved if store.get(leaf) is not value]
        for store, leaf, old, _, _ in reversed(self.saved):
            store[leaf] = old
        self.saved = []
        if rebound and kind is None:
            # eager code leaves the new tensor in the module; the compiled graph can write into
            # the buffer jit passes, not put another tensor in its place
            raise FunctxError(
                f"functx.jit: f puts a new tensor in the place of a module buffer ({', '.join(rebound)}: "
                "`self.cache = self.cache.to(x)` with another dtype or device, `self.cache = torch.cat(...)`). "
                "Under jit later calls cannot rebind it, so the module would keep its old buffer. Convert "
                "or allocate the buffer before calling the jitted function (model.to(dtype), a fixed-size "
                "cache written in place), or call f without jit.")


_NOT_STATE = (torch.Tensor, torch.nn.Module, type, types.ModuleType)


def _walk(v, path, depth, seen):
    """(path, value) of the TracerTensors in v: a plain object's attributes, a list's, tuple's
    or dict's entries, at most 3 levels down."""
    if isinstance(v, TracerTensor):
        yield path, v
        return
    if depth > 3 or id(v) in seen or isinstance(v, _NOT_STATE) or callable(v):
        return
    seen.add(id(v))
    try:        # (a proxy object may raise anything when asked for its __dict__)
        if isinstance(v, (list, tuple)):
            items = [(f"{path}[{k}]", e) for k, e in enumerate(v[:256])]
        elif isinstance(v, dict):
            items = [(f"{path}[{k!r}]", e) for k, e in list(v.items())[:256]]
        elif hasattr(v, "__dict__"):
            items = [(f"{path}.{k}", e) for k, e in list(vars(v).items())[:256]]
        else:
            return
    except Exception:
        return
    for p, e in items:
        yield from _walk(e, p, depth + 1, seen)


def leaked_into(args, kwargs, leaves_of):
    """('argument 1 (a Cache): k[0]', value) for each traced value in the state of a plain
    object (not a module, tensor or container leaf) among f's arguments."""
    seen: set = set()
    named = [(f"argument {i}", a) for i, a in enumerate(args)] + [(f"argument {k!r}", a) for k, a in kwargs.items()]
    for name, arg in named:
        for leaf in leaves_of(arg):
            if not isinstance(leaf, _NOT_STATE) and not callable(leaf):
                for path, value in _walk(leaf, "", 1, seen):
                    yield f"{name} (a {type(leaf).__name__}): {path.lstrip('.')}", value


def leaked_into_reached(f, modules):
    """The same (path, value) for the objects f reaches: a plain object or a list / dict in
    its closure or in the globals its code names (`cache = DynamicCache()`), and those held
    by the modules it reaches or is passed (`self.cache`; a tensor attribute itself,
    `self.last_attention = attn`, is left alone: it is only read after the call, where it
    raises as a leaked tracer)."""
    seen: set = set()
    for _ in range(3):                      # jit(grad(f)): the functions a wrapper wraps
        code = getattr(f, "__code__", None)
        if code is not None:
            named = []
            for name, cell in zip(code.co_freevars, f.__closure__ or ()):
                try:
                    named.append((name, cell.cell_contents))
                except ValueError:          # an empty cell
                    pass
            glob = getattr(f, "__globals__", {})
            named += [(n, glob[n]) for n in code.co_names if n in glob]
            for name, v in named:
                yield from _walk(v, name, 1, seen)
        f = getattr(f, "__wrapped__", None)
        if f is None:
            break
    for m in modules:
        if isinstance(m, torch.nn.Module):
            for prefix, sub in m.named_modules():
                for k, v in vars(sub).items():
                    if not k.startswith("_") and not isinstance(v, torch.Tensor):
                        yield from _walk(v, f"{type(m).__name__}.{prefix + '.' if prefix else ''}{k}", 1, seen)
