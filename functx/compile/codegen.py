"""PyTorch source for graph equations, shared by the eager backend's generated function
and the Triton backend's host wrapper (which runs views and externs through torch)."""
from __future__ import annotations

import math
import re

import torch

from .loops import emit_checkpoint, emit_scan, emit_scan_revolve, emit_while


def literal_source(value) -> str:
    if isinstance(value, (torch.SymInt, torch.SymFloat)):
        if isinstance(value, torch.SymFloat) and not value.node.expr.free_symbols and value.node.hint is not None:
            return literal_source(float(value.node.hint))    # a constant: sympy prints only 15 digits
        return f"({value})"        # a size expression of the symbols the function binds (symbolic jit)
    if isinstance(value, float):
        if math.isnan(value):
            return "math.nan"
        if math.isinf(value):
            return "math.inf" if value > 0 else "-math.inf"
    return repr(value)


LOOP_EMITTERS = {"scan": emit_scan, "checkpoint": emit_checkpoint, "scan_revolve": emit_scan_revolve,
                 "while_loop": emit_while}


def emit_expr(eqn, srcs, namespace, compile_body=None) -> str:
    """A PyTorch expression computing eqn from its operands' sources `srcs`.

    The primitive's own `emit` rule (next to its definition in functx/prims), else a call of
    its impl, bound (with its params) into `namespace`, the generated code's globals.
    compile_body(graph) -> Compiled: the backend's compiler for loop bodies; given it, a scan
    becomes a generated loop calling its compiled body (loops.py)."""
    if compile_body is not None and eqn.prim.name in LOOP_EMITTERS:
        return LOOP_EMITTERS[eqn.prim.name](eqn, srcs, namespace, compile_body)
    expr = eqn.prim.emit(eqn, srcs) if eqn.prim.emit is not None else None
    if expr is None:
        n = len(namespace)        # grows with every binding, so names never collide
        impl, params = f"_{eqn.prim.name}_{n}", f"_params_{n}"
        namespace[impl], namespace[params] = eqn.prim.impl, eqn.params
        symbolic = {k: v for k, v in eqn.params.items() if _has_sym(v)}
        if symbolic:      # sizes of a symbolic trace: printed as expressions of the bound symbols
            params = "{**" + params + ", " + ", ".join(f"{k!r}: {_sym_source(v)}" for k, v in symbolic.items()) + "}"
        expr = f"{impl}({', '.join(srcs)}{', ' if srcs else ''}**{params})"
    return expr


def _has_sym(value) -> bool:
    if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return True
    return isinstance(value, (tuple, list)) and any(_has_sym(v) for v in value)


def _sym_source(value) -> str:
    """Source for a param holding sizes: tuples/lists of ints and size expressions."""
    if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return f"({value})"
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_sym_source(v) for v in value)
        return f"({inner}{',' if len(value) == 1 else ''})" if isinstance(value, tuple) else f"[{inner}]"
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    raise NotImplementedError(f"a parameter holding a symbolic size inside a {type(value).__name__}")


def compile_function(source: str, name: str, namespace: dict, consts, filename: str):
    """exec `source` in `namespace` -> its function `name`, with the graph's constants bound
    as the defaults of its trailing parameters, so a call passes the inputs only and costs
    one Python call."""
    exec(compile(source, filename, "exec"), namespace)
    fn = namespace[name]
    if consts:
        fn.__defaults__ = tuple(consts)
    return fn


_TEMP = re.compile(r"\bt\d+\b")


def free_dead_names(lines) -> list:
    """Straight-line generated source (def line, statements, return line) with a `del` of
    each temporary (tN) after the line that reads it last, so an intermediate's memory
    returns to the allocator as soon as it is dead, not when the function returns (the peak
    of a Taylor-mode graph is otherwise the sum of its batched intermediates). A view keeps
    its base alive by itself; deleting a name never frees what another name still holds."""
    last = {}
    for i, line in enumerate(lines[1:-1], 1):
        for name in _TEMP.findall(line.split("  # ", 1)[0]):
            last[name] = i
    returned = set(_TEMP.findall(lines[-1]))
    dead_after: dict = {}
    for name, i in last.items():
        if name not in returned:
            dead_after.setdefault(i, []).append(name)
    out = []
    for i, line in enumerate(lines):
        out.append(line)
        if i in dead_after:
            out.append(f"    del {', '.join(sorted(dead_after[i], key=lambda n: int(n[1:])))}")
    return out
