"""The IR: the printer's format, check_graph on corrupted graphs, and to_python_source."""
import re

import pytest
import torch
import torch.nn.functional as F

import functx
from functx.core.ir import Eqn, Graph, GraphTypeError, Literal, Var, check_graph
from functx.core.primitive import REGISTRY
from functx.core.types import TensorType

CPU = torch.device("cpu")


def f32(*shape):
    return TensorType(tuple(shape), torch.float32, CPU)


# ---------------------------------------------------------------- printer

def test_printer_exact_format():
    x, y = torch.randn(8, 16), torch.randn(8, 16)
    g = functx.make_graph(lambda x, y: torch.tanh(x * y).sum(0) + 2.0)(x, y)
    assert str(g) == (
        "graph(t0: f32[8,16], t1: f32[8,16]):\n"
        "  t2 = mul(t0, t1)  # f32[8,16]\n"
        "  t3 = tanh(t2)  # f32[8,16]\n"
        "  t4 = reduce_sum(t3, axes=(0,))  # f32[16]\n"
        "  t5 = add(t4, 2.0)  # f32[16]\n"
        "  return (t5,)"
    )
    g.check()


def test_printer_consts_params_dtypes_and_multiple_outputs():
    w = torch.randn(16, 4, dtype=torch.float64)

    def f(x, i):
        y = x @ w
        return y.sort(1).values, i.to(torch.float16)

    g = functx.make_graph(f)(torch.randn(8, 16, dtype=torch.float64), torch.arange(3))
    text = str(g)
    lines = text.splitlines()
    # inputs are t0, t1 (numbering is not shifted by the constant), the constant is c0
    assert lines[0] == "graph(t0: f64[8,16], t1: i64[3]) consts(c0: f64[16,4]):"
    assert re.search(r"= dot_general\(t0, c0, dimension_numbers=\(\(\(1,\), \(0,\)\), \(\(\), \(\)\)\)\)  # f64\[8,4\]",
                     text), text
    # a multiple-result primitive prints both outputs and both types
    assert re.search(r"t\d+, t\d+ = sort\(t\d+, axis=1, descending=False, stable=False\)  # f64\[8,4\], i64\[8,4\]",
                     text), text
    # dtype params print with their short names
    assert "convert_element_type(t1, dtype=f16)  # f16[3]" in text
    assert re.fullmatch(r"  return \(t\d+, t\d+\)", lines[-1]), lines[-1]
    g.check()


def test_printer_full_and_literals():
    g = functx.make_graph(lambda x: x.masked_fill(x > 0, float("-inf")) * 0.5 + torch.ones_like(x))(torch.randn(3))
    text = str(g)
    assert "full(shape=(3,), value=1, dtype=f32, device=cpu)  # f32[3]" in text
    assert "gt(t0, 0.0)  # bool[3]" in text
    assert "-inf" in text
    g.check()


def test_graph_types_and_structure():
    g = functx.make_graph(lambda d: {"s": d["a"].sum(), "p": d["a"] * d["b"]})(
        {"a": torch.randn(2, 3), "b": torch.randn(2, 3)})
    assert g.in_types == [f32(2, 3), f32(2, 3)]
    assert sorted(str(t) for t in g.out_types) == ["f32[2,3]", "f32[]"]
    assert g.meta.out_tree is not None and g.meta.in_tree is not None


# ---------------------------------------------------------------- check_graph

def _graph():
    x = torch.randn(8, 16)
    return functx.make_graph(lambda x, y: torch.tanh(x * y).sum(0) + 2.0)(x, x)


def test_check_graph_accepts_traced_graphs():
    def f(x, w):
        h = F.gelu(x @ w)
        h = F.layer_norm(h, (h.shape[-1],))
        return F.log_softmax(h, -1)[:, ::2].sum(), h.argmax(1)
    g = functx.make_graph(f)(torch.randn(4, 8), torch.randn(8, 6))
    check_graph(g)
    check_graph(functx.make_graph(functx.grad(lambda x, w: f(x, w)[0]))(torch.randn(4, 8), torch.randn(8, 6)))


def test_check_graph_wrong_type():
    g = _graph()
    g.eqns[0].outputs[0].type = f32(8, 15)
    with pytest.raises(GraphTypeError, match=r"eqn 0 \(mul\): derived f32\[8,16\], graph says f32\[8,15\]"):
        check_graph(g)


def test_check_graph_wrong_dtype():
    g = _graph()
    g.eqns[1].outputs[0].type = TensorType((8, 16), torch.float64, CPU)
    with pytest.raises(GraphTypeError, match=r"eqn 1 \(tanh\).*f64"):
        check_graph(g)


def test_check_graph_undefined_var():
    g = _graph()
    with pytest.raises(GraphTypeError, match=r"eqn 0 \(mul\) uses undefined"):
        check_graph(Graph(g.invars[:1], [], [], g.eqns, g.outvars))
    with pytest.raises(GraphTypeError, match="uses undefined"):   # use before definition
        check_graph(Graph(g.invars, [], [], list(reversed(g.eqns)), g.outvars))
    with pytest.raises(GraphTypeError, match="output .* is undefined"):
        check_graph(Graph(g.invars, [], [], [], [Var(f32(3))]))


def test_check_graph_wrong_output_count():
    g = _graph()
    e = g.eqns[0]
    g.eqns[0] = Eqn(e.prim, e.inputs, e.outputs + [Var(f32(8, 16))], e.params)
    with pytest.raises(GraphTypeError, match=r"eqn 0 \(mul\): 1 outputs, graph has 2"):
        check_graph(g)


def test_check_graph_rejected_by_abstract_eval_names_the_eqn():
    a, b, o = Var(f32(8, 16)), Var(f32(16)), Var(f32(8, 16))
    with pytest.raises(GraphTypeError, match=r"eqn 0 \(add\).*shapes differ"):
        check_graph(Graph([a, b], [], [], [Eqn(REGISTRY["add"], [a, b], [o], {})], [o]))
    s = Var(f32(16))
    with pytest.raises(GraphTypeError, match=r"eqn 0 \(reduce_sum\).*axis 5"):
        check_graph(Graph([a], [], [], [Eqn(REGISTRY["reduce_sum"], [a], [s], {"axes": (5,)})], [s]))


def test_check_graph_ssa_and_consts():
    a = Var(f32(8, 16))
    with pytest.raises(GraphTypeError, match="redefines"):
        check_graph(Graph([a], [], [], [Eqn(REGISTRY["neg"], [a], [a], {})], [a]))
    with pytest.raises(GraphTypeError, match="const .* bound to a value of type f32\\[3\\]"):
        check_graph(Graph([], [a], [torch.zeros(3)], [], [a]))
    with pytest.raises(GraphTypeError, match="1 constvars but 0 consts"):
        check_graph(Graph([], [a], [], [], [a]))
    o = Var(f32(8, 16))
    check_graph(Graph([a], [], [], [Eqn(REGISTRY["mul"], [a, Literal(2.0)], [o], {})], [o]))


# ---------------------------------------------------------------- to_python_source

def _run_source(graph, *inputs):
    src = functx.to_python_source(graph)
    namespace = {}
    exec(compile(src, "<generated>", "exec"), namespace)   # a fresh namespace: the source is self-contained
    return src, namespace["fn"](*inputs, *graph.consts)


def test_to_python_source_reproduces_results():
    w = torch.randn(6, 5)

    def f(x, idx):
        y = x @ w
        y = y.masked_fill(y > 1.5, float("-inf"))
        z = F.softmax(y, -1) + y.cumsum(1).prod(0) + x[idx].sum()
        return z.relu(), y.sort(1).values, F.pad(x, (1, 1)), (x.clamp(-0.5, 0.5) % 0.3)

    x, idx = torch.randn(4, 6), torch.tensor([0, -1])
    g = functx.make_graph(f)(x, idx)
    src, outs = _run_source(g, x, idx)
    assert src.lstrip().startswith("import")
    assert "def fn(a0, a1, c0):" in src
    for a, b in zip(outs, f(x, idx)):
        torch.testing.assert_close(a, b)


def test_to_python_source_of_a_gradient_graph():
    def loss(w, x):
        return (torch.tanh(x @ w) ** 2).mean()
    w, x = torch.randn(5, 3, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    g = functx.make_graph(functx.grad(loss))(w, x)
    _, outs = _run_source(g, w, x)
    torch.testing.assert_close(outs[0], torch.func.grad(loss)(w, x))


def test_to_python_source_int_bool_and_halfs():
    def f(a, b, h):
        return (a * 3 // 2) % 5, (b & (a > 2)) | ~b, (h * 1.5).to(torch.float32).sum()
    a, b, h = torch.arange(6), torch.tensor([True, False] * 3), torch.randn(6).half()
    _, outs = _run_source(functx.make_graph(f)(a, b, h), a, b, h)
    for x, y in zip(outs, f(a, b, h)):
        torch.testing.assert_close(x, y)
