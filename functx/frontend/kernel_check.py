"""Dtype rules that live in PyTorch's kernels, not in its meta functions: "hypot_cpu" not
implemented for 'Long', subtraction or relu of bools, bitwise ops on floats. functx's
lowerings compute in dtypes of their own and would accept them, so before a pointwise op
is lowered, torch's own kernel runs once on one-element tensors of the same dtypes, ranks
and device (cached per signature), and what it raises is raised here."""
from __future__ import annotations

import torch
from torch.utils._pytree import tree_map

from ..core.errors import user_frame_summary

# Probe values: an error that some of them avoid depends on values (mvlgamma's domain,
# integer powers), which a trace does not know, so only an error raised for all is a rule.
_PROBE_VALUES = (1, 2, 100)
_VERDICTS: dict = {}


def _leaf_key(x):
    kind = type(x)
    if kind is float:
        return float        # a float's value never decides a dtype rule (and changes per call:
    if kind is int or kind is bool:          # learning rates, schedules); an int's can (pow)
        return kind, x
    if isinstance(x, torch.Tensor):
        return x.dtype, x.ndim, x.device
    if kind is list or kind is tuple:
        return tuple([_leaf_key(v) for v in x])
    return x if isinstance(x, (str, torch.dtype, type(None))) else repr(x)


def _signature(args, kwargs):
    key = []
    for a in args:      # tensors and numbers inline: this runs for every pointwise ATen op
        kind = type(a)
        if isinstance(a, torch.Tensor):
            key.append((a.dtype, a.ndim, a.device))
        elif kind is float:
            key.append(float)
        elif kind is int or kind is bool:
            key.append((kind, a))
        else:
            key.append(_leaf_key(a))
    if kwargs:
        key += [(k, _leaf_key(v)) for k, v in kwargs.items()]
    return tuple(key)


def _probe(func, args, kwargs, value):
    def one(x):
        if isinstance(x, torch.Tensor):
            return torch.full((1,) * x.dim(), value, dtype=x.dtype, device=x.device)
        return x
    with torch.no_grad():
        func(*tree_map(one, args), **tree_map(one, kwargs))


def _verdict(func, args, kwargs):
    """None if torch's kernel accepts these dtypes, else the (type, message) it raises."""
    first = None
    for value in _PROBE_VALUES:
        try:
            _probe(func, args, kwargs, value)
            return None
        except Exception as e:     # torch's kernel rejected the probe: remember why
            first = first or (type(e), str(e).splitlines()[0] if str(e) else type(e).__name__)
    return first


def check_kernel_accepts(func, args, kwargs):
    """Raise what eager PyTorch raises for this pointwise op's dtypes, if it does."""
    key = (id(func), _signature(args, kwargs))     # id: OpOverload.__hash__ is Python code
    found = _VERDICTS.get(key)
    if found is None or found[0] is not func:
        if len(_VERDICTS) >= 4096:
            _VERDICTS.clear()
        found = _VERDICTS[key] = (func, _verdict(func, args, kwargs))
    verdict = found[1]
    if verdict is not None and not _runs_on_empty(func, args, kwargs):
        kind, message = verdict
        real = _message_at_real_shapes(func, args, kwargs) if "shape" in message else None
        message = (f"{real}\n(eager PyTorch rejects {func} for these shapes)" if real else
                   f"{message}\n(eager PyTorch rejects {func} for these dtypes)") + f"\n{user_frame_summary()}"
        try:
            error = kind(message)
        except Exception:          # an exception type with another constructor
            error = RuntimeError(message)
        error._functx_kernel_error = True       # torch's verdict already: kernel_error keeps it
        raise error


def _message_at_real_shapes(func, args, kwargs):
    """torch's message for the operands' own shapes (meta tensors), where the probe's size-1
    tensors raised a shape error (an in-place op whose output would broadcast to more
    dims): `output with shape [3] doesn't match the broadcast shape [2, 3]`, not the probe's
    [1] and [1, 1] under a claim about dtypes."""
    def meta(x):
        if isinstance(x, torch.Tensor):
            return torch.empty(tuple(int(n) for n in x.shape), dtype=x.dtype, device="meta")
        return x
    try:
        with torch.no_grad():
            func(*tree_map(meta, args), **tree_map(meta, kwargs))
    except Exception as e:     # noqa: BLE001  the message is all that is wanted
        first = str(e).splitlines()[0] if str(e) else ""
        return first if "shape" in first else None
    return None


def _runs_on_empty(func, args, kwargs) -> bool:
    """Whether some tensor operand has no elements and torch's kernel runs on empty tensors of
    these shapes: a rule about values (integer division by zero) holds for no element then,
    and eager torch returns the empty result."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)] + \
        [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
    if not any(type(n) is int and n == 0 for n in (t.numel() for t in tensors)):
        return False

    def empty(x):
        if isinstance(x, torch.Tensor):
            return torch.empty(tuple(int(n) for n in x.shape), dtype=x.dtype, device=x.device)
        return x
    try:
        with torch.no_grad():
            func(*tree_map(empty, args), **tree_map(empty, kwargs))
    except Exception:      # noqa: BLE001  a dtype rule: it holds for empty tensors too
        return False
    return True


_POINTWISE: dict = {}


# Elementwise in torch's kernels but not tagged pointwise in its schema.
_UNTAGGED_POINTWISE = frozenset({torch.ops.aten.floor_divide.default, torch.ops.aten.floor_divide.Scalar})


def is_pointwise(func) -> bool:
    answer = _POINTWISE.get(func)
    if answer is None:
        answer = _POINTWISE[func] = torch.Tag.pointwise in func.tags or func in _UNTAGGED_POINTWISE
    return answer


# ---------------------------------------------------------------- non-pointwise ops
# Dtype rules of non-pointwise ops that functx's lowerings and torch's decompositions skip
# (they convert an index to int64, or compute in a dtype of their own), so x[float_index],
# scatter of a float32 src into a float64 tensor, softmax or mean of a Long tensor ran under
# the transforms where eager PyTorch raises. Written out as torch's kernels state them (its
# meta functions hold most of them, but running one imports sympy: seconds of a first jit).

aten = torch.ops.aten
_NAMES = {torch.float64: "Double", torch.float32: "Float", torch.float16: "Half", torch.bfloat16: "BFloat16",
          torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte",
          torch.bool: "Bool"}
_LONG, _INTS = (torch.int64,), (torch.int64, torch.int32)


def _name(dtype):
    return _NAMES.get(dtype, str(dtype))


def _arg(args, kwargs, pos, name):
    return args[pos] if len(args) > pos else kwargs.get(name)


def _fail(kind, message):
    error = kind(f"{message}\n(eager PyTorch rejects this)\n{user_frame_summary()}")
    error._functx_kernel_error = True
    raise error


def _index_rule(allowed, kind, message, pos=2, name="index", unless_empty=False):
    """op's index argument (self, dim, index, ...) must have one of `allowed` dtypes (gather
    and scatter skip the rule for an empty index)."""
    def check(func, args, kwargs):
        index = _arg(args, kwargs, pos, name)
        if isinstance(index, torch.Tensor) and index.dtype not in allowed and not (
                unless_empty and any(type(n) is int and n == 0 for n in index.shape)):
            _fail(kind, message.format(_name(index.dtype)))
    return check


def _check_scatter(func, args, kwargs):
    _index_rule(_INTS, RuntimeError, "scatter(): Expected dtype int32/int64 for index", unless_empty=True)(
        func, args, kwargs)
    src = _arg(args, kwargs, 3, "src")
    if isinstance(src, torch.Tensor) and src.dtype != args[0].dtype:
        _fail(RuntimeError, "scatter(): Expected self.dtype to be equal to src.dtype")


def _check_index(func, args, kwargs):
    for ix in _arg(args, kwargs, 1, "indices"):
        if ix is not None and ix.dtype not in (torch.int64, torch.int32, torch.uint8, torch.bool):
            _fail(IndexError, "tensors used as indices must be long, int, byte or bool tensors")


def _check_index_put(func, args, kwargs):
    _check_index(func, args, kwargs)
    x, values = args[0], _arg(args, kwargs, 2, "values")
    if values.dtype != x.dtype:
        _fail(RuntimeError, f"Index put requires the source and destination dtypes match, got {_name(x.dtype)} for "
                            f"the destination and {_name(values.dtype)} for the source.")


def _floating(message, kind=RuntimeError, unless=None):
    """op's input must be floating (or complex), unless its `unless` keyword gives a dtype."""
    def check(func, args, kwargs):
        x = args[0]
        if not (x.dtype.is_floating_point or x.dtype.is_complex) and (unless is None or kwargs.get(unless) is None):
            name = "log_softmax" if "log_softmax" in func.__name__ else "softmax"
            _fail(kind, message.format(dtype=_name(x.dtype), softmax=name))
    return check


def _check_topk(func, args, kwargs):
    x, k, dim = args[0], _arg(args, kwargs, 1, "k"), _arg(args, kwargs, 2, "dim")
    dim = -1 if dim is None else dim
    if x.dim() and not -x.dim() <= dim < x.dim():
        return          # the lowering raises torch's "Dimension out of range"
    size = x.shape[dim] if x.dim() else 1
    if type(k) is int and type(size) is int and not 0 <= k <= size:
        _fail(RuntimeError, "selected index k out of range")


def _check_convolution(func, args, kwargs):
    x, w, b = args[0], args[1], _arg(args, kwargs, 2, "bias")
    if w.dtype != x.dtype:
        _fail(RuntimeError, f"expected scalar type {_name(x.dtype)} but found {_name(w.dtype)}")
    if isinstance(b, torch.Tensor) and b.dtype != x.dtype:
        _fail(RuntimeError, f"Input type ({str(x.dtype)[6:]}) and bias type ({str(b.dtype)[6:]}) should be the same")


def _all(ops, check):
    return {op: check for op in ops}


SHAPE_CHECKS = {
    aten.index.Tensor: _check_index, aten.index_put.default: _check_index_put, aten.index_put_.default: _check_index_put,
    aten.gather.default: _index_rule(_INTS, RuntimeError, "gather(): Expected dtype int32/int64 for index",
                                     unless_empty=True),
    aten.take.default: _index_rule(_LONG, RuntimeError, "take(): Expected a long tensor for index, but got {}", 1),
    aten.take_along_dim.default: _index_rule(_LONG, RuntimeError, "torch.take_along_dim(): dtype of indices should "
                                             "be Long but got {}", 1, "indices"),
    aten.put.default: _index_rule(_LONG, RuntimeError, "put_(): Expected a long tensor for index, but got {}", 1),
    aten.put_.default: _index_rule(_LONG, RuntimeError, "put_(): Expected a long tensor for index, but got {}", 1),
    **_all((aten.scatter.src, aten.scatter.value, aten.scatter_.src, aten.scatter_.value, aten.scatter.reduce,
            aten.scatter.value_reduce, aten.scatter_add.default, aten.scatter_add_.default, aten.scatter_reduce.two,
            aten.scatter_reduce_.two), _check_scatter),
    **_all((aten.index_add.default, aten.index_add_.default),
           _index_rule(_INTS, RuntimeError, "index_add_(): Expected dtype int32/int64 for index but got: {}")),
    **_all((aten.index_copy.default, aten.index_copy_.default),
           _index_rule(_LONG, RuntimeError, "index_copy_(): Expected a long tensor for index, but got {}")),
    **_all((aten.index_fill.int_Scalar, aten.index_fill.int_Tensor, aten.index_fill_.int_Scalar,
            aten.index_fill_.int_Tensor), _index_rule(_LONG, IndexError, "index_fill_(): Expected dtype int64 for index.")),
    **_all((aten.mean.default, aten.mean.dim), _floating(
        "mean(): could not infer output dtype. Input dtype must be either a floating point or complex dtype. "
        "Got: {dtype}", unless="dtype")),
    aten.linalg_vector_norm.default: _floating(
        "linalg.vector_norm: Expected a floating point or complex tensor as input. Got {dtype}", unless="dtype"),
    aten._cdist_forward.default: _floating("cdist only supports floating-point dtypes, X1 got: {dtype}"),
    **_all((aten._softmax.default, aten._log_softmax.default),
           _floating('"{softmax}_kernel_impl" not implemented for \'{dtype}\'', NotImplementedError)),
    **_all((aten.layer_norm.default, aten.native_layer_norm.default),
           _floating('"LayerNormKernelImpl" not implemented for \'{dtype}\'', NotImplementedError)),
    **_all((aten.group_norm.default, aten.native_group_norm.default),
           _floating('"GroupNormKernelImpl" not implemented for \'{dtype}\'', NotImplementedError)),
    aten.topk.default: _check_topk,
    aten.convolution.default: _check_convolution,
}


# ---------------------------------------------------------------- torch's error for a failed call
# A torch function that failed inside functx (a decomposition without the kernel's checks,
# torch._decomp's grid_sampler_2d or pixel_unshuffle reshaping operands of the wrong sizes)
# raised from deep inside: "shape '[1, 1, 4, 4, 2]' is invalid for input of size 64". On that
# path only, the function runs once more on plain tensors of the operands' shapes, dtypes and
# devices (traced operands filled, closed-over constants such as indices as they are); where
# torch raises there, for zeros and for ones alike (a rule about shapes, not values), that is
# the error the user gets, as eager PyTorch would raise it.
_PLAIN = (torch.Tensor, torch.nn.Parameter)

def kernel_error(func, args, kwargs, error):
    """The exception eager PyTorch raises for func on operands of these shapes and dtypes,
    where it raises one that is not `error`'s; None otherwise."""
    if getattr(error, "_functx_kernel_error", False) or getattr(func, "__name__", "") in _NO_PROBE:
        return None
    try:
        with torch._C.DisableTorchFunctionSubclass():
            specs = [(tuple(x.shape), x.dtype, x.device) for x in _tensors((args, kwargs))]
        if any(type(n) is not int for shape, _, _ in specs for n in shape):
            return None         # a symbolic size
    except Exception:           # noqa: BLE001  an operand that cannot say its shape
        return None
    found = []
    for fill in (0, 1):
        it = iter(specs)

        def plain(x):
            if isinstance(x, torch.Tensor):
                shape, dtype, device = next(it)
                if type(x) in _PLAIN:   # a closed-over constant (an index): its values, copied
                    return x.detach().clone()
                return torch.full(shape, fill, dtype=dtype, device=device)
            return x
        try:
            from torch.utils._python_dispatch import _disable_current_modes
            with _disable_current_modes(), torch._C.DisableTorchFunction(), torch.no_grad():
                a, k = _map_tensors(plain, (args, kwargs))
                func(*a, **k)
        except Exception as e:  # noqa: BLE001  torch's own verdict is the point
            found.append(e)
            continue
        return None             # torch accepts these operands: functx's own error stands
    if type(found[0]) is not type(found[1]) or str(found[0]) != str(found[1]) or \
            str(error).startswith(str(found[0]).split("\n")[0]):
        return None             # a rule about values, or the message functx gave
    first = found[0]
    first._functx_kernel_error = True
    return first


_NO_PROBE = frozenset({"rand", "randn", "randint", "rand_like", "randn_like", "randint_like", "randperm",
                       "bernoulli", "bernoulli_", "multinomial", "normal", "normal_", "uniform_",
                       "exponential_", "geometric_", "cauchy_", "log_normal_", "random_", "dropout",
                       "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
                       "rrelu", "rrelu_", "gumbel_softmax", "poisson", "binomial", "_standard_gamma",
                       "_sample_dirichlet", "native_dropout", "item", "tolist", "numpy", "backward",
                       "register_hook"})       # draws (a probe would advance the generator) and effects


def _tensors(tree):
    leaves = []
    _map_tensors(lambda x: leaves.append(x) if isinstance(x, torch.Tensor) else None, tree)
    return leaves


def _map_tensors(fn, tree):
    """fn on every tensor in nested tuples / lists / dicts (in order), other leaves as they are."""
    if isinstance(tree, torch.Tensor):
        out = fn(tree)
        return tree if out is None else out
    if type(tree) in (list, tuple):
        return type(tree)(_map_tensors(fn, v) for v in tree)
    if type(tree) is dict:
        return {k: _map_tensors(fn, v) for k, v in tree.items()}
    return tree
