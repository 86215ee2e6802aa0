"""Keep the parameters themselves flat: one contiguous buffer per dtype across all steps.

A jitted step pays a fixed cost for every array it takes and returns; with 2000 small tensors
that cost (params, grads and two moments: 8000 buffers) dominates the step. Flatten once, carry
the flat buffers as the training state, and let the model see its usual pytree through
``unflatten``, whose static slices XLA fuses into their consumers (no copy). Gradients are then
taken with respect to the flat buffers, so the optimizer sees a handful of arrays:

    buffers, layout = aw.flat.flatten(params, mask=decay_mask)
    opt = aw.adamw(1e-3, mask=aw.flat.decay_mask(layout))
    loss_of_flat = aw.flat.on_flat(loss_fn, layout)      # loss_fn(params, batch) -> loss
    grads = jax.grad(loss_of_flat)(buffers, batch)        # a tuple of flat buffers
    buffers, state = aw.update_and_apply(opt, grads, state, buffers)   # one pass, in place

It pays off when a model has many small tensors (hundreds or more, under ~100k elements each):
there the step time is per-buffer overhead, not memory traffic. With a few large tensors the
step is memory bound either way and flattening changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adamw_jax.fused._flat_layout import FlatLayout, layout_of
from adamw_jax.transforms._masking import Mask, resolve_mask

__all__ = ["FlatLayout", "decay_mask", "flatten", "on_flat", "unflatten"]


def flatten(
    params: Any, *, mask: Mask | None = None, multiple: int = 1
) -> tuple[tuple[jax.Array, ...], FlatLayout]:
    """The parameters as flat buffers, and the layout that maps them back.

    Args:
      params: a pytree of arrays.
      mask: optional weight-decay mask (a tree of bools, a prefix of one, or a callable); decayed
        and non-decayed leaves then go to separate buffers so that ``decay_mask(layout)`` can
        mask whole buffers.
      multiple: pad each buffer's length to a multiple of this (a device count, a block size).

    Returns:
      ``(buffers, layout)``: one 1-D buffer per dtype (and mask flag), zero-padded.
    """
    if mask is None:
        layout = layout_of(params, multiple=multiple)
    else:
        flags = jax.tree_util.tree_leaves(resolve_mask(mask, params))
        layout = layout_of(
            params,
            group_key=lambda index, leaf: (np.dtype(jnp.result_type(leaf)), flags[index]),
            multiple=multiple,
        )
    return layout.pack(params), layout


def unflatten(layout: FlatLayout, buffers: tuple[jax.Array, ...]) -> Any:
    """The parameter pytree as slices of ``buffers`` (zero-copy inside ``jit``)."""
    if len(buffers) != layout.num_groups:
        raise ValueError(
            f"buffers has {len(buffers)} arrays but the layout has {layout.num_groups} groups; "
            "pass the tuple returned by flatten (or an update of it)."
        )
    for group, (buffer, size) in enumerate(zip(buffers, layout.group_sizes)):
        if tuple(np.shape(buffer)) != (size,):
            raise ValueError(
                f"buffers[{group}] has shape {tuple(np.shape(buffer))} but the layout's buffer "
                f"{group} holds ({size},) elements (its leaves and padding); pass the buffers "
                "returned by flatten with this layout (or an update of them), not another "
                "model's or a resized copy."
            )
    return layout.unpack(buffers)


def decay_mask(layout: FlatLayout) -> tuple[bool, ...]:
    """The mask for ``adamw(mask=...)`` on the flat buffers: ``True`` where decayed.

    Needs a layout built with ``flatten(..., mask=...)``.
    """
    decayed = [bool(key[1]) for key in layout.group_keys if isinstance(key, tuple)]
    if len(decayed) != layout.num_groups:
        raise ValueError("this layout was built without a mask: call flatten(params, mask=...).")
    return tuple(decayed)


def on_flat(fn: Callable[..., Any], layout: FlatLayout) -> Callable[..., Any]:
    """``fn(params, *args)`` as a function of the flat buffers, ``fn(buffers, *args)``.

    ``jax.grad`` of the result gives gradients as flat buffers, ready for the optimizer.
    """

    def fn_of_flat(buffers: tuple[jax.Array, ...], *args: Any, **kwargs: Any) -> Any:
        return fn(unflatten(layout, buffers), *args, **kwargs)

    return fn_of_flat
