"""Every AdamW variant composes: jitted inside an ``optax.chain`` with clipping, with a
learning-rate schedule, a decay mask and bfloat16 first moments (``state_dtype`` for
schedule-free); its state gets ``state_shardings`` on an 8-device mesh, sharded params stay
sharded through the steps, and everything stays finite."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import adamw_jax as aw

PARAMS = {
    "w": jnp.linspace(-1.0, 1.0, 64, dtype=jnp.float32).reshape(8, 8),
    "b": jnp.linspace(0.5, -0.5, 8, dtype=jnp.float32),
}
MASK = {"w": True, "b": False}
SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 3, 20)

VARIANTS = {
    "cautious": lambda: aw.adamw(SCHEDULE, mask=MASK, mu_dtype=jnp.bfloat16, cautious=True),
    "cautious_weight_decay": lambda: aw.adamw(
        SCHEDULE, weight_decay=0.1, mask=MASK, mu_dtype=jnp.bfloat16, cautious_weight_decay=True
    ),
    "rms_clip": lambda: aw.adamw(
        SCHEDULE, mask=MASK, mu_dtype=jnp.bfloat16, rms_clip_threshold=1.0
    ),
    "atan2": lambda: aw.adamw(SCHEDULE, mask=MASK, mu_dtype=jnp.bfloat16, eps_mode="atan2"),
    "corrected": lambda: aw.adamw(
        SCHEDULE,
        mask=MASK,
        mu_dtype=jnp.bfloat16,
        weight_decay_mode="corrected",
        peak_learning_rate=1e-2,
    ),
    "kahan": lambda: aw.adamw(SCHEDULE, mask=MASK, kahan_summation=True),
    "all_adamw_options": lambda: aw.adamw(
        SCHEDULE,
        weight_decay=0.1,
        mask=MASK,
        mu_dtype=jnp.bfloat16,
        cautious=True,
        cautious_weight_decay=True,
        rms_clip_threshold=1.0,
        eps_mode="atan2",
        weight_decay_mode="corrected",
        peak_learning_rate=1e-2,
        amsgrad=True,
    ),
    "adopt": lambda: aw.adopt(SCHEDULE, mu_dtype=jnp.bfloat16, weight_decay=0.1, mask=MASK),
    "ademamix": lambda: aw.ademamix(SCHEDULE, mu_dtype=jnp.bfloat16, weight_decay=0.1, mask=MASK),
    "schedule_free": lambda: aw.schedule_free_adamw(SCHEDULE, 3, state_dtype=jnp.bfloat16),
    "skip_loss_spikes": lambda: aw.skip_loss_spikes(aw.adamw(SCHEDULE), window=4, min_history=2),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_runs_in_a_chain_and_shards(name):
    optimizer = optax.chain(aw.clip_by_global_norm(1.0), VARIANTS[name]())
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(8), ("data",))
    shardings = {
        "w": NamedSharding(mesh, PartitionSpec("data")),
        "b": NamedSharding(mesh, PartitionSpec()),
    }
    params = jax.device_put(PARAMS, shardings)
    state = optimizer.init(params)
    state_shardings = aw.state_shardings(jax.eval_shape(optimizer.init, params), shardings)
    state = jax.device_put(state, state_shardings)

    @jax.jit
    def step(params, state, k):
        grads = jax.tree_util.tree_map(lambda p: jnp.sin(3 * p + k), params)
        loss = jnp.sum(jnp.square(params["w"]))
        updates, state = optimizer.update(grads, state, params, value=loss)
        return aw.apply_updates(params, updates), state

    for k in range(8):
        params, state = step(params, state, jnp.float32(k))
    assert params["w"].sharding.is_equivalent_to(shardings["w"], 2)
    for leaf in jax.tree_util.tree_leaves((params, state)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert np.all(np.isfinite(np.asarray(leaf, np.float32))), name
    assert not np.array_equal(params["w"], PARAMS["w"])
