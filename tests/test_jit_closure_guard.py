"""jit of code that computes from closed-over tensors (a module called directly, a
parametrization, `self.log_std.exp()`): the trace-time results are constants of the graph,
so jit must retrace when their sources change in place, give torch autograd what it needs
(no silent missing or stale gradients, no second-backward failure), and retrace when a
module gets new parameters. Oracle: the same module called as plain torch."""
import warnings

import pytest
import torch
import torch.nn as nn

import functx


class LogScaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(4))
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x * self.log_scale.exp())     # exp of a parameter: computed at trace time


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.fixture
def x():
    return torch.randn(6, 4, generator=torch.Generator().manual_seed(0))


def _train(model, step_fn, x, steps=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    losses, grads = [], []
    for _ in range(steps):
        opt.zero_grad()
        loss = step_fn(x).pow(2).mean()
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
    return losses, grads


@pytest.mark.parametrize("make", [LogScaled, lambda: nn.utils.parametrizations.weight_norm(nn.Linear(4, 3)),
                                  lambda: nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))])
def test_training_a_jitted_module_matches_plain_torch(make, x):
    torch.manual_seed(0)
    a = make()
    b = make()
    b.load_state_dict(a.state_dict())
    jb = functx.jit(b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want_losses, want_grads = _train(a, a, x)
        got_losses, got_grads = _train(b, jb, x)
    _close(torch.stack(got_losses), torch.stack(want_losses))
    for g, w in zip(got_grads, want_grads):
        for gg, ww in zip(g, w):
            _close(gg, ww)
    with torch.no_grad():
        _close(jb(x), a(x))


def test_gradient_accumulation_backward_twice(x):
    m = LogScaled()
    jm = functx.jit(m)
    jm(x).sum().backward()
    jm(x).sum().backward()          # a trace-time copy with saved tensors would fail here
    want = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m(x).sum().backward()
    m(x).sum().backward()
    for g, p in zip(want, m.parameters()):
        _close(g, p.grad)


def test_traced_under_no_grad_then_trained(x):
    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    jm = functx.jit(m)
    with torch.no_grad():
        jm(x)                        # warm-up trace: views of the weights carry no gradient
    jm(x).sum().backward()
    got = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m(x).sum().backward()
    for g, p in zip(got, m.parameters()):
        _close(g, p.grad)


def test_inference_after_in_place_update_retraces_with_a_reason(x):
    m = LogScaled().requires_grad_(False)
    jm = functx.jit(m)
    _close(jm(x), m(x))
    m.log_scale.add_(0.5)
    with pytest.warns(UserWarning, match="updated in place since the trace"):
        _close(jm(x), m(x))
    info = jm.cache_info()
    assert info.traces == 2 and "closed-over tensors" in str(info.retraces[-1])
    _close(jm(x), m(x))
    assert jm.cache_info().traces == 2              # no change, no retrace


def test_new_parameter_or_data_retraces(x):
    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    jm = functx.jit(m)
    with torch.no_grad():
        jm(x)
        m[0].weight = nn.Parameter(torch.randn(8, 4))       # a new Parameter object
        _close(jm(x), m(x))
        m[2].weight.data = torch.randn(1, 8)                 # new data under the same Parameter
        _close(jm(x), m(x))
        m[2] = nn.Linear(8, 1)                               # a new submodule
        _close(jm(x), m(x))


def test_graphs_without_closure_reads_have_no_guard(x):
    w = torch.randn(4)
    f = functx.jit(lambda x: x * w)         # w itself is the constant: read live, no closure read
    f(x)
    assert f._last_entry.guard is None
    values = f._last_entry.module_guard.values    # only the name w's binding (identity) is checked
    assert [name for name, _ in values.cells] == ["w"] and not values.globals and not values.modules
    g = functx.jit(lambda x, w: x * w.exp())
    g(x, w)
    assert g._last_entry.guard is None


def test_train_eval_mode_is_part_of_the_key(x):
    m = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    jm = functx.jit(m)
    with torch.no_grad():
        assert (jm(x) == 0).any()                       # training: dropout
        m.eval()
        torch.testing.assert_close(jm(x), m(x))         # a graph traced in train mode must not serve it
        m.train()
        assert (jm(x) == 0).any()
    assert jm.cache_info().traces == 2 and "train/eval" in str(jm.cache_info().retraces[0])
    # a closure over a module and a submodule's own flag
    f = functx.jit(lambda x: m(x))
    with torch.no_grad():
        f(x)
        m[1].eval()
        torch.testing.assert_close(f(x), m(x))


def test_batchnorm_training_updates_buffers_under_jit_module(x):
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    b = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    b.load_state_dict(a.state_dict())
    jb = functx.jit(b)
    for i in range(3):
        xi = x + i
        _close(jb(xi), a(xi))
        _close(b[1].running_mean, a[1].running_mean)
        _close(b[1].running_var, a[1].running_var)
        assert int(b[1].num_batches_tracked) == int(a[1].num_batches_tracked) == i + 1
    a.eval()
    b.eval()
    with torch.no_grad():
        _close(jb(x), a(x))


def test_batchnorm_buffers_stay_out_of_autograd(x):
    m = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    jm = functx.jit(m)
    jm(x).sum().backward()                  # grad mode on, parameters require grad
    assert not m[1].running_mean.requires_grad and m[1].running_mean.grad_fn is None
    m.eval()
    ref = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).eval()
    ref.load_state_dict(m.state_dict())
    _close(jm(x), ref(x))



class _CachedAttention(nn.Module):
    """A decoder layer with a KV cache: an eval-mode forward that writes its buffers."""
    def __init__(self, d=16, heads=2, length=8):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.register_buffer("ck", torch.zeros(1, heads, length, d // heads), persistent=False)
        self.register_buffer("cv", torch.zeros(1, heads, length, d // heads), persistent=False)

    def forward(self, x, pos):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in self.qkv(x).split(C, -1))
        self.ck[:, :, pos:pos + T] = k
        self.cv[:, :, pos:pos + T] = v
        y = torch.nn.functional.scaled_dot_product_attention(q, self.ck[:, :, :pos + T], self.cv[:, :, :pos + T])
        return y.transpose(1, 2).reshape(B, T, C)


def test_eval_forward_writing_its_buffers_under_jit_module():
    torch.manual_seed(0)
    a, b = _CachedAttention().eval(), _CachedAttention().eval()
    b.load_state_dict(a.state_dict())
    jb = functx.jit(b, static_argnums=1)
    with torch.no_grad():
        for pos in range(4):
            x = torch.randn(1, 1, 16)
            _close(jb(x, pos), a(x, pos))
            _close(b.ck, a.ck)
    # a function closing over the module, and a jitted bound forward, too
    c, d = _CachedAttention().eval(), _CachedAttention().eval()
    c.load_state_dict(a.state_dict())
    d.load_state_dict(a.state_dict())
    at_5 = functx.jit(lambda x: c(x, 5))
    with torch.no_grad():
        for _ in range(2):
            x = torch.randn(1, 1, 16)
            _close(at_5(x), d(x, 5))
            _close(c.ck, d.ck)


@pytest.mark.parametrize("style", ["module", "bound forward", "closure"])
def test_training_styles_with_batchnorm_and_dropout(style):
    def make():
        torch.manual_seed(1)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.0),
                             nn.Flatten(), nn.Linear(4 * 16, 3))
    a, b = make(), make()
    fb = {"module": lambda: functx.jit(b), "bound forward": lambda: functx.jit(b.forward),
          "closure": lambda: functx.jit(lambda x: b(x))}[style]()
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (a, b)]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.randn(4, 3, 4, 4, generator=g), torch.randint(0, 3, (4,), generator=g)
        for f, opt in ((a, opts[0]), (fb, opts[1])):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(f(x), y).backward()
            opt.step()
    _close(b[1].running_mean, a[1].running_mean)
    a.eval()
    b.eval()
    with torch.no_grad():
        x = torch.randn(4, 3, 4, 4, generator=g)
        _close(fb(x), a(x))


def test_spectral_norm_power_iteration_trains_under_jit_module():
    # its forward updates buffers u, v under its own no_grad and reads views of the weight
    # there: eager semantics needed a plain-torch call while autograd records, a copied
    # buffer for the write-back, and no retrace per call
    def make():
        torch.manual_seed(1)
        return nn.Sequential(nn.utils.parametrizations.spectral_norm(nn.Linear(6, 6)), nn.Tanh(),
                             nn.Linear(6, 3))
    a, b = make(), make()
    jb = functx.jit(b)
    oa, ob = (torch.optim.Adam(m.parameters(), lr=0.01) for m in (a, b))
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(4, 6, generator=g)
        for f, opt in ((a, oa), (jb, ob)):
            opt.zero_grad()
            f(x).pow(2).mean().backward()
            opt.step()
    a.eval()
    b.eval()
    with torch.no_grad():
        _close(jb(x), a(x))
    assert jb.cache_info().traces <= 2


def test_buffer_write_back_positions_skip_non_tensor_arguments(x):
    # the write-back counts positions among the graph's inputs: string arguments before the
    # buffers shifted them, and running_mean was written back under autograd
    class Tagged(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.bn = nn.Linear(4, 4), nn.BatchNorm1d(4)

        def forward(self, x, tag, tag2, tag3):
            return self.bn(self.lin(x)) * (2 if tag == "a" else 1)
    m = Tagged()
    functx.jit(m)(x, "a", "b", "c").sum().backward()
    assert not m.bn.running_mean.requires_grad and not m.bn.running_var.requires_grad


def test_batchnorm_eval_after_more_training_uses_the_new_statistics(x):
    # Eval mode reads the running statistics through batch norm's lowering, whose torch code
    # (rsqrt(running_var + eps)) ran below the dispatch mode unrecorded: the eval entry kept
    # the statistics of its trace after later training steps updated them.
    torch.manual_seed(0)
    jitted_model, plain = (nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5)) for _ in range(2))
    plain.load_state_dict(jitted_model.state_dict())
    jitted = functx.jit(jitted_model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mode in ["train", "eval", "train", "train", "eval", "train", "eval"]:
            getattr(jitted_model, mode)(), getattr(plain, mode)()
            _close(jitted(x), plain(x))


@pytest.mark.parametrize("program", ["add_into_made", "made_times_closed_exp"])
def test_made_tensors_computed_with_closed_over_ones_are_guarded(program):
    # Work on tensors the function makes runs at trace time; one that reads a closed-over
    # tensor (torch.zeros(3) += w) must be guarded like a read at the function's own level.
    w = torch.ones(3)
    fns = {"add_into_made": lambda x: x * torch.zeros(3).add_(w),
           "made_times_closed_exp": lambda x: x * torch.full((3,), 2.0).mul(w).exp()}
    f = fns[program]
    jitted = functx.jit(f)
    x = torch.randn(3, dtype=torch.float64)
    jitted(x)
    w.mul_(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _close(jitted(x), f(x))


# ---------------------------------------------------------------- Python values the trace read

SCALE = 2.0


class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.scale = 1.0
        self.mask = torch.ones(3)          # a plain tensor attribute (not a buffer)
        self.calls = 0

    def forward(self, x):
        self.calls += 1                    # bumped by the trace only: not a change
        return self.lin(x) * self.scale * self.mask


def _changes():
    """(name, jitted-or-function, function to compare with, how to change the world)."""
    cfg = {"s": 2.0}
    scale = [2.0]
    box = {}

    def closure_float(x):
        return x * box["s"]
    s = 2.0

    def by_cell(x):
        return x * s

    def set_cell(v):
        nonlocal s
        s = v

    def by_global(x):
        return x * SCALE

    def set_global(v):
        global SCALE
        SCALE = v

    def by_dict(x):
        return x * cfg["s"]

    def by_list(x):
        return x * scale[0]

    def loss(x):
        return (x * s).sin().sum()

    inner = functx.jit(lambda x: x * s)

    def by_nested_jit(x):
        return inner(x) + 1

    def by_helper(x):
        return _scaled_by_global(x) - 1

    weights = [torch.ones(4), torch.ones(4)]

    def by_weight_list(x):
        return x * weights[0] + weights[1]

    return [("closure cell", by_cell, by_cell, lambda: set_cell(3.0)),
            ("a jitted function's cell", by_nested_jit, by_nested_jit, lambda: set_cell(4.0)),
            ("a helper's global", by_helper, by_helper, lambda: set_global(6.0)),
            ("a list of tensors", by_weight_list, by_weight_list,
             lambda: weights.__setitem__(0, torch.full((4,), 5.0))),
            ("global", by_global, by_global, lambda: set_global(5.0)),
            ("dict", by_dict, by_dict, lambda: cfg.update(s=-1.0)),
            ("list", by_list, by_list, lambda: scale.__setitem__(0, 7.0)),
            ("grad's function's cell", functx.grad(loss), torch.func.grad(loss), lambda: set_cell(0.5))]


def _scaled_by_global(x):
    return x * SCALE


@pytest.mark.parametrize("case", range(8))
def test_python_values_read_by_the_trace_retrace_when_changed(case, x):
    global SCALE
    SCALE = 2.0
    # jit baked them in and kept returning the old numbers (torch.compile guards them)
    name, f, reference, change = _changes()[case]
    jitted = functx.jit(f)
    _close(jitted(x), reference(x))
    change()
    with pytest.warns(UserWarning, match="Python (value|dict|list)|rebound"):
        _close(jitted(x), reference(x))
    assert jitted.trace_count == 2
    jitted(x)
    assert jitted.trace_count == 2, name


@pytest.mark.parametrize("change", ["scale", "dropout p", "tensor attribute", "forward hook", "pre-hook"])
def test_module_attributes_read_by_the_trace_retrace_when_changed(change, x):
    torch.manual_seed(0)
    model = nn.Sequential(_Scaled(), nn.Dropout(0.0))
    jitted = functx.jit(model)
    with torch.no_grad():
        jitted(x), jitted(x)
        assert model[0].calls == 1 and jitted.trace_count == 1      # the trace's own bump is no change
        if change == "scale":
            model[0].scale = 5.0
        elif change == "dropout p":
            model[1].p = 1.0
        elif change == "forward hook":       # a hook registered after the trace was never run
            model[0].register_forward_hook(lambda module, args, out: out * 0)
        elif change == "pre-hook":
            model.register_forward_pre_hook(lambda module, args: (args[0] * 2,))
        else:
            model[0].mask = torch.tensor([0.0, 1.0, 2.0])
        with pytest.warns(UserWarning, match="module|hook"):
            _close(jitted(x), model(x))


def test_a_jitted_methods_self_attributes_are_guarded(x):
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.temperature = 1.0

        @functx.jit
        def logits(self, x):
            return x / self.temperature

    head = Head()
    _close(head.logits(x), x)
    head.temperature = 0.5
    with pytest.warns(UserWarning, match="temperature"):
        _close(head.logits(x), x / 0.5)


USE_OFFSET = True


class _Offset(nn.Module):
    def forward(self, x):
        return x + 1 if USE_OFFSET else x


def test_a_global_flag_read_by_a_jitted_modules_forward_is_guarded(x):
    global USE_OFFSET
    model = _Offset()
    jitted = functx.jit(model)
    _close(jitted(x), x + 1)
    USE_OFFSET = False
    try:
        with pytest.warns(UserWarning, match="USE_OFFSET"):
            _close(jitted(x), x)
    finally:
        USE_OFFSET = True


@pytest.mark.parametrize("change", ["eval", "dropout p", "new parameter"])
def test_a_module_passed_as_an_argument_is_keyed_and_guarded_like_a_reached_one(change, x):
    # jit(lambda model, x: model(x)): the module is a non-tensor argument (keyed by identity);
    # its train/eval flags, attributes and parameters were not looked at: eval() after
    # training kept running dropout, a new Parameter was never seen
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5 if change == "eval" else 0.0))
    jitted = functx.jit(lambda model, x: model(x))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        jitted(model, x)
        if change == "eval":
            model.eval()
        elif change == "dropout p":
            model[1].p = 1.0
        else:
            model[0].weight = nn.Parameter(torch.zeros(4, 4))
        _close(jitted(model, x), model(x))


def test_a_jitted_methods_plain_object_self_attributes_are_guarded():
    class Solver:
        def __init__(self):
            self.dt = 0.1

        @functx.jit
        def step(self, x):
            return x + self.dt * x.sin()

    solver, x = Solver(), torch.ones(3)
    solver.step(x)
    solver.dt = 0.5
    with pytest.warns(UserWarning, match="'dt' of a Solver object"):
        _close(solver.step(x), x + 0.5 * x.sin())


WEIGHT = torch.ones(3)


def test_rebinding_a_closed_over_or_global_tensor_retraces(x):
    # the graph kept the old tensor: f(x) used the weights from before the rebinding
    global WEIGHT
    w = torch.ones(4)

    def by_cell(x):
        return x * w

    def by_global(x):
        return x[:, :3] * WEIGHT

    for f in (by_cell, by_global):
        jitted = functx.jit(f)
        jitted(x)
        if f is by_cell:
            w = torch.full((4,), 3.0)
        else:
            WEIGHT = torch.full((3,), -2.0)
        with pytest.warns(UserWarning, match="rebound"):
            _close(jitted(x), f(x))
    WEIGHT = torch.ones(3)


SCALE = torch.tensor(2.0)


@functx.custom_vjp
def _sin_vjp(x):
    return torch.sin(x)


_sin_vjp.defvjp(lambda x: (torch.sin(x), x), lambda x, g: (g * torch.cos(x) * SCALE,))


@functx.custom_jvp
def _sin_jvp(x):
    return torch.sin(x)


@_sin_jvp.defjvp
def _sin_jvp_rule(primals, tangents):
    return torch.sin(primals[0]), torch.cos(primals[0]) * tangents[0] * SCALE


@pytest.mark.parametrize("where", ["inner lambda", "custom_vjp bwd", "custom_jvp rule"])
def test_rebinding_a_global_tensor_read_through_nested_code_or_custom_rules_retraces(where, x):
    """Globals read by a lambda defined in f, or by a custom rule f's code reaches through
    grad (jit(grad(f)) bakes the rule in): rebinding them retraced f only when f's own code
    named them, and the graph returned the old values silently."""
    global SCALE
    if where == "inner lambda":
        f = lambda x: functx.grad(lambda x: (torch.sin(x) * SCALE).sum())(x)  # noqa: E731
    else:
        fn = _sin_vjp if where == "custom_vjp bwd" else _sin_jvp
        f = functx.grad(lambda x: fn(x).sum())
    jitted = functx.jit(f)
    try:
        _close(jitted(x), torch.cos(x) * SCALE)
        SCALE = torch.tensor(-3.0)
        with pytest.warns(UserWarning, match="'SCALE' (was rebound|changed)"):
            _close(jitted(x), torch.cos(x) * SCALE)
    finally:
        SCALE = torch.tensor(2.0)


class _RemembersShape(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.last_shape = None
        self.calls = 0

    def forward(self, x):
        self.last_shape = tuple(x.shape)      # f's own state, written by every trace
        self.calls += 1
        return self.lin(x)


def test_values_the_trace_itself_writes_are_not_guarded():
    # else a module that records the last input shape retraced on every call that
    # alternated between two cached shapes
    model = _RemembersShape()
    jitted = functx.jit(model, dynamic=False)
    a, b = torch.randn(2, 4), torch.randn(5, 4)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        for x in (a, b, a, b, a):
            _close(jitted(x), model.lin(x))
    assert jitted.trace_count == 2
