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

D = torch.float64


def _close(a, b, tol=1e-5):
    la, lb = torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert x.shape == y.shape and x.dtype == y.dtype, (x.shape, y.shape, x.dtype, y.dtype)
        torch.testing.assert_close(x, y, atol=tol, rtol=tol)


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
