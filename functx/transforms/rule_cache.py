"""Compiled jvp and transpose rules for eager transforms (issue 13).

Without jit, every primitive under grad/jvp runs its jvp rule in Python: the rule's lax
calls each bind through the partial-evaluation trace to the eager one (primal work) or are
recorded with their abstract types (tangent work), and backward_pass runs each recorded
equation's transpose rule the same way. For a primitive whose rule depends only on static
facts (its params, its operands' shapes/dtypes/devices, which operands carry tangents, the
values of Python-scalar operands), that work is the same on every call, so it is done once:

- `JvpRule`: the rule traced once on abstract operands into a graph and split as JAX's
  partial evaluation splits it: the *known* equations (the primal and the residuals the
  tangent needs) and the *linear* ones (the tangent's). Each call then runs one generated
  Python function that calls the known equations' impls directly and either records the
  linear equations into linearize's partial-eval trace (reverse mode: the same equations
  the rule would have recorded) or evaluates them on the tangents (forward mode).
- `TransposeRule`: a recorded linear equation's transpose rule, traced once per template
  equation and generated as one function of (cotangent, residuals), which backward_pass
  calls instead of the rule when it runs eagerly.

Only eager levels use these (the trace below is the eager one: values are concrete, the
impls are what would run); everything else, and every primitive whose rule is not a
function of static facts (structural, effectful, collective and process-axis primitives,
opaque/attention ops whose rules look at the traces), takes the rule's own path, as does a
rule that fails to trace abstractly (it then runs, and raises, as before). debug_nans turns
this off (its checks name each step of the rule).
"""
from __future__ import annotations

import torch

from ..core import POINTWISE, REDUCTION, VIEW, Literal, Var, Zero
from ..core.ir import Eqn
from ..core.trace import EVAL_TRACE, GraphTrace, GraphTracer, UndefinedPrimal, trace_state

# Extern primitives whose jvp/transpose rules are plain lax code over static facts.
_EXTERN_OK = frozenset({"pad", "concatenate", "argmax", "argmin", "cumsum", "dot_general", "conv", "take",
                        "scatter_add", "scatter", "take_along_axis", "scatter_add_along", "sort"})
_ALLOWED: dict = {}       # Primitive -> bool
UNCACHEABLE = "uncacheable"
JVP_RULES: dict = {}     # key (see jvp_key) -> JvpRule | UNCACHEABLE
MAX_RULES = 4096


def allowed(prim) -> bool:
    ok = _ALLOWED.get(prim)
    if ok is None:
        ok = _ALLOWED[prim] = (
            (prim.kind in (POINTWISE, VIEW, REDUCTION) or prim.name in _EXTERN_OK)
            and not prim.effectful and not prim.collective and prim.inline is None
            and prim.jvp is not None)
    return ok


def scalar_key(a):
    """A Python scalar operand in a cache key: its exact value (-0.0 and nan included)."""
    t = type(a)
    if t is float:
        return (float, a.hex())
    if t is int or t is bool:
        return (t, a)
    return None


class JvpRule:
    """One primitive's jvp rule for one static signature, split and generated (module doc).
    specs: per operand, a Python scalar, or (TensorType, has_tangent)."""
    __slots__ = ("prim", "linearize", "forward", "multiple")

    def __init__(self, prim, linearize, forward):
        self.prim = prim
        self.linearize = linearize      # (pe, P, T) -> (outs, tangents): P primal tensors, T tangent Vars
        self.forward = forward          # (P, T) -> (outs, tangents): T tangent tensors
        self.multiple = prim.multiple_results


def build_jvp(prim, params, specs, zero_of):
    """The JvpRule for (prim, params, specs), or UNCACHEABLE."""
    g = GraphTrace(EVAL_TRACE, stage_all=True)
    primals, tangents, p_vars, t_vars = [], [], [], []
    for s in specs:
        if not isinstance(s, tuple):
            primals.append(s)
            tangents.append(zero_of(s))
            continue
        typ, has_t = s
        p = g.new_arg(typ)
        primals.append(p)
        p_vars.append(p.var)
        if has_t:
            t = g.new_arg(typ)
            tangents.append(t)
            t_vars.append(t.var)
        else:
            tangents.append(zero_of(p))
    prev, trace_state.trace = trace_state.trace, g
    try:
        out, tout = prim.jvp(primals, tangents, **params)
        outs = list(out) if prim.multiple_results else [out]
        touts = list(tout) if prim.multiple_results else [tout]
        out_atoms = [g.atom(o) for o in outs]
        tout_atoms = [None if isinstance(t, Zero) else g.atom(t) for t in touts]
    except Exception:       # not a function of static facts (or an error the rule's own path raises)
        return UNCACHEABLE
    finally:
        trace_state.trace = prev
    lin = set(t_vars)
    known, linear = [], []
    for e in g.eqns:
        if e.prim.effectful or e.prim.inline is not None:
            return UNCACHEABLE
        if any(isinstance(a, Var) and a in lin for a in e.inputs):
            linear.append(e)
            lin.update(e.outputs)
        else:
            if e.prim.impl is None:
                return UNCACHEABLE
            known.append(e)
    if any(isinstance(a, Var) and a in lin for a in out_atoms):
        return UNCACHEABLE
    # the linear equations the tangent outputs need, and the known values they read
    need = {a for a in tout_atoms if isinstance(a, Var) and a in lin}
    kept_linear = []
    for e in reversed(linear):
        if any(o in need for o in e.outputs):
            kept_linear.append(e)
            need.update(a for a in e.inputs if isinstance(a, Var))
    kept_linear.reverse()
    residuals = []
    for e in kept_linear:
        for a in e.inputs:
            if isinstance(a, Var) and a not in lin and a not in residuals:
                residuals.append(a)
    for a in tout_atoms:        # a tangent output computed from primals only
        if isinstance(a, Var) and a not in lin and a not in residuals:
            residuals.append(a)
    need = {a for a in out_atoms if isinstance(a, Var)} | set(residuals)
    kept_known = []
    for e in reversed(known):
        if any(o in need for o in e.outputs):
            kept_known.append(e)
            need.update(a for a in e.inputs if isinstance(a, Var))
    kept_known.reverse()

    gen = _Codegen()
    for k, v in enumerate(p_vars):
        gen.names[v] = f"P[{k}]"
    for v, c in zip(g.constvars, g.consts):
        gen.names[v] = gen.const(c)
    known_lines = []
    for e in kept_known:
        known_lines.append(gen.call(e))
    outs_src = ", ".join(gen.ref(a) for a in out_atoms)
    res_names = [gen.ref(a) for a in residuals]
    # reverse mode: record the linear equations into the partial-eval trace
    rec = _Codegen(gen)
    for k, v in enumerate(t_vars):
        rec.names[v] = f"T[{k}]"
    rec_lines = ["    atom = pe.atom", "    eqns = pe.eqns"]
    for v, r in zip(residuals, res_names):
        name = rec.fresh()
        rec_lines.append(f"    {name} = atom({r})")
        rec.names[v] = name
    for e in kept_linear:
        rec_lines.append(rec.record(e, lin))
    rec_touts = ", ".join("None" if a is None else
                          (f"GT(pe, {rec.ref(a)})" if isinstance(a, Var) and a in lin else gen.ref(a))
                          for a in tout_atoms)
    # forward mode: evaluate them on the tangents
    fwd = _Codegen(gen)
    for k, v in enumerate(t_vars):
        fwd.names[v] = f"T[{k}]"
    fwd_lines = [fwd.call(e) for e in kept_linear]
    fwd_touts = ", ".join("None" if a is None else fwd.ref(a) for a in tout_atoms)
    wrap = (lambda s: f"[{s}]") if prim.multiple_results else (lambda s: s)
    src = "\n".join(
        ["def linearize(pe, P, T):"] + (known_lines or []) + rec_lines
        + [f"    return {wrap(outs_src)}, {wrap(rec_touts)}", "",
           "def forward(P, T):"] + known_lines + fwd_lines
        + [f"    return {wrap(outs_src)}, {wrap(fwd_touts)}"])
    ns = dict(gen.ns, **rec.ns, **fwd.ns, GT=GraphTracer, Var=Var, Eqn=Eqn)
    exec(compile(src, f"<functx jvp rule {prim.name}>", "exec"), ns)
    return JvpRule(prim, ns["linearize"], ns["forward"])


class _Codegen:
    """Names for Vars and closure constants while generating one rule's Python source."""

    def __init__(self, parent=None):
        self.names = dict(parent.names) if parent is not None else {}
        self.ns = {}
        self.counter = parent.counter if parent is not None else [0]

    def fresh(self, prefix="v"):
        self.counter[0] += 1
        return f"{prefix}{self.counter[0]}"

    def const(self, value):
        name = self.fresh("k")
        self.ns[name] = value
        return name

    def ref(self, a):
        if isinstance(a, Literal):
            return self.const(a.value)
        return self.names[a]

    def _outs(self, e):
        names = []
        for o in e.outputs:
            names.append(self.fresh())
            self.names[o] = names[-1]
        if e.prim.multiple_results:
            return "(" + "".join(n + ", " for n in names) + ")"
        return names[0]

    def call(self, e):
        """`out = impl(args, **params)`: what EvalTrace runs for e."""
        ins = [self.ref(a) for a in e.inputs]
        fn = self.const(e.prim.impl)
        if e.params:
            ins.append("**" + self.const(e.params))
        return f"    {self._outs(e)} = {fn}({', '.join(ins)})"

    def record(self, e, lin):
        """Append e (fresh output Vars) to the partial-eval trace, as GraphTrace records it,
        with its transpose template for backward_pass."""
        ins = "[" + ", ".join(self.names[a] if isinstance(a, Var) else self.const(a) for a in e.inputs) + "]"
        lines = []
        outs = []
        for o in e.outputs:
            name = self.fresh()
            lines.append(f"    {name} = Var({self.const(o.type)})")
            self.names[o] = name
            outs.append(name)
        tpl = self.const(TransposeRule(e, [isinstance(a, Var) and a in lin for a in e.inputs]))
        lines.append(f"    eqns.append(Eqn({self.const(e.prim)}, {ins}, [{', '.join(outs)}], "
                     f"{self.const(e.params)}, None, {tpl}))")
        return "\n".join(lines)


class TransposeRule:
    """The transpose rule of one template equation (a linear equation of a JvpRule), traced
    on first use into one generated function (ct, R) -> cotangents per input (None where
    none), R being the values of its non-linear Var inputs (residuals)."""
    __slots__ = ("eqn", "linear", "res_pos", "fn")

    def __init__(self, eqn, linear):
        self.eqn = eqn
        self.linear = linear
        self.res_pos = [i for i, a in enumerate(eqn.inputs) if isinstance(a, Var) and not linear[i]]
        self.fn = None

    def compile(self):
        e = self.eqn
        fn = UNCACHEABLE
        if not e.prim.multiple_results and e.prim.transpose is not None:
            try:
                fn = _build_transpose(e, self.linear)
            except Exception:
                fn = UNCACHEABLE
        self.fn = fn
        return fn


def _build_transpose(e, linear):
    g = GraphTrace(EVAL_TRACE, stage_all=True)
    ct = g.new_arg(e.outputs[0].type)
    args, res_vars = [], []
    for a, is_lin in zip(e.inputs, linear):
        if isinstance(a, Literal):
            args.append(a.value)
        elif is_lin:
            args.append(UndefinedPrimal(a.type))
        else:
            r = g.new_arg(a.type)
            args.append(r)
            res_vars.append(r.var)
    prev, trace_state.trace = trace_state.trace, g
    try:
        cts = e.prim.transpose(ct, *args, **e.params)
        cts = [None if c is None or isinstance(c, Zero) else g.atom(c) for c in cts]
    finally:
        trace_state.trace = prev
    if len(cts) != len(e.inputs):
        return UNCACHEABLE
    gen = _Codegen()
    gen.names[ct.var] = "ct"
    for k, v in enumerate(res_vars):
        gen.names[v] = f"R[{k}]"
    for v, c in zip(g.constvars, g.consts):
        gen.names[v] = gen.const(c)
    lines = []
    for eq in g.eqns:
        if eq.prim.effectful or eq.prim.impl is None or eq.prim.inline is not None:
            return UNCACHEABLE
        lines.append(gen.call(eq))
    outs = ", ".join("None" if c is None else gen.ref(c) for c in cts)
    src = "\n".join(["def transpose(ct, R):"] + lines + [f"    return ({outs},)"])
    ns = dict(gen.ns)
    exec(compile(src, f"<functx transpose rule {e.prim.name}>", "exec"), ns)
    return ns["transpose"]
