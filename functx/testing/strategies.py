"""Hypothesis strategies for property-testing functions of tensors against eager PyTorch.

    from hypothesis import given
    from functx.testing import strategies as fst, check_against_torch

    @given(fst.tensors(dtypes=(torch.float32,)))
    def test_my_fn(x):
        check_against_torch(my_fn, x)

    @given(fst.programs())          # random straight-line PyTorch programs (a `Case`)
    def test_programs(case):
        check_against_torch(case.program, *case.args())

Importing this module imports hypothesis (a test dependency); `import functx` does not.
"""
from __future__ import annotations

import math
import warnings

import torch
from hypothesis import assume, strategies as st

from .op_table import DIFFERENTIABLE, OPS, Context, Skip
from .programs import NAMESPACE, Case, Program

__all__ = ["special_values", "shapes", "tensors", "programs", "invalid_programs", "vmap_cases",
           "SPECIAL_FLOATS"]

SPECIAL_FLOATS = (math.nan, math.inf, -math.inf, -0.0, 0.0)
DTYPES = (torch.float32, torch.float32, torch.float64, torch.int64, torch.bool)
# Sizes drawn per dimension: 0 and 1 are edge cases, so both appear, 0 rarely.
SIZES = (1, 2, 3, 4, 2, 3, 1, 2, 3, 4, 0)
MAX_NUMEL = 256


def special_values():
    """The floats eager PyTorch treats specially: nan, ±inf, -0.0 and 0.0."""
    return st.sampled_from(SPECIAL_FLOATS)


def shapes(max_rank=3, sizes=SIZES):
    """Tensor shapes of rank 0..max_rank, including size-0 and size-1 dimensions."""
    return st.lists(st.sampled_from(sizes), max_size=max_rank).map(tuple)


def _elements(dtype, special):
    if dtype == torch.bool:
        return st.booleans()
    if not dtype.is_floating_point:
        return st.integers(-5, 5)
    width = 32 if dtype == torch.float32 else 64
    finite = st.floats(-3, 3, width=width, allow_subnormal=False)
    return st.one_of(finite, finite, special_values()) if special else finite


@st.composite
def tensors(draw, shape=None, dtypes=DTYPES, special=True, generic=False):
    """A tensor of one of `dtypes` with shape `shape` (a tuple, a strategy, or None for any).
    special: floats include nan, ±inf and -0.0. generic: floats are a seeded normal sample
    (no ties, no special values: points where derivatives exist and finite differences work);
    an int instead of True is the seed."""
    if shape is None:
        shape = shapes()
    if not isinstance(shape, tuple):
        shape = draw(shape)
    dtype = draw(st.sampled_from(dtypes))
    if generic and dtype.is_floating_point:
        seed = draw(st.integers(0, 2**31 - 1)) if generic is True else generic
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    n = math.prod(shape)
    values = draw(st.lists(_elements(dtype, special), min_size=n, max_size=n))
    return torch.tensor(values, dtype=dtype).reshape(shape)


@st.composite
def _inputs(draw, max_inputs, dtypes, special, generic):
    """1..max_inputs tensors whose shapes mostly broadcast together (suffixes of one base
    shape, with some dimensions set to 1)."""
    base = draw(shapes())
    out = []
    # generic inputs: one seed per program, a different stream per input (a seed drawn per
    # input shrinks to 0 for all of them: equal inputs, ties at every kink)
    seed = draw(st.integers(0, 2**30)) if generic else None
    for k in range(draw(st.integers(1, max_inputs))):
        rank = draw(st.integers(0, len(base)))
        shape = tuple(1 if draw(st.integers(0, 4)) == 0 else s for s in base[len(base) - rank:])
        out.append(draw(tensors(shape, dtypes, special, generic and 2 * seed + 1 + k * 7919)))
    return out


def _execute(line, ctx):
    """Run one program line on the context's eager values; returns the new variable (or None)."""
    scope = dict(NAMESPACE)
    scope.update(ctx.values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(line, scope)
    name = line.split(" = ", 1)[0] if " = " in line and "[" not in line.split(" = ", 1)[0] else None
    if name is not None:
        value = scope[name]
        if not isinstance(value, torch.Tensor) or value.numel() > MAX_NUMEL:
            raise ValueError("not a small tensor")
        ctx.values[name] = value
    return name


def _replay(inputs, lines, special):
    ctx = Context([x.clone() for x in inputs], special)
    for line in lines:
        if _execute(line, ctx) is not None:
            ctx.n_new += 1
    return ctx


def _table(differentiable):
    table = DIFFERENTIABLE if differentiable else OPS
    return [op for op in table for _ in range(op[1])]


def _build(draw, inputs, max_ops, special, differentiable, min_ops=1):
    table = _table(differentiable)
    lines = []
    ctx = _replay(inputs, lines, special)
    for _ in range(draw(st.integers(min_ops, max_ops))):
        name, _, build, _ = draw(st.sampled_from(table))
        try:
            line = build(draw, ctx)
        except Skip:
            continue
        try:
            _execute(line, ctx)
        except Exception:          # eager PyTorch rejects this line: drop it, restore the values
            ctx = _replay(inputs, lines, special)
            continue
        lines.append(line)
    return lines, ctx


@st.composite
def programs(draw, max_inputs=3, max_ops=6, dtypes=DTYPES, special=True, differentiable=False):
    """A `Case`: a random straight-line PyTorch program valid (eager PyTorch runs it) for its
    generated inputs. Ops come from op_table.OPS: elementwise with broadcasting and type
    promotion, comparisons/where/clamp, reductions, views, in-place writes into fresh tensors
    and their views, indexing. differentiable=True: float64 inputs at generic points and the
    differentiable subset (for grad/jvp/vjp checks). The program returns every variable it
    made, so a write through a view shows in the base it aliases."""
    if differentiable:
        dtypes, special = (torch.float64,), False
    inputs = draw(_inputs(max_inputs, dtypes, special, generic=differentiable))
    lines, ctx = _build(draw, inputs, max_ops, special, differentiable)
    outputs = [n for n in ctx.values if n.startswith("v")]
    assume(outputs)
    return Case(Program(len(inputs), lines, outputs), inputs)


@st.composite
def invalid_programs(draw, max_inputs=3, max_ops=4, dtypes=DTYPES):
    """A `Case` whose last line eager PyTorch rejects (for "functx raises where torch does")."""
    inputs = draw(_inputs(max_inputs, dtypes, True, False))
    lines, ctx = _build(draw, inputs, max_ops, True, False, min_ops=0)
    table = _table(False)
    for _ in range(20):
        name, _, build, _ = draw(st.sampled_from(table))
        try:
            line = build(draw, ctx)
            _execute(line, ctx)
        except Skip:
            continue
        except Exception as e:     # the line we want: eager PyTorch raises on it
            outputs = [n for n in ctx.values if n.startswith("v")]
            return Case(Program(len(inputs), lines + [line], outputs), inputs,
                        note=f"eager PyTorch raises {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        ctx = _replay(inputs, lines, True)
    assume(False)


@st.composite
def vmap_cases(draw, batch_sizes=(1, 2, 3), **kwargs):
    """A `Case` from programs(**kwargs) whose inputs carry an extra leading batch dimension:
    vmap(case.program) must equal the program applied to each slice."""
    case = draw(programs(**kwargs))
    b = draw(st.sampled_from(batch_sizes))
    generic = kwargs.get("differentiable", False)
    special = kwargs.get("special", True) and not generic
    stacked = []
    for x in case.inputs:
        more = [draw(tensors(tuple(x.shape), (x.dtype,), special, generic)) for _ in range(b - 1)]
        stacked.append(torch.stack([x] + more))
    return Case(case.program, stacked, note="inputs stacked along dim 0 for vmap")
