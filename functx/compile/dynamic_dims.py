"""Which tensor dimensions jit traces symbolically, and finding the symbolic entry that
serves a call.

A *pattern* is a cache key without the sizes: pytree structure, rank/dtype/device per
tensor, the other leaves and static values. Per pattern jit remembers the first sizes it saw;
a dim whose size differs later is dynamic from then on (torch.compile's "automatic dynamic"),
as is every dim the user marked (`dynamic=True`, `dynamic_dims=`). The next trace for that
pattern is symbolic in those dims (symbolic.py). A symbolic entry serves a call when the
call's key equals the entry's key outside its symbolic dims and the entry's guards hold
for the call's sizes; otherwise jit traces again (a new symbolic entry, e.g. the other side
of an `if x.shape[0] > 5`), and cache_info says why.
"""
from __future__ import annotations

import collections

from ..core.errors import user_line_of
from ..frontend.tensor import is_contiguous_layout
from .jit_cache import _is_tensor_key
from .symbolic import SymbolicShapes

_MEMO = 256     # exact keys remembered per JitFunction for symbolic hits (a dict lookup next time)


class SymDim:
    """A symbolic dim in a cache key (printed as its symbol)."""
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name

    def __eq__(self, other):
        return isinstance(other, SymDim) and other.name == self.name

    def __hash__(self):
        return hash(("SymDim", self.name))


def _strides_class(k):
    """A tensor key's strides as a symbolic entry matches them: "contiguous" (those change
    with the sizes), else the exact strides (such arguments stay static)."""
    return "contiguous" if is_contiguous_layout(k[0], k[3]) else k[3]


def pattern_of(key):
    leaves = tuple((len(k[0]), k[1], k[2], _strides_class(k)) if _is_tensor_key(k) else k for k in key[1])
    return (key[0], leaves) + tuple(key[2:])


class _Pattern:
    __slots__ = ("first", "dynamic", "entries", "failed")

    def __init__(self, key):
        self.first = key[1]
        self.dynamic = set()      # {(leaf index, dim)}
        self.entries = []         # symbolic entries, most recent last
        self.failed = {}          # frozenset(dims) -> why the symbolic trace failed


class DynamicDims:
    def __init__(self, dynamic, dynamic_dims, namer):
        if dynamic not in (None, True, False):
            raise ValueError(f"functx.jit: dynamic must be None, True or False, got {dynamic!r}")
        self.dynamic = dynamic
        self.marked = _normalize_marks(dynamic_dims, namer)
        self.patterns: dict = {}
        self.memo = collections.OrderedDict()     # exact key -> symbolic entry
        self.count = 0

    # ------------------------------------------------------------ lookup
    def lookup(self, key, leaves, cache, count=True):
        """The symbolic entry serving this call, or None (counted as a hit in cache)."""
        if not self.patterns:
            return None
        try:
            entry = self.memo.get(key)
        except TypeError:
            return None
        if entry is not None:
            if cache.entries.get(entry.key) is entry:
                if count:
                    cache.get(entry.key)
                return entry
            del self.memo[key]
        rec = self.patterns.get(pattern_of(key))
        if rec is None:
            return None
        for entry in reversed(rec.entries):
            if entry.key not in cache.entries or not _matches(key[1], entry.pattern):
                continue
            if entry.symbolic.holds(leaves):
                if not count:
                    return entry
                cache.get(entry.key)
                self.memo[key] = entry
                if len(self.memo) > _MEMO:
                    self.memo.popitem(last=False)
                return entry
        return None

    # ------------------------------------------------------------ planning a trace
    def plan(self, key, leaves, static_why, name_of):
        """(SymbolicShapes or None, notes) for the trace this call needs; static_why: why this
        call's trace must be static anyway (its backend), or None."""
        if self.dynamic is False:
            return None, []
        pat = pattern_of(key)
        rec = self.patterns.get(pat)
        if rec is None:
            rec = self.patterns[pat] = _Pattern(key)
        else:
            for k, (a, b) in enumerate(zip(rec.first, key[1])):
                if _is_tensor_key(a) and a != b:
                    rec.dynamic.update((k, d) for d, (m, n) in enumerate(zip(a[0], b[0])) if m != n)
        wanted = set(rec.dynamic)
        for k, leaf_key in enumerate(key[1]):
            if _is_tensor_key(leaf_key):
                marked = range(len(leaf_key[0])) if self.dynamic else self.marked(key[0], k)
                wanted.update((k, d % len(leaf_key[0])) for d in marked if -len(leaf_key[0]) <= d < len(leaf_key[0]))
        if not wanted:
            return None, []
        dims = sorted((k, d) for k, d in wanted if key[1][k][0][d] >= 2)
        small = sorted((k, d) for k, d in wanted if key[1][k][0][d] < 2)
        notes = [f"static in {name_of(k)} dim {d} (size {key[1][k][0][d]}: sizes 0 and 1 are traced "
                 "as constants, as torch does)" for k, d in small]
        if not dims:
            return None, notes
        if static_why:
            return None, notes + [f"static: {static_why}"]
        why = rec.failed.get(frozenset(dims))
        if why is not None:
            return None, notes + [f"static: {why}"]
        try:
            shapes = SymbolicShapes(dims, [key[1][k][0][d] for k, d in dims])
        except Exception as e:     # Unavailable, or a ShapeEnv API this torch spells differently
            self.dynamic = False
            return None, notes + [f"static: symbolic dims are off ({type(e).__name__}: {e})"]
        shapes.names = {(k, d): f"{name_of(k)} dim {d}" for k, d in dims}
        shapes.notes = notes
        return shapes, notes

    def failed(self, key, shapes, error):
        rec = self.patterns[pattern_of(key)]
        where = user_line_of(error)
        why = (f"the symbolic trace over {', '.join(shapes.names.values())} failed "
               + (f"at {where} " if where else "") +
               f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}); "
               "this signature is traced per size")
        rec.failed[frozenset(shapes.dims)] = why
        return shapes.notes + [f"static: {why}"]

    def discard(self, entry, error):
        """Drop a symbolic entry that raised at run time; its dims stay static for its pattern."""
        for rec in self.patterns.values():
            if entry in rec.entries:
                rec.entries.remove(entry)
                rec.failed[frozenset(entry.symbolic.dims)] = (
                    f"the symbolic entry over {', '.join(entry.symbolic.names.values())} raised at run time "
                    f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}); "
                    "this signature is traced per size")
        self.memo = collections.OrderedDict((k, e) for k, e in self.memo.items() if e is not entry)

    def add(self, entry, key):
        """Register a symbolic entry; returns its cache key (the key with its dims symbolic)."""
        shapes = entry.symbolic
        rec = self.patterns[pattern_of(key)]
        names = dict(zip(shapes.dims, shapes.symbol_names()))
        leaves = list(key[1])
        for k in {k for k, _ in shapes.dims}:
            shape, dtype, device, strides = leaves[k]
            leaves[k] = (tuple(SymDim(names[(k, d)]) if (k, d) in names else n for d, n in enumerate(shape)),
                         dtype, device, "contiguous")      # the symbolic trace takes contiguous ones only
        entry.pattern = tuple(leaves)
        self.count += 1
        rec.entries.append(entry)
        described = ", ".join(f"{shapes.names[kd]} = {names[kd]}" for kd in shapes.dims)
        entry.notes = [f"symbolic: {described}"] + \
            [f"guard: {line}" for line in shapes.guard_lines(lambda k, d: shapes.names[(k, d)])] + entry.notes
        return (key[0], entry.pattern) + tuple(key[2:]) + (("symbolic", self.count),)


def _matches(leaf_keys, pattern):
    for k, p in zip(leaf_keys, pattern):
        if k == p:
            continue
        if not (_is_tensor_key(k) and _is_tensor_key(p)) or k[1:3] != p[1:3] or len(k[0]) != len(p[0]) \
                or _strides_class(k) != p[3]:
            return False
        if any(m != n and not isinstance(n, SymDim) for m, n in zip(k[0], p[0])):
            return False
    return True


def _normalize_marks(dynamic_dims, namer):
    """dynamic_dims -> marked(treedef, leaf index) -> dims marked for that leaf."""
    if not dynamic_dims:
        return lambda treedef, k: ()
    if not isinstance(dynamic_dims, dict):
        raise TypeError("functx.jit: dynamic_dims must be a dict {argument name or position: dim or "
                        f"tuple of dims}}, got {type(dynamic_dims).__name__}")
    marks = {}
    for arg, dims in dynamic_dims.items():
        dims = (dims,) if isinstance(dims, int) else tuple(dims)
        if not all(isinstance(d, int) for d in dims):
            raise TypeError(f"functx.jit: dynamic_dims[{arg!r}] must be an int or a tuple of ints")
        if isinstance(arg, str):
            nums = namer.argnums_of((arg,))
            marks[(1, arg)] = dims
            for i in nums:
                marks[(0, i)] = dims
        else:
            marks[(0, arg)] = dims

    def marked(treedef, k):
        path = treedef.paths()[k]
        return marks.get((path[0], path[1]), ())
    return marked
