"""Buffer reuse in the eager backend's generated code: an elementwise op or a matmul whose
result is large writes into a dead temporary (out=) instead of allocating.

Why: on the CPU, torch allocates a large tensor with malloc, which for blocks above
glibc's mmap threshold (128 KiB by default, 32 MiB at most) maps fresh pages from the
kernel and unmaps them when the tensor dies; each page then costs a page fault and a
zeroing on first write. For a graph of large intermediates (the (points, d, h) Jacobians
of a forward Laplacian) that is most of the time: a (1024, 256, 64) float32 mul takes
43 ms into a new tensor and 4 ms into an existing one. XLA and torch's CUDA allocator keep
their buffers; this does the same at the level of the generated code, as Inductor does:
  - in place: `torch.mul(t5, t9, out=t5)` when t5 (an operand of the result's shape and
    dtype) dies at this line and nothing else aliases its storage;
  - pooled: `torch.matmul(t3, a2, out=t7)` when t7's storage died at an earlier line and
    has the result's dtype and number of elements (the most recently dead one; reshaped to
    the result's shape when it differs);
  - kept between calls: what still needs a new buffer takes the one the previous call
    left in the function's `_keep` (`out=_keep.pop(3, None)`: None, the first time, makes
    torch allocate), and the buffer goes back there after its last read. So a jitted
    function holds its large temporaries while it is alive, as a caching allocator does:
    the largest first, as long as the call's estimated memory (every line's new tensors,
    from its line to its last read) stays within KEEP_SLACK of its peak without keeping
    (`functx.compile.release_buffers()` frees them all). The estimate does not see the
    copies torch makes inside an expression (a reshape of a transposed view), so the
    measured peak can rise more: +25% for a jitted jacfwd(jacrev) Hessian trace at d = 64.

Aliasing is tracked by storage: a temporary made by one of the calls below owns a new
buffer (its root); every other line (views, reshapes, stop_gradient's plain name, loop
calls) is taken to alias everything it reads. A buffer is dead once no alias of it is read
again and none is returned; returned results are made as torch makes them (their layout
too). Only results of at least MIN_BYTES are rewritten: smaller blocks come from malloc's
heap without faults. Graphs with effects (a callback may keep a value it is handed) or
collectives are left as they are.

out= does not record torch autograd and in-place writes would invalidate what autograd
saved, so a function with rewrites keeps the plain version beside it and calls that when
an argument requires grad (grad mode on) or is not a plain tensor (a subclass, a
torch.func wrapper): see `ARGUMENT_CHECK`.
"""
from __future__ import annotations

import re
import weakref

import torch

from .fusion import buffer_pool

MIN_BYTES = 128 * 1024
# the large buffers a call still allocates are kept for the function's next call, as long
# as the call's large buffers then take at most KEEP_SLACK times their peak without keeping
KEEP_BETWEEN_CALLS = True
KEEP_SLACK = 1.05


class KeptBuffers(dict):
    """One generated function's buffers kept between calls (key -> tensor). A call pops a
    buffer when it needs it and puts it back when it is dead; dict.pop is atomic, so
    concurrent calls never share one (the second allocates its own)."""


_ALL_KEPT: weakref.WeakValueDictionary = weakref.WeakValueDictionary()     # id -> KeptBuffers


def kept_buffers() -> KeptBuffers:
    d = KeptBuffers()
    _ALL_KEPT[id(d)] = d
    return d


def release_buffers() -> int:
    """Free the buffers jitted functions keep between calls: the eager backend's (and the
    cpu backend's eager tier's) and the cpu backend's fused-tier slots (except those of a
    call running in another thread); returns the bytes released. Their next call
    allocates afresh (and keeps again)."""
    n = 0
    for d in list(_ALL_KEPT.values()):
        n += release_kept(d)
    return n + buffer_pool.release_all()


def release_kept(d: KeptBuffers) -> int:
    """Free one function's kept buffers; the bytes released."""
    n = 0
    for t in list(d.values()):
        n += t.untyped_storage().nbytes()
    d.clear()
    return n

# torch functions the emit rules print for pointwise primitives (and torch.addmm for the
# eager plan's add(dot, b)): each returns a new dense tensor and takes out=; where only
# with tensor operands (its scalar overloads have no out variant), relu has none at all
OUT_FUNCTIONS = frozenset(f"torch.{n}" for n in (
    "abs acos acosh add addmm asin asinh atan atan2 atanh bitwise_and bitwise_not bitwise_or bitwise_xor "
    "ceil clamp_max clamp_min cos cosh digamma div erf erfinv exp exp2 expm1 floor fmod lgamma log log1p "
    "logical_not maximum minimum mul neg pow round rsqrt sigmoid sign sin sinh sqrt sub tan tanh trunc "
    "where xlogy").split())
TENSOR_OPERANDS_ONLY = frozenset({"torch.where"})

_TEMP = re.compile(r"\bt\d+\b")
_RESHAPE = re.compile(r"^(t\d+)\.reshape\(\([\d, ]*\)\)$")


class Candidate:
    """A line whose result is a new buffer. prefix: the call without its closing
    parenthesis, so `prefix + ', out=NAME)' + suffix` writes into NAME; operands: (name,
    shape, dtype) of each operand the result may overwrite in place (none for a matmul,
    whose out= must not alias an operand). call_shape: the shape the call itself returns
    when a suffix (a matmul's `.reshape(...)`, a view) makes `shape` of it."""
    __slots__ = ("out", "shape", "dtype", "nbytes", "prefix", "operands", "comment", "suffix", "call_shape")

    def __init__(self, out, shape, dtype, nbytes, prefix, operands, comment, suffix="", call_shape=None):
        self.out, self.shape, self.dtype, self.nbytes = out, tuple(shape), dtype, nbytes
        self.prefix, self.operands, self.comment = prefix, operands, comment
        self.suffix, self.call_shape = suffix, tuple(shape if call_shape is None else call_shape)


def call_prefix(expr: str, tensor_operands: bool):
    """`torch.f(args)` of a function in OUT_FUNCTIONS -> `torch.f(args` (the whole
    expression must be that one call), else None."""
    head, paren, _ = expr.partition("(")
    if not paren or head not in OUT_FUNCTIONS or not expr.endswith(")"):
        return None
    if head in TENSOR_OPERANDS_ONLY and not tensor_operands:
        return None
    depth = 0
    for k, ch in enumerate(expr):
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and k >= len(head):
            return expr[:-1] if k == len(expr) - 1 else None
    return None


def _parse(line):
    """(names defined, names read) of one generated statement."""
    code = line.split("  # ", 1)[0].strip()
    lhs, sep, rhs = code.partition(" = ")
    if sep and re.fullmatch(r"t\d+(, t\d+)*,?", lhs):
        return _TEMP.findall(lhs), _TEMP.findall(rhs), rhs
    return [], _TEMP.findall(code), code


def reuse_buffers(lines: list, candidates: dict, min_bytes: int | None = None, keep: bool | None = None,
                  allocs: dict | None = None):
    """Rewrite candidate lines (index -> Candidate) of straight-line generated source (def
    line, statements, return line) to write into dead buffers -> (lines, rewrites). With
    keep, the large buffers this call still allocates come from the dict `_keep` of the
    generated function's globals, where each is put back when it dies, as long as the
    call's memory stays within KEEP_SLACK of its peak; allocs (line -> bytes of the new
    tensors it makes, views excluded) is what the other lines allocate, for that estimate."""
    min_bytes = MIN_BYTES if min_bytes is None else min_bytes
    keep = KEEP_BETWEEN_CALLS if keep is None else keep
    roots: dict = {}          # name -> the buffers (root names) its storage may belong to
    reshape_of: dict = {}     # name -> the name it is a .reshape of
    last: dict = {}           # root -> the last line reading any alias of it
    for i, line in enumerate(lines[1:-1], 1):
        defined, read, rhs = _parse(line)
        for n in read:
            for r in roots.get(n, ()):
                last[r] = i
        if i in candidates and len(defined) == 1:
            roots[defined[0]] = {defined[0]}
            last.setdefault(defined[0], i)
            continue
        alias = set().union(*(roots.get(n, ()) for n in read)) if read else set()
        for d in defined:
            roots[d] = alias
        m = _RESHAPE.match(rhs)
        if m and len(defined) == 1:
            reshape_of[defined[0]] = m.group(1)
    for n in _TEMP.findall(lines[-1]):
        for r in roots.get(n, ()):
            last[r] = len(lines)          # returned: never reused
    dead = sorted((i, r) for r, i in last.items() if i < len(lines) and r in roots)
    shape_of = {c.out: (c.shape, c.dtype) for c in candidates.values()}
    pool: list = []             # buffers dead before the current line, oldest first
    used: set = set()
    storage: dict = {}          # root -> the new buffer (a key) it lives in
    births: dict = {}           # key -> the line that allocates it
    rewrites = 0
    out = list(lines)
    for i in sorted(candidates):
        while dead and dead[0][0] < i:
            r = dead.pop(0)[1]
            if r not in used:
                pool.append(r)
        c = candidates[i]
        if c.nbytes < min_bytes or last.get(c.out) == len(lines):
            continue          # small, or returned: a result keeps the layout torch gives it
        target = how = None
        for name, shape, dtype in c.operands:
            root = _root_through_reshapes(name, reshape_of)
            if (tuple(shape) == c.shape and dtype == c.dtype and roots.get(name) == {root}
                    and last.get(root) == i and root not in used and _reads_only(lines[i], name, root, roots)):
                target, how = name, "in place"
                used.add(root)
                if root in storage:
                    storage[c.out] = storage[root]
                break
        if target is None:
            for k in range(len(pool) - 1, -1, -1):
                shape, dtype = shape_of[pool[k]]
                if dtype == c.dtype and _numel(shape) == _numel(c.shape):
                    buf = pool.pop(k)
                    used.add(buf)
                    if buf in storage:
                        storage[c.out] = storage[buf]
                    how = f"into {buf}'s dead buffer"
                    # a reshape of a dense buffer is a view (were it to copy, out= fills the copy)
                    target = buf if shape == c.call_shape else f"{buf}.reshape({c.call_shape!r})"
                    break
        if target is None:
            key = storage[c.out] = len(births)       # a new buffer
            births[key] = i
            continue
        out[i] = f"    {c.out} = {c.prefix}, out={target}){c.suffix}  # {c.comment}, {how}"
        rewrites += 1
    if not keep or not births:
        return out, rewrites
    # a buffer dies after the last read of the last value living in it
    deaths = {key: last.get(r, len(lines)) for r, key in storage.items() if r not in used}
    # what the other lines hold: all but the new buffers above and the rewritten lines
    rewritten = {i for i in candidates if out[i] is not lines[i]}
    base = _other_allocations(lines, allocs or {}, rewritten | set(births.values()))
    kept = _kept_between_calls(births, deaths, {k: candidates[i].nbytes for k, i in births.items()}, len(lines),
                               base)
    put_back: dict = {}
    for key in kept:
        i = births[key]
        c = candidates[i]
        out[i] = (f"    {c.out} = {c.prefix}, out=_keep.pop({key}, None)){c.suffix}  # {c.comment}, "
                  "a buffer kept from the last call")
        rewrites += 1
    for r, key in storage.items():
        if key in kept and r not in used:
            shape, call_shape = shape_of[r][0], candidates[births[key]].call_shape
            src = r if shape == call_shape else f"{r}.reshape({call_shape!r})"
            put_back.setdefault(deaths[key], []).append(f"    _keep[{key}] = {src}  # for the next call")
    if put_back:
        out = [x for i, line in enumerate(out) for x in [line] + put_back.get(i, [])]
    return out, rewrites


def _other_allocations(lines, allocs, candidate_lines):
    """line -> bytes held at that line by the tensors of non-candidate lines (each from its
    line to the last read of a value derived from it; returned ones to the end). An
    estimate for the keep decision only, never for correctness: a line that is not in
    allocs is taken to be a view of what it reads."""
    end = len(lines)
    roots: dict = {}
    last: dict = {}
    for i, line in enumerate(lines[1:-1], 1):
        defined, read, _ = _parse(line)
        for n in read:
            for r in roots.get(n, ()):
                last[r] = i
        if i in allocs and i not in candidate_lines and defined:
            for d in defined:
                roots[d] = {i}
            last.setdefault(i, i)
        else:
            alias = set().union(*(roots.get(n, ()) for n in read)) if read else set()
            for d in defined:
                roots[d] = alias
    for n in _TEMP.findall(lines[-1]):
        for r in roots.get(n, ()):
            last[r] = end
    return _profile(end, [(i, j, allocs[i]) for i, j in last.items()])


def _profile(end, intervals, base=None):
    """Bytes held at each line 0..end: base plus each (first, last, bytes) interval."""
    diff = [0] * (end + 2)
    for i, j, n in intervals:
        diff[i] += n
        diff[min(j, end) + 1] -= n
    held, acc = [], 0
    for t in range(end + 1):
        acc += diff[t]
        held.append(acc + (base[t] if base else 0))
    return held


def _kept_between_calls(births, deaths, nbytes, end, base):
    """The new buffers to keep for the next call: largest first, each while the call's
    memory (these buffers plus `base`, what the other lines hold) stays within KEEP_SLACK
    times its peak without keeping (the kept ones count for the whole call: they wait in
    _keep before their first write and after their last read)."""
    keys = [k for k in births if deaths.get(k, end) < end]

    def live_peak(excluded):
        return max(_profile(end, [(births[k], deaths.get(k, end), nbytes[k]) for k in births if k not in excluded],
                            base))
    peak = live_peak(set())
    kept: set = set()
    for k in sorted(keys, key=lambda k: -nbytes[k]):
        trial = kept | {k}
        if sum(nbytes[j] for j in trial) + live_peak(trial) <= KEEP_SLACK * peak:
            kept = trial
    return kept


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def _root_through_reshapes(name, reshape_of):
    while name in reshape_of:
        name = reshape_of[name]
    return name


def _reads_only(line, name, root, roots) -> bool:
    """Every name this line reads that aliases root is `name` itself (out= may then
    overlap an operand exactly, never partially)."""
    _, read, _ = _parse(line)
    return all(n == name or root not in roots.get(n, ()) for n in read)


# the generated function's first line when it has rewrites: the plain version serves calls
# that torch autograd records or that pass tensor subclasses / torch.func wrappers
ARGUMENT_CHECK = "    if not _plain_tensors({args}): return {plain}({args})"


def plain_tensors(*args) -> bool:
    """True when every tensor argument is a plain torch.Tensor that autograd does not
    record (grad mode off, or no requires_grad)."""
    grad = torch.is_grad_enabled()
    for x in args:
        if type(x) is torch.Tensor:
            if grad and x.requires_grad:
                return False
            if torch._C._functorch.is_functorch_wrapped_tensor(x):
                return False
        elif isinstance(x, torch.Tensor):
            return False
    return True
