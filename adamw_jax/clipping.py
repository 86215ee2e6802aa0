"""Gradient clipping: by value, by each tensor's norm, by the global norm of all tensors.

    clip_by_value:        g ← clip(g, -c, c)                                      (Keras clipvalue)
    clip_by_norm:         g ← g · c / max(‖g‖₂, c)        for each tensor alone    (Keras clipnorm)
    clip_by_global_norm:  g ← g · c / max(‖G‖₂ + eps, c)  with ‖G‖₂² = Σ ‖g‖₂²
                          (Keras global_clipnorm with eps=0; torch clip_grad_norm_ with eps=1e-6)

Norms are accumulated in at least float32, so bfloat16 and float16 gradients neither overflow nor
lose the small squares; the clipped gradient keeps its own dtype. A zero gradient is left as it
is (no 0/0), and a non-finite global norm makes every gradient NaN, as Keras does, so that a
downstream ``skip_nonfinite`` sees the bad step instead of a silently rescaled one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamw_jax import _numerics as num
from adamw_jax import _validation as check


class ClipState(NamedTuple):
    """Clipping keeps no state."""


def _stateless(clip: Callable[[optax.Updates], optax.Updates]) -> optax.GradientTransformation:
    """A transform whose update is ``clip(updates)`` and whose state is empty."""

    def init_fn(params: optax.Params) -> ClipState:
        del params
        return ClipState()

    def update_fn(
        updates: optax.Updates, state: ClipState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ClipState]:
        del params
        return clip(updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def _check_threshold(name: str, value: float) -> None:
    check.check_positive(name, value, hint=f"{name} is the clipping threshold, e.g. 1.0; leave the "
                         "clipping transform out to disable clipping (0 would zero every gradient).")


def squared_norm(tree: optax.Updates) -> jax.Array:
    """``Σ |g|²`` over every leaf of ``tree``, accumulated in at least float32."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return jnp.zeros([], num.hyperparameter_dtype())
    return sum(_leaf_squared_norm(g) for g in leaves)


def global_norm(tree: optax.Updates) -> jax.Array:
    """``‖G‖₂``: the L2 norm of all leaves of ``tree`` taken together, in at least float32."""
    return jnp.sqrt(squared_norm(tree))


def _leaf_squared_norm(g: jax.Array) -> jax.Array:
    x = g.astype(num.compute_dtype(g.dtype))
    return jnp.sum(jnp.real(x * jnp.conj(x)))


def _scaled(g: jax.Array, factor: jax.Array) -> jax.Array:
    return (g.astype(num.compute_dtype(g.dtype)) * factor).astype(g.dtype)


def clip_by_value(max_value: float) -> optax.GradientTransformation:
    """Clip every gradient element to ``[-max_value, max_value]`` (Keras ``clipvalue``).

    Args:
      max_value: the bound ``c > 0``.
    """
    _check_threshold("max_value", max_value)
    bound = num.as_hyperparameter(max_value)

    def clip(updates: optax.Updates) -> optax.Updates:
        return jax.tree_util.tree_map(
            lambda g: jnp.clip(g.astype(num.compute_dtype(g.dtype)), -bound, bound).astype(g.dtype),
            updates,
        )

    return _stateless(clip)


def clip_by_norm(max_norm: float) -> optax.GradientTransformation:
    """Rescale each gradient tensor on its own so its L2 norm is at most ``max_norm`` (Keras
    ``clipnorm``): ``g ← g · c / max(‖g‖₂, c)``.

    Args:
      max_norm: the bound ``c > 0`` on each tensor's norm.
    """
    _check_threshold("max_norm", max_norm)
    bound = num.as_hyperparameter(max_norm)

    def clip(updates: optax.Updates) -> optax.Updates:
        return jax.tree_util.tree_map(
            lambda g: _scaled(g, bound / jnp.maximum(jnp.sqrt(_leaf_squared_norm(g)), bound)),
            updates,
        )

    return _stateless(clip)


def clip_by_global_norm(max_norm: float, *, eps: float = 0.0) -> optax.GradientTransformation:
    """Rescale all gradients together so their joint L2 norm is at most ``max_norm``:
    ``g ← g · c / max(‖G‖₂ + eps, c)``.

    ``eps=0`` is Keras ``global_clipnorm`` (and ``optax.clip_by_global_norm``);
    ``eps=1e-6`` is ``torch.nn.utils.clip_grad_norm_``, which divides by ``‖G‖₂ + 1e-6``.

    Args:
      max_norm: the bound ``c > 0`` on the global norm.
      eps: added to the norm in the denominator, >= 0.
    """
    _check_threshold("max_norm", max_norm)
    check.check_range("eps", eps, low=0.0, hint="Use 0.0 (Keras) or 1e-6 (torch).")
    bound = num.as_hyperparameter(max_norm)
    offset = num.as_hyperparameter(eps)

    def clip(updates: optax.Updates) -> optax.Updates:
        norm = global_norm(updates)
        factor = bound / jnp.maximum(norm + offset, bound)
        factor = jnp.where(jnp.isfinite(norm), factor, jnp.nan)
        return jax.tree_util.tree_map(lambda g: _scaled(g, factor), updates)

    return _stateless(clip)
