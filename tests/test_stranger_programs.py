"""Ordinary research programs written by strangers (Gaussian processes, NeRF rendering,
normalizing flows, HMC, neural ODEs, MAML ensembles, energy-based models, losses and
indexing idioms), transformed by functx eagerly and under functx.jit. Each test pins either
a divergence that was found and fixed (the docstring says what was wrong and which oracle
decides) or a representative program that already worked. Oracles run in float64:
torch.func / torch.autograd on the same code, central finite differences where those
disagree with torch.func, and a Python loop for vmap."""
import itertools
import warnings

import pytest
import torch

import functx
from fd_oracles import central_differences

D = torch.float64


def _autograd_grad(f):
    def g(x):
        x = x.detach().clone().requires_grad_()
        return torch.autograd.grad(f(x), x)[0]
    return g


def _fd_hessian(f, x):
    """Finite differences of torch.autograd's gradient."""
    g = _autograd_grad(f)
    return torch.stack([central_differences(lambda y: g(y).reshape(-1)[i], x) for i in range(x.numel())]).reshape(
        x.shape + x.shape)


# ---------------------------------------------------------------- Gaussian processes

@pytest.mark.parametrize("upper,transpose,unitriangular", list(itertools.product([False, True], repeat=3)))
def test_triangular_solve_forward_mode_and_hessian(upper, transpose, unitriangular):
    """A GP's whitened residual with the deprecated torch.triangular_solve: the op ran opaquely
    with torch's forward-mode formula, which is wrong with transpose=True or
    unitriangular=True (jvp/jacfwd off by up to 5x, silently) and whose second order raises
    "a forward gradient that has a different size" (hessian crashed in every case, as in
    torch.func). Oracle: finite differences of torch.autograd's gradient."""
    torch.manual_seed(0)
    A = torch.randn(4, 4, dtype=D)
    L = torch.linalg.cholesky(A @ A.T + 4 * torch.eye(4, dtype=D))
    M, R, b = (L.mT if upper else L), torch.randn(4, 4, dtype=D), torch.randn(4, 2, dtype=D)

    def f(t):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            X = torch.triangular_solve(b * t[0], M * t[1] + torch.diag(t) + R, upper=upper,
                                       transpose=transpose, unitriangular=unitriangular).solution
        return X.sin().sum()

    t = torch.tensor([1.1, 0.9, 1.2, 0.8], dtype=D)
    g = _autograd_grad(f)(t)
    torch.testing.assert_close(g, central_differences(f, t))
    torch.testing.assert_close(functx.jacfwd(f)(t), g)
    torch.testing.assert_close(functx.hessian(f)(t), _fd_hessian(f, t))


def test_triangular_solve_broadcasts_its_copy_of_A_and_checks_dtypes():
    """torch.triangular_solve's second result is A broadcast to the batch shape; b and A of
    different dtypes raise (linalg.solve_triangular would promote)."""
    torch.manual_seed(0)
    A = torch.randn(3, 1, 4, 4, dtype=D).triu() + 4 * torch.eye(4, dtype=D)
    b = torch.randn(5, 4, 2, dtype=D)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = torch.triangular_solve(b, A)
        got = functx.jit(torch.triangular_solve)(b, A)
        torch.testing.assert_close(tuple(got), tuple(want))
        with pytest.raises(RuntimeError, match="same dtype"):
            functx.jit(torch.triangular_solve)(b.float(), A)


# ---------------------------------------------------------------- losses

def _ctc(x):
    return torch.nn.functional.ctc_loss(torch.log_softmax(x.reshape(6, 1, 5), -1), torch.tensor([[1, 2, 2]]),
                                        torch.tensor([6]), torch.tensor([3]), reduction="sum")


def test_ctc_loss_forward_mode_raises_naming_the_op():
    """A speech model's CTC loss under jvp / hessian: torch has no forward-mode formula for
    ctc_loss and no derivative of its backward, so the opaque op's J t (the vjp of its
    pullback) died deep inside torch.autograd with "derivative for
    aten::_ctc_loss_backward is not implemented"; now functx names the op and what works.
    grad still matches torch.autograd."""
    torch.manual_seed(0)
    x = torch.randn(6, 5, dtype=D)
    torch.testing.assert_close(functx.grad(_ctc)(x), _autograd_grad(_ctc)(x))
    for transform in (lambda: functx.jvp(_ctc, (x,), (x,)), lambda: functx.hessian(_ctc)(x)):
        with pytest.raises(NotImplementedError, match=r"_ctc_loss.* has no forward-mode derivative"):
            transform()


# ---------------------------------------------------------------- indexing and scatter idioms

_SEGMENTS = torch.tensor([[0, 1, 2, 0], [2, 2, 1, 0], [1, 0, 0, 2], [0, 0, 0, 0], [1, 1, 1, 1]])


def _segment_prod(x):
    return torch.ones(3, 4, dtype=x.dtype).scatter_reduce(0, _SEGMENTS, x, reduce="prod").sin().sum()


def test_vmap_of_grad_of_scatter_reduce_prod():
    """Per-example gradients of a segment product (scatter_reduce(reduce="prod")): the op is
    opaque and torch's backward formula for "prod" reads a value with .item(), so torch.func's
    vmap of it raised ("vmap: It looks like you're calling .item()", as torch.func.vmap(grad)
    does). The opaque batch rule now loops over the examples where torch cannot batch.
    Oracle: a Python loop of torch.func.grad; the Hessian checked by finite differences
    (torch.func's Hessian of it is wrong)."""
    torch.manual_seed(0)
    xs = torch.randn(3, 5, 4, dtype=D)
    want = torch.stack([torch.func.grad(_segment_prod)(x) for x in xs])
    torch.testing.assert_close(functx.vmap(functx.grad(_segment_prod))(xs), want)
    torch.testing.assert_close(functx.jit(functx.vmap(functx.grad(_segment_prod)))(xs), want)
    h = functx.vmap(functx.hessian(_segment_prod))(xs[:1])[0]
    torch.testing.assert_close(h, _fd_hessian(_segment_prod, xs[0]))


def test_topk_returns_torchs_order_of_ties_and_of_unsorted_results():
    """A mixture-of-experts router (top-k of gate scores, then per-slot weights) and a
    sampler's unsorted top-k: functx's topk was a stable sort and a slice, so with tied scores
    it chose other indices than torch (smallest 3 of [1, 3, 1, 3, 2, 1]: [0, 2, 5] where
    torch gives [5, 0, 2]) and with sorted=False it returned sorted values where torch's are
    in another order: different numbers downstream, silently. Now topk is its own primitive
    that runs torch.topk. Oracle: eager torch (values, indices) and torch.func.grad."""
    x = torch.tensor([1.0, 3.0, 1.0, 3.0, 2.0, 1.0], dtype=D)
    torch.manual_seed(0)
    y = torch.randn(3, 200, dtype=D)
    slots = torch.arange(1.0, 6.0, dtype=D)
    for v, kw in ((x, dict(k=3, largest=False)), (x, dict(k=4, largest=False, sorted=False)),
                  (y, dict(k=5, sorted=False)), (y, dict(k=2, dim=0, largest=False, sorted=False))):
        want = v.topk(**kw)
        for transform in (functx.jit, lambda f: lambda v: tuple(r[0] for r in functx.vmap(f)(v[None]))):
            got = transform(lambda v: tuple(v.topk(**kw)))(v)
            torch.testing.assert_close(got[0], want.values)
            torch.testing.assert_close(got[1], want.indices)
    router = lambda v: (v.topk(3, largest=False).values * slots[:3]).sum()  # noqa: E731
    torch.testing.assert_close(functx.grad(router)(x), torch.func.grad(router)(x))
    sampler = lambda v: (v.topk(5, sorted=False).values * slots).sum()  # noqa: E731
    torch.testing.assert_close(functx.vmap(functx.grad(sampler))(y), torch.func.vmap(torch.func.grad(sampler))(y))


_TEMPLATE = torch.arange(12.0, dtype=D).reshape(3, 4)


def test_writing_into_a_clone_of_a_closed_over_constant():
    """out = template.clone(); out[idx] = v: torch.func.grad allows it. (A user's clone() of a
    plain tensor is a made tensor, as torch.zeros is; functx's generated rules' clones are not:
    tests/test_stranger_programs5.py.)"""
    def f(s):
        out = _TEMPLATE.clone()
        out[torch.tensor([1, 2])] = s[:2]
        return (out * out).sum()
    s = torch.randn(5, 4, dtype=D)
    torch.testing.assert_close(functx.grad(f)(s), torch.func.grad(f)(s))

# ---------------------------------------------------------------- grad mode inside transforms

def _no_grad_rescaled_weights(x):
    """Importance weights computed and normalized in place under no_grad (a constant for
    reverse mode), then used."""
    with torch.no_grad():
        w = x.exp()
        w.mul_(2)
    return (x * w).sum()


def _no_grad_write_into_a_tracked_value(x):
    """A value that requires grad, corrected in place under no_grad (its gradient stays
    y's, its values change)."""
    y = x * x
    with torch.no_grad():
        y.add_(x.sin())
    return (y ** 2).sum()


def _eager_forward_over_reverse(f, x):
    """torch's own Hessian: forward-mode AD (torch.autograd.forward_ad) over autograd.grad."""
    import torch.autograd.forward_ad as fwAD
    rows = []
    for e in torch.eye(x.numel(), dtype=x.dtype):
        with fwAD.dual_level():
            xp = x.clone().requires_grad_()
            (g,) = torch.autograd.grad(f(fwAD.make_dual(xp, e)), xp, create_graph=True)
            rows.append(fwAD.unpack_dual(g).tangent)
    return torch.stack(rows)


@pytest.mark.parametrize("f", [_no_grad_rescaled_weights, _no_grad_write_into_a_tracked_value])
def test_hessian_of_an_in_place_write_under_no_grad(f):
    """An in-place write under no_grad changes the values and keeps the derivative reverse
    mode had; forward mode ignores grad mode and sees the write. functx made the change a
    stop_gradient for every level, so hessian (jacfwd over jacrev) and jvp(grad) lost the
    forward level's part of it (off by 2x for the rescaled weights); grad and jacfwd alone
    were right. Oracles: torch's eager forward-mode over autograd.grad, and torch.func."""
    x = torch.tensor([0.3, -0.5, 1.2], dtype=D)
    want = _eager_forward_over_reverse(f, x)
    torch.testing.assert_close(torch.func.hessian(f)(x), want)
    torch.testing.assert_close(functx.hessian(f)(x), want)
    torch.testing.assert_close(functx.jit(functx.hessian(f))(x), want)
    one = torch.ones_like(x)
    torch.testing.assert_close(functx.jvp(functx.grad(f), (x,), (one,))[1], want.sum(0))
    torch.testing.assert_close(functx.grad(f)(x), torch.func.grad(f)(x))


# ---------------------------------------------------------------- what eager PyTorch rejects

_X = torch.randn(3, 4, dtype=D)
_REJECTED = {
    # name: (f, the exception eager PyTorch raises)
    "x[float index]": (lambda x: x[torch.tensor([0.0, 1.0])], IndexError),
    "x[int16 index]": (lambda x: x[torch.tensor([0, 1], dtype=torch.int16)], IndexError),
    "x[float index] = v": (lambda x: x.clone().index_put_((torch.tensor([0.0]),), torch.tensor(1.0, dtype=D)),
                           IndexError),
    "scatter of a float32 src": (lambda x: x.scatter(0, torch.tensor([[0]]), x[:1, :1].float()), RuntimeError),
    "scatter_add of a float32 src": (lambda x: x.scatter_add(0, torch.tensor([[0]]), x[:1, :1].float()),
                                     RuntimeError),
    "scatter_reduce of a float32 src": (
        lambda x: x.scatter_reduce(0, torch.tensor([[0]]), x[:1, :1].float(), "sum"), RuntimeError),
    "scatter with a float index": (lambda x: x.scatter(0, torch.tensor([[0.0]]), x), RuntimeError),
    "gather with a float index": (lambda x: x.gather(1, torch.tensor([[0.0]])), RuntimeError),
    "take with a float index": (lambda x: torch.take(x, torch.tensor([0.0])), RuntimeError),
    "index_add with a float index": (lambda x: x.index_add(0, torch.tensor([0.0]), x[:1]), RuntimeError),
    "index_copy with a float index": (lambda x: x.index_copy(0, torch.tensor([0.0]), x[:1]), RuntimeError),
    "index_fill with a float index": (lambda x: x.index_fill(0, torch.tensor([0.0]), 1.0), IndexError),
    "conv1d with a float32 weight": (lambda x: torch.nn.functional.conv1d(x[None], x[None, :, :2].float()),
                                     RuntimeError),
    "softmax of a Long tensor": (lambda x: torch.softmax(x.long(), 0), NotImplementedError),
    "log_softmax of a Long tensor": (lambda x: torch.log_softmax(x.long(), 0), NotImplementedError),
    "cross_entropy of Long logits": (
        lambda x: torch.nn.functional.cross_entropy(x.long(), torch.tensor([0, 1, 2])), NotImplementedError),
    "mean of a Long tensor": (lambda x: x.long().mean(), RuntimeError),
    "mean over a dim of a Long tensor": (lambda x: x.long().mean(0), RuntimeError),
    "norm of a Long tensor": (lambda x: x.long().norm(), RuntimeError),
    "layer_norm of a Long tensor": (lambda x: torch.nn.functional.layer_norm(x.long(), (4,)), NotImplementedError),
    "cdist of Long tensors": (lambda x: torch.cdist(x.long(), x.long()), RuntimeError),
    "topk with k past the size (vmap)": (lambda x: x.topk(10), RuntimeError),
}


@pytest.mark.parametrize("case", sorted(_REJECTED))
def test_programs_eager_torch_rejects_on_dtypes_are_rejected(case):
    """Index, scatter, softmax, mean, norm and convolution calls with dtypes eager PyTorch
    rejects ran under functx.jit, vmap and vjp (the lowerings convert an index to int64 or
    compute in a dtype of their own): x[float_index] returned rows, softmax of a Long tensor
    returned float32, a float32 src was scattered into a float64 tensor. Oracle: eager
    PyTorch's exception type."""
    f, kind = _REJECTED[case]
    with pytest.raises(kind):
        f(_X)
    for transform in (functx.jit(f), lambda x: functx.vmap(f)(x[None]), lambda x: functx.vjp(f, x)[0]):
        with pytest.raises(kind):
            transform(_X)


def test_what_eager_accepts_of_those_still_runs():
    """The other side of the same rules: int32 indices, an empty index of any integer dtype
    for gather, softmax / mean of a Long tensor with a dtype argument."""
    x = _X
    cases = [lambda x: x[torch.tensor([0, 2], dtype=torch.int32)].sum(),
             lambda x: x.gather(1, torch.tensor([[1]], dtype=torch.int32)).sum(),
             lambda x: x.scatter_add(0, torch.tensor([[0]], dtype=torch.int32), x[:1, :1]).sum(),
             lambda x: torch.gather(x, 0, torch.zeros(0, 4, dtype=torch.uint8)).sum(),
             lambda x: (torch.softmax(x.long(), 0, dtype=D) * x).sum(),
             lambda x: x.long().mean(dtype=D) * x.sum()]
    for f in cases:
        torch.testing.assert_close(functx.jit(f)(x), f(x))
        torch.testing.assert_close(functx.grad(f)(x), torch.func.grad(f)(x))


# ---------------------------------------------------------------- special functions

_BESSELS = ["bessel_j0", "bessel_j1", "bessel_y0", "bessel_y1", "modified_bessel_i0", "modified_bessel_i1",
            "modified_bessel_k0", "modified_bessel_k1", "scaled_modified_bessel_k0", "scaled_modified_bessel_k1",
            "spherical_bessel_j0"]


@pytest.mark.parametrize("kind", _BESSELS)
def test_bessel_function_derivatives(kind):
    """A radial-basis / wave model with torch.special.bessel_j0 and friends: torch treats
    their results as constants (torch.func.grad gives zero, torch.autograd drops the term),
    and through the opaque fallback functx's grad, jacfwd and hessian were zero too, silently.
    Now `bessel` is a primitive with the textbook derivatives. Oracle: float64 finite
    differences (of the function, and of functx's checked gradient for the Hessian)."""
    fn = getattr(torch.special, kind)
    f = lambda x: (fn(x) * torch.cos(x)).sum()  # noqa: E731
    x = torch.tensor([0.3, 0.7, 1.9, 2.6], dtype=D)
    g = central_differences(f, x)
    torch.testing.assert_close(functx.grad(f)(x), g)
    torch.testing.assert_close(functx.jit(functx.grad(f))(x), g)
    torch.testing.assert_close(functx.jacfwd(f)(x), g)
    h = torch.stack([central_differences(lambda y: functx.grad(f)(y)[i], x) for i in range(4)])
    torch.testing.assert_close(functx.hessian(f)(x), h)
    xs = torch.stack([x, 1.3 * x])
    torch.testing.assert_close(functx.vmap(functx.grad(f))(xs), torch.stack([central_differences(f, v) for v in xs]))
    if kind in ("bessel_j1", "modified_bessel_i1", "spherical_bessel_j0"):      # the x = 0 limits
        z = torch.tensor([0.0, 1.0], dtype=D)
        torch.testing.assert_close(functx.grad(lambda v: fn(v).sum())(z), central_differences(lambda v: fn(v).sum(), z))


@pytest.mark.parametrize("f", [lambda x: torch.special.airy_ai(x).sum(),
                               lambda x: torch.special.chebyshev_polynomial_t(x, 3).sum(),
                               lambda x: torch.special.hermite_polynomial_h(x, torch.tensor([2.0, 3.0], dtype=D)).sum(),
                               lambda x: torch.special.legendre_polynomial_p(x, 2).sum()],
                         ids=["airy_ai", "chebyshev_t", "hermite_h", "legendre_p"])
def test_special_functions_torch_does_not_differentiate_raise(f):
    """airy_ai and the orthogonal polynomials: torch treats their results as constants, so
    functx's grad / jacfwd were zero, silently (the derivative wrt x is not). functx now
    raises naming the op for any derivative; values and vmap still run."""
    x = torch.tensor([0.3, 0.7], dtype=D)
    torch.testing.assert_close(functx.jit(f)(x), f(x))
    torch.testing.assert_close(functx.vmap(lambda r: f(r[None]))(x), torch.stack([f(r[None]) for r in x]))
    for transform in (functx.grad, functx.jacfwd):
        with pytest.raises(functx.FunctxError, match="has no derivative in PyTorch"):
            transform(f)(x)


# ---------------------------------------------------------------- programs that already worked
# (kept, fast, as a record of what was tried)

def _gp_predictive(theta, X, y, xs):
    """A GP's predictive mean + variance at xs, RBF kernel over cdist, solve and
    cholesky_inverse."""
    ls, sf, sn = theta.exp().unbind(0)
    k = lambda A, B: sf ** 2 * torch.exp(-0.5 * torch.cdist(A, B).square() / ls ** 2)  # noqa: E731
    K = k(X, X) + sn ** 2 * torch.eye(X.shape[0], dtype=X.dtype)
    ks = k(xs[None], X)[0]
    return ks @ torch.linalg.solve(K, y) + sf ** 2 - ks @ torch.cholesky_inverse(torch.linalg.cholesky(K)) @ ks


def test_gp_predictive_hessian_wrt_hyperparameters_where_torch_func_is_wrong():
    """Worked already: functx's Hessian matches finite differences of torch.autograd's
    gradient, where torch.func.hessian does not (it is not even symmetric: cholesky_inverse's
    forward-over-reverse in torch; not run here, its first call takes ~2 s)."""
    torch.manual_seed(0)
    X, y, xs = torch.randn(5, 2, dtype=D), torch.randn(5, dtype=D), torch.randn(2, dtype=D)
    theta = torch.tensor([0.1, 0.2, -1.0], dtype=D)
    f = lambda t: _gp_predictive(t, X, y, xs)  # noqa: E731
    want = _fd_hessian(f, theta)
    torch.testing.assert_close(functx.hessian(f)(theta), want)


def _render(o, d, W1, W2, n=8):
    """NeRF volume rendering along rays: positional encoding, an MLP field, alpha
    compositing with cumprod of (1 - alpha)."""
    t = torch.linspace(2.0, 6.0, n, dtype=o.dtype)
    p = o[..., None, :] + d[..., None, :] * t[:, None]
    freqs = 2.0 ** torch.arange(4, dtype=o.dtype)
    enc = torch.cat([p, torch.sin(p[..., None] * freqs * torch.pi).flatten(-2),
                     torch.cos(p[..., None] * freqs * torch.pi).flatten(-2)], -1)
    out = torch.relu(enc @ W1) @ W2
    rgb, sigma = torch.sigmoid(out[..., :3]), torch.nn.functional.softplus(out[..., 3])
    delta = torch.cat([t[1:] - t[:-1], torch.tensor([1e10], dtype=o.dtype)]) * d.norm(dim=-1, keepdim=True)
    alpha = 1 - torch.exp(-sigma * delta)
    T = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha + 1e-10], -1), -1)[..., :-1]
    return ((alpha * T)[..., None] * rgb).sum(-2)


def test_nerf_rendering_gradients_and_per_ray_vmap():
    """Worked already: grad of a rendering loss wrt ray origins matches torch.func, and vmap
    over rays matches a loop."""
    torch.manual_seed(0)
    W1, W2 = torch.randn(27, 16, dtype=D) * 0.3, torch.randn(16, 4, dtype=D) * 0.3
    o, d = torch.randn(2, 3, dtype=D) * 0.2, torch.randn(5, 3, dtype=D)
    loss = lambda o: _render(o, d[:2], W1, W2).square().sum()  # noqa: E731
    torch.testing.assert_close(functx.grad(loss)(o), torch.func.grad(loss)(o))
    torch.testing.assert_close(functx.jit(functx.grad(loss))(o), torch.func.grad(loss)(o))
    per_ray = lambda d: _render(o[0], d, W1, W2)  # noqa: E731
    torch.testing.assert_close(functx.vmap(per_ray)(d), torch.stack([per_ray(r) for r in d]))


def test_hmc_leapfrog_with_grad_in_a_python_loop():
    """Worked already: the Hamiltonian after leapfrog steps (functx.grad of log p inside a
    Python loop), differentiated wrt the target's mean to second order, matches finite
    differences; vmap over chains matches a loop."""
    S = torch.tensor([[1.0, 0.5], [0.5, 2.0]], dtype=D)
    logp = lambda q, mu: -0.5 * (q - mu) @ torch.linalg.solve(S, q - mu) + 0.1 * torch.log1p(q ** 2).sum()  # noqa: E731

    def leapfrog(q, p, mu, eps=0.1, steps=3):
        g = functx.grad(logp)
        p = p + 0.5 * eps * g(q, mu)
        for i in range(steps):
            q = q + eps * p
            if i < steps - 1:
                p = p + eps * g(q, mu)
        return q, p + 0.5 * eps * g(q, mu)

    q0, p0 = torch.tensor([0.3, -0.4], dtype=D), torch.tensor([0.5, 0.1], dtype=D)

    def H(mu):
        q, p = leapfrog(q0, p0, mu)
        return -logp(q, mu) + 0.5 * p @ p
    mu = torch.tensor([0.1, 0.2], dtype=D)
    torch.testing.assert_close(functx.grad(H)(mu), central_differences(H, mu))
    torch.testing.assert_close(functx.hessian(H)(mu), torch.stack([central_differences(lambda m: functx.grad(H)(m)[i], mu)
                                                                   for i in range(2)]))
    qs, ps = torch.randn(3, 2, dtype=D), torch.randn(3, 2, dtype=D)
    chain = lambda q, p: torch.cat(leapfrog(q, p, mu))  # noqa: E731
    torch.testing.assert_close(functx.vmap(chain)(qs, ps), torch.stack([chain(q, p) for q, p in zip(qs, ps)]))


def test_maml_with_functional_call_and_an_ensemble_from_stack_module_state():
    """Worked already: MAML (grad of a loss after inner functx.grad steps, through
    functional_call) and vmap(grad) over a stack_module_state ensemble match torch.func."""
    torch.manual_seed(0)
    from torch.func import functional_call, stack_module_state
    models = [torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.GELU(), torch.nn.Linear(8, 1)).double()
              for _ in range(3)]
    base = models[0]
    x, y = torch.randn(10, 3, dtype=D), torch.randn(10, 1, dtype=D)
    mse = lambda p, x, y: torch.nn.functional.mse_loss(functional_call(base, p, (x,)), y)  # noqa: E731

    def outer(p, T):
        q = p
        for _ in range(2):
            g = T.grad(mse)(q, x[:5], y[:5])
            q = {k: q[k] - 0.1 * g[k] for k in q}
        return mse(q, x[5:], y[5:])
    p = {k: v.detach() for k, v in base.named_parameters()}
    want, got = torch.func.grad(lambda p: outer(p, torch.func))(p), functx.grad(lambda p: outer(p, functx))(p)
    for k in want:
        torch.testing.assert_close(got[k], want[k])
    ps, _ = stack_module_state(models)
    want = torch.func.vmap(torch.func.grad(mse), in_dims=(0, None, None))(ps, x, y)
    got = functx.vmap(functx.grad(mse), in_dims=(0, None, None))(ps, x, y)
    for k in want:
        torch.testing.assert_close(got[k], want[k])


def test_realnvp_coupling_and_transformed_distribution_likelihoods():
    """Worked already: a RealNVP coupling layer's negative log-likelihood (masks, tanh scales,
    log-det sums) and a torch.distributions TransformedDistribution (Affine, Sigmoid, Power
    transforms): grad, jacfwd and jit(grad) match torch.func."""
    import torch.distributions as dist
    import torch.distributions.transforms as T
    torch.manual_seed(0)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=D)
    xb = torch.randn(6, 4, dtype=D)

    def nll(p):
        h = torch.tanh((xb * mask) @ p[:32].reshape(4, 8))
        s, t = (h @ p[32:].reshape(8, 8)).chunk(2, -1)
        s, t = torch.tanh(s) * (1 - mask), t * (1 - mask)
        z = xb * mask + (1 - mask) * (xb * torch.exp(s) + t)
        return -(dist.Normal(0.0, 1.0).log_prob(z).sum(-1) + s.sum(-1)).mean()

    def tnll(th):
        td = dist.TransformedDistribution(dist.Normal(torch.zeros(2, dtype=D), torch.ones(2, dtype=D)), [
            T.AffineTransform(th[:2], th[2:4].exp()), T.SigmoidTransform(), T.PowerTransform(th[4].exp())])
        return -td.log_prob(torch.tensor([[0.3, 0.6], [0.2, 0.9]], dtype=D)).sum()
    for f, arg in ((nll, torch.randn(96, dtype=D) * 0.3), (tnll, torch.tensor([0.1, -0.2, 0.3, -0.1, 0.2], dtype=D))):
        want = torch.func.grad(f)(arg)
        torch.testing.assert_close(functx.grad(f)(arg), want)
        torch.testing.assert_close(functx.jacfwd(f)(arg), want)
        torch.testing.assert_close(functx.jit(functx.grad(f))(arg), want)
