"""A physics-informed neural network (PINN) for the Poisson equation on the unit square:

    -Laplace u = f  on (0,1)^2,   u = 0 on the boundary,   f = 2 pi^2 sin(pi x) sin(pi y)

whose solution is u*(x, y) = sin(pi x) sin(pi y). The network satisfies the boundary
condition by construction, u(x) = x1 (1 - x1) x2 (1 - x2) N(x), and is trained on the PDE
residual at random collocation points. The Laplacian of the network at every point is

    functx.vmap(functx.laplacian(u, argnums=1), in_axes=(None, 0))

(collapsed Taylor mode: one forward pass carries both directions and one summed second-order
coefficient), and the training step differentiates that once more with respect to the
parameters (a third-order derivative), all inside one functx.jit. The nested-AD formulation,
trace(hessian(u)), is kept as `laplacian_nested` and checked against it at the start.

    python examples/pinn_poisson.py [--quick] [--out DIR]

Prints `METRIC rel_l2=... baseline=...`: the relative L2 error of the trained network against
the analytic solution on a grid; the baseline is the untrained network (the zero solution
would score 1.0).
"""
import math
import time

import torch

import functx
from common import parse_example_args, init_mlp, save_figure


def u(params, p):
    """The network solution at one point p = (x, y); zero on the boundary by construction."""
    n = len(params) // 2
    h = p
    for i in range(n):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < n - 1:
            h = torch.tanh(h)
    return (p[0] * (1 - p[0]) * p[1] * (1 - p[1])) * h[0]


def source(p):
    return 2 * math.pi ** 2 * torch.sin(math.pi * p[..., 0]) * torch.sin(math.pi * p[..., 1])


def exact(p):
    return torch.sin(math.pi * p[..., 0]) * torch.sin(math.pi * p[..., 1])


def laplacian(params, pts):
    """Laplace u at each of pts (N, 2), by collapsed Taylor mode, vmapped over the points."""
    return functx.vmap(functx.laplacian(u, argnums=1), in_axes=(None, 0))(params, pts)


def laplacian_nested(params, pts):
    """The same by nested AD: the trace of the 2x2 Hessian (the baseline formulation)."""
    return functx.vmap(lambda p: torch.trace(functx.hessian(u, argnums=1)(params, p)))(pts)


def pde_loss(params, pts):
    return ((laplacian(params, pts) + source(pts)) ** 2).mean()


def rel_l2(params, grid):
    pred = functx.vmap(u, in_axes=(None, 0))(params, grid)
    ref = exact(grid)
    return ((pred - ref).norm() / ref.norm()).item()


def main():
    args = parse_example_args(__doc__)

    steps, n_pts = (600, 128) if args.quick else (10000, 512)
    g = torch.linspace(0, 1, 51)
    grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)

    params = init_mlp([2, 32, 32, 1])
    baseline = rel_l2(params, grid)
    check_pts = torch.rand(64, 2, dtype=torch.float64)
    params64 = {k: v.double() for k, v in params.items()}
    gap = (laplacian(params64, check_pts) - laplacian_nested(params64, check_pts)).abs().max().item()
    print(f"Laplacian: collapsed Taylor mode vs trace(hessian) at init, max difference {gap:.1e} (float64)")
    assert gap < 1e-10, gap
    opt_params = {k: v.clone().requires_grad_() for k, v in params.items()}
    # torch.optim on leaf tensors, with gradients from functx (the jitted value_and_grad).
    opt = torch.optim.Adam(opt_params.values(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    step_fn = functx.jit(functx.value_and_grad(pde_loss))
    t0 = time.time()
    for step in range(1, steps + 1):
        pts = torch.rand(n_pts, 2)                           # fresh collocation points each step
        loss, grads = step_fn({k: v.detach() for k, v in opt_params.items()}, pts)
        for k, v in opt_params.items():
            v.grad = grads[k]
        opt.step()
        sched.step()
        if step % max(1, steps // 5) == 0 or step == steps:
            print(f"step {step:5d}/{steps}  residual loss {loss.item():.3e}  ({time.time() - t0:.1f}s)", flush=True)

    params = {k: v.detach() for k, v in opt_params.items()}
    err = rel_l2(params, grid)
    print(f"METRIC rel_l2={err:.3e} baseline={baseline:.3e}")

    # ------------------------------------------------------------- figure
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred = functx.vmap(u, in_axes=(None, 0))(params, grid).reshape(51, 51).cpu()
    ref = exact(grid).reshape(51, 51).cpu()
    g = g.cpu()
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for ax, img, title in [(axes[0], pred, "PINN u"), (axes[1], ref, "analytic u*"),
                           (axes[2], (pred - ref).abs(), "|u - u*|")]:
        im = ax.imshow(img, origin="lower", extent=(0, 1, 0, 1), cmap="viridis")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046)
    axes[3].plot(g, pred[25], label="PINN, y = 0.5")
    axes[3].plot(g, ref[25], "--", label="analytic")
    axes[3].legend()
    axes[3].set_title(f"slice (rel. L2 error {err:.2e})")
    save_figure(fig, args.out, "pinn_poisson.png")


if __name__ == "__main__":
    main()
