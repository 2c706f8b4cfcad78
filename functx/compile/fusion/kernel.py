"""A fusion group as one loop nest, written against an ops handler.

A kernel iterates over (xnumel, rnumel): `xindex` numbers the outputs of its reductions
(or, in a pointwise kernel, its elements), `rindex` the reduced elements. Every value is a
*body*: a function of an index into its own shape. Views compose index maps (nothing is
copied), pointwise equations apply to their operands' bodies at the same index, values
owned by other groups are loads, and a reduction's result is readable only at the row it
was computed for (checked symbolically; otherwise the group is not fusable).

`KernelPlan.run(ops)` drives an ops handler through the kernel:

    ops.load(buffer, index, dtype)            ops.constant(value, dtype)
    ops.index_value(index, dtype)             ops.pointwise(eqn, args)
    ops.reduction(combine, value, dtype)      ops.store(buffer, index, value, dtype)
    ops.rloop()  (a context: one pass over the reduction axis, for looped reductions)

TritonOps (triton/triton_ops.py) prints Triton source, CppOps (cpu/cpp_ops.py) C++ loops;
TorchOps (torch_ops.py) runs the same body with torch tensors, which checks the fusion and
index logic without either; NullOps only drives the plan's own checks (the scheduler's).
"""
from __future__ import annotations

import contextlib

import torch

from ...core import REDUCTION, VIEW, Literal, Var
from .indexing import Index, Sym, flatten, is_symbolic_size, numel, shape_of, size_of, unflatten

NULLARY = ("full", "iota")      # constants: folded into every kernel that reads them


class FusionError(Exception):
    """Why a set of equations can't be one kernel (shown by explain)."""


class NullOps:
    """An ops handler that computes nothing: running a plan with it performs the plan's
    fusion checks (which raise FusionError) without generating code."""

    def load(self, buffer, index, dtype):
        return None

    def constant(self, value, dtype):
        return None

    def index_value(self, index, dtype):
        return None

    def pointwise(self, eqn, args):
        return None

    def reduction(self, combine, value, dtype):
        return None

    def store(self, buffer, index, value, dtype):
        return None

    def rloop(self):
        return contextlib.nullcontext()


def is_inlined(eqn) -> bool:
    """Views and constants never form groups: kernels fold them into index math."""
    return eqn.prim.kind == VIEW or eqn.prim.name in NULLARY


def reduction_layout(eqn):
    """(kept shape, reduced shape, axes) of a reduction equation."""
    shape = shape_of(eqn.inputs[0].type.shape)
    axes = eqn.params["axes"]
    kept = tuple(n for d, n in enumerate(shape) if d not in axes)
    return kept, tuple(shape[d] for d in axes), axes


class KernelPlan:
    """members: the group's equations in graph order; stored: the vars it writes (each owned
    by a member); buffers: var -> buffer name for every var the kernel reads or writes;
    producers: var -> eqn for the whole graph."""

    def __init__(self, name, members, stored, buffers, producers, persistent_max=1024):
        self.name = name
        self.members = list(members)
        self.member_set = {id(e) for e in self.members}
        self.stored = list(stored)
        self.buffers = buffers
        self.producers = producers
        self.reductions = [e for e in self.members if e.prim.kind == REDUCTION]
        self.written_over: dict = {}      # output -> the input it is stored over (inplace.py)
        self._space()
        # A symbolic row length is reduced in a loop of blocks (right for every length); a
        # static one in one block when it fits.
        self.persistent = not is_symbolic_size(self.rnumel) and self.rnumel <= persistent_max
        self._stages()
        self._store_layouts()

    # ------------------------------------------------------------ iteration space
    def _space(self):
        if self.reductions:
            kept, red, _ = reduction_layout(self.reductions[0])
            self.xnumel, self.rnumel = numel(kept), numel(red)
            for e in self.reductions[1:]:
                k, r, _ = reduction_layout(e)
                if (numel(k), numel(r)) != (self.xnumel, self.rnumel):
                    raise FusionError(f"reductions over different domains: ({self.xnumel}, {self.rnumel}) "
                                      f"vs ({numel(k)}, {numel(r)})")
        else:
            sizes = {numel(v.type.shape) for v in self.stored}
            if len(sizes) > 1:
                raise FusionError(f"pointwise outputs of different sizes {sorted(sizes, key=str)}")
            self.xnumel, self.rnumel = sizes.pop(), 1
        self.x = Index.of(Sym("xindex", self.xnumel))
        self.r = Index.of(Sym("rindex", self.rnumel))

    def reduction_input_index(self, eqn):
        kept, red, axes = reduction_layout(eqn)
        xs, rs = iter(unflatten(self.x, kept)), iter(unflatten(self.r, red))
        return [next(rs) if d in axes else next(xs) for d in range(len(kept) + len(red))]

    def _stages(self):
        """Stage k holds the reductions that read k earlier in-kernel reductions in sequence
        (softmax: max, then sum); a looped kernel makes one pass over the rows per stage."""
        memo: dict = {}

        def level(atom):
            if not isinstance(atom, Var) or atom in memo:
                return memo.get(atom, 0)
            eqn = self.producers.get(atom)
            lv = 0
            if eqn is not None and (id(eqn) in self.member_set or is_inlined(eqn)):
                lv = max((level(a) for a in eqn.inputs), default=0)
                if eqn.prim.kind == REDUCTION:
                    lv += 1
            memo[atom] = lv
            return lv

        self.stage_of = {id(e): level(e.inputs[0]) for e in self.reductions}
        self.nstages = max(self.stage_of.values(), default=-1) + 1
        self.level = level

    def _store_layouts(self):
        """Each stored var gets an index into its shape: an x-space value (one per row)
        at xindex, an (x, r)-space value at the layout of a reduction over the same shape."""
        self.store_plan = []
        n_x, n_xr = self.xnumel, size_of(self.xnumel * self.rnumel)
        for v in self.stored:
            n = numel(v.type.shape)
            eqn = self.producers[v]
            if n == n_x:
                self.store_plan.append((v, "x", unflatten(self.x, shape_of(v.type.shape))))
            elif n == n_xr and eqn.prim.kind != REDUCTION:
                layout = next((self.reduction_input_index(r) for r in self.reductions
                               if shape_of(r.inputs[0].type.shape) == shape_of(v.type.shape)), None)
                if layout is None:
                    layout = unflatten(self.x * self.rnumel + self.r, shape_of(v.type.shape))
                self.store_plan.append((v, "xr", layout))
            else:
                raise FusionError(f"output of {eqn.prim.name} has {n} elements; this kernel "
                                  f"iterates over ({n_x}, {self.rnumel})")

    # ------------------------------------------------------------ driving a handler
    def run(self, ops):
        lw = Lowering(self, ops)
        # An (x, r)-space output is stored in the pass over the rows of the first stage that
        # can compute it (its level: the in-kernel reductions it reads come from earlier
        # stages), so a column reduction and the product it also writes (a bias gradient and
        # the layer's cotangent) read their operands once; only outputs that read the last
        # stage's reductions take a pass of their own.
        xr_stores = [s for s in self.store_plan if s[1] == "xr"]
        for k in range(self.nstages):
            with lw.scope(ops.rloop() if not self.persistent else contextlib.nullcontext()):
                for e in self.reductions:
                    if self.stage_of[id(e)] == k:
                        lw.reduce(e)
                for v, _, idx in [s for s in xr_stores if self.level(s[0]) == k]:
                    ops.store(self.buffers[v], flatten(idx, v.type.shape), lw.value(v, idx), v.type.dtype)
        xr_stores = [s for s in xr_stores if self.level(s[0]) >= self.nstages]
        if xr_stores:
            with lw.scope(ops.rloop() if self.reductions and not self.persistent
                          else contextlib.nullcontext()):
                for v, _, idx in xr_stores:
                    ops.store(self.buffers[v], flatten(idx, shape_of(v.type.shape)), lw.value(v, idx), v.type.dtype)
        for v, space, idx in self.store_plan:
            if space == "x":
                ops.store(self.buffers[v], flatten(idx, shape_of(v.type.shape)), lw.value(v, idx), v.type.dtype)
        return ops


class Lowering:
    """Evaluates graph values at symbolic indices through an ops handler, memoized per
    (var, index) within the current loop scope."""

    def __init__(self, plan: KernelPlan, ops):
        self.plan, self.ops = plan, ops
        self.scopes = [{}]
        self.reduced: dict = {}     # var -> (value, its row index as a flat Index)

    @contextlib.contextmanager
    def scope(self, ctx):
        with ctx:
            self.scopes.append({})
            try:
                yield
            finally:
                self.scopes.pop()

    def reduce(self, eqn):
        idx = self.plan.reduction_input_index(eqn)
        val = self.value(eqn.inputs[0], idx)
        out = eqn.outputs[0]
        res = self.ops.reduction(eqn.prim.combine, val, out.type.dtype)
        self.reduced[out] = (res, self.plan.x)

    def value(self, atom, idx):
        if isinstance(atom, Literal):
            raise AssertionError("literals are lowered by their consumer")
        key = (atom, tuple(i.key() for i in idx))
        for s in reversed(self.scopes):
            if key in s:
                return s[key]
        val = self._compute(atom, idx)
        self.scopes[-1][key] = val
        return val

    def _compute(self, v, idx):
        plan = self.plan
        eqn = plan.producers.get(v)
        if v in self.reduced:
            res, row = self.reduced[v]
            if flatten(idx, shape_of(v.type.shape)) != row:
                raise FusionError(f"the result of {eqn.prim.name} is read at another row than the one "
                                  "it was reduced for (a transposed or shifted use)")
            return res
        if eqn is not None and is_inlined(eqn):
            if eqn.prim.name == "full":
                return self.ops.constant(eqn.params["value"], v.type.dtype)
            if eqn.prim.name == "iota":
                return self.ops.index_value(idx[eqn.params["dim"]], v.type.dtype)
            src = eqn.inputs[0]
            in_idx = [Index.of(i) for i in eqn.prim.index_map(idx, shape_of(src.type.shape),
                                                               **_sizes_in(eqn.params))]
            return self.value(src, in_idx)
        if eqn is not None and id(eqn) in plan.member_set:
            if eqn.prim.kind == REDUCTION:
                raise FusionError(f"{eqn.prim.name} is read before it is computed")
            return self._pointwise(eqn, idx)
        if v not in plan.buffers:
            raise FusionError(f"value of {eqn.prim.name if eqn else 'input'} is not in memory")
        return self.ops.load(plan.buffers[v], flatten(idx, shape_of(v.type.shape)), v.type.dtype)

    def _pointwise(self, eqn, idx):
        vars_ = [a for a in eqn.inputs if isinstance(a, Var)]
        args = []
        for pos, a in enumerate(eqn.inputs):
            if isinstance(a, Literal):
                args.append(self.ops.constant(a.value, literal_dtype(eqn, pos, vars_)))
            else:
                args.append(self.value(a, idx))
        return self.ops.pointwise(eqn, args)


def _sizes_in(params):
    """A view's params with symbolic sizes (torch.SymInt) as index sizes (sympy), so that
    index maps compute with them and never ask torch to decide on one."""
    def conv(p):
        if isinstance(p, torch.SymInt):
            return size_of(p)
        if isinstance(p, tuple):
            return tuple(conv(q) for q in p)
        return p
    return {k: conv(p) for k, p in params.items()}


def literal_dtype(eqn, pos, vars_):
    """A literal operand takes its tensor operands' dtype (select's branches: the result's)."""
    if eqn.prim.name == "where" and pos > 0:
        return eqn.outputs[0].type.dtype
    tensors = [v for v in vars_ if not (eqn.prim.name == "where" and v is eqn.inputs[0])]
    return tensors[0].type.dtype if tensors else eqn.outputs[0].type.dtype
