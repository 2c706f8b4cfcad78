"""CUDA graphs for a compiled host wrapper (torch.compile's mode="reduce-overhead").

A small jitted step on the Triton backend is launch-bound: the host wrapper's Python and
each kernel launch cost microseconds while the kernels run for less. Once a cache entry
has run WARMUP_CALLS times (Triton has compiled and autotuned its kernels by then),
`CudaGraphRunner` captures the wrapper into a `torch.cuda.CUDAGraph` over static input
buffers; every later call copies its inputs into those buffers, replays the graph and
returns clones of the static outputs (fresh tensors, as without graphs; nothing a caller
holds is overwritten by the next replay). Inputs written in place are copied back by jit
from those outputs, outside the graph. A call with inputs that require grad (while grad
mode is on) runs the plain wrapper, so torch's autograd records it as without graphs.

Capture is on by default where it is safe, which `capture_blockers(graph)` decides from
the graph alone (CPU-testable): every input and constant on CUDA, and no equation that
syncs with the host or whose replay would differ from a call: host callbacks
(functx.debug.print/callback/breakpoint), debug_nans checks, collectives, random draws
(the captured generator offsets would repeat the same numbers), control flow that reads
a value on the host (cond, while_loop, the reverse while's tape check), opaque fallback
ops (torch code functx cannot inspect for syncs or data-dependent shapes), any other
effect, and symbolic sizes (jit's dynamic dims: one entry serves many sizes, a capture
replays one). Sizes are otherwise static in functx graphs, so there are no data-dependent
shapes. `functx.jit(f, cuda_graphs=False)` or `CONFIG.enabled = False` (environment:
FUNCTX_CUDA_GRAPHS=0) turns it off; explain prints the state or the reasons.
"""
from __future__ import annotations

import dataclasses
import os

import torch

from ..core import sub_graphs
from .symbolic import graph_symbols

WARMUP_CALLS = 2


@dataclasses.dataclass
class CudaGraphConfig:
    """enabled: the default of functx.jit's cuda_graphs option; warmup: plain calls of a
    cache entry before it is captured."""
    enabled: bool = os.environ.get("FUNCTX_CUDA_GRAPHS", "1") != "0"
    warmup: int = WARMUP_CALLS


CONFIG = CudaGraphConfig()

HOST_READS = {
    "cond": "cond picks its branch on the host (a device-to-host sync)",
    "while_loop": "while_loop reads its predicate on the host every iteration",
    "while_tape_check": "reverse-mode while_loop checks its tape length on the host",
}


def capture_blockers(graph) -> list[str]:
    """Why this graph's host wrapper must not be captured into a CUDA graph ([] = safe)."""
    reasons: list[str] = []

    def add(reason):
        if reason not in reasons:
            reasons.append(reason)

    for v in graph.invars:
        if v.type.device.type != "cuda":
            add(f"an input is on {v.type.device.type} (a CUDA graph replays CUDA work only)")
    for c in graph.consts:
        if isinstance(c, torch.Tensor) and not c.is_cuda:
            add("a constant tensor is on the CPU (its value would be frozen into the graph)")
    if graph.meta.check_nans:
        add("debug_nans checks every group's output on the host")
    if graph_symbols(graph):
        add("symbolic sizes (jit's dynamic dims): a captured graph replays the sizes it was captured at")

    def walk(g):
        for e in g.eqns:
            p = e.prim
            if p.name == "debug_callback":
                add("a host callback (functx.debug.print / callback / breakpoint) would not run on replay")
            elif p.collective:
                add(f"a collective ({p.name}) over a process group")
            elif p.name == "random":
                add("random draws: the captured generator state would repeat the same numbers on every replay")
            elif p.name == "opaque":
                name = getattr(e.params.get("fn"), "__name__", "a torch function")
                add(f"an opaque fallback op ({name}): functx cannot check "
                    "it for host syncs or data-dependent shapes")
            elif p.name in HOST_READS:
                add(HOST_READS[p.name])
            elif p.effectful:
                add(f"{p.name} is effectful")
            for sub in sub_graphs(e.params):
                walk(sub)
    walk(graph)
    return reasons


# ---------------------------------------------------------------- capture and replay (CUDA only)

def capture(call, inputs, pool=None):
    """Capture `call(*static inputs)` -> (graph, static inputs, static outputs). The call
    runs once on a side stream first (torch's recipe: the allocator and any lazy state
    settle outside the capture)."""
    static_inputs = [x.detach().clone() if isinstance(x, torch.Tensor) else x for x in inputs]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        call(*static_inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        static_outputs = call(*static_inputs)
    return graph, static_inputs, static_outputs


def replay(graph, static_inputs, static_outputs, inputs):
    for s, x in zip(static_inputs, inputs):
        if isinstance(s, torch.Tensor):
            s.copy_(x)
    graph.replay()
    return tuple(o.clone() if isinstance(o, torch.Tensor) else o for o in static_outputs)


class CudaGraphRunner:
    """The wrapper's callable for jit: plain calls during warm-up, then capture once and
    replay. A failed capture (an op that turns out not to be capturable) falls back to
    plain calls for good and says why in `status`."""

    def __init__(self, call, warmup: int | None = None):
        self.call = call
        self.warmup = CONFIG.warmup if warmup is None else warmup
        self.calls = 0
        self.graph = None
        self.failed = False
        self.replays = 0
        self.status = f"on: captured after {self.warmup} warm-up call(s) of this cache entry (not yet)"

    def __call__(self, *inputs):
        if torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in inputs):
            # torch autograd through the wrapper: a replay would not record it
            return self.call(*inputs)
        if self.graph is None:
            if self.failed or self.calls < self.warmup:
                self.calls += 1
                return self.call(*inputs)
            try:
                self.graph, self._static_in, self._static_out = capture(self.call, inputs)
            except Exception as err:      # not capturable after all: run without a graph
                self.failed = True
                self.status = f"capture failed, running without a graph: {type(err).__name__}: {err}"
                return self.call(*inputs)
            self.status = f"captured after {self.calls} warm-up call(s); each call replays it"
        self.replays += 1
        return replay(self.graph, self._static_in, self._static_out, inputs)


def wrap(call, graph, option):
    """(the callable jit runs, the report line): `call` under a CudaGraphRunner where
    option (functx.jit's cuda_graphs; None = CONFIG.enabled) and the graph allow."""
    if option is None:
        option = CONFIG.enabled
    if not option:
        return call, None, "off (functx.jit(..., cuda_graphs=False) or functx.compile.cuda_graphs.CONFIG)"
    blockers = capture_blockers(graph)
    if blockers:
        return call, None, "not captured: " + "; ".join(blockers)
    runner = CudaGraphRunner(call)
    return runner, runner, None


def report(graph, runner, reason) -> str:
    """explain's line: the runner's state, why there is none, or what jit would do."""
    if runner is not None:
        return runner.status
    if reason is not None:
        return reason
    blockers = capture_blockers(graph)
    if blockers:
        return "jit would not capture: " + "; ".join(blockers)
    return f"jit captures the host wrapper after {CONFIG.warmup} warm-up call(s) (cuda_graphs=False turns it off)"
