"""Compiling C++ kernels into a shared library, cached on disk, loaded with ctypes.

The compiler is $FUNCTX_CXX (default g++). A library is keyed by the SHA-256 of its source,
the compiler's path and version, the flags and this CPU's identity (-march=native code must
not run on another CPU sharing the cache); it lives in $FUNCTX_CACHE_DIR/cpu (default
~/.cache/functx/cpu) and is written atomically (compiled to a temporary name, then renamed),
so processes sharing the directory never load half a file. The kernels include no torch
headers, so a compile takes a fraction of a second, not Inductor's seconds.

-ffast-math stays off: NaN, inf and -0.0 must behave as in torch. -fno-math-errno only lets
sqrt inline (errno is never read); -fno-trapping-math lets g++ compute both sides of a
select (`c ? a / b : x`) and so vectorize loops that hold one (no kernel reads the
floating-point exception flags; results are unchanged; torch's own kernels are built with it);
-ffp-contract=off keeps a*b+c two roundings, as torch's kernels compute it; -fwrapv makes
signed overflow wrap, as torch's integers do.
-fno-tree-slp-vectorize: g++ 12.2's straight-line (SLP) vectorizer, with -fwrapv and
AVX2, miscompiles a short int64 max reduction over compared lanes (it returned 0 for
max(int(2.0 < 3 & 12 < 40), int(3.65 < 3 & 10 < 40)); a batched while_loop's predicate);
loops still vectorize (tests/test_cpu_default.py keeps the case).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading

FLAGS = ("-O3", "-march=native", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-fwrapv",
         "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off", "-fno-tree-slp-vectorize")

_libraries: dict = {}
_lock = threading.Lock()


def _reset_lock_in_child():
    """A fork (DataLoader workers) while another thread compiles would copy this lock held
    by a thread the child does not have: every build in the child would wait forever."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_lock_in_child)


class CompilerUnavailable(RuntimeError):
    """No working C++ compiler: the CPU backend stays on its eager tier."""


class NotCached(RuntimeError):
    """load_library(compile=False): the library is not in the disk cache."""


def compiler() -> str:
    """The compiler's path, or CompilerUnavailable saying which name was looked for."""
    name = os.environ.get("FUNCTX_CXX", "g++")
    path = shutil.which(name)
    if path is None:
        raise CompilerUnavailable(f"C++ compiler {name!r} not found (set FUNCTX_CXX to a g++ or clang++)")
    return path


@functools.lru_cache(maxsize=8)
def _compiler_identity(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except OSError as err:
        raise CompilerUnavailable(f"C++ compiler {path!r} does not run: {err}") from None
    return out.stdout.splitlines()[0] if out.stdout else path


@functools.lru_cache(maxsize=1)
def _cpu_identity() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = [l for l in f if l.startswith(("model name", "flags"))][:2]
    except OSError:
        lines = []
    return platform.machine() + "".join(lines)


def cache_dir() -> str:
    d = os.environ.get("FUNCTX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "functx")
    return os.path.join(d, "cpu")


def library_key(source: str, cxx: str, link: tuple = ()) -> str:
    text = "\0".join([source, cxx, _compiler_identity(cxx), " ".join(FLAGS + link), _cpu_identity()])
    return hashlib.sha256(text.encode()).hexdigest()


def load_library(source: str, link: tuple = (), compile: bool = True):
    """(ctypes library, whether it was compiled now (False: memory or disk cache hit));
    link: libraries to link (-lmvec); compile=False raises NotCached instead of compiling."""
    cxx = compiler()
    key = library_key(source, cxx, link)
    path = os.path.join(cache_dir(), key[:2], f"k{key[:40]}.so")
    with _lock:
        lib = _libraries.get(path)
        if lib is not None:
            return lib, False
    compiled = False
    if not os.path.exists(path):
        if not compile:
            raise NotCached(path)
        _compile(cxx, source, path, link)
        compiled = True
    lib = ctypes.CDLL(path)
    with _lock:
        _libraries.setdefault(path, lib)
        return _libraries[path], compiled


def _compile(cxx, source, path, link):
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, src_path = tempfile.mkstemp(dir=directory, suffix=".cpp")
    with os.fdopen(fd, "w") as f:
        f.write(source)
    tmp_so = src_path[:-4] + ".so.tmp"
    try:
        proc = subprocess.run([cxx, *FLAGS, src_path, "-o", tmp_so, *link], capture_output=True, text=True,
                              timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"functx cpu: {cxx} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        os.replace(tmp_so, path)
    finally:
        for p in (src_path, tmp_so):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


def kernel_function(lib, name: str, nargs: int, sizes=()):
    """The kernel `name` as a ctypes function of nargs data pointers, its size arguments (C
    types: "int64_t" or "double"; jit's symbolic dims) and a thread count."""
    fn = getattr(lib, name)
    size_types = [ctypes.c_double if t == "double" else ctypes.c_int64 for t in sizes]
    fn.argtypes = [ctypes.c_void_p] * nargs + size_types + [ctypes.c_int]
    fn.restype = None
    return fn


# ---------------------------------------------------------------- graph -> library index
# A process that meets a graph whose library some process built before serves the fused
# tier from the first call. Generating the C++ source (the fusion scheduler) costs 5-200 ms,
# too much to spend on every first call just to look the library up, so the cache also
# maps a hash of the optimized graph's text to what its build gave: the library's key, or
# "none" (nothing to fuse). A stale entry (functx's code generator changed) costs one
# source generation, after which the library key is checked as always.

GRAPH_INDEX_VERSION = "1"


def graph_key(graph_text: str) -> str:
    return hashlib.sha256(f"{GRAPH_INDEX_VERSION}\0{graph_text}".encode()).hexdigest()


def _graph_entry_path(key: str) -> str:
    return os.path.join(cache_dir(), "graphs", key[:2], f"g{key[:40]}")


def read_graph_entry(key: str) -> str | None:
    """What the build of this graph gave in any process ("none", a library key), or None."""
    try:
        with open(_graph_entry_path(key)) as f:
            return f.read().strip() or None
    except OSError:
        return None


def write_graph_entry(key: str, value: str) -> None:
    path = _graph_entry_path(key)
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
        with os.fdopen(fd, "w") as f:
            f.write(value)
        os.replace(tmp, path)       # atomic: readers see the old entry or the new one
