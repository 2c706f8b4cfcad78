"""functx.spmd across real processes: gloo process groups on localhost.

Each test launches WORLD processes of tests/spmd_worker.py (one process start costs
seconds, so one launch runs many checks); every check compares with a single-process
oracle on the whole batch inside the worker. A hung rank cannot hang the suite: the
workers use a process-group timeout and the launcher kills them after LAUNCH_TIMEOUT_S.
"""
import os
import re
import subprocess
import sys

import pytest
import torch

import functx
import functx.core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "spmd_worker.py")
LAUNCH_TIMEOUT_S = 300

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def launch(world, checks, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
               TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    store = str(tmp_path / "store")
    procs = [subprocess.Popen([sys.executable, WORKER, str(r), str(world), store, ",".join(checks)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
             for r in range(world)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=LAUNCH_TIMEOUT_S)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    report = "\n".join(f"--- rank {r} (exit {p.returncode}):\n{out[-4000:]}"
                       for r, (p, out) in enumerate(zip(procs, outputs)))
    assert all(p.returncode == 0 for p in procs), report
    for r, out in enumerate(outputs):
        for name in checks:
            assert f"rank {r}: {name} ok" in out, report
    return outputs


def test_two_processes(tmp_path):
    """Collectives, grad inside and outside spmd vs full-batch autograd (float64), jvp, vmap
    inside (nested axes, DP-SGD clipping) and outside, jit (eager and triton backends),
    torch.optim and DDP interop, error messages."""
    launch(2, ["collectives", "grad_inside", "grad_outside", "jvp", "vmap", "jit", "interop", "errors"],
           tmp_path)


def test_three_processes_and_a_rank_that_never_arrives(tmp_path):
    """A group size that is not a power of two; then a rank that skips a psum: the others
    fail within the group's timeout with an error naming the collective."""
    outputs = launch(3, ["collectives", "grad_inside", "timeout"], tmp_path)
    assert "Timed out" in outputs[0] or "timed out" in outputs[0].lower(), outputs[0]


@pytest.mark.slow
def test_three_processes_everything(tmp_path):
    launch(3, ["grad_outside", "jvp", "vmap", "jit", "interop", "errors"], tmp_path)


@pytest.mark.slow
def test_example_matches_one_process(tmp_path):
    """examples/spmd_data_parallel.py --quick: DP-SGD on 2 processes equals 1 process."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "spmd_data_parallel.py"), "--quick"],
                          capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    found = re.findall(r"^METRIC (\w+)=([-+0-9.eE]+) baseline=([-+0-9.eE]+)", proc.stdout, re.M)
    metrics = {name: (float(v), float(b)) for name, v, b in found}
    assert set(metrics) == {"grad_max_abs_diff", "param_max_abs_diff", "train_loss"}, proc.stdout
    for value, baseline in metrics.values():
        assert value < baseline, proc.stdout


def test_spmd_without_a_process_group():
    if torch.distributed.is_initialized():      # test_prims' spmd entries run on a group of one
        torch.distributed.destroy_process_group()
    f = functx.spmd(lambda x: functx.psum(x, "dp"), "dp", in_specs=0, out_specs=None)
    with pytest.raises(functx.FunctxError, match="init_process_group"):
        f(torch.ones(3))
    with pytest.raises(RuntimeError, match="not initialized"):
        functx.distributed.shard(torch.ones(4))


def test_spec_errors_name_the_argument():
    with pytest.raises(TypeError, match="in_specs must be None"):
        functx.spmd(lambda x: x, "dp", in_specs="batch", out_specs=0)
    with pytest.raises(TypeError, match="out_specs must be None"):
        functx.spmd(lambda x: x, "dp", in_specs=0, out_specs=(0, 1.5))


def test_process_axis_collectives_outside_spmd_raise():
    # pvary and the collectives over a name no vmap/spmd binds.
    with pytest.raises(functx.core.UnboundAxisError, match="'dp'"):
        functx.lax.pvary(torch.ones(2), "dp")
    with pytest.raises(functx.core.UnboundAxisError, match="functx.spmd"):
        functx.psum(torch.ones(2), "dp")
