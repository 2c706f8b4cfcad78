"""Custom derivatives: `custom_jvp` and `custom_vjp`, JAX's API.

    @functx.custom_jvp
    def log1pexp(x):
        return torch.log1p(torch.exp(x))

    @log1pexp.defjvp
    def log1pexp_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        return log1pexp(x), t * torch.sigmoid(x)

    @functx.custom_vjp
    def clip_gradient(x, lo, hi): return x
    clip_gradient.defvjp(lambda x, lo, hi: (x, (lo, hi)),
                         lambda res, g: (g.clamp(*res), None, None))

They are structural primitives holding Python callables over flat lax values, with a rule
for every trace (JAX's custom_derivatives.py, at the transforms layer because the batching
rules run the callables under a BatchTrace):
  custom_jvp_call(*args; fun, jvp)   impl: fun.  jvp: the user's rule, at the parent trace
      (so higher orders differentiate the rule itself).  batch: custom_jvp_call of the
      vmapped fun and jvp.  Staged by jit: fun's body (Primitive.inline), except in a graph
      an enclosing transform will differentiate (GraphTrace.inlines: a loop body under grad).
  custom_vjp_call(*args; fun, fwd, bwd)   impl: fun.  jvp: fwd, plus
      custom_lin(*residuals, *tangents; bwd), a linear primitive with no forward evaluation
      whose transpose is bwd; so grad/vjp (linearize + transpose) use bwd, and forward mode
      (jvp, jacfwd) raises a clear error, as in JAX, unless the call carries a forward-mode
      rule `lin_jvp(residuals, tangents)` (a torch.autograd.Function's jvp staticmethod:
      torch uses backward in reverse mode and jvp in forward mode); custom_lin then
      evaluates it, as ordinary code under further transforms. With constant residuals
      custom_lin is its own derivative (the transposes of loop bodies linearize it so).
      batch: custom_vjp_call of the vmapped fun, fwd, bwd (and lin_jvp).
The batch rules run the callables under a fresh BatchTrace for the axis, which also batches
values they close over (custom_batch.py); eager calls torch's autograd records run as
torch.autograd.Functions with the rules (custom_autograd.py).
Positional arguments are pytrees; tensor leaves are operands, other leaves (Python numbers,
strings) are static: their tangent is 0 and their cotangent is ignored.
"""
from __future__ import annotations

import functools
import inspect
import types

import torch

from ..core import STRUCTURAL, FunctxError, Primitive, Zero, current_trace, set_current_trace
from ..core.trace import GraphTrace, Tracer, type_of
from ..frontend import TracerTensor, unwrap, wrap
from ..frontend.random_mode import intercept_random
from .. import prims as P
from ..prims.creation import instantiate
from ..prims.shape import moveaxis
from .custom_autograd import autograd_records, close_jvp_call, close_vjp_call, closure_grad_error, closure_records, \
    jvp_of_code, note_inlined, torch_custom_jvp, torch_custom_vjp
from .custom_batch import register as _register_closure_batching, run_batched
from ..tree_util import tree_flatten, tree_leaves_with_none, tree_structure, tree_unflatten

__all__ = ["custom_jvp", "custom_vjp", "custom_jvp_call_p", "custom_vjp_call_p", "custom_lin_p"]


def _is_tensor(x):
    return isinstance(x, (torch.Tensor, Tracer))


def _float(t):
    return t.dtype.is_floating_point or t.dtype.is_complex


# ---------------------------------------------------------------- custom_jvp_call



def _traced_out_types(fun, in_types):
    trace = GraphTrace(current_trace(), stage_all=True)
    ins = [trace.new_arg(t) if not isinstance(t, (bool, int, float, complex)) else t for t in in_types]
    with set_current_trace(trace):
        outs = fun(*ins)
    return [type_of(o) for o in outs]


def _custom_jvp_type(*in_types, fun, jvp, name):
    return _traced_out_types(fun, in_types)


def _custom_jvp_impl(*args, fun, jvp, name):
    if autograd_records(args):       # torch's autograd differentiates it: by the rule
        return torch_custom_jvp(lambda *xs: custom_jvp_call_p.bind(*xs, fun=fun, jvp=jvp, name=name), fun, args)
    return fun(*args)


def _custom_jvp_inline(*args, fun, jvp, name):
    note_inlined()
    return fun(*args)


def _custom_jvp_rule(primals, tangents, *, fun, jvp, name):
    tangents = [instantiate(t) for t in tangents]
    outs, t_outs = jvp(list(primals), tangents)
    return outs, [t if _float(type_of(o)) else Zero(type_of(o)) for o, t in zip(outs, t_outs)]


def _custom_jvp_batch(axis, args, dims, *, fun, jvp, name):
    dims = list(dims)

    def bfun(*xs):
        return run_batched(fun, axis, dims, xs)

    def bjvp(primals, tangents):
        n = len(primals)

        def both(*xs):
            outs, t_outs = jvp(list(xs[:n]), list(xs[n:]))
            return list(outs) + list(t_outs)
        res = run_batched(both, axis, dims + dims, list(primals) + list(tangents))
        k = len(res) // 2
        return res[:k], res[k:]

    outs = custom_jvp_call_p.bind(*args, fun=bfun, jvp=bjvp, name=name)
    return outs, [0] * len(outs)


custom_jvp_call_p = Primitive(
    "custom_jvp_call", kind=STRUCTURAL, multiple_results=True,
    abstract_eval=_custom_jvp_type,
    impl=_custom_jvp_impl,
    jvp=_custom_jvp_rule,
    batch=_custom_jvp_batch,
    inline=_custom_jvp_inline,
    close_over=close_jvp_call)


# ---------------------------------------------------------------- custom_vjp_call and custom_lin



def _custom_vjp_type(*in_types, fun, fwd, bwd, name, lin_jvp=None, closed=0):
    return _traced_out_types(fun, in_types)


def _custom_vjp_impl(*args, fun, fwd, bwd, name, lin_jvp=None, closed=0):
    if autograd_records(args):       # torch's autograd differentiates it: by bwd
        return torch_custom_vjp(fwd, bwd, args, closed, name)
    outs = fun(*args)
    if closure_records(outs):        # fun closes over tensors that require grad: bwd can't say how
        return torch_custom_vjp(fwd, bwd, args, closed, name)
    return outs


def _custom_vjp_inline(*args, fun, fwd, bwd, name, lin_jvp=None, closed=0):
    note_inlined()
    return fun(*args)


def _custom_vjp_rule(primals, tangents, *, fun, fwd, bwd, name, lin_jvp=None, closed=0):
    if closed and not all(isinstance(t, Zero) for t in tangents[len(tangents) - closed:]):
        raise closure_grad_error(name)      # closed-over values (close_vjp_call) bwd has no cotangent for
    outs, res = fwd(*primals)
    out_types = [type_of(o) for o in outs]
    float_outs = tuple(i for i, t in enumerate(out_types) if _float(t))
    in_types = tuple(type_of(p) for p in primals)
    tangents = [instantiate(t) for t in tangents]
    lin = custom_lin_p.bind(*res, *tangents, bwd=bwd, jvp=lin_jvp, num_res=len(res), name=name,
                            out_types=tuple(out_types[i] for i in float_outs), float_outs=float_outs,
                            all_out_types=tuple(out_types), in_types=in_types)
    t_outs = [Zero(t) for t in out_types]
    for i, t in zip(float_outs, lin):
        t_outs[i] = t
    return outs, t_outs


def _custom_vjp_batch(axis, args, dims, *, fun, fwd, bwd, name, lin_jvp=None, closed=0):
    dims = list(dims)
    n_res = []

    def bfun(*xs):
        return run_batched(fun, axis, dims, xs)

    def bfwd(*xs):
        def flat(*ys):
            outs, res = fwd(*ys)
            n_res[:] = [len(outs)]
            return list(outs) + list(res)
        r = run_batched(flat, axis, dims, xs)
        k = n_res[0]
        return r[:k], r[k:]

    def bbwd(res, cts):
        per_example = run_batched(lambda *ys: bwd(list(ys[:len(res)]), list(ys[len(res):])),
                                   axis, [0] * (len(res) + len(cts)), list(res) + list(cts))
        out = []
        for ct, d in zip(per_example, dims):
            if ct is None:
                out.append(None)
            elif d is None:         # an unbatched input's cotangent sums over the batch
                out.append(P.reduce_sum(ct, (0,)))
            else:
                out.append(moveaxis(ct, 0, d))
        return out

    blin = None
    if lin_jvp is not None:
        def blin(res, tangents):     # residuals batched at 0; tangents laid out as the arguments
            return run_batched(lambda *ys: lin_jvp(list(ys[:len(res)]), list(ys[len(res):])),
                                axis, [0] * len(res) + dims, list(res) + list(tangents))

    outs = custom_vjp_call_p.bind(*args, fun=bfun, fwd=bfwd, bwd=bbwd, name=name, lin_jvp=blin, closed=closed)
    return outs, [0] * len(outs)


def _forward_mode_error(name):
    return FunctxError(
        f"functx: custom_vjp function '{name}' can't be differentiated in forward mode (jvp, "
        "jacfwd, linearize's jvp function): it defines only a reverse-mode rule (defvjp). "
        "Use grad / vjp / jacrev (jacrev(jacrev(f)) for a Hessian; forward-over-reverse such as "
        "hessian works only if fwd computes the output without calling the custom_vjp function "
        "itself, as in JAX), or define it with functx.custom_jvp.")


def _custom_lin_type(*types, bwd, jvp, num_res, name, out_types, float_outs, all_out_types, in_types):
    return list(out_types)


def _custom_lin_impl(*args, name, jvp, num_res, **params):
    if jvp is None:
        raise _forward_mode_error(name)
    return jvp(list(args[:num_res]), list(args[num_res:]))


def _custom_lin_jvp(primals, tangents, *, name, jvp, num_res, **params):
    if jvp is None:
        if not all(isinstance(t, Zero) for t in tangents[:num_res]):
            raise _forward_mode_error(name)
        # Constant residuals: custom_lin is linear in the rest, its own derivative. The
        # transposes of scan / checkpoint / cond / while bodies linearize it so (at staged
        # zeros: its primal value is dead code there, never run forward).
        full = dict(params, name=name, jvp=jvp, num_res=num_res)
        outs = custom_lin_p.bind(*primals, **full)
        return outs, custom_lin_p.bind(*primals[:num_res], *[instantiate(t) for t in tangents[num_res:]], **full)
    return jvp_of_code(lambda *xs: jvp(list(xs[:num_res]), list(xs[num_res:])), primals, tangents)


def _custom_lin_batch(axis, args, dims, *, name, jvp, num_res, **params):
    if jvp is None:
        raise _forward_mode_error(name)
    outs = run_batched(lambda *xs: jvp(list(xs[:num_res]), list(xs[num_res:])), axis, list(dims), list(args))
    return outs, [0] * len(outs)


def _custom_lin_transpose(cts, *args, bwd, jvp, num_res, name, out_types, float_outs, all_out_types,
                          in_types):
    res = list(args[:num_res])
    full = [P.full(t.shape, 0, t.dtype, t.device) for t in all_out_types]
    given = set()
    for i, ct in zip(float_outs, cts):
        if not isinstance(ct, Zero):
            full[i] = ct
            given.add(i)
    # the zeros made here, for a Function's set_materialize_grads(False) (autograd_function.py)
    ZERO_COTANGENTS.append({id(c) for i, c in enumerate(full) if i not in given})
    try:
        in_cts = bwd(res, full)
    finally:
        ZERO_COTANGENTS.pop()
    return [None] * num_res + list(in_cts)


ZERO_COTANGENTS: list = []      # per running transpose: ids of the output cotangents that are zeros


custom_vjp_call_p = Primitive(
    "custom_vjp_call", kind=STRUCTURAL, multiple_results=True,
    abstract_eval=_custom_vjp_type,
    impl=_custom_vjp_impl,
    jvp=_custom_vjp_rule,
    batch=_custom_vjp_batch,
    inline=_custom_vjp_inline,
    close_over=close_vjp_call)

# custom_vjp's linear part: its transpose is the user's bwd; it has no forward evaluation.
custom_lin_p = Primitive(
    "custom_lin", kind=STRUCTURAL, multiple_results=True,
    abstract_eval=_custom_lin_type,
    impl=_custom_lin_impl,
    jvp=_custom_lin_jvp,
    batch=_custom_lin_batch,
    transpose=_custom_lin_transpose)

# batched by their rules also when only values their callables close over are batched
_register_closure_batching(custom_jvp_call_p, ("fun", "jvp"))
_register_closure_batching(custom_vjp_call_p, ("fun", "fwd", "bwd", "lin_jvp"))


# ---------------------------------------------------------------- the user-facing decorators

class _Args:
    """One call's arguments: nondiff args, and the pytree of the others split into tensor
    operands and static leaves. traced_nondiff: a nondiff argument holding traced tensors
    (custom_jvp, as JAX's) passes them as extra operands after the others, under
    stop_gradient (their tangents are ignored), and the rules see them rebuilt."""

    def __init__(self, owner, args, kwargs, nondiff_argnums, what, traced_nondiff=False):
        args = _positional(owner, args, kwargs, what)
        self.n = len(args)
        self.nondiff = {i % self.n: args[i] for i in nondiff_argnums} if args else {}
        self.traced = {}            # nondiff position -> (leaves, tree, tensor leaf indices)
        for i, a in sorted(self.nondiff.items()):
            nd_leaves, nd_tree = tree_flatten(a)
            if any(isinstance(l, TracerTensor) for l in nd_leaves):
                if not traced_nondiff:
                    raise TypeError(f"{what}: argument {i} is in nondiff_argnums but holds a traced tensor; "
                                    "pass tensors as ordinary (differentiable) arguments (under functx.jit "
                                    "a Python int or float argument is traced too: mark it static with "
                                    "static_argnums / static_argnames)")
                self.traced[i] = (nd_leaves, nd_tree, [k for k, l in enumerate(nd_leaves) if _is_tensor(l)])
        self.diff_pos = [i for i in range(self.n) if i not in self.nondiff]
        leaves, self.tree = tree_flatten(tuple(args[i] for i in self.diff_pos))
        self.tensor_pos = [k for k, l in enumerate(leaves) if _is_tensor(l)]
        self.static = list(leaves)
        self.operands = [unwrap(leaves[k]) for k in self.tensor_pos]
        for nd_leaves, _, ks in self.traced.values():
            self.operands += [P.stop_gradient(unwrap(nd_leaves[k])) for k in ks]

    def diff_args(self, operands, static_fill=None):
        """The differentiable arguments rebuilt around new operand values (as TracerTensors);
        static leaves are kept, or replaced by static_fill(leaf) (their tangents)."""
        leaves = list(self.static) if static_fill is None else [static_fill(l) for l in self.static]
        for k, v in zip(self.tensor_pos, operands):
            leaves[k] = wrap(v)
        return tuple(tree_unflatten(self.tree, leaves))

    def full_args(self, diff_args, operands=None):
        nondiff = dict(zip(sorted(self.nondiff), self.nondiff_values(operands)))
        out, it = [], iter(diff_args)
        for i in range(self.n):
            out.append(nondiff[i] if i in nondiff else next(it))
        return out

    def nondiff_values(self, operands=None):
        """The nondiff arguments; traced ones rebuilt around `operands` (all of them)."""
        if not self.traced or operands is None:
            return [self.nondiff[i] for i in sorted(self.nondiff)]
        it = iter(operands[len(self.tensor_pos):])
        out = []
        for i in sorted(self.nondiff):
            if i not in self.traced:
                out.append(self.nondiff[i])
                continue
            nd_leaves, nd_tree, ks = self.traced[i]
            nd_leaves = list(nd_leaves)
            for k in ks:
                nd_leaves[k] = wrap(next(it))
            out.append(tree_unflatten(nd_tree, nd_leaves))
        return out


def _signature(fun):
    """fun's signature, to resolve arguments to positions; None where it has none (a builtin)
    or is opaque (functools.partial, as in JAX)."""
    if isinstance(fun, functools.partial):
        return None
    try:
        return inspect.signature(fun)
    except (TypeError, ValueError):
        return None


def _positional(owner, args, kwargs, what):
    """All of owner.fun's arguments as positional ones, defaults included (JAX's
    resolve_kwargs): the rules see every argument fun does. An argument that can't be
    positional (keyword-only, **kwargs) raises: fun would get it but the rules could not."""
    fun = owner.fun
    if not kwargs and isinstance(fun, types.FunctionType) and not fun.__defaults__:
        return tuple(args)          # nothing to resolve (and inspect.signature costs ~50 us)
    if "_sig" not in owner.__dict__:
        owner._sig = _signature(fun)
    sig = owner._sig
    if sig is None:
        if kwargs:
            raise TypeError(f"{what}: keyword arguments {sorted(kwargs)} can't be resolved to "
                            "positions (fun has no signature); pass them positionally")
        return tuple(args)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"{what}: {e}") from None
    bound.apply_defaults()
    passed = [k for k in bound.kwargs if k in kwargs]
    if passed:
        raise TypeError(f"{what}: keyword arguments {passed} could not be resolved to positions "
                        "(keyword-only or **kwargs); custom_jvp / custom_vjp rules take positional "
                        "arguments: make them positional parameters")
    return tuple(bound.args)


def _cotangent_leaves(g, arg, what, i):
    """The leaves of bwd's cotangent g for the argument pytree arg, one per leaf of arg: None
    (a zero) may stand for any subtree, as in JAX."""
    if g is None:
        return [None] * len(tree_flatten(arg)[0])
    spec = tree_structure(g, none_is_leaf=True)
    try:
        subtrees = spec.flatten_up_to(arg)
    except ValueError:
        raise TypeError(f"{what}: bwd's cotangent {i} has structure {tree_flatten(g)[1]}, the argument "
                        f"has {tree_flatten(arg)[1]}") from None
    out = []
    for leaf, sub in zip(tree_leaves_with_none(g), subtrees):
        n = len(tree_flatten(sub)[0])
        if leaf is None:
            out += [None] * n
        elif n == 1 and tree_flatten(sub)[1].num_nodes == 1:
            out.append(leaf)
        else:
            raise TypeError(f"{what}: bwd's cotangent {i} has a leaf where the argument has the subtree "
                            f"{tree_flatten(sub)[1]}")
    return out


class _Out:
    tree = None


def _closure_hint(fn, what):
    """Run a user function; a leaked-tracer error there means it closes over a value that an
    enclosing transform traces, which custom rules can't see: say so."""
    @functools.wraps(fn)
    def run(*args):
        try:
            with intercept_random():      # bwd runs in the backward pass, outside the user's call
                return fn(*args)
        except FunctxError as e:
            if "leaked tracer" not in str(e):
                raise
            raise FunctxError(
                f"{what} (or one of its rules) uses a value traced by an enclosing transform that is "
                "not one of its arguments (it closes over it). The custom rule can't account for "
                "such a value: pass it as an explicit argument (give it a tangent/cotangent in the "
                f"rule), or compute it outside the transform.\n{e}") from None
    return run


def _flat_out(value, store, what):
    leaves, tree = tree_flatten(value)
    for i, l in enumerate(leaves):
        if not _is_tensor(l):
            raise TypeError(f"{what}: output leaf {i} is a {type(l).__name__}, not a tensor")
    if store.tree is None:
        store.tree = tree
    elif store.tree != tree:
        raise TypeError(f"{what}: output structure {tree} differs from the function's {store.tree}")
    return [unwrap(l) for l in leaves]


def _check_like(what, got, want_types):
    for i, (g, t) in enumerate(zip(got, want_types)):
        gt = type_of(g)
        if gt.shape != t.shape:
            raise ValueError(f"{what}: output {i} has shape {tuple(gt.shape)}, expected {tuple(t.shape)}")


def _zero_like_static(x):
    return type(x)(0) if isinstance(x, (bool, int, float, complex)) else None


class custom_jvp:
    """A function with a custom forward-mode derivative rule (JAX's jax.custom_jvp).
    The rule `jvp(primals, tangents) -> (primal_out, tangent_out)` (nondiff args first)
    is used by every transform; reverse mode transposes its (linear) tangent computation.
    primals hold every positional parameter, defaults included (as in JAX); a keyword-only
    argument passed by keyword raises."""

    def __init__(self, fun, nondiff_argnums=()):
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.nondiff_argnums = tuple(nondiff_argnums)
        self.jvp = None

    def defjvp(self, jvp, symbolic_zeros=False):
        if symbolic_zeros:
            raise NotImplementedError("functx.custom_jvp: symbolic_zeros=True is not supported; "
                                      "tangents of undifferentiated inputs arrive as zeros")
        self.jvp = jvp
        return jvp

    def defjvps(self, *jvps):
        """One rule per argument: jvps[i](tangent_i, primal_out, *primals) -> its contribution
        (None: the output doesn't depend on argument i)."""
        def jvp(primals, tangents):
            out = self.fun(*primals)
            total = None
            for rule, t in zip(jvps, tangents):
                if rule is None:
                    continue
                c = rule(t, out, *primals)
                total = c if total is None else tree_map_add(total, c)
            return out, total if total is not None else _tree_zeros(out)
        self.defjvp(jvp)
        return jvps

    def __call__(self, *args, **kwargs):
        name = getattr(self.fun, "__name__", "custom_jvp")
        what = f"functx.custom_jvp function '{name}'"
        if self.jvp is None:
            raise AttributeError(f"No JVP defined for {what}: use @{name}.defjvp")
        a = _Args(self, args, kwargs, self.nondiff_argnums, what, traced_nondiff=True)
        store = _Out()
        fun, rule = self.fun, self.jvp

        def flat_fun(*ops):
            return _flat_out(fun(*a.full_args(a.diff_args(ops), ops)), store, what)

        def flat_jvp(primals, tangents):
            p = a.diff_args(primals)
            t = a.diff_args(tangents, _zero_like_static)
            res = rule(*a.nondiff_values(primals), p, t)
            if not (isinstance(res, (tuple, list)) and len(res) == 2):
                raise TypeError(f"{what}: the jvp rule must return a pair (primal_out, tangent_out)")
            outs = _flat_out(res[0], store, f"{what}: primal output of the jvp rule")
            t_leaves, t_tree = tree_flatten(res[1])
            if t_tree != store.tree:
                raise TypeError(f"{what}: the jvp rule's tangent output has structure {t_tree}, the "
                                f"primal output {store.tree}")
            t_outs = [unwrap(t) for t in t_leaves]
            _check_like(f"{what}: tangent from the jvp rule", t_outs, [type_of(o) for o in outs])
            t_outs = [P.convert(t, type_of(o).dtype) if _float(type_of(o)) else t for t, o in zip(t_outs, outs)]
            return outs, t_outs

        outs = custom_jvp_call_p.bind(*a.operands, fun=_closure_hint(flat_fun, what),
                                      jvp=_closure_hint(flat_jvp, what), name=name)
        return tree_unflatten(store.tree, [wrap(o) for o in outs])


def tree_map_add(a, b):
    la, ta = tree_flatten(a)
    lb, _ = tree_flatten(b)
    return tree_unflatten(ta, [x + y for x, y in zip(la, lb)])


def _tree_zeros(tree):
    leaves, t = tree_flatten(tree)
    return tree_unflatten(t, [torch.zeros_like(l) for l in leaves])


class custom_vjp:
    """A function with a custom reverse-mode rule (JAX's jax.custom_vjp):
    `fwd(*args) -> (out, residuals)` and `bwd(residuals, out_cotangent) -> tuple with one
    cotangent per argument (None for zero, also for a subtree of a pytree argument)`, nondiff
    args first in bwd; defaults count as arguments (as in custom_jvp). Forward mode raises."""

    def __init__(self, fun, nondiff_argnums=()):
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.nondiff_argnums = tuple(nondiff_argnums)
        self.fwd = self.bwd = None
        # Beyond JAX, for torch.autograd.Function's jvp staticmethod: forward mode's rule
        # `(nondiff..., residuals, tangents) -> output tangents`, tangents laid out as the
        # arguments (None for non-tensor leaves). None: forward mode raises, as in JAX.
        self.fwd_jvp = None

    def defvjp(self, fwd, bwd):
        self.fwd, self.bwd = fwd, bwd
        return self

    def __call__(self, *args, **kwargs):
        name = getattr(self.fun, "__name__", "custom_vjp")
        what = f"functx.custom_vjp function '{name}'"
        if self.fwd is None:
            raise AttributeError(f"No VJP defined for {what}: use {name}.defvjp(fwd, bwd)")
        a = _Args(self, args, kwargs, self.nondiff_argnums, what)
        store = _Out()
        res_store = {}
        fun, fwd_fn, bwd_fn = self.fun, self.fwd, self.bwd
        n_diff = len(a.diff_pos)
        arg_examples = a.diff_args(a.operands)       # for their structure

        def flat_fun(*ops):
            return _flat_out(fun(*a.full_args(a.diff_args(ops))), store, what)

        def flat_fwd(*ops):
            res = fwd_fn(*a.full_args(a.diff_args(ops)))
            if not (isinstance(res, (tuple, list)) and len(res) == 2):
                raise TypeError(f"{what}: fwd must return a pair (output, residuals)")
            outs = _flat_out(res[0], store, f"{what}: output of fwd")
            r_leaves, r_tree = tree_flatten(res[1])
            tensor_k = [k for k, l in enumerate(r_leaves) if _is_tensor(l)]
            # non-tensor residuals are static; tensors become operands of custom_lin
            res_store["tree"], res_store["leaves"], res_store["tensor_k"] = r_tree, r_leaves, tensor_k
            res_store["out_types"] = [type_of(o) for o in outs]
            return outs, [unwrap(r_leaves[k]) for k in tensor_k]

        def residuals_of(res):
            leaves = list(res_store["leaves"])
            for k, r in zip(res_store["tensor_k"], res):
                leaves[k] = wrap(r)
            return tree_unflatten(res_store["tree"], leaves)

        def flat_bwd(res, cts):
            residuals = residuals_of(res)
            ct = tree_unflatten(store.tree, [wrap(c) for c in cts])
            got = bwd_fn(*a.nondiff_values(), residuals, ct)
            if not isinstance(got, (tuple, list)) or len(got) != n_diff:
                raise TypeError(f"{what}: bwd must return a tuple with one cotangent per differentiable "
                                f"argument ({n_diff}), got {type(got).__name__}"
                                f"{' of length ' + str(len(got)) if isinstance(got, (tuple, list)) else ''}")
            flat = []
            for i, (g, arg) in enumerate(zip(got, arg_examples)):
                flat += _cotangent_leaves(g, arg, what, i)
            out = []
            for k, t in zip(a.tensor_pos, a.operands):
                g = flat[k]
                if g is None or not _is_tensor(g):
                    out.append(None)
                    continue
                g = unwrap(g)
                want = type_of(t)
                if type_of(g).shape != want.shape:
                    raise ValueError(f"{what}: bwd's cotangent for argument leaf {k} has shape "
                                     f"{tuple(type_of(g).shape)}, the argument has {tuple(want.shape)}")
                out.append(P.convert(g, want.dtype) if _float(want) else None)
            return out

        flat_lin_jvp = None
        if self.fwd_jvp is not None:
            rule = self.fwd_jvp

            def flat_lin_jvp(res, tangents):      # custom_lin's operands: the float outputs' tangents
                got = rule(*a.nondiff_values(), residuals_of(res), a.diff_args(tangents, lambda leaf: None))
                g_leaves = tree_leaves_with_none(got)
                if len(g_leaves) != store.tree.num_leaves:
                    raise TypeError(f"{what}: the forward-mode rule returned {len(g_leaves)} tangents "
                                    f"for {store.tree.num_leaves} outputs")
                out_types = res_store["out_types"]
                return [P.convert(unwrap(g), t.dtype) if g is not None
                        else P.full(t.shape, 0, t.dtype, t.device)
                        for g, t in zip(g_leaves, out_types) if _float(t)]
            flat_lin_jvp = _closure_hint(flat_lin_jvp, what)

        outs = custom_vjp_call_p.bind(*a.operands, fun=_closure_hint(flat_fun, what),
                                      fwd=_closure_hint(flat_fwd, what), bwd=_closure_hint(flat_bwd, what),
                                      name=name, lin_jvp=flat_lin_jvp)
        return tree_unflatten(store.tree, [wrap(o) for o in outs])
