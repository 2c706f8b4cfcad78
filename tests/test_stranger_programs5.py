"""torch.func-style code as a stranger writes it, under functx's transforms eagerly and under
functx.jit: vmap's in_dims/out_dims/chunk_size/randomness, grad/vjp/jvp/jacrev/jacfwd/hessian
arguments and errors, and transform outputs used by torch's own autograd. Each test pins a
divergence that was found and fixed (the docstring says what was wrong and which oracle
decides) or a representative program that already worked. Oracles run in float64:
torch.func / torch.autograd on the same code, central finite differences where those
disagree with torch.func, eager torch for errors, and a Python loop for vmap."""
import pytest
import torch
import torch.nn.functional as F
from fd_oracles import assert_trees_close as _close

import functx
import functx.func as ff

D = torch.float64


# ---------------------------------------------------------------- tangents that require grad

_W = torch.randn(5, 4, dtype=D, generator=torch.Generator().manual_seed(0))
_TANGENT_FNS = {
    "sin": torch.sin,
    "linear tanh": lambda a: F.linear(a, _W).tanh(),
    "softmax of a product": lambda a: (a @ _W.T).softmax(-1),
    "layer_norm": lambda a: F.layer_norm(a, (4,)),
    "cross_entropy": lambda a: F.cross_entropy(a, torch.tensor([0, 2, 1])),
    "indexing": lambda a: a[[0, 2]].exp() * a[1:].sum(),
    "in place": lambda a: a.clone().mul_(2).add_(a.sin()),
}


@pytest.mark.parametrize("name", list(_TANGENT_FNS))
@pytest.mark.parametrize("how", ["jvp", "vmap of jvp", "jvp of grad", "jit of jvp"])
def test_a_tangent_that_requires_grad_carries_torch_autograd_history(name, how):
    """A learned direction, a tangent computed from parameters: jvp(f, (x,), (t,)) with t
    requiring grad (x not) returned a tangent output with no grad_fn, so
    `torch.autograd.grad(jv.pow(2).sum(), t)` raised "does not require grad", and a loss that
    also held another term through parameters silently lost t's part. The generated per-op
    jvp rules (rule_cache, and the cached lowering of a whole ATen op) ran torch's autograd
    only when a *primal* operand required grad; a tangent that requires grad counts now.
    Oracle: torch.func.jvp on the same code, differentiated by torch.autograd."""
    f = _TANGENT_FNS[name]
    v = torch.randn(3, 4, dtype=D, generator=torch.Generator().manual_seed(1))
    t0 = torch.randn(3, 4, dtype=D, generator=torch.Generator().manual_seed(2))

    def run(L, jit=False):
        t = t0.clone().requires_grad_()
        if how == "jvp":
            _, jv = L.jvp(f, (v,), (t * 1.5,))
        elif how == "vmap of jvp":
            _, jv = L.vmap(lambda p, tt: L.jvp(f, (p,), (tt,)))(torch.stack([v, v * 2]), torch.stack([t, t * 3]))
        elif how == "jvp of grad":
            _, jv = L.jvp(L.grad(lambda a: f(a).sum()), (v,), (t,))
        else:
            _, jv = functx.jit(lambda p, tt: L.jvp(f, (p,), (tt,)))(v, t) if L is ff else L.jvp(f, (v,), (t,))
        return torch.autograd.grad(jv.pow(2).sum(), t)[0]

    _close(run(ff), run(torch.func), 1e-6)


def test_a_tangent_that_requires_grad_beside_closed_over_parameters():
    """The silent form of the bug above: the tangent output required grad through a
    closed-over parameter, so backward ran, and t's gradient was missing. Oracle: torch.func."""
    lin = torch.nn.Linear(4, 3).double()
    v = torch.randn(4, dtype=D)

    def run(L):
        t = torch.linspace(-1, 1, 4, dtype=D).requires_grad_()
        _, jv = L.jvp(lambda a: torch.tanh(lin(a)), (v,), (t,))
        return torch.autograd.grad(jv.pow(2).sum(), (t, lin.weight))

    _close(run(ff), run(torch.func))


# ---------------------------------------------------------------- formatting a traced number

def test_an_f_string_of_a_traced_loss_formats_its_number():
    """`print(f"loss {loss:.4f}")` inside a loss function under grad printed
    "GradTrackingTensor(lvl=1, value=...)": functx's __format__ ignored the format spec and
    returned the repr. torch's Tensor.__format__ formats a 0-d tensor's number (through
    detach().item(), so no warning), and torch.func's grad/jvp do the same; under vmap
    (.item() per example) it raises, as torch.func does, and a format spec on a tensor with
    dims is torch's TypeError. Oracle: torch.func on the same code, eager torch's errors."""
    x = torch.randn(3, 4, dtype=D)
    seen = {}

    def loss(tag):
        def f(a):
            s = (a.sin() * a).sum()
            seen.setdefault(tag, []).append((f"{s:.4f}", f"{s}"))
            return s
        return f

    ff.grad(loss("functx"))(x)
    torch.func.grad(loss("torch"))(x)
    ff.jvp(loss("functx jvp"), (x,), (x,))
    assert seen["functx"] == seen["torch"] == seen["functx jvp"]
    assert seen["functx"][0][0] == f"{(x.sin() * x).sum().item():.4f}"
    with pytest.raises(RuntimeError):
        ff.vmap(loss("vmap"))(x)
    with pytest.raises(TypeError, match="unsupported format string"):
        ff.grad(lambda a: (f"{a:.3f}", a.sum())[1])(x)


def test_numpy_of_a_differentiated_value_raises_torchs_error():
    """`a.numpy()` on a value grad differentiates returned the primal's array, and the
    derivative through it was silently lost; eager torch and torch.func raise "Can't call
    numpy() on Tensor that requires grad". detach().numpy() and numpy(force=True) still
    return the values. Oracle: eager torch's / torch.func's error."""
    x = torch.randn(3, 4, dtype=D)
    with pytest.raises(RuntimeError) as want:
        torch.func.grad(lambda a: torch.tensor(a.numpy()).sum() + a.sum())(x)
    with pytest.raises(RuntimeError) as got:
        ff.grad(lambda a: torch.tensor(a.numpy()).sum() + a.sum())(x)
    assert str(got.value) == str(want.value)
    seen = []
    ff.grad(lambda a: (seen.append((a.detach().numpy().sum(), a.numpy(force=True).sum())), a.sum())[1])(x)
    assert seen[0][0] == seen[0][1] == x.numpy().sum()


# ---------------------------------------------------------------- functx.func.functionalize

def _clamp_by_sign(a):
    b = a.clone()
    if b.sum() > 0:              # Python control flow on a value
        b[0].mul_(2)
    return b * b.max().item(), b.shape[0], "scaled"


def test_functionalize_of_a_function_that_needs_values_runs_it_as_eager():
    """functx.func.functionalize traced func into a graph on every call, so a func with an
    `if` on a tensor, .item() or a data-dependent shape raised ConcretizationError ("values
    are abstract"), and one returning a Python number raised TypeError; torch.func's
    functionalize runs eagerly and returns f's results. Such a func now runs as it is (the
    same values and writes into inputs), non-tensor outputs return as they are, and under
    grad the derivative is the eager program's. Oracle: torch.func.functionalize, and
    torch.func.grad of it."""
    x = torch.randn(3, 4, dtype=D)
    for a in (x, -x):
        _close(ff.functionalize(_clamp_by_sign)(a), torch.func.functionalize(_clamp_by_sign)(a))
        _close(ff.grad(lambda a: ff.functionalize(_clamp_by_sign)(a)[0].sum())(a),
               torch.func.grad(lambda a: torch.func.functionalize(_clamp_by_sign)(a)[0].sum())(a))
    nz = lambda a: a[torch.nonzero(a > 0)[:, 0]].sum(0)      # noqa: E731
    _close(ff.functionalize(nz)(x), torch.func.functionalize(nz)(x))

    def write(a):
        a.mul_(2)
        return a.sum().item()
    a1, a2 = x.clone(), x.clone()
    assert ff.functionalize(write)(a1) == torch.func.functionalize(write)(a2)
    _close(a1, a2)


# ---------------------------------------------------------------- jit: copies of closed-over tensors

_W0 = torch.randn(3, 3, dtype=D, generator=torch.Generator().manual_seed(3))


def _use_then_update_a_copy(a, out_of_place=False):
    w = _W0.clone()
    y = torch.nn.functional.linear(a, w)
    w = w * 2 if out_of_place else w.mul_(2)
    return y + w.sum(0)


def _update_through_a_view(a, out_of_place=False):
    w = _W0 * 1.0
    y = a @ w
    if out_of_place:
        w = w.clone()
    v = w.view(-1)
    v[::2] = 0.0
    return y + w[0]


def _reset_a_detached_copy(a, out_of_place=False):
    w = _W0.detach().clone()
    y = a * w[2]
    w = w * 0 if out_of_place else w.zero_()
    return y + w[0]


@pytest.mark.parametrize("f", [_use_then_update_a_copy, _update_through_a_view, _reset_a_detached_copy],
                         ids=lambda f: f.__name__.strip("_"))
def test_jit_keeps_what_a_copy_of_a_closed_over_tensor_held_when_it_was_used(f):
    """`w = W.clone(); y = x @ w; w.mul_(2)` under functx.jit returned y computed with the
    *updated* w (forward values silently wrong, also under jit(vmap) and jit(jvp)): the copy is
    a plain tensor made at trace time, the graph held it as a constant by reference, and the
    in-place update ran on it at trace time, after the use was recorded. Now the staged
    graphs keep a copy of the values they read before such a write (a later use is a new
    constant), and a user's clone() is a made tensor (see below), whose writes are
    functionalized. Under grad torch's autograd raises (the copy was saved); functx returns the
    gradient of the out-of-place program (docs/sharp_bits.md §14, "In-place writes to values
    a derivative needs"); into the result of another plain op it raises, as torch. Oracle: eager torch on the same code, torch.func.vmap / jvp, and
    torch.func.grad of the out-of-place program."""
    x = torch.randn(3, dtype=D)
    X = torch.randn(4, 3, dtype=D)
    _close(functx.jit(f)(x), f(x))
    _close(functx.jit(f)(x * 2), f(x * 2))
    _close(functx.jit(functx.vmap(f))(X), torch.func.vmap(f)(X))
    _close(functx.jit(lambda a, t: functx.jvp(f, (a,), (t,)))(x, x.cos()), torch.func.jvp(f, (x,), (x.cos(),)))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.func.grad(lambda a: f(a).sum())(x)
    if f is _update_through_a_view:      # a plain op's result (not a clone): raises, as torch
        for run in (functx.grad, lambda g: functx.jit(functx.grad(g))):
            with pytest.raises(Exception, match="reverse mode saved"):
                run(lambda a: f(a).sum())(x)
        return
    want = torch.func.grad(lambda a: f(a, out_of_place=True).sum())(x)
    _close(functx.jit(functx.grad(lambda a: f(a).sum()))(x), want)
    _close(functx.grad(lambda a: f(a).sum())(x), want)


# ---------------------------------------------------------------- where torch.func is wrong

def _central_jacobian(f, x, eps=1e-6):
    cols = []
    for j in range(x.numel()):
        e = torch.zeros_like(x).view(-1)
        e[j] = eps
        e = e.view_as(x)
        cols.append((f(x + e) - f(x - e)) / (2 * eps))
    return torch.stack(cols, -1).reshape(tuple(f(x).shape) + tuple(x.shape))


def test_jacfwd_and_hessian_with_negative_argnums_where_torch_func_gives_zeros():
    """jacfwd(f, argnums=-1) / hessian(f, argnums=-1): torch.func returns zeros (its forward
    mode does not resolve the negative index to the argument it perturbs); functx's
    Jacobian is f's. Oracle: central finite differences in float64 (torch.func's jacrev agrees)."""
    a = torch.randn(3, dtype=D)
    s = torch.tensor(0.7, dtype=D)
    f = lambda c, k: (c * k).exp()     # noqa: E731
    want = _central_jacobian(lambda k: f(a, k), s)
    _close(ff.jacfwd(f, argnums=-1)(a, s), want, 1e-6)
    _close(functx.jit(ff.jacfwd(f, argnums=-1))(a, s), want, 1e-6)
    _close(torch.func.jacrev(f, argnums=-1)(a, s), want, 1e-6)
    assert torch.func.jacfwd(f, argnums=-1)(a, s).abs().max() == 0
    h = lambda c, k: (c * k).exp().sum() * k     # noqa: E731
    hess = _central_jacobian(lambda k: torch.func.grad(h, argnums=1)(a, k), s)
    _close(ff.hessian(h, argnums=-1)(a, s), hess, 1e-5)
    _close(ff.hessian(h, argnums=(-2, -1))(a, s)[1][1], hess, 1e-5)


class _TiedLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(6, 4)
        self.ln = torch.nn.LayerNorm(4)
        self.head = torch.nn.Linear(4, 6, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.ln(self.emb(ids))))


def test_hessian_of_a_model_with_tied_embeddings_where_torch_func_is_wrong():
    """A language model whose output head is tied to its embedding, differentiated twice
    through functional_call (torch.func's or functx's): torch.func.hessian's block
    d2L / d ln.weight d emb.weight is wrong (off by ~1.2: it misses the tied head's use),
    while the transposed block is right. functx's Hessian is L's, eagerly and under jit.
    Oracle: central finite differences of torch.func.grad in float64."""
    torch.manual_seed(0)
    m = _TiedLM().double()
    ids = torch.tensor([0, 3, 5, 2])
    p = {k: v.detach() for k, v in m.named_parameters()}       # emb.weight once (tied)

    def loss(fc):
        return lambda pp: fc(m, pp, (ids,)).log_softmax(-1)[:, 1].sum()

    ref = loss(torch.func.functional_call)

    def fd_block(k1, k2):
        def g(v):
            q = dict(p)
            q[k2] = v
            return torch.func.grad(ref)(q)[k1]
        return _central_jacobian(g, p[k2])

    want = fd_block("ln.weight", "emb.weight")
    for fc in (functx.functional_call, torch.func.functional_call):
        _close(ff.hessian(loss(fc))(p)["ln.weight"]["emb.weight"], want, 1e-6)
        _close(functx.jit(ff.hessian(loss(fc)))(p)["ln.weight"]["emb.weight"], want, 1e-6)
    _close(ff.hessian(ref)(p)["emb.weight"]["ln.weight"], fd_block("emb.weight", "ln.weight"), 1e-6)
    assert (torch.func.hessian(ref)(p)["ln.weight"]["emb.weight"] - want).abs().max() > 0.1


# ---------------------------------------------------------------- writes into a copy of a constant

_P0 = torch.randn(3, 3, dtype=D, generator=torch.Generator().manual_seed(4))


def _row_update(a):
    P = _P0.clone()
    P[0] = a
    return P.sum(0) * a


def _covariance_update(a):
    P = _P0.clone()
    P -= torch.outer(a, a) * 0.1
    P[:, 1] += a
    return P @ a


@pytest.mark.parametrize("f", [_row_update, _covariance_update], ids=lambda f: f.__name__.strip("_"))
def test_writing_traced_values_into_a_clone_of_a_closed_over_tensor(f):
    """`P = P0.clone(); P -= K @ K.T` (a filter's covariance update), `out = template.clone();
    out[i] = v`: writing a traced value into the copy raised PlainWriteError under every
    transform and jit ("functx cannot track writes into that tensor"), where torch.func and
    eager torch run it. A user's clone() of a plain tensor is now a made tensor (a wrapper of
    its plain value, like torch.zeros(...)), so the writes are functionalized; clones that
    functx's own generated rules make stay plain. Oracle: torch.func.grad / jvp / jacrev on the
    same code, eager torch for jit, a Python loop for vmap."""
    x = torch.randn(3, dtype=D)
    _close(functx.jit(f)(x), f(x))
    _close(ff.grad(lambda a: f(a).sum())(x), torch.func.grad(lambda a: f(a).sum())(x))
    _close(ff.jvp(f, (x,), (x.cos(),)), torch.func.jvp(f, (x,), (x.cos(),)))
    _close(functx.jit(ff.jacrev(f))(x), torch.func.jacrev(f)(x))
    _close(ff.vmap(f)(torch.stack([x, 2 * x])), torch.stack([f(x), f(2 * x)]))
    _close(ff.hessian(lambda a: f(a).sum())(x), torch.func.hessian(lambda a: f(a).sum())(x))


_Z0 = torch.randn(3, dtype=D, generator=torch.Generator().manual_seed(5))
_WZ = torch.randn(3, 3, dtype=D, generator=torch.Generator().manual_seed(6))


def _inner_autograd(x):
    z = _Z0.clone().requires_grad_()
    with torch.enable_grad():
        y = torch.tanh(z @ _WZ).pow(2).sum()
        g, = torch.autograd.grad(y, z, create_graph=True)
        h, = torch.autograd.grad(g.sum(), z)
    return (x * g + h).sin()


def test_torch_autograd_on_a_clone_made_to_require_grad_inside_a_transform():
    """`z = z0.clone().requires_grad_(); torch.autograd.grad(u(z), z)` on values that do not
    depend on the transformed inputs (a physics residual at fixed points) ran as plain torch
    inside functx's transforms; with clone() a made tensor (above) it raised "torch.autograd.grad
    on a value traced by a functx transform". A made tensor that holds a plain value passes
    requires_grad_() to that value, and torch.autograd.grad on such values is plain torch
    again (torch.func refuses requires_grad_() inside its transforms). Oracle: a Python loop
    for vmap, eager torch for jit, central finite differences for grad."""
    x = torch.randn(2, 3, dtype=D)
    _close(ff.vmap(_inner_autograd)(x), torch.stack([_inner_autograd(r) for r in x]))
    _close(functx.jit(_inner_autograd)(x[0]), _inner_autograd(x[0]))
    fd = torch.stack([(_inner_autograd(x[0] + 1e-6 * e).sum() - _inner_autograd(x[0] - 1e-6 * e).sum()) / 2e-6
                      for e in torch.eye(3, dtype=D)])
    _close(ff.grad(lambda a: _inner_autograd(a).sum())(x[0]), fd, 1e-6)


def test_vmap_of_an_unbatched_output_with_out_dims_other_than_zero_where_torch_func_fails():
    """vmap(lambda a, b: (a, b), in_dims=(0, None), out_dims=1): torch.func expands the
    unbatched output to the wrong shape and raises ("The expanded size of the tensor (4) must
    match ...", with out_dims=-1 even garbage sizes); functx stacks it along the asked dim.
    Oracle: a Python loop, stacked along out_dims."""
    x = torch.randn(4, 3, dtype=D)
    w = torch.randn(3, dtype=D)
    loop = lambda dim: tuple(torch.stack(o, dim) for o in zip(*[(r, w) for r in x]))   # noqa: E731
    for dim in (1, -1):
        f = ff.vmap(lambda a, b: (a, b), in_dims=(0, None), out_dims=dim)
        _close(f(x, w), loop(dim))
        _close(functx.jit(f)(x, w), loop(dim))
        with pytest.raises(RuntimeError):
            torch.func.vmap(lambda a, b: (a, b), in_dims=(0, None), out_dims=dim)(x, w)


def test_a_state_dict_with_an_integer_buffer_passed_as_parameters_names_the_buffer():
    """grad(loss)(dict(model.state_dict())) with a BatchNorm: the error said "differentiated
    argument leaf 3 has dtype torch.int64", and the user had to count leaves to find
    num_batches_tracked. It names the leaf's path now, under grad, jacrev, jacfwd and hessian.
    Oracle: eager torch / torch.func raise too ("only Tensors of floating point dtype can
    require gradients")."""
    m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    sd = dict(m.state_dict())
    x = torch.randn(4, 3)
    loss = lambda p: torch.func.functional_call(m, p, (x,)).sum()    # noqa: E731
    with pytest.raises(RuntimeError, match="floating point"):
        torch.func.grad(loss)(sd)
    for t in (ff.grad, ff.jacrev, ff.jacfwd, ff.hessian):
        with pytest.raises(ValueError, match="num_batches_tracked.*torch.int64"):
            t(loss)(sd)


def test_jit_of_a_clone_of_a_closed_over_tensor_sees_its_later_updates():
    """With clone() a made tensor, jit took the clone's value as a constant without reading the
    closed-over tensor through the closure guard, so after `P0.mul_(5)` (or `P0.data = ...`)
    the compiled function kept returning the old values. The clone is a guarded closure read
    again, as any plain op on a closed-over tensor. Oracle: eager torch after each update."""
    p0 = torch.ones(3, dtype=D)

    def f(a):
        P = p0.clone()
        P[0] = a.sum()
        return P * a

    j = functx.jit(f)
    x = torch.arange(1.0, 4.0, dtype=D)
    _close(j(x), f(x))
    p0.mul_(5)
    _close(j(x), f(x))
    p0.data = torch.full((3,), 7.0, dtype=D)
    _close(j(x), f(x))


def test_a_misshapen_tangent_inside_a_pytree_primal_is_named_by_its_path():
    """jvp(f, (params,), (tangents,)) with one tangent of the wrong shape or dtype said
    "tangent 0 has shape (3,), its primal has (2,)": leaf 0 of a dict of parameters, which the
    user had to count. The error names the leaf's path now (jvp and linearize). Oracle:
    torch.func raises for the shape too (its message names the shapes only)."""
    p = {"w": torch.randn(3), "b": torch.randn(2)}
    f = lambda d: d["w"].sum() + d["b"].sum()      # noqa: E731
    bad = {"w": torch.randn(3), "b": torch.randn(3)}
    with pytest.raises(RuntimeError):
        torch.func.jvp(f, (p,), (bad,))
    with pytest.raises(ValueError, match=r"tangent 0 \(at \(0, 'b'\)\) has shape \(3,\), its primal has \(2,\)"):
        ff.jvp(f, (p,), (bad,))
    with pytest.raises(ValueError, match=r"\(at \(0, 'b'\)\) has dtype torch.float64"):
        ff.linearize(f, p)[1]({"w": torch.randn(3), "b": torch.randn(2, dtype=D)})


def test_a_clone_that_keeps_a_transposed_layout_reports_it():
    """`c = W.T.clone()` keeps W.T's strides in torch (preserve_format), so `c.view(-1)`
    raises; as a made tensor the copy reported contiguous strides and the view went through.
    A copy with a non-contiguous layout stays a plain tensor. Oracle: eager torch."""
    w = torch.randn(3, 4, dtype=D)
    seen = []

    def f(a):
        c = w.T.clone()
        seen.append((c.stride(), c.is_contiguous()))
        with pytest.raises(RuntimeError):
            c.view(-1)
        return (a * c.sum()).sum()

    f(torch.randn(3, dtype=D))
    ff.grad(f)(torch.randn(3, dtype=D))
    functx.jit(f)(torch.randn(3, dtype=D))
    assert seen == [((1, 4), False)] * 3


def _write_then_read_alias(p, q):
    p.mul_(2)
    return q * 1


@pytest.mark.parametrize("how", ["jvp", "vjp", "linearize", "vmap"])
def test_a_write_into_an_input_another_input_aliases_raises(how):
    """f(a, a[0]) writing into a and then reading its second argument: eager torch and
    torch.func see the write through the view ([0, 2, 4]); functx's eager transforms ran f on
    separate wrappers and returned the old values ([0, 1, 2]) silently. They raise now, as
    functx.jit already did ("shares memory with tensor argument"). Oracle: eager torch and
    torch.func.jvp (values), functx.jit (the error)."""
    x = torch.arange(9, dtype=D).reshape(3, 3)
    a = x.clone()
    assert torch.equal(torch.func.jvp(_write_then_read_alias, (a, a[0]), (torch.ones(3, 3, dtype=D), torch.ones(3, dtype=D)))[0],
                       torch.tensor([0.0, 2.0, 4.0], dtype=D))
    a = x.clone()
    b = a[0]
    run = {"jvp": lambda: ff.jvp(_write_then_read_alias, (a, b), (torch.ones_like(a), torch.ones_like(b))),
           "vjp": lambda: ff.vjp(_write_then_read_alias, a, b),
           "linearize": lambda: ff.linearize(_write_then_read_alias, a, b),
           "vmap": lambda: ff.vmap(_write_then_read_alias, in_dims=(1, 0))(a, b)}[how]
    with pytest.raises(functx.FunctxError, match="shares memory with its tensor input 1"):
        run()
    c = x.clone()
    with pytest.raises(functx.FunctxError, match="shares memory"):
        functx.jit(_write_then_read_alias)(c, c[0])


def test_func_vjp_fn_takes_torch_funcs_retain_graph_and_create_graph():
    """torch.func's vjp_fn(cotangents, retain_graph=True, create_graph=None): code that passes
    retain_graph=True to call a pullback twice (implicit differentiation, repeated VJPs) got
    "unexpected keyword argument 'retain_graph'" from functx.func.vjp. They are accepted (a
    functx pullback can always be called again). Oracle: torch.func.vjp."""
    x = torch.randn(3, dtype=D)
    c = torch.randn(3, dtype=D)
    _, pb = ff.vjp(lambda a: a.sin() * a, x)
    _, want = torch.func.vjp(lambda a: a.sin() * a, x)
    for kw in ({"retain_graph": True}, {"create_graph": True}, {}):
        _close(pb(c, **kw), want(c, **kw))
    _close(functx.jit(lambda a: ff.vjp(torch.sin, a)[1](c, retain_graph=True))(x), torch.func.vjp(torch.sin, x)[1](c))


def test_an_inner_grad_writing_into_a_tensor_made_by_an_outer_vmap_names_the_write():
    """vmap(f) where f makes buf = torch.zeros(3) and an inner grad writes its differentiated
    value into buf (buf.add_(r)): the write went through a cached write unit that skipped the
    level check, so buf kept the grad's tracer and the user got "a traced value ... was used
    after its transform finished" at a later line. It raises OuterWriteError at the write
    now, as the same write does outside a unit. Oracle: torch.func raises here too (writing a
    differentiated value into a tensor of an enclosing level)."""
    x = torch.randn(2, 3)

    def h(a):
        buf = torch.zeros(3)
        functx.grad(lambda r: (buf.add_(r), (buf * r).sum())[1])(a)
        return buf

    with pytest.raises(functx.FunctxError, match="writes a value that depends on that transform's inputs"):
        ff.vmap(h)(x)
