"""Schedules made of pieces: joined schedules, piecewise constant and piecewise interpolated
values, and the one-cycle policy (Smith & Topin 2017) built from them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from adamw_jax import _validation as check
from adamw_jax.schedules import _arguments as args

INTERPOLATE_TYPES = ("linear", "cosine")


def join_schedules(
    schedules: Sequence[optax.Schedule], boundaries: Sequence[int]
) -> optax.Schedule:
    """Run ``schedules[0]`` until ``boundaries[0]``, then ``schedules[1]`` restarted at 0, and
    so on: ``η_t = schedules[i](t - boundaries[i-1])`` for ``boundaries[i-1] <= t < boundaries[i]``.

    A negative step is step 0 (so ``boundaries[0] = 0`` never runs ``schedules[0]``; optax runs
    it at negative steps). Unlike optax, which zips the two lists, there must be exactly one
    boundary fewer than schedules, and the boundaries must be non-decreasing steps ``>= 0``.
    """
    schedules, boundaries = list(schedules), list(boundaries)
    for index, piece in enumerate(schedules):
        if not callable(piece):
            raise TypeError(
                f"schedules[{index}] must be a schedule (a function of the step), got {piece!r}."
            )
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(
            f"join_schedules needs one boundary fewer than schedules: got {len(schedules)} schedules "
            f"and boundaries={boundaries!r}."
        )
    boundaries = [
        args.check_steps(f"boundaries[{index}]", boundary)
        for index, boundary in enumerate(boundaries)
    ]
    if boundaries != sorted(boundaries):
        raise ValueError(f"boundaries must be non-decreasing, got {boundaries!r}.")

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        t = args.as_count(count)
        value = args.result(schedules[0](t), t)
        for boundary, later in zip(boundaries, schedules[1:]):
            if not args.reaches(t, boundary):
                break
            value = jnp.where(
                args.before(t, boundary), value, args.result(later(args.shifted(t, boundary)), t)
            )
        return value

    return schedule


def _sorted_boundaries(
    boundaries_and_scales: Mapping[int, float] | None,
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The boundaries (whole steps ``>= 0``) in order, and their scales (finite, ``>= 0``)."""
    if boundaries_and_scales is None:
        return (), ()
    if not isinstance(boundaries_and_scales, Mapping):
        raise TypeError(
            "boundaries_and_scales must be a dict {step: scale}, e.g. {100: 0.1, 200: 0.1}, got "
            f"{boundaries_and_scales!r}."
        )
    items = []
    for step, scale in boundaries_and_scales.items():
        boundary = args.check_steps(f"boundaries_and_scales key {step!r}", step)
        args.check_value(
            f"boundaries_and_scales[{step!r}]",
            scale,
            low=0.0,
            hint="Scales multiply the value and must be finite and >= 0.",
        )
        items.append((boundary, scale))
    items.sort(key=lambda item: item[0])
    return tuple(step for step, _ in items), tuple(scale for _, scale in items)


def piecewise_constant_schedule(
    init_value: float, boundaries_and_scales: Mapping[int, float] | None = None
) -> optax.Schedule:
    """``η_t = init_value · ∏ {scale_b : b <= t}``: the value is multiplied by ``scale_b`` from
    step ``b`` on (torch ``MultiStepLR(milestones, gamma)`` is ``{m: gamma for m in milestones}``).

    Boundaries may lie beyond the int32 range (never reached by int32 counts). Unlike optax, they
    must be whole steps ``>= 0`` and the scales finite (optax gives NaN before an inf scale).
    """
    args.check_values(init_value=init_value)
    boundaries, scales = _sorted_boundaries(boundaries_and_scales)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        t = args.as_count(count)
        value = args.result(init_value, t)
        for boundary, scale in zip(boundaries, scales):
            if not args.reaches(t, boundary):
                break
            value = jnp.where(args.before(t, boundary), value, value * scale)
        return value

    return schedule


def _interpolate(interpolate_type: str, start: float, end: float, fraction: jax.Array) -> jax.Array:
    if interpolate_type == "linear":
        return start + (end - start) * fraction
    return end + (start - end) * 0.5 * (1 + jnp.cos(math.pi * fraction))


def piecewise_interpolate_schedule(
    interpolate_type: str,
    init_value: float,
    boundaries_and_scales: Mapping[int, float] | None = None,
) -> optax.Schedule:
    """Interpolated (``"linear"`` or ``"cosine"``) between the values ``v_0 = init_value``,
    ``v_i = v_{i-1}·scale_i`` placed at step 0 and at each boundary ``b_i``; ``v_last`` after
    the last boundary. Cosine: ``v_i + (v_{i-1} - v_i)·½(1 + cos(π·f))``, ``f`` the fraction of
    the segment done.

    Unlike optax, which gives 0 at a negative step, a negative step has the step-0 value; the
    boundaries must be whole steps ``>= 0`` and the scales finite and ``>= 0``.
    """
    check.check_choice("interpolate_type", interpolate_type, INTERPOLATE_TYPES)
    args.check_values(init_value=init_value)
    boundaries, scales = _sorted_boundaries(boundaries_and_scales)
    values = [init_value]
    for scale in scales:
        values.append(values[-1] * scale)
    starts = (0,) + boundaries

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        t = args.as_count(count)
        value = args.result(values[-1], t)
        for i in reversed(range(len(boundaries))):
            if not args.reaches(t, starts[i]):
                continue
            length = max(starts[i + 1] - starts[i], 1)
            fraction = args.elapsed(t, starts[i], length) / float(length)
            inside = _interpolate(interpolate_type, values[i], values[i + 1], fraction)
            value = jnp.where(args.before(t, starts[i + 1]), args.result(inside, t), value)
        return value

    return schedule


def _check_onecycle(
    transition_steps: int,
    peak_value: float,
    pct_start: float,
    div_factor: float,
    final_div_factor: float,
) -> int:
    """The arguments both one-cycle schedules share; returns ``transition_steps`` as an int."""
    steps = args.check_steps("transition_steps", transition_steps, low=1)
    args.check_values(peak_value=peak_value)
    args.check_fraction(
        "pct_start", pct_start, hint="It is the fraction of the steps spent warming up."
    )
    args.check_value(
        "div_factor",
        div_factor,
        low=0.0,
        positive=True,
        hint="The schedule starts at peak_value / div_factor.",
    )
    args.check_value(
        "final_div_factor",
        final_div_factor,
        low=0.0,
        positive=True,
        hint="The schedule ends at peak_value / (div_factor · final_div_factor).",
    )
    return steps


def linear_onecycle_schedule(
    transition_steps: int,
    peak_value: float,
    pct_start: float = 0.3,
    pct_final: float = 0.85,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> optax.Schedule:
    """Three linear phases: ``peak/div`` up to ``peak`` at step ``⌊pct_start·T⌋``, back down to
    ``peak/div`` at ``⌊pct_final·T⌋``, then to ``peak/(div·final_div)`` at ``T``: optax's
    ``piecewise_interpolate_schedule("linear", peak/div, {⌊pct_start·T⌋: div,
    ⌊pct_final·T⌋: 1/div, T: 1/final_div})``, whose later entries replace earlier ones at the
    same step (short schedules), as in optax.

    Unlike optax, ``pct_start <= pct_final`` must be fractions in [0, 1] and the factors finite
    and ``> 0``. torch ``OneCycleLR(anneal_strategy="linear", three_phase=True,
    total_steps=T + 1)`` when ``pct_start·(T + 1)`` is a whole number and
    ``⌊pct_final·T⌋ = 2·pct_start·(T + 1) - 2``.
    """
    steps = _check_onecycle(transition_steps, peak_value, pct_start, div_factor, final_div_factor)
    args.check_fraction(
        "pct_final",
        pct_final,
        hint="It is the fraction of the steps at which the value is "
        "back at peak_value / div_factor.",
    )
    if pct_final < pct_start:
        raise ValueError(
            f"pct_final ({pct_final}) must be >= pct_start ({pct_start}): the value goes up "
            "until pct_start, then down until pct_final."
        )
    return piecewise_interpolate_schedule(
        "linear",
        peak_value / div_factor,
        {
            int(pct_start * steps): div_factor,
            int(pct_final * steps): 1.0 / div_factor,
            steps: 1.0 / final_div_factor,
        },
    )


def cosine_onecycle_schedule(
    transition_steps: int,
    peak_value: float,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> optax.Schedule:
    """Cosine from ``peak/div`` up to ``peak`` at step ``⌊pct_start·T⌋``, then cosine down to
    ``peak/(div·final_div)`` at ``T``: optax's ``piecewise_interpolate_schedule("cosine",
    peak/div, {⌊pct_start·T⌋: div, T: 1/(div·final_div)})`` (the second entry replaces the first
    when ``⌊pct_start·T⌋ = T``, as in optax).

    Unlike optax, ``pct_start`` must be in [0, 1] and the factors finite and ``> 0``. torch
    ``OneCycleLR(total_steps=T + 1)`` (its default ``anneal_strategy="cos"``) when
    ``pct_start·(T + 1)`` is a whole number.
    """
    steps = _check_onecycle(transition_steps, peak_value, pct_start, div_factor, final_div_factor)
    return piecewise_interpolate_schedule(
        "cosine",
        peak_value / div_factor,
        {
            int(pct_start * steps): div_factor,
            steps: 1.0 / (div_factor * final_div_factor),
        },
    )
