"""Rewrites of a generated rule's equations for its *impl* code (transforms/rule_cache.py,
batch_rule_cache.py): the same values in fewer torch kernels. The rewritten equations are
ill-typed as IR (an un-expanded operand, an `addmm` that is no primitive), so bound code
(a rule's bind variant) and every other reader of the IR keep the originals."""
from __future__ import annotations

from ..core import Var
from ..core.ir import Eqn
from ..prims.conv import conv_backward_both, conv_emit, conv_p, conv_weight_grad_p
from ..prims.linalg import is_2d_matmul, matmul_layout
from ..prims.shape import _broadcast_view, concatenate_p, pad_p, render_steps, reshape_p

# Pointwise primitives whose impl is one broadcasting torch function: in generated impl code
# an operand that is a numpy-style broadcast of a smaller value may be passed un-expanded
# when another operand already has the result's shape (the same values, two kernels fewer).
_BROADCASTING_IMPLS = frozenset({"add", "sub", "mul", "div", "where", "tanh_backward", "sigmoid_backward"})


def impl_eqns(eqns, live):
    """eqns as generated impl code runs them; live: the Vars read outside them (returned)."""
    eqns = elide_broadcasts(concat_summed_pads(eqns, live), live)
    return fuse_conv_backwards(fuse_bias_convs(fuse_bias_matmuls(eqns, live), live), live)


def elide_broadcasts(eqns, live):
    """A broadcast_in_dim read only by pointwise equations of _BROADCASTING_IMPLS, each of
    which has another operand of its full output shape, is replaced there by its operand
    (reshaped to the broadcast's rank where the new dims are not leading), and dropped when
    nothing else (nor `live`) reads it."""
    bcast = {}
    for e in eqns:
        if e.prim.name == "broadcast_in_dim" and isinstance(e.inputs[0], Var):
            bcast[e.outputs[0]] = e
    if not bcast:
        return eqns
    out, repl = [], {}
    for e in eqns:
        if e.prim.name in _BROADCASTING_IMPLS and any(isinstance(a, Var) and a in bcast for a in e.inputs):
            full = e.outputs[0].type.shape
            if any(isinstance(a, Var) and a not in bcast and a.type.shape == full for a in e.inputs):
                ins = []
                for a in e.inputs:
                    if isinstance(a, Var) and a in bcast:
                        if a not in repl:
                            repl[a] = _unexpanded(bcast[a])
                        ins.append(repl[a][0])
                    else:
                        ins.append(a)
                e = Eqn(e.prim, ins, e.outputs, e.params)
        out.append(e)
    used = set(live)
    for e in out:
        used.update(a for a in e.inputs if isinstance(a, Var))
    final = []
    for e in out:
        if e.outputs[0] in bcast:
            r = repl.get(e.outputs[0])
            if r is not None and r[1] is not None and r[0] in used:
                final.append(r[1])          # the reshape the un-expanded operand needs
            if e.outputs[0] not in used:
                continue
        final.append(e)
    return final


def _unexpanded(e):
    """(Var standing for broadcast e's operand at numpy-broadcastable rank, its reshape Eqn or
    None)."""
    x = e.inputs[0]
    shape = tuple(x.type.shape)
    view = _broadcast_view(shape, e.params["shape"], e.params["broadcast_dimensions"])
    k = 0
    while k < len(view) - len(shape) and view[k] == 1:
        k += 1
    if view[k:] == shape:         # only leading dims are new: numpy broadcasting adds them
        return x, None
    v = Var(x.type.with_shape(view))
    return v, Eqn(reshape_p, [x], [v], {"shape": view})


# ---------------------------------------------------------------- x @ W + b as one addmm

class _BiasMatmul:
    """`add(dot_general(x, w), b)` of 2-D float operands as `torch.addmm(b, x, w)`: BLAS adds
    the bias as it writes the product (nn.Linear's kernel; jit's eager backend does the same),
    one kernel and one (M, N) buffer fewer. Operands (b, x, w); params: the dot's."""
    name = "addmm"
    impl = None
    multiple_results = False

    @staticmethod
    def emit(eqn, srcs):
        _, x, w = eqn.inputs
        lhs, rhs, out_shape = matmul_layout(tuple(x.type.shape), tuple(w.type.shape), eqn.params["dimension_numbers"])
        assert out_shape is None
        return f"torch.addmm({srcs[0]}, {render_steps(srcs[1], lhs)}, {render_steps(srcs[2], rhs)})"


BIAS_MATMUL = _BiasMatmul()


def fuse_bias_matmuls(eqns, live):
    """Each add of a 2-D matmul's result (read by nothing else) and a bias of its dtype that
    broadcasts to it, as one BIAS_MATMUL equation in the add's place."""
    made, reads = {}, {}
    for e in eqns:
        for a in e.inputs:
            if isinstance(a, Var):
                reads[a] = reads.get(a, 0) + 1
        if is_2d_matmul(e) and e.inputs[0].type.dtype == e.inputs[1].type.dtype:
            made[e.outputs[0]] = e
    if not made:
        return eqns
    fused, out = set(), []
    for e in eqns:
        if e.prim.name == "add" and len(e.inputs) == 2 and all(isinstance(a, Var) for a in e.inputs):
            t = e.outputs[0].type
            for pos in (0, 1):
                d, b = e.inputs[pos], e.inputs[1 - pos]
                dot = made.get(d)
                if (dot is not None and reads[d] == 1 and d not in live and b is not d and t.ndim == 2
                        and b.type.dtype == t.dtype == d.type.dtype and b.type.ndim <= 2
                        and all(n in (1, m) for n, m in zip(reversed(b.type.shape), reversed(t.shape)))):
                    fused.add(id(dot))
                    e = Eqn(BIAS_MATMUL, [b, *dot.inputs], e.outputs, dot.params)
                    break
        out.append(e)
    return [e for e in out if id(e) not in fused] if fused else eqns


# ---------------------------------------------------------------- conv(x, w) + b as one convolution

class _BiasConv:
    """`add(conv(x, w), b)` with b a per-output-channel bias (C,) reshaped or broadcast along
    dim 1, as `torch.convolution(x, w, b)`: the bias added as the kernel writes (nn.Conv's
    call), one kernel and one buffer fewer. Operands (x, w, b); params: the conv's."""
    name = "conv_bias"
    impl = None
    multiple_results = False
    emit = staticmethod(conv_emit)


BIAS_CONV = _BiasConv()


def _channel_biases(eqns):
    """{Var: (its (C,) source, the Eqn)} for each reshape of a vector to (1, C, 1, ...) and
    each broadcast_in_dim of one along dim 1."""
    found = {}
    for e in eqns:
        x = e.inputs[0] if e.inputs else None
        if not (isinstance(x, Var) and x.type.ndim == 1):
            continue
        shape = tuple(e.outputs[0].type.shape)
        if e.prim.name == "reshape" and len(shape) > 2 and shape[1] == x.type.shape[0] \
                and all(n == 1 for i, n in enumerate(shape) if i != 1):
            found[e.outputs[0]] = (x, e)
        elif e.prim.name == "broadcast_in_dim" and tuple(e.params["broadcast_dimensions"]) == (1,):
            found[e.outputs[0]] = (x, e)
    return found


def fuse_bias_convs(eqns, live):
    """Each add of a conv's result (read by nothing else) and its per-channel bias of the same
    dtype, as one BIAS_CONV equation in the add's place (the bias's reshape dropped when
    nothing else reads it)."""
    made, reads = {}, {}
    for e in eqns:
        for a in e.inputs:
            if isinstance(a, Var):
                reads[a] = reads.get(a, 0) + 1
        if e.prim is conv_p and e.inputs[0].type.dtype == e.inputs[1].type.dtype:
            made[e.outputs[0]] = e
    if not made:
        return eqns
    biases = _channel_biases(eqns)
    dropped, out = set(), []
    for e in eqns:
        if e.prim.name == "add" and len(e.inputs) == 2 and all(isinstance(a, Var) for a in e.inputs):
            for pos in (0, 1):
                d, b = e.inputs[pos], e.inputs[1 - pos]
                conv, bias = made.get(d), biases.get(b)
                if (conv is not None and bias is not None and reads[d] == 1 and d not in live
                        and e.outputs[0].type.shape == d.type.shape and bias[0].type.shape == (d.type.shape[1],)
                        and bias[0].type.dtype == d.type.dtype):
                    dropped.add(id(conv))
                    if reads[b] == 1 and b not in live:
                        dropped.add(id(bias[1]))
                    e = Eqn(BIAS_CONV, [*conv.inputs, bias[0]], e.outputs, conv.params)
                    break
        out.append(e)
    return [e for e in out if id(e) not in dropped] if dropped else eqns


# ---------------------------------------------------------------- a conv's two cotangents: one kernel

class _ConvBackward:
    """A conv's input and weight cotangents of one cotangent as one
    `convolution_backward(ct, x, w, ...)` (torch's backward kernel computes both from one pass
    setup; autograd calls it so). Operands (ct, x, w); outputs (input ct, weight ct); params:
    the forward conv's."""
    name = "conv_backward"
    multiple_results = True
    emit = None
    impl = staticmethod(conv_backward_both)


CONV_BACKWARD = _ConvBackward()


def _conv_cotangent_pair(gx_eqn, gw_eqn):
    """Whether gx_eqn (a conv of the cotangent with the weight) is the input cotangent of the
    forward conv whose weight cotangent gw_eqn computes from the same cotangent, landing on
    the input's shape (convolution_backward's grad_input; a cropped or padded one is not)."""
    p, q = gx_eqn.params, gw_eqn.params
    ct, w = gx_eqn.inputs
    gct, x = gw_eqn.inputs
    return (ct is gct and isinstance(w, Var) and isinstance(x, Var) and p["transposed"] != q["transposed"]
            and all(p[k] == q[k] for k in ("stride", "padding", "dilation", "groups"))
            and tuple(w.type.shape) == tuple(q["shape"]) and gx_eqn.outputs[0].type.shape == x.type.shape
            and ct.type.dtype == w.type.dtype == x.type.dtype)


def fuse_conv_backwards(eqns, live):
    """Each pair (conv of a cotangent with w, conv_weight_grad of that cotangent and x) that
    makes one forward conv's input and weight cotangents, as one CONV_BACKWARD equation, at
    the later one's place when nothing between them reads the earlier one's result."""
    grads = [i for i, e in enumerate(eqns) if e.prim is conv_weight_grad_p and isinstance(e.inputs[0], Var)]
    if not grads:
        return eqns
    by_ct = {}
    for i, e in enumerate(eqns):
        if e.prim is conv_p and isinstance(e.inputs[0], Var):
            by_ct.setdefault(e.inputs[0], []).append(i)
    placed, dropped = {}, set()
    for j in grads:
        for i in by_ct.get(eqns[j].inputs[0], ()):
            if i in dropped or not _conv_cotangent_pair(eqns[i], eqns[j]):
                continue
            first, last = sorted((i, j))
            early = eqns[first].outputs[0]
            if any(early in eqns[k].inputs for k in range(first + 1, last)):
                continue
            gx, gw = eqns[i], eqns[j]
            placed[last] = Eqn(CONV_BACKWARD, [gx.inputs[0], gw.inputs[1], gx.inputs[1]],
                               [gx.outputs[0], gw.outputs[0]], _forward_conv_params(gw.params))
            dropped.update((i, j))
            break
    if not placed:
        return eqns
    return [placed.get(k, e) for k, e in enumerate(eqns) if k in placed or k not in dropped]


def _forward_conv_params(q):
    return {k: q[k] for k in ("stride", "padding", "dilation", "transposed", "output_padding", "groups")}


# ---------------------------------------------------------------- adjacent zero pads summed: one cat

def concat_summed_pads(eqns, live):
    """add(pad(a), pad(b)) of zero pads that put a and b side by side along one dim, each pad
    read only there, as one pad of torch.cat([a, b]) (no pad when the pieces fill the
    result): the transpose of slicing a value into adjacent pieces (split, chunk, a packed
    q/k/v projection), whose cotangent was one zero-filled tensor per piece, summed."""
    reads = {}
    for e in eqns:
        for a in e.inputs:
            if isinstance(a, Var):
                reads[a] = reads.get(a, 0) + 1
    pads, dropped, out = {}, set(), []
    for e in eqns:
        name = e.prim.name
        if name == "pad" and isinstance(e.inputs[0], Var) and _zero_placement(e.params):
            pads[e.outputs[0]] = (e.params["config"], [e.inputs[0]], [e])
        elif name == "add" and len(e.inputs) == 2 and all(
                isinstance(a, Var) and a in pads and reads[a] == 1 and a not in live for a in e.inputs):
            merged = _side_by_side(pads[e.inputs[0]], pads[e.inputs[1]], e.outputs[0].type.shape)
            if merged is not None:
                config, pieces, axis = merged
                for a in e.inputs:
                    dropped.update(id(d) for d in pads[a][2])
                out_var = e.outputs[0]
                whole = all(c == (0, 0, 0) for c in config)
                cat_var = out_var if whole else Var(out_var.type.with_shape(
                    [n - lo - hi for n, (lo, hi, _) in zip(out_var.type.shape, config)]))
                made = [Eqn(concatenate_p, pieces, [cat_var], {"axis": axis})]
                if not whole:
                    made.append(Eqn(pad_p, [cat_var], [out_var], {"config": config, "value": 0}))
                    pads[out_var] = (config, pieces, made)
                out.extend(made)
                continue
        out.append(e)
    return [e for e in out if id(e) not in dropped] if dropped else eqns


def _zero_placement(params) -> bool:
    """A pad that places its operand in zeros (no interior padding, no cropping)."""
    return params["value"] == 0 and all(lo >= 0 and hi >= 0 and not i for lo, hi, i in params["config"])


def _side_by_side(x, y, shape):
    """(config, pieces, axis) of one zero pad holding pads x and y's pieces, where x and y
    differ only in where they place their pieces along one axis and those places are
    adjacent; else None."""
    (cx, px, _), (cy, py, _) = x, y
    differ = [d for d, (a, b) in enumerate(zip(cx, cy)) if a != b]
    if len(differ) != 1:
        return None
    d = differ[0]
    nx, ny = shape[d] - cx[d][0] - cx[d][1], shape[d] - cy[d][0] - cy[d][1]
    if cx[d][0] + nx == cy[d][0]:
        first, second, lo = px, py, cx[d][0]
    elif cy[d][0] + ny == cx[d][0]:
        first, second, lo = py, px, cy[d][0]
    else:
        return None
    config = list(cx)
    config[d] = (lo, shape[d] - lo - nx - ny, 0)
    return tuple(config), first + second, d
