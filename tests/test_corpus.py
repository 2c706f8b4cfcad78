"""Real nn modules and torch.distributions (tests/corpus_cases.py) under every transform, in
float64, each against an oracle: torch.func (grad, jvp, jacrev, hessian), a Python loop
(vmap, vmap(grad)), float64 central differences where torch.func has no forward AD.

CI runs a representative slice (CI_CASES x every check); `--runslow` runs the whole matrix.
`python tests/test_corpus.py [names...]` prints a table.
"""
from __future__ import annotations

import sys

import pytest
import torch
from torch.utils._pytree import tree_leaves, tree_map

import functx
from corpus_cases import CASES

TOL = dict(atol=1e-6, rtol=1e-6)
CHECKS = ("grad", "vmap", "vmap_grad", "jvp", "jvp_x", "jac", "hessian", "jit_grad")


def _close(got, want, what):
    got, want = tree_leaves(got), tree_leaves(want)
    assert len(got) == len(want), f"{what}: {len(got)} leaves vs {len(want)}"
    for g, w in zip(got, want):
        assert g.shape == w.shape, f"{what}: shape {tuple(g.shape)} vs {tuple(w.shape)}"
        torch.testing.assert_close(g, w, **TOL, msg=lambda m: f"{what}: {m}")


def _outs(y):
    return [o for o in (y if isinstance(y, (tuple, list)) else (y,)) if o.dtype.is_floating_point]


def _loss_of(case):
    """A scalar, nonlinear in f's outputs (second derivatives are nonzero), fixed weights."""
    gen = torch.Generator().manual_seed(11)
    weights = [torch.randn(o.shape, dtype=o.dtype, generator=gen) for o in _outs(case.f(case.params, case.x))]

    def loss(p, x):
        return sum((torch.sin(o) * w).sum() for o, w in zip(_outs(case.f(p, x)), weights))
    return loss


def _tangent(tree, seed):
    gen = torch.Generator().manual_seed(seed)
    return tree_map(lambda t: torch.randn(t.shape, dtype=t.dtype, generator=gen), tree)


def _jvp_oracle(g, primal, tangent, from_reverse=False):
    """torch.func.jvp; where an op has no forward AD formula, float64 central differences.
    from_reverse: J t as the vjp of torch.func's (linear) pullback."""
    if from_reverse:
        out, pullback = torch.func.vjp(g, primal)
        _, transposed = torch.func.vjp(pullback, tree_map(torch.zeros_like, out))
        return transposed((tangent,))[0]
    try:
        return torch.func.jvp(g, (primal,), (tangent,))[1]
    except (NotImplementedError, RuntimeError):
        eps = 1e-6
        hi = g(tree_map(lambda p, t: p + eps * t, primal, tangent))
        lo = g(tree_map(lambda p, t: p - eps * t, primal, tangent))
        return tree_map(lambda a, b: (a - b) / (2 * eps), hi, lo)


def _grad_oracle(loss, p, x):
    """torch.func.grad; torch.autograd where torch.func can't run the op (packed RNNs)."""
    try:
        return torch.func.grad(loss)(p, x)
    except RuntimeError:
        leaves = {k: v.detach().requires_grad_() for k, v in p.items()}
        return dict(zip(leaves, torch.autograd.grad(loss(leaves, x), list(leaves.values()))))


def _hessian_oracle(h, v):
    """torch.func.hessian; torch.autograd's double backward where an op has no forward AD;
    central differences of torch.autograd's gradient where it has no double backward."""
    try:
        return torch.func.hessian(h)(v)
    except (NotImplementedError, RuntimeError):
        pass
    try:
        return torch.autograd.functional.hessian(h, v)
    except (NotImplementedError, RuntimeError):
        pass

    def g(u):
        u = u.detach().requires_grad_()
        return torch.autograd.grad(h(u), u)[0]
    eps, cols = 1e-6, []
    for e in torch.eye(v.numel(), dtype=v.dtype):
        e = e.reshape(v.shape)
        cols.append((g(v + eps * e) - g(v - eps * e)) / (2 * eps))
    return torch.stack(cols, -1).reshape(v.shape + v.shape)


def _jac_oracle(g, x):
    try:
        return torch.func.jacrev(g)(x)
    except RuntimeError:
        return torch.autograd.functional.jacobian(g, x)


def _stack(rows):
    return tree_map(lambda *r: torch.stack(r), *rows)


def run_check(case, check, backend=None):
    f, p, x, xs = case.f, case.params, case.x, case.xs
    loss = _loss_of(case)
    if check == "grad":
        _close(functx.grad(loss)(p, x), _grad_oracle(loss, p, x), "grad")
    elif check == "vmap":
        _close(functx.vmap(f, in_dims=(None, 0))(p, xs), _stack([f(p, r) for r in xs]), "vmap")
    elif check == "vmap_grad":
        _close(functx.vmap(functx.grad(loss), in_dims=(None, 0))(p, xs),
               _stack([_grad_oracle(loss, p, r) for r in xs]), "vmap(grad)")
    elif check == "jvp":
        t = _tangent(p, 5)
        _close(functx.jvp(lambda q: f(q, x), (p,), (t,))[1], _jvp_oracle(lambda q: f(q, x), p, t, case.jvp_from_reverse),
               "jvp (params)")
    elif check == "jvp_x":
        t = _tangent(x, 6)
        _close(functx.jvp(lambda v: f(p, v), (x,), (t,))[1], _jvp_oracle(lambda v: f(p, v), x, t), "jvp (input)")
    elif check == "jac":
        def g(v):
            return _outs(f(p, v))[0]
        want = _jac_oracle(g, x)
        _close(functx.jacrev(g)(x), want, "jacrev")
        _close(functx.jacfwd(g)(x), want, "jacfwd")
    elif check == "hessian":
        # Over the smallest parameter (tiny), or the input where there are none.
        name = min(p, key=lambda k: (p[k].numel(), k)) if p else None

        def h(v):
            return loss({**p, name: v}, x) if name else loss(p, v)
        v = p[name] if name else x
        _close(functx.hessian(h)(v), _hessian_oracle(h, v), f"hessian wrt {name or 'the input'}")
    elif check == "jit_grad":
        got = functx.jit(functx.grad(loss), backend=backend)(p, x)
        _close(got, _grad_oracle(loss, p, x), f"jit(grad) on the {backend or 'default'} backend")
    else:
        raise ValueError(check)


# A slice that covers every family in CI; the whole matrix (~880 checks) behind --runslow.
CI_CASES = {
    "encoder_nf1_bf1_padding": ("grad", "vmap", "vmap_grad", "jvp", "jit_grad"), "decoder_nf0_bf0": ("grad", "vmap"),
    "mha_kpm_attn_bool_w1": ("grad", "vmap_grad", "jvp", "jit_grad"), "mha_attn_float_w0": ("grad", "vmap"),
    "LSTM_l2_bi1": ("grad", "vmap", "jvp"), "GRU_l1_bi0": ("vmap", "jvp_x", "jit_grad"), "packed_LSTM_bi1": ("grad", "jvp", "jit_grad"),
    "BatchNorm2d_eval": CHECKS, "BatchNorm1d_train": ("grad", "jvp", "hessian", "jit_grad"),
    "GroupNorm": ("grad", "vmap_grad", "jvp"), "Embedding_padding_idx": CHECKS,
    "Embedding_max_norm": ("grad", "vmap", "jit_grad"), "EmbeddingBag_max_offsets": CHECKS,
    "EmbeddingBag_mean": ("grad", "vmap_grad"), "EmbeddingBag_sum_offsets_weighted": ("grad", "vmap", "jit_grad"),
    "interp_bicubic_ac0": CHECKS, "interp_nearest_size": ("grad", "vmap", "jit_grad"),
    "grid_sample_bilinear_reflection_ac0": CHECKS, "grid_sample_nearest_border_ac1": ("grad", "vmap", "jvp_x"),
    "ConvTranspose2d": ("grad", "vmap_grad", "jvp", "jit_grad"),
    "mvn_cov_log_prob": CHECKS, "mvn_tril_kl": ("grad", "vmap_grad", "jvp"), "normal_entropy": ("grad", "hessian"),
    "cat_logits_log_prob": CHECKS, "cat_probs_kl": ("grad", "jvp"), "bernoulli_log_prob": CHECKS,
    "independent_kl": ("grad", "vmap", "jit_grad"), "mvn_tril_rsample": ("grad", "jvp_x"),
}


def _params(matrix):
    out = []
    for name, checks in matrix:
        out += [(name, c) for c in checks]
    return out


CI = _params(CI_CASES.items())
SLOW = [nc for nc in _params((n, CHECKS) for n in CASES) if nc not in set(CI)]


def _run(name, check, backend=None):
    case = CASES[name]()
    if check in case.skip:
        pytest.skip(case.why)
    run_check(case, check, backend)


@pytest.mark.parametrize("name,check", CI)
def test_corpus(name, check):
    _run(name, check)


@pytest.mark.slow
@pytest.mark.parametrize("name,check", SLOW)
def test_corpus_exhaustive(name, check):
    _run(name, check)


@pytest.mark.parametrize("name", ["GroupNorm", "normal_log_prob"])
def test_corpus_triton_backend(name):
    """jit(grad) through the fusion compiler (Triton's interpreter on CPU)."""
    _run(name, "jit_grad", backend="triton")


if __name__ == "__main__":
    names = sys.argv[1:] or list(CASES)
    bad = 0
    for n in names:
        case = CASES[n]()
        row = []
        for c in CHECKS:
            if c in case.skip:
                row.append(f"{c}:-")
                continue
            try:
                run_check(case, c)
                row.append(f"{c}:ok")
            except Exception as e:  # noqa: BLE001
                bad += 1
                row.append(f"{c}:FAIL")
                print(f"  {n} {c}: {type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e) else ''}")
        print(f"{n:40s} {' '.join(row)}", flush=True)
    print(f"{bad} failures")
