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
