"""Quantization and rounding primitives behind ``adamw_jax.lowbit`` (see its docstring for
the formats): the 8-bit dynamic code tables, blockwise encode/decode of flat float32 arrays,
rounding to a float dtype to nearest or stochastically, and the counter-based noise.

Pure elementwise-per-block functions on flat arrays, shared by the per-leaf and the fused path.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

BLOCK_SIZE = 256


class BlockwiseArray(NamedTuple):
    """``values[b, i] · scales[b]`` (after the code table for int8 ``values``) is element
    ``b·256 + i`` of the flattened tensor; the tail of the last block is padding."""

    values: jax.Array
    scales: jax.Array


# --- dynamic code tables -------------------------------------------------------------------


def dynamic_code(*, signed: bool) -> np.ndarray:
    """The sorted values of the 8-bit dynamic code in ``[-1, 1]`` (signed) or ``[0, 1]``.

    Signed: 255 values (int8 code ``c`` is entry ``c + 127``); unsigned: 256 values (uint8).
    Decade ``z`` (``z`` leading zero bits, then a one bit) holds ``2^f`` values
    ``10^-z·(0.1 + 0.9·k/2^f)``, ``k = 1..2^f``, with ``f`` the bits left after the sign,
    the ``z`` zeros and the one bit; ``k = 2^f`` puts ``1.0`` itself in the table.
    """
    magnitude_bits = 7 if signed else 8
    magnitudes = [
        10.0**-zeros * (0.1 + 0.9 * k / 2 ** (magnitude_bits - zeros - 1))
        for zeros in range(magnitude_bits)
        for k in range(1, 2 ** (magnitude_bits - zeros - 1) + 1)
    ]
    magnitudes = np.sort(np.asarray(magnitudes))
    if signed:
        return np.concatenate([-magnitudes[::-1], [0.0], magnitudes]).astype(np.float32)
    return np.concatenate([[0.0], magnitudes]).astype(np.float32)


SIGNED_CODE = dynamic_code(signed=True)
UNSIGNED_CODE = dynamic_code(signed=False)


def _round_between(
    x: jax.Array, low: jax.Array, high: jax.Array, uniform: jax.Array | None
) -> jax.Array:
    """Whether to take ``high`` for ``low <= x <= high``: nearest, or with probability
    ``(x - low) / (high - low)`` when ``uniform`` (in [0, 1)) is given."""
    fraction = (x - low) / (high - low)
    return fraction >= 0.5 if uniform is None else uniform < fraction


def _reciprocal_split(denominator: int) -> tuple[np.float32, np.float32]:
    """``1/denominator`` as ``high + low`` in float32, ``high`` with 12 significant bits, so
    ``n·high`` is exact for the code's numerators ``n < 2^12`` and ``n·high + n·low`` rounds
    once (with or without FMA contraction): the correctly rounded ``n / denominator`` on every
    numerator the code uses (checked on all of them by the tests), without a division."""
    reciprocal = 1.0 / denominator
    unit = 2.0 ** (np.floor(np.log2(reciprocal)) - 11)
    high = np.round(reciprocal / unit) * unit
    return np.float32(high), np.float32(reciprocal - high)


def code_constants(*, signed: bool) -> dict[str, np.ndarray]:
    """The float32 constants of ``_code_index`` for one code, per decade ``z = 0..t`` (``t``
    fraction bits in the top decade: 6 signed, 7 unsigned): ``threshold`` (``10^-z``; the
    magnitude is in decade ``z`` when below ``threshold[1..z]``), ``count`` (``F = 2^(t-z)``),
    ``denominator`` (``D = F·10^(z+1)``), ``high``/``low`` (``1/D`` split, see
    ``_reciprocal_split``), and ``ninth`` (float32 ``1/9``). The native kernel takes the same
    arrays, so both compute the same index."""
    top_bits = 6 if signed else 7
    denominators = [10 * 2**top_bits * 5**zeros for zeros in range(top_bits + 1)]
    splits = [_reciprocal_split(d) for d in denominators]
    return {
        "threshold": np.asarray([10.0**-z for z in range(top_bits + 1)], np.float32),
        "count": np.asarray(2.0 ** (top_bits - np.arange(top_bits + 1)), np.float32),
        "denominator": np.asarray(denominators, np.float32),
        "high": np.asarray([h for h, _ in splits], np.float32),
        "low": np.asarray([lo for _, lo in splits], np.float32),
        "ninth": np.asarray([1 / 9], np.float32),
    }


def _code_index(normalized: jax.Array, code: np.ndarray, uniform: jax.Array | None) -> jax.Array:
    """Index into ``code`` of the entry ``normalized`` (in [-1, 1]) rounds to.

    Computed, neither searched nor gathered. With ``t`` fraction bits in the top decade, decade
    ``z`` holds ``F = 2^(t-z)`` entries ``10^-z·(0.1 + 0.9·k/F) = (F + 9k)/D``, ``D = F·10^(z+1)``,
    ``k = 1..F``, and ``k = 0`` is the top of the next decade; float32 holds ``F + 9k`` and ``D``
    exactly, and each entry is the float32 quotient (the table's own value). ``z`` counts the
    decade tops above ``|x|`` (``F``, ``D`` follow by selects), ``k = ⌊(|x|·D - F)/9⌋`` up to
    float32 rounding, and one comparison with each neighbour fixes the bracket
    ``entry(k) <= |x| <= entry(k + 1)``; below the deepest decade the bracket is ``[0, 10^-(t)]``.
    Rounding between the two is ``_round_between``, as a search would do it, so the result is
    the nearest entry bit for bit (ties up). Magnitudes are rounded, so signed values round
    symmetrically; NaN gives entry 1 (the smallest positive magnitude).
    """
    signed = bool(code[0] < 0)
    top_bits = 6 if signed else 7  # fraction bits of the top decade
    constants = code_constants(signed=signed)
    magnitude = jnp.abs(normalized)

    def per_decade(values: np.ndarray) -> jax.Array:  # select by decade: no gather
        out = jnp.full(magnitude.shape, values[0])
        for zeros in range(1, top_bits + 1):
            out = jnp.where(magnitude < constants["threshold"][zeros], values[zeros], out)
        return out

    count, denominator = per_decade(constants["count"]), per_decade(constants["denominator"])
    high_part, low_part = per_decade(constants["high"]), per_decade(constants["low"])
    deepest = magnitude < np.float32(10.0**-top_bits)

    def entry(numerator: jax.Array) -> jax.Array:
        return numerator * high_part + numerator * low_part  # = numerator / denominator

    k = jnp.clip(jnp.floor((magnitude * denominator - count) * constants["ninth"][0]), 0, count - 1)
    numerator = count + 9 * k
    low, high = entry(numerator), entry(numerator + 9)
    below, above = low > magnitude, high < magnitude  # k one too high / one too low
    third = entry(numerator + jnp.where(below, np.float32(-9), np.float32(18)))
    low, high = (
        jnp.where(below, third, jnp.where(above, high, low)),
        jnp.where(below, low, jnp.where(above, third, high)),
    )
    k = jnp.where(deepest, 0, k - below + above)
    low = jnp.where(deepest, 0, low)
    high = jnp.where(deepest, np.float32(10.0**-top_bits), high)
    up = _round_between(magnitude, low, high, uniform)
    if not signed:  # the second-moment code: a positive value never rounds to zero
        up = up | (deepest & (magnitude > 0))
    index = (count - 1 + k).astype(jnp.int32) + up.astype(jnp.int32)  # 0 is zero
    index = jnp.where(jnp.isnan(magnitude), 1, index)
    return jnp.where(normalized < 0, -index, index) + (code.size // 2 if signed else 0)


# --- stochastic rounding to a float dtype --------------------------------------------------


def saturate(x: jax.Array, dtype: Any) -> jax.Array:
    """Finite ``x`` clipped to ``dtype``'s finite range, so rounding it never gives ``inf``
    (float16 holds at most 65504); ``±inf`` and NaN are kept as they are."""
    largest = float(jnp.finfo(dtype).max)
    if largest >= float(jnp.finfo(x.dtype).max):
        return x
    return jnp.where(jnp.isfinite(x), jnp.clip(x, -largest, largest), x)


def round_to_dtype(x: jax.Array, dtype: Any, uniform: jax.Array | None = None) -> jax.Array:
    """``x`` rounded to ``dtype``: to nearest, or stochastically when ``uniform`` is given.

    Finite values saturate at ``dtype``'s largest finite value instead of overflowing to
    ``inf``. The two candidates of stochastic rounding are the nearest value and its neighbour
    on the other side of ``x`` (``nextafter``); ``±inf`` and NaN are kept.
    """
    if jnp.issubdtype(x.dtype, jnp.floating) and jnp.issubdtype(dtype, jnp.floating):
        x = saturate(x, dtype)
    nearest = x.astype(dtype)
    if uniform is None or jnp.dtype(dtype) == x.dtype:
        return nearest
    if x.dtype == jnp.float32 and jnp.dtype(dtype) == jnp.bfloat16:
        return _bfloat16_stochastic(x, uniform, nearest)
    back = nearest.astype(x.dtype)
    away = jnp.where(back > x, -jnp.inf, jnp.inf).astype(dtype)
    other = jnp.nextafter(nearest, away).astype(x.dtype)
    low, high = jnp.minimum(back, other), jnp.maximum(back, other)
    rounded = jnp.where(_round_between(x, low, high, uniform), high, low).astype(dtype)
    return jnp.where(jnp.isfinite(nearest), rounded, nearest)


def _bfloat16_stochastic(x: jax.Array, uniform: jax.Array, nearest: jax.Array) -> jax.Array:
    """Stochastic rounding of float32 to bfloat16 in integer arithmetic: add 16 random bits to
    the 16 bits that bfloat16 drops, then truncate. The kept bits go up by one unit exactly when
    the random ``r`` (uniform on ``0..2^16-1``) is at least ``2^16 - dropped``: with probability
    ``dropped/2^16``, the distance to the value below over the gap, so ``E[round(x)] = x`` (the
    carry into the exponent lands on the next binade's first value, as it should). ``x`` is
    saturated, so nothing carries into infinity; ``±inf`` (nothing dropped) stay; NaN is kept."""
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    random_bits = (uniform * np.float32(2.0**16)).astype(jnp.uint32)  # exact, 0..2^16-1
    truncated = (bits + random_bits) & jnp.uint32(0xFFFF0000)
    rounded = jax.lax.bitcast_convert_type(truncated, jnp.float32).astype(jnp.bfloat16)  # exact
    return jnp.where(jnp.isnan(x), nearest, rounded)


def _mix(h: jax.Array) -> jax.Array:
    """A 32-bit integer hash with full avalanche (xor-shift-multiply, "lowbias32")."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x7FEB352D)
    h = h ^ (h >> 15)
    h = h * jnp.uint32(0x846CA68B)
    return h ^ (h >> 16)


def step_keys(step: jax.typing.ArrayLike, stream: int, count: int) -> list[jax.Array]:
    """``count`` independent uint32 seeds for the given step and stream (one per leaf)."""
    base = _mix(jnp.asarray(step).astype(jnp.uint32) * jnp.uint32(0x9E3779B9) ^ jnp.uint32(stream))
    return [_mix(base + jnp.uint32(index) * jnp.uint32(0x85EBCA6B)) for index in range(count)]


def uniform_noise(seed: jax.Array | None, shape: tuple[int, ...]) -> jax.Array | None:
    """Uniform [0, 1) float32 noise: a counter-based hash of (seed, element index).

    A hash, not ``jax.random``: threefry costs ~30x a step of AdamW on CPU, while rounding
    noise needs only independence between elements, leaves and steps, and 24 bits.
    """
    if seed is None:
        return None
    index = jax.lax.broadcasted_iota(jnp.uint32, shape, len(shape) - 1) if shape else jnp.uint32(0)
    for axis in range(len(shape) - 1):  # row-major element number
        stride = int(np.prod(shape[axis + 1 :]))
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    bits = _mix(index * jnp.uint32(0x9E3779B9) + seed)  # one hash of a Weyl sequence
    return (bits >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


# --- blockwise encode/decode on flat arrays (also used by the fused path) --------------------


def block_count(size: int) -> int:
    """Number of 256-element blocks that hold ``size`` values."""
    return -(-size // BLOCK_SIZE)


def encode_blocks(
    flat: jax.Array, values_dtype: Any, *, uniform: jax.Array | None = None
) -> BlockwiseArray:
    """Quantize a flat float32 array block by block.

    ``values_dtype`` int8 (signed code), uint8 (unsigned code, for ``x >= 0``) or float16
    (power-of-two scale). ``uniform``, if given, has shape ``(blocks, 256)`` and makes the
    rounding stochastic.
    """
    padding = block_count(flat.size) * BLOCK_SIZE - flat.size
    blocks = jnp.pad(flat.astype(jnp.float32), (0, padding)).reshape(-1, BLOCK_SIZE)
    absmax = jnp.max(jnp.abs(blocks), axis=1)
    if jnp.dtype(values_dtype) == jnp.float16:
        mantissa, exponent = jnp.frexp(absmax)  # absmax = mantissa·2^exponent, mantissa < 1
        scales = jnp.where(absmax > 0, jnp.ldexp(jnp.ones_like(absmax), exponent), 1.0)
        scaled = blocks / scales[:, None]  # exact: a power of two
        values = round_to_dtype(scaled, jnp.float16, uniform)
        smallest = jnp.copysign(jnp.finfo(jnp.float16).smallest_subnormal, scaled).astype(
            jnp.float16
        )
        return BlockwiseArray(jnp.where((values == 0) & (scaled != 0), smallest, values), scales)
    scales = jnp.where(absmax > 0, absmax, 1.0)
    signed = jnp.dtype(values_dtype) == jnp.int8
    index = _code_index(blocks / scales[:, None], SIGNED_CODE if signed else UNSIGNED_CODE, uniform)
    return BlockwiseArray(
        (index - SIGNED_CODE.size // 2 if signed else index).astype(values_dtype), scales
    )


def decode_blocks(stored: BlockwiseArray, size: int) -> jax.Array:
    """The flat float32 array of ``size`` values that ``encode_blocks`` stored."""
    values = stored.values
    if values.dtype == jnp.int8:
        values = jnp.asarray(SIGNED_CODE)[values.astype(jnp.int32) + 127]
    elif values.dtype == jnp.uint8:
        values = jnp.asarray(UNSIGNED_CODE)[values.astype(jnp.int32)]
    return (values.astype(jnp.float32) * stored.scales[:, None]).reshape(-1)[:size]
