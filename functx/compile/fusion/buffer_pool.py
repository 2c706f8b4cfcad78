"""Buffer assignment for a fused host wrapper on the CPU: temporaries live in slots
allocated once per compiled function and shared by liveness (XLA's buffer assignment, in
small).

Why: torch's CPU allocator is malloc, and glibc serves a block of a few MB by mmap and
returns it to the system on free, so every call's fresh [4096,128] intermediates page-fault
on first touch (a DSM training step took ~560 minor faults per call: 8.97 ms of CPU time
per call against 7.70 ms with malloc keeping its memory). CUDA's caching allocator has no
such cost, so only the CPU backend pools.

What is pooled: buffers the wrapper allocates for kernel outputs, and matmul (dot_general)
results, computed with `out=`; never a value a graph output may alias (through views or an
extern that may return a view of its input), never an input. Two buffers share a slot when
they hold the same number of elements of one dtype and the first is dead (no later group
reads it or a view of it) before the second is written. A function's slots (at most
MAX_POOL_BYTES; a bigger set of temporaries is not pooled) are a `SlotPool`, allocated when
the function is compiled and kept between its calls. A call that finds the pool in use
(another thread in the same function) allocates fresh buffers, so concurrent calls never
share temporaries.

Bounded: every pool is registered, least recently (re)allocated first. When the pools'
bytes exceed MAX_LIVE_BYTES, the oldest are released (their storage shrunk to nothing;
the views in the host wrapper stay valid), and a released pool grows back at its
function's next call. `release_all()` (functx.compile.release_buffers()) releases every
idle pool; jit releases an entry's pool when its cache evicts it.
"""
from __future__ import annotations

import collections
import math
import os
import threading
import weakref

import torch

from ...core import Var
from .kernel import is_inlined

MAX_POOL_BYTES = 1 << 30
# the most bytes all functions' pools hold at once ($FUNCTX_POOL_LIMIT_MB; default 2 GiB)
MAX_LIVE_BYTES = int(os.environ.get("FUNCTX_POOL_LIMIT_MB", "2048") or 2048) << 20

_live: "collections.OrderedDict[int, weakref.ref]" = collections.OrderedDict()   # allocated pools, oldest first
_live_lock = threading.RLock()


class SlotPool:
    """One compiled function's slots: `tensors[k]` (1-D) holds slot k; the host wrapper
    writes into views of them. `lock` is held by the call using the pool; `ensure()`
    (under the lock) grows a released pool back; `release()` frees its memory."""

    def __init__(self, slots):
        self.tensors = [torch.empty(n, dtype=dtype, device=device) for n, dtype, device in slots]
        self.sizes = [t.untyped_storage().nbytes() for t in self.tensors]
        self.nbytes = sum(self.sizes)
        self.lock = threading.Lock()
        self.live = True
        self._ref = weakref.ref(self)
        _note_allocated(self)

    def ensure(self):
        """Called with the lock held, before a pooled call: grow the slots back if released."""
        if not self.live:
            for t, n in zip(self.tensors, self.sizes):
                t.untyped_storage().resize_(n)
            self.live = True
            _note_allocated(self)

    def release(self) -> int:
        """Free the slots' memory unless a call is using them; the bytes freed."""
        if not self.lock.acquire(False):
            return 0
        try:
            if not self.live:
                return 0
            for t in self.tensors:
                t.untyped_storage().resize_(0)
            self.live = False
            with _live_lock:
                _live.pop(id(self), None)
            return self.nbytes
        finally:
            self.lock.release()

    def __del__(self):
        # no lock here: garbage collection may run this while this thread holds _live_lock
        if _live.get(id(self)) is self._ref:
            _live.pop(id(self), None)


def _note_allocated(pool):
    """Register `pool` as the newest; release the oldest pools beyond MAX_LIVE_BYTES."""
    with _live_lock:
        _live.pop(id(pool), None)
        _live[id(pool)] = pool._ref
        pools = [r() for r in _live.values()]
    total = sum(p.nbytes for p in pools if p is not None and p.live)
    for old in pools:
        if total <= MAX_LIVE_BYTES:
            break
        if old is not None and old is not pool:
            total -= old.release()


def live_bytes() -> int:
    with _live_lock:
        pools = [r() for r in _live.values()]
    return sum(p.nbytes for p in pools if p is not None and p.live)


def release_all() -> int:
    """Release every pool no call is using; the bytes freed."""
    with _live_lock:
        pools = [r() for r in _live.values()]
    return sum(p.release() for p in pools if p is not None)


def _after_fork_in_child():
    """A fork copies locks as they are: a pool locked by a call in another thread would
    stay locked in the child, whose calls would then never use it."""
    global _live_lock
    _live_lock = threading.RLock()
    for r in list(_live.values()):
        p = r()
        if p is not None:
            p.lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def static_shape(shape) -> bool:
    """Every size is a plain int (no symbolic dims)."""
    return all(type(n) is int for n in shape)


def liveness(schedule, poolable_extern, fresh_extern=lambda e: False) -> tuple:
    """(roots, escaping, last_read) of the schedule's buffers: roots(atom) is the set of
    buffers atom may share memory with (through views, or an extern that may return a view
    of an input, unless fresh_extern(eqn) says its outputs are new tensors); escaping, the
    buffers a graph output may alias; last_read[b], the index of the last group that reads
    buffer b or a view of it (templates not counted)."""
    graph, producers = schedule.graph, schedule.producers
    memo: dict = {}

    def roots(atom) -> frozenset:
        if not isinstance(atom, Var):
            return frozenset()
        if atom in memo:
            return memo[atom]
        e = producers.get(atom)
        if e is None:
            out = frozenset()
        elif is_inlined(e):
            out = frozenset().union(*(roots(a) for a in e.inputs))
        elif schedule.group_of[id(e)].extern and not poolable_extern(e) and not fresh_extern(e):
            out = frozenset({atom}).union(*(roots(a) for a in e.inputs))
        else:
            out = frozenset({atom})
        memo[atom] = out
        return out

    escaping = frozenset().union(*(roots(a) for a in graph.outvars))
    last_read: dict = {}
    for i, grp in enumerate(schedule.groups):
        if grp.template is not None:
            continue
        members = {id(e) for e in grp.members}
        for e in grp.members:
            for a in schedule.read_vars(e):
                if producers.get(a) is not None and id(producers[a]) in members:
                    continue
                for b in roots(a):
                    last_read[b] = max(last_read.get(b, -1), i)
    return roots, escaping, last_read


def assign_slots(schedule, poolable_extern, written_over=None, fresh_extern=lambda e: False) -> tuple[dict, list]:
    """(var -> slot index, [(numel, dtype, device)] per slot) for the schedule's groups.
    poolable_extern(eqn): can this extern's single output be written into a given buffer?
    written_over: {v: b} for kernel outputs written in place over a dying input b
    (fusion/inplace.py): v takes b's slot, and holds it as long as v is read.
    fresh_extern(eqn): are this extern's outputs new tensors, never views of its inputs (an
    unknown extern's outputs may alias its inputs, which then escape with them)?"""
    written_over = written_over or {}
    _, escaping, last_use = liveness(schedule, poolable_extern, fresh_extern)
    candidates: list[tuple[int, Var]] = []      # (group index, buffer it writes)
    for i, grp in enumerate(schedule.groups):
        if grp.template is not None:
            continue
        written = grp.plan.stored if not grp.extern else (
            grp.first.outputs if poolable_extern(grp.first) else [])
        for v in written:
            if v not in escaping and static_shape(v.type.shape) and v.type.device.type == "cpu":
                candidates.append((i, v))
                last_use[v] = max(last_use.get(v, -1), i)     # never shares with its group's reads
    slot_of, slots, free, total = {}, [], {}, 0
    live: list = []
    for i, v in candidates:
        over = written_over.get(v)
        if over is not None and over not in slot_of:
            continue            # written over an unpooled buffer: it is that buffer
        still = []
        for b in live:                      # release what no group from here on reads
            if b is over:
                continue                    # its slot now holds v
            if last_use.get(b, -1) < i:
                free.setdefault(_key(b), []).append(slot_of[b])
            else:
                still.append(b)
        live = still
        key = _key(v)
        if over is not None:
            slot_of[v] = slot_of[over]
        elif free.get(key):
            slot_of[v] = free[key].pop()
        else:
            slot_of[v] = len(slots)
            slots.append(key)
            total += key[0] * key[1].itemsize
        live.append(v)
    if total > MAX_POOL_BYTES:
        return {}, []
    return slot_of, slots


def _key(v):
    t = v.type
    return (math.prod(t.shape), t.dtype, t.device)
