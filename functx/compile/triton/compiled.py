"""TritonCompiled: an optimized graph -> fusion groups -> Triton kernels + a generated
host wrapper."""
from __future__ import annotations

import math
import re

import torch

from ...core import Literal
from ...core.ir import GraphPrinter
from ..compiled import Compiled
from ..codegen import compile_function, emit_expr, literal_source
from ..loops import loop_report
from .kernel import is_inlined
from .runtime import Launcher, check_mode, load_module, module_source
from .scheduler import Schedule, describe_space
from .torch_ops import TorchOps
from .triton_ops import TritonOps

PERSISTENT_MAX = 1024     # rows up to this many elements are reduced in one block


class GroupInfo:
    """One entry of `.groups`: a kernel or an extern, with what explain prints."""

    def __init__(self, index, kind, name, eqns, stored, space, source=None, reason=None):
        self.index, self.kind, self.name = index, kind, name
        self.eqns, self.stored, self.space = eqns, stored, space
        self.source, self.reason = source, reason

    def __repr__(self):
        return f"<group {self.index}: {self.kind} {self.name}>"


def _graph_device(graph):
    types = [v.type for v in graph.invars + graph.constvars] + \
        [v.type for e in graph.eqns for v in e.outputs]
    devices = {t.device.type for t in types}
    return "cuda" if "cuda" in devices else "cpu"


def plan_device(plan):
    return next(iter(plan.stored)).type.device


def _kernel_name(i, plan):
    kind = "red" if plan.reductions else "poi"
    ops = []
    for e in plan.members:
        n = e.prim.name.replace("reduce_", "").replace("convert_element_type", "convert")
        if n not in ops:
            ops.append(n)
    name = f"k{i}_{kind}_" + "_".join(ops)
    return re.sub(r"\W", "_", name)[:48].rstrip("_")


class TritonCompiled(Compiled):
    backend = "triton"

    def __init__(self, graph, persistent_max: int | None = None):
        self.graph = graph
        printer = GraphPrinter()
        self.graph_text = printer.format(self.graph)
        self.printer = printer
        g = self.graph
        names = {v: printer.name(v) for v in list(g.invars) + list(g.constvars)}
        for e in g.eqns:
            for v in e.outputs:
                names[v] = printer.name(v)
        self.names = names
        self.interpret = check_mode(_graph_device(g))
        self.schedule = Schedule(g, names, PERSISTENT_MAX if persistent_max is None else persistent_max)
        self.kernels: list[str] = []
        self.groups: list[GroupInfo] = []
        self._launchers: dict = {}
        self._launch_args: dict = {}
        k = 0
        for i, grp in enumerate(self.schedule.groups):
            eqns = [printer.format_eqn(e) for e in grp.members]
            if grp.extern:
                e = grp.first
                self.groups.append(GroupInfo(i, "extern", e.prim.name, eqns,
                                             [names[v] for v in e.outputs], "extern",
                                             reason=self.schedule.extern_reason[id(e)]))
                continue
            plan = grp.plan
            plan.name = _kernel_name(k, plan)
            ops = TritonOps(plan.name, plan.xnumel, plan.rnumel, plan.persistent)
            ops.is_reduction = bool(plan.reductions)
            plan.run(ops)
            ins, outs = list(ops.in_args), list(ops.out_args)
            src = ops.source((ins, outs))
            mod = load_module(module_source(src, self.interpret), self.interpret)
            kind = "pointwise" if not plan.reductions else ("persistent" if plan.persistent else "looped")
            self._launchers[plan.name] = Launcher(getattr(mod, plan.name), kind, plan.xnumel, plan.rnumel,
                                                  self.interpret)
            self._launch_args[id(grp)] = (ins, outs)
            self.kernels.append(src)
            self.groups.append(GroupInfo(i, "kernel", plan.name, eqns, outs, describe_space(plan), source=src))
            k += 1
        self.source, self._globals = self._wrapper()
        self.call = compile_function(self.source, "call", self._globals, g.consts,
                                     f"<functx.jit triton {id(self):x}>")
        self._why: list | None = None

    # ------------------------------------------------------------ host wrapper
    def _wrapper(self):
        g, names, sched = self.graph, self.names, self.schedule
        glob = {"torch": torch, "math": math, **self._launchers}
        args = [names[v] for v in list(g.invars) + list(g.constvars)]
        lines = [f"def call({', '.join(args)}):"]
        have = set(list(g.invars) + list(g.constvars))
        loaded = {b for ins, _ in self._launch_args.values() for b in ins}
        for v in list(g.invars) + list(g.constvars):
            if names[v] in loaded:
                lines.append(f"    {names[v]} = {names[v]}.contiguous()")

        def materialize(a):
            """Make a value a tensor in the wrapper: views and constants through torch."""
            if isinstance(a, Literal):
                return literal_source(a.value)
            if a in have:
                return names[a]
            e = sched.producers[a]
            assert is_inlined(e), f"{names[a]} was not stored by its group"
            srcs = [materialize(x) for x in e.inputs]
            lines.append(f"    {names[a]} = {emit_expr(e, srcs, glob)}  # {a.type}")
            have.add(a)
            return names[a]

        for i, grp in enumerate(sched.groups):
            info = self.groups[i]
            if grp.extern:
                e = grp.first
                srcs = [materialize(a) for a in e.inputs]
                outs = ", ".join(names[v] for v in e.outputs)
                if e.prim.multiple_results and len(e.outputs) == 1:
                    outs += ","
                lines.append(f"    # group {i}: extern {e.prim.name}")
                lines.append(f"    {outs} = {emit_expr(e, srcs, glob, TritonCompiled)}")
                for v in e.outputs:
                    have.add(v)
                    if names[v] in loaded:
                        lines.append(f"    {names[v]} = {names[v]}.contiguous()")
                continue
            plan = grp.plan
            ins, outs = self._launch_args[id(grp)]
            lines.append(f"    # group {i}: {info.space}")
            for v in plan.stored:
                t = v.type
                lines.append(f"    {names[v]} = torch.empty({tuple(t.shape)!r}, dtype={t.dtype}, "
                             f"device={str(t.device)!r})")
                have.add(v)
            sizes = f"xnumel={plan.xnumel}" + (f", rnumel={plan.rnumel}" if plan.reductions else "")
            lines.append(f"    {plan.name}({', '.join(ins + outs)}, {sizes})")
        outs = [materialize(a) for a in g.outvars]
        lines.append(f"    return ({', '.join(outs)}{',' if len(outs) == 1 else ''})")
        return "\n".join(lines) + "\n", glob

    def run_torch(self, *inputs):
        """Run the same schedule with every kernel body evaluated by TorchOps (eager torch):
        checks fusion and index math independently of Triton."""
        env = {}
        for v, x in zip(list(self.graph.invars) + list(self.graph.constvars), list(inputs) + list(self.graph.consts)):
            env[v] = x.contiguous()

        def value(a):
            if isinstance(a, Literal):
                return a.value
            if a not in env:
                e = self.schedule.producers[a]
                out = e.prim.impl(*[value(x) for x in e.inputs], **e.params)
                env[a] = out
            return env[a]

        for grp in self.schedule.groups:
            if grp.extern:
                e = grp.first
                outs = e.prim.impl(*[value(a) for a in e.inputs], **e.params)
                outs = list(outs) if e.prim.multiple_results else [outs]
                for v, o in zip(e.outputs, outs):
                    env[v] = o.contiguous()
                continue
            plan = grp.plan
            buffers = {self.names[v]: x for v, x in env.items() if isinstance(x, torch.Tensor)}
            for v in plan.stored:
                env[v] = buffers[self.names[v]] = torch.empty(v.type.shape, dtype=v.type.dtype,
                                                              device=v.type.device)
            plan.run(TorchOps(buffers, plan.xnumel, plan.rnumel, device=plan_device(plan)))
        return [value(a) for a in self.graph.outvars]

    # ------------------------------------------------------------ explain
    def why_not_fused(self) -> list:
        """(group i, group i+1, reason) for each pair of adjacent groups."""
        if self._why is None:
            gs = self.schedule.groups
            self._why = [(i, i + 1, self.schedule.why_not(gs[i], gs[i + 1]) or
                          "independent: no shared reads, fusing saves no memory traffic")
                         for i in range(len(gs) - 1)]
        return self._why

    def report(self) -> str:
        nk = sum(1 for g in self.groups if g.kind == "kernel")
        ne = len(self.groups) - nk
        out = ["backend: triton" + (" (interpreter)" if self.interpret else ""), "",
               f"-- fusion groups: {nk} kernel(s), {ne} extern(s) --"]
        for g in self.groups:
            head = f"group {g.index}: {g.kind} {g.name} — {g.space}"
            if g.kind == "extern":
                head = f"group {g.index}: extern {g.name} — {g.reason}"
            out.append(head)
            out += [f"    {l}" for l in g.eqns]
            out.append(f"    writes: {', '.join(g.stored)}")
        if len(self.groups) > 1:
            out += ["", "-- why adjacent groups were not fused --"]
            out += [f"  group {a} / group {b}: {why}" for a, b, why in self.why_not_fused()]
        out += ["", "-- kernels --"]
        for src in self.kernels:
            out += [src]
        out += ["-- host wrapper --", self.source]
        return "\n".join(out) + loop_report(self._globals)
