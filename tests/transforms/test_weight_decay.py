"""add_decayed_weights and decoupled_weight_decay: masks, schedules, dtypes, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamw_jax as aw

PARAMS = {
    "dense": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full((3,), 2.0)},
    "norm": {"scale": jnp.full((3,), 2.0)},
}
ZERO = jax.tree_util.tree_map(jnp.zeros_like, PARAMS)


def _updates(transform, updates=ZERO, params=PARAMS, steps=1):
    state = transform.init(params)
    for _ in range(steps):
        out, state = jax.jit(transform.update)(updates, state, params)
    return out


@pytest.mark.parametrize(
    "mask",
    [
        {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False}},  # full tree
        {"dense": {"kernel": True, "bias": False}, "norm": False},  # prefix
        lambda p: jax.tree_util.tree_map(lambda x: x.ndim > 1, p),  # callable
    ],
)
def test_mask_forms_select_the_same_leaves(mask):
    out = _updates(aw.add_decayed_weights(0.5, mask))
    np.testing.assert_array_equal(out["dense"]["kernel"], 1.0)  # 0 + 0.5 * 2
    np.testing.assert_array_equal(out["dense"]["bias"], 0.0)
    np.testing.assert_array_equal(out["norm"]["scale"], 0.0)


def test_coupled_decay_schedule_is_read_at_the_zero_based_count():
    seen = []
    transform = aw.add_decayed_weights(lambda count: 0.1 * (count + 1))
    state = transform.init(PARAMS)
    for _ in range(3):
        out, state = jax.jit(transform.update)(ZERO, state, PARAMS)
        seen.append(float(out["norm"]["scale"][0]) / 2.0)
    np.testing.assert_allclose(seen, [0.1, 0.2, 0.3], rtol=1e-6)


def test_decoupled_decay_uses_the_schedule_multiplier_and_the_sign_of_a_step():
    transform = aw.decoupled_weight_decay(0.1, schedule_multiplier=lambda count: 0.5**count)
    state = transform.init(PARAMS)
    values = []
    for _ in range(3):
        out, state = jax.jit(transform.update)(ZERO, state, PARAMS)
        values.append(float(out["dense"]["bias"][0]))
    np.testing.assert_allclose(values, [-0.2, -0.1, -0.05], rtol=1e-6)


def test_low_precision_params_keep_a_float32_coefficient():
    """λ = 1e-3 is 9.9945e-4 in bfloat16; the product with a bfloat16 θ must use float32 λ."""
    params = {"w": jnp.full((4,), 256.0, jnp.bfloat16)}
    out = _updates(aw.add_decayed_weights(1e-3), {"w": jnp.zeros(4, jnp.float32)}, params)
    assert out["w"].dtype == jnp.float32
    np.testing.assert_array_equal(out["w"], np.float32(1e-3) * np.float32(256.0))


def test_update_without_params_is_a_clear_error():
    transform = aw.add_decayed_weights(0.1)
    with pytest.raises(ValueError, match="params"):
        transform.update(ZERO, transform.init(PARAMS))


@pytest.mark.parametrize("factory", [aw.add_decayed_weights, aw.decoupled_weight_decay])
def test_negative_or_non_numeric_decay_is_rejected(factory):
    with pytest.raises(ValueError, match="weight_decay"):
        factory(-1e-2)
    with pytest.raises(TypeError, match="weight_decay"):
        factory("0.01")


def test_schedule_multiplier_must_be_callable():
    with pytest.raises(TypeError, match="schedule_multiplier"):
        aw.decoupled_weight_decay(0.1, schedule_multiplier=0.5)
