"""Gradient accumulation: the mean of ``k`` micro-step gradients feeds the inner optimizer once.

On the micro-step at position ``i`` (0-based) of a window of ``k``:

    S ← S + g_i                                   (S kept in at least float32)
    i < k - 1:  emit zero updates; the inner optimizer is not run
    i = k - 1:  ḡ = S / k;  u, inner_state ← inner.update(ḡ, inner_state, params);  S ← 0;  emit u

The branch is a ``lax.cond``, so under ``jit`` the inner update (moments, schedules, decay) is
not computed on the ``k - 1`` accumulating micro-steps, unlike ``optax.MultiSteps``, which
computes it every micro-step and masks the result. (Under ``vmap`` with a batched state the
predicate is batched and XLA evaluates both branches; it is still correct.)

Which counter sees what:

* every counter inside ``inner`` (the Adam step ``t`` of bias correction, learning-rate,
  weight-decay and ``param_ema`` schedules) counts *accumulated* steps: it advances once per
  window, because the inner state is untouched on the other micro-steps;
* ``AccumulateGradientsState.micro_step`` is the position in the current window.

Keras ``gradient_accumulation_steps=k`` evaluates the learning-rate schedule at the *micro-step*
counter (``n·k - 1`` on the ``n``-th update) while bias correction and the EMA see accumulated
steps; ``micro_step_schedule(schedule, k)`` gives the inner optimizer that learning rate.
Keras clips the mean gradient, so put clipping inside ``inner`` to match it, and place
``param_ema(..., accumulation_steps=k)`` after this wrapper (Keras updates its EMA every
micro-step).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamw_jax import _numerics as num
from adamw_jax import _validation as check
from adamw_jax._states import transformation
from adamw_jax.transforms._wrappers import skipped_update

_EVERY_K_HINT = "Pass the number of micro-steps per update, e.g. 4 (1: no accumulation)."


class AccumulateGradientsState(NamedTuple):
    """``micro_step``: int32 position in the current window, 0 to ``every_k - 1``;
    ``gradient_sum``: the window's gradients so far, in at least float32;
    ``inner_state``: the wrapped optimizer's state, advanced once per window."""

    micro_step: jax.Array
    gradient_sum: optax.Updates
    inner_state: optax.OptState


def micro_step_schedule(schedule: optax.Schedule, every_k: int) -> optax.Schedule:
    """``schedule`` seen from inside ``accumulate_gradients``: at accumulated step ``c`` it is
    evaluated at micro-step ``c·k + k - 1``, the 0-based micro-step on which the update happens
    (Keras' learning rate under ``gradient_accumulation_steps``)."""
    check.check_positive_int("every_k", every_k, hint=_EVERY_K_HINT)
    return lambda count: schedule(count * every_k + (every_k - 1))


def accumulate_gradients(
    every_k: int, *, inner: optax.GradientTransformation | None = None
) -> optax.GradientTransformationExtraArgs:
    """Run ``inner`` once every ``every_k`` calls on the mean of the gradients of those calls.

    Args:
      every_k: micro-steps per update, >= 1.
      inner: the optimizer to run on the mean gradient (e.g. ``adamw(...)``). ``None`` emits the
        mean itself on the ``k``-th micro-step and zeros before it; that is right only for
        stateless transforms after it in a chain: a stateful one (Adam's moments) placed after
        would be fed the zeros, so pass it as ``inner``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` (extra arguments such as ``value=`` are passed
      to ``inner`` on the update micro-step) whose state is an ``AccumulateGradientsState``.
    """
    check.check_positive_int("every_k", every_k, hint=_EVERY_K_HINT)
    inner = optax.with_extra_args_support(optax.identity() if inner is None else inner)

    def init_fn(params: optax.Params) -> AccumulateGradientsState:
        return AccumulateGradientsState(
            micro_step=num.zero_count(),
            gradient_sum=jax.tree_util.tree_map(
                lambda p: jnp.zeros(jnp.shape(p), num.compute_dtype(p.dtype)), params
            ),
            inner_state=inner.init(params),
        )

    def update_fn(
        updates: optax.Updates,
        state: AccumulateGradientsState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, AccumulateGradientsState]:
        gradient_sum = jax.tree_util.tree_map(
            lambda total, g: total + g.astype(total.dtype), state.gradient_sum, updates
        )

        def inner_step(
            gradient_sum: optax.Updates, inner_state: optax.OptState, params: optax.Params | None
        ) -> tuple[optax.Updates, optax.OptState, optax.Updates]:
            mean = jax.tree_util.tree_map(
                lambda total, g: (total / every_k).astype(g.dtype), gradient_sum, updates
            )
            new_updates, new_inner_state = inner.update(mean, inner_state, params, **extra_args)
            # Both branches of the cond must agree: an inner optimizer whose state follows the
            # gradient dtype (optax's moments of float16 params fed float32 gradients) is
            # stored back in its own dtypes, as optax.MultiSteps does.
            new_inner_state = jax.tree_util.tree_map(
                lambda new, old: jnp.asarray(new).astype(jnp.result_type(old)),
                new_inner_state,
                inner_state,
            )
            zeros = jax.tree_util.tree_map(jnp.zeros_like, gradient_sum)
            return new_updates, new_inner_state, zeros

        def accumulate(
            gradient_sum: optax.Updates, inner_state: optax.OptState, params: optax.Params | None
        ) -> tuple[optax.Updates, optax.OptState, optax.Updates]:
            return (*skipped_update(inner, updates, inner_state, params, extra_args), gradient_sum)

        is_update = state.micro_step == every_k - 1
        new_updates, inner_state, gradient_sum = jax.lax.cond(
            is_update, inner_step, accumulate, gradient_sum, state.inner_state, params
        )
        micro_step = jnp.where(is_update, 0, state.micro_step + 1).astype(num.COUNT_DTYPE)
        return new_updates, AccumulateGradientsState(micro_step, gradient_sum, inner_state)

    return transformation(init_fn, update_fn)
