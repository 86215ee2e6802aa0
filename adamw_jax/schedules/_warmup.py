"""Schedules that warm up linearly and then hold or decay: constant, cosine, exponential,
warmup-stable-decay (trapezoid), and cosine warm restarts (SGDR)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adamw_jax import _validation as check
from adamw_jax.schedules import _arguments as args
from adamw_jax.schedules._decay import (
    checked_polynomial,
    cosine_curve,
    exponential_decay,
    polynomial_curve,
)
from adamw_jax.schedules._piecewise import join_schedules

DECAY_SHAPES = ("linear", "cosine", "1-sqrt")


def warmup_constant_schedule(
    init_value: float, peak_value: float, warmup_steps: int
) -> optax.Schedule:
    """Linear from ``init_value`` to ``peak_value`` over ``warmup_steps``, then ``peak_value``:
    ``linear_schedule(init_value, peak_value, warmup_steps)``. As in optax, ``warmup_steps <= 0``
    holds ``init_value`` at every step (a ``UserWarning`` says so when ``peak_value`` differs)."""
    return checked_polynomial(
        "warmup_constant_schedule",
        init_value,
        peak_value,
        1.0,
        warmup_steps,
        0,
        steps_name="warmup_steps",
        end_name="peak_value",
    )


def _check_warmup(warmup_steps: Any) -> int:
    """A warmup length: a whole number of steps ``>= 0`` (0: no warmup)."""
    return args.check_steps("warmup_steps", warmup_steps, low=0)


def warmup_cosine_decay_schedule(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
    exponent: float = 1.0,
) -> optax.Schedule:
    """Linear warmup from ``init_value`` to ``peak_value`` over ``warmup_steps``, then cosine
    decay to ``end_value`` at step ``decay_steps`` (which counts the warmup, as in optax):

        t < w:      η_t = init + (peak - init)·t/w
        w <= t:     η_t = end + (peak - end)·(½(1 + cos(π·min(t - w, T)/T)))^exponent,
                    T = decay_steps - w

    As in optax, ``peak_value = 0`` decays from 0 to 0 whatever ``end_value`` (optax's cosine
    is ``peak·(1 - α)·c + peak·α`` with ``α = end/peak``, set to 0 when ``peak = 0``); a
    ``UserWarning`` says so when ``end_value != 0``. Unlike optax, ``decay_steps = warmup_steps``
    is accepted (``end_value`` right after the warmup), ``exponent`` must be ``> 0``, the counts
    ``>= 0`` and every value finite.

    Keras ``CosineDecay(init, D, alpha, warmup_target=peak, warmup_steps=w)`` is
    ``decay_steps = w + D``, ``end_value = alpha·peak``.
    """
    args.check_values(init_value=init_value)
    peak, end = args.check_value("peak_value", peak_value), args.check_value("end_value", end_value)
    args.check_value("exponent", exponent, low=0.0, positive=True, hint="1 is the plain cosine.")
    warmup_steps = _check_warmup(warmup_steps)
    decay_steps = args.check_steps("decay_steps", decay_steps)
    if decay_steps < warmup_steps:
        raise ValueError(
            f"decay_steps ({decay_steps}) counts the warmup and must be >= warmup_steps ({warmup_steps})."
        )
    if peak == 0 and end not in (0.0, None):
        args.warn(
            f"warmup_cosine_decay_schedule: peak_value=0 decays to 0, not to end_value={end_value!r}, "
            "as in optax (whose cosine is scaled by the peak). Pass a peak_value != 0, or "
            "end_value=0 to silence this warning."
        )
        end_value = 0.0
    return join_schedules(
        [
            polynomial_curve(init_value, peak_value, 1.0, warmup_steps, 0),
            cosine_curve(peak_value, end_value, exponent, 0, max(decay_steps - warmup_steps, 1)),
        ],
        [warmup_steps],
    )


def warmup_exponential_decay_schedule(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> optax.Schedule:
    """Linear warmup to ``peak_value``, then ``exponential_decay(peak_value, transition_steps,
    decay_rate, transition_begin, staircase, end_value)`` counted from the end of the warmup
    (its degenerate cases included: ``transition_steps <= 0`` or ``decay_rate = 0`` hold the
    peak). Unlike optax, ``warmup_steps`` must be ``>= 0``."""
    args.check_values(init_value=init_value, peak_value=peak_value)
    warmup_steps = _check_warmup(warmup_steps)
    return join_schedules(
        [
            polynomial_curve(init_value, peak_value, 1.0, warmup_steps, 0),
            exponential_decay(
                peak_value, transition_steps, decay_rate, transition_begin, staircase, end_value
            ),
        ],
        [warmup_steps],
    )


def _cooldown(decay_shape: str, fraction: jax.Array) -> jax.Array:
    """The share of ``peak - end`` left after ``fraction`` of the cooldown."""
    if decay_shape == "linear":
        return 1 - fraction
    if decay_shape == "cosine":
        return 0.5 * (1 + jnp.cos(math.pi * fraction))
    return 1 - jnp.sqrt(fraction)


def warmup_stable_decay_schedule(
    peak_value: float,
    warmup_steps: int,
    stable_steps: int,
    decay_steps: int,
    *,
    init_value: float = 0.0,
    end_value: float = 0.0,
    decay_shape: str = "linear",
) -> optax.Schedule:
    """Warmup, a long constant stage, then a short cooldown (WSD; Hu et al. 2024, Hägele et al.
    2024). With ``w, s, D`` the three lengths and ``f = min(max(t - w - s, 0), D)/D``:

        t < w:        η_t = init + (peak - init)·t/w
        otherwise:    η_t = end + (peak - end)·c(f)

    ``c(f) = 1 - f`` (``"linear"``), ``½(1 + cos(π·f))`` (``"cosine"``) or ``1 - √f``
    (``"1-sqrt"``, Hägele et al.'s best cooldown).
    """
    args.check_values(peak_value=peak_value, init_value=init_value, end_value=end_value)
    warmup_steps = _check_warmup(warmup_steps)
    stable_steps = args.check_steps("stable_steps", stable_steps)
    decay_steps = args.check_steps("decay_steps", decay_steps, low=1)
    check.check_choice("decay_shape", decay_shape, DECAY_SHAPES)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        t = args.as_count(count)
        warm = init_value + (peak_value - init_value) * args.elapsed(t, 0, warmup_steps) / max(
            warmup_steps, 1
        )
        fraction = args.fractions(t, warmup_steps + stable_steps, decay_steps)[0]
        decayed = end_value + (peak_value - end_value) * _cooldown(decay_shape, fraction)
        return args.result(jnp.where(args.before(t, warmup_steps), warm, decayed), t)

    return schedule


def sgdr_schedule(cosine_kwargs: Iterable[dict[str, Any]]) -> optax.Schedule:
    """SGD with warm restarts (Loshchilov & Hutter 2017): one ``warmup_cosine_decay_schedule``
    per dict of ``cosine_kwargs``, each restarted when the previous one's ``decay_steps`` end.

    torch ``CosineAnnealingWarmRestarts(T_0, T_mult, eta_min)`` is the cycles
    ``dict(init_value=lr, peak_value=lr, warmup_steps=0, decay_steps=T_0·T_mult^i, end_value=eta_min)``.
    """
    cycles = list(cosine_kwargs)
    if not cycles:
        raise ValueError("sgdr_schedule needs at least one cycle in cosine_kwargs.")
    boundaries = []
    for index, kwargs in enumerate(cycles):
        if not isinstance(kwargs, dict) or "decay_steps" not in kwargs:
            raise ValueError(
                f"cosine_kwargs[{index}] must be a dict of warmup_cosine_decay_schedule arguments "
                f"with decay_steps (the cycle length), got {kwargs!r}."
            )
        length = args.check_steps(f"cosine_kwargs[{index}]['decay_steps']", kwargs["decay_steps"])
        boundaries.append((boundaries[-1] if boundaries else 0) + length)
    return join_schedules(
        [warmup_cosine_decay_schedule(**kwargs) for kwargs in cycles], boundaries[:-1]
    )
