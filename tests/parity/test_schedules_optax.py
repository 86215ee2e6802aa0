"""The 14 schedules whose names optax has, side by side with optax's own functions: a grid of
arguments with each of optax's documented degenerate cases (zero or negative transition steps,
a zero decay rate, a zero peak, boundaries at 0 or at the int32 limit, step counts and lengths
beyond int32, one-cycle boundaries that coincide), then random valid arguments (hypothesis).
Jitted and vmapped over int32 steps up to the int32 limit, eagerly at Python ints and floats,
and under x64 at int64 steps. A negative step has the step-0 value (not optax's rule)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

import adamw_jax as aw

S = aw.schedules
EPS32 = float(np.finfo(np.float32).eps)
BIG = 10**10  # beyond int32
INT32_MAX = int(np.iinfo(np.int32).max)
STEPS = np.concatenate([np.arange(0, 420), [1000, 2**24 - 1, 2**24, 2**24 + 1, 10**9, INT32_MAX - 1, INT32_MAX]])
TABLE = {100: 0.5, 150: 2.0, 250: 0.1}
SGDR = [dict(init_value=1e-3, peak_value=1e-3, warmup_steps=0, decay_steps=50, end_value=1e-5),
        dict(init_value=0.0, peak_value=5e-4, warmup_steps=10, decay_steps=100),
        dict(init_value=1e-4, peak_value=2e-4, warmup_steps=5, decay_steps=200, exponent=2.0)]


def _join(lib: ModuleType, boundaries: list[int]) -> optax.Schedule:
    pieces = [lib.constant_schedule(1e-3), lib.linear_schedule(1e-3, 0.0, 100),
              lib.cosine_decay_schedule(5e-4, 50), lib.exponential_decay(2e-4, 10, 0.5)]
    return lib.join_schedules(pieces[:len(boundaries) + 1], boundaries)


# name -> a function of the library (optax or adamw_jax.schedules) that builds the schedule.
CASES: dict[str, Callable[[ModuleType], optax.Schedule]] = {
    "constant": lambda lib: lib.constant_schedule(3e-4),
    "constant_negative": lambda lib: lib.constant_schedule(-2.5),
    "constant_bfloat16": lambda lib: lib.constant_schedule(jnp.bfloat16(0.3)),
    "polynomial": lambda lib: lib.polynomial_schedule(1e-2, 1e-4, 2.5, 350, 10),
    "polynomial_sqrt": lambda lib: lib.polynomial_schedule(1.0, 0.0, 0.5, 300),
    "polynomial_one_step": lambda lib: lib.polynomial_schedule(2.0, 0.5, 3.0, 1),
    "polynomial_zero_steps": lambda lib: lib.polynomial_schedule(1e-3, 1e-5, 2.0, 0),
    "polynomial_negative_steps": lambda lib: lib.polynomial_schedule(1e-3, 1e-5, 2.0, -10),
    "polynomial_negative_begin": lambda lib: lib.polynomial_schedule(1.0, 0.0, 3.0, 50, -5),
    "polynomial_late_begin": lambda lib: lib.polynomial_schedule(1.0, 0.25, 1.5, 10, 1000),
    "polynomial_float_steps": lambda lib: lib.polynomial_schedule(1.0, 0.5, 2.0, 200.0, 20.0),
    "linear": lambda lib: lib.linear_schedule(1e-3, 1e-5, 300, 40),
    "linear_up": lambda lib: lib.linear_schedule(0.0, 1.0, 77),
    "linear_zero_steps": lambda lib: lib.linear_schedule(0.0, 1.0, 0),
    "linear_zero_steps_flat": lambda lib: lib.linear_schedule(0.5, 0.5, 0, 10),
    "linear_negative_steps": lambda lib: lib.linear_schedule(0.0, 1.0, -3),
    "exponential": lambda lib: lib.exponential_decay(1e-2, 30, 0.7, 15),
    "exponential_staircase_end": lambda lib: lib.exponential_decay(1e-2, 25, 0.5, 0, True, 2e-4),
    "exponential_growth_capped": lambda lib: lib.exponential_decay(1e-4, 50, 1.5, end_value=5e-4),
    "exponential_rate_one": lambda lib: lib.exponential_decay(1.0, 10, 1.0, end_value=0.5),
    "exponential_end_above_init": lambda lib: lib.exponential_decay(1.0, 10, 0.5, end_value=2.0),
    "exponential_every_step": lambda lib: lib.exponential_decay(1.0, 1, 0.999, staircase=True),
    "exponential_zero_steps": lambda lib: lib.exponential_decay(1.0, 0, 0.5),
    "exponential_negative_steps": lambda lib: lib.exponential_decay(1.0, -5, 0.5, end_value=0.1),
    "exponential_zero_rate": lambda lib: lib.exponential_decay(1.0, 10, 0.0),
    "exponential_zero_rate_end": lambda lib: lib.exponential_decay(1.0, 10, 0.0, end_value=0.5),
    "exponential_negative_begin": lambda lib: lib.exponential_decay(1.0, 10, 0.5, -7),
    "cosine_decay": lambda lib: lib.cosine_decay_schedule(1e-3, 300, 0.1, 2.0),
    "cosine_decay_one_step": lambda lib: lib.cosine_decay_schedule(1.0, 1),
    "cosine_decay_alpha_one": lambda lib: lib.cosine_decay_schedule(1.0, 100, 1.0),
    "cosine_decay_exponent_half": lambda lib: lib.cosine_decay_schedule(1.0, 100, 0.0, 0.5),
    "cosine_decay_float_steps": lambda lib: lib.cosine_decay_schedule(1.0, 100.0),
    "cosine_decay_beyond_int32": lambda lib: lib.cosine_decay_schedule(1.0, BIG),
    "cosine_decay_int32_max": lambda lib: lib.cosine_decay_schedule(1.0, INT32_MAX),
    "warmup_cosine": lambda lib: lib.warmup_cosine_decay_schedule(1e-5, 1e-3, 50, 350, 1e-5),
    "warmup_cosine_exponent": lambda lib: lib.warmup_cosine_decay_schedule(0.0, 1e-3, 20, 300, 0.0, 1.5),
    "warmup_cosine_zero_peak": lambda lib: lib.warmup_cosine_decay_schedule(0.0, 0.0, 10, 100),
    "warmup_cosine_zero_peak_end": lambda lib: lib.warmup_cosine_decay_schedule(0.1, 0.0, 10, 100, 0.1),
    "warmup_cosine_zero_warmup": lambda lib: lib.warmup_cosine_decay_schedule(0.0, 1.0, 0, 100),
    "warmup_cosine_end_above_peak": lambda lib: lib.warmup_cosine_decay_schedule(0.5, 1.0, 5, 100, 2.0),
    "warmup_cosine_one_step": lambda lib: lib.warmup_cosine_decay_schedule(0.0, 1.0, 10, 11, 0.5),
    "warmup_cosine_beyond_int32": lambda lib: lib.warmup_cosine_decay_schedule(0.0, 1.0, 10, BIG, 0.1),
    "warmup_constant": lambda lib: lib.warmup_constant_schedule(0.0, 1e-3, 60),
    "warmup_constant_zero_steps": lambda lib: lib.warmup_constant_schedule(0.0, 1e-3, 0),
    "warmup_constant_zero_steps_flat": lambda lib: lib.warmup_constant_schedule(1e-3, 1e-3, 0),
    "warmup_constant_negative_steps": lambda lib: lib.warmup_constant_schedule(0.0, 1.0, -5),
    "warmup_exponential": lambda lib: lib.warmup_exponential_decay_schedule(0.0, 1e-3, 40, 20, 0.8, 10, False, 1e-5),
    "warmup_exponential_staircase": lambda lib: lib.warmup_exponential_decay_schedule(1e-4, 1e-3, 5, 7, 0.5, 0, True),
    "warmup_exponential_zero_warmup": lambda lib: lib.warmup_exponential_decay_schedule(0.0, 1.0, 0, 10, 0.5),
    "warmup_exponential_zero_steps": lambda lib: lib.warmup_exponential_decay_schedule(0.0, 1.0, 10, 0, 0.5),
    "warmup_exponential_zero_rate": lambda lib: lib.warmup_exponential_decay_schedule(0.0, 1.0, 10, 10, 0.0),
    "warmup_exponential_negative_begin": lambda lib: lib.warmup_exponential_decay_schedule(0.0, 1.0, 10, 10,
                                                                                           0.5, -3),
    "piecewise_constant": lambda lib: lib.piecewise_constant_schedule(1e-2, TABLE),
    "piecewise_constant_none": lambda lib: lib.piecewise_constant_schedule(1e-2),
    "piecewise_constant_empty": lambda lib: lib.piecewise_constant_schedule(1e-2, {}),
    "piecewise_constant_at_zero": lambda lib: lib.piecewise_constant_schedule(1.0, {0: 0.5, 10: 0.0, 20: 3.0}),
    "piecewise_constant_float_key": lambda lib: lib.piecewise_constant_schedule(1.0, {100.0: 0.1}),
    "piecewise_constant_int32_max": lambda lib: lib.piecewise_constant_schedule(1.0, {10: 0.5, INT32_MAX: 0.1}),
    "piecewise_linear": lambda lib: lib.piecewise_interpolate_schedule("linear", 1e-2, TABLE),
    "piecewise_cosine": lambda lib: lib.piecewise_interpolate_schedule("cosine", 1e-2, TABLE),
    "piecewise_interpolate_none": lambda lib: lib.piecewise_interpolate_schedule("cosine", 1e-2),
    "piecewise_interpolate_empty": lambda lib: lib.piecewise_interpolate_schedule("linear", 1e-2, {}),
    "piecewise_interpolate_at_zero": lambda lib: lib.piecewise_interpolate_schedule(
        "linear", 1.0, {0: 0.5, 10: 0.0, 11: 2.0}),
    "piecewise_interpolate_int32_max": lambda lib: lib.piecewise_interpolate_schedule(
        "cosine", 1.0, {10: 0.5, INT32_MAX: 0.1}),
    "linear_onecycle": lambda lib: lib.linear_onecycle_schedule(300, 1e-2, 0.25, 0.7, 20.0, 100.0),
    "linear_onecycle_defaults": lambda lib: lib.linear_onecycle_schedule(100, 1.0),
    "linear_onecycle_one_step": lambda lib: lib.linear_onecycle_schedule(1, 1.0),
    "linear_onecycle_two_steps": lambda lib: lib.linear_onecycle_schedule(2, 1.0),
    "linear_onecycle_ends": lambda lib: lib.linear_onecycle_schedule(10, 1.0, 0.0, 1.0),
    "linear_onecycle_equal_pcts": lambda lib: lib.linear_onecycle_schedule(10, 1.0, 0.5, 0.5),
    "cosine_onecycle": lambda lib: lib.cosine_onecycle_schedule(300, 1e-2, 0.3, 25.0, 1e3),
    "cosine_onecycle_defaults": lambda lib: lib.cosine_onecycle_schedule(100, 1.0),
    "cosine_onecycle_one_step": lambda lib: lib.cosine_onecycle_schedule(1, 1.0),
    "cosine_onecycle_pct_one": lambda lib: lib.cosine_onecycle_schedule(10, 1.0, 1.0),
    "cosine_onecycle_pct_zero": lambda lib: lib.cosine_onecycle_schedule(10, 1.0, 0.0),
    "join": lambda lib: _join(lib, [120]),
    "join_four": lambda lib: _join(lib, [30, 60, 200]),
    "join_at_zero": lambda lib: _join(lib, [0, 0, 5]),
    "join_equal_boundaries": lambda lib: _join(lib, [10, 10]),
    "join_int32_max": lambda lib: _join(lib, [100, INT32_MAX]),
    "sgdr": lambda lib: lib.sgdr_schedule(SGDR),
    "sgdr_one_cycle": lambda lib: lib.sgdr_schedule(SGDR[1:2]),
}


def build(case: Callable[[ModuleType], optax.Schedule], lib: ModuleType) -> optax.Schedule:
    """The schedule, quiet: which degenerate cases warn is tested in test_schedules.py."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return case(lib)


def jitted(schedule: optax.Schedule, steps: np.ndarray) -> np.ndarray:
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(steps)), np.float64)


def ulps_of(values: np.ndarray, eps: float = EPS32) -> float:
    """One unit in the last place of the largest value (an absolute scale)."""
    return eps * float(np.max(np.abs(values[np.isfinite(values)]), initial=0.0))


def assert_matches(actual: np.ndarray, expected: np.ndarray, *, eps: float = EPS32, extra: float = 0.0) -> None:
    """Each value is a handful of roundings (½ ulp each) of numbers no larger than the
    schedule's largest value, and ours and optax's round at different places: (T - τ)/T
    against 1 - τ/T, (I - E)·c + E against I·((1 - α)·c + α), the one-cycle values multiplied in
    float64 against optax's float32 cumprod (≤ 3 factors). The grid measures ≤ 1.6 ulps of the
    largest value; 4 ulps of it (absolute) plus 4 ulps of each value (relative) bound this,
    while a shift by one step or a wrong branch moves a value by far more (> 1e-3 relative for
    every case here). ``extra`` adds a bound derived where a case is ill-conditioned."""
    np.testing.assert_allclose(actual, expected, rtol=4 * eps, atol=4 * ulps_of(expected, eps) + extra)


# Where optax's 1 - τ/T is a rounding below 0 under jit (τ·(1/T) > 1) and a fractional power
# of it is NaN: the end of the transition. Ours is the end value there.
OPTAX_NAN = {"polynomial_sqrt": 0.0, "polynomial_late_begin": 0.25}


@pytest.mark.parametrize("name", sorted(CASES))
def test_jitted_vmapped_int32_steps_match_optax(name):
    theirs = jitted(build(CASES[name], optax), STEPS.astype(np.int32))
    ours = jitted(build(CASES[name], S), STEPS.astype(np.int32))
    finite = np.isfinite(theirs)
    assert finite.all() == (name not in OPTAX_NAN)
    assert np.isfinite(ours).all()
    assert_matches(ours[finite], theirs[finite])
    np.testing.assert_array_equal(ours[~finite], np.float32(OPTAX_NAN.get(name, 0.0)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_negative_steps_give_the_step_zero_value(name):
    """optax's rules differ by schedule (cosine decay mirrors the curve, piecewise_interpolate
    gives 0, join and warmup with 0 steps give the warmup's init_value): ours is step 0's."""
    schedule = build(CASES[name], S)
    negative = np.array([-1, -2, -7, -1000, -(2**31)], np.int32)
    np.testing.assert_array_equal(jitted(schedule, negative), float(jitted(schedule, np.zeros(1, np.int32))[0]))
    assert float(schedule(-5)) == float(schedule(0)) and float(schedule(-0.5)) == float(schedule(0))


EAGER_STEPS = (0, 3, 149, 250, 419, 123456, BIG, 2**40, 2.5, 99.5, 300.25, np.int64(7), np.float32(11.0))


@pytest.mark.parametrize("name", sorted(CASES))
def test_eager_python_ints_floats_and_huge_counts(name):
    """Eagerly, at Python ints (also beyond int32, which optax can often not take: then ours
    must still be finite) and at float steps."""
    ours_schedule, theirs_schedule = build(CASES[name], S), build(CASES[name], optax)
    reference = jitted(theirs_schedule, STEPS.astype(np.int32))
    for step in EAGER_STEPS:
        ours = np.float64(ours_schedule(step))
        assert np.isfinite(ours), step
        try:
            theirs = np.float64(theirs_schedule(step))
        except OverflowError:
            continue
        if np.isfinite(theirs):
            assert_matches(np.array([ours]), np.array([theirs]), extra=4 * ulps_of(reference))


X64_STEPS = np.array([0, 1, 5, 99, 100, 101, 250, 2**31 - 1, 2**31, BIG - 1, BIG, BIG + 1, 2**40, 2**62])


@pytest.mark.parametrize("name", sorted(CASES))
def test_x64_int64_steps_match_optax_in_float64(name):
    """Under x64 the counts are int64 and both compute in float64: the same bound in float64 ulps."""
    eps64 = float(np.finfo(np.float64).eps)
    with jax.enable_x64(True):
        ours = jitted(build(CASES[name], S), X64_STEPS)
        assert jax.jit(build(CASES[name], S))(jnp.int64(3)).dtype == jnp.float64
        try:
            theirs = jitted(build(CASES[name], optax), X64_STEPS)
        except OverflowError:  # optax's int64 boundaries and counts beyond int64 when combined
            theirs = None
    assert np.isfinite(ours).all()
    if theirs is not None:
        finite = np.isfinite(theirs)
        assert_matches(ours[finite], theirs[finite], eps=eps64)
