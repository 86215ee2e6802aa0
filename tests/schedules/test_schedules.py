"""Schedules: every one against a float64 formula and against optax's schedule of the same name,
jitted and vmapped; argument checks; plot_schedule."""

from __future__ import annotations

import functools
import warnings

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
STEPS = 400
TABLE = {100: 0.5, 150: 2.0, 250: 0.1}

# name -> (schedule, float64 formula of t, optax schedule of the same name or None)
CASES = {
    "constant": (S.constant_schedule(3e-4), lambda t: 3e-4, optax.constant_schedule(3e-4)),
    "linear": (
        S.linear_schedule(1e-3, 1e-5, 300, 40),
        lambda t: ref.polynomial(t, 1e-3, 1e-5, 1, 300, 40),
        optax.linear_schedule(1e-3, 1e-5, 300, 40),
    ),
    "polynomial": (
        S.polynomial_schedule(1e-2, 1e-4, 2.5, 350, 10),
        lambda t: ref.polynomial(t, 1e-2, 1e-4, 2.5, 350, 10),
        optax.polynomial_schedule(1e-2, 1e-4, 2.5, 350, 10),
    ),
    "exponential": (
        S.exponential_decay(1e-2, 30, 0.7, 15),
        lambda t: ref.exponential(t, 1e-2, 30, 0.7, 15),
        optax.exponential_decay(1e-2, 30, 0.7, 15),
    ),
    "exponential_staircase_end": (
        S.exponential_decay(1e-2, 25, 0.5, 0, True, 2e-4),
        lambda t: ref.exponential(t, 1e-2, 25, 0.5, 0, True, 2e-4),
        optax.exponential_decay(1e-2, 25, 0.5, 0, True, 2e-4),
    ),
    "exponential_growth_capped": (
        S.exponential_decay(1e-4, 50, 1.5, end_value=5e-4),
        lambda t: ref.exponential(t, 1e-4, 50, 1.5, end=5e-4),
        optax.exponential_decay(1e-4, 50, 1.5, end_value=5e-4),
    ),
    "cosine_decay": (
        S.cosine_decay_schedule(1e-3, 300, 0.1, 2.0),
        lambda t: ref.cosine(t, 1e-3, 300, 0.1, 2.0),
        optax.cosine_decay_schedule(1e-3, 300, 0.1, 2.0),
    ),
    "warmup_cosine": (
        S.warmup_cosine_decay_schedule(1e-5, 1e-3, 50, 350, 1e-5),
        lambda t: ref.warmup_cosine(t, 1e-5, 1e-3, 50, 350, 1e-5),
        optax.warmup_cosine_decay_schedule(1e-5, 1e-3, 50, 350, 1e-5),
    ),
    "warmup_cosine_exponent": (
        S.warmup_cosine_decay_schedule(0.0, 1e-3, 20, 300, 0.0, 1.5),
        lambda t: ref.warmup_cosine(t, 0.0, 1e-3, 20, 300, 0.0, 1.5),
        optax.warmup_cosine_decay_schedule(0.0, 1e-3, 20, 300, 0.0, 1.5),
    ),
    "warmup_constant": (
        S.warmup_constant_schedule(0.0, 1e-3, 60),
        lambda t: ref.polynomial(t, 0.0, 1e-3, 1, 60),
        optax.warmup_constant_schedule(0.0, 1e-3, 60),
    ),
    "warmup_exponential": (
        S.warmup_exponential_decay_schedule(0.0, 1e-3, 40, 20, 0.8, 10, False, 1e-5),
        lambda t: ref.joined(
            t,
            [
                lambda s: ref.polynomial(s, 0.0, 1e-3, 1, 40),
                lambda s: ref.exponential(s, 1e-3, 20, 0.8, 10, False, 1e-5),
            ],
            [40],
        ),
        optax.warmup_exponential_decay_schedule(0.0, 1e-3, 40, 20, 0.8, 10, False, 1e-5),
    ),
    "piecewise_constant": (
        S.piecewise_constant_schedule(1e-2, TABLE),
        lambda t: ref.piecewise_constant(t, 1e-2, TABLE),
        optax.piecewise_constant_schedule(1e-2, TABLE),
    ),
    "piecewise_linear": (
        S.piecewise_interpolate_schedule("linear", 1e-2, TABLE),
        lambda t: ref.piecewise_interpolate(t, "linear", 1e-2, TABLE),
        optax.piecewise_interpolate_schedule("linear", 1e-2, TABLE),
    ),
    "piecewise_cosine": (
        S.piecewise_interpolate_schedule("cosine", 1e-2, TABLE),
        lambda t: ref.piecewise_interpolate(t, "cosine", 1e-2, TABLE),
        optax.piecewise_interpolate_schedule("cosine", 1e-2, TABLE),
    ),
    "linear_onecycle": (
        S.linear_onecycle_schedule(300, 1e-2, 0.25, 0.7, 20.0, 100.0),
        lambda t: ref.piecewise_interpolate(t, "linear", 5e-4, {75: 20.0, 210: 0.05, 300: 0.01}),
        optax.linear_onecycle_schedule(300, 1e-2, 0.25, 0.7, 20.0, 100.0),
    ),
    "cosine_onecycle": (
        S.cosine_onecycle_schedule(300, 1e-2, 0.3, 25.0, 1e3),
        lambda t: ref.piecewise_interpolate(t, "cosine", 4e-4, {90: 25.0, 300: 4e-5}),
        optax.cosine_onecycle_schedule(300, 1e-2, 0.3, 25.0, 1e3),
    ),
    "sgdr": (
        S.sgdr_schedule(
            [
                dict(
                    init_value=1e-3, peak_value=1e-3, warmup_steps=0, decay_steps=50, end_value=1e-5
                ),
                dict(init_value=0.0, peak_value=5e-4, warmup_steps=10, decay_steps=100),
                dict(init_value=1e-4, peak_value=2e-4, warmup_steps=5, decay_steps=200),
            ]
        ),
        lambda t: ref.joined(
            t,
            [
                lambda s: ref.warmup_cosine(s, 1e-3, 1e-3, 0, 50, 1e-5),
                lambda s: ref.warmup_cosine(s, 0.0, 5e-4, 10, 100),
                lambda s: ref.warmup_cosine(s, 1e-4, 2e-4, 5, 200),
            ],
            [50, 150],
        ),
        optax.sgdr_schedule(
            [
                dict(
                    init_value=1e-3, peak_value=1e-3, warmup_steps=0, decay_steps=50, end_value=1e-5
                ),
                dict(init_value=0.0, peak_value=5e-4, warmup_steps=10, decay_steps=100),
                dict(init_value=1e-4, peak_value=2e-4, warmup_steps=5, decay_steps=200),
            ]
        ),
    ),
    "join": (
        S.join_schedules([S.constant_schedule(1e-3), S.linear_schedule(1e-3, 0.0, 100)], [120]),
        lambda t: ref.joined(
            t, [lambda s: 1e-3, lambda s: ref.polynomial(s, 1e-3, 0.0, 1, 100)], [120]
        ),
        optax.join_schedules(
            [optax.constant_schedule(1e-3), optax.linear_schedule(1e-3, 0.0, 100)], [120]
        ),
    ),
    "step_decay": (
        S.step_decay_schedule(0.1, 0.1, 90),
        lambda t: ref.step_decay(t, 0.1, 0.1, 90),
        None,
    ),
    "inverse_time": (
        S.inverse_time_decay_schedule(1e-2, 0.5, 40),
        lambda t: ref.inverse_time(t, 1e-2, 0.5, 40),
        None,
    ),
    "inverse_time_staircase": (
        S.inverse_time_decay_schedule(1e-2, 2.0, 30, staircase=True),
        lambda t: ref.inverse_time(t, 1e-2, 2.0, 30, True),
        None,
    ),
    "inverse_sqrt": (
        S.inverse_sqrt_schedule(1e-3, 64),
        lambda t: ref.inverse_sqrt(t, 1e-3, 64),
        None,
    ),
    **{
        f"wsd_{shape}": (
            S.warmup_stable_decay_schedule(
                1e-3, 30, 200, 120, init_value=1e-5, end_value=1e-6, decay_shape=shape
            ),
            functools.partial(
                lambda t, shape: ref.warmup_stable_decay(t, 1e-3, 30, 200, 120, 1e-5, 1e-6, shape),
                shape=shape,
            ),
            None,
        )
        for shape in ("linear", "cosine", "1-sqrt")
    },
}


def float32_schedule_tolerance(expected: np.ndarray) -> dict[str, float]:
    """A schedule value is a handful of float32 operations on numbers no larger than the
    schedule's largest value, so its error is a few float32 ulps of that (1.2e-7 relative each);
    powers ``r^p`` add ``|p·log r|`` ulps, at most ~10 in these cases. 1e-6 relative with an
    absolute floor of 8 ulps of the largest value allows that and catches any real slip (an
    off-by-one step moves these curves by > 1e-3 relative)."""
    return dict(
        rtol=1e-6, atol=8 * float(np.finfo(np.float32).eps) * float(np.max(np.abs(expected)))
    )


def evaluate_jitted(schedule: optax.Schedule, steps: int = STEPS) -> np.ndarray:
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(steps)), np.float64)


@pytest.mark.parametrize("name", sorted(CASES))
def test_schedule_matches_float64_formula(name):
    schedule, formula, _ = CASES[name]
    expected = np.array([formula(t) for t in range(STEPS)])
    np.testing.assert_allclose(
        evaluate_jitted(schedule), expected, **float32_schedule_tolerance(expected)
    )


@pytest.mark.parametrize(
    "name", sorted(name for name, case in CASES.items() if case[2] is not None)
)
def test_schedule_matches_optax(name):
    schedule, _, optax_schedule = CASES[name]
    expected = evaluate_jitted(optax_schedule)
    np.testing.assert_allclose(
        evaluate_jitted(schedule), expected, **float32_schedule_tolerance(expected)
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_schedule_is_float32_and_traceable(name):
    schedule = CASES[name][0]
    for step in (0, 7, 333):
        eager = schedule(step)
        assert eager.dtype == jnp.float32 and eager.shape == ()
        assert jax.jit(schedule)(jnp.int32(step)) == pytest.approx(
            float(eager), rel=1e-6, abs=1e-10
        )
    batch = schedule(jnp.arange(6).reshape(2, 3))
    assert batch.shape == (2, 3) and batch.dtype == jnp.float32


def test_staircase_steps_are_exact_at_huge_counts():
    """Integer division keeps the staircase exact where float32 cannot represent the count."""
    last = np.iinfo(np.int32).max
    assert float(S.step_decay_schedule(1.0, 0.5, last)(jnp.int32(last - 1))) == 1.0
    assert float(S.step_decay_schedule(1.0, 0.5, last)(jnp.int32(last))) == 0.5
    assert (
        float(S.inverse_time_decay_schedule(1.0, 1.0, last, staircase=True)(jnp.int32(last - 1)))
        == 1.0
    )


@pytest.mark.parametrize(
    "build, words",
    [
        (
            lambda: S.warmup_constant_schedule(0.0, 1e-3, 0),
            "warmup_steps=0 .* holds init_value=0.0",
        ),
        (lambda: S.linear_schedule(1.0, 2.0, -1), "transition_steps=-1"),
        (lambda: S.linear_schedule(1.0, 1.0, -1), "transition_steps=-1"),
        (
            lambda: S.polynomial_schedule(1.0, 0.0, 2.0, 0),
            "transition_steps=0 .* never reaches end_value=0.0",
        ),
        (
            lambda: S.polynomial_schedule(1.0, 0.0, 1.0, 10, transition_begin=-3),
            "transition_begin=-3 .* read as 0",
        ),
        (lambda: S.exponential_decay(1.0, 0, 0.5), "transition_steps=0 disables the decay"),
        (lambda: S.exponential_decay(1.0, 10, 0.0), "decay_rate=0 disables the decay"),
        (lambda: S.exponential_decay(1.0, 10, 0.5, transition_begin=-1), "transition_begin=-1"),
        (lambda: S.warmup_exponential_decay_schedule(0.0, 1.0, 5, -2, 0.5), "transition_steps=-2"),
        (
            lambda: S.warmup_cosine_decay_schedule(0.0, 0.0, 10, 100, 0.1),
            "peak_value=0 decays to 0",
        ),
    ],
)
def test_optax_degenerate_cases_are_kept_with_a_warning(build, words):
    """optax's meaning of these arguments is kept (tests/parity/test_schedules_optax.py proves
    the values); a UserWarning names the argument, what it does and how to get what was meant."""
    with pytest.warns(UserWarning, match=words):
        build()


@pytest.mark.parametrize(
    "build",
    [
        lambda: S.linear_schedule(0.5, 0.5, 0),
        lambda: S.warmup_constant_schedule(1e-3, 1e-3, 0),
        lambda: S.warmup_cosine_decay_schedule(0.0, 1.0, 0, 100),
        lambda: S.warmup_cosine_decay_schedule(0.0, 0.0, 10, 100),
        lambda: S.warmup_exponential_decay_schedule(0.0, 1.0, 0, 10, 0.5),
        lambda: S.sgdr_schedule(
            [dict(init_value=1.0, peak_value=1.0, warmup_steps=0, decay_steps=10)] * 2
        ),
        lambda: S.exponential_decay(1.0, 10, 1.0),
    ],
)
def test_zero_steps_that_change_nothing_do_not_warn(build):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build()


@given(
    init=st.floats(1e-6, 1.0),
    end=st.floats(0.0, 1e-3),
    power=st.floats(0.25, 4.0),
    steps=st.integers(1, 500),
    begin=st.integers(0, 50),
)
def test_polynomial_property(init, end, power, steps, begin):
    expected = np.array(
        [ref.polynomial(t, init, end, power, steps, begin) for t in range(0, 600, 7)]
    )
    actual = jax.jit(S.polynomial_schedule(init, end, power, steps, begin))(jnp.arange(0, 600, 7))
    np.testing.assert_allclose(actual, expected, **float32_schedule_tolerance(expected))


@given(
    init=st.floats(1e-6, 1.0),
    rate=st.floats(0.05, 0.999),
    steps=st.integers(1, 100),
    staircase=st.booleans(),
    shape=st.sampled_from(["exp", "inverse_time", "step"]),
)
def test_decay_property(init, rate, steps, staircase, shape):
    ts = jnp.arange(0, 600, 11)
    if shape == "exp":
        schedule, formula = S.exponential_decay(init, steps, rate, 0, staircase), ref.exponential
        expected = [formula(t, init, steps, rate, 0, staircase) for t in range(0, 600, 11)]
    elif shape == "inverse_time":
        schedule = S.inverse_time_decay_schedule(init, rate, steps, staircase)
        expected = [ref.inverse_time(t, init, rate, steps, staircase) for t in range(0, 600, 11)]
    else:
        schedule = S.step_decay_schedule(init, rate, steps)
        expected = [ref.step_decay(t, init, rate, steps) for t in range(0, 600, 11)]
    expected = np.array(expected)
    # Up to 600 steps of rate^(t/T): |p·log r| reaches ~1.8e3 ulps for r=0.05, T=1, so the
    # relative tolerance is widened by that exponent, and the floor guards values far below init.
    exponent = 600 / steps * abs(np.log(rate))
    np.testing.assert_allclose(
        jax.jit(schedule)(ts), expected, rtol=1e-6 * (1 + exponent), atol=1e-30
    )


@given(
    peak=st.floats(1e-5, 1.0),
    warmup=st.integers(0, 50),
    stable=st.integers(0, 200),
    decay=st.integers(1, 200),
    shape=st.sampled_from(["linear", "cosine", "1-sqrt"]),
)
def test_warmup_stable_decay_property(peak, warmup, stable, decay, shape):
    schedule = S.warmup_stable_decay_schedule(peak, warmup, stable, decay, decay_shape=shape)
    expected = np.array(
        [
            ref.warmup_stable_decay(t, peak, warmup, stable, decay, shape=shape)
            for t in range(0, 500, 3)
        ]
    )
    actual = jax.jit(schedule)(jnp.arange(0, 500, 3))
    np.testing.assert_allclose(actual, expected, **float32_schedule_tolerance(expected))
    assert float(schedule(warmup + stable)) == pytest.approx(peak, rel=1e-6)
    assert float(schedule(warmup + stable + decay)) == 0.0


NAN, INF = float("nan"), float("inf")
EPS32 = float(np.finfo(np.float32).eps)
WARMUP_COSINE = dict(init_value=0.0, peak_value=1.0, warmup_steps=10, decay_steps=100)

# (build, error, words the message must hold: the argument's name, and where it helps the fix)
BAD_ARGUMENTS = [
    (lambda: S.constant_schedule("1e-3"), TypeError, "value must be a real number"),
    (lambda: S.constant_schedule(NAN), ValueError, "value must be a finite number, got nan"),
    (lambda: S.constant_schedule(INF), ValueError, "value must be a finite number"),
    (lambda: S.constant_schedule(jnp.ones(2)), TypeError, "value must be a real number .* shape"),
    (lambda: S.constant_schedule([1e-3]), TypeError, "value .* Pass one scalar"),
    (lambda: S.constant_schedule(True), TypeError, "value must be a real number"),
    (lambda: S.linear_schedule(NAN, 0.0, 10), ValueError, "init_value must be a finite"),
    (lambda: S.linear_schedule(1.0, -INF, 10), ValueError, "end_value must be a finite"),
    (
        lambda: S.linear_schedule(1.0, 0.0, 10.5),
        TypeError,
        r"transition_steps must be a whole number .* int\(10.5\)",
    ),
    (lambda: S.linear_schedule(1.0, 0.0, "10"), TypeError, "transition_steps"),
    (
        lambda: S.linear_schedule(1.0, 0.0, True),
        TypeError,
        "transition_steps must be a concrete int",
    ),
    (
        lambda: S.polynomial_schedule(1.0, 0.0, -1.0, 10),
        ValueError,
        "power must be a finite number > 0",
    ),
    (lambda: S.polynomial_schedule(1.0, 0.0, 0.0, 10), ValueError, "power .* power <= 0"),
    (lambda: S.polynomial_schedule(1.0, 0.0, NAN, 10), ValueError, "power"),
    (
        lambda: S.polynomial_schedule(1.0, 0.0, 1.0, 10, transition_begin=2.5),
        TypeError,
        "transition_begin",
    ),
    (
        lambda: S.exponential_decay(1.0, 10, -0.5),
        ValueError,
        "decay_rate must be a finite number >= 0",
    ),
    (lambda: S.exponential_decay(1.0, 10, INF), ValueError, "decay_rate"),
    (
        lambda: S.exponential_decay(1.0, 10, 0.5, staircase="no"),
        TypeError,
        "staircase must be True or False",
    ),
    (lambda: S.exponential_decay(1.0, 10, 0.5, end_value=NAN), ValueError, "end_value"),
    (lambda: S.exponential_decay(INF, 10, 0.5), ValueError, "init_value"),
    (lambda: S.cosine_decay_schedule(1.0, 0), ValueError, "decay_steps must be >= 1"),
    (lambda: S.cosine_decay_schedule(1.0, -5), ValueError, "decay_steps"),
    (
        lambda: S.cosine_decay_schedule(1.0, 100, alpha=-0.1),
        ValueError,
        r"alpha must be a finite number in \[0, 1\]",
    ),
    (
        lambda: S.cosine_decay_schedule(1.0, 100, alpha=1.5),
        ValueError,
        "alpha .* fraction of init_value",
    ),
    (lambda: S.cosine_decay_schedule(1.0, 100, exponent=0.0), ValueError, "exponent"),
    (lambda: S.cosine_decay_schedule(1.0, 100, exponent=-1.0), ValueError, "exponent"),
    (lambda: S.cosine_decay_schedule(NAN, 100), ValueError, "init_value"),
    (
        lambda: S.warmup_cosine_decay_schedule(0.0, 1.0, 100, 50),
        ValueError,
        "decay_steps .* >= warmup_steps",
    ),
    (
        lambda: S.warmup_cosine_decay_schedule(0.0, 1.0, -1, 50),
        ValueError,
        "warmup_steps must be >= 0",
    ),
    (lambda: S.warmup_cosine_decay_schedule(0.0, NAN, 10, 50), ValueError, "peak_value"),
    (lambda: S.warmup_cosine_decay_schedule(0.0, 1.0, 10, 50, INF), ValueError, "end_value"),
    (
        lambda: S.warmup_cosine_decay_schedule(0.0, 1.0, 10, 50, exponent=-2.0),
        ValueError,
        "exponent",
    ),
    (lambda: S.warmup_constant_schedule(0.0, INF, 10), ValueError, "peak_value"),
    (
        lambda: S.warmup_exponential_decay_schedule(0.0, 1.0, -3, 10, 0.5),
        ValueError,
        "warmup_steps must be >= 0",
    ),
    (lambda: S.warmup_exponential_decay_schedule(0.0, 1.0, 3, 10, -0.5), ValueError, "decay_rate"),
    (lambda: S.warmup_exponential_decay_schedule(0.0, NAN, 3, 10, 0.5), ValueError, "peak_value"),
    (
        lambda: S.piecewise_constant_schedule(1.0, {10: -0.1}),
        ValueError,
        r"boundaries_and_scales\[10\] .* >= 0",
    ),
    (
        lambda: S.piecewise_constant_schedule(1.0, {10: INF}),
        ValueError,
        r"boundaries_and_scales\[10\]",
    ),
    (
        lambda: S.piecewise_constant_schedule(1.0, {10: NAN}),
        ValueError,
        r"boundaries_and_scales\[10\]",
    ),
    (
        lambda: S.piecewise_constant_schedule(1.0, {-1: 0.5}),
        ValueError,
        "boundaries_and_scales key -1 must be >= 0",
    ),
    (
        lambda: S.piecewise_constant_schedule(1.0, {2.5: 0.5}),
        TypeError,
        "boundaries_and_scales key 2.5",
    ),
    (
        lambda: S.piecewise_constant_schedule(1.0, [(10, 0.1)]),
        TypeError,
        "boundaries_and_scales must be a dict",
    ),
    (lambda: S.piecewise_constant_schedule(NAN, {10: 0.1}), ValueError, "init_value"),
    (
        lambda: S.piecewise_interpolate_schedule("cubic", 1.0, {10: 0.1}),
        ValueError,
        "interpolate_type",
    ),
    (
        lambda: S.piecewise_interpolate_schedule("linear", 1.0, {10: -2.0}),
        ValueError,
        "boundaries_and_scales",
    ),
    (lambda: S.cosine_onecycle_schedule(0, 1.0), ValueError, "transition_steps must be >= 1"),
    (lambda: S.cosine_onecycle_schedule(100, NAN), ValueError, "peak_value"),
    (
        lambda: S.cosine_onecycle_schedule(100, 1.0, pct_start=1.5),
        ValueError,
        "pct_start .* warming up",
    ),
    (lambda: S.cosine_onecycle_schedule(100, 1.0, pct_start=-0.1), ValueError, "pct_start"),
    (lambda: S.cosine_onecycle_schedule(100, 1.0, div_factor=INF), ValueError, "div_factor"),
    (
        lambda: S.cosine_onecycle_schedule(100, 1.0, final_div_factor=-1.0),
        ValueError,
        "final_div_factor",
    ),
    (
        lambda: S.linear_onecycle_schedule(100, 1.0, 0.5, 0.3),
        ValueError,
        "pct_final .* >= pct_start",
    ),
    (lambda: S.linear_onecycle_schedule(100, 1.0, 0.3, 1.2), ValueError, "pct_final"),
    (lambda: S.linear_onecycle_schedule(100, 1.0, div_factor=0.0), ValueError, "div_factor .* > 0"),
    (lambda: S.join_schedules([S.constant_schedule(1.0)], [10]), ValueError, "one boundary fewer"),
    (lambda: S.join_schedules([S.constant_schedule(1.0), 0.5], [10]), TypeError, r"schedules\[1\]"),
    (
        lambda: S.join_schedules([S.constant_schedule(1.0)] * 3, [20, 10]),
        ValueError,
        "non-decreasing",
    ),
    (
        lambda: S.join_schedules([S.constant_schedule(1.0)] * 2, [-1]),
        ValueError,
        r"boundaries\[0\] must be >= 0",
    ),
    (
        lambda: S.join_schedules([S.constant_schedule(1.0)] * 2, [1.5]),
        TypeError,
        r"boundaries\[0\]",
    ),
    (
        lambda: S.sgdr_schedule([dict(init_value=1.0, peak_value=1.0, warmup_steps=0)]),
        ValueError,
        "decay_steps",
    ),
    (
        lambda: S.sgdr_schedule([dict(WARMUP_COSINE, decay_steps=10.5)]),
        TypeError,
        r"cosine_kwargs\[0\]\['decay_steps'\]",
    ),
    (lambda: S.sgdr_schedule([dict(WARMUP_COSINE, exponent=0.0)]), ValueError, "exponent"),
    (lambda: S.sgdr_schedule([]), ValueError, "cosine_kwargs"),
    (lambda: S.step_decay_schedule(1.0, 0.1, 0), ValueError, "step_size must be >= 1"),
    (
        lambda: S.step_decay_schedule(1.0, -0.1, 10),
        ValueError,
        "decay_rate .* divides the value by 10",
    ),
    (lambda: S.step_decay_schedule(1.0, INF, 10), ValueError, "decay_rate"),
    (lambda: S.step_decay_schedule(NAN, 0.1, 10), ValueError, "init_value"),
    (lambda: S.inverse_time_decay_schedule(1.0, 0.5, 0), ValueError, "decay_steps"),
    (lambda: S.inverse_time_decay_schedule(1.0, NAN, 10), ValueError, "decay_rate"),
    (lambda: S.inverse_time_decay_schedule(1.0, 0.5, 10, staircase="yes"), TypeError, "staircase"),
    (lambda: S.inverse_sqrt_schedule(1.0, 0), ValueError, "warmup_steps must be >= 1"),
    (lambda: S.inverse_sqrt_schedule(INF, 10), ValueError, "peak_value"),
    (
        lambda: S.warmup_stable_decay_schedule(1.0, 10, 10, 10, decay_shape="exp"),
        ValueError,
        "decay_shape",
    ),
    (
        lambda: S.warmup_stable_decay_schedule(1.0, 10, -1, 10),
        ValueError,
        "stable_steps must be >= 0",
    ),
    (lambda: S.warmup_stable_decay_schedule(1.0, -1, 10, 10), ValueError, "warmup_steps"),
    (
        lambda: S.warmup_stable_decay_schedule(1.0, 10, 10, 0),
        ValueError,
        "decay_steps must be >= 1",
    ),
    (lambda: S.warmup_stable_decay_schedule(NAN, 10, 10, 10), ValueError, "peak_value"),
    (
        lambda: S.warmup_stable_decay_schedule(1.0, 10, 10, 10, end_value=INF),
        ValueError,
        "end_value",
    ),
]


@pytest.mark.parametrize("build, error, words", BAD_ARGUMENTS)
def test_bad_arguments_are_named_when_built(build, error, words):
    with pytest.raises(error, match=words):
        build()


def test_every_schedule_has_bad_argument_cases():
    """Each public schedule is covered by the table above."""
    import inspect

    covered = {
        name
        for name in S.__all__
        if any(f"S.{name}(" in inspect.getsource(case[0]) for case in BAD_ARGUMENTS)
    }
    assert covered == set(S.__all__) - {"Schedule", "plot_schedule"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_negative_steps_give_the_step_zero_value(name):
    """Negative steps (an off-by-one in a loop, a count started at -1) are step 0: before,
    step_decay_schedule(-5) was ten times its peak (0.1 ** floor(-5 / 90) = 10)."""
    schedule = CASES[name][0]
    negative = jnp.array([-1, -5, -90, -1000, np.iinfo(np.int32).min], jnp.int32)
    np.testing.assert_array_equal(jax.jit(jax.vmap(schedule))(negative), jax.jit(schedule)(0))
    at_zero = float(schedule(0))
    assert float(schedule(-5)) == at_zero and float(schedule(-2.5)) == at_zero
    assert float(schedule(-(10**12))) == at_zero


def test_low_precision_and_traced_values_are_accepted():
    """optax takes a value of any float dtype and traced values (built inside jit): so do we."""
    np.testing.assert_array_equal(
        S.constant_schedule(jnp.bfloat16(0.3))(jnp.arange(2)), np.float32(jnp.bfloat16(0.3))
    )
    assert float(S.cosine_decay_schedule(np.float16(0.5), 10)(0)) == 0.5

    def built_inside_jit(peak, end):
        return (
            S.warmup_cosine_decay_schedule(0.0, peak, 10, 100, end)(jnp.arange(120)),
            S.exponential_decay(peak, 10, 0.5, end_value=end)(jnp.arange(120)),
            S.polynomial_schedule(peak, end, 2.0, 50)(jnp.arange(120)),
        )

    traced = jax.jit(built_inside_jit)(jnp.float32(1e-3), jnp.float32(1e-5))
    for ours, concrete in zip(traced, built_inside_jit(1e-3, 1e-5)):
        # Traced, the values are float32 operands inside one XLA computation; concrete, Python
        # floats folded eagerly: a few roundings apart, 4 ulps of each value or of the peak.
        np.testing.assert_allclose(ours, concrete, rtol=4 * EPS32, atol=4 * EPS32 * 1e-3)


def test_integral_float_step_arguments_are_whole_steps():
    """optax takes decay_steps=100.0 (a length computed as epochs * steps_per_epoch * 1.0)."""
    np.testing.assert_array_equal(
        S.cosine_decay_schedule(1.0, 100.0)(jnp.arange(120)),
        S.cosine_decay_schedule(1.0, 100)(jnp.arange(120)),
    )
    np.testing.assert_array_equal(
        S.piecewise_constant_schedule(1.0, {np.int64(5): 0.5, 10.0: 0.5})(jnp.arange(12)),
        S.piecewise_constant_schedule(1.0, {5: 0.5, 10: 0.5})(jnp.arange(12)),
    )


def test_lengths_and_counts_beyond_int32():
    """Lengths beyond int32 (which optax's polynomial and piecewise schedules overflow on) against
    the float64 formula; int32 counts never reach them, Python ints and int64 counts do."""
    big = 10**10
    steps = jnp.array([0, 10**6, 2**31 - 1], jnp.int32)
    np.testing.assert_allclose(
        jax.jit(S.polynomial_schedule(1.0, 0.0, 2.0, big))(steps),
        [ref.polynomial(int(t), 1.0, 0.0, 2.0, big) for t in steps],
        rtol=1e-6,
    )
    np.testing.assert_array_equal(
        jax.jit(S.piecewise_constant_schedule(1.0, {big: 0.1}))(steps), 1.0
    )
    np.testing.assert_allclose(
        jax.jit(S.cosine_decay_schedule(1.0, decay_steps=big))(steps),
        [ref.cosine(int(t), 1.0, big) for t in steps],
        rtol=1e-6,
    )
    assert float(S.cosine_decay_schedule(1.0, decay_steps=big)(big)) == 0.0
    assert float(S.piecewise_constant_schedule(1.0, {big: 0.1})(big)) == pytest.approx(0.1)
    assert float(S.step_decay_schedule(1.0, 0.5, big)(big + 1)) == 0.5
    with jax.enable_x64(True):
        counts = jnp.array([big - 1, big, 2 * big], jnp.int64)
        np.testing.assert_array_equal(
            jax.jit(S.step_decay_schedule(1.0, 0.5, big))(counts), [1.0, 0.5, 0.25]
        )
        np.testing.assert_array_equal(
            jax.jit(S.join_schedules([S.constant_schedule(1.0), S.constant_schedule(2.0)], [big]))(
                counts
            ),
            [1.0, 2.0, 2.0],
        )


def test_staircase_is_exact_at_every_multiple():
    """(t - B) // T in integers: at t - B = k·T the k-th decay applies (optax's float quotient
    under jit can be an interval short, e.g. T = 355)."""
    for steps in (3, 7, 355, 1000):
        schedule = jax.jit(jax.vmap(S.exponential_decay(1.0, steps, 2.0, 4, staircase=True)))
        counts = 4 + steps * jnp.arange(1, 6)
        np.testing.assert_array_equal(schedule(counts), 2.0 ** np.arange(1, 6))
        np.testing.assert_array_equal(schedule(counts - 1), 2.0 ** np.arange(0, 5))


def test_plot_schedule_writes_one_png_with_every_curve(tmp_path):
    import matplotlib.image

    path = S.plot_schedule(
        {"cosine": CASES["warmup_cosine"][0], "wsd": CASES["wsd_1-sqrt"][0]},
        300,
        tmp_path / "two.png",
        title="two",
        log_scale=True,
    )
    image = matplotlib.image.imread(path)
    assert image.shape == (480, 768, 4)
    single = S.plot_schedule(
        S.step_decay_schedule(1.0, 0.5, 10), [0, 5, 10, 50], tmp_path / "one.png"
    )
    assert matplotlib.image.imread(single).shape == (480, 768, 4)
    # Each curve draws pixels of its own colour: more distinct colours with two curves.
    assert len(np.unique(image.reshape(-1, 4), axis=0)) > len(
        np.unique(matplotlib.image.imread(single).reshape(-1, 4), axis=0)
    )


@pytest.mark.parametrize(
    "schedule, steps, error",
    [
        ({}, 10, ValueError),
        ({"a": 1.0}, 10, TypeError),
        (S.constant_schedule(1.0), 0, ValueError),
        (S.constant_schedule(1.0), [0.5, 1.5], TypeError),
    ],
)
def test_plot_schedule_rejects_bad_input(tmp_path, schedule, steps, error):
    with pytest.raises(error, match="schedule|steps"):
        S.plot_schedule(schedule, steps, tmp_path / "x.png")
