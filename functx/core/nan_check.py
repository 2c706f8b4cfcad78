"""debug_nans: raise at the first primitive whose output holds a NaN (or an inf).

`STATE.on` is the one switch. When it is off every check site costs one attribute read:
EvalTrace after an impl, JVPTrace before a jvp rule, GraphTrace when it records an
equation, backward_pass before a transpose rule.

When it is on:
  * eager transforms check every impl's output as it is computed (EvalTrace);
  * the error names what was being computed: the primal, a tangent (inside a JVP rule) or a
    cotangent (inside a transpose rule: the backward pass); rule frames form a thread-local
    stack (`computing`), pushed by JVPTrace and backward_pass;
  * traces record the user's source line and that phase on every equation (`Eqn.source`),
    so the backward pass and jit-compiled code can name the line they came from.
"""
from __future__ import annotations

import contextlib
import threading

import torch

from .errors import FunctxError, user_frame_summary


class DebugNaNsState:
    """on: checks run; infs: an inf counts as bad too (attention masks use -inf on purpose;
    debug_nans(True, infs=False) lets them through)."""
    on = False
    infs = True


STATE = DebugNaNsState()


class FloatingPointNaNError(FloatingPointError, FunctxError):
    """debug_nans found a NaN or inf. .primitive, .phase and .source say where."""

    def __init__(self, message, primitive, phase, source):
        super().__init__(message)
        self.primitive, self.phase, self.source = primitive, phase, source


class _Rules(threading.local):
    def __init__(self):
        self.stack = []          # [(phase, primitive name, source or None)], outermost first


_rules = _Rules()


@contextlib.contextmanager
def computing(phase: str, prim_name: str, source=None):
    """A rule is running: phase 'tangent' (prim's JVP rule) or 'cotangent' (its transpose
    rule); source: the (phase, line) recorded on the equation being transposed."""
    _rules.stack.append((phase, prim_name, source))
    try:
        yield
    finally:
        _rules.stack.pop()


_RULE = {"tangent": "the JVP rule of", "cotangent": "the transpose rule of"}


def current_phase() -> str:
    """'primal computation', or the rule frames being run, innermost last."""
    if not _rules.stack:
        return "primal computation"
    parts = [f"{phase} computation ({_RULE[phase]} {name})" for phase, name, _ in _rules.stack]
    return " inside ".join(reversed(parts))


def current_source() -> tuple:
    """(phase, user line) for what is being computed now: an equation being transposed keeps
    the line its forward computation came from."""
    line = None
    for _, _, source in reversed(_rules.stack):
        if source is not None:
            line = source[1]
            break
    return current_phase(), line if line is not None else user_frame_summary()


def bad_kind(t) -> str | None:
    """'nan' or 'inf' if the tensor holds one (and that counts as bad), else None."""
    if not isinstance(t, torch.Tensor) or not (t.dtype.is_floating_point or t.dtype.is_complex):
        return None
    if STATE.infs:
        if torch.isfinite(t).all():       # one reduction in the common case
            return None
        return "nan" if torch.isnan(t).any() else "inf"
    return "nan" if torch.isnan(t).any() else None


def raise_bad(kind: str, prim_name: str, source: tuple, where: str = ""):
    phase, line = source
    raise FloatingPointNaNError(
        f"functx.debug_nans: {kind} in the output of primitive '{prim_name}' during the {phase}"
        f"{where}, from this line:\n{line}\n(debug_nans raises at the first primitive whose output "
        "has a NaN" + (" or inf" if STATE.infs else "") + "; turn it off with functx.debug_nans(False).)",
        prim_name, phase, line)


def check_outputs(prim, out) -> None:
    """Eager check of an impl's result (EvalTrace), when STATE.on."""
    outs = out if prim.multiple_results else (out,)
    for o in outs:
        kind = bad_kind(o)
        if kind is not None:
            raise_bad(kind, prim.name, current_source())
