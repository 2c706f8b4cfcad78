"""Units of an eager transform level run in batches (issue 13).

Under an eager grad/jvp/vmap level every torch function the user's code calls is one cached
unit (frontend/function_units.py), and each unit still walks the level's rule machinery in
Python: the level's operand checks, a generated rule, the tangent equations it records,
tracers and wrappers. That is ~25 us of Python per unit against torch.func's ~3 us of C++.

So a level does not run each unit when it is called. It records it (`UnitBatch.record`: the
unit, which earlier results or outside values it reads) and hands back wrappers of
`LazyTracer`s, which know their type but not their value. The batch runs when a value is
needed: when anything reads a wrapper's value (`functionalize.value_of`: the ATen path of a
function that is not a unit, `print`, `.item()`, control flow, a write, a nested transform's
inputs, the level's outputs), or when the level ends. A batch whose structure (the units, how
they are wired, which results are still referenced) was seen before runs as one unit: the
concatenation of its units' graphs as one `LoweredOp`, which the level runs through one
generated rule (`process_lowered`), so the level's Python is paid once per batch instead of
once per unit, and dead intermediate results are never computed. A structure seen for the
first time runs unit by unit, as each would have run when it was called.

What makes running later the same as running at once:
- units are pure (no effects, no values read: function_units only caches such functions),
  and their operands are immutable lax values, or plain tensors whose in-place writes run the
  pending batches first (random_mode.RandomMode);
- a batch holds units recorded under one grad mode and one default dtype, and runs under
  them, with the reverse levels' stack as it was when they were recorded
  (core/trace.grad_enabled_for reads it), its level current, and autocast off (units are not
  recorded under autocast);
- a result is kept when something besides the batch still references its tracer (a wrapper
  the user holds, a view's base): reference counts tell, so no wrapper is registered.
A unit that raises when its batch runs raises there, from the line that needed the value:
its message names the op, as before, but the traceback points at the later line.
"""
from __future__ import annotations

import os
import sys

import torch

from ..core import nan_check
from ..core.trace import EVAL_TRACE, GraphTrace, Tracer, _reverse, trace_state, type_of
from .lowered_ops import UNCACHEABLE, op_of_graph

# FUNCTX_UNIT_BATCHES=0 runs every unit when it is called (the behaviour before batches)
ENABLED = os.environ.get("FUNCTX_UNIT_BATCHES", "1") != "0"
# Units per batch: a longer batch runs first (a loop over many steps then reuses one combined
# unit per chunk of steps instead of building one huge one)
MAX_UNITS = 64
# Batch structures -> their combined unit; structures seen once (a combined unit is built on
# the second sighting, so one-off structures never pay for it)
COMBINED: dict = {}
SEEN: dict = {}
COMBINE_AT = 2           # the sighting of a structure that builds its combined unit (tests: 1)
_MAX_STRUCTURES = 256

_NANS = nan_check.STATE
_getrefcount = sys.getrefcount
_ExcludeKeys = torch._C._ExcludeDispatchKeyGuard
_K, _KS = torch._C.DispatchKey, torch._C.DispatchKeySet
# A unit's torch kernels run as the front end's do inside a __torch_dispatch__ handler: below
# autograd and past the Python key, so functx's own dispatch mode (random_mode.intercept_random)
# does not see each kernel (function_units.run_unit runs a unit so); a level's rule whose
# operands require grad (nn.Parameters differentiated as they are) turns torch's autograd back
# on for its kernels (core/trace.AUTOGRAD_ON_KEYS), as EvalTrace does for a primitive. A batch
# also excludes autocast, which a unit recorded without it must not see when it runs later.
BELOW_DISPATCH = (_KS(_K.Python) | _KS(_K.PythonTLSSnapshot) | _KS(_K.ADInplaceOrView)
                  | _KS(_K.AutogradFunctionality))
_RUN_KEYS = BELOW_DISPATCH
for _name in ("AutocastCPU", "AutocastCUDA"):
    if hasattr(_K, _name):
        _RUN_KEYS = _RUN_KEYS | _KS(getattr(_K, _name))


class LazyTracer(Tracer):
    """A unit's result that its batch has not computed yet: its type, and once the batch ran,
    the level's value (`real`). Only wrappers hold it; reading the wrapper resolves it."""
    __slots__ = ("batch", "index", "_aval", "real")

    def __init__(self, batch, index, aval):
        self._trace = batch.level
        self.batch = batch
        self.index = index
        self._aval = aval
        self.real = None

    @property
    def aval(self):
        return self._aval

    def resolve(self):
        """The level's value of this result (running its batch first, if it has not run)."""
        r = self.real
        if r is None:
            if type(self.batch) is not _Ran:
                self.batch.run()
            if self.real is None:       # its batch ran without it (reference counts missed it)
                self.batch.run_for(self)
            r = self.real
        return r

    def concrete(self):
        r = self.resolve()
        return r.concrete() if isinstance(r, Tracer) else r

    def tracks_grad(self):
        # only a reverse level's float results can: the others answer without running the batch
        if not (self._trace.reverse and self._aval.dtype.is_floating_point):
            return False
        r = self.resolve()
        return r.tracks_grad() if isinstance(r, Tracer) else r.requires_grad

    def __repr__(self):
        return repr(self.resolve())


class UnitBatch:
    """The units recorded at one eager level and not run yet."""
    __slots__ = ("level", "values", "parts", "externals", "external_ids", "grad", "dtype", "depth", "reads_ints")

    def __init__(self, level):
        self.level = level
        self.values = []         # LazyTracer per result, in order (its index)
        self.parts = []          # (unit, refs): ref k >= 0 reads values[k], -1 - i externals[i]
        self.externals = []      # the batch's inputs: level values, plain tensors
        self.external_ids = {}
        self.grad = self.dtype = None
        self.depth = len(_reverse.stack)      # the reverse levels active when it records
        self.reads_ints = False                # a recorded unit reads an integer tensor

    def record(self, op, leaves, types, grad, dtype):
        """LazyTracers for op's results on leaves (lax values), to be computed when the batch runs."""
        self._add(op, leaves, grad, dtype)
        values = self.values
        n = len(values)
        outs = [LazyTracer(self, n + k, t) for k, t in enumerate(types)]
        values.extend(outs)
        return outs

    def record_one(self, op, leaves, aval, grad, dtype):
        """record() for a unit with one result (most torch functions), without the lists."""
        self._add(op, leaves, grad, dtype)
        values = self.values
        lt = LazyTracer(self, len(values), aval)
        values.append(lt)
        return lt

    def _add(self, op, leaves, grad, dtype):
        if grad is not self.grad or dtype is not self.dtype or len(self.parts) >= MAX_UNITS:
            if self.parts:
                self.run()
            self.grad, self.dtype = grad, dtype
        refs = []
        ids = self.external_ids
        for v in leaves:
            if type(v) is LazyTracer:
                if v.batch is self and v.real is None:
                    refs.append(v.index)
                    continue
                v = v.resolve()         # another level's, or a batch that ran
            i = ids.get(id(v))
            if i is None:
                i = ids[id(v)] = len(self.externals)
                self.externals.append(v)
            refs.append(-1 - i)
        self.parts.append((op, tuple(refs)))
        if op.reads_ints:
            self.reads_ints = True

    def run(self):
        """Compute the recorded units at the level, as they would have run when called."""
        parts, values = self.parts, self.values
        if not parts:
            return
        # kept: what something references, and what units that read integer tensors make (they
        # may raise on values: an unused x[idx] with idx out of range raises, as eagerly)
        if self.reads_ints:
            counts = _reference_counts(values)
            live = [i for op, start, stop in _result_ranges(parts) for i in range(start, stop)
                    if op.reads_ints or counts[i] > _UNREFERENCED]
        else:
            live = _referenced(values)
        externals = self.externals
        self.parts, self.values, self.externals, self.external_ids = [], [], [], {}
        self.reads_ints = False
        ran = _Ran(self.level, parts, externals, self.grad, self.dtype, self.depth)
        for lt in values:       # a result not kept (or not computed: a unit raised) is computed
            lt.batch = ran      # from what ran, should it be read after all
        with _AsRecorded(ran), _ExcludeKeys(_RUN_KEYS):
            outs = _run_combined(self.level, (tuple(parts), tuple(live)), parts, live, externals)
            if outs is None:
                outs = _run_units(self.level, parts, live, externals)
        for i, o in zip(live, outs):
            lt = values[i]
            if getattr(o, "_aval", 0) is None:
                o._aval = lt._aval
            lt.real = o


class _Ran:
    """A batch as it ran: a result it did not keep (nothing referenced it, as far as reference
    counts tell) is computed from it if it is read after all."""
    __slots__ = ("level", "parts", "externals", "grad", "dtype", "depth")

    def __init__(self, level, parts, externals, grad, dtype, depth):
        self.level, self.parts, self.externals = level, parts, externals
        self.grad, self.dtype, self.depth = grad, dtype, depth

    def run_for(self, lt):
        """lt's value: the units up to the one that made it, one by one (not those after it:
        one of them may be a unit that raised)."""
        k = next(k for k, (_, _, stop) in enumerate(_result_ranges(self.parts)) if lt.index < stop) + 1
        with _AsRecorded(self), _ExcludeKeys(_RUN_KEYS):
            lt.real = _run_units(self.level, self.parts[:k], [lt.index], self.externals)[0]


class _AsRecorded:
    """The state a batch's units were recorded in, while they run: their level current, their
    grad mode and default dtype, and the reverse levels' stack without the levels entered
    since (core/trace.grad_enabled_for reads it)."""
    __slots__ = ("ran", "prev", "above", "grad", "dtype", "fwd")

    def __init__(self, ran):
        self.ran = ran

    def __enter__(self):
        ran, stack = self.ran, _reverse.stack
        self.above = None
        if len(stack) > ran.depth:
            self.above = stack[ran.depth:]
            del stack[ran.depth:]
        self.grad, self.dtype = torch.is_grad_enabled(), torch.get_default_dtype()
        if self.grad is not ran.grad:
            torch._C._set_grad_enabled(ran.grad)
        if self.dtype is not ran.dtype:
            torch.set_default_dtype(ran.dtype)
        self.fwd = torch._C._is_fwd_grad_enabled()      # units are recorded with forward AD on only
        if not self.fwd:
            torch._C._set_fwd_grad_enabled(True)
        self.prev, trace_state.trace = trace_state.trace, ran.level

    def __exit__(self, *exc):
        trace_state.trace = self.prev
        ran = self.ran
        if self.grad is not ran.grad:
            torch._C._set_grad_enabled(self.grad)
        if self.dtype is not ran.dtype:
            torch.set_default_dtype(self.dtype)
        if not self.fwd:
            torch._C._set_fwd_grad_enabled(False)
        if self.above is not None:
            _reverse.stack.extend(self.above)


def _result_ranges(parts):
    """(unit, start, stop) per recorded unit: its results are values[start:stop]."""
    start = 0
    for op, _ in parts:
        stop = start + len(op.out_atoms)
        yield op, start, stop
        start = stop


def _reference_counts(values):
    return [_getrefcount(values[i]) for i in range(len(values))]


def _referenced(values):
    """The indices of the values something besides the list references."""
    return [i for i in range(len(values)) if _getrefcount(values[i]) > _UNREFERENCED]


# What _reference_counts (and _referenced) count for an object only the list references (the
# interpreter's own references differ between Python versions)
_UNREFERENCED = _reference_counts([object()])[0]


def _run_units(level, parts, live, externals):
    """Each unit through the level in order (what run_unit did when batches were off)."""
    env = []
    for op, refs in parts:
        leaves = [env[r] if r >= 0 else externals[-1 - r] for r in refs]
        outs = level.process_lowered(op, leaves)
        if outs is NotImplemented:
            outs = op.eval(leaves)
        env.extend(outs)
    return [env[i] for i in live]


def _run_combined(level, key, parts, live, externals):
    """The batch as one unit through the level, or None (run it unit by unit): on a structure's
    first sighting, where the combined unit cannot be built, or where the level declines it."""
    op = COMBINED.get(key)
    if op is None:
        if COMBINE_AT > 1 and SEEN.get(key) is None:
            if len(SEEN) >= _MAX_STRUCTURES:
                SEEN.clear()
            SEEN[key] = True
            return None
        if len(COMBINED) >= _MAX_STRUCTURES:
            COMBINED.clear()
        op = COMBINED[key] = _combine(parts, live, externals)
    if op is UNCACHEABLE:
        return None
    try:
        outs = level.process_lowered(op, externals)
    except Exception:           # unit by unit: the failing unit raises and names the error
        return None
    return None if outs is NotImplemented else outs


def _combine(parts, live, externals):
    """The units' graphs concatenated into one LoweredOp (externals -> live results)."""
    g = GraphTrace(EVAL_TRACE, stage_all=True)
    g.keeps_fused = True       # fused primitives stay whole (prims/fused.py), as in each unit
    ins = [g.new_arg(type_of(x)) for x in externals]
    env = []
    try:
        for op, refs in parts:
            env.extend(op.eval_at(g, [env[r] if r >= 0 else ins[-1 - r] for r in refs]))
    except Exception:
        return UNCACHEABLE
    names = sorted({op.name for op, _ in parts})
    return op_of_graph("units(" + ", ".join(names[:4]) + (", ..." if len(names) > 4 else "") + ")",
                       g, ins, [env[i] for i in live], "many")


class batching_units:
    """Entered by a transform around the user's function, with its level current: an eager
    level that takes cached units records them into a batch until their values are needed."""
    __slots__ = ("batch",)

    def __enter__(self):
        level = trace_state.trace
        if not (ENABLED and level.lowered_ops and level.batches_units) or _NANS.on or level.pending is not None:
            self.batch = None
            return
        self.batch = level.pending = UnitBatch(level)

    def __exit__(self, exc_type, *exc):
        batch = self.batch
        if batch is None:
            return
        batch.level.pending = None      # the level ends: nothing more is recorded
        if exc_type is None:
            batch.run()                 # what is still referenced (aux values, leaked ones)


def run_pending():
    """Run every level's pending batch (before a plain tensor is written in place: a batched
    unit may read it)."""
    t = trace_state.trace
    while t is not None:
        if t.pending is not None:
            t.pending.run()
        t = t.parent


__all__ = ["BELOW_DISPATCH", "LazyTracer", "UnitBatch", "batching_units", "run_pending"]
