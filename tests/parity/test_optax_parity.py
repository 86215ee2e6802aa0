"""Parity with optax.adamw / optax.adam / optax.nadamw on the options optax shares.

Both implementations are float32; they differ only in how 1 - β and 1 - β^t are rounded (optax
forms them in float32), so each sits within the float32 tolerance of the float64 reference and
the two within twice that of each other.
"""

from __future__ import annotations

import optax
import pytest
from helpers import float32_tolerance, gradient_stream, make_params, max_abs_error, trajectory
from reference import adamw_trajectory

import adamw_jax as aw

STEPS = 300
PARAMS = make_params(7)
GRADS = gradient_stream(PARAMS, STEPS, seed=8)
MASK = {"w": True, "b": False, "scalar": False, "conv": True}
SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, 3e-3, 30, STEPS, 1e-5)

CASES = {
    "adamw": (
        dict(learning_rate=1e-3, weight_decay=0.05),
        lambda: optax.adamw(1e-3, weight_decay=0.05),
    ),
    "adamw_schedule_mask": (
        dict(learning_rate=SCHEDULE, weight_decay=0.1, mask=MASK),
        lambda: optax.adamw(SCHEDULE, weight_decay=0.1, mask=MASK),
    ),
    "adamw_eps_root": (
        dict(learning_rate=1e-3, eps_root=1e-10, b1=0.8, b2=0.99, weight_decay=0.0),
        lambda: optax.adamw(1e-3, b1=0.8, b2=0.99, eps_root=1e-10, weight_decay=0.0),
    ),
    "nadamw": (
        dict(learning_rate=2e-3, nesterov=True, weight_decay=0.02),
        lambda: optax.nadamw(2e-3, weight_decay=0.02),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_adamw_matches_optax(name):
    ours_kwargs, theirs = CASES[name]
    reference_kwargs = dict(ours_kwargs)
    if callable(reference_kwargs["learning_rate"]):
        schedule = reference_kwargs["learning_rate"]
        reference_kwargs["learning_rate"] = lambda t: float(schedule(t))
    if "mask" in reference_kwargs:
        reference_kwargs["decay_mask"] = reference_kwargs.pop("mask")
    expected = adamw_trajectory(PARAMS, GRADS, **reference_kwargs)
    ours = trajectory(aw.adamw(**ours_kwargs), PARAMS, GRADS)
    optax_run = trajectory(theirs(), PARAMS, GRADS)
    tolerance = float32_tolerance(expected)
    assert max_abs_error(ours, expected) <= tolerance
    assert max_abs_error(optax_run, expected) <= tolerance
    assert max_abs_error(ours, optax_run) <= 2 * tolerance


@pytest.mark.parametrize("nesterov", [False, True])
def test_adam_matches_optax(nesterov):
    theirs = optax.nadam(1e-3) if nesterov else optax.adam(1e-3)
    ours = trajectory(aw.adam(1e-3, nesterov=nesterov), PARAMS, GRADS)
    expected = adamw_trajectory(PARAMS, GRADS, learning_rate=1e-3, nesterov=nesterov)
    assert max_abs_error(ours, trajectory(theirs, PARAMS, GRADS)) <= 2 * float32_tolerance(expected)
