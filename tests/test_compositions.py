"""Compositions of transforms vs torch.func's equivalent composition.

Hypothesis builds a random small function from a menu of torch ops and applies up to three
transforms (grad∘sum, jacfwd, jacrev, vmap, jvp-wrapped, hessian-of-scalar, jit); the same
composition of torch.func transforms is the oracle. Then the named cases from the issue,
each eagerly and under functx.jit.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import assume, given, note
from hypothesis import strategies as st
from torch.utils._pytree import tree_leaves

import functx
import torch.func as tf

F64 = torch.float64
N = 3


def close(a, b, atol=1e-8, rtol=1e-6):
    la, lb = tree_leaves(a), tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert type(x) is torch.Tensor, type(x)
        assert x.shape == y.shape and x.dtype == y.dtype, (x.shape, y.shape, x.dtype, y.dtype)
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol)


_M = torch.tensor([[0.5, -1.0, 0.3], [0.2, 0.8, -0.4], [-0.7, 0.1, 0.9]], dtype=F64)
_IDX = torch.tensor([2, 0, 1, 1])

# Shape-preserving ops on a vector of length N; all smooth almost everywhere.
MENU = {
    "sin": lambda x: torch.sin(x),
    "tanh": lambda x: torch.tanh(x),
    "exp_half": lambda x: torch.exp(0.5 * x),
    "square": lambda x: x ** 2,
    "cube_minus": lambda x: x ** 3 - x,
    "times_sum": lambda x: x * x.sum(),
    "softplus": lambda x: F.softplus(x),
    "sigmoid": lambda x: torch.sigmoid(x),
    "log1p_sq": lambda x: torch.log1p(x * x),
    "cumsum": lambda x: x.cumsum(0),
    "flip_mul": lambda x: x.flip(0) * x,
    "matvec": lambda x: _M @ x,
    "gather_sum": lambda x: x[_IDX][:N] + x[_IDX][1:],
    "leaky": lambda x: torch.where(x > 0, x, 0.1 * x),
    "softmax": lambda x: torch.softmax(x, 0),
    "logsumexp": lambda x: x - torch.logsumexp(x, 0),
    "sorted": lambda x: torch.sort(x * 1.5).values,
    "norm_div": lambda x: x / (1.0 + x.norm()),
    "roll_cat": lambda x: torch.cat([x[1:], x[:1]]) * x.cos(),
    "max_scaled": lambda x: x * x.amax(),
    "pow_pos": lambda x: (x * x + 0.5) ** 1.5,
    "clamp": lambda x: x.clamp(-1.5, 1.5) * x,
}

V = torch.tensor([0.3, -0.2, 0.5], dtype=F64)
SCALES = torch.tensor([1.0, -0.5], dtype=F64)


def _flat_sum(y):
    return y.sum()


def T_grad_sum(api):
    return lambda F_: api["grad"](lambda x: _flat_sum(F_(x)))


def T_jacfwd(api):
    return lambda F_: api["jacfwd"](F_)


def T_jacrev(api):
    return lambda F_: api["jacrev"](F_)


def T_vmap(api):
    # (N,) -> (2, *out): the input is batched by scaling, so every composition keeps (N,) inputs
    return lambda F_: (lambda x: api["vmap"](F_)(SCALES[:, None] * x[None, :]))


def T_jvp(api):
    return lambda F_: (lambda x: api["jvp"](F_, (x,), (V,))[1])


def T_hessian(api):
    return lambda F_: api["hessian"](lambda x: _flat_sum(F_(x)))


def T_jit(api):
    return lambda F_: api["jit"](F_)


TRANSFORMS = {"grad_sum": T_grad_sum, "jacfwd": T_jacfwd, "jacrev": T_jacrev, "vmap": T_vmap, "jvp": T_jvp,
              "hessian": T_hessian, "jit": T_jit}
FX = {"grad": functx.grad, "jacfwd": functx.jacfwd, "jacrev": functx.jacrev, "vmap": functx.vmap,
      "jvp": functx.jvp, "hessian": functx.hessian, "jit": functx.jit}
TF = {"grad": tf.grad, "jacfwd": tf.jacfwd, "jacrev": tf.jacrev, "vmap": tf.vmap, "jvp": tf.jvp,
      "hessian": tf.hessian, "jit": lambda f: f}


def _chain(names):
    ops = [MENU[n] for n in names]

    def f(x):
        for op in ops:
            x = op(x)
        return x
    return f


@given(ops=st.lists(st.sampled_from(sorted(MENU)), min_size=1, max_size=3),
       transforms=st.lists(st.sampled_from(sorted(TRANSFORMS)), min_size=1, max_size=3),
       seed=st.integers(0, 2**31 - 1), outer_jit=st.booleans())
def test_random_compositions(ops, transforms, seed, outer_jit):
    note(f"ops={ops} transforms={transforms} outer_jit={outer_jit}")
    f = _chain(ops)
    fx, ref = f, f
    for t in transforms:
        fx, ref = TRANSFORMS[t](FX)(fx), TRANSFORMS[t](TF)(ref)
    if outer_jit:
        fx = functx.jit(fx)
    x = torch.randn(N, dtype=F64, generator=torch.Generator().manual_seed(seed))
    try:
        want = ref(x)
    except RuntimeError as e:
        # torch.func itself fails on some higher-order nestings (norm's backward writes in
        # place: "modified by an inplace operation"); such an example has no oracle here, and
        # hypothesis counts it as rejected, not passed
        assume("inplace operation" not in str(e))
        raise
    close(fx(x), want)


# ---------------------------------------------------------------- the named compositions

def u(x):
    return torch.tanh(x).pow(2).sum() * x.norm() + (x[0] * x[-1]).sin()


def loss_scalar(x):
    return (x.sin() * x.exp()).sum() + (x ** 3).prod()


XB = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
X1 = XB[0]


def both(fn):
    """Run a composition eagerly and under functx.jit."""
    return [fn, functx.jit(fn)]


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_jit_vmap_grad(mode):
    fn = functx.vmap(functx.grad(loss_scalar))
    fn = functx.jit(fn) if mode == "jit" else fn
    close(fn(XB), tf.vmap(tf.grad(loss_scalar))(XB))


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_jacfwd_jacrev(mode):
    fn = functx.jacfwd(functx.jacrev(u))
    fn = functx.jit(fn) if mode == "jit" else fn
    close(fn(X1), tf.jacfwd(tf.jacrev(u))(X1))
    close(fn(X1), tf.hessian(u)(X1))


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_grad_grad_grad_grad(mode):
    def f(x):
        return torch.sin(x) * torch.exp(0.3 * x) + x ** 5 / 20
    fx = functx.grad(functx.grad(functx.grad(functx.grad(f))))
    fx = functx.jit(fx) if mode == "jit" else fx
    ref = tf.grad(tf.grad(tf.grad(tf.grad(f))))
    for v in (0.7, -1.3, 0.0):
        x = torch.tensor(v, dtype=F64)
        close(fx(x), ref(x))


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_vmap_trace_hessian_laplacian(mode):
    fn = functx.vmap(lambda x: torch.trace(functx.hessian(u)(x)))
    fn = functx.jit(fn) if mode == "jit" else fn
    close(fn(XB), tf.vmap(lambda x: torch.trace(tf.hessian(u)(x)))(XB))


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_per_sample_grads_functional_call(mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.LayerNorm(8), nn.Linear(8, 3)).double()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xb, yb):
        return F.cross_entropy(functx.functional_call(model, p, (xb[None],)), yb[None])
    xb = torch.randn(6, 4, dtype=F64)
    yb = torch.randint(0, 3, (6,))
    fn = functx.vmap(functx.grad(loss), in_axes=(None, 0, 0))
    fn = functx.jit(fn) if mode == "jit" else fn
    close(fn(params, xb, yb), tf.vmap(tf.grad(loss), in_dims=(None, 0, 0))(params, xb, yb))


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_vmap_of_vjp_fn(mode):
    def f(x):
        return torch.cat([x.sin() * x.sum(), x.cumsum(0) ** 2])

    def fx(x, cts):
        _, vjp_fn = functx.vjp(f, x)
        return functx.vmap(vjp_fn)(cts)
    fx = functx.jit(fx) if mode == "jit" else fx
    cts = torch.randn(4, 6, dtype=F64)
    _, vjp_r = tf.vjp(f, X1)
    close(fx(X1, cts), tf.vmap(vjp_r)(cts))


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_jvp_of_grad_hvp(mode):
    v = torch.randn(3, dtype=F64)

    def hvp(x, v):
        return functx.jvp(functx.grad(u), (x,), (v,))[1]
    hvp = functx.jit(hvp) if mode == "jit" else hvp
    close(hvp(X1, v), tf.jvp(tf.grad(u), (X1,), (v,))[1])
    close(hvp(X1, v), tf.hessian(u)(X1) @ v)


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_linearize_then_vmap_of_f_jvp(mode):
    def f(x):
        return torch.stack([u(x), (x ** 2).sum(), x.prod()])

    def fx(x, ts):
        _, f_jvp = functx.linearize(f, x)
        return functx.vmap(f_jvp)(ts)
    fx = functx.jit(fx) if mode == "jit" else fx
    ts = torch.randn(4, 3, dtype=F64)
    close(fx(X1, ts), tf.vmap(lambda t: tf.jvp(f, (X1,), (t,))[1])(ts))


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_hessian_of_module_and_jacrev_of_vmap(mode):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def scalar(x):
        return functx.functional_call(model, params, (x,)).sum()
    fn = functx.vmap(functx.hessian(scalar))
    fn = functx.jit(fn) if mode == "jit" else fn
    close(fn(XB), tf.vmap(tf.hessian(scalar))(XB))
    g = functx.jacrev(functx.vmap(lambda x: scalar(x) * x))
    g = functx.jit(g) if mode == "jit" else g
    close(g(XB), tf.jacrev(tf.vmap(lambda x: scalar(x) * x))(XB))
