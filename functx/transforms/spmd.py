"""spmd: JAX's shard_map on torch.distributed process groups.

Every process runs f on its local values; `axis_name` names the process group (the world by
default), so functx's collectives over that name become torch.distributed collectives.
The SpmdTrace tracks which values vary across ranks (JAX's check_rep): its tracers wrap
per-rank ("varying") values; anything else — a replicated input, a constant, a psum — is
the same on every rank. That knowledge serves three things: out_specs=None is checked;
grad/vjp inside spmd turn per-rank cotangents into global ones (prims/spmd.invariant_ct);
and pvary marks a replicated value as per-rank. Collectives of this axis are rebound on the
parent with the resolved axis (an AxisData holding the group), so their impl, eager or in
jit's generated code, issues the torch.distributed call (prims/distributed.py).
"""
from __future__ import annotations

import functools

import torch
import torch.distributed as dist

from ..core import EVAL_TRACE, FunctxError, Trace, Tracer, current_trace, set_current_trace
from ..core.trace import AxisData, concrete, find_axis, process_on_parent, refuse_inside_torch_func, type_of
from ..frontend import unwrap, wrap
from ..frontend.random_mode import intercept_random
from ..prims.collective import axis_index_p, collective_of_replicated
from ..prims.spmd import invariant_ct_p, pvary_p, replicated_in, replicated_out, resolve_invariant_ct
from ..tree_util import broadcast_prefix, tree_flatten, tree_unflatten


class SpmdTracer(Tracer):
    """A value that differs across the ranks of its trace's process axis."""
    __slots__ = ("val",)

    def __init__(self, trace, val):
        self._trace = trace
        self.val = val

    @property
    def aval(self):
        return type_of(self.val)

    def concrete(self):
        return concrete(self.val)      # each rank runs its own Python on its own value

    def __repr__(self):
        return f"SpmdTracer({self.aval}, varying over {self._trace.axis.name!r})"


class SpmdTrace(Trace):
    def __init__(self, parent, axis: AxisData):
        self.parent = parent
        self.axis = axis

    def __repr__(self):
        return f"SpmdTrace(name={self.axis.name!r}, size={self.axis.size})"

    def varies(self, x) -> bool:
        return isinstance(x, SpmdTracer) and x._trace is self

    def process_primitive(self, prim, args, params):
        own = params.get("axis_name") == self.axis.name if (prim.collective or prim in _MARKERS) else False
        if own and prim is pvary_p:
            return args[0] if self.varies(args[0]) else SpmdTracer(self, args[0])
        if own and prim is invariant_ct_p:
            return resolve_invariant_ct(args[0], self.varies(args[1]), self.axis, params["reduce"])
        vals = [a.val if self.varies(a) else a for a in args]
        if own:
            if prim is not axis_index_p and not self.varies(args[0]):
                with set_current_trace(self.parent):      # the same on every rank: no communication
                    return collective_of_replicated(prim, vals[0], self.axis.size)
            varying = prim is axis_index_p
            params = dict(params, axis_name=self.axis)
        else:
            varying = prim.effectful or any(self.varies(a) for a in args)
        out = process_on_parent(self, prim, vals, params)
        if not varying:
            return out
        if prim.multiple_results:
            return [SpmdTracer(self, o) for o in out]
        return SpmdTracer(self, out)


_MARKERS = (pvary_p, invariant_ct_p)


def _process_group(group):
    if not (dist.is_available() and dist.is_initialized()):
        raise FunctxError(
            "functx.spmd: torch.distributed is not initialized. Call torch.distributed.init_process_group"
            "('gloo' on CPU, 'nccl' on GPU) in every process first (torchrun sets the rank, world size and "
            "rendezvous environment for it). For named axes within one process use "
            "functx.vmap(f, axis_name=...).")
    group = dist.group.WORLD if group is None else group
    if dist.get_rank(group) < 0:
        raise ValueError(f"functx.spmd: group: this process (global rank {dist.get_rank()}) is not a "
                         "member of the given process group")
    return group


def _check_specs(spec, name):
    leaves = tree_flatten(spec)[0] if not isinstance(spec, (int, type(None))) else [spec]
    for leaf in leaves:
        if not (leaf is None or (isinstance(leaf, int) and not isinstance(leaf, bool))):
            raise TypeError(f"functx.spmd: {name} must be None (replicated), an int (the sharded dim) or "
                            f"a pytree prefix of those; got {spec!r}")


def _check_dim(dim, val, what):
    nd = type_of(val).ndim
    if not -nd <= dim < nd or nd == 0:
        raise ValueError(f"functx.spmd: {what} is sharded along dim {dim}, but it has shape "
                         f"{tuple(type_of(val).shape)}")


def spmd(f, axis_name, in_specs, out_specs, group=None, check_rep=True):
    """Run f on every process of a torch.distributed group with `axis_name` naming the group
    (JAX's shard_map): f sees each rank's local values, and psum/pmean/pmax/all_gather/
    axis_index over axis_name are collectives across the processes.

    Args:
      f: a function of tensors (pytrees of tensors), written for one rank's local values.
      axis_name: the name collectives inside f use for the process axis.
      in_specs: per positional argument (a tuple, or one spec for all): None = replicated
        (the same value on every rank), an int = sharded along that dim (each rank passes
        its local block; see functx.distributed.shard); pytree prefixes allowed, as vmap's
        in_axes.
      out_specs: likewise for the outputs: None = replicated (checked: a value that varies
        across ranks raises unless check_rep=False), an int = each rank returns its block
        of a global value concatenated along that dim (functx.distributed.gather
        reassembles it).
      group: the torch.distributed process group (default: the world).
      check_rep: raise when an output declared replicated varies across ranks.

    Differentiation follows JAX's shard_map: grad inside spmd returns the global gradient
    (replicated inputs get the sum of every rank's contribution), and grad outside spmd
    differentiates the global function. Put functx.jit outside spmd (jit inside spmd
    inlines). See docs/distributed.md.

    Example:
      >>> step = functx.spmd(functx.grad(loss), "dp", in_specs=(None, 0, 0), out_specs=None)
      >>> grads = step(params, x_local, y_local)      # the global-batch gradient on every rank
    """
    _check_specs(in_specs, "in_specs")
    _check_specs(out_specs, "out_specs")
    if isinstance(in_specs, list):
        in_specs = tuple(in_specs)

    @functools.wraps(f)
    def spmd_f(*args, **kwargs):
        if kwargs:
            raise TypeError(f"functx.spmd: pass f's arguments positionally (in_specs describes them); got "
                            f"keyword arguments {sorted(kwargs)}")
        pg = _process_group(group)
        if find_axis(axis_name) is not None:
            raise ValueError(f"functx.spmd: axis_name={axis_name!r} is already bound by an enclosing vmap "
                             "or spmd; give this axis another name")
        if isinstance(in_specs, tuple) and len(in_specs) != len(args):
            raise ValueError(f"functx.spmd: in_specs has {len(in_specs)} entries, but f got {len(args)} "
                             "positional arguments")
        axis = AxisData(dist.get_world_size(pg), axis_name, group=pg)
        parent = current_trace()
        trace = SpmdTrace(parent, axis)
        leaves, treedef = tree_flatten(args)
        specs = broadcast_prefix(in_specs, args, "functx.spmd: in_specs")
        vals = []
        for i, (leaf, spec) in enumerate(zip(leaves, specs)):
            if not isinstance(leaf, (torch.Tensor, Tracer)):
                raise TypeError(f"functx.spmd: argument leaf {i} is a {type(leaf).__name__}, not a tensor")
            v = unwrap(leaf)
            if spec is None:
                vals.append(wrap(v if parent is EVAL_TRACE else replicated_in(v, axis)))
            else:
                _check_dim(spec, v, f"argument leaf {i}")
                vals.append(wrap(SpmdTracer(trace, v)))
        refuse_inside_torch_func("functx.spmd")
        with set_current_trace(trace), intercept_random():
            out = f(*tree_unflatten(treedef, vals))
            out_leaves, out_tree = tree_flatten(out)
            for i, leaf in enumerate(out_leaves):
                if not isinstance(leaf, (torch.Tensor, Tracer)):
                    raise TypeError(f"functx.spmd: output leaf {i} of f is a {type(leaf).__name__}, not a tensor")
            out_vals = [unwrap(leaf) for leaf in out_leaves]
        ospecs = broadcast_prefix(out_specs, out, "functx.spmd: out_specs")
        results = []
        for i, (v, spec) in enumerate(zip(out_vals, ospecs)):
            varying = trace.varies(v)
            v = v.val if varying else v
            if spec is not None:
                _check_dim(spec, v, f"output leaf {i}")
            elif varying and check_rep:
                raise ValueError(
                    f"functx.spmd: output leaf {i} has out_specs None (replicated), but it varies across the "
                    f"ranks of axis {axis_name!r}. Reduce it (functx.psum / pmean / all_gather over "
                    f"{axis_name!r}), give it an int out_spec (each rank returns its block), or pass "
                    "check_rep=False to return each rank's own value.")
            if spec is None and parent is not EVAL_TRACE:
                v = replicated_out(v, axis)
            results.append(wrap(v))
        return tree_unflatten(out_tree, results)
    return spmd_f
