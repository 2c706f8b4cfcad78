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
in functx/prims); the fx_* helpers they use are defined in HELPERS. float32 sums and
products accumulate in double (a row's sum: float partial sums over chunks of 128 elements,
added in double), integer ones in int64 (torch's sum/prod dtype), then round to the result's
dtype.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import math

import torch

from ..fusion.indexing import Index, Sym, is_symbolic_size, render, size_of
from ..fusion.kernel import NullOps
from ..fusion.printer import KernelPrinter
from ..fusion.scheduler import lowerable as fusion_lowerable

CTYPES = {torch.float32: "float", torch.float64: "double", torch.int32: "int32_t",
          torch.int64: "int64_t", torch.bool: "bool"}

PARALLEL_MIN = 1 << 15      # elements of work below which a kernel runs on one thread

# The C math library's functions are declared here, not through <math.h>: in C++ that
# header costs g++ 0.6 s per compile (it pulls in <cmath>); g++ knows them as builtins.
# Those glibc's libmvec has in vector form are declared `simd`, so loops calling them
# vectorize (scalar tanhf costs ~75 ns, its AVX2 form ~5 ns/element; libmvec's functions
# are within 4 ulp, like the SLEEF functions torch's own CPU kernels call).
_UNARY = ("exp exp2 log log1p expm1 sin cos tan tanh asin acos atan sinh cosh asinh acosh "
          "atanh sqrt erf erfc floor ceil trunc nearbyint fabs").split()
_BINARY = ("atan2", "fmod", "pow")


@functools.lru_cache(maxsize=1)
def _vector_math() -> frozenset:
    """The libm functions this machine's libmvec provides (by their double names)."""
    try:
        mvec = ctypes.CDLL("libmvec.so.1")
    except OSError:
        return frozenset()
    names = set()
    for n in _UNARY + list(_BINARY):
        mangled = f"_ZGVbN4{'vv' if n in _BINARY else 'v'}_{n}f"
        if hasattr(mvec, mangled):
            names.add(n)
    return frozenset(names)


def _declarations() -> str:
    vec = _vector_math()
    lines = []
    for n in _UNARY + list(_BINARY):
        simd = ' __attribute__((simd("notinbranch")))' if n in vec else ""
        args_f, args_d = ("float, float", "double, double") if n in _BINARY else ("float", "double")
        lines.append(f'extern "C" float {n}f({args_f}){simd};')
        lines.append(f'extern "C" double {n}({args_d}){simd};')
    return "\n".join(lines) + "\n"


def link_flags() -> tuple:
    return ("-lmvec",) if _vector_math() else ()


@functools.lru_cache(maxsize=1)
def header() -> str:
    return "#include <stdint.h>\n" + _declarations() + HELPERS


HELPERS = r"""extern "C" int omp_get_num_threads(void);
extern "C" int omp_get_thread_num(void);
extern "C" float lgammaf_r(float, int*);
extern "C" double lgamma_r(double, int*);
#define NAN __builtin_nan("")
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
// Float to int32/int64 as torch computes it on x86 (cvtt*2si: truncation; NaN and values out
// of range give the minimum). A plain cast is undefined there, and g++ folded
// (float)(int64_t)x into a truncation, so NaN stayed NaN.
#if defined(__x86_64__) || defined(__i386__)
static inline int64_t fx_to_i64(double x) {
    return (x >= -9223372036854775808.0 && x < 9223372036854775808.0) ? (int64_t)x : (int64_t)(-9223372036854775807LL - 1);
}
static inline int32_t fx_to_i32(double x) {
    return (x > -2147483649.0 && x < 2147483648.0) ? (int32_t)x : (int32_t)(-2147483647 - 1);
}
#else
static inline int64_t fx_to_i64(double x) { return (int64_t)x; }
static inline int32_t fx_to_i32(double x) { return (int32_t)x; }
#endif
// lgamma_r: lgamma writes the global signgam, a data race under OpenMP.
static inline float fx_lgamma(float a) { int s; return lgammaf_r(a, &s); }
static inline double fx_lgamma(double a) { int s; return lgamma_r(a, &s); }
// float32 tanh as XLA's CPU backend computes it (Eigen's rational approximation: odd
// degree-13 numerator, even degree-6 denominator, on x clamped to +-7.9988, where it reaches
// 1.0f; x itself below 4e-4). Branch-free and inlined, so loops calling it vectorize: 0.6 ns
// per element against libmvec's 0.9 (AVX2, one core). Within 5 ulp of tanh over every float
// (checked exhaustively; libmvec's tanhf: 1 ulp), odd, so tanh(-0) = -0; NaN stays NaN, +-inf
// give +-1. The polynomials are evaluated by fused multiply-adds where the CPU has them.
#ifdef __FMA__
#define FX_FMAF(a, b, c) __builtin_fmaf(a, b, c)
#define FX_FMA(a, b, c) __builtin_fma(a, b, c)
#else
#define FX_FMAF(a, b, c) ((a) * (b) + (c))
#define FX_FMA(a, b, c) ((a) * (b) + (c))
#endif
static inline float fx_tanhf(float x) {
    const float c = 7.99881172180175781f;
    const float xc = x > c ? c : (x < -c ? -c : x);
    const float z = xc * xc;
    float p = FX_FMAF(-2.76076847742355e-16f, z, 2.00018790482477e-13f);
    p = FX_FMAF(p, z, -8.60467152213735e-11f);
    p = FX_FMAF(p, z, 5.12229709037114e-08f);
    p = FX_FMAF(p, z, 1.48572235717979e-05f);
    p = FX_FMAF(p, z, 6.37261928875436e-04f);
    p = FX_FMAF(p, z, 4.89352455891786e-03f);
    float q = FX_FMAF(1.19825839466702e-06f, z, 1.18534705686654e-04f);
    q = FX_FMAF(q, z, 2.26843463243900e-03f);
    q = FX_FMAF(q, z, 4.89352518554385e-03f);
    const float r = (xc * p) / q;
    return __builtin_fabsf(x) < 0.0004f ? x : r;
}
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


XBLOCK = 32     # rows a column-reduction kernel processes together (see CppOps)
SHORT_ROW = 16  # rows up to this long are reduced in blocks too
# Row loops (not blocked) add float32 sums in float within chunks of the reduced axis and in
# double across chunks (reduction()): ROW_CHUNK elements when the loop is a SIMD reduction
# (split over the lanes: 16 terms per lane on AVX2), SEQUENTIAL_CHUNK when it is not (a max
# beside the sum).
ROW_CHUNK = 128
SEQUENTIAL_CHUNK = 16


class LoopBlock(list):
    """Lines of a loop over rindex inside a blocked kernel: printed as they are, not inside
    a loop over the block's rows."""


class CppOps(KernelPrinter):
    """blocked=False: one row (xindex) at a time, its stages as loops over rindex. Good when
    a row's elements are contiguous (softmax, layer_norm).

    blocked=True (column reductions, e.g. a bias gradient x.sum(0)): XBLOCK rows at a time,
    `for rindex: for xi in block`, so the innermost loop reads consecutive addresses and
    vectorizes. A value computed per row then lives in an array `tmpN[xi]`; lines computed
    per row are printed inside `for (xi ...)` loops."""

    def __init__(self, name: str, xnumel: int, rnumel: int, blocked: bool = False, written_over=None):
        """written_over: {output buffer: input buffer} stored in place of the input through
        its pointer (fusion/inplace.py), so no two arguments alias."""
        super().__init__(name)
        self.xnumel, self.rnumel, self.blocked = xnumel, rnumel, blocked
        self.written_over = dict(written_over or {})
        self.arg_types: dict[str, str] = {}
        self.arrays: list[str] = []           # blocked: per-row values' declarations
        self.loop_combines: set = set()
        self.chunk_sums: list = []             # the rloop's (float partial sum, double accumulator)

    def _size(self, n) -> str:
        """A loop bound in C: an int, or a kernel argument."""
        return str(n) if isinstance(n, int) else self.size_arg(n)

    # ------------------------------------------------------------ plumbing
    def _row_value(self, ctype_, name, expr):
        """(line, reference) of a per-row value named `name`."""
        if self.blocked:
            self.arrays.append(f"{ctype_} {name}[{XBLOCK}];")
            return f"{name}[xi] = {expr};", f"{name}[xi]"
        return f"const {ctype_} {name} = {expr};", name

    def _new(self, expr, dtype, dims, hoist):
        hit = self._cached(expr)
        if hit is not None:
            return hit
        name = self._fresh_name()
        if hoist or len(self.cache) == 1 or "r" not in dims:
            line, ref = self._row_value(ctype(dtype), name, expr)
        else:
            line, ref = f"const {ctype(dtype)} {name} = {expr};", name
        return self._place(expr, line, CVal(ref, dtype, dims, hoist), hoist, dims)

    def _index(self, index: Index):
        syms = index.symbols()
        dims = {"x" for s in syms if s == "xindex"} | {"r" for s in syms if s == "rindex"}
        return render(index, self._block_names(index) if self.blocked else None, floordiv="/",
                      size_name=self.size_arg), frozenset(dims)

    @staticmethod
    def _block_names(index: Index) -> dict:
        """Blocks start at multiples of XBLOCK, so for d a multiple of XBLOCK, xindex / d is
        xb / d and xindex % d is xb % d + xi: the address becomes affine in xi and the
        loop over the block reads consecutive elements (no gathers). Atoms nested in others
        are renamed too, so `(xindex / 64) % 16` prints as `(xb / 64) % 16`: constant on
        the block."""
        names = {}
        for atom in _div_atoms(index):
            if _aligned_div(atom):
                names[atom.key()] = f"(xb / {atom.d})" if atom.op == "//" else f"(xb % {atom.d} + xi)"
        return names

    # ------------------------------------------------------------ ops
    def load(self, buffer, index, dtype):
        arg = self.in_args.setdefault(buffer, f"in_ptr{len(self.in_args)}")
        self.arg_types[arg] = f"const {ctype(dtype)}* __restrict__"
        text, dims = self._index(index)
        return self._new(f"{arg}[{text}]", dtype, dims, hoist=("r" not in dims))

    def constant(self, value, dtype):
        if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):   # read at run time
            if isinstance(value, torch.SymBool):
                raise NotImplementedError(f"a symbolic boolean constant {value}")
            expr = value.node.expr
            if isinstance(value, torch.SymFloat):
                expr = expr.args[0] if type(expr).__name__ == "ToFloat" else ("float", expr)
            else:
                expr = size_of(value)
            return CVal(f"static_cast<{ctype(dtype)}>({self.size_arg(expr)})", dtype)
        return CVal(literal_source(value, dtype), dtype)

    def index_value(self, index, dtype):
        text, dims = self._index(index)
        return self._new(f"static_cast<{ctype(dtype)}>({text})", dtype, dims, "r" not in dims)

    def pointwise(self, eqn, args):
        return self._from_template(eqn.prim.cpp_lowering(eqn), args, eqn.outputs[0].type.dtype, eqn.params, CVal)

    def reduction(self, combine, value, dtype):
        if len(self.cache) < 2:
            raise AssertionError("the CPU backend reduces inside an rloop (plans are looped)")
        acc_t = accumulator(combine, dtype)
        if combine == "add" and dtype == torch.float32 and self.blocked and isinstance(self.rnumel, int) \
                and self.rnumel <= SEQUENTIAL_CHUNK:
            acc_t = "float"         # a blocked row of at most 16 terms: one sequential float chunk
        n = self.counter
        self.counter += 1
        init, acc = self._row_value(acc_t, f"acc{n}", identity(combine, acc_t))
        if not self.blocked:
            init = init.replace("const ", "", 1)
        self.loop_inits.append(init)
        if combine == "add" and dtype == torch.float32 and not self.blocked:
            # float partial sums per chunk, added into the double accumulator after each
            # chunk: half the vector work of converting every term (dsm_step's row sums
            # beside a tanh: 0.69 -> 0.53 ms); the error is that of a float sum of
            # ROW_CHUNK / lanes terms per chunk (torch's float sums are cascades of float
            # partial sums, about as accurate). Blocked loops (rows innermost) keep double
            # accumulators: their per-chunk flush cost what the float adds saved.
            self.chunk_sums.append((f"accf{n}", acc))
            self.out.append(f"accf{n} = accf{n} + {value.expr};")
            self.loop_combines.add((combine, f"accf{n}"))
        else:
            self.out.append(f"{acc} = {UPDATE[combine].format(acc, f'static_cast<{acc_t}>({value.expr})')};")
            self.loop_combines.add((combine, acc))
        result = f"({acc} != 0)" if dtype == torch.bool else f"static_cast<{ctype(dtype)}>({acc})"
        line, ref = self._row_value(ctype(dtype), f"tmp{n}", result)
        self.loop_finals.append(line)
        return CVal(ref, dtype, {"x"}, hoist=False)

    def store(self, buffer, index, value, dtype):
        if buffer in self.written_over:         # over an input it reads first: that pointer
            arg = self.in_args[self.written_over[buffer]]
        else:
            arg = self.out_args.setdefault(buffer, f"out_ptr{len(self.out_args)}")
        self.arg_types[arg] = f"{ctype(dtype)}* __restrict__"
        text, _ = self._index(index)
        v = value.expr if value.dtype == dtype else f"static_cast<{ctype(dtype)}>({value.expr})"
        self.out.append(f"{arg}[{text}] = {v};")

    @contextlib.contextmanager
    def rloop(self):
        outer, self.out = self.out, []
        self.cache.append({})
        self.loop_inits, self.loop_finals, self.loop_combines, self.chunk_sums = [], [], set(), []
        try:
            yield
        finally:
            body, self.out = self.out, outer
            self.cache.pop()
            self.out.extend(self.loop_inits)
            rn = self._size(self.rnumel)
            self.out.append(self._chunked(body, rn) if self.chunk_sums else self._rloop(body, "0", rn))
            self.out.extend(self.loop_finals)

    def _rloop(self, body, start, stop) -> LoopBlock:
        loop = LoopBlock()
        head = f"for (int64_t rindex = {start}; rindex < {stop}; ++rindex) {{"
        if self.blocked:        # rows innermost: consecutive addresses, no loop-carried sum
            loop += [head, "    #pragma omp simd"] + ["    " + l for l in _row_loop(body)] + ["}"]
        else:
            sums = [acc for combine, acc in sorted(self.loop_combines) if combine == "add"]
            if sums and len(sums) == len(self.loop_combines):
                # lets the compiler vectorize a sum (it may reassociate, as torch's kernels do)
                loop.append(f"#pragma omp simd reduction(+:{', '.join(sums)})")
            loop += [head] + ["    " + line for line in body] + ["}"]
        return loop

    def _chunked(self, body, rn) -> LoopBlock:
        """A row's rloop over chunks of the reduced axis, for float partial sums: each
        chunk starts them at 0 and adds them into their double accumulators at its end."""
        starts = [f"float {p} = 0.0f;" for p, _ in self.chunk_sums]
        ends = [f"{a} = {a} + static_cast<double>({p});" for p, a in self.chunk_sums]
        simd = all(combine == "add" for combine, _ in self.loop_combines)
        n = ROW_CHUNK if simd else SEQUENTIAL_CHUNK
        out = LoopBlock([f"for (int64_t r0 = 0; r0 < {rn}; r0 += {n}) {{",
                         f"    const int64_t r1 = r0 + {n} < {rn} ? r0 + {n} : {rn};"])
        out += ["    " + line for line in starts + list(self._rloop(body, "r0", "r1")) + ends] + ["}"]
        return out

    # ------------------------------------------------------------ the kernel text
    def source(self, arg_order) -> str:
        """arg_order: (input buffers, output buffers) in the order the wrapper passes them.

        The rows are a static function over [x0, x1) that the entry point calls once, or
        once per OpenMP thread on a slice: an `omp parallel for` around the loop itself
        kept g++ from vectorizing the libmvec calls in it (10x slower single-threaded)."""
        ins, outs = arg_order
        xn = self._size(self.xnumel)
        work = size_of(self.xnumel * max(self.rnumel, 1) if isinstance(self.rnumel, int) else
                       self.xnumel * self.rnumel)
        work = self._size(work) if is_symbolic_size(work) else work
        args = [self.in_args[b] for b in ins] + [self.out_args[b] for b in outs] + list(self.size_args.values())
        params = [f"{self.arg_types[a]} {a}" for a in args[:len(ins) + len(outs)]] + \
            [f"{'double' if isinstance(e, tuple) else 'int64_t'} {n}" for e, n in self.size_args.items()]
        rows = [f"static void {self.name}_rows({', '.join(params + ['int64_t x0', 'int64_t x1'])}) {{"]
        segments = self.prelude + self.body
        if self.blocked and isinstance(self.rnumel, int) and 1 < self.rnumel <= SHORT_ROW:
            # short rows: a full block's loops over its rows get the constant trip count
            # XBLOCK, so g++ unrolls them and keeps the per-row accumulators in registers
            # (with float sums: a forward Laplacian's sums over 16 directions, 4 MB each,
            # 0.42-0.66 -> 0.35-0.43 and 0.25-0.39 -> 0.14-0.18 ms); the last block runs the
            # same lines with its own count. Not for long column sums (dsm_step's bias and
            # weight gradients ran 2x slower)
            block = ["    " + l for l in self.arrays + _blocked(segments)]
            rows.append(f"    for (int64_t xb = x0; xb < x1; xb += {XBLOCK}) {{")
            rows.append(f"        if (x1 - xb >= {XBLOCK}) {{")
            rows.append(f"            const int64_t xn = {XBLOCK};")
            rows += ["        " + l for l in block]
            rows.append("        } else {")
            rows.append("            const int64_t xn = x1 - xb;")
            rows += ["        " + l for l in block]
            rows.append("        }")
        elif self.blocked:
            rows.append(f"    for (int64_t xb = x0; xb < x1; xb += {XBLOCK}) {{")
            rows.append(f"        const int64_t xn = x1 - xb < {XBLOCK} ? x1 - xb : {XBLOCK};")
            rows += ["        " + l for l in self.arrays]
            rows += ["        " + l for l in _blocked(segments)]
        else:
            rows.append("    for (int64_t xindex = x0; xindex < x1; ++xindex) {")
            rows += ["        " + l for seg in segments for l in (seg if isinstance(seg, LoopBlock) else [seg])]
        rows += ["    }", "}", ""]
        call = f"{self.name}_rows({', '.join(args)}, "
        entry = [f'extern "C" void {self.name}({", ".join(params + ["int nthreads"])}) {{']
        if isinstance(work, str) or work >= PARALLEL_MIN and self.xnumel > 1:
            align = XBLOCK if self.blocked else 16
            cond = f"nthreads > 1 && {work} >= {PARALLEL_MIN} && {xn} > 1" if isinstance(work, str) else "nthreads > 1"
            entry += [f"    if ({cond}) {{",
                      "        #pragma omp parallel num_threads(nthreads)",
                      "        {",
                      "            const int64_t n = omp_get_num_threads(), t = omp_get_thread_num();",
                      f"            const int64_t step = (({xn} + n - 1) / n + {align - 1}) / {align} * {align};",
                      f"            const int64_t x0 = t * step, x1 = x0 + step < {xn} ? x0 + step : {xn};",
                      f"            if (x0 < x1) {call}x0, x1);",
                      "        }",
                      "        return;",
                      "    }"]
        entry += [f"    {call}0, {xn});", "}"]
        return "\n".join(rows + entry) + "\n"


def _row_loop(lines) -> list:
    return ["for (int64_t xi = 0; xi < xn; ++xi) {", "    const int64_t xindex = xb + xi;"] + \
        ["    " + l for l in lines] + ["}"]


def _blocked(segments) -> list:
    """Per-row lines of a blocked kernel wrapped in loops over the block's rows; the
    rindex loops (LoopBlock) as they are."""
    out, run = [], []
    for seg in segments + [None]:
        if isinstance(seg, str):
            run.append(seg)
            continue
        if run:
            out += ["#pragma omp simd"] + _row_loop(run)
            run = []
        if seg is not None:
            out += list(seg)
    return out


def prefers_blocked(plan) -> bool:
    """Is this a column reduction: do its loads step through memory along the rows (xindex
    coefficient 1) rather than along the reduced axis? Or are its rows so short (the
    per-sample 2x2 Jacobians of a vmap) that only a loop across rows can vectorize?"""
    if not plan.reductions:
        return _broadcast_rows(plan)
    known = [n for n in (plan.xnumel, plan.rnumel) if isinstance(n, int)]
    if any(n <= 1 for n in known):
        return False
    if isinstance(plan.rnumel, int) and plan.rnumel <= SHORT_ROW:
        return True
    probe = _LoadIndices()
    plan.run(probe)
    along_x = along_r = 0
    for index in probe.indices:
        coeff = {atom.name: c for atom, c in index.terms if isinstance(atom, Sym)}
        if coeff.get("rindex") == 1:
            along_r += 1
        elif "rindex" in coeff and (coeff.get("xindex") == 1 or _contiguous_in_blocks(index)):
            along_x += 1
    return along_x > along_r


def _contiguous_in_blocks(index) -> bool:
    """Does index step by 1 with xindex inside each block of XBLOCK rows: `xindex % d` with
    coefficient 1 beside terms constant on a block (`xindex // d`), d a multiple of XBLOCK (a
    reduction over the middle axis of (n, r, d), the forward Laplacian's sum over directions)?"""
    found = False
    for atom, c in index.terms:
        if isinstance(atom, Sym):
            if atom.name == "xindex":
                return False
            continue
        op, d, arg = getattr(atom, "op", None), getattr(atom, "d", None), getattr(atom, "arg", None)
        if op not in ("%", "//") or not isinstance(d, int) or d % XBLOCK != 0 or arg is None \
                or arg.const or [(getattr(a, "name", None), k) for a, k in arg.terms] != [("xindex", 1)]:
            return False
        if op == "%":
            if c != 1:
                return False
            found = True
    return found


def _broadcast_rows(plan) -> bool:
    """A pointwise kernel that reads a broadcast operand by `xindex % d` or `xindex // d`
    (a bias added to each row of a matmul's output; `(xindex // 64) % 16`, an outer product
    of weights in factor_dots' per-point products): blocked, those reads are affine in the
    block's row (`in[xb % d + xi]`) or constant on it, and the loop vectorizes; one row at a
    time they are a gather per element. Only when every read is (blocks then never straddle
    a row of the broadcast operand) and the kernel is big enough to care."""
    if not isinstance(plan.xnumel, int) or plan.xnumel < 4 * XBLOCK:
        return False
    probe = _LoadIndices()
    plan.run(probe)
    found = False
    for index in probe.indices:
        if any(True for _ in _div_atoms(index)):
            if _block_form(index) is None:
                return False
            found = True
    return found


class _LoadIndices(NullOps):
    def __init__(self):
        self.indices = []

    def load(self, buffer, index, dtype):
        self.indices.append(index)


def _div_atoms(index: Index):
    """Every `//` and `%` atom of index, nested ones included (innermost first)."""
    for atom, _ in index.terms:
        arg = getattr(atom, "arg", None)
        if arg is not None:
            yield from _div_atoms(arg)
            yield atom


def _aligned_div(atom) -> bool:
    """`xindex // d` or `xindex % d` with d a multiple of XBLOCK: on a block (XBLOCK rows
    from a multiple of XBLOCK) the first is constant, the second affine in the row."""
    arg = atom.arg
    return arg.const == 0 and len(arg.terms) == 1 and arg.terms[0][1] == 1 \
        and isinstance(arg.terms[0][0], Sym) and arg.terms[0][0].name == "xindex" \
        and isinstance(atom.d, int) and atom.d % XBLOCK == 0


def _block_form(index: Index) -> str | None:
    """How index varies over a block of rows once _block_names renames it: "const",
    "affine" (xindex or an aligned `xindex % d` with a constant coefficient), or None (a
    gather: some `//` or `%` of a form that moves within the block)."""
    form = "const"
    for atom, _ in index.terms:
        if isinstance(atom, Sym):
            if atom.name == "xindex":
                form = "affine"
            continue
        if _aligned_div(atom):
            if atom.op == "%":
                form = "affine"
        elif _block_form(atom.arg) != "const":
            return None
    return form
