"""The building blocks of a step, one concept a module: ``moments.py`` (the Adam direction),
``weight_decay.py``, ``learning_rate.py``, ``clipping.py``, ``accumulation.py``, ``ema.py``,
``loss_scaling.py`` and ``loss_spikes.py`` (guards that skip a step), ``plateau.py``,
``hyperparams.py``, ``masks.py`` (decay masks from names); ``_masking.py`` and ``_wrappers.py``
are what the masked and the conditional transforms share.
"""

from adamw_jax.transforms import accumulation, clipping, ema, masks
from adamw_jax.transforms.accumulation import (
    AccumulateGradientsState,
    accumulate_gradients,
    micro_step_schedule,
)
from adamw_jax.transforms.clipping import clip_by_global_norm, clip_by_norm, clip_by_value
from adamw_jax.transforms.ema import ParamEmaState, ema_params, param_ema
from adamw_jax.transforms.hyperparams import (
    InjectHyperparamsState,
    current_hyperparams,
    current_learning_rate,
    inject_hyperparams,
    set_hyperparams,
)
from adamw_jax.transforms.learning_rate import ScaleByLearningRateState, scale_by_learning_rate
from adamw_jax.transforms.loss_scaling import (
    LossScaleState,
    SkipNonfiniteState,
    SkippedSteps,
    current_loss_scale,
    loss_scaling,
    skip_nonfinite,
    skipped_steps,
)
from adamw_jax.transforms.loss_spikes import SkipLossSpikesState, skip_loss_spikes, skipped_spikes
from adamw_jax.transforms.masks import exclude_from_weight_decay
from adamw_jax.transforms.moments import ScaleByAdamState, scale_by_adam
from adamw_jax.transforms.plateau import ReduceOnPlateauState, reduce_on_plateau
from adamw_jax.transforms.weight_decay import (
    WeightDecayState,
    add_decayed_weights,
    decoupled_weight_decay,
)

__all__ = [
    "AccumulateGradientsState",
    "InjectHyperparamsState",
    "LossScaleState",
    "ParamEmaState",
    "ReduceOnPlateauState",
    "ScaleByAdamState",
    "ScaleByLearningRateState",
    "SkipLossSpikesState",
    "SkipNonfiniteState",
    "SkippedSteps",
    "WeightDecayState",
    "accumulate_gradients",
    "accumulation",
    "add_decayed_weights",
    "clip_by_global_norm",
    "clip_by_norm",
    "clip_by_value",
    "clipping",
    "current_hyperparams",
    "current_learning_rate",
    "current_loss_scale",
    "decoupled_weight_decay",
    "ema",
    "ema_params",
    "exclude_from_weight_decay",
    "inject_hyperparams",
    "loss_scaling",
    "masks",
    "micro_step_schedule",
    "param_ema",
    "reduce_on_plateau",
    "scale_by_adam",
    "scale_by_learning_rate",
    "set_hyperparams",
    "skip_loss_spikes",
    "skip_nonfinite",
    "skipped_spikes",
    "skipped_steps",
]
