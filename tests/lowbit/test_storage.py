"""lowbit: dynamic code tables, blockwise int8/float16 round trips, stochastic rounding, state
bytes per parameter, one step against float32 state, bf16 parameters (master weights and
stochastic rounding)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import gradient_stream, make_params
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from reference import dynamic_code_value

import adamw_jax as aw
from adamw_jax import lowbit
from adamw_jax.lowbit import _quantization

# Values spread over eight decades with both signs and exact zeros: every decade of the code.
spread_values = hnp.arrays(
    np.float32,
    700,
    elements=st.one_of(
        st.just(0.0),
        st.floats(2.0**-20, 2.0**7, width=32),
        st.floats(-(2.0**7), -(2.0**-20), width=32),
    ),
)


@functools.partial(jax.jit, static_argnums=1)
def _roundtrip_jitted(x: jax.Array, values_dtype) -> jax.Array:
    return lowbit.decode_blocks(lowbit.encode_blocks(x, values_dtype), x.size)


def _roundtrip(x: np.ndarray, values_dtype) -> np.ndarray:
    return np.asarray(_roundtrip_jitted(jnp.asarray(x), values_dtype))


def _blocks(x: np.ndarray) -> np.ndarray:
    padded = np.pad(x, (0, lowbit.block_count(x.size) * lowbit.BLOCK_SIZE - x.size))
    return padded.reshape(-1, lowbit.BLOCK_SIZE)


@pytest.mark.parametrize("signed", [True, False])
def test_code_table_is_the_bitwise_dynamic_tree_code(signed):
    """Every 8-bit pattern read bit by bit (the oracle) gives exactly the table's values."""
    decoded = {dynamic_code_value(byte, signed=signed) for byte in range(256)}
    table = lowbit.dynamic_code(signed=signed)
    assert len(table) == (255 if signed else 256) and np.all(np.diff(table) > 0)
    np.testing.assert_allclose(np.sort(list(decoded)), table, rtol=1e-7)
    assert table[-1] == 1.0 and np.min(np.abs(table[table != 0])) == pytest.approx(
        1e-6 if signed else 1e-7
    )


@pytest.mark.parametrize("values_dtype", [jnp.int8, jnp.uint8])
@given(x=spread_values)
def test_int8_round_trip_is_the_nearest_code_per_block(values_dtype, x):
    """Each decoded value is a nearest code entry times the block's absmax; the per-block error
    is at most half the widest gap of the table (0.7% of the block's absmax)."""
    x = np.abs(x) if values_dtype == jnp.uint8 else x
    table = lowbit.dynamic_code(signed=values_dtype == jnp.int8).astype(np.float64)
    blocks, decoded = _blocks(x), _blocks(_roundtrip(x, values_dtype))
    scale = np.max(np.abs(blocks), axis=1, keepdims=True)
    scale = np.where(scale > 0, scale, 1.0)
    normalized = (blocks.astype(np.float32) / scale.astype(np.float32)).astype(np.float64)
    best = np.min(np.abs(normalized[..., None] - table), axis=-1)
    got = np.abs(decoded / scale - normalized)
    if values_dtype == jnp.uint8:  # positive values below the smallest code round up to it
        best = np.where((normalized > 0) & (normalized < table[1]), table[1] - normalized, best)
        assert np.all((decoded > 0) == (blocks > 0))
    assert np.all(got <= best + 1e-6)
    assert np.all(np.max(got, axis=1) <= 0.5 * np.max(np.diff(table)) + 1e-6)


def _code_index_by_gathers(normalized, code, uniform):
    """The code index as computed before issue 16 (kept as the reference): decade by compares,
    slope and offset gathered per decade, the bracket fixed and rounded with four gathers from
    the table."""
    signed = bool(code[0] < 0)
    magnitudes = code[code > 0]
    with_zero = jnp.asarray(np.concatenate([[0.0], magnitudes]).astype(np.float32))
    magnitude = jnp.abs(normalized)
    top_bits = 6 if signed else 7
    zeros = sum(
        (magnitude < np.float32(10.0**-z)).astype(jnp.int32) for z in range(1, top_bits + 1)
    )
    steps = 2.0 ** (top_bits - np.arange(top_bits + 1))
    slope = jnp.asarray(10.0 ** np.arange(top_bits + 1) / 0.9 * steps, jnp.float32)[zeros]
    offset = jnp.asarray(0.1 / 0.9 * steps - steps + 2, jnp.float32)[zeros]
    low = jnp.clip(jnp.floor(magnitude * slope - offset), -1, magnitudes.size - 2).astype(jnp.int32)
    low = jnp.maximum(low - (with_zero[low + 1] > magnitude), -1)
    low = jnp.minimum(low + (with_zero[low + 2] < magnitude), magnitudes.size - 2)
    lo, hi = with_zero[low + 1], with_zero[low + 2]
    fraction = (magnitude - lo) / (hi - lo)
    up = fraction >= 0.5 if uniform is None else uniform < fraction
    if not signed:
        up = up | ((low == -1) & (magnitude > 0))
    index = low + 1 + up.astype(jnp.int32)
    return jnp.where(normalized < 0, -index, index) + (code.size // 2 if signed else 0)


def _hard_code_inputs(code: np.ndarray) -> np.ndarray:
    """Every entry, every midpoint (the ties), three float32 ulps either side of each, the decade
    tops, 0, 1, subnormals and NaN, plus every 1009th float32 bit pattern in [0, 1]."""
    entries = code[code >= 0]
    midpoints = ((entries[1:].astype(np.float64) + entries[:-1]) / 2).astype(np.float32)
    tops = np.float32(10.0 ** -np.arange(10))
    special = np.float32([0.0, 1.0, 1e-38, 1e-40, 2**-149, np.nan])
    points = np.concatenate([entries, midpoints, tops, special])
    near, up, down = [points], points, points
    for _ in range(3):
        up, down = np.nextafter(up, np.float32(2)), np.nextafter(down, np.float32(-1))
        near += [up, down]
    sweep = np.arange(0, 0x3F800001, 1009, dtype=np.uint32).view(np.float32)
    values = np.concatenate(near + [sweep])
    values = values[~(np.abs(values) > 1)]  # NaN kept
    return np.concatenate([values, -values]) if code[0] < 0 else np.abs(values)


@pytest.mark.parametrize("signed", [True, False])
def test_code_index_is_the_nearest_entry_bit_for_bit_as_before(signed):
    """The computed index (selects, no gathers) equals the previous gather-based one on ties,
    exact entries and their neighbours, 0, ±1, subnormals, NaN and a sweep of 1M float32 values;
    and each index is a nearest entry of the table (ties up)."""
    code = lowbit.dynamic_code(signed=signed)
    x = _hard_code_inputs(code)
    got = np.asarray(jax.jit(lambda v: _quantization._code_index(v, code, None))(x))
    want = np.asarray(jax.jit(lambda v: _code_index_by_gathers(v, code, None))(x))
    np.testing.assert_array_equal(got, want)
    finite = ~np.isnan(x)
    error = np.abs(code[got[finite]].astype(np.float64) - x[finite])
    best = np.min(np.abs(code.astype(np.float64)[None, :] - x[finite, None][:200_000]), axis=1)
    if not signed:  # positive values below the smallest entry round up to it
        small = (x[finite][:200_000] > 0) & (x[finite][:200_000] < code[1])
        best = np.where(small, code[1] - x[finite][:200_000], best)
    np.testing.assert_array_equal(error[:200_000] <= best * (1 + 2**-20) + 2**-40, True)


@pytest.mark.parametrize("signed", [True, False])
@given(
    x=hnp.arrays(np.float32, 512, elements=st.floats(-1, 1, width=32)), seed=st.integers(0, 2**16)
)
def test_stochastic_code_index_draws_as_before(signed, x, seed):
    """With the same uniform noise the stochastic index is the previous one, draw for draw."""
    code = lowbit.dynamic_code(signed=signed)
    x = x if signed else np.abs(x)
    uniform = jax.random.uniform(jax.random.key(seed), x.shape)
    got = jax.jit(lambda v, u: _quantization._code_index(v, code, u))(x, uniform)
    want = jax.jit(lambda v, u: _code_index_by_gathers(v, code, u))(x, uniform)
    np.testing.assert_array_equal(got, want)


@given(
    x=hnp.arrays(np.float32, 8, elements=st.floats(width=32, allow_nan=False, allow_infinity=False))
)
def test_bfloat16_stochastic_rounding_is_exactly_unbiased(x):
    """Over all 2^16 values of the 16 random bits, the mean of the bf16 rounding of ``x`` is
    ``x`` exactly (float64 mean, exact for 2^16 bf16 values); beyond bf16's largest finite value
    it saturates (tested above), subnormals may be flushed by XLA."""
    uniform = jnp.arange(2**16, dtype=jnp.float32) / 2**16
    draws = jax.jit(
        jax.vmap(
            lambda u: lowbit.round_to_dtype(jnp.asarray(x), jnp.bfloat16, jnp.full(x.shape, u))
        )
    )(uniform)
    draws = np.asarray(draws.astype(jnp.float32), np.float64)
    magnitude = np.abs(x)
    inside = (magnitude <= float(jnp.finfo(jnp.bfloat16).max)) & (
        (magnitude >= np.finfo(np.float32).tiny) | (x == 0)
    )
    np.testing.assert_array_equal(draws.mean(axis=0)[inside], np.float64(x)[inside])
    assert np.all(np.isfinite(draws))


def test_rounding_noise_is_uniform_and_uncorrelated():
    """2^20 draws per seed: 64-bin histogram within 5 standard deviations of flat, mean and
    variance of U[0, 1), and neighbouring elements, two seeds (leaves/steps) uncorrelated
    (|r| <= 5/sqrt(n))."""
    n = 2**20
    seeds = lowbit.step_keys(jnp.int32(7), lowbit.FIRST_MOMENT_STREAM, 2)
    a, b = (np.asarray(_quantization.uniform_noise(seed, (n,)), np.float64) for seed in seeds)
    counts = np.histogram(a, bins=64, range=(0, 1))[0]
    expected = n / 64
    assert np.all(np.abs(counts - expected) <= 5 * np.sqrt(expected))
    assert abs(a.mean() - 0.5) <= 5 * np.sqrt(1 / 12 / n) and abs(a.var() - 1 / 12) <= 1e-3
    assert np.all((a >= 0) & (a < 1))
    for u, w in ((a[1:], a[:-1]), (a, b)):
        assert abs(np.corrcoef(u, w)[0, 1]) <= 5 / np.sqrt(n)


@given(x=spread_values)
def test_float16_round_trip_uses_an_exact_power_of_two_scale(x):
    blocks, decoded = _blocks(x), _blocks(_roundtrip(x, jnp.float16))
    exponent = np.frexp(np.max(np.abs(blocks), axis=1, keepdims=True))[1]
    scale = np.where(np.any(blocks != 0, axis=1, keepdims=True), np.ldexp(1.0, exponent), 1.0)
    expected = (blocks / scale).astype(np.float16).astype(np.float64) * scale
    smallest = float(np.finfo(np.float16).smallest_subnormal)
    nonzero_floor = np.where(blocks != 0, np.copysign(smallest, blocks) * scale, 0.0)
    expected = np.where((expected == 0) & (blocks != 0), nonzero_floor, expected)
    np.testing.assert_array_equal(decoded, expected)


_round_jitted = jax.jit(lowbit.round_to_dtype, static_argnums=1)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@given(
    x=hnp.arrays(np.float32, 64, elements=st.floats(-1e4, 1e4, width=32)), seed=st.integers(0, 99)
)
def test_stochastic_rounding_picks_one_of_the_two_neighbours(dtype, x, seed):
    x = jnp.asarray(x)
    uniform = jax.random.uniform(jax.random.key(seed), x.shape)
    rounded = _round_jitted(x, dtype, uniform).astype(jnp.float32)
    down = jnp.nextafter(x.astype(dtype), jnp.asarray(-jnp.inf, dtype)).astype(jnp.float32)
    up = jnp.nextafter(x.astype(dtype), jnp.asarray(jnp.inf, dtype)).astype(jnp.float32)
    nearest = x.astype(dtype).astype(jnp.float32)
    assert bool(
        jnp.all(
            (rounded == nearest) | ((rounded == down) & (down < x)) | ((rounded == up) & (up > x))
        )
    )
    assert bool(jnp.all(jnp.where(nearest == x, rounded == x, True)))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_stochastic_rounding_is_unbiased_and_keeps_non_finite_values(dtype):
    """1 + 2^-10 lies a quarter of the way from 1 to the next bf16 (8 bits); the mean of 2^16
    draws is within 5 standard errors (ulp·sqrt(p(1-p)/n)) of the exact value."""
    x = jnp.full((2**16,), 1 + 2**-10 if dtype == jnp.bfloat16 else 1 + 2**-13, jnp.float32)
    uniform = jax.random.uniform(jax.random.key(0), x.shape)
    mean = float(jnp.mean(lowbit.round_to_dtype(x, dtype, uniform).astype(jnp.float32)))
    ulp = float(jnp.finfo(dtype).eps)
    assert abs(mean - float(x[0])) <= 5 * ulp * np.sqrt(0.25 * 0.75 / x.size)
    special = jnp.array([jnp.nan, jnp.inf, -jnp.inf, 0.0])
    out = lowbit.round_to_dtype(special, dtype, jnp.full(special.shape, 0.99))
    np.testing.assert_array_equal(np.float32(out), np.float32(special.astype(dtype)))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@given(
    exponent=hnp.arrays(np.float32, 16, elements=st.floats(-45, 38.5, width=32)),
    negative=hnp.arrays(np.bool_, 16),
    stochastic=st.booleans(),
)
def test_rounding_saturates_instead_of_overflowing(dtype, exponent, negative, stochastic):
    """Any finite float32 (1e-45 … 3.4e38) rounds to a finite value: beyond the format's largest
    finite value (65504 in float16; bfloat16's 3.3895e38 is below float32's) it saturates there;
    inside, rounding is unchanged."""
    x = np.where(negative, -1.0, 1.0) * np.minimum(10.0 ** exponent.astype(np.float64), 3.4e38)
    x = jnp.asarray(x.astype(np.float32))
    uniform = jax.random.uniform(jax.random.key(0), x.shape) if stochastic else None
    out = np.float32(_round_jitted(x, dtype, uniform))
    largest = float(jnp.finfo(dtype).max)
    assert np.all(np.isfinite(out))
    beyond = np.abs(np.float64(x)) >= largest
    np.testing.assert_array_equal(out[beyond], np.sign(np.float32(x[beyond])) * np.float32(largest))
    magnitude, tiny = np.abs(np.float64(x)), float(jnp.finfo(dtype).tiny)
    assert np.all(np.abs(out[magnitude < tiny]) <= tiny)  # subnormals: kept or flushed by XLA
    if not stochastic:
        inside = (magnitude >= tiny) & (magnitude < largest * (1 - float(jnp.finfo(dtype).eps)))
        np.testing.assert_array_equal(out[inside], np.float32(x[inside].astype(dtype)))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_add_and_round_saturates_at_the_parameter_format(dtype):
    largest = float(jnp.finfo(dtype).max)
    base = jnp.asarray([largest, -largest, 1.0], dtype)
    update = jnp.asarray([largest, -largest, 2.0], jnp.float32)
    for key in (None, jnp.uint32(7)):
        out = np.float32(jax.jit(lowbit.add_and_round, static_argnums=2)(base, update, dtype, key))
        np.testing.assert_array_equal(out, [largest, -largest, 3.0])
    params = {"w": base}
    out = np.float32(jax.jit(aw.apply_updates)(params, {"w": update})["w"])
    np.testing.assert_array_equal(out, [largest, -largest, 3.0])


@pytest.mark.parametrize(
    "mu_dtype, nu_dtype, expected",
    [
        (jnp.float32, jnp.float32, 8.0),
        (jnp.bfloat16, jnp.bfloat16, 4.0),
        (jnp.bfloat16, jnp.float16, 4.0 + 4 / 256),
        ("int8", "int8", 2.0 + 8 / 256),
    ],
)
def test_state_bytes_per_parameter_measured_from_the_arrays(mu_dtype, nu_dtype, expected):
    params = {"w": jax.ShapeDtypeStruct((1024, 1024), jnp.float32)}
    state = jax.eval_shape(aw.scale_by_adam(mu_dtype=mu_dtype, nu_dtype=nu_dtype).init, params)
    moments = sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state))
    assert (moments - 4) / 2**20 == expected  # minus the int32 count


def test_small_tensors_keep_float32_and_large_ones_are_blockwise():
    params = {"small": jnp.zeros((4095,)), "large": jnp.zeros((4096,))}
    state = aw.scale_by_adam(mu_dtype="int8", nu_dtype="int8").init(params)
    assert state.mu["small"].dtype == jnp.float32 and state.nu["small"].dtype == jnp.float32
    assert (
        state.mu["large"].values.dtype == jnp.int8 and state.nu["large"].values.dtype == jnp.uint8
    )
    assert (
        state.mu["large"].values.shape == (16, 256)
        and state.mu["large"].scales.dtype == jnp.float32
    )


@functools.cache
def _one_step_setup(mu_dtype, nu_dtype):
    """Jitted pieces, built once per format: low update, float32 update, decoders."""
    low = aw.scale_by_adam(mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    mu_storage = lowbit.moment_storage(mu_dtype, argument="mu_dtype", second_moment=False)
    nu_storage = lowbit.moment_storage(nu_dtype, argument="nu_dtype", second_moment=True)
    first_step = jax.jit(lambda g: low.update(g, low.init(g))[1])
    return (
        jax.jit(low.update),
        jax.jit(aw.scale_by_adam().update),
        first_step,
        mu_storage,
        nu_storage,
        jax.jit(mu_storage.decode),
        jax.jit(nu_storage.decode),
    )


@pytest.mark.parametrize(
    "mu_dtype, nu_dtype",
    [("int8", "int8"), (jnp.bfloat16, jnp.bfloat16), (jnp.bfloat16, jnp.float16)],
)
@given(seed=st.integers(0, 2**16), log_scale=st.floats(-6, 2))
def test_one_step_differs_from_float32_state_by_at_most_the_quantization_step(
    mu_dtype, nu_dtype, seed, log_scale
):
    """From the same (decoded) state and gradient, the direction is the same and the new
    stored moments are the float32 ones rounded once: within half a step of the format."""
    low_update, full_update, first_step, mu_storage, nu_storage, mu_decode, nu_decode = (
        _one_step_setup(mu_dtype, nu_dtype)
    )
    rng = np.random.default_rng(seed)
    shape = (40, 130)  # 5200 elements: blockwise, with a padded last block
    g = {"w": jnp.asarray(rng.standard_t(3, shape) * 10**log_scale, jnp.float32)}
    state = first_step(g)  # a realistic low-precision state
    full_state = state._replace(mu=mu_decode(state.mu, g), nu=nu_decode(state.nu, g))
    g2 = {"w": g["w"] * jnp.asarray(rng.uniform(-2, 2, shape), jnp.float32)}
    u_low, low_state = low_update(g2, state)
    u_full, next_full = full_update(g2, full_state)
    # b1·m + (1-b1)·g can cancel, and XLA fuses the two programs differently (FMA or not):
    # allow a few float32 ulps of the terms (|u| <= ~3 here), not of the result.
    np.testing.assert_allclose(u_low["w"], u_full["w"], rtol=1e-6, atol=1e-6)
    for stored, exact, name in (
        (low_state.mu, next_full.mu, "mu"),
        (low_state.nu, next_full.nu, "nu"),
    ):
        decode = mu_decode if name == "mu" else nu_decode
        got = np.asarray(decode(stored, g)["w"], np.float64)
        want = np.asarray(exact["w"], np.float64)
        if isinstance(stored["w"], lowbit.BlockwiseArray):
            magnitude = np.sqrt(want) if name == "nu" else want
            half_gap = 0.5 * np.max(np.diff(lowbit.dynamic_code(signed=name == "mu")))
            if stored["w"].values.dtype == jnp.float16:
                half_gap = 2.0**-11  # half an ulp of float16 below the power-of-two scale
            step = half_gap * np.max(np.abs(_blocks(magnitude.ravel())), axis=1)
            got_m = np.sqrt(got) if name == "nu" else got
            error = np.max(np.abs(_blocks((got_m - magnitude).ravel())), axis=1)
            assert np.all(error <= step * (1 + 1e-5)), name
        else:
            np.testing.assert_allclose(got, want, rtol=2.0**-8, atol=0, err_msg=name)


def test_positive_second_moment_never_decodes_to_zero():
    v = jnp.concatenate([jnp.array([1e6]), jnp.full((4095,), 1e-30)])
    for dtype in ("int8", jnp.float16):
        storage = lowbit.moment_storage(dtype, argument="nu_dtype", second_moment=True)
        stored = storage.encode({"v": v}, storage.init({"v": v}), jnp.int32(1), 0)
        assert bool(jnp.all(storage.decode(stored, {"v": v})["v"] > 0)), dtype


@pytest.mark.parametrize("mu_dtype, nu_dtype", [("int8", "int8"), (jnp.bfloat16, jnp.float16)])
def test_training_with_low_precision_state_follows_float32(mu_dtype, nu_dtype):
    """200 AdamW steps on the drifting gradient stream: the parameters move by ~lr per step;
    the low-precision state keeps them within 5% of that total motion of the float32 run."""
    params = make_params(0, {"w": (64, 80), "b": (7,)})
    grads = gradient_stream(params, 200, seed=3)
    runs = {}
    for name, kwargs in (("fp32", {}), ("low", dict(mu_dtype=mu_dtype, nu_dtype=nu_dtype))):
        runs[name] = _train(aw.adamw(1e-2, weight_decay=0.1, **kwargs), params, grads)
    motion = np.abs(runs["fp32"]["w"] - params["w"]).mean()
    assert np.abs(runs["low"]["w"] - runs["fp32"]["w"]).mean() <= 0.05 * motion


def _train(optimizer, params, grads, dtype=jnp.float32):
    p = {k: jnp.asarray(v, dtype) for k, v in params.items()}
    stacked = {k: jnp.asarray(np.stack([g[k] for g in grads]), jnp.float32) for k in params}

    @jax.jit
    def run(p, stacked):
        def step(carry, g):
            p, state = carry
            updates, state = optimizer.update(g, state, p)
            return (aw.apply_updates(p, updates), state), None

        return jax.lax.scan(step, (p, optimizer.init(p)), stacked)[0]

    final, state = run(p, stacked)
    return {k: np.asarray(v, np.float64) for k, v in final.items()} | {"state": state}


def test_master_weights_follow_float32_adamw_bit_for_bit():
    """bf16 params, float32 gradients: the master copy is exactly the float32 AdamW run (weight
    decay acts on it too) and the parameters are its nearest bf16 rounding."""
    params = make_params(1, {"w": (16, 12), "b": (12,)})
    params = {k: np.asarray(jnp.asarray(v, jnp.bfloat16), np.float64) for k, v in params.items()}
    grads = gradient_stream(params, 100, seed=4)
    optimizer = dict(learning_rate=1e-2, weight_decay=0.1)
    full = _train(aw.adamw(**optimizer), params, grads)
    low = _train(aw.adamw(**optimizer, master_weights=True), params, grads, jnp.bfloat16)
    master = low["state"].master
    for key in ("w", "b"):
        np.testing.assert_array_equal(np.asarray(master[key]), full[key].astype(np.float32))
        np.testing.assert_array_equal(
            low[key], np.asarray(master[key].astype(jnp.bfloat16), np.float64)
        )


@pytest.mark.parametrize("how", ["apply_updates", "adamw"])
def test_stochastic_rounding_keeps_bf16_params_learning_below_half_an_ulp(how):
    """θ = 1 in bf16 (ulp 2^-7) and a constant step of -1e-4 (1/78 ulp): nearest rounding never
    moves θ; stochastic rounding moves it by 1e-4 per step on average. Over 500 steps and 4096
    elements the mean moves 0.05 ± 5 standard errors (ulp·sqrt(500/4)/sqrt(4096) each)."""
    steps, size = 500, 4096
    params = {"w": jnp.ones((size,), jnp.bfloat16)}
    moved = {}
    for stochastic in (False, True):
        if how == "apply_updates":

            def step(p, index, stochastic=stochastic):
                update = {"w": jnp.full((size,), -1e-4, jnp.float32)}
                return aw.apply_updates(
                    p, update, stochastic_rounding=stochastic, step=index if stochastic else None
                ), None

            final = jax.jit(lambda p: jax.lax.scan(step, p, jnp.arange(steps))[0])(params)
        else:  # sign-constant gradient: Adam's step is exactly lr
            final = {
                "w": jnp.asarray(
                    _train(
                        aw.adam(1e-4, stochastic_rounding=stochastic),
                        {"w": np.ones(size)},
                        [{"w": np.ones(size)}] * steps,
                        jnp.bfloat16,
                    )["w"]
                )
            }
        moved[stochastic] = 1.0 - float(jnp.mean(final["w"].astype(jnp.float32)))
    assert moved[False] == 0.0
    assert abs(moved[True] - steps * 1e-4) <= 5 * 2**-7 * np.sqrt(steps / 4) / np.sqrt(size)


def test_stochastic_rounding_is_reproducible_from_the_step():
    p = {"w": jnp.ones((256,), jnp.bfloat16)}
    u = {"w": jnp.full((256,), 1e-3, jnp.float32)}
    first, again, other = (
        aw.apply_updates(p, u, stochastic_rounding=True, step=s) for s in (3, 3, 4)
    )
    np.testing.assert_array_equal(first["w"], again["w"])
    assert not np.array_equal(first["w"], other["w"])


def test_amsgrad_and_stochastic_moments_run_jitted_with_int8_state():
    g = {"w": jnp.linspace(-1.0, 1.0, 5000)}
    opt = aw.adamw(1e-3, amsgrad=True, mu_dtype="int8", nu_dtype="int8", stochastic_rounding=True)
    state = opt.init(g)
    for _ in range(3):
        updates, state = jax.jit(opt.update)(g, state, g)
    inner = state.inner_state[0]
    assert inner.nu_max["w"].values.dtype == jnp.uint8
    assert bool(jnp.all(jnp.isfinite(updates["w"]))) and int(inner.count) == 3


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(mu_dtype="int4"), TypeError, "mu_dtype.*'int8'"),
        (dict(nu_dtype=jnp.int32), TypeError, "nu_dtype.*'int8'"),
    ],
)
def test_bad_storage_is_named_when_built(kwargs, error, words):
    with pytest.raises(error, match=words):
        aw.adamw(1e-3, **kwargs)


def test_stochastic_apply_updates_without_step_is_a_clear_error():
    with pytest.raises(ValueError, match="step="):
        aw.apply_updates({"w": jnp.ones(2)}, {"w": jnp.ones(2)}, stochastic_rounding=True)


def test_low_precision_params_needs_the_params():
    opt = lowbit.low_precision_params(optax.identity(), master_weights=True)
    p = {"w": jnp.ones(2, jnp.bfloat16)}
    with pytest.raises(ValueError, match="params"):
        opt.update(p, opt.init(p))


def test_zero1_sharded_int8_state_keeps_blocks_whole_and_steps_like_unsharded():
    """ZeRO-1 splits the (blocks, 256) codes on the block axis: every device holds whole blocks
    with their scales, and the sharded step gives the same state as the unsharded one."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    params = {"w": jnp.linspace(-1.0, 1.0, 64 * 256).reshape(64, 256)}
    opt = aw.adamw(1e-3, mu_dtype="int8", nu_dtype="int8", weight_decay=1e-2)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shardings = aw.state_shardings(opt.init(params), {"w": replicated}, zero_axis="data")
    codes = shardings[0].mu["w"].values
    assert codes.spec[0] == "data" and codes.shard_shape((64, 256)) == (8, 256)
    step = jax.jit(opt.update, out_shardings=(replicated, shardings))
    state = jax.device_put(opt.init(params), shardings)
    _, sharded = step(params, state, params)
    _, plain = jax.jit(opt.update)(params, opt.init(params), params)
    for got, want in zip(jax.tree_util.tree_leaves(sharded), jax.tree_util.tree_leaves(plain)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


# Storage configurations: float16/bfloat16/int8 moments (plain, block-scaled for the 4096-element
# leaf) for float16, bfloat16 and float32 parameters, with stochastic rounding and master weights.
LOW_PRECISION_RUNS = [
    dict(param=jnp.float16),
    dict(param=jnp.float16, mu_dtype=jnp.float16, nu_dtype=jnp.float16, stochastic_rounding=True),
    dict(param=jnp.float16, mu_dtype="int8", nu_dtype="int8", master_weights=True),
    dict(param=jnp.bfloat16),
    dict(
        param=jnp.bfloat16, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16, stochastic_rounding=True
    ),
    dict(param=jnp.bfloat16, mu_dtype=jnp.float16, nu_dtype="int8"),
    dict(param=jnp.float32, mu_dtype=jnp.float16, nu_dtype=jnp.float16),
    dict(param=jnp.float32, mu_dtype="int8", nu_dtype=jnp.bfloat16, amsgrad=True),
]


def _huge_gradients(params, step):
    """Step by step: elements at the format's largest finite value (either sign), an inf element
    (clamped by scale_by_adam) on every third step, ordinary values in between."""

    def leaf(p):
        rng = np.random.default_rng(step)
        largest = float(jnp.finfo(p.dtype).max)
        g = rng.normal(size=p.shape)
        g = np.where(rng.random(p.shape) < 0.3, np.sign(g) * largest, g)
        if step % 3 == 0:
            g.flat[step % g.size] = np.inf
        return jnp.asarray(g.astype(np.float32), p.dtype)

    return jax.tree_util.tree_map(leaf, params)


@pytest.mark.parametrize(
    "run",
    LOW_PRECISION_RUNS,
    ids=lambda r: "-".join(
        f"{k}={v if isinstance(v, (str, bool)) else jnp.dtype(v).name}" for k, v in r.items()
    ),
)
def test_low_precision_storage_stays_finite_under_huge_and_clamped_gradients(run):
    """Finite gradients at the top of the range and clamped inf elements, 30 steps: the float16
    first moment saturates at 65504 instead of holding inf (the next step would be NaN)."""
    run = dict(run)
    dtype = run.pop("param")
    params = {
        "small": jnp.linspace(-1, 1, 24, dtype=dtype).reshape(4, 6),
        "large": jnp.linspace(-1, 1, 4096, dtype=dtype),
    }
    opt = aw.adamw(1e-2, weight_decay=0.1, **run)
    state, step = opt.init(params), jax.jit(lambda g, s, p: opt.update(g, s, p))
    for i in range(30):
        updates, state = step(_huge_gradients(params, i), state, params)
        params = jax.jit(aw.apply_updates)(params, updates)
        for name, tree in (("updates", updates), ("params", params), ("state", state)):
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
                assert np.all(np.isfinite(np.float32(leaf))), (i, name, jax.tree_util.keystr(path))


def test_float16_first_moment_of_large_gradients_saturates():
    """|g| = 1e5 (beyond float16) with mu_dtype=float16: m saturates at 65504, the parameter
    keeps moving against the gradient and stays finite."""
    params = {"w": jnp.ones(8)}
    opt = aw.adamw(1e-3, mu_dtype=jnp.float16)
    state, step = opt.init(params), jax.jit(opt.update)
    for _ in range(30):
        updates, state = step({"w": jnp.full(8, 1e5)}, state, params)
        params = aw.apply_updates(params, updates)
    assert np.all(np.float32(state[0].mu["w"]) == 65504.0)
    assert np.all(np.isfinite(params["w"])) and np.all(params["w"] < 1.0)


def test_low_precision_params_passes_extra_arguments_down():
    seen = []

    def recorder():
        def update(updates, state, params=None, **extra_args):
            seen.append(sorted(extra_args))
            return updates, state

        return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)

    opt = lowbit.low_precision_params(recorder(), stochastic_rounding=True)
    assert isinstance(opt, optax.GradientTransformationExtraArgs)
    p = {"w": jnp.ones(2, jnp.bfloat16)}
    jax.jit(lambda g, s, p: opt.update(g, s, p, value=jnp.float32(1.0)))(p, opt.init(p), p)
    assert seen == [["value"]]
    full = aw.adamw(1e-3, stochastic_rounding=True, master_weights=True)
    update = jax.jit(lambda g, s, p: full.update(g, s, p, value=jnp.float32(1.0)))
    updates, _ = update(p, full.init(p), p)
    assert np.all(np.isfinite(np.float32(updates["w"])))


EXPLICIT_CASES = [  # (shape, parameter spec): a sharded axis inside, first, last; padded blocks
    ((16, 512), P(None, "data")),
    ((8, 513), P("data")),
    ((8, 8, 80), P("data")),
    ((64, 128), P("data")),
]


@pytest.mark.parametrize("axis_type", [jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto])
@pytest.mark.parametrize(
    "storage",
    [
        dict(param=jnp.float16),
        dict(param=jnp.float32, mu_dtype="int8", nu_dtype="int8"),
        dict(param=jnp.bfloat16, nu_dtype=jnp.float16, amsgrad=True),
    ],
    ids=["f16-params", "int8-moments", "f16-nu-amsgrad"],
)
def test_block_storage_on_explicit_and_auto_meshes_steps_like_one_device(axis_type, storage):
    """Blocks of 256 cut across the shards of a parameter sharded on 8 devices (Explicit axes:
    sharding in types, where the flattening reshape needs its output sharding): three jitted
    steps give the single-device values (stored codes and low-precision values bit for bit),
    and the parameters keep their sharding."""
    storage = dict(storage)
    dtype = storage.pop("param")
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    opt = aw.adamw(1e-2, weight_decay=0.1, **storage)
    for shape, spec in EXPLICIT_CASES:
        plain = {"w": jnp.linspace(-1, 1, int(np.prod(shape)), dtype=dtype).reshape(shape)}
        sharded = jax.device_put(plain, NamedSharding(mesh, spec))
        # Gradients made on the host: XLA's vectorized sin differs by an ulp between shard sizes.
        grads = [{"w": np.sin(np.float32(plain["w"]) * (i + 2)).astype(dtype)} for i in range(3)]
        runs = []
        for params in (plain, sharded):
            state, step = opt.init(params), jax.jit(opt.update)
            for g in grads:
                placed = jax.device_put(g, jax.tree_util.tree_map(lambda p: p.sharding, params))
                updates, state = step(placed, state, params)
                params = jax.jit(aw.apply_updates)(params, updates)
            runs.append((params, state))
        assert runs[1][0]["w"].sharding.is_equivalent_to(NamedSharding(mesh, spec), len(shape))
        expected, actual = (jax.tree_util.tree_leaves(run) for run in runs)
        for got, want in zip(actual, expected):
            got, want = np.asarray(got), np.asarray(want)
            if got.dtype == np.float32:  # float32 arithmetic: XLA CPU's per-shard-size loops
                # (vector body, scalar tail) differ by an ulp; measured 1 ulp, allowed 4.
                atol = 4 * 2.0**-23 * np.max(np.abs(want))
                np.testing.assert_allclose(got, want, rtol=0, atol=atol)
            else:  # int8 codes, float16/bfloat16 moments and parameters: bit for bit
                np.testing.assert_array_equal(got, want)
