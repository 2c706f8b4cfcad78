"""Tracing a Python function into a Graph: make_graph, and the trace jit and explain share.

Tensor leaves of the arguments become graph inputs; non-tensor leaves and static
arguments are fixed at trace time. What the trace learns besides the equations (pytree
structures, inputs written in place, fallback ops) goes into graph.meta.
"""
from __future__ import annotations

import functools

import torch

from ..core import GraphMeta, GraphTrace, current_trace, set_current_trace
from ..core.errors import user_facing
from ..core.trace import Tracer, type_of
from ..frontend import TracerTensor, record_fallbacks, unwrap, wrap_input
from ..frontend.random_mode import intercept_random
from ..tree_util import tree_flatten, tree_unflatten


def normalize_argnums(static_argnums, what):
    """static_argnums as a tuple of ints (an int is one position)."""
    nums = (static_argnums,) if isinstance(static_argnums, int) else static_argnums
    try:
        nums = tuple(nums)
    except TypeError:
        raise TypeError(f"{what}: static_argnums must be an int or a sequence of ints, got "
                        f"{type(static_argnums).__name__}") from None
    for a in nums:
        if not isinstance(a, int) or isinstance(a, bool):
            raise TypeError(f"{what}: static_argnums must be an int or a sequence of ints, got "
                            f"{static_argnums!r}")
    return nums


def split_static(args, static_argnums, what):
    for a in static_argnums:
        if not -len(args) <= a < len(args):
            raise ValueError(f"{what}: static_argnums={static_argnums!r} refers to argument {a}, but "
                             f"f was called with {len(args)} positional arguments")
    nums = tuple(a % len(args) for a in static_argnums)
    dynamic = tuple(None if i in nums else a for i, a in enumerate(args))
    static = tuple(args[i] for i in nums)
    for i, s in zip(nums, static):
        if isinstance(s, (torch.Tensor, Tracer)):
            raise TypeError(f"{what}: static argument {i} is a tensor; static arguments are compared by "
                            "value as part of the cache key, so they must be hashable Python values. "
                            "Pass tensors as ordinary (traced) arguments.")
        try:
            hash(s)
        except TypeError:
            raise TypeError(f"{what}: static argument {i} is a {type(s).__name__}, which is not hashable; "
                            "static arguments are part of the cache key. Pass a hashable value "
                            "(e.g. a tuple instead of a list), or make it a traced argument.") from None
    return dynamic, static, nums


def trace_graph(f, args, kwargs, static_argnums=(), what="functx.make_graph", mutations=False):
    """Trace f at abstract versions of the tensor leaves of args/kwargs -> Graph.

    mutations=True: the final values of inputs that f writes in place are extra outputs, and
    graph.meta.mutated_inputs lists their positions among the tensor leaves (jit copies
    them back)."""
    dynamic, static, nums = split_static(args, static_argnums, what)
    leaves, treedef = tree_flatten((dynamic, kwargs))
    trace = GraphTrace(current_trace(), stage_all=True)
    tracers, vals, in_wrappers = [], [], []
    for leaf in leaves:
        if isinstance(leaf, (torch.Tensor, Tracer)):
            t = trace.new_arg(type_of(unwrap(leaf)))
            tracers.append(t)
            vals.append(wrap_input(t, leaf))
            in_wrappers.append(vals[-1])
        else:
            vals.append(leaf)
    dyn, kw = tree_unflatten(treedef, vals)
    full = list(dyn)
    for i, s in zip(nums, static):
        full[i] = s
    # intercept_random: torch.randn(shape) etc. are staged as random primitives, not baked in
    with record_fallbacks() as fallbacks, set_current_trace(trace), intercept_random():
        out = f(*full, **kw)
        out_leaves, out_tree = tree_flatten(out)
        for i, leaf in enumerate(out_leaves):
            if not isinstance(leaf, (torch.Tensor, Tracer)):
                where = f" (at {out_tree.paths()[i]})"
                raise TypeError(f"{what}: output leaf {i}{where} of f is a {type(leaf).__name__} "
                                f"({leaf!r:.40}), not a tensor; return tensors (or close over "
                                "non-tensor values)")
        out_vals = [unwrap(l) for l in out_leaves]   # inside the trace: a stale view recomputes here
        mutated = [k for k, w in enumerate(in_wrappers)
                   if mutations and isinstance(w, TracerTensor) and w._version_]
        out_vals += [unwrap(in_wrappers[k]) for k in mutated]
    meta = GraphMeta(in_tree=treedef, out_tree=out_tree, mutated_inputs=tuple(mutated),
                     fallbacks=tuple(fallbacks))
    return trace.to_graph(tracers, out_vals).replace(meta=meta)


def make_graph(f, static_argnums=()):
    """Trace f into a functx Graph: make_graph(f)(*args) -> Graph (JAX's make_jaxpr).

    Tensor leaves of the arguments become graph inputs (only their shape, dtype and device
    matter); non-tensor arguments and static_argnums are fixed at trace time; closed-over
    tensors become constants. str(graph) prints it (`t3 = mul(t1, t2)  # f32[8,16]`);
    graph.fallbacks lists ATen ops that went through the opaque fallback.

    Example:
      >>> print(functx.make_graph(functx.grad(lambda x: torch.sin(x).sum()))(torch.randn(3)))
    """
    static_argnums = normalize_argnums(static_argnums, "functx.make_graph")

    @functools.wraps(f)
    def graph_of(*args, **kwargs):
        with user_facing():
            return trace_graph(f, args, kwargs, static_argnums)
    return graph_of
