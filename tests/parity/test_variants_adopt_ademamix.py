"""``aw.adopt`` against timm's ``Adopt`` (torch, float64) and ``optax.contrib.adopt`` (JAX under
x64); ``aw.ademamix`` against ``optax.contrib.ademamix`` (x64) and a float64 transcription of
Pagliardini et al. (2024), Algorithm 1; 200 steps of ``test_torch_parity``'s gradient stream.

Tolerance: ``helpers.float32_tolerance`` (4·√N ulps of the largest |θ|), the one plain AdamW
meets against torch: both directions are ratios of moments like Adam's, ADOPT's clip is
continuous, and nothing else is rounded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import float32_tolerance, max_abs_error, trajectory

import adamw_jax as aw
from parity.test_torch_parity import GRADS, LR, PARAMS, lr_factor
from parity.variant_references import timm_optim, torch_run


def schedule(step):
    return LR * lr_factor(step)


def _x64(build) -> list[dict]:
    """``build()``'s float64 trajectory, with JAX in x64 (the reference run of optax)."""
    with jax.enable_x64(True):
        return trajectory(build(), PARAMS, GRADS, dtype=jnp.float64)


def _check(actual: list[dict], expected: list[dict]) -> None:
    error, tolerance = max_abs_error(actual, expected), float32_tolerance(expected)
    assert error <= tolerance, (error, tolerance)


@pytest.mark.parametrize("scheduled", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adopt_matches_timm(weight_decay, scheduled):
    """timm's ``clip_exp`` is the exponent of ``clip_value_fn``; ``decoupled=True`` is the
    coupled decay here, skipped at the first step as timm."""
    adopt = timm_optim("adopt").Adopt
    expected = torch_run(
        lambda ts: adopt(
            ts, lr=LR, clip_exp=0.333, weight_decay=weight_decay, decoupled=True, foreach=False
        ),
        scheduled=scheduled,
    )
    actual = trajectory(
        aw.adopt(
            schedule if scheduled else LR,
            weight_decay=weight_decay,
            clip_value_fn=lambda k: k**0.333,
        ),
        PARAMS,
        GRADS,
    )
    _check(actual, expected)


@pytest.mark.parametrize(
    "options", [{}, dict(nesterov=True), dict(use_clipping=False), dict(b1=0.5, b2=0.99, eps=1e-4)]
)
def test_adopt_matches_optax_contrib(options):
    expected = _x64(lambda: optax.contrib.adopt(schedule, **options))
    _check(trajectory(aw.adopt(schedule, **options), PARAMS, GRADS), expected)


def test_adopt_mask_and_low_precision_moment():
    mask = {k: k == "w" for k in PARAMS}
    ours = trajectory(aw.adopt(LR, weight_decay=0.1, mask=mask), PARAMS, GRADS[:30])
    plain = trajectory(aw.adopt(LR), PARAMS, GRADS[:30])
    np.testing.assert_array_equal(ours[-1]["b"], plain[-1]["b"])
    assert not np.array_equal(ours[-1]["w"], plain[-1]["w"])
    low = trajectory(aw.adopt(LR, mu_dtype=jnp.bfloat16), PARAMS, GRADS[:30])
    assert max_abs_error(low, plain) < 30 * LR * 2**-7  # bfloat16 m: 2^-8 relative per step


B3 = optax.linear_schedule(0.9, 0.999, 100)  # a β3 warm-up, as the paper's T_α,β3
ALPHA = optax.linear_schedule(0.0, 5.0, 100)  # an α warm-up


@pytest.mark.parametrize(
    "options",
    [
        {},
        dict(weight_decay=0.1, mask={"w": True, "b": False, "scalar": True, "conv": False}),
        dict(b3=B3, alpha=ALPHA),
        dict(b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-12),
    ],
)
def test_ademamix_matches_optax_contrib(options):
    expected = _x64(lambda: optax.contrib.ademamix(schedule, **options))
    _check(trajectory(aw.ademamix(schedule, **options), PARAMS, GRADS), expected)


def test_ademamix_matches_the_paper():
    """Algorithm 1 in float64, with schedules for β3 and α and decay ``λ``."""
    b1, b2, eps, weight_decay = 0.9, 0.999, 1e-8, 0.05
    theta = {k: np.array(v, np.float64) for k, v in PARAMS.items()}
    m1, m2, nu = ({k: np.zeros_like(v) for k, v in theta.items()} for _ in range(3))
    expected = []
    for t, grads in enumerate(GRADS, start=1):
        b3, alpha, eta = float(B3(t - 1)), float(ALPHA(t - 1)), LR * float(lr_factor(t - 1))
        for k, g in grads.items():
            m1[k] = b1 * m1[k] + (1 - b1) * g
            m2[k] = b3 * m2[k] + (1 - b3) * g
            nu[k] = b2 * nu[k] + (1 - b2) * g * g
            direction = (m1[k] / (1 - b1**t) + alpha * m2[k]) / (np.sqrt(nu[k] / (1 - b2**t)) + eps)
            theta[k] = theta[k] - eta * (direction + weight_decay * theta[k])
        expected.append({k: x.copy() for k, x in theta.items()})
    actual = trajectory(
        aw.ademamix(schedule, b3=B3, alpha=ALPHA, weight_decay=weight_decay), PARAMS, GRADS
    )
    _check(actual, expected)


def test_arguments_are_checked():
    for build, name, bad in (
        (aw.adopt, "b2", 1.0),
        (aw.adopt, "eps", -1.0),
        (aw.ademamix, "b3", 1.0),
        (aw.ademamix, "alpha", float("inf")),
        (aw.adopt, "learning_rate", -1.0),
        (aw.ademamix, "weight_decay", -0.1),
    ):
        with pytest.raises(ValueError, match=name):
            build(**{"learning_rate": LR, name: bad})
    with pytest.raises(TypeError, match="nesterov"):
        aw.adopt(LR, nesterov="yes")
    with pytest.raises(TypeError, match="clip_value_fn"):
        aw.adopt(LR, clip_value_fn=0.25)


def test_ademamix_warmup_schedules_are_the_papers():
    """``α_t = α·min(t/T, 1)`` and ``β3_t = exp(ln β1·ln β3 / ((1-t/T)·ln β3 + (t/T)·ln β1))``
    (t/T capped at 1) at ``t = count + 1``, in float64, to float32 rounding; β3 rises
    monotonically from near β1 and its half-life ``ln ½/ln β3`` is linear in t."""
    alpha = aw.ademamix_alpha_schedule(8.0, 50)
    b3 = aw.ademamix_b3_schedule(0.9999, 50, b3_start=0.9)
    counts = np.arange(80)
    fraction = np.minimum((counts + 1) / 50, 1.0)
    np.testing.assert_allclose(jax.vmap(alpha)(counts), 8.0 * fraction, rtol=1e-6)
    expected = np.exp(
        np.log(0.9) * np.log(0.9999) / ((1 - fraction) * np.log(0.9999) + fraction * np.log(0.9))
    )
    ours = np.asarray(jax.vmap(b3)(counts), np.float64)
    np.testing.assert_allclose(1 - ours, 1 - expected, rtol=2e-3)  # 1-β3 to float32's 1e-7/1e-4
    half_lives = np.log(0.5) / np.log(expected)
    np.testing.assert_allclose(np.diff(half_lives[:50]), np.diff(half_lives[:50])[0], rtol=1e-6)
    assert np.all(np.diff(ours) >= 0) and ours[-1] == np.float32(0.9999)
    with pytest.raises(ValueError, match="b3"):
        aw.ademamix_b3_schedule(1.0, 10)
    with pytest.raises(TypeError, match="warmup_steps"):
        aw.ademamix_alpha_schedule(5.0, 2.5)
    trajectory(aw.ademamix(LR, b3=b3, alpha=alpha), PARAMS, GRADS[:5])
