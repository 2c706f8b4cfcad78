"""functx.vmap: JAX's vmap (in_axes/out_axes, axis_name, axis_size) with torch.func's names
(in_dims/out_dims, chunk_size, randomness), eagerly over a BatchTrace (batching.py)."""
from __future__ import annotations

import functools

import torch

from ..core import current_trace, set_current_trace
from ..core.errors import UNBATCHED_ARGS, AxisError, UsageError, check_chunk_size
from ..core.trace import refuse_inside_torch_func, staged_or_batched, type_of
from ..frontend import TracerTensor, unwrap, wrap, wrap_input
from ..frontend.random_mode import intercept_random
from ..frontend.unit_batches import batching_units
from .. import prims as P
from .batching import AxisData, BatchTrace, BatchTracer
from .input_writes import refuse_aliased
from .vmap_args import LEAF as _LEAF, TENSOR_LEAF as _TENSOR_LEAF, batch_size as _batch_size
from .vmap_args import describe_unbatched as _describe_unbatched
from .vmap_args import check_axes_spec as _check_axes_spec, check_tensor_leaves as _check_tensor_leaves
from ..tree_util import broadcast_prefix, tree_flatten, tree_unflatten


_RANDOMNESS = ("error", "different", "same")


class _Unset:
    """The default of vmap's in_dims / out_dims aliases: None is a value they can take (not
    batched), so it cannot also mean "not passed"."""
    __slots__ = ()

    def __repr__(self):
        return "<unset>"


_UNSET = _Unset()


def vmap(f, in_axes=0, out_axes=0, axis_name=None, axis_size=None, *, chunk_size=None,
         randomness="error", in_dims=_UNSET, out_dims=_UNSET):
    """Vectorize f over a batch axis: f is written for one example, vmap(f) runs on a batch.

    Args:
      f: a function of tensors (pytrees of tensors).
      in_axes: the batch axis of each positional argument: an int (all arguments), None
        (not batched), or a tuple with one entry per argument, each an int, None, or a
        pytree prefix of that argument. Keyword arguments are batched along axis 0 (as
        in JAX). Alias: in_dims (torch.func's name; functx.func.vmap has torch.func's
        signature, with keyword arguments unbatched).
      out_axes: where the batch axis goes in the outputs (an int, or a pytree prefix of the
        output; None only for outputs that don't depend on the batch). Alias: out_dims.
      axis_name: a name for the axis, for the collectives psum, pmean, pmax, all_gather and
        axis_index inside f.
      axis_size: the batch size, needed only when no argument is batched.
      chunk_size: process the batch in chunks of this many examples (bounds memory; a
        collective over axis_name then raises: it would see one chunk).
      randomness: random ops inside f: 'error' (default), 'different' (independent per
        example) or 'same' (one draw shared by the batch).

    Returns:
      The vectorized function.

    Example:
      >>> functx.vmap(torch.dot)(a, b)                               # row-wise dot products
      >>> functx.vmap(functx.grad(loss), in_axes=(None, 0, 0))(params, x, y)   # per-sample grads
    """
    if in_dims is not _UNSET:
        if in_axes != 0:
            raise TypeError("functx.vmap: pass in_axes or its alias in_dims, not both")
        in_axes = in_dims
    if out_dims is not _UNSET:
        if out_axes != 0:
            raise TypeError("functx.vmap: pass out_axes or its alias out_dims, not both")
        out_axes = out_dims
    if randomness not in _RANDOMNESS:
        raise UsageError(f"functx.vmap: randomness must be one of {_RANDOMNESS}, got {randomness!r}")
    check_chunk_size(chunk_size, "functx.vmap")
    if isinstance(in_axes, list):
        in_axes = tuple(in_axes)
    _check_axes_spec(in_axes, "in_axes")
    _check_axes_spec(out_axes, "out_axes")

    # in_axes / out_axes per leaf depend only on the pytree structure: matched once per structure
    axes_of: dict = {}

    @functools.wraps(f)
    def vmapped(*args, **kwargs):
        if isinstance(in_axes, tuple) and len(in_axes) != len(args):
            raise ValueError(f"functx.vmap: in_axes is a tuple of length {len(in_axes)}, but f got "
                             f"{len(args)} positional arguments")
        leaves, treedef = tree_flatten((args, kwargs))
        axes = axes_of.get(("in", treedef))
        if axes is None:
            axes = broadcast_prefix((in_axes, 0), (args, kwargs), "functx.vmap: in_axes")
            if len(axes_of) < 64:
                axes_of[("in", treedef)] = axes
        size = _batch_size(leaves, axes, axis_size, treedef, f)
        if chunk_size is not None and chunk_size < size:
            if randomness == "same" and staged_or_batched():
                # Staged chunks would each draw their own sample: one call shares it.
                return _vmap_call(f, leaves, axes, treedef, size)
            return _chunked(f, leaves, axes, treedef, size)
        return _vmap_call(f, leaves, axes, treedef, size)

    def _vmap_call(fn, leaves, axes, treedef, size, chunk_of=None):
        trace = BatchTrace(current_trace(), AxisData(size, axis_name, randomness, chunk_of=chunk_of))
        vals = []
        for leaf, ax in zip(leaves, axes):
            if ax is None:
                vals.append(leaf)
            else:
                v = unwrap(leaf)
                ax = ax % type_of(v).ndim
                vals.append(wrap_input(BatchTracer(trace, v, ax), leaf, ax))
        refuse_inside_torch_func("functx.vmap")
        # a batched write into an argument with in_axes None names it (core.errors.unbatched_argument)
        stack = UNBATCHED_ARGS.stack
        stack.append((leaves, axes, _describe_unbatched, treedef, fn))
        try:
            return _run(fn, trace, leaves, vals, axes, treedef, size)
        finally:
            stack.pop()

    def _run(fn, trace, leaves, vals, axes, treedef, size):
        args, kwargs = tree_unflatten(treedef, vals)
        with set_current_trace(trace), intercept_random(), batching_units():    # (as in _flat_fun)
            out = fn(*args, **kwargs)
            out_leaves, out_tree = ([out], _LEAF) if type(out) is TracerTensor else tree_flatten(out)
            oaxes = axes_of.get(("out", out_tree))
            if oaxes is None:
                oaxes = broadcast_prefix(out_axes, out, "functx.vmap: out_axes")
                if len(axes_of) < 64:
                    axes_of[("out", out_tree)] = oaxes
            # a leaf that is not a tensor (a Python number, a string) returns as is with out_axes
            # None, as in torch.func
            _check_tensor_leaves(out_leaves, "functx.vmap: output of f", out_tree,
                                 "; out_axes (out_dims) None for it returns it as it is", skip=oaxes)
            out_vals = [unwrap(l) if isinstance(l, _TENSOR_LEAF) else l   # inside the trace: a stale
                        for l in out_leaves]                               # view recomputes here
            written_args = [(leaf, w, ax) for leaf, w, ax in zip(leaves, vals, axes) if ax is not None and w._version_]
            if written_args:
                refuse_aliased([(k, None) for k, (w, ax) in enumerate(zip(vals, axes))
                                if ax is not None and w._version_], leaves)
            written = [(leaf, unwrap(w), ax) for leaf, w, ax in written_args]
            # an output that is a written argument itself (vmap(Tensor.add_)): the caller's tensor
            # comes back, as torch.func returns it (a view of it for another out_axes)
            returned = {id(w): (leaf, ax) for leaf, w, ax in written_args}
        # In-place writes into batched inputs reach the caller's tensors, as in torch.func.
        for leaf, v, ax in written:
            val, bdim = (v.val, v.bdim) if isinstance(v, BatchTracer) and v._trace is trace else (v, None)
            full = P.bdim_to_front(val, bdim, size)
            leaf.copy_(wrap(P.moveaxis(full, 0, ax % type_of(full).ndim)))
        results = []
        for k, (v, oax) in enumerate(zip(out_vals, oaxes)):
            if not isinstance(v, _TENSOR_LEAF):
                results.append(v)
                continue
            if returned and id(out_leaves[k]) in returned and oax is not None:
                leaf, ax = returned[id(out_leaves[k])]
                nd = leaf.dim()
                results.append(leaf if oax % nd == ax % nd else leaf.movedim(ax % nd, oax % nd))
                continue
            val, bdim = (v.val, v.bdim) if isinstance(v, BatchTracer) and v._trace is trace else (v, None)
            if oax is None:
                if bdim is not None:
                    raise ValueError("functx.vmap: out_axes=None for an output that depends on the batched "
                                     "inputs; only unbatched outputs can have out_axes=None")
                results.append(wrap(val))
                continue
            if bdim == 0 and oax == 0:      # (most outputs)
                results.append(wrap(val))
                continue
            val = P.bdim_to_front(val, bdim, size)
            nd = type_of(val).ndim
            if not -nd <= oax < nd:
                raise AxisError(f"functx.vmap: out_axes={oax} is out of range for output leaf {len(results)} "
                                 f"of f, which has shape {tuple(type_of(val).shape[1:])} per example "
                                 f"({nd} dims with the batch dim)")
            results.append(wrap(P.moveaxis(val, 0, oax % nd)))
        return tree_unflatten(out_tree, results)

    def _chunked(fn, leaves, axes, treedef, size):
        outs = []
        same_sample = randomness == "same"
        for start in range(0, size, chunk_size):
            stop = min(start + chunk_size, size)
            part = [leaf if ax is None else leaf.narrow(ax, start, stop - start) for leaf, ax in zip(leaves, axes)]
            if same_sample:         # every chunk draws what the first one drew
                if start == 0:
                    before = _rng_state()
                else:
                    _set_rng_state(before)
            outs.append(_vmap_call(fn, part, axes, treedef, stop - start, size))
            if same_sample and start == 0:
                after = _rng_state()
        if same_sample:
            _set_rng_state(after)   # the generator moves on as after one draw
        first_leaves, tree = tree_flatten(outs[0])
        oaxes = broadcast_prefix(out_axes, outs[0], "functx.vmap: out_axes")
        per_leaf = [tree_flatten(o)[0] for o in outs]
        merged = []
        for i, oax in enumerate(oaxes):
            if oax is None:
                merged.append(first_leaves[i])
            else:
                merged.append(torch.cat([pl[i] for pl in per_leaf], dim=oax))
        return tree_unflatten(tree, merged)

    return vmapped


def _rng_state():
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)


def _set_rng_state(state):
    cpu, cuda = state
    torch.default_generator.set_state(cpu)      # (not torch.set_rng_state: jit marks a user's call)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
