"""The front end: ordinary PyTorch code runs on TracerTensors and becomes primitives."""
from .tensor import TracerTensor, wrap, wrap_input, wrap_tree  # noqa: F401
from .functionalize import unwrap, unwrap_tree  # noqa: F401
from . import dispatch  # noqa: F401
from . import function_units  # noqa: F401  (installs TracerTensor's whole-function units)
from .lowerings import (activations, creation, elementwise, indexing, linalg, nn, norms, pooling,  # noqa: F401
                        reductions, resample, rnn, special, torch_prims, views)        # (fill the tables)
from .fallback import record_fallbacks  # noqa: F401
from .rewrites import mark_hessian, record_rewrites  # noqa: F401
