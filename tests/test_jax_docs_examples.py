"""Examples ported from JAX's documentation (the Autodiff Cookbook, "Custom derivative rules",
the vmap and lax control-flow docs), run eagerly and under functx.jit, against float64
oracles (torch.func, finite differences, Python loops, the values the docs derive by hand).
Each test also pins a divergence a researcher porting that code hit, fixed in functx."""
from functools import partial

import pytest
import torch

import functx

F64 = torch.float64
MODES = ["eager", "jit"]


def _maybe_jit(f, mode):
    return functx.jit(f) if mode == "jit" else f


def _close(got, want):
    gl, gt = functx.tree_flatten(got)
    wl, wt = functx.tree_flatten(want)
    assert gt == wt, (gt, wt)
    for g, w in zip(gl, wl):
        assert g.shape == w.shape and torch.allclose(g, w, atol=1e-10), (g, w)


# ---------------------------------------------------------------- custom derivative rules

@functx.custom_jvp
def _scaled(x, scale=2.0):
    return x * scale


@_scaled.defjvp
def _scaled_jvp(primals, tangents):
    x, scale = primals                 # JAX: defaults are resolved into the primals
    t, _ = tangents
    return x * scale, t * scale * 100.0


@functx.custom_vjp
def _scaled_vjp(x, scale=2.0):
    return x * scale


_scaled_vjp.defvjp(lambda x, scale=2.0: (x * scale, scale), lambda s, g: (g * s * 100.0, None))


@pytest.mark.parametrize("mode", MODES)
def test_custom_rules_see_default_arguments_as_primals(mode):
    # Was: the rule got only the arguments passed (`x, scale = primals` failed; custom_vjp's
    # bwd returning a cotangent per parameter was "the wrong length").
    x = torch.tensor(1.0, dtype=F64)
    _close(_maybe_jit(functx.grad(lambda x: _scaled(x)), mode)(x), torch.tensor(200.0, dtype=F64))
    _close(_maybe_jit(functx.grad(lambda x: _scaled(x, scale=3.0)), mode)(x), torch.tensor(300.0, dtype=F64))
    _close(_maybe_jit(functx.grad(lambda x: _scaled_vjp(x)), mode)(x), torch.tensor(200.0, dtype=F64))
    _close(_maybe_jit(functx.grad(lambda x: _scaled_vjp(x, scale=3.0)), mode)(x), torch.tensor(300.0, dtype=F64))


def test_custom_rule_keyword_only_argument_raises_naming_it():
    # Was silently wrong: the keyword-only argument was dropped, fun ran with its default
    # (ko(x, scale=3.0) returned 2 * x). JAX raises: the rules take positional arguments.
    @functx.custom_jvp
    def ko(x, *, scale=2.0):
        return x * scale
    ko.defjvp(lambda p, t: (ko(*p), t[0]))
    assert torch.equal(ko(torch.tensor(1.0)), torch.tensor(2.0))      # not passed: fun's default
    with pytest.raises(TypeError, match=r"ko.*\['scale'\].*positions"):
        ko(torch.tensor(1.0), scale=3.0)


@functx.custom_vjp
def _pair_product(d, z):
    return d["a"] * d["b"] + z


_pair_product.defvjp(lambda d, z: (_pair_product(d, z), d),
                     lambda d, g: ({"a": g * d["b"], "b": None}, g))   # None: a zero leaf


@pytest.mark.parametrize("mode", MODES)
def test_custom_vjp_bwd_none_for_part_of_a_pytree_argument(mode):
    # Was: TypeError "bwd's cotangent 0 has structure {'a': *, 'b': None}"; JAX takes None
    # as a zero for any subtree of an argument.
    d = {"a": torch.randn(3, dtype=F64), "b": torch.randn(3, dtype=F64)}
    z = torch.randn(3, dtype=F64)
    g = _maybe_jit(functx.grad(lambda d, z: _pair_product(d, z).sum(), (0, 1)), mode)(d, z)
    _close(g, ({"a": d["b"], "b": torch.zeros(3, dtype=F64)}, torch.ones(3, dtype=F64)))
    bad = functx.custom_vjp(lambda d, z: d["a"] * d["b"] + z)
    bad.defvjp(lambda d, z: (bad(d, z), None), lambda r, g: (g, g))     # a leaf for a dict
    with pytest.raises(TypeError, match="cotangent 0 has a leaf where the argument has the subtree"):
        functx.grad(lambda d, z: bad(d, z).sum())(d, z)


@pytest.mark.parametrize("mode", MODES)
def test_custom_jvp_nondiff_argument_traced_by_jit_or_vmap(mode):
    # `jit(grad(power))(x, 3)`: jit traces the Python int, and custom_jvp raised "argument 1
    # is in nondiff_argnums but holds a traced tensor". JAX's custom_jvp takes traced nondiff
    # arguments (under stop_gradient); custom_vjp refuses them, as JAX's does.
    @partial(functx.custom_jvp, nondiff_argnums=(1,))
    def power(x, n):
        return x ** n
    power.defjvp(lambda n, p, t: (p[0] ** n, 10 * n * p[0] ** (n - 1) * t[0]))   # x10: the rule ran
    x = torch.tensor(2.0, dtype=F64)
    _close(_maybe_jit(functx.grad(power), mode)(x, 3), torch.tensor(120.0, dtype=F64))
    xs, ns = torch.tensor([2.0, 3.0], dtype=F64), torch.tensor([3.0, 2.0], dtype=F64)
    _close(_maybe_jit(functx.vmap(functx.grad(power)), mode)(xs, ns), torch.tensor([120.0, 60.0], dtype=F64))
    g = _maybe_jit(functx.grad(power, (0, 1)), mode)(x, torch.tensor(3.0, dtype=F64))
    _close(g, (torch.tensor(120.0, dtype=F64), torch.tensor(0.0, dtype=F64)))     # n: stop_gradient

    @partial(functx.custom_vjp, nondiff_argnums=(1,))
    def vpower(x, n):
        return x ** n
    vpower.defvjp(lambda x, n: (x ** n, x), lambda n, x, g: (n * x ** (n - 1) * g,))
    with pytest.raises(TypeError, match="argument 1 is in nondiff_argnums.*static_argnums"):
        functx.jit(functx.grad(vpower))(x, 3)
    _close(functx.jit(functx.grad(vpower), static_argnums=1)(x, 3), torch.tensor(12.0, dtype=F64))


# ---------------------------------------------------------------- linear_transpose

@pytest.mark.parametrize("mode", MODES)
def test_linear_transpose_of_a_nonlinear_function_raises(mode):
    # Was silently wrong: linear_transpose transposes the derivative at zero, so for x ** 2 it
    # returned zeros and for sin the identity. JAX raises (no transpose rule for those ops).
    x = torch.randn(3, dtype=F64)
    for f, op in [(lambda x: x ** 2, "input itself"), (torch.sin, "cos"), (torch.relu, ""),
                  (lambda x: functx.scan(lambda c, v: (c + v * v, c), x[0], x)[1], "")]:
        with pytest.raises(TypeError, match=f"linear_transpose: f is not linear.*{op}"):
            _maybe_jit(lambda ct: functx.linear_transpose(f, x)(ct), mode)(x)
    # linear (and affine, as in JAX) functions transpose as before; from the JAX docs:
    t = functx.linear_transpose(lambda x, y: 0.5 * x - 0.5 * y, torch.tensor(1.0, dtype=F64),
                                torch.tensor(1.0, dtype=F64))
    _close(_maybe_jit(t, mode)(torch.tensor(1.0, dtype=F64)),
           (torch.tensor(0.5, dtype=F64), torch.tensor(-0.5, dtype=F64)))
    M = torch.randn(4, 3, dtype=F64)
    c = torch.randn(4, dtype=F64)
    for f in [lambda v: M @ v + 1.0, lambda v: functx.scan(lambda s, r: (s + r, s * 2), v[0], M @ v)[1]]:
        want = functx.vjp(f, x)[1](c)
        _close(_maybe_jit(functx.linear_transpose(f, x), mode)(c), want)


# ---------------------------------------------------------------- lax control flow

@pytest.mark.parametrize("mode", MODES)
def test_loops_take_python_numbers_as_carries(mode):
    # The lax docs' `lax.while_loop(cond_fun, body_fun, 0)` / `lax.fori_loop(0, 10, body, 0)`
    # raised "init_val leaf 0 is a int; the carry must be tensors". JAX takes them as weak
    # values whose dtype follows the body (_promote_weak_typed_inputs).
    run = lambda f, *a: _maybe_jit(f, mode)(*a)
    assert torch.equal(run(lambda: functx.while_loop(lambda x: x < 10, lambda x: x + 1, 0)), torch.tensor(10))
    assert torch.equal(run(lambda: functx.fori_loop(0, 10, lambda i, x: x + i, 0)), torch.tensor(45))
    _close(run(lambda: functx.fori_loop(0, 3, lambda i, v: v + 0.5, 0)), torch.tensor(1.5))   # default dtype
    xs = torch.tensor([0.5, 0.7], dtype=F64)
    for remat in (False, "sqrt"):
        _close(run(lambda xs: functx.scan(lambda c, x: (c + x, c), 0, xs, remat=remat), xs),
               (torch.tensor(1.2, dtype=F64), torch.tensor([0.0, 0.5], dtype=F64)))
    # traced predicate (the while_loop primitive), and under vmap
    n = torch.tensor([4, 2])
    body = lambda v: (v[0] + 1, v[1] + 0.5)
    got = run(functx.vmap(lambda n: functx.while_loop(lambda v: v[0] < n, body, (0, 0))), n)
    assert torch.equal(got[0], n) and torch.equal(got[1], n / 2)
    g = run(functx.grad(lambda x: functx.scan(lambda c, _: (c + x * x, None), 0.0, None, length=3)[0]),
            torch.tensor(2.0, dtype=F64))
    _close(g, torch.tensor(12.0, dtype=F64))


# ---------------------------------------------------------------- vmap and named axes

@pytest.mark.parametrize("mode", MODES)
def test_collective_over_a_chunked_vmap_axis_raises(mode):
    # Was silently wrong: vmap(f, axis_name='i', chunk_size=2) ran f per chunk, so psum summed
    # only the chunk (x / psum(x) gave 1/3, 2/3, ... instead of x / 21).
    x = torch.arange(1.0, 7.0, dtype=F64)
    normalize = lambda v: v / functx.psum(v, "i")
    _close(_maybe_jit(functx.vmap(normalize, axis_name="i"), mode)(x), x / x.sum())
    for coll in (normalize, lambda v: functx.all_gather(v, "i"), lambda v: v * functx.axis_index("i")):
        with pytest.raises(functx.FunctxError, match="axis_name='i' runs in chunks.*drop chunk_size"):
            _maybe_jit(functx.vmap(coll, axis_name="i", chunk_size=2), mode)(x)
    # chunks without collectives, and collectives of an outer unchunked axis, still work
    _close(_maybe_jit(functx.vmap(lambda v: v * 2, axis_name="i", chunk_size=4), mode)(x), x * 2)
    inner = functx.vmap(lambda v: v / functx.psum(v, "rows"), chunk_size=2)
    m = x.reshape(2, 3)
    _close(_maybe_jit(functx.vmap(inner, in_axes=1, out_axes=1, axis_name="rows"), mode)(m), m / m.sum(1, keepdim=True))


def test_fori_loop_with_traced_bounds_under_grad_names_its_bounds():
    # Was: the while_loop's "needs max_steps=N" (an argument fori_loop does not take).
    f = functx.grad(lambda x, n: functx.fori_loop(0, n, lambda i, v: v * x, x))
    x = torch.tensor(2.0, dtype=F64)
    with pytest.raises(functx.FunctxError, match="fori_loop: reverse-mode.*static_argnums"):
        functx.jit(f)(x, torch.tensor(3))
    _close(functx.jit(f, static_argnums=1)(x, 3), torch.tensor(32.0, dtype=F64))


@pytest.mark.parametrize("mode", MODES)
def test_lax_map_batch_size(mode):
    # JAX's lax.map(f, xs, batch_size=b): was "unexpected keyword argument 'batch_size'".
    xs = torch.arange(7.0, dtype=F64)
    f = lambda x: {"a": x ** 2, "b": (x * 2).expand(2)}
    for b in (1, 3, 7, 10):
        got = _maybe_jit(lambda xs: functx.lax.map(f, xs, batch_size=b), mode)(xs)
        _close(got, {"a": xs ** 2, "b": (xs * 2)[:, None].expand(7, 2)})
        g = _maybe_jit(functx.grad(lambda xs: functx.lax.map(lambda x: x ** 3, xs, batch_size=b).sum()), mode)(xs)
        _close(g, 3 * xs ** 2)


def test_hessian_of_the_docs_custom_vjp_example():
    # The docs' f_fwd calls f itself, so forward-over-reverse (hessian) meets the custom_vjp
    # in forward mode and raises, as in JAX (jax-ml/jax#16049); the message said "hessian
    # works". It names jacrev(jacrev(f)), and fwd computing the output itself.
    @functx.custom_vjp
    def f(x, y):
        return torch.sin(x) * y

    def f_bwd(res, g):
        cos_x, sin_x, y = res
        return (cos_x * g * y, sin_x * g)
    f.defvjp(lambda x, y: (f(x, y), (torch.cos(x), torch.sin(x), y)), f_bwd)
    x, y = torch.tensor(0.7, dtype=F64), torch.tensor(1.3, dtype=F64)
    with pytest.raises(functx.FunctxError, match=r"jacrev\(jacrev\(f\)\).*without calling the custom_vjp"):
        functx.hessian(f)(x, y)
    _close(functx.jacrev(functx.jacrev(f))(x, y), -torch.sin(x) * y)
    f.defvjp(lambda x, y: (torch.sin(x) * y, (torch.cos(x), torch.sin(x), y)), f_bwd)
    _close(functx.hessian(f, (0, 1))(x, y), ((-torch.sin(x) * y, torch.cos(x)), (torch.cos(x), torch.zeros((), dtype=F64))))


# ---------------------------------------------------------------- the Autodiff Cookbook

@pytest.mark.parametrize("mode", MODES)
def test_python_float_leaves_of_a_differentiated_pytree(mode):
    # A Python float argument is differentiated as a 0-d tensor, and was under jit inside a
    # pytree too; eagerly a float in a pytree raised "expected tensors" (JAX differentiates it).
    w = torch.randn(3)
    params = {"w": w, "scale": 3.0}
    loss = lambda p: (p["w"] * p["scale"]).sum()
    g = _maybe_jit(functx.grad(loss), mode)(params)
    _close(g, {"scale": w.sum(), "w": torch.full((3,), 3.0)})
    _close(_maybe_jit(functx.jacrev(lambda p: p["w"] * p["scale"]), mode)(params),
           {"scale": w, "w": torch.eye(3) * 3.0})
    _close(_maybe_jit(functx.hessian(lambda p: p["scale"] ** 3), mode)({"scale": 2.0})["scale"]["scale"],
           torch.tensor(12.0))


def test_scan_length_from_a_jit_argument_names_it():
    # Was "length must be a non-negative int, got TracedTensor(...)"; now the
    # ConcretizationError that names argument 'n' and static_argnums.
    f = lambda x, n: functx.scan(lambda c, _: (c * 2, None), x, None, length=n)[0]
    x = torch.tensor(1.0, dtype=F64)
    with pytest.raises(functx.ConcretizationError, match="argument 'n'.*static_argnums"):
        functx.jit(f)(x, 3)
    _close(functx.jit(f, static_argnums=1)(x, 3), torch.tensor(8.0, dtype=F64))
    _close(f(x, torch.tensor(3)), torch.tensor(8.0, dtype=F64))      # a concrete tensor length


# ---------------------------------------------------------------- the examples, as ported

def _sigmoid(x):
    return 0.5 * (torch.tanh(x / 2) + 1)


_INPUTS = torch.tensor([[0.52, 1.12, 0.77], [0.88, -1.08, 0.15], [0.52, 0.06, -1.30], [0.74, -2.49, 1.39]],
                       dtype=F64)
_TARGETS = torch.tensor([True, True, False, True])


def _logreg_loss(W, b):
    preds = _sigmoid(_INPUTS @ W + b)
    label_probs = preds * _TARGETS + (1 - preds) * (1 - _TARGETS.to(F64))
    return -torch.sum(torch.log(label_probs))


@pytest.mark.parametrize("mode", MODES)
def test_cookbook_gradients_jacobians_hessians(mode):
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(3, generator=g, dtype=F64), torch.randn((), generator=g, dtype=F64)
    tw, tb = torch.func.grad(_logreg_loss, argnums=(0, 1))(W, b)
    _close(_maybe_jit(functx.grad(_logreg_loss, (0, 1)), mode)(W, b), (tw, tb))
    dict_loss = lambda p: _logreg_loss(p["W"], p["b"])
    _close(_maybe_jit(functx.grad(dict_loss), mode)({"W": W, "b": b}), {"W": tw, "b": tb})
    predict = lambda p, x: _sigmoid(x @ p["W"] + p["b"])
    want = torch.func.jacrev(predict)({"W": W, "b": b}, _INPUTS)
    for jac in (functx.jacfwd, functx.jacrev):
        _close(_maybe_jit(jac(predict), mode)({"W": W, "b": b}, _INPUTS), want)
    _close(_maybe_jit(functx.hessian(_logreg_loss, (0, 1)), mode)(W, b),
           torch.func.hessian(_logreg_loss, (0, 1))(W, b))
    tanh = lambda x: torch.tanh(x)
    x = torch.tensor(2.0, dtype=F64)
    t = torch.tanh(x)
    _close(_maybe_jit(functx.grad(functx.grad(functx.grad(tanh))), mode)(x),
           -2 * (1 - t ** 2) ** 2 + 4 * t ** 2 * (1 - t ** 2))


@pytest.mark.parametrize("mode", MODES)
def test_cookbook_hessian_vector_products_and_stop_gradient(mode):
    f = lambda X: torch.sum(torch.tanh(X) ** 2 * X.prod())
    g = torch.Generator().manual_seed(1)
    X, V = torch.randn(4, generator=g, dtype=F64), torch.randn(4, generator=g, dtype=F64)
    want = torch.func.hessian(f)(X) @ V
    hvps = {
        "grad of grad": lambda X, V: functx.grad(lambda x: torch.vdot(functx.grad(f)(x), V))(X),
        "fwd over rev": lambda X, V: functx.jvp(functx.grad(f), (X,), (V,))[1],
        "rev over fwd": lambda X, V: functx.grad(lambda x: functx.jvp(f, (x,), (V,))[1])(X),
        "rev over rev": lambda X, V: functx.vjp(functx.grad(f), X)[1](V)[0],
        "linearize": lambda X, V: functx.linearize(functx.grad(f), X)[1](V),
    }
    for name, hvp in hvps.items():
        _close(_maybe_jit(hvp, mode)(X, V), want)
    # TD(0) update with stop_gradient: the docs' values
    value_fn = lambda theta, s: torch.dot(theta, s)

    def td_loss(theta, s_tm1, r_t, s_t):
        target = r_t + value_fn(theta, s_t)
        return -0.5 * ((functx.stop_gradient(target) - value_fn(theta, s_tm1)) ** 2)
    args = [torch.tensor(v, dtype=F64) for v in ([0.1, -0.1, 0.0], [1.0, 2.0, -1.0], 1.0, [2.0, 1.0, 0.0])]
    _close(_maybe_jit(functx.grad(td_loss), mode)(*args), torch.tensor([1.2, 2.4, -1.2], dtype=F64))
    batched = _maybe_jit(functx.vmap(functx.grad(td_loss), in_axes=(None, 0, 0, 0)), mode)
    _close(batched(args[0], *[a.expand(3, *a.shape) for a in args[1:]]),
           torch.tensor([[1.2, 2.4, -1.2]] * 3, dtype=F64))
    straight_through = lambda x: x - functx.stop_gradient(x) + functx.stop_gradient(torch.round(x))
    _close(_maybe_jit(functx.grad(straight_through), mode)(torch.tensor(3.2, dtype=F64)),
           torch.tensor(1.0, dtype=F64))


@functx.custom_jvp
def _log1pexp(x):
    return torch.log(1.0 + torch.exp(x))


@_log1pexp.defjvp
def _log1pexp_jvp(primals, tangents):
    (x,), (x_dot,) = primals, tangents
    return _log1pexp(x), (1 - 1 / (1 + torch.exp(x))) * x_dot


@partial(functx.custom_vjp, nondiff_argnums=(0,))
def _fixed_point(f, a, x_guess):
    def cond_fun(carry):
        x_prev, x = carry
        return torch.abs(x_prev - x) > 1e-12

    def body_fun(carry):
        _, x = carry
        return x, f(a, x)
    return functx.while_loop(cond_fun, body_fun, (x_guess, f(a, x_guess)))[1]


def _fixed_point_fwd(f, a, x_init):
    x_star = _fixed_point(f, a, x_init)
    return x_star, (a, x_star)


def _rev_iter(f, packed, u):
    a, x_star, x_star_bar = packed
    _, vjp_x = functx.vjp(lambda x: f(a, x), x_star)
    return x_star_bar + vjp_x(u)[0]


def _fixed_point_rev(f, res, x_star_bar):
    a, x_star = res
    _, vjp_a = functx.vjp(lambda a: f(a, x_star), a)
    a_bar, = vjp_a(_fixed_point(partial(_rev_iter, f), (a, x_star, x_star_bar), x_star_bar))
    return a_bar, torch.zeros_like(x_star)


_fixed_point.defvjp(_fixed_point_fwd, _fixed_point_rev)


def _newton_sqrt(a):
    return _fixed_point(lambda a, x: 0.5 * (x + a / x), a, a)


@pytest.mark.parametrize("mode", MODES)
def test_custom_derivative_rules_docs(mode):
    x = torch.tensor([0.0, 1.0, 100.0], dtype=F64)
    _close(_maybe_jit(functx.vmap(functx.grad(_log1pexp)), mode)(x), torch.sigmoid(x))
    s = torch.sigmoid(torch.tensor(1.0, dtype=F64))
    _close(_maybe_jit(functx.grad(functx.grad(_log1pexp)), mode)(torch.tensor(1.0, dtype=F64)), s * (1 - s))
    assert torch.isnan(functx.grad(lambda x: torch.log(1.0 + torch.exp(x)))(torch.tensor(100.0))), \
        "the naive version is nan in float32, as in the docs"

    @functx.custom_jvp
    def f(x, y):
        return torch.sin(x) * y
    f.defjvps(lambda x_dot, out, x, y: torch.cos(x) * x_dot * y, lambda y_dot, out, x, y: torch.sin(x) * y_dot)
    a, b = torch.tensor(2.0, dtype=F64), torch.tensor(3.0, dtype=F64)
    _close(_maybe_jit(functx.grad(f, (0, 1)), mode)(a, b), (torch.cos(a) * b, torch.sin(a)))

    @functx.custom_vjp
    def clip_gradient(lo, hi, x):
        return x
    clip_gradient.defvjp(lambda lo, hi, x: (x, (lo, hi)), lambda res, g: (None, None, torch.clip(g, *res)))
    xs = torch.linspace(0.0, 10.0, 5, dtype=F64)
    got = _maybe_jit(functx.vmap(functx.grad(lambda x: clip_gradient(-0.75, 0.75, torch.sin(x)))), mode)(xs)
    _close(got, 0.75 * torch.cos(xs))        # the cotangent (1) is clipped, then the chain rule

    two = torch.tensor(2.0, dtype=F64)
    _close(_maybe_jit(_newton_sqrt, mode)(two), torch.sqrt(two))
    _close(_maybe_jit(functx.grad(_newton_sqrt), mode)(two), 0.5 / torch.sqrt(two))
    _close(_maybe_jit(functx.grad(functx.grad(_newton_sqrt)), mode)(two), -0.25 * two ** -1.5)
    v = torch.tensor([2.0, 3.0, 4.0], dtype=F64)
    _close(_maybe_jit(functx.vmap(functx.grad(_newton_sqrt)), mode)(v), 0.5 / torch.sqrt(v))


@pytest.mark.parametrize("mode", MODES)
def test_vmap_docs_axes_and_named_axes(mode):
    foo = lambda dct, x: dct["a"] + dct["b"] + x
    dct = {"a": 0.0, "b": torch.arange(5.0, dtype=F64)}
    _close(_maybe_jit(functx.vmap(foo, in_axes=({"a": None, "b": 0}, None)), mode)(dct, 1.0),
           torch.arange(1.0, 6.0, dtype=F64))
    xs = torch.arange(3.0, dtype=F64)
    got = _maybe_jit(functx.vmap(lambda x, y: (x + y, y * 2.0), in_axes=(0, None), out_axes=(0, None)), mode)(xs, 2.0)
    _close(got[0], xs + 2.0)
    assert float(got[1]) == 4.0     # eagerly the Python float itself (out_axes None), as torch.func
    m = torch.arange(6.0, dtype=F64).reshape(2, 3)
    for names, want in [("i", m * m.sum(0)), ("j", m * m.sum(1, keepdim=True)), (("i", "j"), m * m.sum())]:
        f = lambda x, names=names: x * functx.psum(x, names)
        _close(_maybe_jit(functx.vmap(functx.vmap(f, axis_name="j"), axis_name="i"), mode)(m), want)
    g = _maybe_jit(functx.vmap(lambda v: functx.all_gather(v, "i") * functx.axis_index("i"), axis_name="i"), mode)(xs)
    _close(g, xs.expand(3, 3) * torch.arange(3.0, dtype=F64)[:, None])
    mat, batched = torch.randn(2, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    _close(_maybe_jit(functx.vmap(torch.mv, in_axes=(None, 1), out_axes=-1), mode)(mat, batched.T), mat @ batched.T)


@pytest.mark.parametrize("mode", MODES)
def test_lax_control_flow_docs(mode):
    a = torch.arange(1.0, 6.0, dtype=F64)
    cumsum = lambda res, el: (res + el, res + el)
    _close(_maybe_jit(lambda a: functx.scan(cumsum, torch.tensor(0.0, dtype=F64), a, reverse=True), mode)(a),
           (a.sum(), a.flip(0).cumsum(0).flip(0)))
    fib = lambda c, _: ((c[1], c[0] + c[1]), c[0])
    got = _maybe_jit(lambda: functx.scan(fib, (torch.tensor(0), torch.tensor(1)), None, length=8), mode)()
    _close(got, ((torch.tensor(21), torch.tensor(34)), torch.tensor([0, 1, 1, 2, 3, 5, 8, 13])))
    powf = lambda x: functx.fori_loop(0, 5, lambda i, c: c * x, torch.tensor(1.0, dtype=F64))
    x = torch.tensor(1.5, dtype=F64)
    _close(_maybe_jit(functx.grad(functx.grad(powf)), mode)(x), 20 * x ** 3)
    branches = [lambda x: x + 1, lambda x: x * 2, lambda x: x ** 2]
    idx, three = torch.tensor([0, 1, 2, 5, -1]), torch.full((5,), 3.0, dtype=F64)
    _close(_maybe_jit(functx.vmap(lambda i, x: functx.switch(i, branches, x)), mode)(idx, three),
           torch.tensor([4.0, 6.0, 9.0, 9.0, 4.0], dtype=F64))
    safe_sqrt = functx.vmap(functx.grad(lambda x: functx.cond(x > 0, torch.sqrt, lambda x: x, x)))
    _close(_maybe_jit(safe_sqrt, mode)(torch.tensor([4.0, -1.0], dtype=F64)), torch.tensor([0.25, 1.0], dtype=F64))


@pytest.mark.parametrize("mode", MODES)
def test_cond_and_switch_take_python_number_operands(mode):
    # `lax.cond(x > 0, f, g, 3.0)`: under jit it raised "operand leaf 0 is a float" (eagerly
    # the branch got the float); JAX passes a weak 0-d array, functx now a 0-d tensor both ways.
    x = torch.tensor(2.0)
    got = _maybe_jit(lambda x: functx.cond(x > 0, lambda v: v * x, lambda v: -v, 3.0), mode)(x)
    _close(got, torch.tensor(6.0))
    got = _maybe_jit(lambda x: functx.switch((x > 0).long(), [lambda v: v * 2, lambda v: -v], 3), mode)(x)
    assert torch.equal(got, torch.tensor(-3))


@pytest.mark.parametrize("mode", MODES)
def test_python_number_outputs_of_branches_and_scan_bodies(mode):
    # cond(p, lambda: 1., lambda: 2.) and a scan body returning a Python number as y: under jit
    # "output leaf 0 is a float; return tensors" (eagerly cond returned the float); JAX
    # returns arrays.
    got = _maybe_jit(functx.vmap(lambda p: functx.cond(p, lambda: 1.0, lambda: 2.0)), mode)(torch.tensor([False, True]))
    _close(got, torch.tensor([2.0, 1.0]))
    _close(_maybe_jit(lambda p: functx.cond(p, lambda: 1.0, lambda: 2.0), mode)(torch.tensor(True)), torch.tensor(1.0))
    xs = torch.arange(3.0, dtype=F64)
    c, (ys, twos) = _maybe_jit(lambda xs: functx.scan(lambda c, x: (c + x, (c, 2)), xs[0], xs), mode)(xs)
    _close((c, ys), (torch.tensor(3.0, dtype=F64), torch.tensor([0.0, 0.0, 1.0], dtype=F64)))
    assert torch.equal(twos, torch.tensor([2, 2, 2]))


@pytest.mark.parametrize("mode", MODES)
def test_all_gather_axis_and_tiled_and_pmin(mode):
    # JAX's lax.all_gather(x, name, axis=..., tiled=...) and lax.pmin: were a TypeError
    # (unexpected keyword) and a missing name.
    x = torch.arange(6.0, dtype=F64).reshape(3, 2)
    run = lambda f: _maybe_jit(functx.vmap(f, axis_name="i"), mode)(x)
    _close(run(lambda v: functx.all_gather(v, "i", axis=1)), x.T.expand(3, 2, 3))
    _close(run(lambda v: functx.all_gather(v, "i", axis=-1)), x.T.expand(3, 2, 3))
    _close(run(lambda v: functx.all_gather(v, "i", tiled=True)), x.reshape(6).expand(3, 6))
    _close(run(lambda v: functx.pmin(v, "i")), x.min(0).values.expand(3, 2))
    with pytest.raises(ValueError, match="tiled=True needs axis"):
        functx.vmap(lambda v: functx.all_gather(v, "i", axis=2, tiled=True), axis_name="i")(x)


@pytest.mark.parametrize("mode", MODES)
def test_gradient_checkpointing_docs(mode):
    # The jax.checkpoint docs' policies and arguments: dots_with_no_batch_dims_saveable,
    # save_from_both_policies, prevent_cse, static_argnums and keyword arguments were missing.
    g = lambda W, x: torch.sin(W @ x)
    f = lambda W1, W2, W3, x: g(W3, g(W2, g(W1, x)))
    gen = torch.Generator().manual_seed(0)
    Ws = [torch.randn(3, 3, generator=gen, dtype=F64) for _ in range(3)]
    x = torch.randn(3, generator=gen, dtype=F64)
    want = torch.func.grad(lambda *a: f(*a).sum(), argnums=(0, 1, 2))(*Ws, x)
    cp = functx.checkpoint_policies
    for policy in (None, cp.dots_with_no_batch_dims_saveable, cp.checkpoint_dots_with_no_batch_dims,
                   cp.save_from_both_policies(cp.dots_saveable, cp.save_only_these_names("a"))):
        f2 = functx.checkpoint(f, policy=policy, prevent_cse=False)
        _close(_maybe_jit(functx.grad(lambda *a: f2(*a).sum(), argnums=(0, 1, 2)), mode)(*Ws, x), want)

    def scaled(x, n, *, scale):
        return torch.sin(x * scale) * n
    h = functx.checkpoint(scaled, static_argnums=(1,))
    _close(_maybe_jit(functx.grad(lambda x: h(x, 2, scale=3.0).sum()), mode)(x), 6 * torch.cos(3 * x))
    with pytest.raises(TypeError, match="argument 1 is in static_argnums but holds a tensor"):
        h(x, x, scale=1.0)


# ---------------------------------------------------------------- custom rules inside staged bodies

@functx.custom_jvp
def _cube10(x):
    return x ** 3


_cube10.defjvp(lambda p, t: (p[0] ** 3, 30 * p[0] ** 2 * t[0]))      # 10x the true derivative


@functx.custom_vjp
def _sq10(x):
    return x ** 2


_sq10.defvjp(lambda x: (x ** 2, x), lambda x, g: (20 * x * g,))       # 10x the true derivative


@pytest.mark.parametrize("mode", MODES)
def test_custom_rules_inside_loop_bodies_checkpoint_and_jit_hessian(mode):
    # Was silently wrong: scan / fori_loop / checkpoint bodies, cond branches under jit and
    # jit(hessian(f)) staged f into a graph with the custom function's body inlined, and the
    # derivative of that graph differentiated x ** 3 instead of the rule (grad gave 12, not
    # 120). A graph staged under a differentiating trace now keeps the custom calls.
    x = torch.tensor(2.0, dtype=F64)
    for custom, want in [(_cube10, 120.0), (_sq10, 40.0)]:
        wrapped = {
            "scan": lambda x: functx.scan(lambda c, _: (custom(c), None), x, None, length=1)[0],
            "fori_loop": lambda x: functx.fori_loop(0, 1, lambda i, v: custom(v), x),
            "cond": lambda x: functx.cond(x > 0, custom, lambda v: v, x),
            "checkpoint": functx.checkpoint(lambda x: custom(x)),
            "remat binomial": lambda x: functx.scan(lambda c, _: (custom(c), None), x, None, length=2,
                                                    remat="binomial")[0] ** 0.5,
        }
        unrolled = functx.grad(lambda x: custom(custom(x)) ** 0.5)(x)       # (no staging: the rule)
        for name, f in wrapped.items():
            w = unrolled if name == "remat binomial" else torch.tensor(want, dtype=F64)
            _close(_maybe_jit(functx.grad(f), mode)(x), w)
    h = _maybe_jit(functx.hessian(lambda v: _cube10(v).sum()), mode)(torch.tensor([1.0, 2.0], dtype=F64))
    _close(h, torch.diag(torch.tensor([60.0, 120.0], dtype=F64)))
    xs = torch.tensor([1.0, 2.0], dtype=F64)
    lj = lambda c: functx.scan(lambda c, _: (_cube10(c) * 0.5, None), c, None, length=2)[0].sum()
    lu = lambda c: (_cube10(_cube10(c) * 0.5) * 0.5).sum()
    _close(_maybe_jit(functx.jacfwd(lj), mode)(xs), functx.jacfwd(lu)(xs))
    _close(_maybe_jit(functx.hessian(lj), mode)(xs), functx.hessian(lu)(xs))


@pytest.mark.parametrize("mode", MODES)
def test_custom_vjp_in_a_loop_inside_a_remat(mode):
    # The remat's backward pass linearizes the inner loop's forward-mode derivative at zero;
    # that fused scan carried custom_lin's value (which has no forward evaluation) as a dead
    # carry: it raised "forward mode" (silently the derivative of fun's body before that).
    # scan's DCE rule drops the dead carry now. Rule: d(_sq10(c) / 2)/dc = 10 c, twice: 50 x^3.
    x = torch.tensor(1.1, dtype=F64)
    inner = lambda c: functx.scan(lambda c, _: (_sq10(c) * 0.5, None), c, None, length=2)[0]
    _close(_maybe_jit(functx.grad(functx.checkpoint(inner)), mode)(x), 50 * x ** 3)


@pytest.mark.parametrize("mode", MODES)
def test_custom_vjp_in_cond_branches_under_vmap_of_grad(mode):
    # With custom calls kept in the branches, the transposed branches held a dead custom_lin
    # (the primal at zeros), which a batched predicate then ran: DCE'd now, as scan's.
    g = lambda x, p: functx.cond(p, lambda v: _sq10(v), lambda v: _sq10(v) * 2, x)
    x = torch.tensor([1.2, 1.2], dtype=F64)
    _close(_maybe_jit(functx.vmap(functx.grad(g)), mode)(x, torch.tensor([True, False])),
           torch.tensor([24.0, 48.0], dtype=F64))
    w = lambda x: functx.while_loop(lambda s: s[1] < 2, lambda s: (_sq10(s[0]) * 0.5, s[1] + 1),
                                    (x, torch.tensor(0)), max_steps=3)[0]
    want = functx.vmap(functx.grad(lambda x: _sq10(_sq10(x) * 0.5) * 0.5))(x)
    _close(_maybe_jit(functx.vmap(functx.grad(w)), mode)(x), want)
