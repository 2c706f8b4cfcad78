"""JAX and folx anchors for bench_taylor.py (optional: absent packages mean no rows).

Import this module only after the XLA flags are set (bench_taylor does it first thing):
XLA reads them once, when the CPU client starts. Every function here takes the torch MLP
weights, copies them to JAX arrays, and returns (name -> fn, args) whose fn returns a NumPy
array after blocking on the result, so wall-clock timing is fair.
"""
from __future__ import annotations

import numpy as np

try:
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", False)
except ImportError:       # pragma: no cover - the anchors are optional
    jax = None
try:
    import folx
except ImportError:       # pragma: no cover
    folx = None


def available():
    return jax is not None


def _to_jax(tensors):
    return tuple(jnp.asarray(t.detach().cpu().numpy()) for t in tensors)


def _mlp(params, x):
    n = len(params) // 2
    for k in range(n):
        x = x @ params[2 * k] + params[2 * k + 1]
        if k < n - 1:
            x = jnp.tanh(x)
    return x


def blocking(f):
    return lambda *a: np.array(jax.block_until_ready(f(*a)))


def memory(f, args):
    """Bytes XLA's compiled executable reserves for temporaries and outputs (its own
    buffer assignment: the peak of live intermediates, arguments not counted)."""
    try:
        m = f.lower(*args).compile().memory_analysis()
        return m.temp_size_in_bytes + m.output_size_in_bytes
    except Exception:     # noqa: BLE001  - not every backend reports it
        return None


def laplacian_variants(torch_params, torch_X):
    """name -> (jitted fn, args): jax.hessian trace, jet per direction, folx."""
    params, (X,) = _to_jax(torch_params), _to_jax([torch_X])
    d = X.shape[1]

    def u(p, x):
        return _mlp(p, x)[..., 0]

    def hess_trace(p, X):
        return jax.vmap(lambda x: jnp.trace(jax.hessian(u, argnums=1)(p, x)))(X)

    def jet_lap(p, X):
        from jax.experimental.jet import jet
        eye = jnp.eye(d, dtype=X.dtype)

        def per_point(x):
            def second(v):
                _, (_, d2) = jet(lambda y: u(p, y), (x,), ((v, jnp.zeros_like(v)),))
                return d2
            return jax.vmap(second)(eye).sum()
        return jax.vmap(per_point)(X)

    fns = {"jax.jit vmap(trace(jax.hessian))": jax.jit(hess_trace),
           "jax.jit vmap(sum jet(e_i))": jax.jit(jet_lap)}
    if folx is not None:
        def folx_lap(p, X):
            return jax.vmap(lambda x: folx.forward_laplacian(lambda y: u(p, y))(x).laplacian)(X)
        fns["folx.forward_laplacian (jit)"] = jax.jit(folx_lap)
    return fns, (params, X)


def score_variants(torch_params, torch_X):
    """jax.grad of mean(0.5 |s(x)|^2 + trace(jacfwd(s)(x))), one flat vector."""
    params, (X,) = _to_jax(torch_params), _to_jax([torch_X])

    def loss(p, X):
        def per_point(x):
            return 0.5 * (_mlp(p, x) ** 2).sum() + jnp.trace(jax.jacfwd(_mlp, argnums=1)(p, x))
        return jax.vmap(per_point)(X).mean()

    def flat_grad(p, X):
        return jnp.concatenate([g.reshape(-1) for g in jax.grad(loss)(p, X)])
    fns = {"jax.jit grad(vmap(trace(jacfwd)))": jax.jit(flat_grad)}
    if folx is not None:
        def folx_loss(p, X):
            def per_point(x):
                r = folx.forward_laplacian(lambda y: _mlp(p, y))(x)
                return 0.5 * (r.x ** 2).sum() + jnp.trace(r.jacobian.dense_array)
            return jax.vmap(per_point)(X).mean()
        fns["jax.jit grad(folx jacobian trace)"] = jax.jit(
            lambda p, X: jnp.concatenate([g.reshape(-1) for g in jax.grad(folx_loss)(p, X)]))
    return fns, (params, X)
