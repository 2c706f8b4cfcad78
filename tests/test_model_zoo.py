"""Model code a stranger would write (nn modules and functional ops less covered by
test_nn_coverage / test_corpus), under functx's transforms and jit, against eager torch or
torch.func; one regression per bug found."""
import copy

import pytest
import torch
import torch.nn as nn

import functx

D = torch.float64


def _randn(*shape, dtype=D, seed=0):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- batch norm: eval after eager training

@pytest.mark.parametrize("dtype", [D, torch.float32])
def test_jitted_eval_batchnorm_sees_running_stats_an_eager_training_step_updated(dtype):
    """The eager kernel writes the running statistics without bumping their version (the
    schema of native_batch_norm does not mark them written), so jit's trace-time copy of
    rsqrt(running_var + eps), guarded by the version, stayed stale: a model evaluated under
    jit between eager training steps used its first statistics. The graph now reads them."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(4, 2)).to(dtype)
    x = _randn(5, 3, 4, dtype=dtype)
    jf = functx.jit(lambda x: m(x))
    tol = dict(atol=1e-12, rtol=1e-12) if dtype == D else dict(atol=1e-5, rtol=1e-5)
    for step in range(3):
        m.eval()
        with torch.no_grad():
            torch.testing.assert_close(jf(x), m(x), **tol)
        m.train()
        m(x * (step + 2) + step)            # an eager training step: new running statistics
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(jf(x), m(x), **tol)
