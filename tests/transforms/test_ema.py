"""param_ema / ema_params: hand-computed steps, a float64 EMA of the reference trajectory, and
Keras' use_ema (with overwrite and with gradient accumulation) run side by side."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import float32_tolerance, gradient_stream, make_params, max_abs_error, trajectory
from keras_runner import keras_trajectory
from reference import adamw_trajectory

import adamw_jax as aw

PARAMS = make_params(0)
GRADS = gradient_stream(PARAMS, 60, seed=3)


def run_with_ema(optimizer, params, grads):
    """Params and EMA after each step, jitted as one scan."""

    @jax.jit
    def run(p, stacked):
        def step(carry, g):
            p, state = carry
            updates, state = optimizer.update(g, state, p)
            p = aw.apply_updates(p, updates)
            return (p, state), (p, aw.ema_params(state))

        return jax.lax.scan(step, (p, optimizer.init(p)), stacked)[1]

    stacked = jax.tree_util.tree_map(lambda *g: jnp.stack(g), *grads)
    return jax.device_get(run(params, stacked))


def test_hand_computed_steps():
    """θ = 1 with updates +1, +1, +1 (μ = 0.5): θ' = 2, 3, 4; θ̄ = 2 (copy), 2.5, 3.25."""
    grads = [{"w": jnp.ones(2)}] * 3
    params, averages = run_with_ema(aw.param_ema(0.5), {"w": jnp.ones(2)}, grads)
    np.testing.assert_array_equal(params["w"][:, 0], [2.0, 3.0, 4.0])
    np.testing.assert_array_equal(averages["w"][:, 0], [2.0, 2.5, 3.25])
    # overwrite_every=2: the second step lands θ on θ̄ = 2.5; the third gives θ' = 3.5,
    # θ̄ = 0.5·2.5 + 0.5·3.5 = 3.
    params, averages = run_with_ema(aw.param_ema(0.5, overwrite_every=2), {"w": jnp.ones(2)}, grads)
    np.testing.assert_array_equal(params["w"][:, 0], [2.0, 2.5, 3.5])
    np.testing.assert_array_equal(averages["w"][:, 0], [2.0, 2.5, 3.0])


def test_average_of_the_reference_trajectory():
    optimizer = optax.chain(aw.adamw(1e-2, weight_decay=0.1), aw.param_ema(0.9))
    params = {k: jnp.asarray(v, jnp.float32) for k, v in PARAMS.items()}
    _, averages = run_with_ema(
        optimizer, params, [{k: jnp.float32(g[k]) for k in g} for g in GRADS]
    )
    reference = adamw_trajectory(PARAMS, GRADS, learning_rate=1e-2, weight_decay=0.1)
    expected, average = [], None
    for p in reference:
        average = p if average is None else {k: 0.9 * average[k] + 0.1 * p[k] for k in p}
        expected.append(average)
    actual = [
        {k: np.asarray(averages[k][i], np.float64) for k in PARAMS} for i in range(len(GRADS))
    ]
    # An average of float32 parameters, each within float32_tolerance of the reference.
    assert max_abs_error(actual, expected) <= float32_tolerance(reference)


@pytest.mark.parametrize("overwrite_every, accumulation", [(None, None), (5, None), (2, 3)])
def test_matches_keras_use_ema(overwrite_every, accumulation):
    import keras  # after keras_runner, which selects the JAX backend

    keras_opt = keras.optimizers.AdamW(
        learning_rate=1e-2,
        weight_decay=0.05,
        use_ema=True,
        ema_momentum=0.9,
        ema_overwrite_frequency=overwrite_every,
        gradient_accumulation_steps=accumulation,
    )
    expected = keras_trajectory(keras_opt, PARAMS, GRADS)
    inner = aw.adamw(1e-2, eps=1e-7, weight_decay=0.05, eps_mode="hat")
    ema = aw.param_ema(0.9, overwrite_every, accumulation_steps=accumulation or 1)
    if accumulation:
        optimizer = optax.chain(aw.accumulate_gradients(accumulation, inner=inner), ema)
    else:
        optimizer = optax.chain(inner, ema)
    actual = trajectory(optimizer, PARAMS, GRADS)
    # Two float32 runs, each within float32_tolerance of the exact trajectory.
    assert max_abs_error(actual, expected) <= 2 * float32_tolerance(expected)


def test_found_anywhere_in_a_nested_state():
    optimizer = optax.chain(
        aw.loss_scaling(4.0),
        aw.skip_nonfinite(
            aw.accumulate_gradients(
                2, inner=optax.chain(aw.adamw(1e-3, weight_decay=1e-2), aw.param_ema())
            )
        ),
    )
    params = {"w": jnp.full(3, 2.0)}
    state = optimizer.init(params)
    for _ in range(2):
        _, state = jax.jit(optimizer.update)({"w": jnp.ones(3)}, state, params)
    np.testing.assert_allclose(
        jax.jit(aw.ema_params)(state)["w"], 2.0 - 1e-3 * (1 + 2e-2), rtol=1e-6
    )


def test_missing_or_ambiguous_ema_is_a_clear_error():
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="exactly one param_ema state .* found 0"):
        aw.ema_params(aw.adamw(1e-3, weight_decay=1e-2).init(params))
    with pytest.raises(ValueError, match="found 2"):
        aw.ema_params(optax.chain(aw.param_ema(), aw.param_ema()).init(params))


def test_bfloat16_params_with_a_float32_average():
    params = {"w": jnp.ones(4, jnp.bfloat16)}
    optimizer = aw.param_ema(0.999, ema_dtype=jnp.float32)
    state = optimizer.init(params)
    update = jax.jit(optimizer.update)
    step = {"w": jnp.full(4, 2.0**-6, jnp.bfloat16)}
    _, state = update(step, state, params)  # copy: θ̄ = 1 + 2⁻⁶
    moved = {"w": params["w"] + 2 * step["w"]}
    _, state = update(step, state, moved)  # θ' = 1 + 3·2⁻⁶, θ̄ = 1 + 2⁻⁶·(0.999 + 0.003)
    assert state.ema["w"].dtype == jnp.float32
    np.testing.assert_allclose(state.ema["w"], 1 + 2.0**-6 * 1.002, rtol=1e-7)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\], got 1.5"):
        aw.param_ema(1.5)
    with pytest.raises(ValueError, match="overwrite_every must be an int >= 1 or None, got 0"):
        aw.param_ema(0.9, 0)
    with pytest.raises(TypeError, match="accumulation_steps must be an int >= 1, got float"):
        aw.param_ema(0.9, accumulation_steps=2.0)
    optimizer = aw.param_ema()
    with pytest.raises(ValueError, match="param_ema needs the parameters"):
        optimizer.update({"w": jnp.ones(2)}, optimizer.init({"w": jnp.ones(2)}))
