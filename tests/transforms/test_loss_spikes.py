"""``skip_loss_spikes``: the steps it skips are exactly those a float64 NumPy transcription of
the rule picks (x > μ + k·σ over the last ``window`` taken values), and skipping is exact: the
run equals ``inner`` run on the taken steps alone, bit for bit, and a skipped step leaves params
and the inner state bit-identical."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import adamw_jax as aw

PARAMS = {
    "w": jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32).reshape(3, 4),
    "b": jnp.array([0.5, -0.25, 0.125], jnp.float32),
}


def _stream(steps: int, seed: int, spikes: tuple[int, ...], scale: float = 50.0):
    """Losses around 2 with noise, and gradients; at ``spikes`` the loss and the gradients jump."""
    rng = np.random.default_rng(seed)
    losses = 2.0 + 0.1 * rng.normal(size=steps)
    grads = [
        {k: rng.normal(size=v.shape).astype(np.float32) for k, v in PARAMS.items()}
        for _ in range(steps)
    ]
    for t in spikes:
        losses[t] *= scale
        grads[t] = {k: g * scale for k, g in grads[t].items()}
    return losses.astype(np.float32), grads


def _reference(xs, threshold, window, min_history, max_consecutive=None):
    """The taken steps of the rule in float64."""
    kept, taken, run = [], [], 0
    for x in np.asarray(xs, np.float64):
        recent = np.asarray(kept[-window:])
        spike = (not np.isfinite(x)) or (
            len(recent) >= min_history and x > recent.mean() + threshold * recent.std()
        )
        run = run + 1 if spike else 0
        take = not spike or (max_consecutive is not None and run > max_consecutive)
        if take:
            kept.append(x)
            run = 0
        taken.append(take)
    return np.array(taken)


def _run(optimizer, losses, grads):
    step = jax.jit(lambda g, s, p, v: optimizer.update(g, s, p, value=v))
    params, state, history = PARAMS, optimizer.init(PARAMS), []
    for loss, g in zip(losses, grads):
        updates, state = step(g, state, params, jnp.float32(loss))
        params = aw.apply_updates(params, updates)
        history.append((params, state))
    return history


@pytest.mark.parametrize("max_consecutive", [None, 2])
def test_skips_what_the_rule_says_and_equals_inner_on_the_taken_steps(max_consecutive):
    losses, grads = _stream(120, 0, spikes=(30, 31, 32, 33, 70, 100))
    wrapped = aw.skip_loss_spikes(
        aw.adamw(1e-2), threshold=4.0, window=25, min_history=10, max_consecutive=max_consecutive
    )
    history = _run(wrapped, losses, grads)
    taken = _reference(losses, 4.0, 25, 10, max_consecutive)
    assert (~taken).sum() >= 3
    skipped = np.array([int(s.total) for _, s in history])
    np.testing.assert_array_equal(np.diff(np.concatenate([[0], skipped])), ~taken)
    assert aw.skipped_spikes(history[-1][1]).total == (~taken).sum()
    inner = aw.adamw(1e-2)
    alone = _run(inner, losses[taken], [g for g, t in zip(grads, taken) if t])
    params, state = history[-1]
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, alone[-1][0])
    jax.tree_util.tree_map(np.testing.assert_array_equal, state.inner_state, alone[-1][1])


def test_a_skipped_step_leaves_params_and_state_bit_identical():
    losses, grads = _stream(40, 1, spikes=(35,))
    history = _run(aw.skip_loss_spikes(aw.adamw(1e-2), window=30), losses, grads)
    (before, s_before), (after, s_after) = history[34], history[35]
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, after)
    jax.tree_util.tree_map(np.testing.assert_array_equal, s_before.inner_state, s_after.inner_state)
    assert int(s_after.total) == 1 and int(s_after.consecutive) == 1


@pytest.mark.parametrize("monitor", ["grad_norm", "both"])
def test_gradient_norm_spikes(monitor):
    losses, grads = _stream(60, 2, spikes=())
    grads[50] = {k: 30 * g for k, g in grads[50].items()}
    history = _run(aw.skip_loss_spikes(aw.adam(1e-2), monitor=monitor, window=40), losses, grads)
    norms = [
        np.sqrt(sum(np.sum(np.square(g.astype(np.float64))) for g in step.values()))
        for step in grads
    ]
    taken = _reference(norms, 6.0, 40, 20)
    if monitor == "both":
        taken &= _reference(losses, 6.0, 40, 20)
    assert not taken[50]
    assert int(history[-1][1].total) == (~taken).sum()


@given(st.lists(st.floats(0.5, 5.0, width=32), min_size=25, max_size=60), st.floats(0.5, 4.0))
def test_matches_the_rule_on_any_stream(losses, threshold):
    losses = np.asarray(losses, np.float32)
    grads = [{k: jnp.ones_like(v) for k, v in PARAMS.items()}] * len(losses)
    optimizer = aw.skip_loss_spikes(
        aw.scale_by_learning_rate(1e-2), threshold=threshold, window=8, min_history=4
    )
    history = _run(optimizer, losses, grads)
    skipped = np.diff(np.concatenate([[0], [int(s.total) for _, s in history]]))
    expected = ~_reference(losses, np.float32(threshold), 8, 4)
    # float32 vs float64 statistics: the derandomized examples keep clear of the bound
    np.testing.assert_array_equal(skipped, expected)


def test_non_finite_loss_is_skipped_and_arguments_are_checked():
    losses, grads = _stream(5, 3, spikes=())
    losses[2] = np.nan
    history = _run(aw.skip_loss_spikes(aw.adam(1e-2), window=4, min_history=2), losses, grads)
    assert [int(s.total) for _, s in history] == [0, 0, 1, 1, 1]
    optimizer = aw.skip_loss_spikes(aw.adam(1e-2))
    with pytest.raises(ValueError, match="value=loss"):
        optimizer.update(PARAMS, optimizer.init(PARAMS), PARAMS)
    for kwargs, error in (
        (dict(threshold=0.0), ValueError),
        (dict(threshold=float("inf")), ValueError),
        (dict(window=1), ValueError),
        (dict(min_history=200), ValueError),
        (dict(monitor="norm"), ValueError),
        (dict(window=2.5), TypeError),
        (dict(max_consecutive=0), ValueError),
    ):
        with pytest.raises(error):
            aw.skip_loss_spikes(aw.adam(1e-2), **kwargs)
