"""jit guards on Python values reached through objects (closure_guard.PythonValues' object
part, object_values.py): a config object's attribute changed after the trace must retrace
(jit returned numbers computed with the old value: `cfg.w = 5.0` and jf(x) kept giving
x * 2). Oracle: f called as plain Python."""
import argparse
import dataclasses
import types
import warnings

import pytest
import torch
import torch.nn as nn

import functx


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.fixture
def x():
    return torch.randn(6, 4, generator=torch.Generator().manual_seed(0))


@dataclasses.dataclass
class ModelConfig:
    temperature: float = 1.0
    width: int = 4


@dataclasses.dataclass
class TrainConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    scale: float = 2.0


class PlainConfig:
    def __init__(self):
        self.scale = 2.0


class Config:               # read as a class: Config.scale
    scale = 2.0
    offset = 0.0


class AttrDict:
    """An OmegaConf-like object: values in __dict__, a __getattr__ fallback with a side effect."""
    def __init__(self, **kw):
        self.__dict__.update(kw)
        self.__dict__["misses"] = 0

    def __getattr__(self, name):
        self.__dict__["misses"] += 1
        raise AttributeError(name)


ARGS = argparse.Namespace(lr=0.1, clip=1.0)
GLOBAL_CFG = types.SimpleNamespace(scale=2.0)


def _by_global_args(x):
    return x * ARGS.lr + ARGS.clip


def _by_global_class(x):
    return x * Config.scale + Config.offset


def _by_global_namespace(x):
    return x * GLOBAL_CFG.scale


def _cases():
    """(name, f, change): f reads a value through an object; change() changes it."""
    ns = types.SimpleNamespace(w=2.0)
    dc = TrainConfig()
    plain = PlainConfig()
    attr = AttrDict(scale=2.0)
    hparams = {"opt": {"lr": 0.1, "betas": (0.9, 0.99)}, "model": {"depth": 2}}
    inst = Config()                     # an instance reading the class's value
    deep = types.SimpleNamespace(a=types.SimpleNamespace(b=types.SimpleNamespace(c=2.0)))

    class Holder:
        def __init__(self):
            self.cfg = types.SimpleNamespace(scale=2.0)

        def method(self, x):
            return x * self.cfg.scale

        def calls_helper(self, x):
            return self._helper(x) + 1

        def _helper(self, x):
            return x * self.cfg.scale

    holder, holder2 = Holder(), Holder()

    def setter(obj, name, value):
        return lambda: setattr(obj, name, value)

    return [
        ("SimpleNamespace in the closure", lambda x: x * ns.w, setter(ns, "w", 5.0)),
        ("argparse.Namespace global", _by_global_args, setter(ARGS, "lr", 0.5)),
        ("SimpleNamespace global", _by_global_namespace, setter(GLOBAL_CFG, "scale", -1.0)),
        ("dataclass", lambda x: x * dc.scale, setter(dc, "scale", 3.0)),
        ("nested dataclass", lambda x: x / dc.model.temperature, setter(dc.model, "temperature", 0.5)),
        ("nested dataclass rebound", lambda x: x / dc.model.temperature,
         setter(dc, "model", ModelConfig(temperature=0.25))),
        ("plain class instance", lambda x: x * plain.scale, setter(plain, "scale", 7.0)),
        ("OmegaConf-like", lambda x: x * attr.scale, setter(attr, "scale", 0.5)),
        ("class attribute", _by_global_class, setter(Config, "scale", 4.0)),
        ("class attribute through an instance", lambda x: x * inst.offset + 1, setter(Config, "offset", 2.0)),
        ("class attribute shadowed by the instance", lambda x: x * inst.offset + 1, setter(inst, "offset", 3.0)),
        ("dict of dicts", lambda x: x * hparams["opt"]["lr"], lambda: hparams["opt"].update(lr=0.3)),
        ("tuple in a dict of dicts", lambda x: x * hparams["opt"]["betas"][1],
         lambda: hparams["opt"].update(betas=(0.9, 0.5))),
        ("chain of 3 attributes", lambda x: x * deep.a.b.c, setter(deep.a.b, "c", 6.0)),
        ("bound method's self.cfg", holder.method, setter(holder.cfg, "scale", 9.0)),
        ("self.cfg read by a method self calls", holder2.calls_helper, setter(holder2.cfg, "scale", -3.0)),
    ]


_NAMES = [c[0] for c in _cases()]


@pytest.fixture
def restore_globals():
    yield
    ARGS.lr, ARGS.clip, GLOBAL_CFG.scale, Config.scale, Config.offset = 0.1, 1.0, 2.0, 2.0, 0.0


@pytest.mark.parametrize("name", _NAMES)
def test_values_read_through_objects_retrace_when_changed(name, x, restore_globals):
    _, f, change = next(c for c in _cases() if c[0] == name)
    jitted = functx.jit(f)
    _close(jitted(x), f(x))
    jitted(x)
    assert jitted.trace_count == 1
    change()
    with pytest.warns(UserWarning, match="retracing"):
        _close(jitted(x), f(x))
    assert jitted.trace_count == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _close(jitted(x), f(x))
    assert jitted.trace_count == 2, name


def test_the_warning_names_the_attribute(x):
    cfg = types.SimpleNamespace(w=2.0)
    jitted = functx.jit(lambda x: x * cfg.w)
    jitted(x)
    cfg.w = 5.0
    with pytest.warns(UserWarning, match=r"attribute 'w' of a SimpleNamespace object \(cfg.w\) changed "
                                         r"\(2.0 -> 5.0\)"):
        jitted(x)


class _Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x) * self.cfg.scale


class _Net(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.block = _Block(cfg)

    def forward(self, x):
        return nn.functional.dropout(self.block(x), self.cfg.dropout, self.training)


@pytest.mark.parametrize("change", ["forward's self.cfg", "a child module's self.cfg", "self.cfg rebound"])
def test_a_modules_config_object_is_guarded(change, x):
    cfg = types.SimpleNamespace(dropout=0.0, scale=1.0)
    model = _Net(cfg)
    jitted = functx.jit(model)
    with torch.no_grad():
        _close(jitted(x), model(x))
        if change == "forward's self.cfg":
            cfg.dropout = 1.0           # everything dropped
        elif change == "a child module's self.cfg":
            cfg.scale = 3.0
        else:
            model.cfg = types.SimpleNamespace(dropout=1.0, scale=1.0)
        with pytest.warns(UserWarning, match="retracing"):
            _close(jitted(x), model(x))
    assert jitted.trace_count == 2


def test_a_jitted_methods_self_config_is_guarded(x):
    class Head:
        def __init__(self):
            self.cfg = types.SimpleNamespace(temperature=1.0)
            self.step = 0

        @functx.jit
        def logits(self, x):
            return x / self.cfg.temperature

    head = Head()
    _close(head.logits(x), x)
    head.cfg.temperature = 0.5
    with pytest.warns(UserWarning, match="temperature"):
        _close(head.logits(x), x / 0.5)


def test_attributes_f_does_not_name_do_not_retrace(x):
    # a training-state counter that changes every step but that f never reads: guarding
    # every attribute would retrace on every call
    state = types.SimpleNamespace(step=0, scale=2.0, history=[])

    class Trainer:
        def __init__(self):
            self.step = 0
            self.scale = 2.0

        def forward(self, x):
            return x * self.scale

        @functx.jit
        def jitted_forward(self, x):
            return x * self.scale

    trainer = Trainer()
    jf, jm = functx.jit(lambda x: x * state.scale), functx.jit(trainer.forward)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(5):
            state.step += 1
            state.history.append(i)
            trainer.step += 1
            _close(jf(x), x * 2.0)
            _close(jm(x), x * 2.0)
            _close(trainer.jitted_forward(x), x * 2.0)   # a jitted method's self: all attributes were guarded
    assert jf.trace_count == 1 and jm.trace_count == 1 and Trainer.jitted_forward.trace_count == 1


def test_values_the_trace_itself_changes_are_not_guarded(x):
    state = types.SimpleNamespace(calls=0, last_shape=None, scale=2.0)

    def f(x):
        state.calls += 1
        state.last_shape = tuple(x.shape)
        return x * state.scale

    jitted = functx.jit(f, dynamic=False)
    a, b = x, x[:3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for t in (a, b, a, b, a):
            _close(jitted(t), t * 2.0)
    assert jitted.trace_count == 2


class _Lazy:
    def __init__(self):
        self.reads = 0
        self.base = 2.0

    @property
    def scale(self):
        self.reads += 1
        return self.base


def test_properties_are_not_evaluated_by_the_guard(x):
    lazy = _Lazy()
    attr = AttrDict(scale=2.0)
    jitted = functx.jit(lambda x: x * lazy.scale * getattr(attr, "lr", 1.0))
    _close(jitted(x), x * 2.0)
    reads, misses = lazy.reads, attr.misses
    for _ in range(3):
        jitted(x)
    assert lazy.reads == reads and attr.misses == misses      # the guard read neither
    assert jitted.trace_count == 1


class _Aliased:
    """transformers' PretrainedConfig style: __getattribute__ maps aliases to stored names."""
    aliases = {"hidden": "hidden_size"}

    def __init__(self):
        self.hidden_size = 2.0
        self.reads = 0

    def __getattribute__(self, name):
        if name != "__dict__":
            object.__getattribute__(self, "__dict__")["reads"] += 1
        return object.__getattribute__(self, type(self).aliases.get(name, name))


def test_an_object_with_its_own_getattribute_is_guarded_by_its_dict(x):
    cfg = _Aliased()
    jitted = functx.jit(lambda x: x * cfg.hidden_size)
    _close(jitted(x), x * 2.0)
    reads = cfg.__dict__["reads"]
    jitted(x)
    assert cfg.__dict__["reads"] == reads             # the guard ran none of its code
    cfg.hidden_size = 3.0
    with pytest.warns(UserWarning, match="hidden_size"):
        _close(jitted(x), x * 3.0)


def test_tensors_reached_through_objects(x):
    cfg = types.SimpleNamespace(mask=torch.ones(4), log_scale=torch.zeros(4))
    plain = functx.jit(lambda x: x * cfg.mask)
    computed = functx.jit(lambda x: x * cfg.log_scale.exp())      # a trace-time copy
    _close(plain(x), x)
    _close(computed(x), x)
    with torch.no_grad():
        cfg.mask.mul_(2.0)                # the same tensor updated in place: visible
        cfg.log_scale.add_(1.0)           # the copy is stale: ClosureGuard retraces
    _close(plain(x), x * 2.0)
    with pytest.warns(UserWarning, match="updated in place"):
        _close(computed(x), x * torch.e)
    cfg.mask = torch.full((4,), 3.0)      # rebound: the graph holds the old tensor
    with pytest.warns(UserWarning, match="rebound"):
        _close(plain(x), x * 3.0)
    assert plain.trace_count == 2


def test_deeper_chains_and_methods_are_not_guarded_but_do_not_break(x):
    # documented limits: a chain of 4 attributes, a value computed by a method call
    deep = types.SimpleNamespace(a=types.SimpleNamespace(b=types.SimpleNamespace(c=types.SimpleNamespace(d=2.0))))
    jitted = functx.jit(lambda x: x * deep.a.b.c.d)
    _close(jitted(x), x * 2.0)
    jitted(x)
    assert jitted.trace_count == 1


# ---------------------------------------------------------------- as strangers write it


def test_training_loop_with_argparse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    args = parser.parse_args([])
    w = torch.zeros(4, requires_grad=True)
    x, y = torch.randn(8, 4, generator=torch.Generator().manual_seed(1)), torch.randn(8)

    def loss_fn(w, x, y):
        return ((x @ w - y) ** 2).mean() * (1 - args.label_smoothing)

    grad = functx.jit(functx.grad(loss_fn))
    eager = torch.func.grad(loss_fn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in range(4):
            args.label_smoothing = 0.1 * epoch          # annealed: each epoch retraces once
            for _ in range(2):
                _close(grad(w.detach(), x, y), eager(w.detach(), x, y))
    assert grad.trace_count == 4


def test_nested_dataclass_config_model():
    @dataclasses.dataclass
    class Attn:
        scale: float = 0.5
        causal: bool = False

    @dataclasses.dataclass
    class Cfg:
        attn: Attn = dataclasses.field(default_factory=Attn)
        dim: int = 4

    cfg = Cfg()

    def attention(q, k):
        s = (q @ k.T) * cfg.attn.scale
        if cfg.attn.causal:
            s = s.masked_fill(torch.ones_like(s).triu(1).bool(), float("-inf"))
        return s.softmax(-1)

    q = torch.randn(3, cfg.dim, generator=torch.Generator().manual_seed(2))
    jitted = functx.jit(attention)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _close(jitted(q, q), attention(q, q))
        cfg.attn.causal = True
        _close(jitted(q, q), attention(q, q))
        cfg.attn = Attn(scale=2.0, causal=True)
        _close(jitted(q, q), attention(q, q))
    assert jitted.trace_count == 3


def test_temperature_annealed_on_a_plain_object_holding_a_model(x):
    class Distiller:
        def __init__(self, model):
            self.model = model
            self.temperature = 4.0
            self.step = 0

        def soft_targets(self, x):
            return (self.model(x) / self.temperature).softmax(-1)

    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    distiller = Distiller(model)
    jitted = functx.jit(distiller.soft_targets)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in range(3):
            distiller.temperature = 4.0 / (epoch + 1)
            for _ in range(3):
                distiller.step += 1
                _close(jitted(x), distiller.soft_targets(x))
    assert jitted.trace_count == 3


def test_a_users_config_module_is_guarded(tmp_path, monkeypatch, x):
    # `import config; config.LR`: a Python module of the user's own (not installed, not
    # standard) is an object like the others; math.pi and torch's own modules are not walked
    import importlib
    import math
    (tmp_path / "guarded_settings_module.py").write_text("LR = 0.5\nSTEP = 0\nclass Model:\n    temp = 2.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    settings = importlib.import_module("guarded_settings_module")
    f = functx.jit(lambda x: x * settings.LR + settings.Model.temp + math.pi)
    torch.testing.assert_close(f(x), x * 0.5 + 2.0 + math.pi)
    settings.STEP += 1                      # not named by f: no retrace
    f(x)
    assert f.trace_count == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        settings.LR = 3.0
        torch.testing.assert_close(f(x), x * 3.0 + 2.0 + math.pi)
        settings.Model.temp = -1.0
        torch.testing.assert_close(f(x), x * 3.0 - 1.0 + math.pi)
    assert f.trace_count == 3
