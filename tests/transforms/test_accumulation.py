"""accumulate_gradients: the float64 reference on mean gradients, optax.MultiSteps, Keras'
gradient_accumulation_steps, and proof that the inner update is skipped on micro-steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import float32_tolerance, gradient_stream, make_params, max_abs_error, trajectory
from hypothesis import given
from hypothesis import strategies as st
from keras_runner import keras_trajectory
from reference import adamw_trajectory

import adamw_jax as aw

K = 4
UPDATES = 30
PARAMS = make_params(0)
MICRO_GRADS = gradient_stream(PARAMS, K * UPDATES, seed=2)


def window_means(grads, k):
    """The float64 mean of each window of ``k`` micro-step gradients."""
    return [
        {name: np.mean([g[name] for g in grads[i : i + k]], axis=0) for name in grads[0]}
        for i in range(0, len(grads), k)
    ]


def counted(inner, calls):
    """``inner`` whose update reports each real execution (not each trace) to ``calls``."""

    def update_fn(updates, state, params=None):
        jax.debug.callback(lambda: calls.append(1))
        return inner.update(updates, state, params)

    return optax.GradientTransformation(inner.init, update_fn)


@pytest.mark.parametrize(
    "options", [dict(weight_decay=0.1), dict(weight_decay=0.0, amsgrad=True, eps_mode="hat")]
)
def test_matches_reference_on_window_means(options):
    optimizer = aw.accumulate_gradients(K, inner=aw.adamw(1e-2, **options))
    actual = trajectory(optimizer, PARAMS, MICRO_GRADS)
    expected = adamw_trajectory(PARAMS, window_means(MICRO_GRADS, K), learning_rate=1e-2, **options)
    # Params move only on the last micro-step of each window, and stay bit-identical before it.
    assert max_abs_error(actual[K - 1 :: K], expected) <= float32_tolerance(expected)
    for i, params in enumerate(actual):
        previous = actual[i - 1] if i else PARAMS
        if i % K != K - 1:
            assert all(np.array_equal(params[k], np.float32(previous[k])) for k in params)


def test_matches_optax_multisteps():
    ours = trajectory(
        aw.accumulate_gradients(K, inner=aw.adamw(1e-2, weight_decay=0.1)), PARAMS, MICRO_GRADS
    )
    peer = trajectory(optax.MultiSteps(aw.adamw(1e-2, weight_decay=0.1), K), PARAMS, MICRO_GRADS)
    # Same float32 mean (Σg / k) and the same inner optimizer: identical up to the summation
    # order of the accumulator (one ulp per window), so one ulp of |θ| per step suffices.
    assert max_abs_error(ours, peer) <= float32_tolerance(peer) / 4


def test_matches_keras_gradient_accumulation_with_a_schedule():
    """Keras AdamW(gradient_accumulation_steps=k): lr schedule at the micro-step counter, bias
    correction at accumulated steps, epsilon-hat, decay λ·η·θ."""
    import keras  # after keras_runner, which selects the JAX backend

    schedule = keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=7, decay_rate=0.5)
    keras_opt = keras.optimizers.AdamW(
        learning_rate=schedule, weight_decay=0.05, gradient_accumulation_steps=K
    )
    expected = keras_trajectory(keras_opt, PARAMS, MICRO_GRADS)

    def jax_schedule(step):
        return 1e-2 * 0.5 ** (step / 7)

    inner = aw.adamw(
        aw.micro_step_schedule(jax_schedule, K), eps=1e-7, weight_decay=0.05, eps_mode="hat"
    )
    actual = trajectory(aw.accumulate_gradients(K, inner=inner), PARAMS, MICRO_GRADS)
    # Two float32 runs, each within float32_tolerance of the exact trajectory.
    assert max_abs_error(actual, expected) <= 2 * float32_tolerance(expected)


def test_inner_update_runs_only_on_the_last_micro_step():
    params = {"w": jnp.ones((3, 2))}
    grads = jnp.ones((3 * K, 3, 2))

    def executions(optimizer):
        @jax.jit
        def run(params, grads):
            def step(state, g):
                return optimizer.update({"w": g}, state, params)[1], None

            return jax.lax.scan(step, optimizer.init(params), grads)[0]

        calls.clear()
        jax.block_until_ready(run(params, grads))
        jax.effects_barrier()
        return len(calls)

    calls: list[int] = []
    assert executions(aw.accumulate_gradients(K, inner=counted(aw.adamw(1e-3), calls))) == 3
    # optax.MultiSteps computes the inner update on every micro-step and masks the result.
    assert executions(optax.MultiSteps(counted(aw.adamw(1e-3), calls), K)) == 3 * K


def test_compiled_update_branches_with_a_conditional():
    params = {"w": jnp.ones((8, 4))}
    optimizer = aw.accumulate_gradients(K, inner=aw.adamw(1e-3, weight_decay=1e-2))
    hlo = (
        jax.jit(optimizer.update).lower(params, optimizer.init(params), params).compile().as_text()
    )
    assert "conditional(" in hlo


def test_peak_memory_is_not_above_optax_multisteps():
    """XLA's buffer assignment of one jitted, donated update: temporaries beyond the arguments."""
    params = {f"w{i}": jnp.zeros((128, 256)) for i in range(4)}

    def temp_bytes(optimizer):
        state = optimizer.init(params)
        compiled = (
            jax.jit(optimizer.update, donate_argnums=1).lower(params, state, params).compile()
        )
        return compiled.memory_analysis().temp_size_in_bytes

    ours = temp_bytes(aw.accumulate_gradients(K, inner=aw.adamw(1e-3, weight_decay=1e-2)))
    peer = temp_bytes(optax.MultiSteps(aw.adamw(1e-3, weight_decay=1e-2), K))
    assert ours <= peer


def test_counters_see_what_they_should():
    optimizer = aw.accumulate_gradients(3, inner=aw.adamw(lambda count: count * 1.0))
    params = {"w": jnp.ones(2)}
    state = optimizer.init(params)
    update = jax.jit(optimizer.update)
    for _ in range(7):
        _, state = update({"w": jnp.ones(2)}, state, params)
    adam_state, _, lr_state = state.inner_state
    assert int(state.micro_step) == 1  # 7 = 2 windows of 3 + 1
    assert int(adam_state.count) == 2 and int(lr_state.count) == 2


@given(k=st.integers(1, 6), count=st.integers(0, 1000))
def test_micro_step_schedule_evaluates_at_the_update_micro_step(k, count):
    schedule = aw.micro_step_schedule(lambda step: step * 10, k)
    assert int(jax.jit(schedule)(jnp.int32(count))) == (count * k + k - 1) * 10


def test_without_inner_emits_the_mean_on_the_last_micro_step():
    optimizer = aw.accumulate_gradients(3)
    params = {"w": jnp.zeros(2)}
    state = optimizer.init(params)
    update = jax.jit(optimizer.update)
    outputs = []
    for g in (1.0, 2.0, 6.0, 5.0):
        u, state = update({"w": jnp.full(2, g)}, state, params)
        outputs.append(float(u["w"][0]))
    assert outputs == [0.0, 0.0, 3.0, 0.0]


def test_every_k_one_is_the_inner_optimizer():
    ours = trajectory(aw.accumulate_gradients(1, inner=aw.adamw(1e-2)), PARAMS, MICRO_GRADS[:20])
    plain = trajectory(aw.adamw(1e-2), PARAMS, MICRO_GRADS[:20])
    # The same arithmetic; XLA fuses it differently inside the conditional (an ulp here and there).
    assert max_abs_error(ours, plain) <= float32_tolerance(plain) / 4


def test_extra_arguments_reach_the_inner_update():
    def scale_by_value():
        def update_fn(updates, state, params=None, *, value):
            return jax.tree_util.tree_map(lambda u: u * value, updates), state

        return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update_fn)

    optimizer = aw.accumulate_gradients(2, inner=scale_by_value())
    params = {"w": jnp.ones(2)}
    state = optimizer.init(params)
    update = jax.jit(optimizer.update)
    _, state = update({"w": jnp.ones(2)}, state, params, value=5.0)
    u, _ = update({"w": jnp.ones(2)}, state, params, value=5.0)
    np.testing.assert_array_equal(u["w"], 5.0)


def test_bad_every_k_is_rejected():
    with pytest.raises(ValueError, match="every_k must be an int >= 1, got 0"):
        aw.accumulate_gradients(0)
    with pytest.raises(TypeError, match="every_k must be an int >= 1, got float 2.0"):
        aw.accumulate_gradients(2.0)
    with pytest.raises(TypeError, match="every_k must be an int >= 1, got bool"):
        aw.micro_step_schedule(lambda s: s, True)


def test_matches_optax_multisteps_around_optax_adamw():
    ours = trajectory(aw.accumulate_gradients(K, inner=optax.adamw(1e-2)), PARAMS, MICRO_GRADS)
    peer = trajectory(optax.MultiSteps(optax.adamw(1e-2), every_k_schedule=K), PARAMS, MICRO_GRADS)
    # As above: only the accumulator's summation order differs.
    assert max_abs_error(ours, peer) <= float32_tolerance(peer) / 4


def test_gradients_wider_than_float16_params_keep_the_inner_state_dtypes():
    """float32 gradients of float16 params turn optax.adamw's float16 moments into float32 on
    the update branch; they are stored back in float16 (as optax.MultiSteps does), so the cond's
    branches agree. Gradients are multiples of 1/8 whose window sums and means are exact in
    float32 either way, so both wrappers feed adamw the same mean: bit-identical runs."""
    rng = np.random.default_rng(3)
    params = {
        "w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float16),
        "b": jnp.zeros(3, jnp.float16),
    }
    grads = [
        {
            k: jnp.asarray(rng.integers(-16, 17, size=v.shape) / 8, jnp.float32)
            for k, v in params.items()
        }
        for _ in range(3 * K)
    ]
    runs = []
    for optimizer in (
        aw.accumulate_gradients(K, inner=optax.adamw(1e-2)),
        optax.MultiSteps(optax.adamw(1e-2), every_k_schedule=K),
    ):
        p, state = params, optimizer.init(params)
        update = jax.jit(optimizer.update)
        for g in grads:
            updates, state = update(g, state, p)
            p = optax.apply_updates(p, updates)
        inner = state.inner_state if hasattr(state, "inner_state") else state.inner_opt_state
        runs.append((p, inner))
    (ours, ours_inner), (peer, peer_inner) = runs
    assert jax.tree_util.tree_map(lambda x: x.dtype, ours_inner) == jax.tree_util.tree_map(
        lambda x: x.dtype, peer_inner
    )
    assert ours_inner[0].mu["w"].dtype == jnp.float16
    for key in params:
        np.testing.assert_array_equal(np.asarray(ours[key]), np.asarray(peer[key]))
    jax.tree_util.tree_map(np.testing.assert_array_equal, ours_inner, peer_inner)
