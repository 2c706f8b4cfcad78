"""Backpropagating through a 200-step sampler: learning an annealed Langevin schedule.

The target is a ring of 8 Gaussians whose noised scores are known in closed form. The
sampler runs K = 200 annealed Langevin steps,

    x_{k+1} = x_k + eta_k * score_{sigma_k}(x_k) + sqrt(2 eta_k) z_k,

written as one functx.scan over (z_k, log eta_k, log sigma_k). Its 2K schedule parameters
are learned by gradient descent on the energy distance between the samples and the target,
so each step backpropagates through all 200 sampler steps: the scan stacks the residuals of
every step, or, with remat='sqrt', only the carry every ~sqrt(K) steps, recomputing each
segment in the backward pass. The example prints the residual memory of both and checks
that their gradients agree.

    python examples/sampler_schedule.py [--quick] [--out DIR]

Prints `METRIC energy_distance=... baseline=...` (learned schedule vs the initial one, whose
steps are too small to converge, on 2048 fresh particles) and `METRIC residual_mib=... baseline=...` (residual memory with
remat='sqrt' vs without).
"""
import math
import time

import torch

import functx
from functx.frontend import unwrap, wrap
from functx.transforms.ad import linearize_flat
from common import parse_example_args, adam, energy_distance, save_figure

MODES, RADIUS, STD, K = 8, 1.5, 0.1, 200
ANGLES = 2 * math.pi * torch.arange(MODES) / MODES
CENTERS = RADIUS * torch.stack([ANGLES.cos(), ANGLES.sin()], dim=1)


def target_samples(n):
    return CENTERS[torch.randint(0, MODES, (n,))] + STD * torch.randn(n, 2)


def noised_score(x, sigma):
    """grad log (target * N(0, sigma^2)) at x: a mixture with variance STD^2 + sigma^2."""
    var = STD ** 2 + sigma ** 2
    diff = CENTERS - x[:, None, :]                              # (n, modes, 2)
    w = torch.softmax(-(diff ** 2).sum(-1) / (2 * var), dim=1)  # responsibilities
    return (w[..., None] * diff).sum(1) / var


def sample(schedule, x0, noise, remat=False):
    """remat: False, True, 'sqrt' or 'binomial' (by default 19 carries for 200 steps)."""
    def step(x, inputs):
        z, log_eta, log_sigma = inputs
        eta = log_eta.exp()
        return x + eta * noised_score(x, log_sigma.exp()) + (2 * eta).sqrt() * z, None
    x, _ = functx.scan(step, x0, (noise, schedule["log_eta"], schedule["log_sigma"]), remat=remat)
    return x


def smooth_energy_distance(x, y):
    """energy_distance with a smoothed |.| so its gradient is defined at x = x'."""
    d = lambda a, b: (((a[:, None] - b[None]) ** 2).sum(-1) + 1e-8).sqrt().mean()
    return 2 * d(x, y) - d(x, x) - d(y, y)


def loss(schedule, x0, noise, data, remat=False):
    return smooth_energy_distance(sample(schedule, x0, noise, remat), data)


def residual_mib(schedule, x0, noise, data, remat):
    """The memory reverse mode keeps between the forward and the backward pass: the
    constants of the linearized graph (for remat='sqrt', the per-segment residuals it
    recomputes during the backward pass come on top, one segment at a time)."""
    names = list(schedule)
    _, graph, _ = linearize_flat(
        lambda a: [unwrap(loss(dict(zip(names, map(wrap, a))), x0, noise, data, remat))], list(schedule.values()))
    return sum(c.numel() * c.element_size() for c in graph.consts) / 2 ** 20


def main():
    args = parse_example_args(__doc__)
    n, iters = (256, 25) if args.quick else (1024, 300)
    schedule = {"log_sigma": torch.linspace(math.log(2.0), math.log(0.02), K),
                "log_eta": torch.full((K,), math.log(1e-4))}     # steps too small: far from converged
    initial = {k: v.clone() for k, v in schedule.items()}
    data = target_samples(n)
    fresh = lambda: (2.0 * torch.randn(n, 2), torch.randn(K, n, 2))

    step_fn = functx.jit(functx.value_and_grad(loss), static_argnums=4)
    x0, noise = fresh()
    g_plain = step_fn(schedule, x0, noise, data, False)[1]
    g_sqrt = step_fn(schedule, x0, noise, data, "sqrt")[1]
    g_binomial = step_fn(schedule, x0, noise, data, "binomial")[1]
    for k in schedule:
        torch.testing.assert_close(g_sqrt[k], g_plain[k], atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(g_binomial[k], g_plain[k], atol=1e-4, rtol=1e-3)
    mem_plain = residual_mib(schedule, x0, noise, data, False)
    mem_sqrt = residual_mib(schedule, x0, noise, data, "sqrt")
    mem_binomial = residual_mib(schedule, x0, noise, data, "binomial")
    print(f"residual memory through {K} steps, {n} particles: {mem_plain:.2f} MiB stored per step, "
          f"{mem_sqrt:.2f} MiB with remat='sqrt', {mem_binomial:.2f} MiB with remat='binomial' (its backward "
          f"pass holds <= 19 carries more, {19 * n * 2 * 4 / 2 ** 20:.2f} MiB; gradients agree)")

    init, update = adam(0.1)
    state, t0 = init(schedule), time.time()
    for it in range(1, iters + 1):
        x0, noise = fresh()
        value, grads = step_fn(schedule, x0, noise, target_samples(n), "sqrt")
        # cosine decay: the last iterates settle instead of hopping on noisy gradients
        schedule, state = update(schedule, grads, state, it, lr_scale=0.5 * (1 + math.cos(math.pi * it / iters)))
        if it % max(1, iters // 5) == 0:
            print(f"iter {it:4d}/{iters}  energy distance {value.item():.4f}  ({time.time() - t0:.1f}s)", flush=True)

    # evaluation on 2048 fresh particles (the training batches' estimates are noisy)
    n_eval = 2048
    x0, noise = 2.0 * torch.randn(n_eval, 2), torch.randn(K, n_eval, 2)
    test = target_samples(n_eval)
    before = functx.jit(sample)(initial, x0, noise)
    after = functx.jit(sample)(schedule, x0, noise)
    ed_before, ed_after = energy_distance(before, test).item(), energy_distance(after, test).item()
    print(f"energy distance to the target: initial schedule {ed_before:.4f}, learned {ed_after:.4f}")
    print(f"METRIC energy_distance={ed_after:.4f} baseline={ed_before:.4f}")
    print(f"METRIC residual_mib={mem_sqrt:.4f} baseline={mem_plain:.4f}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
    for ax, x, title in ((axes[0], before, "initial schedule"), (axes[1], after, "learned schedule")):
        ax.scatter(*test.cpu().T, s=1, alpha=0.3, color="tab:blue")
        ax.scatter(*x.cpu().T, s=1, alpha=0.5, color="tab:green")
        ax.set_title(title)
        ax.set_xlim(-2.5, 2.5)
        ax.set_ylim(-2.5, 2.5)
        ax.set_aspect("equal")
    for k, v in schedule.items():
        axes[2].plot(v.exp().cpu(), label=k[4:] + " (learned)")
        axes[2].plot(initial[k].exp().cpu(), "--", label=k[4:] + " (initial)")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("sampler step")
    axes[2].legend(fontsize=7)
    save_figure(fig, args.out, "sampler_schedule.png")


if __name__ == "__main__":
    main()
