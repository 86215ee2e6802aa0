"""A transform's typed state: pairing ``init`` with ``update``, and finding the state inside a
whole optimizer state (a chain, a wrapper, nested)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

import jax
import optax

State = TypeVar("State")


class UpdateFn(Protocol[State]):
    """An ``update`` whose state has the type ``State`` its ``init`` returns."""

    def __call__(
        self,
        updates: optax.Updates,
        state: State,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, State]: ...


def transformation(
    init: Callable[[optax.Params], State], update: UpdateFn[State]
) -> optax.GradientTransformationExtraArgs:
    """``optax.GradientTransformationExtraArgs(init, update)``, with ``update`` checked to take
    and return the state type ``init`` makes.

    optax types every state as ``optax.OptState`` (a nest of arrays, without ``None``), so an
    ``update`` that declares its NamedTuple state (``state: ScaleByAdamState``) cannot be
    assigned to optax's protocol: a parameter type may only widen. The pairing contract of
    optax (``update`` receives the state ``init`` or an earlier ``update`` returned) is what
    makes the narrower type hold; this cast states it once, for every transform.
    """
    return optax.GradientTransformationExtraArgs(
        cast(optax.TransformInitFn, init), cast(optax.TransformUpdateExtraArgsFn, update)
    )


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
