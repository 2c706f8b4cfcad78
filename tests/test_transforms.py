"""Every public transform against torch.func (float64) as the oracle, with pytrees, argnums,
has_aux, chunking, named axes and collectives, randomness, symbolic zeros, integer inputs,
and the error messages users see for bad input."""
from __future__ import annotations

import collections

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._pytree import tree_leaves, tree_map

import functx
import torch.func as tf

F64 = torch.float64


def close(a, b, atol=1e-9, rtol=1e-7):
    la, lb = tree_leaves(a), tree_leaves(b)
    assert len(la) == len(lb), (len(la), len(lb))
    for x, y in zip(la, lb):
        assert isinstance(x, torch.Tensor) and not isinstance(x, functx.TracerTensor), type(x)
        assert x.shape == y.shape and x.dtype == y.dtype, (x.shape, y.shape, x.dtype, y.dtype)
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol)


def rnd(*shape, seed=None):
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.randn(*shape, dtype=F64, generator=g)


# A small menu of functions (scalar and vector valued), all smooth.
def f_scalar(x):
    return (torch.tanh(x) ** 2 * x.exp()).sum() + (x.sin() * x).mean()


def f_vec(x):
    return torch.cat([x.sin() * x.cos(), (x ** 3).cumsum(0)[:2]])


def f_two(x, y):
    return (x @ y).tanh().sum() + (x ** 2).sum() * y.sum()


X = rnd(4, seed=0)
A = rnd(3, 4, seed=1)
B = rnd(4, 2, seed=2)


# ---------------------------------------------------------------- grad / value_and_grad

def test_grad_value_and_grad():
    close(functx.grad(f_scalar)(X), tf.grad(f_scalar)(X))
    v, g = functx.value_and_grad(f_scalar)(X)
    vr, gr = tf.grad_and_value(f_scalar)(X)[::-1]
    close((v, g), (vr, gr))


@pytest.mark.parametrize("argnums", [0, 1, (0,), (0, 1), (1, 0), -1])
def test_grad_argnums(argnums):
    close(functx.grad(f_two, argnums=argnums)(A, B), tf.grad(f_two, argnums=argnums)(A, B))


def test_grad_has_aux_and_pytrees():
    def f(params, x):
        out = torch.tanh(x @ params["w"] + params["b"])
        return (out ** 2).sum(), {"out": out}
    params = {"w": rnd(4, 2, seed=3), "b": rnd(2, seed=4)}
    (g, aux), (gr, auxr) = functx.grad(f, has_aux=True)(params, A), tf.grad(f, has_aux=True)(params, A)
    close(g, gr)
    close(aux["out"], auxr["out"])
    (v, aux2), g2 = functx.value_and_grad(f, has_aux=True)(params, A)
    close(v, f(params, A)[0])
    close(g2, gr)
    assert not isinstance(aux2["out"], functx.TracerTensor)


def test_grad_namedtuple_and_registered_node():
    Pt = collections.namedtuple("Pt", "a b")

    class Box:
        def __init__(self, u, v, tag):
            self.u, self.v, self.tag = u, v, tag

    functx.register_pytree_node(Box, lambda b: ((b.u, b.v), b.tag), lambda tag, ch: Box(ch[0], ch[1], tag))

    def f(p, box):
        return (p.a * box.u).sum() * box.tag + (p.b ** 2 * box.v).sum()
    p, box = Pt(rnd(3, seed=5), rnd(3, seed=6)), Box(rnd(3, seed=7), rnd(3, seed=8), 2.0)
    g = functx.grad(f, argnums=(0, 1))(p, box)
    assert isinstance(g[0], Pt) and isinstance(g[1], Box) and g[1].tag == 2.0
    ref_p = tf.grad(lambda a, b: f(Pt(a, b), box), argnums=(0, 1))(p.a, p.b)
    ref_box = tf.grad(lambda u, v: f(p, Box(u, v, 2.0)), argnums=(0, 1))(box.u, box.v)
    close((g[0].a, g[0].b, g[1].u, g[1].v), ref_p + ref_box)
    # vmap over a registered node and returning one
    out = functx.vmap(lambda b: Box(b.u * 2, b.v + 1, b.tag))(Box(rnd(2, 3), rnd(2, 3), "t"))
    assert isinstance(out, Box) and out.tag == "t" and out.u.shape == (2, 3)


# ---------------------------------------------------------------- vjp / jvp / linearize / linear_transpose

def test_vjp_jvp_linearize():
    ct = rnd(6, seed=9)
    out, fn = functx.vjp(f_vec, X)
    outr, fnr = tf.vjp(f_vec, X)
    close(out, outr)
    close(fn(ct), fnr(ct))
    assert isinstance(fn(ct), tuple)
    t = rnd(4, seed=10)
    close(functx.jvp(f_vec, (X,), (t,)), tf.jvp(f_vec, (X,), (t,)))
    y, f_jvp = functx.linearize(f_vec, X)
    yr, f_jvpr = tf.linearize(f_vec, X)
    close(y, yr)
    close(f_jvp(t), f_jvpr(t))


def test_linearize_then_vmap_of_f_jvp():
    T = rnd(5, 4, seed=11)
    _, f_jvp = functx.linearize(f_vec, X)
    close(functx.vmap(f_jvp)(T), tf.vmap(lambda t: tf.jvp(f_vec, (X,), (t,))[1])(T))


def test_vjp_jvp_has_aux_and_pytrees():
    def f(d):
        y = {"s": d["a"].sin() * d["b"], "c": (d["a"] * d["b"]).cumsum(0)}
        return y, d["a"].detach() * 0 + 1
    d = {"a": rnd(3, seed=12), "b": rnd(3, seed=13)}
    out, fn, aux = functx.vjp(f, d, has_aux=True)
    outr, fnr, auxr = tf.vjp(f, d, has_aux=True)
    close((out, aux), (outr, auxr))
    ct = {"s": rnd(3, seed=14), "c": rnd(3, seed=15)}
    close(fn(ct), fnr(ct))
    t = {"a": rnd(3, seed=16), "b": rnd(3, seed=17)}
    close(functx.jvp(f, (d,), (t,), has_aux=True), tf.jvp(f, (d,), (t,), has_aux=True))


def test_linear_transpose():
    M = rnd(3, 4, seed=18)

    def lin(x, y):
        return {"o": M @ x - 2 * y[:3], "p": x.flip(0).cumsum(0)}
    x0, y0 = torch.zeros(4, dtype=F64), torch.zeros(5, dtype=F64)
    t_fn = functx.linear_transpose(lin, x0, y0)
    ct = {"o": rnd(3, seed=19), "p": rnd(4, seed=20)}
    got = t_fn(ct)
    # oracle: a linear map's vjp is its transpose
    _, pull = tf.vjp(lin, x0, y0)
    close(got, pull(ct))


# ---------------------------------------------------------------- Jacobians and Hessians

@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_jacfwd_jacrev_chunk(chunk_size):
    close(functx.jacfwd(f_vec, chunk_size=chunk_size)(X), tf.jacfwd(f_vec)(X))
    close(functx.jacrev(f_vec, chunk_size=chunk_size)(X), tf.jacrev(f_vec, chunk_size=chunk_size)(X))


class _MaskByNonzero(torch.autograd.Function):
    """x * (x > 0) whose backward and jvp select with nonzero(): a data-dependent shape on
    the batched cotangent / tangent, which vmap cannot run."""
    @staticmethod
    def forward(x):
        return x * (x > 0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def _select(x, v):
        out = torch.zeros_like(v)
        idx = (v * (x > 0)).nonzero(as_tuple=True)
        out[idx] = v[idx]
        return out

    @staticmethod
    def backward(ctx, g):
        return _MaskByNonzero._select(ctx.saved_tensors[0], g)

    @staticmethod
    def jvp(ctx, t):
        return _MaskByNonzero._select(ctx.saved_tensors[0], t)


@pytest.mark.parametrize("jac", ["jacrev", "jacfwd"])
def test_jacobian_chunk_size_one_runs_rows_without_vmap(jac):
    """chunk_size=1 is torch.func's row-by-row loop: no vmap, so a rule with a data-dependent
    shape works (with chunks of 2 vmap raises)."""
    def f(x):
        return _MaskByNonzero.apply(x.sin()) * x.sum()
    x = torch.randn(5, dtype=torch.float64)
    want = torch.autograd.functional.jacobian(f, x)
    jacobian = getattr(functx, jac)
    close(jacobian(f, chunk_size=1)(x), want)
    got, aux = jacobian(lambda x: (f(x), x.cos()), chunk_size=1, has_aux=True)(x)
    close(got, want)
    close(aux, x.cos())
    # chunks of 2 basis rows whose nonzero() counts differ (signs alternate): vmap raises, as
    # a loop over the rows would at torch.stack; where a chunk's counts agree it runs
    with pytest.raises(Exception, match="nonzero|single value"):
        jacobian(f, chunk_size=2)(torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("argnums", [0, (0, 1), (1,)])
def test_jacobians_argnums_pytrees(argnums):
    def f(x, y):
        return {"a": (x @ y).sin(), "b": (x.sum(0) * y.sum(1)).exp()}
    close(functx.jacfwd(f, argnums=argnums)(A, B), tf.jacfwd(f, argnums=argnums)(A, B))
    close(functx.jacrev(f, argnums=argnums)(A, B), tf.jacrev(f, argnums=argnums)(A, B))
    close(functx.hessian(lambda x, y: f(x, y)["a"].sum(), argnums=argnums)(A, B),
          tf.hessian(lambda x, y: f(x, y)["a"].sum(), argnums=argnums)(A, B))


def test_jacobians_has_aux_and_dict_input():
    def f(d):
        return (d["x"] ** 2).sin(), {"aux": d["x"].sum()}
    d = {"x": rnd(3, seed=21)}
    close(functx.jacfwd(f, has_aux=True)(d), tf.jacfwd(f, has_aux=True)(d))
    close(functx.jacrev(f, has_aux=True)(d), tf.jacrev(f, has_aux=True)(d))

    def s(d):
        return (d["x"] ** 3).sum(), d["x"].mean()
    close(functx.hessian(s, has_aux=True)(d), tf.jacfwd(tf.jacrev(s, has_aux=True), has_aux=True)(d))


def test_hessian():
    close(functx.hessian(f_scalar)(X), tf.hessian(f_scalar)(X))
    close(functx.hessian(f_two, argnums=(0, 1))(A, B), tf.hessian(f_two, argnums=(0, 1))(A, B))


# ---------------------------------------------------------------- vmap

def test_vmap_in_out_axes_pytrees_and_aliases():
    def f(d, s, y):
        return {"u": d["a"] * s + y, "v": (d["b"] * 2).cos()}, d["a"].sum()
    d = {"a": rnd(3, 5, seed=22), "b": rnd(3, seed=23)}
    s, y = rnd(5, seed=24), rnd(5, 3, seed=25)
    in_axes = ({"a": 0, "b": None}, None, 1)
    out_axes = ({"u": 1, "v": None}, 0)
    got = functx.vmap(f, in_axes=in_axes, out_axes=out_axes)(d, s, y)
    ref = tf.vmap(f, in_dims=in_axes, out_dims=out_axes)(d, s, y)
    close(got, ref)
    close(functx.vmap(f, in_dims=in_axes, out_dims=out_axes)(d, s, y), ref)
    close(functx.vmap(f, in_axes=[{"a": 0, "b": None}, None, 1], out_axes=out_axes)(d, s, y), ref)


@given(st.integers(1, 3), st.integers(-3, 2), st.integers(0, 10**6))
def test_vmap_out_axes_negative(size, out_axis, seed):
    x = rnd(size, 2, 3, seed=seed)
    f = lambda a: a.sin().T   # noqa: E731
    close(functx.vmap(f, out_axes=out_axis)(x), tf.vmap(f, out_dims=out_axis)(x))


def test_vmap_axis_size_and_unbatched():
    c = rnd(3, seed=26)
    close(functx.vmap(lambda: c * 2, axis_size=4)(), c.expand(4, 3) * 2)
    close(functx.vmap(lambda a: a * 2, in_axes=None, axis_size=2)(c), torch.stack([c * 2] * 2))
    close(functx.vmap(lambda a: a * 2, in_axes=None, out_axes=None, axis_size=2)(c), c * 2)


def test_vmap_kwargs_batched_along_axis_0():
    x, w = rnd(4, 3, seed=27), rnd(4, 3, seed=28)
    close(functx.vmap(lambda a, scale: a * scale)(x, scale=w), x * w)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 10])
def test_vmap_chunk_size(chunk_size):
    x = rnd(5, 3, seed=29)
    f = lambda a, b: (a.sin() * b, a.sum())   # noqa: E731
    close(functx.vmap(f, in_axes=(0, None), out_axes=(1, 0), chunk_size=chunk_size)(x, X[:3]),
          tf.vmap(f, in_dims=(0, None), out_dims=(1, 0), chunk_size=chunk_size)(x, X[:3]))


def test_vmap_nested_and_vmap_of_grad():
    x = rnd(2, 3, 4, seed=30)
    close(functx.vmap(functx.vmap(f_scalar))(x), tf.vmap(tf.vmap(f_scalar))(x))
    close(functx.vmap(functx.vmap(functx.grad(f_scalar)), in_axes=1)(x),
          tf.vmap(tf.vmap(tf.grad(f_scalar)), in_dims=1)(x))


# ---------------------------------------------------------------- named axes and collectives

def test_collectives_psum_pmean_pmax_all_gather_axis_index():
    x = rnd(4, 3, seed=31)
    close(functx.vmap(lambda a: functx.psum(a, "i"), axis_name="i")(x), x.sum(0).expand(4, 3))
    close(functx.vmap(lambda a: functx.pmean(a, "i"), axis_name="i")(x), x.mean(0).expand(4, 3))
    close(functx.vmap(lambda a: functx.pmax(a, "i"), axis_name="i")(x), x.amax(0).expand(4, 3))
    close(functx.vmap(lambda a: functx.all_gather(a, "i"), axis_name="i")(x), x.expand(4, 4, 3))
    close(functx.vmap(lambda a: functx.axis_index("i") + a.sum() * 0, axis_name="i")(x),
          torch.arange(4, dtype=F64))
    # a normalisation across the batch, differentiated per example and as a whole
    norm = lambda a: a / functx.psum(a, "i").sum()   # noqa: E731
    ref = lambda x_: x_ / x_.sum()   # noqa: E731
    close(functx.vmap(norm, axis_name="i")(x.abs()), ref(x.abs()))
    g = functx.grad(lambda x_: (functx.vmap(norm, axis_name="i")(x_) ** 2).sum())(x.abs())
    close(g, tf.grad(lambda x_: (ref(x_) ** 2).sum())(x.abs()))
    j = functx.jacrev(lambda x_: functx.vmap(lambda a: functx.all_gather(a, "i").sum(0) * a, axis_name="i")(x_))(x)
    jr = tf.jacrev(lambda x_: x_.sum(0) * x_)(x)
    close(j, jr)


def test_grad_inside_named_vmap():
    """grad of a function with collectives, inside the vmap that owns the axis."""
    x = rnd(3, 4, seed=32)
    got = functx.vmap(functx.grad(lambda a: (functx.psum(a, "i") * a.sin()).sum()), axis_name="i")(x)
    # d/da_i sum(psum(a) * sin a_i) with psum's transpose summing over the axis
    ref = tf.grad(lambda xx: (xx.sum(0, keepdim=True) * xx.sin()).sum())(x)
    close(got, ref)
    got2 = functx.vmap(functx.grad(lambda a: (functx.all_gather(a, "i")[0] * a).sum()), axis_name="i")(x)
    ref2 = tf.grad(lambda xx: (xx[0:1] * xx).sum())(x)
    close(got2, ref2)
    got3 = functx.vmap(functx.grad(lambda a: (functx.pmax(a, "i") * a).sum()), axis_name="i")(x)
    ref3 = tf.grad(lambda xx: (xx.amax(0, keepdim=True) * xx).sum())(x)
    close(got3, ref3)


def test_nested_vmaps_different_axis_names():
    x = rnd(2, 3, 4, seed=33)

    def inner(a):
        return (functx.psum(a, "j") * 1.0 + functx.psum(a, "i") * 10.0
                + functx.axis_index("i") * 100.0 + functx.axis_index("j") * 1000.0)
    got = functx.vmap(functx.vmap(inner, axis_name="j"), axis_name="i")(x)
    ref = (x.sum(1, keepdim=True) + 10 * x.sum(0, keepdim=True)
           + 100 * torch.arange(2, dtype=F64)[:, None, None] + 1000 * torch.arange(3, dtype=F64)[None, :, None])
    close(got, ref.expand_as(x))
    # the outer axis gathered from inside the inner vmap, unbatched by the inner one
    y = rnd(2, 4, seed=34)
    got = functx.vmap(lambda a: functx.vmap(lambda b: functx.all_gather(a, "i").sum(0) * b, axis_name="j")(
        torch.ones(3, 4, dtype=F64)), axis_name="i")(y)
    close(got, y.sum(0).expand(2, 3, 4))
    # same axis name shadowed: the innermost wins
    got = functx.vmap(functx.vmap(lambda a: functx.psum(a, "k"), axis_name="k"), axis_name="k")(x)
    close(got, x.sum(1, keepdim=True).expand_as(x))


def test_collective_outside_its_vmap_raises():
    with pytest.raises(functx.FunctxError, match="axis_name='nope'"):
        functx.vmap(lambda a: functx.psum(a, "nope"), axis_name="i")(X)
    with pytest.raises(functx.FunctxError, match="axis_name='i'"):
        functx.psum(X, "i")


# ---------------------------------------------------------------- randomness

def test_vmap_randomness_modes():
    x = torch.zeros(4, 3, dtype=F64)
    with pytest.raises(functx.FunctxError, match="randomness"):
        functx.vmap(lambda a: a + torch.randn(3, dtype=F64))(x)
    same = functx.vmap(lambda a: a + torch.randn(3, dtype=F64), randomness="same")(x)
    assert torch.equal(same, same[0].expand(4, 3))
    diff = functx.vmap(lambda a: a + torch.rand(3, dtype=F64), randomness="different")(x)
    assert diff.shape == (4, 3) and not torch.equal(diff[0], diff[1])
    like = functx.vmap(lambda a: torch.randn_like(a), randomness="different")(x)
    assert like.shape == (4, 3) and not torch.equal(like[0], like[1])
    with pytest.raises(ValueError, match="randomness"):
        functx.vmap(torch.sin, randomness="sometimes")


# ---------------------------------------------------------------- symbolic zeros, integer inputs

def test_outputs_independent_of_inputs_give_zero_derivatives():
    c = rnd(3, seed=35)
    const = lambda x: c * 2   # noqa: E731
    close(functx.jacfwd(const)(X), torch.zeros(3, 4, dtype=F64))
    close(functx.jacrev(const)(X), torch.zeros(3, 4, dtype=F64))
    close(functx.grad(lambda x: c.sum())(X), torch.zeros(4, dtype=F64))
    close(functx.jvp(const, (X,), (X,))[1], torch.zeros(3, dtype=F64))
    close(functx.vjp(const, X)[1](c), (torch.zeros(4, dtype=F64),))
    close(functx.hessian(lambda x: c.sum())(X), torch.zeros(4, 4, dtype=F64))
    close(functx.grad(lambda x, y: (x * 2).sum(), argnums=(0, 1))(X, X), (torch.full((4,), 2.0, dtype=F64),
                                                                          torch.zeros(4, dtype=F64)))
    close(functx.grad(lambda x: functx.stop_gradient(x).sum() + x.detach().sum())(X), torch.zeros(4, dtype=F64))
    close(functx.grad(lambda x: functx.grad(lambda y: (y * 3).sum())(x).sum())(X), torch.zeros(4, dtype=F64))
    _, f_jvp = functx.linearize(const, X)
    close(f_jvp(X), torch.zeros(3, dtype=F64))


def test_integer_inputs():
    idx = torch.tensor([2, 0, 1])
    f = lambda x, i: (x[i] * x[:3]).sum() + i.sum()   # noqa: E731
    close(functx.grad(f)(X, idx), tf.grad(f)(X, idx))
    out, fn = functx.vjp(f, X, idx)
    ct = fn(torch.tensor(1.0, dtype=F64))
    close(ct[0], tf.grad(f)(X, idx))
    assert ct[1].dtype == torch.int64 and not ct[1].any()
    o, t = functx.jvp(f, (X, idx), (X, torch.zeros(3, dtype=torch.int64)))
    close(t, tf.jvp(lambda x: f(x, idx), (X,), (X,))[1])
    close(functx.vmap(f, in_axes=(None, 0))(X, torch.tensor([[0, 1, 2], [2, 2, 0]])),
          tf.vmap(f, in_dims=(None, 0))(X, torch.tensor([[0, 1, 2], [2, 2, 0]])))
    close(functx.jacrev(lambda x, i: x[i] * 2)(X, idx), tf.jacrev(lambda x, i: x[i] * 2)(X, idx))
    close(functx.jacfwd(lambda x, i: x[i] * 2)(X, idx), tf.jacfwd(lambda x, i: x[i] * 2)(X, idx))
    close(functx.vmap(lambda i: i * 2 + 1)(idx), idx * 2 + 1)


# ---------------------------------------------------------------- error messages

def _raises(exc, pattern, fn):
    with pytest.raises(exc, match=pattern) as info:
        fn()
    return str(info.value)


def test_error_wrong_in_axes():
    def f(x, d):
        return x + d["w"]
    msg = _raises(ValueError, r"in_axes=2 is out of range", lambda: functx.vmap(f, in_axes=(0, {"w": 2}))(X, {"w": X}))
    assert "'d'" in msg and "['w']" in msg
    _raises(ValueError, r"in_axes is a tuple of length 1, but f got 2", lambda: functx.vmap(f, in_axes=(0,))(X, {"w": X}))
    _raises(ValueError, r"tree prefix", lambda: functx.vmap(f, in_axes=(0, {"v": 0}))(X, {"w": X}))
    _raises(TypeError, r"in_axes must be an int, None", lambda: functx.vmap(f, in_axes="x"))
    _raises(TypeError, r"in_axes maps argument 's'", lambda: functx.vmap(lambda x, s: x * s)(X, 2.0))
    _raises(ValueError, r"all in_axes are None", lambda: functx.vmap(torch.sin, in_axes=None)(X))
    _raises(ValueError, r"out of range for .*'x'.* shape \(\)", lambda: functx.vmap(lambda x: x)(torch.tensor(1.0)))


def test_error_mismatched_batch_sizes():
    msg = _raises(ValueError, r"different batch sizes", lambda: functx.vmap(lambda a, b: a + b[0])(X, rnd(3, 4)))
    assert "'a'" in msg and "'b'" in msg and "size 4" in msg and "size 3" in msg
    _raises(ValueError, r"axis_size=5 but the mapped arguments have size 4",
            lambda: functx.vmap(torch.sin, axis_size=5)(X))


def test_error_out_axes():
    _raises(ValueError, r"out_axes=3 is out of range", lambda: functx.vmap(torch.sin, out_axes=3)(X))
    _raises(ValueError, r"out_axes=None for an output that depends", lambda: functx.vmap(torch.sin, out_axes=None)(X))


def test_error_non_tensor_outputs():
    _raises(TypeError, r"functx.vmap: output of f: expected tensors.*int", lambda: functx.vmap(lambda a: 3)(X))
    _raises(TypeError, r"functx.grad: output of f: expected tensors.*float", lambda: functx.grad(lambda a: 3.0)(X))
    _raises(TypeError, r"functx.vjp: output of f: expected tensors.*str",
            lambda: functx.vjp(lambda a: (a, "s"), X))
    _raises(TypeError, r"functx.jvp: output of f: expected tensors", lambda: functx.jvp(lambda a: [a, 1], (X,), (X,)))
    _raises(TypeError, r"output leaf 0 .*of f is a int", lambda: functx.jit(lambda a: 1)(X))


def test_error_non_scalar_grad_output():
    msg = _raises(TypeError, r"functx.grad: f must return a scalar", lambda: functx.grad(lambda a: a * 2)(X))
    assert "(4,)" in msg and "jacrev" in msg
    _raises(TypeError, r"floating-point scalar",
            lambda: functx.grad(lambda a: (a > 0).sum())(X))
    _raises(TypeError, r"floating-point inputs", lambda: functx.grad(lambda a: a.sum())(torch.ones(3, dtype=torch.int64)))
    _raises(TypeError, r"must return a pair", lambda: functx.grad(lambda a: a.sum(), has_aux=True)(X))
    _raises(ValueError, r"argnums=2 is out of range for 1", lambda: functx.grad(lambda a: a.sum(), argnums=2)(X))


def test_error_wrong_tangent_and_cotangent_shapes():
    _raises(ValueError, r"functx.jvp: tangent 0 has shape \(3,\), its primal has \(4,\)",
            lambda: functx.jvp(torch.sin, (X,), (rnd(3),)))
    _raises(ValueError, r"functx.jvp: tangent 0 has dtype torch.float32",
            lambda: functx.jvp(torch.sin, (X,), (X.float(),)))
    _raises(ValueError, r"same structure as primals", lambda: functx.jvp(torch.sin, (X,), ((X, X),)))
    _raises(TypeError, r"primals and tangents must be tuples", lambda: functx.jvp(torch.sin, X, X))
    _raises(ValueError, r"functx.vjp: cotangent 0 has shape \(3,\), the output has \(4,\)",
            lambda: functx.vjp(torch.sin, X)[1](rnd(3)))
    _raises(ValueError, r"cotangents must have the structure", lambda: functx.vjp(torch.sin, X)[1]((X, X)))
    _raises(ValueError, r"functx.linearize: tangent 0 has shape \(3,\), its primal has \(4,\)",
            lambda: functx.linearize(torch.sin, X)[1](rnd(3)))


# ---------------------------------------------------------------- tensors the function makes and fills

def _residuals(x):
    r = torch.zeros(3, dtype=x.dtype)          # filled in place, as physics code assembles residuals
    r[0] = x[0] ** 2 - x[1]
    r[1] = torch.sin(x[1]) * x[2]
    rows = torch.empty(2, 3, dtype=x.dtype)
    rows[1] = x                                 # through a view of a made tensor
    rows[0].copy_(x * 2)
    r[2:] = rows.sum()
    return r


def _residuals_ref(x):
    return torch.stack([x[0] ** 2 - x[1], torch.sin(x[1]) * x[2], 3 * x.sum()])


def test_writing_traced_values_into_tensors_the_function_makes():
    """torch.zeros / torch.empty inside a transformed function may be filled with traced
    values (torch.func.grad allows it; vmap and jit here too): those factories return wrappers."""
    x, xs = rnd(3, seed=50), rnd(4, 3, seed=51)
    close(functx.jacrev(_residuals)(x), tf.jacrev(_residuals_ref)(x))
    close(functx.jacfwd(_residuals)(x), tf.jacrev(_residuals_ref)(x))
    close(functx.jit(functx.jacrev(_residuals))(x), tf.jacrev(_residuals_ref)(x))
    close(functx.vmap(_residuals)(xs), tf.vmap(_residuals_ref)(xs))
    close(functx.jit(functx.vmap(functx.hessian(lambda x: _residuals(x).sum())))(xs),
          tf.vmap(tf.hessian(lambda x: _residuals_ref(x).sum()))(xs))


def test_tensors_the_function_makes_stay_readable_by_python_under_jit():
    """Under jit, work on made tensors alone runs at trace time (as plain torch did), so
    Python may read it: a constant boolean mask, an int of a sum, a branch."""
    def f(x):
        mask = torch.zeros(5, dtype=torch.bool)
        mask[2] = True
        n = int(torch.ones(3).sum())
        if torch.zeros(2).sum() == 0:
            return x[mask] * n
        return x
    x = rnd(5, seed=52)
    close(functx.jit(f)(x), f(x))
    close(functx.vmap(f)(torch.stack([x, x + 1])), torch.stack([f(x), f(x + 1)]))


def test_sampling_from_a_made_tensor_follows_vmap_randomness():
    """torch.poisson(torch.full(...)): the rate is a made tensor (a wrapper) with no traced
    value; its draw follows `randomness` like any plain draw."""
    xs = rnd(3, 2, seed=53)
    f = lambda x: torch.poisson(torch.full((64,), 50.0, dtype=x.dtype)) + 0 * x.sum()  # noqa: E731
    different = functx.vmap(f, randomness="different")(xs)
    assert not torch.equal(different[0], different[1])
    same = functx.vmap(f, randomness="same")(xs)
    assert torch.equal(same[0], same[1])
    with pytest.raises(functx.FunctxError, match="randomness"):
        functx.vmap(f)(xs)


# ---------------------------------------------------------------- traced 0-d integer indices

def test_indexing_with_a_traced_integer_scalar():
    """x[i] with a 0-d integer tensor i that is traced (one index per example under vmap, an
    argument under jit): torch's indexing reads it with .item(); here it selects as a
    one-element index tensor. Against a Python loop (torch.func's vmap(grad) of this fails)."""
    x = rnd(3, 4, 5, 6, seed=60)
    i, j = torch.tensor([0, 1, 2]), torch.tensor([3, 2, 0])
    loop = lambda f: torch.stack([f(x[k], i[k], j[k]) for k in range(3)])  # noqa: E731
    for f in (lambda a, i, j: a[i], lambda a, i, j: a[:, i], lambda a, i, j: a[i, :, j],
              lambda a, i, j: a[..., i], lambda a, i, j: a[None, i], lambda a, i, j: a[i, [0, 2]],
              lambda a, i, j: a[1:, i]):
        close(functx.vmap(f)(x, i, j), loop(f))

    def put(a, i, j):
        a = a.clone()
        a[i] = 0.0
        a[:, i] = a[:, 0] * 2
        return a
    close(functx.vmap(put)(x, i, j), loop(put))
    grad = lambda a, i, j: functx.grad(lambda a: (a[i] ** 2).sum())(a)  # noqa: E731
    close(functx.jit(functx.vmap(grad))(x, i, j),
          loop(lambda a, i, j: tf.grad(lambda a: (a[i] ** 2).sum())(a)))
    pick = functx.jit(lambda a, i: a[i])
    close(pick(x, torch.tensor(2)), x[2])
    close(pick(x, torch.tensor(1)), x[1])


def test_register_dataclass_and_pytree_node_class():
    """JAX's functx.tree_util.register_dataclass (static fields live in the treedef) and
    register_pytree_node_class, through grad, jit and vmap's in_axes."""
    import dataclasses
    from functx.tree_util import register_dataclass, register_pytree_node_class

    @register_dataclass
    @dataclasses.dataclass
    class Layer:
        w: torch.Tensor
        b: torch.Tensor
        act: str = dataclasses.field(default="tanh", metadata={"static": True})

    x, layer = rnd(5, 3, seed=70), Layer(rnd(3, 2, seed=71), rnd(2, seed=72))
    f = lambda l, x: (getattr(torch, l.act)(x @ l.w + l.b) ** 2).sum()  # noqa: E731
    g = functx.grad(f)(layer, x)
    assert type(g) is Layer and g.act == "tanh"
    close(g.w, tf.grad(lambda w: f(Layer(w, layer.b), x))(layer.w))
    close(functx.jit(functx.grad(f))(layer, x).b, g.b)
    ws = rnd(4, 3, 2, seed=73)
    close(functx.vmap(f, in_axes=(Layer(0, None, "tanh"), None))(Layer(ws, layer.b), x),
          torch.stack([f(Layer(w, layer.b), x) for w in ws]))

    @register_pytree_node_class
    class Power:
        def __init__(self, base, k):
            self.base, self.k = base, k

        def tree_flatten(self):
            return (self.base,), self.k

        @classmethod
        def tree_unflatten(cls, k, children):
            return cls(children[0], k)
    close(functx.grad(lambda p: (p.base ** p.k).sum())(Power(torch.ones(3, dtype=F64), 3)).base,
          torch.full((3,), 3.0, dtype=F64))


def test_a_made_tensor_written_into_a_closed_over_buffer():
    """buf.add_(torch.ones(2)) with buf closed over: the made tensor holds a plain value, so
    the write is a plain one, as in torch (eagerly it happens on every call; under jit it is
    refused, since it would happen once)."""
    buf = torch.zeros(2, dtype=F64)

    def f(x):
        buf.add_(torch.ones(2, dtype=F64))
        buf[0] = torch.zeros((), dtype=F64) + 5
        return (x * buf.sum()).sum()
    x = rnd(3, seed=80)
    close(functx.grad(f)(x), torch.full((3,), 6.0, dtype=F64))
    close(buf, torch.tensor([5.0, 1.0], dtype=F64))
    with pytest.raises(functx.FunctxError, match="closes over"):
        functx.jit(f)(x)
