"""Loss scaling for low-precision training, and skipping steps whose gradients are not finite.

``loss_scaling`` divides the gradients by the scale ``S`` the loss was multiplied by
(``loss * current_loss_scale(opt_state)``). With ``dynamic=True`` it also adapts ``S`` as
``torch.amp.GradScaler`` and ``keras.optimizers.LossScaleOptimizer`` do, within
``[min_scale, max_scale]``:

    unscaled gradients not all finite:  S ← max(S / factor, min_scale),  n ← 0
    finite and n + 1 = growth_interval: S ← min(S · factor, max_scale),  n ← 0
    finite otherwise:                   n ← n + 1

so a run of overflows stops at the floor instead of reaching 0, and growth resumes after
``growth_interval`` finite steps. With ``dynamic=False`` the scale stays ``initial_scale`` (Keras
``loss_scale_factor``).

``skip_nonfinite(inner)`` runs ``inner`` and keeps its result only if the step is finite: the
gradients it was given, the updates ``inner`` produced, and every state element ``inner``
produced that was finite before (a clipping norm or a moment that overflows inside ``inner`` is
caught, not only a bad input). On other steps it emits zero updates and keeps ``inner``'s state
bit for bit, so params, moments and every counter inside are unchanged, and it counts the step.

An overflowed step must be skipped, never applied: ``loss_scaling(S, inner=tx)`` does it itself
(it is ``optax.chain(loss_scaling(S), skip_nonfinite(tx))``, as ``GradScaler.step`` skips the
optimizer); ``loss_scaling(S)`` alone is the first link of such a chain and passes the
non-finite gradients on, to the ``skip_nonfinite`` that must follow it:

    loss_scaling(2.0**15, inner=adamw(1e-3))
    optax.chain(loss_scaling(2.0**15), skip_nonfinite(adamw(1e-3)))     # the same
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adamw_jax import _numerics as num
from adamw_jax import _validation as check
from adamw_jax._states import find_state, transformation


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
    return jnp.all(
        jnp.stack(
            [jnp.all(jnp.isfinite(leaf)) for leaf in _inexact_leaves(tree)] or [jnp.array(True)]
        )
    )


def _inexact_leaves(tree: Any) -> list[jax.Array]:
    return [
        leaf
        for leaf in jax.tree_util.tree_leaves(tree)
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    ]


def _turned_nonfinite(before: optax.OptState, after: optax.OptState) -> jax.Array:
    """Whether some element of ``after`` is not finite where it was finite ``before``.

    Elements that were already ``inf`` (a "best loss so far" starts there) do not count."""
    flags = [
        jnp.any(~jnp.isfinite(a) & jnp.isfinite(b))
        for b, a in zip(_inexact_leaves(before), _inexact_leaves(after))
    ]
    return jnp.any(jnp.stack(flags)) if flags else jnp.array(False)


def _produced_nonfinite(
    before: optax.OptState, updates: optax.Updates, after: optax.OptState
) -> jax.Array:
    """Whether ``inner`` turned a finite state element non-finite, or emitted non-finite updates
    from a state free of NaN (a NaN already in the state, let through by ``max_consecutive``, is
    inherited by its updates, as under ``optax.apply_if_finite``: not a new fault)."""
    nan_before = jnp.any(
        jnp.stack([jnp.any(jnp.isnan(x)) for x in _inexact_leaves(before)] or [jnp.array(False)])
    )
    return _turned_nonfinite(before, after) | (~all_finite(updates) & ~nan_before)


# The floor and ceiling of the dynamic scale. Below 1 the scale would shrink the gradients, which
# no overflow needs (the unscaled loss gradient itself overflowing is not a scaling problem, and a
# smaller scale only flushes the small gradients to 0), and it is where TensorFlow's dynamic loss
# scale stops. 2^24 lifts float16's smallest subnormal, 2^-24, to 1: no float16 gradient needs
# more (torch's scale has neither bound and reaches 0 after ~150 overflows in a row).
MIN_SCALE, MAX_SCALE = 1.0, 2.0**24


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"{name} must be a bool (True or False), got {type(value).__name__} {value!r}."
        )


def _check_scale(name: str, value: Any, hint: str) -> float | None:
    check.check_range(name, value, low=0.0, high=math.inf, high_inclusive=False, hint=hint)
    number = check.concrete_float(value)
    if number == 0.0:
        raise ValueError(f"{name} must be finite and > 0, got 0.0. {hint}")
    return number


def loss_scaling(
    initial_scale: float,
    dynamic: bool = True,
    growth_interval: int = 2000,
    factor: float = 2.0,
    *,
    min_scale: float = MIN_SCALE,
    max_scale: float = MAX_SCALE,
    inner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Divide the gradients by the loss scale ``S``, adapting ``S`` when ``dynamic`` (module
    docstring). Place it first in the chain.

    Args:
      initial_scale: ``S`` at the start, a finite float > 0 (torch 2**16, Keras 2**15); in
        ``[min_scale, max_scale]`` when ``dynamic``.
      dynamic: adapt ``S`` to overflows; ``False`` keeps it constant.
      growth_interval: finite steps after which ``S`` grows, an int >= 1.
      factor: growth and back-off factor, > 1.
      min_scale: the floor of a dynamic ``S``, finite and > 0 (default 1: never shrink the
        gradients).
      max_scale: the ceiling of a dynamic ``S``, finite and >= ``min_scale`` (default 2**24).
      inner: the optimizer to run on the unscaled gradients, skipping (and counting, see
        ``skipped_steps``) every step that is not finite, as ``skip_nonfinite(inner)``. Without
        it this is the first link of a chain that must put ``skip_nonfinite`` after it.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a ``LossScaleState`` (with
      ``inner``: the chain's tuple ``(LossScaleState, SkipNonfiniteState)``).
    """
    hint = "Pass the finite positive scale the loss is multiplied by, e.g. 2.0**15."
    initial = _check_scale("initial_scale", initial_scale, hint)
    _check_bool("dynamic", dynamic)
    check.check_positive_int(
        "growth_interval",
        growth_interval,
        hint="It is the number of finite steps before the scale grows.",
    )
    check.check_range(
        "factor",
        factor,
        low=1.0,
        high=math.inf,
        high_inclusive=False,
        hint="Use 2.0, as torch and Keras.",
    )
    if check.concrete_float(factor) == 1.0:
        raise ValueError(
            "factor must be > 1, got 1.0: the scale would never change. "
            "Use dynamic=False for a constant scale."
        )
    floor = _check_scale(
        "min_scale", min_scale, f"It is the floor of the dynamic scale, default {MIN_SCALE}."
    )
    ceiling = _check_scale(
        "max_scale", max_scale, f"It is the ceiling of the dynamic scale, default {MAX_SCALE:g}."
    )
    if floor is not None and ceiling is not None:  # None: traced, not checked
        if floor > ceiling:
            raise ValueError(f"min_scale ({floor!r}) must be <= max_scale ({ceiling!r}).")
        if dynamic and initial is not None and not floor <= initial <= ceiling:
            raise ValueError(
                f"initial_scale={initial!r} is outside [min_scale, max_scale] = "
                f"[{floor!r}, {ceiling!r}]; pass a scale inside, or widen the bounds."
            )
    if inner is not None:
        return optax.chain(
            loss_scaling(
                initial_scale,
                dynamic,
                growth_interval,
                factor,
                min_scale=min_scale,
                max_scale=max_scale,
            ),
            skip_nonfinite(inner),
        )

    def init_fn(params: optax.Params) -> LossScaleState:
        del params
        return LossScaleState(
            scale=num.as_hyperparameter(initial_scale), finite_steps=num.zero_count()
        )

    def update_fn(
        updates: optax.Updates,
        state: LossScaleState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, LossScaleState]:
        del params, extra_args
        unscaled = jax.tree_util.tree_map(
            lambda g: (g.astype(num.compute_dtype(g.dtype)) / state.scale).astype(g.dtype), updates
        )
        if not dynamic:
            return unscaled, state
        growth = num.as_hyperparameter(factor)
        low, high = num.as_hyperparameter(min_scale), num.as_hyperparameter(max_scale)
        finite = all_finite(unscaled)
        grows = finite & (state.finite_steps + 1 >= growth_interval)
        grown = jnp.where(grows, jnp.minimum(state.scale * growth, high), state.scale)
        scale = jnp.where(finite, grown, jnp.maximum(state.scale / growth, low))
        finite_steps = jnp.where(finite & ~grows, num.safe_increment(state.finite_steps), 0)
        return unscaled, LossScaleState(scale, finite_steps.astype(num.COUNT_DTYPE))

    return transformation(init_fn, update_fn)


def current_loss_scale(opt_state: optax.OptState) -> jax.Array:
    """``S``, the factor to multiply the loss by, from the ``loss_scaling`` state found anywhere
    in ``opt_state``."""
    return find_state(opt_state, LossScaleState, transform="loss_scaling").scale


def skip_nonfinite(
    inner: optax.GradientTransformation,
    max_consecutive: int | None = None,
    *,
    max_consecutive_errors: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Run ``inner``, keeping its result only on finite steps (module docstring); the drop-in for
    ``optax.apply_if_finite(inner, max_consecutive_errors)``.

    A step is finite when the gradients, the updates ``inner`` produced and the state elements
    it produced (those that were finite before) are all finite. On the other steps the updates
    are zero and ``inner``'s state stays bit for bit what it was. Once a NaN has been let
    through into the state (``max_consecutive``), its updates inherit it and only new faults
    count, so counts and trajectory are ``optax.apply_if_finite``'s on any stream of gradients.

    Args:
      inner: the optimizer to protect (extra arguments such as ``value=loss`` are passed to it).
      max_consecutive: ``None`` skips every non-finite step. An int ``N >= 0`` gives up after
        ``N`` skips in a row and lets the next non-finite step through, as
        ``optax.apply_if_finite``, so a run that keeps producing NaN fails visibly instead of
        silently standing still (``0`` lets every step through, counting the bad ones).
      max_consecutive_errors: optax's name for ``max_consecutive`` (give one of the two).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a ``SkipNonfiniteState``;
      read its counts with ``skipped_steps(opt_state)``.
    """
    if max_consecutive is not None and max_consecutive_errors is not None:
        raise TypeError("pass max_consecutive or max_consecutive_errors (optax's name), not both.")
    limit = max_consecutive if max_consecutive_errors is None else max_consecutive_errors
    name = "max_consecutive" if max_consecutive_errors is None else "max_consecutive_errors"
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer))):
        raise TypeError(
            f"{name} must be an int >= 0 or None, got {type(limit).__name__} "
            f"{limit!r}. It is the number of non-finite steps in a row to skip."
        )
    if limit is not None and limit < 0:
        raise ValueError(
            f"{name} must be an int >= 0 or None, got {limit!r}. "
            "It is the number of non-finite steps in a row to skip."
        )
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: optax.Params) -> SkipNonfiniteState:
        return SkipNonfiniteState(
            consecutive=num.zero_count(), total=num.zero_count(), inner_state=inner.init(params)
        )

    def update_fn(
        updates: optax.Updates,
        state: SkipNonfiniteState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, SkipNonfiniteState]:
        new_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        produced_nonfinite = _produced_nonfinite(state.inner_state, new_updates, inner_state)
        finite = all_finite(updates) & ~produced_nonfinite
        consecutive = jnp.where(finite, 0, num.safe_increment(state.consecutive))
        apply = finite if limit is None else finite | (consecutive > limit)
        zeros = jax.tree_util.tree_map(jnp.zeros_like, new_updates)
        new_updates, inner_state = jax.lax.cond(
            apply,
            lambda kept, skipped: kept,
            lambda kept, skipped: skipped,
            (new_updates, inner_state),
            (zeros, state.inner_state),
        )
        return new_updates, SkipNonfiniteState(
            consecutive=consecutive.astype(num.COUNT_DTYPE),
            total=jnp.where(finite, state.total, num.safe_increment(state.total)),
            inner_state=inner_state,
        )

    return transformation(init_fn, update_fn)


def skipped_steps(opt_state: optax.OptState) -> SkippedSteps:
    """Skipped-step counts of the ``skip_nonfinite`` found anywhere in ``opt_state``:
    ``consecutive`` (the current run of non-finite steps) and ``total``."""
    state = find_state(opt_state, SkipNonfiniteState, transform="skip_nonfinite")
    return SkippedSteps(consecutive=state.consecutive, total=state.total)
