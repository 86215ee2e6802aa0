"""loss_scaling and skip_nonfinite: torch's GradScaler update rule, optax.apply_if_finite, and
the float64 reference on the finite steps of a stream with NaN/Inf steps in it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from helpers import float32_tolerance, gradient_stream, make_params, max_abs_error, trajectory
from hypothesis import given
from hypothesis import strategies as st
from reference import adamw_trajectory

import adamw_jax as aw
from adamw_jax.transforms.loss_scaling import MAX_SCALE, MIN_SCALE

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
    # torch's scale has no floor or ceiling: bounds out of reach of 40 steps from 2^10.
    optimizer = aw.loss_scaling(
        2.0**10, growth_interval=interval, min_scale=2.0**-40, max_scale=2.0**60
    )
    update = jax.jit(optimizer.update)
    state = optimizer.init({})
    torch_scale, tracker = torch.tensor([2.0**10]), torch.zeros(1, dtype=torch.int32)
    for ok in finite:
        _, state = update({"g": jnp.array([1.0 if ok else jnp.inf])}, state)
        torch._amp_update_scale_(
            torch_scale, tracker, torch.tensor([0.0 if ok else 1.0]), 2.0, 0.5, interval
        )
        assert float(aw.current_loss_scale(state)) == float(torch_scale[0])
        assert int(state.finite_steps) == int(tracker[0])


def test_scale_stays_between_floor_and_ceiling_and_recovers():
    """200 overflows in a row (unbounded halving reaches 0 after ~150) stop at the floor; the
    first finite steps grow it again, up to the ceiling."""
    optimizer = aw.loss_scaling(2.0**15, growth_interval=3)
    update, state = jax.jit(optimizer.update), optimizer.init({})
    for _ in range(200):
        _, state = update({"g": jnp.array([jnp.inf])}, state)
    assert float(aw.current_loss_scale(state)) == MIN_SCALE == 1.0
    scales = []
    for _ in range(3 * 30):
        out, state = update({"g": jnp.array([2.0])}, state)
        scales.append(float(aw.current_loss_scale(state)))
    assert scales[:6] == [1.0, 1.0, 2.0, 2.0, 2.0, 4.0]
    assert scales[-1] == 2.0**24 == MAX_SCALE  # the ceiling, not inf
    wide = aw.loss_scaling(2.0**127, growth_interval=1, max_scale=2.0**127)
    _, state = wide.update({"g": jnp.ones(2)}, wide.init({}))
    assert float(state.scale) == 2.0**127


def test_loss_scaling_with_inner_skips_and_counts_overflowed_steps():
    """No skip_nonfinite in sight: ``loss_scaling(S, inner=...)`` never applies an overflowed
    step (torch's GradScaler.step): zero updates, inner state bit for bit, counted."""
    params = {"w": jnp.ones(3)}
    optimizer = aw.loss_scaling(8.0, inner=aw.adamw(1e-2))
    update = jax.jit(optimizer.update)
    _, state = update({"w": jnp.full(3, 8.0)}, optimizer.init(params), params)
    for bad in (jnp.inf, jnp.nan, -jnp.inf):
        updates, new = update({"w": jnp.array([1.0, bad, 1.0])}, state, params)
        np.testing.assert_array_equal(updates["w"], 0.0)
        jax.tree_util.tree_map(
            np.testing.assert_array_equal, new[1].inner_state, state[1].inner_state
        )
        assert float(aw.current_loss_scale(new)) == float(aw.current_loss_scale(state)) / 2
        state = new
    assert aw.skipped_steps(state) == (3, 3)


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
    scale = 2.0**12
    optimizer = optax.chain(
        aw.loss_scaling(scale, dynamic=False), aw.skip_nonfinite(aw.adamw(1e-2, weight_decay=0.1))
    )
    stream = poisoned([{k: g[k] * scale for k in g} for g in GRADS], BAD_STEPS, value)
    actual = trajectory(optimizer, PARAMS, stream)
    good = [i for i in range(len(GRADS)) if i not in BAD_STEPS]
    expected = adamw_trajectory(
        PARAMS, [GRADS[i] for i in good], learning_rate=1e-2, weight_decay=0.1
    )
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
    for max_consecutive in (0, 1, 2):
        peer = optax.apply_if_finite(aw.adamw(1e-2), max_consecutive_errors=max_consecutive)
        # optax's positional order and keyword, and ours
        for ours in (
            aw.skip_nonfinite(aw.adamw(1e-2), max_consecutive),
            aw.skip_nonfinite(aw.adamw(1e-2), max_consecutive_errors=max_consecutive),
        ):
            expected_run = trajectory(peer, PARAMS, stream)
            for actual, expected in zip(trajectory(ours, PARAMS, stream), expected_run):
                for k in PARAMS:  # NaN once a bad step is let through: equal, NaN for NaN
                    np.testing.assert_array_equal(actual[k], expected[k])
    peer = optax.apply_if_finite(aw.adamw(1e-2), 2)
    ours = aw.skip_nonfinite(aw.adamw(1e-2), 2)
    params = {k: jnp.asarray(v, jnp.float32) for k, v in PARAMS.items()}
    ours_state, peer_state = ours.init(params), peer.init(params)
    for g in stream[:45]:  # the counters, step by step
        g = {k: jnp.asarray(v, jnp.float32) for k, v in g.items()}
        _, ours_state = jax.jit(ours.update)(g, ours_state, params)
        _, peer_state = jax.jit(peer.update)(g, peer_state, params)
        assert int(ours_state.consecutive) == int(peer_state.notfinite_count)
        assert int(ours_state.total) == int(peer_state.total_notfinite)
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
    with pytest.raises(ValueError, match=r"initial_scale must be in \[0, inf\), got inf"):
        aw.loss_scaling(float("inf"))
    with pytest.raises(ValueError, match=r"initial_scale must be in \[0, inf\), got -2.0"):
        aw.loss_scaling(-2.0)
    with pytest.raises(ValueError, match=r"initial_scale must be in \[0, inf\), got nan"):
        aw.loss_scaling(float("nan"))
    with pytest.raises(ValueError, match=r"min_scale must be finite and > 0, got 0.0"):
        aw.loss_scaling(2.0, min_scale=0.0)
    with pytest.raises(ValueError, match=r"max_scale must be in \[0, inf\), got inf"):
        aw.loss_scaling(2.0, max_scale=float("inf"))
    with pytest.raises(ValueError, match=r"min_scale \(4.0\) must be <= max_scale \(2.0\)"):
        aw.loss_scaling(2.0, min_scale=4.0, max_scale=2.0)
    with pytest.raises(ValueError, match=r"initial_scale=1e\+30 is outside \[min_scale, max"):
        aw.loss_scaling(1e30)
    aw.loss_scaling(1e30, dynamic=False)  # a constant scale has no bounds to keep
    with pytest.raises(TypeError, match="dynamic must be a bool"):
        aw.loss_scaling(2.0, dynamic="no")
    with pytest.raises(ValueError, match="growth_interval must be an int >= 1, got 0"):
        aw.loss_scaling(2.0, growth_interval=0)
    with pytest.raises(ValueError, match="factor must be > 1, got 1.0"):
        aw.loss_scaling(2.0, factor=1.0)
    with pytest.raises(TypeError, match="max_consecutive must be an int >= 0 or None, got float"):
        aw.skip_nonfinite(aw.adamw(1e-3), max_consecutive=2.5)
    with pytest.raises(ValueError, match="max_consecutive_errors must be an int >= 0 or None, got"):
        aw.skip_nonfinite(aw.adamw(1e-3), max_consecutive_errors=-1)
    with pytest.raises(TypeError, match="not both"):
        aw.skip_nonfinite(aw.adamw(1e-3), 1, max_consecutive_errors=1)


def test_skip_sees_what_inner_produced_not_only_its_input():
    """Finite gradients, non-finite results inside ``inner``: optax's Adam squares 1e20 into an
    inf second moment (its update stays finite: m/inf = 0), ``optax.scale(1e19)`` overflows the
    update. Both steps are skipped and counted, the inner state kept bit for bit."""
    params = {"w": jnp.ones(3)}
    huge = {"w": jnp.array([1e20, 1.0, -1.0])}
    for inner in (optax.adam(1e-3), optax.chain(optax.scale(1e19), optax.scale_by_adam())):
        guarded = aw.skip_nonfinite(inner)
        state = guarded.init(params)
        _, state = jax.jit(guarded.update)({"w": jnp.ones(3)}, state, params)
        updates, new = jax.jit(guarded.update)(huge, state, params)
        np.testing.assert_array_equal(updates["w"], 0.0)
        jax.tree_util.tree_map(np.testing.assert_array_equal, new.inner_state, state.inner_state)
        assert aw.skipped_steps(new) == (1, 1)
        # optax.apply_if_finite looks at the gradients only and lets the poisoned state through
        peer = optax.apply_if_finite(inner, 1)
        _, peer_state = peer.update(huge, peer.init(params), params)
        leaves = jax.tree_util.tree_leaves(peer_state)
        assert not all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)


def test_state_that_starts_infinite_is_not_a_bad_step():
    """reduce_on_plateau keeps ``best_value = inf`` until the first loss: not a reason to skip."""
    params = {"w": jnp.ones(3)}
    for plateau in (optax.contrib.reduce_on_plateau(patience=1), aw.reduce_on_plateau(patience=1)):
        guarded = aw.skip_nonfinite(optax.chain(aw.adamw(1e-2), plateau))
        state = guarded.init(params)
        assert not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(state))
        update = jax.jit(lambda g, s, p: guarded.update(g, s, p, value=jnp.float32(2.0)))
        for _ in range(3):
            updates, state = update({"w": jnp.ones(3)}, state, params)
            assert np.all(updates["w"] != 0)
        assert aw.skipped_steps(state) == (0, 0)


def test_extra_arguments_reach_the_inner_transform():
    def scale_by_value():
        def update(updates, state, params=None, *, value, **extra_args):
            del params, extra_args
            return jax.tree_util.tree_map(lambda g: g * value, updates), state

        return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)

    grads = {"w": jnp.array([1.0, 2.0])}
    doubled = {"w": grads["w"] * 2}
    for transform, scaled in (
        (aw.skip_nonfinite(scale_by_value()), grads),
        (aw.loss_scaling(2.0, inner=scale_by_value()), doubled),
    ):
        assert isinstance(transform, optax.GradientTransformationExtraArgs)
        update = jax.jit(lambda g, t=transform: t.update(g, t.init(g), value=3 * jnp.ones([])))
        out, _ = update(scaled)
        np.testing.assert_array_equal(out["w"], grads["w"] * 3.0)
