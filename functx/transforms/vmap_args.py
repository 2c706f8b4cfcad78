"""The transforms' argument and output checks: vmap's in_axes/out_axes specs, readable
argument names, the one batch size every mapped argument must share (errors name the
argument), and that a function's outputs are tensors."""
from __future__ import annotations

import inspect

import torch

from ..core.errors import AxisError, UsageError
from ..core.trace import Tracer, type_of
from ..tree_util import tree_flatten

LEAF = tree_flatten(0)[1]      # the structure of a bare leaf (a function returning one tensor)
TENSOR_LEAF = (torch.Tensor, Tracer)


def check_tensor_leaves(leaves, what, treedef, hint=None, skip=None):
    """skip: per leaf, None where any leaf is accepted (vmap's out_axes)."""
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, TENSOR_LEAF) and (skip is None or skip[i] is not None):
            where = f" at {treedef.paths()[i]}"
            if hint is None:
                hint = "; Python floats are accepted, ints and bools are not (pass 3.0, not 3)" \
                    if isinstance(leaf, (int, bool)) else ""
            raise UsageError(f"{what}: expected tensors, but leaf {i}{where} is a "
                            f"{type(leaf).__name__} ({leaf!r:.60}){hint}")


def check_axes_spec(spec, name):
    leaves, _ = tree_flatten(spec) if not isinstance(spec, (int, type(None))) else ([spec], None)
    for leaf in leaves:
        if not (leaf is None or (isinstance(leaf, int) and not isinstance(leaf, bool))):
            raise UsageError(f"functx.vmap: {name} must be an int, None, or a pytree of those; got {spec!r}")


def leaf_names(treedef, fn=None) -> list:
    """Readable names for the leaves of an (args, kwargs) tree: "argument 'x' (args[0]['w'])"."""
    try:
        params = [q.name for q in inspect.signature(fn).parameters.values()
                  if q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD)] if fn is not None else []
    except (TypeError, ValueError):
        params = []
    names = []
    for path in treedef.paths():
        if len(path) < 2:
            names.append(f"argument {path!r}")
            continue
        if path[0] == 0:
            base, label = f"args[{path[1]}]", params[path[1]] if path[1] < len(params) else None
        else:
            base, label = f"kwargs[{path[1]!r}]", path[1]
        where = base + "".join(f"[{k!r}]" for k in path[2:])
        names.append(f"argument '{label}' ({where})" if label else f"argument {where}")
    return names


def describe_unbatched(k, treedef, fn):
    """"argument 1 ('w', in_axes None)" for leaf k of an (args, kwargs) tree."""
    path = treedef.paths()[k]
    if len(path) < 2:
        return f"argument {path!r} (in_axes None)"
    sub = "".join(f"[{p!r}]" for p in path[2:])
    if path[0] != 0:
        return f"keyword argument {path[1]!r}{sub} (in_axes None)"
    label = leaf_names(treedef, fn)[k].split(" (")[0]
    label = f"{label.split(' ', 1)[1]}, " if "'" in label else ""
    return f"argument {path[1]}{sub} ({label}in_axes None)"


class _LazyNames:
    __slots__ = ("treedef", "fn", "names")

    def __init__(self, treedef, fn):
        self.treedef, self.fn, self.names = treedef, fn, None

    def __getitem__(self, i):
        if self.names is None:
            self.names = leaf_names(self.treedef, self.fn)
        return self.names[i]


def batch_size(leaves, axes, axis_size, treedef, fn=None):
    sizes = []
    names = _LazyNames(treedef, fn)     # for error messages only (inspect.signature is slow)
    for i, (leaf, ax) in enumerate(zip(leaves, axes)):
        if ax is None:
            continue
        if not isinstance(leaf, (torch.Tensor, Tracer)):
            raise UsageError(f"functx.vmap: in_axes maps {names[i]}, which is a {type(leaf).__name__}, "
                            "not a tensor; give it in_axes None")
        nd = leaf.dim() if isinstance(leaf, torch.Tensor) else type_of(leaf).ndim
        if not -nd <= ax < nd or nd == 0:
            raise AxisError(f"functx.vmap: in_axes={ax} is out of range for {names[i]} of shape "
                             f"{tuple(leaf.shape)}")
        sizes.append((i, leaf.shape[ax], ax))
    if not sizes:
        if axis_size is None:
            raise ValueError("functx.vmap: no argument is mapped (all in_axes are None); pass axis_size")
        return axis_size
    size = sizes[0][1]
    # compared one by one, not as a set: a symbolic size (jit) is not hashable
    if any(s != size for _, s, _ in sizes):
        detail = ", ".join(f"{names[i]} has size {s} along axis {ax}" for i, s, ax in sizes)
        raise ValueError(f"functx.vmap: mapped arguments have different batch sizes: {detail}")
    if axis_size is not None and axis_size != size:
        raise ValueError(f"functx.vmap: axis_size={axis_size} but the mapped arguments have size {size}")
    return size
