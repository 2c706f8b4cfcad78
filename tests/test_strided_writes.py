"""Writes through views made of select and slice ops (`out[t] = h`, `x[:, 1::2] = v`,
`buf[-1, 2:][0] += y`) become one update_slice of the root (prims/indexing.py) instead of a
scatter through a flat index tensor: checked against eager PyTorch (values), torch.func
(derivatives, vmap) and float64 finite differences (forward mode), on random view chains."""
import random

import pytest
import torch

import functx

aten = torch.ops.aten
D = torch.float64


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def rnn_like(W, xs):
    """An RNN filling its outputs step by step, as research code writes it."""
    h, out = xs.new_zeros(xs.shape[1:]), xs.new_zeros(xs.shape)
    for t in range(xs.shape[0]):
        h = torch.tanh(h @ W + xs[t])
        out[t] = h
    out[-1, :, 1::2] *= 0.5             # a strided block of a selected row
    out[1:3][0] += out[0]               # select of a slice
    return out.pow(2).sum()


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 4, generator=g, dtype=D) * 0.5, torch.randn(5, 3, 4, generator=g, dtype=D)


def test_the_graph_writes_blocks_without_index_tensors():
    W, xs = _inputs()
    graph = str(functx.make_graph(rnn_like)(W, xs))
    assert "update_slice" in graph and "scatter" not in graph


@pytest.mark.parametrize("how", ["grad", "vmap(grad)", "jvp", "hessian", "jit", "jit(grad)"])
def test_writes_through_select_and_slice_views_match_torch(how):
    W, xs = _inputs()
    if how == "grad":
        _close(functx.grad(rnn_like, argnums=(0, 1))(W, xs), torch.func.grad(rnn_like, argnums=(0, 1))(W, xs))
    elif how == "vmap(grad)":
        batch = torch.stack([xs, 2 * xs])
        _close(functx.vmap(functx.grad(rnn_like), in_dims=(None, 0))(W, batch),
               torch.func.vmap(torch.func.grad(rnn_like), in_dims=(None, 0))(W, batch))
    elif how == "jvp":
        t = torch.randn_like(W)
        eps = 1e-6
        fd = (rnn_like(W + eps * t, xs) - rnn_like(W - eps * t, xs)) / (2 * eps)
        torch.testing.assert_close(functx.jvp(lambda w: rnn_like(w, xs), (W,), (t,))[1], fd, rtol=1e-6, atol=1e-6)
    elif how == "hessian":
        _close(functx.hessian(rnn_like)(W, xs), torch.func.hessian(rnn_like)(W, xs))
    elif how == "jit":
        _close(functx.jit(rnn_like)(W, xs), rnn_like(W, xs))
    else:
        _close(functx.jit(functx.grad(rnn_like))(W, xs), torch.func.grad(rnn_like)(W, xs))


def _random_chain(rng, shape):
    """A random chain of select / slice ops (negative indices, steps, out-of-range ends)."""
    probe, chain = torch.empty(shape), []
    for _ in range(rng.randint(1, 3)):
        if probe.dim() == 0:
            break
        d = rng.randint(-probe.dim(), probe.dim() - 1)
        if rng.random() < 0.4 and probe.shape[d] > 0:
            args = (aten.select.int, d, rng.randint(-probe.shape[d], probe.shape[d] - 1))
        else:
            args = (aten.slice.Tensor, d, rng.choice([None, rng.randint(-6, 6)]),
                    rng.choice([None, rng.randint(-6, 6)]), rng.choice([1, 2, 3]))
        try:
            probe = args[0](probe, *args[1:])
        except (RuntimeError, IndexError):
            continue
        chain.append(args)
    return chain


def _view(x, chain):
    for func, *args in chain:
        x = func(x, *args)
    return x


@pytest.mark.parametrize("seed", range(6))
def test_random_view_chains(seed):
    rng = random.Random(seed)
    for _ in range(15):
        shape = tuple(rng.randint(1, 5) for _ in range(rng.randint(1, 3)))
        chain = _random_chain(rng, shape)
        n = _view(torch.empty(shape), chain).shape

        def f(x, v):
            buf = x * 1.0
            view = _view(buf, chain)
            view.mul_(v.sin())          # the view's own old values are read: not a plain overwrite
            view += v
            return buf.exp().sum()
        x, v = torch.randn(shape, dtype=D), torch.randn(n, dtype=D)
        _close(functx.jit(f)(x, v), f(x, v))
        _close(functx.grad(f, argnums=(0, 1))(x, v), torch.func.grad(f, argnums=(0, 1))(x, v))
        xs, vs = torch.stack([x, 2 * x]), torch.stack([v, -v])
        _close(functx.vmap(f)(xs, vs), torch.func.vmap(f)(xs, vs))
        _close(functx.vmap(f, in_dims=(0, None))(xs, v), torch.func.vmap(f, in_dims=(0, None))(xs, v))


def test_eager_rules_write_a_dying_buffer_in_place_and_only_then(monkeypatch):
    # An eager level's combined rule writes `out[t] = h` over the buffer the previous write made
    # when nothing else reads it (rule_cache._written_over): each step then costs its block,
    # not a copy of the buffer. A view of the buffer saved for the backward pass (`s * s`
    # below) or read later keeps the copy.
    import importlib
    indexing = importlib.import_module("functx.prims.indexing")
    units = importlib.import_module("functx.frontend.function_units")
    batches = importlib.import_module("functx.frontend.unit_batches")
    writes = []
    in_place = indexing.update_slice_in_place_p.impl

    def counting(x, v, **params):
        writes.append(x.shape)
        return in_place(x, v, **params)
    monkeypatch.setattr(indexing.update_slice_in_place_p, "impl", counting)
    units.CACHE.clear()
    batches.COMBINED.clear()
    batches.SEEN.clear()

    def f(W, xs):
        out = xs.new_zeros(xs.shape)
        out[0] = torch.tanh(xs[0] @ W)
        s = out[0]
        y = (s * s).sum()                  # s, a view of the buffer, is a residual
        h = s
        for t in range(1, xs.shape[0]):
            h = torch.tanh(h @ W + xs[t])
            out[t] = h
        out[0] = out[1] * 2                # s now reads the new values, as in torch
        return y + (s * out).sum() + out.pow(2).sum()

    def out_of_place(W, xs):
        # torch's autograd refuses f (a saved view written in place): the out-of-place program
        # is the oracle (sharp_bits §14)
        rows = [torch.tanh(xs[0] @ W)]
        y = (rows[0] * rows[0]).sum()
        h = rows[0]
        for t in range(1, xs.shape[0]):
            h = torch.tanh(h @ W + xs[t])
            rows.append(h)
        rows[0] = rows[1] * 2
        out = torch.stack(rows)
        return y + (out[0] * out).sum() + out.pow(2).sum()
    W, xs = _inputs()
    _close(f(W, xs), out_of_place(W, xs))
    for _ in range(3):
        _close(functx.grad(f, argnums=(0, 1))(W, xs), torch.func.grad(out_of_place, argnums=(0, 1))(W, xs))
        t = torch.randn_like(W)
        eps = 1e-6
        fd = (f(W + eps * t, xs) - f(W - eps * t, xs)) / (2 * eps)
        torch.testing.assert_close(functx.jvp(lambda w: f(w, xs), (W,), (t,))[1], fd, rtol=1e-6, atol=1e-6)
    assert writes, "the combined rules never wrote in place"


@pytest.mark.parametrize("backend", ["eager", "cpu"])
def test_jit_writes_a_dying_buffer_in_place_and_only_then(backend):
    # compile/write_in_place.py: a chain of out[t] = h writes becomes update_slice_in_place
    # (no copy of the buffer per step); a buffer read between writes (a running sum, a view
    # kept) or returned keeps its copies. Values as eager PyTorch's.
    def chain(W, xs):
        h, out = xs.new_zeros(xs.shape[1:]), xs.new_zeros(xs.shape)
        for t in range(xs.shape[0]):
            h = torch.tanh(h @ W + xs[t])
            out[t] = h
        return out

    def read_between(W, xs):
        out, total = xs.new_zeros(xs.shape), 0.0
        first = out[0]                       # a view of the buffer: it sees later writes
        for t in range(xs.shape[0]):
            out[t] = torch.tanh(xs[t] @ W) + t
            total = total + out.sum() + first.sum()
        return out, total
    W, xs = _inputs()
    graph = str(functx.make_graph(chain)(W, xs))
    assert graph.count("update_slice") == xs.shape[0]        # the pipeline runs at compile time
    compiled = functx.explain(functx.jit(chain, backend=backend))(W, xs)
    assert "update_slice_in_place" in str(compiled)
    for f in (chain, read_between, functx.grad(lambda W, xs: chain(W, xs).pow(2).sum())):
        jf = functx.jit(f, backend=backend)
        for _ in range(2):
            torch.testing.assert_close(jf(W, xs), f(W, xs), rtol=1e-12, atol=1e-12)
    assert "update_slice_in_place" not in str(functx.explain(functx.jit(read_between, backend=backend))(W, xs))
    # the backward loop: split_block (cotangent with the block zeroed, and the block) in place
    loss = functx.grad(lambda W, xs: chain(W, xs).pow(2).sum(), argnums=(0, 1))
    assert "split_block_in_place" in str(functx.explain(functx.jit(loss, backend=backend))(W, xs))
