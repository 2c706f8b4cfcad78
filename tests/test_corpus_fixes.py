"""Focused regressions for what the corpus (tests/test_corpus.py) found, each against an
oracle (a Python loop, torch.autograd, eager torch)."""
import math

import pytest
import torch
import torch.nn as nn

import functx

D = torch.float64


# ---------------------------------------------------------------- RNNs

@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_rnn_under_vmap_and_jvp_of_the_input(kind):
    """ATen's C++ RNN cells update a temporary in place (linear_hh(hx).add_(...)); with
    unbatched weights that temporary held no traced value and vmap raised."""
    torch.manual_seed(0)
    m = getattr(nn, kind)(3, 2, num_layers=2, bidirectional=True, batch_first=True).double()
    xs = torch.randn(4, 2, 5, 3, dtype=D)
    first = lambda x: m(x)[0]  # noqa: E731
    torch.testing.assert_close(functx.vmap(first)(xs), torch.stack([first(x) for x in xs]))
    t = torch.randn_like(xs[0])
    torch.testing.assert_close(functx.jvp(first, (xs[0],), (t,))[1], torch.func.jvp(first, (xs[0],), (t,))[1])


def _packed_model(kind):
    torch.manual_seed(0)
    rnn = getattr(nn, kind)(3, 2, bidirectional=True, batch_first=True).double()

    def f(x, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = rnn(packed)
        padded, out_lengths = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=6)
        return padded, out_lengths
    return f


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_packed_sequences_under_every_transform(kind):
    """pack_padded_sequence / pad_packed_sequence are C++ kernels that write into plain
    tensors (grad raised) and size their outputs by the lengths (jit sized them from zeros)."""
    f = _packed_model(kind)
    lengths = torch.tensor([3, 5, 1])
    x = torch.randn(3, 5, 3, dtype=D)
    want, want_len = f(x, lengths)
    got, got_len = functx.jit(lambda x: f(x, lengths))(x)
    torch.testing.assert_close(got, want)
    assert torch.equal(got_len, want_len)

    def loss(x):
        return f(x, lengths)[0].sin().sum()
    xx = x.clone().requires_grad_()
    (want_g,) = torch.autograd.grad(loss(xx), xx)          # torch.func can't run packed RNNs
    torch.testing.assert_close(functx.grad(loss)(x), want_g)
    torch.testing.assert_close(functx.jit(functx.grad(loss))(x), want_g)
    xs = torch.stack([x, 2 * x])
    torch.testing.assert_close(functx.vmap(lambda x: f(x, lengths)[0])(xs), torch.stack([f(v, lengths)[0] for v in xs]))


def test_packing_with_traced_lengths_says_what_to_do():
    f = _packed_model("GRU")
    x = torch.randn(2, 4, 3, dtype=D)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    with pytest.raises(functx.ConcretizationError, match="pack_padded_sequence needs the sequence lengths"):
        functx.jit(lambda x, mask: f(x, mask.sum(1))[0])(x, mask)
    # eagerly the lengths have values, as in torch
    xx = x.clone().requires_grad_()
    f(xx, mask.sum(1))[0].sum().backward()
    torch.testing.assert_close(functx.grad(lambda x: f(x, mask.sum(1))[0].sum())(x), xx.grad)


# ---------------------------------------------------------------- seeded ops that draw nothing

def test_attention_without_dropout_on_closed_over_tensors_is_not_random():
    """CPU attention kernels are tagged as random (they can apply dropout); with dropout_p=0
    they are deterministic, and under vmap/jit (jacfwd of an MHA layer) functx raised."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 4, dtype=D) for _ in range(3))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    scales = torch.tensor([0.5, 2.0], dtype=D)
    f = lambda s: sdpa(q, k, v) * s  # noqa: E731
    torch.testing.assert_close(functx.vmap(f)(scales), torch.stack([f(s) for s in scales]))
    torch.testing.assert_close(functx.jit(f)(scales[0]), f(scales[0]))
    with pytest.raises(functx.FunctxError, match="random"):       # with dropout it does draw
        functx.vmap(lambda s: sdpa(q, k, v, dropout_p=0.5) * s)(scales)


# ---------------------------------------------------------------- embedding_bag

@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx", [None, 0])
def test_embedding_bag_is_native_under_every_transform(mode, padding_idx):
    """It went through the opaque fallback of _embedding_bag_forward_only, which has no
    derivative (grad raised 'Autograd not support dtype: Long'), and torch has no double
    backward for embedding_bag: now it is gathers and masked reductions."""
    F = torch.nn.functional
    w = torch.randn(6, 3, dtype=D)
    idx, offsets = torch.tensor([0, 2, 5, 1, 4, 4, 0]), torch.tensor([0, 2, 2, 5])
    psw = torch.randn(7, dtype=D) if mode == "sum" else None

    def f(w, psw):
        return F.embedding_bag(idx, w, offsets, mode=mode, per_sample_weights=psw, padding_idx=padding_idx)
    assert functx.explain(f)(w, psw).fallbacks == []
    torch.testing.assert_close(functx.jit(f)(w, psw), f(w, psw))
    wanted = (w, psw) if psw is not None else (w,)
    leaves = [t.clone().requires_grad_() for t in wanted]
    f(*leaves, *([None] if psw is None else [])).sin().sum().backward()
    argnums = (0, 1) if psw is not None else 0
    got = functx.grad(lambda w, p: f(w, p).sin().sum(), argnums=argnums)(w, psw)
    for g, leaf in zip(got if psw is not None else (got,), leaves):
        torch.testing.assert_close(g, leaf.grad)
    # second order, which torch can't do: central differences of the gradient
    g = functx.grad(lambda w: f(w, psw).sin().sum())
    t, eps = torch.randn_like(w), 1e-6
    torch.testing.assert_close(functx.jvp(g, (w,), (t,))[1], (g(w + eps * t) - g(w - eps * t)) / (2 * eps))


def test_embedding_bag_with_traced_offsets_says_what_to_do():
    F = torch.nn.functional
    w = torch.randn(6, 3)
    with pytest.raises(functx.ConcretizationError, match="embedding_bag needs the bag offsets"):
        functx.jit(lambda w, o: F.embedding_bag(torch.tensor([0, 1, 2]), w, o))(w, torch.tensor([0, 1]))


# ---------------------------------------------------------------- errors that point at library code

_DISTRIBUTIONS = {
    "Normal": (lambda loc, **kw: torch.distributions.Normal(loc, loc.exp(), **kw), torch.zeros(3)),
    "Categorical": (lambda logits, **kw: torch.distributions.Categorical(logits=logits, **kw), torch.zeros(4)),
    "MultivariateNormal": (lambda loc, **kw: torch.distributions.MultivariateNormal(
        loc, scale_tril=torch.eye(3), **kw), torch.zeros(3)),
}


@pytest.mark.parametrize("name", sorted(_DISTRIBUTIONS))
def test_distribution_validation_under_jit_and_vmap(name):
    """torch.distributions validate their arguments with torch._is_all_true, tested by Python.
    Under vmap the test covers every example (torch.func's rule); under jit it is assumed when
    tracing and checked when the program runs. Both give eager torch's numbers, with or without
    validation (this used to raise, advising validate_args=False)."""
    make, p = _DISTRIBUTIONS[name]

    def f(p, **kw):
        d = make(p, **kw)
        return d.log_prob(d.mean if name != "Categorical" else torch.tensor(1))
    for transform, arg in ((functx.jit, p), (functx.vmap, torch.stack([p, p]))):
        want = f(p) if transform is functx.jit else torch.stack([f(p), f(p)])
        torch.testing.assert_close(transform(f)(arg), want)
        torch.testing.assert_close(transform(lambda p: f(p, validate_args=False))(arg), want)
    if name == "Normal":        # an invalid scale fails the check when the jitted program runs
        bad = functx.jit(lambda loc, scale: torch.distributions.Normal(loc, scale).log_prob(loc))
        torch.testing.assert_close(bad(p, torch.ones(3)), torch.distributions.Normal(p, torch.ones(3)).log_prob(p))
        with pytest.raises(ValueError, match="_is_all_true was False"):
            bad(p, -torch.ones(3))


# ---------------------------------------------------------------- issue 9, classes 5, 6 and 11

def test_generator_created_inside_jit_raises_instead_of_continuing_its_stream():
    """Eagerly every call recreates and reseeds the generator (same numbers each call); a jit
    graph that reused the trace-time generator continued its stream (results depended on call
    history)."""
    def f(x):
        g = torch.Generator().manual_seed(3)
        return x + torch.randn(3, generator=g)
    x = torch.zeros(3)
    assert torch.equal(f(x), f(x))                              # eager torch: no call history
    with pytest.raises(functx.FunctxError, match="torch.Generator that is not an argument"):
        functx.jit(f)(x)
    # eager transforms run the function each call, as torch does
    torch.testing.assert_close(functx.vmap(f, randomness="same")(torch.zeros(2, 3)), torch.stack([f(x), f(x)]))
    torch.testing.assert_close(functx.grad(lambda x: f(x).sum())(x), torch.ones(3))


def _add_then_mul(a, b):
    a.add_(1)
    return a * b


@pytest.mark.parametrize("aliasing", ["same tensor twice", "a view of the other", "the other's base"])
def test_jit_refuses_a_write_into_an_argument_that_aliases_another(aliasing):
    """The graph treats arguments as separate tensors: eager torch sees the write through the
    alias, the compiled function did not (a silently different number)."""
    split = {"same tensor twice": lambda t: (t, t), "a view of the other": lambda t: (t, t[0]),
             "the other's base": lambda t: (t[0], t)}[aliasing]
    t = torch.ones(2, 2)
    with pytest.raises(functx.FunctxError, match="shares memory with tensor argument"):
        functx.jit(_add_then_mul)(*split(t))
    assert torch.equal(t, torch.ones(2, 2))                    # nothing was written
    a, b = split(torch.ones(2, 2))
    a2, b2 = a.clone(), b.clone()
    torch.testing.assert_close(functx.jit(_add_then_mul)(a2, b2), _add_then_mul(a.clone(), b.clone()))


_CLOSED = torch.zeros(3)


def _bump_then_read_closed(x):
    x.add_(1)
    return _CLOSED * 2


def test_jit_refuses_a_write_into_an_argument_that_aliases_a_closed_over_tensor():
    """Passing w to a function that writes its argument and reads w from its closure: eager
    torch reads the written values, the compiled graph read its constant as before the call
    (it returned zeros)."""
    _CLOSED.zero_()
    with pytest.raises(functx.FunctxError, match="shares memory with a tensor the function closes over"):
        functx.jit(_bump_then_read_closed)(_CLOSED)
    assert torch.equal(_CLOSED, torch.zeros(3))                  # nothing was written
    x = torch.zeros(3)
    torch.testing.assert_close(functx.jit(_bump_then_read_closed)(x), torch.zeros(3))
    assert torch.equal(x, torch.ones(3))


def _scale_in_place(v):
    v.mul_(2)
    v[0] = 7.0
    return v.sum()


@pytest.mark.parametrize("how", ["in_dims=0", "in_dims=1", "nested", "chunked", "under jit"])
def test_vmap_writes_into_inputs_reach_the_callers_tensors(how):
    """As in torch.func (they did not: the caller's tensor was left unchanged)."""
    def run(tf, x):
        if how == "in_dims=1":
            return tf.vmap(_scale_in_place, in_dims=1)(x)
        if how == "nested":
            return tf.vmap(tf.vmap(_scale_in_place))(x)
        if how == "chunked":
            return tf.vmap(_scale_in_place, chunk_size=2)(x)
        if how == "under jit" and tf is functx:
            return functx.jit(functx.vmap(_scale_in_place))(x)
        return tf.vmap(_scale_in_place)(x)
    make = lambda: torch.arange(24.0).reshape(2, 3, 4) if how == "nested" else torch.arange(12.0).reshape(3, 4)  # noqa: E731
    got_x, want_x = make(), make()
    torch.testing.assert_close(run(functx, got_x), run(torch.func, want_x))
    torch.testing.assert_close(got_x, want_x)


_BASE = torch.arange(12.0, dtype=D).reshape(3, 4)
_STRIDED = {"transposed": lambda: _BASE.t(), "a slice (storage offset)": lambda: _BASE[1:],
            "contiguous": lambda: _BASE.clone()}


@pytest.mark.parametrize("layout", sorted(_STRIDED))
@pytest.mark.parametrize("offset", [None, 5])
def test_as_strided_reads_the_arguments_real_layout(layout, offset):
    """as_strided reads storage; functx read every argument as if contiguous (issue 9, class 11)."""
    def f(x):
        return torch.as_strided(x, (2, 2), (1, 3), offset).sin()
    x = _STRIDED[layout]()
    want = f(x)
    torch.testing.assert_close(functx.jit(f)(x), want)
    torch.testing.assert_close(functx.jit(f)(x.contiguous()), f(x.contiguous()))   # keyed by layout
    t = torch.randn_like(x)
    torch.testing.assert_close(functx.jvp(f, (x,), (t,))[1], torch.func.jvp(f, (x,), (t,))[1])
    torch.testing.assert_close(functx.grad(lambda x: f(x).sum())(x), torch.func.grad(lambda x: f(x).sum())(x))


def test_as_strided_that_reads_outside_the_argument_or_writes_raises():
    x = _BASE[:, ::2]                  # its storage has elements x does not cover
    with pytest.raises(functx.FunctxError, match="reads memory outside the argument"):
        functx.jit(lambda x: torch.as_strided(x, (2, 3), (1, 2)))(x)

    def writes(x):
        y = torch.as_strided(x, (2, 2), (1, 3))
        y.mul_(2)
        return y
    with pytest.raises(functx.FunctxError, match="writing through as_strided of a non-contiguous argument"):
        functx.jit(writes)(_BASE.t())
    # one example's layout: its storage positions are its own elements (stride 4 here); torch.func
    # reads the other examples' memory at the positions between them, functx raises
    with pytest.raises(functx.FunctxError, match="reads memory outside the argument"):
        functx.vmap(lambda r: torch.as_strided(r, (2,), (2,)), in_dims=1)(_BASE.clone())
    column = lambda r: torch.as_strided(r, (2,), (4,))  # noqa: E731
    torch.testing.assert_close(functx.vmap(column, in_dims=1)(_BASE.clone()),
                               torch.func.vmap(column, in_dims=1)(_BASE.clone()))


def test_jit_keys_on_layouts_only_once_a_trace_reads_them():
    """A function that never reads layouts keeps one trace for rows of a batch (different
    storage offsets); one that does (as_strided with an explicit offset) traces per layout."""
    rows = torch.arange(12.0, dtype=D).reshape(3, 4)
    plain = functx.jit(lambda r: r * 2)
    for r in rows:
        plain(r)
    assert plain.cache_size() == 1
    f = lambda r, offset: torch.as_strided(r, (2,), (2,), offset)  # noqa: E731
    jf = functx.jit(f, static_argnums=1)    # the offset is used as a Python int
    for x, offset in ((rows[0], 1), (rows[1], 5), (rows[1], None), (rows.clone()[0], 0), (rows[2], 9)):
        torch.testing.assert_close(jf(x, offset), f(x, offset))


# ---------------------------------------------------------------- linear algebra and distances

def test_lstsq_under_vmap_and_jit():
    """linalg_lstsq is tagged dynamic_output_shape (its residuals' size depends on A's rank),
    but CPU's default driver, gelsy, never returns residuals: its shapes are static there."""
    torch.manual_seed(0)
    A, B = torch.randn(3, 6, 3, dtype=D), torch.randn(3, 6, 2, dtype=D)

    def solve(a, b):
        return torch.linalg.lstsq(a, b).solution
    torch.testing.assert_close(functx.vmap(solve)(A, B), torch.stack([solve(a, b) for a, b in zip(A, B)]))
    torch.testing.assert_close(functx.jit(solve)(A[0], B[0]), solve(A[0], B[0]))
    loss = lambda a, b: solve(a, b).square().sum()  # noqa: E731
    torch.testing.assert_close(functx.jit(functx.vmap(functx.grad(loss)))(A, B),
                               torch.stack([torch.func.grad(loss)(a, b) for a, b in zip(A, B)]))
    with pytest.raises(functx.ConcretizationError, match="lstsq"):   # gelsd's residuals do depend on the rank
        functx.vmap(lambda a, b: torch.linalg.lstsq(a, b, driver="gelsd").solution)(A, B)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("driver", [None, "gels", "gelsy"])
def test_lstsq_drivers_with_static_shapes_under_jit_grad_vmap(driver, dtype):
    """gels (CUDA's default) returns residuals whenever A is tall, whatever its rank: its
    shapes follow from the shapes alone, like gelsy's, so it traces under jit and vmap (it
    raised a ConcretizationError). Oracle: eager torch, torch.autograd and a Python loop."""
    torch.manual_seed(0)
    kw = {} if driver is None else {"driver": driver}
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    for m in (6, 3):                    # tall (gels returns residuals) and wide
        A, B = torch.randn(3, m, 4, dtype=dtype), torch.randn(3, m, 2, dtype=dtype)

        def solve(a, b):
            r = torch.linalg.lstsq(a, b, **kw)
            return r.solution, r.residuals
        loop = [torch.stack(r) for r in zip(*[solve(a, b) for a, b in zip(A, B)])]
        for f, wants in ((functx.jit(solve), solve(A, B)), (functx.vmap(solve), loop),
                         (functx.jit(functx.vmap(solve)), loop)):
            for got, want in zip(f(A, B), wants):
                torch.testing.assert_close(got, want, **tol)
        loss = lambda a, b: solve(a, b)[0].square().sum()  # noqa: E731
        a = A[0].clone().requires_grad_()
        loss(a, B[0]).backward()
        for g in (functx.grad(loss), functx.jit(functx.grad(loss))):
            torch.testing.assert_close(g(A[0], B[0]), a.grad, **tol)
        want = torch.stack([torch.func.grad(loss)(x, y) for x, y in zip(A, B)])
        torch.testing.assert_close(functx.jit(functx.vmap(functx.grad(loss)))(A, B), want, **tol)


@pytest.mark.parametrize("p", [2.0, 1.0, 3.0, float("inf")])
def test_pdist_forward_and_second_order(p):
    """ATen's pdist has no forward-mode formula and its backward no derivative: jvp and
    hessian raised. Against finite differences and a Python loop over the pairs."""
    torch.manual_seed(0)
    x, t = torch.randn(5, 3, dtype=D), torch.randn(5, 3, dtype=D)
    f = lambda x: torch.nn.functional.pdist(x, p)  # noqa: E731
    eps = 1e-6
    torch.testing.assert_close(functx.jvp(f, (x,), (t,))[1], (f(x + eps * t) - f(x - eps * t)) / (2 * eps),
                               atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(functx.grad(lambda x: f(x).sum())(x), torch.func.grad(lambda x: f(x).sum())(x))
    pairs = lambda x: sum(torch.linalg.vector_norm(x[a] - x[b], ord=p)  # noqa: E731
                          for a in range(5) for b in range(a + 1, 5))
    torch.testing.assert_close(functx.hessian(lambda x: f(x).sum())(x),
                               torch.autograd.functional.hessian(pairs, x))
    xs = torch.stack([x, x + 1])
    torch.testing.assert_close(functx.jit(functx.vmap(f))(xs), torch.stack([f(x), f(x + 1)]))


def test_rrelu_in_eval_under_vmap():
    """F.rrelu(training=False) is leaky_relu with the mean slope; torch.func has no batching
    rule for ATen's rrelu_with_noise, which the fallback used."""
    x = torch.randn(3, 4, 5, dtype=D)
    f = lambda x: torch.nn.functional.rrelu(x, 0.1, 0.3, training=False)  # noqa: E731
    torch.testing.assert_close(functx.vmap(f)(x), torch.stack([f(r) for r in x]))
    torch.testing.assert_close(functx.jit(functx.vmap(functx.grad(lambda x: f(x).sum())))(x),
                               torch.stack([torch.func.grad(lambda x: f(x).sum())(r) for r in x]))


def test_ctc_loss_jitted_over_log_probs_with_constant_lengths():
    """ctc_loss's extra output has a size set by max(target_lengths); with the lengths known
    (closed over) the loss jits over traced log-probabilities. Traced lengths still raise."""
    torch.manual_seed(0)
    lp = torch.randn(6, 2, 5, dtype=D)
    targets, input_lengths, target_lengths = torch.tensor([[1, 2, 0], [1, 1, 3]]), torch.tensor([6, 5]), \
        torch.tensor([2, 3])
    f = lambda lp: torch.nn.functional.ctc_loss(lp.log_softmax(2), targets, input_lengths, target_lengths)  # noqa
    torch.testing.assert_close(functx.jit(f)(lp), f(lp))
    torch.testing.assert_close(functx.jit(functx.grad(f))(lp), torch.func.grad(f)(lp))
    with pytest.raises(functx.ConcretizationError, match="ctc_loss"):
        functx.jit(lambda lp, tl: torch.nn.functional.ctc_loss(lp.log_softmax(2), targets, input_lengths, tl))(
            lp, target_lengths)


def test_max_min_over_a_dim_of_bools_and_multivariate_normal():
    """torch's max/min(dim) take bools (LowerCholesky's constraint check runs
    (L.tril() == L).min(-1)); functx's lowering used argmin, which torch refuses on bools:
    MultivariateNormal(scale_tril=...) raised under every transform."""
    b = torch.tensor([[True, False, True], [True, True, True], [False, False, True]])
    for op in ("max", "min"):
        got, want = functx.jit(lambda b: getattr(b, op)(1))(b), getattr(b, op)(1)
        assert torch.equal(got.values, want.values) and torch.equal(got.indices, want.indices)
    torch.manual_seed(0)
    x, p = torch.rand(4, dtype=D) * 0.8 + 0.1, torch.rand(4, dtype=D) + 0.5

    def log_prob(p, x):
        tril = torch.diag(p) + torch.tril(torch.outer(x, x), -1)
        return torch.distributions.MultivariateNormal(p, scale_tril=tril).log_prob(x)
    torch.testing.assert_close(functx.jit(log_prob)(p, x), log_prob(p, x))
    P, X = torch.stack([p, p * 1.1]), torch.stack([x, x * 0.9])
    torch.testing.assert_close(functx.jit(functx.vmap(functx.grad(log_prob, argnums=(0, 1))))(P, X)[0],
                               torch.stack([torch.func.grad(log_prob)(P[i], X[i]) for i in range(2)]))


def test_cpp_composites_that_fill_a_tensor_they_make():
    """torch.vander (a C++ composite) makes a tensor with empty() and fills it in place; its
    factory call arrives through TracerTensor.__torch_function__'s frame and must count as
    the user's (torch's own autograd fails on vander's backward: finite differences decide)."""
    torch.manual_seed(0)
    x = torch.randn(4, dtype=D)
    f = lambda x: torch.vander(x, 3)  # noqa: E731
    loss = lambda x: (f(x) ** 2).sum()  # noqa: E731
    eps = 1e-6
    fd = torch.stack([(loss(x + eps * e) - loss(x - eps * e)) / (2 * eps) for e in torch.eye(4, dtype=D)])
    torch.testing.assert_close(functx.grad(loss)(x), fd, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(functx.jit(functx.vmap(f))(torch.stack([x, x + 1])), torch.stack([f(x), f(x + 1)]))


def test_bincount_under_jit_with_traced_weights():
    """bincount's length depends on the indices' values only: traced weights jit."""
    idx = torch.tensor([0, 1, 1, 3])
    w = torch.randn(4, dtype=D)
    torch.testing.assert_close(functx.jit(lambda w: torch.bincount(idx, weights=w) * 2)(w),
                               torch.bincount(idx, weights=w) * 2)


# ---------------------------------------------------------------- found by tools/opinfo_sweep.py's extra modes

@pytest.mark.parametrize("backend", ["eager", "cpu"])
def test_softmax_of_a_0d_tensor_propagates_inf_and_nan(backend):
    """A 0-d softmax/log_softmax is a row of one: exp(x - x), nan where x is not finite
    (torch); it was the constant 1 (0) whatever x held. _safe_softmax's -inf row stays 0."""
    fns = [lambda x: torch.softmax(x, 0), lambda x: torch.log_softmax(x, 0),
           lambda x: torch.ops.aten._safe_softmax(x, 0)]
    for f in fns:
        for v in (float("inf"), float("nan"), -float("inf"), 3.0):
            x = torch.tensor(v)
            torch.testing.assert_close(functx.jit(f, backend=backend)(x), f(x), equal_nan=True)
            torch.testing.assert_close(functx.vjp(f, x)[1](torch.tensor(1.0)),
                                       torch.func.vjp(f, x)[1](torch.tensor(1.0)), equal_nan=True)


@pytest.mark.parametrize("backend", ["eager", "cpu"])
def test_cdist_p0_propagates_nan(backend):
    """cdist(p=0) counts differing coordinates; a nan coordinate makes the distance nan (as
    torch), where `diff != 0` counted it as 1."""
    a, b = torch.randn(3, 2), torch.randn(4, 2)
    a[0, 0], a[1, 1], b[2, 0] = float("nan"), float("inf"), -float("inf")
    b[3] = a[2]
    f = lambda a, b: torch.cdist(a, b, p=0)  # noqa: E731
    torch.testing.assert_close(functx.jit(f, backend=backend)(a, b), f(a, b), equal_nan=True)


def test_scatter_add_into_an_empty_tensor_under_jit():
    """The pullback of a gather along axis 1 of an empty (0, 5) input is a scatter_add whose
    updates were reshaped with a -1, which torch refuses for 0 elements (jit of vjp raised)."""
    x, idx = torch.randn(0, 5, 2), torch.tensor([0, 2, 2])
    f = lambda x: x[:, idx] * 2.0  # noqa: E731
    ct = torch.randn(0, 3, 2)
    got = functx.jit(lambda x, ct: functx.vjp(f, x)[1](ct))(x, ct)
    torch.testing.assert_close(got, torch.func.vjp(f, x)[1](ct))


@pytest.mark.parametrize("backend", ["eager", "cpu"])
def test_vector_norm_of_one_element_is_its_magnitude(backend):
    """A norm over one element is |x| for every ord (torch's value); |x|^6 overflowed float32
    for |x| > ~1e6 and gave inf. Its derivative is sign(x) (torch's own backward overflows to
    nan at 3e15 for ord=6)."""
    x = torch.tensor([[3e15], [-2.0], [0.0]])
    for ord in (6, 2, -3, 0.5, math.inf):
        f = lambda x: torch.linalg.vector_norm(x, ord, dim=1)  # noqa: E731
        torch.testing.assert_close(functx.jit(f, backend=backend)(x), f(x))
        torch.testing.assert_close(functx.vjp(f, x)[1](torch.ones(3))[0], torch.sign(x))


def test_std_mean_of_constant_data_has_finite_derivatives():
    """std_mean went through torch's var_mean + sqrt decomposition: on a constant row the
    sqrt's derivative made both cotangents nan; torch gives std's 0 plus the mean's 1/n."""
    for x in (torch.zeros(3, 4), torch.randn(3, 4)):
        for kw in (dict(dim=1), dict(dim=(0, 1), keepdim=True), dict(dim=1, correction=0)):
            f = lambda x: torch.std_mean(x, **kw)  # noqa: E731, B023
            out = f(x)
            cts = (torch.randn_like(out[0]), torch.randn_like(out[1]))
            torch.testing.assert_close(functx.jit(f)(x), out)
            torch.testing.assert_close(functx.vjp(f, x)[1](cts)[0], torch.func.vjp(f, x)[1](cts)[0])


def test_sinc_derivative_at_large_inputs():
    """sinc's small-argument series was evaluated everywhere; at |x| ~ 1e15 its powers
    overflowed and the unselected branch's inf * 0 made the derivative nan."""
    x = torch.tensor([1e15, -3e14, 2.5])
    got = functx.vjp(torch.sinc, x)[1](torch.ones(3))[0]
    torch.testing.assert_close(got, torch.func.vjp(torch.sinc, x)[1](torch.ones(3))[0])


def test_layer_norm_gradient_of_large_float32_inputs():
    """rsqrt's derivative was t * (y / x * -1/2): y / x = x^-1.5 is a float32 subnormal for
    x > ~1e25, so layer_norm's gradient at inputs ~1e15 lost every digit (60% error)."""
    import torch.nn.functional as F
    torch.manual_seed(0)
    x, w, b, ct = torch.randn(2, 5) * 1e15, torch.randn(5) * 1e15, torch.randn(5) * 1e15, torch.randn(2, 5)
    f = lambda x, w, b: F.layer_norm(x, (5,), w, b)  # noqa: E731
    want = torch.func.vjp(f, x.double(), w.double(), b.double())[1](ct.double())
    for got, ref in zip(functx.vjp(f, x, w, b)[1](ct), want):
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("x", [torch.eye(3), torch.zeros(3, 3)], ids=["eye", "zeros"])
def test_eigvalsh_and_svdvals_gradients_at_repeated_values(x):
    """Through the opaque fallback (_linalg_eigh, _linalg_svd) the unused eigen/singular vector
    outputs got a zero cotangent, and torch's backward then adds 0 * 1/(l_i - l_j) = nan at
    repeated values; torch (an undefined cotangent) skips that term."""
    fns = [torch.linalg.eigvalsh, torch.linalg.svdvals, lambda x: torch.linalg.matrix_norm(x, "nuc")]
    for f in fns:
        ct = torch.ones_like(f(x))
        want = torch.func.vjp(f, x)[1](ct)[0]
        torch.testing.assert_close(functx.vjp(f, x)[1](ct)[0], want)
        torch.testing.assert_close(functx.jit(lambda x: functx.vjp(f, x)[1](ct)[0])(x), want)  # noqa: B023


def test_topk_of_a_0d_tensor():
    """torch.topk of a 0-d tensor is (x, 0) (k = 0 or 1); functx raised an IndexError."""
    x = torch.tensor(3.0)
    for k in (0, 1):
        f = lambda x: torch.topk(x, k)  # noqa: E731, B023
        values, indices = functx.jit(f)(x)
        torch.testing.assert_close(values, x)
        assert indices.dtype == torch.int64 and indices.item() == 0 and indices.ndim == 0
        torch.testing.assert_close(functx.vjp(lambda x: f(x)[0], x)[1](torch.tensor(2.0))[0], torch.tensor(2.0))  # noqa: B023


def test_gather_with_an_empty_or_0d_input_index():
    """torch.gather accepts an empty index of any integer dtype and rank (OpInfo samples
    them); functx's take_along_axis refused uint8 and the rank mismatch."""
    x = torch.randn(5)
    for shape in ((0,), (2, 0)):
        idx = torch.zeros(shape, dtype=torch.uint8)
        f = lambda x: torch.gather(x, 0, idx)  # noqa: E731, B023
        torch.testing.assert_close(functx.jit(f)(x), f(x))
        torch.testing.assert_close(functx.vjp(f, x)[1](torch.ones(shape))[0], torch.zeros(5))
    x = torch.tensor(3.0)      # a 0-d input with a 1-d index: one element
    for idx in (torch.tensor([0]), torch.tensor(0)):
        f = lambda x: torch.gather(x, 0, idx) * 2.0  # noqa: E731, B023
        torch.testing.assert_close(functx.jit(f)(x), f(x))
        torch.testing.assert_close(functx.vjp(f, x)[1](torch.ones(idx.shape))[0], torch.tensor(2.0))
