"""Derivative checkers: `check_grads` (JAX's jax.test_util.check_grads) and `check_transforms`.

    functx.testing.check_grads(f, (x, y), order=2)          # raises AssertionError on a bad rule
    report = functx.testing.check_transforms(f, x, y)       # jacfwd / jacrev / FD / jit, one report

Both compare functx's derivatives with central finite differences of f evaluated as plain
torch (no functx in the loop), so a wrong rule can't agree with itself. Directions are drawn
from a private generator: the checks are reproducible and leave torch's global RNG alone.
"""
from __future__ import annotations

import math

import torch

from ..compile import jit as functx_jit
from ..core.trace import concrete
from ..frontend import unwrap
from ..transforms import jacfwd, jacrev, jvp, vjp
from ..tree_util import tree_flatten, tree_unflatten

__all__ = ["check_grads", "check_jvp", "check_vjp", "check_transforms", "TransformReport",
           "numerical_jvp", "default_tolerances"]

# (eps, atol, rtol) per dtype. Central differences have error O(eps^2 f''') + O(ulp/eps), so
# single precision needs a much larger step and tolerance than double.
_DEFAULTS = {
    torch.float64: (1e-4, 1e-5, 1e-5),
    torch.float32: (1e-2, 5e-2, 5e-2),
    torch.float16: (1e-1, 2e-1, 2e-1),
    torch.bfloat16: (1e-1, 2e-1, 2e-1),
}


def default_tolerances(dtype):
    """(eps, atol, rtol) used for a given floating dtype."""
    return _DEFAULTS.get(dtype, _DEFAULTS[torch.float32])


# ---------------------------------------------------------------- pytree helpers

def _leaves(tree):
    return tree_flatten(tree)[0]


def _is_float(x):
    return isinstance(x, torch.Tensor) and (x.dtype.is_floating_point or x.dtype.is_complex)


def _plain(x):
    """A plain torch.Tensor (results of functx transforms may be wrappers around constants)."""
    if isinstance(x, torch.Tensor) and type(x) is not torch.Tensor:
        x = concrete(unwrap(x))
    return x


def _worst_dtype(leaves):
    floats = [l.dtype for l in leaves if _is_float(l)]
    if not floats:
        return torch.float64
    return min(floats, key=lambda d: torch.finfo(d).eps * -1)  # the least precise one


def _tols(leaves, eps, atol, rtol):
    d_eps, d_atol, d_rtol = default_tolerances(_worst_dtype(leaves))
    return (d_eps if eps is None else eps, d_atol if atol is None else atol,
            d_rtol if rtol is None else rtol)


def _rand_like(x, gen):
    if not _is_float(x):
        return torch.zeros_like(x)
    r = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    return r.to(dtype=x.dtype, device=x.device)


def _axpy(a, x, y):
    """y + a*x for float leaves; non-float leaves are left as they are."""
    return (y + a * x) if _is_float(y) else y


def _inner(xs, ys):
    total = 0.0
    for x, y in zip(xs, ys):
        x, y = _plain(x), _plain(y)
        if _is_float(x) and _is_float(y):
            total += float((x.to(torch.float64) * y.to(torch.float64)).sum())
    return total


def _max_err(got, want, atol, rtol):
    """(worst |got - want| - tolerance margin ratio, max abs error, leaf index)."""
    worst, max_abs, where = 0.0, 0.0, None
    for i, (g, w) in enumerate(zip(got, want)):
        g, w = _plain(g), _plain(w)
        if not (_is_float(g) or _is_float(w)):
            continue
        g64, w64 = g.detach().to(torch.float64), w.detach().to(torch.float64)
        if g64.shape != w64.shape:
            return math.inf, math.inf, i
        if g64.numel() == 0:
            continue
        diff = (g64 - w64).abs()
        bad = diff.isnan() & ~(g64.isnan() & w64.isnan())
        if bad.any():
            return math.inf, math.inf, i
        diff = torch.where(g64.isnan() & w64.isnan(), torch.zeros_like(diff), diff)
        ratio = float((diff / (atol + rtol * w64.abs())).max())
        if ratio > worst:
            worst, where = ratio, i
        max_abs = max(max_abs, float(diff.max()))
    return worst, max_abs, where


# ---------------------------------------------------------------- check_grads

def numerical_jvp(f, args, tangents, eps):
    """Central difference (f(x + eps t) - f(x - eps t)) / 2 eps, leaves flattened."""
    plus = _leaves(f(*[_axpy(eps, t, a) for a, t in zip(args, tangents)]))
    minus = _leaves(f(*[_axpy(-eps, t, a) for a, t in zip(args, tangents)]))
    return [(_plain(p) - _plain(m)) / (2 * eps) if _is_float(_plain(p)) else torch.zeros_like(_plain(p))
            for p, m in zip(plus, minus)]


def _fail(mode, order, what, err, max_abs, leaf, atol, rtol, got=None, want=None):
    msg = (f"functx.testing.check_grads: {mode} mode, order {order}: {what}\n"
           f"  max abs error {max_abs:.3g} (worst leaf {leaf}; atol={atol:g}, rtol={rtol:g}; "
           f"error/tolerance = {err:.3g})")
    if got is not None:
        msg += f"\n  got:      {got}\n  expected: {want}"
    raise AssertionError(msg)


def _flat_args(args):
    """args as a tuple of pytrees -> (flat leaves, rebuild(flat) -> args tuple)."""
    leaves, tree = tree_flatten(tuple(args))
    return [_plain(l) for l in leaves], lambda flat: tuple(tree_unflatten(tree, list(flat)))


def check_jvp(f, args, *, atol=None, rtol=None, eps=None, gen=None, order=1, label="f"):
    """functx.jvp of f at args, along a random direction, against finite differences."""
    gen = gen or torch.Generator().manual_seed(0)
    flat, rebuild = _flat_args(args)
    eps, atol, rtol = _tols(flat, eps, atol, rtol)
    flat_f = lambda *xs: f(*rebuild(xs))
    tangents = [_rand_like(x, gen) for x in flat]
    _, t_out = jvp(flat_f, tuple(flat), tuple(tangents))
    t_out = [_plain(t) for t in _leaves(t_out)]
    t_fd = numerical_jvp(flat_f, flat, tangents, eps)
    err, max_abs, leaf = _max_err(t_out, t_fd, atol, rtol)
    if err > 1.0:
        _fail("fwd", order, f"jvp of {label} disagrees with finite differences", err, max_abs, leaf,
              atol, rtol, _short(t_out[leaf]) if leaf is not None else None,
              _short(t_fd[leaf]) if leaf is not None else None)


def check_vjp(f, args, *, atol=None, rtol=None, eps=None, gen=None, order=1, label="f",
              against_jvp=True):
    """<vjp(f)(ct), t> against <J t, ct>, with J t from finite differences (JAX's check)
    and, when against_jvp, also from functx.jvp (the exact inner-product identity)."""
    gen = gen or torch.Generator().manual_seed(1)
    flat, rebuild = _flat_args(args)
    eps, atol, rtol = _tols(flat, eps, atol, rtol)
    flat_f = lambda *xs: f(*rebuild(xs))
    out, vjp_fn = vjp(flat_f, *flat)
    out_leaves, out_tree = tree_flatten(out)
    cts = [_rand_like(_plain(o), gen) for o in out_leaves]
    in_cts = [_plain(c) for c in vjp_fn(tree_unflatten(out_tree, cts))]
    tangents = [_rand_like(x, gen) for x in flat]
    lhs = _inner(in_cts, tangents)                       # <J^T ct, t>
    t_fd = numerical_jvp(flat_f, flat, tangents, eps)
    rhs = _inner(t_fd, cts)                              # <J t, ct>
    # Each FD entry may be off by atol + rtol |Jt|, so the inner product by sum |ct| (atol + rtol |Jt|).
    tol = atol * _inner_abs(cts, None) + rtol * _inner_abs(cts, t_fd) + 1e-12
    if not abs(lhs - rhs) <= tol:
        _fail("rev", order, f"vjp of {label} disagrees with finite differences: <vjp(ct), t> = "
              f"{lhs:.6g}, <J t, ct> (finite differences) = {rhs:.6g}", abs(lhs - rhs) / tol,
              abs(lhs - rhs), None, atol, rtol)
    if against_jvp:
        _, t_out = jvp(flat_f, tuple(flat), tuple(tangents))
        t_out = _leaves(t_out)
        rhs_exact = _inner(t_out, cts)
        # The identity is exact up to rounding, which is bounded by the sum of the terms' magnitudes.
        ulp = torch.finfo(_worst_dtype(flat)).eps
        tol = 100 * ulp * (_inner_abs(in_cts, tangents) + _inner_abs(t_out, cts)) + 1e-12
        if not abs(lhs - rhs_exact) <= tol:
            _fail("rev", order, f"vjp of {label} disagrees with its jvp (inner-product identity): "
                  f"<vjp(ct), t> = {lhs:.10g}, <jvp(t), ct> = {rhs_exact:.10g}",
                  abs(lhs - rhs_exact) / tol, abs(lhs - rhs_exact), None, 100 * ulp, 100 * ulp)


def _inner_abs(xs, ys):
    """sum |x * y| over float leaves (sum |x| when ys is None)."""
    total = 0.0
    for i, x in enumerate(xs):
        x = _plain(x)
        y = None if ys is None else _plain(ys[i])
        if not _is_float(x) or (y is not None and not _is_float(y)):
            continue
        x = x.detach().to(torch.float64).abs()
        total += float((x if y is None else x * y.detach().to(torch.float64).abs()).sum())
    return total


def _short(x):
    s = str(_plain(x).detach().flatten()[:6].tolist()) if isinstance(x, torch.Tensor) else str(x)
    return s if len(s) < 200 else s[:200] + "..."


def check_grads(f, args, order=2, modes=("fwd", "rev"), atol=None, rtol=None, eps=None):
    """Check f's derivatives up to `order` in forward (jvp vs finite differences) and reverse
    (vjp vs finite differences and vs jvp) mode, recursively: order 2 checks the derivatives
    of the jvp and of the vjp as well. Raises AssertionError naming the mode, the order and
    the error. `args` is a tuple of arguments (pytrees of tensors); use float64 for tight
    tolerances."""
    if isinstance(modes, str):
        modes = (modes,)
    bad = set(modes) - {"fwd", "rev"}
    if bad:
        raise ValueError(f"check_grads: unknown modes {sorted(bad)}; use 'fwd' and/or 'rev'")
    if not isinstance(args, (tuple, list)):
        raise TypeError("check_grads: args must be a tuple of arguments, e.g. (x,)")
    _check_grads(f, tuple(args), order, tuple(modes), atol, rtol, eps, 1, "f")


def _check_grads(f, args, order, modes, atol, rtol, eps, level, label):
    kw = dict(atol=atol, rtol=rtol, eps=eps, order=level, label=label)
    gen = torch.Generator().manual_seed(1234 + level)
    flat, rebuild = _flat_args(args)
    if "fwd" in modes:
        check_jvp(f, args, gen=gen, **kw)
        if order > 1:
            tangents = [_rand_like(x, gen) for x in flat]
            n = len(flat)

            def f_jvp(*xs):          # primals and tangents both vary at the next order
                return jvp(lambda *p: f(*rebuild(p)), tuple(xs[:n]), tuple(xs[n:]))
            _check_grads(f_jvp, tuple(flat) + tuple(tangents), order - 1, modes, atol, rtol, eps,
                         level + 1, f"jvp({label})")
    if "rev" in modes:
        check_vjp(f, args, gen=gen, against_jvp="fwd" in modes, **kw)
        if order > 1:
            out = f(*args)
            out_leaves, out_tree = tree_flatten(out)
            cts = [_rand_like(_plain(o), gen) for o in out_leaves]

            def f_vjp(*xs):          # a fixed cotangent: the pullback as a function of the primals
                _, pull = vjp(lambda *p: f(*rebuild(p)), *xs)
                return pull(tree_unflatten(out_tree, cts))
            _check_grads(f_vjp, tuple(flat), order - 1, modes, atol, rtol, eps, level + 1, f"vjp({label})")


# ---------------------------------------------------------------- check_transforms

class TransformReport:
    """Result of check_transforms: `.ok`, `.rows` [(check, max_abs_err, tol_ratio, ok, note)], str()."""

    def __init__(self, name, rows):
        self.name = name
        self.rows = rows

    @property
    def ok(self):
        return all(r[3] for r in self.rows)

    @property
    def failures(self):
        return [r for r in self.rows if not r[3]]

    def __str__(self):
        lines = [f"functx.testing.check_transforms({self.name}): {'OK' if self.ok else 'MISMATCH'}"]
        w = max(len(r[0]) for r in self.rows) if self.rows else 10
        for check, err, ratio, ok, note in self.rows:
            status = "ok  " if ok else "FAIL"
            e = "-" if err is None else f"{err:.2e}"
            r = "" if ratio is None else f"  (error/tol {ratio:.2g})"
            lines.append(f"  [{status}] {check:<{w}}  max abs err {e}{r}{'  ' + note if note else ''}")
        return "\n".join(lines)

    __repr__ = __str__

    def __bool__(self):
        return self.ok


def _fd_jacobian(f, flat, rebuild, diff_idx, eps):
    """Finite-difference Jacobian blocks [out leaf][diff in leaf] of shape out.shape + in.shape."""
    out0 = [_plain(o) for o in _leaves(f(*rebuild(flat)))]
    blocks = [[None] * len(diff_idx) for _ in out0]
    for j, k in enumerate(diff_idx):
        x = flat[k]
        cols = [[] for _ in out0]
        for e in range(x.numel()):
            t = torch.zeros(x.numel(), dtype=x.dtype, device=x.device)
            t[e] = 1
            tangents = [torch.zeros_like(a) if i != k else t.reshape(x.shape) for i, a in enumerate(flat)]
            col = numerical_jvp(lambda *xs: f(*rebuild(xs)), flat, tangents, eps)
            for i, c in enumerate(col):
                cols[i].append(c.to(out0[i].dtype) if _is_float(out0[i]) else c)
        for i, o in enumerate(out0):
            stacked = torch.stack(cols[i], dim=-1) if cols[i] else torch.zeros(o.shape + (0,), dtype=o.dtype)
            blocks[i][j] = stacked.reshape(o.shape + x.shape)
    return blocks


def check_transforms(f, *args, atol=None, rtol=None, eps=None, argnums=None, jit=True,
                     raise_on_error=True, verbose=False, max_fd_elements=4096):
    """Cross-check jacfwd vs jacrev vs finite differences, and functx.jit(f) vs eager f, in one
    call. Returns a TransformReport (`.ok`, str() for a readable table); raises AssertionError
    with the report on any mismatch unless raise_on_error=False; prints it if verbose.
    argnums: which positional arguments to differentiate (default: every argument whose leaves
    are all floating-point tensors)."""
    name = getattr(f, "__name__", type(f).__name__)
    arg_leaves = [_plain(l) for l in _leaves(tuple(args))]
    eps, atol, rtol = _tols(arg_leaves, eps, atol, rtol)
    if argnums is None:
        argnums = tuple(i for i, a in enumerate(args)
                        if _leaves(a) and all(_is_float(_plain(l)) for l in _leaves(a)))
    elif isinstance(argnums, int):
        argnums = (argnums,)
    rows = []

    def record(check, got, want, note=""):
        err, max_abs, _ = _max_err(got, want, atol, rtol)
        rows.append((check, max_abs, err, err <= 1.0, note))

    def attempt(check, fn):
        try:
            return fn()
        except Exception as e:    # a transform that raises is a failed check, reported in the table
            rows.append((check, None, None, False, f"raised {type(e).__name__}: {str(e).splitlines()[0][:160]}"))
            return None

    eager = f(*args)
    eager_leaves = [_plain(l) for l in _leaves(eager)]
    if argnums:
        diff_args = tuple(args[i] for i in argnums)
        flat, rebuild_diff = _flat_args(diff_args)

        def f_diff(*ds):
            full = list(args)
            for i, d in zip(argnums, ds):
                full[i] = d
            return f(*full)

        n_in = sum(x.numel() for x in flat)
        fwd = attempt("jacfwd", lambda: [_plain(l) for l in _leaves(jacfwd(f, argnums=argnums)(*args))])
        rev = attempt("jacrev", lambda: [_plain(l) for l in _leaves(jacrev(f, argnums=argnums)(*args))])
        if n_in <= max_fd_elements:
            fd_blocks = _fd_jacobian(f_diff, flat, rebuild_diff, list(range(len(flat))), eps)
            # jacfwd/jacrev return, per output leaf, a tuple over argnums of the argument's pytree,
            # so flattening gives the blocks output-major, input-minor: the FD order.
            fd = [b for row in fd_blocks for b in row]
            if fwd is not None:
                record("jacfwd vs finite differences", fwd, fd)
            if rev is not None:
                record("jacrev vs finite differences", rev, fd)
        else:
            rows.append(("finite differences", None, None, True, f"skipped: {n_in} input elements"))
        if fwd is not None and rev is not None:
            tight = max(atol * 1e-3, 1e-6 if _worst_dtype(flat) == torch.float64 else 1e-4)
            err, max_abs, _ = _max_err(fwd, rev, tight, tight)
            rows.append(("jacfwd vs jacrev", max_abs, err, err <= 1.0, ""))
    else:
        rows.append(("jacobians", None, None, True, "skipped: no floating-point arguments"))
    if jit:
        jitted = attempt("jit vs eager", lambda: [_plain(l) for l in _leaves(functx_jit(f)(*args))])
        if jitted is not None:
            tight = 1e-6 if _worst_dtype(eager_leaves) == torch.float64 else 1e-4
            err, max_abs, _ = _max_err(jitted, eager_leaves, tight, tight)
            rows.append(("jit vs eager", max_abs, err, err <= 1.0, ""))
    report = TransformReport(name, rows)
    if verbose:
        print(report)
    if raise_on_error and not report.ok:
        raise AssertionError(str(report))
    return report
