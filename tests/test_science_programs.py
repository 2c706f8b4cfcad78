"""Scientific ML code researchers write (graph neural networks with scatter/index_add message
passing, molecular energies and forces over pairwise distances, Gaussian processes with
Cholesky factors, probabilistic models with torch.distributions, spectral and numerical
utilities) under functx's transforms eagerly and under functx.jit. Each test pins either a
divergence that was found and fixed (the docstring says what was wrong and which oracle
decides) or a representative program that already worked, with the oracle that decides.
Oracles run in float64: torch.func / torch.autograd on the same code, central finite
differences where those disagree with torch.func, eager torch for errors, and a Python loop
for vmap."""
import math
import warnings

import pytest
import torch
import torch.distributions as dist

import functx

D = torch.float64


def _close(a, b, tol=1e-7):
    la, lb = torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert x.shape == y.shape and x.dtype == y.dtype, (x.shape, y.shape, x.dtype, y.dtype)
        torch.testing.assert_close(x, y, atol=tol, rtol=tol, equal_nan=True)


def _fd_jac(f, x, eps=1e-6):
    """Central differences of f at x: d f(x)[...] / d x[...]."""
    y = f(x)
    J = torch.zeros(y.numel(), x.numel(), dtype=x.dtype)
    flat = x.reshape(-1)
    for i in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[i] = eps
        J[:, i] = ((f((flat + e).reshape(x.shape)) - f((flat - e).reshape(x.shape))) / (2 * eps)).reshape(-1)
    return J.reshape(*y.shape, *x.shape)


# ---------------------------------------------------------------- graph neural networks

_SRC = torch.tensor([0, 1, 2, 3, 4, 0, 2, 1, 3])
_DST = torch.tensor([1, 2, 3, 4, 0, 2, 0, 1, 1])
_N, _F = 5, 3


def test_vmap_over_graphs_counts_degrees_with_bincount():
    """A batch of graphs, each with its own edge_index, whose layer normalises by in-degree
    with torch.bincount(dst, minlength=N): functx.vmap raised "aten.bincount's output shape
    depends on the values of its input" (bincount's length is max(minlength, max(dst) + 1)),
    where torch.func.vmap and a loop over the graphs run. Now a dynamic-shape op whose
    shape-deciding operand holds one value per example under eager vmaps is typed from each
    example's values, as a loop does: where they agree the batch runs; where they differ
    functx raises (the loop fails at torch.stack), and under jit it still raises, now with a
    hint to count into a static length. Oracle: a Python loop of torch.func.grad."""
    W = torch.randn(_F, _F, dtype=D)

    def layer(x, dst):
        deg = torch.bincount(dst, minlength=_N).to(x.dtype).clamp(min=1)
        h = x @ W
        agg = torch.zeros_like(h).index_add(0, dst, h[_SRC] / deg[dst, None])
        return agg.tanh().pow(2).sum()

    x = torch.randn(3, _N, _F, dtype=D)
    dst = torch.stack([_DST, _DST.flip(0), (_DST + 1) % _N])
    want = torch.stack([torch.func.grad(layer)(x[i], dst[i]) for i in range(3)])
    _close(functx.vmap(functx.grad(layer))(x, dst), want)
    _close(functx.vmap(layer)(x, dst), torch.stack([layer(x[i], dst[i]) for i in range(3)]))
    # nested vmaps, and the index batched while x is shared
    _close(functx.vmap(functx.vmap(layer))(x[None].expand(2, -1, -1, -1), dst[None].expand(2, -1, -1)),
           torch.stack([layer(x[i], dst[i]) for i in range(3)])[None].expand(2, -1))
    _close(functx.vmap(layer, in_dims=(None, 0))(x[0], dst), torch.stack([layer(x[0], d) for d in dst]))

    count = lambda d: torch.bincount(d)  # noqa: E731
    with pytest.raises(functx.ConcretizationError, match=r"differs between examples \(\[6\] and \[5\]\)"):
        functx.vmap(count)(torch.tensor([[0, 5, 1], [4, 0, 1]]))
    with pytest.raises(RuntimeError):       # the loop's own failure
        torch.stack([count(d) for d in torch.tensor([[0, 5, 1], [4, 0, 1]])])
    with pytest.raises(functx.ConcretizationError, match="index_add_"):
        functx.jit(layer)(x[0], dst[0])


_ADJ = torch.sparse_coo_tensor(torch.stack([_DST, _SRC]), torch.linspace(0.5, 1.5, 9, dtype=D), (_N, _N))


@pytest.mark.parametrize("name,f", [
    ("torch.sparse.mm(adj, h)", lambda x: torch.sparse.mm(_ADJ, x)),
    ("adj @ h", lambda x: _ADJ @ x),
    ("torch.spmm(adj.t(), h)", lambda x: torch.spmm(_ADJ.t(), x)),
    ("csr @ h", lambda x: _ADJ.to_sparse_csr() @ x),
    ("sparse.addmm", lambda x: torch.sparse.addmm(x, _ADJ, x, beta=0.5, alpha=2.0)),
    ("torch.mv(adj, v)", lambda x: torch.mv(_ADJ, x[:, 0])),
    ("h.T @ adj", lambda x: x.T @ _ADJ),
    ("adj.to_dense() @ h", lambda x: _ADJ.to_dense() @ x),
])
def test_gcn_with_a_sparse_adjacency(name, f):
    """Kipf and Welling's GCN propagates with a sparse normalised adjacency closed over by the
    layer: torch.sparse.mm(adj, h). functx took the sparse tensor as a dense constant of a
    dot_general, and torch has no kernels for the products the derivative rules and vmap then
    run: jacfwd, hessian and vmap raised "expand is unsupported for Sparse tensors", a CSR
    adjacency "Sparse CSR tensors do not have is_contiguous" under every transform, and jit
    of anything reading a closed-over sparse tensor (adj.t(), adj.to_dense()) "Cannot access
    storage of SparseTensorImpl". Now a product with one concrete sparse operand is a sum over
    its nonzeros (gathered, scaled, added into place: O(nnz), made of primitives), sparse
    operands never enter the eager op caches as inputs, and jit's closure guard reads a sparse
    tensor's values' storage. Oracle: eager torch for values, central differences (float64)
    for the derivatives (torch.func has no forward mode through sparse products)."""
    x = torch.randn(_N, _F, dtype=D)
    g = lambda x: f(x).sin().sum()  # noqa: E731
    want = f(x)
    grad = _fd_jac(g, x)
    _close(functx.jit(f)(x), want)
    _close(functx.vmap(f)(torch.stack([x, 2 * x])), torch.stack([want, f(2 * x)]))
    _close(functx.grad(g)(x), grad, 1e-6)
    _close(functx.jit(functx.grad(g))(x), grad, 1e-6)
    _close(functx.jacfwd(g)(x), grad, 1e-6)
    _close(functx.hessian(g)(x), _fd_jac(functx.grad(g), x), 1e-6)


def test_gcn_layer_that_builds_its_sparse_adjacency_per_sample_grads():
    """The layer builds its adjacency with torch.sparse_coo_tensor from constant edges and
    propagates with torch.sparse.mm: per-sample gradients (vmap(grad)) raised "expand is
    unsupported for Sparse tensors" (the eager op cache took the made sparse tensor as a
    traced input). Oracle: a Python loop of torch.func.grad."""
    W = torch.randn(_F, _F, dtype=D)

    def loss(x):
        adj = torch.sparse_coo_tensor(torch.stack([_DST, _SRC]), torch.ones(9, dtype=D), (_N, _N))
        return torch.sparse.mm(adj, x @ W).tanh().pow(2).sum()

    xs = torch.randn(3, _N, _F, dtype=D)
    want = torch.stack([torch.func.grad(loss)(x) for x in xs])
    _close(functx.vmap(functx.grad(loss))(xs), want)
    _close(functx.jit(functx.vmap(functx.grad(loss)))(xs), want)


def test_scatter_reduce_prod_second_order_is_central_differences():
    """A product aggregation over neighbours (scatter_reduce 'prod', with and without the
    destination's own value): functx's Jacobian and Hessian differ from torch.func's, whose
    forward-mode formula for scatter_reduce prod is wrong (jacfwd off by ~40, the Hessian by
    ~1e5 here). Oracle: central differences of the gradient, which functx matches."""
    W = torch.randn(_F, _F, dtype=D)
    base = torch.randn(_N, _F, dtype=D)
    idx = _DST[:, None].expand(-1, _F)
    for include_self in (True, False):
        def agg(x):
            return base.scatter_reduce(0, idx, (x @ W)[_SRC], reduce="prod", include_self=include_self)
        f = lambda x: agg(x).sin().sum()  # noqa: E731
        x = torch.randn(_N, _F, dtype=D)
        _close(functx.jacfwd(agg)(x), _fd_jac(agg, x), 1e-6)
        want = _fd_jac(torch.func.grad(f), x)
        _close(functx.hessian(f)(x), want, 1e-5)
        _close(functx.jit(functx.hessian(f))(x), want, 1e-5)


def test_message_passing_family_matches_torch_func():
    """GCN / GAT-style layers as researchers write them: in-degree through
    zeros().index_add_, index_select and gather of node features, scatter_add, scatter_reduce
    mean / amax / amin with include_self both ways, and a softmax over each node's incoming
    edges shifted by a scatter amax. Representative: already right. Oracle: torch.func in
    float64 (grad, jacrev, hessian), a loop for vmap."""
    W = torch.randn(_F, _F, dtype=D)
    idx = _DST[:, None].expand(-1, _F)

    def layer(x):
        deg = torch.zeros(_N, dtype=D).index_add_(0, _DST, torch.ones(9, dtype=D)).clamp(min=1)
        h = x @ W
        msg = h.index_select(0, _SRC) * (deg[_SRC] * deg[_DST]).rsqrt()[:, None]
        out = torch.zeros_like(h).scatter_add(0, idx, msg)
        out = out + torch.gather(h, 0, idx[:_N])
        for reduce, inc in (("mean", True), ("amax", False), ("amin", True)):
            out = out + x.exp().scatter_reduce(0, idx, h[_SRC], reduce=reduce, include_self=inc).sin()
        score = (h[_SRC] * h[_DST]).sum(-1)
        shift = torch.full((_N,), -math.inf, dtype=D).scatter_reduce(0, _DST, score, "amax")
        e = (score - shift[_DST]).exp()
        a = e / torch.zeros(_N, dtype=D).index_add(0, _DST, e)[_DST]
        out = out + torch.zeros_like(h).index_add_(0, _DST, a[:, None] * h[_SRC])
        return out.tanh().pow(2).sum()

    x = torch.randn(_N, _F, dtype=D)
    g = torch.func.grad(layer)(x)
    _close(functx.grad(layer)(x), g)
    _close(functx.jit(functx.grad(layer))(x), g)
    _close(functx.hessian(layer)(x), torch.func.jacrev(torch.func.jacrev(layer))(x), 1e-6)
    xs = torch.randn(3, _N, _F, dtype=D)
    _close(functx.vmap(functx.grad(layer))(xs), torch.stack([torch.func.grad(layer)(v) for v in xs]))


# ---------------------------------------------------------------- molecules

def test_forces_and_vibrational_modes_of_a_pairwise_energy():
    """Energy over all pairs including the zero self-distances (cdist and
    (x[:, None] - x[None]).norm(-1), torch's convention: zero derivative of the norm at 0),
    radial basis functions, a cosine cutoff through torch.where; forces = -grad, the Hessian's
    eigenvalues (vibrational modes) and per-conformer forces under vmap. Representative:
    already right. Oracle: torch.func in float64; for the Hessian, which torch can't take
    (cdist has no double backward), central differences of torch.func's gradient."""
    mu = torch.linspace(0, 3, 6, dtype=D)

    def energy(p):
        r = p[:, None] - p[None]
        d = r.norm(dim=-1) + 0.5 * torch.cdist(p, p)
        rbf = torch.exp(-4 * (d[..., None] - mu) ** 2).sum(-1)
        fc = torch.where(d < 2.5, 0.5 * (torch.cos(math.pi * d / 2.5) + 1), torch.zeros_like(d))
        return (rbf * fc).sum()

    p = torch.randn(4, 3, dtype=D)
    _close(-functx.grad(energy)(p), -torch.func.grad(energy)(p))
    _close(functx.jit(functx.grad(energy))(p), torch.func.grad(energy)(p))
    H = _fd_jac(torch.func.grad(energy), p).reshape(12, 12)     # torch has no cdist double backward
    _close(torch.linalg.eigvalsh(functx.hessian(energy)(p).reshape(12, 12)), torch.linalg.eigvalsh(H), 1e-6)
    _close(functx.jit(functx.hessian(energy))(p).reshape(12, 12), H, 1e-6)
    ps = torch.randn(3, 4, 3, dtype=D)
    _close(functx.vmap(functx.grad(energy))(ps), torch.stack([torch.func.grad(energy)(q) for q in ps]))


# ---------------------------------------------------------------- Gaussian processes, distributions

_X = torch.randn(6, 2, dtype=D)
_Y = torch.randn(6, dtype=D)


def _gp_nll(theta):
    ls, sf, sn = theta.exp()
    K = sf ** 2 * torch.exp(-0.5 * torch.cdist(_X / ls, _X / ls) ** 2) + (sn ** 2 + 1e-6) * torch.eye(6, dtype=D)
    L = torch.linalg.cholesky(K)
    alpha = torch.cholesky_solve(_Y[:, None], L)
    z = torch.linalg.solve_triangular(L, _Y[:, None], upper=False)
    return 0.5 * (_Y[:, None] * alpha).sum() + torch.log(torch.diagonal(L)).sum() + 0.1 * (z ** 2).sum() \
        + 0.01 * torch.logdet(K)


def test_gp_marginal_likelihood_hessian_is_central_differences():
    """A GP's negative log marginal likelihood through cholesky, cholesky_solve,
    solve_triangular and logdet: the Hessian in the kernel hyperparameters (Laplace
    approximation). torch.func raises for it (no forward-mode formula for cholesky_solve);
    functx's matches central differences of the gradient, and its gradient torch.func's."""
    th = torch.tensor([0.3, -0.2, -1.0], dtype=D)
    _close(functx.grad(_gp_nll)(th), torch.func.grad(_gp_nll)(th))
    want = _fd_jac(torch.func.grad(_gp_nll), th)
    _close(functx.hessian(_gp_nll)(th), want, 1e-6)
    _close(functx.jit(functx.hessian(_gp_nll))(th), want, 1e-6)
    ths = torch.randn(3, 3, dtype=D) * 0.3
    _close(functx.vmap(functx.grad(_gp_nll))(ths), torch.stack([torch.func.grad(_gp_nll)(t) for t in ths]))


def test_distributions_log_prob_per_sample_grads():
    """torch.distributions log_probs in a probabilistic model: Normal, Independent,
    MultivariateNormal (scale_tril, and covariance_matrix without validation), Categorical,
    StudentT, and a MixtureSameFamily; per-sample gradients under vmap and jit.
    Representative: already right. Oracle: torch.func.vmap(torch.func.grad)."""
    def lp(m, s, y):
        L = torch.diag_embed(s.exp()) + torch.tril(torch.outer(m, m), -1) * 0.1
        return dist.Normal(m, s.exp()).log_prob(y).sum() \
            + dist.Independent(dist.Normal(m, s.exp()), 1).log_prob(y) \
            + dist.MultivariateNormal(m, scale_tril=L).log_prob(y) \
            + dist.MultivariateNormal(m, covariance_matrix=L @ L.T, validate_args=False).log_prob(y) \
            + dist.Categorical(logits=m).log_prob(torch.tensor(1)) \
            + dist.StudentT(s.exp()[0] + 2, m[0], s.exp()[1]).log_prob(y).sum() \
            + dist.MixtureSameFamily(dist.Categorical(logits=s), dist.Normal(m, s.exp())).log_prob(y[0])

    m, s, y = (torch.randn(4, 3, dtype=D) for _ in range(3))
    want = torch.func.vmap(torch.func.grad(lp, argnums=(0, 1)))(m, s, y)
    _close(functx.vmap(functx.grad(lp, argnums=(0, 1)))(m, s, y), want)
    _close(functx.jit(functx.vmap(functx.grad(lp, argnums=(0, 1))))(m, s, y), want)


# ---------------------------------------------------------------- where torch.func's derivatives are wrong

@pytest.mark.parametrize("name,f", [
    ("cholesky_inverse", lambda x: torch.cholesky_inverse(
        torch.linalg.cholesky(torch.outer(x[:3], x[:3]) + torch.eye(3, dtype=D))).sin().sum()),
    ("triangular_solve", lambda x: torch.triangular_solve(
        x.reshape(3, 2), torch.tril(torch.outer(x[:3], x[3:]) + 3 * torch.eye(3, dtype=D)), upper=False).solution.sum()),
    ("sinc at 0", lambda x: torch.sinc(x * torch.tensor([0., 1, 1, 0, 1, 1], dtype=D)).sum()),
])
def test_second_derivatives_where_torch_func_is_wrong(name, f):
    """A precision matrix through cholesky_inverse, the legacy torch.triangular_solve in older
    GP code, sinc at 0 (a band-limited interpolation kernel): torch.func's Hessian (or
    Hessian-vector product) is wrong here (torch's forward-mode formulas for cholesky_inverse
    and triangular_solve, and sinc's second derivative at 0, where torch gives 0 for
    -pi^2/3). Oracle: central differences of the gradient, which functx matches."""
    x = torch.randn(6, dtype=D)
    want = _fd_jac(torch.func.grad(f), x)
    if name == "sinc at 0":     # the gradient itself is smooth there; difference its formula
        want = _fd_jac(lambda x: _fd_jac(f, x, 1e-4), x, 1e-4)
    _close(functx.hessian(f)(x), want, 1e-5)
    t = torch.randn(6, dtype=D)
    _close(functx.jvp(functx.grad(f), (x,), (t,))[1], want @ t, 1e-5)


def test_jit_sees_in_place_updates_of_a_closed_over_sparse_adjacency():
    """A closed-over tensor is the graph's constant itself, so an in-place update shows
    through (docs/sharp_bits.md, section 2): the sparse product must read the adjacency's own
    values and indices, not copies made at trace time (a reweighted adjacency,
    adj._values().mul_(3), or an uncoalesced one coalesced at trace time, would silently keep
    the old weights). Oracle: torch.func.grad of the dense product after each update."""
    adj = torch.sparse_coo_tensor(torch.stack([_DST, _SRC]), torch.ones(9, dtype=D), (_N, _N))
    csr = adj.to_dense().to_sparse_csr()

    def loss(x):
        return (torch.sparse.mm(adj, x) + csr @ x).pow(2).sum()

    def want(x):        # torch.func has no CSR support: the same loss on dense copies
        A = adj.to_dense() + csr.to_dense()
        return torch.func.grad(lambda x: (A @ x).pow(2).sum())(x)

    x = torch.randn(_N, _F, dtype=D)
    jg = functx.jit(functx.grad(loss))
    _close(jg(x), want(x))
    adj._values().mul_(3)
    csr.values().add_(1)
    _close(jg(x), want(x))
    adj.mul_(0.5)
    _close(jg(x), want(x))


@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min", "prod"])
@pytest.mark.parametrize("initial", [None, 0.3])
def test_segment_reduce_pooling_to_every_order(reduce, initial):
    """Graph-level pooling with torch.segment_reduce over nodes stored graph by graph (one
    graph empty): torch has no forward-mode formula for segment_reduce nor a derivative of its
    backward, so functx's opaque fallback raised for jacfwd, hessian and jvp(grad). It is now
    a scatter_reduce over segment ids when lengths / offsets are concrete, with torch's empty
    segments and `initial`. Oracles: torch for values and gradients (vmap: a loop), central
    differences of torch.func's gradient for the Hessian."""
    lengths = torch.tensor([2, 0, 7])

    def pool(x):
        return torch.segment_reduce(x, reduce, lengths=lengths, initial=initial)

    f = lambda x: pool(x).nan_to_num(0.0, 0.0, 0.0).sin().sum()  # noqa: E731
    x = torch.randn(9, 2, dtype=D)
    _close(functx.jit(pool)(x), pool(x))
    _close(functx.vmap(pool)(torch.stack([x, -x])), torch.stack([pool(x), pool(-x)]))
    _close(functx.grad(f)(x), torch.func.grad(f)(x))
    _close(functx.jacfwd(f)(x), torch.func.grad(f)(x))
    want = _fd_jac(torch.func.grad(f), x)
    _close(functx.hessian(f)(x), want, 1e-5)
    _close(functx.jit(functx.hessian(f))(x), want, 1e-5)
    offsets = torch.tensor([0, 2, 2, 9])
    _close(functx.jit(lambda x: torch.segment_reduce(x, reduce, offsets=offsets, initial=initial))(x), pool(x))
    with pytest.raises(RuntimeError, match="axis to be the last dimension of lengths"):
        functx.grad(lambda x: torch.segment_reduce(x, reduce, lengths=lengths, axis=1).sum())(x)


def test_jitted_gcn_module_trains_like_eager_with_a_sparse_adjacency():
    """Kipf and Welling's GCN trained with torch.optim through functx.jit(model): the sparse
    normalised adjacency as a registered buffer (jit passes a training module's buffers as
    arguments) raised "Cannot access storage of SparseTensorImpl" in jit's check for aliased
    writes; passed to forward as an argument (model(x, adj)) it worked. Now storages are read
    through a sparse tensor's values. Oracle: the same model trained eagerly (parameters and
    BatchNorm statistics after four Adam steps)."""
    import copy

    class GCN(torch.nn.Module):
        def __init__(self, adj):
            super().__init__()
            self.l1, self.l2 = torch.nn.Linear(_F, 8), torch.nn.Linear(8, 2)
            self.bn = torch.nn.BatchNorm1d(8)
            self.register_buffer("adj", adj)

        def forward(self, x, adj=None):
            adj = self.adj if adj is None else adj
            h = torch.relu(self.bn(torch.sparse.mm(adj, self.l1(x))))
            return torch.log_softmax(torch.spmm(adj, self.l2(h)), dim=1)

    adj = (_ADJ + torch.sparse_coo_tensor(torch.arange(_N).repeat(2, 1), torch.ones(_N, dtype=D), (_N, _N))).coalesce()
    x, y = torch.randn(_N, _F, dtype=D), torch.tensor([0, 1, 1, 0, 1])
    for as_argument in (False, True):
        eager = GCN(adj).double()
        jitted = copy.deepcopy(eager)
        runs = [(eager, eager), (jitted, functx.jit(jitted))]
        opts = [torch.optim.Adam(m.parameters(), 1e-2) for m, _ in runs]
        for _ in range(4):
            for (m, f), opt in zip(runs, opts):
                opt.zero_grad()
                out = f(x, adj) if as_argument else f(x)
                torch.nn.functional.nll_loss(out, y).backward()
                opt.step()
        for a, b in zip(eager.parameters(), jitted.parameters()):
            _close(a.detach(), b.detach())
        _close(eager.bn.running_mean, jitted.bn.running_mean)


def test_jit_takes_a_sparse_adjacency_argument_as_a_constant():
    """model(x, adj) with the sparse adjacency as an argument of the jitted function: jit
    traced it as a dense-typed input, so anything but a product with it raised torch's layout
    errors from inside the compiled code (adj * 2: "unsupported memory format option
    Contiguous"; torch.sparse.sum(adj): "Could not run 'aten::_indices' with arguments from
    the 'CPU' backend"; adj.coalesce(): "expected sparse coordinate tensor layout but got
    Strided"), and vmap over x inside jit "expand is unsupported for Sparse tensors". Now a
    sparse argument that nothing differentiates is a constant of the trace, keyed by the
    tensor object (another adjacency traces again; an in-place update shows through or
    retraces). Oracle: eager torch, and torch.func.grad."""
    def f(x, adj):
        deg = torch.sparse.sum(adj, 1).to_dense()
        h = torch.sparse.mm(adj * 2, x) / deg[:, None] + adj.coalesce().values().sum() * x
        return (h.tanh() + adj.t().to_dense() @ x.sin()).pow(2).sum()

    x = torch.randn(_N, _F, dtype=D)
    jf, jg = functx.jit(f), functx.jit(functx.grad(f))
    jv = functx.jit(functx.vmap(functx.grad(f), in_dims=(0, None)))
    for scale in (1.0, 2.0):
        adj = torch.sparse_coo_tensor(torch.stack([_DST, _SRC]), scale * torch.linspace(0.5, 1.5, 9, dtype=D), (_N, _N))
        _close(jf(x, adj), f(x, adj))
        _close(jg(x, adj), torch.func.grad(f)(x, adj))
        _close(jv(torch.stack([x, -x]), adj), torch.stack([torch.func.grad(f)(v, adj) for v in (x, -x)]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adj.mul_(3)
        _close(jg(x, adj), torch.func.grad(f)(x, adj))
    assert jf.trace_count == 2


def test_repeat_interleave_with_output_size_traces_under_jit():
    """Broadcasting per-graph values to their nodes (or per-node values to their edges) with
    torch.repeat_interleave(h, counts, dim=0, output_size=n): with the size given the result's
    shape is static (torch.compile traces it), but functx.jit raised "output shape depends on
    the values of its input". Now the given size types the result; torch checks it when the
    graph runs (a wrong size raises torch's error). Without output_size jit still raises, now
    naming the fix. Oracle: eager torch and torch.func.grad."""
    h = torch.randn(3, 2, dtype=D)

    def f(h, counts):
        return (torch.repeat_interleave(h, counts, dim=0, output_size=6).sin() * torch.arange(6.0, dtype=D)[:, None]).sum()

    for counts in (torch.tensor([1, 2, 3]), torch.tensor([3, 0, 3])):
        _close(functx.jit(f)(h, counts), f(h, counts))
        _close(functx.jit(functx.grad(f))(h, counts), torch.func.grad(f)(h, counts))
    with pytest.raises(RuntimeError, match="allocated size does not match required size"):
        functx.jit(f)(h, torch.tensor([1, 1, 1]))
    with pytest.raises(functx.ConcretizationError, match="output_size=n"):
        functx.jit(lambda h, c: torch.repeat_interleave(h, c, dim=0))(h, torch.tensor([1, 2, 3]))


# ---------------------------------------------------------------- spectral methods (complex: not supported)

@pytest.mark.parametrize("how", ["grad", "jit", "vmap"])
def test_fourier_layer_raises_naming_the_op_that_made_a_complex_value(how):
    """A Fourier neural operator's spectral convolution (rfft, a product with complex
    weights, irfft): functx's values are real, so it must raise rather than return numbers.
    It raised naming the dtype and the user's line; the error now names the ATen op that made
    the complex value too. Oracle: the error (torch.func runs it; functx refuses it)."""
    w = torch.randn(2, 5, dtype=torch.complex128)

    def fno(x):
        xf = torch.fft.rfft(x, dim=-1)
        yf = torch.cat([xf[:, :5] * w, torch.zeros(2, 4, dtype=torch.complex128)], -1)
        return torch.fft.irfft(yf, n=16, dim=-1).pow(2).sum()

    x = torch.randn(2, 16, dtype=D)
    run = {"grad": lambda: functx.grad(fno)(x), "jit": lambda: functx.jit(fno)(x),
           "vmap": lambda: functx.vmap(fno)(x[None])}[how]
    with pytest.raises(functx.FunctxError, match=r"complex tensors yet: a traced value of type c128\[2, ?9\] "
                                                 r"was created by aten._fft_r2c.default here"):
        run()


def test_sparse_adjacency_built_from_traced_weights():
    """torch.sparse_coo_tensor(edge_index, w) with learned edge weights w: eager grad carries
    the sparse tensor as an opaque value and is right, but under jit and vmap the value is
    abstract and functx's abstract values are dense, so the compiled code failed inside torch
    ("unsupported memory format option Contiguous"). Now that raises at trace time, naming
    the op and the dense equivalent (index_add_ over the edges). Oracles: torch.func.grad;
    for the errors, the message."""
    x = torch.randn(_N, _F, dtype=D)
    w = torch.rand(9, dtype=D)

    def f(w, x):
        adj = torch.sparse_coo_tensor(torch.stack([_DST, _SRC]), w, (_N, _N))
        return torch.sparse.mm(adj, x).sin().sum()

    _close(functx.grad(f)(w, x), torch.func.grad(f)(w, x))
    _close(functx.grad(f, argnums=1)(w, x), torch.func.grad(f, argnums=1)(w, x))
    for run in (lambda: functx.jit(f)(w, x), lambda: functx.jit(functx.grad(f))(w, x),
                lambda: functx.vmap(f, in_dims=(0, None))(w[None], x)):
        with pytest.raises(functx.FunctxError, match="(?s)makes a sparse tensor from traced values.*index_add_"):
            run()


def test_functionalize_with_a_sparse_argument_first():
    """functx.func.functionalize evaluates the traced graph on the tensor arguments; a sparse
    argument is a constant of the trace (as under jit), so it must not be handed to the
    graph as an input (with the adjacency first, x's input would have received it).
    Oracle: eager torch and torch.func.grad."""
    from functx.func import functionalize

    def f(adj, x):
        return torch.sparse.mm(adj * 2, x).sin()

    x = torch.randn(_N, _F, dtype=D)
    _close(functionalize(f)(_ADJ, x), f(_ADJ, x))
    _close(functx.grad(lambda x: functionalize(f)(_ADJ, x).sum())(x), torch.func.grad(lambda x: f(_ADJ, x).sum())(x))
