"""Research code nobody on the team wrote (diffusion models, PINNs, score matching,
consistency models, normalizing flows, meta-learning, neural ODEs), with a researcher's
habits, under functx's transforms eagerly and under functx.jit. Each test pins either a
divergence that was found and fixed (the docstring says what was wrong and which oracle
decides) or a representative program that already worked. Oracles run in float64:
torch.func / torch.autograd on the same code, central finite differences where those
disagree with torch.func, eager torch for errors, and a Python loop for vmap."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from fd_oracles import assert_trees_close as _close

import functx

D = torch.float64


def _torch_error(fn):
    try:
        fn()
    except RuntimeError as e:
        return str(e)
    raise AssertionError("eager torch accepted it")


# ---------------------------------------------------------------- errors: torch's own message

_G = torch.rand(2, 4, 4, 2, dtype=D) * 2 - 1


@pytest.mark.parametrize("name,f,x", [
    ("grid_sample batch", lambda x: F.grid_sample(x, _G, align_corners=False), torch.randn(1, 3, 5, 6, dtype=D)),
    ("pixel_unshuffle", lambda x: F.pixel_unshuffle(x, 2), torch.randn(1, 3, 5, 6, dtype=D)),
    ("pixel_shuffle", lambda x: F.pixel_shuffle(x, 2), torch.randn(1, 3, 5, 6, dtype=D)),
    ("view", lambda x: x.view(7, -1), torch.randn(1, 3, 5, 6, dtype=D)),
])
@pytest.mark.parametrize("how", ["grad", "jit", "vmap"])
def test_shape_errors_are_torchs_own(name, f, x, how):
    """A spatial transformer whose sampling grid has another batch size, a super-resolution
    head whose channels are not divisible by r^2: torch's kernels check the shapes, but
    functx ran torch._decomp's decompositions (grid_sampler_2d, pixel_shuffle), which reshape
    first, so the user got "shape '[1, 1, 4, 4, 2]' is invalid for input of size 64" from
    deep inside the decomposition (under jit "reshape: can't reshape f64[1,3,5,6] to
    [1, 0, 2, 2, 5, 6]", and x.view(7, -1) named the size functx inferred, [7, 12]). Now a
    torch function that fails inside functx runs once more on plain tensors of the same
    shapes (zeros, then ones: a rule about shapes, not values), and torch's error is raised.
    Oracle: eager torch's message, per example under vmap (as torch.func.vmap says it)."""
    want = _torch_error(lambda: f(x))
    run = {"grad": lambda: functx.grad(lambda x: f(x).sum())(x),
           "jit": lambda: functx.jit(f)(x),
           "vmap": lambda: functx.vmap(lambda x: f(x[None])[0])(x.expand(2, *x.shape[1:]))}[how]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError) as info:
            run()
    assert str(info.value) == want


def test_a_shape_error_under_vmap_names_per_example_dims():
    """torch.cat of per-example tensors under vmap: functx's message counted the hidden batch
    dim ("... except in dimension 1", as torch.func.vmap's does); the user's code has no
    dimension 1 there. Oracle: eager torch's message for one example."""
    x = torch.randn(2, 3, 5)
    f = lambda x: torch.cat([x, x[:1, :2]], 0)  # noqa: E731
    want = _torch_error(lambda: f(x[0]))
    with pytest.raises(RuntimeError) as info:
        functx.vmap(f)(x)
    assert str(info.value) == want


# ---------------------------------------------------------------- jvp / linearize tangents

def _embed(x, t):
    """A consistency model's time conditioning with an integer timestep."""
    half = 4
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=x.dtype) / half)
    a = t[:, None].to(x.dtype) * freqs[None]
    return x * torch.cat([a.sin(), a.cos()], -1)


def test_a_nonzero_tangent_for_an_integer_primal_raises():
    """jvp(f, (x, t), (dx, dt)) with t a torch.long timestep: functx took the integer primal
    as non-differentiable and dropped its tangent, so dt = ones (or a float tangent) gave a
    tangent output as if dt were zero: silently other numbers. torch.func raises for
    integer primals; JAX asks for float0 tangents. Now an integer primal's tangent must be
    an integer tensor of zeros (checked where its values are known); a floating or nonzero
    one raises naming the primal. linearize's f_jvp also took a float64 tangent for a
    float32 primal (and returned float64) where jvp and torch.func.linearize raise."""
    x, t = torch.randn(3, 8, dtype=D), torch.tensor([1, 10, 100])
    want = torch.func.jvp(lambda x: _embed(x, t), (x,), (x,))
    _close(functx.jvp(_embed, (x, t), (x, torch.zeros_like(t))), want)
    _close(functx.jit(lambda x, t, dt: functx.jvp(_embed, (x, t), (x, dt)))(x, t, torch.zeros_like(t)), want)
    for dt in (torch.ones_like(t), torch.ones(3, dtype=D)):
        with pytest.raises(ValueError, match=r"functx.jvp: primal 1 has dtype torch.int64.*zeros_like"):
            functx.jvp(_embed, (x, t), (x, dt))
    _, f_jvp = functx.linearize(_embed, x, t)
    _close(f_jvp(x, torch.zeros_like(t)), want[1])
    with pytest.raises(ValueError, match=r"functx.linearize: primal 1 has dtype torch.int64"):
        f_jvp(x, torch.ones(3))
    with pytest.raises(ValueError, match=r"functx.linearize: tangent 0 has dtype torch.float32, its primal"):
        f_jvp(x.float(), torch.zeros_like(t))


# ---------------------------------------------------------------- kinks and where torch.func is wrong

def test_huber_hessian_where_the_residual_equals_delta():
    """A robust-regression Newton step with integer-valued residuals and delta=1: at
    |x - y| == delta functx's huber took the linear branch (Hessian 0) where torch's backward
    and double-backward formulas clamp the residual to [-delta, delta] (the quadratic branch,
    1 / n). Oracle: torch.func.hessian (smooth_l1's double backward takes the linear branch
    at |x - y| == beta; functx keeps that). Values stay bit-equal to torch's kernel."""
    x = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0, -0.3], dtype=D)
    for f in (lambda x: F.huber_loss(x, torch.zeros_like(x), delta=1.0),
              lambda x: F.huber_loss(x, torch.zeros_like(x), delta=0.3, reduction="sum"),
              lambda x: F.smooth_l1_loss(x, torch.zeros_like(x), beta=1.0)):
        want = torch.func.hessian(f)(x)
        _close(functx.hessian(f)(x), want)
        _close(functx.jit(functx.hessian(f))(x), want)
        assert torch.equal(functx.jit(f)(x), f(x))


def test_second_derivatives_where_torch_func_is_wrong():
    """Worked already: functx's Hessians match finite differences of torch.autograd's gradient
    where torch.func.hessian is wrong: sinc at 0 (torch.func: 0, the truth -pi^2/3), det of a
    singular matrix (torch.func: NaN), and cholesky_inverse (a GP's precision matrix; off by
    up to 1.0, checked along a symmetric direction since cholesky reads one triangle)."""
    from fd_oracles import central_differences
    x = torch.tensor([-1.0, 0.0, 0.5], dtype=D)
    sinc = lambda x: torch.sinc(x).sum()  # noqa: E731
    h = functx.hessian(sinc)(x)
    _close(h, central_differences(torch.func.grad(sinc), x), tol=1e-4)     # sinc' cancels near 0
    assert abs(h[1, 1].item() + math.pi ** 2 / 3) < 1e-9 and torch.func.hessian(sinc)(x)[1, 1] == 0
    ones = torch.ones(3, 3, dtype=D)
    _close(functx.hessian(torch.linalg.det)(ones), central_differences(torch.func.grad(torch.linalg.det), ones),
           tol=1e-6)
    assert torch.func.hessian(torch.linalg.det)(ones).isnan().all()
    torch.manual_seed(0)
    A = torch.randn(4, 4, dtype=D) + 3 * torch.eye(4, dtype=D)
    S, V = A @ A.T + torch.eye(4, dtype=D), torch.randn(4, 4, dtype=D)
    V = V + V.T
    f = lambda S: torch.cholesky_inverse(torch.linalg.cholesky(S)).trace()  # noqa: E731
    g = torch.func.grad(f)
    want = (g(S + 1e-5 * V) - g(S - 1e-5 * V)) / 2e-5
    for hess in (functx.hessian(f), functx.jit(functx.hessian(f))):
        _close((hess(S) * V).sum((-1, -2)), want, tol=1e-6)
    assert ((torch.func.hessian(f)(S) * V).sum((-1, -2)) - want).abs().max() > 0.1


def _self_aliased_update(x):
    y = torch.ones_like(x)
    y.addcmul_(x, x, value=0.5)
    y.addcdiv_(x, y)            # y is also the divisor: y + x / y
    z = x.clone()
    z.mul_(z)                   # z * z
    return y.sum() + z.sum()


def test_in_place_ops_that_read_their_own_target_under_jvp():
    """Worked already: y.addcdiv_(x, y) and z.mul_(z) (an optimizer-style update that reads
    the tensor it writes): functx's jvp matches finite differences where torch.func.jvp is
    wrong (it reads the tangent after the write: off by 0.9 and more), and its grad and
    Hessian run where torch.autograd raises "modified by an inplace operation"."""
    from fd_oracles import central_differences
    torch.manual_seed(0)
    x, v = torch.randn(4, 5, dtype=D), torch.randn(4, 5, dtype=D)
    fd = central_differences(_self_aliased_update, x)
    _close(functx.jvp(_self_aliased_update, (x,), (v,))[1], (fd * v).sum(), tol=1e-6)
    _close(functx.jit(lambda x, v: functx.jvp(_self_aliased_update, (x,), (v,)))(x, v)[1], (fd * v).sum(), tol=1e-6)
    _close(functx.grad(_self_aliased_update)(x), fd, tol=1e-6)
    assert abs(torch.func.jvp(_self_aliased_update, (x,), (v,))[1] - (fd * v).sum()) > 0.5


# ---------------------------------------------------------------- jit: batch norm buffers as arguments

def _bn_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)).double()


_XB, _YB = torch.randn(6, 1, 5, 5, dtype=D, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0, 1, 2])


def _maml_bn(jit):
    """MAML through a BatchNorm model in training mode, the torch.func docs' way: params and
    buffers as dicts of the module's own tensors, passed to the jitted step."""
    from torch.func import functional_call
    model = _bn_model()
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())

    def step(p, b):
        def outer(p):
            g = functx.grad(lambda p: F.cross_entropy(functional_call(model, (p, b), (_XB[:3],)), _YB[:3]))(p)
            p = {k: v - 0.1 * g[k] for k, v in p.items()}
            return F.cross_entropy(functional_call(model, (p, b), (_XB[3:],)), _YB[3:])
        return functx.grad(outer)(p)
    g = (functx.jit(step) if jit else step)(params, buffers)
    return g, {k: v.clone() for k, v in buffers.items()}, [v.grad_fn is None for v in buffers.values()]


def _maml_bn_autograd():
    from torch.func import functional_call
    model = _bn_model()
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    ps = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    inner = F.cross_entropy(functional_call(model, (ps, buffers), (_XB[:3],)), _YB[:3])
    g = torch.autograd.grad(inner, list(ps.values()), create_graph=True)
    p2 = {k: v - 0.1 * gk for (k, v), gk in zip(ps.items(), g)}
    outer = F.cross_entropy(functional_call(model, (p2, buffers), (_XB[3:],)), _YB[3:])
    grads = dict(zip(ps, torch.autograd.grad(outer, list(ps.values()))))
    return grads, {k: v.clone() for k, v in buffers.items()}, [v.grad_fn is None for v in buffers.values()]


def test_jit_of_maml_with_batch_norm_buffers_passed_as_arguments():
    """jit(step)(params, buffers) with buffers = dict(model.named_buffers()) and a step that
    closes over the model: jit raised "tensor argument 6 is written in place and shares
    memory with tensor argument 9 (the same tensor passed twice ...)": argument 9 was the
    model's own buffer, which jit passes itself (a reached module's state) but the graph
    never reads (functional_call swapped the argument in); a partner the graph never reads
    cannot see a stale value. And the running statistics written back carried a
    CopyBackwards history from the parameters (under torch autograd the compiled code has
    no stop_gradient: the pipeline drops it), where torch's kernel updates them without one;
    a write whose value has no derivative path in the traced graph is now copied under
    no_grad. Oracle: torch.autograd's MAML (create_graph=True) on the same model (torch.func
    raises on the buffer write), and eager functx."""
    want = _maml_bn_autograd()
    _close(_maml_bn(False), want)
    _close(_maml_bn(True), want)


def test_jit_training_loop_with_functional_call_buffers_and_backward():
    """loss = jit(step)(params, buffers); loss.backward() three times, BatchNorm1d in training
    mode: the running statistics got grad_fn=CopyBackwards (each step's graph kept alive
    through the buffers). Oracle: the same loop in eager torch (gradients, losses, buffers)."""
    from torch.func import functional_call
    x = torch.randn(5, 3, dtype=D, generator=torch.Generator().manual_seed(2))

    def run(jit):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).double()
        p, b = dict(m.named_parameters()), dict(m.named_buffers())
        step = lambda p, b: functional_call(m, (p, b), (x,)).pow(2).sum()  # noqa: E731
        f = functx.jit(step) if jit else step
        losses = []
        for _ in range(3):
            loss = f(p, b)
            loss.backward()
            losses.append(loss.detach())
        assert all(v.grad_fn is None for v in b.values())
        return losses, {k: v.grad for k, v in p.items()}, b
    _close(run(True), run(False))


# ---------------------------------------------------------------- jit under torch autograd

def test_jit_under_torch_autograd_keeps_the_derivatives_torch_cuts():
    """loss = jit(f)(...); loss.backward(): the pipeline's simplify drops stop_gradient (a
    marker for functx's transforms), but a call torch autograd records differentiates the
    compiled torch code, where that marker cut a derivative: nn.Embedding(scale_grad_by_freq=
    True) got the unscaled gradient (off by the token counts, silently), and det of a
    singular matrix lost its singular branch's derivative, torch.normal(mu, 1.0) gave mu a
    derivative of 1 (torch's is 0). Graphs that hold such a
    stop_gradient (one not read only by a max, as softmax's shift is) now run, for calls
    autograd records, a variant compiled with it (.detach()). Oracle: eager torch for the
    embedding; finite differences for det (torch's own eager det backward returns zeros at
    this singular matrix; torch.func agrees with the differences)."""
    from fd_oracles import central_differences
    torch.manual_seed(0)
    emb = torch.nn.Embedding(5, 3, scale_grad_by_freq=True).double()
    tok = torch.tensor([[0, 1, 2], [3, 0, 0]])
    loss = lambda tok: emb(tok).pow(2).sum()  # noqa: E731
    grads = []
    for f in (loss, functx.jit(loss)):
        emb.weight.grad = None
        f(tok).backward()
        grads.append(emb.weight.grad.clone())
    _close(grads[1], grads[0])
    A = torch.tensor([[1.0, 2, 3], [2, 4, 6], [0, 1, 1]], dtype=D, requires_grad=True)
    functx.jit(torch.linalg.det)(A).backward()
    _close(A.grad, central_differences(torch.linalg.det, A.detach()), tol=1e-6)
    # relu at exactly 0 (a graph that holds such a stop_gradient): torch's derivative, 0
    z = torch.tensor([-1.0, 0.0, 0.0, 2.0], dtype=D, requires_grad=True)
    functx.jit(lambda z: F.relu(z).sum())(z).backward()
    _close(z.grad, torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=D))
    # torch.normal(mu, 1.0) is not reparameterized: torch's derivative in mu is 0 (jit gave 1)
    mu = torch.randn(4, dtype=D, requires_grad=True)
    grads = []
    for f in (lambda mu: torch.normal(mu, 1.0).sum(), functx.jit(lambda mu: torch.normal(mu, 1.0).sum())):
        mu.grad = None
        f(mu).backward()
        grads.append(mu.grad.clone())
    _close(grads[1], grads[0])


def test_jit_train_step_that_takes_the_model_as_an_argument():
    """@functx.jit def train_step(model, x, y) with a BatchNorm model in training mode: jit
    raised PlainWriteError ("writes in place into a tensor the function closes over") for the
    running statistics, though the model was an argument and the same model closed over, as
    a bound method or jitted itself worked (their buffers are passed as arguments). A module
    passed as an argument whose forward writes its buffers now has them passed too (from
    the first such write on). Oracle: the same loop in eager torch, switching train / eval
    between calls (losses, parameter gradients, buffers, no autograd history on them)."""
    def mk():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.ReLU(),
                                   torch.nn.Flatten(), torch.nn.Linear(27, 2)).double()
    x, y = torch.randn(4, 1, 5, 5, dtype=D, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1, 1, 0])

    def train_step(model, x, y):
        return F.cross_entropy(model(x), y)

    def run(f):
        m, out = mk(), []
        for i in range(3):
            m.train(i != 1)
            m.zero_grad()
            loss = f(m, x, y)
            loss.backward()
            out.append((loss.detach(), [p.grad for p in m.parameters()]))
        assert all(b.grad_fn is None for b in m.buffers())
        return out, dict(m.named_buffers())
    _close(run(functx.jit(train_step)), run(train_step))


# ---------------------------------------------------------------- .data habits

def _replaces_data(x):
    y = x * 2
    y.data = y.data * 0 + 1       # an old-style reset that keeps y in the autograd graph
    return (y * x).sum()


def test_assigning_tensor_data_inside_transforms():
    """`y.data = new` (old-style code resetting a value while keeping it in the graph): functx
    ignored it silently: grad, vmap, jvp and jit all went on with the old values (60 where
    eager gives 10; grad [4, 8, 12, 16] where autograd gives [3, 5, 7, 9]). torch.func raises.
    Now it is torch's meaning, a write through a detached alias: the values change, the
    derivative stays; another shape or dtype raises naming the fix. Oracle: eager torch and
    torch.autograd (jvp: autograd's gradient along the tangent)."""
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=D)
    xr = x.clone().requires_grad_()
    value = _replaces_data(xr)
    want = torch.autograd.grad(value, xr)[0]
    _close(functx.jit(_replaces_data)(x), value.detach())
    _close(functx.value_and_grad(_replaces_data)(x), (value.detach(), want))
    _close(functx.jit(functx.grad(_replaces_data))(x), want)
    _close(functx.vmap(_replaces_data)(torch.stack([x, x])), value.detach().expand(2))
    _close(functx.jvp(_replaces_data, (x,), (torch.ones_like(x),))[1], want.sum())
    xr2 = x.clone().requires_grad_()
    functx.jit(_replaces_data)(xr2).backward()
    _close(xr2.grad, want)

    def reshaped(x):
        y = x * 2
        y.data = torch.ones(2, dtype=D)
        return y.sum()
    with pytest.raises(functx.FunctxError, match=r"tensor.data = value.*shape and dtype"):
        functx.grad(reshaped)(x)


def test_jit_python_float_argument_a_torch_function_needs_as_a_number():
    """jit(up)(x, 2.0) with up = F.interpolate(x, scale_factor=s): jit traces a Python float
    argument as a 0-d value, which torch's argument parser rejects deep inside F.interpolate
    ("upsample_bilinear2d() received an invalid combination of arguments ... list of
    [TracerTensor, TracerTensor]"), where F.interpolate(x, size=(n, n)) or F.pad(x, (p, p))
    raised a ConcretizationError naming the argument and the fix. Now a TypeError from a torch
    function with such a number among its operands raises that error too. Oracle: eager torch
    runs it; with static_argnums jit matches."""
    x = torch.randn(1, 2, 4, 4, dtype=D)
    up = lambda x, s: F.interpolate(x, scale_factor=s, mode="bilinear")  # noqa: E731
    with pytest.raises(functx.ConcretizationError, match=r"comes from argument 's'.*static_argnums"):
        functx.jit(up)(x, 2.0)
    _close(functx.jit(up, static_argnums=1)(x, 2.0), up(x, 2.0))


# ---------------------------------------------------------------- representative programs that worked

def test_consistency_model_jvp_loss_through_a_groupnorm_block():
    """Worked already: an sCM-style loss (jvp of c_skip(t) x + c_out(t) F(x, t) along
    (dx, dt), the target detached) through a conv / GroupNorm / SiLU block with a sinusoidal
    time embedding, by grad, jit(grad) and per-example vmap(jvp). Oracle: torch.func."""
    torch.manual_seed(0)
    conv, gn, emb = torch.nn.Conv2d(4, 4, 3, padding=1).double(), torch.nn.GroupNorm(2, 4).double(), \
        torch.nn.Linear(8, 4).double()
    params = {"w": conv.weight, "b": conv.bias, "g": gn.weight, "e": emb.weight}
    x, t = torch.randn(3, 4, 5, 5, dtype=D), torch.tensor([0.1, 0.5, 2.0], dtype=D)
    dx, dt = torch.randn_like(x), torch.ones_like(t)

    def net(p, x, t):
        freqs = torch.exp(-math.log(10000) * torch.arange(4, dtype=t.dtype) / 4)
        a = t[:, None] * freqs[None]
        temb = torch.cat([a.sin(), a.cos()], -1)
        h = F.silu(F.group_norm(F.conv2d(x, p["w"], p["b"], padding=1), 2, p["g"]))
        h = x + h + F.linear(temb, p["e"])[:, :, None, None]
        c_skip = 0.25 / ((t - 0.002) ** 2 + 0.25)
        c_out = (t - 0.002) * 0.5 / (t ** 2 + 0.25).sqrt()
        return c_skip[:, None, None, None] * x + c_out[:, None, None, None] * h

    def loss(tf):
        def f(p):
            out, d_out = tf.jvp(lambda x, t: net(p, x, t), (x, t), (dx, dt))
            return ((out - (out - 0.1 * d_out).detach()) ** 2).mean()
        return f
    want = torch.func.grad(loss(torch.func))(params)
    _close(functx.grad(loss(functx))(params), want)
    _close(functx.jit(functx.grad(loss(functx)))(params), want)
    per = lambda tf: tf.vmap(lambda x, t, dx, dt: tf.jvp(  # noqa: E731
        lambda x, t: net(params, x[None], t[None])[0], (x, t), (dx, dt))[1])
    _close(functx.jit(per(functx))(x, t, dx, dt), per(torch.func)(x, t, dx, dt))


@pytest.mark.parametrize("randomness", ["different", "same"])
def test_hutchinson_divergence_with_randn_like_inside_vmap(randomness):
    """Worked already: a Hutchinson estimate of div f (v . J v with v = randn_like(x) drawn
    inside vmap, via jvp and via vjp), eagerly and under jit, draws torch.func's numbers for
    each randomness mode. Oracle: torch.func with the same seed."""
    torch.manual_seed(0)
    W = torch.randn(4, 4, dtype=D)
    f = lambda x: torch.tanh(W @ x)  # noqa: E731
    xs = torch.randn(6, 4, dtype=D)

    def est(tf):
        def h(x):
            v = torch.randn_like(x)
            jv = tf.jvp(f, (x,), (v,))[1]
            vj = tf.vjp(f, x)[1](v)[0]
            return (v * jv).sum() + (vj * v).sum()
        return tf.vmap(h, randomness=randomness)

    def seeded(fn):
        torch.manual_seed(1)
        return fn(xs)
    want = seeded(est(torch.func))
    _close(seeded(est(functx)), want)
    _close(seeded(functx.jit(est(functx))), want)


def test_cdist_matrix_product_form_has_finite_gradients_at_equal_points():
    """torch.cdist with more than 25 rows takes its matrix-product form (_euclidean_dist):
    functx differentiated the decomposition's sqrt, nan for every pair of equal points (a
    point set against a subset of itself: 256 nans in a (64, 128) gradient). torch's backward
    masks zero distances; values stay eager's bits. Oracles: torch.func (grad, jit, vmap) and
    jacrev(jacrev) for the Hessian (torch has no forward AD for _euclidean_dist)."""
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(2, 30, 8, dtype=dtype, generator=torch.Generator().manual_seed(0))
        f = lambda x: torch.cdist(x, x[..., :3, :]).sum()          # noqa: E731
        got, want = functx.grad(f)(x), torch.func.grad(f)(x)
        assert not got.isnan().any()
        tol = 1e-3 if dtype == torch.float32 else 1e-10              # (the product form cancels)
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
        assert torch.equal(functx.vjp(lambda x: torch.cdist(x, x[..., :3, :]), x)[0], torch.cdist(x, x[..., :3, :]))
    x = x[0]
    torch.testing.assert_close(functx.jit(functx.grad(f))(x), torch.func.grad(f)(x))
    torch.testing.assert_close(functx.vmap(functx.grad(f))(x[None]), torch.func.grad(f)(x)[None])
    h = lambda x: torch.cdist(x, x[:3] + 0.1).sum()                  # noqa: E731
    torch.testing.assert_close(functx.hessian(h)(x), torch.func.jacrev(torch.func.jacrev(h))(x))
