"""``reduce_on_plateau``: shrink the updates when a monitored value stops improving.

Fed the monitored value (a loss) through ``update(updates, state, params, value=loss)``. Values
are averaged over windows of ``accumulation_size`` calls; each window mean ``v`` is compared
with the best mean so far:

    improved   ⇔  v < best·(1 - rtol) - atol
    bad        =  0 if improved else bad + 1;     in cooldown: cooldown - 1, bad = 0
    bad > patience:  scale ← max(scale·factor, min_scale)  (if that lowers it by more than eps),
                     cooldown ← cooldown steps, bad = 0

This is torch ``ReduceLROnPlateau(mode="min", factor, patience, threshold, threshold_mode,
cooldown, min_lr, eps)`` with ``scale = lr / initial lr``: ``threshold_mode="rel"`` is
``rtol=threshold, atol=0``, ``"abs"`` is ``rtol=0, atol=threshold``; ``min_scale = min_lr/lr``,
``eps = torch_eps/lr``. As in torch, ``patience`` bad windows are tolerated and the next one
reduces (``optax.contrib.reduce_on_plateau`` reduces one window earlier). The update that
receives a value is scaled by the decision that includes it, so the scale after ``n`` values
is torch's learning rate (over the initial one) after ``n`` calls of ``scheduler.step(loss)``.
To maximise a metric, feed its negative.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamw_jax import _numerics as num
from adamw_jax import _validation as check
from adamw_jax._states import transformation


class ReduceOnPlateauState(NamedTuple):
    """``scale``: the factor applied to the updates; ``best_value``: best window mean so far;
    ``bad_windows``: windows since the last improvement; ``cooldown_left``: windows still
    ignored after a reduction; ``window_count``/``window_sum``: the current window's values.
    Floats are float32 (float64 under x64) whatever the parameter dtype; counts are int32."""

    scale: jax.Array
    best_value: jax.Array
    bad_windows: jax.Array
    cooldown_left: jax.Array
    window_count: jax.Array
    window_sum: jax.Array


def _check_arguments(
    factor: float,
    patience: int,
    rtol: float,
    atol: float,
    cooldown: int,
    min_scale: float,
    accumulation_size: int,
    eps: float,
) -> None:
    check.check_positive(
        "factor",
        factor,
        high=1.0,
        high_inclusive=False,
        hint="The scale is multiplied by it on a plateau, e.g. 0.1 (0 would stop "
        "training at the first plateau).",
    )
    for name, value in (("patience", patience), ("cooldown", cooldown)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int >= 0 (a number of windows), got {value!r}.")
        if value < 0:
            raise ValueError(f"{name} must be >= 0 (a number of windows), got {value}.")
    check.check_range("rtol", rtol, low=0.0, high=1.0, hint="e.g. 1e-4: improve by 0.01% to count.")
    check.check_range(
        "atol",
        atol,
        low=0.0,
        finite=True,
        hint="e.g. 0.0, or the smallest loss change that counts.",
    )
    check.check_range(
        "min_scale", min_scale, low=0.0, high=1.0, hint="the scale never drops below it."
    )
    check.check_range(
        "eps",
        eps,
        low=0.0,
        finite=True,
        hint="reductions smaller than eps are skipped (torch's eps/lr).",
    )
    check.check_positive_int(
        "accumulation_size",
        accumulation_size,
        hint="It is how many values are averaged per decision; 1 decides at every value.",
    )


def reduce_on_plateau(
    factor: float = 0.1,
    patience: int = 10,
    rtol: float = 1e-4,
    atol: float = 0.0,
    cooldown: int = 0,
    min_scale: float = 0.0,
    accumulation_size: int = 1,
    *,
    eps: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """Scale updates by a factor that drops by ``factor`` on each plateau of ``value``.

    Args:
      factor: multiplier of the scale on a plateau, in (0, 1).
      patience: bad windows tolerated; the next bad one reduces the scale (torch semantics).
      rtol, atol: a window improves when its mean is below ``best·(1 - rtol) - atol``.
      cooldown: windows ignored after each reduction.
      min_scale: lower bound of the scale.
      accumulation_size: values averaged per window (1: decide at every value).
      eps: skip reductions that lower the scale by no more than this (torch ``eps`` over lr).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs ``value=``.
    """
    _check_arguments(factor, patience, rtol, atol, cooldown, min_scale, accumulation_size, eps)
    dtype = num.hyperparameter_dtype()

    def init_fn(params: optax.Params) -> ReduceOnPlateauState:
        del params
        return ReduceOnPlateauState(
            scale=jnp.ones([], dtype),
            best_value=jnp.full([], jnp.inf, dtype),
            bad_windows=num.zero_count(),
            cooldown_left=num.zero_count(),
            window_count=num.zero_count(),
            window_sum=jnp.zeros([], dtype),
        )

    def decide(state: ReduceOnPlateauState, mean: jax.Array) -> ReduceOnPlateauState:
        improved = mean < state.best_value * num.one_minus(rtol) - atol
        bad = jnp.where(improved, 0, num.safe_increment(state.bad_windows))
        cooling = state.cooldown_left > 0
        bad = jnp.where(cooling, 0, bad)
        reduce = bad > patience
        reduced = jnp.maximum(state.scale * factor, min_scale)
        lowered = reduce & (state.scale - reduced > eps)
        return ReduceOnPlateauState(
            scale=jnp.where(lowered, reduced, state.scale),
            best_value=jnp.where(improved, mean, state.best_value),
            bad_windows=jnp.where(reduce, 0, bad).astype(num.COUNT_DTYPE),
            cooldown_left=jnp.where(reduce, cooldown, state.cooldown_left - cooling).astype(
                num.COUNT_DTYPE
            ),
            window_count=num.zero_count(),
            window_sum=jnp.zeros([], dtype),
        )

    def update_fn(
        updates: optax.Updates,
        state: ReduceOnPlateauState,
        params: optax.Params | None = None,
        *,
        value: jax.typing.ArrayLike | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ReduceOnPlateauState]:
        del params, extra_args
        if value is None:
            raise ValueError(
                "reduce_on_plateau needs the monitored value: call update(..., value=loss)."
            )
        if jnp.shape(value) != ():
            raise ValueError(
                f"value must be a scalar (the monitored loss), got shape {jnp.shape(value)}."
            )
        window_sum = state.window_sum + num.as_hyperparameter(value)
        window_count = num.safe_increment(state.window_count)
        pending = state._replace(window_sum=window_sum, window_count=window_count)
        full = window_count >= accumulation_size
        decided = decide(pending, window_sum / window_count.astype(dtype))
        state = jax.tree_util.tree_map(lambda d, p: jnp.where(full, d, p), decided, pending)
        updates = jax.tree_util.tree_map(
            lambda u: (state.scale * u.astype(num.compute_dtype(u.dtype))).astype(u.dtype), updates
        )
        return updates, state

    return transformation(init_fn, update_fn)
