"""Model code a stranger would write (nn modules and functional ops less covered by
test_nn_coverage / test_corpus), under functx's transforms and jit, against eager torch or
torch.func; one regression per bug found."""
import copy

import pytest
import torch
import torch.nn as nn

import functx
from functx.core.errors import PlainWriteError

D = torch.float64


def _randn(*shape, dtype=D, seed=0):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- batch norm: eval after eager training

@pytest.mark.parametrize("dtype", [D, torch.float32])
def test_jitted_eval_batchnorm_sees_running_stats_an_eager_training_step_updated(dtype):
    """The eager kernel writes the running statistics without bumping their version (the
    schema of native_batch_norm does not mark them written), so jit's trace-time copy of
    rsqrt(running_var + eps), guarded by the version, stayed stale: a model evaluated under
    jit between eager training steps used its first statistics. The graph now reads them."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(4, 2)).to(dtype)
    x = _randn(5, 3, 4, dtype=dtype)
    jf = functx.jit(lambda x: m(x))
    tol = dict(atol=1e-12, rtol=1e-12) if dtype == D else dict(atol=1e-5, rtol=1e-5)
    for step in range(3):
        m.eval()
        with torch.no_grad():
            torch.testing.assert_close(jf(x), m(x), **tol)
        m.train()
        m(x * (step + 2) + step)            # an eager training step: new running statistics
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(jf(x), m(x), **tol)


# ---------------------------------------------------------------- a no_grad write inside a torch function

@pytest.mark.parametrize("first", ["vjp", "jvp"])
def test_cosine_similarity_jvp_and_vjp_do_not_share_a_unit(first):
    """ATen's cosine_similarity clamps its norms in place under no_grad: reverse mode keeps
    the unclamped norm's derivative (torch.func.vjp), forward mode sees the clamp
    (torch.func.jvp; finite differences agree). The eager-transform unit cache keyed the
    function without telling reverse from forward levels, so whichever ran first decided
    the other's answer (jvp after grad was off by 10%, vjp after jvp by 15%)."""
    import torch.nn.functional as F
    x = _randn(3, 4)
    y = _randn(1, 4, seed=3) * 1e-4       # norm below eps: the clamp is active
    f = lambda y: F.cosine_similarity(x, y, dim=-1, eps=1e-3)  # noqa: E731
    t, ct = _randn(1, 4, seed=5), _randn(3, seed=6)
    want_jvp = torch.func.jvp(f, (y,), (t,))[1]
    eps = 1e-7
    torch.testing.assert_close(want_jvp, (f(y + eps * t) - f(y - eps * t)) / (2 * eps), rtol=1e-6, atol=1e-6)
    want_vjp = torch.func.vjp(f, y)[1](ct)[0]
    runs = {"jvp": lambda m: m.func.jvp(f, (y,), (t,))[1], "vjp": lambda m: m.func.vjp(f, y)[1](ct)[0]}
    wants = {"jvp": want_jvp, "vjp": want_vjp}
    for kind in (first, "vjp" if first == "jvp" else "jvp", first):
        torch.testing.assert_close(runs[kind](functx), wants[kind], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(functx.jit(lambda y, t: functx.func.jvp(f, (y,), (t,))[1])(y, t), want_jvp)
    torch.testing.assert_close(functx.jit(lambda y, ct: functx.func.vjp(f, y)[1](ct)[0])(y, ct), want_vjp)


# ---------------------------------------------------------------- embedding max_norm under jit

@pytest.mark.parametrize("kind", ["Embedding", "EmbeddingBag"])
def test_embedding_max_norm_closed_over_under_jit_names_the_op_and_the_workaround_matches_eager(kind):
    """The module renormalizes its closed-over weight in place (embedding_renorm_, from
    traced indices): the error said 'an in-place operation' without naming it and advised
    building the tensor from a traced input. Passing the parameters (the advice now) works:
    the same values and the same renormalized weight as eager."""
    from torch.func import functional_call
    torch.manual_seed(0)
    m = getattr(nn, kind)(6, 3, max_norm=1.0).double()
    idx = torch.tensor([[0, 2, 5], [1, 0, 0]])
    with pytest.raises(PlainWriteError, match=r"embedding_renorm_.*\n(.*\n)*.*functional_call"):
        functx.jit(lambda i: m(i))(idx)
    p_eager = {k: v.detach().clone() for k, v in m.named_parameters()}
    p_jit = {k: v.detach().clone() for k, v in m.named_parameters()}
    want = functional_call(m, p_eager, (idx,))
    got = functx.jit(lambda p, i: functional_call(m, p, (i,)))(p_jit, idx)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(p_jit["weight"], p_eager["weight"])
    assert not torch.equal(p_eager["weight"], m.weight)      # the renorm did happen


# ---------------------------------------------------------------- embedding_bag offsets

_BAG_OFFSETS = {
    "first offset not 0 (torch raises)": ([1, 2, 7], True, "offsets\\[0\\] has to be 0"),
    "last offset past the input (torch raises)": ([0, 2, 8], True, "can not be greater than input's length"),
    "include_last_offset, last offset short of len(input)": ([0, 2, 2, 5], True, "offsets\\[-1\\] == len\\(input\\)"),
    "decreasing offsets": ([0, 3, 2], False, "non-decreasing"),
}


@pytest.mark.parametrize("name", sorted(_BAG_OFFSETS))
def test_embedding_bag_offsets_outside_torchs_contract_raise(name):
    """functx's embedding_bag lowering took any offsets: where torch raises it returned
    numbers, and where torch's CPU kernel silently returns sums of no bag (include_last_offset
    with offsets[-1] != len(input), decreasing offsets) it returned other numbers (jit, grad
    and vmap disagreed with eager by up to 1.5)."""
    import torch.nn.functional as F
    offsets, last, match = _BAG_OFFSETS[name]
    w = _randn(6, 3)
    idx = torch.tensor([0, 1, 1, 2, 5, 1, 3])
    f = lambda w: F.embedding_bag(idx, w, torch.tensor(offsets), mode="sum", include_last_offset=last)  # noqa: E731
    runs = ((functx.jit(f), w), (functx.vmap(f), torch.stack([w, 2 * w])), (functx.grad(lambda w: f(w).sum()), w))
    for run, arg in runs:
        with pytest.raises(RuntimeError, match=match):
            run(arg)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_include_last_offset_matches_eager(mode):
    import torch.nn.functional as F
    w = _randn(6, 3)
    idx = torch.tensor([0, 1, 1, 2, 5, 1, 3])
    f = lambda w: F.embedding_bag(idx, w, torch.tensor([0, 2, 2, 7]), mode=mode, include_last_offset=True,  # noqa: E731
                                  padding_idx=1)
    torch.testing.assert_close(functx.jit(f)(w), f(w))
    L = lambda w: (f(w) ** 2).sum()  # noqa: E731
    torch.testing.assert_close(functx.grad(L)(w), torch.func.grad(L)(w))


# ---------------------------------------------------------------- index_select with a 0-d index

def test_index_select_of_a_0d_index_keeps_the_dim_and_a_2d_index_raises():
    """torch keeps the selected dim (length 1) for a 0-d index; functx's lowering dropped it
    (x.index_select(0, torch.tensor(2)) was [4], not [1, 4]) under jit, jvp and vmap, so
    nn.AdaptiveLogSoftmaxWithLoss, whose row indices come from nonzero().squeeze(), failed
    under jit with an IndexError deep in log_softmax (and other code broadcast the wrong
    shape). A 2-d index, which torch refuses, was taken."""
    x = _randn(5, 4)
    i = torch.tensor(2)
    f = lambda x: (x.index_select(0, i), x.index_select(1, i), x[0].index_select(0, i))  # noqa: E731
    want = f(x)
    for got in (functx.jit(f)(x), functx.jvp(f, (x,), (x,))[1]):
        for g, w in zip(got, want):
            assert g.shape == w.shape
            torch.testing.assert_close(g, w)
    got = functx.vmap(f)(torch.stack([x, 2 * x]))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, torch.stack([w, 2 * w]))
    with pytest.raises(IndexError, match="Index is supposed to be a vector"):
        x.index_select(0, torch.tensor([[1]]))
    with pytest.raises(IndexError, match="Index is supposed to be a vector"):
        functx.jit(lambda x: x.index_select(0, torch.tensor([[1]])))(x)


def test_adaptive_log_softmax_under_jit_and_grad():
    torch.manual_seed(0)
    m = nn.AdaptiveLogSoftmaxWithLoss(4, 10, [3, 6], div_value=2.0).double()
    params = {k: v.detach().clone() for k, v in m.named_parameters()}
    x = _randn(5, 4)
    t = torch.tensor([0, 4, 9, 2, 7])     # one row in the last cluster: a 0-d row index

    def f(p, x):
        out = torch.func.functional_call(m, p, (x, t))
        return out.output, out.loss

    want = f(params, x)
    torch.testing.assert_close(functx.jit(f)(params, x), want)
    L = lambda p, x: f(p, x)[1] + f(p, x)[0].square().sum()  # noqa: E731
    torch.testing.assert_close(functx.jit(functx.grad(L))(params, x), torch.func.grad(L)(params, x))


_ZERO_D_INDEX = {
    "gather": lambda x: x[0].gather(0, torch.tensor(2)) * x,
    "scatter_add": lambda x: x[0].scatter_add(0, torch.tensor(2), x[1, 0] ** 2),
    "index_add": lambda x: x.index_add(1, torch.tensor(2), x[:, :1] ** 2 * 3),
}


@pytest.mark.parametrize("name", sorted(_ZERO_D_INDEX))
def test_gather_scatter_add_index_add_with_a_0d_index(name):
    """torch reads a 0-d index (or input) as a 1-element vector; gather raised under jit
    ('take_along_axis: index rank 0 != operand rank 1') and vmap, scatter_add under vmap and
    jacrev, index_add under jit and vmap (torch._decomp's decomposition indexed with the 0-d
    index: "shape '[1]' is invalid for input of size 5"), each from deep in the rules.
    Oracle: eager values, float64 finite differences (torch.func's jacrev raises on some)."""
    f = _ZERO_D_INDEX[name]
    x = _randn(5, 4)
    torch.testing.assert_close(functx.jit(f)(x), f(x))
    torch.testing.assert_close(functx.vmap(f)(torch.stack([x, 2 * x])), torch.stack([f(x), f(2 * x)]))
    eps, cols = 1e-6, []
    for k in range(x.numel()):
        e = torch.zeros(x.numel(), dtype=D)
        e[k] = eps
        cols.append((f(x + e.view_as(x)) - f(x - e.view_as(x))) / (2 * eps))
    fd = torch.stack(cols, -1).reshape(*f(x).shape, *x.shape)
    torch.testing.assert_close(functx.jacrev(f)(x), fd, atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(functx.jit(functx.jacfwd(f))(x), fd, atol=1e-7, rtol=1e-7)


def test_batchnorm_momentum_none_training_under_jit_names_the_buffer():
    """BatchNorm(momentum=None) trains with the cumulative average, 1 / float(num_batches_tracked):
    Python reads a buffer that jit passes as a traced argument. The ConcretizationError named
    only the user's line; it now names the buffer (and, in general, the tensor arguments the
    value comes from)."""
    from functx.core.errors import ConcretizationError
    m = nn.BatchNorm1d(3, momentum=None).double()
    with pytest.raises(ConcretizationError, match="buffer 'num_batches_tracked' of a module"):
        functx.jit(lambda x: m(x))(_randn(4, 3))
    with pytest.raises(ConcretizationError, match="computed from argument 'y'"):
        functx.jit(lambda x, y: x * 2 if y.sum() > 0 else x)(_randn(2), _randn(3))


# ---------------------------------------------------------------- torch.library custom ops

@torch.library.custom_op("functx_zoo::square", mutates_args=())
def _square(x: torch.Tensor) -> torch.Tensor:
    return x * x


@_square.register_fake
def _(x):
    return torch.empty_like(x)


_square.register_autograd(lambda ctx, g: 2 * ctx.saved_tensors[0] * g,
                          setup_context=lambda ctx, inputs, output: ctx.save_for_backward(inputs[0]))


def test_custom_op_derivatives_raise_naming_the_op_instead_of_zero_tangents():
    """A torch.library custom op runs through the opaque fallback, whose rules are torch.func's:
    torch.func.jvp gives its tangent as zeros, silently (jvp/jacfwd/jit(jvp) returned 0 where
    the derivative is 2x), and torch.func.grad raises a message about setup_context, which the
    user did give (register_autograd). Any derivative now raises naming the op; values and
    vmap still work. F.linear_cross_entropy's chunked path (options=...) is such an op."""
    import torch.nn.functional as F
    x, t = _randn(3), _randn(3, seed=1)
    assert torch.equal(torch.func.jvp(_square, (x,), (t,))[1], torch.zeros(3, dtype=D))    # torch's silent zeros
    for run in (lambda: functx.jvp(_square, (x,), (t,)), lambda: functx.jacfwd(_square)(x),
                lambda: functx.jit(lambda x, t: functx.jvp(_square, (x,), (t,))[1])(x, t),
                lambda: functx.grad(lambda x: _square(x).sum())(x), lambda: functx.hessian(lambda x: _square(x).sum())(x)):
        with pytest.raises(functx.FunctxError, match="functx_zoo.square.default is a torch.library custom op"):
            run()
    torch.testing.assert_close(functx.vmap(_square)(x[:, None]), (x * x)[:, None])
    torch.testing.assert_close(functx.jit(_square)(x), x * x)
    opts = getattr(torch.nn.modules, "linear_cross_entropy_options", None)
    if opts is not None and hasattr(F, "linear_cross_entropy"):
        w, inp, tgt = _randn(5, 4), _randn(6, 4, seed=2), torch.tensor([0, 1, 2, 3, 4, 0])
        f = lambda w: F.linear_cross_entropy(inp, w, tgt, options=opts.LinearCrossEntropyOptions(batch_chunk_size=2))  # noqa: E731
        with pytest.raises(functx.FunctxError, match="custom op"):
            functx.jvp(f, (w,), (w,))


# ---------------------------------------------------------------- already right: guards

def _fd_jacobian(f, x, eps=1e-6):
    cols = []
    for k in range(x.numel()):
        e = torch.zeros(x.numel(), dtype=x.dtype)
        e[k] = eps
        cols.append((f(x + e.view_as(x)) - f(x - e.view_as(x))) / (2 * eps))
    return torch.stack(cols, -1).reshape(*f(x).shape, *x.shape)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, float("inf")])
def test_cdist_jacobian_matches_finite_differences(p):
    """torch.func.jacrev of torch.cdist is wrong here (off by up to 2 against float64
    finite differences, which decide); functx's jacrev and jacfwd agree with them."""
    x, y = _randn(3, 4), _randn(5, 4, seed=1)
    f = lambda x: torch.cdist(x, y, p=p)  # noqa: E731
    fd = _fd_jacobian(f, x)
    torch.testing.assert_close(functx.jacrev(f)(x), fd, atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(functx.jit(functx.jacfwd(f))(x), fd, atol=1e-7, rtol=1e-7)


# ---------------------------------------------------------------- indices out of range

@pytest.mark.parametrize("bad", [-1, 9])
def test_scatter_index_out_of_range_raises_as_torch(bad):
    """torch.scatter raises for an index outside [0, size); functx's lowering scattered into
    the flat tensor, so the write landed on another row (-1: the previous row's last element)
    under jit, vmap, grad and jvp, silently."""
    x = _randn(4, 5)
    i = torch.tensor([[0], [bad], [1], [2]])
    f = lambda x, i: x.scatter(1, i, 1.0)  # noqa: E731
    with pytest.raises(RuntimeError, match="out of bounds"):
        f(x, i)
    for run in (lambda: functx.jit(f)(x, i), lambda: functx.vmap(f, in_axes=(None, 0))(x, i[None]),
                lambda: functx.vmap(f, in_axes=(0, None))(x[None], i),
                lambda: functx.grad(lambda x: f(x, i).square().sum())(x), lambda: functx.jvp(lambda x: f(x, i), (x,), (x,))):
        with pytest.raises(IndexError, match="out of bounds"):
            run()
    ok = torch.tensor([[0], [4], [1], [2]])
    torch.testing.assert_close(functx.jit(f)(x, ok), f(x, ok))


@pytest.mark.parametrize("classes", [[0, 4, 1], [0, -1, 1]])
def test_one_hot_class_out_of_range_raises_under_jit_and_vmap(classes):
    """ATen's one_hot reaches functx decomposed (eq with arange) without its checks: a class
    out of range (or negative) gave an all-zero row under jit and vmap where eager raises."""
    import torch.nn.functional as F
    i = torch.tensor(classes)
    with pytest.raises(RuntimeError, match="Class values must be"):
        F.one_hot(i, 3)
    with pytest.raises(IndexError, match="out of range"):
        functx.jit(lambda i: F.one_hot(i, 3))(i)
    with pytest.raises(IndexError, match="out of range"):
        functx.vmap(lambda i: F.one_hot(i, 3))(i[None])
    with pytest.raises(RuntimeError, match="Class values must be"):
        functx.vmap(lambda x: F.one_hot(i, 3) * x)(torch.ones(2, dtype=torch.int64))
    good = torch.tensor([[0, 2], [1, 1]])
    assert torch.equal(functx.jit(lambda i: F.one_hot(i, 3))(good), F.one_hot(good, 3))
    assert torch.equal(functx.vmap(lambda i: F.one_hot(i, 3))(good), F.one_hot(good, 3))


def _setitem2(x, i, j):
    y = x.clone()
    y[i, j] = 7.0
    return y


_ERR = (IndexError, RuntimeError)
_OUT_OF_RANGE = {
    "x[i, j], j past the end": (lambda x: x[torch.tensor([0, 1]), torch.tensor([2, 7])], _ERR),
    "x[i, j], j before the start": (lambda x: x[torch.tensor([0, 1]), torch.tensor([2, -6])], _ERR),
    "x[i, j] = v": (lambda x: _setitem2(x, torch.tensor([0, 1]), torch.tensor([2, 5])), _ERR),
    "index_put accumulate": (lambda x: x.index_put((torch.tensor([0, 1]), torch.tensor([2, 5])),
                                                   torch.tensor(1.0, dtype=D), accumulate=True), _ERR),
    "index_copy negative": (lambda x: x.index_copy(1, torch.tensor([0, -1]), x[:, :2]), _ERR),
    "index_add negative": (lambda x: x.index_add(1, torch.tensor([0, -1]), x[:, :2]), _ERR),
}


@pytest.mark.parametrize("name", sorted(_OUT_OF_RANGE))
def test_advanced_indexing_out_of_range_raises_as_torch(name):
    """Advanced indexing with several index tensors linearizes them into one flat index, so
    an index out of range in a later dim (x[i, j] with j = 7 of 5) still made a valid flat
    position: the read or write hit another element, silently, under jit, grad and vmap.
    index_copy / index_add (torch._decomp's index_put) read a negative index from the end,
    where torch raises. index_fill, which torch lets read from the end, still does."""
    f, err = _OUT_OF_RANGE[name]
    x = _randn(4, 5)
    with pytest.raises((IndexError, RuntimeError)):
        f(x)
    for run in (lambda: functx.jit(f)(x), lambda: functx.grad(lambda x: f(x).square().sum())(x),
                lambda: functx.vmap(f)(x[None])):
        with pytest.raises(err):     # the kernel's error (index_select/index_copy: IndexError;
            run()                    # gather under vmap: RuntimeError)
    g = lambda x: x.index_fill(1, torch.tensor([0, -1]), 2.0)  # noqa: E731
    torch.testing.assert_close(functx.jit(g)(x), g(x))
    h = lambda x: x[torch.tensor([0, -1]), torch.tensor([-5, 4])]  # noqa: E731
    torch.testing.assert_close(functx.jit(h)(x), h(x))
    torch.testing.assert_close(functx.vmap(h)(x[None]), h(x)[None])
