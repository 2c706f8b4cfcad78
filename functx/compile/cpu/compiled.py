"""The CPU backend: fused C++ kernels (CppFused), served in tiers (CpuCompiled).

CppFused is the Triton backend's pipeline with a C++ ops handler: the same fusion groups
(compile/fusion), each group one C++ function (cpp_ops.py), all of a graph's kernels one
shared library (toolchain.py), and the same generated Python host wrapper, which runs
matmuls and other externs through torch and passes data pointers of contiguous tensors
to the kernels through ctypes.

CpuCompiled serves calls in tiers, so a first call never waits for a C++ compiler: calls
run the eager backend's generated PyTorch code at once; from the `hot_calls()`-th call a
background thread builds CppFused (a disk-cache hit when any process compiled the same
source before) and swaps its wrapper in when it is ready. A graph without kernels, or a
failed build (no compiler: $FUNCTX_CXX not found), stays on the eager tier, and explain's
report says which tier runs and why. FUNCTX_CPU_BLOCK=1 builds the fused tier before the
first call (benchmarks, tests); `wait_for_fused()` waits for every build in flight.
"""
from __future__ import annotations

import os
import threading
import warnings
import weakref

import torch

from ..compiled import Compiled
from ..eager import EagerCompiled
from ..fusion.compiled import FusedCompiled
from ..small_contractions import small_contractions
from .huge_pages import fresh, is_big
from .cpp_ops import CppOps, header, link_flags, lowerable, prefers_blocked
from .toolchain import CompilerUnavailable, kernel_function, load_library

_building: set = set()          # threads building a fused tier
_building_lock = threading.Lock()
_instances: "weakref.WeakSet" = weakref.WeakSet()     # every CpuCompiled, for the fork handler


def _after_fork_in_child():
    """A fork copies the locks as they are, possibly held by a thread the child does not
    have (a build in flight): fresh locks, no builds in flight. A function whose build was
    in flight at the fork stays on its eager tier in the child (its thread never finishes
    there), which is correct, only slower."""
    global _building, _building_lock
    _building, _building_lock = set(), threading.Lock()
    for c in list(_instances):
        c._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def hot_calls() -> int:
    """The eager-tier call that starts the fused build ($FUNCTX_CPU_HOT_CALLS, default 2:
    functions called once, the common case in tests and scripts, never pay for g++)."""
    return max(1, int(os.environ.get("FUNCTX_CPU_HOT_CALLS", "2")))


def blocking() -> bool:
    return os.environ.get("FUNCTX_CPU_BLOCK", "") not in ("", "0")


def wait_for_fused(timeout: float | None = None) -> None:
    """Block until every fused-tier build in flight has finished (benchmarks, tests)."""
    with _building_lock:
        threads = list(_building)
    for t in threads:
        t.join(timeout)


class CppFused(FusedCompiled):
    """An optimized graph as fused C++ kernels + a Python host wrapper (the fused tier)."""
    backend = "cpu"
    pool_buffers = True         # malloc page-faults on fresh blocks (fusion/buffer_pool.py)

    def __init__(self, graph):
        self._nargs: dict = {}
        self.library_source = ""
        self.compiled_now = False        # False: the library came from the disk or memory cache
        self.rewrites: list[str] = []    # small_contractions' notes, for explain
        graph = small_contractions(graph, self.rewrites)
        super().__init__(graph, persistent_max=-1)       # C++ loops over every row: no blocks

    def lowerable(self, eqn):
        return lowerable(eqn)

    def kernel_source(self, plan):
        if self.symbolic:
            plan.space_note = "sizes are kernel arguments"
        ops = CppOps(plan.name, plan.xnumel, plan.rnumel, blocked=prefers_blocked(plan))
        plan.run(ops)
        ins, outs = list(ops.in_args), list(ops.out_args)
        source = ops.source((ins, outs))
        plan.size_args = list(ops.size_args)
        self._nargs[plan.name] = (len(ins) + len(outs),
                                  ["double" if isinstance(e, tuple) else "int64_t" for e in plan.size_args])
        return source, ins, outs

    def output_buffer(self, v):
        if not is_big(v):
            return None
        return f"_fresh({tuple(v.type.shape)!r}, {v.type.dtype})"     # huge pages (huge_pages.py)

    def load_kernels(self, generated):
        launchers = {"_threads": torch.get_num_threads, "_fresh": fresh}
        if not generated:
            return launchers
        self.library_source = header() + "\n\n" + "\n".join(src for _, src in generated)
        lib, self.compiled_now = load_library(self.library_source, link_flags())
        for plan, _ in generated:
            launchers[plan.name] = kernel_function(lib, plan.name, *self._nargs[plan.name])
        return launchers

    def launch_source(self, plan, ins, outs):
        ptrs = [f"{b}.data_ptr()" for b in ins + outs]
        sizes = [self.size_source(e) for e in getattr(plan, "size_args", ())]
        return f"{plan.name}({', '.join(ptrs + sizes + ['_threads()'])})"

    def report_header(self):
        cache = "compiled now" if self.compiled_now else "from the kernel cache"
        lines = [f"fused tier: C++ kernels, one shared library ({cache})"]
        if self.rewrites:
            lines.append(f"fused-tier pass small_contractions: {len(self.rewrites)} product(s) over tiny dims "
                         "became fused multiply-adds (functx/compile/small_contractions.py):")
            lines += [f"  {n}" for n in self.rewrites]
        return "\n".join(lines)


class CpuCompiled(Compiled):
    """The tiered CPU backend: `call` runs the eager tier until the fused tier is ready."""
    backend = "cpu"
    symbolic_sizes = True      # jit's symbolic dims: sizes are C++ arguments, one library for every size

    def __init__(self, graph):
        self.graph = graph
        self.eager = EagerCompiled(graph)
        self.fused: CppFused | None = None
        self.failure: str | None = None      # why the fused tier does not run
        self.eager_calls = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        _instances.add(self)
        self._target = target = [self._eager_tier]

        def call(*inputs):
            return target[0](*inputs)
        self.call = call
        if blocking():
            self._build()

    # ------------------------------------------------------------ tiers
    @property
    def tier(self) -> str:
        return "eager" if self._target[0] == self._eager_tier else "fused"

    @property
    def kernels(self):
        self._build_if_never_called()
        return list(self.fused.kernels) if self.fused is not None else []

    @property
    def groups(self):
        self._build_if_never_called()
        return list(self.fused.groups) if self.fused is not None else []

    def _build_if_never_called(self):
        """explain of a function not called yet builds the fused tier, to show its kernels."""
        if self.eager_calls == 0 and self.tier == "eager":
            self.wait()

    def _eager_tier(self, *inputs):
        self.eager_calls += 1
        if self.eager_calls >= hot_calls() and self._thread is None and self.failure is None:
            self.start()
        return self.eager.call(*inputs)

    def start(self):
        """Start building the fused tier in a background thread (once)."""
        with self._lock:
            if self._thread is not None or self.fused is not None or self.failure is not None:
                return
            self._thread = threading.Thread(target=self._build_in_background, daemon=True,
                                            name="functx-cpu-compile")
            with _building_lock:
                _building.add(self._thread)
            self._thread.start()

    def wait(self, timeout: float | None = None):
        """Build the fused tier now if it was not started; wait for it. Returns the tier."""
        self.start()
        if self._thread is not None:
            self._thread.join(timeout)
        return self.tier

    def _build_in_background(self):
        try:
            self._build()
        finally:
            with _building_lock:
                _building.discard(threading.current_thread())

    def _build(self):
        try:
            fused = CppFused(self.graph)
        except CompilerUnavailable as err:
            self.failure = str(err)
            return
        except Exception as err:  # noqa: BLE001  (a bug: keep serving correct eager results)
            self.failure = f"building the fused tier failed: {type(err).__name__}: {err}"
            warnings.warn(f"functx cpu backend: {self.failure}; this function stays on the eager tier",
                          RuntimeWarning, stacklevel=1)
            return
        self.fused = fused
        if not fused.kernels:
            self.failure = "nothing to fuse (every group is an extern); the eager code is as fast"
            return
        self._target[0] = fused.call

    # ------------------------------------------------------------ explain
    def status(self) -> str:
        if self.tier == "fused":
            return f"tier: fused C++ kernels (after {self.eager_calls} call(s) on the eager tier)"
        if self.failure is not None:
            return f"tier: eager ({self.failure})"
        if self._thread is not None and self._thread.is_alive():
            return "tier: eager (the fused tier is compiling in the background)"
        return (f"tier: eager, {self.eager_calls} call(s) so far (the fused tier is built in the "
                f"background from call {hot_calls()}, or at once with FUNCTX_CPU_BLOCK=1)")

    def report(self) -> str:
        self._build_if_never_called()
        out = ["backend: cpu (tiered: eager PyTorch code first, fused C++ kernels once compiled)",
               self.status(), "", "-- eager tier: generated PyTorch code --", self.eager.source, ""]
        if self.fused is not None:
            out += [self.fused.report(), "(the fx_* helpers: HELPERS in functx/compile/cpu/cpp_ops.py)"]
        return "\n".join(out)
