"""A continuous-time consistency model (sCM, Lu & Song 2024) with a tiny Transformer: the
training step takes a jvp through attention, which torch's SDPA cannot do (no forward-mode AD,
pytorch/pytorch#128971) and functx's fused attention primitive can.

Data: rotated squares of radius 1 or 2 -- each example is 4 tokens (the corners, in order),
so the model has to relate tokens to each other. TrigFlow parameterization (sigma_d = data
std): x_t = cos(t) x_0 + sin(t) z, f(x_t, t) = cos(t) x_t - sin(t) sigma_d F(x_t / sigma_d, t).
Each step (Algorithm 1 of the sCM paper, consistency training, no adaptive weighting):

    J     = jvp(F_theta-, (x_t / sigma_d, t), (cos t sin t dx_t/dt, cos t sin t sigma_d))
          = cos t sin t sigma_d dF/dt
    g     = -cos^2 t (sigma_d F_theta- - dx_t/dt) - r (cos t sin t x_t + J)
    loss  = || F_theta(x_t / sigma_d, t) - F_theta- - g / (||g|| + 0.1) ||^2

with theta- = stop_gradient(theta), dx_t/dt = cos t z - sin t x_0 and a tangent warmup r.
The whole step -- functx.jvp through the Transformer (attention included) inside
functx.value_and_grad -- is one functx.jit'd function.

    python examples/consistency_jvp.py [--quick] [--out DIR]

Prints `METRIC energy_distance_2step=... baseline=...`: the energy distance from 2-step
samples to held-out data, against the same sampler with the untrained network (the --quick
run is too short to approach the data; it also prints the distance of a Gaussian with the
data's mean and covariance, which a full run should beat).
"""
import math
import time

import torch
import torch.nn.functional as F

import functx
from common import parse_example_args, adam, energy_distance, save_figure

TOKENS, WIDTH, HEADS, BLOCKS, T_FEATURES = 4, 32, 2, 2, 8


def rotated_squares(n):
    """(n, 4, 2): the corners of squares with random rotation and radius 1 or 2."""
    theta = 2 * math.pi * torch.rand(n, 1)
    radius = 1.0 + (torch.rand(n, 1) < 0.5).float()
    angles = theta + torch.arange(TOKENS) * (2 * math.pi / TOKENS)
    return radius[..., None] * torch.stack([angles.cos(), angles.sin()], -1) + 0.05 * torch.randn(n, TOKENS, 2)


# ----------------------------------------------------------------- the tiny Transformer

def init_params():
    def lin(m, n):
        return torch.randn(m, n) * math.sqrt(1.0 / m)
    p = {"w_in": lin(2, WIDTH), "pos": 0.1 * torch.randn(TOKENS, WIDTH), "w_t": lin(2 * T_FEATURES, WIDTH),
         "w_out": torch.zeros(WIDTH, 2)}
    for b in range(BLOCKS):
        p[f"qkv{b}"], p[f"o{b}"] = lin(WIDTH, 3 * WIDTH), lin(WIDTH, WIDTH) * 0.5
        p[f"up{b}"], p[f"down{b}"] = lin(WIDTH, 2 * WIDTH), lin(2 * WIDTH, WIDTH) * 0.5
    return p


def network(p, x, t):
    """F(x, t): (B, 4, 2), (B,) -> (B, 4, 2)."""
    b = x.shape[0]
    freqs = torch.arange(1, T_FEATURES + 1, dtype=x.dtype)
    temb = torch.cat([(t[:, None] * freqs).sin(), (t[:, None] * freqs).cos()], -1)
    h = x @ p["w_in"] + p["pos"] + (temb @ p["w_t"])[:, None]
    for i in range(BLOCKS):
        a = F.layer_norm(h, (WIDTH,))
        q, k, v = (a @ p[f"qkv{i}"]).reshape(b, TOKENS, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)             # the fused attention primitive
        h = h + o.transpose(1, 2).reshape(b, TOKENS, WIDTH) @ p[f"o{i}"]
        h = h + F.silu(F.layer_norm(h, (WIDTH,)) @ p[f"up{i}"]) @ p[f"down{i}"]
    return F.layer_norm(h, (WIDTH,)) @ p["w_out"]


def consistency(p, x_t, t, sigma_d):
    """f(x_t, t) = cos t x_t - sin t sigma_d F(x_t / sigma_d, t)."""
    c, s = t.cos()[:, None, None], t.sin()[:, None, None]
    return c * x_t - s * sigma_d * network(p, x_t / sigma_d, t)


# ----------------------------------------------------------------- the sCM loss

def scm_loss(p, x0, z, n, sigma_d, warmup):
    """Continuous-time consistency training loss (x0 data, z ~ N(0, sigma_d^2), n ~ N(0, 1))."""
    t = torch.atan(torch.exp(-1.0 + 1.4 * n) / sigma_d)            # log-normal proposal (P_mean, P_std)
    c, s = t.cos()[:, None, None], t.sin()[:, None, None]
    x_t = c * x0 + s * z
    dxt_dt = c * z - s * x0
    p_minus = {k: v.detach() for k, v in p.items()}
    # the jvp along (cos t sin t dx_t/dt, cos t sin t sigma_d) is cos t sin t sigma_d dF/dt
    f_minus, scaled_df_dt = functx.jvp(lambda x, tt: network(p_minus, x, tt),
                                       (x_t / sigma_d, t), (c * s * dxt_dt, (c * s * sigma_d)[:, 0, 0]))
    g = -c * c * (sigma_d * f_minus - dxt_dt) - warmup * (c * s * x_t + scaled_df_dt)
    g = g / (g.flatten(1).norm(dim=1)[:, None, None] + 0.1)
    diff = network(p, x_t / sigma_d, t) - f_minus - g
    return (diff * diff).mean()


def sample(p, n, sigma_d, mid_t=1.1):
    """Two consistency steps: from noise at t = pi/2, then re-noise to mid_t and map again."""
    z = sigma_d * torch.randn(n, TOKENS, 2)
    x = consistency(p, z, torch.full((n,), math.pi / 2), sigma_d)
    t = torch.full((n,), mid_t)
    x_t = math.cos(mid_t) * x + math.sin(mid_t) * sigma_d * torch.randn(n, TOKENS, 2)
    return x, consistency(p, x_t, t, sigma_d)


# ----------------------------------------------------------------- main

def main():
    args = parse_example_args(__doc__)
    if args.device == "cpu":
        torch.set_num_threads(1)      # tensors of a few thousand elements: threads cost more than they save
    steps, batch = (150, 128) if args.quick else (4000, 256)
    data, test = rotated_squares(20000), rotated_squares(2000)
    sigma_d = data.std().item()

    params = init_params()
    with torch.no_grad():
        untrained = sample(params, 2000, sigma_d)[1]
    step_fn = functx.jit(functx.value_and_grad(scm_loss))
    init, update = adam(2e-3)
    state = init(params)
    t0 = time.time()
    for step in range(1, steps + 1):
        x0 = data[torch.randint(0, len(data), (batch,))]
        warmup = min(1.0, step / (0.3 * steps))
        loss, grads = step_fn(params, x0, sigma_d * torch.randn_like(x0), torch.randn(batch), sigma_d, warmup)
        params, state = update(params, grads, state, step, lr_scale=min(1.0, 2 * (1 - step / steps) + 0.05))
        if step % max(1, steps // 5) == 0 or step == steps:
            print(f"step {step:5d}/{steps}  loss {loss.item():.4f}  ({time.time() - t0:.1f}s)", flush=True)

    with torch.no_grad():
        one, two = sample(params, 2000, sigma_d)
    flat = test.flatten(1)
    gauss = (flat.mean(0) + torch.randn(2000, flat.shape[1]) @ torch.linalg.cholesky(torch.cov(flat.T)).T)
    print(f"energy distance: 1-step {energy_distance(one.flatten(1), flat).item():.4f}, "
          f"Gaussian with the data's moments {energy_distance(gauss, flat).item():.4f}")
    baseline = energy_distance(untrained.flatten(1), flat).item()
    print(f"METRIC energy_distance_2step={energy_distance(two.flatten(1), flat).item():.4f} "
          f"baseline={baseline:.4f}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    shown = [("data", test), ("Gaussian baseline", gauss.reshape(-1, TOKENS, 2)), ("sCM, 2 steps", two)]
    for ax, (title, x) in zip(axes, shown):
        x = x[:12].cpu()
        for i, sq in enumerate(x):
            closed = torch.cat([sq, sq[:1]])
            ax.plot(*closed.T, "-o", ms=2, lw=0.8, color=f"C{i % 10}")
        ax.set_title(title)
        ax.set_xlim(-2.6, 2.6)
        ax.set_ylim(-2.6, 2.6)
        ax.set_aspect("equal")
    save_figure(fig, args.out, "consistency_jvp.png")


if __name__ == "__main__":
    main()
