"""Checks that run inside each process of a gloo group, launched by tests/test_spmd.py.

    python tests/spmd_worker.py RANK WORLD_SIZE STORE_FILE CHECK[,CHECK...]

Every rank builds the same seeded global data, runs functx.spmd on its shard and compares
with an oracle computed in-process on the whole batch (single-process torch.autograd /
torch.func / a Python loop). A failed check raises, so the process exits non-zero with the
traceback, which test_spmd.py reports.
"""
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F

import functx
from functx.distributed import gather, shard

torch.set_default_dtype(torch.float64)
close = torch.testing.assert_close


def data(n=12, d=3, h=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = {"w1": torch.randn(d, h, generator=g), "b1": torch.randn(h, generator=g),
              "w2": torch.randn(h, 1, generator=g)}
    x, y = torch.randn(n, d, generator=g), torch.randn(n, 1, generator=g)
    return params, x, y


def local_loss(p, x, y):
    """The mean squared error of a small MLP on this rank's rows."""
    return ((torch.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] - y) ** 2).mean()


def dp_loss(p, x, y):
    """The global-batch mean loss (equal shards): pmean of the local means."""
    return functx.pmean(local_loss(p, x, y), "dp")


def full_batch_grad(p, x, y):
    leaves = {k: v.clone().requires_grad_() for k, v in p.items()}
    loss = local_loss(leaves, x, y)
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


def check_collectives():
    n, r = dist.get_world_size(), dist.get_rank()
    x = torch.randn(n * 2, 3, generator=torch.Generator().manual_seed(1))
    xl = shard(x)

    def f(v):
        return (functx.psum(v, "dp"), functx.pmean(v, "dp"), functx.pmax(v, "dp"),
                functx.all_gather(v, "dp"), functx.axis_index("dp").reshape(1), v * 2)
    s, m, mx, ag, idx, local = functx.spmd(f, "dp", in_specs=0, out_specs=(None, None, None, None, 0, 0))(xl)
    blocks = x.reshape(n, 2, 3)
    close(s, blocks.sum(0))
    close(m, blocks.mean(0))
    close(mx, blocks.amax(0))
    close(ag, blocks)
    close(gather(idx), torch.arange(n))
    close(gather(local), x * 2)
    assert idx.item() == r
    # A Python number's psum is the axis size (as in JAX); pytrees go leaf by leaf.
    tot = functx.spmd(lambda v: functx.psum({"a": v.sum(), "one": 1.0}, "dp"), "dp", 0, None)(xl)
    close(tot["a"], x.sum())
    close(tot["one"], torch.tensor(float(n)))


def check_grad_inside():
    """spmd(grad(loss)) with replicated params and a sharded batch = the full-batch gradient."""
    p, x, y = data()
    want = full_batch_grad(p, x, y)
    step = functx.spmd(functx.grad(dp_loss), "dp", in_specs=(None, 0, 0), out_specs=None)
    close(step(p, shard(x), shard(y)), want)
    # The same loss spelled psum(local sum) / N.
    n_total = x.shape[0]

    def sum_loss(p, x, y):
        return functx.psum(local_loss(p, x, y) * x.shape[0], "dp") / n_total
    close(functx.spmd(functx.grad(sum_loss), "dp", (None, 0, 0), None)(p, shard(x), shard(y)), want)
    # A per-rank (varying) loss: its gradient is the gradient of the sum over ranks, as in JAX.
    n = dist.get_world_size()
    got = functx.spmd(functx.grad(local_loss), "dp", (None, 0, 0), None)(p, shard(x), shard(y))
    close(got, {k: n * v for k, v in want.items()})
    # value_and_grad and vjp agree; the value is replicated.
    val, g = functx.spmd(functx.value_and_grad(dp_loss), "dp", (None, 0, 0), None)(p, shard(x), shard(y))
    close(val, local_loss(p, x, y))
    close(g, want)

    def vjp_grad(p, x, y):
        out, fn = functx.vjp(lambda q: dp_loss(q, x, y), p)
        return fn(torch.ones_like(out))[0]
    close(functx.spmd(vjp_grad, "dp", (None, 0, 0), None)(p, shard(x), shard(y)), want)
    # Gradient with respect to the sharded input: this rank's block of the full-batch one.
    xg = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(local_loss(p, xg, y), [xg])
    got = functx.spmd(functx.grad(dp_loss, argnums=1), "dp", (None, 0, 0), 0)(p, shard(x), shard(y))
    close(gather(got), gx)


def check_grad_outside():
    """grad of a function that calls spmd differentiates the global function."""
    p, x, y = data()
    want = full_batch_grad(p, x, y)
    loss = functx.spmd(dp_loss, "dp", in_specs=(None, 0, 0), out_specs=None)
    xl, yl = shard(x), shard(y)
    close(functx.grad(lambda q: loss(q, xl, yl))(p), want)
    close(functx.grad(lambda q: 3.0 * loss(q, xl, yl) ** 2)(p),
          {k: 6.0 * local_loss(p, x, y) * v for k, v in want.items()})
    # hessian-vector products through spmd (forward over reverse) against torch.func.
    v = {k: torch.ones_like(t) for k, t in p.items()}
    _, hvp = functx.jvp(functx.grad(lambda q: loss(q, xl, yl)), (p,), (v,))
    _, want_hvp = torch.func.jvp(torch.func.grad(lambda q: local_loss(q, x, y)), (p,), (v,))
    close(hvp, want_hvp)
    # grad of grad inside spmd (the gradient of the squared gradient norm).
    def gnorm(q, x, y):
        g = functx.grad(dp_loss)(q, x, y)
        return sum((t ** 2).sum() for t in g.values())
    want_gn = torch.func.grad(lambda q: sum((t ** 2).sum() for t in torch.func.grad(local_loss)(q, x, y).values()))(p)
    close(functx.spmd(functx.grad(gnorm), "dp", (None, 0, 0), None)(p, xl, yl), want_gn)


def check_jvp():
    p, x, y = data()
    v = {k: torch.randn_like(t, generator=torch.Generator().manual_seed(3)) for k, t in p.items()}
    want = torch.func.jvp(lambda q: local_loss(q, x, y), (p,), (v,))
    inside = functx.spmd(lambda q, xl, yl: functx.jvp(lambda r: dp_loss(r, xl, yl), (q,), (v,)),
                         "dp", (None, 0, 0), None)(p, shard(x), shard(y))
    close(inside, want)
    loss = functx.spmd(dp_loss, "dp", (None, 0, 0), None)
    close(functx.jvp(lambda q: loss(q, shard(x), shard(y)), (p,), (v,)), want)


def check_vmap():
    p, x, y = data()
    n = dist.get_world_size()
    xl, yl = shard(x), shard(y)
    # Nested named axes: psum over the vmap axis and the process axis at once.
    tot = functx.spmd(functx.vmap(lambda r: functx.psum(r, ("v", "dp")), axis_name="v"), "dp", 0, 0)(xl)
    close(gather(tot), x.sum(0).expand_as(x))
    cent = functx.spmd(functx.vmap(lambda r: r - functx.pmean(r, ("dp", "v")), axis_name="v"), "dp", 0, 0)(xl)
    close(gather(cent), x - x.mean(0))
    # DP-SGD: per-example gradients (params marked per-rank with pvary, so nothing is summed
    # over ranks), clipped, summed locally, then psum'd; against a Python loop on one process.
    def clipped_sum(q, xs, ys):
        qv = functx.lax.pvary(q, "dp")
        per = functx.vmap(functx.grad(local_loss), in_axes=(None, 0, 0))(qv, xs[:, None], ys[:, None])
        norms = torch.sqrt(sum((g.reshape(g.shape[0], -1) ** 2).sum(1) for g in per.values()))
        scale = torch.clamp(1.0 / norms, max=1.0)
        return functx.psum({k: (g * scale.reshape((-1,) + (1,) * (g.dim() - 1))).sum(0) for k, g in per.items()}, "dp")
    got = functx.spmd(clipped_sum, "dp", (None, 0, 0), None)(p, xl, yl)
    want = {k: torch.zeros_like(v) for k, v in p.items()}
    for i in range(x.shape[0]):
        g = full_batch_grad(p, x[i:i + 1], y[i:i + 1])
        norm = torch.sqrt(sum((t ** 2).sum() for t in g.values()))
        for k in want:
            want[k] += g[k] * min(1.0, 1.0 / norm.item())
    close(got, want)
    # vmap outside spmd: an ensemble of parameter sets on the same sharded batch.
    stack = {k: torch.stack([v, 2 * v]) for k, v in p.items()}
    loss = functx.spmd(dp_loss, "dp", (None, 0, 0), None)
    got = functx.vmap(functx.grad(lambda q: loss(q, xl, yl)))(stack)
    for j in range(2):
        close({k: v[j] for k, v in got.items()}, full_batch_grad({k: v[j] for k, v in stack.items()}, x, y))
    assert n == dist.get_world_size()


def check_jit():
    p, x, y = data()
    want = full_batch_grad(p, x, y)
    step = functx.spmd(functx.grad(dp_loss), "dp", (None, 0, 0), None)
    for backend in ("eager", "triton"):
        jitted = functx.jit(step, backend=backend)
        for _ in range(2):            # the second call runs the cached compiled code
            close(jitted(p, shard(x), shard(y)), want)
    ex = functx.explain(step)(p, shard(x), shard(y))
    code = ex.compiled.report()
    # The eager backend issues each gradient psum as soon as its operand exists (async) and
    # waits at first use: with three parameters, a psum is in flight before the last matmul.
    lines = code.splitlines()
    first_issue = next(i for i, line in enumerate(lines) if "_psum_start" in line)
    last_matmul = max(i for i, line in enumerate(lines) if "@" in line)
    assert first_issue < last_matmul and ".wait()" in code, code


def check_interop():
    """A functx gradient in an ordinary torch.optim step, and on a DDP-wrapped module."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    reference = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    reference.load_state_dict(model.state_dict())
    _, x, y = data()

    def loss(params, xl, yl):
        return functx.pmean(F.mse_loss(functx.functional_call(model, params, (xl,)), yl), "dp")
    step = functx.spmd(functx.grad(loss), "dp", (None, 0, 0), None)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        grads = step(dict(model.named_parameters()), shard(x), shard(y))
        for name, prm in model.named_parameters():
            prm.grad = grads[name]
        opt.step()
        ref_opt.zero_grad()
        F.mse_loss(reference(x), y).backward()
        ref_opt.step()
    close(dict(model.named_parameters()), dict(reference.named_parameters()))
    # DDP: functx differentiates ddp.module's parameters; DDP's own backward averages the same.
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    ddp.zero_grad()
    F.mse_loss(ddp(shard(x)), shard(y)).backward()

    def ddp_loss(params, xl, yl):
        return functx.pmean(F.mse_loss(functx.functional_call(ddp.module, params, (xl,)), yl), "dp")
    grads = functx.spmd(functx.grad(ddp_loss), "dp", (None, 0, 0), None)(
        {k: v.detach() for k, v in ddp.module.named_parameters()}, shard(x), shard(y))
    close(grads, {k: v.grad for k, v in ddp.module.named_parameters()})


def check_errors():
    p, x, y = data()
    xl = shard(x)
    try:
        functx.spmd(lambda v: v * 2, "dp", 0, None)(xl)
    except ValueError as e:
        assert "varies across the ranks" in str(e), e
    else:
        raise AssertionError("a varying output with out_specs=None did not raise")
    try:
        shard(torch.zeros(dist.get_world_size() * 2 + 1, 3))
    except ValueError as e:
        assert "not divisible by the group size" in str(e), e
    else:
        raise AssertionError("shard of an indivisible size did not raise")
    try:
        functx.vmap(lambda v: functx.spmd(lambda u: u, "i", 0, 0)(v), axis_name="i")(xl)
    except ValueError as e:
        assert "already bound" in str(e), e
    else:
        raise AssertionError("a clashing axis name did not raise")
    try:
        functx.spmd(lambda v: functx.psum(v, "other"), "dp", 0, None)(xl)
    except functx.core.UnboundAxisError as e:
        assert "'other'" in str(e), e
    else:
        raise AssertionError("a collective over an unknown axis name did not raise")


def check_timeout():
    """A rank that skips a collective: the others fail with an error naming it, in bounded time."""
    group = dist.new_group(timeout=timedelta(seconds=2))
    f = functx.spmd(lambda v: functx.psum(v, "dp"), "dp", 0, None, group=group)
    if dist.get_rank() == 0:
        try:
            f(torch.ones(2))
        except functx.FunctxError as err:
            e = err
            assert "functx.psum over process axis 'dp'" in str(e), e
        else:
            raise AssertionError("psum with a missing rank did not raise")
        print(str(e).splitlines()[0], flush=True)
    else:
        time.sleep(3.5)         # alive but never joining the psum: rank 0 must time out


def main():
    rank, world, store, checks = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4].split(",")
    t0 = time.time()
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    for name in checks:
        globals()[f"check_{name}"]()
        print(f"rank {rank}: {name} ok {time.time() - t0:.1f}s", flush=True)
    if "timeout" not in checks:
        dist.barrier()
    dist.destroy_process_group() if "timeout" not in checks else os._exit(0)


if __name__ == "__main__":
    main()
