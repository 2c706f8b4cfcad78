"""A whole torch function as one cached unit under an eager transform
(frontend/function_units.py): it computes what the ATen ops below it compute (a view's result
aliases as the ATen path's does), and every case where a unit would differ (in-place writes,
strided operands, random numbers, values read, operands returned as they are) takes the usual
path."""
import importlib

import pytest
import torch
import torch.func
import torch.nn.functional as F

import functx

function_units = importlib.import_module("functx.frontend.function_units")
tensor_module = importlib.import_module("functx.frontend.tensor")


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.fixture(autouse=True)
def _fresh_view_build_counts():
    # other tests' indexing counts towards VIEW_BUILD_LIMIT; each test here starts afresh
    function_units.VIEW_BUILDS.clear()


def _entries(name):
    return [e[1] for e in function_units.CACHE.values() if getattr(e[0], "__name__", None) == name]


def test_a_per_example_matmul_is_one_unit_and_matches_torch_func():
    # x @ W with a 1-D x decomposes below __torch_function__ into unsqueeze, mm, squeeze_
    g = torch.Generator().manual_seed(0)
    W, b, x = torch.randn(5, 4, generator=g), torch.randn(4, generator=g), torch.randn(3, 5, generator=g)

    def f(x):
        return torch.tanh(x @ W + b)
    function_units.CACHE.clear()
    for _ in range(2):
        _close(functx.vmap(f)(x), torch.func.vmap(f)(x))
        _close(functx.vmap(functx.grad(lambda x: f(x).sum()))(x), torch.func.vmap(torch.func.grad(lambda x: f(x).sum()))(x))
        _close(functx.jvp(f, (x,), (x.cos(),))[1], torch.func.jvp(f, (x,), (x.cos(),))[1])
    units = _entries("matmul")
    assert units and all(u is not function_units.UNCACHEABLE for u in units)
    assert len(units[0].graph_eqns) >= 1


def test_units_see_each_call_s_values():
    # plain tensors (closed over) are operands of the unit, not constants baked into it
    c = torch.ones(3)
    f = functx.grad(lambda x: (x * c).sum())
    x = torch.tensor([1.0, 2.0, 3.0])
    _close(f(x), torch.ones(3))
    c.copy_(torch.tensor([2.0, -1.0, 5.0]))
    _close(f(x), torch.tensor([2.0, -1.0, 5.0]))


def test_views_and_in_place_writes_are_exact():
    def f(x):
        y = x * 1.0
        z = y[0]                 # a view of y: writing it writes y
        z.mul_(3.0)
        w = y.float()            # y itself (already float): an alias, not a copy
        w.add_(1.0)
        y += 2.0
        return (y * x.t().t()).sum() + (y.T @ x).sum()
    x = torch.randn(3, 3, dtype=torch.float32)
    for _ in range(2):
        _close(functx.grad(f)(x), torch.func.grad(f)(x))
        _close(functx.vmap(f)(torch.stack([x, -x])), torch.func.vmap(f)(torch.stack([x, -x])))
    assert any(u is not function_units.UNCACHEABLE and u.views for u in _entries("__getitem__"))  # a view unit
    assert all(u is function_units.UNCACHEABLE for u in _entries("float"))
    assert all(u is function_units.UNCACHEABLE for u in _entries("__iadd__"))


def test_strided_operands_keep_torch_s_result_layouts():
    seen = {}

    def f(x):
        xt = x.t()
        y = xt * 2.0             # torch keeps the transposed layout
        seen["strides"] = y.stride()
        return y.sum()
    x = torch.randn(3, 4)
    want = (x.t() * 2.0).stride()
    for _ in range(2):
        functx.grad(f)(x)
        assert seen["strides"] == want


def test_random_functions_draw_anew_each_call():
    f = functx.vmap(lambda x: x * torch.rand_like(x), randomness="different")
    x = torch.ones(2, 3)
    a, b = f(x), f(x)
    assert not torch.equal(a, b)


def test_non_tensor_results_are_remembered_per_function():
    def f(x):
        n = x.shape[0] + x.dim()
        return (x * n).sum()
    x = torch.randn(4)
    for _ in range(2):
        _close(functx.grad(f)(x), torch.full((4,), 5.0))
    assert id(torch.Tensor.dim) in function_units.NOT_TENSOR_VALUED


def test_cross_entropy_is_one_unit_and_grad_mode_is_honoured():
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(4, 5, generator=g), torch.tensor([0, 3, 1, 4])

    def loss(z):
        with torch.no_grad():
            stopped = F.cross_entropy(z, y)     # a constant for grad
        return F.cross_entropy(z, y) + stopped * z.sum()
    for _ in range(2):
        _close(functx.grad(loss)(logits), torch.func.grad(loss)(logits))
    assert any(u is not function_units.UNCACHEABLE for u in _entries("cross_entropy"))


def test_errors_are_raised_by_the_usual_path():
    with pytest.raises(RuntimeError):
        functx.grad(lambda x: (x @ torch.ones(5)).sum())(torch.ones(3, 4))
    # a dtype torch's kernel refuses: the same error as without units
    with pytest.raises(NotImplementedError, match="bitwise_and_cpu"):
        functx.grad(lambda x: torch.bitwise_and(x, x).sum())(torch.ones(3))


def test_debug_nans_turns_units_off():
    x = torch.tensor([1.0, -1.0])
    with functx.debug_nans():
        with pytest.raises(FloatingPointError):
            functx.grad(lambda x: torch.sqrt(x).sum())(x)


def test_autocast_is_not_baked_into_a_unit():
    W = torch.randn(4, 3)
    f = functx.grad(lambda x: (x @ W).float().sum())
    x = torch.randn(2, 4)
    want = f(x)
    function_units.CACHE.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f(x)                  # traced under autocast first
    _close(f(x), want)        # without autocast: full precision, not a bf16 unit


def test_aliases_made_in_cpp_take_the_usual_path():
    # x.data aliases x (made by torch's C++, not by a lowering): never a unit. x.detach() is a
    # view op with a lowering (stop_gradient): a view unit, whose alias keeps the chain that
    # makes a write through it change values only (functionalize._writes_values_only)
    def f(x):
        return (x * x.data).sum() + (x * x.detach()).sum()

    def g(x):
        y = x * 1.0
        d = y.detach()
        d.mul_(3.0)              # y's values tripled, its derivative kept
        return (y * y).sum()
    x = torch.tensor([1.0, 2.0, 3.0])
    for _ in range(2):
        _close(functx.grad(f)(x), torch.func.grad(f)(x))
        _close(functx.grad(g)(x), 6 * x)        # d(y*y)/dx = 2 * (3x) * 1
    assert not _entries("data")
    assert any(u is not function_units.UNCACHEABLE and u.views for u in _entries("detach"))


def test_a_unit_result_changed_in_place_keys_on_its_new_type():
    """A unit's result remembers its type for the next unit's key (fresh_wrapper); an in-place
    view (unsqueeze_) or write that changes it forgets it."""
    x = torch.randn(3, 4)

    def f(x):
        y = x * 2.0
        y.unsqueeze_(0)                 # (1, 3, 4) now
        y = torch.cat([y, torch.cos(y)]).sum(0)         # (3, 4), not (4,)
        z = torch.sin(y) * 2.0
        z.mul_(torch.cos(x))            # an in-place write into a unit's result
        return (torch.exp(z) @ x.T).sum()
    for _ in range(2):
        torch.testing.assert_close(functx.grad(f)(x), torch.func.grad(f)(x))
        torch.testing.assert_close(functx.vmap(f)(x[None].expand(2, 3, 4)), torch.func.vmap(f)(x[None].expand(2, 3, 4)))


def test_view_units_alias_as_the_aten_path_does():
    """A function whose result views an operand (x[None], x.t(), x[:, 1:], split, expand) is a
    unit whose wrapper has make_view's root, chain, version and torch's layout: writes
    through the view reach the base and the other views, writes into the base reach the view,
    under grad, vmap and vmap(grad), with bases that are themselves views or strided."""
    seen = []

    def f(x):
        y = x * 1.0
        a = y[None]                      # (1, 3, 4), strides (12, 4, 1)
        b = y.t()[:, 1:]                 # a view of a view (strided)
        e = a[0, 1:].unsqueeze(0).expand(2, 2, 4)
        b.mul_(2.0)                      # reaches y, a, e
        y[0] += 1.0                      # reaches a, b
        y[1:].sub_(0.5)                  # reaches a, b, e
        y.view(4, 3)[1].mul_(1.5)        # x.view(shape) (a special function) and reshape
        y.reshape(2, 6)[:, 5:].add_(0.25)
        c, d = torch.split(y, [1, 2])    # multi-output views (torch refuses writes through them)
        seen.append([tuple(v.stride()) for v in (a, b, c, d, e)] + [b.storage_offset(), d.storage_offset()])
        return (a * a).sum() + (b * e[0].t()).sum() + (d * c).sum() + torch.sin(e).sum()

    x = torch.randn(3, 4)
    xs = torch.randn(2, 3, 4)
    seen.clear()
    f(x)
    want_strides = seen[-1]
    for _ in range(2):
        _close(functx.grad(f)(x), torch.func.grad(f)(x))
        assert seen[-1] == want_strides
        _close(functx.vmap(f)(xs), torch.func.vmap(f)(xs))
        _close(functx.vmap(functx.grad(f))(xs), torch.func.vmap(torch.func.grad(f))(xs))
        _close(functx.jacrev(f)(x), torch.func.jacrev(f)(x))
    for name in ("__getitem__", "t", "split", "unsqueeze", "expand", "view", "reshape"):
        assert any(u is not function_units.UNCACHEABLE and u.views for u in _entries(name)), name


def test_view_units_check_the_base_layout():
    # the traced layout holds for bases with the traced strides; a base whose strides differ
    # (size-1 dims with odd strides, a transposed base) runs the usual path and gets torch's
    def f(x):
        return x[None].stride(), x.t()[None].stride(), x[:, None].storage_offset()
    for x in (torch.randn(3, 4), torch.randn(1, 4)[:, :], torch.randn(8, 4)[2:5]):
        strides = {}

        def g(x):
            strides["got"] = f(x)
            return x.sum()
        functx.grad(g)(x)
        functx.grad(g)(x)
        assert strides["got"] == f(x)
    odd = torch.randn(4, 1).t()          # (1, 4) with strides (1, 1)

    def h(x):
        strides["odd"] = x[None].stride()
        return x.sum()
    functx.grad(h)(odd)
    assert strides["odd"] == odd[None].stride()


def test_view_units_under_nested_levels():
    def f(x):
        y = torch.sin(x)
        a = y[None]
        b = y.t()[1:]
        b.mul_(2.0)
        c = y.view(-1)[2:5].unsqueeze(0)
        return (a * a).sum() + (c ** 3).sum() + (b.reshape(-1) * x.view(-1)[: b.numel()]).sum()
    x = torch.randn(3, 4, dtype=torch.float64)
    xs = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    for _ in range(2):
        _close(functx.hessian(f)(x), torch.func.hessian(f)(x))
        _close(functx.grad(lambda x: functx.grad(f)(x).sum())(x), torch.func.grad(lambda x: torch.func.grad(f)(x).sum())(x))
        _close(functx.vmap(functx.vmap(functx.grad(f)))(xs), torch.func.vmap(torch.func.vmap(torch.func.grad(f)))(xs))


def test_view_units_that_change_nothing():
    # x[:], x.view(x.shape), x.expand(x.shape), x[...]: the unit's output is its input value
    def f(x):
        y = x * 1.0
        a, b, c, d, e = y[:], y.view(y.shape), y.expand(y.shape), y.reshape(y.shape), y[...]
        a.mul_(2.0)
        b.add_(1.0)
        d.mul_(3.0)
        e.sub_(0.25)
        return (c * y).sum() + (a * b).sum() + torch.sin(e).sum()
    x, xs = torch.randn(3, 4), torch.randn(2, 3, 4)
    for _ in range(2):
        _close(functx.grad(f)(x), torch.func.grad(f)(x))
        _close(functx.vmap(f)(xs), torch.func.vmap(f)(xs))
        _close(functx.vmap(functx.grad(f))(xs), torch.func.vmap(torch.func.grad(f))(xs))
        _close(functx.jvp(f, (x,), (x,)), torch.func.jvp(f, (x,), (x,)))


def test_view_units_per_function_are_capped(monkeypatch):
    # x[i] for many values of i: past VIEW_BUILD_LIMIT builds, new indices take the usual path
    monkeypatch.setattr(function_units, "VIEW_BUILD_LIMIT", 40)
    x = torch.randn(100, 3)
    function_units.CACHE.clear()

    def f(x):
        return sum((x[i] * i).sum() for i in range(100))
    for _ in range(2):
        _close(functx.grad(f)(x), torch.func.grad(f)(x))
    units = [u for u in _entries("__getitem__") if u is not function_units.UNCACHEABLE]
    assert 0 < len(units) <= 40


# ---------------------------------------------------------------- write units

def _rnn(W, xs):
    h = xs.new_zeros(xs.shape[1:])
    out = xs.new_zeros(xs.shape)
    first = out[0]              # a view taken before the writes: it sees them
    for t in range(xs.shape[0]):
        h = torch.tanh(h @ W + xs[t])
        out[t] = h
    acc = torch.zeros_like(h)
    acc.add_(h).mul_(2.0)       # in-place methods return their operand
    acc.copy_(h * 3)
    return out.pow(2).mean() + first.sum() + acc.sum()


def test_writes_into_roots_made_inside_are_units_and_match_torch_func():
    g = torch.Generator().manual_seed(0)
    W, xs = torch.randn(4, 4, generator=g) * 0.5, torch.randn(5, 3, 4, generator=g)
    function_units.CACHE.clear()
    for _ in range(3):      # op by op, the combined unit's build, the combined unit
        _close(functx.grad(_rnn)(W, xs), torch.func.grad(_rnn)(W, xs))
        _close(functx.vmap(functx.grad(_rnn), in_axes=(None, 0))(W, xs[None].expand(2, -1, -1, -1) * 1.5),
               torch.func.vmap(torch.func.grad(_rnn), in_dims=(None, 0))(W, xs[None].expand(2, -1, -1, -1) * 1.5))
        _close(functx.jvp(_rnn, (W, xs), (W.cos(), xs.sin()))[1],
               torch.func.jvp(_rnn, (W, xs), (W.cos(), xs.sin()))[1])
        _close(functx.hessian(_rnn)(W, xs), torch.func.hessian(_rnn)(W, xs))
    writes = [u for name in ("__setitem__", "add_", "mul_", "copy_") for u in _entries(name)
              if u is not function_units.UNCACHEABLE]
    assert {u.outputs for u in writes} == {"write", "write, returns it"}


def test_writes_the_unit_declines_are_exact():
    x = torch.randn(4, 3, dtype=torch.float64)

    def into_a_view(x):          # a view is written: the usual path scatters into its root
        y = x * 2
        y[:, 0].mul_(3)
        return y

    def into_an_argument(x):     # an argument's memory: the usual path (vmap writes it back)
        x[0] = x[1] * 2
        return x * 1

    def under_no_grad(x):        # the root keeps its derivative (the usual path)
        y = x * 1
        with torch.no_grad():
            y[0] = 5.0
        return y * y
    for f in (into_a_view, under_no_grad):
        for _ in range(2):
            _close(functx.jacrev(f)(x), torch.func.jacrev(f)(x))
    for _ in range(2):
        xs, ys = x.clone(), x.clone()
        _close(functx.vmap(into_an_argument)(xs), torch.func.vmap(into_an_argument)(ys))
        _close(xs, ys)


def test_write_units_per_function_are_capped(monkeypatch):
    # out[i] = v keys a unit by i: a loop over many rows builds at most VIEW_BUILD_LIMIT of them
    monkeypatch.setattr(function_units, "VIEW_BUILD_LIMIT", 40)
    def f(x):
        out = x.new_zeros(100, 3)
        for i in range(100):
            out[i] = x * i
        return out.sum()
    x = torch.randn(3)
    function_units.CACHE.clear()
    for _ in range(2):
        _close(functx.grad(f)(x), torch.func.grad(f)(x))
    built = [u for u in _entries("__setitem__") if u is not function_units.UNCACHEABLE]
    assert 0 < len(built) <= 40


def test_a_result_viewing_a_value_the_function_made_is_fresh():
    # torch.stack returns a view of the cat it made: nothing else holds that cat, so the unit
    # hands the result out as a fresh tensor (it took the usual path on every call)
    xs = [torch.randn(3, 4, dtype=torch.float64) for _ in range(5)]

    def f(*xs):
        s = torch.stack([x * 2 for x in xs])
        s[1] = s[0] * 3          # writes into it reach nothing else, as in torch
        return s.sum(0).pow(2).sum() + s.stride()[0]
    function_units.CACHE.clear()
    for _ in range(3):
        _close(functx.grad(f, argnums=(0, 1))(*xs), torch.func.grad(f, argnums=(0, 1))(*xs))
    assert [u for u in _entries("stack") if u is not function_units.UNCACHEABLE]


def test_units_serve_parameters_that_require_grad_and_torch_autograd_records_them():
    # functx.grad(loss)(dict(model.named_parameters())): the parameters require grad, so units
    # declined them (every op then ran primitive by primitive: 0.37x of torch.func); a level's
    # rule now runs with torch's autograd on for them, and a gradient penalty through the
    # gradients (torch.autograd.grad of grad's output) is torch.func's
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    x = torch.randn(5, 4)
    params = dict(model.named_parameters())

    def loss(p, x):
        h = torch.func.functional_call(model, p, (x,))
        return (h.pow(2) + h.detach()).mean()
    function_units.CACHE.clear()
    for _ in range(3):
        for tf in (functx, torch.func):
            g = tf.grad(loss)(params, x)
            per = tf.vmap(tf.grad(loss), in_dims=(None, 0))(params, x[:, None])
            _, t = tf.jvp(lambda w: loss(dict(params, **{"0.weight": w}), x), (params["0.weight"],),
                          (torch.ones(8, 4),))
            penalty = sum(v.pow(2).sum() for v in g.values()) + sum(v.sum() for v in per.values()) + t
            got = torch.autograd.grad(penalty, list(params.values()))
            if tf is functx:
                mine = got
        for a, b in zip(mine, got):
            _close(a, b)
    assert [u for u in _entries("linear") if u is not function_units.UNCACHEABLE]


def _count_builds(monkeypatch):
    built = []
    build = function_units._build

    def counting(func, *args):
        built.append(getattr(func, "__name__", str(func)))
        return build(func, *args)
    monkeypatch.setattr(function_units, "_build", counting)
    return built


def test_strided_operands_are_units_laid_out_as_torch_lays_them_out(monkeypatch):
    # attention code as torch.nn.functional writes it: heads split by views of a transposed
    # value, SDPA on strided queries (torch's result keeps the query's layout), permute + reshape,
    # a linear of the result. These took the ATen path op by op; each is now a unit keyed by its
    # operands' strides, and the reported layouts stay torch's
    torch.manual_seed(0)
    B, L, E, H = 2, 5, 8, 2
    W, Wo, x = torch.randn(E, 3 * E) / 3, torch.randn(E, E) / 3, torch.randn(B, L, E)
    seen = {}

    def attn(x, W):
        qkv = (x @ W).unflatten(-1, (3, H, E // H)).permute(2, 0, 3, 1, 4)     # (3, B, H, L, D), strided
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q.transpose(1, 2).contiguous().transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v)
        kk = k.reshape(-1, L, E // H).view(k.shape)
        seen["strides"] = (q.stride(), o.stride(), kk.stride())
        o = o.transpose(1, 2).reshape(x.shape)
        return torch.tanh(F.linear(o, Wo.to(o.dtype)) + kk.sum(1).mean()).pow(2).sum()

    def want_strides():
        attn(x, W)
        return seen["strides"]
    eager = want_strides()
    built = _count_builds(monkeypatch)
    function_units.CACHE.clear()
    for i in range(3):
        _close(functx.grad(attn, argnums=(0, 1))(x, W), torch.func.grad(attn, argnums=(0, 1))(x, W))
        assert seen["strides"] == eager
        _close(functx.vmap(functx.grad(attn), in_dims=(0, None))(x[:, None], W),
               torch.func.vmap(torch.func.grad(attn), in_dims=(0, None))(x[:, None], W))
        if i == 0:
            n = len(built)
    assert len(built) == n, "units were built again on later calls"
    attention = [u for u in _entries("attention") if u is not function_units.UNCACHEABLE and u.views]
    assert attention
    # its jvp rule splits primal and tangent kernels (the joint kernel's primal outputs would read
    # tangents, and the rule, with every batch holding it, would run op by op)
    assert attention[0].rules and all(r is not function_units.UNCACHEABLE for r in attention[0].rules.values())
    assert [u for u in _entries("view") if u is not function_units.UNCACHEABLE and u.views]
    # forward mode: torch.func.jvp has no rule for CPU flash attention; float64 differences decide
    xd, Wd, t = x.double(), W.double(), torch.randn(B, L, E, dtype=torch.float64)
    eps = 1e-6
    fd = (attn(xd + eps * t, Wd) - attn(xd - eps * t, Wd)) / (2 * eps)
    torch.testing.assert_close(functx.jvp(lambda x: attn(x, Wd), (xd,), (t,))[1], fd, rtol=1e-6, atol=1e-6)


def test_property_reads_are_cached_once(monkeypatch):
    # x.mT, x.T: torch passes a new T.__get__ object on every read; a unit keyed by its identity
    # was built again on every call (~1.5 ms each) until the per-function cap
    built = _count_builds(monkeypatch)
    W = torch.randn(4, 3)

    def f(x):
        return (x.mT @ W.T.mT).tanh().sum() + x.T.sum()
    x = torch.randn(4, 2)
    for i in range(4):
        _close(functx.grad(f)(x), torch.func.grad(f)(x))
        if i == 0:
            n = len(built)
    assert len(built) == n


def test_a_decomposition_reading_its_operands_layout_is_still_a_unit():
    # torch's native_group_norm decomposition (what bfloat16 group_norm runs; float32/float64
    # run prims/fused_norm.py on eager levels) calls as_strided on the wrapper's own reported
    # layout (relative to itself, which the unit's operand reports): group_norm stays one unit
    # (a rule that refused every layout read ran it op by op: a conv net's grad 0.5x of torch.func)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 5e-2)):
        x = torch.randn(2, 8, 5, 5, dtype=dtype)
        w, b = torch.randn(8, dtype=dtype), torch.randn(8, dtype=dtype)

        def f(x, w, b):
            return F.silu(F.group_norm(x, 4, w, b)).float().pow(2).sum()
        function_units.CACHE.clear()
        for _ in range(2):
            for mine, theirs in zip(functx.grad(f, argnums=(0, 1, 2))(x, w, b), torch.func.grad(f, argnums=(0, 1, 2))(x, w, b)):
                torch.testing.assert_close(mine.float(), theirs.float(), rtol=tol, atol=tol)
        assert [u for u in _entries("group_norm") if u is not function_units.UNCACHEABLE]


def test_a_function_returning_none_entries_is_one_unit():
    # F.multi_head_attention_forward returns (output, None) without attention weights: one unit
    # (WithNones puts the None back), computing what torch.func computes; with weights too
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    params = dict(mha.named_parameters())
    x = torch.randn(3, 4, 8)

    def f(p, need_weights):
        out, w = torch.func.functional_call(mha, p, (x, x, x), dict(need_weights=need_weights))
        assert (w is None) == (not need_weights)
        return out.pow(2).mean() + (0 if w is None else w.pow(2).sum())

    function_units.CACHE.clear()
    for need_weights in (False, True):
        for _ in range(2):
            got = functx.grad(f)(params, need_weights)
            want = torch.func.grad(f)(params, need_weights)
            for name in params:
                _close(got[name], want[name])
    units = _entries("multi_head_attention_forward")
    assert any(isinstance(u.outputs, function_units.WithNones) for u in units if u is not function_units.UNCACHEABLE)


@pytest.mark.parametrize("p,training", [(0.0, True), (0.5, False), (0, True)])
def test_dropout_that_samples_nothing_returns_its_input(p, training):
    # as torch's kernel does (F.dropout(x, 0.0) is x), under every transform and jit
    def f(x):
        y = F.dropout(x, p, training)
        assert y is x
        return (y * y).sum()

    x = torch.randn(4, 3)
    _close(functx.grad(f)(x), 2 * x)
    _close(functx.vmap(functx.grad(f))(x), 2 * x)
    _close(functx.jit(functx.grad(f))(x), 2 * x)
    _close(functx.jvp(f, (x,), (torch.ones_like(x),))[1], (2 * x).sum())


def test_dropout_that_samples_still_draws():
    x = torch.ones(1000)
    y = functx.vmap(lambda x: F.dropout(x, 0.5, True), randomness="different")(x[None])[0]
    assert set(y.unique().tolist()) == {0.0, 2.0}
    g = functx.grad(lambda x: F.dropout(x, 0.5, True).sum())(x)
    assert set(g.unique().tolist()) == {0.0, 2.0}
    with pytest.raises(Exception, match="randomness"):
        functx.vmap(lambda x: F.dropout(x, 0.5, True))(x[None])


def test_wrappers_are_made_with_positional_arguments():
    # (frontend/tensor._positional_wrappers_work: ~0.7 us per traced op's result). On this
    # torch the order holds, so wrappers are made without the keyword shim, and they report
    # the dtype, device and strides they were made with
    assert tensor_module._make_wrapper is torch.Tensor._make_wrapper_subclass
    assert function_units._make_wrapper is torch.Tensor._make_wrapper_subclass
    x = torch.randn(3, 4, dtype=torch.float64)
    seen = []

    def f(x):
        y = torch.sin(x).t()
        seen.append((y.dtype, y.device, y.shape, y.stride()))
        return y.sum()
    functx.grad(f)(x)
    assert seen == [(torch.float64, x.device, torch.Size([4, 3]), (1, 4))]


_MHA_CONFIGS = [  # (module kwargs, call options): F.multi_head_attention_forward as one unit, each path
    (dict(batch_first=True), dict(self=True)),
    (dict(batch_first=False), dict(kpm=True)),
    (dict(batch_first=True, bias=False, add_bias_kv=True), dict(attn=True)),
    (dict(batch_first=False, add_zero_attn=True, kdim=6, vdim=6), dict(weights=True)),
    (dict(batch_first=True, kdim=6, vdim=6), dict(weights=True, avg=False, kpm=True)),
    (dict(batch_first=True), dict(self=True, causal=True)),
    (dict(batch_first=False, add_bias_kv=True, add_zero_attn=True), dict(self=True, weights=True)),
]


@pytest.mark.parametrize("transform", ["grad", "vmap", "jvp"])
@pytest.mark.parametrize("cfg,opts", _MHA_CONFIGS)
def test_multi_head_attention_units_match_oracles(cfg, opts, transform):
    # grad and vmap against torch.func; jvp against float64 central differences (torch.func has
    # no forward mode for the flash kernel its SDPA takes on the CPU)
    torch.manual_seed(0)
    kw = dict(cfg)
    bf = kw.pop("batch_first")
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=bf, **kw).double()
    P = dict(mha.named_parameters())
    L, S, B, kdim = 4, 5, 3, kw.get("kdim") or 8
    shape = lambda n, d: (B, n, d) if bf else (n, B, d)  # noqa: E731
    q, k, v = (torch.randn(shape(L, 8), dtype=torch.float64), torch.randn(shape(S, kdim), dtype=torch.float64),
               torch.randn(shape(S, kdim), dtype=torch.float64))
    if opts.get("self"):
        k = v = q
        S = L
    call = dict(need_weights=opts.get("weights", False), average_attn_weights=opts.get("avg", True))
    if opts.get("kpm"):
        call["key_padding_mask"] = torch.arange(S).expand(B, S) == S - 1
    if opts.get("attn"):
        call["attn_mask"] = torch.randn(L, S, dtype=torch.float64)
    if opts.get("causal"):
        call["attn_mask"] = torch.nn.Transformer.generate_square_subsequent_mask(L, dtype=torch.float64)
        call["is_causal"] = True

    def f(p, q):
        out, w = torch.func.functional_call(mha, p, (q, k if k is not q else q, v if v is not q else q), call)
        return out.pow(2).sum() + (0 if w is None else w.pow(2).sum())

    if transform == "grad":
        got, want = functx.grad(f)(P, q), torch.func.grad(f)(P, q)
        for name in P:
            torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-9)
    elif transform == "vmap":
        qs = torch.stack([q, 2 * q])
        torch.testing.assert_close(functx.vmap(f, in_dims=(None, 0))(P, qs), torch.func.vmap(f, in_dims=(None, 0))(P, qs),
                                   rtol=1e-9, atol=1e-9)
    else:
        t = {n: torch.randn_like(p) for n, p in P.items()}
        got = functx.jvp(lambda p: f(p, q), (P,), (t,))[1]
        eps = 1e-6
        with torch.no_grad():
            fd = (f({n: P[n] + eps * t[n] for n in P}, q) - f({n: P[n] - eps * t[n] for n in P}, q)) / (2 * eps)
        assert abs(got.item() - fd.item()) <= 1e-6 * max(1.0, abs(fd.item()))


@pytest.mark.parametrize("batch_first", [True, False])
def test_self_attention_projects_q_k_v_with_one_packed_product(batch_first):
    """F.multi_head_attention_forward projects q, k and v with one (3E, E) product when `query
    is key is value` (the body branches on identity). Its unit was traced on one fresh wrapper
    per operand, so self-attention always took the separate-projections path: three products
    forward, and backward three more plus pads summed into the packed gradient. Now a Python
    function's unit keys on which arguments are the same tensor and traces them as one; a
    later call with distinct q, k, v of the same shapes gets its own unit (not the packed one,
    which would read q for k and v)."""
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=batch_first).double()
    P = dict(mha.named_parameters())
    x, k, v = (torch.randn(3, 4, 8, dtype=torch.float64) for _ in range(3))

    def f(p, q, k, v):
        return torch.func.functional_call(mha, p, (q, k, v), dict(need_weights=False))[0].pow(2).sum()
    function_units.CACHE.clear()
    for args in ((x, x, x), (x, k, v), (x, k, k)):
        got, want = functx.grad(f)(P, *args), torch.func.grad(f)(P, *args)
        for name in P:
            torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-10)
    units = _entries("multi_head_attention_forward")
    assert len(units) == 3 and all(u is not function_units.UNCACHEABLE for u in units)
    products = sorted(sum(e.prim.name == "dot_general" for e in u.graph_eqns) for u in units)
    # self-attention: one in-projection; key is value: q's and a packed (k, v) one; distinct: three
    assert products[1] - products[0] == 1 and products[2] - products[1] == 1, products


@pytest.mark.parametrize("how", ["linear", "matmul", "@", "Tensor.matmul"])
def test_a_transposed_batch_first_input_folds_into_one_matrix_product_under_grad(how):
    """torch's matmul of an (L, N, E) operand whose leading dims are not one dim in memory (a
    batch-first input transposed) with a matrix folds them into one (L*N, E) product when an
    operand requires grad, and broadcasts the matrix over a bmm otherwise. Wrappers never
    report requires_grad to C++, so under grad functx took the bmm path: the weight's
    gradient was a batch of products and a sum over them. Under a reverse level these now fold
    as torch does under autograd (one product each way); values as torch.func's."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 6, dtype=torch.float64, generator=g)
    W, b = torch.randn(4, 6, dtype=torch.float64, generator=g), torch.randn(4, dtype=torch.float64, generator=g)
    apply = {"linear": lambda h, W: F.linear(h, W, b), "matmul": lambda h, W: torch.matmul(h, W.t()) + b,
             "@": lambda h, W: h @ W.t() + b, "Tensor.matmul": lambda h, W: h.matmul(W.t()) + b}[how]

    def f(W, x):
        return apply(x.transpose(0, 1), W).tanh().sum()
    function_units.CACHE.clear()
    for _ in range(2):
        torch.testing.assert_close(functx.grad(f)(W, x), torch.func.grad(f)(W, x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(functx.grad(f, argnums=1)(W, x), torch.func.grad(f, argnums=1)(W, x))
    torch.testing.assert_close(functx.vmap(functx.grad(f), in_dims=(None, 0))(W, torch.stack([x, -x])),
                               torch.func.vmap(torch.func.grad(f), in_dims=(None, 0))(W, torch.stack([x, -x])))
    torch.testing.assert_close(functx.jit(functx.grad(f))(W, x), torch.func.grad(f)(W, x))
    name = "linear" if how == "linear" else "matmul"
    dots = [e for u in _entries(name) if u is not function_units.UNCACHEABLE for e in u.graph_eqns
            if e.prim.name == "dot_general"]
    assert dots and not any(e.params["dimension_numbers"][1][0] for e in dots)     # no batch dims
    # a 1-D weight (F.linear's vector form) is no matrix: torch's own path, as torch.func
    v = torch.randn(6, dtype=torch.float64, generator=g)
    h = lambda v: F.linear(x.transpose(0, 1), v).sin().sum()      # noqa: E731
    torch.testing.assert_close(functx.grad(h)(v), torch.func.grad(h)(v))
    # where torch raises, functx raises (the fold takes only what torch accepts)
    with pytest.raises(RuntimeError):
        functx.grad(lambda W: F.linear(x.transpose(0, 1), W.float()).sum())(W)
    with pytest.raises(RuntimeError):
        functx.grad(lambda W: (x.transpose(0, 1) @ W).sum())(W)


@pytest.mark.parametrize("kind", ["GRU", "LSTM", "RNN"])
@pytest.mark.parametrize("batch_first,bidirectional,layers", [(True, False, 1), (False, True, 2)])
def test_a_whole_rnn_is_one_unit(kind, batch_first, bidirectional, layers):
    """nn.GRU / LSTM / RNN run torch._decomp's out-of-place loop (composites.py); under an eager
    level that loop was op by op, each step's ~12 torch calls a unit (grad of a 10-step GRU at
    0.6x of torch.func's C++ loop). The whole call is now one unit (composites.UNITS_FIRST),
    traced through the composite; a batch-first output (a transposed view of the stacked
    steps, which nothing else holds) is a result laid out as torch lays it out."""
    torch.manual_seed(0)
    m = getattr(torch.nn, kind)(5, 6, num_layers=layers, batch_first=batch_first, bidirectional=bidirectional).double()
    P = dict(m.named_parameters())
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    strides = []

    def f(p, x):
        out, _ = torch.func.functional_call(m, p, (x,))
        strides.append(out.stride())
        return out.tanh().pow(2).sum()
    function_units.CACHE.clear()
    for _ in range(2):
        got, want = functx.grad(f)(P, x), torch.func.grad(f)(P, x)
        for name in P:
            torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-12)
    # (torch.func.vmap raises here: ATen's C++ loop writes batched steps into its unbatched
    # zero state; the oracle is a Python loop)
    xs = torch.stack([x, -x])
    torch.testing.assert_close(functx.vmap(functx.grad(f, argnums=1), in_dims=(None, 0))(P, xs),
                               torch.stack([torch.func.grad(f, argnums=1)(P, xi) for xi in xs]))
    assert strides[0] == strides[1] == strides[2]        # functx's wrapper reports torch's layout
    units = _entries(kind.lower() if kind != "RNN" else "rnn_tanh")
    assert units and all(u is not function_units.UNCACHEABLE for u in units)
