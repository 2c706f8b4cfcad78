"""PyTorch functions whose C++ composite kernels would bypass functx, routed to PyTorch's own
Python decompositions instead (from TracerTensor.__torch_function__).

ATen's C++ RNN kernels (lstm, gru, rnn_tanh, rnn_relu) run before the Python dispatch key
and update temporaries in place (`linear_hh(hx).add_(igates)`). When such a temporary holds
no traced value (vmap over the input with unbatched weights, jvp with respect to the input)
functx cannot track the write. torch._decomp's versions compute the same cells out of place; the single-step cells
(lstm_cell, gru_cell, rnn_*_cell) have none, so they are written out here.
"""
from __future__ import annotations

import math

import torch
from torch._decomp import decomposition_table

from ..core.errors import ConcretizationError, FunctxError, user_frame_summary
from ..core.trace import Tracer, reverse_mode_active
from .lowerings.attention import scaled_dot_product_attention
from .lowerings.registry import register_special

aten = torch.ops.aten
_VF = torch._C._VariableFunctions


def _by_overload(packet):
    """The .input overload for padded input, .data for a PackedSequence's data and batch
    sizes: in .data the parameter list comes fourth (in .input the fourth is has_biases)."""
    on_input, on_data = decomposition_table[packet.input], decomposition_table[packet.data]

    def run(*args, **kwargs):
        return (on_data if isinstance(args[3], (list, tuple)) else on_input)(*args, **kwargs)
    return run


def _concrete_sizes(sizes, what, name="the sequence lengths"):
    """Sequence lengths / batch sizes / bag offsets as a plain tensor: shapes follow them."""
    if type(sizes) is torch.Tensor:
        return sizes
    try:
        return torch.tensor(sizes.tolist(), dtype=torch.int64)
    except FunctxError as e:
        raise ConcretizationError(
            f"functx: {what} needs {name} as concrete values (its shapes depend on them), but here "
            f"they are traced (computed inside jit or per example under "
            f"vmap):\n{user_frame_summary()}\nPass the lengths as a plain CPU tensor or list made "
            "outside the jitted function (from the data loader), or skip packing: run the RNN on the "
            "padded batch and mask the padded steps (torch.where(mask, out, 0)).") from e


def pack_padded_sequence(input, lengths, batch_first):
    """aten._pack_padded_sequence: the time-major rows of the still-running sequences, step by
    step. torch's own kernel, run on a one-wide stand-in, checks the lengths (its messages)
    and gives the batch sizes."""
    lengths = _concrete_sizes(lengths, "pack_padded_sequence")
    with torch.utils._python_dispatch._disable_current_modes():
        _, batch_sizes = _VF._pack_padded_sequence(torch.zeros(input.shape[:2] + (1,)), lengths, batch_first)
    steps = input.transpose(0, 1) if batch_first else input
    data = torch.cat([steps[t, :n] for t, n in enumerate(batch_sizes.tolist())])
    return data, batch_sizes


def pad_packed_sequence(data, batch_sizes, batch_first, padding_value, total_length):
    """aten._pad_packed_sequence: each step's rows, padded with padding_value to the batch
    size, stacked along time (then total_length steps of padding)."""
    batch_sizes = _concrete_sizes(batch_sizes, "pad_packed_sequence")
    sizes = batch_sizes.tolist()
    batch, rest = sizes[0], tuple(data.shape[1:])
    steps, start = [], 0
    for n in sizes:
        steps.append(torch.cat([data[start:start + n], data.new_full((batch - n,) + rest, padding_value)]))
        start += n
    steps += [data.new_full((batch,) + rest, padding_value)] * max(0, total_length - len(sizes))
    out = torch.stack(steps, 1 if batch_first else 0)
    lengths = (batch_sizes[:, None] > torch.arange(batch)).sum(0)
    return out, lengths


# F.embedding_bag reaches ATen with torch functions disabled, so this sits in dispatch's
# SPECIAL table (on the wrappers), not in COMPOSITES. The _forward_only variant is what torch
# picks when nothing requires grad (TracerTensors never do).
@register_special(aten._embedding_bag.default, aten._embedding_bag_forward_only.default)
def embedding_bag(weight, indices, offsets, scale_grad_by_freq=False, mode=0, sparse=False,
                  per_sample_weights=None, include_last_offset=False, padding_idx=None):
    """aten.embedding_bag as a gather into a (bags, longest bag) grid and a masked reduction
    (mode 0 sum, 1 mean, 2 max; empty bags give 0, padding_idx entries are left out), so every
    transform and the compiler see plain indexing. The extra outputs follow torch's CPU kernel."""
    offsets = _concrete_sizes(offsets, "embedding_bag", "the bag offsets")
    n = indices.shape[0]
    bounds = offsets.tolist() if include_last_offset else offsets.tolist() + [n]
    _check_bag_offsets(bounds, n, include_last_offset)
    starts, ends = torch.tensor(bounds[:-1], dtype=torch.int64), torch.tensor(bounds[1:], dtype=torch.int64)
    width = max([0] + (ends - starts).tolist())
    slot = torch.arange(width)
    valid = slot < (ends - starts)[:, None]
    grid = torch.where(valid, starts[:, None] + slot, 0).clamp(max=max(n - 1, 0))
    rows = torch.embedding(weight, indices, -1, scale_grad_by_freq, False)[grid]
    ids = indices[grid]
    keep = valid if padding_idx is None or padding_idx < 0 else valid & (ids != padding_idx)
    count = keep.sum(1)
    if per_sample_weights is not None:
        rows = rows * per_sample_weights[grid][..., None]
    if mode == 2:
        best = torch.where(keep[..., None], rows, float("-inf")).max(1)
        out = torch.where(count[:, None] > 0, best.values, 0.0)
        max_indices = torch.where(count[:, None] > 0, ids.gather(1, best.indices), 0)
    else:
        out = torch.where(keep[..., None], rows, 0.0).sum(1)
        if mode == 1:
            out = out / count.clamp(min=1)[:, None].to(out.dtype)
        max_indices = count if mode == 1 else torch.zeros_like(count)
    bag_size = torch.zeros_like(count) if mode == 0 else count
    offset2bag = torch.bucketize(torch.arange(n), ends[:-1], right=True)
    if mode == 0 and (padding_idx is None or padding_idx < 0):
        offset2bag = offset2bag[:0]
    return out, offset2bag, bag_size, max_indices


def _check_bag_offsets(bounds, n, include_last_offset):
    """torch's checks (offsets[0] == 0, offsets[-1] <= len(input)), and the offsets its CPU
    kernel does not check but answers with values of no bag (or crashes on): decreasing
    offsets, or with include_last_offset a last offset other than len(input) (torch's
    documented contract) or no bag at all."""
    if include_last_offset and len(bounds) < 2:
        raise RuntimeError("functx: embedding_bag with include_last_offset=True needs at least 2 offsets "
                           f"(the starts of the bags and len(input)), got {len(bounds)}")
    if len(bounds) > 1 and bounds[0] != 0:
        raise RuntimeError("offsets[0] has to be 0, i.e., the first sequence in the mini-batch has to start "
                           f"from position 0. However, got {bounds[0]}")
    if bounds[-1] > n:
        raise RuntimeError(f"offsets[-1] can not be greater than input's length {n} but got offsets[-1] of "
                           f"{bounds[-1]}")
    if any(a > b for a, b in zip(bounds, bounds[1:])):
        offsets = bounds if include_last_offset else bounds[:-1]
        raise RuntimeError(f"functx: embedding_bag's offsets must be non-decreasing, got {offsets} (torch's "
                           "CPU kernel does not check them and returns sums of no bag)")
    if include_last_offset and bounds[-1] != n:
        raise RuntimeError(f"functx: embedding_bag with include_last_offset=True needs offsets[-1] == len(input) "
                           f"({n}), got {bounds[-1]} (torch's CPU kernel does not check it and returns sums "
                           "of no bag)")


# index_add / index_copy through torch._decomp's decompositions (index_put): a 0-d index (one
# position, as torch's kernel reads it) is indexed with as given there, which drops the dim
# the source keeps (size 1), so the write did not fit (an error deep in index_put); and
# index_put reads a negative index from the end, where these kernels raise (index_fill's
# reads it from the end too): such an index becomes one index_put's take/scatter refuse.
@register_special(aten.index_add.default)
def index_add(x, dim, index, source, alpha=1):
    index, source = _index_and_source(x, index, source)
    return decomposition_table[aten.index_add.default](x, dim, index, source, alpha=alpha)


@register_special(aten.index_copy.default)
def index_copy(x, dim, index, source):
    index, source = _index_and_source(x, index, source)
    return decomposition_table[aten.index_copy.default](x, dim, index, source)


@register_special(aten.index_fill.int_Scalar, aten.index_fill.int_Tensor)
def index_fill(x, dim, index, value):
    """torch._refs' index_fill is an index_copy; torch's index_fill reads a negative index
    from the end (index_copy refuses it)."""
    size = x.shape[dim] if x.dim() else 1
    index = torch.where(index < 0, index + size, index)
    return decomposition_table[aten.index_fill.int_Scalar](x, dim, index, value)


def _index_and_source(x, index, source):
    if index.dim() == 0:
        index = index.reshape(1)
        if source.dim() == 0 and x.dim() == 1:
            source = source.reshape(1)
    return torch.where(index < 0, -(2 ** 62), index), source


# F.pdist: ATen's kernel has no forward-mode formula and its backward no derivative, so the
# opaque fallback could give neither jvp nor second derivatives. The same distances from
# indexing and vector_norm, whose rules all exist (and give 0, as torch's does, at a zero
# distance for p = 2).
@register_special(aten._pdist_forward.default)
def pdist(input, p=2.0):
    n = input.shape[0]
    i, j = torch.triu_indices(n, n, 1, device=input.device)
    return torch.linalg.vector_norm(input[i] - input[j], ord=p, dim=-1)


# F.rrelu(training=False) is leaky_relu with the mean slope; ATen's kernel has no batching
# rule in torch.func (the opaque fallback's vmap). Training draws a slope per element <= 0,
# once, as a random op of its own: through the opaque fallback the kernel ran again for the
# tangent and drew other slopes (the derivative was not the one of the value). ATen's kernel
# draws doubles, one per element <= 0 in order; the k-th such element gets the k-th of n draws
# here, so the values are eager's for the same seed (the generator advances by n, not k).
@register_special(aten.rrelu_with_noise.default)
def rrelu_with_noise(input, noise, lower=0.125, upper=1.0 / 3.0, training=False, generator=None):
    if not training:
        return torch.nn.functional.leaky_relu(input, (lower + upper) / 2)
    opmath = torch.float64 if input.dtype is torch.float64 else torch.float32    # the kernel's
    lo, hi = (float(torch.tensor(float(b), dtype=opmath)) for b in (lower, upper))  # bounds, rounded
    drawn = input <= 0
    # drawn from a traced tensor, so it is the random primitive: torch.rand(n) here would run
    # once as plain torch (the mode that stages such factories is off inside lowerings) and
    # every call, jitted or not, reused those slopes
    draws = input.new_empty((input.numel(),), dtype=torch.float64).uniform_(0.0, 1.0, generator=generator)
    rank = (torch.cumsum(drawn.flatten().to(torch.int64), 0) - 1).clamp(min=0)
    slope = (draws[rank] * (hi - lo) + lo).to(opmath).reshape(input.shape)
    slope = torch.where(drawn, slope, torch.ones_like(slope)).detach()
    if type(noise) is not torch.Tensor:     # a traced buffer (F.rrelu's own): written as the kernel does
        noise.copy_(slope)
    return (input.to(opmath) * slope).to(input.dtype)


# The single-step cells (nn.LSTMCell, GRUCell, RNNCell) have no Python decomposition; ATen's
# C++ ones write into temporaries in place. The same formulas as ATen's RNN.cpp, out of place.
def _gates(input, hx, w_ih, w_hh, b_ih, b_hh):
    return torch.nn.functional.linear(input, w_ih, b_ih), torch.nn.functional.linear(hx, w_hh, b_hh)


def lstm_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    h, c = hx
    gi, gh = _gates(input, h, w_ih, w_hh, b_ih, b_hh)
    i, f, g, o = (gh + gi).chunk(4, 1)
    cy = f.sigmoid() * c + i.sigmoid() * g.tanh()
    return o.sigmoid() * cy.tanh(), cy


def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    gi, gh = _gates(input, hx, w_ih, w_hh, b_ih, b_hh)
    i_r, i_z, i_n = gi.chunk(3, 1)
    h_r, h_z, h_n = gh.chunk(3, 1)
    reset, update = (h_r + i_r).sigmoid(), (h_z + i_z).sigmoid()
    new = (i_n + h_n * reset).tanh()
    return (hx - new) * update + new


def rnn_tanh_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    gi, gh = _gates(input, hx, w_ih, w_hh, b_ih, b_hh)
    return (gh + gi).tanh()


def rnn_relu_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    gi, gh = _gates(input, hx, w_ih, w_hh, b_ih, b_hh)
    return (gh + gi).relu()


# A traced fill value (jit's dynamic Python scalars, a per-example value under vmap): torch's
# argument parser would turn it into a number with .item() before any dispatch. JAX's
# jnp.full_like takes a traced fill value; so do these. (torch.full(size, traced) has no
# tensor argument for __torch_function__ to see: its error names the argument to make static.)
def _traced_fill(fill):
    # composites run only when a TracerTensor is among the arguments; a 0-d tensor fill (traced
    # or not) is read as a tensor, so a traced one keeps its value and derivative
    return isinstance(fill, torch.Tensor) and fill.dim() == 0


def _filled(fill, shape, dtype, device):
    return fill.to(dtype=dtype, device=device).expand(tuple(shape)).clone()


def full_like(input, fill_value, *, dtype=None, device=None, **_):
    if not _traced_fill(fill_value):
        return NotImplemented
    return _filled(fill_value, input.shape, dtype or input.dtype, device or input.device)


def new_full(self, size, fill_value, *, dtype=None, device=None, **_):
    if not _traced_fill(fill_value):
        return NotImplemented
    return _filled(fill_value, size, dtype or self.dtype, device or self.device)


# x[i] with a traced 0-d integer tensor i (an index per example under vmap, a traced index
# under jit): torch's indexing reads such an index with .item(), which has no single value
# here. As a one-element index tensor the selection is the same (a copy, as under
# torch.func's vmap); the size-1 dimension it adds is reshaped away.
def _traced_scalar_index(i):
    return isinstance(i, torch.Tensor) and type(i) is not torch.Tensor and i.dim() == 0 \
        and not i.dtype.is_floating_point and i.dtype not in (torch.bool, torch.uint8) \
        and isinstance(getattr(i, "_value", None), Tracer)


def _as_tensor_index(self, index):
    """(index with traced 0-d integer tensors as one-element ones, the shapes self[index] has
    with and without that change), or None when no such index is present."""
    items = index if isinstance(index, tuple) else (index,)
    if not any(_traced_scalar_index(i) for i in items):
        return None

    def probe(i, scalar_as):
        if _traced_scalar_index(i):
            return scalar_as(i)
        if isinstance(i, torch.Tensor):
            if i.dtype in (torch.bool, torch.uint8):
                raise _Decline
            return torch.zeros(i.shape, dtype=i.dtype, device="meta")
        return i
    meta = torch.empty(self.shape, device="meta")
    try:
        shape = meta[tuple(probe(i, lambda _: 0) for i in items)].shape
        as_tensor = meta[tuple(probe(i, lambda _: torch.zeros(1, dtype=torch.int64, device="meta"))
                               for i in items)].shape
    except _Decline:
        return None
    new = tuple(i.reshape(1) if _traced_scalar_index(i) else i for i in items)
    return new, shape, as_tensor


class _Decline(Exception):
    pass


def getitem(self, index):
    plan = _as_tensor_index(self, index)
    if plan is None:
        return NotImplemented
    new, shape, _ = plan
    return self[new].reshape(shape)


def setitem(self, index, value):
    plan = _as_tensor_index(self, index)
    if plan is None:
        return NotImplemented
    new, shape, as_tensor = plan
    if isinstance(value, torch.Tensor):
        value = value.expand(shape).reshape(as_tensor)
    self[new] = value
    return None


def register_hook(self, hook):
    """Tensor.register_hook on a traced value: transforms/hooks.py (the transforms layer, where
    hooks run in the backward pass) replaces this entry of COMPOSITES when functx imports."""
    raise FunctxError("functx: Tensor.register_hook needs functx.transforms (import functx)")


def dropout(input, p=0.5, training=True, inplace=False):
    """F.dropout that samples nothing (p == 0, or not training) returns its input itself, as
    torch's kernel does (nn.Dropout(0.0) in a TransformerEncoderLayer). Under a transform torch's
    own path reached that kernel through the ATen front end, whose aliasing bookkeeping ran the
    level's pending units there (~90 us a call); otherwise torch's function serves."""
    if type(p) in (int, float) and p == 0 or type(training) is bool and not training:
        return input
    return NotImplemented


def one_hot(tensor, num_classes=-1):
    """F.one_hot: frontend/lowerings/indexing.py replaces this entry (it needs the wrappers)."""
    return NotImplemented


def gaussian_nll_loss(input, target, var, full=False, eps=1e-6, reduction="mean"):
    """F.gaussian_nll_loss, whose `if torch.any(var < 0): raise` needs var's values (under jit
    it raised ConcretizationError): the same checks and arithmetic, the negativity check as an
    all-true test (checked when the program runs under jit, over every example under vmap).
    Other argument types take torch's own function."""
    if not all(isinstance(t, torch.Tensor) for t in (input, target, var)):
        return NotImplemented
    if not bool(torch._is_all_true(torch.logical_not(torch.any(var < 0)))):
        raise ValueError("var has negative entry/entries")
    if var.size() != input.size():
        if input.size()[:-1] == var.size():
            var = torch.unsqueeze(var, -1)
        elif not (input.ndim == var.ndim
                  and sum(y for x, y in zip(input.size(), var.size()) if x != y) == 1):
            raise ValueError("var is of incorrect size")
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(reduction + " is not valid")
    var = var.clone()
    with torch.no_grad():
        var.clamp_(min=eps)
    loss = 0.5 * (torch.log(var) + (input - target) ** 2 / var)
    if full:
        loss += 0.5 * math.log(2 * math.pi)
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


# ---------------------------------------------------------------- matmul folding under reverse mode
# torch's matmul of an (..., m, k) operand with a (k, n) matrix folds the leading dims into
# one (M, k) @ (k, n) product when they are laid out as one dim, or when either operand
# requires grad (its should_fold: a copy on the forward pass, one matrix product on the
# backward). Otherwise it broadcasts the matrix over the batch and runs bmm. Wrappers never
# report requires_grad to C++, so under a reverse level a batch-first transformer's
# transposed (L, N, E) query took the bmm path, and its weight gradient became a batch of
# products summed over the batch. These fold as torch does under autograd.

def _folds_for_autograd(x, k, dtype) -> bool:
    """x @ (a (k, n) matrix of dtype) where torch folds for autograd's sake only (a reverse
    level runs, x is 3-D or more, x's leading dims are not one dim in memory, one float dtype)."""
    if not (torch.is_grad_enabled() and reverse_mode_active()) or x.dim() < 3:
        return False
    if x.dtype != dtype or not x.dtype.is_floating_point or x.shape[-1] != k or x.numel() == 0:
        return False
    shape, strides = x.shape, x.stride()
    return any(strides[i] != strides[i + 1] * shape[i + 1] for i in range(x.dim() - 2))


def _folded(x, m):
    """x @ m as one (M, k) @ (k, n) product of x's rows."""
    return torch.mm(x.reshape(-1, x.shape[-1]), m).view(*x.shape[:-1], m.shape[1])


def matmul(x, y, *rest, **kwargs):
    if rest or kwargs or not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) \
            or y.dim() != 2 or not _folds_for_autograd(x, y.shape[0], y.dtype):
        return NotImplemented
    return _folded(x, y)


def linear(input, weight, bias=None):
    if weight.dim() != 2 or not _folds_for_autograd(input, weight.shape[1], weight.dtype) \
            or (bias is not None and bias.dtype != input.dtype):
        return NotImplemented
    out = _folded(input, weight.t())
    return out if bias is None else out + bias


COMPOSITES = {
    torch.nn.functional.dropout: dropout,
    torch.nn.functional.gaussian_nll_loss: gaussian_nll_loss,
    torch.nn.functional.one_hot: one_hot,
    torch.Tensor.__getitem__: getitem,
    torch.Tensor.__setitem__: setitem,
    torch.full_like: full_like,
    torch.Tensor.new_full: new_full,
    torch.Tensor.register_hook: register_hook,
    _VF.lstm_cell: lstm_cell,
    _VF.gru_cell: gru_cell,
    _VF.rnn_tanh_cell: rnn_tanh_cell,
    _VF.rnn_relu_cell: rnn_relu_cell,
    _VF._pack_padded_sequence: pack_padded_sequence,
    _VF._pad_packed_sequence: pad_packed_sequence,
    _VF.lstm: _by_overload(aten.lstm),
    _VF.gru: _by_overload(aten.gru),
    _VF.rnn_tanh: _by_overload(aten.rnn_tanh),
    _VF.rnn_relu: _by_overload(aten.rnn_relu),
    # onto the fused attention primitive (functx/kernels/attention.py)
    torch.nn.functional.scaled_dot_product_attention: scaled_dot_product_attention,
    # fold as torch does under autograd (above); tried as units first (UNITS_FIRST)
    torch.nn.functional.linear: linear,
    torch.matmul: matmul,
    torch.Tensor.matmul: matmul,
    torch.Tensor.__matmul__: matmul,
}
# composites whose whole call is a unit under an eager level (function_units traces the unit
# through the composite: a GRU's whole unrolled loop is one unit, its derivative rules
# generated once per signature): the composite itself runs only where no unit serves
UNITS_FIRST = frozenset({torch.nn.functional.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__,
                         _VF.lstm, _VF.gru, _VF.rnn_tanh, _VF.rnn_relu,
                         _VF.lstm_cell, _VF.gru_cell, _VF.rnn_tanh_cell, _VF.rnn_relu_cell})


# torch.segment_reduce (graph pooling over nodes stored segment by segment): torch has no
# forward-mode formula for it nor a derivative of its backward, so through the opaque
# fallback jacfwd, hessian and jvp(grad) raised. With concrete 1-D lengths or offsets it is
# a scatter_reduce over segment ids, which every transform differentiates; empty segments and
# `initial` as torch's kernel treats them (sum 0, prod 1, max -inf, min inf, mean NaN; an
# initial value joins each segment, and the mean divides by the segment's own count).
_SEGMENT = {"sum": ("sum", 0.0), "prod": ("prod", 1.0), "max": ("amax", -math.inf), "min": ("amin", math.inf),
            "mean": ("sum", 0.0)}


@register_special(aten.segment_reduce.default)
def segment_reduce(data, reduce, *, lengths=None, indices=None, offsets=None, axis=0, unsafe=False, initial=None):
    given = lengths if offsets is None else offsets
    if indices is not None or reduce not in _SEGMENT or type(given) is not torch.Tensor or given.ndim != 1 \
            or given.dtype not in (torch.int32, torch.int64) or not isinstance(data, torch.Tensor):
        return NotImplemented   # the general path: torch's own checks and messages, the fallback
    counts = given if offsets is None else given.diff()
    ax = axis % data.ndim if data.ndim else 0
    if data.ndim == 0 or ax != 0 or bool((counts < 0).any()) or int(counts.sum()) != data.shape[ax]:
        return NotImplemented
    ids = torch.repeat_interleave(torch.arange(len(counts), device=data.device), counts)
    shape = [1] * data.ndim
    shape[ax] = -1
    index = ids.reshape(shape).expand(data.shape)
    out_shape = list(data.shape)
    out_shape[ax] = len(counts)
    how, fill = _SEGMENT[reduce]
    base = torch.full(out_shape, fill, dtype=data.dtype, device=data.device)
    out = base.scatter_reduce(ax, index, data, how, include_self=True)
    if initial is not None:
        if reduce in ("max", "min"):    # a tie with initial: the derivative is the data's
            out = torch.where(out >= initial if reduce == "max" else out <= initial, out, initial)
        else:
            out = out * initial if reduce == "prod" else out + initial
    if reduce == "mean":
        n = counts.to(data.dtype).reshape([-1 if d == ax else 1 for d in range(data.ndim)])
        out = out / (n.clamp(min=1) if initial is not None else n)
    return out
