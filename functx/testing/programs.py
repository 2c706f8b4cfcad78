"""Random programs as printable Python: a `Program` is the source of one function of
tensors (straight-line PyTorch, one statement a line), a `Case` is a program with the
inputs it was generated for. `repr(case)` is a script that reproduces it, so a failing
property test prints the user-level code, not an internal op list."""
from __future__ import annotations

import math
import warnings

import torch

__all__ = ["Program", "Case", "tensor_literal", "run_eager"]

# What program source may name besides its arguments.
NAMESPACE = {"torch": torch, "F": torch.nn.functional, "nan": math.nan, "inf": math.inf}


def _number(v):
    if isinstance(v, bool):
        return repr(v)
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(v)


def tensor_literal(t: torch.Tensor) -> str:
    """Python source that rebuilds `t` exactly (values, shape, dtype; -0.0, nan and inf too)."""
    values = ", ".join(_number(v) for v in t.detach().cpu().reshape(-1).tolist())
    src = f"torch.tensor([{values}], dtype={t.dtype})"
    return src if t.dim() == 1 else f"{src}.reshape({tuple(t.shape)})"


class Program:
    """A straight-line function `program(x0, x1, ...)` given by its body lines; it returns
    the tuple of `outputs` (variable names). Calling it runs eager PyTorch."""

    def __init__(self, n_inputs: int, lines, outputs):
        self.n_inputs = n_inputs
        self.lines = tuple(lines)
        self.outputs = tuple(outputs)
        self._fn = None

    @property
    def arg_names(self):
        return [f"x{i}" for i in range(self.n_inputs)]

    @property
    def source(self) -> str:
        body = [f"    {line}" for line in self.lines]
        body.append(f"    return ({''.join(o + ', ' for o in self.outputs)})")
        return f"def program({', '.join(self.arg_names)}):\n" + "\n".join(body)

    @property
    def fn(self):
        """The program as a Python function (compiled once)."""
        if self._fn is None:
            scope = dict(NAMESPACE)
            exec(compile(self.source, "<functx.testing program>", "exec"), scope)
            self._fn = scope["program"]
        return self._fn

    def __call__(self, *args):
        return self.fn(*args)

    def __repr__(self):
        return self.source


class Case:
    """A program and the inputs it was generated for. `args()` gives fresh clones (programs
    may not write into their inputs, but a buggy transform might)."""

    def __init__(self, program: Program, inputs, note: str = ""):
        self.program = program
        self.inputs = tuple(inputs)
        self.note = note

    def args(self):
        return tuple(x.clone() for x in self.inputs)

    def __repr__(self):
        lines = ["", "import torch", "nan, inf = float('nan'), float('inf')", self.program.source]
        lines += [f"{name} = {tensor_literal(x)}" for name, x in zip(self.program.arg_names, self.inputs)]
        lines.append(f"program({', '.join(self.program.arg_names)})")
        if self.note:
            lines.append(f"# {self.note}")
        return "\n".join(lines)


def run_eager(program: Program, args):
    """Eager PyTorch's result, or the exception it raises (as a value)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return program(*args)
    except Exception as e:     # eager torch rejected the program: the caller compares raising
        return e
