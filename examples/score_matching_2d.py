"""Score matching on a 2D Gaussian mixture, then Langevin sampling.

The score network s(x) ~ grad_x log p(x) is trained two ways (Hyvarinen 2005; Song et al. 2019):

  exact score matching   E[ tr(ds/dx) + |s|^2 / 2 ]     tr via functx.divergence under functx.vmap
                         (the trace(jacfwd) formulation is kept as the checked baseline)
  sliced score matching  E[ v^T (ds/dx) v + (v^T s)^2 / 2 ],  v ~ N(0, I)   via functx.jvp

Both objectives differentiate through a derivative of the network, so the training step
is grad-of-(vmap-of-jacfwd) -- one functx.jit'd function. Samples come from unadjusted
Langevin dynamics  x <- x + eps/2 s(x) + sqrt(eps) z.

    python examples/score_matching_2d.py [--quick] [--out DIR]

Prints `METRIC energy_distance_<method>=... baseline=...`: the energy distance from the
Langevin samples to held-out data, against a Gaussian with the data's mean and covariance.
"""
import math
import time

import torch

import functx
from common import parse_example_args, init_mlp, energy_distance, adam, save_figure


# ----------------------------------------------------------------- data, model, metric

def gaussian_mixture(n, modes=6, radius=2.0, std=0.35):
    """n points from `modes` Gaussians spaced evenly on a circle."""
    k = torch.randint(0, modes, (n,))
    angle = 2 * math.pi * k.float() / modes
    centers = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    return centers + std * torch.randn(n, 2)


def score(params, x):
    """The score network R^2 -> R^2 for one point (or a batch). SiLU: smooth, so its
    Jacobian and the Jacobian's parameter gradient are well defined."""
    n = len(params) // 2
    h = x
    for i in range(n):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < n - 1:
            h = torch.nn.functional.silu(h)
    return h


# ----------------------------------------------------------------- the two objectives

def exact_sm_loss(params, x):
    def per_point(xi):
        div = functx.divergence(score, argnums=1)(params, xi)      # tr(ds/dx)
        s = score(params, xi)
        return div + 0.5 * (s * s).sum()
    return functx.vmap(per_point)(x).mean()


def exact_sm_loss_jacfwd(params, x):
    """The same objective through the full Jacobian (the baseline formulation)."""
    def per_point(xi):
        jac = functx.jacfwd(score, argnums=1)(params, xi)          # (2, 2) = ds/dx
        s = score(params, xi)
        return torch.trace(jac) + 0.5 * (s * s).sum()
    return functx.vmap(per_point)(x).mean()


def sliced_sm_loss(params, x):
    v = torch.randn_like(x)            # inside jit: randn_like of an argument is a fresh sample each call

    def per_point(xi, vi):
        s, jv = functx.jvp(lambda y: score(params, y), (xi,), (vi,))  # s(x), (ds/dx) v
        return (vi * jv).sum() + 0.5 * (vi * s).sum() ** 2
    return functx.vmap(per_point)(x, v).mean()


def train(loss_fn, data, steps, batch, lr, name):
    params = init_mlp([2, 64, 64, 2])
    # jit traces once (per shape signature); params and the batch are arguments, never closed over.
    step_fn = functx.jit(functx.value_and_grad(loss_fn))
    init, update = adam(lr)
    state = init(params)
    t0 = time.time()
    for step in range(1, steps + 1):
        xb = data[torch.randint(0, len(data), (batch,))]
        loss, grads = step_fn(params, xb)
        params, state = update(params, grads, state, step)
        if step % max(1, steps // 5) == 0 or step == steps:
            print(f"[{name}] step {step:5d}/{steps}  loss {loss.item():+.4f}  ({time.time() - t0:.1f}s)", flush=True)
    return params


@functx.jit
def langevin_step(params, x, eps):
    # eps is a Python float: jit traces it as a dynamic 0-d value (one trace for every eps),
    # so take its square root with ** (math.sqrt needs the concrete number). randn_like(x)
    # draws fresh noise on every call.
    return x + 0.5 * eps * score(params, x) + eps ** 0.5 * torch.randn_like(x)


def langevin(params, n, steps, eps):
    """Unadjusted Langevin dynamics with the learned score, from a broad Gaussian."""
    x = 3.0 * torch.randn(n, 2)
    for i in range(steps):
        # a larger step size for the first half (mixing), the small one after (accuracy)
        x = langevin_step(params, x, eps * (10.0 if i < steps // 2 else 1.0))
    return x


# ----------------------------------------------------------------- main

def main():
    args = parse_example_args(__doc__)

    steps = 400 if args.quick else 4000
    data = gaussian_mixture(20000)
    test = gaussian_mixture(2000)

    # the sliced objective is an unbiased estimate of the exact one (same params, same batch):
    p0, xb = init_mlp([2, 64, 64, 2]), data[:2048]
    exact0 = exact_sm_loss(p0, xb)
    baseline0 = exact_sm_loss_jacfwd(p0, xb)
    assert torch.allclose(exact0, baseline0, rtol=1e-5, atol=1e-6), (exact0, baseline0)
    sliced = functx.jit(sliced_sm_loss)                 # traced once, fresh v on every call
    sliced0 = torch.stack([sliced(p0, xb) for _ in range(20)]).mean()
    print(f"at init: exact loss {exact0.item():.4f}, sliced estimate {sliced0.item():.4f}")

    results = {}
    for name, loss_fn in [("exact", exact_sm_loss), ("sliced", sliced_sm_loss)]:
        params = train(loss_fn, data, steps, batch=256, lr=2e-3, name=name)
        samples = langevin(params, n=2000, steps=200 if args.quick else 1000, eps=2e-3)
        results[name] = (params, samples)

    gauss = test.mean(0) + torch.randn(2000, 2) @ torch.linalg.cholesky(torch.cov(test.T)).T
    baseline = energy_distance(gauss, test).item()
    for name, (_, samples) in results.items():
        ed = energy_distance(samples, test).item()
        print(f"METRIC energy_distance_{name}={ed:.4f} baseline={baseline:.4f}")

    # ------------------------------------------------------------- figure
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    lim = 3.5
    test = test.cpu()
    axes[0].scatter(*test.T, s=2, alpha=0.5)
    axes[0].set_title("data")
    g = torch.linspace(-lim, lim, 21, device="cpu")
    grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    s = score(results["exact"][0], grid.to(args.device)).cpu()
    norm = s.norm(dim=1, keepdim=True)
    axes[1].scatter(*test.T, s=1, alpha=0.15)
    axes[1].quiver(*grid.T, *(s / norm.sqrt()).T, norm.squeeze(1).log(), cmap="Reds")   # arrows ~ sqrt|s|
    axes[1].set_title("learned score field (exact SM)")
    for ax, name in zip(axes[2:], ["exact", "sliced"]):
        ax.scatter(*results[name][1].cpu().T, s=2, alpha=0.5, color="tab:green")
        ax.set_title(f"Langevin samples ({name} SM)")
    for ax in axes:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    save_figure(fig, args.out, "score_matching_2d.png")


if __name__ == "__main__":
    main()
