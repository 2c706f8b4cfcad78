"""functx: JAX-level composable function transforms for PyTorch, with a fusion compiler.

    import functx
    per_sample_grads = functx.jit(functx.vmap(functx.grad(loss), in_axes=(None, 0, 0)))
"""
from torch.func import functional_call  # nn.Modules as functions of their parameters

from .core import Graph, TensorType, FunctxError, ConcretizationError
from .transforms import (grad, value_and_grad, vjp, jvp, linearize, linear_transpose, jacfwd, jacrev,
                         hessian, vmap)
from .tree_util import register_pytree_node, tree_flatten, tree_unflatten, tree_map
from .compile import jit, make_graph, explain, to_python_source
from .frontend import TracerTensor
from .lax import psum, pmean, pmax, pmin, all_gather, axis_index, stop_gradient
from . import lax, tree_util  # noqa: F401
from .transforms.custom import custom_jvp, custom_vjp
from .transforms.control_flow import cond, switch, while_loop, scan
from .transforms.control_flow import fori_loop, checkpoint, remat, checkpoint_name, checkpoint_policies
from . import testing  # noqa: F401  (functx.testing.check_grads / check_transforms)
from . import debug  # noqa: F401  (functx.debug.print / callback / breakpoint)
from .debug import debug_nans
from .transforms.jet import jet
from .transforms.collapsed import laplacian, divergence, taylor_operator
from . import func  # noqa: F401  (functx.func: torch.func's names and signatures, a drop-in)
from .transforms.spmd import spmd
from . import distributed  # noqa: F401  (functx.distributed.shard / gather for spmd's sharded values)

__version__ = "0.1.0"

__all__ = [
    "grad", "value_and_grad", "vjp", "jvp", "linearize", "linear_transpose", "jacfwd", "jacrev",
    "hessian", "vmap", "jit", "make_graph", "explain", "psum", "pmean", "pmax", "pmin", "all_gather",
    "axis_index", "stop_gradient", "functional_call", "register_pytree_node", "tree_flatten",
    "tree_unflatten", "tree_map", "to_python_source", "Graph", "TensorType", "FunctxError",
    "ConcretizationError", "TracerTensor", "custom_jvp", "custom_vjp", "cond", "switch", "while_loop", "scan",
    "debug", "debug_nans", "spmd", "fori_loop", "checkpoint", "remat", "checkpoint_name",
    "checkpoint_policies",
]
__all__ += ["jet", "laplacian", "divergence", "taylor_operator"]
