"""functx core: IR, types, primitives, traces. Imports nothing above it."""
from .types import TensorType
from .ir import Var, Literal, Eqn, Graph, GraphMeta, check_graph, drop_effects, has_effects, live_eqns, map_sub_graphs, sub_graphs
from .primitive import Primitive, REGISTRY, POINTWISE, REDUCTION, VIEW, EXTERN, STRUCTURAL, Unsupported
from .trace import (Trace, EvalTrace, Tracer, GraphTrace, GraphTracer, Zero, UndefinedPrimal,
                    bind, current_trace, set_current_trace, eval_graph, type_of, concrete, EVAL_TRACE)
from .errors import FunctxError, ConcretizationError, MissingRuleError, UnboundAxisError
