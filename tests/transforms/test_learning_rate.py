"""scale_by_learning_rate: sign, 0-based schedules, float32 rates, state layout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamw_jax as aw


def test_schedule_is_evaluated_at_the_zero_based_count():
    transform = aw.scale_by_learning_rate(lambda count: 1.0 + count)
    updates = {"w": jnp.ones(2)}
    state = transform.init(updates)
    seen = []
    for _ in range(4):
        out, state = jax.jit(transform.update)(updates, state)
        seen.append(float(out["w"][0]))
    assert seen == [-1.0, -2.0, -3.0, -4.0]


def test_rate_is_not_rounded_to_bfloat16_before_multiplying():
    # 3e-4 in bfloat16 is 2.9993e-4; the float32 product rounds to a different bfloat16 value.
    u = {"w": jnp.full((1,), 1000.0, jnp.bfloat16)}
    transform = aw.scale_by_learning_rate(3e-4)
    out, _ = transform.update(u, transform.init(u))
    assert out["w"].dtype == jnp.bfloat16
    assert float(out["w"][0]) == float(jnp.bfloat16(-0.3))


def test_state_is_the_same_for_float_and_schedule():
    params = {"w": jnp.ones(2)}
    a = aw.scale_by_learning_rate(0.1).init(params)
    b = aw.scale_by_learning_rate(lambda c: 0.1).init(params)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    assert a.count.dtype == b.count.dtype == jnp.int32


@pytest.mark.parametrize(
    "bad, error",
    [(-0.1, ValueError), ("0.1", TypeError), (None, TypeError), (np.array([0.1, 0.2]), TypeError)],
)
def test_bad_learning_rate_is_named(bad, error):
    with pytest.raises(error, match="learning_rate"):
        aw.scale_by_learning_rate(bad)
