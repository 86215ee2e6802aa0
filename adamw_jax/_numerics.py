"""Dtype policy and the small numerical kernels every transform shares.

The rules (DESIGN.md §3):

* Hyperparameters are float32 (float64 under ``jax_enable_x64``), never the parameter dtype:
  ``b2 = 0.999`` in bfloat16 is ``1.0``.
* Arithmetic runs in at least float32; only storage is rounded.
* ``count`` is int32 and saturates at its maximum instead of wrapping.
* ``1 - β`` and ``1 - β^t`` are formed so that they keep full relative precision.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = Any  # jax.typing.ArrayLike, kept loose to accept Python scalars and tracers

COUNT_DTYPE = jnp.int32
_COUNT_MAX = np.iinfo(np.int32).max


def x64_enabled() -> bool:
    """Whether ``jax_enable_x64`` is on."""
    # jax.config's options are attributes made at import, which its class does not declare.
    return jax.config.jax_enable_x64  # pyright: ignore[reportAttributeAccessIssue]


def hyperparameter_dtype() -> jnp.dtype:
    """float32, or float64 when ``jax_enable_x64`` is on."""
    return jnp.dtype(jnp.float64 if x64_enabled() else jnp.float32)


def as_hyperparameter(value: ArrayLike) -> Array:
    """``value`` as a strongly typed float32 (float64 under x64) array.

    Strong typing makes ``b2 * nu`` promote a bfloat16 ``nu`` to float32 rather than rounding
    ``b2`` to bfloat16 (optax issue #1414).
    """
    return jnp.asarray(value, dtype=hyperparameter_dtype())


def one_minus(beta: ArrayLike) -> Array:
    """``1 - β`` as a hyperparameter array.

    For a Python number the difference is taken in float64 before rounding, so ``1 - 0.999``
    becomes the float32 nearest to 1e-3 instead of ``1 - float32(0.999)`` (off by 1.3e-5
    relative). A traced ``β`` is already exact in its dtype, and ``1 - β`` is exact there for
    ``β`` in [0.5, 1] (Sterbenz).
    """
    if isinstance(beta, (int, float)):
        return as_hyperparameter(1.0 - float(beta))
    return 1 - as_hyperparameter(beta)


def is_low_precision(dtype: Any) -> bool:
    """Whether ``dtype`` is a floating type of fewer than 32 bits (bfloat16, float16)."""
    return bool(jnp.issubdtype(dtype, jnp.floating)) and jnp.finfo(dtype).bits < 32


def compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """The dtype arithmetic runs in for values stored as ``dtype``: at least float32."""
    return jnp.promote_types(dtype, hyperparameter_dtype())


def safe_increment(count: Array) -> Array:
    """``count + 1`` for an int32 counter, saturating at the int32 maximum."""
    return jnp.where(count < _COUNT_MAX, count + 1, count).astype(COUNT_DTYPE)


def zero_count() -> Array:
    """A fresh int32 step counter."""
    return jnp.zeros([], COUNT_DTYPE)


def bias_correction(one_minus_beta: Array, step: Array) -> Array:
    """``1 - β^t`` with full relative precision, from ``1 - β`` and the 1-based step ``t``.

    ``1 - β^t = -expm1(t · log1p(-(1 - β)))`` avoids the cancellation of ``1 - β^t`` for small
    ``t`` (where ``β^t`` is close to 1) that costs float32 four to five digits at ``β = 0.999``.
    """
    step = jnp.asarray(step, one_minus_beta.dtype)
    return -jnp.expm1(step * jnp.log1p(-one_minus_beta))


def storage_dtype(dtype: Any, *, argument: str) -> jnp.dtype | None:
    """Validate a user's storage dtype (``None`` keeps the parameter dtype)."""
    if dtype is None:
        return None
    try:
        resolved = jnp.dtype(dtype)
    except TypeError as error:
        raise TypeError(
            f"{argument}={dtype!r} is not a dtype; pass None (keep the parameter dtype) or a "
            "floating dtype such as jnp.float32 or jnp.bfloat16."
        ) from error
    if not jnp.issubdtype(resolved, jnp.floating):
        raise TypeError(
            f"{argument}={dtype!r} is not a floating dtype; pass None or a floating dtype such "
            "as jnp.float32 or jnp.bfloat16."
        )
    return resolved


def hyperparameter_at(value: ArrayLike, count: ArrayLike) -> Array:
    """A float or a schedule evaluated at the 0-based ``count``, as a hyperparameter array."""
    return as_hyperparameter(value(count) if callable(value) else value)


def squared_magnitude(g: Array) -> Array:
    """``|g|²``, real also for complex ``g`` (as optax)."""
    return (
        jnp.square(jnp.real(g)) + jnp.square(jnp.imag(g)) if jnp.iscomplexobj(g) else jnp.square(g)
    )


def limit_magnitude(g: Array) -> Array:
    """Clamp a gradient (in its arithmetic dtype) to ``±sqrt(max)/2`` before it is squared.

    With ``|g| <= G = sqrt(finfo.max)/2`` every second moment stays below ``G²`` (a convex
    combination of squares), ``v / (1 - β2^t) <= G²`` as well, and nothing overflows; beyond
    ``G`` (1.8e19 in float32, where ``g²`` itself would be ``inf``) the step keeps the gradient's
    sign instead of turning into ``0`` forever (``m/inf``) or NaN (``inf/inf``).
    Complex gradients are clamped part by part. NaN stays NaN.
    """
    bound = np.sqrt(np.finfo(g.dtype).max) / 2
    if jnp.iscomplexobj(g):
        return jax.lax.complex(jnp.clip(g.real, -bound, bound), jnp.clip(g.imag, -bound, bound))
    return jnp.clip(g, -bound, bound)


def adam_ratio(numerator: Array, denominator: Array) -> Array:
    """``numerator / denominator``, or ``sign(numerator)`` where the denominator is 0.

    The denominator ``sqrt(v̂ + eps_root) + eps`` is 0 only with ``eps = eps_root = 0`` and a
    second moment that is 0 or underflowed (|g| < 1e-19 in float32). There the exact ratio of a
    steady gradient is ``±1`` and of a zero gradient ``0``; the double ``where`` keeps
    ``jax.grad`` free of ``0·inf`` NaNs.
    """
    positive = denominator > 0
    safe = jnp.where(positive, denominator, jnp.ones_like(denominator))
    return jnp.where(positive, numerator / safe, jnp.sign(numerator))
