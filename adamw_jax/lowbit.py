"""Low-precision storage: bf16/f16 and blockwise 8-bit optimizer moments, bf16 parameters.

Arithmetic always runs in float32; only storage is rounded. A moment is stored in one of:

* a plain float array (float32, bfloat16, or the parameter dtype): ``x.astype(dtype)``;
* ``"int8"``: a ``BlockwiseArray`` of 8-bit codes and one float32 scale per block of 256
  values (Dettmers et al. 2022, arXiv 2110.02861). ``s_b = max|x|`` over the block and the code
  is the nearest entry of a *dynamic* code table to ``x / s_b``: a sign bit (first moment only),
  then ``z`` zero bits giving the decade ``10^-z``, a one bit, and the remaining bits spread
  linearly over ``(0.1, 1]·10^-z``. Relative precision is then roughly constant over seven
  decades, which the second moment needs; a linear code would flush every ``x < s_b/255`` to
  zero. The second moment is stored as ``sqrt(v)`` (unsigned code): ``v = g²`` spans twice the
  decades of ``g``, and on Gaussian gradients the square root cuts the 99th percentile of the
  relative error of ``sqrt(v)`` from 6.9% to 3.5% (heavy-tailed: 24% to 6.3%).
* float16, second moment: ``v = g²`` needs twice the decades of ``g`` and would overflow
  (``|g| > 256``) or flush to zero (``|g| < 2^-12``) in plain float16. It is stored as a
  ``BlockwiseArray`` of ``sqrt(v)`` in float16 with a power-of-two float32 scale per block:
  nothing overflows, the scaling is exact, and ``sqrt`` halves the decades to cover, so ``v``
  keeps 11 bits down to ``2^-28`` of the block's maximum and is nonzero down to ``2^-48``.
  The first moment has the range of the gradient and is stored as plain float16.

Tensors with fewer than 4096 elements keep float32 in the block formats (as bitsandbytes): the
saving is nil and a padded block of 256 would cost more. A positive second moment never decodes
to zero in a block format (nor does any nonzero float16 value): a too-small ``v`` would make
``m / (sqrt(v) + eps)`` explode, so it rounds up to the smallest positive code instead (too
large a ``v`` only shortens the step).

Stochastic rounding rounds ``x`` to the neighbour above with probability equal to the distance
from the one below over the gap, so ``E[round(x)] = x`` and updates smaller than half a unit in
the last place still move the stored value on average. The randomness is a hash of the step
count, a fixed stream number, the leaf and the element index, so there is no key to manage and
runs are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adamw_jax import _numerics as num

BLOCK_SIZE = 256
MIN_BLOCKWISE_SIZE = 4096

# Key streams, one per kind of rounded value, so moments and parameters use independent noise.
FIRST_MOMENT_STREAM, SECOND_MOMENT_STREAM, MAX_SECOND_MOMENT_STREAM, PARAMS_STREAM = range(4)


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
        10.0 ** -zeros * (0.1 + 0.9 * k / 2 ** (magnitude_bits - zeros - 1))
        for zeros in range(magnitude_bits)
        for k in range(1, 2 ** (magnitude_bits - zeros - 1) + 1)
    ]
    magnitudes = np.sort(np.asarray(magnitudes))
    if signed:
        return np.concatenate([-magnitudes[::-1], [0.0], magnitudes]).astype(np.float32)
    return np.concatenate([[0.0], magnitudes]).astype(np.float32)


SIGNED_CODE = dynamic_code(signed=True)
UNSIGNED_CODE = dynamic_code(signed=False)


def _round_between(x: jax.Array, low: jax.Array, high: jax.Array, uniform: jax.Array | None) -> jax.Array:
    """Whether to take ``high`` for ``low <= x <= high``: nearest, or with probability
    ``(x - low) / (high - low)`` when ``uniform`` (in [0, 1)) is given."""
    fraction = (x - low) / (high - low)
    return fraction >= 0.5 if uniform is None else uniform < fraction


def _code_index(normalized: jax.Array, code: np.ndarray, uniform: jax.Array | None) -> jax.Array:
    """Index into ``code`` of the entry ``normalized`` (in [-1, 1]) rounds to.

    Computed, not searched: the decade ``z`` counts the powers of ten above ``|x|``; in it, with
    ``2^f`` entries, entry ``k`` is magnitude number ``2^f + k - 2`` (the deeper decades hold
    ``2^f - 1``), and ``k = 0`` continues into the top of the next decade, so the float32
    rounding of ``k`` near an entry is fixed by one comparison on each side. Magnitudes are
    rounded, so signed values round symmetrically.
    """
    signed = bool(code[0] < 0)
    magnitudes = code[code > 0]
    with_zero = jnp.asarray(np.concatenate([[0.0], magnitudes]).astype(np.float32))
    magnitude = jnp.abs(normalized)
    top_bits = 6 if signed else 7  # fraction bits of the top decade
    zeros = sum((magnitude < np.float32(10.0**-z)).astype(jnp.int32) for z in range(1, top_bits + 1))
    steps = 2.0 ** (top_bits - np.arange(top_bits + 1))  # per decade; gathers beat pow on CPU
    slope = jnp.asarray(10.0 ** np.arange(top_bits + 1) / 0.9 * steps, jnp.float32)[zeros]
    offset = jnp.asarray(0.1 / 0.9 * steps - steps + 2, jnp.float32)[zeros]
    # position in decade k = (|x|·10^z - 0.1)/0.9·2^f, then magnitude number 2^f + k - 2
    low = jnp.clip(jnp.floor(magnitude * slope - offset), -1, magnitudes.size - 2).astype(jnp.int32)
    low = jnp.maximum(low - (with_zero[low + 1] > magnitude), -1)
    low = jnp.minimum(low + (with_zero[low + 2] < magnitude), magnitudes.size - 2)
    up = _round_between(magnitude, with_zero[low + 1], with_zero[low + 2], uniform)
    if not signed:  # the second-moment code: a positive value never rounds to zero
        up = up | ((low == -1) & (magnitude > 0))
    index = low + 1 + up.astype(jnp.int32)  # 0 is zero, i is magnitudes[i - 1]
    return jnp.where(normalized < 0, -index, index) + (code.size // 2 if signed else 0)


# --- stochastic rounding to a float dtype --------------------------------------------------


def round_to_dtype(x: jax.Array, dtype: Any, uniform: jax.Array | None = None) -> jax.Array:
    """``x`` rounded to ``dtype``: to nearest, or stochastically when ``uniform`` is given.

    The two candidates are the nearest value and its neighbour on the other side of ``x``
    (``nextafter``); non-finite results of the nearest rounding (NaN, overflow) are kept.
    """
    nearest = x.astype(dtype)
    if uniform is None or jnp.dtype(dtype) == x.dtype:
        return nearest
    back = nearest.astype(x.dtype)
    away = jnp.where(back > x, -jnp.inf, jnp.inf).astype(dtype)
    other = jnp.nextafter(nearest, away).astype(x.dtype)
    low, high = jnp.minimum(back, other), jnp.maximum(back, other)
    rounded = jnp.where(_round_between(x, low, high, uniform), high, low).astype(dtype)
    return jnp.where(jnp.isfinite(nearest), rounded, nearest)


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


def _uniform(seed: jax.Array | None, shape: tuple[int, ...]) -> jax.Array | None:
    """Uniform [0, 1) float32 noise: a counter-based hash of (seed, element index).

    A hash, not ``jax.random``: threefry costs ~30x a step of AdamW on CPU, while rounding
    noise needs only independence between elements, leaves and steps, and 24 bits.
    """
    if seed is None:
        return None
    index = jax.lax.broadcasted_iota(jnp.uint32, shape, len(shape) - 1) if shape else jnp.uint32(0)
    for axis in range(len(shape) - 1):  # row-major element number
        stride = int(np.prod(shape[axis + 1:]))
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    bits = _mix(_mix(index ^ seed) + seed)
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
        smallest = jnp.copysign(jnp.finfo(jnp.float16).smallest_subnormal, scaled).astype(jnp.float16)
        return BlockwiseArray(jnp.where((values == 0) & (scaled != 0), smallest, values), scales)
    scales = jnp.where(absmax > 0, absmax, 1.0)
    signed = jnp.dtype(values_dtype) == jnp.int8
    index = _code_index(blocks / scales[:, None], SIGNED_CODE if signed else UNSIGNED_CODE, uniform)
    return BlockwiseArray((index - SIGNED_CODE.size // 2 if signed else index).astype(values_dtype), scales)


def decode_blocks(stored: BlockwiseArray, size: int) -> jax.Array:
    """The flat float32 array of ``size`` values that ``encode_blocks`` stored."""
    values = stored.values
    if values.dtype == jnp.int8:
        values = jnp.asarray(SIGNED_CODE)[values.astype(jnp.int32) + 127]
    elif values.dtype == jnp.uint8:
        values = jnp.asarray(UNSIGNED_CODE)[values.astype(jnp.int32)]
    return (values.astype(jnp.float32) * stored.scales[:, None]).reshape(-1)[:size]


# --- moment storage formats ----------------------------------------------------------------

INT8 = "int8"


def _blockwise(param: jax.Array) -> bool:
    return jnp.size(param) >= MIN_BLOCKWISE_SIZE and not jnp.iscomplexobj(param)


@dataclass(frozen=True)
class MomentStorage:
    """How one moment is stored, leaf by leaf: ``init`` (zeros), ``decode`` (stored -> at least
    float32) and ``encode`` (float32 -> stored, rounded to nearest or stochastically).

    ``dtype``: ``None`` (the parameter dtype), a float dtype, or ``"int8"``; float16 and
    ``"int8"`` use the block layouts of the module docstring for tensors of 4096 elements or
    more. ``second_moment``: the moment is ``v >= 0`` (block layouts store ``sqrt(v)``).
    """

    dtype: jnp.dtype | str | None
    second_moment: bool
    stochastic_rounding: bool

    @property
    def uses_blocks(self) -> bool:
        """Whether tensors of ``MIN_BLOCKWISE_SIZE`` elements or more are stored as a
        ``BlockwiseArray`` (``"int8"``, or a float16 second moment); smaller ones keep float32.
        With ``dtype=None`` this depends on the parameter dtype (see ``_blocks_for``)."""
        return self._blocks_for(self.dtype)

    def _blocks_for(self, target: Any) -> bool:
        return target == INT8 or (self.second_moment and target == jnp.float16)

    def _zeros(self, param: jax.Array) -> jax.Array | BlockwiseArray:
        target = self.dtype
        if target is None:
            target = jnp.real(jnp.zeros((), param.dtype)).dtype if self.second_moment else param.dtype
        blockwise = self._blocks_for(target)  # also a float16 v kept for float16 params
        if blockwise and _blockwise(param):
            blocks = block_count(jnp.size(param))
            values_dtype = jnp.float16 if target == jnp.float16 else (
                jnp.uint8 if self.second_moment else jnp.int8)
            return BlockwiseArray(jnp.zeros((blocks, BLOCK_SIZE), values_dtype),
                                  jnp.ones((blocks,), jnp.float32))
        if blockwise:
            target = jnp.float32  # small tensors: nothing to save
        # zeros_like keeps the parameter's (explicit) sharding, so init and update agree.
        return jnp.zeros_like(param, dtype=target)

    def init(self, params: optax.Params) -> optax.Updates:
        return jax.tree_util.tree_map(self._zeros, params)

    def decode(self, stored: optax.Updates, like: optax.Updates) -> optax.Updates:
        """The stored moments as arrays shaped like ``like`` (the gradients), in the
        arithmetic dtype: at least float32, and the gradients' dtype for the first moment."""

        def leaf(g: jax.Array, s: jax.Array | BlockwiseArray) -> jax.Array:
            if isinstance(s, BlockwiseArray):
                x = decode_blocks(s, g.size).reshape(g.shape)
                if self.second_moment:
                    x = jnp.square(x)
            else:
                x = s
            operands = (x.dtype,) if self.second_moment else (x.dtype, g.dtype)
            return x.astype(num.compute_dtype(jnp.result_type(*operands)))

        return jax.tree_util.tree_map(leaf, like, stored)

    def encode(self, values: optax.Updates, stored: optax.Updates, step: jax.Array, stream: int
               ) -> optax.Updates:
        """``values`` in the layout and dtypes of the previous ``stored`` state."""
        leaves, treedef = jax.tree_util.tree_flatten(values)
        stored_leaves = treedef.flatten_up_to(stored)
        keys = step_keys(step, stream, len(leaves)) if self.stochastic_rounding else [None] * len(leaves)

        def leaf(x: jax.Array, s: jax.Array | BlockwiseArray, key: jax.Array | None):
            if isinstance(s, BlockwiseArray):
                flat = x.reshape(-1).astype(jnp.float32)
                if self.second_moment:
                    flat = jnp.sqrt(flat)
                return encode_blocks(flat, s.values.dtype, uniform=_uniform(key, s.values.shape))
            narrower = jnp.finfo(s.dtype).bits < jnp.finfo(x.dtype).bits
            return round_to_dtype(x, s.dtype, _uniform(key, x.shape) if narrower else None)

        return treedef.unflatten([leaf(*args) for args in zip(leaves, stored_leaves, keys)])


def moment_storage(
    dtype: Any, *, argument: str, second_moment: bool, stochastic_rounding: bool = False
) -> MomentStorage:
    """Validate a user's ``mu_dtype`` / ``nu_dtype`` and return its ``MomentStorage``."""
    is_int8 = dtype == INT8 or (
        dtype is not None and not isinstance(dtype, str) and _is_dtype(dtype, jnp.int8))
    if is_int8:
        return MomentStorage(INT8, second_moment, stochastic_rounding)
    try:
        resolved = num.storage_dtype(dtype, argument=argument)
    except TypeError as error:
        raise TypeError(f"{error} For blockwise 8-bit storage pass {argument}='int8'.") from None
    return MomentStorage(resolved, second_moment, stochastic_rounding)


def _is_dtype(value: Any, dtype: Any) -> bool:
    try:
        return jnp.dtype(value) == dtype
    except TypeError:
        return False


def state_bytes(tree: Any) -> int:
    """Bytes held by the arrays of a state (or any pytree)."""
    return sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(tree))


# --- low-precision parameters --------------------------------------------------------------


def _low_precision(param: jax.Array) -> bool:
    return jnp.issubdtype(param.dtype, jnp.floating) and jnp.finfo(param.dtype).bits < 32


def add_and_round(base: jax.Array, update: jax.Array, dtype: Any, key: jax.Array | None) -> jax.Array:
    """``base + update`` in at least float32, rounded to ``dtype`` (stochastically with a key)."""
    compute = num.compute_dtype(jnp.result_type(base.dtype, dtype))
    total = base.astype(compute) + update.astype(compute)
    return round_to_dtype(total, dtype, _uniform(key, total.shape))


def _master_or(master: Any, params: optax.Params) -> optax.Params:
    """The float32 master copy where there is one, else the parameter."""
    return jax.tree_util.tree_map(lambda m, p: p if m is None else m, master, params,
                                  is_leaf=lambda x: x is None)


class LowPrecisionParamsState(NamedTuple):
    """``count``: int32 steps (the rounding noise's seed); ``master``: float32 copies of the
    bf16/f16 parameters (``None`` for other leaves, or without master weights);
    ``inner_state``: the wrapped optimizer's state."""

    count: jax.Array
    master: Any
    inner_state: optax.OptState


def low_precision_params(
    inner: optax.GradientTransformation, *, master_weights: bool = False,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformation:
    """Wrap ``inner`` so bf16/f16 parameters keep learning.

    ``master_weights``: keep ``θ32``, a float32 copy of each bf16/f16 parameter, in the state;
    ``inner`` sees ``θ32`` (its state is built from it, so default moments are float32, and
    weight decay acts on it), ``θ32 ← θ32 + u`` exactly, and the
    parameter becomes ``round(θ32)`` (TransformerEngine, apex). ``stochastic_rounding``: the
    new parameter ``θ + u`` (or ``θ32``) is rounded stochastically. The emitted update is
    ``new - θ`` in float32, exact, so ``apply_updates`` lands on ``new``. Leaves of float32 and
    wider pass through unchanged.
    """

    def init_fn(params: optax.Params) -> LowPrecisionParamsState:
        master = jax.tree_util.tree_map(
            lambda p: p.astype(jnp.float32) if master_weights and _low_precision(p) else None, params)
        return LowPrecisionParamsState(num.zero_count(), master, inner.init(_master_or(master, params)))

    def update_fn(updates: optax.Updates, state: LowPrecisionParamsState,
                  params: optax.Params | None = None) -> tuple[optax.Updates, LowPrecisionParamsState]:
        if params is None:
            raise ValueError("bf16/f16 parameter rounding needs the parameters: call "
                             "update(updates, state, params).")
        base = _master_or(state.master, params)
        inner_updates, inner_state = inner.update(updates, state.inner_state, base)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        keys = step_keys(state.count, PARAMS_STREAM, len(leaves))

        def leaf(p: jax.Array, b: jax.Array, u: jax.Array, key: jax.Array):
            if not _low_precision(p):
                return u, None
            compute = num.compute_dtype(b.dtype)
            new = b.astype(compute) + u.astype(compute)
            rounded = round_to_dtype(new, p.dtype, _uniform(key, p.shape) if stochastic_rounding else None)
            return rounded.astype(compute) - p.astype(compute), new if b.dtype != p.dtype else None

        results = [leaf(*args) for args in zip(
            leaves, treedef.flatten_up_to(base), treedef.flatten_up_to(inner_updates), keys)]
        new_updates = treedef.unflatten([u for u, _ in results])
        master = treedef.unflatten([m for _, m in results]) if master_weights else state.master
        return new_updates, LowPrecisionParamsState(num.safe_increment(state.count), master, inner_state)

    return optax.GradientTransformation(init_fn, update_fn)
