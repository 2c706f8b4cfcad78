"""Differential checks of one function against eager PyTorch: functx.jit (each backend),
vmap against a Python loop, and vjp/jvp against torch.func, with float64 finite
differences deciding when the two disagree.

    functx.testing.check_against_torch(f, x, y)                       # jit(eager) == f
    functx.testing.check_against_torch(f, x, backends=("eager", "triton"), vmap_args=(xs,),
                                       derivatives=True)

Every check compares output pytree structure, dtypes and shapes exactly, integers and bools
exactly, floats to a tolerance with NaN in the same places, infinities equal and, where
both are zero, the same sign. Where eager PyTorch raises, functx must raise too.
"""
from __future__ import annotations

import warnings

import torch

from ..compile import jit as functx_jit
from ..core.trace import concrete
from ..frontend import unwrap
from ..transforms import jvp as functx_jvp, vjp as functx_vjp, vmap as functx_vmap
from ..tree_util import tree_flatten

__all__ = ["check_against_torch", "assert_same", "check_vmap", "check_derivatives"]

# (atol, rtol): fused or reordered reductions round differently from eager.
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-10, 1e-10),
              torch.float16: (1e-2, 1e-2), torch.bfloat16: (5e-2, 5e-2)}


def _plain(x):
    if isinstance(x, torch.Tensor) and type(x) is not torch.Tensor:
        x = concrete(unwrap(x))
    return x


def _call(fn, args):
    """fn's result, or the exception it raised (as a value)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args)
    except Exception as e:     # compared by the caller: both raise, or neither does
        return e


def assert_same(got, want, what="functx", signed_zeros=True, tolerances=None, computed_in=None):
    """got and want as pytrees: same structure, same dtypes and shapes, equal values (floats
    within tolerance, NaN where the other has NaN, equal infinities, -0.0 where the other has
    -0.0 when signed_zeros). computed_in: the lowest-precision float dtype the values went
    through, whose tolerance applies at least. Raises AssertionError saying which leaf
    differs and how."""
    g_leaves, g_tree = tree_flatten(got)
    w_leaves, w_tree = tree_flatten(want)
    if g_tree != w_tree:
        raise AssertionError(f"{what}: output structure {g_tree} != eager PyTorch's {w_tree}")
    for i, (g, w) in enumerate(zip(g_leaves, w_leaves)):
        g, w = _plain(g), _plain(w)
        if not isinstance(w, torch.Tensor):
            if g != w:
                raise AssertionError(f"{what}: output {i} is {g!r}, eager PyTorch gives {w!r}")
            continue
        if not isinstance(g, torch.Tensor):
            raise AssertionError(f"{what}: output {i} is {type(g).__name__}, eager PyTorch gives a tensor")
        if g.dtype != w.dtype or g.shape != w.shape:
            raise AssertionError(f"{what}: output {i} is {g.dtype}{list(g.shape)}, eager PyTorch "
                                 f"gives {w.dtype}{list(w.shape)}")
        g, w = g.detach().cpu(), w.detach().cpu()
        if not w.dtype.is_floating_point:
            if not torch.equal(g, w):
                raise AssertionError(f"{what}: output {i} differs\n  got:  {g}\n  want: {w}")
            continue
        table = tolerances or TOLERANCES
        atol, rtol = table.get(w.dtype, TOLERANCES[torch.float32])
        if computed_in is not None:     # a float64 output of float32 work carries float32 rounding
            atol, rtol = max(atol, table[computed_in][0]), max(rtol, table[computed_in][1])
        close = torch.isclose(g, w, atol=atol, rtol=rtol, equal_nan=True)
        if signed_zeros:
            close &= ~((g == 0) & (w == 0) & (g.signbit() != w.signbit()))
        if not bool(close.all()):
            bad = (~close).nonzero()[0].tolist()
            raise AssertionError(f"{what}: output {i} differs at {bad}: {g[tuple(bad)].item()!r} vs eager "
                                 f"PyTorch's {w[tuple(bad)].item()!r}\n  got:  {g}\n  want: {w}")


def _assert_raises_too(got, want, what):
    if isinstance(want, Exception) and not isinstance(got, Exception):
        raise AssertionError(f"{what} returned a value where eager PyTorch raises "
                             f"{type(want).__name__}: {str(want).splitlines()[0][:300]}")
    if isinstance(got, Exception) and not isinstance(want, Exception):
        raise AssertionError(f"{what} raised where eager PyTorch does not: "
                             f"{type(got).__name__}: {got}") from got


def check_vmap(fn, batched_args, what="vmap", **kw):
    """functx.vmap(fn) over dim 0 of every argument == fn applied to each slice, stacked."""
    n = batched_args[0].shape[0]
    rows = [_call(fn, [a[i].clone() for a in batched_args]) for i in range(n)]
    got = _call(functx_vmap(fn), [a.clone() for a in batched_args])
    failed = next((r for r in rows if isinstance(r, Exception)), None)
    if failed is not None:
        return _assert_raises_too(got, failed, what)
    _assert_raises_too(got, rows[0], what)
    leaves = [tree_flatten(r)[0] for r in rows]
    want = [torch.stack([leaf[j] for leaf in leaves]) for j in range(len(leaves[0]))]
    assert_same(list(tree_flatten(got)[0]), want, what, computed_in=_lowest_float(batched_args), **kw)


def _float_part(fn, args):
    """fn as a function of its floating-point tensor arguments, returning its floating-point
    output leaves (what derivatives are taken of)."""
    where = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.dtype.is_floating_point]

    def f(*floats):
        full = list(args)
        for i, x in zip(where, floats):
            full[i] = x
        return tuple(o for o in tree_flatten(fn(*full))[0]
                     if isinstance(o, torch.Tensor) and o.dtype.is_floating_point)
    return f, [args[i] for i in where]


def _fd_directional(f, xs, ts, eps):
    plus = f(*[x + eps * t for x, t in zip(xs, ts)])
    minus = f(*[x - eps * t for x, t in zip(xs, ts)])
    return [(p - m) / (2 * eps) for p, m in zip(plus, minus)]


def _fd_vjp(f, xs, cts, eps):
    """J^T ct by central differences, one input element at a time."""
    out = []
    for k, x in enumerate(xs):
        col = torch.zeros(x.numel(), dtype=x.dtype)
        for e in range(x.numel()):
            ts = [torch.zeros_like(y) for y in xs]
            ts[k].view(-1)[e] = 1
            jt = _fd_directional(f, xs, ts, eps)
            col[e] = sum((j * c).sum() for j, c in zip(jt, cts)) if jt else 0.0
        out.append(col.reshape(x.shape))
    return out


def _agree(got, want, atol, rtol):
    try:
        assert_same(list(got), list(want), signed_zeros=False,
                    tolerances={torch.float64: (atol, rtol), torch.float32: (atol, rtol)})
        return True
    except AssertionError:
        return False


def _primal_dtypes(tangents, outs):
    """torch.func's tangents in their primals' dtypes. A tangent has its primal's dtype (JAX's
    rule, functx's); torch's forward AD keeps a float64 tangent written in place into a float32
    tensor (torch.ones_like(x, dtype=torch.float32).add_(x64)), a quirk, not a derivative."""
    if isinstance(tangents, Exception) or len(tangents) != len(outs):
        return tangents
    return [t.to(o.dtype) if isinstance(t, torch.Tensor) and t.dtype.is_floating_point
            and o.dtype.is_floating_point else t for t, o in zip(tangents, outs)]


def _where_finite(tangents, outs):
    """The tangents at the output elements whose value is finite. At a nan or inf value the
    function has no derivative and finite differences cannot decide, and the formulas'
    conventions differ there (jvp of var over no elements: torch.func's formula sums no terms,
    0; functx's and JAX's divide by the count, nan), so those tangents are not compared."""
    if isinstance(tangents, Exception) or len(tangents) != len(outs):
        return tangents
    return [t[torch.isfinite(o)] if isinstance(t, torch.Tensor) and t.shape == o.shape else t
            for t, o in zip(tangents, outs)]


def _both_raise(got, want, what):
    """True when functx and torch.func both raise (no derivative defined, e.g. remainder's
    w.r.t. its divisor); functx raising alone is a failure."""
    if isinstance(got, Exception):
        if isinstance(want, Exception):
            return True
        raise AssertionError(f"{what} raised where torch.func does not: {type(got).__name__}: {got}") from got
    return False


def check_derivatives(fn, args, what="derivatives", seed=0, eps=1e-6, fd_tol=1e-4):
    """functx.vjp and functx.jvp of fn (w.r.t. its floating-point tensor arguments, of its
    floating-point outputs) against torch.func's, with random cotangents and tangents. Where
    torch.func disagrees with functx (or raises), float64 central differences decide: functx
    must agree with them. NaNs must be in the same places. Tangents at output elements whose
    value is nan or inf are not compared (no derivative exists there), and where torch.func
    raises and no output is finite there is no oracle."""
    f, xs = _float_part(fn, args)
    if not xs:
        return
    gen = torch.Generator().manual_seed(seed)
    outs = [_plain(o) for o in f(*[x.clone() for x in xs])]
    if not outs:
        return
    cts = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype) for o in outs]
    ts = [torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype) for x in xs]
    tight = TOLERANCES[torch.float64] if all(x.dtype == torch.float64 for x in xs) else (1e-4, 1e-4)

    # Finite differences decide only through outputs that are finite here (a nan output's
    # differences are nan); with none, torch.func is the only oracle.
    finite = [k for k, o in enumerate(outs) if bool(torch.isfinite(o).all())]
    f_fin = lambda *a: tuple(f(*a)[k] for k in finite)     # noqa: E731
    cts_fin = tuple(cts[k] for k in finite)

    def vjp_of(fun, c):
        return _call(lambda: [_plain(g) for g in functx_vjp(fun, *[x.clone() for x in xs])[1](c)], ())

    got = vjp_of(f, tuple(cts))
    want = _call(lambda: torch.func.vjp(f, *[x.clone() for x in xs])[1](tuple(cts)), ())
    if _both_raise(got, want, f"{what}: functx.vjp"):
        pass
    elif isinstance(want, Exception) and not finite:
        pass        # torch.func raises and finite differences have nothing to difference: no oracle
    elif isinstance(want, Exception) or not _agree(got, want, *tight):
        got_fin = vjp_of(f_fin, cts_fin) if finite else got
        fd = _fd_vjp(f_fin, xs, cts_fin, eps) if finite else "(no finite output to difference)"
        if not finite or not _agree(got_fin, fd, fd_tol, fd_tol):
            raise AssertionError(f"{what}: functx.vjp disagrees with torch.func.vjp and with finite "
                                 f"differences\n  functx:     {got}\n  torch.func: {want}\n  finite differences: {fd}")

    def jvp_of(fun):
        return _call(lambda: [_plain(t) for t in functx_jvp(fun, tuple(x.clone() for x in xs), tuple(ts))[1]], ())

    got = jvp_of(f)
    want = _call(lambda: torch.func.jvp(f, tuple(x.clone() for x in xs), tuple(ts))[1], ())
    if _both_raise(got, want, f"{what}: functx.jvp") or (isinstance(want, Exception) and not finite):
        return
    want = _primal_dtypes(want, outs)
    if isinstance(want, Exception) or not _agree(_where_finite(got, outs), _where_finite(want, outs), *tight):
        got = jvp_of(f_fin) if finite else got
        fd = _fd_directional(f_fin, xs, ts, eps) if finite else "(no finite output to difference)"
        if not finite or not _agree(got, fd, fd_tol, fd_tol):
            raise AssertionError(f"{what}: functx.jvp disagrees with torch.func.jvp and with finite "
                                 f"differences\n  functx:     {got}\n  torch.func: {want}\n  finite differences: {fd}")


def check_against_torch(fn, *args, backends=("eager",), vmap_args=None, derivatives=False,
                        signed_zeros=True, jit_options=None):
    """Run fn in eager PyTorch and compare: functx.jit(fn, backend=b, **jit_options) for each
    of `backends` ("eager", "triton", "cpu"), vmap(fn) over `vmap_args` (arguments with a
    leading batch dim) against a Python loop, and (derivatives=True) vjp/jvp against
    torch.func and finite differences. Arguments are cloned for every run, so fn may write
    into its own intermediates. Raises AssertionError naming the path that disagrees."""
    want = _call(fn, [_clone(a) for a in args])
    for backend in backends:
        what = f"functx.jit(fn, backend={backend!r}{''.join(f', {k}={v!r}' for k, v in (jit_options or {}).items())})"
        got = _call(functx_jit(fn, backend=backend, **(jit_options or {})), [_clone(a) for a in args])
        _assert_raises_too(got, want, what)
        if not isinstance(want, Exception):
            assert_same(got, want, what, signed_zeros=signed_zeros, computed_in=_lowest_float(args))
    if vmap_args is not None:
        check_vmap(fn, vmap_args, signed_zeros=signed_zeros)
    if derivatives and not isinstance(want, Exception):
        check_derivatives(fn, args)


def _lowest_float(args):
    """The float dtype of least precision among the tensor arguments (None without any)."""
    floats = [a.dtype for a in tree_flatten(args)[0] if isinstance(a, torch.Tensor) and a.dtype.is_floating_point]
    return max(floats, key=lambda d: TOLERANCES.get(d, TOLERANCES[torch.float32])[1], default=None)


def _clone(a):
    return a.clone() if isinstance(a, torch.Tensor) else a
