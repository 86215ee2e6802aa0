"""Meeting the peers: ``presets.py`` (torch's and Keras' AdamW/Adam with their argument names;
the variants' reference optimizers in ``_presets_variants.py``), ``torch_optim.py`` (a torch
``state_dict`` in and out, mid-run), ``flax.py`` (``adamw_jax.flax``: Flax's ``nnx.Optimizer`` and
``TrainState`` stepping through ``update_and_apply``; imported on first use, as it imports Flax).
"""

from adamw_jax.interop import presets, torch_optim

__all__ = ["presets", "torch_optim"]
