"""The bases the Jacobians push or pull through their transform and the assembly of the
result: identity blocks per argument leaf (marked so jit may fold products with them), the
row-by-row loop of chunk_size=1, and the split of the stacked rows into (out, in) blocks."""
from __future__ import annotations

import torch

from ..tree_util import tree_flatten, tree_map, tree_unflatten


def mark_identity_basis(t):
    """Mark a basis tensor this library made (never a user's tensor, which may be written in
    place after a jit compiled against its value): jit may fold products with it into
    selections (compile/fold_identity.py)."""
    t._functx_identity_basis = True
    return t


def identity_blocks(types, dtype_of, n_total):
    """For each leaf type, a block of the identity shaped (N, *leaf.shape)."""
    blocks, offset = [], 0
    for t in types:
        n = t.numel
        if n == n_total:        # one leaf: the identity itself (one kernel, not three)
            eye = torch.eye(n, dtype=dtype_of(t), device=t.device)
        else:
            eye = torch.zeros(n_total, n, dtype=dtype_of(t), device=t.device)
            eye[offset:offset + n] = torch.eye(n, dtype=dtype_of(t), device=t.device)
        block = eye.reshape((n_total,) + t.shape)
        if n == n_total:
            mark_identity_basis(block)
        blocks.append(block)
        offset += n
    return blocks


def split_jacobian(jac_leaf, out_shape, in_types, leading_is_in):
    """Split a (N, *out_shape) (or (*out, N)) batch into one block per input leaf."""
    parts, offset = [], 0
    for t in in_types:
        n = t.numel
        if leading_is_in:
            block = jac_leaf.narrow(0, offset, n).reshape(t.shape + out_shape)
            k = len(t.shape)
            perm = list(range(k, k + len(out_shape))) + list(range(k))
            block = block.permute(perm)
        else:
            block = jac_leaf.narrow(jac_leaf.dim() - 1, offset, n).reshape(out_shape + t.shape)
        parts.append(block)
        offset += n
    return parts


def row_by_row(fn, basis, n, has_aux=False):
    """chunk_size=1, torch.func's meaning: fn on one basis row at a time in a Python loop,
    not under vmap, so ops without a batching rule or with data-dependent shapes (nonzero in
    a custom backward) work. The results are stacked along a new leading axis; with has_aux,
    fn returns (result, aux) and aux (the same for every row) is the first row's."""
    outs = [fn(*[leaf[k] for leaf in basis]) for k in range(n)]
    rows = [o[0] for o in outs] if has_aux else outs
    stacked = tree_map(lambda *xs: torch.stack(xs), rows[0], *rows[1:])
    return (stacked, outs[0][1]) if has_aux else stacked


def assemble(jac_tree, d_tree, in_types, leading_is_in, single):
    """jac_tree: the output tree, each leaf (N_in, *out_shape) -> out tree of in trees."""
    leaves, o_tree = tree_flatten(jac_tree)
    out = []
    for leaf in leaves:
        out_shape = tuple(leaf.shape[1:])
        parts = split_jacobian(leaf, out_shape, in_types, leading_is_in)
        tree = tree_unflatten(d_tree, parts)
        out.append(tree[0] if single else tuple(tree))
    return tree_unflatten(o_tree, out)
