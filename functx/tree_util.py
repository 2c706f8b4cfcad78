"""functx.tree_util: user-facing pytrees (optree, in functx's own namespace so users can
register node types), for transform arguments and outputs, jit signatures and in_axes.
(ATen argument lists inside the front end use torch's own pytree: they are torch's
containers, never user types.)"""
from __future__ import annotations

import dataclasses

import optree

NAMESPACE = "functx"


def tree_flatten(tree):
    """(leaves, treedef) of a pytree: tuples, lists, dicts, namedtuples, None (an empty
    subtree) and types registered with functx.register_pytree_node."""
    return optree.tree_flatten(tree, namespace=NAMESPACE)


def tree_leaves_with_none(tree):
    """The leaves of a pytree with None as a leaf (a missing tangent or gradient in torch's
    conventions), not an empty subtree."""
    return optree.tree_leaves(tree, none_is_leaf=True, namespace=NAMESPACE)


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


def tree_structure(tree, none_is_leaf=False):
    """The treedef of a pytree (tree_flatten without the leaves); none_is_leaf: None is a
    leaf (a zero standing for a subtree), not an empty subtree."""
    return optree.tree_structure(tree, none_is_leaf=none_is_leaf, namespace=NAMESPACE)


def register_pytree_node(cls, flatten_fn, unflatten_fn):
    """Register a container type: flatten_fn(obj) -> (children, aux), unflatten_fn(aux, children)."""
    return optree.register_pytree_node(cls, flatten_fn, unflatten_fn, namespace=NAMESPACE)


def register_pytree_node_class(cls):
    """Class decorator (JAX's): cls defines tree_flatten(self) -> (children, aux) and the
    classmethod tree_unflatten(aux, children)."""
    register_pytree_node(cls, lambda obj: obj.tree_flatten(), cls.tree_unflatten)
    return cls


def register_dataclass(cls=None, data_fields=None, meta_fields=None):
    """Register a dataclass (JAX's register_dataclass; usable as a decorator): data_fields
    are children (tensors, subtrees), meta_fields static data kept in the treedef (part of
    a jit signature). Without field lists, fields with metadata {"static": True} are meta
    and the others data."""
    if cls is None:
        return lambda c: register_dataclass(c, data_fields, meta_fields)
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"register_dataclass: {cls.__name__} is not a dataclass")
    if data_fields is None:
        fields = [f for f in dataclasses.fields(cls) if f.init]
        data_fields = [f.name for f in fields if not f.metadata.get("static", False)]
        meta_fields = [f.name for f in fields if f.metadata.get("static", False)]
    data_fields, meta_fields = tuple(data_fields), tuple(meta_fields or ())

    def flatten(obj):
        return [getattr(obj, n) for n in data_fields], tuple(getattr(obj, n) for n in meta_fields)

    def unflatten(aux, children):
        return cls(**dict(zip(data_fields, children)), **dict(zip(meta_fields, aux)))
    register_pytree_node(cls, flatten, unflatten)
    return cls


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
