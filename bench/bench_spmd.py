"""Data-parallel step scaling with functx.spmd on gloo: 1 process vs 2 on this machine.

    python bench/bench_spmd.py            # global batch 4096, MLP 64-256-256-1
    python bench/bench_spmd.py --quick    # smoke run

For each world size the script spawns that many gloo processes (one torch thread each);
every rank times jit(spmd(grad(loss))) on its shard of one fixed global batch (the step),
and psum of a gradient-sized pytree alone (the collective overhead per step). Rank 0
reports medians; the table prints step time, speedup over one process, and the share of
the step the collectives take. One process runs the same spmd code on a group of one, and
also plain jit(grad(loss)) without spmd (spmd's own overhead).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import functx  # noqa: E402
from _models import init_mlp  # noqa: E402
from _timing import fmt_time, per_call  # noqa: E402
from functx.distributed import shard  # noqa: E402


def local_loss(params, x, y):
    h = x
    for i in range(0, len(params) - 2, 2):
        h = torch.tanh(h @ params[i] + params[i + 1])
    return ((h @ params[-2] + params[-1]) - y).pow(2).mean()


def mlp_loss(params, x, y):
    return functx.pmean(local_loss(params, x, y), "dp")


def _rank_main(rank, world, store, batch, sizes, result_path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(0)
    params = [p.detach() for p in init_mlp(sizes)]
    x, y = torch.randn(batch, sizes[0], generator=g), torch.randn(batch, sizes[-1], generator=g)
    xl, yl = shard(x), shard(y)
    step = functx.jit(functx.spmd(functx.grad(mlp_loss), "dp", (None, 0, 0), None))
    reduce = functx.jit(functx.spmd(lambda gs: functx.psum(gs, "dp"), "dp", 0, None, check_rep=False))
    grads = [torch.randn(world * p.shape[0] if p.dim() else world, *p.shape[1:]) for p in params]
    grads_local = [shard(gr) for gr in grads]
    # Both ranks must call in lockstep: time a fixed number of calls, the same on every rank.
    t_step = per_call(step, params, xl, yl, number=10, repeat=5)
    t_psum = per_call(reduce, grads_local, number=10, repeat=5) if world > 1 else 0.0
    # Without spmd: plain jit(grad) on the whole batch (one process only).
    t_plain = per_call(functx.jit(functx.grad(local_loss)), params, x, y, number=10, repeat=5) if world == 1 else 0.0
    if rank == 0:
        with open(result_path, "w") as f:
            json.dump({"step": t_step, "psum": t_psum, "plain": t_plain}, f)
    dist.destroy_process_group()


def measure(world, batch, sizes):
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result.json")
        mp.spawn(_rank_main, args=(world, os.path.join(tmp, "store"), batch, sizes, result), nprocs=world)
        with open(result) as f:
            return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    batch, sizes = (256, [16, 32, 1]) if args.quick else (4096, [64, 256, 256, 1])
    res = {w: measure(w, batch, sizes) for w in (1, 2)}
    print(f"global batch {batch}, MLP {'-'.join(map(str, sizes))}, gloo, 1 torch thread per process")
    print("| processes | step (median) | speedup | psum of the gradients | psum share of the step |")
    print("| --- | --- | --- | --- | --- |")
    for w, r in res.items():
        share = f"{100 * r['psum'] / r['step']:.0f}%" if w > 1 else "-"
        print(f"| {w} | {fmt_time(r['step'])} | {res[1]['step'] / r['step']:.2f}x | "
              f"{fmt_time(r['psum']) if w > 1 else '-'} | {share} |")
    print(f"one process without spmd (jit(grad(loss)) on the whole batch): {fmt_time(res[1]['plain'])}")


if __name__ == "__main__":
    main()
