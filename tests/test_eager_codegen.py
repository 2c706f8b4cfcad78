"""The eager backend's own lowerings (compile/codegen.py, compile/eager_plan.py) agree with
the primitives' impls: dot_general layouts, implicit broadcasts, addmm, transpose folding."""
import pytest
import torch

import functx
from functx import prims as P
from functx.frontend import unwrap, wrap
from functx.prims.linalg import dot_general_p

D = torch.float64


def lax(fn):
    """fn over lax values (what P.* take) -> a function over tensors jit can trace."""
    def wrapped(*args):
        out = fn(*[unwrap(a) for a in args])
        return tuple(wrap(o) for o in out) if isinstance(out, tuple) else wrap(out)
    return wrapped


def _dims_cases():
    # (lhs shape, rhs shape, dimension_numbers)
    yield (3, 4), (4, 5), (((1,), (0,)), ((), ()))
    yield (4, 3), (4, 5), (((0,), (0,)), ((), ()))
    yield (3, 4), (5, 4), (((1,), (1,)), ((), ()))
    yield (4, 3), (5, 4), (((0,), (1,)), ((), ()))
    yield (2, 3, 4), (4, 5), (((2,), (0,)), ((), ()))
    yield (2, 3, 4), (5, 4), (((2,), (1,)), ((), ()))
    yield (4,), (4, 5), (((0,), (0,)), ((), ()))
    yield (3, 4), (4,), (((1,), (0,)), ((), ()))
    yield (4, 3), (4,), (((0,), (0,)), ((), ()))
    yield (4,), (4,), (((0,), (0,)), ((), ()))
    yield (3,), (5,), (((), ()), ((), ()))
    yield (2, 3, 4), (2, 4, 5), (((2,), (1,)), ((0,), (0,)))
    yield (2, 4, 3), (2, 5, 4), (((1,), (2,)), ((0,), (0,)))
    yield (2, 3), (2, 5), (((), ()), ((0,), (0,)))
    yield (2, 4), (2, 4), (((1,), (1,)), ((0,), (0,)))
    yield (3, 2, 4), (4, 2), (((2,), (0,)), ((1,), (1,)))
    yield (2, 3, 4, 6), (6, 4, 5), (((2, 3), (1, 0)), ((), ()))
    yield (5, 2, 3, 4), (2, 4, 7, 5), (((3,), (1,)), ((0, 1), (3, 0)))


@pytest.mark.parametrize("case", list(_dims_cases()), ids=str)
def test_dot_general_layouts(case):
    ls, rs, dn = case
    x, y = torch.randn(ls, dtype=D), torch.randn(rs, dtype=D)
    f = lambda a, b: P.dot_general(a, b, dn)  # noqa: E731
    want = dot_general_p.impl(x, y, dimension_numbers=dn)
    got = functx.jit(lax(f))(x, y)
    torch.testing.assert_close(got, want)


def test_mlp_codegen_uses_addmm_and_implicit_broadcast():
    def f(x, W1, b1, W2, b2):
        h = torch.relu(x @ W1 + b1)
        return torch.nn.functional.linear(h, W2.T, b2)
    args = (torch.randn(8, 3, dtype=D), torch.randn(3, 16, dtype=D), torch.randn(16, dtype=D),
            torch.randn(16, 4, dtype=D), torch.randn(4, dtype=D))
    src = str(functx.explain(f)(*args))
    assert "torch.addmm" in src and "expand" not in src and "permute" not in src
    torch.testing.assert_close(functx.jit(f)(*args), f(*args))


@pytest.mark.parametrize("shape,bshape,dims", [
    ((4, 5), (5,), (1,)), ((4, 5), (4,), (0,)), ((2, 3, 4), (3,), (1,)), ((2, 3, 4), (2, 4), (0, 2)),
    ((2, 3, 4), (), ()), ((4, 5), (1, 5), (0, 1)), ((4, 5), (4, 1), (0, 1)),
])
def test_implicit_broadcasts(shape, bshape, dims):
    x, b = torch.randn(shape, dtype=D), torch.randn(bshape, dtype=D)

    def f(x, b):
        bb = P.broadcast_in_dim(b, shape, dims)
        return P.mul(P.add(x, bb), bb), P.max_(bb, x), P.where(P.gt(x, 0.0), bb, x), bb

    for g, w in zip(functx.jit(lax(f))(x, b), _eval(f, x, b)):
        torch.testing.assert_close(g, w)


def test_broadcast_of_broadcasts_and_scalars():
    x, y = torch.randn(4, dtype=D), torch.randn(5, dtype=D)

    def f(x, y):  # both operands broadcast: torch's broadcasting still gives (4, 5)
        return P.add(P.broadcast_in_dim(x, (4, 5), (0,)), P.broadcast_in_dim(y, (4, 5), (1,))), \
            P.mul(P.broadcast_in_dim(y, (4, 5), (1,)), 2.0)

    for g, w in zip(functx.jit(lax(f))(x, y), _eval(f, x, y)):
        torch.testing.assert_close(g, w)


def test_transpose_folding():
    x = torch.randn(2, 3, 4, dtype=D)

    def f(x):
        a = P.transpose(P.transpose(x, (1, 0, 2)), (1, 0, 2))       # identity
        b = P.transpose(P.transpose(x, (2, 0, 1)), (0, 2, 1))
        return P.add(a, x), b

    g = functx.make_graph(lax(f))(x)
    from functx.compile.passes import fold_transposes
    folded = fold_transposes(g)
    assert sum(e.prim.name == "transpose" for e in folded.eqns) == 1
    for got, want in zip(functx.jit(lax(f))(x), _eval(f, x)):
        torch.testing.assert_close(got, want)


def test_reduce_sum_int_dtype_and_minmax_literals():
    x = torch.randint(-5, 5, (3, 4), dtype=torch.int32)

    def f(x):
        return P.reduce_sum(x, (1,)), P.max_(x, 0), P.min_(x, 1)

    for got, want in zip(functx.jit(lax(f))(x), _eval(f, x)):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want)


def test_consts_bound_and_fast_path_retrace():
    c = torch.randn(3, dtype=D)
    jf = functx.jit(lambda x: x * c + 1.0)
    for shape in [(3,), (2, 3), (3,)]:
        x = torch.randn(shape, dtype=D)
        torch.testing.assert_close(jf(x), x * c + 1.0)
    assert jf.cache_size() == 2 and jf.trace_count == 2
    x32 = torch.randn(3)
    assert jf(x32).dtype == torch.float64 and jf.cache_size() == 3
    p = torch.nn.Parameter(torch.randn(3, dtype=D))
    torch.testing.assert_close(jf(p).detach(), p.detach() * c + 1.0)


def _eval(f, *args):
    """f evaluated primitive by primitive (impls), the oracle."""
    out = f(*args)
    return out if isinstance(out, tuple) else (out,)
