"""The CPU backend's fused tier beyond fusion groups: small_contractions (products over tiny
dims as fused multiply-adds) against the unrewritten graph, and the buffer pool (temporaries
in slots shared by liveness) for independence of results across calls and threads."""
import os
import shutil
import threading

import pytest
import torch

import functx
from functx.compile.cpu import CppFused
from functx.compile.eager import EagerCompiled
from functx.compile.fusion.buffer_pool import assign_slots
from functx.compile.fusion.compiled import _poolable_extern
from functx.compile.small_contractions import MAX_SIZE, small_contractions
from functx.core import Eqn, Graph, Var
from functx.core.primitive import REGISTRY
from functx.core.types import TensorType

pytestmark = [pytest.mark.skipif(shutil.which(os.environ.get("FUNCTX_CXX", "g++")) is None,
                                 reason="no C++ compiler"), pytest.mark.cpu_fused,
              pytest.mark.usefixtures("module_kernel_cache")]


def dot_graph(lshape, rshape, dims, dtype=torch.float32, computed=True):
    """tanh(dot(a, b)); computed: the operands are computed in the graph (negated inputs, as
    activations are), else the graph's inputs themselves."""
    a = Var(TensorType(tuple(lshape), dtype, torch.device("cpu")))
    b = Var(TensorType(tuple(rshape), dtype, torch.device("cpu")))
    eqns, ops = [], []
    for v in (a, b):
        if computed:
            w = Var(v.type)
            eqns.append(Eqn(REGISTRY["neg"], [v], [w], {}))
            v = w
        ops.append(v)
    p = REGISTRY["dot_general"]
    params = {"dimension_numbers": dims}
    out = Var(p.abstract_eval(ops[0].type, ops[1].type, **params))
    act = Var(out.type)                 # a consumer the product can fuse into
    eqns += [Eqn(p, ops, [out], params), Eqn(REGISTRY["tanh"], [out], [act], {})]
    return Graph([a, b], [], [], eqns, [act])


def test_a_few_rows_times_an_input_matrix_stay_in_blas():
    """A tiny free side is unrolled into reductions that fuse with the kernel producing the
    other operand; when that operand is a graph input (a 1000x1000 weight read by 2 stacked
    rows) there is no such kernel, and BLAS streams it at memory speed (as reductions over
    its columns, one per row, it ran ~4x slower)."""
    assert "dot_general" in [e.prim.name for e in small_contractions(
        dot_graph((2, 300), (300, 200), (((1,), (0,)), ((), ())), computed=False)).eqns]
    assert "dot_general" not in [e.prim.name for e in small_contractions(
        dot_graph((2, 300), (300, 200), (((1,), (0,)), ((), ())), computed=True)).eqns]
    # a transposed graph input (x @ W.mT) is still an input: no producer to fuse with
    x = Var(TensorType((2, 300), torch.float32, torch.device("cpu")))
    w = Var(TensorType((200, 300), torch.float32, torch.device("cpu")))
    wt, out = Var(TensorType((300, 200), torch.float32, torch.device("cpu"))), Var(TensorType((2, 200), torch.float32, torch.device("cpu")))
    act = Var(out.type)
    g = Graph([x, w], [], [], [Eqn(REGISTRY["transpose"], [w], [wt], {"permutation": (1, 0)}),
                               Eqn(REGISTRY["dot_general"], [x, wt], [out], {"dimension_numbers": (((1,), (0,)), ((), ()))}),
                               Eqn(REGISTRY["tanh"], [out], [act], {})], [act])
    assert "dot_general" in [e.prim.name for e in small_contractions(g).eqns]


# (lhs shape, rhs shape, dimension numbers, rewritten?)
CASES = [
    ((64, 2), (2, 32), (((1,), (0,)), ((), ())), True),            # input layer x @ W0, K=2
    ((64, 2), (32, 2), (((1,), (1,)), ((), ())), True),            # its cotangent g @ W0.T
    ((2, 2, 40), (2, 2, 5), (((0, 1), (1, 0)), ((), ())), True),   # two contracted dims, K=4
    ((2, 3, 40), (3, 2, 5), (((0, 1), (1, 0)), ((), ())), False),  # K=6, free sides 40 and 5
    ((64, 30), (30, 2), (((1,), (0,)), ((), ())), True),           # output layer h @ W2, N=2
    ((64, 3), (64, 30), (((0,), (0,)), ((), ())), True),           # weight gradient x.T @ g, M=3
    ((30, 64), (64, 4), (((1,), (0,)), ((), ())), True),           # N=4
    ((7, 8, 3), (7, 3, 5), (((2,), (1,)), ((0,), (0,))), True),     # batched, K=3
    ((5, 64), (64,), (((1,), (0,)), ((), ())), False),             # matrix-vector stays in BLAS
    ((64, 30), (30, 5), (((1,), (0,)), ((), ())), False),          # N=5 > MAX_SIZE
    ((7, 8, 30), (7, 30, 2), (((2,), (1,)), ((0,), (0,))), False),  # batched with a tiny free side
]


@pytest.mark.parametrize("lshape,rshape,dims,rewritten", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_contractions_equal_the_unrewritten_graph(lshape, rshape, dims, rewritten, dtype):
    g = dot_graph(lshape, rshape, dims, dtype)
    notes = []
    r = small_contractions(g, notes)
    r.check()
    names = [e.prim.name for e in r.eqns]
    k = 1
    for d in dims[0][0]:
        k *= lshape[d]
    assert ("dot_general" not in names) == rewritten, names
    assert len(notes) == int(rewritten)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(lshape, generator=gen, dtype=dtype)
    b = torch.randn(rshape, generator=gen, dtype=dtype)
    want = EagerCompiled(g)(a, b)[0]
    torch.testing.assert_close(EagerCompiled(r)(a, b)[0], want)
    # the fused tier runs the rewritten graph through C++ kernels
    fused = CppFused(g)
    torch.testing.assert_close(fused.call(a, b)[0], want)
    assert bool(fused.rewrites) == rewritten
    if k > MAX_SIZE:
        assert "contracted size" not in " ".join(notes)


def test_a_product_that_only_leaves_the_graph_stays_in_blas():
    """Per-sample outer products (K=1) returned as gradients: BLAS writes them as fast."""
    g = dot_graph((8, 1, 16), (8, 1, 32), (((1,), (1,)), ((0,), (0,))))
    g = g.replace(eqns=g.eqns[:1], outvars=[g.eqns[0].outputs[0]])
    assert small_contractions(g) is g


def test_dsm_step_keeps_three_gemms_and_matches_torch_func(monkeypatch):
    """A DSM training step on 2-D data: the five products over a size-2 dim fuse, the three
    [N,128]x[128,128]-class GEMMs stay in BLAS; values equal torch.func's."""
    monkeypatch.setenv("FUNCTX_CPU_BLOCK", "1")
    gen = torch.Generator().manual_seed(1)
    params = [torch.randn(2, 32, generator=gen) * 0.5, torch.randn(32, generator=gen) * 0.1,
              torch.randn(32, 32, generator=gen) * 0.2, torch.randn(32, generator=gen) * 0.1,
              torch.randn(32, 2, generator=gen) * 0.2, torch.randn(2, generator=gen) * 0.1]
    X, eps = torch.randn(256, 2, generator=gen), torch.randn(256, 2, generator=gen)

    def loss(params, X, eps):
        h = X + 0.1 * eps
        for i in range(0, 6, 2):
            h = h @ params[i] + params[i + 1]
            if i < 4:
                h = torch.tanh(h)
        return ((h + eps / 0.1) ** 2).sum(-1).mean()

    def step(params, X, eps):
        value, grads = functx.value_and_grad(loss)(params, X, eps)
        return value, [p - 1e-3 * g for p, g in zip(params, grads)]

    jitted = functx.jit(step, backend="cpu")
    got = jitted(params, X, eps)
    compiled = jitted.lower(params, X, eps)[0].compiled
    assert compiled.tier == "fused", compiled.status()
    assert sum(g.kind == "extern" for g in compiled.groups) == 3, compiled.report()
    assert len(compiled.fused.rewrites) == 5
    grads, value = torch.func.grad_and_value(loss)(params, X, eps)
    torch.testing.assert_close(got[0], value)
    for p, g, new in zip(params, grads, got[1]):
        torch.testing.assert_close(new, p - 1e-3 * g)
    report = str(functx.explain(jitted)(params, X, eps))
    assert "small_contractions: 5 product(s)" in report and "# pooled" in report


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def mlp_grad(w1, w2, x):
    return functx.grad(lambda w1, w2: (torch.tanh(x @ w1) @ w2).square().sum(), argnums=(0, 1))(w1, w2)


def test_results_do_not_alias_the_pool_across_calls(monkeypatch):
    monkeypatch.setenv("FUNCTX_CPU_BLOCK", "1")
    jitted = functx.jit(mlp_grad, backend="cpu")
    w1, w2 = torch.randn(16, 32), torch.randn(32, 16)
    x1, x2 = torch.randn(64, 16), torch.randn(64, 16)
    first = jitted(w1, w2, x1)
    kept = [t.clone() for t in first]
    second = jitted(w1, w2, x2)
    fused = jitted.lower(w1, w2, x1)[0].compiled.fused
    assert fused.pooled, fused.report()
    for a, b in zip(first, kept):                      # the second call left them alone
        assert torch.equal(a, b)
    for got, x in ((first, x1), (second, x2)):
        for g, w in zip(got, mlp_grad(w1, w2, x)):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_a_returned_view_of_a_temporary_is_not_pooled(monkeypatch):
    monkeypatch.setenv("FUNCTX_CPU_BLOCK", "1")

    def f(x, w):
        h = torch.tanh(x @ w)               # a kernel's output, viewed by the result
        return h.t()[1:], (h * 2).sum()

    jitted = functx.jit(f, backend="cpu")
    x, w = torch.randn(8, 16), torch.randn(16, 16)
    a = jitted(x, w)
    kept = a[0].clone()
    jitted(torch.randn(8, 16), w)
    assert torch.equal(a[0], kept)
    torch.testing.assert_close(a[0], f(x, w)[0])


def test_concurrent_calls_never_share_temporaries(monkeypatch):
    monkeypatch.setenv("FUNCTX_CPU_BLOCK", "1")
    jitted = functx.jit(mlp_grad, backend="cpu")
    w1, w2 = torch.randn(16, 32), torch.randn(32, 16)
    xs = [torch.randn(64, 16) for _ in range(4)]
    jitted(w1, w2, xs[0])
    wants = [mlp_grad(w1, w2, x) for x in xs]
    errors = []

    def worker(i):
        for _ in range(30):
            for g, w in zip(jitted(w1, w2, xs[i]), wants[i]):
                if not torch.allclose(g, w, rtol=1e-4, atol=1e-4):
                    errors.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_slots_are_shared_only_between_dead_and_new_buffers():
    """A chain of same-sized temporaries needs two slots (the live input and the output of
    each step), and a kernel never writes into a slot it reads."""
    def f(x, w):
        for _ in range(4):
            x = torch.tanh(x @ w) * 2.0
        return x.sum()

    g = functx.make_graph(f)(torch.randn(32, 32), torch.randn(32, 32))
    fused = CppFused(g)
    sched = fused.schedule
    slot_of, slots = assign_slots(sched, _poolable_extern)
    assert len(slot_of) == 7 and len(slots) == 2, (len(slot_of), len(slots))
    for grp in sched.groups:
        written = grp.first.outputs if grp.extern else grp.plan.stored
        read = {a for e in grp.members for a in sched.read_vars(e)}
        for v in written:
            for a in read:
                if v in slot_of and a in slot_of:
                    assert slot_of[v] != slot_of[a]
    x, w = torch.randn(32, 32), torch.randn(32, 32)
    torch.testing.assert_close(fused.call(x, w)[0], f(x, w))


def test_big_fresh_outputs_are_advised_as_huge_pages(monkeypatch):
    """Per-sample outer products of 32 MiB: written into a buffer advised as huge pages
    (huge_pages.py), the values are torch's."""
    from functx.compile.cpu import huge_pages
    monkeypatch.setenv("FUNCTX_CPU_BLOCK", "1")

    def per_sample(w, x):
        return functx.vmap(functx.grad(lambda w, x: torch.tanh(x @ w).sum()), in_axes=(None, 0))(w, x)

    w, x = torch.randn(512, 256) * 0.05, torch.randn(64, 512)
    jitted = functx.jit(per_sample, backend="cpu")
    got = jitted(w, x)
    want = torch.func.vmap(torch.func.grad(lambda w, x: torch.tanh(x @ w).sum()), in_dims=(None, 0))(w, x)
    torch.testing.assert_close(got, want)
    source = jitted.lower(w, x)[0].compiled.fused.source
    assert ("_fresh((64, 512, 256)" in source or "_fresh((64, 256, 512)" in source) == \
        (huge_pages._madvise() is not None), source
    t = huge_pages.fresh((huge_pages.MIN_BYTES // 4,), torch.float32)
    t.fill_(1.5)
    assert t.sum().item() == 1.5 * t.numel()


# ---------------------------------------------------------------- the eager backend's block cache

@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_fork_during_a_build_does_not_deadlock_the_child(monkeypatch):
    """A fork while another thread holds the compiler's lock (a build in flight): the child
    gets fresh locks and builds its own fused tiers."""
    from functx.compile.cpu import toolchain
    monkeypatch.setenv("FUNCTX_CPU_BLOCK", "1")
    with toolchain._lock:                     # as a background build would hold it
        pid = os.fork()
        if pid == 0:                          # the child: build and run a fused tier
            import signal
            signal.alarm(20)
            try:
                f = functx.jit(lambda x: torch.sin(x) * 2 + 1, backend="cpu")
                x = torch.randn(16)
                ok = torch.allclose(f(x), torch.sin(x) * 2 + 1) and \
                    f.lower(x)[0].compiled.tier == "fused"
            except BaseException:
                ok = False
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
