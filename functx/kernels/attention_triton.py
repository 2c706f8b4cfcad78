"""Flash-attention-style Triton kernels for the attention primitives (functx/kernels/attention.py).

Same contract as attention_math.py (the reference they are tested against): q (..., Lq, D),
k (..., Lk, D), v (..., Lk, Dv), bias None or broadcastable to (..., Lq, Lk); the leading
dims are flattened into one batch axis of the launch grid.

- `forward`: (out, lse) by online softmax over key blocks (running max m, sum l).
- `jvp`: (out, lse, dout, dlse) in the same single pass. With dS = scale (dq k^T + q dk^T) +
  dbias, each key block adds e = exp(S - m) times [1, v, dS, dS v + dv] to the running sums
  l, acc, mu, tacc, all rescaled by the same exp(m_old - m_new) when the max moves; at the
  end dlse = mu / l and dout = tacc / l - dlse * out (the softmax derivative P (dS - dlse)).
- `backward`: (dq, dk, dv, dS) from the saved lse, FlashAttention-2's two loops: one program
  per key block accumulates dk, dv over query blocks; one per query block accumulates dq
  (and writes dS = dbias when asked). delta = rowsum(dout * out) - dlse, so the lse
  cotangent costs nothing extra.

Rows whose keys are all removed give out = 0, lse = -inf and zero derivatives. Matmuls
accumulate in float32 (float64 for float64 inputs, which the interpreter and the GPU's FMA
path support); float32 inputs use IEEE products (no TF32), half inputs tensor cores.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

NEG_INF = float("-inf")


@triton.jit
def _mm(a, b, PREC: tl.constexpr, UP: tl.constexpr, ACC: tl.constexpr):
    """a @ b accumulated in ACC. UP: multiply in float32 (Triton's interpreter gets bfloat16
    tl.dot wrong; the GPU path multiplies bfloat16 on tensor cores, also exactly)."""
    if UP:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PREC).to(ACC)


@triton.jit
def _fwd_kernel(Q, K, V, Bias, BOFF, TQ, TK, TV, TB, TBOFF, O, LSE, TO, TLSE,
                sb_m, sb_n, stb_m, stb_n, Lq, Lk, D, DV, scale,
                HAS_BIAS: tl.constexpr, CAUSAL: tl.constexpr, TANGENT: tl.constexpr,
                HAS_TQ: tl.constexpr, HAS_TK: tl.constexpr, HAS_TV: tl.constexpr, HAS_TB: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                PREC: tl.constexpr, UP: tl.constexpr, ACC: tl.constexpr):
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    row_ok = offs_m < Lq
    q_off = b * Lq * D + offs_m[:, None] * D + offs_d[None, :]
    q_mask = row_ok[:, None] & (offs_d[None, :] < D)
    q = tl.load(Q + q_off, mask=q_mask, other=0.0)
    if TANGENT and HAS_TQ:
        tq = tl.load(TQ + q_off, mask=q_mask, other=0.0)
    if HAS_BIAS:
        boff = tl.load(BOFF + b)
    if TANGENT and HAS_TB:
        tboff = tl.load(TBOFF + b)
    m_i = tl.full([BM], NEG_INF, ACC)
    l_i = tl.zeros([BM], ACC)
    acc = tl.zeros([BM, BDV], ACC)
    mu = tl.zeros([BM], ACC)
    tacc = tl.zeros([BM, BDV], ACC)
    hi = Lk
    if CAUSAL:
        hi = tl.minimum(Lk, (pid_m + 1) * BM)
    for start_n in range(0, hi, BN):
        offs_n = start_n + tl.arange(0, BN)
        col_ok = offs_n < Lk
        k_off = b * Lk * D + offs_n[:, None] * D + offs_d[None, :]
        k_mask = col_ok[:, None] & (offs_d[None, :] < D)
        v_off = b * Lk * DV + offs_n[:, None] * DV + offs_dv[None, :]
        v_mask = col_ok[:, None] & (offs_dv[None, :] < DV)
        k = tl.load(K + k_off, mask=k_mask, other=0.0)
        v = tl.load(V + v_off, mask=v_mask, other=0.0)
        s = _mm(q, tl.trans(k), PREC, UP, ACC) * scale
        sm_mask = row_ok[:, None] & col_ok[None, :]
        if HAS_BIAS:
            s += tl.load(Bias + boff + offs_m[:, None] * sb_m + offs_n[None, :] * sb_n,
                         mask=sm_mask, other=0.0).to(ACC)
        keep = col_ok[None, :]
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= offs_m[:, None])
        s = tl.where(keep, s, NEG_INF)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == NEG_INF, 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _mm(p.to(v.dtype), v, PREC, UP, ACC)
        if TANGENT:
            ds = tl.zeros([BM, BN], ACC)
            if HAS_TQ:
                ds += _mm(tq, tl.trans(k), PREC, UP, ACC) * scale
            if HAS_TK:
                tk = tl.load(TK + k_off, mask=k_mask, other=0.0)
                ds += _mm(q, tl.trans(tk), PREC, UP, ACC) * scale
            if HAS_TB:
                ds += tl.load(TB + tboff + offs_m[:, None] * stb_m + offs_n[None, :] * stb_n,
                              mask=sm_mask, other=0.0).to(ACC)
            pds = tl.where(keep, p * ds, 0.0)
            mu = mu * alpha + tl.sum(pds, 1)
            tacc = tacc * alpha[:, None] + _mm(pds.to(v.dtype), v, PREC, UP, ACC)
            if HAS_TV:
                tv = tl.load(TV + v_off, mask=v_mask, other=0.0)
                tacc += _mm(p.to(tv.dtype), tv, PREC, UP, ACC)
        m_i = m_new
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, NEG_INF, m_i + tl.log(l_safe))
    o_off = b * Lq * DV + offs_m[:, None] * DV + offs_dv[None, :]
    o_mask = row_ok[:, None] & (offs_dv[None, :] < DV)
    tl.store(O + o_off, out.to(O.dtype.element_ty), mask=o_mask)
    tl.store(LSE + b * Lq + offs_m, lse, mask=row_ok)
    if TANGENT:
        dlse = mu / l_safe
        tout = tacc / l_safe[:, None] - dlse[:, None] * out
        tl.store(TO + o_off, tout.to(TO.dtype.element_ty), mask=o_mask)
        tl.store(TLSE + b * Lq + offs_m, dlse, mask=row_ok)


@triton.jit
def _probs_block(q, k, Bias, boff, sb_m, sb_n, lse, offs_m, offs_n, row_ok, col_ok, scale,
                 HAS_BIAS: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr, UP: tl.constexpr,
                 ACC: tl.constexpr):
    """P = exp(S - lse) on one (query block, key block) tile; 0 where a key is removed."""
    s = _mm(q, tl.trans(k), PREC, UP, ACC) * scale
    keep = row_ok[:, None] & col_ok[None, :]
    if HAS_BIAS:
        s += tl.load(Bias + boff + offs_m[:, None] * sb_m + offs_n[None, :] * sb_n,
                     mask=keep, other=0.0).to(ACC)
    if CAUSAL:
        keep = keep & (offs_n[None, :] <= offs_m[:, None])
    lse_safe = tl.where(lse == NEG_INF, float("inf"), lse)
    return tl.where(keep, tl.exp(s - lse_safe[:, None]), 0.0)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, Bias, BOFF, DO, LSE, DELTA, DK, DV_, sb_m, sb_n, Lq, Lk, D, DV, scale,
                     HAS_BIAS: tl.constexpr, CAUSAL: tl.constexpr,
                     BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                     PREC: tl.constexpr, UP: tl.constexpr, ACC: tl.constexpr):
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    col_ok = offs_n < Lk
    k_off = b * Lk * D + offs_n[:, None] * D + offs_d[None, :]
    k_mask = col_ok[:, None] & (offs_d[None, :] < D)
    v_off = b * Lk * DV + offs_n[:, None] * DV + offs_dv[None, :]
    v_mask = col_ok[:, None] & (offs_dv[None, :] < DV)
    k = tl.load(K + k_off, mask=k_mask, other=0.0)
    v = tl.load(V + v_off, mask=v_mask, other=0.0)
    boff = 0
    if HAS_BIAS:
        boff = tl.load(BOFF + b)
    dk = tl.zeros([BN, BD], ACC)
    dv = tl.zeros([BN, BDV], ACC)
    lo = 0
    if CAUSAL:
        lo = (pid_n * BN // BM) * BM
    for start_m in range(lo, Lq, BM):
        offs_m = start_m + tl.arange(0, BM)
        row_ok = offs_m < Lq
        q = tl.load(Q + b * Lq * D + offs_m[:, None] * D + offs_d[None, :],
                    mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
        do = tl.load(DO + b * Lq * DV + offs_m[:, None] * DV + offs_dv[None, :],
                     mask=row_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
        lse = tl.load(LSE + b * Lq + offs_m, mask=row_ok, other=0.0).to(ACC)
        delta = tl.load(DELTA + b * Lq + offs_m, mask=row_ok, other=0.0).to(ACC)
        p = _probs_block(q, k, Bias, boff, sb_m, sb_n, lse, offs_m, offs_n, row_ok, col_ok, scale,
                         HAS_BIAS, CAUSAL, PREC, UP, ACC)
        dv += _mm(tl.trans(p.to(do.dtype)), do, PREC, UP, ACC)
        dp = _mm(do, tl.trans(v), PREC, UP, ACC)
        ds = p * (dp - delta[:, None])
        dk += _mm(tl.trans(ds.to(q.dtype)), q, PREC, UP, ACC)
    tl.store(DK + k_off, (dk * scale).to(DK.dtype.element_ty), mask=k_mask)
    tl.store(DV_ + v_off, dv.to(DV_.dtype.element_ty), mask=v_mask)


@triton.jit
def _bwd_dq_kernel(Q, K, V, Bias, BOFF, DO, LSE, DELTA, DQ, DS, sb_m, sb_n, Lq, Lk, D, DV, scale,
                   HAS_BIAS: tl.constexpr, CAUSAL: tl.constexpr, STORE_DS: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                   PREC: tl.constexpr, UP: tl.constexpr, ACC: tl.constexpr):
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    row_ok = offs_m < Lq
    q_off = b * Lq * D + offs_m[:, None] * D + offs_d[None, :]
    q_mask = row_ok[:, None] & (offs_d[None, :] < D)
    q = tl.load(Q + q_off, mask=q_mask, other=0.0)
    do = tl.load(DO + b * Lq * DV + offs_m[:, None] * DV + offs_dv[None, :],
                 mask=row_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
    lse = tl.load(LSE + b * Lq + offs_m, mask=row_ok, other=0.0).to(ACC)
    delta = tl.load(DELTA + b * Lq + offs_m, mask=row_ok, other=0.0).to(ACC)
    boff = 0
    if HAS_BIAS:
        boff = tl.load(BOFF + b)
    dq = tl.zeros([BM, BD], ACC)
    hi = Lk
    if CAUSAL:
        hi = tl.minimum(Lk, (pid_m + 1) * BM)
    for start_n in range(0, hi, BN):
        offs_n = start_n + tl.arange(0, BN)
        col_ok = offs_n < Lk
        k = tl.load(K + b * Lk * D + offs_n[:, None] * D + offs_d[None, :],
                    mask=col_ok[:, None] & (offs_d[None, :] < D), other=0.0)
        v = tl.load(V + b * Lk * DV + offs_n[:, None] * DV + offs_dv[None, :],
                    mask=col_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
        p = _probs_block(q, k, Bias, boff, sb_m, sb_n, lse, offs_m, offs_n, row_ok, col_ok, scale,
                         HAS_BIAS, CAUSAL, PREC, UP, ACC)
        dp = _mm(do, tl.trans(v), PREC, UP, ACC)
        ds = p * (dp - delta[:, None])
        dq += _mm(ds.to(k.dtype), k, PREC, UP, ACC)
        if STORE_DS:
            tl.store(DS + b * Lq * Lk + offs_m[:, None] * Lk + offs_n[None, :], ds,
                     mask=row_ok[:, None] & col_ok[None, :])
    tl.store(DQ + q_off, (dq * scale).to(DQ.dtype.element_ty), mask=q_mask)


# ---------------------------------------------------------------- host side

def _flat(x, length, width):
    return None if x is None else x.reshape(-1, length, width).contiguous()


def _bias_args(bias, lead, lq, lk, device):
    """(bias expanded to (..., Lq, Lk) without copying, per-batch element offsets, stride of
    a query row, stride of a key): broadcast dims have stride 0."""
    if bias is None:
        return None, None, 0, 0
    full = bias.expand(*lead, lq, lk)
    off = torch.zeros((), dtype=torch.int64, device=device)
    for d, (n, st) in enumerate(zip(lead, full.stride()[:len(lead)])):
        shape = [1] * len(lead)
        shape[d] = n
        off = off + (torch.arange(n, dtype=torch.int64, device=device) * st).reshape(shape)
    return full, off.expand(*lead).reshape(-1).contiguous(), full.stride(-2), full.stride(-1)


def _acc_dtype(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _lse_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _prec(dtype):
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def _upcast(x):
    return x.dtype == torch.bfloat16 and x.device.type == "cpu"     # the interpreter


def _blocks(lq, lk, d, dv):
    """(BM, BN, BD, BDV, num_warps): tiles at least 16 wide (tl.dot's minimum)."""
    bd, bdv = max(16, triton.next_power_of_2(d)), max(16, triton.next_power_of_2(dv))
    big = max(bd, bdv) > 64
    bm = min(64 if big else 128, max(16, triton.next_power_of_2(lq)))
    bn = min(32 if big else 64, max(16, triton.next_power_of_2(lk)))
    return bm, bn, bd, bdv, (8 if big else 4)


def forward(q, k, v, bias, causal, scale, tangents=None):
    """(out, lse), or with tangents = (dq, dk, dv, dbias) (None entries are zero) the jvp
    (out, lse, dout, dlse), all in one pass."""
    *lead, lq, d = q.shape
    lk, dv = k.shape[-2], v.shape[-1]
    nb = math.prod(lead)
    dev = q.device
    out = torch.empty(*lead, lq, dv, dtype=q.dtype, device=dev)
    lse = torch.empty(*lead, lq, dtype=_lse_dtype(q.dtype), device=dev)
    if nb == 0 or lq == 0:
        lse.fill_(NEG_INF)
        out.zero_()
        return (out, lse) if tangents is None else (out, lse, torch.zeros_like(out), torch.zeros_like(lse))
    qf, kf, vf = _flat(q, lq, d), _flat(k, lk, d), _flat(v, lk, dv)
    bfull, boff, sb_m, sb_n = _bias_args(bias, lead, lq, lk, dev)
    tq = tk = tv = tb = tboff = None
    stb_m = stb_n = 0
    tout = tlse = None
    if tangents is not None:
        tq, tk, tv, tb = tangents
        tq, tk, tv = _flat(tq, lq, d), _flat(tk, lk, d), _flat(tv, lk, dv)
        tb, tboff, stb_m, stb_n = _bias_args(tb, lead, lq, lk, dev)
        tout, tlse = torch.empty_like(out), torch.empty_like(lse)
    bm, bn, bd, bdv, warps = _blocks(lq, lk, d, dv)
    if tangents is not None or q.dtype == torch.float64:      # twice the accumulators / 8-byte tiles
        bm = min(bm, 64)
    grid = (triton.cdiv(lq, bm), nb)
    dummy = qf
    _fwd_kernel[grid](
        qf, kf, vf, bfull if bfull is not None else dummy, boff if boff is not None else dummy,
        tq if tq is not None else dummy, tk if tk is not None else dummy,
        tv if tv is not None else dummy, tb if tb is not None else dummy,
        tboff if tboff is not None else dummy,
        out, lse, tout if tout is not None else out, tlse if tlse is not None else lse,
        sb_m, sb_n, stb_m, stb_n, lq, lk, d, dv, float(scale),
        HAS_BIAS=bias is not None, CAUSAL=bool(causal), TANGENT=tangents is not None,
        HAS_TQ=tq is not None, HAS_TK=tk is not None, HAS_TV=tv is not None, HAS_TB=tb is not None,
        BM=bm, BN=bn, BD=bd, BDV=bdv, PREC=_prec(q.dtype), UP=_upcast(q), ACC=_acc_dtype(q.dtype), num_warps=warps)
    return (out, lse) if tangents is None else (out, lse, tout, tlse)


def backward(q, k, v, bias, out, lse, dout, dlse, causal, scale, need_dbias=False):
    """(dq, dk, dv, dS): the gradient of <dout, out> + <dlse, lse> (dlse may be None); dS
    (..., Lq, Lk) is the bias cotangent before summing over bias's broadcast dims."""
    *lead, lq, d = q.shape
    lk, dv = k.shape[-2], v.shape[-1]
    nb = math.prod(lead)
    dev = q.device
    acc_t = _lse_dtype(q.dtype)
    dq, dk, dvv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    ds = torch.zeros(*lead, lq, lk, dtype=acc_t, device=dev) if need_dbias else None
    if nb == 0 or lq == 0 or lk == 0:
        return dq, dk, dvv, ds
    delta = (dout.to(acc_t) * out.to(acc_t)).sum(-1)
    if dlse is not None:
        delta = delta - dlse.to(acc_t)
    qf, kf, vf = _flat(q, lq, d), _flat(k, lk, d), _flat(v, lk, dv)
    dof = _flat(dout.to(q.dtype), lq, dv)
    lsef, deltaf = lse.to(acc_t).reshape(nb, lq).contiguous(), delta.reshape(nb, lq).contiguous()
    bfull, boff, sb_m, sb_n = _bias_args(bias, lead, lq, lk, dev)
    dqf, dkf, dvf = torch.empty_like(qf), torch.empty_like(kf), torch.empty_like(vf)
    bm, bn, bd, bdv, warps = _blocks(lq, lk, d, dv)
    bm, bn = min(bm, 64), min(bn, 64)
    common = dict(HAS_BIAS=bias is not None, CAUSAL=bool(causal), BM=bm, BN=bn, BD=bd, BDV=bdv,
                  PREC=_prec(q.dtype), UP=_upcast(q), ACC=_acc_dtype(q.dtype), num_warps=warps)
    bias_arg = bfull if bfull is not None else qf
    boff_arg = boff if boff is not None else qf
    _bwd_dkdv_kernel[(triton.cdiv(lk, bn), nb)](
        qf, kf, vf, bias_arg, boff_arg, dof, lsef, deltaf, dkf, dvf, sb_m, sb_n, lq, lk, d, dv,
        float(scale), **common)
    _bwd_dq_kernel[(triton.cdiv(lq, bm), nb)](
        qf, kf, vf, bias_arg, boff_arg, dof, lsef, deltaf, dqf, ds if ds is not None else qf,
        sb_m, sb_n, lq, lk, d, dv, float(scale), STORE_DS=need_dbias, **common)
    return dqf.reshape(q.shape), dkf.reshape(k.shape), dvf.reshape(v.shape), ds
