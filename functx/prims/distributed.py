"""torch.distributed calls behind the collectives bound to a process axis (functx.spmd).

Each takes the resolved axis (an AxisData whose `group` is a ProcessGroup) and returns a
new tensor; gloo (CPU) and NCCL (GPU) run the same calls. A collective that fails (a peer
that crashed or never arrived, so the group's timeout expired) raises a FunctxError naming
the collective and the axis instead of torch's transport message alone.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

# torch 2.13 renamed all_gather_into_tensor (the deprecated name still works on older torch).
_all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

from ..core import FunctxError


def _run(name, axis, fn):
    try:
        return fn()
    except (RuntimeError, dist.DistBackendError) as e:
        raise FunctxError(
            f"functx.{name} over process axis {axis.name!r} (size {axis.size}) failed on rank "
            f"{dist.get_rank()}: {e}\nEvery rank of the group must reach the same collectives in the same "
            "order; a rank that crashed, returned early or took another branch leaves the others waiting "
            "until the process group's timeout (init_process_group(timeout=...)).") from e


class Pending:
    """An issued collective: wait() blocks until it is done and returns its result."""
    __slots__ = ("name", "axis", "work", "result")

    def __init__(self, name, axis, work, result):
        self.name, self.axis, self.work, self.result = name, axis, work, result

    def wait(self):
        _run(self.name, self.axis, self.work.wait)
        return self.result


def _all_reduce(name, op):
    def start(x, axis):
        out = x.clone(memory_format=torch.contiguous_format)
        work = _run(name, axis, lambda: dist.all_reduce(out, op=op, group=axis.group, async_op=True))
        return Pending(name, axis, work, out)
    return start


psum_start = _all_reduce("psum", dist.ReduceOp.SUM)
pmax_start = _all_reduce("pmax", dist.ReduceOp.MAX)


def all_gather_start(x, axis):
    """Stack every rank's x along a new leading dim (rank order within the group)."""
    flat = torch.empty(axis.size * x.numel(), dtype=x.dtype, device=x.device)
    work = _run("all_gather", axis, lambda: _all_gather_flat(flat, x.reshape(-1), group=axis.group,
                                                             async_op=True))
    return Pending("all_gather", axis, work, flat.view((axis.size,) + tuple(x.shape)))


def psum(x, axis):
    return psum_start(x, axis).wait()


def pmax(x, axis):
    return pmax_start(x, axis).wait()


def all_gather(x, axis):
    return all_gather_start(x, axis).wait()


def axis_index(axis, device):
    return torch.tensor(dist.get_rank(axis.group), dtype=torch.int64, device=device)
