"""Cautious updates and cautious weight decay: keep only what agrees in sign.

* ``scale_by_cautious_mask(inner)`` (Liang et al. 2024, "Cautious Optimizers", C-AdamW; timm's
  ``AdamW(caution=True)``): with ``u = inner(g)`` the direction (before the learning rate),
  per tensor

      φ = 1[u ⊙ g > 0],   u ← u ⊙ φ / max(mean(φ), 1e-3)

  so the coordinates whose update disagrees with the current gradient are dropped and the rest
  rescaled by the kept fraction (timm's clamp at 1e-3 keeps an all-dropped tensor finite).
* ``add_cautious_decayed_weights(λ)`` (Chen et al. 2025, "Cautious Weight Decay"): decay only
  the coordinates where the parameter and the update agree in sign,

      u ← u + λ_t · 1[u ⊙ θ > 0] ⊙ θ       (before the learning rate: θ ← θ - η_t·(u + ...))

  or after the learning rate (``after_learning_rate=True``, decoupled decay) ``u ← u - s_t·λ_t·
  1[-u ⊙ θ > 0] ⊙ θ``, the sign test on the descent direction ``-u`` there.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from adamw_jax import _numerics as num
from adamw_jax import _validation as check
from adamw_jax._states import transformation
from adamw_jax.transforms._masking import Mask
from adamw_jax.transforms.weight_decay import check_weight_decay, decay_coefficient, masked_decay

MIN_KEPT_FRACTION = 1e-3  # timm's clamp of the mask's mean


def _cautious(u: jax.Array, g: jax.Array, min_kept_fraction: float) -> jax.Array:
    """``u ⊙ φ / max(mean(φ), min)`` with ``φ = 1[u ⊙ g > 0]``, in at least float32."""
    dtype = num.compute_dtype(u.dtype)
    kept = (u.astype(dtype) * g.astype(dtype) > 0).astype(dtype)
    fraction = (
        jnp.maximum(jnp.mean(kept), num.as_hyperparameter(min_kept_fraction))
        if kept.size
        else num.as_hyperparameter(1.0)
    )
    return (u.astype(dtype) * kept / fraction).astype(u.dtype)


def scale_by_cautious_mask(
    inner: optax.GradientTransformation, *, min_kept_fraction: float = MIN_KEPT_FRACTION
) -> optax.GradientTransformationExtraArgs:
    """Zero the coordinates of ``inner``'s output that disagree in sign with the gradient and
    rescale each tensor by its kept fraction (math in the module docstring).

    Args:
      inner: the transformation giving the direction ``u`` from the gradient ``g``, e.g.
        ``scale_by_adam()``; its state is this transformation's state.
      min_kept_fraction: the floor of the kept fraction, in (0, 1] (timm's 1e-3).
    """
    check.check_positive(
        "min_kept_fraction", min_kept_fraction, high=1.0, finite=True, hint="timm uses 1e-3."
    )
    inner = optax.with_extra_args_support(inner)

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.OptState]:
        directions, state = inner.update(updates, state, params, **extra_args)
        return jax.tree_util.tree_map(
            lambda u, g: _cautious(u, g, min_kept_fraction), directions, updates
        ), state

    return transformation(inner.init, update_fn)


def add_cautious_decayed_weights(
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Mask | None = None,
    *,
    schedule_multiplier: optax.Schedule | None = None,
    after_learning_rate: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Weight decay on the coordinates where ``θ`` and the update agree in sign (math in the
    module docstring); otherwise ``add_decayed_weights`` (or, with ``after_learning_rate=True``,
    ``decoupled_weight_decay``), whose state it keeps.

    Args:
      weight_decay: ``λ``, a float >= 0 or a schedule of the 0-based step.
      mask: which leaves to decay, as in ``add_decayed_weights``.
      schedule_multiplier: ``s_t`` of decoupled decay (``None``: 1).
      after_learning_rate: place the box after ``scale_by_learning_rate`` (decoupled decay).
    """
    check_weight_decay(weight_decay)
    check.check_schedule_or_none("schedule_multiplier", schedule_multiplier)
    check.check_bool("after_learning_rate", after_learning_rate)

    sign = -1.0 if after_learning_rate else 1.0
    coefficient = decay_coefficient(weight_decay, schedule_multiplier)
    return masked_decay(coefficient, sign, mask, cautious=True, name="cautious weight decay")
