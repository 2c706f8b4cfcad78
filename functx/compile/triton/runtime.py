"""Loading and launching kernels.

A kernel's module source (header + kernel) is hashed; modules are cached in memory and on
disk ($FUNCTX_CACHE_DIR, default ~/.cache/functx/triton) — Triton needs a real file to read
a kernel's source. Whether kernels are compiled or interpreted is fixed for the process
when Triton is imported (TRITON_INTERPRET=1: Triton's own library functions, tl.sum etc.,
are then interpreter functions). Interpreted kernels import a torch-backed libdevice;
compiled ones have their launch configuration autotuned over a short list.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
import tempfile
import threading

import triton

HEADER_GPU = ("import triton\nimport triton.language as tl\n"
              "from triton.language.extra import libdevice\n\n\n")
HEADER_INTERPRET = ("import triton\nimport triton.language as tl\n"
                    "from functx.compile.triton import interpreter_libdevice as libdevice\n\n\n")

_modules: dict = {}
_lock = threading.Lock()


def interpreting() -> bool:
    """Was Triton imported in interpreter mode (TRITON_INTERPRET=1)?"""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(tl.sum, InterpretedFunction)


def check_mode(device_type: str) -> bool:
    """The mode kernels for this device run in; a clear error where they can't run."""
    interpret = interpreting()
    if device_type != "cuda" and not interpret:
        raise RuntimeError("functx: the Triton backend runs CPU tensors only in the Triton interpreter; "
                           "set TRITON_INTERPRET=1 before triton is imported (or use backend='eager')")
    return interpret


def cache_dir() -> str:
    d = os.environ.get("FUNCTX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "functx")
    return os.path.join(d, "triton")


def module_source(kernel_source: str, interpret: bool) -> str:
    return (HEADER_INTERPRET if interpret else HEADER_GPU) + kernel_source


@contextlib.contextmanager
def _interpret_env(interpret: bool):
    # @triton.jit picks interpreter or compiler when the module is executed.
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old


def load_module(source: str, interpret: bool):
    """Import a module of kernels from its source, cached by the source's hash."""
    key = hashlib.sha256(source.encode()).hexdigest()
    with _lock:
        mod = _modules.get((key, interpret))
        if mod is not None:
            return mod
        directory = os.path.join(cache_dir(), key[:2])
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"k{key[:40]}.py")
        if not os.path.exists(path):
            fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write(source)
            os.replace(tmp, path)
        name = f"functx_kernels_{key[:16]}_{int(interpret)}"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        with _interpret_env(interpret):
            spec.loader.exec_module(mod)
        sys.modules[name] = mod
        _modules[(key, interpret)] = mod
        return mod


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def configs_for(kind: str, xnumel: int, rnumel: int, interpret: bool) -> list[dict]:
    """Candidate launch configurations: {"XBLOCK", ["RBLOCK"], "num_warps"}."""
    if kind == "pointwise":
        if interpret:   # few, large programs: the interpreter pays per program
            return [{"XBLOCK": min(next_pow2(xnumel), 4096)}]
        cands = [(1024, 4), (2048, 8), (4096, 8), (512, 4)]
        return [{"XBLOCK": x, "num_warps": w} for x, w in cands if x <= max(next_pow2(xnumel), 512)]
    if kind == "persistent":
        r = next_pow2(rnumel)
        if interpret:
            return [{"XBLOCK": max(1, min(next_pow2(xnumel), 4096 // r)), "RBLOCK": r}]
        out = []
        for x in (1, 2, 4, 8, 16, 32, 64):
            if x * r <= 8192 and (x == 1 or x <= next_pow2(xnumel)):
                out.append({"XBLOCK": x, "RBLOCK": r, "num_warps": max(1, min(16, x * r // 256))})
        return out[-4:]
    # looped
    if interpret:
        r = min(next_pow2(rnumel), LOOPED_RBLOCK_INTERPRET)
        return [{"XBLOCK": max(1, min(next_pow2(xnumel), 4096 // r)), "RBLOCK": r}]
    cands = [(1, 2048, 8), (1, 1024, 4), (4, 512, 8), (8, 256, 4), (64, 64, 8)]
    return [{"XBLOCK": x, "RBLOCK": r, "num_warps": w} for x, r, w in cands if r <= next_pow2(rnumel)] or \
        [{"XBLOCK": 1, "RBLOCK": next_pow2(rnumel), "num_warps": 4}]


LOOPED_RBLOCK_INTERPRET = 256


class Launcher:
    """Calls a kernel over its grid; `kernel(*buffers, xnumel=..., rnumel=...)`.

    dynamic (jit's symbolic dims: the sizes are arguments, known only per call): the launch
    configuration is chosen per call from the sizes rounded up to powers of two (the first
    candidate of configs_for, no autotuning), and remembered per bucket; on a GPU Triton
    compiles the one kernel source once per block-size bucket."""

    def __init__(self, fn, kind: str, xnumel, rnumel, interpret: bool, dynamic: bool = False,
                 persistent=None, persistent_max: int = 0):
        self.kind = kind
        self.reduction = kind != "pointwise"
        self.interpret = interpret
        self.dynamic = dynamic
        if dynamic:
            self.fn, self.meta, self.num_warps = fn, None, None
            # a symbolic row length: the persistent variant for rows up to persistent_max
            self.persistent, self.persistent_max = persistent, persistent_max
            self._buckets: dict = {}
            return
        self.configs = configs_for(kind, xnumel, rnumel, interpret)
        if interpret or len(self.configs) == 1:
            meta = dict(self.configs[0])
            self.num_warps = meta.pop("num_warps", None)
            self.meta = meta
            self.fn = fn
        else:
            key = ["xnumel", "rnumel"] if self.reduction else ["xnumel"]
            cfgs = [triton.Config({k: v for k, v in c.items() if k != "num_warps"}, num_warps=c["num_warps"])
                    for c in self.configs]
            self.fn = triton.autotune(configs=cfgs, key=key)(fn)
            self.meta = None

    def __call__(self, *buffers, xnumel, rnumel=None):
        if xnumel == 0:
            return
        sizes = (xnumel, rnumel) if self.reduction else (xnumel,)
        if self.dynamic:
            persistent = self.persistent is not None and rnumel <= self.persistent_max
            kind, fn = ("persistent", self.persistent) if persistent else (self.kind, self.fn)
            bucket = (kind, next_pow2(xnumel), next_pow2(rnumel or 1))
            meta = self._buckets.get(bucket)
            if meta is None:
                meta = self._buckets[bucket] = dict(configs_for(kind, *bucket[1:], self.interpret)[0])
            meta = dict(meta)
            num_warps = meta.pop("num_warps", None)
            extra = {} if self.interpret or num_warps is None else {"num_warps": num_warps}
            fn[(triton.cdiv(xnumel, meta["XBLOCK"]),)](*buffers, *sizes, **meta, **extra)
            return
        if self.meta is not None:
            grid = (triton.cdiv(xnumel, self.meta["XBLOCK"]),)
            extra = {} if self.interpret or self.num_warps is None else {"num_warps": self.num_warps}
            self.fn[grid](*buffers, *sizes, **self.meta, **extra)
        else:
            self.fn[lambda meta: (triton.cdiv(xnumel, meta["XBLOCK"]),)](*buffers, *sizes)
