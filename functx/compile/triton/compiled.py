"""TritonCompiled: an optimized graph -> fusion groups -> Triton kernels + a generated
host wrapper (the shared half is fusion/compiled.py)."""
from __future__ import annotations

from .. import cuda_graphs
from ..fusion.compiled import FusedCompiled, GroupInfo  # noqa: F401  (GroupInfo: what .groups holds)
from ..fusion.indexing import is_symbolic_size
from .runtime import Launcher, check_mode, load_module, module_source
from .templates import choose_matmul_templates, matmul_source
from .triton_ops import TritonOps, lowerable

PERSISTENT_MAX = 1024     # rows up to this many elements are reduced in one block


def _graph_device(graph):
    types = [v.type for v in graph.invars + graph.constvars] + \
        [v.type for e in graph.eqns for v in e.outputs]
    devices = {t.device.type for t in types}
    return "cuda" if "cuda" in devices else "cpu"


class TritonCompiled(FusedCompiled):
    backend = "triton"
    symbolic_sizes = True      # compiles jit's symbolic-dim graphs (one artifact for every size)

    def __init__(self, graph, persistent_max: int | None = None):
        self.interpret = check_mode(_graph_device(graph))
        self.persistent_max = PERSISTENT_MAX if persistent_max is None else persistent_max
        super().__init__(graph, self.persistent_max)

    def lowerable(self, eqn):
        return lowerable(eqn)

    def kernel_source(self, plan):
        # A symbolic row length (jit's dynamic dims) gets two variants of one kernel: looped
        # (right for every length) and persistent (one block per row), which the launcher
        # picks per call for rows up to persistent_max.
        variants = [plan.persistent]
        if plan.reductions and is_symbolic_size(plan.rnumel) and self.persistent_max > 0:
            variants = [False, True]
            plan.space_note = (f"persistent for rows up to {self.persistent_max} elements, looped beyond "
                               "(chosen per call); sizes are kernel arguments")
        elif self.symbolic:
            plan.space_note = "sizes are kernel arguments"
        shared: dict = {}          # symbolic size -> argument name, the same in every variant
        printers = []
        saved = plan.persistent
        try:
            for persistent in variants:
                name = plan.name + ("_persistent" if len(variants) > 1 and persistent else "")
                ops = TritonOps(name, plan.xnumel, plan.rnumel, persistent)
                ops.size_args = shared
                ops.is_reduction = bool(plan.reductions)
                plan.persistent = persistent
                plan.run(ops)
                printers.append(ops)
        finally:
            plan.persistent = saved
        plan.size_args = list(shared)
        ins, outs = list(printers[0].in_args), list(printers[0].out_args)
        return "\n\n".join(ops.source((ins, outs)) for ops in printers), ins, outs

    def load_kernels(self, generated):
        launchers = {}
        for plan, src in generated:
            mod = load_module(module_source(src, self.interpret), self.interpret)
            kind = "pointwise" if not plan.reductions else ("persistent" if plan.persistent else "looped")
            launchers[plan.name] = Launcher(getattr(mod, plan.name), kind, plan.xnumel, plan.rnumel,
                                            self.interpret, dynamic=is_symbolic_size(plan.xnumel) or
                                            is_symbolic_size(plan.rnumel),
                                            persistent=getattr(mod, plan.name + "_persistent", None),
                                            persistent_max=self.persistent_max)
        return launchers

    def launch_source(self, plan, ins, outs):
        sizes = f"xnumel={self.size_source(plan.xnumel)}" + \
            (f", rnumel={self.size_source(plan.rnumel)}" if plan.reductions else "")
        scalars = [self.size_source(e) for e in getattr(plan, "size_args", ())]
        return f"{plan.name}({', '.join(ins + outs + scalars)}, {sizes})"

    def choose_templates(self, schedule):
        if self.symbolic:     # the template's tiles and autotuning are chosen per (M, N, K)
            for grp in schedule.groups:
                if grp.extern and grp.first.prim.name == "dot_general":
                    schedule.extern_reason[id(grp.first)] = (
                        "torch.matmul (cuBLAS), not the matmul template: symbolic sizes (the template's "
                        "tiles and autotuning are chosen per M, N, K)")
            return
        choose_matmul_templates(schedule, self.names)

    def template_source(self, grp, name):
        return matmul_source(grp, name, self.names, self.interpret)

    def with_cuda_graphs(self, call, option):
        call, self._graph_runner, self._graph_reason = cuda_graphs.wrap(call, self.graph, option)
        return call

    def report(self):
        state = cuda_graphs.report(self.graph, getattr(self, "_graph_runner", None),
                                   getattr(self, "_graph_reason", None))
        return super().report() + f"\n-- CUDA graphs --\n{state}\n"

    def report_header(self):
        return "backend: triton" + (" (interpreter)" if self.interpret else "")
