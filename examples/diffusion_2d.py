"""A denoising diffusion model (the VP score SDE of Song et al. 2021) on a 2D ring of 8 Gaussians.

  forward:   x_t = a(t) x_0 + s(t) eps,   a(t) = exp(-1/2 int_0^t beta),  s(t)^2 = 1 - a(t)^2
  training:  min E |eps_theta(x_t, t) - eps|^2            (jitted value_and_grad; t and eps are
                                                           drawn inside jit with rand_like/randn_like)
  sampling:  Euler-Maruyama on the reverse SDE dx = [-beta/2 x - beta score] dt + sqrt(beta) dw,
             one jitted functx.scan over the steps (and the likelihood's RK4 steps likewise)
  likelihood: the probability-flow ODE dx/dt = f(x, t) = -beta(t)/2 (x + score(x, t)) carries
             log p_0(x_0) = log p_1(x_1) + int_0^1 div f(x_t, t) dt,
             with div f = tr(df/dx) exactly (functx.jacfwd under functx.vmap) or by Hutchinson's
             estimator E_v[v^T (df/dx) v] (one functx.jvp per point).

    python examples/diffusion_2d.py [--quick] [--out DIR]

Prints `METRIC energy_distance=... baseline=...` (samples vs held-out data; the baseline is a
Gaussian with the data's mean and covariance), `METRIC nll=... baseline=...` (negative
log-likelihood of held-out data in nats, exact divergence; baseline: that Gaussian's NLL), and
two mode metrics with that Gaussian as baseline: `off_mode_fraction` (samples farther than 2
std from every mode) and `mode_deficit` (1 - the emptiest mode's share relative to 1/8), which
tell 8 modes from a ring. The figure shows the reverse process and a map of -log p(x) on a
grid, each point's likelihood by the probability-flow ODE.
"""
import math
import time

import torch

import functx
from common import parse_example_args, init_mlp, energy_distance, adam, save_figure

BETA_MIN, BETA_MAX, T_EPS = 0.1, 20.0, 1e-3


# ----------------------------------------------------------------- data, model, SDE

def ring_of_gaussians(n, modes=8, radius=1.5, std=0.1):
    k = torch.randint(0, modes, (n,))
    angle = 2 * math.pi * k.float() / modes
    return radius * torch.stack([angle.cos(), angle.sin()], dim=1) + std * torch.randn(n, 2)


def beta(t):
    return BETA_MIN + t * (BETA_MAX - BETA_MIN)


def alpha_sigma(t):
    log_a = -0.25 * t ** 2 * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN
    a = log_a.exp()
    return a, (1 - a ** 2).sqrt()


N_FREQS = 4
# Random Fourier features of x (Tancik et al. 2020): a plain MLP on (x, t) learns the smooth
# radial part of the score quickly but needs thousands of steps for the 8 sharp modes (the quick
# run drew a ring); sin/cos of random projections of x give it those high frequencies at once.
X_FREQS = 1.5 * torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
N_IN = 2 + 2 * X_FREQS.shape[1] + 2 * N_FREQS


def eps_model(params, x, t):
    """eps_theta(x, t). x: (..., 2), t: (..., 1) (or broadcastable); Fourier embeddings of x and t."""
    tf = t * (torch.arange(1, N_FREQS + 1, device=x.device) * math.pi)   # constants of the graph
    xf = x @ X_FREQS.to(x.device)
    h = torch.cat([x, xf.sin(), xf.cos(), tf.sin(), tf.cos()], dim=-1)
    n = len(params) // 2
    for i in range(n):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < n - 1:
            h = torch.nn.functional.silu(h)
    return h


def score(params, x, t):
    return -eps_model(params, x, t) / alpha_sigma(t)[1]


# ----------------------------------------------------------------- training

def loss_fn(params, x0):
    # t ~ T_EPS + (1 - T_EPS) u^2: more training where the modes separate (small t); random
    # numbers inside jit come from *_like of an argument
    t = T_EPS + (1 - T_EPS) * torch.rand_like(x0[:, :1]) ** 2
    eps = torch.randn_like(x0)
    a, s = alpha_sigma(t)
    return ((eps_model(params, a * x0 + s * eps, t) - eps) ** 2).sum(-1).mean()


def train(data, steps, batch, lr, hidden):
    params = init_mlp([N_IN, hidden, hidden, 2])
    step_fn = functx.jit(functx.value_and_grad(loss_fn))
    init, update = adam(lr)
    state, t0, avg = init(params), time.time(), None
    for step in range(1, steps + 1):
        loss, grads = step_fn(params, data[torch.randint(0, len(data), (batch,))])
        params, state = update(params, grads, state, step, lr_scale=0.5 * (1 + math.cos(math.pi * step / steps)))
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        if step % max(1, steps // 5) == 0 or step == steps:
            print(f"step {step:5d}/{steps}  loss (ema) {avg:.4f}  ({time.time() - t0:.1f}s)", flush=True)
    return params


# ----------------------------------------------------------------- sampling

@functx.jit
def sample_path(params, x, ts):
    """Euler-Maruyama on the reverse SDE from ts[0] down to ts[-1]: one functx.scan over the
    steps (traced once whatever their number; fresh noise every step). Returns (x, path)."""
    def step(x, t_and_dt):
        t, dt = t_and_dt[0], t_and_dt[1]
        b = beta(t)
        drift = -0.5 * b * x - b * score(params, x, t.expand(x.shape[0], 1))
        x = x - drift * dt + (b * dt).sqrt() * torch.randn_like(x)
        return x, x
    return functx.scan(step, x, torch.stack([ts[:-1], ts[:-1] - ts[1:]], dim=1))


def sample(params, n, steps, snapshots=()):
    x0, ts = torch.randn(n, 2), torch.linspace(1.0, T_EPS, steps + 1)
    x, path = sample_path(params, x0, ts)
    saved = {ts[i].item(): x0 if i == 0 else path[i - 1] for i in snapshots}
    saved[T_EPS] = x
    return x, saved


# ----------------------------------------------------------------- likelihood (probability-flow ODE)

def ode_drift(params, x, t):
    """f(x, t) for one point x: (2,), t: 0-d."""
    return -0.5 * beta(t) * (x + score(params, x, t[None]))


def div_exact(params, x, t):
    """tr(df/dx) per point: the full 2x2 Jacobian by forward mode, vmapped over the batch."""
    jac = functx.vmap(functx.jacfwd(ode_drift, argnums=1), in_axes=(None, 0, None))(params, x, t)
    return jac.diagonal(dim1=-2, dim2=-1).sum(-1)


def div_hutchinson(params, x, t, v):
    """v^T (df/dx) v with one jvp per point: unbiased for E[v v^T] = I (Rademacher v here)."""
    def one(xi, vi):
        return (vi * functx.jvp(lambda y: ode_drift(params, y, t), (xi,), (vi,))[1]).sum()
    return functx.vmap(one)(x, v)


@functx.jit
def ode_solve(params, x, ts, v):
    """RK4 on d(x, logdet)/dt = (f, div f) over the grid ts, one functx.scan over the steps.
    v=None: exact divergence, else Hutchinson (None is part of jit's key: two traces)."""
    def rhs(x, t):
        f = functx.vmap(ode_drift, in_axes=(None, 0, None))(params, x, t)
        div = div_exact(params, x, t) if v is None else div_hutchinson(params, x, t, v)
        return f, div

    def rk4_step(carry, t_and_dt):
        (x, logdet), t, dt = carry, t_and_dt[0], t_and_dt[1]
        k1 = rhs(x, t)
        k2 = rhs(x + 0.5 * dt * k1[0], t + 0.5 * dt)
        k3 = rhs(x + 0.5 * dt * k2[0], t + 0.5 * dt)
        k4 = rhs(x + dt * k3[0], t + dt)
        x = x + dt / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        logdet = logdet + dt / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
        return (x, logdet), None
    (x, logdet), _ = functx.scan(rk4_step, (x, torch.zeros_like(x[:, 0])),
                                 torch.stack([ts[:-1], ts[1:] - ts[:-1]], dim=1))
    return x, logdet


def nll(params, x0, steps, hutchinson=False):
    """-log p_0(x0) in nats per point, integrating the probability-flow ODE from T_EPS to 1."""
    v = (torch.randint(0, 2, x0.shape) * 2 - 1).float() if hutchinson else None
    x, logdet = ode_solve(params, x0, torch.linspace(T_EPS, 1.0, steps + 1), v)
    log_prior = -0.5 * (x ** 2).sum(-1) - math.log(2 * math.pi)
    return -(log_prior + logdet)


# ----------------------------------------------------------------- evaluation

MODES, RADIUS, STD = 8, 1.5, 0.1


def mode_stats(x, near=2 * STD):
    """(fraction of points within `near` of no mode, 1 - the emptiest mode's share of the points
    relative to an even 1/MODES share). The data itself scores about (0.14, 0.15); a ring about
    (0.8, 0.8), a Gaussian about (0.95, 0.95)."""
    angle = 2 * math.pi * torch.arange(MODES, device=x.device) / MODES
    dist = torch.cdist(x, RADIUS * torch.stack([angle.cos(), angle.sin()], dim=1))
    on = dist.min(1).values < near
    counts = torch.bincount(dist.argmin(1)[on], minlength=MODES).float()
    return 1 - on.float().mean().item(), 1 - (counts.min() * MODES / len(x)).item()


def density_map(params, ode_steps, lim=2.5, res=48):
    """-log p_0 on a res x res grid by the probability-flow ODE (exact divergence)."""
    g = torch.linspace(-lim, lim, res)
    grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), dim=-1).reshape(-1, 2)
    return nll(params, grid, ode_steps).reshape(res, res)


# ----------------------------------------------------------------- main

def main():
    args = parse_example_args(__doc__)

    data, test = ring_of_gaussians(20000, MODES, RADIUS, STD), ring_of_gaussians(2000, MODES, RADIUS, STD)
    t0 = time.time()
    params = train(data, steps=1000 if args.quick else 10000, batch=256 if args.quick else 512,
                   lr=1e-2 if args.quick else 3e-3, hidden=96 if args.quick else 128)

    steps = 100 if args.quick else 1000
    snaps = [0, steps // 2, int(steps * 0.8), int(steps * 0.9)]
    samples, saved = sample(params, 2000, steps, snapshots=snaps)

    gauss = test.mean(0) + torch.randn(2000, 2) @ torch.linalg.cholesky(torch.cov(test.T)).T
    ed, ed_base = energy_distance(samples, test).item(), energy_distance(gauss, test).item()
    (off, deficit), (off_g, deficit_g), (off_d, deficit_d) = map(mode_stats, (samples, gauss, test))

    n_test, ode_steps = (200, 12) if args.quick else (2000, 100)
    xt = test[:n_test]
    t1 = time.time()
    nll_exact = nll(params, xt, ode_steps).mean().item()
    nll_hutch = nll(params, xt, ode_steps, hutchinson=True).mean().item()
    nll_map = density_map(params, ode_steps, res=48 if args.quick else 128)
    print(f"likelihoods by the probability-flow ODE ({ode_steps} RK4 steps, {n_test} test points "
          f"and a {nll_map.shape[0]}^2 grid): {time.time() - t1:.1f}s")
    diff = xt - test.mean(0)
    cov = torch.cov(test.T)
    nll_gauss = (0.5 * (diff @ torch.linalg.inv(cov) * diff).sum(-1)
                 + 0.5 * torch.logdet(cov) + math.log(2 * math.pi)).mean().item()
    print(f"total {time.time() - t0:.1f}s")
    print(f"NLL (nats/point): exact divergence {nll_exact:.3f}, Hutchinson {nll_hutch:.3f}, Gaussian fit {nll_gauss:.3f}"
          f" (the data's own entropy: {math.log(MODES) + 1 + math.log(2 * math.pi * STD ** 2):.3f})")
    print(f"samples farther than {2 * STD} from every mode: {off:.3f} (data {off_d:.3f}, Gaussian fit {off_g:.3f}); "
          f"emptiest mode's deficit: {deficit:.3f} (data {deficit_d:.3f}, Gaussian fit {deficit_g:.3f})")
    print(f"METRIC energy_distance={ed:.4f} baseline={ed_base:.4f}")
    print(f"METRIC nll={nll_exact:.4f} baseline={nll_gauss:.4f}")
    print(f"METRIC off_mode_fraction={off:.4f} baseline={off_g:.4f}")
    print(f"METRIC mode_deficit={deficit:.4f} baseline={deficit_g:.4f}")

    # ------------------------------------------------------------- figure
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no figure")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(saved) + 2, figsize=(3.2 * (len(saved) + 2), 3.4))
    for ax, (t, x) in zip(axes, sorted(saved.items(), reverse=True)):
        ax.scatter(*x.cpu().T, s=1, alpha=0.4, color="tab:green")
        ax.set_title(f"reverse process, t = {t:.2f}")
    axes[-2].scatter(*test.cpu().T, s=1, alpha=0.4)
    axes[-2].set_title("data")
    im = axes[-1].imshow(nll_map.clamp(max=8).cpu(), origin="lower", extent=(-2.5, 2.5, -2.5, 2.5), cmap="viridis_r")
    fig.colorbar(im, ax=axes[-1], fraction=0.046)
    axes[-1].set_title("-log p(x), probability-flow ODE")
    for ax in axes:
        ax.set_xlim(-2.5, 2.5)
        ax.set_ylim(-2.5, 2.5)
        ax.set_aspect("equal")
    save_figure(fig, args.out, "diffusion_2d.png")


if __name__ == "__main__":
    main()
