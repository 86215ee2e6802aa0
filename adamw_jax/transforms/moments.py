"""``scale_by_adam``: the Adam direction from running moments of the gradient.

With ``t = count + 1`` and the gradient ``g``:

    m_t = β1·m + (1 - β1)·g                 v_t = β2·v + (1 - β2)·|g|²
    AMSGrad: v_t ← max(v_max, v_t), kept as v_max (the raw moment, corrected after the max)

    eps_mode="adam" (optax, torch):   u = m̂ / (sqrt(v̂ + eps_root) + eps)
        m̂ = m_t / (1 - β1^t),  v̂ = v_t / (1 - β2^t)
        Nesterov (Dozat 2016, as optax):  m̂ = β1·m_t/(1 - β1^(t+1)) + (1 - β1)·g/(1 - β1^t)
    eps_mode="hat" (Keras, TensorFlow): u = sqrt(1 - β2^t)/(1 - β1^t) · m_t / (sqrt(v_t + eps_root) + eps)
    eps_mode="atan2" (Everett et al. 2024, adam-atan2-pytorch's AdamAtan2):
        u = a · atan2(m̂, b · sqrt(v̂)),  a = 1.27, b = 1 (no eps: atan2(0, 0) = 0, |u| <= a·π/2)

The output ``u`` is the descent direction before the learning rate; the chain multiplies it by
``-η_t``. Moments are stored in ``mu_dtype`` / ``nu_dtype`` (default: the parameter dtype) and
every formula runs in at least float32. The storage formats (bfloat16, float16 kept safe
with block scales, blockwise ``"int8"``, stochastic rounding) live in ``adamw_jax.lowbit``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamw_jax import _numerics as num
from adamw_jax import _validation as check
from adamw_jax import lowbit
from adamw_jax._states import transformation

EPS_MODES = ("adam", "hat", "atan2")


class ScaleByAdamState(NamedTuple):
    """``count``: int32 steps taken; ``mu``/``nu``: first/second moments; ``nu_max``: the
    running maximum of ``nu`` when AMSGrad is on, else ``None``."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    nu_max: optax.Updates | None


def _check_state(state: Any, updates: optax.Updates, *, amsgrad: bool) -> None:
    """Name the mismatch when ``update`` gets a state its ``init`` did not make for these
    gradients, instead of failing inside a tree map or an XLA shape check."""
    if not isinstance(state, ScaleByAdamState):
        raise TypeError(
            f"scale_by_adam.update got a {type(state).__name__} state; pass the state returned "
            "by this transformation's init (or by the previous update)."
        )
    if (state.nu_max is None) == amsgrad and jax.tree_util.tree_leaves(updates):
        made, built = (
            ("amsgrad=False", "amsgrad=True") if amsgrad else ("amsgrad=True", "amsgrad=False")
        )
        raise ValueError(
            f"the state was created with {made} but this optimizer has {built}; re-run init "
            "with this optimizer, or convert the state (AMSGrad keeps nu_max)."
        )
    try:
        mismatches = [
            (path, jnp.shape(g), jnp.shape(m))
            for path, g, m in _paired_leaves(updates, state.mu)
            if not isinstance(m, lowbit.BlockwiseArray) and jnp.shape(g) != jnp.shape(m)
        ]
    except ValueError:
        raise ValueError(
            "the optimizer state does not match the gradients: the state was initialised for "
            f"{jax.tree_util.tree_structure(state.mu)} but the gradients are "
            f"{jax.tree_util.tree_structure(updates)}. Call init on the parameters you train."
        ) from None
    if mismatches:
        path, got, stored = mismatches[0]
        raise ValueError(
            f"the gradient at {jax.tree_util.keystr(path)} has shape {got} but the optimizer "
            f"state holds shape {stored} there; call init on the parameters you train."
        )


def _moment_weight(one_minus_beta: jax.Array) -> jax.Array:
    """The weight ``1 - β`` of the new gradient, or 1 at ``β = 1``, where the moment becomes the
    sum of the gradients (see ``_bias_correction``)."""
    return jnp.where(one_minus_beta == 0, jnp.ones_like(one_minus_beta), one_minus_beta)


def _bias_correction(one_minus_beta: jax.Array, step: jax.Array) -> jax.Array:
    """``1 - β^t``, or ``t`` at ``β = 1``: the moment is then ``Σ g`` and ``m̂ = Σ g / t``, the
    limit of ``m_t / (1 - β^t)`` as ``β → 1``, where Adam's formula is ``0/0``. A β of exactly 1
    reaches here as a rounded hyperparameter: ``optax.inject_hyperparams`` casts ``b2 = 0.999``
    to bfloat16 parameters' dtype, which is ``1.0``."""
    return jnp.where(
        one_minus_beta == 0,
        step.astype(one_minus_beta.dtype),
        num.bias_correction(one_minus_beta, step),
    )


def _may_round_to_one(beta: Any) -> bool:
    """Whether ``beta`` is a low-precision floating array (bfloat16, float16), whose value 1 is
    the rounding of a β below 1 (``optax.inject_hyperparams`` casts hyperparameters to the
    parameter dtype); a Python 1.0 is refused."""
    dtype = getattr(beta, "dtype", None)
    return dtype is not None and num.is_low_precision(dtype)


def _paired_leaves(tree: Any, prefixed: Any) -> list[tuple[Any, Any, Any]]:
    """``(path, leaf, matching subtree)`` for each leaf of ``tree``; ``prefixed`` must have
    ``tree``'s structure as a prefix (ValueError otherwise)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    subtrees = jax.tree_util.tree_structure(tree).flatten_up_to(prefixed)
    return [(path, leaf, sub) for (path, leaf), sub in zip(leaves, subtrees)]


def scale_by_adam(
    b1: float | optax.ScalarOrSchedule = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    bias_correction: bool = True,
    eps_mode: str = "adam",
    amsgrad: bool = False,
    nu_dtype: Any = None,
    stochastic_rounding: bool = False,
    atan2_scale: float = 1.27,
    atan2_denominator_scale: float = 1.0,
) -> optax.GradientTransformationExtraArgs:
    """Rescale gradients by Adam's bias-corrected moment estimates (math in the module docstring).

    The positional arguments and defaults are ``optax.scale_by_adam``'s; the rest keyword-only.

    Args:
      b1: decay of the first moment, in [0, 1); a float or a schedule of the 0-based step
        (torch ``OneCycleLR(cycle_momentum=True)``); bias correction uses the current value.
      b2: decay of the second moment, in [0, 1). A bfloat16 or float16 β of exactly 1 (what
        ``optax.inject_hyperparams`` makes of 0.999 for bfloat16 params) is taken as the limit
        β → 1: the moment is the sum of ``|g|²`` and ``v̂`` their mean (likewise for ``b1``).
      eps: added to ``sqrt(v̂)`` (``"adam"``) or ``sqrt(v)`` (``"hat"``); >= 0.
      eps_root: added to ``v̂`` inside the square root; > 0 keeps gradients through the update
        finite (meta-learning).
      bias_correction: divide by ``1 - β^t``; ``False`` gives the raw moments.
      eps_mode: ``"adam"`` (optax, torch), ``"hat"`` (Keras, TensorFlow: Kingma & Ba's
        "epsilon hat") or ``"atan2"`` (Adam-atan2: ``a·atan2(m̂, b·sqrt(v̂))``, ``eps`` and
        ``eps_root`` unused).
      atan2_scale, atan2_denominator_scale: ``a`` and ``b`` of ``eps_mode="atan2"`` (finite,
        > 0; defaults adam-atan2-pytorch's 1.27 and 1).
      amsgrad: use the running maximum of the raw second moment (torch, Keras semantics).
      nesterov: Nesterov momentum (Dozat 2016), as ``optax.nadam``; with ``eps_mode="adam"`` only.
      mu_dtype, nu_dtype: storage of the moments: ``None`` (the parameter dtype), a float dtype
        (``jnp.bfloat16``; ``jnp.float16`` is block-scaled so it cannot overflow or underflow)
        or ``"int8"`` (blockwise 8-bit dynamic code); see ``adamw_jax.lowbit``.
      stochastic_rounding: round the stored moments stochastically (noise from the step).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a ``ScaleByAdamState``.
    """
    check.check_range(
        "b1",
        b1,
        low=0.0,
        high=1.0,
        high_inclusive=_may_round_to_one(b1),
        allow_schedule=True,
        hint="b1 is the first-moment decay, typically 0.9.",
    )
    check.check_range(
        "b2",
        b2,
        low=0.0,
        high=1.0,
        high_inclusive=_may_round_to_one(b2),
        hint="b2 is the second-moment decay, typically 0.999.",
    )
    check.check_range(
        "eps", eps, low=0.0, finite=True, hint="eps is a small positive constant such as 1e-8."
    )
    check.check_range(
        "eps_root",
        eps_root,
        low=0.0,
        finite=True,
        hint="use 0.0 unless differentiating the update.",
    )
    for name, flag in (
        ("nesterov", nesterov),
        ("bias_correction", bias_correction),
        ("amsgrad", amsgrad),
        ("stochastic_rounding", stochastic_rounding),
    ):
        check.check_bool(name, flag)
    check.check_choice("eps_mode", eps_mode, EPS_MODES)
    if nesterov and eps_mode == "hat":
        raise ValueError(
            "nesterov=True needs eps_mode='adam' or 'atan2'; Keras-style 'hat' has "
            "no Nesterov form."
        )
    for name, value in (
        ("atan2_scale", atan2_scale),
        ("atan2_denominator_scale", atan2_denominator_scale),
    ):
        check.check_positive(
            name,
            value,
            finite=True,
            hint="The defaults 1.27 and 1.0 are adam-atan2-pytorch's a and b.",
        )
    mu_storage = lowbit.moment_storage(
        mu_dtype, argument="mu_dtype", second_moment=False, stochastic_rounding=stochastic_rounding
    )
    nu_storage = lowbit.moment_storage(
        nu_dtype, argument="nu_dtype", second_moment=True, stochastic_rounding=stochastic_rounding
    )

    def init_fn(params: optax.Params) -> ScaleByAdamState:
        check.check_parameter_leaves(params)
        nu = nu_storage.init(params)
        return ScaleByAdamState(
            count=num.zero_count(),
            mu=mu_storage.init(params),
            nu=nu,
            nu_max=nu if amsgrad else None,
        )

    def update_fn(
        updates: optax.Updates,
        state: ScaleByAdamState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ScaleByAdamState]:
        del params, extra_args
        b1_t = num.hyperparameter_at(b1, state.count)
        one_minus_b1 = num.one_minus(b1) if not callable(b1) else 1 - b1_t
        b2_t = num.as_hyperparameter(b2)
        # Formed here, not when the transform is built: building an optimizer must not start a
        # JAX backend (jax.distributed.initialize has to come first in multi-host programs).
        one_minus_b2 = num.one_minus(b2)
        eps_t = num.as_hyperparameter(eps)
        eps_root_t = num.as_hyperparameter(eps_root)
        count = num.safe_increment(state.count)
        step = count.astype(b1_t.dtype)
        if bias_correction:
            correction1 = _bias_correction(one_minus_b1, step)
            correction2 = _bias_correction(one_minus_b2, step)
            correction1_next = _bias_correction(one_minus_b1, step + 1)
            one_minus_b1, one_minus_b2 = _moment_weight(one_minus_b1), _moment_weight(one_minus_b2)
        else:
            correction1 = correction2 = correction1_next = jnp.ones([], b1_t.dtype)

        _check_state(state, updates, amsgrad=amsgrad)
        grads = jax.tree_util.tree_map(
            lambda g: num.limit_magnitude(g.astype(num.compute_dtype(g.dtype))), updates
        )
        mu = jax.tree_util.tree_map(
            lambda g, m: b1_t * m + one_minus_b1 * g, grads, mu_storage.decode(state.mu, updates)
        )
        nu = jax.tree_util.tree_map(
            lambda g, v: b2_t * v + one_minus_b2 * num.squared_magnitude(g),
            grads,
            nu_storage.decode(state.nu, updates),
        )
        if amsgrad and state.nu_max is not None:  # None: a tree without leaves (params=None)
            nu_used = jax.tree_util.tree_map(
                jnp.maximum, nu_storage.decode(state.nu_max, updates), nu
            )
            nu_max = nu_storage.encode(
                nu_used, state.nu_max, count, lowbit.MAX_SECOND_MOMENT_STREAM
            )
        else:
            nu_used, nu_max = nu, state.nu_max

        def direction(g: jax.Array, m: jax.Array, v: jax.Array) -> jax.Array:
            if eps_mode == "hat":
                step_size = jnp.sqrt(correction2) / correction1
                return step_size * num.adam_ratio(m, jnp.sqrt(v + eps_root_t) + eps_t)
            if nesterov:
                m_hat = b1_t * m / correction1_next + one_minus_b1 * g / correction1
            else:
                m_hat = m / correction1
            if eps_mode == "atan2":
                b_t = num.as_hyperparameter(atan2_denominator_scale)
                return num.as_hyperparameter(atan2_scale) * jnp.arctan2(
                    m_hat, b_t * jnp.sqrt(v / correction2)
                )
            return num.adam_ratio(m_hat, jnp.sqrt(v / correction2 + eps_root_t) + eps_t)

        new_updates = jax.tree_util.tree_map(
            lambda u, g, m, v: direction(g, m, v).astype(u.dtype), updates, grads, mu, nu_used
        )
        return new_updates, ScaleByAdamState(
            count=count,
            mu=mu_storage.encode(mu, state.mu, count, lowbit.FIRST_MOMENT_STREAM),
            nu=nu_storage.encode(nu, state.nu, count, lowbit.SECOND_MOMENT_STREAM),
            nu_max=nu_max,
        )

    return transformation(init_fn, update_fn)
