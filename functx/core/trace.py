"""Traces and tracers (JAX's stackless design).

The current trace lives in thread-local state. `bind(prim, args, params)` hands the
primitive to the current trace's `process_primitive`. A trace treats values that are
not its own tracers (tensors, Python scalars, tracers of enclosing traces) as
constants, and evaluates a rule's own operations on its parent trace. Transforming a
graph is evaluating it under another trace (`eval_graph`), so functions and graphs
share one mechanism.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from . import nan_check
from .errors import ConcretizationError, FunctxError, library_hint, user_frame_summary
from .ir import Eqn, Graph, Literal, Var
from .types import TensorType


@dataclass(frozen=True)
class AxisData:
    """A vmapped axis: its size, its name (for collectives) and vmap's randomness mode; or,
    with a torch.distributed process group, a process axis (functx.spmd)."""
    size: int
    name: object = None
    randomness: str = "error"
    group: object = field(default=None, repr=False)
    # vmap's chunk_size: this axis is one chunk of a batch of chunk_of examples, so a
    # collective over it would see only the chunk (collective_batch raises)
    chunk_of: int | None = None

    def __repr__(self):
        if self.group is not None:
            return f"ProcessAxis({self.name!r}, size={self.size})"
        return f"AxisData(size={self.size}, name={self.name!r}, randomness={self.randomness!r})"


class Trace:
    parent: "Trace | None" = None
    # The axis environment: the vmap axis this trace batches over (a BatchTrace's), else None.
    axis: AxisData | None = None
    # A user-visible transform level (grad, jvp, vmap, jit), counted by transform_level.
    is_level: bool = False

    # Whether dispatch hands ATen ops to this trace as cached lowerings (frontend/lowered_ops.py)
    lowered_ops: bool = False
    # Whether fused primitives (Primitive.composite, prims/fused.py) are bound as themselves
    # here: on eager levels (lowered_ops) and in the graphs of their units and rules
    keeps_fused: bool = False
    # Eager levels whose cached units wait in a batch until a value is needed
    # (frontend/unit_batches.py): whether this kind of level does, and its open batch
    batches_units: bool = False
    pending = None
    # A reverse-mode level (grad, vjp, jacrev's JVPTrace): its values report requires_grad
    reverse: bool = False
    # Differentiates what it processes (JVPTrace): a graph staged below it will be
    # differentiated, so custom_jvp / custom_vjp calls in it stay equations (GraphTrace.inlines)
    uses_custom_rules: bool = False

    def process_primitive(self, prim, args, params):
        raise NotImplementedError

    def process_lowered(self, op, args):
        """An ATen op's cached lowering (frontend/lowered_ops.LoweredOp) on its tensor operands:
        the list of its outputs, or NotImplemented (dispatch then runs the lowering)."""
        return op.eval(args)


# The dispatch-key state of ordinary Python code. functx's eager work usually runs inside
# TracerTensor.__torch_dispatch__, below PyTorch's autograd layer, where torch ops record no
# autograd history; impls on tensors that require grad (closed-over nn.Module parameters)
# run in this state instead, so PyTorch autograd sees through functx's outputs.
TOP_LEVEL_KEYS = (torch._C._dispatch_tls_local_include_set(), torch._C._dispatch_tls_local_exclude_set())
# The same with the Python key off: a level's cached rule on tensors that require grad runs in
# it (torch's autograd records, functx's dispatch mode does not see each kernel).
AUTOGRAD_ON_KEYS = (TOP_LEVEL_KEYS[0], TOP_LEVEL_KEYS[1] | torch._C.DispatchKeySet(torch._C.DispatchKey.Python)
                    | torch._C.DispatchKeySet(torch._C.DispatchKey.PythonTLSSnapshot))


class EvalTrace(Trace):
    """The bottom trace: runs each primitive's eager torch implementation."""

    def process_primitive(self, prim, args, params):
        try:
            for a in args:
                if isinstance(a, torch.Tensor) and a.requires_grad and torch_autograd_records():
                    with torch._C._ForceDispatchKeyGuard(*TOP_LEVEL_KEYS):
                        out = prim.impl(*args, **params)
                    break
            else:
                out = prim.impl(*args, **params)
        except Exception:
            # Checked only on failure, so the eager path pays nothing for it.
            leaked = next((a for a in args if isinstance(a, Tracer)), None)
            if leaked is not None:
                raise_leaked(leaked)
            raise
        if _NANS.on:
            nan_check.check_outputs(prim, out)
        return out

    def __repr__(self):
        return "EvalTrace"


EVAL_TRACE = EvalTrace()
_NANS = nan_check.STATE


class _State(threading.local):
    trace: Trace = EVAL_TRACE


_state = _State()
# The same object, for the traces' hot paths, which swap `trace_state.trace` around a rule
# directly (try/finally) instead of entering set_current_trace (three Python calls).
trace_state = _state


def current_trace() -> Trace:
    return _state.trace


class set_current_trace:
    __slots__ = ("trace", "prev")

    def __init__(self, trace: Trace):
        self.trace = trace

    def __enter__(self):
        self.prev = _state.trace
        _state.trace = self.trace
        return self.trace

    def __exit__(self, *exc):
        _state.trace = self.prev


def process_on_parent(trace, prim, args, params):
    """Hand a primitive to trace's parent, with the parent current while it runs (the fast
    path of every trace when none of the arguments are its own tracers)."""
    parent = trace.parent
    _state.trace = parent
    try:
        return parent.process_primitive(prim, args, params)
    finally:
        _state.trace = trace


def bind(prim, args, params):
    return _state.trace.process_primitive(prim, args, params)


def raise_leaked(tracer):
    raise FunctxError(
        f"functx: a traced value ({tracer.aval}) from {tracer._trace!r} was used after its transform "
        f"finished (a leaked tracer), here:\n{user_frame_summary()}\nThis happens when a function "
        "stores a value computed inside grad/vmap/jit in a global, a list or an object attribute and "
        "uses it later, or when an in-place op (copy_, add_, x[i] = ...) inside a transform writes such "
        "a value into a tensor from outside that transform (torch.func refuses those writes too). Return "
        "the value from the transformed function instead.")


_functorch_level = torch._C._functorch.maybe_current_level


def refuse_inside_torch_func(who: str) -> None:
    """A functx transform entered at the outermost functx level while a torch.func transform
    runs: its arguments are torch.func's wrapper tensors, which functx cannot see through
    (torch.func.grad of a functx.jit gave zeros). Raise instead of returning that."""
    if _state.trace is EVAL_TRACE and _functorch_level() is not None:
        raise FunctxError(
            f"{who} was called inside a torch.func transform (torch.func.grad, vmap, jvp, ...). "
            "functx cannot see through torch.func's wrapper tensors, so the result would be wrong. "
            "Use functx's transforms at every level: functx.grad / functx.vmap / ..., or "
            "functx.func, which has torch.func's names and signatures.")


def enclosing_traces():
    """The current trace and its ancestors, innermost first."""
    trace = _state.trace
    while trace is not None:
        yield trace
        trace = trace.parent


def transform_level(trace) -> int:
    """torch.func's lvl in reprs: 1 for the outermost transform, counting only the user's
    levels (grad, jvp, vmap, jit), not the partial-evaluation trace under each grad."""
    n = 0
    while trace is not None:
        n += trace.is_level
        trace = trace.parent
    return n


def value_repr(x) -> str:
    """A lax value inside a tracer's repr: a tensor's (or inner tracer's) repr, indented."""
    return "\n    " + repr(x).replace("\n", "\n    ")


def find_axis(axis_name) -> AxisData | None:
    """The innermost enclosing vmap axis called axis_name (JAX's axis environment)."""
    return next((t.axis for t in enclosing_traces() if t.axis is not None and t.axis.name == axis_name), None)


def process_axes() -> list:
    """The enclosing functx.spmd process axes (AxisData with a group), innermost first."""
    return [t.axis for t in enclosing_traces() if t.axis is not None and t.axis.group is not None]


def _stages(trace) -> bool:
    return isinstance(trace, GraphTrace) and trace.stage_all


def staging_trace():
    """The innermost enclosing trace that stages a graph (jit, make_graph), or None."""
    return next((t for t in enclosing_traces() if _stages(t)), None)


def seeded_while_staging():
    """Where f called torch.manual_seed while an enclosing trace stages a graph, or None: a
    draw from the global generator after it would repeat on every eager call, but not on
    every call of the compiled function (frontend/generators.py, prims/random.py)."""
    for t in enclosing_traces():
        if _stages(t) and t.seeded_at is not None:
            return t.seeded_at
    return None


def staging() -> bool:
    """Whether some enclosing trace stages a graph (jit, make_graph): work done in Python now
    happens once, at trace time, not on every call."""
    return any(_stages(t) for t in enclosing_traces())


def staged_or_batched() -> bool:
    """Whether some enclosing trace stages a graph (jit, make_graph) or batches (vmap): there,
    a value computed once in Python would be frozen into the graph or shared by the batch."""
    return any((t.axis is not None and t.axis.group is None) or _stages(t) for t in enclosing_traces())


# ---------------------------------------------------------------- grad mode of reverse levels
# (torch.func's semantics; transforms/jvp.py's docstring has the rule.)

class _ReverseLevels(threading.local):
    def __init__(self):
        # (trace, grad mode when its transform started running the user's function), outermost first
        self.stack = []


_reverse = _ReverseLevels()


class reverse_level:
    """Run the user's function for reverse-mode level `trace`: with grad enabled (an outer
    no_grad does not reach inside the transform), remembering the mode it was entered with.
    (A class, not a generator context manager: every grad call enters it.)"""
    __slots__ = ("trace", "prev")

    def __init__(self, trace):
        self.trace = trace

    def __enter__(self):
        self.prev = torch.is_grad_enabled()
        _reverse.stack.append((self.trace, self.prev))
        torch._C._set_grad_enabled(True)

    def __exit__(self, *exc):
        torch._C._set_grad_enabled(self.prev)
        _reverse.stack.pop()


class ReadRecorder:
    """While jit traces: notes whether the trace read what a subclass stands for (`read`);
    `note()` marks every recorder of that subclass that is active."""
    active: list

    def __init_subclass__(cls):
        cls.active = []

    def __enter__(self):
        self.read = False
        type(self).active.append(self)
        return self

    def __exit__(self, *exc):
        type(self).active.remove(self)

    @classmethod
    def note(cls):
        for recorder in cls.active:
            recorder.read = True


class record_autograd_reads(ReadRecorder):
    """While functx.jit traces f: notes whether f did something plain torch does differently
    for a call that torch autograd records (read requires_grad, which the trace answers False;
    detached a value or ran ops with grad disabled, which the compiled graph does not replay
    for autograd; registered a tensor hook; called a custom_jvp / custom_vjp function, whose
    body the graph holds, without its rule), so that jit runs such calls as plain torch."""


note_autograd_read = record_autograd_reads.note


def torch_autograd_records() -> bool:
    """Whether PyTorch's own autograd records the eager work on tensors that require grad:
    grad mode as the code outside functx sees it. Reverse levels enable grad for the user's
    function (their own rules), which must not make torch record under an outer no_grad (as
    torch.func: vjp's output under no_grad has no grad_fn)."""
    stack = _reverse.stack
    return torch.is_grad_enabled() and (not stack or stack[0][1])


def reverse_mode_active() -> bool:
    """Whether some reverse-mode transform is running the user's function."""
    return bool(_reverse.stack)


def grad_enabled_for(trace) -> bool:
    """The grad mode reverse-mode level `trace` sees now: the current mode, unless a reverse
    level inside it was entered with grad disabled (functorch's GradInterpreter disables grad
    on the way out of such a level). So a no_grad inside grad(grad(f))'s f stops both levels."""
    if not torch.is_grad_enabled():
        return False
    stack = _reverse.stack
    if stack and stack[-1][0] is trace:
        return True
    for k in range(len(stack) - 1):
        if stack[k][0] is trace:
            return all(entered for _, entered in stack[k + 1:])
    return True


def is_ancestor(trace, of) -> bool:
    t = of
    while t is not None:
        if t is trace:
            return True
        t = t.parent
    return False


class Tracer:
    """A value of some trace. `aval` is its logical (per-example) type."""
    __slots__ = ("_trace",)

    @property
    def aval(self) -> TensorType:
        raise NotImplementedError

    def tracks_grad(self) -> bool:
        """What Tensor.requires_grad reports for a wrapper holding this value (as torch.func
        does: True for a value that the innermost level, a reverse-mode one, differentiates)."""
        return False

    def concrete(self) -> torch.Tensor:
        """The concrete value behind this tracer, for Python control flow."""
        raise ConcretizationError(
            f"This value is abstract ({self.aval}) inside {self._trace!r}, but Python needs a "
            f"concrete value here:\n{user_frame_summary()}"
        )


class PrimalTracer(Tracer):
    """A tracer that carries a value of the parent trace (`primal`) plus its transform's
    extra data (JVP tangents, Taylor series, ...): its type and concrete value are the primal's."""
    __slots__ = ("primal", "_aval")       # subclasses set _aval = None: computed once, on use

    @property
    def aval(self) -> TensorType:
        a = self._aval
        if a is None:
            a = self._aval = type_of(self.primal)
        return a

    def concrete(self):
        p = self.primal
        return p.concrete() if isinstance(p, Tracer) else p


def tracer_chain(v):
    """v, then the values beneath it, down to a tensor or a tracer with nothing beneath (a jit
    tracer): a PrimalTracer's primal (grad, jvp, jet), a BatchTracer's whole batch (`val`)."""
    while True:
        yield v
        if isinstance(v, PrimalTracer):
            v = v.primal
        elif isinstance(v, Tracer) and getattr(v, "val", None) is not None:
            v = v.val
        else:
            return


def type_of(x) -> TensorType | None:
    """Abstract type of a lax-level value (Tracer or Tensor); None for Python scalars."""
    if isinstance(x, Tracer):
        return x.aval
    if isinstance(x, torch.Tensor):
        return tensor_type(tuple(x.shape), x.dtype, x.device)
    return None


def tensor_type(shape: tuple, dtype, device) -> TensorType:
    """The shared TensorType of (shape, dtype, device) (not weak). TensorTypes are immutable:
    one per key, since building the frozen dataclass costs more than the lookup and eager
    transforms ask for every operand."""
    key = (shape, dtype, device)
    t = _TENSOR_TYPES.get(key)
    if t is None:
        if len(_TENSOR_TYPES) >= 4096:
            _TENSOR_TYPES.clear()
        t = _TENSOR_TYPES[key] = TensorType(*key)
    return t


_TENSOR_TYPES: dict = {}


def concrete(x):
    if isinstance(x, Tracer):
        return x.concrete()
    return x


class Zero:
    """A symbolic zero tangent or cotangent: no work is done for it."""
    __slots__ = ("aval",)

    def __init__(self, aval: TensorType):
        self.aval = aval

    def __repr__(self):
        return f"Zero({self.aval})"


class UndefinedPrimal:
    """Marks a linear input of an equation during transposition."""
    __slots__ = ("aval",)

    def __init__(self, aval: TensorType):
        self.aval = aval

    def __repr__(self):
        return f"UndefinedPrimal({self.aval})"


# ---------------------------------------------------------------- graph building

class GraphTracer(Tracer):
    __slots__ = ("var",)

    def __init__(self, trace, var: Var):
        self._trace = trace
        self.var = var

    @property
    def aval(self):
        return self.var.type

    def concrete(self):
        err = ConcretizationError(
            "A traced value's contents were needed by Python (bool(), int(), float(), .item(), "
            ".tolist(), .numpy(), if/while on a tensor) while tracing a graph, where values are "
            f"abstract ({self.aval}):\n"
            f"{user_frame_summary()}\n"
            "Under functx.jit the function is traced once per input signature, so Python control "
            "flow cannot depend on tensor values. Options: select values with torch.where; "
            "make the argument static with static_argnums; or use structured control flow, "
            "functx.cond(pred, true_fn, false_fn, *operands), functx.switch, "
            "functx.while_loop(cond_fn, body_fn, init) or functx.scan. Outside jit, "
            "the transforms run eagerly and this code works." + library_hint()
        )
        err.depends_on = self._trace.ancestors(self.var)   # jit names the arguments behind it
        raise err

    def __repr__(self):
        if not self._trace.stage_all:
            return f"LinearTracer({self.aval}: a tangent recorded for the backward pass, no value yet)"
        return (f"TracedTensor({self.aval}, lvl={transform_level(self._trace)}: no value while functx.jit "
                "traces the function; functx.debug.print('{}', x) prints it each time the compiled "
                "function runs)")


_SCALARS = (bool, int, float, complex, torch.SymInt, torch.SymFloat, torch.SymBool)


INLINED = [0]       # Primitive.inline bodies recorded so far (hessian's one trace checks for them)
# Set while an eager control-flow body is traced for torch's autograd (control_flow/common.py
# closed_graph): graphs keep custom_jvp / custom_vjp calls as equations, whose eager
# evaluation runs them as torch.autograd.Functions with their rules (transforms/custom_autograd.py)
KEEP_CUSTOM_CALLS = [False]


def _ancestors(trace):
    while trace is not None:
        yield trace
        trace = trace.parent


class GraphTrace(Trace):
    """Records primitives into a Graph.

    stage_all=True stages every primitive (make_graph, jit). stage_all=False stages only
    primitives that touch this trace's tracers and evaluates the rest on the parent: that
    is partial evaluation, used by linearize to record the tangent (linear) program while
    primal values are computed as usual.
    """

    # linearize's partial-eval trace: the tangents Tensor.register_hook replaced, as
    # (old tangent Var, index of its tensor_hook equation, user line) (transforms/hooks.py)
    hooked = None
    closes_over = False

    def __init__(self, parent: Trace, stage_all: bool = True):
        self.parent = parent
        self.stage_all = stage_all
        self.is_level = stage_all
        # Primitive.inline bodies are recorded only where no enclosing trace differentiates the
        # graph (jit compiles it, an eager loop evaluates it): a scan body or checkpoint traced
        # under grad keeps its custom_jvp calls as equations, so their rules are used.
        # A graph evaluated eagerly for torch's autograd (KEEP_CUSTOM_CALLS, no differentiating
        # trace above) makes the values custom calls close over their operands (Primitive.close_over).
        if not stage_all:
            self.inlines, self.closes_over = True, False
        elif KEEP_CUSTOM_CALLS[0]:
            self.inlines = False
            self.closes_over = not any(t.uses_custom_rules for t in _ancestors(parent))
        else:
            self.inlines, self.closes_over = not any(t.uses_custom_rules for t in _ancestors(parent)), False
        self.eqns: list[Eqn] = []
        self.constvars: list[Var] = []
        self.consts: list = []
        self._const_index: dict[int, Var] = {}
        self.seeded_at = None     # where f called torch.manual_seed during this trace (generators.py)

    def __repr__(self):
        return "GraphTrace" if self.stage_all else "PartialEvalTrace"

    def new_arg(self, type: TensorType) -> GraphTracer:
        return GraphTracer(self, Var(type))

    def atom(self, x):
        if isinstance(x, GraphTracer) and x._trace is self:
            return x.var
        if isinstance(x, _SCALARS):     # SymInt/SymFloat: a size under a symbolic trace (jit)
            return Literal(x)
        var = self._const_index.get(id(x))
        if var is None:
            if isinstance(x, Tracer) and not is_ancestor(x._trace, self.parent):
                raise_leaked(x)
            t = type_of(x)
            if t is None:
                raise TypeError(f"cannot use {type(x).__name__} as a tensor operand")
            var = Var(t)
            self._const_index[id(x)] = var
            self.constvars.append(var)
            self.consts.append(x)
        return var

    def snapshot_consts(self, storages):
        """Plain tensors held as constants whose memory is about to be written in place
        (jit: `w = W.clone(); y = x @ w; w.mul_(2)` runs the write at trace time): the graph
        keeps the values it read, a copy; a later use of the tensor is a new constant."""
        for i, c in enumerate(self.consts):
            if type(c) in (torch.Tensor, torch.nn.Parameter) and c.layout == torch.strided \
                    and c.untyped_storage().data_ptr() in storages:
                self._const_index.pop(id(c), None)
                self.consts[i] = c.clone()

    def process_primitive(self, prim, args, params):
        if not self.stage_all:
            for a in args:
                if isinstance(a, GraphTracer) and a._trace is self:
                    break
            else:                # no tracer of ours: evaluate on the parent (partial evaluation)
                return process_on_parent(self, prim, args, params)
        if record_autograd_reads.active and not torch.is_grad_enabled():
            note_autograd_read()         # jit: an op under no_grad (the graph does not replay it)
        if prim.inline is not None and self.inlines:    # structural: record its body (Primitive.inline)
            INLINED[0] += 1
            return prim.inline(*args, **params)
        if prim.close_over is not None and self.closes_over:
            args, params = prim.close_over(args, params)
        if prim.composite is not None and not self.keeps_fused:     # what it stands for
            return prim.composite(*args, **params)
        atoms, in_types = [], []
        for a in args:
            if isinstance(a, GraphTracer) and a._trace is self:     # self.atom(a), inline
                v = a.var
                atoms.append(v)
                in_types.append(v.type)
            else:
                v = self.atom(a)
                atoms.append(v)
                in_types.append(v.type if isinstance(v, Var) else v.value)
        out_types = prim.abstract_eval(*in_types, **params)
        source = nan_check.current_source() if _NANS.on else None
        if prim.multiple_results:
            outs = [Var(t) for t in out_types]
            self.eqns.append(Eqn(prim, atoms, outs, params, source))
            return [GraphTracer(self, v) for v in outs]
        out = Var(out_types)
        self.eqns.append(Eqn(prim, atoms, [out], params, source))
        return GraphTracer(self, out)

    def ancestors(self, var) -> set:
        """The Vars recorded so far that var is computed from (var included)."""
        found = {var}
        for eqn in reversed(self.eqns):
            if any(o in found for o in eqn.outputs):
                found.update(a for a in eqn.inputs if isinstance(a, Var))
        return found

    def to_graph(self, in_tracers, outs) -> Graph:
        invars = [t.var for t in in_tracers]
        outvars = [self.atom(o) for o in outs]
        return Graph(invars, self.constvars, self.consts, self.eqns, outvars)


def eval_graph(graph: Graph, consts, args) -> list:
    """Evaluate a graph at the current trace (so under any transform)."""
    env: dict[Var, object] = {}
    for v, c in zip(graph.constvars, consts):
        env[v] = c
    for v, a in zip(graph.invars, args):
        env[v] = a

    def read(a):
        return a.value if isinstance(a, Literal) else env[a]

    for eqn in graph.eqns:
        out = eqn.prim.bind(*[read(a) for a in eqn.inputs], **eqn.params)
        if eqn.prim.multiple_results:
            for v, o in zip(eqn.outputs, out):
                env[v] = o
        else:
            env[eqn.outputs[0]] = out
    return [read(a) for a in graph.outvars]
