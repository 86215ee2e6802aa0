"""Learning-rate (and weight-decay, beta) schedules: pure functions ``step -> value``.

Every schedule takes the 0-based step count (a Python int or an integer array, traced or not),
returns a float32 array (float64 under x64), and is safe under ``jax.jit`` and ``jax.vmap``.
Where optax has a schedule, the name, the arguments and the values are optax's.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from adamw_jax import _numerics as num
from adamw_jax import _validation as check

Schedule = optax.Schedule


def _step(count: jax.typing.ArrayLike) -> jax.Array:
    return jnp.asarray(count).astype(num.hyperparameter_dtype())


def constant_schedule(value: float) -> Schedule:
    """``η_t = value``."""
    check.check_real_scalar("value", value)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        return jnp.full(jnp.shape(count), value, num.hyperparameter_dtype())

    return schedule


def _check_steps(name: str, steps: int, *, positive: bool = False) -> None:
    if isinstance(steps, bool) or not isinstance(steps, (int, jnp.integer)):
        raise TypeError(f"{name} must be an int, got {type(steps).__name__} {steps!r}.")
    if steps < (1 if positive else 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {steps}.")


def warmup_cosine_decay_schedule(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
    exponent: float = 1.0,
) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value`` over ``warmup_steps``, then cosine
    decay to ``end_value`` at step ``decay_steps`` (which counts the warmup, as in optax):

        t < w:      η_t = init + (peak - init)·t/w
        w <= t:     η_t = end + (peak - end)·(½(1 + cos(π·min(t - w, T)/T)))^exponent,
                    T = decay_steps - w
    """
    for name, value in (("init_value", init_value), ("peak_value", peak_value),
                        ("end_value", end_value), ("exponent", exponent)):
        check.check_real_scalar(name, value)
    _check_steps("warmup_steps", warmup_steps)
    _check_steps("decay_steps", decay_steps)
    if decay_steps < warmup_steps:
        raise ValueError(
            f"decay_steps ({decay_steps}) counts the warmup and must be >= warmup_steps "
            f"({warmup_steps})."
        )
    cosine_steps = max(decay_steps - warmup_steps, 1)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        t = _step(count)
        warm = init_value + (peak_value - init_value) * t / max(warmup_steps, 1)
        progress = jnp.clip(t - warmup_steps, 0, cosine_steps) / cosine_steps
        cosine = (0.5 * (1 + jnp.cos(math.pi * progress))) ** exponent
        decayed = end_value + (peak_value - end_value) * cosine
        return jnp.where(t < warmup_steps, warm, decayed)

    return schedule
