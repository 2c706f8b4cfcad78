"""The fused backends' pass small_contractions: a dot_general over a tiny dimension is not a
BLAS call but multiply-adds that fuse with their neighbours (what XLA's CPU emitter does for
tiny dots).

An MLP on low-dimensional data (a 2-D score model, a PINN on (x, t), a DSM step) has
products whose contracted size K or one of whose output sizes M or N is 2 or 3: the input
layer `x @ W0` ([4096,2] @ [2,128]), its cotangent `g @ W0.T`, the output layer
`h @ W2` ([4096,128] @ [128,2]), the weight gradients `x.T @ g` ([2,4096] @ [4096,128]).
BLAS runs them at a fraction of its speed (a 2-float output row, a 2-long inner product)
and writes a full [4096,128] result that the next kernel reads back. Rewritten:

  - tiny contraction (the contracted dims hold at most MAX_SIZE elements) whose result a
    pointwise or reduction equation reads: the result is
    sum_c bcast(lhs[.., c, ..]) * bcast(rhs[.., c, ..]), views and pointwise equations
    that become part of the kernel consuming it (the bias add + tanh after `x @ W0`); a
    result that only leaves the graph (per-sample outer products) stays in BLAS;
  - tiny free side (one operand's free dims hold 2..MAX_SIZE elements, no batch dims):
    each of those rows m is reduce_sum(bcast(tiny[m]) * other) over the contracted dims,
    a reduction over the other operand's layout, which fuses with the kernel producing
    the other operand (the tanh of the last hidden layer) or with reductions over the same
    domain (the bias gradient's column sum beside a weight gradient); the rows are put
    together with a select on an iota (a tiny pointwise kernel). Only where the graph
    computes the other operand: a graph input (a weight times 2 stacked rows), or a view
    of one (`x @ W.mT`), has no producer to fuse with, and BLAS (or the CPU backend's
    row_products kernel) streams it at memory speed.

Mathematically exact: each output element is the same sum of the same products; only the
order and precision of the accumulation change (the C++ reductions add in double), as for
any change of matmul shape. Matrix-vector products (a free side of 1) stay in BLAS, which
streams the matrix once at memory speed. Only the fused tiers run this pass (the eager
backend would materialize every broadcast); explain lists each rewritten product.
"""
from __future__ import annotations

import itertools
import math

import torch

from ..core import POINTWISE, REDUCTION, VIEW, Eqn, Graph, Literal, Var
from ..core.primitive import REGISTRY
from ..core.types import TensorType
from .passes import _Subst, dce

MAX_SIZE = 4        # contracted elements (or free rows) up to which a product is unrolled


def _static(shape) -> bool:
    return all(type(n) is int for n in shape)


class _Builder:
    def __init__(self, like: Var, source):
        self.dtype, self.device, self.source = like.type.dtype, like.type.device, source
        self.eqns: list[Eqn] = []

    def emit(self, prim, inputs, shape, params, dtype=None):
        out = Var(TensorType(tuple(shape), dtype or self.dtype, self.device))
        self.eqns.append(Eqn(REGISTRY[prim], list(inputs), [out], params, self.source))
        return out

    def select_axes(self, x: Var, axes, index) -> Var:
        """x at position index[i] of each axis axes[i], those axes dropped (a slice and a
        reshape: views that kernels fold into their index math)."""
        shape = x.type.shape
        start = [0] * len(shape)
        limit = list(shape)
        for a, i in zip(axes, index):
            start[a], limit[a] = i, i + 1
        if any(limit[a] - start[a] != shape[a] for a in axes):
            sliced = [limit[d] - start[d] for d in range(len(shape))]
            x = self.emit("slice", [x], sliced, {"start": tuple(start), "limit": tuple(limit),
                                                  "strides": tuple([1] * len(shape))})
        kept = [n for d, n in enumerate(shape) if d not in axes]
        if len(kept) != len(shape):
            x = self.emit("reshape", [x], kept, {"shape": tuple(kept)})
        return x

    def place(self, x: Var, dims, shape) -> Var:
        """broadcast_in_dim of x (its axis i goes to output axis dims[i]), transposing first
        where dims are not increasing."""
        order = sorted(range(len(dims)), key=lambda i: dims[i])
        if order != list(range(len(dims))):
            x = self.emit("transpose", [x], [x.type.shape[i] for i in order], {"permutation": tuple(order)})
            dims = [dims[i] for i in order]
        if tuple(x.type.shape) == tuple(shape) and list(dims) == list(range(len(shape))):
            return x
        return self.emit("broadcast_in_dim", [x], shape, {"shape": tuple(shape),
                                                           "broadcast_dimensions": tuple(dims)})


def _output_dims(e):
    """For each operand, where its non-contracted axes go in the output (dot_general's
    order: batch axes, lhs free axes, rhs free axes)."""
    (lc, rc), (lb, rb) = e.params["dimension_numbers"]
    lhs, rhs = e.inputs
    lfree = [d for d in range(lhs.type.ndim) if d not in lc and d not in lb]
    rfree = [d for d in range(rhs.type.ndim) if d not in rc and d not in rb]
    nb = len(lb)
    ldest = {a: k for k, a in enumerate(lb)} | {a: nb + k for k, a in enumerate(lfree)}
    rdest = {a: k for k, a in enumerate(rb)} | {a: nb + len(lfree) + k for k, a in enumerate(rfree)}
    return ldest, rdest, lfree, rfree


def _tiny_contraction(e) -> list | None:
    (lc, rc), _ = e.params["dimension_numbers"]
    lhs, rhs = e.inputs
    out = e.outputs[0]
    sizes = [lhs.type.shape[a] for a in lc]
    if not lc or math.prod(sizes) > MAX_SIZE:
        return None
    ldest, rdest, _, _ = _output_dims(e)
    b = _Builder(out, e.source)
    acc = None
    for index in itertools.product(*[range(n) for n in sizes]):
        terms = []
        for x, contract, dest in ((lhs, lc, ldest), (rhs, rc, rdest)):
            kept = [d for d in range(x.type.ndim) if d not in contract]
            terms.append(b.place(b.select_axes(x, contract, index), [dest[d] for d in kept], out.type.shape))
        prod = b.emit("mul", terms, out.type.shape, {})
        acc = prod if acc is None else b.emit("add", [acc, prod], out.type.shape, {})
    return b.eqns


def _tiny_free_side(e, computed) -> list | None:
    (lc, rc), (lb, rb) = e.params["dimension_numbers"]
    if lb or not lc:
        return None
    lhs, rhs = e.inputs
    out = e.outputs[0]
    ldest, rdest, lfree, rfree = _output_dims(e)
    for tiny, other, tc, oc, tfree, ofree, odest, tdest in (
            (lhs, rhs, lc, rc, lfree, rfree, rdest, ldest), (rhs, lhs, rc, lc, rfree, lfree, ldest, rdest)):
        if len(tfree) == 1 and 2 <= tiny.type.shape[tfree[0]] <= MAX_SIZE and ofree and other in computed:
            break
    else:
        return None
    rows = tiny.type.shape[tfree[0]]
    b = _Builder(out, e.source)
    other_shape = other.type.shape
    row_shape = [other_shape[d] for d in ofree]
    parts = []
    for m in range(rows):
        t = b.select_axes(tiny, tfree, [m])          # tiny's contracted axes only, in tiny's order
        remaining = [d for d in range(tiny.type.ndim) if d not in tfree]
        t = b.place(t, [oc[list(tc).index(d)] for d in remaining], other_shape)
        prod = b.emit("mul", [t, other], other_shape, {})
        parts.append(b.emit("reduce_sum", [prod], row_shape, {"axes": tuple(sorted(oc))}))
    out_shape = out.type.shape
    axis = tdest[tfree[0]]
    result = b.place(parts[-1], [odest[d] for d in ofree], out_shape)
    for m in range(rows - 2, -1, -1):
        pos = b.emit("iota", [], out_shape, {"shape": tuple(out_shape), "dim": axis, "dtype": torch.int64,
                                             "device": out.type.device}, dtype=torch.int64)
        hit = b.emit("eq", [pos, Literal(m)], out_shape, {}, dtype=torch.bool)
        row = b.place(parts[m], [odest[d] for d in ofree], out_shape)
        result = b.emit("where", [hit, row, result], out_shape, {})
    return b.eqns


def _feeds_a_kernel(graph: Graph):
    """v -> does some pointwise or reduction equation read v (through views)? A product
    whose result only leaves the graph or feeds another matmul gains nothing from being
    unrolled (per-sample outer products, K=1, are written as fast by BLAS)."""
    users: dict = {}
    for e in graph.eqns:
        for a in e.inputs:
            if isinstance(a, Var):
                users.setdefault(a, []).append(e)
    memo: dict = {}

    def feeds(v) -> bool:
        if v not in memo:
            memo[v] = False
            memo[v] = any(feeds(e.outputs[0]) if e.prim.kind == VIEW and e.outputs else
                          e.prim.kind in (POINTWISE, REDUCTION) for e in users.get(v, []))
        return memo[v]
    return feeds


def _computed(graph: Graph) -> set:
    """Values some kernel computes: outputs of non-view equations and views of them (a
    transposed or reshaped graph input is still an input: no producer to fuse with)."""
    computed: set = set()
    for e in graph.eqns:
        if e.prim.kind != VIEW or any(a in computed for a in e.inputs if isinstance(a, Var)):
            computed.update(e.outputs)
    return computed


def small_contractions(graph: Graph, notes: list | None = None) -> Graph:
    """Rewrite dot_generals over tiny dims (module docstring). notes, if given, receives
    one line per rewritten product for explain."""
    sub, eqns, changed = _Subst(), [], False
    feeds = _feeds_a_kernel(graph)
    computed = _computed(graph)
    for e in graph.eqns:
        e = sub.eqn(e)
        repl = None
        if e.prim.name == "dot_general" and all(isinstance(a, Var) for a in e.inputs) \
                and e.outputs[0].type.dtype in (torch.float32, torch.float64) \
                and all(a.type.dtype == e.outputs[0].type.dtype for a in e.inputs) \
                and all(_static(a.type.shape) and 0 not in a.type.shape for a in e.inputs):
            repl, kind = (_tiny_contraction(e) if feeds(e.outputs[0]) else None), "contracted size"
            if repl is None:
                repl, kind = _tiny_free_side(e, computed), "free side"
        if not repl:
            eqns.append(e)
            continue
        last = repl[-1]
        repl[-1] = Eqn(last.prim, last.inputs, e.outputs, last.params, last.source)
        eqns.extend(repl)
        changed = True
        if notes is not None:
            shapes = " @ ".join(str(list(a.type.shape)) for a in e.inputs)
            notes.append(f"{shapes} -> {list(e.outputs[0].type.shape)} ({kind} <= {MAX_SIZE}): "
                         f"{len(repl)} fused equations")
    return dce(sub.finish(graph, eqns)) if changed else graph
