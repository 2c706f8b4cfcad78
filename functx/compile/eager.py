"""The eager backend: a graph becomes straight-line PyTorch source, compiled once with
exec. Calls then run plain torch ops, no tracers, no dispatch."""
from __future__ import annotations

import math

import torch

from ..core import POINTWISE, REGISTRY, VIEW, Graph, Literal, has_effects
from . import eager_plan
from .compiled import Compiled
from ..prims.linalg import matmul_sources
from . import buffer_reuse
from .codegen import compile_function, emit_expr, free_dead_names, literal_source
from .nan_checks import CompiledNaNChecks
from .loops import loop_report
from .symbolic import SYMBOL_FUNCTIONS, check_printable, has_symbols, symbol_bindings


class PythonEmitter:
    """Names: inputs a0.., constants c0.., values t0..; one line per equation.

    Each equation prints through codegen.emit_expr, except what eager_plan.plan decides
    from the whole graph: broadcasts left to torch's implicit broadcasting, and
    add(dot, b) as torch.addmm. A primitive with `start` (a collective across processes)
    is issued at its equation and waited for just before its result's first use, so the
    communication overlaps the equations in between."""

    def __init__(self, graph: Graph, fn_name: str = "fn", optimize: bool = True, reuse: bool = False):
        self.graph = graph
        self.fn_name = fn_name
        self.names: dict = {}
        self.globals: dict = {"torch": torch, "math": math}
        self.plan = eager_plan.plan(graph) if optimize else eager_plan.Plan()
        self.symbolic = has_symbols(graph)
        if self.symbolic:
            self.globals.update(SYMBOL_FUNCTIONS)
        # buffer_reuse: large results written into dead temporaries (not with symbolic sizes,
        # nor with collectives, whose handles hold buffers the source does not name)
        # nor with effects (a callback may hold on to a value it was handed); CPU graphs only
        # (the page faults it avoids are malloc's: torch's CUDA allocator caches its blocks)
        self.reuse = (reuse and optimize and not self.symbolic and all(e.prim.start is None for e in graph.eqns)
                      and not any(has_effects(e) for e in graph.eqns)
                      and all(torch.device(v.type.device).type == "cpu" for e in graph.eqns for v in e.outputs))
        self.candidates: dict = {}
        self.allocs: dict = {}
        self.rewrites = 0
        self.nans = None
        if graph.meta.check_nans:       # traced under debug_nans: check every output
            self.nans = self.globals["_nans"] = CompiledNaNChecks(graph, "eager")

    def name(self, atom) -> str:
        if isinstance(atom, Literal):
            return literal_source(atom.value)
        return self.names[atom]

    def emit(self) -> str:
        g = self.graph
        plan = self.plan
        for i, v in enumerate(g.invars):
            self.names[v] = f"a{i}"
        for i, v in enumerate(g.constvars):
            self.names[v] = f"c{i}"
        args = [self.names[v] for v in g.invars] + [self.names[v] for v in g.constvars]
        lines = [f"def {self.fn_name}({', '.join(args)}):"]
        # symbolic dims (jit): each size symbol is read from an input's shape at call time
        for sym, i, d in symbol_bindings(g):
            lines.append(f"    {sym} = {self.names[g.invars[i]]}.shape[{d}]")
        counter = 0
        self.pending: dict = {}           # output var -> the name of its collective's handle
        for k in _issue_early(g.eqns):
            eqn = g.eqns[k]
            if k in plan.skip:
                continue
            reads = list(eqn.inputs) + (list(g.eqns[plan.addmm[k][0]].inputs) if k in plan.addmm else [])
            lines += self._wait_for(reads)
            out0 = eqn.outputs[0] if eqn.outputs else None
            if out0 in plan.implicit:
                shape = plan.implicit[out0]
                src = self.name(eqn.inputs[0])
                if shape == tuple(eqn.inputs[0].type.shape):
                    self.names[out0] = src      # torch broadcasts the operand as it is
                    continue
                self.names[out0] = f"t{counter}"
                counter += 1
                lines.append(f"    {self.names[out0]} = {src}.reshape({shape!r})  "
                             f"# {out0.type.with_shape(shape)}, broadcast by torch")
                continue
            if k in plan.addmm:
                expr = self._addmm(eqn, k)
            elif eqn.prim.start is not None and not eqn.prim.multiple_results:
                lines.append(self._start(eqn, counter))
                self.names[out0] = f"t{counter}"
                counter += 1
                continue
            else:
                expr = emit_expr(eqn, [self.name(a) for a in eqn.inputs], self.globals, EagerCompiled)
            if not eqn.outputs:       # a debug callback: a statement
                lines.append(f"    {expr}")
                continue
            for v in eqn.outputs:
                self.names[v] = f"t{counter}"
                counter += 1
            outs = ", ".join(self.names[v] for v in eqn.outputs)
            if eqn.prim.multiple_results and len(eqn.outputs) == 1:
                outs += ","
            types = ", ".join(str(v.type) for v in eqn.outputs)
            if self.reuse and len(eqn.outputs) == 1 and not eqn.prim.multiple_results:
                cand = self._candidate(eqn, k, expr, types)
                if cand is not None:
                    self.candidates[len(lines)] = cand
            if self.reuse and eqn.prim.kind != VIEW and expr not in self.names.values():
                # what this line allocates (an estimate for buffer_reuse's keep decision)
                self.allocs[len(lines)] = sum(_nbytes(v.type) for v in eqn.outputs)
            lines.append(f"    {outs} = {expr}  # {types}")
            check = self.nans and self.nans.emit_eqn_check(k, eqn, [self.names[v] for v in eqn.outputs])
            if check:
                lines.append(f"    {check}")
        lines += self._wait_for(list(self.pending))     # every issued collective completes here
        outs = ", ".join(self.name(a) for a in g.outvars)
        lines.append(f"    return ({outs}{',' if len(g.outvars) == 1 else ''})")
        plain = "\n".join(free_dead_names(lines))
        if not self.candidates:
            return plain
        reused, self.rewrites = buffer_reuse.reuse_buffers(lines, self.candidates, allocs=self.allocs)
        if not self.rewrites:
            return plain
        # the plain function serves calls that torch autograd records (buffer_reuse.py)
        self.globals["_plain_tensors"] = buffer_reuse.plain_tensors
        self.globals["_keep"] = buffer_reuse.kept_buffers()       # kept between calls
        plain_name = f"{self.fn_name}_plain"
        check = buffer_reuse.ARGUMENT_CHECK.format(args=", ".join(args), plain=plain_name)
        plain = plain.replace(f"def {self.fn_name}(", f"def {plain_name}(", 1)
        return "\n".join(free_dead_names([reused[0], check] + reused[1:])) + "\n\n\n" + plain

    def _candidate(self, eqn, k, expr, types):
        """A buffer_reuse.Candidate when expr makes a new buffer that out= can take."""
        out = eqn.outputs[0]
        t = out.type
        nbytes = t.numel * t.dtype.itemsize
        if eqn.prim.name == "dot_general" and k not in self.plan.addmm:
            lhs, rhs, out_shape = matmul_sources(eqn, [self.name(a) for a in eqn.inputs])
            if out_shape is None and expr == f"{lhs} @ {rhs}":
                prefix, operands = f"torch.matmul({lhs}, {rhs}", []
            elif out_shape is not None and expr == f"({lhs} @ {rhs}).reshape({out_shape!r})":
                # the product's own shape, which the reshape views as the result's
                call_shape = _matmul_shape(eqn)
                if call_shape is None:
                    return None
                return buffer_reuse.Candidate(self.names[out], t.shape, t.dtype, nbytes,
                                              f"torch.matmul({lhs}, {rhs}", [], types,
                                              suffix=f".reshape({out_shape!r})", call_shape=call_shape)
            else:
                return None
        else:
            tensors = all(not isinstance(a, Literal) for a in eqn.inputs)
            prefix = buffer_reuse.call_prefix(expr, tensors)
            if prefix is None:
                return None
            if k in self.plan.addmm or eqn.prim.kind != POINTWISE:
                operands = []         # out= may not alias a matmul's operand
            else:
                operands = [(self.name(a), a.type.shape, a.type.dtype) for a in eqn.inputs
                            if not isinstance(a, Literal) and a not in self.plan.implicit]
        return buffer_reuse.Candidate(self.names[out], t.shape, t.dtype, nbytes, prefix,
                                      operands, types)

    def _start(self, eqn, counter) -> str:
        n = len(self.globals)
        start, params = f"_{eqn.prim.name}_start_{n}", f"_params_{n}"
        self.globals[start], self.globals[params] = eqn.prim.start, eqn.params
        self.pending[eqn.outputs[0]] = handle = f"h{counter}"
        srcs = ", ".join(self.name(a) for a in eqn.inputs)
        return f"    {handle} = {start}({srcs}, **{params})  # issued; waited for at first use"

    def _wait_for(self, atoms) -> list:
        lines = []
        for a in atoms:
            handle = self.pending.pop(a, None) if not isinstance(a, Literal) else None
            if handle is not None:
                lines.append(f"    {self.names[a]} = {handle}.wait()  # {a.type}")
        return lines

    def _addmm(self, eqn, k) -> str:
        j, bias_pos = self.plan.addmm[k]
        dot = self.graph.eqns[j]
        lhs, rhs, _ = matmul_sources(dot, [self.name(a) for a in dot.inputs])
        return f"torch.addmm({self.name(eqn.inputs[bias_pos])}, {lhs}, {rhs})"


def _nbytes(t) -> int:
    try:
        return int(t.numel) * t.dtype.itemsize
    except (TypeError, AttributeError):
        return 0


def _matmul_shape(eqn):
    """The shape of the matmul matmul_sources prints for a dot_general (before its reshape):
    the batch dims, then the lhs's free elements as one dim and the rhs's as one (None when
    the dot has another form)."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    a, b = eqn.inputs
    batch = [a.type.shape[i] for i in lb]
    m = math.prod(n for i, n in enumerate(a.type.shape) if i not in lc and i not in lb)
    n = math.prod(n for i, n in enumerate(b.type.shape) if i not in rc and i not in rb)
    return tuple(batch) + (m, n)


def _issue_early(eqns) -> list:
    """Equation indices in graph order, except that each collective (`start`) moves up to
    just after its operands are computed: issued early, it overlaps the equations that
    follow. Deterministic, so every rank issues its collectives in the same order."""
    defined_at, after = {}, {}
    for k, e in enumerate(eqns):
        if e.prim.start is not None:
            last = max((defined_at[a] for a in e.inputs if a in defined_at), default=-1)
            after.setdefault(last, []).append(k)
        for v in e.outputs:
            defined_at[v] = k
    order = []

    def place(k):
        order.append(k)
        for j in after.get(k, ()):
            place(j)
    for j in after.get(-1, ()):
        place(j)
    for k, e in enumerate(eqns):
        if e.prim.start is None:
            place(k)
    return order


class EagerCompiled(Compiled):
    """A graph compiled to one generated Python function of plain torch calls. The graph's
    constants are bound as the function's default arguments, so `self.call(*inputs)` is the
    generated function itself: calling it costs one Python call."""
    backend = "eager"
    symbolic_sizes = True      # compiles jit's symbolic-dim graphs (one artifact for every size)

    def __init__(self, graph: Graph):
        self.graph = graph
        # debug_nans: one line per equation (no addmm merging), so each is checked on its own
        emitter = PythonEmitter(graph, optimize=not graph.meta.check_nans, reuse=True)
        self.source = emitter.emit()
        self.globals = emitter.globals
        if emitter.symbolic:      # every printed size expression must evaluate to the traced size
            check_printable(graph, self.globals)
        self.call = compile_function(self.source, "fn", emitter.globals, graph.consts,
                                     f"<functx.jit eager {id(graph):x}>")
        if emitter.rewrites and graph.consts:       # the plain version takes the constants too
            emitter.globals["fn_plain"].__defaults__ = tuple(graph.consts)
        self.kernels: list[str] = []
        self.groups: list = []

    def report(self) -> str:
        return "backend: eager (generated PyTorch code)\n" + self.source + loop_report(self.globals)


def to_python_source(graph: Graph, fn_name: str = "fn") -> str:
    """Self-contained, runnable PyTorch source for a graph: imports, then `def fn(...)` taking
    the inputs, then the constants; exec it and call fn(*inputs, *graph.consts). A primitive
    with no PyTorch spelling calls its functx impl (so functx must be importable)."""
    emitter = PythonEmitter(graph, fn_name)
    body = emitter.emit()
    lines = ["import math", "from math import inf, nan", "import torch", "from torch import device"]
    extra = [(k, v) for k, v in emitter.globals.items() if k not in ("torch", "math")]
    if extra:
        lines.append("from functx.core.primitive import REGISTRY as _prims")
    for name, value in extra:
        lines.append(f"{name} = {_global_source(name, value)}")
    return "\n".join(lines) + "\n\n\n" + body + "\n"


def _global_source(name, value) -> str:
    for prim in REGISTRY.values():
        if prim.impl is value:
            return f"_prims[{prim.name!r}].impl"
        if prim.start is not None and prim.start is value:
            return f"_prims[{prim.name!r}].start"
    src = repr(value)
    try:
        ok = repr(eval(src, {"torch": torch, "device": torch.device, "inf": math.inf, "nan": math.nan})) == src
    except Exception:
        ok = False
    if not ok:
        raise ValueError(f"functx.to_python_source: {name} = {src:.80} has no source form (the graph "
                         "holds a Python object, e.g. an opaque op's function); use jit to run it")
    return src
