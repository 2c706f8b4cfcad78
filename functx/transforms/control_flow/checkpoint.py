"""functx.checkpoint (alias remat) and checkpoint_name: rematerialize instead of storing
residuals (JAX's jax.checkpoint, with its policy names).

  checkpoint(*consts, *args; body, policy)   body(*consts, *args), a closed graph.
  jvp: forward mode is a checkpoint of the jvp'd body. Under linearize (tangents of a
      partial-evaluation trace) the primal runs as usual, keeping only the values the policy
      saves (for every other residual, nothing); the recorded tangent equation is a checkpoint
      whose body recomputes the rest from the inputs and the saved values.
  transpose: a checkpoint of the body's transpose (its vjp with respect to the linear inputs),
      so the recomputation happens in the backward pass and, being one sub-graph, is never
      merged with the forward pass by the compiler's CSE.
  batch: a checkpoint of the batched body.

  name(x; name)   the identity; policies that save named values look for it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ...core import POINTWISE, STRUCTURAL, Primitive, Zero
from ...core.ir import Graph, Var, drop_effects
from ...core.trace import GraphTracer, Tracer, UndefinedPrimal, eval_graph, type_of
from ...frontend import unwrap, wrap
from ...prims.creation import instantiate, zeros_like_type
from ...tree_util import tree_flatten, tree_unflatten
from ..ad import jvp_flat, vjp_flat
from .common import closed_graph, dce_graph, run_batched

__all__ = ["checkpoint", "remat", "checkpoint_name", "checkpoint_policies", "checkpoint_p", "name_p"]


# ---------------------------------------------------------------- policies (JAX's names)

@dataclass(frozen=True)
class _Policy:
    """Which intermediate values of a checkpointed function reverse mode may store: a
    predicate on the equation that computes them."""
    kind: str
    names: tuple = ()           # "names": the names saved; "both": the policies combined

    def saves(self, eqn) -> bool:
        if self.kind == "everything":
            return True
        if self.kind == "dots":
            return eqn.prim.name == "dot_general"
        if self.kind == "dots_no_batch":
            return eqn.prim.name == "dot_general" and not eqn.params["dimension_numbers"][1][0]
        if self.kind == "names":
            return eqn.prim is name_p and eqn.params["name"] in self.names
        if self.kind == "both":
            return any(p.saves(eqn) for p in self.names)
        return False

    def __repr__(self):
        if self.kind == "both":
            return f"save_from_both_policies{self.names}"
        return f"save_only_these_names{self.names}" if self.kind == "names" else f"{self.kind}_saveable"


class checkpoint_policies:
    """Policies for functx.checkpoint (jax.checkpoint_policies' names)."""
    nothing_saveable = _Policy("nothing")
    everything_saveable = _Policy("everything")
    dots_saveable = _Policy("dots")
    checkpoint_dots = dots_saveable
    dots_with_no_batch_dims_saveable = _Policy("dots_no_batch")      # matmuls without batch dims
    checkpoint_dots_with_no_batch_dims = dots_with_no_batch_dims_saveable

    @staticmethod
    def save_from_both_policies(policy_1, policy_2):
        """Saves what either policy saves."""
        for p in (policy_1, policy_2):
            if not isinstance(p, _Policy):
                raise TypeError(f"functx.checkpoint_policies.save_from_both_policies: expected policies, got {p!r}")
        return _Policy("both", (policy_1, policy_2))

    @staticmethod
    def save_only_these_names(*names):
        for n in names:
            if not isinstance(n, str):
                raise TypeError(f"functx.checkpoint_policies.save_only_these_names: names must be strings, got {n!r}")
        return _Policy("names", tuple(names))


# ---------------------------------------------------------------- checkpoint_name

def _name_jvp(primals, tangents, *, name):
    (x,), (t,) = primals, tangents
    return name_p.bind(x, name=name), t


name_p = Primitive(
    "checkpoint_name", kind=POINTWISE,
    abstract_eval=lambda t, *, name: t,
    impl=lambda x, *, name: x,
    jvp=_name_jvp,
    transpose=lambda ct, x, *, name: [ct],
    batch=lambda axis, args, dims, *, name: (name_p.bind(args[0], name=name), dims[0]),
    emit=lambda eqn, srcs: srcs[0],
    triton="{0}", cpp="{0}")


def checkpoint_name(x, name: str):
    """x, tagged with `name` for checkpoint_policies.save_only_these_names (JAX's
    checkpoint_name): the values a checkpointed function may store under that policy."""
    if not isinstance(name, str):
        raise TypeError(f"functx.checkpoint_name: name must be a string, got {type(name).__name__}")
    if not isinstance(x, (torch.Tensor, Tracer)):
        raise TypeError(f"functx.checkpoint_name: x must be a tensor, got {type(x).__name__}")
    return wrap(name_p.bind(unwrap(x), name=name))


# ---------------------------------------------------------------- the checkpoint primitive

def _nonzero(t):
    return not isinstance(t, Zero)


def _ckpt_impl(*args, body, policy):
    return eval_graph(body, body.consts, list(args))


def _jvp_graph(body, in_nz, saved=()):
    """(primals, saved values, nonzero tangents) -> tangent outs (instantiated): the body's
    equations under jvp, except that the `saved` equations' primal outputs are read from
    inputs (their tangents still come from their jvp rules); the rest is recomputed."""
    types = body.in_types
    n = len(types)
    saved_ids = {id(e) for e in saved}
    saved_types = [v.type for e in saved for v in e.outputs]

    def fn(*xs):
        prim, sv, ts = list(xs[:n]), iter(xs[n:n + len(saved_types)]), iter(xs[n + len(saved_types):])
        env = dict(zip(body.invars, prim))
        tenv = {v: next(ts) for v, m in zip(body.invars, in_nz) if m}
        for eqn in body.eqns:
            args = [env[a] if isinstance(a, Var) else a.value for a in eqn.inputs]
            tans = [tenv.get(a, Zero(None)) if isinstance(a, Var) else Zero(None) for a in eqn.inputs]
            if id(eqn) in saved_ids and not any(_nonzero(t) for t in tans):
                out, t_out = [next(sv) for _ in eqn.outputs], [Zero(None)] * len(eqn.outputs)
            else:
                out, t_out = jvp_flat(lambda a, e=eqn: _as_list(e.prim.bind(*a, **e.params), e), args, tans)
                if id(eqn) in saved_ids:
                    out = [next(sv) for _ in eqn.outputs]
            env.update(zip(eqn.outputs, out))
            tenv.update((v, t) for v, t in zip(eqn.outputs, t_out) if _nonzero(t))
        return [instantiate(tenv[a]) if a in tenv else zeros_like_type(a.type) for a in body.outvars]
    g, consts = closed_graph(fn, types + saved_types + [t for t, m in zip(types, in_nz) if m])
    return dce_graph(drop_effects(g)), consts     # the primal run performed the prints


def _as_list(out, eqn):
    return list(out) if eqn.prim.multiple_results else [out]


def _under_linearize(tangents):
    return any(isinstance(t, GraphTracer) and not t._trace.stage_all for t in tangents)


def _ckpt_jvp(primals, tangents, *, body, policy):
    in_nz = [_nonzero(t) for t in tangents]
    nz_t = [t for t in tangents if _nonzero(t)]
    out_types = body.out_types
    if not _under_linearize(tangents):
        # forward mode: one checkpoint computing primal and tangent outputs
        def fn(*xs):
            n = len(primals)
            ts = iter(xs[n:])
            t_in = [next(ts) if m else Zero(t) for m, t in zip(in_nz, body.in_types)]
            out, t_out = jvp_flat(lambda a: eval_graph(body, [], a), list(xs[:n]), t_in)
            return list(out) + [instantiate(t) for t in t_out]
        g, consts = closed_graph(fn, body.in_types + [type_of(t) for t in nz_t])
        outs = checkpoint_p.bind(*consts, *primals, *nz_t, body=g, policy=policy)
        return outs[:len(out_types)], outs[len(out_types):]
    # linearize: the primal now, keeping only what the policy saves; the tangent recomputes
    # random draws are always kept: recomputing them would draw new numbers
    saved = [e for e in body.eqns if policy.saves(e) or e.prim.effectful]
    fwd = Graph(body.invars, [], [], body.eqns, list(body.outvars) + [v for e in saved for v in e.outputs])
    outs = eval_graph(fwd, [], list(primals))
    n_out = len(out_types)
    tg, tconsts = _jvp_graph(body, in_nz, saved)
    t_out = checkpoint_p.bind(*tconsts, *primals, *outs[n_out:], *nz_t, body=tg, policy=policy)
    return outs[:n_out], list(t_out)


def _ckpt_transpose(cts, *args, body, policy):
    lin = [isinstance(a, UndefinedPrimal) for a in args]
    res = [a for a, l in zip(args, lin) if not l]
    lin_types = [t for t, l in zip(body.in_types, lin) if l]
    ct_nz = [_nonzero(c) for c in cts]

    def transposed(*xs):
        r, c = list(xs[:len(res)]), iter(xs[len(res):])

        def linear(ts):           # the body as a function of its linear inputs only
            it_t, it_r = iter(ts), iter(r)
            return eval_graph(body, [], [next(it_t) if l else next(it_r) for l in lin])
        # linear in those inputs, so its vjp at zero is its transpose
        _, pullback, _ = vjp_flat(linear, [zeros_like_type(t) for t in lin_types])
        cts_in = pullback([next(c) if m else Zero(t) for m, t in zip(ct_nz, body.out_types)])
        return [instantiate(x) for x in cts_in]
    tg, tconsts = closed_graph(transposed, [type_of(r) for r in res]
                               + [t for t, m in zip(body.out_types, ct_nz) if m])
    outs = iter(checkpoint_p.bind(*tconsts, *res, *[c for c in cts if _nonzero(c)], body=dce_graph(tg),
                                  policy=policy))
    return [next(outs) if l else None for l in lin]


def _ckpt_batch(axis, args, dims, *, body, policy):
    g, consts = closed_graph(lambda *a: run_batched(lambda *v: eval_graph(body, [], list(v)), axis,
                                                    list(dims), list(a)), [type_of(a) for a in args])
    outs = checkpoint_p.bind(*consts, *args, body=g, policy=policy)
    return outs, [0] * len(outs)


checkpoint_p = Primitive(
    "checkpoint", kind=STRUCTURAL, multiple_results=True,
    abstract_eval=lambda *types, body, policy: list(body.out_types),
    impl=_ckpt_impl,
    jvp=_ckpt_jvp,
    transpose=_ckpt_transpose,
    batch=_ckpt_batch)


def checkpoint(f, policy=None, *, prevent_cse=True, static_argnums=()):
    """f, rematerialized: reverse mode stores only f's inputs (and what `policy` saves) and
    recomputes f's other intermediate values in the backward pass (JAX's jax.checkpoint).

    f is traced once per call into one sub-graph, so Python control flow in f must not
    depend on tensor values (use functx.cond / scan). Non-tensor arguments are fixed.

    Args:
      f: a function of pytrees of tensors.
      policy: what may be stored: None or checkpoint_policies.nothing_saveable (nothing),
        checkpoint_policies.dots_saveable (matmul outputs; dots_with_no_batch_dims_saveable:
        those without batch dims), checkpoint_policies.save_only_these_names('a', ...)
        (values tagged with functx.checkpoint_name), checkpoint_policies.everything_saveable,
        checkpoint_policies.save_from_both_policies(p1, p2).
      prevent_cse: accepted for JAX compatibility: the recomputation is always its own
        sub-graph, never merged with the forward pass.
      static_argnums: positional arguments that are fixed values, not tensors (as every
        non-tensor argument is); a tensor there raises, as in JAX.
    """
    static = (static_argnums,) if isinstance(static_argnums, int) else tuple(static_argnums)
    if policy is None:
        policy = checkpoint_policies.nothing_saveable
    if not isinstance(policy, _Policy):
        raise TypeError("functx.checkpoint: policy must be one of functx.checkpoint_policies (e.g. "
                        f"checkpoint_policies.dots_saveable), got {policy!r}")

    @functools.wraps(f)
    def rematerialized(*args, **kwargs):
        for i in static:
            if any(isinstance(x, (torch.Tensor, Tracer)) for x in tree_flatten(args[i])[0]):
                raise TypeError(f"functx.checkpoint: argument {i} is in static_argnums but holds a tensor "
                                "(under functx.jit a Python number argument is one: make it static there)")
        leaves, tree = tree_flatten((args, kwargs))
        is_t = [isinstance(x, (torch.Tensor, Tracer)) for x in leaves]
        vals = [unwrap(x) for x, t in zip(leaves, is_t) if t]
        store = {}

        def flat(*xs):
            it = iter(xs)
            full = [wrap(next(it)) if t else x for x, t in zip(leaves, is_t)]
            a, kw = tree_unflatten(tree, full)
            out_leaves, store["tree"] = tree_flatten(f(*a, **kw))
            for i, o in enumerate(out_leaves):
                if not isinstance(o, (torch.Tensor, Tracer)):
                    raise TypeError(f"functx.checkpoint: output leaf {i} of f is a {type(o).__name__}; "
                                    "return tensors")
            return [unwrap(o) for o in out_leaves]
        g, consts = closed_graph(flat, [type_of(v) for v in vals], vals)
        outs = checkpoint_p.bind(*consts, *vals, body=g, policy=policy)
        return tree_unflatten(store["tree"], [wrap(o) for o in outs])
    return rematerialized


remat = checkpoint
