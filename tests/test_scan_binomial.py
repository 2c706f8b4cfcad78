"""scan(..., remat='binomial', checkpoints=k): Revolve's schedule (core/revolve.py) against
brute-force optimal schedules, and gradients against the stored-residuals scan (float64),
under jit and vmap; what it refuses (random draws it would redraw, forward over reverse)."""
import weakref
from functools import lru_cache

import pytest
import torch

import functx
from functx.core import FunctxError, revolve
from functx.transforms.ad import linearize_flat
from functx.frontend import unwrap, wrap

F64 = torch.float64
G = torch.Generator().manual_seed(0)
W = torch.randn(4, 4, dtype=F64, generator=G) * 0.5
H0 = torch.randn(2, 4, dtype=F64, generator=G)
XS = torch.randn(23, 2, 4, dtype=F64, generator=G)


@lru_cache(maxsize=None)
def brute_force_cost(n, s):
    """The fewest forward steps reversing n steps with s carries needs (Revolve's recursion,
    every split tried)."""
    if n <= 1:
        return 0
    if s == 1:
        return n * (n - 1) // 2
    return min(m + brute_force_cost(n - m, s - 1) + brute_force_cost(m, s) for m in range(1, n))


def test_schedule_is_optimal_reverses_every_step_once_and_holds_at_most_k_carries():
    for s in range(1, 6):
        for n in range(1, 50):
            assert revolve.forward_cost(n, s) == brute_force_cost(n, s)
            advanced, order, live, peak = [0], [], weakref.WeakSet(), [0]

            class Carry:                      # counts the carries alive (CPython frees at once)
                def __init__(self, p):
                    self.p = p
                    live.add(self)
                    peak[0] = max(peak[0], len(live))

            def advance(c, p):
                assert c.p == p
                advanced[0] += 1
                return Carry(p + 1)

            def back(p, c):
                assert c.p == p
                order.append(p)
            revolve.run_schedule(n, s, advance, back, Carry(0))
            assert order == list(range(n - 1, -1, -1))
            assert advanced[0] == brute_force_cost(n, s)
            assert peak[0] <= s + 2           # k stored carries + the input and output of the step running
    with pytest.raises(ValueError, match="at least one slot"):
        revolve.run_schedule(3, 0, None, None, None)


def loss(w, h0, xs, remat=False, k=None, reverse=False):
    def f(carry, x):
        h, i = carry
        h = h + 0.3 * torch.tanh(h @ w + x) * (1 + 0.05 * i)     # an integer carry rides along
        return (h, i + 1), (h ** 2).sum(-1)
    (h, _), ys = functx.scan(f, (h0, torch.tensor(0)), xs, remat=remat, checkpoints=k, reverse=reverse)
    return (h ** 2).sum() + (ys * ys.cos()).sum()


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("k", [1, 2, 4, None, 40])
def test_binomial_grad_matches_stored_residuals(reverse, k):
    want = functx.grad(loss, argnums=(0, 1, 2))(W, H0, XS, False, None, reverse)
    got = functx.grad(loss, argnums=(0, 1, 2))(W, H0, XS, "binomial", k, reverse)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)
    jitted = functx.jit(functx.grad(loss, argnums=(0, 1, 2)), static_argnums=(3, 4, 5))
    torch.testing.assert_close(jitted(W, H0, XS, "binomial", k, reverse), want, atol=1e-10, rtol=1e-9)


def test_binomial_under_vmap_jit_and_linearize():
    h0s = torch.randn(3, 2, 4, dtype=F64, generator=G)
    g = lambda remat: functx.vmap(functx.grad(lambda w, h: loss(w, h, XS, remat, 3 if remat else None), argnums=(0, 1)),
                                  in_axes=(None, 0))
    want = g(False)(W, h0s)
    torch.testing.assert_close(g("binomial")(W, h0s), want)
    torch.testing.assert_close(functx.jit(g("binomial"))(W, h0s), want)
    # the forward direction of the linear tangent loop (linearize's jvp)
    t = torch.randn_like(H0)
    _, lin = functx.linearize(lambda h: loss(W, h, XS, "binomial", 3), H0)
    torch.testing.assert_close(lin(t), functx.jvp(lambda h: loss(W, h, XS), (H0,), (t,))[1])


def _residual_bytes(remat, k=None):
    _, graph, _ = linearize_flat(lambda a: [unwrap(loss(wrap(a[0]), wrap(a[1]), XS, remat, k))], [W, H0])
    return sum(c.numel() * c.element_size() for c in graph.consts)


def test_binomial_stores_no_carry_per_step():
    # residuals: the scan's own inputs (xs, w, h0) and the loss's, not the per-step carries
    # remat=True stacks (23 steps x 2 x 4 float64)
    assert _residual_bytes("binomial", 3) + 23 * 2 * 4 * 8 <= _residual_bytes(True)


def test_binomial_refuses_what_it_cannot_recompute():
    def noisy(h0):
        h, _ = functx.scan(lambda h, x: (h * torch.randn_like(h) + x, None), h0, XS, remat="binomial")
        return h.sum()
    with pytest.raises(FunctxError, match="redraw"):
        functx.grad(noisy)(H0)
    with pytest.raises(FunctxError, match="forward over reverse"):
        functx.hessian(lambda h: loss(W, h, XS, "binomial", 3))(H0)


@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_binomial_on_the_fusion_backends(backend):
    pytest.importorskip("triton") if backend == "triton" else None
    args = (W.float(), H0.float(), XS[:6].float())
    want = functx.grad(loss, argnums=(0, 1, 2))(*args)
    got = functx.jit(functx.grad(lambda w, h, x: loss(w, h, x, "binomial", 2), argnums=(0, 1, 2)), backend=backend)(*args)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
