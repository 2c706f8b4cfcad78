"""FusedCompiled: what the fusion backends share. An optimized graph -> fusion groups
(scheduler.py) -> one kernel per group (the backend's ops handler) + a generated Python host
wrapper that allocates outputs, calls the kernels and runs externs and views through torch
(codegen.emit_expr); explain's report and `run_torch`.

A backend subclass provides: `backend`, `lowerable(eqn)`, `kernel_source(plan) -> (source,
input buffers, output buffers)`, `load_kernels([(plan, source)]) -> {name: callable}` and
`launch_source(plan, ins, outs) -> one line of the wrapper`.
"""
from __future__ import annotations

import math
import re

import torch

from ...core import Literal, Var
from ...core.ir import GraphPrinter
from ..codegen import compile_function, emit_expr, free_dead_names, literal_source
from ..compiled import Compiled
from ..loops import loop_report
from ..nan_checks import CompiledNaNChecks
from ..symbolic import SYMBOL_FUNCTIONS, check_printable, graph_symbols, symbol_bindings
from ...kernels.cpu_gemm import mm_into
from ...prims.linalg import matmul_layout, matmul_sources
from .buffer_pool import SlotPool, assign_slots
from .inplace import inplace_outputs
from .kernel import is_inlined
from .scheduler import Schedule, describe_space
from .torch_ops import TorchOps


def _poolable_extern(e) -> bool:
    """A matmul (one torch.matmul, maybe reshaped after) writes `out=` into a buffer."""
    return e.prim.name == "dot_general" and e.outputs[0].type.dtype.is_floating_point


def _matmul_into(e, srcs, out_buffer) -> str:
    """dot_general as one torch.matmul written into out_buffer (contiguous, of the output's
    shape): where the result is reshaped after (factor_dots' products), the matmul writes into
    a view of the buffer in its own shape, so a large product reuses its buffer too."""
    lhs, rhs, out_shape = matmul_sources(e, srcs)
    if out_shape is None and e.inputs[0].type.ndim == 2 and e.inputs[1].type.ndim == 2:
        return f"_mm_into({lhs}, {rhs}, {out_buffer})"      # oneDNN where it is faster (kernels/cpu_gemm.py)
    if out_shape is None:
        return f"torch.matmul({lhs}, {rhs}, out={out_buffer})"
    # matmul_layout reshapes to (batch, lhs free, rhs free) flattened: the result before the
    # final reshape (shape arithmetic only: a meta-tensor matmul would import sympy, 0.5 s)
    (lc, _), (lb, _) = e.params["dimension_numbers"]
    nb, nm = len(lb), e.inputs[0].type.ndim - len(lc) - len(lb)
    shape = tuple(e.outputs[0].type.shape)
    flat = (*shape[:nb], math.prod(shape[nb:nb + nm]), math.prod(shape[nb + nm:]))
    if not nb:      # two matrices (matmul_layout's reshapes): oneDNN where it is faster
        return f"_mm_into({lhs}, {rhs}, {out_buffer}.view({flat!r})).view({out_shape!r})"
    return f"torch.matmul({lhs}, {rhs}, out={out_buffer}.view({flat!r})).view({out_shape!r})"


def _rows_layout(e):
    """(m, k, n) if dot_general e is an N-D lhs (contracted over its last dim, no batch dims,
    static shape) times a 2-D rhs: one torch.mm of the lhs's rows; else None."""
    x, y = e.inputs
    (lc, _), (lb, _) = e.params["dimension_numbers"]
    xs = tuple(x.type.shape)
    if lb or y.type.ndim != 2 or len(xs) < 3 or tuple(lc) != (len(xs) - 1,) \
            or not all(type(n) is int for n in xs) or matmul_layout(xs, tuple(y.type.shape),
                                                                e.params["dimension_numbers"])[0]:
        return None
    return math.prod(xs[:-1]), xs[-1], e.outputs[0].type.shape[-1]


def _rows_matmul_into(e, lhs_rows, rhs_src, out_buffer, out, glob) -> list:
    """Lines computing e (see _rows_layout) as _mm_into(lhs rows, rhs, a 2-D view of
    out_buffer) and binding its output `out`: torch.matmul folds an N-D lhs the same way, for
    ~5 us more per call. lhs_rows: the source of the lhs as (m, k) rows. A pooled buffer's
    2-D view is made once (a global); another buffer (an expression) is bound first."""
    m, _, n = _rows_layout(e)
    _, rhs, _ = matmul_sources(e, ["x", rhs_src])
    if out_buffer in glob:
        flat = f"{out_buffer}_rows"
        glob.setdefault(flat, glob[out_buffer].view(m, n))
        return [f"_mm_into({lhs_rows}, {rhs}, {flat})", f"{out} = {out_buffer}"]
    return [f"{out} = {out_buffer}", f"_mm_into({lhs_rows}, {rhs}, {out}.view(({m}, {n})))"]


def _guarded(pooled, fresh, pool):
    def call(*inputs):
        lock = pool.lock
        if lock.acquire(False):
            try:
                pool.ensure()           # grown back if it was released (buffer_pool.py)
                return pooled(*inputs)
            finally:
                lock.release()
        return fresh(*inputs)
    return call


class GroupInfo:
    """One entry of `.groups`: a kernel or an extern, with what explain prints."""

    def __init__(self, index, kind, name, eqns, stored, space, source=None, reason=None):
        self.index, self.kind, self.name = index, kind, name
        self.eqns, self.stored, self.space = eqns, stored, space
        self.source, self.reason = source, reason

    def __repr__(self):
        return f"<group {self.index}: {self.kind} {self.name}>"


def check_size_sources(graph, sources, namespace):
    """Each symbolic size the wrapper passes to a kernel, printed and evaluated at the traced
    sizes, must equal its expression's value there; otherwise raise (jit traces statically)."""
    values = graph_symbols(graph)
    env_ = values[0].node.shape_env
    hints = getattr(env_, "backed_var_to_val", None)
    hints = hints if hints is not None else env_.var_to_val
    env = dict(namespace)
    env.update({str(k): int(v) for k, v in hints.items()})
    for text, size in sources:
        expr = size[1] if isinstance(size, tuple) else size
        expected = expr.xreplace({k: v for k, v in hints.items() if k in expr.free_symbols})
        try:
            got = eval(text, env)
        except Exception as e:
            raise NotImplementedError(f"kernel size {expr} does not print as Python ({type(e).__name__}: {e})") from None
        if not expected.is_number or float(got) != float(expected):
            raise NotImplementedError(f"kernel size {expr} prints as {text!r}, which gives {got!r} at the "
                                      f"traced sizes instead of {expected}")


def plan_device(plan):
    return next(iter(plan.stored)).type.device


def kernel_name(i, plan):
    kind = "red" if plan.reductions else "poi"
    ops = []
    for e in plan.members:
        n = e.prim.name.replace("reduce_", "").replace("convert_element_type", "convert")
        if n not in ops:
            ops.append(n)
    name = f"k{i}_{kind}_" + "_".join(ops)
    return re.sub(r"\W", "_", name)[:48].rstrip("_")


class FusedCompiled(Compiled):
    backend = "fused"

    def __init__(self, graph, persistent_max: int):
        self.graph = g = graph
        # jit's symbolic dims: the wrapper reads each size symbol from an input's shape and
        # passes sizes to the kernels as arguments, so one kernel set serves every size
        self.symbolic = bool(graph_symbols(g))
        self._size_sources: list = []     # (source printed in the wrapper, the size it stands for)
        printer = GraphPrinter()
        self.graph_text = printer.format(g)
        self.printer = printer
        names = {v: printer.name(v) for v in list(g.invars) + list(g.constvars)}
        for e in g.eqns:
            for v in e.outputs:
                names[v] = printer.name(v)
        self.names = names
        self.schedule = Schedule(g, names, self.lowerable, persistent_max)
        self.choose_templates(self.schedule)
        self.kernels: list[str] = []
        self.groups: list[GroupInfo] = []
        self._launch_args: dict = {}
        # kernel outputs written over a dying input (inplace.py), for backends that do it
        over = inplace_outputs(self.schedule, _poolable_extern) if self.inplace_outputs else {}
        self.written_over = {v: b for pairs in over.values() for v, b in pairs.items()}
        for grp in self.schedule.groups:
            if grp.plan is not None:
                grp.plan.written_over = over.get(id(grp), {})
        generated, templates = [], {}
        for i, grp in enumerate(self.schedule.groups):
            eqns = [printer.format_eqn(e) for e in grp.members]
            if grp.template is not None:
                name = f"{grp.template.kind}{len(self.kernels)}"
                src, ins, outs, templates[name] = self.template_source(grp, name)
                self._launch_args[id(grp)] = (ins, outs)
                self.kernels.append(src)
                self.groups.append(GroupInfo(i, "template", name, eqns, outs, grp.template.space,
                                             source=src, reason=grp.template.reason))
                continue
            if grp.extern:
                e = grp.first
                self.groups.append(GroupInfo(i, "extern", e.prim.name, eqns,
                                             [names[v] for v in e.outputs], "extern",
                                             reason=self.schedule.extern_reason[id(e)]))
                continue
            plan = grp.plan
            plan.name = kernel_name(len(self.kernels), plan)
            src, ins, outs = self.kernel_source(plan)
            generated.append((plan, src))
            self._launch_args[id(grp)] = (ins, outs)
            self.kernels.append(src)
            stored = [names[v] + (f" (over {names[plan.written_over[v]]})" if v in plan.written_over else "")
                      for v in plan.stored]
            self.groups.append(GroupInfo(i, "kernel", plan.name, eqns, stored, describe_space(plan), source=src))
        self._launchers = {**self.load_kernels(generated), **templates}
        # slots have one size: a symbolic graph allocates per call
        self.pooled = self._pool_buffers() if self.pool_buffers and not self.symbolic else {}
        self.source, self._globals = self._wrapper(self.pooled)
        if self.symbolic:       # every size the wrapper prints must evaluate to the traced one
            check_printable(g, self._globals)
            check_size_sources(g, self._size_sources, self._globals)
        self.call = compile_function(self.source, "call", self._globals, g.consts,
                                     f"<functx.jit {self.backend} {id(self):x}>")
        if self.pooled:
            # a call that finds the pool in use (another thread) allocates its own buffers
            fresh_source, _ = self._wrapper({}, self._globals, name="call_fresh")
            fresh = compile_function(fresh_source, "call_fresh", self._globals, g.consts,
                                     f"<functx.jit {self.backend} {id(self):x} fresh>")
            self.call = _guarded(self.call, fresh, self._pool)
        self._why: list | None = None

    def release(self) -> int:
        """Free the pooled buffers (they grow back at the next call); the bytes freed."""
        pool = getattr(self, "_pool", None)
        return pool.release() if pool is not None else 0

    # ------------------------------------------------------------ backend hooks
    def lowerable(self, eqn) -> str | None:
        raise NotImplementedError

    def kernel_source(self, plan):
        raise NotImplementedError

    def load_kernels(self, generated) -> dict:
        raise NotImplementedError

    def launch_source(self, plan, ins, outs) -> str:
        raise NotImplementedError

    def choose_templates(self, schedule):
        """Turn some extern groups (with the kernel group they feed) into template groups
        (schedule.make_template); a backend without templates keeps them all."""

    def template_source(self, grp, name):
        """-> (kernel source, input buffers, output buffers, launcher) of a template group."""
        raise NotImplementedError

    def report_header(self) -> str:
        return f"backend: {self.backend}"

    def size_source(self, size) -> str:
        """A kernel size in the host wrapper: an int, a symbolic size (a sympy expression in the
        symbols the wrapper binds), or ("float", expression) for a float-valued one."""
        if isinstance(size, int):
            return str(size)
        text = f"float({size[1]})" if isinstance(size, tuple) else str(size)
        self._size_sources.append((text, size))
        return text

    pool_buffers = False        # a backend whose allocator page-faults on fresh memory sets it
    inplace_outputs = False     # a backend whose kernels can write an output over an input sets it

    def fresh_extern(self, eqn) -> bool:
        """Does this extern return new tensors, never views of its operands (buffer_pool)?"""
        return False

    def output_buffer(self, v) -> str | None:
        """Source of the fresh buffer a kernel or matmul writes v into, or None for the
        default (torch.empty; a matmul allocates its own result)."""
        return None

    def _pool_buffers(self) -> dict:
        """var -> the global name of its buffer, a view of a slot allocated once
        (buffer_pool.py)."""
        slot_of, slots = assign_slots(self.schedule, _poolable_extern, self.written_over, self.fresh_extern)
        self._pool = SlotPool(slots)
        self._pool_views = {}
        out = {}
        for v, k in slot_of.items():
            name = f"_slot{k}_{self.names[v]}"
            self._pool_views[name] = self._pool.tensors[k].view(tuple(v.type.shape))
            out[v] = name
        return out

    # ------------------------------------------------------------ host wrapper
    def _wrapper(self, pooled, glob=None, name="call"):
        """The host wrapper's source and globals; pooled: var -> the global name of the
        pooled buffer it is written into (empty: every buffer is allocated per call)."""
        g, names, sched = self.graph, self.names, self.schedule
        if glob is None:
            glob = {"torch": torch, "math": math, "_mm_into": mm_into, **self._launchers,
                    **getattr(self, "_pool_views", {})}
        args = [names[v] for v in list(g.invars) + list(g.constvars)]
        lines = [f"def {name}({', '.join(args)}):"]
        if self.symbolic:
            glob.update(SYMBOL_FUNCTIONS)
            lines += [f"    {sym} = {names[g.invars[i]]}.shape[{d}]" for sym, i, d in symbol_bindings(g)]
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
            if grp.template is not None:
                ins, outs = self._launch_args[id(grp)]
                eqn = grp.template.eqn
                operands = [materialize(a) for a in eqn.inputs if a in have or not self._fused_input(grp, a)]
                lines.append(f"    # group {i}: {info.space}")
                for v in grp.plan.stored:
                    t = v.type
                    lines.append(f"    {names[v]} = torch.empty({tuple(t.shape)!r}, dtype={t.dtype}, "
                                 f"device={str(t.device)!r})")
                    have.add(v)
                lines.append(f"    {info.name}({', '.join(operands + ins + outs)})")
                self._check_line(lines, glob, [names[v] for v in grp.plan.stored if v.type.dtype.is_floating_point])
                continue
            if grp.extern:
                e = grp.first
                out_buffer = None
                if e.outputs and _poolable_extern(e):
                    out_buffer = pooled.get(e.outputs[0]) or self.output_buffer(e.outputs[0])
                rows = _rows_layout(e) if out_buffer is not None else None
                if rows is not None:
                    srcs = [self._rows_source(e.inputs[0], rows[:2], materialize), materialize(e.inputs[1])]
                else:
                    srcs = [materialize(a) for a in e.inputs]
                outs = ", ".join(names[v] for v in e.outputs)
                if e.prim.multiple_results and len(e.outputs) == 1:
                    outs += ","
                lines.append(f"    # group {i}: extern {e.prim.name}")
                if rows is not None:
                    lines += [f"    {line}" for line in _rows_matmul_into(e, srcs[0], srcs[1], out_buffer, outs, glob)]
                elif out_buffer is not None:
                    lines.append(f"    {outs} = {_matmul_into(e, srcs, out_buffer)}")
                else:
                    expr = emit_expr(e, srcs, glob, type(self))     # a scan's body compiles with this backend
                    lines.append(f"    {outs} = {expr}" if outs else f"    {expr}")
                self._check_line(lines, glob, [names[v] for v in e.outputs if v.type.dtype.is_floating_point])
                for v in e.outputs:
                    have.add(v)
                    if names[v] in loaded and out_buffer is None:     # written out= : contiguous
                        lines.append(f"    {names[v]} = {names[v]}.contiguous()")
                continue
            plan = grp.plan
            ins, outs = self._launch_args[id(grp)]
            lines.append(f"    # group {i}: {info.space}")
            for v in plan.stored:
                t = v.type
                b = plan.written_over.get(v)
                if v in pooled:
                    over = f", over {names[b]}" if b is not None else ""
                    lines.append(f"    {names[v]} = {pooled[v]}  # pooled{over}")
                elif b is not None:         # the kernel writes v through b's pointer
                    lines.append(f"    {names[v]} = {names[b]}.view({tuple(t.shape)!r})  # over {names[b]}")
                elif self.output_buffer(v) is not None:
                    lines.append(f"    {names[v]} = {self.output_buffer(v)}")
                else:
                    lines.append(f"    {names[v]} = torch.empty({tuple(t.shape)!r}, dtype={t.dtype}, "
                                 f"device={str(t.device)!r})")
                have.add(v)
            lines.append(f"    {self.launch_source(plan, ins, outs)}")
            self._check_line(lines, glob, [names[v] for v in plan.stored if v.type.dtype.is_floating_point])
        outs = [materialize(a) for a in g.outvars]
        lines.append(f"    return ({', '.join(outs)}{',' if len(outs) == 1 else ''})")
        return "\n".join(free_dead_names(lines)) + "\n", glob

    def _rows_source(self, x, shape, materialize) -> str:
        """Source of x as an (m, k) matrix, from the var x is a chain of reshapes of (no line
        for the N-D views in between): that var, or its `.reshape((m, k))`."""
        p = self.schedule.producers.get(x)
        while p is not None and p.prim.name == "reshape" and isinstance(p.inputs[0], Var):
            x = p.inputs[0]
            p = self.schedule.producers.get(x)
        src = materialize(x)
        return src if tuple(x.type.shape) == tuple(shape) else f"{src}.reshape({tuple(shape)!r})"

    def _fused_input(self, grp, a) -> bool:
        """Is operand `a` of a template computed inside it (a prologue), never stored?"""
        e = self.schedule.producers.get(a)
        while e is not None and is_inlined(e) and e.inputs:
            e = self.schedule.producers.get(e.inputs[0])
        return e is not None and self.schedule.group_of.get(id(e)) is grp

    def _check_line(self, lines, glob, written):
        """debug_nans (graph traced with it on): check what a group wrote; on a NaN, re-run
        the graph op by op to name the first equation that made it (compile/nan_checks.py)."""
        if not self.graph.meta.check_nans or not written:
            return
        glob.setdefault("_nans", CompiledNaNChecks(self.graph, self.backend))
        g = self.graph
        inputs = ", ".join(self.names[v] for v in list(g.invars) + list(g.constvars))
        lines.append(f"    _nans.group(({', '.join(written)},), ({inputs}{',' if inputs else ''}))")

    def run_torch(self, *inputs):
        """Run the same schedule with every kernel body evaluated by TorchOps (eager torch):
        checks fusion and index math independently of the backend's code generation."""
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
            if grp.extern or grp.template is not None:
                e = grp.first if grp.extern else grp.template.eqn
                outs = e.prim.impl(*[value(a) for a in e.inputs], **e.params)
                outs = list(outs) if e.prim.multiple_results else [outs]
                for v, o in zip(e.outputs, outs):
                    env[v] = o.contiguous()
                if grp.extern:
                    continue
            plan = grp.plan
            buffers = {self.names[v]: x for v, x in env.items() if isinstance(x, torch.Tensor)}
            for v in plan.stored:
                if v in env:        # a template's own result, computed above
                    continue
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
        nt = sum(1 for g in self.groups if g.kind == "template")
        ne = len(self.groups) - nk - nt
        templates = f"{nt} template(s), " if nt else ""
        out = [self.report_header(), "", f"-- fusion groups: {nk} kernel(s), {templates}{ne} extern(s) --"]
        for g in self.groups:
            head = f"group {g.index}: {g.kind} {g.name} — {g.space}"
            if g.kind == "template":
                head += f"\n    chosen: {g.reason}"
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
