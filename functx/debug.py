"""functx.debug: see values inside transforms and jit (JAX's jax.debug, jax_debug_nans).

    functx.debug.print("x = {}, loss = {l}", x, l=loss)   # every call, with concrete values
    functx.debug.callback(fn, *args)                      # fn(*args) on concrete values
    functx.debug.breakpoint()                             # pdb with the caller's values
    with functx.debug_nans(): ...                         # raise at the first NaN/inf

Each runs when the program runs, not when it is traced: under jit on every call of the
compiled function (both backends), under grad on the primal values, under vmap once per
example (JAX's choice), in program order. They rest on one primitive, debug_callback
(prims/debug.py), which no compiler pass removes. docs/debugging.md has a worked example.
"""
from __future__ import annotations

import builtins
import keyword
import linecache
import sys

from .core.nan_check import STATE as _NANS, FloatingPointNaNError
from .frontend import TracerTensor, unwrap
from .prims import debug_callback
from .tree_util import tree_flatten, tree_unflatten

__all__ = ["print", "callback", "breakpoint", "debug_nans", "FloatingPointNaNError"]


def callback(fn, *args, **kwargs):
    """Call fn(*args, **kwargs) with concrete values each time the program runs (JAX's
    jax.debug.callback). args/kwargs are pytrees; their traced tensors arrive as plain
    tensors (the primal under grad, one example at a time under vmap); everything else is
    passed as it was when the function was traced. fn's return value is ignored."""
    if not callable(fn):
        raise TypeError(f"functx.debug.callback: fn must be callable, got {type(fn).__name__}")
    leaves, treedef = tree_flatten((args, kwargs))
    traced = [i for i, leaf in enumerate(leaves) if isinstance(leaf, TracerTensor)]

    def run(*values):
        full = list(leaves)
        for i, v in zip(traced, values):
            full[i] = v
        call_args, call_kwargs = tree_unflatten(treedef, full)
        fn(*call_args, **call_kwargs)

    run.__name__ = getattr(fn, "__name__", "callback")       # what explain and graphs print
    debug_callback(run, *[unwrap(leaves[i]) for i in traced])


def print(fmt: str, *args, **kwargs):
    """Print fmt.format(*args, **kwargs) with concrete values each time the program runs
    (JAX's jax.debug.print): under jit on every call, under grad the primal values, under
    vmap one line per example."""
    if not isinstance(fmt, str):
        raise TypeError(f"functx.debug.print: fmt must be a format string, got {type(fmt).__name__}")

    def format_and_print(*a, **k):
        builtins.print(fmt.format(*a, **k))

    format_and_print.__name__ = "print"
    callback(format_and_print, *args, **kwargs)


def breakpoint(*, debugger=None):
    """Stop in a debugger with the caller's local variables as concrete values, each time the
    program runs (JAX's jax.debug.breakpoint): eagerly, under grad (primals), under vmap (once
    per example) and under jit (the compiled code calls back to the host).

    debugger=None enters `sys.breakpointhook()` (pdb unless PYTHONBREAKPOINT says otherwise)
    in a frame whose locals are the caller's variables, so `p x` shows x's values; otherwise
    debugger(locals_dict) is called instead (for tests, or another UI)."""
    if debugger is not None and not callable(debugger):
        raise TypeError(f"functx.debug.breakpoint: debugger must be callable, got {type(debugger).__name__}")
    frame = sys._getframe(1)
    names = [n for n in frame.f_locals if n.isidentifier() and not keyword.iskeyword(n)]
    where = (frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)
    values = {n: frame.f_locals[n] for n in names}

    def enter(concrete):
        if debugger is not None:
            debugger(concrete)
        else:
            _debugger_frame(where, list(concrete))(**concrete)

    enter.__name__ = "breakpoint"
    callback(enter, values)


def _debugger_frame(where, names):
    """A function whose frame holds `names` as locals and calls sys.breakpointhook: pdb
    stopped there shows the traced function's variables with their concrete values."""
    filename, lineno, fn_name = where
    code_name = f"<functx.debug.breakpoint {fn_name}>"
    source = (f"def {fn_name}_at_line_{lineno}({', '.join(names)}):\n"
              f"    # functx.debug.breakpoint() in {fn_name} ({filename}, line {lineno})\n"
              "    __import__('sys').breakpointhook()\n"
              "    return None\n")
    linecache.cache[code_name] = (len(source), None, source.splitlines(True), code_name)
    namespace: dict = {}
    exec(compile(source, code_name, "exec"), namespace)
    return namespace[f"{fn_name}_at_line_{lineno}"]


class debug_nans:
    """Raise FloatingPointNaNError at the first primitive whose output has a NaN (or inf),
    naming the primitive, what was being computed (primal, tangent or cotangent) and the
    user's line (JAX's jax_debug_nans).

    functx.debug_nans(True) turns it on (False off); `with functx.debug_nans():` turns it on
    for a block and restores the previous setting. infs=False checks NaNs only (attention
    masks use -inf on purpose). It covers eager transforms and jit: a function jitted while
    it is on is traced and compiled again, with a check after every operation (the flag is
    part of jit's cache key); off, functx pays one flag check per operation."""

    def __init__(self, enabled: bool = True, *, infs: bool = True):
        for name, value in (("enabled", enabled), ("infs", infs)):
            if not isinstance(value, bool):
                raise TypeError(f"functx.debug_nans: {name} must be True or False, got {value!r}")
        self.previous = (_NANS.on, _NANS.infs)
        _NANS.on, _NANS.infs = enabled, infs

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _NANS.on, _NANS.infs = self.previous
        return False
