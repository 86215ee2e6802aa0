"""What the wrappers that run an inner transformation conditionally have in common."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def skipped_update(
    inner: optax.GradientTransformationExtraArgs,
    updates: optax.Updates,
    inner_state: optax.OptState,
    params: optax.Params | None,
    extra_args: dict[str, Any],
) -> tuple[optax.Updates, optax.OptState]:
    """The ``lax.cond`` branch that does not run ``inner``: zeros shaped and typed like the
    updates ``inner`` would emit, and its state unchanged. Only shapes are traced here."""
    shapes = jax.eval_shape(
        lambda u, s, p: inner.update(u, s, p, **extra_args)[0], updates, inner_state, params
    )
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return zeros, inner_state
