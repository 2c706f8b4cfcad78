"""The CPU backend: fused C++ kernels (CppFused), served in tiers (CpuCompiled).

CppFused is the Triton backend's pipeline with a C++ ops handler: the same fusion groups
(compile/fusion), each group one C++ function (cpp_ops.py), all of a graph's kernels one
shared library (toolchain.py), and the same generated Python host wrapper, which runs
matmuls and other externs through torch and passes data pointers of contiguous tensors
to the kernels through ctypes.

CpuCompiled serves calls in tiers, so a first call never waits for a C++ compiler:
  - a graph whose library some process built before (the disk cache's graph index, see
    toolchain.py) is served by the fused tier from its first call;
  - otherwise calls run the eager backend's generated PyTorch code at once; from the
    `hot_calls()`-th call a background thread builds CppFused and swaps its wrapper in
    when it is ready (the next call runs it).
A call torch autograd would record runs the eager code on either tier. A graph where no
kernel fuses two equations, or a failed build (no compiler: $FUNCTX_CXX not found), stays
on the eager tier (its calls then go straight to the eager code), and explain's report
says which tier the last call ran and why.
Settings (settings.py, `functx.compile.cpu.CONFIG`): `block` builds the fused tier before
the first call, `fused=False` never builds it; `wait_for_fused()` waits for every build
in flight.
"""
from __future__ import annotations

import os
import threading
import warnings
import weakref

import torch

from ..compiled import Compiled
from ..eager import EagerCompiled
from ..loops import loop_report
from ..fusion.compiled import FusedCompiled
from ..small_contractions import small_contractions
from . import row_products as rows
from ..symbolic import graph_symbols
from .huge_pages import fresh, is_big
from .cpp_ops import CppOps, header, link_flags, lowerable, prefers_blocked
from . import settings
from .toolchain import (CompilerUnavailable, NotCached, graph_key, kernel_function, load_library,
                        read_graph_entry, write_graph_entry)
from .. import buffer_reuse

_building: set = set()          # threads building a fused tier
_building_lock = threading.Lock()
_instances: "weakref.WeakSet" = weakref.WeakSet()     # every CpuCompiled, for the fork handler
_PLAIN = frozenset({torch.Tensor, torch.nn.Parameter})   # what the fused tier takes (not subclasses)


def _after_fork_in_child():
    """A fork copies the locks as they are, possibly held by a thread the child does not
    have (a build in flight): fresh locks, no builds in flight. A function whose build was
    in flight at the fork runs its eager tier in the child and builds again from its next
    call (the parent's thread does not exist there)."""
    global _building, _building_lock
    _building, _building_lock = set(), threading.Lock()
    for c in list(_instances):
        c._lock = threading.Lock()
        if c.fused is None and c.failure is None:
            c._thread = None        # a build in flight at the fork starts again at the next call


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


hot_calls = settings.hot_calls
blocking = settings.blocking
FUSED_OFF = "functx.compile.cpu.CONFIG.fused = False or FUNCTX_CPU_FUSED=0, the test suite's default"
NOTHING_TO_FUSE = ("nothing to fuse (no kernel computes two operations); the eager code is as fast "
                   "and costs less per call")
# The fusion planner's cost grows faster than the graph (its cycle checks walk the groups for
# each candidate merge): 640 equations plan in 0.5 s, 1,280 in 1.8 s (3.7 s before its
# successor sets were cached), the 3,200 of a 200-step Python loop's gradient in ~47 s (before),
# in a background thread that holds the GIL against the
# calls it should not slow down (and again, to key the disk cache, on a later process's first
# call). Larger graphs stay on the eager tier (as fast there: the unrolled loop's ops are
# matmuls and small elementwise steps); functx.scan keeps a long loop one equation.
MAX_FUSED_EQUATIONS = 1500
TOO_LARGE = ("the graph has {n} equations, more than MAX_FUSED_EQUATIONS ({limit}): planning its kernels "
             "would take longer than it saves; the eager tier serves it (functx.scan keeps a long "
             "loop one equation)")


# Serve a fused tier only if some kernel fuses two equations or more: a kernel per single
# operation saves no memory traffic over torch's own kernel and costs more per call (a
# ctypes call, data_ptr() per buffer: ~5 µs on a trivial function). Tests of the kernels'
# semantics turn it off.
SKIP_UNFUSED = True


def _fuses_anything(fused) -> bool:
    if not SKIP_UNFUSED:
        return bool(fused.kernels) or bool(fused.row_eqns)
    # a row_products kernel beats torch.matmul by itself (row_products.py)
    return bool(fused.row_eqns) or any(g.kind != "extern" and len(g.eqns) > 1 for g in fused.groups)


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
    inplace_outputs = True      # kernels write outputs over dying inputs (fusion/inplace.py)

    def __init__(self, graph, compile: bool = True):
        """compile=False: raise toolchain.NotCached unless the library is in the disk cache."""
        self._compile = compile
        self._nargs: dict = {}
        self.library_source = ""
        self.compiled_now = False        # False: the library came from the disk or memory cache
        self.rewrites: list[str] = []    # small_contractions' notes, for explain
        self.row_notes: list[str] = []   # row_products' notes, for explain
        graph = small_contractions(graph, self.rewrites)
        graph = rows.row_products(graph, self.row_notes)
        self.row_eqns = rows.equations(graph)
        super().__init__(graph, persistent_max=-1)       # C++ loops over every row: no blocks

    def lowerable(self, eqn):
        if eqn.prim is rows.row_products_p:
            return "products of a few rows with one matrix: one C++ pass over it (row_products.py)"
        return lowerable(eqn)

    def fresh_extern(self, eqn) -> bool:
        return eqn.prim is rows.row_products_p      # new outputs (kernel or torch.matmul)

    def kernel_source(self, plan):
        if self.symbolic:
            plan.space_note = "sizes are kernel arguments"
        over = {plan.buffers[v]: plan.buffers[b] for v, b in plan.written_over.items()}
        ops = CppOps(plan.name, plan.xnumel, plan.rnumel, blocked=prefers_blocked(plan), written_over=over)
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
        if not generated and not self.row_eqns:
            return launchers
        self.library_source = header() + "\n\n" + "\n".join(src for _, src in generated) + \
            rows.library_source(self.row_eqns)
        lib, self.compiled_now = load_library(self.library_source, link_flags(), compile=self._compile)
        for plan, _ in generated:
            launchers[plan.name] = kernel_function(lib, plan.name, *self._nargs[plan.name])
        for e in self.row_eqns:
            launchers[e.params["kernel"]] = rows.launcher(lib, e, torch.get_num_threads)
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
        if self.row_notes:
            lines.append(f"fused-tier pass row_products: {len(self.row_notes)} C++ pass(es) over a shared matrix "
                         "replace torch.matmul (functx/compile/cpu/row_products.py):")
            lines += [f"  {n}" for n in self.row_notes]
        return "\n".join(lines)


class CpuCompiled(Compiled):
    """The tiered CPU backend: `call` runs the eager tier until the fused tier is ready."""
    backend = "cpu"
    symbolic_sizes = True      # jit's symbolic dims: sizes are C++ arguments, one library for every size

    def __init__(self, graph):
        self.graph = graph
        self._eager: EagerCompiled | None = None     # the eager tier (not built when fused from the start)
        self.fused: CppFused | None = None
        self.failure: str | None = None      # why the fused tier does not run
        self.eager_calls = 0                 # calls the eager tier served before the fused tier was ready
        self.recorded_calls = 0              # calls the fused tier handed to the eager code for autograd
        self.last_tier: str | None = None    # the tier of the last call: "eager", "fused", None (no call)
        self.from_disk = False               # fused from the first call: the disk cache had the graph
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._key: str | None = None         # the graph's key in the disk cache's index
        self._fused_on = False               # the fused tier serves the calls
        _instances.add(self)
        self._target = target = [self._eager_tier]

        def call(*inputs):
            return target[0](*inputs)
        self.call = call
        if not settings.fused_enabled():
            self.failure = FUSED_OFF
        elif len(graph.eqns) > MAX_FUSED_EQUATIONS:
            self.failure = TOO_LARGE.format(n=len(graph.eqns), limit=MAX_FUSED_EQUATIONS)
        elif blocking():
            self._build()
        elif not graph_symbols(graph):      # symbolic graphs build after jit froze their guards
            self._serve_from_disk_cache()
        if self.tier == "eager":
            # built now, so that what cannot compile raises inside jit's compile step (a
            # symbolic trace then falls back to a static one), not in a call
            self._eager = EagerCompiled(graph)
            if self.failure is not None:        # never fused: calls go straight to the eager code
                self.call = self._target[0] = self._eager.call

    @property
    def eager(self) -> EagerCompiled:
        if self._eager is None:
            with self._lock:
                if self._eager is None:
                    self._eager = EagerCompiled(self.graph)
        return self._eager

    # ------------------------------------------------------------ tiers
    @property
    def tier(self) -> str:
        """The tier the next call runs."""
        return "fused" if self._fused_on else "eager"

    @property
    def fused_state(self) -> str:
        """ready | pending (building in the background) | not started | failed | off | nothing to fuse |
        too large"""
        if self.tier == "fused":
            return "ready"
        if self.failure == FUSED_OFF:
            return "off"
        if self.failure == NOTHING_TO_FUSE:
            return "nothing to fuse"
        if self.failure is not None:
            return "too large" if self.failure.startswith("the graph has") else "failed"
        if self._thread is not None and self._thread.is_alive():
            return "pending"
        return "not started"

    @property
    def source(self) -> str:
        """The generated Python of the tier the next call runs (the host wrapper when fused)."""
        return self.fused.source if self.tier == "fused" else self.eager.source

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
        if self.last_tier is None and self.tier == "eager" and self.failure is None:
            self.wait()

    def _eager_tier(self, *inputs):
        self.eager_calls += 1
        self.last_tier = "eager"
        if self._thread is None and self.failure is None and self.eager_calls >= hot_calls():
            self.start()
        out = self.eager.call(*inputs)
        if self._fused_on:          # swapped during this call: what it kept goes too
            self._release_eager_keep()
        return out

    def _release_eager_keep(self) -> int:
        keep = self._eager.globals.get("_keep") if self._eager is not None else None
        return buffer_reuse.release_kept(keep) if keep is not None else 0

    def _fused_tier(self, fused_call):
        """The fused tier's call. A call torch autograd would record (grad mode on and an
        input or a captured tensor requires grad; or a tensor subclass) runs the eager
        tier's generated torch code instead: the C++ kernels record no autograd history, and
        a result of mixed torch and C++ steps would carry a partial one."""
        consts_grad = any(isinstance(c, torch.Tensor) and c.requires_grad for c in self.graph.consts)
        grad_enabled, plain = torch.is_grad_enabled, _PLAIN
        eager = self._recorded_call

        def fused_tier(*inputs):
            grad = grad_enabled()
            if grad and consts_grad:
                return eager(*inputs)
            for x in inputs:
                if type(x) not in plain or (grad and x.requires_grad):
                    return eager(*inputs)
            self.last_tier = "fused"
            return fused_call(*inputs)
        return fused_tier

    def _recorded_call(self, *inputs):
        self.last_tier = "eager (autograd)"
        self.recorded_calls += 1
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

    def _graph_key(self) -> str:
        if self._key is None:
            self._key = graph_key(str(self.graph))
        return self._key

    def _serve_from_disk_cache(self):
        """A graph some process built before: the fused tier from the first call (its C++
        source is generated again, 5-200 ms; g++ never runs here)."""
        try:
            known = read_graph_entry(self._graph_key())
        except Exception:  # noqa: BLE001  (an unreadable cache only means no shortcut)
            return
        if known == "none":
            self.failure = NOTHING_TO_FUSE
        elif known is not None:
            self._build(compile=False)
            self.from_disk = self.fused is not None and self.tier == "fused"

    def _build(self, compile: bool = True):
        self._try_build(compile)
        if self.failure is not None and self._eager is not None:
            self._target[0] = self._eager.call      # never fused: no tier bookkeeping per call

    def _try_build(self, compile: bool):
        try:
            fused = CppFused(self.graph, compile=compile)
        except NotCached:
            return          # the index was stale: built in the background from hot_calls() as usual
        except CompilerUnavailable as err:
            self.failure = str(err)
            return
        except Exception as err:  # noqa: BLE001  (a bug: keep serving correct eager results)
            self.failure = f"building the fused tier failed: {type(err).__name__}: {err}"
            warnings.warn(f"functx cpu backend: {self.failure}; this function stays on the eager tier",
                          RuntimeWarning, stacklevel=1)
            return
        self.fused = fused
        fuses = _fuses_anything(fused)
        try:
            write_graph_entry(self._graph_key(), "kernels" if fuses else "none")
        except Exception:  # noqa: BLE001  (an unwritable cache only costs the next process the shortcut)
            pass
        if not fuses:
            self.failure = NOTHING_TO_FUSE
            return
        self._target[0] = self._fused_tier(fused.call)
        self._fused_on = True
        self._release_eager_keep()      # the eager tier is done (autograd calls use its plain code)

    def release(self) -> int:
        """Free the buffers this function keeps between calls (both tiers); they grow back
        at its next call. jit calls it when its cache evicts the entry."""
        n = self._release_eager_keep()
        if self.fused is not None:
            n += self.fused.release()
        return n

    # ------------------------------------------------------------ explain
    def status(self) -> str:
        """One line: the tier the last call ran, and the fused tier's state."""
        state = self.fused_state
        if self.failure is not None:
            ran = "every call runs the eager tier"
        elif self.last_tier is None:
            ran = "no call yet"
        elif self.last_tier == "fused":
            if self.from_disk:
                ran = "the last call ran the fused tier (every call: its kernels were in the disk cache)"
            elif self.eager_calls == 0:
                ran = "the last call ran the fused tier (every call: built before the first)"
            else:
                ran = (f"the last call ran the fused tier (calls 1-{self.eager_calls} ran the eager tier)"
                       if self.eager_calls > 1 else "the last call ran the fused tier (call 1 ran the eager tier)")
        elif self.last_tier == "eager (autograd)":
            ran = ("the last call ran the eager tier's torch code because torch autograd records it (grad mode "
                   "on and an input or a captured tensor requires grad)")
        else:
            ran = f"the last call ran the eager tier (call {self.eager_calls})"
        if state == "ready":
            why = "ready" + ("" if self.last_tier == "fused" else ", the next call runs it")
        elif state == "pending":
            why = "pending (compiling in the background; the first call after it is built runs it)"
        elif state == "not started":
            why = (f"not started (built in the background from call {hot_calls()}, "
                   "or before the first call with functx.compile.cpu.CONFIG.block / FUNCTX_CPU_BLOCK=1)")
        elif state == "nothing to fuse":
            why = self.failure
        else:
            why = f"{state} ({self.failure})"
        return f"tier: {ran}; fused tier: {why}"

    def report(self) -> str:
        self._build_if_never_called()
        out = ["backend: cpu (tiered: eager PyTorch code first, fused C++ kernels once compiled)",
               self.status(), "", "-- eager tier: generated PyTorch code --",
               self.eager.source + loop_report(self.eager.globals), ""]
        if self.fused is not None:
            out += [self.fused.report(), "(the fx_* helpers: HELPERS in functx/compile/cpu/cpp_ops.py)"]
        return "\n".join(out)
