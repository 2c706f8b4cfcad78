"""Partition a graph into fusion groups (Inductor's scheduler, in small), shared by the
Triton and C++ backends; each says which equations it can lower (`lowerable`).

Equations fall in three classes:
  * inlined: views and constants (full, iota); kernels fold them into index math;
  * nodes: pointwise equations with a lowering on the backend and reductions with a combine op;
    each starts in a group of its own;
  * externs: everything else (dot_general, sort, scatter, opaque, random, ...); they run
    through their eager impl between kernels.
Groups then merge, to a fixpoint: first producer into consumer, then siblings that read a
common buffer. A merge is kept when it makes no cycle between groups and the merged group
is one loop nest: all reductions over the same (numel, rnumel), every output one value per
row (x space) or per element of the reduced domain (x, r space), and every in-kernel read of
a reduction at the row it was computed for. The failed attempt's reason is what explain
prints for adjacent groups.
"""
from __future__ import annotations

import itertools

from ...core import POINTWISE, REDUCTION, Var, has_effects
from ...core.primitive import Unsupported
from .indexing import is_symbolic_size, nonneg, shape_of
from .kernel import FusionError, KernelPlan, NullOps, is_inlined, reduction_layout


def lowerable(eqn, dtypes, expression, backend: str) -> str | None:
    """None if the equation can be a kernel node of `backend`, else why it runs as an
    extern. dtypes: the dtypes its kernels handle; expression(eqn): the primitive's
    expression for that backend, or Unsupported(reason)."""
    p = eqn.prim
    types = [a.type for a in eqn.inputs if isinstance(a, Var)] + [v.type for v in eqn.outputs]
    bad = [t.dtype for t in types if t.dtype not in dtypes]
    if bad:
        return f"dtype {bad[0]} has no {backend} lowering"
    if any(_is_zero(n) for t in types for n in shape_of(t.shape)):
        return "an empty tensor (nothing to compute; its index math would divide by zero)"
    maybe_empty = [n for t in types for n in shape_of(t.shape) if is_symbolic_size(n) and not nonneg(n - 1)]
    if maybe_empty:
        return (f"a symbolic size {maybe_empty[0]} that may be 0 (its index math could divide by zero): "
                "runs through torch")
    if p.effectful:
        return f"{p.name} is effectful"
    if any(_is_zero(n) for t in types for n in shape_of(t.shape)):
        # No work for a kernel, and index math over a size-0 dimension would divide by 0.
        return "a size-0 operand (torch computes the empty or identity result)"
    if p.kind == REDUCTION:
        return None if p.combine is not None else f"{p.name} has no combine op for the {backend} backend"
    if p.kind != POINTWISE:
        return f"{p.name} is an extern op (runs through torch)"
    if not any(isinstance(a, Var) for a in eqn.inputs):
        return f"{p.name} has no tensor operand"
    answer = expression(eqn)
    return str(answer) if isinstance(answer, Unsupported) else None


def _is_zero(n) -> bool:
    return isinstance(n, int) and n == 0


class TemplateChoice:
    """What a template group runs: kind ("mm"), the equation it replaces (eqn), the
    iteration space and the reason it was chosen (explain prints both), backend data."""

    def __init__(self, kind, eqn, space, reason, data=None):
        self.kind, self.eqn, self.space, self.reason, self.data = kind, eqn, space, reason, data


class Group:
    _ids = itertools.count(1)    # atomic: schedules may be built in a background thread

    def __init__(self, members, extern=False):
        self.members = list(members)
        self.extern = extern
        self.plan = None
        self.template = None        # a template group: what the backend's template_source gets
        self.uid = next(Group._ids)

    @property
    def first(self):
        return self.members[0]


class Schedule:
    def __init__(self, graph, names: dict, lowerable, persistent_max=1024):
        """lowerable(eqn) -> None or why eqn is an extern on this backend."""
        self.graph = graph
        self.names = names              # var -> buffer name (every var of the graph)
        self.persistent_max = persistent_max
        self.users = {}
        for e in graph.eqns:
            for a in e.inputs:
                if isinstance(a, Var):
                    self.users.setdefault(a, []).append(e)
        self.order = {id(e): i for i, e in enumerate(graph.eqns)}
        self.producers = {v: e for e in graph.eqns for v in e.outputs}
        self.outvars = {a for a in graph.outvars if isinstance(a, Var)}
        self.extern_reason = {}
        nodes, externs = [], []
        for e in graph.eqns:
            if is_inlined(e):
                continue
            why = lowerable(e)
            if why is None:
                nodes.append(e)
            else:
                externs.append(e)
                self.extern_reason[id(e)] = why
        self.group_of = {}
        self._successor_sets = {}      # group uid -> the groups reading its outputs (_successors)
        for e in nodes:
            self._assign(Group([e]))
        for e in externs:
            self._assign(Group([e], extern=True))
        self._sinks = {}
        self._fuse()
        self.groups = self._toposort()
        for g in self.groups:
            if not g.extern:
                g.plan = self._plan(g.members)

    # ------------------------------------------------------------ graph queries
    def _assign(self, g):
        for e in g.members:
            self.group_of[id(e)] = g
        self._successor_sets = {}      # groups changed: cached successor sets may be stale

    def sources(self, eqn) -> list:
        """Non-inlined equations whose outputs eqn reads (through views and constants)."""
        return self.sources_of(eqn.inputs)

    def sources_of(self, atoms) -> list:
        """Non-inlined equations the atoms are computed from (through views and constants),
        in program order."""
        out, stack, seen = [], list(atoms), set()
        while stack:
            a = stack.pop()
            if not isinstance(a, Var) or a in seen:
                continue
            seen.add(a)
            p = self.producers.get(a)
            if p is None:
                continue
            if is_inlined(p):
                stack.extend(p.inputs)
            elif p not in out:
                out.append(p)
        return sorted(out, key=lambda e: self.order[id(e)])

    def read_vars(self, eqn) -> set:
        """Vars eqn reads from memory if nothing is fused: inputs, consts, node outputs."""
        out, stack = set(), list(eqn.inputs)
        while stack:
            a = stack.pop()
            if not isinstance(a, Var):
                continue
            p = self.producers.get(a)
            if p is not None and is_inlined(p):
                stack.extend(p.inputs)
            else:
                out.add(a)
        return out

    def sinks(self, v):
        """Non-inlined consumers of v (through views), and "out" if v reaches an output."""
        if v in self._sinks:
            return self._sinks[v]
        res = {"out"} if v in self.outvars else set()
        for e in self.users.get(v, []):
            if is_inlined(e):
                for o in e.outputs:
                    res |= self.sinks(o)
            else:
                res.add(id(e))
        self._sinks[v] = res
        return res

    def stored(self, members) -> list:
        ids = {id(e) for e in members}
        return [v for e in members for v in e.outputs if any(s == "out" or s not in ids for s in self.sinks(v))]

    # ------------------------------------------------------------ fusion
    def _plan(self, members, name="kernel"):
        members = sorted(members, key=lambda e: self.order[id(e)])
        return KernelPlan(name, members, self.stored(members), self.names, self.producers,
                          self.persistent_max)

    def check(self, members) -> KernelPlan:
        plan = self._plan(members)
        plan.run(NullOps())       # the plan's own checks raise FusionError
        return plan

    def _successors(self, g):
        """The groups reading g's outputs; cached until the next merge (the cycle check walks
        them for every candidate merge: a 1,280-equation graph asked 2.8 M times)."""
        out = self._successor_sets.get(g.uid)
        if out is not None:
            return out
        out = set()
        for e in g.members:
            for v in e.outputs:
                for s in self.sinks(v):
                    if s != "out":
                        h = self.group_of[s]
                        if h is not g:
                            out.add(h)
        self._successor_sets[g.uid] = out
        return out

    def _reaches(self, src, dst, avoid_direct) -> bool:
        """Is there a path src -> ... -> dst through some other group?"""
        stack = [h for h in self._successors(src) if h is not dst]
        seen = set()
        while stack:
            h = stack.pop()
            if h is dst:
                return True
            if h.uid in seen:
                continue
            seen.add(h.uid)
            stack.extend(self._successors(h))
        return False

    def why_not(self, a, b) -> str | None:
        """None if a and b can be one kernel, else the reason."""
        for g in (a, b):
            if g.template is not None:
                return (f"{g.template.eqn.prim.name} runs as a template kernel with its epilogue fused; "
                        "nothing else fuses into a template")
        for g in (a, b):
            if g.extern:
                e = g.first
                return f"{e.prim.name} is an extern: {self.extern_reason[id(e)]}"
        if self._reaches(a, b, True) or self._reaches(b, a, True):
            return "fusing them would make a cycle through another group (an extern or kernel between them)"
        try:
            self.check(a.members + b.members)
        except FusionError as err:
            return str(err)
        return None

    def _merge(self, a, b) -> bool:
        if a is b or self.why_not(a, b) is not None:
            return False
        g = Group(sorted(a.members + b.members, key=lambda e: self.order[id(e)]))
        self._assign(g)
        return True

    def _fuse(self):
        changed = True
        while changed:
            changed = False
            for e in self.graph.eqns:                       # producer -> consumer
                g = self.group_of.get(id(e))
                if g is None or g.extern:
                    continue
                for p in self.sources(e):
                    pg, g = self.group_of[id(p)], self.group_of[id(e)]
                    if pg is not g and not pg.extern and self._merge(pg, g):
                        changed = True
            groups = self._live_groups()
            reads = {g.uid: set().union(*(self.read_vars(e) for e in g.members)) for g in groups}
            for i, a in enumerate(groups):                  # siblings sharing a read
                for b in groups[i + 1:]:
                    a, b = self.group_of[id(a.first)], self.group_of[id(b.first)]
                    if a is b or a.extern or b.extern or not (reads.get(a.uid, set()) & reads.get(b.uid, set())):
                        continue
                    if self._merge(a, b):
                        reads[self.group_of[id(a.first)].uid] = reads[a.uid] | reads[b.uid]
                        changed = True

    def make_template(self, extern, fused, template, plan):
        """Replace the extern group `extern` and the kernel groups `fused` (its epilogue, and
        a prologue) by one template group, which runs `plan` (a KernelPlan over the
        epilogue) on the extern's result in registers; the caller checked `reaches`."""
        members = extern.members + [e for g in fused for e in g.members]
        g = Group(sorted(members, key=lambda e: self.order[id(e)]))
        g.template, g.plan = template, plan
        self._assign(g)
        self.groups = self._toposort()
        return g

    def reaches(self, src, dst) -> bool:
        """Does a path lead from group src to group dst through some other group?"""
        return self._reaches(src, dst, True)

    def _live_groups(self):
        seen, out = set(), []
        for e in self.graph.eqns:
            g = self.group_of.get(id(e))
            if g is not None and g.uid not in seen:
                seen.add(g.uid)
                out.append(g)
        return out

    def _toposort(self):
        groups = self._live_groups()
        preds = {g.uid: set() for g in groups}
        for g in groups:
            for h in self._successors(g):
                preds[h.uid].add(g.uid)
        # Effects that no group reads (debug callbacks; a cond holding a print whose results
        # are unused or only returned) run in program order; nothing reads them, so these
        # extra edges can make no cycle.
        sinks = [g for g in groups if g.extern and has_effects(g.first) and not self._successors(g)]
        for before, after in zip(sinks, sinks[1:]):
            preds[after.uid].add(before.uid)
        done, out = set(), []
        while len(out) < len(groups):
            for g in groups:
                if g.uid not in done and preds[g.uid] <= done:
                    done.add(g.uid)
                    out.append(g)
                    break
            else:
                raise AssertionError("functx fusion: cyclic fusion groups")
        return out


def describe_space(plan) -> str:
    note = getattr(plan, "space_note", None)      # a backend's word on symbolic sizes
    if plan.reductions:
        mode = note if note and note.startswith("persistent") else \
            ("persistent" if plan.persistent else "looped") + (f"; {note}" if note else "")
        return f"reduction over (xnumel={plan.xnumel}, rnumel={plan.rnumel}), {mode}"
    return f"pointwise over {plan.xnumel} elements" + (f"; {note}" if note else "")


__all__ = ["Schedule", "Group", "TemplateChoice", "lowerable", "describe_space", "reduction_layout"]
