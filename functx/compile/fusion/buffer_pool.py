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
reads it or a view of it) before the second is written. The slots stay allocated while the
compiled function lives (at most MAX_POOL_BYTES; a bigger set of temporaries is not
pooled). A call that finds the pool in use (another thread in the same function) allocates
fresh buffers, so concurrent calls never share temporaries.
"""
from __future__ import annotations

import math

from ...core import Var
from .kernel import is_inlined

MAX_POOL_BYTES = 1 << 30


def _static(shape) -> bool:
    return all(type(n) is int for n in shape)


def assign_slots(schedule, poolable_extern) -> tuple[dict, list]:
    """(var -> slot index, [(numel, dtype, device)] per slot) for the schedule's groups.
    poolable_extern(eqn): can this extern's single output be written into a given buffer?"""
    graph, producers = schedule.graph, schedule.producers
    memo: dict = {}

    def roots(atom) -> frozenset:
        """Buffers `atom` may share memory with."""
        if not isinstance(atom, Var):
            return frozenset()
        if atom in memo:
            return memo[atom]
        e = producers.get(atom)
        if e is None:
            out = frozenset()
        elif is_inlined(e):
            out = frozenset().union(*(roots(a) for a in e.inputs))
        elif schedule.group_of[id(e)].extern and not poolable_extern(e):
            out = frozenset({atom}).union(*(roots(a) for a in e.inputs))
        else:
            out = frozenset({atom})
        memo[atom] = out
        return out

    escaping = frozenset().union(*(roots(a) for a in graph.outvars))
    candidates: list[tuple[int, Var]] = []      # (group index, buffer it writes)
    last_use: dict = {}
    for i, grp in enumerate(schedule.groups):
        if grp.template is not None:
            continue
        members = {id(e) for e in grp.members}
        for e in grp.members:
            for a in schedule.read_vars(e):
                if producers.get(a) is not None and id(producers[a]) in members:
                    continue
                for b in roots(a):
                    last_use[b] = max(last_use.get(b, -1), i)
        written = grp.plan.stored if not grp.extern else (
            grp.first.outputs if poolable_extern(grp.first) else [])
        for v in written:
            if v not in escaping and _static(v.type.shape) and v.type.device.type == "cpu":
                candidates.append((i, v))
                last_use[v] = max(last_use.get(v, -1), i)     # never shares with its group's reads
    slot_of, slots, free, total = {}, [], {}, 0
    live: list = []
    for i, v in candidates:
        still = []
        for b in live:                      # release what no group from here on reads
            if last_use.get(b, -1) < i:
                free.setdefault(_key(b), []).append(slot_of[b])
            else:
                still.append(b)
        live = still
        key = _key(v)
        if free.get(key):
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
