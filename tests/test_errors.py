"""User-facing errors: each is a clean exception of the right class whose message says
what went wrong, where (the user's file and line), and what to do instead."""
import os

import pytest
import torch

import functx
from functx import ConcretizationError, FunctxError

X = torch.randn(3, 4)
THIS_FILE = os.path.abspath(__file__)
FUNCTX_DIR = os.path.dirname(os.path.abspath(functx.__file__))


def line_of(marker):
    """The line number of the (unique) source line of this file containing marker."""
    with open(THIS_FILE) as f:
        hits = [i + 1 for i, line in enumerate(f) if marker in line and "line_of(" not in line]
    assert len(hits) == 1, (marker, hits)
    return hits[0]


def internal_frames(excinfo):
    return [e for e in excinfo.traceback if os.path.abspath(str(e.path)).startswith(FUNCTX_DIR + os.sep)]


# ---------------------------------------------------------------- control flow under jit

def branch_on_value(x):
    if x.sum() > 0:  # <-- branch_on_value
        return x
    return -x


def loop_on_value(x):
    while x.sum() < 10:  # <-- loop_on_value
        x = x + 1
    return x


def int_of_value(x):
    return x * int(x.sum())  # <-- int_of_value


def item_of_value(x):
    return x * x.sum().item()  # <-- item_of_value


def bool_of_value(x):
    return x * bool(x.sum())  # <-- bool_of_value


def tolist_of_value(x):
    return x * x[0].tolist()[0]  # <-- tolist_of_value


def float_of_value(x):
    return x * float(x.sum())  # <-- float_of_value


CONTROL_FLOW = [branch_on_value, loop_on_value, int_of_value, item_of_value, bool_of_value,
                tolist_of_value, float_of_value]


@pytest.mark.parametrize("f", CONTROL_FLOW, ids=lambda f: f.__name__)
def test_value_dependent_python_under_jit(f):
    with pytest.raises(ConcretizationError) as excinfo:
        functx.jit(f)(X)
    msg = str(excinfo.value)
    # why
    assert "traced once per input signature" in msg and "abstract" in msg
    # where: the user's file and line
    assert f'File "{THIS_FILE}", line {line_of("# <-- " + f.__name__)}, in {f.__name__}' in msg
    # what to do instead
    for hint in ("torch.where", "static_argnums", "functx.cond", "functx.while_loop"):
        assert hint in msg, hint
    if not (hasattr(functx, "cond") and hasattr(functx, "while_loop")):
        assert "planned" in msg
    # a clean traceback: the user's frames, not functx's internals
    assert len(internal_frames(excinfo)) <= 1, internal_frames(excinfo)
    assert excinfo.traceback[-1].name == f.__name__


@pytest.mark.parametrize("f", CONTROL_FLOW, ids=lambda f: f.__name__)
def test_value_dependent_python_under_make_graph_and_explain(f):
    with pytest.raises(ConcretizationError):
        functx.make_graph(f)(X)
    with pytest.raises(ConcretizationError):
        functx.explain(f)(X)


def test_same_code_works_in_eager_transforms():
    def loss(x):
        return branch_on_value(x).pow(2).sum() + int_of_value(x).sum() * 0 + item_of_value(x).sum()
    for x in (X, -X.abs()):
        torch.testing.assert_close(functx.grad(loss)(x), torch.func.grad(loss)(x))
    torch.testing.assert_close(functx.jacrev(loop_on_value)(X[0]), torch.func.jacrev(loop_on_value)(X[0]))
    torch.testing.assert_close(functx.jvp(tolist_of_value, (X,), (X,))[1],
                               torch.func.jvp(tolist_of_value, (X,), (X,))[1])


def test_static_argnums_is_the_way_out():
    def f(x, n):
        for _ in range(n):
            x = x * 2
        return x if n > 1 else -x
    j = functx.jit(f, static_argnums=1)
    torch.testing.assert_close(j(X, 3), X * 8)
    torch.testing.assert_close(j(X, 1), -X * 2)


def test_value_dependent_control_flow_under_vmap():
    with pytest.raises(FunctxError) as excinfo:
        functx.vmap(branch_on_value)(X)
    msg = str(excinfo.value)
    assert "vmap" in msg and "one value per batch element" in msg and "torch.where" in msg
    assert f"line {line_of('# <-- branch_on_value')}" in msg
    with pytest.raises(FunctxError, match="vmap"):
        functx.vmap(item_of_value)(X)


def test_boolean_mask_indexing_under_jit():
    def f(x):
        return x[x > 0].sum()  # <-- mask_index
    with pytest.raises(ConcretizationError) as excinfo:
        functx.jit(f)(X)
    msg = str(excinfo.value)
    assert "boolean mask" in msg and "torch.where" in msg
    assert f"line {line_of('# <-- mask_index')}" in msg


# ---------------------------------------------------------------- jit arguments and outputs

def test_bad_static_argnums():
    with pytest.raises(ValueError, match=r"static_argnums=\(3,\) refers to argument 3, but f was called with 2"):
        functx.jit(lambda x, n: x, static_argnums=3)(X, 1)
    with pytest.raises(ValueError, match="refers to argument -3"):
        functx.jit(lambda x, n: x, static_argnums=-3)(X, 1)
    with pytest.raises(TypeError, match="static_argnums must be an int or a sequence of ints"):
        functx.jit(lambda x, n: x, static_argnums="n")
    with pytest.raises(TypeError, match="static_argnums must be an int or a sequence of ints"):
        functx.make_graph(lambda x, n: x, static_argnums=(1.0,))


def test_unhashable_static_arg_names_the_argument():
    j = functx.jit(lambda x, cfg: x * cfg["scale"], static_argnums=1)
    with pytest.raises(TypeError, match=r"static argument 1 is a dict, which is not hashable.*cache key"):
        j(X, {"scale": 2})


def test_non_tensor_outputs_name_the_leaf():
    with pytest.raises(TypeError, match=r"output leaf 2 \(at \('b', 1\)\) of f is a int \(3\), not a tensor"):
        functx.jit(lambda x: {"a": x, "b": (x, 3)})(X)
    with pytest.raises(TypeError, match="functx.make_graph: output leaf 0 .* is a str"):
        functx.make_graph(lambda x: "hello")(X)


def test_transform_argument_errors():
    with pytest.raises(TypeError, match="must return a scalar"):
        functx.grad(lambda x: x * 2)(X)
    with pytest.raises(TypeError, match="dtype torch.int64.*floating-point"):
        functx.grad(lambda x: x.sum())(torch.arange(3))
    # the Jacobians of an integer input are not zeros (JAX and torch.func raise too)
    for jac in (functx.jacrev, functx.jacfwd, functx.hessian):
        with pytest.raises(TypeError, match="dtype torch.int64.*floating-point"):
            jac(lambda x: x * 2)(torch.arange(3))
    with pytest.raises(ValueError, match="argnums"):
        functx.grad(lambda x: x.sum(), argnums=2)(X)


# ---------------------------------------------------------------- unsupported operations

PLAIN_BUFFER = torch.zeros(3)


def write_into_plain_buffer(x):
    PLAIN_BUFFER[0] = x[0, 0]  # <-- plain_buffer
    return PLAIN_BUFFER * 1


@pytest.mark.parametrize("transform", ["grad", "vmap"])
def test_write_into_plain_tensor_captured_from_outside(transform):
    """A traced value written into a tensor the function closes over cannot be recorded (the
    caller holds that tensor). (A tensor the function makes itself can: test_transforms.py.)
    Under jit the write is refused earlier: test_jit.py."""
    wrapped = {"grad": functx.grad(lambda x: write_into_plain_buffer(x).sum()),
               "vmap": lambda x: functx.vmap(lambda r: write_into_plain_buffer(r[None]))(x)}[transform]
    with pytest.raises(FunctxError) as excinfo:
        wrapped(X)
    msg = str(excinfo.value)
    assert "plain tensor" in msg and "torch.zeros_like(x)" in msg and "x.new_zeros" in msg
    assert f"line {line_of('# <-- plain_buffer')}" in msg


def test_device_move():
    with pytest.raises(FunctxError, match=r"moving a traced value from cpu to meta is not supported"):
        functx.jit(lambda x: x.to("meta") * 2)(X)
    with pytest.raises(FunctxError, match="Move the inputs"):
        functx.grad(lambda x: x.to("meta").sum())(X)


def test_out_argument():
    # out= into a tensor the function made now works (test_no_silent_wrong); one that would
    # have to resize the out= tensor names the op and the line
    def f(x):
        y = torch.empty(3, 4)
        torch.add(x, 1, out=y)
        return y
    torch.testing.assert_close(functx.jit(f)(X), X + 1)
    torch.testing.assert_close(functx.grad(lambda x: f(x).sum())(X), torch.ones_like(X))

    def g(x):
        y = torch.empty(2)
        torch.add(x, 1, out=y)  # <-- out_arg
        return y
    with pytest.raises(FunctxError) as excinfo:
        functx.jit(g)(X)
    msg = str(excinfo.value)
    assert "out=" in msg and "functional form" in msg and f"line {line_of('# <-- out_arg')}" in msg


def test_complex_dtypes_are_rejected_clearly():
    z = torch.randn(3, dtype=torch.complex64)
    with pytest.raises(FunctxError, match=r"does not support complex tensors.*c64\[3\]"):
        functx.jit(lambda z: z * z)(z)

    def f(x):
        return torch.complex(x, 2 * x).abs().sum()  # <-- complex_inside
    with pytest.raises(FunctxError, match="complex") as excinfo:
        functx.grad(f)(X[0])
    assert f"line {line_of('# <-- complex_inside')}" in str(excinfo.value)
    with pytest.raises(FunctxError, match="complex"):
        functx.jit(lambda x: torch.fft.rfft(x).abs())(X)


def test_leaked_tracer():
    leaked = []

    def f(x):
        leaked.append(x * 2)
        return x
    # the trace that leaves the value in a list f reaches raises (later calls would skip the append)
    with pytest.raises(FunctxError, match=r"stored a value it computed .*\(leaked\[0\]\)"):
        functx.jit(f)(X)
    with pytest.raises(FunctxError, match="leaked"):
        functx.jit(lambda y: y + leaked[0])(X)


def test_traceback_filtering_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("FUNCTX_TRACEBACK_FILTERING", "off")
    with pytest.raises(ConcretizationError) as excinfo:
        functx.jit(branch_on_value)(X)
    assert len(internal_frames(excinfo)) > 3


@pytest.mark.parametrize("transform", ["grad", "vmap", "jit"])
def test_torch_autograd_inside_a_transform_names_the_functx_way(transform):
    """PINN code often takes derivatives with torch.autograd.grad; traced values have no torch
    autograd graph, so torch would fail with "does not require grad" (or give None with
    allow_unused). The error says so and names the functx spelling."""
    def f(x):
        y = (x ** 3).sum()
        return torch.autograd.grad(y, x, create_graph=True)[0].sum()

    def g(x):
        (x ** 2).sum().backward()
        return x.sum()
    t = {"grad": functx.grad, "vmap": functx.vmap, "jit": functx.jit}[transform]
    with pytest.raises(functx.FunctxError, match=r"(?s)torch.autograd.grad on a value traced.*functx.grad\(lambda"):
        t(f)(torch.randn(2, 3))
    with pytest.raises(functx.FunctxError, match="Tensor.backward on a value traced"):
        t(g)(torch.randn(2, 3))


def test_functx_inside_a_torch_func_transform_raises():
    """torch.func.grad of a functx.jit returned zeros (functx can't see through torch.func's
    wrapper tensors); functx transforms inside torch.func ones raise, naming the fix.
    torch.func's functional_call (not a transform) and functx inside functx still work."""
    tf = torch.func
    with pytest.raises(functx.FunctxError, match="inside a torch.func transform"):
        tf.grad(functx.jit(lambda x: torch.sin(x).sum()))(torch.ones(3))
    with pytest.raises(functx.FunctxError, match="functx.vmap was called inside a torch.func"):
        tf.grad(lambda x: functx.vmap(torch.sin)(x).sum())(torch.ones(2, 3))
    with pytest.raises(functx.FunctxError, match="functx.grad/vjp was called inside"):
        tf.vmap(functx.grad(lambda x: torch.sin(x).sum()))(torch.ones(2, 3))
    torch.testing.assert_close(functx.vmap(functx.grad(lambda x: torch.sin(x).sum()))(torch.ones(2, 3)),
                               torch.cos(torch.ones(2, 3)))


def test_unregistered_containers_in_outputs_and_aux_are_named():
    x = torch.randn(3)
    import dataclasses

    @dataclasses.dataclass
    class Out:
        loss: torch.Tensor

    with pytest.raises(TypeError, match="not a registered pytree type"):
        functx.jit(lambda x: Out(x.sum()))(x)
    # has_aux: the dataclass's tensors would leave grad as traced wrappers
    with pytest.raises(TypeError, match="holding traced tensors"):
        functx.grad(lambda x: (x.sum(), Out(x.sum())), has_aux=True)(x)
    functx.tree_util.register_dataclass(Out, data_fields=["loss"], meta_fields=[])
    g, aux = functx.grad(lambda x: (x.sum(), Out(x.sum())), has_aux=True)(x)
    assert type(aux.loss) is torch.Tensor
    assert type(functx.jit(lambda x: Out(x.sum()))(x).loss) is torch.Tensor


def test_manual_seed_inside_jit_names_the_line():
    # eager reseeds on every call (the same numbers each call); a trace would seed once
    def f(x):
        torch.manual_seed(0)  # <-- seed
        return x + torch.randn(3)
    x = torch.zeros(3)
    assert torch.equal(f(x), f(x))
    with pytest.raises(FunctxError) as excinfo:
        functx.jit(f)(x)
    assert "manual_seed" in str(excinfo.value) and f"line {line_of('# <-- seed')}" in str(excinfo.value)
    # a seed nothing draws after changes nothing (OpInfo wraps deterministic ops in one)
    torch.testing.assert_close(functx.jit(lambda x: (torch.manual_seed(0), x * 2)[1])(x), x * 2)
    torch.testing.assert_close(functx.grad(lambda x: (f(x) * x).sum())(x), f(x))   # eager: fine
