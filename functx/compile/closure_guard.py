"""Guards on what jit computed from closed-over tensors while tracing.

A plain torch op on a tensor the function closes over (a module's parameter or buffer, a
global) runs once, at trace time, and its result is a constant of the graph
(frontend/random_mode.py records each such read as a ClosureRead). A view of the tensor
(`self.weight.T`, what F.linear's lowering takes) stays live: in-place updates show
through it. A computed result (`self.log_std.exp()`, a parametrization's weight) is a copy
of the values at trace time. So, before an entry runs:
- a copied tensor updated in place since the trace (an optimizer step) -> retrace;
- a call that torch autograd records (grad mode on) where a copy comes from a tensor that
  requires grad -> run the function as plain torch: the trace-time copy would give no
  gradient to the tensor, or a stale one, and a second backward through it would fail;
- a view taken while autograd was not recording, of a tensor that requires grad, in a
  call that autograd records: if the whole trace ran under no_grad (a warm-up call) ->
  retrace, so the view carries the gradient; if f's own no_grad block took it
  (spectral_norm's power iteration) -> run f as plain torch, which takes it anew (a view
  kept from the trace would outlive in-place updates of its base, which autograd refuses).
- a mutated argument (a buffer) is copied before a call that autograd records
  (jit._writing_back), so writing it back cannot break a tensor autograd saved.
Graphs without such reads have no guard (entry.guard is None): the hot path pays one
attribute check.
"""
from __future__ import annotations

import operator
import os
import types

import torch

from ..frontend.random_mode import storage_address
from . import object_values as objects

RUN_PLAIN = "run f as plain torch"


class ClosureGuard:
    __slots__ = ("copies", "views", "unrecorded_views", "traced_with_grad")

    def __init__(self, copies, views, unrecorded_views, traced_with_grad):
        self.copies = copies                      # [(tensor, version, storage) at trace time]
        self.views = views                        # [(tensor, storage)]
        self.unrecorded_views = unrecorded_views  # tensors viewed without autograd recording
        self.traced_with_grad = traced_with_grad

    @staticmethod
    def of(reads, traced_with_grad=True):
        """The guard for a graph's closure_reads, or None when nothing needs checking."""
        copies, views, unrecorded, seen = [], [], [], set()
        for r in reads:
            key = (id(r.tensor), r.view)
            if key in seen:
                continue
            seen.add(key)
            if not r.view:
                copies.append((r.tensor, r.version, r.storage))
                continue
            views.append((r.tensor, r.storage))
            if not r.recorded:
                unrecorded.append(r.tensor)
        return ClosureGuard(copies, views, unrecorded, traced_with_grad) if copies or views else None

    def check(self):
        """None when the entry may run; RUN_PLAIN; or why it must be traced again."""
        recording = torch.is_grad_enabled()
        for t, version, storage in self.copies:
            if recording and t.requires_grad:
                return RUN_PLAIN
            if t._version != version or storage_address(t) != storage:
                return (f"a closed-over tensor of shape {tuple(t.shape)} was updated in place since the "
                        "trace, and the graph holds a value computed from it then")
        for t, storage in self.views:
            if storage_address(t) != storage:
                return f"a closed-over tensor of shape {tuple(t.shape)} was given new data (.data = ...)"
        if recording:
            for t in self.unrecorded_views:
                if t.requires_grad:
                    if self.traced_with_grad:
                        # f's own no_grad block (spectral_norm's power iteration): a view kept
                        # from the trace would outlive in-place updates of its base, which
                        # autograd refuses; eager code takes it anew each call
                        return RUN_PLAIN
                    return (f"a view of a closed-over tensor of shape {tuple(t.shape)} that requires grad "
                            "was taken while autograd was not recording (traced under no_grad)")
        return None

    def note(self):
        """A line for cache_info/explain."""
        return ("reads closed-over tensors through trace-time views or copies: retraced when a copied "
                "one is updated in place; calls that torch autograd records for one that requires grad "
                "run f as plain torch (pass such tensors as arguments, e.g. functional_call(model, params, "
                "x), to compile those calls)")


# ---------------------------------------------------------------- the reached modules: flags, buffers, identity

_REGISTRATIONS = [0]      # bumped whenever any module registers a parameter, buffer or submodule


def _bump(*_):
    _REGISTRATIONS[0] += 1


_module_api = torch.nn.modules.module
for _hook in ("register_module_parameter_registration_hook", "register_module_buffer_registration_hook",
              "register_module_module_registration_hook"):
    getattr(_module_api, _hook)(_bump)


class ReachedModules:
    """The nn.Modules a jitted function reaches directly: f itself, a bound method's
    `self`, its closure cells, the globals its code names (and the modules of a list or
    dict there: `layers = [...]`, read as they are at each call). jit keys on their train/eval
    flags (a graph traced in training mode, with dropout and batch statistics, must not
    serve eval calls), passes their buffers as arguments while they may be written
    (module_buffers.py), and guards their identity and tensors (ModuleGuard)."""
    __slots__ = ("getters",)

    def __init__(self, getters):
        self.getters = getters

    @staticmethod
    def of(f):
        """A ReachedModules for the modules f reaches, or None when it reaches none."""
        getters = []
        if objects.module_of(f) is not None:  # a module, its bound method, a partial
            getters.append(lambda: objects.module_of(f))
        code = getattr(f, "__code__", None)
        if code is not None:
            for cell in f.__closure__ or ():
                try:
                    v = cell.cell_contents
                except ValueError:      # an empty cell
                    continue
                if objects.module_of(v) is not None:
                    getters.append(lambda cell=cell: objects.module_of(cell.cell_contents))
                elif objects.modules_in(v):  # a list or dict of layers
                    getters.append(lambda cell=cell: objects.modules_in(cell.cell_contents))
            glob = f.__globals__
            for name in code.co_names:
                if objects.module_of(glob.get(name)) is not None:
                    getters.append(lambda name=name: objects.module_of(glob.get(name)))
                elif objects.modules_in(glob.get(name)):
                    getters.append(lambda name=name: objects.modules_in(glob.get(name)))
        return ReachedModules(getters) if getters else None

    def modules(self):
        out = []
        for g in self.getters:
            m = g()
            if type(m) is list:         # the modules of a list or dict, as they are now
                out += m
            else:
                out.append(m)
        return out

    def flags(self):
        """The training flags of the modules reached (a part of the jit key)."""
        return training_flags(self.modules())


_SUBMODULES: dict = {}    # id(module) -> (registrations seen, module, submodules, those owning buffers)


def _submodules(module) -> tuple:
    """(module's submodules, those of them that own buffers), cached until some module
    registers something."""
    seen = _SUBMODULES.get(id(module))
    if seen is None or seen[0] != _REGISTRATIONS[0] or seen[1] is not module:
        subs = tuple(module.modules())
        seen = _SUBMODULES[id(module)] = (_REGISTRATIONS[0], module, subs, tuple(m for m in subs if m._buffers))
    return seen[2], seen[3]


def _trains_buffers(module) -> bool:
    """Whether a submodule of module that owns buffers is in training mode."""
    return any(m.training for m in _submodules(module)[1])


def training_flags(modules):
    """One tuple of training flags per module (None for what is no longer a module): a part
    of the jit key."""
    return ("module train/eval flags",
            tuple(tuple([s.training for s in _submodules(m)[0]]) if isinstance(m, torch.nn.Module) else None
                  for m in modules))


def module_flags(static_values):
    """The training flags of nn.Modules among static arguments (a jitted method's self)."""
    mods = [v for v in static_values if isinstance(v, torch.nn.Module)]
    return training_flags(mods) if mods else None


class ModuleGuard:
    """The graph holds the reached modules' parameters and buffers as constants, so a
    module replaced (a rebound global) or given a new parameter, buffer or submodule
    (`model.fc.weight = nn.Parameter(...)`) must retrace. The tensors are compared only
    after some module registered something (a counter the registration hooks above bump);
    the hot path compares one int and the modules' identity. `values` (PythonValues):
    the Python numbers and flags the trace may have read, compared on every call."""
    __slots__ = ("reached", "modules", "n_reached", "seen", "tensors", "values", "called", "called_flags")

    def __init__(self, reached, values=None, passed=(), called=()):
        self.reached = reached
        self.modules = (reached.modules() if reached is not None else []) + list(passed)
        self.n_reached = len(self.modules) - len(passed)
        # modules the trace called that no flag in the key covers (through a helper function,
        # an object's attribute): their train/eval flags, compared on every call
        keyed = {id(s) for m in self.modules if isinstance(m, torch.nn.Module) for s in _submodules(m)[0]}
        self.called = [m for m in called if id(m) not in keyed]
        self.called_flags = [m.training for m in self.called]
        self.seen = _REGISTRATIONS[0]
        self.tensors = self._tensors()
        self.values = values

    def _tensors(self):
        # (the submodules themselves, held: `model.act = nn.Tanh()` swaps one without tensors)
        return tuple((tuple(map(id, m.parameters())) + tuple(map(id, m.buffers())), tuple(m.modules()))
                     for m in self.modules if isinstance(m, torch.nn.Module))

    def why(self):
        """None while the entry may run, else why it must be traced again."""
        if self.reached is not None:
            now = self.reached.modules()
            if len(now) != self.n_reached or any(a is not b for a, b in zip(now, self.modules)):
                return "the module was given a new parameter, buffer or submodule since the trace"
        if self.seen != _REGISTRATIONS[0]:
            self.seen = _REGISTRATIONS[0]
            if self._tensors() != self.tensors:
                return "the module was given a new parameter, buffer or submodule since the trace"
        if self.called and [m.training for m in self.called] != self.called_flags:
            return "a module f calls was switched between train and eval mode since the trace"
        return self.values.why() if self.values is not None else None

    def holds(self):
        return self.why() is None


# ---------------------------------------------------------------- Python values the trace read

_SCALARS = frozenset({int, float, bool, str, complex, type(None), torch.dtype, torch.device})
_MISSING = object()


def _plain_value(v) -> bool:
    """A value a trace bakes in: a Python number, flag or string, or a short tuple of them."""
    kind = type(v)
    return kind in _SCALARS or (kind is tuple and len(v) <= 16 and all(type(e) in _SCALARS for e in v))


def _plain_container(v, depth=0) -> bool:
    """A short dict or list of such values, tensors or such containers, nested at most 3
    deep (a config dict, `hparams["opt"]["lr"]`, a list of weights in the closure): mutable,
    so it is compared by its contents (tensors by identity)."""
    kind = type(v)
    if kind is dict:
        items = v.values()
    elif kind is list:
        items = v
    else:
        return False
    return len(v) <= 32 and depth < 3 and all(_plain_value(e) or type(e) in _TENSORS or _function(e) or
                                              isinstance(e, torch.nn.Module) or    # (by identity)
                                              _plain_container(e, depth + 1) for e in items)


def _function(v) -> bool:
    """A function a trace may call (`self.act = F.relu`, `ACTS = {"act": F.gelu}`, a
    partial): kept by identity (functions compare by identity), so rebinding it retraces."""
    return callable(v) and not isinstance(v, (type, torch.nn.Module, torch.Tensor))


class _Same:
    """A closed-over tensor in a snapshot: compared by identity (rebinding the name to
    another tensor retraces; an in-place update of the same one is ClosureGuard's)."""
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, _Same) and other.value is self.value

    def __ne__(self, other):
        return not self == other

    def __repr__(self):
        return f"a tensor of shape {tuple(self.value.shape)}"


def _contents(v, depth=0):
    """A cell's or global's value as the snapshot keeps it: containers by their contents,
    tensors by identity."""
    kind = type(v)
    if kind is dict and depth < 4:
        return ("dict", tuple((k, _contents(e, depth + 1)) for k, e in v.items()))
    if kind is list and depth < 4:
        return ("list", tuple(_contents(e, depth + 1) for e in v))
    if kind in _TENSORS:
        return _Same(v)
    return v


_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _cell_contents(cell):
    try:
        return _contents(cell.cell_contents)
    except ValueError:          # an empty cell
        return _MISSING


def _cell_object(cell):
    try:
        return cell.cell_contents
    except ValueError:          # an empty cell
        return _MISSING


def _same(a, b) -> bool:
    return a is b or a == b


def _unchanged(before, name, value) -> bool:
    """Whether attribute `name` held `value` before the trace too."""
    return name in before and _same(before[name], _contents(value))


def _changed(where, name, old, new) -> str:
    if isinstance(old, _Same):
        return (f"the {where} tensor {name!r} was rebound to another tensor since the trace (the graph "
                "holds the old one as a constant)")
    if type(old) is tuple and old and old[0] in ("dict", "list"):
        return f"the {where} Python {old[0]} {name!r} changed since the trace"
    return f"the {where} Python value {name!r} changed ({old!r} -> {new!r}) since the trace"


def _users(fn) -> bool:
    """A function of the user's (not torch's or functx's own, whose flags are not the
    user's numbers): a global f calls by name, walked for its values."""
    module = getattr(fn, "__module__", None) or ""
    return (isinstance(fn, (types.FunctionType, types.MethodType)) or hasattr(fn, "__wrapped__")) and \
        not module.startswith(("torch", "functx"))


def _level(fn) -> int:
    """How much a function in a closure counts toward the walk's depth: functx's own wrappers
    (grad's, vmap's: jit(grad(loss)) reaches loss through two of them) nothing."""
    code = getattr(fn, "__code__", None)        # (functools.wraps gives them the user's __module__)
    return 0 if code is not None and code.co_filename.startswith(_TRANSFORMS_DIR) else 1


_TRANSFORMS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "transforms")


def _global_names(code, depth=0):
    """The names code and the functions and lambdas defined in it (its nested code objects,
    which share its globals) read as globals or attributes."""
    out = list(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType) and depth < 3:
            out += [n for n in _global_names(c, depth + 1) if n not in out]
    return out


class PythonValues:
    """The Python values a trace may have read and baked into the graph: numbers, flags and
    strings in f's closure cells (also of functions there: jit(grad(loss)) reads loss's, and
    of the rules of custom_vjp / custom_jvp functions reached) and in the globals its code
    and the lambdas and inner functions defined in it name, and the attributes of the modules jit reaches or is
    passed (Dropout's `p`, a `self.scale`; a plain tensor attribute by identity).
    Through objects (object_values.py): the attributes of a config object (SimpleNamespace,
    argparse.Namespace, a dataclass, a plain class's instance, a class) in the closure or
    the globals, held by a reached module, or a bound or jitted method's plain-object
    `self`, and of the objects those hold, chains of at most 3 attributes (`cfg.scale`,
    `self.cfg.model.temperature`, `Config.scale`), whose names the code walked names (an
    attribute f never names is not guarded), read from `__dict__`s (properties and other
    descriptors are neither evaluated nor guarded); short dicts and lists by contents.
    The functions f calls by a global or closed-over name (`act = F.relu`, a partial, a
    nonlocal helper) by identity: rebinding one retraces; a callable object's __call__
    is walked like a method f names (a schedule's `self.lr`).
    Snapshotted after each trace (what the trace left there: a counter it bumped is not a
    change), compared before each call: a changed value retraces, as torch.compile's guards
    do, instead of running with the old one. Not seen: what f computes by calling methods
    (`cfg.get_lr()`), `getattr` with a computed name, objects inside containers, deeper
    chains: pass those as arguments."""
    __slots__ = ("cells", "globals", "modules", "snapshot", "object_cells", "object_globals", "roots", "names",
                 "quick")

    def __init__(self, cells, globals_, modules, object_cells=(), object_globals=(), roots=(), names=frozenset()):
        self.cells = cells          # [(name, cell)]
        self.globals = globals_     # [(name, dict)]
        self.modules = modules      # nn.Modules (their submodules walked at each snapshot)
        self.object_cells = list(object_cells)      # [(name, cell)] holding objects (identity)
        self.object_globals = list(object_globals)  # [(name, dict)] naming objects (identity)
        self.roots = list(roots)    # [(object, path)]: objects whose named attributes are guarded
        self.names = names          # the names the code walked names
        self.snapshot = self.quick = None

    @staticmethod
    def of(f, modules=()):
        cells, globals_, seen, names = [], [], set(), set()
        object_cells, object_globals, roots = [], [], []

        def walk(fn, depth):
            fn = getattr(fn, "__func__", fn)
            code = getattr(fn, "__code__", None)
            if code is None:                # a jitted function (or another wrapper): what it wraps
                wrapped = getattr(fn, "__wrapped__", None)
                if wrapped is not None and depth < 3 and id(fn) not in seen:
                    seen.add(id(fn))
                    walk(wrapped, depth + 1)
                    # a wrapper holding more of the user's functions: custom_vjp's fwd and bwd,
                    # custom_jvp's rule, which the trace ran too (jit(grad(f)) bakes them in)
                    for v in list(getattr(fn, "__dict__", {}).values()):
                        if v is not wrapped and callable(v) and _users(v):
                            walk(v, depth + 1)
                elif callable(fn) and objects.walkable(fn) and id(fn) not in seen:
                    seen.add(id(fn))        # a callable object of the user's: its __call__
                    roots.append((fn, "self"))
                    for m in objects.methods(fn, ("__call__",)):
                        walk(m, depth + 1)
                return
            if id(fn) in seen:
                return
            seen.add(id(fn))
            objects.code_names(code, names)
            for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
                try:
                    v = cell.cell_contents
                except ValueError:          # an empty cell
                    continue
                if _plain_value(v) or _plain_container(v) or type(v) in _TENSORS:
                    cells.append((name, cell))
                elif objects.walkable(v):
                    object_cells.append((name, cell))
                    roots.append((v, name))
                    _walk_call(v, depth)
                elif callable(v) and not isinstance(v, torch.nn.Module):
                    object_cells.append((name, cell))   # a function f calls: rebinding it retraces
                    if depth < 3:
                        walk(v, depth + _level(v))
            glob = getattr(fn, "__globals__", {})
            for name in _global_names(code):
                v = glob.get(name, _MISSING)
                if _plain_value(v) or _plain_container(v) or type(v) in _TENSORS:
                    globals_.append((name, glob))
                elif objects.walkable(v) and isinstance(glob, dict):
                    object_globals.append((name, glob))
                    roots.append((v, name))
                    _walk_call(v, depth)
                elif callable(v) and not isinstance(v, torch.nn.Module) and isinstance(glob, dict):
                    object_globals.append((name, glob))     # rebinding it (`act = F.gelu`) retraces
                    if depth < 3 and _users(v):
                        walk(v, depth + 1)  # a helper f calls by name: its own values

        def _walk_call(v, depth):
            if callable(v) and not isinstance(v, type) and depth < 3:
                for m in objects.methods(v, ("__call__",)):   # a schedule object f calls: its reads
                    walk(m, depth + 1)

        owner = getattr(f, "__self__", None)
        if owner is not None and not isinstance(owner, torch.nn.Module) and objects.walkable(owner):
            roots.append((owner, "self"))   # a bound method of a plain object
        walk(getattr(f, "__func__", f), 0)
        module_list = []
        for m in modules:
            if isinstance(m, torch.nn.Module):
                module_list.append(m)
            elif objects.walkable(m):       # a jitted method's plain-object self
                roots.append((m, "self"))
        forwards = set()
        for m in module_list:               # the globals a reached module's own forward names, and
            for sub in _submodules(m)[0]:   # its user-defined submodules' (a child reading self.cfg)
                kind = type(sub)
                if (sub is m or _users(kind.forward)) and kind not in forwards:
                    forwards.add(kind)
                    walk(getattr(kind.forward, "__func__", kind.forward), 2)
        for _ in range(3):                  # methods called through self or a config object
            before = len(seen)
            for obj, _path in list(roots):
                for fn in objects.methods(obj, sorted(names)):
                    walk(fn, 2)
            if len(seen) == before:
                break
        if not (cells or globals_ or module_list or roots or object_cells or object_globals):
            return None
        return PythonValues(cells, globals_, module_list, object_cells, object_globals, roots, frozenset(names))

    def _object_reads(self):
        starts = [(obj, path, 0) for obj, path in self.roots]
        starts += [(sub, type(sub).__name__, 0) for m in self.modules for sub in _submodules(m)[0]]
        if not starts:
            return {}
        return objects.reads(starts, self.names, _plain_value, _plain_container, _contents)

    def capture(self):
        """The values now (before a trace): what the trace then changes is f's own state."""
        cells = tuple(_cell_contents(c) for _, c in self.cells)
        globals_ = tuple(_contents(g.get(n, _MISSING)) for n, g in self.globals)
        attrs = {}
        for m in self.modules:
            for sub in _submodules(m)[0]:
                attrs[id(sub.__dict__)] = {n: _contents(v) for n, v in sub.__dict__.items()
                                           if _plain_value(v) or type(v) in _TENSORS or _function(v)}
        roots = (tuple(_cell_object(c) for _, c in self.object_cells),
                 tuple(g.get(n, _MISSING) for n, g in self.object_globals))
        reads = {k: {n: _contents(e[1]) for n, e in named.items() if e[3] != "absent"}
                 for k, named in self._object_reads().items()}
        return cells, globals_, attrs, roots, reads

    def _module_values(self, before=None):
        """[(module's __dict__, getter of its plain attributes, their values, ...)],
        [(__dict__, name, tensor, ...)] for the plain tensors it holds as attributes, and
        [(hook dict, its keys, ...)]: a forward hook added or removed changes f."""
        plain, tensors, hooks = [], [], []
        if any(isinstance(m, torch.nn.Module) for m in self.modules):
            hooks.append((_module_api._global_forward_hooks, "global forward hooks"))
            hooks.append((_module_api._global_forward_pre_hooks, "global forward pre-hooks"))
        for m in self.modules:
            for sub in _submodules(m)[0]:
                d = sub.__dict__
                if isinstance(sub, torch.nn.Module):      # a hook registered or removed: f changed
                    hooks.append((sub._forward_hooks, f"forward hooks of a {type(sub).__name__}"))
                    hooks.append((sub._forward_pre_hooks, f"forward pre-hooks of a {type(sub).__name__}"))
                kept = before.get(id(d), {}) if before is not None else None
                names = [n for n, v in d.items() if n != "training" and _plain_value(v)
                         and (kept is None or _unchanged(kept, n, v))]
                kind = f"{type(sub).__name__} {'module' if isinstance(sub, torch.nn.Module) else 'object'}"
                if names:
                    getter = operator.itemgetter(*names)
                    plain.append((d, getter, getter(d), names, kind))
                tensors += [(d, n, v, kind) for n, v in d.items() if (type(v) is torch.Tensor or _function(v))
                            and (kept is None or _unchanged(kept, n, v))]
        dicts = [h for h, _ in hooks]
        return plain, tensors, (dicts, tuple(map(len, dicts)), [(h, tuple(h), what) for h, what in hooks if h])

    def take(self, before=None):
        """Snapshot the values now (after a trace). With `before` (capture() before the trace),
        a value the trace itself changed (a counter f bumps, `self.last_shape = x.shape`) is
        f's own state, not an input of the graph: it is not guarded (else every call with
        another shape would trace again)."""
        reads = self._object_reads()
        if before is not None:
            cells, globals_, attrs, (object_cells, object_globals), kept = before
            self.cells = [(n, c) for (n, c), b in zip(self.cells, cells) if _same(b, _cell_contents(c))]
            self.globals = [(n, g) for (n, g), b in zip(self.globals, globals_)
                            if _same(b, _contents(g.get(n, _MISSING)))]
            self.object_cells = [(n, c) for (n, c), b in zip(self.object_cells, object_cells)
                                 if _cell_object(c) is b]
            self.object_globals = [(n, g) for (n, g), b in zip(self.object_globals, object_globals)
                                   if g.get(n, _MISSING) is b]
            reads = {k: {n: e for n, e in named.items()
                         if e[3] == "absent" or _unchanged(kept.get(k, {}), n, e[1])}
                     for k, named in reads.items()}
        self.snapshot = (tuple(_cell_contents(c) for _, c in self.cells),
                         tuple(_contents(g.get(n, _MISSING)) for n, g in self.globals),
                         self._module_values(before[2] if before is not None else None)
                         if self.modules else None,
                         (tuple(_cell_object(c) for _, c in self.object_cells),
                          tuple(g.get(n, _MISSING) for n, g in self.object_globals),
                          objects.snapshot(reads, _contents)) if reads or self.object_cells or self.object_globals
                         else None)
        self.quick = self._quick()

    def _quick(self):
        """The snapshot's checks as one generated function (object_values.quick_check): an
        unchanged float or config object costs an identity test, not a loop's iteration."""
        cells, globals_, modules, reached = self.snapshot
        terms, values = [], {"_M": _MISSING, "_cc": _cell_contents, "_ct": _contents}

        def name(v):
            k = f"_v{len(values)}"
            values[k] = v
            return k

        for (_, c), old in zip(self.cells, cells):
            cn, on = name(c), name(old)
            terms.append(f"({cn}.cell_contents is {on} or _cc({cn}) == {on})")
        for (n, g), old in zip(self.globals, globals_):
            gn, on = name(g), name(old)
            terms.append(f"({gn}.get({n!r}, _M) is {on} or _ct({gn}.get({n!r}, _M)) == {on})")
        if reached is not None:
            object_cells, object_globals, snap = reached
            terms += [f"{name(c)}.cell_contents is {name(old)}" for (_, c), old in zip(self.object_cells, object_cells)]
            terms += [f"{name(g)}.get({n!r}, _M) is {name(old)}"
                      for (n, g), old in zip(self.object_globals, object_globals)]
            objects.check_terms(snap, terms, values)
        if modules is not None:
            plain, tensors, (hook_dicts, hook_counts, hooked) = modules
            terms += [f"len({name(h)}) == {k}" for h, k in zip(hook_dicts, hook_counts)]
            terms += [f"tuple({name(h)}) == {name(keys)}" for h, keys, _ in hooked]
            objects.check_terms(objects.ObjectSnapshot(plain, [(d, None, t, [n], None) for d, n, t, _ in tensors],
                                                       (), ()), terms, values)
        return objects.quick_check(terms, values) or (lambda: True)

    def why(self):
        """None while the values the trace read are unchanged, else why it must be traced again."""
        try:
            if self.quick():
                return None
        except Exception:       # a name deleted, an empty cell: the slow path says what changed
            pass
        return self._why()

    def _why(self):
        cells, globals_, modules, reached = self.snapshot
        for (name, cell), old in zip(self.cells, cells):
            try:
                if cell.cell_contents is old:       # a number or string not rebound: the hot path
                    continue
            except ValueError:
                pass
            new = _cell_contents(cell)
            if new is not old and new != old:
                return _changed("closed-over", name, old, new)
        for (name, glob), old in zip(self.globals, globals_):
            new = glob.get(name, _MISSING)
            if new is old:
                continue
            new = _contents(new)
            if new is not old and new != old:
                return _changed("global", name, old, new)
        if reached is not None:
            object_cells, object_globals, snap = reached
            for (name, cell), old in zip(self.object_cells, object_cells):
                if _cell_object(cell) is not old:
                    return f"the closed-over object {name!r} was rebound since the trace"
            for (name, glob), old in zip(self.object_globals, object_globals):
                if glob.get(name, _MISSING) is not old:
                    return f"the global object {name!r} was rebound since the trace"
            why = objects.why(snap, _contents, _MISSING)
            if why is not None:
                return why
        if modules is None:
            return None
        plain, tensors, (hook_dicts, hook_counts, hooked) = modules
        if tuple(map(len, hook_dicts)) != hook_counts:
            return "a forward hook was registered or removed since the trace"
        for h, keys, what in hooked:
            if tuple(h) != keys:
                return f"the {what} changed since the trace"
        for d, getter, old, names, kind in plain:
            try:
                new = getter(d)
            except KeyError:
                new = _MISSING
            if new is not old and new != old:
                name = names[0] if len(names) == 1 else next(
                    (n for n, a in zip(names, old) if d.get(n, _MISSING) != a), names[0])
                return f"attribute {name!r} of a {kind} changed since the trace"
        for d, name, t, kind in tensors:
            if d.get(name) is not t:
                return f"the tensor or function attribute {name!r} of a {kind} was rebound since the trace"
        return None
