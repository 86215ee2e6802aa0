"""Masks: which leaves of a parameter tree a transform touches.

A mask is a pytree of Python bools with the structure of the parameters or a prefix of it
(``{"dense": True, "norm": False}`` covers every leaf below each key), or a callable that maps
the parameters to such a tree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

import jax

Mask = Union[Any, Callable[[Any], Any]]


def _is_mask_leaf(node: Any) -> bool:
    return node is None or isinstance(node, bool)


def resolve_mask(mask: Mask, params: Any, *, argument: str = "mask") -> Any:
    """The mask broadcast to one Python bool per leaf of ``params``.

    Raises a ValueError naming ``argument`` when the mask's structure is not a prefix of the
    parameters', and a TypeError when one of its leaves is not a bool.
    """
    tree = mask(params) if callable(mask) else mask
    for leaf in jax.tree_util.tree_leaves(tree, is_leaf=_is_mask_leaf):
        if not isinstance(leaf, bool):
            raise TypeError(
                f"{argument} leaves must be Python bools (True: apply, False: skip), got "
                f"{type(leaf).__name__} {leaf!r}. Build the mask with jax.tree_util.tree_map, "
                "e.g. lambda p: p.ndim > 1."
            )

    def broadcast(flag: bool, subtree: Any) -> Any:
        return jax.tree_util.tree_map(lambda _: flag, subtree)

    try:
        return jax.tree_util.tree_map(broadcast, tree, params, is_leaf=_is_mask_leaf)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"{argument} does not fit the parameters: its tree structure "
            f"{jax.tree_util.tree_structure(tree, is_leaf=_is_mask_leaf)} must be the parameters' "
            f"structure {jax.tree_util.tree_structure(params)} or a prefix of it ({error})."
        ) from None


def where_masked(mask: Mask | None, params: Any, transformed: Any, original: Any) -> Any:
    """``transformed`` on the leaves the mask selects and ``original`` elsewhere."""
    if mask is None:
        return transformed
    flags = resolve_mask(mask, params)
    return jax.tree_util.tree_map(
        lambda flag, new, old: new if flag else old,
        flags,
        transformed,
        original,
    )
