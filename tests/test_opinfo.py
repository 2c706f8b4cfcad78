"""A fast OpInfo check over ~80 ops common in ML code: forward (jit), vjp, jvp and vmap
against PyTorch (tools/opinfo_sweep.py runs the whole database and writes docs/coverage.md).
One sample per op, float64, CPU.
"""
import os
import signal
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
pytest.importorskip("expecttest")
import opinfo_sweep as sweep  # noqa: E402

COMMON = [
    "add", "sub", "mul", "div.no_rounding_mode", "div.floor_rounding", "div.trunc_rounding", "pow", "neg", "abs", "exp", "log", "log1p", "sqrt", "rsqrt", "sin", "cos",
    "tanh", "sigmoid", "erf", "clamp", "where", "maximum", "minimum", "lerp", "addcmul", "addcdiv",
    "sum", "mean", "prod", "amax", "amin", "max.reduction_with_dim", "min.reduction_with_dim", "var", "std",
    "var_mean", "logsumexp", "cumsum", "cumprod", "cummax", "norm", "linalg.vector_norm",
    "matmul", "mm", "bmm", "baddbmm", "addmm", "einsum", "outer", "linalg.cross", "trace",
    "reshape", "view", "permute", "transpose", "squeeze", "unsqueeze", "flatten", "expand", "repeat",
    "repeat_interleave", "cat", "stack", "split", "chunk", "unbind", "flip", "roll", "tril", "triu",
    "diag", "diag_embed", "narrow", "select", "index_select", "gather", "scatter", "scatter_add",
    "scatter_reduce.sum", "scatter_reduce.mean", "index_add", "index_copy", "index_put", "masked_fill",
    "masked_select", "sort", "topk", "argsort", "meshgrid.variadic_tensors", "nan_to_num", "as_strided",
    "softmax", "log_softmax", "nn.functional.gelu", "nn.functional.silu", "nn.functional.mish",
    "nn.functional.softplus", "nn.functional.elu", "nn.functional.leaky_relu", "nn.functional.hardswish",
    "nn.functional.hardtanh", "nn.functional.logsigmoid", "nn.functional.relu",
    "nn.functional.linear", "nn.functional.conv1d", "nn.functional.conv2d", "nn.functional.conv_transpose2d",
    "nn.functional.layer_norm", "nn.functional.group_norm", "nn.functional.batch_norm",
    "nn.functional.instance_norm", "nn.functional.embedding", "nn.functional.max_pool2d",
    "nn.functional.avg_pool2d", "nn.functional.adaptive_avg_pool2d", "nn.functional.interpolate.nearest",
    "nn.functional.interpolate.bilinear", "nn.functional.pixel_shuffle", "nn.functional.pad.constant",
    "nn.functional.scaled_dot_product_attention", "nn.functional.cross_entropy", "nn.functional.nll_loss",
    "nn.functional.mse_loss", "nn.functional.l1_loss", "nn.functional.smooth_l1_loss",
    "nn.functional.huber_loss", "nn.functional.binary_cross_entropy",
    "nn.functional.binary_cross_entropy_with_logits", "nn.functional.kl_div", "nn.functional.one_hot",
    "nn.functional.normalize", "nn.functional.cosine_similarity",
]

# (op, transform) -> reason: known, stated differences
XFAIL: dict = {}


_OPS = None


def _ops():
    global _OPS
    if _OPS is None:
        from torch.testing._internal.common_methods_invocations import op_db
        _OPS = {sweep.op_label(op): op for op in op_db}
    return _OPS


@pytest.fixture(scope="module", autouse=True)
def _alarm():
    old = signal.signal(signal.SIGALRM, sweep._alarm)
    yield
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("name", COMMON)
def test_opinfo_common(name):
    op = _ops().get(name)
    if op is None:
        pytest.skip(f"{name} is not in this torch's op_db")
    result, _ = sweep.sweep_op(op, n_samples=1, timeout=20)
    bad = {t: r for t, r in result.items() if r[0] in ("disagree", "error") and (name, t) not in XFAIL}
    assert not bad, f"{name}: {bad}"
    for t in sweep.TRANSFORMS:
        if (name, t) in XFAIL and result[t][0] in ("native", "fallback"):
            pytest.fail(f"{name} {t} now agrees: remove it from XFAIL")


# The fused C++ CPU backend (soon jit's CPU default) in float32: forward, jit of vjp and of
# jvp, other vmap layouts, forward-over-reverse, and extreme inputs (huge/tiny, zeros, -0.0,
# ties, inf/nan). `python tools/opinfo_sweep.py --backend cpu --dtype float32 ...` runs the
# whole database (docs/coverage_cpu_float32.md).
CPU_FLOAT32 = ["softmax", "log_softmax", "nn.functional.layer_norm", "logsumexp", "amax", "var",
               "cdist", "nn.functional.gelu", "cumsum"]
CPU_TRANSFORMS = ("forward", "jit_vjp", "jit_jvp", "vmap_dims", "hvp", "extreme")


@pytest.mark.parametrize("name", CPU_FLOAT32)
def test_opinfo_cpu_backend_float32(name, monkeypatch):
    op = _ops().get(name)
    if op is None:
        pytest.skip(f"{name} is not in this torch's op_db")
    monkeypatch.setattr(sweep, "BACKEND", "cpu")
    monkeypatch.setenv("FUNCTX_CPU_BLOCK", "1")
    result, _ = sweep.sweep_op(op, n_samples=1, timeout=30, transforms=CPU_TRANSFORMS, want_dtype="float32")
    bad = {t: r for t, r in result.items() if r[0] in ("disagree", "error")}
    assert not bad, f"{name}: {bad}"
    assert any(r[0] == "native" for r in result.values()), result
