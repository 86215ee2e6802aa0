"""``apply_updates``: ``θ ← θ + u``, computed in at least float32 and rounded to each
parameter's dtype (as ``optax.apply_updates``, which it can replace anywhere), to nearest or,
where asked, stochastically (see ``adamw_jax.lowbit``)."""

from __future__ import annotations

import jax
import optax

from adamw_jax import lowbit


def apply_updates(
    params: optax.Params, updates: optax.Updates, *, stochastic_rounding: bool = False,
    step: jax.typing.ArrayLike | None = None,
) -> optax.Params:
    """Return ``params + updates`` leaf by leaf, each in its parameter's dtype.

    ``None`` leaves (masked-out parameters) are passed through.

    Args:
      stochastic_rounding: round each sum to the parameter dtype stochastically, so that bf16
        parameters keep learning when ``|u|`` is below half an ulp (``E[θ_new] = θ + u``).
      step: the step count the rounding noise is derived from (e.g. the training loop's
        counter); required with ``stochastic_rounding``, so there is no key to manage.
    """
    if stochastic_rounding and step is None:
        raise ValueError(
            "apply_updates(stochastic_rounding=True) needs step=..., the step count the rounding "
            "noise is derived from (e.g. the training loop's counter)."
        )
    is_none = lambda x: x is None  # noqa: E731
    leaves, treedef = jax.tree_util.tree_flatten(params, is_leaf=is_none)
    keys = (lowbit.step_keys(step, lowbit.PARAMS_STREAM, len(leaves)) if stochastic_rounding
            else [None] * len(leaves))

    def apply(p: jax.Array | None, u: jax.Array | None, key: jax.Array | None) -> jax.Array | None:
        if p is None or u is None:
            return p
        return lowbit.add_and_round(p, u, p.dtype, key)

    return treedef.unflatten(
        [apply(*args) for args in zip(leaves, treedef.flatten_up_to(updates), keys)])
