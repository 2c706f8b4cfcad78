"""The attention Triton kernels (functx/kernels/attention_triton.py) against the PyTorch
reference (attention_math.py): forward, the one-pass jvp and the backward, with causal and
boolean/additive masks, odd lengths (tail masks), head dims 16/32/64, float64/32/16 and
bfloat16. On the CPU they run in Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1); the `gpu` tests run them on CUDA against torch's SDPA.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import functx
from functx.kernels import attention_math as M
from test_attention import DEV, SDPA, _close, _bias, _loss, _qkv

triton = pytest.importorskip("triton")
from functx.kernels import attention_triton as T  # noqa: E402


TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 8e-2}
KERNEL_CASES = [
    # dtype, causal, bias, Lq, Lk, D, Dv: odd lengths exercise the tail masks
    (torch.float64, False, None, 19, 23, 16, 16),
    (torch.float32, True, "add", 21, 17, 32, 16),
    (torch.float32, False, "bool", 33, 9, 64, 32),
    (torch.float16, True, None, 19, 19, 16, 16),
]
SLOW_KERNEL_CASES = [
    (torch.float64, True, "add", 70, 45, 32, 32),
    (torch.float64, True, "bool", 19, 40, 16, 64),
    (torch.float32, False, "add", 130, 70, 64, 64),
    (torch.float32, True, None, 65, 65, 64, 16),
    (torch.bfloat16, False, "add", 19, 23, 32, 32),
    (torch.float16, False, "bool", 33, 48, 64, 64),
]


def _check_kernels(dtype, causal, bias_kind, lq, lk, d, dv):
    lead = (2, 3)
    q, k, v = _qkv(lead, lq, lk, d, dv, dtype, DEV)
    bias = _bias(bias_kind, lead, lq, lk, dtype, DEV)
    scale, tol = 0.7 / math.sqrt(d), TOL[dtype]
    out, lse = T.forward(q, k, v, bias, causal, scale)
    r_out, r_lse = M.forward(q, k, v, bias, causal, scale)
    _close(out, r_out, tol, "out")
    _close(lse, r_lse, tol, "lse")
    tq, tk, tv = _qkv(lead, lq, lk, d, dv, dtype, DEV, seed=2)
    tb = None if bias_kind != "add" else _bias("add", lead, lq, lk, dtype, DEV, seed=3)
    got = T.forward(q, k, v, bias, causal, scale, (tq, tk, tv, tb))
    want = M.jvp(q, k, v, bias, tq, tk, tv, tb, causal, scale)
    for g, w, name in zip(got, want, ("out", "lse", "dout", "dlse")):
        _close(g, w, 4 * tol, f"jvp {name}")
    dout = torch.randn_like(r_out)
    dlse = torch.randn_like(r_lse)
    got = T.backward(q, k, v, bias, r_out, r_lse, dout, dlse, causal, scale, need_dbias=bias is not None)
    want = M.backward(q, k, v, bias, r_out, r_lse, dout, dlse, causal, scale, need_dbias=bias is not None)
    for g, w, name in zip(got, want, ("dq", "dk", "dv", "dS")):
        _close(g, w, 4 * tol, f"backward {name}")


@pytest.mark.parametrize("case", KERNEL_CASES, ids=str)
def test_kernels_match_reference(case):
    _check_kernels(*case)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_KERNEL_CASES, ids=str)
def test_kernels_match_reference_more(case):
    _check_kernels(*case)


def test_fully_masked_rows_give_zero_like_torch():
    q, k, v = _qkv((1, 2), 5, 6, 16, 16)
    keep = torch.ones(5, 6, dtype=torch.bool)
    keep[1] = False
    bias = torch.zeros(5, 6, dtype=q.dtype).masked_fill(~keep, float("-inf"))[None, None]
    out, lse = T.forward(q, k, v, bias, False, 0.25)
    assert torch.equal(out[:, :, 1], torch.zeros_like(out[:, :, 1])) and torch.isneginf(lse[:, :, 1]).all()
    _close(out, SDPA(q, k, v, attn_mask=keep, scale=0.25), 1e-12, "vs torch")
    dq, dk, dv, _ = T.backward(q, k, v, bias, out, lse, torch.ones_like(out), None, False, 0.25)
    assert torch.isfinite(dq).all() and torch.equal(dq[:, :, 1], torch.zeros_like(dq[:, :, 1]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_kernels_against_torch_sdpa(dtype):
    q, k, v = _qkv((2, 4), 257, 300, 64, 64, dtype, "cuda")
    for causal in (False, True):
        want = SDPA(q.float(), k.float(), v.float(), is_causal=causal)
        _close(T.forward(q, k, v, None, causal, 1 / 8)[0], want, TOL[dtype], f"forward {causal}")
        loss = _loss(lambda q, k, v: SDPA(q, k, v, is_causal=causal))
        got = functx.grad(loss, argnums=(0, 1, 2))(q, k, v)
        ref = torch.func.grad(loss, argnums=(0, 1, 2))(q.float(), k.float(), v.float())
        for g, w in zip(got, ref):
            _close(g, w.to(dtype), 20 * TOL[dtype] * max(1.0, w.abs().max().item()), "grad")
