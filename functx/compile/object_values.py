"""Guards on the Python values a trace read through objects (closure_guard.PythonValues'
object part): a config object's attributes (`cfg.scale`, `args.lr`, `self.cfg.dropout`,
`cfg.model.temperature`, a class attribute `Config.scale`).

The roots are the objects in f's closure cells and the globals its code names (and those of
the functions reached from them), a bound method's or jitted method's plain-object `self`,
and the objects held as attributes by the modules jit reaches. From them, only attributes
whose names the code of f (and of the functions walked with it) names are guarded: a
`state.step` counter f never reads does not retrace. Chains of at most _DEPTH attributes.
The guard reads each object's `__dict__` (a class's for class attributes) directly, never
the attribute: a property, a `__slots__` member or another data descriptor is skipped (not
guarded, not evaluated), and so is what a `__getattr__` or `__getattribute__` computes
(only what `__dict__` holds under the names f names is guarded). Values: numbers, flags, strings and short tuples of them by equality; tensors and
objects by identity (rebinding retraces; an in-place update of the same tensor is
ClosureGuard's); short dicts and lists of those by contents.
"""
from __future__ import annotations

import contextlib
import functools
import operator
import sysconfig
import types

import torch

_DEPTH = 3            # objects walked: the root and two below it (`self.cfg.model.temperature`)
_MAX_OBJECTS = 64     # objects walked per function
_OWN = ("torch", "functx", "builtins")


def code_names(code, out=None) -> set:
    """The attribute and global names a code object (and the code nested in it: lambdas,
    comprehensions, inner functions) names, and its identifier-like string constants
    (`getattr(cfg, "lr")`)."""
    out = set() if out is None else out
    out.update(code.co_names)
    for c in code.co_consts:
        if isinstance(c, str):
            if c.isidentifier():
                out.add(c)
        elif isinstance(c, types.CodeType):
            code_names(c, out)
    return out


def _user_type(kind) -> bool:
    return not (getattr(kind, "__module__", None) or "builtins").startswith(_OWN)


def instance_dict(v):
    """v's own __dict__ read without evaluating an attribute (None: it has none)."""
    try:
        d = object.__getattribute__(v, "__dict__")
    except (AttributeError, TypeError):
        return None
    return d if type(d) is dict else None


_NOT_OBJECTS = (torch.nn.Module, torch.Tensor, types.FunctionType, types.MethodType, types.BuiltinFunctionType,
                types.ModuleType, functools.partial, types.CodeType)
# Python modules installed or standard: not the user's configuration
_LIBRARY_DIRS = tuple(sorted({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}))


def _user_module(m) -> bool:
    """A Python module of the user's own (a `config.py` beside the script: `config.LR`), not
    one installed or standard. Read from its __dict__ (a module __getattr__ is not run)."""
    d = m.__dict__
    path, name = d.get("__file__"), d.get("__name__")
    return isinstance(path, str) and isinstance(name, str) and not path.startswith(_LIBRARY_DIRS) \
        and not name.startswith(_OWN)


def walkable(v) -> bool:
    """An object whose attributes a trace may read by name: an instance of a user's class
    with a __dict__ (types.SimpleNamespace, argparse.Namespace, a dataclass, a plain class),
    a user's class, or a user's Python module; not an nn.Module (ModuleGuard's), tensor,
    function, installed or standard module, or an object of torch's or functx's own."""
    if isinstance(v, types.ModuleType):
        return _user_module(v)
    if isinstance(v, type):
        return _user_type(v) and not issubclass(v, torch.nn.Module)
    kind = type(v)
    if isinstance(v, _NOT_OBJECTS) or not (_user_type(kind) or kind is types.SimpleNamespace):
        return False
    return instance_dict(v) is not None


def _data_descriptor(v) -> bool:
    kind = type(v)
    return hasattr(kind, "__set__") or hasattr(kind, "__delete__")


def _lookup(obj, name):
    """Where `obj.name` comes from, without evaluating it: (key, dict, value, [(key, dict)]
    that must keep not holding it; a key is the id of the instance dict or of the class), or None (a property or another data descriptor, a __getattr__'s answer,
    absent)."""
    own = None
    if not isinstance(obj, type):
        own = instance_dict(obj)
        obj = type(obj)
        for k in obj.__mro__[:-1]:                  # a property wins over the instance's dict
            if name in k.__dict__:
                if _data_descriptor(k.__dict__[name]):
                    return None
                break
    chain = [(id(own), own)] if own is not None else []
    for k in obj.__mro__[:-1]:
        chain.append((id(k), type.__getattribute__(k, "__dict__")))    # a new mappingproxy each time
    for i, (key, d) in enumerate(chain):
        if name in d:
            return key, d, d[name], chain[:i]
    return None


def methods(obj, names):
    """The user's functions obj's class defines under the given names (`self.helper(x)`):
    walked for their own names and values."""
    kind = obj if isinstance(obj, type) else type(obj)
    out = []
    for name in names:
        for k in kind.__mro__[:-1]:
            v = k.__dict__.get(name)
            if v is not None:
                v = getattr(v, "__func__", v)     # staticmethod, classmethod
                if isinstance(v, types.FunctionType) and _user_type(k):
                    out.append(v)
                break
    return out


class ObjectSnapshot:
    """The attributes guarded on the objects reached, as they are now: `plain` [(dict,
    itemgetter, values, names, what)] compared by equality, `same` [(dict, itemgetter,
    values, names, what)] by identity, `contents` [(dict, name, contents, what)] (dicts and
    lists), `absent` [(dict, name, what)]: names an instance must keep not holding (its
    class's value is guarded)."""
    __slots__ = ("plain", "same", "contents", "absent")

    def __init__(self, plain, same, contents, absent):
        self.plain, self.same, self.contents, self.absent = plain, same, contents, absent


def reads(starts, names, is_plain, is_container, contents):
    """{key: {name: (dict, value, what, kind)}} (key: the id of an instance dict or class) for the attributes a trace may have read
    from the objects reached from `starts` [(object, path, depth)] through attributes in
    `names`; kind is "plain", "same" (tensors, objects: identity), "contents" or "absent"."""
    out, seen, walked, queue = {}, set(), 0, list(starts)
    while queue and walked < _MAX_OBJECTS:
        obj, path, depth = queue.pop(0)
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):       # a reached module: its attributes are ModuleGuard's;
            d = obj.__dict__                       # only the objects it holds are walked here
            for name, v in d.items():
                if name in names and walkable(v):
                    what = f"{name!r} of a {type(obj).__name__} module ({path}.{name})"
                    out.setdefault(id(d), {})[name] = (d, v, what, "same")
                    queue.append((v, f"{path}.{name}", depth + 1))
            continue
        walked += 1
        for name in _candidates(obj, names):
            found = _lookup(obj, name)
            if found is None:
                continue
            key, d, v, shadowing = found
            owner = f"class {obj.__name__}" if isinstance(obj, type) else f"{type(obj).__name__} object"
            what = f"{name!r} of a {owner} ({path}.{name})"
            if is_plain(v):
                kind = "plain"
            elif type(v) in (torch.Tensor, torch.nn.Parameter):
                kind = "same"
            elif is_container(v):
                kind = "contents"
            elif walkable(v):
                kind = "same"
                if depth + 1 < _DEPTH:
                    queue.append((v, f"{path}.{name}", depth + 1))
            elif callable(v) and not isinstance(v, (type, torch.nn.Module)):
                kind = "same"                      # a function it holds (`cfg.act = F.relu`): identity
            else:
                continue                           # other objects: not values
            out.setdefault(key, {})[name] = (d, v, what, kind)
            for k, s in shadowing:                 # a class attribute: the instance must not shadow it
                out.setdefault(k, {})[name] = (s, None, what, "absent")
    return out


def _candidates(obj, names):
    """The names in `names` obj's class chain or its own dict holds (no dunders)."""
    kind = obj if isinstance(obj, type) else type(obj)
    out = [n for k in kind.__mro__[:-1] if _user_type(k) for n in k.__dict__ if n in names]
    own = None if isinstance(obj, type) else instance_dict(obj)
    out += [n for n in own or () if n in names]
    return [n for n in dict.fromkeys(out) if not n.startswith("__")]


def snapshot(found, contents) -> ObjectSnapshot:
    """An ObjectSnapshot of reads()' answer."""
    groups = {"plain": {}, "same": {}}
    kept_contents, absent = [], []
    for key, entries in found.items():
        for name, (d, v, what, kind) in entries.items():
            if kind in groups:
                groups[kind].setdefault(key, (d, []))[1].append((name, what))
            elif kind == "contents":
                kept_contents.append((d, name, contents(v), what))
            else:
                absent.append((d, name, what))
    made = {}
    for kind, by_dict in groups.items():
        made[kind] = []
        for d, named in by_dict.values():
            names = [n for n, _ in named]
            getter = operator.itemgetter(*names)
            made[kind].append((d, getter, getter(d), names, [w for _, w in named]))
    return ObjectSnapshot(made["plain"], made["same"], kept_contents, absent)


def _describe(what, old, new=None) -> str:
    if isinstance(old, torch.Tensor):
        return f"the tensor attribute {what} was rebound since the trace (the graph holds the old one)"
    if new is None:
        return f"attribute {what} changed since the trace"
    return f"attribute {what} changed ({old!r} -> {new!r}) since the trace"


def why(snap: ObjectSnapshot, contents, missing):
    """None while the attributes snap holds are unchanged, else why the trace is stale."""
    for d, getter, old, names, whats in snap.plain:
        try:
            new = getter(d)
        except KeyError:
            new = missing
        if new is not old and new != old:
            if len(names) == 1:
                return _describe(whats[0], old, new if new is not missing else None)
            for n, w, a in zip(names, whats, old):
                b = d.get(n, missing)
                if b is not a and b != a:
                    return _describe(w, a, b if b is not missing else None)
            return _describe(whats[0], old)
    for d, getter, old, names, whats in snap.same:
        try:
            new = getter(d)
        except KeyError:
            return _describe(whats[0], old)
        if len(names) == 1:
            if new is not old:
                return _describe(whats[0], old)
        elif any(map(operator.is_not, new, old)):
            w, a = next((w, a) for w, a, b in zip(whats, old, new) if a is not b)
            return _describe(w, a)
    for d, name, old, what in snap.contents:
        if contents(d.get(name, missing)) != old:
            return f"the Python container {what} changed since the trace"
    for d, name, what in snap.absent:
        if name in d:
            return f"attribute {what} was set on the instance since the trace (its class's value was traced)"
    return None


def quick_check(terms, values):
    """One function that is True while every term holds (the hot path of a guard: one
    call, no loops; on False or an exception the caller finds out why the slow way).
    terms: Python expressions over the names in `values`."""
    if not terms:
        return None
    namespace = dict(values)
    exec(f"def quick():\n    return ({' and '.join(terms)})\n", namespace)   # noqa: S102
    return namespace["quick"]


def check_terms(snap: ObjectSnapshot, terms, values):
    """Add snap's checks to terms (expressions) and values (the names they use; `_M` the
    missing marker and `_ct` the contents function are there)."""
    def name(v):
        k = f"_v{len(values)}"
        values[k] = v
        return k

    for d, getter, old, names, _ in snap.plain:
        if len(names) == 1:
            dn, on, key = name(d), name(old), repr(names[0])
            terms.append(f"({dn}.get({key}, _M) is {on} or {dn}.get({key}, _M) == {on})")
        else:
            terms.append(f"{name(getter)}({name(d)}) == {name(old)}")
    for d, getter, old, names, _ in snap.same:
        dn = name(d)
        for n, o in zip(names, old if len(names) > 1 else (old,)):
            terms.append(f"{dn}.get({n!r}, _M) is {name(o)}")
    for d, n, old, _ in snap.contents:
        terms.append(f"_ct({name(d)}.get({n!r}, _M)) == {name(old)}")
    for d, n, _ in snap.absent:
        terms.append(f"{n!r} not in {name(d)}")


def module_of(v):
    """The module v is, or whose bound method (`fwd = model.forward`) or partial it is."""
    v = v.func if isinstance(v, functools.partial) else v
    v = v if isinstance(v, torch.nn.Module) else getattr(v, "__self__", None)
    return v if isinstance(v, torch.nn.Module) else None


def modules_in(v):
    """The modules a short list, tuple or dict holds (`layers = [nn.Linear(..), ...]`), [] if none."""
    kind = type(v)
    if kind is dict:
        v = v.values()
    elif kind is not list and kind is not tuple:
        return []
    return [m for m in v if isinstance(m, torch.nn.Module)] if len(v) <= 64 else []


@contextlib.contextmanager
def called_modules():
    """{id: module} of the modules whose forward runs in the block (a trace)."""
    seen = {}

    def record(module, _args):
        seen[id(module)] = module

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        yield seen
    finally:
        handle.remove()
