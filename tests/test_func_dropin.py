"""functx.func as a drop-in for torch.func: torch.func's tutorials and doc examples run with
both modules (same code, `func` swapped) and must agree; signatures must match."""
import copy
import inspect

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import functx
import functx.func

MODULES = [torch.func, functx.func]


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_every_torch_func_name_with_its_signature():
    for name in torch.func.__all__:
        ours, theirs = getattr(functx.func, name), getattr(torch.func, name)
        want = [(p.name, p.kind, p.default) for p in inspect.signature(theirs).parameters.values()
                if not p.name.startswith("_")]
        got = [(p.name, p.kind, p.default) for p in inspect.signature(ours).parameters.values()]
        assert got == want, name


def _per_sample_grads(func):
    """torch.func's per-sample-gradients tutorial (a small CNN)."""
    torch.manual_seed(0)

    class SimpleCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 4, 3, 1)
            self.fc1 = nn.Linear(4 * 3 * 3, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            return F.log_softmax(self.fc1(torch.flatten(x, 1)), dim=1)

    model = SimpleCNN()
    data, targets = torch.randn(6, 1, 8, 8), torch.randint(10, (6,))
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def compute_loss(params, buffers, sample, target):
        predictions = func.functional_call(model, (params, buffers), (sample.unsqueeze(0),))
        return F.nll_loss(predictions, target.unsqueeze(0))

    ft_compute_grad = func.grad(compute_loss)
    ft_compute_sample_grad = func.vmap(ft_compute_grad, in_dims=(None, None, 0, 0))
    return ft_compute_sample_grad(params, buffers, data, targets)


def _ensembling(func):
    """torch.func's model-ensembling tutorial: stack_module_state + vmap over a meta base."""
    torch.manual_seed(0)

    class SimpleMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x):
            return self.fc2(F.relu(self.fc1(x)))

    models = [SimpleMLP() for _ in range(3)]
    minibatches = torch.randn(3, 5, 8)
    params, buffers = func.stack_module_state(models)
    base_model = copy.deepcopy(models[0]).to("meta")

    def fmodel(params, buffers, x):
        return func.functional_call(base_model, (params, buffers), (x,))
    different = func.vmap(fmodel)(params, buffers, minibatches)
    same = func.vmap(fmodel, in_dims=(0, 0, None))(params, buffers, minibatches[0])
    return different, same


def _jacobians_hessians(func):
    """torch.func's jacobians-and-hessians tutorial."""
    torch.manual_seed(0)

    def predict(weight, bias, x):
        return F.linear(x, weight, bias).tanh()
    D = 5
    weight, bias, x = torch.randn(D, D), torch.randn(D), torch.randn(D)
    out = {"jacrev": func.jacrev(predict, argnums=2)(weight, bias, x),
           "jacfwd": func.jacfwd(predict, argnums=2)(weight, bias, x),
           "both": func.jacrev(predict, argnums=(0, 1))(weight, bias, x),
           "hessian": func.hessian(predict, argnums=2)(weight, bias, x),
           "hess_fwdrev": func.jacfwd(func.jacrev(predict, argnums=2), argnums=2)(weight, bias, x)}
    xs = torch.randn(4, D)
    out["batch"] = func.vmap(func.jacrev(predict, argnums=2), in_dims=(None, None, 0))(weight, bias, xs)
    out["jvp"] = func.jvp(torch.sin, (x,), (torch.ones(D),), strict=False)
    out["linearize"] = func.linearize(torch.sin, x)[1](torch.ones(D))
    out["vjp"] = func.vjp(torch.sin, x)[1](torch.ones(D))
    return out


def _functionalize(func):
    """torch.func.functionalize's doc examples: mutations through views, and input mutation."""
    def f(a):
        b = a + 1
        c = b.view(-1)
        c.add_(1)
        return b

    def g(a):
        a.add_(1)
        return a * 2
    torch.manual_seed(0)
    x = torch.randn(2, 3)
    a = torch.ones(3)
    out = {"views": func.functionalize(f)(x),
           "views_all": func.functionalize(f, remove="mutations_and_views")(x),
           "input": func.functionalize(g)(a), "input_after": a.clone(),
           "grad": func.grad(lambda x: func.functionalize(f)(x).pow(2).sum())(x),
           "vmap": func.vmap(func.functionalize(f))(x)}
    return out


def _grad_family(func):
    torch.manual_seed(0)
    x = torch.randn(4)

    def loss_aux(x):
        return (x.sin() ** 2).sum(), {"norm": x.norm()}
    return {"gv": func.grad_and_value(lambda x: (x ** 3).sum())(x),
            "gv_aux": func.grad_and_value(loss_aux, has_aux=True)(x),
            "grad_aux": func.grad(loss_aux, has_aux=True)(x),
            "jvp_aux": func.jvp(loss_aux, (x,), (torch.ones(4),), has_aux=True),
            "vmap_kwargs": func.vmap(lambda x, scale: x * scale)(torch.randn(3, 2), scale=torch.tensor([1., 2.])),
            "vmap_chunk": func.vmap(torch.sin, chunk_size=2)(x),
            # torch.func takes out_dims=(d,) for a single output as well as for a 1-tuple
            "vmap_out_dims_1tuple": func.vmap(torch.sin, out_dims=(1,))(x.view(2, 2)),
            "vmap_out_dims_1tuple_tuple": func.vmap(lambda v: (v.cos(),), out_dims=(1,))(x.view(2, 2))}


@pytest.mark.parametrize("example", [_per_sample_grads, _ensembling, _jacobians_hessians, _functionalize,
                                     _grad_family], ids=lambda f: f.__name__.strip("_"))
def test_torch_func_examples_give_the_same_results(example):
    _close(example(functx.func), example(torch.func))


def test_functionalize_rejects_unknown_remove_mode():
    with pytest.raises(ValueError, match="remove"):
        functx.func.functionalize(torch.sin, remove="views")


def test_top_level_vmap_keeps_jax_positional_order():
    x = torch.randn(3, 2)
    # JAX order: (f, in_axes, out_axes, axis_name, axis_size)
    total = functx.vmap(lambda v: functx.psum(v, "i"), 0, 0, "i")(x)
    _close(total, x.sum(0).expand(3, 2))
    _close(functx.vmap(lambda: torch.ones(2), 0, 0, None, 4)(), torch.ones(4, 2))
    # torch.func's keyword names are accepted too
    _close(functx.vmap(torch.sin, in_dims=1, out_dims=1, chunk_size=1)(x), torch.sin(x))
    with pytest.raises(TypeError, match="not both"):
        functx.vmap(torch.sin, in_axes=1, in_dims=1)
    # None is a value of the aliases (not batched), not "not given": in_dims=None mapped axis 0
    _close(functx.vmap(lambda v: v * 2, in_dims=None, axis_size=4)(x), (x * 2).expand(4, 3, 2))
    with pytest.raises(ValueError, match="out_axes=None"):
        functx.vmap(torch.sin, out_dims=None)(x)


def test_debug_unwrap_under_vmap_returns_the_batch():
    """functx.func.debug_unwrap raised under vmap (it asked for one concrete value); torch.func
    returns the batched tensor behind the value."""
    x = torch.randn(2, 3)
    seen = []

    def f(v):
        seen.append(functx.func.debug_unwrap(v))
        seen.append(functx.func.debug_unwrap(v, recurse=False))
        return v.sin()
    functx.func.vmap(functx.func.vmap(f))(x)
    assert seen[0] is x
    assert seen[1].shape == (3,)        # one level down: still the outer vmap's value
    seen.clear()
    functx.func.vmap(f, in_dims=1)(x)
    assert seen[0] is x
