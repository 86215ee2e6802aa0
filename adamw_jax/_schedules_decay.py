"""Single-curve schedules: constant, polynomial and linear, exponential, step, inverse-time,
inverse-square-root and cosine decay. ``t`` is the 0-based step count."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from adamw_jax import _numerics as num
from adamw_jax import _schedule_arguments as args
from adamw_jax import _validation as check


def constant_schedule(value: float) -> optax.Schedule:
    """``η_t = value``."""
    args.check_values(value=value)
    return lambda count: args.result(value, count)


def polynomial_schedule(
    init_value: float, end_value: float, power: float, transition_steps: int, transition_begin: int = 0
) -> optax.Schedule:
    """Polynomial transition from ``init_value`` (I) to ``end_value`` (E) over ``T`` steps
    starting at step ``B``:

        η_t = (I - E)·(1 - τ/T)^power + E,   τ = min(max(t - B, 0), T)

    ``transition_steps = 0`` jumps to ``end_value`` at step ``B`` (optax instead keeps
    ``init_value`` forever, which silently turns a zero-length warmup into a zero learning rate).
    """
    args.check_values(init_value=init_value, end_value=end_value, power=power)
    args.check_steps("transition_steps", transition_steps)
    args.check_steps("transition_begin", transition_begin)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        if transition_steps == 0:
            return args.result(jnp.where(args.as_count(count) < transition_begin, init_value, end_value), count)
        # (T - τ)/T rather than 1 - τ/T: exactly 0 at the end even when XLA divides by multiplying.
        remaining = (transition_steps - args.elapsed(count, transition_begin, transition_steps)) / transition_steps
        return args.result((init_value - end_value) * remaining**power + end_value, count)

    return schedule


def linear_schedule(
    init_value: float, end_value: float, transition_steps: int, transition_begin: int = 0
) -> optax.Schedule:
    """``η_t = I + (E - I)·τ/T``, ``τ = min(max(t - B, 0), T)``: ``polynomial_schedule`` with
    ``power = 1``."""
    return polynomial_schedule(init_value, end_value, 1.0, transition_steps, transition_begin)


def exponential_decay(
    init_value: float,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> optax.Schedule:
    """``η_t = I·rate^p`` with ``p = max(t - B, 0)/T`` (``floor`` of it if ``staircase``),
    bounded by ``end_value`` (below if ``rate < 1``, above if ``rate > 1``).

    Keras ``ExponentialDecay(I, T, rate, staircase)``; torch ``ExponentialLR(gamma)`` is
    ``T = 1``.
    """
    args.check_values(init_value=init_value)
    args.check_steps("transition_steps", transition_steps, positive=True)
    check.check_positive("decay_rate", decay_rate, hint="The value is multiplied by it every transition_steps.")
    args.check_steps("transition_begin", transition_begin)
    if end_value is not None:
        args.check_values(end_value=end_value)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        delay = jnp.maximum(args.as_count(count) - transition_begin, 0)
        if staircase:
            exponent = args.completed_intervals(delay, transition_steps)
        else:
            exponent = args.as_float(delay) / transition_steps
        rate = num.as_hyperparameter(decay_rate)
        value = init_value * rate**exponent
        if end_value is not None:
            value = jnp.where(rate < 1, jnp.maximum(value, end_value), jnp.minimum(value, end_value))
        return args.result(value, count)

    return schedule


def step_decay_schedule(init_value: float, decay_rate: float, step_size: int) -> optax.Schedule:
    """``η_t = init_value · decay_rate^floor(t / step_size)``: torch ``StepLR(step_size, gamma)``,
    the classic ``lr · 0.1 ** (epoch // 10)``."""
    args.check_values(init_value=init_value)
    check.check_range("decay_rate", decay_rate, low=0.0, hint="e.g. 0.1 divides the value by 10.")
    args.check_steps("step_size", step_size, positive=True)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        exponent = args.completed_intervals(count, step_size)
        return args.result(init_value * num.as_hyperparameter(decay_rate) ** exponent, count)

    return schedule


def inverse_time_decay_schedule(
    init_value: float, decay_rate: float, decay_steps: int, staircase: bool = False
) -> optax.Schedule:
    """``η_t = init_value / (1 + decay_rate · p)``, ``p = t / decay_steps`` (``floor`` of it if
    ``staircase``): Keras ``InverseTimeDecay``, time-based decay."""
    args.check_values(init_value=init_value)
    check.check_range("decay_rate", decay_rate, low=0.0, hint="0 keeps the value constant.")
    args.check_steps("decay_steps", decay_steps, positive=True)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        if staircase:
            progress = args.completed_intervals(count, decay_steps)
        else:
            progress = args.as_float(args.as_count(count)) / decay_steps
        return args.result(init_value / (1 + decay_rate * progress), count)

    return schedule


def inverse_sqrt_schedule(peak_value: float, warmup_steps: int) -> optax.Schedule:
    """Linear warmup from 0, then decay as ``1/√t`` (Vaswani et al. 2017):

        t < w:   η_t = peak·t/w          t >= w:   η_t = peak·√(w/t)
    """
    args.check_values(peak_value=peak_value)
    args.check_steps("warmup_steps", warmup_steps, positive=True)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        t = args.as_float(args.as_count(count))
        decayed = peak_value * jnp.sqrt(warmup_steps / jnp.maximum(t, warmup_steps))
        return args.result(jnp.where(t < warmup_steps, peak_value * t / warmup_steps, decayed), count)

    return schedule


def cosine_decay_schedule(
    init_value: float, decay_steps: int, alpha: float = 0.0, exponent: float = 1.0
) -> optax.Schedule:
    """``η_t = I·((1 - α)·c^exponent + α)``, ``c = ½(1 + cos(π·min(t, T)/T))``: from ``I`` to
    ``α·I`` over ``T = decay_steps`` (torch ``CosineAnnealingLR`` with ``α = η_min/I``, Keras
    ``CosineDecay``)."""
    args.check_values(init_value=init_value, alpha=alpha, exponent=exponent)
    args.check_steps("decay_steps", decay_steps, positive=True)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        progress = args.elapsed(count, 0, decay_steps) / decay_steps
        cosine = 0.5 * (1 + jnp.cos(math.pi * progress))
        return args.result(init_value * ((1 - alpha) * cosine**exponent + alpha), count)

    return schedule
