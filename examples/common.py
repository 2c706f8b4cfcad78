"""Small pieces the examples share: the command line, an MLP's parameters, Adam on a dict
of tensors, and the energy distance between two samples."""
import argparse
import math
import os

import torch


def parse_example_args(doc):
    """--quick / --out / --seed / --device; seeds torch, sets the default device, makes --out."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small run (< 60 s on 2 CPU cores)")
    ap.add_argument("--out", default="out", help="directory for the figure")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="on cuda, functx.jit compiles with the Triton backend")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_default_device(args.device)       # every tensor the example creates lives there
    os.makedirs(args.out, exist_ok=True)
    return args


def init_mlp(sizes):
    """{w0, b0, w1, b1, ...} for an MLP with these layer sizes (x @ w + b)."""
    params = {}
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        params[f"w{i}"] = torch.randn(m, n) * math.sqrt(1.0 / m)
        params[f"b{i}"] = torch.zeros(n)
    return params


def adam(lr, b1=0.9, b2=0.999, eps=1e-8):
    """Adam on a dict of tensors; returns (init, update)."""
    def init(params):
        return {k: torch.zeros_like(v) for k, v in params.items()}, {k: torch.zeros_like(v) for k, v in params.items()}

    def update(params, grads, state, step, lr_scale=1.0):
        m, v = state
        for k in params:
            m[k] = b1 * m[k] + (1 - b1) * grads[k]
            v[k] = b2 * v[k] + (1 - b2) * grads[k] ** 2
            mhat = m[k] / (1 - b1 ** step)
            vhat = v[k] / (1 - b2 ** step)
            params[k] = params[k] - lr * lr_scale * mhat / (vhat.sqrt() + eps)
        return params, (m, v)
    return init, update


def energy_distance(x, y):
    """2 E|x-y| - E|x-x'| - E|y-y'|: zero iff the distributions are equal."""
    return 2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()


def save_figure(fig, out_dir, name):
    """Lay out, write out_dir/name at 90 dpi, and say where."""
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"wrote {path}")
