"""functx.func: torch.func's names, signatures and semantics on functx's transforms, so that
`import functx.func as func` runs torch.func code unchanged.

Where torch.func and JAX differ, this module follows torch.func: grad_and_value returns
(grad, value); vmap takes (in_dims, out_dims, randomness, *, chunk_size) and leaves keyword
arguments unbatched; jvp takes keyword-only strict (accepted and, as in torch.func, without
effect) and has_aux; hessian has no has_aux. The top-level functx API stays JAX's.
Module utilities that are plain PyTorch (functional_call, stack_module_state,
replace_all_batch_norm_modules_, rearrange) are torch.func's own.
"""
from __future__ import annotations

import functools

import torch
from torch.func import functional_call, rearrange, replace_all_batch_norm_modules_, stack_module_state

from .frontend.staging import is_sparse_constant, trace_graph
from .core.errors import ConcretizationError, UsageError, user_facing
from .core.trace import concrete, eval_graph, tracer_chain
from .frontend import unwrap, wrap
from .transforms import api
from .tree_util import tree_flatten, tree_unflatten

__all__ = ["grad", "grad_and_value", "vmap", "vjp", "jvp", "jacrev", "jacfwd", "hessian", "linearize",
           "functionalize", "functional_call", "stack_module_state", "replace_all_batch_norm_modules_",
           "rearrange", "debug_unwrap"]


def grad(func, argnums=0, has_aux=False):
    """torch.func.grad: the gradient of a scalar-valued func (with has_aux: (grad, aux))."""
    return api.grad(func, argnums, has_aux)


def grad_and_value(func, argnums=0, has_aux=False):
    """torch.func.grad_and_value: (grad, value); with has_aux, (grad, (value, aux))."""
    value_and_grad = api.value_and_grad(func, argnums, has_aux)

    @functools.wraps(func)
    def grad_and_value_f(*args, **kwargs):
        value, g = value_and_grad(*args, **kwargs)
        return g, value
    return grad_and_value_f


def vmap(func, in_dims=0, out_dims=0, randomness="error", *, chunk_size=None):
    """torch.func.vmap: keyword arguments are passed to func unbatched (JAX's vmap batches
    them along axis 0); out_dims=(d,) also serves a func that returns one tensor."""
    @functools.wraps(func)
    def vmapped(*args, **kwargs):
        inner = functools.partial(func, **kwargs) if kwargs else func
        packed = []
        if isinstance(out_dims, tuple) and len(out_dims) == 1:
            def pack(*a):
                out = inner(*a)
                if isinstance(out, tuple):
                    return out
                packed.append(True)
                return (out,)
        else:
            pack = inner
        out = api.vmap(pack, in_axes=in_dims, out_axes=out_dims, randomness=randomness,
                       chunk_size=chunk_size)(*args)
        return out[0] if packed else out
    return vmapped


def vjp(func, *primals, has_aux=False):
    """torch.func.vjp: (output, vjp_fn) (with has_aux, (output, vjp_fn, aux)). vjp_fn takes
    torch.func's retain_graph and create_graph too: functx's pullback can always be called
    again, and its results are differentiable by enclosing transforms (and by torch's autograd
    where the cotangents require grad) either way."""
    res = api.vjp(func, *primals, has_aux=has_aux)
    pullback = res[1]

    def vjp_fn(cotangents, retain_graph=True, create_graph=None):
        return pullback(cotangents)
    return (res[0], vjp_fn) + tuple(res[2:])


def jvp(func, primals, tangents, *, strict=False, has_aux=False):
    """torch.func.jvp: (output, jvp_out) (with has_aux, (output, jvp_out, aux)). strict is
    accepted for compatibility; torch.func does not act on it either."""
    return api.jvp(func, primals, tangents, has_aux=has_aux)


def jacrev(func, argnums=0, *, has_aux=False, chunk_size=None):
    """torch.func.jacrev: the Jacobian by reverse mode."""
    return api.jacrev(func, argnums, has_aux, chunk_size=chunk_size)


def jacfwd(func, argnums=0, has_aux=False, *, randomness="error"):
    """torch.func.jacfwd: the Jacobian by forward mode."""
    return api.jacfwd(func, argnums, has_aux, randomness=randomness)


def hessian(func, argnums=0):
    """torch.func.hessian: jacfwd of jacrev."""
    return api.hessian(func, argnums)


def linearize(func, *primals):
    """torch.func.linearize: (output, jvp_fn)."""
    return api.linearize(func, *primals)


_REMOVE = ("mutations", "mutations_and_views")


def functionalize(func, *, remove="mutations"):
    """torch.func.functionalize: func as a program without in-place updates or views.

    Each call traces func into a functx graph (writes become functional updates, views
    become copies) and evaluates that graph at the current trace, so it composes with every
    transform; inputs func wrote into receive their new values, as eagerly. Both `remove`
    modes give the same program: functx graphs have neither mutations nor aliasing views.
    A func that needs values (Python control flow on a tensor, .item(), a data-dependent
    shape) runs as it is instead, with the same results; non-tensor outputs return as they
    are."""
    if remove not in _REMOVE:
        raise UsageError(f"functx.func.functionalize: remove must be one of {_REMOVE}, got {remove!r}")

    @functools.wraps(func)
    def functionalized(*args, **kwargs):
        returned = []

        def tensor_outputs(*a, **k):     # non-tensor outputs (a count, a name) return as they are
            out_leaves, out_tree = tree_flatten(func(*a, **k))
            returned[:] = [out_leaves, out_tree]
            return [leaf for leaf in out_leaves if isinstance(leaf, torch.Tensor)]
        try:
            with user_facing():
                graph = trace_graph(tensor_outputs, args, kwargs, what="functx.func.functionalize", mutations=True)
        except ConcretizationError:
            # func needs values (if on a tensor, .item(), a data-dependent shape), which a
            # graph does not have: it runs as it is, as torch.func's eager functionalize does
            # (same values and writes into the inputs; under jit this raises, as there)
            return func(*args, **kwargs)
        leaves, _ = tree_flatten((args, kwargs))
        # the graph's inputs: tensor leaves but sparse constants (trace_graph keeps those as they are)
        tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor) and not is_sparse_constant(leaf)]
        outs = eval_graph(graph, graph.consts, [unwrap(t) for t in tensors])
        mutated = graph.meta.mutated_inputs
        for k, value in zip(mutated, outs[len(outs) - len(mutated):]):
            with torch.no_grad():
                tensors[k].copy_(wrap(value))
        outs = iter(outs[:len(outs) - len(mutated)])
        out_leaves, out_tree = returned
        return tree_unflatten(out_tree, [wrap(next(outs)) if isinstance(leaf, torch.Tensor) else leaf
                                         for leaf in out_leaves])
    return functionalized


def debug_unwrap(tensor, *, recurse=True):
    """torch.func.debug_unwrap: the tensor behind a value a transform passed to func (under an
    eager transform): under vmap the whole batch, with its batch dim where it lies, as in
    torch.func; recurse=False unwraps one transform level. Plain tensors come back as they
    are."""
    value = unwrap(tensor)
    if value is tensor:
        return tensor
    chain = list(tracer_chain(value))
    if not recurse and len(chain) > 1:
        return wrap(chain[1])
    return chain[-1] if isinstance(chain[-1], torch.Tensor) else concrete(value)
