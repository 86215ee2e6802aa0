"""``apply_updates``: ``θ ← θ + u``, computed in at least float32 and rounded to each
parameter's dtype (as ``optax.apply_updates``, which it can replace anywhere)."""

from __future__ import annotations

import jax
import optax

from adamw_jax import _numerics as num


def apply_updates(params: optax.Params, updates: optax.Updates) -> optax.Params:
    """Return ``params + updates`` leaf by leaf, each in its parameter's dtype.

    ``None`` leaves (masked-out parameters) are passed through.
    """

    def apply(p: jax.Array | None, u: jax.Array | None) -> jax.Array | None:
        if p is None or u is None:
            return p
        dtype = num.compute_dtype(p.dtype)
        return (p.astype(dtype) + u.astype(dtype)).astype(p.dtype)

    return jax.tree_util.tree_map(apply, params, updates, is_leaf=lambda x: x is None)
