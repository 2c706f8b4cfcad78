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
        torch.testing.assert_close(x, y, atol=tol, rtol=tol)


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
