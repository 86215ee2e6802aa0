"""reduce_on_plateau: the scale after each value against the float64 transcription of torch's
rule, jitted; the updates it scales; its checks. The live torch comparison is in
tests/parity/test_schedules_torch_keras.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reference import plateau_scales

import adamw_jax as aw


def scales_of(transform: optax.GradientTransformationExtraArgs, values) -> np.ndarray:
    """The scale after each value, from one jitted ``lax.scan`` of ``update``."""
    params = {"w": jnp.ones(2)}

    @jax.jit
    def run(values):
        def step(state, value):
            _, state = transform.update(params, state, params, value=value)
            return state, state.scale

        return jax.lax.scan(step, transform.init(params), values)[1]

    return np.asarray(run(jnp.asarray(values, jnp.float32)), np.float64)


# Losses on a grid of 1/64 (exact in float32 and float64), drifting down with plateaus and
# spikes, so improvements, plateaus and equal values all occur; comparisons against
# best·(1 - rtol) - atol are never within a float32 rounding of a tie for these grids.
losses = st.lists(st.integers(0, 12), min_size=1, max_size=80).map(
    lambda steps: [
        4.0 - 0.015625 * sum(steps[:i]) + 0.25 * (s % 5 == 0) for i, s in enumerate(steps)
    ]
)


@given(
    values=losses,
    factor=st.sampled_from([0.1, 0.5, 0.25]),
    patience=st.integers(0, 4),
    tolerance=st.sampled_from([(1e-4, 0.0), (0.0, 0.05), (0.01, 0.01)]),
    cooldown=st.integers(0, 3),
    min_scale=st.sampled_from([0.0, 0.01, 0.3]),
    accumulation_size=st.integers(1, 3),
)
def test_scale_follows_torch_rule(
    values, factor, patience, tolerance, cooldown, min_scale, accumulation_size
):
    rtol, atol = tolerance
    options = dict(
        factor=factor,
        patience=patience,
        rtol=rtol,
        atol=atol,
        cooldown=cooldown,
        min_scale=min_scale,
        accumulation_size=accumulation_size,
    )
    expected = plateau_scales(values, **options)
    # The scale is a product of at most a few float32 factors: a few ulps.
    np.testing.assert_allclose(
        scales_of(aw.reduce_on_plateau(**options), values), expected, rtol=1e-6
    )


def test_eps_skips_reductions_too_small_to_matter():
    values = [1.0] * 12
    options = dict(factor=0.1, patience=0, rtol=1e-4, atol=0.0, cooldown=0, min_scale=0.0, eps=2e-3)
    expected = plateau_scales(values, **options)
    assert expected[-1] == pytest.approx(1e-3)  # 1e-3 -> 1e-4 lowers it by 9e-4 < eps: skipped
    np.testing.assert_allclose(
        scales_of(aw.reduce_on_plateau(**options), values), expected, rtol=1e-6
    )


def test_patience_counts_tolerated_bad_values_as_torch():
    """patience=2: two values without improvement are tolerated, the third reduces."""
    scales = scales_of(aw.reduce_on_plateau(factor=0.5, patience=2), [1.0, 1.0, 1.0, 1.0, 0.5, 0.5])
    np.testing.assert_array_equal(scales, [1.0, 1.0, 1.0, 0.5, 0.5, 0.5])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_updates_are_scaled_with_a_float32_scale(dtype):
    transform = aw.reduce_on_plateau(factor=0.1, patience=0)
    params = {"w": jnp.full(3, 3.0, dtype)}
    state = transform.init(params)
    update = jax.jit(lambda u, s, v: transform.update(u, s, params, value=v))
    for value in (2.0, 2.0):
        updates, state = update(params, state, jnp.asarray(value, dtype))
    assert state.scale.dtype == jnp.float32 and state.best_value.dtype == jnp.float32
    assert updates["w"].dtype == dtype
    np.testing.assert_allclose(np.asarray(updates["w"], np.float32), 0.3, rtol=4e-3)  # bf16: 8 bits


def test_chained_after_adamw_scales_the_whole_step():
    params = {"w": jnp.array([1.0, -2.0])}
    grads = {"w": jnp.array([0.5, 0.25])}
    chained = optax.chain(
        aw.adamw(1e-2, weight_decay=0.1), aw.reduce_on_plateau(factor=0.5, patience=0)
    )
    plain = aw.adamw(1e-2, weight_decay=0.1)
    update = jax.jit(lambda s, v: chained.update(grads, s, params, value=v))
    state, plain_state = chained.init(params), plain.init(params)
    for value, scale in ((1.0, 1.0), (1.0, 0.5), (1.0, 0.25)):
        updates, state = update(state, value)
        plain_updates, plain_state = plain.update(grads, plain_state, params)
        np.testing.assert_allclose(updates["w"], scale * plain_updates["w"], rtol=1e-7)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(factor=1.0), ValueError, "factor"),
        (dict(factor=0.0), ValueError, "factor"),
        (dict(patience=-1), ValueError, "patience"),
        (dict(patience=2.5), TypeError, "patience"),
        (dict(cooldown=True), TypeError, "cooldown"),
        (dict(rtol=-1e-4), ValueError, "rtol"),
        (dict(atol=float("nan")), ValueError, "atol"),
        (dict(min_scale=2.0), ValueError, "min_scale"),
        (dict(accumulation_size=0), ValueError, "accumulation_size"),
        (dict(eps=-1.0), ValueError, "eps"),
    ],
)
def test_bad_arguments_are_named_when_built(kwargs, error, words):
    with pytest.raises(error, match=words):
        aw.reduce_on_plateau(**kwargs)


def test_missing_or_non_scalar_value_is_named():
    transform = aw.reduce_on_plateau()
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="value=loss"):
        transform.update(params, transform.init(params), params)
    with pytest.raises(ValueError, match="scalar"):
        transform.update(params, transform.init(params), params, value=jnp.ones(3))


@pytest.mark.parametrize("name", ["atol", "eps"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_infinite_tolerances_are_refused(name, value):
    with pytest.raises(ValueError, match=name):
        aw.reduce_on_plateau(**{name: value})
