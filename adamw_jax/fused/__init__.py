"""The one-pass step behind ``adamw(..., fused=True)``: ``transformation.py`` (the optimizer and
its state), ``_flat_layout.py`` (where each leaf lives in a few flat buffers), ``_group_pass.py``
(one buffer group's step), ``flat.py`` (parameters kept flat across steps), ``native.py`` +
``cpu_kernel.cc`` (the CPU kernel that runs a group's step in one loop).
"""

from adamw_jax.fused import flat, native
from adamw_jax.fused.transformation import (
    OWN_BUFFER_SIZE,
    FusedAdamState,
    FusedTransformation,
    fused_adam_family,
)

__all__ = [
    "OWN_BUFFER_SIZE",
    "FusedAdamState",
    "FusedTransformation",
    "flat",
    "fused_adam_family",
    "native",
]
