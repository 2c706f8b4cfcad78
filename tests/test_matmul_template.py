"""The matmul template (functx/kernels/matmul.py) in the Triton backend: generated kernels
against torch (Triton interpreter on CPU), the scheduler's choice and explain's reasons,
and jit(vmap(grad(mlp))) end to end. GPU-marked tests run compiled kernels."""
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import functx
from functx.kernels import matmul

triton = pytest.importorskip("triton")
from functx.compile.triton import runtime  # noqa: E402

interp = pytest.mark.skipif(not runtime.interpreting(),
                            reason="Triton was imported without TRITON_INTERPRET=1 (CPU kernels need it)")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float16: dict(atol=1e-2, rtol=1e-2),
       torch.bfloat16: dict(atol=5e-2, rtol=5e-2)}


def run(f, *args, templates=1):
    """jit on the Triton backend vs eager; the number of template groups explain shows."""
    ex = functx.explain(f, backend="triton")(*args)
    kinds = [g.kind for g in ex.groups]
    assert kinds.count("template") == templates, str(ex.compiled.report())
    out = functx.jit(f, backend="triton")(*args)
    ref = f(*args)
    outs, refs = (out, ref) if isinstance(out, tuple) else ((out,), (ref,))
    for o, r in zip(outs, refs):
        torch.testing.assert_close(o, r, **TOL.get(r.dtype, {}))
    # the schedule evaluated with torch (index math and fusion, independent of Triton)
    for o, r in zip(ex.compiled.run_torch(*args), refs):
        torch.testing.assert_close(o, r, **TOL.get(r.dtype, {}))
    return ex


@interp
@pytest.mark.parametrize("m,k,n", [(5, 7, 3), (33, 17, 65), (1, 40, 20), (70, 1, 9)])
def test_bias_activation_epilogue_odd_shapes(m, k, n):
    x, w, b = torch.randn(m, k), torch.randn(k, n), torch.randn(n)
    ex = run(lambda x, w, b: F.gelu(x @ w + b), x, w, b)
    assert len(ex.kernels) == 1 and "tl.dot" in ex.kernels[0]


@interp
@pytest.mark.parametrize("spec", ["ij,jk->ik", "ji,jk->ik", "ij,kj->ik", "ji,kj->ik",
                                  "bij,bjk->bik", "bij,bkj->bik", "ibj,bjk->bik", "bji,jbk->bik",
                                  "bi,bj->bij", "bi,bi->b", "i,ij->j", "bhi,hij->bhj"])
def test_dimension_numbers(spec):
    """Transposed operands, batch dims in any position, outer products, mat-vecs: each
    einsum is one dot_general; the epilogue scales and shifts it."""
    lhs, rhs = spec.split("->")[0].split(",")
    sizes = dict(i=5, j=6, k=3, b=4, h=2)
    x, y = torch.randn([sizes[c] for c in lhs]), torch.randn([sizes[c] for c in rhs])
    f = lambda x, y: torch.einsum(spec, x, y) * 0.5 - 1.0      # noqa: E731
    dots = sum(e.prim.name == "dot_general" for e in functx.explain(f, backend="eager")(x, y).graph.eqns)
    run(f, x, y, templates=dots)    # torch may lower an outer product to a broadcast multiply


@interp
def test_epilogue_broadcasts_masks_and_casts():
    x, w = torch.randn(9, 12), torch.randn(12, 10)
    col, row, g = torch.randn(10), torch.randn(9, 1), torch.randn(9, 10)
    run(lambda x, w, c, r: torch.relu(x @ w + c) * r, x, w, col, row)
    run(lambda x, w, g: ((x @ w) > 0).to(g.dtype) * g, x, w, g)             # relu's derivative mask
    run(lambda x, w: (x @ w * 3.0).to(torch.float16), x, w)                   # scaling, casting


@interp
def test_result_used_by_the_epilogue_and_outside():
    x, w, v = torch.randn(6, 8), torch.randn(8, 7), torch.randn(7, 64)

    def f(x, w, v):
        y = x @ w
        return torch.tanh(y), y @ v      # the second matmul reads y from memory
    ex = run(f, x, w, v)
    tmpl = next(g for g in ex.groups if g.kind == "template")
    assert len(tmpl.stored) == 2            # the result is stored for the reduction too


@interp
def test_result_returned_and_two_matmuls_into_one_epilogue():
    a, b, c, d = torch.randn(6, 8), torch.randn(8, 7), torch.randn(6, 5), torch.randn(5, 7)
    run(lambda x, w: (x @ w, torch.tanh(x @ w)), a, b)
    ex = run(lambda a, b, c, d: torch.tanh(a @ b + c @ d), a, b, c, d)
    dots = [g for g in ex.groups if g.name == "dot_general"]
    assert len(dots) == 1 and "not a fusion kernel" in dots[0].reason    # its reader is the other template


@interp
def test_transposed_use_is_not_an_epilogue():
    x, w, c = torch.randn(6, 8), torch.randn(8, 7), torch.randn(6, 7)
    # reads other elements of the product (its flip), so the product must go to memory
    ex = run(lambda x, w, c: (x @ w) * (x @ w).flip(0) + c, x, w, c, templates=0)
    dot = next(g for g in ex.groups if g.kind == "extern" and g.name == "dot_general")
    assert "cuBLAS" in dot.reason and "other elements" in dot.reason


@interp
def test_transposed_product_becomes_the_swapped_product_with_its_epilogue():
    # fold_dot_transposes turns (x @ w).T into w.T @ x.T, whose `+ c` is then a plain epilogue
    x, w, c = torch.randn(7, 8), torch.randn(8, 6), torch.randn(6, 7)    # rows get no shorter
    run(lambda x, w, c: (x @ w).T + c, x, w, c, templates=1)


@interp
@pytest.mark.parametrize("name,f", [
    ("prologue", lambda x, w, b: torch.exp(x * 0.5) @ w),          # exp(0) = 1: masked lanes must be zeroed
    ("prologue+epilogue", lambda x, w, b: F.relu(torch.sigmoid(x) @ w + b)),
    ("transposed lhs", lambda x, w, b: torch.einsum("ji,jk->ik", torch.exp(x.T.contiguous() * 0.1), w)),
    ("batched lhs", lambda x, w, b: torch.einsum("bij,bjk->bik", torch.tanh(x).reshape(3, 11, 45),
                                                 w[None].expand(3, 45, 20))),
])
def test_prologue_on_a(name, f):
    x, w, b = torch.randn(33, 45), torch.randn(45, 20), torch.randn(20)
    ex = run(f, x, w, b)
    tmpl = next(g for g in ex.groups if g.kind == "template")
    assert "prologue on A" in tmpl.space and "a prologue on A" in tmpl.reason
    assert "a_ptr" not in tmpl.source         # A is computed, never loaded


@interp
def test_no_prologue_when_a_is_needed_elsewhere_or_n_is_large():
    x, w, b = torch.randn(9, 12), torch.randn(12, 10), torch.randn(10)
    ex = run(lambda x, w, b: (torch.tanh(torch.exp(x) @ w + b), torch.exp(x).sum()), x, w, b)
    tmpl = next(g for g in ex.groups if g.kind == "template")
    assert "prologue" not in tmpl.space         # exp(x) is stored for the sum anyway
    wide = torch.randn(12, 300)
    ex = run(lambda x, w: torch.tanh(torch.exp(x) @ w), x, wide)
    tmpl = next(g for g in ex.groups if g.kind == "template")
    assert "prologue" not in tmpl.space


@interp
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types(dtype):
    x, w, b = (torch.randn(17, 24).to(dtype), torch.randn(24, 19).to(dtype), torch.randn(19).to(dtype))
    run(lambda x, w, b: torch.sigmoid(x @ w + b), x, w, b)
    run(lambda x, w, b: torch.sigmoid(torch.tanh(x) @ w + b), x, w, b)        # with a prologue


@interp
def test_plain_matmul_stays_on_cublas_and_explain_says_why():
    x, w = torch.randn(64, 64), torch.randn(64, 64)
    ex = run(lambda x, w: x @ w, x, w, templates=0)
    text = str(ex)
    assert "torch.matmul (cuBLAS), not the matmul template" in text and "no epilogue" in text


@interp
def test_small_batched_matmul_without_epilogue_uses_the_template():
    x, y = torch.randn(8, 5, 6), torch.randn(8, 6, 3)
    ex = run(lambda x, y: x @ y, x, y)
    assert "a batch of small matmuls" in str(ex)


@interp
def test_config_turns_the_template_off():
    x, w, b = torch.randn(5, 7), torch.randn(7, 3), torch.randn(3)
    old = matmul.CONFIG.enabled
    matmul.CONFIG.enabled = False
    try:
        ex = run(lambda x, w, b: torch.tanh(x @ w + b), x, w, b, templates=0)
    finally:
        matmul.CONFIG.enabled = old
    assert "the matmul template is off" in str(ex)


@interp
def test_integer_matmul_stays_on_torch():
    x, w = torch.randint(-3, 3, (4, 5)), torch.randint(-3, 3, (5, 6))
    ex = run(lambda x, w: x @ w + 1, x, w, templates=0)
    assert "the template handles float32" in str(ex)


def test_choose_rule_split_k():
    from functx.core.types import TensorType
    t = TensorType((4, 8192), torch.float32, torch.device("cpu"))
    u = TensorType((8192, 4), torch.float32, torch.device("cpu"))
    layout = matmul.MatmulLayout.of(t.shape, u.shape, (((1,), (0,)), ((), ())))
    ok, why = matmul.choose(t, u, layout, ["add"])
    assert not ok and "splits K" in why


def mlp(params, x, y):
    (w1, b1), (w2, b2), (w3, b3) = params
    h = torch.tanh(x @ w1 + b1)
    h = F.relu(h @ w2 + b2)
    return F.cross_entropy((h @ w3 + b3)[None], y[None])


def mlp_params(d, h, c, dtype=torch.float32):
    sizes = [(d, h), (h, h), (h, c)]
    return [(torch.randn(a, b, dtype=dtype) / a ** 0.5, torch.randn(b, dtype=dtype) * 0.1) for a, b in sizes]


@interp
def test_jit_vmap_grad_mlp_per_sample_grads():
    params, x, y = mlp_params(6, 10, 3), torch.randn(5, 6), torch.randint(0, 3, (5,))
    f = functx.vmap(functx.grad(mlp), in_axes=(None, 0, 0))
    ex = functx.explain(f, backend="triton")(params, x, y)
    assert any(g.kind == "template" for g in ex.groups), ex.compiled.report()
    out = functx.jit(f, backend="triton")(params, x, y)
    ref = functx.jit(f, backend="eager")(params, x, y)
    oracle = torch.func.vmap(torch.func.grad(mlp), in_dims=(None, 0, 0))(params, x, y)
    for a, b, c in zip(functx.tree_util.tree_leaves(out), functx.tree_util.tree_leaves(ref),
                       functx.tree_util.tree_leaves(oracle)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- compiled kernels (GPU)

@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype,m,k,n", [(torch.float32, 100, 70, 33), (torch.float16, 100, 70, 33),
                                         (torch.bfloat16, 128, 256, 64), (torch.float16, 1, 512, 256)])
def test_gpu_template_matches_torch(dtype, m, k, n):
    x, w, b = (torch.randn(m, k, device="cuda", dtype=dtype), torch.randn(k, n, device="cuda", dtype=dtype),
               torch.randn(n, device="cuda", dtype=dtype))
    f = lambda x, w, b: F.gelu(x @ w + b)       # noqa: E731
    ex = functx.explain(f, backend="triton")(x, w, b)
    assert any(g.kind == "template" for g in ex.groups)
    tol = dict(atol=2e-2, rtol=2e-2) if dtype != torch.float32 else dict(atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(functx.jit(f, backend="triton")(x, w, b), f(x, w, b), **tol)


@pytest.mark.gpu
@needs_cuda
def test_gpu_fp32_follows_allow_tf32():
    x, w = torch.randn(64, 256, device="cuda"), torch.randn(256, 64, device="cuda")
    f = functx.jit(lambda x, w: torch.tanh(x @ w), backend="triton")
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.testing.assert_close(f(x, w), torch.tanh(x @ w), atol=1e-5, rtol=1e-5)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.gpu
@needs_cuda
def test_gpu_per_sample_grads():
    params = [(w.cuda(), b.cuda()) for w, b in mlp_params(32, 64, 10)]
    x, y = torch.randn(128, 32, device="cuda"), torch.randint(0, 10, (128,), device="cuda")
    f = functx.vmap(functx.grad(mlp), in_axes=(None, 0, 0))
    out = functx.jit(f, backend="triton")(params, x, y)
    ref = torch.func.vmap(torch.func.grad(mlp), in_dims=(None, 0, 0))(params, x, y)
    for a, b in zip(functx.tree_util.tree_leaves(out), functx.tree_util.tree_leaves(ref)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_generated_kernels_compile_for_sm90_without_a_gpu():
    """Triton's compiler (no launch) accepts the template kernels, prologue and epilogue
    included, for every dtype: the interpreter runs the same source."""
    import subprocess
    import sys
    script = __file__.replace("test_matmul_template.py", "aot_matmul_template.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0 and res.stdout.count("compiled for sm_90") == 9, res.stdout + res.stderr[-3000:]


PROLOGUES = {"none": lambda v: v, "tanh": torch.tanh, "exp": lambda v: torch.exp(v * 0.3), "affine": lambda v: v * 2 + 1}
EPILOGUES = {"none": lambda v: v, "gelu": F.gelu, "relu-mask": lambda v: (v > 0).to(v.dtype) * v,
             "sigmoid*2": lambda v: torch.sigmoid(v) * 2.0}


@interp
@settings(deadline=None, max_examples=min(settings.default.max_examples, 4))   # CI: 4; dev/nightly: more
@given(st.data())
def test_random_matmul_programs_against_torch(data):
    """Random sizes (not multiples of the blocks), batch, transposed operands, prologue,
    epilogue and bias broadcast: jit on the Triton backend agrees with eager torch."""
    b = data.draw(st.integers(0, 3), label="batch (0: none)")
    m, k, n = (data.draw(st.integers(1, 24), label=s) for s in "mkn")
    lhs_t, rhs_t = data.draw(st.booleans(), label="lhs transposed"), data.draw(st.booleans(), label="rhs transposed")
    pro = data.draw(st.sampled_from(sorted(PROLOGUES)), label="prologue")
    epi = data.draw(st.sampled_from(sorted(EPILOGUES)), label="epilogue")
    bias = data.draw(st.sampled_from(["none", "col", "row"]), label="bias")
    lead = (b,) if b else ()
    x = torch.randn(*lead, *((k, m) if lhs_t else (m, k)))
    w = torch.randn(*lead, *((n, k) if rhs_t else (k, n)))
    c = torch.randn(n) if bias == "col" else torch.randn(m, 1) if bias == "row" else torch.zeros(())

    def f(x, w, c):
        a = PROLOGUES[pro](x)
        a = a.transpose(-1, -2) if lhs_t else a
        y = a @ (w.transpose(-1, -2) if rhs_t else w)
        return EPILOGUES[epi](y + c if bias != "none" else y)
    torch.testing.assert_close(functx.jit(f, backend="triton")(x, w, c), f(x, w, c), atol=1e-4, rtol=1e-4)
