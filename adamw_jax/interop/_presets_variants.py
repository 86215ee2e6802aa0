"""Presets of the AdamW variants' reference optimizers, re-exported by ``adamw_jax.presets``.

* ``optimi_stable_adamw``: torch-optimi's ``StableAdamW`` (Wortsman et al. 2023):
  ``η'_t = η_t / max(1, RMS(g²/max(v̂, ε²)))`` per tensor, ``θ ← θ·(1 - η'_t·λ) -
  η'_t·m̂/(sqrt(v̂) + ε)`` (``decouple_lr=True``: ``θ·(1 - (η'_t/η_max)·λ)``). optimi folds the
  bias correction into "debiased" betas ``β̂_t = β(1 - β^(t-1))/(1 - β^t)``, whose moments are
  exactly ``m̂`` and ``v̂``; the chain here forms ``m̂ = m/(1 - β1^t)`` instead (equal in exact
  arithmetic).
"""

from __future__ import annotations

from collections.abc import Sequence

import optax

from adamw_jax import _validation as check
from adamw_jax.optimizers import adamw


def optimi_stable_adamw(
    lr: optax.ScalarOrSchedule,
    betas: Sequence[float] = (0.9, 0.99),
    weight_decay: float = 1e-2,
    eps: float = 1e-6,
    decouple_lr: bool = False,
    max_lr: float | None = None,
    kahan_sum: bool | None = None,
) -> optax.GradientTransformationExtraArgs:
    """``optimi.StableAdamW`` with optimi's argument names and defaults (math in the module
    docstring): ``adamw(..., rms_clip_threshold=1.0)`` with coupled decay, or decoupled decay
    with ``peak_learning_rate = max_lr`` (default ``lr``) when ``decouple_lr``.

    Args:
      lr: ``η``, a float or a schedule (optimi has no default).
      betas: ``(β1, β2)``, optimi's default ``(0.9, 0.99)``.
      weight_decay: ``λ`` (optimi's 1e-2).
      eps: ``ε`` (optimi's 1e-6), also the floor ``ε²`` of ``v̂`` in the RMS.
      decouple_lr: fully decoupled decay ``θ·(1 - (η'_t/η_max)·λ)``.
      max_lr: ``η_max`` for ``decouple_lr`` (default: ``lr``; needed with a schedule).
      kahan_sum: Kahan-compensated bf16/f16 parameters (``adamw(kahan_summation=True)``);
        ``None`` (optimi's default) or ``True``: on for low-precision leaves; ``False``: off.
        optimi compensates the Adam step and rounds its decay ``θ·(1 - η'λ)`` directly; the
        chain here compensates the step, decay included.
    """
    check.check_bool("decouple_lr", decouple_lr)
    if kahan_sum is not None:
        check.check_bool("kahan_sum", kahan_sum)
    if isinstance(betas, (str, bytes)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}.")
    if max_lr is not None and not decouple_lr:
        raise ValueError("max_lr is only used with decouple_lr=True; remove it.")
    b1, b2 = betas
    return adamw(
        lr,
        b1,
        b2,
        eps,
        weight_decay=weight_decay,
        weight_decay_mode="decoupled" if decouple_lr else "coupled",
        peak_learning_rate=max_lr,
        rms_clip_threshold=1.0,
        kahan_summation=kahan_sum is not False,
    )
