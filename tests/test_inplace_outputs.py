"""Kernel outputs written over a dying input (functx/compile/fusion/inplace.py) on the CPU
backend: where it applies (explain says `over`), results equal eager torch and the eager
backend; where it must not (the input is a graph input, is read later, is returned, is
read in a later pass or at another index, has another dtype), it is not applied and results
are still right. Each fused call runs twice (pooled slots reused) and once more on the
wrapper that allocates fresh buffers."""
import re

import pytest
import torch
import torch.nn.functional as F

import functx
from functx.tree_util import tree_leaves
from test_cpu_backend import check, fused, needs_cxx

pytestmark = [needs_cxx, pytest.mark.cpu_fused]


def overs(compiled) -> list:
    """The (output, input) pairs written in place, from explain's groups."""
    return [pair for g in compiled.groups for s in g.stored
            for pair in re.findall(r"(t\d+) \(over (t\d+)\)", s)]


def check_inplace(f, *args, applies, **tol):
    c = check(f, *args, **tol)
    pairs = overs(c)
    assert bool(pairs) == applies, (pairs, c.report())
    ref = f(*args)
    for run in (c.call, c.fused.call, c.fused.call, _fresh(c)):
        before = [a.clone() for a in args if isinstance(a, torch.Tensor)]
        out = run(*args)
        for o, r in zip(out if isinstance(out, (tuple, list)) else [out],
                        ref if isinstance(ref, (tuple, list)) else [ref]):
            torch.testing.assert_close(o, r, **tol)
        for a, b in zip([a for a in args if isinstance(a, torch.Tensor)], before):
            assert torch.equal(a, b), "an input was overwritten"
    return c, pairs


def _fresh(compiled):
    """The host wrapper that allocates every buffer per call (a concurrent call's path)."""
    g = compiled.fused._globals
    fn = g.get("call_fresh")
    return fn if fn is not None else compiled.fused.call


def test_a_kernel_writes_over_the_matmul_result_it_reads():
    x, w, b = torch.randn(64, 32), torch.randn(32, 64), torch.randn(64)
    c, pairs = check_inplace(lambda x, w, b: torch.tanh(x @ w + b).sum(1) + (x @ w * 2).amax(1),
                             x, w, b, applies=False, atol=1e-5, rtol=1e-5)
    # a scaled copy of the tangents, consumed by a matmul: written over its input
    c, pairs = check_inplace(lambda x, w, b: (torch.tanh(x @ w + b) * 3.0) @ w.t(), x, w, b, applies=True,
                             atol=1e-4, rtol=1e-4)
    assert "over" in c.fused.source


def test_not_over_graph_inputs_returned_values_or_values_read_later():
    x, w = torch.randn(64, 32), torch.randn(32, 32)
    check_inplace(lambda x: torch.sin(x) * 2.0 + 1.0, x, applies=False)                       # a graph input
    check_inplace(lambda x, w: ((x @ w), torch.tanh(x @ w) * 2.0), x, w, applies=False,        # returned
                  atol=1e-5, rtol=1e-5)

    def read_later(x, w):
        y = x @ w
        z = torch.tanh(y) * 2.0          # a kernel reading y ...
        return (z @ w) + y               # ... and y read again after it
    check_inplace(read_later, x, w, applies=False, atol=1e-4, rtol=1e-4)


def test_not_over_an_input_read_at_another_index_in_another_pass_or_dtype():
    x, w = torch.randn(64, 64), torch.randn(64, 64)
    # a square buffer also read transposed: another element than the one each iteration writes
    def transposed(x, w):
        y = x @ w
        return (torch.tanh(y) * y.t()) @ w
    check_inplace(transposed, x, w, applies=False, atol=1e-4, rtol=1e-4)
    # an output stored in the first pass over a row (beside the mean), the buffer read again in
    # the second (centering): written over it, the second pass would read the output
    def two_passes(x, w):
        y = x @ w
        return (torch.tanh(y) * 2.0) @ w + (y - y.mean(-1, keepdim=True)) @ w
    check_inplace(two_passes, x, w, applies=False, atol=1e-4, rtol=1e-4)
    # softmax: the row is read again in later passes (max, sum, then the output)
    check_inplace(lambda x, w: torch.softmax(x @ w, -1) @ w, x, w, applies=False, atol=1e-4, rtol=1e-4)
    # another dtype: a float64 output of a float32 buffer
    check_inplace(lambda x, w: (torch.tanh(x @ w).double() * 2.0) @ w.double(), x, w, applies=False,
                  atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dims", [(3, 8, 8, 1), (5, 16, 12, 16, 1), (16, 32, 32, 32, 1)])
def test_forward_laplacian_of_random_mlps_in_float64(dims):
    """The forward Laplacian writes its scaled tangents over the matmul results they come
    from; against torch.func's Hessian trace in float64, MLPs of several widths and depths."""
    torch.manual_seed(sum(dims))
    ws = [(torch.randn(a, b, dtype=torch.float64) / a ** 0.5, torch.randn(b, dtype=torch.float64) * 0.1)
          for a, b in zip(dims[:-1], dims[1:])]

    def u(p, x):
        for i, (w, b) in enumerate(p):
            x = x @ w + b
            x = torch.tanh(x) if i < len(p) - 1 else x
        return x.squeeze(-1)
    x = torch.randn(40, dims[0], dtype=torch.float64)
    lap = functx.vmap(functx.laplacian(u, argnums=1), in_axes=(None, 0))
    c, out = fused(lap, ws, x)
    want = torch.func.vmap(lambda x: torch.trace(torch.func.hessian(lambda x: u(ws, x))(x)))(x)
    torch.testing.assert_close(out, want, rtol=1e-9, atol=1e-9)
    for run in (c.call, _fresh(c)):
        torch.testing.assert_close(run(*tree_leaves((ws, x)))[0], want, rtol=1e-9, atol=1e-9)
    if len(dims) > 3:
        assert overs(c), c.report()


def test_gelu_mlp_gradient_and_layer_norm_stay_right():
    """Reverse mode through pointwise chains (cotangents scaled in place) and a layer norm
    (two passes over each row: not in place)."""
    torch.manual_seed(0)
    w1, w2, x = torch.randn(16, 32), torch.randn(32, 8), torch.randn(64, 16)

    def loss(w1, w2, x):
        h = F.gelu(x @ w1)
        return (F.layer_norm(h, (32,)) @ w2).pow(2).sum()
    g = functx.grad(loss, argnums=(0, 1))
    c, out = fused(g, w1, w2, x)
    want = torch.func.grad(loss, argnums=(0, 1))(w1, w2, x)
    assert c.last_tier == "fused"
    for run in (c.call, c.call, _fresh(c)):
        for o, r in zip(run(w1, w2, x), want):
            torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)


def test_products_of_nd_rows_run_as_one_mm_into_their_buffer(monkeypatch):
    """A product of an N-D lhs (contracted over its last dim) with a 2-D weight runs as one
    2-D product of its rows (kernels/cpu_gemm.mm_into: torch.mm, or oneDNN where that is
    faster), written into a 2-D view of its pooled buffer, or of a fresh (huge-page) output
    bound first; batched products keep torch.matmul."""
    from functx.compile.cpu import huge_pages
    x, w, b = torch.randn(64, 16), torch.randn(16, 32), torch.randn(64, 32, 5)
    per_point = functx.vmap(lambda x, w: torch.tanh(torch.tanh(x)[None, :] @ w) * 2.0, in_axes=(0, None))
    c = check(per_point, x, w, atol=1e-5, rtol=1e-5)       # a (64, 1, 16) lhs
    assert "_mm_into(" in c.fused.source and "_rows)" in c.fused.source, c.fused.source
    monkeypatch.setattr(huge_pages, "MIN_BYTES", 256)
    c = check(functx.vmap(lambda x, w: torch.tanh(x)[None, :] @ w, in_axes=(0, None)), x, w, atol=1e-5, rtol=1e-5)
    if huge_pages._madvise() is not None:
        assert re.search(r"(t\d+) = _fresh\(.*\n\s*_mm_into\(.*, \1\.view", c.fused.source), c.fused.source
    batched = functx.vmap(lambda x, b: torch.tanh(torch.tanh(x)[None, :] @ b) * 2.0)   # a batch dim
    c = check(batched, torch.randn(64, 32), b, atol=1e-5, rtol=1e-5)
    assert "_mm_into(" not in c.fused.source, c.fused.source
