"""The eager backend: a graph becomes straight-line PyTorch source, compiled once with
exec. Calls then run plain torch ops, no tracers, no dispatch."""
from __future__ import annotations

import math

import torch

from ..core import Graph, Literal
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

    Most primitives print through their own `emit` rule; a few get eager-backend lowerings
    here (EAGER_EMIT): dot_general as `@`/torch.matmul, broadcasts left to torch's
    implicit broadcasting where eager_passes.plan allows it, add(dot, b) as torch.addmm.
    A primitive with neither calls its impl."""

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
        lower = EAGER_EMIT.get(eqn.prim.name)
        expr = lower(eqn, srcs) if lower is not None else None
        if expr is None and eqn.prim.emit is not None:
            expr = eqn.prim.emit(srcs, eqn.params)
        if expr is None:
            impl, params = f"_{eqn.prim.name}_{k}", f"_params_{k}"
            self.globals[impl] = eqn.prim.impl
            self.globals[params] = eqn.params
            expr = f"{impl}({', '.join(srcs)}{', ' if srcs else ''}**{params})"
        return expr

    def _addmm(self, eqn, k) -> str:
        j, bias_pos = self.plan.addmm[k]
        dot = self.graph.eqns[j]
        lhs, rhs = _matmul_operands(dot, [self.name(a) for a in dot.inputs])
        return f"torch.addmm({self.name(eqn.inputs[bias_pos])}, {lhs}, {rhs})"


# ---------------------------------------------------------------- eager-only lowerings

def _mT(src, transposed):
    return f"{src}.mT" if transposed else src


def _matmul_operands(eqn, srcs):
    """A 2-D x 2-D dot_general with one contraction as (lhs, rhs) sources for `@`."""
    (lc, rc), _ = eqn.params["dimension_numbers"]
    return _mT(srcs[0], lc[0] == 0), _mT(srcs[1], rc[0] == 1)


def _permute_src(src, perm):
    if perm == tuple(range(len(perm))):
        return src
    n = len(perm)
    if n >= 2 and perm == tuple(range(n - 2)) + (n - 1, n - 2):
        return f"{src}.mT"
    return f"{src}.permute({perm!r})"


def _emit_dot_general(eqn, srcs):
    """dot_general as a matmul: operands permuted to (batch, free, contract) and
    (batch, contract, free), flattened to 3 groups when needed, one torch.matmul, reshaped
    to (batch, lhs free, rhs free). Simple layouts print as `x @ W` / `x @ W.mT`."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    x, y = eqn.inputs
    if isinstance(x, Literal) or isinstance(y, Literal):
        return None
    xs, ys = tuple(x.type.shape), tuple(y.type.shape)
    lfree = [i for i in range(len(xs)) if i not in lc and i not in lb]
    rfree = [i for i in range(len(ys)) if i not in rc and i not in rb]
    out_shape = tuple(eqn.outputs[0].type.shape)
    # matmul broadcasts a 2-D rhs over any number of leading lhs dims: (..., k) @ (k, n).
    if not lb and len(lc) == 1 and len(rc) == 1 and len(ys) in (1, 2):
        if lc[0] == len(xs) - 1 and len(xs) >= 1:
            return f"{srcs[0]} @ {_mT(srcs[1], len(ys) == 2 and rc[0] == 1)}"
        if len(xs) == 2 and lc[0] == 0:
            return f"{srcs[0]}.mT @ {_mT(srcs[1], len(ys) == 2 and rc[0] == 1)}"
    if not lb and not lc and len(xs) == 1 and len(ys) == 1:
        return f"torch.outer({srcs[0]}, {srcs[1]})"
    # General form.
    batch = [xs[i] for i in lb]
    m = [xs[i] for i in lfree]
    kk = [xs[i] for i in lc]
    n = [ys[i] for i in rfree]
    lhs = _permute_src(srcs[0], tuple(lb) + tuple(lfree) + tuple(lc))
    rhs = _permute_src(srcs[1], tuple(rb) + tuple(rc) + tuple(rfree))
    lshape = tuple(batch) + (_prod(m), _prod(kk))
    rshape = tuple(batch) + (_prod(kk), _prod(n))
    if tuple(batch + m + kk) != lshape:
        lhs = f"{lhs}.reshape({lshape!r})"
    if tuple(batch + kk + n) != rshape:
        rhs = f"{rhs}.reshape({rshape!r})"
    expr = f"torch.matmul({lhs}, {rhs})"
    if tuple(batch) + (_prod(m), _prod(n)) != out_shape:
        expr = f"{expr}.reshape({out_shape!r})"
    return expr


def _prod(xs):
    r = 1
    for x in xs:
        r *= x
    return r


def _emit_broadcast_in_dim(eqn, srcs):
    x = eqn.inputs[0]
    shape = tuple(eqn.params["shape"])
    view = [1] * len(shape)
    for i, d in enumerate(eqn.params["broadcast_dimensions"]):
        view[d] = x.type.shape[i]
    src = srcs[0] if tuple(view) == tuple(x.type.shape) else f"{srcs[0]}.reshape({tuple(view)!r})"
    return f"{src}.expand({shape!r})"


def _emit_transpose(eqn, srcs):
    return _permute_src(srcs[0], tuple(eqn.params["permutation"]))


def _emit_minmax(clamp, full):
    def emit(eqn, srcs):
        x, y = eqn.inputs
        if isinstance(y, Literal):
            if clamp == "clamp_min" and y.value == 0 and not isinstance(y.value, bool):
                return f"torch.relu({srcs[0]})"
            return f"torch.{clamp}({srcs[0]}, {srcs[1]})"
        if isinstance(x, Literal):
            return f"torch.{clamp}({srcs[1]}, {srcs[0]})"
        return f"torch.{full}({srcs[0]}, {srcs[1]})"
    return emit


def _emit_reduce_sum(eqn, srcs):
    axes = eqn.params["axes"]
    if not axes:
        return srcs[0]
    dtype = eqn.outputs[0].type.dtype
    expr = f"torch.sum({srcs[0]}, {axes!r})"
    if not (dtype.is_floating_point or dtype.is_complex or dtype == torch.int64):
        expr = f"{expr}.to({dtype})"      # torch.sum promotes ints and bools to int64
    return expr


def _emit_atan2(eqn, srcs):
    if any(isinstance(a, Literal) for a in eqn.inputs):
        return None                         # torch.atan2 takes tensors only: the impl handles it
    return f"torch.atan2({srcs[0]}, {srcs[1]})"


EAGER_EMIT = {
    "dot_general": _emit_dot_general,
    "broadcast_in_dim": _emit_broadcast_in_dim,
    "transpose": _emit_transpose,
    "max": _emit_minmax("clamp_min", "maximum"),
    "min": _emit_minmax("clamp_max", "minimum"),
    "reduce_sum": _emit_reduce_sum,
    "atan2": _emit_atan2,
}


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
