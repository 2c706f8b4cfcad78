"""Data-parallel DP-SGD across processes with functx.spmd on torch.distributed.

Every process holds the same model parameters (replicated) and its own shard of each
global batch. One step, written for one rank's values:

    per-example grads  vmap(grad(loss_one))  on this rank's examples   (pvary: per-rank params)
    clip each to norm <= C, sum them, psum over the ranks, add N(0, (sigma C)^2), divide by B

so the update is exactly DP-SGD on the global batch, whatever the number of processes; the
gradient drops into an ordinary torch.optim.SGD step on every rank. The script then
recomputes the run on one process (plain vmap(grad) on the whole batch) and prints

    METRIC grad_max_abs_diff=...  baseline=1e-5      (first step's gradient, multi vs single process)
    METRIC param_max_abs_diff=... baseline=1e-5      (parameters after training)
    METRIC train_loss=...         baseline=...       (after vs before training)

Run it with torchrun (gloo on CPU, nccl with --device cuda), or let --quick spawn two local
gloo processes itself, or run it plainly for one process:

    torchrun --nproc_per_node=2 examples/spmd_data_parallel.py
    python examples/spmd_data_parallel.py --quick
"""
import argparse
import os
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

import functx
from functx.distributed import shard

GLOBAL_BATCH, DIM, CLASSES = 64, 16, 4
CLIP, NOISE, LR = 1.0, 0.5, 0.5


def make_model():
    torch.manual_seed(0)       # the same initial parameters on every rank
    return nn.Sequential(nn.Linear(DIM, 32), nn.Tanh(), nn.Linear(32, CLASSES))


def make_batch(step):
    """The global batch of `step` (every rank makes the same one, then keeps its shard)."""
    g = torch.Generator().manual_seed(1000 + step)
    centers = torch.randn(CLASSES, DIM, generator=torch.Generator().manual_seed(7))
    y = torch.randint(0, CLASSES, (GLOBAL_BATCH,), generator=g)
    return centers[y] + torch.randn(GLOBAL_BATCH, DIM, generator=g), y


def dp_sgd_grad(model, axis_name=None):
    """The DP-SGD gradient of one batch: per-example grads, clipped, summed (over the process
    axis too, when given), plus noise, over the global batch size."""
    def loss_one(params, x, y):
        return F.cross_entropy(functx.functional_call(model, params, (x[None],)), y[None])

    def grad(params, x, y, noise):
        if axis_name is not None:      # per-rank parameters: grad must not sum over ranks here
            params = functx.lax.pvary(params, axis_name)
        per = functx.vmap(functx.grad(loss_one), in_axes=(None, 0, 0))(params, x, y)
        norms = torch.sqrt(sum((g.reshape(g.shape[0], -1) ** 2).sum(1) for g in per.values()))
        scale = (CLIP / (norms + 1e-6)).clamp(max=1.0)
        total = {k: torch.einsum("b,b...->...", scale, g) for k, g in per.items()}
        if axis_name is not None:
            total = functx.psum(total, axis_name)
        return {k: (t + NOISE * CLIP * noise[k]) / GLOBAL_BATCH for k, t in total.items()}
    return grad


def train(steps, log):
    """Train on this process's shards; returns (first gradient, final params, losses)."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    step_fn = functx.jit(functx.spmd(dp_sgd_grad(model, "dp"), "dp", in_specs=(None, 0, 0, None), out_specs=None))
    first, t0 = None, None
    for step in range(steps):
        x, y = make_batch(step)
        params = {k: v.detach() for k, v in model.named_parameters()}
        noise = noise_for(step, params)                        # replicated: the same draw on every rank
        grads = step_fn(params, shard(x), shard(y), noise)
        first = grads if first is None else first
        for name, p in model.named_parameters():
            p.grad = grads[name]
        opt.step()                                             # an ordinary torch optimizer step
        if step == 0:
            t0 = time.perf_counter()                           # after compilation
    per_step = (time.perf_counter() - t0) / max(steps - 1, 1)
    log(f"{steps} steps, {per_step * 1e3:.2f} ms/step after the first (world size {dist.get_world_size()})")
    return first, {k: v.detach() for k, v in model.named_parameters()}


def noise_for(step, params):
    g = torch.Generator().manual_seed(step)
    return {k: torch.randn(v.shape, generator=g) for k, v in params.items()}


def reference(steps):
    """The same training on one process and the whole batch, without spmd."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    grad_fn = dp_sgd_grad(model)
    first = None
    for step in range(steps):
        x, y = make_batch(step)
        params = {k: v.detach() for k, v in model.named_parameters()}
        grads = grad_fn(params, x, y, noise_for(step, params))
        first = grads if first is None else first
        for name, p in model.named_parameters():
            p.grad = grads[name]
        opt.step()
    return first, {k: v.detach() for k, v in model.named_parameters()}


def loss_of(params):
    model = make_model()
    x, y = make_batch(10_000)
    return F.cross_entropy(functx.functional_call(model, params, (x,)), y).item()


def run(steps):
    rank = dist.get_rank()
    log = (lambda s: print(f"[rank {rank}] {s}", flush=True))
    first, params = train(steps, log)
    if rank == 0:
        ref_first, ref_params = reference(steps)
        diff_g = max((first[k] - ref_first[k]).abs().max().item() for k in first)
        diff_p = max((params[k] - ref_params[k]).abs().max().item() for k in params)
        init = {k: v.detach() for k, v in make_model().named_parameters()}
        print(f"METRIC grad_max_abs_diff={diff_g:.3e} baseline=1e-5")
        print(f"METRIC param_max_abs_diff={diff_p:.3e} baseline=1e-5")
        print(f"METRIC train_loss={loss_of(params):.4f} baseline={loss_of(init):.4f}")


def _spawned(rank, world, store, steps):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        run(steps)
    finally:
        dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="spawn 2 local gloo processes, few steps")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--out", default=None, help="unused (the examples' common flag)")
    args = ap.parse_args()
    steps = args.steps or (5 if args.quick else 60)
    if "RANK" in os.environ:                                   # launched by torchrun
        dist.init_process_group("gloo")
        try:
            run(steps)
        finally:
            dist.destroy_process_group()
    elif args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(_spawned, args=(2, os.path.join(tmp, "store"), steps), nprocs=2)
    else:                                                      # one process: a group of size 1
        with tempfile.TemporaryDirectory() as tmp:
            _spawned(0, 1, os.path.join(tmp, "store"), steps)


if __name__ == "__main__":
    main()
