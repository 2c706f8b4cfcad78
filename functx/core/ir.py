"""The functx IR: variables, literals, equations and graphs, with a printer and a checker.

A Graph is a closed, first-order program in A-normal form:

    graph(t0: f32[8,16], t1: f32[16]) consts(c0: f32[16,16]):
      t2 = mul(t0, t0)  # f32[8,16]
      return (t2,)

Variables are typed (TensorType). Literals are Python scalars; they are the only
operands an elementwise primitive broadcasts implicitly.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import torch

from .dtypes import short_name
from .types import TensorType

_var_ids = itertools.count()


class Var:
    __slots__ = ("type", "id")

    def __init__(self, type: TensorType):
        self.type = type
        self.id = next(_var_ids)

    def __repr__(self) -> str:
        return f"Var({self.id}: {self.type})"


class Literal:
    """A Python scalar operand (int, float, bool)."""
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


Atom = Var | Literal


class Eqn:
    """source: None, or (phase, user's source line) recorded while debug_nans is on
    (core/nan_check.py), so checks in the backward pass and in compiled code name the line.
    template: see __init__."""
    __slots__ = ("prim", "inputs", "outputs", "params", "source", "template")

    def __init__(self, prim, inputs: list, outputs: list, params: dict, source=None, template=None):
        self.prim = prim
        self.inputs = inputs
        self.outputs = outputs
        self.params = params
        self.source = source
        # An equation an eager transform recorded from a cached rule (transforms/rule_cache.py):
        # its TransposeRule, so backward_pass runs the compiled transpose. None elsewhere.
        self.template = template

    def __repr__(self) -> str:
        return f"Eqn({self.prim.name}, {self.inputs} -> {self.outputs})"


@dataclasses.dataclass(frozen=True)
class GraphMeta:
    """What tracing knows about a graph beyond its equations; passes carry it unchanged.

    in_tree/out_tree: pytree structures of the traced function's arguments and result;
    mutated_inputs: positions (among the tensor leaves) of inputs the function wrote in
    place, whose final values are the graph's last outputs; fallbacks: ATen ops that ran
    through the opaque fallback; rewrites: a line per trace-time rewrite (frontend/rewrites.py); check_nans: traced while debug_nans was on (the backends
    then check every output and name the equation's recorded source line); closure_reads:
    the closed-over tensors that plain torch ops read while tracing (frontend/random_mode.py's
    ClosureRead), whose results the graph holds as constants (jit guards them);
    traced_with_grad: grad mode when tracing began."""
    in_tree: Any = None
    out_tree: Any = None
    mutated_inputs: tuple = ()
    fallbacks: tuple = ()
    rewrites: tuple = ()
    check_nans: bool = False
    closure_reads: tuple = dataclasses.field(default=(), compare=False)
    traced_with_grad: bool = True     # grad mode when tracing began (an outer no_grad, or not)


_NO_META = GraphMeta()


class Graph:
    """invars: inputs; constvars bound to consts (tensors, or tracers of an outer trace);
    meta: a GraphMeta (what tracing recorded; empty for graphs built otherwise)."""

    def __init__(self, invars, constvars, consts, eqns, outvars, meta: GraphMeta | None = None):
        self.invars = list(invars)
        self.constvars = list(constvars)
        self.consts = list(consts)
        self.eqns = list(eqns)
        self.outvars = list(outvars)
        self.meta = _NO_META if meta is None else meta

    def replace(self, *, invars=None, constvars=None, consts=None, eqns=None, outvars=None,
                meta=None) -> "Graph":
        """A new graph with the given fields changed; the others (meta included) are kept."""
        return Graph(self.invars if invars is None else invars,
                     self.constvars if constvars is None else constvars,
                     self.consts if consts is None else consts,
                     self.eqns if eqns is None else eqns,
                     self.outvars if outvars is None else outvars,
                     self.meta if meta is None else meta)

    @property
    def fallbacks(self) -> list:
        """ATen ops that went through the opaque fallback (make_graph documents this)."""
        return list(self.meta.fallbacks)

    @property
    def in_types(self):
        return [v.type for v in self.invars]

    @property
    def out_types(self):
        return [atom_type(a) for a in self.outvars]

    def __str__(self) -> str:
        return GraphPrinter().format(self)

    __repr__ = __str__

    def check(self) -> None:
        check_graph(self)


# ---------------------------------------------------------------- sub-graphs and effects
# Structural equations (cond, while_loop, scan, checkpoint) hold sub-graphs as params: a
# Graph, or a tuple of Graphs (cond's branches).

def _is_graphs(value) -> bool:
    return isinstance(value, Graph) or (isinstance(value, tuple) and bool(value)
                                        and all(isinstance(v, Graph) for v in value))


def sub_graphs(params: dict) -> list:
    """The sub-graphs an equation's params hold."""
    out = []
    for v in params.values():
        if _is_graphs(v):
            out.extend([v] if isinstance(v, Graph) else v)
    return out


def map_sub_graphs(params: dict, fn) -> dict:
    """params with fn applied to every sub-graph; the same dict when fn changed none."""
    new = {k: (v if not _is_graphs(v) else fn(v) if isinstance(v, Graph) else tuple(fn(g) for g in v))
           for k, v in params.items()}
    changed = any(new[k] is not v and not (isinstance(v, tuple) and all(a is b for a, b in zip(new[k], v)))
                  for k, v in params.items())
    return new if changed else params


def has_effects(eqn) -> bool:
    """Whether running eqn has an effect: an effectful primitive, or a sub-graph holding one (a
    print inside a cond's branch), so passes keep it even when its outputs are unused."""
    return eqn.prim.effectful or any(any(has_effects(e) for e in g.eqns) for g in sub_graphs(eqn.params))


def random_draws(graph: "Graph") -> list:
    """Names of the effectful primitives with outputs (random draws) in graph and its
    sub-graphs: a graph that recomputes them would draw new numbers."""
    out = []
    for e in graph.eqns:
        if e.prim.effectful and e.outputs:
            out.append(e.prim.name)
        for g in sub_graphs(e.params):
            out += random_draws(g)
    return out


def live_eqns(graph: "Graph", keep_unused_draws=True, prune=None) -> tuple[list, set]:
    """Dead-code elimination's core: the equations an output or an effect needs, in order, and
    the atoms they (and the outputs) read. keep_unused_draws=False also drops random draws
    nothing reads (for graphs that recompute a primal, where a draw would only advance the
    generator). prune: primitive -> rule(eqn, used output mask) giving the equation that
    computes only the used outputs (None: nothing), for structural equations whose sub-graphs
    can shrink too (control_flow.common.PRUNE: a scan's dead carries)."""
    live = {a for a in graph.outvars if isinstance(a, Var)}
    kept = []
    for eqn in reversed(graph.eqns):
        if prune and eqn.prim in prune:
            used = [v in live for v in eqn.outputs]
            if not all(used):
                eqn = prune[eqn.prim](eqn, used)
                if eqn is None:
                    continue
        effect = has_effects(eqn) and (keep_unused_draws or not (eqn.prim.effectful and eqn.outputs))
        if any(v in live for v in eqn.outputs) or effect:
            kept.append(eqn)
            live.update(a for a in eqn.inputs if isinstance(a, Var))
    kept.reverse()
    return kept, live


def drop_effects(graph: "Graph") -> "Graph":
    """graph without its output-less effects (debug callbacks), in sub-graphs too: for graphs
    that recompute a primal whose own run already performs them (tangent branches and loop
    bodies), so each print runs once. Effects with outputs (random draws) stay."""
    eqns, changed = [], False
    for e in graph.eqns:
        if e.prim.effectful and not e.outputs:
            changed = True
            continue
        params = map_sub_graphs(e.params, drop_effects)
        if params is not e.params:
            e, changed = Eqn(e.prim, e.inputs, e.outputs, params, e.source), True
        eqns.append(e)
    return graph.replace(eqns=eqns) if changed else graph


def atom_type(atom):
    return atom.type if isinstance(atom, Var) else None


def format_param(value: Any) -> str:
    if isinstance(value, torch.dtype):
        return short_name(value)
    if isinstance(value, torch.device):
        return str(value)
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    return repr(value)


class GraphPrinter:
    """Names variables t0, t1, ... (consts c0, c1, ...) in order of appearance."""

    def __init__(self):
        self.names: dict[Var, str] = {}
        self.count = 0

    def name(self, atom) -> str:
        if isinstance(atom, Literal):
            return repr(atom.value)
        if atom not in self.names:
            self.names[atom] = f"t{self.count}"
            self.count += 1
        return self.names[atom]

    def format(self, graph: Graph, indent: str = "") -> str:
        for i, v in enumerate(graph.constvars):
            self.names[v] = f"c{i}"
        ins = ", ".join(f"{self.name(v)}: {v.type}" for v in graph.invars)
        head = f"{indent}graph({ins})"
        if graph.constvars:
            head += " consts(" + ", ".join(f"{self.names[v]}: {v.type}" for v in graph.constvars) + ")"
        lines = [head + ":"]
        for eqn in graph.eqns:
            lines.append(indent + "  " + self.format_eqn(eqn))
        outs = ", ".join(self.name(a) for a in graph.outvars)
        lines.append(f"{indent}  return ({outs}{',' if len(graph.outvars) == 1 else ''})")
        return "\n".join(lines)

    def format_eqn(self, eqn: Eqn) -> str:
        args = [self.name(a) for a in eqn.inputs]
        args += [f"{k}={format_param(v)}" for k, v in eqn.params.items() if not k.startswith("_")]
        if not eqn.outputs:           # an effect (debug_callback)
            return f"{eqn.prim.name}({', '.join(args)})"
        outs = ", ".join(self.name(v) for v in eqn.outputs)
        types = ", ".join(str(v.type) for v in eqn.outputs)
        return f"{outs} = {eqn.prim.name}({', '.join(args)})  # {types}"


class GraphTypeError(TypeError):
    pass


def check_graph(graph: Graph) -> None:
    """Re-derive every type with the primitives' abstract eval; raise on any mismatch.

    Also checks that the graph is well formed: every variable is defined once (SSA) before
    it is used, and each constant matches its constvar's type."""
    from .trace import type_of      # trace.py imports this module
    if len(graph.consts) != len(graph.constvars):
        raise GraphTypeError(f"{len(graph.constvars)} constvars but {len(graph.consts)} consts")
    for v, c in zip(graph.constvars, graph.consts):
        t = type_of(c)            # a tensor, or a tracer of an outer trace
        if t is not None and t != v.type:
            raise GraphTypeError(f"const {v} is bound to a value of type {t}")
    defined: set = set()

    def define(v, where):
        if not isinstance(v, Var):
            raise GraphTypeError(f"{where} must be a Var, got {v!r}")
        if v in defined:
            raise GraphTypeError(f"{where} redefines {v} (each variable is defined once)")
        defined.add(v)

    for v in graph.invars:
        define(v, "input")
    for v in graph.constvars:
        define(v, "constvar")
    for i, eqn in enumerate(graph.eqns):
        in_types = []
        for a in eqn.inputs:
            if isinstance(a, Var):
                if a not in defined:
                    raise GraphTypeError(f"eqn {i} ({eqn.prim.name}) uses undefined {a}")
                in_types.append(a.type)
            elif isinstance(a, Literal):
                in_types.append(a.value)
            else:
                raise GraphTypeError(f"eqn {i} ({eqn.prim.name}): operand {a!r} is neither a Var nor a Literal")
        try:
            out = eqn.prim.abstract_eval(*in_types, **eqn.params)
        except Exception as e:
            raise GraphTypeError(f"eqn {i} ({eqn.prim.name}): {type(e).__name__}: {e}") from e
        out = list(out) if eqn.prim.multiple_results else [out]
        if len(out) != len(eqn.outputs):
            raise GraphTypeError(f"eqn {i} ({eqn.prim.name}): {len(out)} outputs, graph has {len(eqn.outputs)}")
        for t, v in zip(out, eqn.outputs):
            if t != v.type:
                raise GraphTypeError(f"eqn {i} ({eqn.prim.name}): derived {t}, graph says {v.type}")
            define(v, f"eqn {i} ({eqn.prim.name})")
    for a in graph.outvars:
        if isinstance(a, Var) and a not in defined:
            raise GraphTypeError(f"output {a} is undefined")
