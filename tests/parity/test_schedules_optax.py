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
import reference as ref
from hypothesis import given
from hypothesis import strategies as st

import adamw_jax as aw

S = aw.schedules
EPS32 = float(np.finfo(np.float32).eps)
BIG = 10**10  # beyond int32
INT32_MAX = int(np.iinfo(np.int32).max)
STEPS = np.concatenate(
    [np.arange(0, 420), [1000, 2**24 - 1, 2**24, 2**24 + 1, 10**9, INT32_MAX - 1, INT32_MAX]]
)
TABLE = {100: 0.5, 150: 2.0, 250: 0.1}
SGDR = [
    dict(init_value=1e-3, peak_value=1e-3, warmup_steps=0, decay_steps=50, end_value=1e-5),
    dict(init_value=0.0, peak_value=5e-4, warmup_steps=10, decay_steps=100),
    dict(init_value=1e-4, peak_value=2e-4, warmup_steps=5, decay_steps=200, exponent=2.0),
]


def _join(lib: ModuleType, boundaries: list[int]) -> optax.Schedule:
    pieces = [
        lib.constant_schedule(1e-3),
        lib.linear_schedule(1e-3, 0.0, 100),
        lib.cosine_decay_schedule(5e-4, 50),
        lib.exponential_decay(2e-4, 10, 0.5),
    ]
    return lib.join_schedules(pieces[: len(boundaries) + 1], boundaries)


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
    "warmup_cosine_exponent": lambda lib: lib.warmup_cosine_decay_schedule(
        0.0, 1e-3, 20, 300, 0.0, 1.5
    ),
    "warmup_cosine_zero_peak": lambda lib: lib.warmup_cosine_decay_schedule(0.0, 0.0, 10, 100),
    "warmup_cosine_zero_peak_end": lambda lib: lib.warmup_cosine_decay_schedule(
        0.1, 0.0, 10, 100, 0.1
    ),
    "warmup_cosine_zero_warmup": lambda lib: lib.warmup_cosine_decay_schedule(0.0, 1.0, 0, 100),
    "warmup_cosine_end_above_peak": lambda lib: lib.warmup_cosine_decay_schedule(
        0.5, 1.0, 5, 100, 2.0
    ),
    "warmup_cosine_one_step": lambda lib: lib.warmup_cosine_decay_schedule(0.0, 1.0, 10, 11, 0.5),
    "warmup_cosine_beyond_int32": lambda lib: lib.warmup_cosine_decay_schedule(
        0.0, 1.0, 10, BIG, 0.1
    ),
    "warmup_constant": lambda lib: lib.warmup_constant_schedule(0.0, 1e-3, 60),
    "warmup_constant_zero_steps": lambda lib: lib.warmup_constant_schedule(0.0, 1e-3, 0),
    "warmup_constant_zero_steps_flat": lambda lib: lib.warmup_constant_schedule(1e-3, 1e-3, 0),
    "warmup_constant_negative_steps": lambda lib: lib.warmup_constant_schedule(0.0, 1.0, -5),
    "warmup_exponential": lambda lib: lib.warmup_exponential_decay_schedule(
        0.0, 1e-3, 40, 20, 0.8, 10, False, 1e-5
    ),
    "warmup_exponential_staircase": lambda lib: lib.warmup_exponential_decay_schedule(
        1e-4, 1e-3, 5, 7, 0.5, 0, True
    ),
    "warmup_exponential_zero_warmup": lambda lib: lib.warmup_exponential_decay_schedule(
        0.0, 1.0, 0, 10, 0.5
    ),
    "warmup_exponential_zero_steps": lambda lib: lib.warmup_exponential_decay_schedule(
        0.0, 1.0, 10, 0, 0.5
    ),
    "warmup_exponential_zero_rate": lambda lib: lib.warmup_exponential_decay_schedule(
        0.0, 1.0, 10, 10, 0.0
    ),
    "warmup_exponential_negative_begin": lambda lib: lib.warmup_exponential_decay_schedule(
        0.0, 1.0, 10, 10, 0.5, -3
    ),
    "piecewise_constant": lambda lib: lib.piecewise_constant_schedule(1e-2, TABLE),
    "piecewise_constant_none": lambda lib: lib.piecewise_constant_schedule(1e-2),
    "piecewise_constant_empty": lambda lib: lib.piecewise_constant_schedule(1e-2, {}),
    "piecewise_constant_at_zero": lambda lib: lib.piecewise_constant_schedule(
        1.0, {0: 0.5, 10: 0.0, 20: 3.0}
    ),
    "piecewise_constant_float_key": lambda lib: lib.piecewise_constant_schedule(1.0, {100.0: 0.1}),
    "piecewise_constant_int32_max": lambda lib: lib.piecewise_constant_schedule(
        1.0, {10: 0.5, INT32_MAX: 0.1}
    ),
    "piecewise_linear": lambda lib: lib.piecewise_interpolate_schedule("linear", 1e-2, TABLE),
    "piecewise_cosine": lambda lib: lib.piecewise_interpolate_schedule("cosine", 1e-2, TABLE),
    "piecewise_interpolate_none": lambda lib: lib.piecewise_interpolate_schedule("cosine", 1e-2),
    "piecewise_interpolate_empty": lambda lib: lib.piecewise_interpolate_schedule(
        "linear", 1e-2, {}
    ),
    "piecewise_interpolate_at_zero": lambda lib: lib.piecewise_interpolate_schedule(
        "linear", 1.0, {0: 0.5, 10: 0.0, 11: 2.0}
    ),
    "piecewise_interpolate_int32_max": lambda lib: lib.piecewise_interpolate_schedule(
        "cosine", 1.0, {10: 0.5, INT32_MAX: 0.1}
    ),
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


def assert_matches(
    actual: np.ndarray, expected: np.ndarray, *, eps: float = EPS32, extra: float = 0.0
) -> None:
    """Each value is a handful of roundings (½ ulp each) of numbers no larger than the
    schedule's largest value, and ours and optax's round at different places: (T - τ)/T
    against 1 - τ/T, (I - E)·c + E against I·((1 - α)·c + α), the one-cycle values multiplied in
    float64 against optax's float32 cumprod (≤ 3 factors). The grid measures ≤ 1.6 ulps of the
    largest value; 4 ulps of it (absolute) plus 4 ulps of each value (relative) bound this,
    while a shift by one step or a wrong branch moves a value by far more (> 1e-3 relative for
    every case here). ``extra`` adds a bound derived where a case is ill-conditioned."""
    np.testing.assert_allclose(
        actual, expected, rtol=4 * eps, atol=4 * ulps_of(expected, eps) + extra
    )


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
    np.testing.assert_array_equal(
        jitted(schedule, negative), float(jitted(schedule, np.zeros(1, np.int32))[0])
    )
    assert float(schedule(-5)) == float(schedule(0)) and float(schedule(-0.5)) == float(schedule(0))


EAGER_STEPS = (
    0,
    3,
    149,
    250,
    419,
    123456,
    BIG,
    2**40,
    2.5,
    99.5,
    300.25,
    np.int64(7),
    np.float32(11.0),
)


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


X64_STEPS = np.array(
    [0, 1, 5, 99, 100, 101, 250, 2**31 - 1, 2**31, BIG - 1, BIG, BIG + 1, 2**40, 2**62]
)


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


# --- random valid arguments ----------------------------------------------------------------------

# Schedule values: 0, or of a size whose products stay normal (XLA flushes subnormals to 0 on CPU).
values = st.floats(-2.0, 2.0).map(lambda x: 0.0 if abs(x) < 1e-30 else x)
magnitudes = st.floats(1e-6, 2.0)
lengths = st.integers(-3, 2000) | st.sampled_from([0, 1, INT32_MAX])  # optax overflows beyond int32
begins = st.integers(-3, 500) | st.sampled_from([INT32_MAX - 1])
extra_steps = st.lists(st.integers(int(np.iinfo(np.int32).min), INT32_MAX), max_size=8)


def hypothesis_steps(lengths: list[int], extra: list[int]) -> np.ndarray:
    """A spread of steps, each length's edges (T - 1, T, T + 1) and random int32 counts."""
    edges = [t + d for t in lengths for d in (-1, 0, 1) if 0 <= t + d <= INT32_MAX]
    return np.array(sorted(set(range(0, 2100, 13)) | set(edges) | {INT32_MAX} | set(extra)))


def assert_like_optax(
    case: Callable[[ModuleType], optax.Schedule], steps: np.ndarray, extra: float = 0.0
) -> None:
    """At steps >= 0 optax's values (see assert_matches; where optax's fractional power of a
    rounded-negative 1 - τ/T is NaN, ours must still be finite); at steps < 0 ours at step 0."""
    steps = np.concatenate([[0, -1, -(2**31)], steps]).astype(np.int32)
    ours = jitted(build(case, S), steps)
    assert np.isfinite(ours).all()
    np.testing.assert_array_equal(ours[steps < 0], ours[0])
    theirs = jitted(build(case, optax), np.maximum(steps, 0))
    finite = np.isfinite(theirs)
    assert_matches(ours[finite], theirs[finite], extra=extra)


@given(
    init=values,
    end=values,
    power=st.floats(0.5, 4.0),
    steps=lengths,
    begin=begins,
    extra=extra_steps,
    kind=st.sampled_from(["polynomial", "linear", "warmup_constant"]),
)
def test_polynomial_family_matches_optax(init, end, power, steps, begin, extra, kind):
    if kind == "linear":
        power = 1.0
    if kind == "warmup_constant":
        case, begin = (lambda lib: lib.warmup_constant_schedule(init, end, steps)), 0
    else:
        case = lambda lib: lib.polynomial_schedule(init, end, power, steps, begin)  # noqa: E731
    # optax's 1 - τ/T carries the absolute error of τ/T (≤ 2⁻²⁵ below 1), which the power
    # amplifies by P·f^(P-1) ≤ P·T^(1-P) at the last step before the end (f = 1/T) when P < 1.
    # Ours, (T - τ)/T, is exact to ½ ulp relative, so this is optax's share of the difference.
    lengths_in_range = min(max(steps, 1), 2**24)
    conditioning = (
        abs(init - end) * power * max(1.0, float(lengths_in_range) ** (1 - power)) * 2.0**-25
    )
    assert_like_optax(
        case, hypothesis_steps([steps, begin, begin + steps], extra), extra=2 * conditioning
    )


@given(
    init=magnitudes,
    steps=lengths,
    rate=st.floats(0.0, 2.0) | st.sampled_from([0.0, 1.0]),
    begin=begins,
    staircase=st.booleans(),
    end=st.none() | magnitudes,
    warmup=st.none() | st.integers(0, 300),
    extra=extra_steps,
)
def test_exponential_family_matches_optax(init, steps, rate, begin, staircase, end, warmup, extra):
    if rate > 1 and end is None:
        end = (
            2.0  # unbounded growth overflows float32 (to inf on both sides) within the int32 range
        )
    if warmup is None:
        case = lambda lib: lib.exponential_decay(init, steps, rate, begin, staircase, end)  # noqa: E731
    else:
        case = lambda lib: lib.warmup_exponential_decay_schedule(  # noqa: E731
            0.0, init, warmup, steps, rate, begin, staircase, end
        )
    # Both compute rate^p from the same float32 p, so they agree to a rounding or two. With
    # staircase, optax floors a float32 quotient that XLA forms as (t - B)·(1/T): at an exact
    # multiple t - B = k·T it can fall just below k, one interval short (exponential_decay(1.0,
    # 355, 2.0, staircase=True) is 1.0 at step 355 under jit), and beyond 2²⁴ the count itself is
    # rounded. Ours divides exactly in integers: those steps are checked against the float64
    # formula instead.
    shown = hypothesis_steps([steps, begin, begin + steps, (warmup or 0) + begin + steps], extra)
    if staircase and steps > 0 and rate > 0:
        delay = shown - (warmup or 0) - max(begin, 0)
        exact = (np.abs(shown) >= 2**24) | ((delay > 0) & (delay % steps == 0))
        ours = jitted(build(case, S), shown[exact])
        expected = [
            ref.exponential(int(t) - (warmup or 0), init, steps, rate, max(begin, 0), True, end)
            if int(t) >= (warmup or 0)
            else float(build(case, S)(int(t)))
            for t in shown[exact]
        ]
        # A few roundings of rate^k (relative), and float32's smallest normal number (absolute):
        # XLA on CPU flushes subnormal results to 0.
        np.testing.assert_allclose(
            ours, expected, rtol=4 * EPS32, atol=float(np.finfo(np.float32).tiny)
        )
        shown = shown[~exact]
    assert_like_optax(case, shown)


@given(
    init=values,
    steps=st.integers(1, 3000) | st.sampled_from([1, INT32_MAX, BIG]),
    alpha=st.floats(0.0, 1.0),
    exponent=st.floats(0.5, 4.0) | st.just(1.0),
    extra=extra_steps,
)
def test_cosine_decay_matches_optax(init, steps, alpha, exponent, extra):
    case = lambda lib: lib.cosine_decay_schedule(init, steps, alpha, exponent)  # noqa: E731
    assert_like_optax(case, hypothesis_steps([steps], extra))


@given(
    init=values,
    peak=values | st.just(0.0),
    end=values,
    warmup=st.integers(0, 300),
    cosine=st.integers(1, 3000) | st.just(BIG),
    exponent=st.floats(0.5, 4.0) | st.just(1.0),
    extra=extra_steps,
)
def test_warmup_cosine_decay_matches_optax(init, peak, end, warmup, cosine, exponent, extra):
    def case(lib: ModuleType) -> optax.Schedule:
        return lib.warmup_cosine_decay_schedule(init, peak, warmup, warmup + cosine, end, exponent)

    # optax forms α = end/peak and scales (1 - α)·c + α by the peak: for |end| ≫ |peak| the sum
    # cancels down from |α|, so its rounding is that of |end|·(1 + |α|·… ) ≤ 4 ulps of |end|,
    # inside the bound of the largest value, save for the ill-conditioned |end/peak| ≫ 1:
    ratio = abs(end / peak) if peak else 0.0
    assert_like_optax(
        case, hypothesis_steps([warmup, warmup + cosine], extra), extra=4 * EPS32 * abs(end) * ratio
    )


tables = st.dictionaries(st.integers(0, 600), st.floats(0.0, 3.0), max_size=4)


@given(
    init=values,
    table=tables,
    kind=st.sampled_from(["constant", "linear", "cosine"]),
    extra=extra_steps,
)
def test_piecewise_schedules_match_optax(init, table, kind, extra):
    if kind == "constant":
        case = lambda lib: lib.piecewise_constant_schedule(init, table)  # noqa: E731
    else:
        case = lambda lib: lib.piecewise_interpolate_schedule(kind, init, table)  # noqa: E731
    assert_like_optax(case, hypothesis_steps(list(table), extra))


@given(
    steps=st.integers(1, 1000),
    peak=magnitudes,
    pct=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2),
    div=st.floats(1.0, 100.0),
    final_div=st.floats(1.0, 1e4),
    linear=st.booleans(),
    extra=extra_steps,
)
def test_onecycle_schedules_match_optax(steps, peak, pct, div, final_div, linear, extra):
    start, final = sorted(pct)
    if linear:
        case = lambda lib: lib.linear_onecycle_schedule(steps, peak, start, final, div, final_div)  # noqa: E731
    else:
        case = lambda lib: lib.cosine_onecycle_schedule(steps, peak, start, div, final_div)  # noqa: E731
    assert_like_optax(
        case, hypothesis_steps([int(start * steps), int(final * steps), steps], extra)
    )


cycles = st.fixed_dictionaries(
    dict(
        init_value=values,
        peak_value=magnitudes,
        warmup_steps=st.integers(0, 50),
        decay_steps=st.integers(50, 300),
    ),
    optional=dict(end_value=st.floats(0.0, 1e-3), exponent=st.floats(0.5, 2.0)),
)


@given(
    kwargs=st.lists(cycles, min_size=1, max_size=4),
    boundaries=st.lists(st.integers(0, 400), min_size=3, max_size=3),
    extra=extra_steps,
)
def test_sgdr_and_join_match_optax(kwargs, boundaries, extra):
    sgdr = lambda lib: lib.sgdr_schedule(kwargs)  # noqa: E731
    ends = np.cumsum([k["decay_steps"] for k in kwargs]).tolist()
    assert_like_optax(sgdr, hypothesis_steps(ends, extra))
    boundaries = sorted(boundaries)[: len(kwargs) - 1]

    def join(lib: ModuleType) -> optax.Schedule:
        return lib.join_schedules(
            [lib.warmup_cosine_decay_schedule(**k) for k in kwargs], boundaries
        )

    assert_like_optax(join, hypothesis_steps(boundaries, extra))
