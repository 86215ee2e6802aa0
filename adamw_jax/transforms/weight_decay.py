"""Weight decay, coupled to the learning rate or fully decoupled from it.

* ``add_decayed_weights`` (before the learning rate): ``u ← u + λ_t·θ``, so the step is
  ``θ ← θ - η_t·(u + λ_t·θ)``: torch ``AdamW``, ``optax.adamw`` and Keras ``AdamW``. Placed
  before ``scale_by_adam`` instead it is classic L2 regularisation (torch ``Adam``).
* ``decoupled_weight_decay`` (after the learning rate): ``u ← u - s_t·λ·θ``, so
  ``θ ← θ - η_t·u - s_t·λ·θ``: Loshchilov & Hutter (2019), Algorithm 2, where ``s_t`` is the
  schedule multiplier ``η_t / η_peak`` and not the learning rate itself.

``λ_t`` may be a float or a schedule of the 0-based step; ``mask`` selects the leaves to decay
(see ``adamw_jax.transforms._masking``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamw_jax import _numerics as num
from adamw_jax import _validation as check
from adamw_jax._states import transformation
from adamw_jax.transforms._masking import Mask, where_masked


class WeightDecayState(NamedTuple):
    """``count``: int32 steps taken, the argument of the decay (and multiplier) schedules."""

    count: jax.Array


def check_weight_decay(weight_decay: Any) -> None:
    """``λ``: a finite float >= 0 or a schedule (a ValueError naming it otherwise)."""
    check.check_range(
        "weight_decay",
        weight_decay,
        low=0.0,
        allow_schedule=True,
        finite=True,
        hint="Use 0.0 to disable decay.",
    )


def decay_coefficient(
    weight_decay: optax.ScalarOrSchedule, schedule_multiplier: optax.Schedule | None
) -> Callable[[jax.Array], jax.Array]:
    """``count ↦ s_t·λ_t`` (``s_t = 1`` without a multiplier)."""

    def coefficient(count: jax.Array) -> jax.Array:
        decay = num.hyperparameter_at(weight_decay, count)
        if schedule_multiplier is None:
            return decay
        return num.hyperparameter_at(schedule_multiplier, count) * decay

    return coefficient


def masked_decay(
    coefficient: Callable[[jax.Array], jax.Array],
    sign: float,
    mask: Mask | None,
    *,
    cautious: bool = False,
    name: str = "weight decay",
) -> optax.GradientTransformationExtraArgs:
    """``u ← u + sign·c_t·θ`` on the masked leaves, with ``c_t = coefficient(count)``; with
    ``cautious``, only where ``sign·u·θ > 0`` (``adamw_jax.variants.cautious``)."""

    def init_fn(params: optax.Params) -> WeightDecayState:
        del params
        return WeightDecayState(count=num.zero_count())

    def update_fn(
        updates: optax.Updates,
        state: WeightDecayState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, WeightDecayState]:
        del extra_args
        new_state = WeightDecayState(count=num.safe_increment(state.count))
        if not jax.tree_util.tree_leaves(updates):
            return updates, new_state
        if params is None:
            raise ValueError(f"{name} needs the parameters: call update(updates, state, params).")
        c_t = sign * coefficient(state.count)

        def decayed(u: jax.Array, p: jax.Array) -> jax.Array:
            u32 = u.astype(num.compute_dtype(u.dtype))
            step = c_t * p
            if cautious:
                step = jnp.where(sign * u32 * p > 0, step, 0)
            return (u32 + step).astype(u.dtype)

        new_updates = where_masked(
            mask, params, jax.tree_util.tree_map(decayed, updates, params), updates
        )
        return new_updates, new_state

    return transformation(init_fn, update_fn)


def add_decayed_weights(
    weight_decay: optax.ScalarOrSchedule = 0.0, mask: Mask | None = None
) -> optax.GradientTransformationExtraArgs:
    """Learning-rate-coupled decay: ``u ← u + λ_t·θ`` (place it before the learning rate); the
    signature is ``optax.add_decayed_weights``'.

    Args:
      weight_decay: ``λ``, a float >= 0 or a schedule of the 0-based step.
      mask: a tree of bools (or a prefix of the params tree, or a callable returning one); only
        ``True`` leaves are decayed.
    """
    check_weight_decay(weight_decay)
    return masked_decay(lambda count: num.hyperparameter_at(weight_decay, count), 1.0, mask)


def decoupled_weight_decay(
    weight_decay: optax.ScalarOrSchedule,
    schedule_multiplier: optax.Schedule | None = None,
    mask: Mask | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Fully decoupled decay: ``u ← u - s_t·λ·θ`` (place it after the learning rate).

    Args:
      weight_decay: ``λ``, a float >= 0 or a schedule; it is *not* multiplied by the learning
        rate, so it is typically 1e-4 to 1e-5 rather than torch's 1e-2.
      schedule_multiplier: ``s_t`` as a function of the 0-based step, e.g. the learning-rate
        schedule divided by its peak; ``None`` means ``s_t = 1``.
      mask: which leaves to decay, as in ``add_decayed_weights``.
    """
    check_weight_decay(weight_decay)
    check.check_schedule_or_none("schedule_multiplier", schedule_multiplier)
    return masked_decay(decay_coefficient(weight_decay, schedule_multiplier), -1.0, mask)
