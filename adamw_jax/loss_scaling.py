"""Loss scaling for low-precision training, and skipping steps whose gradients are not finite.

``loss_scaling`` divides the gradients by the scale ``S`` the loss was multiplied by
(``loss * current_loss_scale(opt_state)``). With ``dynamic=True`` it also adapts ``S`` as
``torch.amp.GradScaler`` and ``keras.optimizers.LossScaleOptimizer`` do:

    unscaled gradients not all finite:  S ← S / factor,  n ← 0
    finite and n + 1 = growth_interval: S ← S · factor,  n ← 0     (kept if S · factor overflows)
    finite otherwise:                   n ← n + 1

With ``dynamic=False`` the scale stays ``initial_scale`` (Keras ``loss_scale_factor``).

``skip_nonfinite(inner)`` runs ``inner`` only on steps whose gradients are all finite; on the
others it emits zero updates and leaves ``inner``'s state untouched, so params, moments and every
counter inside are unchanged. The two compose into mixed-precision training:

    optax.chain(loss_scaling(2.0**15), skip_nonfinite(adamw(1e-3)))
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamw_jax import _numerics as num
from adamw_jax import _validation as check
from adamw_jax._state_search import find_state
from adamw_jax._wrappers import skipped_update


class LossScaleState(NamedTuple):
    """``scale``: the current loss scale ``S``; ``finite_steps``: int32 finite steps since
    ``S`` last changed."""

    scale: jax.Array
    finite_steps: jax.Array


class SkipNonfiniteState(NamedTuple):
    """``consecutive``/``total``: int32 counts of skipped steps (in a row now, and overall);
    ``inner_state``: the wrapped optimizer's state, advanced on finite steps only."""

    consecutive: jax.Array
    total: jax.Array
    inner_state: optax.OptState


class SkippedSteps(NamedTuple):
    """Skipped-step counts read by ``skipped_steps``."""

    consecutive: jax.Array
    total: jax.Array


def all_finite(tree: optax.Updates) -> jax.Array:
    """A boolean scalar: every element of every leaf is finite (no NaN, no ±inf)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]
                             or [jnp.array(True)]))


def loss_scaling(
    initial_scale: float,
    dynamic: bool = True,
    growth_interval: int = 2000,
    factor: float = 2.0,
) -> optax.GradientTransformation:
    """Divide the gradients by the loss scale ``S``, adapting ``S`` when ``dynamic`` (module
    docstring). Place it first in the chain, before ``skip_nonfinite``.

    Args:
      initial_scale: ``S`` at the start, a finite float > 0 (torch 2**16, Keras 2**15).
      dynamic: adapt ``S`` to overflows; ``False`` keeps it constant.
      growth_interval: finite steps after which ``S`` grows, an int >= 1.
      factor: growth and back-off factor, > 1.

    Returns:
      An ``optax.GradientTransformation`` whose state is a ``LossScaleState``.
    """
    check.check_range("initial_scale", initial_scale, low=0.0, high=math.inf,
                      hint="Pass the finite positive scale the loss is multiplied by, e.g. 2.0**15.")
    if check.concrete_float(initial_scale) in (0.0, math.inf):
        raise ValueError(f"initial_scale must be finite and > 0, got {initial_scale!r}; "
                         "e.g. 2.0**15.")
    check.check_positive_int("growth_interval", growth_interval,
                             hint="It is the number of finite steps before the scale grows.")
    check.check_range("factor", factor, low=1.0, hint="Use 2.0, as torch and Keras.")
    if check.concrete_float(factor) == 1.0:
        raise ValueError("factor must be > 1, got 1.0: the scale would never change. "
                         "Use dynamic=False for a constant scale.")
    growth = num.as_hyperparameter(factor)

    def init_fn(params: optax.Params) -> LossScaleState:
        del params
        return LossScaleState(scale=num.as_hyperparameter(initial_scale),
                              finite_steps=num.zero_count())

    def update_fn(
        updates: optax.Updates, state: LossScaleState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, LossScaleState]:
        del params
        unscaled = jax.tree_util.tree_map(
            lambda g: (g.astype(num.compute_dtype(g.dtype)) / state.scale).astype(g.dtype), updates)
        if not dynamic:
            return unscaled, state
        finite = all_finite(unscaled)
        grows = finite & (state.finite_steps + 1 >= growth_interval)
        grown = jnp.where(jnp.isfinite(state.scale * growth), state.scale * growth, state.scale)
        scale = jnp.where(finite, jnp.where(grows, grown, state.scale), state.scale / growth)
        finite_steps = jnp.where(finite & ~grows, num.safe_increment(state.finite_steps), 0)
        return unscaled, LossScaleState(scale=scale, finite_steps=finite_steps.astype(num.COUNT_DTYPE))

    return optax.GradientTransformation(init_fn, update_fn)


def current_loss_scale(opt_state: optax.OptState) -> jax.Array:
    """``S``, the factor to multiply the loss by, from the ``loss_scaling`` state found anywhere
    in ``opt_state``."""
    return find_state(opt_state, LossScaleState, transform="loss_scaling").scale


def skip_nonfinite(
    inner: optax.GradientTransformation, max_consecutive: int | None = None
) -> optax.GradientTransformationExtraArgs:
    """Run ``inner`` only on steps whose gradients are all finite (module docstring).

    Args:
      inner: the optimizer to protect.
      max_consecutive: ``None`` skips every non-finite step. An int ``N`` gives up after ``N``
        skips in a row and lets the next non-finite step through, as ``optax.apply_if_finite``,
        so a run that keeps producing NaN fails visibly instead of silently standing still.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a ``SkipNonfiniteState``;
      read its counts with ``skipped_steps(opt_state)``.
    """
    check.check_positive_int("max_consecutive", max_consecutive, allow_none=True,
                             hint="It is the number of non-finite steps in a row to skip.")
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: optax.Params) -> SkipNonfiniteState:
        return SkipNonfiniteState(consecutive=num.zero_count(), total=num.zero_count(),
                                  inner_state=inner.init(params))

    def update_fn(
        updates: optax.Updates,
        state: SkipNonfiniteState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, SkipNonfiniteState]:
        finite = all_finite(updates)
        consecutive = jnp.where(finite, 0, num.safe_increment(state.consecutive))
        apply = finite if max_consecutive is None else finite | (consecutive > max_consecutive)
        new_updates, inner_state = jax.lax.cond(
            apply,
            lambda u, s, p: inner.update(u, s, p, **extra_args),
            lambda u, s, p: skipped_update(inner, u, s, p, extra_args),
            updates, state.inner_state, params,
        )
        return new_updates, SkipNonfiniteState(
            consecutive=consecutive.astype(num.COUNT_DTYPE),
            total=jnp.where(finite, state.total, num.safe_increment(state.total)),
            inner_state=inner_state,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def skipped_steps(opt_state: optax.OptState) -> SkippedSteps:
    """Skipped-step counts of the ``skip_nonfinite`` found anywhere in ``opt_state``:
    ``consecutive`` (the current run of non-finite steps) and ``total``."""
    state = find_state(opt_state, SkipNonfiniteState, transform="skip_nonfinite")
    return SkippedSteps(consecutive=state.consecutive, total=state.total)
