"""Schedule-free AdamW (Defazio et al. 2024; ``schedulefree.AdamWScheduleFree``).

The parameters the model sees are ``y``; the state holds ``z`` (the base iterate) and ``v``.
With ``k = count``, ``η_k`` the learning rate (a float or schedule) times the warmup
``min(1, (k+1)/warmup_steps)`` (schedulefree's), ``η_max`` its running maximum and ``t = k + 1``:

    v ← β2·v + (1 - β2)·g²,          d = g / (sqrt(v/(1 - β2^t)) + ε) + λ·y      (decay at y)
    w_k = t^r · η_max^p,   c = w_k / Σ_{j≤k} w_j       (0 while every weight is 0)
    y ← (1 - c)·y + c·z + η_k·(β1·(1 - c) - 1)·d,      z ← z - η_k·d

The evaluation parameters are the average ``x = (y - (1 - β1)·z) / β1``
(``schedule_free_eval_params``). ``optax.contrib.schedule_free_adamw`` has the same numbers
with a constant learning rate; under a schedule or warmup it differs: its step uses
``η_k = η·k/warmup_steps`` (0 at the first step) while its averaging weights use ``η_{k+1}``
(its ``step_count`` starts at 1); here, as schedulefree, both use ``η_k = η·(k+1)/warmup_steps``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamw_jax import _numerics as num
from adamw_jax import _validation as check
from adamw_jax._states import find_state, transformation


class ScheduleFreeAdamWState(NamedTuple):
    """``count``: int32 steps; ``b1``: β1 (for the evaluation parameters); ``weight_sum``:
    ``Σ w_j``; ``max_lr``: ``η_max``; ``z``: the base iterate; ``nu``: the second moment."""

    count: jax.Array
    b1: jax.Array
    weight_sum: jax.Array
    max_lr: jax.Array
    z: optax.Params
    nu: optax.Updates


def schedule_free_adamw(
    learning_rate: optax.ScalarOrSchedule = 0.0025,
    warmup_steps: int | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    weight_lr_power: float = 2.0,
    state_dtype: Any = None,
    *,
    r: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """Schedule-free AdamW (math in the module docstring), ``optax.contrib.schedule_free_adamw``'s
    signature and defaults, plus schedulefree's ``r`` (the power of ``t`` in the weights).

    Args:
      learning_rate: ``η``, a float >= 0 or a schedule of the 0-based step.
      warmup_steps: linear warmup length (``None`` or an int >= 1).
      b1: the interpolation ``β1`` of ``y`` between ``x`` and ``z``, in (0, 1).
      b2, eps: the second moment's decay and the denominator's ε.
      weight_decay: ``λ``, applied at ``y`` as schedulefree (>= 0).
      weight_lr_power: ``p`` of the averaging weights ``η_max^p``.
      state_dtype: storage of ``z`` (``None``: the parameter dtype).
      r: ``t^r`` in the averaging weights (schedulefree's, default 0).
    """
    check.check_learning_rate(
        learning_rate, "Schedule-free AdamW uses about 10x AdamW's rate, e.g. 2.5e-3."
    )
    check.check_positive_int("warmup_steps", warmup_steps, allow_none=True)
    check.check_range("b1", b1, low=0.0, high=1.0, high_inclusive=False)
    if check.concrete_float(b1) == 0.0:
        raise ValueError("b1 must be > 0: the evaluation parameters divide by it.")
    check.check_range("b2", b2, low=0.0, high=1.0, high_inclusive=False)
    check.check_range("eps", eps, low=0.0, finite=True)
    check.check_range("weight_decay", weight_decay, low=0.0, finite=True)
    check.check_range("weight_lr_power", weight_lr_power, finite=True)
    check.check_range("r", r, finite=True)
    state_dtype = num.storage_dtype(state_dtype, argument="state_dtype")

    def rate(count: jax.Array) -> jax.Array:
        eta = num.hyperparameter_at(learning_rate, count)
        if warmup_steps is None:
            return eta
        return eta * jnp.minimum(1, (count + 1).astype(eta.dtype) / warmup_steps)

    def init_fn(params: optax.Params) -> ScheduleFreeAdamWState:
        check.check_parameter_leaves(params)
        zero = jnp.zeros([], num.hyperparameter_dtype())
        return ScheduleFreeAdamWState(
            count=num.zero_count(),
            b1=num.as_hyperparameter(b1),
            weight_sum=zero,
            max_lr=zero,
            z=jax.tree_util.tree_map(lambda p: jnp.array(p, dtype=state_dtype or p.dtype), params),
            nu=jax.tree_util.tree_map(jnp.zeros_like, params),
        )

    def update_fn(
        updates: optax.Updates,
        state: ScheduleFreeAdamWState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ScheduleFreeAdamWState]:
        del extra_args
        if params is None:
            raise ValueError(
                "schedule_free_adamw needs the parameters y: call update(grads, state, params)."
            )
        eta = rate(state.count)
        max_lr = jnp.maximum(state.max_lr, eta)
        step = num.safe_increment(state.count)
        weight = step.astype(eta.dtype) ** num.as_hyperparameter(
            r
        ) * max_lr ** num.as_hyperparameter(weight_lr_power)
        weight_sum = state.weight_sum + weight
        c = jnp.where(weight_sum > 0, weight / jnp.where(weight_sum > 0, weight_sum, 1), 0)
        correction2 = num.bias_correction(num.one_minus(b2), step)
        b1_t, b2_t = num.as_hyperparameter(b1), num.as_hyperparameter(b2)
        eps_t, decay = num.as_hyperparameter(eps), num.as_hyperparameter(weight_decay)
        y_step = eta * (b1_t * (1 - c) - 1)

        def leaf(g, y, z, v):
            dtype = num.compute_dtype(y.dtype)
            g, y32, z32 = (num.limit_magnitude(g.astype(dtype)), y.astype(dtype), z.astype(dtype))
            v = b2_t * v + num.one_minus(b2) * num.squared_magnitude(g)
            d = g / (jnp.sqrt(v / correction2) + eps_t) + decay * y32
            delta = c * (z32 - y32) + y_step * d
            return delta.astype(y.dtype), (z32 - eta * d).astype(z.dtype), v.astype(y.dtype)

        leaves, treedef = jax.tree_util.tree_flatten(updates)
        out = [
            leaf(*args)
            for args in zip(
                leaves,
                treedef.flatten_up_to(params),
                treedef.flatten_up_to(state.z),
                treedef.flatten_up_to(state.nu),
            )
        ]
        part = lambda i: treedef.unflatten([o[i] for o in out])  # noqa: E731
        return part(0), ScheduleFreeAdamWState(
            count=step, b1=state.b1, weight_sum=weight_sum, max_lr=max_lr, z=part(1), nu=part(2)
        )

    return transformation(init_fn, update_fn)


def schedule_free_eval_params(opt_state: optax.OptState, params: optax.Params) -> optax.Params:
    """The averaged iterate ``x = (y - (1 - β1)·z) / β1`` to evaluate (or checkpoint) the model
    with, from the ``schedule_free_adamw`` state found anywhere in ``opt_state`` and the
    training parameters ``y``."""
    state = find_state(opt_state, ScheduleFreeAdamWState, transform="schedule_free_adamw")
    b1 = state.b1

    def average(y: jax.Array, z: jax.Array) -> jax.Array:
        dtype = num.compute_dtype(y.dtype)
        return ((y.astype(dtype) - (1 - b1) * z.astype(dtype)) / b1).astype(y.dtype)

    return jax.tree_util.tree_map(average, params, state.z)
