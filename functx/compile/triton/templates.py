"""Template kernels in the Triton backend: which `dot_general` externs become the matmul
template (functx/kernels/matmul.py), with the pointwise kernel group they feed fused in as
the epilogue, and the template's source.

The scheduler first partitions the graph as usual (dot_general is an extern). Then, per
dot_general: its epilogue candidate is a pointwise kernel group that reads its result, over
exactly its elements (one loop nest over the output, reading the result only at the
element being computed), with no path from the matmul to that group through another group
(which would make a cycle). `matmul.choose` decides with that answer; explain prints the
reason either way ("chosen: ..." on the template group, "torch.matmul (cuBLAS), not the
matmul template: ..." on a dot_general that stays an extern).
"""
from __future__ import annotations

from ...core import Var
from ...kernels import matmul
from ..fusion.indexing import numel
from ..fusion.kernel import FusionError, KernelPlan
from ..fusion.scheduler import TemplateChoice
from .runtime import load_module, module_source
from .triton_ops import TritonOps, TVal

RESULT = "mm"       # the template's result in the kernel's registers


class EpilogueOps(TritonOps):
    """TritonOps over one matmul tile: blocks are [BLOCK_M, BLOCK_N], and the matmul's
    result is read from registers, at the element being computed only."""

    def __init__(self, name, result_buffer, identity):
        super().__init__(name, 1, 1, True)
        self.is_reduction = False
        self.result_buffer, self.identity = result_buffer, identity

    def _block(self, dims):
        return "[BLOCK_M, BLOCK_N]"

    def load(self, buffer, index, dtype):
        if buffer == self.result_buffer:
            if index != self.identity:
                raise FusionError("the kernel reads the matmul's result at other elements than the one it "
                                  "computes (a transposed, shifted or broadcast use)")
            return TVal(RESULT, dtype, {"x"}, hoist=True)
        return super().load(buffer, index, dtype)


def _epilogue(schedule, grp, names):
    """(the kernel group to fuse as the epilogue, its plan) or (None, None, why not)."""
    e = grp.first
    out = e.outputs[0]
    consumers = []
    for s in schedule.sinks(out):
        if s != "out":
            g = schedule.group_of[s]
            if g not in consumers:
                consumers.append(g)
    why = "its result is only returned" if not consumers else "no kernel reads its result"
    for g in consumers:
        if g.extern or g.template is not None:
            name = g.template.eqn.prim.name if g.template is not None else g.first.prim.name
            why = f"its reader {name} is not a fusion kernel"
            continue
        if g.plan.reductions:
            why = "the kernel reading its result reduces (only pointwise epilogues fuse)"
            continue
        if g.plan.xnumel != numel(out.type.shape):
            why = "the kernel reading its result iterates over a different number of elements"
            continue
        if schedule.reaches(grp, g):
            why = "the kernel reading its result also depends on it through another group"
            continue
        members = sorted(g.members, key=lambda m: schedule.order[id(m)])
        stored = schedule.stored(members + [e])
        try:
            plan = KernelPlan("epilogue", members, stored, names, schedule.producers)
            plan.run(EpilogueOps("check", names[out], plan.x))
        except FusionError as err:
            why = str(err)
            continue
        return g, plan, None
    return None, None, why


class PrologueOps(EpilogueOps):
    """TritonOps over one [BLOCK_M, BLOCK_K] tile of A inside the template's K loop: the
    value of A is captured instead of stored."""

    def __init__(self, name, a_buffer):
        super().__init__(name, None, None)
        self.a_buffer, self.value = a_buffer, None

    def _block(self, dims):
        return "[BLOCK_M, BLOCK_K]"

    def store(self, buffer, index, value, dtype):
        if buffer != self.a_buffer:
            raise FusionError("the prologue would store another value")
        self.value = self._broadcast(value, {"x"})


def _prologue(schedule, grp, names, layout):
    """(the kernel group computing A, its plan over A) or (None, None, why not): a
    pointwise kernel whose only stored value is read by this matmul alone, as its lhs."""
    e = grp.first
    a = e.inputs[0]
    if layout.n > matmul.CONFIG.prologue_max_n:
        return None, None, f"N={layout.n} > {matmul.CONFIG.prologue_max_n}: recomputing A per column of tiles costs more"
    lhs_groups = {schedule.group_of[id(p)].uid: schedule.group_of[id(p)] for p in schedule.sources_of([a])}
    rhs_groups = {schedule.group_of[id(p)].uid for p in schedule.sources_of([e.inputs[1]])}
    for g in lhs_groups.values():
        if g.extern or g.template is not None or g.plan.reductions or g.uid in rhs_groups:
            continue
        if any(schedule.sinks(v) != {id(e)} for v in schedule.stored(g.members)):
            continue        # something else reads what it computes: it is stored anyway
        if schedule.reaches(g, grp):
            continue
        members = sorted(g.members, key=lambda m: schedule.order[id(m)])
        try:
            plan = KernelPlan("prologue", members, [a], names, schedule.producers)
            if plan.xnumel != numel(a.type.shape):
                continue
            ops = PrologueOps("check", names[a])
            plan.run(ops)
            if ops.value is None:
                continue
        except FusionError:
            continue
        return g, plan, None
    return None, None, "no pointwise kernel computes A for this matmul alone"


def choose_matmul_templates(schedule, names):
    """Make the dot_general groups the matmul template is chosen for template groups."""
    for grp in list(schedule.groups):
        if not grp.extern or grp.first.prim.name != "dot_general":
            continue
        e = grp.first
        x, y = e.inputs
        if not (isinstance(x, Var) and isinstance(y, Var)):
            continue
        out = e.outputs[0]
        layout = matmul.MatmulLayout.of(x.type.shape, y.type.shape, e.params["dimension_numbers"])
        consumer, plan, why_alone = _epilogue(schedule, grp, names)
        ops = [m.prim.name for m in consumer.members] if consumer is not None else []
        producer, pro_plan, _ = _prologue(schedule, grp, names, layout)
        pro_ops = [m.prim.name for m in producer.members] if producer is not None else []
        ok, reason = matmul.choose(x.type, y.type, layout, ops, pro_ops)
        if not ok:
            alone = f" (no epilogue to fuse: {why_alone})" if why_alone and matmul.CONFIG.enabled else ""
            schedule.extern_reason[id(e)] = f"torch.matmul (cuBLAS), not the matmul template: {reason}{alone}"
            continue
        if plan is None:       # no epilogue: the template stores its result
            plan = KernelPlan("epilogue", [], [out], names, schedule.producers)
        space = (f"matmul template, batch={layout.batch} M={layout.m} N={layout.n} K={layout.k}"
                 + (f", prologue on A: {', '.join(pro_ops)}" if pro_ops else "")
                 + (f", epilogue: {', '.join(ops)}" if ops else ""))
        fused = [g for g in (producer, consumer) if g is not None]
        choice = TemplateChoice("mm", e, space, reason, (layout, pro_plan))
        schedule.make_template(grp, fused, choice, plan)


def matmul_source(grp, name, names, interpret):
    """-> (kernel source, input buffers, output buffers, launcher) of a matmul template group."""
    t = grp.template
    e = t.eqn
    layout, pro_plan = t.data
    x, out = e.inputs[0], e.outputs[0]
    prologue = None
    ops = EpilogueOps(name, names[out], grp.plan.x)
    if pro_plan is not None:
        pro = PrologueOps(name, names[x])
        pro_plan.run(pro)
        prologue = (pro.prelude + pro.body, pro.value, layout)
        ops.in_args, ops.counter = pro.in_args, pro.counter     # one numbering of arguments, temporaries
    grp.plan.run(ops)
    ins, outs = list(ops.in_args), list(ops.out_args)
    src = matmul.kernel_source(name, x.type.dtype, out.type.dtype, [ops.in_args[b] for b in ins],
                               [ops.out_args[b] for b in outs], ops.prelude + ops.body, RESULT, interpret,
                               prologue)
    mod = load_module(module_source(src, interpret), interpret)
    launcher = matmul.MatmulLauncher(getattr(mod, name), layout, x.type.dtype, interpret,
                                     prologue=prologue is not None)
    return src, ins, outs, launcher
