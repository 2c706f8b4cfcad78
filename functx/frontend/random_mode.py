"""Random ops without traced arguments (torch.randn(shape), torch.rand, torch.randint,
torch.normal(0., 1., size), torch.randperm, x_plain.normal_(), ...) under functx transforms.

Such ops never reach TracerTensor.__torch_dispatch__, so without help they would run as
plain torch: baked into a jit graph as constants (the same numbers every call) and invisible
to vmap's `randomness`. While a transform or jit trace runs the user's function, the
transforms enter `intercept_random()`, a TorchDispatchMode that sends every ATen op tagged
`nondeterministic_seeded` with no TracerTensor argument to the effectful `random` primitive
(prims/random.py), at whatever trace is current. Everything else passes straight through:
one dict lookup per op.

Only user code runs under the mode: functx's own work happens inside the handler of the op
that triggered it, where PyTorch has popped the mode, so a primitive's impl (torch.randn in
random_p's impl) is never intercepted again.
"""
from __future__ import annotations

import functools
import sys
from typing import NamedTuple

import torch
from torch.utils._python_dispatch import (TorchDispatchMode, _get_current_dispatch_mode_stack,
                                          _pop_mode_temporarily)
from torch.utils._pytree import tree_flatten, tree_map

from ..core.errors import FunctxError, PlainWriteError, unbatched_write_message
from ..core.errors import user_frame_summary
from ..core.trace import (EVAL_TRACE, GraphTrace, Tracer, current_trace, enclosing_traces, set_current_trace,
                          staged_or_batched, staging, type_of)
from .. import prims as P
from . import dispatch as _dispatch_module
from .dispatch import dispatch, pinned
from .lowerings.creation import SIZED_FACTORIES
from .lowerings.registry import LOWERINGS
from .generators import drawing_from
from .functionalize import value_of
from .composites import COMPOSITES
from .tensor import TracerTensor, wrap
from .unit_batches import run_pending

aten = torch.ops.aten

_SEEDED: dict = {}          # OpOverload -> bool, filled lazily


def _is_seeded(func) -> bool:
    s = _SEEDED.get(func)
    if s is None:
        s = _SEEDED[func] = torch.Tag.nondeterministic_seeded in func.tags
    return s


# Arguments that switch a seeded op's sampling off (attention and RNN kernels with dropout):
# with these values the op is deterministic and runs as any other op.
_NO_SAMPLING = {"dropout_p": 0.0, "dropout": 0.0, "train": False}


def _samples(func, args, kwargs) -> bool:
    """Whether a seeded op draws random numbers with these arguments."""
    for i, a in enumerate(func._schema.arguments):
        if a.name in _NO_SAMPLING:
            value = args[i] if i < len(args) else kwargs.get(a.name, a.default_value)
            if value is not None and value == _NO_SAMPLING[a.name]:
                return False
    return True


def _device(device):
    return torch.device(device) if device is not None else torch.get_default_device()


def _float(dtype):
    return dtype if dtype is not None else torch.get_default_dtype()


def _sample(dist, size, dtype, device, args=()):
    return P.random(tuple(size), dtype, _device(device), dist, args)


# Factories and functional ops on constant tensors, by overload. Each gets the op's
# arguments and returns a lax value. (Ops with a `generator` go through the generic path.)
def _randn(size, dtype=None, layout=None, device=None, pin_memory=None):
    return _sample("normal", size, _float(dtype), device)


def _rand(size, dtype=None, layout=None, device=None, pin_memory=None):
    return _sample("uniform", size, _float(dtype), device)


def _randint(high, size, dtype=None, layout=None, device=None, pin_memory=None):
    return _sample("randint", size, dtype or torch.int64, device, (0, int(high)))


def _randint_low(low, high, size, dtype=None, layout=None, device=None, pin_memory=None):
    return _sample("randint", size, dtype or torch.int64, device, (int(low), int(high)))


def _randperm(n, dtype=None, layout=None, device=None, pin_memory=None):
    return _sample("randperm", (n,), dtype or torch.int64, device, (int(n),))


def _normal_ff(mean, std, size, generator=None, dtype=None, layout=None, device=None, pin_memory=None):
    z = _sample("normal", size, _float(dtype), device)
    return P.add(P.mul(z, float(std)), float(mean))


FACTORIES = {
    aten.randn.default: _randn,
    aten.rand.default: _rand,
    aten.randint.default: _randint,
    aten.randint.low: _randint_low,
    aten.randperm.default: _randperm,
    aten.normal.float_float: _normal_ff,
}


def _sampler(func, args, kwargs, name=None):
    """func(*args, **kwargs) run afresh on every call; an explicit generator is the jitted
    function's generator argument of that call (generators.py)."""
    return drawing_from(lambda g: func(*args, **dict(kwargs, generator=g)) if g is not None
                        else func(*args, **kwargs), kwargs.get("generator"), name or func)


def _generic(func, args, kwargs):
    """Any other single-output seeded op: an opaque sampler, run afresh on every call."""
    out_type = _output_type(func, args, kwargs)
    if out_type is None:
        return None
    shape, dtype, device = out_type
    fn = _Sampler(_sampler(func, args, kwargs), str(func))
    return P.random(shape, dtype, device, "call", (fn, len(shape)))


class _Sampler:
    """fn() -> one fresh sample; named for graph printing."""
    __slots__ = ("fn", "name")

    def __init__(self, fn, name):
        self.fn, self.name = fn, name

    def __call__(self):
        return self.fn()

    @property
    def __name__(self):
        return self.name

    def __repr__(self):
        return self.name


def _output_type(func, args, kwargs):
    """(shape, dtype, device) of the op's single tensor output, from a meta-device run (so no
    random numbers are consumed), or None when it has several outputs."""
    leaves, _ = tree_flatten((args, kwargs))
    device = next((l.device for l in leaves if isinstance(l, torch.Tensor)), None)
    device = _device(kwargs.get("device", device))
    to_meta = lambda x: x.to("meta") if isinstance(x, torch.Tensor) else x
    meta_kwargs = {k: None if k == "generator" else to_meta(v) for k, v in kwargs.items()}
    if "device" in kwargs:
        meta_kwargs["device"] = "meta"
    try:
        out = func(*[to_meta(a) for a in args], **meta_kwargs)
    except Exception:
        out = _scratch_run(func, args, kwargs)
    if not isinstance(out, torch.Tensor):
        return None
    return tuple(out.shape), out.dtype, device


def _scratch_run(func, args, kwargs):
    """The op's output for its type when it has no meta kernel (torch.binomial,
    torch._sample_dirichlet): a real run drawing from a scratch generator, so the generator the
    user's numbers come from is not advanced. None when that is not possible."""
    if not any(a.name == "generator" for a in func._schema.arguments):
        return None
    device = next((a.device for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)), None)
    try:
        return func(*args, **dict(kwargs, generator=torch.Generator(device=_device(kwargs.get("device", device)))))
    except Exception:
        return None


def _inplace(func, target, sample):
    """x.normal_() / torch.randn(..., out=x) on a plain tensor x: draw x's replacement with
    sample() (the op applied to a scratch tensor), then write it back."""
    fn = _Sampler(sample, str(func))
    value = P.random(tuple(target.shape), target.dtype, target.device, "call", (fn, target.dim()))
    if isinstance(value, Tracer):
        raise FunctxError(
            f"functx: {func} writes random values into a plain tensor created inside the transformed "
            "function, but under this transform (jit, or vmap with randomness='different') the values "
            "are traced and can't be stored in a plain tensor. Use a random factory instead "
            "(torch.randn(shape), torch.rand(shape), torch.randint(...)), or make the tensor from a "
            "traced input (torch.randn_like(x), x.new_empty(shape).normal_()).")
    target.copy_(value)
    return target


def _route(func, args, kwargs):
    if kwargs.get("generator") is None:
        lowering = FACTORIES.get(func) or LOWERINGS.get(func)
        if lowering is not None:
            return wrap(lowering(*args, **kwargs))
    schema = func._schema
    if schema.arguments and schema.arguments[0].alias_info is not None \
            and schema.arguments[0].alias_info.is_write and isinstance(args[0], torch.Tensor):
        target, rest = args[0], args[1:]
        draw = _sampler(lambda *a, **k: func(torch.empty_like(target), *a, **k), rest, kwargs, func)
        return _inplace(func, target, draw)
    out_name = next((a.name for a in schema.arguments if a.kwarg_only and a.alias_info is not None
                     and a.alias_info.is_write), None)
    if out_name is not None and isinstance(kwargs.get(out_name), torch.Tensor):
        target = kwargs[out_name]
        draw = _sampler(lambda *a, **k: func(*a, **dict(k, **{out_name: torch.empty_like(target)})), args, kwargs,
                        func)
        return _inplace(func, target, draw)
    out = _generic(func, args, kwargs)
    if out is not None:
        return wrap(out)
    # Several outputs (fused rnn/attention kernels with dropout; these usually arrive decomposed).
    # Eagerly, running torch is right; staged or batched, its numbers would be frozen or shared.
    if staged_or_batched():
        raise FunctxError(
            f"functx: random op {func} (several outputs, no traced arguments) can't be traced under "
            "jit or vmap: its random numbers would be baked in. Pass a traced tensor to it, or call "
            "it outside the transform.")
    return func(*args, **kwargs)


# Factories whose results code fills in place (out = torch.zeros(n); out[i] = f(x)). Inside a
# transformed function they return wrappers of their plain value, so that traced values can
# be written into them (torch.func.grad allows this; a plain tensor could not record it).
# empty's contents are unspecified: zeros here, so that a traced graph holds no garbage.
_EMPTY_FACTORIES = frozenset({aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default,
                              aten.new_empty.default, aten.new_empty_strided.default})
_FILL_FACTORIES = _EMPTY_FACTORIES | frozenset({
    aten.zeros.default, aten.ones.default, aten.full.default, aten.zeros_like.default, aten.ones_like.default,
    aten.full_like.default, aten.new_zeros.default, aten.new_ones.default, aten.new_full.default})


# Copies of plain tensors made to be written into (out = template.clone(); out[idx] = v): as
# made tensors, wrappers of their plain value.
_COPIES = frozenset({aten.clone.default})


def _holds_no_tracer(args, kwargs) -> bool:
    """No argument is traced: every wrapper among them holds a plain value."""
    for a in (*args, *(kwargs.values() if kwargs else ())):
        for b in (a if isinstance(a, (list, tuple)) else (a,)):
            if type(b) is TracerTensor and isinstance(value_of(b), Tracer):
                return False
    return True


def _target_is_plain(func, args, kwargs) -> bool:
    """Does the op write into a plain tensor (its self or an out= argument)?"""
    return any(type(t) is torch.Tensor for t in _written(func, args, kwargs))


def _refuse_writing_saved(func, args, kwargs):
    """An in-place write into a plain tensor that an enclosing grad/vjp saved for its backward
    pass (a residual: `y = x * buf; buf.add_(1)`) would change the gradient silently; torch's
    autograd raises there (its version counter), and so does functx."""
    saved = None
    for target in _written(func, args, kwargs):
        if type(target) is not torch.Tensor and type(target) is not torch.nn.Parameter:
            continue
        if saved is None:
            saved = {storage_address(c) for t in enclosing_traces() if type(t) is GraphTrace and not t.stage_all
                     for c in t.consts if isinstance(c, torch.Tensor) and not isinstance(c, TracerTensor)}
        if saved and storage_address(target) in saved:
            raise FunctxError(
                f"functx: {func} writes in place into a tensor (shape {tuple(target.shape)}) that reverse "
                f"mode saved to compute the gradient, here:\n{user_frame_summary()}\nThe gradient would "
                "use the new values. PyTorch's autograd raises here too (\"one of the variables needed for "
                "gradient computation has been modified by an inplace operation\"). Write into a copy "
                "(buf = buf.clone()) or make the update after the transform.")


def _plain_values(args, kwargs):
    """(args, kwargs) with wrappers replaced by their values if none of those is traced."""
    args, kwargs = tree_map(lambda a: value_of(a) if isinstance(a, TracerTensor) else a, (args, kwargs))
    if any(isinstance(l, Tracer) for l in tree_flatten((args, kwargs))[0]):
        return None
    return args, kwargs


def _called_by_functx() -> bool:
    """Is the Python code that called the op functx's own (a nested transform's entry code
    making its seeds and zeros under an outer transform's mode), not the user's? A C++
    composite (torch.vander) shows TracerTensor.__torch_function__'s frame: the user's call."""
    module = sys._getframe(2).f_globals.get("__name__", "")
    return module.startswith("functx.") and module != _PASSTHROUGH_MODULE


_PASSTHROUGH_MODULE = TracerTensor.__module__


def _called_by_user_code() -> bool:
    """Was the op called from Python source (not functx's generated rules, whose code has
    no module, nor a C++ composite that decomposes into it)?"""
    frame = sys._getframe(2)
    return "__name__" in frame.f_globals and not frame.f_code.co_filename.startswith("<functx")


# OpOverload -> ((position, name), ...) of the arguments it writes in place, filled lazily
# (whether it writes is asked for every traced op)
_WRITTEN: dict = {}


def _written_arguments(func) -> tuple:
    w = _WRITTEN.get(func)
    if w is None:
        w = _WRITTEN[func] = tuple((i, a.name) for i, a in enumerate(func._schema.arguments)
                                   if a.alias_info is not None and a.alias_info.is_write)
    return w


def _writes(func) -> bool:
    w = _WRITTEN.get(func)
    return bool(w if w is not None else _written_arguments(func))


def _written(func, args, kwargs) -> list:
    """The values an op writes in place (its self, out= arguments), as passed."""
    return [args[i] if i < len(args) else kwargs.get(name) for i, name in _written_arguments(func)]


def _lift_plain(a):
    return TracerTensor(a) if type(a) is torch.Tensor else a


def _has_symbolic_size(args, kwargs) -> bool:
    """Is a symbolic size (jit's dynamic dims) among an op's arguments?"""
    return any(isinstance(v, (torch.SymInt, torch.SymFloat)) for v in tree_flatten((args, kwargs))[0])


_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)
# In-place by schema, but they change no values (embedding_bag's decomposition detaches its
# closed-over offsets): not refused as writes into a closed-over tensor.
_METADATA_ONLY = frozenset({torch.ops.aten.detach_.default})


def storage_address(t):
    if t.layout != torch.strided:       # sparse: no storage of its own, its values hold the data
        t = t._values() if t.layout == torch.sparse_coo else t.values()
    return t.untyped_storage().data_ptr()


class ClosureRead(NamedTuple):
    """A plain torch op that read a closed-over tensor while jit traced: its result is a
    constant of the graph, computed once. `view`: the op aliases the tensor (later in-place
    updates show through it); else the constant is a copy of what the tensor held at
    `version` (its in-place update counter). `recorded`: torch autograd recorded the op (grad
    mode on, the tensor requires grad), so a view carries the tensor's gradient."""
    tensor: torch.Tensor
    version: int
    storage: int          # its storage's address: `param.data = ...` swaps it
    view: bool
    recorded: bool


_ENTERED: list = []     # the RandomModes entered, innermost last (popped from torch's stack in handlers)


class RandomMode(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        # Storages of the plain tensors made while tracing (constants the function builds for
        # itself); a view shares its base's storage, so a view of a closed-over tensor is not one.
        self.created: set = set()
        self.closure_reads: list = []      # ClosureRead per closed-over operand of a plain op

    def _staged_plain_op(self, func, args, kwargs):
        """An op on plain tensors while jit traces: it runs once, now. Writing in place into a
        tensor the function did not create (a closed-over buffer or counter) would then happen
        once instead of on every call: refuse it."""
        written = () if func in _METADATA_ONLY else _written(func, args, kwargs)
        for t in [t for t in written if isinstance(t, torch.Tensor)]:
            if storage_address(t) not in self.created:
                raise PlainWriteError(unbatched_write_message(func, t) or
                    f"functx.jit: {func} writes in place into a tensor the function closes over "
                    f"(shape {tuple(t.shape)}), here:\n{user_frame_summary()}\nUnder jit the function runs "
                    "once, at trace time, so this update would not happen on later calls. Pass the "
                    "tensor as an argument (jit writes updated arguments back to it; for a module's "
                    "buffers, functional_call(model, {**params, **buffers}, x)), use the module in "
                    "eval mode, or make the update outside the jitted function.")
        if written:
            # a write into a tensor the function made: torch's autograd check where a grad saved
            # it, and the staged graphs keep what they read of it before (their constants)
            _refuse_writing_saved(func, args, kwargs)
            storages = {storage_address(t) for t in written if isinstance(t, torch.Tensor)} - {0}
            for trace in enclosing_traces():
                if type(trace) is GraphTrace and trace.stage_all:
                    trace.snapshot_consts(storages)
        grad = torch.is_grad_enabled()
        read = [(t, t._version) for t in tree_flatten((args, kwargs))[0]
                if isinstance(t, torch.Tensor) and storage_address(t) not in self.created]
        out = func(*args, **kwargs)
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        # A view is what shares the closed-over tensor's storage: an op whose schema may alias
        # can copy (`to(dtype)` to another dtype, `reshape` of a non-contiguous tensor), and
        # that copy is a new tensor whose values go stale; an op that returns its input
        # (`detach_`, a no-op `to`) is a view of it.
        shared = {storage_address(o) for o in outs}
        for t, version in read:
            self.closure_reads.append(ClosureRead(t, version, storage_address(t), storage_address(t) in shared,
                                                  grad and t.requires_grad))
        closed = {storage_address(t) for t, _ in read} - {0}      # 0: every empty storage
        for o in outs:
            if storage_address(o) not in closed:
                self.created.add(storage_address(o))
        return out

    @classmethod
    def _should_skip_dynamo(cls):
        # False: no torch._disable_dynamo wrapper around __torch_dispatch__, which costs about
        # seven Python calls per op; functx's handler is never compiled by dynamo anyway.
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if TracerTensor in types:
            if _writes(func) and _target_is_plain(func, args, kwargs or {}):
                plain = _plain_values(args, kwargs or {})
                if plain is not None:
                    # a made tensor's plain value written into a plain one (a closed-over buffer:
                    # buf.add_(torch.ones(2))): a plain op, as it was before made tensors were
                    # wrappers (under jit, refused for a closed-over target as any plain write)
                    return self.__torch_dispatch__(func, (torch.Tensor,), *plain)
            if _is_seeded(func) and not _writes(func):
                plain = _plain_values(args, kwargs or {})
                if plain is not None and _samples(func, *plain):
                    # sampling from a tensor the function made (torch.poisson(torch.full(...))):
                    # no traced argument to carry vmap's randomness, so as any plain draw
                    return _route(func, *plain)
            if staging() and not _is_seeded(func) and _holds_no_tracer(args, kwargs):
                # only tensors the function made (torch.zeros(n), then mask[2] = True): computed
                # now, as plain torch would be, so that Python can read them (x[mask], int(n))
                # A closed-over tensor among them (torch.zeros(3) + w) is read now: a closure
                # read, guarded like one at the function's own level (a copy: the result is new).
                grad = torch.is_grad_enabled()
                for t in tree_flatten((args, kwargs))[0]:
                    if type(t) in _PLAIN_TYPES and storage_address(t) not in self.created:
                        self.closure_reads.append(ClosureRead(t, t._version, storage_address(t), False,
                                                              grad and t.requires_grad))
                with set_current_trace(EVAL_TRACE):
                    return dispatch(func, args, kwargs or {})
            # What TracerTensor.__torch_dispatch__ would do, without a second trip through the
            # dispatcher: this keeps the mode's cost per traced op to one Python call.
            return dispatch(func, args, kwargs or {})
        kwargs = kwargs or {}
        if (func in _FILL_FACTORIES and not kwargs.get("requires_grad") or func in _COPIES
                and not args[0].requires_grad and _called_by_user_code()) and not _has_symbolic_size(args, kwargs) \
                and not _called_by_functx():
            # torch.zeros(shape) / torch.empty(shape) made to be filled in place (torch.distributions'
            # rsample: torch.empty(shape).normal_()): a wrapper (see _FILL_FACTORIES); a copy
            # under jit reads the closed-over tensor as any plain op does (a guarded closure read)
            out = self._staged_plain_op(func, args, kwargs) if func in _COPIES and staging() else func(*args, **kwargs)
            if func in _COPIES and not out.is_contiguous():
                return out      # a wrapper reports a contiguous layout: a copy keeping strides stays plain
            w = TracerTensor(out.zero_() if func in _EMPTY_FACTORIES else out)
            w._made_in = current_trace()    # writes from inner transforms are checked against it
            return w
        if not _is_seeded(func) or not _samples(func, args, kwargs):
            if staging():
                if _has_symbolic_size(args, kwargs):
                    out = SIZED_FACTORIES[func](*args, **kwargs) if func in SIZED_FACTORIES else None
                    if out is not None:
                        return wrap(out)
                    if not _writes(func) and any(type(a) is torch.Tensor for a in tree_flatten((args, kwargs))[0]):
                        # a constant the function made (torch.tensor(1.0).expand(x.shape), what
                        # torch.distributions' broadcast_all does) meets a symbolic size: as a
                        # wrapper of itself its op is a functx op, which keeps the size symbolic
                        return dispatch(func, *tree_map(_lift_plain, (args, kwargs)))
                    # torch would turn the size into a constant, maybe without a guard: pin it
                    # explicitly (a guard of the trace, which explain lists with this line)
                    args, kwargs = tree_map(pinned, (args, kwargs))
                return self._staged_plain_op(func, args, kwargs)
            if _writes(func):
                run_pending()       # a batched unit may read the tensor this writes
                _refuse_writing_saved(func, args, kwargs)
            return func(*args, **kwargs)
        leaves, _ = tree_flatten((args, kwargs))
        if any(isinstance(l, TracerTensor) for l in leaves):
            return func(*args, **kwargs)
        return _route(func, args, kwargs)


def without_random_mode(fn):
    """Run fn with a RandomMode on top of the mode stack popped: for functx's own work done
    outside a dispatch handler (the backward pass), whose torch ops need no interception."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        stack = _get_current_dispatch_mode_stack()
        if stack and isinstance(stack[-1], RandomMode):
            with _pop_mode_temporarily():
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)
    return run


def active_mode():
    """The RandomMode on the dispatch mode stack, or None."""
    for m in _get_current_dispatch_mode_stack():
        if isinstance(m, RandomMode):
            return m
    return None


def _active() -> bool:
    return active_mode() is not None


class _PlainReadsMode(TorchDispatchMode):
    """Plain torch ops that a special lowering or a decomposition runs on a closed-over
    tensor while jit traces (batch norm's `rsqrt(running_var + eps)` in eval mode): torch
    pops RandomMode while it handles the traced op, so without this mode they would reach
    ATen unseen, and their trace-time results would be constants no ClosureGuard checks (a
    BatchNorm evaluated after more training used its old statistics). Here they are staged
    plain ops, as at the function's own level: recorded as closure reads (guarded) and
    refused when they write into the closed-over tensor."""

    def __init__(self, owner):
        super().__init__()
        self.owner = owner

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if TracerTensor in types:
            return func(*args, **(kwargs or {}))
        return self.owner._staged_plain_op(func, args, kwargs or {})


def reading_closed_over():
    """The mode that stages the plain ops of a lowering while jit traces (see _PlainReadsMode),
    or None where nothing is staged."""
    if not _ENTERED or not staging():
        return None
    return _PlainReadsMode(_ENTERED[-1])


_dispatch_module.READING_CLOSED_OVER[0] = reading_closed_over


class intercept_random:
    """Entered by transforms and jit around the user's function; nested entries are free.
    (A class, not a generator context manager: every transformed call enters it.)"""
    __slots__ = ("mode",)

    def __enter__(self):
        self.mode = None if _active() else RandomMode()
        if self.mode is not None:
            self.mode.__enter__()
            _ENTERED.append(self.mode)

    def __exit__(self, *exc):
        if self.mode is not None:
            _ENTERED.pop()
            return self.mode.__exit__(*exc)


__all__ = ["intercept_random", "without_random_mode", "RandomMode", "ClosureRead", "active_mode", "FACTORIES"]


# ---------------------------------------------------------------- F.dropout
# While training, on the CPU: input * (bernoulli(1 - p) / (1 - p)), ATen's CPU computation (the
# same draws from the same kernel, so a seed gives eager PyTorch's mask), as three primitives at
# the level. torch's own function reached them as four ATen ops through the front end, its
# in-place bernoulli_ and div_ on a fresh tensor each a tracked write. Other devices (a fused
# kernel with draws of its own), p of 0 or 1, in place: torch's function
# (composites.dropout returns the input itself where nothing is sampled).

def _dropout(input, p=0.5, training=True, inplace=False):
    if not (type(p) is float and 0.0 < p < 1.0 and training is True and inplace is False
            and isinstance(input, TracerTensor) and input.dtype.is_floating_point and input.device.type == "cpu"):
        return _keep_or_torch(input, p, training, inplace)
    return TracerTensor(_dropped(value_of(input), 1.0 - p))


@without_random_mode        # called from __torch_function__: its kernels need no interception
def _dropped(x, keep):
    t = type_of(x)
    return P.mul(x, P.div(P.random(t.shape, t.dtype, t.device, "bernoulli", (keep,)), keep))


_keep_or_torch = COMPOSITES[torch.nn.functional.dropout]
COMPOSITES[torch.nn.functional.dropout] = _dropout
