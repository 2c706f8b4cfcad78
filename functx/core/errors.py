"""Errors users see. Each names what went wrong and what to do instead."""
import linecache
import os
import sys
import threading
import traceback
import types

import torch


class FunctxError(Exception):
    """Base class for functx errors."""


class ConcretizationError(FunctxError, RuntimeError):
    """A traced (abstract) value was used where Python needs a concrete one (a RuntimeError, as
    torch.func raises for .item() or data-dependent control flow under vmap)."""


class PlainWriteError(FunctxError, RuntimeError):
    """A traced function wrote in place into a plain tensor it does not own (a closed-over
    buffer or global, a plain tensor it made, or vmap's argument with in_axes None), which
    functx cannot track. A RuntimeError too: torch.func raises RuntimeError for writing a
    batched value into an unbatched tensor."""


class _Unbatched(threading.local):
    """The arguments of each running eager vmap (in this thread), innermost last: a write of a
    batched value into one it got with in_axes None names that argument. Entries of `stack`:
    (leaves, axes, describe, treedef, fn) where describe(k, treedef, fn) names leaves[k]
    (worked out only when a message needs it: vmap pushes its flat arguments as they are, one
    tuple a call)."""
    def __init__(self):
        self.stack = []


UNBATCHED_ARGS = _Unbatched()


def unbatched_argument(t) -> str | None:
    """'argument 1 (in_axes None)' when t (or, for a plain tensor, a view of it) is a tensor a
    running vmap got with in_axes None, else None."""
    stack = UNBATCHED_ARGS.stack
    if not stack or not isinstance(t, torch.Tensor):
        return None
    ptr = _storage_ptr(t)
    for leaves, axes, describe, treedef, fn in reversed(stack):
        for k, (a, ax) in enumerate(zip(leaves, axes)):
            if ax is None and isinstance(a, torch.Tensor) and (a is t or (ptr and _storage_ptr(a) == ptr)):
                return describe(k, treedef, fn)
    return None


def _storage_ptr(t) -> int:
    try:
        return t.untyped_storage().data_ptr() if t.layout == torch.strided else 0
    except (RuntimeError, NotImplementedError):
        return 0


def unbatched_write_message(func, t) -> str | None:
    """The message for a write of a batched value into vmap's in_axes-None argument t, or None
    when t is not one."""
    name = unbatched_argument(t)
    if name is None:
        return None
    return (f"functx.vmap: {func} writes a batched value in place into {name}, here:\n"
            f"{user_frame_summary()}\nThat tensor holds one value for the whole batch, so it cannot "
            "hold a different value per example (torch.func raises a RuntimeError here too). Give "
            "it a batch axis (in_axes 0; for a tensor shared by the batch, pass x.expand(n, *x.shape)"
            ".clone()), or compute the result out of place (y = x + v instead of x.add_(v)).")


class OuterWriteError(FunctxError, RuntimeError):
    """Inside an inner transform, an in-place op wrote a value that depends on that transform's
    inputs into a tensor of an enclosing transform (or from outside every transform): the
    tensor lives at the outer level, where the inner transform's values do not exist.
    torch.func raises a RuntimeError here too."""


class UsageError(FunctxError, TypeError, ValueError, RuntimeError):
    """A transform was called with arguments, or f returned outputs, of the wrong structure
    (grad's f not returning a scalar, has_aux's f not a pair, jvp's tangents not matching its
    primals, vjp's cotangents not matching the output, a non-tensor output). JAX raises
    TypeError or ValueError here, torch.func RuntimeError: this is each, so code written for
    either catches it."""


class AxisError(FunctxError, ValueError, IndexError):
    """vmap's in_axes / out_axes names a dim a tensor does not have (torch.func raises
    ValueError for in_dims, IndexError for out_dims)."""


class ArgnumsError(UsageError):
    """A bad argnums (not an int or a non-empty tuple of distinct ints naming positional
    arguments)."""


class ChunkSizeError(FunctxError, ValueError, TypeError):
    """chunk_size is not None or a positive int (torch.func raises ValueError)."""


def check_chunk_size(chunk_size, who) -> None:
    if chunk_size is not None and (type(chunk_size) is not int or chunk_size < 1):
        raise ChunkSizeError(f"{who}: chunk_size must be None or a positive int, got {chunk_size!r}")


class BatchingError(FunctxError, RuntimeError):
    """vmap cannot batch what f does (torch.func raises RuntimeError there too)."""


class TorchAutogradError(FunctxError, RuntimeError):
    """torch.autograd (backward, autograd.grad, autograd.functional) on a traced value: torch.func
    raises RuntimeError there too (save autograd.grad under its grad levels)."""


class RandomnessError(FunctxError, RuntimeError):
    """A random op under vmap with randomness='error' (torch.func raises RuntimeError)."""


class UnboundAxisError(FunctxError):
    pass


class MissingRuleError(FunctxError, NotImplementedError):
    pass


_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_line() -> str | None:
    """The innermost stack frame outside functx and torch as `file:line: code`, or None."""
    f = sys._getframe(1)
    while f is not None:
        name = f.f_code.co_filename
        if not (_is_internal(name) or name.startswith("<frozen") or "importlib" in name):
            return f"{name}:{f.f_lineno}: {linecache.getline(name, f.f_lineno).strip()}"
        f = f.f_back
    return None


def user_line_of(error) -> str | None:
    """The innermost frame of an exception's traceback outside functx and torch, as
    `file:line: code` (the user's line that was running when it was raised), or None."""
    found = None
    for frame in traceback.extract_tb(error.__traceback__):
        name = frame.filename
        if not (_is_internal(name) or name.startswith("<frozen") or "importlib" in name):
            found = f"{name}:{frame.lineno}: {(frame.line or '').strip()}"
    return found


def user_frame_summary() -> str:
    """The innermost stack frame outside functx and torch: the user's line. A walk over the
    frames (no formatting of the whole stack): debug_nans records it on every equation."""
    f = sys._getframe(1)
    while f is not None:
        name = f.f_code.co_filename
        if not (_is_internal(name) or name.startswith("<frozen") or "importlib" in name):
            line = linecache.getline(name, f.f_lineno).strip()
            return f'  File "{name}", line {f.f_lineno}, in {f.f_code.co_name}\n    {line}'
        f = f.f_back
    return "  (no user frame found)"


_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
# What helps when a value is needed by PyTorch library code (not by the user's own line):
# torch path prefix -> advice; {where} is the library function.
_LIBRARY_HINTS = (
    ("distributions" + os.sep,
     "The value was needed by torch.distributions' argument validation ({where}): with "
     "validate_args on, a distribution checks its constraints with Python bool() on tensor values. "
     "Turn the checks off for transformed code: pass validate_args=False to the distribution, or "
     "call torch.distributions.Distribution.set_default_validate_args(False) once beforehand (and "
     "validate the arguments outside the transform if you need to)."),
)


def library_hint() -> str:
    """Advice for a value needed inside PyTorch library code the user called (the innermost
    torch frame below the user's line), or ''."""
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
    for frame in reversed(traceback.extract_stack()):
        fname = os.path.abspath(frame.filename)
        if fname.startswith(_PKG_DIR + os.sep):
            continue
        if not fname.startswith(torch_dir):
            return ""           # the user's own code: the generic advice applies
        rel = fname[len(torch_dir):]
        for prefix, hint in _LIBRARY_HINTS:
            if rel.startswith(prefix):
                return "\n" + hint.format(where=f"torch/{rel}, in {frame.name}")
    return ""


def _is_internal(filename: str) -> bool:
    if filename.startswith("<functx"):
        return True
    if filename.startswith("<"):
        return False
    fname = os.path.abspath(filename)
    return fname.startswith(_PKG_DIR + os.sep) or fname.startswith(_TORCH_DIR + os.sep)


def filter_traceback(tb):
    """tb without functx's (and torch's) own frames, so a user-facing error shows the user's
    calls and lines only. FUNCTX_TRACEBACK_FILTERING=off keeps every frame."""
    if os.environ.get("FUNCTX_TRACEBACK_FILTERING", "on").lower() in ("off", "0", "false", "no"):
        return tb
    kept = []
    while tb is not None:
        if not _is_internal(tb.tb_frame.f_code.co_filename):
            kept.append(tb)
        tb = tb.tb_next
    out = None
    for t in reversed(kept):
        out = types.TracebackType(out, t.tb_frame, t.tb_lasti, t.tb_lineno)
    return out


class user_facing:
    """Context manager at an API boundary: a FunctxError leaving it carries a traceback
    without functx's internal frames (the message already names the user's line)."""

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        if exc is not None and isinstance(exc, FunctxError):
            exc.__traceback__ = filter_traceback(tb)     # re-raised as it is, frames trimmed
        return False
