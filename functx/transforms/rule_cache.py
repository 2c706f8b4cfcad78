"""Cached, generated jvp, transpose and batch rules for transforms run without jit (issue 13).

Without jit, every primitive under grad/jvp runs its jvp rule in Python: the rule's lax
calls each bind through the partial-evaluation trace to the eager one (primal work) or are
recorded with their abstract types (tangent work), and backward_pass runs each recorded
equation's transpose rule the same way. For a primitive whose rule depends only on static
facts (its params, its operands' shapes/dtypes/devices, which operands carry tangents or
batch dims, the exact values of Python-scalar operands, the default dtype), that work is
the same on every call, so it is done once:

- `JvpRule`: the rule traced once on abstract operands into a graph and split as JAX's
  partial evaluation splits it: the *known* equations (the primal and the residuals the
  tangent needs) and the *linear* ones (the tangent's). Each call then runs one generated
  Python function that calls the known equations' impls directly and either records the
  linear equations into linearize's partial-eval trace (reverse mode: the same equations
  the rule would have recorded, each with its TransposeRule) or evaluates them on the
  tangents (forward mode).
- `TransposeRule`: a recorded linear equation's transpose rule, traced on first use and
  generated as one function of (cotangent, residuals), which backward_pass calls.
- `BatchRule` (batch_rule_cache.py): a batch rule, traced once per (operand types, batch
  dims, axis size), generated with this module's code generator.

Each has an *impl* variant (the trace below is the eager one: values are concrete, impls
are what EvalTrace would run) and a *bind* variant (its equations bound at the trace below,
for levels nested in other transforms). The same builders serve an ATen op's cached
lowering run as one unit (frontend/lowered_ops.py; build_jvp_of, build_batch_of).
Every primitive whose rule is not a function of static facts (structural, effectful,
collective and process-axis primitives, opaque/attention ops whose rules look at the
traces) takes the rule's own path, as does a rule that fails to trace abstractly (it then
runs, and raises, as before), and any operand that requires torch grad. debug_nans turns
this off (its checks name each step of the rule).
"""
from __future__ import annotations

import ast
import math

import torch

from ..core import POINTWISE, REDUCTION, VIEW, Literal, Var, Zero
from ..core.ir import Eqn, Graph
from ..core.trace import EVAL_TRACE, GraphTrace, GraphTracer, Tracer, UndefinedPrimal, tensor_type, trace_state
from ..frontend.lowered_ops import FloatSignatures, LoweredOp, run_lowered
from ..prims.indexing import IN_PLACE, written_over
from .impl_rewrites import impl_eqns

# Extern primitives whose jvp/transpose rules are plain lax code over static facts.
_EXTERN_OK = frozenset({"pad", "concatenate", "argmax", "argmin", "cumsum", "dot_general", "conv", "take",
                        "scatter_add", "scatter", "update_slice", "split_block", "take_along_axis", "scatter_add_along", "sort", "topk",
                        "log_softmax", "softmax", "relu", "gelu", "max_pool",
                        "nll_loss", "nll_loss_backward"})
ALLOWED: dict = {}       # Primitive -> bool
UNCACHEABLE = "uncacheable"
JVP_RULES: dict = {}     # key (see JVPTrace._cached_jvp) -> JvpRule | UNCACHEABLE
MAX_RULES = 4096
RULE_FLOATS = FloatSignatures()     # jvp and batch rules keyed by a float's value, per primitive


def cached_rule(table, prim, key, params, build):
    """The rule for a primitive's call signature from table (JVP_RULES, BATCH_RULES), built
    by build() on a miss; NotImplemented where it must run as written: an unhashable param or
    a symbolic size (jit) in the key, or the primitive's float-signature budget spent.
    key: the operands' part of the signature (a list); params are appended here."""
    if params:
        key.append(tuple(params.items()))
    key = tuple(key)
    try:
        rule = table.get(key)
    except TypeError:
        return NotImplemented
    if rule is None:
        if not RULE_FLOATS.may_build(id(prim), key):
            return NotImplemented
        rule = build()
        if len(table) >= MAX_RULES:
            table.clear()
        table[key] = rule
    return rule


def allowed(prim) -> bool:
    ok = ALLOWED.get(prim)
    if ok is None:
        ok = ALLOWED[prim] = (
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


def _slice(eqns, need):
    """The equations (in order) that compute the Vars in `need`; adds what they read to it."""
    kept = []
    for e in reversed(eqns):
        if any(o in need for o in e.outputs):
            kept.append(e)
            need.update(a for a in e.inputs if isinstance(a, Var))
    kept.reverse()
    return kept


def operand_key(v, eager, tag):
    """An operand in a cache key: (shape, dtype, device, tag) of a tensor, or of a tracer of
    the trace below when that trace is not the eager one; a Python scalar's exact value; None
    where the rule must run as written (a tensor that requires torch grad, anything else)."""
    if isinstance(v, torch.Tensor):
        return None if v.requires_grad else (v.shape, v.dtype, v.device, tag)
    if not eager and isinstance(v, Tracer):
        av = v.aval
        return (av.shape, av.dtype, av.device, tag)
    return scalar_key(v)


class JvpRule:
    """One primitive's jvp rule for one static signature, split and generated (module doc).
    fns[(mode, bind)]: mode "linearize": (pe, P, T) -> (outs, tangents), P the primal values,
    T the tangents' Vars in pe; "forward": (P, T) -> (outs, tangents), T the tangent values.
    bind=False calls impls (the trace below is the eager one), True binds at the current trace."""
    __slots__ = ("fns", "multiple")

    def __init__(self, fns, multiple):
        self.fns = fns
        self.multiple = multiple


def build_jvp(prim, params, specs, zero_of):
    """The JvpRule for (prim, params, specs), or UNCACHEABLE."""
    def jvp(primals, tangents):
        out, tout = prim.jvp(primals, tangents, **params)
        if prim.multiple_results:
            return list(out), list(tout)
        return [out], [tout]
    return build_jvp_of(jvp, prim.name, prim.multiple_results, specs, zero_of)


def build_jvp_of(jvp, name, multiple, specs, zero_of):
    """The JvpRule of jvp(primals, tangents) -> (outputs, output tangents), two lists (a
    primitive's rule, or an ATen op's cached lowering under a JVPTrace), or UNCACHEABLE."""
    g = GraphTrace(EVAL_TRACE, stage_all=True)
    g.keeps_fused = True       # fused primitives stay whole (prims/fused.py)
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
        outs, touts = jvp(primals, tangents)
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
    kept_linear = _slice(linear, need)
    residuals = []
    for e in kept_linear:
        for a in e.inputs:
            if isinstance(a, Var) and a not in lin and a not in residuals:
                residuals.append(a)
    for a in tout_atoms:        # a tangent output computed from primals only
        if isinstance(a, Var) and a not in lin and a not in residuals:
            residuals.append(a)
    need = {a for a in out_atoms if isinstance(a, Var)} | set(residuals)
    kept_known = _slice(known, need)
    # each recorded equation's transpose template; the last one's is the whole group's when
    # there are several (UnitTranspose: one generated transpose for all of them)
    tpls = [TransposeRule(e, [isinstance(a, Var) and a in lin for a in e.inputs]) for e in kept_linear]
    if len(kept_linear) > 1:
        tpls[-1] = UnitTranspose(kept_linear, lin, tout_atoms, tpls, name)

    fns = {}
    for bind in (False, True):
        fns.update(_jvp_functions(name, multiple, bind, p_vars, t_vars, g, kept_known, kept_linear, residuals, lin,
                                  out_atoms, tout_atoms, tpls))
    return JvpRule(fns, multiple)


def _jvp_functions(name, multiple, bind, p_vars, t_vars, g, kept_known, kept_linear, residuals, lin, out_atoms, tout_atoms,
                   tpls):
    """linearize(pe, P, T) and forward(P, T) of one JvpRule; bind: their primal (and forward
    tangent) equations bind at the current trace instead of calling impls."""
    gen = _Codegen(bind=bind)
    for k, v in enumerate(p_vars):
        gen.names[v] = f"P[{k}]"
    for v, c in zip(g.constvars, g.consts):
        gen.names[v] = gen.const(c)
    if bind and len(kept_known) > 1:
        # The primal work as one unit at the trace below (a BatchTrace runs it through one
        # cached batch rule, vmap(grad)), not one bind per equation.
        known_lines = [gen.unit(name, kept_known, p_vars, g, [*out_atoms, *residuals])]
    else:
        live = {a for a in (*out_atoms, *residuals) if isinstance(a, Var)}
        eqns = impl_eqns(kept_known, live)
        over = written_over(eqns, live)
        known_lines = [gen.call(e, in_place=id(e) in over) for e in eqns]
    outs_src = ", ".join(gen.ref(a) for a in out_atoms)
    res_names = [gen.ref(a) for a in residuals]
    # reverse mode: record the linear equations into the partial-eval trace
    rec = _Codegen(gen)
    for k, v in enumerate(t_vars):
        rec.names[v] = f"T[{k}]"
    rec_lines = ["    eqns = pe.eqns"]
    if residuals:
        rec_lines.append("    atom = pe.atom" if bind else "    cvar, const = pe.constvars.append, pe.consts.append")
    for v, r in zip(residuals, res_names):
        atom_name = rec.fresh()
        if bind:
            rec_lines.append(f"    {atom_name} = atom({r})")
        else:       # a tensor of this (non-weak) type: pe.atom's work without asking it for its type
            t = rec.const(tensor_type(tuple(v.type.shape), v.type.dtype, v.type.device))
            rec_lines.append(f"    {atom_name} = Var({t}); cvar({atom_name}); const({r})")
        rec.names[v] = atom_name
    for e, tpl in zip(kept_linear, tpls):
        rec_lines.append(rec.record(e, tpl))
    rec_touts = ", ".join("None" if a is None else
                          (f"GT(pe, {rec.ref(a)})" if isinstance(a, Var) and a in lin else gen.ref(a))
                          for a in tout_atoms)
    # forward mode: evaluate them on the tangents
    fwd = _Codegen(gen)
    for k, v in enumerate(t_vars):
        fwd.names[v] = f"T[{k}]"
    fwd_eqns = kept_linear if bind else impl_eqns(kept_linear, {a for a in tout_atoms if isinstance(a, Var)})
    fwd_lines = [fwd.call(e) for e in fwd_eqns]
    fwd_touts = ", ".join("None" if a is None else fwd.ref(a) for a in tout_atoms)
    wrap = (lambda s: f"[{s}]") if multiple else (lambda s: s)
    src = "\n".join(
        ["def linearize(pe, P, T):"] + known_lines + rec_lines
        + [f"    return {wrap(outs_src)}, {wrap(rec_touts)}", "",
           "def forward(P, T):"] + known_lines + fwd_lines
        + [f"    return {wrap(outs_src)}, {wrap(fwd_touts)}"])
    ns = dict(_GLOBALS, **gen.ns, **rec.ns, **fwd.ns, GT=GraphTracer, Var=Var, Eqn=Eqn, B=bind_at_current)
    variant = "bind" if bind else "impl"
    exec(compile(src, f"<functx jvp rule {name} ({variant})>", "exec"), ns)
    return {("linearize", bind): ns["linearize"], ("forward", bind): ns["forward"]}


class _Codegen:
    """Names for Vars and closure constants while generating one rule's Python source.
    bind: equations bind at the current trace (a transform below), else call their impls
    (what the eager trace would run)."""

    def __init__(self, parent=None, bind=False):
        self.names = dict(parent.names) if parent is not None else {}
        self.ns = {}
        self.counter = parent.counter if parent is not None else [0]
        self.bind = parent.bind if parent is not None else bind

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

    def call(self, e, in_place=False):
        """`out = impl(args, **params)` (what EvalTrace runs for e), or `out = bind(...)`;
        in_place: its IN_PLACE variant's impl, which writes over its first operand (written_over)."""
        ins = [self.ref(a) for a in e.inputs]
        if self.bind:
            args = "(" + "".join(i + ", " for i in ins) + ")"
            return f"    {self._outs(e)} = B({self.const(e.prim)}, {args}, {self.const(e.params)})"
        impl = IN_PLACE[e.prim].impl if in_place else e.prim.impl
        scalar_as_tensor = _scalar_as_tensor(e)
        if scalar_as_tensor is not None:
            i, t = scalar_as_tensor
            ins[i] = self.const(t)
        if e.inputs and (isinstance(e.inputs[0], Var) or scalar_as_tensor is not None):
            impl = getattr(impl, "tensor_first", impl)      # no Python scalar to make a tensor of first
        if type(impl) is not _BUILTIN:      # a torch builtin is called as is; else the emit rule's
            expr = _emitted(e, ins)         # expression, without the impl's Python frame
            if expr is not None:
                return f"    {self._outs(e)} = {expr}"
        fn = self.const(impl)
        if e.params:
            ins.append("**" + self.const(e.params))
        return f"    {self._outs(e)} = {fn}({', '.join(ins)})"

    def unit(self, name, eqns, in_vars, g, needed):
        """`outs = L(op, args)`: eqns (reading in_vars and g's constants) as one LoweredOp run at
        the current trace (frontend/lowered_ops.run_lowered); outs: what `needed` reads of them."""
        made = {o for e in eqns for o in e.outputs}
        outs = []
        for a in needed:
            if isinstance(a, Var) and a in made and a not in outs:
                outs.append(a)
        ins = ", ".join(self.names[v] for v in in_vars)
        op = LoweredOp(f"{name} (primal)", eqns, list(in_vars), g.constvars, g.consts, outs, "many")
        names = []
        for o in outs:
            names.append(self.fresh())
            self.names[o] = names[-1]
        self.ns["L"] = run_lowered
        return f"    ({''.join(n + ', ' for n in names)}) = L({self.const(op)}, [{ins}])"

    def record(self, e, tpl):
        """Append e (fresh output Vars) to the partial-eval trace, as GraphTrace records it,
        with its transpose template tpl for backward_pass."""
        ins = "[" + ", ".join(self.names[a] if isinstance(a, Var) else self.const(a) for a in e.inputs) + "]"
        lines = []
        outs = []
        for o in e.outputs:
            name = self.fresh()
            lines.append(f"    {name} = Var({self.const(o.type)})")
            self.names[o] = name
            outs.append(name)
        tpl = self.const(tpl)
        lines.append(f"    eqns.append(Eqn({self.const(e.prim)}, {ins}, [{', '.join(outs)}], "
                     f"{self.const(e.params)}, None, {tpl}))")
        return "\n".join(lines)


# A Python scalar operand costs torch ~2 us per call (wrapping it as a tensor) where a 0-dim
# tensor costs nothing: add/sub/mul/div of a float32/float64 CPU tensor and a literal take it
# as a 0-dim tensor of the result's dtype, made once per rule. Same kernel, same bits: ATen
# reads both as a CPU scalar (TensorIterator's is_cpu_scalar, div by its reciprocal), in
# the result's dtype, which for these dtypes is the computation dtype (not so for
# half/bfloat16, whose scalars stay in float, nor for other devices: those keep the literal).
_SCALAR_AS_TENSOR = frozenset({"add", "sub", "mul", "div"})


def _scalar_as_tensor(e):
    """(operand index, 0-dim tensor) for e's literal operand, or None."""
    if e.prim.name not in _SCALAR_AS_TENSOR or e.params or len(e.inputs) != 2:
        return None
    t = e.outputs[0].type
    if t.dtype not in (torch.float32, torch.float64) or torch.device(t.device).type != "cpu":
        return None
    for i, a in enumerate(e.inputs):
        other = e.inputs[1 - i]
        if isinstance(a, Literal) and isinstance(other, Var) and other.type.dtype == t.dtype \
                and (type(a.value) is float or (type(a.value) is int and abs(a.value) < 2 ** 53)):
            return i, torch.tensor(a.value, dtype=t.dtype)
    return None


def _emitted(e, srcs):
    """e as a PyTorch expression from its primitive's `emit` rule (what jit's eager backend
    prints: `x @ w`, `torch.where(...)`, no impl wrapper's Python frame), or None where it has
    none or it reads names other than its operands, `torch` and `math` (the generated code's
    globals: _GLOBALS)."""
    if e.prim.emit is None:
        return None
    try:
        expr = e.prim.emit(e, srcs)
        names = _names(expr)
    except Exception:
        return None
    return expr if names <= _GLOBALS.keys() | {n for s in srcs for n in _names(s)} else None


def _names(src):
    return {n.id for n in ast.walk(ast.parse(src, mode="eval")) if isinstance(n, ast.Name)}


_GLOBALS = {"torch": torch, "math": math}
_BUILTIN = type(torch.exp)


def bind_at_current(prim, args, params):
    return trace_state.trace.process_primitive(prim, args, params)


class TransposeRule:
    """The transpose rule of one template equation (a linear equation of a JvpRule), traced
    on first use into generated functions (ct, R) -> cotangents per input (None where none),
    R being the values of its non-linear Var inputs (residuals): fns[False] calls impls (the
    eager trace is current), fns[True] binds at the current trace."""
    __slots__ = ("eqn", "linear", "res_pos", "fns", "dtype")

    def __init__(self, eqn, linear):
        self.eqn = eqn
        self.linear = linear
        self.res_pos = [i for i, a in enumerate(eqn.inputs) if isinstance(a, Var) and not linear[i]]
        self.fns = None
        self.dtype = None       # the default dtype it was traced under (lax helpers read it)

    def compile(self):
        e = self.eqn
        self.dtype = torch.get_default_dtype()
        fns = UNCACHEABLE
        if not e.prim.multiple_results and e.prim.transpose is not None:
            try:
                fns = _build_transpose(e, self.linear)
            except Exception:
                fns = UNCACHEABLE
        self.fns = fns
        return fns


def _build_transpose(e, linear):
    g = GraphTrace(EVAL_TRACE, stage_all=True)
    g.keeps_fused = True       # fused primitives stay whole (prims/fused.py)
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
    if len(cts) != len(e.inputs) or not _plain(g.eqns):
        return UNCACHEABLE
    return _transpose_functions(f"transpose {e.prim.name}", "ct", {ct.var: "ct"}, res_vars, g, cts)


def _transpose_functions(label, arg, ct_names, res_vars, g, cts):
    """{bind: transpose(<arg>, R)} generated from what g recorded: ct_names names the
    cotangent Vars (by <arg>), res_vars are R's; cts: the results (Var, or None)."""
    fns = {}
    in_vars = [*ct_names, *res_vars]
    for bind in (False, True):
        gen = _Codegen(bind=bind)
        gen.names.update(ct_names)
        for k, v in enumerate(res_vars):
            gen.names[v] = f"R[{k}]"
        for v, c in zip(g.constvars, g.consts):
            gen.names[v] = gen.const(c)
        if bind and len(g.eqns) > 1:      # one unit at the trace below (as for jvp rules)
            lines = [gen.unit(label, g.eqns, in_vars, g, cts)]
        elif bind:
            lines = [gen.call(eq) for eq in g.eqns]
        else:
            live = {c for c in cts if isinstance(c, Var)}
            eqns = impl_eqns(g.eqns, live)
            over = written_over(eqns, live)
            lines = [gen.call(eq, in_place=id(eq) in over) for eq in eqns]
        outs = ", ".join("None" if c is None else gen.ref(c) for c in cts)
        src = "\n".join([f"def transpose({arg}, R):"] + lines + [f"    return ({outs},)"])
        ns = dict(_GLOBALS, **gen.ns, B=bind_at_current)
        exec(compile(src, f"<functx {label} ({'bind' if bind else 'impl'})>", "exec"), ns)
        fns[bind] = ns["transpose"]
    return fns


class UnitTranspose:
    """The transpose of every linear equation one JvpRule records per call (a function
    unit's, an ATen op's or a primitive's tangent work; two or more equations), generated as
    one function (C, R) -> cotangents of the group's linear inputs: C the cotangents of the
    group's outputs that have one (one function per such mask, traced on first use by
    backward_pass over the group's equations), R the residuals. It is the template of the
    group's last recorded equation; backward_pass finds the group's runtime Vars at fixed
    positions of the equations before it (the generated linearize appends them together,
    each with its own TransposeRule; the first one's, `first`, is checked by identity before
    the group runs: a graph edited after linearize recorded it runs equation by equation).
    Where it does not apply, the equations run one by one (`last`: the last one's rule)."""
    __slots__ = ("n", "first", "last", "eqns", "in_vars", "res_vars", "out_vars", "in_pos", "res_pos", "out_pos",
                 "fns", "dtype", "name")

    def __init__(self, eqns, lin, tout_atoms, tpls, name):
        self.n = len(eqns)
        self.first = tpls[0]
        self.last = tpls[-1]
        self.eqns = eqns
        self.name = name
        made = {o: (j, k) for j, e in enumerate(eqns) for k, o in enumerate(e.outputs)}
        self.in_vars, self.res_vars, self.in_pos, self.res_pos = [], [], [], []
        for j, e in enumerate(eqns):
            for k, a in enumerate(e.inputs):
                if not isinstance(a, Var) or a in made or a in self.in_vars or a in self.res_vars:
                    continue
                if a in lin:
                    self.in_vars.append(a)
                    self.in_pos.append((j, k))
                else:
                    self.res_vars.append(a)
                    self.res_pos.append((j, k))
        self.out_vars, self.out_pos = [], []
        for a in tout_atoms:
            if isinstance(a, Var) and a in made and a not in self.out_vars:
                self.out_vars.append(a)
                self.out_pos.append(made[a])
        self.fns = {}
        self.dtype = None

    def compile(self, mask, backward_pass):
        """The functions for the outputs with a cotangent (mask), or UNCACHEABLE."""
        if self.dtype is None:
            self.dtype = torch.get_default_dtype()
        fns = UNCACHEABLE
        if self.dtype is torch.get_default_dtype():
            try:
                fns = self._build(mask, backward_pass)
            except Exception:       # the equations' own rules then run (and raise) one by one
                fns = UNCACHEABLE
        self.fns[mask] = fns
        return fns

    def _build(self, mask, backward_pass):
        g = GraphTrace(EVAL_TRACE, stage_all=True)
        g.keeps_fused = True       # fused primitives stay whole (prims/fused.py)
        ct_names, cts = {}, []
        for v, m in zip(self.out_vars, mask):
            if m:
                c = g.new_arg(v.type)
                ct_names[c.var] = f"C[{len(ct_names)}]"
                cts.append(c)
            else:
                cts.append(None)
        res = [g.new_arg(v.type) for v in self.res_vars]
        graph = Graph(self.in_vars, self.res_vars, res, self.eqns, self.out_vars)
        prev, trace_state.trace = trace_state.trace, g
        try:
            out = backward_pass(graph, res, cts)
            out = [None if c is None or isinstance(c, Zero) else g.atom(c) for c in out]
        finally:
            trace_state.trace = prev
        if not _plain(g.eqns):
            return UNCACHEABLE
        return _transpose_functions(f"transpose of {self.name}", "C", ct_names, [r.var for r in res], g, out)


def _plain(eqns) -> bool:
    """Equations a generated function may run: no effects, no inlined bodies, an impl."""
    return all(not e.prim.effectful and e.prim.inline is None and e.prim.impl is not None for e in eqns)
