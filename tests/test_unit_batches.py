"""Eager levels run their units in batches (frontend/unit_batches.py).

Every check runs a function three times (a structure's first sighting runs unit by unit, the
second builds the combined unit, the third reuses it) and compares with torch.func, and with
functx with batches off (`unit_batches.ENABLED = False`), which runs each unit when called.
"""
import pytest
import torch
import torch.func
import torch.nn.functional as F

import functx
from functx.frontend import function_units, unit_batches

D = torch.float64


@pytest.fixture
def fresh_batches():
    function_units.VIEW_BUILDS.clear()      # (x[i] is a unit until 64 were built per process)
    unit_batches.COMBINED.clear()
    unit_batches.SEEN.clear()
    yield
    unit_batches.ENABLED = True


def _mlp(params, x):
    w0, b0, w1, b1 = params
    return torch.tanh(x @ w0 + b0) @ w1 + b1


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(5, 7, generator=g, dtype=D), torch.randn(7, generator=g, dtype=D),
            torch.randn(7, 3, generator=g, dtype=D), torch.randn(3, generator=g, dtype=D))


def _close(a, b):
    for x, y in zip(torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)):
        assert type(x) is torch.Tensor and type(y) is torch.Tensor
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def _three_times(make, args, oracle):
    """make(T) -> callable, for T in (functx, torch.func); checked on three calls, and against
    functx without batches."""
    want = oracle(*args)
    for _ in range(3):
        _close(make(functx)(*args), want)
    unit_batches.ENABLED = False
    try:
        _close(make(functx)(*args), want)
    finally:
        unit_batches.ENABLED = True


X = torch.randn(4, 5, dtype=D, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 2, 1, 2])


def _loss(params, x, y):
    return F.cross_entropy(_mlp(params, x), y)


@pytest.mark.parametrize("row", ["grad", "vmap_grad", "vmap", "jvp", "jacrev", "hvp", "hessian", "jacfwd"])
def test_transforms_of_an_mlp(fresh_batches, row):
    params = _params()
    v = _params(2)

    def make(T):
        if row == "grad":
            return T.grad(_loss)
        if row == "vmap_grad":
            one = lambda p, x, y: F.cross_entropy(_mlp(p, x[None]), y[None])
            return T.vmap(T.grad(one), in_dims=(None, 0, 0))
        if row == "vmap":
            return lambda p, x, y: T.vmap(_mlp, in_dims=(None, 0))(p, x)
        if row == "jvp":
            return lambda p, x, y: T.jvp(lambda q: _loss(q, x, y), (p,), (v,))
        if row == "jacrev":
            return lambda p, x, y: T.jacrev(lambda z: _mlp(p, z))(x[0])
        if row == "hvp":
            return lambda p, x, y: T.jvp(lambda q: T.grad(_loss)(q, x, y), (p,), (v,))[1]
        if row == "hessian":
            return lambda p, x, y: T.hessian(lambda z: _loss(p, z, y))(x)
        return lambda p, x, y: T.jacfwd(T.grad(lambda z: _loss(p, z, y)))(x)
    _three_times(make, (params, X, Y), make(torch.func))
    if row != "hessian":        # the combined unit ran (not only unit by unit)
        assert any(op.rules for op in unit_batches.COMBINED.values() if op is not unit_batches.UNCACHEABLE)


def test_value_read_mid_function_runs_the_batch(fresh_batches):
    # Python control flow on a value: the batch so far runs, then recording resumes.
    def f(T):
        def loss(p, x):
            h = torch.tanh(x @ p[0] + p[1])
            if h.sum() > 0:            # both branches are taken over the inputs below
                h = h * 2.0
            else:
                h = torch.sin(h)
            return (h @ p[2] + p[3]).pow(2).sum()
        return T.grad(loss)
    params = _params()
    for sign in (1.0, -1.0, 1.0, -1.0):
        x = sign * X
        _close(f(functx)(params, x), f(torch.func)(params, x))


def test_item_print_and_python_numbers(fresh_batches, capsys):
    def loss(p, x):
        h = torch.tanh(x @ p[0])
        print(h.shape, float(h.mean()) > -2)
        scale = h.abs().max().item()
        return (h / scale).sum()
    params = _params()
    for _ in range(3):
        _close(functx.grad(loss)(params, X), torch.func.grad(loss)(params, X))
    assert "True" in capsys.readouterr().out


def test_no_grad_blocks_inside_grad(fresh_batches):
    def loss(p, x):
        h = x @ p[0]
        with torch.no_grad():
            s = torch.tanh(h).sum()       # a constant for grad, recorded in its own batch
        return (torch.tanh(h) * s).sum()
    params = _params()
    for _ in range(3):
        _close(functx.grad(loss)(params, X), torch.func.grad(loss)(params, X))


def test_inner_transform_under_no_grad_reads_pending_values(fresh_batches):
    # The outer level's pending units were recorded with grad on; they run while an inner grad,
    # entered under no_grad, is active: they must still be differentiated by the outer level.
    def outer(x):
        h = torch.tanh(x * 1.5)          # pending in the outer batch
        with torch.no_grad():
            g = functx.grad(lambda z: (z * h).sum())(x)     # reads h inside the inner level
        return (h * h).sum() + g.sum()

    def outer_tf(x):
        h = torch.tanh(x * 1.5)
        with torch.no_grad():
            g = torch.func.grad(lambda z: (z * h).sum())(x)
        return (h * h).sum() + g.sum()
    x = X[0]
    for _ in range(3):
        _close(functx.grad(outer)(x), torch.func.grad(outer_tf)(x))


def test_plain_tensor_written_after_a_pending_unit_reads_it(fresh_batches):
    # (torch.func refuses writes into captured tensors; functx runs them, as plain torch would)
    def f(x, buf):
        y = x + buf              # pending: reads buf as it is now (add saves nothing)
        buf.add_(1.0)            # a plain in-place write: the pending batch runs first
        return (y * buf).sum()   # d/dx = buf after; the value reads buf before
    for enabled in (True, True, True, False):
        unit_batches.ENABLED = enabled
        buf = torch.full((5,), 3.0, dtype=D)
        out, g = functx.value_and_grad(f)(X[0], buf)
        _close(g, torch.full((5,), 4.0, dtype=D))
        _close(out, ((X[0] + 3.0) * 4.0).sum())
        _close(buf, torch.full((5,), 4.0, dtype=D))


def test_writing_a_tensor_grad_saved_raises_as_torch_does(fresh_batches):
    # torch's autograd raises (version counter); functx used to use the new values silently
    def f(x, buf):
        y = x * buf              # grad saves buf (the residual of the product)
        buf.add_(1.0)
        return (y * buf).sum()
    for enabled in (True, False):
        unit_batches.ENABLED = enabled
        with pytest.raises(functx.FunctxError, match="saved to compute the gradient"):
            functx.grad(f)(X[0], torch.full((5,), 3.0, dtype=D))
    x, buf = X[0].clone().requires_grad_(), torch.full((5,), 3.0, dtype=D, requires_grad=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        with torch.no_grad():
            pass
        y = x * buf
        with torch.no_grad():
            buf.add_(1.0)
        (y * buf).sum().backward()


def test_outer_values_in_nested_transforms(fresh_batches):
    # hessian-vector products and per-example gradients that close over outer (pending) values
    def f(T, x, v):
        def g(z):
            a = torch.sin(z) * torch.cos(x)          # x: the outer level's value
            return (a * a).sum()
        return T.jvp(T.grad(g), (x,), (v,))[1]
    x, v = X[0], X[1]
    for _ in range(3):
        _close(functx.vmap(lambda a, b: f(functx, a, b))(X, X.flip(0)),
               torch.func.vmap(lambda a, b: f(torch.func, a, b))(X, X.flip(0)))
    _close(f(functx, x, v), f(torch.func, x, v))


def test_has_aux_values_come_out_plain(fresh_batches):
    def loss(p, x):
        h = torch.tanh(x @ p[0])
        return h.sum(), {"h": h, "m": h.mean()}
    params = _params()
    for _ in range(3):
        g, aux = functx.grad(loss, has_aux=True)(params, X)
        g2, aux2 = torch.func.grad(loss, has_aux=True)(params, X)
        _close((g, aux), (g2, aux2))


def test_long_loop_is_batched_in_chunks(fresh_batches):
    def f(x):
        for k in range(150):          # more units than a batch holds
            x = torch.sin(x) * 0.9 + 0.01 * k
        return x.sum()
    for _ in range(3):
        _close(functx.grad(f)(X), torch.func.grad(f)(X))


def test_random_draws_keep_their_order(fresh_batches):
    # a draw is not a unit: the batch before it runs first, and the draws come in program order
    def f(x):
        h = torch.tanh(x)
        noise = torch.randn_like(h)
        return (h * noise).sum() + torch.rand(()) * h.mean()
    outs = []
    for enabled in (True, False):
        unit_batches.ENABLED = enabled
        torch.manual_seed(0)
        outs.append([functx.vmap(functx.grad(f), randomness="different")(X) for _ in range(3)])
    unit_batches.ENABLED = True
    for a, b in zip(*outs):
        _close(a, b)


def test_a_unit_failing_when_its_batch_runs_still_raises(fresh_batches):
    idx = torch.tensor([0, 7])      # out of range for a row of 5

    def f(x):
        y = torch.sin(x)[idx]
        return y.sum()
    for _ in range(3):
        with pytest.raises((IndexError, RuntimeError)):
            functx.grad(f)(X[0])
        with pytest.raises((IndexError, RuntimeError)):
            torch.func.grad(f)(X[0])


def test_leaked_value_still_refused(fresh_batches):
    saved = []

    def f(x):
        h = torch.tanh(x)
        saved.append(h)
        return h.sum()
    functx.grad(f)(X[0])
    with pytest.raises(Exception, match="leaked|after its transform"):
        (saved[0] * 2).sum().item()


def test_results_judged_unreferenced_are_recomputed_when_read(fresh_batches, monkeypatch):
    # reference counts decide which results a batch keeps; were one missed, reading it computes
    # it from what the batch ran (never an error, never a stale value)
    monkeypatch.setattr(unit_batches, "_UNREFERENCED", 10 ** 9)      # nothing looks referenced
    params = _params()
    for _ in range(3):
        _close(functx.grad(_loss)(params, X, Y), torch.func.grad(_loss)(params, X, Y))
        _close(functx.vmap(_mlp, in_dims=(None, 0))(params, X), torch.func.vmap(_mlp, in_dims=(None, 0))(params, X))


def test_values_of_a_batch_that_raised_are_still_there(fresh_batches):
    idx = torch.tensor([0, 7])
    seen = []

    def f(x):
        h = torch.sin(x)
        seen.append(h)
        try:
            y = h[idx]               # fails when the batch runs (or here, if not a unit)
            float(y.sum())           # runs the batch: raises
        except (IndexError, RuntimeError):
            pass
        return (h * 2).sum()         # h: recorded in the batch that raised, computed alone
    for _ in range(3):
        _close(functx.grad(f)(X[0]), 2 * torch.cos(X[0]))


def test_an_unused_result_that_raises_on_values_still_raises(fresh_batches):
    # the combined unit skips results nothing reads, but not those of units that read integer
    # tensors (indices): eager PyTorch raises there
    idx = torch.tensor([0, 7])

    def f(x):
        h = torch.sin(x)
        _ = torch.index_select(h, 0, idx)       # unused, out of range
        return (h * 2).sum()
    for _ in range(4):
        with pytest.raises((IndexError, RuntimeError)):
            functx.grad(f)(X[0])
        with pytest.raises((IndexError, RuntimeError)):
            functx.vmap(f)(X)
