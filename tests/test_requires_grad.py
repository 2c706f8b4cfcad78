"""Tensor.requires_grad and Tensor.register_hook on traced values, against torch.func (and
torch autograd for hooks torch.func cannot run, a Python loop for vmap).

requires_grad is torch.func's answer (True for a float value the innermost level
differentiates in reverse mode); code that branches on it, and nn code on torch's autograd
paths, must give torch.func's numbers. Hooks run on the cotangent flowing into the value
(transforms/hooks.py)."""
import pytest
import torch
import torch.nn as nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

import functx
from functx.frontend.unit_batches import LazyTracer

D = torch.float64


# ---------------------------------------------------------------- requires_grad: what torch.func reports

def _probe(x, seen, c):
    """Records requires_grad of values of every kind a function makes; returns a scalar."""
    h = x.sin()
    z = torch.zeros_like(x)
    z[0] = h[0]                         # a constant written with a traced value
    probes = {
        "x": x, "h": h, "closure": c, "closure*2": c * 2, "x.detach()": x.detach(),
        "h.detach()*1": h.detach() * 1, "int": torch.arange(3), "x.long()": x.long(),
        "argmax": x.argmax(), "x>0": x > 0, "zeros": torch.zeros(3), "zeros_like": torch.zeros_like(x),
        "x*0": x * 0, "relu": torch.relu(x), "view": h[1:], "reshape": h.reshape(-1, 1),
        "clone": h.clone(), "written": z, "c*x": c * x,
    }
    with torch.no_grad():
        probes["no_grad: h*2"] = h * 2
        probes["no_grad: x"] = x
    seen.update({k: v.requires_grad for k, v in probes.items()})
    return (h * x).sum()


def _builds(f):
    two = lambda x: torch.stack([x, 2 * x])    # noqa: E731
    return {
        "grad": lambda tf: lambda x: tf.grad(f)(x),
        "vjp": lambda tf: lambda x: tf.vjp(f, x)[0],
        "jacrev": lambda tf: lambda x: tf.jacrev(f)(x),
        "jvp": lambda tf: lambda x: tf.jvp(f, (x,), (x,))[1],
        "jacfwd": lambda tf: lambda x: tf.jacfwd(f)(x),
        "vmap": lambda tf: lambda x: tf.vmap(f)(two(x)),
        "vmap(grad)": lambda tf: lambda x: tf.vmap(tf.grad(f))(two(x)),
        "grad(grad)": lambda tf: lambda x: tf.grad(lambda y: tf.grad(f)(y).sum())(x),
        "jvp(grad)": lambda tf: lambda x: tf.jvp(tf.grad(f), (x,), (x,))[1],
        "grad(jvp)": lambda tf: lambda x: tf.grad(lambda y: tf.jvp(f, (y,), (y,))[1])(x),
        "hessian": lambda tf: lambda x: tf.hessian(f)(x),
        "grad(vmap)": lambda tf: lambda x: tf.grad(lambda y: tf.vmap(f)(y).sum())(two(x)),
    }


@pytest.mark.parametrize("transform", sorted(_builds(None)))
def test_requires_grad_matches_torch_func(transform):
    c = torch.randn(3, dtype=D)
    seen = {}
    f = lambda x: _probe(x, seen, c)     # noqa: E731
    x = torch.randn(3, dtype=D)
    build = _builds(f)[transform]
    build(torch.func)(x)
    want = dict(seen)
    seen.clear()
    build(functx)(x)
    assert seen == want


@pytest.mark.parametrize("transform", ["jit(grad)", "grad(jit)", "jit(vmap(grad))"])
def test_requires_grad_under_jit_is_the_inner_transforms(transform):
    c = torch.randn(3, dtype=D)
    seen = {}
    f = lambda x: _probe(x, seen, c)     # noqa: E731
    x = torch.randn(3, dtype=D)
    ref = "vmap(grad)" if "vmap" in transform else "grad"
    _builds(f)[ref](torch.func)(x)
    want = dict(seen)
    seen.clear()
    {"jit(grad)": lambda: functx.jit(functx.grad(f))(x),
     "grad(jit)": lambda: functx.grad(functx.jit(f))(x),
     "jit(vmap(grad))": lambda: functx.jit(functx.vmap(functx.grad(f)))(torch.stack([x, 2 * x]))}[transform]()
    assert seen == want
    seen.clear()
    functx.jit(f)(x + 1)                 # jit alone differentiates nothing
    assert not any(seen.values())


def test_requires_grad_with_unit_batches_off(monkeypatch):
    from functx.frontend import unit_batches
    monkeypatch.setattr(unit_batches, "ENABLED", False)
    test_requires_grad_matches_torch_func("vmap(grad)")
    test_requires_grad_matches_torch_func("grad(grad)")


def test_requires_grad_of_zero_derivative_ops_differs_from_torch_func():
    """Documented (docs/sharp_bits.md): functx knows floor/sign/round's derivative is zero and
    drops it, so those report False; torch.func reports True (its autograd records them)."""
    seen = {}

    def f(x):
        seen.update(floor=x.floor().requires_grad, sign=x.sign().requires_grad)
        return x.sum()
    functx.grad(f)(torch.randn(3))
    assert seen == {"floor": False, "sign": False}


def test_reading_requires_grad_does_not_run_a_pending_batch_on_non_reverse_levels():
    seen = {}

    def f(x):
        h = x.sin()
        pending = type(h._value) is LazyTracer
        seen["rg"] = h.requires_grad
        seen["still pending"] = pending and type(h._value) is LazyTracer and h._value.real is None
        return h.sum()
    functx.jvp(f, (torch.randn(3),), (torch.ones(3),))
    assert seen == {"rg": False, "still pending": True}


# ---------------------------------------------------------------- code that branches on requires_grad

def _guarded_clip(x):
    h = x.sin() * 3
    if h.requires_grad:
        h.register_hook(lambda g: g.clamp(-0.5, 0.5))
    return (h * h * x).sum()


def _detach_if_not_required(x):
    h = x * 2
    y = h if h.requires_grad else h.detach()
    return (y * x).sum()


@pytest.mark.parametrize("f", [_guarded_clip, _detach_if_not_required])
@pytest.mark.parametrize("transform", ["grad", "vmap(grad)", "hessian", "jit(grad)"])
def test_code_branching_on_requires_grad_matches_torch_func(f, transform):
    x = torch.randn(3, dtype=D)
    builds = {"grad": lambda tf: tf.grad(f), "hessian": lambda tf: tf.hessian(f),
              "vmap(grad)": lambda tf: lambda x: tf.vmap(tf.grad(f))(torch.stack([x, -x])),
              "jit(grad)": lambda tf: (functx.jit if tf is functx else (lambda g: g))(tf.grad(f))}
    torch.testing.assert_close(builds[transform](functx)(x), builds[transform](torch.func)(x))


# ---------------------------------------------------------------- register_hook

def _zero_through(x):
    h = x.sin()
    h.register_hook(lambda g: g * 0)        # only the direct x factor's gradient is left
    return (h * x).sum()


def _two_hooks(x):
    h = x.sin()
    h.register_hook(lambda g: g * 2)        # run in registration order: (g * 2) + 1
    h.register_hook(lambda g: g + 1)
    return (h * x).sum()


def _on_the_input(x):
    x.register_hook(lambda g: g * 3)        # the input's whole gradient (both factors)
    return (x * x.cos()).sum()


def _removed(x):
    h = x.sin()
    handle = h.register_hook(lambda g: g * 0)
    handle.remove()
    return (h * x).sum()


def _returns_none(x):
    h = x.sin()
    h.register_hook(lambda g: None)         # keeps the gradient
    return (h * x).sum()


def _then_in_place(x):
    h = x.sin()
    h.register_hook(lambda g: g * 0)        # the gradient of the value before the write
    h.mul_(2)
    return (h * x).sum()


def _clip(x):
    h = x.sin() * 5
    h.register_hook(lambda g: g.clamp(-1, 1))
    return (h ** 2 * x).sum()


def _on_a_reshaped_copy(x):
    h = x.sin()
    y = h.reshape(3)                       # functx: the same tangent as h (no equation)
    y.register_hook(lambda g: g * 0)       # only y's uses: h's are not y's gradient
    return (y * x).sum()


def _clone_after_the_hook(x):
    h = x.sin()
    h.register_hook(lambda g: g * 0)
    y = h.clone()                          # y's gradient flows into h: through the hook
    return (y * x).sum() + (h * x).sum()


HOOKED = [_zero_through, _two_hooks, _on_the_input, _removed, _returns_none, _then_in_place, _clip,
          _on_a_reshaped_copy, _clone_after_the_hook]
HOOK_TRANSFORMS = {
    "grad": lambda tf, f: tf.grad(f),
    "vjp": lambda tf, f: lambda x: tf.vjp(lambda y: f(y) * 2, x)[1](torch.tensor(1.5, dtype=D))[0],
    "vmap(grad)": lambda tf, f: lambda x: tf.vmap(tf.grad(f))(torch.stack([x, 2 * x])),
    "grad(grad)": lambda tf, f: tf.grad(lambda y: tf.grad(f)(y).pow(2).sum()),
    "jacrev(grad)": lambda tf, f: tf.jacrev(tf.grad(f)),
    "hessian": lambda tf, f: tf.hessian(f),
    "jvp(grad)": lambda tf, f: lambda x: tf.jvp(tf.grad(f), (x,), (torch.ones_like(x),))[1],
    "jit(grad)": lambda tf, f: (functx.jit if tf is functx else (lambda g: g))(tf.grad(f)),
}


@pytest.mark.parametrize("f", HOOKED, ids=lambda f: f.__name__)
@pytest.mark.parametrize("transform", sorted(HOOK_TRANSFORMS))
def test_register_hook_matches_torch_func(f, transform):
    x = torch.randn(3, dtype=D)
    build = HOOK_TRANSFORMS[transform]
    torch.testing.assert_close(build(functx, f)(x), build(torch.func, f)(x))


@pytest.mark.parametrize("f", HOOKED, ids=lambda f: f.__name__)
def test_register_hook_under_vmap_is_a_loop_of_grads(f):
    xs = torch.randn(4, 3, dtype=D)
    torch.testing.assert_close(functx.vmap(functx.grad(f))(xs), torch.stack([functx.grad(f)(x) for x in xs]))


def test_hook_sees_the_cotangent_torch_autograd_passes():
    seen = {}

    def f(x, lib):
        h = torch.tanh(x) * 2
        h.register_hook(lambda g: seen.setdefault(lib, g.clone()))
        return (h ** 3).sum()
    x = torch.randn(4, dtype=D)
    functx.grad(lambda x: f(x, "functx"))(x)
    xr = x.clone().requires_grad_()
    f(xr, "torch").backward()
    assert type(seen["functx"]) is torch.Tensor         # eager: the plain cotangent
    torch.testing.assert_close(seen["functx"], seen["torch"])


def test_hook_on_parameters_through_functional_call_matches_torch_autograd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).to(D)
    x = torch.randn(5, 3, dtype=D)
    clip = lambda g: g.clamp(-0.05, 0.05)              # noqa: E731

    def loss(params):
        for p in params.values():
            p.register_hook(clip)                        # per-parameter gradient clipping
        return functional_call(model, params, (x,)).pow(2).sum()
    params = {k: v.detach() for k, v in model.named_parameters()}
    got = functx.grad(loss)(params)
    for p in model.parameters():
        p.register_hook(clip)
    model(x).pow(2).sum().backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(got[k], p.grad)


def test_forward_hook_registering_a_tensor_hook_matches_torch_autograd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).to(D)
    def halve_gradient(module, inputs, out):
        out.register_hook(lambda g: g * 0.5)
    model[1].register_forward_hook(halve_gradient)
    x = torch.randn(5, 3, dtype=D)
    params = {k: v.detach() for k, v in model.named_parameters()}
    got = functx.grad(lambda p: functional_call(model, p, (x,)).pow(2).sum())(params)
    model(x).pow(2).sum().backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(got[k], p.grad)


def _hook_on(make):
    def f(x):
        make(x).register_hook(lambda g: g)
        return x.sum()
    return f


@pytest.mark.parametrize("case,build", [
    ("forward mode", lambda tf: lambda x: tf.jvp(_zero_through, (x,), (x,))),
    ("jacfwd", lambda tf: tf.jacfwd(_zero_through)),
    ("vmap inside grad", lambda tf: lambda x: tf.grad(lambda y: tf.vmap(_zero_through)(y).sum())(torch.stack([x, x]))),
    ("vmap alone", lambda tf: lambda x: tf.vmap(_zero_through)(torch.stack([x, x]))),
    ("a constant", lambda tf: tf.grad(_hook_on(lambda x: torch.ones(3)))),
    ("a detached value", lambda tf: tf.grad(_hook_on(lambda x: x.detach() * 2))),
    ("a no_grad value", lambda tf: tf.grad(_hook_on(lambda x: _no_grad(lambda: x * 2)))),
    ("an integer tensor", lambda tf: tf.grad(_hook_on(lambda x: x.long()))),
])
def test_register_hook_where_torch_func_refuses_raises(case, build):
    x = torch.randn(3, dtype=D)
    with pytest.raises(RuntimeError, match="doesn't require gradient"):
        build(torch.func)(x)
    with pytest.raises(functx.FunctxError, match="cannot register a hook on a tensor that doesn't require gradient"):
        build(functx)(x)


def _no_grad(fn):
    with torch.no_grad():
        return fn()


def test_register_hook_under_jit_alone_is_torchs():
    """jit(f) alone: the compiled graph (calls without grad) has no backward pass to hook;
    calls torch autograd records run f as plain torch, where the hook is torch's."""
    jf = functx.jit(_zero_through)
    x = torch.randn(3, dtype=D)
    torch.testing.assert_close(jf(x), (x.sin() * x).sum())
    xr = x.clone().requires_grad_()
    torch.testing.assert_close(torch.autograd.grad(jf(xr), xr)[0], x.sin())


def test_register_hook_after_a_use_raises_instead_of_missing_that_use():
    def f(x):
        h = x.sin()
        y = h * 2
        h.register_hook(lambda g: g * 0)     # torch's hook would also see y's part
        return (y + h).sum()
    with pytest.raises(functx.FunctxError, match="already used"):
        functx.grad(f)(torch.randn(3))


def _clone_before_the_hook(x):
    h = x.sin()
    y = h.clone()
    h.register_hook(lambda g: g * 0)       # torch: y's gradient flows through h's hook too
    return (y * x).sum() + (h * x).sum()


def _source_used_after_a_hooked_alias(x):
    h = x.sin()
    y = h.reshape(3)
    y.register_hook(lambda g: g * 0)
    return (y * x).sum() + (h * x).sum()


def _alias_returned(x):
    h = x.sin()
    y = h[:]
    h.register_hook(lambda g: g * 0)
    return y.sum()


@pytest.mark.parametrize("f", [_clone_before_the_hook, _source_used_after_a_hooked_alias, _alias_returned])
def test_a_hook_on_a_value_shared_with_a_tensor_used_after_it_raises(f):
    """functx's h.clone(), h.reshape(h.shape), h[:] share h's tangent, so a hook on one of them
    cannot tell the other's gradient apart; where that matters, it raises (never a silently
    different gradient)."""
    x = torch.randn(3, dtype=D)
    torch.func.grad(f)(x)
    with pytest.raises(functx.FunctxError, match="shares its value with another tensor"):
        functx.grad(f)(x)


@pytest.mark.parametrize("hook,match", [(lambda g: g[:2], "changed the size"),
                                        (lambda g: g.float(), "changed the type"),
                                        (lambda g: 3, "not a tensor")])
def test_a_hook_returning_a_wrong_value_raises(hook, match):
    def f(x):
        h = x.sin()
        h.register_hook(hook)
        return h.sum()
    with pytest.raises(functx.FunctxError, match=match):
        functx.grad(f)(torch.randn(3, dtype=D))


# ---------------------------------------------------------------- torch code on autograd paths

def _loss_of(module, x):
    return lambda x: module(x).pow(2).sum()


def _check(f, x, transforms=("grad", "vmap(grad)")):
    for t in transforms:
        build = {"grad": lambda tf: tf.grad(f),
                 "vmap(grad)": lambda tf: lambda x: tf.vmap(tf.grad(f))(torch.stack([x, x * 0.5])),
                 "hessian": lambda tf: tf.hessian(f),
                 "jit(grad)": lambda tf: (functx.jit if tf is functx else (lambda g: g))(tf.grad(f))}[t]
        torch.testing.assert_close(build(functx)(x), build(torch.func)(x), msg=t)


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_torch_checkpoint_under_reverse_mode(use_reentrant):
    # torch.func refuses both (an old-style Function; saved tensor hooks): oracle torch autograd
    body = lambda x: torch.tanh(x) * x.sin()        # noqa: E731
    f = lambda x: checkpoint(body, x, use_reentrant=use_reentrant).pow(2).sum()    # noqa: E731
    x = torch.randn(4, dtype=D)
    want = torch.func.grad(lambda x: body(x).pow(2).sum())(x)
    torch.testing.assert_close(functx.grad(f)(x), want)
    torch.testing.assert_close(functx.jit(functx.grad(f))(x), want)
    torch.testing.assert_close(functx.vmap(functx.grad(f))(torch.stack([x, -x])),
                               torch.stack([want, functx.grad(f)(-x)]))
    torch.testing.assert_close(functx.hessian(f)(x), torch.func.hessian(lambda x: body(x).pow(2).sum())(x))


@pytest.mark.parametrize("train", [True, False])
def test_transformer_encoder_layer_and_attention(train):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, dtype=D).train(train)
    mha = nn.MultiheadAttention(8, 2, batch_first=True, dtype=D).train(train)
    x = torch.randn(1, 3, 8, dtype=D)
    _check(_loss_of(layer, x), x, ("grad", "vmap(grad)", "jit(grad)"))
    _check(lambda x: mha(x, x, x, need_weights=False)[0].pow(2).sum(), x)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    _check(lambda w: functional_call(layer, {**params, "linear1.weight": w}, (x,)).pow(2).sum(),
           params["linear1.weight"], ("grad",))


def test_transformer_encoder_with_padding_mask_in_eval():
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, dtype=D),
                                2, enable_nested_tensor=True, mask_check=False).eval()
    # (mask_check=True calls torch._nested_tensor_from_mask_left_aligned, which returns a bool:
    # functx's fallback fails on it, with or without a reverse-mode transform)
    mask = torch.tensor([[False, False, True]])
    x = torch.randn(1, 3, 8, dtype=D)
    _check(lambda x: enc(x, src_key_padding_mask=mask)[:, :2].pow(2).sum(), x, ("grad",))


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_rnns(cls):
    torch.manual_seed(0)
    rnn = cls(3, 4, batch_first=True, dtype=D)
    x = torch.randn(1, 5, 3, dtype=D)
    _check(lambda x: rnn(x)[0].pow(2).sum(), x, ("grad", "hessian"))


def test_float32_lstm_in_eval_under_grad():
    # torch._decomp's LSTM takes its mkldnn path only for inputs that do not require grad
    torch.manual_seed(0)
    rnn = nn.LSTM(3, 4, batch_first=True).eval()
    x = torch.randn(1, 5, 3)
    f = lambda x: rnn(x)[0].pow(2).sum()     # noqa: E731
    torch.testing.assert_close(functx.grad(f)(x), torch.func.grad(f)(x))


def test_batch_norm_under_reverse_mode():
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3, dtype=D).eval()
    x = torch.randn(4, 3, dtype=D)
    _check(lambda x: bn(x).pow(3).sum(), x, ("grad", "hessian", "jit(grad)"))
    bn.train()              # torch.func refuses the running-stat update: torch autograd's gradient
    xr = x.clone().requires_grad_()
    nn.BatchNorm1d(3, dtype=D).train()(xr).pow(3).sum().backward()
    torch.testing.assert_close(functx.grad(lambda x: bn(x).pow(3).sum())(x), xr.grad)


def test_torch_autograd_inside_a_transform_still_raises():
    def f(x):
        h = x.sin()
        assert h.requires_grad
        return torch.autograd.grad(h.sum(), x)[0].sum()
    with pytest.raises(functx.FunctxError, match="torch.autograd.grad"):
        functx.grad(f)(torch.randn(3))
    with pytest.raises(functx.FunctxError, match="Tensor.backward"):
        functx.grad(lambda x: x.sin().sum().backward())(torch.randn(3))


def test_tensor_hook_primitive_batch_and_jvp_rules():
    """Register_hook records tensor_hook at a reverse level only, but its batch and jvp rules
    must keep per-example semantics when a transform reaches the primitive itself: bound inside
    vmap under grad, the hook sees one example's cotangent (here: scaled by that example's sum)."""
    from functx.frontend import unwrap, wrap
    from functx.transforms.hooks import Hooks, tensor_hook_p
    hooks = Hooks("test")
    hooks.fns[0] = lambda g: g * g.sum()

    def f(x):
        return (wrap(tensor_hook_p.bind(unwrap(x), hooks=hooks)) ** 2).sum()
    xs = torch.randn(4, 3, dtype=D)
    got = functx.grad(lambda X: functx.vmap(f)(X).sum())(xs)
    want = 2 * xs * (2 * xs).sum(1, keepdim=True)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(functx.vmap(functx.grad(f))(xs), want)
    # forward mode passes the tangent through (hooks act on cotangents only)
    torch.testing.assert_close(functx.jvp(f, (xs[0],), (torch.ones(3, dtype=D),))[1], 2 * xs[0].sum())


def test_requires_grad_false_on_a_differentiated_value_raises_instead_of_being_ignored():
    def f(x):
        y = x * 2
        y.requires_grad_(False)              # torch: only leaves; torch.func: refused
        return (y * x).sum()
    with pytest.raises(functx.FunctxError, match="detach"):
        functx.grad(f)(torch.randn(3))

    def g(x):
        x.requires_grad = True               # already True: a no-op, as in torch.func
        c = torch.zeros(3).requires_grad_()  # a made constant: its own flag, no derivative
        assert c.requires_grad
        with pytest.raises(functx.FunctxError, match="requires_grad_"):
            c.register_hook(lambda g: g)
        return (x * x + c).sum()
    x = torch.randn(3)
    torch.testing.assert_close(functx.grad(g)(x), 2 * x)

    def h(x):                                # under vmap nothing is differentiated: flags only
        x.requires_grad_()
        assert x.requires_grad
        x.requires_grad_(False)
        return x * 2
    torch.testing.assert_close(functx.vmap(h)(torch.ones(2, 3)), 2 * torch.ones(2, 3))


def test_a_hook_modifying_its_gradient_in_place():
    """torch's docs: a hook should not modify its argument. functx takes an in-place change as
    the hook's result, for this value only (torch's eager engine may also change a gradient
    sharing the buffer: here x's direct one, which it zeroes too)."""
    def returns_it(x):
        h = x.sin()
        h.register_hook(lambda g: g.mul_(0))
        return (h * x).sum() + h.sum()

    def returns_none(x):
        h = x.sin()

        def zero_in_place(g):
            g.mul_(0)
        h.register_hook(zero_in_place)
        return (h + x).pow(2).sum()
    x = torch.randn(3, dtype=D)
    torch.testing.assert_close(functx.grad(returns_it)(x), torch.func.grad(returns_it)(x))
    torch.testing.assert_close(functx.grad(returns_none)(x), 2 * (x.sin() + x))
    torch.testing.assert_close(functx.vmap(functx.grad(returns_none))(torch.stack([x, x])),
                               torch.stack([2 * (x.sin() + x)] * 2))


def _clipped_sin(x):
    h = x.sin()
    h.register_hook(lambda g: g.clamp(-0.1, 0.1))
    return h


def _tanh_times(v):
    return torch.tanh(v) * v


@pytest.mark.parametrize("where", ["checkpoint", "scan"])
def test_hooks_on_values_entering_functx_control_flow(where):
    """A hooked value passed into functx.checkpoint / scan: the hook sees the cotangent their
    backward passes produce (oracle: torch.func on the same code without them)."""
    def f(x):
        h = _clipped_sin(x)
        if where == "checkpoint":
            return functx.checkpoint(_tanh_times)(h).sum()
        return functx.scan(lambda c, _: (_tanh_times(c), None), h, None, length=3)[0].sum()

    def ref(x):
        h = _clipped_sin(x)
        for _ in range(1 if where == "checkpoint" else 3):
            h = _tanh_times(h)
        return h.sum()
    x = torch.randn(3, dtype=D)
    want = torch.func.grad(ref)(x)
    torch.testing.assert_close(functx.grad(f)(x), want)
    torch.testing.assert_close(functx.jit(functx.grad(f))(x), want)
