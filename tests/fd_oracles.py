"""Oracles the tests share: float64 central differences (they decide where torch.func and
functx disagree), and a comparison of two pytrees of tensors."""
import torch


def central_differences(f, x, eps=1e-6):
    """d f / d x by central differences, shape x.shape + f(x).shape (for a scalar f: its
    gradient)."""
    rows = []
    for k in range(x.numel()):
        e = torch.zeros(x.numel(), dtype=x.dtype)
        e[k] = eps
        e = e.reshape(x.shape)
        rows.append((f(x + e) - f(x - e)) / (2 * eps))
    return torch.stack(rows).reshape(tuple(x.shape) + tuple(rows[0].shape))


def assert_trees_close(a, b, tol=1e-7):
    """Same leaves, shapes and dtypes, values within tol (absolute and relative); leaves that
    are not tensors equal."""
    la, lb = torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        if not isinstance(x, torch.Tensor):
            assert x == y
            continue
        assert x.shape == y.shape and x.dtype == y.dtype, (x.shape, y.shape, x.dtype, y.dtype)
        torch.testing.assert_close(x, y, atol=tol, rtol=tol)
