"""Big temporaries of the eager backend's generated code come from a block cache shared by
every compiled function, and go back to it when dead (torch's CUDA caching allocator, in
small, for the CPU). Why: glibc hands big blocks back to the system when they are freed,
so every call page-faults on its fresh intermediates (a DSM step on the eager backend:
14.5 ms of CPU time per call, 11.0 ms with malloc keeping its memory). The fused tiers
assign slots per function instead (fusion/buffer_pool.py).

Works on the generated lines: a line `tN = torch.f(...)` (f from POOLABLE: functions that
take `out=` and return a fresh tensor), `tN = torch.addmm(...)` or `tN = x @ y` whose value
has at least MIN_ELEMENTS elements of a floating dtype and a static shape, and that neither
is returned nor aliases anything returned, becomes

    _bN = _take((4096, 128), torch.float32)
    tN = torch.f(..., out=_bN)
    ...                             # the last line reading tN or a view of it
    _give(_bN)

Graphs with an asynchronously issued collective are left alone (it reads its operand until
waited for). Any other line is taken to return a view of what it reads (conservative: its result keeps
those blocks taken and, when returned, keeps them out of the cache). Concurrent calls take
different blocks; the cache keeps at most MAX_CACHED_BYTES of free blocks.
"""
from __future__ import annotations

import math
import re

import torch

POOLABLE = frozenset(("add sub mul div neg tanh exp exp2 log log1p expm1 sin cos sigmoid sqrt rsqrt "
                      "abs maximum minimum pow reciprocal square addmm sum").split())
MIN_ELEMENTS = 1 << 16          # smaller blocks come from malloc's heap without page faults
MAX_CACHED_BYTES = 1 << 30    # free blocks kept, in total

_NAME = re.compile(r"\b[tac]\d+\b")
_CALL = re.compile(r"^torch\.(\w+)\((.*)\)$", re.S)


def _single_call(expr: str) -> bool:
    """Is expr one call whose opening parenthesis closes at its last character?"""
    depth = 0
    for i, ch in enumerate(expr):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0 and i != len(expr) - 1:
                return False
    return depth == 0


def pooled_form(expr: str, slot: str) -> str | None:
    """expr writing into `slot`, or None if it can't take `out=`."""
    m = _CALL.match(expr)
    if m and m.group(1) in POOLABLE and _single_call(expr[len("torch.") + len(m.group(1)):]):
        return f"{expr[:-1]}, out={slot})"
    parts = expr.split(" @ ")
    if len(parts) == 2 and "(" not in expr and " " not in parts[0] + parts[1]:
        return f"torch.matmul({parts[0]}, {parts[1]}, out={slot})"
    return None


def _split(line: str):
    """(lhs names, rhs expression, comment) of `    t3 = expr  # type`, or None."""
    body, _, comment = line.strip().partition("  # ")
    if " = " not in body or body.startswith(("del ", "return ")):
        return None
    lhs, rhs = body.split(" = ", 1)
    names = [n.strip() for n in lhs.split(",") if n.strip()]
    return names, rhs, comment


def pool_lines(lines: list, types: dict) -> list:
    """The generated function `lines` (def line, statements, return line, before
    free_dead_names) with its big temporaries taken from and given back to the block cache;
    types: temp name -> TensorType."""
    parsed = [_split(l) if 0 < i < len(lines) - 1 else None for i, l in enumerate(lines)]
    roots: dict = {}
    candidates = []
    for i, p in enumerate(parsed):
        if p is None:
            continue
        names, rhs, _ = p
        reads = set(_NAME.findall(rhs))
        if len(names) == 1 and pooled_form(rhs, "_") is not None:       # a fresh result
            roots[names[0]] = {names[0]}
            t = types.get(names[0])
            if t is not None and t.dtype.is_floating_point and t.device.type == "cpu" \
                    and all(type(n) is int for n in t.shape) and math.prod(t.shape) >= MIN_ELEMENTS:
                candidates.append(i)
            continue
        alias = set().union(*(roots.get(n, set()) for n in reads)) if reads else set()
        for n in names:
            roots[n] = alias | {n}
    escaping = set().union(*(roots.get(n, {n}) for n in _NAME.findall(lines[-1])))
    last_use: dict = {}
    for i, line in enumerate(lines[1:-1], 1):
        for n in _NAME.findall(line.split("  # ", 1)[0]):
            for b in roots.get(n, ()):
                last_use[b] = max(last_use.get(b, -1), i)
    before: dict = {}
    after: dict = {}
    for i in candidates:
        names, rhs, comment = parsed[i]
        name = names[0]
        if name in escaping:
            continue
        t = types[name]
        block = f"_b{name[1:]}"
        before[i] = f"    {block} = _take({tuple(t.shape)!r}, {t.dtype})"
        lines[i] = f"    {name} = {pooled_form(rhs, block)}  # {comment}, cached block"
        after.setdefault(max(last_use.get(name, i), i), []).append(f"    _give({block})")
    if not before:
        return lines
    out = []
    for i, line in enumerate(lines):
        if i in before:
            out.append(before[i])
        out.append(line)
        out += after.get(i, [])
    return out


# The block cache: (shape, dtype) -> free blocks, shared by every compiled function (so it
# holds about one call's worth of temporaries, not one per function); list.pop/append are
# atomic, so concurrent calls take different blocks.
_blocks: dict = {}
_cached_bytes = [0]


def _take(shape, dtype):
    free = _blocks.get((shape, dtype))
    if free:
        try:
            block = free.pop()
            _cached_bytes[0] -= block.numel() * block.element_size()
            return block
        except IndexError:
            pass
    return torch.empty(shape, dtype=dtype)


def _give(block):
    n = block.numel() * block.element_size()
    if _cached_bytes[0] + n > MAX_CACHED_BYTES:
        return
    _cached_bytes[0] += n
    _blocks.setdefault((tuple(block.shape), block.dtype), []).append(block)


def release_cached_blocks() -> int:
    """Drop every free block of the cache (as torch.cuda.empty_cache); returns the bytes
    released. Blocks taken by calls in flight are not affected."""
    n = _cached_bytes[0]
    _blocks.clear()
    _cached_bytes[0] = 0
    return n


GLOBALS = {"_take": _take, "_give": _give}
