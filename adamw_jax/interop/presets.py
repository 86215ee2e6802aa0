"""Presets that reproduce a peer optimizer's numbers, taking the peer's own argument names.

Each preset is an ``optax.chain`` of this library's blocks; nothing here adds math.

* ``torch_adamw``: ``torch.optim.AdamW``: ``θ ← θ·(1 - η_t·λ) - η_t·m̂/(sqrt(v̂) + ε)``.
* ``torch_adam``: ``torch.optim.Adam``: ``weight_decay`` is L2 regularisation, ``g ← g + λ·θ``
  before the moments (so it is rescaled by ``1/sqrt(v̂)``, unlike AdamW's decay).
* ``keras_adamw``: ``keras.optimizers.AdamW`` (Keras 3) with every base-optimizer option; see its
  docstring for the exact order of Keras' operations.

* ``optimi_stable_adamw``: torch-optimi's ``StableAdamW`` (in ``_presets_variants``).

``from_torch_state_dict`` / ``to_torch_state_dict`` move a run between torch and adamw_jax.
"""

from __future__ import annotations

from collections.abc import Sequence

import optax

from adamw_jax import _validation as check
from adamw_jax.interop._presets_variants import optimi_stable_adamw
from adamw_jax.interop.torch_optim import from_torch_state_dict, to_torch_state_dict
from adamw_jax.optimizers import adamw
from adamw_jax.transforms import masks
from adamw_jax.transforms.accumulation import accumulate_gradients, micro_step_schedule
from adamw_jax.transforms.clipping import clip_by_global_norm, clip_by_norm, clip_by_value
from adamw_jax.transforms.ema import param_ema
from adamw_jax.transforms.learning_rate import scale_by_learning_rate
from adamw_jax.transforms.loss_scaling import loss_scaling
from adamw_jax.transforms.moments import scale_by_adam
from adamw_jax.transforms.weight_decay import add_decayed_weights

__all__ = [
    "from_torch_state_dict",
    "keras_adamw",
    "optimi_stable_adamw",
    "to_torch_state_dict",
    "torch_adam",
    "torch_adamw",
]


def _torch_betas(betas: Sequence[float]) -> tuple[float, float]:
    """``betas`` checked as torch checks them: two coefficients in [0, 1)."""
    if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2) such as (0.9, 0.999), got {betas!r}.")
    for index, beta in enumerate(betas):
        check.check_range(
            f"betas[{index}]",
            beta,
            low=0.0,
            high=1.0,
            high_inclusive=False,
            hint="torch's defaults are betas=(0.9, 0.999).",
        )
    return betas[0], betas[1]


def _check_torch_arguments(lr: optax.ScalarOrSchedule, amsgrad: bool, maximize: bool) -> None:
    for name, flag in (("amsgrad", amsgrad), ("maximize", maximize)):
        check.check_bool(name, flag)
    check.check_range(
        "lr",
        lr,
        low=0.0,
        allow_schedule=True,
        finite=True,
        hint="Pass a float, or a function of the 0-based step (what a torch LR "
        "scheduler stepped once per optimizer step gives).",
    )


def torch_adamw(
    lr: optax.ScalarOrSchedule = 1e-3,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.AdamW`` (torch 2.x), step for step:

        g ← -g if maximize;  m, v ← moments of g;  θ ← θ·(1 - η_t·λ) - η_t·m̂/(sqrt(v̂) + ε)

    with ``v̂`` built from ``max(v)`` when ``amsgrad``. Torch multiplies ``θ`` by
    ``1 - η_t·λ`` rounded to the parameter dtype before the Adam step; ``adamw`` adds ``λ·θ``
    to the direction before the learning rate: the same number in exact arithmetic, and closer
    to it in float32 than torch's own float32 run (tests/parity/test_torch_parity.py).

    Args:
      lr: ``η``, a float or a function of the 0-based step (a torch ``LambdaLR`` stepped once
        per optimizer step is ``lr=lambda step: base_lr * factor(step)``).
      betas, eps, weight_decay, amsgrad, maximize: as in torch.
    """
    _check_torch_arguments(lr, amsgrad, maximize)
    b1, b2 = _torch_betas(betas)
    return adamw(lr, b1, b2, eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize)


def torch_adam(
    lr: optax.ScalarOrSchedule = 1e-3,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.Adam`` (torch 2.x), whose ``weight_decay`` is an L2 term on the gradient:

        g ← -g if maximize;  g ← g + λ·θ;  m, v ← moments of g;  θ ← θ - η_t·m̂/(sqrt(v̂) + ε)

    The chain is ``add_decayed_weights`` placed *before* ``scale_by_adam``. It is kept for
    ``weight_decay=0`` too (adding ``0·θ`` is exact), so the state's structure does not depend
    on the value.

    Args: as ``torch_adamw``.
    """
    _check_torch_arguments(lr, amsgrad, maximize)
    b1, b2 = _torch_betas(betas)
    steps = [optax.scale(-1.0)] if maximize else []
    steps += [
        add_decayed_weights(weight_decay),
        scale_by_adam(b1, b2, eps, amsgrad=amsgrad),
        scale_by_learning_rate(lr),
    ]
    return optax.chain(*steps)


def _check_keras_arguments(
    weight_decay: float,
    beta_1: float,
    beta_2: float,
    epsilon: float,
    ema_momentum: float,
    ema_overwrite_frequency: int | None,
    loss_scale_factor: float | None,
    gradient_accumulation_steps: int | None,
) -> None:
    """Keras' checks, with Keras' argument names in the messages."""
    check.check_range(
        "weight_decay", weight_decay, low=0.0, finite=True, hint="Keras' default is 0.004."
    )
    for name, beta in (("beta_1", beta_1), ("beta_2", beta_2)):
        check.check_range(
            name,
            beta,
            low=0.0,
            high=1.0,
            high_inclusive=False,
            hint="Keras' defaults are beta_1=0.9, beta_2=0.999.",
        )
    check.check_range("epsilon", epsilon, low=0.0, finite=True, hint="Keras' default is 1e-7.")
    check.check_range(
        "ema_momentum", ema_momentum, low=0.0, high=1.0, hint="Keras' default is 0.99."
    )
    check.check_positive_int(
        "ema_overwrite_frequency",
        ema_overwrite_frequency,
        allow_none=True,
        hint="It is the number of steps between overwrites; None: never.",
    )
    check.check_positive_int(
        "gradient_accumulation_steps",
        gradient_accumulation_steps,
        allow_none=True,
        hint="None: no accumulation.",
    )
    if loss_scale_factor is not None:
        check.check_positive(
            "loss_scale_factor",
            loss_scale_factor,
            finite=True,
            hint="The loss is multiplied by it; None: no scaling.",
        )


def _keras_clipping(
    clipnorm: float | None, clipvalue: float | None, global_clipnorm: float | None
) -> list[optax.GradientTransformation]:
    """The one clipping transform Keras allows, or none."""
    given = {
        name: value
        for name, value in (
            ("clipnorm", clipnorm),
            ("clipvalue", clipvalue),
            ("global_clipnorm", global_clipnorm),
        )
        if value is not None
    }
    if len(given) > 1:
        raise ValueError(
            "Only one of clipnorm, clipvalue and global_clipnorm can be set (as in Keras); got "
            + ", ".join(f"{name}={value!r}" for name, value in given.items())
            + "."
        )
    for name, value in given.items():
        check.check_positive(
            name, value, hint="It is the clipping threshold; None disables clipping."
        )
    if clipnorm is not None:
        return [clip_by_norm(clipnorm)]
    if clipvalue is not None:
        return [clip_by_value(clipvalue)]
    if global_clipnorm is not None:
        return [clip_by_global_norm(global_clipnorm)]
    return []


def keras_adamw(
    learning_rate: optax.ScalarOrSchedule = 0.001,
    weight_decay: float = 0.004,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
    amsgrad: bool = False,
    clipnorm: float | None = None,
    clipvalue: float | None = None,
    global_clipnorm: float | None = None,
    use_ema: bool = False,
    ema_momentum: float = 0.99,
    ema_overwrite_frequency: int | None = None,
    loss_scale_factor: float | None = None,
    gradient_accumulation_steps: int | None = None,
    exclude_from_weight_decay: Sequence[str] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """``keras.optimizers.AdamW`` (Keras 3, JAX backend), step for step.

    Keras' ``apply`` on micro-step ``j`` (0-based; ``k = gradient_accumulation_steps``, 1 if
    ``None``; ``n = j // k`` the accumulated step) does, in this order, and so does this chain:

    1. ``g ← g / loss_scale_factor``                                   (``loss_scaling``, static)
    2. with accumulation, ``S ← S + g``; only when ``j % k = k - 1`` go on with ``ḡ = S/k``
       (``accumulate_gradients``, inner update under ``lax.cond``)
    3. clip ``ḡ``: ``clipnorm`` per tensor, ``clipvalue``, or ``global_clipnorm``   (one only)
    4. ``θ ← θ - η·λ·θ`` unless the name matches ``exclude_from_weight_decay``
    5. Adam with epsilon-hat, ``t = n + 1``:
       ``θ ← θ - η·sqrt(1-β2^t)/(1-β1^t) · m / (sqrt(v) + ε)``  (``v`` → ``max(v)`` if amsgrad)
    6. ``use_ema`` on *every* micro-step: ``θ̄ ← θ`` while ``n = 0``, else
       ``θ̄ ← μ·θ̄ + (1-μ)·θ``; ``θ ← θ̄`` when ``(n + 1) % ema_overwrite_frequency = 0``.

    ``η = learning_rate(j)``: a schedule sees micro-steps (Keras' ``iterations`` before the
    ``// k``), while bias correction and the EMA see accumulated steps ``n``.

    Numerics: Keras forms ``1 - β`` in Python double (as ``_numerics.one_minus``) but ``β^t`` as
    ``float32(β)^t`` in float32, so its ``1 - β2^t`` is off by up to ~1e-5 relative for the first
    few hundred steps (``float32(0.999) ≠ 0.999``); here ``1 - β^t`` is exact to float32, and
    the two runs differ by that much more than by rounding alone (see tests/parity).

    Args:
      learning_rate: a float or a function of the 0-based micro-step (a
        ``keras.optimizers.schedules.LearningRateSchedule`` works as is; Keras' other form, a
        callable without arguments, does not: it cannot see the step inside ``jit``).
      weight_decay, beta_1, beta_2, epsilon, amsgrad, clipnorm, clipvalue, global_clipnorm,
      use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
      gradient_accumulation_steps: as in Keras. Multiply the loss by ``loss_scale_factor``
        yourself (Keras' ``optimizer.scale_loss``).
      exclude_from_weight_decay: Keras' ``optimizer.exclude_from_weight_decay(var_names=...)``:
        regular expressions searched in each parameter's ``/``-joined path (Keras searches the
        variable's short name, e.g. ``"bias"``, which is the last part of the path).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; read the average with ``ema_params(state)`` when
      ``use_ema`` and ``ema_overwrite_frequency`` is ``None`` (Keras' ``finalize_variable_values``).
    """
    check.check_learning_rate(learning_rate, "Pass a float, or a function of the 0-based step.")
    for name, flag in (("amsgrad", amsgrad), ("use_ema", use_ema)):
        check.check_bool(name, flag)
    _check_keras_arguments(
        weight_decay,
        beta_1,
        beta_2,
        epsilon,
        ema_momentum,
        ema_overwrite_frequency,
        loss_scale_factor,
        gradient_accumulation_steps,
    )
    accumulation = gradient_accumulation_steps
    inner = optax.chain(
        *_keras_clipping(clipnorm, clipvalue, global_clipnorm),
        scale_by_adam(beta_1, beta_2, epsilon, eps_mode="hat", amsgrad=amsgrad),
        add_decayed_weights(
            weight_decay,
            mask=(
                None
                if exclude_from_weight_decay is None
                else masks.exclude_from_weight_decay(exclude_from_weight_decay)
            ),
        ),
        scale_by_learning_rate(
            micro_step_schedule(learning_rate, accumulation)
            if accumulation is not None and callable(learning_rate)
            else learning_rate
        ),
    )
    steps = [] if loss_scale_factor is None else [loss_scaling(loss_scale_factor, dynamic=False)]
    steps.append(inner if accumulation is None else accumulate_gradients(accumulation, inner=inner))
    if use_ema:
        steps.append(
            param_ema(ema_momentum, ema_overwrite_frequency, accumulation_steps=accumulation or 1)
        )
    return optax.chain(*steps)
