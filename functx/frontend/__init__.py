"""The front end: ordinary PyTorch code runs on TracerTensors and becomes primitives."""
from .tensor import TracerTensor, wrap, unwrap, wrap_tree, unwrap_tree  # noqa: F401
from . import dispatch, aten  # noqa: F401  (aten fills the lowering table)
from .fallback import record_fallbacks  # noqa: F401
