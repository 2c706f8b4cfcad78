"""Errors users see. Each names what went wrong and what to do instead."""
import os
import traceback


class FunctxError(Exception):
    """Base class for functx errors."""


class ConcretizationError(FunctxError):
    """A traced (abstract) value was used where Python needs a concrete one."""


class UnboundAxisError(FunctxError):
    pass


class MissingRuleError(FunctxError, NotImplementedError):
    pass


_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_frame_summary() -> str:
    """The innermost stack frame outside functx and torch: the user's line."""
    import torch
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
    for frame in reversed(traceback.extract_stack()):
        fname = os.path.abspath(frame.filename)
        if fname.startswith(_PKG_DIR + os.sep) or fname.startswith(torch_dir + os.sep):
            continue
        if "importlib" in fname or frame.filename.startswith("<frozen"):
            continue
        return f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}\n    {frame.line}'
    return "  (no user frame found)"
