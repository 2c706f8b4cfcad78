"""Pytrees (optree, in functx's own namespace so users can register node types)."""
from __future__ import annotations

import optree

NAMESPACE = "functx"


def tree_flatten(tree):
    return optree.tree_flatten(tree, namespace=NAMESPACE)


def tree_unflatten(treedef, leaves):
    return optree.tree_unflatten(treedef, leaves)


def tree_leaves(tree):
    return optree.tree_leaves(tree, namespace=NAMESPACE)


def tree_map(fn, tree, *rest):
    return optree.tree_map(fn, tree, *rest, namespace=NAMESPACE)


def tree_structure(tree):
    return optree.tree_structure(tree, namespace=NAMESPACE)


def register_pytree_node(cls, flatten_fn, unflatten_fn):
    """Register a container type: flatten_fn(obj) -> (children, aux), unflatten_fn(aux, children)."""
    return optree.register_pytree_node(cls, flatten_fn, unflatten_fn, namespace=NAMESPACE)


def broadcast_prefix(prefix, tree, what: str) -> list:
    """One entry of `prefix` per leaf of `tree` (JAX's in_axes/out_axes rule): an int or
    None in the prefix applies to the whole subtree beneath it."""
    prefix_spec = optree.tree_structure(prefix, none_is_leaf=True, namespace=NAMESPACE)
    prefix_leaves = optree.tree_leaves(prefix, none_is_leaf=True, namespace=NAMESPACE)
    try:
        subtrees = prefix_spec.flatten_up_to(tree)
    except ValueError as e:
        raise ValueError(f"{what} must be a tree prefix of the arguments it describes: "
                         f"{what}={prefix!r} does not match the structure {tree_structure(tree)}") from None
    out = []
    for p, sub in zip(prefix_leaves, subtrees):
        out.extend([p] * len(tree_leaves(sub)))
    return out
