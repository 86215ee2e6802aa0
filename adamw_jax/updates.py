"""``apply_updates``: ``θ ← θ + u``, computed in at least float32 and rounded to each
parameter's dtype (as ``optax.apply_updates``, which it can replace anywhere), to nearest or,
where asked, stochastically (see ``adamw_jax.lowbit``); ``update_and_apply``: a whole step, in
one pass for the fused optimizers."""

from __future__ import annotations

from typing import Any

import jax
import optax

from adamw_jax import lowbit
from adamw_jax.fused import FusedTransformation


def apply_updates(
    params: optax.Params,
    updates: optax.Updates,
    *,
    stochastic_rounding: bool = False,
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
    is_none = lambda x: x is None  # noqa: E731
    leaves, treedef = jax.tree_util.tree_flatten(params, is_leaf=is_none)
    if not stochastic_rounding:
        keys = [None] * len(leaves)
    elif step is None:
        raise ValueError(
            "apply_updates(stochastic_rounding=True) needs step=..., the step count the rounding "
            "noise is derived from (e.g. the training loop's counter)."
        )
    else:
        keys = lowbit.step_keys(step, lowbit.PARAMS_STREAM, len(leaves))

    def apply(p: jax.Array | None, u: jax.Array | None, key: jax.Array | None) -> jax.Array | None:
        if p is None or u is None:
            return p
        return lowbit.add_and_round(p, u, p.dtype, key)

    return treedef.unflatten(
        [apply(*args) for args in zip(leaves, treedef.flatten_up_to(updates), keys)]
    )


def update_and_apply(
    optimizer: optax.GradientTransformation,
    grads: optax.Updates,
    state: optax.OptState,
    params: optax.Params,
    **extra_args: Any,
) -> tuple[optax.Params, optax.OptState]:
    """One optimizer step, ``(new_params, new_state)``: ``optimizer.update`` then
    ``apply_updates``, or for ``adamw``/``adam`` with ``fused=True`` both in one pass.

    The one-pass step reads ``g, θ, m, v`` and writes ``θ, m, v`` once per element (28 bytes per
    float32 parameter, against 40 for ``update`` followed by ``apply_updates``); jitted with the
    parameters and state donated, it runs in place. Any other optimizer (an ``optax.chain``, a
    wrapped adamw) takes the two-call path, with the same result.
    """
    if isinstance(optimizer, FusedTransformation):
        return optimizer.step(grads, state, params, **extra_args)
    updates, state = optax.with_extra_args_support(optimizer).update(
        grads, state, params, **extra_args
    )
    return apply_updates(params, updates), state
