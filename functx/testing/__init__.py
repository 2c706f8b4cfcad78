"""functx.testing: derivative checkers and differential checks against eager PyTorch.

- `check_grads`, `check_transforms` (gradcheck.py): derivatives against finite differences.
- `check_against_torch`, `assert_same`, `check_vmap`, `check_derivatives` (differential.py):
  jit / vmap / vjp / jvp against eager PyTorch, a Python loop and torch.func.
- `functx.testing.strategies` (import it explicitly; it needs hypothesis): `tensors`,
  `special_values`, `programs` (random printable PyTorch programs), `vmap_cases`,
  `invalid_programs`, for property-based tests of your own functions.
"""
from .differential import assert_same, check_against_torch, check_derivatives, check_vmap
from .gradcheck import (TransformReport, check_grads, check_jvp, check_transforms, check_vjp,
                        default_tolerances, numerical_jvp)
from .programs import Case, Program

__all__ = ["check_grads", "check_jvp", "check_vjp", "check_transforms", "TransformReport",
           "numerical_jvp", "default_tolerances", "check_against_torch", "assert_same", "check_vmap",
           "check_derivatives", "Program", "Case"]
