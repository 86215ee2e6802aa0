"""adamw_jax: exact, fast and complete AdamW-family gradient transformations for JAX.

Every public name is re-exported here; see DESIGN.md for the contract.
"""

from adamw_jax import clipping, schedules
from adamw_jax import presets
from adamw_jax import flat, fused
from adamw_jax.fused import FusedAdamState
from adamw_jax.alias import adam, adamw
from adamw_jax.clipping import clip_by_global_norm, clip_by_norm, clip_by_value
from adamw_jax.hyperparams import (
    InjectHyperparamsState,
    current_hyperparams,
    current_learning_rate,
    inject_hyperparams,
    set_hyperparams,
)
from adamw_jax.learning_rate import ScaleByLearningRateState, scale_by_learning_rate
from adamw_jax.moments import ScaleByAdamState, scale_by_adam
from adamw_jax.sharding import state_shardings
from adamw_jax.plateau import ReduceOnPlateauState, reduce_on_plateau
from adamw_jax.updates import apply_updates
from adamw_jax.weight_decay import WeightDecayState, add_decayed_weights, decoupled_weight_decay

__version__ = "0.1.0"

__all__ = [
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
    "state_shardings",
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
