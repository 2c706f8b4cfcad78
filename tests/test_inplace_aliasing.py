"""In-place ops and aliasing on code as people write it, against eager PyTorch.

Random programs of views and in-place writes on one tensor (every view op, every kind of
write, in-place view ops such as t_ and unsqueeze_ on a tensor that has views) run under
jit, vmap (against a loop) and vjp (its primal) and must give eager's values; grad must give
torch.func's, jvp float64 central differences. The last runs under `--runslow` with ten times the programs."""
import random
import warnings

import pytest
import torch

import functx

_X = torch.tensor([0.5, 1.5, -2.0])
_LO, _HI = torch.tensor([0.0, 0.0, -1.0]), torch.tensor([1.0, 1.0, 0.0])

# in-place and out= overloads whose functional form has other argument types than the
# overload of the same name (pow_.Scalar is pow.Tensor_Scalar; pow.Scalar takes a number self)
OVERLOADS = {
    "pow_ scalar": lambda x: x.clone().pow_(2),
    "float_power_ scalar": lambda x: x.double().float_power_(2).float(),
    "ldexp_": lambda x: x.clone().ldexp_(torch.tensor([1, 2, 3])),
    "pow(number, x, out=)": lambda x: torch.pow(2.0, x, out=torch.empty(3)),
    "pow(x, number, out=)": lambda x: torch.pow(x, 2, out=torch.empty(3)),
    "clamp(tensor bounds, out=)": lambda x: torch.clamp(x, _LO, _HI, out=torch.empty(3)),
    "remainder(x, number, out=)": lambda x: torch.remainder(x, 1.0, out=torch.empty(3)),
    "lerp(tensor weight, out=)": lambda x: torch.lerp(x, _HI, _LO, out=torch.empty(3)),
    "xlogy(x, number, out=)": lambda x: torch.xlogy(x.abs(), 2.0, out=torch.empty(3)),
}


@pytest.mark.parametrize("name", sorted(OVERLOADS))
def test_inplace_and_out_overloads_take_the_functional_form_with_their_argument_types(name):
    f = OVERLOADS[name]
    want = f(_X)
    torch.testing.assert_close(functx.jit(f)(_X), want)
    torch.testing.assert_close(functx.vmap(f)(torch.stack([_X, 2 * _X])), torch.stack([want, f(2 * _X)]))


def test_inplace_view_op_on_a_tensor_with_views_keeps_them_views_of_its_memory():
    def f(x):
        b = x * 1.0 + 0.5
        y = b[0]            # row 0 of b's memory
        b.t_()
        y.mul_(10)          # column 0 of b now
        z = b[1]            # column 1 of the memory
        b.unsqueeze_(0)
        return b * 1, y * 1, z * 1
    x = torch.randn(3, 4, dtype=torch.float64)
    want = f(x)
    for got in (functx.jit(f)(x), functx.vjp(f, x)[0], [o[0] for o in functx.vmap(f)(x[None])]):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
    loss = lambda x: sum((o * o).sum() for o in f(x))        # noqa: E731
    torch.testing.assert_close(functx.grad(loss)(x), torch.func.grad(loss)(x))


# ---------------------------------------------------------------- random alias programs

_VIEWS = [
    lambda t: t[1:] if t.dim() >= 1 and t.shape[0] > 1 else None,
    lambda t: t[:-1] if t.dim() >= 1 and t.shape[0] > 1 else None,
    lambda t: t[0] if t.dim() >= 2 else None,
    lambda t: t.t() if t.dim() == 2 else None,
    lambda t: t.transpose(0, -1) if t.dim() >= 2 else None,
    lambda t: t.unsqueeze(0) if t.dim() < 4 else None,
    lambda t: t.view(-1) if t.is_contiguous() else None,
    lambda t: t.reshape(-1),
    lambda t: t.diagonal() if t.dim() == 2 else None,
    lambda t: t[::2] if t.dim() >= 1 else None,
    lambda t: t.narrow(-1, 1, t.shape[-1] - 1) if t.dim() >= 1 and t.shape[-1] > 1 else None,
    lambda t: t.unbind(0)[-1] if t.dim() >= 2 else None,
    lambda t: t.split(1, dim=0)[0] if t.dim() >= 1 else None,
    lambda t: t.movedim(0, -1) if t.dim() >= 2 else None,
    lambda t: t.squeeze(),
    lambda t: t.as_strided((t.shape[-1],), (1,), t.storage_offset()) if t.dim() >= 1 and t.is_contiguous() else None,
    lambda t: t.expand(2, *t.shape) if t.dim() < 3 else None,      # writes into it raise, as in torch
]
_WRITES = [
    lambda v, x: v.add_(1.5),
    lambda v, x: v.mul_(-0.5),
    lambda v, x: v.sin_(),
    lambda v, x: v.clamp_(-0.3, 0.4),
    lambda v, x: v.fill_(0.25),
    lambda v, x: v.zero_(),
    lambda v, x: v.copy_(x.reshape(-1)[: v.numel()].reshape(v.shape) * 2) if x.numel() >= v.numel() else None,
    lambda v, x: v.__setitem__(0, x.reshape(-1)[0]) if v.dim() >= 1 else None,
    lambda v, x: v.__setitem__(v > 0, 0.7),
    lambda v, x: v.addcmul_(v, v, value=0.1),
    lambda v, x: v.index_add_(0, torch.tensor([0, 0]), torch.ones((2,) + tuple(v.shape[1:]))) if v.dim() >= 1 else None,
    lambda v, x: torch.relu_(v),
    lambda v, x: v.pow_(2),
    lambda v, x: v.unsqueeze_(0) if v.dim() < 4 else None,
    lambda v, x: v.t_() if v.dim() == 2 else None,
    lambda v, x: v.mul_(x.reshape(-1)[0]),
]


def _program(seed):
    rng = random.Random(seed)
    steps = [(rng.random() < 0.55, rng.randrange(64), rng.randrange(10)) for _ in range(rng.randint(2, 7))]

    def f(x):
        base = x * 1.0 + 0.5
        pool = [base]
        for is_view, i, j in steps:
            src = pool[j % len(pool)]
            if is_view:
                v = _VIEWS[i % len(_VIEWS)](src)
                if v is not None:
                    pool.append(v)
            else:
                _WRITES[i % len(_WRITES)](src, x)
        return tuple(p * 1 for p in pool[::-1][:3]) + (base * 1,)
    return f


def _outcome(run):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return run()
        except Exception as e:      # noqa: BLE001 (the error is compared with eager's)
            return e


def _check_program(seed, shape=(3, 4)):
    f = _program(seed)
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    want = _outcome(lambda: f(x.clone()))
    runs = {"jit": lambda: functx.jit(f)(x.clone()), "vjp": lambda: functx.vjp(f, x.clone())[0],
            "vmap": lambda: functx.vmap(f)(torch.stack([x, 2 * x]))}
    for name, run in runs.items():
        got = _outcome(run)
        if isinstance(want, Exception):
            assert isinstance(got, Exception), f"seed {seed} {name}: eager raised {want!r}, functx did not"
            continue
        if isinstance(got, functx.FunctxError) and "share memory" in str(got):
            return          # a mask write into an expanded view: refused (sharp_bits §4)
        assert not isinstance(got, Exception), f"seed {seed} {name}: functx raised {got!r}, eager did not"
        expect = want
        if name == "vmap":
            twice = f(2 * x)
            expect = tuple(torch.stack([a, b]) for a, b in zip(want, twice))
        assert len(got) == len(expect)
        for g, w in zip(got, expect):
            torch.testing.assert_close(g, w, equal_nan=True, msg=f"seed {seed} {name}")
    if isinstance(want, Exception):
        return
    loss = lambda z: sum((o * o).sum() for o in f(z))       # noqa: E731
    oracle = _outcome(lambda: torch.func.grad(loss)(x.clone()))
    if not isinstance(oracle, Exception):
        torch.testing.assert_close(functx.grad(loss)(x.clone()), oracle, msg=f"seed {seed} grad")
    # jvp against float64 central differences: torch.func.jvp is wrong on some of these
    # programs (seed 101: its tangents are off by 0.12 where functx's match the differences)
    t = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    _, tangents = functx.jvp(f, (x.clone(),), (t,))
    eps = 1e-6
    for tan, plus, minus in zip(tangents, f(x + eps * t), f(x - eps * t)):
        torch.testing.assert_close(tan, (plus - minus) / (2 * eps), atol=1e-5, rtol=1e-5, msg=f"seed {seed} jvp")


@pytest.mark.parametrize("seed", range(40))
def test_random_alias_programs(seed):
    _check_program(seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(40, 440))
def test_random_alias_programs_nightly(seed):
    _check_program(seed, (2, 3, 4) if seed % 2 else (3, 4))
