"""The opaque primitive: any pure torch function, with rules from torch.func.

The front end turns an ATen op that has no mapping and no decomposition into `opaque`,
so user code never fails for coverage; `functx.explain` lists each one. Its jvp, transpose
and batch rules are torch.func.jvp / vjp / vmap of that one function, so opaque ops compose
with every transform, to any depth.
"""
from __future__ import annotations

import torch

from ..core import EXTERN, Primitive, TensorType, Zero, bind
from ..core.errors import FunctxError, MissingRuleError, user_frame_summary
from ..core.trace import TOP_LEVEL_KEYS, type_of
from . import elementwise as ew
from .creation import zeros_like_type
from .define import is_undefined
from .shape import bdim_to_front


class OpaqueFunction:
    """fn(*tensors) -> tuple of tensors, with a readable name. reverse_jvp: torch's
    forward-mode formula for fn is wrong (frontend/fallback.py lists the ops), so its jvp is
    J t from reverse mode; the functions built from it (its jvp, vjp, transpose, vmap) keep
    the flag, since differentiating them forward would reach that formula again."""
    __slots__ = ("fn", "name", "vjp_of", "reverse_jvp", "no_derivative")

    def __init__(self, fn, name, vjp_of=None, reverse_jvp=False, no_derivative=None):
        self.fn = fn
        self.name = name
        # for jvp(f): (f, n_primals, tangent positions, float outputs), so that its transpose
        # is torch.func.vjp of f itself (no forward-mode AD needed for reverse mode)
        self.vjp_of = vjp_of
        self.reverse_jvp = reverse_jvp
        # why torch.func cannot differentiate fn (a torch.library custom op: its forward-mode
        # tangent comes back as zeros, silently), raised when a derivative is asked for
        self.no_derivative = no_derivative

    def __call__(self, *args):
        return self.fn(*args)

    def __repr__(self):
        return self.name

    __name__ = property(lambda self: self.name)


def _opaque_impl(*args, fn, out_types, linear_argnums):
    # An opaque op usually runs inside TracerTensor.__torch_dispatch__, where autograd and
    # functorch keys are excluded, so torch.func.jvp/vjp/vmap inside it would fail (or
    # silently not differentiate): it runs in the dispatch state of ordinary Python code.
    with torch._C._ForceDispatchKeyGuard(*TOP_LEVEL_KEYS):
        return list(fn(*args))


def opaque(fn: OpaqueFunction, args, out_types, linear_argnums=()):
    return bind(opaque_p, tuple(args), {"fn": fn, "out_types": tuple(out_types),
                                        "linear_argnums": tuple(linear_argnums)})


def _opaque_jvp(primals, tangents, *, fn, out_types, linear_argnums):
    outs = opaque(fn, primals, out_types, linear_argnums)
    nz = [i for i, t in enumerate(tangents) if not isinstance(t, Zero)
          and type_of(primals[i]).dtype.is_floating_point]
    float_outs = [i for i, t in enumerate(out_types) if t.dtype.is_floating_point or t.dtype.is_complex]
    if not nz or not float_outs:
        return outs, [Zero(t) for t in out_types]
    if fn.no_derivative is not None:
        raise FunctxError(f"{fn.no_derivative}, here:\n{user_frame_summary()}")
    n = len(primals)

    def jvp_fn(*args):
        prim, tans = list(args[:n]), args[n:]

        def restricted(*xs):          # float outputs only: reverse mode refuses integer ones
            full = list(prim)
            for i, x in zip(nz, xs):
                full[i] = x
            out = fn(*full)
            return tuple(out[i] for i in float_outs)
        _, t_out = _torch_jvp(restricted, tuple(prim[i] for i in nz), tuple(tans), fn.reverse_jvp, fn.name)
        return tuple(t_out)

    jfn = OpaqueFunction(jvp_fn, f"jvp({fn.name})", vjp_of=(fn, n, tuple(nz), tuple(float_outs)),
                         reverse_jvp=fn.reverse_jvp)
    t_types = [out_types[i] for i in float_outs]
    t_vals = opaque(jfn, list(primals) + [tangents[i] for i in nz], t_types,
                    tuple(range(n, n + len(nz))))
    result = [Zero(t) for t in out_types]
    for i, v in zip(float_outs, t_vals):
        result[i] = v
    return outs, result


def _torch_jvp(f, primals, tangents, reverse=False, name="an opaque op"):
    """torch.func.jvp; for an op without a (right) forward-AD formula, J t as the vjp of its
    pullback (linear in the cotangent), which needs only reverse mode (twice). An op whose
    backward has no derivative either (ctc_loss) raises naming it, not torch's error from
    deep inside the double vjp."""
    if not reverse:
        try:
            return torch.func.jvp(f, primals, tangents)
        except NotImplementedError:
            pass
    out, pullback = torch.func.vjp(f, *primals)
    ct0 = tuple(torch.zeros_like(o) for o in out)
    try:
        _, pb2 = torch.func.vjp(pullback, ct0)
        (t_out,) = pb2(tuple(tangents))
    except (RuntimeError, NotImplementedError) as e:
        if "not implemented" not in str(e):
            raise
        raise MissingRuleError(
            f"functx: {name} has no forward-mode derivative: torch has no forward-mode formula for it, and "
            f"J t from reverse mode needs the derivative of its backward, which torch lacks too ({e}). "
            "jvp, jacfwd, hessian and other second derivatives of it are out of reach; grad, vjp and jacrev "
            "use torch's reverse mode alone") from None
    return out, t_out


def _transpose_of_jvp(cts, args, fn, out_types):
    """The transpose of jvp(f) in its tangents: torch.func.vjp of f at the primals."""
    f, n, nz, float_outs = fn.vjp_of
    primals = list(args[:n])
    tan_types = [args[n + k].aval for k in range(len(nz))]
    # only the outputs with a cotangent: torch's backward formulas skip an output whose grad
    # is undefined, and a zero one is not the same (eigh's eigenvector term is 0 * inf = nan
    # at repeated eigenvalues, where eigvalsh's gradient is finite)
    live = [k for k, ct in enumerate(cts) if not isinstance(ct, Zero)]
    if not live:
        return [None] * n + [zeros_like_type(t) for t in tan_types]
    cts = [cts[k] for k in live]
    live_outs = [float_outs[k] for k in live]

    def vjp_fn(*xs):
        prim, ct_vals = list(xs[:n]), xs[n:]

        def restricted(*zs):
            full = list(prim)
            for i, z in zip(nz, zs):
                full[i] = z
            out = f(*full)
            return tuple(out[i] for i in live_outs)
        _, pullback = torch.func.vjp(restricted, *[prim[i] for i in nz])
        return tuple(pullback(tuple(ct_vals)))

    vfn = OpaqueFunction(vjp_fn, f"vjp({f.name})", reverse_jvp=f.reverse_jvp)
    outs = opaque(vfn, primals + cts, tan_types, tuple(range(n, n + len(cts))))
    return [None] * n + list(outs)


def _opaque_transpose(cts, *args, fn, out_types, linear_argnums):
    if (fn.vjp_of is not None
            and not any(is_undefined(a) for a in args[:fn.vjp_of[1]])
            and all(is_undefined(a) for a in args[fn.vjp_of[1]:])):
        return _transpose_of_jvp(cts, args, fn, out_types)
    lin = [i for i in linear_argnums if is_undefined(args[i])]
    if any(is_undefined(a) for i, a in enumerate(args) if i not in linear_argnums):
        raise ValueError(f"opaque op {fn.name} is not linear in the requested inputs")
    fixed = [a for a in args if not is_undefined(a)]
    cts = [ct if not isinstance(ct, Zero) else zeros_like_type(ct.aval) for ct in cts]
    lin_types = [args[i].aval for i in lin]
    n_fixed = len(fixed)

    def transpose_fn(*xs):
        fixed_vals, ct_vals = xs[:n_fixed], xs[n_fixed:]

        def linear_part(*lin_vals):
            full, it_f, it_l = [], iter(fixed_vals), iter(lin_vals)
            for a in args:
                full.append(next(it_l) if is_undefined(a) else next(it_f))
            return tuple(fn(*full))
        zeros = tuple(torch.zeros(t.shape, dtype=t.dtype, device=t.device) for t in lin_types)
        _, pullback = torch.func.vjp(linear_part, *zeros)
        return pullback(tuple(ct_vals))

    tfn = OpaqueFunction(transpose_fn, f"transpose({fn.name})", reverse_jvp=fn.reverse_jvp)
    outs = opaque(tfn, fixed + cts, lin_types, tuple(range(n_fixed, n_fixed + len(cts))))
    result, it = [], iter(outs)
    for a in args:
        result.append(next(it) if is_undefined(a) else None)
    return result


def _opaque_batch(axis, args, dims, *, fn, out_types, linear_argnums):
    in_dims = tuple(dims)
    # vmap's randomness reaches torch.func's vmap: a sampler without a lowering (torch.poisson,
    # torch.multinomial, torch.randint_like) draws per example or once, as the user asked
    randomness = axis.randomness if axis.randomness in ("error", "same", "different") else "error"
    bfn = OpaqueFunction(lambda *xs: _vmapped(fn, in_dims, randomness, xs), f"vmap({fn.name})",
                         reverse_jvp=fn.reverse_jvp)
    b_types = [TensorType((axis.size,) + t.shape, t.dtype, t.device) for t in out_types]
    return opaque(bfn, args, b_types, linear_argnums), [0] * len(out_types)


def _vmapped(fn, in_dims, randomness, xs):
    """torch.func.vmap of fn; where torch's batching of it fails (a backward formula that
    reads a value with .item(): scatter_reduce's "prod", so vmap(grad) of it raised from deep
    inside torch; an op torch has no batching rule for, torch._foreach_mul in an optimizer
    step vmapped over an ensemble), a loop over the examples, stacked. Not for randomness='same', which a loop
    cannot honour, nor for vmap's own randomness errors."""
    try:
        return tuple(torch.func.vmap(fn, in_dims=in_dims, out_dims=0, randomness=randomness)(*xs))
    except RuntimeError as e:
        size = next(x.shape[d] for x, d in zip(xs, in_dims) if d is not None)
        if not str(e).startswith(("vmap:", "Batching rule not implemented")) or "random" in str(e) or \
                randomness == "same" or size == 0:
            raise
    rows = [fn(*(x if d is None else x.select(d, b) for x, d in zip(xs, in_dims))) for b in range(size)]
    return tuple(torch.stack(outs) for outs in zip(*rows))


opaque_p = Primitive(
    "opaque", kind=EXTERN, multiple_results=True,
    abstract_eval=lambda *types, fn, out_types, linear_argnums: list(out_types),
    impl=_opaque_impl,
    jvp=_opaque_jvp,
    transpose=_opaque_transpose,
    batch=_opaque_batch)


# ---------------------------------------------------------------- sample_reparam
# A sample drawn by an opaque sampler from a parameter, with the parameter's derivative
# attached by implicit reparameterization: value `sample`, tangent t_sample + t_param *
# slope(param, sample), slope an OpaqueFunction (torch._standard_gamma_grad for Gamma draws).
# The slope is evaluated at the drawn sample inside the jvp rule, one level down, so the
# sampler never runs again for a derivative (through the opaque fallback, it did, and the
# derivative was taken at another sample), and a second derivative differentiates the slope
# (torch's formula: it raises where torch has none, as torch does).

def sample_reparam(param, sample, slope):
    return bind(sample_reparam_p, (param, sample), {"slope": slope})


def _sample_reparam_jvp(primals, tangents, *, slope):
    param, sample = primals
    t_param, t_sample = tangents
    out = sample_reparam(param, sample, slope)
    terms = [] if isinstance(t_sample, Zero) else [t_sample]
    if not isinstance(t_param, Zero):
        (d,) = opaque(slope, (param, sample), (type_of(sample),))
        terms.append(ew.mul(t_param, d))
    if not terms:
        return out, Zero(type_of(sample))
    return out, terms[0] if len(terms) == 1 else ew.add(terms[0], terms[1])


def _sample_reparam_batch(axis, args, dims, *, slope):
    param, sample = (bdim_to_front(x, d, axis.size) for x, d in zip(args, dims))
    batched_slope = OpaqueFunction(lambda p, s: tuple(torch.func.vmap(slope)(p, s)), f"vmap({slope.name})")
    return sample_reparam(param, sample, batched_slope), 0


sample_reparam_p = Primitive(
    "sample_reparam", kind=EXTERN,
    abstract_eval=lambda param, sample, *, slope: sample,
    impl=lambda param, sample, *, slope: sample,
    jvp=_sample_reparam_jvp,
    batch=_sample_reparam_batch,
    emit=lambda eqn, srcs: srcs[1])
