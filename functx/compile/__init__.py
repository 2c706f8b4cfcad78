"""The compiler: tracing (make_graph), the pass pipeline, backends (eager, triton), jit
and explain."""
from .jit import jit, JitFunction  # noqa: F401
from ..frontend.staging import make_graph  # noqa: F401
from .explain import explain, Explanation  # noqa: F401
from .eager import to_python_source  # noqa: F401
from .buffer_reuse import release_buffers  # noqa: F401
