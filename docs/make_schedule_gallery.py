"""Redraw docs/schedules.png, the README's gallery, with ``adamw_jax.schedules.plot_schedule``.

Run from the repository root: ``python docs/make_schedule_gallery.py``.
"""

from pathlib import Path

import adamw_jax as aw

S = aw.schedules
GALLERY = {
    "warmup_cosine_decay": S.warmup_cosine_decay_schedule(0.0, 1e-3, 100, 1000, 1e-5),
    "warmup_stable_decay (1-sqrt)": S.warmup_stable_decay_schedule(
        1e-3, 100, 700, 200, decay_shape="1-sqrt"
    ),
    "cosine_onecycle": S.cosine_onecycle_schedule(1000, 1e-3),
    "sgdr": S.sgdr_schedule(
        [
            dict(init_value=1e-3, peak_value=1e-3, warmup_steps=0, decay_steps=n)
            for n in (200, 300, 500)
        ]
    ),
    "step_decay": S.step_decay_schedule(1e-3, 0.5, 250),
    "inverse_sqrt": S.inverse_sqrt_schedule(1e-3, 100),
    "inverse_time_decay": S.inverse_time_decay_schedule(1e-3, 1.0, 200),
}

if __name__ == "__main__":
    S.plot_schedule(
        GALLERY, 1000, Path(__file__).with_name("schedules.png"), title="adamw_jax.schedules"
    )
