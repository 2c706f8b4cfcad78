"""Graph rewrites at trace time: the trace of a Hessian becomes the Laplacian.

Under jit, `functx.hessian(f)(x)` (transforms/collapsed.py) also stages f's Laplacian at x,
by collapsed Taylor mode, and marks the Hessian with it. `torch.trace(h)`, `h.trace()`,
`torch.einsum('ii', h)` and `h.diagonal().sum()` of that unchanged Hessian then return the
Laplacian, and dead-code elimination drops whichever of the two graphs is unused. Each
rewrite is recorded for functx.explain (GraphMeta.rewrites).
"""
from __future__ import annotations

import torch

_recorders: list = []
REWRITTEN = _FUNCS = frozenset([torch.trace, torch.Tensor.trace, torch.einsum, torch.diagonal, torch.Tensor.diagonal,
                    torch.sum, torch.Tensor.sum])


class record_rewrites:
    """Context manager collecting a line per rewrite made while tracing."""

    def __enter__(self):
        self.lines: list[str] = []
        _recorders.append(self.lines)
        return self.lines

    def __exit__(self, *exc):
        # by identity: nested recorders (a graph traced inside a trace) hold equal lists
        del _recorders[next(i for i, r in enumerate(_recorders) if r is self.lines)]


grad_mode_watchers: list = []


class watch_grad_mode:
    """Context manager: its value is a list that gets an entry when a torch function runs on
    a functx tensor with grad mode off (a staged graph does not keep grad mode, so a graph
    of such a function cannot be replayed under reverse mode)."""

    def __enter__(self):
        self.seen: list = []
        grad_mode_watchers.append(self.seen)
        return self.seen

    def __exit__(self, *exc):
        del grad_mode_watchers[next(i for i, r in enumerate(grad_mode_watchers) if r is self.seen)]


def mark_hessian(h, laplacian, name):
    """h (a TracerTensor) is the (n, n) Hessian of the scalar function `name` at a point whose
    Laplacian is the TracerTensor `laplacian`."""
    h._rewrite = ("hessian", h._value, h._version_, laplacian, name, h)


def _record(t, kind):
    """t's mark if it has one of this kind and neither t nor the Hessian was written since."""
    mark = getattr(t, "_rewrite", None)
    if mark is None or mark[0] != kind or t._value is not mark[1] or t._version_ != mark[2]:
        return None
    hess = mark[5]
    if hess is not t and (hess._version_ != hess._rewrite[2] or hess._value is not hess._rewrite[1]):
        return None
    return mark


def _rewritten(mark):
    line = f"rewrite: trace(hessian({mark[4]})) -> laplacian({mark[4]}) (collapsed Taylor mode)"
    for lines in _recorders:
        if line not in lines:
            lines.append(line)
    return mark[3].clone()       # a fresh tensor: writes into the result must not reach the mark


def _is_main_diagonal(args, kwargs):
    """diagonal(h, offset=0, dim1=0, dim2=1) of a 2-d h, in any spelling that means it."""
    names = ("offset", "dim1", "dim2")
    given = dict(zip(names, args[1:]))
    given.update(kwargs)
    if set(given) - set(names):
        return False
    dims = {given.get("dim1", 0) % 2, given.get("dim2", 1) % 2}
    return given.get("offset", 0) == 0 and dims == {0, 1}


def rewrite(func, args, kwargs, default):
    """The rewritten result of func(*args, **kwargs), or NotImplemented. default(): the call
    as torch makes it."""
    if grad_mode_watchers and not torch.is_grad_enabled():
        for seen in grad_mode_watchers:
            seen.append(func)
    if func not in _FUNCS or not args:
        return NotImplemented
    kwargs = kwargs or {}
    if func is torch.trace or func is torch.Tensor.trace:
        mark = _record(args[0], "hessian") if len(args) == 1 and not kwargs else None
    elif func is torch.einsum:
        operands = args[1:] if len(args) != 2 or isinstance(args[1], torch.Tensor) else tuple(args[1])
        ok = isinstance(args[0], str) and args[0].replace(" ", "") in ("ii", "ii->") and len(operands) == 1
        mark = _record(operands[0], "hessian") if ok and not kwargs else None
    elif func is torch.sum or func is torch.Tensor.sum:
        mark = _record(args[0], "diagonal") if len(args) == 1 and not kwargs else None
    else:       # diagonal: the result is marked; its sum() is the trace
        mark = _record(args[0], "hessian")
        if mark is None or not _is_main_diagonal(args, kwargs):
            return NotImplemented
        d = default()
        d._rewrite = ("diagonal", d._value, d._version_, mark[3], mark[4], args[0])
        return d
    return NotImplemented if mark is None else _rewritten(mark)
