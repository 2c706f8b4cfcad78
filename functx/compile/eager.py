"""The eager backend: a graph becomes straight-line PyTorch source, compiled once with
exec. Calls then run plain torch ops, no tracers, no dispatch."""
from __future__ import annotations

import math

import torch

from ..core import Graph, Literal
from ..prims.linalg import matmul_sources
from . import eager_passes, passes


def literal_source(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "math.nan"
        if math.isinf(value):
            return "math.inf" if value > 0 else "-math.inf"
    return repr(value)


class PythonEmitter:
    """Names: inputs a0.., constants c0.., values t0..; one line per equation.

    Primitives print through their own `emit` rule (a primitive without one calls its
    impl); the eager plan (eager_passes.plan) adds what only this backend does: broadcasts
    left to torch's implicit broadcasting, add(dot, b) as torch.addmm."""

    def __init__(self, graph: Graph, fn_name: str = "fn", optimize: bool = True):
        self.graph = graph
        self.fn_name = fn_name
        self.names: dict = {}
        self.globals: dict = {"torch": torch, "math": math}
        self.plan = eager_passes.plan(graph) if optimize else eager_passes.Plan()

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
                expr = self._expr(eqn, k, [self.name(a) for a in eqn.inputs])
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

    def _expr(self, eqn, k, srcs) -> str:
        expr = eqn.prim.emit(eqn, srcs) if eqn.prim.emit is not None else None
        if expr is None:
            impl, params = f"_{eqn.prim.name}_{k}", f"_params_{k}"
            self.globals[impl] = eqn.prim.impl
            self.globals[params] = eqn.params
            expr = f"{impl}({', '.join(srcs)}{', ' if srcs else ''}**{params})"
        return expr

    def _addmm(self, eqn, k) -> str:
        j, bias_pos = self.plan.addmm[k]
        dot = self.graph.eqns[j]
        lhs, rhs, _ = matmul_sources(dot, [self.name(a) for a in dot.inputs])
        return f"torch.addmm({self.name(eqn.inputs[bias_pos])}, {lhs}, {rhs})"


class EagerCompiled:
    """A graph compiled to one generated Python function of plain torch calls. The graph's
    constants are bound as the function's default arguments, so `self.call(*inputs)` is the
    generated function itself: calling it costs one Python call."""
    backend = "eager"

    def __init__(self, graph: Graph):
        # The shared, exact graph passes (CSE matters most: transform rules recompute values
        # like tanh(x) for the primal and its derivative), then the eager-only ones.
        graph = passes.run_passes(graph)
        graph = eager_passes.fold_transposes(graph)
        self.graph = graph
        emitter = PythonEmitter(graph)
        self.source = emitter.emit()
        namespace = emitter.globals
        exec(compile(self.source, f"<functx.jit eager {id(graph):x}>", "exec"), namespace)
        fn = namespace["fn"]
        consts = tuple(graph.consts)
        if consts:
            fn.__defaults__ = consts
        self._fn = fn
        self._consts = consts
        self.call = fn
        self.kernels: list[str] = []

    def __call__(self, *inputs):
        return self._fn(*inputs)

    def report(self) -> str:
        return "backend: eager (generated PyTorch code)\n" + self.source


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
    from ..core.primitive import REGISTRY
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
