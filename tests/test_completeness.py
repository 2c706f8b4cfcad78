"""Every registered primitive fills every rule slot that applies to it.

The test walks functx.core.REGISTRY after importing the whole package (so primitives that
colleagues add later, e.g. prims/conv.py or kernels/, are checked automatically). Exceptions
are explicit allow-lists with a reason each; an allow-list entry that no longer names a
registered primitive, or that is no longer needed, fails the test too, so the lists stay honest.
"""
import importlib
import pkgutil

import pytest

import functx
from functx.core import REGISTRY

# Import every functx module so that every primitive is registered.
for _mod in pkgutil.walk_packages(functx.__path__, "functx."):
    if _mod.name.startswith("functx.compile.triton") or _mod.name.startswith("functx.kernels"):
        # Optional GPU modules: import if their dependencies are present.
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
    "broadcast_in_dim", "reshape", "transpose", "slice", "pad", "concatenate", "rev",
    "reduce_sum", "cumsum", "dot_general",
    "take", "scatter_add", "scatter", "take_along_axis", "scatter_add_along",
    "psum", "all_gather", "opaque",
    # transforms/custom.py: linear in its tangent operands; its transpose is the user's bwd.
    "custom_lin",
    "cond",    # transforms/control_flow.py: linear in the operands its branches are linear in
    # prims/conv.py (when present): convolution is bilinear in (input, weight).
    "conv", "convolution", "conv_general_dilated",
}

# Primitives known to be non-linear in every input (so they need no transpose rule).
# Every registered primitive must be in LINEAR or here (or NULLARY): a new primitive forces
# its author to decide.
NONLINEAR = {
    "exp", "exp2", "log", "log1p", "expm1", "sin", "cos", "tan", "tanh", "asin", "acos", "atan",
    "sinh", "cosh", "asinh", "acosh", "atanh", "sqrt", "rsqrt", "abs", "logistic", "erf", "erfinv",
    "lgamma", "digamma", "sign", "floor", "ceil", "round", "trunc", "logical_not", "bitwise_not",
    "polygamma", "pow", "max", "min", "atan2", "rem", "idiv", "bitwise_and", "bitwise_or",
    "bitwise_xor", "eq", "ne", "lt", "le", "gt", "ge", "stop_gradient",
    "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin", "sort", "pmax",
    "custom_jvp_call", "custom_vjp_call",    # transforms/custom.py
    "while_loop",    # transforms/control_flow.py (its transpose raises: dynamic trip count)
}


def _slots(p):
    return {s: getattr(p, s, None) for s in ("abstract_eval", "impl", "jvp", "transpose", "batch")}


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
    if p.emit is not None:
        assert callable(p.emit), f"{name}.emit must be callable when set"
    if getattr(p, "triton", None) is not None:
        assert isinstance(p.triton, str) or callable(p.triton), f"{name}.triton must be str or callable"
    assert not missing, f"primitive '{name}' lacks: {', '.join(missing)}"


def test_allow_lists_are_current():
    registered = set(REGISTRY)
    for name in NULLARY:
        assert name in registered, f"NULLARY lists '{name}', which is not registered"
    for name in COLLECTIVES:
        assert name in registered and getattr(REGISTRY[name], "collective", False), name
    # Collectives and nullary primitives must really be handled where the lists say:
    # a nullary primitive must take no operands (abstract_eval with only keyword params).
    import inspect
    for name in NULLARY:
        sig = inspect.signature(REGISTRY[name].abstract_eval)
        positional = [q for q in sig.parameters.values()
                      if q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD, q.VAR_POSITIONAL)]
        assert not positional or name == "axis_index", f"{name} takes operands; it is not nullary"
    assert not (LINEAR & NONLINEAR), LINEAR & NONLINEAR
    for name in NONLINEAR:
        assert name in registered, f"NONLINEAR lists '{name}', which is not registered"


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
