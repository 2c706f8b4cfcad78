"""functx.scan and functx.fori_loop: the user-facing API over the scan primitive (pytrees,
argument checks) and fori_loop's choice between scan (static trip count) and while_loop."""
from __future__ import annotations

import math

import torch

from ...core import FunctxError, revolve
from ...core.trace import Tracer, type_of
from ...frontend import TracerTensor, unwrap, wrap
from ...tree_util import tree_flatten, tree_unflatten
from .common import closed_graph, promote_weak, weak_carry
from .scan import scan_p
from .while_loop import while_loop

__all__ = ["scan", "fori_loop"]

REMAT_CHOICES = (False, True, "sqrt", "binomial")


def _leaf_name(tree, i, what):
    paths = tree.paths()
    return f"{what} leaf {i}" + (f" (at {paths[i]})" if paths[i] else "")


def _tensor_leaves(tree_value, what):
    leaves, tree = tree_flatten(tree_value)
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, (torch.Tensor, Tracer)):
            raise TypeError(f"functx.scan: {_leaf_name(tree, i, what)} is a {type(leaf).__name__}; "
                            "pass tensors (close over other values)")
    return leaves, tree


def _check_options(reverse, unroll, remat, checkpoints):
    if not isinstance(reverse, bool):
        raise TypeError(f"functx.scan: reverse must be a bool, got {reverse!r}")
    if isinstance(unroll, bool):
        unroll = int(unroll)
    if not isinstance(unroll, int) or unroll < 0:
        raise TypeError(f"functx.scan: unroll must be a non-negative int or a bool, got {unroll!r}")
    if not any(remat is c for c in REMAT_CHOICES):
        raise ValueError(f"functx.scan: remat must be False, True, 'sqrt' or 'binomial', got {remat!r}")
    if checkpoints is not None:
        if remat != "binomial":
            raise ValueError(f"functx.scan: checkpoints={checkpoints!r} is for remat='binomial' (got remat={remat!r})")
        if not isinstance(checkpoints, int) or isinstance(checkpoints, bool) or checkpoints < 1:
            raise ValueError(f"functx.scan: checkpoints must be a positive int (carries kept, the initial one "
                             f"included), got {checkpoints!r}")
    return unroll


def _length(x_leaves, x_tree, length):
    if isinstance(length, torch.Tensor) and length.numel() == 1 and not length.dtype.is_floating_point:
        length = int(length)    # traced (a jit argument): ConcretizationError names it, says static_argnums
    if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length < 0):
        raise TypeError(f"functx.scan: length must be a non-negative int, got {length!r}")
    for i, leaf in enumerate(x_leaves):
        shape = tuple(type_of(unwrap(leaf)).shape)
        if not shape:
            raise ValueError(f"functx.scan: {_leaf_name(x_tree, i, 'xs')} is a scalar; xs leaves are "
                             "scanned over their leading axis")
        if length is None:
            length = shape[0]
        elif shape[0] != length:
            first = "length" if i == 0 else _leaf_name(x_tree, 0, "xs")
            raise ValueError(f"functx.scan: {_leaf_name(x_tree, i, 'xs')} has leading size {shape[0]}, "
                             f"but {first} says {length}; every xs leaf must have the same leading size")
    if length is None:
        raise ValueError("functx.scan: pass xs (with a leading axis to scan over) or length")
    return length


def scan(f, init, xs=None, length=None, reverse=False, unroll=1, remat=False, checkpoints=None):
    """Loop `carry, y = f(carry, x)` over the leading axis of xs; returns (carry, stacked ys)
    (JAX's lax.scan). init, xs and f's outputs may be pytrees of tensors.

    f is traced once: a 1000-step scan is one equation under jit and every transform
    (grad stacks the body's residuals per step; vmap keeps one scan with a batched body).

    Args:
      f: (carry, x) -> (carry, y); the carry keeps its structure, shapes and dtypes.
      init: the initial carry. Python int / float leaves become 0-d tensors whose dtype
        follows the body's (JAX's weak types: `0` with a body adding 0.5 is a float).
      xs: a pytree of tensors scanned along axis 0, or None (then pass length; x is None).
      length: the number of steps (checked against the leading size of xs).
      reverse: run from the last x to the first (ys stay in xs order).
      unroll: accepted for JAX compatibility; the loop is a Python loop either way.
      remat: reverse mode only: False stores the body's residuals per step; True stores
        only the body's inputs and recomputes the rest in the backward pass; 'sqrt' runs
        sqrt(length) segments, storing only the carry at each segment start (O(sqrt n)
        memory, about one extra forward pass of compute); 'binomial' keeps at most
        `checkpoints` carries and recomputes the rest by Griewank's Revolve schedule, the
        fewest forward steps any schedule with that many carries needs (r sweeps for
        length <= C(k + r, k)).
      checkpoints: for remat='binomial', the carries kept (the initial one included);
        default: the fewest with which no step is recomputed more than twice (about
        sqrt(2 length)).
    """
    unroll = _check_options(reverse, unroll, remat, checkpoints)
    x_leaves, x_tree = _tensor_leaves(xs, "xs")
    length = _length(x_leaves, x_tree, length)
    init, weak = weak_carry(init, xs)
    if remat == "sqrt" and not any(weak):        # (Python-number carries: their dtype first)
        return _sqrt_scan(f, init, xs, length, reverse)
    c_leaves, c_tree = _tensor_leaves(init, "init")
    carry = [unwrap(c) for c in c_leaves]
    xvals = [unwrap(x) for x in x_leaves]
    c_types = [type_of(c) for c in carry]
    x_types = [type_of(x).with_shape(tuple(type_of(x).shape[1:])) for x in xvals]
    store = {}

    def body(*vals):
        c = tree_unflatten(c_tree, [wrap(v) for v in vals[:len(carry)]])
        x = tree_unflatten(x_tree, [wrap(v) for v in vals[len(carry):]]) if x_leaves else None
        out = f(c, x)
        if not isinstance(out, tuple) or len(out) != 2:
            raise TypeError("functx.scan: f must return a pair (carry, y), got "
                            f"{type(out).__name__}")
        new_c, y = out
        nc_leaves, nc_tree = tree_flatten(new_c)
        if nc_tree != c_tree:
            raise TypeError(f"functx.scan: f's carry output has structure {nc_tree}, but init has {c_tree}")
        store["out_dtypes"] = [type_of(unwrap(v)).dtype if isinstance(v, (torch.Tensor, Tracer)) else None
                               for v in nc_leaves]
        for i, (leaf, t) in enumerate(zip(nc_leaves, c_types)):
            lt = type_of(unwrap(leaf)) if isinstance(leaf, (torch.Tensor, Tracer)) else None
            if lt is not None and weak[i] and lt.shape == t.shape:
                continue            # a Python number's dtype follows the body's (retraced below)
            if lt is None or lt.shape != t.shape or lt.dtype != t.dtype:
                got = lt if lt is not None else type(leaf).__name__
                raise TypeError(f"functx.scan: f's carry output {_leaf_name(c_tree, i, 'carry')} is {got}, "
                                f"but init's is {t}; the carry must keep its shape and dtype")
        y_leaves, store["y_tree"] = _tensor_leaves(weak_carry(y, nc_leaves)[0], "f's y output")
        return [unwrap(v) for v in nc_leaves] + [unwrap(v) for v in y_leaves]
    g, consts = closed_graph(body, c_types + x_types, carry + xvals)
    if (promoted := promote_weak(init, weak, store["out_dtypes"])) is not None:
        return scan(f, promoted, xs, length, reverse, unroll, remat, checkpoints)
    if remat == "sqrt":
        return _sqrt_scan(f, init, xs, length, reverse)
    if remat == "binomial":
        remat = ("binomial", checkpoints if checkpoints is not None else _two_sweep_slots(length))
    else:
        remat = bool(remat)
    outs = scan_p.bind(*consts, *carry, *xvals, body=g, num_consts=len(consts), num_carry=len(carry),
                       length=length, reverse=reverse, unroll=unroll, remat=remat)
    nc = len(carry)
    return (tree_unflatten(c_tree, [wrap(o) for o in outs[:nc]]),
            tree_unflatten(store["y_tree"], [wrap(o) for o in outs[nc:]]))


def _two_sweep_slots(length):
    """The least k with C(k + 2, 2) >= length: Revolve advances no step more than twice."""
    k = 1
    while revolve.beta(k, 2) < length:
        k += 1
    return k


def _sqrt_scan(f, init, xs, length, reverse):
    """A scan of ~sqrt(n) segments, each a scan of ~sqrt(n) steps, the outer one with remat:
    reverse mode stores the carry at each segment start and the inner residuals of one
    segment at a time."""
    seg = max(1, math.isqrt(length))
    n_seg, rest = divmod(length, seg)
    x_leaves, x_tree = tree_flatten(xs)
    main = [x[:n_seg * seg].reshape((n_seg, seg) + tuple(x.shape[1:])) for x in x_leaves]
    tail = [x[n_seg * seg:] for x in x_leaves]
    as_xs = lambda leaves: tree_unflatten(x_tree, leaves) if x_leaves else None

    def segment(carry, x_seg):
        return scan(f, carry, x_seg, length=seg, reverse=reverse)

    def run_main(carry):
        return scan(segment, carry, as_xs(main), length=n_seg, reverse=reverse, remat=True)

    def run_tail(carry):
        return scan(f, carry, as_xs(tail), length=rest, reverse=reverse)
    if reverse:
        carry, ys_tail = run_tail(init)
        carry, ys_main = run_main(carry)
    else:
        carry, ys_main = run_main(init)
        carry, ys_tail = run_tail(carry)
    m_leaves, y_tree = tree_flatten(ys_main)
    t_leaves = tree_flatten(ys_tail)[0]
    ys = [torch.cat([m.reshape((n_seg * seg,) + tuple(m.shape[2:])), t]) for m, t in zip(m_leaves, t_leaves)]
    return carry, tree_unflatten(y_tree, ys)


def _static_bound(b):
    """A Python int for a bound known now (an int, or a tensor that is not traced), else None."""
    if isinstance(b, bool):
        raise TypeError(f"functx.fori_loop: loop bounds must be integers, got {b!r}")
    if isinstance(b, int):
        return b
    if isinstance(b, torch.Tensor) and not isinstance(b, TracerTensor):
        if b.numel() != 1 or b.dtype.is_floating_point or b.dtype.is_complex or b.dtype == torch.bool:
            raise TypeError(f"functx.fori_loop: loop bounds must be integer scalars, got {b.dtype}{list(b.shape)}")
        return int(b)
    if isinstance(b, TracerTensor):
        return None
    raise TypeError(f"functx.fori_loop: loop bounds must be ints or integer scalar tensors, got {type(b).__name__}")


def fori_loop(lower, upper, body_fun, init_val):
    """for i in range(lower, upper): val = body_fun(i, val); return val (JAX's lax.fori_loop).

    With bounds known at trace time (Python ints, untraced tensors) it is a scan over
    i = lower..upper-1, so every transform applies, reverse mode included; with traced
    bounds it is a while_loop (forward-mode differentiable only). i is an int64 scalar tensor;
    Python numbers in init_val are taken as in scan.
    """
    lo, hi = _static_bound(lower), _static_bound(upper)
    leaves = [x for x in tree_flatten(init_val)[0] if isinstance(x, (torch.Tensor, Tracer))]
    device = type_of(unwrap(leaves[0])).device if leaves else torch.device("cpu")
    if lo is not None and hi is not None:
        steps = torch.arange(lo, max(lo, hi), dtype=torch.int64, device=device)
        val, _ = scan(lambda v, i: (body_fun(i, v), None), init_val, steps)
        return val

    def as_tensor(b):
        return b if isinstance(b, torch.Tensor) else torch.tensor(b, dtype=torch.int64, device=device)
    lo_t, hi_t = as_tensor(lower), as_tensor(upper)
    try:
        _, _, val = while_loop(lambda s: s[0] < s[1], lambda s: (s[0] + 1, s[1], body_fun(s[0], s[2])),
                               (lo_t, hi_t, init_val))
    except FunctxError as e:
        if "needs max_steps" not in str(e):
            raise
        # (fori_loop has no max_steps: say what to change at its call)
        raise FunctxError(
            "functx.fori_loop: reverse-mode differentiation (grad, vjp, jacrev) needs a trip count known "
            "at trace time (JAX raises here too); its bounds are traced (a tensor argument of jit, or "
            "batched under vmap). Pass Python ints, or mark the bound static (functx.jit's "
            "static_argnums), so the loop is a scan.") from None
    return val
