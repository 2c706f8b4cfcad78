"""Memory layouts inside transforms (issue 9, class 11): x.stride() reports the layout torch
would give the tensor (an argument's real strides, a view's, an elementwise result's of a
transposed input, a linalg result's column-major one), and as_strided reads storage through
it, through any nesting of transforms, against eager PyTorch / torch.func."""
import pytest
import torch

import functx

D = torch.float64
_BASE = torch.arange(24.0, dtype=D).reshape(4, 6) / 7


def _layouts():
    """name -> a 2-D tensor with that layout (at least 3 x 3)."""
    return {
        "contiguous": _BASE[:3, :4].clone(),
        "transposed": _BASE[:4, :3].clone().t(),
        "offset slice": _BASE[1:, 1:5],
        "sliced with step": _BASE[:3, ::2],
        "expanded": _BASE[0, :4].clone().expand(3, 4),
    }


def _f(x):
    # reads storage through the layout: one window per row, strides from x itself
    s0, s1 = x.stride()
    y = torch.as_strided(x, (2, 2), (s0, s1), x.storage_offset())
    x3 = x * 3                   # keeps a transposed x's layout (torch's rule for elementwise ops)
    z = torch.as_strided(x3, (3,), (x3.stride(0),))
    return (y.sin() * 2).sum() + (z ** 2).sum()


NAMES = sorted(_layouts())


def _nested():
    g = functx.grad(_f)
    return {
        "grad": (g, torch.func.grad(_f)),
        "jit": (functx.jit(_f), _f),
        "jit(grad)": (functx.jit(g), torch.func.grad(_f)),
        "grad(grad)": (functx.grad(lambda x: (functx.grad(_f)(x) ** 2).sum()),
                       torch.func.grad(lambda x: (torch.func.grad(_f)(x) ** 2).sum())),
        "jvp": (lambda x: functx.jvp(_f, (x,), (torch.ones_like(x),))[1],
                lambda x: torch.func.jvp(_f, (x,), (torch.ones_like(x),))[1]),
        "jit(jvp(grad))": (functx.jit(lambda x: functx.jvp(g, (x,), (torch.ones_like(x),))[1]),
                           lambda x: torch.func.jvp(torch.func.grad(_f), (x,), (torch.ones_like(x),))[1]),
    }


@pytest.mark.parametrize("layout", NAMES)
@pytest.mark.parametrize("how", sorted(_nested()))
def test_as_strided_and_strides_through_nested_transforms(layout, how):
    x = _layouts()[layout]
    ours, theirs = _nested()[how]
    if layout == "expanded" and how == "jvp":
        # torch.func's forward AD refuses a primal whose elements share memory: the jvp identity
        theirs = lambda x: (torch.func.grad(_f)(x) * torch.ones_like(x)).sum()  # noqa: E731
    if layout == "expanded" and how == "jit(jvp(grad))":     # a Hessian-vector product
        theirs = torch.func.grad(lambda x: (torch.func.grad(_f)(x) * torch.ones_like(x)).sum())
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("layout", ["transposed", "sliced with step", "expanded"])
def test_vmap_of_grad_reads_each_examples_layout(layout):
    """torch.func's as_strided under vmap reads one example's storage from its own start."""
    xs = torch.stack([_layouts()[layout]] * 2, 0) * torch.tensor([1.0, 2.0], dtype=D)[:, None, None]
    xs = xs.transpose(1, 2).contiguous().transpose(1, 2) if layout == "transposed" else xs

    def f(x):
        return (torch.as_strided(x, (2, 2), x.stride()).sin() * 2).sum()
    for ours, theirs in ((functx.vmap(functx.grad(f)), torch.func.vmap(torch.func.grad(f))),
                         (functx.jit(functx.vmap(functx.grad(f))), torch.func.vmap(torch.func.grad(f))),
                         (functx.vmap(f), torch.func.vmap(f))):
        torch.testing.assert_close(ours(xs), theirs(xs))


@pytest.mark.parametrize("how", ["vmap", "vmap(grad)", "jit(vmap)", "vmap(vmap)"])
def test_vmap_reports_the_batched_storage_offset_and_as_strided_counts_from_it(how):
    """A batch sliced out of a bigger tensor (storage offset 1): torch.func reports offset 1 for
    every example and takes as_strided's offset in that frame, so an offset computed outside
    the transform reads the same elements (functx reported 0 and read one element further)."""
    base = torch.arange(1.0 + 2 * 4 * 6, dtype=D) / 7
    xs = base[1:].view(2, 4, 6)

    def f(x):
        assert x.storage_offset() == 1
        return (torch.as_strided(x, (2, 3), (6, 1), 1).sin() * torch.as_strided(x, (3,), (2,), 4)[:2, None]).sum()
    inner, oracle = {"vmap": (functx.vmap(f), torch.func.vmap(f)),
                     "vmap(grad)": (functx.vmap(functx.grad(f)), torch.func.vmap(torch.func.grad(f))),
                     "jit(vmap)": (functx.jit(functx.vmap(f)), torch.func.vmap(f)),
                     "vmap(vmap)": (functx.vmap(functx.vmap(f)), torch.func.vmap(torch.func.vmap(f)))}[how]
    x = xs if how != "vmap(vmap)" else base[1:].view(2, 2, 2, 6)
    if how == "vmap(vmap)":
        def f2(x):
            assert x.storage_offset() == 1
            return torch.as_strided(x, (2, 3), (6, 1), 2).sum()
        inner, oracle = functx.vmap(functx.vmap(f2)), torch.func.vmap(torch.func.vmap(f2))
    torch.testing.assert_close(inner(x), oracle(x))


def test_strides_that_functx_reports_are_torchs():
    x = _layouts()["transposed"]
    seen = []

    def f(x):
        seen.append((x.stride(), x.t().stride(), x[:, 1:].storage_offset(), (x + 1).stride(),
                     x.unsqueeze(0).expand(2, 3, 4).stride(), x.contiguous().stride(),
                     torch.linalg.qr(x.t() @ x + 1)[0].stride()))
        return x.sum()
    f(x)
    functx.grad(f)(x)
    functx.jit(f)(x)
    functx.jit(functx.grad(f))(x)
    functx.vmap(f)(torch.stack([x.t(), x.t()]).transpose(1, 2))
    assert all(s == seen[0] for s in seen), seen


def test_jit_retraces_for_a_new_layout_and_writes_through_reshape_as_torch_does():
    """The trace depends on strides (x.stride(), whether reshape copies): jit keys on them."""
    def f(x):
        y = x.reshape(-1)        # a view of a contiguous x, a copy of a transposed one
        y.mul_(2)
        return y.sum() * x.stride(0)
    jf = functx.jit(f)
    for x in (_BASE[:3, :4].clone(), _BASE[:4, :3].clone().t(), _BASE[:3, :4].clone()):
        want_x, got_x = x.clone(), x.clone()
        torch.testing.assert_close(jf(got_x), f(want_x))
        torch.testing.assert_close(got_x, want_x)
    assert jf.cache_size() == 2


def test_taylor_mode_sees_the_arguments_layout():
    def f(x):
        return (torch.as_strided(x, (2,), (1,)) ** 3).sum()
    x = _layouts()["transposed"]
    want = torch.func.hessian(f)(x).reshape(x.numel(), x.numel()).trace()
    torch.testing.assert_close(functx.laplacian(f)(x), want)
    torch.testing.assert_close(functx.jit(functx.laplacian(f))(x), want)
    t = torch.ones_like(x)
    want2 = torch.func.jvp(lambda x: torch.func.jvp(f, (x,), (t,))[1], (x,), (t,))[1]
    torch.testing.assert_close(functx.jit(lambda x: functx.jet(f, (x,), ((t, torch.zeros_like(x)),))[1][1])(x),
                               want2)


def test_as_strided_of_a_value_of_unknown_layout_raises():
    """A traced value whose layout functx cannot know (wrapped with no source: what an op
    without a meta kernel on a non-contiguous input gives) raises naming as_strided rather
    than reading the value as contiguous; values computed from it are unknown too."""
    from functx.frontend import unwrap
    from functx.frontend.tensor import wrap_input

    def f(x):
        y = wrap_input(unwrap(x), None) * 2
        assert y._layout == "unknown"
        return torch.as_strided(y, (2,), (1,)).sum()
    with pytest.raises(functx.FunctxError, match="as_strided of a tensor whose memory layout"):
        functx.jit(f)(_layouts()["transposed"])


def test_layouts_asked_for_channels_last_and_empty_strided():
    """Ops on contiguous inputs whose result layout the caller chooses."""
    x = torch.randn(2, 3, 4, 5, dtype=D)

    def f(x):
        y = x.contiguous(memory_format=torch.channels_last)
        z = x.new_empty_strided((3, 4), (1, 3)).copy_(x[0, :, :, 0])
        assert y.stride() == (60, 1, 15, 3) and z.stride() == (1, 3)
        return torch.as_strided(y, (3,), (1,)).sum() * 2 + torch.as_strided(z, (2,), (3,)).sum()
    torch.testing.assert_close(functx.jit(f)(x), f(x))
    torch.testing.assert_close(functx.grad(f)(x), torch.func.grad(f)(x))


def test_clone_keeps_a_transposed_layout_so_view_raises_as_in_torch():
    """clone() preserves a transposed argument's layout, so .view(-1) of the clone raises in
    torch; functx accepted it (every wrapper looked contiguous)."""
    def f(x):
        y = x.clone()
        y.view(-1)[1:3].mul_(2)
        return (y ** 2).sum()
    xt = torch.randn(3, 2, dtype=D).t()
    for run in (f, functx.grad(f), functx.jit(f), torch.func.grad(f)):
        with pytest.raises(RuntimeError, match="view size is not compatible"):
            run(xt)
    torch.testing.assert_close(functx.grad(f)(xt.contiguous()), torch.func.grad(f)(xt.contiguous()))


def test_nested_transforms_under_jit_keep_one_trace_for_rows_of_a_batch():
    """Passing an argument's layout on to a nested transform is not reading its offset."""
    rows = torch.randn(3, 4, dtype=D)
    f = functx.jit(functx.grad(lambda r: r.sin().sum()))
    for r in rows:
        torch.testing.assert_close(f(r), r.cos())
    assert f.cache_size() == 1


def test_group_norm_of_a_value_of_unknown_layout():
    """A UNet's attention block: conv, reshape, unbind, SDPA, transpose, reshape, 1x1 conv, and
    GroupNorm after it. functx can't follow that layout (torch's meta kernels disagree with
    its CPU kernels there); GroupNorm runs torch's decomposition, which calls .contiguous()
    and then as_strided. That as_strided means the reported layout (it used to raise, and
    .contiguous() did not help). torch.func.jvp has no SDPA rule, so float64 central
    differences decide; grad is checked against torch.func."""
    torch.manual_seed(0)
    nn = torch.nn
    n, qkv, o, gn = nn.GroupNorm(4, 8), nn.Conv2d(8, 24, 1), nn.Conv2d(8, 8, 1), nn.GroupNorm(4, 8)
    for m in (n, qkv, o, gn):
        m.double()

    def f(x):
        B, C, H, W = x.shape
        q, k, v = qkv(n(x)).reshape(B, 3, C, H * W).unbind(1)
        a = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None], v.transpose(1, 2)[:, None])[:, 0]
        return gn(x + o(a.transpose(1, 2).reshape(B, C, H, W)))
    x, v = torch.randn(3, 8, 4, 4, dtype=torch.float64), torch.randn(3, 8, 4, 4, dtype=torch.float64)
    out, tangent = functx.jvp(f, (x,), (v,))
    torch.testing.assert_close(out, f(x).detach())
    eps = 1e-6
    torch.testing.assert_close(tangent, ((f(x + eps * v) - f(x - eps * v)) / (2 * eps)).detach(),
                               atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(functx.grad(lambda x: f(x).pow(2).sum())(x),
                               torch.func.grad(lambda x: f(x).pow(2).sum())(x))
    # user code: .contiguous() makes such a value's layout known, so as_strided reads it
    y = functx.jvp(lambda x: f(x).contiguous().as_strided((3, 8), (128, 1)), (x,), (v,))[0]
    torch.testing.assert_close(y, f(x).detach().contiguous().as_strided((3, 8), (128, 1)))
