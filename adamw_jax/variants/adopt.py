"""ADOPT (Taniguchi et al. 2024): Adam whose step is normalised by the *previous* second moment.

With the 0-based step ``k = count`` and the gradient ``g``:

    k = 0:  v ← g²,  no step (the update is 0)
    k > 0:  m ← β1·m + (1 - β1)·clip(g / max(sqrt(v), ε), ±c(k)),   u = m
            v ← β2·v + (1 - β2)·g²                  (after m: v is the previous one above)
    Nesterov: u = β1·m + (1 - β1)·clip(...)

``c(k) = clip_value_fn(k)`` (``k^0.25`` as optax, timm's ``clip_exp=0.333`` is
``lambda k: k ** 0.333``). ``adopt`` chains it with coupled weight decay ``u ← u + λ·θ`` from
the second step on (timm's ``Adopt(decoupled=True)`` takes no step, decay included, at the
first) and ``-η_t``. Signature and defaults of ``optax.contrib.adopt``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamw_jax import _numerics as num
from adamw_jax import _validation as check
from adamw_jax._states import transformation
from adamw_jax.transforms._masking import Mask
from adamw_jax.transforms.learning_rate import scale_by_learning_rate
from adamw_jax.transforms.weight_decay import add_decayed_weights, check_weight_decay


class ScaleByAdoptState(NamedTuple):
    """``count``: int32 steps taken; ``mu``: the moment of the normalised gradients; ``nu``: the
    second moment of the gradients."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def _quarter_power(count: jax.Array) -> jax.Array:
    return count**0.25


def scale_by_adopt(
    b1: float = 0.9,
    b2: float = 0.9999,
    eps: float = 1e-6,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], jax.Array] = _quarter_power,
) -> optax.GradientTransformationExtraArgs:
    """ADOPT's direction (math in the module docstring); ``optax.contrib.scale_by_adopt``'s
    signature. ``mu_dtype`` is the storage of ``m`` (``None``: the parameter dtype)."""
    check.check_range("b1", b1, low=0.0, high=1.0, high_inclusive=False)
    check.check_range("b2", b2, low=0.0, high=1.0, high_inclusive=False)
    check.check_range("eps", eps, low=0.0, finite=True, hint="ADOPT uses 1e-6.")
    check.check_bool("nesterov", nesterov)
    check.check_bool("use_clipping", use_clipping)
    if not callable(clip_value_fn):
        raise TypeError(f"clip_value_fn must be a function of the step, got {clip_value_fn!r}.")
    mu_dtype = num.storage_dtype(mu_dtype, argument="mu_dtype")

    def init_fn(params: optax.Params) -> ScaleByAdoptState:
        check.check_parameter_leaves(params)
        return ScaleByAdoptState(
            count=num.zero_count(),
            mu=jax.tree_util.tree_map(lambda p: jnp.zeros_like(p, dtype=mu_dtype), params),
            nu=jax.tree_util.tree_map(jnp.zeros_like, params),
        )

    def update_fn(
        updates: optax.Updates,
        state: ScaleByAdoptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ScaleByAdoptState]:
        del params, extra_args
        first = state.count == 0
        b1_t, b2_t = num.as_hyperparameter(b1), num.as_hyperparameter(b2)
        one_minus_b1, one_minus_b2 = num.one_minus(b1), num.one_minus(b2)
        eps_t = num.as_hyperparameter(eps)
        limit = num.as_hyperparameter(clip_value_fn(state.count))

        def step(g: jax.Array, m: jax.Array, v: jax.Array):
            g = num.limit_magnitude(g.astype(num.compute_dtype(g.dtype)))
            v = v.astype(g.dtype)
            normed = g / jnp.maximum(jnp.sqrt(v), eps_t)
            if use_clipping:
                normed = jnp.clip(normed, -limit, limit)
            new_m = jnp.where(first, m, b1_t * m + one_minus_b1 * normed)
            new_v = jnp.where(first, jnp.square(g), b2_t * v + one_minus_b2 * jnp.square(g))
            u = jnp.where(first, new_m, b1_t * new_m + one_minus_b1 * normed) if nesterov else new_m
            return u, new_m, new_v

        leaves, treedef = jax.tree_util.tree_flatten(updates)
        stepped = [
            step(g, m, v)
            for g, m, v in zip(
                leaves, treedef.flatten_up_to(state.mu), treedef.flatten_up_to(state.nu)
            )
        ]

        def part(i: int, like: optax.Updates) -> optax.Updates:
            return treedef.unflatten(
                [s[i].astype(x.dtype) for s, x in zip(stepped, treedef.flatten_up_to(like))]
            )

        return part(0, updates), ScaleByAdoptState(
            count=num.safe_increment(state.count), mu=part(1, state.mu), nu=part(2, state.nu)
        )

    return transformation(init_fn, update_fn)


def adopt(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.9999,
    eps: float = 1e-6,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], jax.Array] = _quarter_power,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Mask | None = None,
) -> optax.GradientTransformationExtraArgs:
    """ADOPT with coupled weight decay: ``optax.contrib.adopt``'s signature, plus keyword-only
    ``weight_decay`` (``λ``, a float or schedule, from the second step on as timm) and ``mask``
    (which leaves to decay). Math in the module docstring."""
    check.check_learning_rate(learning_rate)
    check_weight_decay(weight_decay)
    return optax.chain(
        scale_by_adopt(
            b1,
            b2,
            eps,
            mu_dtype,
            nesterov=nesterov,
            use_clipping=use_clipping,
            clip_value_fn=clip_value_fn,
        ),
        add_decayed_weights(
            lambda count: jnp.where(
                jnp.greater(count, 0), num.hyperparameter_at(weight_decay, count), 0.0
            ),
            mask,
        ),
        scale_by_learning_rate(learning_rate),
    )
