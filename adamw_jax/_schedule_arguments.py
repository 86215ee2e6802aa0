"""What every schedule shares: argument checks and the step count as a number.

A schedule receives the 0-based step count (a Python int or an integer array, possibly traced)
and returns a float32 array (float64 under x64). Differences of counts are taken in the count's
own integer dtype, so staircase and interval arithmetic stay exact beyond 2**24 steps, where
float32 can no longer represent every integer.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adamw_jax import _numerics as num
from adamw_jax import _validation as check


def check_values(**values: Any) -> None:
    """Each schedule value (a peak, an end value, an exponent...) must be a real scalar."""
    for name, value in values.items():
        check.check_real_scalar(name, value)


def check_steps(name: str, steps: Any, *, positive: bool = False) -> None:
    """A step argument must be a Python (or NumPy) int, ``>= 0`` (``> 0`` if ``positive``)."""
    if isinstance(steps, (bool, np.bool_)) or not isinstance(steps, (int, np.integer)):
        raise TypeError(f"{name} must be an int number of steps, got {type(steps).__name__} {steps!r}.")
    if steps < (1 if positive else 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {steps}.")


def check_fraction(name: str, value: Any, *, hint: str = "") -> None:
    """A fraction of a schedule's length, in [0, 1]."""
    check.check_range(name, value, low=0.0, high=1.0, hint=hint)


def as_count(count: jax.typing.ArrayLike) -> jax.Array:
    """The step count as an array (an int stays an int)."""
    return jnp.asarray(count)


def as_float(count: jax.Array) -> jax.Array:
    """A count (or a difference of counts) in the hyperparameter dtype."""
    return count.astype(num.hyperparameter_dtype())


def elapsed(count: jax.typing.ArrayLike, begin: int, length: int) -> jax.Array:
    """``min(max(count - begin, 0), length)``: steps into a phase of ``length`` steps."""
    return as_float(jnp.clip(as_count(count) - begin, 0, length))


def completed_intervals(count: jax.typing.ArrayLike, size: int) -> jax.Array:
    """``floor(count / size)``, exact in integer arithmetic for integer counts."""
    count = as_count(count)
    if jnp.issubdtype(count.dtype, jnp.integer):
        return as_float(jnp.floor_divide(count, size))
    return jnp.floor(as_float(count) / size)


def result(value: jax.typing.ArrayLike, count: jax.typing.ArrayLike) -> jax.Array:
    """A schedule's value as a hyperparameter array with the count's shape."""
    return jnp.broadcast_to(num.as_hyperparameter(value), jnp.shape(count))
