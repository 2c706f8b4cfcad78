"""Primitive: a named operation and the table of its rules.

Each primitive is defined once in functx/prims/, with every rule beside it:
  abstract_eval(*types, **params) -> TensorType | list   (Python scalars stand for literals)
  impl(*tensors, **params)         -> Tensor | list        (eager torch)
  jvp(primals, tangents, **params) -> (primal_out, tangent_out)   (tangents may be Zero)
  transpose(cts, *args, **params)  -> list of cotangents for UndefinedPrimal args (linear prims)
  batch(axis, args, dims, **params)-> (out, out_dim)
  emit(in_srcs, params)            -> a PyTorch source expression (eager codegen)
  lowering                         -> how the Triton backend compiles it (see functx/compile)
"""
from __future__ import annotations

from .trace import bind

# How the fusion compiler treats a primitive.
POINTWISE = "pointwise"
REDUCTION = "reduction"
VIEW = "view"
EXTERN = "extern"


class Primitive:
    def __init__(self, name: str, *, multiple_results: bool = False, effectful: bool = False):
        self.name = name
        self.multiple_results = multiple_results
        self.effectful = effectful        # never CSE'd, folded or removed (random numbers)
        self.commutative = False          # f(x, y) == f(y, x): CSE treats both orders as one
        self.abstract_eval = None
        self.impl = None
        self.jvp = None
        self.transpose = None
        self.batch = None
        self.emit = None
        self.kind = EXTERN                # POINTWISE / REDUCTION / VIEW / EXTERN
        self.triton = None                # for pointwise: fn(*arg_exprs, **params) -> Triton expr
        # Structural primitives holding Python callables (custom_jvp_call, custom_vjp_call):
        # fn(*args, **params) run at a GraphTrace in place of recording an equation, so jit
        # compiles their bodies; only transforms above the graph trace need their rules.
        self.inline = None
        REGISTRY[name] = self

    def bind(self, *args, **params):
        return bind(self, args, params)

    __call__ = bind

    def __repr__(self) -> str:
        return self.name


REGISTRY: dict[str, Primitive] = {}
