"""Programs strangers write every day, under functx.jit (training steps, diffusion-model
blocks, schedules and configs that change between calls) and functx.vmap (nested in_dims /
out_dims, randomness modes, in-place writes, index ops with batched indices, model
ensembles, vmap of jacobians). Each test pins either a divergence that was found and fixed
(the docstring says what was wrong and which oracle decides) or a representative program
that already worked. Oracles: eager execution of the same code for jit; torch.func.vmap
and a Python loop for vmap; torch.func in float64 for derivatives."""
import copy
import functools
import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import functx
from fd_oracles import assert_trees_close

D = torch.float64


def _close(a, b, tol=1e-5):
    assert_trees_close(a, b, tol)


def _quiet(f, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return f(*args)


# ---------------------------------------------------------------- jit: functions f calls

act = F.relu


def _uses_global_act(x):
    return act(x) * 2


def test_rebinding_a_global_activation_function_retraces():
    """`act = F.relu` at module level, f calls act(x); rebinding `act = torch.tanh` between
    calls kept running the graph traced with relu (the guard saw numbers, flags, tensors
    and config objects, not functions): silently stale numbers. Oracle: eager f. Now a
    function in f's globals or closure is guarded by identity, as torch.compile does."""
    global act
    x = torch.randn(5)
    j = functx.jit(_uses_global_act)
    try:
        _close(j(x), _uses_global_act(x))
        act = torch.tanh
        _close(_quiet(j, x), _uses_global_act(x))
        assert j.trace_count == 2
        _close(j(x), _uses_global_act(x))
        assert j.trace_count == 2
    finally:
        act = F.relu


def test_rebinding_a_closed_over_function_or_partial_retraces():
    """A closure cell holding a function (nonlocal `fn`, reassigned by a setter) or a global
    functools.partial rebound with another argument ran the old graph. Oracle: eager f."""
    fn = torch.sin

    def f(x):
        return fn(x) + 1

    x = torch.randn(4)
    j = functx.jit(f)
    _close(j(x), f(x))
    fn = torch.cos
    _close(_quiet(j, x), f(x))
    fn = functools.partial(torch.mul, other=3.0)
    _close(_quiet(j, x), f(x))
    assert j.trace_count == 3


class _Schedule:
    def __init__(self, lr):
        self.lr = lr

    def __call__(self, step):
        return self.lr * math.cos(step * 0.1)


def test_a_callable_schedule_objects_attributes_are_guarded():
    """A learning-rate schedule object f calls (`sched(step)`, reading self.lr in
    __call__); changing sched.lr between calls kept the old rate: the guard walked the
    methods f names (`sched.get()`), not the __call__ that calling the object runs.
    Oracle: eager f."""
    sched = _Schedule(0.1)

    def step(w, x):
        g = functx.grad(lambda w: ((x @ w) ** 2).sum())(w)
        return w - sched(3) * g

    w, x = torch.randn(3), torch.randn(5, 3)
    j = functx.jit(step)
    _close(j(w, x), step(w, x))
    sched.lr = 0.7
    _close(_quiet(j, w, x), step(w, x))
    assert j.trace_count == 2


# ---------------------------------------------------------------- jit: randomness


def test_restoring_the_rng_state_inside_jit_raises_instead_of_replaying_nothing():
    """`st = torch.get_rng_state(); a = torch.rand(3); torch.set_rng_state(st); b =
    torch.rand(3)` draws b == a in eager PyTorch (the replay that checkpointing and
    fork_rng do); under functx.jit set_rng_state ran once, at trace time, and the graph
    drew two different samples: x + a - b was silently nonzero. Oracle: eager f (returns x
    exactly). Now set_rng_state marks the trace as manual_seed does, and a draw after it
    raises naming the line; jit(vmap(chunk_size, randomness='same')), which restores the
    state itself, still runs."""
    def f(x):
        st = torch.get_rng_state()
        a = torch.rand(3)
        torch.set_rng_state(st)
        b = torch.rand(3)
        return x + a - b

    x = torch.zeros(3)
    assert torch.equal(f(x), x)
    with pytest.raises(functx.FunctxError, match="set_rng_state"):
        functx.jit(f)(x)
    same = functx.jit(functx.vmap(lambda a: a + torch.rand(3), chunk_size=2, randomness="same"))(torch.zeros(5, 3))
    assert torch.equal(same, same[:1].expand(5, 3))


# ---------------------------------------------------------------- jit: argument pytrees


def test_a_dict_argument_with_another_key_order_retraces():
    """f(d) = torch.cat(list(d.values())), called with {'b': .., 'a': ..} and then with
    {'a': .., 'b': ..}: optree's treedefs of the two are equal (it flattens dicts in sorted
    key order), so the second call ran the graph traced with the first order and
    concatenated in the wrong order: silently wrong numbers (a state dict or a batch dict
    built in another order). Oracle: eager f. The jit key now holds each dict's key order."""
    jf = functx.jit(lambda d: torch.cat(list(d.values())))
    a, b = torch.randn(2), torch.randn(3)
    assert torch.equal(jf({"b": b, "a": a}), torch.cat([b, a]))
    assert torch.equal(jf({"a": a, "b": b}), torch.cat([a, b]))
    assert torch.equal(jf({"x": {"b": b, "a": a}}["x"]), torch.cat([b, a]))
    assert jf.trace_count == 2
    nested = functx.jit(lambda t: torch.stack([v.sum() for v in t[1]["p"].values()]) + t[0])
    x = torch.randn(2)
    _close(nested((x, {"p": {"u": a, "v": b}})), torch.stack([a.sum(), b.sum()]) + x)
    _close(nested((x, {"p": {"v": b, "u": a}})), torch.stack([b.sum(), a.sum()]) + x)


# ---------------------------------------------------------------- vmap: in-place writes


def test_in_place_op_whose_output_would_broadcast_names_the_real_shapes():
    """vmap(lambda a, b: a.add_(b), in_dims=(0, None)) with a per-example (3,) and b (2, 3):
    eager PyTorch and torch.func raise (the output would broadcast to (2, 3)); functx
    raised "output with shape [1] doesn't match the broadcast shape [1, 1] (eager PyTorch
    rejects aten.add_.Tensor for these dtypes)": the size-1 probe's shapes and a wrong
    reason. Oracle: eager a.add_(b) per example. Now the message is torch's at the real
    shapes."""
    for run in (lambda: functx.vmap(lambda a, b: a.add_(b), in_axes=(0, None))(torch.randn(4, 3), torch.randn(2, 3)),
                lambda: functx.jit(lambda a, b: a.add_(b))(torch.randn(3), torch.randn(2, 3))):
        with pytest.raises(RuntimeError, match=r"broadcast shape \(2, 3\)") as info:
            run()
        assert "dtypes" not in str(info.value)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 5)
        self.act = F.relu           # as nn.TransformerEncoderLayer keeps its activation
        self.norm = nn.Identity()

    def forward(self, x):
        return self.norm(self.act(self.lin(x)))


def test_swapping_a_modules_activation_function_or_submodule_retraces():
    """A jitted module whose activation is a function attribute (`self.act = F.relu`) or
    a parameterless submodule (`self.norm = nn.Identity()`): setting `m.act = torch.tanh`
    or `m.norm = nn.Tanh()` after a call kept running the old graph (the module guard
    compared parameter and buffer identities and plain numbers, not functions or
    submodules); so did a config object's function attribute (`cfg.act`) and a global
    dict of functions. Silently stale numbers; oracle: eager forward."""
    x = torch.randn(3, 5)
    m = _Block()
    jm = functx.jit(m)
    _close(jm(x), m(x))
    m.act = torch.tanh
    _close(_quiet(jm, x), m(x))
    m.norm = nn.Tanh()
    _close(_quiet(jm, x), m(x))
    assert jm.trace_count == 3
    _close(jm(x), m(x))
    assert jm.trace_count == 3

    import types
    cfg = types.SimpleNamespace(act=F.relu)
    table = {"act": F.relu}
    f = functx.jit(lambda x: cfg.act(x) + table["act"](-x))
    _close(f(x), F.relu(x) + F.relu(-x))
    cfg.act = torch.tanh
    _close(_quiet(f, x), torch.tanh(x) + F.relu(-x))
    table["act"] = torch.sigmoid
    _close(_quiet(f, x), torch.tanh(x) + torch.sigmoid(-x))


def test_modules_held_in_a_list_or_dict_are_guarded_and_keyed_on_train_eval():
    """`layers = [nn.Linear(4, 4), nn.Dropout(0.5)]` at module level (or in a closure),
    f loops over it: appending or replacing a layer kept running the old graph, and
    layers[1].eval() after a training-mode call kept dropping: the jit key's train/eval
    flags and the module guard covered modules f names directly, not those in a list or
    dict. Oracle: eager f (in eval mode dropout is the identity)."""
    layers = [nn.Linear(4, 4), nn.Dropout(0.5)]

    def f(x):
        for layer in layers:
            x = layer(x)
        return x

    j = functx.jit(f)
    x = torch.randn(200, 4)
    assert (j(x) == 0).any()
    layers[1].eval()
    _close(j(x), f(x))
    layers.append(nn.Linear(4, 2))
    _close(_quiet(j, x), f(x))
    layers[0] = nn.Linear(4, 4)
    _close(_quiet(j, x), f(x))

    heads = {"a": nn.Linear(4, 3)}
    g = functx.jit(lambda x: heads["a"](x))
    _close(g(x), heads["a"](x))
    heads["a"] = nn.Linear(4, 3)
    _close(_quiet(g, x), heads["a"](x))


# ---------------------------------------------------------------- programs that already worked


def _timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    a = t[:, None].float() * freqs[None]
    return torch.cat([a.sin(), a.cos()], dim=-1)


class _ResBlock(nn.Module):
    def __init__(self, c, tdim):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(2, c), nn.Conv2d(c, c, 3, padding=1)
        self.t, self.n2 = nn.Linear(tdim, c), nn.GroupNorm(2, c)
        self.drop, self.c2 = nn.Dropout(0.1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x, te):
        h = self.c1(F.silu(self.n1(x))) + self.t(F.silu(te))[:, :, None, None]
        return x + self.c2(self.drop(F.silu(self.n2(h))))


class _TinyUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.r1 = nn.Conv2d(3, 4, 3, padding=1), _ResBlock(4, 8)
        self.down, self.r2 = nn.Conv2d(4, 4, 3, stride=2, padding=1), _ResBlock(4, 8)
        self.out = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x, t):
        te = _timestep_embedding(t, 8)
        h1 = self.r1(self.inp(x), te)
        h = self.r2(self.down(h1), te)
        q = h.flatten(2).transpose(1, 2)[:, None]
        h = h + F.scaled_dot_product_attention(q, q, q)[:, 0].transpose(1, 2).reshape(h.shape)
        h = F.interpolate(h, scale_factor=2, mode="nearest") + h1
        return self.out(F.silu(F.interpolate(h, size=x.shape[-2:], mode="bilinear")))


def test_diffusion_unet_training_step_under_jit_matches_eager():
    """A DDPM-style UNet (GroupNorm, SiLU, conv, sinusoidal timestep embedding, attention,
    nearest and bilinear upsampling), one jitted step: value_and_grad of the noise-
    prediction loss through functional_call and an SGD update. Oracle: the same step
    eagerly with torch.func; and the module jitted in eval mode against its forward."""
    torch.manual_seed(0)
    m = _TinyUNet().eval()
    params = {k: v.detach() for k, v in m.named_parameters()}
    x, t, noise = torch.randn(2, 3, 8, 8), torch.tensor([3, 700]), torch.randn(2, 3, 8, 8)

    def loss(p, x, t, noise):
        return F.mse_loss(torch.func.functional_call(m, p, (x + noise, t)), noise)

    def step(value_and_grad, p, x, t, noise, lr):
        value, g = value_and_grad(loss)(p, x, t, noise)
        return value, {k: p[k] - lr * g[k] for k in p}

    expect = step(lambda f: (lambda *a: torch.func.grad_and_value(f)(*a)[::-1]), params, x, t, noise, 0.1)
    got = functx.jit(lambda *a: step(functx.value_and_grad, *a))(params, x, t, noise, 0.1)
    _close(got, expect, tol=1e-4)
    _close(functx.jit(m)(x, t), m(x, t), tol=1e-5)


def test_adam_step_with_foreach_ops_under_jit_matches_eager():
    """Adam written with torch._foreach_* ops over a model's parameters, the learning rate
    a Python float that changes every call (traced, one graph). Oracle: eager steps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 1))
    names = [n for n, _ in model.named_parameters()]

    def step(ps, ms, vs, x, y, t, lr):
        loss = lambda ps: F.mse_loss(torch.func.functional_call(model, dict(zip(names, ps)), (x,)), y)
        value, gs = functx.value_and_grad(loss)(ps)
        ms = torch._foreach_add(torch._foreach_mul(ms, 0.9), torch._foreach_mul(gs, 0.1))
        vs = torch._foreach_add(torch._foreach_mul(vs, 0.999), torch._foreach_mul(torch._foreach_mul(gs, gs), 0.001))
        upd = [m / (1 - 0.9 ** t) / ((v / (1 - 0.999 ** t)).sqrt() + 1e-8) for m, v in zip(ms, vs)]
        return value, list(torch._foreach_sub(ps, torch._foreach_mul(upd, lr))), list(ms), list(vs)

    ps = [p.detach().clone() for p in model.parameters()]
    state_e = state_j = (ps, [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps])
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    jitted = functx.jit(step)
    for t in range(1, 4):
        value_e, *state_e = step(*state_e, x, y, t, 0.01 * t)
        value_j, *state_j = jitted(*state_j, x, y, t, 0.01 * t)
        _close(value_j, value_e)
        _close(state_j, state_e)
    assert jitted.trace_count == 1


def test_ensemble_of_batchnorm_models_in_training_mode_under_vmap_matches_a_loop():
    """stack_module_state over two Linear+BatchNorm1d models in training mode, vmapped with
    functional_call: outputs and the running statistics written into the stacked buffers.
    Oracle: a Python loop over the models (torch.func agrees on the outputs)."""
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)) for _ in range(2)]
    params, buffers = torch.func.stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    f = lambda p, b, x: torch.func.functional_call(base, (p, b), (x,))
    x = torch.randn(5, 3)
    loop_buffers = {k: v.clone() for k, v in buffers.items()}
    expect = torch.stack([f({k: v[i] for k, v in params.items()}, {k: v[i] for k, v in loop_buffers.items()}, x)
                          for i in range(2)])
    _close(functx.func.vmap(f, in_dims=(0, 0, None))(params, buffers, x), expect)
    _close(buffers, loop_buffers)


def test_per_sample_gradients_jit_of_vmap_of_grad_and_vmap_of_jit():
    """Per-sample gradients of a conv classifier (GroupNorm, SiLU) with functional_call:
    jit(vmap(grad)) and vmap(jit(grad)). Oracle: torch.func.vmap(torch.func.grad)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.SiLU(), nn.Flatten(), nn.Linear(64, 3))
    params = {k: v.detach() for k, v in model.named_parameters()}
    loss = lambda p, x, y: F.cross_entropy(torch.func.functional_call(model, p, (x[None],)), y[None])
    x, y = torch.randn(5, 1, 6, 6), torch.randint(0, 3, (5,))
    expect = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)
    _close(functx.jit(functx.func.vmap(functx.func.grad(loss), in_dims=(None, 0, 0)))(params, x, y), expect, 1e-4)
    _close(functx.func.vmap(functx.jit(functx.func.grad(loss)), in_dims=(None, 0, 0))(params, x, y), expect, 1e-4)


def test_vmap_in_and_out_dims_as_nested_pytrees_negative_and_none_against_torch_func():
    """in_dims as a nested dict/list prefix with a negative dim, out_dims per output with
    None for an unbatched one and -1, chunk_size, and size-0 / size-1 batches.
    Oracle: torch.func.vmap."""
    x, w = torch.randn(3, 4, 5), torch.randn(5)

    def f(d, w):
        return {"s": d["a"].sum(-1) * w.sum(), "t": [d["b"][0].T, w * 2]}

    args = ({"a": x, "b": [x.transpose(0, 2)]}, w)
    kw = dict(in_dims=({"a": 1, "b": [-2]}, None), out_dims={"s": -1, "t": [0, None]})
    _close(functx.func.vmap(f, **kw)(*args), torch.func.vmap(f, **kw)(*args))
    _close(functx.func.vmap(f, chunk_size=2, **kw)(*args), torch.func.vmap(f, **kw)(*args))
    g = lambda a: a.new_zeros(a.shape) + a.sum(0) * a.shape[0] + len(a) + torch.arange(a.shape[-1])
    for size in (0, 1):
        e = torch.randn(size, 3, 2)
        _close(functx.func.vmap(g)(e), torch.func.vmap(g)(e))


def test_foreach_ops_under_vmap_an_optimizer_step_over_an_ensemble():
    """An EMA / SGD update with torch._foreach_* ops vmapped over stacked ensemble
    parameters: functx raised torch's "Batching rule not implemented for
    aten::_foreach_mul.Scalar" from deep inside its opaque fallback (torch.func.vmap has no
    batching rule for foreach ops and raises the same). Oracle: the update per model in a
    Python loop. Now an op torch cannot batch runs as a loop over the examples."""
    ws, gs = torch.randn(3, 4, 2), torch.randn(3, 4, 2)

    def sgd(w, g):
        return torch._foreach_add(torch._foreach_mul([w, w * 2], 0.9), [g, g], alpha=-0.1)

    def ema(avg, new):
        avg = [a.clone() for a in avg]
        torch._foreach_lerp_(avg, new, 0.1)
        return avg

    expect = [torch.stack(o) for o in zip(*[sgd(w, g) for w, g in zip(ws, gs)])]
    _close(functx.func.vmap(sgd)(ws, gs), expect)
    _close(functx.jit(functx.func.vmap(sgd))(ws, gs), expect)
    _close(functx.func.vmap(lambda a, n: ema([a], [n])[0])(ws, gs), ws + 0.1 * (gs - ws))
    grad = functx.grad(lambda w: functx.vmap(lambda w: torch._foreach_mul([w], 3.0)[0])(w).sum())(ws)
    _close(grad, torch.full_like(ws, 3.0))


def test_a_module_reached_through_a_bound_method_or_partial_is_keyed_on_train_eval():
    """`fwd = model.forward` closed over (or `functools.partial(model)`, jitted or closed
    over): model.eval() after a training-mode call kept dropping, because the jit key's
    train/eval flags covered only modules f names directly. Oracle: eager eval forward
    (dropout is the identity: no zeros)."""
    m = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    x = torch.ones(300, 4)
    fwd, part = m.forward, functools.partial(m)
    for jitted in (functx.jit(lambda x: fwd(x)), functx.jit(part), functx.jit(lambda x: part(x))):
        m.train()
        assert (jitted(x) == 0).any()
        m.eval()
        _close(jitted(x), m(x))


_helper_model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))


def _predict(x):
    return _helper_model(x)


class _Trainer:
    def __init__(self, model):
        self.model = model

    def __call__(self, x):
        return self.model(x)


def test_a_module_called_through_a_helper_or_an_object_is_guarded_on_train_eval():
    """jit(step) where step calls a global helper `predict(x)` that runs a global model,
    or a trainer object's `self.model(x)`: model.eval() after a training-mode call kept
    dropping (the key's train/eval flags covered modules f names directly, and the
    object walk skips modules). Oracle: eager eval forward (no zeros). Now the modules
    the trace called are recorded and their flags compared on every call."""
    x = torch.ones(300, 4)
    trainer = _Trainer(_helper_model)
    for f in (lambda x: _predict(x) * 2, lambda x: trainer(x), lambda x: trainer.model(x)):
        jitted = functx.jit(f)
        _helper_model.train()
        assert (jitted(x) == 0).any()
        _helper_model.eval()
        _close(_quiet(jitted, x), f(x))
        _helper_model.train()
        assert (_quiet(jitted, x) == 0).any()
