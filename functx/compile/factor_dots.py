"""The pass factor_broadcast_dots: contract the smaller factor of a broadcast product first.

A dot_general whose operand is an elementwise product of two broadcasts,

    dot(g[b, k] * f[i, k], V[k, j])  (contracting k)  =  dot(g[b, k], f[i, k] * V[k, j])

costs the same multiply-adds either way, but the left side materializes the product at
the size of both factors' axes together ((b, i, k): every point times every direction),
the right side at the size of f's and V's ((i, k, j), no point axis). Forward-mode and
Taylor-mode transforms make exactly this: the first layer's tangents along a basis are
the weight itself (shared by the points, after fold_identity_dots), scaled per point by
an activation's derivative and then multiplied by the next weight. For a (1024, d, 64)
Jacobian behind a 64-wide layer that is one full pass over the largest tensor of the
graph (and its allocation) replaced by one over a (d, 64, 64) tensor.

Rewritten when: the product's result feeds only this dot (through reshapes that add or
drop unit dims); every contracted axis varies in the kept factor g; the two factors vary
together only along contracted axes (so no axis is a batch axis of the new dot); and the
new product f * V has at most half the elements of the old one. Exact in real arithmetic;
in floating point (g f) V becomes g (f V), a reassociation of each product (rounding of
the last bit), as any reassociating compiler pass.
"""
from __future__ import annotations

from ..core import Eqn, Graph, Var
from ..core.primitive import REGISTRY
from .passes import use_counts

_MIN_SAVING = 2           # the new product must be at most half the old one's size


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def _nonunit(shape):
    return [i for i, n in enumerate(shape) if n != 1]


class _Mismatch(Exception):
    """A built equation's type is not the one planned (a bug here): the dot stays as it is."""


class _Builder:
    """New equations, each typed by its primitive's abstract eval and checked against the
    planned shape."""

    def __init__(self, source):
        self.source, self.eqns = source, []

    def add(self, prim, inputs, shape, params, out=None):
        p = REGISTRY[prim]
        try:
            t = p.abstract_eval(*[a.type for a in inputs], **params)
        except Exception as err:       # noqa: BLE001
            raise _Mismatch(f"{prim}: {err}") from err
        if tuple(t.shape) != tuple(shape) or (out is not None and t != out.type):
            raise _Mismatch(f"{prim}: {t}, planned {tuple(shape)}")
        out = Var(t) if out is None else out
        self.eqns.append(Eqn(p, inputs, [out], params, self.source))
        return out

    def reshape(self, x, shape):
        shape = tuple(shape)
        return x if tuple(x.type.shape) == shape else self.add("reshape", [x], shape, {"shape": shape})

    def transpose(self, x, perm):
        perm = tuple(perm)
        if perm == tuple(range(len(perm))):
            return x
        return self.add("transpose", [x], [x.type.shape[p] for p in perm], {"permutation": perm})

    def broadcast(self, x, shape, dims):
        shape, dims = tuple(shape), tuple(dims)
        if tuple(x.type.shape) == shape and dims == tuple(range(len(shape))):
            return x
        return self.add("broadcast_in_dim", [x], shape, {"shape": shape, "broadcast_dimensions": dims})


def _unit_reshape_map(src_shape, dst_shape):
    """dst axis -> src axis for the non-unit axes of a reshape that only adds or drops unit
    dims, else None."""
    src, dst = _nonunit(src_shape), _nonunit(dst_shape)
    if [src_shape[i] for i in src] != [dst_shape[i] for i in dst]:
        return None
    return dict(zip(dst, src))


def _factor(atom, M, defs):
    """(source Var, {M axis: source axis} of the axes it varies along) of one mul operand."""
    if not isinstance(atom, Var) or atom.type.dtype != M.type.dtype:
        return None
    e = defs.get(atom)
    if e is not None and e.prim.name == "broadcast_in_dim" and isinstance(e.inputs[0], Var) \
            and tuple(e.params["shape"]) == tuple(M.type.shape):
        src, dims = e.inputs[0], e.params["broadcast_dimensions"]
        if list(dims) != sorted(dims):
            return None
        return src, {dims[i]: i for i in range(len(dims)) if src.type.shape[i] != 1}
    if tuple(atom.type.shape) == tuple(M.type.shape):
        return atom, {i: i for i in _nonunit(atom.type.shape)}
    return None


def _rewrite(e, defs, uses):
    """The equations replacing e, or None."""
    (lc, rc), (lb, rb) = e.params["dimension_numbers"]
    if lb or rb:
        return None
    for side in (0, 1):
        X, V = e.inputs[side], e.inputs[1 - side]
        xc, vc = (lc, rc) if side == 0 else (rc, lc)
        if not isinstance(X, Var) or not isinstance(V, Var) or uses.get(X, 0) != 1:
            continue
        # X's non-unit axes -> M's, through reshapes that add or drop unit dims
        axis = {a: a for a in _nonunit(X.type.shape)}
        M = X
        while M in defs and defs[M].prim.name == "reshape" and isinstance(defs[M].inputs[0], Var):
            src = defs[M].inputs[0]
            step = _unit_reshape_map(src.type.shape, M.type.shape)
            if step is None or uses.get(src, 0) != 1:
                break
            axis = {a: step[m] for a, m in axis.items()}
            M = src
        m_eqn = defs.get(M)
        if m_eqn is None or m_eqn.prim.name != "mul" or uses.get(M, 0) != 1:
            continue
        if any(X.type.shape[a] == 1 for a in xc):
            continue
        C = [axis[a] for a in xc]                     # M's contracted axes, in contraction order
        factors = [_factor(a, M, defs) for a in m_eqn.inputs]
        if None in factors:
            continue
        best = None
        for fi in (0, 1):
            try:
                out = _sink(e, X, V, xc, vc, M, C, factors[1 - fi], factors[fi], axis)
            except _Mismatch:
                out = None
            if out is not None and (best is None or out[0] < best[0]):
                best = out
        if best is not None:
            return best[1]
    return None


def _sink(e, X, V, xc, vc, M, C, g, f, axis):
    """(size of f * V, equations computing e as dot(g, f * V)), or None when the
    conditions fail."""
    (g_src, g_ax), (f_src, f_ax) = g, f
    mshape = M.type.shape
    if not all(isinstance(n, int) for n in tuple(mshape) + tuple(V.type.shape)):
        return None                   # symbolic sizes: no size comparison without a guard
    if not set(C) <= set(g_ax):
        return None
    if not (set(g_ax) & set(f_ax)) <= set(C):
        return None
    if set(g_ax) | set(f_ax) != set(_nonunit(mshape)):
        return None
    v_free = [a for a in range(V.type.ndim) if a not in vc]
    # T's leading axes, as M axes: the contracted ones first (in contraction order), so that
    # the new dot is a plain matmul of g with T's (k, ...) rows, then f's free axes
    U = list(C) + sorted(set(f_ax) - set(C))
    t_shape = [mshape[a] for a in U] + [V.type.shape[a] for a in v_free]
    if _numel(t_shape) * _MIN_SAVING > _numel(mshape):
        return None
    b = _Builder(e.source)
    f_axes = sorted(f_ax)
    f_sq = b.reshape(f_src, [mshape[a] for a in f_axes])
    g_axes = sorted(g_ax)
    g_sq = b.reshape(g_src, [mshape[a] for a in g_axes])
    # T = f * V over (U..., V's free axes...)
    f_in_u = [a for a in U if a in f_ax]               # broadcast_in_dim keeps its operand's order
    f_b = b.broadcast(b.transpose(f_sq, [f_axes.index(a) for a in f_in_u]), t_shape,
                      [U.index(a) for a in f_in_u])
    v_dims = [None] * V.type.ndim
    for x_axis, v_axis in zip(xc, vc):
        v_dims[v_axis] = U.index(axis[x_axis])
    for k, a in enumerate(v_free):
        v_dims[a] = len(U) + k
    order = sorted(range(V.type.ndim), key=lambda a: v_dims[a])
    v_b = b.broadcast(b.transpose(V, order), t_shape, sorted(v_dims))
    T = b.add("mul", [f_b, v_b], t_shape, {})
    # dot(g, T) contracting C; its output: g's free axes, then T's (f's free axes, V's free)
    g_free = [a for a in g_axes if a not in C]
    f_free = [a for a in U if a not in C]
    dn = ((tuple(g_axes.index(c) for c in C), tuple(U.index(c) for c in C)), ((), ()))
    prod_shape = [mshape[a] for a in g_free + f_free] + [V.type.shape[a] for a in v_free]
    out = e.outputs[0]
    final_shape = tuple(out.type.shape)
    # the product's axes must come out in X's order (M's: unit-dim reshapes keep it): a
    # transposed result would hand its permuted layout to every consumer
    if g_free + f_free != sorted(g_free + f_free):
        return None
    needs_reshape = tuple(prod_shape) != final_shape
    y = b.add("dot_general", [g_sq, T], prod_shape, {"dimension_numbers": dn},
              out=None if needs_reshape else out)
    if needs_reshape:
        b.add("reshape", [y], final_shape, {"shape": final_shape}, out=out)
    return _numel(t_shape), b.eqns


def factor_broadcast_dots(graph: Graph) -> Graph:
    """dot(g * f, V) -> dot(g, f * V) where the product f * V is the smaller (module docstring)."""
    uses = use_counts(graph)      # an output also used by the dot has two: never rewritten away
    defs = {v: e for e in graph.eqns for v in e.outputs}
    eqns, changed = [], False
    for e in graph.eqns:
        if e.prim.name == "dot_general" and e.outputs[0].type.dtype.is_floating_point \
                and all(isinstance(n, int) for n in e.outputs[0].type.shape):
            repl = _rewrite(e, defs, uses)
            if repl is not None:
                eqns.extend(repl)
                changed = True
                continue
        eqns.append(e)
    return graph.replace(eqns=eqns) if changed else graph
