"""adamw_jax: exact, fast and complete AdamW-family gradient transformations for JAX.

This module only re-exports; each concept lives in its own module (see DESIGN.md).
"""

import importlib
from typing import Any

from adamw_jax import (
    accumulation,
    clipping,
    ema,
    flat,
    fused,
    kahan,
    lowbit,
    masks,
    native,
    presets,
    schedules,
    sharding,
)
from adamw_jax.accumulation import (
    AccumulateGradientsState,
    accumulate_gradients,
    micro_step_schedule,
)
from adamw_jax.ademamix import (
    ScaleByAdemamixState,
    ademamix,
    ademamix_alpha_schedule,
    ademamix_b3_schedule,
    scale_by_ademamix,
)
from adamw_jax.adopt import ScaleByAdoptState, adopt, scale_by_adopt
from adamw_jax.alias import adam, adamw
from adamw_jax.cautious import add_cautious_decayed_weights, scale_by_cautious_mask
from adamw_jax.clipping import clip_by_global_norm, clip_by_norm, clip_by_value
from adamw_jax.ema import ParamEmaState, ema_params, param_ema
from adamw_jax.fused import FusedAdamState, FusedTransformation
from adamw_jax.hyperparams import (
    InjectHyperparamsState,
    current_hyperparams,
    current_learning_rate,
    inject_hyperparams,
    set_hyperparams,
)
from adamw_jax.kahan import KahanSummationState, kahan_compensation_bytes, kahan_summation
from adamw_jax.learning_rate import ScaleByLearningRateState, scale_by_learning_rate
from adamw_jax.loss_scaling import (
    LossScaleState,
    SkipNonfiniteState,
    SkippedSteps,
    current_loss_scale,
    loss_scaling,
    skip_nonfinite,
    skipped_steps,
)
from adamw_jax.loss_spikes import SkipLossSpikesState, skip_loss_spikes, skipped_spikes
from adamw_jax.lowbit import BlockwiseArray, LowPrecisionParamsState, low_precision_params
from adamw_jax.masks import exclude_from_weight_decay
from adamw_jax.moments import ScaleByAdamState, scale_by_adam
from adamw_jax.rms_clip import clip_by_update_rms
from adamw_jax.plateau import ReduceOnPlateauState, reduce_on_plateau
from adamw_jax.schedule_free import (
    ScheduleFreeAdamWState,
    schedule_free_adamw,
    schedule_free_eval_params,
)
from adamw_jax.sharding import state_shardings
from adamw_jax.updates import apply_updates, update_and_apply
from adamw_jax.weight_decay import WeightDecayState, add_decayed_weights, decoupled_weight_decay

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``aw.flax`` (the Flax drop-ins) is imported on first use, so that ``import adamw_jax``
    does not import Flax."""
    if name == "flax":
        return importlib.import_module("adamw_jax.flax")
    raise AttributeError(f"module 'adamw_jax' has no attribute {name!r}")


__all__ = [
    "AccumulateGradientsState",
    "BlockwiseArray",
    "FusedAdamState",
    "FusedTransformation",
    "InjectHyperparamsState",
    "KahanSummationState",
    "LossScaleState",
    "LowPrecisionParamsState",
    "ParamEmaState",
    "ReduceOnPlateauState",
    "ScaleByAdamState",
    "ScaleByAdemamixState",
    "ScaleByAdoptState",
    "ScaleByLearningRateState",
    "ScheduleFreeAdamWState",
    "SkipLossSpikesState",
    "SkipNonfiniteState",
    "SkippedSteps",
    "WeightDecayState",
    "accumulate_gradients",
    "accumulation",
    "adam",
    "adamw",
    "add_cautious_decayed_weights",
    "add_decayed_weights",
    "ademamix",
    "ademamix_alpha_schedule",
    "ademamix_b3_schedule",
    "adopt",
    "apply_updates",
    "clip_by_global_norm",
    "clip_by_norm",
    "clip_by_update_rms",
    "clip_by_value",
    "clipping",
    "current_hyperparams",
    "current_learning_rate",
    "current_loss_scale",
    "decoupled_weight_decay",
    "ema",
    "ema_params",
    "exclude_from_weight_decay",
    "flat",
    "fused",
    "inject_hyperparams",
    "kahan",
    "kahan_compensation_bytes",
    "kahan_summation",
    "loss_scaling",
    "low_precision_params",
    "lowbit",
    "masks",
    "micro_step_schedule",
    "native",
    "param_ema",
    "presets",
    "reduce_on_plateau",
    "scale_by_adam",
    "scale_by_ademamix",
    "scale_by_adopt",
    "scale_by_cautious_mask",
    "scale_by_learning_rate",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedules",
    "set_hyperparams",
    "sharding",
    "skip_loss_spikes",
    "skip_nonfinite",
    "skipped_spikes",
    "skipped_steps",
    "state_shardings",
    "update_and_apply",
]
