"""The blocks compose with optax (chain, masked, inject_hyperparams) and with JAX's transforms
(jit, vmap over a batch of optimizers, grad through the update)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from helpers import float32_tolerance, gradient_stream, make_params, max_abs_error, trajectory
from reference import adamw_trajectory

import adamw_jax as aw

PARAMS = make_params(3, {"w": (4, 3), "b": (3,)})
GRADS = gradient_stream(PARAMS, 120, seed=4)


def test_chain_with_optax_blocks_equals_adamw():
    chained = optax.chain(
        aw.scale_by_adam(), aw.add_decayed_weights(0.1), aw.scale_by_learning_rate(1e-2)
    )
    a = trajectory(chained, PARAMS, GRADS)
    b = trajectory(aw.adamw(1e-2, weight_decay=0.1), PARAMS, GRADS)
    assert max_abs_error(a, b) == 0.0
    with_clip = trajectory(
        optax.chain(optax.clip(1e9), aw.adamw(1e-2, weight_decay=0.1)), PARAMS, GRADS
    )
    assert max_abs_error(with_clip, b) == 0.0


def test_optax_masked_freezes_the_unselected_leaves():
    optimizer = optax.masked(aw.adamw(1e-2, weight_decay=1e-2), {"w": True, "b": False})
    out = trajectory(optimizer, PARAMS, GRADS)
    # optax.masked passes the masked-out gradient through unchanged: b follows θ += g.
    expected_b = PARAMS["b"] + np.cumsum([g["b"] for g in GRADS], axis=0)
    np.testing.assert_allclose([p["b"] for p in out], expected_b, rtol=1e-5, atol=1e-5)
    expected_w = adamw_trajectory(PARAMS, GRADS, learning_rate=1e-2, weight_decay=1e-2)
    assert max(
        np.max(np.abs(p["w"] - q["w"])) for p, q in zip(out, expected_w)
    ) <= float32_tolerance(expected_w)


def test_inject_hyperparams_runtime_rate_equals_a_schedule_with_one_compilation():
    rates = np.float32(np.geomspace(1e-2, 1e-4, len(GRADS)))
    injected = optax.inject_hyperparams(aw.adamw)(learning_rate=1e-2, weight_decay=0.1)
    p = {k: jnp.asarray(v, jnp.float32) for k, v in PARAMS.items()}
    state = injected.init(p)
    compiles = 0

    @jax.jit
    def step(p, state, g, rate):
        nonlocal compiles
        compiles += 1
        state.hyperparams["learning_rate"] = rate
        updates, state = injected.update(g, state, p)
        return aw.apply_updates(p, updates), state

    history = []
    for g, rate in zip(GRADS, rates):
        p, state = step(p, state, {k: jnp.asarray(v, jnp.float32) for k, v in g.items()}, rate)
        history.append({k: np.asarray(v, np.float64) for k, v in p.items()})
    assert compiles == 1
    assert state.hyperparams["learning_rate"].dtype == jnp.float32
    expected = adamw_trajectory(
        PARAMS, GRADS, learning_rate=lambda t: float(rates[t]), weight_decay=0.1
    )
    assert max_abs_error(history, expected) <= float32_tolerance(expected)


def test_vmap_over_a_batch_of_learning_rates():
    rates = jnp.array([1e-3, 1e-2, 3e-2])
    p = {k: jnp.asarray(v, jnp.float32) for k, v in PARAMS.items()}
    g = {k: jnp.asarray(v, jnp.float32) for k, v in GRADS[0].items()}

    def one(rate):
        optimizer = aw.adamw(rate, weight_decay=0.1)
        updates, _ = optimizer.update(g, optimizer.init(p), p)
        return aw.apply_updates(p, updates)

    batched = jax.jit(jax.vmap(one))(rates)
    for i, rate in enumerate(np.asarray(rates)):
        expected = adamw_trajectory(PARAMS, GRADS[:1], learning_rate=float(rate), weight_decay=0.1)[
            0
        ]
        for k in p:
            np.testing.assert_allclose(batched[k][i], expected[k], rtol=1e-6, atol=1e-7)


def test_grad_through_the_update_is_finite_and_matches_finite_differences():
    """Meta-learning: d(θ after 3 steps)/d(η). eps_root > 0 keeps it finite at zero gradients."""
    p = {"w": jnp.array([1.0, -0.5, 0.0]), "b": jnp.zeros(2)}
    grads = [{"w": jnp.array([0.3, 0.0, -1.0]), "b": jnp.zeros(2)}] * 3

    def final_sum(rate):
        optimizer = aw.adamw(rate, eps_root=1e-8, weight_decay=0.1)
        state, params = optimizer.init(p), p
        for g in grads:
            updates, state = optimizer.update(g, state, params)
            params = aw.apply_updates(params, updates)
        return sum(jnp.sum(x) for x in jax.tree_util.tree_leaves(params))

    derivative = jax.jit(jax.grad(final_sum))(0.01)
    h = 1e-3  # the sum is linear in η up to O(η²·λ) terms; a central difference is accurate
    numeric = (final_sum(0.01 + h) - final_sum(0.01 - h)) / (2 * h)
    assert np.isfinite(derivative)
    np.testing.assert_allclose(derivative, numeric, rtol=1e-3)

    def through_gradient(g):
        optimizer = aw.adam(1e-2, eps_root=1e-8)
        updates, _ = optimizer.update({"w": g}, optimizer.init({"w": g}))
        return jnp.sum(updates["w"])

    assert np.all(np.isfinite(jax.grad(through_gradient)(jnp.zeros(3))))


def test_blocks_accept_being_wrapped_by_optax_inject_hyperparams():
    """Every numeric argument of the blocks may arrive as a traced float32 array."""
    blocks = optax.chain(
        optax.inject_hyperparams(aw.scale_by_adam)(b1=0.9, b2=0.999, eps=1e-8),
        optax.inject_hyperparams(aw.add_decayed_weights)(weight_decay=0.1),
        optax.inject_hyperparams(aw.scale_by_learning_rate)(learning_rate=1e-2),
    )
    expected = adamw_trajectory(PARAMS, GRADS, learning_rate=1e-2, weight_decay=0.1)
    assert max_abs_error(trajectory(blocks, PARAMS, GRADS), expected) <= float32_tolerance(expected)
