"""``scale_by_adam``: the Adam direction from running moments of the gradient.

With ``t = count + 1`` and the gradient ``g``:

    m_t = β1·m + (1 - β1)·g                 v_t = β2·v + (1 - β2)·|g|²
    AMSGrad: v_t ← max(v_max, v_t), kept as v_max (the raw moment, corrected after the max)

    eps_mode="adam" (optax, torch):   u = m̂ / (sqrt(v̂ + eps_root) + eps)
        m̂ = m_t / (1 - β1^t),  v̂ = v_t / (1 - β2^t)
        Nesterov (Dozat 2016, as optax):  m̂ = β1·m_t/(1 - β1^(t+1)) + (1 - β1)·g/(1 - β1^t)
    eps_mode="hat" (Keras, TensorFlow): u = sqrt(1 - β2^t)/(1 - β1^t) · m_t / (sqrt(v_t + eps_root) + eps)

The output ``u`` is the descent direction before the learning rate; the chain multiplies it by
``-η_t``. Moments are stored in ``mu_dtype`` / ``nu_dtype`` (default: the parameter dtype) and
every formula runs in at least float32.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamw_jax import _numerics as num
from adamw_jax import _validation as check

EPS_MODES = ("adam", "hat")


class ScaleByAdamState(NamedTuple):
    """``count``: int32 steps taken; ``mu``/``nu``: first/second moments; ``nu_max``: the
    running maximum of ``nu`` when AMSGrad is on, else ``None``."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    nu_max: optax.Updates | None


def _moment_like(params: optax.Params, dtype: jnp.dtype | None, *, real: bool) -> optax.Updates:
    def zeros(p: jax.Array) -> jax.Array:
        target = dtype or (jnp.real(jnp.zeros((), p.dtype)).dtype if real else p.dtype)
        return jnp.zeros(jnp.shape(p), target)

    return jax.tree_util.tree_map(zeros, params)


def _squared_magnitude(g: jax.Array) -> jax.Array:
    """``|g|²``, real also for complex ``g`` (as optax)."""
    return jnp.square(jnp.real(g)) + jnp.square(jnp.imag(g)) if jnp.iscomplexobj(g) else jnp.square(g)


def _compute(x: jax.Array, *others: jax.Array) -> jax.Array:
    """``x`` in the arithmetic dtype: at least float32, wide enough for ``others`` too."""
    return x.astype(num.compute_dtype(jnp.result_type(x, *others)))


def _store_like(values: optax.Updates, stored: optax.Updates) -> optax.Updates:
    """Round freshly computed moments to the storage dtypes of the previous state."""
    return jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), values, stored)


def scale_by_adam(
    b1: float | optax.ScalarOrSchedule = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    bias_correction: bool = True,
    eps_mode: str = "adam",
    amsgrad: bool = False,
    nesterov: bool = False,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> optax.GradientTransformation:
    """Rescale gradients by Adam's bias-corrected moment estimates (math in the module docstring).

    Args:
      b1: decay of the first moment, in [0, 1); a float or a schedule of the 0-based step
        (torch ``OneCycleLR(cycle_momentum=True)``); bias correction uses the current value.
      b2: decay of the second moment, in [0, 1).
      eps: added to ``sqrt(v̂)`` (``"adam"``) or ``sqrt(v)`` (``"hat"``); >= 0.
      eps_root: added to ``v̂`` inside the square root; > 0 keeps gradients through the update
        finite (meta-learning).
      bias_correction: divide by ``1 - β^t``; ``False`` gives the raw moments.
      eps_mode: ``"adam"`` (optax, torch) or ``"hat"`` (Keras, TensorFlow: Kingma & Ba's
        "epsilon hat").
      amsgrad: use the running maximum of the raw second moment (torch, Keras semantics).
      nesterov: Nesterov momentum (Dozat 2016), as ``optax.nadam``; with ``eps_mode="adam"`` only.
      mu_dtype, nu_dtype: storage dtypes of the moments; ``None`` keeps the parameter dtype.

    Returns:
      An ``optax.GradientTransformation`` whose state is a ``ScaleByAdamState``.
    """
    check.check_range("b1", b1, low=0.0, high=1.0, high_inclusive=False, allow_schedule=True,
                      hint="b1 is the first-moment decay, typically 0.9.")
    check.check_range("b2", b2, low=0.0, high=1.0, high_inclusive=False,
                      hint="b2 is the second-moment decay, typically 0.999.")
    check.check_range("eps", eps, low=0.0, hint="eps is a small positive constant such as 1e-8.")
    check.check_range("eps_root", eps_root, low=0.0, hint="use 0.0 unless differentiating the update.")
    check.check_choice("eps_mode", eps_mode, EPS_MODES)
    if nesterov and eps_mode != "adam":
        raise ValueError("nesterov=True needs eps_mode='adam'; Keras-style 'hat' has no Nesterov form.")
    mu_dtype = num.storage_dtype(mu_dtype, argument="mu_dtype")
    nu_dtype = num.storage_dtype(nu_dtype, argument="nu_dtype")
    one_minus_b2 = num.one_minus(b2)

    def init_fn(params: optax.Params) -> ScaleByAdamState:
        nu = _moment_like(params, nu_dtype, real=True)
        return ScaleByAdamState(
            count=num.zero_count(),
            mu=_moment_like(params, mu_dtype, real=False),
            nu=nu,
            nu_max=nu if amsgrad else None,
        )

    def update_fn(
        updates: optax.Updates, state: ScaleByAdamState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScaleByAdamState]:
        del params
        b1_t = num.hyperparameter_at(b1, state.count)
        one_minus_b1 = num.one_minus(b1) if not callable(b1) else 1 - b1_t
        b2_t = num.as_hyperparameter(b2)
        eps_t = num.as_hyperparameter(eps)
        eps_root_t = num.as_hyperparameter(eps_root)
        count = num.safe_increment(state.count)
        step = count.astype(b1_t.dtype)
        if bias_correction:
            correction1 = num.bias_correction(one_minus_b1, step)
            correction2 = num.bias_correction(one_minus_b2, step)
            correction1_next = num.bias_correction(one_minus_b1, step + 1)
        else:
            correction1 = correction2 = correction1_next = jnp.ones([], b1_t.dtype)

        mu = jax.tree_util.tree_map(
            lambda g, m: b1_t * _compute(m, g) + one_minus_b1 * _compute(g, m), updates, state.mu)
        nu = jax.tree_util.tree_map(
            lambda g, v: b2_t * _compute(v) + one_minus_b2 * _squared_magnitude(_compute(g)),
            updates, state.nu)
        nu_used = nu if not amsgrad else jax.tree_util.tree_map(
            lambda v_max, v: jnp.maximum(_compute(v_max), v), state.nu_max, nu)

        def direction(g: jax.Array, m: jax.Array, v: jax.Array) -> jax.Array:
            if eps_mode == "hat":
                step_size = jnp.sqrt(correction2) / correction1
                return (step_size * m / (jnp.sqrt(v + eps_root_t) + eps_t)).astype(g.dtype)
            if nesterov:
                m_hat = b1_t * m / correction1_next + one_minus_b1 * _compute(g) / correction1
            else:
                m_hat = m / correction1
            return (m_hat / (jnp.sqrt(v / correction2 + eps_root_t) + eps_t)).astype(g.dtype)

        new_updates = jax.tree_util.tree_map(direction, updates, mu, nu_used)
        return new_updates, ScaleByAdamState(
            count=count,
            mu=_store_like(mu, state.mu),
            nu=_store_like(nu, state.nu),
            nu_max=_store_like(nu_used, state.nu_max) if amsgrad else None,
        )

    return optax.GradientTransformation(init_fn, update_fn)
