"""Primitive: a named operation and the declared table of everything functx knows about it.

Each primitive is defined once, in one block in functx/prims/ (or, for structural
primitives whose rules run transforms, in functx/transforms/), with every rule beside it:

  abstract_eval(*types, **params) -> TensorType | list   (Python scalars stand for literals)
  impl(*tensors, **params)         -> Tensor | list        (eager torch)
  jvp(primals, tangents, **params) -> (primal_out, tangent_out)   (some tangents may be Zero)
  transpose(ct, *args, **params)   -> cotangents for the UndefinedPrimal args (linear prims)
  batch(axis, args, dims, **params)-> (out, out_dim)
  taylor(primals, series, **params)-> (out, out_series)   (truncated Taylor propagation, see
                                      prims/series.py; None: transforms/jet.py nests the jvp rule)

and the facts the backends lower it with:

  emit(eqn, srcs)   -> a PyTorch source expression, or None to call `impl` (both backends'
                       generated host code); emit_broadcasts: that expression broadcasts its
                       tensor operands as torch does (the eager backend then drops
                       explicit broadcasts feeding it)
  start(*tensors, **params) -> a handle with wait() -> impl's result (async collectives)
  triton            -> pointwise only: a Triton expression template ("tl.sin({0})", params by
                       name) or a function eqn -> template | Unsupported(reason)
  cpp               -> pointwise only: the C++ expression for the CPU backend's kernels
                       ("sinf({0})"), or a function eqn -> template | Unsupported(reason)
  combine           -> reductions only: the Triton and C++ combine op ("add", "mul", "max", "min")
  index_map(idx, in_shape, **params) -> views only: the input index read at output index idx,
                       so the fusion compiler folds the view into index arithmetic

The definer helpers in functx/prims/define.py (defjvp, deflinear, defbilinear, defvectorized)
fill the rule slots from a few lines each. tests/test_completeness.py checks that every
primitive fills every slot its kind needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .trace import bind, trace_state

# How the fusion compiler treats a primitive.
POINTWISE = "pointwise"     # one output element from the same element of each operand
REDUCTION = "reduction"     # reduces static axes with `combine`
VIEW = "view"               # a pure re-indexing (`index_map`); kernels fold it into index math
EXTERN = "extern"           # runs through torch between kernels (`emit` or `impl`)
STRUCTURAL = "structural"   # holds sub-graphs or callables (cond, while_loop, custom_jvp, ...)
KINDS = (POINTWISE, REDUCTION, VIEW, EXTERN, STRUCTURAL)


class Unsupported(str):
    """A backend lowering's answer "this equation can't be lowered here", with the reason
    (explain prints it; the equation then runs as an extern)."""


@dataclass(eq=False, repr=False)
class Primitive:
    name: str
    kind: str = EXTERN
    multiple_results: bool = False
    effectful: bool = False           # never CSE'd, folded or removed (random numbers)
    commutative: bool = False         # f(x, y) == f(y, x): CSE treats both orders as one
    collective: bool = False          # a named-axis collective: resolved by the matching vmap
    # Transformation rules.
    abstract_eval: Callable | None = None
    impl: Callable | None = None
    jvp: Callable | None = None
    transpose: Callable | None = None
    batch: Callable | None = None
    taylor: Callable | None = None
    # Structural primitives holding Python callables (custom_jvp_call, custom_vjp_call):
    # fn(*args, **params) run at a GraphTrace in place of recording an equation, so jit
    # compiles their bodies; not where an enclosing trace will differentiate the graph (a
    # scan body or checkpoint traced under grad: GraphTrace.inlines), which needs the rules.
    inline: Callable | None = None
    # The same primitives in a graph traced for torch's autograd (an eager loop body keeping
    # custom calls, core.trace.KEEP_CUSTOM_CALLS): fn(args, params) -> (args, params) with the
    # tracers its callables close over made extra operands (transforms/custom_autograd.py)
    close_over: Callable | None = None
    # Fused primitives of eager transforms (prims/fused.py): fn(*args, **params) binding the
    # primitives it stands for, which a GraphTrace records instead unless it keeps fused
    # primitives (an eager unit's or rule's trace), so jit and the backends never see it.
    composite: Callable | None = None
    # Lowering facts.
    emit: Callable | None = None
    emit_broadcasts: bool = False
    # Collectives on a process axis: start(*args, **params) issues the call and returns a
    # handle whose wait() gives impl's result; generated code waits just before the first
    # use, so communication overlaps the computation in between.
    start: Callable | None = None
    triton: str | Callable | None = None
    cpp: str | Callable | None = None
    combine: str | None = None
    index_map: Callable | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"primitive {self.name}: unknown kind {self.kind!r}")
        if self.name in REGISTRY:
            raise ValueError(f"primitive {self.name!r} is defined twice")
        REGISTRY[self.name] = self

    def bind(self, *args, **params):
        return trace_state.trace.process_primitive(self, args, params)     # core.trace.bind, inlined

    __call__ = bind

    def triton_lowering(self, eqn) -> str | Unsupported:
        """The Triton expression template for a pointwise equation, or why there is none."""
        rule = self.triton
        if rule is None:
            return Unsupported(f"{self.name} has no Triton expression")
        return rule if isinstance(rule, str) else rule(eqn)

    def cpp_lowering(self, eqn) -> str | Unsupported:
        """The C++ expression template for a pointwise equation, or why there is none."""
        rule = self.cpp
        if rule is None:
            return Unsupported(f"{self.name} has no C++ expression")
        return rule if isinstance(rule, str) else rule(eqn)

    def __repr__(self) -> str:
        return self.name


REGISTRY: dict[str, Primitive] = {}
