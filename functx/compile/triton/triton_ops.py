"""TritonOps: the ops handler that prints a Triton kernel.

Each operation becomes one `tmpN = ...` line, deduplicated by its text (CSE). Values that
depend only on xindex and no reduction are hoisted to the kernel's prelude, so a looped
reduction loads a per-row operand once, not once per pass. Half types are computed in
float32 (loads upcast, stores round, converts to a half type round-trip), as Inductor does.
"""
from __future__ import annotations

import contextlib
import math

import torch

from ..fusion.indexing import Index, render, size_of, sympy
from ..symbolic import is_symbolic
from ..fusion.printer import KernelPrinter
from ..fusion.scheduler import lowerable as fusion_lowerable

TL_DTYPES = {
    torch.float32: "tl.float32", torch.float16: "tl.float16", torch.bfloat16: "tl.bfloat16",
    torch.float64: "tl.float64", torch.int64: "tl.int64", torch.int32: "tl.int32",
    torch.int16: "tl.int16", torch.int8: "tl.int8", torch.uint8: "tl.uint8", torch.bool: "tl.int1",
}
HALF = (torch.float16, torch.bfloat16)


def lowerable(eqn) -> str | None:
    """None if eqn can be a node of a Triton kernel, else why it runs as an extern."""
    return fusion_lowerable(eqn, TL_DTYPES, lambda e: e.prim.triton_lowering(e), "Triton")


def tl_dtype(dtype) -> str:
    if dtype not in TL_DTYPES:
        raise NotImplementedError(f"the Triton backend has no {dtype} support")
    return TL_DTYPES[dtype]


def compute_dtype(dtype):
    return torch.float32 if dtype in HALF else dtype


class TVal:
    """A value in the kernel: its source text, functx dtype, the block axes it varies
    along ('x', 'r'), and whether it can live in the prelude."""
    __slots__ = ("expr", "dtype", "dims", "hoist")

    def __init__(self, expr, dtype, dims=frozenset(), hoist=True):
        self.expr, self.dtype, self.dims, self.hoist = expr, dtype, frozenset(dims), hoist

    def __repr__(self):
        return self.expr


def literal_source(value, dtype) -> str:
    if dtype == torch.bool:
        return repr(bool(value))
    if dtype.is_floating_point:
        value = float(value)
        if math.isnan(value):
            return 'float("nan")'
        if math.isinf(value):
            return 'float("inf")' if value > 0 else 'float("-inf")'
        return repr(value)
    return repr(int(value))


REDUCE_FN = {"add": "tl.sum", "max": "tl.max", "min": "tl.min"}
# Floating max/min propagate NaN, as torch's do (tl.max/tl.maximum drop it by default).
NAN_PROPAGATING = {"max": "tl.maximum({0}, {1}, propagate_nan=tl.PropagateNan.ALL)",
                   "min": "tl.minimum({0}, {1}, propagate_nan=tl.PropagateNan.ALL)"}
ACC_UPDATE = {"add": "{0} + {1}", "mul": "{0} * {1}", "max": "tl.maximum({0}, {1})",
              "min": "tl.minimum({0}, {1})"}


def identity(combine, dtype) -> str:
    if combine == "add":
        return literal_source(0, dtype)
    if combine == "mul":
        return literal_source(1, dtype)
    if dtype.is_floating_point:
        return 'float("-inf")' if combine == "max" else 'float("inf")'
    info = torch.iinfo(dtype)
    return str(info.min if combine == "max" else info.max)


def _integral(expr):
    """An int-valued sympy expression equal to the float-valued size expression `expr`
    (`ToFloat(n)`, `Max(0.0, ToFloat(n - 1))`: var's divisor), or None."""
    name = type(expr).__name__
    if name == "ToFloat":
        return expr.args[0]
    if expr.is_Number:
        return sympy.Integer(int(expr)) if float(expr) == int(expr) else None
    if name in ("Max", "Min") or expr.is_Add or expr.is_Mul:
        args = [_integral(a) for a in expr.args]
        return None if any(a is None for a in args) else expr.func(*args)
    return None


class TritonOps(KernelPrinter):
    def __init__(self, name: str, xnumel: int, rnumel: int, persistent: bool):
        super().__init__(name)
        self.is_reduction = None          # set by the owner: the plan has reductions
        self.persistent = persistent
        self.loop_depth = 0
        self.helpers: set[str] = set()

    # ------------------------------------------------------------ plumbing
    def _new(self, expr, dtype, dims, hoist):
        hit = self._cached(expr)
        if hit is not None:
            return hit
        name = self._fresh_name()
        return self._place(expr, f"{name} = {expr}", TVal(name, dtype, dims, hoist), hoist, dims)

    def _index(self, index: Index):
        syms = index.symbols()
        dims = {"x" for s in syms if s == "xindex"} | {"r" for s in syms if s == "rindex"}
        return render(index, size_name=self.size_arg), frozenset(dims)

    def _mask(self, dims):
        masks = [m for d, m in (("x", "xmask"), ("r", "rmask")) if d in dims]
        return " & ".join(masks) if masks else None

    def _block(self, dims):
        if self.is_reduction:
            return "[XBLOCK, RBLOCK]" if "r" in dims else "[XBLOCK, 1]"
        return "[XBLOCK]"

    def _broadcast(self, v: TVal, dims) -> str:
        if v.dims >= set(dims):
            return v.expr
        if not v.dims and not v.expr.startswith("tmp"):
            return f"tl.full({self._block(dims)}, {v.expr}, {tl_dtype(compute_dtype(v.dtype))})"
        return f"tl.broadcast_to({v.expr}, {self._block(dims)})"

    # ------------------------------------------------------------ ops
    def load(self, buffer, index, dtype):
        arg = self.in_args.setdefault(buffer, f"in_ptr{len(self.in_args)}")
        text, dims = self._index(index)
        mask = self._mask(dims)
        expr = f"tl.load({arg} + ({text})" + (f", {mask}, other=0)" if mask else ")")
        if dtype in HALF:
            expr += ".to(tl.float32)"
        return self._new(expr, dtype, dims, hoist=("r" not in dims))

    def constant(self, value, dtype):
        cd = compute_dtype(dtype)
        if is_symbolic(value):       # a size (x.shape[0], a mean's count) read at run time
            return self._new(f"{self._symbolic_constant(value, cd)}", dtype, (), True)
        src = literal_source(value, cd)
        if cd == torch.float64 and math.isfinite(float(value)):
            # a block of the kernel's rank: a [1] among 2-d reduction values cannot broadcast
            shape = "[1, 1]" if self.is_reduction else "[1]"
            return self._new(f"tl.full({shape}, {src}, tl.float64)", dtype, (), True)
        return TVal(src, dtype)

    def _symbolic_constant(self, value, cd):
        """A block of the kernel's rank holding a symbolic value, passed as an int argument
        (exact) where it is one; a float-valued one only in float32 (Triton's float argument)."""
        expr = value.node.expr
        if isinstance(value, torch.SymFloat):
            integral = _integral(expr)
            if integral is not None:       # float(n) of an int size (a mean's count): pass n, exactly
                expr = size_of(integral)
            elif cd != torch.float32:
                raise NotImplementedError(f"the symbolic value {value} as a {cd} constant (a Triton "
                                          "scalar argument is float32)")
            else:
                expr = ("float", expr)
        elif isinstance(value, torch.SymBool):
            raise NotImplementedError(f"a symbolic boolean constant {value}")
        else:
            expr = size_of(value)
        shape = "[1, 1]" if self.is_reduction else "[1]"
        return f"tl.full({shape}, {self.size_arg(expr)}, {tl_dtype(cd)})"

    def index_value(self, index, dtype):
        text, dims = self._index(index)
        return self._new(f"({text}).to({tl_dtype(compute_dtype(dtype))})", dtype, dims, "r" not in dims)

    def pointwise(self, eqn, args):
        prim, dtype = eqn.prim, eqn.outputs[0].type.dtype
        if prim.name == "convert_element_type":     # half types and bools round specially
            (x,) = args
            return self._new(self._convert(x, dtype), dtype, x.dims, x.hoist)
        out = self._from_template(prim.triton_lowering(eqn), args, dtype, eqn.params, TVal)
        if dtype == torch.bool and not out.dims and any(getattr(a, "dtype", torch.bool) != torch.bool for a in args):
            # A comparison of 0-d values: the Triton interpreter holds it as floats, and a
            # bitwise op with a block then fails in numpy; `!= 0` makes it a bool there (the
            # compiler folds it away).
            return self._new(f"({out.expr} != 0)", dtype, out.dims, out.hoist)
        return out

    def _convert(self, v, dtype):
        src, dst = compute_dtype(v.dtype), compute_dtype(dtype)
        if dtype == torch.bool:
            return f"({v.expr} != 0)"
        if dtype in HALF:       # round to the half type, keep computing in float32
            return f"{v.expr}.to({tl_dtype(dtype)}).to(tl.float32)"
        if src == dst:
            return v.expr
        return f"{v.expr}.to({tl_dtype(dst)})"

    def reduction(self, combine, value, dtype):
        acc_dtype = compute_dtype(dtype)
        if dtype == torch.bool:
            acc_dtype = torch.int32
        v = value.expr if compute_dtype(value.dtype) == acc_dtype else f"{value.expr}.to({tl_dtype(acc_dtype)})"
        full = self._broadcast(TVal(v, value.dtype, value.dims, value.hoist), {"x", "r"})
        ident = identity(combine, acc_dtype)
        name = f"tmp{self.counter}"
        self.counter += 1
        if self.persistent:
            masked = f"tl.where(xmask & rmask, {full}, {ident})"
            self.out.append(f"{name} = {self._finish(combine, masked, acc_dtype)}")
        else:
            acc = f"_acc{name[3:]}"
            self.loop_inits.append(f"{acc} = tl.full([XBLOCK, RBLOCK], {ident}, {tl_dtype(acc_dtype)})")
            update = (NAN_PROPAGATING if combine in NAN_PROPAGATING and acc_dtype.is_floating_point
                      else ACC_UPDATE)[combine]
            self.out.append(f"{acc} = tl.where(xmask & rmask, {update.format(acc, full)}, {acc})")
            self.loop_finals.append(f"{name} = {self._finish(combine, acc, acc_dtype)}")
        if dtype == torch.bool:
            self.loop_finals.append(f"{name} = {name} != 0") if not self.persistent else \
                self.out.append(f"{name} = {name} != 0")
        return TVal(name, dtype, {"x"}, hoist=False)

    def _finish(self, combine, block, acc_dtype):
        if combine == "mul" or (combine in NAN_PROPAGATING and acc_dtype.is_floating_point):
            self.helpers.add(combine)
            return f"tl.reduce({block}, 1, _{combine}_combine)[:, None]"
        return f"{REDUCE_FN[combine]}({block}, 1)[:, None]"

    def store(self, buffer, index, value, dtype):
        arg = self.out_args.setdefault(buffer, f"out_ptr{len(self.out_args)}")
        text, dims = self._index(index)
        if "x" not in dims:     # a single-row kernel: give the pointer the block's shape
            dims = dims | {"x"}
            text = f"{text} + tl.zeros({self._block(dims)}, tl.int32)"
        v = self._broadcast(value, dims)
        if dtype in HALF or compute_dtype(value.dtype) != dtype:
            v = f"{v}.to({tl_dtype(dtype)})"
        self.out.append(f"tl.store({arg} + ({text}), {v}, {self._mask(dims)})")

    @contextlib.contextmanager
    def rloop(self):
        outer, self.out = self.out, []
        self.cache.append({})
        self.loop_inits, self.loop_finals = [], []
        try:
            yield
        finally:
            body, self.out = self.out, outer
            self.cache.pop()
            self.out.extend(self.loop_inits)
            self.out.append("for roffset in range(0, rnumel, RBLOCK):")
            self.out.append("    rindex = roffset + tl.arange(0, RBLOCK)[None, :]")
            self.out.append("    rmask = rindex < rnumel")
            self.out.extend("    " + line for line in body)
            self.out.extend(self.loop_finals)

    # ------------------------------------------------------------ the kernel text
    def source(self, arg_order) -> str:
        """arg_order: (input buffers, output buffers) in the order the wrapper passes them."""
        ins, outs = arg_order
        args = [self.in_args[b] for b in ins] + [self.out_args[b] for b in outs] + list(self.size_args.values())
        if self.is_reduction:
            args += ["xnumel", "rnumel", "XBLOCK: tl.constexpr", "RBLOCK: tl.constexpr"]
        else:
            args += ["xnumel", "XBLOCK: tl.constexpr"]
        lines = ["@triton.jit", f"def {self.name}({', '.join(args)}):"]
        head = ["xoffset = tl.program_id(0) * XBLOCK"]
        if self.is_reduction:
            head += ["xindex = xoffset + tl.arange(0, XBLOCK)[:, None]", "xmask = xindex < xnumel"]
            if self.persistent:
                head += ["rindex = tl.arange(0, RBLOCK)[None, :]", "rmask = rindex < rnumel"]
        else:
            head += ["xindex = xoffset + tl.arange(0, XBLOCK)", "xmask = xindex < xnumel"]
        lines += ["    " + l for l in head + self.prelude + self.body]
        helpers = []
        for combine in sorted(self.helpers):
            body = "a * b" if combine == "mul" else NAN_PROPAGATING[combine].format("a", "b")
            helpers += ["@triton.jit", f"def _{combine}_combine(a, b):", f"    return {body}", "", ""]
        return "\n".join(helpers + lines) + "\n"
