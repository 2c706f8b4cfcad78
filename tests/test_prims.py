"""Table-driven, property-based tests over every primitive.

One table entry (or more) per registered primitive says how to draw valid inputs and params
(hypothesis draws shapes, dtypes, axes, configs and a seed; values come from a seeded torch
generator) and gives an independent torch reference. For every entry:

  (a) eval vs the torch reference, for each dtype the primitive supports;
  (b) check_graph on make_graph of it, abstract types == eval types, jit (emit) == eval;
  (c) jvp vs central finite differences in float64 (exact zero for non-differentiable ones);
  (d) the inner-product identity <v, J u> = <J^T v, u> (functx.jvp vs functx.vjp);
  (e) vmap vs a Python loop, random in_axes (None for some args) and out_axes (negative too);
  (f) for linear primitives: functx.linear_transpose vs the inner-product identity and
      torch.func.vjp of the reference;
  (g) jvp-of-jvp and grad-of-grad vs torch.func on the reference.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st

import functx
from functx.core import REGISTRY, check_graph
from functx.frontend import unwrap, wrap
from functx.prims.opaque import OpaqueFunction

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
I32, I64, BOOL = torch.int32, torch.int64, torch.bool
FLOATS = (F16, BF16, F32, F64)
INTS = (I32, I64)
ALL = FLOATS + INTS + (BOOL,)
CPU = torch.device("cpu")

TOL = {F16: (5e-3, 5e-3), BF16: (3e-2, 3e-2), F32: (1e-5, 1e-5), F64: (1e-9, 1e-10)}


# ---------------------------------------------------------------- value generation

def rand(g, shape, dtype, dom=("u", -2.0, 2.0)):
    shape = tuple(shape)
    if dtype == BOOL:
        return torch.randint(0, 2, shape, generator=g).bool()
    kind, lo, hi = dom
    if not dtype.is_floating_point:
        lo_i, hi_i = (1, 5) if kind in ("nz", "pos") or lo > 0 else (-4, 5)
        x = torch.randint(lo_i, hi_i, shape, generator=g, dtype=I64)
        if kind == "nz":
            x = x * (torch.randint(0, 2, shape, generator=g) * 2 - 1)
        return x.to(dtype)
    x = torch.rand(shape, generator=g, dtype=F64) * (hi - lo) + lo
    if kind == "nz":
        x = x * (torch.randint(0, 2, shape, generator=g, dtype=F64) * 2 - 1)
    return x.to(dtype)


def tie_values(g, shape, dtype):
    """Values from a tiny set, so ties are likely."""
    if dtype == BOOL:
        return torch.randint(0, 2, shape, generator=g).bool()
    return torch.randint(-1, 2, tuple(shape), generator=g).to(dtype)


def shapes(draw, min_dims=0, max_dims=3, min_side=1, max_side=3):
    nd = draw(st.integers(min_dims, max_dims))
    return tuple(draw(st.integers(min_side, max_side)) for _ in range(nd))


class Case:
    """params + make(g, dtype) -> args (tensors and Python scalars)."""

    def __init__(self, params, make):
        self.params = params
        self.make = make


class Entry:
    def __init__(self, name, gen, ref, *, prim=None, dtypes=FLOATS, zero_deriv=False, linear=(),
                 order2=True, fd_fn=None, call=None, ref_f64=True, nondiff=False, kind="prim",
                 vmap_dtypes=None, fd_tol=(1e-5, 1e-6), fwd=True, rev=True, covers=()):
        self.name = name
        self.prim = prim or name
        self.gen = gen                  # gen(draw, dtype, smooth) -> Case
        self.ref = ref                  # ref(*args, **params) -> tensor or tuple
        self.dtypes = dtypes
        self.zero_deriv = zero_deriv    # derivative is zero wherever it exists
        self.nondiff = nondiff          # no float input can carry a tangent (ints only)
        self.linear = linear            # tuples of arg indices the primitive is jointly linear in
        self.order2 = order2
        self.fd_fn = fd_fn              # math function for finite differences (default: eval)
        self.call = call                # user-level call(params, *args) (default: bind)
        self.ref_f64 = ref_f64
        self.kind = kind
        self.vmap_dtypes = vmap_dtypes or ((F64,) if F64 in dtypes else dtypes)
        self.fd_tol = fd_tol
        self.fwd, self.rev = fwd, rev   # which derivative modes the primitive supports
        self.covers = covers            # further primitives its transforms necessarily bind


ENTRIES: dict[str, Entry] = {}


def add(entry):
    ENTRIES[entry.name] = entry
    return entry


def bind_call(prim_name):
    def call(params, *args):
        p = REGISTRY[prim_name]
        out = p.bind(*[unwrap(a) for a in args], **params)
        if p.multiple_results:
            return tuple(wrap(o) for o in out)
        return wrap(out)
    return call


def call_entry(e, params, args):
    fn = e.call or bind_call(e.prim)
    return fn(params, *args)


def as_list(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def is_float_t(x):
    return isinstance(x, torch.Tensor) and x.dtype.is_floating_point


def assert_close(actual, expected, dtype=None, msg=""):
    la, le = as_list(actual), as_list(expected)
    assert len(la) == len(le), f"{msg}: {len(la)} outputs vs {len(le)}"
    for a, b in zip(la, le):
        assert isinstance(a, torch.Tensor), f"{msg}: got {type(a)}"
        assert a.dtype == b.dtype, f"{msg}: dtype {a.dtype} vs reference {b.dtype}"
        assert a.shape == b.shape, f"{msg}: shape {tuple(a.shape)} vs reference {tuple(b.shape)}"
        if a.dtype.is_floating_point:
            rtol, atol = TOL[dtype if dtype in TOL else a.dtype]
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{msg}: {m}")
        else:
            assert torch.equal(a, b), f"{msg}: {a} vs {b}"


def run_ref(e, params, args, dtype):
    if e.ref_f64 and dtype in (F16, BF16, F32):
        # a Python-float operand takes the tensor's dtype (primitives never promote): round it
        up = [a.to(F64) if is_float_t(a) else float(torch.tensor(a, dtype=dtype)) if isinstance(a, float)
              else a for a in args]
        out = e.ref(*up, **params)
        conv = [o.to(dtype) if is_float_t(o) else o for o in as_list(out)]
        return tuple(conv) if isinstance(out, (tuple, list)) else conv[0]
    return e.ref(*args, **params)


# ---------------------------------------------------------------- entry generators

def unary_gen(dom=("u", -2.0, 2.0), params_fn=None):
    def gen(draw, dtype, smooth):
        shape = shapes(draw)
        ties = not smooth and draw(st.booleans())
        params = params_fn(draw) if params_fn else {}

        def make(g, dt):
            return [tie_values(g, shape, dt) if ties and dom[0] == "u" and dom[1] < 0 else rand(g, shape, dt, dom)]
        return Case(params, make)
    return gen


def binary_gen(dom_x=("u", -2.0, 2.0), dom_y=("u", -2.0, 2.0), scalars=True, ties=False):
    def gen(draw, dtype, smooth):
        shape = shapes(draw)
        side = draw(st.sampled_from([None, None, 0, 1])) if scalars and dtype != BOOL else None
        tie = ties and not smooth and draw(st.booleans())

        def make(g, dt):
            if tie:
                x, y = tie_values(g, shape, dt), tie_values(g, shape, dt)
            else:
                x, y = rand(g, shape, dt, dom_x), rand(g, shape, dt, dom_y)
            args = [x, y]
            if side is not None:
                dom = (dom_x, dom_y)[side]
                s = rand(g, (), F64 if dt.is_floating_point else I64, dom).item()
                args[side] = float(s) if dt.is_floating_point else int(s)
            return args
        return Case({}, make)
    return gen


UNARY = {
    # name: (torch ref, domain, dtypes, zero_deriv)
    "neg": (torch.neg, ("u", -2.0, 2.0), FLOATS + INTS, False),
    "exp": (torch.exp, ("u", -2.0, 2.0), FLOATS, False),
    "exp2": (torch.exp2, ("u", -2.0, 2.0), FLOATS, False),
    "log": (torch.log, ("u", 0.2, 3.0), FLOATS, False),
    "log1p": (torch.log1p, ("u", -0.5, 2.0), FLOATS, False),
    "expm1": (torch.expm1, ("u", -2.0, 2.0), FLOATS, False),
    "sin": (torch.sin, ("u", -3.0, 3.0), FLOATS, False),
    "cos": (torch.cos, ("u", -3.0, 3.0), FLOATS, False),
    "tan": (torch.tan, ("u", -1.2, 1.2), FLOATS, False),
    "tanh": (torch.tanh, ("u", -2.0, 2.0), FLOATS, False),
    "asin": (torch.asin, ("u", -0.9, 0.9), FLOATS, False),
    "acos": (torch.acos, ("u", -0.9, 0.9), FLOATS, False),
    "atan": (torch.atan, ("u", -2.0, 2.0), FLOATS, False),
    "sinh": (torch.sinh, ("u", -2.0, 2.0), FLOATS, False),
    "cosh": (torch.cosh, ("u", -2.0, 2.0), FLOATS, False),
    "asinh": (torch.asinh, ("u", -2.0, 2.0), FLOATS, False),
    "acosh": (torch.acosh, ("u", 1.2, 3.0), FLOATS, False),
    "atanh": (torch.atanh, ("u", -0.9, 0.9), FLOATS, False),
    "sqrt": (torch.sqrt, ("u", 0.2, 3.0), FLOATS, False),
    "rsqrt": (torch.rsqrt, ("u", 0.2, 3.0), FLOATS, False),
    "abs": (torch.abs, ("nz", 0.1, 2.0), FLOATS + INTS, False),
    "logistic": (torch.sigmoid, ("u", -3.0, 3.0), FLOATS, False),
    "erf": (torch.erf, ("u", -2.0, 2.0), FLOATS, False),
    "erfc": (torch.erfc, ("u", -2.0, 4.0), FLOATS, False),
    "erfcx": (torch.special.erfcx, ("u", -1.5, 6.0), (F32, F64), False),    # no CPU half kernel in torch
    "entr": (torch.special.entr, ("u", 0.1, 3.0), (F32, F64), False),
    "erfinv": (torch.erfinv, ("u", -0.9, 0.9), FLOATS, False),
    "lgamma": (torch.lgamma, ("u", 0.5, 4.0), FLOATS, False),
    "digamma": (torch.digamma, ("u", 0.5, 4.0), FLOATS, False),
    "sign": (torch.sign, ("u", -2.0, 2.0), FLOATS + INTS, True),
    "floor": (torch.floor, ("u", -3.0, 3.0), FLOATS + INTS, True),
    "ceil": (torch.ceil, ("u", -3.0, 3.0), FLOATS + INTS, True),
    "round": (torch.round, ("u", -3.0, 3.0), FLOATS + INTS, True),
    "trunc": (torch.trunc, ("u", -3.0, 3.0), FLOATS + INTS, True),
    "logical_not": (torch.logical_not, ("u", -2.0, 2.0), ALL, True),
    "bitwise_not": (torch.bitwise_not, ("u", -2.0, 2.0), INTS + (BOOL,), True),
}
for _name, (_ref, _dom, _dts, _zd) in UNARY.items():
    add(Entry(_name, unary_gen(_dom), (lambda r: lambda x: r(x))(_ref), dtypes=_dts, zero_deriv=_zd,
              linear=((0,),) if _name == "neg" else (), nondiff=not any(d.is_floating_point for d in _dts)))

add(Entry("polygamma", unary_gen(("u", 0.5, 4.0), lambda draw: {"n": draw(st.integers(0, 2))}),
          lambda x, n: torch.special.polygamma(n, x), dtypes=(F32, F64)))


class _Bessel(torch.autograd.Function):
    """torch.special's Bessel function with the textbook derivative torch lacks (it treats
    the result as a constant), in both modes and to every order: the test's reference."""
    generate_vmap_rule = True

    @staticmethod
    def forward(x, kind):
        return getattr(torch.special, kind)(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])
        ctx.kind = inputs[1]

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * _bessel_derivative(x, ctx.kind), None

    @staticmethod
    def jvp(ctx, t, _):
        (x,) = ctx.saved_tensors
        return t * _bessel_derivative(x, ctx.kind)


def _bessel_derivative(x, kind):
    b = lambda k: _Bessel.apply(x, k)  # noqa: E731
    return {"bessel_j0": lambda: -b("bessel_j1"), "bessel_j1": lambda: b("bessel_j0") - b("bessel_j1") / x,
            "bessel_y0": lambda: -b("bessel_y1"), "bessel_y1": lambda: b("bessel_y0") - b("bessel_y1") / x,
            "modified_bessel_i0": lambda: b("modified_bessel_i1"),
            "modified_bessel_i1": lambda: b("modified_bessel_i0") - b("modified_bessel_i1") / x,
            "modified_bessel_k0": lambda: -b("modified_bessel_k1"),
            "modified_bessel_k1": lambda: -b("modified_bessel_k0") - b("modified_bessel_k1") / x,
            "scaled_modified_bessel_k0": lambda: b("scaled_modified_bessel_k0") - b("scaled_modified_bessel_k1"),
            "scaled_modified_bessel_k1": lambda: (b("scaled_modified_bessel_k1") - b("scaled_modified_bessel_k0")
                                                  - b("scaled_modified_bessel_k1") / x),
            "spherical_bessel_j0": lambda: (torch.cos(x) - b("spherical_bessel_j0")) / x}[kind]()


add(Entry("bessel", unary_gen(("u", 0.5, 4.0), lambda draw: {"kind": draw(st.sampled_from((
    "bessel_j0", "bessel_j1", "bessel_y0", "bessel_y1", "modified_bessel_i0", "modified_bessel_i1", "modified_bessel_k0",
    "modified_bessel_k1", "scaled_modified_bessel_k0", "scaled_modified_bessel_k1", "spherical_bessel_j0")))}),
          lambda x, kind: _Bessel.apply(x, kind), dtypes=(F32, F64),
          order2=False))     # torch.func loses a Function's jvp at second order: tests/test_stranger_programs.py


def _pow_ref(x, y):
    return torch.pow(x, y)


def _idiv_gen(draw, dtype, smooth):
    shape = shapes(draw)
    mode = draw(st.sampled_from(["trunc", "floor"]))

    def make(g, dt):
        return [rand(g, shape, dt, ("u", -5.0, 5.0)), rand(g, shape, dt, ("nz", 0.5, 2.0))]
    return Case({"mode": mode}, make)


BINARY = {
    # name: (ref, gen, dtypes, zero_deriv, linear)
    "add": (torch.add, binary_gen(), FLOATS + INTS, False, ((0, 1),)),
    "sub": (torch.sub, binary_gen(), FLOATS + INTS, False, ((0, 1),)),
    "mul": (torch.mul, binary_gen(), FLOATS + INTS, False, ((0,), (1,))),
    "div": (torch.div, binary_gen(dom_y=("nz", 0.5, 2.0)), FLOATS, False, ((0,),)),
    "pow": (_pow_ref, binary_gen(dom_x=("u", 0.3, 2.0), dom_y=("u", -2.0, 2.0)), FLOATS, False, ()),
    "max": (lambda x, y: torch.maximum(torch.as_tensor(x), torch.as_tensor(y)) if not (
        isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) else torch.maximum(x, y),
        binary_gen(ties=True), FLOATS + INTS, False, ()),
    "min": (lambda x, y: torch.minimum(torch.as_tensor(x), torch.as_tensor(y)) if not (
        isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) else torch.minimum(x, y),
        binary_gen(ties=True), FLOATS + INTS, False, ()),
    "atan2": (torch.atan2, binary_gen(dom_x=("nz", 0.3, 2.0), dom_y=("nz", 0.3, 2.0), scalars=False),
              FLOATS, False, ()),
    "rem": (torch.fmod, binary_gen(dom_x=("u", -5.0, 5.0), dom_y=("nz", 0.7, 2.0)), FLOATS + INTS, False, ()),
    "xlogy": (lambda x, y: torch.xlogy(torch.as_tensor(x), y) if not isinstance(y, torch.Tensor) else
              torch.xlogy(x, y), binary_gen(dom_x=("u", -2.0, 2.0), dom_y=("u", 0.3, 2.0)), FLOATS, False, ((0,),)),
    "bitwise_and": (torch.bitwise_and, binary_gen(scalars=False), INTS + (BOOL,), True, ()),
    "bitwise_or": (torch.bitwise_or, binary_gen(scalars=False), INTS + (BOOL,), True, ()),
    "bitwise_xor": (torch.bitwise_xor, binary_gen(scalars=False), INTS + (BOOL,), True, ()),
    "eq": (torch.eq, binary_gen(ties=True), ALL, True, ()),
    "ne": (torch.ne, binary_gen(ties=True), ALL, True, ()),
    "lt": (torch.lt, binary_gen(ties=True), ALL, True, ()),
    "le": (torch.le, binary_gen(ties=True), ALL, True, ()),
    "gt": (torch.gt, binary_gen(ties=True), ALL, True, ()),
    "ge": (torch.ge, binary_gen(ties=True), ALL, True, ()),
}
for _name, (_ref, _gen, _dts, _zd, _lin) in BINARY.items():
    add(Entry(_name, _gen, (lambda r: lambda x, y: _scalar_ref(r, x, y))(_ref), dtypes=_dts, zero_deriv=_zd,
              linear=_lin, nondiff=not any(d.is_floating_point for d in _dts)))


def _scalar_ref(r, x, y):
    """torch ops with a Python scalar: the scalar takes the tensor's dtype (no promotion)."""
    if not isinstance(x, torch.Tensor):
        x = torch.full_like(y, x)
    if not isinstance(y, torch.Tensor):
        y = torch.full_like(x, y)
    return r(x, y)


add(Entry("idiv", _idiv_gen, lambda x, y, mode: torch.div(x, y, rounding_mode=mode), dtypes=INTS + (F32, F64),
          zero_deriv=True, ref_f64=False))


def _where_gen(draw, dtype, smooth):
    shape = shapes(draw)
    side = draw(st.sampled_from([None, None, 1, 2])) if dtype != BOOL else None

    def make(g, dt):
        pred = torch.randint(0, 2, shape, generator=g).bool()
        args = [pred, rand(g, shape, dt), rand(g, shape, dt)]
        if side is not None:
            args[side] = 1.5 if dt.is_floating_point else 3
        return args
    return Case({}, make)


add(Entry("where", _where_gen, lambda p, x, y: _scalar_ref(lambda a, b: torch.where(p, a, b), x, y),
          dtypes=ALL, linear=((1, 2),)))


def _convert_gen(draw, dtype, smooth):
    shape = shapes(draw)
    target = draw(st.sampled_from([F64, F32] if smooth else list(ALL)))

    def make(g, dt):
        return [rand(g, shape, dt, ("u", -3.0, 3.0))]
    return Case({"dtype": target}, make)


add(Entry("convert_element_type", _convert_gen, lambda x, dtype: x.to(dtype), dtypes=ALL, ref_f64=False,
          linear=((0,),), fd_fn=lambda x, dtype: x if dtype.is_floating_point else x.to(dtype)))
add(Entry("stop_gradient", unary_gen(), lambda x: x.clone(), dtypes=ALL, zero_deriv=True))


def _full_gen(draw, dtype, smooth):
    shape = shapes(draw)
    value = draw(st.sampled_from([0, 1, -2])) if dtype == BOOL or not dtype.is_floating_point else \
        draw(st.sampled_from([0.0, 1.5, -2.25]))
    if dtype == BOOL:
        value = bool(value)
    return Case({"shape": shape, "value": value, "dtype": dtype, "device": CPU}, lambda g, dt: [])


def _iota_gen(draw, dtype, smooth):
    shape = shapes(draw, min_dims=1)
    dim = draw(st.integers(0, len(shape) - 1))
    return Case({"shape": shape, "dim": dim, "dtype": dtype, "device": CPU}, lambda g, dt: [])


def _iota_ref(shape, dim, dtype, device):
    idx = torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij")[dim]
    return idx.to(dtype)


add(Entry("full", _full_gen, lambda shape, value, dtype, device: torch.full(shape, value, dtype=dtype),
          dtypes=ALL, kind="nullary", ref_f64=False))
add(Entry("iota", _iota_gen, _iota_ref, dtypes=INTS + (F32, F64), kind="nullary", ref_f64=False))


# ---------------------------------------------------------------- shape primitives

def _bid_gen(draw, dtype, smooth):
    out = shapes(draw, 0, 4)
    k = draw(st.integers(0, len(out)))
    dims = tuple(sorted(draw(st.permutations(range(len(out))))[:k]))
    ins = tuple(out[d] if draw(st.booleans()) else 1 for d in dims)
    return Case({"shape": out, "broadcast_dimensions": dims}, lambda g, dt: [rand(g, ins, dt)])


def _bid_ref(x, shape, broadcast_dimensions):
    view = [1] * len(shape)
    for i, d in enumerate(broadcast_dimensions):
        view[d] = x.shape[i]
    return torch.broadcast_to(x.reshape(view), shape).clone()


def _factorizations(n, max_dims=3):
    out = [()] if n == 1 else []
    for k in range(1, max_dims + 1):
        for combo in itertools.product(range(1, n + 1), repeat=k):
            if math.prod(combo) == n:
                out.append(combo)
    return out


def _reshape_gen(draw, dtype, smooth):
    shape = shapes(draw)
    target = draw(st.sampled_from(_factorizations(math.prod(shape))))
    return Case({"shape": target}, lambda g, dt: [rand(g, shape, dt)])


def _transpose_gen(draw, dtype, smooth):
    shape = shapes(draw, 0, 4)
    perm = tuple(draw(st.permutations(range(len(shape)))))
    return Case({"permutation": perm}, lambda g, dt: [rand(g, shape, dt)])


def _slice_gen(draw, dtype, smooth):
    shape = shapes(draw, 0, 3, 0, 5)
    start, limit, strides = [], [], []
    for n in shape:
        s = draw(st.integers(0, n))
        start.append(s)
        limit.append(draw(st.integers(s, n)))
        strides.append(draw(st.integers(1, 3)))
    return Case({"start": tuple(start), "limit": tuple(limit), "strides": tuple(strides)},
                lambda g, dt: [rand(g, shape, dt)])


def _slice_ref(x, start, limit, strides):
    return x[tuple(slice(s, l, st_) for s, l, st_ in zip(start, limit, strides))].clone()


def _pad_gen(draw, dtype, smooth):
    shape = shapes(draw, 0, 3, 0, 4)
    config = []
    for n in shape:
        lo, hi, interior = draw(st.integers(-2, 2)), draw(st.integers(-2, 2)), draw(st.integers(0, 2))
        size = n + max(0, n - 1) * interior + lo + hi
        if size < 0:
            hi -= size
        config.append((lo, hi, interior))
    if dtype == BOOL:
        value = draw(st.booleans())
    elif dtype.is_floating_point:
        value = draw(st.sampled_from([0.0, 1.5, -1.0]))
    else:
        value = draw(st.sampled_from([0, 3]))
    if smooth:
        value = 0.0 if dtype.is_floating_point else 0
    return Case({"config": tuple(config), "value": value}, lambda g, dt: [rand(g, shape, dt)])


def _pad_ref(x, config, value):
    """Independent reference: place x[i] at lo + i*(interior+1) where that lies inside."""
    out_shape = [lo + hi + n + max(0, n - 1) * it for n, (lo, hi, it) in zip(x.shape, config)]
    out = torch.full(out_shape, value, dtype=x.dtype)
    src, dst = [], []
    for n, m, (lo, hi, it) in zip(x.shape, out_shape, config):
        pos = lo + torch.arange(n) * (it + 1)
        keep = (pos >= 0) & (pos < m)
        src.append(torch.arange(n)[keep])
        dst.append(pos[keep])
    if x.ndim == 0:
        return x.clone()
    if all(len(s) for s in src):
        out[torch.meshgrid(*dst, indexing="ij")] = x[torch.meshgrid(*src, indexing="ij")]
    return out


def _concat_gen(draw, dtype, smooth):
    base = shapes(draw, 1, 3)
    axis = draw(st.integers(0, len(base) - 1))
    k = draw(st.integers(1, 3))
    sizes = [draw(st.integers(0, 3)) for _ in range(k)]
    shs = [base[:axis] + (s,) + base[axis + 1:] for s in sizes]
    return Case({"axis": axis}, lambda g, dt: [rand(g, s, dt) for s in shs])


def _rev_gen(draw, dtype, smooth):
    shape = shapes(draw)
    dims = tuple(sorted(draw(st.sets(st.sampled_from(range(len(shape))) if shape else st.nothing()))))
    return Case({"dims": dims}, lambda g, dt: [rand(g, shape, dt)])


add(Entry("broadcast_in_dim", _bid_gen, _bid_ref, dtypes=ALL, linear=((0,),)))
add(Entry("reshape", _reshape_gen, lambda x, shape: x.reshape(shape).clone(), dtypes=ALL, linear=((0,),)))
add(Entry("transpose", _transpose_gen, lambda x, permutation: x.permute(permutation).clone(), dtypes=ALL,
          linear=((0,),)))
add(Entry("slice", _slice_gen, _slice_ref, dtypes=ALL, linear=((0,),)))
add(Entry("pad", _pad_gen, _pad_ref, dtypes=ALL, linear=((0,),)))
add(Entry("concatenate", _concat_gen, lambda *xs, axis: torch.cat(xs, axis), dtypes=ALL,
          linear=(None,)))   # None: jointly linear in all operands
add(Entry("rev", _rev_gen, lambda x, dims: torch.flip(x, dims) if dims else x.clone(), dtypes=ALL,
          linear=((0,),)))


# ---------------------------------------------------------------- reductions

def _reduce_gen(zeros=False, ties=False):
    def gen(draw, dtype, smooth):
        shape = shapes(draw, 0, 3, 1, 4)
        axes = tuple(sorted(draw(st.sets(st.sampled_from(range(len(shape))))) if shape else ()))
        tie = ties and not smooth and draw(st.booleans())
        nzeros = draw(st.integers(0, 2)) if zeros else 0

        def make(g, dt):
            x = tie_values(g, shape, dt) if tie else rand(g, shape, dt, ("u", -1.5, 1.5))
            if nzeros and x.numel():
                flat = x.reshape(-1).clone()
                flat[torch.randint(0, flat.numel(), (nzeros,), generator=g)] = 0
                x = flat.reshape(shape)
            return [x]
        return Case({"axes": axes}, make)
    return gen


def _red_ref(fn):
    def ref(x, axes):
        if not axes:
            return x.clone()
        out = fn(x, axes)
        return out
    return ref


def _prod_ref(x, axes):
    out = x
    for a in sorted(axes, reverse=True):
        out = torch.prod(out, a)
    return out if axes else x.clone()


add(Entry("reduce_sum", _reduce_gen(), _red_ref(lambda x, a: torch.sum(x, a, dtype=x.dtype)), dtypes=FLOATS + INTS,
          linear=((0,),)))
add(Entry("reduce_max", _reduce_gen(ties=True), _red_ref(torch.amax), dtypes=FLOATS + INTS))
add(Entry("reduce_min", _reduce_gen(ties=True), _red_ref(torch.amin), dtypes=FLOATS + INTS))
add(Entry("reduce_prod", _reduce_gen(zeros=True), lambda x, axes: _prod_ref(x, axes).to(x.dtype),
          dtypes=FLOATS + INTS))


def _arg_gen(draw, dtype, smooth):
    shape = shapes(draw, 1, 3)
    axis = draw(st.integers(0, len(shape) - 1))
    idt = draw(st.sampled_from([I64, I32]))
    tie = draw(st.booleans())
    return Case({"axis": axis, "index_dtype": idt},
                lambda g, dt: [tie_values(g, shape, dt) if tie else rand(g, shape, dt)])


def _arg_ref(fn):
    def ref(x, axis, index_dtype):
        # first occurrence of the extremum (torch/numpy convention), computed independently
        ext = fn(x, axis, keepdim=True)
        n = x.shape[axis]
        pos = torch.arange(n).reshape([n if i == axis else 1 for i in range(x.ndim)]).expand(x.shape)
        big = torch.full_like(pos, n)
        return torch.where(x == ext, pos, big).amin(axis).to(index_dtype)
    return ref


add(Entry("argmax", _arg_gen, _arg_ref(torch.amax), dtypes=FLOATS + INTS, zero_deriv=True, ref_f64=False))
add(Entry("argmin", _arg_gen, _arg_ref(torch.amin), dtypes=FLOATS + INTS, zero_deriv=True, ref_f64=False))


def _cumsum_gen(draw, dtype, smooth):
    shape = shapes(draw, 1, 3)
    return Case({"axis": draw(st.integers(0, len(shape) - 1)), "reverse": draw(st.booleans())},
                lambda g, dt: [rand(g, shape, dt)])


def _cumsum_ref(x, axis, reverse):
    c = torch.cumsum(x, axis, dtype=x.dtype)
    if reverse:   # sum_{j>=i} x_j = total - sum_{j<i} x_j
        return (x.sum(axis, keepdim=True, dtype=x.dtype) - c + x).to(x.dtype)
    return c


add(Entry("cumsum", _cumsum_gen, _cumsum_ref, dtypes=FLOATS + INTS, linear=((0,),)))


# ---------------------------------------------------------------- dot_general

def _dot_gen(draw, dtype, smooth):
    nb, nc, nl, nr = (draw(st.integers(0, 2)) for _ in range(4))
    B = [draw(st.integers(1, 3)) for _ in range(nb)]
    C = [draw(st.integers(1, 3)) for _ in range(nc)]
    L = [draw(st.integers(1, 3)) for _ in range(nl)]
    R = [draw(st.integers(1, 3)) for _ in range(nr)]
    lhs_logical = [("b", i) for i in range(nb)] + [("c", i) for i in range(nc)] + [("f", i) for i in range(nl)]
    rhs_logical = [("b", i) for i in range(nb)] + [("c", i) for i in range(nc)] + [("f", i) for i in range(nr)]
    lhs = [lhs_logical[p] for p in draw(st.permutations(range(len(lhs_logical))))]
    rhs = [rhs_logical[p] for p in draw(st.permutations(range(len(rhs_logical))))]
    size = {"b": B, "c": C}
    lshape = tuple(size[k][i] if k != "f" else L[i] for k, i in lhs)
    rshape = tuple(size[k][i] if k != "f" else R[i] for k, i in rhs)
    lb = tuple(lhs.index(("b", i)) for i in range(nb))
    rb = tuple(rhs.index(("b", i)) for i in range(nb))
    lc = tuple(lhs.index(("c", i)) for i in range(nc))
    rc = tuple(rhs.index(("c", i)) for i in range(nc))
    return Case({"dimension_numbers": ((lc, rc), (lb, rb))},
                lambda g, dt: [rand(g, lshape, dt), rand(g, rshape, dt)])


def _dot_ref(x, y, dimension_numbers):
    """Independent reference: permute to (batch, free, contract), multiply-broadcast, sum."""
    (lc, rc), (lb, rb) = dimension_numbers
    lf = [i for i in range(x.ndim) if i not in lc and i not in lb]
    rf = [i for i in range(y.ndim) if i not in rc and i not in rb]
    xp = x.permute(list(lb) + lf + list(lc))
    yp = y.permute(list(rb) + rf + list(rc))
    bs = [x.shape[i] for i in lb]
    ls, rs, cs = [x.shape[i] for i in lf], [y.shape[i] for i in rf], [x.shape[i] for i in lc]
    xm = xp.reshape(bs + [math.prod(ls), 1, math.prod(cs)])
    ym = yp.reshape(bs + [1, math.prod(rs), math.prod(cs)])
    acc = x.dtype if not x.dtype.is_floating_point else F64
    out = (xm.to(acc) * ym.to(acc)).sum(-1).to(x.dtype)
    return out.reshape(bs + ls + rs)


add(Entry("dot_general", _dot_gen, _dot_ref, dtypes=FLOATS + INTS, linear=((0,), (1,))))


# ---------------------------------------------------------------- attention (functx/kernels)

def _attention_gen(draw, dtype, smooth):
    lead = shapes(draw, 0, 2, 1, 2)
    lq, lk, d, dv = (draw(st.integers(1, 4)) for _ in range(4))
    causal, has_bias = draw(st.booleans()), draw(st.booleans())
    full = lead + (lq, lk)
    bias_shape = tuple(n if draw(st.booleans()) else 1 for n in full)
    params = {"causal": causal, "scale": draw(st.sampled_from([0.5, 1.0, 1.7])), "has_bias": has_bias}

    def make(g, dt):
        args = [rand(g, lead + (lq, d), dt), rand(g, lead + (lk, d), dt), rand(g, lead + (lk, dv), dt)]
        return args + ([rand(g, bias_shape, dt)] if has_bias else [])
    return Case(params, make)


def _attention_ref(q, k, v, *bias, causal, scale, has_bias):
    """Independent of functx/kernels/attention_math.py: torch's softmax and logsumexp."""
    s = torch.einsum("...md,...nd->...mn", q, k) * scale
    if has_bias:
        s = s + bias[0]
    if causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)


# The derivative checks below run attention_jvp (jvp), attention_tangent and attention_bwd
# (vjp: linearize + transpose) and their second-order rules (jvp-of-jvp, grad-of-grad).
add(Entry("attention", _attention_gen, _attention_ref, dtypes=(F32, F64),
          covers=("attention_jvp", "attention_tangent", "attention_bwd")))


# ---------------------------------------------------------------- indexing

def _take_gen(draw, dtype, smooth):
    xs = shapes(draw, 1, 3)
    axis = draw(st.integers(0, len(xs) - 1))
    ishape = shapes(draw, 0, 2)
    idt = draw(st.sampled_from([I64, I32]))
    n = xs[axis]
    return Case({"axis": axis}, lambda g, dt: [rand(g, xs, dt), torch.randint(0, n, ishape, generator=g).to(idt)])


def _take_ref(x, idx, axis):
    return x[(slice(None),) * axis + (idx.long(),)].clone()


def _scatter_gen(unique):
    def gen(draw, dtype, smooth):
        xs = shapes(draw, 1, 3)
        axis = draw(st.integers(0, len(xs) - 1))
        n = xs[axis]
        if unique:
            k = draw(st.integers(0, n))
            ishape = draw(st.sampled_from([(k,), (1, k)] + ([()] if k == 1 else [])))
        else:
            ishape = shapes(draw, 0, 2)
        idt = draw(st.sampled_from([I64, I32]))
        vshape = xs[:axis] + ishape + xs[axis + 1:]

        def make(g, dt):
            if unique:
                idx = torch.randperm(n, generator=g)[:math.prod(ishape)].reshape(ishape)
            else:
                idx = torch.randint(0, n, ishape, generator=g)
            return [rand(g, xs, dt), idx.to(idt), rand(g, vshape, dt)]
        return Case({"axis": axis}, make)
    return gen


def _scatter_ref(accumulate):
    def ref(x, idx, v, axis):
        n_i = idx.ndim
        vt = v.movedim(tuple(range(axis, axis + n_i)), tuple(range(n_i))) if n_i else v.unsqueeze(0)
        xt = x.movedim(axis, 0).clone()
        flat_idx = idx.reshape(-1).long()
        vt = vt.reshape((flat_idx.numel(),) + xt.shape[1:])
        if accumulate and x.dtype == BOOL:
            raise AssertionError("no bool scatter_add")
        xt.index_put_((flat_idx,), vt, accumulate=accumulate)
        return xt.movedim(0, axis)
    return ref


add(Entry("take", _take_gen, _take_ref, dtypes=FLOATS + INTS + (BOOL,), linear=((0,),)))
add(Entry("scatter_add", _scatter_gen(False), _scatter_ref(True), dtypes=FLOATS + INTS, linear=((0, 2),)))
add(Entry("scatter", _scatter_gen(True), _scatter_ref(False), dtypes=ALL, linear=((0, 2),)))


def _block_params(draw):
    """A shape, and a strided block of it: start, strides and the block's shape."""
    xs = shapes(draw, 1, 3)
    start, strides, vs = [], [], []
    for n in xs:
        st_ = draw(st.integers(1, 3))
        s0 = draw(st.integers(0, n - 1))
        start.append(s0), strides.append(st_), vs.append(draw(st.integers(0, 1 + (n - 1 - s0) // st_)))
    return xs, tuple(start), tuple(strides), tuple(vs)


def _update_slice_gen(draw, dtype, smooth):
    xs, start, strides, vs = _block_params(draw)
    return Case({"start": start, "strides": strides}, lambda g, dt: [rand(g, xs, dt), rand(g, vs, dt)])


def _block(start, shape, strides):
    return tuple(slice(s, s + n * st_, st_) for s, n, st_ in zip(start, shape, strides))


def _update_slice_ref(x, v, start, strides):
    out = x.clone()
    out[_block(start, v.shape, strides)] = v
    return out


add(Entry("update_slice", _update_slice_gen, _update_slice_ref, dtypes=ALL, linear=((0, 1),)))


def _split_block_gen(draw, dtype, smooth):
    xs, start, strides, vs = _block_params(draw)
    return Case({"start": start, "strides": strides, "shape": vs}, lambda g, dt: [rand(g, xs, dt)])


def _split_block_ref(x, start, strides, shape):
    rest = x.clone()
    rest[_block(start, shape, strides)] = 0
    return rest, x[_block(start, shape, strides)].clone()


add(Entry("split_block", _split_block_gen, _split_block_ref, dtypes=ALL, linear=((0,),)))


def _along_gen(scatter):
    def gen(draw, dtype, smooth):
        xs = shapes(draw, 1, 3)
        axis = draw(st.integers(0, len(xs) - 1))
        ishape = tuple(draw(st.integers(1, 3)) if d == axis else draw(st.integers(1, s)) for d, s in enumerate(xs))
        idt = draw(st.sampled_from([I64, I32]))
        n = xs[axis]

        def make(g, dt):
            idx = torch.randint(0, n, ishape, generator=g).to(idt)
            args = [rand(g, xs, dt), idx]
            if scatter:
                args.append(rand(g, ishape, dt))
            return args
        return Case({"axis": axis}, make)
    return gen


def _along_index(idx, axis):
    grids = list(torch.meshgrid(*[torch.arange(s) for s in idx.shape], indexing="ij"))
    grids[axis] = idx.long()
    return tuple(grids)


def _take_along_ref(x, idx, axis):
    return x[_along_index(idx, axis)].clone()


def _scatter_add_along_ref(x, idx, v, axis):
    out = x.clone()
    out.index_put_(_along_index(idx, axis), v, accumulate=True)
    return out


add(Entry("take_along_axis", _along_gen(False), _take_along_ref, dtypes=FLOATS + INTS, linear=((0,),)))
add(Entry("scatter_add_along", _along_gen(True), _scatter_add_along_ref, dtypes=FLOATS + INTS,
          linear=((0, 2),)))


def _sort_gen(draw, dtype, smooth):
    shape = shapes(draw, 1, 3)
    axis = draw(st.integers(0, len(shape) - 1))
    descending, stable = draw(st.booleans()), draw(st.booleans())
    # ties only where the order of equal keys is defined (stable sort)
    tie = stable and not smooth and draw(st.booleans())

    return Case({"axis": axis, "descending": descending, "stable": stable}, _ordered_values(shape, tie))


def _ordered_values(shape, tie):
    """make(g, dt) for sort/topk: ties (tie_values), or distinct values a step apart (so
    finite differences never reorder them)."""
    def make(g, dt):
        if tie:
            return [tie_values(g, shape, dt)]
        n = math.prod(shape)
        vals = torch.randperm(n, generator=g).to(F64) - n / 2
        if dt.is_floating_point:
            vals = vals * 0.25 + torch.rand(n, generator=g, dtype=F64) * 0.1
        return [vals.reshape(shape).to(dt)]
    return make


def _sort_ref(x, axis, descending, stable):
    # independent: rank by (key, position) with a stable argsort built from comparisons
    n = x.shape[axis]
    xm = x.movedim(axis, -1)
    keys = xm.to(F64) if not x.dtype == BOOL else xm.to(F64)
    a = keys.unsqueeze(-1)
    b = keys.unsqueeze(-2)
    before = (b > a) if descending else (b < a)
    pos = torch.arange(n)
    earlier_equal = (b == a) & (pos.view(1, n) < pos.view(n, 1))
    rank = (before | earlier_equal).sum(-1)               # rank[i] = output slot of element i
    indices = torch.empty_like(rank)
    indices.scatter_(-1, rank, pos.expand_as(rank).contiguous())
    values = torch.gather(xm, -1, indices)
    return values.movedim(-1, axis), indices.movedim(-1, axis)


add(Entry("sort", _sort_gen, _sort_ref, dtypes=FLOATS + INTS, ref_f64=False))


def _max_pool_gen(draw, dtype, smooth):
    nsp = draw(st.integers(2, 3))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nsp))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(nsp))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nsp))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    spatial = tuple(draw(st.integers(0, 3)) + d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) + spatial
    params = {"kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation,
              "ceil_mode": draw(st.booleans())}
    return Case(params, lambda g, dt: [rand(g, shape, dt)])


def _max_pool_ref(x, kernel, stride, padding, dilation, ceil_mode):
    pool = torch.nn.functional.max_pool2d if len(kernel) == 2 else torch.nn.functional.max_pool3d
    return tuple(pool(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True))


add(Entry("max_pool", _max_pool_gen, _max_pool_ref, dtypes=(F32, F64)))


def _pool_operands(draw):
    """(params, input shape, indices) of a max pooling drawn as _max_pool_gen draws one, its
    indices torch's for a random input (ties impossible)."""
    case = _max_pool_gen(draw, F64, True)
    shape = case.make(torch.Generator().manual_seed(0), F64)[0].shape
    x = torch.randn(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))), dtype=F64)
    return case.params, shape, _max_pool_ref(x, **case.params)[1]


def _pool_tangent_gen(draw, dtype, smooth):
    params, shape, indices = _pool_operands(draw)
    return Case(params, lambda g, dt: [rand(g, shape, dt), indices])


def _pool_tangent_ref(t, indices, **_):
    """The tangent at each window's maximum, written as a gather over the plane."""
    n, c = indices.shape[:2]
    return t.reshape(n, c, -1).gather(2, indices.reshape(n, c, -1)).reshape(indices.shape)


def _pool_cotangent_gen(draw, dtype, smooth):
    params, shape, indices = _pool_operands(draw)
    return Case({**params, "spatial": tuple(shape[2:])}, lambda g, dt: [rand(g, indices.shape, dt), indices])


def _pool_cotangent_ref(ct, indices, *, spatial, **_):
    """Each window's cotangent summed into the plane at its maximum (index_add, not torch's kernel)."""
    n, c = indices.shape[:2]
    out = torch.zeros(n, c, math.prod(spatial), dtype=ct.dtype)
    for i in range(n):
        for j in range(c):
            out[i, j].index_add_(0, indices[i, j].reshape(-1), ct[i, j].reshape(-1))
    return out.reshape((n, c) + tuple(spatial))


# max pooling's tangent and cotangent on eager levels (prims/pool.py), each the other's transpose
add(Entry("max_pool_tangent", _pool_tangent_gen, _pool_tangent_ref, dtypes=(F32, F64), linear=((0,),)))
add(Entry("max_pool_cotangent", _pool_cotangent_gen, _pool_cotangent_ref, dtypes=(F32, F64), linear=((0,),)))


_UPSAMPLE_OPS = [("upsample_nearest1d", 1, 0), ("upsample_nearest2d", 2, 0), ("upsample_nearest3d", 3, 0),
                 ("_upsample_nearest_exact1d", 1, 0), ("_upsample_nearest_exact2d", 2, 0),
                 ("upsample_linear1d", 1, 1), ("upsample_bilinear2d", 2, 1), ("upsample_bicubic2d", 2, 1),
                 ("upsample_trilinear3d", 3, 1)]


def _upsample_gen(backward):
    """F.interpolate's kernels: sizes up and down, align_corners, given scales (or None)."""
    def gen(draw, dtype, smooth):
        op, nsp, flags = draw(st.sampled_from(_UPSAMPLE_OPS))
        in_size = tuple(draw(st.integers(1, 4)) for _ in range(nsp))
        out_size = tuple(draw(st.integers(1, 5)) for _ in range(nsp))
        rest = tuple(draw(st.booleans()) for _ in range(flags)) + tuple(
            draw(st.sampled_from([None, 0.5, 1.5, 2.0])) for _ in range(nsp))
        lead = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        params = {"op": op, "output_size": out_size, "rest": rest}
        if backward:
            return Case(dict(params, input_size=in_size), lambda g, dt: [rand(g, lead + out_size, dt)])
        return Case(params, lambda g, dt: [rand(g, lead + in_size, dt)])
    return gen


def _upsample_ref(x, op, output_size, rest):
    return getattr(torch.ops.aten, op).default(x, list(output_size), *rest)


def _upsample_backward_ref(ct, op, input_size, output_size, rest):
    return getattr(torch.ops.aten, op + "_backward").default(ct, list(output_size), list(ct.shape[:2]) + list(input_size),
                                                             *rest)


def _spatial_map_gen(backward):
    """avg_pool2d/3d (kernel, stride, padding, ceil_mode, count_include_pad, divisor_override),
    adaptive average pooling and reflect / replicate padding of (N, C, *spatial)."""
    def gen(draw, dtype, smooth):
        nsp = draw(st.integers(2, 3))
        spatial = tuple(draw(st.integers(3, 5)) for _ in range(nsp))
        kind = draw(st.sampled_from(["adaptive", "avg", "pad"]))
        if kind == "adaptive":
            op = f"_adaptive_avg_pool{nsp}d"
            args = (tuple(draw(st.integers(1, 4)) for _ in range(nsp)),)
        elif kind == "pad":
            op = f"{draw(st.sampled_from(['reflection_pad', 'replication_pad']))}{nsp}d"
            args = (tuple(draw(st.integers(0, 2)) for _ in range(2 * nsp)),)
        else:
            op = f"avg_pool{nsp}d"
            kernel = tuple(draw(st.integers(1, 3)) for _ in range(nsp))
            args = (kernel, tuple(draw(st.integers(1, 2)) for _ in range(nsp)),
                    tuple(draw(st.integers(0, k // 2)) for k in kernel), draw(st.booleans()), draw(st.booleans()),
                    draw(st.sampled_from([None, 3])))
        lead = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        if backward:
            out = getattr(torch.ops.aten, op).default(torch.empty(lead + spatial, device="meta"), *args).shape
            return Case({"op": op, "input_size": spatial, "args": args}, lambda g, dt: [rand(g, tuple(out), dt)])
        return Case({"op": op, "args": args}, lambda g, dt: [rand(g, lead + spatial, dt)])
    return gen


def _spatial_map_backward_ref(ct, op, input_size, args):
    stand_in = torch.zeros(tuple(ct.shape[:2]) + tuple(input_size), dtype=ct.dtype)
    bwd = getattr(torch.ops.aten, op + "_backward").default
    return bwd(ct, stand_in) if op.startswith("_adaptive") else bwd(ct, stand_in, *args)


# average pooling's and reflect/replicate padding's kernels on eager levels (prims/resample.py):
# linear, each the other's transpose
add(Entry("spatial_map", _spatial_map_gen(False), lambda x, op, args: getattr(torch.ops.aten, op).default(x, *args),
          dtypes=(F32, F64), linear=((0,),)))
add(Entry("spatial_map_backward", _spatial_map_gen(True), _spatial_map_backward_ref, dtypes=(F32, F64),
          linear=((0,),)))


# F.interpolate's kernels on eager levels (prims/resample.py): linear, each the other's transpose
add(Entry("upsample", _upsample_gen(False), _upsample_ref, dtypes=(F32, F64), linear=((0,),)))
add(Entry("upsample_backward", _upsample_gen(True), _upsample_backward_ref, dtypes=(F32, F64), linear=((0,),)))


def _topk_gen(draw, dtype, smooth):
    shape = shapes(draw, 1, 3)
    axis = draw(st.integers(0, len(shape) - 1))
    params = {"k": draw(st.integers(0, shape[axis])), "axis": axis, "largest": draw(st.booleans()),
              "sorted_": draw(st.booleans())}
    tie = not smooth and draw(st.booleans())
    return Case(params, _ordered_values(shape, tie))


add(Entry("topk", _topk_gen, lambda x, k, axis, largest, sorted_: tuple(torch.topk(x, k, axis, largest, sorted_)),
          dtypes=FLOATS + INTS, ref_f64=False))


# ---------------------------------------------------------------- fused (prims/fused.py)

def _log_softmax_gen(draw, dtype, smooth):
    shape = shapes(draw, 1, 3)
    axis = draw(st.integers(0, len(shape) - 1))
    return Case({"axis": axis}, lambda g, dt: [rand(g, shape, dt)])


def _nll_gen(draw, dtype, smooth, backward=False):
    c = draw(st.integers(1, 4))
    n = draw(st.sampled_from([None, 1, 3]))          # None: one example, x (C,) and a 0-d target
    reduction = draw(st.integers(0, 2))
    ignore_index = draw(st.sampled_from([-100, 0])) if c > 1 else -100
    shape = (c,) if n is None else (n, c)

    def make(g, dt):
        target = torch.randint(0, c, () if n is None else (n,), generator=g)
        target.view(-1)[0] = c - 1                    # one target kept (a mean over none is nan)
        if n is not None and n > 1:
            target[1] = ignore_index                  # and one ignored
        if backward:                                  # the cotangent of the loss
            return [rand(g, tuple(target.shape) if reduction == 0 else (), dt), target]
        return [rand(g, shape, dt), target]
    params = {"reduction": reduction, "ignore_index": ignore_index}
    return Case(dict(params, shape=shape) if backward else params, make)


def _nll_backward_ref(ct, target, shape, reduction, ignore_index):
    total = (target != ignore_index).sum().to(ct.dtype)
    return torch.ops.aten.nll_loss_backward(ct, ct.new_empty(shape), target, None, reduction, ignore_index, total)


add(Entry("log_softmax", _log_softmax_gen, lambda x, axis: torch.log_softmax(x, axis), dtypes=(F32, F64)))
add(Entry("softmax", _log_softmax_gen, lambda x, axis: torch.softmax(x, axis), dtypes=(F32, F64)))


def _rowwise_linear_gen(out):
    """(t, y) with y = softmax or log_softmax of a random x along a random axis."""
    def gen(draw, dtype, smooth):
        shape = shapes(draw, 1, 3)
        axis = draw(st.integers(0, len(shape) - 1))
        return Case({"axis": axis}, lambda g, dt: [rand(g, shape, dt), out(rand(g, shape, dt), axis)])
    return gen


def _log_softmax_tangent_ref(t, y, axis):
    """J t for J = I - 1 s^T along axis, s = exp(y), in float64 (independent of the kernels)."""
    td, s = t.double(), y.double().exp()
    return (td - (td * s).sum(axis, keepdim=True)).to(t.dtype)


def _log_softmax_cotangent_ref(c, y, axis):
    """J^T c = c - s sum(c)."""
    cd, s = c.double(), y.double().exp()
    return (cd - s * cd.sum(axis, keepdim=True)).to(c.dtype)


def _softmax_tangent_ref(t, y, axis):
    """J t for J = diag(y) - y y^T."""
    td, yd = t.double(), y.double()
    return (yd * (td - (td * yd).sum(axis, keepdim=True))).to(t.dtype)


# The tangents and cotangents of log_softmax and softmax: linear in t (transposes of each other;
# softmax's is its own), their derivatives in y checked as any primitive's.
add(Entry("log_softmax_tangent", _rowwise_linear_gen(torch.log_softmax), _log_softmax_tangent_ref,
          dtypes=(F32, F64), linear=((0,),)))
add(Entry("log_softmax_cotangent", _rowwise_linear_gen(torch.log_softmax), _log_softmax_cotangent_ref,
          dtypes=(F32, F64), linear=((0,),)))
add(Entry("softmax_tangent", _rowwise_linear_gen(torch.softmax), _softmax_tangent_ref,
          dtypes=(F32, F64), linear=((0,),)))
add(Entry("nll_loss", _nll_gen, lambda x, t, reduction, ignore_index: torch.ops.aten.nll_loss_forward(
    x, t, None, reduction, ignore_index)[0], dtypes=(F32, F64), linear=((0,),)))
add(Entry("nll_loss_backward", lambda draw, dtype, smooth: _nll_gen(draw, dtype, smooth, backward=True),
          _nll_backward_ref, dtypes=(F32, F64), linear=((0,),)))


def _activation_backward_gen(squash):
    """(t, y) with y an activation's output (tanh: in (-1, 1); sigmoid: in (0, 1))."""
    def gen(draw, dtype, smooth):
        shape = shapes(draw)
        return Case({}, lambda g, dt: [rand(g, shape, dt), squash(rand(g, shape, F64)).to(dt)])
    return gen


add(Entry("tanh_backward", _activation_backward_gen(torch.tanh), lambda t, y: t * (1 - y * y),
          dtypes=(F32, F64), linear=((0,),)))
add(Entry("sigmoid_backward", _activation_backward_gen(torch.sigmoid), lambda t, y: t * y * (1 - y),
          dtypes=(F32, F64), linear=((0,),)))
# relu's derivative reads its output: y drawn from randn has no zeros, so the mask's zero
# derivative matches finite differences
add(Entry("threshold_backward", _activation_backward_gen(lambda v: v), lambda t, y: torch.where(y <= 0, 0, t),
          dtypes=(F32, F64), linear=((0,),)))
add(Entry("gelu_backward", _activation_backward_gen(lambda v: v), lambda t, x: torch.ops.aten.gelu_backward(t, x),
          dtypes=(F32, F64), linear=((0,),)))
add(Entry("tanh_gelu_backward", _activation_backward_gen(lambda v: v),
          lambda t, x: torch.ops.aten.gelu_backward(t, x, approximate="tanh"), dtypes=(F32, F64), linear=((0,),)))
add(Entry("gelu", lambda draw, dtype, smooth: (lambda shape, a: Case({"approximate": a}, lambda g, dt: [rand(g, shape, dt)]))(
    shapes(draw), draw(st.sampled_from(["none", "tanh"]))),
          lambda x, approximate: torch.nn.functional.gelu(x, approximate=approximate), dtypes=(F32, F64)))
add(Entry("relu", lambda draw, dtype, smooth: (lambda shape: Case({}, lambda g, dt: [rand(g, shape, dt)]))(shapes(draw)),
          torch.relu, dtypes=(F32, F64)))


# prims/fused_activations.py: (params drawn, f in torch, f'(x) written out in float64). Inputs
# are randn * 3, so hardswish's and hardsigmoid's kinks at +-3 are inside the range drawn.
_ACTIVATIONS = {
    "leaky_relu": (lambda draw: {"negative_slope": draw(st.sampled_from([0.01, 0.2, -0.5]))},
                   lambda x, negative_slope: F.leaky_relu(x, negative_slope),
                   lambda x, negative_slope: torch.where(x > 0, x.new_ones(()), negative_slope)),
    "hardtanh": (lambda draw: dict(zip(("min_val", "max_val"), draw(st.sampled_from([(-1.0, 1.0), (0.0, 6.0), (-2.0, 0.5)])))),
                 lambda x, min_val, max_val: F.hardtanh(x, min_val, max_val),
                 lambda x, min_val, max_val: ((x > min_val) & (x < max_val)).to(x.dtype)),
    "hardswish": (lambda draw: {}, F.hardswish,
                  lambda x: torch.where(x <= -3, x.new_zeros(()), torch.where(x < 3, x / 3 + 0.5, x.new_ones(())))),
    # (torch.func has no forward-over-reverse for F.hardsigmoid: its clamp form, the same values)
    "hardsigmoid": (lambda draw: {}, lambda x: (x + 3).clamp(0, 6) / 6, lambda x: ((x > -3) & (x < 3)).to(x.dtype) / 6),
    "elu": (lambda draw: dict(zip(("alpha", "scale", "input_scale"), draw(st.sampled_from(
                [(1.0, 1.0, 1.0), (1.6732632423543772, 1.0507009873554805, 1.0), (0.5, 1.0, 2.0)])))),
            lambda x, alpha, scale, input_scale: torch.ops.aten.elu(x, alpha, scale, input_scale),
            lambda x, alpha, scale, input_scale: torch.where(x <= 0, alpha * scale * input_scale
                                                             * torch.exp(x * input_scale), x.new_tensor(scale))),
    "softplus": (lambda draw: dict(zip(("beta", "threshold"), draw(st.sampled_from([(1.0, 20.0), (2.0, 3.0), (0.5, 1.0)])))),
                 lambda x, beta, threshold: F.softplus(x, beta, threshold),
                 lambda x, beta, threshold: torch.where(x * beta > threshold, x.new_ones(()), torch.sigmoid(x * beta))),
}


def _activation_gen(name, backward):
    def gen(draw, dtype, smooth):
        shape, params = shapes(draw), _ACTIVATIONS[name][0](draw)
        if backward:
            return Case(params, lambda g, dt: [rand(g, shape, dt), (rand(g, shape, F64) * 3).to(dt)])
        return Case(params, lambda g, dt: [(rand(g, shape, F64) * 3).to(dt)])
    return gen


def _log_sigmoid_gen(backward):
    def gen(draw, dtype, smooth):
        shape = shapes(draw)
        if backward:
            return Case({}, lambda g, dt: [rand(g, shape, dt), (rand(g, shape, F64) * 3).to(dt)])
        return Case({}, lambda g, dt: [(rand(g, shape, F64) * 3).to(dt)])
    return gen


def _log_sigmoid_call(params, x):
    return wrap(REGISTRY["log_sigmoid"].bind(unwrap(x))[0])


def _log_sigmoid_backward_call(params, t, x):
    """The tangent t sigmoid(-x) with torch's buffer of x (which has no derivative of its own)."""
    buffer = REGISTRY["log_sigmoid"].bind(unwrap(x))[1]
    return wrap(REGISTRY["log_sigmoid_backward"].bind(unwrap(t), unwrap(x), buffer))


# F.logsigmoid's value (its second output, the CPU buffer exp(-|x|), only feeds the backward
# kernel) and its tangent t sigmoid(-x)
add(Entry("log_sigmoid", _log_sigmoid_gen(False), F.logsigmoid, call=_log_sigmoid_call, dtypes=(F32, F64)))
add(Entry("log_sigmoid_backward", _log_sigmoid_gen(True), lambda t, x: (t.double() * torch.sigmoid(-x.double())).to(t.dtype),
          call=_log_sigmoid_backward_call, dtypes=(F32, F64), linear=((0,),), covers=("log_sigmoid",)))


def _bce_gen(draw, dtype, smooth):
    """x in (0.02, 0.98) (the kernel's slope floor max(x (1 - x), 1e-12) not reached), t in [0, 1]."""
    shape = draw(st.sampled_from([(3,), (2, 3), (1, 4, 2)]))
    reduction = draw(st.integers(0, 2))
    return Case({"reduction": reduction}, lambda g, dt: [(torch.rand(shape, generator=g, dtype=F64) * 0.96 + 0.02).to(dt),
                                                          torch.rand(shape, generator=g, dtype=F64).to(dt)])


def _bce_ref(x, t, reduction):
    xd, td = x.double(), t.double()
    loss = -(td * torch.log(xd) + (1 - td) * torch.log1p(-xd))
    return (loss if reduction == 0 else loss.mean() if reduction == 1 else loss.sum()).to(x.dtype)


# prims/fused_losses.py: F.binary_cross_entropy's kernel and its slope (x - t) / (x (1 - x))
add(Entry("binary_cross_entropy", _bce_gen, _bce_ref, dtypes=(F32, F64)))
add(Entry("bce_slope", lambda draw, dtype, smooth: Case({}, _bce_gen(draw, dtype, smooth).make),
          lambda x, t: ((x.double() - t.double()) / (x.double() * (1 - x.double()))).to(x.dtype), dtypes=(F32, F64)))


def _regression_gen(param, values):
    def gen(draw, dtype, smooth):
        shape = draw(st.sampled_from([(3,), (2, 3), (1, 4, 2)]))
        params = {param: draw(st.sampled_from(values))}
        return Case(params, lambda g, dt: [(rand(g, shape, F64) * 2).to(dt), rand(g, shape, dt)])
    return gen


def _with_reduction(gen):
    def with_it(draw, dtype, smooth):
        case = gen(draw, dtype, smooth)
        return Case(dict(case.params, reduction=draw(st.integers(0, 2))), case.make)
    return with_it


def _reduce_ref(loss, reduction):
    return loss if reduction == 0 else loss.mean() if reduction == 1 else loss.sum()


# prims/fused_losses.py: huber and smooth_l1 as torch's kernels, each with its slope per element
# (their references in elementary ops: torch.func has no forward-over-reverse for the kernels)
def _huber_ref(x, y, reduction, delta):
    d = x - y
    return _reduce_ref(torch.where(d.abs() <= delta, 0.5 * d * d, delta * (d.abs() - 0.5 * delta)), reduction)


def _smooth_l1_ref(x, y, reduction, beta):
    d = x - y
    if beta == 0:
        return _reduce_ref(d.abs(), reduction)
    return _reduce_ref(torch.where(d.abs() < beta, 0.5 * d * d / beta, d.abs() - 0.5 * beta), reduction)


add(Entry("huber_loss", _with_reduction(_regression_gen("delta", [1.0, 0.5, 2.0])), _huber_ref, dtypes=(F32, F64)))
add(Entry("huber_loss_slope", _regression_gen("delta", [1.0, 0.5, 2.0]),
          lambda x, y, delta: (x - y).clamp(-delta, delta), dtypes=(F32, F64)))
add(Entry("smooth_l1_loss", _with_reduction(_regression_gen("beta", [1.0, 0.5, 2.0, 0.0])), _smooth_l1_ref,
          dtypes=(F32, F64)))
add(Entry("smooth_l1_loss_slope", _regression_gen("beta", [1.0, 0.5, 2.0, 0.0]),
          lambda x, y, beta: torch.where((x - y).abs() < beta, (x - y) / max(beta, 1e-300), (x - y).sign()),
          dtypes=(F32, F64)))


for _name, (_, _f, _slope) in _ACTIVATIONS.items():
    add(Entry(_name, _activation_gen(_name, False), _f, dtypes=(F32, F64)))
    add(Entry(_name + "_backward", _activation_gen(_name, True),
              (lambda slope: lambda t, x, **p: (t.double() * slope(x.double(), **p)).to(t.dtype))(_slope),
              dtypes=(F32, F64), linear=((0,),)))


def _norm_shape(draw, channels):
    """(N, M) rows, or (N, C, *spatial) channels (0-2 spatial dims)."""
    if not channels:
        return (draw(st.integers(1, 4)), draw(st.integers(2, 5)))
    return (draw(st.integers(1, 3)), draw(st.integers(1, 3))) + tuple(
        draw(st.lists(st.integers(1, 3), max_size=2)))


def _stats_over(x, channels):
    """(the dims each statistic reduces, the statistic's broadcast shape)."""
    d = 1 if channels else 0
    return tuple(i for i in range(x.dim()) if i != d), [x.shape[d] if i == d else 1 for i in range(x.dim())]


def _rows_gen(draw, dtype, smooth):
    channels = draw(st.booleans())
    shape = _norm_shape(draw, channels)
    if channels and math.prod(shape) // shape[1] < 2:
        shape = (2,) + shape[1:]                      # more than one value per channel
    eps = draw(st.sampled_from([1e-5, 0.1]))
    return Case({"eps": eps, "channels": channels}, lambda g, dt: [rand(g, shape, dt)])


def _rows_ref(x, eps, channels=False):
    """Independent of prims/fused_norm.py: the definition, in float64."""
    dims, view = _stats_over(x, channels)
    xd = x.double()
    mean = xd.mean(dims)
    rstd = 1 / torch.sqrt(((xd - mean.view(view)) ** 2).mean(dims) + eps)
    return tuple(v.to(x.dtype) for v in ((xd - mean.view(view)) * rstd.view(view), mean, rstd))


def _tangent_gen(draw, dtype, smooth):
    channels = draw(st.booleans())
    shape = _norm_shape(draw, channels)

    def make(g, dt):
        x = rand(g, shape, dt)
        _, mean, rstd = _rows_ref(x, 0.1, channels)
        return [rand(g, shape, dt), x, mean, rstd]
    return Case({"channels": channels}, make)


def _tangent_ref(t, x, mean, rstd, channels=False):
    """J t for J = d xhat / dx, written out (independent of the kernel)."""
    dims, view = _stats_over(x, channels)
    td, r = t.double(), rstd.double().view(view)
    xhat = (x.double() - mean.double().view(view)) * r
    return (r * (td - td.mean(dims, keepdim=True) - xhat * (td * xhat).mean(dims, keepdim=True))).to(t.dtype)


# The fused row normalization (layer_norm, group_norm on eager levels): the derivative checks
# run normalize_tangent (jvp), its transpose (vjp) and their second-order rules.
add(Entry("normalize_rows", _rows_gen, _rows_ref, dtypes=(F32, F64)))
add(Entry("normalize_tangent", _tangent_gen, _tangent_ref, dtypes=(F32, F64), linear=((0,),)))


def _affine_view(x):
    """A (K,) vector's broadcast shape along dim 1 of x."""
    return [x.shape[1] if i == 1 else 1 for i in range(x.dim())]


def _affine_gen(draw, dtype, smooth):
    channels = draw(st.booleans())
    shape = _norm_shape(draw, channels)
    if channels and math.prod(shape) // shape[1] < 2:
        shape = (2,) + shape[1:]
    eps = draw(st.sampled_from([1e-5, 0.1]))
    return Case({"eps": eps, "channels": channels},
                lambda g, dt: [rand(g, shape, dt), rand(g, (shape[1],), dt), rand(g, (shape[1],), dt)])


def _affine_ref(x, w, b, eps, channels=False):
    """Independent of prims/fused_norm_affine.py: the definition, in float64."""
    xhat, mean, rstd = _rows_ref(x.double(), eps, channels)
    v = _affine_view(x)
    return ((xhat * w.double().view(v) + b.double().view(v)).to(x.dtype), mean.to(x.dtype), rstd.to(x.dtype))


def _affine_operands(g, dt, shape, channels):
    x = rand(g, shape, dt)
    _, mean, rstd = _rows_ref(x, 0.1, channels)
    return x, rand(g, (shape[1],), dt), mean, rstd


def _affine_tangent_gen(with_dx):
    def gen(draw, dtype, smooth):
        channels = draw(st.booleans())
        shape = _norm_shape(draw, channels)

        def make(g, dt):
            x, w, mean, rstd = _affine_operands(g, dt, shape, channels)
            dx = [rand(g, shape, dt)] if with_dx else []
            return [*dx, rand(g, (shape[1],), dt), rand(g, (shape[1],), dt), x, w, mean, rstd]
        return Case({"channels": channels, "with_dx": with_dx}, make)
    return gen


def _affine_tangent_ref(*args, channels=False, with_dx=True):
    """w * J dx + xhat * dw + db (without its first term when there is no dx), written out."""
    dx, dw, db, x, w, mean, rstd = args if with_dx else (None, *args)
    dims, view = _stats_over(x, channels)
    v, r = _affine_view(x), rstd.double().view(view)
    xhat = (x.double() - mean.double().view(view)) * r
    out = xhat * dw.double().view(v) + db.double().view(v)
    if dx is not None:
        t = dx.double()
        out = out + w.double().view(v) * r * (t - t.mean(dims, keepdim=True) - xhat * (t * xhat).mean(dims, keepdim=True))
    return out.to(x.dtype)


def _affine_cotangent_gen(draw, dtype, smooth):
    channels = draw(st.booleans())
    shape = _norm_shape(draw, channels)
    mask = draw(st.sampled_from([m for m in itertools.product((False, True), repeat=3) if any(m)]))

    def make(g, dt):
        x, w, mean, rstd = _affine_operands(g, dt, shape, channels)
        return [rand(g, shape, dt), x, w, mean, rstd]
    return Case({"channels": channels, "mask": mask}, make)


def _affine_cotangent_ref(ct, x, w, mean, rstd, channels=False, mask=(True, True, True)):
    """(J (w ct), sum(ct xhat), sum(ct)) over every dim but 1, the ones mask asks for."""
    dims, view = _stats_over(x, channels)
    v, r = _affine_view(x), rstd.double().view(view)
    xhat = (x.double() - mean.double().view(view)) * r
    u = ct.double() * w.double().view(v)
    gx = r * (u - u.mean(dims, keepdim=True) - xhat * (u * xhat).mean(dims, keepdim=True))
    other = tuple(i for i in range(x.dim()) if i != 1)
    out = (gx, (ct.double() * xhat).sum(other), ct.double().sum(other))
    return tuple(o.to(ct.dtype) for o, m in zip(out, mask) if m)


# Layer norm and training batch norm with their affine (prims/fused_norm_affine.py): the
# derivative checks run the tangent (jvp), the cotangent (vjp) and their second-order rules.
add(Entry("normalize_affine", _affine_gen, _affine_ref, dtypes=(F32, F64)))
add(Entry("normalize_affine_tangent", _affine_tangent_gen(True), _affine_tangent_ref, dtypes=(F32, F64),
          linear=((0, 1, 2),)))
add(Entry("normalize_affine_tangent(no dx)", _affine_tangent_gen(False), _affine_tangent_ref,
          prim="normalize_affine_tangent", dtypes=(F32, F64), linear=((0, 1),)))
add(Entry("normalize_affine_cotangent", _affine_cotangent_gen, _affine_cotangent_ref, dtypes=(F32, F64),
          linear=((0,),)))


# ---------------------------------------------------------------- random

def _random_gen(draw, dtype, smooth):
    shape = shapes(draw)
    dist = draw(st.sampled_from(["normal", "uniform"]))
    return Case({"shape": shape, "dtype": dtype, "device": CPU, "dist": dist}, lambda g, dt: [])


add(Entry("random", _random_gen, None, dtypes=FLOATS, kind="random"))


# ---------------------------------------------------------------- collectives (through a named vmap)

def _coll_gen(draw, dtype, smooth):
    shape = shapes(draw, 1, 3)
    tie = not smooth and draw(st.booleans())
    return Case({}, lambda g, dt: [tie_values(g, shape, dt) if tie else rand(g, shape, dt)])


def _coll_call(fn):
    def call(params, x):
        return functx.vmap(lambda v: fn(v, "i"), axis_name="i")(x)
    return call


add(Entry("psum", _coll_gen, lambda x: x.sum(0, keepdim=True, dtype=x.dtype).expand_as(x).clone(),
          call=_coll_call(functx.psum), linear=((0,),), dtypes=(F32, F64) + INTS))
add(Entry("pmax", _coll_gen, lambda x: x.amax(0, keepdim=True).expand_as(x).clone(),
          call=_coll_call(functx.pmax), dtypes=(F32, F64) + INTS))
add(Entry("all_gather", _coll_gen, lambda x: x.unsqueeze(0).expand((x.shape[0],) + x.shape).clone(),
          call=_coll_call(functx.all_gather), linear=((0,),), dtypes=(F32, F64) + INTS))


def _axis_index_gen(draw, dtype, smooth):
    return Case({"size": draw(st.integers(1, 4))}, lambda g, dt: [])


add(Entry("axis_index", _axis_index_gen, lambda size: torch.arange(size),
          call=lambda params: functx.vmap(lambda: functx.axis_index("i"), axis_name="i",
                                          axis_size=params["size"])(),
          dtypes=(I64,), kind="nullary", ref_f64=False))


# ---------------------------------------------------------------- spmd markers (on a process group of one)

def _one_process_group():
    """functx.spmd needs torch.distributed: these entries run on a group of just this process,
    created on first use (tests/test_spmd.py checks the real multi-process semantics)."""
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)


def _spmd_call(fn, in_specs, out_specs):
    def call(params, x):
        _one_process_group()
        return functx.spmd(fn, "dp", in_specs, out_specs)(x)
    return call


# A replicated input and output: transforms outside spmd bind replicated_in/replicated_out.
add(Entry("replicated_in", _coll_gen, lambda x: x.clone(), call=_spmd_call(lambda v: v * 1.0, None, None),
          linear=((0,),), dtypes=(F32, F64), covers=("replicated_out",)))
# grad inside spmd: pvary's rules run on the tangent, invariant_ct's on the cotangents.
add(Entry("pvary", _coll_gen, lambda x: 2 * x, dtypes=(F32, F64), covers=("invariant_ct",),
          call=_spmd_call(lambda v: functx.grad(lambda u: (functx.lax.pvary(u, "dp") * u).sum())(v), None, None)))


# ---------------------------------------------------------------- opaque

def _opq_fn(x, y):
    return (torch.sin(x) * y, torch.cumprod(x, -1))


OPQ = OpaqueFunction(_opq_fn, "sin_mul_cumprod")


def _opaque_gen(draw, dtype, smooth):
    shape = shapes(draw, 1, 3)
    t = functx.TensorType(shape, dtype, CPU)
    return Case({"fn": OPQ, "out_types": (t, t), "linear_argnums": ()},
                lambda g, dt: [rand(g, shape, dt), rand(g, shape, dt)])


def _opq_lin_fn(a, v):
    return (torch.einsum("ij,...j->...i", a, v),)


OPQ_LIN = OpaqueFunction(_opq_lin_fn, "matvec")


def _opaque_lin_gen(draw, dtype, smooth):
    m, n = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    lead = shapes(draw, 0, 2)
    t = functx.TensorType(lead + (m,), dtype, CPU)
    return Case({"fn": OPQ_LIN, "out_types": (t,), "linear_argnums": (1,)},
                lambda g, dt: [rand(g, (m, n), dt), rand(g, lead + (n,), dt)])


add(Entry("opaque", _opaque_gen, lambda x, y, **p: _opq_fn(x, y), dtypes=(F32, F64), ref_f64=False))
add(Entry("opaque_linear", _opaque_lin_gen, lambda a, v, **p: _opq_lin_fn(a, v), prim="opaque",
          dtypes=(F32, F64), ref_f64=False, linear=((1,),)))



# sample_reparam: the value is the sample; the parameter's derivative is slope(param, sample).
# With slope = cos(param), (param, sample) -> sample + sin(param) has the same first
# derivatives at every point, which finite differences check.
REPARAM_SLOPE = OpaqueFunction(lambda p, s: (torch.cos(p) + 0 * s,), "cos_slope")


def _reparam_gen(draw, dtype, smooth):
    shape = shapes(draw, 1, 3)
    return Case({"slope": REPARAM_SLOPE}, lambda g, dt: [rand(g, shape, dt), rand(g, shape, dt)])


add(Entry("sample_reparam", _reparam_gen, lambda p, s, **params: s.clone(), dtypes=(F32, F64), ref_f64=False,
          fd_fn=lambda p, s, **params: s + torch.sin(p), order2=False))   # (its ref is the value, not that function)

# ---------------------------------------------------------------- conv (prims/conv.py), when present

def _conv_gen(draw, dtype, smooth):
    nsp = draw(st.integers(1, 2))
    groups = draw(st.sampled_from([1, 2]))
    transposed = draw(st.booleans())
    n = draw(st.integers(1, 2))
    cin = groups * draw(st.integers(1, 2))
    cout = groups * draw(st.integers(1, 2))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(nsp))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nsp))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nsp))
    padding = tuple(draw(st.integers(0, 1)) for _ in range(nsp))
    spatial = tuple(draw(st.integers(3, 5)) + (k - 1) * d for k, d in zip(kernel, dilation))
    if transposed:
        output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
        wshape = (cin, cout // groups) + kernel
    else:
        output_padding = (0,) * nsp
        wshape = (cout, cin // groups) + kernel
    params = {"stride": stride, "padding": padding, "dilation": dilation, "transposed": transposed,
              "output_padding": output_padding, "groups": groups}
    return Case(params, lambda g, dt: [rand(g, (n, cin) + spatial, dt), rand(g, wshape, dt)])


def _conv_ref(x, w, stride, padding, dilation, transposed, output_padding, groups):
    F = torch.nn.functional
    nsp = len(stride)
    if transposed:
        fn = (F.conv_transpose1d, F.conv_transpose2d)[nsp - 1]
        return fn(x, w, None, stride, padding, output_padding, groups, dilation)
    fn = (F.conv1d, F.conv2d)[nsp - 1]
    return fn(x, w, None, stride, padding, dilation, groups)


if "conv" in REGISTRY:
    add(Entry("conv", _conv_gen, _conv_ref, dtypes=(F32, F64), linear=((0,), (1,))))


def _conv_weight_grad_gen(draw, dtype, smooth):
    """(ct, x): a conv's input and a cotangent of its output's shape; params add w's shape."""
    case = _conv_gen(draw, dtype, smooth)
    # (no output_padding: torch's own double backward of a transposed conv with it raises, so
    # the reference has no second order there; the conv entry's rules cover it, eagerly
    # through this primitive)
    case.params["output_padding"] = (0,) * len(case.params["stride"])
    probe_x, probe_w = case.make(torch.Generator().manual_seed(0), F64)
    out_shape = tuple(_conv_ref(probe_x, probe_w, **case.params).shape)
    params = dict(case.params, shape=tuple(probe_w.shape))
    return Case(params, lambda g, dt: [rand(g, out_shape, dt), rand(g, tuple(probe_x.shape), dt)])


def _conv_weight_grad_ref(ct, x, shape, **params):
    """Independent of prims/conv.py: torch autograd's weight gradient of the conv."""
    w = torch.zeros(shape, dtype=x.dtype, requires_grad=True)
    with torch.enable_grad():
        return torch.autograd.grad(_conv_ref(x, w, **params), w, ct, create_graph=True)[0]


if "conv_weight_grad" in REGISTRY:
    add(Entry("conv_weight_grad", _conv_weight_grad_gen, _conv_weight_grad_ref, dtypes=(F32, F64),
              linear=((0,), (1,))))


# ---------------------------------------------------------------- structural primitives (transforms/)
# They carry graphs as params: the call binds the primitive itself, with params taken from a
# graph traced once per case (so every transform reaches the primitive's own rules).

def _structural(prim_name, build, example):
    """The params of the `prim_name` equation in make_graph(build)(*example), and a function
    mapping fresh arguments (like example) to that equation's operands."""
    g = functx.make_graph(build)(*example)
    eqn = next(e for e in g.eqns if e.prim.name == prim_name)
    pos = {v: i for i, v in enumerate(g.invars)}
    consts = dict(zip(g.constvars, g.consts))

    def operands(args):
        out = []
        for a in eqn.inputs:
            if a in pos:
                out.append(args[pos[a]])
            elif a in consts:
                out.append(consts[a])
            else:
                assert hasattr(a, "value"), f"{prim_name}: operand {a} is computed inside the graph"
                out.append(a.value)
        return out
    return eqn.params, operands


_BRANCHES = [lambda a: a.sin() * 2.0, lambda a: a.cos() + a, lambda a: a * a - 1.0]


def _cond_gen(draw, dtype, smooth):
    shape = shapes(draw)
    params, operands = _structural("cond", lambda i, x: functx.switch(i, _BRANCHES, x),
                                   [torch.tensor(0), torch.zeros(shape, dtype=dtype)])

    def make(g, dt):
        return operands([torch.randint(-1, 4, (), generator=g), rand(g, shape, dt)])
    return Case(params, make)


def _cond_ref(i, x, **params):
    return (_BRANCHES[min(max(int(i), 0), len(_BRANCHES) - 1)](x),)


add(Entry("cond", _cond_gen, _cond_ref, dtypes=(F32, F64)))


def _while_gen(draw, dtype, smooth):
    shape = shapes(draw)

    def build(i, x):
        return functx.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1].sin() * 1.1 + 0.1), (i, x),
                                 max_steps=4)
    params, operands = _structural("while_loop", build, [torch.tensor(0), torch.zeros(shape, dtype=dtype)])

    def make(g, dt):
        return operands([torch.randint(0, 4, (), generator=g), rand(g, shape, dt)])
    return Case(params, make)


def _while_ref(i, x, **params):
    while int(i) < 3:
        i, x = i + 1, x.sin() * 1.1 + 0.1
    return (i, x)


# Reverse mode (max_steps) records a tape (while_tape_write) and checks its length (while_tape_check).
add(Entry("while_loop", _while_gen, _while_ref, dtypes=(F32, F64), covers=("while_tape_check", "while_tape_write")))


def _scan_body(c, x):
    return c.sin() * 1.1 + x, c * x


def _scan_gen(draw, dtype, smooth):
    shape = shapes(draw)
    params, operands = _structural("scan", lambda c, xs: functx.scan(_scan_body, c, xs),
                                   [torch.zeros(shape, dtype=dtype), torch.zeros((3,) + shape, dtype=dtype)])

    def make(g, dt):
        return operands([rand(g, shape, dt), rand(g, (3,) + shape, dt)])
    return Case(params, make)


def _scan_ref(c, xs, **params):
    ys = []
    for x in xs:
        c, y = _scan_body(c, x)
        ys.append(y)
    return (c, torch.stack(ys))


add(Entry("scan", _scan_gen, _scan_ref, dtypes=(F32, F64)))


def _scan_binomial_gen(draw, dtype, smooth):
    shape = shapes(draw)
    params, operands = _structural(
        "scan", lambda c, xs: functx.scan(_scan_body, c, xs, remat="binomial", checkpoints=2),
        [torch.zeros(shape, dtype=dtype), torch.zeros((3,) + shape, dtype=dtype)])

    def make(g, dt):
        return operands([rand(g, shape, dt), rand(g, (3,) + shape, dt)])
    return Case(params, make)


# Reverse mode with remat='binomial' records scan_tangent, transposed to scan_revolve; they have
# no jvp (no forward over reverse), so no second order.
add(Entry("scan_binomial", _scan_binomial_gen, _scan_ref, prim="scan", dtypes=(F32, F64), order2=False,
          covers=("scan_tangent", "scan_revolve")))


def _ckpt_gen(draw, dtype, smooth):
    shape = shapes(draw)
    build = functx.checkpoint(lambda a: functx.checkpoint_name(a.sin(), "s") * a,
                              policy=functx.checkpoint_policies.save_only_these_names("s"))
    params, operands = _structural("checkpoint", build, [torch.zeros(shape, dtype=dtype)])
    return Case(params, lambda g, dt: operands([rand(g, shape, dt)]))


add(Entry("checkpoint", _ckpt_gen, lambda x, **params: (x.sin() * x,), dtypes=(F32, F64), covers=("checkpoint_name",)))


@functx.custom_jvp
def _cj(x, y):
    return torch.sin(x) * y


@_cj.defjvp
def _cj_jvp(primals, tangents):
    (x, y), (tx, ty) = primals, tangents
    return _cj(x, y), torch.cos(x) * y * tx + torch.sin(x) * ty


def _two_gen(draw, dtype, smooth):
    shape = shapes(draw)
    return Case({}, lambda g, dt: [rand(g, shape, dt), rand(g, shape, dt)])


add(Entry("custom_jvp_call", _two_gen, lambda x, y: torch.sin(x) * y, call=lambda p, x, y: _cj(x, y),
          dtypes=(F32, F64)))


@functx.custom_vjp
def _cv(x, y):
    return x * torch.exp(y)


def _cv_fwd(x, y):
    e = torch.exp(y)
    return x * e, (x, e)


def _cv_bwd(res, ct):
    x, e = res
    return ct * e, ct * x * e


_cv.defvjp(_cv_fwd, _cv_bwd)
# Reverse mode through custom_vjp_call linearizes into custom_lin and transposes it.
add(Entry("custom_vjp_call", _two_gen, lambda x, y: x * torch.exp(y), call=lambda p, x, y: _cv(x, y),
          dtypes=(F32, F64), fwd=False, covers=("custom_lin",)))


# tensor_hook (Tensor.register_hook, transforms/hooks.py): an identity whose transpose runs the
# hooks; with a hook that keeps the gradient it is the identity under every transform
# (tests/test_requires_grad.py checks hooks that change it against torch.func).
def _one_gen(draw, dtype, smooth):
    shape = shapes(draw)
    return Case({}, lambda g, dt: [rand(g, shape, dt)])


def _keeping_hooks():
    from functx.transforms.hooks import Hooks
    hooks = Hooks("tests/test_prims.py")
    hooks.fns[0] = lambda g: None
    return hooks


_KEEP = _keeping_hooks()
add(Entry("tensor_hook", _one_gen, lambda x: x, dtypes=(F32, F64), linear=((0,),),
          call=lambda p, x: wrap(REGISTRY["tensor_hook"].bind(unwrap(x), hooks=_KEEP))))


# debug_callback has no outputs: the entry checks that a function calling it (on the value
# and on its sine) still computes, differentiates and batches correctly; tests/test_debug.py
# checks the values the callback sees.
def _with_debug_callback(params, x):
    functx.debug.callback(lambda *values: None, x, torch.sin(x))
    return torch.sin(x)


add(Entry("debug_callback", unary_gen(), lambda x: torch.sin(x), call=_with_debug_callback, dtypes=(F32, F64)))


# ---------------------------------------------------------------- helpers for the properties

def draw_case(data, e, dtype, smooth):
    case = e.gen(data.draw, dtype, smooth)
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    g = torch.Generator().manual_seed(seed)
    args = case.make(g, dtype)
    note(f"{e.name} dtype={dtype} params={case.params} args={[getattr(a, 'shape', a) for a in args]}")
    return case, args, g


def diff_positions(args):
    return [i for i, a in enumerate(args) if is_float_t(a)]


def fn_of(e, params, args, positions, evaluator=None):
    """A user-level function of args[positions] (others fixed)."""
    evaluator = evaluator or (lambda full: call_entry(e, params, full))

    def f(*xs):
        full = list(args)
        for i, x in zip(positions, xs):
            full[i] = x
        return evaluator(full)
    return f


def float_outputs(out):
    return [i for i, o in enumerate(as_list(out)) if o.dtype.is_floating_point]


DIFF_NAMES = sorted(n for n, e in ENTRIES.items()
                    if e.kind in ("prim",) and F64 in e.dtypes and not e.nondiff)
SMOOTH_NAMES = [n for n in DIFF_NAMES if not ENTRIES[n].zero_deriv]
LINEAR_NAMES = sorted(n for n, e in ENTRIES.items() if e.linear)
ORDER2_NAMES = [n for n in SMOOTH_NAMES if ENTRIES[n].order2]
EVAL_NAMES = sorted(n for n, e in ENTRIES.items() if e.kind != "random")
VMAP_NAMES = sorted(n for n, e in ENTRIES.items() if e.kind != "random")


def test_every_primitive_has_a_table_entry():
    from test_completeness import BACKEND_INTERNAL      # no trace meets them; their own tests check them
    covered = {e.prim for e in ENTRIES.values()} | {c for e in ENTRIES.values() for c in e.covers}
    missing = sorted(set(REGISTRY) - covered - set(BACKEND_INTERNAL))
    assert not missing, f"primitives without a test-table entry in tests/test_prims.py: {missing}"
    for n in ENTRIES:
        assert ENTRIES[n].prim in REGISTRY, n


# ---------------------------------------------------------------- (a) eval vs torch

EVAL_CASES = [pytest.param(n, d, id=f"{n}-{str(d)[6:]}") for n in EVAL_NAMES for d in ENTRIES[n].dtypes]
FEW = settings(max_examples=max(2, settings.default.max_examples // 2))


@pytest.mark.parametrize("name,dtype", EVAL_CASES)
@FEW
@given(data=st.data())
def test_eval_matches_torch(name, dtype, data):
    e = ENTRIES[name]
    case, args, _ = draw_case(data, e, dtype, smooth=False)
    out = call_entry(e, case.params, args)
    ref = run_ref(e, case.params, args, dtype)
    assert_close(out, ref, dtype, f"{name} eval vs torch")
    if e.kind == "prim" and e.call is None:
        p = REGISTRY[e.prim]
        types = [functx.TensorType.of(a) if isinstance(a, torch.Tensor) else a for a in args]
        abstract = as_list(p.abstract_eval(*types, **case.params))
        assert abstract == [functx.TensorType.of(o) for o in as_list(out)], f"{name}: abstract_eval vs impl"


# ---------------------------------------------------------------- (b) graphs: check_graph, jit

@pytest.mark.parametrize("name,dtype", EVAL_CASES)
@FEW
@given(data=st.data())
def test_graph_check_and_jit(name, dtype, data):
    e = ENTRIES[name]
    case, args, _ = draw_case(data, e, dtype, smooth=False)
    pos = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    f = fn_of(e, case.params, args, pos)
    tensors = [args[i] for i in pos]
    graph = functx.make_graph(f)(*tensors)
    check_graph(graph)
    out = f(*tensors)
    assert graph.out_types == [functx.TensorType.of(o) for o in as_list(out)]
    if e.kind == "prim" and e.call is None:
        # a fused primitive of eager transforms is staged as its decomposition (prims/fused.py)
        fused = REGISTRY[e.prim].composite is not None
        assert any(eq.prim is REGISTRY[e.prim] for eq in graph.eqns) != fused, str(graph)
    jitted = functx.jit(f)(*tensors)
    assert_close(jitted, out, dtype, f"{name}: jit vs eval")


def test_collective_staged_inside_vmap_checks():
    """make_graph of a function with collectives, inside the vmap that owns the axis."""
    x = torch.randn(3, 2, dtype=F64)
    graphs = []

    def body(v):
        g = functx.make_graph(lambda y: (functx.psum(y, "i"), functx.all_gather(y, "i"),
                                         functx.pmax(y, "i"), functx.axis_index("i")))(v)
        check_graph(g)
        graphs.append(g)
        return functx.psum(v, "i")
    functx.vmap(body, axis_name="i")(x)
    names = [eq.prim.name for eq in graphs[0].eqns]
    assert names == ["psum", "all_gather", "pmax", "axis_index"], names
    assert graphs[0].out_types[1].shape == (3, 2)


# ---------------------------------------------------------------- (c) jvp vs finite differences

@pytest.mark.parametrize("name", DIFF_NAMES)
@given(data=st.data())
def test_jvp_matches_finite_differences(name, data):
    e = ENTRIES[name]
    case, args, g = draw_case(data, e, F64, smooth=True)
    pos = diff_positions(args)
    assume(pos)
    xs = [args[i] for i in pos]
    us = [torch.randn(x.shape, generator=g, dtype=F64) for x in xs]
    f = fn_of(e, case.params, args, pos)
    if not e.fwd:   # reverse-mode only: <v, FD directional derivative> == <J^T v, u>
        out, vjp_fn = functx.vjp(f, *xs)
        vs = [torch.randn(o.shape, generator=g, dtype=F64) for o in as_list(out)]
        cts = vjp_fn(tuple(vs) if isinstance(out, tuple) else vs[0])
        eps = 1e-6
        plus, minus = as_list(f(*[x + eps * u for x, u in zip(xs, us)])), as_list(f(*[x - eps * u for x, u in zip(xs, us)]))
        fd = _inner(vs, [(p - m) / (2 * eps) for p, m in zip(plus, minus)])
        assert math.isclose(fd, _inner(cts, us), rel_tol=1e-5, abs_tol=1e-6), f"{name}: vjp vs FD"
        return
    out, tout = functx.jvp(f, tuple(xs), tuple(us))
    assert_close(out, f(*xs), F64, f"{name}: jvp primal output")
    touts = as_list(tout)
    if e.zero_deriv:
        for t in touts:
            assert not t.dtype.is_floating_point or bool((t == 0).all()), f"{name}: tangent should be zero"
        return
    fd_eval = (lambda full: e.fd_fn(*full, **case.params)) if e.fd_fn else None
    fd = fn_of(e, case.params, args, pos, fd_eval) if fd_eval else f
    eps = 1e-6
    plus = as_list(fd(*[x + eps * u for x, u in zip(xs, us)]))
    minus = as_list(fd(*[x - eps * u for x, u in zip(xs, us)]))
    for k, (t, p, m) in enumerate(zip(touts, plus, minus)):
        if not p.dtype.is_floating_point:
            assert not t.dtype.is_floating_point or bool((t == 0).all())
            continue
        approx = (p - m) / (2 * eps)
        rtol, atol = e.fd_tol
        torch.testing.assert_close(t.to(F64), approx, rtol=rtol, atol=atol,
                                   msg=lambda msg: f"{name} output {k}: jvp vs finite differences: {msg}")


# ---------------------------------------------------------------- (d) <v, J u> == <J^T v, u>

def _inner(a, b):
    return sum(float((x.to(F64) * y.to(F64)).sum()) for x, y in zip(a, b))


def _ip_tol(tensors):
    """Relative tolerance of an inner product: float64, unless a value was rounded lower."""
    return 1e-7 if all(t.dtype == F64 for t in tensors if t.dtype.is_floating_point) else 1e-5


@pytest.mark.parametrize("name", [n for n in DIFF_NAMES if ENTRIES[n].fwd and ENTRIES[n].rev])
@given(data=st.data())
def test_vjp_jvp_inner_product(name, data):
    e = ENTRIES[name]
    case, args, g = draw_case(data, e, F64, smooth=True)
    pos = diff_positions(args)
    assume(pos)
    xs = [args[i] for i in pos]
    us = [torch.randn(x.shape, generator=g, dtype=F64) for x in xs]
    f = fn_of(e, case.params, args, pos)
    _, tout = functx.jvp(f, tuple(xs), tuple(us))
    out, vjp_fn = functx.vjp(f, *xs)
    outs = as_list(out)
    vs = [torch.randn(o.shape, generator=g, dtype=o.dtype) if o.dtype.is_floating_point
          else torch.zeros_like(o) for o in outs]
    cts = vjp_fn(tuple(vs) if isinstance(out, tuple) else vs[0])
    assert len(cts) == len(xs)
    for c, x in zip(cts, xs):
        assert c.shape == x.shape and c.dtype == x.dtype
    fl = float_outputs(out)
    lhs = _inner([vs[i] for i in fl], [as_list(tout)[i] for i in fl])
    rhs = _inner(cts, us)
    assert math.isclose(lhs, rhs, rel_tol=_ip_tol(outs), abs_tol=1e-9), f"{name}: <v, Ju>={lhs} <J^T v, u>={rhs}"
    if e.zero_deriv:
        assert all(bool((c == 0).all()) for c in cts)


# ---------------------------------------------------------------- (e) vmap vs a Python loop

@pytest.mark.parametrize("name", VMAP_NAMES)
@given(data=st.data())
def test_vmap_matches_loop(name, data):
    e = ENTRIES[name]
    dtype = data.draw(st.sampled_from(e.vmap_dtypes), label="dtype")
    case = e.gen(data.draw, dtype, False)
    size = data.draw(st.integers(1, 3), label="batch")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    samples = [case.make(torch.Generator().manual_seed(seed + b), dtype) for b in range(size)]
    first = samples[0]
    pos = [i for i, a in enumerate(first) if isinstance(a, torch.Tensor)]
    in_axes = []
    for i in pos:
        nd = first[i].ndim
        in_axes.append(data.draw(st.sampled_from([None] + list(range(-nd - 1, nd + 1))), label=f"in_axis{i}"))
    # Unbatched arguments take sample 0's value in every iteration.
    batched_args = []
    for i, ax in zip(pos, in_axes):
        if ax is None:
            batched_args.append(first[i])
        else:
            batched_args.append(torch.stack([s[i] for s in samples], ax % (first[i].ndim + 1)))
    loop_outs = []
    for b in range(size):
        full = list(samples[b])
        for i in range(len(full)):      # Python scalars are never batched
            if i not in pos:
                full[i] = first[i]
        for i, ax in zip(pos, in_axes):
            if ax is None:
                full[i] = first[i]
        loop_outs.append(as_list(call_entry(e, case.params, full)))
    multi = isinstance(call_entry(e, case.params, list(first)), tuple)
    n_out = len(loop_outs[0])
    out_axes = [data.draw(st.integers(-loop_outs[0][k].ndim - 1, loop_outs[0][k].ndim), label=f"out_axis{k}")
                for k in range(n_out)]
    note(f"params={case.params} in_axes={in_axes} out_axes={out_axes} size={size}")
    f = fn_of(e, case.params, first, pos)
    vf = functx.vmap(f, in_axes=tuple(in_axes), out_axes=tuple(out_axes) if multi else out_axes[0],
                     axis_size=size if all(a is None for a in in_axes) else None)
    got = as_list(vf(*batched_args))
    for k in range(n_out):
        expect = torch.stack([lo[k] for lo in loop_outs], out_axes[k] % (loop_outs[0][k].ndim + 1))
        assert_close(got[k], expect, dtype, f"{name}: vmap output {k} vs loop")


# ---------------------------------------------------------------- (f) transpose rules

@pytest.mark.parametrize("name", LINEAR_NAMES)
@given(data=st.data())
def test_linear_transpose(name, data):
    e = ENTRIES[name]
    dtype = F64 if F64 in e.dtypes else e.dtypes[0]
    case, args, g = draw_case(data, e, dtype, smooth=True)
    choices = [c if c is not None else tuple(range(len(args))) for c in e.linear]
    lin = list(data.draw(st.sampled_from(choices), label="linear args"))
    # A Python-scalar operand in the linear group would make the map affine: make it a tensor
    # (elementwise primitives: of the shape of the tensor operands).
    like = next(a for a in args if isinstance(a, torch.Tensor) and a.dtype == dtype)
    for i in lin:
        if not isinstance(args[i], torch.Tensor):
            args[i] = torch.randn(like.shape, generator=g, dtype=dtype)
    us = [torch.randn(args[i].shape, generator=g, dtype=dtype) for i in lin]
    f = fn_of(e, case.params, args, lin)
    out = f(*us)
    outs = as_list(out)
    vs = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outs]
    t_fn = functx.linear_transpose(f, *[torch.zeros_like(u) for u in us])
    cts = t_fn(tuple(vs) if isinstance(out, tuple) else vs[0])
    assert len(cts) == len(us)
    for c, u in zip(cts, us):
        assert c.shape == u.shape and c.dtype == u.dtype
    lhs, rhs = _inner(vs, outs), _inner(cts, us)
    assert math.isclose(lhs, rhs, rel_tol=_ip_tol(outs), abs_tol=1e-9), f"{name}: <v, f(u)>={lhs} <f^T(v), u>={rhs}"
    if e.ref is not None and e.call is None:
        # against torch.func.vjp of the reference (a linear map's vjp is its transpose)
        def ref_f(*xs):
            full = list(args)
            for i, x in zip(lin, xs):
                full[i] = x
            r = e.ref(*full, **case.params)
            return tuple(r) if isinstance(r, (tuple, list)) else r
        _, pull = torch.func.vjp(ref_f, *us)
        expect = pull(tuple(vs) if isinstance(out, tuple) else vs[0])
        assert_close(list(cts), list(expect), dtype, f"{name}: transpose vs torch.func.vjp")


# ---------------------------------------------------------------- (g) higher order vs torch.func

def _ref_fn(e, params, args, positions):
    def f(*xs):
        full = list(args)
        for i, x in zip(positions, xs):
            full[i] = x
        r = e.ref(*full, **params)
        return tuple(r) if isinstance(r, (tuple, list)) else r
    return f


def _select_float(f, fl, multi):
    def g(*xs):
        out = f(*xs)
        outs = as_list(out)
        return tuple(outs[i] for i in fl) if multi else outs[0]
    return g


@pytest.mark.parametrize("name", ORDER2_NAMES)
@given(data=st.data())
def test_second_order_matches_torch_func(name, data):
    e = ENTRIES[name]
    case, args, g = draw_case(data, e, F64, smooth=True)
    pos = diff_positions(args)
    assume(pos)
    xs = tuple(args[i] for i in pos)
    out0 = call_entry(e, case.params, args)
    multi = isinstance(out0, tuple)
    fl = float_outputs(out0)
    f_fx = _select_float(fn_of(e, case.params, args, pos), fl, multi)
    f_ref = _select_float(_ref_fn(e, case.params, args, pos), fl, multi)
    u = tuple(torch.randn(x.shape, generator=g, dtype=F64) for x in xs)
    w = tuple(torch.randn(x.shape, generator=g, dtype=F64) for x in xs)

    def jj(jvp, f):
        return jvp(lambda *ys: jvp(f, ys, u)[1], xs, w)[1]
    if e.fwd:
        assert_close(as_list(jj(functx.jvp, f_fx)), as_list(jj(torch.func.jvp, f_ref)), F64,
                     f"{name}: jvp of jvp")
    if not e.rev:
        return

    cs = [torch.randn(o.shape, generator=g, dtype=F64) for o in as_list(f_ref(*xs))]
    ds = [torch.randn(x.shape, generator=g, dtype=F64) for x in xs]
    argnums = tuple(range(len(xs)))

    def gg(grad, f):
        def s(*ys):
            return sum((o * c).sum() for o, c in zip(as_list(f(*ys)), cs))

        def h(*ys):
            gs = grad(s, argnums=argnums)(*ys)
            return sum((gi * d).sum() for gi, d in zip(gs, ds))
        return grad(h, argnums=argnums)(*xs)
    assert_close(list(gg(functx.grad, f_fx)), list(gg(torch.func.grad, f_ref)), F64, f"{name}: grad of grad")


# ---------------------------------------------------------------- targeted weak spots

def test_random_primitive():
    p = REGISTRY["random"]
    for dist in ("normal", "uniform"):
        a = p.bind(shape=(2000,), dtype=F64, device=CPU, dist=dist)
        b = p.bind(shape=(2000,), dtype=F64, device=CPU, dist=dist)
        assert a.shape == (2000,) and a.dtype == F64
        assert not torch.equal(a, b)
        if dist == "uniform":
            assert float(a.min()) >= 0 and float(a.max()) < 1
            assert abs(float(a.mean()) - 0.5) < 0.05
        else:
            assert abs(float(a.mean())) < 0.1 and abs(float(a.std()) - 1) < 0.1
    # effectful: jit keeps both draws (no CSE), and each call draws anew
    f = functx.jit(lambda x: (x + torch.randn(3, dtype=F64), x + torch.randn(3, dtype=F64)))
    r1, r2 = f(torch.zeros(3, dtype=F64))
    assert not torch.equal(r1, r2)
    assert not torch.equal(f(torch.zeros(3, dtype=F64))[0], r1)


@pytest.mark.parametrize("op", [torch.maximum, torch.minimum])
def test_minmax_ties_match_torch(op):
    x = torch.tensor([1.0, 2.0, 3.0, -1.0], dtype=F64)
    y = torch.tensor([1.0, 0.0, 3.0, 2.0], dtype=F64)
    for fn, ref in ((functx.grad, torch.func.grad),):
        got = fn(lambda a, b: (op(a, b) * torch.arange(1.0, 5.0, dtype=F64)).sum(), argnums=(0, 1))(x, y)
        exp = ref(lambda a, b: (op(a, b) * torch.arange(1.0, 5.0, dtype=F64)).sum(), argnums=(0, 1))(x, y)
        assert_close(list(got), list(exp), F64, "min/max ties")
    # a scalar operand (relu-like): max(x, 0) at x == 0
    z = torch.tensor([0.0, 1.0, -1.0], dtype=F64)
    assert_close(functx.grad(lambda a: torch.clamp_min(a, 0.0).sum())(z),
                 torch.func.grad(lambda a: torch.clamp_min(a, 0.0).sum())(z), F64, "clamp_min tie")
    assert_close(functx.jit(functx.grad(lambda a: torch.relu(a).sum()))(z),
                 torch.func.grad(lambda a: torch.relu(a).sum())(z), F64, "jit relu grad")


def test_reduce_max_ties_match_torch():
    x = torch.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]], dtype=F64)
    for f in (lambda a: a.amax(1).sum(), lambda a: a.max(), lambda a: a.amin(0).pow(2).sum()):
        assert_close(functx.grad(f)(x), torch.func.grad(f)(x), F64, "reduce max ties")


def test_pow_at_zero_matches_torch():
    zero = torch.zeros(3, dtype=F64)
    cases = [
        (lambda a: (a ** 2).sum(), zero), (lambda a: (a ** 0).sum(), zero), (lambda a: (a ** 0.0).sum(), zero),
        (lambda a: (a ** 1).sum(), zero), (lambda a: (a ** 3.0).sum(), zero),
        (lambda a: (torch.zeros(3, dtype=F64) ** a).sum(), torch.tensor([1.0, 2.0, 0.5], dtype=F64)),
        (lambda a: (a ** torch.tensor([2.0, 0.0, 1.0], dtype=F64)).sum(), zero),
        (lambda a: (torch.tensor(2.0, dtype=F64) ** a).sum(), zero),
    ]
    for f, x in cases:
        assert_close(functx.grad(f)(x), torch.func.grad(f)(x), F64, "pow grad at 0")
        assert_close(functx.hessian(f)(x), torch.func.hessian(f)(x), F64, "pow hessian at 0")


def test_where_with_scalar_branches():
    x = torch.tensor([-1.0, 0.5, 2.0], dtype=F64)
    fns = [lambda a: torch.where(a > 0, a, 0.0).sum(), lambda a: torch.where(a > 0, 1.0, a * a).sum(),
           lambda a: (torch.where(a > 0, 2.0, -1.0) * a).sum()]
    for f in fns:
        assert_close(functx.grad(f)(x), torch.func.grad(f)(x), F64, "where grad")
        assert_close(functx.vmap(functx.grad(f))(x[:, None].expand(3, 3).contiguous()),
                     torch.func.vmap(torch.func.grad(f))(x[:, None].expand(3, 3).contiguous()), F64, "vmap where")
        assert_close(functx.jit(functx.grad(f))(x), torch.func.grad(f)(x), F64, "jit where grad")
    from functx import prims as P
    pred = torch.tensor([True, False, True])
    assert_close(P.where(pred, 1.0, 2.0), torch.tensor([1.0, 2.0, 1.0]), F32, "where(scalar, scalar)")
    assert_close(P.where(pred, 1, 2), torch.tensor([1, 2, 1]), None, "where(int, int)")


@pytest.mark.parametrize("src,dst", [(F64, F32), (F32, F64), (F64, F16), (F32, BF16), (F64, I64), (I64, F64)])
def test_convert_element_type_between_dtypes(src, dst):
    x = (torch.randn(4, dtype=F64) * 3).to(src)
    f = lambda a: (a.to(dst).to(F64) * torch.arange(4, dtype=F64)).sum()   # noqa: E731
    if src.is_floating_point:
        assert_close(functx.grad(f)(x), torch.func.grad(f)(x), None, "convert grad")
        _, t = functx.jvp(lambda a: a.to(dst), (x,), (torch.ones_like(x),))
        _, te = torch.func.jvp(lambda a: a.to(dst), (x,), (torch.ones_like(x),))
        assert t.dtype == te.dtype and torch.equal(t.to(F64), te.to(F64))
    assert_close(functx.jit(lambda a: a.to(dst))(x), x.to(dst), None, "jit convert")
    assert_close(functx.vmap(lambda a: a.to(dst))(x[:, None]), x[:, None].to(dst), None, "vmap convert")


def test_reduce_prod_with_zeros():
    for x in (torch.tensor([0.0, 2.0, 3.0], dtype=F64), torch.tensor([0.0, 0.0, 3.0], dtype=F64),
              torch.tensor([[0.0, 2.0], [1.5, 0.0]], dtype=F64)):
        f = lambda a: a.prod()   # noqa: E731
        assert_close(functx.grad(f)(x), torch.func.grad(f)(x), F64, "prod grad with zeros")
        assert_close(functx.hessian(f)(x), torch.func.hessian(f)(x), F64, "prod hessian with zeros")
        if x.ndim == 2:
            g = lambda a: a.prod(0).sum()   # noqa: E731
            assert_close(functx.grad(g)(x), torch.func.grad(g)(x), F64, "prod(0) grad with zeros")


def test_opaque_higher_order_and_batching():
    """Force the opaque primitive through every transform, to second order."""
    def fn(x, y):
        return (torch.special.i0(x) * y,)    # i0: treat as unmapped, via a custom OpaqueFunction
    op = OpaqueFunction(fn, "i0_mul")

    def f_fx(x, y):
        t = functx.TensorType(tuple(x.shape), x.dtype, CPU)
        return wrap(REGISTRY["opaque"].bind(unwrap(x), unwrap(y), fn=op, out_types=(t,), linear_argnums=())[0])

    def f_ref(x, y):
        return torch.special.i0(x) * y
    x = torch.randn(2, 3, dtype=F64)
    y = torch.randn(2, 3, dtype=F64)
    s_fx = lambda a, b: (f_fx(a, b) ** 2).sum()   # noqa: E731
    s_ref = lambda a, b: (f_ref(a, b) ** 2).sum()   # noqa: E731
    assert_close(list(functx.grad(s_fx, argnums=(0, 1))(x, y)),
                 list(torch.func.grad(s_ref, argnums=(0, 1))(x, y)), F64, "opaque grad")
    assert_close(functx.hessian(s_fx)(x, y), torch.func.hessian(s_ref)(x, y), F64, "opaque hessian")
    assert_close(functx.jacrev(functx.jacrev(s_fx))(x, y), torch.func.hessian(s_ref)(x, y), F64,
                 "opaque jacrev∘jacrev")
    assert_close(functx.vmap(functx.grad(s_fx))(x, y), torch.func.vmap(torch.func.grad(s_ref))(x, y), F64,
                 "opaque vmap grad")
    assert_close(functx.grad(lambda a: functx.grad(s_fx, argnums=1)(a, y).sum())(x),
                 torch.func.grad(lambda a: torch.func.grad(s_ref, argnums=1)(a, y).sum())(x), F64,
                 "opaque grad of grad (transpose of the jvp op, differentiated)")
    assert_close(functx.vmap(functx.hessian(s_fx))(x, y), torch.func.vmap(torch.func.hessian(s_ref))(x, y),
                 F64, "opaque vmap hessian")
    assert_close(functx.jit(functx.vmap(functx.grad(s_fx)))(x, y),
                 torch.func.vmap(torch.func.grad(s_ref))(x, y), F64, "opaque jit vmap grad")
    # third order, mixing modes
    u = torch.randn(2, 3, dtype=F64)
    j3 = functx.jvp(lambda a: functx.hessian(s_fx)(a, y), (x,), (u,))[1]
    j3r = torch.func.jvp(lambda a: torch.func.hessian(s_ref)(a, y), (x,), (u,))[1]
    assert_close(j3, j3r, F64, "opaque third order")
