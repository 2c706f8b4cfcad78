"""Helpers for functx.spmd's sharded values: split a global batch over the ranks of a
process group, and reassemble the blocks an spmd function returns.

    x_local = functx.distributed.shard(x_global)            # this rank's rows
    y_local = functx.spmd(f, "dp", in_specs=0, out_specs=0)(x_local)
    y_global = functx.distributed.gather(y_local)            # every rank's rows, in rank order
"""
from __future__ import annotations

import torch
import torch.distributed as dist

# torch 2.13 renamed all_gather_into_tensor (the deprecated name still works on older torch).
_all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

from .transforms.spmd import spmd
from .tree_util import tree_map

__all__ = ["spmd", "shard", "gather", "rank", "size"]


def _group(group, what):
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"functx.distributed.{what}: torch.distributed is not initialized; call "
                           "torch.distributed.init_process_group first")
    return dist.group.WORLD if group is None else group


def rank(group=None) -> int:
    """This process's index in the group (what functx.axis_index returns inside spmd)."""
    return dist.get_rank(_group(group, "rank"))


def size(group=None) -> int:
    """The number of processes in the group (the spmd axis size)."""
    return dist.get_world_size(_group(group, "size"))


def shard(tree, dim=0, group=None):
    """This rank's block of each tensor in `tree`, split evenly along `dim` (rank r gets
    block r). Every rank passes the same global tensors. A size that the group does not
    divide raises: drop or pad the remainder yourself (torch's DistributedSampler pads by
    repeating samples, which changes a mean), so the global batch is exactly what you meant."""
    g = _group(group, "shard")
    n_ranks, r = dist.get_world_size(g), dist.get_rank(g)

    def block(x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"functx.distributed.shard: expected tensors, got a {type(x).__name__}")
        if not -x.dim() <= dim < x.dim():
            raise ValueError(f"functx.distributed.shard: dim={dim} is out of range for shape {tuple(x.shape)}")
        n = x.shape[dim]
        if n % n_ranks:
            raise ValueError(f"functx.distributed.shard: size {n} along dim {dim} (shape {tuple(x.shape)}) is "
                             f"not divisible by the group size {n_ranks}; trim the batch to "
                             f"{n - n % n_ranks} or pad it to {n + n_ranks - n % n_ranks}")
        k = n // n_ranks
        return x.narrow(dim, r * k, k)
    return tree_map(block, tree)


def gather(tree, dim=0, group=None):
    """The global tensors from every rank's blocks, concatenated along `dim` in rank order
    (the inverse of shard; for spmd outputs with an int out_spec). Blocks must have equal
    shapes on every rank (checked, with one small extra collective)."""
    g = _group(group, "gather")
    n_ranks = dist.get_world_size(g)

    def cat(x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"functx.distributed.gather: expected tensors, got a {type(x).__name__}")
        shapes = [None] * n_ranks
        dist.all_gather_object(shapes, tuple(x.shape), group=g)
        if len(set(shapes)) > 1:
            raise ValueError(f"functx.distributed.gather: the ranks' blocks have different shapes {shapes}; "
                             "gather needs equal blocks")
        flat = torch.empty(n_ranks * x.numel(), dtype=x.dtype, device=x.device)
        _all_gather_flat(flat, x.reshape(-1), group=g)
        return torch.cat(flat.view((n_ranks,) + tuple(x.shape)).unbind(0), dim=dim)
    return tree_map(cat, tree)
