"""``weight_decay_mode="corrected"`` (AdamC, Defazio 2025: decay ``λ·η_t²/η_peak``) against the
live timm ``AdamWLegacy(corrected_weight_decay=True)`` (its ``max_lr`` is the constructor lr)
run in float64 under a warmup-cosine schedule, over 200 steps; alone, with C-AdamW, and fused.

Tolerance: ``helpers.float32_tolerance`` (4·√N ulps of the largest |θ|), the one plain AdamW
meets against torch: the decay coefficient ``λ·η_t/η_peak`` is one float32 product more.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import float32_tolerance, max_abs_error, trajectory

import adamw_jax as aw
from parity.test_torch_parity import GRADS, LR, PARAMS, lr_factor
from parity.variant_references import timm_optim, torch_run

WEIGHT_DECAY = 0.5  # large, so that the λ·η_t²/η_peak vs λ·η_t difference is far above rounding


def schedule(step):
    return LR * lr_factor(step)


def _timm(scheduled: bool, **options) -> list[dict]:
    legacy = timm_optim("adamw").AdamWLegacy
    return torch_run(
        lambda ts: legacy(
            ts,
            lr=LR,
            weight_decay=WEIGHT_DECAY,
            foreach=False,
            corrected_weight_decay=True,
            **options,
        ),
        scheduled=scheduled,
    )


@pytest.mark.parametrize("variant", [{}, dict(cautious=True), dict(fused=True)])
def test_corrected_decay_matches_timm(variant):
    expected = _timm(True, caution=variant.get("cautious", False))
    actual = trajectory(
        aw.adamw(
            schedule,
            weight_decay=WEIGHT_DECAY,
            weight_decay_mode="corrected",
            peak_learning_rate=LR,
            **variant,
        ),
        PARAMS,
        GRADS,
    )
    error, tolerance = max_abs_error(actual, expected), float32_tolerance(expected)
    assert error <= tolerance, (error, tolerance)
    coupled = trajectory(aw.adamw(schedule, weight_decay=WEIGHT_DECAY, **variant), PARAMS, GRADS)
    assert max_abs_error(coupled, expected) > 100 * tolerance


def test_constant_rate_is_coupled_decay():
    """With a float learning rate ``η_t = η_peak``: ``λ·η²/η = λ·η``, torch's coupled decay."""
    expected = _timm(False)
    corrected = trajectory(
        aw.adamw(LR, weight_decay=WEIGHT_DECAY, weight_decay_mode="corrected"), PARAMS, GRADS
    )
    coupled = trajectory(aw.adamw(LR, weight_decay=WEIGHT_DECAY), PARAMS, GRADS)
    assert max_abs_error(corrected, expected) <= float32_tolerance(expected)
    np.testing.assert_array_equal(corrected[-1]["w"], coupled[-1]["w"])


def test_a_weight_decay_schedule_and_mask():
    """``λ_t`` may be a schedule, and the mask keeps the other leaves plain Adam."""
    mask = {k: k == "w" for k in PARAMS}
    ours = trajectory(
        aw.adamw(
            schedule,
            weight_decay=lambda step: WEIGHT_DECAY * lr_factor(step),
            weight_decay_mode="corrected",
            peak_learning_rate=LR,
            mask=mask,
        ),
        PARAMS,
        GRADS[:50],
    )
    adam = trajectory(aw.adam(schedule), PARAMS, GRADS[:50])
    np.testing.assert_array_equal(ours[-1]["b"], adam[-1]["b"])
    theta, m, v, history = dict(PARAMS)["w"].copy(), 0.0, 0.0, []
    for t, grads in enumerate(GRADS[:50], start=1):
        eta, factor = LR * float(lr_factor(t - 1)), float(lr_factor(t - 1))
        m = 0.9 * m + 0.1 * grads["w"]
        v = 0.999 * v + 0.001 * grads["w"] ** 2
        u = m / (1 - 0.9**t) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        theta = theta - eta * u - WEIGHT_DECAY * factor * eta**2 / LR * theta
        history.append({"w": theta})
    assert max_abs_error([{"w": h["w"]} for h in ours], history) <= float32_tolerance(history)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="peak_learning_rate"):
        aw.adamw(schedule, weight_decay_mode="corrected")
    with pytest.raises(ValueError, match="peak_learning_rate"):
        aw.adamw(LR, weight_decay_mode="corrected", peak_learning_rate=0.0)
    with pytest.raises(ValueError, match="weight_decay"):
        aw.adamw(LR, weight_decay=-1.0, weight_decay_mode="corrected")
    with pytest.raises(ValueError, match="weight_decay_mode"):
        aw.adamw(LR, weight_decay_mode="correct")
