"""Reverse mode as linearize + transpose (JAX's design).

linearize runs the function under a JVPTrace whose tangents live in a partial-evaluation
GraphTrace: primal operations run as usual (eagerly, or on the enclosing trace), and only
the tangent operations are recorded, into a linear graph whose constants are the
residuals. vjp transposes that graph with `backward_pass`, which only needs transpose
rules for linear primitives.
"""
from __future__ import annotations

import contextlib

import torch

from ..core import ConcretizationError, GraphTrace, Literal, MissingRuleError, UndefinedPrimal, Var, Zero, current_trace, \
    set_current_trace
from ..core import nan_check
from ..core.trace import EVAL_TRACE, eval_graph, process_axes, refuse_inside_torch_func, reverse_level, type_of
from .. import prims as P
from ..prims.spmd import invariant_ct
from ..frontend.random_mode import without_random_mode
from .jvp import JVPTrace, JVPTracer
from .hooks import check_hooked_tangents
from .rule_cache import UNCACHEABLE, UnitTranspose


def differentiable(x) -> bool:
    return differentiable_type(type_of(x))


def differentiable_type(t) -> bool:
    return t is not None and (t.dtype.is_floating_point or t.dtype.is_complex)


def linearize_flat(fun, primals, reverse=False, has_tangent=None, types=None, user=False):
    """fun: list of lax values -> list of lax values.
    Returns (primal outputs, linear graph, tangent-output mask). The graph maps the
    tangents of the differentiable inputs to the non-zero output tangents.
    reverse: for vjp/grad, whose levels honour torch's grad mode (see jvp.py).
    has_tangent: a mask of the inputs that get tangents (default: every differentiable one).
    types: the primals' types, if the caller has them.
    user: functx.linearize's level, which honours torch's forward-AD switch (jvp.py)."""
    pe = GraphTrace(current_trace(), stage_all=False)
    jt = JVPTrace(pe, reverse)
    jt.user = user
    tangent_in, args = [], []
    for i, p in enumerate(primals):
        pt = type_of(p) if types is None else types[i]
        if differentiable_type(pt) and (has_tangent is None or has_tangent[i]):
            t = pe.new_arg(pt)
            tangent_in.append(t)
            tracer = JVPTracer(jt, p, t)
            tracer._aval = pt
            args.append(tracer)
        else:
            args.append(p)
    refuse_inside_torch_func("functx.grad/vjp")
    with set_current_trace(jt), (reverse_level(jt) if reverse else contextlib.nullcontext()):
        outs = fun(args)
    pairs = [jt.pair(o) for o in outs]
    if pe.hooked is not None:
        check_hooked_tangents(pe, [t for _, t in pairs])
    primal_out = [p for p, _ in pairs]
    nonzero = [not isinstance(t, Zero) for _, t in pairs]
    graph = pe.to_graph(tangent_in, [t for _, t in pairs if not isinstance(t, Zero)])
    return primal_out, graph, nonzero


def check_linear(make_fun, types):
    """Raise unless fun = make_fun() is linear (linear_transpose transposes its derivative
    at zero, which is fun only if fun is linear; JAX raises there too, finding no transpose
    rule). A residual that depends on the inputs flags fun; a rule that saves an input it
    uses linearly (an opaque op's) is told apart by transposing at a second point."""
    op = _nonlinear_op(make_fun(), types)
    if op is not None and not _same_transpose(make_fun, types):
        raise TypeError(f"functx.linear_transpose: f is not linear: its derivative depends on its inputs' "
                        f"values (through {op}); use functx.vjp for a nonlinear f")


def _nonlinear_op(fun, types):
    """The name of an op through which fun's derivative depends on its inputs' values, or
    None: fun is linearized at staged inputs, and the linear graph's residuals must not
    depend on them."""
    outer = GraphTrace(current_trace(), stage_all=True)
    ins = [outer.new_arg(t) for t in types]
    try:
        with set_current_trace(outer):
            _, graph, _ = linearize_flat(fun, ins)
    except ConcretizationError:
        return None             # Python reads the inputs' values: nothing to check symbolically
    staged = outer.to_graph(ins, list(graph.consts))
    dep, first = set(staged.invars), {}
    for eqn in staged.eqns:
        srcs = [v for v in eqn.inputs if isinstance(v, Var) and v in dep]
        if srcs:
            dep.update(eqn.outputs)
            for o in eqn.outputs:
                first[o] = next((first[v] for v in srcs if v in first), eqn.prim.name)
    return next((first.get(v, "its input itself") for v in staged.outvars if isinstance(v, Var) and v in dep), None)


@without_random_mode     # its own draws, also under jit
def _same_transpose(make_fun, types):
    """Whether fun's transposed derivative at zero and at a random point agree on a random
    cotangent (a local generator: the user's random state is untouched)."""
    g = torch.Generator().manual_seed(0)

    def rand(t):
        if not differentiable_type(t):
            return torch.zeros(t.shape, dtype=t.dtype, device=t.device)
        return torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device)
    points = [[torch.zeros(t.shape, dtype=t.dtype, device=t.device) for t in types], [rand(t) for t in types]]
    results, cts = [], None
    try:
        with set_current_trace(EVAL_TRACE):     # concrete values, also under jit
            for pt in points:
                out, graph, nonzero = linearize_flat(make_fun(), pt)
                if cts is None:
                    cts = [rand(type_of(o)) for o, nz in zip(out, nonzero) if nz]
                results.append([P.full(t.shape, 0, t.dtype, t.device) if isinstance(c, Zero) or c is None
                                else c for c, t in zip(backward_pass(graph, graph.consts, cts), types)])
    except Exception:       # fun closes over traced values: keep the symbolic verdict
        return False
    return all(torch.allclose(a, b, rtol=1e-4, atol=1e-6 * (1 + float(b.abs().max())) if b.numel() else 0)
               for a, b in zip(*results))


@without_random_mode     # functx's own torch ops: skip the random-op interception (~12 us each)
def backward_pass(graph, consts, cts):
    """Transpose a linear graph: cotangents of its outputs -> cotangents of its inputs."""
    env = dict(zip(graph.constvars, consts))
    linear = set(graph.invars)
    for eqn in graph.eqns:
        linear.update(eqn.outputs)
    ct_env: dict = {}

    def add_ct(v, ct):
        if isinstance(ct, Zero) or ct is None:
            return
        ct_env[v] = P.add(ct_env[v], ct) if v in ct_env else ct

    for v, ct in zip(graph.outvars, cts):
        if isinstance(v, Var) and v in linear:
            add_ct(v, ct)
    # Eagerly (the eager trace is current), equations recorded from cached jvp rules run their
    # compiled transposes (transforms/rule_cache.py).
    fast = not nan_check.STATE.on
    eager = current_trace() is EVAL_TRACE
    default_dtype = torch.get_default_dtype()
    eqns = graph.eqns
    i = len(eqns)
    while i:
        i -= 1
        eqn = eqns[i]
        tpl = eqn.template
        if tpl is not None and fast:
            if type(tpl) is UnitTranspose:      # the whole group recorded with eqn at once
                n = _unit_transpose(tpl, eqns, i, env, ct_env, linear, add_ct, eager, default_dtype)
                if n:
                    i -= n - 1
                    continue
                tpl = tpl.last
            ct = ct_env.pop(eqn.outputs[0], None)
            if ct is None:
                continue
            fns = tpl.fns or tpl.compile()
            if fns is not UNCACHEABLE and tpl.dtype is default_dtype:
                # impls on the eager trace; bound at the current trace under a transform
                fn = fns[not (eager and isinstance(ct, torch.Tensor))]
                try:
                    cts_in = fn(ct, [env[eqn.inputs[i]] for i in tpl.res_pos])
                except Exception:       # the rule's own path raises (and names) the error
                    cts_in = None
                if cts_in is not None:
                    for a, c in zip(eqn.inputs, cts_in):
                        if c is not None and a in linear:
                            add_ct(a, c)
                    continue
            ct_env[eqn.outputs[0]] = ct      # the rule's own path below
        if eqn.prim.multiple_results:
            cts_out = [ct_env.pop(v, None) for v in eqn.outputs]
            if all(c is None for c in cts_out):
                continue
            ct = [c if c is not None else Zero(v.type) for c, v in zip(cts_out, eqn.outputs)]
        else:                   # the common case, without the lists
            ct = ct_env.pop(eqn.outputs[0], None)
            if ct is None:
                continue
        if eqn.prim.transpose is None:
            raise MissingRuleError(f"functx: primitive '{eqn.prim.name}' has no transpose rule, so reverse "
                                   "mode can't pass through it")
        args = [a.value if isinstance(a, Literal) else UndefinedPrimal(a.type) if a in linear else env[a]
                for a in eqn.inputs]
        if nan_check.STATE.on:      # debug_nans: name the cotangent work and the line it came from
            with nan_check.computing("cotangent", eqn.prim.name, eqn.source):
                cts_in = eqn.prim.transpose(ct, *args, **eqn.params)
        else:
            cts_in = eqn.prim.transpose(ct, *args, **eqn.params)
        for a, c in zip(eqn.inputs, cts_in):
            if c is not None and isinstance(a, Var) and a in linear:
                add_ct(a, c)
    return [ct_env.get(v, Zero(v.type)) for v in graph.invars]


def _unit_transpose(tpl, eqns, i, env, ct_env, linear, add_ct, eager, default_dtype):
    """Run a UnitTranspose (transforms/rule_cache.py) for the group of equations ending at
    eqns[i]: the number of equations it stood for, or 0 where it does not apply (they then
    run one by one)."""
    n = tpl.n
    base = i - n + 1
    # the equations recorded together with this one, as recorded
    if base < 0 or eqns[base].template is not tpl.first or tpl.dtype is not None and tpl.dtype is not default_dtype:
        return 0
    out_pos = tpl.out_pos
    if len(out_pos) == 1:       # the common case, without the loop
        j, k = out_pos[0]
        c = ct_env.pop(eqns[base + j].outputs[k], None)
        if c is None:
            return n
        cts, mask, impl = [c], _ONE, eager and isinstance(c, torch.Tensor)
    else:
        cts, mask, impl = [], [], eager
        for j, k in out_pos:
            c = ct_env.pop(eqns[base + j].outputs[k], None)
            mask.append(c is not None)
            if c is not None:
                cts.append(c)
                if impl and not isinstance(c, torch.Tensor):
                    impl = False
        if not cts:                 # nothing flows back through the group
            return n
        mask = tuple(mask)
    fns = tpl.fns.get(mask) or tpl.compile(mask, backward_pass)
    cts_in = None
    if fns is not UNCACHEABLE:
        try:
            cts_in = fns[not impl](cts, [env[eqns[base + j].inputs[k]] for j, k in tpl.res_pos])
        except Exception:       # the equations' own rules raise (and name) the error
            cts_in = None
    if cts_in is None:          # put the cotangents back for the one-by-one path
        it = iter(cts)
        for (j, k), m in zip(tpl.out_pos, mask):
            if m:
                ct_env[eqns[base + j].outputs[k]] = next(it)
        return 0
    for (j, k), c in zip(tpl.in_pos, cts_in):
        if c is not None:
            a = eqns[base + j].inputs[k]
            if a in linear:
                add_ct(a, c)
    return n


_ONE = (True,)


def linear_forward(graph, tangents):
    return eval_graph(graph, graph.consts, tangents)


def vjp_flat(fun, primals, user_level=False):
    """Returns (primal outputs, pullback: output cotangents -> input cotangents), flat.

    user_level: the vjp of a user's function (grad, vjp), not of one inside a rule. Under
    functx.spmd its cotangents are then global ones: a replicated output's cotangent is
    shared out over the ranks and a replicated input's is summed over them
    (prims/spmd.invariant_ct, resolved by the SpmdTrace that knows which values vary)."""
    types = [type_of(p) for p in primals]
    primal_out, graph, nonzero = linearize_flat(fun, primals, reverse=True, types=types)
    diff = [differentiable_type(t) for t in types]
    axes = [a.name for a in process_axes()] if user_level else []

    def pullback(cts):
        for name in axes:
            cts = [invariant_ct(c, p, name, "mean") if nz else c for c, p, nz in zip(cts, primal_out, nonzero)]
        cts_nz = [ct for ct, nz in zip(cts, nonzero) if nz]
        in_cts = iter(backward_pass(graph, graph.consts, cts_nz))
        out = []
        for p, d, t in zip(primals, diff, types):
            ct = next(in_cts) if d else Zero(t)
            for name in axes:
                ct = ct if isinstance(ct, Zero) else invariant_ct(ct, p, name, "sum")
            out.append(ct)
        return out

    return primal_out, pullback, graph


def jvp_flat(fun, primals, tangents):
    jt = JVPTrace(current_trace())
    args = [JVPTracer(jt, p, t) if not isinstance(t, Zero) else p for p, t in zip(primals, tangents)]
    refuse_inside_torch_func("functx.jvp")
    with set_current_trace(jt):
        outs = fun(args)
    pairs = [jt.pair(o) for o in outs]
    return [p for p, _ in pairs], [t for _, t in pairs]
