"""adamw(fused=True): the same numbers as the unfused chain, the float64 reference and optax, for
every option (low-precision moments, stochastic rounding and master weights included), with the
moments in a few flat buffers."""

from __future__ import annotations

import functools
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import float32_tolerance, gradient_stream, make_params, max_abs_error, trajectory
from hypothesis import given
from hypothesis import strategies as st
from reference import adamw_trajectory
from test_optimizers import OPTIONS as ALIAS_OPTIONS

import adamw_jax as aw
from adamw_jax import lowbit
from adamw_jax.fused.transformation import FusedAdamState, _layout_builder, fused_adam_family

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
        PARAMS,
        GRADS,
        learning_rate=lambda t: float(schedule(t)),
        b1=lambda t: 0.85 + 0.1 * t / STEPS,
        weight_decay=lambda t: decay * (1 + t / STEPS),
        weight_decay_mode=mode,
        peak_learning_rate=1e-2,
    )
    optimizer = aw.adamw(
        schedule,
        b1=lambda t: 0.85 + 0.1 * t / STEPS,
        weight_decay=lambda t: decay * (1 + t / STEPS),
        weight_decay_mode=mode,
        peak_learning_rate=1e-2 if mode == "decoupled" else None,
        fused=True,
    )
    assert max_abs_error(trajectory(optimizer, PARAMS, GRADS), expected) <= float32_tolerance(
        expected
    )


def test_without_bias_correction_matches_reference():
    optimizer = fused_adam_family(1e-2, dict(bias_correction=False), maximize=False)
    expected = adamw_trajectory(PARAMS, GRADS, learning_rate=1e-2, bias_correction=False)
    assert max_abs_error(trajectory(optimizer, PARAMS, GRADS), expected) <= float32_tolerance(
        expected
    )


def test_matches_optax_adamw():
    """The real optax, run on the same stream (optax's eps_root and decay are the same form)."""
    optimizer = optax.adamw(1e-2, b1=0.9, b2=0.99, eps=1e-6, weight_decay=0.1, mask=MASK)
    reference = trajectory(optimizer, PARAMS, GRADS)
    fused = trajectory(
        aw.adamw(1e-2, 0.9, 0.99, 1e-6, weight_decay=0.1, mask=MASK, fused=True), PARAMS, GRADS
    )
    expected = adamw_trajectory(
        PARAMS, GRADS, learning_rate=1e-2, b2=0.99, eps=1e-6, weight_decay=0.1, decay_mask=MASK
    )
    assert max_abs_error(fused, reference) <= float32_tolerance(expected)


def test_moments_are_a_few_flat_buffers_per_dtype_and_mask():
    params = {
        "a": jnp.ones((3, 4), jnp.float32),
        "b": jnp.ones((5,), jnp.bfloat16),
        "c": jnp.ones((), jnp.float32),
        "d": jnp.ones((2, 2), jnp.bfloat16),
        "e": jnp.ones((7,), jnp.float32),
    }
    mask = {"a": True, "b": True, "c": False, "d": True, "e": True}
    optimizer = aw.adamw(1e-3, mask=mask, amsgrad=True, nu_dtype=jnp.float32, fused=True)
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
    state = aw.adamw(1e-3, fused=True, weight_decay=1e-2).init(params)
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
            jax.jit(t.update)(g, s, params) for t, s in zip((padded, plain), states)
        )
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
        np.testing.assert_allclose(
            np.float32(results[0][key]), np.float32(results[1][key]), rtol=2 * 2.0**-8, atol=0
        )


def test_count_saturates():
    optimizer = aw.adamw(1e-3, fused=True, weight_decay=1e-2)
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
    b1=st.floats(0.0, 0.99),
    b2=st.floats(0.5, 0.9999),
    eps=st.sampled_from([1e-8, 1e-4, 1e-1]),
    weight_decay=st.floats(0.0, 0.5),
    amsgrad=st.booleans(),
    nesterov=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_one_step_matches_unfused_for_any_tree(
    shapes, b1, b2, eps, weight_decay, amsgrad, nesterov, seed
):
    rng = np.random.default_rng(seed)
    params = {f"p{i}": jnp.asarray(rng.normal(size=s), jnp.float32) for i, s in enumerate(shapes)}
    grads = [
        jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        for _ in range(3)
    ]
    kwargs = dict(
        b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, nesterov=nesterov
    )
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
            np.testing.assert_allclose(
                fused_updates[key], unfused_updates[key], rtol=1e-5, atol=1e-8
            )


def test_adam_without_params_and_adamw_needs_them():
    grads = {"w": jnp.ones(3)}
    adam = aw.adam(1e-3, fused=True)
    updates, _ = jax.jit(adam.update)(grads, adam.init(grads))
    np.testing.assert_allclose(updates["w"], -1e-3, rtol=1e-6)
    adamw = aw.adamw(1e-3, fused=True, weight_decay=1e-2)
    with pytest.raises(ValueError, match="parameters"):
        adamw.update(grads, adamw.init(grads))


def test_state_of_other_parameters_is_a_clear_error():
    optimizer = aw.adamw(1e-3, fused=True, weight_decay=1e-2)
    state = optimizer.init({"w": jnp.ones(3)})
    with pytest.raises(ValueError, match="init with parameters"):
        optimizer.update({"w": jnp.ones(4)}, state, {"w": jnp.ones(4)})


@pytest.mark.parametrize("native_setting", ["0", "1"])
@pytest.mark.parametrize(
    "leaf, shape", [("small", (2, 4)), ("small", (9,)), ("large", (256, 257)), ("large", (65536,))]
)
def test_gradients_of_other_shapes_are_named_at_trace_time(
    leaf, shape, native_setting, monkeypatch
):
    """A gradient whose shape is not its parameter's (same size or not, in a packed or an own
    buffer, kernel or XLA pass): a ValueError naming the leaf path while tracing, on both doors,
    instead of an FFI aliasing error or a broadcast failure."""
    monkeypatch.setenv(aw.native.ENVIRONMENT_VARIABLE, native_setting)
    params = {"layer": {"small": jnp.ones(8), "large": jnp.ones((256, 256))}}
    grads = {"layer": {**params["layer"], leaf: jnp.ones(shape)}}
    optimizer = aw.adamw(1e-3, fused=True)
    state = optimizer.init(params)
    message = (
        rf"gradient at \['layer'\]\['{leaf}'\] has shape {re.escape(str(shape))} but the "
        rf"parameter there has shape {re.escape(str(params['layer'][leaf].shape))}: pass "
        "the gradients of the parameters"
    )
    for door in (optimizer.update, functools.partial(aw.update_and_apply, optimizer)):
        with pytest.raises(ValueError, match=message):
            jax.eval_shape(door, grads, state, params)


def test_gradients_of_another_dtype_step_as_on_the_unfused_path():
    """float32 gradients of bfloat16 parameters and bfloat16 ones of float32 parameters are
    read in float32 and rounded to the parameter's dtype, as unfused: the same parameters."""
    params = {"w": jnp.linspace(-1, 1, 8, dtype=jnp.bfloat16), "b": jnp.linspace(0, 1, 3)}
    grads = {"w": jnp.linspace(1, 2, 8), "b": jnp.linspace(-1, 0, 3, dtype=jnp.bfloat16)}
    results = []
    for fused in (False, True):
        optimizer = aw.adamw(1e-2, fused=fused)
        updates, _ = jax.jit(optimizer.update)(grads, optimizer.init(params), params)
        results.append(optax.apply_updates(params, updates))
    for key in params:
        assert results[1][key].dtype == params[key].dtype
        # one float32 rounding of the update apart (see test_one_step_matches_unfused_for_any_tree)
        np.testing.assert_allclose(
            np.asarray(results[1][key], np.float32),
            np.asarray(results[0][key], np.float32),
            rtol=1e-6,
        )


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
        aw.adamw(**{"learning_rate": 1e-3, "fused": True, **kwargs})


def test_bad_pad_multiple_is_named_when_first_used():
    optimizer = fused_adam_family(1e-3, {}, maximize=False, pad_multiple=0)
    with pytest.raises(ValueError, match="multiple"):
        optimizer.init({"w": jnp.ones(3)})


def _run(optimizer, params, grads, dtype=jnp.float32):
    """The parameters and state after the jitted steps of ``optimizer`` over ``grads``."""
    params = {k: jnp.asarray(v, dtype) for k, v in params.items()}
    state, step = optimizer.init(params), jax.jit(optimizer.update)
    for g in grads:
        updates, state = step({k: jnp.asarray(v, jnp.float32) for k, v in g.items()}, state, params)
        params = aw.apply_updates(params, updates)
    return params, state


# Blockwise formats: "big" has a buffer of its own (66000 elements, not a multiple of 256), "mid"
# and "mid2" (>= 4096) share a block-aligned buffer, "s1" and "s2" (< 4096 each, 4300 together)
# share one the unfused path would keep in float32 leaf by leaf.
BLOCK_SHAPES = {
    "big": (300, 220),
    "mid": (70, 71),
    "mid2": (4100,),
    "s1": (50, 50),
    "s2": (40, 45),
    "b": (5,),
}
BLOCK_MASK = {"big": True, "mid": True, "mid2": True, "s1": True, "s2": True, "b": False}


def _stored_leaf(stored, slot=None):
    """What a state holds for one leaf: ``(codes, scales)`` or the flat values; with ``slot``,
    the leaf's part of a fused group buffer."""
    if isinstance(stored, lowbit.BlockwiseArray):
        first = 0 if slot is None else slot.offset // lowbit.BLOCK_SIZE
        rows = (
            slice(0, None) if slot is None else slice(first, first + lowbit.block_count(slot.size))
        )
        return np.asarray(stored.values[rows]), np.asarray(stored.scales[rows])
    flat = np.asarray(stored, np.float32).reshape(-1)
    return (flat,) if slot is None else (flat[slot.offset : slot.offset + slot.size],)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, "int8"])
def test_low_precision_moments_store_what_the_unfused_chain_stores(dtype):
    """m and v come from the same float32 formula and the same decoded inputs, are rounded by the
    same encoder, and each leaf's blocks are the unfused leaf's blocks (block-aligned leaves,
    float32 below 4096 elements), so every stored code, scale and value is identical after five
    steps; θ differs by the float32 rounding of the update only."""
    params = make_params(3, BLOCK_SHAPES)
    grads = gradient_stream(params, 5, seed=5)
    kwargs = dict(weight_decay=0.1, mask=BLOCK_MASK, mu_dtype=dtype, nu_dtype=dtype, amsgrad=True)
    fused_params, fused = _run(aw.adamw(1e-2, fused=True, **kwargs), params, grads)
    unfused_params, unfused = _run(aw.adamw(1e-2, **kwargs), params, grads)
    adam = unfused[0]
    layout = _layout_builder(True, BLOCK_MASK, 1, blocks=dtype != jnp.bfloat16)(fused_params)
    # groups: b, big, mid+mid2, s1+s2 (bf16, no blocks: b, big, the rest)
    assert len(fused.mu) == (3 if dtype == jnp.bfloat16 else 4)
    for key, slot in zip(sorted(params), layout.slots):  # a dict's leaves are in key order
        for moment in ("mu", "nu", "nu_max"):
            got = _stored_leaf(getattr(fused, moment)[slot.group], slot)
            expected = _stored_leaf(getattr(adam, moment)[key])
            assert len(got) == len(expected)
            for a, b in zip(got, expected):
                np.testing.assert_array_equal(a, b)
    tolerance = float32_tolerance([jax.device_get(unfused_params)])
    for key in params:
        np.testing.assert_allclose(fused_params[key], unfused_params[key], rtol=0, atol=tolerance)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, "int8"])
def test_stochastic_rounding_stores_a_neighbour_of_the_exact_moment(dtype):
    """One step from zero: the update comes from the unrounded moments (as unfused, up to float32
    rounding); the stored m is one of the two representable values around the exact
    ``(1-β1)·g``, and is the farther one for a good share of elements (E = 1/4 for uniform
    fractions; nearest rounding: never)."""
    params = {"w": np.zeros(5000)}
    grads = gradient_stream(params, 1, seed=7)
    kwargs = dict(mu_dtype=dtype, nu_dtype=dtype, stochastic_rounding=True)
    _, exact = _run(aw.adamw(1e-2, fused=True), params, grads)
    _, nearest = _run(aw.adamw(1e-2, fused=True, mu_dtype=dtype, nu_dtype=dtype), params, grads)
    sr_params, sr = _run(aw.adamw(1e-2, fused=True, **kwargs), params, grads)
    unfused_params, _ = _run(aw.adamw(1e-2, **kwargs), params, grads)
    np.testing.assert_allclose(sr_params["w"], unfused_params["w"], rtol=2e-7, atol=0)

    def decoded(state):
        stored = state.inner_state.mu[0] if hasattr(state, "inner_state") else state.mu[0]
        if isinstance(stored, lowbit.BlockwiseArray):
            return np.asarray(lowbit.decode_blocks(stored, 5000)), np.asarray(stored.scales)
        return np.asarray(stored, np.float32), None

    m, (m_near, _), (m_sr, scales) = decoded(exact)[0], decoded(nearest), decoded(sr)
    if scales is None:  # the bf16 neighbours of m: nearest and the next one towards m
        other = np.asarray(
            jnp.nextafter(
                jnp.asarray(m_near, jnp.bfloat16),
                jnp.asarray(np.where(m > m_near, np.inf, -np.inf), jnp.bfloat16),
            ),
            np.float32,
        )
        assert np.all((m_sr == m_near) | (m_sr == other))
    else:  # the widest gap of the signed code is 0.9/64 of the block's scale
        bound = np.repeat(scales, lowbit.BLOCK_SIZE)[:5000] * 0.9 / 64
        assert np.all(np.abs(m_sr - m) <= bound)
    assert 0.15 < np.mean(m_sr != m_near) < 0.35


def test_master_weights_follow_the_unfused_master():
    """bf16 parameters with float32 masters: the fused masters match the unfused ones within
    float32 rounding, and the parameters are their nearest bf16 rounding."""
    params = make_params(1, {"w": (16, 12), "b": (12,)})
    params = {k: np.asarray(jnp.asarray(v, jnp.bfloat16), np.float64) for k, v in params.items()}
    grads = gradient_stream(params, 20, seed=4)
    runs = [
        _run(
            aw.adamw(1e-2, weight_decay=0.1, master_weights=True, fused=fused),
            params,
            grads,
            jnp.bfloat16,
        )
        for fused in (True, False)
    ]
    (fused_params, fused), (_, unfused) = runs
    assert isinstance(fused.inner_state, FusedAdamState)
    tolerance = float32_tolerance([jax.device_get(unfused.master)] * len(grads))
    for key in params:
        np.testing.assert_allclose(fused.master[key], unfused.master[key], rtol=0, atol=tolerance)
        np.testing.assert_array_equal(fused_params[key], fused.master[key].astype(jnp.bfloat16))


EXTREME_GRADIENTS = np.array(
    [np.finfo(np.float32).max, -np.finfo(np.float32).max, 1e30, -1e30, 1e-30, -1e-30, 0.0, 1.0],
    np.float32,
)


@pytest.mark.parametrize("eps", [1e-8, 0.0])
@pytest.mark.parametrize(
    "options",
    [{}, dict(nesterov=True, amsgrad=True), dict(eps_mode="hat")],
    ids=["adam", "nesterov_amsgrad", "hat"],
)
def test_extreme_gradients_step_like_the_unfused_chain(eps, options):
    """|g| from float32's maximum down to 1e-30 and 0, with eps = 0 too: the gradient is clamped
    before squaring and m/0 is sign(m), so each step is finite with the gradient's sign, and
    equal to the unfused one but for the float32 rounding of the scalar factors (a few ulps)."""
    params = {"w": jnp.ones(EXTREME_GRADIENTS.shape, jnp.float32)}
    grads = [{"w": EXTREME_GRADIENTS}] * 3
    updates = []
    for fused in (True, False):
        optimizer = aw.adamw(1e-2, eps=eps, weight_decay=0.0, fused=fused, **options)
        state, step, out = optimizer.init(params), jax.jit(optimizer.update), []
        for g in grads:
            u, state = step(g, state, params)
            out.append(np.asarray(u["w"]))
        updates.append(np.stack(out))
    assert np.all(np.isfinite(updates[0]))
    signs = np.broadcast_to(np.sign(EXTREME_GRADIENTS), updates[0].shape)
    np.testing.assert_array_equal(np.sign(updates[0]), -signs)
    np.testing.assert_allclose(updates[0], updates[1], rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_integer_and_bool_leaves_are_named(dtype):
    with pytest.raises(TypeError, match=r"params\['step'\]"):
        aw.adamw(1e-3, fused=True).init({"w": jnp.ones(2), "step": jnp.zeros((), dtype)})


def test_building_starts_no_backend():
    """jax.distributed.initialize must run before the first array, and may come after the
    optimizer is built; the probe is checked to see an array start the backend."""
    code = (
        "import jax.numpy as jnp, adamw_jax as aw\n"
        "from jax._src import xla_bridge\n"
        "aw.adamw(lambda t: 1e-3, b1=0.9, b2=0.99, fused=True, amsgrad=True, mu_dtype='int8',\n"
        "         nu_dtype=jnp.float16, stochastic_rounding=True, master_weights=True,\n"
        "         weight_decay_mode='decoupled', peak_learning_rate=1e-3)\n"
        "aw.adam(1e-3, fused=True, nesterov=True, eps_mode='adam')\n"
        "assert not xla_bridge._backends, 'a backend started while building'\n"
        "jnp.ones(1)\n"
        "assert xla_bridge._backends\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
