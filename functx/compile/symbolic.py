"""Symbolic dimensions for jit: one trace serves every size of a dimension, as long as the
decisions Python made on that size while tracing still hold.

torch's own machinery does the bookkeeping: a `ShapeEnv` (torch.fx.experimental.symbolic_shapes)
gives each dynamic dimension a symbol; traced tensors carry SymInt sizes; arithmetic on them
builds expressions, and every Python decision on one (`if x.shape[0] > 5`, `int(n)`, a
comparison inside a shape rule) is recorded as a guard. After compiling, the guards become
one Python expression over the dynamic sizes; jit reuses the entry for new sizes only where it
holds, and traces again otherwise. The eager backend binds each symbol from an input's
`.shape[d]` and prints sizes as expressions of those symbols (codegen.SYMBOL_FUNCTIONS);
`check_printable` evaluates every printed expression at the trace's own sizes before the
entry is used, so a size that would print wrong makes the trace fall back to a static one.

Anything that cannot take a symbolic size raises while tracing or compiling; jit then
traces that signature statically and explain says why (never a silently wrong size).
"""
from __future__ import annotations

import math

import torch

from ..core import Literal, sub_graphs
from ..core.errors import user_line

SYM_TYPES = (torch.SymInt, torch.SymFloat, torch.SymBool)


class Unavailable(Exception):
    """This torch has no usable ShapeEnv API: jit stays static."""


def _shape_env_api():
    try:
        from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv
        from torch._dynamo.source import LocalSource
    except Exception as e:     # an old or stripped-down torch: no symbolic dims, static traces
        raise Unavailable(f"torch's ShapeEnv is unavailable ({type(e).__name__}: {e})") from None
    for name in ("create_symbol", "create_symintnode", "produce_guards_expression"):
        if not hasattr(ShapeEnv, name):
            raise Unavailable(f"torch.fx.experimental.symbolic_shapes.ShapeEnv has no {name}")
    return ShapeEnv, DimDynamic, LocalSource


class SymbolicShapes:
    """The symbols of one symbolic trace and, once it is compiled, its guards.

    dims: [(leaf index, dim)] of the dimensions traced symbolically; sizes: their sizes in
    the call being traced (each >= 2: ShapeEnv specializes 0 and 1, so jit traces those
    statically). shape(k, concrete_shape) -> the leaf's shape with symbols for its dynamic dims."""

    def __init__(self, dims, sizes):
        ShapeEnv, DimDynamic, LocalSource = _shape_env_api()
        self.env = ShapeEnv(duck_shape=False)
        self.dims = list(dims)
        self.symbols = []
        for j, (dim, size) in enumerate(zip(self.dims, sizes)):
            source = LocalSource(f"t{j}")
            sym = self.env.create_symbol(size, source, dynamic_dim=DimDynamic.DYNAMIC)
            self.symbols.append(self.env.create_symintnode(sym, hint=size, source=source))
        self._by_leaf = {}
        for (k, d), s in zip(self.dims, self.symbols):
            self._by_leaf.setdefault(k, {})[d] = s
        self.code = None
        self._check = None
        self._where: dict = {}        # id(guard) or replaced symbol -> the user's line that decided
        self.env.evaluate_expr = self._recording(self.env.evaluate_expr)

    def _recording(self, evaluate):
        """evaluate_expr that remembers the user's line behind each guard or specialization it
        adds (torch's own record names the innermost torch or functx frame)."""
        env = self.env

        def evaluate_expr(*args, **kwargs):
            guards, replaced = len(env.guards), set(env.replacements)
            out = evaluate(*args, **kwargs)
            if len(env.guards) > guards or len(env.replacements) > len(replaced):
                where = user_line()
                for g in env.guards[guards:]:
                    self._where[id(g)] = where
                for sym in set(env.replacements) - replaced:
                    self._where[str(sym)] = where
            return out
        return evaluate_expr

    def shape(self, k, shape):
        syms = self._by_leaf.get(k)
        if not syms:
            return tuple(shape)
        return tuple(syms.get(d, n) for d, n in enumerate(shape))

    def finish(self):
        """Turn the guards recorded so far (tracing, passes, code generation) into the check."""
        self.code = self.env.produce_guards_expression(self.symbols)
        if self.code:
            from torch.fx.experimental.symbolic_shapes import SYMPY_INTERP
            names = [f"t{j}" for j in range(len(self.symbols))]
            code = compile(self.code, "<functx.jit guards>", "eval")
            interp = dict(SYMPY_INTERP)
            self._check = lambda sizes: bool(eval(code, interp, {"L": dict(zip(names, sizes))}))
        else:
            self._check = lambda sizes: True
        # From now on nothing may decide on these symbols in a way that adds a guard: a size
        # concretized at run time would be the traced one. A question the guards already answer
        # for every size this entry serves (`s0 == s0`, `s0 >= 2`; asked by a backend that builds
        # its code later, the CPU backend's fused tier) is answered; any other raises (a crash,
        # never a wrong size).
        self.env.evaluate_expr = _frozen_for(self.env)

    def sizes_of(self, leaves):
        return [leaves[k].shape[d] for k, d in self.dims]

    def holds(self, leaves) -> bool:
        """Whether the guards hold for these arguments (sizes >= 2 are part of the guards)."""
        return self._check(self.sizes_of(leaves))

    def symbol_names(self):
        """The symbols as created (str(SymInt) would print what a guard replaced them by)."""
        return [str(getattr(s.node, "_expr", None) or s.node.expr) for s in self.symbols]

    def specialized(self):
        """The dims the trace pinned to their traced size (a guard `dim == size`)."""
        return [kd for kd, s in zip(self.dims, self.symbols) if not s.node.expr.free_symbols]

    def guard_lines(self, describe):
        """One line per guard the trace recorded: the condition in terms of the arguments'
        dims, and the user line that made Python decide on a size."""
        out = []
        names = {name: describe(k, d) for (k, d), name in zip(self.dims, self.symbol_names())}
        for g in getattr(self.env, "guards", ()):
            text = str(g.expr)
            for sym, who in sorted(names.items(), key=lambda kv: -len(kv[0])):
                text = text.replace(sym, who)
            where = self._where.get(id(g)) or _user_location(g)
            out.append(f"{text}" + (f"  (at {where})" if where else ""))
        for sym, expr in getattr(self.env, "replacements", {}).items():
            if str(sym) in names and not expr.free_symbols:
                where = self._where.get(str(sym))
                out.append(f"{names[str(sym)]} == {expr}: specialized to this size" +
                           (f"  (at {where})" if where else ""))
        return out


def _frozen_for(env):
    def frozen(orig_expr, *args, **kwargs):
        try:
            value = env._maybe_evaluate_static(orig_expr)
        except Exception:     # noqa: BLE001  (a private API: no answer means no answer)
            value = None
        if value is not None:
            return value
        raise RuntimeError("functx.jit: a symbolic size was used after its trace was compiled (a bug: "
                           "please report it; functx.jit(f, dynamic=False) avoids it)")
    return frozen


def _user_location(guard):
    sloc = getattr(guard, "sloc", None)
    if sloc is None:
        return ""
    user = getattr(sloc, "maybe_user_loc", None)
    if user:
        return str(user)
    frame = getattr(sloc, "framework_loc", None)
    return f"{frame.filename}:{frame.lineno}" if hasattr(frame, "filename") else ""


def same_type_without_guards(a, b) -> bool:
    """a == b for TensorTypes, where symbolic sizes count as equal only when they are equal for
    every size (no guard recorded): for passes, which may skip a rewrite but must not pin a size."""
    if a.dtype != b.dtype or a.device != b.device or len(a.shape) != len(b.shape):
        return False
    for m, n in zip(a.shape, b.shape):
        if isinstance(m, SYM_TYPES) or isinstance(n, SYM_TYPES):
            from torch.fx.experimental.symbolic_shapes import statically_known_true
            if not statically_known_true(m == n):
                return False
        elif m != n:
            return False
    return True


def is_symbolic(value) -> bool:
    return isinstance(value, SYM_TYPES)


def _symbolic_values(value, out):
    if isinstance(value, SYM_TYPES):
        out.append(value)
    elif isinstance(value, (tuple, list)):
        for v in value:
            _symbolic_values(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            _symbolic_values(v, out)
    elif isinstance(value, slice):
        _symbolic_values((value.start, value.stop, value.step), out)
    return out


def graph_symbols(graph, out=None):
    """Every SymInt/SymFloat a graph holds: in its types, literals and params, sub-graphs included."""
    out = [] if out is None else out
    for v in list(graph.invars) + list(graph.constvars):
        _symbolic_values(v.type.shape, out)
    for e in graph.eqns:
        for a in e.inputs:
            if isinstance(a, Literal):
                _symbolic_values(a.value, out)
        for v in e.outputs:
            _symbolic_values(v.type.shape, out)
        _symbolic_values({k: p for k, p in e.params.items()}, out)
        for g in sub_graphs(e.params):
            graph_symbols(g, out)
    for a in graph.outvars:
        if isinstance(a, Literal):
            _symbolic_values(a.value, out)
    return out


def has_symbols(graph) -> bool:
    return bool(graph_symbols(graph))


def symbol_bindings(graph):
    """[(symbol name, input position, dim)]: where the generated code reads each symbol."""
    return input_bindings([v.type for v in graph.invars])


def bind_symbols(types, names, needed, indent="    "):
    """Lines reading each symbol a generated function needs from its inputs (`names`, of
    `types`); raises when one of `needed` (SymInts) cannot be read from them."""
    bindings = input_bindings(types)
    lines = [f"{indent}{sym} = {names[i]}.shape[{d}]" for sym, i, d in bindings]
    bound = {sym for sym, _, _ in bindings}
    for v in _symbolic_values(list(needed), []):
        missing = {str(x) for x in v.node.expr.free_symbols} - bound
        if missing:
            raise NotImplementedError(f"size {v} uses {', '.join(sorted(missing))}, which no input of the "
                                      "generated loop has")
    return lines


def input_bindings(types):
    out, seen = [], set()
    for i, t in enumerate(types):
        if t is None:
            continue
        for d, n in enumerate(t.shape):
            if isinstance(n, torch.SymInt):
                for expr in (getattr(n.node, "_expr", None), n.node.expr):
                    name = str(expr)
                    if expr is not None and getattr(expr, "is_Symbol", False) and name not in seen:
                        seen.add(name)
                        out.append((name, i, d))
    return out


# Primitives whose sub-graphs the backend compiles into generated code that reads its own
# sizes (loops.py); every other sub-graph (cond's branches, while_loop's body) is
# interpreted at run time with its trace-time parameters.
_COMPILED_BODIES = ("scan", "checkpoint")


def _refuse_closures(graph):
    """A parameter that is a Python callable (an opaque op's function, a debug callback) may
    hold a size from trace time, which generated code cannot rebind, and a sub-graph that is
    interpreted at run time would run with trace-time sizes: such graphs stay static.
    (functx's own callbacks that read only their arguments say so: `fn.size_free = True`.)"""
    for e in graph.eqns:
        for k, p in e.params.items():
            if callable(p) and not isinstance(p, (type, torch.dtype)) and not getattr(p, "size_free", False):
                raise NotImplementedError(f"{e.prim.name} holds a Python function ({k}), which may "
                                          "have captured a size")
        for g in sub_graphs(e.params):
            if e.prim.name not in _COMPILED_BODIES and graph_symbols(g):
                raise NotImplementedError(f"{e.prim.name}'s sub-graph has symbolic sizes and is "
                                          "interpreted at run time")
            _refuse_closures(g)


def check_printable(graph, namespace):
    """Every size expression the generated code prints, evaluated at the trace's own sizes,
    must give the size the trace computed: otherwise raise (jit then traces statically)."""
    values = graph_symbols(graph)
    if not values:
        return
    _refuse_closures(graph)
    env = dict(namespace)
    for v in values:
        for sym in v.node.expr.free_symbols:
            env_ = v.node.shape_env
            hint = getattr(env_, "backed_var_to_val", None)
            hint = (hint if hint is not None else env_.var_to_val).get(sym)
            if hint is None:
                raise NotImplementedError(f"size {v} has no known value (a data-dependent size)")
            env[str(sym)] = int(hint)
    for v in values:
        expected = v.node.hint
        if isinstance(v, torch.SymFloat) and not v.node.expr.free_symbols:
            continue       # a constant: codegen.literal_source prints its value, not the expression
        try:
            got = eval(str(v), env)
        except Exception as e:
            raise NotImplementedError(f"size expression {v} does not print as Python ({type(e).__name__}: {e})") from None
        if expected is None or got != expected or type(got) is not type(expected) and not (
                isinstance(got, (int, float)) and isinstance(expected, (int, float)) and
                isinstance(got, float) == isinstance(expected, float)):
            raise NotImplementedError(f"size expression {v} prints as {str(v)!r}, which gives {got!r} "
                                      f"at the traced sizes instead of {expected!r}")


def _floordiv(a, b):
    return a // b


# Names sympy's printer uses for torch's size functions (torch.utils._sympy.functions), as the
# generated code's globals; check_printable confirms each printed expression evaluates right.
SYMBOL_FUNCTIONS = {
    "FloorDiv": _floordiv, "CleanDiv": _floordiv, "IntTrueDiv": lambda a, b: a / b,
    "FloatTrueDiv": lambda a, b: a / b, "TruncToFloat": lambda x: float(math.trunc(x)),
    "Mod": lambda a, b: a % b, "PythonMod": lambda a, b: a % b,
    "Max": max, "Min": min, "ToFloat": float, "FloorToInt": math.floor, "CeilToInt": math.ceil,
    "TruncToInt": math.trunc, "Abs": abs, "PowByNatural": lambda a, b: a ** b,
    "FloatPow": lambda a, b: float(a) ** float(b), "oo": math.inf, "int_oo": math.inf,
    "Eq": lambda a, b: a == b, "Ne": lambda a, b: a != b,
}
