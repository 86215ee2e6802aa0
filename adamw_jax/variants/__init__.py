"""The AdamW variants practitioners use, beside the options of ``adamw`` itself: ``cautious.py``
(C-AdamW's sign mask, cautious weight decay), ``rms_clip.py`` (StableAdamW's update-RMS clip),
``adopt.py`` (ADOPT), ``ademamix.py`` (AdEMAMix and its schedules), ``schedule_free.py``
(schedule-free AdamW). Kahan summation is storage: see ``adamw_jax.lowbit.kahan``.
"""

from adamw_jax.variants.ademamix import (
    ScaleByAdemamixState,
    ademamix,
    ademamix_alpha_schedule,
    ademamix_b3_schedule,
    scale_by_ademamix,
)
from adamw_jax.variants.adopt import ScaleByAdoptState, adopt, scale_by_adopt
from adamw_jax.variants.cautious import add_cautious_decayed_weights, scale_by_cautious_mask
from adamw_jax.variants.rms_clip import clip_by_update_rms
from adamw_jax.variants.schedule_free import (
    ScheduleFreeAdamWState,
    schedule_free_adamw,
    schedule_free_eval_params,
)

__all__ = [
    "ScaleByAdemamixState",
    "ScaleByAdoptState",
    "ScheduleFreeAdamWState",
    "add_cautious_decayed_weights",
    "ademamix",
    "ademamix_alpha_schedule",
    "ademamix_b3_schedule",
    "adopt",
    "clip_by_update_rms",
    "scale_by_ademamix",
    "scale_by_adopt",
    "scale_by_cautious_mask",
    "schedule_free_adamw",
    "schedule_free_eval_params",
]
