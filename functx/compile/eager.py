"""The eager backend: a graph becomes straight-line PyTorch source, compiled once with
exec. Calls then run plain torch ops, no tracers, no dispatch."""
from __future__ import annotations

import math

import torch

from ..core import Graph, Literal, Var


def literal_source(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "math.nan"
        if math.isinf(value):
            return "math.inf" if value > 0 else "-math.inf"
    return repr(value)


class PythonEmitter:
    """Names: inputs a0.., constants c0.., values t0..; one line per equation."""

    def __init__(self, graph: Graph, fn_name: str = "fn"):
        self.graph = graph
        self.fn_name = fn_name
        self.names: dict = {}
        self.globals: dict = {"torch": torch, "math": math}

    def name(self, atom) -> str:
        if isinstance(atom, Literal):
            return literal_source(atom.value)
        return self.names[atom]

    def emit(self) -> str:
        g = self.graph
        for i, v in enumerate(g.invars):
            self.names[v] = f"a{i}"
        for i, v in enumerate(g.constvars):
            self.names[v] = f"c{i}"
        args = [self.names[v] for v in g.invars] + [self.names[v] for v in g.constvars]
        lines = [f"def {self.fn_name}({', '.join(args)}):"]
        counter = 0
        for k, eqn in enumerate(g.eqns):
            for v in eqn.outputs:
                self.names[v] = f"t{counter}"
                counter += 1
            srcs = [self.name(a) for a in eqn.inputs]
            outs = ", ".join(self.names[v] for v in eqn.outputs)
            if eqn.prim.multiple_results and len(eqn.outputs) == 1:
                outs += ","
            expr = eqn.prim.emit(srcs, eqn.params) if eqn.prim.emit is not None else None
            if expr is None:
                impl, params = f"_{eqn.prim.name}_{k}", f"_params_{k}"
                self.globals[impl] = eqn.prim.impl
                self.globals[params] = eqn.params
                expr = f"{impl}({', '.join(srcs)}{', ' if srcs else ''}**{params})"
            types = ", ".join(str(v.type) for v in eqn.outputs)
            lines.append(f"    {outs} = {expr}  # {types}")
        outs = ", ".join(self.name(a) for a in g.outvars)
        lines.append(f"    return ({outs}{',' if len(g.outvars) == 1 else ''})")
        return "\n".join(lines)


class EagerCompiled:
    backend = "eager"

    def __init__(self, graph: Graph):
        self.graph = graph
        emitter = PythonEmitter(graph)
        self.source = emitter.emit()
        namespace = emitter.globals
        exec(compile(self.source, f"<functx.jit eager {id(graph):x}>", "exec"), namespace)
        fn = namespace["fn"]
        consts = tuple(graph.consts)
        self._fn = fn
        self._consts = consts
        self.kernels: list[str] = []

    def __call__(self, *inputs):
        return self._fn(*inputs, *self._consts)

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
