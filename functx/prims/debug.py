"""debug_callback: call a Python function on concrete values when the program runs.

The host side of functx.debug.print / callback / breakpoint. It has no outputs and is
effectful, so no pass removes, merges or folds it (compile/passes.py), and the Triton
scheduler runs it as an extern between kernels, in program order among effectful ops.

params: `callback(*tensors)`, and `batch_ndim`, the number of leading batch dims that vmap
added: the impl calls the callback once per example (JAX's choice), outer vmap's axis first.
Rules: jvp calls it on the primals (no tangent output); transpose has nothing to do (the
linear program never holds one: its operands are primals); batch moves the batch dim first
and adds one to batch_ndim.
"""
from __future__ import annotations

import contextlib
import itertools
import threading

from ..core import EXTERN, Primitive
from .shape import bdim_to_front


def _debug_callback_type(*types, callback, batch_ndim):
    return []


def _debug_callback_impl(*tensors, callback, batch_ndim):
    if batch_ndim == 0:
        callback(*tensors)
        return []
    for index in itertools.product(*(range(n) for n in tensors[0].shape[:batch_ndim])):
        callback(*[t[index] for t in tensors])
    return []


def _debug_callback_jvp(primals, tangents, *, callback, batch_ndim):
    debug_callback_p.bind(*primals, callback=callback, batch_ndim=batch_ndim)
    return [], []


def _debug_callback_transpose(cts, *args, callback, batch_ndim):
    return [None] * len(args)


def _debug_callback_batch(axis, vals, dims, *, callback, batch_ndim):
    moved = [bdim_to_front(v, d, axis.size) for v, d in zip(vals, dims)]
    debug_callback_p.bind(*moved, callback=callback, batch_ndim=batch_ndim + 1)
    return [], []


debug_callback_p = Primitive(
    "debug_callback", kind=EXTERN, multiple_results=True, effectful=True,
    abstract_eval=_debug_callback_type, impl=_debug_callback_impl, jvp=_debug_callback_jvp,
    transpose=_debug_callback_transpose, batch=_debug_callback_batch)


class _Quiet(threading.local):
    on = False


_QUIET = _Quiet()


@contextlib.contextmanager
def quiet_callbacks():
    """Record no debug callback while a function runs only to be inspected (while_loop's probe
    of cond_fun, whose prints belong to the loop's own evaluations)."""
    prev, _QUIET.on = _QUIET.on, True
    try:
        yield
    finally:
        _QUIET.on = prev


def debug_callback(callback, *tensors):
    """Call callback(*tensors) with concrete values whenever the program runs."""
    if not _QUIET.on:
        debug_callback_p.bind(*tensors, callback=callback, batch_ndim=0)
