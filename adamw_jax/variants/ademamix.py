"""AdEMAMix (Pagliardini et al. 2024): Adam with a second, slow EMA of the gradient mixed in.

With ``t = count + 1``, ``α_t`` and ``β3_t`` floats or schedules of the 0-based ``count``:

    m1 ← β1·m1 + (1 - β1)·g        m2 ← β3_t·m2 + (1 - β3_t)·g        ν ← β2·ν + (1 - β2)·g²
    u = (m1/(1 - β1^t) + α_t·m2) / (sqrt(ν/(1 - β2^t) + eps_root) + eps)

(the slow EMA ``m2`` is not bias-corrected, as the paper's Algorithm 1). ``ademamix`` chains it
with coupled weight decay ``u ← u + λ·θ`` and ``-η_t``: ``optax.contrib.ademamix``'s signature.

The paper's warm-ups over ``T`` steps (its ``T_α,β3``), at the 1-based step ``t = count + 1`` as
its reference code evaluates them, constant after ``T``:

    ademamix_alpha_schedule:  α_t = α · min(t/T, 1)
    ademamix_b3_schedule:     β3_t = exp(ln β_s · ln β3 / ((1 - t/T)·ln β3 + (t/T)·ln β_s))
                              (linear in the half-life of β3, from β_s = β1 to β3)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamw_jax import _numerics as num
from adamw_jax import _validation as check
from adamw_jax._states import transformation
from adamw_jax.transforms._masking import Mask
from adamw_jax.transforms.learning_rate import scale_by_learning_rate
from adamw_jax.transforms.weight_decay import add_decayed_weights


class ScaleByAdemamixState(NamedTuple):
    """``count``: int32 steps taken; ``m1``/``m2``: fast and slow EMAs of the gradient; ``nu``:
    the second moment."""

    count: jax.Array
    m1: optax.Updates
    m2: optax.Updates
    nu: optax.Updates


def scale_by_ademamix(
    b1: float = 0.9,
    b2: float = 0.999,
    b3: optax.ScalarOrSchedule = 0.9999,
    alpha: optax.ScalarOrSchedule = 6.0,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """AdEMAMix's direction (math in the module docstring); ``optax.contrib.scale_by_ademamix``'s
    signature and defaults. ``mu_dtype`` stores ``m1`` and ``m2``."""
    check.check_range("b1", b1, low=0.0, high=1.0, high_inclusive=False)
    check.check_range("b2", b2, low=0.0, high=1.0, high_inclusive=False)
    check.check_range("b3", b3, low=0.0, high=1.0, high_inclusive=False, allow_schedule=True)
    check.check_range(
        "alpha", alpha, low=0.0, allow_schedule=True, finite=True, hint="The paper uses 5 to 10."
    )
    check.check_range("eps", eps, low=0.0, finite=True)
    check.check_range("eps_root", eps_root, low=0.0, finite=True)
    mu_dtype = num.storage_dtype(mu_dtype, argument="mu_dtype")

    def init_fn(params: optax.Params) -> ScaleByAdemamixState:
        check.check_parameter_leaves(params)
        ema = lambda: jax.tree_util.tree_map(  # noqa: E731
            lambda p: jnp.zeros_like(p, dtype=mu_dtype), params
        )
        return ScaleByAdemamixState(
            count=num.zero_count(),
            m1=ema(),
            m2=ema(),
            nu=jax.tree_util.tree_map(jnp.zeros_like, params),
        )

    def update_fn(
        updates: optax.Updates,
        state: ScaleByAdemamixState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ScaleByAdemamixState]:
        del params, extra_args
        count = num.safe_increment(state.count)
        b3_t = num.hyperparameter_at(b3, state.count)
        alpha_t = num.hyperparameter_at(alpha, state.count)
        correction1 = num.bias_correction(num.one_minus(b1), count)
        correction2 = num.bias_correction(num.one_minus(b2), count)
        one_minus_b3 = num.one_minus(b3) if not callable(b3) else 1 - b3_t
        grads = jax.tree_util.tree_map(
            lambda g: num.limit_magnitude(g.astype(num.compute_dtype(g.dtype))), updates
        )
        ema = lambda beta, one_minus, old, new: jax.tree_util.tree_map(  # noqa: E731
            lambda m, x: beta * m + one_minus * x, old, new
        )
        m1 = ema(num.as_hyperparameter(b1), num.one_minus(b1), state.m1, grads)
        m2 = ema(b3_t, one_minus_b3, state.m2, grads)
        nu = ema(
            num.as_hyperparameter(b2),
            num.one_minus(b2),
            state.nu,
            jax.tree_util.tree_map(num.squared_magnitude, grads),
        )
        eps_t, eps_root_t = num.as_hyperparameter(eps), num.as_hyperparameter(eps_root)
        directions = jax.tree_util.tree_map(
            lambda u, a, b, v: num.adam_ratio(
                a / correction1 + alpha_t * b, jnp.sqrt(v / correction2 + eps_root_t) + eps_t
            ).astype(u.dtype),
            updates,
            m1,
            m2,
            nu,
        )
        cast = lambda tree, like: jax.tree_util.tree_map(  # noqa: E731
            lambda x, y: x.astype(y.dtype), tree, like
        )
        return directions, ScaleByAdemamixState(
            count=count, m1=cast(m1, state.m1), m2=cast(m2, state.m2), nu=cast(nu, state.nu)
        )

    return transformation(init_fn, update_fn)


def ademamix_alpha_schedule(alpha: float, warmup_steps: int) -> optax.Schedule:
    """``α_t = α·min((count + 1)/T, 1)``, the paper's linear warm-up of ``α``."""
    check.check_range("alpha", alpha, low=0.0, finite=True)
    check.check_positive_int("warmup_steps", warmup_steps)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        step = jnp.asarray(count, num.hyperparameter_dtype()) + 1
        return num.as_hyperparameter(alpha) * jnp.minimum(step / warmup_steps, 1)

    return schedule


def ademamix_b3_schedule(b3: float, warmup_steps: int, b3_start: float = 0.9) -> optax.Schedule:
    """``β3_t``, the paper's warm-up of ``β3`` from ``b3_start`` (its ``β1``) linear in the
    half-life ``ln(1/2)/ln β``, reaching ``b3`` at ``count + 1 = T`` (module docstring)."""
    for name, value in (("b3", b3), ("b3_start", b3_start)):
        check.check_range(name, value, low=0.0, high=1.0, high_inclusive=False)
        if check.concrete_float(value) == 0.0:
            raise ValueError(f"{name} must be > 0 (its half-life is 0).")
    check.check_positive_int("warmup_steps", warmup_steps)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        fraction = jnp.minimum(
            (jnp.asarray(count, num.hyperparameter_dtype()) + 1) / warmup_steps, 1
        )
        log_start, log_end = (
            jnp.log(num.as_hyperparameter(b3_start)),
            jnp.log(num.as_hyperparameter(b3)),
        )
        return jnp.exp(log_start * log_end / ((1 - fraction) * log_end + fraction * log_start))

    return schedule


def ademamix(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    b3: optax.ScalarOrSchedule = 0.9999,
    alpha: optax.ScalarOrSchedule = 5.0,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Mask | None = None,
) -> optax.GradientTransformationExtraArgs:
    """AdEMAMix with coupled weight decay, ``optax.contrib.ademamix``'s signature and defaults
    (math in the module docstring); ``b3`` and ``alpha`` may be schedules: the paper's warm-ups
    are ``ademamix_b3_schedule`` and ``ademamix_alpha_schedule``."""
    check.check_learning_rate(learning_rate)
    return optax.chain(
        scale_by_ademamix(b1, b2, b3, alpha, eps, eps_root, mu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
