"""Every registered primitive fills every rule slot that applies to it.

The test walks functx.core.REGISTRY after importing the whole package (so primitives that
colleagues add later are checked automatically). Exceptions
are explicit allow-lists with a reason each; an allow-list entry that no longer names a
registered primitive, or that is no longer needed, fails the test too, so the lists stay honest.
"""
import importlib
import pkgutil

import pytest

import torch

import functx
from functx.core import POINTWISE, REDUCTION, REGISTRY, VIEW, Primitive
from functx.core.primitive import KINDS

# Import every functx module so that every primitive is registered.
for _mod in pkgutil.walk_packages(functx.__path__, "functx."):
    if _mod.name.startswith("functx.compile.triton"):
        # Optional GPU modules: import if their dependencies (triton) are present.
        try:
            importlib.import_module(_mod.name)
        except ImportError:
            pass
        continue
    importlib.import_module(_mod.name)


# Primitives with no inputs: no tangent or batch dimension can ever reach them, so jvp and
# batch never run (JVPTrace/BatchTrace hand input-free primitives to their parent trace).
NULLARY = {
    "full": "a constant: no inputs",
    "iota": "a constant: no inputs",
    "random": "no inputs; vmap's randomness= is applied by BatchTrace._random",
    "axis_index": "no inputs; resolved by the BatchTrace that owns the axis name",
}

# Backend-internal primitives: a compiler pass puts them into a backend's own copy of a graph
# after every transform ran, so no trace ever meets them; impl (the torch reference) and
# abstract_eval are all they need.
BACKEND_INTERNAL = {
    "cpu_row_products": "compile/cpu/row_products.py: the CPU fused tier's products of a few rows "
                        "with a shared matrix, created from dot_generals inside CppFused",
    "update_slice_in_place": "compile/write_in_place.py: the pipeline's last pass writes a block into a "
                             "buffer nothing else reads (tests/test_strided_writes.py)",
    "split_block_in_place": "compile/write_in_place.py: split_block over a buffer nothing else reads",
}

# Collectives: BatchTrace resolves them (prims/collective.collective_batch and
# foreign_collective_batch), so they carry no batch rule of their own.
COLLECTIVES = {"psum", "pmax", "all_gather", "axis_index"}

# Primitives whose jvp rule exists but is identically zero, or that are not differentiable by
# nature; they still need a jvp rule (returning a symbolic Zero), so none is allowed to lack one.
NON_DIFFERENTIABLE_WITHOUT_JVP: dict = {}

# Primitives linear in (some of) their inputs: these need a transpose rule so that reverse
# mode (vjp = linearize + transpose) can pass through the linear programs that jvp rules emit.
LINEAR = {
    "neg", "add", "sub", "mul", "div", "where", "convert_element_type",
    "xlogy",    # linear in its first operand (its jvp there is xlogy(t, y))
    "broadcast_in_dim", "reshape", "transpose", "slice", "pad", "concatenate", "rev",
    "reduce_sum", "cumsum", "dot_general",
    "take", "scatter_add", "scatter", "update_slice", "split_block", "take_along_axis", "scatter_add_along",
    "nll_loss", "nll_loss_backward",     # prims/fused.py: linear in their first operand
    "log_softmax_tangent", "log_softmax_cotangent", "softmax_tangent",     # prims/fused.py: linear in t
    "upsample", "upsample_backward",     # prims/resample.py: each the other's transpose
    "spatial_map", "spatial_map_backward",
    # prims/fused_activations.py: t * f'(x), linear in t (their own transposes)
    "leaky_relu_backward", "hardtanh_backward", "hardswish_backward", "hardsigmoid_backward", "elu_backward",
    "softplus_backward", "log_sigmoid_backward",
    "tanh_backward", "sigmoid_backward", "threshold_backward", "gelu_backward", "tanh_gelu_backward",
    "normalize_tangent",    # prims/fused_norm.py: linear in its first operand (its own transpose)
    # prims/fused_norm_affine.py: the tangent linear in (dx, dw, db), the cotangent in ct; each
    # the other's transpose
    "normalize_affine_tangent", "normalize_affine_cotangent",
    "max_pool_tangent", "max_pool_cotangent",     # prims/pool.py: each the other's transpose
    "psum", "all_gather", "opaque",
    # prims/spmd.py: identities per rank with functx.spmd's replicated-value transposes
    "replicated_in", "replicated_out", "pvary", "invariant_ct",
    # transforms/custom.py: linear in its tangent operands; its transpose is the user's bwd.
    "custom_lin",
    # transforms/hooks.py: Tensor.register_hook, an identity whose transpose runs the hooks
    "tensor_hook",
    "cond",    # transforms/control_flow.py: linear in the operands its branches are linear in
    "scan",    # transforms/control_flow/scan.py: linear in the operands its body is linear in
    "scan_tangent",    # transforms/control_flow/scan_revolve.py: linear in its tangent operands
    "checkpoint", "checkpoint_name",    # transforms/control_flow/checkpoint.py (checkpoint_name is the identity)
    # functx/kernels/attention.py: linear in its tangent operands; transpose = attention_bwd
    "attention_tangent",
    # prims/conv.py (when present): convolution is bilinear in (input, weight).
    "conv", "convolution", "conv_general_dilated", "conv_weight_grad",
}

# Primitives known to be non-linear in every input (so they need no transpose rule).
# Every registered primitive must be in LINEAR or here (or NULLARY): a new primitive forces
# its author to decide.
NONLINEAR = {
    "exp", "exp2", "log", "log1p", "expm1", "sin", "cos", "tan", "tanh", "asin", "acos", "atan",
    "sinh", "cosh", "asinh", "acosh", "atanh", "sqrt", "rsqrt", "abs", "logistic", "erf", "erfc", "erfcx", "entr", "erfinv",
    "lgamma", "digamma", "sign", "floor", "ceil", "round", "trunc", "logical_not", "bitwise_not",
    "polygamma", "bessel", "pow", "max", "min", "atan2", "rem", "idiv", "bitwise_and", "bitwise_or",
    "bitwise_xor", "eq", "ne", "lt", "le", "gt", "ge", "stop_gradient", "sample_reparam",
    "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin", "sort", "topk", "pmax",
    "custom_jvp_call", "custom_vjp_call",    # transforms/custom.py
    "log_softmax", "softmax", "relu", "gelu",      # prims/fused.py
    "leaky_relu", "hardtanh", "hardswish", "hardsigmoid", "elu", "softplus", "log_sigmoid",  # prims/fused_activations.py
    "binary_cross_entropy", "bce_slope", "huber_loss", "huber_loss_slope", "smooth_l1_loss",  # prims/fused_losses.py
    "smooth_l1_loss_slope",
    "max_pool",     # prims/pool.py
    "normalize_rows",   # prims/fused_norm.py
    "normalize_affine",     # prims/fused_norm_affine.py
    "while_loop",    # transforms/control_flow (linearize records a tape and a scan, never a while)
    "while_tape_check",    # transforms/control_flow/while_reverse.py (integer step count)
    # while_reverse.py: tape[step] = carry on primal values; its jvp is a scatter (which transposes)
    "while_tape_write",
    # transforms/control_flow/scan_revolve.py: linear in its cotangents, but never transposed
    # (its jvp raises: no forward over reverse through remat='binomial', so linearize never records it)
    "scan_revolve",
    "debug_callback",    # prims/debug.py: no outputs; its (no-op) transpose is never needed
    "attention", "attention_jvp", "attention_bwd",    # functx/kernels/attention.py
}


# Pointwise primitives without a Triton expression: they run as externs between kernels.
POINTWISE_WITHOUT_TRITON = {
    "digamma": "no libdevice digamma",
    "polygamma": "no libdevice polygamma",
    "bessel": "torch.special's Bessel functions: no libdevice spelling of the scaled and spherical ones",
    "idiv": "Triton's integer division truncates; torch's floor mode differs",
    "iota": "kernels read it as an index (Lowering._compute), no expression needed",
}


def _slots(p):
    return {s: getattr(p, s) for s in ("abstract_eval", "impl", "jvp", "transpose", "batch")}


def test_registry_is_populated():
    # The core set must be there (guards against a broken import making the test vacuous).
    for name in ("add", "dot_general", "reduce_sum", "take", "opaque", "psum", "sort", "pad"):
        assert name in REGISTRY, name
    assert len(REGISTRY) >= 80


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_primitive_fills_every_slot(name):
    p = REGISTRY[name]
    s = _slots(p)
    missing = []
    if name in BACKEND_INTERNAL:
        assert callable(s["abstract_eval"]) and callable(s["impl"]), name
        return
    if not callable(s["abstract_eval"]):
        missing.append("abstract_eval")
    if not callable(s["impl"]):
        missing.append("impl")
    if name not in NULLARY and name not in NON_DIFFERENTIABLE_WITHOUT_JVP and not callable(s["jvp"]):
        missing.append("jvp")
    if name not in NULLARY and name not in COLLECTIVES and not callable(s["batch"]):
        missing.append("batch")
    if name in LINEAR and not callable(s["transpose"]):
        missing.append("transpose (it is a linear primitive)")
    if name not in LINEAR and name not in NONLINEAR and name not in NULLARY:
        missing.append("a linearity decision: add it to LINEAR (and give it a transpose rule) or to "
                       "NONLINEAR in tests/test_completeness.py")
    assert not missing, f"primitive '{name}' lacks: {', '.join(missing)}"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_primitive_declares_its_lowering_facts(name):
    """Each kind carries the facts its backends lower it with, and only those."""
    p = REGISTRY[name]
    assert p.kind in KINDS, p.kind
    if p.emit is not None:
        assert callable(p.emit), f"{name}.emit must be callable when set"
    if p.kind == POINTWISE and name not in POINTWISE_WITHOUT_TRITON:
        assert isinstance(p.triton, str) or callable(p.triton), f"pointwise {name} needs a Triton expression"
    if p.kind != POINTWISE:
        assert p.triton is None, f"{name} is not pointwise but declares a Triton expression"
    if p.kind == REDUCTION:
        assert p.combine in ("add", "mul", "max", "min"), f"reduction {name} needs a combine op"
    else:
        assert p.combine is None, f"{name} is not a reduction but declares a combine op"
    if p.kind == VIEW:
        assert callable(p.index_map), f"view {name} needs an index_map"
        assert callable(p.emit), f"view {name} needs an emit rule (the host code materializes views)"
    else:
        assert p.index_map is None, f"{name} is not a view but declares an index_map"


def test_primitive_fields_are_declared():
    """Primitive is a declared structure: no rule or fact is patched on as a new attribute."""
    fields = set(Primitive.__dataclass_fields__)
    for name, p in REGISTRY.items():
        extra = set(vars(p)) - fields
        assert not extra, f"primitive {name} carries undeclared attributes {sorted(extra)}"


def test_defining_a_primitive_twice_is_an_error():
    with pytest.raises(ValueError, match="defined twice"):
        Primitive("sin")


def test_a_new_unary_primitive_is_one_block():
    """A new unary op (impl, PyTorch spelling, Triton expression, derivative) works under
    grad, vmap, jvp and jit on both backends from one defunary line."""
    from functx.compile.triton.triton_ops import lowerable
    from functx.core.trace import bind
    from functx.frontend import unwrap, wrap
    from functx.prims import elementwise as ew
    p = ew.defunary("test_cube_root", torch.special.cbrt if hasattr(torch.special, "cbrt") else
                    (lambda x: torch.sign(x) * torch.abs(x) ** (1 / 3)), None,
                    triton="libdevice.cbrt({0})", deriv=lambda x, y: ew.div(1.0, ew.mul(ew.mul(y, y), 3.0)))
    REGISTRY.pop("test_cube_root")
    try:
        f = lambda x: wrap(bind(p, (unwrap(x),), {}))  # noqa: E731
        x = torch.tensor([1.0, 8.0, 27.0], dtype=torch.float64)
        torch.testing.assert_close(f(x), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        want = 1.0 / (3.0 * torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64))
        torch.testing.assert_close(functx.grad(lambda v: f(v).sum())(x), want)
        torch.testing.assert_close(functx.vmap(functx.grad(f))(x), want)
        torch.testing.assert_close(functx.jvp(f, (x,), (torch.ones_like(x),))[1], want)
        torch.testing.assert_close(functx.jit(functx.grad(lambda v: f(v).sum()))(x), want)
        graph = functx.make_graph(f)(x)
        assert lowerable(graph.eqns[0]) is None          # the Triton backend can fuse it
    finally:
        REGISTRY.pop("test_cube_root", None)


def test_allow_lists_are_current():
    registered = set(REGISTRY)
    for name in NULLARY:
        assert name in registered, f"NULLARY lists '{name}', which is not registered"
    for name in COLLECTIVES:
        assert name in registered and REGISTRY[name].collective, name
    # Collectives and nullary primitives must really be handled where the lists say:
    # a nullary primitive must take no operands (abstract_eval with only keyword params).
    import inspect
    for name in NULLARY:
        sig = inspect.signature(REGISTRY[name].abstract_eval)
        positional = [q for q in sig.parameters.values()
                      if q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD, q.VAR_POSITIONAL)]
        assert not positional or name == "axis_index", f"{name} takes operands; it is not nullary"
    for name in BACKEND_INTERNAL:
        p = REGISTRY.get(name)
        assert p is not None, f"BACKEND_INTERNAL lists '{name}', which is not registered"
        assert p.jvp is None and p.batch is None and p.transpose is None, \
            f"{name} has transformation rules: it is no longer backend-internal, check it as the others"
    assert not (LINEAR & NONLINEAR), LINEAR & NONLINEAR
    for name in NONLINEAR:
        assert name in registered, f"NONLINEAR lists '{name}', which is not registered"
    for name in POINTWISE_WITHOUT_TRITON:
        assert REGISTRY[name].kind == POINTWISE and REGISTRY[name].triton is None, name


def test_batch_trace_handles_collectives():
    from functx.prims import collective
    from functx.transforms import batching
    src = inspect_source(batching.BatchTrace.process_primitive)
    assert "collective" in src
    for name in COLLECTIVES:
        assert REGISTRY[name] in (collective.psum_p, collective.pmax_p, collective.all_gather_p,
                                  collective.axis_index_p)


def inspect_source(fn):
    import inspect
    return inspect.getsource(fn)
