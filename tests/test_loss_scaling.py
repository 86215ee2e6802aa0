"""loss_scaling and skip_nonfinite: torch's GradScaler update rule, optax.apply_if_finite, and
the float64 reference on the finite steps of a stream with NaN/Inf steps in it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import adamw_jax as aw
from helpers import float32_tolerance, gradient_stream, make_params, max_abs_error, trajectory
from reference import adamw_trajectory

PARAMS = make_params(0)
GRADS = gradient_stream(PARAMS, 80, seed=4)
BAD_STEPS = {3, 4, 17, 40, 41, 42, 65}


def poisoned(grads, bad_steps, value=np.nan):
    """``grads`` with one element replaced by ``value`` on each of ``bad_steps``."""
    out = []
    for i, g in enumerate(grads):
        g = {k: v.copy() for k, v in g.items()}
        if i in bad_steps:
            g["w"].flat[i % g["w"].size] = value
        out.append(g)
    return out


@given(finite=st.lists(st.booleans(), min_size=1, max_size=40), interval=st.integers(1, 4))
def test_dynamic_scale_follows_torch_grad_scaler(finite, interval):
    """torch._amp_update_scale_ is the kernel behind torch.amp.GradScaler.update."""
    optimizer = aw.loss_scaling(2.0 ** 10, growth_interval=interval)
    update = jax.jit(optimizer.update)
    state = optimizer.init({})
    torch_scale, tracker = torch.tensor([2.0 ** 10]), torch.zeros(1, dtype=torch.int32)
    for ok in finite:
        _, state = update({"g": jnp.array([1.0 if ok else jnp.inf])}, state)
        torch._amp_update_scale_(torch_scale, tracker, torch.tensor([0.0 if ok else 1.0]),
                                 2.0, 0.5, interval)
        assert float(aw.current_loss_scale(state)) == float(torch_scale[0])
        assert int(state.finite_steps) == int(tracker[0])


def test_scale_does_not_grow_to_infinity():
    optimizer = aw.loss_scaling(2.0 ** 127, growth_interval=1)
    _, state = optimizer.update({"g": jnp.ones(2)}, optimizer.init({}))
    assert float(state.scale) == 2.0 ** 127


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_unscaling_is_exact_for_powers_of_two(dtype):
    grads = {"g": jnp.array([3.0, -0.5, 48.0], dtype) * 1024}
    for dynamic in (True, False):
        optimizer = aw.loss_scaling(1024.0, dynamic=dynamic)
        out, _ = jax.jit(optimizer.update)(grads, optimizer.init(grads))
        assert out["g"].dtype == dtype
        np.testing.assert_array_equal(np.asarray(out["g"], np.float32), [3.0, -0.5, 48.0])


def test_static_scale_never_changes():
    optimizer = aw.loss_scaling(3.0, dynamic=False)
    state = optimizer.init({})
    for g in (1.0, jnp.nan, jnp.inf):
        out, state = jax.jit(optimizer.update)({"g": jnp.array([g * 3.0])}, state)
    assert float(aw.current_loss_scale(state)) == 3.0


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_mixed_precision_chain_skips_bad_steps_and_matches_reference(value):
    """loss × S, then unscale and skip: the params follow AdamW on the finite steps alone."""
    scale = 2.0 ** 12
    optimizer = optax.chain(aw.loss_scaling(scale, dynamic=False),
                            aw.skip_nonfinite(aw.adamw(1e-2, weight_decay=0.1)))
    stream = poisoned([{k: g[k] * scale for k in g} for g in GRADS], BAD_STEPS, value)
    actual = trajectory(optimizer, PARAMS, stream)
    good = [i for i in range(len(GRADS)) if i not in BAD_STEPS]
    expected = adamw_trajectory(PARAMS, [GRADS[i] for i in good], learning_rate=1e-2,
                                weight_decay=0.1)
    assert max_abs_error([actual[i] for i in good], expected) <= float32_tolerance(expected)
    for i in BAD_STEPS:  # a skipped step leaves the params bit for bit
        assert all(np.array_equal(actual[i][k], actual[i - 1][k]) for k in PARAMS)


def test_skipped_step_leaves_inner_state_unchanged_and_halves_the_scale():
    optimizer = optax.chain(aw.loss_scaling(8.0), aw.skip_nonfinite(aw.adamw(1e-2)))
    params = {"w": jnp.ones(3)}
    update = jax.jit(optimizer.update)
    _, state = update({"w": jnp.full(3, 8.0)}, optimizer.init(params), params)
    updates, bad = update({"w": jnp.array([1.0, jnp.nan, 1.0])}, state, params)
    np.testing.assert_array_equal(updates["w"], 0.0)
    jax.tree_util.tree_map(np.testing.assert_array_equal, bad[1].inner_state, state[1].inner_state)
    assert float(aw.current_loss_scale(bad)) == 4.0
    assert aw.skipped_steps(bad) == (1, 1)


def test_counts_and_max_consecutive_match_optax_apply_if_finite():
    stream = poisoned(GRADS, BAD_STEPS)
    for max_consecutive in (1, 2):
        ours = aw.skip_nonfinite(aw.adamw(1e-2), max_consecutive=max_consecutive)
        peer = optax.apply_if_finite(aw.adamw(1e-2), max_consecutive_errors=max_consecutive)
        for actual, expected in zip(trajectory(ours, PARAMS, stream), trajectory(peer, PARAMS, stream)):
            for k in PARAMS:  # NaN once a bad step is let through: equal, NaN for NaN
                np.testing.assert_array_equal(actual[k], expected[k])
    optimizer = aw.skip_nonfinite(aw.adamw(1e-2, weight_decay=1e-2))
    params = {k: jnp.asarray(v, jnp.float32) for k, v in PARAMS.items()}
    state, update = optimizer.init(params), jax.jit(optimizer.update)
    counts = []
    for g in stream[:45]:
        _, state = update({k: jnp.asarray(v, jnp.float32) for k, v in g.items()}, state, params)
        counts.append(tuple(int(c) for c in jax.jit(aw.skipped_steps)(state)))
    assert counts[4] == (2, 2) and counts[5] == (0, 2) and counts[17] == (1, 3)
    assert counts[42] == (3, 6) and counts[44] == (0, 6)


def test_missing_state_is_a_clear_error():
    with pytest.raises(ValueError, match="exactly one loss_scaling state"):
        aw.current_loss_scale(aw.adamw(1e-3, weight_decay=1e-2).init({"w": jnp.ones(1)}))
    with pytest.raises(ValueError, match="exactly one skip_nonfinite state"):
        aw.skipped_steps(aw.adamw(1e-3, weight_decay=1e-2).init({"w": jnp.ones(1)}))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="initial_scale must be finite and > 0, got 0.0"):
        aw.loss_scaling(0.0)
    with pytest.raises(ValueError, match="initial_scale must be finite and > 0, got inf"):
        aw.loss_scaling(float("inf"))
    with pytest.raises(ValueError, match=r"initial_scale must be in \[0, inf\], got -2.0"):
        aw.loss_scaling(-2.0)
    with pytest.raises(ValueError, match="growth_interval must be an int >= 1, got 0"):
        aw.loss_scaling(2.0, growth_interval=0)
    with pytest.raises(ValueError, match="factor must be > 1, got 1.0"):
        aw.loss_scaling(2.0, factor=1.0)
    with pytest.raises(TypeError, match="max_consecutive must be an int >= 1 or None, got float"):
        aw.skip_nonfinite(aw.adamw(1e-3, weight_decay=1e-2), max_consecutive=2.5)
