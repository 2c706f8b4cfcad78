"""Random ops under transforms and jit: factories without traced arguments (torch.randn(shape),
torch.rand, torch.randint, torch.normal(float, float, size), torch.randperm, in-place fills of
plain tensors) are random primitives while functx traces, so jit draws fresh numbers per call
and vmap applies `randomness`."""
import importlib

import pytest
import torch
import torch.nn.functional as F

import functx
from functx.core import FunctxError

F64 = torch.float64

FACTORIES = {
    "randn": lambda: torch.randn(64, dtype=F64),
    "rand": lambda: torch.rand(64, dtype=F64),
    "randint": lambda: torch.randint(0, 1000, (64,)).to(F64),
    "randint_high": lambda: torch.randint(1000, (64,)).to(F64),
    "normal": lambda: torch.normal(2.0, 3.0, (64,), dtype=F64),
    "randperm": lambda: torch.randperm(64).to(F64),
    "bernoulli_const": lambda: torch.bernoulli(torch.full((64,), 0.5, dtype=F64)),
    "rand_like_const": lambda: torch.rand_like(torch.zeros(64, dtype=F64)),
    "poisson_const": lambda: torch.poisson(torch.full((64,), 50.0, dtype=F64)),     # generic path
    "randn_generator": lambda: torch.randn(64, dtype=F64, generator=GEN),           # generic path
    "exponential_inplace": lambda: torch.empty(64, dtype=F64).exponential_(),
}
GEN = torch.Generator().manual_seed(0)


def _use(make):
    return lambda x: x + make()


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_jit_draws_fresh_numbers(name):
    make = FACTORIES[name]
    # exponential_inplace: torch.empty(...) made inside is filled in place (a wrapper under jit)
    f = functx.jit(_use(make))
    if name == "randn_generator":   # a closed-over generator's stream can't be staged: a clear error
        with pytest.raises(FunctxError, match="torch.Generator that is not an argument"):
            f(torch.zeros(64, dtype=F64))
        return
    x = torch.zeros(64, dtype=F64)
    a, b = f(x), f(x)
    assert f.cache_size() == 1
    assert not torch.equal(a, b), "jit baked random numbers in as constants"


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_vmap_randomness_modes(name):
    make = FACTORIES[name]
    xs = torch.zeros(5, 64, dtype=F64)
    with pytest.raises(FunctxError, match="randomness='error'"):
        functx.vmap(_use(make))(xs)
    same = functx.vmap(_use(make), randomness="same")(xs)
    assert same.shape == (5, 64)
    assert all(torch.equal(same[0], same[i]) for i in range(1, 5))
    diff = functx.vmap(_use(make), randomness="different")(xs)
    assert diff.shape == (5, 64)
    assert all(not torch.equal(diff[0], diff[i]) for i in range(1, 5))


def test_distributions_are_right():
    torch.manual_seed(0)
    x = torch.zeros(20000, dtype=F64)
    n = functx.jit(lambda x: x + torch.normal(2.0, 3.0, (20000,), dtype=F64))(x)
    assert abs(float(n.mean()) - 2.0) < 0.1 and abs(float(n.std()) - 3.0) < 0.1
    u = functx.jit(lambda x: x + torch.rand(20000, dtype=F64))(x)
    assert 0 <= float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.02
    r = functx.jit(lambda x: x + torch.randint(3, 7, (20000,)))(x)
    assert set(r.unique().tolist()) == {3.0, 4.0, 5.0, 6.0}
    assert torch.randint(3, 7, (2,)).dtype == functx.jit(lambda x: torch.randint(3, 7, (2,)) + 0 * x.long())(
        torch.zeros(2, dtype=torch.long)).dtype
    # batched randperm: every row a permutation, rows differ
    p = functx.vmap(lambda x: x + torch.randperm(10), randomness="different")(torch.zeros(50, 10))
    assert all(sorted(row.tolist()) == list(range(10)) for row in p)
    assert len({tuple(row.tolist()) for row in p}) > 40
    b = functx.vmap(lambda x: x + torch.bernoulli(torch.full((1000,), 0.3)), randomness="different")(
        torch.zeros(20, 1000))
    assert abs(float(b.mean()) - 0.3) < 0.02


def test_different_samples_are_independent():
    xs = torch.zeros(200, 50, dtype=F64)
    d = functx.vmap(lambda x: x + torch.randn(50, dtype=F64), randomness="different")(xs)
    c = torch.corrcoef(d[:, :10].T)          # correlations between positions across rows ~ 0
    off = c - torch.diag(torch.diag(c))
    assert float(off.abs().max()) < 0.35
    rows = torch.corrcoef(d[:10])            # and between rows
    assert float((rows - torch.eye(10, dtype=F64)).abs().max()) < 0.6


def test_eager_transforms_match_torch():
    # Eager transforms draw exactly what torch would, from the global generator.
    def f(x):
        return (x * torch.randn(3, dtype=F64) + torch.rand(3, dtype=F64)).sum()
    x = torch.ones(3, dtype=F64)
    torch.manual_seed(7)
    g = functx.grad(f)(x)
    torch.manual_seed(7)
    assert torch.equal(g, torch.randn(3, dtype=F64))
    torch.manual_seed(7)
    _, t = functx.jvp(f, (x,), (torch.ones(3, dtype=F64),))
    torch.manual_seed(7)
    assert torch.allclose(t, torch.randn(3, dtype=F64).sum())


def test_grad_with_noise_under_jit_and_vmap():
    # A noisy loss: jit(grad) gives a new noise sample per call; gradients are the noise.
    loss = lambda w: (w * torch.randn(4, dtype=F64)).sum()
    g = functx.jit(functx.grad(loss))
    w = torch.zeros(4, dtype=F64)
    assert not torch.equal(g(w), g(w))
    per = functx.vmap(functx.grad(loss), randomness="different")(torch.zeros(3, 4, dtype=F64))
    assert not torch.equal(per[0], per[1])
    same = functx.vmap(functx.grad(loss), randomness="same")(torch.zeros(3, 4, dtype=F64))
    assert torch.equal(same[0], same[1]) and torch.equal(same[0], same[2])


def test_nested_and_traced_random_ops():
    # random ops on traced values (dropout) and factories mix under jit(vmap(...))
    def f(x):
        return F.dropout(x, 0.5, training=True) + torch.randn(x.shape, dtype=F64)
    jf = functx.jit(functx.vmap(f, randomness="different"))
    xs = torch.ones(4, 8, dtype=F64)
    a, b = jf(xs), jf(xs)
    assert not torch.equal(a, b)
    assert not torch.equal(a[0], a[1])
    with pytest.raises(FunctxError, match="randomness='error'"):
        functx.jit(functx.vmap(f))(xs)


def test_graph_shows_random_and_no_constants():
    g = functx.make_graph(lambda x: x + torch.randn(3) * torch.randint(0, 2, (3,)))(torch.zeros(3))
    text = str(g)
    assert text.count("random(") == 2 and "randint" in text
    assert not g.consts, "a random factory was baked in as a constant"


def test_mode_is_only_active_inside_transforms():
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
    seen = []
    functx.grad(lambda x: (seen.append(len(_get_current_dispatch_mode_stack())) or x).sum())(torch.ones(2))
    functx.vmap(functx.grad(lambda x: (seen.append(len(_get_current_dispatch_mode_stack())) or x).sum()))(
        torch.ones(2, 2))
    assert seen == [1, 1]                    # nested transforms don't stack a second mode
    assert len(_get_current_dispatch_mode_stack()) == 0


def test_fills_of_plain_tensors_eagerly():
    # in-place and out= fills of a tensor made inside the function: eager transforms write the
    # sample into it (as torch would); 'same' under vmap shares it
    def f(x):
        b = torch.empty(3, dtype=F64)
        torch.randn(3, out=b, dtype=F64)
        return x + b + torch.zeros(3, dtype=F64).uniform_(5.0, 6.0)
    torch.manual_seed(3)
    out = functx.vmap(f, randomness="same")(torch.zeros(2, 3, dtype=F64))
    torch.manual_seed(3)
    want = torch.randn(3, dtype=F64) + torch.zeros(3, dtype=F64).uniform_(5.0, 6.0)
    assert torch.equal(out[0], want) and torch.equal(out[1], want)
    assert torch.equal(functx.grad(lambda x: f(x).sum())(torch.zeros(3, dtype=F64)), torch.ones(3, dtype=F64))


def test_staged_or_batched_reads_the_axis_environment():
    """Eager grad/jvp neither stage nor batch (a random op may run as torch); vmap batches
    and jit stages. (random_mode asks this before running a multi-output random op.)"""
    from functx.core.trace import staged_or_batched
    seen = {}

    def probe(tag):
        def f(x):
            seen[tag] = staged_or_batched()
            return x.sin().sum()
        return f
    x = torch.randn(3)
    assert not staged_or_batched()
    functx.grad(probe("grad"))(x)
    functx.jvp(probe("jvp"), (x,), (x,))
    functx.vmap(probe("vmap"))(x)
    functx.jit(probe("jit"))(x)
    assert seen == {"grad": False, "jvp": False, "vmap": True, "jit": True}


# ---------------------------------------------------------------- explicit generators under jit

def _draws(x, g):
    """Every way of drawing from an explicit generator: factories, the generic path, fills
    and samplers of traced tensors."""
    return (x + torch.randn(3, generator=g) + torch.rand(3, generator=g) * 2
            + torch.randint(0, 5, (3,), generator=g) + x.new_empty(3).normal_(generator=g)
            + torch.normal(x, 2.0, generator=g) + torch.bernoulli(torch.full_like(x, 0.5), generator=g)
            + torch.empty_like(x).uniform_(-1, 1, generator=g) + x.new_empty(3).exponential_(generator=g))


def test_jit_with_a_generator_argument_continues_its_stream_as_eager_torch():
    """A generator passed to the jitted function: its state is read at each call and advanced,
    so repeated calls give eager PyTorch's stream (not the trace-time draws again), and one
    trace serves every generator."""
    x = torch.zeros(3, dtype=F64)
    jf = functx.jit(_draws)
    for seed in (0, 0, 7):
        ge, gj = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        for _ in range(3):
            torch.testing.assert_close(jf(x, gj), _draws(x, ge))
        assert torch.equal(gj.get_state(), ge.get_state())
    assert jf.cache_size() == 1
    # under grad, inside jit: the same draws as torch.func's eager grad
    loss = lambda x, g: (x * _draws(x, g)).sum()        # noqa: E731
    ge, gj = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for _ in range(2):
        torch.testing.assert_close(functx.jit(functx.grad(loss))(x, gj), torch.func.grad(loss)(x, ge))


def test_eager_transforms_draw_from_the_generator_they_are_given():
    """torch.normal(traced, std, generator=g) and friends drew from the global generator."""
    x = torch.zeros(3, dtype=F64)
    ge, gf = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    torch.testing.assert_close(functx.grad(lambda x: (x * _draws(x, gf)).sum())(x),
                               torch.func.grad(lambda x: (x * _draws(x, ge)).sum())(x))


def test_torch_distributions_under_jit_and_vmap():
    """torch.distributions as model code uses it: argument validation (torch._is_all_true
    tested by Python), rsample (torch.empty(shape).normal_()), log_prob and KL. Under jit the
    draws follow eager torch's stream; invalid parameters raise when the program runs; under
    vmap the validation covers every example, as in torch.func."""
    D = torch.distributions
    f = functx.jit(lambda m, s: D.Normal(m, s).rsample())
    torch.manual_seed(0)
    got = [f(torch.zeros(3), torch.ones(3)) for _ in range(2)]
    torch.manual_seed(0)
    want = [D.Normal(torch.zeros(3), torch.ones(3)).rsample() for _ in range(2)]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    with pytest.raises(ValueError, match="_is_all_true was False"):
        f(torch.zeros(3), -torch.ones(3))

    def nll(mu, log_sigma, x):
        q = D.Normal(mu, log_sigma.exp())
        return -q.log_prob(x).sum() + D.kl_divergence(q, D.Normal(0.0, 1.0)).sum()
    x = torch.randn(4, 3, dtype=torch.float64)
    mu, ls = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    want = torch.func.vmap(torch.func.grad(nll, argnums=(0, 1)), in_dims=(None, None, 0))(mu, ls, x)
    for transform in (lambda g: g, functx.jit):
        got = transform(functx.vmap(functx.grad(nll, argnums=(0, 1)), in_axes=(None, None, 0)))(mu, ls, x)
        torch.testing.assert_close(got, want)
    draws = functx.vmap(lambda m: D.Normal(m, 1.0).rsample(), randomness="different")(torch.zeros(4, 2))
    assert draws.shape == (4, 2) and not torch.equal(draws[0], draws[1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rrelu_in_training_differentiates_the_slopes_it_drew(dtype):
    # rrelu(training=True) went through the opaque fallback, whose jvp ran the kernel again
    # and drew other slopes: the tangent was not the derivative of the value
    x = torch.randn(4, 5, dtype=dtype, generator=torch.Generator().manual_seed(0))

    def f(x):
        torch.manual_seed(42)
        return F.rrelu(x, 0.1, 0.7, training=True)
    value = f(x)
    out, tangent = functx.jvp(f, (x,), (torch.ones_like(x),))
    assert torch.equal(out, value)                                  # eager's slopes, same seed
    torch.testing.assert_close(tangent, torch.func.jvp(f, (x,), (torch.ones_like(x),))[1])
    torch.testing.assert_close(functx.grad(lambda x: f(x).sum())(x), torch.func.grad(lambda x: f(x).sum())(x))
    # under jit the slopes are drawn on every call (they were drawn once, at trace time, and
    # reused), from the global generator as eager torch draws them
    jitted = functx.jit(lambda x: F.rrelu(x, 0.1, 0.7, training=True))
    torch.manual_seed(42)
    assert torch.equal(jitted(x), value)
    assert not torch.equal(jitted(x), value)


def test_random_fills_without_a_lowering_draw_eagers_numbers():
    # x.exponential_() (F.gumbel_softmax's noise) ran torch._decomp's decomposition, -log(u),
    # where torch's kernel takes -log1p(-u): other samples than eager under the same seed
    logits = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def f(x):
        torch.manual_seed(3)
        return F.gumbel_softmax(x, tau=0.5) + torch.empty_like(x).exponential_(2.0) + torch.empty_like(x).cauchy_()
    want = f(logits)
    # the same samples; the softmax of the noisy logits may round differently from torch's
    # vectorized kernel (1 ulp on some CPUs), other samples would differ by O(1)
    same = dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(functx.jvp(f, (logits,), (torch.ones_like(logits),))[0], want, **same)
    torch.testing.assert_close(functx.vmap(f, randomness="same")(logits[None])[0], want, **same)
    torch.manual_seed(3)
    g = lambda x: F.gumbel_softmax(x, tau=0.5)  # noqa: E731
    a = g(logits)
    torch.manual_seed(3)
    torch.testing.assert_close(functx.jit(g)(logits), a)      # (the compiled softmax may round differently)


def test_gamma_rsample_derivative_is_taken_at_the_drawn_sample():
    # torch._standard_gamma went through the opaque fallback, whose rules ran the sampler again:
    # the derivative was torch's _standard_gamma_grad at another sample than the value's
    alpha = torch.tensor([0.7, 1.5, 3.0], dtype=torch.float64)

    def draw(a):
        torch.manual_seed(7)
        return torch._standard_gamma(a)
    a = alpha.clone().requires_grad_(True)
    want = torch.autograd.grad(draw(a).sum(), a)[0]
    torch.testing.assert_close(functx.grad(lambda a: draw(a).sum())(alpha), want)
    for dist in (lambda a: torch.distributions.Gamma(a, 2.0), lambda a: torch.distributions.StudentT(a + 1)):
        def loss(a, dist=dist):
            torch.manual_seed(3)
            return dist(a).rsample().pow(2).sum()
        torch.testing.assert_close(functx.grad(loss)(alpha), torch.func.grad(loss)(alpha))
    sample, tangent = functx.jit(lambda a: functx.jvp(torch._standard_gamma, (a,), (torch.ones_like(a),)))(alpha)
    torch.testing.assert_close(tangent, torch._standard_gamma_grad(alpha, sample))    # one draw per call
    with pytest.raises(NotImplementedError):      # torch has no second derivative here either
        functx.hessian(lambda a: draw(a).sum())(alpha)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dropout_draws_eagers_numbers_under_every_transform(dtype):
    # x.bernoulli_(p) with a number p (F.dropout's mask on the CPU) is its own kernel (MKL's
    # stream on x86), not uniforms compared with p: the mask differed from eager's under the
    # same seed, so a model's loss and gradients in train mode differed from torch.func's
    def f(x):
        torch.manual_seed(5)
        return F.dropout(x * 2, 0.4) + torch.empty_like(x).bernoulli_(0.3) + F.dropout2d(x[None, :, None], 0.5)[0, :, 0]
    x = torch.ones(64, dtype=dtype)
    want = f(x)
    assert torch.equal(functx.vjp(f, x)[0], want)
    assert torch.equal(functx.jvp(f, (x,), (x,))[0], want)
    assert torch.equal(functx.linearize(f, x)[0], want)
    torch.manual_seed(1)
    g = lambda x: F.dropout(x * 2, 0.4)      # noqa: E731
    eager = g(x)
    jitted = functx.jit(g)
    jitted(x)
    torch.manual_seed(1)
    assert torch.equal(jitted(x), eager)
    gen = lambda x, gen: torch.empty_like(x).bernoulli_(0.4, generator=gen) * x     # noqa: E731
    assert torch.equal(functx.jit(gen)(x, torch.Generator().manual_seed(3)), gen(x, torch.Generator().manual_seed(3)))

    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1)).to(dtype)
    xb = torch.randn(4, 8, dtype=dtype)

    def loss(p):
        torch.manual_seed(0)
        return torch.func.functional_call(model, p, (xb,)).pow(2).mean()
    params = dict(model.named_parameters())
    got, oracle = functx.grad(loss)(params), torch.func.grad(loss)(params)
    for k in params:
        torch.testing.assert_close(got[k], oracle[k])
    rate = functx.vmap(lambda x: F.dropout(x, 0.3), randomness="different")(torch.ones(3, 20000, dtype=dtype))
    assert ((rate == 0).to(dtype).mean(1) - 0.3).abs().max() < 0.02


def test_training_dropout_is_one_draw_at_the_level(monkeypatch):
    """F.dropout while training (CPU) is the mask drawn as one random primitive at the level
    and two products (frontend/random_mode._dropout). Run from __torch_function__, where
    functx's dispatch mode is still active, the draw must not pass through the mode again (a
    'call' draw wrapping the bernoulli kernel, 50x slower on this path's first version): one
    bernoulli draw per dropout, eager's mask and random state, torch.func's gradients; an
    in-place dropout, p of 1 or 0 take torch's function with eager's values."""
    random_p = importlib.import_module("functx.prims.random").random_p
    dists = []
    monkeypatch.setattr(random_p, "impl", (lambda impl: lambda **k: dists.append(k["dist"]) or impl(**k))(random_p.impl))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.25), torch.nn.GELU(), torch.nn.Dropout(0.1),
                                torch.nn.Linear(16, 1)).double()
    xb = torch.randn(4, 8, dtype=F64)
    params = dict(model.named_parameters())

    def loss(p):
        return torch.func.functional_call(model, p, (xb,)).pow(2).mean()
    torch.manual_seed(3)
    got = functx.grad(loss)(params)
    after = torch.rand(1)
    assert dists == ["bernoulli", "bernoulli"]
    torch.manual_seed(3)
    want = torch.func.grad(loss)(params)
    assert torch.equal(after, torch.rand(1))
    for k in params:
        torch.testing.assert_close(got[k], want[k])
    x = torch.ones(5, dtype=F64)
    for f in (lambda x: F.dropout(x * 1, 0.5, inplace=True), lambda x: F.dropout(x, 1.0), lambda x: F.dropout(x, 0.0)):
        torch.manual_seed(1)
        eager = f(x.clone())
        torch.manual_seed(1)
        assert torch.equal(functx.jvp(f, (x.clone(),), (x,))[0], eager)


NORMALS_OF_TENSORS = {
    "normal(mean, std)": lambda t: torch.normal(t, t + 1.0),
    "normal(float, std)": lambda t: torch.normal(0.5, t + 1.0),
    "normal(mean, std) broadcast": lambda t: torch.normal(t[:, None], t + 1.0),
    "Normal(t, 1).sample()": lambda t: torch.distributions.Normal(t, 1.0).sample(),
}


@pytest.mark.parametrize("name", sorted(NORMALS_OF_TENSORS))
def test_normal_of_traced_tensors_draws_every_call_and_per_example(name):
    """torch.normal(Tensor, Tensor) / (float, Tensor) ran torch's decomposition, which draws
    with prims.normal, a factory without traced arguments: the sample was drawn once and
    reused by every later call (jit and eager transforms) and every vmap example."""
    f = NORMALS_OF_TENSORS[name]
    t = torch.rand(3, dtype=F64)
    torch.manual_seed(5)
    want = f(t)
    for run in (functx.jit(f), lambda t: functx.vmap(f, randomness="same")(t[None])[0],
                lambda t: functx.jvp(f, (t,), (torch.ones_like(t),))[0]):
        torch.manual_seed(5)
        assert torch.equal(run(t), want)            # eager torch's numbers for the same seed
        assert not torch.equal(run(t), want)        # and fresh ones on the next call
    per = functx.vmap(f, randomness="different")(t.expand(2, 3))
    assert not torch.equal(per[0], per[1])
    # torch.normal is not reparameterized: its derivative in mean and std is zero, as in torch
    g = lambda t: (f(t) * t).sum()
    torch.manual_seed(5)
    got = functx.grad(g)(t)
    torch.manual_seed(5)
    torch.testing.assert_close(got, torch.func.grad(g)(t))


OPAQUE_SAMPLERS = {
    "poisson": torch.poisson,
    "multinomial": lambda t: torch.multinomial(t, 3, replacement=True).to(t.dtype),
    "randint_like": lambda t: torch.randint_like(t, 1000),
    "binomial": lambda t: torch.binomial(t, torch.full_like(t, 0.5)),
}


@pytest.mark.parametrize("name", sorted(OPAQUE_SAMPLERS))
def test_samplers_without_a_lowering_take_vmaps_randomness(name):
    """Samplers that reach the opaque fallback were vmapped by torch.func with its default
    randomness='error', so vmap(randomness='different' / 'same') raised torch's error."""
    f = OPAQUE_SAMPLERS[name]
    t = torch.full((2, 6), 40.0, dtype=F64)
    per = functx.vmap(f, randomness="different")(t)
    assert per.shape == f(t[0]).shape[:0] + (2,) + f(t[0]).shape and not torch.equal(per[0], per[1])
    jitted = functx.jit(functx.vmap(f, randomness="different"))
    assert not torch.equal(jitted(t), jitted(t))
    with pytest.raises(Exception, match="randomness"):
        functx.vmap(f)(t)


@pytest.mark.parametrize("name", ["binomial", "sample_dirichlet"])
def test_samplers_of_plain_tensors_without_meta_kernels(name):
    """A sampler of plain tensors with no meta kernel (its output type could not be computed
    without drawing) raised 'several outputs' under jit and vmap."""
    c, p, a = torch.full((4,), 20.0, dtype=F64), torch.full((4,), 0.5, dtype=F64), torch.full((3,), 2.0, dtype=F64)
    draw = {"binomial": lambda: torch.binomial(c, p), "sample_dirichlet": lambda: torch._sample_dirichlet(a)}[name]
    f = lambda t: t + draw()
    torch.manual_seed(3)
    want = draw()
    torch.manual_seed(3)
    same = functx.vmap(f, randomness="same")(torch.zeros(3, 1, dtype=F64))
    assert torch.equal(same[0], want) and torch.equal(same[1], want)     # the type run drew nothing
    per = functx.vmap(f, randomness="different")(torch.zeros(3, 1, dtype=F64))
    assert not torch.equal(per[0], per[1])
    jitted = functx.jit(f)
    assert not torch.equal(jitted(torch.zeros(1, dtype=F64)), jitted(torch.zeros(1, dtype=F64)))


def test_randint_like_is_a_random_primitive():
    """torch.randint_like went through the opaque fallback: grad raised (its jvp), where
    torch.func's derivative through it is zero."""
    t = torch.rand(5, dtype=F64)
    f = lambda t: torch.randint_like(t, 3, 20)
    g = lambda t: (f(t) * t).sum()
    torch.manual_seed(2)
    want = f(t)
    torch.manual_seed(2)
    want_grad = torch.func.grad(g)(t)
    torch.manual_seed(2)
    assert torch.equal(functx.jit(f)(t), want)
    torch.manual_seed(2)
    torch.testing.assert_close(functx.grad(g)(t), want_grad)
    same = functx.vmap(f, randomness="same")(t.expand(3, 5))
    assert torch.equal(same[0], same[1])
