"""Symbolic integer index expressions for kernels.

An index is a linear form `c0 + sum(coeff * atom)` over atoms: the kernel's loop symbols
(`xindex`, `rindex`, each with a known range) and `FloorDiv(form, d)` / `Mod(form, d)` of
forms. Views become index maps built from these (broadcast drops a dim, transpose permutes,
slice/rev are affine, reshape flattens and unflattens), and a few exact rewrites keep them
small and readable:

    (q*d + r) // d  ->  q + r // d        (q*d + r) % d  ->  r % d
    r // d -> 0 and r % d -> r            when 0 <= r < d by interval arithmetic
    c*d*(e // d) + c*(e % d)  ->  c*e     (unflatten followed by flatten is the identity)

All index values are non-negative (they address real elements), so Python's floor
semantics and Triton's truncating `//`, `%` agree.

Sizes, coefficients, constants and divisors are ints, or (jit's symbolic dims) sympy
expressions in the size symbols (`size_of` turns a torch.SymInt into one). Nothing here ever
asks torch to decide on a symbolic size (that would add a guard, or raise once the trace is
compiled): a rewrite that needs a fact about sizes is made only where `nonneg` proves it
for every size (each size symbol is >= 2, as torch's ShapeEnv has it), and otherwise the
index keeps its `//` or `%`, which is right for every size. Kernels print a symbolic size
through `render`'s `size_name` (a kernel argument the host wrapper computes).
"""
from __future__ import annotations

import functools
import math
import sys
from functools import reduce

import torch


class _LazySympy:
    """sympy, imported on first use: only symbolic sizes need it (importing it costs seconds,
    and a static graph must not pay for it)."""

    def __getattr__(self, name):
        import sympy as module
        return getattr(module, name)


sympy = _LazySympy()


def size_of(x):
    """An int, or a symbolic size as an expanded sympy expression (an int when it is one)."""
    if isinstance(x, int):
        return int(x)
    if isinstance(x, torch.SymInt):
        x = x.node.expr
    if is_symbolic_size(x):
        x = sympy.expand(x)
        return int(x) if x.is_Integer else x
    raise TypeError(f"an index size must be an int or a symbolic size, got {type(x).__name__}")


def is_symbolic_size(x) -> bool:
    module = sys.modules.get("sympy")      # no sympy loaded: no symbolic size exists
    return not isinstance(x, int) and module is not None and isinstance(x, module.Basic)


def shape_of(shape) -> tuple:
    return tuple(size_of(n) for n in shape)


@functools.lru_cache(maxsize=4096)
def _poly_nonneg(expr) -> bool:
    syms = sorted(expr.free_symbols, key=str)
    # every size symbol is >= 2 (torch specializes sizes 0 and 1): s = 2 + t with t >= 0, and
    # a polynomial in the t's with no negative coefficient is >= 0
    if not syms:
        return bool(expr.is_number and expr >= 0)
    shifted = sympy.expand(expr.xreplace({x: x + 2 for x in syms}))
    try:
        poly = sympy.Poly(shifted, *syms)
    except sympy.PolynomialError:
        return False
    if any(not g.is_Symbol for g in poly.gens):
        return False
    return all(c >= 0 for c in poly.coeffs())


def nonneg(e) -> bool:
    """Is e >= 0 for every size? (False: not proven.)"""
    if isinstance(e, int):
        return e >= 0
    if e in (sympy.oo, -sympy.oo):
        return e == sympy.oo
    if e.has(sympy.oo, -sympy.oo):
        return False
    return _poly_nonneg(sympy.expand(e))


def _divides(d, c) -> bool:
    """Does d divide c for every size?"""
    if isinstance(d, int) and isinstance(c, int):
        return c % d == 0
    if isinstance(c, int) and c == 0:
        return True
    q = sympy.expand(sympy.sympify(c) / d)
    syms = sorted(q.free_symbols, key=str)
    if not q.is_polynomial(*syms):
        return False
    try:
        coeffs = sympy.Poly(q, *syms).coeffs() if syms else [q]
    except sympy.PolynomialError:
        return False
    return all(getattr(k, "is_Integer", False) for k in coeffs)


def _exact_div(c, d):
    if isinstance(c, int) and isinstance(d, int):
        return c // d
    return size_of(sympy.sympify(c) / d)


def _is(x, n: int) -> bool:
    return isinstance(x, int) and x == n


class Sym:
    """A loop symbol with values in [0, size)."""
    __slots__ = ("name", "size")

    def __init__(self, name: str, size):
        self.name, self.size = name, size_of(size)

    def key(self):
        return ("sym", self.name)

    def range(self):
        if isinstance(self.size, int):
            return 0, max(self.size - 1, 0)
        return 0, self.size - 1

    def __eq__(self, other):
        return isinstance(other, Sym) and self.name == other.name

    def __hash__(self):
        return hash(("sym", self.name))

    def __repr__(self):
        return self.name


class _Div:
    """FloorDiv (op '//') or Mod (op '%') of a linear form by a positive constant."""
    __slots__ = ("op", "arg", "d", "_key")

    def __init__(self, op, arg, d):
        self.op, self.arg, self.d = op, arg, d
        self._key = (op, arg.key(), d)

    def key(self):
        return self._key

    def range(self):
        lo, hi = self.arg.range()
        d = self.d
        if self.op == "//":
            if isinstance(lo, int) and isinstance(hi, int) and isinstance(d, int):
                return lo // d, hi // d
            if not nonneg(lo):
                return -sympy.oo, sympy.oo
            if _infinite(hi):
                return 0, sympy.oo
            if _divides(d, hi + 1):          # hi = k*d - 1: the largest quotient is k - 1
                return 0, size_of(_exact_div(size_of(hi + 1), d) - 1)
            return 0, hi                      # d >= 1
        return (lo, hi) if nonneg(lo) and nonneg(d - 1 - hi) else (0, d - 1)

    def symbols(self):
        return self.arg.symbols()

    def __eq__(self, other):
        return isinstance(other, _Div) and self._key == other._key

    def __hash__(self):
        return hash(self._key)

    def __repr__(self):
        return f"({self.arg}) {self.op} {self.d}" if len(self.arg.terms) > 1 or self.arg.const else \
            f"{self.arg} {self.op} {self.d}"


class Index:
    """A linear form: const + sum(coeff * atom). Immutable; build with the operators."""
    __slots__ = ("terms", "const", "_key")

    def __init__(self, terms=(), const=0):
        merged: dict = {}
        atoms: dict = {}
        for atom, c in terms:
            k = atom.key()
            merged[k] = merged.get(k, 0) + c
            atoms[k] = atom
        merged = {k: size_of(c) for k, c in merged.items()}
        self.terms = tuple(sorted(((atoms[k], c) for k, c in merged.items() if not _is(c, 0)),
                                  key=lambda t: repr(t[0].key())))
        self.const = size_of(const)
        self._key = (tuple((a.key(), c) for a, c in self.terms), const)

    # -- construction
    @staticmethod
    def of(x) -> "Index":
        if isinstance(x, Index):
            return x
        if isinstance(x, Sym):
            return Index((), 0) if isinstance(x.size, int) and x.size <= 1 else Index(((x, 1),), 0)
        return Index((), size_of(x))

    def __add__(self, other):
        o = Index.of(other)
        return _combine(Index(self.terms + o.terms, self.const + o.const))

    __radd__ = __add__

    def __sub__(self, other):
        return self + Index.of(other) * -1

    def __rsub__(self, other):
        return Index.of(other) + self * -1

    def __mul__(self, c):
        if isinstance(c, Index):
            raise TypeError("index expressions are linear: multiply by an int or a size only")
        c = size_of(c)
        if _is(c, 0):
            return Index()
        return Index(tuple((a, k * c) for a, k in self.terms), self.const * c)

    __rmul__ = __mul__

    def __floordiv__(self, d: int):
        return _div(self, d, "//")

    def __mod__(self, d: int):
        return _div(self, d, "%")

    # -- queries
    def key(self):
        return self._key

    def is_const(self) -> bool:
        return not self.terms

    def range(self):
        lo = hi = self.const
        for atom, c in self.terms:
            a, b = atom.range()
            p, q = c * a, c * b
            if _infinite(p) or _infinite(q):
                return -sympy.oo, sympy.oo
            if all(isinstance(t, int) for t in (p, q)):
                lo, hi = lo + min(p, q), hi + max(p, q)
            elif nonneg(q - p):
                lo, hi = lo + p, hi + q
            elif nonneg(p - q):
                lo, hi = lo + q, hi + p
            else:
                return -sympy.oo, sympy.oo
        return size_of(lo) if not _infinite(lo) else lo, size_of(hi) if not _infinite(hi) else hi

    def symbols(self) -> set:
        out = set()
        for atom, _ in self.terms:
            out |= {atom.name} if isinstance(atom, Sym) else atom.symbols()
        return out

    def __eq__(self, other):
        return isinstance(other, Index) and self._key == other._key

    def __hash__(self):
        return hash(self._key)

    def __repr__(self):
        return render(self)


def _infinite(x) -> bool:
    return is_symbolic_size(x) and x.has(sympy.oo, -sympy.oo)


def _div(form: Index, d, op: str) -> Index:
    d = size_of(d)
    if isinstance(d, int) and d <= 0:
        raise ValueError("index division by a non-positive constant")
    if _is(d, 1):
        return form if op == "//" else Index()
    # Split off the part that is an exact multiple of d: (q*d + r) // d = q + r // d.
    q_terms, r_terms = [], []
    for atom, c in form.terms:
        (q_terms if _divides(d, c) else r_terms).append((atom, c))
    if isinstance(form.const, int) and isinstance(d, int):
        qc, rc = divmod(form.const, d)
    elif _divides(d, form.const):
        qc, rc = _exact_div(form.const, d), 0
    else:
        qc, rc = 0, form.const
    rest = Index(r_terms, rc)
    lo, hi = rest.range()
    if not nonneg(lo):       # keep every operand of // and % non-negative (Triton truncates)
        qc, rest = 0, Index(r_terms, form.const)
        lo, hi = rest.range()
        if not nonneg(lo):
            q_terms, rest = [], form
            lo, hi = rest.range()
    in_range = nonneg(lo) and not _infinite(hi) and nonneg(d - 1 - hi)
    if op == "%":
        if in_range:
            return rest
        return Index(((_Div("%", rest, d), 1),))
    quotient = Index(tuple((a, _exact_div(c, d)) for a, c in q_terms), qc)
    if in_range:
        return quotient
    if rest.const == 0 and len(rest.terms) == 1 and rest.terms[0][1] == 1 and \
            isinstance(rest.terms[0][0], _Div) and rest.terms[0][0].op == "//":
        inner = rest.terms[0][0]           # (e // a) // d = e // (a*d)
        return quotient + Index(((_Div("//", inner.arg, size_of(inner.d * d)), 1),))
    return quotient + Index(((_Div("//", rest, d), 1),))


def _combine(form: Index) -> Index:
    """c*(e % m)*... + c*m*(e // m) -> c*e, also through a nested floordiv:
    c*((e // a) % m) + c*m*(e // (a*m)) -> c*(e // a)."""
    changed = True
    while changed:
        changed = False
        terms = dict((a.key(), (a, c)) for a, c in form.terms)
        for k, (atom, c) in list(terms.items()):
            if not (isinstance(atom, _Div) and atom.op == "%"):
                continue
            m, inner = atom.d, atom.arg
            if len(inner.terms) == 1 and inner.const == 0 and inner.terms[0][1] == 1 and \
                    isinstance(inner.terms[0][0], _Div) and inner.terms[0][0].op == "//":
                base, a = inner.terms[0][0].arg, inner.terms[0][0].d
            else:
                base, a = inner, 1
            partner = _Div("//", base, size_of(a * m))
            pk = partner.key()
            if pk in terms and size_of(terms[pk][1] - c * m) == 0:
                del terms[k], terms[pk]
                replacement = inner * c
                form = Index(tuple(terms.values()), form.const) + replacement
                changed = True
                break
    return form


# ---------------------------------------------------------------- shapes

def strides_of(shape) -> tuple:
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= s
    return tuple(reversed(out))


def flatten(idx, shape) -> Index:
    return reduce(lambda acc, t: acc + t[0] * t[1], zip(idx, strides_of(shape)), Index())


def unflatten(flat: Index, shape) -> list:
    return [(flat // st) % size for st, size in zip(strides_of(shape), shape)]


def numel(shape):
    return size_of(math.prod(shape_of(shape)))


# ---------------------------------------------------------------- rendering

def render(form: Index, names=None, floordiv="//", size_name=None) -> str:
    """Python/Triton source for a form (C with floordiv="/": the operands are
    non-negative, so truncation is floor); `names` maps atom keys to temporaries;
    size_name(expr) -> the source of a symbolic size (a kernel argument's name)."""
    names = names or {}
    size_name = size_name or _size_source
    parts = []
    for atom, c in form.terms:
        s = names.get(atom.key()) or _render_atom(atom, names, floordiv, size_name)
        if _is(c, 1):
            parts.append(s)
        elif _is(c, -1):
            parts.append(f"-{_paren(s)}")
        elif isinstance(c, int):
            parts.append(f"{c}*{_paren(s)}")
        else:
            parts.append(f"{_paren(size_name(c))}*{_paren(s)}")
    if not _is(form.const, 0) or not parts:
        parts.append(str(form.const) if isinstance(form.const, int) else _paren(size_name(form.const)))
    out = parts[0]
    for p in parts[1:]:
        out += f" - {p[1:]}" if p.startswith("-") else f" + {p}"
    return out


def _size_source(expr) -> str:
    return str(expr)


def _render_atom(atom, names, floordiv, size_name) -> str:
    if isinstance(atom, Sym):
        return atom.name
    op = floordiv if atom.op == "//" else atom.op
    d = str(atom.d) if isinstance(atom.d, int) else _paren(size_name(atom.d))
    return f"{_paren(render(atom.arg, names, floordiv, size_name))} {op} {d}"


def _paren(s: str) -> str:
    return s if s.isidentifier() or s.lstrip("-").isdigit() else f"({s})"


def evaluate(form: Index, env: dict):
    """Evaluate with tensors or ints bound to symbol names (used by the torch ops handler;
    symbolic sizes read their symbols' values from env too)."""
    total = _size_value(form.const, env)
    for atom, c in form.terms:
        total = total + _size_value(c, env) * _eval_atom(atom, env)
    return total


def _size_value(x, env):
    if isinstance(x, int):
        return x
    return int(x.xreplace({s: env[str(s)] for s in x.free_symbols}))


def _eval_atom(atom, env):
    if isinstance(atom, Sym):
        return env[atom.name]
    v = evaluate(atom.arg, env)
    d = _size_value(atom.d, env)
    return v // d if atom.op == "//" else v % d
