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
            why = f"its reader {g.first.prim.name} is not a fusion kernel"
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
        ok, reason = matmul.choose(x.type, y.type, layout, ops)
        if not ok:
            alone = f" (no epilogue to fuse: {why_alone})" if why_alone and matmul.CONFIG.enabled else ""
            schedule.extern_reason[id(e)] = f"torch.matmul (cuBLAS), not the matmul template: {reason}{alone}"
            continue
        if plan is None:       # the template alone: it stores its result
            plan = KernelPlan("epilogue", [], [out], names, schedule.producers)
        space = (f"matmul template, batch={layout.batch} M={layout.m} N={layout.n} K={layout.k}"
                 + (f", epilogue: {', '.join(ops)}" if ops else ""))
        schedule.make_template(grp, consumer, TemplateChoice("mm", e, space, reason, layout), plan)


def matmul_source(grp, name, names, interpret):
    """-> (kernel source, input buffers, output buffers, launcher) of a matmul template group."""
    t = grp.template
    e = t.eqn
    x, out = e.inputs[0], e.outputs[0]
    ops = EpilogueOps(name, names[out], grp.plan.x)
    grp.plan.run(ops)
    ins, outs = list(ops.in_args), list(ops.out_args)
    src = matmul.kernel_source(name, x.type.dtype, out.type.dtype, [ops.in_args[b] for b in ins],
                               [ops.out_args[b] for b in outs], ops.prelude + ops.body, RESULT, interpret)
    mod = load_module(module_source(src, interpret), interpret)
    launcher = matmul.MatmulLauncher(getattr(mod, name), t.data, x.type.dtype, interpret)
    return src, ins, outs, launcher
