"""Graph passes: each keeps graphs valid and semantics equal, and does its one rewrite."""
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import functx
from functx.compile import passes, pipeline
from functx.compile.eager import EagerCompiled


def prim_names(graph):
    return [e.prim.name for e in graph.eqns]


def run_graph(graph, *args):
    return EagerCompiled(graph)(*args)


def check_all_passes(graph, *args):
    """Every pass, alone and in the pipeline, keeps the graph well typed and its values."""
    ref = run_graph(graph, *args)
    g = graph
    for name, fn in pipeline.PIPELINE:
        g = fn(g)
        g.check()
        single = fn(graph)
        single.check()
        for a, b in zip(run_graph(single, *args), ref):
            torch.testing.assert_close(a, b, equal_nan=True, msg=f"pass {name}")
    for a, b in zip(run_graph(g, *args), ref):
        torch.testing.assert_close(a, b, equal_nan=True)
    return g


def _hand_written_layer_norm(x):
    """x.mean and x.var each sum x (layer_norm itself is lowered natively, computing it once)."""
    return (x - x.mean(1, keepdim=True)) / (x.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt()


def test_cse_merges_duplicate_reductions_of_layer_norm():
    x = torch.randn(4, 8)
    g = functx.make_graph(_hand_written_layer_norm)(x)
    assert prim_names(g).count("reduce_sum") == 3          # the front end computes the mean twice
    assert prim_names(passes.cse(g)).count("reduce_sum") == 2
    check_all_passes(g, x)


def test_cse_never_merges_random():
    x = torch.randn(3)

    def f(x):
        return x + torch.randn(3) + torch.randn(3)
    g = functx.make_graph(f)(x)
    n = sum(1 for e in g.eqns if e.prim.effectful)
    assert n == 2
    assert sum(1 for e in passes.cse(g).eqns if e.prim.effectful) == 2
    assert sum(1 for e in passes.dce(g).eqns if e.prim.effectful) == 2


def test_simplify_identities_and_unsafe_float_zero():
    x = torch.randn(5)
    g = functx.make_graph(lambda x: ((x * 1.0 + -0.0) - 0.0) / 1.0 + x * 0.0)(x)
    s = passes.simplify(g)
    s.check()
    # x*1, +(-0.0), -0.0, /1 vanish; x*0.0 stays (0 * inf is nan), and so does its add.
    assert prim_names(s) == ["mul", "add"]
    check_all_passes(g, x)


def test_simplify_integer_times_zero_and_neg_neg():
    i = torch.arange(6)
    g = functx.make_graph(lambda i: (i * 0) + (-(-i)))(i)
    s = passes.dce(passes.simplify(g))
    assert "neg" not in prim_names(s) and "mul" not in prim_names(s)
    check_all_passes(g, i)


def test_convert_chains():
    h = torch.randn(4).half()
    widen = functx.make_graph(lambda h: h.float().double().half())(h)
    assert "convert_element_type" not in prim_names(passes.dce(passes.simplify(widen)))
    narrow = functx.make_graph(lambda x: x.half().float())(h.float())
    assert prim_names(passes.dce(passes.simplify(narrow))).count("convert_element_type") == 2
    check_all_passes(widen, h)
    check_all_passes(narrow, h.float())


def test_fold_views_composes_and_cancels():
    x = torch.randn(2, 3, 4)
    g = functx.make_graph(lambda x: x.permute(1, 2, 0).permute(2, 0, 1).reshape(6, 4).reshape(24) * 2)(x)
    v = passes.dce(passes.fold_views(g))
    assert prim_names(v) == ["reshape", "mul"]
    check_all_passes(g, x)
    y = torch.randn(3)
    b = functx.make_graph(lambda y: y[None, :].expand(4, 3)[None].expand(2, 4, 3) + 1)(y)
    fb = passes.dce(passes.fold_views(b))
    assert prim_names(fb) == ["broadcast_in_dim", "add"]
    check_all_passes(b, y)


def test_fold_constants():
    x = torch.randn(3)
    g = functx.make_graph(lambda x: x * (torch.ones_like(x) * 2.0 + 1.0).exp())(x)
    c = passes.dce(passes.fold_constants(g))
    assert prim_names(c) == ["full", "mul"]
    assert abs(c.eqns[0].params["value"] - torch.tensor(3.0).exp().item()) < 1e-5
    check_all_passes(g, x)


def test_vmap_grad_graph_loses_its_ones():
    def f(x):
        return (torch.sin(x) * x.exp()).sum()
    x = torch.randn(4, 8)
    g = functx.make_graph(functx.vmap(functx.grad(f)))(x)
    out = check_all_passes(g, x)
    assert "full" not in prim_names(out) and len(out.eqns) < len(g.eqns)


def test_optimize_records_each_pass():
    x = torch.randn(4, 8)
    g = functx.make_graph(_hand_written_layer_norm)(x)
    out, trace = pipeline.optimize(g, record=True)
    assert [n for n, _ in trace] == [n for n, _ in pipeline.PIPELINE]
    changed = dict((n, t) for n, t in trace if t)
    assert "cse" in changed and str(out) == [t for _, t in trace if t][-1]


UNARY = [torch.sin, torch.tanh, lambda v: v * 1.0, lambda v: v + 0.0, lambda v: -(-v), torch.abs,
         lambda v: v.float().double().float(), lambda v: v.t().t()]
BINARY = [torch.add, torch.mul, lambda a, b: a * 0.0 + b]


@settings(max_examples=15)
@given(st.lists(st.tuples(st.integers(0, len(UNARY) - 1), st.integers(0, len(BINARY) - 1),
                          st.booleans()), min_size=1, max_size=6))
def test_random_programs_keep_values(steps):
    x, y = torch.randn(3, 3), torch.randn(3, 3)

    def f(x, y):
        v = x
        for u, b, dup in steps:
            v = UNARY[u](v)
            v = BINARY[b](v, y if not dup else UNARY[u](x))
        return v, v.sum(0)
    check_all_passes(functx.make_graph(f)(x, y), x, y)


def test_cse_merges_commutative_operand_orders():
    import functx.compile.passes as passes
    g = functx.make_graph(lambda x, y: x * y + y * x - torch.maximum(y, x) + torch.maximum(x, y)
                          - (x - y) - (y - x))(torch.randn(3), torch.randn(3))
    out = passes.cse(g)
    out.check()
    names = [e.prim.name for e in out.eqns]
    assert names.count("mul") == 1 and names.count("max") == 1
    assert names.count("sub") == 5       # 3 outer subtractions, and x-y, y-x both stay (not commutative)


def _bits_equal(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    same = (a == b) | (a.isnan() & b.isnan())
    assert bool(same.all()) and torch.equal(torch.signbit(a[a == 0]), torch.signbit(b[a == 0]))


def test_full_operands_become_literals_exactly():
    """simplify: `full` beside an operand of its type becomes a scalar literal (the eager
    backend then fills no constant tensor); values bit for bit as before, and not when the
    scalar would round differently (0.1 in half) or when no operand of the full's type stays."""
    from functx.core import Eqn, Graph, Var
    from functx.core.primitive import REGISTRY
    from functx.core.types import TensorType
    P = REGISTRY

    def graph_of(dtype, value, prim="mul"):
        t = TensorType((4, 3), dtype, torch.device("cpu"))
        x, c = Var(t), Var(t)
        y = Var(TensorType((4, 3), torch.bool if prim == "lt" else dtype, torch.device("cpu")))
        full = Eqn(P["full"], [], [c], {"shape": (4, 3), "value": value, "dtype": dtype, "device": torch.device("cpu")})
        if prim == "where":
            p = Var(TensorType((4, 3), torch.bool, torch.device("cpu")))
            cmp = Eqn(P["lt"], [x, c], [p], {})
            return Graph([x], [], [], [full, cmp, Eqn(P["where"], [p, c, x], [y], {})], [y]), x
        return Graph([x], [], [], [full, Eqn(P[prim], [x, c], [y], {})], [y]), x

    for dtype, value, prim, rewritten in [(torch.float32, 0.0009765625, "mul", True),
                                          (torch.float32, 0, "where", True),
                                          (torch.float16, 0.1, "mul", False),     # 0.1 is not a half
                                          (torch.float16, 0.5, "div", True),
                                          (torch.float32, float("nan"), "add", True),
                                          (torch.int32, 3, "sub", True),
                                          (torch.float64, -0.0, "add", True),
                                          (torch.float32, 3.0, "div", True),
                                          (torch.bfloat16, 3.0, "div", True),
                                          (torch.float32, 3.0, "pow", False),     # x ** 3.0 is x*x*x
                                          (torch.float32, 2.0, "max", True),
                                          (torch.float32, 0.5, "lt", True)]:
        g, _ = graph_of(dtype, value, prim)
        s = passes.dce(passes.simplify(g))
        s.check()
        assert ("full" not in prim_names(s)) == rewritten, (dtype, value, prim, s)
        x = (torch.randn(4, 3) * 4).to(dtype)
        x[0, 0] = 0.0
        x[0, 1:3] = torch.tensor([float("inf"), float("nan")]).to(dtype) if dtype.is_floating_point else 0
        for a, b in zip(run_graph(s, x), run_graph(g, x)):
            assert _bits_equal(a, b) is None if a.dtype.is_floating_point else torch.equal(a, b)
    # where's predicate is not a value operand: a full there stays
    t = TensorType((4,), torch.float32, torch.device("cpu"))
    b = TensorType((4,), torch.bool, torch.device("cpu"))
    x, y, p = Var(t), Var(t), Var(b)
    g = Graph([x], [], [], [Eqn(P["full"], [], [p], {"shape": (4,), "value": True, "dtype": torch.bool,
                                                      "device": torch.device("cpu")}),
                            Eqn(P["where"], [p, x, x], [y], {})], [y])
    s = passes.simplify(g)
    assert prim_names(s) == ["full"] and s.outvars[0] is x      # where(c, x, x) is x


def test_per_sample_grads_graph_has_no_constant_tensors_or_stop_gradients():
    def loss(w, x, y):
        return F.cross_entropy(torch.relu(x @ w)[None], y[None])
    w, x, y = torch.randn(5, 3), torch.randn(8, 5), torch.randint(0, 3, (8,))
    f = functx.vmap(functx.grad(loss), in_dims=(None, 0, 0))
    g = functx.make_graph(f)(w, x, y)
    opt, _ = pipeline.optimize(g)
    names = prim_names(opt)
    assert "stop_gradient" not in names
    fulls = [e for e in opt.eqns if e.prim.name == "full"]
    assert all(any(u.prim.name == "scatter_add_along" for u in opt.eqns if fe.outputs[0] in u.inputs)
               for fe in fulls), opt          # only the zeros cross-entropy's gradient scatters into
    check_all_passes(g, w, x, y)
    torch.testing.assert_close(functx.jit(f)(w, x, y), torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(w, x, y))


def test_fold_dot_transposes_computes_weight_gradients_in_place():
    """(x.T @ g).T from reverse mode is g.T @ x: one matmul, no transpose, when its rows get no
    shorter; a transpose that would make BLAS's rows short ([128,2] -> [2,128] stays as
    [2,128] then transposed), or a product used elsewhere too, stays. Batched products swap
    only their free dims. Values equal to float tolerance (BLAS may sum in another order)."""
    def step(w1, w2, x):
        return functx.grad(lambda w1, w2: torch.tanh(torch.tanh(x @ w1) @ w2).pow(2).sum(), argnums=(0, 1))(w1, w2)
    w1, w2, x = torch.randn(2, 16), torch.randn(16, 16), torch.randn(64, 2)
    g = functx.make_graph(step)(w1, w2, x)
    assert prim_names(g).count("transpose") >= 1
    opt = check_all_passes(g, w1, w2, x)
    assert "transpose" not in prim_names(opt), opt
    h, e = torch.randn(64, 16), torch.randn(64, 2)
    longer = functx.make_graph(lambda h, e: (h.mT @ e).mT)(h, e)          # [16,2] -> [2,16]: folds
    assert prim_names(passes.fold_dot_transposes(longer)).count("transpose") == prim_names(longer).count("transpose") - 1
    shorter = functx.make_graph(lambda h, e: (e.mT @ h).mT)(h, e)         # [2,16] -> [16,2]: stays
    assert prim_names(passes.fold_dot_transposes(shorter)).count("transpose") == prim_names(shorter).count("transpose")
    check_all_passes(longer, h, e)
    check_all_passes(shorter, h, e)

    # batched: keep the batch dim, swap the free dims
    a, b = torch.randn(3, 7, 4), torch.randn(3, 4, 5)
    g2 = functx.make_graph(lambda a, b: torch.matmul(a, b).transpose(1, 2))(a, b)
    f2 = passes.fold_dot_transposes(g2)
    assert "transpose" not in prim_names(f2) and prim_names(f2).count("dot_general") == 1
    torch.testing.assert_close(run_graph(f2, a, b)[0], torch.matmul(a, b).transpose(1, 2))
    # the product is also an output: both are needed, nothing folds
    g3 = functx.make_graph(lambda a, b: (torch.matmul(a, b), torch.matmul(a, b).transpose(1, 2)))(a, b)
    g3 = passes.cse(g3)
    assert prim_names(passes.fold_dot_transposes(g3)).count("transpose") == 1
