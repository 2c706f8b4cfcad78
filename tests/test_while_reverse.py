"""Reverse mode through while_loop with a traced predicate (under jit and vmap): gradients
against torch.func of the same Python while loop, per lane under vmap; max_steps bounds the
tape and a longer loop raises."""
import pytest
import torch

import functx
from functx.core import FunctxError

F64 = torch.float64
G = torch.Generator().manual_seed(0)
W = torch.randn(3, 3, dtype=F64, generator=G) * 0.3


def body(s, w):
    x, t = s
    return torch.sin(x @ w) + x, t + x.abs().sum() * 0.1 + 0.2


def loss(x, w, max_steps=40):
    x2, t = functx.while_loop(lambda s: s[1] < 3.0, lambda s: body(s, w), (x, x.sum() * 0), max_steps=max_steps)
    return (x2 ** 2).sum() + t * x2.sum()


def loss_loop(x, w):
    """The oracle: the same loop in Python (the trip count depends on x)."""
    s = (x, x.sum() * 0)
    while s[1] < 3.0:
        s = body(s, w)
    return (s[0] ** 2).sum() + s[1] * s[0].sum()


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_grad_through_a_traced_while_loop_matches_the_python_loop():
    x = torch.randn(3, dtype=F64, generator=G)
    want = torch.func.grad(loss_loop, argnums=(0, 1))(x, W)
    # (eager backend only: the Triton backend fails on a scalar comparison fused into a
    # reduction kernel, a bug unrelated to loops: jit(lambda x, t: (t < 3.0, x.sum())))
    got = functx.jit(functx.grad(loss, argnums=(0, 1)))(x, W)
    for a, b in zip(got, want):
        close(a, b)
    # the eager Python loop (concrete predicate) agrees too
    for a, b in zip(functx.grad(loss, argnums=(0, 1))(x, W), want):
        close(a, b)


def test_vmap_of_grad_lanes_with_different_trip_counts():
    xs = torch.randn(5, 3, dtype=F64, generator=G) * torch.tensor([0.1, 1, 3, 6, 10], dtype=F64)[:, None]
    got = functx.vmap(functx.grad(loss, argnums=(0, 1)), in_axes=(0, None))(xs, W)
    want = [torch.func.grad(loss_loop, argnums=(0, 1))(x, W) for x in xs]
    close(got[0], torch.stack([w[0] for w in want]))
    close(got[1], torch.stack([w[1] for w in want]))


def test_newton_iteration_gradient():
    a = torch.tensor([2.0, 9.0, 0.5], dtype=F64)

    def newton_sqrt(a):
        return functx.while_loop(lambda c: (c * c - a).abs().max() > 1e-12, lambda c: (c + a / c) / 2, a + 1.0,
                                 max_steps=60)
    g = functx.jit(functx.grad(lambda a: newton_sqrt(a).sum()))(a)
    torch.testing.assert_close(g, 0.5 / a.sqrt(), atol=1e-8, rtol=1e-8)


def test_max_steps_is_required_and_enforced():
    x = torch.randn(3, dtype=F64, generator=G)
    with pytest.raises(FunctxError, match="needs max_steps"):
        functx.jit(functx.grad(lambda x: loss(x, W, None)))(x)
    with pytest.raises(FunctxError, match="more than max_steps=3 steps"):
        functx.jit(functx.grad(lambda x: loss(x, W, 3)))(x)
    with pytest.raises(FunctxError, match="more than max_steps=3 steps"):
        functx.vmap(functx.grad(lambda x: loss(x, W, 3)))(x[None])
    with pytest.raises(TypeError, match="max_steps must be a positive int"):
        functx.while_loop(lambda s: s < 1, lambda s: s + 1, x, max_steps=0)


def test_jit_writes_the_tape_in_place_into_its_own_buffer():
    x = torch.randn(3, dtype=F64, generator=G)
    x_before = x.clone()
    f = functx.jit(functx.grad(loss, argnums=(0, 1)))
    for a, b in zip(f(x, W), torch.func.grad(loss_loop, argnums=(0, 1))(x, W)):
        close(a, b)
    close(f(x, W)[0], torch.func.grad(loss_loop)(x, W))       # a second call: a fresh tape
    assert torch.equal(x, x_before)                            # the caller's tensors untouched
    text = str(functx.explain(functx.grad(loss, argnums=(0, 1)))(x, W))
    assert "index_copy_(" in text and ".clone(memory_format=torch.contiguous_format)" in text
    # under vmap the write is the functional scatter (per-lane steps)
    xs = torch.randn(2, 3, dtype=F64, generator=G)
    got = functx.jit(functx.vmap(functx.grad(loss), in_axes=(0, None)))(xs, W)
    close(got, torch.stack([torch.func.grad(loss_loop)(x, W) for x in xs]))


def test_backward_runs_only_the_steps_taken():
    """The masked tangent scan over the tape names the trip count (scan's trip_count), so it
    and its transpose stop after the n steps taken, whatever max_steps is."""
    x = torch.randn(3, dtype=F64, generator=G)
    want = torch.func.grad(loss_loop, argnums=(0, 1))(x, W)
    for max_steps in (40, 4000):
        got = functx.jit(functx.grad(loss, argnums=(0, 1)), static_argnums=2)(x, W, max_steps)
        for a, b in zip(got, want):
            close(a, b)
    text = str(functx.explain(functx.grad(lambda v, w: loss(v, w, 4000)), backend="eager")(x, W))
    assert text.count("n = max(0, min(4000, int(") == 1          # the transposed scan's loop
    # linearize's forward direction runs the tangent scan itself (the impl path)
    t = torch.randn(3, dtype=F64, generator=G)
    _, lin = functx.linearize(lambda v: functx.jit(loss, static_argnums=2)(v, W, 4000), x)
    close(lin(t), torch.func.jvp(lambda v: loss_loop(v, W), (x,), (t,))[1])


def test_scan_trip_count_runs_the_first_steps_and_zero_fills_ys():
    from functx.transforms.control_flow import scan_p
    from functx.transforms.control_flow.common import closed_graph
    from functx.core.trace import type_of
    from functx.frontend import unwrap, wrap
    import functx.prims as P
    xs = torch.arange(1.0, 6.0, dtype=F64)
    body, _ = closed_graph(lambda n, c, x: [P.add(c, x), P.mul(x, 2.0)],
                           [type_of(torch.tensor(0)), type_of(xs[0]), type_of(xs[0])])

    def run(n, c, xs, reverse):
        return [wrap(o) for o in scan_p.bind(unwrap(n), unwrap(c), unwrap(xs), body=body, num_consts=1, num_carry=1,
                                             length=5, reverse=reverse, unroll=1, remat=False, trip_count=0)]
    for reverse in (False, True):
        for f in (run, functx.jit(lambda n, c, xs: run(n, c, xs, reverse))):
            c, ys = (f(torch.tensor(3), torch.tensor(0.0, dtype=F64), xs, reverse) if f is run
                     else f(torch.tensor(3), torch.tensor(0.0, dtype=F64), xs))
            close(c, torch.tensor(6.0, dtype=F64))
            close(ys, torch.tensor([2.0, 4.0, 6.0, 0.0, 0.0], dtype=F64))


def test_hessian_through_the_tape():
    """Forward over reverse: the recording loop itself is differentiated (the tape write's jvp)."""
    x = torch.randn(3, dtype=F64, generator=G)
    got = functx.jit(functx.hessian(lambda v: loss(v, W)))(x)
    torch.testing.assert_close(got, torch.func.hessian(lambda v: loss_loop(v, W))(x), atol=1e-9, rtol=1e-9)
