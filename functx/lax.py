"""functx.lax: the public lax-style functions, over tensors (JAX's jax.lax), for the
primitives that have no torch spelling: collectives over a named vmap axis, stop_gradient,
and structured control flow under JAX's spellings (lax.cond/switch/while_loop/fori_loop/
scan/map; they live in transforms/control_flow.py and are also functx.cond etc.). The
internal lax API over traced values is functx.prims."""
from __future__ import annotations

import torch

from .core.trace import Tracer, type_of
from .frontend import unwrap, wrap
from . import prims as P
from .prims.collective import axis_size
from .prims.spmd import pvary as _pvary
from .tree_util import tree_flatten, tree_map, tree_unflatten
from .transforms.api import vmap
from .transforms.control_flow import cond, fori_loop, scan, switch, while_loop

__all__ = ["psum", "pmean", "pmax", "pmin", "pvary", "all_gather", "axis_index", "axis_size", "stop_gradient",
           "cond", "switch", "while_loop", "fori_loop", "scan", "map"]


def _apply(fn, tree, what):
    """fn on every leaf of a pytree of tensors (JAX's lax functions take pytrees); a Python
    number leaf becomes a 0-d tensor (`psum(1, 'i')` is the axis size, as in JAX)."""
    def leaf(x):
        if isinstance(x, (bool, int, float)):
            x = torch.tensor(x)
        if not isinstance(x, (torch.Tensor, Tracer)):
            raise TypeError(f"functx.{what}: expected a tensor or a pytree of tensors, got a leaf of "
                            f"type {type(x).__name__} ({x!r:.40})")
        return wrap(fn(unwrap(x)))
    return tree_map(leaf, tree)


def _over(reduce, axis_name):
    """reduce over one axis name, or over each of a tuple of names (JAX's psum(x, ('i', 'j')))."""
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)

    def fn(v):
        for name in names:
            v = reduce(v, name)
        return v
    return fn


def psum(x, axis_name):
    """Sum of x over the vmap (or spmd process) axis named axis_name, or over each axis of a
    tuple of names; every batch element (every rank) gets the total.

    Example:
      >>> functx.vmap(lambda v: v / functx.psum(v, "i"), axis_name="i")(torch.arange(1.0, 5.0))
    """
    return _apply(_over(P.psum, axis_name), x, "psum")


def pmean(x, axis_name):
    """Mean of x over the named axis (or tuple of axes)."""
    def mean(v, name):
        return P.div(P.psum(v, name), float(axis_size("pmean", name)))    # sizes are static
    return _apply(_over(mean, axis_name), x, "pmean")


def pmax(x, axis_name):
    """Max of x over the named axis (or tuple of axes)."""
    return _apply(_over(P.pmax, axis_name), x, "pmax")


def pvary(x, axis_name):
    """x, marked as varying across the ranks of functx.spmd's axis axis_name (JAX's
    lax.pvary): grad inside spmd then treats it as a per-rank variable, so its gradient is
    this rank's contribution, not the sum over ranks (per-example gradients, DP-SGD)."""
    return _apply(lambda v: _pvary(v, axis_name), x, "pvary")


def pmin(x, axis_name):
    """Min of x over the named axis (or tuple of axes)."""
    return _apply(_over(lambda v, name: P.neg(P.pmax(P.neg(v), name)), axis_name), x, "pmin")


def all_gather(x, axis_name, *, axis=0, tiled=False):
    """Stack x from every element of the named vmap axis along a new dim `axis` (leading by
    default); tiled=True concatenates along x's dim `axis` instead (JAX's lax.all_gather)."""
    def gather(v):
        g, nd = P.all_gather(v, axis_name), type_of(v).ndim
        if not tiled:
            if not -nd - 1 <= axis <= nd:
                raise ValueError(f"functx.all_gather: axis={axis} is out of range for x of {nd} dims")
            return P.moveaxis(g, 0, axis % (nd + 1))
        if not -nd <= axis < nd:
            raise ValueError(f"functx.all_gather: tiled=True needs axis within x's {nd} dims, got axis={axis}")
        a, shape = axis % nd, list(type_of(v).shape)
        shape[a] *= type_of(g).shape[0]
        return P.reshape(P.moveaxis(g, 0, a), tuple(shape))
    return _apply(gather, x, "all_gather")


def axis_index(axis_name, device=None):
    """The index of the current element along the named vmap axis."""
    return wrap(P.axis_index(axis_name, device))


def stop_gradient(x):
    """x, with zero derivative under every transform (JAX's lax.stop_gradient).

    Example:
      >>> functx.grad(lambda x: (x * functx.stop_gradient(x)).sum())(x)   # == x, not 2x
    """
    return _apply(P.stop_gradient, x, "stop_gradient")


def map(f, xs, *, batch_size=None):  # noqa: A001  (JAX's name: lax.map)
    """f applied to each slice of xs along its leading dim, one at a time, as a loop (JAX's
    lax.map: a scan without a carry, so memory holds one slice's temporaries; vmap batches
    instead). xs may be a pytree of tensors with the same leading size. batch_size: a loop
    over batches of that many slices, each vmapped (the remainder vmapped after), as JAX's.

    Example:
      >>> functx.lax.map(lambda x: x @ x.T, torch.randn(8, 3, 3))   # shape (8, 3, 3)
    """
    if batch_size is None:
        return scan(lambda carry, x: (carry, f(x)), None, xs)[1]
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise TypeError(f"functx.lax.map: batch_size must be a positive int, got {batch_size!r}")
    leaves, tree = tree_flatten(xs)
    n = type_of(unwrap(leaves[0])).shape[0] if leaves else 0
    k, rest = divmod(n, batch_size)
    parts = []
    if k:
        main = tree_unflatten(tree, [x[:k * batch_size].reshape((k, batch_size) + tuple(x.shape[1:])) for x in leaves])
        parts.append(tree_map(lambda y: y.reshape((k * batch_size,) + tuple(y.shape[2:])), map(vmap(f), main)))
    if rest:
        parts.append(vmap(f)(tree_unflatten(tree, [x[k * batch_size:] for x in leaves])))
    return parts[0] if len(parts) == 1 else tree_map(lambda a, b: torch.cat([a, b]), *parts)
