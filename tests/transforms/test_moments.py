"""scale_by_adam: state layout, dtype policy, edge cases, and single steps against the formulas."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from reference import adamw_trajectory

import adamw_jax as aw

INT32_MAX = np.iinfo(np.int32).max


def _one_step(transform, grads, state=None):
    state = transform.init(grads) if state is None else state
    return jax.jit(transform.update)(grads, state)


@pytest.mark.parametrize(
    "mu_dtype, nu_dtype",
    [(None, None), (jnp.bfloat16, None), (None, jnp.bfloat16), (jnp.float16, jnp.float32)],
)
def test_moments_are_stored_in_their_dtypes(mu_dtype, nu_dtype):
    params = {"a": jnp.ones((3,), jnp.float32), "b": jnp.ones((2, 2), jnp.bfloat16)}
    transform = aw.scale_by_adam(mu_dtype=mu_dtype, nu_dtype=nu_dtype, amsgrad=True)
    _, state = _one_step(transform, params)
    for key, p in params.items():
        assert state.mu[key].dtype == (mu_dtype or p.dtype)
        assert state.nu[key].dtype == (nu_dtype or p.dtype)
        assert state.nu_max[key].dtype == (nu_dtype or p.dtype)
    assert state.count.dtype == jnp.int32 and int(state.count) == 1


def test_b2_is_not_rounded_to_the_parameter_dtype():
    """In bfloat16, 0.999 rounds to 1.0 and v would stay 0 (optax #1414)."""
    g = {"w": jnp.full((4,), 2.0, jnp.bfloat16)}
    _, state = _one_step(aw.scale_by_adam(b2=0.999), g)
    np.testing.assert_allclose(np.float32(state.nu["w"]), 4e-3, rtol=2**-8)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize(
    "kwargs", [{}, {"eps_root": 1e-12}, {"eps_mode": "hat"}, {"amsgrad": True}, {"nesterov": True}]
)
def test_zero_gradient_gives_zero_update_not_nan(dtype, kwargs):
    """eps = 1e-8 is 0 in float16; it must never be cast there (optax #1754)."""
    g = {"w": jnp.zeros((3,), dtype)}
    transform = aw.scale_by_adam(**kwargs)
    state = transform.init(g)
    for _ in range(3):
        updates, state = jax.jit(transform.update)(g, state)
        assert updates["w"].dtype == dtype
        np.testing.assert_array_equal(np.float32(updates["w"]), 0.0)


def test_count_saturates_and_bias_correction_stays_exact():
    g = {"w": jnp.array([0.5, -2.0, 0.0])}
    transform = aw.scale_by_adam()
    state = transform.init(g)._replace(count=jnp.int32(INT32_MAX - 1))
    for _ in range(3):
        updates, state = jax.jit(transform.update)(g, state)
    assert int(state.count) == INT32_MAX
    # At huge t both corrections are exactly 1, so u = m / (sqrt(v) + eps) with this state.
    m, v = np.float64(state.mu["w"]), np.float64(state.nu["w"])
    np.testing.assert_allclose(updates["w"], m / (np.sqrt(v) + 1e-8), rtol=1e-6)


def test_amsgrad_keeps_the_max_of_the_raw_second_moment():
    transform = aw.scale_by_adam(amsgrad=True)
    big, small = {"w": jnp.array([10.0])}, {"w": jnp.array([0.1])}
    _, state = _one_step(transform, big)
    peak = float(state.nu["w"][0])
    _, state = _one_step(transform, small, state)
    assert float(state.nu["w"][0]) < peak == float(state.nu_max["w"][0])


def test_amsgrad_differs_from_optax_amsgrad_as_documented():
    """optax.amsgrad takes the max of the bias-corrected v̂; torch and Keras (and we) take the max
    of the raw v and correct afterwards. On a falling gradient scale the two disagree."""
    params = {"w": np.zeros(1)}
    grads = [{"w": np.array([g])} for g in (1.0, 1.0, 0.01, 0.01, 0.01)]
    expected = adamw_trajectory(params, grads, learning_rate=0.1, amsgrad=True)
    ours = optax.chain(aw.scale_by_adam(amsgrad=True), optax.scale(-0.1))
    theirs = optax.amsgrad(0.1)
    p_ours = p_theirs = {"w": jnp.zeros(1)}
    s_ours, s_theirs = ours.init(p_ours), theirs.init(p_theirs)
    for g in grads:
        g = {"w": jnp.asarray(g["w"], jnp.float32)}
        u, s_ours = ours.update(g, s_ours)
        p_ours = aw.apply_updates(p_ours, u)
        u, s_theirs = theirs.update(g, s_theirs)
        p_theirs = optax.apply_updates(p_theirs, u)
    np.testing.assert_allclose(p_ours["w"], expected[-1]["w"], rtol=1e-6)
    assert abs(float(p_theirs["w"][0]) - expected[-1]["w"][0]) > 1e-3


@pytest.mark.parametrize("nesterov", [False, True])
def test_matches_optax_scale_by_adam(nesterov):
    g = {"w": jnp.linspace(-3.0, 3.0, 12).reshape(3, 4)}
    ours, theirs = aw.scale_by_adam(nesterov=nesterov), optax.scale_by_adam(nesterov=nesterov)
    s_ours, s_theirs = ours.init(g), theirs.init(g)
    for i in range(20):
        g = jax.tree_util.tree_map(lambda x: jnp.sin(x * (i + 1)), g)
        u_ours, s_ours = jax.jit(ours.update)(g, s_ours)
        u_theirs, s_theirs = theirs.update(g, s_theirs)
        # optax forms 1 - β^t in float32 (relative error up to ~1e-5 at small t); we do not.
        np.testing.assert_allclose(u_ours["w"], u_theirs["w"], rtol=3e-5, atol=1e-7)


def test_complex_parameters_use_squared_magnitude_like_optax():
    g = {"z": jnp.array([1 + 2j, -0.5j, 3.0], jnp.complex64)}
    ours, theirs = aw.scale_by_adam(), optax.scale_by_adam()
    s_ours, s_theirs = ours.init(g), theirs.init(g)
    for _ in range(5):
        u_ours, s_ours = jax.jit(ours.update)(g, s_ours)
        u_theirs, s_theirs = theirs.update(g, s_theirs)
    assert s_ours.nu["z"].dtype == jnp.float32 and u_ours["z"].dtype == jnp.complex64
    np.testing.assert_allclose(u_ours["z"], u_theirs["z"], rtol=3e-5)


def test_b1_schedule_uses_the_current_value():
    b1 = lambda count: jnp.where(count < 1, 0.5, 0.8)  # noqa: E731
    params = {"w": np.zeros(2)}
    grads = [{"w": np.array([1.0, -2.0])}, {"w": np.array([0.5, 0.25])}]
    expected = adamw_trajectory(
        params, grads, learning_rate=1.0, b1=lambda t: 0.5 if t < 1 else 0.8
    )
    transform = optax.chain(aw.scale_by_adam(b1=b1), optax.scale(-1.0))
    p = {"w": jnp.zeros(2)}
    state = transform.init(p)
    for g in grads:
        u, state = jax.jit(transform.update)({"w": jnp.asarray(g["w"], jnp.float32)}, state)
        p = aw.apply_updates(p, u)
    np.testing.assert_allclose(p["w"], expected[-1]["w"], rtol=1e-6)


def test_empty_and_none_leaves_are_passed_through():
    tree = {"a": jnp.ones(3), "none": None, "empty": jnp.zeros((0, 4))}
    transform = aw.scale_by_adam()
    updates, _ = _one_step(transform, tree)
    assert updates["none"] is None and updates["empty"].shape == (0, 4)
    assert np.all(np.isfinite(updates["a"]))


@given(
    g=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=0, max_dims=3, max_side=5),
        elements=st.floats(-1e3, 1e3, width=32),
    ),
    b1=st.floats(0.0, 0.99),
    b2=st.floats(0.0, 0.9999),
    eps=st.floats(1e-10, 1e-2),
    eps_mode=st.sampled_from(["adam", "hat"]),
    amsgrad=st.booleans(),
    dtype=st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float16]),
)
def test_two_steps_match_the_formulas(g, b1, b2, eps, eps_mode, amsgrad, dtype):
    """Any shape, dtype and hyperparameters: the update equals the float64 formulas up to the
    rounding of the gradient and of the output to ``dtype`` (plus float32 arithmetic)."""
    g_cast = jnp.asarray(g, dtype)
    g64 = np.asarray(np.float32(g_cast), np.float64)
    transform = optax.chain(
        aw.scale_by_adam(
            b1,
            b2,
            eps,
            eps_mode=eps_mode,
            amsgrad=amsgrad,
            mu_dtype=jnp.float32,
            nu_dtype=jnp.float32,
        ),
        optax.scale(-1.0),
    )
    state = transform.init({"w": g_cast})
    p = {"w": jnp.zeros(g.shape, jnp.float32)}
    for _ in range(2):
        u, state = jax.jit(transform.update)({"w": g_cast}, state)
        p = aw.apply_updates(p, jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), u))
    expected = adamw_trajectory(
        {"w": np.zeros(g.shape)},
        [{"w": g64}] * 2,
        learning_rate=1.0,
        b1=b1,
        b2=b2,
        eps=eps,
        eps_mode=eps_mode,
        amsgrad=amsgrad,
    )[-1]["w"]
    # Each step's output is rounded to `dtype` (relative eps_dtype / 2); |u| <= ~1/(1 - b1)·√...
    # is bounded by the formulas themselves, so a relative tolerance of two output roundings.
    rtol = 2 * float(jnp.finfo(dtype).eps) + 1e-5
    np.testing.assert_allclose(np.asarray(p["w"]), expected, rtol=rtol, atol=1e-6)
    assert np.all(np.isfinite(np.asarray(p["w"])))
