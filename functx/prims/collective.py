"""Collectives over a named axis: psum, pmax, all_gather, axis_index.

A vmap axis: the BatchTrace whose axis_name matches handles them (transforms/batching.py
calls `collective_batch`); any other trace treats them as ordinary primitives. A process
axis (functx.spmd): the SpmdTrace whose axis_name matches rebinds them with the resolved
axis (an AxisData holding the process group) as axis_name, and their impl issues the
torch.distributed collective (prims/distributed.py), eagerly or from jit's generated code.
A collective that reaches no matching axis raises UnboundAxisError.
"""
from __future__ import annotations

import torch

from ..core import FunctxError, Primitive, TensorType, UnboundAxisError, bind
from ..core.trace import AxisData, find_axis, type_of
from . import distributed
from .define import deflinear
from . import elementwise as ew
from . import reduce as red
from .creation import iota
from .indexing import take
from .shape import bdim_to_front


def _unbound(name, axis_name):
    raise UnboundAxisError(
        f"{name}: no enclosing functx.vmap or functx.spmd has axis_name={axis_name!r}. Pass axis_name="
        f"{axis_name!r} to the vmap (or spmd) whose axis this collective reduces over. (Under spmd, a "
        "collective inside functx.cond/while_loop branches or custom_jvp/custom_vjp functions is not "
        "supported: call it outside them.)")


def is_process_axis(axis_name) -> bool:
    """axis_name is a process axis already resolved by its functx.spmd (AxisData with a group)."""
    return isinstance(axis_name, AxisData) and axis_name.group is not None


def axis_size(name, axis_name):
    """The size of the enclosing vmap axis called axis_name (from the axis environment).

    Abstract evaluation needs it when a collective is staged into a graph inside that vmap
    (linearize records tangent collectives; make_graph under vmap), like JAX's axis env."""
    if is_process_axis(axis_name):
        return axis_name.size
    axis = find_axis(axis_name)
    if axis is None:
        _unbound(name, axis_name)
    return axis.size


def defcollective(name, abstract_eval, process_impl, process_start=None):
    """A collective has no batch rule: the BatchTrace owning its axis_name applies
    collective_batch, any other BatchTrace foreign_collective_batch. Its impl runs
    process_impl(*args, axis, **params) for a resolved process axis (process_start issues
    it asynchronously, for generated code); for a name no vmap or spmd resolved there is
    no axis to act on."""
    def on_process_axis(fn):
        def run(*args, axis_name, **params):
            if is_process_axis(axis_name):
                return fn(*args, axis_name, **params)
            _unbound(name, axis_name)
        return run
    return Primitive(name, collective=True, abstract_eval=abstract_eval, impl=on_process_axis(process_impl),
                     start=on_process_axis(process_start) if process_start is not None else None)


def _same_type_collective(name):
    def abstract_eval(t, *, axis_name):
        axis_size(name, axis_name)
        return t
    return abstract_eval


def _pmax_jvp(primals, tangents, *, axis_name):
    (x,), (t,) = primals, tangents
    out = pmax(x, axis_name)
    mask = ew.convert(ew.eq(x, out), type_of(x).dtype)
    return out, ew.div(psum(ew.mul(t, mask), axis_name), psum(mask, axis_name))


def _all_gather_transpose(ct, x, *, axis_name):
    # y_i = stack_j x_j for every i, so ct_x_j = sum_i ct_i[j]: psum, then this element's row.
    total = psum(ct, axis_name)
    t = type_of(ct)
    return [take(total, axis_index(axis_name, t.device), 0)]


# psum transposes to psum: per rank (or per vmap element) every copy of a value is its own
# variable, so y_r = sum_s x_s has x_s's cotangent sum_r ct_r. functx.spmd's boundaries
# and grad under spmd (prims/spmd.py) turn that into JAX's replicated-value semantics.
psum_p = deflinear(defcollective("psum", _same_type_collective("psum"), distributed.psum, distributed.psum_start),
                   lambda ct, x, *, axis_name: [psum(ct, axis_name)])
pmax_p = defcollective("pmax", _same_type_collective("pmax"), distributed.pmax, distributed.pmax_start)
pmax_p.jvp = _pmax_jvp
all_gather_p = deflinear(defcollective("all_gather", lambda t, *, axis_name: t.with_shape(
    (axis_size("all_gather", axis_name),) + tuple(t.shape)), distributed.all_gather, distributed.all_gather_start),
    _all_gather_transpose)
axis_index_p = defcollective("axis_index", lambda *, axis_name, device: (
    axis_size("axis_index", axis_name), TensorType((), torch.int64, device))[1],
    lambda axis, device: distributed.axis_index(axis, device))


def psum(x, axis_name):
    return bind(psum_p, (x,), {"axis_name": axis_name})


def pmax(x, axis_name):
    return bind(pmax_p, (x,), {"axis_name": axis_name})


def all_gather(x, axis_name):
    return bind(all_gather_p, (x,), {"axis_name": axis_name})


def axis_index(axis_name, device=None):
    return bind(axis_index_p, (), {"axis_name": axis_name, "device": torch.device(device or "cpu")})


def collective_batch(prim, axis, args, dims, params):
    """The rule at the vmap that owns params['axis_name']: reduce over its batch dim."""
    size = axis.size
    if axis.chunk_of is not None:
        raise FunctxError(
            f"functx.{prim.name}: the vmap with axis_name={axis.name!r} runs in chunks (chunk_size) of "
            f"its {axis.chunk_of} examples, and a collective over a chunk would see only that chunk's "
            f"{size}: drop chunk_size from that vmap, or compute the collective outside it")
    if prim is axis_index_p:
        return iota((size,), 0, torch.int64, params["device"]), 0
    (x,), (d,) = args, dims
    if prim is psum_p:
        return (ew.mul(x, size) if d is None else red.reduce_sum(x, (d,))), None
    if prim is pmax_p:
        return (x if d is None else red.reduce_max(x, (d,))), None
    if prim is all_gather_p:
        return bdim_to_front(x, d, size), None
    raise NotImplementedError(prim.name)


def collective_of_replicated(prim, x, size):
    """psum/pmax/all_gather of a value that is the same on all `size` members of the axis."""
    if prim is psum_p:
        return ew.mul(x, size)
    if prim is pmax_p:
        return x
    if prim is all_gather_p:
        return bdim_to_front(x, None, size)
    raise NotImplementedError(prim.name)


def foreign_collective_batch(prim, axis, args, dims, params):
    """At a vmap with another axis name the collective acts on each example independently."""
    if prim is axis_index_p:
        return prim.bind(**params), None
    (x,), (d,) = args, dims
    out = prim.bind(x, **params)
    if prim is all_gather_p and d is not None:
        return out, d + 1
    return out, d
