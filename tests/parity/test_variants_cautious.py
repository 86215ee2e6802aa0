"""C-AdamW (``cautious=True``) against timm's ``AdamWLegacy(caution=True)`` and cautious weight
decay (``cautious_weight_decay=True``) against a float64 transcription of Chen et al. (2025),
step by step over 200 steps of ``test_torch_parity``'s gradient stream.

The reference runs in float64 and adamw_jax in float32; the tolerance is
``helpers.float32_tolerance``, the one plain AdamW meets against torch (4·√N ulps of the largest
|θ|): the mask and the decay indicator are decided on quantities (``u·g``, ``u·θ``) that are
never within float32 rounding of 0 on this stream except at exact zeros of ``g`` (10% of the
entries), where both runs agree exactly, so the float32 run makes the same decisions as the
float64 one and only the ordinary AdamW rounding remains.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import float32_tolerance, max_abs_error, trajectory
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import adamw_jax as aw
from parity.test_torch_parity import GRADS, LR, PARAMS, lr_factor
from parity.variant_references import timm_optim, torch_run

OPTIONS = {
    "defaults": dict(weight_decay=1e-2),
    "amsgrad_maximize": dict(weight_decay=0.1, amsgrad=True, maximize=True),
    "betas": dict(betas=(0.5, 0.95), eps=1e-6, weight_decay=0.05),
}


def _timm_caution(options: dict, scheduled: bool) -> list[dict]:
    legacy = timm_optim("adamw").AdamWLegacy
    return torch_run(
        lambda ts: legacy(ts, lr=LR, caution=True, foreach=False, **options), scheduled=scheduled
    )


def _ours(options: dict, scheduled: bool, **variant) -> list[dict]:
    options = dict(options)
    b1, b2 = options.pop("betas", (0.9, 0.999))
    lr = (lambda step: LR * lr_factor(step)) if scheduled else LR
    return trajectory(
        aw.adamw(lr, b1, b2, options.pop("eps", 1e-8), **options, **variant), PARAMS, GRADS
    )


@pytest.mark.parametrize("scheduled", [False, True])
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_cautious_matches_timm_caution(option, scheduled):
    expected = _timm_caution(OPTIONS[option], scheduled)
    actual = _ours(OPTIONS[option], scheduled, cautious=True)
    error, tolerance = max_abs_error(actual, expected), float32_tolerance(expected)
    assert error <= tolerance, (error, tolerance)
    # The mask matters on this stream: plain AdamW is far from C-AdamW.
    assert max_abs_error(_ours(OPTIONS[option], scheduled), expected) > 100 * tolerance


def _cautious_weight_decay_reference(lr, b1, b2, eps, weight_decay, steps, mode):
    """Chen et al. (2025), Algorithm 1 (AdamW with cautious weight decay) in float64:
    ``θ ← θ - η_t·(u_t + λ·1[u_t ⊙ θ > 0] ⊙ θ)`` with ``u_t = m̂/(√v̂ + ε)``; in ``"decoupled"``
    mode ``θ ← θ - η_t·u_t - (η_t/η)·λ·1[u_t ⊙ θ > 0] ⊙ θ``."""
    theta = {k: np.array(v, np.float64) for k, v in PARAMS.items()}
    m = {k: np.zeros_like(v) for k, v in theta.items()}
    v = {k: np.zeros_like(x) for k, x in theta.items()}
    history = []
    for t, grads in enumerate(GRADS[:steps], start=1):
        eta = lr(t - 1)
        for k, g in grads.items():
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            u = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            decay = weight_decay * np.where(u * theta[k] > 0, theta[k], 0.0)
            scale = eta if mode == "coupled" else eta / LR
            theta[k] = theta[k] - eta * u - scale * decay
        history.append({k: x.copy() for k, x in theta.items()})
    return history


@pytest.mark.parametrize("mode", ["coupled", "decoupled"])
@pytest.mark.parametrize("scheduled", [False, True])
def test_cautious_weight_decay_matches_the_paper(mode, scheduled):
    weight_decay = 0.5 if mode == "coupled" else 2e-3
    rate = (lambda step: LR * float(lr_factor(step))) if scheduled else (lambda step: LR)
    expected = _cautious_weight_decay_reference(
        rate, 0.9, 0.999, 1e-8, weight_decay, len(GRADS), mode
    )
    schedule = (lambda step: LR * lr_factor(step)) if scheduled else LR
    kwargs = dict(
        weight_decay=weight_decay,
        weight_decay_mode=mode,
        peak_learning_rate=LR if mode == "decoupled" else None,
    )
    actual = trajectory(aw.adamw(schedule, **kwargs, cautious_weight_decay=True), PARAMS, GRADS)
    error, tolerance = max_abs_error(actual, expected), float32_tolerance(expected)
    assert error <= tolerance, (error, tolerance)
    plain = trajectory(aw.adamw(schedule, **kwargs), PARAMS, GRADS)
    assert max_abs_error(plain, expected) > 100 * tolerance


def test_cautious_weight_decay_respects_the_mask():
    """Undecayed leaves (mask False) are plain Adam, cautious or not."""
    mask = {k: k != "w" for k in PARAMS}
    ours = trajectory(
        aw.adamw(LR, weight_decay=0.5, mask=mask, cautious_weight_decay=True), PARAMS, GRADS[:20]
    )
    adam = trajectory(aw.adam(LR), PARAMS, GRADS[:20])
    np.testing.assert_array_equal(ours[-1]["w"], adam[-1]["w"])
    assert not np.array_equal(ours[-1]["b"], adam[-1]["b"])


vectors = hnp.arrays(
    np.float32, st.integers(1, 40), elements=st.floats(-4, 4, width=32, allow_subnormal=False)
)


def _constant_direction(u: np.ndarray) -> optax.GradientTransformation:
    """An inner transformation whose direction is ``u`` whatever the gradient."""
    return optax.GradientTransformation(
        lambda params: optax.EmptyState(), lambda g, state, params=None: (jnp.asarray(u), state)
    )


@given(vectors, st.data())
def test_cautious_mask_keeps_agreeing_coordinates_rescaled(u, data):
    """``u ⊙ φ / max(mean(φ), 1e-3)`` with ``φ = 1[u⊙g > 0]``, for any signs and zeros."""
    g = data.draw(hnp.arrays(np.float32, u.shape, elements=st.sampled_from([-1.5, 0.0, 2.0])))
    box = aw.scale_by_cautious_mask(_constant_direction(u))
    out, _ = jax.jit(box.update)(jnp.asarray(g), box.init(g))
    kept = (u.astype(np.float64) * g > 0).astype(np.float64)
    np.testing.assert_allclose(out, u * kept / max(kept.mean(), 1e-3), rtol=1e-6)
    assert np.all(np.asarray(out)[kept == 0] == 0)


def test_arguments_are_checked_and_fused_refuses_the_variants():
    with pytest.raises(TypeError, match="cautious"):
        aw.adamw(LR, cautious="yes")
    with pytest.raises(TypeError, match="cautious_weight_decay"):
        aw.adamw(LR, cautious_weight_decay=1)
    with pytest.raises(ValueError, match="min_kept_fraction"):
        aw.scale_by_cautious_mask(aw.scale_by_adam(), min_kept_fraction=0.0)
    for option in ("cautious", "cautious_weight_decay"):
        with pytest.raises(ValueError, match=f"fused=True does not implement {option}=True"):
            aw.adamw(LR, fused=True, **{option: True})
