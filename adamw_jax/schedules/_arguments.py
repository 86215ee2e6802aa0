"""What every schedule shares: argument checks and the step count as a number.

A schedule receives the 0-based step count ``t``: a Python or NumPy number, or an integer or
float array (int32, int64 under x64, traced or not). It returns a float32 array (float64 under
x64) of the count's shape. A negative count is read as 0, so every schedule's value at a
negative step is its value at step 0.

Integer counts stay integers: differences and quotients of counts are taken in the count's own
integer dtype, exact beyond 2**24 steps where float32 no longer holds every integer. A step
argument beyond the count's integer range (``decay_steps=10**10`` with int32 counts) is never
reached, and is handled without converting it to that dtype. A concrete count beyond the
default integer range (a Python ``10**10`` without x64) is taken as a float.
"""

from __future__ import annotations

import math
import sys
import warnings
from typing import Any

import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from adamw_jax import _numerics as num

# --- arguments, checked when the schedule is built ----------------------------------------------


def _real_number(name: str, value: Any) -> float | None:
    """The value of a real scalar argument as a float, ``None`` when traced; else a TypeError."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}.")
    if isinstance(value, (int, float, np.integer, np.floating)):
        try:
            return float(value)
        except OverflowError:  # a Python int beyond float64
            return math.inf
    dtype, shape = getattr(value, "dtype", None), getattr(value, "shape", None)
    if (
        shape == ()
        and dtype is not None
        and (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer))
    ):
        return None if isinstance(value, jax.core.Tracer) else float(value)
    raise TypeError(
        f"{name} must be a real number (a float or a 0-d array), got {type(value).__name__} {value!r}"
        + (f" with shape {shape}." if shape is not None else ".")
        + (" Pass one scalar, not a sequence." if isinstance(value, (list, tuple)) else "")
    )


def check_value(
    name: str,
    value: Any,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    positive: bool = False,
    hint: str = "",
) -> float | None:
    """A finite real scalar in ``[low, high]`` (``> 0`` if ``positive``); returns its value
    (``None`` when traced: a traced value is accepted unchecked)."""
    number = _real_number(name, value)
    if number is None:
        return None
    inside = math.isfinite(number) and low <= number <= high and not (positive and number <= low)
    if not inside:
        if math.isinf(high):
            what = "a finite number" + (
                "" if math.isinf(low) else f" {'>' if positive else '>='} {low:g}"
            )
        else:
            what = f"a finite number in {'(' if positive else '['}{low:g}, {high:g}]"
        raise ValueError(f"{name} must be {what}, got {number!r}.{' ' + hint if hint else ''}")
    return number


def check_values(**values: Any) -> None:
    """Each of these schedule values (a peak, an end value...) is a finite real scalar."""
    for name, value in values.items():
        check_value(name, value)


def check_steps(name: str, steps: Any, *, low: int | None = 0) -> int:
    """A whole number of steps (an int, or a float such as ``100.0``), ``>= low``; as an int."""
    if isinstance(steps, (bool, np.bool_, jax.core.Tracer)):
        raise TypeError(
            f"{name} must be a concrete int number of steps, got {type(steps).__name__} {steps!r}."
        )
    if isinstance(steps, (int, np.integer)) or (
        np.ndim(steps) == 0 and jnp.issubdtype(getattr(steps, "dtype", np.float64), jnp.integer)
    ):
        count = int(steps)
    else:
        number = _real_number(name, steps)
        assert number is not None  # None is for a Tracer, rejected above
        if not (math.isfinite(number) and number.is_integer()):
            raise TypeError(
                f"{name} must be a whole number of steps, got {steps!r}: round it, e.g. "
                f"int({steps!r})."
            )
        count = int(number)
    if low is not None and count < low:
        raise ValueError(f"{name} must be >= {low} (a number of steps), got {count}.")
    return count


def check_fraction(name: str, value: Any, *, hint: str = "") -> float | None:
    """A fraction of a schedule's length, in [0, 1]."""
    return check_value(name, value, low=0.0, high=1.0, hint=hint)


def warn(message: str) -> None:
    """A degenerate argument that optax accepts: accepted with optax's meaning, and said so, at
    the line of the caller's code that built the schedule."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__", "").startswith("adamw_jax."):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


def begin_step(name: str, begin: Any, schedule: str) -> int:
    """A ``transition_begin``: optax reads a negative one as 0, so do we, with a warning."""
    begin = check_steps(name, begin, low=None)
    if begin < 0:
        warn(
            f"{schedule}: {name}={begin} is negative and is read as 0 (as optax does); pass "
            f"{name}=0 to silence this warning."
        )
        return 0
    return begin


# --- the count, inside the schedule --------------------------------------------------------------


def _default_int_range() -> tuple[int, int]:
    info = np.iinfo(np.int64 if num.x64_enabled() else np.int32)
    return int(info.min), int(info.max)


def _beyond_default_ints(count: Any) -> bool:
    """A concrete integer count that JAX's default integer dtype cannot hold."""
    if isinstance(count, (bool, np.bool_, jax.Array)):
        return False
    if isinstance(count, int) or (
        isinstance(count, (np.ndarray, np.integer))
        and np.issubdtype(np.asarray(count).dtype, np.integer)
    ):
        array = np.asarray(count, dtype=object if isinstance(count, int) else None)
        low, high = _default_int_range()
        return bool(array.size) and (int(array.min()) < low or int(array.max()) > high)
    return False


def as_count(count: jax.typing.ArrayLike) -> jax.Array:
    """``max(t, 0)`` as an array: an integer stays an integer, a float is at least float32."""
    if _beyond_default_ints(count):
        count = np.asarray(count, dtype=np.float64)
    count = jnp.asarray(count)
    if count.dtype == jnp.bool_:
        count = count.astype(jnp.int32)
    elif jnp.issubdtype(count.dtype, jnp.floating):
        count = count.astype(jnp.promote_types(count.dtype, num.hyperparameter_dtype()))
    return jnp.maximum(count, 0)


def _integer_max(count: jax.Array) -> int | None:
    """The largest count the count's dtype holds; ``None`` for a float count."""
    return int(jnp.iinfo(count.dtype).max) if jnp.issubdtype(count.dtype, jnp.integer) else None


def reaches(count: jax.Array, step: int) -> bool:
    """Whether a count of this dtype can reach ``step`` at all."""
    largest = _integer_max(count)
    return largest is None or step <= largest


def _like(count: jax.Array, step: int) -> int | float:
    """A step to combine with the count: a float for a float count (JAX would make a Python int
    an integer first, and overflow beyond int32)."""
    return step if jnp.issubdtype(count.dtype, jnp.integer) else float(step)


def before(count: jax.Array, step: int) -> jax.Array:
    """``t < step`` for ``t = as_count(...)``, whatever the size of ``step``."""
    if not reaches(count, step):
        return jnp.ones(count.shape, bool)
    return count < _like(count, step)


def since(count: jax.Array, begin: int) -> jax.Array:
    """``max(t - begin, 0)`` in the count's dtype, with no overflow."""
    if not reaches(count, begin):
        return jnp.zeros_like(count)
    start = _like(count, begin)
    return jnp.maximum(count, start) - start


def shifted(count: jax.Array, step: int) -> jax.Array:
    """``t - step`` for a ``step`` the count reaches (``reaches(count, step)``)."""
    return count - _like(count, step)


def elapsed(count: jax.Array, begin: int, length: int) -> jax.Array:
    """``min(max(t - begin, 0), length)``: steps into a phase of ``length`` steps, as a float."""
    largest = _integer_max(count)
    return as_float(
        jnp.minimum(
            since(count, begin), _like(count, length if largest is None else min(length, largest))
        )
    )


def fractions(count: jax.Array, begin: int, length: int) -> tuple[jax.Array, jax.Array]:
    """``(τ/L, (L - τ)/L)`` for ``τ = elapsed(count, begin, length)``, each exactly 0 or 1 at
    the ends of the phase (XLA divides by a constant ``L`` as ``x·(1/L)``, which can miss 1 by
    an ulp), and each within about an ulp (relative) in between."""
    tau, steps = elapsed(count, begin, length), float(length)
    done = jnp.where(tau >= steps, 1.0, tau / steps).astype(tau.dtype)
    left = jnp.where(tau <= 0, 1.0, (steps - tau) / steps).astype(tau.dtype)
    return done, left


def completed_intervals(count: jax.Array, size: int) -> jax.Array:
    """``floor(t / size)`` as a float, exact in integer arithmetic for integer counts."""
    if _integer_max(count) is None:
        return jnp.floor(count / float(size))
    if not reaches(count, size):
        return as_float(jnp.zeros_like(count))
    return as_float(jnp.floor_divide(count, size))


def as_float(count: jax.Array) -> jax.Array:
    """An integer count (or a difference of counts) in the hyperparameter dtype; a float count
    (already at least float32 from ``as_count``) as it is."""
    return (
        count
        if jnp.issubdtype(count.dtype, jnp.floating)
        else count.astype(num.hyperparameter_dtype())
    )


def result(value: jax.typing.ArrayLike, count: jax.Array) -> jax.Array:
    """A schedule's value as a hyperparameter array with the count's shape."""
    return jnp.broadcast_to(num.as_hyperparameter(value), jnp.shape(count))
