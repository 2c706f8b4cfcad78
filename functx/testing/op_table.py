"""The op table random programs draw from: each entry writes one line of PyTorch for the
tensors a program holds so far (their real shapes and dtypes, so most lines are valid;
strategies.py runs each line eagerly and drops the ones eager PyTorch rejects).

An entry is `(name, families, build)`: `build(draw, ctx)` returns a source line
(`v3 = torch.amax(v1, dim=(0,), keepdim=True)` or a statement such as `v2[::2] = v0`),
or raises `Skip` when nothing in the program suits it."""
from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

__all__ = ["OPS", "Skip", "Context", "DIFFERENTIABLE"]


class Skip(Exception):
    """This op has no suitable operand in the current program."""


def _kind(t):
    if t.dtype == torch.bool:
        return "bool"
    return "float" if t.dtype.is_floating_point else "int"


class Context:
    """The program under construction: eager values of its variables (in order) and which
    of them share storage with an input (never written: programs don't mutate arguments)."""

    def __init__(self, inputs, special=True):
        self.values = {f"x{i}": x for i, x in enumerate(inputs)}
        self.special = special
        self.n_new = 0

    def fresh(self):
        name = f"v{self.n_new}"
        self.n_new += 1
        return name

    def input_storages(self):
        return {x.untyped_storage().data_ptr() for n, x in self.values.items() if n.startswith("x")}

    def pick(self, draw, kinds=("float", "int", "bool"), min_rank=0, nonempty=False, writable=False,
             where=None):
        inputs = self.input_storages() if writable else set()
        names = [n for n, t in self.values.items()
                 if _kind(t) in kinds and t.dim() >= min_rank and (not nonempty or t.numel() > 0)
                 and not (writable and (n.startswith("x") or t.untyped_storage().data_ptr() in inputs))
                 and (where is None or where(t))]
        if not names:
            raise Skip
        return draw(st.sampled_from(names))

    def partner(self, draw, name, kinds=("float", "int", "bool")):
        """A variable broadcastable with `name` (possibly itself)."""
        shape = self.values[name].shape

        def fits(t):
            try:
                torch.broadcast_shapes(shape, t.shape)
                return True
            except RuntimeError:
                return False
        return self.pick(draw, kinds, where=fits)

    def dim(self, draw, name, negative=True):
        n = self.values[name].dim()
        if n == 0:
            raise Skip
        d = draw(st.integers(0, n - 1))
        return d - n if negative and draw(st.booleans()) else d


# ---------------------------------------------------------------- helpers for literals

def _scalar(draw, ctx, kind="float"):
    if kind == "int":
        return repr(draw(st.integers(-3, 3)))
    if kind == "bool":
        return repr(draw(st.booleans()))
    specials = ["nan", "inf", "-inf", "-0.0"] if ctx.special else []
    return draw(st.sampled_from(["0.5", "2.0", "-1.5", "3", "0.0", "1"] + specials))


def _index_literal(draw, shape, high, low=0):
    n = math.prod(shape)
    values = draw(st.lists(st.integers(low, high - 1), min_size=n, max_size=n))
    src = f"torch.tensor({values}, dtype=torch.int64)"
    return src if len(shape) == 1 else f"{src}.reshape({tuple(shape)})"


def _unique_index_literal(draw, size, n, negative=True):
    values = draw(st.permutations(range(size)))[:n]
    if negative:
        values = [v - size if draw(st.booleans()) else v for v in values]
    return f"torch.tensor({list(values)}, dtype=torch.int64)"


def _slice(draw, size):
    start = draw(st.sampled_from([None, 0, 1, -1, -2]))
    stop = draw(st.sampled_from([None, size, 1, -1, 2 * size + 1]))
    step = draw(st.sampled_from([None, 1, 2, 3]))
    parts = ["" if start is None else str(start), "" if stop is None else str(stop)]
    return ":".join(parts) + ("" if step is None else f":{step}")


def _subscript(draw, t, allow_int=True):
    """A basic-indexing subscript for t: slices with steps, integers, None, Ellipsis."""
    items = []
    for size in t.shape[:draw(st.integers(0, t.dim()))]:
        choice = draw(st.sampled_from(["slice", "slice", "int", "none"] if allow_int and size else ["slice"]))
        if choice == "int":
            items.append(str(draw(st.integers(-size, size - 1))))
        elif choice == "none":
            items.append("None")
        else:
            items.append(_slice(draw, size))
    if draw(st.booleans()) and len(items) < t.dim():
        items.insert(0, "...")
    return ", ".join(items) if items else "..."


def _assign(ctx, expr):
    name = ctx.fresh()
    return f"{name} = {expr}"


# ---------------------------------------------------------------- elementwise

UNARY_FLOAT = ["exp", "log", "sqrt", "sin", "cos", "tanh", "sigmoid", "reciprocal", "rsqrt", "expm1",
               "log1p", "erf", "atan", "asin", "sinh", "exp2", "log2", "square", "frac"]
UNARY_ANY = ["neg", "abs", "relu", "floor", "ceil", "round", "trunc", "sign"]
BINARY = ["add", "sub", "mul", "div", "maximum", "minimum", "fmax", "fmin", "atan2", "pow", "hypot",
          "copysign", "remainder", "fmod", "floor_divide", "eq", "ne", "lt", "le", "gt", "ge",
          "logical_and", "logical_or", "logical_xor", "xlogy"]
OPERATORS = ["+", "-", "*", "/", "**", "//", "%", "<", ">=", "==", "&", "|"]


def unary(draw, ctx):
    name = draw(st.sampled_from(UNARY_FLOAT + UNARY_ANY))
    a = ctx.pick(draw, ("float",) if name in UNARY_FLOAT else ("float", "int"))
    return _assign(ctx, f"torch.{name}({a})")


def unary_nn(draw, ctx):
    a = ctx.pick(draw, ("float",))
    expr = draw(st.sampled_from([f"F.softplus({a})", f"F.gelu({a})", f"F.silu({a})", f"F.elu({a})",
                                 f"F.leaky_relu({a}, 0.1)", f"torch.nan_to_num({a})",
                                 f"F.hardtanh({a})", f"torch.logit({a}.sigmoid())"]))
    return _assign(ctx, expr)


def int_unary(draw, ctx):
    a = ctx.pick(draw, ("int", "bool"))
    return _assign(ctx, draw(st.sampled_from([f"torch.bitwise_not({a})", f"torch.logical_not({a})",
                                              f"{a}.to(torch.float32)", f"{a}.double()"])))


def binary(draw, ctx):
    name = draw(st.sampled_from(BINARY))
    a = ctx.pick(draw)
    b = ctx.partner(draw, a) if draw(st.integers(0, 3)) else _scalar(draw, ctx, _kind(ctx.values[a]))
    return _assign(ctx, f"torch.{name}({a}, {b})")


def operator(draw, ctx):
    op = draw(st.sampled_from(OPERATORS))
    a = ctx.pick(draw)
    if draw(st.integers(0, 2)):
        b = ctx.partner(draw, a)
    else:
        b = _scalar(draw, ctx, draw(st.sampled_from(["float", "int", "bool"])))
    return _assign(ctx, f"({b} {op} {a})" if draw(st.booleans()) else f"({a} {op} {b})")


def where(draw, ctx):
    a = ctx.pick(draw, ("float", "int"))
    b = ctx.partner(draw, a, ("float", "int"))
    c = ctx.partner(draw, a)
    cond = f"{c}" if _kind(ctx.values[c]) == "bool" else f"({c} > 0)"
    return _assign(ctx, f"torch.where({cond}, {a}, {b})")


def clamp(draw, ctx):
    a = ctx.pick(draw, ("float", "int"))
    lo = draw(st.sampled_from(["None", "-1", "-0.5", "0"]))
    hi = draw(st.sampled_from(["None", "1", "0.5", "2"]))
    if lo == hi == "None":
        lo = "0"
    if draw(st.integers(0, 3)) == 0:
        # A tensor bound, the other None: with a number, torch would take the tensor as a
        # Scalar (.item(), data-dependent, which jit rightly refuses).
        lo, hi = ctx.partner(draw, a, ("float", "int")), "None"
    return _assign(ctx, f"torch.clamp({a}, {lo}, {hi})")


def convert(draw, ctx):
    a = ctx.pick(draw)
    dtype = draw(st.sampled_from(["torch.float32", "torch.float64", "torch.int64", "torch.bool"]))
    return _assign(ctx, f"{a}.to({dtype})")


# ---------------------------------------------------------------- reductions

def _dims(draw, ctx, a):
    n = ctx.values[a].dim()
    if n == 0:
        return None
    dims = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    return tuple(d - n if draw(st.booleans()) else d for d in dims)


def reduction(draw, ctx):
    name = draw(st.sampled_from(["sum", "mean", "amax", "amin", "logsumexp", "var", "std", "nansum",
                                 "norm", "all", "any", "count_nonzero"]))
    a = ctx.pick(draw, ("float",) if name in ("mean", "logsumexp", "var", "std", "norm") else
                 ("float", "int", "bool"))
    dims = _dims(draw, ctx, a)
    keep = draw(st.booleans())
    if name == "count_nonzero":
        return _assign(ctx, f"torch.count_nonzero({a}, dim={dims})")
    if name in ("all", "any"):
        d = "" if dims is None or len(dims) > 1 else f", dim={dims[0]}, keepdim={keep}"
        return _assign(ctx, f"torch.{name}({a}{d})")
    extra = ""
    if name in ("var", "std"):
        extra = f", correction={draw(st.sampled_from([0, 1]))}"
    if name == "norm":
        extra = f", p={draw(st.sampled_from(['2', '1', 'inf', '3']))}"
    if dims is None:
        if name == "logsumexp":
            dims = ()
        else:
            return _assign(ctx, f"torch.{name}({a}{extra})")
    if name == "logsumexp" and not dims:
        raise Skip
    return _assign(ctx, f"torch.{name}({a}, dim={dims}, keepdim={keep}{extra})")


def reduction_one_dim(draw, ctx):
    name = draw(st.sampled_from(["max", "min", "prod", "argmax", "argmin", "cumsum", "cumprod",
                                 "logcumsumexp", "cummax", "median", "softmax", "log_softmax"]))
    a = ctx.pick(draw, ("float",) if name in ("logcumsumexp", "softmax", "log_softmax") else
                 ("float", "int"), min_rank=1)
    d = ctx.dim(draw, a)
    keep = draw(st.booleans())
    if name in ("cumsum", "cumprod", "logcumsumexp", "softmax", "log_softmax"):
        return _assign(ctx, f"torch.{name}({a}, dim={d})")
    if name == "cummax":
        return _assign(ctx, f"torch.cummax({a}, dim={d}).{draw(st.sampled_from(['values', 'indices']))}")
    if name in ("max", "min", "median"):
        part = draw(st.sampled_from(["values", "indices"]))
        if draw(st.integers(0, 3)) == 0:
            return _assign(ctx, f"torch.{name}({a})")
        return _assign(ctx, f"torch.{name}({a}, dim={d}, keepdim={keep}).{part}")
    return _assign(ctx, f"torch.{name}({a}, dim={d}, keepdim={keep})")


# ---------------------------------------------------------------- views and shape ops

def _factor_shape(draw, numel):
    """A random shape with `numel` elements (rank 1-3), maybe with one -1."""
    if numel == 0:
        return draw(st.sampled_from([(0,), (0, 2), (2, 0), (-1,)]))
    dims, rest = [], numel
    for _ in range(draw(st.integers(0, 2))):
        divisors = [d for d in range(1, rest + 1) if rest % d == 0]
        d = draw(st.sampled_from(divisors))
        dims.append(d)
        rest //= d
    dims.append(rest)
    if draw(st.booleans()):
        dims[draw(st.integers(0, len(dims) - 1))] = -1
    return tuple(dims)


def view(draw, ctx):
    a = ctx.pick(draw)
    t = ctx.values[a]
    n = t.dim()
    kind = draw(st.sampled_from(["transpose", "permute", "reshape", "view", "subscript", "unsqueeze",
                                 "squeeze", "expand", "narrow", "select", "flatten", "movedim", "mT",
                                 "diagonal", "unflatten", "chunk", "split", "t", "contiguous", "flip",
                                 "clone", "roll", "repeat"]))
    if kind in ("reshape", "view"):
        return _assign(ctx, f"{a}.{kind}({_factor_shape(draw, t.numel())})")
    if kind == "subscript":
        return _assign(ctx, f"{a}[{_subscript(draw, t)}]")
    if kind == "unsqueeze":
        return _assign(ctx, f"{a}.unsqueeze({draw(st.integers(-n - 1, n))})")
    if kind == "squeeze":
        return _assign(ctx, f"{a}.squeeze()" if n == 0 or draw(st.booleans()) else
                       f"{a}.squeeze({ctx.dim(draw, a)})")
    if kind == "expand":
        sizes = [(draw(st.sampled_from([s, -1, 3])) if s == 1 else draw(st.sampled_from([s, -1])))
                 for s in t.shape]
        lead = draw(st.lists(st.sampled_from([1, 2]), max_size=1))
        return _assign(ctx, f"{a}.expand({tuple(lead + sizes)})")
    if kind == "flip":
        return _assign(ctx, f"{a}.flip({ctx.dim(draw, a)})")
    if kind == "roll":
        return _assign(ctx, f"{a}.roll({draw(st.integers(-2, 2))}, {ctx.dim(draw, a)})")
    if kind == "repeat":
        reps = tuple(draw(st.integers(1, 2)) for _ in range(n))
        return _assign(ctx, f"{a}.repeat({reps})" if reps else f"{a}.repeat(2)")
    if kind in ("contiguous", "clone"):
        return _assign(ctx, f"{a}.{kind}()")
    if kind == "t":
        return _assign(ctx, f"{a}.t()")
    if n == 0:
        raise Skip
    d = ctx.dim(draw, a)
    if kind == "transpose":
        return _assign(ctx, f"{a}.transpose({d}, {ctx.dim(draw, a)})")
    if kind == "permute":
        return _assign(ctx, f"{a}.permute({tuple(draw(st.permutations(range(n))))})")
    if kind == "narrow":
        size = t.shape[d]
        start = draw(st.integers(0, size))
        return _assign(ctx, f"{a}.narrow({d}, {start}, {draw(st.integers(0, size - start))})")
    if kind == "select":
        size = t.shape[d]
        return _assign(ctx, f"{a}.select({d}, {draw(st.integers(-size, size - 1)) if size else 0})")
    if kind == "flatten":
        return _assign(ctx, f"{a}.flatten({min(d % n, ctx.dim(draw, a) % n)}, {max(d % n, ctx.dim(draw, a) % n)})")
    if kind == "movedim":
        return _assign(ctx, f"torch.movedim({a}, {d}, {ctx.dim(draw, a)})")
    if kind == "mT":
        return _assign(ctx, f"{a}.mT")
    if kind == "diagonal":
        return _assign(ctx, f"{a}.diagonal({draw(st.integers(-1, 1))}, {d}, {ctx.dim(draw, a)})")
    if kind == "unflatten":
        size = t.shape[d]
        divisors = [k for k in range(1, size + 1) if size % k == 0] or [1]
        k = draw(st.sampled_from(divisors))
        return _assign(ctx, f"{a}.unflatten({d}, ({k}, -1))")
    k = draw(st.integers(1, 3))
    pieces = -(-t.shape[d] // k) if kind == "chunk" else -(-t.shape[d] // k)
    i = draw(st.integers(0, max(pieces - 1, 0)))
    return _assign(ctx, f"{a}.{kind}({k}, {d})[{i}]")


def join(draw, ctx):
    a = ctx.pick(draw, min_rank=1)
    t = ctx.values[a]
    b = ctx.pick(draw, where=lambda u: u.dim() == t.dim())
    d = ctx.dim(draw, a)
    fn = draw(st.sampled_from(["cat", "stack"]))
    return _assign(ctx, f"torch.{fn}([{a}, {b}], dim={d})")


def create(draw, ctx):
    a = ctx.pick(draw)
    return _assign(ctx, draw(st.sampled_from([
        f"torch.zeros_like({a})", f"torch.ones_like({a}, dtype=torch.float32)",
        f"torch.full_like({a}, {_scalar(draw, ctx, _kind(ctx.values[a]))})",
        # made from a traced input (new_zeros): functx refuses writes of traced values into a
        # plain tensor the function creates (docs/sharp_bits.md, section 4)
        f"torch.arange({ctx.values[a].numel()}, dtype=torch.float64).reshape({tuple(ctx.values[a].shape)})"
        f" + {a}.new_zeros((), dtype=torch.float64)",
        f"torch.empty_like({a}).fill_(2)"])))


# ---------------------------------------------------------------- indexing

def gather(draw, ctx):
    a = ctx.pick(draw, min_rank=1, nonempty=True)
    t = ctx.values[a]
    d = ctx.dim(draw, a)
    shape = [draw(st.integers(0, s)) for s in t.shape]
    shape[d % t.dim()] = draw(st.integers(0, 3))
    idx = _index_literal(draw, shape, t.shape[d])
    fn = draw(st.sampled_from(["gather", "take_along_dim"]))
    if fn == "gather":
        return _assign(ctx, f"torch.gather({a}, {d}, {idx})")
    full = list(t.shape)
    full[d % t.dim()] = shape[d % t.dim()]
    idx = _index_literal(draw, full, t.shape[d])
    return _assign(ctx, f"torch.take_along_dim({a}, {idx}, dim={d})")


def index(draw, ctx):
    a = ctx.pick(draw, min_rank=1, nonempty=True)
    t = ctx.values[a]
    d = ctx.dim(draw, a)
    size = t.shape[d]
    n = draw(st.integers(0, 4))
    kind = draw(st.sampled_from(["index_select", "subscript", "subscript2", "take"]))
    if kind == "index_select":
        return _assign(ctx, f"torch.index_select({a}, {d}, {_index_literal(draw, (n,), size)})")
    if kind == "take":
        return _assign(ctx, f"torch.take({a}, {_index_literal(draw, (n,), t.numel(), -t.numel())})")
    idx = _index_literal(draw, (n,), size, -size)
    if kind == "subscript" or t.dim() < 2:
        lead = ":, " * (d % t.dim())
        return _assign(ctx, f"{a}[{lead}{idx}]")
    idx2 = _index_literal(draw, (draw(st.sampled_from([1, n])),), t.shape[1], -t.shape[1]) if t.shape[1] else None
    if idx2 is None:
        raise Skip
    idx = _index_literal(draw, (n,), t.shape[0], -t.shape[0])
    return _assign(ctx, f"{a}[{idx}, {idx2}]")


def scatter_add(draw, ctx):
    a = ctx.pick(draw, ("float", "int"), min_rank=1, nonempty=True)
    t = ctx.values[a]
    d = ctx.dim(draw, a)
    src = ctx.pick(draw, where=lambda u: u.dim() == t.dim() and u.dtype == t.dtype)
    s = ctx.values[src]
    shape = [draw(st.integers(0, min(x, y))) for x, y in zip(t.shape, s.shape)]
    shape[d % t.dim()] = draw(st.integers(0, s.shape[d]))
    idx = _index_literal(draw, shape, t.shape[d])
    fn = draw(st.sampled_from(["scatter_add", "index_add"]))
    if fn == "index_add":
        n = s.shape[d]
        if n == 0 or s.shape[:d % t.dim()] + s.shape[d % t.dim() + 1:] != t.shape[:d % t.dim()] + t.shape[d % t.dim() + 1:]:
            raise Skip
        return _assign(ctx, f"torch.index_add({a}, {d}, {_index_literal(draw, (n,), t.shape[d])}, {src})")
    return _assign(ctx, f"torch.scatter_add({a}, {d}, {idx}, {src})")


# ---------------------------------------------------------------- in-place writes

def _destination(draw, ctx):
    """A writable variable, written whole or through a view expression."""
    a = ctx.pick(draw, writable=True)
    t = ctx.values[a]
    how = draw(st.sampled_from(["whole", "whole", "subscript", "transpose", "select", "diagonal"]))
    if how == "subscript" and t.dim():
        return f"{a}[{_subscript(draw, t)}]", a
    if how == "transpose" and t.dim() >= 2:
        return f"{a}.transpose(0, -1)", a
    if how == "select" and t.dim() and t.shape[0]:
        return f"{a}.select(0, {draw(st.integers(0, t.shape[0] - 1))})", a
    if how == "diagonal" and t.dim() >= 2:
        return f"{a}.diagonal()", a
    return a, a


def _source(draw, ctx, dest_name):
    """A tensor or scalar to write; never one sharing storage with the destination, whose
    result eager PyTorch leaves to its iteration order (it rejects some of those, not all)."""
    storage = ctx.values[dest_name].untyped_storage().data_ptr()
    if draw(st.booleans()):
        return _scalar(draw, ctx, _kind(ctx.values[dest_name]))
    return ctx.pick(draw, where=lambda u: u.untyped_storage().data_ptr() != storage or u.numel() == 0)


def inplace(draw, ctx):
    dest, name = _destination(draw, ctx)
    kind = draw(st.sampled_from(["add_", "sub_", "mul_", "div_", "copy_", "clamp_", "fill_", "zero_",
                                 "setitem", "masked_fill_", "index_put_", "relu_", "neg_"]))
    if kind in ("zero_", "relu_", "neg_"):
        return f"{dest}.{kind}()"
    if kind == "fill_":
        return f"{dest}.fill_({_scalar(draw, ctx, _kind(ctx.values[name]))})"
    if kind == "clamp_":
        return f"{dest}.clamp_({draw(st.sampled_from(['-1', '0', 'None']))}, {draw(st.sampled_from(['1', '0.5']))})"
    if kind == "masked_fill_":
        mask = ctx.partner(draw, name)
        cond = mask if _kind(ctx.values[mask]) == "bool" else f"({mask} < 0)"
        return f"{dest}.masked_fill_({cond}, {_scalar(draw, ctx, _kind(ctx.values[name]))})"
    t = ctx.values[name]
    if kind == "index_put_":
        if not t.dim() or not t.shape[0]:
            raise Skip
        accumulate = draw(st.booleans())
        n = draw(st.integers(0, t.shape[0]))
        idx = (_index_literal(draw, (n,), t.shape[0]) if accumulate
               else _unique_index_literal(draw, t.shape[0], n))
        value = _source(draw, ctx, name)
        if not value[0].isalpha():
            value = f"torch.tensor({value}, dtype={t.dtype})"
        return f"{name}.index_put_(({idx},), {value}, accumulate={accumulate})"
    src = _source(draw, ctx, name)
    if kind == "setitem":
        return f"{name}[{_subscript(draw, t)}] = {src}"
    if kind == "copy_" and not src[0].isalpha():
        src = f"torch.tensor({src})"
    return f"{dest}.{kind}({src})"


# (name, weight, build, differentiable): the differentiable subset is what grad/jvp/vjp checks use.
OPS = [
    ("unary", 3, unary, True), ("unary_nn", 1, unary_nn, True), ("int_unary", 1, int_unary, False),
    ("binary", 3, binary, True), ("operator", 2, operator, True), ("where", 1, where, True),
    ("clamp", 1, clamp, True), ("convert", 1, convert, False), ("reduction", 2, reduction, True),
    ("reduction_one_dim", 2, reduction_one_dim, True), ("view", 4, view, True), ("join", 1, join, True),
    ("create", 1, create, True), ("gather", 1, gather, True), ("index", 1, index, True),
    ("scatter_add", 1, scatter_add, True), ("inplace", 3, inplace, True),
]
DIFFERENTIABLE = [op for op in OPS if op[3]]
