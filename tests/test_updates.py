"""apply_updates: dtype per leaf, None leaves, agreement with optax.apply_updates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adamw_jax as aw


def test_each_leaf_keeps_its_dtype_and_matches_optax():
    params = {"a": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(3, jnp.float32), "c": None}
    updates = {"a": jnp.full(3, 1e-2, jnp.float32), "b": jnp.full(3, 1e-2, jnp.bfloat16), "c": None}
    ours = jax.jit(aw.apply_updates)(params, updates)
    theirs = optax.apply_updates(params, updates)
    assert ours["c"] is None
    for key in ("a", "b"):
        assert ours[key].dtype == params[key].dtype
        np.testing.assert_array_equal(np.float32(ours[key]), np.float32(theirs[key]))


def test_apply_updates_is_optax_bit_for_bit_inside_a_jitted_step():
    """Fused into the step that computes the updates (where XLA contracts the last multiply into
    the add), the saturating sum still gives ``optax.apply_updates``' bits for float32."""
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(64, 64)), jnp.float32)}
    tx = optax.adamw(1e-2)

    def step(apply):
        def run(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return apply(params, updates), state

        return jax.jit(run)

    ours, theirs = step(aw.apply_updates), step(optax.apply_updates)
    (p1, s1), (p2, s2) = (params, tx.init(params)), (params, tx.init(params))
    for _ in range(20):
        grads = {"w": jnp.asarray(rng.normal(size=(64, 64)), jnp.float32)}
        p1, s1 = ours(p1, s1, grads)
        p2, s2 = theirs(p2, s2, grads)
    np.testing.assert_array_equal(p1["w"], p2["w"])
