"""functx.debug (issue 16): values in reprs, debug.print / callback / breakpoint at run time
under every transform and jit on both backends, and debug_nans naming the first bad
primitive, the phase and the user's line. Every expected value comes from eager torch."""
import inspect
import io
import pdb
import re
import sys

import pytest
import torch

import functx
from functx.compile import passes
from functx.core.nan_check import FloatingPointNaNError

BACKENDS = ["eager", "triton"]      # triton runs in its interpreter on CPU (conftest.py)


def recorder():
    """A debug callback that keeps copies of the values it is called with."""
    seen = []

    def record(*values):
        seen.append([v.clone() for v in values])
    return seen, record


def assert_seen(seen, expected):
    assert len(seen) == len(expected), (len(seen), len(expected))
    for got, want in zip(seen, expected):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)


_NUMBER = re.compile(r"-?\d+\.\d*(?:e[+-]?\d+)?")


def assert_lines_close(got, want):
    """Printed lines equal up to the last printed digit (Triton's sin/tanh round differently)."""
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want):
        assert _NUMBER.sub("#", g) == _NUMBER.sub("#", w), (g, w)
        gn, wn = [float(v) for v in _NUMBER.findall(g)], [float(v) for v in _NUMBER.findall(w)]
        torch.testing.assert_close(torch.tensor(gn), torch.tensor(wn), atol=2e-4, rtol=1e-4)


# ---------------------------------------------------------------- reprs

def test_repr_shows_primal_under_grad_and_batch_under_vmap():
    x = torch.tensor([0.5, 1.5, -2.0])
    shown = {}

    def f(x):
        y = torch.sin(x)
        shown["repr"], shown["str"], shown["fmt"] = repr(y), str(y), f"{y}"
        return y.sum()

    functx.grad(f)(x)
    assert shown["repr"].startswith("GradTrackingTensor(lvl=1, value=")
    assert repr(torch.sin(x)) in shown["repr"]
    assert shown["str"] == shown["repr"] == shown["fmt"]

    X = torch.randn(4, 3)
    functx.vmap(f)(X)
    assert shown["repr"].startswith("BatchedTensor(lvl=1, bdim=0, value=")
    assert repr(torch.sin(X)).replace("\n", "\n    ") in shown["repr"]

    functx.vmap(functx.grad(f))(X)        # vmap outside: lvl 1; grad inside: lvl 2
    assert shown["repr"].startswith("GradTrackingTensor(lvl=2, value=\n    BatchedTensor(lvl=1, bdim=0")

    t = torch.tensor([1.0, 0.0, 2.0])
    functx.jvp(f, (x,), (t,))
    assert shown["repr"].startswith("DualTensor(lvl=1")
    assert repr(torch.sin(x)) in shown["repr"] and repr(torch.cos(x) * t) in shown["repr"]


def test_repr_under_jit_says_there_are_no_values():
    shown = {}

    def f(x):
        shown["repr"] = repr(x * 2)
        return x

    functx.jit(f)(torch.randn(3))
    assert "TracedTensor(f32[3]" in shown["repr"] and "functx.debug.print" in shown["repr"]


def test_pdb_p_shows_values_inside_grad():
    x = torch.tensor([0.25, 2.0])
    out = io.StringIO()

    def f(x):
        y = torch.exp(x)
        pdb.Pdb(stdin=io.StringIO("p y\ncontinue\n"), stdout=out, nosigint=True).set_trace()
        return y.sum()

    try:
        functx.grad(f)(x)
    finally:
        sys.settrace(None)
    assert "GradTrackingTensor(lvl=1" in out.getvalue()
    assert repr(torch.exp(x)) in out.getvalue()


# ---------------------------------------------------------------- print and callback

def _model(x):
    y = torch.sin(x) * 3.0
    functx.debug.print("y = {}", y)
    z = torch.tanh(y)
    functx.debug.print("z = {z}, x = {x}", z=z, x=x)
    return (z * z).sum()


def _expected_lines(x):
    y = torch.sin(x) * 3.0
    return [f"y = {y}", f"z = {torch.tanh(y)}, x = {x}"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_print_under_jit_runs_every_call(backend, capsys):
    f = functx.jit(_model, backend=backend)
    xs = [torch.randn(5) for _ in range(3)]
    for x in xs:
        f(x)
    assert_lines_close(capsys.readouterr().out.splitlines(), sum((_expected_lines(x) for x in xs), []))
    assert f.cache_size() == 1


def test_print_eager_grad_and_vmap(capsys):
    x = torch.randn(4)
    functx.grad(_model)(x)                        # primal values
    assert capsys.readouterr().out.splitlines() == _expected_lines(x)
    X = torch.randn(3, 4)
    functx.vmap(_model)(X)                         # one line per example, statement by statement
    y = torch.sin(X) * 3.0
    want = [f"y = {y[i]}" for i in range(3)] + [f"z = {torch.tanh(y[i])}, x = {X[i]}" for i in range(3)]
    assert capsys.readouterr().out.splitlines() == want


@pytest.mark.parametrize("backend", BACKENDS)
def test_print_under_jit_of_vmap_of_grad(backend, capsys):
    X = torch.randn(2, 3)
    g = functx.jit(functx.vmap(functx.grad(_model)), backend=backend)
    for _ in range(2):
        out = g(X)
        y = torch.sin(X) * 3.0
        want = [f"y = {y[i]}" for i in range(2)] + [f"z = {torch.tanh(y[i])}, x = {X[i]}" for i in range(2)]
        assert_lines_close(capsys.readouterr().out.splitlines(), want)
        torch.testing.assert_close(out, torch.func.vmap(torch.func.grad(
            lambda x: (torch.tanh(torch.sin(x) * 3.0) ** 2).sum()))(X))


@pytest.mark.parametrize("backend", BACKENDS)
def test_callback_values_under_nested_vmap_and_jvp(backend):
    seen, record = recorder()

    def f(x, w):
        h = torch.exp(x) * w
        functx.debug.callback(record, h, w)
        return h.sum()

    X, W = torch.randn(2, 3, 4), torch.randn(4)
    functx.jit(functx.vmap(functx.vmap(f, in_axes=(0, None)), in_axes=(0, None)), backend=backend)(X, W)
    H = torch.exp(X) * W
    assert_seen(seen, [[H[i, j], W] for i in range(2) for j in range(3)])    # outer axis first

    seen.clear()
    x, t = torch.randn(4), torch.randn(4)
    functx.jit(lambda x, t: functx.jvp(lambda v: f(v, W), (x,), (t,)), backend=backend)(x, t)
    assert_seen(seen, [[torch.exp(x) * W, W]])          # the primal: no tangent reaches it


@pytest.mark.parametrize("backend", BACKENDS)
def test_effects_keep_program_order(backend):
    """Two callbacks with no data dependence between them run in the order written, even when
    the first waits on a fused kernel that also needs an extern (matmul) scheduled later."""
    order, w = [], torch.randn(4, 4)

    def f(x):
        a = torch.sin(x)
        functx.debug.callback(lambda v: order.append(("first", v.clone())), a)
        functx.debug.callback(lambda v: order.append(("second", v.clone())), x)
        b = x @ w
        return torch.cos(x) + b + a

    x = torch.randn(4, 4)
    functx.jit(f, backend=backend)(x)
    assert [name for name, _ in order] == ["first", "second"]
    torch.testing.assert_close(order[0][1], torch.sin(x))
    torch.testing.assert_close(order[1][1], x)


def test_passes_keep_callbacks():
    seen, record = recorder()

    def f(x):
        functx.debug.callback(record, x * 2)    # used by nothing but the callback
        functx.debug.callback(record, x * 2)    # the same call twice: both must stay
        return x + 1

    x = torch.randn(3)
    graph = functx.make_graph(f)(x)
    for p in (passes.dce, passes.cse, passes.fold_constants, passes.simplify):
        assert sum(e.prim.name == "debug_callback" for e in p(graph).eqns) == 2, p.__name__
    functx.jit(f)(x)
    assert_seen(seen, [[x * 2], [x * 2]])


def test_callback_with_non_tensor_arguments_and_bad_input():
    got = []
    functx.jit(lambda x: functx.debug.callback(lambda d, k: got.append((d["a"].clone(), k)), {"a": x}, k=7) or x)(
        torch.ones(2))
    torch.testing.assert_close(got[0][0], torch.ones(2))
    assert got[0][1] == 7
    with pytest.raises(TypeError, match="fn must be callable"):
        functx.debug.callback(3, torch.ones(2))
    with pytest.raises(TypeError, match="fmt must be a format string"):
        functx.debug.print(torch.ones(2))


# ---------------------------------------------------------------- breakpoint

@pytest.mark.parametrize("backend", BACKENDS)
def test_breakpoint_gets_concrete_locals(backend):
    stops = []

    def f(x):
        y = torch.cos(x)
        functx.debug.breakpoint(debugger=lambda local: stops.append({k: v.clone() for k, v in local.items()
                                                                    if isinstance(v, torch.Tensor)}))
        return y.sum()

    x = torch.randn(3)
    functx.grad(f)(x)                                           # eager, primal values
    jitted = functx.jit(functx.grad(f), backend=backend)
    jitted(x)
    jitted(x + 1)                                               # every call
    functx.vmap(f)(torch.stack([x, x + 1]))                     # once per example
    want = [x, x, x + 1, x, x + 1]
    assert len(stops) == len(want)
    for stop, v in zip(stops, want):
        torch.testing.assert_close(stop["x"], v)
        torch.testing.assert_close(stop["y"], torch.cos(v))


def test_breakpoint_enters_breakpointhook_with_values_as_locals(monkeypatch):
    frames = []
    monkeypatch.setattr(sys, "breakpointhook", lambda: frames.append(dict(sys._getframe(1).f_locals)))

    def f(x):
        y = x * x
        functx.debug.breakpoint()
        return y.sum()

    x = torch.tensor([1.0, -3.0])
    functx.jit(functx.grad(f))(x)
    assert len(frames) == 1
    torch.testing.assert_close(frames[0]["x"], x)
    torch.testing.assert_close(frames[0]["y"], x * x)


# ---------------------------------------------------------------- debug_nans

def _line_of(fn, marker):
    lines, start = inspect.getsourcelines(fn)
    return next(start + i for i, text in enumerate(lines) if marker in text)


def log_at_zero(x):
    y = torch.exp(x) - 1.0
    return torch.log(y).sum()  # NAN: forward


def sqrt_at_zero(x):
    r2 = (x * x).sum()
    return torch.sqrt(r2) * 2.0  # NAN: tangent


def overflowing_backward(x):
    h = torch.sin(x * 1e30) * 1e30  # NAN: cotangent
    return torch.sin(h).sum()


# (model, how to run it, primitive, phase, marker): each model's forward values are finite
# except the first, whose log(0) is -inf; the second's JVP divides by sqrt(0); the third's
# backward multiplies two 1e30 factors (its forward and tangent residuals are finite).
CASES = [
    (log_at_zero, "grad", "log", "primal computation", "# NAN: forward"),
    (sqrt_at_zero, "jvp", "div", "tangent computation (the JVP rule of sqrt)", "# NAN: tangent"),
    (overflowing_backward, "grad", "mul", "cotangent computation (the transpose rule of mul)", "# NAN: cotangent"),
]


def _run(model, how):
    """value and derivative, so jit keeps the forward computation (its DCE would drop what
    no output needs)."""
    if how == "grad":
        return lambda x: torch.cat([v.reshape(-1) for v in functx.value_and_grad(model)(x)])
    return lambda x: torch.cat([v.reshape(-1) for v in functx.jvp(model, (x,), (torch.ones_like(x),))])


@pytest.mark.parametrize("jit", [None] + BACKENDS)
@pytest.mark.parametrize("model,how,prim,phase,marker", CASES, ids=[c[0].__name__ for c in CASES])
def test_debug_nans_names_primitive_phase_and_line(model, how, prim, phase, marker, jit):
    x = torch.zeros(3)
    fn = _run(model, how) if jit is None else functx.jit(_run(model, how), backend=jit)
    out = fn(x)                                     # off by default: the bad number comes back
    assert not torch.isfinite(out).all()
    with functx.debug_nans():
        with pytest.raises(FloatingPointNaNError) as info:
            fn(x)
    err = info.value
    assert isinstance(err, FloatingPointError) and isinstance(err, functx.FunctxError)
    assert err.primitive == prim
    assert err.phase == phase
    assert f"line {_line_of(model, marker)}, in {model.__name__}" in err.source
    assert marker in str(err) and prim in str(err)
    assert not torch.isfinite(fn(x)).all()          # off again: the context manager restored it


def test_debug_nans_flag_is_part_of_the_jit_key():
    f = functx.jit(log_at_zero, backend="eager")
    x = torch.zeros(3)
    f(x)
    assert "_nans" not in f.lower(x)[0].compiled.source      # off: no checks compiled in
    functx.debug_nans(True)
    try:
        with pytest.raises(FloatingPointNaNError):
            f(x)
        assert "_nans.eqn(" in f.lower(x)[0].compiled.source
    finally:
        functx.debug_nans(False)
    assert f.cache_size() == 2
    torch.testing.assert_close(f(x), torch.log(torch.exp(x) - 1.0).sum())


def test_debug_nans_infs_false_and_bad_arguments():
    def f(x):
        return torch.exp(torch.log(x)).sum()        # log(0) = -inf, exp(-inf) = 0: finite result

    x = torch.tensor([0.0, 1.0])
    with functx.debug_nans(infs=False):
        torch.testing.assert_close(functx.jit(f)(x), torch.exp(torch.log(x)).sum())
        with pytest.raises(FloatingPointNaNError, match="nan in the output of primitive 'sub'"):
            functx.vmap(lambda v: torch.log(v) - torch.log(v))(x)      # -inf - -inf = nan
    with pytest.raises(TypeError, match="enabled must be True or False"):
        functx.debug_nans("yes")
    with pytest.raises(TypeError, match="infs must be True or False"):
        functx.debug_nans(True, infs=None)


def test_debug_nans_under_hessian_names_the_inner_rule():
    with functx.debug_nans(), pytest.raises(FloatingPointNaNError) as info:
        functx.hessian(sqrt_at_zero)(torch.zeros(3))
    assert info.value.primitive == "div" and "the JVP rule of sqrt" in info.value.phase
    assert f"line {_line_of(sqrt_at_zero, '# NAN: tangent')}" in info.value.source



# ---------------------------------------------------------------- prints inside cond / switch / while / scan
# Each model prints inside its control flow. The oracle is the list of lines eager Python
# prints for one example (Python's own if / while / for on the same torch values); under
# every transform and jit each print must run exactly once per execution, in order.

def _cond_model(x, p):
    def hi(v):
        functx.debug.print("hi {}", v)
        return torch.sin(v) * 2.0

    def lo(v):
        functx.debug.print("lo {}", v)
        return torch.cos(v)
    return functx.cond(p > 0, hi, lo, x * 1.5).sum()


def _cond_lines(x, p):
    return [f"hi {x * 1.5}"] if p > 0 else [f"lo {x * 1.5}"]


def _switch_model(x, p):
    branches = [lambda v, k=k: (functx.debug.print(f"branch {k}: {{}}", v), torch.sin(v) * k)[1] for k in range(3)]
    return functx.switch(p.to(torch.int64), branches, x + 1.0).sum()


def _switch_lines(x, p):
    return [f"branch {min(max(int(p), 0), 2)}: {x + 1.0}"]


def _while_model(x, p):
    def keep_going(c):
        functx.debug.print("test {}", c[1])      # a batched value: under vmap, one line per example
        return c[0] < p

    def body(c):
        i, v = c
        functx.debug.print("step {} {}", i, v)
        return i + 1.0, torch.sin(v) + v
    return functx.while_loop(keep_going, body, (torch.zeros(()), x), max_steps=6)[1].sum()


def _while_lines(x, p):
    lines, i, v = [], torch.zeros(()), x
    while True:
        lines.append(f"test {v}")
        if not i < p:
            return lines
        lines.append(f"step {i} {v}")
        i, v = i + 1.0, torch.sin(v) + v


def _scan_model(x, p):
    def body(c, xi):
        functx.debug.print("x_i {} c {}", xi, c)
        return c * torch.cos(xi) + xi, c * xi
    c, ys = functx.scan(body, p * 1.0, x)
    return c + ys.sum()


def _scan_lines(x, p):
    lines, c = [], p * 1.0
    for xi in x:
        lines.append(f"x_i {xi} c {c}")
        c = c * torch.cos(xi) + xi
    return lines


FLOW_MODELS = {"cond": (_cond_model, _cond_lines), "switch": (_switch_model, _switch_lines),
               "while": (_while_model, _while_lines), "scan": (_scan_model, _scan_lines)}
FLOW_TRANSFORMS = {
    "call": lambda f: f,
    "grad": lambda f: functx.grad(f),
    "jvp": lambda f: lambda x, p: functx.jvp(lambda v: f(v, p), (x,), (torch.ones_like(x),)),
    "vmap": lambda f: functx.vmap(f, in_axes=(0, None)),
    "vmap_grad": lambda f: functx.vmap(functx.grad(f), in_axes=(0, None)),
}


@pytest.mark.parametrize("jit", [None] + BACKENDS)
@pytest.mark.parametrize("transform", list(FLOW_TRANSFORMS))
@pytest.mark.parametrize("model", list(FLOW_MODELS))
def test_prints_inside_control_flow_run_once(model, transform, jit, capsys):
    f, lines = FLOW_MODELS[model]
    fn = FLOW_TRANSFORMS[transform](f)
    fn = fn if jit is None else functx.jit(fn, backend=jit)
    batched = transform.startswith("vmap")
    x = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]]) if batched else torch.tensor([0.5, -1.0, 2.0])
    for p in (torch.tensor(2.0), torch.tensor(-1.0)):       # both branches; 2 and 0 loop steps
        capsys.readouterr()
        fn(x, p)
        if batched:       # one line per example, statement by statement
            want = [line for step in zip(*[lines(xi, p) for xi in x]) for line in step]
        else:
            want = lines(x, p)
        assert_lines_close(capsys.readouterr().out.splitlines(), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_jit_of_grad_keeps_the_values_of_control_flow_models(backend):
    x, p = torch.tensor([0.5, -1.0, 2.0]), torch.tensor(2.0)
    for model, _ in FLOW_MODELS.values():
        torch.testing.assert_close(functx.jit(functx.grad(model), backend=backend)(x, p), functx.grad(model)(x, p))


def test_batched_predicate_prints_every_branch_for_every_example(capsys):
    X = torch.tensor([[1.0, 2.0], [-1.0, -3.0]])
    functx.vmap(functx.grad(lambda x: _cond_model(x, x.sum())))(X)
    want = [f"lo {X[0] * 1.5}", f"lo {X[1] * 1.5}", f"hi {X[0] * 1.5}", f"hi {X[1] * 1.5}"]
    assert capsys.readouterr().out.splitlines() == want


@pytest.mark.parametrize("backend", BACKENDS)
def test_unused_cond_with_a_print_runs_every_call(backend, capsys):
    def f(x):
        functx.cond(x.sum() > 0, lambda v: (functx.debug.print("pos {}", v), v * 2)[1],
                    lambda v: (functx.debug.print("neg {}", v), v)[1], x)          # result unused
        functx.switch(torch.tensor(1), [lambda v: v, lambda v: (functx.debug.print("one {}", v), v)[1]], x)
        return x + 1

    jf = functx.jit(f, backend=backend)
    xs = [torch.tensor([1.0, 2.0]), torch.tensor([-1.0, 0.5]), torch.tensor([3.0, -4.0])]
    for x in xs:
        torch.testing.assert_close(jf(x), x + 1)
    want = [line for x in xs for line in (f"pos {x}" if x.sum() > 0 else f"neg {x}", f"one {x}")]
    assert capsys.readouterr().out.splitlines() == want
    assert jf.cache_size() == 1


def test_passes_keep_control_flow_holding_effects():
    def f(x):
        branch = lambda v: (functx.debug.print("{}", v), v * 2)[1]
        functx.cond(x.sum() > 0, branch, branch, x)
        functx.cond(x.sum() > 0, branch, branch, x)                   # the same cond again
        functx.cond(x.sum() > 0, lambda v: v * 2, lambda v: v, x)     # no effect: dead code
        return x + 1

    graph = functx.make_graph(f)(torch.ones(2))
    assert sum(e.prim.name == "cond" for e in graph.eqns) == 3
    for p in (passes.dce, passes.cse):
        assert sum(e.prim.name == "cond" for e in passes.dce(p(graph)).eqns) == 2, p.__name__


@pytest.mark.parametrize("jit", [None] + BACKENDS)
def test_prints_once_when_reverse_mode_recomputes(jit, capsys):
    """A remat scan and a checkpoint recompute their body for the backward pass; the
    recomputation prints nothing."""
    def body(c, xi):
        functx.debug.print("x_i {} c {}", xi, c)
        return c * torch.cos(xi) + xi, c * xi

    def remat_scan(x, p):
        c, ys = functx.scan(body, p * 1.0, x, remat=True)
        return c + ys.sum()

    def checkpointed_cond(x, p):
        return functx.checkpoint(_cond_model)(x, p) * 2.0

    x = torch.tensor([0.5, -1.0, 2.0])
    for f, lines in ((remat_scan, _scan_lines), (checkpointed_cond, _cond_lines)):
        for p in (torch.tensor(2.0), torch.tensor(-1.0)):
            g = functx.grad(f) if jit is None else functx.jit(functx.grad(f), backend=jit)
            want = functx.grad(f)(x, p) if jit is not None else None
            capsys.readouterr()
            got = g(x, p)
            assert_lines_close(capsys.readouterr().out.splitlines(), lines(x, p))
            if want is not None:
                torch.testing.assert_close(got, want)
