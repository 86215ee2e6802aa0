"""Exponential moving average of the parameters, kept in the optimizer state (Keras ``use_ema``).

Placed last in a chain, it sees the final updates ``u`` and the current parameters ``θ``, so the
new parameters are ``θ' = θ + u`` (rounded to the parameter dtype, as ``apply_updates`` does).
With ``s = count // accumulation_steps`` the step it counts (0-based) and momentum ``μ``:

    s = 0:   θ̄ ← θ'                        (the first step copies the weights: no debiasing)
    s > 0:   θ̄ ← μ·θ̄ + (1 - μ)·θ'
    overwrite_every = N and (s + 1) % N = 0:   u ← θ̄ - θ   (the step lands the params on θ̄)

This is Keras' ``use_ema``, ``ema_momentum`` and ``ema_overwrite_frequency``. Keras updates the
average on every call, micro-steps included, but counts ``s`` in accumulated steps under
``gradient_accumulation_steps=k``: ``param_ema(..., accumulation_steps=k)`` placed after
``accumulate_gradients(k, ...)`` reproduces that. Placed inside ``inner`` instead, the average is
updated once per accumulated step. Read the average with ``ema_params(opt_state)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamw_jax import _numerics as num
from adamw_jax import _validation as check
from adamw_jax._states import find_state, transformation


class ParamEmaState(NamedTuple):
    """``count``: int32 calls so far; ``ema``: the moving average of the parameters."""

    count: jax.Array
    ema: optax.Params


def param_ema(
    momentum: float = 0.99,
    overwrite_every: int | None = None,
    *,
    accumulation_steps: int = 1,
    ema_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Keep ``θ̄``, an EMA of the parameters; optionally move the parameters onto it every
    ``overwrite_every`` steps (math in the module docstring). Place it last in the chain.

    Args:
      momentum: ``μ`` in [0, 1], Keras ``ema_momentum``.
      overwrite_every: Keras ``ema_overwrite_frequency``; ``None`` never overwrites (read the
        average with ``ema_params`` at the end of training instead).
      accumulation_steps: Keras ``gradient_accumulation_steps`` when this transform sits after
        ``accumulate_gradients``: the first-step copy and ``overwrite_every`` count accumulated
        steps ``count // accumulation_steps``.
      ema_dtype: storage dtype of the average; ``None`` keeps the parameter dtype (Keras). Use
        ``jnp.float32`` for bfloat16 parameters: ``(1 - μ)·(θ' - θ̄)`` is below half an ulp of
        ``θ̄`` in bfloat16 for most steps, and the average would not move.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a ``ParamEmaState``.
    """
    check.check_range(
        "momentum",
        momentum,
        low=0.0,
        high=1.0,
        hint="It is the EMA decay per step, typically 0.99 or 0.999.",
    )
    check.check_positive_int(
        "overwrite_every",
        overwrite_every,
        allow_none=True,
        hint="It is the number of steps between overwrites of the params.",
    )
    check.check_positive_int(
        "accumulation_steps",
        accumulation_steps,
        hint="It is the micro-steps per accumulated step (1: none).",
    )
    ema_dtype = num.storage_dtype(ema_dtype, argument="ema_dtype")
    mu = num.as_hyperparameter(momentum)
    one_minus_mu = num.one_minus(momentum)

    def init_fn(params: optax.Params) -> ParamEmaState:
        return ParamEmaState(
            count=num.zero_count(),
            ema=jax.tree_util.tree_map(
                lambda p: jnp.zeros(jnp.shape(p), ema_dtype or p.dtype), params
            ),
        )

    def update_fn(
        updates: optax.Updates,
        state: ParamEmaState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ParamEmaState]:
        del extra_args
        if params is None:
            raise ValueError("param_ema needs the parameters: call update(updates, state, params).")
        step = state.count // accumulation_steps
        first = step == 0

        def average(u: jax.Array, p: jax.Array, ema: jax.Array) -> jax.Array:
            dtype = num.compute_dtype(jnp.result_type(p, ema))
            new_p = (p.astype(dtype) + u.astype(dtype)).astype(p.dtype).astype(dtype)
            moved = mu * ema.astype(dtype) + one_minus_mu * new_p
            return jnp.where(first, new_p, moved).astype(ema.dtype)

        ema = jax.tree_util.tree_map(average, updates, params, state.ema)
        if overwrite_every is not None:
            overwrite = (step + 1) % overwrite_every == 0

            def onto_average(u: jax.Array, p: jax.Array, new_ema: jax.Array) -> jax.Array:
                dtype = num.compute_dtype(jnp.result_type(p, new_ema))
                return jnp.where(overwrite, new_ema.astype(dtype) - p.astype(dtype), u).astype(
                    u.dtype
                )

            updates = jax.tree_util.tree_map(onto_average, updates, params, ema)
        return updates, ParamEmaState(count=num.safe_increment(state.count), ema=ema)

    return transformation(init_fn, update_fn)


def ema_params(opt_state: optax.OptState) -> optax.Params:
    """The parameter average ``θ̄`` kept by the ``param_ema`` found anywhere in ``opt_state``."""
    return find_state(opt_state, ParamEmaState, transform="param_ema").ema
