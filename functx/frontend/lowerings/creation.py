"""Copies, fills and factories: _to_copy, fill, copy, the *_like and new_* constructors,
and the random ones (randn_like, normal, uniform, bernoulli)."""
from __future__ import annotations

import torch

from ...core.errors import FunctxError, user_frame_summary
from ...core.trace import note_autograd_read
from ...core.types import TensorType
from ... import prims as P
from ..generators import drawing_from
from ..promote import SCALARS, broadcast_shapes, prepare, result_type
from .common import _t, aten
from .registry import register


# ---------------------------------------------------------------- copies and fills

@register(aten._to_copy.default)
def _to_copy(x, dtype=None, layout=None, device=None, pin_memory=None, non_blocking=False,
             memory_format=None):
    t = _t(x)
    if device is not None and torch.device(device) != t.device:
        if not isinstance(x, torch.Tensor):
            raise FunctxError(f"functx: moving a traced value from {t.device} to {device} is not "
                              f"supported:\n{user_frame_summary()}\nMove the inputs to {device} before "
                              "calling the transformed function.")
        x = x.to(device)
    return P.convert(x, dtype) if dtype is not None else x


@register(aten.fill.Scalar)
def _fill(x, value):
    t = _t(x)
    return P.full(t.shape, value, t.dtype, t.device)


@register(aten.fill.Tensor)
def _fill_tensor(x, value):
    t = _t(x)
    if isinstance(value, torch.Tensor) and value.device != t.device:
        value = value.to(t.device)   # x_cuda[i] = 1.0 fills from a 0-d CPU tensor
    return P.broadcast_to(P.convert(value, t.dtype), t.shape)


@register(aten.zero.default)
def _zero(x):
    t = _t(x)
    return P.full(t.shape, 0, t.dtype, t.device)


@register(aten.copy.default)
def _copy(x, src, non_blocking=False):
    t = _t(x)
    if isinstance(src, SCALARS):
        return P.full(t.shape, src, t.dtype, t.device)
    return P.broadcast_to(P.convert(src, t.dtype), t.shape)


# ---------------------------------------------------------------- factories

def _like(x, value, dtype=None, device=None):
    t = _t(x)
    return P.full(t.shape, value, dtype or t.dtype, device or t.device)


register(aten.zeros_like.default)(lambda x, dtype=None, layout=None, device=None, pin_memory=None,
                                  memory_format=None: _like(x, 0, dtype, device))
register(aten.ones_like.default)(lambda x, dtype=None, layout=None, device=None, pin_memory=None,
                                 memory_format=None: _like(x, 1, dtype, device))
register(aten.empty_like.default)(lambda x, dtype=None, layout=None, device=None, pin_memory=None,
                                  memory_format=None: _like(x, 0, dtype, device))
register(aten.full_like.default)(lambda x, fill_value, dtype=None, layout=None, device=None,
                                 pin_memory=None, memory_format=None: _like(x, fill_value, dtype, device))


def _new(value):
    def lower(x, size, dtype=None, layout=None, device=None, pin_memory=None):
        t = _t(x)
        return P.full(tuple(size), value, dtype or t.dtype, device or t.device)
    return lower


register(aten.new_zeros.default)(_new(0))
register(aten.new_ones.default)(_new(1))
register(aten.new_empty.default)(_new(0))
register(aten.new_empty_strided.default)(lambda x, size, stride, dtype=None, layout=None, device=None,
                                         pin_memory=None: _new(0)(x, size, dtype))


@register(aten.new_full.default)
def _new_full(x, size, fill_value, dtype=None, layout=None, device=None, pin_memory=None):
    t = _t(x)
    return P.full(tuple(size), fill_value, dtype or t.dtype, device or t.device)


# ---------------------------------------------------------------- random factories (the random primitive)

@register(aten.randn_like.default)
def _randn_like(x, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    t = _t(x)
    return P.random(t.shape, dtype or t.dtype, device or t.device, "normal")


@register(aten.rand_like.default)
def _rand_like(x, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    t = _t(x)
    return P.random(t.shape, dtype or t.dtype, device or t.device, "uniform")


def _standard(t, dist, generator, name):
    """A standard normal or uniform sample shaped like t: the random primitive, or with an
    explicit generator, a sampler drawing from it (under jit, from the generator argument of
    each call; generators.py)."""
    if generator is None:
        return P.random(t.shape, t.dtype, t.device, dist)
    fill = torch.Tensor.normal_ if dist == "normal" else torch.Tensor.uniform_
    draw = lambda g: fill(torch.empty(t.shape, dtype=t.dtype, device=t.device), generator=g)  # noqa: E731
    return P.random(t.shape, t.dtype, t.device, "call", (drawing_from(draw, generator, name), len(t.shape)))


# torch.normal(mean, std) is not reparameterized: torch's derivative in mean and std is zero
# (derivatives.yaml), and so is functx's (mean + std * torch.randn_like(mean), or
# torch.distributions.Normal(mean, std).rsample(), is the differentiable sample). Under jit,
# a call torch autograd records runs f as plain torch (note_autograd_read): the result then
# requires grad with a zero derivative, as torch's does (a graph compiled with the stopped
# mean would give a result without autograd history: backward() raised).

@register(aten.normal.Tensor_float)
def _normal_tf(mean, std=1.0, generator=None):
    note_autograd_read()
    t = _t(mean)
    return P.add(P.mul(_standard(t, "normal", generator, "torch.normal"), std), P.stop_gradient(mean))


def _normal_of_tensors(mean, std, generator):
    # torch's decomposition (torch._refs.normal) draws with prims.normal, a factory without
    # traced arguments that would run once as plain torch: every call, and under vmap every
    # example, got the same sample. Here the draw is the random primitive.
    dtype, shape = result_type(mean, std), broadcast_shapes(mean, std)
    mean, std = prepare([mean, std], dtype, shape)
    device = next(_t(a).device for a in (mean, std) if not isinstance(a, SCALARS))
    z = _standard(TensorType(shape, dtype, device), "normal", generator, "torch.normal")
    note_autograd_read()
    mean, std = (a if isinstance(a, SCALARS) else P.stop_gradient(a) for a in (mean, std))
    return P.add(P.mul(z, std), mean)


@register(aten.normal.Tensor_Tensor)
def _normal_tt(mean, std, generator=None):
    return _normal_of_tensors(mean, std, generator)


@register(aten.normal.float_Tensor)
def _normal_ft(mean, std, generator=None):
    return _normal_of_tensors(float(mean), std, generator)


@register(aten.normal_functional.default)
def _normal_functional(x, mean=0.0, std=1.0, generator=None):
    t = _t(x)
    return P.add(P.mul(_standard(t, "normal", generator, "Tensor.normal_"), std), mean)


@register(aten.uniform.default)
def _uniform(x, from_=0.0, to=1.0, generator=None):
    t = _t(x)
    return P.add(P.mul(_standard(t, "uniform", generator, "Tensor.uniform_"), to - from_), from_)


def _randint_like(x, low, high, dtype, generator=None):
    # the random primitive (torch.randint's numbers for the same seed), so vmap's randomness
    # applies and the derivative is zero (the opaque fallback's jvp raised, torch.func's is 0)
    t = _t(x)
    dtype = dtype or t.dtype
    if generator is None:
        return P.random(t.shape, dtype, t.device, "randint", (int(low), int(high)))
    draw = lambda g: torch.randint(int(low), int(high), t.shape, dtype=dtype, device=t.device, generator=g)  # noqa: E731
    return P.random(t.shape, dtype, t.device, "call", (drawing_from(draw, generator, "torch.randint_like"), len(t.shape)))


register(aten.randint_like.default)(lambda x, high, dtype=None, layout=None, device=None, pin_memory=None,
                                    memory_format=None: _randint_like(x, 0, high, dtype))
register(aten.randint_like.low_dtype)(lambda x, low, high, dtype=None, layout=None, device=None, pin_memory=None,
                                      memory_format=None: _randint_like(x, low, high, dtype))


@register(aten.bernoulli.p)
def _bernoulli_p(x, p=0.5, generator=None):
    # torch draws x.bernoulli_(p) (what F.dropout runs) with a kernel of its own, not from
    # uniforms: the same kernel draws here, so a seed gives the numbers eager PyTorch gives
    t = _t(x)
    if generator is None:
        return P.random(t.shape, t.dtype, t.device, "bernoulli", (p,))
    draw = lambda g: torch.empty(t.shape, dtype=t.dtype, device=t.device).bernoulli_(p, generator=g)  # noqa: E731
    return P.random(t.shape, t.dtype, t.device, "call", (drawing_from(draw, generator, "torch.bernoulli"), len(t.shape)))


@register(aten.bernoulli.default)
def _bernoulli(x, generator=None):
    t = _t(x)
    return P.convert(P.lt(_standard(t, "uniform", generator, "torch.bernoulli"), x), t.dtype)


# ---------------------------------------------------------------- factories of a symbolic size
# torch.arange(n) or torch.zeros(n, 3) with n a symbolic size (jit's dynamic dims) have no
# traced argument: they reach RandomMode rather than TracerTensor, and run as torch they would
# pin n to the traced size. RandomMode lowers them through this table instead, to primitives
# of that symbolic size; None from an entry: not handled here (torch runs it, pinning n).

def _default_device(device):
    return torch.device(device) if device is not None else torch.get_default_device()


def _arange(start, end, step, dtype, device):
    # here, not at the top: that module imports sympy, which static traces never need
    from torch.fx.experimental.symbolic_shapes import statically_known_true
    if dtype is None:
        floats = any(isinstance(v, (float, torch.SymFloat)) for v in (start, end, step))
        dtype = torch.get_default_dtype() if floats else torch.int64
    if not all(isinstance(v, (int, torch.SymInt)) for v in (start, end, step)) or not isinstance(step, int) \
            or step == 0:
        return None          # float bounds or a symbolic step: the length is not a size expression
    length = (end - start + step - 1) // step if step > 0 else (start - end - step - 1) // (-step)
    if not statically_known_true(length >= 0):
        length = torch.sym_max(length, 0)
    out = P.iota((length,), 0, torch.int64 if not dtype.is_floating_point else dtype, _default_device(device))
    if step != 1:
        out = P.mul(out, step)
    if not (isinstance(start, int) and start == 0):
        out = P.add(out, start)
    return P.convert(out, dtype)


def _fill_dtype(value, dtype):
    if dtype is not None:
        return dtype
    if isinstance(value, (bool, torch.SymBool)):
        return torch.bool
    if isinstance(value, (int, torch.SymInt)):
        return torch.int64
    return torch.get_default_dtype()


SIZED_FACTORIES = {
    aten.arange.default: lambda end, dtype=None, layout=None, device=None, pin_memory=None:
        _arange(0, end, 1, dtype, device),
    aten.arange.start: lambda start, end, dtype=None, layout=None, device=None, pin_memory=None:
        _arange(start, end, 1, dtype, device),
    aten.arange.start_step: lambda start, end, step=1, dtype=None, layout=None, device=None, pin_memory=None:
        _arange(start, end, step, dtype, device),
    aten.zeros.default: lambda size, dtype=None, layout=None, device=None, pin_memory=None:
        P.full(tuple(size), 0, dtype or torch.get_default_dtype(), _default_device(device)),
    aten.ones.default: lambda size, dtype=None, layout=None, device=None, pin_memory=None:
        P.full(tuple(size), 1, dtype or torch.get_default_dtype(), _default_device(device)),
    aten.empty.memory_format: lambda size, dtype=None, layout=None, device=None, pin_memory=None,
        memory_format=None: P.full(tuple(size), 0, dtype or torch.get_default_dtype(), _default_device(device)),
    aten.scalar_tensor.default: lambda s, dtype=None, layout=None, device=None, pin_memory=None:
        P.full((), s, dtype or torch.get_default_dtype(), _default_device(device)),
    aten.full.default: lambda size, fill_value, dtype=None, layout=None, device=None, pin_memory=None:
        P.full(tuple(size), fill_value, _fill_dtype(fill_value, dtype), _default_device(device)),
}
