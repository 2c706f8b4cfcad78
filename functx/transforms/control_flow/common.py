"""Helpers shared by the control-flow primitives: tracing user functions and sub-graphs into
closed graphs (closure conversion), joining branches' operands, running a graph batched,
and the checks on predicates/indices."""
from __future__ import annotations

import torch

from ...core import set_current_trace, current_trace
from ...core.ir import Graph, Var, live_eqns
from ...core.trace import EVAL_TRACE, INLINED, KEEP_CUSTOM_CALLS, GraphTrace, Tracer, eval_graph, \
    torch_autograd_records, type_of
from ...frontend import TracerTensor, unwrap, wrap
from ...frontend.random_mode import intercept_random
from ... import prims as P
from ...prims.shape import bdim_to_front
from ..batching import BatchTrace, BatchTracer
from ...tree_util import tree_flatten, tree_unflatten


def stacked_type(t, length):
    """The type of `length` per-iteration values of type t, stacked on a new leading dim."""
    return t.with_shape((length,) + tuple(t.shape))


def slice_type(t):
    """The per-iteration type of a stacked value."""
    return t.with_shape(tuple(t.shape[1:]))


def is_float(t):
    return t is not None and (t.dtype.is_floating_point or t.dtype.is_complex)


# ---------------------------------------------------------------- tracing sub-graphs

def closed_graph(fn, in_types, values=()):
    """Trace fn (flat lax values -> flat lax values) at in_types -> (graph, consts): the graph's
    invars are its constvars (closure conversion) followed by the inputs; it has no consts.
    values: the operands' values, where the caller has them (the user's loop or branch called
    eagerly): when torch's autograd will differentiate the graph's eager evaluation (a value
    or a closed-over one requires grad), custom_jvp / custom_vjp calls it inlined are traced
    again as equations, so their rules are used (transforms/custom_autograd.py)."""
    inlined = INLINED[0]
    closed, consts = _closed_graph(fn, in_types)
    if INLINED[0] != inlined and current_trace() is EVAL_TRACE and torch_autograd_records() and \
            any(isinstance(v, torch.Tensor) and v.requires_grad for v in (*values, *consts)):
        KEEP_CUSTOM_CALLS[0], keep = True, KEEP_CUSTOM_CALLS[0]
        try:
            closed, consts = _closed_graph(fn, in_types)
        finally:
            KEEP_CUSTOM_CALLS[0] = keep
    return closed, consts


def _closed_graph(fn, in_types):
    trace = GraphTrace(current_trace(), stage_all=True)
    tracers = [trace.new_arg(t) for t in in_types]
    with set_current_trace(trace), intercept_random():
        outs = fn(*tracers)
    g = trace.to_graph(tracers, outs)
    closed = Graph(list(g.constvars) + list(g.invars), [], [], g.eqns, g.outvars)
    return closed, list(g.consts)


def dce_graph(graph, keep_unused_draws=True):
    """Drop equations whose outputs are unused (effects are kept): a transposed body traced as
    the vjp at zero also holds the dead primal work on those zeros. A structural equation with
    a DCE rule (PRUNE: scan) also loses its unused outputs and what only they need, inside its
    body (a loop's dead carries): a forward-mode scan linearized at zero there carries the
    primal of its tangent, custom_lin's value, which can't be evaluated (custom.py)."""
    return graph.replace(eqns=live_eqns(graph, keep_unused_draws, PRUNE)[0])


# structural primitive -> rule(eqn, used output mask) -> the equation computing only what is
# used (None: nothing is), for dce_graph
PRUNE: dict = {}


def join_graphs(closed_list):
    """Branches traced separately -> graphs sharing one operand list: (all consts) + inputs."""
    consts, index = [], {}
    for _, cs in closed_list:
        for c in cs:
            if id(c) not in index:
                index[id(c)] = len(consts)
                consts.append(c)
    graphs = []
    for g, cs in closed_list:
        n_own = len(cs)
        own = {index[id(c)]: v for c, v in zip(cs, g.invars[:n_own])}
        head = [own.get(k) or Var(type_of(consts[k])) for k in range(len(consts))]
        graphs.append(Graph(head + list(g.invars[n_own:]), [], [], g.eqns, g.outvars))
    return tuple(graphs), consts


def run_batched(fn, axis, dims, vals):
    """fn(*vals) under a fresh BatchTrace; outputs come back batched along dim 0."""
    trace = BatchTrace(current_trace(), axis)
    ins = [v if d is None else BatchTracer(trace, v, d) for v, d in zip(vals, dims)]
    with set_current_trace(trace):
        outs = fn(*ins)
    return [bdim_to_front(*trace.unpack(o), axis.size) for o in outs]


def graph_fn(g):
    return lambda *xs: eval_graph(g, [], list(xs))


def trace_user(fn, args_tree, types, what, values=()):
    """A user function over a pytree of tensors -> (closed graph, consts, out tree); values:
    as closed_graph's."""
    store = {}

    def flat(*xs):
        out = fn(*tree_unflatten(args_tree, [wrap(x) for x in xs]))
        out = weak_carry(out, list(xs))[0]        # a Python number output: a 0-d tensor, as in JAX
        leaves, tree = tree_flatten(out)
        for i, l in enumerate(leaves):
            if not isinstance(l, (torch.Tensor, Tracer)):
                raise TypeError(f"{what}: output leaf {i} is a {type(l).__name__}; return tensors")
        store["tree"] = tree
        return [unwrap(l) for l in leaves]
    g, consts = closed_graph(flat, types, values)
    return g, consts, store["tree"]




def index_value(pred, what):
    if isinstance(pred, (bool, int)):
        return pred
    if isinstance(pred, TracerTensor) or isinstance(pred, Tracer):
        v = unwrap(pred)
    elif isinstance(pred, torch.Tensor):
        v = pred
    else:
        raise TypeError(f"{what}: the predicate/index must be a bool, an int or a scalar tensor, "
                        f"got {type(pred).__name__}")
    t = type_of(v)
    if t.shape not in ((), (1,)):
        raise TypeError(f"{what}: the predicate/index must be a scalar, got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype.is_complex:
        raise TypeError(f"{what}: the predicate/index must be bool or integer, got {t.dtype}")
    if t.shape == (1,):
        v = P.reshape(v, ())
    return v


# ---------------------------------------------------------------- Python numbers in a carry

def weak_carry(init, *others):
    """init with its Python int / float leaves made 0-d tensors (int64, the default float
    dtype; on the device of the first tensor in init or others), and which leaves they were:
    JAX's loops take them as weak-typed values (`lax.while_loop(c, b, 0)`)."""
    leaves, tree = tree_flatten(init)
    weak = [isinstance(l, (int, float)) and not isinstance(l, bool) for l in leaves]
    if not any(weak):
        return init, weak
    tensors = [l for l in tree_flatten((init, others))[0] if isinstance(l, (torch.Tensor, Tracer))]
    device = type_of(unwrap(tensors[0])).device if tensors else None
    leaves = [torch.tensor(l, device=device) if w else l for l, w in zip(leaves, weak)]
    return tree_unflatten(tree, leaves), weak


def promote_weak(init, weak, out_dtypes):
    """init with each leaf that was a Python number cast to the dtype the loop body gave it
    (JAX's _promote_weak_typed_inputs: `0` as the carry of a body adding 0.5 is a float), or
    None when no such leaf changed dtype."""
    leaves, tree = tree_flatten(init)
    changed = False
    for i, (leaf, w, d) in enumerate(zip(leaves, weak, out_dtypes)):
        if w and d is not None and d != type_of(unwrap(leaf)).dtype:
            leaves[i] = leaf.to(d)
            changed = True
    return tree_unflatten(tree, leaves) if changed else None
