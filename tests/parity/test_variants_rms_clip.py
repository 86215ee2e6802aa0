"""StableAdamW update clipping (``rms_clip_threshold``) and ``presets.optimi_stable_adamw``
against the live ``optimi.StableAdamW`` run in float64, and a threshold other than optimi's 1
against a float64 transcription of Wortsman et al. (2023), Algorithm 2, over 200 steps.

Tolerance: ``helpers.float32_tolerance`` (4·√N ulps of the largest |θ|), the bound plain AdamW
meets against torch. The clip factor ``1/max(1, RMS)`` is continuous in the moments, so the
float32 run's relative error in it (a few ulps) adds a few ulps to each step of size ~η, far
below the per-step rounding of θ; optimi's debiased betas give m̂ and v̂ with the same values in
exact arithmetic as ``m/(1-β1^t)``, ``v/(1-β2^t)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optimi
import pytest
from helpers import float32_tolerance, max_abs_error, trajectory
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import adamw_jax as aw
from parity.test_torch_parity import GRADS, LR, PARAMS, lr_factor
from parity.variant_references import torch_run

OPTIONS = {
    "defaults": {},
    "decay": dict(weight_decay=0.1, betas=(0.8, 0.95), eps=1e-8),
    "decouple_lr": dict(weight_decay=5e-4, decouple_lr=True),
}


def _optimi(options: dict, scheduled: bool) -> list[dict]:
    return torch_run(
        lambda ts: optimi.StableAdamW(ts, lr=LR, foreach=False, triton=False, **options),
        scheduled=scheduled,
    )


def _schedule(scheduled: bool):
    return (lambda step: LR * lr_factor(step)) if scheduled else LR


@pytest.mark.parametrize("scheduled", [False, True])
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_preset_matches_optimi_stable_adamw(option, scheduled):
    options = dict(OPTIONS[option])
    expected = _optimi(options, scheduled)
    if scheduled and options.get("decouple_lr"):
        options["max_lr"] = LR  # optimi takes the constructor lr; a schedule needs it named
    actual = trajectory(
        aw.presets.optimi_stable_adamw(_schedule(scheduled), **options), PARAMS, GRADS
    )
    error, tolerance = max_abs_error(actual, expected), float32_tolerance(expected)
    assert error <= tolerance, (error, tolerance)
    # the clipping is active on this stream (gradient scale jumps by up to four decades)
    unclipped = dict(options, betas=options.get("betas", (0.9, 0.99)))
    plain = trajectory(
        aw.adamw(
            _schedule(scheduled),
            *unclipped["betas"],
            unclipped.get("eps", 1e-6),
            weight_decay=unclipped.get("weight_decay", 1e-2),
            weight_decay_mode="decoupled" if options.get("decouple_lr") else "coupled",
            peak_learning_rate=options.get("max_lr"),
        ),
        PARAMS,
        GRADS,
    )
    assert max_abs_error(plain, expected) > 100 * tolerance


def _stable_adamw_reference(threshold, b1, b2, eps, weight_decay, steps):
    """Wortsman et al. (2023), Algorithm 2 (StableAdamW) in float64, with the RMS compared to
    ``threshold``: ``η'_t = η / max(1, RMS_t/threshold)``, ``RMS_t = sqrt(mean(g²/max(v̂, ε²)))``,
    ``θ ← θ - η'_t·λ·θ - η'_t·m̂/(sqrt(v̂) + ε)``."""
    theta = {k: np.array(v, np.float64) for k, v in PARAMS.items()}
    m = {k: np.zeros_like(v) for k, v in theta.items()}
    v = {k: np.zeros_like(x) for k, x in theta.items()}
    history = []
    for t, grads in enumerate(GRADS[:steps], start=1):
        for k, g in grads.items():
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            m_hat, v_hat = m[k] / (1 - b1**t), v[k] / (1 - b2**t)
            rms = np.sqrt(np.mean(g * g / np.maximum(v_hat, eps * eps)))
            eta = LR / max(1.0, rms / threshold)
            theta[k] = (
                theta[k] - eta * weight_decay * theta[k] - eta * m_hat / (np.sqrt(v_hat) + eps)
            )
        history.append({k: x.copy() for k, x in theta.items()})
    return history


@pytest.mark.parametrize("threshold", [0.5, 2.0])
def test_threshold_matches_the_paper(threshold):
    expected = _stable_adamw_reference(threshold, 0.9, 0.999, 1e-8, 0.05, len(GRADS))
    actual = trajectory(
        aw.adamw(LR, weight_decay=0.05, rms_clip_threshold=threshold), PARAMS, GRADS
    )
    error, tolerance = max_abs_error(actual, expected), float32_tolerance(expected)
    assert error <= tolerance, (error, tolerance)


def test_adam_low_precision_moments_and_a_mask_run():
    """``adam`` takes the option too; bfloat16 moments and a decay mask keep it finite and the
    clip bounded: every tensor's step RMS is at most η·RMS(m̂/√v̂)."""
    params = {k: jnp.asarray(v, jnp.float32) for k, v in PARAMS.items()}
    for optimizer in (
        aw.adam(LR, rms_clip_threshold=1.0, mu_dtype=jnp.bfloat16),
        aw.adamw(
            LR,
            rms_clip_threshold=1.0,
            nu_dtype=jnp.bfloat16,
            mask={k: k == "w" for k in PARAMS},
            amsgrad=True,
        ),
    ):
        state = optimizer.init(params)
        update = jax.jit(optimizer.update)
        for grads in GRADS[:30]:
            updates, state = update(
                {k: jnp.asarray(g, jnp.float32) for k, g in grads.items()}, state, params
            )
            params = aw.apply_updates(params, updates)
        assert all(np.isfinite(np.asarray(p)).all() for p in params.values())


def test_arguments_are_checked():
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="rms_clip_threshold"):
            aw.adamw(LR, rms_clip_threshold=bad)
    with pytest.raises(TypeError, match="rms_clip_threshold"):
        aw.adamw(LR, rms_clip_threshold="1")
    with pytest.raises(ValueError, match="fused=True does not implement rms_clip_threshold"):
        aw.adamw(LR, rms_clip_threshold=1.0, fused=True)
    with pytest.raises(TypeError, match="decouple_lr"):
        aw.presets.optimi_stable_adamw(LR, decouple_lr="yes")
    with pytest.raises(ValueError, match="max_lr"):
        aw.presets.optimi_stable_adamw(LR, max_lr=LR)


@given(st.integers(1, 20), st.integers(1, 3), st.floats(0.1, 10.0), st.data())
def test_clip_factor_is_the_formula(size, steps, threshold, data):
    """Each step of ``clip_by_update_rms(adam)`` is adam's times ``1/max(1, RMS/threshold)``,
    ``RMS = sqrt(mean(g²/max(v̂, eps²)))`` from the state's ``v``, for any gradients (zeros and
    sign flips included); the factor is in (0, 1]."""
    inner = aw.adam(LR)
    clipped = aw.clip_by_update_rms(inner, threshold, b2=0.999, eps=1e-8)
    params = jnp.zeros(size)
    s_inner, s_clipped = inner.init(params), clipped.init(params)
    for t in range(1, steps + 1):
        g = data.draw(hnp.arrays(np.float32, size, elements=st.floats(-100, 100, width=32)))
        u, s_inner = jax.jit(inner.update)(jnp.asarray(g), s_inner)
        c, s_clipped = jax.jit(clipped.update)(jnp.asarray(g), s_clipped)
        nu = np.asarray(s_inner[0].nu, np.float64)  # the chain's scale_by_adam state
        v_hat = nu / (1 - 0.999**t)
        rms = np.sqrt(np.mean(g.astype(np.float64) ** 2 / np.maximum(v_hat, 1e-16)))
        factor = 1 / max(1.0, rms / threshold)
        np.testing.assert_allclose(c, np.asarray(u) * factor, rtol=2e-6, atol=1e-30)
