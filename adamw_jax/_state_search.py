"""Find one transform's state inside a whole optimizer state (a chain, a wrapper, nested)."""

from __future__ import annotations

from typing import Any, TypeVar

import jax

State = TypeVar("State")


def find_states(opt_state: Any, state_type: type[State]) -> list[State]:
    """Every ``state_type`` node anywhere in ``opt_state`` (not searched inside each other)."""
    return [
        node
        for node in jax.tree_util.tree_leaves(
            opt_state, is_leaf=lambda node: isinstance(node, state_type)
        )
        if isinstance(node, state_type)
    ]


def find_state(opt_state: Any, state_type: type[State], *, transform: str) -> State:
    """The single ``state_type`` node anywhere in ``opt_state``.

    Raises a ValueError naming ``transform`` when there is none or more than one, since then
    the question "which one?" has no answer.
    """
    found = find_states(opt_state, state_type)
    if len(found) != 1:
        raise ValueError(
            f"expected exactly one {transform} state in the optimizer state, found {len(found)}. "
            f"Pass the state of an optimizer that contains {transform} once (anywhere in an "
            "optax.chain or a wrapper)."
        )
    return found[0]
