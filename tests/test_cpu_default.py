"""The default path for CPU tensors, end to end: `functx.jit(f)` with no backend is the tiered
cpu backend. The first calls run the eager tier, later ones the fused tier once the
background build is done; a graph built before (by any process) is fused from its first
call; without a compiler every call runs the eager tier and explain says why; a fork keeps
it working; the fused tier's buffers are released on demand, on eviction and past the
process-wide limit. (The rest of the suite runs this backend on its eager tier:
tests/conftest.py, FUNCTX_TEST_CPU_TIER.)"""
import functools
import os
import shutil
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import functx
from functx.compile.cpu import CONFIG, wait_for_fused
from functx.compile.fusion import buffer_pool

pytestmark = [pytest.mark.skipif(shutil.which(os.environ.get("FUNCTX_CXX", "g++")) is None,
                                 reason="no C++ compiler"), pytest.mark.cpu_fused]

SOURCE = "functx.vmap(functx.grad(lambda x: (torch.cos(x) * x.exp() - x * x).sum()))"
F = eval(SOURCE)       # noqa: S307  (a fixed expression, also run in a child process)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("functx_default_cache"))


@pytest.fixture(autouse=True)
def tiered(monkeypatch, cache_dir):
    """The product's defaults, with this module's own kernel cache."""
    for name in ("FUNCTX_CPU_BLOCK", "FUNCTX_CPU_HOT_CALLS", "FUNCTX_CPU_BACKEND", "FUNCTX_CXX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FUNCTX_CACHE_DIR", cache_dir)
    torch.manual_seed(0)                # the same inputs every run


def entry_of(jitted, *args):
    return jitted.lower(*args)[0].compiled


def build_into_cache(x):
    """F's graph at x's signature in the module's disk cache (a cache hit if built before)."""
    assert entry_of(functx.jit(F), x).wait() == "fused"


def test_first_calls_run_eager_then_fused_and_explain_says_which(monkeypatch):
    x = torch.randn(256, 256)           # 256 KiB temporaries: the eager tier keeps buffers between calls
    want = F(x)
    f = functx.jit(F)
    out1 = f(x)
    c = entry_of(f, x)
    assert c.backend == "cpu" and c.last_tier == "eager" and c.fused_state == "not started"
    # checked before call 2 starts the build: a build done during call 2 frees them (below)
    assert c.eager.globals["_keep"], "the eager tier keeps its large buffers between calls"
    assert "the last call ran the eager tier (call 1); fused tier: not started" in str(functx.explain(f)(x))
    out2 = f(x)                                    # call 2 starts the background build
    assert c.last_tier == "eager" and c.fused_state in ("pending", "ready")
    wait_for_fused()
    assert c.fused_state == "ready" and c.last_tier == "eager"
    assert "fused tier: ready, the next call runs it" in c.status()
    assert not c.eager.globals["_keep"], "the swap frees the eager tier's kept buffers"
    out3 = f(x)
    assert c.last_tier == "fused" and c.eager_calls == 2
    for out in (out1, out2, out3):
        torch.testing.assert_close(out, want)
    assert torch.equal(out1, out2)                 # one tier: the same bits
    assert torch.equal(out3, f(x))
    text = str(functx.explain(f)(x))
    assert "the last call ran the fused tier (calls 1-2 ran the eager tier); fused tier: ready" in text


def test_a_graph_built_before_is_fused_from_the_first_call_in_a_fresh_process(cache_dir):
    build_into_cache(torch.randn(256, 256))
    script = textwrap.dedent(f"""
        import os, torch, functx
        x = torch.randn(256, 256)
        f = functx.jit({SOURCE})
        out = f(x)
        c = f.lower(x)[0].compiled
        print(c.backend, c.last_tier, c.eager_calls, c.from_disk, c.fused.compiled_now)
        print(c.status())
        torch.save((x, out), os.path.join(os.environ["FUNCTX_CACHE_DIR"], "child.pt"))
    """)
    env = dict(os.environ, FUNCTX_CPU_FUSED="1", PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    first, status = child.stdout.splitlines()[:2]
    assert first.split() == ["cpu", "fused", "0", "True", "False"], child.stdout     # no eager call, no g++
    assert "every call: its kernels were in the disk cache" in status
    x, out = torch.load(os.path.join(cache_dir, "child.pt"))
    # the fused kernels' exp/cos round differently from torch's; -sin(x)e^x + cos(x)e^x - 2x
    # cancels terms up to e^4 ~ 55 (one float32 ulp ~4e-6) into results near 1, so the
    # tolerance is absolute at that scale (the default's atol 1e-5 failed on 1 of 65536)
    torch.testing.assert_close(out, F(x), rtol=1.3e-6, atol=4e-6 * (1 + float(x.exp().max())))
    f = functx.jit(F)                              # this process: fused from the first call too
    here = f(x)
    assert entry_of(f, x).from_disk and torch.equal(here, out)      # the fused tier's bits, in both processes


def test_without_a_compiler_every_call_runs_the_eager_tier(monkeypatch):
    x = torch.randn(256, 256)
    build_into_cache(x)
    monkeypatch.setenv("FUNCTX_CXX", "/nonexistent/g++")
    f = functx.jit(F)                              # the disk cache knows this graph, but g++ is gone
    torch.testing.assert_close(f(x), F(x))
    c = entry_of(f, x)
    assert c.fused_state == "failed" and c.call is c.eager.call     # no tier bookkeeping per call
    g = functx.jit(lambda x: torch.tanh(x) * 3.0 + 1.0)     # a new graph: the build fails in the background
    y = torch.randn(7, 5)
    for _ in range(3):
        torch.testing.assert_close(g(y), torch.tanh(y) * 3.0 + 1.0)
        wait_for_fused()
    text = str(functx.explain(g)(y))
    assert "tier: every call runs the eager tier; fused tier: failed (C++ compiler '/nonexistent/g++' " \
           "not found" in text


def test_the_eager_default_is_one_setting(monkeypatch):
    x = torch.randn(5, 3)
    monkeypatch.setattr(CONFIG, "default_backend", "eager")
    f = functx.jit(F)
    f(x)
    assert entry_of(f, x).backend == "eager"
    monkeypatch.setattr(CONFIG, "default_backend", None)
    monkeypatch.setenv("FUNCTX_CPU_BACKEND", "eager")
    assert entry_of(functx.jit(F), x).backend == "eager"
    monkeypatch.setenv("FUNCTX_CPU_BACKEND", "cpu")
    assert entry_of(functx.jit(F), x).backend == "cpu"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_a_build_is_in_flight():
    x = torch.randn(33, 17)
    f = functx.jit(lambda x: torch.sigmoid(x) * x.sum(0) - 2.0 * x)
    f(x)
    f(x)                                            # the build starts in a background thread
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")             # "fork() of a multi-threaded process"
        pid = os.fork()
    if pid == 0:                                    # the child: its build starts again, then fused
        code = 1
        try:
            want = torch.sigmoid(x) * x.sum(0) - 2.0 * x
            torch.testing.assert_close(f(x), want)
            wait_for_fused()
            torch.testing.assert_close(f(x), want)
            code = 0 if entry_of(f, x).last_tier == "fused" else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    wait_for_fused()


def test_fused_buffers_are_released_on_demand_on_eviction_and_past_the_limit(monkeypatch):
    monkeypatch.setenv("FUNCTX_CPU_BLOCK", "1")
    h = lambda x: (torch.tanh(torch.exp(x) @ x) * 2.0).sum(0)       # noqa: E731  (a pooled matmul result)
    x = torch.randn(64, 64) * 0.2
    close = functools.partial(torch.testing.assert_close, rtol=1e-4, atol=1e-5)   # sums add in double in C++
    f = functx.jit(h, cache_limit=1)
    close(f(x), h(x))
    pool = entry_of(f, x).fused._pool
    assert pool.live and pool.nbytes > 0
    assert functx.compile.release_buffers() >= pool.nbytes and not pool.live
    close(f(x), h(x))          # grows back at the next call
    assert pool.live
    y = x.double()                                  # a new static signature (a new size would be symbolic: no pool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")             # the cache-limit warning
        close(f(y), h(y))      # evicts x's entry, whose pool goes at once
    assert not pool.live
    monkeypatch.setattr(buffer_pool, "MAX_LIVE_BYTES", 1)
    g = functx.jit(lambda x: (torch.sin(torch.exp(x) @ x) + 1.0).sum(1))
    g(x)                                            # a newer pool: the older ones are released
    second = entry_of(f, y).fused._pool
    assert not second.live and entry_of(g, x).fused._pool.live
    close(f(y), h(y))
    assert second.live


def test_calls_that_autograd_records_run_the_torch_code(monkeypatch):
    """The C++ kernels record no autograd history: with grad mode on and a parameter (or an
    input) that requires grad, the fused tier hands the call to the eager tier's torch code."""
    monkeypatch.setenv("FUNCTX_CPU_BLOCK", "1")
    m = torch.nn.Linear(3, 4)
    f = lambda x: torch.tanh(m(x)) * 2.0 + x.sum()          # noqa: E731
    x = torch.randn(5, 3)
    jf = functx.jit(f)
    jf(x).pow(2).sum().backward()
    c = entry_of(jf, x)
    assert c.tier == "fused" and c.last_tier == "eager (autograd)" and "autograd records it" in c.status()
    got = m.weight.grad.clone()
    m.weight.grad = None
    f(x).pow(2).sum().backward()
    torch.testing.assert_close(got, m.weight.grad)
    xg = x.clone().requires_grad_()
    jf(xg).sum().backward()
    torch.testing.assert_close(xg.grad, torch.func.grad(lambda x: f(x).sum())(x))
    with torch.no_grad():
        torch.testing.assert_close(jf(x), f(x))
    assert c.last_tier == "fused"


def test_a_graph_without_fusion_stays_on_the_eager_tier(monkeypatch):
    """One kernel per operation saves nothing over torch's kernels and costs more per call:
    such a graph keeps the eager code, and the disk cache's index remembers it."""
    monkeypatch.setenv("FUNCTX_CPU_BLOCK", "1")
    x = torch.randn(6, 5)
    f = functx.jit(lambda x: x + 1.0)
    torch.testing.assert_close(f(x), x + 1.0)
    c = entry_of(f, x)
    assert c.fused_state == "nothing to fuse" and c.tier == "eager" and len(c.fused.kernels) == 1
    assert "fused tier: nothing to fuse (no kernel computes two operations)" in c.status()
    monkeypatch.delenv("FUNCTX_CPU_BLOCK")
    g = functx.jit(lambda x: x + 1.0)            # the same graph: known from the index, no build
    g(x)
    c = entry_of(g, x)
    assert c.fused is None and c.fused_state == "nothing to fuse"


def test_integer_max_of_compared_lanes_matches_torch(monkeypatch):
    """g++ 12.2's SLP vectorizer with -fwrapv and AVX2 returned 0 here (toolchain.FLAGS turns
    it off); a batched while_loop's predicate (vmap of grad through functx.while_loop) is this."""
    monkeypatch.setenv("FUNCTX_CPU_BLOCK", "1")
    f = lambda n, t: ((t < 3.0) & (n < 40)).to(torch.int32).amax(0)     # noqa: E731
    n, t = torch.tensor([12, 10]), torch.tensor([2.0, 3.65], dtype=torch.float64)
    assert functx.jit(f)(n, t).item() == f(n, t).item() == 1


LAPLACIAN = """functx.vmap(functx.laplacian(lambda p, x: torch.tanh(torch.tanh(x @ p[0]) @ p[1]).sum(), argnums=1),
                         in_axes=(None, 0))"""


def test_a_disk_cache_hit_imports_no_sympy():
    """Serving the fused tier from the disk cache regenerates its host wrapper; a matmul
    reshaped after (factor_dots' per-point products in a forward Laplacian) once took its
    pre-reshape shape from a meta-tensor matmul, which imports sympy: 0.5 s of a first call."""
    torch.manual_seed(0)
    p, x = (torch.randn(8, 32), torch.randn(32, 32)), torch.randn(64, 8)
    assert entry_of(functx.jit(eval(LAPLACIAN)), p, x).wait() == "fused"
    script = textwrap.dedent(f"""
        import sys, torch, functx
        torch.manual_seed(0)
        p, x = (torch.randn(8, 32), torch.randn(32, 32)), torch.randn(64, 8)
        f = functx.jit({LAPLACIAN})
        f(p, x)
        print(f.lower(p, x)[0].compiled.last_tier, 'sympy' in sys.modules)
    """)
    env = dict(os.environ, FUNCTX_CPU_FUSED="1", PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["fused", "False"], child.stdout


def test_a_graph_too_large_to_plan_stays_on_the_eager_tier(monkeypatch):
    # The fusion planner's cost grows faster than the graph: a 200-step Python loop's gradient
    # (3,200 equations) planned for ~47 s in a thread holding the GIL. Past MAX_FUSED_EQUATIONS
    # the eager tier serves every call, and explain says why.
    from functx.compile.cpu import compiled as cpu_compiled
    monkeypatch.setattr(cpu_compiled, "MAX_FUSED_EQUATIONS", 5)
    x = torch.randn(64, 64)
    f = functx.jit(F)
    for _ in range(3):
        torch.testing.assert_close(f(x), F(x))
        wait_for_fused()
    c = entry_of(f, x)
    assert c.fused_state == "too large" and c.tier == "eager" and c.call is c.eager.call
    assert "MAX_FUSED_EQUATIONS" in str(functx.explain(f)(x))
