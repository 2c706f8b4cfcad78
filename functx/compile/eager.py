"""The eager backend: a graph becomes straight-line PyTorch source, compiled once with
exec. Calls then run plain torch ops, no tracers, no dispatch."""
from __future__ import annotations

import math

import torch

from ..core import REGISTRY, Graph, Literal
from . import eager_plan
from .compiled import Compiled
from ..prims.linalg import matmul_sources
from .codegen import compile_function, emit_expr, literal_source
from .loops import loop_report


class PythonEmitter:
    """Names: inputs a0.., constants c0.., values t0..; one line per equation.

    Each equation prints through codegen.emit_expr, except what eager_plan.plan decides
    from the whole graph: broadcasts left to torch's implicit broadcasting, and
    add(dot, b) as torch.addmm."""

    def __init__(self, graph: Graph, fn_name: str = "fn", optimize: bool = True):
        self.graph = graph
        self.fn_name = fn_name
        self.names: dict = {}
        self.globals: dict = {"torch": torch, "math": math}
        self.plan = eager_plan.plan(graph) if optimize else eager_plan.Plan()

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
        counter = 0
        for k, eqn in enumerate(g.eqns):
            if k in plan.skip:
                continue
            out0 = eqn.outputs[0]
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
            else:
                expr = emit_expr(eqn, [self.name(a) for a in eqn.inputs], self.globals, EagerCompiled)
            for v in eqn.outputs:
                self.names[v] = f"t{counter}"
                counter += 1
            outs = ", ".join(self.names[v] for v in eqn.outputs)
            if eqn.prim.multiple_results and len(eqn.outputs) == 1:
                outs += ","
            types = ", ".join(str(v.type) for v in eqn.outputs)
            lines.append(f"    {outs} = {expr}  # {types}")
        outs = ", ".join(self.name(a) for a in g.outvars)
        lines.append(f"    return ({outs}{',' if len(g.outvars) == 1 else ''})")
        return "\n".join(lines)

    def _addmm(self, eqn, k) -> str:
        j, bias_pos = self.plan.addmm[k]
        dot = self.graph.eqns[j]
        lhs, rhs, _ = matmul_sources(dot, [self.name(a) for a in dot.inputs])
        return f"torch.addmm({self.name(eqn.inputs[bias_pos])}, {lhs}, {rhs})"


class EagerCompiled(Compiled):
    """A graph compiled to one generated Python function of plain torch calls. The graph's
    constants are bound as the function's default arguments, so `self.call(*inputs)` is the
    generated function itself: calling it costs one Python call."""
    backend = "eager"

    def __init__(self, graph: Graph):
        self.graph = graph
        emitter = PythonEmitter(graph)
        self.source = emitter.emit()
        self.globals = emitter.globals
        self.call = compile_function(self.source, "fn", emitter.globals, graph.consts,
                                     f"<functx.jit eager {id(graph):x}>")
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
    src = repr(value)
    try:
        ok = repr(eval(src, {"torch": torch, "device": torch.device, "inf": math.inf, "nan": math.nan})) == src
    except Exception:
        ok = False
    if not ok:
        raise ValueError(f"functx.to_python_source: {name} = {src:.80} has no source form (the graph "
                         "holds a Python object, e.g. an opaque op's function); use jit to run it")
    return src
