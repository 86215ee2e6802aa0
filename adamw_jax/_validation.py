"""Argument checks shared by the factories, with messages that name the argument and the fix.

Checks run on concrete values when an optimizer is built. Traced values (an optimizer built
inside ``jax.jit``, ``jax.vmap`` or ``optax.inject_hyperparams``) cannot be inspected and are
accepted as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.core
import jax.numpy as jnp
import numpy as np


def concrete_float(value: Any) -> float | None:
    """The value as a Python float, or ``None`` when it is traced."""
    if isinstance(value, jax.core.Tracer):
        return None
    return float(np.asarray(value))


def check_real_scalar(name: str, value: Any, *, allow_schedule: bool = False) -> None:
    """Raise a TypeError unless ``value`` is a real scalar (or, if allowed, a schedule)."""
    if allow_schedule and callable(value):
        return
    what = "a float or a schedule (a function of the step)" if allow_schedule else "a float"
    if isinstance(value, (bool, np.bool_)) or isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}.")
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    # jnp.issubdtype, not np's: bfloat16 (what optax.inject_hyperparams makes of a float for
    # bfloat16 params) is not an np.number.
    if dtype is not None and shape == () and jnp.issubdtype(dtype, jnp.number):
        if jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(f"{name} must be real, got a {dtype} value.")
        return
    if isinstance(value, (int, float)):
        return
    raise TypeError(
        f"{name} must be {what}, got {type(value).__name__} {value!r}"
        + (f" with shape {shape}." if shape is not None else ".")
        + (" Pass a scalar, e.g. 0.9, not a sequence." if isinstance(value, (list, tuple)) else "")
    )


def check_range(
    name: str,
    value: Any,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    high_inclusive: bool = True,
    allow_schedule: bool = False,
    finite: bool = False,
    hint: str = "",
) -> None:
    """Check ``value`` is a real scalar in ``[low, high]`` (or ``[low, high)``), and with
    ``finite=True`` not infinite (a rate or a constant where infinity makes no sense; a
    threshold where it means "never" keeps the default).

    Schedules are not evaluated here; NaN is always rejected.
    """
    check_real_scalar(name, value, allow_schedule=allow_schedule)
    if callable(value):
        return
    number = concrete_float(value)
    if number is None:
        return
    suffix = f" {hint}" if hint else ""
    if finite and math.isinf(number):
        raise ValueError(f"{name} must be finite, got {number!r}.{suffix}")
    inside = low <= number and (number <= high if high_inclusive else number < high)
    if not inside or math.isnan(number):
        interval = f"[{low:g}, {high:g}{']' if high_inclusive else ')'}"
        raise ValueError(f"{name} must be in {interval}, got {number!r}.{suffix}")


def check_learning_rate(
    learning_rate: Any, hint: str = "Pass the positive step size, e.g. 1e-3."
) -> None:
    """``learning_rate``: a finite float >= 0, or a schedule of the 0-based step."""
    check_range(
        "learning_rate", learning_rate, low=0.0, allow_schedule=True, finite=True, hint=hint
    )


def check_positive(
    name: str,
    value: Any,
    *,
    high: float = math.inf,
    high_inclusive: bool = True,
    finite: bool = False,
    hint: str = "",
) -> None:
    """A real scalar ``> 0`` (and ``<= high``, or ``< high``): a divisor, a rate, a threshold."""
    check_range(
        name, value, low=0.0, high=high, high_inclusive=high_inclusive, finite=finite, hint=hint
    )
    if concrete_float(value) == 0.0:
        raise ValueError(f"{name} must be > 0, got 0.{' ' + hint if hint else ''}")


def check_bool(name: str, value: Any) -> None:
    """Raise a TypeError unless ``value`` is a bool (``np.bool_`` too): ``'no'``, ``'False'``
    and ``1`` would silently switch an option on."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}.")


def check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    """Check ``value`` is one of the allowed strings."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")


def check_schedule_or_none(name: str, value: Callable[..., Any] | None) -> None:
    """Check an optional schedule argument is callable."""
    if value is not None and not callable(value):
        raise TypeError(
            f"{name} must be a schedule (a function of the step) or None, got {value!r}."
        )


def check_positive_int(name: str, value: Any, *, allow_none: bool = False, hint: str = "") -> None:
    """Check ``value`` is a Python int >= 1 (or ``None`` when allowed); bools are rejected."""
    if value is None and allow_none:
        return
    what = "an int >= 1" + (" or None" if allow_none else "")
    suffix = f" {hint}" if hint else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}.{suffix}")
    if value < 1:
        raise ValueError(f"{name} must be {what}, got {value!r}.{suffix}")


def check_parameter_leaves(params: Any, *, argument: str = "params") -> None:
    """Reject integer and boolean leaves, naming their path: they have no gradient to follow.

    ``None`` leaves and empty trees are fine. Keep non-trainable leaves out of the optimized tree
    (``nnx.Optimizer(..., wrt=nnx.Param)``, ``optax.masked``, ``equinox.filter``).
    """
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jax.numpy.issubdtype(dtype, jax.numpy.inexact):
            raise TypeError(
                f"{argument}{jax.tree_util.keystr(path)} has dtype "
                f"{getattr(dtype, 'name', type(leaf).__name__)}: adamw_jax optimizes floating-point "
                "(or complex) arrays only. Leave integer and boolean leaves out of the optimized "
                "tree, e.g. nnx.Optimizer(model, tx, wrt=nnx.Param) or optax.masked."
            )
