"""Where each leaf of a pytree lives in a few contiguous flat buffers.

A ``FlatLayout`` groups the leaves by a static key (their dtype, and for the fused optimizer
whether they are weight-decayed), and gives each leaf a slot ``[offset, offset + size)`` in its
group's buffer. Each buffer's length is rounded up to a multiple of ``multiple`` so that it splits
evenly into blocks (8-bit storage) or across devices (sharding); the tail is zero padding. A group
may also start each leaf at a multiple of an alignment (zero padding in between), so that blocks
of that size never straddle two leaves.

Packing is one ``concatenate`` per group; unpacking is static slices and reshapes, which XLA fuses
into their consumers inside ``jit`` (no copy).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec


@dataclasses.dataclass(frozen=True)
class LeafSlot:
    """One leaf: its group, its offset in the group's buffer, its shape and dtype."""

    group: int
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class FlatLayout:
    """A static, hashable map from a pytree's leaves to flat buffers (one per group).

    ``group_keys[i]`` is the key shared by the leaves of buffer ``i``, ``group_dtypes[i]`` their
    dtype and ``group_sizes[i]`` the buffer's padded length.
    """

    treedef: Any
    slots: tuple[LeafSlot, ...]
    group_keys: tuple[Any, ...]  # hashable; the fused path keys its buffers by tuples
    group_dtypes: tuple[np.dtype, ...]
    group_sizes: tuple[int, ...]

    @property
    def num_groups(self) -> int:
        return len(self.group_keys)

    def leaf_groups(self) -> tuple[tuple[int, ...], ...]:
        """For each group, the indices (in tree order) of its leaves."""
        return tuple(
            tuple(i for i, slot in enumerate(self.slots) if slot.group == group)
            for group in range(self.num_groups)
        )

    def pack(self, tree: Any, dtypes: Sequence[Any] | None = None) -> tuple[jax.Array, ...]:
        """The leaves of ``tree`` concatenated into one zero-padded buffer per group.

        ``dtypes[i]`` is the dtype of buffer ``i`` (default: the group's dtype).
        """
        leaves = self.treedef.flatten_up_to(tree)
        dtypes = self.group_dtypes if dtypes is None else tuple(dtypes)
        return tuple(
            pack_slots(
                [leaves[i] for i in members],
                [self.slots[i] for i in members],
                self.group_sizes[group],
                dtypes[group],
            )
            for group, members in enumerate(self.leaf_groups())
        )

    def unpack(
        self,
        buffers: Sequence[jax.Array],
        cast: Callable[[jax.Array, LeafSlot], jax.Array] | None = None,
    ) -> Any:
        """The pytree whose leaves are slices of ``buffers``, reshaped (and cast to their dtype,
        or by ``cast(value, slot)`` when given)."""
        cast = cast or (lambda value, slot: value.astype(slot.dtype))
        leaves = [
            cast(
                jnp.reshape(buffers[slot.group][slot.offset : slot.offset + slot.size], slot.shape),
                slot,
            )
            for slot in self.slots
        ]
        return self.treedef.unflatten(leaves)


def pack_slots(
    leaves: Sequence[Any], slots: Sequence[LeafSlot], size: int, dtype: Any
) -> jax.Array:
    """``leaves`` raveled to ``dtype`` at their slots' offsets in a zero buffer of ``size``."""
    parts, end = [], 0
    for leaf, slot in zip(leaves, slots):
        if slot.offset > end:  # alignment gap before this leaf
            parts.append(jnp.zeros([slot.offset - end], dtype))
        parts.append(ravel(leaf).astype(dtype))
        end = slot.offset + slot.size
    if end < size or not parts:
        parts.append(jnp.zeros([size - end], dtype))
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def explicit_sharding(leaf: Any) -> NamedSharding | None:
    """The sharding in ``leaf``'s type when it splits it along Explicit mesh axes (JAX's
    sharding in types), else None (unsharded, or on Auto axes, where XLA places the data)."""
    if not isinstance(leaf, jax.Array):
        return None
    sharding = jax.typeof(leaf).sharding
    split = isinstance(sharding, NamedSharding) and any(e is not None for e in sharding.spec)
    return sharding if split else None


def ravel(leaf: Any) -> jax.Array:
    """``leaf`` as a 1-D array. A leaf split along Explicit axes is raveled into a replicated
    array (JAX cannot infer the sharding of a flattened split dimension); the leaves that share
    a flat buffer are small, so gathering them is cheap."""
    sharding = explicit_sharding(leaf)
    if sharding is None:
        return jnp.ravel(jnp.asarray(leaf))
    return jnp.reshape(leaf, (-1,), out_sharding=NamedSharding(sharding.mesh, PartitionSpec()))


def _round_up(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def layout_of(
    tree: Any,
    *,
    group_key: Callable[[int, Any], Hashable] | None = None,
    multiple: int = 1,
    alignment: Callable[[Any], int] | None = None,
) -> FlatLayout:
    """The layout of ``tree``'s leaves (arrays or ``jax.ShapeDtypeStruct``).

    ``group_key(index, leaf)`` decides which leaves share a buffer (default: the leaf's dtype);
    groups are ordered by first appearance in the tree, leaves keep their tree order in a group.
    ``alignment(key)`` (default 1): each leaf of that group starts at a multiple of it.
    """
    if not isinstance(multiple, int) or isinstance(multiple, bool) or multiple < 1:
        raise ValueError(
            f"multiple must be a positive int (the block size or device count each flat buffer is "
            f"padded to a multiple of), got {multiple!r}."
        )
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys: list[Hashable] = []
    dtypes: list[np.dtype] = []
    used: list[int] = []
    slots = []
    for index, leaf in enumerate(leaves):
        dtype = np.dtype(jnp.result_type(leaf))
        key = dtype if group_key is None else group_key(index, leaf)
        if key not in keys:
            keys.append(key)
            dtypes.append(dtype)
            used.append(0)
        group = keys.index(key)
        if dtypes[group] != dtype:
            raise ValueError(
                f"leaves grouped under {key!r} have different dtypes ({dtypes[group]} and {dtype}); "
                "a flat buffer holds one dtype."
            )
        offset = used[group] if alignment is None else _round_up(used[group], alignment(key))
        slot = LeafSlot(group, offset, tuple(np.shape(leaf)), dtype)
        used[group] = offset + slot.size
        slots.append(slot)
    return FlatLayout(
        treedef=treedef,
        slots=tuple(slots),
        group_keys=tuple(keys),
        group_dtypes=tuple(dtypes),
        group_sizes=tuple(_round_up(size, multiple) for size in used),
    )
