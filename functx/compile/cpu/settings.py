"""The CPU backend's settings: `functx.compile.cpu.CONFIG`. A field left at None reads its
environment variable at each use (so a test or a launcher script can set it); assign the
field to fix it for the process.

default_backend  what `functx.jit(f)` (backend=None) compiles for CPU tensors: "cpu" (the
                 tiered backend: eager PyTorch code first, fused C++ kernels once built) or
                 "eager" (generated PyTorch code only: the same bits on every call and in
                 every process). $FUNCTX_CPU_BACKEND, default "cpu".
fused            whether the cpu backend builds fused tiers at all; False keeps every
                 function on its eager tier (the test suite's setting: no g++ per jit test).
                 $FUNCTX_CPU_FUSED=0 turns it off; default on.
hot_calls        the eager-tier call that starts the background build (functions called
                 once, the common case in tests and scripts, never pay for g++).
                 $FUNCTX_CPU_HOT_CALLS, default 2.
block            build the fused tier before a function's first call: every call fused, so
                 the same bits on every call and in every process (the first call of a
                 graph never compiled on this machine waits for g++). $FUNCTX_CPU_BLOCK=1;
                 default off.
"""
from __future__ import annotations

import dataclasses
import os

BACKENDS = ("cpu", "eager")


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.lower() not in ("0", "false", "no", "off")


@dataclasses.dataclass
class CpuConfig:
    default_backend: str | None = None
    fused: bool | None = None
    hot_calls: int | None = None
    block: bool | None = None


CONFIG = CpuConfig()


def default_backend() -> str:
    name = CONFIG.default_backend or os.environ.get("FUNCTX_CPU_BACKEND") or "cpu"
    if name not in BACKENDS:
        raise ValueError(f"functx: the default CPU backend must be one of {BACKENDS}, got {name!r} "
                         "(functx.compile.cpu.CONFIG.default_backend or $FUNCTX_CPU_BACKEND)")
    return name


def fused_enabled() -> bool:
    return CONFIG.fused if CONFIG.fused is not None else _flag(os.environ.get("FUNCTX_CPU_FUSED"), True)


def hot_calls() -> int:
    n = CONFIG.hot_calls if CONFIG.hot_calls is not None else int(os.environ.get("FUNCTX_CPU_HOT_CALLS") or 2)
    return max(1, n)


def blocking() -> bool:
    return CONFIG.block if CONFIG.block is not None else _flag(os.environ.get("FUNCTX_CPU_BLOCK"), False)
