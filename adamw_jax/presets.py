"""Presets that reproduce a peer optimizer's numbers, taking the peer's own argument names.

Each preset is an ``optax.chain`` of this library's blocks; nothing here adds math.

* ``torch_adamw``: ``torch.optim.AdamW``: ``θ ← θ·(1 - η_t·λ) - η_t·m̂/(sqrt(v̂) + ε)``.
* ``torch_adam``: ``torch.optim.Adam``: ``weight_decay`` is L2 regularisation, ``g ← g + λ·θ``
  before the moments (so it is rescaled by ``1/sqrt(v̂)``, unlike AdamW's decay).
* ``keras_adamw``: ``keras.optimizers.AdamW`` (Keras 3) with every base-optimizer option; see its
  docstring for the exact order of Keras' operations.

``from_torch_state_dict`` / ``to_torch_state_dict`` move a run between torch and adamw_jax.
"""

from __future__ import annotations

from collections.abc import Sequence

import optax

from adamw_jax import _validation as check
from adamw_jax.alias import adamw
from adamw_jax.learning_rate import scale_by_learning_rate
from adamw_jax.moments import scale_by_adam
from adamw_jax.torch_interop import from_torch_state_dict, to_torch_state_dict
from adamw_jax.weight_decay import add_decayed_weights

__all__ = [
    "from_torch_state_dict",
    "keras_adamw",
    "to_torch_state_dict",
    "torch_adam",
    "torch_adamw",
]


def _torch_betas(betas: Sequence[float]) -> tuple[float, float]:
    """``betas`` checked as torch checks them: two coefficients in [0, 1)."""
    if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2) such as (0.9, 0.999), got {betas!r}.")
    for index, beta in enumerate(betas):
        check.check_range(f"betas[{index}]", beta, low=0.0, high=1.0, high_inclusive=False,
                          hint="torch's defaults are betas=(0.9, 0.999).")
    return betas[0], betas[1]


def _check_torch_lr(lr: optax.ScalarOrSchedule) -> None:
    check.check_range("lr", lr, low=0.0, allow_schedule=True,
                      hint="Pass a float, or a function of the 0-based step (what a torch LR "
                           "scheduler stepped once per optimizer step gives).")


def torch_adamw(
    lr: optax.ScalarOrSchedule = 1e-3,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """``torch.optim.AdamW`` (torch 2.x), step for step:

        g ← -g if maximize;  m, v ← moments of g;  θ ← θ·(1 - η_t·λ) - η_t·m̂/(sqrt(v̂) + ε)

    with ``v̂`` built from ``max(v)`` when ``amsgrad``. Torch multiplies ``θ`` by
    ``1 - η_t·λ`` before the Adam step; ``adamw`` adds ``λ·θ`` to the direction before the
    learning rate, the same number up to rounding.

    Args:
      lr: ``η``, a float or a function of the 0-based step (a torch ``LambdaLR`` stepped once
        per optimizer step is ``lr=lambda step: base_lr * factor(step)``).
      betas, eps, weight_decay, amsgrad, maximize: as in torch.
    """
    _check_torch_lr(lr)
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
) -> optax.GradientTransformation:
    """``torch.optim.Adam`` (torch 2.x), whose ``weight_decay`` is an L2 term on the gradient:

        g ← -g if maximize;  g ← g + λ·θ;  m, v ← moments of g;  θ ← θ - η_t·m̂/(sqrt(v̂) + ε)

    The chain is ``add_decayed_weights`` placed *before* ``scale_by_adam``. It is kept for
    ``weight_decay=0`` too (adding ``0·θ`` is exact), so the state's structure does not depend
    on the value.

    Args: as ``torch_adamw``.
    """
    _check_torch_lr(lr)
    b1, b2 = _torch_betas(betas)
    steps = [optax.scale(-1.0)] if maximize else []
    steps += [
        add_decayed_weights(weight_decay),
        scale_by_adam(b1, b2, eps, amsgrad=amsgrad),
        scale_by_learning_rate(lr),
    ]
    return optax.chain(*steps)
