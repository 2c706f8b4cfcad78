"""functx.tree_util: user-facing pytrees (optree, in functx's own namespace so users can
register node types), for transform arguments and outputs, jit signatures and in_axes.
(ATen argument lists inside the front end use torch's own pytree: they are torch's
containers, never user types.)"""
from __future__ import annotations

import optree

NAMESPACE = "functx"


def tree_flatten(tree):
    """(leaves, treedef) of a pytree: tuples, lists, dicts, namedtuples, None (an empty
    subtree) and types registered with functx.register_pytree_node."""
    return optree.tree_flatten(tree, namespace=NAMESPACE)


def tree_unflatten(treedef, leaves):
    """The pytree with structure treedef (from tree_flatten) and these leaves."""
    return optree.tree_unflatten(treedef, leaves)


def tree_leaves(tree):
    """The leaves of a pytree, in tree_flatten's order."""
    return optree.tree_leaves(tree, namespace=NAMESPACE)


def tree_map(fn, tree, *rest):
    """A pytree of the same structure with fn applied to each leaf (and the matching leaves
    of `rest`, which must have the same structure)."""
    return optree.tree_map(fn, tree, *rest, namespace=NAMESPACE)


def tree_structure(tree):
    """The treedef of a pytree (tree_flatten without the leaves)."""
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
    except ValueError:
        raise ValueError(f"{what} must be a tree prefix of the arguments it describes: "
                         f"{what}={prefix!r} does not match the structure {tree_structure(tree)}") from None
    out = []
    for p, sub in zip(prefix_leaves, subtrees):
        out.extend([p] * len(tree_leaves(sub)))
    return out
