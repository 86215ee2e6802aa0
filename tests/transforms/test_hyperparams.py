"""inject_hyperparams / set_hyperparams / current_learning_rate: the same trajectory as the plain
optimizer, float32 hyperparameters with bf16 parameters, one compilation for changed values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import float32_tolerance, gradient_stream, make_params, max_abs_error, trajectory
from reference import adamw_trajectory

import adamw_jax as aw

STEPS = 60
STEPS_LOW_PRECISION = 20
PARAMS = make_params(3)
GRADS = gradient_stream(PARAMS, STEPS, seed=4)
SCHEDULE = aw.schedules.warmup_cosine_decay_schedule(0.0, 1e-2, 10, STEPS, 1e-4)


@pytest.mark.parametrize(
    "options, dtype",
    [
        (dict(learning_rate=1e-2, weight_decay=0.1), jnp.bfloat16),
        (
            dict(
                learning_rate=SCHEDULE,
                weight_decay=lambda t: 0.1 * (1 + t / STEPS),
                b1=0.8,
                amsgrad=True,
            ),
            jnp.float32,
        ),
        (
            dict(
                learning_rate=1e-2, weight_decay=1e-3, weight_decay_mode="decoupled", nesterov=True
            ),
            jnp.bfloat16,
        ),
    ],
)
def test_trajectory_is_bitwise_the_plain_optimizers(options, dtype):
    """optax #1532: injecting must not change a single bit (b1, b2, eps stay Python floats)."""
    plain = trajectory(aw.adamw(**options), PARAMS, GRADS, dtype)
    injected = trajectory(aw.inject_hyperparams(aw.adamw)(**options), PARAMS, GRADS, dtype)
    assert max_abs_error(injected, plain) == 0.0


def test_hyperparameters_stay_float32_with_bfloat16_params():
    """optax #1414: a bf16 learning rate 1e-2 would be 0.010009765625."""
    params = {"w": jnp.ones(4, jnp.bfloat16)}
    opt = aw.inject_hyperparams(aw.adamw)(learning_rate=1e-2, weight_decay=1e-4)
    state = opt.init(params)
    _, state = jax.jit(opt.update)(params, state, params)
    for name, value in aw.current_hyperparams(state).items():
        assert value.dtype == jnp.float32 and value.shape == ()
    assert float(aw.current_learning_rate(state)) == float(np.float32(1e-2))
    assert float(aw.current_hyperparams(state)["weight_decay"]) == float(np.float32(1e-4))


def test_run_time_learning_rate_equals_schedule_with_one_compilation():
    """Setting the lr between steps from a table gives the trajectory of the table as a
    schedule, and the jitted step is traced once."""
    table = np.asarray(jax.vmap(SCHEDULE)(jnp.arange(STEPS)), np.float32)
    traces = []
    opt = aw.inject_hyperparams(aw.adamw)(learning_rate=float(table[0]), weight_decay=0.05)

    @jax.jit
    def step(params, state, grads):
        traces.append(1)
        updates, state = opt.update(grads, state, params)
        return aw.apply_updates(params, updates), state

    params = {k: jnp.asarray(v, jnp.float32) for k, v in PARAMS.items()}
    state = opt.init(params)
    run_time = []
    for index, grads in enumerate(GRADS):
        state = aw.set_hyperparams(state, learning_rate=table[index])
        assert float(aw.current_learning_rate(state)) == table[index]
        params, state = step(
            params, state, {k: jnp.asarray(v, jnp.float32) for k, v in grads.items()}
        )
        run_time.append({k: np.asarray(v, np.float64) for k, v in params.items()})
    assert len(traces) == 1
    scheduled = trajectory(
        aw.adamw(lambda count: jnp.asarray(table)[count], weight_decay=0.05), PARAMS, GRADS
    )
    assert max_abs_error(run_time, scheduled) == 0.0
    expected = adamw_trajectory(
        PARAMS, GRADS, learning_rate=lambda t: float(table[t]), weight_decay=0.05
    )
    assert max_abs_error(run_time, expected) <= float32_tolerance(expected)


def test_state_holds_the_next_steps_values():
    params = {"w": jnp.ones(2)}
    opt = aw.inject_hyperparams(aw.adamw)(learning_rate=SCHEDULE, weight_decay=0.01)
    state = opt.init(params)
    update = jax.jit(opt.update)
    for count in range(1, 5):
        # Eager and jitted evaluations of the schedule may differ by an ulp.
        assert float(aw.current_learning_rate(state)) == pytest.approx(
            float(SCHEDULE(count - 1)), rel=2e-7
        )
        _, state = update(params, state, params)
    # A value set by hand lasts one step, then the schedule refills it.
    state = aw.set_hyperparams(state, learning_rate=0.5, weight_decay=0.2)
    assert float(aw.current_learning_rate(state)) == 0.5
    _, state = update(params, state, params)
    assert float(aw.current_learning_rate(state)) == pytest.approx(float(SCHEDULE(5)), rel=2e-7)
    assert float(aw.current_hyperparams(state)["weight_decay"]) == pytest.approx(0.2)


def test_learning_rate_includes_plateau_scale_in_a_chain():
    params = {"w": jnp.ones(2)}
    opt = optax.chain(
        aw.inject_hyperparams(aw.adamw)(learning_rate=1e-3),
        aw.reduce_on_plateau(factor=0.5, patience=0),
    )
    state = opt.init(params)
    update = jax.jit(lambda s, v: opt.update(params, s, params, value=v))
    for value, rate in ((1.0, 1e-3), (1.0, 5e-4), (1.0, 2.5e-4)):
        _, state = update(state, value)
        assert float(aw.current_learning_rate(state)) == pytest.approx(rate, rel=1e-6)
    state = aw.set_hyperparams(state, learning_rate=1e-2)
    assert float(aw.current_learning_rate(state)) == pytest.approx(2.5e-3, rel=1e-6)


def test_other_runtime_names_and_factories():
    opt = aw.inject_hyperparams(aw.adam, runtime=("learning_rate", "b1"))(
        learning_rate=1e-3, b1=0.5
    )
    params = {"w": jnp.ones(2)}
    state = opt.init(params)
    assert sorted(aw.current_hyperparams(state)) == ["b1", "learning_rate"]
    state = aw.set_hyperparams(state, b1=0.0)
    updates, _ = jax.jit(opt.update)({"w": jnp.array([2.0, -3.0])}, state, params)
    np.testing.assert_allclose(updates["w"], [-1e-3, 1e-3], rtol=1e-6)  # b1=0: m̂ = g, u = g/|g|
    state = aw.inject_hyperparams(aw.adam)(1e-3).init(params)
    assert list(aw.current_hyperparams(state)) == ["learning_rate"]


@pytest.mark.parametrize(
    "build, error, words",
    [
        (lambda: aw.inject_hyperparams(aw.adamw, runtime=("lr",)), ValueError, "lr"),
        (lambda: aw.inject_hyperparams(aw.adamw, runtime="learning_rate"), TypeError, "runtime"),
        (lambda: aw.inject_hyperparams(aw.adamw)(learning_rate=-1.0), ValueError, "learning_rate"),
        (lambda: aw.inject_hyperparams(aw.adamw)(learning_rate="fast"), TypeError, "learning_rate"),
        (lambda: aw.inject_hyperparams(aw.adamw)(1e-3, b3=0.9), TypeError, "b3"),
    ],
)
def test_bad_arguments_are_named_when_built(build, error, words):
    with pytest.raises(error, match=words):
        build()


def test_bad_set_and_read_are_named():
    params = {"w": jnp.ones(2)}
    state = aw.inject_hyperparams(aw.adamw)(1e-3).init(params)
    with pytest.raises(ValueError, match="b2"):
        aw.set_hyperparams(state, b2=0.99)
    with pytest.raises(TypeError, match="learning_rate"):
        aw.set_hyperparams(state, learning_rate=[1e-3])
    with pytest.raises(ValueError, match="inject_hyperparams"):
        aw.current_learning_rate(aw.adamw(1e-3, weight_decay=1e-2).init(params))


def _low_precision_run(optimizer, dtype, steps=STEPS_LOW_PRECISION):
    params = {k: jnp.asarray(v, dtype) for k, v in PARAMS.items()}
    state, update = optimizer.init(params), jax.jit(optimizer.update)
    for g in GRADS[:steps]:
        updates, state = update({k: jnp.asarray(v, dtype) for k, v in g.items()}, state, params)
        params = optax.apply_updates(params, updates)
    return {k: np.asarray(v, np.float64) for k, v in params.items()}


def _rounded(value, dtype):
    return float(jnp.asarray(value, dtype))


def test_optax_inject_hyperparams_float16_computes_in_float32():
    """optax casts every float hyperparameter to the float16 params' dtype (b1 0.89990234375,
    b2 0.9990234375, eps 1e-8 underflows to 0); adamw_jax takes those values and computes in
    float32, so the run is bit for bit the plain optimizer given the same (rounded) floats. optax's
    own optimizer computes in float16 and lands within 4 float16 ulps of |θ| (2^-9 relative)
    except where a gradient underflows to 0 in float16: with eps = 0 its m̂/√v̂ is 0/0 = NaN
    there, and adamw_jax's step is 0 (DESIGN §3: a zero gradient never produces NaN)."""
    ours = _low_precision_run(optax.inject_hyperparams(aw.adamw)(learning_rate=1e-3), jnp.float16)
    rounded = {
        name: _rounded(value, jnp.float16)
        for name, value in dict(
            learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4
        ).items()
    }
    plain = _low_precision_run(aw.adamw(**rounded), jnp.float16)
    peer = _low_precision_run(
        optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3), jnp.float16
    )
    for key in ours:
        np.testing.assert_array_equal(ours[key], plain[key])
        assert np.all(np.isfinite(ours[key]))
        finite = np.isfinite(peer[key])
        np.testing.assert_allclose(
            ours[key][finite], peer[key][finite], rtol=2.0**-9, atol=2.0**-24
        )


def test_optax_inject_hyperparams_bfloat16_steps_finitely():
    """bfloat16 rounds b2 = 0.999 to 1.0, where Adam's v̂ = v/(1 - β2^t) is 0/0 (optax's own
    optimizer returns NaN parameters). adamw_jax accepts the rounded value and takes the limit
    β2 → 1, v̂ = mean of g²: the float64 transcription below, with the other hyperparameters
    rounded as optax rounds them and m, v, θ stored in bfloat16 at each step. float32 against
    float64 arithmetic can move a rounding to the neighbouring bfloat16: one ulp (2^-7 relative)."""
    ours = _low_precision_run(optax.inject_hyperparams(aw.adamw)(learning_rate=1e-3), jnp.bfloat16)
    lr, b1, eps, decay = (_rounded(v, jnp.bfloat16) for v in (1e-3, 0.9, 1e-8, 1e-4))

    def bf16(x):
        return np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64)

    for key in ours:
        theta = bf16(PARAMS[key])
        m = v = np.zeros_like(theta)
        for t, g in enumerate(GRADS[:STEPS_LOW_PRECISION], start=1):
            g = bf16(g[key])
            m, v = bf16(b1 * m + (1 - b1) * g), bf16(v + g * g)
            u = (m / (1 - b1**t)) / (np.sqrt(v / t) + eps)
            theta = bf16(theta - lr * (u + decay * theta))
        assert np.all(np.isfinite(ours[key]))
        np.testing.assert_allclose(ours[key], theta, rtol=2.0**-7, atol=0)


@pytest.mark.parametrize(
    "name, value",
    [
        ("learning_rate", -1e-3),
        ("learning_rate", float("nan")),
        ("learning_rate", float("inf")),
        ("weight_decay", -0.1),
        ("weight_decay", float("nan")),
        ("b2", 1.0),
        ("b1", -0.5),
    ],
)
def test_set_hyperparams_checks_concrete_values(name, value):
    params = {"w": jnp.ones(2)}
    state = aw.inject_hyperparams(aw.adamw, runtime=("learning_rate", "weight_decay", "b1", "b2"))(
        1e-3
    ).init(params)
    with pytest.raises(ValueError, match=rf"{name} must .*set_hyperparams\(state, {name}=\.\.\.\)"):
        aw.set_hyperparams(state, **{name: value})
    # A traced value cannot be inspected: it is set as given.
    traced = jax.jit(lambda s, v: aw.set_hyperparams(s, **{name: v}))(state, jnp.float32(0.5))
    assert float(aw.current_hyperparams(traced)[name]) == 0.5
