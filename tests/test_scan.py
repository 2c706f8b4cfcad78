"""functx.scan / fori_loop as primitives: results against a Python loop, derivatives against
torch.func of the unrolled loop and finite differences (functx.testing), vmap against a loop
over the batch, jit on both backends against eager; one equation whatever the length."""
import pytest
import torch

import functx
from functx.testing import check_grads

F64 = torch.float64
G = torch.Generator().manual_seed(0)
W = torch.randn(3, 3, dtype=F64, generator=G) * 0.6
C0 = torch.randn(3, dtype=F64, generator=G)
XS = torch.randn(6, 3, dtype=F64, generator=G)
V = torch.randn(6, dtype=F64, generator=G)


def step(w):
    def f(carry, x):
        h, acc = carry["h"], carry["acc"]
        h = torch.tanh(h @ w + x["a"]) * x["b"]
        return {"h": h, "acc": acc + (h * h).sum()}, (h.sin(), h.sum())
    return f


def scanned(w, c0, xs, v, reverse=False, remat=False):
    carry, (ys, s) = functx.scan(step(w), {"h": c0, "acc": c0.sum() * 0}, {"a": xs, "b": 1 + v[:, None] ** 2},
                                 reverse=reverse, remat=remat)
    return carry["h"].sum() * carry["acc"] + (ys * xs).sum() + (s * v).sum()


def looped(w, c0, xs, v, reverse=False, remat=False):
    """The oracle: the same steps as a Python loop."""
    carry, ys, ss = {"h": c0, "acc": c0.sum() * 0}, [None] * len(xs), [None] * len(xs)
    order = range(len(xs) - 1, -1, -1) if reverse else range(len(xs))
    for i in order:
        carry, (ys[i], ss[i]) = step(w)(carry, {"a": xs[i], "b": 1 + v[i] ** 2})
    return carry["h"].sum() * carry["acc"] + (torch.stack(ys) * xs).sum() + (torch.stack(ss) * v).sum()


def close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_matches_python_loop_with_pytrees(reverse):
    close(scanned(W, C0, XS, V, reverse), looped(W, C0, XS, V, reverse))
    close(functx.jit(scanned, static_argnums=4)(W, C0, XS, V, reverse), looped(W, C0, XS, V, reverse))
    # no xs: length steps with x None; y None stacks nothing
    carry, ys = functx.scan(lambda c, x: (c * 2 + 1, None), C0, length=4)
    want = C0
    for _ in range(4):
        want = want * 2 + 1
    close(carry, want)
    assert ys is None
    c, ys = functx.scan(lambda c, x: (c, x * 2), C0, XS[:0])    # zero steps
    close(c, C0)
    assert ys.shape == (0, 3)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("remat", [False, True, "sqrt", "binomial"])
def test_scan_grad_matches_torch_func_of_the_loop(reverse, remat):
    argnums = (0, 1, 2, 3)
    want = torch.func.grad(looped, argnums=argnums)(W, C0, XS, V, reverse)
    got = functx.grad(scanned, argnums=argnums)(W, C0, XS, V, reverse, remat)
    for a, b in zip(got, want):
        close(a, b)
    jg = functx.jit(functx.grad(scanned, argnums=argnums), static_argnums=(4, 5))
    for a, b in zip(jg(W, C0, XS, V, reverse, remat), want):
        close(a, b)


def test_scan_derivatives_against_finite_differences():
    # forward and reverse, first and second order (jvp of jvp, vjp of vjp, jvp of vjp)
    # (values reach ~150: finite differences of second order are good to ~1e-6 relative)
    check_grads(lambda w, c0, xs: scanned(w, c0, xs, V), (W, C0, XS), order=2, rtol=1e-4)


def test_scan_hessian_matches_torch_func():
    close(functx.hessian(scanned, argnums=1)(W, C0, XS, V),
          torch.func.hessian(looped, argnums=1)(W, C0, XS, V))


def test_scan_under_vmap_is_one_scan_and_matches_a_loop():
    c0s = torch.randn(4, 3, dtype=F64, generator=G)
    xss = torch.randn(6, 4, 3, dtype=F64, generator=G)        # batch on axis 1
    f = functx.vmap(scanned, in_axes=(None, 0, 1, None))
    want = torch.stack([looped(W, c0s[b], xss[:, b], V) for b in range(4)])
    close(f(W, c0s, xss, V), want)
    g = functx.make_graph(f)(W, c0s, xss, V)
    assert [e.prim.name for e in g.eqns].count("scan") == 1
    # per-example gradients through the scan: vmap of grad
    pg = functx.vmap(functx.grad(scanned, argnums=1), in_axes=(None, 0, 1, None))(W, c0s, xss, V)
    close(pg, torch.stack([torch.func.grad(looped, argnums=1)(W, c0s[b], xss[:, b], V) for b in range(4)]))


def test_trace_is_independent_of_length():
    def loss(c0, xs):
        c, ys = functx.scan(lambda c, x: (torch.tanh(c @ W + x), c.sum()), c0, xs)
        return c.sum() + ys.sum()
    sizes = []
    for n in (3, 1000):
        xs = torch.zeros(n, 3, dtype=F64)
        g = functx.make_graph(functx.grad(loss))(C0, xs)
        sizes.append(len(g.eqns))
        assert [e.prim.name for e in g.eqns].count("scan") == 2      # the primal scan and its transpose
    assert sizes[0] == sizes[1]


def test_jit_emits_a_loop_on_both_backends():
    def loss(w, c0, xs):
        c, ys = functx.scan(lambda c, x: (torch.tanh(c @ w + x), (c * c).sum()), c0, xs)
        return c.sum() + ys.sum()
    args = (W.float(), C0.float(), XS.float())
    want = torch.func.grad(lambda w, c, x: looped_simple(w, c, x), argnums=(0, 1, 2))(*args)
    report = str(functx.explain(functx.grad(loss, argnums=(0, 1, 2)), backend="eager")(*args))
    assert "for i in range(5, -1, -1):" in report and "-- loops --" in report
    for backend in ("eager", "triton"):
        got = functx.jit(functx.grad(loss, argnums=(0, 1, 2)), backend=backend)(*args)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def looped_simple(w, c, xs):
    s = 0
    for x in xs:
        s = s + (c * c).sum()
        c = torch.tanh(c @ w + x)
    return c.sum() + s


def _stacked_residuals(graph):
    """Stacked per-step residuals of the primal scan in a grad graph: its outputs beyond the
    carry and the user's ys."""
    first = next(e for e in graph.eqns if e.prim.name == "scan")
    return [v for v in first.outputs[first.params["num_carry"]:]]


def test_remat_stores_fewer_residuals():
    def loss(c0, xs, remat):
        c, _ = functx.scan(lambda c, x: (torch.tanh(torch.sin(c @ W) * x + c), None), c0, xs, remat=remat)
        return c.sum()
    plain = _stacked_residuals(functx.make_graph(functx.grad(loss), static_argnums=2)(C0, XS, False))
    remat = _stacked_residuals(functx.make_graph(functx.grad(loss), static_argnums=2)(C0, XS, True))
    assert len(remat) == 1 < len(plain)            # only the carry per step
    close(functx.grad(loss)(C0, XS, True), functx.grad(loss)(C0, XS, False))


def test_fori_loop_static_is_a_differentiable_scan_traced_is_a_while_loop():
    body = lambda i, v: torch.sin(v) * (i + 1) + v @ W
    want = C0
    for i in range(2, 7):
        want = body(torch.tensor(i), want)
    close(functx.fori_loop(2, 7, body, C0), want)
    g = functx.make_graph(lambda c: functx.fori_loop(2, 7, body, c))(C0)
    assert [e.prim.name for e in g.eqns].count("scan") == 1

    def loop_ref(c):
        for i in range(2, 7):
            c = body(torch.tensor(i), c)
        return c.sum()
    close(functx.grad(lambda c: functx.fori_loop(2, 7, body, c).sum())(C0), torch.func.grad(loop_ref)(C0))
    # traced bounds under jit: a while_loop
    jf = functx.jit(lambda lo, hi, c: functx.fori_loop(lo, hi, body, c))
    close(jf(torch.tensor(2), torch.tensor(7), C0), want)
    g = functx.make_graph(lambda lo, hi, c: functx.fori_loop(lo, hi, body, c))(torch.tensor(2), torch.tensor(7), C0)
    assert "while_loop" in [e.prim.name for e in g.eqns]


def test_scan_errors_name_the_argument():
    f = lambda c, x: (c, x)
    with pytest.raises(ValueError, match=r"xs leaf 1 \(at \(1,\)\) has leading size 4, but xs leaf 0"):
        functx.scan(f, C0, (XS, XS[:4]))
    with pytest.raises(ValueError, match="length says 5"):
        functx.scan(f, C0, XS, length=5)
    with pytest.raises(ValueError, match="pass xs"):
        functx.scan(f, C0)
    with pytest.raises(TypeError, match=r"carry output carry leaf 0 \(at \('h',\)\) is f64\[2\]"):
        functx.scan(lambda c, x: ({"h": c["h"][:2]}, None), {"h": C0}, XS)
    with pytest.raises(TypeError, match="init leaf 0 is a str"):      # (Python numbers are weak tensors)
        functx.scan(f, "1.0", XS)
    with pytest.raises(TypeError, match="must return a pair"):
        functx.scan(lambda c, x: c, C0, XS)
    with pytest.raises(ValueError, match="remat must be"):
        functx.scan(f, C0, XS, remat="log")
    with pytest.raises(ValueError, match="is for remat='binomial'"):
        functx.scan(f, C0, XS, remat=True, checkpoints=3)
    with pytest.raises(ValueError, match="checkpoints must be a positive int"):
        functx.scan(f, C0, XS, remat="binomial", checkpoints=0)
    with pytest.raises(TypeError, match="fori_loop: loop bounds"):
        functx.fori_loop(0.0, 3, lambda i, v: v, C0)


def test_lax_spellings_and_map():
    """JAX code's lax.scan / lax.fori_loop / lax.map run unchanged through functx.lax;
    lax.map equals a Python loop, and its gradient torch.func's of that loop."""
    from functx import lax
    assert lax.scan is functx.scan and lax.fori_loop is functx.fori_loop and lax.cond is functx.cond
    x = torch.randn(5, 3, 3, dtype=torch.float64)

    def f(m):
        return (m @ m.T).sin()
    ref = torch.stack([f(m) for m in x])
    torch.testing.assert_close(lax.map(f, x), ref)
    torch.testing.assert_close(functx.jit(lambda x: lax.map(f, x))(x), ref)
    g = functx.grad(lambda x: lax.map(f, x).sum())(x)
    torch.testing.assert_close(g, torch.func.grad(lambda x: torch.stack([f(m) for m in x]).sum())(x))
    pair = lax.map(lambda t: t[0] * t[1], (x, x + 1))      # a pytree of inputs
    torch.testing.assert_close(pair, x * (x + 1))
