"""``scale_by_learning_rate``: multiply the direction by ``-η_t``.

``η_t`` is a float or a schedule evaluated at the 0-based step count (as optax, torch and Keras
do), always in float32 (float64 under x64) whatever the update dtype.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from adamw_jax import _numerics as num
from adamw_jax import _validation as check
from adamw_jax._states import transformation


class ScaleByLearningRateState(NamedTuple):
    """``count``: int32 steps taken, the argument of a learning-rate schedule.

    Kept whether the learning rate is a float or a schedule, so that checkpoints stay loadable
    when one is swapped for the other.
    """

    count: jax.Array


def scale_by_learning_rate(
    learning_rate: optax.ScalarOrSchedule,
) -> optax.GradientTransformationExtraArgs:
    """``u ← -η_t · u`` with ``η_t = learning_rate(count)`` or the constant ``learning_rate``.

    Args:
      learning_rate: a float >= 0 or a schedule (a function of the 0-based step).
    """
    check.check_learning_rate(
        learning_rate, "Pass the positive step size, e.g. 1e-3; the sign is applied here."
    )

    def init_fn(params: optax.Params) -> ScaleByLearningRateState:
        del params
        return ScaleByLearningRateState(count=num.zero_count())

    def update_fn(
        updates: optax.Updates,
        state: ScaleByLearningRateState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ScaleByLearningRateState]:
        del params, extra_args
        rate = num.hyperparameter_at(learning_rate, state.count)
        updates = jax.tree_util.tree_map(lambda u: (-rate * u).astype(u.dtype), updates)
        return updates, ScaleByLearningRateState(count=num.safe_increment(state.count))

    return transformation(init_fn, update_fn)
