"""Learning-rate (and weight-decay, beta) schedules: pure functions ``step -> value``.
``_decay.py`` holds the single curves (constant, polynomial, exponential, cosine, ...),
``_piecewise.py`` the joined and piecewise ones, ``_warmup.py`` the warmup families,
``_arguments.py`` the argument checks they share, ``_plot.py`` ``plot_schedule``.

Every schedule takes the 0-based step count ``t`` (a Python or NumPy int or float, or an integer
or float array: int32, int64 under x64, traced or not), returns a float32 array (float64 under
x64) of the count's shape, and is safe under ``jax.jit`` and ``jax.vmap``. A negative count is
read as 0, so a schedule's value at a negative step is its value at step 0. Lengths and
boundaries may exceed the int32 range, and a concrete count beyond it (a Python ``10**10``) is
taken as a float.

Where optax has a schedule (the 14 of ``optax.schedules``), the name, the arguments and the
values are optax's, its degenerate cases included: a transition of ``<= 0`` steps, or
``decay_rate = 0``, holds ``init_value``; a negative ``transition_begin`` is read as 0; a zero
``peak_value`` decays to 0 (each with a ``UserWarning`` where it hides what the arguments ask
for). Arguments are checked when the schedule is built, each error naming the argument: values
finite, fractions (``alpha``, ``pct_*``) in [0, 1], powers, exponents and factors ``> 0``, step
counts whole numbers ``>= 0``, switches ``bool``. Where optax accepts more, each schedule's
docstring says so. Where optax's float32 arithmetic rounds out of the curve (a NaN from a
fractional power of a rounded-negative ``1 - τ/T``, a staircase one interval short at an exact
multiple of ``T``), ours computes the exact curve.

Peers, side by side (``T`` a number of steps, ``lr`` the initial value):

==============================================  ============================================
torch ``StepLR(s, gamma)``                      ``step_decay_schedule(lr, gamma, s)``
torch ``MultiStepLR(ms, gamma)``                ``piecewise_constant_schedule(lr, {m: gamma})``
torch ``ExponentialLR(gamma)``                  ``exponential_decay(lr, 1, gamma)``
torch ``CosineAnnealingLR(T, eta_min)``         ``cosine_decay_schedule(lr, T, eta_min / lr)``
torch ``CosineAnnealingWarmRestarts``           ``sgdr_schedule`` (cycles ``T_0·T_mult^i``)
torch ``OneCycleLR(total_steps=T + 1)``         ``cosine_onecycle_schedule(T, ...)``
torch ``PolynomialLR(T, power)``                ``polynomial_schedule(lr, 0, power, T)``
torch ``LinearLR(a, b, T)``                     ``linear_schedule(a·lr, b·lr, T)``
Keras ``ExponentialDecay``                      ``exponential_decay``
Keras ``InverseTimeDecay``                      ``inverse_time_decay_schedule``
Keras ``PiecewiseConstantDecay(bs, vs)``        ``piecewise_constant_schedule`` at ``b + 1``
Keras ``CosineDecay`` with warmup               ``warmup_cosine_decay_schedule``
Keras ``CosineDecayRestarts``                   ``sgdr_schedule``
Keras ``PolynomialDecay``                       ``polynomial_schedule``
==============================================  ============================================
"""

from __future__ import annotations

import optax

from adamw_jax.schedules._decay import (
    constant_schedule,
    cosine_decay_schedule,
    exponential_decay,
    inverse_sqrt_schedule,
    inverse_time_decay_schedule,
    linear_schedule,
    polynomial_schedule,
    step_decay_schedule,
)
from adamw_jax.schedules._piecewise import (
    cosine_onecycle_schedule,
    join_schedules,
    linear_onecycle_schedule,
    piecewise_constant_schedule,
    piecewise_interpolate_schedule,
)
from adamw_jax.schedules._plot import plot_schedule
from adamw_jax.schedules._warmup import (
    sgdr_schedule,
    warmup_constant_schedule,
    warmup_cosine_decay_schedule,
    warmup_exponential_decay_schedule,
    warmup_stable_decay_schedule,
)

Schedule = optax.Schedule

__all__ = [
    "Schedule",
    "constant_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "exponential_decay",
    "inverse_sqrt_schedule",
    "inverse_time_decay_schedule",
    "join_schedules",
    "linear_onecycle_schedule",
    "linear_schedule",
    "piecewise_constant_schedule",
    "piecewise_interpolate_schedule",
    "plot_schedule",
    "polynomial_schedule",
    "sgdr_schedule",
    "step_decay_schedule",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
    "warmup_stable_decay_schedule",
]
