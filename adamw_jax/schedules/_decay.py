"""Single-curve schedules: constant, polynomial and linear, exponential, step, inverse-time,
inverse-square-root and cosine decay. ``t`` is the 0-based step count, read as 0 when negative."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adamw_jax import _numerics as num
from adamw_jax.schedules import _arguments as args


def check_flag(name: str, value: Any) -> None:
    """A switch must be a ``bool`` (``np.bool_`` too): a string such as ``'no'`` is refused."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}.")


def constant_schedule(value: float) -> optax.Schedule:
    """``η_t = value``."""
    args.check_values(value=value)
    return lambda count: args.result(value, args.as_count(count))


def polynomial_curve(
    init_value: Any, end_value: Any, power: Any, steps: int, begin: int
) -> optax.Schedule:
    """``(I - E)·((T - τ)/T)^P + E``, ``τ = min(max(t - B, 0), T)``, for checked arguments;
    ``I`` throughout when ``T <= 0``.

    For ``P = 1`` formed as ``I + (E - I)·τ/T``, exactly ``I`` at the start and with full
    relative precision through a warmup from 0; otherwise as ``(I - E)·((T - τ)/T)^P + E``,
    exactly ``E`` at the end, where optax's ``1 - τ/T`` keeps only the absolute precision of
    ``τ/T`` (and a fractional power of its rounding below 0 is NaN).
    """
    if steps <= 0:
        return lambda count: args.result(init_value, args.as_count(count))

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        t = args.as_count(count)
        done, left = args.fractions(t, begin, steps)
        linear = init_value + (end_value - init_value) * done
        return args.result(
            jnp.where(power == 1, linear, (init_value - end_value) * left**power + end_value), t
        )

    return schedule


def check_transition(
    caller: str,
    init_value: Any,
    end_value: Any,
    transition_steps: Any,
    *,
    steps_name: str = "transition_steps",
    init_name: str = "init_value",
    end_name: str = "end_value",
) -> int:
    """The length of a transition from ``init_value`` to ``end_value``. optax holds
    ``init_value`` forever when it is ``<= 0``; so do we, warning when it is negative or when
    that leaves ``end_value`` out of reach."""
    steps = args.check_steps(steps_name, transition_steps, low=None)
    if steps < 0 or (
        steps == 0
        and args.check_value(init_name, init_value) != args.check_value(end_name, end_value)
    ):
        args.warn(
            f"{caller}: {steps_name}={steps} disables the transition, so the schedule holds "
            f"{init_name}={init_value!r} at every step, as optax does, and never reaches "
            f"{end_name}={end_value!r}. Pass {steps_name} >= 1 for a transition, or "
            f"{init_name}={end_name} for none."
        )
    return steps


def checked_polynomial(
    caller: str,
    init_value: float,
    end_value: float,
    power: float,
    transition_steps: int,
    transition_begin: int,
    **names: str,
) -> optax.Schedule:
    """``polynomial_curve`` after checking its arguments, named as ``caller`` names them."""
    args.check_values(
        **{
            names.get("init_name", "init_value"): init_value,
            names.get("end_name", "end_value"): end_value,
        }
    )
    args.check_value(
        "power",
        power,
        low=0.0,
        positive=True,
        hint="1 is linear, 2 quadratic; power <= 0 never leaves init_value or ends at inf.",
    )
    steps = check_transition(caller, init_value, end_value, transition_steps, **names)
    begin = args.begin_step("transition_begin", transition_begin, caller)
    return polynomial_curve(init_value, end_value, power, steps, begin)


def polynomial_schedule(
    init_value: float,
    end_value: float,
    power: float,
    transition_steps: int,
    transition_begin: int = 0,
) -> optax.Schedule:
    """Polynomial transition from ``init_value`` (I) to ``end_value`` (E) over ``T`` steps
    starting at step ``B``:

        η_t = (I - E)·(1 - τ/T)^power + E,   τ = min(max(t - B, 0), T)

    As in optax, ``transition_steps <= 0`` holds ``I`` at every step (a ``UserWarning`` says
    so when it is negative or when ``E != I``), and a negative ``transition_begin`` is read as
    0 (with a ``UserWarning``). Unlike optax, ``power`` must be ``> 0`` and every value finite.
    """
    return checked_polynomial(
        "polynomial_schedule", init_value, end_value, power, transition_steps, transition_begin
    )


def linear_schedule(
    init_value: float, end_value: float, transition_steps: int, transition_begin: int = 0
) -> optax.Schedule:
    """``η_t = I + (E - I)·τ/T``, ``τ = min(max(t - B, 0), T)``: ``polynomial_schedule`` with
    ``power = 1``, its degenerate cases included (``T <= 0`` holds ``I``)."""
    return checked_polynomial(
        "linear_schedule", init_value, end_value, 1.0, transition_steps, transition_begin
    )


def exponential_decay(
    init_value: float,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> optax.Schedule:
    """``η_t = I·rate^p`` with ``p = max(t - B, 0)/T`` (``floor`` of it if ``staircase``),
    bounded by ``end_value`` (below if ``rate < 1``, else above).

    As in optax, ``transition_steps <= 0`` or ``decay_rate = 0`` hold ``I`` at every step and a
    negative ``transition_begin`` is read as 0, each with a ``UserWarning`` here. Unlike optax,
    ``decay_rate`` must be finite and ``>= 0`` (a negative rate has no real powers).

    Keras ``ExponentialDecay(I, T, rate, staircase)``; torch ``ExponentialLR(gamma)`` is
    ``T = 1``.
    """
    args.check_values(init_value=init_value)
    if end_value is not None:
        args.check_values(end_value=end_value)
    check_flag("staircase", staircase)
    rate = args.check_value(
        "decay_rate",
        decay_rate,
        low=0.0,
        hint="The value is multiplied by it every transition_steps.",
    )
    steps = args.check_steps("transition_steps", transition_steps, low=None)
    begin = args.begin_step("transition_begin", transition_begin, "exponential_decay")
    if steps <= 0 or rate == 0:
        reason = f"transition_steps={steps}" if steps <= 0 else "decay_rate=0"
        args.warn(
            f"exponential_decay: {reason} disables the decay, so the schedule holds "
            f"init_value={init_value!r} at every step, as optax does. Pass transition_steps >= 1 "
            "and decay_rate > 0 for a decay, or use constant_schedule(init_value)."
        )
        return constant_schedule(init_value)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        t = args.as_count(count)
        delay = args.since(t, begin)
        exponent = (
            args.completed_intervals(delay, steps)
            if staircase
            else args.as_float(delay) / float(steps)
        )
        factor = num.as_hyperparameter(decay_rate)
        value = init_value * factor**exponent
        if end_value is not None:
            value = jnp.where(
                factor < 1, jnp.maximum(value, end_value), jnp.minimum(value, end_value)
            )
        return args.result(value, t)

    return schedule


def step_decay_schedule(init_value: float, decay_rate: float, step_size: int) -> optax.Schedule:
    """``η_t = init_value · decay_rate^floor(t / step_size)``: torch ``StepLR(step_size, gamma)``,
    the classic ``lr · 0.1 ** (epoch // 10)``."""
    args.check_values(init_value=init_value)
    args.check_value("decay_rate", decay_rate, low=0.0, hint="e.g. 0.1 divides the value by 10.")
    step_size = args.check_steps("step_size", step_size, low=1)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        t = args.as_count(count)
        exponent = args.completed_intervals(t, step_size)
        return args.result(init_value * num.as_hyperparameter(decay_rate) ** exponent, t)

    return schedule


def inverse_time_decay_schedule(
    init_value: float, decay_rate: float, decay_steps: int, staircase: bool = False
) -> optax.Schedule:
    """``η_t = init_value / (1 + decay_rate · p)``, ``p = t / decay_steps`` (``floor`` of it if
    ``staircase``): Keras ``InverseTimeDecay``, time-based decay."""
    args.check_values(init_value=init_value)
    args.check_value("decay_rate", decay_rate, low=0.0, hint="0 keeps the value constant.")
    decay_steps = args.check_steps("decay_steps", decay_steps, low=1)
    check_flag("staircase", staircase)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        t = args.as_count(count)
        if staircase:
            progress = args.completed_intervals(t, decay_steps)
        else:
            progress = args.as_float(t) / float(decay_steps)
        return args.result(init_value / (1 + decay_rate * progress), t)

    return schedule


def inverse_sqrt_schedule(peak_value: float, warmup_steps: int) -> optax.Schedule:
    """Linear warmup from 0, then decay as ``1/√t`` (Vaswani et al. 2017):

    t < w:   η_t = peak·t/w          t >= w:   η_t = peak·√(w/t)
    """
    args.check_values(peak_value=peak_value)
    warmup_steps = args.check_steps("warmup_steps", warmup_steps, low=1)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        t = args.as_float(args.as_count(count))
        decayed = peak_value * jnp.sqrt(warmup_steps / jnp.maximum(t, warmup_steps))
        return args.result(jnp.where(t < warmup_steps, peak_value * t / warmup_steps, decayed), t)

    return schedule


def cosine_curve(
    init_value: Any, end_value: Any, exponent: Any, begin: int, steps: int
) -> optax.Schedule:
    """``E + (I - E)·w``, ``w = (½(1 + cos(π·τ/T)))^exponent``, ``τ = min(max(t - B, 0), T)``,
    ``T >= 1``: exactly ``E`` from the end of the phase on."""

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        t = args.as_count(count)
        cosine = 0.5 * (1 + jnp.cos(math.pi * args.fractions(t, begin, steps)[0]))
        return args.result((init_value - end_value) * cosine**exponent + end_value, t)

    return schedule


def cosine_decay_schedule(
    init_value: float, decay_steps: int, alpha: float = 0.0, exponent: float = 1.0
) -> optax.Schedule:
    """``η_t = I·((1 - α)·c^exponent + α)``, ``c = ½(1 + cos(π·min(t, T)/T))``: from ``I`` to
    ``α·I`` over ``T = decay_steps`` (torch ``CosineAnnealingLR`` with ``α = η_min/I``, Keras
    ``CosineDecay``). ``T`` may exceed the int32 range.

    As in optax, ``decay_steps`` must be ``>= 1``. Unlike optax, ``alpha`` must be in [0, 1] and
    ``exponent > 0`` (``exponent < 0`` ends at inf).
    """
    args.check_values(init_value=init_value)
    args.check_fraction("alpha", alpha, hint="It is the final value as a fraction of init_value.")
    args.check_value("exponent", exponent, low=0.0, positive=True, hint="1 is the plain cosine.")
    steps = args.check_steps("decay_steps", decay_steps, low=1)
    return cosine_curve(init_value, alpha * init_value, exponent, 0, steps)
