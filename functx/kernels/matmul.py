"""The matmul template: C = epilogue(A @ B) as one Triton kernel, batched.

`dot_general` with any dimension numbers is one batched matmul [B, M, K] @ [B, K, N]
(`MatmulLayout`: the operands permuted to (batch, free, contract) / (batch, contract,
free) and flattened; the kernel reads them through strides, so transposed and broadcast
operands cost no copy). Each program computes one BLOCK_M x BLOCK_N tile of one batch
entry with `tl.dot` (tensor cores for float16/bfloat16, and for float32 as tf32 when
`torch.backends.cuda.matmul.allow_tf32` is on, read at every launch), accumulating in
float32; the result is rounded to the output dtype, as torch.matmul's would be, and then
the fused epilogue (pointwise code printed by the fusion compiler over the tile's `xindex`
= the flat index of the output element) runs on it before anything is stored.

`choose(...)` is the scheduler's cost rule: the template where it is expected to win (it
absorbs an epilogue, or a batch of small matmuls becomes one launch), cuBLAS otherwise.
The knobs are `CONFIG`'s fields.
"""
from __future__ import annotations

import dataclasses
import math

import torch

DTYPES = {torch.float32: "tl.float32", torch.float16: "tl.float16", torch.bfloat16: "tl.bfloat16"}


@dataclasses.dataclass
class TemplateConfig:
    """enabled: choose the template at all; small_batched_mnk: a batched matmul without an
    epilogue uses the template when M*N*K per batch entry is at most this (one launch
    instead of cuBLAS's batched-gemm setup); split_k_min_k / split_k_max_tiles: keep cuBLAS
    when the output has few tiles over a long K (cuBLAS splits K across SMs; the template
    does not); prologue_max_n: a pointwise prologue on A is recomputed once per column
    of output tiles, so it is fused only when N is at most this."""
    enabled: bool = True
    small_batched_mnk: int = 64 * 64 * 64
    split_k_min_k: int = 4096
    split_k_max_tiles: int = 32
    prologue_max_n: int = 256


CONFIG = TemplateConfig()


@dataclasses.dataclass(frozen=True)
class MatmulLayout:
    """dot_general as one batched matmul: lhs -> [batch, m, k], rhs -> [batch, k, n]; the
    output [batch, m, n] is dot_general's output (batch dims, lhs free, rhs free) flattened."""
    lhs_perm: tuple
    rhs_perm: tuple
    batch: int
    m: int
    n: int
    k: int
    lhs_shape: tuple = ()
    lhs_groups: tuple = ()      # lhs dims (batch dims, free dims, contracting dims)

    @classmethod
    def of(cls, lhs_shape, rhs_shape, dimension_numbers):
        (lc, rc), (lb, rb) = dimension_numbers
        lfree = [d for d in range(len(lhs_shape)) if d not in lc and d not in lb]
        rfree = [d for d in range(len(rhs_shape)) if d not in rc and d not in rb]
        return cls((*lb, *lfree, *lc), (*rb, *rc, *rfree),
                   math.prod(lhs_shape[d] for d in lb), math.prod(lhs_shape[d] for d in lfree),
                   math.prod(rhs_shape[d] for d in rfree), math.prod(lhs_shape[d] for d in lc),
                   tuple(lhs_shape), (tuple(lb), tuple(lfree), tuple(lc)))

    def lhs_index(self, b: str, m: str, k: str) -> str:
        """Triton source of the row-major flat index into the lhs (as dot_general sees it)
        of element [b, m, k] of its [batch, M, K] view: what a prologue computes A from."""
        strides = [math.prod(self.lhs_shape[d + 1:]) for d in range(len(self.lhs_shape))]
        terms = []
        for var, dims in zip((b, m, k), self.lhs_groups):
            inner = 1
            for d in reversed(dims):
                size = self.lhs_shape[d]
                digit = var if len(dims) == 1 else f"(({var} // {inner}) % {size})"
                if size > 1:
                    terms.append(f"{digit} * {strides[d]}")
                inner *= size
        return " + ".join(terms) or "0"

    def operands(self, x, y):
        """The [batch, m, k] and [batch, k, n] views (a copy only where reshape needs one)."""
        if x is not None and self.lhs_perm != tuple(range(x.dim())):
            x = x.permute(self.lhs_perm)
        if self.rhs_perm != tuple(range(y.dim())):
            y = y.permute(self.rhs_perm)
        return (x if x is None else x.reshape(self.batch, self.m, self.k)), y.reshape(self.batch, self.k, self.n)

    def tiles(self, block=64) -> int:
        return self.batch * -(-self.m // block) * -(-self.n // block)


def choose(lhs_type, rhs_type, layout: MatmulLayout, epilogue: list[str],
           prologue: list[str] = ()) -> tuple[bool, str]:
    """(use the template?, why): the scheduler's rule, shown by explain either way.
    epilogue / prologue: the names of the pointwise operations it would absorb after the
    matmul / before it, on A ([] if none)."""
    if not CONFIG.enabled:
        return False, "the matmul template is off (functx.kernels.matmul.CONFIG.enabled)"
    dt = lhs_type.dtype
    if dt not in DTYPES or rhs_type.dtype != dt:
        return False, f"dtype {dt}: the template handles float32, float16 and bfloat16"
    if 0 in (layout.batch, layout.m, layout.n, layout.k):
        return False, "an empty matmul"
    if layout.k >= CONFIG.split_k_min_k and layout.tiles() <= CONFIG.split_k_max_tiles:
        return False, (f"{layout.tiles()} output tile(s) over K={layout.k}: cuBLAS splits K across the "
                       "GPU, the template does not")
    shape = f"[{layout.batch}x{layout.m}x{layout.k}] @ [{layout.batch}x{layout.k}x{layout.n}]"
    if epilogue or prologue:
        parts = [f"its epilogue ({', '.join(epilogue)}): the result never goes to memory"] if epilogue else []
        parts += [f"a prologue on A ({', '.join(prologue)}): A is computed while it is loaded"] if prologue else []
        return True, f"{shape}, absorbs " + "; and ".join(parts)
    if layout.batch > 1 and layout.m * layout.n * layout.k <= CONFIG.small_batched_mnk:
        return True, f"{shape}: a batch of small matmuls in one launch"
    return False, (f"{shape} with no epilogue to absorb and not a batch of small matmuls: "
                   "torch.matmul (cuBLAS) is at least as fast")


# ---------------------------------------------------------------- the kernel's source

def kernel_source(name: str, dtype, out_dtype, epilogue_ins: list[str], epilogue_outs: list[str],
                  epilogue_lines: list[str], result: str = "mm", interpret: bool = False,
                  prologue=None) -> str:
    """One template kernel. epilogue_ins/outs: the pointer arguments of the fused code
    (in_ptrN, out_ptrN), epilogue_lines: its body, which reads the tile's result as
    `result` and indexes with xindex/xmask (the output element's flat index, its in-bounds
    mask). prologue: None (A is loaded through a_ptr and its strides) or (lines, value,
    layout): code computing the A tile as `value` from xindex/xmask = the flat lhs index of
    [pid_b, rm, k*BLOCK_K + rk] and its mask, in place of the load (no a_ptr then)."""
    a_args = ["a_ptr"] if prologue is None else []
    a_strides = ["stride_ab", "stride_am", "stride_ak"] if prologue is None else []
    args = [*a_args, "b_ptr", *epilogue_ins, *epilogue_outs, "M", "N", "K",
            *a_strides, "stride_bb", "stride_bk", "stride_bn",
            "BLOCK_M: tl.constexpr", "BLOCK_N: tl.constexpr", "BLOCK_K: tl.constexpr",
            "GROUP_M: tl.constexpr", "PRECISION: tl.constexpr"]
    precision = ", input_precision=PRECISION" if dtype == torch.float32 else ""
    # The interpreter's tl.dot multiplies bfloat16's raw bits; in float32 the products of
    # two bfloat16 values are exact, so upcasting computes what tensor cores do.
    upcast = ".to(tl.float32)" if interpret and dtype == torch.bfloat16 else ""
    rounding = "" if out_dtype == torch.float32 else f".to({DTYPES[out_dtype]}).to(tl.float32)"
    body = [
        "pid = tl.program_id(0)",
        "grid_m = tl.cdiv(M, BLOCK_M)",
        "grid_n = tl.cdiv(N, BLOCK_N)",
        "pid_b = pid // (grid_m * grid_n)",
        "pid_t = pid % (grid_m * grid_n)",
        "# grouped tile order: GROUP_M rows of tiles share the B tiles they read in L2",
        "width = GROUP_M * grid_n",
        "first_m = (pid_t // width) * GROUP_M",
        "group_m = tl.minimum(grid_m - first_m, GROUP_M)",
        "pid_m = first_m + (pid_t % width) % group_m",
        "pid_n = (pid_t % width) // group_m",
        "rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)",
        "rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)",
        "rk = tl.arange(0, BLOCK_K)",
        "bb = pid_b.to(tl.int64)",
        *(["a_ptrs = a_ptr + bb * stride_ab + rm[:, None] * stride_am + rk[None, :] * stride_ak"]
          if prologue is None else []),
        "b_ptrs = b_ptr + bb * stride_bb + rk[:, None] * stride_bk + rn[None, :] * stride_bn",
        "acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)",
        "for k in range(0, tl.cdiv(K, BLOCK_K)):",
        "    k_left = K - k * BLOCK_K",
        *(["    a = tl.load(a_ptrs, mask=(rm[:, None] < M) & (rk[None, :] < k_left), other=0.0)"]
          if prologue is None else _prologue_lines(prologue, dtype)),
        "    b = tl.load(b_ptrs, mask=(rk[:, None] < k_left) & (rn[None, :] < N), other=0.0)",
        f"    acc = tl.dot(a{upcast}, b{upcast}, acc{precision})",
        *(["    a_ptrs += BLOCK_K * stride_ak"] if prologue is None else []),
        "    b_ptrs += BLOCK_K * stride_bk",
        "xindex = pid_b * (M * N) + rm[:, None] * N + rn[None, :]",
        "xmask = (rm[:, None] < M) & (rn[None, :] < N)",
        f"{result} = acc{rounding}",
        *epilogue_lines,
    ]
    return "\n".join(["@triton.jit", f"def {name}({', '.join(args)}):"] + ["    " + l for l in body]) + "\n"


def _prologue_lines(prologue, dtype):
    lines, value, layout = prologue
    index = layout.lhs_index("pid_b", "rm[:, None]", "(k * BLOCK_K + rk)[None, :]")
    # a block even where every dim of A is 1 (the index is then a scalar)
    head = [f"xindex = {index} + tl.zeros([BLOCK_M, BLOCK_K], tl.int32)",
            "xmask = (rm[:, None] < M) & (rk[None, :] < k_left)"]
    # masked lanes must be 0 in the product (the prologue of a loaded 0 need not be 0)
    tail = [f"a = tl.where(xmask, {value}, 0.0).to({DTYPES[dtype]})"]
    return ["    " + line for line in head + list(lines) + tail]


# ---------------------------------------------------------------- launching

def _pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), from Inductor's mm configs: a few per
# problem size, so that autotuning (each config is one compile) stays short.
SMALL = [(16, 64, 64, 4, 3), (32, 32, 32, 2, 4), (32, 64, 64, 4, 3)]
MEDIUM = [(64, 64, 32, 4, 3), (64, 128, 32, 4, 4), (128, 64, 32, 4, 4)]
LARGE = [(128, 128, 32, 8, 3), (128, 128, 64, 8, 3), (64, 128, 32, 4, 4), (128, 256, 32, 8, 3)]


def gpu_configs(layout: MatmulLayout) -> list[tuple]:
    """The autotuning candidates for this problem's size."""
    if min(layout.m, layout.n) <= 32:
        return SMALL
    if min(layout.m, layout.n) >= 1024:
        return LARGE
    return MEDIUM


def interpreter_config(layout: MatmulLayout) -> dict:
    """One config in the interpreter (it pays per program, not per lane)."""
    return {"BLOCK_M": min(_pow2(max(layout.m, 16)), 64), "BLOCK_N": min(_pow2(max(layout.n, 16)), 64),
            "BLOCK_K": min(_pow2(max(layout.k, 16)), 64), "GROUP_M": 8}


class MatmulLauncher:
    """Launches one template kernel: `launcher(x, y, *epilogue buffers)`, x and y the
    dot_general operands as they are (views welcome: the kernel reads through strides)."""

    def __init__(self, fn, layout: MatmulLayout, dtype, interpret: bool, prologue: bool = False):
        import triton   # the caller (the Triton backend) has imported it already
        self.layout, self.fp32, self.interpret = layout, dtype == torch.float32, interpret
        self.prologue = prologue
        self._cdiv = triton.cdiv
        if interpret:
            self.fn, self.meta = fn, interpreter_config(layout)
        else:
            cfgs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                                  num_warps=w, num_stages=s) for bm, bn, bk, w, s in gpu_configs(layout)]
            self.fn, self.meta = triton.autotune(configs=cfgs, key=["M", "N", "K"])(fn), None

    def precision(self) -> str:
        return "tf32" if self.fp32 and not self.interpret and torch.backends.cuda.matmul.allow_tf32 else "ieee"

    def __call__(self, *operands_and_buffers):
        L = self.layout
        cdiv = self._cdiv
        if self.prologue:       # A is computed in the kernel: only B is passed
            y, *buffers = operands_and_buffers
            b = L.operands(None, y)[1]
            args = (b, *buffers, L.m, L.n, L.k, b.stride(0), b.stride(1), b.stride(2))
        else:
            x, y, *buffers = operands_and_buffers
            a, b = L.operands(x, y)
            args = (a, b, *buffers, L.m, L.n, L.k, a.stride(0), a.stride(1), a.stride(2),
                    b.stride(0), b.stride(1), b.stride(2))
        if self.meta is not None:
            grid = (L.batch * cdiv(L.m, self.meta["BLOCK_M"]) * cdiv(L.n, self.meta["BLOCK_N"]),)
            self.fn[grid](*args, **self.meta, PRECISION=self.precision())
        else:
            self.fn[lambda meta: (L.batch * cdiv(L.m, meta["BLOCK_M"]) * cdiv(L.n, meta["BLOCK_N"]),)](
                *args, PRECISION=self.precision())


__all__ = ["CONFIG", "TemplateConfig", "MatmulLayout", "MatmulLauncher", "choose", "kernel_source"]
