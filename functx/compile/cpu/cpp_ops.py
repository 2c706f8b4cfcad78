"""CppOps: the ops handler that prints one fusion group as a C++ loop nest.

    extern "C" void k0_red_...(const float* __restrict__ in_ptr0, float* __restrict__ out_ptr0,
                               int nthreads) {
      #pragma omp parallel for num_threads(nthreads) if(...)
      for (int64_t xindex = 0; xindex < XNUMEL; ++xindex) {
        ...x-only values...
        for (int64_t rindex = 0; rindex < RNUMEL; ++rindex) { ...one stage... }
        ...
      }
    }

Every reduction stage is one loop over rindex (the plans are always "looped"); a value
that does not depend on rindex is computed before the loop. Each operation becomes one
typed `const T tmpN = ...;` (so C's integer promotions never leak into a result:
`bool + bool` is stored as a bool, int32 products wrap in int32), deduplicated by its text.
Primitive expressions come from `prim.cpp_lowering(eqn)` (written next to each primitive
in functx/prims); the fx_* helpers they use are defined in HEADER. float32 sums and
products accumulate in double (at least as accurate as torch's pairwise float sums),
integer ones in int64 (torch's sum/prod dtype), then round to the result's dtype.
"""
from __future__ import annotations

import contextlib
import math

import torch

from ...core.primitive import Unsupported
from ..fusion.indexing import Index, render
from ..fusion.scheduler import lowerable as fusion_lowerable

CTYPES = {torch.float32: "float", torch.float64: "double", torch.int32: "int32_t",
          torch.int64: "int64_t", torch.bool: "bool"}

PARALLEL_MIN = 1 << 15      # elements of work below which a kernel runs on one thread

# The C math library's functions are declared here, not through <math.h>: in C++ that
# header costs g++ 0.6 s per compile (it pulls in <cmath>); g++ knows them as builtins.
_UNARY = ("exp exp2 log log1p expm1 sin cos tan tanh asin acos atan sinh cosh asinh acosh "
          "atanh sqrt erf floor ceil trunc nearbyint fabs").split()
_LIBM = "".join(f'extern "C" float {n}f(float);\nextern "C" double {n}(double);\n' for n in _UNARY) + \
    "".join(f'extern "C" float {n}f(float, float);\nextern "C" double {n}(double, double);\n'
            for n in ("atan2", "fmod", "pow")) + \
    'extern "C" float lgammaf_r(float, int*);\nextern "C" double lgamma_r(double, int*);\n'

HEADER = "#include <stdint.h>\n" + _LIBM + r"""#define NAN __builtin_nan("")
#define INFINITY __builtin_inff()

// NaN-propagating max/min, as torch.maximum/minimum and amax/amin.
static inline float fx_max(float a, float b) { return a != a ? a : b != b ? b : (a > b ? a : b); }
static inline double fx_max(double a, double b) { return a != a ? a : b != b ? b : (a > b ? a : b); }
static inline float fx_min(float a, float b) { return a != a ? a : b != b ? b : (a < b ? a : b); }
static inline double fx_min(double a, double b) { return a != a ? a : b != b ? b : (a < b ? a : b); }
template <class T> static inline T fx_max(T a, T b) { return a > b ? a : b; }
template <class T> static inline T fx_min(T a, T b) { return a < b ? a : b; }
static inline float fx_abs(float a) { return fabsf(a); }
static inline double fx_abs(double a) { return fabs(a); }
template <class T> static inline T fx_abs(T a) { return a < 0 ? -a : a; }
// torch.sign: 0 for NaN and for both zeros.
template <class T> static inline T fx_sign(T a) { return (T)((a > 0) - (a < 0)); }
// lgamma_r: lgamma writes the global signgam, a data race under OpenMP.
static inline float fx_lgamma(float a) { int s; return lgammaf_r(a, &s); }
static inline double fx_lgamma(double a) { int s; return lgamma_r(a, &s); }
// torch.xlogy: NaN if y is NaN, else 0 where x == 0.
static inline float fx_xlogy(float x, float y) { return y != y ? y : x == 0 ? 0.0f : x * logf(y); }
static inline double fx_xlogy(double x, double y) { return y != y ? y : x == 0 ? 0.0 : x * log(y); }
"""


def ctype(dtype) -> str:
    if dtype not in CTYPES:
        raise NotImplementedError(f"the CPU backend has no {dtype} support")
    return CTYPES[dtype]


def lowerable(eqn) -> str | None:
    """None if eqn can be a node of a C++ kernel, else why it runs as an extern."""
    return fusion_lowerable(eqn, CTYPES, lambda e: e.prim.cpp_lowering(e), "C++")


def literal_source(value, dtype) -> str:
    """A C++ constant of exactly `dtype` (so `x * 0.1` stays float math on float32)."""
    if dtype == torch.bool:
        return "true" if value else "false"
    if dtype.is_floating_point:
        value = float(value)
        t = ctype(dtype)
        if math.isnan(value):
            return f"(({t})NAN)"
        if math.isinf(value):
            return f"(({t})INFINITY)" if value > 0 else f"(-({t})INFINITY)"
        return f"(({t}){value!r})"       # the double, rounded once to float as torch does
    value = int(value)
    if dtype == torch.int64 and value == -(1 << 63):
        return "(INT64_MIN)"
    return f"(({ctype(dtype)}){value}LL)"


def accumulator(combine, dtype):
    """The C type a reduction accumulates in."""
    if dtype == torch.bool or not dtype.is_floating_point:
        return "int64_t"
    if dtype == torch.float32 and combine in ("add", "mul"):
        return "double"
    return ctype(dtype)


def identity(combine, acc: str) -> str:
    if combine == "add":
        return "0"
    if combine == "mul":
        return "1"
    if acc in ("float", "double"):
        return f"-({acc})INFINITY" if combine == "max" else f"({acc})INFINITY"
    return "INT64_MIN" if combine == "max" else "INT64_MAX"


UPDATE = {"add": "{0} + {1}", "mul": "{0} * {1}", "max": "fx_max({0}, {1})", "min": "fx_min({0}, {1})"}


class CVal:
    """A value in the kernel: its C expression, functx dtype, the loop indices it depends
    on ('x', 'r'), and whether it can be computed once per row before any loop."""
    __slots__ = ("expr", "dtype", "dims", "hoist")

    def __init__(self, expr, dtype, dims=frozenset(), hoist=True):
        self.expr, self.dtype, self.dims, self.hoist = expr, dtype, frozenset(dims), hoist

    def __repr__(self):
        return self.expr


class CppOps:
    def __init__(self, name: str, xnumel: int, rnumel: int):
        self.name, self.xnumel, self.rnumel = name, xnumel, rnumel
        self.prelude: list[str] = []
        self.body: list[str] = []
        self.out = self.body
        self.cache = [{}]                 # CSE: expression text -> CVal, one dict per scope
        self.prelude_cache: dict = {}
        self.in_args: dict[str, str] = {}     # buffer -> kernel argument
        self.out_args: dict[str, str] = {}
        self.arg_types: dict[str, str] = {}
        self.counter = 0
        self.loop_inits: list[str] = []
        self.loop_finals: list[str] = []
        self.loop_combines: set = set()

    # ------------------------------------------------------------ plumbing
    def _new(self, expr, dtype, dims, hoist):
        hit = self.prelude_cache.get(expr) or next((c[expr] for c in reversed(self.cache) if expr in c), None)
        if hit is not None:
            return hit
        name = f"tmp{self.counter}"
        self.counter += 1
        line = f"const {ctype(dtype)} {name} = {expr};"
        if hoist:                       # x-only, no reduction: once per row, first
            cache = self.prelude_cache
            self.prelude.append(line)
        elif "r" not in dims and len(self.cache) > 1:   # per-row value inside a loop: before it
            cache = self.cache[-2]
            self.loop_inits.append(line)
        else:
            cache = self.cache[-1]
            self.out.append(line)
        val = CVal(name, dtype, dims, hoist)
        cache[expr] = val
        return val

    @staticmethod
    def _index(index: Index):
        syms = index.symbols()
        dims = {"x" for s in syms if s == "xindex"} | {"r" for s in syms if s == "rindex"}
        return render(index, floordiv="/"), frozenset(dims)

    # ------------------------------------------------------------ ops
    def load(self, buffer, index, dtype):
        arg = self.in_args.setdefault(buffer, f"in_ptr{len(self.in_args)}")
        self.arg_types[arg] = f"const {ctype(dtype)}* __restrict__"
        text, dims = self._index(index)
        return self._new(f"{arg}[{text}]", dtype, dims, hoist=("r" not in dims))

    def constant(self, value, dtype):
        return CVal(literal_source(value, dtype), dtype)

    def index_value(self, index, dtype):
        text, dims = self._index(index)
        return self._new(f"static_cast<{ctype(dtype)}>({text})", dtype, dims, "r" not in dims)

    def pointwise(self, eqn, args):
        dtype = eqn.outputs[0].type.dtype
        dims = frozenset().union(*(a.dims for a in args)) if args else frozenset()
        hoist = all(a.hoist for a in args)
        template = eqn.prim.cpp_lowering(eqn)
        if isinstance(template, Unsupported):
            raise NotImplementedError(template)
        if template == "{0}":                   # identity (stop_gradient): no new value
            return args[0]
        expr = template.format(*(a.expr for a in args), **eqn.params)
        if not args:
            return CVal(expr, dtype)
        return self._new(expr, dtype, dims, hoist)

    def reduction(self, combine, value, dtype):
        if len(self.cache) < 2:
            raise AssertionError("the CPU backend reduces inside an rloop (plans are looped)")
        acc_t = accumulator(combine, dtype)
        n = self.counter
        self.counter += 1
        acc, name = f"acc{n}", f"tmp{n}"
        self.loop_inits.append(f"{acc_t} {acc} = {identity(combine, acc_t)};")
        self.out.append(f"{acc} = {UPDATE[combine].format(acc, f'static_cast<{acc_t}>({value.expr})')};")
        self.loop_combines.add((combine, acc))
        result = f"({acc} != 0)" if dtype == torch.bool else f"static_cast<{ctype(dtype)}>({acc})"
        self.loop_finals.append(f"const {ctype(dtype)} {name} = {result};")
        return CVal(name, dtype, {"x"}, hoist=False)

    def store(self, buffer, index, value, dtype):
        arg = self.out_args.setdefault(buffer, f"out_ptr{len(self.out_args)}")
        self.arg_types[arg] = f"{ctype(dtype)}* __restrict__"
        text, _ = self._index(index)
        v = value.expr if value.dtype == dtype else f"static_cast<{ctype(dtype)}>({value.expr})"
        self.out.append(f"{arg}[{text}] = {v};")

    @contextlib.contextmanager
    def rloop(self):
        outer, self.out = self.out, []
        self.cache.append({})
        self.loop_inits, self.loop_finals, self.loop_combines = [], [], set()
        try:
            yield
        finally:
            body, self.out = self.out, outer
            self.cache.pop()
            self.out.extend(self.loop_inits)
            sums = [acc for combine, acc in sorted(self.loop_combines) if combine == "add"]
            if sums and len(sums) == len(self.loop_combines):
                # lets the compiler vectorize a sum (it may reassociate, as torch's kernels do)
                self.out.append(f"#pragma omp simd reduction(+:{', '.join(sums)})")
            self.out.append(f"for (int64_t rindex = 0; rindex < {self.rnumel}; ++rindex) {{")
            self.out.extend("    " + line for line in body)
            self.out.append("}")
            self.out.extend(self.loop_finals)

    # ------------------------------------------------------------ the kernel text
    def source(self, arg_order) -> str:
        """arg_order: (input buffers, output buffers) in the order the wrapper passes them."""
        ins, outs = arg_order
        args = [self.in_args[b] for b in ins] + [self.out_args[b] for b in outs]
        params = [f"{self.arg_types[a]} {a}" for a in args] + ["int nthreads"]
        work = self.xnumel * max(self.rnumel, 1)
        lines = [f'extern "C" void {self.name}({", ".join(params)}) {{']
        if work >= PARALLEL_MIN and self.xnumel > 1:
            lines.append("    #pragma omp parallel for num_threads(nthreads) if(nthreads > 1)")
        lines.append(f"    for (int64_t xindex = 0; xindex < {self.xnumel}; ++xindex) {{")
        lines += ["        " + line for line in self.prelude + self.body]
        lines += ["    }", "}"]
        return "\n".join(lines) + "\n"
