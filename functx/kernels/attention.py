"""Fused scaled-dot-product attention as primitives, with all their rules.

`attention(q, k, v, bias=None, causal=False, scale=None)` binds `attention_p`:
q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv) with equal leading dims, bias None or an
additive float mask with q's rank whose dims are each 1 or the full size (-inf removes a
key), causal: key j is kept for query i when j <= i. Outputs (out, lse): out (..., Lq, Dv),
lse = logsumexp of the scores (..., Lq) (float32 for half inputs), which the backward reuses.

Four primitives, so that every transform composes and the kernels do the work:
- `attention_p`: the forward. jvp: under forward mode the fused `attention_jvp_p` (out and
  its tangent in one kernel pass); under linearize (grad, vjp) the primal runs and the
  tangent is recorded as `attention_tangent_p`, linear in its tangent operands.
- `attention_tangent_p` (q, k, v, [bias], out, lse, *tangents) -> (dout, dlse): its transpose
  is `attention_bwd_p`, the flash-attention backward from the saved lse.
- `attention_jvp_p` (q, k, v, [bias], *tangents) -> (out, lse, dout, dlse).
- `attention_bwd_p` (q, k, v, [bias], out, lse, ct_out, [ct_lse]) -> (dq, dk, dv, [dS]).
Second derivatives (the jvp rules of the last three: hessian-vector products, jvp of grad,
jet) are torch.func's derivatives of the PyTorch reference (attention_math.py) as an opaque
op: exact, but the math path, not a kernel. Batching folds the vmapped axis into the leading
dims every primitive accepts (unbatched operands are broadcast; a bias gets a size-1 dim).
Taylor mode has no rule here: jet nests the jvp rule (transforms/jet.py).

impl: the Triton kernels (attention_triton.py) for CUDA tensors; on the CPU torch's
flash-attention CPU kernels where they fit (attention_cpu.py), else the PyTorch reference;
`INTERPRET_ON_CPU` (tests) sends CPU tensors to the kernels under TRITON_INTERPRET=1.
Both jit backends call impl (an extern: the Triton backend's host wrapper launches it between
its fused kernels).
"""
from __future__ import annotations

import math

import torch

from ..core import EXTERN, Primitive, TensorType, Zero, bind
from ..core.trace import GraphTracer, type_of
from .. import prims as P
from ..prims.opaque import OpaqueFunction, _opaque_jvp
from ..prims.define import is_undefined
from . import attention_cpu
from . import attention_math as ref

INTERPRET_ON_CPU = False      # tests: run the Triton kernels on CPU tensors (TRITON_INTERPRET=1)
_TANGENT_NAMES = ("q", "k", "v", "bias")


def _kernels_for(x):
    """attention_triton for tensors the kernels run on, else None (the PyTorch reference)."""
    if not (x.is_cuda or INTERPRET_ON_CPU):
        return None
    from . import attention_triton     # importing triton is slow (or it is absent): only when used
    return attention_triton


def lse_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


# ---------------------------------------------------------------- operand layouts and types

def _split(args, has_bias):
    """(q, k, v, bias or None, the remaining operands)."""
    q, k, v = args[:3]
    return q, k, v, (args[3] if has_bias else None), list(args[3 + has_bias:])


def _expand_tangents(rest, has_tangent):
    """(tq, tk, tv, tbias) from the present ones, None where absent."""
    it = iter(rest)
    return [next(it) if on else None for on in has_tangent]


def _check(q, k, v, bias):
    for name, t in (("key", k), ("value", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"attention: {name} dtype {t.dtype} differs from query's {q.dtype}")
        if t.ndim != q.ndim or t.shape[:-2] != q.shape[:-2]:
            raise TypeError(f"attention: {name} {t} and query {q} need equal leading dims")
    if not q.dtype.is_floating_point:
        raise TypeError(f"attention: query dtype {q.dtype} is not a float dtype")
    if k.shape[-1] != q.shape[-1] or v.shape[-2] != k.shape[-2]:
        raise TypeError(f"attention: shapes q {q}, k {k}, v {v} don't fit (..., L, D), (..., S, D), "
                        "(..., S, Dv)")
    if bias is not None:
        full = q.shape[:-1] + (k.shape[-2],)
        if bias.dtype != q.dtype or bias.ndim != q.ndim or any(b not in (1, n) for b, n in zip(bias.shape, full)):
            raise TypeError(f"attention: bias {bias} must have dtype {q.dtype} and dims 1 or those of {full}")


def _out_types(q, k, v):
    out = q.with_shape(q.shape[:-1] + (v.shape[-1],))
    lse = TensorType(q.shape[:-1], lse_dtype(q.dtype), q.device)
    return out, lse


def _fwd_type(*args, causal, scale, has_bias):
    q, k, v, bias, _ = _split(args, has_bias)
    _check(q, k, v, bias)
    return list(_out_types(q, k, v))


def _tangent_type(*args, causal, scale, has_bias, has_tangent):
    q, k, v, bias, _ = _split(args, has_bias)
    _check(q, k, v, bias)
    return list(_out_types(q, k, v))


def _jvp_type(*args, causal, scale, has_bias, has_tangent):
    return _fwd_type(*args[:3 + has_bias], causal=causal, scale=scale, has_bias=has_bias) * 2


def _ds_type(q, k):
    return TensorType(q.shape[:-1] + (k.shape[-2],), lse_dtype(q.dtype), q.device)


def _bwd_type(*args, causal, scale, has_bias, has_ct_lse, need_dbias):
    q, k, v, bias, _ = _split(args, has_bias)
    _check(q, k, v, bias)
    return [q, k, v] + ([_ds_type(q, k)] if need_dbias else [])


# ---------------------------------------------------------------- impls

def _fwd_impl(*args, causal, scale, has_bias):
    q, k, v, bias, _ = _split(args, has_bias)
    kern = _kernels_for(q) or (attention_cpu if attention_cpu.fits(q, k, v, bias) else ref)
    return list(kern.forward(q, k, v, bias, causal, scale))


def _jvp_impl(*args, causal, scale, has_bias, has_tangent):
    q, k, v, bias, rest = _split(args, has_bias)
    tq, tk, tv, tb = _expand_tangents(rest, has_tangent)
    kern = _kernels_for(q)
    if kern is not None:
        return list(kern.forward(q, k, v, bias, causal, scale, (tq, tk, tv, tb)))
    return list(ref.jvp(q, k, v, bias, tq, tk, tv, tb, causal, scale))


def _tangent_impl(*args, causal, scale, has_bias, has_tangent):
    n = 3 + has_bias
    return _jvp_impl(*args[:n], *args[n + 2:], causal=causal, scale=scale, has_bias=has_bias,
                     has_tangent=has_tangent)[2:]


def _bwd_impl(*args, causal, scale, has_bias, has_ct_lse, need_dbias):
    q, k, v, bias, rest = _split(args, has_bias)
    out, lse, ct_out = rest[:3]
    ct_lse = rest[3] if has_ct_lse else None
    kern = _kernels_for(q) or (attention_cpu if ct_lse is None and not need_dbias
                               and attention_cpu.fits(q, k, v, bias) else ref)
    dq, dk, dv, ds = kern.backward(q, k, v, bias, out, lse, ct_out, ct_lse, causal, scale, need_dbias=need_dbias)
    return [dq, dk, dv] + ([ds] if need_dbias else [])


# ---------------------------------------------------------------- derivatives

def _partial_eval(xs):
    """Whether a tangent is an unknown of linearize's partial-evaluation trace, or of a
    cached rule's trace (transforms/rule_cache.py: its primal and tangent equations are split,
    and a primal read from the joint kernel's outputs would depend on tangents): the primal
    must then run on its own and only the (linear) tangent be recorded."""
    return any(isinstance(x, GraphTracer) and (not x._trace.stage_all or x._trace.keeps_fused) for x in xs)


def _attention_jvp(primals, tangents, *, causal, scale, has_bias):
    present = [not isinstance(t, Zero) for t in tangents] + [False] * (4 - len(tangents))
    live = [t for t in tangents if not isinstance(t, Zero)]
    params = dict(causal=causal, scale=scale, has_bias=has_bias, has_tangent=tuple(present))
    if _partial_eval(live):
        out, lse = bind(attention_p, tuple(primals), dict(causal=causal, scale=scale, has_bias=has_bias))
        dout, dlse = bind(attention_tangent_p, (*primals, out, lse, *live), params)
    else:
        out, lse, dout, dlse = bind(attention_jvp_p, (*primals, *live), params)
    return [out, lse], [dout, dlse]


def _sum_to(x, shape):
    """Sum x over the dims where `shape` has 1 (the bias's broadcast dims)."""
    axes = tuple(i for i, (a, b) in enumerate(zip(type_of(x).shape, shape)) if b == 1 and a != 1)
    return P.reshape(P.reduce_sum(x, axes), shape) if axes else x


def _tangent_transpose(cts, *args, causal, scale, has_bias, has_tangent):
    q, k, v, bias, rest = _split(args, has_bias)
    out, lse = rest[:2]
    for name, x in zip(("query", "key", "value", "bias", "out", "lse"), (q, k, v, bias, out, lse)):
        if is_undefined(x):
            raise ValueError(f"attention_tangent: not linear in its primal operand {name}")
    ct_out, ct_lse = cts
    if isinstance(ct_out, Zero) and isinstance(ct_lse, Zero):
        return [None] * len(args)
    ct_out = P.instantiate(ct_out)
    has_ct_lse = not isinstance(ct_lse, Zero)
    need_dbias = has_tangent[3]
    grads = bind(attention_bwd_p, (q, k, v, *([bias] if has_bias else []), out, lse, ct_out,
                                   *([ct_lse] if has_ct_lse else [])),
                 dict(causal=causal, scale=scale, has_bias=has_bias, has_ct_lse=has_ct_lse,
                      need_dbias=need_dbias))
    dq, dk, dv = grads[:3]
    by_name = {"q": dq, "k": dk, "v": dv}
    if need_dbias:
        bias_type = rest[2 + sum(has_tangent[:3])].aval
        by_name["bias"] = P.convert(_sum_to(grads[3], bias_type.shape), bias_type.dtype)
    lin = [by_name[n] for n, on in zip(_TANGENT_NAMES, has_tangent) if on]
    return [None] * (3 + has_bias + 2) + lin


def _math_function(prim_name, params):
    """The primitive as one PyTorch function of its operands (the reference), for torch.func."""
    has_bias = params["has_bias"]
    causal, scale = params["causal"], params["scale"]

    def fn(*args):
        q, k, v, bias, rest = _split(args, has_bias)
        if prim_name == "attention_jvp":
            return tuple(ref.jvp(q, k, v, bias, *_expand_tangents(rest, params["has_tangent"]), causal, scale))
        if prim_name == "attention_tangent":
            return tuple(ref.jvp(q, k, v, bias, *_expand_tangents(rest[2:], params["has_tangent"]),
                                 causal, scale)[2:])
        out, lse, ct_out = rest[:3]
        ct_lse = rest[3] if params["has_ct_lse"] else None
        need = params["need_dbias"]
        dq, dk, dv, ds = ref.backward(q, k, v, bias, out, lse, ct_out, ct_lse, causal, scale, need)
        return (dq, dk, dv) + ((ds,) if need else ())
    return OpaqueFunction(fn, f"{prim_name}_reference")


def _second_order_jvp(prim):
    """jvp by torch.func.jvp of the reference (an opaque op, so it transposes and batches too)."""
    def jvp(primals, tangents, **params):
        types = prim.abstract_eval(*[type_of(p) for p in primals], **params)
        return _opaque_jvp(primals, tangents, fn=_math_function(prim.name, params),
                           out_types=tuple(types), linear_argnums=())
    return jvp


# ---------------------------------------------------------------- batching

def _roles(prim_name, params):
    """Which operands are biases (a vmapped axis is added to them as a size-1 dim when they
    are unbatched; every other operand is broadcast)."""
    n = 3 + params["has_bias"]
    roles = ["x"] * 3 + (["bias"] if params["has_bias"] else [])
    if prim_name in ("attention_tangent", "attention_bwd"):
        roles += ["x", "x"]
    if prim_name in ("attention_tangent", "attention_jvp"):
        roles += [("bias" if name == "bias" else "x")
                  for name, on in zip(_TANGENT_NAMES, params["has_tangent"]) if on]
    if prim_name == "attention_bwd":
        roles += ["x"] * (1 + params["has_ct_lse"])
    assert len(roles) >= n
    return roles


def _batch_rule(prim):
    def batch(axis, args, dims, **params):
        moved = []
        for x, d, role in zip(args, dims, _roles(prim.name, params)):
            t = type_of(x)
            if d is not None:
                moved.append(P.moveaxis(x, d, 0))
            elif role == "bias":
                moved.append(P.reshape(x, (1,) + t.shape))
            else:
                moved.append(P.broadcast_in_dim(x, (axis.size,) + t.shape, tuple(range(1, t.ndim + 1))))
        out = bind(prim, tuple(moved), params)
        return out, [0] * len(out)
    return batch


# ---------------------------------------------------------------- the primitives

attention_p = Primitive("attention", kind=EXTERN, multiple_results=True,
                        abstract_eval=_fwd_type, impl=_fwd_impl, jvp=_attention_jvp)
attention_jvp_p = Primitive("attention_jvp", kind=EXTERN, multiple_results=True,
                            abstract_eval=_jvp_type, impl=_jvp_impl)
attention_tangent_p = Primitive("attention_tangent", kind=EXTERN, multiple_results=True,
                                abstract_eval=_tangent_type, impl=_tangent_impl,
                                transpose=_tangent_transpose)
attention_bwd_p = Primitive("attention_bwd", kind=EXTERN, multiple_results=True,
                            abstract_eval=_bwd_type, impl=_bwd_impl)
for _p in (attention_p, attention_jvp_p, attention_tangent_p, attention_bwd_p):
    _p.batch = _batch_rule(_p)
for _p in (attention_jvp_p, attention_tangent_p, attention_bwd_p):
    _p.jvp = _second_order_jvp(_p)


def attention(q, k, v, bias=None, causal=False, scale=None, with_lse=False):
    """softmax(scale * q k^T + bias, causal) v over the last two dims (lax values); with
    with_lse, (out, logsumexp of the scores)."""
    if scale is None:
        scale = 1.0 / math.sqrt(type_of(q).shape[-1])
    args = (q, k, v) + ((bias,) if bias is not None else ())
    out, lse = bind(attention_p, args, dict(causal=bool(causal), scale=float(scale), has_bias=bias is not None))
    return (out, lse) if with_lse else out
