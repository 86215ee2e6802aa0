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

On meshes with Explicit axes (sharding in types) a block-stored moment is kept replicated: the
flattening into blocks is done on the all-gathered tensor and the decoded moment is resharded
like the gradient (an all-gather per step for such leaves; ``aw.state_shardings`` places it).

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

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from adamw_jax import _numerics as num
from adamw_jax._states import transformation
from adamw_jax.lowbit._quantization import (
    BLOCK_SIZE,
    BlockwiseArray,
    block_count,
    decode_blocks,
    dynamic_code,
    encode_blocks,
    round_to_dtype,
    step_keys,
    uniform_noise,
)

MIN_BLOCKWISE_SIZE = 4096

__all__ = [
    "BLOCK_SIZE",
    "FIRST_MOMENT_STREAM",
    "MAX_SECOND_MOMENT_STREAM",
    "MIN_BLOCKWISE_SIZE",
    "PARAMS_STREAM",
    "SECOND_MOMENT_STREAM",
    "BlockwiseArray",
    "LowPrecisionParamsState",
    "MomentStorage",
    "add_and_round",
    "block_count",
    "decode_blocks",
    "dynamic_code",
    "encode_blocks",
    "low_precision_params",
    "moment_storage",
    "round_to_dtype",
    "state_bytes",
    "step_keys",
]

# Key streams, one per kind of rounded value, so moments and parameters use independent noise.
FIRST_MOMENT_STREAM = 0
SECOND_MOMENT_STREAM = 1
MAX_SECOND_MOMENT_STREAM = 2
PARAMS_STREAM = 3


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
            target = (
                jnp.real(jnp.zeros((), param.dtype)).dtype if self.second_moment else param.dtype
            )
        blockwise = self._blocks_for(target)  # also a float16 v kept for float16 params
        if blockwise and _blockwise(param):
            blocks = block_count(jnp.size(param))
            values_dtype = (
                jnp.float16
                if target == jnp.float16
                else (jnp.uint8 if self.second_moment else jnp.int8)
            )
            return BlockwiseArray(
                jnp.zeros((blocks, BLOCK_SIZE), values_dtype), jnp.ones((blocks,), jnp.float32)
            )
        if blockwise:
            target = jnp.float32  # small tensors: nothing to save
        # zeros_like keeps the parameter's (explicit) sharding, so init and update agree.
        return jnp.zeros_like(param, dtype=target)

    def init(self, params: optax.Params) -> optax.Updates:
        return jax.tree_util.tree_map(self._zeros, params)

    def decode(self, stored: optax.Updates, like: Any) -> optax.Updates:
        """The stored moments as arrays shaped like ``like`` (the gradients), in the
        arithmetic dtype: at least float32, and the gradients' dtype for the first moment."""

        def leaf(g: jax.Array, s: jax.Array | BlockwiseArray) -> jax.Array:
            if isinstance(s, BlockwiseArray):
                x = _sharded_like(decode_blocks(_unsharded(s), g.size).reshape(g.shape), g)
                if self.second_moment:
                    x = jnp.square(x)
            else:
                x = s
            operands = (x.dtype,) if self.second_moment else (x.dtype, g.dtype)
            return x.astype(num.compute_dtype(jnp.result_type(*operands)))

        return jax.tree_util.tree_map(leaf, like, stored)

    def encode(
        self, values: optax.Updates, stored: optax.Updates, step: jax.Array, stream: int
    ) -> optax.Updates:
        """``values`` in the layout and dtypes of the previous ``stored`` state."""
        leaves, treedef = jax.tree_util.tree_flatten(
            values, is_leaf=lambda x: isinstance(x, BlockwiseArray)
        )
        stored_leaves = treedef.flatten_up_to(stored)
        keys = (
            step_keys(step, stream, len(leaves))
            if self.stochastic_rounding
            else [None] * len(leaves)
        )
        return treedef.unflatten(
            [self.encode_leaf(*args) for args in zip(leaves, stored_leaves, keys)]
        )

    def encode_leaf(
        self, x: jax.Array | BlockwiseArray, s: jax.Array | BlockwiseArray, key: jax.Array | None
    ) -> jax.Array | BlockwiseArray:
        """One value ``x`` in the layout and dtype of ``s``, with the noise seed ``key`` (None:
        to nearest). A ``BlockwiseArray`` ``x`` is stored already (by the native kernel)."""
        if isinstance(x, BlockwiseArray):
            return x
        if isinstance(s, BlockwiseArray):
            flat = _unsharded(x).reshape(-1).astype(jnp.float32)
            if self.second_moment:
                flat = jnp.sqrt(flat)
            uniform = uniform_noise(key, s.values.shape)
            blocks = encode_blocks(flat, s.values.dtype, uniform=uniform)
            return BlockwiseArray(*map(_sharded_like, blocks, s))  # keeps e.g. a ZeRO-1 split
        narrower = jnp.finfo(s.dtype).bits < jnp.finfo(x.dtype).bits
        return round_to_dtype(x, s.dtype, uniform_noise(key, x.shape) if narrower else None)


def _explicit_sharding(x: jax.Array) -> jax.sharding.NamedSharding | None:
    """The sharding of an array sharded on an Explicit mesh axis (sharding in types), else None."""
    sharding = jax.typeof(x).sharding
    return sharding if any(axis is not None for axis in sharding.spec) else None


def _unsharded(tree: Any) -> Any:
    """``tree`` with every explicitly sharded array replicated (all-gathered). The block
    layout flattens a tensor into (blocks, 256), a reshape that does not keep an explicit
    sharding; on Auto meshes XLA places it and this does nothing."""

    def replicated(x: jax.Array) -> jax.Array:
        sharding = _explicit_sharding(x)
        if sharding is None:
            return x
        return jax.sharding.reshard(x, jax.sharding.NamedSharding(sharding.mesh, PartitionSpec()))

    return jax.tree_util.tree_map(replicated, tree)


def _sharded_like(x: jax.Array, like: jax.Array) -> jax.Array:
    """``x`` with the explicit sharding of ``like`` (if it has one)."""
    sharding = _explicit_sharding(like)
    return x if sharding is None else jax.sharding.reshard(x, sharding)


def moment_storage(
    dtype: Any, *, argument: str, second_moment: bool, stochastic_rounding: bool = False
) -> MomentStorage:
    """Validate a user's ``mu_dtype`` / ``nu_dtype`` and return its ``MomentStorage``."""
    is_int8 = dtype == INT8 or (
        dtype is not None and not isinstance(dtype, str) and _is_dtype(dtype, jnp.int8)
    )
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


def add_and_round(
    base: jax.Array, update: jax.Array, dtype: Any, key: jax.Array | None
) -> jax.Array:
    """``base + update`` in at least float32, rounded to ``dtype`` (stochastically with a key),
    saturating at ``dtype``'s largest finite value: finite ``base`` and ``update`` never give
    ``inf``."""
    total = _saturating_sum(base, update, num.compute_dtype(jnp.result_type(base.dtype, dtype)))
    return round_to_dtype(total, dtype, uniform_noise(key, total.shape))


def _saturating_sum(base: jax.Array, update: jax.Array, compute: jnp.dtype) -> jax.Array:
    """``base + update`` in ``compute``; an infinite sum on a finite ``base`` (two finite values
    that overflow ``compute``, e.g. bfloat16's largest plus itself in float32, or an infinite
    update) is the largest finite value of its sign instead; NaN stays NaN.

    The clip reads only ``total`` and ``base``: a second use of ``update`` would keep XLA from
    contracting the multiply that produced it into this add, and the sum would no longer be
    ``optax.apply_updates``' bit for bit (and a clip compiles faster than a test for inf)."""
    b = base.astype(compute)
    total = b + update.astype(compute)
    largest = jnp.finfo(compute).max
    return jnp.where(jnp.isfinite(b), jnp.clip(total, -largest, largest), total)


def _master_or(master: Any, params: optax.Params) -> optax.Params:
    """The float32 master copy where there is one, else the parameter."""
    return jax.tree_util.tree_map(
        lambda m, p: p if m is None else m, master, params, is_leaf=lambda x: x is None
    )


class LowPrecisionParamsState(NamedTuple):
    """``count``: int32 steps (the rounding noise's seed); ``master``: float32 copies of the
    bf16/f16 parameters (``None`` for other leaves, or without master weights);
    ``inner_state``: the wrapped optimizer's state."""

    count: jax.Array
    master: Any
    inner_state: optax.OptState


def low_precision_params(
    inner: optax.GradientTransformation,
    *,
    master_weights: bool = False,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Wrap ``inner`` so bf16/f16 parameters keep learning.

    ``master_weights``: keep ``θ32``, a float32 copy of each bf16/f16 parameter, in the state;
    ``inner`` sees ``θ32`` (its state is built from it, so default moments are float32, and
    weight decay acts on it), ``θ32 ← θ32 + u`` exactly, and the
    parameter becomes ``round(θ32)`` (TransformerEngine, apex). ``stochastic_rounding``: the
    new parameter ``θ + u`` (or ``θ32``) is rounded stochastically. The emitted update is
    ``new - θ`` in float32, exact, so ``apply_updates`` lands on ``new``; ``new`` saturates at
    the parameter dtype's largest finite value. Leaves of float32 and wider pass through
    unchanged. Extra arguments (``value=loss``...) are passed to ``inner``.
    """
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: optax.Params) -> LowPrecisionParamsState:
        master = jax.tree_util.tree_map(
            lambda p: (
                p.astype(jnp.float32) if master_weights and num.is_low_precision(p.dtype) else None
            ),
            params,
        )
        return LowPrecisionParamsState(
            num.zero_count(), master, inner.init(_master_or(master, params))
        )

    def update_fn(
        updates: optax.Updates,
        state: LowPrecisionParamsState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, LowPrecisionParamsState]:
        if params is None:
            raise ValueError(
                "bf16/f16 parameter rounding needs the parameters: call "
                "update(updates, state, params)."
            )
        base = _master_or(state.master, params)
        inner_updates, inner_state = inner.update(updates, state.inner_state, base, **extra_args)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        keys = step_keys(state.count, PARAMS_STREAM, len(leaves))

        def leaf(p: jax.Array, b: jax.Array, u: jax.Array, key: jax.Array):
            if not num.is_low_precision(p.dtype):
                return u, None
            compute = num.compute_dtype(b.dtype)
            new = _saturating_sum(b, u, compute)
            rounded = round_to_dtype(
                new, p.dtype, uniform_noise(key, p.shape) if stochastic_rounding else None
            )
            return rounded.astype(compute) - p.astype(compute), new if b.dtype != p.dtype else None

        results = [
            leaf(*args)
            for args in zip(
                leaves, treedef.flatten_up_to(base), treedef.flatten_up_to(inner_updates), keys
            )
        ]
        new_updates = treedef.unflatten([u for u, _ in results])
        master = treedef.unflatten([m for _, m in results]) if master_weights else state.master
        return new_updates, LowPrecisionParamsState(
            num.safe_increment(state.count), master, inner_state
        )

    return transformation(init_fn, update_fn)
