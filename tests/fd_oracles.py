"""Finite-difference oracles the tests share (float64 central differences decide where
torch.func and functx disagree)."""
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
