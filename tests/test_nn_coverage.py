"""Common PyTorch layers, losses and ops under every transform, in float64, against
torch.func (or a Python loop for vmap) as the oracle, and with no opaque fallbacks.

Each case builds (f, args): f(*args) returns a tensor or a tuple of tensors. The checks:
  fwd   functx.jit(f) == f
  vjp   functx.vjp == torch.func.vjp (random cotangent), wrt every float argument
  jvp   functx.jvp == torch.func.jvp (random tangent)
  vmap  functx.vmap(grad of a scalar loss) over a batch of the last argument == a loop
  hvp   forward-over-reverse Hessian-vector product == torch.func's (where meaningful)
Run as a script (`python tests/test_nn_coverage.py`) for a table over all cases.
"""
from __future__ import annotations

import sys

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import functx

D = torch.float64
TOL = dict(atol=1e-6, rtol=1e-6)


def _leaves(tree):
    return [t for t in torch.utils._pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]


def _float_leaves(tree):
    return [t for t in _leaves(tree) if t.dtype.is_floating_point]


def _assert_close(got, want, what):
    got, want = _leaves(got), _leaves(want)
    assert len(got) == len(want), f"{what}: {len(got)} outputs vs {len(want)}"
    for g, w in zip(got, want):
        assert g.shape == w.shape, f"{what}: shape {tuple(g.shape)} vs {tuple(w.shape)}"
        torch.testing.assert_close(g, w, **TOL, msg=lambda m: f"{what}: {m}")


def _diff_args(args):
    """Indices of the arguments with float leaves (the ones we differentiate)."""
    return tuple(i for i, a in enumerate(args) if _float_leaves(a))


def _split(f, args, argnums):
    """f as a function of the differentiated arguments only."""
    def g(*diff):
        full = list(args)
        for i, d in zip(argnums, diff):
            full[i] = d
        return f(*full)
    return g


def _randlike_tree(tree, gen):
    return torch.utils._pytree.tree_map(
        lambda t: torch.randn(t.shape, dtype=t.dtype, generator=gen) if isinstance(t, torch.Tensor)
        and t.dtype.is_floating_point else t, tree)


def _scalar_loss(f, cts):
    """A scalar, nonlinear function of f's outputs (so second derivatives are nonzero)."""
    def loss(*a):
        outs = [o for o in _leaves(f(*a)) if o.dtype.is_floating_point]
        return sum((torch.sin(o) * c).sum() for o, c in zip(outs, cts))
    return loss


def _oracle_jvp(g, primals, tangents):
    """torch.func.jvp; where an ATen op lacks forward AD, J t from reverse mode (the vjp of
    the pullback, which is linear in its cotangent); where that lacks double backward too,
    central differences (float64)."""
    try:
        return torch.func.jvp(g, primals, tangents)[1]
    except (NotImplementedError, RuntimeError):
        pass
    try:
        out, pb = torch.func.vjp(g, *primals)
        ct0 = torch.utils._pytree.tree_map(torch.zeros_like, out)
        _, pbpb = torch.func.vjp(lambda ct: pb(ct), ct0)
        (jt,) = pbpb(tuple(tangents))
        return jt
    except (NotImplementedError, RuntimeError):
        pass
    eps = 1e-6
    shift = lambda s: torch.utils._pytree.tree_map(lambda p, t: p + s * t, primals, tuple(tangents))  # noqa: E731
    hi, lo = g(*shift(eps)), g(*shift(-eps))
    return torch.utils._pytree.tree_map(lambda a, b: (a - b) / (2 * eps), hi, lo)


def run_checks(f, args, modes=("fwd", "vjp", "jvp", "vmap", "hvp"), native=True, nondiff=()):
    gen = torch.Generator().manual_seed(1)
    argnums = tuple(i for i in _diff_args(args) if i not in nondiff)
    diff = tuple(args[i] for i in argnums)
    g = _split(f, args, argnums)
    want = f(*args)      # first: builds the (memoized) constant targets/indices outside transforms
    if native:
        fb = functx.explain(f)(*args).fallbacks
        assert fb == [], f"opaque fallbacks: {fb}"
    if "fwd" in modes:
        _assert_close(functx.jit(f)(*args), want, "jit forward")
    cts = [torch.randn(o.shape, dtype=o.dtype, generator=gen) for o in _leaves(want)
           if o.dtype.is_floating_point]
    if "vjp" in modes:
        out1, pb1 = functx.vjp(g, *diff)
        out2, pb2 = torch.func.vjp(g, *diff)
        _assert_close(out1, out2, "vjp primal out")
        ct_tree = torch.utils._pytree.tree_map(
            lambda o: torch.randn(o.shape, dtype=o.dtype, generator=gen) if o.dtype.is_floating_point
            else None, out2)
        _assert_close(pb1(ct_tree), pb2(ct_tree), "vjp")
    if "jvp" in modes:
        tans = _randlike_tree(diff, gen)
        _, t1 = functx.jvp(g, diff, tans)
        _assert_close(t1, _oracle_jvp(g, diff, tans), "jvp")
    loss = _scalar_loss(f, cts)
    lg = _split(loss, args, argnums)
    if "vmap" in modes:
        # per-example gradients: vmap over a batch of the last argument
        last = args[-1]
        if isinstance(last, torch.Tensor) and last.dtype.is_floating_point:
            xb = torch.stack([last, last * 0.9 + 0.05, last.flip(-1) if last.ndim else -last])
            pre = args[:-1]
            nd = len(argnums)

            def per_example(x, fn):
                return fn(lambda *d: lg(*d[:nd - 1], x), argnums=tuple(range(nd)))(
                    *[a for i, a in enumerate(pre) if i in argnums])
            got = functx.vmap(lambda x: functx.grad(lambda *d: lg(*d), argnums=tuple(range(nd)))(
                *[a for i, a in enumerate(pre) if i in argnums], x))(xb)
            want_v = [torch.func.grad(lg, argnums=tuple(range(nd)))(
                *[a for i, a in enumerate(pre) if i in argnums], xb[k]) for k in range(xb.shape[0])]
            want_v = torch.utils._pytree.tree_map(lambda *ts: torch.stack(ts), *want_v)
            _assert_close(got, want_v, "vmap(grad)")
    if "hvp" in modes:
        tans = _randlike_tree(diff, gen)
        nd = len(diff)
        _, h1 = functx.jvp(functx.grad(lg, argnums=tuple(range(nd))), diff, tans)
        _assert_close(h1, _oracle_jvp(torch.func.grad(lg, argnums=tuple(range(nd))), diff, tans),
                      "hvp (jvp of grad)")


# ---------------------------------------------------------------- cases

def bn_train_case(make, x_shape):
    """BatchNorm in training mode with its running stats passed in (so jit can trace their
    update; plain module buffers can only be updated eagerly)."""
    def build():
        torch.manual_seed(0)
        m = make().double()
        params = {k: v.detach().clone() for k, v in m.named_parameters()}
        stats = {k: v.detach().clone() for k, v in m.named_buffers() if v.dtype.is_floating_point}
        count = m.num_batches_tracked.clone()
        x = torch.randn(x_shape, dtype=D)
        return (lambda p, s, x: torch.func.functional_call(
            m, {**p, **{k: v.clone() for k, v in s.items()}, "num_batches_tracked": count.clone()}, (x,)),
            (params, stats, x), (1,))
    return build


def module_case(make, x_shape, train=True, int_input=None):
    def build():
        torch.manual_seed(0)
        m = make().double()
        m.train(train)
        params = {k: v.detach() for k, v in m.named_parameters()}
        if int_input is not None:
            x = torch.randint(0, int_input, x_shape)
        else:
            x = torch.randn(x_shape, dtype=D)
        return (lambda p, x: torch.func.functional_call(m, p, (x,))), (params, x)
    return build


def fn_case(fn, *shapes, int_args=None):
    def build():
        torch.manual_seed(0)
        args = []
        for i, s in enumerate(shapes):
            if isinstance(s, torch.Tensor):
                args.append(s)
            else:
                args.append(torch.randn(s, dtype=D))
        return fn, tuple(args)
    return build


import functools


@functools.lru_cache(maxsize=None)
def _targets(n, c):
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(3))


@functools.lru_cache(maxsize=None)
def _probs(*shape):
    return torch.softmax(torch.randn(*shape, dtype=D, generator=torch.Generator().manual_seed(4)), -1)


@functools.lru_cache(maxsize=None)
def _mask(*shape):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(5)) > 0.5


@functools.lru_cache(maxsize=None)
def _idx(high, *shape):
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(6))


ALL = ("fwd", "vjp", "jvp", "vmap", "hvp")
NO_VMAP = ("fwd", "vjp", "jvp", "hvp")

CASES = {
    # layers
    "Linear": (module_case(lambda: nn.Linear(5, 3), (4, 5)), ALL),
    "Conv1d": (module_case(lambda: nn.Conv1d(3, 4, 3, stride=2, padding=1), (2, 3, 9)), ALL),
    "Conv2d": (module_case(lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2), (2, 4, 5, 5)), ALL),
    "Conv2d_same": (module_case(lambda: nn.Conv2d(2, 3, 4, padding="same", dilation=1), (1, 2, 6, 6)), ALL),
    "Conv3d": (module_case(lambda: nn.Conv3d(2, 3, 3, stride=(1, 2, 1), dilation=(1, 1, 2)), (1, 2, 5, 5, 6)),
               ALL),
    "ConvTranspose1d": (module_case(lambda: nn.ConvTranspose1d(3, 4, 3, stride=2, output_padding=1),
                                    (2, 3, 5)), ALL),
    "ConvTranspose2d": (module_case(lambda: nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, groups=2),
                                    (2, 4, 4, 3)), ALL),
    # (vmap: per-example batch statistics can't update unbatched running stats; torch.func errors too)
    "BatchNorm1d_train": (bn_train_case(lambda: nn.BatchNorm1d(3), (6, 3)), NO_VMAP),
    "BatchNorm2d_train": (bn_train_case(lambda: nn.BatchNorm2d(3), (4, 3, 3, 3)), NO_VMAP),
    "BatchNorm2d_eval": (module_case(lambda: nn.BatchNorm2d(3), (2, 3, 3, 3), train=False), ALL),
    "LayerNorm": (module_case(lambda: nn.LayerNorm(5), (3, 5)), ALL),
    "GroupNorm": (module_case(lambda: nn.GroupNorm(2, 4), (2, 4, 3, 3)), ALL),
    "InstanceNorm2d": (module_case(lambda: nn.InstanceNorm2d(3, affine=True), (2, 3, 4, 4)), ALL),
    "Embedding": (module_case(lambda: nn.Embedding(7, 4), (3, 5), int_input=7), NO_VMAP),
    "MultiheadAttention": (module_case(lambda: _SelfAttn(8, 2), (2, 5, 8)), ALL),
    "TransformerEncoderLayer_eval": (module_case(lambda: nn.TransformerEncoderLayer(
        8, 2, 16, dropout=0.0, batch_first=True), (2, 4, 8), train=False), ALL),
    "TransformerEncoderLayer_train_nodrop": (module_case(lambda: nn.TransformerEncoderLayer(
        8, 2, 16, dropout=0.0, batch_first=True, norm_first=True), (2, 4, 8)), ALL),
    "MaxPool1d": (module_case(lambda: nn.MaxPool1d(3, stride=2), (2, 3, 9)), ALL),
    "MaxPool2d": (module_case(lambda: nn.MaxPool2d(2), (2, 3, 6, 6)), ALL),
    "MaxPool2d_pad": (module_case(lambda: nn.MaxPool2d(3, stride=2, padding=1), (1, 2, 7, 6)), ALL),
    "AvgPool2d": (module_case(lambda: nn.AvgPool2d(3, stride=2, padding=1), (2, 3, 6, 7)), ALL),
    "AvgPool2d_nopadcount": (module_case(lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False,
                                                              ceil_mode=True), (1, 2, 6, 7)), ALL),
    "AdaptiveAvgPool2d": (module_case(lambda: nn.AdaptiveAvgPool2d((2, 3)), (2, 3, 5, 7)), ALL),
    "AdaptiveAvgPool2d_1": (module_case(lambda: nn.AdaptiveAvgPool2d(1), (2, 3, 5, 4)), ALL),
    "Upsample_nearest": (module_case(lambda: nn.Upsample(scale_factor=2, mode="nearest"), (1, 2, 3, 4)), ALL),
    "Upsample_bilinear": (module_case(lambda: nn.Upsample(scale_factor=2, mode="bilinear"), (1, 2, 3, 4)), ALL),
    "Upsample_bilinear_ac": (module_case(lambda: nn.Upsample(size=(5, 7), mode="bilinear", align_corners=True),
                                         (1, 2, 3, 4)), ALL),
    # scale factors where an output dim keeps its input size (or, 2-D nearest, doubles): eager
    # ignores the scale there, torch._decomp's decompositions did not (lowerings/nn.py)
    "interpolate_linear_sf_same_size": (fn_case(lambda x: F.interpolate(x, scale_factor=1.1, mode="linear"),
                                                (1, 2, 7)), ALL),
    "interpolate_bilinear_sf_one_dim_same": (fn_case(lambda x: F.interpolate(x, scale_factor=4 / 3, mode="bilinear"),
                                                     (1, 2, 7, 2)), ALL),
    "interpolate_trilinear_sf": (fn_case(lambda x: F.interpolate(x, scale_factor=(1.2, 2.5, 1.4), mode="trilinear"),
                                         (1, 1, 3, 2, 2)), ALL),
    "interpolate_nearest2d_sf_double": (fn_case(lambda x: F.interpolate(x, scale_factor=(2.3, 1.7), mode="nearest"),
                                                (1, 2, 3, 5)), ALL),
    "PixelShuffle": (module_case(lambda: nn.PixelShuffle(2), (1, 8, 2, 3)), ALL),
    # activations
    **{f"act_{n}": (fn_case(fn, (4, 5)), ALL) for n, fn in {
        "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu,
        "mish": F.mish, "softplus": F.softplus, "softplus_beta": lambda x: F.softplus(x, beta=2.0, threshold=1.0),
        "elu": F.elu, "leaky_relu": lambda x: F.leaky_relu(x, 0.1), "hardswish": F.hardswish,
        "hardtanh": F.hardtanh, "logsigmoid": F.logsigmoid, "softmax": lambda x: F.softmax(x, -1),
        "log_softmax": lambda x: F.log_softmax(x, 0), "relu6": F.relu6, "selu": F.selu, "celu": F.celu,
        "hardsigmoid": F.hardsigmoid, "tanhshrink": F.tanhshrink, "softsign": F.softsign,
    }.items()},
    # losses
    "cross_entropy": (fn_case(lambda x: F.cross_entropy(x, _targets(4, 5)), (4, 5)), ALL),
    "cross_entropy_ls": (fn_case(lambda x: F.cross_entropy(x, _targets(4, 5), label_smoothing=0.1), (4, 5)), ALL),
    "cross_entropy_probs": (fn_case(lambda x: F.cross_entropy(x, _probs(4, 5), label_smoothing=0.2), (4, 5)), ALL),
    "cross_entropy_weight_ignore": (fn_case(lambda x: F.cross_entropy(
        x, torch.tensor([0, 4, -100, 2]), weight=torch.linspace(0.5, 1.5, 5, dtype=D)), (4, 5)), ALL),
    "nll_loss": (fn_case(lambda x: F.nll_loss(F.log_softmax(x, -1), _targets(4, 5)), (4, 5)), ALL),
    "mse_loss": (fn_case(F.mse_loss, (3, 4), (3, 4)), ALL),
    "l1_loss": (fn_case(F.l1_loss, (3, 4), (3, 4)), ALL),
    "smooth_l1_loss": (fn_case(lambda a, b: F.smooth_l1_loss(a, b, beta=0.5), (3, 4), (3, 4)), ALL),
    "huber_loss": (fn_case(lambda a, b: F.huber_loss(a, b, delta=0.7), (3, 4), (3, 4)), ALL),
    "bce": (fn_case(lambda x: F.binary_cross_entropy(torch.sigmoid(x), _probs(3, 4)), (3, 4)), ALL),
    "bce_with_logits": (fn_case(lambda x: F.binary_cross_entropy_with_logits(
        x, _probs(3, 4), pos_weight=torch.linspace(1, 2, 4, dtype=D)), (3, 4)), ALL),
    # targets that end early (-1): torch._decomp's decomposition is wrong there (nn.py)
    "multilabel_margin": (fn_case(lambda x: F.multilabel_margin_loss(x, torch.tensor(
        [[0, 3, -1, 0], [1, -1, 0, 0], [2, 1, 0, -1]])), (3, 4)), ALL),
    "multilabel_margin_1d_none": (fn_case(lambda x: F.multilabel_margin_loss(
        x, torch.tensor([2, 0, -1, 1]), reduction="none"), (4,)), ALL),
    "kl_div": (fn_case(lambda x: F.kl_div(F.log_softmax(x, -1), _probs(3, 4), reduction="batchmean"), (3, 4)), ALL),
    # attention
    "sdpa": (fn_case(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), (2, 3, 4), (2, 5, 4), (2, 5, 4)), ALL),
    "sdpa_causal": (fn_case(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                            (2, 4, 4), (2, 4, 4), (2, 4, 4)), ALL),
    "sdpa_boolmask": (fn_case(lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, attn_mask=torch.tril(torch.ones(3, 5, dtype=torch.bool))), (2, 3, 4), (2, 5, 4), (2, 5, 4)), ALL),
    "sdpa_floatmask": (fn_case(lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, attn_mask=torch.linspace(-1, 1, 15, dtype=D).reshape(3, 5)), (2, 3, 4), (2, 5, 4), (2, 5, 4)), ALL),
    # tensor ops
    "logsumexp": (fn_case(lambda x: torch.logsumexp(x, 1), (3, 4)), ALL),
    "cumprod": (fn_case(lambda x: torch.cumprod(x, 1), (3, 4)), ALL),
    "cummax": (fn_case(lambda x: torch.cummax(x, 1)[0], (3, 4)), ALL),
    "cummin": (fn_case(lambda x: torch.cummin(x, 0)[0], (3, 4)), ALL),
    "norm": (fn_case(lambda x: x.norm(), (3, 4)), ALL),
    "vector_norm_dim": (fn_case(lambda x: torch.linalg.vector_norm(x, 3, dim=1), (3, 4)), ALL),
    "var_std": (fn_case(lambda x: (x.var(0), x.std(1, unbiased=False)), (3, 4)), ALL),
    "var_mean": (fn_case(lambda x: torch.var_mean(x, 1), (3, 4)), ALL),
    "einsum": (fn_case(lambda a, b: torch.einsum("bij,bjk->bik", a, b), (2, 3, 4), (2, 4, 5)), ALL),
    "matmul_bcast": (fn_case(torch.matmul, (2, 1, 3, 4), (5, 4, 2)), ALL),
    "matmul_vec": (fn_case(torch.matmul, (3, 4), (4,)), ALL),
    "bmm": (fn_case(torch.bmm, (2, 3, 4), (2, 4, 5)), ALL),
    "baddbmm": (fn_case(lambda c, a, b: torch.baddbmm(c, a, b, beta=0.5, alpha=2.0), (2, 3, 5), (2, 3, 4),
                        (2, 4, 5)), ALL),
    "outer": (fn_case(torch.outer, (3,), (4,)), ALL),
    "cross": (fn_case(lambda a, b: torch.linalg.cross(a, b), (4, 3), (4, 3)), ALL),
    "trace": (fn_case(torch.trace, (4, 4)), ALL),
    "tril_triu": (fn_case(lambda x: (torch.tril(x, -1), torch.triu(x, 1)), (4, 5)), ALL),
    "diag": (fn_case(lambda x, v: (torch.diag(x), torch.diag(v, 1)), (4, 4), (3,)), ALL),
    "diag_embed": (fn_case(lambda x: torch.diag_embed(x), (2, 3)), ALL),
    "roll": (fn_case(lambda x: torch.roll(x, (1, -2), (0, 1)), (3, 4)), ALL),
    "repeat": (fn_case(lambda x: x.repeat(2, 1, 3), (3, 4)), ALL),
    "repeat_interleave": (fn_case(lambda x: torch.repeat_interleave(x, 2, dim=1), (3, 4)), ALL),
    "stack_cat_split": (fn_case(lambda a, b: [t * (i + 1) for i, t in enumerate(
        torch.split(torch.cat([torch.stack([a, b]), a[None]]), [1, 2]) + torch.chunk(a, 2, 1)
        + torch.unbind(b, 1))], (3, 4), (3, 4)), ALL),
    "gather": (fn_case(lambda x: torch.gather(x, 1, _idx(4, 3, 6)), (3, 4)), ALL),
    "scatter_src": (fn_case(lambda x, s: torch.scatter(x, 1, torch.tensor([[0, 1], [2, 3], [1, 0]]), s),
                            (3, 4), (3, 2)), ALL),
    "scatter_value": (fn_case(lambda x: torch.scatter(x, 0, torch.tensor([[0, 1, 2, 0]]), 1.5), (3, 4)), ALL),
    "scatter_add": (fn_case(lambda x, s: torch.scatter_add(x, 1, _idx(4, 3, 5), s), (3, 4), (3, 5)), ALL),
    "scatter_reduce_sum": (fn_case(lambda x, s: torch.scatter_reduce(x, 1, _idx(4, 3, 5), s, "sum"),
                                   (3, 4), (3, 5)), ALL),
    "scatter_reduce_mean": (fn_case(lambda x, s: torch.scatter_reduce(x, 1, _idx(4, 3, 5), s, "mean",
                                                                      include_self=False), (3, 4), (3, 5)), ALL),
    "scatter_reduce_amax": (fn_case(lambda x, s: torch.scatter_reduce(x, 1, _idx(4, 3, 5), s, "amax"),
                                    (3, 4), (3, 5)), ALL),
    "index_add": (fn_case(lambda x, s: x.index_add(0, torch.tensor([0, 2, 0]), s, alpha=2.0), (3, 4), (3, 4)), ALL),
    "index_copy": (fn_case(lambda x, s: x.index_copy(1, torch.tensor([3, 0]), s), (3, 4), (3, 2)), ALL),
    "index_select": (fn_case(lambda x: x.index_select(1, torch.tensor([3, 0, 0])), (3, 4)), ALL),
    "masked_fill": (fn_case(lambda x: x.masked_fill(_mask(3, 4), -1.0), (3, 4)), ALL),
    "masked_select": (fn_case(lambda x: torch.masked_select(x, _mask(3, 4)), (3, 4)), ("vjp", "jvp", "hvp")),
    "where": (fn_case(lambda x, y: torch.where(x > 0, x, y), (3, 4), (3, 4)), ALL),
    "clamp": (fn_case(lambda x: torch.clamp(x, -0.5, 0.5), (3, 4)), ALL),
    "clamp_tensor": (fn_case(lambda x, lo: torch.clamp(x, min=lo), (3, 4), (4,)), ALL),
    "topk": (fn_case(lambda x: torch.topk(x, 2, dim=1)[0], (3, 4)), ALL),
    "sort": (fn_case(lambda x: torch.sort(x, 0, descending=True)[0], (3, 4)), ALL),
    "argsort_gather": (fn_case(lambda x: torch.gather(x, 1, torch.argsort(x, 1)), (3, 4)), ALL),
    "meshgrid": (fn_case(lambda a, b: [t * 2 for t in torch.meshgrid(a, b, indexing="ij")], (3,), (4,)), ALL),
    "arange_code": (fn_case(lambda x: x * torch.arange(x.shape[-1], dtype=x.dtype) + torch.arange(3.0)[:, None],
                            (3, 4)), ALL),
    "one_hot": (fn_case(lambda x: x @ F.one_hot(torch.tensor([0, 2, 1, 2]), 3).to(x.dtype), (2, 4)), ALL),
    "nan_to_num": (fn_case(lambda x: torch.nan_to_num(torch.log(x), neginf=-5.0), (3, 4)), ALL),
    "lerp": (fn_case(lambda a, b, w: torch.lerp(a, b, w), (3, 4), (3, 4), (3, 4)), ALL),
    "addcmul_addcdiv": (fn_case(lambda a, b, c: (torch.addcmul(a, b, c, value=0.5),
                                                 torch.addcdiv(a, b, c.exp(), value=2.0)), (3, 4), (3, 4), (3, 4)),
                        ALL),
    "flatten_unflatten": (fn_case(lambda x: x.flatten(1).unflatten(1, (2, 6)).movedim(0, 2), (3, 4, 3)), ALL),
    "amax_min": (fn_case(lambda x: (x.amax(1), x.min(0).values, x.max()), (3, 4)), ALL),
    "prod": (fn_case(lambda x: x.prod(1), (3, 4)), ALL),
    "softmax_temp": (fn_case(lambda x: torch.softmax(x / 0.5, dim=0), (3, 4)), ALL),
    "index_put": (fn_case(lambda x, v: x.index_put((torch.tensor([0, 2]),), v, accumulate=True), (3, 4), (2, 4)),
                  ALL),
    "setitem": (fn_case(lambda x, v: _setitem(x, v), (3, 4), (3,)), ALL),
    "unfold": (fn_case(lambda x: x.unfold(1, 2, 1), (3, 5)), ALL),
    "F_unfold": (fn_case(lambda x: F.unfold(x, 2, padding=1), (1, 2, 3, 3)), ALL),
    "F_pad_reflect": (fn_case(lambda x: F.pad(x, (1, 2), mode="reflect"), (2, 3, 5)), ALL),
    "F_pad_replicate": (fn_case(lambda x: F.pad(x, (1, 2, 2, 0), mode="replicate"), (1, 2, 3, 5)), ALL),
    "F_normalize": (fn_case(lambda x: F.normalize(x, dim=1), (3, 4)), ALL),
    "cosine_similarity": (fn_case(lambda a, b: F.cosine_similarity(a, b, dim=1), (3, 4), (3, 4)), ALL),
    "cdist": (fn_case(lambda a, b: torch.cdist(a, b), (3, 4), (5, 4)), ALL),
    "std_mean_keepdim": (fn_case(lambda x: torch.std_mean(x, (0, 2), keepdim=True), (2, 3, 4)), ALL),
    "logcumsumexp": (fn_case(lambda x: torch.logcumsumexp(x, 1), (3, 4)), ALL),
    "atan2_hypot": (fn_case(lambda a, b: (torch.atan2(a, b), torch.hypot(a, b)), (3, 4), (3, 4)), ALL),
}


def _setitem(x, v):
    y = x.clone()
    y[:, 1] = v
    y[0, 2:] *= 2
    return y


class _SelfAttn(nn.Module):
    def __init__(self, e, h):
        super().__init__()
        self.mha = nn.MultiheadAttention(e, h, batch_first=True)

    def forward(self, x):
        out, w = self.mha(x, x, x, need_weights=True)
        return out, w


# ops whose vjp/jvp legitimately go through the opaque fallback (reason each)
NOT_NATIVE = {
    "scatter_reduce_amax": "scatter_reduce with amax/amin/prod has no native lowering (opaque, torch.func rules)",
}


def _run_case(build, modes, native):
    f, args, *nondiff = build()
    run_checks(f, args, modes, native=native, nondiff=nondiff[0] if nondiff else ())


@pytest.mark.parametrize("name", list(CASES))
def test_case(name):
    build, modes = CASES[name]
    _run_case(build, modes, name not in NOT_NATIVE)


def test_masked_select_jit_error():
    def f(x):
        return torch.masked_select(x, x > 0)
    with pytest.raises(functx.FunctxError, match="masked_select|nonzero|data-dependent|concrete"):
        functx.jit(f)(torch.randn(3, 4, dtype=D))


def test_batchnorm_train_updates_running_stats_and_grads():
    """Plain module buffers are updated eagerly (as torch.func does); reference: autograd."""
    torch.manual_seed(0)
    m = nn.BatchNorm2d(3).double()
    ref = nn.BatchNorm2d(3).double()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(4, 3, 2, 2, dtype=D)
    params = {k: v.detach() for k, v in m.named_parameters()}

    def loss(p, x):
        return torch.func.functional_call(m, p, (x,)).pow(2).sum()
    g = functx.grad(loss)(params, x)
    ref(x).pow(2).sum().backward()
    _assert_close(g, {k: v.grad for k, v in ref.named_parameters()}, "batchnorm grad")
    torch.testing.assert_close(m.running_mean, ref.running_mean)
    torch.testing.assert_close(m.running_var, ref.running_var)
    assert int(m.num_batches_tracked) == int(ref.num_batches_tracked) == 1
    # under jit, the module loss closes over is tracked: its buffers are arguments while it
    # trains, so the running statistics update as eager torch's do (was: an error)
    out = functx.jit(loss)(params, x)
    ref_out = ref(x).pow(2).sum()
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(m.running_mean, ref.running_mean)
    assert int(m.num_batches_tracked) == int(ref.num_batches_tracked) == 2


def test_dropout_train_grad_matches_mask():
    torch.manual_seed(0)
    x = torch.randn(50, 40, dtype=D)

    def f(x):
        return F.dropout(x, 0.3, training=True)
    out, pb = functx.vjp(f, x)
    ct = torch.randn_like(x)
    (g,) = pb(ct)
    keep = out != 0
    assert 0.5 < keep.double().mean() < 0.9
    torch.testing.assert_close(g, torch.where(keep, ct / 0.7, torch.zeros_like(ct)))
    torch.testing.assert_close(out, torch.where(keep, x / 0.7, torch.zeros_like(x)))
    assert functx.explain(f)(x).fallbacks == []


def test_conv_block_no_fallbacks_and_hessian():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.SiLU()).double()
    x = torch.randn(1, 2, 4, 4, dtype=D)
    params = {k: v.detach() for k, v in m.named_parameters()}
    assert functx.explain(lambda p, x: functx.functional_call(m, p, (x,)))(params, x).fallbacks == []

    def f(x):
        return functx.functional_call(m, params, (x,)).sin().sum()

    def fr(x):
        return torch.func.functional_call(m, params, (x,)).sin().sum()
    torch.testing.assert_close(functx.hessian(f)(x), torch.func.hessian(fr)(x), **TOL)


if __name__ == "__main__":
    names = sys.argv[1:] or list(CASES)
    bad = 0
    for n in names:
        build, modes = CASES[n]
        try:
            _run_case(build, modes, n not in NOT_NATIVE)
            print(f"{n:40s} ok")
        except Exception as e:  # noqa: BLE001
            bad += 1
            print(f"{n:40s} FAIL {type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}")
    print(f"{bad} failing of {len(names)}")


def test_hardtanh_and_relu6_derivatives_at_the_boundaries_match_torch():
    import torch.nn.functional as F
    x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 6.0, 7.0, float("nan")], dtype=torch.float64)
    for fn in (lambda x: F.hardtanh(x).sum(), lambda x: F.relu6(x).sum(),
               lambda x: F.hardtanh(x, -0.5, 2.0).sum()):
        torch.testing.assert_close(functx.grad(fn)(x), torch.func.grad(fn)(x), equal_nan=True)
        torch.testing.assert_close(functx.jit(fn)(x), fn(x), equal_nan=True)
    xs = x[:-1].reshape(7, 1)
    torch.testing.assert_close(functx.vmap(functx.grad(lambda v: F.relu6(v).sum()))(xs),
                               torch.func.vmap(torch.func.grad(lambda v: F.relu6(v).sum()))(xs))


def test_global_adaptive_max_pool_sends_the_derivative_to_torchs_index_at_ties():
    # AdaptiveMaxPool(1) after ReLU or on saturated pixels: torch's kernel sends the whole
    # derivative to the first maximum, the index it returns (torch._decomp's amax split it)
    import torch.nn.functional as F
    x = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0], [2.0, 2.0, -1.0, 2.0, 2.0]], dtype=torch.float64)
    for f in (lambda t: F.adaptive_max_pool1d(t[None], 1)[0], lambda t: F.adaptive_max_pool2d(t[None, None], 1),
              lambda t: F.adaptive_max_pool3d(t[None, None, None], (1, 1, 1)),
              lambda t: F.adaptive_max_pool2d(t.reshape(1, 2, 5, 1), 1, return_indices=True)[0]):
        loss = lambda t: (f(t) * torch.linspace(1, 2, f(x).numel(), dtype=torch.float64).reshape(f(x).shape)).sum()  # noqa: E731
        want = torch.func.grad(loss)(x)
        for got in (functx.grad(loss)(x), functx.jit(functx.grad(loss))(x)):
            torch.testing.assert_close(got, want)
    g = lambda t: F.adaptive_max_pool2d(t, 1, return_indices=True)  # noqa: E731
    for got, want in zip(functx.vmap(g)(x.reshape(2, 1, 1, 5)), torch.func.vmap(g)(x.reshape(2, 1, 1, 5))):
        torch.testing.assert_close(got, want)


def test_binary_cross_entropy_of_saturated_probabilities_has_torchs_finite_derivative():
    # sigmoid(40) is 1.0: torch clamps the logs for the value and the denominator
    # x (1 - x) >= 1e-12 for the derivative; differentiating the clamped decomposition gave nan
    import torch.nn.functional as F
    z = torch.tensor([40.0, -40.0, 0.3, -2.0, 30.0], dtype=torch.float64)
    target = torch.tensor([0.0, 1.0, 1.0, 0.25, 1.0], dtype=torch.float64)
    weight = torch.linspace(0.5, 2.0, 5, dtype=torch.float64)
    for reduction in ("mean", "none"):
        def loss(z):
            out = F.binary_cross_entropy(torch.sigmoid(z), target, weight=weight, reduction=reduction)
            return (out * torch.arange(1.0, 6.0, dtype=torch.float64)).sum() if reduction == "none" else out
        torch.testing.assert_close(functx.jit(loss)(z), loss(z))
        want = torch.func.grad(loss)(z)
        for got in (functx.grad(loss)(z), functx.jit(functx.grad(loss))(z), functx.vmap(functx.grad(loss))(z[None])[0]):
            torch.testing.assert_close(got, want)
    p = torch.tensor([0.0, 1.0, 1e-20, 0.3], dtype=torch.float64)       # at and near the ends
    loss = lambda p: F.binary_cross_entropy(p, target[:4], reduction="sum")  # noqa: E731
    torch.testing.assert_close(functx.grad(loss)(p), torch.func.grad(loss)(p))
    assert torch.isfinite(functx.hessian(loss)(p)).all()


@pytest.mark.parametrize("ord_", [2, 1, 3, 0.5, float("inf"), float("-inf"), 0, -1])
def test_vector_norm_matches_torch_including_the_subgradient_at_zero(ord_):
    x = torch.tensor([[0.0, 1.0, -2.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.5, -0.25, 3.0, 1.0]],
                     dtype=torch.float64)
    for dim in (None, 1):
        f = lambda x: torch.linalg.vector_norm(x, ord_, dim).sum()  # noqa: E731
        torch.testing.assert_close(functx.jit(f)(x), f(x))
        torch.testing.assert_close(functx.grad(f)(x), torch.func.grad(f)(x))
    z = torch.zeros(3, dtype=torch.float64)
    torch.testing.assert_close(functx.grad(lambda x: x.norm())(z), torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("name", ["std_of_constant", "atan2_at_origin", "sinc_at_zero", "hardswish", "hardsigmoid"])
def test_derivatives_at_edge_points_match_torch(name):
    D = torch.float64
    edge = torch.tensor([-3.0, 3.0, 0.0, -4.0, 5.0, 1.5], dtype=D)
    f, x = {
        "std_of_constant": (lambda x: (torch.ones(3, dtype=D) * x[0]).std() + x.std(), edge),
        "atan2_at_origin": (lambda x: torch.atan2(x, x).sum(), torch.zeros(3, dtype=D)),
        "sinc_at_zero": (lambda x: torch.sinc(x).sum(), edge),
        "hardswish": (lambda x: F.hardswish(x).sum(), edge),
        "hardsigmoid": (lambda x: F.hardsigmoid(x).sum(), edge),
    }[name]
    torch.testing.assert_close(functx.grad(f)(x), torch.func.grad(f)(x))
    torch.testing.assert_close(functx.jit(functx.grad(f))(x), torch.func.grad(f)(x))
    torch.testing.assert_close(functx.jit(f)(x), f(x))


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_batchnorm_train_under_vmap_with_unbatched_buffers_raises(jit):
    """Per-sample grads of a BatchNorm model in training mode, its buffers passed unbatched:
    each example's statistics would update one running_mean, which torch.func refuses too.
    The error names the cause (under jit it used to be a misleading leaked-tracer error)."""
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).double().train()
    params = {k: v.detach() for k, v in m.named_parameters()}
    bufs = {k: v.clone() for k, v in m.named_buffers()}

    def loss(p, b, x):
        return functx.func.functional_call(m, (p, b), (x,)).pow(2).sum()
    f = functx.vmap(functx.grad(loss), in_axes=(None, None, 0))
    with pytest.raises(functx.FunctxError, match="under vmap.*not batched"):
        (functx.jit(f) if jit else f)(params, bufs, torch.randn(5, 2, 3, dtype=D))


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_batchnorm_train_ensemble_updates_stacked_buffers(jit):
    """An ensemble under vmap with stacked (batched) buffers updates each member's running
    statistics, in place in the buffers passed, as each module would (reference: the modules)."""
    import copy
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).double().train() for _ in range(3)]
    p, b = functx.func.stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.randn(3, 8, 3, dtype=D)
    f = functx.vmap(lambda p, b, x: functx.func.functional_call(base, (p, b), (x,)))
    out = (functx.jit(f) if jit else f)(p, b, x)
    ref = torch.stack([m(x[i]) for i, m in enumerate(models)])
    torch.testing.assert_close(out, ref.detach())
    torch.testing.assert_close(b["1.running_mean"], torch.stack([m[1].running_mean for m in models]))
    torch.testing.assert_close(b["1.running_var"], torch.stack([m[1].running_var for m in models]))


_CLOSED_OVER = {
    "BatchNorm1d_eval": (lambda: nn.BatchNorm1d(4).eval(), lambda m, x: m(x[None])[0]),
    "BatchNorm1d_no_stats": (lambda: nn.BatchNorm1d(4, track_running_stats=False), lambda m, x: m(x[None])[0]),
    "GroupNorm": (lambda: nn.GroupNorm(2, 4), lambda m, x: m(x[None])[0]),
    "InstanceNorm1d_affine": (lambda: nn.InstanceNorm1d(4, affine=True), lambda m, x: m(x[None])[0]),
    "LSTMCell": (lambda: nn.LSTMCell(5, 3), lambda m, x: torch.cat(m(x), -1)),
    "GRUCell": (lambda: nn.GRUCell(5, 3), lambda m, x: m(x, x[..., :3].cos())),
    "RNNCell_relu": (lambda: nn.RNNCell(5, 3, nonlinearity="relu"), lambda m, x: m(x)),
}


@pytest.mark.parametrize("name", sorted(_CLOSED_OVER))
def test_closed_over_parameters_get_their_torch_grad(name):
    """Model code calls its modules directly (parameters closed over, requires_grad=True) and
    trains them with torch's backward through the transformed output. Every parameter gets
    the .grad of the same loss computed by a Python loop in eager torch. (Norm layers' weights
    used to get no .grad at all: their decompositions reshaped them below torch's autograd.
    The RNN cells used to raise under vmap: ATen's cells write into temporaries in place.)"""
    make, call = _CLOSED_OVER[name]
    torch.manual_seed(0)
    m = make().double()
    x = torch.randn(3, 4, 5, dtype=D)

    def f(x):
        return call(m, x)
    ref = torch.stack([f(x[i]) for i in range(3)])
    ref.sin().sum().backward()
    want = [p.grad.clone() for p in m.parameters()]
    for transform in (functx.vmap(f), functx.jit(functx.vmap(f))):
        for p in m.parameters():
            p.grad = None
        out = transform(x)
        torch.testing.assert_close(out, ref.detach())
        out.sin().sum().backward()
        for p, w in zip(m.parameters(), want):
            assert p.grad is not None
            torch.testing.assert_close(p.grad, w)
    xr = x[0].clone().requires_grad_()
    torch.testing.assert_close(functx.grad(lambda x: f(x).pow(2).sum())(x[0]),
                               torch.autograd.grad(f(xr).pow(2).sum(), xr)[0])


@pytest.mark.parametrize("bidirectional", [False, True])
def test_float32_lstm_runs_onednn_s_layer_as_cell_steps(bidirectional):
    # nn.LSTM on the CPU in float32 runs aten.mkldnn_rnn_layer; its opaque fallback typed the
    # workspace output by the meta kernel (empty), so every derivative raised. Oracle: the
    # float64 copy of the module (torch's native path) under torch.func.
    torch.manual_seed(0)
    m32 = torch.nn.LSTM(5, 7, num_layers=2, batch_first=True, bidirectional=bidirectional)
    m64 = copy.deepcopy(m32).double()
    x = torch.randn(3, 4, 5)

    def f(m, p, x):
        out, (h, c) = torch.func.functional_call(m, p, (x,))
        return out.pow(2).mean() + h.sum() + c.mean()
    p32, p64 = dict(m32.named_parameters()), dict(m64.named_parameters())
    got = functx.grad(lambda p: f(m32, p, x))(p32)
    want = torch.func.grad(lambda p: f(m64, p, x.double()))(p64)
    for k in got:
        torch.testing.assert_close(got[k], want[k].float(), atol=1e-5, rtol=1e-4)
    t = x.cos()
    _, jv = functx.jvp(lambda x: f(m32, p32, x), (x,), (t,))
    _, jv64 = torch.func.jvp(lambda x: f(m64, p64, x), (x.double(),), (t.double(),))
    torch.testing.assert_close(jv, jv64.float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(functx.jit(lambda x: f(m32, p32, x))(x), f(m32, p32, x))
