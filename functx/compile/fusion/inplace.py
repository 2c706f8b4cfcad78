"""In-place kernel outputs: a kernel writes an output over an input buffer that dies in it
(XLA's "can share operand buffer with user", for a fusion's elementwise outputs).

Why: a kernel that reads a (1024, 16, 64) buffer and writes a scaled copy of it (the forward
Laplacian's tangents times tanh'(z)) touches 4 MB more memory when the copy is a fresh
buffer, and a write to a line not in cache first reads it; written over its input, the
kernel's traffic is the input's read and write-back (d=16 Laplacian: 4.24 -> 4.13 ms).

Output v of a kernel is written over input b when all of these hold:
  * b is a buffer the host wrapper made (a kernel's stored output or a matmul's result),
    not a graph input or constant, and neither b nor v may be aliased by a graph output;
  * no later group reads b or a view of it (b dies in this kernel);
  * same dtype and number of elements, static shapes, CPU;
  * the kernel stores v once, and every read of b is at v's store index, in the same loop
    (pass over the rows) and before the store: each element is read, then overwritten, by
    the iteration that owns it, and nothing reads it after (a softmax's later pass over a
    row it already wrote would not qualify).
The kernel then has one pointer for both (so `__restrict__` stays true), the wrapper binds
v to b's memory, and the buffer pool gives v b's slot (buffer_pool.assign_slots).
"""
from __future__ import annotations

import contextlib
import math

from .buffer_pool import liveness, static_shape
from .kernel import NullOps, is_inlined


class _Accesses(NullOps):
    """Every load and store of a plan, in program order, with the pass (rloop) it is in."""

    def __init__(self):
        self.events = []        # (kind, buffer, index, pass)
        self._pass = [0]
        self._passes = 0

    def load(self, buffer, index, dtype):
        self.events.append(("load", buffer, index.key(), self._pass[-1]))

    def store(self, buffer, index, value, dtype):
        self.events.append(("store", buffer, index.key(), self._pass[-1]))

    @contextlib.contextmanager
    def rloop(self):
        self._passes += 1
        self._pass.append(self._passes)
        try:
            yield
        finally:
            self._pass.pop()


def _owned(schedule, b, roots, poolable_extern) -> bool:
    """Is b a buffer the wrapper made and nothing else shares: a kernel's output, or a
    matmul's result (written into a fresh or pooled buffer)?"""
    e = schedule.producers.get(b)
    if e is None or is_inlined(e) or roots(b) != frozenset({b}):
        return False
    grp = schedule.group_of[id(e)]
    if grp.template is not None:
        return False
    return not grp.extern or poolable_extern(e)


def inplace_outputs(schedule, poolable_extern) -> dict:
    """{id(group): {v: b}}: the kernel outputs v each kernel group writes over its input b."""
    roots, escaping, last_read = liveness(schedule, poolable_extern)
    out = {}
    for i, grp in enumerate(schedule.groups):
        if grp.extern or grp.template is not None:
            continue
        plan = grp.plan
        probe = _Accesses()
        plan.run(probe)
        by_name = {plan.buffers[v]: v for v in plan.buffers}
        loaded = {}
        for kind, buf, _, _ in probe.events:
            if kind == "load":
                loaded.setdefault(buf, by_name.get(buf))
        pairs, taken = {}, set()
        for v in plan.stored:
            if v in escaping or not static_shape(v.type.shape) or v.type.device.type != "cpu":
                continue
            vname = plan.buffers[v]
            stores = [(n, ev) for n, ev in enumerate(probe.events) if ev[0] == "store" and ev[1] == vname]
            if len(stores) != 1:
                continue
            pos, (_, _, index, pass_) = stores[0]
            for bname, b in loaded.items():
                if b is None or b in taken or b in escaping or last_read.get(b) != i:
                    continue
                t, u = b.type, v.type
                if t.dtype != u.dtype or t.device != u.device or not static_shape(t.shape) or \
                        math.prod(t.shape) != math.prod(u.shape):
                    continue
                reads = [(n, ev) for n, ev in enumerate(probe.events) if ev[0] == "load" and ev[1] == bname]
                if any(ev[2] != index or ev[3] != pass_ or n > pos for n, ev in reads):
                    continue
                if not _owned(schedule, b, roots, poolable_extern):
                    continue
                pairs[v] = b
                taken.add(b)
                break
        if pairs:
            out[id(grp)] = pairs
    return out
