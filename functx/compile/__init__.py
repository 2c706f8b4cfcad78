"""The compiler: jit, make_graph, explain, passes and backends (eager, triton)."""
from .jit import jit, make_graph, explain, JitFunction, Explanation  # noqa: F401
from .eager import to_python_source  # noqa: F401
