"""The public transforms, JAX's names and signatures (torch.func's in_dims/out_dims too).

Every function argument and output may be a pytree of tensors. User functions run on
TracerTensors; these wrappers are the boundary between user code and the traces.
"""
from __future__ import annotations

import functools

import torch

from ..core import Zero, current_trace, set_current_trace
from ..core.errors import ArgnumsError, UsageError, check_chunk_size
from ..core.trace import refuse_inside_torch_func, type_of
from ..frontend import TracerTensor, unwrap, wrap, wrap_input
from ..frontend.random_mode import intercept_random
from ..frontend.unit_batches import batching_units
from .. import prims as P
from .ad import differentiable, differentiable_type, linear_forward, linearize_flat, check_linear, vjp_flat, backward_pass
from .jvp import ForwardADOn, JVPTrace, JVPTracer
from .vmap_args import LEAF as _LEAF, check_tensor_leaves as _check_tensor_leaves
from .vmap_api import vmap  # noqa: F401 (the package's vmap; jacfwd/jacrev map with it)
from ..tree_util import tree_flatten, tree_map, tree_unflatten
from .basis import assemble, identity_blocks, mark_identity_basis, row_by_row  # noqa: F401 (mark_identity_basis: re-exported)
from . import input_writes


# ---------------------------------------------------------------- argument handling

def _float_primal(x):
    """A Python float primal is torch.tensor(x): a 0-d tensor of the default dtype (JAX
    docs' grad(f)(3.0)); so is a Python float that jit traced (weakly typed), so jit(grad(f))
    computes what grad(f) does."""
    if type(x) is float:
        return torch.tensor(x, dtype=torch.get_default_dtype())
    if isinstance(x, TracerTensor) and x.dtype.is_floating_point and type_of(unwrap(x)).weak:
        return x.to(torch.get_default_dtype())
    return x


def _float_primals(tree):
    return tree_map(_float_primal, tree)


def _flatten_tensors(tree, what):
    leaves, treedef = tree_flatten(tree)
    _check_tensor_leaves(leaves, what, treedef)
    return [unwrap(l) for l in leaves], treedef



def _check_tangent(who, i, p, t, tree=None):
    """Tangent i of jvp / linearize against its primal: the same shape, and the same dtype for
    a floating primal. An integer or bool primal is not differentiable and its tangent is
    zero (JAX's float0), so its tangent must be an integer or bool tensor, of zeros where its
    values are known: a floating tangent, or ones, would otherwise be dropped silently (torch
    raises for integer primals). Errors name a leaf inside a pytree primal by its path."""
    pt, tt = type_of(p), type_of(t)
    if pt.shape != tt.shape:
        error = f"has shape {tuple(tt.shape)}, its primal has {tuple(pt.shape)}"
    elif differentiable_type(pt):
        if tt.dtype == pt.dtype:
            return
        error = f"has dtype {tt.dtype}, its primal has {pt.dtype}"
    elif differentiable_type(tt) or (isinstance(t, torch.Tensor) and bool(t.any())):
        error = None
    else:
        return
    path = tree.paths()[i] if tree is not None else (i,)
    name = f"{i}" if path == (i,) else f"{i} (at {path})"
    if error is not None:
        raise UsageError(f"{who}: tangent {name} {error}")
    raise UsageError(f"{who}: primal {name} has dtype {pt.dtype}, which is not differentiable, so its "
                     f"tangent is zero; pass torch.zeros_like(primal) for it (got a {tt.dtype} tangent"
                     f"{'' if differentiable_type(tt) else ' with nonzero values'}), or convert the "
                     f"primal to a floating dtype to differentiate with respect to it")


class _OutStore:
    tree = None
    aux = None
    written = ()        # the inputs f wrote in place (input_writes.record)


def _flat_fun(f, in_tree, store, what, has_aux=False, trace=None, sources=None):
    """f over a pytree -> function over flat lax values; the output tree goes into store.
    sources: the tensors the caller passed, one per flat input, whose memory layout the
    arguments take (x.stride() and as_strided see it through any nesting of transforms)."""
    def fun(flat_in):
        srcs = sources if sources is not None else [_concrete_base(x) for x in flat_in]
        wrapped = [wrap_input(x, s) for x, s in zip(flat_in, srcs)]
        args = tree_unflatten(in_tree, wrapped)
        with intercept_random(), batching_units():     # random primitives; units batched until read
            out = f(*args)
            if has_aux:
                if not (isinstance(out, (tuple, list)) and len(out) == 2):
                    raise UsageError(f"{what}: with has_aux=True, f must return a pair (output, aux); got "
                                    f"{type(out).__name__}")
                out, aux = out
                store.aux = aux
            leaves, tree = ([out], _LEAF) if type(out) is TracerTensor else tree_flatten(out)
            _check_tensor_leaves(leaves, f"{what}: output of f", tree)
            store.tree = tree
            outs = [unwrap(l) for l in leaves]
            if sources is not None:         # the user's inputs: writes into them go back (input_writes)
                input_writes.record(store, wrapped)
            return outs
    return fun


def _leaves(tree):
    return tree_flatten(tree)[0]


def _concrete_base(x):
    """The caller's tensor under a chain of JVP tracers (grad/jvp inputs), if it is concrete."""
    while hasattr(x, "primal"):
        x = x.primal
    return x if isinstance(x, torch.Tensor) else None


def holds_traced_fields(obj) -> bool:
    """Whether a pytree leaf that is not a tensor (an unregistered dataclass, a dict
    subclass, a plain object) holds functx tensors among its fields or items, one level
    deep: they would leave the transform as traced wrappers."""
    if isinstance(obj, (torch.Tensor, int, float, bool, str, bytes, type(None))):
        return False
    if isinstance(obj, dict):
        values = obj.values()
    else:
        try:
            values = vars(obj).values()
        except TypeError:           # no __dict__ (slots, builtins)
            return False
    return any(isinstance(v, TracerTensor) for v in values)


def _strip_aux(aux, trace=None):
    """aux leaves leave the transform as primal values (no tangents/batching of this level):
    JVP tracers of `trace`, or of any JVP trace no longer active (linearize's), give their
    primal; values of no trace come back as plain tensors."""
    active, t = set(), current_trace()
    while t is not None:
        active.add(id(t))
        t = t.parent

    def strip(x):
        x = unwrap(x) if isinstance(x, TracerTensor) else x
        while isinstance(x, JVPTracer) and (x._trace is trace or id(x._trace) not in active):
            x = x.primal
        return wrap(x)
    leaves, tree = tree_flatten(aux)
    for path, leaf in zip(tree.paths(), leaves):
        if holds_traced_fields(leaf):
            raise UsageError(
                f"has_aux: the aux leaf at {path or '()'} is a {type(leaf).__name__} holding traced tensors "
                "in its fields, which functx cannot take out of the transform (it is not a pytree). "
                f"Register the type (functx.tree_util.register_dataclass / register_pytree_node) or return "
                "its tensors in a tuple or dict.")
    return tree_unflatten(tree, [strip(l) for l in leaves])


def _argnums_tuple(argnums, nargs, what):
    if type(argnums) is int:
        nums = (argnums,)
    elif isinstance(argnums, (tuple, list)) and not isinstance(argnums, bool):
        nums = tuple(argnums)       # (a list too, as JAX; torch.func takes tuples only)
        if not nums:
            raise ArgnumsError(f"{what}: argnums must be non-empty, got {argnums!r}")
    else:
        hint = " (has_aux is grad's third argument: grad(f, 0, True))" if isinstance(argnums, bool) else ""
        raise ArgnumsError(f"{what}: argnums must be an int or a tuple of ints, got {argnums!r}{hint}")
    for a in nums:
        if type(a) is not int:
            raise ArgnumsError(f"{what}: argnums must be an int or a tuple of ints, got {argnums!r} "
                               f"(an element is a {type(a).__name__})")
        if not -nargs <= a < nargs:
            raise ArgnumsError(f"{what}: argnums={argnums!r} is out of range for {nargs} positional "
                               "argument" + ("" if nargs == 1 else "s") + " (argnums counts positional "
                               "arguments only; keyword arguments are not differentiated)")
    nums = tuple(a % nargs for a in nums)
    if len(set(nums)) != len(nums):
        raise ArgnumsError(f"{what}: argnums={argnums!r} names an argument more than once (JAX and "
                           "torch.func reject this too: each argument gets one gradient)")
    return nums


def _with_argnums(f, args, kwargs, argnums, what):
    """(g, differentiated args): g takes just the args at argnums, the others held fixed."""
    nums = _argnums_tuple(argnums, len(args), what)
    args = tuple(_float_primals(a) if i in nums else a for i, a in enumerate(args))

    def g(*diff):
        full = list(args)
        for i, d in zip(nums, diff):
            full[i] = d
        return f(*full, **kwargs)
    return g, tuple(args[i] for i in nums)


def _zeros_for(t):
    return P.full(t.shape, 0, t.dtype, t.device)


def _instantiate(x):
    return _zeros_for(x.aval) if isinstance(x, Zero) else x


# ---------------------------------------------------------------- jvp / linearize / vjp

def jvp(f, primals, tangents, has_aux=False):
    """Forward-mode derivative: (f(*primals), J_f(primals) @ tangents).

    Args:
      f: a function of tensors (pytrees of tensors) returning tensors (a pytree).
      primals: a tuple (or list) of the positional arguments of f.
      tangents: a tuple with the same structure, shapes and dtypes as primals.
      has_aux: f returns (output, aux); aux is returned as is, not differentiated.

    Returns:
      (primals_out, tangents_out), or (primals_out, tangents_out, aux) with has_aux.

    In-place writes of f into its inputs reach the caller's tensors (their primal values),
    as in torch.func.

    Example:
      >>> y, dy = functx.jvp(torch.sin, (x,), (torch.ones_like(x),))   # dy == cos(x)
    """
    return _jvp(f, primals, tangents, has_aux)


def _jvp(f, primals, tangents, has_aux, collect=None):
    """jvp; `collect`: a list that collects f's writes into its inputs instead (jacfwd)."""
    if not isinstance(primals, (tuple, list)) or not isinstance(tangents, (tuple, list)):
        raise UsageError("functx.jvp: primals and tangents must be tuples (or lists) of arguments, "
                        f"got {type(primals).__name__} and {type(tangents).__name__}")
    primals = _float_primals(tuple(primals))
    p_flat, p_tree = _flatten_tensors(primals, "functx.jvp: primals")
    t_flat, t_tree = _flatten_tensors(_float_primals(tuple(tangents)), "functx.jvp: tangents")
    if p_tree != t_tree:
        raise UsageError(f"functx.jvp: tangents must have the same structure as primals: {p_tree} vs {t_tree}")
    tangents_in = []
    for i, (p, t) in enumerate(zip(p_flat, t_flat)):
        _check_tangent("functx.jvp", i, p, t, p_tree)
        tangents_in.append(t if differentiable(p) else Zero(type_of(p)))
    store = _OutStore()
    jt = JVPTrace(current_trace())
    jt.user = True              # honours torch's forward-AD switch (jvp.py)
    args = [JVPTracer(jt, p, t) if not isinstance(t, Zero) else p for p, t in zip(p_flat, tangents_in)]
    refuse_inside_torch_func("functx.jvp")
    with ForwardADOn("functx.jvp"), set_current_trace(jt):
        outs = _flat_fun(f, p_tree, store, "functx.jvp", has_aux, sources=_leaves(primals))(args)
    pairs = [jt.pair(o) for o in outs]
    vals_p, vals_t = [p for p, _ in pairs], [_instantiate(t) for _, t in pairs]
    writes = input_writes.primal_values(store)
    if collect is not None:
        collect[:] = writes
    else:
        input_writes.write_back(writes, _leaves(primals), keep=(vals_p, vals_t))
    out_p = tree_unflatten(store.tree, [wrap(p) for p in vals_p])
    out_t = tree_unflatten(store.tree, [wrap(t) for t in vals_t])
    if has_aux:
        return out_p, out_t, _strip_aux(store.aux, jt)
    return out_p, out_t


def linearize(f, *primals, has_aux=False):
    """Linearize f at primals: (f(*primals), f_jvp), where f_jvp(*tangents) applies the
    Jacobian at primals without re-running f (JAX's linearize). With has_aux, f returns
    (output, aux) and the result is (out, f_jvp, aux).

    Example:
      >>> y, f_jvp = functx.linearize(torch.sin, x)
      >>> f_jvp(torch.ones_like(x))          # == cos(x)
    """
    primals = _float_primals(primals)
    p_flat, p_tree = _flatten_tensors(primals, "functx.linearize: primals")
    store = _OutStore()
    with ForwardADOn("functx.linearize"):
        out, graph, nonzero = linearize_flat(_flat_fun(f, p_tree, store, "functx.linearize", has_aux,
                                                       sources=_leaves(primals)), p_flat, user=True)
    input_writes.write_back(input_writes.primal_values(store), _leaves(primals), keep=(out, graph.consts))
    diff = [differentiable(p) for p in p_flat]
    out_types = [type_of(o) for o in out]

    def f_jvp(*tangents):
        t_flat, t_tree = _flatten_tensors(_float_primals(tangents), "functx.linearize: tangents")
        if t_tree != p_tree:
            raise ValueError(f"functx.linearize: tangents must match the primals' structure {p_tree}")
        for i, (t, p) in enumerate(zip(t_flat, p_flat)):
            _check_tangent("functx.linearize", i, p, t, p_tree)
        lin = linear_forward(graph, [t for t, d in zip(t_flat, diff) if d])
        it = iter(lin)
        res = [next(it) if nz else _zeros_for(t) for nz, t in zip(nonzero, out_types)]
        return tree_unflatten(store.tree, [wrap(r) for r in res])

    out_tree = tree_unflatten(store.tree, [wrap(o) for o in out])
    if has_aux:
        return out_tree, f_jvp, _strip_aux(store.aux)
    return out_tree, f_jvp


def vjp(f, *primals, has_aux=False):
    """Reverse-mode derivative: (f(*primals), vjp_fn).

    vjp_fn(cotangents) takes cotangents with the structure of f's output and returns a
    tuple with one entry per primal (each with that primal's structure): cotangents @ J.
    vjp_fn may be called many times, and under other transforms (vmap(vjp_fn) gives rows
    of the Jacobian). With has_aux, f returns (output, aux): (out, vjp_fn, aux).

    Example:
      >>> out, vjp_fn = functx.vjp(lambda a, b: a * b, x, y)
      >>> ga, gb = vjp_fn(torch.ones_like(out))   # (y, x)
    """
    primals = _float_primals(primals)
    p_flat, p_tree = _flatten_tensors(primals, "functx.vjp: primals")
    store = _OutStore()
    out, pullback, graph = vjp_flat(_flat_fun(f, p_tree, store, "functx.vjp", has_aux, sources=_leaves(primals)),
                                    p_flat, user_level=True)
    input_writes.write_back(input_writes.primal_values(store), _leaves(primals), keep=(out, graph.consts))
    out_types = [type_of(o) for o in out]
    out_tree = store.tree

    def vjp_fn(cotangents):
        ct_flat, ct_tree = _flatten_tensors(_float_primals(cotangents), "functx.vjp: cotangents")
        if ct_tree != out_tree:
            raise UsageError(f"functx.vjp: cotangents must have the structure of f's output {out_tree}, "
                             f"got {ct_tree}")
        for i, (c, t) in enumerate(zip(ct_flat, out_types)):
            if type_of(c).shape != t.shape:
                raise UsageError(f"functx.vjp: cotangent {i} has shape {tuple(type_of(c).shape)}, the "
                                 f"output has {tuple(t.shape)}")
        in_cts = pullback([P.convert(c, t.dtype) for c, t in zip(ct_flat, out_types)])
        in_cts = [wrap(_instantiate(c)) for c in in_cts]
        return tuple(tree_unflatten(p_tree, in_cts))

    outs = tree_unflatten(out_tree, [wrap(o) for o in out])
    if has_aux:
        return outs, vjp_fn, _strip_aux(store.aux)
    return outs, vjp_fn


def linear_transpose(f, *primals):
    """The transpose of a linear f (JAX's linear_transpose; a nonlinear f raises), primals give shapes."""
    p_flat, p_tree = _flatten_tensors(primals, "functx.linear_transpose: primals")
    store = _OutStore()
    # f is linear, so its linearization at zero is f itself (checked: JAX raises otherwise).
    zeros = [_zeros_for(type_of(p)) for p in p_flat]
    check_linear(lambda: _flat_fun(f, p_tree, _OutStore(), "functx.linear_transpose"), [type_of(z) for z in zeros])
    out, graph, nonzero = linearize_flat(_flat_fun(f, p_tree, store, "functx.linear_transpose"), zeros)

    def transpose_fn(cotangents):
        ct_flat, _ = _flatten_tensors(cotangents, "functx.linear_transpose: cotangents")
        cts = backward_pass(graph, graph.consts, [c for c, nz in zip(ct_flat, nonzero) if nz])
        it = iter(cts)
        res = [wrap(_instantiate(next(it))) if differentiable(p) else wrap(_zeros_for(type_of(p))) for p in p_flat]
        return tuple(tree_unflatten(p_tree, res))
    return transpose_fn


# ---------------------------------------------------------------- grad

def value_and_grad(f, argnums=0, has_aux=False):
    """Like grad, but returns (value, gradient).

    Returns:
      A function returning (f(*args), grad); with has_aux, ((f_value, aux), grad).

    Example:
      >>> loss, grads = functx.value_and_grad(loss_fn)(params, x, y)
    """
    @functools.wraps(f)
    def value_and_grad_f(*args, **kwargs):
        g, diff_args = _with_argnums(f, args, kwargs, argnums, "functx.grad")

        d_flat, d_tree = _flatten_tensors(diff_args, "functx.grad: differentiated arguments")
        _require_float(d_flat, "functx.grad", d_tree)
        store = _OutStore()
        sources = _leaves(diff_args)
        out, pullback, _ = vjp_flat(_flat_fun(g, d_tree, store, "functx.grad", has_aux, sources=sources), d_flat,
                                   user_level=True)
        if len(out) != 1 or type_of(out[0]).shape != ():
            shapes = [tuple(type_of(o).shape) for o in out]
            raise UsageError(f"functx.grad: f must return a scalar (0-dim) tensor; got outputs with shapes "
                            f"{shapes}. Use functx.vjp or functx.jacrev for non-scalar outputs.")
        t = type_of(out[0])
        if not t.dtype.is_floating_point:
            raise UsageError(f"functx.grad: f must return a floating-point scalar; got {t.dtype}")
        cts = [_instantiate(c) for c in pullback([P.full((), 1.0, t.dtype, t.device)])]
        if store.written:
            input_writes.write_back(input_writes.primal_values(store), sources, keep=(out, cts))
        grads = tree_unflatten(d_tree, [wrap(c) for c in cts])
        grads = grads[0] if isinstance(argnums, int) else tuple(grads)
        value = wrap(out[0])
        if has_aux:
            return (value, _strip_aux(store.aux)), grads
        return value, grads
    return value_and_grad_f


def grad(f, argnums=0, has_aux=False):
    """The gradient of a scalar-valued function.

    Args:
      f: returns a 0-dim floating-point tensor (with has_aux: a pair (scalar, aux)).
      argnums: int or tuple of ints, the positional argument(s) to differentiate (each may
        be a pytree of tensors and Python floats). Keyword arguments are passed through,
        not differentiated.
      has_aux: f returns (scalar, aux); aux is returned alongside, not differentiated.

    Returns:
      A function with f's signature returning the gradient, with the structure of
      args[argnums] (a tuple of those for tuple argnums); with has_aux, (grad, aux).
      A Python float argument is differentiated as torch.tensor(x) (0-d, default dtype),
      so its gradient is a 0-d tensor (float(g) is the number); the same holds for jvp,
      vjp, linearize, jacfwd, jacrev and hessian.

    Example:
      >>> functx.grad(lambda x: (x ** 2).sum())(torch.ones(3))          # tensor([2., 2., 2.])
      >>> functx.grad(torch.sin)(0.0)                                     # tensor(1.)
      >>> gw, gb = functx.grad(loss, argnums=(0, 1))(w, b, x)
    """
    vg = value_and_grad(f, argnums, has_aux)

    @functools.wraps(f)
    def grad_f(*args, **kwargs):
        value, g = vg(*args, **kwargs)
        return (g, value[1]) if has_aux else g
    return grad_f


# ---------------------------------------------------------------- Jacobians

def jacfwd(f, argnums=0, has_aux=False, *, chunk_size=None, randomness="error"):
    """The Jacobian by forward mode: vmap of jvp over the basis of the inputs (efficient
    when the inputs are smaller than the outputs).

    Args:
      f, argnums, has_aux: as in grad (f may return any pytree of tensors).
      chunk_size: vmap the basis in chunks of this size (bounds memory); 1 runs the rows in
        a Python loop without vmap (as torch.func's jacrev), for rules vmap cannot batch.
      randomness: passed to the inner vmap.

    Returns:
      A function returning the Jacobian: for input x and output y, a tensor of shape
      y.shape + x.shape (pytrees: the output structure of input structures).

    Example:
      >>> functx.jacfwd(torch.sin)(x)          # diag(cos(x))
    """
    check_chunk_size(chunk_size, "functx.jacfwd")
    @functools.wraps(f)
    def jac_f(*args, **kwargs):
        g, diff = _with_argnums(f, args, kwargs, argnums, "functx.jacfwd")
        d_flat, d_tree = _flatten_tensors(diff, "functx.jacfwd: differentiated arguments")
        _require_float(d_flat, "functx.jacfwd", d_tree)
        types = [type_of(x) for x in d_flat]
        n_total = sum(t.numel for t in types)

        writes = []         # f's writes into its inputs: the basis chunks all run f on the caller's values

        def push(*basis_leaves):
            tangents = tree_unflatten(d_tree, list(basis_leaves))
            res = _jvp(g, tuple(tangents_primals), tuple(tangents), has_aux, collect=writes)
            return (res[1], res[2]) if has_aux else res[1]

        tangents_primals = diff         # the caller's tensors: jvp gives f their layouts
        basis = identity_blocks(types, lambda t: t.dtype, n_total)
        if chunk_size == 1 and n_total:
            jac_tree = row_by_row(push, basis, n_total, has_aux)
            jac_tree, aux = jac_tree if has_aux else (jac_tree, None)
        elif has_aux:
            jac_tree, aux = vmap(push, chunk_size=chunk_size, randomness=randomness,
                                 out_axes=(0, None))(*basis)
        else:
            jac_tree = vmap(push, chunk_size=chunk_size, randomness=randomness)(*basis)
        jac = assemble(jac_tree, d_tree, types, leading_is_in=True, single=isinstance(argnums, int))
        input_writes.write_back(input_writes.outside_vmap(writes, "functx.jacfwd"), _leaves(diff))
        return (jac, aux) if has_aux else jac
    return jac_f


def jacrev(f, argnums=0, has_aux=False, *, chunk_size=None):
    """The Jacobian by reverse mode: vmap of the vjp over the basis of the outputs (efficient
    when the outputs are smaller than the inputs). Same arguments and result layout as
    jacfwd (y.shape + x.shape).

    Example:
      >>> functx.jacrev(lambda W: W @ x)(W)     # shape (m, m, n) for W of shape (m, n)
    """
    check_chunk_size(chunk_size, "functx.jacrev")
    # vjp_fn over the basis rows (built once: vmap's wrapper and its in_axes are per object)
    pull = vmap(lambda vjp_fn, o_tree, rows: vjp_fn(tree_unflatten(o_tree, list(rows))),
                in_axes=(None, None, 0), chunk_size=chunk_size)

    @functools.wraps(f)
    def jac_f(*args, **kwargs):
        g, diff = _with_argnums(f, args, kwargs, argnums, "functx.jacrev")
        d_flat, d_tree = _flatten_tensors(diff, "functx.jacrev: differentiated arguments")
        _require_float(d_flat, "functx.jacrev", d_tree)
        res = vjp(g, *diff, has_aux=has_aux)
        out, vjp_fn = res[0], res[1]
        o_flat, o_tree = tree_flatten(out)
        o_types = [type_of(unwrap(o)) for o in o_flat]
        n_out = sum(t.numel for t in o_types)
        basis = identity_blocks(o_types, lambda t: t.dtype, n_out)
        if not o_flat:      # f returned no tensors (None, ()): so is its Jacobian, as jacfwd's
            return (out, res[2]) if has_aux else out
        if chunk_size == 1 and n_out:
            cts = row_by_row(lambda *row: vjp_fn(tree_unflatten(o_tree, list(row))), basis, n_out)
        else:
            cts = pull(vjp_fn, o_tree, tuple(basis))     # tuple over diff args, leading N_out
        d_flat, d_tree = tree_flatten(tuple(diff))
        in_types = [type_of(unwrap(x)) for x in d_flat]
        ct_leaves, _ = tree_flatten(cts)
        # per input leaf: (N_out, *in_shape) -> split N_out per output leaf -> (*out_shape, *in_shape)
        per_out = [[None] * len(ct_leaves) for _ in o_types]
        for j, leaf in enumerate(ct_leaves):
            offset = 0
            for i, t in enumerate(o_types):
                n = t.numel
                per_out[i][j] = leaf.narrow(0, offset, n).reshape(t.shape + in_types[j].shape)
                offset += n
        single = isinstance(argnums, int)
        jac_leaves = []
        for i in range(len(o_types)):
            tree = tree_unflatten(d_tree, per_out[i])
            jac_leaves.append(tree[0] if single else tuple(tree))
        jac = tree_unflatten(o_tree, jac_leaves)
        return (jac, res[2]) if has_aux else jac
    return jac_f


def _require_float(leaves, who, treedef=None):
    """grad and the Jacobians need floating-point inputs (JAX raises too; vjp and jvp instead
    give an integer input a zero derivative, as JAX's float0 does). The error names the leaf
    (a BatchNorm's num_batches_tracked in a state_dict passed as parameters)."""
    for i, x in enumerate(leaves):
        if not differentiable(x):
            where = f" (at {treedef.paths()[i]} of the differentiated arguments)" if treedef is not None else ""
            raise UsageError(f"{who}: differentiated argument leaf {i}{where} has dtype {type_of(x).dtype}; "
                            f"{who.split('.')[-1]} needs floating-point inputs (use argnums to skip "
                            "integer arguments)")


def hessian(f, argnums=0, has_aux=False):
    """The Hessian of scalar-valued f, as jacfwd(jacrev(f)) (forward over reverse).

    Returns:
      For x of shape s, a tensor of shape s + s.

    Example:
      >>> laplacian = functx.vmap(lambda p: torch.trace(functx.hessian(u)(p)))
    """
    h = jacfwd(jacrev(f, argnums, has_aux=has_aux), argnums, has_aux=has_aux)

    @functools.wraps(f)
    def hessian_f(*args, **kwargs):
        _argnums_tuple(argnums, len(args), "functx.hessian")    # (errors name hessian)
        return h(*args, **kwargs)
    return hessian_f
