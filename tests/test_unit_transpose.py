"""One generated transpose per recorded group (transforms/rule_cache.UnitTranspose): the linear
equations a cached jvp rule records per call (a function unit's, an ATen op's, a primitive's)
transpose as one function in backward_pass. Checked against the per-equation transposes it
replaces and against torch.func, with and without nesting."""
import importlib

import pytest
import torch
import torch.func
import torch.nn.functional as F

import functx
from functx.frontend import function_units, unit_batches

ad = importlib.import_module("functx.transforms.ad")
rule_cache = importlib.import_module("functx.transforms.rule_cache")


def _close(a, b):
    for x, y in zip(torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@pytest.fixture
def counted(monkeypatch):
    """Counts the groups backward_pass ran as one transpose."""
    runs = []
    real = ad._unit_transpose

    def run(tpl, *args):
        n = real(tpl, *args)
        runs.append((tpl.name, n))
        return n
    monkeypatch.setattr(ad, "_unit_transpose", run)
    return runs


@pytest.fixture
def per_equation(monkeypatch):
    """Run fn with every group transposed equation by equation (the path a group replaces)."""
    def run(fn, *args):
        with monkeypatch.context() as m:
            m.setattr(ad, "_unit_transpose", lambda *a: 0)
            return fn(*args)
    return run


def _params(g, sizes, dtype=torch.float32):
    ps = []
    for i, o in zip(sizes[:-1], sizes[1:]):
        ps += [torch.randn(i, o, generator=g, dtype=dtype) / i ** 0.5, torch.randn(o, generator=g, dtype=dtype)]
    return ps


def _mlp(ps, x):
    for k in range(0, len(ps), 2):
        x = x @ ps[k] + ps[k + 1]
        if k < len(ps) - 2:
            x = torch.tanh(x)
    return x


def _cases():
    g = torch.Generator().manual_seed(0)
    ps = _params(g, [6, 8, 8, 5])
    x = torch.randn(7, 6, generator=g)
    y = torch.tensor([0, 4, -100, 2, 2, -100, 1])        # ignore_index rows included
    img = torch.randn(2, 3, 6, 6, generator=g)
    w = torch.randn(4, 3, 3, 3, generator=g)
    b = torch.randn(4, generator=g)
    v = [torch.randn_like(p) for p in ps]

    def ce(ps, x, y):
        return F.cross_entropy(_mlp(ps, x), y, ignore_index=-100)

    def conv(w, b, img):
        return torch.tanh(F.conv2d(img, w, b, padding=1)).pow(2).mean()

    def broadcast(a, c):             # broadcasting adds/muls: cotangents summed over broadcast dims
        return ((a + c[:, None]) * c[None, :1] - a.T.sum(0)).sum()

    def shared(a):                   # one input used twice in one unit, and across units
        return (a * a).sum() + (a @ a.T).tanh().sum() + torch.addmm(a, a, a.T[:, :6]).sum()

    def partly_unused(a):            # multi-output units with an output left unused
        var, mean = torch.var_mean(a, dim=0)
        mx, idx = torch.max(a, dim=1)
        return mean.sum() + mx.sum() + idx.sum() * 0.0

    def one(ps, x, y):
        return F.cross_entropy(_mlp(ps, x[None]), y[None])

    yy = y.clamp(min=0)
    a = torch.randn(6, 6, generator=g)
    c = torch.randn(6, generator=g)
    return {
        "mlp ce ignore_index": (lambda T: T.grad(ce)(ps, x, y)),
        "conv": (lambda T: T.grad(conv, argnums=(0, 1))(w, b, img)),
        "broadcast": (lambda T: T.grad(broadcast, argnums=(0, 1))(a, c)),
        "shared": (lambda T: T.grad(shared)(a)),
        "partly unused": (lambda T: T.grad(partly_unused)(a)),
        "grad(grad)": (lambda T: T.grad(lambda z: T.grad(shared)(z).sin().sum())(a)),
        "vmap(grad)": (lambda T: T.vmap(T.grad(one), in_dims=(None, 0, 0))(ps, x, yy)),
        "jacrev": (lambda T: T.jacrev(lambda z: _mlp(ps, z) * z.tanh().sum())(x[0])),
        "hvp": (lambda T: T.jvp(lambda p: T.grad(ce)(p, x, y), (ps,), (v,))[1]),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_a_group_transposes_as_its_equations_do(name, counted, per_equation):
    case = _cases()[name]
    want = case(torch.func)
    got = case(functx)          # builds the rules
    got = case(functx)          # runs them
    assert counted and all(n > 1 for _, n in counted), counted
    _close(got, want)
    _close(got, per_equation(case, functx))


def test_the_mlp_grad_runs_one_transpose_per_unit(counted):
    # a fresh unit cache: F.cross_entropy's signatures hold a float (label_smoothing), and past
    # FLOATS.limit builds per function (the whole suite's calls count) it runs as written
    function_units.CACHE.clear()
    function_units.FLOATS.builds.clear()
    g = torch.Generator().manual_seed(1)
    ps = _params(g, [4, 5, 3])
    x, y = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    f = functx.grad(lambda ps: F.cross_entropy(_mlp(ps, x), y))
    want = torch.func.grad(lambda ps: F.cross_entropy(_mlp(ps, x), y))(ps)
    unit_batches.ENABLED = False        # each unit run when called
    try:
        f(ps)
        counted.clear()
        _close(f(ps), want)
    finally:
        unit_batches.ENABLED = True
    # x @ W with both operands traced (layer 2), x @ W + b's broadcast + add, cross_entropy
    assert {name for name, _ in counted} >= {"matmul", "add", "cross_entropy"}, counted
    # in batches (frontend/unit_batches.py), from a structure's second sighting: the whole
    # forward is one unit, and its backward one transpose
    f(ps)
    f(ps)
    counted.clear()
    _close(f(ps), want)
    assert len(counted) == 1 and counted[0][0].startswith("units("), counted


def test_a_changed_default_dtype_runs_the_equations_one_by_one(counted):
    x = torch.randn(3, 4, dtype=torch.float64)
    f = functx.grad(lambda x: (x + 1.5).tanh().sum() + (x @ x.T).sum())
    want = torch.func.grad(lambda x: (x + 1.5).tanh().sum() + (x @ x.T).sum())(x)
    _close(f(x), want)
    _close(f(x), want)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        counted.clear()
        _close(f(x), want)
    finally:
        torch.set_default_dtype(prev)


def test_groups_must_be_where_they_were_recorded():
    """backward_pass checks a group's equations by their templates before running it as one:
    a graph whose group lost an equation runs what is there one by one."""
    x = torch.randn(3, 4)
    _, graph, _ = ad.linearize_flat(lambda xs: [functx.frontend.unwrap((functx.frontend.wrap(xs[0]) ** 2).sum())],
                                   [x], reverse=True)
    units = [i for i, e in enumerate(graph.eqns) if type(e.template) is rule_cache.UnitTranspose]
    assert units
    i = units[0]
    tpl = graph.eqns[i].template
    broken = graph.replace(eqns=graph.eqns[:i - tpl.n + 1] + graph.eqns[i - tpl.n + 2:])
    env, ct_env = dict(zip(broken.constvars, broken.consts)), {}
    assert ad._unit_transpose(tpl, broken.eqns, i - 1, env, ct_env, set(), None, True,
                              torch.get_default_dtype()) == 0


def test_debug_nans_names_the_equation_in_a_group():
    x = torch.tensor([1.0, -1.0, 2.0])

    def f(x):
        return torch.sqrt(x * x - 1.0).sum()      # 0 at x = +-1: an infinite derivative, no NaN

    def g(x):
        return (torch.sqrt(x) * x).sum()          # NaN in the backward pass from x < 0
    functx.grad(g)(x)
    with pytest.raises(Exception, match="(?i)nan"):
        with functx.debug_nans():
            functx.grad(g)(x)
    _close(functx.grad(f)(x), torch.func.grad(f)(x))
