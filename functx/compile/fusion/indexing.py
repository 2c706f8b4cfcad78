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
"""
from __future__ import annotations

import math
from functools import reduce


class Sym:
    """A loop symbol with values in [0, size)."""
    __slots__ = ("name", "size")

    def __init__(self, name: str, size: int):
        self.name, self.size = name, size

    def key(self):
        return ("sym", self.name)

    def range(self):
        return 0, max(self.size - 1, 0)

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
        if self.op == "//":
            return lo // self.d, hi // self.d
        return (lo, hi) if 0 <= lo and hi < self.d else (0, self.d - 1)

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
        self.terms = tuple(sorted(((atoms[k], c) for k, c in merged.items() if c != 0),
                                  key=lambda t: repr(t[0].key())))
        self.const = const
        self._key = (tuple((a.key(), c) for a, c in self.terms), const)

    # -- construction
    @staticmethod
    def of(x) -> "Index":
        if isinstance(x, Index):
            return x
        if isinstance(x, int) or (isinstance(x, Sym) and x.size <= 1):
            return Index((), x if isinstance(x, int) else 0)
        return Index(((x, 1),), 0)

    def __add__(self, other):
        o = Index.of(other)
        return _combine(Index(self.terms + o.terms, self.const + o.const))

    __radd__ = __add__

    def __sub__(self, other):
        return self + Index.of(other) * -1

    def __rsub__(self, other):
        return Index.of(other) + self * -1

    def __mul__(self, c: int):
        if not isinstance(c, int):
            raise TypeError("index expressions are linear: multiply by a Python int only")
        if c == 0:
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
            lo += min(c * a, c * b)
            hi += max(c * a, c * b)
        return lo, hi

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


def _div(form: Index, d: int, op: str) -> Index:
    if d <= 0:
        raise ValueError("index division by a non-positive constant")
    if d == 1:
        return form if op == "//" else Index()
    # Split off the part that is an exact multiple of d: (q*d + r) // d = q + r // d.
    q_terms, r_terms = [], []
    for atom, c in form.terms:
        (q_terms if c % d == 0 else r_terms).append((atom, c))
    qc, rc = divmod(form.const, d)
    rest = Index(r_terms, rc)
    lo, hi = rest.range()
    if lo < 0:       # keep every operand of // and % non-negative (Triton truncates)
        qc, rest = 0, Index(r_terms, form.const)
        lo, hi = rest.range()
        if lo < 0:
            q_terms, rest = [], form
            lo, hi = rest.range()
    in_range = 0 <= lo and hi < d
    if op == "%":
        if in_range:
            return rest
        return Index(((_Div("%", rest, d), 1),))
    quotient = Index(tuple((a, c // d) for a, c in q_terms), qc)
    if in_range:
        return quotient
    if rest.const == 0 and len(rest.terms) == 1 and rest.terms[0][1] == 1 and \
            isinstance(rest.terms[0][0], _Div) and rest.terms[0][0].op == "//":
        inner = rest.terms[0][0]           # (e // a) // d = e // (a*d)
        return quotient + Index(((_Div("//", inner.arg, inner.d * d), 1),))
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
            partner = _Div("//", base, a * m)
            pk = partner.key()
            if pk in terms and terms[pk][1] == c * m:
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


def numel(shape) -> int:
    return math.prod(shape)


# ---------------------------------------------------------------- rendering

def render(form: Index, names=None, floordiv="//") -> str:
    """Python/Triton source for a form (C with floordiv="/": the operands are
    non-negative, so truncation is floor); `names` maps atom keys to temporaries."""
    names = names or {}
    parts = []
    for atom, c in form.terms:
        s = names.get(atom.key()) or _render_atom(atom, names, floordiv)
        if c == 1:
            parts.append(s)
        elif c == -1:
            parts.append(f"-{_paren(s)}")
        else:
            parts.append(f"{c}*{_paren(s)}")
    if form.const or not parts:
        parts.append(str(form.const))
    out = parts[0]
    for p in parts[1:]:
        out += f" - {p[1:]}" if p.startswith("-") else f" + {p}"
    return out


def _render_atom(atom, names, floordiv) -> str:
    if isinstance(atom, Sym):
        return atom.name
    op = floordiv if atom.op == "//" else atom.op
    return f"{_paren(render(atom.arg, names, floordiv))} {op} {atom.d}"


def _paren(s: str) -> str:
    return s if s.isidentifier() or s.lstrip("-").isdigit() else f"({s})"


def evaluate(form: Index, env: dict):
    """Evaluate with tensors or ints bound to symbol names (used by the torch ops handler)."""
    total = form.const
    for atom, c in form.terms:
        total = total + c * _eval_atom(atom, env)
    return total


def _eval_atom(atom, env):
    if isinstance(atom, Sym):
        return env[atom.name]
    v = evaluate(atom.arg, env)
    return v // atom.d if atom.op == "//" else v % atom.d
