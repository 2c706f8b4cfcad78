"""jit's cache: signature keys, an LRU of entries with a size limit, and why each retrace
happened (which argument changed, and how), for cache_info() and explain."""
from __future__ import annotations

import collections
import inspect
import struct
import warnings
from dataclasses import dataclass, field

import torch

from ..frontend.staging import is_dynamic_scalar, is_sparse_constant

DEFAULT_CACHE_LIMIT = 32
# A dimension that has retraced this many times gets one warning (before the cache fills).
DIM_WARN_AFTER = 8


def value_key(value):
    """The cache key of a static argument: its type and value, with floats by their bits
    (Python says 2 == 2.0 == True and 0.0 == -0.0, and nan != nan; a trace specialized to one
    of those must not serve the others, and a nan must hit the cache)."""
    if isinstance(value, float):
        return float, struct.pack("<d", value)
    return type(value), value


def leaf_key(leaf):
    """One leaf's part of the key: a tensor's (shape, dtype, device, strides); a dynamic Python
    number's type alone (one trace serves every value); any other value itself. Strides are
    part of it (as torch.compile guards on them): the traced function sees them (x.stride(),
    whether reshape or contiguous() copies, as_strided)."""
    if isinstance(leaf, torch.Tensor):
        if is_sparse_constant(leaf):        # a constant of the trace: this very tensor
            return _Identity(leaf)
        return (leaf.shape, leaf.dtype, leaf.device, leaf.stride())
    if is_dynamic_scalar(leaf):
        return type(leaf)
    if isinstance(leaf, torch.Generator):     # drawn from at run time: one trace serves every one
        return torch.Generator, str(leaf.device)
    return value_key(leaf)


class _Identity:
    """A key part equal only for the same object, which it keeps alive (so its id is never
    another's while the cache entry lives)."""
    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return type(other) is _Identity and other.obj is self.obj

    def __repr__(self):
        o = self.obj
        return f"sparse tensor {o.dtype}{list(o.shape)} at {id(o):#x} (a constant of the trace)"


def _describe_leaf_key(k):
    if _is_tensor_key(k):
        return f"tensor {k[1]}{list(k[0])} on {k[2]}"
    if isinstance(k, type):
        return f"Python {k.__name__} (dynamic)"
    if isinstance(k, _Identity):
        return repr(k)
    kind, value = k
    if kind is float:
        value = struct.unpack("<d", value)[0]
    return f"{kind.__name__} {value!r} (static)"


def _is_tensor_key(k):
    return isinstance(k, tuple) and len(k) == 4 and isinstance(k[1], torch.dtype)


def _leaf_change(old, new):
    """How one leaf's key changed, in words."""
    if _is_tensor_key(old) and _is_tensor_key(new):
        parts = []
        if len(old[0]) != len(new[0]):
            parts.append(f"rank {len(old[0])} -> {len(new[0])} (shape {list(old[0])} -> {list(new[0])})")
        else:
            parts += [f"dim {d} size {a} -> {b}" for d, (a, b) in enumerate(zip(old[0], new[0])) if a != b]
        if old[1] != new[1]:
            parts.append(f"dtype {old[1]} -> {new[1]}")
        if old[2] != new[2]:
            parts.append(f"device {old[2]} -> {new[2]}")
        if old[3] != new[3] and old[0] == new[0]:
            parts.append(f"strides {old[3]} -> {new[3]}")
        return ", ".join(parts)
    return f"{_describe_leaf_key(old)} -> {_describe_leaf_key(new)}"


class ArgNamer:
    """Names a pytree leaf of jit's (dynamic args, kwargs) tree after f's parameters."""

    def __init__(self, f):
        try:
            params = list(inspect.signature(f).parameters.values())
        except (TypeError, ValueError):
            params = []
        self.positional = [p.name for p in params
                           if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def argnums_of(self, names):
        return tuple(i for i, n in enumerate(self.positional) if n in names)

    def argnames_of(self, nums):
        return tuple(self.positional[i] for i in nums if 0 <= i < len(self.positional))

    def __call__(self, path):
        """path: (0, position, ...) or (1, keyword, ...)."""
        where, name, rest = path[0], path[1], path[2:]
        if where == 0:
            i = name
            label = f"argument {self.positional[i]!r}" if i < len(self.positional) else f"argument {i}"
        else:
            label = f"argument {name!r}"
        return label + "".join(f"[{p!r}]" for p in rest)


@dataclass
class Retrace:
    """One trace after the first: why the cache missed."""
    changes: list            # [(argument label, change in words)]
    dims: list = field(default_factory=list)     # [(argument label, dim)] whose size changed

    def __str__(self):
        return "; ".join(f"{who}: {what}" for who, what in self.changes)


@dataclass
class CacheInfo:
    """What functx.jit(f).cache_info() returns; str() is a report."""
    traces: int
    hits: int
    size: int
    limit: int
    evictions: int
    entries: list = field(default_factory=list)     # one description per cached signature
    retraces: list = field(default_factory=list)    # Retrace per trace after the first

    def __str__(self):
        lines = [f"functx.jit cache: {self.size} entries (limit {self.limit}), {self.traces} traces, "
                 f"{self.hits} hits, {self.evictions} evictions"]
        lines += [f"  entry {i}: {e}" for i, e in enumerate(self.entries)]
        lines += [f"  retrace {i + 1}: {r}" for i, r in enumerate(self.retraces)]
        return "\n".join(lines)


class SignatureCache:
    """An LRU of entries by key; records why each miss after the first happened and warns
    once when the limit evicts, naming the argument that keeps changing."""

    def __init__(self, limit, namer, warn_on_retrace, name):
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValueError(f"functx.jit: cache_limit must be a positive int or None, got {limit!r}")
        self.limit = limit
        self.namer = namer
        self.warn_on_retrace = warn_on_retrace
        self.name = name
        self.entries = collections.OrderedDict()     # key -> entry, least recently used first
        self.retraces: list[Retrace] = []
        self.changed = collections.Counter()         # argument label -> retraces it caused
        self.dim_changes = collections.Counter()     # (argument label, dim) -> retraces
        self.hits = 0
        self.traces = 0
        self.evictions = 0
        self._warned = False

    def get(self, key):
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
            self.hits += 1
        return entry

    def static_label(self, i):
        return self.namer((0, i)) if isinstance(i, int) else f"argument {i!r}"

    def why_miss(self, key) -> Retrace | None:
        """Compared with the most recently used entry: which arguments changed, and how."""
        if not self.entries:
            return None
        old = next(reversed(self.entries))
        if not isinstance(old, tuple) or len(old) < 3 or old[0] != key[0]:
            return Retrace([("arguments", f"pytree structure {old[0]} -> {key[0]}")])
        paths = key[0].paths()
        changes = [(self.namer(paths[k]), _leaf_change(a, b))
                   for k, (a, b) in enumerate(zip(old[1], key[1])) if a != b]
        dims = [(self.namer(paths[k]), d) for k, (a, b) in enumerate(zip(old[1], key[1]))
                if a != b and _is_tensor_key(a) and _is_tensor_key(b) and len(a[0]) == len(b[0])
                for d, (m, n) in enumerate(zip(a[0], b[0])) if m != n]
        for (i, a), (_, b) in zip(old[2], key[2]):
            if a != b:
                changes.append((self.static_label(i), _leaf_change(a, b)))
        for a, b in zip(old[3:], key[3:]):
            if a != b and isinstance(a, tuple) and a[:1] == ("module train/eval flags",):
                changes.append(("modules", "train/eval mode changed (module.train() / .eval())"))
            if a != b and isinstance(a, tuple) and a[:1] == ("torch state",):
                changes.append(("torch", _describe_state(a, b)))
            if a != b and isinstance(a, tuple) and a[:1] == ("dict key order",):
                changes.append(("arguments", f"the key order of a dict argument {a[1]} -> {b[1]} (f sees "
                                             "a dict's insertion order)"))
        return Retrace(changes or [("arguments", "unknown")], dims)

    def add(self, key, entry, reason_key=None, reason=None):
        """reason_key: the call's own key when `key` is a symbolic entry's (dims masked);
        reason: why the same key is traced again (a closure guard failed)."""
        retrace = (Retrace([("closed-over tensors", reason)]) if reason is not None
                   else self.why_miss(key if reason_key is None else reason_key))
        self.traces += 1
        if retrace is not None:
            self.retraces.append(retrace)
            del self.retraces[:-100]
            for who, _ in retrace.changes:
                self.changed[who] += 1
            for who_dim in retrace.dims:
                self.dim_changes[who_dim] += 1
                if self.dim_changes[who_dim] == DIM_WARN_AFTER:
                    self._warn_dim(*who_dim)
            if self.warn_on_retrace:
                warnings.warn(f"functx.jit: retracing {self.name} ({self.traces} traces): {retrace}",
                              stacklevel=4)
        self.entries[key] = entry
        evicted = []
        while self.limit is not None and len(self.entries) > self.limit:
            evicted.append(self.entries.popitem(last=False)[1])
            self.evictions += 1
            self._warn_limit()
        return evicted

    def _warn_dim(self, who, dim):
        warnings.warn(
            f"functx.jit: dim {dim} of {who} has changed size {DIM_WARN_AFTER} times in calls of "
            f"{self.name}, and each new size traced and compiled again (symbolic dims are off, "
            "failed for this function, or Python decided something on each size: "
            "functx.explain(f)(...) and cache_info() say which). Pad that dimension to a few "
            "bucket sizes (e.g. the next power of two, with a mask) to reuse traces; the cache "
            f"keeps at most {self.limit} signatures (functx.jit(f, cache_limit=...)).",
            stacklevel=5)

    def _warn_limit(self):
        if self._warned:
            return
        self._warned = True
        who = ", ".join(w for w, _ in self.changed.most_common(2)) or "the arguments"
        warnings.warn(
            f"functx.jit: {self.name} reached its cache limit of {self.limit} traced signatures "
            f"and now evicts the least recently used; the retraces come from changes of {who} "
            f"(functx.jit(f).cache_info() lists them). A dimension that keeps changing retraces "
            "once per size: pad it to a few sizes (e.g. the next power of two, with a mask); mark "
            "a Python argument that keeps changing dynamic (do not list it in static_argnums/"
            "static_argnames); or raise the limit with functx.jit(f, cache_limit=...).",
            stacklevel=4)

    def info(self):
        entries = []
        for key in self.entries:
            paths = key[0].paths()
            parts = [f"{self.namer(p)}={_describe_leaf_key(k)}" for p, k in zip(paths, key[1])]
            parts += [f"{self.static_label(i)}={_describe_leaf_key(k)}" for i, k in key[2]]
            notes = "".join(f"\n      {n}" for n in getattr(self.entries[key], "notes", ()))
            entries.append((", ".join(parts) or "(no arguments)") + notes)
        return CacheInfo(self.traces, self.hits, len(self.entries), self.limit, self.evictions,
                         entries, list(self.retraces))


_AUTOCAST_DEVICES = ("cpu", "cuda")


def torch_state():
    """The ambient torch settings a trace bakes in, a part of every jit key: the default
    dtype (`torch.zeros(3)`, `torch.arange(3.0)` inside f) and autocast (a trace under
    `torch.autocast` records its casts; the fused CPU kernels do not autocast), so a graph
    traced in one state never serves a call in another."""
    dtype = torch.get_default_dtype()
    if not torch._C._is_any_autocast_enabled():
        return ("torch state", dtype, None)
    return ("torch state", dtype, tuple((d, torch.get_autocast_dtype(d)) for d in _AUTOCAST_DEVICES
                                        if torch.is_autocast_enabled(d)))


def _describe_state(a, b):
    if a[1] != b[1]:
        return f"default dtype {a[1]} -> {b[1]} (torch.set_default_dtype)"
    return f"autocast {a[2] or 'off'} -> {b[2] or 'off'}"


_HOLDS_DICT: dict = {}


def dict_orders(treedef, tree):
    """The key order of each dict among f's arguments, or None when they hold none: optree
    flattens a dict in sorted key order, and {'b': .., 'a': ..} and {'a': .., 'b': ..} have
    equal treedefs, but f sees the insertion order (`torch.cat(list(d.values()))`), so a
    graph traced with one order must not serve a call with the other."""
    holds = _HOLDS_DICT.get(treedef)
    if holds is None:
        if len(_HOLDS_DICT) > 4096:
            _HOLDS_DICT.clear()
        holds = _HOLDS_DICT[treedef] = repr(treedef).count("{") > 1   # (the kwargs dict is one)
    if not holds:
        return None
    out = []
    _dict_orders(tree, out, 0)
    return tuple(out)


def _dict_orders(v, out, depth):
    if depth > 32:
        return
    if isinstance(v, dict):
        if len(v) > 1 and not isinstance(v, collections.OrderedDict):   # (an OrderedDict's order is in its treedef)
            out.append(tuple(v))
        for e in v.values():
            _dict_orders(e, out, depth + 1)
    elif isinstance(v, (tuple, list)):
        for e in v:
            _dict_orders(e, out, depth + 1)


def make_key(treedef, leaves, static):
    """static: [(position or name, value)]."""
    return (treedef, tuple([leaf_key(leaf) for leaf in leaves]),
            tuple([(i, value_key(s)) for i, s in static]))

