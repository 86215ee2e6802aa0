"""adamw_jax.flat: flatten once, unflatten as slices, gradients and training on flat buffers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import adamw_jax as aw
from adamw_jax.fused import flat

MIXED = {
    "dense": {"kernel": np.arange(12.0).reshape(3, 4), "bias": np.arange(4.0)},
    "norm": np.float32(2.5),
    "embed": np.arange(10.0).reshape(5, 2).astype(jnp.bfloat16),
    "empty": np.zeros((0, 3)),
}


def _params(tree):
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, x.dtype if x.dtype != np.float64 else jnp.float32), tree
    )


@given(
    shapes=st.lists(st.lists(st.integers(0, 5), max_size=3).map(tuple), min_size=1, max_size=6),
    multiple=st.integers(1, 9),
)
def test_round_trip_is_exact_and_padded(shapes, multiple):
    params = {
        f"p{i}": jnp.arange(np.prod(s), dtype=jnp.float32).reshape(s) + i
        for i, s in enumerate(shapes)
    }
    _, layout = flat.flatten(params, multiple=multiple)
    buffers = jax.jit(lambda p: flat.flatten(p, multiple=multiple)[0])(params)
    total = sum(int(np.prod(s)) for s in shapes)
    assert len(buffers) == 1 and buffers[0].shape[0] % multiple == 0
    assert total <= buffers[0].shape[0] < total + multiple
    np.testing.assert_array_equal(buffers[0][total:], 0.0)
    restored = jax.jit(lambda b: flat.unflatten(layout, b))(buffers)
    for key, p in params.items():
        assert restored[key].shape == p.shape and restored[key].dtype == p.dtype
        np.testing.assert_array_equal(restored[key], p)


def test_one_buffer_per_dtype_and_per_mask_flag():
    params = _params(MIXED)
    buffers, layout = flat.flatten(params)
    assert [(b.dtype, b.shape) for b in buffers] == [(jnp.float32, (17,)), (jnp.bfloat16, (10,))]
    mask = lambda p: jax.tree_util.tree_map(lambda x: x.ndim >= 2, p)  # noqa: E731
    buffers, layout = flat.flatten(params, mask=mask)
    assert flat.decay_mask(layout) == (False, True, True)  # bias+norm, kernel+empty, embed
    assert [b.shape for b in buffers] == [(5,), (12,), (10,)]
    restored = flat.unflatten(layout, buffers)
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored, params)


def test_gradients_on_flat_buffers_are_the_flattened_gradients():
    params = _params(MIXED)
    buffers, layout = flat.flatten(params, multiple=4)

    def loss(p, scale):
        return scale * (
            jnp.sum(p["dense"]["kernel"] ** 2)
            + jnp.sum(jnp.sin(p["dense"]["bias"]))
            + p["norm"] * jnp.sum(p["embed"].astype(jnp.float32))
        )

    flat_grads = jax.jit(jax.grad(flat.on_flat(loss, layout)))(buffers, 3.0)
    tree_grads = jax.grad(loss)(params, 3.0)
    expected, _ = flat.flatten(tree_grads, multiple=4)
    for group, (got, want) in enumerate(zip(flat_grads, expected)):
        np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=1e-6)
        used = sum(slot.size for slot in layout.slots if slot.group == group)
        assert used < got.shape[0]  # 17 -> 20 and 10 -> 12: the padding gets no gradient
        np.testing.assert_array_equal(np.float32(got[used:]), 0.0)


@pytest.mark.parametrize("fused", [False, True])
def test_training_flat_params_matches_training_the_tree(fused):
    """The same masked AdamW run on the pytree and on its flat buffers gives the same params:
    the update is elementwise, so only the order of leaves in memory differs."""
    rng = np.random.default_rng(0)
    params = {
        "w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32),
    }
    mask = {"w": True, "b": False}
    data = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)

    def loss(p, x):
        return jnp.mean(jnp.tanh(x @ p["w"] + p["b"]) ** 2)

    tree_opt = aw.adamw(1e-2, weight_decay=0.1, mask=mask, fused=fused)
    buffers, layout = flat.flatten(params, mask=mask, multiple=8)
    flat_opt = aw.adamw(1e-2, weight_decay=0.1, mask=flat.decay_mask(layout), fused=fused)

    def train(optimizer, p, loss_fn):
        state = optimizer.init(p)

        @jax.jit
        def step(p, state):
            grads = jax.grad(loss_fn)(p, data)
            updates, state = optimizer.update(grads, state, p)
            return aw.apply_updates(p, updates), state

        for _ in range(20):
            p, state = step(p, state)
        return p

    expected = train(tree_opt, params, loss)
    actual = flat.unflatten(layout, train(flat_opt, buffers, flat.on_flat(loss, layout)))
    for key in params:
        np.testing.assert_allclose(actual[key], expected[key], rtol=0, atol=1e-6)


def test_bad_arguments_are_named():
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="multiple"):
        flat.flatten(params, multiple=0)
    buffers, layout = flat.flatten(params)
    with pytest.raises(ValueError, match="flatten"):
        flat.unflatten(layout, buffers + buffers)
    for resized in (jnp.ones(4), jnp.ones(2), jnp.ones((3, 1))):  # longer, shorter, not flat
        with pytest.raises(ValueError, match=r"buffers\[0\] has shape .* holds \(3,\) elements"):
            flat.unflatten(layout, (resized,))
    with pytest.raises(ValueError, match="mask"):
        flat.decay_mask(layout)
    with pytest.raises(ValueError, match="mask"):
        flat.flatten(params, mask={"v": True})
