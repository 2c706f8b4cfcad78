"""Sweep PyTorch's OpInfo database through functx and write docs/coverage.md.

For every op in torch.testing._internal.common_methods_invocations.op_db (float64 where
supported, else float32; CPU; a few sample inputs each) and each transform:

  forward  functx.jit(f)            vs f (eager torch)
  vjp      functx.vjp               vs torch.func.vjp (random cotangent)
  jvp      functx.jvp               vs torch.func.jvp (or, where an op lacks forward AD,
                                       the vjp of torch's pullback: J t)
  vmap     functx.vmap over a batch of 2 (each float input and its flip) vs a Python loop

each op is recorded as: native (agrees, no opaque fallback), fallback (agrees through the
opaque fallback), disagree, error (functx raised where torch did not), or skip (torch itself
can't: no float output, no autograd, a random op, the oracle raised). A per-op timeout
(SIGALRM) keeps the sweep bounded.

More modes (--transforms, --backend, --dtype; see MODE_DOC): jit of vjp/jvp compositions,
vmap with other in_dims/out_dims and of vjp (per-sample gradients), forward-over-reverse
(hvp; float64 central differences decide where torch.func disagrees or has no formula), and
extreme inputs (huge/tiny magnitudes, zeros, -0.0, ties, inf/nan). A float32 disagreement is
re-decided by torch in float64 (status "oracle" when functx is the accurate one).

    python tools/opinfo_sweep.py                      # all ops -> docs/coverage.md
    python tools/opinfo_sweep.py --ops add,matmul -v  # a few ops, print each result
    python tools/opinfo_sweep.py --backend cpu --dtype float32 --samples 2 \
        --transforms forward,jit_vjp,jit_jvp,vmap_dims,vmap_vjp,hvp,extreme,extreme_vjp
                                                      # -> docs/coverage_cpu_float32.md
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
import traceback
import warnings
from collections import Counter

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import functx  # noqa: E402
from functx.frontend import record_fallbacks  # noqa: E402

TRANSFORMS = ("forward", "vjp", "jvp", "vmap")
# Extra modes (--transforms): compositions researchers jit, other vmap layouts, second order,
# and extreme-but-ordinary inputs. Each is compared against the same oracles.
EXTRA_TRANSFORMS = ("jit_vjp", "jit_jvp", "vmap_dims", "vmap_vjp", "hvp", "extreme", "extreme_vjp")
ALL_TRANSFORMS = TRANSFORMS + EXTRA_TRANSFORMS
GRAD_TRANSFORMS = ("vjp", "jvp", "jit_vjp", "jit_jvp", "vmap_vjp", "hvp", "extreme_vjp")
BACKEND = "eager"       # --backend: the backend every functx.jit of the sweep uses

# Disagreements investigated by hand, where the oracle (torch) is the one that is off.
ORACLE_NOTES = {
    ("nn.functional.nll_loss", "jvp"):
        "the sample differentiates w.r.t. the class `weight` too; functx's jvp matches central "
        "finite differences there and torch.func.jvp does not (torch treats `weight` as "
        "non-differentiable). With respect to the input alone both agree.",
    ("nn.functional.nll_loss", "jit_jvp"): "as its jvp: torch.func treats the class `weight` as non-differentiable.",
    ("cholesky", "hvp"):
        "convention: torch (and functx) differentiate cholesky on symmetric matrices; the sweep's random, "
        "non-symmetric tangent moves off that set, so differences of torch's vjp disagree with every formula. "
        "With a symmetric tangent functx's hvp matches float64 differences to 3e-12 (checked by hand).",
    ("scatter_reduce.prod", "jit_jvp"): "torch.func's jvp is wrong: functx's tangent matches float64 central "
    "differences to 3e-9 where torch.func's is off by 2-12 (checked by hand on the OpInfo samples).",
    ("topk", "extreme"): "ties (all zeros / small integers): the order of equal values' indices is unspecified; values agree.",
    ("topk", "extreme_vjp"): "ties: which of equal values receives the cotangent is unspecified (as its extreme).",
    ("var_mean", "extreme"):
        "torch's Welford kernel returns nan for the mean of a row holding +inf (torch.mean itself gives inf, as "
        "functx); the variance is nan in both.",
    ("std_mean", "extreme"): "as var_mean: torch's Welford mean is nan where the mean is +/-inf.",
    ("nn.functional.instance_norm", "extreme"): "as var_mean: torch's Welford statistics are nan where a row holds inf.",
    ("native_layer_norm", "extreme"): "inf-containing rows: torch's Welford statistics give nan in more places than the two-pass formula.",
    ("nn.functional.layer_norm", "extreme"): "as native_layer_norm.",
    ("nn.functional.interpolate.linear", "extreme"):
        "inf input at an exact grid point: torch's kernel computes a*(1-w) + b*w (inf), torch's own decomposition "
        "(used by functx and torch.compile) a + (b-a)*w, as torch.lerp (nan).",
    ("nn.functional.interpolate.bilinear", "extreme"): "as interpolate.linear.",
    ("nn.functional.interpolate.trilinear", "extreme"): "as interpolate.linear.",
    ("nn.functional.upsample_bilinear", "extreme"): "as interpolate.linear.",
    ("nn.functional.grid_sample", "extreme"): "inf/nan pixels or grid coordinates: torch's kernel skips zero-weight corners (inf*0); its decomposition, which functx follows, does not.",
    ("grid_sampler_2d", "extreme"): "as nn.functional.grid_sample.",
    ("nn.functional.multi_margin_loss", "extreme"): "a nan input: torch's kernel drops it (max(0, nan) = 0); functx propagates it, as clamp/relu do.",
    ("nn.functional.multilabel_margin_loss", "extreme"): "as multi_margin_loss.",
    ("view", "vmap_dims"):
        "consistent with torch.func.vmap, which refuses too: with the batch at dim 1 an example is a strided "
        "slice that .view cannot reshape (the loop's examples are contiguous). in_dims=0 works.",
    ("view_as", "vmap_dims"): "as view.",
    ("view_copy", "vmap_dims"): "as view.",
    ("as_strided", "vmap_dims"): "an example that is a strided slice (batch at dim 1): as_strided's storage "
                                 "offsets are not per example, functx refuses with a clear error.",
    ("as_strided_copy", "vmap_dims"): "as as_strided.",
    ("nn.functional.gaussian_nll_loss", "vmap_dims"):
        "under jit: the op checks `torch.any(var < 0)` in Python, which needs a concrete value (jit semantics, as JAX).",
    ("clamp", "extreme_vjp"): "ties min == max: torch gives the cotangent to none of x, min, max (its masks are strict); "
                              "functx gives it to min, a valid subgradient (moving min and max together moves the output).",
    ("max.binary", "extreme_vjp"): "ties (equal inf/nan/0 planted in both arguments): torch and functx split the cotangent differently.",
    ("maximum", "extreme_vjp"): "as max.binary.", ("min.binary", "extreme_vjp"): "as max.binary.",
    ("minimum", "extreme_vjp"): "as max.binary.",
    ("aminmax", "extreme_vjp"): "a nan in the row: torch's tie mask (x == nan) selects nothing and divides 0 by 0 (nan); functx gives 0.",
    ("nn.functional.elu", "extreme_vjp"): "the derivative at a nan input: which branch's formula applies (torch: nan or the positive branch). The value is nan in both.",
    ("nn.functional.celu", "extreme_vjp"): "as elu.", ("nn.functional.selu", "extreme_vjp"): "as elu.",
    ("nn.functional.hardshrink", "extreme_vjp"): "as elu (the derivative at inf/nan inputs).",
    ("nn.functional.prelu", "extreme_vjp"): "as elu (the weight's derivative sums x over inf/nan inputs).",
    ("xlogy", "extreme_vjp"): "convention at x = 0, y = 0: d/dx = log y = -inf in functx; torch returns xlogy(x != 0, y) = 0.",
    ("special.xlog1py", "extreme_vjp"): "as xlogy, at x = 0, y = -1.",
    ("sinc", "extreme_vjp"): "|x| ~ 1e-15: sinc'(x) = -pi^2 x / 3 ~ 1e-14 (functx's series); torch's closed form cancels to 0 (float64 too).",
    ("nn.functional.binary_cross_entropy", "extreme_vjp"): "probabilities ~1e-15: torch's backward clamps (1-x)*x at 1e-12; functx differentiates the clamped-log forward exactly.",
    ("linalg.vector_norm", "extreme_vjp"): "a norm over one element at x = inf: functx's derivative is sign(x) = 1 (the norm is |x|); torch's x |x|^(p-2) / norm^(p-1) is inf/inf = nan.",
    ("logcumsumexp", "extreme_vjp"): "|x| ~ 1e15 in float32 (one ulp is ~1e8): exp(x - out) is 0 wherever the forward rounded by an ulp; torch gives 0 everywhere, functx -0.30 where float64 gives -0.36: ill-conditioned, both off.",
    ("logcumsumexp", "vmap_vjp"): "torch's float32 backward is off by ~2e-3 (see its jit_vjp, re-decided in float64 there).",
    ("masked.norm", "extreme_vjp"): "as linalg.vector_norm.",
    ("rsqrt", "extreme_vjp"): "at -0.0: rsqrt = -inf, and the derivative's sign (-1/2 x^-1.5 at a signed zero) differs: an infinite derivative either way.",
    ("special.log_ndtr", "extreme_vjp"): "x ~ -1e150 (float64): the derivative is ~|x|; functx gives it (1e150), torch overflows to inf "
                                         "(and gives 0.399 at -3e149).",
    ("logit", "extreme_vjp"): "outside [0, 1] (x*1e4) the value is nan in both; torch's derivative is nan there, functx's 0.",
    ("native_group_norm", "extreme_vjp"): "unresolved: float64 at 1e150 (products of x, x and weight leave the range; no "
                                          "higher-precision oracle). In float32 at 1e15 functx agrees with torch in float64 "
                                          "where torch's float32 is off (status oracle).",
    ("nn.functional.group_norm", "extreme_vjp"): "as native_group_norm.",
    ("nn.functional.rms_norm", "extreme_vjp"): "as native_group_norm (float64 at 1e150, unresolved).",
    ("native_layer_norm", "extreme"): "all-integer rows (ties) with zero variance: 5.8e-17 absolute where torch's output is 5.8e-17 "
                                      "(rounding of eps-sized values).",
    ("nn.functional.scaled_dot_product_attention", "extreme_vjp"): "saturated softmax (x*1e4): torch's gradient is exactly 0, functx's 9e-7.",
    ("nn.functional.batch_norm", "extreme"): "as var_mean: torch's Welford statistics are nan where a channel holds inf.",
    ("native_batch_norm", "extreme"): "as nn.functional.batch_norm.",
    ("_native_batch_norm_legit", "extreme"): "as nn.functional.batch_norm.",
    ("_batch_norm_with_update", "extreme"): "as nn.functional.batch_norm.",
    ("nn.functional.cross_entropy", "jit_jvp"): "as nll_loss's jvp: the sample's class `weight` is differentiated; functx "
                                                "matches float64 central differences (-4.8778), torch.func.jvp does not (-6.1854).",
    ("nn.functional.embedding", "jit_jvp"): "padding_idx: torch's forward mode ignores it while its backward gives the padding row no "
                                            "gradient; functx's jvp is the transpose of its vjp (which matches torch's), so the padding row carries no tangent.",
    ("nn.functional.embedding", "jit_vjp"): "sparse=True: torch returns a sparse_coo gradient, functx a dense one with the same values.",
    ("var", "jit_jvp"): "an empty input (var is nan): torch's tangent is 0, functx's nan.",
    ("var.unbiased", "jit_jvp"): "as var.", ("var_mean", "jit_jvp"): "as var.", ("var_mean.unbiased", "jit_jvp"): "as var.",
    ("cdist", "extreme"): "p = inf with a nan coordinate: torch's kernel drops the nan (0 or the other coordinates' max); "
                          "functx gives nan, as torch.linalg.vector_norm(ord=inf) does.",
}
# torch's derivative formulas for these ignore the cotangents of the saved statistics they
# also return (mean/rstd): only the normalized output is differentiated, as F.* uses them.
UNINITIALIZED = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "empty_permuted"}
FIRST_OUTPUT_ONLY = {"native_layer_norm", "native_batch_norm", "_native_batch_norm_legit",
                     "_batch_norm_with_update"}
ORDER = {"native": 0, "fallback": 1, "oracle": 2, "skip": 3, "disagree": 4, "error": 5}


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout()


class Skip(Exception):
    pass


def _tol(dtype):
    return dict(atol=1e-6, rtol=1e-5) if dtype == torch.float64 else dict(atol=1e-4, rtol=1e-3)


def _close(got, want, dtype, signed_zeros=False):
    g, _ = tree_flatten(got)
    w, _ = tree_flatten(want)
    g = [x for x in g if isinstance(x, torch.Tensor)]
    w = [x for x in w if isinstance(x, torch.Tensor)]
    if len(g) != len(w):
        return f"{len(g)} outputs vs {len(w)}"
    for a, b in zip(g, w):
        if a.shape != b.shape:
            return f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
        if a.dtype != b.dtype:
            return f"dtype {a.dtype} vs {b.dtype}"
        try:
            torch.testing.assert_close(a, b, equal_nan=True, check_device=False, **_tol(dtype))
        except AssertionError as e:
            return str(e).strip().splitlines()[0] + " " + " ".join(str(e).splitlines()[1:3])
        if signed_zeros and a.dtype.is_floating_point:
            zero = (a == 0) & (b == 0)
            if not torch.equal(torch.signbit(a[zero]), torch.signbit(b[zero])):
                return "signs of zeros differ"
    return None


class Case:
    """One sample as a function of its floating-point tensor leaves."""

    def __init__(self, op, sample):
        self.op = op
        # OpInfo's gradient tests differentiate this view of the outputs (e.g. native_layer_norm's
        # output only: torch's formulas ignore the saved mean/rstd outputs)
        self.grad_view = sample.output_process_fn_grad
        if op.name in FIRST_OUTPUT_ONLY:
            self.grad_view = lambda out: out[0]
        leaves, self.spec = tree_flatten((sample.input, sample.args, sample.kwargs))
        self.leaves = leaves
        self.pos = [i for i, l in enumerate(leaves) if isinstance(l, torch.Tensor)
                    and l.dtype.is_floating_point]
        self.args = tuple(leaves[i] for i in self.pos)

    def __call__(self, *xs):
        leaves = list(self.leaves)
        for i, x in zip(self.pos, xs):
            leaves[i] = x
        inp, args, kwargs = tree_unflatten(leaves, self.spec)
        return self.op(inp, *args, **kwargs)


def _float_outs(out):
    return [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor) and o.dtype.is_floating_point]


def _first_line(e):
    s = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return s[:200]


def _oracle_jvp(f, primals, tangents):
    try:
        return torch.func.jvp(f, primals, tangents)[1]
    except Exception:  # noqa: BLE001  (no forward AD formula): J t = vjp of the pullback
        out, pb = torch.func.vjp(f, *primals)
        ct0 = tree_map(lambda o: torch.zeros_like(o) if isinstance(o, torch.Tensor) else o, out)
        _, pbpb = torch.func.vjp(pb, ct0)
        (jt,) = pbpb(tuple(tangents))
        return jt


def check_sample(case, transform, dtype, gen):
    """-> (status, message) for one sample; raises Skip when torch itself can't."""
    f, xs = case, case.args
    try:
        want = f(*xs)
    except Exception as e:  # noqa: BLE001
        raise Skip(f"torch: {_first_line(e)}")
    if transform == "forward":
        with record_fallbacks() as fb:
            try:
                got = functx.jit(f, backend=BACKEND)(*xs)
            except functx.ConcretizationError:
                # data-dependent output shape (nonzero, masked_select, ...): jit must refuse
                # with a clear error; the eager trace must still agree
                got = functx.jvp(f, xs, tuple(torch.zeros_like(x) for x in xs))[0]
        return _arbitrate(fb, got, want, dtype, lambda a: f(*a), xs)
    if not xs or not _float_outs(want):
        raise Skip("no floating-point inputs/outputs")
    if case.grad_view is not None and transform in GRAD_TRANSFORMS:
        f = lambda *a: case.grad_view(case(*a))  # noqa: E731
        if not _float_outs(f(*xs)):
            raise Skip("no floating-point outputs to differentiate")
    if transform == "vjp":
        if not case.op.supports_autograd:
            raise Skip("op has no autograd")
        try:
            out_t, pb_t = torch.func.vjp(f, *xs)
            ct = tree_map(lambda o: (torch.randn(o.shape, dtype=o.dtype, generator=gen)
                                     if o.dtype.is_floating_point else torch.zeros_like(o))
                          if isinstance(o, torch.Tensor) else None, out_t)
            want_g = pb_t(ct)
        except Exception as e:  # noqa: BLE001
            raise Skip(f"torch.func.vjp: {_first_line(e)}")
        with record_fallbacks() as fb:
            _, pb = functx.vjp(f, *xs)
            got = pb(ct)
        return fb, _close(got, want_g, dtype)
    if transform == "jvp":
        if not case.op.supports_autograd:
            raise Skip("op has no autograd")
        tans = tuple(torch.randn(x.shape, dtype=x.dtype, generator=gen) for x in xs)
        try:
            want_t = _oracle_jvp(f, xs, tans)
        except Exception as e:  # noqa: BLE001
            raise Skip(f"torch.func.jvp: {_first_line(e)}")
        with record_fallbacks() as fb:
            _, got = functx.jvp(f, xs, tans)
        return fb, _close(got, want_t, dtype)
    if transform == "vmap":
        batched = [torch.stack([x, x.flip(tuple(range(x.ndim)))]) for x in xs]
        try:
            outs = [f(*[b[k].clone() for b in batched]) for k in range(2)]
            want_v = tree_map(lambda *o: torch.stack(o) if isinstance(o[0], torch.Tensor) else o[0], *outs)
        except Exception as e:  # noqa: BLE001
            raise Skip(f"torch loop: {_first_line(e)}")
        with record_fallbacks() as fb:
            got = functx.vmap(f)(*batched)
        return fb, _close(got, want_v, dtype)
    if transform in EXTRA_TRANSFORMS:
        if transform != "extreme" and not case.op.supports_autograd and transform != "vmap_dims":
            raise Skip("op has no autograd")
        try:
            return _EXTRA[transform](case, f, xs, dtype, gen)
        except functx.ConcretizationError:
            raise Skip("data-dependent output shape: jit refuses (checked by forward)")
    raise ValueError(transform)


def _cast(tree, dtype):
    return tree_map(lambda c: c.to(dtype) if isinstance(c, torch.Tensor) and c.dtype.is_floating_point else c, tree)


def _arbitrate(fb, got, want, dtype, oracle, args):
    """A float32 disagreement is re-decided by the same torch oracle in float64: where functx
    is within float32 tolerance of it, torch's float32 result was the inaccurate one (status
    "oracle"); otherwise the disagreement stands."""
    err = _close(got, want, dtype)
    if err is None or dtype != torch.float32:
        return fb, err
    try:
        ref = _cast(oracle(tuple(a.double() for a in args)), torch.float32)
    except Exception:  # noqa: BLE001
        return fb, err
    if _close(got, ref, dtype) is None:
        return list(fb) + [f"ORACLE: torch float32 is off; functx agrees with torch in float64 ({err[:80]})"], None
    return fb, err


def _jit(fn):
    return functx.jit(fn, backend=BACKEND)


def _rand_like_outs(out, gen):
    return tree_map(lambda o: (torch.randn(o.shape, dtype=o.dtype, generator=gen)
                               if o.dtype.is_floating_point else torch.zeros_like(o))
                    if isinstance(o, torch.Tensor) else None, out)


def _torch_vjp(f, xs, ct):
    return torch.func.vjp(f, *xs)[1](ct)


def _functx_vjp(f, xs, ct):
    return functx.vjp(f, *xs)[1](ct)


def _check_jit_vjp(case, f, xs, dtype, gen):
    """jit(x, ct -> vjp(f, x)[1](ct)) vs torch.func.vjp."""
    try:
        ct = _rand_like_outs(torch.func.vjp(f, *xs)[0], gen)
        want = _torch_vjp(f, xs, ct)
    except Exception as e:  # noqa: BLE001
        raise Skip(f"torch.func.vjp: {_first_line(e)}")
    with record_fallbacks() as fb:
        got = _jit(lambda xs, ct: _functx_vjp(f, xs, ct))(xs, ct)
    return _arbitrate(fb, got, want, dtype, lambda a: _torch_vjp(f, a[:len(xs)], _cast(ct, a[0].dtype)), xs)


def _check_jit_jvp(case, f, xs, dtype, gen):
    """jit(x, t -> jvp(f, x, t)) vs torch.func.jvp (primal and tangent outputs)."""
    tans = tuple(torch.randn(x.shape, dtype=x.dtype, generator=gen) for x in xs)
    try:
        want = (f(*xs), _oracle_jvp(f, xs, tans))
    except Exception as e:  # noqa: BLE001
        raise Skip(f"torch.func.jvp: {_first_line(e)}")
    with record_fallbacks() as fb:
        got = _jit(lambda xs, ts: functx.jvp(f, xs, ts))(xs, tans)
    return _arbitrate(fb, got, want, dtype, lambda a: (f(*a[:len(xs)]), _oracle_jvp(f, a[:len(xs)], a[len(xs):])), xs + tans)


def _vmap_layouts(xs, outs):
    """(in_dims, out_dims) layouts other than the default: batch last / at dim 1, unbatched
    (None) leading arguments, and out_dims=1 where every output has a dimension."""
    last = tuple(-1 for _ in xs)
    one = tuple(min(1, x.ndim) for x in xs)
    out1 = 1 if outs and all(o.ndim >= 1 for o in outs) else 0
    layouts = [(last, 0), (one, out1)]
    if len(xs) > 1:
        layouts.append(((None,) + one[1:], out1))
        layouts.append((one[:-1] + (None,), 0))
    return layouts


def _check_vmap_dims(case, f, xs, dtype, gen):
    """vmap(f, in_dims, out_dims) for several layouts vs a Python loop (batch of 3)."""
    # clones: a sample may be a partial view, whose storage offset as_strided would see in the
    # loop but not in the stacked batch
    samples = [tuple(x.clone() if k == 0 else x.flip(tuple(range(x.ndim))) * (1 + 0.5 * k) for x in xs)
               for k in range(3)]
    try:
        loop = [f(*[x.clone() for x in s]) for s in samples]
    except Exception as e:  # noqa: BLE001
        raise Skip(f"torch loop: {_first_line(e)}")
    fbs = []
    for in_dims, out_dims in _vmap_layouts(xs, _float_outs(loop[0])):
        args = []
        for i, d in enumerate(in_dims):
            if d is None:
                args.append(xs[i])
            else:
                args.append(torch.stack([s[i] for s in samples], dim=d if d >= 0 else samples[0][i].ndim + 1 + d))
        try:
            want_outs = [f(*[(xs[i] if d is None else s[i]).clone() for i, d in enumerate(in_dims)])
                         for s in samples]
            want = tree_map(lambda *o: torch.stack(o, dim=out_dims) if isinstance(o[0], torch.Tensor) else o[0],
                            *want_outs)
        except Exception as e:  # noqa: BLE001
            raise Skip(f"torch loop: {_first_line(e)}")
        with record_fallbacks() as fb:
            got = _jit(functx.vmap(f, in_dims=in_dims, out_dims=out_dims))(*args)
        fbs += list(fb)
        err = _close(got, want, dtype)
        if err:
            return fbs, f"in_dims={in_dims} out_dims={out_dims}: {err}"
    return fbs, None


def _check_vmap_vjp(case, f, xs, dtype, gen):
    """Per-sample gradients: jit(vmap(x, ct -> vjp(f, x)[1](ct))) vs a loop of torch.func.vjp."""
    samples = [tuple(x.clone() if k == 0 else x.flip(tuple(range(x.ndim))) for x in xs) for k in range(2)]
    try:
        cts = [_rand_like_outs(torch.func.vjp(f, *s)[0], gen) for s in samples]
        outs = [_torch_vjp(f, s, ct) for s, ct in zip(samples, cts)]
        want = tree_map(lambda *o: torch.stack(o) if isinstance(o[0], torch.Tensor) else o[0], *outs)
    except Exception as e:  # noqa: BLE001
        raise Skip(f"torch.func.vjp loop: {_first_line(e)}")
    stack = lambda *o: torch.stack(o) if isinstance(o[0], torch.Tensor) else o[0]  # noqa: E731
    bxs = tuple(torch.stack(b) for b in zip(*samples))
    bct = tree_map(stack, *cts) if len(tree_flatten(cts[0])[0]) else cts[0]
    ct_dims = tree_map(lambda o: 0 if isinstance(o, torch.Tensor) else None, cts[0])
    with record_fallbacks() as fb:
        got = _jit(functx.vmap(lambda xs, ct: _functx_vjp(f, xs, ct), in_dims=(0, ct_dims)))(bxs, bct)
    return fb, _close(got, want, dtype)


def _finite_differences(g, xs, ts, h=1e-6):
    """Central differences of g along ts, in float64."""
    xs64 = tuple(x.double() for x in xs)
    ts64 = tuple(t.double() for t in ts)
    plus = g(*(x + h * t for x, t in zip(xs64, ts64)))
    minus = g(*(x - h * t for x, t in zip(xs64, ts64)))
    return tree_map(lambda a, b: (a - b) / (2 * h) if isinstance(a, torch.Tensor) else a, plus, minus)


def _check_hvp(case, f, xs, dtype, gen):
    """Forward-over-reverse: jit(jvp(x -> vjp(f, x)[1](ct))) vs torch.func; where they
    disagree, or torch has no such formula, float64 central differences of torch's vjp decide."""
    tans = tuple(torch.randn(x.shape, dtype=x.dtype, generator=gen) for x in xs)
    try:
        ct = _rand_like_outs(torch.func.vjp(f, *xs)[0], gen)
    except Exception as e:  # noqa: BLE001
        raise Skip(f"torch.func.vjp: {_first_line(e)}")
    g_torch = lambda *a: _torch_vjp(f, a, tree_map(  # noqa: E731
        lambda c: c.to(a[0].dtype) if isinstance(c, torch.Tensor) and c.dtype.is_floating_point else c, ct))
    try:
        want = torch.func.jvp(lambda *a: _torch_vjp(f, a, ct), xs, tans)[1]
        oracle = "torch.func"
    except Exception:  # noqa: BLE001
        want, oracle = None, "fd"
    with record_fallbacks() as fb:
        got = _jit(lambda xs, ts: functx.jvp(lambda *a: _functx_vjp(f, a, ct), xs, ts)[1])(xs, tans)
    err = _close(got, want, dtype) if want is not None else "no torch oracle"
    if err is None:
        return fb, None
    try:
        fd = _finite_differences(g_torch, xs, tans)
    except Exception as e:  # noqa: BLE001
        raise Skip(f"finite differences: {_first_line(e)}")
    fd = tree_map(lambda a, b: a.to(b.dtype) if isinstance(a, torch.Tensor) else a, fd, got)
    fd_err = _close(got, fd, dtype) if dtype == torch.float32 else _close_loose(got, fd)
    if fd_err is None:
        return fb + (["ORACLE: torch.func disagrees with finite differences; functx agrees"]
                     if oracle == "torch.func" else []), None
    return fb, f"vs {oracle}: {err}; vs float64 finite differences: {fd_err}"


def _close_loose(got, want):
    g = [x for x in tree_flatten(got)[0] if isinstance(x, torch.Tensor)]
    w = [x for x in tree_flatten(want)[0] if isinstance(x, torch.Tensor)]
    if len(g) != len(w):
        return f"{len(g)} outputs vs {len(w)}"
    for a, b in zip(g, w):
        try:
            torch.testing.assert_close(a, b.to(a.dtype), equal_nan=True, atol=1e-5, rtol=1e-4)
        except AssertionError as e:
            return str(e).strip().splitlines()[0] + " " + " ".join(str(e).splitlines()[1:3])
    return None


def _extreme_variants(xs, dtype):
    """Inputs where eager torch still defines the result: huge/tiny magnitudes, large logits,
    exact zeros and -0.0, small integers (ties), inf/nan/-0.0 planted among ordinary values."""
    # products of two inputs stay finite and normal: overflow is left to exp, pow and the like
    huge, tiny = (1e15, 1e-15) if dtype == torch.float32 else (1e150, 1e-150)

    def planted(x):
        y = x.clone()
        flat = y.view(-1) if y.is_contiguous() else y.reshape(-1)
        special = torch.tensor([float("inf"), -0.0, float("nan"), 0.0, -float("inf")], dtype=x.dtype)
        n = min(flat.numel(), special.numel())
        flat[:n] = special[:n]
        return flat.view(x.shape) if flat.data_ptr() == y.data_ptr() else flat.reshape(x.shape)

    ints = lambda x: torch.randint(-2, 3, x.shape, generator=torch.Generator().manual_seed(x.numel())).to(x.dtype)  # noqa: E731
    return [("x1e4", tuple(x * 1e4 for x in xs)), ("huge", tuple(x * huge for x in xs)),
            ("tiny", tuple(x * tiny for x in xs)), ("zeros", tuple(torch.zeros_like(x) for x in xs)),
            ("-0.0", tuple(torch.full_like(x, -0.0) for x in xs)), ("ties", tuple(ints(x) for x in xs)),
            ("inf/nan", tuple(planted(x) for x in xs))]


def _close_normwise(got, want, dtype):
    """Elementwise-equal non-finite values (NaN where torch has NaN, same infinities, same sign
    of zeros); finite values within rtol of the largest finite magnitude of that output (scale
    free: a 1e-30-sized output is compared at 1e-30's scale, not against atol)."""
    g = [x for x in tree_flatten(got)[0] if isinstance(x, torch.Tensor)]
    w = [x for x in tree_flatten(want)[0] if isinstance(x, torch.Tensor)]
    if len(g) != len(w):
        return f"{len(g)} outputs vs {len(w)}"
    rtol = _tol(dtype)["rtol"]
    for a, b in zip(g, w):
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"shape/dtype {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}"
        if not b.dtype.is_floating_point:
            if not torch.equal(a, b):
                return "integer outputs differ"
            continue
        if not torch.equal(a.isnan(), b.isnan()):
            return f"NaN pattern differs: got {int(a.isnan().sum())} NaNs, torch {int(b.isnan().sum())}"
        inf = b.isinf()
        if not torch.equal(a.isinf(), inf) or not torch.equal(a[inf], b[inf]):
            return f"inf pattern differs: got {int(a.isinf().sum())} infs, torch {int(inf.sum())}"
        fin = b.isfinite()
        if fin.any():
            scale = b[fin].abs().max().item()
            diff = (a[fin] - b[fin]).abs().max().item()
            if diff > rtol * scale:
                return f"max abs diff {diff:.3g} at scale {scale:.3g}"
    return None


def _check_extreme(case, f, xs, dtype, gen, grad=False):
    """forward (extreme) / vjp (extreme_vjp) at each extreme variant vs eager torch /
    torch.func.vjp; a variant where torch itself raises is skipped."""
    jitted = _jit(f) if not grad else _jit(lambda xs, ct: _functx_vjp(f, xs, ct))
    fbs, n_ok = [], 0
    for name, vs in _extreme_variants(xs, dtype):
        try:
            if grad:
                ct = _rand_like_outs(torch.func.vjp(f, *vs)[0], gen)
                want = _torch_vjp(f, vs, ct)
            else:
                want = f(*vs)
        except Exception:  # noqa: BLE001
            continue
        with record_fallbacks() as fb:
            got = jitted(vs, ct) if grad else jitted(*vs)
        fbs += list(fb)
        err = _close_normwise(got, want, dtype)
        if err and dtype == torch.float32:
            # re-decided by torch in float64 at the same (float32) points, as _arbitrate
            try:
                v64 = tuple(v.double() for v in vs)
                ref = _torch_vjp(f, v64, _cast(ct, torch.float64)) if grad else f(*v64)
                if _close_normwise(got, _cast(ref, torch.float32), dtype) is None:
                    fbs.append(f"ORACLE: [{name}] torch float32 is off; functx agrees with torch in float64 ({err[:60]})")
                    err = None
            except Exception:  # noqa: BLE001
                pass
        if err:
            return fbs, f"[{name}] {err}"
        n_ok += 1
    if not n_ok:
        raise Skip("torch raised at every extreme variant")
    return fbs, None


_EXTRA = {"jit_vjp": _check_jit_vjp, "jit_jvp": _check_jit_jvp, "vmap_dims": _check_vmap_dims,
          "vmap_vjp": _check_vmap_vjp, "hvp": _check_hvp, "extreme": _check_extreme,
          "extreme_vjp": lambda *a: _check_extreme(*a, grad=True)}


class _SeenRandom(torch.utils._python_dispatch.TorchDispatchMode):
    """Notes whether any ATen op tagged nondeterministic_seeded runs."""

    def __init__(self):
        super().__init__()
        self.seen = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if torch.Tag.nondeterministic_seeded in func.tags:
            self.seen = True
        return func(*args, **(kwargs or {}))


def _is_random(case):
    """Random ops can't match torch's RNG stream (OpInfo often reseeds inside the op)."""
    mode = _SeenRandom()
    try:
        with mode:
            case(*case.args)
    except Exception:  # noqa: BLE001
        return False
    return mode.seen


def _has_complex_or_no_tensor(case):
    try:
        out = case(*case.args)
    except Exception:  # noqa: BLE001
        return None
    leaves = [x for x in tree_flatten(out)[0] + case.leaves if isinstance(x, torch.Tensor)]
    outs = [x for x in tree_flatten(out)[0] if isinstance(x, torch.Tensor)]
    if any(x.is_complex() for x in leaves):
        return "complex tensors (functx raises a clear error for them)"
    if not outs:
        return "returns no tensors"
    if any(x.is_sparse or x.layout != torch.strided for x in leaves):
        return "sparse/non-strided tensors"
    return None


def sweep_op(op, n_samples, timeout, transforms=TRANSFORMS, want_dtype="auto"):
    dtypes = op.supported_dtypes("cpu")
    if want_dtype == "auto":
        dtype = torch.float64 if torch.float64 in dtypes else torch.float32 if torch.float32 in dtypes else None
    else:
        dtype = getattr(torch, want_dtype) if getattr(torch, want_dtype) in dtypes else None
    result = {t: ("skip", "no float32/float64 support") for t in transforms}
    if dtype is None:
        return result, None
    if op.name in UNINITIALIZED:
        return {t: ("skip", "uninitialized memory") for t in transforms}, dtype
    gen = torch.Generator().manual_seed(0)
    signal.alarm(timeout)
    try:
        torch.manual_seed(0)
        samples = []
        for s in op.sample_inputs("cpu", dtype, requires_grad=False):
            samples.append(s)
            if n_samples and len(samples) >= n_samples:
                break
        cases = [Case(op, s) for s in samples]
        if any(_is_random(c) for c in cases):
            return {t: ("skip", "random op") for t in transforms}, dtype
        why = _has_complex_or_no_tensor(cases[0]) if cases else None
        if why:
            return {t: ("skip", why) for t in transforms}, dtype
        for t in transforms:
            status, msg, any_fb, n_ok = "skip", "no usable sample", False, 0
            for case in cases:
                try:
                    fb, err = check_sample(case, t, dtype, gen)
                except Skip as e:
                    msg = str(e) if n_ok == 0 and status == "skip" else msg
                    continue
                except Timeout:
                    raise
                except Exception as e:  # noqa: BLE001
                    status, msg = "error", _first_line(e)
                    break
                if err is not None:
                    status, msg = "disagree", err
                    break
                n_ok += 1
                oracle = [m for m in fb if m.startswith("ORACLE")]
                if oracle:
                    status, msg = "oracle", oracle[0]
                    continue
                any_fb = any_fb or bool(fb)
                if any_fb:
                    msg = ", ".join(fb)
            if status == "skip" and n_ok:  # ("oracle" stays: torch.func was off, functx agreed with FD)
                status = "fallback" if any_fb else "native"
                msg = msg if any_fb else ""
            result[t] = (status, msg)
    except Timeout:
        for t in transforms:
            if result[t][0] == "skip" and result[t][1] == "no float32/float64 support":
                result[t] = ("error", f"timeout after {timeout}s")
    finally:
        signal.alarm(0)
    return result, dtype


def op_label(op):
    return op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")


MODE_DOC = {
    "forward": "`functx.jit(f)` vs eager torch",
    "vjp": "`functx.vjp` vs `torch.func.vjp`",
    "jvp": "`functx.jvp` vs `torch.func.jvp` (or J t from torch's reverse mode where an op lacks forward AD)",
    "vmap": "`functx.vmap` (in_dims=0) vs a Python loop",
    "jit_vjp": "`jit(x, ct -> vjp(f, x)[1](ct))` vs `torch.func.vjp`",
    "jit_jvp": "`jit(x, t -> jvp(f, x, t))` vs `torch.func.jvp` (primal and tangent)",
    "vmap_dims": "`jit(vmap(f, in_dims, out_dims))` with batch last (-1), at dim 1, unbatched (None) "
                 "first or last argument, out_dims=1, batch of 3, vs a Python loop",
    "vmap_vjp": "per-sample gradients `jit(vmap(x, ct -> vjp(f, x)[1](ct)))` vs a loop of `torch.func.vjp`",
    "hvp": "forward-over-reverse `jit(jvp(x -> vjp(f, x)[1](ct)))` vs `torch.func.jvp` of `torch.func.vjp`; "
           "where they disagree or torch has no formula, float64 central differences of torch's vjp decide "
           "(*oracle* = functx agrees with the differences, torch.func does not)",
    "extreme": "`jit(f)` vs eager torch at extreme inputs: x*1e4, x*1e15 / x*1e-15 (float32; 1e±150 in "
               "float64), all zeros, all -0.0, small integers (ties), inf/-0.0/nan/0/-inf planted in the "
               "first elements; NaN/inf patterns and signs of zeros must match exactly, finite values "
               "within rtol of the output's largest finite magnitude",
    "extreme_vjp": "`jit(vjp)` vs `torch.func.vjp` at the same extreme inputs",
}


EXTRA_REPORTS = (
    "More modes (the fused C++ CPU backend in float32 and float64, jit of vjp/jvp compositions, vmap with "
    "other in_dims/out_dims and of vjp, forward-over-reverse, extreme inputs): "
    "[coverage_cpu_float32.md](coverage_cpu_float32.md), [coverage_cpu_float64.md](coverage_cpu_float64.md), "
    "and every sample of the CI's common ops: "
    "[coverage_cpu_float32_all_samples.md](coverage_cpu_float32_all_samples.md).")


def write_report(results, path, elapsed, n_samples, transforms=TRANSFORMS, command="python tools/opinfo_sweep.py",
                 backend="eager", dtype="auto"):
    dtype_text = "float64 where supported" if dtype == "auto" else f"{dtype} (ops without it skipped)"
    samples_text = f"up to {n_samples} samples each" if n_samples else "all samples"
    title = "# OpInfo coverage" if (backend, dtype, tuple(transforms)) == ("eager", "auto", TRANSFORMS) else \
        f"# OpInfo coverage: {backend} backend, {dtype}, {', '.join(transforms)}"
    lines = [title, "",
             f"Generated by `{command}` "
             f"({len(results)} OpInfo entries, {samples_text}, CPU, {dtype_text}, jit backend "
             f"`{backend}`; {elapsed / 60:.1f} min). Each transform is compared against PyTorch:", ""]
    lines += [f"- **{t}**: {MODE_DOC[t]}" for t in transforms]
    if title == "# OpInfo coverage":
        lines += ["", EXTRA_REPORTS]
    lines += ["",
              "*agree* = native + fallback (agrees through the opaque torch.func fallback) + oracle; percentages "
              "are of the ops the oracle could check (skips excluded: random ops, no float outputs, no "
              "autograd, torch itself raising).", "",
              "| transform | checked | agree | agree % | native | native % | fallback | oracle | disagree | error | skipped |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in transforms:
        c = Counter(r[t][0] for r in results.values())
        checked = c["native"] + c["fallback"] + c["oracle"] + c["disagree"] + c["error"]
        agree = c["native"] + c["fallback"] + c["oracle"]
        pct = lambda n: f"{100 * n / checked:.1f}%" if checked else "-"  # noqa: E731
        lines.append(f"| {t} | {checked} | {agree} | {pct(agree)} | {c['native']} | {pct(c['native'])} | "
                     f"{c['fallback']} | {c['oracle']} | {c['disagree']} | {c['error']} | {c['skip']} |")
    lines += ["", "## Ops that disagree or error", ""]
    lines += [f"- **{name}** ({t}): {why}" for (name, t), why in ORACLE_NOTES.items()
              if t in transforms and results.get(name, {}).get(t, ("",))[0] in ("disagree", "error")]
    lines += ["", "| op | transform | status | first line |", "|---|---|---|---|"]
    for name in sorted(results):
        for t in transforms:
            st, msg = results[name][t]
            if st in ("disagree", "error", "oracle"):
                lines.append(f"| {name} | {t} | {st} | {msg.replace('|', '/')[:160]} |")
    lines += ["", "## Ops that go through the opaque fallback", "",
              "| op | transforms | fallback ATen ops |", "|---|---|---|"]
    for name in sorted(results):
        fbs = [(t, results[name][t][1]) for t in transforms if results[name][t][0] == "fallback"]
        if fbs:
            ops = sorted({o for _, m in fbs for o in m.split(", ")})
            lines.append(f"| {name} | {', '.join(t for t, _ in fbs)} | {', '.join(ops)[:160]} |")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def main(argv=None):
    global BACKEND
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", default="", help="comma-separated op names (default: all of op_db)")
    ap.add_argument("--samples", type=int, default=2, help="samples per op (0: all)")
    ap.add_argument("--backend", default="eager", choices=("eager", "cpu"),
                    help="the backend of every functx.jit (cpu: the fused C++ tier, built before the first call)")
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "float64"),
                    help="auto: float64 where supported, else float32")
    ap.add_argument("--transforms", default=",".join(TRANSFORMS),
                    help=f"comma-separated, from {', '.join(ALL_TRANSFORMS)} (or 'all')")
    ap.add_argument("--timeout", type=int, default=30, help="seconds per op")
    ap.add_argument("--out", default="", help="report path (default docs/coverage.md for the default "
                    "mode, docs/coverage_<backend>_<dtype>.md otherwise)")
    ap.add_argument("--json", default="", help="also write raw results here")
    ap.add_argument("--elapsed", type=float, default=0.0, help="(with --from-json) sweep time, seconds")
    ap.add_argument("--from-json", default="", help="re-render the report from saved results")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    transforms = ALL_TRANSFORMS if args.transforms == "all" else tuple(args.transforms.split(","))
    unknown = set(transforms) - set(ALL_TRANSFORMS)
    if unknown:
        ap.error(f"unknown transforms {sorted(unknown)}")
    default_mode = (args.backend, args.dtype, transforms) == ("eager", "auto", TRANSFORMS)
    docs = os.path.join(os.path.dirname(__file__), "..", "docs")
    out = args.out or os.path.join(docs, "coverage.md" if default_mode else
                                   f"coverage_{args.backend}_{args.dtype}.md")
    shown, skip_next = [], False
    for a in (argv if argv is not None else sys.argv[1:]):
        if skip_next or a in ("-v", "--verbose") or a.startswith("--json="):
            skip_next = False
            continue
        if a in ("--json", "--from-json", "--elapsed", "--out"):   # paths and bookkeeping
            skip_next = True
            continue
        if a.startswith(("--from-json=", "--elapsed=", "--out=")):
            continue
        shown.append(a)
    command = " ".join(["python tools/opinfo_sweep.py"] + shown)
    if args.from_json:
        with open(args.from_json) as fh:
            saved = json.load(fh)
        for name in saved:
            if name.split(".")[0] in UNINITIALIZED:
                saved[name] = {t: ["skip", "uninitialized memory"] for t in transforms}
        write_report({k: {t: tuple(v[t]) for t in transforms} for k, v in saved.items()}, out,
                     args.elapsed, args.samples, transforms, command, args.backend, args.dtype)
        return saved
    BACKEND = args.backend
    if BACKEND == "cpu":
        os.environ["FUNCTX_CPU_BLOCK"] = "1"     # the fused tier from the first call
    warnings.filterwarnings("ignore")
    from torch.testing._internal.common_methods_invocations import op_db
    wanted = set(filter(None, args.ops.split(",")))
    ops = [op for op in op_db if not wanted or op.name in wanted or op_label(op) in wanted]
    signal.signal(signal.SIGALRM, _alarm)
    results = {}
    t0 = time.time()
    for k, op in enumerate(ops):
        t1 = time.time()
        try:
            res, dtype = sweep_op(op, args.samples, args.timeout, transforms, args.dtype)
        except Exception as e:  # noqa: BLE001  (sample generation itself failed)
            res = {t: ("skip", f"samples: {_first_line(e)}") for t in transforms}
        results[op_label(op)] = res
        if args.verbose:
            summary = " ".join(f"{t}={res[t][0]}" for t in transforms)
            bad = "; ".join(f"{t}: {res[t][1]}" for t in transforms
                            if res[t][0] in ("disagree", "error", "fallback", "oracle"))
            print(f"[{k + 1}/{len(ops)}] {op_label(op):40s} {summary} ({time.time() - t1:.1f}s) {bad[:300]}",
                  flush=True)
    elapsed = time.time() - t0
    if not wanted or args.out:
        write_report(results, out, elapsed, args.samples, transforms, command, args.backend, args.dtype)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    for t in transforms:
        c = Counter(r[t][0] for r in results.values())
        checked = c["native"] + c["fallback"] + c["oracle"] + c["disagree"] + c["error"]
        print(f"{t:11s} checked {checked:4d}  agree {100 * (c['native'] + c['fallback'] + c['oracle']) / max(checked, 1):5.1f}%  "
              f"native {100 * c['native'] / max(checked, 1):5.1f}%  disagree {c['disagree']}  error {c['error']}  "
              f"skip {c['skip']}")
    return results


if __name__ == "__main__":
    main()
