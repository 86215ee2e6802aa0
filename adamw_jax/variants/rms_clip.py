"""Update RMS clipping (StableAdamW, Wortsman et al. 2023; torch-optimi's ``StableAdamW``).

Per tensor, from the gradient ``g`` and the bias-corrected second moment ``v̂`` that the Adam
step inside ``inner`` has just formed (``v̂`` of AMSGrad's running maximum when that is on):

    RMS_t = sqrt(mean(g² / max(v̂, eps²))),    c_t = 1 / max(1, RMS_t / threshold)

and ``inner``'s whole output for that tensor is multiplied by ``c_t``: the learning rate is
clipped, so its decay term (coupled ``η_t·λ·θ`` or decoupled ``s_t·λ·θ``) is scaled too, as
optimi does. ``threshold = 1`` is the paper's (and optimi's only) value.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from adamw_jax import _numerics as num
from adamw_jax import _validation as check
from adamw_jax import lowbit
from adamw_jax._states import find_state, transformation
from adamw_jax.transforms.moments import ScaleByAdamState

_SECOND_MOMENT = lowbit.moment_storage(None, argument="nu_dtype", second_moment=True)


def _clip_factor(g: jax.Array, v_hat: jax.Array, eps: jax.Array, threshold: jax.Array) -> jax.Array:
    """``1 / max(1, RMS(g²/max(v̂, eps²)) / threshold)`` in at least float32."""
    dtype = num.compute_dtype(g.dtype)
    ratio = num.squared_magnitude(g.astype(dtype)) / jnp.maximum(v_hat, jnp.square(eps))
    rms = jnp.sqrt(jnp.mean(ratio)) if ratio.size else jnp.zeros([], dtype)
    return 1 / jnp.maximum(1, rms / threshold)


def clip_by_update_rms(
    inner: optax.GradientTransformation,
    threshold: float = 1.0,
    *,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    """Scale each tensor of ``inner``'s output by ``1 / max(1, RMS(g²/v̂) / threshold)``.

    Args:
      inner: a chain containing ``scale_by_adam`` exactly once (e.g. the chain of ``adamw``);
        ``v̂`` is read from its state after the step.
      threshold: the RMS above which the step is shrunk, finite and > 0 (1 in the paper).
      b2: the ``b2`` of that ``scale_by_adam`` (for ``v̂ = v / (1 - β2^t)``).
      eps: ``v̂`` is floored at ``eps²`` (optimi: the Adam ``eps``), >= 0.
    """
    check.check_positive(
        "rms_clip_threshold",
        threshold,
        finite=True,
        hint="StableAdamW uses 1.0; pass None to turn the clipping off.",
    )
    check.check_range("b2", b2, low=0.0, high=1.0, high_inclusive=False)
    check.check_range("eps", eps, low=0.0, finite=True)
    inner = optax.with_extra_args_support(inner)

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.OptState]:
        steps, state = inner.update(updates, state, params, **extra_args)
        adam = find_state(state, ScaleByAdamState, transform="scale_by_adam")
        nu = adam.nu if adam.nu_max is None else adam.nu_max
        correction = num.bias_correction(num.one_minus(b2), adam.count)
        eps_t, threshold_t = num.as_hyperparameter(eps), num.as_hyperparameter(threshold)

        def clipped(step: jax.Array, g: jax.Array, v: jax.Array) -> jax.Array:
            factor = _clip_factor(g, v / correction, eps_t, threshold_t)
            return (step.astype(num.compute_dtype(step.dtype)) * factor).astype(step.dtype)

        second_moments = _SECOND_MOMENT.decode(nu, updates)
        return jax.tree_util.tree_map(clipped, steps, updates, second_moments), state

    return transformation(inner.init, update_fn)
