"""``eps_mode="atan2"`` (Adam-atan2, Everett et al. 2024) against the live
``adam_atan2_pytorch.AdamAtan2`` run in float64, over 200 steps of ``test_torch_parity``'s
gradient stream, with its decay options (coupled, decoupled, cautious) and its a/b constants.

Tolerance: ``helpers.float32_tolerance`` (4·√N ulps of the largest |θ|), the one plain AdamW
meets against torch: ``atan2`` is smooth with derivative at most 1/|·| and bounded by π/2, so
the float32 update has the relative rounding of Adam's ratio and no eps regime to amplify it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from adam_atan2_pytorch import AdamAtan2
from helpers import float32_tolerance, max_abs_error, trajectory
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import adamw_jax as aw
from parity.test_torch_parity import GRADS, LR, PARAMS, lr_factor
from parity.variant_references import torch_run

OPTIONS = {
    "defaults": ({}, {}),
    "decay": (dict(weight_decay=0.1, betas=(0.8, 0.95)), dict(weight_decay=0.1, b1=0.8, b2=0.95)),
    # AdamAtan2 divides weight_decay by the constructor lr: its λ is the decoupled one
    "decoupled": (
        dict(weight_decay=1e-3, decoupled_wd=True),
        dict(weight_decay=1e-3, weight_decay_mode="decoupled", peak_learning_rate=LR),
    ),
    "cautious_wd": (
        dict(weight_decay=0.5, cautious_wd=True),
        dict(weight_decay=0.5, cautious_weight_decay=True),
    ),
}


def _schedule(scheduled: bool):
    return (lambda step: LR * lr_factor(step)) if scheduled else LR


@pytest.mark.parametrize("scheduled", [False, True])
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_atan2_matches_adam_atan2_pytorch(option, scheduled):
    theirs, ours = OPTIONS[option]
    expected = torch_run(lambda ts: AdamAtan2(ts, lr=LR, **theirs), scheduled=scheduled)
    ours = dict(dict(b1=0.9, b2=0.99, weight_decay=0.0), **ours)  # AdamAtan2's defaults
    actual = trajectory(aw.adamw(_schedule(scheduled), eps_mode="atan2", **ours), PARAMS, GRADS)
    error, tolerance = max_abs_error(actual, expected), float32_tolerance(expected)
    assert error <= tolerance, (error, tolerance)
    plain = trajectory(aw.adamw(_schedule(scheduled), **ours), PARAMS, GRADS)
    assert max_abs_error(plain, expected) > 100 * tolerance


def test_scale_constants_match():
    expected = torch_run(lambda ts: AdamAtan2(ts, lr=LR, a=1.0, b=2.0, weight_decay=0.05))
    chain = optax.chain(
        aw.scale_by_adam(0.9, 0.99, eps_mode="atan2", atan2_scale=1.0, atan2_denominator_scale=2.0),
        aw.add_decayed_weights(0.05),
        aw.scale_by_learning_rate(LR),
    )
    actual = trajectory(chain, PARAMS, GRADS)
    assert max_abs_error(actual, expected) <= float32_tolerance(expected)


finite_floats = st.floats(allow_nan=False, allow_infinity=False, width=32)


@given(st.integers(1, 16), st.integers(1, 4), st.data())
def test_atan2_direction_is_bounded_and_finite(size, steps, data):
    """``|u| <= a·π/2`` and finite for any finite gradients, zeros and ±3e38 included; a zero
    first moment gives a zero step."""
    box = aw.scale_by_adam(eps_mode="atan2")
    state, update = box.init(jnp.zeros(size)), jax.jit(box.update)
    for _ in range(steps):
        g = data.draw(hnp.arrays(np.float32, size, elements=finite_floats))
        u, state = update(jnp.asarray(g), state)
        assert np.all(np.isfinite(u)) and np.all(np.abs(u) <= 1.27 * np.pi / 2 * (1 + 1e-6))
        assert np.all(np.asarray(u)[np.asarray(state.mu) == 0] == 0)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="eps_mode"):
        aw.adamw(LR, eps_mode="atan")
    for name in ("atan2_scale", "atan2_denominator_scale"):
        for bad in (0.0, float("inf")):
            with pytest.raises(ValueError, match=name):
                aw.scale_by_adam(eps_mode="atan2", **{name: bad})
    with pytest.raises(ValueError, match="fused=True does not implement eps_mode='atan2'"):
        aw.adamw(LR, eps_mode="atan2", fused=True)
    with pytest.raises(ValueError, match="nesterov"):
        aw.scale_by_adam(eps_mode="hat", nesterov=True)
