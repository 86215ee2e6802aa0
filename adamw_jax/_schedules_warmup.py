"""Schedules that warm up linearly and then hold or decay: constant, cosine, exponential,
warmup-stable-decay (trapezoid), and cosine warm restarts (SGDR)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adamw_jax import _schedule_arguments as args
from adamw_jax import _validation as check
from adamw_jax._schedules_decay import exponential_decay, linear_schedule
from adamw_jax._schedules_piecewise import join_schedules

DECAY_SHAPES = ("linear", "cosine", "1-sqrt")


def warmup_constant_schedule(init_value: float, peak_value: float, warmup_steps: int) -> optax.Schedule:
    """Linear from ``init_value`` to ``peak_value`` over ``warmup_steps``, then ``peak_value``."""
    return linear_schedule(init_value, peak_value, warmup_steps)


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

    Keras ``CosineDecay(init, D, alpha, warmup_target=peak, warmup_steps=w)`` is
    ``decay_steps = w + D``, ``end_value = alpha·peak``.
    """
    args.check_values(init_value=init_value, peak_value=peak_value, end_value=end_value, exponent=exponent)
    args.check_steps("warmup_steps", warmup_steps)
    args.check_steps("decay_steps", decay_steps)
    if decay_steps < warmup_steps:
        raise ValueError(
            f"decay_steps ({decay_steps}) counts the warmup and must be >= warmup_steps ({warmup_steps})."
        )
    cosine_steps = max(decay_steps - warmup_steps, 1)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        t = args.as_float(args.as_count(count))
        warm = init_value + (peak_value - init_value) * t / max(warmup_steps, 1)
        progress = args.elapsed(count, warmup_steps, cosine_steps) / cosine_steps
        cosine = (0.5 * (1 + jnp.cos(math.pi * progress))) ** exponent
        decayed = end_value + (peak_value - end_value) * cosine
        return args.result(jnp.where(t < warmup_steps, warm, decayed), count)

    return schedule


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
    decay_rate, transition_begin, staircase, end_value)`` counted from the end of the warmup."""
    return join_schedules(
        [linear_schedule(init_value, peak_value, warmup_steps),
         exponential_decay(peak_value, transition_steps, decay_rate, transition_begin, staircase, end_value)],
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
    args.check_steps("warmup_steps", warmup_steps)
    args.check_steps("stable_steps", stable_steps)
    args.check_steps("decay_steps", decay_steps, positive=True)
    check.check_choice("decay_shape", decay_shape, DECAY_SHAPES)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        t = args.as_float(args.as_count(count))
        warm = init_value + (peak_value - init_value) * t / max(warmup_steps, 1)
        fraction = args.elapsed(count, warmup_steps + stable_steps, decay_steps) / decay_steps
        decayed = end_value + (peak_value - end_value) * _cooldown(decay_shape, fraction)
        return args.result(jnp.where(t < warmup_steps, warm, decayed), count)

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
        boundaries.append((boundaries[-1] if boundaries else 0) + kwargs["decay_steps"])
    return join_schedules([warmup_cosine_decay_schedule(**kwargs) for kwargs in cycles], boundaries[:-1])
