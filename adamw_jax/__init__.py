"""adamw_jax: exact, fast and complete AdamW-family gradient transformations for JAX.

This module only re-exports. The wings follow one step's data flow: ``transforms/`` (the
building blocks), ``variants/``, ``schedules/``, ``optimizers.py`` (``adamw``, ``adam``),
``fused/`` (the one-pass step), ``lowbit/`` (low-precision storage), ``updates.py``,
``sharding.py``, ``interop/`` (torch, Keras, Flax) and ``demo/``; each wing's ``__init__`` says
which file holds what. The module paths of earlier releases keep importing
(``adamw_jax._public_paths``).
"""

from typing import Any

from adamw_jax import _public_paths, fused, lowbit, schedules, sharding
from adamw_jax.fused import FusedAdamState, FusedTransformation, flat, native
from adamw_jax.interop import presets
from adamw_jax.lowbit import (
    BlockwiseArray,
    LowPrecisionParamsState,
    kahan,
    low_precision_params,
)
from adamw_jax.lowbit.kahan import KahanSummationState, kahan_compensation_bytes, kahan_summation
from adamw_jax.optimizers import adam, adamw
from adamw_jax.sharding import state_shardings
from adamw_jax.transforms import (
    AccumulateGradientsState,
    InjectHyperparamsState,
    LossScaleState,
    ParamEmaState,
    ReduceOnPlateauState,
    ScaleByAdamState,
    ScaleByLearningRateState,
    SkipLossSpikesState,
    SkipNonfiniteState,
    SkippedSteps,
    WeightDecayState,
    accumulate_gradients,
    accumulation,
    add_decayed_weights,
    clip_by_global_norm,
    clip_by_norm,
    clip_by_value,
    clipping,
    current_hyperparams,
    current_learning_rate,
    current_loss_scale,
    decoupled_weight_decay,
    ema,
    ema_params,
    exclude_from_weight_decay,
    inject_hyperparams,
    loss_scaling,
    masks,
    micro_step_schedule,
    param_ema,
    reduce_on_plateau,
    scale_by_adam,
    scale_by_learning_rate,
    set_hyperparams,
    skip_loss_spikes,
    skip_nonfinite,
    skipped_spikes,
    skipped_steps,
)
from adamw_jax.updates import apply_updates, update_and_apply
from adamw_jax.variants import (
    ScaleByAdemamixState,
    ScaleByAdoptState,
    ScheduleFreeAdamWState,
    add_cautious_decayed_weights,
    ademamix,
    ademamix_alpha_schedule,
    ademamix_b3_schedule,
    adopt,
    clip_by_update_rms,
    scale_by_ademamix,
    scale_by_adopt,
    scale_by_cautious_mask,
    schedule_free_adamw,
    schedule_free_eval_params,
)

__version__ = "0.1.0"
_public_paths.bind_imported()


def __getattr__(name: str) -> Any:
    """``aw.flax`` (the Flax drop-ins) and the module names of earlier releases (``aw.moments``)
    are imported on first use: ``import adamw_jax`` does not import Flax."""
    module = _public_paths.import_moved(f"{__name__}.{name}")
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return module


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
