"""Transforms: jvp, vjp/grad (linearize + transpose), vmap, Jacobians."""
from .api import (grad, value_and_grad, vjp, jvp, linearize, linear_transpose, jacfwd, jacrev,  # noqa: F401
                  vmap)
from .collapsed import hessian  # noqa: F401  (api's, plus the trace(hessian) -> laplacian rewrite under jit)
from .custom import custom_jvp, custom_vjp  # noqa: F401
from . import autograd_function  # noqa: F401  (torch.autograd.Function.apply honours functx transforms)
from . import hooks  # noqa: F401  (Tensor.register_hook inside reverse-mode transforms)
