"""adamw(fused=True): the same numbers as the unfused chain, the float64 reference and optax, for
every option, with the moments in a few flat buffers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

import adamw_jax as aw
from adamw_jax.fused import FusedAdamState, fused_adam_family
from helpers import float32_tolerance, gradient_stream, make_params, max_abs_error, trajectory
from reference import adamw_trajectory
from test_alias import OPTIONS as ALIAS_OPTIONS

STEPS = 120
PARAMS = make_params(0)
GRADS = gradient_stream(PARAMS, STEPS, seed=2)
MASK = {"w": True, "b": False, "scalar": False, "conv": True}

OPTIONS = {
    **ALIAS_OPTIONS,
    "mask": dict(weight_decay=0.3, decay_mask=MASK),
    "nesterov_amsgrad_mask": dict(nesterov=True, amsgrad=True, weight_decay=0.2, decay_mask=MASK),
}


def _adamw_kwargs(options):
    """The reference's ``decay_mask`` is ``adamw``'s ``mask``."""
    return {("mask" if k == "decay_mask" else k): v for k, v in options.items()}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_fused_matches_reference(name):
    """test_alias holds the unfused chain to the same bound, so the two agree within twice it;
    test_one_step_matches_unfused_for_any_tree compares them directly."""
    options = {"weight_decay": 0.0, **OPTIONS[name]}
    expected = adamw_trajectory(PARAMS, GRADS, learning_rate=1e-2, **options)
    fused = trajectory(aw.adamw(1e-2, fused=True, **_adamw_kwargs(options)), PARAMS, GRADS)
    assert max_abs_error(fused, expected) <= float32_tolerance(expected)


@pytest.mark.parametrize("mode", ["coupled", "decoupled"])
def test_schedules_for_learning_rate_decay_and_b1(mode):
    decay = 0.1 if mode == "coupled" else 1e-3
    schedule = aw.schedules.warmup_cosine_decay_schedule(0.0, 1e-2, 20, STEPS, 1e-4)
    expected = adamw_trajectory(
        PARAMS, GRADS, learning_rate=lambda t: float(schedule(t)),
        b1=lambda t: 0.85 + 0.1 * t / STEPS, weight_decay=lambda t: decay * (1 + t / STEPS),
        weight_decay_mode=mode, peak_learning_rate=1e-2,
    )
    optimizer = aw.adamw(
        schedule, b1=lambda t: 0.85 + 0.1 * t / STEPS,
        weight_decay=lambda t: decay * (1 + t / STEPS), weight_decay_mode=mode,
        peak_learning_rate=1e-2 if mode == "decoupled" else None, fused=True,
    )
    assert max_abs_error(trajectory(optimizer, PARAMS, GRADS), expected) <= float32_tolerance(expected)


def test_without_bias_correction_matches_reference():
    optimizer = fused_adam_family(1e-2, dict(bias_correction=False), maximize=False)
    expected = adamw_trajectory(PARAMS, GRADS, learning_rate=1e-2, bias_correction=False)
    assert max_abs_error(trajectory(optimizer, PARAMS, GRADS), expected) <= float32_tolerance(expected)


def test_matches_optax_adamw():
    """The real optax, run on the same stream (optax's eps_root and decay are the same form)."""
    optimizer = optax.adamw(1e-2, b1=0.9, b2=0.99, eps=1e-6, weight_decay=0.1, mask=MASK)
    reference = trajectory(optimizer, PARAMS, GRADS)
    fused = trajectory(aw.adamw(1e-2, 0.9, 0.99, 1e-6, weight_decay=0.1, mask=MASK, fused=True),
                       PARAMS, GRADS)
    expected = adamw_trajectory(PARAMS, GRADS, learning_rate=1e-2, b2=0.99, eps=1e-6,
                                weight_decay=0.1, decay_mask=MASK)
    assert max_abs_error(fused, reference) <= float32_tolerance(expected)


@pytest.mark.parametrize("mu_dtype, nu_dtype", [(jnp.bfloat16, None), (None, jnp.bfloat16),
                                                (jnp.bfloat16, jnp.bfloat16)])
def test_low_precision_moments_round_like_the_unfused_chain(mu_dtype, nu_dtype):
    """m and v are computed by the same float32 formula in both, then rounded to the same
    storage dtype, so the states agree bit for bit and θ within float32 rounding."""
    kwargs = dict(weight_decay=0.1, mu_dtype=mu_dtype, nu_dtype=nu_dtype, amsgrad=True)
    fused = trajectory(aw.adamw(1e-2, fused=True, **kwargs), PARAMS, GRADS)
    unfused = trajectory(aw.adamw(1e-2, **kwargs), PARAMS, GRADS)
    assert max_abs_error(fused, unfused) <= float32_tolerance(unfused)


def test_moments_are_a_few_flat_buffers_per_dtype_and_mask():
    params = {
        "a": jnp.ones((3, 4), jnp.float32), "b": jnp.ones((5,), jnp.bfloat16),
        "c": jnp.ones((), jnp.float32), "d": jnp.ones((2, 2), jnp.bfloat16),
        "e": jnp.ones((7,), jnp.float32),
    }
    mask = {"a": True, "b": True, "c": False, "d": True, "e": True}
    optimizer = aw.adamw(mask=mask, amsgrad=True, nu_dtype=jnp.float32, fused=True)
    state = jax.jit(optimizer.init)(params)
    assert isinstance(state, FusedAdamState)
    # groups in tree order of first appearance: (f32, decayed), (bf16, decayed), (f32, not)
    # a group of one unpadded leaf keeps that leaf's shape (here the scalar "c")
    assert [x.shape for x in state.mu] == [(19,), (9,), ()]
    assert [x.dtype for x in state.mu] == [jnp.float32, jnp.bfloat16, jnp.float32]
    assert [x.dtype for x in state.nu] == [jnp.float32] * 3
    assert [x.shape for x in state.nu_max] == [(19,), (9,), ()]


def test_large_leaves_keep_a_buffer_of_their_own():
    """Packing a large leaf would copy it every step; small leaves share one flat buffer."""
    params = {"big": jnp.ones((256, 256)), "small": jnp.ones((3,)), "tiny": jnp.ones(())}
    state = aw.adamw(fused=True).init(params)
    assert [x.shape for x in state.mu] == [(256, 256), (4,)]


def test_padding_to_a_multiple_stays_zero_and_changes_nothing():
    padded = fused_adam_family(1e-2, {}, maximize=False, weight_decay=0.1, pad_multiple=8)
    plain = fused_adam_family(1e-2, {}, maximize=False, weight_decay=0.1)
    params = {k: jnp.asarray(v, jnp.float32) for k, v in PARAMS.items()}
    grads = [{k: jnp.asarray(v, jnp.float32) for k, v in g.items()} for g in GRADS[:5]]
    states = [padded.init(params), plain.init(params)]
    assert [x.shape for x in states[0].mu] == [(64,)]  # 30 + 5 + 1 + 24 = 60 -> 64
    for g in grads:
        (u_padded, states[0]), (u_plain, states[1]) = (
            jax.jit(t.update)(g, s, params) for t, s in zip((padded, plain), states))
        for key in params:
            np.testing.assert_allclose(u_padded[key], u_plain[key], rtol=0, atol=0)
    np.testing.assert_array_equal(states[0].mu[0][60:], 0.0)
    np.testing.assert_array_equal(states[0].nu[0][60:], 0.0)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_zero_gradient_gives_no_nan_in_half_precision(dtype):
    params = {"w": jnp.ones((3,), dtype), "b": jnp.zeros((2,), dtype)}
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    optimizer = aw.adamw(1e-3, weight_decay=0.1, amsgrad=True, fused=True)
    state = optimizer.init(params)
    for _ in range(3):
        updates, state = jax.jit(optimizer.update)(zeros, state, params)
        assert updates["w"].dtype == dtype
        assert np.all(np.isfinite(np.float32(updates["w"])))
        np.testing.assert_array_equal(np.float32(updates["b"]), 0.0)


def test_half_precision_parameters_round_once():
    """bfloat16 params: the fused update is the float32 value rounded once; the unfused chain
    rounds three times (direction, decay, learning rate), so they differ by at most ~2 ulps."""
    params = {k: jnp.asarray(v, jnp.bfloat16) for k, v in PARAMS.items()}
    grads = {k: jnp.asarray(v, jnp.bfloat16) for k, v in GRADS[0].items()}
    results = []
    for fused in (True, False):
        optimizer = aw.adamw(1e-2, weight_decay=0.1, fused=fused)
        results.append(jax.jit(optimizer.update)(grads, optimizer.init(params), params)[0])
    for key in params:
        assert results[0][key].dtype == jnp.bfloat16
        np.testing.assert_allclose(np.float32(results[0][key]), np.float32(results[1][key]),
                                   rtol=2 * 2.0**-8, atol=0)


def test_count_saturates():
    optimizer = aw.adamw(fused=True)
    params = {"w": jnp.ones(2)}
    state = optimizer.init(params)
    state = state._replace(count=jnp.asarray(np.iinfo(np.int32).max, jnp.int32))
    updates, state = jax.jit(optimizer.update)(params, state, params)
    assert int(state.count) == np.iinfo(np.int32).max and state.count.dtype == jnp.int32
    assert np.all(np.isfinite(updates["w"]))


def test_state_structure_does_not_depend_on_float_or_schedule():
    params = {"w": jnp.ones(3), "b": jnp.ones(2)}
    as_float = aw.adamw(1e-3, weight_decay=1e-2, fused=True).init(params)
    as_schedule = aw.adamw(lambda t: 1e-3, weight_decay=lambda t: 1e-2, fused=True).init(params)
    assert jax.tree_util.tree_structure(as_float) == jax.tree_util.tree_structure(as_schedule)


@given(
    shapes=st.lists(st.lists(st.integers(0, 4), max_size=3).map(tuple), min_size=1, max_size=5),
    b1=st.floats(0.0, 0.99), b2=st.floats(0.5, 0.9999), eps=st.sampled_from([1e-8, 1e-4, 1e-1]),
    weight_decay=st.floats(0.0, 0.5), amsgrad=st.booleans(), nesterov=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_one_step_matches_unfused_for_any_tree(shapes, b1, b2, eps, weight_decay, amsgrad,
                                               nesterov, seed):
    rng = np.random.default_rng(seed)
    params = {f"p{i}": jnp.asarray(rng.normal(size=s), jnp.float32) for i, s in enumerate(shapes)}
    grads = [jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
             for _ in range(3)]
    kwargs = dict(b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                  nesterov=nesterov)
    results = []
    for fused in (True, False):
        optimizer = aw.adamw(1e-2, fused=fused, **kwargs)
        state, out = optimizer.init(params), []
        for g in grads:
            updates, state = jax.jit(optimizer.update)(g, state, params)
            out.append(updates)
        results.append(out)
    for fused_updates, unfused_updates in zip(*results):
        for key in params:
            # |u| <= η·(|m̂|/(sqrt(v̂)+eps) + λ|θ|); a few float32 ulps of it
            np.testing.assert_allclose(fused_updates[key], unfused_updates[key], rtol=1e-5,
                                       atol=1e-8)


def test_adam_without_params_and_adamw_needs_them():
    grads = {"w": jnp.ones(3)}
    adam = aw.adam(1e-3, fused=True)
    updates, _ = jax.jit(adam.update)(grads, adam.init(grads))
    np.testing.assert_allclose(updates["w"], -1e-3, rtol=1e-6)
    adamw = aw.adamw(1e-3, fused=True)
    with pytest.raises(ValueError, match="parameters"):
        adamw.update(grads, adamw.init(grads))


def test_state_of_other_parameters_is_a_clear_error():
    optimizer = aw.adamw(fused=True)
    state = optimizer.init({"w": jnp.ones(3)})
    with pytest.raises(ValueError, match="init with parameters"):
        optimizer.update({"w": jnp.ones(4)}, state, {"w": jnp.ones(4)})


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(b1=1.0), ValueError, "b1"),
        (dict(b2=float("nan")), ValueError, "b2"),
        (dict(eps=-1e-8), ValueError, "eps"),
        (dict(learning_rate=-1e-3), ValueError, "learning_rate"),
        (dict(weight_decay=-0.1), ValueError, "weight_decay"),
        (dict(eps_mode="keras"), ValueError, "eps_mode"),
        (dict(mu_dtype="int32"), TypeError, "mu_dtype"),
        (dict(nesterov=True, eps_mode="hat"), ValueError, "nesterov"),
    ],
)
def test_bad_arguments_are_named_when_built(kwargs, error, words):
    with pytest.raises(error, match=words):
        aw.adamw(fused=True, **kwargs)


def test_bad_pad_multiple_is_named_when_first_used():
    optimizer = fused_adam_family(1e-3, {}, maximize=False, pad_multiple=0)
    with pytest.raises(ValueError, match="multiple"):
        optimizer.init({"w": jnp.ones(3)})
