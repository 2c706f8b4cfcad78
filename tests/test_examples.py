"""Run every research example in --quick mode; check it beats its baseline and writes a figure.

Each example prints lines `METRIC name=value baseline=value` (lower is better, except for
names listed in HIGHER_IS_BETTER) and writes at least one PNG into --out.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ["score_matching_2d.py", "diffusion_2d.py", "pinn_poisson.py", "per_sample_grads.py",
            "consistency_jvp.py"]
HIGHER_IS_BETTER = {"test_accuracy"}
# Absolute bounds on top of "beats its baseline", loose enough for any seed: diffusion_2d's
# samples must show the 8 modes (a ring scores about 0.8 on both; the data 0.13 and 0.25).
UPPER_BOUNDS = {"off_mode_fraction": 0.5, "mode_deficit": 0.7}
METRIC = re.compile(r"^METRIC (\w+)=([-+0-9.eE]+) baseline=([-+0-9.eE]+)\s*$", re.M)

pytest.importorskip("matplotlib")


def parse_metrics(stdout):
    return [(name, float(v), float(b)) for name, v, b in METRIC.findall(stdout)]


@pytest.mark.parametrize("script", EXAMPLES)
def test_example_quick(script, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    metrics = parse_metrics(proc.stdout)
    assert metrics, f"{script} printed no METRIC line:\n{proc.stdout[-3000:]}"
    for name, value, baseline in metrics:
        better = value > baseline if name in HIGHER_IS_BETTER else value < baseline
        assert better, f"{script}: {name}={value} is not better than its baseline {baseline}"
        assert value < UPPER_BOUNDS.get(name, float("inf")), f"{script}: {name}={value} >= {UPPER_BOUNDS[name]}"
    assert list(tmp_path.glob("*.png")), f"{script} wrote no PNG into --out"


def test_demo_runs():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py")], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "matches torch.func: True" in proc.stdout


def test_sampler_schedule_quick(tmp_path):
    """Backprop through a 200-step sampler (scan with remat='sqrt' and 'binomial'): about
    13 s on a quiet 2-core machine; it checks the same METRIC lines as the others."""
    test_example_quick("sampler_schedule.py", tmp_path)
