"""PyTorch source for graph equations, shared by the eager backend's generated function
and the Triton backend's host wrapper (which runs views and externs through torch)."""
from __future__ import annotations

import math

import torch

from ..core import Literal


def literal_source(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "math.nan"
        if math.isinf(value):
            return "math.inf" if value > 0 else "-math.inf"
    return repr(value)


def emit_expr(eqn, srcs, namespace) -> str:
    """A PyTorch expression computing eqn from its operands' sources `srcs`.

    The one place primitive rules are looked up: this module's lowerings (EAGER_EMIT:
    dot_general as `@`/torch.matmul, ...), else the primitive's own `emit`, else a call of
    its impl, bound (with its params) into `namespace`, the generated code's globals."""
    lower = EAGER_EMIT.get(eqn.prim.name)
    expr = lower(eqn, srcs) if lower is not None else None
    if expr is None and eqn.prim.emit is not None:
        expr = eqn.prim.emit(srcs, eqn.params)
    if expr is None:
        n = len(namespace)        # grows with every binding, so names never collide
        impl, params = f"_{eqn.prim.name}_{n}", f"_params_{n}"
        namespace[impl], namespace[params] = eqn.prim.impl, eqn.params
        expr = f"{impl}({', '.join(srcs)}{', ' if srcs else ''}**{params})"
    return expr


def compile_function(source: str, name: str, namespace: dict, consts, filename: str):
    """exec `source` in `namespace` -> its function `name`, with the graph's constants bound
    as the defaults of its trailing parameters, so a call passes the inputs only and costs
    one Python call."""
    exec(compile(source, filename, "exec"), namespace)
    fn = namespace[name]
    if consts:
        fn.__defaults__ = tuple(consts)
    return fn


# ---------------------------------------------------------------- lowerings by primitive

def _mT(src, transposed):
    return f"{src}.mT" if transposed else src


def _matmul_operands(eqn, srcs):
    """A 2-D x 2-D dot_general with one contraction as (lhs, rhs) sources for `@`."""
    (lc, rc), _ = eqn.params["dimension_numbers"]
    return _mT(srcs[0], lc[0] == 0), _mT(srcs[1], rc[0] == 1)


def _permute_src(src, perm):
    if perm == tuple(range(len(perm))):
        return src
    n = len(perm)
    if n >= 2 and perm == tuple(range(n - 2)) + (n - 1, n - 2):
        return f"{src}.mT"
    return f"{src}.permute({perm!r})"


def _emit_dot_general(eqn, srcs):
    """dot_general as a matmul: operands permuted to (batch, free, contract) and
    (batch, contract, free), flattened to 3 groups when needed, one torch.matmul, reshaped
    to (batch, lhs free, rhs free). Simple layouts print as `x @ W` / `x @ W.mT`."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    x, y = eqn.inputs
    if isinstance(x, Literal) or isinstance(y, Literal):
        return None
    xs, ys = tuple(x.type.shape), tuple(y.type.shape)
    lfree = [i for i in range(len(xs)) if i not in lc and i not in lb]
    rfree = [i for i in range(len(ys)) if i not in rc and i not in rb]
    out_shape = tuple(eqn.outputs[0].type.shape)
    # matmul broadcasts a 2-D rhs over any number of leading lhs dims: (..., k) @ (k, n).
    if not lb and len(lc) == 1 and len(rc) == 1 and len(ys) in (1, 2):
        if lc[0] == len(xs) - 1 and len(xs) >= 1:
            return f"{srcs[0]} @ {_mT(srcs[1], len(ys) == 2 and rc[0] == 1)}"
        if len(xs) == 2 and lc[0] == 0:
            return f"{srcs[0]}.mT @ {_mT(srcs[1], len(ys) == 2 and rc[0] == 1)}"
    if not lb and not lc and len(xs) == 1 and len(ys) == 1:
        return f"torch.outer({srcs[0]}, {srcs[1]})"
    # General form.
    batch = [xs[i] for i in lb]
    m = [xs[i] for i in lfree]
    kk = [xs[i] for i in lc]
    n = [ys[i] for i in rfree]
    lhs = _permute_src(srcs[0], tuple(lb) + tuple(lfree) + tuple(lc))
    rhs = _permute_src(srcs[1], tuple(rb) + tuple(rc) + tuple(rfree))
    lshape = tuple(batch) + (_prod(m), _prod(kk))
    rshape = tuple(batch) + (_prod(kk), _prod(n))
    if tuple(batch + m + kk) != lshape:
        lhs = f"{lhs}.reshape({lshape!r})"
    if tuple(batch + kk + n) != rshape:
        rhs = f"{rhs}.reshape({rshape!r})"
    expr = f"torch.matmul({lhs}, {rhs})"
    if tuple(batch) + (_prod(m), _prod(n)) != out_shape:
        expr = f"{expr}.reshape({out_shape!r})"
    return expr


def _prod(xs):
    r = 1
    for x in xs:
        r *= x
    return r


def _emit_broadcast_in_dim(eqn, srcs):
    x = eqn.inputs[0]
    shape = tuple(eqn.params["shape"])
    view = [1] * len(shape)
    for i, d in enumerate(eqn.params["broadcast_dimensions"]):
        view[d] = x.type.shape[i]
    src = srcs[0] if tuple(view) == tuple(x.type.shape) else f"{srcs[0]}.reshape({tuple(view)!r})"
    return f"{src}.expand({shape!r})"


def _emit_transpose(eqn, srcs):
    return _permute_src(srcs[0], tuple(eqn.params["permutation"]))


def _emit_minmax(clamp, full):
    def emit(eqn, srcs):
        x, y = eqn.inputs
        if isinstance(y, Literal):
            if clamp == "clamp_min" and y.value == 0 and not isinstance(y.value, bool):
                return f"torch.relu({srcs[0]})"
            return f"torch.{clamp}({srcs[0]}, {srcs[1]})"
        if isinstance(x, Literal):
            return f"torch.{clamp}({srcs[1]}, {srcs[0]})"
        return f"torch.{full}({srcs[0]}, {srcs[1]})"
    return emit


def _emit_reduce_sum(eqn, srcs):
    axes = eqn.params["axes"]
    if not axes:
        return srcs[0]
    dtype = eqn.outputs[0].type.dtype
    expr = f"torch.sum({srcs[0]}, {axes!r})"
    if not (dtype.is_floating_point or dtype.is_complex or dtype == torch.int64):
        expr = f"{expr}.to({dtype})"      # torch.sum promotes ints and bools to int64
    return expr


def _emit_atan2(eqn, srcs):
    if any(isinstance(a, Literal) for a in eqn.inputs):
        return None                         # torch.atan2 takes tensors only: the impl handles it
    return f"torch.atan2({srcs[0]}, {srcs[1]})"


EAGER_EMIT = {
    "dot_general": _emit_dot_general,
    "broadcast_in_dim": _emit_broadcast_in_dim,
    "transpose": _emit_transpose,
    "max": _emit_minmax("clamp_min", "maximum"),
    "min": _emit_minmax("clamp_max", "minimum"),
    "reduce_sum": _emit_reduce_sum,
    "atan2": _emit_atan2,
}
