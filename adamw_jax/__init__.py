"""adamw_jax: exact, fast and complete AdamW-family gradient transformations for JAX.

Every public name is re-exported here; see DESIGN.md for the contract.
"""

from adamw_jax import accumulation, clipping, ema, loss_scaling, masks, schedules
from adamw_jax import presets
from adamw_jax import flat, fused
from adamw_jax.fused import FusedAdamState
from adamw_jax.accumulation import (
    AccumulateGradientsState,
    accumulate_gradients,
    micro_step_schedule,
)
from adamw_jax.alias import adam, adamw
from adamw_jax.clipping import clip_by_global_norm, clip_by_norm, clip_by_value
from adamw_jax.ema import ParamEmaState, ema_params, param_ema
from adamw_jax.hyperparams import (
    InjectHyperparamsState,
    current_hyperparams,
    current_learning_rate,
    inject_hyperparams,
    set_hyperparams,
)
from adamw_jax.learning_rate import ScaleByLearningRateState, scale_by_learning_rate
from adamw_jax import lowbit
from adamw_jax.lowbit import BlockwiseArray, LowPrecisionParamsState, low_precision_params
from adamw_jax.loss_scaling import (
    LossScaleState,
    SkipNonfiniteState,
    SkippedSteps,
    current_loss_scale,
    loss_scaling,
    skip_nonfinite,
    skipped_steps,
)
from adamw_jax.masks import exclude_from_weight_decay
from adamw_jax.moments import ScaleByAdamState, scale_by_adam
from adamw_jax.plateau import ReduceOnPlateauState, reduce_on_plateau
from adamw_jax.updates import apply_updates
from adamw_jax.weight_decay import WeightDecayState, add_decayed_weights, decoupled_weight_decay

__version__ = "0.1.0"

__all__ = [
    "BlockwiseArray",
    "LowPrecisionParamsState",
    "low_precision_params",
    "lowbit",
    "AccumulateGradientsState",
    "LossScaleState",
    "ParamEmaState",
    "SkipNonfiniteState",
    "SkippedSteps",
    "accumulate_gradients",
    "accumulation",
    "current_loss_scale",
    "ema",
    "ema_params",
    "exclude_from_weight_decay",
    "loss_scaling",
    "masks",
    "micro_step_schedule",
    "param_ema",
    "skip_nonfinite",
    "skipped_steps",
    "ScaleByAdamState",
    "ScaleByLearningRateState",
    "WeightDecayState",
    "adam",
    "adamw",
    "add_decayed_weights",
    "apply_updates",
    "clip_by_global_norm",
    "clip_by_norm",
    "clip_by_value",
    "clipping",
    "decoupled_weight_decay",
    "presets",
    "scale_by_adam",
    "scale_by_learning_rate",
    "schedules",
    "FusedAdamState",
    "flat",
    "fused",
    "InjectHyperparamsState",
    "ReduceOnPlateauState",
    "current_hyperparams",
    "current_learning_rate",
    "inject_hyperparams",
    "reduce_on_plateau",
    "set_hyperparams",
]
