"""Transformer / LLM code as researchers write it by hand (RMSNorm, SwiGLU, rotary
embeddings, causal and grouped-query attention, KV caches, tied embeddings, label-smoothed
cross entropy, mixture-of-experts routing, ensembles), under functx's transforms, eager and
under functx.jit. Each test pins either a divergence that was found and fixed (the
docstring says what was wrong and which oracle decides) or a representative program that
already worked. Oracles: torch.func (the same calls), eager execution for jit, a Python
loop for vmap, and float64 central differences where torch.func has no answer."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

import functx
from fd_oracles import assert_trees_close, central_differences

D = torch.float64


def _close(a, b, tol=1e-6):
    assert_trees_close(a, b, tol)


# ---------------------------------------------------------------- jit: KV caches written in place

E, H, MAXT = 8, 2, 10


class _CachedAttention(nn.Module):
    """Meta's Llama reference attention: the cache is a plain tensor attribute (registered=False)
    or a registered buffer (gpt-fast's KVCache), written in place at start_pos each step."""

    def __init__(self, registered):
        super().__init__()
        self.wq, self.wk, self.wv = (nn.Linear(E, E, bias=False) for _ in range(3))
        if registered:
            self.register_buffer("cache_k", torch.zeros(2, MAXT, H, E // H), persistent=False)
            self.register_buffer("cache_v", torch.zeros(2, MAXT, H, E // H), persistent=False)
        else:
            self.cache_k = torch.zeros(2, MAXT, H, E // H)
            self.cache_v = torch.zeros(2, MAXT, H, E // H)

    def forward(self, x, start_pos, mask=None):
        bsz, seqlen, _ = x.shape
        xq = self.wq(x).view(bsz, seqlen, H, E // H)
        xk = self.wk(x).view(bsz, seqlen, H, E // H)
        xv = self.wv(x).view(bsz, seqlen, H, E // H)
        self.cache_k = self.cache_k.to(xq)
        self.cache_v = self.cache_v.to(xq)
        self.cache_k[:bsz, start_pos: start_pos + seqlen] = xk
        self.cache_v[:bsz, start_pos: start_pos + seqlen] = xv
        keys = self.cache_k[:bsz, : start_pos + seqlen].transpose(1, 2)
        values = self.cache_v[:bsz, : start_pos + seqlen].transpose(1, 2)
        scores = torch.matmul(xq.transpose(1, 2), keys.transpose(2, 3)) / math.sqrt(E // H)
        if mask is not None:
            scores = scores + mask
        scores = F.softmax(scores.float(), dim=-1).type_as(xq)
        return torch.matmul(scores, values).transpose(1, 2).contiguous().view(bsz, seqlen, -1)


def _causal_mask(seqlen, start_pos):
    if seqlen == 1:
        return None
    mask = torch.triu(torch.full((seqlen, seqlen), float("-inf")), diagonal=1)
    return torch.hstack([torch.zeros((seqlen, start_pos)), mask])


def _decode(model, x, start_pos):
    return model(x, start_pos, _causal_mask(x.shape[1], start_pos))


@pytest.mark.parametrize("registered", [True, False], ids=["buffer", "attribute"])
@pytest.mark.parametrize("how", ["argument", "closure"])
def test_kv_cache_written_in_place_under_jit_matches_eager(registered, how):
    """A decode step that writes its KV cache in place (`self.cache_k[:b, s:s+t] = xk`),
    jitted as gpt-fast does (`decode_one_token(model, x, input_pos)`: the model passed as an
    argument) or closing over the model, with the cache a registered buffer or, as in Meta's
    Llama reference, a plain tensor attribute. functx.jit raised PlainWriteError in three of
    the four: it passed as arguments (and wrote back) only registered buffers, and only of
    modules f reaches through its closure or globals, never of modules passed to it. Now the
    buffers of passed modules are arguments too, and, once a trace wrote into module state,
    so are plain tensor attributes (compile/module_buffers.py). Oracle: eager, step by step,
    outputs and caches."""
    torch.manual_seed(0)
    eager, jitted = _CachedAttention(registered), _CachedAttention(registered)
    jitted.load_state_dict(eager.state_dict())
    if how == "argument":
        step = functx.jit(_decode, static_argnums=2)
    else:
        j = functx.jit(lambda x, pos: _decode(jitted, x, pos), static_argnums=1)
        step = lambda model, x, pos: j(x, pos)  # noqa: E731
    pos = 0
    for n in (4, 1, 1):
        x = torch.randn(2, n, E)
        _close(step(jitted, x, pos), _decode(eager, x, pos), 1e-5)
        _close((jitted.cache_k, jitted.cache_v), (eager.cache_k, eager.cache_v), 1e-5)
        pos += n


def test_batchnorm_passed_as_an_argument_to_jit_updates_its_running_statistics():
    """`step = functx.jit(lambda model, x: model(x))` with a training BatchNorm model as the
    argument raised PlainWriteError (its running statistics are buffers of a module passed,
    not reached); now they are arguments written back each call. Oracle: eager outputs and
    buffers over three steps, then eval mode."""
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    b = copy.deepcopy(a)
    step = functx.jit(lambda model, x: model(x))
    for _ in range(3):
        x = torch.randn(5, 3)
        _close(step(b, x), a(x), 1e-5)
        _close(dict(b.named_buffers()), dict(a.named_buffers()), 1e-6)
    a.eval(), b.eval()
    x = torch.randn(5, 3)
    _close(step(b, x), a(x), 1e-5)


class _JitForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.bn = nn.Linear(3, 4), nn.BatchNorm1d(4)

    @functx.jit
    def forward(self, x):
        return self.bn(self.lin(x)).relu()


def test_a_jitted_forward_method_of_a_training_batchnorm_model_updates_its_statistics():
    """`@functx.jit` on a module's forward method (self static) in training mode raised
    PlainWriteError at BatchNorm's num_batches_tracked += 1: the buffers of a jitted method's
    self were not passed as arguments. Oracle: the same module without jit."""
    torch.manual_seed(0)
    jitted = _JitForward()
    eager = copy.deepcopy(jitted)
    for _ in range(3):
        x = torch.randn(6, 3)
        _close(jitted(x), _JitForward.forward.f(eager, x), 1e-5)
        _close(dict(jitted.named_buffers()), dict(eager.named_buffers()), 1e-6)


# ---------------------------------------------------------------- activation checkpointing

def test_reentrant_checkpoint_of_a_layer_closing_over_traced_parameters_differentiates_them():
    """`checkpoint(layer, h, use_reentrant=True)` (HF's gradient checkpointing default) in a
    loss differentiated with respect to the parameters passed through functional_call, the
    input h a plain tensor: functx gave silently zero parameter gradients (torch's
    CheckpointFunction.apply saw no traced argument and ran the layer under no_grad, which
    cut the closed-over parameters off). torch.func raises (an old-style Function) and eager
    autograd warns and returns no gradients for them (the reentrant variant's known
    limitation). Now CheckpointFunction inside a transform is functx.checkpoint, whatever its
    arguments. Oracle: torch.func.grad of the same loss without checkpoint, and float64
    central differences for one weight."""
    import torch.utils.checkpoint as cp
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(6, 2, 12, dropout=0.0, batch_first=True, norm_first=True).double().eval()
    params = {k: v.detach() for k, v in layer.named_parameters()}
    x = torch.randn(2, 4, 6, dtype=D)
    mask = nn.Transformer.generate_square_subsequent_mask(4, dtype=D)

    def loss(p, x, ckpt=True):
        def block(h):
            return functional_call(layer, p, (h,), {"src_mask": mask})
        if ckpt:
            return cp.checkpoint(block, cp.checkpoint(block, x, use_reentrant=True), use_reentrant=True).pow(2).sum()
        return block(block(x)).pow(2).sum()

    want = torch.func.grad(lambda p, x: loss(p, x, False))(params, x)
    _close(functx.grad(loss)(params, x), want, 1e-9)
    _close(functx.jit(functx.grad(loss))(params, x), want, 1e-9)
    per_sample = torch.func.vmap(torch.func.grad(lambda p, x: loss(p, x, False)), in_dims=(None, 0))(params, x[:, None])
    _close(functx.vmap(functx.grad(loss), in_dims=(None, 0))(params, x[:, None]), per_sample, 1e-9)
    b = params["linear2.bias"]
    fd = central_differences(lambda b: loss({**params, "linear2.bias": b}, x, False), b)
    torch.testing.assert_close(functx.grad(loss)(params, x)["linear2.bias"], fd, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------- errors in the user's shapes

def test_kv_cache_concat_of_mismatched_shapes_under_vmap_names_the_users_dimension():
    """`torch.cat([cache, k], dim=2)` with a wrong head count, under vmap: functx raised
    torch.cat's message from deep inside the concatenate primitive's impl, naming the
    batched operands' dimension 3 (torch.func names its physical dimension too); eager torch,
    on one example, says dimension 2. Now the lowering checks the shapes the user sees and
    raises eager torch's message (also for a rank mismatch)."""
    cache, k = torch.randn(3, 1, 2, 5, 4), torch.randn(3, 1, 1, 1, 4)

    def step(cache, k):
        return torch.cat([cache, k], dim=2)
    with pytest.raises(RuntimeError) as eager:
        step(cache[0], k[0])
    with pytest.raises(RuntimeError, match="except in dimension 2") as batched:
        functx.vmap(step)(cache, k)
    assert str(batched.value) == str(eager.value)
    with pytest.raises(RuntimeError, match="same number of dimensions: got 4 and 3"):
        functx.vmap(step)(cache, k[:, 0])


# ---------------------------------------------------------------- losses over a large vocabulary

def test_logsumexp_gradient_over_a_wide_float32_row_is_the_softmax():
    """A z-loss / sampled-softmax term `torch.logsumexp(logits, -1)` over a wide float32 row:
    functx differentiated torch's decomposition through its amax shift, which adds
    (1 - sum(softmax)) to the argmax entry: zero in exact arithmetic, ~1 ulp of 1.0 in
    float32, where the softmax entry itself is ~1e-6 (4% off, eager and jit alike). Now the
    shift is a constant (stop_gradient), as in torch's backward formula and JAX. Oracle:
    torch.func in float64."""
    torch.manual_seed(0)
    logits = torch.rand(2, 200_000) + 10.0

    def zloss(x):
        return torch.logsumexp(x, -1).sum()
    want = torch.func.grad(zloss)(logits.double())
    for got in (functx.grad(zloss)(logits), functx.jit(functx.grad(zloss))(logits)):
        err = (got.double() - want).abs().max() / want.abs().max()
        assert err < 1e-5, err
    x = torch.randn(3, 5, dtype=D)
    x[1] = 2.0        # a row of ties

    def f(x):
        return (torch.logsumexp(x * x.sin(), -1, keepdim=True) ** 2).sum()
    _close(functx.grad(f)(x), torch.func.grad(f)(x), 1e-12)
    _close(functx.hessian(f)(x), torch.func.hessian(f)(x), 1e-10)


# ---------------------------------------------------------------- jit: Python state f mutates

class _DynamicCache:
    """HF-style cache: a list of key tensors per layer, grown with torch.cat."""

    def __init__(self):
        self.keys = []

    def update(self, k, layer):
        if len(self.keys) <= layer:
            self.keys.append(k)
        else:
            self.keys[layer] = torch.cat([self.keys[layer], k], 1)
        return self.keys[layer]


def test_a_cache_object_that_jit_would_update_only_at_trace_time_raises():
    """`decode(x, cache)` with an HF-style cache object whose list the step appends to: under
    functx.jit the append ran once, at trace time (leaving a traced value in the cache), and
    every later call ran the compiled graph, which neither grew the cache nor read it:
    silently wrong attention outputs from the second step on. Oracle: eager decode (which
    differs from the second step on). The same with the cache in f's closure or held by
    the module jitted. Now a trace that leaves a traced value in the state of a plain object
    passed to f or reached by it raises, naming where."""
    W = torch.randn(4, 4)

    def decode(x, cache):
        k = cache.update(x @ W, 0)
        return torch.softmax(x @ k.transpose(-1, -2), -1) @ k
    with pytest.raises(functx.FunctxError, match=r"argument 1 \(a _DynamicCache\): keys\[0\]"):
        functx.jit(decode)(torch.randn(1, 1, 4), _DynamicCache())
    closed = _DynamicCache()
    with pytest.raises(functx.FunctxError, match=r"\(closed.keys\[0\]\)"):
        functx.jit(lambda x: decode(x, closed))(torch.randn(1, 1, 4))

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.cache = nn.Linear(4, 4), _DynamicCache()

        def forward(self, x):
            return decode(self.proj(x), self.cache)
    with pytest.raises(functx.FunctxError, match=r"\(Decoder.cache.keys\[0\]\)"):
        functx.jit(Decoder())(torch.randn(1, 1, 4))
    cache = _DynamicCache()      # eager, and jit with the cache's tensors as arguments, agree
    x = torch.randn(1, 1, 4)
    step = functx.jit(lambda x, k: torch.softmax(x @ k.transpose(-1, -2), -1) @ k)
    _close(step(x, cache.update(x @ W, 0)), decode(x, _DynamicCache()))


# gpt-fast's decode step: a KVCache submodule with registered buffers written at tensor positions
class _KVCache(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("k_cache", torch.zeros(1, 2, 8, 4))
        self.register_buffer("v_cache", torch.zeros(1, 2, 8, 4))

    def update(self, input_pos, k_val, v_val):
        k_out, v_out = self.k_cache, self.v_cache
        k_out[:, :, input_pos] = k_val
        v_out[:, :, input_pos] = v_val
        return k_out, v_out


class _GFModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.wqkv, self.wo = nn.Linear(8, 24, bias=False), nn.Linear(8, 8, bias=False)
        self.kv_cache = _KVCache()
        self.register_buffer("causal_mask", torch.tril(torch.ones(8, 8, dtype=torch.bool)))

    def forward(self, x, input_pos):
        mask = self.causal_mask[None, None, input_pos]
        bsz, seqlen, _ = x.shape
        q, k, v = (t.view(bsz, seqlen, 2, 4).transpose(1, 2) for t in self.wqkv(x).split([8, 8, 8], dim=-1))
        k, v = self.kv_cache.update(input_pos, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0)
        return self.wo(y.transpose(1, 2).contiguous().view(bsz, seqlen, 8))


def test_gpt_fast_decode_one_token_with_the_model_as_an_argument_matches_eager():
    """gpt-fast's `decode_one_token(model, x, input_pos)` under jit: the model passed as an
    argument, its KVCache buffers written at tensor positions (`k_out[:, :, input_pos] =
    k_val`), the causal mask a buffer indexed by input_pos. Raised PlainWriteError (buffers of
    a module passed, not reached); now one trace serves the prefill and one every decode
    step. Oracle: eager, outputs and caches."""
    torch.manual_seed(0)
    eager = _GFModel().eval()
    jitted = copy.deepcopy(eager)
    step = functx.jit(lambda model, x, pos: model(x, pos))
    for x, pos in [(torch.randn(1, 3, 8), torch.arange(3))] + [(torch.randn(1, 1, 8), torch.tensor([t]))
                                                            for t in range(3, 6)]:
        _close(step(jitted, x, pos), eager(x, pos), 1e-5)
        _close(dict(jitted.named_buffers()), dict(eager.named_buffers()), 1e-6)
    assert step.trace_count == 2


# ---------------------------------------------------------------- fully padded rows

def test_fully_masked_attention_rows_have_finite_forward_mode_derivatives_where_torch_func_gives_nan():
    """A batch element whose keys are all padding: masked_fill(-inf) -> softmax (a NaN row)
    -> nan_to_num. functx's jvp and hessian agree with central differences and with reverse
    mode; torch.func's forward mode (jvp, hessian) gives NaN (torch is wrong here, functx
    was already right: a pin). The same row through SDPA with a boolean mask, under jit too."""
    torch.manual_seed(0)
    q = torch.randn(1, 2, 3, 2, dtype=D)
    t = torch.randn_like(q)
    padded = torch.tensor([[True, True, True]])

    def manual(q):
        s = (q @ q.mT).masked_fill(padded[:, None, None, :], float("-inf"))
        return (s.softmax(-1).nan_to_num() @ q).pow(2).sum() + q.pow(3).sum()

    def sdpa(q):
        mask = ~padded[:, None, None, :]
        return F.scaled_dot_product_attention(q, q, q, attn_mask=mask).pow(2).sum() + q.pow(3).sum()
    for f in (manual, sdpa):
        fd = (central_differences(f, q) * t).sum()
        torch.testing.assert_close(functx.jvp(f, (q,), (t,))[1], fd, atol=1e-6, rtol=1e-6)
        jitted = functx.jit(lambda q, t: functx.jvp(f, (q,), (t,))[1])
        torch.testing.assert_close(jitted(q, t), fd, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(functx.hessian(f)(q), central_differences(torch.func.grad(f), q),
                                   atol=1e-5, rtol=1e-5)
    assert torch.func.jvp(manual, (q,), (t,))[1].isnan()


# ---------------------------------------------------------------- a Llama-style model, end to end

class _RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _rope(x, cos, sin):
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class _Block(nn.Module):
    def __init__(self, d=8, n_heads=2, n_kv=1, sdpa=True):
        super().__init__()
        self.h, self.kv, self.hd, self.sdpa = n_heads, n_kv, d // n_heads, sdpa
        self.wq, self.wk = nn.Linear(d, d, bias=False), nn.Linear(d, n_kv * self.hd, bias=False)
        self.wv, self.wo = nn.Linear(d, n_kv * self.hd, bias=False), nn.Linear(d, d, bias=False)
        self.w1, self.w3 = nn.Linear(d, 2 * d, bias=False), nn.Linear(d, 2 * d, bias=False)
        self.w2 = nn.Linear(2 * d, d, bias=False)
        self.n1, self.n2 = _RMSNorm(d), _RMSNorm(d)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        h = self.n1(x)
        q = _rope(self.wq(h).view(B, T, self.h, self.hd), cos[:T, None], sin[:T, None]).transpose(1, 2)
        k = _rope(self.wk(h).view(B, T, self.kv, self.hd), cos[:T, None], sin[:T, None]).transpose(1, 2)
        v = self.wv(h).view(B, T, self.kv, self.hd).transpose(1, 2)
        k, v = k.repeat_interleave(self.h // self.kv, dim=1), v.repeat_interleave(self.h // self.kv, dim=1)
        if self.sdpa:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            s = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(self.hd)
            s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1), float("-inf"))
            a = F.softmax(s, dim=-1) @ v
        x = x + self.wo(a.transpose(1, 2).reshape(B, T, -1))
        return x + self.w2(F.silu(self.w1(self.n2(x))) * self.w3(self.n2(x)))


class _TinyLlama(nn.Module):
    def __init__(self, vocab=11, d=8, sdpa=True):
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=0)
        self.blocks = nn.ModuleList([_Block(d, sdpa=sdpa) for _ in range(2)])
        self.norm = _RMSNorm(d)
        inv = 1.0 / (10000 ** (torch.arange(0, d // 2, 2).double() / (d // 2)))
        freqs = torch.outer(torch.arange(16).double(), inv)
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def forward(self, idx):
        h = self.emb(idx)
        for b in self.blocks:
            h = b(h, self.cos, self.sin)
        return self.norm(h) @ self.emb.weight.T        # tied output weights


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "manual"])
def test_tiny_llama_loss_under_grad_per_sample_grad_and_jit_matches_torch_func(sdpa):
    """RMSNorm, rotary embeddings (x[..., ::2], stack, flatten), grouped-query attention by
    repeat_interleave, causal SDPA or einsum + masked_fill(-inf) + softmax, SwiGLU, a
    padding_idx embedding tied to the output, cross entropy with ignore_index=-100 and
    label smoothing: grad, vmap(grad) per-sample gradients and jit(grad) of the loss with
    respect to the parameters (functional_call), in float64. Already right: a
    representative. Oracle: torch.func."""
    torch.manual_seed(0)
    model = _TinyLlama(sdpa=sdpa).double().eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    idx, tgt = torch.randint(0, 11, (3, 6)), torch.randint(0, 11, (3, 6))
    tgt[0, :2] = -100

    def loss(p, idx, tgt):
        logits = functional_call(model, p, (idx,))
        return F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=-100, label_smoothing=0.1)

    def one(p, idx, tgt):
        return loss(p, idx[None], tgt[None])
    want = torch.func.grad(loss)(params, idx, tgt)
    _close(functx.grad(loss)(params, idx, tgt), want, 1e-9)
    _close(functx.jit(functx.grad(loss))(params, idx, tgt), want, 1e-9)
    per_sample = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))(params, idx, tgt)
    _close(functx.vmap(functx.grad(one), in_dims=(None, 0, 0))(params, idx, tgt), per_sample, 1e-9)


def test_tiny_llama_block_forward_mode_and_hessian_in_its_input():
    """jvp, jacfwd and hessian of a causal-SDPA block's output in its input, where torch.func
    has no forward mode for CPU flash attention: central differences decide (and
    torch.func.jacrev for the Jacobian). Already right: a representative."""
    torch.manual_seed(0)
    block = _Block(sdpa=True).double()
    cos, sin = _TinyLlama().double().cos, _TinyLlama().double().sin
    x, t = torch.randn(1, 3, 8, dtype=D), torch.randn(1, 3, 8, dtype=D)

    def f(x):
        return block(x, cos, sin).tanh().pow(2).sum()
    fd = (central_differences(f, x) * t).sum()
    torch.testing.assert_close(functx.jvp(f, (x,), (t,))[1], fd, atol=1e-6, rtol=1e-6)
    g = functx.jacfwd(lambda x: block(x, cos, sin))(x)
    _close(g, torch.func.jacrev(lambda x: block(x, cos, sin))(x), 1e-9)
    torch.testing.assert_close(functx.hessian(f)(x), central_differences(torch.func.grad(f), x), atol=1e-5, rtol=1e-5)


def test_cross_entropy_with_a_misshapen_target_raises_torchs_runtime_error():
    """F.cross_entropy(logits, target) with a 2-D target of another class count (a one-hot or
    probability target of the wrong width): functx raised AssertionError (the exception type of
    torch's decomposition) where eager torch and torch.func raise RuntimeError, so an
    `except RuntimeError` in the caller missed it. Oracle: eager torch's exception."""
    x, target = torch.randn(5, 3), torch.rand(5, 4)
    with pytest.raises(RuntimeError, match="multi-target not supported"):
        F.cross_entropy(x, target)
    for run in (functx.grad(lambda x: F.cross_entropy(x, target)), functx.jit(lambda x: F.cross_entropy(x, target))):
        with pytest.raises(RuntimeError, match="multi-target not supported"):
            run(x)


def test_z_loss_tangent_keeps_float32_where_torch_func_returns_float64():
    """A PaLM-style z-loss `1e-4 * logsumexp(logits).pow(2).mean()` in float32 under jvp:
    torch.func's tangent comes back float64 (its forward-mode formula for mean of pow times
    a Python float promotes), functx's is float32 like the primal, with the same value.
    torch.func is wrong here (a tangent has its primal's dtype): a pin."""
    torch.manual_seed(0)
    logits, t = torch.randn(4, 7), torch.randn(4, 7)

    def zloss(x):
        return 1e-4 * torch.logsumexp(x, -1).pow(2).mean()
    out, tangent = functx.jvp(zloss, (logits,), (t,))
    assert out.dtype == tangent.dtype == torch.float32
    want = torch.func.jvp(zloss, (logits.double(),), (t.double(),))[1]
    torch.testing.assert_close(tangent.double(), want, atol=1e-9, rtol=1e-5)
    assert torch.func.jvp(zloss, (logits,), (t,))[1].dtype == torch.float64


def test_rebinding_a_module_buffer_to_another_dtype_under_jit_raises_instead_of_losing_the_cache():
    """Llama's `self.cache_k = self.cache_k.to(xq)` with a float32 cache in a float64 model in
    training mode (its buffers passed as arguments from the first call): the trace put the
    converted tensor in the buffer's place and wrote into it; jit then restored the old
    float32 buffer, so the writes were lost and every later step attended to zeros
    (silently: outputs off by ~0.5). Eager keeps the converted, written cache. Now a trace
    that rebinds a buffer jit passes raises, naming it; converting the cache first works."""
    torch.manual_seed(0)
    model = _CachedAttention(registered=True).double()
    model.cache_k, model.cache_v = model.cache_k.float(), model.cache_v.float()
    x = torch.randn(2, 4, E, dtype=D)

    def step(model, x, pos):
        mask = _causal_mask(x.shape[1], pos)
        return model(x, pos, None if mask is None else mask.double())
    with pytest.raises(functx.FunctxError, match=r"_CachedAttention.cache_k, _CachedAttention.cache_v"):
        functx.jit(step, static_argnums=2)(model, x, 0)
    eager = copy.deepcopy(model).double()
    model.double()
    jitted = functx.jit(step, static_argnums=2)
    _close(jitted(model, x, 0), step(eager, x, 0), 1e-6)       # (the model's softmax is float32)
    x = torch.randn(2, 1, E, dtype=D)
    _close(jitted(model, x, 4), step(eager, x, 4), 1e-6)
    _close(dict(model.named_buffers()), dict(eager.named_buffers()), 1e-6)


def test_torch_allclose_inside_a_transform_is_a_python_bool_as_in_torch_func():
    """A sanity check in model code (`if not torch.allclose(attn.sum(-1), ones): warn`) under
    functx.grad raised "TypeError: 'bool' object is not iterable" from the opaque fallback,
    which expected tensor outputs (also when comparing with a functx tensor left in a memo
    dict outside any transform). Now an ATen op that returns a Python value runs on the
    inputs' values, as torch.equal did; under jit or vmap a clear error says Python needs
    them. Oracle: torch.func.grad."""
    x = torch.randn(2, 3)

    def f(x):
        attn = x.softmax(-1)
        scale = 2.0 if torch.allclose(attn.sum(-1), torch.ones(2)) else 3.0
        return (attn * x).sum() * scale
    _close(functx.grad(f)(x), torch.func.grad(f)(x))
    with pytest.raises(functx.ConcretizationError):
        functx.jit(f)(x)
