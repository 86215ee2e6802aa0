"""Kahan-compensated low-precision parameters (torch-optimi's ``kahan_sum``).

For each bfloat16/float16 parameter ``θ`` a compensation buffer ``c`` of its dtype holds what
rounding ``θ`` has lost so far; with ``u`` the inner optimizer's update and ``round`` to the
parameter dtype (to nearest), in optimi's order:

    c ← round(c + u),   θ' ← round(θ + c),   c ← round(c - (θ' - θ))

so updates far below half an ulp of ``θ`` accumulate in ``c`` until they move ``θ``. The update
emitted is ``θ' - θ`` in float32 (exact), so ``apply_updates`` lands on ``θ'``. Memory: one
buffer of the parameter's dtype per low-precision leaf, 2 bytes per bf16/f16 parameter (half
of ``master_weights``' float32 copy); float32 and wider leaves pass through with no buffer.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamw_jax import _numerics as num
from adamw_jax._states import transformation


class KahanSummationState(NamedTuple):
    """``compensation``: ``c`` per bf16/f16 parameter (``None`` for the others);
    ``inner_state``: the wrapped optimizer's state."""

    compensation: Any
    inner_state: optax.OptState


def _is_none(node: Any) -> bool:
    return node is None


def kahan_summation(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Apply ``inner``'s updates to bf16/f16 parameters with Kahan compensation (math in the
    module docstring)."""
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: optax.Params) -> KahanSummationState:
        compensation = jax.tree_util.tree_map(
            lambda p: jnp.zeros_like(p) if num.is_low_precision(p.dtype) else None, params
        )
        return KahanSummationState(compensation, inner.init(params))

    def update_fn(
        updates: optax.Updates,
        state: KahanSummationState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, KahanSummationState]:
        if params is None:
            raise ValueError(
                "kahan_summation needs the parameters: call update(updates, state, params)."
            )
        inner_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)

        def leaf(p: jax.Array, u: jax.Array, c: jax.Array | None):
            if c is None:
                return u, None
            compute = num.compute_dtype(p.dtype)
            c = (c.astype(compute) + u.astype(compute)).astype(p.dtype).astype(compute)
            new = (p.astype(compute) + c).astype(p.dtype).astype(compute)
            moved = new - p.astype(compute)
            return moved, (c - moved).astype(p.dtype)

        leaves, treedef = jax.tree_util.tree_flatten(params)
        results = [
            leaf(*args)
            for args in zip(
                leaves,
                treedef.flatten_up_to(inner_updates),
                treedef.flatten_up_to(state.compensation),
            )
        ]
        return treedef.unflatten([u for u, _ in results]), KahanSummationState(
            treedef.unflatten([c for _, c in results]), inner_state
        )

    return transformation(init_fn, update_fn)


def kahan_compensation_bytes(opt_state: optax.OptState) -> int:
    """The bytes the Kahan buffers take in ``opt_state`` (0 without ``kahan_summation``)."""
    states = [
        node
        for node in jax.tree_util.tree_leaves(
            opt_state, is_leaf=lambda n: isinstance(n, KahanSummationState)
        )
        if isinstance(node, KahanSummationState)
    ]
    return sum(
        int(jnp.size(c)) * jnp.dtype(c.dtype).itemsize
        for s in states
        for c in jax.tree_util.tree_leaves(s.compensation, is_leaf=_is_none)
        if c is not None
    )
