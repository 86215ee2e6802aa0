"""``skip_loss_spikes``: skip (and count) the steps whose loss or gradient norm is an outlier.

For each monitored quantity ``x`` (the loss passed as ``update(..., value=loss)`` and/or the
global gradient norm ``‖g‖``), with ``μ`` and ``σ`` the mean and (population) standard deviation
of its last ``window`` values on steps that were *taken*:

    spike  ⇔  at least ``min_history`` values are kept  and  x > μ + threshold·σ,
              or x is not finite

A spike runs nothing: the updates are zeros and the inner state is returned unchanged, so
params and state stay bit-identical, as ``skip_nonfinite``. Its value does not enter the
window. ``max_consecutive=N`` lets the step after N skips in a row through (a lasting change of
level is then learned instead of skipping forever).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamw_jax import _numerics as num
from adamw_jax import _validation as check
from adamw_jax._states import find_state, transformation
from adamw_jax.transforms._wrappers import skipped_update
from adamw_jax.transforms.loss_scaling import SkippedSteps

MONITORS = ("loss", "grad_norm", "both")


class SkipLossSpikesState(NamedTuple):
    """``history``: float32 ``[2, window]`` ring buffer of the kept losses (row 0) and gradient
    norms (row 1); ``kept``: how many of its slots hold values; ``position``: the next slot;
    ``consecutive``/``total``: skipped steps in a row / in all; ``inner_state``."""

    history: jax.Array
    kept: jax.Array
    position: jax.Array
    consecutive: jax.Array
    total: jax.Array
    inner_state: optax.OptState


def _global_norm(tree: optax.Updates) -> jax.Array:
    leaves = [
        jnp.sum(num.squared_magnitude(leaf.astype(num.compute_dtype(leaf.dtype))))
        for leaf in jax.tree_util.tree_leaves(tree)
    ]
    return jnp.sqrt(sum(leaves)) if leaves else jnp.zeros([], num.hyperparameter_dtype())


def _is_spike(
    x: jax.Array, history: jax.Array, kept: jax.Array, threshold: float, min_history: int
) -> jax.Array:
    """``x > μ + threshold·σ`` over the ``kept`` values of ``history``, or ``x`` not finite."""
    slots = jnp.arange(history.shape[0]) < kept
    n = jnp.maximum(kept, 1).astype(history.dtype)
    mean = jnp.sum(jnp.where(slots, history, 0)) / n
    std = jnp.sqrt(jnp.sum(jnp.where(slots, jnp.square(history - mean), 0)) / n)
    outlier = (kept >= min_history) & (x > mean + num.as_hyperparameter(threshold) * std)
    return outlier | ~jnp.isfinite(x)


def skip_loss_spikes(
    inner: optax.GradientTransformation,
    *,
    threshold: float = 6.0,
    window: int = 100,
    min_history: int = 20,
    monitor: str = "loss",
    max_consecutive: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Run ``inner`` only on steps whose monitored quantity is not a spike (module docstring).

    Args:
      inner: the optimizer to protect.
      threshold: ``k``, in standard deviations above the running mean; finite, > 0.
      window: how many past (taken) steps the mean and deviation are over, an int >= 2.
      min_history: steps kept before anything is judged, an int in [2, window].
      monitor: ``"loss"`` (needs ``update(..., value=loss)``), ``"grad_norm"`` or ``"both"``
        (a spike in either skips).
      max_consecutive: ``None`` skips every spike; ``N`` takes the step after ``N`` skips in a
        row.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a ``SkipLossSpikesState``;
      read its counts with ``skipped_spikes(opt_state)``.
    """
    check.check_positive(
        "threshold", threshold, finite=True, hint="It is in standard deviations, e.g. 6.0."
    )
    check.check_positive_int("window", window, hint="e.g. 100 steps.")
    check.check_positive_int("min_history", min_history)
    if window < 2 or not 2 <= min_history <= window:
        raise ValueError(
            f"need 2 <= min_history <= window, got min_history={min_history}, window={window}."
        )
    check.check_choice("monitor", monitor, MONITORS)
    check.check_positive_int("max_consecutive", max_consecutive, allow_none=True)
    rows = {"loss": (0,), "grad_norm": (1,), "both": (0, 1)}[monitor]
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: optax.Params) -> SkipLossSpikesState:
        zero = num.zero_count()
        return SkipLossSpikesState(
            history=jnp.zeros((2, window), num.hyperparameter_dtype()),
            kept=zero,
            position=zero,
            consecutive=zero,
            total=zero,
            inner_state=inner.init(params),
        )

    def update_fn(
        updates: optax.Updates,
        state: SkipLossSpikesState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, SkipLossSpikesState]:
        if 0 in rows and extra_args.get("value") is None:
            raise ValueError(
                f"skip_loss_spikes(monitor={monitor!r}) needs the loss: call "
                "update(grads, state, params, value=loss)."
            )
        loss = extra_args["value"] if 0 in rows else 0.0  # kept only when monitored
        values = jnp.stack(
            [
                jnp.asarray(loss, state.history.dtype).reshape(()),
                _global_norm(updates).astype(state.history.dtype),
            ]
        )
        spike = jnp.any(
            jnp.stack(
                [
                    _is_spike(values[row], state.history[row], state.kept, threshold, min_history)
                    for row in rows
                ]
            )
        )
        consecutive = jnp.where(spike, num.safe_increment(state.consecutive), 0)
        take = ~spike if max_consecutive is None else ~spike | (consecutive > max_consecutive)
        new_updates, inner_state = jax.lax.cond(
            take,
            lambda u, s, p: inner.update(u, s, p, **extra_args),
            lambda u, s, p: skipped_update(inner, u, s, p, extra_args),
            updates,
            state.inner_state,
            params,
        )
        history = jnp.where(take, state.history.at[:, state.position].set(values), state.history)
        return new_updates, SkipLossSpikesState(
            history=history,
            kept=jnp.where(take, jnp.minimum(state.kept + 1, window), state.kept),
            position=jnp.where(take, (state.position + 1) % window, state.position),
            consecutive=jnp.where(take, 0, consecutive).astype(num.COUNT_DTYPE),
            total=jnp.where(take, state.total, num.safe_increment(state.total)),
            inner_state=inner_state,
        )

    return transformation(init_fn, update_fn)


def skipped_spikes(opt_state: optax.OptState) -> SkippedSteps:
    """Skipped-step counts of the ``skip_loss_spikes`` found anywhere in ``opt_state``:
    ``consecutive`` (the current run of skipped spikes) and ``total``."""
    state = find_state(opt_state, SkipLossSpikesState, transform="skip_loss_spikes")
    return SkippedSteps(consecutive=state.consecutive, total=state.total)
