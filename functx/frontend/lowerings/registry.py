"""The two tables dispatch reads, and the decorators that fill them.

LOWERINGS: OpOverload (ATen, or torch.ops.prims from torch._refs decompositions) -> a
function on lax values (tracers, tensors, Python scalars) that returns lax values; dispatch
unwraps the arguments and wraps the results.
SPECIAL: OpOverload -> a function on the TracerTensor arguments themselves, for ops that
read or write wrapper state (copy_, item, as_strided, batch norm's buffers). Dispatch
looks here first.

Registering an op twice in one table is an error: the later entry would silently replace
the earlier one and leave it as dead code. One op may sit in both tables on purpose:
as_strided, whose SPECIAL entry makes the view and whose lowering replays it in view chains.
"""
from __future__ import annotations

LOWERINGS: dict = {}
SPECIAL: dict = {}
# dispatch's per-op decisions (frontend/dispatch.py, `_plan`), keyed by id(op); cleared
# whenever either table changes, so a decision never outlives the entries it was read from.
PLANS: dict = {}
# How many torch decompositions are running on wrappers now (dispatch.py counts; views.py's
# as_strided reads it).
DECOMPOSING = [0]


def _add(table, table_name, ops, fn):
    for op in ops:
        if op in table:
            old = table[op]
            raise ValueError(f"{op} is registered twice in {table_name}: first by "
                             f"{old.__module__}.{old.__qualname__}, again by {fn.__module__}.{fn.__qualname__}")
        table[op] = fn
    PLANS.clear()


def register(*ops):
    """Decorator: fn is the lowering of each of ops."""
    def deco(fn):
        _add(LOWERINGS, "LOWERINGS", ops, fn)
        return fn
    return deco


def register_special(*ops):
    """Decorator: fn handles each of ops on the TracerTensor arguments themselves."""
    def deco(fn):
        _add(SPECIAL, "SPECIAL", ops, fn)
        return fn
    return deco
