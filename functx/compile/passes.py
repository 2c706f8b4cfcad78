"""Graph passes. Each takes a Graph and returns a new Graph; none mutates its input.

    dce                 drop equations whose outputs are unused (effects are kept, also a
                        cond/loop whose sub-graphs hold one: has_effects)
    cse                 one equation per (primitive, operands, params); never effectful ones
    fold_constants      pointwise and view equations of constants become `full`
    simplify            x*1, x+0, x-0, x/1, neg(neg x), x*0 on integers, convert chains,
                        stop_gradient(x), where(c, x, x);
                        a `full` operand beside one of its type becomes a scalar literal
    fold_views          identity views vanish; broadcast/reshape/transpose chains compose
    fold_transposes     transpose chains that the other passes expose compose
    fold_dot_transposes transpose(dot_general(a, b)) that swaps its free dims is
                        dot_general(b, a), when that matmul's output rows are no shorter

pipeline.py runs them in order. Rewrites replace a variable by another of exactly the same
type, so graphs stay valid (`graph.check()`); every pass keeps graph.meta, and a rewritten
equation keeps the source line debug_nans recorded on it (`Eqn.source`).
"""
from __future__ import annotations

import math
from collections import Counter

import torch

from ..core import POINTWISE, VIEW, Eqn, Graph, Literal, Var, has_effects, live_eqns
from ..core.primitive import REGISTRY
from .symbolic import same_type_without_guards


class _Subst:
    """Variable replacement map applied to operands as equations are rewritten in order."""

    def __init__(self):
        self.map: dict = {}

    def __call__(self, atom):
        while isinstance(atom, Var) and atom in self.map:
            atom = self.map[atom]
        return atom

    def eqn(self, e):
        ins = [self(a) for a in e.inputs]
        return e if all(a is b for a, b in zip(ins, e.inputs)) else Eqn(e.prim, ins, e.outputs, e.params, e.source)

    def finish(self, graph, eqns):
        return graph.replace(eqns=eqns, outvars=[self(a) for a in graph.outvars])


def use_counts(graph: Graph) -> Counter:
    """Var -> how many equation inputs and graph outputs read it (a rewrite that removes a
    value checks it has exactly the one use it rewrites)."""
    uses = Counter(a for e in graph.eqns for a in e.inputs if isinstance(a, Var))
    uses.update(a for a in graph.outvars if isinstance(a, Var))
    return uses


def dce(graph: Graph) -> Graph:
    """Dead-code elimination: drop equations whose outputs are unused (effects are kept)."""
    kept, live = live_eqns(graph)
    used = [(v, c) for v, c in zip(graph.constvars, graph.consts) if v in live]
    return graph.replace(eqns=kept, constvars=[v for v, _ in used], consts=[c for _, c in used])


def _param_key(params):
    items = []
    for k, v in sorted(params.items()):
        try:
            hash(v)
            items.append((k, v))
        except TypeError:
            items.append((k, id(v)))
    return tuple(items)


def _atom_key(a):
    if isinstance(a, Literal):
        if isinstance(a.value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            return ("sym", type(a.value), str(a.value))   # a size expression (symbolic jit)
        return ("lit", type(a.value), a.value)
    return ("var", id(a))


def cse(graph: Graph) -> Graph:
    """Common-subexpression elimination (effects, e.g. random or a cond holding a print, are never merged)."""
    sub, seen, eqns = _Subst(), {}, []
    for e in graph.eqns:
        e = sub.eqn(e)
        if has_effects(e):
            eqns.append(e)
            continue
        ins = tuple(_atom_key(a) for a in e.inputs)
        if e.prim.commutative:      # x*y and y*x are one value (every tanh/sigmoid jvp has both)
            ins = tuple(sorted(ins, key=repr))
        key = (e.prim.name, ins, _param_key(e.params))
        prev = seen.get(key)
        if prev is not None and all(a.type == b.type for a, b in zip(prev.outputs, e.outputs)):
            for a, b in zip(e.outputs, prev.outputs):
                sub.map[a] = b
            continue
        seen[key] = e
        eqns.append(e)
    return sub.finish(graph, eqns)


# ---------------------------------------------------------------- constants

def _full_value(atom, defs):
    """The scalar a var is filled with, if it is a `full` (possibly through views)."""
    if isinstance(atom, Literal):
        # a size expression (symbolic jit) is not a known constant: deciding on it would specialize it
        return None if isinstance(atom.value, _SYM) else atom.value
    e = defs.get(atom)
    while e is not None and e.prim.name in ("broadcast_in_dim", "reshape", "transpose", "rev", "slice"):
        e = defs.get(e.inputs[0]) if isinstance(e.inputs[0], Var) else None
    if e is not None and e.prim.name == "full" and not isinstance(e.params["value"], _SYM):
        return e.params["value"]
    return None


def _full_eqn(out: Var, value, source=None):
    t = out.type
    return Eqn(REGISTRY["full"], [], [out], {"shape": tuple(t.shape), "value": value, "dtype": t.dtype,
                                             "device": t.device}, source)


_SYM = (torch.SymInt, torch.SymFloat, torch.SymBool)


def fold_constants(graph: Graph) -> Graph:
    """A pointwise or view equation whose operands are all constants becomes a `full`."""
    defs, eqns = {}, []
    for e in graph.eqns:
        folded = None
        if not e.prim.effectful and len(e.outputs) == 1 and e.inputs and \
                e.prim.kind in (POINTWISE, VIEW) and e.prim.name != "iota":
            values = [_full_value(a, defs) for a in e.inputs]
            # a size expression (symbolic jit) is no constant: evaluating it would specialize it
            if all(v is not None and not isinstance(v, _SYM) for v in values):
                folded = _evaluate_scalar(e, values)
        if folded is not None:
            e = _full_eqn(e.outputs[0], folded, e.source)
        for v in e.outputs:
            defs[v] = e
        eqns.append(e)
    return graph.replace(eqns=eqns)


def _evaluate_scalar(e, values):
    out = e.outputs[0].type
    if e.prim.kind == VIEW:
        return values[0]
    try:
        dtypes = [a.type.dtype if isinstance(a, Var) else None for a in e.inputs]
        # A literal has its operation's value dtype: the output's, or for a comparison (bool
        # out) its tensor operand's; not where's predicate's (-0.5 as a bool is True).
        ref = out.dtype if out.dtype != torch.bool else next((d for d in dtypes if d is not None), out.dtype)
        args = [torch.tensor(v, dtype=d or ref) for v, d in zip(values, dtypes)]
        res = e.prim.impl(*args, **e.params)
    except Exception:
        return None
    if not isinstance(res, torch.Tensor) or res.numel() != 1:
        return None
    return res.to(out.dtype).item()


def _rewrite(graph: Graph, rule) -> Graph:
    """Apply a local rewrite rule to each equation in order. rule(eqn, defs) returns a Var
    (the equation's output is that existing value), a replacement Eqn, or None (keep);
    defs maps each value to the equation that defines it, for looking at producers."""
    sub, defs, eqns = _Subst(), {}, []
    for e in graph.eqns:
        e = sub.eqn(e)
        repl = rule(e, defs)
        if isinstance(repl, Var):
            sub.map[e.outputs[0]] = repl
            continue
        if isinstance(repl, Eqn):
            e = repl
        for v in e.outputs:
            defs[v] = e
        eqns.append(e)
    return sub.finish(graph, eqns)


# ---------------------------------------------------------------- algebra

def _is(value, target) -> bool:
    return value is not None and not isinstance(value, bool) and value == target


def _adds_nothing(value, out, negated=False) -> bool:
    """x + value == x for every x: in floating point only -0.0 is the additive identity
    (-0.0 + 0.0 is +0.0), so x + 0.0 stays; x - 0.0 is x."""
    if not _is(value, 0):
        return False
    if not (out.type.dtype.is_floating_point or out.type.dtype.is_complex):
        return True
    return (math.copysign(1.0, value) > 0) == negated


# True while jit compiles the variant of a graph that calls torch autograd records: there the
# compiled torch code is differentiated, and stop_gradient (emitted as .detach()) is what
# cuts the derivatives torch cuts (compile/write_back.py).
KEEP_STOP_GRADIENT = [False]


def simplify(graph: Graph) -> Graph:
    """Algebraic identities that are exact in floating point, plus x*0 on integers; a full
    operand of a pointwise op becomes a literal (_literal_operands)."""
    return _rewrite(graph, _simplify_eqn)


def _same_type(a, out):
    # symbolic sizes (jit): equal only if equal for every size, so a rewrite never pins a size
    return isinstance(a, Var) and same_type_without_guards(a.type, out.type)


def _simplify_eqn(e, defs):
    lit = _literal_operands(e, defs)
    if lit is not None:
        return _simplify_eqn(lit, defs) or lit
    name, out = e.prim.name, e.outputs[0] if e.outputs else None
    if name in ("add", "sub", "mul", "div"):
        x, y = e.inputs
        vx, vy = _full_value(x, defs), _full_value(y, defs)
        if name == "add" and _adds_nothing(vy, out) and _same_type(x, out):
            return x
        if name == "add" and _adds_nothing(vx, out) and _same_type(y, out):
            return y
        if name == "sub" and _adds_nothing(vy, out, negated=True) and _same_type(x, out):
            return x
        if name in ("mul", "div") and _is(vy, 1) and _same_type(x, out):
            return x
        if name == "mul" and _is(vx, 1) and _same_type(y, out):
            return y
        if name == "mul" and not out.type.dtype.is_floating_point and not out.type.dtype.is_complex \
                and (_is(vx, 0) or _is(vy, 0)):
            return _full_eqn(out, 0, e.source)           # only integers: 0 * inf is nan for floats
    if name in ("replicated_in", "replicated_out", "pvary") or (name == "stop_gradient" and not KEEP_STOP_GRADIENT[0]):
        return e.inputs[0]        # markers that only matter to transforms; none runs after compiling
    if name == "where" and e.inputs[1] is e.inputs[2] and _same_type(e.inputs[1], out):
        return e.inputs[1]        # where(c, x, x): relu's derivative at 0 after stop_gradient goes
    if name == "neg":
        d = defs.get(e.inputs[0])
        if d is not None and d.prim.name == "neg" and _same_type(d.inputs[0], out):
            return d.inputs[0]
    if name == "convert_element_type":
        x = e.inputs[0]
        if _same_type(x, out):
            return x
        d = defs.get(x)
        if d is not None and d.prim.name == "convert_element_type" and isinstance(d.inputs[0], Var):
            src = d.inputs[0]
            if _lossless(src.type.dtype, x.type.dtype):   # a widening step changes nothing
                if src.type.dtype == out.type.dtype:
                    return src
                return Eqn(e.prim, [src], e.outputs, e.params, e.source)
    return None


# Operations whose torch kernels compute the same bits with a scalar operand as with a
# tensor of it (checked per dtype in tests/test_compiler_passes.py); not pow, whose scalar
# exponents take special paths (x ** 3.0 is x*x*x, ** 0.5 is sqrt: -0.0 and -inf differ).
_SCALAR_SAFE = frozenset({"add", "sub", "mul", "div", "where", "max", "min",
                          "lt", "le", "gt", "ge", "eq", "ne"})


def _literal_operands(e, defs):
    """A pointwise operand that is a `full` of the same type as another operand becomes a
    Python scalar: `mul(x, full(0.5))` -> `mul(x, 0.5)`, `where(p, full(0), g)` ->
    `where(p, 0.0, g)` (the zeros transposition leaves). Backends that run one torch op per
    equation (eager) then never fill the constant tensor; fused kernels fold it either way.
    Exact: only values the dtype represents exactly (so the scalar rounds to the same
    number), and only beside an operand of the full's type, which keeps the result's shape
    and dtype. Returns the rewritten equation or None."""
    p = e.prim
    if p.name not in _SCALAR_SAFE or len(e.outputs) != 1:
        return None
    first = 1 if p.name == "where" else 0          # the predicate is not a value operand
    ins = list(e.inputs)
    for i in range(first, len(ins)):
        a = ins[i]
        d = defs.get(a) if isinstance(a, Var) else None
        if d is None or d.prim.name != "full":
            continue
        if not any(isinstance(b, Var) and b.type == a.type for j, b in enumerate(ins) if j >= first and j != i):
            continue
        value = _scalar_of(d.params["value"], a.type.dtype)
        if value is not None:
            ins[i] = Literal(value)
    if all(a is b for a, b in zip(ins, e.inputs)):
        return None
    return Eqn(p, ins, e.outputs, e.params, e.source)


def _scalar_of(value, dtype):
    """`value` as the Python scalar a literal of `dtype` holds, if it is exactly that value."""
    if dtype == torch.bool:
        return bool(value)
    if dtype.is_complex or isinstance(value, complex):
        return None
    if dtype.is_floating_point:
        value = float(value)
        if math.isnan(value):
            return value
        return value if torch.tensor(value, dtype=dtype).item() == value else None
    return int(value) if float(value).is_integer() else None


def _lossless(src, mid) -> bool:
    """Does converting src -> mid keep every value exactly?"""
    if src == mid or src == torch.bool:
        return True
    if mid == torch.bool or mid.is_complex or src.is_complex:
        return False
    if src.is_floating_point:
        if not mid.is_floating_point:
            return False
        s, m = torch.finfo(src), torch.finfo(mid)
        return m.bits >= s.bits and m.eps <= s.eps and m.max >= s.max
    if mid.is_floating_point:   # integers convert exactly while they fit the significand
        significand = {torch.float16: 11, torch.bfloat16: 8, torch.float32: 24, torch.float64: 53}[mid]
        return torch.iinfo(src).bits <= significand
    si, mi = torch.iinfo(src), torch.iinfo(mid)
    return mi.min <= si.min and mi.max >= si.max


# ---------------------------------------------------------------- views

def fold_views(graph: Graph) -> Graph:
    """Identity views vanish; broadcast∘broadcast, reshape∘reshape, transpose∘transpose compose."""
    return _rewrite(graph, _fold_view)


def _fold_view(e, defs):
    name = e.prim.name
    if e.prim.kind != VIEW or not isinstance(e.inputs[0], Var):
        return None
    x, out, p = e.inputs[0], e.outputs[0], e.params
    if _same_type(x, out) and (name in ("reshape", "slice") or
                               (name == "transpose" and p["permutation"] == tuple(range(out.type.ndim))) or
                               (name == "broadcast_in_dim" and p["broadcast_dimensions"] == tuple(range(out.type.ndim)))):
        return x
    d = defs.get(x)
    if d is None or not d.inputs or not isinstance(d.inputs[0], Var):
        return None
    inner = d.inputs[0]
    if name == "reshape" and d.prim.name == "reshape":
        return inner if _same_type(inner, out) else Eqn(e.prim, [inner], e.outputs, p, e.source)
    if name == "transpose" and d.prim.name == "transpose":
        perm = tuple(d.params["permutation"][i] for i in p["permutation"])
        return inner if perm == tuple(range(len(perm))) else Eqn(e.prim, [inner], e.outputs, {"permutation": perm}, e.source)
    if name == "broadcast_in_dim" and d.prim.name == "broadcast_in_dim":
        dims = tuple(p["broadcast_dimensions"][i] for i in d.params["broadcast_dimensions"])
        return Eqn(e.prim, [inner], e.outputs, {"shape": p["shape"], "broadcast_dimensions": dims}, e.source)
    # A reshape that only inserts unit dims (unsqueeze) composes with a broadcast either side.
    if name == "broadcast_in_dim" and d.prim.name == "reshape":
        align = _unit_alignment(inner.type.shape, x.type.shape)
        if align is not None:
            dims = tuple(p["broadcast_dimensions"][j] for j in align)
            return Eqn(e.prim, [inner], e.outputs, {"shape": p["shape"], "broadcast_dimensions": dims}, e.source)
    if name == "reshape" and d.prim.name == "broadcast_in_dim":
        align = _unit_alignment(x.type.shape, out.type.shape)
        if align is not None:
            dims = tuple(align[j] for j in d.params["broadcast_dimensions"])
            return Eqn(d.prim, [inner], e.outputs, {"shape": out.type.shape, "broadcast_dimensions": dims}, e.source)
    return None


def _unit_alignment(src, dst):
    """If dst is src with unit dims inserted: the dst position of each src dim, else None."""
    align, j = [], 0
    for n in src:
        while j < len(dst) and dst[j] != n:
            if dst[j] != 1:
                return None
            j += 1
        if j == len(dst):
            return None
        align.append(j)
        j += 1
    return align if all(n == 1 for n in dst[j:]) else None


def fold_transposes(graph: Graph) -> Graph:
    """Compose chains of transposes; drop those that compose to the identity (the transpose
    of a matrix product becomes the swapped product in fold_dot_transposes).

    fold_views composes the chains the trace has; this runs last, for those simplify
    exposes (transpose(neg(neg(transpose(x)))))."""
    producer: dict = {}          # var -> (source atom, permutation) for transpose outputs
    subst: dict = {}             # var -> replacement atom
    eqns = []
    changed = False
    for eqn in graph.eqns:
        inputs = [subst.get(a, a) if isinstance(a, Var) else a for a in eqn.inputs]
        if inputs != eqn.inputs:
            eqn = type(eqn)(eqn.prim, inputs, eqn.outputs, eqn.params, eqn.source)
            changed = True
        if eqn.prim.name == "transpose" and isinstance(inputs[0], Var):
            perm = tuple(eqn.params["permutation"])
            src = inputs[0]
            if src in producer:
                inner_src, inner_perm = producer[src]
                perm = tuple(inner_perm[p] for p in perm)
                src = inner_src
                changed = True
                if perm == tuple(range(len(perm))):
                    subst[eqn.outputs[0]] = src
                    continue
                eqn = type(eqn)(eqn.prim, [src], eqn.outputs, dict(eqn.params, permutation=perm), eqn.source)
            producer[eqn.outputs[0]] = (src, perm)
        eqns.append(eqn)
    if not changed:
        return graph
    outvars = [subst.get(a, a) if isinstance(a, Var) else a for a in graph.outvars]
    return dce(graph.replace(eqns=eqns, outvars=outvars))


# ---------------------------------------------------------------- matmuls

def fold_dot_transposes(graph: Graph) -> Graph:
    """transpose(dot_general(a, b)) whose permutation keeps the batch dims and swaps the lhs
    and rhs free dims is dot_general(b, a) with the dimension numbers swapped: the transposed
    product, computed in the layout the consumer reads (XLA's dot/transpose folding).

    Reverse mode leaves these after every weight gradient (`(x.T @ g).T`). Only where the
    swapped product's last dim (BLAS's N, the output row length) is at least the original's:
    BLAS is slow on short rows ([128,4096] @ [4096,2] took 1.6 ms, the swapped
    [2,4096] @ [4096,128] 0.14 ms, one thread), so a transpose that makes rows shorter stays.
    Each output element is the sum of the same products (a*b == b*a exactly); only the order
    BLAS accumulates them in may change, as for any change of matmul shape (not bitwise)."""
    uses = use_counts(graph)

    def rule(e, defs):
        if e.prim.name != "transpose" or not isinstance(e.inputs[0], Var) or uses.get(e.inputs[0]) != 1:
            return None
        d = defs.get(e.inputs[0])
        if d is None or d.prim.name != "dot_general":
            return None
        a, b = d.inputs
        (lc, rc), (lb, rb) = d.params["dimension_numbers"]
        nb = len(lb)
        nl = a.type.ndim - len(lc) - nb
        nr = b.type.ndim - len(rc) - nb
        swap = tuple(range(nb)) + tuple(nb + nl + i for i in range(nr)) + tuple(nb + i for i in range(nl))
        out, dot_out = e.outputs[0].type.shape, d.outputs[0].type.shape
        if tuple(e.params["permutation"]) != swap or not out:
            return None
        if type(out[-1]) is not int or type(dot_out[-1]) is not int or out[-1] < dot_out[-1]:
            return None      # a symbolic size: comparing would pin the trace to one side (a guard)
        return Eqn(d.prim, [b, a], e.outputs, dict(d.params, dimension_numbers=((rc, lc), (rb, lb))), e.source)

    return dce(_rewrite(graph, rule))
